//! A client that finds the primary the way applications do: through the Redis Sentinel
//! protocol (redis-rs's `SentinelClient`), so failover can be measured as a client sees it and
//! the same harness runs against redis-steward's Sentinel port and against real Redis Sentinel.
//!
//! * [`Writer`]: numbered writes `{prefix}{n}` on their own thread inside a host's network
//!   namespace. A write counts as *acknowledged* only once `WAIT 1 <timeout>` reports a replica
//!   has it; on any error, or a `WAIT` that no replica confirmed, the connection is dropped and
//!   the primary is looked up again through the sentinels. Every write keeps the time it was
//!   sent, accepted (`SET` answered `OK`) and acknowledged, so "first acknowledged write sent
//!   after the kill" is computable afterwards ([`WriterReport::first_ack_after`]).
//! * [`verify`]: reads every acknowledged key back from the primary the sentinels name, and
//!   returns the ones that are missing: the acknowledged writes a failover lost.
//! * [`SplitBrainMonitor`]: probes every data node from inside its own namespace (so a node cut
//!   off from the rest is still seen) and records when two of them were writable primaries at
//!   once.
//!
//! Everything talks to the network from inside a testbed namespace (see
//! [`run_in_netns`]), with a current-thread tokio runtime built there. Every loop is bounded
//! in iterations and in time, and every network call has a timeout.

use crate::netns::run_in_netns;
use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, TlsCertificates, TlsMode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pause after a failed lookup or write before trying again: short, because it adds directly
/// to the measured failover time, yet long enough not to spin two cores on a dead primary.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Bound for one primary lookup through the sentinels. redis-rs bounds each step itself
/// (1 s connect, 500 ms response); this caps the sum when several sentinels are unreachable.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound for a TCP (+ TLS) connect to a data node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Hard bound on the life of a writer or monitor, whatever the caller does.
const MAX_RUN: Duration = Duration::from_secs(30 * 60);

/// Iteration bound for writer and monitor loops (each iteration takes at least a round trip,
/// so [`MAX_RUN`] ends them first in practice).
const MAX_ITERATIONS: u64 = 50_000_000;

/// How many error messages a writer keeps (all are counted).
const MAX_ERRORS_KEPT: usize = 2_000;

/// Keys read back per `MGET` by [`verify`].
const VERIFY_CHUNK: usize = 500;

/// Where the sentinels are and how to talk to them and to the data nodes they name.
#[derive(Debug, Clone)]
pub struct SentinelTarget {
    /// Sentinel endpoints, in the order the client asks them.
    pub sentinels: Vec<SocketAddr>,
    /// The monitored master's name (for redis-steward: the data store id).
    pub master_name: String,
    /// PEM CA that signs every sentinel's and data node's certificate; `None` = plain TCP.
    /// With TLS, certificates must carry the IP SANs the sentinels hand out.
    pub tls_ca: Option<PathBuf>,
    /// `AUTH` password for the data nodes (user `default`).
    pub password: Option<String>,
    /// `AUTH` password for the sentinels.
    pub sentinel_password: Option<String>,
}

impl SentinelTarget {
    /// A redis-rs Sentinel client for this target. Build it inside the namespace that will use
    /// it (it connects lazily, so building is cheap).
    fn client(&self) -> Result<SentinelClient> {
        let certs = self.certificates()?;
        let sentinels = self.sentinels.iter().map(|a| {
            let (host, port) = (a.ip().to_string(), a.port());
            if certs.is_some() {
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host, port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(sentinels, &self.master_name, SentinelServerType::Master)
                .context("configuring the Sentinel client")?;
        if let Some(certs) = certs {
            builder = builder
                .set_client_to_sentinel_certificates(certs.clone())
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_redis_certificates(certs);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        builder.build().with_context(|| {
            format!(
                "building a Sentinel client for {:?} at {:?}",
                self.master_name, self.sentinels
            )
        })
    }

    fn certificates(&self) -> Result<Option<TlsCertificates>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let pem = std::fs::read(ca).with_context(|| format!("reading CA {}", ca.display()))?;
        Ok(Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }
}

/// What a [`Writer`] writes and how long it waits for a replica.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub target: SentinelTarget,
    /// Keys are `{key_prefix}{n}` with value `n`, n = 1, 2, ... Use a fresh prefix per run
    /// when a deployment is reused, so [`verify`] checks only this run's keys.
    pub key_prefix: String,
    /// The `<timeout>` of `WAIT 1 <timeout>`, in milliseconds.
    pub wait_timeout_ms: u64,
}

impl WriterConfig {
    /// Keys `k{n}`, `WAIT 1 1000`.
    pub fn new(target: SentinelTarget) -> WriterConfig {
        WriterConfig {
            target,
            key_prefix: "k".into(),
            wait_timeout_ms: 1000,
        }
    }
}

/// One write of a [`Writer`].
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// Key number: the key is `{prefix}{n}`, its value `n`.
    pub n: u64,
    /// When `SET` was sent.
    pub sent: Instant,
    /// When the primary answered `OK` to the `SET`.
    pub accepted: Option<Instant>,
    /// When `WAIT 1` reported at least one replica has it: the write is acknowledged.
    pub acked: Option<Instant>,
    /// The primary it went to (`ip:port`, as the sentinels named it).
    pub primary: Arc<str>,
}

/// An error the writer met, with the step it happened in.
#[derive(Debug, Clone)]
pub struct WriterError {
    pub at: Instant,
    /// `discover`, `set` or `wait`.
    pub step: &'static str,
    pub message: String,
}

/// Everything a [`Writer`] saw.
#[derive(Debug, Clone)]
pub struct WriterReport {
    pub started: Instant,
    pub key_prefix: String,
    /// Every write sent, in order.
    pub writes: Vec<WriteRecord>,
    /// The first [`MAX_ERRORS_KEPT`] errors.
    pub errors: Vec<WriterError>,
    pub errors_total: u64,
    /// Each time the sentinels led the writer to a primary: (when, `ip:port`).
    pub connections: Vec<(Instant, Arc<str>)>,
}

impl WriterReport {
    fn new(started: Instant, key_prefix: String) -> WriterReport {
        WriterReport {
            started,
            key_prefix,
            writes: Vec::new(),
            errors: Vec::new(),
            errors_total: 0,
            connections: Vec::new(),
        }
    }

    /// Numbers of the acknowledged keys.
    pub fn acked_keys(&self) -> Vec<u64> {
        self.writes
            .iter()
            .filter(|w| w.acked.is_some())
            .map(|w| w.n)
            .collect()
    }

    /// Numbers of the keys whose `SET` was answered `OK` (acknowledged or not): what a
    /// client that does not use `WAIT` believes it stored.
    pub fn accepted_keys(&self) -> Vec<u64> {
        self.writes
            .iter()
            .filter(|w| w.accepted.is_some())
            .map(|w| w.n)
            .collect()
    }

    pub fn acked_count(&self) -> usize {
        self.writes.iter().filter(|w| w.acked.is_some()).count()
    }

    /// When the first write *sent* at or after `t` was acknowledged. Only writes sent after
    /// `t` count, so a `WAIT` that was already in flight at a kill cannot pass for recovery.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.writes
            .iter()
            .filter(|w| w.sent >= t)
            .filter_map(|w| w.acked)
            .min()
    }

    /// Like [`first_ack_after`](Self::first_ack_after) for acceptance (`SET` → `OK`), the
    /// measure when no replica is left to acknowledge (a 2-node deployment after a kill).
    pub fn first_accept_after(&self, t: Instant) -> Option<Instant> {
        self.writes
            .iter()
            .filter(|w| w.sent >= t)
            .filter_map(|w| w.accepted)
            .min()
    }

    /// Acknowledged writes sent in `[from, to)`.
    pub fn acked_between(&self, from: Instant, to: Instant) -> usize {
        self.writes
            .iter()
            .filter(|w| w.acked.is_some() && w.sent >= from && w.sent < to)
            .count()
    }

    /// Acknowledged writes per primary (`ip:port` → count).
    pub fn acked_by_primary(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for w in self.writes.iter().filter(|w| w.acked.is_some()) {
            *out.entry(w.primary.to_string()).or_default() += 1;
        }
        out
    }

    /// A one-line summary plus the last few errors, for test output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} writes, {} accepted, {} acknowledged, {} errors, primaries {:?}",
            self.writes.len(),
            self.writes.iter().filter(|w| w.accepted.is_some()).count(),
            self.acked_count(),
            self.errors_total,
            self.acked_by_primary()
        );
        for e in self.errors.iter().rev().take(5).rev() {
            s += &format!(
                "\n  +{:?} {}: {}",
                e.at.duration_since(self.started),
                e.step,
                e.message
            );
        }
        s
    }

    fn error(&mut self, step: &'static str, message: String) {
        self.errors_total += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(WriterError {
                at: Instant::now(),
                step,
                message,
            });
        }
    }
}

/// A running Sentinel-discovering writer; stop it with [`finish`](Self::finish) (dropping it
/// also stops it).
pub struct Writer {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<WriterReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts writing from inside network namespace `netns` (a testbed host's name).
    pub fn start(netns: &str, config: WriterConfig) -> Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(WriterReport::new(
            Instant::now(),
            config.key_prefix.clone(),
        )));
        let thread = {
            let (stop, report, netns) = (stop.clone(), report.clone(), netns.to_string());
            std::thread::Builder::new()
                .name("sentinel-writer".into())
                .spawn(move || {
                    run_in_netns(&netns, || {
                        let result = current_thread_runtime()
                            .map(|rt| rt.block_on(write_loop(&config, &stop, &report)));
                        if let Err(err) = result.and_then(|r| r) {
                            lock(&report).error("start", format!("{err:#}"));
                        }
                    })
                })
                .context("spawning the writer thread")?
        };
        Ok(Writer {
            stop,
            report,
            thread: Some(thread),
        })
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> usize {
        lock(&self.report).acked_count()
    }

    /// Waits until at least `n` more writes than now are acknowledged; false on timeout.
    pub fn wait_more_acks(&self, n: usize, timeout: Duration) -> bool {
        let target = self.acked() + n;
        poll(timeout, || (self.acked() >= target).then_some(())).is_some()
    }

    /// Waits for the first acknowledged write sent at or after `t`, and returns when it was
    /// acknowledged.
    pub fn wait_ack_after(&self, t: Instant, timeout: Duration) -> Option<Instant> {
        poll(timeout, || lock(&self.report).first_ack_after(t))
    }

    /// Waits for the first accepted write (`SET` → `OK`) sent at or after `t`.
    pub fn wait_accept_after(&self, t: Instant, timeout: Duration) -> Option<Instant> {
        poll(timeout, || lock(&self.report).first_accept_after(t))
    }

    /// A copy of what the writer saw so far.
    pub fn snapshot(&self) -> WriterReport {
        lock(&self.report).clone()
    }

    /// Stops the writer (its last write finishes or times out first) and returns its report.
    pub fn finish(mut self) -> WriterReport {
        self.stop_and_join();
        std::mem::replace(
            &mut *lock(&self.report),
            WriterReport::new(Instant::now(), String::new()),
        )
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                lock(&self.report).error("thread", "the writer thread panicked".into());
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Outcome of one `SET` + `WAIT 1`.
enum WriteOutcome {
    Acked,
    /// `SET` answered `OK` but `WAIT` saw this many replicas (< 1).
    NotConfirmed(i64),
}

async fn write_loop(
    config: &WriterConfig,
    stop: &AtomicBool,
    report: &Mutex<WriterReport>,
) -> Result<()> {
    let mut client = config.target.client()?;
    // WAIT blocks for up to its own timeout: the response bound must be longer.
    let wait_timeout = Duration::from_millis(config.wait_timeout_ms);
    let conn_config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(wait_timeout + Duration::from_secs(1)));
    let deadline = Instant::now() + MAX_RUN;
    let mut conn: Option<(Arc<str>, MultiplexedConnection)> = None;
    let mut n: u64 = 0;
    for _ in 0..MAX_ITERATIONS {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let (primary, connection) = match &mut conn {
            Some((primary, connection)) => (primary.clone(), connection),
            None => {
                match discover(&mut client, &conn_config).await {
                    Ok((primary, connection)) => {
                        lock(report)
                            .connections
                            .push((Instant::now(), primary.clone()));
                        conn = Some((primary, connection));
                    }
                    Err(err) => {
                        lock(report).error("discover", format!("{err:#}"));
                        tokio::time::sleep(RETRY_INTERVAL).await;
                    }
                }
                continue;
            }
        };
        n += 1;
        let index = {
            let mut r = lock(report);
            r.writes.push(WriteRecord {
                n,
                sent: Instant::now(),
                accepted: None,
                acked: None,
                primary: primary.clone(),
            });
            r.writes.len() - 1
        };
        let key = format!("{}{n}", config.key_prefix);
        let outcome = write_one(connection, &key, n, config.wait_timeout_ms, |at| {
            lock(report).writes[index].accepted = Some(at);
        })
        .await;
        match outcome {
            Ok(WriteOutcome::Acked) => lock(report).writes[index].acked = Some(Instant::now()),
            Ok(WriteOutcome::NotConfirmed(replicas)) => {
                // A primary no replica confirms may be the cut-off side of a partition (or
                // the last node standing): ask the sentinels again, as a client that needs
                // durable writes would.
                lock(report).error(
                    "wait",
                    format!("{primary}: WAIT 1 confirmed {replicas} replicas"),
                );
                conn = None;
            }
            Err((step, err)) => {
                lock(report).error(step, format!("{primary}: {err:#}"));
                conn = None;
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
        }
    }
    Ok(())
}

/// Asks the sentinels for the primary (redis-rs also checks its `ROLE`) and connects to it.
async fn discover(
    client: &mut SentinelClient,
    config: &AsyncConnectionConfig,
) -> Result<(Arc<str>, MultiplexedConnection)> {
    let lookup = async {
        let primary = client
            .async_get_client()
            .await
            .context("asking the sentinels for the primary")?;
        let addr: Arc<str> = primary.get_connection_info().addr().to_string().into();
        let connection = primary
            .get_multiplexed_async_connection_with_config(config)
            .await
            .with_context(|| format!("connecting to primary {addr}"))?;
        Ok((addr, connection))
    };
    match tokio::time::timeout(DISCOVERY_TIMEOUT, lookup).await {
        Ok(result) => result,
        Err(_) => bail!("no primary found within {DISCOVERY_TIMEOUT:?}"),
    }
}

async fn write_one(
    connection: &mut MultiplexedConnection,
    key: &str,
    n: u64,
    wait_timeout_ms: u64,
    on_accepted: impl FnOnce(Instant),
) -> std::result::Result<WriteOutcome, (&'static str, redis::RedisError)> {
    redis::cmd("SET")
        .arg(key)
        .arg(n)
        .query_async::<()>(connection)
        .await
        .map_err(|e| ("set", e))?;
    on_accepted(Instant::now());
    let replicas: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(wait_timeout_ms)
        .query_async(connection)
        .await
        .map_err(|e| ("wait", e))?;
    Ok(if replicas >= 1 {
        WriteOutcome::Acked
    } else {
        WriteOutcome::NotConfirmed(replicas)
    })
}

/// The primary the sentinels name (`ip:port`), asked from inside `netns`, retrying until
/// `timeout` (a failover may be in progress).
pub fn discover_primary(netns: &str, target: &SentinelTarget, timeout: Duration) -> Result<String> {
    run_in_netns(netns, || {
        current_thread_runtime()?.block_on(async {
            let mut client = target.client()?;
            let (addr, _) = discover_retrying(&mut client, timeout).await?;
            Ok(addr.to_string())
        })
    })
}

async fn discover_retrying(
    client: &mut SentinelClient,
    timeout: Duration,
) -> Result<(Arc<str>, MultiplexedConnection)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let deadline = Instant::now() + timeout;
    let mut last = None;
    for _ in 0..rounds(timeout, RETRY_INTERVAL) {
        match discover(client, &config).await {
            Ok(found) => return Ok(found),
            Err(err) => last = Some(err),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no lookup attempted")))
        .with_context(|| format!("no primary through the sentinels within {timeout:?}"))
}

/// Reads every key of `acked` (`{prefix}{n}`, value `n`) from the primary the sentinels name,
/// from inside `netns`, and returns the numbers whose key is missing or holds another value.
///
/// Retries the whole read (a fresh lookup each time) until `timeout`, so it can run right
/// after a fault while the deployment settles.
pub fn verify(
    netns: &str,
    target: &SentinelTarget,
    prefix: &str,
    acked: &[u64],
    timeout: Duration,
) -> Result<Vec<u64>> {
    run_in_netns(netns, || {
        current_thread_runtime()?.block_on(async {
            let mut client = target.client()?;
            let deadline = Instant::now() + timeout;
            let mut last = None;
            for _ in 0..rounds(timeout, RETRY_INTERVAL) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let attempt = async {
                    let (addr, mut conn) = discover_retrying(&mut client, remaining).await?;
                    read_missing(&mut conn, prefix, acked)
                        .await
                        .with_context(|| format!("reading acknowledged keys from {addr}"))
                };
                match attempt.await {
                    Ok(missing) => return Ok(missing),
                    Err(err) => last = Some(err),
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
                .context("verifying acknowledged writes")
        })
    })
}

async fn read_missing(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    acked: &[u64],
) -> Result<Vec<u64>> {
    let mut missing = Vec::new();
    for chunk in acked.chunks(VERIFY_CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("{prefix}{n}")).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(conn)
            .await
            .context("MGET")?;
        for (n, value) in chunk.iter().zip(values) {
            if value.as_deref() != Some(n.to_string().as_str()) {
                missing.push(*n);
            }
        }
    }
    Ok(missing)
}

/// How to probe one data node for "writable primary", from inside its own namespace.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// A label for reports (e.g. `node-0`).
    pub name: String,
    /// The node's network namespace.
    pub netns: String,
    /// Where its redis answers inside that namespace (loopback works even when the node is
    /// cut off from everyone else, which is the point).
    pub addr: SocketAddr,
    /// CA for TLS (the node's certificate must name `addr`'s IP); `None` = plain TCP.
    pub tls_ca: Option<PathBuf>,
    pub password: Option<String>,
}

/// Bound for each probe step: a fenced primary pauses writes, so a `SET` that does not answer
/// in time means "not writable".
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The probe's own key. It is outside every writer's key space, so [`verify`] never reads it.
const PROBE_KEY: &str = "__split_brain_probe__";

/// One probe: is this node a writable primary right now (INFO says `role:master` and a `SET`
/// of the probe key answers `OK`)? Reuses `conn` and clears it on any error.
async fn probe_once(
    target: &ProbeTarget,
    conn: &mut Option<MultiplexedConnection>,
) -> Result<bool> {
    if conn.is_none() {
        let client = data_node_client(target)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PROBE_TIMEOUT))
            .set_response_timeout(Some(PROBE_TIMEOUT));
        *conn = Some(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .with_context(|| format!("connecting to {}", target.addr))?,
        );
    }
    let Some(c) = conn.as_mut() else {
        bail!("no connection");
    };
    let result = async {
        let info: String = redis::cmd("INFO").arg("replication").query_async(c).await?;
        if !info.lines().any(|l| l.trim() == "role:master") {
            return Ok(false);
        }
        redis::cmd("SET")
            .arg(PROBE_KEY)
            .arg(target.name.as_str())
            .arg("PX")
            .arg(60_000)
            .query_async::<()>(c)
            .await?;
        Ok::<_, redis::RedisError>(true)
    }
    .await;
    match result {
        Ok(writable) => Ok(writable),
        Err(err) => {
            // A timed-out or paused command leaves the connection in doubt: start afresh.
            *conn = None;
            // READONLY (a replica) and similar refusals are plain "not writable".
            if err.is_io_error() || err.is_timeout() || err.is_unrecoverable_error() {
                Err(err).context("probing")
            } else {
                Ok(false)
            }
        }
    }
}

/// A client for one data node (TLS with the target's CA when it has one).
pub fn data_node_client(target: &ProbeTarget) -> Result<redis::Client> {
    let (host, port) = (target.addr.ip().to_string(), target.addr.port());
    let scheme = if target.tls_ca.is_some() {
        "rediss"
    } else {
        "redis"
    };
    let auth = match &target.password {
        Some(pw) => format!("default:{pw}@"),
        None => String::new(),
    };
    let url = format!("{scheme}://{auth}{host}:{port}");
    let client = match &target.tls_ca {
        Some(ca) => {
            let pem = std::fs::read(ca).with_context(|| format!("reading CA {}", ca.display()))?;
            redis::Client::build_with_tls(
                url.as_str(),
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        None => redis::Client::open(url.as_str()),
    };
    client.with_context(|| format!("client for {}", target.addr))
}

/// Whether `target` is a writable primary right now (any failure to reach it = no).
pub fn probe_writable(target: &ProbeTarget) -> bool {
    run_in_netns(&target.netns, || {
        current_thread_runtime()
            .map(|rt| {
                rt.block_on(async {
                    let mut conn = None;
                    probe_once(target, &mut conn).await.unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

/// One node's probe results, in order: (when, writable). "When" is the reply to a probe that
/// found the node writable, and the start of one that did not.
pub type Samples = Vec<(Instant, bool)>;

/// Probes every data node every `interval` on its own thread, and afterwards tells when two or
/// more were writable primaries at once.
pub struct SplitBrainMonitor {
    stop: Arc<AtomicBool>,
    samples: Vec<Arc<Mutex<Samples>>>,
    threads: Vec<JoinHandle<()>>,
    names: Vec<String>,
}

/// What a [`SplitBrainMonitor`] saw.
#[derive(Debug, Clone)]
pub struct SplitBrainReport {
    /// Maximal intervals during which two or more nodes were writable primaries.
    pub windows: Vec<(Instant, Instant)>,
    /// Probe results per node, see [`Samples`].
    pub samples: Vec<(String, Samples)>,
}

impl SplitBrainReport {
    /// The longest window with two writable primaries (zero if none).
    pub fn longest(&self) -> Duration {
        self.windows
            .iter()
            .map(|(a, b)| b.duration_since(*a))
            .max()
            .unwrap_or_default()
    }

    /// The sum of all such windows.
    pub fn total(&self) -> Duration {
        self.windows.iter().map(|(a, b)| b.duration_since(*a)).sum()
    }
}

impl SplitBrainMonitor {
    pub fn start(targets: Vec<ProbeTarget>, interval: Duration) -> Result<SplitBrainMonitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut monitor = SplitBrainMonitor {
            stop: stop.clone(),
            samples: Vec::new(),
            threads: Vec::new(),
            names: targets.iter().map(|t| t.name.clone()).collect(),
        };
        for target in targets {
            let samples = Arc::new(Mutex::new(Vec::new()));
            monitor.samples.push(samples.clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("probe-{}", target.name))
                .spawn(move || {
                    run_in_netns(&target.netns.clone(), || {
                        let Ok(rt) = current_thread_runtime() else {
                            return;
                        };
                        rt.block_on(probe_loop(&target, interval, &stop, &samples));
                    })
                })
                .context("spawning a probe thread")?;
            // Pushed at once, so Drop stops what was started even if a later spawn fails.
            monitor.threads.push(thread);
        }
        Ok(monitor)
    }

    pub fn finish(mut self) -> SplitBrainReport {
        self.stop_and_join();
        let samples: Vec<Samples> = self
            .samples
            .iter()
            .map(|s| std::mem::take(&mut *lock(s)))
            .collect();
        SplitBrainReport {
            windows: overlap_windows(&samples),
            samples: self.names.iter().cloned().zip(samples).collect(),
        }
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for SplitBrainMonitor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

async fn probe_loop(
    target: &ProbeTarget,
    interval: Duration,
    stop: &AtomicBool,
    samples: &Mutex<Samples>,
) {
    let deadline = Instant::now() + MAX_RUN;
    let mut conn = None;
    for _ in 0..MAX_ITERATIONS {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        let writable = probe_once(target, &mut conn).await.unwrap_or(false);
        // A write accepted was surely possible when its reply came; one refused, or left
        // hanging by a paused (fenced) primary until the probe timed out, was already
        // impossible when it was sent. Stamping each result with that moment keeps the
        // 500 ms probe timeout from stretching a fenced node's writable time.
        let at = if writable { Instant::now() } else { sent };
        lock(samples).push((at, writable));
        tokio::time::sleep(interval).await;
    }
}

/// Maximal intervals in which at least two nodes were writable. A node counts as writable from
/// a writable sample until its next sample (an over-estimate by up to one probe interval:
/// the safe side for a claim of "never").
pub fn overlap_windows(samples: &[Samples]) -> Vec<(Instant, Instant)> {
    // +1 when a node's writable stretch starts, -1 when it ends.
    let mut events: Vec<(Instant, i32)> = Vec::new();
    for node in samples {
        let mut start: Option<Instant> = None;
        for (i, &(at, writable)) in node.iter().enumerate() {
            match (writable, start) {
                (true, None) => start = Some(at),
                (false, Some(s)) => {
                    events.push((s, 1));
                    events.push((at, -1));
                    start = None;
                }
                _ => {}
            }
            if i + 1 == node.len() {
                if let Some(s) = start {
                    events.push((s, 1));
                    events.push((at, -1));
                }
            }
        }
    }
    // Ends before starts at equal times: touching stretches do not overlap.
    events.sort_by_key(|&(at, delta)| (at, delta));
    let mut windows = Vec::new();
    let (mut depth, mut opened) = (0, None);
    for (at, delta) in events {
        depth += delta;
        match (depth >= 2, opened) {
            (true, None) => opened = Some(at),
            (false, Some(from)) => {
                if at > from {
                    windows.push((from, at));
                }
                opened = None;
            }
            _ => {}
        }
    }
    windows
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime> {
    // The agent's object_store links a second rustls provider, so rustls cannot pick one on
    // its own: name ring (an error only means it is already installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// Polls `f` every 10 ms until it returns `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let every = Duration::from_millis(10);
    let deadline = Instant::now() + timeout;
    for _ in 0..rounds(timeout, every) {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(every);
    }
    None
}

/// How many attempts `every` apart fit into `timeout`, plus slack: the count bound of a loop
/// that is also bounded by a deadline.
fn rounds(timeout: Duration, every: Duration) -> u128 {
    timeout.as_millis() / every.as_millis().max(1) + 2
}

/// Locks ignoring poisoning: a panicked writer's report is still worth reading.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn overlap_needs_two_writable_nodes_at_once() {
        let t = Instant::now();
        let a = vec![(at(t, 0), true), (at(t, 100), true), (at(t, 200), false)];
        let b = vec![(at(t, 150), true), (at(t, 250), false)];
        let c = vec![(at(t, 0), false), (at(t, 300), false)];
        let windows = overlap_windows(&[a, b, c]);
        assert_eq!(windows, vec![(at(t, 150), at(t, 200))]);
    }

    #[test]
    fn touching_stretches_do_not_overlap_and_open_ends_close_at_the_last_sample() {
        let t = Instant::now();
        let a = vec![(at(t, 0), true), (at(t, 100), false)];
        let b = vec![(at(t, 100), true), (at(t, 300), true)];
        assert!(overlap_windows(&[a, b.clone()]).is_empty());
        let c = vec![(at(t, 200), true), (at(t, 400), true)];
        assert_eq!(overlap_windows(&[b, c]), vec![(at(t, 200), at(t, 300))]);
    }

    #[test]
    fn first_ack_counts_only_writes_sent_after_the_moment() {
        let t = Instant::now();
        let mut r = WriterReport::new(t, "k".into());
        let primary: Arc<str> = "10.77.0.10:6379".into();
        r.writes.push(WriteRecord {
            n: 1,
            sent: at(t, 0),
            accepted: Some(at(t, 1)),
            acked: Some(at(t, 50)),
            primary: primary.clone(),
        });
        r.writes.push(WriteRecord {
            n: 2,
            sent: at(t, 20),
            accepted: Some(at(t, 900)),
            acked: None,
            primary: primary.clone(),
        });
        r.writes.push(WriteRecord {
            n: 3,
            sent: at(t, 30),
            accepted: Some(at(t, 1000)),
            acked: Some(at(t, 1001)),
            primary,
        });
        assert_eq!(r.first_ack_after(at(t, 10)), Some(at(t, 1001)));
        assert_eq!(r.first_accept_after(at(t, 10)), Some(at(t, 900)));
        assert_eq!(r.acked_keys(), vec![1, 3]);
        assert_eq!(r.acked_between(at(t, 0), at(t, 30)), 1);
    }
}
