//! redis-steward: the node agent of a managed Redis service. See ARCHITECTURE.md.

pub mod actor;
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod election;
pub mod firewall;
pub mod gossip;
pub mod ha;
pub mod keyfile;
pub mod layout;
pub mod limits;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod redis_client;
pub mod redis_conf;
pub mod resp;
pub mod secrets;
pub mod sentinel;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod tls;
