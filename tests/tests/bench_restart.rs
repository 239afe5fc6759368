//! Benchmark (ignored by default): how long a node is unavailable after its redis-server is
//! killed with SIGKILL, measured from the kill to the first successful GET over TLS.
//!
//!     ROUNDS=20 cargo test -p steward-testbed --test bench_restart -- --ignored --nocapture
//!
//! Results are recorded in BENCHMARKS.md.

use std::time::{Duration, Instant};
use steward_testbed::node::{env_or, wait_for, Agent, NodeSpec};

#[test]
#[ignore = "benchmark: run explicitly"]
fn redis_crash_to_serving_again() {
    let rounds: usize = env_or("ROUNDS", 20);
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // A fresh node per round: repeated crashes of one redis would measure the restart
        // backoff (immediate first, then 250 ms doubling to 5 s within 30 s) instead.
        let a = Agent::prepare(NodeSpec::new("bench")).unwrap();
        a.start_healthy().unwrap();
        for i in 0..10 {
            a.cmd(&["SET", &format!("k{i}"), "v"]);
        }
        let pid = a.redis_pid().unwrap();
        let t0 = Instant::now();
        // SAFETY: kill(2) of the redis-server this benchmark's agent started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let took = wait_for(Duration::from_secs(30), Duration::from_millis(5), || {
            (a.cmd(&["GET", "k0"]) == "v").then(|| t0.elapsed())
        })
        .expect("redis did not come back");
        eprintln!("round {round}: {took:?}");
        samples.push(took);
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "crash-to-serving over {rounds} rounds: median {:?}, p95 {:?}, max {:?}",
        pct(0.5),
        pct(0.95),
        samples[samples.len() - 1]
    );
}
