//! The node: this machine's redis-server and everything it runs with — the supervised child,
//! its config and ACL, the admin connection, secrets and key files, TLS material, limits, the
//! firewall, the data-directory lock, and the fence guard that closes redis to writes when
//! the agent cannot.

pub mod fence_guard;
pub mod firewall;
pub mod keyfile;
pub mod layout;
pub mod limits;
pub mod lock;
pub mod redis_client;
pub mod redis_conf;
pub mod secrets;
pub mod supervisor;
pub mod tls;
