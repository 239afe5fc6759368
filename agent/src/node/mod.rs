//! The node: this machine's redis-server and everything it runs with — the supervised child,
//! its config and ACL, the admin connection, secrets and key files, TLS material, limits, the
//! firewall, the data-directory lock, the fence guard that closes redis to writes when the
//! agent cannot, and the repair of the AOF damage redis 7.0 does to itself on a full disk.

pub mod aof_repair;
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
