//! The fence guard: a small process beside the agent that closes redis to writes when the
//! deadline of the election's last `Unfence` passes, whether or not the agent runs.
//!
//! The election proves a primary may take writes until a deadline (its newest heartbeat a
//! majority acknowledged, or its lease, plus `fence_after_ms`); nobody can be promoted before
//! `failover_timeout_ms` after that. The agent alone cannot keep that promise: stopped
//! (SIGSTOP, a debugger), deadlocked, starved or stuck on a hung disk, it never runs the tick
//! that fences, and its redis takes writes beside the new primary (measured: two writable
//! primaries for 6.4 s, 560 acknowledged writes lost). So the agent hands every deadline to
//! this process, which does nothing else: it sleeps until the deadline (or the next line from
//! the agent), then sends `CLIENT PAUSE … WRITE` over its own admin connection and, when redis
//! does not answer within `action_latency_ms` (redis itself stopped), kills redis, which
//! restarts read-only. It opens writes (`CLIENT UNPAUSE`) only for a deadline still in the
//! future, so an `Unfence` the agent carries out late opens nothing; and only it opens them
//! for a primary, so no stale command of the agent can reopen a fenced redis.
//!
//! It is the agent's own binary (`redis-steward fence-guard`, hidden), talking over its
//! stdin/stdout in lines (see [`Request`] and [`Reply`]); deadlines are `CLOCK_MONOTONIC`
//! readings, which both processes share. Its stdin closing means the agent is gone: it fences
//! and exits. It does no disk I/O, keeps one connection to redis, and locks its memory where
//! the limit allows, so whatever stalls the agent (memory pressure, a hung disk) leaves it
//! alone. See ARCHITECTURE.md for the alternatives weighed (`min-replicas-to-write`, a shorter
//! systemd watchdog).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// `CLIENT PAUSE`'s timeout: a day (it lasts until the guard opens writes again).
const PAUSE_MS: &str = "86400000";
/// How long a guard may take to start (exec, read its spec) before the agent gives up.
const GUARD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the guard needs to reach redis; the first line the agent sends (JSON), so the
/// password never shows in the process list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardSpec {
    pub socket: PathBuf,
    pub user: String,
    pub password: String,
    /// Past this, a `CLIENT PAUSE` that redis has not confirmed is replaced by SIGKILL.
    pub action_latency_ms: u64,
}

/// The agent's lines to the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Redis's current pid (for SIGKILL when it cannot be paused).
    Pid(u32),
    /// Pause writes now and forget the deadline; answered with [`Reply::Fenced`].
    Fence { id: u64 },
    /// Open writes until `until_ns` (`CLOCK_MONOTONIC`; `None`: no deadline), unless that has
    /// passed; answered with [`Reply::Opened`] or [`Reply::Late`] (or `Failed`).
    Open { id: u64, until_ns: Option<u64> },
}

/// How a fence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Redis confirmed `CLIENT PAUSE … WRITE`.
    Paused,
    /// Redis did not confirm in time and was killed (it restarts read-only).
    Killed,
    /// Redis is not running (nothing listens on its socket): nothing to fence.
    Down,
}

/// The guard's lines to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Fenced {
        id: u64,
        how: Fenced,
    },
    Opened {
        id: u64,
    },
    /// The deadline had passed when the request arrived: writes stay closed.
    Late {
        id: u64,
    },
    /// Redis did not take `CLIENT UNPAUSE`: writes stay closed.
    Failed {
        id: u64,
    },
    /// A deadline passed without a newer one: the guard fenced on its own.
    Expired {
        how: Fenced,
    },
    /// The guard has read its spec and waits for requests.
    Ready,
}

impl Fenced {
    fn as_str(self) -> &'static str {
        match self {
            Fenced::Paused => "paused",
            Fenced::Killed => "killed",
            Fenced::Down => "down",
        }
    }

    fn parse(word: &str) -> Result<Fenced> {
        Ok(match word {
            "paused" => Fenced::Paused,
            "killed" => Fenced::Killed,
            "down" => Fenced::Down,
            other => bail!("unknown fence outcome {other:?}"),
        })
    }
}

fn number(word: Option<&str>, what: &str, line: &str) -> Result<u64> {
    word.with_context(|| format!("{what} missing in {line:?}"))?
        .parse()
        .with_context(|| format!("bad {what} in {line:?}"))
}

impl Request {
    pub fn line(&self) -> String {
        match self {
            Request::Pid(pid) => format!("pid {pid}\n"),
            Request::Fence { id } => format!("fence {id}\n"),
            Request::Open { id, until_ns: None } => format!("open {id} never\n"),
            Request::Open {
                id,
                until_ns: Some(ns),
            } => format!("open {id} {ns}\n"),
        }
    }

    pub fn parse(line: &str) -> Result<Request> {
        let mut words = line.split_whitespace();
        Ok(match words.next() {
            Some("pid") => Request::Pid(number(words.next(), "pid", line)? as u32),
            Some("fence") => Request::Fence {
                id: number(words.next(), "id", line)?,
            },
            Some("open") => {
                let id = number(words.next(), "id", line)?;
                let until_ns = match words.next() {
                    Some("never") => None,
                    w => Some(number(w, "deadline", line)?),
                };
                Request::Open { id, until_ns }
            }
            _ => bail!("unknown request {line:?}"),
        })
    }
}

impl Reply {
    pub fn line(&self) -> String {
        match self {
            Reply::Fenced { id, how } => format!("fenced {id} {}\n", how.as_str()),
            Reply::Opened { id } => format!("opened {id}\n"),
            Reply::Late { id } => format!("late {id}\n"),
            Reply::Failed { id } => format!("failed {id}\n"),
            Reply::Expired { how } => format!("expired {}\n", how.as_str()),
            Reply::Ready => "ready\n".to_string(),
        }
    }

    pub fn parse(line: &str) -> Result<Reply> {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let id = |words: &mut std::str::SplitWhitespace| number(words.next(), "id", line);
        Ok(match kind {
            Some("fenced") => Reply::Fenced {
                id: id(&mut words)?,
                how: Fenced::parse(words.next().unwrap_or_default())?,
            },
            Some("opened") => Reply::Opened {
                id: id(&mut words)?,
            },
            Some("late") => Reply::Late {
                id: id(&mut words)?,
            },
            Some("failed") => Reply::Failed {
                id: id(&mut words)?,
            },
            Some("expired") => Reply::Expired {
                how: Fenced::parse(words.next().unwrap_or_default())?,
            },
            Some("ready") => Reply::Ready,
            _ => bail!("unknown reply {line:?}"),
        })
    }
}

/// The guard's decisions (pure): the open deadline and what each input makes it do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gate {
    /// Writes are open until then (`u64::MAX`: no deadline); `None`: closed.
    open_until: Option<u64>,
}

/// What the gate asks of redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAction {
    Pause,
    Unpause,
    /// Nothing to do (answer at once).
    Refuse,
}

impl Gate {
    /// When the guard must wake up to fence, if writes are open with a deadline.
    pub fn wake_at(&self) -> Option<u64> {
        self.open_until.filter(|&t| t != u64::MAX)
    }

    pub fn fence(&mut self) -> GateAction {
        self.open_until = None;
        GateAction::Pause
    }

    pub fn open(&mut self, now_ns: u64, until_ns: Option<u64>) -> GateAction {
        let until = until_ns.unwrap_or(u64::MAX);
        if until <= now_ns {
            return GateAction::Refuse;
        }
        self.open_until = Some(until);
        GateAction::Unpause
    }

    /// The deadline passed: close (once).
    pub fn expire(&mut self, now_ns: u64) -> Option<GateAction> {
        let due = self.wake_at().is_some_and(|t| now_ns >= t);
        due.then(|| self.fence())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `std::time::Instant` reads on Linux, shared by
/// every process on the machine.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- the guard process -------------------------------------------------------------------------

/// Redis over its unix socket, one blocking command at a time, each bounded by the action
/// latency. Written by hand (three commands, simple replies) so that every read and write has
/// exactly the timeout set on the socket, the connection handshake included.
struct Redis {
    spec: GuardSpec,
    conn: Option<UnixStream>,
    pid: Option<u32>,
}

enum Outcome {
    Ok,
    /// Nothing listens on the socket.
    Down,
    /// No answer in time, or an error.
    Failed(String),
}

impl Redis {
    fn command(&mut self, args: &[&str]) -> Outcome {
        if self.conn.is_none() {
            match self.connect() {
                Ok(conn) => self.conn = Some(conn),
                Err(e) if is_down(&e) => return Outcome::Down,
                Err(e) => return Outcome::Failed(format!("{e:#}")),
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        match roundtrip(conn, args) {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                self.conn = None;
                Outcome::Failed(format!("{e:#}"))
            }
        }
    }

    fn connect(&self) -> Result<UnixStream> {
        let conn = UnixStream::connect(&self.spec.socket)?;
        let limit = Some(Duration::from_millis(self.spec.action_latency_ms));
        conn.set_read_timeout(limit)?;
        conn.set_write_timeout(limit)?;
        let mut conn = conn;
        roundtrip(&mut conn, &["AUTH", &self.spec.user, &self.spec.password])
            .context("authenticating")?;
        Ok(conn)
    }

    /// Pause writes, or kill redis when it cannot confirm in time.
    fn pause(&mut self) -> Fenced {
        match self.command(&["CLIENT", "PAUSE", PAUSE_MS, "WRITE"]) {
            Outcome::Ok => Fenced::Paused,
            Outcome::Down => Fenced::Down,
            Outcome::Failed(why) => {
                self.conn = None;
                match self.pid {
                    Some(pid) => {
                        eprintln!(
                            "redis-steward fence-guard: redis did not pause writes ({why}); \
                             killing redis pid {pid}"
                        );
                        // SAFETY: kill(2) of the redis pid the agent told us.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        Fenced::Killed
                    }
                    None => {
                        eprintln!(
                            "redis-steward fence-guard: redis did not pause writes ({why}) and \
                             its pid is unknown"
                        );
                        Fenced::Down
                    }
                }
            }
        }
    }
}

fn is_down(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        )
    })
}

fn roundtrip(conn: &mut UnixStream, args: &[&str]) -> Result<()> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.write_all(out.as_bytes())?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        if conn.read(&mut byte)? == 0 {
            bail!("redis closed the connection");
        }
        reply.push(byte[0]);
        if reply.len() > 4096 {
            bail!("reply too long");
        }
    }
    match reply.first() {
        Some(b'+') => Ok(()),
        _ => bail!(
            "redis answered {:?}",
            String::from_utf8_lossy(&reply).trim()
        ),
    }
}

/// The fence guard's nice value (the agent's is 0).
pub const GUARD_NICE: i32 = -15;

/// The guard process: `redis-steward fence-guard` (the agent starts it; not for people).
pub fn run_guard() -> Result<()> {
    // SAFETY: plain signal dispositions and memory locking for this process; no handlers.
    unsafe {
        // A terminal's Ctrl-C reaches the agent's process group: the agent stops in order
        // and we follow when our stdin closes.
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        // Pages we touch stay in memory (best effort: RLIMIT_MEMLOCK may forbid it).
        libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT);
        // Scheduled ahead of the agent and redis when the CPUs are busy: the fence bound
        // allows it only `guard_slack_ms` to wake. Best effort: root, CAP_SYS_NICE or the
        // unit's LimitNICE= allow it.
        libc::setpriority(libc::PRIO_PROCESS, 0, GUARD_NICE);
    }
    let stdin = std::io::stdin();
    let mut first = String::new();
    stdin
        .lock()
        .read_line(&mut first)
        .context("reading the guard spec")?;
    let spec: GuardSpec = serde_json::from_str(&first).context("parsing the guard spec")?;
    let mut redis = Redis {
        spec,
        conn: None,
        pid: None,
    };
    let mut gate = Gate::default();
    let mut out = std::io::stdout();
    // Nothing of our own at start: a pause here could land after the agent's later commands
    // (say, a replica's UNPAUSE) and stall replication. The agent sends what it wants, in
    // order: a fence, or the deadline a guard before us was keeping.
    send(&mut out, Reply::Ready);
    let mut pending = Vec::new();
    loop {
        let timeout_ms = match gate.wake_at() {
            None => -1,
            Some(t) => {
                let now = monotonic_ns();
                t.saturating_sub(now)
                    .div_ceil(1_000_000)
                    .min(i32::MAX as u64) as i32
            }
        };
        let mut fds = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let ready = unsafe { libc::poll(&mut fds, 1, timeout_ms) };
        if let Some(GateAction::Pause) = gate.expire(monotonic_ns()) {
            let how = redis.pause();
            eprintln!(
                "redis-steward fence-guard: the write deadline passed without a newer one from \
                 the agent; writes closed ({})",
                how.as_str()
            );
            send(&mut out, Reply::Expired { how });
        }
        if ready <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: read(2) into our buffer from stdin, which poll says is readable.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // The agent is gone (or its end broke): close writes and leave.
            redis.pause();
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let reply = match Request::parse(&line) {
                Ok(Request::Pid(pid)) => {
                    redis.pid = Some(pid);
                    redis.conn = None;
                    None
                }
                Ok(Request::Fence { id }) => {
                    gate.fence();
                    Some(Reply::Fenced {
                        id,
                        how: redis.pause(),
                    })
                }
                Ok(Request::Open { id, until_ns }) => {
                    Some(match gate.open(monotonic_ns(), until_ns) {
                        GateAction::Unpause => match redis.command(&["CLIENT", "UNPAUSE"]) {
                            Outcome::Ok => Reply::Opened { id },
                            _ => {
                                gate.fence();
                                Reply::Failed { id }
                            }
                        },
                        _ => Reply::Late { id },
                    })
                }
                Err(e) => {
                    eprintln!("redis-steward fence-guard: {e:#}");
                    None
                }
            };
            if let Some(reply) = reply {
                send(&mut out, reply);
            }
        }
    }
}

fn send(out: &mut std::io::Stdout, reply: Reply) {
    // The agent may be gone or stopped; a full pipe must not stop us fencing.
    let _ = out.write_all(reply.line().as_bytes());
    let _ = out.flush();
}

// ---- the agent's side --------------------------------------------------------------------------

/// Why the guard could not confirm a fence.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the fence guard is not running")]
    Gone,
    #[error("the fence guard did not answer within {0:?}")]
    TimedOut(Duration),
}

/// The agent's handle on its guard process.
pub struct FenceGuard {
    spec: GuardSpec,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    replies: mpsc::Receiver<Reply>,
    next_id: u64,
    pid: Option<u32>,
}

impl FenceGuard {
    /// Starts the guard (this binary, `fence-guard`) and waits until it is ready, so that the
    /// first fence is not timed against the start of a process.
    pub async fn start(spec: GuardSpec) -> Result<FenceGuard> {
        let mut guard = FenceGuard::spawn(spec)?;
        match tokio::time::timeout(GUARD_START_TIMEOUT, guard.replies.recv()).await {
            Ok(Some(Reply::Ready)) => {
                info!(pid = guard.child.id(), "fence guard started");
                Ok(guard)
            }
            Ok(Some(other)) => bail!("the fence guard answered {other:?} before it was ready"),
            Ok(None) => bail!("the fence guard exited at start (see its message above)"),
            Err(_) => bail!("the fence guard was not ready within {GUARD_START_TIMEOUT:?}"),
        }
    }

    fn spawn(spec: GuardSpec) -> Result<FenceGuard> {
        let exe = std::env::current_exe().context("finding the agent's own binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("fence-guard")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .spawn()
            .context("starting the fence guard")?;
        let stdin = child.stdin.take().context("fence guard stdin")?;
        let stdout = child.stdout.take().context("fence guard stdout")?;
        let (tx, replies) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match Reply::parse(&line) {
                    Ok(reply) => {
                        if tx.send(reply).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!("fence guard: {e:#}"),
                }
            }
        });
        let mut guard = FenceGuard {
            spec,
            child,
            stdin,
            replies,
            next_id: 0,
            pid: None,
        };
        let mut first = serde_json::to_string(&guard.spec)?;
        first.push('\n');
        guard.write_now(first)?;
        Ok(guard)
    }

    /// Tells the guard which redis to kill when it cannot pause it.
    pub async fn set_redis_pid(&mut self, pid: u32) -> Result<(), GuardError> {
        self.pid = Some(pid);
        self.send(Request::Pid(pid)).await
    }

    /// Pauses writes through the guard and waits for its answer, up to `within`.
    pub async fn fence(&mut self, within: Duration) -> Result<Fenced, GuardError> {
        let id = self.id();
        let asked = tokio::time::Instant::now();
        self.send(Request::Fence { id }).await?;
        loop {
            let left = within.saturating_sub(asked.elapsed());
            match tokio::time::timeout(left, self.replies.recv()).await {
                Err(_) => return Err(GuardError::TimedOut(within)),
                Ok(None) => return Err(GuardError::Gone),
                Ok(Some(Reply::Fenced { id: got, how })) if got == id => return Ok(how),
                Ok(Some(other)) => self.note(other),
            }
        }
    }

    /// Opens writes until `until_ns` (`None`: no deadline). Does not wait for the answer: a
    /// late or failed open is logged when it arrives; writes stay closed then.
    pub async fn open(&mut self, until_ns: Option<u64>) -> Result<(), GuardError> {
        while let Ok(reply) = self.replies.try_recv() {
            self.note(reply);
        }
        let id = self.id();
        self.send(Request::Open { id, until_ns }).await
    }

    /// Stops this guard (dead or hung) and starts a new one; the caller hands it the state
    /// it must keep (a deadline, or a fence).
    pub async fn restart(&mut self) -> Result<()> {
        let _ = self.child.start_kill();
        let mut fresh = FenceGuard::start(self.spec.clone()).await?;
        if let Some(pid) = self.pid {
            fresh.set_redis_pid(pid).await?;
        }
        *self = fresh;
        Ok(())
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn note(&mut self, reply: Reply) {
        match reply {
            Reply::Expired { how } => warn!(
                outcome = how.as_str(),
                "fence guard closed writes: the write deadline passed before this agent \
                 extended it (the agent was stalled, or acknowledgements stopped)"
            ),
            Reply::Late { id } => info!(id, "fence guard kept writes closed: deadline passed"),
            Reply::Failed { id } => warn!(id, "fence guard could not open writes"),
            Reply::Opened { .. } | Reply::Fenced { .. } | Reply::Ready => {}
        }
    }

    /// Writes one request within the action latency: a guard that stops reading (stopped,
    /// hung) must not stall the HA loop once the pipe is full.
    async fn send(&mut self, request: Request) -> Result<(), GuardError> {
        let limit = Duration::from_millis(self.spec.action_latency_ms);
        let line = request.line();
        match tokio::time::timeout(limit, self.stdin.write_all(line.as_bytes())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(GuardError::Gone),
            Err(_) => Err(GuardError::TimedOut(limit)),
        }
    }

    /// The spec line, before the guard reads anything (fits the empty pipe's buffer).
    fn write_now(&mut self, line: String) -> Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.stdin.as_raw_fd();
        // SAFETY: write(2) to the pipe we own; a fresh pipe takes 64 KiB without blocking.
        let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        if n != line.len() as isize {
            bail!("cannot hand the fence guard its settings");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_garbage_is_named() {
        for r in [
            Request::Pid(42),
            Request::Fence { id: 7 },
            Request::Open {
                id: 8,
                until_ns: Some(123_456_789),
            },
            Request::Open {
                id: 9,
                until_ns: None,
            },
        ] {
            assert_eq!(Request::parse(&r.line()).unwrap(), r);
        }
        for r in [
            Reply::Fenced {
                id: 1,
                how: Fenced::Paused,
            },
            Reply::Fenced {
                id: 2,
                how: Fenced::Killed,
            },
            Reply::Opened { id: 3 },
            Reply::Late { id: 4 },
            Reply::Failed { id: 5 },
            Reply::Expired { how: Fenced::Down },
            Reply::Ready,
        ] {
            assert_eq!(Reply::parse(&r.line()).unwrap(), r);
        }
        let e = Request::parse("open 3 soon").unwrap_err();
        assert!(format!("{e:#}").contains("bad deadline"), "{e:#}");
        assert!(Request::parse("unpause").is_err());
        assert!(Reply::parse("fenced 1 maybe").is_err());
    }

    #[test]
    fn the_gate_opens_only_for_a_future_deadline_and_closes_at_it() {
        let mut g = Gate::default();
        assert_eq!(g.wake_at(), None);
        assert_eq!(
            g.open(100, Some(100)),
            GateAction::Refuse,
            "a deadline now is past"
        );
        assert_eq!(g.wake_at(), None);
        assert_eq!(g.open(100, Some(150)), GateAction::Unpause);
        assert_eq!(g.wake_at(), Some(150));
        assert_eq!(g.expire(149), None);
        // A late request for an old deadline leaves the newer one alone.
        assert_eq!(g.open(120, Some(110)), GateAction::Refuse);
        assert_eq!(g.wake_at(), Some(150));
        assert_eq!(g.expire(150), Some(GateAction::Pause));
        assert_eq!(g.expire(151), None, "closes once");
        assert_eq!(g.open(160, None), GateAction::Unpause);
        assert_eq!(g.wake_at(), None, "no deadline: nothing to wake for");
        assert_eq!(g.fence(), GateAction::Pause);
        assert_eq!(g.expire(u64::MAX - 1), None);
    }

    #[test]
    fn monotonic_ns_is_the_clock_instant_reads() {
        let a = monotonic_ns();
        let t = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = t.elapsed().as_nanos() as u64;
        let b = monotonic_ns();
        assert!(b - a >= elapsed, "{} < {elapsed}", b - a);
        assert!(b - a < elapsed + 5_000_000, "{} vs {elapsed}", b - a);
    }
}
