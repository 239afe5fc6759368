//! Membership and timing of the election, validated before a [`Node`](super::Node) exists:
//! every error names the setting it is about and the invariant it breaks.

use super::NodeId;
use serde::{Deserialize, Serialize};

/// Parts per million, the unit of `max_clock_drift_ppm`.
const PPM: u128 = 1_000_000;

/// The election's clocks. All durations are on each node's own monotonic clock; no two nodes'
/// clocks are ever compared. The defaults assume 100 ms gossip and aim at a new primary about
/// one second after the old one dies, with an isolated primary fenced well before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// How often the shell steps the node with `Event::Tick` (at most).
    pub tick_ms: u64,
    /// The gossip interval; only used to check the other values.
    pub gossip_interval_ms: u64,
    /// A voter helps replace the primary only after hearing nothing new from it for this long.
    pub failover_timeout_ms: u64,
    /// A primary stops taking writes when its newest majority acknowledgement (or lease
    /// renewal) was sent this long ago.
    pub fence_after_ms: u64,
    /// The longest the shell may take to carry out `Fence` (`CLIENT PAUSE`); past it, the shell
    /// must kill redis instead.
    pub action_latency_ms: u64,
    /// How late the fence guard may wake up after an `Unfence` deadline, before it starts
    /// fencing (which then takes up to `action_latency_ms`). The guard is a separate small
    /// process, so this bound holds while the agent itself is paused or starved.
    pub guard_slack_ms: u64,
    /// The largest rate error of any node's monotonic clock, in parts per million.
    pub max_clock_drift_ppm: u64,
    /// A primary that is alive but does not serve (redis down, or fenced) keeps its voters'
    /// support this long: a redis the supervisor restarts within it causes no failover.
    pub primary_grace_ms: u64,
    /// A campaign without a majority after this long is abandoned and retried later.
    pub election_timeout_ms: u64,
    /// Retries are spread over this window, by node name (deterministic, no RNG).
    pub retry_jitter_ms: u64,
    /// Two nodes: the standby takes the next lease only after the holder's heartbeat has not
    /// changed for this long.
    pub lease_ttl_ms: u64,
    /// Two nodes: how often the holder renews its heartbeat and the standby polls it.
    pub lease_renew_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick_ms: 50,
            gossip_interval_ms: 100,
            failover_timeout_ms: 750,
            fence_after_ms: 500,
            action_latency_ms: 100,
            guard_slack_ms: 20,
            max_clock_drift_ppm: 10_000,
            primary_grace_ms: 2_000,
            election_timeout_ms: 400,
            retry_jitter_ms: 300,
            lease_ttl_ms: 750,
            lease_renew_ms: 100,
        }
    }
}

/// A problem with the election's configuration, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionConfigError {
    #[error("election timing `{key}` must be greater than zero")]
    Zero { key: &'static str },
    #[error("election timing `{key}` = {value} ms: {why}")]
    Invalid {
        key: &'static str,
        value: u64,
        why: String,
    },
    #[error(
        "election timing `fence_after_ms` ({fence_after_ms}) + `{late_key}` ({late_ms}) + \
         `action_latency_ms` ({action_latency_ms}), allowing {max_clock_drift_ppm} ppm of clock \
         drift, must end before `{key}` ({limit_ms}): {who} must stop taking writes before \
         anyone can replace it"
    )]
    FenceNotBeforeTakeover {
        key: &'static str,
        limit_ms: u64,
        fence_after_ms: u64,
        /// `tick_ms` (the agent fences on its next tick) or `guard_slack_ms` (the fence guard
        /// fences a primary whose agent is paused).
        late_key: &'static str,
        late_ms: u64,
        action_latency_ms: u64,
        max_clock_drift_ppm: u64,
        who: &'static str,
    },
    #[error("election `voters` is empty")]
    NoVoters,
    #[error("election voter `{0}` is listed twice")]
    DuplicateVoter(NodeId),
    #[error("this node `{0}` is not one of the election `voters`")]
    NotAVoter(NodeId),
}

impl Timing {
    /// Checks every invariant the safety argument (module docs) relies on.
    pub fn validate(&self) -> Result<(), ElectionConfigError> {
        for (key, value) in [
            ("tick_ms", self.tick_ms),
            ("gossip_interval_ms", self.gossip_interval_ms),
            ("failover_timeout_ms", self.failover_timeout_ms),
            ("fence_after_ms", self.fence_after_ms),
            ("primary_grace_ms", self.primary_grace_ms),
            ("election_timeout_ms", self.election_timeout_ms),
            ("retry_jitter_ms", self.retry_jitter_ms),
            ("lease_ttl_ms", self.lease_ttl_ms),
            ("lease_renew_ms", self.lease_renew_ms),
        ] {
            if value == 0 {
                return Err(ElectionConfigError::Zero { key });
            }
        }
        let invalid =
            |key, value, why: String| Err(ElectionConfigError::Invalid { key, value, why });
        if self.max_clock_drift_ppm >= 100_000 {
            return invalid(
                "max_clock_drift_ppm",
                self.max_clock_drift_ppm,
                "must be below 100000 (10 %); a clock that bad breaks every timeout".into(),
            );
        }
        // Two ways a primary stops taking writes, both before anyone can replace it: its
        // agent fences on the first tick past the bound, and its fence guard at the deadline
        // itself even while the agent does not run at all.
        for (key, limit) in [
            ("failover_timeout_ms", self.failover_timeout_ms),
            ("lease_ttl_ms", self.lease_ttl_ms),
        ] {
            self.fence_before(key, limit, "tick_ms", self.tick_ms, "an isolated primary")?;
            self.fence_before(
                key,
                limit,
                "guard_slack_ms",
                self.guard_slack_ms,
                "a primary whose agent is paused",
            )?;
        }
        // An acknowledgement travels primary → voter → primary through gossip and waits for a
        // tick at each end; a shorter bound would fence a healthy primary.
        let round_trip = 2 * (self.gossip_interval_ms + self.tick_ms);
        if self.fence_after_ms < round_trip {
            return invalid(
                "fence_after_ms",
                self.fence_after_ms,
                format!("must cover a gossip round trip plus a tick at each end ({round_trip} ms)"),
            );
        }
        if self.election_timeout_ms < round_trip {
            return invalid(
                "election_timeout_ms",
                self.election_timeout_ms,
                format!("must cover a gossip round trip plus a tick at each end ({round_trip} ms)"),
            );
        }
        // One lost renewal must not cost the lease: the next one still completes within it.
        if 2 * self.lease_renew_ms >= self.fence_after_ms {
            return invalid(
                "lease_renew_ms",
                self.lease_renew_ms,
                format!(
                    "two renewals must fit in fence_after_ms ({} ms)",
                    self.fence_after_ms
                ),
            );
        }
        if self.primary_grace_ms < self.failover_timeout_ms {
            return invalid(
                "primary_grace_ms",
                self.primary_grace_ms,
                format!(
                    "must be at least failover_timeout_ms ({} ms)",
                    self.failover_timeout_ms
                ),
            );
        }
        Ok(())
    }

    /// The longest an isolated primary may keep taking writes after the newest acknowledgement
    /// (or lease renewal) it relies on was sent, measured on its own clock: its agent fences
    /// on a tick, its guard (when the agent does not run) after `guard_slack_ms`.
    pub fn fence_bound_ms(&self) -> u64 {
        self.fence_after_ms + self.tick_ms.max(self.guard_slack_ms) + self.action_latency_ms
    }

    /// `(F + late) / (1 − ρ) + latency ≤ limit / (1 + ρ)`: the primary's own clock may run slow
    /// and the replacing node's fast, and the shell may take `action_latency_ms` to fence.
    /// Multiplied out by (1 − ρ)(1 + ρ) and 10¹² to stay in integers.
    fn fence_before(
        &self,
        key: &'static str,
        limit_ms: u64,
        late_key: &'static str,
        late_ms: u64,
        who: &'static str,
    ) -> Result<(), ElectionConfigError> {
        let r = u128::from(self.max_clock_drift_ppm);
        let fence = u128::from(self.fence_after_ms + late_ms);
        let lhs =
            fence * (PPM + r) * PPM + u128::from(self.action_latency_ms) * (PPM - r) * (PPM + r);
        let rhs = u128::from(limit_ms) * (PPM - r) * PPM;
        if lhs <= rhs {
            return Ok(());
        }
        Err(ElectionConfigError::FenceNotBeforeTakeover {
            key,
            limit_ms,
            fence_after_ms: self.fence_after_ms,
            late_key,
            late_ms,
            action_latency_ms: self.action_latency_ms,
            max_clock_drift_ppm: self.max_clock_drift_ppm,
            who,
        })
    }
}

/// Who takes part in the election. `voters` are the plan's node slots (including `me`); their
/// number picks the protocol: 1 = always primary, 2 = lease arbiter, 3 or more = majority vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub me: NodeId,
    pub voters: Vec<NodeId>,
    pub timing: Timing,
}

impl Config {
    pub fn validate(&self) -> Result<(), ElectionConfigError> {
        if self.voters.is_empty() {
            return Err(ElectionConfigError::NoVoters);
        }
        let mut sorted: Vec<&NodeId> = self.voters.iter().collect();
        sorted.sort();
        if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ElectionConfigError::DuplicateVoter(pair[0].clone()));
        }
        if !self.voters.contains(&self.me) {
            return Err(ElectionConfigError::NotAVoter(self.me.clone()));
        }
        self.timing.validate()
    }
}
