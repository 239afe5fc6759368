//! The gossip actor: one chitchat instance per data store (cluster id = data store id) over
//! the sealed UDP transport. Each agent writes only its own keys; `members` reads what the
//! others published and whether the failure detector thinks they are alive.

use super::seal::{GossipKey, KeyRing};
use super::transport::{GossipCounters, SealedTransport, UdpNetwork};
use anyhow::{Context, Result};
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct GossipSettings {
    pub data_store_id: String,
    pub node_name: String,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub interval: Duration,
    pub key: [u8; 32],
}

/// What gossip says about another node (its newest generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub alive: bool,
    pub keys: BTreeMap<String, String>,
}

pub struct Gossip {
    handle: ChitchatHandle,
    counters: Arc<GossipCounters>,
    me: String,
}

impl Gossip {
    pub async fn start(s: GossipSettings, initial: Vec<(String, String)>) -> Result<Gossip> {
        let keyring = KeyRing::new(GossipKey::new(1, s.key));
        let transport = SealedTransport::for_data_store(UdpNetwork, keyring, &s.data_store_id);
        let counters = transport.counters();
        // A new generation at every start: peers then know a restarted node's state is new.
        let generation_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(s.node_name.clone(), generation_id, s.advertise),
            cluster_id: s.data_store_id.clone(),
            gossip_interval: s.interval,
            listen_addr: s.listen,
            seed_nodes: s.seeds.iter().map(|a| a.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                // With fast gossip, start from the real interval rather than chitchat's 5 s, so
                // a node is judged dead in about a second, not a minute, after joining.
                initial_interval: s.interval,
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = spawn_chitchat(config, initial, &transport)
            .await
            .with_context(|| format!("cannot start gossip on {}", s.listen))?;
        Ok(Gossip {
            handle,
            counters,
            me: s.node_name,
        })
    }

    pub fn counters(&self) -> Arc<GossipCounters> {
        self.counters.clone()
    }

    /// Set one of this node's own keys.
    pub async fn publish(&self, key: &str, value: String) {
        self.handle
            .with_chitchat(|c| c.self_node_state().set(key, value.clone()))
            .await;
    }

    /// Remove one of this node's own keys (peers see it go).
    pub async fn delete(&self, key: &str) {
        self.handle
            .with_chitchat(|c| c.self_node_state().delete(key))
            .await;
    }

    /// Every other node gossip knows, newest generation of each name.
    pub async fn members(&self) -> Vec<Member> {
        self.handle
            .with_chitchat(|c| {
                let live: Vec<ChitchatId> = c.live_nodes().cloned().collect();
                let mut by_name: BTreeMap<String, Member> = BTreeMap::new();
                for (id, state) in c.node_states() {
                    if *id.node_id == *self.me {
                        continue;
                    }
                    let m = Member {
                        name: id.node_id.to_string(),
                        generation: id.generation_id,
                        gossip_addr: id.gossip_advertise_addr,
                        alive: live.contains(id),
                        keys: state
                            .key_values()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    };
                    match by_name.get(&m.name) {
                        Some(old) if old.generation >= m.generation => {}
                        _ => {
                            by_name.insert(m.name.clone(), m);
                        }
                    }
                }
                by_name.into_values().collect()
            })
            .await
    }

    /// Stop gossiping (peers then see this node as dead).
    pub fn initiate_shutdown(&self) {
        let _ = self.handle.initiate_shutdown();
    }
}
