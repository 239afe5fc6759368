//! `redis-steward run`: prepares the node (directories, lock, secrets, TLS, limits, redis.conf,
//! ACL, firewall), starts the supervisor and the API, and runs the agent's main loop (signals,
//! systemd notifications and watchdog) until it is told to stop.

use crate::config::{Config, FirewallBackend, TlsConfig};
use crate::node::firewall::Firewall;
use crate::node::layout::Layout;
use crate::node::limits;
use crate::node::lock::DataDirLock;
use crate::node::redis_conf::{self, RedisSettings, ADMIN_USER};
use crate::node::secrets::{self, ensure_dir, write_file_atomic};
use crate::node::supervisor::{self, Phase, RedisState, SupervisorConfig};
use crate::node::tls;
use crate::ops::api::{self, ApiState};
use crate::ops::metrics::Metrics;
use crate::ops::status::{ConfigSummary, StaticInfo};
use crate::ops::systemd::Notifier;
use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

/// Fail before starting anything if the client port is already taken, with a message that
/// names the key (otherwise redis would exit and the agent would restart it forever).
fn check_port_free(bind: &[IpAddr], port: u16) -> Result<()> {
    for ip in bind {
        let addr = SocketAddr::new(*ip, port);
        TcpListener::bind(addr).with_context(|| {
            format!("config key `redis.port`: {addr} is already in use or cannot be bound")
        })?;
    }
    Ok(())
}

fn default_maxmemory_mb(memory_mb: u64) -> u64 {
    // Leave a quarter of the node for the forks of AOF rewrites, buffers and the OS.
    (memory_mb * 3 / 4).max(16)
}

/// How `run` was asked to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Start with no data even where the data store has history (`run --start-empty`).
    pub start_empty: bool,
}

pub async fn run(cfg: Config, opts: RunOptions) -> Result<()> {
    let started = Instant::now();
    let layout = Layout::new(&cfg.data_dir, &cfg.state_dir);
    ensure_dir(&layout.data_dir, 0o750)?;
    // The agent's group may enter to read the API token (0640); every secret in it is 0600.
    ensure_dir(&layout.state_dir, 0o750)?;
    let _lock = DataDirLock::acquire(&layout.lock_file(), &layout.data_dir)?;

    check_port_free(&cfg.redis.bind, cfg.redis.port)?;
    let api_listener = api::bind(cfg.api.listen).await?;
    let public_listener = match cfg.api.public_listen {
        Some(addr) => Some(
            api::bind(addr)
                .await
                .context("config key `api.public_listen`")?,
        ),
        None => None,
    };

    let sentinel_listen: Vec<SocketAddr> = cfg
        .redis
        .bind
        .iter()
        .map(|ip| SocketAddr::new(*ip, cfg.sentinel.port))
        .collect();

    let secrets = secrets::load_or_create(&layout.secrets_file())?;
    let customer_password = cfg.redis.password.read()?;

    let memory = limits::detect_memory(cfg.redis.memory_limit_mb);
    let maxclients = limits::maxclients_for(memory.mb);
    let fd = limits::raise_nofile_for(maxclients).context("cannot read RLIMIT_NOFILE")?;
    if fd.sufficient() {
        info!(memory_mb = memory.mb, source = ?memory.source, maxclients, nofile = fd.soft, "limits set");
        for w in cfg.warnings() {
            warn!("{w}");
        }
    } else {
        warn!(
            "open-files limit is {} (hard {}), but maxclients {maxclients} needs {}: redis will accept only {} clients. \
             Raise LimitNOFILE (systemd) or `ulimit -n`, or run with CAP_SYS_RESOURCE",
            fd.soft, fd.hard, fd.wanted, fd.maxclients_possible
        );
    }

    let mut cert_addrs = cfg.redis.bind.clone();
    if cfg.redis.bind.iter().any(|a| a.is_unspecified()) {
        cert_addrs.extend(tls::local_addresses());
    }
    // The Sentinel port hands out the advertised address: clients verify it.
    if let Some(c) = &cfg.cluster {
        cert_addrs.push(c.advertise_address);
    }
    let tls_files = tls::prepare(&cfg.tls, &layout, &cfg.node_name, &cert_addrs)?;
    let sentinel_server = crate::cluster::sentinel::SentinelServer::bind(
        crate::cluster::sentinel::SentinelSettings {
            listen: sentinel_listen,
            tls: crate::cluster::sentinel::server_tls_config(&tls_files.cert, &tls_files.key)
                .context("TLS for the Sentinel port")?,
            password: customer_password.clone(),
            run_id: crate::cluster::discovery::run_id(&cfg.data_store_id, &cfg.node_name),
        },
    )
    .await
    .context("config key `sentinel.port`")?;

    // HA data stores share one key: it seals gossip and derives the replication password.
    let cluster_key = match &cfg.cluster {
        Some(c) => Some(
            crate::node::keyfile::load(&c.gossip_key_file)
                .context("config key `cluster.gossip_key_file`")?,
        ),
        None => None,
    };
    // An empty data directory: join a live primary, restore the newest backup, or start
    // empty — before redis starts (crate::backup::bootstrap).
    let mut gossip = match (&cfg.cluster, cluster_key) {
        (Some(c), Some(key)) => Some(start_gossip(&cfg, c, key).await?),
        _ => None,
    };
    // Opened once: the bootstrap reads the backups, the shipper later writes them.
    let backups = match cfg.backup.as_ref().filter(|b| b.key_file.is_some()) {
        Some(b) => Some((b, crate::backup::restore::open_backups(b)?)),
        None => None,
    };
    let data_replaced = {
        let mut notifier = Notifier::from_env();
        let source =
            backups.as_ref().map(
                |(_, (store, keys))| crate::backup::bootstrap::BackupSource {
                    store,
                    keys,
                    data_store: &cfg.data_store_id,
                },
            );
        let prepared = crate::backup::bootstrap::prepare(
            &layout.data_dir,
            &layout.state_dir,
            gossip.as_ref(),
            source,
            opts.start_empty,
            |what| notifier.busy(what),
        )
        .await;
        match prepared {
            // A decision is made only for an empty data directory.
            Ok(decision) => decision.is_some(),
            Err(e) => {
                if let Some(g) = &gossip {
                    g.initiate_shutdown();
                }
                return Err(e);
            }
        }
    };

    let maxmemory_mb = cfg
        .redis
        .maxmemory_mb
        .unwrap_or_else(|| default_maxmemory_mb(memory.mb));
    let conf = redis_conf::render_redis_conf(&RedisSettings {
        layout: &layout,
        bind: &cfg.redis.bind,
        port: cfg.redis.port,
        tls_cert: &tls_files.cert,
        tls_key: &tls_files.key,
        tls_ca: &tls_files.ca,
        maxclients,
        maxmemory_mb,
        maxmemory_policy: &cfg.redis.maxmemory_policy,
        highly_available: cluster_key.is_some(),
        keep_aof_history: cfg.backups_enabled(),
    });
    write_file_atomic(&layout.redis_conf(), conf.as_bytes(), 0o600)?;
    let acl = redis_conf::render_acl(
        &customer_password,
        &secrets.admin_password,
        &secrets.replication_password,
        cfg.redis.scripting,
    );
    write_file_atomic(&layout.acl_file(), acl.as_bytes(), 0o600)?;

    let firewall = match cfg.access.firewall {
        FirewallBackend::Nftables if !cfg.access.is_open() => {
            let fw = Firewall::new(&cfg.data_store_id, &cfg.node_name);
            // Peers must always reach redis for replication, whatever the customer allows.
            let peers: Vec<ipnet::IpNet> = cfg
                .cluster
                .iter()
                .flat_map(|c| c.nodes.iter().map(|n| ipnet::IpNet::from(n.address)))
                .collect();
            fw.apply(
                &[cfg.redis.port, cfg.sentinel.port],
                &cfg.access.allowed_cidrs,
                &peers,
            )?;
            Some(fw)
        }
        FirewallBackend::Nftables => {
            // Open access: make sure no table from an earlier, restricted run is left behind.
            let fw = Firewall::new(&cfg.data_store_id, &cfg.node_name);
            if let Err(e) = fw.remove() {
                tracing::debug!("no old firewall table removed: {e:#}");
            }
            None
        }
        FirewallBackend::Off => None,
    };

    let metrics = Arc::new(Metrics::new());
    metrics
        .info
        .get_or_create(&vec![
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("data_store".into(), cfg.data_store_id.clone()),
            ("node".into(), cfg.node_name.clone()),
            ("plan".into(), cfg.plan.to_string()),
        ])
        .set(1);
    metrics.nofile_limit.set(fd.soft as i64);

    let sup = supervisor::spawn(SupervisorConfig {
        redis_server: cfg.redis.server_path.clone(),
        redis_conf: layout.redis_conf(),
        data_dir: layout.data_dir.clone(),
        socket: layout.redis_socket(),
        admin_user: ADMIN_USER.into(),
        admin_password: secrets.admin_password.clone(),
    });

    let hook = cfg
        .hooks
        .on_promote
        .clone()
        .map(|argv| crate::cluster::hook::spawn(argv, cfg.hooks.timeout));
    let (ha, ha_commands, gossip_counters) = match &cfg.cluster {
        Some(c) => {
            let (ha, commands, counters) = start_ha(
                &cfg,
                c,
                Joined {
                    gossip: gossip.take().expect("started with the cluster"),
                    key: cluster_key.expect("loaded with the cluster"),
                    data_replaced,
                },
                &layout,
                &secrets,
                &sup,
                hook.clone(),
            )
            .await?;
            (Some(ha), Some(commands), Some(counters))
        }
        None => (None, None, None),
    };

    let replacement = match (&cfg.hooks.on_node_lost, &ha) {
        (Some(argv), Some(ha)) => Some(crate::cluster::replacement::spawn(
            crate::cluster::replacement::Settings {
                argv: argv.clone(),
                timeout: cfg.hooks.timeout,
                timing: crate::cluster::replacement::Timing {
                    after: cfg.hooks.node_lost_after,
                    repeat: cfg.hooks.node_lost_repeat,
                },
                data_store: cfg.data_store_id.clone(),
                plan: cfg.plan.to_string(),
            },
            ha.state.clone(),
        )),
        _ => None,
    };

    let backup =
        backups.map(|(b, opened)| start_backup(&cfg, b, opened, &layout, &secrets, ha.as_ref()));

    let api_state = Arc::new(ApiState {
        static_info: StaticInfo {
            data_store_id: cfg.data_store_id.clone(),
            node: cfg.node_name.clone(),
            plan: cfg.plan.to_string(),
            memory,
            maxclients_wanted: maxclients,
            fd,
            config: summary(&cfg),
            config_warnings: cfg.warnings(),
        },
        redis: sup.state.clone(),
        metrics: metrics.clone(),
        started,
        ha: ha.as_ref().map(|h| h.state.clone()),
        ha_commands,
        gossip_counters,
        hook_counters: hook.as_ref().map(|h| h.counters.clone()),
        backup: backup.as_ref().map(|(h, tx)| (h.state.clone(), tx.clone())),
        token: api::ensure_token(&layout.state_dir).context("the API token")?,
        history: cfg
            .cluster
            .is_some()
            .then(|| layout.state_dir.join(crate::cluster::history::FILE)),
    });
    let (view_tx, view_rx) = watch::channel(crate::cluster::sentinel::SentinelView::default());
    let view_task = tokio::spawn(feed_sentinel_view(
        cfg.clone(),
        sup.state.clone(),
        ha.as_ref().map(|h| h.state.clone()),
        view_tx,
    ));
    let (sentinel_stop_tx, sentinel_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sentinel_task = tokio::spawn(async move {
        let stop = async {
            let _ = sentinel_stop_rx.await;
        };
        if let Err(e) = sentinel_server.run(view_rx, stop).await {
            warn!("Sentinel port stopped: {e:#}");
        }
    });
    let (api_stop_tx, api_stop_rx) = tokio::sync::watch::channel(false);
    let serve = |listener, router, mut stop: tokio::sync::watch::Receiver<bool>| {
        tokio::spawn(async move {
            let r = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                warn!("API server stopped: {e}");
            }
        })
    };
    let public_task = public_listener.map(|l| {
        serve(
            l,
            api::public_router(api_state.clone()),
            api_stop_rx.clone(),
        )
    });
    let api_task = serve(api_listener, api::router(api_state), api_stop_rx);
    info!(
        node = %cfg.node_name, data_store = %cfg.data_store_id, plan = %cfg.plan,
        port = cfg.redis.port, api = %cfg.api.listen, "agent started"
    );

    main_loop(sup.state.clone(), ha.as_ref().map(|h| h.state.clone())).await?;

    info!("shutting down");
    Notifier::from_env().stopping();
    if let Some((backup, _)) = backup {
        backup.shutdown().await;
    }
    if let Some(ha) = ha {
        ha.shutdown().await;
    }
    sup.shutdown().await;
    if let Some(fw) = firewall {
        if let Err(e) = fw.remove() {
            warn!("{e:#}");
        }
    }
    let _ = api_stop_tx.send(true);
    let _ = api_task.await;
    if let Some(t) = public_task {
        let _ = t.await;
    }
    let _ = sentinel_stop_tx.send(());
    let _ = sentinel_task.await;
    view_task.abort();
    if let Some(r) = replacement {
        r.abort();
    }
    info!("agent stopped");
    Ok(())
}

/// Start the backup shipper; it uploads while this node is the writable primary.
fn start_backup(
    cfg: &Config,
    b: &crate::config::BackupConfig,
    (store, keys): (crate::store::Store, crate::backup::keys::KeyRing),
    layout: &Layout,
    secrets: &secrets::AgentSecrets,
    ha: Option<&crate::cluster::ha::HaHandle>,
) -> (
    crate::backup::shipper::BackupHandle,
    tokio::sync::mpsc::Sender<crate::backup::shipper::BackupCommand>,
) {
    // Who may upload: the writable primary of the current epoch (one node: always).
    let (role_tx, role_rx) = watch::channel(if ha.is_some() { None } else { Some(1) });
    if let Some(ha) = ha {
        let mut st = ha.state.clone();
        tokio::spawn(async move {
            loop {
                let role = {
                    let s = st.borrow_and_update();
                    (s.role == "primary" && s.writable).then_some(s.epoch)
                };
                role_tx.send_if_modified(|r| std::mem::replace(r, role) != role);
                if st.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    crate::backup::shipper::spawn(
        crate::backup::shipper::BackupSettings {
            store,
            keys: Arc::new(keys),
            data_store: cfg.data_store_id.clone(),
            node: cfg.node_name.clone(),
            aof_dir: layout.aof_dir(),
            socket: layout.redis_socket(),
            admin_user: ADMIN_USER.into(),
            admin_password: secrets.admin_password.clone(),
            wal_interval: b.wal_interval,
            snapshot_time: b.snapshot_time,
            spool_limit_bytes: b.spool_limit_bytes,
            zstd_level: b.zstd_level,
            history: crate::backup::retention::history_for(cfg.plan),
        },
        role_rx,
    )
}

/// Keep the Sentinel port's view in step with the election (HA) or redis's health (one
/// node). Stops when its sources do.
async fn feed_sentinel_view(
    cfg: Config,
    mut redis: watch::Receiver<RedisState>,
    ha: Option<watch::Receiver<crate::cluster::ha::HaStatus>>,
    view: watch::Sender<crate::cluster::sentinel::SentinelView>,
) {
    use crate::cluster::discovery::{self, NodeAddrs};
    match (ha, &cfg.cluster) {
        (Some(mut ha), Some(c)) => {
            let nodes: Vec<NodeAddrs> = c
                .nodes
                .iter()
                .map(|n| NodeAddrs {
                    name: n.name.clone(),
                    ip: n.address,
                    redis_port: n.redis_port,
                    sentinel_port: n.sentinel_port,
                })
                .collect();
            loop {
                let status = ha.borrow_and_update().clone();
                view.send_if_modified(|v| {
                    let next =
                        discovery::from_ha(&cfg.data_store_id, &cfg.node_name, &nodes, &status, v);
                    let changed = *v != next;
                    *v = next;
                    changed
                });
                if ha.changed().await.is_err() {
                    return;
                }
            }
        }
        _ => {
            let ip = announce_ip(&cfg.redis.bind);
            loop {
                let healthy = redis.borrow_and_update().healthy;
                let next = discovery::single(&cfg.data_store_id, ip, cfg.redis.port, healthy);
                view.send_if_modified(|v| {
                    let changed = *v != next;
                    *v = next;
                    changed
                });
                if redis.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The address a one-node data store announces: its bind address, or when it binds every
/// address, the first non-loopback one it has.
fn announce_ip(bind: &[IpAddr]) -> IpAddr {
    bind.iter()
        .find(|a| !a.is_unspecified())
        .copied()
        .or_else(|| {
            tls::local_addresses()
                .into_iter()
                .find(|a| !a.is_loopback() && a.is_ipv4())
        })
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Start gossip and the HA loop for a 2- or 3-node data store.
/// Join the data store's gossip (before redis starts: an empty node first looks for a
/// primary to join).
async fn start_gossip(
    cfg: &Config,
    c: &crate::config::ClusterConfig,
    key: [u8; 32],
) -> Result<crate::cluster::gossip::cluster::Gossip> {
    use crate::cluster::gossip::cluster::{Gossip, GossipSettings};
    let gossip_addr = SocketAddr::new(c.advertise_address, c.gossip_port);
    Gossip::start(
        GossipSettings {
            data_store_id: cfg.data_store_id.clone(),
            node_name: cfg.node_name.clone(),
            listen: gossip_addr,
            advertise: gossip_addr,
            seeds: c
                .nodes
                .iter()
                .filter(|n| n.name != cfg.node_name)
                .map(|n| SocketAddr::new(n.address, n.gossip_port))
                .collect(),
            interval: Duration::from_millis(c.timing.gossip_interval_ms),
            key,
        },
        vec![
            (
                crate::cluster::ha::REDIS_ADDR_KEY.to_string(),
                SocketAddr::new(c.advertise_address, cfg.redis.port).to_string(),
            ),
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ],
    )
    .await
}

/// The data store's gossip, joined, and the key it is sealed with.
struct Joined {
    gossip: crate::cluster::gossip::cluster::Gossip,
    key: [u8; 32],
    /// The data directory was empty at this start.
    data_replaced: bool,
}

async fn start_ha(
    cfg: &Config,
    c: &crate::config::ClusterConfig,
    joined: Joined,
    layout: &Layout,
    secrets: &secrets::AgentSecrets,
    sup: &supervisor::SupervisorHandle,
    hook: Option<crate::cluster::hook::HookHandle>,
) -> Result<(
    crate::cluster::ha::HaHandle,
    tokio::sync::mpsc::Sender<crate::cluster::ha::HaCommand>,
    Arc<crate::cluster::gossip::transport::GossipCounters>,
)> {
    use crate::cluster::election::{self, NodeId};
    let gossip_addr = SocketAddr::new(c.advertise_address, c.gossip_port);
    let counters = joined.gossip.counters();
    let lease_store = match (&cfg.backup, c.nodes.len()) {
        (Some(b), 2) => Some(
            crate::store::Store::open(&b.url, &b.options)
                .context("config key `backup.url`")?
                // A lease call that cannot answer within the TTL is as good as unreachable.
                .with_timeout(Duration::from_millis(c.timing.lease_ttl_ms / 2)),
        ),
        _ => None,
    };
    let (ha, commands) = crate::cluster::ha::spawn(
        crate::cluster::ha::HaConfig {
            election: election::Config {
                me: NodeId::new(cfg.node_name.clone()),
                voters: c
                    .nodes
                    .iter()
                    .map(|n| NodeId::new(n.name.clone()))
                    .collect(),
                timing: c.timing,
            },
            nodes: c.nodes.clone(),
            durable_path: layout.state_dir.join("election.json"),
            socket: layout.redis_socket(),
            admin_user: ADMIN_USER.into(),
            admin_password: secrets.admin_password.clone(),
            lease_store,
            cluster_key: joined.key,
            data_store_id: cfg.data_store_id.clone(),
            hook,
            data_replaced: joined.data_replaced,
            history_path: layout.state_dir.join(crate::cluster::history::FILE),
        },
        joined.gossip,
        sup.state.clone(),
    )?;
    info!(gossip = %gossip_addr, nodes = c.nodes.len(), "gossip and election started");
    Ok((ha, commands, counters))
}

fn summary(cfg: &Config) -> ConfigSummary {
    ConfigSummary {
        client_port: cfg.redis.port,
        sentinel_port: cfg.sentinel.port,
        bind: cfg.redis.bind.iter().map(|a| a.to_string()).collect(),
        tls: match cfg.tls {
            TlsConfig::Generate { .. } => "generated certificates".into(),
            TlsConfig::Files { .. } => "operator certificates".into(),
        },
        scripting: cfg.redis.scripting,
        allowed_cidrs: cfg
            .access
            .allowed_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect(),
        firewall: match cfg.access.firewall {
            FirewallBackend::Nftables if cfg.access.is_open() => "nftables (open, no rules)".into(),
            FirewallBackend::Nftables => "nftables".into(),
            FirewallBackend::Off => "off".into(),
        },
        data_dir: cfg.data_dir.display().to_string(),
        api: cfg.api.listen.to_string(),
    }
}

/// A one-line STATUS= for systemd.
fn systemd_status(s: &RedisState, ha: Option<&crate::cluster::ha::HaStatus>) -> String {
    match (s.phase, s.healthy) {
        (Phase::Running, true) => format!(
            "{}, redis pid {} serving {} clients",
            match ha {
                Some(h) if !h.role.is_empty() => format!("{} (epoch {})", h.role, h.epoch),
                Some(_) => "starting".to_string(),
                None => "primary".to_string(),
            },
            s.pid.unwrap_or(0),
            s.info.get_u64("connected_clients").unwrap_or(0)
        ),
        (Phase::Restarting, _) => format!(
            "redis down ({}), restarting",
            s.last_exit.as_deref().unwrap_or("?")
        ),
        (Phase::Stopping, _) | (Phase::Stopped, _) => "stopping".into(),
        _ => "starting redis".into(),
    }
}

/// Wait for SIGTERM/SIGINT while keeping systemd informed.
async fn main_loop(
    mut state: tokio::sync::watch::Receiver<RedisState>,
    ha: Option<tokio::sync::watch::Receiver<crate::cluster::ha::HaStatus>>,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut notifier = Notifier::from_env();
    let wd_every = notifier.watchdog_interval();
    let mut watchdog = tokio::time::interval(wd_every.unwrap_or(Duration::from_secs(3600)));
    let mut ready_sent = false;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT received"); return Ok(()); }
            changed = state.changed() => {
                if changed.is_err() { return Ok(()); }
                let s = state.borrow_and_update().clone();
                if s.healthy && !ready_sent {
                    notifier.ready();
                    ready_sent = true;
                }
                let ha_now = ha.as_ref().map(|h| h.borrow().clone());
                notifier.status(&systemd_status(&s, ha_now.as_ref()));
            }
            _ = watchdog.tick(), if wd_every.is_some() => {
                // Ping only while the supervisor loop is alive: a wedged agent gets restarted.
                let alive = state.borrow().loop_alive_at.elapsed();
                if alive < wd_every.unwrap_or_default() * 2 {
                    notifier.watchdog();
                } else {
                    warn!(stalled_ms = alive.as_millis() as u64, "supervisor loop stalled; withholding watchdog ping");
                }
            }
        }
    }
}
