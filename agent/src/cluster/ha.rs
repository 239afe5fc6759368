//! The HA shell around the pure election logic (`election::Node`): one select loop that feeds
//! it events (ticks with the gossip view, redis probes, lease answers) and carries out the
//! actions it returns, in order — persist the vote, publish the state, REPLICAOF, CLIENT PAUSE
//! — against the node's own redis, the gossip layer and the object store.
//!
//! Redis in an HA data store always starts as a read-only replica (see `redis_conf`), so a
//! redis that the supervisor restarts takes no writes until this loop has re-applied the role
//! and fencing the election last asked for.

use crate::cluster::election::{
    self, Action, Durable, Event, LeaseResult, NodeId, PeerView, PublishedState,
};
use crate::cluster::gossip::cluster::{Gossip, Member};
use crate::cluster::history;
use crate::config::ClusterNode;
use crate::node::fence_guard::{FenceGuard, Fenced, GuardError, GuardSpec};
use crate::node::redis_client::{self, Info};
use crate::node::redis_conf::{
    derive_epoch_password, CUSTOMER_USER, REPLICATION_USER, UNDECIDED_PRIMARY,
};
use crate::node::secrets::write_file_atomic;
use crate::node::supervisor::RedisState;
use crate::store::Store;
use anyhow::{Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// The gossip key carrying a node's `PublishedState` (JSON).
pub const STATE_KEY: &str = "state";
/// The gossip key carrying a node's redis address (`ip:port`).
pub const REDIS_ADDR_KEY: &str = "redis_addr";

pub struct HaConfig {
    pub election: election::Config,
    pub nodes: Vec<ClusterNode>,
    pub durable_path: PathBuf,
    pub socket: PathBuf,
    pub admin_user: String,
    pub admin_password: String,
    /// Two-node data stores: the bucket holding `lease/{epoch}` objects.
    pub lease_store: Option<Store>,
    /// The data store key: replication passwords are derived from it per epoch.
    pub cluster_key: [u8; 32],
    pub data_store_id: String,
    /// Told of every promotion and demotion of this node.
    pub hook: Option<crate::cluster::hook::HookHandle>,
    /// Where the epoch history is kept (`redis-steward history`).
    pub history_path: PathBuf,
    /// The data directory was empty at this start (restored, joined or started empty): the
    /// data is not what [`Durable::offset`] describes.
    pub data_replaced: bool,
}

/// What the HA loop knows, for status and the Sentinel-facing parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HaStatus {
    pub role: String,
    pub epoch: u64,
    pub writable: bool,
    pub primary: Option<String>,
    pub last_decision: String,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemberStatus {
    pub name: String,
    /// This row is the node answering.
    #[serde(default)]
    pub is_self: bool,
    pub redis_addr: Option<String>,
    pub alive: bool,
    pub role: String,
    pub epoch: u64,
    pub offset: u64,
    /// Bytes behind the primary's offset, as gossip reports both.
    pub lag: Option<u64>,
    pub redis_healthy: bool,
    pub writable: bool,
    /// Milliseconds since this node last saw the member's state change.
    pub last_heard_ms: Option<u64>,
}

/// The HA loop's handle: `state` is its `HaStatus`.
pub type HaHandle = crate::actor::ActorHandle<HaStatus>;

/// Requests to the HA loop from the API.
pub enum HaCommand {
    /// A planned switchover (to a node, or to the best one). The answer says whether the
    /// primary started it, or why it refused.
    Switchover {
        to: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// The gossip key a non-primary node asks the primary for a switchover with, and the one the
/// primary answers in (JSON).
const SWITCHOVER_REQUEST_KEY: &str = "switchover_request";
const SWITCHOVER_REPLY_KEY: &str = "switchover_reply";
/// How long a forwarded switchover request waits for the primary's answer.
const SWITCHOVER_ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwitchoverRequest {
    id: u64,
    to: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwitchoverReply {
    /// The node that asked.
    requester: String,
    id: u64,
    result: Result<String, String>,
}

/// A forwarded switchover request waiting for the primary's answer.
struct PendingSwitchover {
    id: u64,
    deadline: Instant,
    reply: oneshot::Sender<Result<String, String>>,
}

/// Load the durable election state; a missing file is a first start.
pub fn load_durable(path: &std::path::Path) -> Result<Durable> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{} is damaged; it holds this node's votes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Durable::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_durable(path: &std::path::Path, d: &Durable) -> Result<()> {
    write_file_atomic(path, &serde_json::to_vec(d)?, 0o600)?;
    // The rename must be durable too before the vote is published.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn spawn(
    cfg: HaConfig,
    gossip: Gossip,
    redis: watch::Receiver<RedisState>,
) -> Result<(HaHandle, mpsc::Sender<HaCommand>)> {
    let mut durable = load_durable(&cfg.durable_path)?;
    if cfg.data_replaced {
        durable.offset = 0;
        durable.origin = false;
    }
    let (command_tx, command_rx) = mpsc::channel(8);
    // Read before `start`, so deadlines converted from the election's clock err early.
    let start_mono_ns = crate::node::fence_guard::monotonic_ns();
    let start = Instant::now();
    let node =
        election::Node::new(cfg.election.clone(), durable, 0).context("election settings")?;
    let (lease_tx, lease_rx) = mpsc::channel(16);
    let tick = Duration::from_millis(cfg.election.timing.tick_ms);
    let handle =
        crate::actor::ActorHandle::spawn(HaStatus::default(), move |status, shutdown| async move {
            let admin =
                redis_client::AdminLink::new(&cfg.socket, &cfg.admin_user, &cfg.admin_password);
            let spec = GuardSpec {
                socket: cfg.socket.clone(),
                user: cfg.admin_user.clone(),
                password: cfg.admin_password.clone(),
                action_latency_ms: cfg.election.timing.action_latency_ms,
            };
            let guard = match FenceGuard::start(spec).await {
                Ok(guard) => guard,
                Err(e) => {
                    // Without a guard, writes would depend on this agent being scheduled.
                    error!("cannot start the fence guard: {e:#}; stopping the agent to stay safe");
                    std::process::exit(1);
                }
            };
            let mut shell = Shell {
                cfg,
                node,
                gossip,
                start,
                start_mono_ns,
                admin,
                guard,
                desired: Desired::default(),
                applied_pid: None,
                redis_healthy: false,
                lease_tx,
                status,
                heard: BTreeMap::new(),
                pending: None,
                drop_clients_on_follow: false,
                history_epoch: 0,
                writable_seen_at: Instant::now(),
                handled: BTreeMap::new(),
            };
            shell.run(redis, lease_rx, command_rx, shutdown, tick).await
        });
    Ok((handle, command_tx))
}

/// What redis should look like, so it can be re-applied after a redis restart.
#[derive(Debug, Clone, Default, PartialEq)]
struct Desired {
    /// None: not decided yet (redis stays the read-only replica it starts as).
    role: Option<RedisRole>,
    fenced: bool,
    /// The deadline of the last `Unfence` (the election's clock).
    write_until: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum RedisRole {
    Primary {
        epoch: u64,
    },
    Replica {
        host: String,
        port: u16,
        epoch: u64,
    },
    /// Replicating from nothing (the undecided placeholder): read-only, data held still.
    Detached,
}

struct Shell {
    cfg: HaConfig,
    node: election::Node,
    gossip: Gossip,
    start: Instant,
    /// `CLOCK_MONOTONIC` at `start`, which the fence guard's deadlines are expressed in.
    start_mono_ns: u64,
    admin: redis_client::AdminLink,
    /// Closes writes at the election's deadlines even while this loop does not run.
    guard: FenceGuard,
    desired: Desired,
    /// The redis pid the desired state was last applied to.
    applied_pid: Option<u32>,
    /// What the supervisor last said.
    redis_healthy: bool,
    lease_tx: mpsc::Sender<LeaseResult>,
    status: watch::Sender<HaStatus>,
    /// When each member's published state last changed (our clock), and what it was.
    heard: BTreeMap<String, (String, Instant)>,
    pending: Option<PendingSwitchover>,
    /// Demoted and not yet following the new primary: clients that connect meanwhile (the
    /// Sentinel ports may still name this node until the new primary is known) are dropped
    /// again once it follows, or a client that ignores READONLY stays stuck here.
    drop_clients_on_follow: bool,
    /// The newest epoch whose history record gossip has shown us.
    history_epoch: u64,
    /// When gossip (or this node) last showed a writable primary.
    writable_seen_at: Instant,
    /// The newest switchover request id answered, per requesting node.
    handled: BTreeMap<String, u64>,
}

impl Shell {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// An election deadline as the guard's clock reads it (`None`: no deadline).
    fn deadline_ns(&self, until_ms: u64) -> Option<u64> {
        (until_ms != u64::MAX).then(|| {
            self.start_mono_ns
                .saturating_add(until_ms.saturating_mul(1_000_000))
        })
    }

    async fn run(
        &mut self,
        mut redis: watch::Receiver<RedisState>,
        mut lease_rx: mpsc::Receiver<LeaseResult>,
        mut commands: mpsc::Receiver<HaCommand>,
        mut shutdown: mpsc::Receiver<oneshot::Sender<()>>,
        tick: Duration,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let began = Instant::now();
                    // Gossip first: a step on the previous tick's view could time out a
                    // campaign whose votes have just arrived.
                    let members = self.gossip.members().await;
                    let views = self.peer_views(&members);
                    tracing::trace!(?views, "gossip view");
                    self.update_status(&members);
                    self.decide(Event::Peers(views)).await;
                    self.probe().await;
                    self.forwarded_switchovers(&members).await;
                    // A slow step delays heartbeats and fencing: make it visible.
                    let took = began.elapsed();
                    if took > 4 * tick {
                        warn!(took_ms = took.as_millis() as u64, "election step was slow");
                    }
                }
                changed = redis.changed() => {
                    if changed.is_err() { return; }
                    let state = redis.borrow_and_update().clone();
                    self.on_redis(&state).await;
                }
                Some(result) = lease_rx.recv() => self.decide(Event::Lease(result)).await,
                Some(command) = commands.recv() => self.on_command(command).await,
                done = shutdown.recv() => {
                    self.gossip.initiate_shutdown();
                    if let Some(done) = done { let _ = done.send(()); }
                    return;
                }
            }
        }
    }

    async fn on_command(&mut self, command: HaCommand) {
        match command {
            HaCommand::Switchover { to, reply } => {
                if self.node.primary_epoch().is_some() {
                    let result = self.switchover(to).await;
                    let _ = reply.send(result);
                    return;
                }
                // Only the primary can hand over: ask it through gossip.
                if self.pending.is_some() {
                    let _ = reply.send(Err(
                        "another switchover request from this node is waiting for the primary"
                            .into(),
                    ));
                    return;
                }
                let id: u64 = rand::random();
                let request = SwitchoverRequest { id, to };
                match serde_json::to_string(&request) {
                    Ok(json) => self.gossip.publish(SWITCHOVER_REQUEST_KEY, json).await,
                    Err(e) => {
                        let _ = reply.send(Err(format!("cannot encode the request: {e}")));
                        return;
                    }
                }
                self.pending = Some(PendingSwitchover {
                    id,
                    deadline: Instant::now() + SWITCHOVER_ANSWER_WITHIN,
                    reply,
                });
            }
        }
    }

    /// Start a switchover on this node (the primary), carrying out its first actions.
    async fn switchover(&mut self, to: Option<String>) -> Result<String, String> {
        let now = self.now_ms();
        let decision = self.node.switchover(now, to.map(NodeId::new))?;
        let reason = decision.reason.clone();
        self.carry_out(decision).await;
        // The hand-over needs a probe taken after the pause.
        self.probe().await;
        Ok(reason)
    }

    /// The primary answers switchover requests other nodes gossip; a node that forwarded one
    /// picks up the answer (or gives up waiting).
    async fn forwarded_switchovers(&mut self, members: &[Member]) {
        if self.node.primary_epoch().is_some() {
            for m in members {
                let Some(req) = m
                    .keys
                    .get(SWITCHOVER_REQUEST_KEY)
                    .and_then(|r| serde_json::from_str::<SwitchoverRequest>(r).ok())
                else {
                    continue;
                };
                if self.handled.get(&m.name) == Some(&req.id) {
                    continue;
                }
                self.handled.insert(m.name.clone(), req.id);
                info!(from = %m.name, to = ?req.to, "switchover requested through {}", m.name);
                let result = self.switchover(req.to).await;
                let reply = SwitchoverReply {
                    requester: m.name.clone(),
                    id: req.id,
                    result,
                };
                if let Ok(json) = serde_json::to_string(&reply) {
                    self.gossip.publish(SWITCHOVER_REPLY_KEY, json).await;
                }
            }
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        let me = self.node.me().as_str();
        let answer = members.iter().find_map(|m| {
            let r: SwitchoverReply =
                serde_json::from_str(m.keys.get(SWITCHOVER_REPLY_KEY)?).ok()?;
            (r.requester == me && r.id == pending.id).then_some(r.result)
        });
        let answer = match answer {
            Some(a) => a,
            None if Instant::now() >= pending.deadline => Err(format!(
                "the primary did not answer within {} s",
                SWITCHOVER_ANSWER_WITHIN.as_secs()
            )),
            None => {
                self.pending = Some(pending);
                return;
            }
        };
        self.gossip.delete(SWITCHOVER_REQUEST_KEY).await;
        let _ = pending.reply.send(answer);
    }

    async fn on_redis(&mut self, state: &RedisState) {
        let was_healthy = self.redis_healthy;
        self.redis_healthy = state.healthy;
        if state.healthy && state.pid.is_some() && state.pid != self.applied_pid {
            // A (re)started redis: it came up as a read-only replica; put back what the
            // election asked for.
            self.admin.reset();
            self.applied_pid = state.pid;
            if let Some(pid) = state.pid {
                if let Err(e) = self.guard.set_redis_pid(pid).await {
                    warn!("cannot tell the fence guard redis's pid: {e}");
                    self.restart_guard().await;
                }
            }
            if let Err(e) = self.apply_desired().await {
                warn!("cannot restore redis's role after its restart: {e:#}");
                self.applied_pid = None;
            }
        }
        if was_healthy && !state.healthy {
            self.decide(Event::RedisProbe {
                healthy: false,
                offset: 0,
                upstream: None,
                run: 0,
            })
            .await;
        }
    }

    /// Ask redis for its replication state now and tell the election. Runs every tick and
    /// right after actions that change replication, so that a probe the election sees was
    /// always taken after the actions it decided (e.g. a `Detach` really took effect).
    async fn probe(&mut self) {
        let event = if !self.redis_healthy || self.applied_pid.is_none() {
            Event::RedisProbe {
                healthy: false,
                offset: 0,
                upstream: None,
                run: 0,
            }
        } else {
            match self
                .admin_query::<String>(redis::cmd("INFO").arg("replication"))
                .await
            {
                Ok(text) => {
                    let (offset, upstream) = self.replication(&Info::parse(&text));
                    Event::RedisProbe {
                        healthy: true,
                        offset,
                        upstream,
                        run: self.applied_pid.map_or(0, u64::from),
                    }
                }
                Err(e) => {
                    debug!("replication probe failed: {e:#}");
                    Event::RedisProbe {
                        healthy: false,
                        offset: 0,
                        upstream: None,
                        run: 0,
                    }
                }
            }
        };
        self.decide_once(event).await;
    }

    /// Our replication offset and, when the link to a primary is up, which node that is.
    fn replication(&self, info: &Info) -> (u64, Option<NodeId>) {
        let offset = info.get_u64("master_repl_offset").unwrap_or(0);
        let upstream =
            if info.get("role") == Some("slave") && info.get("master_link_status") == Some("up") {
                let host = info.get("master_host").unwrap_or_default();
                let port = info.get_u64("master_port").unwrap_or(0);
                self.cfg
                    .nodes
                    .iter()
                    .find(|n| n.address.to_string() == host && u64::from(n.redis_port) == port)
                    .map(|n| NodeId::new(n.name.clone()))
            } else {
                None
            };
        (offset, upstream)
    }

    fn peer_views(&mut self, members: &[Member]) -> Vec<PeerView> {
        let me = self.node.me().clone();
        self.cfg
            .nodes
            .iter()
            .filter(|n| n.name != me.as_str())
            .map(|n| {
                let m = members.iter().find(|m| m.name == n.name);
                let state = m
                    .and_then(|m| m.keys.get(STATE_KEY))
                    .and_then(|s| serde_json::from_str::<PublishedState>(s).ok());
                PeerView {
                    node: NodeId::new(n.name.clone()),
                    alive: m.is_some_and(|m| m.alive),
                    state,
                }
            })
            .collect()
    }

    fn update_status(&mut self, members: &[Member]) {
        let promotions: Vec<history::Promotion> = members
            .iter()
            .filter_map(|m| serde_json::from_str(m.keys.get(history::PROMOTION_KEY)?).ok())
            .collect();
        if promotions.iter().any(|p| p.epoch > self.history_epoch) {
            self.history_epoch = promotions.iter().map(|p| p.epoch).max().unwrap_or(0);
            self.keep_history(&promotions);
        }
        let now = Instant::now();
        let published = self.node.published();
        let mut rows = Vec::new();
        let mut states: Vec<(String, Option<PublishedState>, bool, Option<String>)> = Vec::new();
        for n in &self.cfg.nodes {
            if n.name == self.node.me().as_str() {
                states.push((
                    n.name.clone(),
                    Some(published.clone()),
                    true,
                    Some(format!("{}:{}", n.address, n.redis_port)),
                ));
                continue;
            }
            let m = members.iter().find(|m| m.name == n.name);
            let raw = m.and_then(|m| m.keys.get(STATE_KEY)).cloned();
            if let Some(raw) = &raw {
                let entry = self
                    .heard
                    .entry(n.name.clone())
                    .or_insert((String::new(), now));
                if &entry.0 != raw {
                    *entry = (raw.clone(), now);
                }
            }
            states.push((
                n.name.clone(),
                raw.and_then(|s| serde_json::from_str(&s).ok()),
                m.is_some_and(|m| m.alive),
                m.and_then(|m| m.keys.get(REDIS_ADDR_KEY).cloned())
                    .or_else(|| Some(format!("{}:{}", n.address, n.redis_port))),
            ));
        }
        let primary_offset = states
            .iter()
            .filter_map(|(_, s, _, _)| s.as_ref())
            .filter(|s| s.role == election::Role::Primary && s.writable)
            .map(|s| s.position.offset)
            .max();
        for (name, s, alive, addr) in states {
            let me = name == self.node.me().as_str();
            let s = s.unwrap_or_default();
            rows.push(MemberStatus {
                is_self: me,
                last_heard_ms: if me {
                    Some(0)
                } else {
                    self.heard
                        .get(&name)
                        .map(|(_, t)| t.elapsed().as_millis() as u64)
                },
                lag: primary_offset.map(|p| p.saturating_sub(s.position.offset)),
                name,
                redis_addr: addr,
                alive,
                role: role_name(&s),
                epoch: s.epoch,
                offset: s.position.offset,
                redis_healthy: s.redis_healthy,
                writable: s.writable,
            });
        }
        if rows.iter().any(|r| r.writable && (r.alive || r.is_self)) {
            self.writable_seen_at = now;
        }
        self.status.send_modify(|st| {
            st.role = role_name(&published);
            st.epoch = published.epoch;
            crate::log_context::set_role(&st.role, st.epoch);
            st.writable = published.writable;
            st.primary = published.primary.as_ref().map(|p| p.to_string());
            st.members = rows;
        });
    }

    /// Step the election and carry out its actions; when they changed replication, probe
    /// again at once so the election learns the outcome without waiting for the next tick.
    async fn decide(&mut self, event: Event) {
        if self.decide_once(event).await {
            self.probe().await;
        }
    }

    /// Returns whether the actions changed redis's replication.
    async fn decide_once(&mut self, event: Event) -> bool {
        let now = self.now_ms();
        let d = self.node.step(now, event);
        self.carry_out(d).await
    }

    /// Log a decision and carry out its actions in order. Returns whether they changed
    /// redis's replication.
    async fn carry_out(&mut self, d: election::Decision) -> bool {
        if d.changed {
            info!(epoch = self.node.decision_epoch(), "{}", d.reason);
            self.status
                .send_modify(|s| s.last_decision = d.reason.clone());
        } else {
            debug!("{}", d.reason);
        }
        let mut replication_changed = false;
        for action in d.actions {
            replication_changed |= matches!(
                action,
                Action::Detach | Action::Follow { .. } | Action::Promote { .. } | Action::Demote
            );
            if let Err(e) = self.execute(action).await {
                warn!("{e:#}");
            }
        }
        replication_changed
    }

    async fn execute(&mut self, action: Action) -> Result<()> {
        match action {
            Action::Persist(d) => {
                // Nothing after this in the decision may run unless the vote is on disk.
                // The fsync can take 100+ ms: off the runtime's worker threads, or it stalls
                // gossip and everything else scheduled there. Awaited, so the order holds.
                let path = self.cfg.durable_path.clone();
                let saved = tokio::task::spawn_blocking(move || save_durable(&path, &d))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r);
                if let Err(e) = saved {
                    error!("cannot persist election state: {e:#}; stopping the agent to stay safe");
                    std::process::exit(1);
                }
            }
            Action::Publish(state) => {
                self.gossip
                    .publish(STATE_KEY, serde_json::to_string(&state)?)
                    .await;
            }
            Action::Promote { epoch } => {
                info!(epoch, "promoting this node to primary");
                self.desired.role = Some(RedisRole::Primary { epoch });
                self.promote(epoch).await?;
                self.record_promotion(epoch).await;
                if let Some(hook) = &self.cfg.hook {
                    let me = self.node.me().as_str();
                    let (ip, port) = self.redis_addr_of(me)?;
                    hook.promoted(Some(crate::cluster::hook::Promotion {
                        data_store: self.cfg.data_store_id.clone(),
                        node: me.to_string(),
                        address: std::net::SocketAddr::new(ip.parse()?, port).to_string(),
                        epoch,
                    }));
                }
            }
            Action::Follow { primary, epoch } => {
                let (host, port) = self.redis_addr_of(primary.as_str())?;
                let role = RedisRole::Replica {
                    host: host.clone(),
                    port,
                    epoch,
                };
                if self.desired.role.as_ref() != Some(&role) {
                    info!(epoch, %primary, "replicating from {host}:{port}");
                    self.desired.role = Some(role);
                    self.follow(&host, port, epoch).await?;
                    if std::mem::take(&mut self.drop_clients_on_follow) {
                        info!("dropping customer connections made since the demotion, so they find {primary}");
                        self.drop_customers().await?;
                    }
                }
            }
            Action::Detach => {
                if self.desired.role != Some(RedisRole::Detached) {
                    debug!("detaching from the primary so our position holds still");
                    self.desired.role = Some(RedisRole::Detached);
                    self.detach().await?;
                }
            }
            Action::Demote => {
                if let Some(hook) = &self.cfg.hook {
                    hook.promoted(None);
                }
                info!("demoted: no longer serving replicas; dropping customer connections so clients find the new primary");
                // Our own Sentinel port stops naming us a writable primary first.
                let members = self.gossip.members().await;
                self.update_status(&members);
                self.stop_serving_replicas().await?;
                self.drop_clients_on_follow = true;
                self.drop_customers().await?;
            }
            Action::Fence => {
                self.desired.fenced = true;
                self.fence().await;
            }
            Action::Unfence { until } => {
                self.desired.fenced = false;
                self.desired.write_until = until;
                self.open_writes().await;
            }
            Action::PollLease {
                from_epoch,
                asked_at,
            } => self.spawn_lease(LeaseOp::Poll {
                from_epoch,
                asked_at,
            }),
            Action::TryAcquireLease { epoch } => self.spawn_lease(LeaseOp::Acquire { epoch }),
            Action::RenewLease { epoch, heartbeat } => {
                self.spawn_lease(LeaseOp::Renew { epoch, heartbeat })
            }
        }
        Ok(())
    }

    /// Stop writes within the action latency (through the guard, which also forgets its
    /// deadline), or kill redis: it restarts as a read-only replica.
    async fn fence(&mut self) {
        let latency = Duration::from_millis(self.cfg.election.timing.action_latency_ms);
        let outcome = self.guard.fence(latency).await;
        match outcome {
            Ok(Fenced::Paused | Fenced::Down) => return,
            Ok(Fenced::Killed) => {
                error!("redis did not pause writes in time; the fence guard killed it so it restarts read-only");
                self.applied_pid = None;
                return;
            }
            Err(GuardError::Gone) => {
                // A dead guard sends nothing more: pausing ourselves cannot be undone by it.
                warn!("the fence guard is gone; fencing directly and starting a new one");
                self.pause_or_kill(latency).await;
            }
            Err(e @ GuardError::TimedOut(_)) => {
                // A hung guard may still carry out an open it was sent before: only a dead
                // redis is sure to take no writes.
                error!("{e}; killing redis so it restarts read-only");
                self.kill_redis();
            }
        }
        self.restart_guard().await;
    }

    async fn pause_or_kill(&mut self, latency: Duration) {
        if self.applied_pid.is_none() {
            // No redis we configured is running: it starts read-only, and `apply_desired`
            // fences it before promoting it.
            return;
        }
        let mut pause = redis::cmd("CLIENT");
        pause.arg("PAUSE").arg(FENCE_PAUSE_MS).arg("WRITE");
        match tokio::time::timeout(latency, self.admin_cmd(&mut pause)).await {
            Ok(Ok(())) => {}
            outcome => {
                error!(
                    ?outcome,
                    "cannot fence redis in time; killing it so it restarts read-only"
                );
                self.kill_redis();
            }
        }
    }

    fn kill_redis(&mut self) {
        if let Some(pid) = self.applied_pid.take() {
            // SAFETY: kill(2) of our own redis child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    /// Replaces a dead or hung guard and hands the new one the deadline a writable primary
    /// relies on (a fenced node has just fenced, or killed redis, itself).
    async fn restart_guard(&mut self) {
        if let Err(e) = self.guard.restart().await {
            error!("cannot restart the fence guard: {e:#}; stopping the agent to stay safe");
            std::process::exit(1);
        }
        let primary = matches!(self.desired.role, Some(RedisRole::Primary { .. }));
        if primary && !self.desired.fenced {
            let until = self.deadline_ns(self.desired.write_until);
            if let Err(e) = self.guard.open(until).await {
                warn!("the new fence guard did not take the write deadline: {e}");
            }
        }
    }

    /// Hands the guard the current write deadline; it opens writes only before it.
    async fn open_writes(&mut self) {
        let until = self.deadline_ns(self.desired.write_until);
        if let Err(e) = self.guard.open(until).await {
            warn!("the fence guard did not take the write deadline: {e}");
            self.restart_guard().await;
        }
    }

    /// Put a freshly (re)started redis back into the role the election gave it — except a
    /// primary's: a restarted redis counts its replication offset from 0 again, so the
    /// election gives up that epoch (`Node` sees the new pid in the next probe) and numbers the
    /// new count with a new one. Until then redis stays the read-only replica it starts as.
    async fn apply_desired(&mut self) -> Result<()> {
        match self.desired.role.clone() {
            Some(RedisRole::Replica { host, port, epoch }) => {
                self.follow(&host, port, epoch).await?
            }
            Some(RedisRole::Primary { .. } | RedisRole::Detached) | None => {}
        }
        Ok(())
    }

    /// Primary of `epoch`: writes paused (until `Unfence`), replicas of older epochs dropped,
    /// and the replication user reopened with this epoch's password.
    async fn promote(&mut self, epoch: u64) -> Result<()> {
        self.desired.fenced = true;
        self.fence().await;
        self.admin_cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
            .await?;
        self.admin_cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"))
            .await?;
        let pw = format!(">{}", derive_epoch_password(&self.cfg.cluster_key, epoch));
        self.admin_cmd(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(REPLICATION_USER)
                .arg("on")
                .arg("resetpass")
                .arg(pw),
        )
        .await
    }

    /// Replica of `host:port`, primary of `epoch`, authenticating with that epoch's password.
    /// A replica is read-only, so a pause left from fencing is lifted (it would also hold up
    /// the replication stream).
    async fn follow(&mut self, host: &str, port: u16, epoch: u64) -> Result<()> {
        self.stop_serving_replicas().await?;
        let pw = derive_epoch_password(&self.cfg.cluster_key, epoch);
        self.admin_cmd(redis::cmd("CONFIG").arg("SET").arg("masterauth").arg(pw))
            .await?;
        self.admin_cmd(redis::cmd("REPLICAOF").arg(host).arg(port))
            .await?;
        self.admin_cmd(redis::cmd("CLIENT").arg("UNPAUSE")).await?;
        self.desired.fenced = false;
        Ok(())
    }

    /// Writes this epoch's history record and gossips it, so every node keeps the same one.
    async fn record_promotion(&mut self, epoch: u64) {
        // The newest primary gossip has shown (its last state stays after it died), or
        // ourselves in an older epoch (a re-election).
        let (previous, previous_epoch) = {
            let st = self.status.borrow();
            let claims = st
                .members
                .iter()
                .filter(|m| matches!(m.role.as_str(), "primary" | "fenced") && m.epoch < epoch);
            match claims.max_by_key(|m| m.epoch) {
                Some(m) => (Some(m.name.clone()), Some(m.epoch)),
                None => (None, None),
            }
        };
        let record = history::Promotion {
            epoch,
            primary: self.node.me().to_string(),
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            previous,
            previous_epoch,
            reason: self.status.borrow().last_decision.clone(),
            unavailable_ms: Some(self.writable_seen_at.elapsed().as_millis() as u64),
        };
        self.keep_history(std::slice::from_ref(&record));
        if let Ok(json) = serde_json::to_string(&record) {
            self.gossip.publish(history::PROMOTION_KEY, json).await;
        }
    }

    /// Appends the records gossip brings that this node has not kept yet.
    fn keep_history(&mut self, seen: &[history::Promotion]) {
        let path = &self.cfg.history_path;
        let kept = history::load(path).unwrap_or_default();
        let new = history::unseen(&kept, seen);
        if let Err(e) = history::append(path, &new) {
            warn!("cannot keep the epoch history in {}: {e}", path.display());
        }
    }

    async fn drop_customers(&mut self) -> Result<()> {
        self.admin_cmd(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(CUSTOMER_USER),
        )
        .await
    }

    async fn detach(&mut self) -> Result<()> {
        self.stop_serving_replicas().await?;
        let (host, port) = UNDECIDED_PRIMARY;
        self.admin_cmd(redis::cmd("REPLICAOF").arg(host).arg(port))
            .await
    }

    async fn stop_serving_replicas(&mut self) -> Result<()> {
        self.admin_cmd(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(REPLICATION_USER)
                .arg("off")
                .arg("resetpass"),
        )
        .await?;
        self.admin_cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica"))
            .await
    }

    fn redis_addr_of(&self, node: &str) -> Result<(String, u16)> {
        let n = self
            .cfg
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("election named unknown node {node}"))?;
        Ok((n.address.to_string(), n.redis_port))
    }

    /// Run one command on redis as the admin user, reconnecting after a failure.
    async fn admin_query<T: redis::FromRedisValue>(&mut self, cmd: &mut redis::Cmd) -> Result<T> {
        self.admin.query(cmd).await
    }

    async fn admin_cmd(&mut self, cmd: &mut redis::Cmd) -> Result<()> {
        self.admin_query::<redis::Value>(cmd).await.map(|_| ())
    }

    fn spawn_lease(&self, op: LeaseOp) {
        let Some(store) = self.cfg.lease_store.clone() else {
            warn!("the election asked for a lease but no backup store is configured");
            return;
        };
        let tx = self.lease_tx.clone();
        let me = self.node.me().to_string();
        // A slow store eats into the lease: say so, it explains a lapse.
        let slow = Duration::from_millis(self.cfg.election.timing.lease_ttl_ms / 3);
        tokio::spawn(async move {
            let began = Instant::now();
            let result = lease_op(&store, &me, op).await.unwrap_or_else(|e| {
                debug!("lease store: {e:#}");
                LeaseResult::Unreachable
            });
            let took = began.elapsed();
            if took > slow {
                warn!(
                    took_ms = took.as_millis() as u64,
                    ?result,
                    "lease store answered slowly"
                );
            }
            let _ = tx.send(result).await;
        });
    }
}

/// CLIENT PAUSE's timeout for fencing: a day; the loop lifts it with UNPAUSE when allowed.
const FENCE_PAUSE_MS: u64 = 86_400_000;

fn role_name(s: &PublishedState) -> String {
    match (s.role, s.writable) {
        (election::Role::Primary, true) => "primary".into(),
        (election::Role::Primary, false) => "fenced".into(),
        (election::Role::Replica, _) => "replica".into(),
        (election::Role::Starting, _) => "starting".into(),
    }
}

enum LeaseOp {
    Poll { from_epoch: u64, asked_at: u64 },
    Acquire { epoch: u64 },
    Renew { epoch: u64, heartbeat: u64 },
}

fn lease_path(epoch: u64) -> String {
    format!("lease/{epoch:020}")
}

fn heartbeat_path(epoch: u64) -> String {
    format!("lease/{epoch:020}.heartbeat")
}

/// The lease protocol over the store's five calls (see `election::Action` for the contract).
async fn lease_op(store: &Store, me: &str, op: LeaseOp) -> Result<LeaseResult> {
    Ok(match op {
        LeaseOp::Poll {
            from_epoch,
            asked_at,
        } => {
            let mut epoch = from_epoch;
            let mut holder = None;
            // Bounded walk upwards: epochs only grow by one per successful acquire.
            for _ in 0..64 {
                match store.get(&lease_path(epoch + 1)).await? {
                    Some(h) => {
                        epoch += 1;
                        holder = Some(NodeId::new(String::from_utf8_lossy(&h).to_string()));
                    }
                    None => break,
                }
            }
            if holder.is_none() && epoch > 0 {
                holder = store
                    .get(&lease_path(epoch))
                    .await?
                    .map(|h| NodeId::new(String::from_utf8_lossy(&h).to_string()));
            }
            let heartbeat = match store.get(&heartbeat_path(epoch)).await? {
                Some(b) => String::from_utf8_lossy(&b).parse().ok(),
                None => None,
            };
            LeaseResult::Heartbeat {
                asked_at,
                epoch,
                holder,
                heartbeat,
            }
        }
        LeaseOp::Acquire { epoch } => {
            if store
                .create(&lease_path(epoch), Bytes::from(me.to_string()))
                .await?
            {
                LeaseResult::Acquired { epoch }
            } else {
                let holder = store
                    .get(&lease_path(epoch))
                    .await?
                    .map(|h| String::from_utf8_lossy(&h).to_string())
                    .unwrap_or_default();
                LeaseResult::AlreadyTaken {
                    epoch,
                    holder: NodeId::new(holder),
                }
            }
        }
        LeaseOp::Renew { epoch, heartbeat } => {
            if let Some(h) = store.get(&lease_path(epoch + 1)).await? {
                LeaseResult::AlreadyTaken {
                    epoch: epoch + 1,
                    holder: NodeId::new(String::from_utf8_lossy(&h).to_string()),
                }
            } else {
                store
                    .put(&heartbeat_path(epoch), Bytes::from(heartbeat.to_string()))
                    .await?;
                LeaseResult::Renewed { epoch, heartbeat }
            }
        }
    })
}

/// The two-node lease protocol as executable checks, run against every store backend the
/// tests can start (memory, local folder, an S3-compatible server).
pub mod lease_contract {
    use super::*;

    /// Two nodes race for epoch 1: exactly one wins; renewals show in polls; the loser takes
    /// epoch 2 and the old holder's next renewal learns it lost. Panics on a breach.
    pub async fn check(store: &Store) {
        let op = |me: &'static str, op| async move { lease_op(store, me, op).await.unwrap() };
        let poll = |from_epoch| {
            op(
                "node-b",
                LeaseOp::Poll {
                    from_epoch,
                    asked_at: 7,
                },
            )
        };
        assert_eq!(
            poll(0).await,
            LeaseResult::Heartbeat {
                asked_at: 7,
                epoch: 0,
                holder: None,
                heartbeat: None
            }
        );
        let (a, b) = tokio::join!(
            op("node-a", LeaseOp::Acquire { epoch: 1 }),
            op("node-b", LeaseOp::Acquire { epoch: 1 })
        );
        let (winner, loser, lost) = match (&a, &b) {
            (LeaseResult::Acquired { epoch: 1 }, _) => ("node-a", "node-b", b),
            (_, LeaseResult::Acquired { epoch: 1 }) => ("node-b", "node-a", a),
            _ => panic!("nobody won epoch 1: {a:?} {b:?}"),
        };
        assert_eq!(
            lost,
            LeaseResult::AlreadyTaken {
                epoch: 1,
                holder: NodeId::new(winner)
            }
        );
        assert_eq!(
            op(
                winner,
                LeaseOp::Renew {
                    epoch: 1,
                    heartbeat: 42
                }
            )
            .await,
            LeaseResult::Renewed {
                epoch: 1,
                heartbeat: 42
            }
        );
        assert_eq!(
            poll(0).await,
            LeaseResult::Heartbeat {
                asked_at: 7,
                epoch: 1,
                holder: Some(NodeId::new(winner)),
                heartbeat: Some(42)
            }
        );
        assert_eq!(
            op(loser, LeaseOp::Acquire { epoch: 2 }).await,
            LeaseResult::Acquired { epoch: 2 }
        );
        assert_eq!(
            op(
                winner,
                LeaseOp::Renew {
                    epoch: 1,
                    heartbeat: 43
                }
            )
            .await,
            LeaseResult::AlreadyTaken {
                epoch: 2,
                holder: NodeId::new(loser)
            }
        );
        assert_eq!(
            poll(1).await,
            LeaseResult::Heartbeat {
                asked_at: 7,
                epoch: 2,
                holder: Some(NodeId::new(loser)),
                heartbeat: None
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lease_protocol_on_memory_and_local_folder() {
        lease_contract::check(&Store::in_memory()).await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bucket", dir.path().display());
        lease_contract::check(&Store::open(&url, &Default::default()).unwrap()).await;
    }

    #[test]
    fn durable_state_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("election.json");
        assert_eq!(load_durable(&p).unwrap(), Durable::default());
        let d = Durable {
            vote: Some(election::Vote {
                epoch: 3,
                candidate: NodeId::new("b"),
            }),
            synced_epoch: 2,
            offset: 1234,
            origin: true,
        };
        save_durable(&p, &d).unwrap();
        assert_eq!(load_durable(&p).unwrap(), d);
        std::fs::write(&p, b"{garbage").unwrap();
        assert!(load_durable(&p)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
    }
}
