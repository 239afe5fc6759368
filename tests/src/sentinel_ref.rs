//! The reference to beat: Debian's Redis Sentinel (redis-server + redis-sentinel 7.0) deployed
//! the textbook way on a namespace [`Testbed`], so the failover benchmarks can run the same
//! client and the same faults against it and against redis-steward.
//!
//! Layout: data node `i` (host `i`) runs a redis-server and a redis-sentinel beside it; node 0
//! starts as the primary, the others as its replicas. The last host is the client host. With
//! 2 data nodes a third sentinel runs on the client host, which is what a 2-node Sentinel
//! deployment needs to reach a quorum of 2 once a node is gone.
//!
//! Configuration (the usual production shape, timing from [`RefConfig`]):
//! `sentinel monitor <MASTER_NAME> <ip> 6379 2`, `down-after-milliseconds` D,
//! `failover-timeout` F, `parallel-syncs 1`, `resolve-hostnames no`; the data nodes and the
//! sentinels require [`PASSWORD`] (`requirepass`/`masterauth`, `auth-pass`, `sentinel-pass`).
//! With `tls` (the default, as redis-steward has it) every port is TLS only (`port 0`,
//! `tls-port`, `tls-replication yes`, certificates with the hosts' IP SANs from one CA) and
//! clients need no certificate of their own. Persistence is off (`save ""`, no AOF): a killed
//! node is gone for good in these scenarios, and what survives is what was replicated.
//! `min-replicas-to-write` is left at its default (off), as in Debian's packaged config.
//!
//! Every process is started inside the testbed's namespaces and killed when the deployment is
//! dropped (also while a failing test unwinds); files live in a temporary directory.

use crate::netns::Testbed;
use crate::node::PASSWORD;
use crate::sentinel_client::{probe_writable, ProbeTarget, SentinelTarget};
use anyhow::{bail, ensure, Context, Result};
use redis_steward::config::TlsConfig;
use redis_steward::node::layout::Layout;
use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The data nodes' port (TLS or plain, as configured).
pub const REDIS_PORT: u16 = 6379;
/// The sentinels' port.
pub const SENTINEL_PORT: u16 = 26379;
/// The monitored master's name: the same as the redis-steward test data store's id, so
/// clients are configured identically for both.
pub const MASTER_NAME: &str = "ha-test";

/// Bound for a redis-cli call (it only ever runs single quick commands).
const CLI_TIMEOUT_SECS: &str = "3";
/// Bound for a freshly started deployment to be replicated and fully known to its sentinels.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Shape and timing of a reference deployment.
#[derive(Debug, Clone)]
pub struct RefConfig {
    /// Data nodes (redis-server + redis-sentinel each), at least 2.
    pub data_nodes: usize,
    /// `sentinel down-after-milliseconds`.
    pub down_after_ms: u64,
    /// `sentinel failover-timeout`. Only matters when a failover attempt fails (e.g. a split
    /// vote): the next attempt waits 2 × this, so the packaged 180 s would turn one split
    /// vote into minutes of downtime.
    pub failover_timeout_ms: u64,
    /// TLS on every port (otherwise plain TCP).
    pub tls: bool,
}

impl RefConfig {
    /// TLS, `failover-timeout` 10 s.
    pub fn new(data_nodes: usize, down_after_ms: u64) -> RefConfig {
        RefConfig {
            data_nodes,
            down_after_ms,
            failover_timeout_ms: 10_000,
            tls: true,
        }
    }
}

/// A process this deployment started.
struct Proc {
    host: usize,
    what: &'static str,
    child: Child,
}

/// A running Redis Sentinel deployment. Drop kills its processes and removes its namespaces.
pub struct SentinelRef {
    pub config: RefConfig,
    procs: Mutex<Vec<Proc>>,
    // Field order is drop order: the testbed (which kills whatever is left in its
    // namespaces) goes before the directory holding the processes' files.
    pub bed: Testbed,
    dir: tempfile::TempDir,
    /// Hosts running a sentinel, in the order clients are given them.
    sentinel_hosts: Vec<usize>,
}

impl SentinelRef {
    /// Starts the deployment and returns once the replicas are in sync and every sentinel
    /// knows every replica and every other sentinel (so a failover can happen right away).
    pub fn start(config: RefConfig) -> Result<SentinelRef> {
        ensure!(
            config.data_nodes >= 2,
            "a Sentinel deployment needs at least 2 data nodes, {} requested",
            config.data_nodes
        );
        // Leftovers of killed test runs (which never ran Drop) would only slow this one.
        let _ = crate::netns::cleanup_stale();
        let n = config.data_nodes;
        let bed = Testbed::new(n + 1)?;
        let dir = tempfile::Builder::new()
            .prefix("rs-sentinel-ref-")
            .tempdir()
            .context("creating the deployment's directory")?;
        let mut sentinel_hosts: Vec<usize> = (0..n).collect();
        if n == 2 {
            sentinel_hosts.push(n);
        }
        let deployment = SentinelRef {
            config,
            procs: Mutex::new(Vec::new()),
            bed,
            dir,
            sentinel_hosts,
        };
        deployment.start_processes().with_context(|| {
            format!(
                "starting the Redis Sentinel reference; logs:\n{}",
                deployment.logs()
            )
        })?;
        Ok(deployment)
    }

    fn start_processes(&self) -> Result<()> {
        let n = self.config.data_nodes;
        if self.config.tls {
            for i in (0..n).chain(self.sentinel_hosts.iter().copied()) {
                self.make_certificate(i)?;
            }
        }
        let primary_ip = self.bed.host(0).ip;
        for i in 0..n {
            let conf = self.redis_conf(i, (i > 0).then_some(primary_ip));
            let path = self.write_file(i, "redis.conf", &conf)?;
            self.spawn(i, "redis-server", &path)?;
        }
        for i in 0..n {
            self.wait_cli(i, REDIS_PORT, &["PING"], |out| out == "PONG")
                .with_context(|| format!("redis on node {i} did not answer PING"))?;
        }
        for i in 1..n {
            self.wait_cli(i, REDIS_PORT, &["INFO", "replication"], |out| {
                out.lines().any(|l| l.trim() == "master_link_status:up")
            })
            .with_context(|| format!("replica {i} did not sync from node 0"))?;
        }
        for &h in &self.sentinel_hosts {
            let conf = self.sentinel_conf(h, primary_ip);
            let path = self.write_file(h, "sentinel.conf", &conf)?;
            self.spawn(h, "redis-sentinel", &path)?;
        }
        let (replicas, others) = (n - 1, self.sentinel_hosts.len() - 1);
        for &h in &self.sentinel_hosts {
            self.wait_cli(
                h,
                SENTINEL_PORT,
                &["SENTINEL", "master", MASTER_NAME],
                |out| {
                    let fields = pairs(out);
                    fields.get("flags").map(String::as_str) == Some("master")
                        && fields.get("num-slaves") == Some(&replicas.to_string())
                        && fields.get("num-other-sentinels") == Some(&others.to_string())
                },
            )
            .with_context(|| {
                format!(
                    "sentinel on host {h} did not learn {replicas} replicas \
                     and {others} other sentinels"
                )
            })?;
            self.wait_cli(
                h,
                SENTINEL_PORT,
                &["SENTINEL", "ckquorum", MASTER_NAME],
                |out| out.starts_with("OK"),
            )
            .with_context(|| format!("sentinel on host {h} sees no usable quorum"))?;
        }
        Ok(())
    }

    /// Index of the client host (the last one).
    pub fn client_host(&self) -> usize {
        self.config.data_nodes
    }

    /// The client host's namespace, where writers and verifiers run.
    pub fn client_netns(&self) -> &str {
        &self.bed.host(self.client_host()).name
    }

    /// Every sentinel's address, in client order.
    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinel_hosts
            .iter()
            .map(|&h| SocketAddr::from((self.bed.host(h).ip, SENTINEL_PORT)))
            .collect()
    }

    /// How a client reaches this deployment through its sentinels.
    pub fn target(&self) -> SentinelTarget {
        SentinelTarget {
            sentinels: self.sentinel_addrs(),
            master_name: MASTER_NAME.into(),
            tls_ca: self.config.tls.then(|| self.ca_file()),
            password: Some(PASSWORD.into()),
            sentinel_password: Some(PASSWORD.into()),
        }
    }

    /// The CA that signed every certificate (exists only with TLS).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// How the split-brain monitor probes each data node: from inside the node's own
    /// namespace over loopback, so a node cut off from everyone is still seen.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        (0..self.config.data_nodes)
            .map(|i| ProbeTarget {
                name: format!("node-{i}"),
                netns: self.bed.host(i).name.clone(),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, REDIS_PORT)),
                tls_ca: self.config.tls.then(|| self.ca_file()),
                password: Some(PASSWORD.into()),
            })
            .collect()
    }

    /// Data nodes that are writable primaries right now: INFO says `role:master` and a `SET`
    /// of a private probe key (outside every writer's key space) is accepted.
    pub fn writable_primaries(&self) -> Vec<usize> {
        self.probe_targets()
            .iter()
            .enumerate()
            .filter(|(_, t)| probe_writable(t))
            .map(|(i, _)| i)
            .collect()
    }

    /// The data node whose redis says `role:master`, if exactly one does (dead nodes do not
    /// answer and so do not count).
    pub fn primary(&self) -> Option<usize> {
        let masters: Vec<usize> = (0..self.config.data_nodes)
            .filter(|&i| {
                self.cli(i, REDIS_PORT, &["INFO", "replication"])
                    .is_ok_and(|out| out.lines().any(|l| l.trim() == "role:master"))
            })
            .collect();
        (masters.len() == 1).then(|| masters[0])
    }

    /// Waits until exactly one data node says it is the master and returns it.
    pub fn wait_primary(&self, timeout: Duration) -> Result<usize> {
        crate::node::wait_for(timeout, POLL_INTERVAL, || self.primary())
            .with_context(|| format!("no single master within {timeout:?}"))
    }

    /// The "machine dies" fault: SIGKILL of everything on host `i` (its redis and its
    /// sentinel). Returns how many processes were killed.
    pub fn kill(&self, i: usize) -> Result<usize> {
        let killed = self.bed.kill_all(i)?;
        // Reap them, so no zombie is left until Drop.
        for p in self.procs().iter_mut().filter(|p| p.host == i) {
            let _ = p.child.wait();
        }
        Ok(killed)
    }

    /// Cuts host `i` off from every other host (its switch port goes down).
    pub fn isolate(&self, i: usize) -> Result<()> {
        self.bed.isolate(i)
    }

    /// Reverses [`isolate`](Self::isolate).
    pub fn heal(&self, i: usize) -> Result<()> {
        self.bed.heal(i)
    }

    /// The last lines of every redis and sentinel log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.bed.hosts().len() {
            for file in [
                "redis.log",
                "sentinel.log",
                "redis-server.stderr",
                "redis-sentinel.stderr",
            ] {
                let path = self.host_dir(i).join(file);
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    out += &format!("===== host {i} {file} =====\n{tail}\n");
                }
            }
        }
        out
    }

    /// Removes everything now (Drop does the same).
    pub fn cleanup(self) {
        drop(self);
    }

    /// redis-cli on host `i` against its own server on `port` over loopback.
    fn cli(&self, i: usize, port: u16, args: &[&str]) -> Result<String> {
        let port = port.to_string();
        let ca = self.ca_file();
        let mut argv: Vec<&str> = vec!["timeout", CLI_TIMEOUT_SECS, "redis-cli"];
        if self.config.tls {
            argv.extend([
                "--tls",
                "--cacert",
                ca.to_str().context("CA path is not UTF-8")?,
            ]);
        }
        argv.extend([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-a",
            PASSWORD,
            "--no-auth-warning",
        ]);
        argv.extend(args);
        Ok(self.bed.host(i).exec(&argv)?.trim().to_string())
    }

    /// Polls a redis-cli command on host `i` until `ok` accepts its output.
    fn wait_cli(
        &self,
        i: usize,
        port: u16,
        args: &[&str],
        ok: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = String::new();
        for _ in 0..SETTLE_TIMEOUT.as_millis() / POLL_INTERVAL.as_millis() + 2 {
            match self.cli(i, port, args) {
                Ok(out) if ok(&out) => return Ok(()),
                Ok(out) => last = out,
                Err(err) => last = format!("{err:#}"),
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        bail!(
            "`{}` on host {i}:{port} within {SETTLE_TIMEOUT:?}; last answer: {last}",
            args.join(" ")
        )
    }

    fn host_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("host-{i}"))
    }

    fn write_file(&self, i: usize, name: &str, text: &str) -> Result<PathBuf> {
        let dir = self.host_dir(i);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A certificate for host `i` with its IP (and loopback) as SANs, from the shared CA:
    /// the same generator the agent uses in development mode.
    fn make_certificate(&self, i: usize) -> Result<()> {
        let host_dir = self.host_dir(i);
        let layout = Layout::new(&host_dir.join("data"), &host_dir.join("state"));
        let tls = TlsConfig::Generate {
            ca_file: Some(self.ca_file()),
            ca_key_file: Some(self.dir.path().join("ca.key")),
        };
        redis_steward::node::tls::prepare(
            &tls,
            &layout,
            &format!("host-{i}"),
            &[self.bed.host(i).ip.into()],
        )
        .with_context(|| format!("making a certificate for host {i}"))?;
        Ok(())
    }

    /// The TLS (or plain) listener lines for `port`.
    fn listener_conf(&self, i: usize, port: u16) -> String {
        if !self.config.tls {
            return format!("port {port}\n");
        }
        let tls_dir = Layout::new(
            &self.host_dir(i).join("data"),
            &self.host_dir(i).join("state"),
        )
        .tls_dir();
        format!(
            "port 0\n\
             tls-port {port}\n\
             tls-cert-file {cert}\n\
             tls-key-file {key}\n\
             tls-ca-cert-file {ca}\n\
             # Clients authenticate with the password, not with certificates.\n\
             tls-auth-clients no\n\
             # Replication (and, in a sentinel, its links to the data nodes) over TLS too.\n\
             tls-replication yes\n",
            cert = tls_dir.join("node.crt").display(),
            key = tls_dir.join("node.key").display(),
            ca = self.ca_file().display(),
        )
    }

    fn redis_conf(&self, i: usize, replica_of: Option<Ipv4Addr>) -> String {
        let dir = self.host_dir(i);
        let mut conf = format!(
            "bind 0.0.0.0\n\
             protected-mode no\n\
             daemonize no\n\
             dir {dir}\n\
             logfile {dir}/redis.log\n\
             {listener}\
             requirepass {PASSWORD}\n\
             masterauth {PASSWORD}\n\
             save \"\"\n\
             appendonly no\n\
             # Only speeds up the initial full syncs at start; failover resyncs are partial.\n\
             repl-diskless-sync-delay 0\n",
            dir = dir.display(),
            listener = self.listener_conf(i, REDIS_PORT),
        );
        if let Some(ip) = replica_of {
            conf += &format!("replicaof {ip} {REDIS_PORT}\n");
        }
        conf
    }

    fn sentinel_conf(&self, i: usize, primary: Ipv4Addr) -> String {
        let dir = self.host_dir(i);
        format!(
            "bind 0.0.0.0\n\
             protected-mode no\n\
             daemonize no\n\
             dir {dir}\n\
             logfile {dir}/sentinel.log\n\
             {listener}\
             requirepass {PASSWORD}\n\
             sentinel sentinel-pass {PASSWORD}\n\
             sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER_NAME} {primary} {REDIS_PORT} 2\n\
             sentinel auth-pass {MASTER_NAME} {PASSWORD}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {down}\n\
             sentinel failover-timeout {MASTER_NAME} {failover}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.display(),
            listener = self.listener_conf(i, SENTINEL_PORT),
            down = self.config.down_after_ms,
            failover = self.config.failover_timeout_ms,
        )
    }

    /// Starts `program config` inside host `i`; its stdout/stderr go to a file beside the
    /// config (startup errors land there before the log file is open).
    fn spawn(&self, i: usize, program: &'static str, config: &Path) -> Result<()> {
        let out_path = self.host_dir(i).join(format!("{program}.stderr"));
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let child = self
            .bed
            .host(i)
            .command(program)
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("duplicating a file handle")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {program} on host {i}"))?;
        self.procs().push(Proc {
            host: i,
            what: program,
            child,
        });
        Ok(())
    }

    fn procs(&self) -> MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SentinelRef {
    /// Kills and reaps every process this deployment started; the testbed's own Drop then
    /// kills anything else in its namespaces and deletes them. Never panics.
    fn drop(&mut self) {
        for p in self.procs().iter_mut() {
            if let Err(err) = p.child.kill() {
                // Already dead (e.g. killed by a fault) is the normal case.
                if err.kind() != std::io::ErrorKind::InvalidInput {
                    eprintln!(
                        "sentinel reference: killing {} on host {}: {err}",
                        p.what, p.host
                    );
                }
            }
            let _ = p.child.wait();
        }
    }
}

/// `SENTINEL master` output as printed by redis-cli (one field or value per line) → map.
fn pairs(out: &str) -> HashMap<String, String> {
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_master_output_parses_into_fields() {
        let fields = pairs("name\nha-test\nflags\nmaster\nnum-slaves\n2\n");
        assert_eq!(fields["flags"], "master");
        assert_eq!(fields["num-slaves"], "2");
    }
}
