//! A full data disk must not leave redis unable to start: redis 7.0 answers a short AOF write
//! by truncating the file, but an incremental file opened by an AOF rewrite is not in append
//! mode, so the next write leaves a hole of NULs and redis then refuses to load the AOF, for
//! good. The nemesis campaign met this as a node that never came back after a disk-full fault
//! (see `node::aof_repair`). The agent mends the hole and loses nothing.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;
use steward_testbed::backups::{present, restore_newest, wait_snapshot, wait_wal, write_key};
use steward_testbed::node::{fill_filesystem, wait_for, Agent, NodeSpec, PASSWORD};

#[test]
fn a_short_write_on_a_full_disk_leaves_an_aof_redis_can_load_with_every_acknowledged_write() {
    let shared = tempfile::tempdir().unwrap();
    let bucket = shared.path().join("bucket");
    let key = shared.path().join("backup.key");
    write_key(&key);
    let mut spec = NodeSpec::new("node-1");
    // Backups make the agent take a snapshot (an AOF rewrite) at start: the incremental file
    // redis writes afterwards is the kind the bug hits.
    spec.extra = format!(
        "\n[backup]\nurl = \"file://{}\"\nkey_file = \"{}\"\nwal_interval_ms = 200\n",
        bucket.display(),
        key.display()
    );
    let mut a = Agent::prepare(spec).unwrap();
    a.use_small_data_disk(24).unwrap();
    a.start_healthy().unwrap();
    wait_snapshot(&a, 0);

    // A steady stream of writes through one connection; each reply says whether redis took
    // the write (OK) or refused it (MISCONF while the AOF cannot be written).
    let mut cli = a
        .redis_cli_command(Some(PASSWORD))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    let stdout = BufReader::new(cli.stdout.take().unwrap());
    const WRITES: u64 = 3_000;
    let writer = std::thread::spawn(move || {
        let value = "v".repeat(50);
        for n in 0..WRITES {
            if writeln!(stdin, "SET w{n} {value}").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let reader = std::thread::spawn(move || {
        stdout
            .lines()
            .take(WRITES as usize)
            .map(|l| l.unwrap_or_default() == "OK")
            .collect::<Vec<bool>>()
    });
    std::thread::sleep(Duration::from_millis(1_500));
    let filled = fill_filesystem(&a.data_dir()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    filled.release();
    writer.join().unwrap();
    let replies = reader.join().unwrap();
    let _ = cli.wait();
    let acked: Vec<u64> = (0..WRITES)
        .filter(|&n| replies.get(n as usize) == Some(&true))
        .collect();
    assert!(
        acked.len() < replies.len(),
        "redis refused no write while the disk was full: the test made no short write"
    );
    assert!(
        a.log()
            .contains("Short write while writing to the AOF file"),
        "the full disk did not cause a short AOF write (the bug's trigger); log:\n{}",
        a.log()
    );

    // Redis must come back from its own AOF (a crash, or any restart), with every write it
    // acknowledged.
    let old = a.redis_pid().unwrap();
    // SAFETY: SIGKILL of the redis-server this test's agent started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let back = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = a.status()?;
        let pid = s["redis"]["pid"].as_u64()?;
        (pid != u64::from(old) && a.cmd(&["PING"]) == "PONG").then_some(())
    });
    assert!(
        back.is_some(),
        "redis never came back after the disk-full episode; log:\n{}",
        a.log()
    );
    assert!(a.log().contains("repaired redis's AOF"), "{}", a.log());
    let found = present(&acked, "w", |args| a.cmd(args));
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !found.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );

    // The backups too: WAL shipped before the repair holds the hole, shipped after holds the
    // filler; a restore reads either and has every acknowledged write.
    wait_wal(&a);
    let out = tempfile::tempdir().unwrap();
    let restored = restore_newest(&bucket, &key, out.path());
    let found = present(&acked, "w", |args| restored.cmd(args));
    assert_eq!(
        found.len(),
        acked.len(),
        "writes missing from the restored backup"
    );
}
