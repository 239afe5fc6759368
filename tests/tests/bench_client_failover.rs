//! Failover as a client sees it, through the Sentinel protocol, for redis-steward and for
//! Debian's Redis Sentinel on the same namespace testbed (results in BENCHMARKS.md):
//!
//!     ROUNDS=20 cargo test -p steward-testbed --release --test bench_client_failover -- --ignored --nocapture --test-threads=1
//!
//! The client is `sentinel_client::Writer` on its own host: redis-rs's Sentinel client finds
//! the primary, writes `{prefix}{n}`, and a write counts as acknowledged once `WAIT 1 1000`
//! confirms it; on any error it asks the sentinels again.
//!
//! * kill rounds: kill -9 of every process on the primary's host; measured from the kill to
//!   the first write *sent after the kill* that is acknowledged (3 data nodes) or accepted
//!   (`SET` → `OK`; 2 data nodes, where no replica is left to acknowledge). Then every
//!   accepted key is read back from the primary the sentinels name: missing acknowledged
//!   keys are "acknowledged writes lost"; missing keys whose `SET` was answered `OK` but that
//!   `WAIT` never confirmed are what a client that does not use `WAIT` would lose. Redis
//!   Sentinel gets a fresh deployment per round (a killed Sentinel master restarted with its
//!   old config comes back as a writable master until the sentinels demote it, which would
//!   disturb the next round); redis-steward's killed node is restarted between rounds, as in
//!   bench_failover (it rejoins as a replica).
//! * partition: the primary and the client host on one side, every other node on the other
//!   (nftables cuts), held 30 s, healed; a monitor probes every data node from inside its own
//!   namespace every 50 ms (`role:master` and a `SET` of a private key accepted) and reports
//!   the longest window with two writable primaries; then writes lost, as above.
//!
//! `ROUNDS` (default 20) sets the kill rounds; `SLOW_ROUNDS` (default ROUNDS) those of Redis
//! Sentinel with down-after-milliseconds 5000. Nothing here asserts on timing.

use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use steward_testbed::cluster::Cluster;
use steward_testbed::netns::Testbed;
use steward_testbed::node::env_or;
use steward_testbed::sentinel_client::{
    verify, ProbeTarget, SentinelTarget, SplitBrainMonitor, Writer, WriterConfig, WriterReport,
};
use steward_testbed::sentinel_ref::{RefConfig, SentinelRef};

/// Writes acknowledged before a fault, so the writer is known to work and there is data to
/// lose.
const ACKS_BEFORE_FAULT: usize = 20;
/// Bound for the first write after a kill. Generous: a Sentinel split vote waits
/// 2 × failover-timeout (20 s) before the next attempt.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the partition is held.
const PARTITION_HOLD: Duration = Duration::from_secs(30);
/// Split-brain probe interval.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

fn rounds() -> usize {
    env_or("ROUNDS", 20)
}

/// What a benchmark needs from a deployment, so one round function drives both systems.
trait Deployment {
    fn name(&self) -> String;
    fn bed(&self) -> &Testbed;
    fn data_nodes(&self) -> usize;
    /// The client host (the last host of the testbed).
    fn client_host(&self) -> usize {
        self.bed().hosts().len() - 1
    }
    fn client_netns(&self) -> String {
        self.bed().host(self.client_host()).name.clone()
    }
    fn target(&self) -> Result<SentinelTarget>;
    fn primary(&self, timeout: Duration) -> Result<usize>;
    /// kill -9 of everything on data node `i`'s host.
    fn kill(&self, i: usize) -> Result<()>;
    fn probe_targets(&self) -> Vec<ProbeTarget>;
    fn logs(&self) -> String;
}

impl Deployment for SentinelRef {
    fn name(&self) -> String {
        format!(
            "Redis Sentinel {} nodes, down-after {} ms",
            self.config.data_nodes, self.config.down_after_ms
        )
    }
    fn bed(&self) -> &Testbed {
        &self.bed
    }
    fn data_nodes(&self) -> usize {
        self.config.data_nodes
    }
    fn target(&self) -> Result<SentinelTarget> {
        Ok(SentinelRef::target(self))
    }
    fn primary(&self, timeout: Duration) -> Result<usize> {
        self.wait_primary(timeout)
    }
    fn kill(&self, i: usize) -> Result<()> {
        SentinelRef::kill(self, i).map(drop)
    }
    fn probe_targets(&self) -> Vec<ProbeTarget> {
        SentinelRef::probe_targets(self)
    }
    fn logs(&self) -> String {
        SentinelRef::logs(self)
    }
}

impl Deployment for Cluster {
    fn name(&self) -> String {
        format!("redis-steward {} ({} nodes)", self.plan, self.nodes.len())
    }
    fn bed(&self) -> &Testbed {
        &self.bed
    }
    fn data_nodes(&self) -> usize {
        self.nodes.len()
    }
    fn target(&self) -> Result<SentinelTarget> {
        // The agents' Sentinel ports, TLS with the shared CA, the customer password.
        Ok(Cluster::target(self))
    }
    fn primary(&self, timeout: Duration) -> Result<usize> {
        self.wait_primary(timeout)
    }
    fn kill(&self, i: usize) -> Result<()> {
        self.bed.kill_all(i)?;
        self.nodes[i].wait_exit(Duration::from_secs(10))?;
        Ok(())
    }
    fn probe_targets(&self) -> Vec<ProbeTarget> {
        Cluster::probe_targets(self)
    }
    fn logs(&self) -> String {
        // The agents' own view (role, epoch, writable) first: it tells a paused primary from
        // a missing one.
        let status: Vec<String> = self
            .nodes
            .iter()
            .map(|a| {
                let s = a.status().unwrap_or_default();
                format!(
                    "{}: role {} writable {} epoch {}",
                    a.spec.node_name, s["role"], s["cluster"]["writable"], s["cluster"]["epoch"]
                )
            })
            .chain((0..self.nodes.len()).map(|i| {
                let limit = Duration::from_secs(2);
                // A write from the client host and one over the node's own loopback: tells a
                // paused primary from an unreachable one.
                format!(
                    "node-{i}: SET from the client host: {:?}; over its loopback: {:?}",
                    self.cli_within(i, limit, &["SET", "__diag__", "1"]),
                    self.cli_from(i, "127.0.0.1", limit, &["SET", "__diag__", "1"]),
                )
            }))
            .collect();
        format!("{}\n{}", status.join("\n"), Cluster::logs(self))
    }
}

/// One kill round's result.
struct KillRound {
    /// Kill → first accepted write sent after the kill.
    accepted: Duration,
    /// Kill → first acknowledged write sent after the kill (None with 2 data nodes).
    acked: Option<Duration>,
    loss: Loss,
}

/// Writes missing after a fault, read back from the primary the sentinels name.
#[derive(Default)]
struct Loss {
    acked: usize,
    acked_lost: usize,
    /// Accepted (`SET` → `OK`) but not acknowledged: what a client without `WAIT` loses.
    accepted: usize,
    accepted_lost: usize,
}

impl Loss {
    fn read_back(
        netns: &str,
        target: &SentinelTarget,
        prefix: &str,
        report: &WriterReport,
    ) -> Result<Loss> {
        let acked: BTreeSet<u64> = report.acked_keys().into_iter().collect();
        let accepted = report.accepted_keys();
        let missing = verify(netns, target, prefix, &accepted, Duration::from_secs(60))?;
        let acked_lost = missing.iter().filter(|n| acked.contains(n)).count();
        Ok(Loss {
            acked: acked.len(),
            acked_lost,
            accepted: accepted.len() - acked.len(),
            accepted_lost: missing.len() - acked_lost,
        })
    }

    fn add(&mut self, other: &Loss) {
        self.acked += other.acked;
        self.acked_lost += other.acked_lost;
        self.accepted += other.accepted;
        self.accepted_lost += other.accepted_lost;
    }

    fn describe(&self) -> String {
        format!(
            "acknowledged writes lost: {} of {}; accepted-only (no WAIT) writes lost: {} of {}",
            self.acked_lost, self.acked, self.accepted_lost, self.accepted
        )
    }
}

/// Writer running, kill -9 of the primary's host, first write after it, then read back every
/// accepted key.
fn kill_round(d: &dyn Deployment, prefix: &str) -> Result<KillRound> {
    let target = d.target()?;
    let netns = d.client_netns();
    let writer = Writer::start(
        &netns,
        WriterConfig {
            key_prefix: prefix.into(),
            ..WriterConfig::new(target.clone())
        },
    )?;
    ensure!(
        writer.wait_more_acks(ACKS_BEFORE_FAULT, Duration::from_secs(30)),
        "{}: the writer made no progress before the kill: {}\n{}",
        d.name(),
        writer.snapshot().summary(),
        d.logs()
    );
    let old = d.primary(Duration::from_secs(10))?;
    // Times are measured from just before the kill, but only writes sent after the kill
    // returned count: one sent while kill_all was still signalling could reach the old
    // primary. This over-states failover by the kill's own duration (a few ms), never
    // under-states it.
    let t0 = Instant::now();
    d.kill(old)?;
    let killed = Instant::now();
    let accepted = writer
        .wait_accept_after(killed, RECOVERY_TIMEOUT)
        .with_context(|| {
            format!(
                "{}: no write accepted within {RECOVERY_TIMEOUT:?} of the kill: {}\n{}",
                d.name(),
                writer.snapshot().summary(),
                d.logs()
            )
        })?;
    // With a replica left, wait for acknowledgements, and a few more so the read-back covers
    // writes on the new primary too.
    let acked = if d.data_nodes() >= 3 {
        let at = writer
            .wait_ack_after(killed, RECOVERY_TIMEOUT)
            .with_context(|| {
                format!(
                    "{}: no write acknowledged within {RECOVERY_TIMEOUT:?} of the kill: {}",
                    d.name(),
                    writer.snapshot().summary()
                )
            })?;
        writer.wait_more_acks(ACKS_BEFORE_FAULT, Duration::from_secs(10));
        Some(at - t0)
    } else {
        None
    };
    let report = writer.finish();
    let loss = Loss::read_back(&netns, &target, prefix, &report)?;
    Ok(KillRound {
        accepted: accepted - t0,
        acked,
        loss,
    })
}

/// Median, p95 and max of a sample, one line.
fn summary(v: &[Duration]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    let mut v = v.to_vec();
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={} median {} ms, p95 {} ms, max {} ms",
        v.len(),
        pct(0.5).as_millis(),
        pct(0.95).as_millis(),
        v[v.len() - 1].as_millis()
    )
}

fn print_kill_summary(name: &str, results: &[KillRound]) {
    let accepted: Vec<Duration> = results.iter().map(|r| r.accepted).collect();
    let acked: Vec<Duration> = results.iter().filter_map(|r| r.acked).collect();
    let mut loss = Loss::default();
    for r in results {
        loss.add(&r.loss);
    }
    println!(
        "RESULT {name}: kill -> first write accepted: {}",
        summary(&accepted)
    );
    if !acked.is_empty() {
        println!(
            "RESULT {name}: kill -> first write acknowledged (WAIT 1): {}",
            summary(&acked)
        );
    }
    println!("RESULT {name}: {}", loss.describe());
}

fn print_round(name: &str, round: usize, r: &KillRound) {
    eprintln!(
        "{name} round {round}: accepted after {} ms, acknowledged after {}; {}",
        r.accepted.as_millis(),
        r.acked
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or_else(|| "-".into()),
        r.loss.describe()
    );
}

/// Kill rounds against Redis Sentinel, a fresh deployment each round.
fn sentinel_kill_rounds(data_nodes: usize, down_after_ms: u64, rounds: usize) {
    let mut results = Vec::new();
    let mut name = String::new();
    for round in 0..rounds {
        let d = SentinelRef::start(RefConfig::new(data_nodes, down_after_ms))
            .expect("starting Redis Sentinel");
        name = Deployment::name(&d);
        let r = kill_round(&d, "k").unwrap_or_else(|e| panic!("{name} round {round}: {e:#}"));
        print_round(&name, round, &r);
        results.push(r);
    }
    print_kill_summary(&name, &results);
}

/// Kill rounds against redis-steward, one deployment, the killed node restarted each round.
fn steward_kill_rounds(plan: &str, rounds: usize) {
    let c = Cluster::start(plan).expect("starting redis-steward");
    let name = Deployment::name(&c);
    let mut results = Vec::new();
    for round in 0..rounds {
        // Let the replicas catch up after the previous round's rejoin.
        std::thread::sleep(Duration::from_millis(1500));
        let old = c.wait_primary(Duration::from_secs(30)).expect("a primary");
        let r = kill_round(&c, &format!("r{round}-k"))
            .unwrap_or_else(|e| panic!("{name} round {round}: {e:#}"));
        print_round(&name, round, &r);
        results.push(r);
        c.nodes[old].start().expect("restarting the killed node");
        c.nodes[old]
            .wait_healthy(Duration::from_secs(30))
            .expect("killed node healthy again");
    }
    print_kill_summary(&name, &results);
}

/// What a partition scenario measured.
struct PartitionResult {
    longest_two_writable: Duration,
    total_two_writable: Duration,
    acked_during: usize,
    first_ack_after_heal: Option<Duration>,
    loss: Loss,
}

/// Cuts every link between a host in `side` and a data node outside it.
fn set_partition(bed: &Testbed, side: &[usize], others: &[usize], cut: bool) -> Result<()> {
    for &a in side {
        for &b in others {
            if cut {
                bed.cut_link(a, b)?;
            } else {
                bed.heal_link(a, b)?;
            }
        }
    }
    Ok(())
}

/// The primary and the client on one side, the other data nodes on the other, for
/// [`PARTITION_HOLD`]; then heal and let the writer recover. If this fails half way the
/// caller drops the deployment, and its testbed (and the cuts) with it.
fn partition_scenario(d: &dyn Deployment) -> Result<PartitionResult> {
    let target = d.target()?;
    let netns = d.client_netns();
    let writer = Writer::start(&netns, WriterConfig::new(target.clone()))?;
    ensure!(
        writer.wait_more_acks(ACKS_BEFORE_FAULT, Duration::from_secs(30)),
        "{}: the writer made no progress: {}",
        d.name(),
        writer.snapshot().summary()
    );
    let monitor = SplitBrainMonitor::start(d.probe_targets(), PROBE_INTERVAL)?;
    std::thread::sleep(Duration::from_secs(1));
    let old = d.primary(Duration::from_secs(10))?;
    let side = [old, d.client_host()];
    let others: Vec<usize> = (0..d.data_nodes()).filter(|&i| i != old).collect();
    let t0 = Instant::now();
    set_partition(d.bed(), &side, &others, true)?;
    // The cuts take a few nft runs; writes acknowledged before the last one are not "during".
    let cut = Instant::now();
    std::thread::sleep(PARTITION_HOLD.saturating_sub(cut - t0));
    let healed = Instant::now();
    set_partition(d.bed(), &side, &others, false)?;
    let first_after_heal = writer.wait_ack_after(healed, RECOVERY_TIMEOUT);
    if first_after_heal.is_none() {
        eprintln!(
            "{}: no acknowledged write within {RECOVERY_TIMEOUT:?} of healing; logs:\n{}",
            d.name(),
            d.logs()
        );
    }
    writer.wait_more_acks(ACKS_BEFORE_FAULT, Duration::from_secs(20));
    // Let the monitor see the settled state.
    std::thread::sleep(Duration::from_secs(2));
    let split = monitor.finish();
    let report = writer.finish();
    eprintln!("{}: writer: {}", d.name(), report.summary());
    let loss = Loss::read_back(&netns, &target, "k", &report)?;
    Ok(PartitionResult {
        longest_two_writable: split.longest(),
        total_two_writable: split.total(),
        acked_during: report.acked_between(cut, healed),
        first_ack_after_heal: first_after_heal.map(|t| t - healed),
        loss,
    })
}

fn print_partition(name: &str, r: &PartitionResult) {
    println!(
        "RESULT {name}: partition (primary + client | rest) {} s: longest window with two \
         writable primaries {} ms (total {} ms); writes acknowledged while cut off {}; \
         first acknowledged write {} after healing; {}",
        PARTITION_HOLD.as_secs(),
        r.longest_two_writable.as_millis(),
        r.total_two_writable.as_millis(),
        r.acked_during,
        r.first_ack_after_heal
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or_else(|| "never".into()),
        r.loss.describe()
    );
}

fn sentinel_partition(data_nodes: usize, down_after_ms: u64) {
    let d = SentinelRef::start(RefConfig::new(data_nodes, down_after_ms))
        .expect("starting Redis Sentinel");
    let name = Deployment::name(&d);
    let r = partition_scenario(&d).unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", d.logs()));
    print_partition(&name, &r);
}

fn steward_partition(plan: &str) {
    let c = Cluster::start(plan).expect("starting redis-steward");
    let name = Deployment::name(&c);
    let r = partition_scenario(&c).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    print_partition(&name, &r);
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn kill_redis_sentinel_3_nodes_down_after_1000() {
    sentinel_kill_rounds(3, 1000, rounds());
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn kill_redis_sentinel_3_nodes_down_after_5000() {
    sentinel_kill_rounds(3, 5000, env_or("SLOW_ROUNDS", rounds()));
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn kill_redis_sentinel_2_nodes_down_after_1000() {
    sentinel_kill_rounds(2, 1000, rounds());
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn kill_steward_premium() {
    steward_kill_rounds("premium", rounds());
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn kill_steward_business() {
    steward_kill_rounds("business", rounds());
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn partition_redis_sentinel_3_nodes_down_after_1000() {
    sentinel_partition(3, 1000);
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn partition_redis_sentinel_3_nodes_down_after_5000() {
    sentinel_partition(3, 5000);
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn partition_redis_sentinel_2_nodes_down_after_1000() {
    sentinel_partition(2, 1000);
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn partition_steward_premium() {
    steward_partition("premium");
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn partition_steward_business() {
    steward_partition("business");
}

/// Not a benchmark: the reference deployment and the Sentinel-discovering writer work
/// together (the writer follows a failover and nothing it saw acknowledged is lost).
#[test]
fn redis_sentinel_reference_fails_over_and_the_writer_follows() {
    let d = SentinelRef::start(RefConfig::new(3, 1000)).expect("starting Redis Sentinel");
    assert_eq!(
        d.writable_primaries(),
        vec![0],
        "node 0 starts as the only primary"
    );
    let r = kill_round(&d, "k").unwrap_or_else(|e| panic!("{e:#}\n{}", d.logs()));
    assert!(
        r.acked.is_some(),
        "no acknowledged write after the failover"
    );
    assert_eq!(r.loss.acked_lost, 0, "acknowledged writes lost");
    let new = d
        .wait_primary(Duration::from_secs(10))
        .expect("a new primary");
    assert_ne!(new, 0, "the killed node cannot be primary");
}
