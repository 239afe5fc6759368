//! The redis-steward testbed: helpers that start the real agent binary and real
//! redis-server, and (in `netns`) multi-host networks made of network namespaces.

pub mod azurite;
pub mod backups;
pub mod cluster;
pub mod latency_proxy;
pub mod nemesis;
pub mod netns;
pub mod node;
pub mod s3;
pub mod sentinel_client;
pub mod sentinel_ref;
