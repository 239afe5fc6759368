//! The status report the running agent serves (`/status`) and `redis-steward status` prints,
//! as JSON or as a readable table. Building and rendering are pure.

use crate::backup::catalog::format_utc;
use crate::cluster::history::Promotion;
use crate::node::limits::{FdLimit, Memory};
use crate::node::supervisor::{Phase, RedisState};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub version: String,
    pub data_store_id: String,
    pub node: String,
    pub plan: String,
    /// primary | replica | restoring | fenced | starting | stopped
    pub role: String,
    pub agent_uptime_s: u64,
    pub redis: RedisStatus,
    pub limits: LimitsStatus,
    pub config: ConfigSummary,
    /// HA data stores: the election's view of every member, as this node sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ha::HaStatus>,
    /// The backup shipper; `None` when backups are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::shipper::BackupStatus>,
    /// Problems an operator should look at, in plain words.
    pub warnings: Vec<String>,
}

/// Add the backup shipper's state (`None`: backups off) to a report, with warnings for what
/// needs an operator: a failing store, a full spool.
pub fn add_backup(s: &mut NodeStatus, backup: Option<crate::backup::shipper::BackupStatus>) {
    // Backups off is a configuration choice (the table says so), not a fault.
    match &backup {
        None => {}
        Some(b) => {
            if b.spool_full {
                s.warnings.push(format!(
                    "backup spool full: {} of WAL not uploaded for {} s; redis keeps it on disk until the store takes it",
                    bytes(b.lag_bytes),
                    b.lag_seconds
                ));
            }
            if let Some(e) = &b.last_error {
                s.warnings.push(format!("backups failing: {e}"));
            }
        }
    }
    s.backup = backup;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RedisStatus {
    pub phase: String,
    pub healthy: bool,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub uptime_s: Option<u64>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    pub used_memory_bytes: Option<u64>,
    pub maxmemory_bytes: Option<u64>,
    pub connected_clients: Option<u64>,
    pub maxclients: Option<u64>,
    pub aof_enabled: Option<bool>,
    pub aof_last_write_ok: Option<bool>,
    /// Replication as redis reports it: "primary, …" or "replica of HOST:PORT, link up/down",
    /// with "FULL SYNC IN PROGRESS" while a resync runs.
    #[serde(default)]
    pub replication: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LimitsStatus {
    pub memory_mb: u64,
    pub memory_source: String,
    pub maxclients_wanted: u64,
    pub nofile_soft: u64,
    pub nofile_wanted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigSummary {
    pub client_port: u16,
    /// The Redis Sentinel protocol port clients discover the primary through.
    #[serde(default)]
    pub sentinel_port: u16,
    pub bind: Vec<String>,
    pub tls: String,
    pub scripting: bool,
    pub allowed_cidrs: Vec<String>,
    pub firewall: String,
    pub data_dir: String,
    pub api: String,
}

/// The parts of a status report that do not change while the agent runs.
#[derive(Debug, Clone)]
pub struct StaticInfo {
    pub data_store_id: String,
    pub node: String,
    pub plan: String,
    pub memory: Memory,
    pub maxclients_wanted: u64,
    pub fd: FdLimit,
    pub config: ConfigSummary,
    /// [`crate::config::Config::warnings`], shown with every status.
    pub config_warnings: Vec<String>,
}

pub fn build(
    st: &StaticInfo,
    redis: &RedisState,
    cluster: Option<crate::cluster::ha::HaStatus>,
    agent_uptime_s: u64,
) -> NodeStatus {
    let info = &redis.info;
    let phase = serde_json::to_value(redis.phase)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let role = match (redis.phase, &cluster) {
        (Phase::Stopping | Phase::Stopped, _) => "stopped".to_string(),
        (_, Some(c)) if !c.role.is_empty() => c.role.clone(),
        (Phase::Running, None) if redis.healthy => "primary".to_string(),
        _ => "starting".to_string(),
    };
    let mut warnings = st.config_warnings.clone();
    if !st.fd.sufficient() {
        warnings.push(format!(
            "open-files limit is {} but maxclients {} needs {}: redis can serve only {} clients; raise LimitNOFILE",
            st.fd.soft, st.maxclients_wanted, st.fd.wanted, st.fd.maxclients_possible
        ));
    }
    if let Some(mc) = info.get_u64("maxclients") {
        if mc < st.maxclients_wanted {
            warnings.push(format!(
                "redis runs with maxclients {mc}, below the {} this node should allow",
                st.maxclients_wanted
            ));
        }
    }
    if !redis.healthy && redis.phase != Phase::Stopped {
        warnings.push(match &redis.last_error {
            Some(e) => format!("redis is not answering: {e}"),
            None => "redis is not answering yet".to_string(),
        });
    }
    NodeStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_store_id: st.data_store_id.clone(),
        node: st.node.clone(),
        plan: st.plan.clone(),
        role,
        agent_uptime_s,
        redis: RedisStatus {
            phase,
            healthy: redis.healthy,
            pid: redis.pid,
            version: info.get("redis_version").map(String::from),
            uptime_s: info.get_u64("uptime_in_seconds"),
            restarts: redis.restarts,
            last_exit: redis.last_exit.clone(),
            last_error: redis.last_error.clone(),
            used_memory_bytes: info.get_u64("used_memory"),
            maxmemory_bytes: info.get_u64("maxmemory"),
            connected_clients: info.get_u64("connected_clients"),
            maxclients: info.get_u64("maxclients"),
            aof_enabled: info.get("aof_enabled").map(|v| v == "1"),
            aof_last_write_ok: info.get("aof_last_write_status").map(|v| v == "ok"),
            replication: replication_summary(info),
        },
        limits: LimitsStatus {
            memory_mb: st.memory.mb,
            memory_source: format!("{:?}", st.memory.source),
            maxclients_wanted: st.maxclients_wanted,
            nofile_soft: st.fd.soft,
            nofile_wanted: st.fd.wanted,
        },
        config: st.config.clone(),
        cluster,
        backup: None,
        warnings,
    }
}

/// One line about redis's own replication state.
fn replication_summary(info: &crate::node::redis_client::Info) -> Option<String> {
    match info.get("role")? {
        "master" => Some(format!(
            "primary, {} replica(s) connected, offset {}",
            info.get_u64("connected_slaves").unwrap_or(0),
            info.get_u64("master_repl_offset").unwrap_or(0)
        )),
        _ => {
            let mut s = format!(
                "replica of {}:{}, link {}, offset {}",
                info.get("master_host").unwrap_or("?"),
                info.get("master_port").unwrap_or("?"),
                info.get("master_link_status").unwrap_or("?"),
                info.get_u64("master_repl_offset").unwrap_or(0)
            );
            if info.get("master_sync_in_progress") == Some("1") {
                s.push_str(", FULL SYNC IN PROGRESS");
            }
            Some(s)
        }
    }
}

/// Human-friendly byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_else(|| "-".into())
}

/// The table `redis-steward status` prints.
pub fn render_table(s: &NodeStatus) -> String {
    let r = &s.redis;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "data store",
            format!("{} ({} plan)", s.data_store_id, s.plan),
        ),
        ("node", s.node.clone()),
        ("role", s.role.clone()),
        (
            "agent",
            format!("v{}, up {}", s.version, duration(s.agent_uptime_s)),
        ),
        (
            "redis",
            format!(
                "{}{}, pid {}, version {}, up {}",
                r.phase,
                if r.healthy {
                    " (healthy)"
                } else {
                    " (NOT answering)"
                },
                opt(&r.pid),
                opt(&r.version),
                r.uptime_s.map(duration).unwrap_or_else(|| "-".into()),
            ),
        ),
        (
            "restarts",
            format!(
                "{}{}",
                r.restarts,
                r.last_exit
                    .as_ref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ),
        ),
        (
            "memory",
            format!(
                "{} used of {} maxmemory; node has {} MB ({})",
                r.used_memory_bytes.map(bytes).unwrap_or_else(|| "-".into()),
                r.maxmemory_bytes.map(bytes).unwrap_or_else(|| "-".into()),
                s.limits.memory_mb,
                s.limits.memory_source,
            ),
        ),
        (
            "clients",
            format!(
                "{} / {} maxclients",
                opt(&r.connected_clients),
                opt(&r.maxclients)
            ),
        ),
        (
            "replication",
            r.replication.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "aof",
            match (r.aof_enabled, r.aof_last_write_ok) {
                (Some(true), Some(true)) => "on, last write ok".into(),
                (Some(true), Some(false)) => "on, LAST WRITE FAILED".into(),
                (Some(false), _) => "OFF".into(),
                _ => "-".into(),
            },
        ),
        (
            "listen",
            format!(
                "TLS {} port {}, Sentinel port {} ({})",
                s.config.bind.join(", "),
                s.config.client_port,
                s.config.sentinel_port,
                s.config.tls
            ),
        ),
        (
            "scripting",
            if s.config.scripting {
                "on".into()
            } else {
                "off".into()
            },
        ),
        (
            "allowed",
            format!(
                "{} (firewall: {})",
                s.config.allowed_cidrs.join(", "),
                s.config.firewall
            ),
        ),
        ("data dir", s.config.data_dir.clone()),
    ];
    if let Some(c) = &s.cluster {
        rows.push((
            "epoch",
            format!(
                "{} (primary: {})",
                c.epoch,
                c.primary.as_deref().unwrap_or("none")
            ),
        ));
        if !c.last_decision.is_empty() {
            rows.push(("decided", c.last_decision.clone()));
        }
    }
    if s.backup.is_none() {
        rows.push(("backup", "off (set backup.url and backup.key_file)".into()));
    }
    if let Some(b) = &s.backup {
        let ago = |t: Option<u64>| match t {
            Some(t) => crate::backup::catalog::format_utc(t),
            None => "never".into(),
        };
        rows.push((
            "backup",
            format!(
                "{}; lag {} ({} s); last snapshot {}; last upload {}",
                b.state,
                bytes(b.lag_bytes),
                b.lag_seconds,
                ago(b.last_snapshot_unix_ms),
                ago(b.last_upload_unix_ms)
            ),
        ));
    }
    for w in &s.warnings {
        rows.push(("WARNING", w.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:>width$}  {v}");
    }
    if let Some(c) = &s.cluster {
        out.push_str(&render_members(&c.members));
    }
    out
}

/// The data store as this node sees it, one member a line.
pub fn render_members(members: &[crate::cluster::ha::MemberStatus]) -> String {
    let mut out = format!(
        "\n{:<12} {:<22} {:<8} {:<9} {:>5} {:>12} {:>10} {:<7} {:>10}\n",
        "MEMBER", "REDIS", "GOSSIP", "ROLE", "EPOCH", "OFFSET", "LAG", "REDIS", "HEARD"
    );
    for m in members {
        let _ = writeln!(
            out,
            "{:<12} {:<22} {:<8} {:<9} {:>5} {:>12} {:>10} {:<7} {:>10}",
            m.name,
            m.redis_addr.as_deref().unwrap_or("-"),
            if m.is_self {
                "self"
            } else if m.alive {
                "alive"
            } else {
                "DEAD"
            },
            m.role,
            m.epoch,
            m.offset,
            m.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            if m.redis_healthy { "ok" } else { "DOWN" },
            m.last_heard_ms
                .map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0))
                .unwrap_or_else(|| "never".into()),
        );
    }
    out
}

/// The table of `redis-steward history` (times as `backup list` and `restore --at` write them).
pub fn render_history(records: &[Promotion]) -> String {
    let mut out = format!(
        "{:>5}  {:<24}  {:<10}  {:<14}  {:>11}  {}\n",
        "EPOCH", "WHEN (UTC)", "PRIMARY", "AFTER", "NO PRIMARY", "WHY"
    );
    for r in records {
        let after = match (&r.previous, r.previous_epoch) {
            (Some(p), Some(e)) => format!("{p} ({e})"),
            _ => "-".into(),
        };
        let gap = r
            .unavailable_ms
            .map_or("-".into(), |ms| format!("{}.{:03} s", ms / 1000, ms % 1000));
        out += &format!(
            "{:>5}  {:<24}  {:<10}  {:<14}  {:>11}  {}\n",
            r.epoch,
            format_utc(r.at_unix_ms),
            r.primary,
            after,
            gap,
            r.reason
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::limits::MemorySource;
    use crate::node::redis_client::Info;

    fn static_info(fd_soft: u64) -> StaticInfo {
        StaticInfo {
            data_store_id: "ds".into(),
            node: "n1".into(),
            plan: "startup".into(),
            memory: Memory {
                mb: 4096,
                source: MemorySource::Override,
            },
            maxclients_wanted: 16384,
            fd: FdLimit {
                wanted: 16416,
                soft: fd_soft,
                hard: fd_soft,
                maxclients_possible: fd_soft.saturating_sub(32).min(16384),
            },
            config_warnings: Vec::new(),
            config: ConfigSummary {
                client_port: 6380,
                sentinel_port: 26379,
                bind: vec!["0.0.0.0".into()],
                tls: "generated".into(),
                scripting: true,
                allowed_cidrs: vec!["0.0.0.0/0".into()],
                firewall: "nftables".into(),
                data_dir: "/d".into(),
                api: "127.0.0.1:7480".into(),
            },
        }
    }

    fn running(info: &str) -> RedisState {
        let mut r = RedisState::new();
        r.phase = Phase::Running;
        r.healthy = true;
        r.pid = Some(42);
        r.info = Info::parse(info);
        r
    }

    #[test]
    fn healthy_node_renders_without_warnings() {
        let s = build(&static_info(20000), &running("maxclients:16384\r\nconnected_clients:2\r\nused_memory:1048576\r\nredis_version:7.0.15\r\n"), None, 65);
        assert_eq!(s.role, "primary");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let t = render_table(&s);
        assert!(t.contains("clients  2 / 16384 maxclients"), "{t}");
        assert!(t.contains("1.0 MiB used"), "{t}");
        assert!(t.contains("up 1m05s"), "{t}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<NodeStatus>(&json).unwrap(), s);
    }

    #[test]
    fn low_fd_limit_and_capped_maxclients_are_warned() {
        let s = build(&static_info(4096), &running("maxclients:4064\r\n"), None, 1);
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("raise LimitNOFILE"));
        assert!(render_table(&s).contains("WARNING"));
    }

    #[test]
    fn replication_state_is_summarised() {
        let syncing = build(
            &static_info(20000),
            &running("role:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6380\r\nmaster_link_status:down\r\nmaster_sync_in_progress:1\r\nmaster_repl_offset:42\r\n"),
            None,
            1,
        );
        assert_eq!(
            syncing.redis.replication.as_deref(),
            Some("replica of 10.0.0.1:6380, link down, offset 42, FULL SYNC IN PROGRESS")
        );
        let primary = build(
            &static_info(20000),
            &running("role:master\r\nconnected_slaves:2\r\nmaster_repl_offset:7\r\n"),
            None,
            1,
        );
        assert!(render_table(&primary).contains("primary, 2 replica(s) connected, offset 7"));
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3661), "1h01m");
        assert_eq!(duration(90000), "1d01h");
    }

    #[test]
    fn the_history_table_names_each_epoch_after_its_predecessor() {
        let rec = |epoch: u64, primary: &str| Promotion {
            epoch,
            primary: primary.into(),
            at_unix_ms: 1_796_000_000_000 + epoch,
            previous: (epoch > 1).then(|| "node-0".into()),
            previous_epoch: (epoch > 1).then(|| epoch - 1),
            reason: format!("won epoch {epoch}"),
            unavailable_ms: Some(1234),
        };
        let table = render_history(&[rec(1, "node-0"), rec(2, "node-1")]);
        assert!(table.contains("node-1"), "{table}");
        assert!(table.contains("node-0 (1)"), "{table}");
        assert!(table.contains("1.234 s"), "{table}");
        assert!(table.contains("2026-11-30T00:53:20.001Z"), "{table}");
    }
}
