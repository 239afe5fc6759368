//! One test per rule, driving a single [`Node`] with hand-made events, then scenarios on the
//! simulator's [`World`] (which checks its invariants after every step).

use super::sim::World;
use super::*;

const THREE: &[&str] = &["n1", "n2", "n3"];
const FIVE: &[&str] = &["n1", "n2", "n3", "n4", "n5"];
const TWO: &[&str] = &["n1", "n2"];

fn timing() -> Timing {
    Timing::default()
}

fn ft() -> u64 {
    timing().failover_timeout_ms
}

fn config(me: &str, voters: &[&str]) -> Config {
    Config {
        me: me.into(),
        voters: voters.iter().map(|&v| v.into()).collect(),
        timing: timing(),
    }
}

fn new_node(me: &str, voters: &[&str]) -> Node {
    Node::new(config(me, voters), Durable::default(), 0).expect("valid config")
}

fn view(name: &str, state: PublishedState) -> PeerView {
    PeerView {
        node: name.into(),
        alive: true,
        state: Some(state),
    }
}

fn peers(views: Vec<PeerView>) -> Event {
    Event::Peers(views)
}

fn probe(offset: u64, upstream: Option<&str>) -> Event {
    Event::RedisProbe {
        run: 1,
        healthy: true,
        offset,
        upstream: upstream.map(NodeId::from),
    }
}

fn pos(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

fn primary(epoch: u64, heartbeat: u64) -> PublishedState {
    PublishedState {
        role: Role::Primary,
        epoch,
        primary: None,
        writable: true,
        heartbeat,
        redis_healthy: true,
        position: pos(epoch, 100),
        ..PublishedState::default()
    }
}

fn replica(heartbeat: u64, position: Position) -> PublishedState {
    PublishedState {
        role: Role::Replica,
        heartbeat,
        redis_healthy: true,
        position,
        ..PublishedState::default()
    }
}

fn campaigning(heartbeat: u64, epoch: u64, position: Position) -> PublishedState {
    PublishedState {
        campaign: Some(Campaign {
            epoch,
            position,
            origin: false,
        }),
        ..replica(heartbeat, position)
    }
}

/// A replica that voted for `candidate` in `epoch` and acknowledges its heartbeat `acked`.
fn supporter(heartbeat: u64, candidate: &str, epoch: u64, acked: u64) -> PublishedState {
    PublishedState {
        vote: Some(Vote {
            epoch,
            candidate: candidate.into(),
        }),
        ack: Some(Ack {
            primary: candidate.into(),
            epoch,
            heartbeat: acked,
        }),
        ..replica(heartbeat, pos(epoch - 1, 0))
    }
}

/// Every voter but `me`, alive and heard at `heartbeat`, with its redis down.
fn unhealthy_replicas(me: &str, voters: &[&str], heartbeat: u64) -> Vec<PeerView> {
    voters
        .iter()
        .filter(|v| **v != me)
        .map(|v| {
            let state = PublishedState {
                redis_healthy: false,
                ..replica(heartbeat, pos(0, 0))
            };
            view(v, state)
        })
        .collect()
}

fn voted(d: &Decision) -> Option<Vote> {
    d.actions.iter().find_map(|a| match a {
        Action::Persist(durable) => durable.vote.clone(),
        _ => None,
    })
}

/// A vote n2 (the voter in `orphaned_voter`) gave to someone else.
fn granted(d: &Decision) -> Option<Vote> {
    voted(d).filter(|v| v.candidate.as_str() != "n2")
}

fn promoted(d: &Decision) -> Option<u64> {
    d.actions.iter().find_map(|a| match a {
        Action::Promote { epoch } => Some(*epoch),
        _ => None,
    })
}

fn has(d: &Decision, action: &Action) -> bool {
    d.actions.contains(action)
}

/// The deadline of the decision's `Unfence`, if it has one.
fn unfenced_until(d: &Decision) -> Option<u64> {
    d.actions.iter().find_map(|a| match a {
        Action::Unfence { until } => Some(*until),
        _ => None,
    })
}

/// n2 of three: followed n1 (epoch 1, in sync at offset 50), then heard nothing from n1 for
/// the failover timeout and detached for the election. n3 is alive and slightly ahead, so n2
/// waits for n3 to run rather than running itself. Returns the node and the time.
fn orphaned_voter() -> (Node, u64) {
    let mut n = new_node("n2", THREE);
    n.step(
        0,
        peers(vec![
            view("n1", primary(1, 1)),
            view("n3", replica(1, pos(1, 60))),
        ]),
    );
    n.step(10, probe(50, Some("n1")));
    let t = ft() + 10;
    let d = n.step(
        t,
        peers(vec![
            view("n1", primary(1, 1)),
            view("n3", replica(t, pos(1, 60))),
        ]),
    );
    assert!(has(&d, &Action::Detach), "{d:?}");
    let d = n.step(t, probe(50, None));
    assert_eq!(
        voted(&d),
        None,
        "n2 should wait for the better n3: {}",
        d.reason
    );
    (n, t)
}

/// `me` of `voters` with no primary heard from since it started (it detached its redis on
/// start), but hearing every other voter (replicas whose redis is down, so none deserves to
/// run first): after the failover timeout it campaigns in epoch 1. Returns the node and when
/// the campaign started.
fn candidate(me: &str, voters: &[&str]) -> (Node, u64) {
    let mut n = new_node(me, voters);
    assert!(has(&n.step(0, probe(0, None)), &Action::Detach));
    n.step(10, probe(0, None));
    let t = ft();
    // Gossip counts from the look before it: the first look cannot be dated.
    n.step(t - 100, peers(unhealthy_replicas(me, voters, t - 100)));
    n.step(t - 10, peers(unhealthy_replicas(me, voters, t - 10)));
    let d = n.step(t, probe(0, None));
    assert_eq!(
        voted(&d),
        Some(Vote {
            epoch: 1,
            candidate: me.into()
        }),
        "{}",
        d.reason
    );
    (n, t)
}

/// n1, primary of epoch 1 elected by every other voter, which acknowledged its campaign
/// heartbeat. Returns the node and that heartbeat.
fn elected(voters: &[&str]) -> (Node, u64) {
    let (mut n, t) = candidate("n1", voters);
    let views = voters[1..]
        .iter()
        .map(|v| view(v, supporter(t, "n1", 1, t)))
        .collect();
    let d = n.step(t + 50, peers(views));
    assert_eq!(promoted(&d), Some(1), "{}", d.reason);
    assert!(n.is_writable(), "{}", d.reason);
    (n, t)
}

#[test]
fn the_log_epoch_is_the_one_the_election_is_about() {
    // Campaigning with no primary: published epoch 0, the campaign's epoch 1 (issue 16: the
    // log read `epoch=0` all through an election).
    let (n, _) = candidate("n2", &["n1", "n2", "n3"]);
    assert_eq!(n.published().epoch, 0);
    assert_eq!(n.decision_epoch(), 1);
    let (n, _) = elected(&["n1", "n2", "n3"]);
    assert_eq!((n.published().epoch, n.decision_epoch()), (1, 1));
}

// ---- votes ------------------------------------------------------------------------------------

/// The long nemesis campaign lost WAIT-1-acknowledged writes in rolling restarts: a replica
/// that held them restarted (its redis loading a large AOF, so probes failed and reported
/// offset 0) and voted for a candidate that lacked them. A voter whose redis does not answer
/// does not know what it holds: it votes for no one until redis answers again.
#[test]
fn a_voter_whose_redis_is_down_votes_for_no_one() {
    let (mut n, t) = orphaned_voter();
    let down = Event::RedisProbe {
        run: 0,
        healthy: false,
        offset: 0,
        upstream: None,
    };
    n.step(t + 5, down.clone());
    // n3 campaigns with less than the 50 n2 held when its redis last answered.
    let behind = peers(vec![view("n3", campaigning(t + 10, 2, pos(1, 40)))]);
    let d = n.step(t + 10, behind.clone());
    assert_eq!(voted(&d), None, "{}", d.reason);
    let d = n.step(t + 20, down);
    assert_eq!(voted(&d), None, "{}", d.reason);
    // Back, with its 50: still no vote for 40.
    n.step(t + 30, probe(50, None));
    let d = n.step(t + 30, behind);
    assert_eq!(voted(&d).map(|v| v.candidate), None, "{}", d.reason);
}

#[test]
fn votes_at_most_once_per_epoch() {
    let (mut n, t) = orphaned_voter();
    let d = n.step(
        t + 10,
        peers(vec![view("n3", campaigning(t + 10, 2, pos(1, 60)))]),
    );
    assert_eq!(
        voted(&d),
        Some(Vote {
            epoch: 2,
            candidate: "n3".into()
        }),
        "{}",
        d.reason
    );
    assert!(
        d.changed && d.reason.contains("voted for n3 in epoch 2"),
        "{}",
        d.reason
    );
    // n1 comes back asking for epoch 2 with better data: the vote of epoch 2 is spent.
    let d = n.step(
        t + 20,
        peers(vec![view("n1", campaigning(t + 20, 2, pos(1, 90)))]),
    );
    assert_eq!(voted(&d), None, "{}", d.reason);
    assert_eq!(
        n.durable().vote,
        Some(Vote {
            epoch: 2,
            candidate: "n3".into()
        })
    );
}

#[test]
fn refuses_candidates_less_advanced_than_itself() {
    // The voter holds offset 50 of epoch 1.
    for (candidate, grants) in [
        (pos(1, 49), false),
        (pos(1, 50), true),
        (pos(1, 51), true),
        (pos(0, 999), false),
        (pos(2, 0), true),
    ] {
        let (mut n, t) = orphaned_voter();
        let d = n.step(
            t + 10,
            peers(vec![view("n3", campaigning(t + 10, 2, candidate))]),
        );
        let expected = grants.then(|| Vote {
            epoch: 2,
            candidate: "n3".into(),
        });
        assert_eq!(
            granted(&d),
            expected,
            "candidate at {candidate}: {}",
            d.reason
        );
    }
}

#[test]
fn refuses_while_its_primary_looks_alive() {
    let mut n = new_node("n2", THREE);
    n.step(0, probe(50, Some("n1")));
    // n1 keeps publishing new heartbeats; n3 campaigns anyway (say it lost n1).
    for t in (0..=3 * ft()).step_by(100) {
        let d = n.step(
            t,
            peers(vec![
                view("n1", primary(1, t)),
                view("n3", campaigning(t, 2, pos(1, 60))),
            ]),
        );
        assert_eq!(voted(&d), None, "at {t} ms: {}", d.reason);
        assert!(!has(&d, &Action::Detach), "at {t} ms: {}", d.reason);
    }
}

#[test]
fn a_primary_whose_redis_stays_down_loses_support_after_the_grace() {
    let t = timing();
    let mut n = new_node("n2", THREE);
    n.step(0, probe(50, Some("n1")));
    n.step(0, peers(vec![view("n1", primary(1, 0))]));
    let mut first_vote = None;
    for now in (100..4_000).step_by(50) {
        // n1's agent is alive but its redis is down; n3 asks for votes all along.
        let down = PublishedState {
            redis_healthy: false,
            writable: false,
            ..primary(1, now)
        };
        let probed = n.step(now, probe(50, None));
        let d = n.step(
            now,
            peers(vec![
                view("n1", down),
                view("n3", campaigning(now, 2, pos(1, 60))),
            ]),
        );
        if granted(&probed).or(granted(&d)).is_some() {
            first_vote = Some(now);
            break;
        }
    }
    let first_vote = first_vote.expect("votes once the grace and failover timeout passed");
    let earliest = t.primary_grace_ms + t.failover_timeout_ms;
    assert!(
        (earliest..earliest + 200).contains(&first_vote),
        "voted at {first_vote} ms, expected just after {earliest} ms"
    );
}

#[test]
fn ties_go_to_the_better_position_then_the_lowest_name() {
    for (n1_at, n3_at, winner) in [
        (pos(1, 60), pos(1, 60), "n1"),
        (pos(1, 60), pos(1, 61), "n3"),
        (pos(1, 70), pos(1, 61), "n1"),
    ] {
        let (mut n, t) = orphaned_voter();
        let d = n.step(
            t + 10,
            peers(vec![
                view("n1", campaigning(t + 10, 2, n1_at)),
                view("n3", campaigning(t + 10, 2, n3_at)),
            ]),
        );
        let expected = Vote {
            epoch: 2,
            candidate: winner.into(),
        };
        assert_eq!(
            voted(&d),
            Some(expected),
            "{n1_at} vs {n3_at}: {}",
            d.reason
        );
    }
}

#[test]
fn a_candidate_withdraws_for_a_better_one_in_the_same_epoch() {
    let (mut n, t) = candidate("n3", THREE);
    let d = n.step(
        t + 10,
        peers(vec![view("n2", campaigning(t + 10, 1, pos(0, 0)))]),
    );
    assert!(
        d.reason
            .contains("n2 is a better candidate in the same epoch"),
        "{}",
        d.reason
    );
    assert_eq!(n.published().campaign, None);
}

#[test]
fn a_node_lets_a_better_live_peer_run_first() {
    let mut n = new_node("n3", THREE);
    n.step(0, probe(0, None));
    let mut started = None;
    for t in (0..3 * ft()).step_by(50) {
        let heard = n.step(t, peers(vec![view("n2", replica(t, pos(0, 0)))]));
        let d = n.step(t, probe(0, None));
        if voted(&heard).or(voted(&d)).is_some() {
            started = Some(t);
            break;
        }
    }
    // n2 (same data, lower name) gets a failover timeout's head start before n3 runs.
    let started = started.expect("n3 runs eventually");
    assert!(started >= 2 * ft(), "n3 ran at {started} ms");
}

#[test]
fn a_majority_of_configured_voters_wins_not_of_live_ones() {
    for (voters, votes, wins) in [
        (THREE, 0, false),
        (THREE, 1, true),
        (FIVE, 1, false),
        (FIVE, 2, true),
    ] {
        let (mut n, t) = candidate("n1", voters);
        // Every other voter is alive; only `votes` of them voted for n1.
        let views = voters[1..]
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let state = if i < votes {
                    supporter(t + 10, "n1", 1, t)
                } else {
                    replica(t + 10, pos(0, 0))
                };
                view(v, state)
            })
            .collect();
        let d = n.step(t + 10, peers(views));
        assert_eq!(
            promoted(&d).is_some(),
            wins,
            "{} voters, {votes} votes: {}",
            voters.len(),
            d.reason
        );
    }
}

#[test]
fn a_vote_is_persisted_before_any_publish_reveals_it() {
    let (mut n, t) = orphaned_voter();
    let d = n.step(
        t + 10,
        peers(vec![view("n3", campaigning(t + 10, 2, pos(1, 60)))]),
    );
    let persisted = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Persist(dur) if dur.vote.is_some()))
        .expect("persists the vote");
    let published = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Publish(s) if s.vote.is_some()))
        .expect("publishes the vote");
    assert!(persisted < published, "{:?}", d.actions);
}

#[test]
fn a_restarted_node_starts_fenced_and_keeps_its_vote() {
    let durable = Durable {
        vote: Some(Vote {
            epoch: 2,
            candidate: "n3".into(),
        }),
        synced_epoch: 1,
        offset: 0,
        origin: false,
    };
    let mut n = Node::new(config("n2", THREE), durable, 5_000).unwrap();
    let d = n.step(5_000, probe(50, None));
    assert_eq!(d.actions.first(), Some(&Action::Fence), "{:?}", d.actions);
    assert!(d.reason.contains("starting fenced"), "{}", d.reason);
    // It may have acknowledged a primary just before the restart: it waits a full failover
    // timeout before helping anyone, then still will not vote twice in epoch 2.
    let t = 5_000 + ft();
    let d = n.step(t, peers(vec![view("n1", campaigning(t, 2, pos(1, 80)))]));
    assert_eq!(voted(&d), None, "{}", d.reason);
    let d = n.step(t, probe(50, None));
    assert_eq!(voted(&d), None, "{}", d.reason);
    // Its redis restarted with it: 50 is only a lower bound of what it holds, so only the
    // primary its data came from (which holds all of it) gets its vote.
    let d = n.step(
        t + 10,
        peers(vec![view("n1", campaigning(t + 10, 3, pos(1, 80)))]),
    );
    assert_eq!(voted(&d), None, "{}", d.reason);
    let mut origin = campaigning(t + 20, 3, pos(1, 80));
    if let Some(c) = origin.campaign.as_mut() {
        c.origin = true;
    }
    let d = n.step(t + 20, peers(vec![view("n1", origin)]));
    assert_eq!(
        voted(&d),
        Some(Vote {
            epoch: 3,
            candidate: "n1".into()
        }),
        "{}",
        d.reason
    );
}

/// A redis restarted from its AOF reports replication offset 0 (and a new replication id)
/// whatever it holds. A replica that took that for its position voted for a candidate
/// without the writes it had acknowledged (the long nemesis campaign's rolling restarts).
#[test]
fn a_restarted_redis_counts_from_where_it_stood_and_votes_only_for_its_data_origin() {
    let mut n = new_node("n2", THREE);
    n.step(0, probe(0, None));
    n.step(5, probe(0, None));
    n.step(10, peers(vec![view("n1", primary(1, 10))]));
    n.step(20, probe(0, None));
    assert_eq!(n.published().primary, Some("n1".into()));
    n.step(30, probe(500, Some("n1")));
    n.step(40, probe(900, Some("n1")));
    // Its redis restarts (a new pid) with the data at 900 and reports 0.
    let restarted = || Event::RedisProbe {
        run: 2,
        healthy: true,
        offset: 0,
        upstream: None,
    };
    n.step(50, restarted());
    assert_eq!(n.published().position, pos(1, 900));
    assert_eq!(n.durable().offset, 900, "kept for the agent's own restart");
    // The primary is gone; n3 runs with less. Before the fix: "its offset 600 of epoch 1 is
    // at least my offset 0 of epoch 1".
    let t = 50 + 2 * ft();
    n.step(t, restarted());
    let d = n.step(t, peers(vec![view("n3", campaigning(t, 2, pos(1, 600)))]));
    assert_eq!(voted(&d), None, "{}", d.reason);
    // Nor for one with more: 900 is a lower bound (redis may have received more after the
    // last probe), so only the primary of epoch 1 surely holds it all.
    let d = n.step(
        t + 10,
        peers(vec![view("n3", campaigning(t + 10, 2, pos(1, 950)))]),
    );
    assert_eq!(voted(&d), None, "{}", d.reason);
    // The agent restarts too: the count resumes from what it kept.
    let mut again = Node::new(config("n2", THREE), n.durable().clone(), 0).unwrap();
    again.step(0, restarted());
    assert_eq!(again.published().position, pos(1, 900));
}

/// A primary whose redis restarted holds every replica's data of its epoch (a process crash
/// loses nothing), so it claims at least what they publish, and says it is their origin.
#[test]
fn a_restarted_primary_claims_at_least_what_its_replicas_hold_of_its_epoch() {
    let durable = Durable {
        vote: Some(Vote {
            epoch: 1,
            candidate: "n1".into(),
        }),
        synced_epoch: 1,
        offset: 300,
        origin: true,
    };
    let mut n = Node::new(config("n1", THREE), durable, 0).unwrap();
    n.step(0, probe(0, None));
    n.step(10, probe(0, None));
    let t = 2 * ft();
    n.step(
        t - 100,
        peers(vec![
            view("n2", replica(t - 100, pos(1, 700))),
            view("n3", replica(t - 100, pos(1, 650))),
        ]),
    );
    let d = n.step(
        t,
        peers(vec![
            view("n2", replica(t, pos(1, 700))),
            view("n3", replica(t, pos(1, 650))),
        ]),
    );
    assert_eq!(n.published().position, pos(1, 700), "{}", d.reason);
    let d = n.step(t + 1, probe(0, None));
    let c = n.published().campaign.expect(&d.reason);
    assert!(c.origin && c.position == pos(1, 700), "{c:?}");
}

// ---- primaries and fencing --------------------------------------------------------------------

#[test]
fn a_higher_epoch_demotes_the_primary_and_it_follows() {
    let (mut n, t) = elected(THREE);
    let d = n.step(t + 100, peers(vec![view("n2", primary(2, t + 100))]));
    let tail: Vec<_> = d
        .actions
        .iter()
        .filter(|a| !matches!(a, Action::Publish(_)))
        .cloned()
        .collect();
    let follow = Action::Follow {
        primary: "n2".into(),
        epoch: 2,
    };
    assert_eq!(
        tail,
        vec![Action::Fence, Action::Demote, follow],
        "{}",
        d.reason
    );
    assert!(!n.is_writable());
    assert!(
        d.reason.contains("n2 is primary of epoch 2"),
        "{}",
        d.reason
    );
}

#[test]
fn a_primary_fences_itself_once_no_majority_acknowledged_within_the_bound() {
    let f = timing().fence_after_ms;
    for (voters, since_ack, writable) in [
        (THREE, f - 1, true),
        (THREE, f, false),
        (FIVE, f - 1, true),
        (FIVE, f, false),
    ] {
        let (mut n, acked) = elected(voters);
        let d = n.step(acked + since_ack, Event::Tick);
        assert_eq!(
            n.is_writable(),
            writable,
            "{} voters, {since_ack} ms: {}",
            voters.len(),
            d.reason
        );
        assert_eq!(has(&d, &Action::Fence), !writable, "{:?}", d.actions);
    }
}

#[test]
fn a_primary_unfences_when_a_majority_acknowledges_again_unless_superseded() {
    let f = timing().fence_after_ms;
    for superseded in [false, true] {
        let (mut n, acked) = elected(THREE);
        let t = acked + f;
        assert!(has(&n.step(t, Event::Tick), &Action::Fence));
        let mut views = vec![view("n2", supporter(t + 50, "n1", 1, t))];
        if superseded {
            views.push(view("n3", primary(2, t + 50)));
        }
        let d = n.step(t + 50, peers(views));
        assert_eq!(unfenced_until(&d).is_some(), !superseded, "{}", d.reason);
        assert_eq!(has(&d, &Action::Demote), superseded, "{}", d.reason);
        assert_eq!(n.is_writable(), !superseded);
    }
}

#[test]
fn a_single_node_is_primary_of_epoch_one_or_its_persisted_epoch() {
    for (persisted, epoch) in [(None, 1), (Some(3), 3)] {
        let durable = Durable {
            vote: persisted.map(|epoch| Vote {
                epoch,
                candidate: "n1".into(),
            }),
            synced_epoch: persisted.unwrap_or(0),
            offset: 0,
            origin: false,
        };
        let mut n = Node::new(config("n1", &["n1"]), durable, 7).unwrap();
        let d = n.step(7, Event::Tick);
        assert_eq!(promoted(&d), Some(epoch), "{}", d.reason);
        assert!(n.is_writable());
        assert!(!n.step(8, Event::Tick).changed);
    }
}

// ---- two nodes: the lease ---------------------------------------------------------------------

/// A store answering every lease request at once: `heartbeat(t)` is the holder's heartbeat
/// as of time `t` (None: the holder stopped renewing), `lease` the existing epoch and holder.
struct Store {
    epoch: u64,
    holder: Option<&'static str>,
    heartbeat: fn(u64) -> Option<u64>,
    acquire: fn(u64) -> LeaseResult,
}

impl Store {
    fn answer(&self, now: u64, action: &Action) -> Option<LeaseResult> {
        Some(match action {
            Action::PollLease { asked_at, .. } => LeaseResult::Heartbeat {
                asked_at: *asked_at,
                epoch: self.epoch,
                holder: self.holder.map(NodeId::from),
                heartbeat: (self.heartbeat)(now),
            },
            Action::TryAcquireLease { epoch } => (self.acquire)(*epoch),
            Action::RenewLease { epoch, heartbeat } => LeaseResult::Renewed {
                epoch: *epoch,
                heartbeat: *heartbeat,
            },
            _ => return None,
        })
    }
}

/// n2, standby of n1 (primary of epoch 1), stepped every 50 ms until `until`; `n1_gossip`
/// says whether n1's heartbeats still arrive by gossip. Returns every decision with its time.
fn run_standby(store: &Store, n1_gossip: bool, until: u64) -> (Node, Vec<(u64, Decision)>) {
    let mut n = new_node("n2", TWO);
    n.step(0, peers(vec![view("n1", primary(1, 0))]));
    n.step(0, probe(50, Some("n1")));
    let mut log = Vec::new();
    for now in (50..until).step_by(50) {
        let heartbeat = if n1_gossip { now } else { 0 };
        let mut pending = vec![
            (now, peers(vec![view("n1", primary(1, heartbeat))])),
            (now, probe(50, None)),
        ];
        // The store answers each request 5 ms later; an answer may cause another request.
        while !pending.is_empty() {
            let (at, event) = pending.remove(0);
            let d = n.step(at, event);
            let answers = d.actions.iter().filter_map(|a| store.answer(at, a));
            pending.extend(answers.map(|r| (at + 5, Event::Lease(r))));
            log.push((at, d));
        }
    }
    (n, log)
}

fn first(log: &[(u64, Decision)], pred: impl Fn(&Action) -> bool) -> Option<u64> {
    log.iter()
        .find(|(_, d)| d.actions.iter().any(&pred))
        .map(|(t, _)| *t)
}

fn acquires(a: &Action) -> bool {
    matches!(a, Action::TryAcquireLease { .. })
}

#[test]
fn two_nodes_losing_only_their_link_promote_nobody() {
    // n1 keeps renewing (its heartbeat object changes); gossip from n1 is gone.
    let store = Store {
        epoch: 1,
        holder: Some("n1"),
        heartbeat: |now| Some(now / 100),
        acquire: |epoch| LeaseResult::Acquired { epoch },
    };
    let (n, log) = run_standby(&store, false, 10_000);
    assert_eq!(first(&log, acquires), None);
    assert_eq!(n.primary_epoch(), None);
}

#[test]
fn two_nodes_promote_the_standby_once_the_primary_is_silent_for_the_ttl() {
    let store = Store {
        epoch: 1,
        holder: Some("n1"),
        heartbeat: |_| Some(42),
        acquire: |epoch| LeaseResult::Acquired { epoch },
    };
    let (n, log) = run_standby(&store, false, 3_000);
    let t = timing();
    let tried = first(&log, acquires).expect("the standby takes over");
    let earliest = t.lease_ttl_ms.max(t.failover_timeout_ms);
    assert!(
        (earliest..earliest + 3 * t.lease_renew_ms).contains(&tried),
        "acquired at {tried} ms, expected soon after {earliest} ms"
    );
    assert_eq!(n.primary_epoch(), Some(2));
    assert!(n.is_writable());
}

#[test]
fn two_nodes_a_standby_that_still_hears_the_primary_does_not_take_over() {
    // The heartbeat object is stuck (the store lost n1's writes), but gossip is fine.
    let store = Store {
        epoch: 1,
        holder: Some("n1"),
        heartbeat: |_| Some(42),
        acquire: |epoch| LeaseResult::Acquired { epoch },
    };
    let (_, log) = run_standby(&store, true, 10_000);
    assert_eq!(first(&log, acquires), None);
}

#[test]
fn two_nodes_a_lease_taken_by_the_other_node_promotes_nobody() {
    let store = Store {
        epoch: 1,
        holder: Some("n1"),
        heartbeat: |_| Some(42),
        acquire: |epoch| LeaseResult::AlreadyTaken {
            epoch,
            holder: "n1".into(),
        },
    };
    let (n, log) = run_standby(&store, false, 3_000);
    assert!(first(&log, acquires).is_some());
    assert_eq!(first(&log, |a| matches!(a, Action::Promote { .. })), None);
    assert_eq!(n.primary_epoch(), None);
}

#[test]
fn two_nodes_a_delayed_poll_answer_does_not_count_as_recent() {
    // Every answer shows the same heartbeat, but was asked long ago (a slow store).
    let mut n = new_node("n2", TWO);
    n.step(0, peers(vec![view("n1", primary(1, 0))]));
    n.step(0, probe(50, Some("n1")));
    for now in (50..5_000).step_by(50) {
        let d = n.step(now, probe(50, None));
        assert!(!d.actions.iter().any(acquires), "at {now} ms: {}", d.reason);
        let answer = LeaseResult::Heartbeat {
            asked_at: 0,
            epoch: 1,
            holder: Some("n1".into()),
            heartbeat: Some(42),
        };
        n.step(now, Event::Lease(answer));
    }
}

#[test]
fn two_nodes_a_renewal_that_completes_after_the_lease_lapsed_does_not_extend_it() {
    let f = timing().fence_after_ms;
    // n1 alone with an empty store: after the failover timeout it takes lease 1.
    let mut n = new_node("n1", TWO);
    let mut t = 0;
    let acquired_at = loop {
        let d = n.step(t, probe(0, None));
        if has(&d, &Action::TryAcquireLease { epoch: 1 }) {
            break t;
        }
        for action in &d.actions {
            if let Action::PollLease { asked_at, .. } = action {
                let empty = LeaseResult::Heartbeat {
                    asked_at: *asked_at,
                    epoch: 0,
                    holder: None,
                    heartbeat: None,
                };
                n.step(t + 5, Event::Lease(empty));
            }
        }
        t += 50;
        assert!(t < 5_000, "never acquired");
    };
    n.step(
        acquired_at + 5,
        Event::Lease(LeaseResult::Acquired { epoch: 1 }),
    );
    assert!(n.is_writable());
    // A renewal sent 100 ms later is answered only after the lease (acquired_at + f) ended.
    let renewed = LeaseResult::Renewed {
        epoch: 1,
        heartbeat: acquired_at + 100,
    };
    let d = n.step(acquired_at + f + 1, Event::Lease(renewed));
    assert!(!n.is_writable(), "{}", d.reason);
    assert!(has(&d, &Action::Fence));
    // Only a new epoch restores it.
    let epoch_2 = Action::TryAcquireLease { epoch: 2 };
    assert!(has(&d, &epoch_2), "{}", d.reason);
}

// ---- configuration ----------------------------------------------------------------------------

#[test]
fn timing_defaults_are_valid_and_each_invariant_is_named() {
    assert_eq!(timing().validate(), Ok(()));
    let key = |t: Timing| match t.validate() {
        Ok(()) => "ok".to_string(),
        Err(ElectionConfigError::Zero { key })
        | Err(ElectionConfigError::Invalid { key, .. })
        | Err(ElectionConfigError::FenceNotBeforeTakeover { key, .. }) => key.to_string(),
        Err(e) => e.to_string(),
    };
    let d = timing();
    for (t, expected) in [
        (Timing { tick_ms: 0, ..d }, "tick_ms"),
        (
            Timing {
                fence_after_ms: 700,
                ..d
            },
            "failover_timeout_ms",
        ),
        (
            Timing {
                action_latency_ms: 300,
                ..d
            },
            "failover_timeout_ms",
        ),
        (
            Timing {
                max_clock_drift_ppm: 200_000,
                ..d
            },
            "max_clock_drift_ppm",
        ),
        (
            Timing {
                max_clock_drift_ppm: 90_000,
                ..d
            },
            "failover_timeout_ms",
        ),
        (
            Timing {
                lease_ttl_ms: 600,
                ..d
            },
            "lease_ttl_ms",
        ),
        (
            Timing {
                fence_after_ms: 250,
                ..d
            },
            "fence_after_ms",
        ),
        (
            Timing {
                election_timeout_ms: 100,
                ..d
            },
            "election_timeout_ms",
        ),
        (
            Timing {
                lease_renew_ms: 250,
                ..d
            },
            "lease_renew_ms",
        ),
        (
            Timing {
                primary_grace_ms: 500,
                ..d
            },
            "primary_grace_ms",
        ),
    ] {
        assert_eq!(key(t), expected, "{t:?}");
    }
    let message = Timing {
        fence_after_ms: 700,
        ..d
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("fence_after_ms") && message.contains("failover_timeout_ms"),
        "{message}"
    );
}

#[test]
fn membership_is_checked() {
    for (me, voters, expected) in [
        ("n1", vec![], ElectionConfigError::NoVoters),
        (
            "n1",
            vec!["n1", "n2", "n1"],
            ElectionConfigError::DuplicateVoter("n1".into()),
        ),
        (
            "n4",
            vec!["n1", "n2", "n3"],
            ElectionConfigError::NotAVoter("n4".into()),
        ),
    ] {
        let err = Node::new(config(me, &voters), Durable::default(), 0).unwrap_err();
        assert_eq!(err, expected);
    }
}

// ---- scenarios on the simulator ---------------------------------------------------------------

/// A fresh cluster elects a primary; returns the world, the primary and the bootstrap time.
fn bootstrapped(n: usize, seed: u64) -> (World, usize) {
    let mut world = World::new(n, timing(), seed);
    // Timing assertions measure the protocol, not a store that takes a second to answer.
    world.store_slow_percent = 0;
    let (primary, _) = world.run_until_writer(5_000).expect("bootstraps a primary");
    world.run_for(1_000);
    assert_eq!(world.violation(), None);
    (world, primary)
}

#[test]
fn scenario_killing_the_primary_elects_another_within_about_a_second() {
    for (n, seed) in [(2, 1), (3, 2), (3, 3), (5, 4)] {
        let (mut world, old) = bootstrapped(n, seed);
        world.enable_trace();
        world.crash(old);
        let (new, took) = world.run_until_writer(5_000).expect("a new primary");
        assert_ne!(new, old);
        assert!(
            took <= 1_300,
            "{n} nodes: took {took} ms\n{}",
            world.trace()
        );
        world.restart(old);
        world.run_for(3_000);
        assert_eq!(
            world.writer(),
            Some(new),
            "the old primary rejoins as a replica"
        );
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn scenario_an_isolated_primary_is_fenced_before_the_others_elect() {
    for (n, seed) in [(2, 5), (3, 6), (5, 7)] {
        let (mut world, old) = bootstrapped(n, seed);
        world.isolate(old, true);
        world.run_for(timing().fence_bound_ms() + 100);
        let writer = world.writer();
        // Two nodes: the isolated primary keeps its lease, so it keeps writing.
        if n == 2 {
            assert_eq!(writer, Some(old));
            continue;
        }
        assert_eq!(
            writer, None,
            "{n} nodes: the isolated primary fenced itself"
        );
        let (new, _) = world.run_until_writer(3_000).expect("the majority elects");
        assert_ne!(new, old);
        world.isolate(old, false);
        world.run_for(3_000);
        assert_eq!(world.writer(), Some(new));
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn scenario_losing_a_replica_or_the_two_node_link_changes_nothing() {
    for (n, seed) in [(2, 8), (3, 9)] {
        let (mut world, primary) = bootstrapped(n, seed);
        let promotions = world.promotions();
        let replica = (primary + 1) % n;
        world.cut(primary, replica, true);
        world.run_for(10_000);
        assert_eq!(world.writer(), Some(primary));
        assert_eq!(world.promotions(), promotions, "nobody was promoted");
        world.cut(primary, replica, false);
        world.run_for(1_000);
        assert_eq!(world.violation(), None);
    }
}

/// A restarted redis counts its replication offset from 0 again: the primary gives up its
/// epoch (its replicas would count the same writes lower once resynced) and is elected again
/// in a new one, being the node with the most data.
#[test]
fn scenario_a_redis_restart_within_the_grace_makes_the_same_node_primary_of_a_new_epoch() {
    let grace = timing().primary_grace_ms;
    for (n, seed) in [(2, 10), (3, 11)] {
        let (mut world, primary) = bootstrapped(n, seed);
        world.enable_trace();
        let promotions = world.promotions();
        world.redis_down(primary, true);
        world.run_for(grace / 2);
        world.redis_down(primary, false);
        world.run_for(5_000);
        assert_eq!(world.writer(), Some(primary), "{n} nodes");
        assert_eq!(
            world.promotions(),
            promotions + 1,
            "{n} nodes: one new epoch, for the same node"
        );
        // A redis that stays down does cause a failover.
        world.redis_down(primary, true);
        let (new, _) = world.run_until_writer(grace + 13_000).unwrap_or_else(|| {
            panic!(
                "{n} nodes: no failover: {:?}\n{}",
                world.violation(),
                world.trace()
            )
        });
        assert_ne!(new, primary, "{}", world.trace());
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn scenario_a_partitioned_two_node_primary_without_the_store_fences_and_the_standby_takes_over() {
    let (mut world, old) = bootstrapped(2, 12);
    world.isolate(old, true);
    world.store_down(old, true);
    world.run_for(timing().fence_bound_ms() + 100);
    assert_eq!(world.writer(), None, "the old primary fenced itself");
    let (new, _) = world
        .run_until_writer(5_000)
        .expect("the standby takes over");
    assert_ne!(new, old);
    world.isolate(old, false);
    world.store_down(old, false);
    world.run_for(3_000);
    assert_eq!(world.writer(), Some(new));
    assert_eq!(world.violation(), None);
}

/// Live clusters take 200–400 ms from a state change to a peer acting on it (a gossip round,
/// relaying, and an fsync before each vote is published), so a vote's round trip can exceed
/// `election_timeout_ms`. Simultaneously started nodes must still elect one primary that stays,
/// instead of campaigning in ever newer epochs while votes arrive for abandoned ones.
#[test]
fn scenario_a_fresh_cluster_elects_one_primary_despite_slow_gossip() {
    // Default timing with 50–150 ms per delivery, and 150–300 ms (200–400 ms from a change to
    // a peer seeing it) with a fence bound that covers the slower acknowledgement round trip.
    let slow = Timing {
        fence_after_ms: 900,
        failover_timeout_ms: 1_300,
        lease_ttl_ms: 1_300,
        ..timing()
    };
    for (seed, t, delay) in (0..20).flat_map(|s| [(s, timing(), (50, 150)), (s, slow, (150, 300))])
    {
        let mut world = World::new(3, t, 100 + seed);
        world.store_slow_percent = 0;
        world.gossip_delay_ms = Some(delay);
        world.enable_trace();
        let (_, took) = world
            .run_until_writer(4_000)
            .unwrap_or_else(|| panic!("seed {seed}: no primary\n{}", world.trace()));
        world.run_for(10_000);
        let healthy = world.healthy();
        assert!(
            healthy.is_some() && world.promotions() <= 2,
            "seed {seed}, delay {delay:?}: first writer after {took} ms, {} promotions, \
             healthy: {healthy:?}\n{}",
            world.promotions(),
            world.trace()
        );
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn scenario_a_switchover_hands_over_quickly_and_loses_nothing() {
    for (n, seed) in [(2, 20), (3, 21), (3, 22), (5, 23)] {
        let (mut world, old) = bootstrapped(n, seed);
        world.enable_trace();
        let target = (old + 1) % n;
        world.switchover(old, Some(target)).unwrap();
        // No failover timeout to wait for: a pause, a probe, a gossip round trip and a vote
        // (or the lease).
        let (new, took) = world.run_until_writer(3_000).expect("a new primary");
        assert_eq!(new, target, "{n} nodes:\n{}", world.trace());
        assert!(took < 700, "{n} nodes: took {took} ms\n{}", world.trace());
        world.run_for(2_000);
        assert_eq!(world.writer(), Some(target), "the old primary follows");
        assert_eq!(world.violation(), None);
        // And back, this time to whichever node is best.
        world.switchover(target, None).unwrap();
        let (back, _) = world.run_until_writer(3_000).expect("a new primary");
        assert_ne!(back, target);
        world.run_for(1_000);
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn scenario_a_switchover_to_an_unreachable_node_is_abandoned_and_writes_resume() {
    for (n, seed) in [(2, 24), (3, 25)] {
        let (mut world, old) = bootstrapped(n, seed);
        let target = (old + 1) % n;
        let before = world.promotions();
        // Cut right after the request: the target never learns of the handoff.
        world.switchover(old, Some(target)).unwrap();
        world.cut(old, target, true);
        world.run_for(super::node::SWITCHOVER_TIMEOUT_MS + 3_000);
        assert!(world.writer().is_some(), "{n} nodes: writes resumed");
        assert!(world.promotions() > before);
        world.cut(old, target, false);
        world.run_for(2_000);
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn switchover_is_refused_with_a_reason() {
    let (mut world, p) = bootstrapped(3, 26);
    let other = (p + 1) % 3;
    assert_eq!(
        world.switchover(other, None).unwrap_err(),
        "this node is not the primary"
    );
    assert!(world
        .switchover(p, Some(p))
        .unwrap_err()
        .contains("is already the primary"));
    world.isolate(other, true);
    world.run_for(1_000);
    let err = world.switchover(p, Some(other)).unwrap_err();
    assert!(err.contains("is not reachable"), "{err}");
    world.isolate(other, false);
    world.run_for(1_000);
    assert_eq!(world.writer(), Some(p), "a refusal changes nothing");
    let mut single = new_node("n1", &["n1"]);
    single.step(0, probe(0, None));
    assert!(single
        .switchover(1, None)
        .unwrap_err()
        .contains("no other node"));
    assert_eq!(world.violation(), None);
}

#[test]
fn scenario_a_node_cut_off_starts_no_epochs_and_rejoins_without_an_election() {
    // Pre-vote: a replica, or a primary, cut off from the others cannot win an election, so it
    // starts none; once back it follows the primary of the epoch the majority side holds, and
    // nobody has to be elected again.
    for (n, seed, cut_primary) in [(3, 30, false), (3, 31, true), (5, 32, false), (5, 33, true)] {
        let (mut world, p) = bootstrapped(n, seed);
        let cut = if cut_primary { p } else { (p + 1) % n };
        let epoch_before = world.voted_epoch(cut);
        world.isolate(cut, true);
        world.run_for(6_000);
        let writer = world.writer().expect("the majority side takes writes");
        assert_eq!(
            world.voted_epoch(cut),
            epoch_before,
            "{n} nodes: the cut-off node started an epoch of its own"
        );
        let promotions = world.promotions();
        world.isolate(cut, false);
        world.run_for(4_000);
        assert_eq!(
            world.promotions(),
            promotions,
            "{n} nodes: an election after the heal"
        );
        assert_eq!(
            world.healthy(),
            Some(writer),
            "{n} nodes: the returning node follows"
        );
        assert_eq!(world.violation(), None);
    }
}

#[test]
fn a_node_that_hears_no_majority_starts_no_campaign() {
    for (voters, heard, runs) in [
        (THREE, 0, false),
        (THREE, 1, true),
        (FIVE, 1, false),
        (FIVE, 2, true),
    ] {
        let mut n = new_node("n1", voters);
        n.step(0, probe(0, None));
        n.step(10, probe(0, None));
        let t = ft();
        for at in [t - 100, t - 10] {
            let mut views = unhealthy_replicas("n1", voters, at);
            for v in &mut views[heard..] {
                v.alive = false;
            }
            n.step(at, peers(views));
        }
        let d = n.step(t, probe(0, None));
        assert_eq!(
            voted(&d).is_some(),
            runs,
            "{} voters, {heard} heard: {}",
            voters.len(),
            d.reason
        );
    }
}

#[test]
fn scenario_a_paused_agent_cannot_keep_its_redis_writable() {
    // The primary's agent stops (SIGSTOP, a deadlock) while its redis runs on: the fence
    // guard closes writes at the deadline of the last Unfence, before another node is
    // promoted. Without the guard the simulator sees two writers.
    for (n, seed) in [(2, 40), (3, 41), (5, 42)] {
        for guard in [true, false] {
            let mut world = World::new(n, timing(), seed);
            world.store_slow_percent = 0;
            world.guard = guard;
            let (p, _) = world.run_until_writer(5_000).expect("bootstraps");
            world.run_for(1_000);
            world.pause_agent(p, true);
            world.run_for(5_000);
            if guard {
                assert_eq!(world.violation(), None, "{n} nodes");
                let writer = world.writer().expect("another node took over");
                assert_ne!(writer, p, "{n} nodes");
                world.pause_agent(p, false);
                world.run_for(3_000);
                assert_eq!(world.violation(), None, "{n} nodes");
                assert_eq!(world.healthy(), Some(writer), "{n} nodes: it rejoins");
            } else {
                let violation = world.violation().unwrap_or_default();
                assert!(
                    violation.contains("still accepts writes")
                        || violation.contains("accept writes"),
                    "{n} nodes without the guard: {violation:?}"
                );
            }
        }
    }
}
