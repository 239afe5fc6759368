//! Operations: how people and machines run and watch the agent — the command line and the
//! wiring of `run`, the local HTTP API, the status report, Prometheus metrics, systemd
//! notifications and logs. Ops reads the other parts' snapshots (watch channels, counters);
//! no part imports ops.

pub mod api;
pub mod cli;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod status;
pub mod systemd;
