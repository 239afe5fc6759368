//! Nemesis campaigns: randomized, seeded, replayable rounds of faults against real Business and
//! Premium data stores, with every round's invariants checked (no WAIT-1-acknowledged write
//! lost, never two writable primaries, healed within 30 s, backups that verify and restore).
//! What a round does and how each invariant is judged: `steward_testbed::nemesis`.
//!
//! * `short_campaign` (CI): 10 rounds, 5 on Business then 5 on Premium, seed
//!   [`SHORT_SEED`]; about 3 minutes (a time budget of 6 stops starting rounds).
//! * `fault_helpers_undo_what_they_do`: the small disk, the filler and the SIGSTOP guard.
//! * `long_campaign` (ignored): `NEMESIS_ROUNDS` rounds (default 200) within
//!   `NEMESIS_MINUTES` (default 60), a fresh seed each run unless `NEMESIS_SEED` is set; stops
//!   after the first round that breaks an invariant (unless `NEMESIS_KEEP_GOING=true`).
//!   Prints the campaign as markdown tables (for BENCHMARKS.md) and, on a violation, the
//!   command that replays the round (`NEMESIS_KEEP_DATA=<dir>` keeps the data directories of a
//!   store that did not heal):
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
use steward_testbed::node::{env_or, fill_filesystem, free_bytes, SmallDisk, Stopped};

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
    let cfg = CampaignConfig::from_env("short_campaign", false, SHORT_SEED, 10, 6.0);
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
    cfg.stop_on_violation = !env_or("NEMESIS_KEEP_GOING", false);
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

/// The state letter of `/proc/PID/stat` (R, S, T for stopped, …).
fn proc_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit(')').next().unwrap();
    after.split_whitespace().next().unwrap().to_string()
}

#[test]
fn fault_helpers_undo_what_they_do() {
    // A full disk is empty again once the filler goes.
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 16).unwrap();
    let free = free_bytes(disk.path()).unwrap();
    assert!(free > 15 << 20, "{free}");
    let filled = fill_filesystem(disk.path()).unwrap();
    assert!(free_bytes(disk.path()).unwrap() < 4096);
    assert!(std::fs::write(disk.path().join("more"), [0u8; 8192]).is_err());
    assert!(filled.bytes + 4096 >= free, "{} of {free}", filled.bytes);
    filled.release();
    assert_eq!(free_bytes(disk.path()).unwrap(), free);
    let mounted = disk.path().to_path_buf();
    drop(disk);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(mounted.to_str().unwrap()), "still mounted");

    // A stopped process runs again when the guard goes, also while unwinding.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stopped = Stopped::new();
    assert!(stopped.stop(pid, "not-sleep").is_err(), "checked by name");
    stopped.stop(pid, "sleep").unwrap();
    let state =
        steward_testbed::node::wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
            Some(proc_state(pid)).filter(|s| s == "T")
        });
    assert!(state.is_some(), "not stopped: {}", proc_state(pid));
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = stopped;
        panic!("a failing test");
    }));
    assert_ne!(proc_state(pid), "T");
    child.kill().unwrap();
    child.wait().unwrap();
}
