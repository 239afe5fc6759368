//! The fence guard process (`redis-steward fence-guard`) against a real redis-server, driven
//! over its stdin/stdout the way the agent drives it — and then left alone, the way a stopped
//! agent leaves it: writes must close at the deadline with nobody's help.

use redis_steward::node::fence_guard::{monotonic_ns, GuardSpec, Reply, Request};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "admin";
const PASSWORD: &str = "guard-test-secret";

struct Redis {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&socket)
        .args([
            "--user",
            USER,
            "on",
            &format!(">{PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ])
        .args(["--user", "default", "on", "nopass", "~*", "&*", "+@all"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let r = Redis {
        child,
        socket,
        _dir: dir,
    };
    for _ in 0..200 {
        if UnixStream::connect(&r.socket).is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server did not start");
}

/// Whether redis takes a write within 300 ms (a paused write just waits).
fn takes_writes(socket: &Path) -> bool {
    let mut c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(n) => {
            assert_eq!(&buf[..n], b"+OK\r\n");
            true
        }
        Err(_) => false,
    }
}

struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guard {
    fn start(redis: &Redis, latency_ms: u64) -> Guard {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redis-steward"))
            .arg("fence-guard")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let spec = GuardSpec {
            socket: redis.socket.clone(),
            user: USER.into(),
            password: PASSWORD.into(),
            action_latency_ms: latency_ms,
        };
        writeln!(stdin, "{}", serde_json::to_string(&spec).unwrap()).unwrap();
        let mut g = Guard {
            child,
            stdin: Some(stdin),
            stdout,
        };
        assert_eq!(g.reply(), Reply::Ready);
        g.send(Request::Pid(redis.child.id()));
        g
    }

    fn send(&mut self, r: Request) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(r.line().as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn reply(&mut self) -> Reply {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        Reply::parse(&line).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

fn in_ms(ms: u64) -> Option<u64> {
    Some(monotonic_ns() + ms * 1_000_000)
}

/// Field 19 of /proc/PID/stat: the nice value.
fn nice_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

/// On busy CPUs the guard must still wake within `guard_slack_ms` (a short campaign saw a
/// 21 ms window of two writable primaries while the suite ran beside other builds).
#[test]
fn the_guard_runs_ahead_of_the_agent_where_allowed() {
    let redis = start_redis();
    let g = Guard::start(&redis, 100);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(
            nice_of(g.child.id()),
            redis_steward::node::fence_guard::GUARD_NICE
        );
    }
}

#[test]
fn writes_close_at_the_deadline_with_nobody_driving_the_guard() {
    let redis = start_redis();
    let mut g = Guard::start(&redis, 100);
    // Starting does not touch redis: a pause of its own could land after the agent's later
    // commands.
    assert!(takes_writes(&redis.socket));
    g.send(Request::Fence { id: 1 });
    assert_eq!(
        g.reply(),
        Reply::Fenced {
            id: 1,
            how: redis_steward::node::fence_guard::Fenced::Paused
        }
    );
    assert!(!takes_writes(&redis.socket));
    g.send(Request::Open {
        id: 2,
        until_ns: in_ms(1_500),
    });
    assert_eq!(g.reply(), Reply::Opened { id: 2 });
    let opened = Instant::now();
    assert!(takes_writes(&redis.socket));
    // Nothing more from the "agent": at the deadline the guard closes writes by itself.
    assert!(matches!(g.reply(), Reply::Expired { .. }));
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1_300) && closed_after < Duration::from_millis(1_800),
        "closed after {closed_after:?}"
    );
    assert!(!takes_writes(&redis.socket));
    // An open whose deadline has passed (an agent that resumes and carries out a stale
    // Unfence) opens nothing.
    g.send(Request::Open {
        id: 3,
        until_ns: Some(monotonic_ns() - 1),
    });
    assert_eq!(g.reply(), Reply::Late { id: 3 });
    assert!(!takes_writes(&redis.socket));
    // A later open works again, and the agent going away (stdin closed) closes writes.
    g.send(Request::Open {
        id: 4,
        until_ns: None,
    });
    assert_eq!(g.reply(), Reply::Opened { id: 4 });
    assert!(takes_writes(&redis.socket));
    drop(g.stdin.take());
    let status = g.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!takes_writes(&redis.socket));
}

#[test]
fn a_stopped_redis_that_cannot_confirm_the_pause_is_killed() {
    let mut redis = start_redis();
    let mut g = Guard::start(&redis, 100);
    g.send(Request::Open {
        id: 1,
        until_ns: in_ms(400),
    });
    assert_eq!(g.reply(), Reply::Opened { id: 1 });
    let pid = redis.child.id() as i32;
    // SAFETY: SIGSTOP of the redis-server this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    assert_eq!(
        g.reply(),
        Reply::Expired {
            how: redis_steward::node::fence_guard::Fenced::Killed
        }
    );
    let status = redis.child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}
