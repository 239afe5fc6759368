//! The promotion hook: an operator command run each time this node becomes primary, so that
//! something outside (a DNS name, a load balancer) can point at the new primary. Also how
//! any operator command runs (`run_command`: timeout, process group, output in the error).
//!
//! The hook never holds up a promotion: the HA loop only sends it a message. It runs with a
//! timeout (the whole process group is killed when it expires), and a failure is logged and
//! retried with backoff for as long as this node is still the primary of that epoch — a DNS
//! record left on the old primary is worse than a late one. A newer promotion or a demotion
//! replaces whatever was pending.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// What the hook is told about a promotion (also its environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub data_store: String,
    pub node: String,
    /// The redis address clients should use, `ip:port`.
    pub address: String,
    pub epoch: u64,
}

impl Promotion {
    /// The environment the hook runs with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let (ip, port) = self
            .address
            .rsplit_once(':')
            .map(|(ip, port)| (ip.to_string(), port.to_string()))
            .unwrap_or_else(|| (self.address.clone(), String::new()));
        vec![
            ("REDIS_STEWARD_EVENT", "promote".into()),
            ("REDIS_STEWARD_DATA_STORE", self.data_store.clone()),
            ("REDIS_STEWARD_NODE", self.node.clone()),
            ("REDIS_STEWARD_ADDRESS", self.address.clone()),
            ("REDIS_STEWARD_IP", ip),
            ("REDIS_STEWARD_PORT", port),
            ("REDIS_STEWARD_EPOCH", self.epoch.to_string()),
        ]
    }
}

/// Wait before retry `attempt` (1 = the first retry): 1 s doubling to at most 60 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Counts for /metrics and status.
#[derive(Debug, Default)]
pub struct HookCounters {
    pub runs: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
}

/// The hook's handle: `promoted(Some(..))` when this node became primary, `None` when it
/// stopped being one.
#[derive(Clone)]
pub struct HookHandle {
    tx: watch::Sender<Option<Promotion>>,
    pub counters: Arc<HookCounters>,
}

impl HookHandle {
    pub fn promoted(&self, p: Option<Promotion>) {
        self.tx.send_replace(p);
    }
}

/// Start the hook runner for `argv` (absolute program path first).
pub fn spawn(argv: Vec<String>, timeout: Duration) -> HookHandle {
    let (tx, rx) = watch::channel(None);
    let counters = Arc::new(HookCounters::default());
    tokio::spawn(run(argv, timeout, rx, counters.clone()));
    HookHandle { tx, counters }
}

async fn run(
    argv: Vec<String>,
    timeout: Duration,
    mut rx: watch::Receiver<Option<Promotion>>,
    counters: Arc<HookCounters>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    'next: loop {
        let current = rx.borrow_and_update().clone();
        if let Some(p) = current {
            let mut attempt = 0u32;
            loop {
                counters.runs.fetch_add(1, Relaxed);
                match run_once(&argv, &p, timeout).await {
                    Ok(()) => {
                        info!(epoch = p.epoch, "promotion hook succeeded");
                        break;
                    }
                    Err(e) => {
                        counters.failures.fetch_add(1, Relaxed);
                        attempt += 1;
                        let wait = retry_delay(attempt);
                        warn!(
                            epoch = p.epoch,
                            attempt,
                            "promotion hook failed: {e}; retrying in {} s",
                            wait.as_secs()
                        );
                        // A newer promotion or a demotion replaces this one.
                        match tokio::time::timeout(wait, rx.changed()).await {
                            Ok(Ok(())) => continue 'next,
                            Ok(Err(_)) => return,
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        // Also wakes for a change that arrived while the hook ran.
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn run_once(argv: &[String], p: &Promotion, timeout: Duration) -> Result<(), String> {
    run_command(argv, &p.env(), timeout).await
}

/// Run an operator command (argv, no shell) once with `env` added; an error says how it
/// failed (exit status, timeout, spawn error) and carries the end of what it printed.
pub async fn run_command(
    argv: &[String],
    env: &[(&'static str, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever the hook started too.
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stderr).to_string();
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            Err(format!("{} ({})", out.status, tail(&text, 400)))
        }
        Ok(Err(e)) => Err(format!("waiting for it: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: signalling the process group we created for the hook.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            Err(format!("timed out after {} s; killed", timeout.as_secs()))
        }
    }
}

fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().rev().nth(max) {
        Some((i, _)) => format!("…{}", &s[i..]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn promotion(epoch: u64) -> Promotion {
        Promotion {
            data_store: "ds-1".into(),
            node: "node-b".into(),
            address: "10.0.0.2:6380".into(),
            epoch,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    /// Polls `f` for up to 15 s: long enough for process starts on a busy machine.
    async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..600 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        let d: Vec<u64> = (1..=9).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn environment_names_the_promotion() {
        let env = promotion(7).env();
        let get = |k| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("REDIS_STEWARD_IP"), "10.0.0.2");
        assert_eq!(get("REDIS_STEWARD_PORT"), "6380");
        assert_eq!(get("REDIS_STEWARD_EPOCH"), "7");
        assert_eq!(get("REDIS_STEWARD_NODE"), "node-b");
        assert_eq!(get("REDIS_STEWARD_DATA_STORE"), "ds-1");
    }

    #[tokio::test]
    async fn runs_once_per_promotion_with_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("calls");
        let h = spawn(
            sh(&format!(
                "echo \"$REDIS_STEWARD_NODE $REDIS_STEWARD_ADDRESS $REDIS_STEWARD_EPOCH\" >> {}",
                out.display()
            )),
            Duration::from_secs(5),
        );
        h.promoted(Some(promotion(3)));
        assert!(
            wait_until(|| std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() == 1))
                .await
        );
        h.promoted(Some(promotion(4)));
        assert!(
            wait_until(|| std::fs::read_to_string(&out).is_ok_and(|s| s.lines().count() == 2))
                .await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "node-b 10.0.0.2:6380 3\nnode-b 10.0.0.2:6380 4\n"
        );
        assert_eq!(h.counters.failures.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_failing_hook_is_retried_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("n");
        // Fails on its first run, succeeds on the second.
        let h = spawn(
            sh(&format!(
                "echo x >> {0}; [ $(wc -l < {0}) -ge 2 ] || {{ echo 'dns api said no' >&2; exit 3; }}",
                n.display()
            )),
            Duration::from_secs(5),
        );
        h.promoted(Some(promotion(1)));
        assert!(wait_until(|| h.counters.runs.load(Relaxed) == 2).await);
        assert_eq!(h.counters.failures.load(Relaxed), 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(h.counters.runs.load(Relaxed), 2, "retried after success");
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The pid file appears whole (written aside, then renamed), and the 3 s limit leaves
        // a slow shell time to write it before it is killed.
        let h = spawn(
            sh(&format!(
                "sleep 30 & echo $! > {0}.tmp && mv {0}.tmp {0}; wait",
                pidfile.display()
            )),
            Duration::from_secs(3),
        );
        h.promoted(Some(promotion(1)));
        assert!(wait_until(|| h.counters.failures.load(Relaxed) >= 1).await);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild is gone too (or a zombie about to be reaped by init).
        let alive = wait_until(|| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        })
        .await;
        assert!(alive, "the hook's child survived the timeout");
        // Demoted: no more retries.
        h.promoted(None);
        let runs = h.counters.runs.load(Relaxed);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(h.counters.runs.load(Relaxed), runs);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_logged_failure() {
        let h = spawn(vec!["/nonexistent/hook".into()], Duration::from_secs(1));
        h.promoted(Some(promotion(1)));
        assert!(wait_until(|| h.counters.failures.load(Relaxed) >= 1).await);
        let e = run_once(
            &["/nonexistent/hook".into()],
            &promotion(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(e.contains("cannot start /nonexistent/hook"), "{e}");
    }
}
