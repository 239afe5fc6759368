//! The per-node state machine. See the module docs of `election` for the protocol and the
//! argument for why it is safe; comments here point at the rule each piece implements.

use super::config::{Config, ElectionConfigError, Timing};
use super::{
    Ack, Action, Campaign, Decision, Durable, Event, Handoff, LeaseResult, NodeId, PeerView,
    Position, PublishedState, Role, Vote,
};
use std::collections::BTreeMap;

/// The protocol follows from the number of voters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Single,
    Lease,
    Quorum,
}

/// What gossip last told us about one other voter.
#[derive(Debug, Clone, Default)]
struct Peer {
    alive: bool,
    state: Option<PublishedState>,
    /// When (our clock) its heartbeat last changed: the last time we heard from it.
    heard_at: Option<u64>,
    /// Our previous look at gossip: the news may have arrived any time after it (long before
    /// `heard_at` if this agent was stopped in between).
    heard_after: Option<u64>,
}

/// The node we acknowledge: the primary of the newest epoch we accept, or the candidate we
/// voted for.
#[derive(Debug, Clone)]
struct Leader {
    node: NodeId,
    epoch: u64,
    seen_heartbeat: Option<u64>,
    /// When we last saw it primary of `epoch`, writable and with healthy redis (or when it
    /// became our leader). Support is withdrawn `primary_grace_ms` after that.
    serving_at: u64,
    acked: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct PrimaryState {
    epoch: u64,
    /// Two nodes: writes are safe until then on the lease alone (our clock).
    lease_valid_until: u64,
}

#[derive(Debug, Clone, Copy)]
struct ActiveCampaign {
    epoch: u64,
    started_at: u64,
    /// The first step after the one that started it: the shell has persisted and published
    /// the campaign by then (a slow fsync must not eat the election timeout).
    published_at: Option<u64>,
    position: Position,
    origin: bool,
}

/// The lease store as this node last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseSeen {
    epoch: u64,
    holder: Option<NodeId>,
    heartbeat: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Acquire {
    epoch: u64,
    /// When we first asked to create this epoch's lease: the create landed after it.
    first_sent_at: u64,
    last_sent_at: u64,
}

#[derive(Debug, Clone, Default)]
struct LeaseTrack {
    seen: Option<LeaseSeen>,
    /// When (our clock) an answer first showed the current `seen`.
    changed_at: u64,
    /// When we sent the newest poll whose answer still showed `seen`.
    polled_at: Option<u64>,
    /// When we last sent a poll (polls are rate-limited).
    last_poll_at: Option<u64>,
    next_renew_at: u64,
    acquire: Option<Acquire>,
}

/// Whether our redis replicates. Positions are compared in elections, so a replica stops
/// replicating first (`Detach`) and waits for a probe confirming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replication {
    /// Just started: redis may still replicate from whatever it followed before.
    Unknown,
    Following,
    Detaching,
    /// Replicating from nobody (confirmed by a probe, or we are or were primary).
    Detached,
}

#[derive(Debug, Clone, Default)]
struct OwnRedis {
    probed: bool,
    healthy: bool,
    offset: u64,
    upstream: Option<NodeId>,
    unhealthy_since: Option<u64>,
    /// The `Follow` whose stream may still feed our redis (until a detach is confirmed).
    stream: Option<(NodeId, u64)>,
    /// Offset of the previous healthy probe since that `Follow`.
    baseline: Option<u64>,
    /// The newest epoch whose data we are known to hold.
    holds_epoch: u64,
    /// The redis process our offsets come from (see `observe_redis`).
    run: Option<u64>,
    /// Added to the offset redis reports: where its count stands in the stream of the epoch
    /// whose data it holds.
    shift: u64,
    /// Our position's offset at the last healthy probe.
    held: u64,
    /// When that probe was taken.
    probed_at: u64,
    /// Our redis restarted while this agent ran (not just at its start).
    restarted: bool,
    /// `offset` is exactly where our data stands. After a restart (of redis, or of the agent,
    /// which restarts redis) it is only a lower bound: what redis received after our last
    /// probe is not counted. Exact again once linked to an upstream or promoted.
    exact: bool,
}

/// Actions and log-worthy notes gathered during one step.
#[derive(Default)]
struct Out {
    actions: Vec<Action>,
    notes: Vec<String>,
}

impl Out {
    fn act(&mut self, action: Action) {
        self.actions.push(action);
    }

    fn note(&mut self, note: String) {
        self.notes.push(note);
    }
}

/// One voter's election and fencing logic. Pure: the shell feeds it events with the time and
/// carries out the actions it returns, in order.
#[derive(Debug, Clone)]
pub struct Node {
    me: NodeId,
    /// Sorted; includes `me`.
    voters: Vec<NodeId>,
    mode: Mode,
    t: Timing,
    durable: Durable,
    now: u64,
    /// The last time we may have acknowledged a primary (or were one ourselves): we help
    /// replace nobody until `failover_timeout_ms` after it. Starts at our start time, since
    /// before a crash we may have acknowledged someone.
    evidence_at: u64,
    redis: OwnRedis,
    peers: BTreeMap<NodeId, Peer>,
    primary: Option<PrimaryState>,
    following: Option<(NodeId, u64)>,
    replication: Replication,
    leader: Option<Leader>,
    /// What the shell was last told; None right after start (so the first step fences).
    fenced: Option<bool>,
    /// The deadline of the last `Unfence`: writes stop then unless extended.
    write_until: u64,
    campaign: Option<ActiveCampaign>,
    next_campaign_at: u64,
    attempts: u32,
    /// Campaigns in a row that timed out with nobody competing: each doubles the next
    /// campaign's timeout, since the votes were probably still on their way.
    timeouts: u32,
    defer_since: Option<u64>,
    lease: LeaseTrack,
    /// A planned switchover this primary is carrying out.
    switchover: Option<Switchover>,
    /// The newest epoch this node handed over (or tried to): it never takes writes in it again.
    handed_over: u64,
    /// Writes had stopped by then (our clock) when we last fenced: only a probe taken after it
    /// shows our final data.
    still_after: u64,
    /// When we last looked at gossip (or started).
    peers_seen_at: u64,
}

/// A switchover in progress on the primary.
#[derive(Debug, Clone)]
struct Switchover {
    to: NodeId,
    started_at: u64,
    /// Our offset from the first probe after writes were paused; published from then on.
    frozen: Option<u64>,
}

/// A switchover target may be this far behind the primary when asked (it must then catch up
/// within [`SWITCHOVER_TIMEOUT_MS`] while writes are paused).
pub const SWITCHOVER_MAX_LAG_BYTES: u64 = 64 << 20;
/// How long writes stay paused waiting for the target before the switchover is abandoned.
pub const SWITCHOVER_TIMEOUT_MS: u64 = 5_000;

impl Node {
    /// A node (re)starting at `now_ms` with what it persisted before. Its redis may still be a
    /// writable primary from before a crash, so its first decision fences it.
    pub fn new(config: Config, durable: Durable, now_ms: u64) -> Result<Node, ElectionConfigError> {
        config.validate()?;
        let Config {
            me,
            mut voters,
            timing,
        } = config;
        voters.sort();
        let mode = match voters.len() {
            1 => Mode::Single,
            2 => Mode::Lease,
            _ => Mode::Quorum,
        };
        Ok(Node {
            me,
            voters,
            mode,
            t: timing,
            durable,
            now: now_ms,
            evidence_at: now_ms,
            redis: OwnRedis::default(),
            peers: BTreeMap::new(),
            primary: None,
            following: None,
            replication: Replication::Unknown,
            leader: None,
            fenced: None,
            write_until: 0,
            campaign: None,
            next_campaign_at: now_ms,
            attempts: 0,
            timeouts: 0,
            defer_since: None,
            lease: LeaseTrack {
                changed_at: now_ms,
                ..LeaseTrack::default()
            },
            switchover: None,
            handed_over: 0,
            still_after: 0,
            peers_seen_at: now_ms,
        })
    }

    /// Feed one event observed at `now_ms` (this node's monotonic clock; a smaller value than
    /// before is treated as no time passing). Time comes with every event, not only with
    /// ticks, so that what gossip says is stamped with when we learned it: a stale stamp would
    /// make a voter give up on a primary too early.
    pub fn step(&mut self, now_ms: u64, event: Event) -> Decision {
        self.now = self.now.max(now_ms);
        let mut out = Out::default();
        match event {
            Event::Tick => {}
            Event::Peers(views) => self.observe_peers(views),
            Event::RedisProbe {
                healthy,
                offset,
                upstream,
                run,
            } => self.observe_redis(healthy, offset, upstream, run),
            Event::Lease(result) => self.observe_lease(result, &mut out),
        }
        self.cycle(&mut out);
        let changed = !out.notes.is_empty();
        let reason = if changed {
            out.notes.join("; ")
        } else {
            self.summary()
        };
        Decision {
            actions: out.actions,
            reason,
            changed,
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Primary, not fenced, and before the deadline of the last `Unfence` (past it the shell's
    /// guard has fenced redis, whether or not this node has stepped since).
    pub fn is_writable(&self) -> bool {
        self.primary.is_some() && self.fenced == Some(false) && self.now < self.write_until
    }

    /// The epoch this node is primary of, if it is one (writable or fenced).
    pub fn primary_epoch(&self) -> Option<u64> {
        self.primary.map(|p| p.epoch)
    }

    /// A planned switchover, asked of the primary at `now_ms`: hand over to `to` (or to the
    /// best replica). On success writes are paused at once and for good in this epoch; the
    /// target takes over as soon as it holds everything (see [`Handoff`]). If it has not
    /// within [`SWITCHOVER_TIMEOUT_MS`], this node runs for a new epoch itself. Refused, with
    /// the reason, when this node is not the writable primary or no suitable target exists.
    pub fn switchover(&mut self, now_ms: u64, to: Option<NodeId>) -> Result<Decision, String> {
        self.now = self.now.max(now_ms);
        let Some(p) = self.primary else {
            return Err("this node is not the primary".into());
        };
        if self.mode == Mode::Single {
            return Err("a one-node data store has no other node to hand over to".into());
        }
        if let Some(sw) = &self.switchover {
            return Err(format!("a switchover to {} is already under way", sw.to));
        }
        if !self.is_writable() {
            return Err(format!(
                "this primary is fenced (epoch {}); try again when it takes writes",
                p.epoch
            ));
        }
        if let Some(t) = &to {
            if *t == self.me {
                return Err(format!("{t} is already the primary"));
            }
            if !self.voters.contains(t) {
                return Err(format!("{t} is not a node of this data store"));
            }
        }
        let mut best: Option<(&NodeId, Position)> = None;
        let mut refusals = Vec::new();
        for (id, peer) in &self.peers {
            if to.as_ref().is_some_and(|t| t != id) {
                continue;
            }
            match self.switchover_refusal(id, peer, p.epoch) {
                Some(why) => refusals.push(format!("{id} {why}")),
                None => {
                    let pos = peer.state.as_ref().map(|s| s.position).unwrap_or_default();
                    if best.is_none_or(|(_, b)| pos > b) {
                        best = Some((id, pos));
                    }
                }
            }
        }
        let Some((target, _)) = best else {
            return Err(if refusals.is_empty() {
                format!(
                    "{} has not been heard from",
                    to.map_or("no replica".into(), |t| t.to_string())
                )
            } else {
                refusals.join("; ")
            });
        };
        let target = target.clone();
        let mut out = Out::default();
        self.switchover = Some(Switchover {
            to: target.clone(),
            started_at: self.now,
            frozen: None,
        });
        self.handed_over = self.handed_over.max(p.epoch);
        self.fence(&mut out);
        out.note(format!(
            "switchover to {target}: writes paused; handing over as soon as it holds all my data"
        ));
        out.act(Action::Publish(self.published()));
        Ok(Decision {
            actions: out.actions,
            reason: out.notes.join("; "),
            changed: true,
        })
    }

    /// Why `peer` cannot take over from us (primary of `epoch`) now, if it cannot.
    fn switchover_refusal(&self, id: &NodeId, peer: &Peer, epoch: u64) -> Option<String> {
        let Some(state) = peer.state.as_ref() else {
            return Some("has not been heard from".into());
        };
        let heard = peer.heard_at.map(|t| self.now - t);
        if !peer.alive || heard.is_none_or(|h| h >= self.t.failover_timeout_ms) {
            return Some(format!(
                "is not reachable (last heard {})",
                heard.map_or("never".into(), |h| format!("{h} ms ago"))
            ));
        }
        if !state.redis_healthy {
            return Some("has an unhealthy redis".into());
        }
        if state.role != Role::Replica
            || state.primary.as_ref() != Some(&self.me)
            || state.epoch != epoch
        {
            return Some(format!("is not replicating from me in epoch {epoch}"));
        }
        if self.redis.upstream.is_some() {
            return Some("cannot be judged: my own redis still replicates".into());
        }
        if state.position.epoch != self.durable.synced_epoch {
            return Some(format!(
                "is still catching up: it holds data of epoch {}, not yet of epoch {}",
                state.position.epoch, self.durable.synced_epoch
            ));
        }
        let lag = self.redis.offset.saturating_sub(state.position.offset);
        if lag > SWITCHOVER_MAX_LAG_BYTES {
            return Some(format!(
                "is too far behind ({lag} bytes; at most {SWITCHOVER_MAX_LAG_BYTES})"
            ));
        }
        let _ = id;
        None
    }

    /// The node a switchover under way hands over to.
    pub fn switchover_target(&self) -> Option<&NodeId> {
        self.switchover.as_ref().map(|s| &s.to)
    }

    /// What this node would publish now.
    pub fn published(&self) -> PublishedState {
        let (role, epoch, primary) = match (self.primary, &self.following) {
            (Some(p), _) => (Role::Primary, p.epoch, Some(self.me.clone())),
            (None, Some((node, epoch))) => (Role::Replica, *epoch, Some(node.clone())),
            (None, None) if self.redis.probed => (Role::Replica, 0, None),
            (None, None) => (Role::Starting, 0, None),
        };
        PublishedState {
            role,
            epoch,
            primary,
            writable: self.is_writable(),
            heartbeat: self.now,
            redis_healthy: self.redis.healthy,
            position: self.position(),
            vote: self.durable.vote.clone(),
            campaign: self.campaign.map(|c| Campaign {
                epoch: c.epoch,
                position: c.position,
                origin: c.origin,
            }),
            ack: self.ack(),
            handoff: self.handoff(),
        }
    }

    fn handoff(&self) -> Option<Handoff> {
        let s = self.switchover.as_ref()?;
        Some(Handoff {
            to: s.to.clone(),
            position: Position {
                epoch: self.durable.synced_epoch,
                offset: s.frozen?,
            },
        })
    }

    // ---- observing -------------------------------------------------------------------------

    fn observe_peers(&mut self, views: Vec<PeerView>) {
        let before = std::mem::replace(&mut self.peers_seen_at, self.now);
        for view in views {
            if view.node == self.me || !self.voters.contains(&view.node) {
                continue;
            }
            let peer = self.peers.entry(view.node).or_default();
            peer.alive = view.alive;
            if let Some(state) = view.state {
                if peer
                    .state
                    .as_ref()
                    .is_none_or(|old| old.heartbeat != state.heartbeat)
                {
                    peer.heard_at = Some(self.now);
                    peer.heard_after = Some(before);
                }
                peer.state = Some(state);
            }
        }
    }

    fn observe_redis(&mut self, healthy: bool, reported: u64, upstream: Option<NodeId>, run: u64) {
        let offset = if healthy {
            self.continuous_offset(reported, upstream.as_ref(), run)
        } else {
            0
        };
        if healthy {
            self.redis.unhealthy_since = None;
        } else if self.redis.unhealthy_since.is_none() {
            self.redis.unhealthy_since = Some(self.now);
        }
        // Replication is scoped to an epoch, so while a `Follow` of epoch e may feed us our data
        // changes only by e's stream: a link up, or any change of offset, means we hold e's
        // data. (A redis restart in between could lose data instead, hence healthy probes.)
        if let Some((node, epoch)) = &self.redis.stream {
            let linked = upstream.as_ref() == Some(node);
            let moved = self.redis.baseline.is_some_and(|b| b != offset);
            if healthy && (linked || moved) {
                self.redis.holds_epoch = self.redis.holds_epoch.max(*epoch);
            }
        }
        self.redis.baseline = healthy.then_some(offset);
        if self.replication == Replication::Detaching && upstream.is_none() {
            self.replication = Replication::Detached;
            self.redis.stream = None;
        }
        // The first probe once a switchover's pause has surely taken effect (the shell has
        // `action_latency_ms` to apply it): our data ends here.
        let settled = self.now.saturating_sub(self.t.action_latency_ms);
        if let Some(sw) = self
            .switchover
            .as_mut()
            .filter(|sw| healthy && sw.started_at <= settled)
        {
            sw.frozen.get_or_insert(offset);
        }
        self.redis.probed = true;
        self.redis.healthy = healthy;
        self.redis.offset = offset;
        if healthy {
            self.redis.held = offset;
            self.redis.probed_at = self.now;
        }
        self.redis.upstream = upstream;
    }

    /// Turns the offset redis reports into our data's place in the stream of the epoch whose
    /// data we hold. Redis counts from 0 again when it restarts (it loads its AOF and takes a
    /// new replication id), though it holds all it held before — its process writes the AOF
    /// before it answers, and a clean stop flushes it — so a new process resumes our count
    /// where the last one stood (after the agent's own restart: where [`Durable::offset`]
    /// kept it). Redis's own count is right again once it is linked to an upstream (a resync
    /// adopts the upstream's count, and a primary's redis never restarts within its epoch:
    /// see `check_demotion`) or once we are promoted (a new epoch counts as our redis does).
    fn continuous_offset(&mut self, reported: u64, upstream: Option<&NodeId>, run: u64) -> u64 {
        if self.redis.run != Some(run) {
            let before = match self.redis.run {
                Some(_) => self.redis.held,
                None => self.durable.offset,
            };
            self.redis.restarted = self.redis.run.is_some();
            self.redis.exact = self.durable.synced_epoch == 0;
            self.redis.shift = before.saturating_sub(reported);
            self.redis.run = Some(run);
        }
        if upstream.is_some() {
            self.redis.shift = 0;
            self.redis.exact = true;
        }
        reported + self.redis.shift
    }

    fn observe_lease(&mut self, result: LeaseResult, out: &mut Out) {
        if self.mode != Mode::Lease {
            return;
        }
        match result {
            LeaseResult::Heartbeat {
                asked_at,
                epoch,
                holder,
                heartbeat,
            } => {
                if self.lease_seen(LeaseSeen {
                    epoch,
                    holder,
                    heartbeat,
                }) {
                    self.lease.polled_at = Some(self.lease.polled_at.unwrap_or(0).max(asked_at));
                }
            }
            LeaseResult::Acquired { epoch } => self.lease_won(epoch, out),
            LeaseResult::AlreadyTaken { epoch, holder } => {
                let mine = holder == self.me;
                self.lease_seen(LeaseSeen {
                    epoch,
                    holder: Some(holder),
                    heartbeat: None,
                });
                if mine {
                    // Our own earlier create landed but its answer was lost.
                    self.lease_won(epoch, out);
                } else if self.lease.acquire.is_some_and(|a| a.epoch <= epoch) {
                    self.lease.acquire = None;
                }
            }
            LeaseResult::Renewed { epoch, heartbeat } => {
                let now = self.now;
                let fence_after = self.t.fence_after_ms;
                if let Some(p) = self.primary.as_mut().filter(|p| p.epoch == epoch) {
                    // The chain rule: a renewal extends the lease only if it completed while
                    // the lease was still valid. One that lands later may have raced with the
                    // standby's takeover unseen; only a new epoch is safe then.
                    if now < p.lease_valid_until {
                        p.lease_valid_until = p.lease_valid_until.max(heartbeat + fence_after);
                    }
                }
            }
            LeaseResult::Unreachable => {}
        }
    }

    /// Records a lease store reading; false if it is older than what we know.
    fn lease_seen(&mut self, seen: LeaseSeen) -> bool {
        if let Some(old) = &self.lease.seen {
            if seen.epoch < old.epoch {
                return false;
            }
            if *old == seen {
                return true;
            }
        }
        self.lease.seen = Some(seen);
        self.lease.changed_at = self.now;
        self.lease.polled_at = None;
        true
    }

    fn lease_won(&mut self, epoch: u64, out: &mut Out) {
        let Some(acquire) = self.lease.acquire.filter(|a| a.epoch == epoch) else {
            return;
        };
        if self.durable.vote != Some(self.vote_for_me(epoch)) {
            return;
        }
        self.lease.acquire = None;
        self.lease_seen(LeaseSeen {
            epoch,
            holder: Some(self.me.clone()),
            heartbeat: None,
        });
        self.lease.next_renew_at = self.now;
        let why = match self.primary {
            Some(p) => format!(
                "my lease of epoch {} lapsed; re-acquired epoch {epoch}",
                p.epoch
            ),
            None => format!("acquired the lease of epoch {epoch}; promoting"),
        };
        // The create landed after we first sent it, so the standby saw it no earlier.
        let valid_until = acquire.first_sent_at + self.t.fence_after_ms;
        self.promote(epoch, valid_until, why, out);
    }

    // ---- the cycle ---------------------------------------------------------------------------

    fn cycle(&mut self, out: &mut Out) {
        if self.fenced.is_none() {
            // Before anything else: redis may still be a writable primary from before.
            self.fence(out);
            out.note("starting fenced".into());
        }
        if self.mode == Mode::Single {
            self.run_single(out);
        } else {
            self.track_leader();
            self.note_synced(out);
            self.check_demotion(out);
            self.run_switchover(out);
            self.freeze(out);
            if self.mode == Mode::Quorum {
                self.grant_vote(out);
                // Acknowledging the candidate we just voted for is evidence of a live leader:
                // no campaign of our own against it.
                self.track_leader();
                self.run_campaign(out);
            } else {
                self.run_lease(out);
            }
            // A vote or a campaign may have changed whom we acknowledge.
            self.track_leader();
            self.follow(out);
        }
        self.apply_fence(out);
        if self.is_writable() {
            self.evidence_at = self.now;
        }
        // Kept for a restart of the agent, when redis restarts with it and counts from 0.
        if self.mode != Mode::Single && self.redis.healthy && self.durable.offset != self.redis.held
        {
            self.durable.offset = self.redis.held;
            out.act(Action::Persist(self.durable.clone()));
        }
        out.act(Action::Publish(self.published()));
    }

    fn run_single(&mut self, out: &mut Out) {
        if self.primary.is_some() {
            return;
        }
        let epoch = self.durable.vote.as_ref().map_or(1, |v| v.epoch.max(1));
        self.durable.vote = Some(self.vote_for_me(epoch));
        self.promote(
            epoch,
            0,
            format!("single voter: primary of epoch {epoch}"),
            out,
        );
    }

    /// Picks whom to acknowledge and, when it published something new, acknowledges it.
    fn track_leader(&mut self) {
        let want = self.pick_leader();
        let same = match (&self.leader, &want) {
            (Some(l), Some((node, epoch))) => l.node == *node && l.epoch == *epoch,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.leader = want.map(|(node, epoch)| Leader {
                node,
                epoch,
                seen_heartbeat: None,
                serving_at: self.now,
                acked: None,
            });
        }
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let Some(state) = self.peers.get(&leader.node).and_then(|p| p.state.as_ref()) else {
            return;
        };
        if leader.seen_heartbeat == Some(state.heartbeat) {
            return;
        }
        leader.seen_heartbeat = Some(state.heartbeat);
        if state.role == Role::Primary
            && state.epoch == leader.epoch
            && state.writable
            && state.redis_healthy
        {
            leader.serving_at = self.now;
        }
        if self.now - leader.serving_at < self.t.primary_grace_ms {
            leader.acked = Some(state.heartbeat);
            self.evidence_at = self.evidence_at.max(self.now);
        }
    }

    /// The primary of the newest epoch not below our own vote, or the candidate we voted for
    /// if that is newer. Acknowledging anything older than our vote could let a primary we
    /// voted to replace keep writing.
    fn pick_leader(&self) -> Option<(NodeId, u64)> {
        let floor = self.durable.vote.as_ref().map_or(0, |v| v.epoch);
        let claim = self
            .highest_claim()
            .filter(|(_, e)| *e >= floor && self.primary.is_none_or(|p| *e > p.epoch));
        let voted = self
            .durable
            .vote
            .as_ref()
            .filter(|v| v.candidate != self.me)
            .map(|v| (v.candidate.clone(), v.epoch));
        match (claim, voted) {
            (Some(c), Some(v)) => Some(if c.1 >= v.1 { c } else { v }),
            (c, v) => c.or(v),
        }
    }

    fn check_demotion(&mut self, out: &mut Out) {
        let restarted = std::mem::take(&mut self.redis.restarted);
        let Some(p) = self.primary else {
            return;
        };
        let why = if restarted {
            // Its count began again at 0: replicas that resync from it would count the same
            // writes lower than replicas that have not yet, and an election comparing them
            // could pick one without writes another holds. A new epoch numbers the new count.
            format!(
                "my redis restarted, so its replication stream starts again; only a new epoch \
                 (not {}) may number it",
                p.epoch
            )
        } else if let Some((node, epoch)) = self.highest_claim().filter(|(_, e)| *e > p.epoch) {
            format!(
                "{node} is primary of epoch {epoch}, newer than my epoch {}",
                p.epoch
            )
        } else if let Some(v) = self
            .durable
            .vote
            .as_ref()
            .filter(|v| v.candidate != self.me && v.epoch > p.epoch)
        {
            format!("I voted for {} in epoch {}", v.candidate, v.epoch)
        } else if let Some(seen) = self
            .lease
            .seen
            .as_ref()
            .filter(|s| s.epoch > p.epoch && s.holder.as_ref() != Some(&self.me))
        {
            let holder = seen.holder.as_ref().map_or("another node", |h| h.as_str());
            format!("the lease of epoch {} belongs to {holder}", seen.epoch)
        } else {
            return;
        };
        self.demote(why, out);
    }

    // ---- three or more voters ----------------------------------------------------------------

    /// Stops replicating right after a start (our data must come only from streams we chose),
    /// and, with three or more voters, once an election is near (no primary heard, or the node
    /// we follow campaigns) so that our position is final when we compare it.
    fn freeze(&mut self, out: &mut Out) {
        let why = match self.replication {
            Replication::Unknown => "starting".to_string(),
            Replication::Following if self.mode == Mode::Quorum && self.primary.is_none() => {
                let leader_campaigns = self
                    .leader
                    .as_ref()
                    .and_then(|l| self.peers.get(&l.node)?.state.as_ref()?.campaign)
                    .is_some();
                let primary_serves = self
                    .highest_claim()
                    .is_some_and(|(node, _)| self.serving(&node));
                if primary_serves || (!self.primary_dead() && !leader_campaigns) {
                    return;
                }
                format!("no primary heard for {} ms", self.now - self.evidence_at)
            }
            _ => return,
        };
        self.replication = Replication::Detaching;
        self.following = None;
        out.act(Action::Detach);
        out.note(format!("stopped replicating to hold my data still ({why})"));
    }

    /// Grants at most one vote per epoch, to the best live candidate at least as advanced as
    /// we are, and only if we would not keep a live primary of ours from being replaced.
    fn grant_vote(&mut self, out: &mut Out) {
        // A redis that does not answer (restarting, loading a large AOF) reports no offset:
        // what it holds is unknown, so no candidate can be shown to hold at least as much. A
        // vote then elected a candidate without writes this node had acknowledged.
        if self.is_writable() || !self.redis.probed || !self.redis.healthy {
            return;
        }
        let now = self.now;
        let mine = self.position();
        let floor = self
            .durable
            .vote
            .as_ref()
            .map_or(0, |v| v.epoch)
            .max(self.highest_claim_epoch())
            .max(self.primary.map_or(0, |p| p.epoch));
        // (candidate, its campaign, whether we replicate from it as the serving primary,
        // whether our primary hands over to it)
        let mut best: Option<(&NodeId, Campaign, bool, bool)> = None;
        for (id, peer) in &self.peers {
            let Some(state) = &peer.state else {
                continue;
            };
            let Some(c) = state.campaign else {
                continue;
            };
            let fresh = self.live(peer);
            let streaming = self.streams_from(id, state);
            let handoff = self.handoff_to(id).is_some_and(|end| c.position >= end);
            // Knowing only a lower bound of our data, of the candidates of our epoch only the
            // primary it came from surely holds all of it. (A newer epoch's data beats ours
            // whatever our offset, as in Raft's log comparison.)
            let holds_mine = c.position >= mine
                && (self.redis.exact
                    || c.position.epoch > mine.epoch
                    || (c.origin && c.position.epoch == mine.epoch));
            if c.epoch <= floor || !fresh || !(streaming || handoff || holds_mine) {
                continue;
            }
            // Peers iterate by name, so on equal positions the lowest name wins.
            if best.is_none_or(|(_, b, _, _)| c.position > b.position) {
                best = Some((id, c, streaming, handoff));
            }
        }
        let Some((id, c, streaming, handoff)) = best else {
            return;
        };
        let id = id.clone();
        // Unless our data is a prefix of the candidate's, it must not move while we compare.
        // (A handoff's end position bounds our data: it only ever follows that primary.)
        if !streaming && !handoff && !self.position_final() {
            return;
        }
        let for_my_leader = self.leader.as_ref().is_some_and(|l| l.node == id);
        if !for_my_leader && !handoff && !self.primary_dead() {
            return;
        }
        self.durable.vote = Some(Vote {
            epoch: c.epoch,
            candidate: id.clone(),
        });
        out.act(Action::Persist(self.durable.clone()));
        let data = if streaming {
            "I replicate from it".to_string()
        } else {
            format!("its {} is at least my {mine}", c.position)
        };
        let because = if handoff {
            "the primary is handing over to it".to_string()
        } else if for_my_leader {
            "it is the node I acknowledge".to_string()
        } else {
            format!("no primary heard for {} ms", now - self.evidence_at)
        };
        out.note(format!(
            "voted for {id} in epoch {}: {data}, and {because}",
            c.epoch
        ));
        self.campaign = None;
        if self.primary.is_some() {
            self.demote(format!("gave my vote to {id}"), out);
        }
    }

    fn run_campaign(&mut self, out: &mut Out) {
        if let Some(c) = self.campaign.as_mut() {
            c.published_at.get_or_insert(self.now);
            let c = *c;
            self.progress_campaign(c, out);
            return;
        }
        if self.is_writable() {
            self.catch_up(out);
            return;
        }
        if self.switchover.is_some() {
            return;
        }
        let now = self.now;
        if let Some((from, _)) = self.handed_to_me() {
            if now >= self.next_campaign_at {
                self.start_campaign(format!("{from} is handing over to me"), out);
            }
            return;
        }
        if !self.position_final() || !self.redis.healthy || now < self.next_campaign_at {
            return;
        }
        if !self.primary_dead() {
            self.defer_since = None;
            return;
        }
        if self.deferring() {
            return;
        }
        let why = format!("no primary heard for {} ms", now - self.evidence_at);
        self.start_campaign(why, out);
    }

    /// Persists a vote for ourselves in a new epoch above every epoch anyone mentioned, and
    /// publishes the campaign (in the same decision, after the `Persist`) — but only while we
    /// hear from enough live voters to make a majority with us (raft's pre-vote, from what
    /// gossip already shows): a node cut off from the others cannot win, and each epoch it
    /// burned alone would make the healthy side elect again once the partition heals.
    fn start_campaign(&mut self, why: String, out: &mut Out) {
        if !self.hears_majority() {
            return;
        }
        let epoch = self.max_known_epoch() + 1;
        let position = self.position();
        self.durable.vote = Some(self.vote_for_me(epoch));
        out.act(Action::Persist(self.durable.clone()));
        self.campaign = Some(ActiveCampaign {
            epoch,
            started_at: self.now,
            published_at: None,
            position,
            origin: self.durable.origin,
        });
        self.defer_since = None;
        out.note(format!(
            "{why}; campaigning in epoch {epoch} with {position}"
        ));
    }

    /// A writable primary re-elects itself in a new epoch when a live voter's vote is in a
    /// higher epoch than ours (a failed campaign left it there): that voter will neither
    /// acknowledge nor follow a primary of an epoch below its vote.
    fn catch_up(&mut self, out: &mut Out) {
        let Some(p) = self.primary else {
            return;
        };
        if self.now < self.next_campaign_at {
            return;
        }
        let Some((peer, voted)) = self.lagging_voter(p.epoch) else {
            return;
        };
        let why = format!(
            "{peer} voted in epoch {voted}, above my epoch {}, and will not follow me until I \
             hold a newer one",
            p.epoch
        );
        self.start_campaign(why, out);
    }

    /// A live peer that voted, for someone else, in an epoch above `epoch`.
    fn lagging_voter(&self, epoch: u64) -> Option<(NodeId, u64)> {
        self.peers.iter().find_map(|(id, p)| {
            let live = self.live(p);
            let vote = p.state.as_ref()?.vote.as_ref()?;
            (live && vote.epoch > epoch && vote.candidate != self.me)
                .then(|| (id.clone(), vote.epoch))
        })
    }

    fn progress_campaign(&mut self, c: ActiveCampaign, out: &mut Out) {
        let now = self.now;
        let mine = self.vote_for_me(c.epoch);
        let votes = 1 + self
            .peers
            .values()
            .filter(|p| p.state.as_ref().and_then(|s| s.vote.as_ref()) == Some(&mine))
            .count();
        let majority = self.voters.len() / 2 + 1;
        if votes >= majority && self.redis.healthy {
            let why = format!(
                "won epoch {} with {votes} of {} votes; promoting",
                c.epoch,
                self.voters.len()
            );
            self.promote(c.epoch, 0, why, out);
            return;
        }
        let backoff = self.backoff();
        let (why, wait) = if !self.redis.healthy {
            ("my redis is unhealthy".to_string(), backoff)
        } else if let Some((node, epoch)) = self.highest_claim().filter(|(_, e)| *e >= c.epoch) {
            (format!("{node} is primary of epoch {epoch}"), backoff)
        } else if let Some(better) = self.better_candidate(c) {
            (
                format!("{better} is a better candidate in the same epoch"),
                self.t.election_timeout_ms + backoff,
            )
        } else if let Some(newer) = Some(self.max_known_epoch()).filter(|e| *e > c.epoch) {
            (format!("epoch {newer} has begun"), backoff)
        } else if now - c.published_at.unwrap_or(c.started_at) >= self.election_timeout() {
            self.timeouts = self.timeouts.saturating_add(1);
            (
                format!(
                    "only {votes} of the {majority} votes needed after {} ms",
                    now - c.started_at
                ),
                backoff,
            )
        } else {
            return;
        };
        self.campaign = None;
        self.attempts = self.attempts.saturating_add(1);
        self.next_campaign_at = now + wait;
        out.note(format!(
            "gave up campaigning in epoch {}: {why}; may retry in {wait} ms",
            c.epoch
        ));
    }

    /// How long a campaign waits for votes: `election_timeout_ms`, doubled for each campaign
    /// in a row that timed out uncontested (up to 8×). A vote's round trip includes gossip
    /// rounds and two fsyncs and can outlast the configured timeout on a live cluster; giving
    /// up then only starts the same round trip again in a newer epoch, while the late votes
    /// arrive for the abandoned one.
    fn election_timeout(&self) -> u64 {
        self.t.election_timeout_ms << self.timeouts.min(3)
    }

    /// A candidate in the same epoch with a better position, or an equal one and a lower name.
    fn better_candidate(&self, c: ActiveCampaign) -> Option<NodeId> {
        self.peers.iter().find_map(|(id, p)| {
            let other = p.state.as_ref()?.campaign?;
            let better = other.epoch == c.epoch
                && (other.position > c.position || (other.position == c.position && *id < self.me));
            better.then(|| id.clone())
        })
    }

    /// Retry delay: nodes take turns by rank in the sorted voter list, plus deterministic
    /// jitter from the name and attempt, so simultaneous candidates drift apart without an
    /// RNG and tests stay reproducible.
    fn backoff(&self) -> u64 {
        let n = self.voters.len() as u64;
        let slot = (self.t.retry_jitter_ms / n).max(1);
        let rank = self.voters.iter().position(|v| *v == self.me).unwrap_or(0) as u64;
        rank * slot + fnv1a(self.me.as_str(), self.attempts) % slot
    }

    // ---- two voters: the lease ---------------------------------------------------------------

    /// The holder renews every `lease_renew_ms`; everyone else polls (every tick once the
    /// primary has gone quiet, since a takeover waits for a poll sent after the TTL) and
    /// acquires the next epoch as soon as the rules allow.
    fn run_lease(&mut self, out: &mut Out) {
        let now = self.now;
        if let Some(p) = self.primary.filter(|p| p.lease_valid_until > now) {
            // Re-acquire in a new epoch if the standby voted past ours (see `catch_up`).
            if self.lagging_voter(p.epoch).is_some() && self.try_acquire(out) {
                return;
            }
            // A primary whose redis stays down lets its lease lapse so the standby can take
            // over.
            if now >= self.lease.next_renew_at && self.redis_within_grace() {
                self.lease.next_renew_at = now + self.t.lease_renew_ms;
                out.act(Action::RenewLease {
                    epoch: p.epoch,
                    heartbeat: now,
                });
            }
            return;
        }
        if self.try_acquire(out) {
            return;
        }
        let quiet = now - self.evidence_at >= 2 * self.t.gossip_interval_ms;
        let interval = if quiet {
            self.t.tick_ms
        } else {
            self.t.lease_renew_ms
        };
        if self
            .lease
            .last_poll_at
            .is_none_or(|at| now >= at + interval)
        {
            self.lease.last_poll_at = Some(now);
            out.act(Action::PollLease {
                from_epoch: self.lease.seen.as_ref().map_or(0, |s| s.epoch),
                asked_at: now,
            });
        }
    }

    fn try_acquire(&mut self, out: &mut Out) -> bool {
        let Some(seen) = self.lease.seen.clone() else {
            return false;
        };
        if !self.redis.healthy || self.switchover.is_some() {
            return false;
        }
        let handed = self.handed_to_me();
        let base = match self.primary {
            // Our lease lapsed: take a fresh epoch at once, before the standby may.
            Some(p) => seen.epoch.max(p.epoch),
            // The holder paused writes for good and asked us to take over.
            None if handed.as_ref().is_some_and(|(_, e)| seen.epoch >= *e) => seen.epoch,
            None => {
                // Never replicated anything while the other node may hold data: promoting
                // would throw that data away.
                if self.durable.synced_epoch == 0 && self.peer_may_hold_data(seen.epoch) {
                    return false;
                }
                let quiet_since = self.lease.changed_at + self.t.lease_ttl_ms;
                if !self.primary_dead()
                    || self.lease.polled_at.is_none_or(|p| p < quiet_since)
                    || self.deferring()
                {
                    return false;
                }
                seen.epoch
            }
        };
        // Leases are contiguous (lease/E+1 only after lease/E was seen), which is what lets a
        // poll find the newest by walking up.
        let epoch = base + 1;
        match &self.durable.vote {
            Some(v) if v.epoch > epoch || (v.epoch == epoch && v.candidate != self.me) => {
                return false
            }
            Some(v) if v.epoch == epoch => {}
            _ => {
                self.durable.vote = Some(self.vote_for_me(epoch));
                out.act(Action::Persist(self.durable.clone()));
            }
        }
        let retry = self.lease.acquire.filter(|a| a.epoch == epoch);
        if retry.is_some_and(|a| self.now < a.last_sent_at + self.t.lease_renew_ms) {
            return true;
        }
        if retry.is_none() {
            out.note(match self.primary {
                Some(p) if p.lease_valid_until > self.now => format!(
                    "my peer voted past my epoch {}; re-acquiring as epoch {epoch}",
                    p.epoch
                ),
                Some(p) => format!(
                    "my lease of epoch {} lapsed; acquiring epoch {epoch}",
                    p.epoch
                ),
                None if handed.is_some() => format!(
                    "{} is handing over to me; acquiring epoch {epoch}",
                    handed
                        .as_ref()
                        .map_or("the primary".into(), |(n, _)| n.to_string())
                ),
                None => format!(
                    "lease heartbeat unchanged for {} ms and no primary heard for {} ms; \
                     acquiring epoch {epoch}",
                    self.now - self.lease.changed_at,
                    self.now - self.evidence_at
                ),
            });
        }
        self.lease.acquire = Some(Acquire {
            epoch,
            first_sent_at: retry.map_or(self.now, |a| a.first_sent_at),
            last_sent_at: self.now,
        });
        out.act(Action::TryAcquireLease { epoch });
        true
    }

    // ---- roles -------------------------------------------------------------------------------

    fn promote(&mut self, epoch: u64, lease_valid_until: u64, why: String, out: &mut Out) {
        self.durable.synced_epoch = epoch;
        // The new epoch's stream counts as our redis does.
        self.redis.offset = self.redis.offset.saturating_sub(self.redis.shift);
        self.redis.held = self.redis.offset;
        self.redis.shift = 0;
        self.redis.exact = true;
        self.durable.offset = self.redis.held;
        self.durable.origin = true;
        out.act(Action::Persist(self.durable.clone()));
        out.act(Action::Promote { epoch });
        // The shell pauses writes on Promote: only an Unfence lifts it, even when this node
        // was already taking writes (a re-election in a newer epoch).
        self.fenced = Some(true);
        out.note(why);
        self.primary = Some(PrimaryState {
            epoch,
            lease_valid_until,
        });
        self.redis.stream = None;
        self.replication = Replication::Detached;
        self.campaign = None;
        self.following = None;
        self.attempts = 0;
        self.timeouts = 0;
        self.defer_since = None;
        // Our voters' acknowledgements echo heartbeats from when they voted and may be too old
        // to unfence us yet; fresh ones are one gossip round trip away. Until a failover
        // timeout passes, a fenced new primary must not count as a dead one and campaign
        // against itself. (Only delays our own campaigns and votes: never unsafe.)
        self.evidence_at = self.evidence_at.max(self.now);
    }

    fn demote(&mut self, why: String, out: &mut Out) {
        self.fence(out);
        out.act(Action::Demote);
        out.note(format!("demoting: {why}"));
        // A fenced master replicates from nobody: its data holds still until it follows.
        self.primary = None;
        self.switchover = None;
        self.following = None;
        self.replication = Replication::Detached;
    }

    /// Replicas follow the primary of the newest epoch, but never one older than the data
    /// they hold: a full resync from it would replace newer data with older.
    fn follow(&mut self, out: &mut Out) {
        if self.primary.is_some() {
            return;
        }
        // Nor one older than our vote: we would acknowledge (as a replica, to `WAIT`) writes
        // that the primary we voted for may not have.
        let voted = self.durable.vote.as_ref().map_or(0, |v| v.epoch);
        let Some((node, epoch)) = self
            .highest_claim()
            .filter(|(_, e)| *e >= self.durable.synced_epoch.max(voted))
        else {
            return;
        };
        if self.following.as_ref() == Some(&(node.clone(), epoch)) {
            return;
        }
        // Detached for an election: resume only behind a primary that serves.
        if self.replication != Replication::Following && !self.serving(&node) {
            return;
        }
        self.replication = Replication::Following;
        self.redis.stream = Some((node.clone(), epoch));
        self.redis.baseline = None;
        out.note(format!("following {node}, primary of epoch {epoch}"));
        out.act(Action::Follow {
            primary: node.clone(),
            epoch,
        });
        self.following = Some((node, epoch));
    }

    /// Persists the epoch of the data we now hold (see `observe_redis`).
    fn note_synced(&mut self, out: &mut Out) {
        let epoch = self.redis.holds_epoch;
        if epoch > self.durable.synced_epoch {
            self.durable.synced_epoch = epoch;
            self.durable.offset = self.redis.held;
            self.durable.origin = false;
            out.act(Action::Persist(self.durable.clone()));
            out.note(format!("now holding data of epoch {epoch}"));
        }
    }

    /// Hands the shell the deadline writes are safe until, whenever it moves later, or fences.
    fn apply_fence(&mut self, out: &mut Out) {
        let Some(until) = self.write_deadline() else {
            let was_writable = self.fenced == Some(false);
            self.fence(out);
            if let (Some(p), true) = (self.primary, was_writable) {
                out.note(format!(
                    "fencing: no majority acknowledgement{} within {} ms as primary of epoch {}",
                    if self.mode == Mode::Lease {
                        " or lease"
                    } else {
                        ""
                    },
                    self.t.fence_after_ms,
                    p.epoch
                ));
            }
            return;
        };
        let opening = self.fenced != Some(false);
        if opening || until > self.write_until {
            out.act(Action::Unfence { until });
            self.fenced = Some(false);
            self.write_until = until;
        }
        if let (Some(p), true) = (self.primary, opening) {
            out.note(format!("taking writes as primary of epoch {}", p.epoch));
        }
    }

    fn fence(&mut self, out: &mut Out) {
        if self.fenced == Some(false) {
            self.still_after = self.writes_end();
        }
        if self.fenced != Some(true) {
            out.act(Action::Fence);
            self.fenced = Some(true);
        }
    }

    /// Until when (our clock) a primary may take writes, if it may now: a majority (counting
    /// itself) acknowledged one of its heartbeats sent within `fence_after_ms` of then, or,
    /// with two nodes, its lease is valid until then.
    fn write_deadline(&self) -> Option<u64> {
        let p = self.primary?;
        // A primary that handed over (or tried to) may already have been replaced without
        // the usual failover wait: no writes in that epoch again.
        if self.switchover.is_some() || p.epoch <= self.handed_over {
            return None;
        }
        let until = match self.mode {
            Mode::Single => u64::MAX,
            Mode::Lease => p.lease_valid_until.max(self.acknowledged_until(p.epoch)),
            Mode::Quorum => self.acknowledged_until(p.epoch),
        };
        (until > self.now).then_some(until)
    }

    /// `fence_after_ms` after the newest of our heartbeats that enough peers acknowledged to
    /// make a majority with us (0 if none did).
    fn acknowledged_until(&self, epoch: u64) -> u64 {
        let mut heartbeats: Vec<u64> = self
            .peers
            .values()
            .filter_map(|p| p.state.as_ref()?.ack.as_ref())
            // Exactly our epoch: an acknowledgement of a later one (a vote for our
            // re-election) says nothing of votes its sender gave others in between.
            .filter(|a| a.primary == self.me && a.epoch == epoch)
            .map(|a| a.heartbeat)
            .collect();
        heartbeats.sort_unstable_by(|a, b| b.cmp(a));
        let needed = self.voters.len() / 2;
        heartbeats
            .get(needed.saturating_sub(1))
            .map_or(0, |h| h + self.t.fence_after_ms)
    }

    // ---- helpers -----------------------------------------------------------------------------

    fn vote_for_me(&self, epoch: u64) -> Vote {
        Vote {
            epoch,
            candidate: self.me.clone(),
        }
    }

    fn position(&self) -> Position {
        let epoch = self.durable.synced_epoch;
        let mut offset = self.redis.offset;
        // The primary our data's stream came from holds every replica's data of its epoch
        // (a process crash loses nothing: redis writes the AOF before it answers), so what
        // they publish bounds its own data from below too.
        if self.durable.origin && !self.redis.exact {
            let theirs = self
                .peers
                .values()
                .filter_map(|p| p.state.as_ref())
                .filter(|s| s.position.epoch == epoch)
                .map(|s| s.position.offset);
            offset = theirs.fold(offset, u64::max);
        }
        Position { epoch, offset }
    }

    /// Our data cannot change: a fenced primary, or a replica detached from replication —
    /// and our last probe was taken after the last write can have landed.
    fn position_final(&self) -> bool {
        let still = match self.primary {
            Some(_) => !self.is_writable(),
            None => self.replication == Replication::Detached,
        };
        let since = if self.fenced == Some(false) {
            self.writes_end()
        } else {
            self.still_after
        };
        still && self.redis.probed_at >= since
    }

    /// When writes stop at the latest if we fence now: our `Fence` takes up to
    /// `action_latency_ms`, and the shell's guard closes writes at the deadline of the last
    /// `Unfence` by itself (within `guard_slack_ms` more). An agent that was paused meanwhile
    /// holds a probe from before those last writes.
    fn writes_end(&self) -> u64 {
        let guard = self.write_until.saturating_add(self.t.guard_slack_ms);
        self.now.min(guard).saturating_add(self.t.action_latency_ms)
    }

    /// We replicate from `node`, and `state` (the same snapshot as its campaign) shows it the
    /// writable primary of the epoch we follow: it has not restarted since (a restart ends a
    /// primaryship) and only adds writes, so our data is a prefix of its data. This lets a
    /// writable primary's re-election (`catch_up`) pass although its replicas' data keeps
    /// moving; a primary that crashed and lost its last writes gets no such pass.
    fn streams_from(&self, node: &NodeId, state: &PublishedState) -> bool {
        self.redis.upstream.as_ref() == Some(node)
            && state.role == Role::Primary
            && state.writable
            && self.following.as_ref() == Some(&(node.clone(), state.epoch))
    }

    /// A peer that is primary, writable and healthy and that we heard recently.
    fn serving(&self, node: &NodeId) -> bool {
        self.peers.get(node).is_some_and(|p| {
            let recent = p
                .heard_at
                .is_some_and(|t| self.now - t < self.t.failover_timeout_ms);
            p.state
                .as_ref()
                .is_some_and(|s| s.role == Role::Primary && s.writable && s.redis_healthy)
                && recent
        })
    }

    /// Where the data of a primary handing over to `candidate` ends: our own switchover, or
    /// the one the primary we acknowledge announced (fenced, in the epoch we acknowledge).
    fn handoff_to(&self, candidate: &NodeId) -> Option<Position> {
        if let Some(h) = self.handoff() {
            return (h.to == *candidate).then_some(h.position);
        }
        let l = self.leader.as_ref()?;
        let s = self.peers.get(&l.node)?.state.as_ref()?;
        let h = s.handoff.as_ref()?;
        (s.role == Role::Primary && s.epoch == l.epoch && !s.writable && h.to == *candidate)
            .then_some(h.position)
    }

    /// The primary we acknowledge is handing over to us and we hold all its data: (it, its
    /// epoch).
    fn handed_to_me(&self) -> Option<(NodeId, u64)> {
        let l = self.leader.as_ref()?;
        let end = self.handoff_to(&self.me)?;
        (self.redis.healthy && self.primary.is_none() && self.position() >= end)
            .then(|| (l.node.clone(), l.epoch))
    }

    /// Gives up a switchover that did not complete in time: this node stays fenced in its
    /// epoch (the target may have been elected without the usual wait) and runs for a new
    /// one at once.
    fn run_switchover(&mut self, out: &mut Out) {
        let Some(sw) = &self.switchover else {
            return;
        };
        if self.now - sw.started_at < SWITCHOVER_TIMEOUT_MS {
            return;
        }
        out.note(format!(
            "switchover to {} did not complete within {SWITCHOVER_TIMEOUT_MS} ms; \
             running for a new epoch myself",
            sw.to
        ));
        self.switchover = None;
        match self.mode {
            Mode::Quorum if self.campaign.is_none() && self.redis.healthy => {
                self.start_campaign("abandoned the switchover".into(), out)
            }
            Mode::Lease => {
                self.try_acquire(out);
            }
            _ => {}
        }
    }

    /// Alive by the failure detector and heard from within a failover timeout.
    fn live(&self, p: &Peer) -> bool {
        p.alive
            && p.heard_at
                .is_some_and(|t| self.now - t < self.t.failover_timeout_ms)
    }

    /// We, with the voters alive and heard within a failover timeout, are a majority. What
    /// we heard counts from the earliest it can have arrived: an agent resuming from a stop
    /// finds gossip that came in before its node was cut off.
    fn hears_majority(&self) -> bool {
        let heard = self
            .peers
            .values()
            .filter(|p| {
                p.alive
                    && p.heard_after
                        .is_some_and(|t| self.now - t < self.t.failover_timeout_ms)
            })
            .count();
        1 + heard > self.voters.len() / 2
    }

    /// We have acknowledged no primary (nor been a writable one) for `failover_timeout_ms`.
    fn primary_dead(&self) -> bool {
        self.now - self.evidence_at >= self.t.failover_timeout_ms
    }

    /// A peer published data of some epoch, or, knowing no peer, a lease was ever taken.
    fn peer_may_hold_data(&self, lease_epoch: u64) -> bool {
        let mut states = self
            .peers
            .values()
            .filter_map(|p| p.state.as_ref())
            .peekable();
        if states.peek().is_none() {
            return lease_epoch > 0;
        }
        states.any(|s| s.position.epoch > 0)
    }

    fn redis_within_grace(&self) -> bool {
        self.redis
            .unhealthy_since
            .is_none_or(|since| self.now - since < self.t.primary_grace_ms)
    }

    /// Our acknowledgement, unless we withdrew support from a leader that stopped serving.
    fn ack(&self) -> Option<Ack> {
        let leader = self.leader.as_ref()?;
        if self.now - leader.serving_at >= self.t.primary_grace_ms {
            return None;
        }
        Some(Ack {
            primary: leader.node.clone(),
            epoch: leader.epoch,
            heartbeat: leader.acked?,
        })
    }

    /// The other node claiming to be primary of the highest epoch (stale claims included).
    fn highest_claim(&self) -> Option<(NodeId, u64)> {
        let mut best: Option<(&NodeId, u64)> = None;
        for (id, peer) in &self.peers {
            if let Some(s) = peer.state.as_ref().filter(|s| s.role == Role::Primary) {
                if best.is_none_or(|(_, e)| s.epoch > e) {
                    best = Some((id, s.epoch));
                }
            }
        }
        best.map(|(id, e)| (id.clone(), e))
    }

    fn highest_claim_epoch(&self) -> u64 {
        self.highest_claim().map_or(0, |(_, e)| e)
    }

    /// The epoch a decision is about, for the log's `epoch` field: the one served or followed,
    /// or the one of this node's vote (its own campaign's included) when that is higher. The
    /// published epoch alone reads 0 all through an election.
    pub fn decision_epoch(&self) -> u64 {
        self.published()
            .epoch
            .max(self.durable.vote.as_ref().map_or(0, |v| v.epoch))
    }

    /// The highest epoch anyone has mentioned: new campaigns start above it.
    fn max_known_epoch(&self) -> u64 {
        let mut max = self
            .durable
            .synced_epoch
            .max(self.durable.vote.as_ref().map_or(0, |v| v.epoch))
            .max(self.primary.map_or(0, |p| p.epoch));
        for s in self.peers.values().filter_map(|p| p.state.as_ref()) {
            max = max
                .max(s.epoch)
                .max(s.position.epoch)
                .max(s.vote.as_ref().map_or(0, |v| v.epoch))
                .max(s.campaign.map_or(0, |c| c.epoch));
        }
        max
    }

    /// Waits (at most `failover_timeout_ms`) while a live, healthy, non-writable peer has
    /// better data or an equal position and a lower name: it should be the one to run.
    fn deferring(&mut self) -> bool {
        let mine = self.position();
        let better = self.peers.iter().any(|(id, p)| {
            let Some(s) = &p.state else {
                return false;
            };
            let live = self.live(p);
            live && s.redis_healthy
                && !s.writable
                && (s.position > mine || (s.position == mine && *id < self.me))
        });
        if !better {
            self.defer_since = None;
            return false;
        }
        let since = *self.defer_since.get_or_insert(self.now);
        self.now - since < self.t.failover_timeout_ms
    }

    fn summary(&self) -> String {
        let heard = self.now - self.evidence_at;
        if let Some(p) = self.primary {
            let state = if self.is_writable() {
                "taking writes"
            } else {
                "fenced"
            };
            return format!("primary of epoch {}, {state}", p.epoch);
        }
        if let Some(c) = self.campaign {
            return format!(
                "campaigning in epoch {} since {} ms",
                c.epoch,
                self.now - c.started_at
            );
        }
        match &self.following {
            Some((node, epoch)) => {
                format!("replica of {node} (epoch {epoch}); primary heard {heard} ms ago")
            }
            None => format!("no primary known; last heard one {heard} ms ago"),
        }
    }
}

/// FNV-1a: stable across platforms and Rust versions, unlike std's hasher.
fn fnv1a(name: &str, attempt: u32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain(attempt.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
