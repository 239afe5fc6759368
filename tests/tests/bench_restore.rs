//! Restore benchmark (ignored; numbers go to BENCHMARKS.md):
//!
//! `REDIS_STEWARD_BIN=$PWD/target/release/redis-steward cargo test -p steward-testbed --test
//! bench_restore -- --ignored --nocapture --test-threads=1` (`BENCH_MB` sets the dataset size,
//! default 1024, `BENCH_ROUNDS` the rounds, default 3; a debug agent decrypts at a few MB/s,
//! so use a release one).
//!
//! `restore_of_a_large_dataset_next_to_a_local_load`: one node backs up a dataset to a local
//! folder; the same objects are copied to an S3 server (moto). Reported: `redis-steward restore` from each, then the time until a redis-server on
//! the result answers, next to a redis-server loading the node's own AOF directory copied
//! locally (the limit) — and, for the replacement choice in ARCHITECTURE.md, a replica's full
//! sync of the same data from a live primary.
//!
//! `restore_of_a_chain_of_many_segments`: a writer runs until the chain holds `BENCH_SEGMENTS`
//! WAL segments (default 1000, one per 100 ms); reported: the restore's time from the folder,
//! from the S3 server, and from the S3 server behind a proxy that delays each answer by
//! `BENCH_LATENCY_MS` (default 20, a store across a network: each object costs a round trip).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steward_testbed::backups::*;
use steward_testbed::node::{env_or, free_port, run_cli, wait_for};

/// Start a plain redis-server on `dir` and return it with the time until PING answered.
fn serve_and_time(dir: &Path) -> (Child, u16, Duration) {
    let port = free_port();
    let t = Instant::now();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--dir"])
        .arg(dir)
        .args(["--appendonly", "yes", "--save", "", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let up = wait_for(Duration::from_secs(600), Duration::from_millis(10), || {
        (redis(port, &["PING"]) == "PONG").then_some(())
    });
    assert!(up.is_some(), "redis did not load {}", dir.display());
    (child, port, t.elapsed())
}

fn redis(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn restore_into(config: &Path, dir: &Path) -> Duration {
    let t = Instant::now();
    let out = run_cli(&[
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--target",
        dir.to_str().unwrap(),
    ]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    took
}

/// The temporary directory, or its path kept for good when BENCH_KEEP is set.
fn scopeguard_keep(tmp: tempfile::TempDir) -> KeptDir {
    match std::env::var_os("BENCH_KEEP") {
        Some(_) => KeptDir::Kept(tmp.keep()),
        None => KeptDir::Temp(tmp),
    }
}

enum KeptDir {
    Temp(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl KeptDir {
    fn path(&self) -> &Path {
        match self {
            KeptDir::Temp(t) => t.path(),
            KeptDir::Kept(p) => p,
        }
    }
}

/// A new data directory `to` holding a copy of `data_dir`'s AOF directory, synced to disk.
fn copy_aof(data_dir: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(data_dir.join("appendonlydir"))
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let _ = Command::new("sync").status();
}

/// The same objects as `bucket` on an S3 server (moto), under the same names, and a copy of
/// `config` that reads them from there (written into `dir`).
fn copy_to_s3(
    bucket: &Path,
    config: &Path,
    dir: &Path,
) -> (steward_testbed::s3::MotoServer, std::path::PathBuf) {
    let moto = steward_testbed::s3::MotoServer::start().unwrap();
    moto.create_bucket("bench").unwrap();
    let options = moto.options();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let folder = redis_steward::store::Store::open(
            &format!("file://{}", bucket.display()),
            &Default::default(),
        )
        .unwrap();
        let s3 = redis_steward::store::Store::open("s3://bench/ds", &options).unwrap();
        for o in folder.list("backup/").await.unwrap() {
            let body = folder.get(&o.path).await.unwrap().unwrap();
            s3.put(&o.path, body).await.unwrap();
        }
    });
    let s3_config = dir.join("s3.toml");
    let mut body = std::fs::read_to_string(config).unwrap().replace(
        &format!("url = \"file://{}\"", bucket.display()),
        "url = \"s3://bench/ds\"",
    );
    body += "\n[backup.options]\n";
    for (k, v) in &options {
        body += &format!("{k} = \"{v}\"\n");
    }
    std::fs::write(&s3_config, body).unwrap();
    (moto, s3_config)
}

/// The middle value of a benchmark's rounds.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Kill a redis-server started by [`serve_and_time`] with its whole process group: killing
/// redis alone leaves a running AOF rewrite (a forked child) behind, loading the machine for
/// the next round, and SIGTERM is refused while redis writes its first AOF after a sync.
fn kill(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", c.id())])
        .status();
    let _ = c.wait();
}

#[test]
#[ignore = "benchmark: run by hand, see the module doc"]
fn restore_of_a_large_dataset_next_to_a_local_load() {
    let mb: usize = env_or("BENCH_MB", 1024);
    let tmp = tempfile::tempdir().unwrap();
    // BENCH_KEEP=1 keeps the bucket and config for profiling the restore by hand.
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("keeping {}", tmp.path().display());
    }
    let tmp = scopeguard_keep(tmp);
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let agent = agent_with_backups(&bucket, &key);
    load_dataset(&agent, mb);
    let since = unix_ms();
    assert_success(&cli(&agent, &["backup", "now"]));
    wait_snapshot(&agent, since);
    wait_wal(&agent);
    agent.stop().unwrap();
    let config = tmp.path().join("folder.toml");
    std::fs::copy(&agent.config_path, &config).unwrap();

    let (_moto, s3_config) = copy_to_s3(&bucket, &config, tmp.path());

    // Rounds, interleaved so that a busy moment hits every kind alike; medians reported.
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let (mut limits, mut folder, mut s3) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // The limit: redis loading the node's own AOF directory from local disk.
        let local = tmp.path().join(format!("local-{round}"));
        copy_aof(&agent.data_dir(), &local);
        let (c, _, limit) = serve_and_time(&local);
        kill(c);
        std::fs::remove_dir_all(&local).unwrap();
        limits.push(limit);

        for (cfg, out) in [(&config, &mut folder), (&s3_config, &mut s3)] {
            let dir = tmp.path().join(format!("restored-{round}"));
            let restore = restore_into(cfg, &dir);
            let (c, _, load) = serve_and_time(&dir);
            kill(c);
            std::fs::remove_dir_all(&dir).unwrap();
            eprintln!(
                "round {round}: {}: restore {:.2} s, load {:.2} s (limit {:.2} s)",
                cfg.file_name().unwrap().to_string_lossy(),
                restore.as_secs_f64(),
                load.as_secs_f64(),
                limit.as_secs_f64()
            );
            out.push((restore, load));
        }
    }

    // A replica's full sync of the same data from a live primary.
    let local = tmp.path().join("primary");
    copy_aof(&agent.data_dir(), &local);
    let (primary, primary_port, _) = serve_and_time(&local);
    let replica_dir = tempfile::tempdir().unwrap();
    let replica_port = free_port();
    let t = Instant::now();
    let replica = Command::new("redis-server")
        .args(["--port", &replica_port.to_string(), "--dir"])
        .arg(replica_dir.path())
        .args(["--appendonly", "yes", "--save", "", "--bind", "127.0.0.1"])
        .args(["--replicaof", "127.0.0.1", &primary_port.to_string()])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let synced = wait_for(Duration::from_secs(600), Duration::from_millis(20), || {
        let info = redis(replica_port, &["INFO", "replication"]);
        (info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1"))
            .then_some(())
    });
    assert!(synced.is_some(), "the replica did not sync");
    let full_sync = t.elapsed();
    kill(replica);
    kill(primary);

    let limit = median(limits);
    let (folder_restore, folder_total) = (
        median(folder.iter().map(|x| x.0).collect()),
        median(folder.iter().map(|x| x.0 + x.1).collect()),
    );
    let (s3_restore, s3_total) = (
        median(s3.iter().map(|x| x.0).collect()),
        median(s3.iter().map(|x| x.0 + x.1).collect()),
    );
    eprintln!(
        "RESULT restore of {mb} MiB until redis answers (median of {rounds}): local folder {:.1} s \
         (restore {:.1} s) = {:.2}x the limit; S3 server {:.1} s (restore {:.1} s) = {:.2}x; \
         limit (redis loading its own AOF from local disk) {:.1} s; a replica's full sync of \
         the same data from a live primary {:.1} s",
        folder_total.as_secs_f64(),
        folder_restore.as_secs_f64(),
        folder_total.as_secs_f64() / limit.as_secs_f64(),
        s3_total.as_secs_f64(),
        s3_restore.as_secs_f64(),
        s3_total.as_secs_f64() / limit.as_secs_f64(),
        limit.as_secs_f64(),
        full_sync.as_secs_f64(),
    );
}

#[test]
#[ignore = "benchmark: run by hand, see the module doc"]
fn restore_of_a_chain_of_many_segments() {
    let segments: usize = env_or("BENCH_SEGMENTS", 1000);
    let tmp = tempfile::tempdir().unwrap();
    let (bucket, key) = (tmp.path().join("bucket"), tmp.path().join("backup.key"));
    write_key(&key);
    let agent = agent_with_backups_extra(&bucket, &key, "wal_interval_ms = 100\n");
    wait_snapshot(&agent, 0);
    let writer = TimedWriter::start(node_client(&agent), "w");
    let count = || {
        objects(&bucket)
            .iter()
            .filter(|p| p.to_string_lossy().contains("/wal/"))
            .count()
    };
    let bound = Duration::from_secs(60 + segments as u64 / 2);
    let enough = wait_for(bound, Duration::from_secs(1), || {
        (count() >= segments).then_some(())
    });
    let writes = writer.finish();
    assert!(enough.is_some(), "only {} segments in {bound:?}", count());
    wait_wal(&agent);
    agent.stop().unwrap();
    let (n, stored) = (
        count(),
        objects(&bucket)
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum::<u64>(),
    );
    let config = tmp.path().join("folder.toml");
    std::fs::copy(&agent.config_path, &config).unwrap();
    let (moto, s3_config) = copy_to_s3(&bucket, &config, tmp.path());
    // The same server as if across a network: each answer held BENCH_LATENCY_MS.
    let latency_ms: u64 = env_or("BENCH_LATENCY_MS", 20);
    let proxy = steward_testbed::latency_proxy::LatencyProxy::start(
        ([127, 0, 0, 1], moto.port).into(),
        Duration::from_millis(latency_ms),
    )
    .unwrap();
    let far_config = tmp.path().join("s3-far.toml");
    let body = std::fs::read_to_string(&s3_config).unwrap().replace(
        &format!("127.0.0.1:{}", moto.port),
        &format!("127.0.0.1:{}", proxy.port),
    );
    std::fs::write(&far_config, body).unwrap();

    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let (mut folder, mut s3, mut far) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for (cfg, out) in [
            (&config, &mut folder),
            (&s3_config, &mut s3),
            (&far_config, &mut far),
        ] {
            let dir = tmp.path().join(format!("restored-{round}"));
            out.push(restore_into(cfg, &dir));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!(
        "RESULT restore of a chain of {n} segments ({} writes, {:.0} KiB stored; median of \
         {rounds}): local folder {:.2} s, S3 server {:.2} s, S3 server {latency_ms} ms away \
         {:.2} s",
        writes.len(),
        stored as f64 / 1024.0,
        median(folder).as_secs_f64(),
        median(s3).as_secs_f64(),
        median(far).as_secs_f64(),
    );
}
