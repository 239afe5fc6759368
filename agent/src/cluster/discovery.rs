//! What the Sentinel port tells clients, derived from what the election knows: the pure
//! mapping from [`HaStatus`] (or a single node's redis health) to a [`SentinelView`].
//!
//! The primary announced is the member claiming primaryship in the highest epoch (taking
//! writes or fenced). While it is fenced, dead or its redis is down it stays announced with
//! the `s_down`/`o_down` flags — as Sentinel keeps announcing a failed master until a
//! replacement is promoted — so clients retry instead of being sent to a replica. A new
//! primary replaces it in one view, which is what produces `+switch-master`.

use crate::cluster::ha::HaStatus;
use crate::cluster::sentinel::{Endpoint, ReplicaEntry, SentinelPeer, SentinelView};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// How one node is reached: its redis and its Sentinel port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs {
    pub name: String,
    pub ip: IpAddr,
    pub redis_port: u16,
    pub sentinel_port: u16,
}

/// A Sentinel run id for an agent: 40 hex characters, the same on every node for a given
/// data store and node, so agents can list each other without exchanging ids.
pub fn run_id(data_store: &str, node: &str) -> String {
    let digest = Sha256::digest(format!("{data_store}/{node}").as_bytes());
    hex::encode(digest)[..40].to_string()
}

/// The view of an HA data store. `prev` is the view this one replaces: its primary is kept
/// (marked down) while no member claims primaryship, e.g. right after the primary died.
pub fn from_ha(
    data_store: &str,
    me: &str,
    nodes: &[NodeAddrs],
    status: &HaStatus,
    prev: &SentinelView,
) -> SentinelView {
    let addr = |name: &str| nodes.iter().find(|n| n.name == name);
    let claim = status
        .members
        .iter()
        .filter(|m| m.role == "primary" || m.role == "fenced")
        .filter(|m| addr(&m.name).is_some())
        .max_by_key(|m| m.epoch);
    let (primary, primary_down, epoch, primary_name) = match claim {
        Some(m) => {
            let n = addr(&m.name).expect("filtered above");
            (
                Some(Endpoint::new(n.ip.to_string(), n.redis_port)),
                !(m.alive && m.writable && m.redis_healthy),
                m.epoch,
                Some(m.name.as_str()),
            )
        }
        // Nobody claims it (the primary's state is gone or it restarted): keep announcing the
        // last one, down.
        None => (
            prev.primary.clone(),
            prev.primary.is_some(),
            prev.epoch,
            None,
        ),
    };
    let prev_primary_name = prev
        .primary
        .as_ref()
        .and_then(|p| {
            nodes
                .iter()
                .find(|n| n.ip.to_string() == p.ip && n.redis_port == p.port)
        })
        .map(|n| n.name.as_str());
    let primary_name = primary_name.or(prev_primary_name);
    let replicas = status
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != primary_name)
        .filter_map(|m| {
            let n = addr(&m.name)?;
            Some(ReplicaEntry {
                name: m.name.clone(),
                ip: n.ip.to_string(),
                port: n.redis_port,
                up: m.alive && m.redis_healthy,
                offset: m.offset,
                link_up: m.role == "replica" && m.alive && m.redis_healthy,
            })
        })
        .collect();
    let sentinels = nodes
        .iter()
        .filter(|n| n.name != me)
        .map(|n| SentinelPeer {
            name: run_id(data_store, &n.name),
            ip: n.ip.to_string(),
            port: n.sentinel_port,
            up: status.members.iter().any(|m| m.name == n.name && m.alive),
        })
        .collect();
    SentinelView {
        master_name: data_store.to_string(),
        epoch,
        primary,
        primary_down,
        replicas,
        sentinels,
        quorum: (nodes.len() / 2 + 1) as u32,
    }
}

/// The view of a one-node data store: it is always the primary, down while redis is.
pub fn single(data_store: &str, ip: IpAddr, redis_port: u16, redis_healthy: bool) -> SentinelView {
    SentinelView {
        master_name: data_store.to_string(),
        epoch: 1,
        primary: Some(Endpoint::new(ip.to_string(), redis_port)),
        primary_down: !redis_healthy,
        replicas: Vec::new(),
        sentinels: Vec::new(),
        quorum: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ha::MemberStatus;

    fn nodes() -> Vec<NodeAddrs> {
        (1..=3)
            .map(|i| NodeAddrs {
                name: format!("node-{i}"),
                ip: format!("10.0.0.{i}").parse().unwrap(),
                redis_port: 6380,
                sentinel_port: 26379,
            })
            .collect()
    }

    fn member(name: &str, role: &str, epoch: u64, alive: bool, writable: bool) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            role: role.into(),
            epoch,
            alive,
            writable,
            redis_healthy: true,
            offset: 100,
            ..MemberStatus::default()
        }
    }

    fn status(members: Vec<MemberStatus>) -> HaStatus {
        HaStatus {
            members,
            ..HaStatus::default()
        }
    }

    #[test]
    fn the_primary_of_the_highest_epoch_is_announced_and_the_others_are_replicas() {
        let s = status(vec![
            member("node-1", "fenced", 3, true, false),
            member("node-2", "primary", 4, true, true),
            member("node-3", "replica", 4, true, false),
        ]);
        let v = from_ha("ds", "node-3", &nodes(), &s, &SentinelView::default());
        assert_eq!(v.primary, Some(Endpoint::new("10.0.0.2", 6380)));
        assert!(!v.primary_down);
        assert_eq!(v.epoch, 4);
        let names: Vec<&str> = v.replicas.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-3"]);
        assert!(
            !v.replicas[0].link_up,
            "a fenced old primary is no linked replica"
        );
        assert!(v.replicas[1].link_up);
        let sentinels: Vec<&str> = v.sentinels.iter().map(|s| s.ip.as_str()).collect();
        assert_eq!(sentinels, ["10.0.0.1", "10.0.0.2"], "the others, not me");
        assert_eq!(v.sentinels[0].name, run_id("ds", "node-1"));
        assert_eq!(v.quorum, 2);
    }

    #[test]
    fn a_dead_primary_stays_announced_as_down_until_a_new_one_is_promoted() {
        let before = status(vec![
            member("node-1", "primary", 1, true, true),
            member("node-2", "replica", 1, true, false),
        ]);
        let v1 = from_ha("ds", "node-2", &nodes(), &before, &SentinelView::default());
        // It died: gossip still has its last state, not alive.
        let dead = status(vec![
            member("node-1", "primary", 1, false, true),
            member("node-2", "replica", 1, true, false),
        ]);
        let v2 = from_ha("ds", "node-2", &nodes(), &dead, &v1);
        assert_eq!(v2.primary, v1.primary);
        assert!(v2.primary_down);
        // Its state is gone altogether: still the last one, down.
        let gone = status(vec![member("node-2", "replica", 1, true, false)]);
        let v3 = from_ha("ds", "node-2", &nodes(), &gone, &v2);
        assert_eq!(v3.primary, v1.primary);
        assert!(v3.primary_down);
        assert!(v3.replicas.iter().all(|r| r.name != "node-1"));
        // A new primary replaces it in one view.
        let after = status(vec![
            member("node-1", "primary", 1, false, true),
            member("node-2", "primary", 2, true, true),
        ]);
        let v4 = from_ha("ds", "node-2", &nodes(), &after, &v3);
        assert_eq!(v4.primary, Some(Endpoint::new("10.0.0.2", 6380)));
        assert!(!v4.primary_down);
        assert_eq!(v4.epoch, 2);
        assert_eq!(v4.replicas.len(), 1);
        assert!(!v4.replicas[0].up);
    }

    #[test]
    fn nothing_is_announced_before_any_primary_is_known() {
        let s = status(vec![member("node-1", "starting", 0, true, false)]);
        let v = from_ha("ds", "node-1", &nodes(), &s, &SentinelView::default());
        assert_eq!(v.primary, None);
        assert!(!v.primary_down);
    }

    #[test]
    fn a_single_node_is_its_own_primary() {
        let v = single("ds", "10.0.0.9".parse().unwrap(), 6380, false);
        assert_eq!(v.primary, Some(Endpoint::new("10.0.0.9", 6380)));
        assert!(v.primary_down);
        assert!(v.sentinels.is_empty());
        assert_eq!(run_id("ds", "n").len(), 40);
    }
}
