//! systemd integration: READY / STATUS / WATCHDOG / STOPPING over $NOTIFY_SOCKET.
//! Everything is a no-op when the agent was not started by systemd (no NOTIFY_SOCKET).
//! The supervisor keeps NOTIFY_SOCKET and WATCHDOG_* out of redis-server's environment.

use sd_notify::NotifyState;
use std::time::Duration;
use tracing::debug;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_status: Option<String>,
}

/// The watchdog timeout, as `sd_watchdog_enabled(3)` reads it: WATCHDOG_USEC set and
/// WATCHDOG_PID either unset or naming this process.
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    match pid {
        Some(p) if p.parse::<u32>().ok() != Some(my_pid) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let var = |k| std::env::var(k).ok();
        let watchdog = watchdog_timeout(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
        .filter(|_| enabled);
        Notifier {
            enabled,
            watchdog,
            last_status: None,
        }
    }

    /// How often to ping the watchdog: half of WATCHDOG_USEC, as systemd recommends.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                debug!("sd_notify failed: {e}");
            }
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// STATUS=, sent only when it changed.
    pub fn status(&mut self, status: &str) {
        if self.last_status.as_deref() != Some(status) {
            self.send(&[NotifyState::Status(status)]);
            self.last_status = Some(status.to_string());
        }
    }

    /// Long work before READY (a restore): say what is going on, keep the watchdog fed and
    /// push systemd's start timeout out by a minute, so a big restore is not killed midway.
    pub fn busy(&mut self, status: &str) {
        self.status(status);
        self.send(&[
            NotifyState::ExtendTimeoutUsec(60_000_000),
            NotifyState::Watchdog,
        ]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_env_follows_sd_watchdog_enabled() {
        let s = Some(Duration::from_secs(2));
        assert_eq!(watchdog_timeout(Some("2000000"), None, 7), s);
        assert_eq!(watchdog_timeout(Some("2000000"), Some("7"), 7), s);
        assert_eq!(watchdog_timeout(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("x"), None, 7), None);
        assert_eq!(watchdog_timeout(None, Some("7"), 7), None);
    }
}
