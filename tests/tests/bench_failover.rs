//! Benchmark (ignored by default): failover time and the fencing bound on the namespace
//! testbed, over ROUNDS rounds (default 20) per plan.
//!
//!     cargo test --release -p steward-testbed --test bench_failover -- --ignored --nocapture --test-threads 1
//!
//! - kill: from kill -9 of the primary's whole node to the moment another node's agent says it
//!   is the writable primary, and to the first write that node accepts (SET from a client host).
//! - isolate: from cutting the primary off to its agent reporting itself fenced, and to a new
//!   primary elsewhere.
//!
//! Results are recorded in BENCHMARKS.md.

use std::time::{Duration, Instant};
use steward_testbed::cluster::Cluster;
use steward_testbed::node::{env_or, wait_for};

fn rounds() -> usize {
    env_or("ROUNDS", 20)
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name}: n={} median {:?} p95 {:?} max {:?}",
        v.len(),
        pct(0.5),
        pct(0.95),
        v[v.len() - 1]
    );
}

fn kill_rounds(plan: &str) {
    let c = Cluster::start(plan).unwrap();
    let (mut promoted, mut writable) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        let old = c.wait_primary(Duration::from_secs(30)).unwrap();
        // Let every node settle (replicas in sync) before the next kill.
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        c.bed.kill_all(old).unwrap();
        let new = c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
        promoted.push(t0.elapsed());
        let w = wait_for(Duration::from_secs(30), Duration::from_millis(5), || {
            (c.cli(new, &["SET", "bench", &round.to_string()]) == "OK").then(|| t0.elapsed())
        })
        .expect("new primary never accepted a write");
        writable.push(w);
        eprintln!("{plan} round {round}: node {old} killed, node {new} primary after {:?}, first write {:?}", promoted[round], w);
        let _ = c.nodes[old].wait_exit(Duration::from_secs(5));
        c.nodes[old].start().unwrap();
        c.nodes[old].wait_healthy(Duration::from_secs(30)).unwrap();
    }
    summary(
        &format!("{plan} kill -9 primary node -> new primary (agent)"),
        promoted,
    );
    summary(
        &format!("{plan} kill -9 primary node -> first write accepted"),
        writable,
    );
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn failover_premium() {
    kill_rounds("premium");
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn failover_business() {
    kill_rounds("business");
}

#[test]
#[ignore = "benchmark: run explicitly"]
fn fencing_bound_premium() {
    let c = Cluster::start("premium").unwrap();
    let (mut fenced, mut elected) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        let old = c.wait_primary(Duration::from_secs(30)).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        c.bed.isolate(old).unwrap();
        let f = wait_for(Duration::from_secs(10), Duration::from_millis(5), || {
            c.nodes[old]
                .status()
                .filter(|s| s["cluster"]["writable"] == false)
                .map(|_| t0.elapsed())
        })
        .expect("never fenced");
        c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
        let e = t0.elapsed();
        eprintln!("round {round}: fenced after {f:?}, new primary after {e:?}");
        fenced.push(f);
        elected.push(e);
        c.bed.heal(old).unwrap();
        wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            c.nodes[old]
                .status()
                .filter(|s| s["role"] == "replica")
                .map(|_| ())
        })
        .expect("old primary did not rejoin");
    }
    summary("isolated primary -> fenced (stops taking writes)", fenced);
    summary("isolated primary -> new primary elsewhere", elected);
}
