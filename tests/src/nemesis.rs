//! A nemesis, as Jepsen runs them: randomized, seeded, replayable fault campaigns against a
//! real data store (agents and redis-servers on the namespace testbed), with clients running
//! through every fault and the safety and liveness invariants checked after every round.
//!
//! # A campaign
//!
//! A campaign is a list of rounds drawn up front from one `StdRng::seed_from_u64(seed)`
//! ([`schedule`]): every random choice (which faults, on which node, when, for how long) comes
//! from that generator, and none depends on what happens while the campaign runs, so the same
//! seed and round count always give the same rounds. Targets are named by role at the start of
//! the round ([`Role`]: the primary, or the k-th replica in node order), which keeps a round's
//! meaning when it is replayed on a fresh data store. The first half of the rounds run on a
//! Business data store (2 nodes, the lease in the backup bucket), the rest on a Premium one (3
//! nodes), both with backups on and each node's data directory on a 512 MiB filesystem of its
//! own ([`crate::node::SmallDisk`]). The schedule is printed before the first round, and a
//! failing round prints the command that replays it alone: `NEMESIS_SEED`, `NEMESIS_ROUNDS`
//! (same seed and round count, hence the same schedule) and `NEMESIS_FROM`/`NEMESIS_TO` (the
//! rounds to run; the others are drawn but skipped).
//!
//! # A round
//!
//! 1. Wait until the store is settled (one primary, replicas linked); start the clients.
//! 2. One or two faults ([`Fault`]), from different families so they cannot undo each other
//!    (two partitions would share nftables rules), the second starting up to 3 s after the
//!    first, each lasting at most 15 s:
//!    * kill -9 of a whole node ([`crate::netns::Testbed::kill_all`]), of its agent only, or of
//!      its redis only; a killed agent is started again when the fault ends, a redis killed
//!      alone is restarted by its agent;
//!    * SIGSTOP, then SIGCONT, of a node's agent, its redis or both, for 0.2-15 s, by pid only
//!      ([`crate::node::Stopped`]);
//!    * partitions: the primary alone (its switch port down), the primary with the client host
//!      (cut from the other data nodes only), random halves of all hosts, and one-way drops
//!      between the primary and another host, in either direction;
//!    * 30 % packet loss (on one node, or 16 % on every data node each way: about 30 % on every
//!      link);
//!    * a rate-limited link (`tc tbf`, 128 kbit/s to 1 Mbit/s): this kernel has no
//!      `sch_netem`, so latency comes from queueing (up to 300 ms, then drops) and appears
//!      only under the clients' load ([`crate::netns::Testbed::limit_rate`]);
//!    * the object store down: the bucket is a local folder, atomically swapped with a file
//!      so every access fails ([`Cluster::store_outage`]). Being a folder, it is reachable
//!      from every namespace: a partition never cuts a node off from the store (so an
//!      isolated Business primary keeps its lease, and the store is unavailable meanwhile);
//!    * a node's data disk full ([`crate::node::fill_filesystem`]);
//!    * a rolling restart: every agent in turn stopped with SIGTERM, started, healthy (it
//!      lasts as long as that takes).
//!
//!    A node is targeted as the primary with probability 1/2. Throughout the round a
//!    stand-in for systemd (`Restart=always`, `RestartSec=2s`) starts again any agent that
//!    exits with an error on its own (e.g. one started while the store is down); each such
//!    restart is reported.
//! 3. Healed: within [`HEAL_BOUND`] of the last fault's end the store must be settled again
//!    ([`Cluster::wait_settled`]), the primary's backups shipping (state `shipping`, no
//!    error, and at least one more WAL upload than when it settled), and the WAIT-1 writer
//!    must have a write sent after the faults ended acknowledged.
//! 4. Clients stopped, invariants checked.
//!
//! # Clients
//!
//! * The WAIT-1 writer through the agents' Sentinel ports ([`Cluster::start_checkers`]), with
//!   keys of the round's own (`r{round}k{n}`); its checkers also sample the agents' statuses.
//! * One pinned writer per data node ([`TimedWriter`]): from the client host, over TLS,
//!   straight to that node's redis, `SET nem:{node}:r{round}:{n} n` every 10 ms; it never
//!   looks for another node, so it shows every moment its node accepted writes. Each write
//!   records its send time, reply time and outcome; afterwards, the OK writes missing from the
//!   data store are counted (what a client without WAIT lost), in all and inside every
//!   two-writable window.
//! * The [`SplitBrainMonitor`], probing every redis (`INFO` + `SET`) from inside its own
//!   namespace every 20 ms.
//!
//! # Invariants
//!
//! * No WAIT-1-acknowledged write of the round is missing from the primary afterwards.
//! * Never two writable primaries, by two witnesses:
//!   - the monitor's windows (two probes found two nodes writable at once; a node counts
//!     as writable from a probe `SET` it accepted to its next probe, so a window's length
//!     is over-estimated by up to one probe interval);
//!   - the pinned writers' windows, by this rule ([`certain_writable`], [`pinned_windows`]):
//!     a node was *certainly writable* from the reply to the first to the send of the last
//!     write of a run of its consecutive OK writes in which every write took at most 1 s
//!     and followed the previous reply within 1 s. Two nodes certainly writable at the same
//!     instant t each accepted a write before t and another after t, with nothing but
//!     accepted writes in between: no clean handover does that (the old primary accepts its
//!     last write, sent at s, before the new one accepts its first, answered at r, so s < r
//!     and their certain stretches never meet); only two handovers within one run's
//!     sub-second gaps could, and elections take longer.
//! * Healed within [`HEAL_BOUND`] (above).
//! * The primary's current backup chain verifies (`redis-steward backup verify --chain`) after
//!   every round; after a data store's last round every chain verifies, and the newest one is
//!   restored into a side directory and must hold every WAIT-1-acknowledged write of the
//!   campaign that the store still had.
//!
//! # Report
//!
//! Every round's result ([`RoundResult`]) is printed as it ends, with information beyond the
//! invariants: pinned writes lost, samples in which two agents' statuses claimed to be the
//! writable primary, agent restarts, the longest stretch without a WAIT-1 acknowledgement.
//! [`CampaignReport::markdown`] renders the campaign as tables for BENCHMARKS.md.

use crate::backups::{self, TimedOutcome, TimedWrite, TimedWriter};
use crate::cluster::{Checkers, Cluster, Options, REDIS_PORT};
use crate::node::{env_or, fill_filesystem, signal_pid, wait_for, wait_pid_gone, Stopped};
use crate::sentinel_client::{overlap_windows, SplitBrainMonitor};
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After the last fault of a round ends, the store must be healed within this.
pub const HEAL_BOUND: Duration = Duration::from_secs(30);
/// No fault lasts longer (a rolling restart excepted: it takes what it takes).
pub const MAX_FAULT: Duration = Duration::from_secs(15);
/// Each node's data directory is a filesystem of this size (for the disk-full fault).
/// 512 MiB: a long campaign's keys (never deleted) and AOF rewrites must fit beside the fill.
pub const DATA_DISK_MB: u64 = 512;
/// A pinned writer's pace.
const PINNED_EVERY: Duration = Duration::from_millis(10);
/// The split-brain monitor's probe interval: it stretches every writable sample to the next
/// probe, so a window's length is over-estimated by up to this much.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// A run of OK writes (see [`certain_writable`]) breaks at a write that took longer than
/// this ...
pub const RUN_MAX_RTT_MS: u64 = 1000;
/// ... or that was sent longer than this after the previous reply.
pub const RUN_MAX_GAP_MS: u64 = 1000;
/// WAIT-1 acknowledgements needed before the faults start (the writer works).
const ACKS_BEFORE_FAULTS: usize = 20;
/// The second fault of a round starts at most this long after the first.
const SECOND_FAULT_WITHIN_MS: u64 = 3000;
/// After a missed heal bound, how much longer the round waits for the store to come back
/// before it gives the data store up.
const HEAL_GRACE: Duration = Duration::from_secs(30);
/// An agent that exits with an error on its own is started again after this, as systemd
/// does (`Restart=always`, `RestartSec=2s` in systemd/redis-steward.service).
const RESTART_SEC: Duration = Duration::from_secs(2);
/// The agent's process name (`/proc/PID/comm`) and redis's.
const AGENT_COMM: &str = "redis-steward";
const REDIS_COMM: &str = "redis-server";

/// The two HA plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Plan {
    Business,
    Premium,
}

impl Plan {
    pub fn name(self) -> &'static str {
        match self {
            Plan::Business => "business",
            Plan::Premium => "premium",
        }
    }
}

/// A data node, by its role when the round starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// The (k mod replicas)-th replica in node order: drawn without knowing the plan, so the
    /// schedule does not depend on how the rounds are split between the plans.
    Replica(u8),
}

/// A host a one-way drop involves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Node(Role),
    Client,
}

/// One fault of a round (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillNode(Role),
    KillAgent(Role),
    KillRedis(Role),
    PauseAgent(Role),
    PauseRedis(Role),
    PauseBoth(Role),
    IsolatePrimary,
    /// The primary cut from the other data nodes; the client host still reaches it.
    PrimaryWithClient,
    /// All hosts in two halves: the primary, and of the others (replicas in node order, then
    /// the client host) those whose bit is set in `with_primary` (taken modulo 2^others - 1,
    /// so the other half is never empty), against the rest.
    Halves {
        with_primary: u8,
    },
    /// Every packet from `from` to `to` dropped; one of them is the primary.
    OneWay {
        from: Peer,
        to: Peer,
    },
    /// `None`: 16 % each way on every data node (about 30 % per link); `Some`: 30 % on one.
    Loss(Option<Role>),
    Latency {
        node: Role,
        kbit: u32,
    },
    StoreDown,
    DiskFull(Role),
    RollingRestart,
}

/// Every fault kind, in the report's order.
pub const KINDS: [&str; 15] = [
    "kill-node",
    "kill-agent",
    "kill-redis",
    "pause-agent",
    "pause-redis",
    "pause-both",
    "isolate-primary",
    "primary-with-client",
    "halves",
    "one-way",
    "loss",
    "latency",
    "store-down",
    "disk-full",
    "rolling-restart",
];

/// Fault families; a round's two faults come from different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Process,
    Partition,
    Link,
    Store,
    Disk,
    Rolling,
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        KINDS[self.kind_index()]
    }

    fn kind_index(&self) -> usize {
        match self {
            Fault::KillNode(_) => 0,
            Fault::KillAgent(_) => 1,
            Fault::KillRedis(_) => 2,
            Fault::PauseAgent(_) => 3,
            Fault::PauseRedis(_) => 4,
            Fault::PauseBoth(_) => 5,
            Fault::IsolatePrimary => 6,
            Fault::PrimaryWithClient => 7,
            Fault::Halves { .. } => 8,
            Fault::OneWay { .. } => 9,
            Fault::Loss(_) => 10,
            Fault::Latency { .. } => 11,
            Fault::StoreDown => 12,
            Fault::DiskFull(_) => 13,
            Fault::RollingRestart => 14,
        }
    }

    fn family(&self) -> Family {
        match self.kind_index() {
            0..=5 => Family::Process,
            6..=9 => Family::Partition,
            10 | 11 => Family::Link,
            12 => Family::Store,
            13 => Family::Disk,
            _ => Family::Rolling,
        }
    }

    /// Whether `self` and `other` may run in the same round: different families, and a
    /// rolling restart with no process or disk fault (it restarts every agent itself).
    fn compatible(&self, other: &Fault) -> bool {
        let (a, b) = (self.family(), other.family());
        let rolling_conflict = |x: Family, y: Family| {
            x == Family::Rolling && matches!(y, Family::Process | Family::Disk)
        };
        a != b && !rolling_conflict(a, b) && !rolling_conflict(b, a)
    }

    /// Faults over in an instant (the duration drawn for them is not used).
    fn instant(&self) -> bool {
        matches!(self, Fault::KillRedis(_) | Fault::RollingRestart)
    }
}

/// A fault as scheduled: when (after the round's faults begin) and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub fault: Fault,
    pub start_ms: u64,
    pub duration_ms: u64,
}

/// One round as scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPlan {
    /// 1-based, over the whole campaign.
    pub index: usize,
    pub plan: Plan,
    pub faults: Vec<Planned>,
}

fn draw_role(rng: &mut StdRng) -> Role {
    if rng.random_bool(0.5) {
        Role::Primary
    } else {
        Role::Replica(rng.random_range(0..2))
    }
}

fn draw_fault(rng: &mut StdRng) -> Fault {
    match rng.random_range(0..KINDS.len()) {
        0 => Fault::KillNode(draw_role(rng)),
        1 => Fault::KillAgent(draw_role(rng)),
        2 => Fault::KillRedis(draw_role(rng)),
        3 => Fault::PauseAgent(draw_role(rng)),
        4 => Fault::PauseRedis(draw_role(rng)),
        5 => Fault::PauseBoth(draw_role(rng)),
        6 => Fault::IsolatePrimary,
        7 => Fault::PrimaryWithClient,
        8 => Fault::Halves {
            with_primary: rng.random(),
        },
        9 => {
            let other = match rng.random_range(0..3) {
                0 => Peer::Client,
                k => Peer::Node(Role::Replica(k - 1)),
            };
            let primary = Peer::Node(Role::Primary);
            if rng.random_bool(0.5) {
                Fault::OneWay {
                    from: primary,
                    to: other,
                }
            } else {
                Fault::OneWay {
                    from: other,
                    to: primary,
                }
            }
        }
        10 => Fault::Loss(rng.random_bool(0.5).then(|| draw_role(rng))),
        11 => Fault::Latency {
            node: draw_role(rng),
            kbit: [128, 512, 1024][rng.random_range(0..3)],
        },
        12 => Fault::StoreDown,
        13 => Fault::DiskFull(draw_role(rng)),
        _ => Fault::RollingRestart,
    }
}

fn draw_duration(rng: &mut StdRng, fault: &Fault, max: Duration) -> u64 {
    let max = (max.min(MAX_FAULT).as_millis() as u64).max(1000);
    let min = match fault {
        Fault::PauseAgent(_) | Fault::PauseRedis(_) | Fault::PauseBoth(_) => 200,
        _ => 1000,
    };
    let ms = rng.random_range(min..=max);
    if fault.instant() {
        0
    } else {
        ms
    }
}

/// The campaign's rounds: `rounds` of them from `seed`, faults at most `max_fault` long.
/// Rounds 1..=ceil(rounds/2) run on Business, the rest on Premium.
pub fn schedule(seed: u64, rounds: usize, max_fault: Duration) -> Vec<RoundPlan> {
    let mut rng = StdRng::seed_from_u64(seed);
    let business = rounds.div_ceil(2);
    (1..=rounds)
        .map(|index| {
            let first = draw_fault(&mut rng);
            let mut faults = vec![Planned {
                fault: first,
                start_ms: rng.random_range(0..=1000),
                duration_ms: draw_duration(&mut rng, &first, max_fault),
            }];
            if rng.random_bool(0.5) {
                // Bounded: a compatible second fault is found in a few draws.
                for _ in 0..100 {
                    let second = draw_fault(&mut rng);
                    if second.compatible(&first) {
                        let start_ms =
                            faults[0].start_ms + rng.random_range(0..=SECOND_FAULT_WITHIN_MS);
                        faults.push(Planned {
                            fault: second,
                            start_ms,
                            duration_ms: draw_duration(&mut rng, &second, max_fault),
                        });
                        break;
                    }
                }
            }
            RoundPlan {
                index,
                plan: if index <= business {
                    Plan::Business
                } else {
                    Plan::Premium
                },
                faults,
            }
        })
        .collect()
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Primary => write!(f, "primary"),
            Role::Replica(k) => write!(f, "replica#{k}"),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Node(r) => write!(f, "{r}"),
            Peer::Client => write!(f, "client"),
        }
    }
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.fault {
            Fault::KillNode(r)
            | Fault::KillAgent(r)
            | Fault::KillRedis(r)
            | Fault::PauseAgent(r)
            | Fault::PauseRedis(r)
            | Fault::PauseBoth(r)
            | Fault::DiskFull(r)
            | Fault::Loss(Some(r)) => format!("{} {r}", self.fault.kind()),
            Fault::Loss(None) => "loss every-node".into(),
            Fault::Halves { with_primary } => format!("halves mask {with_primary}"),
            Fault::OneWay { from, to } => format!("one-way {from}->{to}"),
            Fault::Latency { node, kbit } => format!("latency {node} {kbit}kbit"),
            other => other.kind().to_string(),
        };
        write!(f, "{what} at +{} ms", self.start_ms)?;
        if !self.fault.instant() {
            write!(f, " for {} ms", self.duration_ms)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for RoundPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let faults: Vec<String> = self.faults.iter().map(|p| p.to_string()).collect();
        write!(
            f,
            "round {} ({}): {}",
            self.index,
            self.plan.name(),
            faults.join("; ")
        )
    }
}

/// The nodes of a round by role: the primary when it started and the replicas in node order.
#[derive(Debug, Clone)]
pub struct Roles {
    pub primary: usize,
    pub replicas: Vec<usize>,
}

impl Roles {
    pub fn new(nodes: usize, primary: usize) -> Roles {
        Roles {
            primary,
            replicas: (0..nodes).filter(|&i| i != primary).collect(),
        }
    }

    pub fn node(&self, role: Role) -> usize {
        match role {
            Role::Primary => self.primary,
            Role::Replica(k) => self.replicas[k as usize % self.replicas.len()],
        }
    }

    /// The testbed host of `peer`.
    fn host(&self, c: &Cluster, peer: Peer) -> usize {
        match peer {
            Peer::Node(r) => c.node_host(self.node(r)),
            Peer::Client => c.client_host(),
        }
    }

    /// The two halves of [`Fault::Halves`], as testbed hosts.
    fn halves(&self, c: &Cluster, with_primary: u8) -> (Vec<usize>, Vec<usize>) {
        let others: Vec<usize> = self
            .replicas
            .iter()
            .map(|&i| c.node_host(i))
            .chain([c.client_host()])
            .collect();
        split_hosts(c.node_host(self.primary), &others, with_primary)
    }
}

/// `primary` and those of `others` whose bit is set in `with_primary` (modulo
/// 2^others - 1, so the second half is never empty), and the rest.
fn split_hosts(primary: usize, others: &[usize], with_primary: u8) -> (Vec<usize>, Vec<usize>) {
    let mask = with_primary as usize % ((1 << others.len()) - 1);
    let mut a = vec![primary];
    let mut b = Vec::new();
    for (bit, &h) in others.iter().enumerate() {
        if mask & (1 << bit) != 0 {
            a.push(h);
        } else {
            b.push(h);
        }
    }
    (a, b)
}

/// What ends a fault: run once, by [`Heal::run`] or, if the fault's thread fails first, on
/// drop, so nothing a round did outlives it.
struct Heal<'a>(Option<Box<dyn FnOnce() -> Result<()> + Send + 'a>>);

impl<'a> Heal<'a> {
    fn new(f: impl FnOnce() -> Result<()> + Send + 'a) -> Heal<'a> {
        Heal(Some(Box::new(f)))
    }

    fn none() -> Heal<'a> {
        Heal(None)
    }

    fn run(mut self) -> Result<()> {
        match self.0.take() {
            Some(f) => f(),
            None => Ok(()),
        }
    }
}

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            if let Err(e) = f() {
                eprintln!("nemesis: healing a fault: {e:#}");
            }
        }
    }
}

/// What a fault did: kind, concrete target, when it started (ms after the round's clients
/// started) and how long it lasted (until its heal was issued).
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: &'static str,
    pub target: String,
    pub start_ms: u64,
    pub duration_ms: u64,
}

fn node_name(i: usize, roles: &Roles) -> String {
    let role = if i == roles.primary {
        "primary"
    } else {
        "replica"
    };
    format!("node-{i} ({role})")
}

/// Starts `fault`; returns what it hit and what ends it. A rolling restart runs to its end
/// here.
fn inject<'a>(c: &'a Cluster, roles: &Roles, fault: Fault) -> Result<(String, Heal<'a>)> {
    let node_of = |r: Role| roles.node(r);
    let target_of = |r: Role| node_name(roles.node(r), roles);
    let restart = move |i: usize| Heal::new(move || c.nodes[i].start());
    Ok(match fault {
        Fault::KillNode(r) => {
            let i = node_of(r);
            c.bed.kill_all(c.node_host(i))?;
            let _ = c.nodes[i].wait_exit(Duration::from_secs(10));
            (target_of(r), restart(i))
        }
        Fault::KillAgent(r) => {
            let i = node_of(r);
            let redis = c.nodes[i].redis_pid();
            c.nodes[i].signal(libc::SIGKILL);
            c.nodes[i].wait_exit(Duration::from_secs(10))?;
            // Its redis follows it (PR_SET_PDEATHSIG); one that did not would hold the port.
            if let Some(pid) = redis {
                if !wait_pid_gone(pid, Duration::from_secs(10)) {
                    let _ = signal_pid(pid, libc::SIGKILL, REDIS_COMM);
                }
            }
            (target_of(r), restart(i))
        }
        Fault::KillRedis(r) => {
            let i = node_of(r);
            let pid = c.nodes[i].redis_pid().context("no redis pid")?;
            signal_pid(pid, libc::SIGKILL, REDIS_COMM)?;
            (target_of(r), Heal::none())
        }
        Fault::PauseAgent(r) | Fault::PauseRedis(r) | Fault::PauseBoth(r) => {
            let i = node_of(r);
            // The redis pid comes from the agent's status: read it before the agent stops.
            let redis = match fault {
                Fault::PauseAgent(_) => None,
                _ => Some(c.nodes[i].redis_pid().context("no redis pid")?),
            };
            let agent = match fault {
                Fault::PauseRedis(_) => None,
                _ => Some(c.nodes[i].pid().context("agent not running")?),
            };
            let mut stopped = Stopped::new();
            if let Some(pid) = agent {
                stopped.stop(pid, AGENT_COMM)?;
            }
            if let Some(pid) = redis {
                stopped.stop(pid, REDIS_COMM)?;
            }
            (
                target_of(r),
                Heal::new(move || {
                    stopped.resume();
                    Ok(())
                }),
            )
        }
        Fault::IsolatePrimary => {
            let h = c.node_host(roles.primary);
            c.bed.isolate(h)?;
            (
                node_name(roles.primary, roles),
                Heal::new(move || c.bed.heal(h)),
            )
        }
        Fault::PrimaryWithClient => {
            let p = c.node_host(roles.primary);
            let others: Vec<usize> = roles.replicas.iter().map(|&i| c.node_host(i)).collect();
            let pairs: Vec<(usize, usize)> = others.iter().map(|&o| (p, o)).collect();
            (
                format!("{} + client vs replicas", node_name(roles.primary, roles)),
                cut_pairs(c, pairs)?,
            )
        }
        Fault::Halves { with_primary } => {
            let (a, b) = roles.halves(c, with_primary);
            let pairs: Vec<(usize, usize)> = a
                .iter()
                .flat_map(|&x| b.iter().map(move |&y| (x, y)))
                .collect();
            (format!("hosts {a:?} vs {b:?}"), cut_pairs(c, pairs)?)
        }
        Fault::OneWay { from, to } => {
            let (f, t) = (roles.host(c, from), roles.host(c, to));
            c.bed.drop_one_way(f, t)?;
            (
                format!("host {f} -> host {t} ({from} -> {to})"),
                Heal::new(move || c.bed.heal_one_way(f, t)),
            )
        }
        Fault::Loss(target) => {
            let (hosts, percent, what): (Vec<usize>, u8, String) = match target {
                Some(r) => (vec![c.node_host(node_of(r))], 30, target_of(r)),
                None => (
                    (0..c.nodes.len()).map(|i| c.node_host(i)).collect(),
                    16,
                    "every data node".into(),
                ),
            };
            let applied = hosts.clone();
            // Made first: if setting the loss fails half way, dropping it clears what was set.
            let heal = Heal::new(move || hosts.iter().try_for_each(|&h| c.bed.clear_loss(h)));
            for h in applied {
                c.bed.set_loss(h, percent)?;
            }
            (format!("{what}, {percent} %"), heal)
        }
        Fault::Latency { node, kbit } => {
            let h = c.node_host(node_of(node));
            c.bed.limit_rate(h, kbit)?;
            (
                format!("{}, {kbit} kbit/s", target_of(node)),
                Heal::new(move || c.bed.clear_rate_limit(h)),
            )
        }
        Fault::StoreDown => {
            let outage = c.store_outage()?;
            ("bucket".into(), Heal::new(move || outage.end()))
        }
        Fault::DiskFull(r) => {
            let filled = fill_filesystem(&c.nodes[node_of(r)].data_dir())?;
            let what = format!("{}, {} MiB", target_of(r), filled.bytes >> 20);
            (
                what,
                Heal::new(move || {
                    filled.release();
                    Ok(())
                }),
            )
        }
        Fault::RollingRestart => {
            for (i, agent) in c.nodes.iter().enumerate() {
                agent.stop().with_context(|| format!("stopping node-{i}"))?;
                agent.start()?;
                // Not `wait_healthy`, which gives up when the agent exits: one that exits
                // with an error is started again by the round's `Supervisor`, as by systemd.
                let healthy = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
                    agent.status().filter(|s| s["redis"]["healthy"] == true)
                });
                if healthy.is_none() {
                    bail!(
                        "node-{i} not healthy within 60 s of its restart; log:\n{}",
                        agent.log()
                    );
                }
            }
            ("every agent".into(), Heal::none())
        }
    })
}

/// Cuts every pair of hosts; what heals them (also the pairs already cut if one fails).
fn cut_pairs(c: &Cluster, pairs: Vec<(usize, usize)>) -> Result<Heal<'_>> {
    let cut = pairs.clone();
    let heal = Heal::new(move || pairs.iter().try_for_each(|&(a, b)| c.bed.heal_link(a, b)));
    for (a, b) in cut {
        c.bed.cut_link(a, b)?;
    }
    Ok(heal)
}

/// Runs one planned fault on its own schedule: waits for its start (measured from
/// `faults_begin`), injects it, holds it, heals it.
fn run_fault(
    c: &Cluster,
    roles: &Roles,
    planned: &Planned,
    faults_begin: Instant,
    round_start: Instant,
) -> Result<FaultRecord> {
    let at = faults_begin + Duration::from_millis(planned.start_ms);
    // Scheduling, not synchronisation: the fault starts at its planned moment.
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    let started = Instant::now();
    let (target, heal) = inject(c, roles, planned.fault)
        .with_context(|| format!("injecting {}", planned.fault.kind()))?;
    if !planned.fault.instant() {
        std::thread::sleep(Duration::from_millis(planned.duration_ms));
    }
    let duration = started.elapsed();
    heal.run()
        .with_context(|| format!("healing {}", planned.fault.kind()))?;
    Ok(FaultRecord {
        kind: planned.fault.kind(),
        target,
        start_ms: started.duration_since(round_start).as_millis() as u64,
        duration_ms: duration.as_millis() as u64,
    })
}

/// Stands in for systemd during a round: an agent that exits with an error code on its own
/// (not one the nemesis killed or stopped: those exit by a signal or with 0, and are waited
/// for) is started again after [`RESTART_SEC`]. Each restart is recorded.
struct Supervisor {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Supervisor {
    fn start(c: &Arc<Cluster>, round_start: Instant) -> Supervisor {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, flag) = (c.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut restarts = Vec::new();
            // Bounded: a round lasts minutes at most; this gives up after 30.
            let every = Duration::from_millis(200);
            for _ in 0..(30 * 60 * 5) {
                if flag.load(Relaxed) {
                    break;
                }
                for (i, agent) in c.nodes.iter().enumerate() {
                    let Some(Some(code)) = agent.try_exit_code() else {
                        continue;
                    };
                    if code == 0 {
                        continue;
                    }
                    let log = agent.log();
                    let last = log.lines().rev().find(|l| !l.trim().is_empty());
                    restarts.push(format!(
                        "node-{i}'s agent exited with code {code} at +{:.1} s ({}); started again after {} s, as systemd would",
                        round_start.elapsed().as_secs_f64(),
                        last.unwrap_or("no log").trim(),
                        RESTART_SEC.as_secs()
                    ));
                    std::thread::sleep(RESTART_SEC);
                    if let Err(e) = agent.start() {
                        restarts.push(format!("node-{i}: starting it again failed: {e:#}"));
                    }
                }
                std::thread::sleep(every);
            }
            restarts
        });
        Supervisor {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop supervising; the restarts it made.
    fn finish(mut self) -> Vec<String> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Node `i`'s pinned writer's keys in round `round` are `nem:{i}:r{round}:{n}`.
fn pinned_prefix(i: usize, round: usize) -> String {
    format!("nem:{i}:r{round}:")
}

/// One writer pinned to each data node (see the module doc).
struct PinnedWriters {
    writers: Vec<TimedWriter>,
}

impl PinnedWriters {
    fn start(c: &Cluster, round: usize) -> PinnedWriters {
        let client_ns = c.bed.host(c.client_host()).name.clone();
        let writers = (0..c.nodes.len())
            .map(|i| {
                let prefix = pinned_prefix(i, round);
                let addr = std::net::SocketAddr::new(c.node_ip(i).into(), REDIS_PORT);
                TimedWriter::start_paced(
                    Some(client_ns.clone()),
                    backups::tls_client(addr, &c.ca_file()),
                    &prefix,
                    PINNED_EVERY,
                )
            })
            .collect();
        PinnedWriters { writers }
    }

    fn finish(self) -> Vec<Vec<TimedWrite>> {
        self.writers.into_iter().map(TimedWriter::finish).collect()
    }
}

/// The stretches (unix ms, start < end) in which a pinned writer's node was certainly
/// writable: for each run of consecutive OK writes, each answered within
/// [`RUN_MAX_RTT_MS`] and sent within [`RUN_MAX_GAP_MS`] of the previous reply, from the reply
/// to its first write to the send of its last (see the module doc).
pub fn certain_writable(writes: &[TimedWrite]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    // (reply to the run's first write, send of its last, reply to its last)
    let mut run: Option<(u64, u64, u64)> = None;
    let mut close = |run: Option<(u64, u64, u64)>| {
        if let Some((from, to, _)) = run {
            if to > from {
                out.push((from, to));
            }
        }
    };
    for w in writes {
        let reply = match (w.outcome == TimedOutcome::Ok, w.ok_ms) {
            (true, Some(r)) if r.saturating_sub(w.sent_ms) <= RUN_MAX_RTT_MS => r,
            _ => {
                close(run.take());
                continue;
            }
        };
        run = match run {
            Some((first, _, last)) if w.sent_ms.saturating_sub(last) <= RUN_MAX_GAP_MS => {
                Some((first, w.sent_ms, reply))
            }
            other => {
                close(other);
                Some((reply, w.sent_ms, reply))
            }
        };
    }
    close(run);
    out
}

/// A moment with two certainly writable nodes, from the pinned writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedWindow {
    /// Unix ms.
    pub from_ms: u64,
    pub to_ms: u64,
    /// The nodes certainly writable in it.
    pub nodes: Vec<usize>,
    /// OK writes each of them took in it.
    pub writes: Vec<usize>,
    /// How many of those the data store no longer had after the round.
    pub lost: Vec<usize>,
}

/// The windows in which two or more nodes were certainly writable ([`certain_writable`]),
/// `writes[i]` being node i's pinned writes.
pub fn pinned_windows(writes: &[Vec<TimedWrite>]) -> Vec<PinnedWindow> {
    let stretches: Vec<Vec<(u64, u64)>> = writes.iter().map(|w| certain_writable(w)).collect();
    let Some(base_ms) = stretches.iter().flatten().map(|&(a, _)| a).min() else {
        return Vec::new();
    };
    // The overlap sweep of the split-brain monitor, on samples made of the stretches.
    let base = Instant::now();
    let at = |ms: u64| base + Duration::from_millis(ms - base_ms);
    let samples: Vec<Vec<(Instant, bool)>> = stretches
        .iter()
        .map(|s| {
            s.iter()
                .flat_map(|&(a, b)| [(at(a), true), (at(b), false)])
                .collect()
        })
        .collect();
    overlap_windows(&samples)
        .into_iter()
        .map(|(a, b)| {
            let from_ms = base_ms + a.duration_since(base).as_millis() as u64;
            let to_ms = base_ms + b.duration_since(base).as_millis() as u64;
            let nodes: Vec<usize> = (0..stretches.len())
                .filter(|&i| stretches[i].iter().any(|&(x, y)| x < to_ms && y > from_ms))
                .collect();
            let writes = nodes
                .iter()
                .map(|&i| {
                    writes[i]
                        .iter()
                        .filter(|w| w.ok_ms.is_some_and(|r| r >= from_ms && r <= to_ms))
                        .count()
                })
                .collect();
            PinnedWindow {
                from_ms,
                to_ms,
                lost: vec![0; nodes.len()],
                nodes,
                writes,
            }
        })
        .collect()
}

/// A round's outcome.
#[derive(Debug, Clone)]
pub struct RoundResult {
    pub plan: RoundPlan,
    pub faults: Vec<FaultRecord>,
    pub primary_before: Option<usize>,
    pub primary_after: Option<usize>,
    /// The WAIT-1 writer: writes sent and acknowledged.
    pub wait_attempts: u64,
    pub wait_acked: usize,
    /// The pinned writers, all nodes together: writes sent, answered OK, and answered OK but
    /// missing afterwards (information: without WAIT a failover may lose them; those lost
    /// inside a two-writable window are in [`PinnedWindow::lost`]).
    pub pinned_attempts: usize,
    pub pinned_ok: usize,
    pub pinned_lost: usize,
    /// WAIT-1-acknowledged writes missing afterwards (and a few of their key numbers).
    pub lost: usize,
    pub lost_sample: Vec<u64>,
    /// Two writable primaries, from the monitor: windows and the longest (ms).
    pub monitor_windows: usize,
    pub monitor_longest_ms: u64,
    /// Two writable primaries, from the pinned writers.
    pub pinned_windows: Vec<PinnedWindow>,
    /// Samples in which two agents' statuses said writable primary (information only).
    pub agent_claims: usize,
    /// Agents that exited with an error on their own and were started again ([`Supervisor`]).
    pub agent_restarts: Vec<String>,
    /// Longest stretch without a WAIT-1 acknowledgement (ms), from the first one on.
    pub longest_unavailable_ms: u64,
    /// From the end of the last fault to healed; None: not within the bound.
    pub heal_ms: Option<u64>,
    pub chain_verified: bool,
    /// What broke an invariant (empty: the round passed).
    pub violations: Vec<String>,
    /// The store did not come back: no further round can run on it.
    pub broken: bool,
    /// The round's WAIT-1 keys `{prefix}{n}` that were acknowledged and not lost.
    pub kept_prefix: String,
    pub kept: BTreeSet<u64>,
}

impl RoundResult {
    fn new(plan: &RoundPlan) -> RoundResult {
        RoundResult {
            plan: plan.clone(),
            faults: Vec::new(),
            primary_before: None,
            primary_after: None,
            wait_attempts: 0,
            wait_acked: 0,
            pinned_attempts: 0,
            pinned_ok: 0,
            pinned_lost: 0,
            lost: 0,
            lost_sample: Vec::new(),
            monitor_windows: 0,
            monitor_longest_ms: 0,
            pinned_windows: Vec::new(),
            agent_claims: 0,
            agent_restarts: Vec::new(),
            longest_unavailable_ms: 0,
            heal_ms: None,
            chain_verified: false,
            violations: Vec::new(),
            broken: false,
            kept_prefix: String::new(),
            kept: BTreeSet::new(),
        }
    }

    pub fn pinned_longest_ms(&self) -> u64 {
        self.pinned_windows
            .iter()
            .map(|w| w.to_ms - w.from_ms)
            .max()
            .unwrap_or(0)
    }

    /// One paragraph for the log.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| {
                format!(
                    "{} {} at +{:.1} s for {:.1} s",
                    f.kind,
                    f.target,
                    f.start_ms as f64 / 1000.0,
                    f.duration_ms as f64 / 1000.0
                )
            })
            .collect();
        let mut s = format!(
            "round {} ({}): primary {:?} -> {:?}; faults: {}\n  WAIT-1 acked {}/{}, pinned OK {}/{} ({} of them lost); lost {}{}; two writable: monitor {} (longest {} ms), pinned {} (longest {} ms); agents claiming two: {}; longest unavailability {:.1} s; healed {}; chain {}",
            self.plan.index,
            self.plan.plan.name(),
            self.primary_before,
            self.primary_after,
            faults.join("; "),
            self.wait_acked,
            self.wait_attempts,
            self.pinned_ok,
            self.pinned_attempts,
            self.pinned_lost,
            self.lost,
            if self.lost_sample.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {:?})", self.lost_sample)
            },
            self.monitor_windows,
            self.monitor_longest_ms,
            self.pinned_windows.len(),
            self.pinned_longest_ms(),
            self.agent_claims,
            self.longest_unavailable_ms as f64 / 1000.0,
            match self.heal_ms {
                Some(ms) => format!("in {:.1} s", ms as f64 / 1000.0),
                None => format!("NOT within {} s", HEAL_BOUND.as_secs()),
            },
            if self.chain_verified {
                "verified"
            } else {
                "NOT verified"
            },
        );
        for w in &self.pinned_windows {
            let _ = write!(
                s,
                "\n  pinned writers: nodes {:?} all accepted writes for {} ms from +{:.1} s (OK writes in it: {:?}, lost afterwards: {:?})",
                w.nodes,
                w.to_ms - w.from_ms,
                w.from_ms as f64 / 1000.0,
                w.writes,
                w.lost
            );
        }
        for r in &self.agent_restarts {
            let _ = write!(s, "\n  restart: {r}");
        }
        for v in &self.violations {
            let _ = write!(s, "\n  VIOLATION: {v}");
        }
        s
    }
}

/// The longest stretch without an acknowledgement: between consecutive ones, and from the
/// last one to `finished_ms` (all ms on one clock).
fn longest_gap(acked_at_ms: &[u64], finished_ms: u64) -> u64 {
    acked_at_ms
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .chain(acked_at_ms.last().map(|&l| finished_ms.saturating_sub(l)))
        .max()
        .unwrap_or(finished_ms)
}

/// Healed: settled ([`Cluster::wait_settled`]), the primary's backups shipping (state
/// `shipping`, no error, one more upload than when it settled), and a write the WAIT-1
/// writer sent after `since` acknowledged, all by `deadline`. The primary.
///
/// The last one matters: agents can report a replica "link up" while its TCP connection
/// is still in retransmission backoff after a long partition, and no write is acknowledged
/// until it recovers.
fn wait_healed(
    c: &Cluster,
    checkers: &Checkers,
    since: Instant,
    deadline: Instant,
) -> Option<usize> {
    let p = wait_settled_and_shipping(c, deadline)?;
    checkers.wait_ack_after(since, deadline.saturating_duration_since(Instant::now()))?;
    Some(p)
}

/// The first two parts of [`wait_healed`].
fn wait_settled_and_shipping(c: &Cluster, deadline: Instant) -> Option<usize> {
    let backup = |p: usize| c.nodes[p].status().map(|s| s["backup"].clone());
    // Bounded by the deadline and in count: each pass takes at least the settle check's 1 s.
    for _ in 0..1000 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return None;
        }
        let Ok(p) = c.wait_settled(remaining) else {
            return None;
        };
        let Some(before) = backup(p).and_then(|b| b["uploads"].as_u64()) else {
            continue;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let shipping = wait_for(remaining, Duration::from_millis(100), || {
            let b = backup(p)?;
            (b["state"] == "shipping"
                && b["last_error"].is_null()
                && b["uploads"].as_u64()? > before)
                .then_some(())
        });
        if shipping.is_some() && c.primary() == Some(p) {
            return Some(p);
        }
    }
    None
}

/// `redis-steward backup verify` (of one chain, or of all), with the config of node `i`.
fn verify_backups(c: &Cluster, i: usize, chain: Option<&str>) -> Result<()> {
    let mut args = vec!["backup", "verify"];
    if let Some(chain) = chain {
        args.extend(["--chain", chain]);
    }
    let out = backups::cli(&c.nodes[i], &args);
    if !out.status.success() {
        bail!(
            "backup verify{}: {}{}",
            chain.map(|c| format!(" --chain {c}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs one round on `c` (see the module doc) and checks its invariants.
/// With `NEMESIS_KEEP_DATA=<dir>`, a copy of every node's data directory (AOF, RDB, redis's
/// log) goes to `<dir>/round-<k>/node-<i>` when a round leaves the store broken: the evidence
/// of why a node did not come back outlives the testbed's cleanup.
fn keep_data_dirs(c: &Cluster, round: usize) {
    let Some(to) = std::env::var_os("NEMESIS_KEEP_DATA") else {
        return;
    };
    for (i, n) in c.nodes.iter().enumerate() {
        let dest = std::path::Path::new(&to).join(format!("round-{round}/node-{i}"));
        let copied = std::fs::create_dir_all(&dest).and_then(|_| {
            std::process::Command::new("cp")
                .arg("-a")
                .arg(n.data_dir())
                .arg(&dest)
                .status()
        });
        match copied {
            Ok(s) if s.success() => {
                eprintln!("nemesis: node-{i}'s data kept in {}", dest.display())
            }
            other => eprintln!(
                "nemesis: keeping node-{i}'s data in {} failed: {other:?}",
                dest.display()
            ),
        }
    }
}

pub fn run_round(c: &Arc<Cluster>, plan: &RoundPlan) -> RoundResult {
    let mut res = RoundResult::new(plan);
    let p = match c.wait_settled(Duration::from_secs(60)) {
        Ok(p) => p,
        Err(e) => {
            res.violations
                .push(format!("the store was not settled before the round: {e:#}"));
            res.broken = true;
            return res;
        }
    };
    res.primary_before = Some(p);
    let roles = Roles::new(c.nodes.len(), p);
    let round_start = Instant::now();
    let round_start_unix = backups::unix_ms();
    let supervisor = Supervisor::start(c, round_start);
    let checkers = c.start_checkers_with_prefix(&format!("r{}k", plan.index));
    let monitor = SplitBrainMonitor::start(c.probe_targets(), PROBE_EVERY);
    let pinned = PinnedWriters::start(c, plan.index);
    if !checkers.wait_more_acks(ACKS_BEFORE_FAULTS, Duration::from_secs(30)) {
        res.violations
            .push("the WAIT-1 writer made no progress before the faults".into());
    }

    // The faults, each on its own thread and schedule.
    let faults_begin = Instant::now();
    let outcomes: Vec<Result<FaultRecord>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .faults
            .iter()
            .map(|f| s.spawn(|| run_fault(c, &roles, f, faults_begin, round_start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the fault's thread panicked")))
            })
            .collect()
    });
    let faults_end = Instant::now();
    for o in outcomes {
        match o {
            Ok(r) => res.faults.push(r),
            Err(e) => res.violations.push(format!("fault failed: {e:#}")),
        }
    }

    // Healed within the bound?
    let healed = wait_healed(c, &checkers, faults_end, faults_end + HEAL_BOUND);
    res.heal_ms = healed.map(|_| faults_end.elapsed().as_millis() as u64);
    if healed.is_none() {
        res.violations.push(format!(
            "not healed (settled, backups shipping, WAIT-1 writes acknowledged) within {} s of the last fault's end",
            HEAL_BOUND.as_secs()
        ));
        let now = Instant::now();
        if wait_healed(c, &checkers, now, now + HEAL_GRACE).is_none() {
            res.broken = true;
            res.violations.push(format!(
                "still not healed {} s later; logs:\n{}",
                HEAL_GRACE.as_secs(),
                c.logs()
            ));
            keep_data_dirs(c, plan.index);
        }
    }
    // A moment of healed service under the clients.
    checkers.wait_more_acks(ACKS_BEFORE_FAULTS, Duration::from_secs(10));
    let report = checkers.finish();
    let split = monitor.map(SplitBrainMonitor::finish);
    let pinned = pinned.finish();
    res.agent_restarts = supervisor.finish();

    res.wait_attempts = report.attempts;
    res.wait_acked = report.acked.len();
    res.agent_claims = report.split_brain_ms.len();
    res.longest_unavailable_ms = longest_gap(&report.acked_at_ms, report.finished_ms);
    res.pinned_attempts = pinned.iter().map(Vec::len).sum();
    res.pinned_ok = pinned
        .iter()
        .flatten()
        .filter(|w| w.ok_ms.is_some())
        .count();
    match split {
        Ok(split) => {
            res.monitor_windows = split.windows.len();
            res.monitor_longest_ms = split.longest().as_millis() as u64;
        }
        Err(e) => res
            .violations
            .push(format!("the split-brain monitor did not start: {e:#}")),
    }
    res.pinned_windows = pinned_windows(&pinned);
    for w in &mut res.pinned_windows {
        // Report them on the round's clock.
        w.from_ms = w.from_ms.saturating_sub(round_start_unix);
        w.to_ms = w.to_ms.saturating_sub(round_start_unix);
    }
    if res.monitor_windows > 0 {
        res.violations.push(format!(
            "the monitor saw two writable primaries {} time(s), longest {} ms",
            res.monitor_windows, res.monitor_longest_ms
        ));
    }
    if !res.pinned_windows.is_empty() {
        res.violations.push(format!(
            "the pinned writers saw two writable primaries {} time(s), longest {} ms",
            res.pinned_windows.len(),
            res.pinned_longest_ms()
        ));
    }

    let missing = c.missing_acked(&report);
    res.lost = missing.len();
    res.lost_sample = missing.iter().take(5).copied().collect();
    if !missing.is_empty() {
        res.violations.push(format!(
            "{} WAIT-1-acknowledged write(s) lost",
            missing.len()
        ));
    }
    // The pinned writers' OK writes that are gone, in all and inside the windows.
    for (i, writes) in pinned.iter().enumerate() {
        let ok: BTreeSet<u64> = writes
            .iter()
            .filter(|w| w.ok_ms.is_some())
            .map(|w| w.n)
            .collect();
        let gone: BTreeSet<u64> = c
            .missing_with_prefix(&pinned_prefix(i, plan.index), &ok)
            .into_iter()
            .collect();
        res.pinned_lost += gone.len();
        for w in &mut res.pinned_windows {
            if let Some(k) = w.nodes.iter().position(|&n| n == i) {
                let (from, to) = (w.from_ms + round_start_unix, w.to_ms + round_start_unix);
                w.lost[k] = writes
                    .iter()
                    .filter(|x| x.ok_ms.is_some_and(|r| r >= from && r <= to))
                    .filter(|x| gone.contains(&x.n))
                    .count();
            }
        }
    }
    let missing: BTreeSet<u64> = missing.into_iter().collect();
    res.kept_prefix = report.key_prefix.clone();
    res.kept = report.acked.difference(&missing).copied().collect();

    res.primary_after = c.primary();
    let chain = res.primary_after.and_then(|p| {
        c.nodes[p].status()?["backup"]["chain"]
            .as_str()
            .map(|s| (p, s.to_string()))
    });
    match chain {
        Some((p, chain)) => match verify_backups(c, p, Some(&chain)) {
            Ok(()) => res.chain_verified = true,
            Err(e) => res.violations.push(format!("{e:#}")),
        },
        None => res
            .violations
            .push("no primary with a backup chain to verify".into()),
    }
    res
}

/// After a data store's last round: every chain verifies, and the newest one, restored into
/// a side directory, holds every acknowledged write the store kept. Violations found.
fn final_checks(c: &Cluster, rounds: &[RoundResult]) -> Vec<String> {
    let mut violations = Vec::new();
    let p = match c.wait_settled(Duration::from_secs(60)) {
        Ok(p) => p,
        Err(e) => return vec![format!("not settled for the final checks: {e:#}")],
    };
    // Everything written is shipped: the WAL cursor at the end of redis's AOF.
    let caught_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backups::wait_wal(&c.nodes[p]);
    }));
    if caught_up.is_err() {
        violations.push("the backup WAL did not catch up with redis's AOF".into());
    }
    if let Err(e) = verify_backups(c, p, None) {
        violations.push(format!("{e:#}"));
    }
    let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let dir = tempfile::Builder::new()
            .prefix("rs-nemesis-restore-")
            .tempdir()
            .unwrap();
        let served = backups::restore_newest(&c.bucket(), &c.backup_key(), dir.path());
        rounds
            .iter()
            .map(|r| {
                let keys: Vec<u64> = r.kept.iter().copied().collect();
                let have = backups::present(&keys, &r.kept_prefix, |args| served.cmd(args));
                (keys.len(), keys.len() - have.len())
            })
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }));
    match restored {
        Ok((_, 0)) => {}
        Ok((total, missing)) => violations.push(format!(
            "the restored newest chain lacks {missing} of {total} acknowledged writes"
        )),
        Err(_) => violations.push("restoring the newest chain failed (see above)".into()),
    }
    violations
}

/// A campaign's settings; [`CampaignConfig::from_env`] reads the overrides.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// The test that runs it, for the replay command.
    pub test: String,
    /// Whether that test is `#[ignore]`d (the replay command then needs `--ignored`).
    pub ignored: bool,
    pub seed: u64,
    pub rounds: usize,
    /// Only rounds `from..=to` run (1-based); the others are drawn and skipped.
    pub from: usize,
    pub to: usize,
    /// Time budget, split evenly between the plans that have rounds to run; a plan starts no
    /// round once its share is used up.
    pub minutes: f64,
    pub max_fault: Duration,
    /// Stop after the first round that breaks an invariant.
    pub stop_on_violation: bool,
}

impl CampaignConfig {
    /// Defaults, overridden by `NEMESIS_SEED`, `NEMESIS_ROUNDS`, `NEMESIS_FROM`,
    /// `NEMESIS_TO` and `NEMESIS_MINUTES`.
    pub fn from_env(test: &str, ignored: bool, seed: u64, rounds: usize, minutes: f64) -> Self {
        let rounds = env_or("NEMESIS_ROUNDS", rounds);
        CampaignConfig {
            test: test.into(),
            ignored,
            seed: env_or("NEMESIS_SEED", seed),
            rounds,
            from: env_or("NEMESIS_FROM", 1),
            to: env_or("NEMESIS_TO", rounds),
            minutes: env_or("NEMESIS_MINUTES", minutes),
            max_fault: MAX_FAULT,
            stop_on_violation: false,
        }
    }

    /// The command that runs rounds `from..=to` of this campaign again.
    pub fn replay_command(&self, from: usize, to: usize) -> String {
        format!(
            "NEMESIS_SEED={} NEMESIS_ROUNDS={} NEMESIS_FROM={from} NEMESIS_TO={to} cargo test -p steward-testbed --test nemesis {} -- --exact{} --nocapture --test-threads=1",
            self.seed,
            self.rounds,
            self.test,
            if self.ignored { " --ignored" } else { "" }
        )
    }
}

/// A campaign's outcome.
#[derive(Debug, Clone)]
pub struct CampaignReport {
    pub config: CampaignConfig,
    pub rounds: Vec<RoundResult>,
    /// Per data store: what its final checks found, and problems outside any round
    /// (a data store that did not start, a time budget that cut rounds).
    pub store_violations: Vec<(Plan, String)>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

impl CampaignReport {
    /// Every violation, with its round.
    pub fn violations(&self) -> Vec<String> {
        self.rounds
            .iter()
            .flat_map(|r| {
                r.violations
                    .iter()
                    .map(move |v| format!("round {} ({}): {v}", r.plan.index, r.plan.plan.name()))
            })
            .chain(
                self.store_violations
                    .iter()
                    .map(|(p, v)| format!("{}: {v}", p.name())),
            )
            .collect()
    }

    /// The replay commands of the rounds that broke an invariant.
    pub fn replay_commands(&self) -> Vec<String> {
        self.rounds
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| self.config.replay_command(r.plan.index, r.plan.index))
            .collect()
    }

    /// The campaign as markdown: a summary row per plan (and one for all), then one row per
    /// round.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Nemesis campaign, seed {}, {} of {} rounds run in {:.1} min (faults ≤ {} s, heal bound {} s)\n\n",
            self.config.seed,
            self.rounds.len(),
            self.config.rounds,
            self.elapsed.as_secs_f64() / 60.0,
            self.config.max_fault.as_secs(),
            HEAL_BOUND.as_secs()
        );
        s += "| plan | rounds | faults by kind | WAIT-1 writes acked | pinned writes OK (lost) | lost | two writable primaries (monitor / pinned, longest) | longest unavailability | slowest heal | seed |\n";
        s += "|---|---|---|---|---|---|---|---|---|---|\n";
        let groups: Vec<(String, Vec<&RoundResult>)> = [Plan::Business, Plan::Premium]
            .into_iter()
            .map(|p| {
                (
                    p.name().to_string(),
                    self.rounds.iter().filter(|r| r.plan.plan == p).collect(),
                )
            })
            .chain([("all".to_string(), self.rounds.iter().collect())])
            .filter(|(_, rs): &(String, Vec<&RoundResult>)| !rs.is_empty())
            .collect();
        for (name, rs) in groups {
            let mut kinds: BTreeMap<usize, usize> = BTreeMap::new();
            for f in rs.iter().flat_map(|r| &r.faults) {
                let k = KINDS.iter().position(|k| *k == f.kind).unwrap_or(0);
                *kinds.entry(k).or_default() += 1;
            }
            let kinds: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{} {n}", KINDS[*k]))
                .collect();
            let sum = |f: &dyn Fn(&RoundResult) -> u64| rs.iter().map(|r| f(r)).sum::<u64>();
            let max = |f: &dyn Fn(&RoundResult) -> u64| rs.iter().map(|r| f(r)).max().unwrap_or(0);
            let unhealed = rs.iter().filter(|r| r.heal_ms.is_none()).count();
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} of {} | {} of {} ({}) | {} | {} / {} ({} ms) | {:.1} s | {:.1} s{} | {} |",
                rs.len(),
                kinds.join(", "),
                sum(&|r| r.wait_acked as u64),
                sum(&|r| r.wait_attempts),
                sum(&|r| r.pinned_ok as u64),
                sum(&|r| r.pinned_attempts as u64),
                sum(&|r| r.pinned_lost as u64),
                sum(&|r| r.lost as u64),
                sum(&|r| r.monitor_windows as u64),
                sum(&|r| r.pinned_windows.len() as u64),
                max(&|r| r.monitor_longest_ms.max(r.pinned_longest_ms())),
                max(&|r| r.longest_unavailable_ms) as f64 / 1000.0,
                max(&|r| r.heal_ms.unwrap_or(0)) as f64 / 1000.0,
                if unhealed > 0 {
                    format!(" ({unhealed} not within the bound)")
                } else {
                    String::new()
                },
                self.config.seed
            );
        }
        s += "\n| round | plan | faults | WAIT-1 acked | lost | two writable (monitor / pinned, longest) | longest unavailability | healed | verdict |\n";
        s += "|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.rounds {
            let faults: Vec<String> = r
                .faults
                .iter()
                .map(|f| {
                    format!(
                        "{} {} +{:.1}s/{:.1}s",
                        f.kind,
                        f.target,
                        f.start_ms as f64 / 1000.0,
                        f.duration_ms as f64 / 1000.0
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} of {} | {} | {} / {} ({} ms) | {:.1} s | {} | {} |",
                r.plan.index,
                r.plan.plan.name(),
                faults.join("; "),
                r.wait_acked,
                r.wait_attempts,
                r.lost,
                r.monitor_windows,
                r.pinned_windows.len(),
                r.monitor_longest_ms.max(r.pinned_longest_ms()),
                r.longest_unavailable_ms as f64 / 1000.0,
                r.heal_ms
                    .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "no".into()),
                match (r.violations.len(), r.agent_restarts.len()) {
                    (0, 0) => "ok".to_string(),
                    (0, n) => format!("ok ({n} agent restart(s))"),
                    (v, 0) => format!("{v} violation(s)"),
                    (v, n) => format!("{v} violation(s), {n} agent restart(s)"),
                }
            );
        }
        for n in &self.notes {
            let _ = write!(s, "\nNote: {n}");
        }
        s
    }
}

/// The data store options every campaign uses: backups on, small data disks.
pub fn options() -> Options {
    Options {
        backups: true,
        data_disk_mb: Some(DATA_DISK_MB),
        ..Options::default()
    }
}

/// Runs a whole campaign (see the module doc) and returns its report; prints the schedule
/// first and every round's result as it ends.
pub fn run_campaign(cfg: &CampaignConfig) -> CampaignReport {
    let started = Instant::now();
    let plans = schedule(cfg.seed, cfg.rounds, cfg.max_fault);
    eprintln!(
        "nemesis: seed {} ({} rounds; replay one with NEMESIS_SEED={} NEMESIS_ROUNDS={} NEMESIS_FROM=k NEMESIS_TO=k):",
        cfg.seed, cfg.rounds, cfg.seed, cfg.rounds
    );
    for p in &plans {
        eprintln!("  {p}");
    }
    let mut report = CampaignReport {
        config: cfg.clone(),
        rounds: Vec::new(),
        store_violations: Vec::new(),
        notes: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let selected = |plan: Plan| -> Vec<&RoundPlan> {
        plans
            .iter()
            .filter(|r| r.plan == plan && (cfg.from..=cfg.to).contains(&r.index))
            .collect()
    };
    let active = [Plan::Business, Plan::Premium]
        .into_iter()
        .filter(|&p| !selected(p).is_empty())
        .count()
        .max(1);
    let budget = Duration::from_secs_f64(cfg.minutes * 60.0 / active as f64);
    'plans: for plan in [Plan::Business, Plan::Premium] {
        let rounds = selected(plan);
        if rounds.is_empty() {
            continue;
        }
        let plan_started = Instant::now();
        let cluster = match Cluster::start_with(plan.name(), options()) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                report
                    .store_violations
                    .push((plan, format!("the data store did not start: {e:#}")));
                continue;
            }
        };
        let first = report.rounds.len();
        for r in rounds {
            if plan_started.elapsed() >= budget {
                report.notes.push(format!(
                    "{}: the time budget ({:.1} min) ended the rounds before round {}",
                    plan.name(),
                    budget.as_secs_f64() / 60.0,
                    r.index
                ));
                break;
            }
            eprintln!("nemesis: {r}");
            let result = run_round(&cluster, r);
            eprintln!("nemesis: {}", result.summary());
            let stop = result.broken || (cfg.stop_on_violation && !result.violations.is_empty());
            report.rounds.push(result);
            if stop {
                if report.rounds.last().is_some_and(|r| r.broken) {
                    report.notes.push(format!(
                        "{}: the data store did not heal; its remaining rounds were skipped",
                        plan.name()
                    ));
                }
                let finals = final_checks(&cluster, &report.rounds[first..]);
                report
                    .store_violations
                    .extend(finals.into_iter().map(|v| (plan, v)));
                if cfg.stop_on_violation {
                    report.notes.push(format!(
                        "stopped after round {}, the first to break an invariant (NEMESIS_KEEP_GOING=true runs on)",
                        r.index
                    ));
                    break 'plans;
                }
                continue 'plans;
            }
        }
        let finals = final_checks(&cluster, &report.rounds[first..]);
        report
            .store_violations
            .extend(finals.into_iter().map(|v| (plan, v)));
    }
    report.elapsed = started.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(n: u64, sent_ms: u64, reply: Option<u64>, ok: bool) -> TimedWrite {
        TimedWrite {
            n,
            sent_ms,
            ok_ms: reply.filter(|_| ok),
            reply_ms: reply,
            outcome: match (ok, reply) {
                (true, Some(_)) => TimedOutcome::Ok,
                (false, Some(_)) => TimedOutcome::Refused("READONLY".into()),
                _ => TimedOutcome::NoReply("timed out".into()),
            },
        }
    }

    /// OK writes every 10 ms from `from` to `to` (unix ms), 2 ms each.
    fn oks(from: u64, to: u64) -> Vec<TimedWrite> {
        (from..to)
            .step_by(10)
            .map(|t| write(t, t, Some(t + 2), true))
            .collect()
    }

    #[test]
    fn a_run_of_ok_writes_is_writable_from_its_first_reply_to_its_last_send() {
        assert_eq!(certain_writable(&oks(1000, 1100)), vec![(1002, 1090)]);
        // One OK write alone proves nothing about an interval.
        assert!(certain_writable(&oks(1000, 1010)).is_empty());
    }

    #[test]
    fn runs_break_at_refusals_timeouts_slow_writes_and_gaps() {
        let mut w = oks(1000, 1050);
        w.push(write(99, 1050, Some(1051), false));
        w.extend(oks(1060, 1100));
        assert_eq!(certain_writable(&w), vec![(1002, 1040), (1062, 1090)]);

        let mut w = oks(1000, 1050);
        w.push(write(99, 1050, None, false));
        w.extend(oks(1600, 1650));
        assert_eq!(certain_writable(&w), vec![(1002, 1040), (1602, 1640)]);

        // A write answered OK after 2 s (a paused redis resumed) breaks the run.
        let mut w = oks(1000, 1050);
        w.push(write(99, 1050, Some(3050), true));
        w.extend(oks(3060, 3100));
        assert_eq!(certain_writable(&w), vec![(1002, 1040), (3062, 3090)]);

        // Nothing sent for more than a second (a connect that kept failing) breaks it too.
        let mut w = oks(1000, 1050);
        w.extend(oks(2100, 2150));
        assert_eq!(certain_writable(&w), vec![(1002, 1040), (2102, 2140)]);
    }

    #[test]
    fn a_clean_handover_is_no_window() {
        // Node 0 takes writes until 2000, then refuses; node 1 from 2005 on.
        let mut a = oks(1000, 2000);
        a.extend(
            (2000..3000)
                .step_by(10)
                .map(|t| write(t, t, Some(t + 1), false)),
        );
        let mut b: Vec<TimedWrite> = (1000..2005)
            .step_by(10)
            .map(|t| write(t, t, Some(t + 1), false))
            .collect();
        b.extend(oks(2005, 3000));
        assert!(pinned_windows(&[a.clone(), b.clone()]).is_empty());
        // Even with the new primary's first reply right at the old one's last send.
        let mut b2 = vec![write(0, 1985, Some(1990), true)];
        b2.extend(oks(1995, 3000));
        assert!(pinned_windows(&[a, b2]).is_empty());
    }

    #[test]
    fn two_nodes_accepting_at_once_is_a_window() {
        let a = oks(1000, 3000);
        let mut b: Vec<TimedWrite> = (1000..2000)
            .step_by(10)
            .map(|t| write(t, t, Some(t + 1), false))
            .collect();
        b.extend(oks(2000, 2500));
        b.extend(
            (2500..3000)
                .step_by(10)
                .map(|t| write(t, t, Some(t + 1), false)),
        );
        let c = Vec::new();
        let w = pinned_windows(&[a, b, c]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].from_ms, w[0].to_ms), (2002, 2490));
        assert_eq!(w[0].nodes, vec![0, 1]);
        assert!(w[0].writes.iter().all(|&n| n >= 48), "{w:?}");
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let a = schedule(7, 40, MAX_FAULT);
        assert_eq!(a, schedule(7, 40, MAX_FAULT));
        assert_ne!(a, schedule(8, 40, MAX_FAULT));
        // The faults do not depend on how many rounds there are, only the plans do.
        let b = schedule(7, 10, MAX_FAULT);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.faults, y.faults);
        }
        assert_eq!(a.iter().filter(|r| r.plan == Plan::Business).count(), 20);
        for r in &a {
            assert!(!r.faults.is_empty() && r.faults.len() <= 2, "{r}");
            if let [f, g] = &r.faults[..] {
                assert!(f.fault.compatible(&g.fault), "{r}");
                assert!(g.start_ms >= f.start_ms && g.start_ms <= f.start_ms + 3000);
            }
            for f in &r.faults {
                assert!(f.duration_ms <= MAX_FAULT.as_millis() as u64, "{r}");
                if matches!(f.fault, Fault::PauseAgent(_)) {
                    assert!(f.duration_ms >= 200, "{r}");
                }
            }
        }
        // Every kind comes up in a long campaign.
        let kinds: BTreeSet<&str> = schedule(1, 400, MAX_FAULT)
            .iter()
            .flat_map(|r| r.faults.iter().map(|f| f.fault.kind()))
            .collect();
        assert_eq!(kinds.len(), KINDS.len(), "{kinds:?}");
    }

    #[test]
    fn roles_resolve_to_nodes_and_halves_are_never_empty() {
        let roles = Roles::new(3, 1);
        assert_eq!(roles.node(Role::Primary), 1);
        assert_eq!(roles.node(Role::Replica(0)), 0);
        assert_eq!(roles.node(Role::Replica(1)), 2);
        assert_eq!(Roles::new(2, 1).node(Role::Replica(1)), 0);
        for mask in 0..=255u8 {
            for others in [&[1, 2][..], &[1, 2, 3][..]] {
                let (a, b) = split_hosts(0, others, mask);
                assert_eq!(a[0], 0);
                assert!(!b.is_empty(), "{mask}: {a:?} | {b:?}");
                assert_eq!(a.len() + b.len(), others.len() + 1);
            }
        }
        assert_eq!(split_hosts(0, &[1, 2, 3], 5), (vec![0, 1, 3], vec![2]));
    }

    #[test]
    fn longest_gap_counts_the_tail() {
        assert_eq!(longest_gap(&[100, 200, 900, 1000], 1100), 700);
        assert_eq!(longest_gap(&[100, 200], 5000), 4800);
        assert_eq!(longest_gap(&[], 5000), 5000);
    }
}
