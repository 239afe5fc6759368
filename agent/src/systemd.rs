//! systemd integration: READY / STATUS / WATCHDOG / STOPPING over $NOTIFY_SOCKET.
//! Everything is a no-op when the agent was not started by systemd (no NOTIFY_SOCKET).

use sd_notify::NotifyState;
use std::time::Duration;
use tracing::debug;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_status: Option<String>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0u64;
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec))
            .then(|| Duration::from_micros(usec));
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

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}
