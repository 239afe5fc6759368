//! Electing a primary and fencing the old one: the pure rules, no I/O.
//!
//! One [`Node`] per agent decides, from what it is told, what its redis should be. The shell
//! (gossip, redis, object store, disk, clock) feeds it [`Event`]s, each with the node's
//! monotonic time, and carries out the [`Action`]s of the returned [`Decision`] in order; the
//! decision's `reason` says what was decided and why, and `changed` tells a transition (log at
//! info) from a routine step (debug). The style is raft-rs' `RawNode` and Patroni's
//! `_run_cycle`: every step re-evaluates the whole situation.
//!
//! # Epochs
//!
//! Every primary has an epoch, and no epoch ever has two. A node takes writes only while it is
//! the primary of the newest epoch it knows (a newer primary in gossip, a vote it gave another
//! node in a newer epoch, or a newer lease demote it) *and* while it can prove that nobody can
//! have replaced it yet (below). Gossip carries each node's [`PublishedState`]: role, epoch,
//! data position, vote, campaign and acknowledgement.
//!
//! # Acknowledgements: how a primary knows it still has its majority
//!
//! Every published state carries a `heartbeat`: the publisher's own clock when it made it.
//! Each replica acknowledges one *leader* (the primary of the newest epoch not below its own
//! vote, or the candidate it voted for) by publishing an [`Ack`] echoing the newest leader
//! heartbeat it received. Two rules make this a lease:
//!
//! * **Voters wait.** A node helps replace nobody (votes for another candidate, campaigns, or
//!   takes a lease) until `failover_timeout_ms` after the last heartbeat it acknowledged, nor
//!   within `failover_timeout_ms` of its own start (it may have acknowledged someone just
//!   before a crash). Once it has voted for someone in epoch E it acknowledges no primary of
//!   an older epoch again.
//! * **Primaries check.** A primary takes writes only while a majority of the configured voters
//!   (itself included) acknowledged one of its heartbeats sent within `fence_after_ms`
//!   (`fence_after_ms` of its own clock; it compares only its own clock readings). That is a
//!   *deadline* — the newest such heartbeat + `fence_after_ms` — which [`Action::Unfence`]
//!   carries to the shell, and the shell enforces it by itself: a primary whose agent stops
//!   running (paused, deadlocked, starved) must stop taking writes at the deadline all the
//!   same, since its voters go on counting down. A deadline once handed out stays safe, so
//!   deadlines only ever move later within one unfenced stretch.
//!
//! Why no two primaries ever take writes at once: say primary A takes writes at time t and B is
//! promoted in a newer epoch. A relies on a majority that acknowledged a heartbeat A sent at
//! h ≥ t − F; B was elected by a majority; the two majorities share a node X. If X is A, A
//! voted for B, which it does only while fenced and which demotes it. Otherwise X acknowledged
//! h before voting for B (after the vote it acknowledges nothing older), so it voted at least
//! `failover_timeout_ms` after receiving h, which was after A sent it. [`Timing::validate`] checks that `fence_after_ms + tick_ms` on A's clock
//! plus `action_latency_ms` ends before `failover_timeout_ms` on X's clock even with both
//! clocks off by `max_clock_drift_ppm` — so A is fenced before B exists. Delayed or replayed
//! gossip cannot break this: an old acknowledgement names an old heartbeat, which A reads as
//! old. A primary that crashes comes back as a replica: it regains writes only through a new
//! election, so its clock restarting does not matter.
//!
//! A primary that is alive but does not serve (its redis down, or fenced because its own
//! acknowledgements do not reach it) keeps its voters' support for `primary_grace_ms`, so a
//! redis the supervisor restarts in time causes no failover; after that its voters stop
//! acknowledging it and the failover timeout runs.
//!
//! # Three or more voters: votes
//!
//! * **Pre-vote.** Nobody starts a campaign (a new epoch) unless it hears enough live voters,
//!   within a failover timeout, to make a majority with itself: a node cut off from the
//!   others cannot win, and every epoch it burned alone would force the healthy side to elect
//!   again after the heal (raft's pre-vote, read from the gossip every node already has).
//! * **Trigger.** A replica that has acknowledged no live primary for `failover_timeout_ms`
//!   first *detaches* its redis from replication ([`Action::Detach`]) and waits for a probe
//!   showing it, so the position it compares can no longer move. A fenced primary counts as a
//!   replica of a dead primary (itself) and may run too.
//! * **Deference.** It lets a live, healthy peer with better data (or equal data and a lower
//!   name) run first, for up to one failover timeout: most elections have one candidate.
//! * **Campaign.** It persists a vote for itself in epoch E+1 (E = the highest epoch anyone
//!   mentioned) and publishes a [`Campaign`] with its [`Position`].
//! * **Votes.** A voter grants at most one vote per epoch (the vote is persisted before it is
//!   published: [`Action::Persist`] precedes the [`Action::Publish`] revealing it, and
//!   votes only move to higher epochs), only to a candidate whose position is at least its own,
//!   only once its own data is frozen (or it streams from that candidate, whose data then
//!   contains its own), and only if it has itself heard no live primary for the failover
//!   timeout — unless the candidate is the very node it follows. Among candidates it prefers
//!   the best position, then the lowest name.
//! * **Winning.** Votes from a majority of the *configured* voters (not of the live ones) win;
//!   the voters' acknowledgements arrive with their votes, so the new primary can take writes
//!   at once.
//! * **Losing.** A candidate gives up when a primary of its epoch or newer appears, when a
//!   better candidate runs in the same epoch (it withdraws and waits longer), when a newer
//!   epoch starts, or after `election_timeout_ms`; it retries after a backoff derived from its
//!   rank and name (deterministic jitter, no RNG).
//! * **Catching up.** A node never follows (replicates from) a primary of an epoch below its
//!   own vote — it would acknowledge to `WAIT` writes the primary it voted for may lack. So a
//!   writable primary that sees a live voter whose vote is newer than its epoch (a failed
//!   campaign left it there) re-elects itself in a new epoch, and that voter follows again.
//!
//! Positions are `(epoch of the stream the data comes from, replication offset)`, compared
//! like Raft's (last term, last index): an old primary's writes that nobody else has are a
//! history the cluster abandoned. A replica learns its data's epoch exactly because
//! replication is scoped to an epoch (see the shell's duties): while a `Follow` of epoch e may
//! feed it, a link up or any change of offset means it holds e's data.
//!
//! # Two voters: the lease
//!
//! Two nodes have no majority without both, so a create-only object in the backup bucket
//! arbitrates (`PutMode::Create`, which every object_store backend supports atomically,
//! including the local folder). Suggested names: `election/lease-{E:020}` (body: the holder's
//! name) and `election/heartbeat-{E:020}` (body: the holder's renewal time); the numbers are
//! zero-padded so that listings sort.
//!
//! * **Acquire.** Being primary of epoch E+1 means having created `lease/E+1`; exactly one
//!   create succeeds. Epochs are created contiguously (E+1 only after E was seen), so a poll
//!   finds the newest by GETting upwards until one is missing.
//! * **Renew.** The holder renews every `lease_renew_ms`: GET `lease/E+1` (if it exists, it has
//!   lost) and put its heartbeat object with the time the renewal was *sent*. The lease is
//!   valid until that time + `fence_after_ms` — but a renewal counts only if its answer came
//!   back while the lease was still valid (the chain rule): a later one may have landed after
//!   the standby's last look, so only a new epoch is safe then, and the holder re-acquires
//!   one at once.
//! * **Take over.** The standby creates `lease/E+1` only when (1) the newest poll *sent* at
//!   least `lease_ttl_ms` after it first saw the current heartbeat still shows it unchanged
//!   (polls are stamped with when they were asked, since a slow answer proves nothing about
//!   the time it arrives), (2) it has acknowledged no live primary for the failover timeout,
//!   (3) its redis is healthy, and (4) it is not an empty node replacing one with data.
//! * **Writes.** The holder takes writes while its lease is valid *or* its peer acknowledges it
//!   by gossip. A takeover needs both the lease quiet and gossip silent, so losing only the
//!   link between two healthy nodes promotes nobody, and an object store outage alone fences
//!   nobody. A holder that can neither renew nor reach its peer fences itself.
//! * **Redis down.** A holder whose redis stays unhealthy past `primary_grace_ms` stops
//!   renewing, so the standby can take over.
//!
//! Why safe: every renewal the holder counts was sent before the standby's newest look at the
//! heartbeat plus the TTL, or was seen by the standby; by induction over counted renewals the
//! holder's lease ends `lease_ttl_ms` (minus drift, tick and latency, checked by `validate`)
//! after a heartbeat the standby saw change, and the standby waits that long after seeing it.
//!
//! # One voter
//!
//! It is primary of epoch max(1, persisted) and always takes writes.
//!
//! # Restarts
//!
//! Only [`Durable`] survives (the last vote, the epoch of the data held and where that data
//! stood in its stream); the shell writes it before carrying out anything after a `Persist`.
//! A restarted redis reports offset 0 whatever it holds, so the node resumes the count where
//! the last redis process stood (the probe's `run` tells processes apart). That count is a
//! lower bound (redis may have received more after the last probe): until its redis links to
//! an upstream the node votes only for a newer epoch's data or for the primary its data came
//! from ([`Campaign::origin`]), which claims at least what its replicas publish. A primary
//! whose redis restarted gives up its epoch, since its replicas that resync count the same
//! writes lower than those that have not. A restarted node fences its redis first
//! (it may still be a writable primary from before), detaches it from replication (it must
//! hold only data from streams it chose), waits a failover timeout before helping replace
//! anyone, never runs again in an epoch it already voted in, and never resumes an old
//! primaryship: it regains writes only by winning a new epoch.
//!
//! # Timings
//!
//! | [`Timing`] field       | default  | why                                                    |
//! |------------------------|----------|--------------------------------------------------------|
//! | `tick_ms`              | 50 ms    | fencing reacts within one tick                         |
//! | `gossip_interval_ms`   | 100 ms   | only used to check the others                          |
//! | `failover_timeout_ms`  | 750 ms   | ~7 gossip rounds: dead primary replaced in ~0.9–1.1 s  |
//! | `fence_after_ms`       | 500 ms   | + tick + latency, with 1 % drift, ends before 750 ms   |
//! | `action_latency_ms`    | 100 ms   | the shell's budget to apply `CLIENT PAUSE`             |
//! | `guard_slack_ms`       | 20 ms    | how late the fence guard may wake after a deadline     |
//! | `max_clock_drift_ppm`  | 10 000   | 1 %; real clocks drift ~100 ppm                        |
//! | `primary_grace_ms`     | 2 000 ms | a crashed redis restarted within it: no failover       |
//! | `election_timeout_ms`  | 400 ms   | a vote needs a gossip round trip and two ticks         |
//! | `retry_jitter_ms`      | 300 ms   | spreads retries by rank and name                       |
//! | `lease_ttl_ms`         | 750 ms   | same bound as the failover timeout                     |
//! | `lease_renew_ms`       | 100 ms   | two renewals fit in `fence_after_ms`                   |
//!
//! An isolated primary stops taking writes `fence_after_ms + tick_ms` after sending the newest
//! heartbeat a majority acknowledged, i.e. about 0.4–0.6 s after it was cut off (≤
//! [`Timing::fence_bound_ms`] plus a gossip round trip), before anyone else can be elected.
//! One whose agent has stopped is fenced by the shell's guard `fence_after_ms +
//! guard_slack_ms` after that heartbeat (plus `action_latency_ms` to apply it); `validate`
//! checks both paths against `failover_timeout_ms` and `lease_ttl_ms`.
//!
//! # What the shell must guarantee
//!
//! The argument above holds only if the shell:
//!
//! 1. carries out actions in order, making `Persist` durable (write, fsync, rename) before
//!    anything after it, and applies `Fence` within `action_latency_ms` (else kills redis);
//!    enforces each `Unfence`'s deadline without this node's help (it fences within
//!    `guard_slack_ms + action_latency_ms` of the deadline even if the agent never runs
//!    again) and opens writes only before the deadline (an `Unfence` carried out late opens
//!    nothing) — `fence_guard` in this agent;
//! 2. delivers a `RedisProbe` taken after every action it already carried out (after a
//!    `Detach` in particular), and passes the node's monotonic clock (`tokio::time::Instant`;
//!    rate within `max_clock_drift_ppm`) with every event;
//! 3. scopes replication to an epoch: on `Promote { epoch }` it drops replica connections and
//!    sets the replication password to one derived from the epoch, `Follow` uses the password
//!    of the followed epoch, and a node serves replicas only between `Promote` and `Demote` or
//!    a restart (else a replica can silently take a new epoch's data, or a primary back from a
//!    crash with fewer writes can wipe its replicas by a full resync);
//! 4. starts redis fenced and without `replicaof`, re-applies a replica's `Follow` after every
//!    redis restart (a primary's redis stays fenced: the node gives up that epoch), and lets redis die with the agent (the agent owns it as a child; e.g.
//!    `PR_SET_PDEATHSIG`), since an agent that is gone cannot fence;
//! 5. uses a store whose create-only put is atomic and whose reads are linearizable (S3, GCS,
//!    Azure, the local folder; not s3rver or s3s-fs), and copies `asked_at` / `heartbeat` from
//!    each lease request into its answer.
//!
//! # Testing
//!
//! `tests.rs` has one test per rule and scripted scenarios; `sim.rs` is a deterministic
//! simulation driving thousands of random fault schedules through real [`Node`]s and checking
//! the safety invariants after every step (see its docs for the invariants and how to replay a
//! failing seed).

mod config;
mod node;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use config::{Config, ElectionConfigError, Timing};
pub use node::Node;

use serde::{Deserialize, Serialize};
use std::fmt;

/// A voter's slot name from the plan (`node-1`, …). A replacement node takes over the name of
/// the node it replaces, so votes and epochs stay attached to the slot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(name: impl Into<String>) -> NodeId {
        NodeId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> NodeId {
        NodeId::new(name)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How advanced a node's data is: the epoch of the primary whose replication stream it holds,
/// then the replication offset within it. Ordered like Raft's (last log term, last log index):
/// an old primary that took writes nobody else has still loses to a replica of the newer
/// primary, because its extra bytes are a history the cluster already abandoned.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset {} of epoch {}", self.offset, self.epoch)
    }
}

/// A vote: `candidate` may become primary of `epoch` with this voter's support.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    pub epoch: u64,
    pub candidate: NodeId,
}

/// What must survive a restart (Raft's `HardState`). The shell writes it atomically and
/// durably (write, fsync, rename) when it sees [`Action::Persist`], before carrying out any
/// later action of the same decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// The last vote cast; votes only ever move to higher epochs, so this is also the one
    /// vote of every epoch up to it.
    pub vote: Option<Vote>,
    /// The epoch of the primary whose data this node holds (the `epoch` of its [`Position`]).
    pub synced_epoch: u64,
    /// Where that data stood in `synced_epoch`'s stream at the last healthy probe. A redis
    /// that restarts (it loads its AOF) counts its replication offset from 0 again, with a new
    /// replication id, whatever it holds; without this a restarted replica would vote for any
    /// candidate of its epoch, one without the writes it had acknowledged included.
    #[serde(default)]
    pub offset: u64,
    /// This node was the primary of `synced_epoch`: the stream its data comes from started
    /// here, so it holds every other node's data of that epoch.
    #[serde(default)]
    pub origin: bool,
}

/// A node's role as it publishes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Restarted and not yet told anything by its own redis.
    #[default]
    Starting,
    Replica,
    /// Primary of its `epoch`; it takes writes only while `writable` (otherwise it is fenced).
    Primary,
}

/// A request for votes: "make me primary of `epoch`; my data is at `position`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub epoch: u64,
    pub position: Position,
    /// The candidate was the primary of `position.epoch`, so its data holds every other
    /// node's data of that epoch (a voter that knows only a lower bound of its own data can
    /// still vote for it).
    #[serde(default)]
    pub origin: bool,
}

/// A voter's acknowledgement of the node it supports: "I received `primary`'s heartbeat
/// `heartbeat` (a reading of the primary's own clock) and will not help anyone else become
/// primary until `failover_timeout_ms` after I stop receiving newer ones". The primary counts
/// these to know it still has a majority; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub primary: NodeId,
    pub epoch: u64,
    pub heartbeat: u64,
}

/// What a node gossips about itself (one chitchat key, JSON). Only the owner writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedState {
    pub role: Role,
    /// Primary: its epoch. Replica: the epoch of the primary it follows (0 if none).
    pub epoch: u64,
    /// Primary: itself. Replica: the primary it follows.
    pub primary: Option<NodeId>,
    /// Primary taking writes (not fenced).
    pub writable: bool,
    /// The publisher's monotonic clock (ms) when it made this state. Only compared for
    /// change by others; only the publisher itself interprets it as a time.
    pub heartbeat: u64,
    pub redis_healthy: bool,
    pub position: Position,
    pub vote: Option<Vote>,
    pub campaign: Option<Campaign>,
    pub ack: Option<Ack>,
    /// A primary handing over to another node (planned switchover): it has stopped taking
    /// writes for good in its epoch, and its data ends at `position`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
}

/// "I, the primary of my epoch, have paused writes for good; my data ends at `position`;
/// `to` should take over." Voters that acknowledge this primary vote for `to` at once when
/// its campaign shows at least `position`, and `to` campaigns (or takes the lease) as soon as
/// its data reaches it — no failover timeout to wait, since the old primary is already fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub to: NodeId,
    pub position: Position,
}

/// What gossip says about another voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub node: NodeId,
    /// Alive according to the failure detector (chitchat's live nodes).
    pub alive: bool,
    /// Its latest published state, if gossip has one (possibly stale for a dead node).
    pub state: Option<PublishedState>,
}

/// The object store's answer to a lease request (two-node data stores only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseResult {
    /// Answer to [`Action::PollLease`]: the highest existing lease `epoch` (0 if none), its
    /// `holder` and the holder's latest `heartbeat` object (None before the first renewal).
    /// `asked_at` is copied from the request.
    Heartbeat {
        asked_at: u64,
        epoch: u64,
        holder: Option<NodeId>,
        heartbeat: Option<u64>,
    },
    /// The create-only put of `lease/{epoch}` succeeded.
    Acquired { epoch: u64 },
    /// `lease/{epoch}` already exists and belongs to `holder` (answer to an acquire, or to a
    /// renewal that found a higher lease).
    AlreadyTaken { epoch: u64, holder: NodeId },
    /// The heartbeat of `epoch` now holds `heartbeat` (copied from the request).
    Renewed { epoch: u64, heartbeat: u64 },
    /// The store did not answer (timeout, network, 5xx). The request may or may not have
    /// taken effect.
    Unreachable,
}

/// Something that happened. Every event comes with the node's monotonic time (see
/// [`Node::step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed; nothing else is new.
    Tick,
    /// The current gossip view of the other voters.
    Peers(Vec<PeerView>),
    /// The node's own redis: `healthy` when it answers, its replication `offset` as redis
    /// reports it, `upstream` = the node it replicates from when the link is up
    /// (`master_link_status:up`), and `run`, which tells one redis process from the next (its
    /// pid): a restarted redis reports offset 0 whatever data it loaded.
    RedisProbe {
        healthy: bool,
        offset: u64,
        upstream: Option<NodeId>,
        run: u64,
    },
    /// The object store answered a lease request.
    Lease(LeaseResult),
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make this durable before doing anything that follows it.
    Persist(Durable),
    /// Gossip this state (the node's one key).
    Publish(PublishedState),
    /// Become primary of `epoch` (`REPLICAOF NO ONE`). Writes stay paused until `Unfence`.
    ///
    /// Replication is scoped to an epoch: the shell drops existing replica connections and
    /// sets the replication password to one derived from `epoch`, and serves replicas only
    /// between `Promote` and `Demote` (or a restart). Otherwise a replica could slide into
    /// the new epoch's data without knowing it (and undervalue its position in the next
    /// election), or a primary back from a crash with fewer writes (AOF `everysec`) could
    /// wipe its replicas' newer data with a full resync.
    Promote { epoch: u64 },
    /// Replicate from `primary`, primary of `epoch` (`REPLICAOF`, with `epoch`'s password).
    Follow { primary: NodeId, epoch: u64 },
    /// Stop replicating but keep the data and stay read-only (e.g. `REPLICAOF` towards a
    /// closed local port). Sent before a replica votes or campaigns, so the position it
    /// compares cannot move under it; the next `RedisProbe` must be taken after it.
    Detach,
    /// Stop being primary: stop serving replicas and drop client connections so clients
    /// rediscover the primary. Always preceded by `Fence`.
    Demote,
    /// Stop accepting writes (`CLIENT PAUSE … WRITE`), within `action_latency_ms`, and
    /// forget any `Unfence` deadline. Also the state to restore after redis restarts.
    Fence,
    /// Accept writes (`CLIENT UNPAUSE`) until `until` (this node's clock, ms; `u64::MAX`:
    /// no deadline), and stop accepting them then **without the node's help**: the shell
    /// hands the deadline to something that runs even while the agent is paused, deadlocked
    /// or starved (the fence guard), which fences at the deadline within
    /// `guard_slack_ms + action_latency_ms`. Sent again with a later `until` whenever the
    /// node's acknowledgements (or lease) extend it; a deadline already past is refused, so
    /// an `Unfence` carried out late never opens writes. Every deadline the node hands out
    /// stays a safe bound for good (see "Acknowledgements"), so a later, smaller one never
    /// needs to shorten it: only `Fence` does.
    Unfence { until: u64 },
    /// Read the lease store from `from_epoch` upwards: GET `lease/{from_epoch+1}`, `+2`, … until
    /// one is missing, then the heartbeat of the highest found. Answer with
    /// [`LeaseResult::Heartbeat`] carrying `asked_at`.
    PollLease { from_epoch: u64, asked_at: u64 },
    /// Create-only put (`PutMode::Create`) of `lease/{epoch}` naming this node.
    TryAcquireLease { epoch: u64 },
    /// GET `lease/{epoch+1}` (answer `AlreadyTaken` if it exists), then put the heartbeat
    /// object of `epoch` with `heartbeat` and answer `Renewed`.
    RenewLease { epoch: u64, heartbeat: u64 },
}

/// The outcome of one [`Node::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One or more sentences saying what was decided and why.
    pub reason: String,
    /// True when something changed that is worth logging at info level (a vote, a
    /// campaign, a promotion, fencing); false for routine steps (log at debug).
    pub changed: bool,
}
