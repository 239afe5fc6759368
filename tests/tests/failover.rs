//! Failover scenarios on the namespace testbed: real agents and redis-servers on separate
//! hosts, faults injected from outside, and after each one the invariants: no write that
//! `WAIT 1` acknowledged is lost, and never two writable primaries.

use std::sync::Arc;
use std::time::Duration;
use steward_testbed::cluster::{Cluster, Report};

fn settle_and_check(c: &Cluster, report: &Report) {
    assert!(
        report.split_brain_ms.is_empty(),
        "two writable primaries at {:?} ms",
        report.split_brain_ms
    );
    let missing = c.missing_acked(report);
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "{} attempts, {} acknowledged; primaries (node, first ack ms): {:?}",
        report.attempts,
        report.acked.len(),
        report.primaries
    );
}

fn kill_primary_node(plan: &str) {
    let c = Arc::new(Cluster::start(plan).unwrap());
    let old = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(old).unwrap();
    let checkers = c.start_checkers();
    assert!(
        checkers.wait_more_acks(50, Duration::from_secs(20)),
        "writer made no progress"
    );
    let kill_at = checkers.elapsed_ms();
    c.bed.kill_all(old).unwrap();
    let new = c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
    let promoted_at = checkers.elapsed_ms();
    assert!(c.epoch(new).unwrap() > epoch);
    assert_eq!(c.cli(new, &["SET", "after-failover", "1"]), "OK");
    // As a client sees it (through the Sentinel port): with a replica left, the first write
    // WAIT 1 acknowledges on the new primary; with two nodes (no replica until the old one
    // returns), the first write the new primary takes.
    let client_ms = checkers
        .first_write_on(new, kill_at, plan == "premium", Duration::from_secs(20))
        .expect("the client found no new primary")
        - kill_at;
    eprintln!("{plan}: the Sentinel-discovering client wrote to the new primary {client_ms} ms after the kill");
    if plan == "premium" {
        // A replica is left: WAIT 1 keeps acknowledging on the new primary.
        assert!(
            checkers.wait_more_acks(50, Duration::from_secs(20)),
            "no writes on the new primary"
        );
    }
    // The old node comes back (same disk): it must follow the new primary, not reclaim.
    c.nodes[old].start().unwrap();
    c.nodes[old].wait_healthy(Duration::from_secs(30)).unwrap();
    assert!(
        checkers.wait_more_acks(50, Duration::from_secs(30)),
        "no acknowledged writes after the old node rejoined; logs:\n{}",
        c.logs()
    );
    assert_eq!(c.primary(), Some(new), "the returning node took over");
    let report = checkers.finish();
    eprintln!(
        "{plan}: kill -9 of primary node {old} -> node {new} promoted after {} ms",
        promoted_at - kill_at
    );
    settle_and_check(&c, &report);
    let resynced = steward_testbed::node::wait_for(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || (c.cli(old, &["GET", "after-failover"]) == "1").then_some(()),
    );
    assert!(
        resynced.is_some(),
        "old primary did not resync from the new one"
    );
}

#[test]
fn premium_survives_the_primary_node_dying() {
    kill_primary_node("premium");
}

#[test]
fn business_survives_the_primary_node_dying() {
    kill_primary_node("business");
}

/// Watch for `dur`: the primary and its epoch must not change.
fn assert_stable(c: &Cluster, primary: usize, epoch: u64, dur: Duration, what: &str) {
    let end = std::time::Instant::now() + dur;
    while std::time::Instant::now() < end {
        let writable = c.writable_primaries();
        assert!(
            writable.iter().all(|&w| w == primary),
            "{what}: writable primaries {writable:?}; logs:\n{}",
            c.logs()
        );
        if let Some(p) = c.primary() {
            assert_eq!(
                p,
                primary,
                "{what}: primary moved to node {p}; logs:\n{}",
                c.logs()
            );
            assert_eq!(
                c.epoch(p),
                Some(epoch),
                "{what}: epoch changed; logs:\n{}",
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A restarted redis counts its replication offset from 0 again, so the primary gives up its
/// epoch and a new one is elected — itself, or a replica holding as much (the agent knows
/// its restarted redis's data only up to its last probe) — and no acknowledged write is lost.
#[test]
fn a_crashed_redis_on_the_primary_costs_one_election_and_no_write() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(p).unwrap();
    let checkers = c.start_checkers();
    assert!(checkers.wait_more_acks(30, Duration::from_secs(20)));
    let pid = c.nodes[p].redis_pid().unwrap();
    // SAFETY: kill(2) of the redis-server the test's agent started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        checkers.wait_more_acks(30, Duration::from_secs(20)),
        "writes did not resume; logs:\n{}",
        c.logs()
    );
    let q = c.wait_settled(Duration::from_secs(30)).unwrap();
    let now = c.epoch(q).unwrap_or(0);
    assert!(
        now > epoch,
        "after a redis crash: node {q} primary in epoch {now} (was node {p} in epoch {epoch}); logs:\n{}",
        c.logs()
    );
    assert_stable(&c, q, now, Duration::from_secs(3), "after a redis crash");
    let report = checkers.finish();
    settle_and_check(&c, &report);
}

#[test]
fn a_dead_agent_takes_its_redis_down_and_triggers_failover() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let old = c.wait_settled(Duration::from_secs(60)).unwrap();
    let checkers = c.start_checkers();
    assert!(checkers.wait_more_acks(30, Duration::from_secs(20)));
    c.nodes[old].signal(libc::SIGKILL);
    let new = c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
    assert!(checkers.wait_more_acks(30, Duration::from_secs(20)));
    c.nodes[old].wait_exit(Duration::from_secs(5)).unwrap();
    c.nodes[old].start().unwrap();
    c.nodes[old].wait_healthy(Duration::from_secs(30)).unwrap();
    assert_eq!(c.primary(), Some(new));
    let report = checkers.finish();
    settle_and_check(&c, &report);
}

#[test]
fn an_isolated_primary_fences_itself_and_rejoins_as_replica() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let old = c.wait_settled(Duration::from_secs(60)).unwrap();
    let checkers = c.start_checkers();
    assert!(checkers.wait_more_acks(30, Duration::from_secs(20)));
    c.bed.isolate(old).unwrap();
    let t0 = std::time::Instant::now();
    // The old primary stops calling itself writable on its own.
    let fenced =
        steward_testbed::node::wait_for(Duration::from_secs(10), Duration::from_millis(10), || {
            c.nodes[old]
                .status()
                .filter(|s| s["cluster"]["writable"] == false)
                .map(|_| t0.elapsed())
        })
        .expect("isolated primary never fenced itself");
    let new = c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
    let elected = t0.elapsed();
    let new_epoch = c.epoch(new).unwrap();
    eprintln!("isolated primary fenced after {fenced:?}; new primary after {elected:?}");
    assert!(
        fenced < elected,
        "fenced ({fenced:?}) only after the others elected ({elected:?})"
    );
    // Its redis takes no customer writes while cut off (the write waits, never answering OK).
    let nodes_old = c.nodes[old].status().unwrap();
    assert_eq!(nodes_old["role"], "fenced", "{nodes_old}");
    let secs = Duration::from_secs;
    assert_ne!(
        c.cli_from(old, "127.0.0.1", secs(2), &["SET", "split-brain", "1"]),
        "OK"
    );
    assert!(c
        .cli_from(old, "127.0.0.1", secs(15), &["CLIENT", "UNPAUSE"])
        .contains("NOPERM"));
    assert!(checkers.wait_more_acks(30, Duration::from_secs(20)));
    // Cut off long enough to have campaigned alone through several epochs (it cannot: it
    // hears no majority), which would force the healthy side to elect again after the heal.
    std::thread::sleep(Duration::from_secs(5));
    c.bed.heal(old).unwrap();
    let rejoined =
        steward_testbed::node::wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            c.nodes[old]
                .status()
                .filter(|s| s["role"] == "replica")
                .map(|_| ())
        });
    assert!(
        rejoined.is_some(),
        "old primary did not rejoin as replica; logs:\n{}",
        c.logs()
    );
    assert_eq!(c.primary(), Some(new));
    // Settled again (every replica linked for a second), with no election on the way.
    assert_eq!(c.wait_settled(Duration::from_secs(30)).ok(), Some(new));
    assert_eq!(
        c.epoch(new),
        Some(new_epoch),
        "the healthy side had to elect again after the heal; logs:\n{}",
        c.logs()
    );
    assert_eq!(
        c.cli(new, &["EXISTS", "split-brain"]),
        "0",
        "a write to the fenced primary survived"
    );
    let report = checkers.finish();
    settle_and_check(&c, &report);
}

#[test]
fn losing_one_replica_changes_nothing() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(p).unwrap();
    let replica = (p + 1) % 3;
    let checkers = c.start_checkers();
    assert!(checkers.wait_more_acks(30, Duration::from_secs(20)));
    c.bed.isolate(replica).unwrap();
    assert_stable(
        &c,
        p,
        epoch,
        Duration::from_secs(4),
        "with one replica cut off",
    );
    assert!(
        checkers.wait_more_acks(30, Duration::from_secs(20)),
        "the other replica keeps acknowledging"
    );
    c.bed.heal(replica).unwrap();
    let report = checkers.finish();
    settle_and_check(&c, &report);
}

#[test]
fn thirty_percent_packet_loss_causes_no_failover() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let p = c.wait_settled(Duration::from_secs(30)).unwrap();
    let epoch = c.epoch(p).unwrap();
    let checkers = c.start_checkers();
    // Loss applies on the way out of one host and again on the way into the next, so 16 %
    // per host and direction is 1 - 0.84² ≈ 30 % on every host-to-host link.
    for i in 0..3 {
        c.bed.set_loss(i, 16).unwrap();
    }
    assert_stable(
        &c,
        p,
        epoch,
        Duration::from_secs(10),
        "under 30% packet loss",
    );
    for i in 0..3 {
        c.bed.clear_loss(i).unwrap();
    }
    let report = checkers.finish();
    settle_and_check(&c, &report);
}

#[test]
fn forged_gossip_during_a_failover_is_ignored() {
    use std::net::UdpSocket;
    let c = Arc::new(Cluster::start("premium").unwrap());
    let old = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(old).unwrap();
    let client = c.bed.hosts().len() - 1;
    let targets: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{}:{}",
                c.bed.host(i).ip,
                steward_testbed::cluster::GOSSIP_PORT
            )
        })
        .collect();
    // A forger on the client host: junk, and datagrams that look like ours (magic, version,
    // a plausible header) but were not sealed with the data store's key.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forger = {
        let (c, stop, targets) = (c.clone(), stop.clone(), targets.clone());
        std::thread::spawn(move || {
            c.bed.host(client).run_in(|| {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                let mut n = 0u64;
                // Bounded: at most 30 s or 20,000 datagrams.
                let end = std::time::Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < end
                    && n < 20_000
                {
                    let mut d = b"RSGP\x01\x00\x00\x00\x01".to_vec();
                    d.extend_from_slice(&n.to_be_bytes());
                    d.extend_from_slice(&n.to_be_bytes());
                    d.extend_from_slice(&0u64.to_be_bytes());
                    d.extend_from_slice(&[0xAB; 64]);
                    for t in &targets {
                        let _ = sock.send_to(if n.is_multiple_of(2) { &d } else { b"junk" }, t);
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
    };
    c.bed.kill_all(old).unwrap();
    let new = c.wait_new_primary(old, Duration::from_secs(30)).unwrap();
    assert!(c.epoch(new).unwrap() > epoch);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    forger.join().unwrap();
    let metrics = c.nodes[new].api_get("/metrics").unwrap();
    let count = |reason: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "redis_steward_gossip_dropped{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("authentication") > 0 && count("malformed") > 0,
        "{metrics}"
    );
    // Exactly one primary, and the cluster still works.
    assert_eq!(c.primary(), Some(new));
    assert_eq!(c.cli(new, &["SET", "after", "1"]), "OK");
}

#[test]
fn cutting_only_the_link_between_two_business_nodes_promotes_nobody() {
    let c = Arc::new(Cluster::start("business").unwrap());
    let p = c.wait_settled(Duration::from_secs(30)).unwrap();
    let epoch = c.epoch(p).unwrap();
    let standby = 1 - p;
    c.bed.cut_link(0, 1).unwrap();
    // Both still reach the lease bucket (a shared folder): the primary keeps renewing, so the
    // standby sees the heartbeat move and must not take over.
    assert_stable(
        &c,
        p,
        epoch,
        Duration::from_secs(6),
        "with the link between the nodes cut",
    );
    assert_ne!(c.nodes[standby].status().unwrap()["role"], "primary");
    c.bed.heal_link(0, 1).unwrap();
    assert_stable(
        &c,
        p,
        epoch,
        Duration::from_secs(2),
        "after healing the link",
    );
    assert!(c.writable_primaries().len() == 1);
}

/// A replica cut off for a few seconds while the primary takes more writes than redis's
/// default 1 MB backlog comes back with a partial resync, not a full one: the long nemesis
/// campaign saw a replica loop through full syncs of its 180 MB for minutes (each one
/// outlasted by more than a backlog of new writes). The agent sizes `repl-backlog-size`.
#[test]
fn a_replica_cut_off_briefly_catches_up_without_a_full_sync() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let replica = (p + 1) % 3;
    let value = "v".repeat(100_000);
    assert_eq!(c.cli(p, &["SET", "warm", "1"]), "OK");
    let full_syncs = |log: &str| log.matches("Full resync from master").count();
    let before = full_syncs(&c.nodes[replica].log());
    c.bed.isolate(replica).unwrap();
    // 3 MB while it is away.
    for i in 0..30 {
        assert_eq!(c.cli(p, &["SET", &format!("big:{i}"), &value]), "OK");
    }
    std::thread::sleep(Duration::from_secs(3));
    c.bed.heal(replica).unwrap();
    c.wait_settled(Duration::from_secs(60)).unwrap();
    let caught_up = steward_testbed::node::wait_for(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (c.cli(replica, &["EXISTS", "big:29"]) == "1").then_some(()),
    );
    assert!(caught_up.is_some(), "the replica never caught up");
    let log = c.nodes[replica].log();
    assert_eq!(
        full_syncs(&log),
        before,
        "a full sync after a 3-second cut; log:\n{log}"
    );
}

/// A replica's own view of where its data stands, from its status.
fn own_offset(c: &Cluster, i: usize) -> Option<u64> {
    let st = c.nodes[i].status()?;
    let me = st["cluster"]["members"]
        .as_array()?
        .iter()
        .find(|m| m["is_self"] == true)?
        .clone();
    me["offset"].as_u64()
}

/// Redis 7.0 restarted from its AOF reports `master_repl_offset:0` (and a new replication id)
/// whatever it loaded. The agent took that for its position, so a restarted replica voted
/// for any candidate of its epoch, one without the writes it had acknowledged included: the
/// long nemesis campaign lost 17,646 WAIT-1-acknowledged writes in rolling restarts. Here a
/// replica is restarted while cut off from the primary (so it cannot resync): it must go on
/// counting from where its data stood.
#[test]
fn a_restarted_replica_keeps_its_place_in_the_stream() {
    let c = Arc::new(Cluster::start("premium").unwrap());
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let checkers = c.start_checkers();
    assert!(checkers.wait_more_acks(50, Duration::from_secs(20)));
    let r = (p + 1) % 3;
    c.bed.cut_link(c.node_host(r), c.node_host(p)).unwrap();
    // Nothing reaches it any more: its offset holds still.
    std::thread::sleep(Duration::from_millis(500));
    let before = own_offset(&c, r).expect("the replica's status");
    assert!(before > 0, "the replica holds nothing yet");
    assert_eq!(c.nodes[r].stop().unwrap(), Some(0), "{}", c.nodes[r].log());
    c.nodes[r].start().unwrap();
    let healthy = steward_testbed::node::wait_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            c.nodes[r]
                .status()
                .filter(|s| s["redis"]["healthy"] == true)
        },
    );
    assert!(healthy.is_some(), "{}", c.nodes[r].log());
    // A few election ticks for its probes to be published.
    std::thread::sleep(Duration::from_millis(500));
    let after = own_offset(&c, r);
    assert!(
        after.is_some_and(|o| o >= before),
        "restarted replica claims offset {after:?}, its data stood at {before}; log:\n{}",
        c.nodes[r].log()
    );
    c.bed.heal_link(c.node_host(r), c.node_host(p)).unwrap();
    let report = checkers.finish();
    settle_and_check(&c, &report);
}

/// What each node's `/primary` and `/replica` answer (status codes).
fn health_codes(c: &Cluster) -> Vec<(Option<u16>, Option<u16>)> {
    (0..c.nodes.len())
        .map(|i| {
            let code = |p: &str| c.nodes[i].api_call(p).map(|(code, _)| code);
            (code("/primary"), code("/replica"))
        })
        .collect()
}

/// Load balancers follow the primary through HTTP checks with Patroni's semantics: exactly
/// the writable primary answers `/primary` 200 (never two nodes, also during a failover),
/// linked replicas answer `/replica` 200, and after the primary dies the new one takes over.
#[test]
fn health_checks_name_exactly_the_writable_primary_through_a_failover() {
    let mut c = Cluster::start("premium").unwrap();
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let codes = health_codes(&c);
    for (i, (primary, replica)) in codes.iter().enumerate() {
        let want = if i == p {
            (Some(200), Some(503))
        } else {
            (Some(503), Some(200))
        };
        assert_eq!(
            (*primary, *replica),
            want,
            "node {i} of {codes:?}; logs:\n{}",
            c.logs()
        );
    }
    let (code, body) = c.nodes[(p + 1) % 3].api_call("/replica?lag=1GB").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.nodes[(p + 1) % 3].api_call("/replica?lag=lots").unwrap();
    assert!(
        code == 400 && body.contains("expected a number"),
        "{code} {body}"
    );
    for path in ["/health", "/liveness", "/readiness"] {
        assert_eq!(c.nodes[p].api_call(path).map(|r| r.0), Some(200), "{path}");
    }
    c.kill_node(p).unwrap();
    // Until and after the new primary takes over, never two nodes answer /primary 200.
    let new =
        steward_testbed::node::wait_for(Duration::from_secs(20), Duration::from_millis(20), || {
            let up: Vec<usize> = (0..3)
                .filter(|&i| i != p)
                .filter(|&i| c.nodes[i].api_call("/primary").map(|r| r.0) == Some(200))
                .collect();
            assert!(up.len() <= 1, "two nodes answer /primary: {up:?}");
            up.first().copied()
        });
    let new = new.expect("a new primary answers /primary");
    assert_eq!(c.primary(), Some(new));

    // `redis-steward history`: both survivors keep the same records, the newest naming the
    // new primary after the old one.
    let epoch = c.epoch(new).unwrap();
    let history = |i: usize| {
        steward_testbed::node::wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            let (code, body) = c.nodes[i].api_call("/history")?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let last = v.as_array()?.last()?.clone();
            (code == 200 && last["epoch"] == epoch).then_some(v)
        })
        .unwrap_or_else(|| panic!("node {i} kept no record of epoch {epoch}"))
    };
    let survivors: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    let (a, b) = (history(survivors[0]), history(survivors[1]));
    assert_eq!(a, b, "the survivors' histories differ");
    let last = a.as_array().unwrap().last().unwrap();
    assert_eq!(last["primary"], format!("node-{new}"), "{a:#}");
    assert_eq!(last["previous"], format!("node-{p}"), "{a:#}");
    assert!(
        last["reason"].as_str().unwrap().contains("won epoch"),
        "{a:#}"
    );
    let gap = last["unavailable_ms"].as_u64().expect("unavailable_ms");
    assert!((100..20_000).contains(&gap), "{a:#}");
    let first = &a.as_array().unwrap()[0];
    assert_eq!(first["epoch"], 1, "{a:#}");
}
