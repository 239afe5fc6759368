//! Planned switchover (`redis-steward switchover`) and the promotion hook, on the namespace
//! testbed, with the Sentinel-discovering writer running throughout: a switchover loses no
//! write a primary ever answered OK to (not only acknowledged ones), clients follow it through
//! the Sentinel port, refusals say why, and the hook runs once per promotion.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};
use steward_testbed::cluster::{Cluster, Options};
use steward_testbed::node::{agent_bin, wait_for};

/// `redis-steward switchover …` run on node `from` against its own agent.
fn switchover(c: &Cluster, from: usize, args: &[&str]) -> Output {
    let api = c.nodes[from].api_addr().to_string();
    // The config names the state directory, where the CLI finds the API token.
    let config = c.nodes[from].config_path.to_string_lossy().to_string();
    let mut cmd = c.bed.host(from).command(agent_bin());
    cmd.args([
        "switchover",
        "--api",
        &api,
        "--config",
        &config,
        "--wait",
        "20",
    ])
    .args(args);
    cmd.output().expect("run redis-steward switchover")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Lines of the hook log naming `node`.
fn hook_runs(c: &Cluster, node: usize) -> Vec<String> {
    let name = format!("node-{node} ");
    std::fs::read_to_string(c.hook_log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&name))
        .map(str::to_string)
        .collect()
}

fn wait_hook_runs(c: &Cluster, node: usize, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let runs = hook_runs(c, node);
        if runs.len() >= n || Instant::now() > deadline {
            return runs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn planned_switchover_loses_nothing(plan: &str) {
    let c = Arc::new(
        Cluster::start_with(
            plan,
            Options {
                promote_hook: true,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    let old = c.wait_settled(Duration::from_secs(60)).unwrap();
    let n = c.nodes.len();
    let target = (old + 1) % n;
    let asker = (old + n - 1) % n; // any node can ask; with two nodes it is the target
    let epoch = c.epoch(old).unwrap();
    // The first primary ran the hook once for its election.
    let first = wait_hook_runs(&c, old, 1);
    assert_eq!(first.len(), 1, "hook runs of the first primary: {first:?}");
    assert!(first[0].contains(&format!(" {epoch} ")), "{first:?}");

    // A client parked on the old primary (a subscriber never sends again, so only the
    // server closing the connection ends it): the demoted primary must drop it.
    let client = c.bed.hosts().len() - 1;
    let mut parked = c
        .bed
        .host(client)
        .command("timeout")
        .args(["120", "redis-cli", "--tls", "--cacert"])
        .arg(c.ca_file())
        .args(["-h", &c.bed.host(old).ip.to_string(), "-p", "6380"])
        .args(["-a", steward_testbed::node::PASSWORD, "--no-auth-warning"])
        .args(["SUBSCRIBE", "parked"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkers = c.start_checkers();
    assert!(checkers.wait_more_acks(50, Duration::from_secs(20)));
    assert!(
        parked.try_wait().unwrap().is_none(),
        "the parked client died early"
    );
    let asked_at = checkers.elapsed_ms();
    let out = switchover(&c, asker, &["--to", &format!("node-{target}")]);
    assert!(out.status.success(), "switchover failed: {}", text(&out));
    assert!(
        text(&out).contains(&format!("node-{target} is the primary")),
        "{}",
        text(&out)
    );
    assert_eq!(c.primary(), Some(target));
    assert!(c.epoch(target).unwrap() > epoch);
    let dropped = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        parked.try_wait().unwrap()
    });
    let _ = parked.kill();
    // `timeout` exits 124 when it had to end redis-cli itself.
    assert!(
        dropped.is_some_and(|s| s.code() != Some(124)),
        "the demoted primary kept its client connection ({dropped:?})"
    );
    // Clients follow through the Sentinel port (WAIT 1 needs the old primary to follow too).
    assert!(checkers.wait_more_acks(50, Duration::from_secs(20)));
    let report = checkers.finish();
    if let Some((_, acked_at)) = report.primaries.iter().find(|(n, _)| *n == target) {
        eprintln!(
            "{plan}: switchover asked at {asked_at} ms; first write acknowledged by node-{target} at {acked_at} ms"
        );
    }
    assert!(
        report.split_brain_ms.is_empty(),
        "{:?}",
        report.split_brain_ms
    );
    assert_eq!(
        report.primaries.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![old, target],
        "the writer moved once, to the target"
    );
    // Zero loss: every write any primary answered OK to is there, acknowledged or not.
    let missing = c.missing(&report.accepted);
    assert!(missing.is_empty(), "switchover lost {missing:?}");

    // The hook ran once on the new primary, with its epoch and address.
    let runs = wait_hook_runs(&c, target, 1);
    assert_eq!(runs.len(), 1, "hook runs on node-{target}: {runs:?}");
    let new_epoch = c.epoch(target).unwrap();
    let ip = c.bed.host(target).ip;
    assert!(
        runs[0].contains(&format!(" {new_epoch} {ip}:")),
        "hook saw {runs:?}"
    );
    assert_eq!(hook_runs(&c, old).len(), 1, "the old primary ran it again");

    // And back, letting the agents pick the best node, once the old primary has caught up
    // with the new epoch (until then it is refused as still catching up).
    c.wait_settled(Duration::from_secs(30)).unwrap();
    let out = switchover(&c, target, &[]);
    assert!(out.status.success(), "second switchover: {}", text(&out));
    assert_ne!(c.primary(), Some(target));
}

#[test]
fn premium_switchover_loses_no_write() {
    planned_switchover_loses_nothing("premium");
}

#[test]
fn business_switchover_loses_no_write() {
    planned_switchover_loses_nothing("business");
}

#[test]
fn switchover_refusals_say_why() {
    let c = Cluster::start("premium").unwrap();
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(p).unwrap();
    let replica = (p + 1) % 3;

    let out = switchover(&c, replica, &["--to", "node-9"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("node-9 is not a node of this data store"),
        "{}",
        text(&out)
    );
    let out = switchover(&c, p, &["--to", &format!("node-{p}")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is already the primary"),
        "{}",
        text(&out)
    );

    // A replica cut off from everyone cannot take over.
    c.bed.isolate(replica).unwrap();
    // Until the primary has not heard from it for the failover timeout (750 ms by default):
    // from then on the primary refuses it.
    let name = format!("node-{replica}");
    let unheard = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let st = c.nodes[p].status()?;
        let m = st["cluster"]["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name.as_str())?
            .clone();
        (m["alive"] == false || m["last_heard_ms"].as_u64()? >= 1000).then_some(())
    });
    assert!(unheard.is_some(), "{:?}", c.nodes[p].status());
    let out = switchover(&c, p, &["--to", &format!("node-{replica}")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not reachable"), "{}", text(&out));
    c.bed.heal(replica).unwrap();

    // The refusals changed nothing: the same primary (the isolated replica may have run for
    // a newer epoch meanwhile, which the primary answers by re-electing itself).
    let still = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (c.primary() == Some(p)).then_some(())
    });
    assert!(still.is_some(), "primary moved; logs:\n{}", c.logs());
    assert!(c.epoch(p).unwrap() >= epoch);
}

/// A client like ioredis: it asks the Sentinel ports for the primary, connects, and writes;
/// on a dropped connection it asks again at once; on `READONLY` it keeps its connection (it
/// has no READONLY handling). Returns, per write, when it ran and whether `READONLY` came back.
fn sticky_client(
    c: &Cluster,
    first: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, bool)>> {
    use std::sync::atomic::Ordering;
    use steward_testbed::sentinel_client::{data_node_client, discover_primary, ProbeTarget};
    let ns = c.bed.host(c.client_host()).name.clone();
    // Clients list every Sentinel port and ask the first that answers: give each client
    // another node's first.
    let mut target = c.target();
    let n = target.sentinels.len();
    target.sentinels.rotate_left(first % n);
    let ca = c.ca_file();
    std::thread::spawn(move || {
        let mut log = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(addr) = discover_primary(&ns, &target, Duration::from_secs(5)) else {
                continue;
            };
            let probe = ProbeTarget {
                name: "sticky".into(),
                netns: ns.clone(),
                addr: addr.parse().expect("ip:port"),
                tls_ca: Some(ca.clone()),
                password: Some(steward_testbed::node::PASSWORD.into()),
            };
            steward_testbed::netns::run_in_netns(&ns, || {
                let Ok(mut conn) = data_node_client(&probe)
                    .and_then(|cl| Ok(cl.get_connection_with_timeout(Duration::from_secs(1))?))
                else {
                    return;
                };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                while !stop.load(Ordering::Relaxed) {
                    let r: redis::RedisResult<()> =
                        redis::cmd("SET").arg("sticky").arg(1).query(&mut conn);
                    match r {
                        Ok(()) => log.push((Instant::now(), false)),
                        Err(e) if e.code() == Some("READONLY") => {
                            log.push((Instant::now(), true));
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        log
    })
}

/// ioredis through a planned switchover reconnected into the ~200 ms in which the demoted
/// primary had dropped its clients but its Sentinel port still named it, and got READONLY for
/// the rest of the run. The demoted node now drops the clients that connected meanwhile once
/// it follows the new primary: after every switchover, no client is left on a replica.
#[test]
fn no_client_is_left_writing_to_a_demoted_primary() {
    let c = Cluster::start("premium").unwrap();
    c.wait_settled(Duration::from_secs(60)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6).map(|k| sticky_client(&c, k, stop.clone())).collect();
    let mut checks = Vec::new();
    for round in 0..4 {
        let p = c.wait_settled(Duration::from_secs(30)).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let out = switchover(&c, p, &[]);
        assert!(out.status.success(), "round {round}: {}", text(&out));
        c.wait_new_primary(p, Duration::from_secs(20)).unwrap();
        // Time to rediscover; after it, every client must be writing again.
        std::thread::sleep(Duration::from_secs(3));
        checks.push((round, Instant::now()));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (k, h) in clients.into_iter().enumerate() {
        let log = h.join().unwrap();
        println!(
            "client {k}: {} writes, {} READONLY",
            log.len(),
            log.iter().filter(|(_, ro)| *ro).count()
        );
        for &(round, at) in &checks {
            let window: Vec<bool> = log
                .iter()
                .filter(|(t, _)| *t >= at && *t < at + Duration::from_millis(800))
                .map(|(_, ro)| *ro)
                .collect();
            assert!(
                !window.is_empty() && window.iter().all(|ro| !ro),
                "client {k} after switchover {round}: {} writes, {} READONLY",
                window.len(),
                window.iter().filter(|ro| **ro).count()
            );
        }
    }
}

/// `POST /switchover` and `POST /backup` change the data store: they are served only on the
/// loopback `api.listen`, not on the network-facing `api.public_listen`, and only with the
/// token of `state_dir/api.token`.
#[test]
fn mutating_endpoints_need_the_token_and_are_not_on_the_network() {
    use steward_testbed::cluster::PUBLIC_API_PORT;
    use steward_testbed::netns::run_in_netns;
    use steward_testbed::node::http_method;
    let c = Cluster::start("premium").unwrap();
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let epoch = c.epoch(p).unwrap();
    // From another host: only the read-only API is there.
    let public = std::net::SocketAddr::from((c.node_ip(p), PUBLIC_API_PORT));
    let client = c.bed.host(c.client_host()).name.clone();
    let (code, _) = run_in_netns(&client, || http_method(public, "GET", "/primary", None)).unwrap();
    assert_eq!(code, 200);
    for path in ["/switchover", "/backup"] {
        let (code, body) =
            run_in_netns(&client, || http_method(public, "POST", path, None)).unwrap();
        assert!(
            code == 404 || code == 405,
            "POST {path} on the network: {code} {body}"
        );
    }
    // On the node itself, without the token or with a wrong one: refused, saying why.
    let local = c.nodes[p].api_addr();
    let ns = c.bed.host(c.node_host(p)).name.clone();
    for token in [None, Some("0123")] {
        let (code, body) =
            run_in_netns(&ns, || http_method(local, "POST", "/switchover", token)).unwrap();
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("needs the API token"), "{body}");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.primary(), Some(p), "a refused request moved nothing");
    assert_eq!(c.epoch(p), Some(epoch));
    // The CLI reads the token through the config (as root here): it works.
    let out = switchover(&c, p, &[]);
    assert!(out.status.success(), "{}", text(&out));
}
