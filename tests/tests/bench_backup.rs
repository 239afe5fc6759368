//! Backup benchmarks (ignored; numbers go to BENCHMARKS.md). Build the agent in release and
//! run the benchmark in release too (the sealing limit is measured in this process):
//!
//! ```text
//! cargo build --release -j1 -p redis-steward
//! REDIS_STEWARD_BIN=$PWD/target/release/redis-steward \
//!   cargo test --release -j1 -p steward-testbed --test bench_backup -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `snapshot_of_a_large_dataset_to_the_local_folder` / `…_to_the_s3_server`: one node with
//!   backups to a local folder or to moto's S3 server; `BENCH_MB` MiB (default 1024) loaded
//!   through `redis-cli --pipe` over TLS, then `backup now`. Reported: the snapshot upload's
//!   speed (from the agent's log: read base + zstd + seal + write), the whole `backup now`
//!   (AOF rewrite included), and beside it, on the very same base file: the limit (the bytes
//!   already in memory, pushed through `backup::format::Sealer` in one pass, no I/O), a plain
//!   copy of the file, and for S3 the same bytes uploaded unsealed through the store (the
//!   server's own limit); the agent's peak RSS and CPU.
//! - `wal_shipping_under_write_load`: `redis-benchmark` at full speed (`-t set,lpush -d 100
//!   -P 16`, `BENCH_N` requests per test, default 1,000,000) against a node with backups on
//!   and one without, alternating, `ROUNDS` times (default 3); the backup lag sampled every
//!   second; medians of the throughput.

use redis_steward::backup::format::Sealer;
use redis_steward::backup::keys::KeyRing;
use redis_steward::store::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use steward_testbed::backups::{load_dataset, write_key};
use steward_testbed::node::{env_or, run_cli, wait_for, Agent, NodeSpec, PASSWORD};
use steward_testbed::s3::MotoServer;

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The machine's load averages (1, 5, 15 min), as `uptime` prints them.
fn load_avg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// CPU seconds this process has used, all threads.
fn process_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The `[backup]` section for `url` with `options`.
fn backup_toml(url: &str, key: &Path, options: &BTreeMap<String, String>) -> String {
    let mut t = format!(
        "\n[backup]\nurl = \"{url}\"\nkey_file = \"{}\"\n",
        key.display()
    );
    if !options.is_empty() {
        t += "\n[backup.options]\n";
        for (k, v) in options {
            t += &format!("{k} = \"{v}\"\n");
        }
    }
    t
}

/// Wait until redis rewrites nothing and the shipper has nothing to do, for 3 s in a row.
fn settle(agent: &Agent) {
    let mut quiet_since: Option<Instant> = None;
    let settled = wait_for(Duration::from_secs(600), Duration::from_millis(500), || {
        let b = agent.status()?["backup"].clone();
        let info = agent.cmd(&["INFO", "persistence"]);
        // Status is reported between uploads: a base being uploaded shows in the log as a
        // chain started and not yet uploaded.
        let log = agent.log();
        let uploading = log.matches("backup: new chain").count()
            > log.matches("backup: snapshot uploaded").count();
        let quiet = !uploading
            && b["lag_bytes"] == 0
            && b["state"] == "shipping"
            && info.contains("aof_rewrite_in_progress:0")
            && info.contains("aof_rewrite_scheduled:0");
        if !quiet {
            quiet_since = None;
            return None;
        }
        let since = *quiet_since.get_or_insert_with(Instant::now);
        (since.elapsed() >= Duration::from_secs(3)).then_some(())
    });
    assert!(settled.is_some(), "backups did not settle: {}", agent.log());
}

fn snapshot_line(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rfind(|l| l.contains("backup: snapshot uploaded"))?;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    Some((field("bytes=")?, field("ms=")?))
}

/// The agent's base file (the newest `*.base.rdb` in its AOF directory).
fn base_file(agent: &Agent) -> PathBuf {
    let dir = agent.data_dir().join("appendonlydir");
    let manifest = std::fs::read_to_string(dir.join("appendonly.aof.manifest")).unwrap();
    let name = manifest
        .lines()
        .find(|l| l.ends_with("type b"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a base in the manifest")
        .to_string();
    dir.join(name)
}

/// The limit: `data` (already in memory) through the sealer the agent uses, in 1 MiB pieces
/// as the agent reads them, one pass, output dropped as it comes (no I/O); `workers` zstd
/// threads (0: all on this thread). Returns the wall time, the CPU time of this process, and
/// the sealed size.
fn seal_limit(data: &[u8], keys: &KeyRing, level: i32, workers: u32) -> (Duration, f64, u64) {
    let cpu = process_cpu_secs();
    let t = Instant::now();
    let mut sealer = Sealer::new("backup/bench/base-000001.rsb", keys, level)
        .unwrap()
        .with_workers(workers)
        .unwrap();
    let mut sealed = 0u64;
    for piece in data.chunks(1 << 20) {
        for b in sealer.push(piece).unwrap() {
            sealed += b.len() as u64;
        }
    }
    let (rest, stats) = sealer.finish().unwrap();
    sealed += rest.iter().map(|b| b.len() as u64).sum::<u64>();
    assert_eq!(stats.sealed_len, sealed);
    (t.elapsed(), process_cpu_secs() - cpu, sealed)
}

/// Upload `path` unsealed, in 1 MiB pieces, through the store's multipart upload: what the
/// store itself can take.
fn raw_upload(store: &Store, path: &Path) -> Duration {
    let data = std::fs::read(path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = Instant::now();
        let mut up = store.upload("bench/raw-copy").await.unwrap();
        for piece in data.chunks(1 << 20) {
            up.write(bytes::Bytes::copy_from_slice(piece))
                .await
                .unwrap();
        }
        up.finish().await.unwrap();
        let d = t.elapsed();
        store.delete("bench/raw-copy").await.unwrap();
        d
    })
}

fn snapshot_bench(target: &str, url: &str, options: BTreeMap<String, String>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mb: usize = env_or("BENCH_MB", 1024);
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("backup.key");
    write_key(&key);
    let mut spec = NodeSpec::new("node-1");
    spec.memory_limit_mb = Some(8192);
    spec.extra = backup_toml(url, &key, &options);
    let agent = Agent::prepare(spec).unwrap();
    agent.start_healthy().unwrap();
    let pid = agent.pid().unwrap();
    // The first chain (empty) is uploaded at start.
    wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        snapshot_line(&agent.log())
    })
    .expect("first snapshot");

    let t = Instant::now();
    load_dataset(&agent, mb);
    eprintln!("loaded {mb} MiB in {:.1} s", t.elapsed().as_secs_f64());

    // Idle CPU, once the WAL of the load is shipped and the AOF rewrite redis starts by
    // itself after such a load (its AOF more than doubled) is done and uploaded.
    settle(&agent);
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64();

    let config = agent.config_path.to_string_lossy().to_string();
    let hwm_before_kb = proc_field(pid, "status", "VmHWM:").unwrap();
    // Reset the peak RSS (proc(5), clear_refs): what follows is the snapshot's own peak.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let load_before = load_avg();
    let (c0, t) = (cpu_secs(pid), Instant::now());
    let out = run_cli(&["backup", "now", "--config", &config]);
    let total = t.elapsed();
    let snapshot_cpu = cpu_secs(pid) - c0;
    let load_after = load_avg();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (bytes, ms) = snapshot_line(&agent.log()).unwrap();
    let upload = Duration::from_millis(ms);
    let hwm_kb = proc_field(pid, "status", "VmHWM:").unwrap();

    // The same base file: sealed in memory (the limit), copied, uploaded unsealed.
    let base = base_file(&agent);
    let data = std::fs::read(&base).unwrap();
    assert_eq!(
        data.len() as u64,
        bytes,
        "the base changed since its upload"
    );
    let keys = KeyRing::load(&key, &[]).unwrap();
    let (seal_wall, seal_cpu, sealed) = seal_limit(&data, &keys, 1, 0);
    // zstd's own workers, one per core (the agent does not use them; BENCHMARKS.md says why).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (mt_wall, _, _) = seal_limit(&data, &keys, 1, workers);
    drop(data);
    let _ = Command::new("sync").status();
    let t = Instant::now();
    std::fs::copy(&base, tmp.path().join("copy.rdb")).unwrap();
    let copy = t.elapsed();
    let store = Store::open(url, &options)
        .unwrap()
        .with_timeout(Duration::from_secs(120));
    let raw = (target == "s3").then(|| raw_upload(&store, &base));

    let limit = mbps(bytes, seal_wall);
    let speed = mbps(bytes, upload);
    eprintln!(
        "RESULT {target}: base of {:.0} MB (sealed {:.0} MB); snapshot upload (read + zstd + \
         seal + write) {speed:.0} MB/s ({ms} ms, agent CPU {snapshot_cpu:.1} s over the whole \
         backup now) = {:.0} % of the limit; limit (same bytes in memory, Sealer, one pass, \
         no I/O) {limit:.0} MB/s ({:.0} MB per CPU-second), with {workers} zstd \
         workers {:.0} MB/s; plain copy of the base {:.0} MB/s; {}backup now incl. AOF \
         rewrite {:.1} s; agent peak RSS during backup now {} MiB (before it, over the load, \
         WAL shipping and redis's own rewrite: {} MiB); agent idle CPU {:.1} %; load average \
         before {load_before}, after {load_after}",
        bytes as f64 / 1e6,
        sealed as f64 / 1e6,
        speed / limit * 100.0,
        bytes as f64 / 1e6 / seal_cpu,
        mbps(bytes, mt_wall),
        mbps(bytes, copy),
        raw.map_or(String::new(), |d| format!(
            "unsealed upload of the base through the store {:.0} MB/s; ",
            mbps(bytes, d)
        )),
        total.as_secs_f64(),
        hwm_kb / 1024,
        hwm_before_kb / 1024,
        idle_cpu * 100.0
    );
    agent.stop().unwrap();
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn snapshot_of_a_large_dataset_to_the_local_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("bucket").display());
    snapshot_bench("local folder", &url, BTreeMap::new());
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn snapshot_of_a_large_dataset_to_the_s3_server() {
    let moto = MotoServer::start().unwrap();
    moto.create_bucket("backups").unwrap();
    snapshot_bench("s3", "s3://backups/ds-1", moto.options());
}

/// Requests per second of each test in `redis-benchmark --csv` output.
fn parse_csv(out: &str) -> BTreeMap<String, f64> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(|s| s.trim_matches('"')).collect();
            Some((f.first()?.to_string(), f.get(1)?.parse().ok()?))
        })
        .collect()
}

/// `redis-benchmark` at full speed against `agent`: requests per second by test. A failed
/// run (it happened once: redis-benchmark exited non-zero under the shared load) is reported
/// with what it printed and run again, once.
fn redis_benchmark(agent: &Agent, n: u64) -> BTreeMap<String, f64> {
    for attempt in 0..2 {
        let out = Command::new("redis-benchmark")
            .args(["--tls", "--cacert"])
            .arg(agent.ca_file())
            .args(["-h", &agent.spec.bind, "-p", &agent.spec.port.to_string()])
            .args(["-a", PASSWORD, "-t", "set,lpush", "-d", "100", "-P", "16"])
            .args(["-r", "1000000", "-n", &n.to_string(), "--csv"])
            .output()
            .expect("redis-benchmark (apt-get install redis-tools)");
        let r = parse_csv(&String::from_utf8_lossy(&out.stdout));
        if out.status.success() && r.len() == 2 {
            return r;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        eprintln!(
            "redis-benchmark failed ({}, attempt {attempt}): {tail:?}",
            out.status
        );
    }
    panic!("redis-benchmark failed twice");
}

/// WAL bytes redis has written that the agent has not uploaded: the current incremental
/// file's size minus the shipper's offset in it (the whole file while the shipper is still
/// in an older one, e.g. right after a rewrite). Measured here rather than taken from the
/// agent's `lag_bytes`, which is computed once per shipping round.
fn file_lag(agent: &Agent, status: &serde_json::Value) -> Option<u64> {
    let dir = agent.data_dir().join("appendonlydir");
    let manifest = std::fs::read_to_string(dir.join("appendonly.aof.manifest")).ok()?;
    let (file, seq) = manifest
        .lines()
        .filter(|l| l.ends_with("type i"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[3].parse::<u64>().unwrap_or(0))
        })
        .next_back()?;
    let size = std::fs::metadata(dir.join(file)).ok()?.len();
    let b = &status["backup"];
    Some(if b["wal_incr_seq"].as_u64() == Some(seq) {
        size.saturating_sub(b["wal_offset"].as_u64().unwrap_or(0))
    } else {
        size
    })
}

#[derive(Default, Debug, Clone, Copy)]
struct LagSample {
    reported_bytes: u64,
    reported_seconds: u64,
    file_bytes: u64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn wal_shipping_under_write_load() {
    let rounds: usize = env_or("ROUNDS", 3);
    let n: u64 = env_or("BENCH_N", 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("backup.key");
    write_key(&key);
    let url = format!("file://{}", tmp.path().join("bucket").display());
    let mut spec = NodeSpec::new("node-1");
    spec.memory_limit_mb = Some(8192);
    spec.extra = backup_toml(&url, &key, &BTreeMap::new());
    let on = Agent::prepare(spec).unwrap();
    let mut spec = NodeSpec::new("node-1");
    spec.memory_limit_mb = Some(8192);
    let off = Agent::prepare(spec).unwrap();
    on.start_healthy().unwrap();
    off.start_healthy().unwrap();
    let shipping = |a: &Agent| {
        wait_for(Duration::from_secs(600), Duration::from_millis(200), || {
            let s = a.status()?;
            let b = &s["backup"];
            (b["state"] == "shipping" && b["lag_bytes"] == 0 && file_lag(a, &s) == Some(0))
                .then_some(())
        })
        .expect("backups did not catch up");
    };
    shipping(&on);

    let mut results: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    let mut max = LagSample::default();
    let mut catch_up = Vec::new();
    let mut agent_cpu_share: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let load_before = load_avg();
    for round in 0..rounds {
        // Alternate which side goes first.
        let order: [(&str, &Agent); 2] = if round % 2 == 0 {
            [("on", &on), ("off", &off)]
        } else {
            [("off", &off), ("on", &on)]
        };
        for (label, agent) in order {
            let stop = AtomicBool::new(false);
            let (agent_pid, redis_pid) = (agent.pid().unwrap(), agent.redis_pid().unwrap());
            let (agent_cpu, redis_cpu) = (cpu_secs(agent_pid), cpu_secs(redis_pid));
            let started = Instant::now();
            let (r, worst) = std::thread::scope(|scope| {
                // Sample the lag every second while the benchmark runs.
                let sampler = (label == "on").then(|| {
                    scope.spawn(|| {
                        let mut worst = LagSample::default();
                        while !stop.load(Ordering::Relaxed) {
                            if let Some(s) = on.status() {
                                let b = &s["backup"];
                                let bytes = b["lag_bytes"].as_u64().unwrap_or(0);
                                let secs = b["lag_seconds"].as_u64().unwrap_or(0);
                                worst.reported_bytes = worst.reported_bytes.max(bytes);
                                worst.reported_seconds = worst.reported_seconds.max(secs);
                                let file = file_lag(&on, &s).unwrap_or(0);
                                worst.file_bytes = worst.file_bytes.max(file);
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        worst
                    })
                });
                let r = redis_benchmark(agent, n);
                let worst = sampler.map(|h| {
                    let ended = Instant::now();
                    shipping(&on);
                    catch_up.push(ended.elapsed().as_secs_f64());
                    stop.store(true, Ordering::Relaxed);
                    h.join().unwrap()
                });
                (r, worst)
            });
            if let Some(w) = worst {
                max.reported_bytes = max.reported_bytes.max(w.reported_bytes);
                max.reported_seconds = max.reported_seconds.max(w.reported_seconds);
                max.file_bytes = max.file_bytes.max(w.file_bytes);
            }
            // CPU over the run and, with backups, until they caught up.
            let wall = started.elapsed().as_secs_f64();
            let agent_cpu = cpu_secs(agent_pid) - agent_cpu;
            let redis_cpu = cpu_secs(redis_pid) - redis_cpu;
            eprintln!(
                "round {round} backups {label}: {r:?}; {wall:.1} s, agent CPU {agent_cpu:.1} s, \
                 redis CPU {redis_cpu:.1} s"
            );
            agent_cpu_share
                .entry(label)
                .or_default()
                .push(agent_cpu / wall * 100.0);
            for (test, rps) in r {
                results.entry((label, test)).or_default().push(rps);
            }
        }
    }
    let load_after = load_avg();
    let uploads = on.status().unwrap()["backup"]["uploads"].clone();
    for (label, shares) in &mut agent_cpu_share {
        eprintln!(
            "RESULT agent CPU, backups {label}: median {:.1} % of a core over a run",
            median(shares)
        );
    }
    for test in ["SET", "LPUSH"] {
        let m_on = median(results.get_mut(&("on", test.to_string())).unwrap());
        let m_off = median(results.get_mut(&("off", test.to_string())).unwrap());
        eprintln!(
            "RESULT {test}: backups on {m_on:.0} req/s, off {m_off:.0} req/s (medians of \
             {rounds}), on/off = {:.1} %",
            m_on / m_off * 100.0
        );
    }
    eprintln!(
        "RESULT backup lag while loading, sampled every second: max reported {} bytes / {} s, \
         max measured from the AOF file {} bytes; catch-up after each run {catch_up:.1?} s; \
         {uploads} uploads; load average before {load_before}, after {load_after}",
        max.reported_bytes, max.reported_seconds, max.file_bytes
    );
    on.stop().unwrap();
    off.stop().unwrap();
}
