//! A whole data store on a namespace testbed: N agents (each on its own host with its own
//! address), one extra host for clients, a shared CA, gossip key and backup folder, plus the
//! checkers every fault scenario runs: a writer that finds the primary through the agents'
//! Sentinel ports (as customers' clients do) and whose writes count only once `WAIT 1`
//! confirms them, and a monitor that records every moment two nodes were writable primaries.

use crate::netns::Testbed;
use crate::node::{Agent, NodeSpec, PASSWORD};
use crate::sentinel_client::{ProbeTarget, SentinelTarget, WriterConfig};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REDIS_PORT: u16 = 6380;
pub const GOSSIP_PORT: u16 = 7946;
pub const SENTINEL_PORT: u16 = 26379;
/// Every node's read-only API (`api.public_listen`) on its own address: what a load balancer checks.
pub const PUBLIC_API_PORT: u16 = 7481;

pub struct Cluster {
    // Field order is drop order: agents stop before their namespaces go.
    pub nodes: Vec<Agent>,
    pub bed: Testbed,
    /// Shared files: CA, gossip key, backups.
    pub shared: tempfile::TempDir,
    pub plan: String,
    promote_hook: bool,
    backups: bool,
    node_lost_hook: bool,
    /// The testbed host of each node (a replaced node moves to a new host).
    node_hosts: Vec<usize>,
    /// The host clients run on.
    client: usize,
    /// Each node's data directory is a filesystem of this many MiB ([`Options::data_disk_mb`]).
    data_disk_mb: Option<u64>,
}

/// Extras for [`Cluster::start_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Every agent runs a promotion hook that appends `node epoch address` to
    /// [`Cluster::hook_log`].
    pub promote_hook: bool,
    /// Backups to [`Cluster::bucket`] with a shared key ([`Cluster::backup_key`]), WAL
    /// shipped every 200 ms.
    pub backups: bool,
    /// Every agent runs `hooks.on_node_lost` after 2 s (repeated every 3 s), appending
    /// `runner slot address plan attempt` to [`Cluster::node_lost_log`].
    pub node_lost_hook: bool,
    /// Each node's data directory is a small filesystem of its own of this many MiB
    /// ([`crate::node::SmallDisk`]), so a test can fill it ([`crate::node::fill_filesystem`]).
    pub data_disk_mb: Option<u64>,
}

impl Cluster {
    /// Start a `plan` data store ("business" = 2 nodes, "premium" = 3) and wait for a primary.
    pub fn start(plan: &str) -> Result<Cluster> {
        Cluster::start_with(plan, Options::default())
    }

    /// Like [`Cluster::start`], with [`Options`].
    pub fn start_with(plan: &str, opts: Options) -> Result<Cluster> {
        let promote_hook = opts.promote_hook;
        let n = match plan {
            "business" => 2,
            "premium" => 3,
            other => bail!("no HA plan {other}"),
        };
        // Leftovers of test runs that were killed (and so never ran Drop) would slow this one.
        let _ = crate::netns::cleanup_stale();
        // One more host for clients.
        let bed = Testbed::new(n + 1)?;
        let shared = tempfile::Builder::new().prefix("rs-cluster-").tempdir()?;
        let key: [u8; 32] = rand::random();
        let key_path = shared.path().join("gossip.key");
        std::fs::write(&key_path, key)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            bed,
            shared,
            plan: plan.to_string(),
            promote_hook,
            backups: opts.backups,
            node_lost_hook: opts.node_lost_hook,
            node_hosts: (0..n).collect(),
            client: n,
            data_disk_mb: opts.data_disk_mb,
        };
        if opts.backups {
            let key: [u8; 32] = rand::random();
            let key_path = cluster.shared.path().join("backup.key");
            std::fs::write(&key_path, key)?;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        }
        // Hook scripts append what they were told to a log in the shared folder.
        let logging_script = |name: &str, fields: &str, log: PathBuf| -> Result<()> {
            let script = cluster.shared.path().join(name);
            let body = format!("#!/bin/sh\necho \"{fields}\" >> {}\n", log.display());
            std::fs::write(&script, body)?;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
            Ok(())
        };
        if promote_hook {
            logging_script(
                "hook.sh",
                "$REDIS_STEWARD_NODE $REDIS_STEWARD_EPOCH $REDIS_STEWARD_ADDRESS",
                cluster.hook_log(),
            )?;
        }
        if opts.node_lost_hook {
            logging_script(
                "node-lost.sh",
                "$1 $REDIS_STEWARD_SLOT $REDIS_STEWARD_LAST_ADDRESS $REDIS_STEWARD_PLAN $REDIS_STEWARD_ATTEMPT",
                cluster.node_lost_log(),
            )?;
        }
        for i in 0..n {
            let agent = cluster.prepare_node(i)?;
            cluster.nodes.push(agent);
        }
        for a in &mut cluster.nodes {
            a.start()?;
        }
        for a in &mut cluster.nodes {
            a.wait_healthy(Duration::from_secs(30))?;
        }
        cluster.wait_primary(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn cluster_toml(&self, i: usize) -> String {
        let nodes: Vec<String> = (0..self.node_count())
            .map(|j| {
                format!(
                    "  {{ name = \"node-{j}\", address = \"{}\" }},",
                    self.node_ip(j)
                )
            })
            .collect();
        let mut t = format!(
            "\n[tls]\nca_file = \"{0}/ca.crt\"\nca_key_file = \"{0}/ca.key\"\n\n[cluster]\nadvertise_address = \"{1}\"\ngossip_port = {GOSSIP_PORT}\ngossip_key_file = \"{0}/gossip.key\"\nnodes = [\n{2}\n]\n",
            self.shared.path().display(),
            self.node_ip(i),
            nodes.join("\n"),
        );
        if self.promote_hook || self.node_lost_hook {
            t += "\n[hooks]\ntimeout_secs = 5\n";
        }
        if self.promote_hook {
            t += &format!(
                "on_promote = [\"{}\"]\n",
                self.shared.path().join("hook.sh").display()
            );
        }
        if self.node_lost_hook {
            t += &format!(
                "on_node_lost = [\"{}\", \"node-{i}\"]\nnode_lost_after_secs = 2\nnode_lost_repeat_secs = 3\n",
                self.shared.path().join("node-lost.sh").display()
            );
        }
        if self.plan == "business" || self.backups {
            t += &format!("\n[backup]\nurl = \"file://{}\"\n", self.bucket().display());
        }
        if self.backups {
            t += &format!(
                "key_file = \"{}\"\nwal_interval_ms = 200\n",
                self.backup_key().display()
            );
        }
        t
    }

    fn node_count(&self) -> usize {
        match self.plan.as_str() {
            "business" => 2,
            _ => 3,
        }
    }

    fn prepare_node(&self, i: usize) -> Result<Agent> {
        let mut spec = NodeSpec::new(&format!("node-{i}"));
        spec.data_store_id = "ha-test".into();
        spec.plan = self.plan.clone();
        spec.bind = "0.0.0.0".into();
        spec.port = REDIS_PORT;
        spec.sentinel_port = SENTINEL_PORT;
        spec.memory_limit_mb = Some(1024);
        spec.public_api = Some(format!("{}:{PUBLIC_API_PORT}", self.node_ip(i)));
        spec.extra = self.cluster_toml(i);
        let mut agent = Agent::prepare(spec)?.in_netns(&self.bed.host(self.node_hosts[i]).name);
        if let Some(mb) = self.data_disk_mb {
            agent.use_small_data_disk(mb)?;
        }
        Ok(agent)
    }

    /// Node i's address (its host's).
    pub fn node_ip(&self, i: usize) -> std::net::Ipv4Addr {
        self.bed.host(self.node_hosts[i]).ip
    }

    /// The testbed host node i runs on (see [`Testbed::host`]).
    pub fn node_host(&self, i: usize) -> usize {
        self.node_hosts[i]
    }

    /// The testbed host the clients (writers) run on.
    pub fn client_host(&self) -> usize {
        self.client
    }

    /// How a [`crate::sentinel_client::SplitBrainMonitor`] probes each node: from inside the
    /// node's own namespace, over its loopback, so a node cut off from everyone is still seen.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        (0..self.nodes.len())
            .map(|i| ProbeTarget {
                name: self.nodes[i].spec.node_name.clone(),
                netns: self.bed.host(self.node_hosts[i]).name.clone(),
                addr: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, REDIS_PORT)),
                tls_ca: Some(self.ca_file()),
                password: Some(PASSWORD.into()),
            })
            .collect()
    }

    /// Take the backup store ([`Cluster::bucket`], a local folder) down until the returned
    /// [`StoreOutage`] is ended or dropped. Root ignores permissions (a chmod 000 would not
    /// stop the agents), so the folder is atomically swapped (renameat2 RENAME_EXCHANGE) with
    /// a regular file of the same name: every read, write and listing then fails with
    /// ENOTDIR — an error, not "not found" — as with an unreachable object store, and no
    /// agent can recreate the folder meanwhile. Swapping back is atomic too.
    pub fn store_outage(&self) -> Result<StoreOutage> {
        let bucket = self.bucket();
        std::fs::create_dir_all(&bucket)?;
        let aside = self.shared.path().join("bucket.offline");
        std::fs::write(&aside, b"the backup store is down\n")?;
        exchange(&bucket, &aside)?;
        Ok(StoreOutage {
            bucket,
            aside,
            active: true,
        })
    }

    /// Node i's machine is gone for good: kill everything on its host, then start a new
    /// machine for the slot — a new host with a new address, an empty disk, the same node
    /// name — and return once its agent answers. The other nodes' configs still name the old
    /// address.
    pub fn replace_node(&mut self, i: usize) -> Result<()> {
        self.kill_node(i)?;
        self.bed.add_host()?;
        self.node_hosts[i] = self.bed.hosts().len() - 1;
        let agent = self.prepare_node(i)?;
        // Dropping the old agent removes its directories: the disk is wiped.
        self.nodes[i] = agent;
        self.nodes[i].start()?;
        Ok(())
    }

    /// Lines `runner slot address plan attempt`, one per `on_node_lost` run.
    pub fn node_lost_log(&self) -> PathBuf {
        self.shared.path().join("node-lost.log")
    }

    /// The backup bucket (a local folder).
    pub fn bucket(&self) -> PathBuf {
        self.shared.path().join("bucket")
    }

    pub fn backup_key(&self) -> PathBuf {
        self.shared.path().join("backup.key")
    }

    /// Lines `node epoch address`, one per promotion hook run (see [`Cluster::start_with`]).
    pub fn hook_log(&self) -> PathBuf {
        self.shared.path().join("hook.log")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.shared.path().join("ca.crt")
    }

    /// Every agent's Redis Sentinel protocol address (master name: the data store id).
    pub fn sentinel_addrs(&self) -> Vec<std::net::SocketAddr> {
        (0..self.nodes.len())
            .map(|i| std::net::SocketAddr::new(self.node_ip(i).into(), SENTINEL_PORT))
            .collect()
    }

    /// The data store id, which is also the Sentinel master name.
    pub fn master_name(&self) -> &str {
        &self.nodes[0].spec.data_store_id
    }

    /// The index of the node whose agent says it is the writable primary, if exactly one does.
    pub fn primary(&self) -> Option<usize> {
        let p = self.writable_primaries();
        (p.len() == 1).then(|| p[0])
    }

    pub fn writable_primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_writable_primary(i))
            .collect()
    }

    /// Whether node i's agent says it is the writable primary.
    pub fn is_writable_primary(&self, i: usize) -> bool {
        self.nodes[i]
            .status()
            .is_some_and(|s| s["role"] == "primary" && s["cluster"]["writable"] == true)
    }

    pub fn epoch(&self, i: usize) -> Option<u64> {
        self.nodes[i].status()?["cluster"]["epoch"].as_u64()
    }

    pub fn wait_primary(&self, timeout: Duration) -> Result<usize> {
        crate::node::wait_for(timeout, Duration::from_millis(50), || self.primary()).with_context(
            || {
                format!(
                    "no single primary within {timeout:?}; logs:\n{}",
                    self.logs()
                )
            },
        )
    }

    /// Wait until the data store is in its steady state: one writable primary and every
    /// other node replicating from it with the link up, for a second on end. Faults injected
    /// right after an election hit the busiest moment (full syncs, forks, fsyncs) instead of
    /// the steady state the scenario means to test.
    pub fn wait_settled(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut steady_since: Option<Instant> = None;
        while Instant::now() < deadline {
            let settled = self.primary().filter(|&p| {
                let replicas_up = (0..self.nodes.len()).filter(|&i| i != p).all(|i| {
                    self.nodes[i].status().is_some_and(|s| {
                        s["redis"]["replication"]
                            .as_str()
                            .is_some_and(|r| r.contains("link up") && !r.contains("FULL SYNC"))
                    })
                });
                replicas_up
            });
            match (settled, steady_since) {
                (Some(p), Some(t)) if t.elapsed() >= Duration::from_secs(1) => return Ok(p),
                (Some(_), None) => steady_since = Some(Instant::now()),
                (Some(_), Some(_)) => {}
                (None, _) => steady_since = None,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the data store did not settle within {timeout:?}; logs:\n{}",
            self.logs()
        )
    }

    /// Wait for a primary other than `old`.
    pub fn wait_new_primary(&self, old: usize, timeout: Duration) -> Result<usize> {
        crate::node::wait_for(timeout, Duration::from_millis(20), || {
            self.primary().filter(|&p| p != old)
        })
        .with_context(|| format!("no new primary within {timeout:?}; logs:\n{}", self.logs()))
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|a| {
                // CLUSTER_LOG_LINES: more of each log, e.g. to study a nemesis round.
                let lines = crate::node::env_or("CLUSTER_LOG_LINES", 60);
                format!(
                    "===== {} =====\n{}",
                    a.spec.node_name,
                    tail(&a.log(), lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kill -9 everything on node i's host (agent and redis): the machine is gone.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        self.bed.kill_all(self.node_hosts[i])?;
        let _ = self.nodes[i].wait_exit(Duration::from_secs(10));
        Ok(())
    }

    /// The redis-cli line for node i, run from the client host. Bounded at 15 s (a busy
    /// machine can take seconds for a process start and a TLS handshake): empty on timeout.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.cli_within(i, Duration::from_secs(15), args)
    }

    /// As [`Cluster::cli`], killed after `limit`.
    pub fn cli_within(&self, i: usize, limit: Duration, args: &[&str]) -> String {
        let ip = self.node_ip(i).to_string();
        self.cli_from(self.client, &ip, limit, args)
    }

    /// redis-cli run on host `from` against `ip` (e.g. 127.0.0.1 on a cut-off node), killed
    /// after `limit` (a paused, fenced write never answers): empty output then.
    pub fn cli_from(&self, from: usize, ip: &str, limit: Duration, args: &[&str]) -> String {
        let mut c = self.bed.host(from).command("timeout");
        c.arg(format!("{}", limit.as_secs_f64())).arg("redis-cli");
        let out = self
            .with_redis_cli_args(c, ip)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A redis-cli for node i as a customer (TLS, password), run from the client host and
    /// without a time limit (e.g. `--pipe` for bulk loads).
    pub fn redis_cli(&self, i: usize) -> Command {
        let c = self.bed.host(self.client).command("redis-cli");
        self.with_redis_cli_args(c, &self.node_ip(i).to_string())
    }

    fn with_redis_cli_args(&self, mut c: Command, ip: &str) -> Command {
        c.args(["--tls", "--cacert"])
            .arg(self.ca_file())
            .args(["-h", ip, "-p", &REDIS_PORT.to_string()])
            .args(["-a", PASSWORD, "--no-auth-warning"]);
        c
    }

    /// How a client reaches this data store: the agents' Sentinel ports, TLS with the shared
    /// CA, the customer password.
    pub fn target(&self) -> SentinelTarget {
        SentinelTarget {
            sentinels: self.sentinel_addrs(),
            master_name: self.master_name().to_string(),
            tls_ca: Some(self.ca_file()),
            password: Some(PASSWORD.to_string()),
            sentinel_password: Some(PASSWORD.to_string()),
        }
    }

    /// Start the writer and the split-brain monitor; stop them with [`Checkers::finish`].
    pub fn start_checkers(self: &Arc<Self>) -> Checkers {
        Checkers::start(self.clone(), "k")
    }

    /// [`Cluster::start_checkers`] with the writer's keys `{prefix}{n}` instead of `k{n}`:
    /// checkers started one after another on the same data store must not share keys, or a
    /// later run's lost write could hide behind an earlier run's copy of the same key.
    pub fn start_checkers_with_prefix(self: &Arc<Self>, prefix: &str) -> Checkers {
        Checkers::start(self.clone(), prefix)
    }
}

/// The backup store taken down by [`Cluster::store_outage`]; back up on [`StoreOutage::end`]
/// or drop.
#[derive(Debug)]
pub struct StoreOutage {
    bucket: PathBuf,
    /// The real folder while the store is down; the stand-in file afterwards.
    aside: PathBuf,
    active: bool,
}

impl StoreOutage {
    /// Bring the store back (the folder returns under its name, atomically).
    pub fn end(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        if std::mem::take(&mut self.active) {
            exchange(&self.bucket, &self.aside)?;
            std::fs::remove_file(&self.aside)?;
        }
        Ok(())
    }
}

impl Drop for StoreOutage {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("bringing the backup store back: {e:#}");
        }
    }
}

/// Swap two paths atomically (renameat2 with RENAME_EXCHANGE; they may differ in type).
fn exchange(a: &std::path::Path, b: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let (ca, cb) = (
        std::ffi::CString::new(a.as_os_str().as_bytes())?,
        std::ffi::CString::new(b.as_os_str().as_bytes())?,
    );
    // SAFETY: renameat2(2) with two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("exchanging {} and {}", a.display(), b.display()));
    }
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the checkers saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys whose write was confirmed by `WAIT 1` (value = key index).
    pub acked: BTreeSet<u64>,
    pub attempts: u64,
    /// Moments (ms since start) at which two agents said they were writable primaries.
    pub split_brain_ms: Vec<u64>,
    /// Time of the first acknowledged write to each new primary: (node, ms since start).
    pub primaries: Vec<(usize, u64)>,
    /// Errors the writer met (failed writes, lookups, reconnects).
    pub errors: u64,
    /// Keys a primary answered OK to (acknowledged or not).
    pub accepted: BTreeSet<u64>,
    /// The writer's keys are `{key_prefix}{n}`.
    pub key_prefix: String,
    /// When each acknowledged write was acknowledged (ms since start), in order.
    pub acked_at_ms: Vec<u64>,
    /// When the checkers were stopped (ms since start).
    pub finished_ms: u64,
}

pub struct Checkers {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    monitor: Option<std::thread::JoinHandle<()>>,
    writer: crate::sentinel_client::Writer,
    started: Instant,
    /// Data node index by IP, to name the primary each write went to.
    node_ips: Vec<String>,
}

impl Checkers {
    fn start(cluster: Arc<Cluster>, key_prefix: &str) -> Checkers {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let started = Instant::now();
        let monitor = {
            let (c, stop, report) = (cluster.clone(), stop.clone(), report.clone());
            std::thread::spawn(move || {
                // Bounded: at most 10 minutes of monitoring.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600)
                {
                    // Statuses are read one after another, each as of the agent's last tick: a
                    // handover can look like two primaries in one scan if this thread stalls
                    // between reads. A real overlap shows again when read in the other order.
                    let twice = c.writable_primaries().len() > 1
                        && (0..c.nodes.len())
                            .rev()
                            .filter(|&i| c.is_writable_primary(i))
                            .count()
                            > 1;
                    if twice {
                        report
                            .lock()
                            .unwrap()
                            .split_brain_ms
                            .push(started.elapsed().as_millis() as u64);
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        };
        let client_ns = cluster.bed.host(cluster.client).name.clone();
        let config = WriterConfig {
            key_prefix: key_prefix.to_string(),
            ..WriterConfig::new(cluster.target())
        };
        let writer = crate::sentinel_client::Writer::start(&client_ns, config)
            .expect("start the Sentinel-discovering writer");
        Checkers {
            stop,
            report,
            monitor: Some(monitor),
            writer,
            started,
            node_ips: (0..cluster.nodes.len())
                .map(|i| cluster.node_ip(i).to_string())
                .collect(),
        }
    }

    /// Wait for the first acknowledged write sent at or after `t`; when it was acknowledged.
    pub fn wait_ack_after(&self, t: Instant, timeout: Duration) -> Option<Instant> {
        self.writer.wait_ack_after(t, timeout)
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.writer.acked()
    }

    /// Wait until at least `n` more writes are acknowledged (bounded by `timeout`).
    pub fn wait_more_acks(&self, n: usize, timeout: Duration) -> bool {
        self.writer.wait_more_acks(n, timeout)
    }

    /// Milliseconds (since the checkers started) at which node `node` first answered OK to a
    /// write (`acked`: first confirmed by `WAIT 1`) sent at or after `at_ms`, waiting up to
    /// `timeout`.
    pub fn first_write_on(
        &self,
        node: usize,
        at_ms: u64,
        acked: bool,
        timeout: Duration,
    ) -> Option<u64> {
        let t = self.started + Duration::from_millis(at_ms);
        let ip = self.node_ips[node].as_str();
        crate::node::wait_for(timeout, Duration::from_millis(20), || {
            let report = self.writer.snapshot();
            report
                .writes
                .iter()
                .filter(|w| w.sent >= t && w.primary.rsplit_once(':').map(|(a, _)| a) == Some(ip))
                .filter_map(|w| if acked { w.acked } else { w.accepted })
                .min()
        })
        .map(|at| at.duration_since(self.started).as_millis() as u64)
    }

    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.monitor.take() {
            let _ = t.join();
        }
        let written = self.writer.finish();
        let mut report = std::mem::take(&mut *self.report.lock().unwrap());
        report.finished_ms = self.started.elapsed().as_millis() as u64;
        report.key_prefix = written.key_prefix.clone();
        report.attempts = written.writes.len() as u64;
        report.errors = written.errors_total;
        report.accepted = written
            .writes
            .iter()
            .filter(|w| w.accepted.is_some())
            .map(|w| w.n)
            .collect();
        let mut acked: Vec<_> = written
            .writes
            .iter()
            .filter(|w| w.acked.is_some())
            .collect();
        acked.sort_by_key(|w| w.acked);
        for w in acked {
            report.acked.insert(w.n);
            if let Some(at) = w.acked {
                let ms = at.duration_since(self.started).as_millis() as u64;
                report.acked_at_ms.push(ms);
            }
            let ip = w.primary.rsplit_once(':').map_or(&*w.primary, |(ip, _)| ip);
            let Some(node) = self.node_ips.iter().position(|n| n == ip) else {
                continue;
            };
            if report.primaries.last().map(|(n, _)| *n) != Some(node) {
                let at = w.acked.unwrap_or(w.sent).duration_since(self.started);
                report.primaries.push((node, at.as_millis() as u64));
            }
        }
        report
    }
}

impl Cluster {
    /// Every acknowledged write must be on the current primary (after the cluster settled).
    pub fn missing_acked(&self, report: &Report) -> Vec<u64> {
        self.missing_with_prefix(&report.key_prefix, &report.acked)
    }

    /// The writer's keys among `keys` that the current primary lacks.
    pub fn missing(&self, keys: &BTreeSet<u64>) -> Vec<u64> {
        self.missing_with_prefix("k", keys)
    }

    /// Keys `{prefix}{n}` for `n` in `keys` that the current primary lacks.
    pub fn missing_with_prefix(&self, prefix: &str, keys: &BTreeSet<u64>) -> Vec<u64> {
        let p = match self.wait_primary(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => return keys.iter().copied().collect(),
        };
        let keys: Vec<u64> = keys.iter().copied().collect();
        let have = crate::backups::present(&keys, prefix, |args| self.cli(p, args));
        keys.into_iter().filter(|k| !have.contains(k)).collect()
    }
}
