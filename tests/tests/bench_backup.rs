//! Backup benchmarks (ignored; numbers go to BENCHMARKS.md):
//!
//! `cargo test -p steward-testbed --test bench_backup -- --ignored --nocapture --test-threads=1`
//! (`BENCH_MB` sets the dataset size, default 1024; `REDIS_STEWARD_BIN` a release agent).
//!
//! A single node with backups to a local folder: load the dataset through redis-cli --pipe
//! over TLS, then `backup now`; report the snapshot's upload speed (from the agent's log), the
//! whole `backup now` (AOF rewrite included), a plain copy of the same base file, the agent's
//! peak RSS during it, and its CPU use while idle.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use steward_testbed::node::{run_cli, wait_for, Agent, NodeSpec};

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
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

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_size(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[test]
#[ignore]
fn snapshot_of_a_large_dataset_to_the_local_folder() {
    let mb: usize = std::env::var("BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    std::fs::write(&key, rand::random::<[u8; 32]>()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut spec = NodeSpec::new("node-1");
    spec.memory_limit_mb = Some(8192);
    spec.extra = format!(
        "\n[backup]\nurl = \"file://{}\"\nkey_file = \"{}\"\n",
        bucket.display(),
        key.display()
    );
    let agent = Agent::prepare(spec).unwrap();
    agent.start_healthy().unwrap();
    let pid = agent.pid().unwrap();
    // The first chain (empty) is uploaded at start.
    wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        snapshot_line(&agent.log())
    })
    .expect("first snapshot");

    let t = Instant::now();
    steward_testbed::backups::load_dataset(&agent, mb);
    eprintln!("loaded {mb} MiB in {:.1} s", t.elapsed().as_secs_f64());

    // Idle CPU (the WAL of the load shipped first).
    std::thread::sleep(Duration::from_secs(5));
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let ticks_per_s = 100.0;
    let idle_cpu = (cpu_ticks(pid) - c0) as f64 / ticks_per_s / t0.elapsed().as_secs_f64();

    let config = agent.config_path.to_string_lossy().to_string();
    let t = Instant::now();
    let out = run_cli(&["backup", "now", "--config", &config]);
    let total = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (bytes, ms) = snapshot_line(&agent.log()).unwrap();
    let hwm_kb = proc_field(pid, "status", "VmHWM:").unwrap();
    let sealed = dir_size(&bucket);

    // The same base file, plainly copied.
    let base = std::fs::read_dir(agent.data_dir().join("appendonlydir"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".base.rdb"))
        .unwrap();
    let _ = Command::new("sync").status();
    let t = Instant::now();
    std::fs::copy(&base, tmp.path().join("copy.rdb")).unwrap();
    let copy = t.elapsed();

    let mbps = |b: u64, d: Duration| b as f64 / 1e6 / d.as_secs_f64();
    eprintln!(
        "RESULT snapshot of {:.0} MB: upload (read + zstd + seal + write) {:.0} MB/s ({ms} ms); \
         backup now incl. AOF rewrite {:.1} s; plain copy of the base {:.0} MB/s; \
         bucket holds {:.0} MB sealed; agent peak RSS {} MiB; agent idle CPU {:.1} %",
        bytes as f64 / 1e6,
        mbps(bytes, Duration::from_millis(ms)),
        total.as_secs_f64(),
        mbps(bytes, copy),
        sealed as f64 / 1e6,
        hwm_kb / 1024,
        idle_cpu * 100.0
    );
    agent.stop().unwrap();
}
