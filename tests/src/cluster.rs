//! A whole data store on a namespace testbed: N agents (each on its own host with its own
//! address), one extra host for clients, a shared CA, gossip key and backup folder, plus the
//! checkers every fault scenario runs: a writer whose writes count only once `WAIT 1`
//! confirms them, and a monitor that records every moment two nodes were writable primaries.

use crate::netns::{run_in_netns, Testbed};
use crate::node::{Agent, NodeSpec, PASSWORD};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const REDIS_PORT: u16 = 6380;
pub const GOSSIP_PORT: u16 = 7946;

pub struct Cluster {
    // Field order is drop order: agents stop before their namespaces go.
    pub nodes: Vec<Agent>,
    pub bed: Testbed,
    /// Shared files: CA, gossip key, backups.
    pub shared: tempfile::TempDir,
    pub plan: String,
}

impl Cluster {
    /// Start a `plan` data store ("business" = 2 nodes, "premium" = 3) and wait for a primary.
    pub fn start(plan: &str) -> Result<Cluster> {
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
        };
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
                    self.bed.host(j).ip
                )
            })
            .collect();
        let mut t = format!(
            "\n[tls]\nca_file = \"{0}/ca.crt\"\nca_key_file = \"{0}/ca.key\"\n\n[cluster]\nadvertise_address = \"{1}\"\ngossip_port = {GOSSIP_PORT}\ngossip_key_file = \"{0}/gossip.key\"\nnodes = [\n{2}\n]\n",
            self.shared.path().display(),
            self.bed.host(i).ip,
            nodes.join("\n"),
        );
        if self.plan == "business" {
            t += &format!(
                "\n[backup]\nurl = \"file://{}/bucket\"\n",
                self.shared.path().display()
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
        spec.memory_limit_mb = Some(1024);
        spec.extra = self.cluster_toml(i);
        Ok(Agent::prepare(spec)?.in_netns(&self.bed.host(i).name))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.shared.path().join("ca.crt")
    }

    /// The index of the node whose agent says it is the writable primary, if exactly one does.
    pub fn primary(&self) -> Option<usize> {
        let p = self.writable_primaries();
        (p.len() == 1).then(|| p[0])
    }

    pub fn writable_primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .status()
                    .is_some_and(|s| s["role"] == "primary" && s["cluster"]["writable"] == true)
            })
            .collect()
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
            .map(|a| format!("===== {} =====\n{}", a.spec.node_name, tail(&a.log(), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kill -9 everything on node i's host (agent and redis): the machine is gone.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        self.bed.kill_all(i)?;
        let _ = self.nodes[i].wait_exit(Duration::from_secs(10));
        Ok(())
    }

    /// The redis-cli line for node i, run from the client host.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        let client = self.bed.hosts().len() - 1;
        self.cli_from(client, &self.bed.host(i).ip.to_string(), args)
    }

    /// redis-cli run on host `from` against `ip` (e.g. 127.0.0.1 on a cut-off node), with a
    /// 2-second limit: a paused (fenced) write never answers.
    pub fn cli_from(&self, from: usize, ip: &str, args: &[&str]) -> String {
        let out = self
            .bed
            .host(from)
            .command("timeout")
            .args(["2", "redis-cli", "--tls", "--cacert"])
            .arg(self.ca_file())
            .args(["-h", ip, "-p", &REDIS_PORT.to_string()])
            .args(["-a", PASSWORD, "--no-auth-warning"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Start the writer and the split-brain monitor; stop them with [`Checkers::finish`].
    pub fn start_checkers(self: &Arc<Self>) -> Checkers {
        Checkers::start(self.clone())
    }
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
}

pub struct Checkers {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Checkers {
    fn start(cluster: Arc<Cluster>) -> Checkers {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let started = Instant::now();
        let mut threads = Vec::new();
        {
            let (c, stop, report) = (cluster.clone(), stop.clone(), report.clone());
            threads.push(std::thread::spawn(move || {
                // Bounded: at most 10 minutes of monitoring.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600)
                {
                    if c.writable_primaries().len() > 1 {
                        report
                            .lock()
                            .unwrap()
                            .split_brain_ms
                            .push(started.elapsed().as_millis() as u64);
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            }));
        }
        {
            let (c, stop, report) = (cluster, stop.clone(), report.clone());
            let client_ns = c.bed.host(c.bed.hosts().len() - 1).name.clone();
            threads.push(std::thread::spawn(move || {
                run_in_netns(&client_ns, || writer(&c, &stop, &report, started));
            }));
        }
        Checkers {
            stop,
            report,
            threads,
            started,
        }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.report.lock().unwrap().acked.len()
    }

    /// Wait until at least `n` more writes are acknowledged (bounded by `timeout`).
    pub fn wait_more_acks(&self, n: usize, timeout: Duration) -> bool {
        let base = self.acked();
        crate::node::wait_for(timeout, Duration::from_millis(20), || {
            (self.acked() >= base + n).then_some(())
        })
        .is_some()
    }

    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.report)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_else(|arc| std::mem::take(&mut *arc.lock().unwrap()))
    }
}

/// Numbered writes to whichever node the agents call primary; a write counts only after
/// `WAIT 1 1000` says a replica has it.
fn writer(c: &Cluster, stop: &AtomicBool, report: &Mutex<Report>, started: Instant) {
    // object_store brings a second rustls provider: name the one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = std::fs::read(c.ca_file()).unwrap();
    rt.block_on(async {
        let mut conn: Option<(usize, redis::aio::MultiplexedConnection)> = None;
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
            if conn.is_none() {
                let Some(p) = c.primary() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let url = format!(
                    "rediss://default:{PASSWORD}@{}:{REDIS_PORT}",
                    c.bed.host(p).ip
                );
                let client = redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    },
                )
                .unwrap();
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(1500)));
                match client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                {
                    Ok(cn) => conn = Some((p, cn)),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let (node, cn) = conn.as_mut().unwrap();
            let node = *node;
            i += 1;
            report.lock().unwrap().attempts += 1;
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("w{i}"))
                .arg(i)
                .query_async(cn)
                .await;
            let ok = match set {
                Ok(()) => {
                    let n: redis::RedisResult<i64> =
                        redis::cmd("WAIT").arg(1).arg(1000).query_async(cn).await;
                    matches!(n, Ok(n) if n >= 1)
                }
                Err(_) => false,
            };
            if ok {
                let mut r = report.lock().unwrap();
                r.acked.insert(i);
                if r.primaries.last().map(|(n, _)| *n) != Some(node) {
                    r.primaries
                        .push((node, started.elapsed().as_millis() as u64));
                }
            } else {
                conn = None;
            }
        }
    });
}

impl Cluster {
    /// Every acknowledged write must be on the current primary (after the cluster settled).
    pub fn missing_acked(&self, report: &Report) -> Vec<u64> {
        let p = match self.wait_primary(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(_) => return report.acked.iter().copied().collect(),
        };
        let keys: Vec<String> = report.acked.iter().map(|i| format!("w{i}")).collect();
        let mut missing = Vec::new();
        for chunk in keys.chunks(500) {
            let mut args = vec!["MGET"];
            args.extend(chunk.iter().map(String::as_str));
            let out = self.cli(p, &args);
            let values: Vec<&str> = out.lines().collect();
            for (k, v) in chunk
                .iter()
                .zip(values.iter().chain(std::iter::repeat(&"")))
            {
                if v.is_empty() {
                    missing.push(k[1..].parse().unwrap());
                }
            }
        }
        missing
    }
}
