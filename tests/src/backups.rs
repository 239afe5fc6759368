//! Helpers for backup and restore tests on one node: a node backing up to a local folder,
//! waits for its snapshot and WAL to reach the bucket, the CLI, and a plain redis-server
//! started on a restored data directory.

use crate::node::{free_port, run_cli, wait_for, Agent, NodeSpec};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn write_key(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let key: [u8; 32] = rand::random();
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A single node backing up to `bucket` with `key`.
pub fn agent_with_backups(bucket: &Path, key: &Path) -> Agent {
    agent_with_backups_extra(bucket, key, "")
}

/// As [`agent_with_backups`], with more `[backup]` settings (`wal_interval_ms` is 200 unless
/// `extra` sets it).
pub fn agent_with_backups_extra(bucket: &Path, key: &Path, extra: &str) -> Agent {
    let mut spec = NodeSpec::new("node-1");
    let interval = match extra.contains("wal_interval_ms") {
        true => "",
        false => "wal_interval_ms = 200\n",
    };
    spec.extra = format!(
        "\n[backup]\nurl = \"file://{}\"\nkey_file = \"{}\"\n{interval}{extra}",
        bucket.display(),
        key.display()
    );
    let agent = Agent::prepare(spec).unwrap();
    agent.start_healthy().unwrap();
    agent
}

pub fn backup_status(agent: &Agent) -> serde_json::Value {
    agent.status().unwrap()["backup"].clone()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Wait for a snapshot uploaded after `since` (unix ms) with no WAL waiting.
pub fn wait_snapshot(agent: &Agent, since: u64) {
    wait_backup(agent, |b| {
        b["last_snapshot_unix_ms"]
            .as_u64()
            .is_some_and(|t| t >= since)
            && b["lag_bytes"] == 0
    });
}

/// Wait until writes made before this call are uploaded: the shipper's WAL cursor reached the
/// end of redis's current incremental file once that has stopped growing (with `everysec`,
/// redis may hold acknowledged writes in its AOF buffer for up to a couple of seconds before
/// they reach the file).
pub fn wait_wal(agent: &Agent) {
    let dir = agent.data_dir().join("appendonlydir");
    let current = || {
        let manifest = std::fs::read_to_string(dir.join("appendonly.aof.manifest")).unwrap();
        let (file, seq) = manifest
            .lines()
            .filter(|l| l.ends_with("type i"))
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w[1].to_string(), w[3].parse::<u64>().unwrap())
            })
            .next_back()
            .unwrap();
        (seq, std::fs::metadata(dir.join(file)).unwrap().len())
    };
    let mut last = current();
    let mut stable_since = std::time::Instant::now();
    let settled = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        let now = current();
        if now != last {
            last = now;
            stable_since = std::time::Instant::now();
        }
        (stable_since.elapsed() >= Duration::from_millis(2500)).then_some(now)
    });
    let (seq, size) = settled.expect("redis's AOF kept growing");
    wait_backup(agent, |b| {
        b["wal_incr_seq"].as_u64() == Some(seq) && b["wal_offset"].as_u64() >= Some(size)
    });
}

pub fn wait_backup(agent: &Agent, done: impl Fn(&serde_json::Value) -> bool) {
    let ok = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        let b = backup_status(agent);
        (b["state"] == "shipping" && done(&b)).then_some(())
    });
    assert!(
        ok.is_some(),
        "backup did not catch up: {}\n{}",
        backup_status(agent),
        agent.log()
    );
}

/// The output must be a success; otherwise fail with what the command printed.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn cli(agent: &Agent, args: &[&str]) -> std::process::Output {
    let config = agent.config_path.to_string_lossy().to_string();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--config", &config]);
    run_cli(&a)
}

/// Rebuild the newest chain into `dir/appendonlydir` with the library, start a plain
/// redis-server on it and return a connection to it (the process is killed on drop).
pub struct Restored {
    pub child: std::process::Child,
    pub port: u16,
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Restored {
    pub fn cmd(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

pub fn restore_newest(bucket: &Path, key: &Path, dir: &Path) -> Restored {
    restore_newest_from(
        &format!("file://{}", bucket.display()),
        &Default::default(),
        key,
        dir,
    )
}

/// Rebuild the newest chain of the store at `url` into `dir/appendonlydir` with the library,
/// start a plain redis-server on it (killed on drop).
pub fn restore_newest_from(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
    key: &Path,
    dir: &Path,
) -> Restored {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = redis_steward::store::Store::open(url, options).unwrap();
        let keys = redis_steward::backup::keys::KeyRing::load(key, &[]).unwrap();
        redis_steward::backup::restore::restore(&store, &keys, None, dir, false, |_| {})
            .await
            .unwrap();
    });
    serve_restored(dir)
}

/// Start a plain redis-server (no TLS, loopback) on the data directory `dir` and wait until it
/// answers; killed on drop.
pub fn serve_restored(dir: &Path) -> Restored {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--dir"])
        .arg(dir)
        .args(["--appendonly", "yes", "--save", "", "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let r = Restored { child, port };
    let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        (r.cmd(&["PING"]) == "PONG").then_some(())
    });
    assert!(up.is_some(), "restored redis did not start");
    r
}

pub fn objects(bucket: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![bucket.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One write of a [`TimedWriter`]: `SET {prefix}{n} n`, with wall-clock times.
#[derive(Debug, Clone)]
pub struct TimedWrite {
    pub n: u64,
    pub sent_ms: u64,
    /// When redis answered OK.
    pub ok_ms: Option<u64>,
    /// When redis answered at all (OK or an error reply); None: no answer in time.
    pub reply_ms: Option<u64>,
    pub outcome: TimedOutcome,
}

/// How a [`TimedWrite`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimedOutcome {
    Ok,
    /// Redis answered with an error (`READONLY`, `MISCONF`, …): the connection stays.
    Refused(String),
    /// No answer within the timeout, or the connection failed: it is dropped and opened
    /// again (to the same node).
    NoReply(String),
}

/// A writer on one node (no discovery): one `SET` every 2 ms (or as paced by
/// [`TimedWriter::start_paced`]), each stamped with the wall clock when sent and when
/// answered, for point-in-time checks. Reconnects (to the same node) after a write that got
/// no answer. Bounded: stops by itself after 10 minutes.
pub struct TimedWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<TimedWrite>>>,
}

impl TimedWriter {
    pub fn start(client: redis::Client, prefix: &str) -> TimedWriter {
        TimedWriter::start_in(None, client, prefix)
    }

    /// Like [`TimedWriter::start`], from inside network namespace `netns` (a client host).
    pub fn start_in(netns: Option<String>, client: redis::Client, prefix: &str) -> TimedWriter {
        TimedWriter::start_paced(netns, client, prefix, Duration::from_millis(2))
    }

    /// Like [`TimedWriter::start_in`], with a pause of `every` before each write.
    pub fn start_paced(
        netns: Option<String>,
        client: redis::Client,
        prefix: &str,
        every: Duration,
    ) -> TimedWriter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let prefix = prefix.to_string();
        let run = move || write_loop(&client, &prefix, every, &flag);
        let handle = std::thread::spawn(move || match netns {
            Some(ns) => crate::netns::run_in_netns(&ns, run),
            None => run(),
        });
        TimedWriter {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Vec<TimedWrite> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

fn write_loop(
    client: &redis::Client,
    prefix: &str,
    every: Duration,
    flag: &std::sync::atomic::AtomicBool,
) -> Vec<TimedWrite> {
    use std::sync::atomic::Ordering::Relaxed;
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut conn: Option<redis::Connection> = None;
    let mut n = 0;
    while !flag.load(Relaxed) && started.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(every);
        if conn.is_none() {
            conn = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .ok();
            match &conn {
                Some(c) => {
                    let t = Some(Duration::from_millis(500));
                    let _ = c.set_read_timeout(t);
                    let _ = c.set_write_timeout(t);
                }
                None => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        n += 1;
        let sent_ms = unix_ms();
        let r: redis::RedisResult<String> = redis::cmd("SET")
            .arg(format!("{prefix}{n}"))
            .arg(n)
            .query(conn.as_mut().unwrap());
        let at = unix_ms();
        let outcome = match r {
            Ok(s) if s == "OK" => TimedOutcome::Ok,
            Ok(s) => TimedOutcome::Refused(s),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_unrecoverable_error() => {
                conn = None;
                TimedOutcome::NoReply(e.to_string())
            }
            Err(e) => TimedOutcome::Refused(e.to_string()),
        };
        out.push(TimedWrite {
            n,
            sent_ms,
            ok_ms: (outcome == TimedOutcome::Ok).then_some(at),
            reply_ms: (!matches!(outcome, TimedOutcome::NoReply(_))).then_some(at),
            outcome,
        });
    }
    out
}

impl Drop for TimedWriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TLS client for a single node's redis (customer password).
pub fn node_client(agent: &Agent) -> redis::Client {
    let addr = std::net::SocketAddr::new(agent.spec.bind.parse().unwrap(), agent.spec.port);
    tls_client(addr, &agent.ca_file())
}

/// A TLS client for the redis at `addr` (customer password, certificates from `ca`).
pub fn tls_client(addr: std::net::SocketAddr, ca: &Path) -> redis::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let target = crate::sentinel_client::ProbeTarget {
        name: addr.to_string(),
        netns: String::new(),
        addr,
        tls_ca: Some(ca.to_path_buf()),
        password: Some(crate::node::PASSWORD.to_string()),
    };
    crate::sentinel_client::data_node_client(&target).unwrap()
}

/// Which of the keys `{prefix}{n}` for `ns` a redis holds, by `MGET` through `cmd` (which
/// runs redis-cli with the arguments given and returns its output). The values must be plain
/// numbers, as the writers write them.
pub fn present(
    ns: &[u64],
    prefix: &str,
    cmd: impl Fn(&[&str]) -> String,
) -> std::collections::BTreeSet<u64> {
    let mut out = std::collections::BTreeSet::new();
    for chunk in ns.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("{prefix}{n}")).collect();
        // CSV: one line, NULL for a missing key (plain output drops trailing nils), so a probe
        // that got no answer (e.g. a timed-out redis-cli) is told apart from missing keys;
        // such a probe is retried a few times.
        let mut args = vec!["--csv", "MGET"];
        args.extend(keys.iter().map(String::as_str));
        let mut reply = String::new();
        for _ in 0..3 {
            reply = cmd(&args);
            if reply.trim().split(',').count() == chunk.len() {
                break;
            }
            eprintln!("MGET gave no full answer, retrying: {reply:?}");
        }
        let values: Vec<&str> = reply.trim().split(',').collect();
        assert_eq!(values.len(), chunk.len(), "MGET answered: {reply}");
        for (n, v) in chunk.iter().zip(values) {
            if v != "NULL" {
                out.insert(*n);
            }
        }
    }
    out
}

/// Load `mb` values of 1 MiB of half-compressible text through redis-cli --pipe (benchmarks).
pub fn load_dataset(agent: &Agent, mb: usize) {
    load_dataset_with(agent.redis_cli_command(Some(crate::node::PASSWORD)), mb)
}

/// [`load_dataset`] through a given redis-cli command (e.g. a cluster node's, in its
/// namespace).
pub fn load_dataset_with(mut redis_cli: std::process::Command, mb: usize) {
    use std::io::Write;
    let mut child = redis_cli
        .arg("--pipe")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut value = vec![0u8; 1 << 20];
    for i in 0..mb {
        for (j, b) in value.iter_mut().enumerate() {
            // Runs of a repeated byte and random hex: about what zstd sees in real RDBs.
            if (j / 64) % 2 == 0 {
                *b = b'a' + (i % 26) as u8;
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = b"0123456789abcdef"[(state & 15) as usize];
            }
        }
        let key = format!("blob:{i}");
        let header = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        );
        stdin.write_all(header.as_bytes()).unwrap();
        stdin.write_all(&value).unwrap();
        stdin.write_all(b"\r\n").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
