//! The command line: `run`, `status`, `switchover`, `backup`, `restore`, `keygen`,
//! `check-config`. Parsing and dispatch only; the work is
//! done by the modules it calls.

use crate::config::{self, DEFAULT_CONFIG_PATH};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const ABOUT: &str = "Node agent for a managed Redis data store";

const LONG_ABOUT: &str = "\
redis-steward runs on every node of a Redis data store, next to the redis-server it owns.

It writes redis.conf and the ACL file, starts redis-server as its child (TLS only, AOF on),
restarts it when it crashes, stops it cleanly on SIGTERM, enforces the allowed client
networks with nftables, and reports to systemd (READY, STATUS, WATCHDOG).

A running agent answers on its local API (api.listen, default 127.0.0.1:7480):
  /status   the node's state as JSON (what `redis-steward status` shows)
  /metrics  Prometheus metrics
  /healthz  200 while redis answers

Clients find the primary through the Redis Sentinel protocol served on sentinel.port
(default 26379, TLS, the customer password): point any Sentinel-aware client at the nodes'
sentinel ports with the data store id as the master name.";

const AFTER_HELP: &str = "\
EXAMPLES:
  redis-steward check-config /etc/redis-steward/config.toml
  redis-steward run --config /etc/redis-steward/config.toml
  redis-steward status
  redis-steward status --json --api 127.0.0.1:7480
  redis-steward switchover --to node-2
  redis-steward backup now
  redis-steward backup list
  redis-steward backup verify [--chain CHAIN]
  redis-steward restore --at 2026-11-26T09:59:00Z --target /var/lib/redis-steward/pitr
  redis-steward keygen /etc/redis-steward/gossip.key

FILES:
  /etc/redis-steward/config.toml   configuration (see config.example.toml)
  <state_dir>/                     redis.conf, users.acl, secrets.toml, tls/, redis.sock
  <data_dir>/appendonlydir/        redis's append-only files

ENVIRONMENT:
  REDIS_STEWARD_CONFIG   the config file, instead of --config
  RUST_LOG               log filter (default: info)
  REDIS_STEWARD_LOG      journald | stderr; by default journald when stderr is systemd's
                         journal stream, with REDIS_STEWARD_NODE, _ROLE and _EPOCH fields

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
        /// Start with no data even though this data store has history. Without it, a node
        /// whose data directory is empty joins a live primary, or restores the newest backup,
        /// and refuses to start when it cannot tell (backup store unreadable, no restorable
        /// backup, or this node served data before).
        #[arg(long)]
        start_empty: bool,
    },
    /// Show the running agent's view of its node.
    ///
    /// Asks the agent's local API; the address comes from --api, or from api.listen in the
    /// config file.
    Status(Query),
    /// Every epoch of the data store: when, which node became primary after which, and why.
    ///
    /// Each promoted node writes its epoch's record and gossips it; every agent keeps the
    /// records it sees in its state directory (history.jsonl), so all nodes show the same
    /// lines (a node that was down while an epoch began and ended may lack that one).
    History(Query),
    /// Hand the primary role to another node without losing a write (planned switchover).
    ///
    /// Asks the primary, through this node's agent (any node of the data store will do), to
    /// pause writes, wait until the target holds every write, and hand over; clients that
    /// discover the primary through the Sentinel port follow. Refused, with the reason, when
    /// the target is unreachable, unhealthy, not replicating or too far behind. Without --to
    /// the most up-to-date healthy replica is chosen. Then waits until the new primary takes
    /// writes and prints it. Exits 1 when refused or when no new primary showed up in time.
    Switchover {
        /// Configuration file (to find api.listen and the state directory's API token).
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Agent API address, overriding the config file.
        #[arg(long, value_name = "IP:PORT")]
        api: Option<SocketAddr>,
        /// The API token's file, overriding state_dir/api.token of the config.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// The node to hand over to (a node name from cluster.nodes).
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// How long to wait for the new primary, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        wait: u64,
    },
    /// Backups: take a snapshot now, list what the backup store holds, or verify it.
    Backup {
        #[command(subcommand)]
        action: BackupCmd,
    },
    /// Rebuild a data directory from the backups, to the newest point or to a second in the
    /// past (point-in-time recovery). The agent must not be running on that directory.
    ///
    /// Picks the chain whose window covers TIME, downloads, authenticates and decrypts its
    /// base and WAL segments, lays them out as the appendonlydir redis-server starts from, and
    /// cuts the WAL after the last write redis ran in second TIME. Shows progress (bytes,
    /// objects, rate, time left) on a terminal and a line every few seconds otherwise, then a
    /// summary. Nothing is half-done: the result is built beside the target and moved into
    /// place at the end. Refuses a target that holds data unless --force (the old data is
    /// moved aside, never deleted), a time outside the restorable windows (the error lists
    /// them), a chain with a missing WAL segment (unless --at stays before the gap), and any
    /// object that fails authentication.
    Restore {
        /// Configuration file (backup.url, options, keys and data_dir).
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Restore to this second: unix seconds or RFC 3339 (2026-11-26T10:00:00Z). Default:
        /// the newest point in the backups.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// The data directory to rebuild (default: data_dir from the config).
        #[arg(long, value_name = "DIR")]
        target: Option<PathBuf>,
        /// Replace data already in the target (it is moved aside, not deleted).
        #[arg(long)]
        force: bool,
        /// Show what the restore would do (the chain, every object and its size, the exact
        /// point it reaches) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The fence guard the agent starts beside itself (internal; see ARCHITECTURE.md).
    #[command(hide = true)]
    FenceGuard,
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

/// The agent API address: --api, or api.listen from the config file.
/// What `status` and `history` ask the agent's API.
#[derive(Debug, clap::Args)]
pub struct Query {
    /// Configuration file (to find api.listen).
    #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Agent API address, overriding the config file.
    #[arg(long, value_name = "IP:PORT")]
    api: Option<SocketAddr>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where the agent's API is and the token for its `POST` requests: `--api` and
/// `--token-file`, or api.listen and state_dir/api.token of the config (loaded once, and
/// only when one of them is missing).
fn api_endpoint(
    api: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    config: &std::path::Path,
) -> Result<(SocketAddr, String)> {
    let (addr, path) = match (api, token_file) {
        (Some(a), Some(t)) => (a, t),
        (api, token_file) => {
            let cfg = config::load(config).with_context(|| {
                format!(
                    "cannot find the agent's API address and token: {} does not load (pass \
                     --api IP:PORT and --token-file)",
                    config.display()
                )
            })?;
            let token = cfg.state_dir.join(crate::ops::api::API_TOKEN_FILE);
            (api.unwrap_or(cfg.api.listen), token_file.unwrap_or(token))
        }
    };
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the agent's API token {} (run as root or as a member of the agent's \
             group, or pass --token-file)",
            path.display()
        )
    })?;
    Ok((addr, token.trim().to_string()))
}

fn api_addr(api: Option<SocketAddr>, config: &std::path::Path) -> Result<SocketAddr> {
    match api {
        Some(a) => Ok(a),
        None => Ok(config::load(config)
            .with_context(|| "cannot find the agent API address (pass --api IP:PORT)")?
            .api
            .listen),
    }
}

/// Ask for a switchover, then wait for a different writable primary.
async fn switchover(
    addr: SocketAddr,
    token: String,
    to: Option<String>,
    wait: Duration,
) -> Result<()> {
    let writable_primary = |s: &crate::ops::status::NodeStatus| {
        let c = s.cluster.as_ref()?;
        // A dead member's last gossiped state may still say primary: only live ones count.
        c.members
            .iter()
            .filter(|m| (m.alive || m.is_self) && m.role == "primary" && m.writable)
            .max_by_key(|m| m.epoch)
            .map(|m| (m.name.clone(), m.epoch))
    };
    let before = crate::ops::api::fetch_status(addr).await?;
    let old = writable_primary(&before);
    let path = match &to {
        Some(t) => format!("/switchover?to={t}"),
        None => "/switchover".to_string(),
    };
    let started = std::time::Instant::now();
    let (code, body) =
        crate::ops::api::http_request(addr, "POST", &path, Some(&token), Duration::from_secs(20))
            .await?;
    let answer: crate::ops::api::SwitchoverAnswer = serde_json::from_str(&body)
        .with_context(|| format!("agent API answered {code}: {}", body.trim()))?;
    if !answer.started {
        anyhow::bail!("switchover refused: {}", answer.message);
    }
    println!("{}", answer.message);
    let deadline = started + wait;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(now) = crate::ops::api::fetch_status(addr).await else {
            continue;
        };
        if let Some((name, epoch)) = writable_primary(&now) {
            if Some(&name) != old.as_ref().map(|(n, _)| n) {
                println!(
                    "{name} is the primary (epoch {epoch}); switched over in {} ms",
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
        }
    }
    anyhow::bail!(
        "no new primary within {} s; see `redis-steward status`",
        wait.as_secs()
    )
}

#[derive(Debug, Subcommand)]
enum BackupCmd {
    /// Take a snapshot now (a new chain) on the running agent, which must be the primary;
    /// waits until it is uploaded.
    Now {
        /// Configuration file (to find api.listen and the state directory's API token).
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Agent API address, overriding the config file.
        #[arg(long, value_name = "IP:PORT")]
        api: Option<SocketAddr>,
        /// The API token's file, overriding state_dir/api.token of the config.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    },
    /// List the chains in the backup store (reads the store directly; no agent needed):
    /// bases, WAL segment ranges, the restorable window, sizes and any problem found.
    List {
        /// Configuration file (backup.url and its options).
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print JSON for scripts: each chain's state (open/closed), base, segments, stored
        /// bytes, oldest and newest restorable points, problems; the newest point; owners.
        #[arg(long)]
        json: bool,
    },
    /// Download and authenticate every object of one chain (or all), with the configured
    /// keys, and check the chains' continuity (a base, no WAL gap, an end marker after the
    /// last segment); exits 1 naming each object that fails (altered, truncated, foreign,
    /// wrong key) and each missing base or gap. The loss of a chain's very last segments is
    /// not visible in a listing and so not found.
    Verify {
        /// Configuration file (backup.url, options and keys).
        #[arg(short, long, env = "REDIS_STEWARD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only this chain (an id from `backup list`).
        #[arg(long, value_name = "CHAIN")]
        chain: Option<String>,
    },
}

fn backup(action: BackupCmd) -> Result<()> {
    let open_store =
        |config: &std::path::Path| -> Result<(config::BackupConfig, crate::store::Store)> {
            let cfg = config::load(config)?;
            let b = cfg
                .backup
                .context("no [backup] section in the config: backups are off")?;
            let store =
                crate::store::Store::open(&b.url, &b.options).context("config key `backup.url`")?;
            Ok((b, store))
        };
    match action {
        BackupCmd::Now {
            config,
            api,
            token_file,
        } => {
            let (addr, token) = api_endpoint(api, token_file, &config)?;
            runtime()?.block_on(async {
                let (code, body) = crate::ops::api::http_request(
                    addr,
                    "POST",
                    "/backup",
                    Some(&token),
                    Duration::from_secs(3700),
                )
                .await?;
                let answer: crate::ops::api::SwitchoverAnswer = serde_json::from_str(&body)
                    .with_context(|| format!("agent API answered {code}: {}", body.trim()))?;
                if !answer.started {
                    anyhow::bail!("no snapshot: {}", answer.message);
                }
                println!("{}", answer.message);
                Ok(())
            })
        }
        BackupCmd::List { config, json } => {
            let (_, store) = open_store(&config)?;
            let cat = runtime()?.block_on(crate::backup::restore::catalog(&store))?;
            if json {
                println!("{:#}", cat.to_json());
            } else {
                print!("{}", cat.render_table());
            }
            Ok(())
        }
        BackupCmd::Verify { config, chain } => {
            let (store, keys) = backup_reader(&config::load(&config)?)?;
            let v = runtime()?.block_on(crate::backup::restore::verify(
                &store,
                &keys,
                chain.as_deref(),
            ))?;
            for (object, e) in &v.failures {
                eprintln!("FAILED {object}: {e}");
            }
            for (chain, problem) in &v.breaks {
                eprintln!("BROKEN chain {chain}: {problem}");
            }
            println!(
                "{} chain(s): {} object(s) authenticated, {} bytes of plaintext; {} failed; {} \
                 continuity problem(s) in {} chain(s)",
                v.chains,
                v.objects,
                v.bytes,
                v.failures.len(),
                v.breaks.len(),
                v.broken_chains()
            );
            if v.ok() {
                Ok(())
            } else {
                anyhow::bail!(
                    "backups failed verification: {} object(s) failed, {} continuity \
                     problem(s) (missing bases, WAL gaps, end markers) in {} chain(s)",
                    v.failures.len(),
                    v.breaks.len(),
                    v.broken_chains()
                )
            }
        }
    }
}

/// The store and keys of `[backup]`, for commands that read backups.
fn backup_reader(
    cfg: &config::Config,
) -> Result<(crate::store::Store, crate::backup::keys::KeyRing)> {
    let b = cfg
        .backup
        .as_ref()
        .context("no [backup] section in the config: backups are off")?;
    crate::backup::restore::open_backups(b)
}

fn restore(
    config: &std::path::Path,
    at: Option<&str>,
    target: Option<PathBuf>,
    force: bool,
    dry_run: bool,
) -> Result<()> {
    let cfg = config::load(config)?;
    let at = at.map(crate::backup::restore::parse_time).transpose()?;
    let (store, keys) = backup_reader(&cfg)?;
    let cat = runtime()?.block_on(crate::backup::restore::catalog(&store))?;
    if let Some(e) = cat.refuse_foreign(&cfg.data_store_id, store.name()) {
        anyhow::bail!("not restoring: {e}");
    }
    if dry_run {
        // Second T means everything redis ran up to T.999 (as the restore reads it).
        let plan = cat.restore_plan(at.map(|s| s * 1000 + 999))?;
        println!(
            "would restore chain {} to {} ({} object(s), {} stored):",
            plan.chain,
            crate::backup::catalog::format_utc(plan.restores_to_unix_ms),
            plan.objects().len(),
            crate::backup::catalog::human_bytes(plan.total_bytes())
        );
        for (path, size) in plan.objects() {
            println!("  {path}  {size} B");
        }
        println!("dry run: nothing was changed");
        return Ok(());
    }
    let dir = target.unwrap_or_else(|| cfg.data_dir.clone());
    // A failed restore leaves the target as it found it: no directory it created, no lock.
    let dir_existed = dir.exists();
    let lock = crate::node::layout::Layout::new(&dir, &cfg.state_dir).lock_file();
    let lock_existed = lock.exists();
    let result = restore_into(&store, &keys, at, &dir, &lock, force);
    if result.is_err() {
        if !lock_existed {
            let _ = std::fs::remove_file(&lock);
        }
        if !dir_existed {
            // Only if empty: the restore builds beside the target and moves in at the end.
            let _ = std::fs::remove_dir(&dir);
        }
    }
    result
}

fn restore_into(
    store: &crate::store::Store,
    keys: &crate::backup::keys::KeyRing,
    at: Option<u64>,
    dir: &std::path::Path,
    lock: &std::path::Path,
    force: bool,
) -> Result<()> {
    use std::io::{IsTerminal, Write};
    crate::node::secrets::ensure_dir(dir, 0o750)?;
    let _lock = crate::node::lock::DataDirLock::acquire(lock, dir)?;
    let tty = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    let restored = runtime()?.block_on(crate::backup::restore::restore(
        store,
        keys,
        at,
        dir,
        force,
        |p| {
            if tty {
                eprint!("\r\x1b[2Krestoring: {p}");
                let _ = std::io::stderr().flush();
            } else if last_line.elapsed() >= Duration::from_secs(5) {
                eprintln!("restoring: {p}");
                last_line = std::time::Instant::now();
            }
        },
    ));
    if tty {
        eprintln!();
    }
    let restored = restored?;
    println!("{restored}");
    println!(
        "{} is ready: start the agent (or redis-server) on it",
        dir.display()
    );
    Ok(())
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
        Cmd::Run {
            config,
            start_empty,
        } => {
            let cfg = config::load(&config)?;
            crate::ops::logging::init();
            crate::log_context::set_node(&cfg.node_name);
            let opts = crate::ops::run::RunOptions { start_empty };
            runtime()?.block_on(crate::ops::run::run(cfg, opts))
        }
        Cmd::Switchover {
            config,
            api,
            token_file,
            to,
            wait,
        } => {
            let (addr, token) = api_endpoint(api, token_file, &config)?;
            runtime()?.block_on(switchover(addr, token, to, Duration::from_secs(wait)))
        }
        Cmd::Backup { action } => backup(action),
        Cmd::Restore {
            config,
            at,
            target,
            force,
            dry_run,
        } => restore(&config, at.as_deref(), target, force, dry_run),
        Cmd::Status(Query { config, api, json }) => {
            let addr = api_addr(api, &config)?;
            let status = runtime()?.block_on(crate::ops::api::fetch_status(addr))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::ops::status::render_table(&status));
            }
            Ok(())
        }
        Cmd::History(Query { config, api, json }) => {
            let addr = api_addr(api, &config)?;
            let body = runtime()?.block_on(crate::ops::api::http_get(addr, "/history"))?;
            let records: Vec<crate::cluster::history::Promotion> = serde_json::from_str(&body)
                .with_context(|| format!("the agent at {addr} answered /history with {body:?}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                print!("{}", crate::ops::status::render_history(&records));
            }
            Ok(())
        }
        Cmd::FenceGuard => crate::node::fence_guard::run_guard(),
        Cmd::Keygen { path } => {
            if path.exists() {
                anyhow::bail!("{} exists; not overwriting a key", path.display());
            }
            crate::node::keyfile::generate(&path)?;
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
            for w in cfg.warnings() {
                println!("warning: {w}");
            }
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

    /// Every (sub)command's man page, as clap_mangen renders it: (file name, roff).
    fn man_pages() -> Vec<(String, Vec<u8>)> {
        fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(sub.clone(), out);
            }
            let man = clap_mangen::Man::new(cmd).manual("redis-steward manual");
            let mut page = Vec::new();
            man.render(&mut page).expect("render to memory");
            out.push((man.get_filename(), page));
        }
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        let mut pages = Vec::new();
        walk(cmd, &mut pages);
        pages.sort();
        pages
    }

    /// The packaged man pages (packaging/man) are the CLI's own help: regenerate them with
    /// `REDIS_STEWARD_UPDATE_MAN=1 cargo test -p redis-steward --lib man_pages`.
    #[test]
    fn man_pages_match_the_cli() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/man");
        let pages = man_pages();
        if std::env::var_os("REDIS_STEWARD_UPDATE_MAN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                std::fs::remove_file(entry.unwrap().path()).unwrap();
            }
            for (name, page) in &pages {
                std::fs::write(dir.join(name), page).unwrap();
            }
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        on_disk.sort();
        let names: Vec<String> = pages.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            on_disk, names,
            "packaging/man is stale: set REDIS_STEWARD_UPDATE_MAN=1 and run this test"
        );
        for (name, page) in &pages {
            assert!(
                std::fs::read(dir.join(name)).unwrap() == *page,
                "packaging/man/{name} is stale: set REDIS_STEWARD_UPDATE_MAN=1 and run this test"
            );
        }
    }
}
