//! Prometheus metrics, served as text at `/metrics` by the local API.

use crate::node::redis_client::Info;
use crate::node::supervisor::RedisState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

type Labels = Vec<(String, String)>;

/// Brings a counter up to `count`, a total kept elsewhere. A counter only rises: concurrent
/// scrapes both raising it to the count stay correct.
fn raise(c: &Counter, count: u64) {
    c.inner()
        .fetch_max(count, std::sync::atomic::Ordering::Relaxed);
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub info: Family<Labels, Gauge>,
    pub redis_up: Gauge,
    pub redis_restarts: Counter,
    pub redis_connected_clients: Gauge,
    pub redis_maxclients: Gauge,
    pub redis_used_memory_bytes: Gauge,
    pub redis_maxmemory_bytes: Gauge,
    pub redis_aof_last_write_ok: Gauge,
    pub nofile_limit: Gauge,
    pub gossip_datagrams: Family<Labels, Gauge>,
    pub gossip_dropped: Family<Labels, Gauge>,
    pub ha_epoch: Gauge,
    pub ha_writable_primary: Gauge,
    pub ha_members_alive: Gauge,
    pub ha_members: Gauge,
    pub ha_replication_lag_bytes: Gauge,
    pub supervisor_loop_age_seconds: Gauge<f64, AtomicU64>,
    pub backup_lag_bytes: Gauge,
    pub backup_lag_seconds: Gauge,
    pub backup_spool_full: Gauge,
    pub backup_failing: Gauge,
    pub backup_last_snapshot_timestamp_seconds: Gauge,
    pub backup_enabled: Gauge,
    pub backup_last_upload_timestamp_seconds: Gauge,
    pub backup_newest_restorable_timestamp_seconds: Gauge,
    pub backup_oldest_restorable_timestamp_seconds: Gauge,
    pub backup_last_snapshot_duration_seconds: Gauge<f64, AtomicU64>,
    pub backup_last_snapshot_size_bytes: Gauge,
    pub backup_uploaded_bytes: Counter,
    pub backup_uploads: Counter,
    pub backup_upload_failures: Counter,
    pub hook_runs: Counter,
    pub hook_failures: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("redis_steward")),
            info: Family::default(),
            redis_up: Gauge::default(),
            redis_restarts: Counter::default(),
            redis_connected_clients: Gauge::default(),
            redis_maxclients: Gauge::default(),
            redis_used_memory_bytes: Gauge::default(),
            redis_maxmemory_bytes: Gauge::default(),
            redis_aof_last_write_ok: Gauge::default(),
            nofile_limit: Gauge::default(),
            gossip_datagrams: Family::default(),
            gossip_dropped: Family::default(),
            ha_epoch: Gauge::default(),
            ha_writable_primary: Gauge::default(),
            ha_members_alive: Gauge::default(),
            ha_members: Gauge::default(),
            ha_replication_lag_bytes: Gauge::default(),
            supervisor_loop_age_seconds: Gauge::default(),
            backup_lag_bytes: Gauge::default(),
            backup_lag_seconds: Gauge::default(),
            backup_spool_full: Gauge::default(),
            backup_failing: Gauge::default(),
            backup_last_snapshot_timestamp_seconds: Gauge::default(),
            backup_enabled: Gauge::default(),
            backup_last_upload_timestamp_seconds: Gauge::default(),
            backup_newest_restorable_timestamp_seconds: Gauge::default(),
            backup_oldest_restorable_timestamp_seconds: Gauge::default(),
            backup_last_snapshot_duration_seconds: Gauge::default(),
            backup_last_snapshot_size_bytes: Gauge::default(),
            backup_uploaded_bytes: Counter::default(),
            backup_uploads: Counter::default(),
            backup_upload_failures: Counter::default(),
            hook_runs: Counter::default(),
            hook_failures: Counter::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics lock");
            r.register(
                "agent_info",
                "Agent version, node and data store (value is 1)",
                m.info.clone(),
            );
            r.register(
                "redis_up",
                "1 while redis answers the agent's probes",
                m.redis_up.clone(),
            );
            r.register(
                "redis_restarts",
                "Times the agent restarted a redis that died",
                m.redis_restarts.clone(),
            );
            r.register(
                "redis_connected_clients",
                "Client connections to redis",
                m.redis_connected_clients.clone(),
            );
            r.register(
                "redis_maxclients",
                "maxclients as redis reports it",
                m.redis_maxclients.clone(),
            );
            r.register(
                "redis_used_memory_bytes",
                "Memory redis uses for data",
                m.redis_used_memory_bytes.clone(),
            );
            r.register(
                "redis_maxmemory_bytes",
                "redis maxmemory",
                m.redis_maxmemory_bytes.clone(),
            );
            r.register(
                "redis_aof_last_write_ok",
                "1 when redis's last AOF write succeeded",
                m.redis_aof_last_write_ok.clone(),
            );
            r.register(
                "nofile_limit",
                "RLIMIT_NOFILE the agent obtained for redis",
                m.nofile_limit.clone(),
            );
            r.register(
                "gossip_datagrams",
                "Gossip datagrams sent and received (authenticated) since start",
                m.gossip_datagrams.clone(),
            );
            r.register(
                "gossip_dropped",
                "Gossip datagrams dropped by reason (authentication, replay, stale, malformed, ...)",
                m.gossip_dropped.clone(),
            );
            r.register(
                "ha_epoch",
                "The highest primary epoch this node knows",
                m.ha_epoch.clone(),
            );
            r.register(
                "ha_writable_primary",
                "1 while this node is the primary and accepts writes",
                m.ha_writable_primary.clone(),
            );
            r.register(
                "ha_members_alive",
                "Data store members (this one included) gossip shows alive",
                m.ha_members_alive.clone(),
            );
            r.register(
                "ha_members",
                "Data store members the plan configures",
                m.ha_members.clone(),
            );
            r.register(
                "ha_replication_lag_bytes",
                "Bytes this node's data is behind the writable primary's, as gossip shows both (0 on the primary)",
                m.ha_replication_lag_bytes.clone(),
            );
            r.register(
                "supervisor_loop_age_seconds",
                "Seconds since the agent's supervisor loop last ran (the systemd watchdog is pinged only while it is under twice WatchdogSec)",
                m.supervisor_loop_age_seconds.clone(),
            );
            for (name, help, g) in [
                (
                    "backup_lag_bytes",
                    "WAL bytes written by redis and not uploaded yet",
                    &m.backup_lag_bytes,
                ),
                (
                    "backup_lag_seconds",
                    "How long the oldest not-uploaded WAL byte has waited",
                    &m.backup_lag_seconds,
                ),
                (
                    "backup_spool_full",
                    "1 while the not-uploaded WAL exceeds backup.spool_limit_mb",
                    &m.backup_spool_full,
                ),
                (
                    "backup_failing",
                    "1 while uploads to the backup store fail (they are retried)",
                    &m.backup_failing,
                ),
                (
                    "backup_last_snapshot_timestamp_seconds",
                    "When the last snapshot was uploaded (unix seconds)",
                    &m.backup_last_snapshot_timestamp_seconds,
                ),
                (
                    "backup_enabled",
                    "1 when this node takes backups (backup.url and backup.key_file set)",
                    &m.backup_enabled,
                ),
                (
                    "backup_last_upload_timestamp_seconds",
                    "When an object was last stored (unix seconds; 0: none since start)",
                    &m.backup_last_upload_timestamp_seconds,
                ),
                (
                    "backup_newest_restorable_timestamp_seconds",
                    "The newest moment whose writes are all in the store (unix seconds; 0: \
                     unknown, e.g. a standby)",
                    &m.backup_newest_restorable_timestamp_seconds,
                ),
                (
                    "backup_oldest_restorable_timestamp_seconds",
                    "The start of the oldest restorable chain, as of the last prune (unix \
                     seconds; 0: unknown)",
                    &m.backup_oldest_restorable_timestamp_seconds,
                ),
                (
                    "backup_last_snapshot_size_bytes",
                    "Bytes the last snapshot stored (sealed)",
                    &m.backup_last_snapshot_size_bytes,
                ),
            ] {
                r.register(name, help, g.clone());
            }
            r.register(
                "backup_last_snapshot_duration_seconds",
                "How long the last snapshot's upload took",
                m.backup_last_snapshot_duration_seconds.clone(),
            );
            // Counters: the encoder appends `_total`.
            for (name, help, c) in [
                (
                    "backup_uploaded_bytes",
                    "Bytes stored (compressed and encrypted) since the agent started",
                    &m.backup_uploaded_bytes,
                ),
                (
                    "backup_uploads",
                    "Objects stored since the agent started",
                    &m.backup_uploads,
                ),
                (
                    "backup_upload_failures",
                    "Backup cycles that failed (retried) since the agent started",
                    &m.backup_upload_failures,
                ),
                (
                    "promotion_hook_runs",
                    "Promotion hook runs since the agent started",
                    &m.hook_runs,
                ),
                (
                    "promotion_hook_failures",
                    "Promotion hook runs that failed or timed out",
                    &m.hook_failures,
                ),
            ] {
                r.register(name, help, c.clone());
            }
        }
        m
    }

    /// Copy what the supervisor last learned about redis into the registry: up while its
    /// last probe was answered, the restarts it counted, and the INFO gauges.
    pub fn observe_redis(&self, s: &RedisState) {
        self.redis_up.set(s.healthy as i64);
        self.supervisor_loop_age_seconds
            .set(s.loop_alive_at.elapsed().as_secs_f64());
        raise(&self.redis_restarts, s.restarts);
        self.observe_info(&s.info);
    }

    /// Update the gauges that come straight from redis's INFO.
    pub fn observe_info(&self, info: &Info) {
        let set = |g: &Gauge, key: &str| {
            if let Some(v) = info.get_u64(key) {
                g.set(v as i64);
            }
        };
        set(&self.redis_connected_clients, "connected_clients");
        set(&self.redis_maxclients, "maxclients");
        set(&self.redis_used_memory_bytes, "used_memory");
        set(&self.redis_maxmemory_bytes, "maxmemory");
        self.redis_aof_last_write_ok
            .set((info.get("aof_last_write_status") == Some("ok")) as i64);
    }

    /// Copy the gossip transport's counters (kept as atomics there) into the registry.
    pub fn observe_gossip(&self, c: &crate::cluster::gossip::transport::GossipCounters) {
        let label = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        self.gossip_datagrams
            .get_or_create(&label("direction", "sent"))
            .set(c.sent() as i64);
        self.gossip_datagrams
            .get_or_create(&label("direction", "received"))
            .set(c.received() as i64);
        for (reason, n) in c.drops() {
            self.gossip_dropped
                .get_or_create(&label("reason", reason))
                .set(n as i64);
        }
    }

    pub fn observe_ha(&self, s: &crate::cluster::ha::HaStatus) {
        self.ha_epoch.set(s.epoch as i64);
        self.ha_writable_primary
            .set((s.role == "primary" && s.writable) as i64);
        self.ha_members_alive
            .set(s.members.iter().filter(|m| m.alive || m.is_self).count() as i64);
        self.ha_members.set(s.members.len() as i64);
        let lag = s.members.iter().find(|m| m.is_self).and_then(|m| m.lag);
        self.ha_replication_lag_bytes.set(lag.unwrap_or(0) as i64);
    }

    pub fn observe_backup(&self, b: &crate::backup::shipper::BackupStatus) {
        self.backup_lag_bytes.set(b.lag_bytes as i64);
        self.backup_lag_seconds.set(b.lag_seconds as i64);
        self.backup_spool_full.set(b.spool_full as i64);
        self.backup_failing.set(b.last_error.is_some() as i64);
        self.backup_last_snapshot_timestamp_seconds
            .set(b.last_snapshot_unix_ms.map_or(0, |t| (t / 1000) as i64));
        let secs = |t: Option<u64>| t.map_or(0, |t| (t / 1000) as i64);
        self.backup_last_upload_timestamp_seconds
            .set(secs(b.last_upload_unix_ms));
        self.backup_newest_restorable_timestamp_seconds
            .set(secs(b.newest_restorable_unix_ms));
        self.backup_oldest_restorable_timestamp_seconds
            .set(secs(b.oldest_restorable_unix_ms));
        if let Some(ms) = b.last_snapshot_duration_ms {
            self.backup_last_snapshot_duration_seconds
                .set(ms as f64 / 1000.0);
        }
        if let Some(n) = b.last_snapshot_bytes {
            self.backup_last_snapshot_size_bytes.set(n as i64);
        }
        raise(&self.backup_uploaded_bytes, b.uploaded_bytes);
        raise(&self.backup_uploads, b.uploads);
        raise(&self.backup_upload_failures, b.upload_failures);
    }

    pub fn observe_hook(&self, c: &crate::cluster::hook::HookCounters) {
        use std::sync::atomic::Ordering::Relaxed;
        raise(&self.hook_runs, c.runs.load(Relaxed));
        raise(&self.hook_failures, c.failures.load(Relaxed));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("metrics lock");
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prefixed_metrics_from_info() {
        let m = Metrics::new();
        m.observe_info(&Info::parse(
            "connected_clients:7\r\nmaxclients:10000\r\naof_last_write_status:ok\r\n",
        ));
        m.redis_restarts.inc();
        let text = m.encode();
        assert!(
            text.contains("redis_steward_redis_connected_clients 7"),
            "{text}"
        );
        assert!(
            text.contains("redis_steward_redis_maxclients 10000"),
            "{text}"
        );
        assert!(
            text.contains("redis_steward_redis_restarts_total 1"),
            "{text}"
        );
        assert!(
            text.contains("redis_steward_redis_aof_last_write_ok 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    /// Every line of `want` is a line of the encoded registry.
    fn assert_encodes(m: &Metrics, want: &[&str]) {
        let text = m.encode();
        for line in want {
            assert!(text.lines().any(|l| l == *line), "{line:?} not in {text}");
        }
    }

    #[test]
    fn observes_the_supervisor_state() {
        let m = Metrics::new();
        let mut s = RedisState::new();
        m.observe_redis(&s);
        let before = [
            "redis_steward_redis_up 0",
            "redis_steward_redis_restarts_total 0",
        ];
        assert_encodes(&m, &before);
        s.healthy = true;
        s.restarts = 2;
        s.info = Info::parse("connected_clients:3\r\n");
        // Observed twice (two scrapes): the restarts are counted once.
        m.observe_redis(&s);
        m.observe_redis(&s);
        assert_encodes(
            &m,
            &[
                "redis_steward_redis_up 1",
                "redis_steward_redis_restarts_total 2",
                "redis_steward_redis_connected_clients 3",
            ],
        );
    }
}
