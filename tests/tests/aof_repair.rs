//! A full data disk must not leave redis unable to start: redis 7.0 answers a short AOF write
//! by truncating the file, but an incremental file opened by an AOF rewrite is not in append
//! mode, so the next write leaves a hole of NULs and redis then refuses to load the AOF, for
//! good. The nemesis campaign met this as a node that never came back after a disk-full fault
//! (see `node::aof_repair`). The agent mends the hole and loses nothing, whatever its length:
//! the short write's length is whatever was left of the file's last tmpfs page, so holes of 1
//! and 2 bytes (too short for a filler line; the long campaign met one) happen too.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use steward_testbed::backups::{present, restore_newest, wait_snapshot, wait_wal, write_key};
use steward_testbed::node::{fill_filesystem, wait_for, Agent, NodeSpec, Stopped, PASSWORD};

#[test]
fn a_short_write_on_a_full_disk_leaves_an_aof_redis_can_load_with_every_acknowledged_write() {
    let (_shared, bucket, key, a) = agent_on_a_small_disk();
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
    // The agent answers the end of the write error with an AOF rewrite, which would retire
    // the holed file before the crash this test is about: it is stopped until then.
    let stopped = stop_agent(&a);
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

    crash(&a, stopped);
    assert!(a.log().contains("repaired redis's AOF"), "{}", a.log());
    has_every_write(&a, &bucket, &key, &acked, "w");
}

/// The agent stopped (SIGSTOP) and the pid of its redis, read while the agent answers.
fn stop_agent(a: &Agent) -> (Stopped, u32) {
    let redis = a.redis_pid().unwrap();
    let mut stopped = Stopped::new();
    stopped.stop(a.pid().unwrap(), "redis-steward").unwrap();
    (stopped, redis)
}

/// A one-node store with backups (so the agent's start snapshot, an AOF rewrite, opens the
/// kind of incremental file the bug hits) on a 24 MiB data disk.
fn agent_on_a_small_disk() -> (tempfile::TempDir, PathBuf, PathBuf, Agent) {
    let shared = tempfile::tempdir().unwrap();
    let bucket = shared.path().join("bucket");
    let key = shared.path().join("backup.key");
    write_key(&key);
    let mut spec = NodeSpec::new("node-1");
    spec.extra = format!(
        "\n[backup]\nurl = \"file://{}\"\nkey_file = \"{}\"\nwal_interval_ms = 200\n",
        bucket.display(),
        key.display()
    );
    let mut a = Agent::prepare(spec).unwrap();
    a.use_small_data_disk(24).unwrap();
    a.start_healthy().unwrap();
    wait_snapshot(&a, 0);
    (shared, bucket, key, a)
}

/// SIGKILL of redis (then the agent, if stopped, resumes): redis must come back from its own
/// AOF, as after any crash or restart.
fn crash(a: &Agent, (stopped, old): (Stopped, u32)) {
    // SAFETY: SIGKILL of the redis-server this test's agent started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    drop(stopped);
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
}

/// Every write redis acknowledged (`acked`, keys `<prefix><n>`) is there, and in a restore of
/// the backups: WAL shipped before a repair holds the hole, shipped after the mended bytes.
fn has_every_write(a: &Agent, bucket: &Path, key: &Path, acked: &[u64], prefix: &str) {
    let found = present(acked, prefix, |args| a.cmd(args));
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
    wait_wal(a);
    let out = tempfile::tempdir().unwrap();
    let restored = restore_newest(bucket, key, out.path());
    let found = present(acked, prefix, |args| restored.cmd(args));
    assert_eq!(
        found.len(),
        acked.len(),
        "writes missing from the restored backup"
    );
}

/// The incremental file redis appends to now (the manifest's last `type i` line).
fn current_incr_file(a: &Agent) -> PathBuf {
    let dir = a.data_dir().join("appendonlydir");
    let manifest = std::fs::read_to_string(dir.join("appendonly.aof.manifest")).unwrap();
    let name = manifest
        .lines()
        .rev()
        .filter(|l| l.ends_with("type i"))
        .find_map(|l| l.split_whitespace().nth(1))
        .expect("an incremental file in the manifest")
        .to_string();
    dir.join(name)
}

/// The file's size once redis has stopped writing to it (no change for 300 ms).
fn settled_len(f: &Path) -> u64 {
    let mut last = std::fs::metadata(f).unwrap().len();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(300));
        let now = std::fs::metadata(f).unwrap().len();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("{} kept growing", f.display());
}

const PAGE: u64 = 4096;

/// Writes `h<n>`, one connection each, keeping the numbers redis acknowledged.
#[derive(Default)]
struct Writes {
    n: u64,
    acked: Vec<u64>,
}

impl Writes {
    fn set(&mut self, a: &Agent, value: &str) -> bool {
        self.n += 1;
        let ok = a.cmd(&["SET", &format!("h{}", self.n), value]) == "OK";
        if ok {
            self.acked.push(self.n);
        }
        ok
    }
}

/// One disk-full episode that leaves a hole of exactly `hole` bytes in the current
/// incremental file: the file's end is brought to `hole` bytes short of a tmpfs page, so that
/// once the disk is full a write crossing the page is short by exactly that (redis writes what
/// fits in the page it has). With `stop`, the agent is stopped before the disk frees (and
/// returned stopped) so that nothing retires the holed file.
fn short_write_episode(a: &Agent, w: &mut Writes, hole: u64, stop: bool) -> Option<(Stopped, u32)> {
    // A `#TS:` line (a new second) can spoil a try, and a rewrite (the agent's snapshot after
    // a restart) switches files: try again.
    let mut f = current_incr_file(a);
    let mut len = settled_len(&f);
    for _ in 0..40 {
        if (len + hole).is_multiple_of(PAGE) && f == current_incr_file(a) {
            break;
        }
        f = current_incr_file(a);
        len = settled_len(&f);
        if (len + hole).is_multiple_of(PAGE) {
            continue;
        }
        let mut pad = (PAGE - hole - len % PAGE) % PAGE;
        // `SET hN <v>` costs 25 bytes + the key's and the length's digits; too little room
        // for one: go round a whole page more.
        if pad < 64 {
            pad += PAGE;
        }
        let key_digits = (w.n + 1).to_string().len() as u64;
        let mut v = pad - 25 - key_digits;
        v -= v.to_string().len() as u64;
        assert!(w.set(a, &"p".repeat(v as usize)));
        len = settled_len(&f);
    }
    assert_eq!((len + hole) % PAGE, 0, "could not place the file end");
    let filled = fill_filesystem(&a.data_dir()).unwrap();
    // Acknowledged (redis answers before it sees the AOF error), written short.
    assert!(
        w.set(a, &"x".repeat(300)),
        "the write that crosses the page"
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(!w.set(a, "refused"), "redis took writes on a full disk");
    let stopped = stop.then(|| stop_agent(a));
    filled.release();
    let back = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        w.set(a, "after").then_some(())
    });
    assert!(back.is_some(), "redis refused writes after the disk freed");
    let data = std::fs::read(&f).unwrap();
    let at = len as usize;
    assert_eq!(
        &data[at..at + hole as usize],
        &vec![0u8; hole as usize][..],
        "no {hole}-byte hole where the short write was"
    );
    assert_ne!(
        data[at + hole as usize],
        0,
        "a hole longer than {hole} bytes"
    );
    stopped
}

#[test]
fn holes_of_one_and_two_bytes_are_mended_too() {
    let (_shared, bucket, key, a) = agent_on_a_small_disk();
    let mut w = Writes::default();
    assert!(w.set(&a, "first"));
    for hole in [1, 2] {
        let repairs = a.log().matches("repaired redis's AOF").count();
        let stopped = short_write_episode(&a, &mut w, hole, true).unwrap();
        crash(&a, stopped);
        assert_eq!(
            a.log().matches("repaired redis's AOF").count(),
            repairs + 1,
            "{}",
            a.log()
        );
    }
    has_every_write(&a, &bucket, &key, &w.acked, "h");
}

/// Redis 7.0 does not count a short write's hole into the length it keeps of its incremental
/// file, and truncates to that length after the next short write: a second full disk in the
/// same file cut that many bytes of acknowledged commands (the long nemesis campaign's node
/// that never came back). The agent has redis start a new file after each write error.
#[test]
fn a_second_full_disk_cuts_no_acknowledged_write() {
    let (_shared, bucket, key, a) = agent_on_a_small_disk();
    let mut w = Writes::default();
    assert!(w.set(&a, "first"));
    short_write_episode(&a, &mut w, 7, false);
    // The agent's answer, given a moment (not asserted: what counts is what survives).
    let _ = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        a.log()
            .contains("asked for an AOF rewrite, so that redis writes a new incremental file")
            .then_some(())
    });
    short_write_episode(&a, &mut w, 5, false);
    crash(&a, (Stopped::new(), a.redis_pid().unwrap()));
    has_every_write(&a, &bucket, &key, &w.acked, "h");
}
