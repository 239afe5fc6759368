//! redis-steward: the node agent of a managed Redis service. See ARCHITECTURE.md.
//!
//! Four parts, one folder each, and a few shared basics beside them:
//!
//! - [`node`]: this machine's redis — the child process, its config, secrets, TLS, limits,
//!   firewall, and the fence guard.
//! - [`cluster`]: the data store as a whole — gossip, the election, the HA shell, the Sentinel
//!   port clients discover the primary through, the hooks.
//! - [`backup`]: backups and restore — the shipper, the sealed format, the catalog, retention,
//!   restore, and what an empty node starts from.
//! - [`ops`]: running and watching the agent — the CLI and `run`'s wiring, the local API,
//!   status, metrics, systemd, logs.
//!
//! Imports flow one way: `ops` reads the other parts' snapshots, and no part imports `ops`
//! (agent/tests/imports.rs keeps it so).

pub mod actor;
pub mod backup;
pub mod cluster;
pub mod config;
pub mod log_context;
pub mod node;
pub mod ops;
pub mod plan;
pub mod store;
