//! Asking the infrastructure for a replacement machine when a node stays unreachable.
//!
//! Exactly one surviving agent asks: the writable primary (fencing guarantees there is at most
//! one at a time; when the lost node was the primary, the one elected after it asks). It runs
//! the operator's `hooks.on_node_lost` command once the node has been unreachable for
//! `node_lost_after`, then again every `node_lost_repeat` until a node answers in that slot
//! (same name, any address). The tracking is pure (`LostNodes::step`); `spawn` runs it on
//! the HA status.

use crate::cluster::hook::run_command;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// A member as the HA status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub alive: bool,
    /// Its last known redis address (`ip:port`).
    pub address: String,
}

/// "Replace the machine of `slot`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub slot: String,
    pub last_address: String,
    pub unreachable_for: Duration,
    /// 1 for the first request of this outage.
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub after: Duration,
    pub repeat: Duration,
}

/// Which slots are unreachable since when, and when each was last asked for.
#[derive(Debug, Default)]
pub struct LostNodes {
    since: BTreeMap<String, u64>,
    asked: BTreeMap<String, (u64, u32)>,
}

impl LostNodes {
    /// `others`: every other slot of the data store. `asker`: this node is the writable
    /// primary. Returns the requests to make now.
    pub fn step(&mut self, now_ms: u64, asker: bool, others: &[Slot], t: Timing) -> Vec<Request> {
        let mut out = Vec::new();
        for s in others {
            if s.alive {
                if self.since.remove(&s.name).is_some() && self.asked.remove(&s.name).is_some() {
                    info!(slot = %s.name, address = %s.address, "a node took the lost slot");
                }
                continue;
            }
            let since = *self.since.entry(s.name.clone()).or_insert(now_ms);
            let down = now_ms.saturating_sub(since);
            if !asker || down < t.after.as_millis() as u64 {
                continue;
            }
            let due = match self.asked.get(&s.name) {
                None => Some(1),
                Some(&(at, n)) => {
                    (now_ms.saturating_sub(at) >= t.repeat.as_millis() as u64).then_some(n + 1)
                }
            };
            if let Some(attempt) = due {
                self.asked.insert(s.name.clone(), (now_ms, attempt));
                out.push(Request {
                    slot: s.name.clone(),
                    last_address: s.address.clone(),
                    unreachable_for: Duration::from_millis(down),
                    attempt,
                });
            }
        }
        out
    }
}

/// What the hook is told (its environment).
pub fn env(data_store: &str, plan: &str, r: &Request) -> Vec<(&'static str, String)> {
    let ip = r
        .last_address
        .rsplit_once(':')
        .map_or(r.last_address.as_str(), |(ip, _)| ip);
    vec![
        ("REDIS_STEWARD_EVENT", "node_lost".into()),
        ("REDIS_STEWARD_DATA_STORE", data_store.into()),
        ("REDIS_STEWARD_PLAN", plan.into()),
        ("REDIS_STEWARD_SLOT", r.slot.clone()),
        ("REDIS_STEWARD_LAST_ADDRESS", ip.to_string()),
        (
            "REDIS_STEWARD_UNREACHABLE_SECS",
            r.unreachable_for.as_secs().to_string(),
        ),
        ("REDIS_STEWARD_ATTEMPT", r.attempt.to_string()),
    ]
}

pub struct Settings {
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub timing: Timing,
    pub data_store: String,
    pub plan: String,
}

/// Watch the HA status and run the hook for each request, one at a time.
pub fn spawn(
    s: Settings,
    mut ha: watch::Receiver<crate::cluster::ha::HaStatus>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut lost = LostNodes::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = ha.changed() => if r.is_err() { return },
            }
            let (asker, others) = {
                let st = ha.borrow_and_update();
                let others: Vec<Slot> = st
                    .members
                    .iter()
                    .filter(|m| !m.is_self)
                    .map(|m| Slot {
                        name: m.name.clone(),
                        alive: m.alive,
                        address: m.redis_addr.clone().unwrap_or_default(),
                    })
                    .collect();
                (st.role == "primary" && st.writable, others)
            };
            let now = started.elapsed().as_millis() as u64;
            for r in lost.step(now, asker, &others, s.timing) {
                warn!(
                    slot = %r.slot, address = %r.last_address, attempt = r.attempt,
                    "node unreachable for {} s: asking for a replacement (hooks.on_node_lost)",
                    r.unreachable_for.as_secs()
                );
                let env = env(&s.data_store, &s.plan, &r);
                match run_command(&s.argv, &env, s.timeout).await {
                    Ok(()) => info!(slot = %r.slot, "replacement hook succeeded"),
                    Err(e) => {
                        warn!(slot = %r.slot, "replacement hook failed: {e}; asking again in {} s", s.timing.repeat.as_secs())
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        after: Duration::from_secs(60),
        repeat: Duration::from_secs(300),
    };

    fn slot(name: &str, alive: bool) -> Slot {
        Slot {
            name: name.into(),
            alive,
            address: format!("10.0.0.{}:6379", name.len()),
        }
    }

    /// Seconds at which requests for "b" are made over a scripted outage.
    fn asks(script: &[(u64, bool, bool)]) -> Vec<(u64, u32)> {
        let mut l = LostNodes::default();
        let mut out = Vec::new();
        for &(sec, asker, b_alive) in script {
            for r in l.step(sec * 1000, asker, &[slot("a", true), slot("b", b_alive)], T) {
                assert_eq!(r.slot, "b");
                out.push((sec, r.attempt));
            }
        }
        out
    }

    #[test]
    fn asks_after_the_delay_then_at_a_slow_pace_until_the_slot_is_taken() {
        let mut script: Vec<(u64, bool, bool)> = (0..=700).map(|s| (s, true, false)).collect();
        script.extend((701..=800).map(|s| (s, true, true)));
        assert_eq!(asks(&script), vec![(60, 1), (360, 2), (660, 3)]);
    }

    #[test]
    fn only_the_primary_asks_and_a_new_primary_takes_over_the_asking() {
        // Not the primary for the first 100 s, then promoted (the lost node was the primary).
        let script: Vec<(u64, bool, bool)> = (0..=200).map(|s| (s, s >= 100, false)).collect();
        // Unreachable since 0: the new primary asks at once, counting from when it first saw
        // the node down.
        assert_eq!(asks(&script), vec![(100, 1)]);
        let never: Vec<(u64, bool, bool)> = (0..=1000).map(|s| (s, false, false)).collect();
        assert!(asks(&never).is_empty());
    }

    #[test]
    fn a_short_outage_asks_nothing_and_a_new_outage_starts_over() {
        let mut script: Vec<(u64, bool, bool)> = (0..50).map(|s| (s, true, false)).collect();
        script.extend((50..60).map(|s| (s, true, true)));
        script.extend((60..130).map(|s| (s, true, false)));
        assert_eq!(asks(&script), vec![(120, 1)]);
    }

    #[test]
    fn the_hook_environment_names_the_slot() {
        let r = Request {
            slot: "node-2".into(),
            last_address: "10.0.0.2:6379".into(),
            unreachable_for: Duration::from_secs(61),
            attempt: 2,
        };
        let env: BTreeMap<_, _> = env("ds", "premium", &r).into_iter().collect();
        assert_eq!(env["REDIS_STEWARD_SLOT"], "node-2");
        assert_eq!(env["REDIS_STEWARD_LAST_ADDRESS"], "10.0.0.2");
        assert_eq!(env["REDIS_STEWARD_PLAN"], "premium");
        assert_eq!(env["REDIS_STEWARD_UNREACHABLE_SECS"], "61");
        assert_eq!(env["REDIS_STEWARD_EVENT"], "node_lost");
    }
}
