//! One agent under test: a config in a temporary directory, the real `redis-steward` binary
//! started as a child (optionally inside a network namespace), and helpers to talk to it:
//! its status API, and the real `redis-cli` over TLS.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "customer-secret-pw";

/// The agent binary under test: `$REDIS_STEWARD_BIN`, else `target/debug/redis-steward`
/// (built by `cargo test --workspace`, because the agent package has integration tests).
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_STEWARD_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/redis-steward");
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or set REDIS_STEWARD_BIN)",
        bin.display()
    );
    // `cargo test -p steward-testbed` rebuilds the agent's library but not its binary: a test
    // would then quietly run the previous build. Cargo's dep-info beside the binary lists the
    // files it was built from.
    if let (Ok(built), Some(edited)) = (
        bin.metadata().and_then(|m| m.modified()),
        newest_dependency(&bin.with_extension("d")),
    ) {
        assert!(
            built >= edited,
            "{} is older than its sources: `cargo build -p redis-steward` first (or run \
             `cargo test --workspace`)",
            bin.display()
        );
    }
    bin
}

/// The newest modification time among the files a cargo dep-info file (`target: dep dep …`)
/// names; None if there is none to read.
fn newest_dependency(dep_info: &Path) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(dep_info).ok()?;
    let (_, deps) = text.lines().next()?.split_once(": ")?;
    deps.replace("\\ ", "\0")
        .split_whitespace()
        .filter_map(|p| {
            std::fs::metadata(p.replace('\0', " "))
                .ok()?
                .modified()
                .ok()
        })
        .max()
}

/// A benchmark knob from the environment (`ROUNDS`, `BENCH_MB`, …), or `default` when unset
/// or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP port that was free a moment ago on 127.0.0.1, and never handed out before in this
/// process: the kernel may give the same ephemeral port to two `bind(0)` calls in a row once
/// the first listener is closed, and one node's redis, API and sentinel ports must differ
/// (a CI run once drew the same port twice and the agent rightly refused its config).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot find a free port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port that was not handed out already in 1000 tries");
}

/// Poll `f` every `every` until it returns Some or `timeout` passes.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Settings for one test node, rendered into the agent's TOML config.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub data_store_id: String,
    pub node_name: String,
    pub plan: String,
    pub bind: String,
    pub port: u16,
    pub api_port: u16,
    /// The agent's Redis Sentinel protocol port.
    pub sentinel_port: u16,
    pub scripting: bool,
    pub memory_limit_mb: Option<u64>,
    pub allowed_cidrs: Option<Vec<String>>,
    /// `api.public_listen` (read-only endpoints on a network address).
    pub public_api: Option<String>,
    /// Extra TOML appended verbatim (for tests of config handling).
    pub extra: String,
}

impl NodeSpec {
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec {
            data_store_id: "test-ds".into(),
            node_name: name.into(),
            plan: "startup".into(),
            bind: "127.0.0.1".into(),
            port: free_port(),
            api_port: free_port(),
            sentinel_port: free_port(),
            scripting: true,
            memory_limit_mb: Some(4096),
            allowed_cidrs: None,
            public_api: None,
            extra: String::new(),
        }
    }

    pub fn render(&self, dir: &Path) -> String {
        let mut t = format!(
            "data_store_id = \"{}\"\nnode_name = \"{}\"\nplan = \"{}\"\ndata_dir = \"{}\"\nstate_dir = \"{}\"\n\n[redis]\nbind = [\"{}\"]\nport = {}\npassword = \"{PASSWORD}\"\nscripting = {}\n",
            self.data_store_id,
            self.node_name,
            self.plan,
            dir.join("data").display(),
            dir.join("state").display(),
            self.bind,
            self.port,
            self.scripting,
        );
        if let Some(mb) = self.memory_limit_mb {
            t += &format!("memory_limit_mb = {mb}\n");
        }
        t += &format!("\n[api]\nlisten = \"127.0.0.1:{}\"\n", self.api_port);
        if let Some(a) = &self.public_api {
            t += &format!("public_listen = \"{a}\"\n");
        }
        t += &format!("\n[sentinel]\nport = {}\n", self.sentinel_port);
        if let Some(c) = &self.allowed_cidrs {
            let list: Vec<String> = c.iter().map(|s| format!("\"{s}\"")).collect();
            t += &format!("\n[access]\nallowed_cidrs = [{}]\n", list.join(", "));
        }
        t += &self.extra;
        t
    }
}

/// A running (or stopped) agent with its own temporary directory.
pub struct Agent {
    /// A small filesystem mounted on the data directory ([`Agent::use_small_data_disk`]).
    /// Declared before `dir`, because fields drop in order: it is unmounted (after `Drop`
    /// killed the processes using it) before the directory is removed.
    data_disk: Option<SmallDisk>,
    pub spec: NodeSpec,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Behind a mutex so a shared cluster can restart its nodes.
    child: Mutex<Option<Child>>,
    /// Wraps the agent command, e.g. to run it inside a network namespace.
    wrapper: Vec<String>,
    /// The network namespace the agent runs in, if not the test's own.
    netns: Option<String>,
}

impl Agent {
    /// Write the config; the agent is not started yet.
    pub fn prepare(spec: NodeSpec) -> Result<Agent> {
        let dir = tempfile::Builder::new().prefix("rs-test-").tempdir()?;
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, spec.render(dir.path()))?;
        Ok(Agent::from_config(spec, dir, config_path))
    }

    /// An agent whose config someone else wrote at `config_path` (e.g.
    /// packaging/provision-node.sh); `spec` only says where to reach it (bind address, ports)
    /// and `dir` keeps its log. Paths derived from `dir` (`state_dir`, `ca_file`) do not apply.
    pub fn from_config(spec: NodeSpec, dir: tempfile::TempDir, config_path: PathBuf) -> Agent {
        Agent {
            spec,
            config_path,
            child: Mutex::new(None),
            wrapper: Vec::new(),
            netns: None,
            data_disk: None,
            dir,
        }
    }

    /// Run the agent through `wrapper` (e.g. `["ip", "netns", "exec", "ns1"]`).
    pub fn with_wrapper(mut self, wrapper: Vec<String>) -> Agent {
        self.wrapper = wrapper;
        self
    }

    /// Run the agent inside the network namespace `name` (a testbed host); the API is then
    /// reached from inside that namespace too.
    pub fn in_netns(mut self, name: &str) -> Agent {
        self.wrapper = vec!["ip".into(), "netns".into(), "exec".into(), name.into()];
        self.netns = Some(name.to_string());
        self
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.state_dir().join("tls/ca.crt")
    }

    /// Put the data directory on a filesystem of its own of `mb` MiB ([`SmallDisk`]), so a
    /// test can fill it ([`fill_filesystem`]). Call it before the agent first starts.
    pub fn use_small_data_disk(&mut self, mb: u64) -> Result<()> {
        self.data_disk = Some(SmallDisk::mount(&self.data_dir(), mb)?);
        Ok(())
    }

    /// The command that runs `redis-steward run` for this node, with its log file attached.
    pub fn command(&self) -> Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    pub fn start(&self) -> Result<()> {
        let child = self
            .command()?
            .spawn()
            .context("cannot start redis-steward")?;
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Start with a customised command (extra environment, for instance).
    pub fn start_with(&self, f: impl FnOnce(&mut Command)) -> Result<()> {
        let mut cmd = self.command()?;
        f(&mut cmd);
        *self.child.lock().unwrap() = Some(cmd.spawn().context("cannot start redis-steward")?);
        Ok(())
    }

    pub fn start_healthy(&self) -> Result<serde_json::Value> {
        self.start()?;
        self.wait_healthy(Duration::from_secs(20))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.spec.api_port))
    }

    /// GET a path from the agent's API; None if it does not answer 200.
    pub fn api_get(&self, path: &str) -> Option<String> {
        self.api_call(path)
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
    }

    /// GET a path from the agent's API: its status code and body (None: no answer).
    pub fn api_call(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.api_addr();
        match &self.netns {
            // A namespace already torn down has no API to ask.
            Some(ns) if !Path::new("/run/netns").join(ns).exists() => None,
            Some(ns) => crate::netns::run_in_netns(ns, || http_call(addr, path).ok()),
            None => http_call(addr, path).ok(),
        }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.api_get("/status")?).ok()
    }

    /// Wait until the agent reports redis healthy; fails with the agent's log if it exits.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                if s["redis"]["healthy"] == true {
                    return Ok(s);
                }
            }
            if let Some(code) = self.try_exit_code() {
                bail!(
                    "agent exited ({code:?}) before redis was healthy; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!("agent not healthy within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The redis pid the agent reports.
    pub fn redis_pid(&self) -> Option<u32> {
        self.status()?["redis"]["pid"].as_u64().map(|p| p as u32)
    }

    /// Whether the agent process has exited, without waiting: `Some(code)` (`Some(None)`
    /// when a signal ended it), or None while it runs or when it was never started or
    /// already waited for ([`Agent::wait_exit`], [`Agent::stop`]).
    pub fn try_exit_code(&self) -> Option<Option<i32>> {
        let mut guard = self.child.lock().unwrap();
        let c = guard.as_mut()?;
        c.try_wait().ok().flatten().map(|s| s.code())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Wait for the agent process to exit; returns its exit code (None if killed by a signal).
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<i32>> {
        let mut guard = self.child.lock().unwrap();
        let c = guard.as_mut().context("agent not started")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait()? {
                *guard = None;
                return Ok(s.code());
            }
            if Instant::now() >= deadline {
                bail!(
                    "agent did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&self) -> Result<Option<i32>> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(40))
    }

    /// The real redis-cli over TLS, as the customer, against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(Some(PASSWORD), args)
    }

    pub fn cli_as(&self, password: Option<&str>, args: &[&str]) -> Output {
        let mut c = self.redis_cli_command(password);
        c.args(args)
            .output()
            .expect("cannot run redis-cli (apt-get install redis-tools)")
    }

    /// The real redis-cli, over TLS to this node, as the customer when `password` is given;
    /// add arguments (or feed stdin) and run it.
    pub fn redis_cli_command(&self, password: Option<&str>) -> Command {
        let mut c = Command::new("redis-cli");
        c.args(["--tls", "--cacert"]).arg(self.ca_file()).args([
            "-h",
            &self.spec.bind,
            "-p",
            &self.spec.port.to_string(),
            "--no-auth-warning",
        ]);
        if let Some(p) = password {
            c.args(["-a", p]);
        }
        c
    }

    /// redis-cli's stdout for a customer command, trimmed.
    pub fn cmd(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        let mut s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if s.is_empty() {
            s = String::from_utf8_lossy(&o.stderr).trim().to_string();
        }
        s
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut c) = child {
            // Kill the agent; redis follows through PR_SET_PDEATHSIG.
            let redis = self.redis_pid();
            let _ = c.kill();
            let _ = c.wait();
            if let Some(p) = redis {
                wait_pid_gone(p, Duration::from_secs(10));
            }
        }
    }
}

/// A small filesystem of its own mounted on a directory (e.g. an agent's data directory), so
/// a test can run it out of space without touching the machine's disks. It is a tmpfs of a
/// fixed size: no loop device or mkfs needed, it costs memory only for what is written, and
/// a full one fails writes with ENOSPC like any disk. Unmounted on drop (lazily if a process
/// still holds a file on it).
#[derive(Debug)]
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `mb` MiB on `path` (created if missing).
    pub fn mount(path: &Path, mb: u64) -> Result<SmallDisk> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0755")])
            .arg("rs-test-disk")
            .arg(path)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting a {mb} MiB tmpfs on {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount {}", self.path.display());
        }
    }
}

/// A filesystem filled to the last block by one file; the file is removed on drop.
#[derive(Debug)]
pub struct Filled {
    file: PathBuf,
    /// How many bytes the file took.
    pub bytes: u64,
}

impl Filled {
    /// Remove the file: the space is free again.
    pub fn release(self) {}
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.file) {
            eprintln!("removing {}: {e}", self.file.display());
        }
    }
}

/// Fill the filesystem that holds `dir` with one file, `dir/fill-<pid>.tmp`, allocated
/// (fallocate, so it takes no time) in ever smaller pieces until not one block is left.
/// Everything else on it then fails to grow with ENOSPC until the [`Filled`] is dropped.
pub fn fill_filesystem(dir: &Path) -> Result<Filled> {
    use std::os::fd::AsRawFd;
    let file = dir.join(format!("fill-{}.tmp", std::process::id()));
    let f = std::fs::File::create(&file).with_context(|| format!("creating {}", file.display()))?;
    // From here on the file is removed again on any error.
    let mut filled = Filled { file, bytes: 0 };
    let free = free_bytes(dir)?;
    let mut chunk = free.max(4096);
    let mut offset: u64 = 0;
    // Bounded: each failure halves the piece (at most ~40 halvings from any size), each
    // success adds one (and successes are followed by smaller pieces once space runs low).
    for _ in 0..400 {
        if chunk < 4096 {
            break;
        }
        // SAFETY: fallocate(2) on a file descriptor we own.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as i64, chunk as i64) };
        if rc == 0 {
            offset += chunk;
        } else {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOSPC) {
                return Err(err).with_context(|| format!("fallocate in {}", dir.display()));
            }
            chunk /= 2;
        }
    }
    filled.bytes = offset;
    Ok(filled)
}

/// Bytes free for unprivileged use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs(3) writes into the zeroed struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Send `sig` to process `pid` — by pid only, never by name — after checking that the pid
/// still runs `comm` (its `/proc/PID/comm`), so a pid the kernel handed to another process
/// since it was read is never signalled.
pub fn signal_pid(pid: u32, sig: i32, comm: &str) -> Result<()> {
    let actual = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if actual.trim() != comm {
        bail!("pid {pid} is {:?}, not {comm}", actual.trim());
    }
    // SAFETY: kill(2) on a pid just checked to be the test's own process.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill {pid}"));
    }
    Ok(())
}

/// Processes paused with SIGSTOP, by pid; they get SIGCONT, in the order they were
/// stopped, when this is dropped (also while a failing test unwinds), so a test never
/// leaves a process frozen.
#[derive(Debug, Default)]
pub struct Stopped {
    pids: Vec<(u32, String)>,
}

impl Stopped {
    pub fn new() -> Stopped {
        Stopped::default()
    }

    /// SIGSTOP `pid`, which must be running `comm` (see [`signal_pid`]).
    pub fn stop(&mut self, pid: u32, comm: &str) -> Result<()> {
        signal_pid(pid, libc::SIGSTOP, comm)?;
        self.pids.push((pid, comm.to_string()));
        Ok(())
    }

    /// SIGCONT everything stopped (dropping does the same).
    pub fn resume(self) {}
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for (pid, comm) in self.pids.drain(..) {
            // A process killed meanwhile has nothing to resume.
            let _ = signal_pid(pid, libc::SIGCONT, &comm);
        }
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Field 3 (after the parenthesised name) is the state; Z = zombie.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

pub fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    wait_for(timeout, Duration::from_millis(25), || {
        (!pid_alive(pid)).then_some(())
    })
    .is_some()
}

/// A tiny HTTP/1.0 GET (the agent's API is plain HTTP on loopback).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    match http_call(addr, path)? {
        (200, body) => Ok(body),
        (code, _) => bail!("HTTP {code}"),
    }
}

/// A tiny HTTP/1.0 GET: the status code and the body.
pub fn http_call(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_method(addr, "GET", path, None)
}

/// A tiny HTTP/1.0 request with an optional bearer token: the status code and the body.
pub fn http_method(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((code, body.to_string()))
}

/// Run the agent binary with arguments and collect its output (for CLI tests).
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .output()
        .expect("cannot run redis-steward")
}
