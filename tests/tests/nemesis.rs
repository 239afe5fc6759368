//! Nemesis campaigns: randomized, seeded, replayable rounds of faults against real Business and
//! Premium data stores, with every round's invariants checked (no WAIT-1-acknowledged write
//! lost, never two writable primaries, healed within 30 s, backups that verify and restore).
//! What a round does and how each invariant is judged: `steward_testbed::nemesis`.
//!
//! * `short_campaign` (CI): 10 rounds, 5 on Business then 5 on Premium, seed
//!   [`SHORT_SEED`]; a few minutes.
//! * `long_campaign` (ignored): `NEMESIS_ROUNDS` rounds (default 200) within
//!   `NEMESIS_MINUTES` (default 60), a fresh seed each run unless `NEMESIS_SEED` is set; stops
//!   after the first round that breaks an invariant. Prints the campaign as markdown tables
//!   (for BENCHMARKS.md) and, on a violation, the command that replays the round:
//!
//!       cargo build -p redis-steward
//!       cargo test -p steward-testbed --test nemesis long_campaign -- --ignored --nocapture --test-threads=1
//!
//! * `paused_primary_agent_never_leaves_two_writable_primaries`: the primary's agent (only
//!   the agent: its redis keeps running) is stopped with SIGSTOP for 8 s, on Premium and on
//!   Business.
//!
//! Every campaign obeys `NEMESIS_SEED`, `NEMESIS_ROUNDS`, `NEMESIS_FROM` and `NEMESIS_TO`
//! (run only rounds FROM..=TO of the same schedule) and `NEMESIS_MINUTES`, e.g.
//!
//!     NEMESIS_SEED=1 NEMESIS_ROUNDS=10 NEMESIS_FROM=4 NEMESIS_TO=4 cargo test -p steward-testbed --test nemesis short_campaign -- --exact --nocapture --test-threads=1

use std::sync::Arc;
use std::time::Duration;
use steward_testbed::cluster::Cluster;
use steward_testbed::nemesis::{
    options, run_campaign, run_round, CampaignConfig, CampaignReport, Fault, Plan, Planned, Role,
    RoundPlan,
};

/// The short campaign's seed: the first whose 10 rounds use all 15 fault kinds.
const SHORT_SEED: u64 = 57_507;

fn print_and_check(report: &CampaignReport) {
    println!("\n{}\n", report.markdown());
    let violations = report.violations();
    if violations.is_empty() {
        return;
    }
    let replay = report.replay_commands();
    panic!(
        "{} violation(s):\n{}\nreplay:\n{}",
        violations.len(),
        violations.join("\n"),
        replay.join("\n")
    );
}

#[test]
fn short_campaign() {
    let cfg = CampaignConfig::from_env("short_campaign", false, SHORT_SEED, 10, 7.0);
    let report = run_campaign(&cfg);
    print_and_check(&report);
    assert!(
        report.rounds.len() == cfg.to + 1 - cfg.from,
        "only {} rounds ran",
        report.rounds.len()
    );
}

#[test]
#[ignore = "an hour; run by hand (see the module doc)"]
fn long_campaign() {
    let fresh = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut cfg = CampaignConfig::from_env("long_campaign", true, fresh, 200, 60.0);
    cfg.stop_on_violation = true;
    let report = run_campaign(&cfg);
    print_and_check(&report);
}

#[test]
fn paused_primary_agent_never_leaves_two_writable_primaries() {
    let mut failures = Vec::new();
    for plan in [Plan::Premium, Plan::Business] {
        let c = Arc::new(Cluster::start_with(plan.name(), options()).unwrap());
        let round = RoundPlan {
            index: 1,
            plan,
            faults: vec![Planned {
                fault: Fault::PauseAgent(Role::Primary),
                start_ms: 0,
                duration_ms: Duration::from_secs(8).as_millis() as u64,
            }],
        };
        let r = run_round(&c, &round);
        eprintln!("{}: {}", plan.name(), r.summary());
        if r.monitor_windows > 0 || !r.pinned_windows.is_empty() || r.lost > 0 {
            let accepted: Vec<String> = r
                .pinned_windows
                .iter()
                .map(|w| {
                    format!(
                        "nodes {:?} took {:?} writes in it, {:?} of them lost",
                        w.nodes, w.writes, w.lost
                    )
                })
                .collect();
            failures.push(format!(
                "{}: two writable primaries: monitor {} window(s) (longest {} ms), pinned writers {} (longest {} ms{}); {} WAIT-1-acknowledged write(s) lost",
                plan.name(),
                r.monitor_windows,
                r.monitor_longest_ms,
                r.pinned_windows.len(),
                r.pinned_longest_ms(),
                if accepted.is_empty() {
                    String::new()
                } else {
                    format!(": {}", accepted.join("; "))
                },
                r.lost
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
