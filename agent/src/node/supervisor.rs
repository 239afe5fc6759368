//! Owns the redis-server child: starts it, probes it, restarts it with backoff when it dies,
//! and stops it cleanly (SHUTDOWN as the admin user, so the AOF is flushed) on request.
//!
//! One select loop over: the child exiting, a probe tick, and the shutdown signal. What it
//! learns goes out on a `watch` channel (`RedisState`) that status, metrics and systemd read.

use crate::node::redis_client::{self, Info};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, error, info, warn};

/// How often the agent checks that redis answers.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a clean SHUTDOWN may take before the agent escalates to signals.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// systemd's variables the agent consumes (notifications, watchdog) and must not pass on to
/// redis-server.
const SYSTEMD_ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Restart delays after crashes: the first restart is immediate (a crash should cost as little
/// downtime as possible), then the delay doubles up to a cap. A run that stayed up for
/// `stable_after` resets the sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable_after: Duration,
    consecutive: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
            stable_after: Duration::from_secs(30),
            consecutive: 0,
        }
    }
}

impl Backoff {
    /// The delay before the next start, given how long the process that just died ran.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable_after {
            self.consecutive = 0;
        }
        let n = self.consecutive;
        self.consecutive = self.consecutive.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Running,
    Restarting,
    Stopping,
    Stopped,
}

/// What the supervisor knows about redis right now.
#[derive(Debug, Clone, Serialize)]
pub struct RedisState {
    pub phase: Phase,
    pub pid: Option<u32>,
    /// True when the last probe got an answer.
    pub healthy: bool,
    #[serde(skip)]
    pub started_at: Option<Instant>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub info: Info,
    /// Last time the supervisor loop ran; the systemd watchdog only pings while this moves.
    #[serde(skip)]
    pub loop_alive_at: Instant,
    #[serde(skip)]
    pub became_healthy_at: Option<SystemTime>,
}

impl Default for RedisState {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisState {
    pub fn new() -> Self {
        RedisState {
            phase: Phase::Starting,
            pid: None,
            healthy: false,
            started_at: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            info: Info::default(),
            loop_alive_at: Instant::now(),
            became_healthy_at: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub redis_server: PathBuf,
    pub redis_conf: PathBuf,
    /// redis's `dir` (holding the AOF directory), for repairs of its AOF.
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub admin_user: String,
    pub admin_password: String,
}

/// The supervisor's handle: `state` to watch, `shutdown()` stops redis cleanly and waits.
pub type SupervisorHandle = crate::actor::ActorHandle<RedisState>;

pub fn spawn(cfg: SupervisorConfig) -> SupervisorHandle {
    let launcher = Launcher::start();
    crate::actor::ActorHandle::spawn(RedisState::new(), move |state, shutdown| async move {
        let admin = redis_client::AdminLink::new(&cfg.socket, &cfg.admin_user, &cfg.admin_password);
        Supervisor {
            cfg,
            state,
            backoff: Backoff::default(),
            launcher,
            admin,
            damage_reported: std::collections::HashSet::new(),
            aof_write_recovered: Arc::new(Notify::new()),
            aof_renewal_due: false,
        }
        .run(shutdown)
        .await
    })
}

struct Supervisor {
    cfg: SupervisorConfig,
    state: watch::Sender<RedisState>,
    backoff: Backoff,
    launcher: Launcher,
    admin: redis_client::AdminLink,
    /// AOF damage already reported (file, offset): a redis that keeps failing on it is
    /// restarted again and again, the warning is given once.
    damage_reported: std::collections::HashSet<(std::path::PathBuf, usize)>,
    /// Redis logged that its AOF writes work again after a write error.
    aof_write_recovered: Arc<Notify>,
    /// An AOF rewrite is owed (see [`Supervisor::renew_aof_file`]) and not yet accepted.
    aof_renewal_due: bool,
}

enum Exit {
    /// `answering`: redis was answering probes when it exited.
    Crashed {
        answering: bool,
    },
    ShutdownRequested(oneshot::Sender<()>),
}

impl Supervisor {
    async fn run(mut self, mut shutdown: mpsc::Receiver<oneshot::Sender<()>>) {
        loop {
            let mut child = match self.start().await {
                Ok(c) => c,
                Err(e) => {
                    error!("cannot start redis-server: {e:#}");
                    self.state.send_modify(|s| {
                        s.last_error = Some(format!("{e:#}"));
                        s.phase = Phase::Restarting;
                    });
                    // Never spin on a start that fails at once (missing binary, bad config).
                    let delay = self
                        .backoff
                        .next_delay(Duration::ZERO)
                        .max(Duration::from_millis(500));
                    if let Some(done) = self.wait_backoff(delay, &mut shutdown).await {
                        self.finish(done);
                        return;
                    }
                    continue;
                }
            };
            match self.watch(&mut child, &mut shutdown).await {
                Exit::ShutdownRequested(done) => {
                    self.stop(child).await;
                    self.finish(done);
                    return;
                }
                Exit::Crashed { answering } => {
                    let ran_for = self
                        .state
                        .borrow()
                        .started_at
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    let mut delay = self.backoff.next_delay(ran_for);
                    // A redis that dies before it answers may have found its AOF damaged.
                    if !answering && self.repair_aof().await {
                        delay = Duration::ZERO;
                    }
                    if let Some(done) = self.wait_backoff(delay, &mut shutdown).await {
                        self.finish(done);
                        return;
                    }
                }
            }
        }
    }

    /// Mends the NUL holes redis 7.0 leaves in its AOF after a short write (`aof_repair`) and
    /// reports, once, damage it does not mend; true if anything was mended.
    async fn repair_aof(&mut self) -> bool {
        use super::aof_repair::Outcome;
        let data_dir = self.cfg.data_dir.clone();
        let aof_dir = data_dir.join(crate::node::layout::AOF_DIR_NAME);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let keep = data_dir.join(format!("aof-before-repair-{unix}"));
        let outcome =
            tokio::task::spawn_blocking(move || super::aof_repair::repair_dir(&aof_dir, &keep))
                .await;
        match outcome {
            Ok(Ok(outcomes)) => {
                let mut mended = false;
                for o in outcomes {
                    match o {
                        Outcome::Repaired(r) => {
                            mended = true;
                            let bytes: usize = r.holes.iter().map(|(_, len)| len).sum();
                            warn!(
                                file = %r.file.display(),
                                holes = ?r.holes,
                                original = %r.original.display(),
                                "repaired redis's AOF: filled the {bytes} NUL byte(s) a short \
                                 write on a full disk left between commands (redis 7.0 would \
                                 not load it) without moving any later byte; every command is \
                                 kept, and the original is beside it"
                            );
                        }
                        Outcome::Unmendable { file, at, what } => {
                            if self.damage_reported.insert((file.clone(), at)) {
                                error!(
                                    file = %file.display(),
                                    offset = at,
                                    "redis's AOF is damaged in a way the agent does not mend \
                                     ({what} at byte {at} of {}); redis will not load it. Keep a \
                                     copy of the data directory, then see `redis-check-aof` \
                                     (its --fix truncates the file at the damage, dropping \
                                     every later write) or replace this node from the backups",
                                    file.display()
                                );
                            }
                        }
                    }
                }
                mended
            }
            Ok(Err(e)) => {
                warn!("cannot check redis's AOF for repairable damage: {e:#}");
                false
            }
            Err(e) => {
                warn!("AOF check failed: {e}");
                false
            }
        }
    }

    fn finish(&self, done: oneshot::Sender<()>) {
        self.state.send_modify(|s| {
            s.phase = Phase::Stopped;
            s.healthy = false;
            s.pid = None;
        });
        let _ = done.send(());
    }

    /// Sleep the backoff delay; returns the shutdown ack if shutdown came meanwhile.
    async fn wait_backoff(
        &mut self,
        delay: Duration,
        shutdown: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Option<oneshot::Sender<()>> {
        if !delay.is_zero() {
            info!(
                delay_ms = delay.as_millis() as u64,
                "restarting redis after backoff"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            done = shutdown.recv() => Some(done.unwrap_or_else(|| oneshot::channel().0)),
        }
    }

    async fn start(&mut self) -> Result<Child> {
        self.admin.reset();
        let mut cmd = Command::new(&self.cfg.redis_server);
        cmd.arg(&self.cfg.redis_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            // Own process group: a Ctrl-C in the agent's terminal must reach the agent only,
            // which then shuts redis down in order.
            .process_group(0);
        for var in SYSTEMD_ENV_VARS {
            cmd.env_remove(var);
        }
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // If the agent dies, redis gets SIGTERM (a clean, AOF-flushing shutdown) and
                // never lives on as an orphan.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                // The agent may hold CAP_NET_ADMIN as an ambient capability (its systemd
                // unit, for nftables); redis needs none. Fails harmlessly before Linux 4.3.
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let mut child = self.launcher.spawn(cmd).await?;
        let pid = child.id();
        forward_output(&mut child, self.aof_write_recovered.clone());
        info!(pid, "redis-server started");
        self.state.send_modify(|s| {
            s.phase = Phase::Starting;
            s.loop_alive_at = Instant::now();
            s.pid = pid;
            s.started_at = Some(Instant::now());
            s.healthy = false;
        });
        Ok(child)
    }

    async fn watch(
        &mut self,
        child: &mut Child,
        shutdown: &mut mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Exit {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Probe quickly until redis first answers, so READY and recovery are prompt.
        let mut fast = tokio::time::interval(Duration::from_millis(50));
        loop {
            let starting = !self.state.borrow().healthy;
            tokio::select! {
                status = child.wait() => {
                    let what = match status {
                        Ok(s) => describe_exit(s),
                        Err(e) => format!("wait failed: {e}"),
                    };
                    warn!(exit = %what, "redis-server exited unexpectedly");
                    let answering = self.state.borrow().healthy;
                    self.state.send_modify(|s| {
                        s.phase = Phase::Restarting;
                        s.loop_alive_at = Instant::now();
                        s.healthy = false;
                        s.pid = None;
                        s.restarts += 1;
                        s.last_exit = Some(what);
                    });
                    return Exit::Crashed { answering };
                }
                done = shutdown.recv() => {
                    return Exit::ShutdownRequested(done.unwrap_or_else(|| oneshot::channel().0));
                }
                _ = tick.tick() => {
                    self.probe().await;
                    if self.aof_renewal_due {
                        self.renew_aof_file().await;
                    }
                }
                _ = fast.tick(), if starting => self.probe().await,
                _ = self.aof_write_recovered.notified() => {
                    self.aof_renewal_due = true;
                    self.renew_aof_file().await;
                }
            }
        }
    }

    async fn probe(&mut self) {
        let result = self.try_probe().await;
        let was_healthy = self.state.borrow().healthy;
        match result {
            Ok(info) => {
                let loading = info.get("loading") == Some("1");
                let healthy = !loading;
                if healthy && !was_healthy {
                    info!("redis is answering");
                }
                self.state.send_modify(|s| {
                    s.loop_alive_at = Instant::now();
                    s.healthy = healthy;
                    s.info = info;
                    s.last_error = None;
                    if healthy {
                        s.phase = Phase::Running;
                        if !was_healthy {
                            s.became_healthy_at = Some(SystemTime::now());
                        }
                    }
                });
            }
            Err(e) => {
                self.admin.reset();
                if was_healthy {
                    warn!("redis stopped answering: {e:#}");
                } else {
                    debug!("redis not answering yet: {e:#}");
                }
                self.state.send_modify(|s| {
                    s.loop_alive_at = Instant::now();
                    s.healthy = false;
                    s.last_error = Some(format!("{e:#}"));
                });
            }
        }
    }

    /// After a failed AOF write, redis 7.0's count of its incremental file's length is short
    /// by the hole the failure left (see `aof_repair`): a second short write would truncate
    /// the file to that count, cutting into commands it acknowledged, damage nothing can mend.
    /// An AOF rewrite opens a new incremental file, counted from zero; asked for at once, and
    /// again on every probe until redis accepts.
    async fn renew_aof_file(&mut self) {
        let r = self
            .admin
            .query::<redis::Value>(&redis::cmd("BGREWRITEAOF"))
            .await;
        match r {
            Ok(_) => {
                info!(
                    "redis's AOF writes work again after a write error: asked for an AOF \
                     rewrite, so that redis writes a new incremental file whose length it counts \
                     right (redis 7.0 miscounts the old one's after a short write)"
                );
                self.aof_renewal_due = false;
            }
            Err(e) => {
                if self.aof_renewal_due {
                    debug!("AOF rewrite after a write error not accepted yet: {e:#}");
                }
            }
        }
    }

    async fn try_probe(&mut self) -> Result<Info> {
        redis_client::info(self.admin.connection().await?).await
    }

    /// Clean stop: SHUTDOWN (redis fsyncs the AOF and waits for replicas), then SIGKILL as a
    /// last resort after [`SHUTDOWN_TIMEOUT`].
    ///
    /// Redis refuses SHUTDOWN (and ignores SIGTERM) while it writes its first AOF, e.g. right
    /// after a replica's full sync ("Writing initial AOF, can't exit"); it is asked again each
    /// second, so the stop waits for the rewrite instead of ending in a kill.
    async fn stop(&mut self, mut child: Child) {
        self.state.send_modify(|s| s.phase = Phase::Stopping);
        info!("stopping redis-server");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let mut ask = true;
        loop {
            if ask {
                ask = self.ask_to_shut_down(&child, deadline).await;
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(SHUTDOWN_RETRY);
            match tokio::time::timeout(wait, child.wait()).await {
                Ok(Ok(status)) => {
                    info!(exit = %describe_exit(status), "redis-server stopped");
                    return;
                }
                Ok(Err(e)) => {
                    warn!("waiting for redis-server failed: {e}");
                    return;
                }
                Err(_) if Instant::now() >= deadline => {
                    error!("redis-server did not stop within {SHUTDOWN_TIMEOUT:?}; killing it");
                    let _ = child.kill().await;
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// Send SHUTDOWN (SIGTERM when redis cannot be reached); true if redis refused and should
    /// be asked again.
    async fn ask_to_shut_down(&mut self, child: &Child, deadline: Instant) -> bool {
        let conn = match self.admin.connection().await {
            Ok(c) => c,
            Err(e) => {
                warn!("cannot reach redis for a clean SHUTDOWN ({e:#}); sending SIGTERM");
                signal(child, libc::SIGTERM);
                return false;
            }
        };
        // An accepted SHUTDOWN answers only by dropping the connection as redis exits (after
        // waiting for replicas): bounded by the stop's deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        let shutdown = redis::cmd("SHUTDOWN");
        match tokio::time::timeout(left, shutdown.query_async::<()>(conn)).await {
            Ok(Err(e))
                if !e.is_io_error()
                    && !e.is_connection_dropped()
                    && !e.is_unrecoverable_error() =>
            {
                warn!("SHUTDOWN refused ({e}); asking again in {SHUTDOWN_RETRY:?}");
                true
            }
            _ => false,
        }
    }
}

/// How often a refused SHUTDOWN is asked again.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(1);

fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Split a redis log line (`pid:role dd Mon yyyy hh:mm:ss.mmm <level> message`) into its
/// level character and message; our own log already carries time and source.
pub fn parse_redis_log_line(line: &str) -> (char, &str) {
    let parts: Vec<&str> = line.splitn(7, ' ').collect();
    if let [pid_role, _, _, _, _, level, msg] = parts[..] {
        let mut level_chars = level.chars();
        if let (Some(c @ ('.' | '-' | '*' | '#')), None) = (level_chars.next(), level_chars.next())
        {
            if pid_role.contains(':') {
                return (c, msg);
            }
        }
    }
    ('*', line)
}

/// What redis 7.0 logs when an AOF write works again after a failed (e.g. short) one.
const AOF_WRITE_RECOVERED: &str = "AOF write error looks solved";

/// Redis logs to stdout; pass its lines on as our own log lines (target `redis`), at the
/// level redis gave them, and say when its AOF writes recovered.
fn forward_output(child: &mut Child, aof_write_recovered: Arc<Notify>) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (level, msg) = parse_redis_log_line(&line);
                if msg.starts_with(AOF_WRITE_RECOVERED) {
                    aof_write_recovered.notify_one();
                }
                match (level, msg) {
                    ('#', msg) => warn!(target: "redis", "{msg}"),
                    ('.' | '-', msg) => debug!(target: "redis", "{msg}"),
                    (_, msg) => info!(target: "redis", "{msg}"),
                }
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                warn!(target: "redis", "{line}");
            }
        });
    }
}

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and tokio may retire
/// its threads. So every redis is forked from one thread that lives as long as the agent.
struct Launcher {
    tx: std::sync::mpsc::Sender<(Command, oneshot::Sender<std::io::Result<Child>>)>,
}

impl Launcher {
    fn start() -> Launcher {
        let (tx, rx) =
            std::sync::mpsc::channel::<(Command, oneshot::Sender<std::io::Result<Child>>)>();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("redis-launcher".into())
            .spawn(move || {
                let _guard = handle.enter();
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep this thread (and with it PDEATHSIG's anchor) alive until the process
                // exits, even after the supervisor is gone.
                loop {
                    std::thread::park();
                }
            })
            .expect("cannot start launcher thread");
        Launcher { tx }
    }

    async fn spawn(&self, cmd: Command) -> Result<Child> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((cmd, reply_tx))
            .map_err(|_| anyhow::anyhow!("launcher thread is gone"))?;
        reply_rx
            .await
            .context("launcher thread is gone")?
            .context("cannot execute redis-server")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_log_lines_lose_their_prefix_but_keep_their_level() {
        assert_eq!(
            parse_redis_log_line("7875:M 25 Nov 2026 20:29:59.406 # Server initialized"),
            ('#', "Server initialized")
        );
        assert_eq!(
            parse_redis_log_line("7875:C 25 Nov 2026 20:29:59.400 * Configuration loaded"),
            ('*', "Configuration loaded")
        );
        assert_eq!(parse_redis_log_line("odd line"), ('*', "odd line"));
        assert_eq!(
            parse_redis_log_line("a b c d e f g h"),
            ('*', "a b c d e f g h")
        );
    }

    #[test]
    fn backoff_is_immediate_then_doubles_to_cap_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8)
            .map(|_| b.next_delay(short).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![0, 250, 500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.next_delay(Duration::from_secs(31)), Duration::ZERO);
        assert_eq!(b.next_delay(short), Duration::from_millis(250));
    }
}
