//! The command line: `run`, `status`, `check-config`. Parsing and dispatch only; the work is
//! done by the modules it calls.

use crate::config::{self, DEFAULT_CONFIG_PATH};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

const ABOUT: &str = "Node agent for a managed Redis data store";

const LONG_ABOUT: &str = "\
redis-steward runs on every node of a Redis data store, next to the redis-server it owns.

It writes redis.conf and the ACL file, starts redis-server as its child (TLS only, AOF on),
restarts it when it crashes, stops it cleanly on SIGTERM, enforces the allowed client
networks with nftables, and reports to systemd (READY, STATUS, WATCHDOG).

A running agent answers on its local API (api.listen, default 127.0.0.1:7480):
  /status   the node's state as JSON (what `redis-steward status` shows)
  /metrics  Prometheus metrics
  /healthz  200 while redis answers";

const AFTER_HELP: &str = "\
EXAMPLES:
  redis-steward check-config /etc/redis-steward/config.toml
  redis-steward run --config /etc/redis-steward/config.toml
  redis-steward status
  redis-steward status --json --api 127.0.0.1:7480
  redis-steward keygen /etc/redis-steward/gossip.key

FILES:
  /etc/redis-steward/config.toml   configuration (see config.example.toml)
  <state_dir>/                     redis.conf, users.acl, secrets.toml, tls/, redis.sock
  <data_dir>/appendonlydir/        redis's append-only files

EXIT STATUS:
  0 on success; 1 on any error (the message names the problem); 2 on bad usage.";

#[derive(Debug, Parser)]
#[command(name = "redis-steward", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent in the foreground (as systemd does).
    ///
    /// Validates the config first and starts nothing if it is wrong. Stops redis cleanly and
    /// exits 0 on SIGTERM or SIGINT.
    Run {
        /// Configuration file.
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Show the running agent's view of its node.
    ///
    /// Asks the agent's local API; the address comes from --api, or from api.listen in the
    /// config file.
    Status {
        /// Configuration file (to find api.listen).
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Agent API address, overriding the config file.
        #[arg(long, value_name = "IP:PORT")]
        api: Option<SocketAddr>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a new random 32-byte data-store key (hex, mode 0600), e.g. the gossip key that
    /// every node of an HA data store shares. Refuses to overwrite an existing file.
    Keygen {
        /// Where to write the key.
        path: PathBuf,
    },
    /// Validate a configuration file and print a summary; exits 1 naming the bad key.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = DEFAULT_CONFIG_PATH)]
        path: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis-steward: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Run { config } => {
            let cfg = config::load(&config)?;
            crate::logging::init();
            runtime()?.block_on(crate::agent::run(cfg))
        }
        Cmd::Status { config, api, json } => {
            let addr = match api {
                Some(a) => a,
                None => {
                    config::load(&config)
                        .with_context(|| "cannot find the agent API address (pass --api IP:PORT)")?
                        .api
                        .listen
                }
            };
            let status = runtime()?.block_on(crate::api::fetch_status(addr))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::status::render_table(&status));
            }
            Ok(())
        }
        Cmd::Keygen { path } => {
            if path.exists() {
                anyhow::bail!("{} exists; not overwriting a key", path.display());
            }
            crate::keyfile::generate(&path)?;
            println!("wrote a new key to {} (mode 0600)", path.display());
            Ok(())
        }
        Cmd::CheckConfig { path } => {
            let cfg = config::load(&path)?;
            println!(
                "{}: ok (data store {}, node {}, plan {}, TLS port {}, {} allowed CIDR block(s), scripting {})",
                path.display(),
                cfg.data_store_id,
                cfg.node_name,
                cfg.plan,
                cfg.redis.port,
                cfg.access.allowed_cidrs.len(),
                if cfg.redis.scripting { "on" } else { "off" },
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
