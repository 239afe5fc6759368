//! A plain redis client that knows only HAProxy's address follows a failover: HAProxy runs
//! the shipped `packaging/haproxy.cfg` (TCP mode, TLS passed through, `option httpchk GET
//! /primary` against every agent's read-only API) in the client's namespace; the primary
//! node is killed while the client writes with `WAIT 1`. No acknowledged write may be lost.
//!
//! `HAPROXY_ROUNDS=5 cargo test -p steward-testbed --test haproxy -- --nocapture` prints the
//! time from the kill to the first acknowledged write through HAProxy (BENCHMARKS.md).

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use steward_testbed::cluster::{Cluster, PUBLIC_API_PORT, REDIS_PORT};
use steward_testbed::netns::run_in_netns;
use steward_testbed::node::PASSWORD;

/// HAProxy's client port inside the client's namespace.
const FRONT_PORT: u16 = 6390;

/// The shipped config with this testbed's nodes and port.
fn haproxy_config(c: &Cluster) -> String {
    let shipped = include_str!("../../packaging/haproxy.cfg");
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim_start();
        if t.starts_with("server ") {
            continue;
        }
        if t.starts_with("bind ") {
            out += &format!("    bind 127.0.0.1:{FRONT_PORT}\n");
            continue;
        }
        out += &line.replace("port 7481", &format!("port {PUBLIC_API_PORT}"));
        out.push('\n');
    }
    for i in 0..c.nodes.len() {
        out += &format!("    server node-{i} {}:{REDIS_PORT}\n", c.node_ip(i));
    }
    out
}

/// HAProxy in the client's namespace, killed (by pid) when dropped.
struct Haproxy(Child);

impl Haproxy {
    fn start(c: &Cluster, dir: &std::path::Path) -> Result<Haproxy> {
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(c))?;
        let child = c
            .bed
            .host(c.client_host())
            .command("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
            .spawn()
            .context("starting haproxy (Debian's haproxy package)")?;
        Ok(Haproxy(child))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Log {
    acked: Vec<(u64, Instant)>,
    errors: u64,
}

/// `SET k{n} n` + `WAIT 1 500` through HAProxy until `stop`, reconnecting after any error.
fn writer(ns: String, ca: Vec<u8>, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    // Two rustls providers are linked (the agent's object_store brings one): name ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    run_in_netns(&ns, || {
        let url = format!("rediss://default:{PASSWORD}@127.0.0.1:{FRONT_PORT}");
        let client = redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .expect("client");
        let mut n = 0;
        let mut conn = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.is_none() {
                conn = client
                    .get_connection_with_timeout(Duration::from_millis(500))
                    .ok();
                if conn.is_none() {
                    log.lock().unwrap().errors += 1;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
            let c = conn.as_mut().expect("connected");
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            n += 1;
            let set: redis::RedisResult<()> =
                redis::cmd("SET").arg(format!("k{n}")).arg(n).query(c);
            let waited: redis::RedisResult<i64> =
                set.and_then(|_| redis::cmd("WAIT").arg(1).arg(500).query(c));
            match waited {
                Ok(r) if r >= 1 => log.lock().unwrap().acked.push((n, Instant::now())),
                Ok(_) => {}
                Err(_) => {
                    log.lock().unwrap().errors += 1;
                    conn = None;
                }
            }
        }
    });
}

/// One kill of the primary: the time from the kill to the first write acknowledged after it.
fn one_round() -> Duration {
    let mut c = Cluster::start("premium").unwrap();
    let p = c.wait_settled(Duration::from_secs(60)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _haproxy = Haproxy::start(&c, dir.path()).unwrap();
    let ns = c.bed.host(c.client_host()).name.clone();
    let ca = std::fs::read(c.ca_file()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let w = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || writer(ns, ca, stop, log))
    };
    let acked = |log: &Mutex<Log>| log.lock().unwrap().acked.len();
    let until = Instant::now() + Duration::from_secs(20);
    while acked(&log) < 200 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        acked(&log) >= 200,
        "no writes through HAProxy ({} errors); haproxy:\n{}\nconfig:\n{}",
        log.lock().unwrap().errors,
        std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default(),
        haproxy_config(&c),
    );
    c.kill_node(p).unwrap();
    // Once its processes are gone: a write acknowledged in between came from the old primary.
    let killed = Instant::now();
    let first =
        steward_testbed::node::wait_for(Duration::from_secs(30), Duration::from_millis(10), || {
            let l = log.lock().unwrap();
            l.acked.iter().find(|(_, t)| *t > killed).map(|(_, t)| *t)
        });
    let first = first.unwrap_or_else(|| panic!("no write after the kill; logs:\n{}", c.logs()));
    // Some more writes on the new primary, then stop and check every acknowledged one.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    c.wait_new_primary(p, Duration::from_secs(30)).unwrap();
    let keys: BTreeSet<u64> = log.lock().unwrap().acked.iter().map(|(n, _)| *n).collect();
    let missing = c.missing_with_prefix("k", &keys);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        keys.len(),
        &missing[..missing.len().min(20)]
    );
    first - killed
}

#[test]
fn a_client_that_knows_only_haproxy_writes_through_a_failover() {
    let rounds: usize = std::env::var("HAPROXY_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut times: Vec<u128> = (0..rounds).map(|_| one_round().as_millis()).collect();
    times.sort_unstable();
    println!(
        "kill of the primary node -> first WAIT-1 write through HAProxy, ms: {times:?} (median {})",
        times[times.len() / 2]
    );
}
