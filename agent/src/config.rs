//! The agent's configuration: one TOML file, parsed strictly and validated into a typed
//! [`Config`]. Every error names the key it is about. Nothing here starts anything.
//!
//! The raw (`Raw*`) structs mirror the file with `deny_unknown_fields`; `build_and_validate`
//! turns them into the typed config, checking each value and the relations between them.

use crate::plan::Plan;
use ipnet::IpNet;
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/redis-steward/config.toml";
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7480";

/// A configuration problem, naming the key (dotted path) it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted key path such as `redis.port`, or `<file>` for problems with the file itself.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.starts_with('<') {
            write!(f, "{}", self.message)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.message)
        }
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_store_id: Option<String>,
    node_name: Option<String>,
    plan: Option<String>,
    data_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    api: RawApi,
    cluster: Option<RawCluster>,
    backup: Option<RawBackup>,
    #[serde(default)]
    sentinel: RawSentinel,
    #[serde(default)]
    hooks: RawHooks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentinel {
    port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    on_promote: Option<Vec<String>>,
    timeout_secs: Option<i64>,
    on_node_lost: Option<Vec<String>>,
    node_lost_after_secs: Option<i64>,
    node_lost_repeat_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    advertise_address: Option<String>,
    gossip_port: Option<i64>,
    gossip_key_file: Option<PathBuf>,
    #[serde(default)]
    nodes: Vec<RawClusterNode>,
    timing: Option<crate::cluster::election::Timing>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterNode {
    name: String,
    address: String,
    redis_port: Option<i64>,
    gossip_port: Option<i64>,
    sentinel_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    url: Option<String>,
    key_file: Option<PathBuf>,
    previous_key_files: Option<Vec<PathBuf>>,
    snapshot_time: Option<String>,
    wal_interval_ms: Option<i64>,
    spool_limit_mb: Option<i64>,
    zstd_level: Option<i64>,
    #[serde(default)]
    options: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    server_path: Option<PathBuf>,
    bind: Option<Vec<String>>,
    port: Option<i64>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    scripting: Option<bool>,
    memory_limit_mb: Option<i64>,
    maxmemory_mb: Option<i64>,
    maxmemory_policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    mode: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    ca_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    allowed_cidrs: Option<Vec<String>>,
    firewall: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    public_listen: Option<String>,
}

/// The validated configuration of one agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_store_id: String,
    pub node_name: String,
    pub plan: Plan,
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
    pub redis: RedisConfig,
    pub tls: TlsConfig,
    pub access: AccessConfig,
    pub api: ApiConfig,
    /// The other nodes and how to reach them; `None` for one-node plans.
    pub cluster: Option<ClusterConfig>,
    /// The bucket for backups (and, for two-node data stores, the failover lease).
    pub backup: Option<BackupConfig>,
    /// The Redis Sentinel protocol port clients discover the primary through (TLS).
    pub sentinel: SentinelConfig,
    pub hooks: HooksConfig,
}

impl Config {
    /// What is valid but leaves the data store less protected than its operator may think;
    /// `check-config` prints these and `status` carries them.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        match &self.backup {
            Some(b) if b.key_file.is_none() => w.push(format!(
                "backups are off: backup.url is set ({}) but backup.key_file is not, so the store \
                 holds no backups{}; create a key with `redis-steward keygen FILE` and set \
                 backup.key_file",
                b.url,
                if self.cluster.as_ref().is_some_and(|c| c.nodes.len() == 2) {
                    ", only the failover lease"
                } else {
                    ""
                }
            )),
            // The Hobbyist plan has no backup history: no backups is its promise.
            None if self.plan.backup_history_days().is_some() => w.push(format!(
                "backups are off: no backup.url, though the {} plan keeps backups; a lost node \
                 cannot be rebuilt from one",
                self.plan
            )),
            None => {}
            Some(_) => {}
        }
        w
    }

    /// Backups are taken (a store and a key).
    pub fn backups_enabled(&self) -> bool {
        self.backup.as_ref().is_some_and(|b| b.key_file.is_some())
    }
}

pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// Served on every `redis.bind` address.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksConfig {
    /// Run (argv, no shell) by a node each time it becomes primary, e.g. to update DNS.
    pub on_promote: Option<Vec<String>>,
    pub timeout: std::time::Duration,
    /// Run by the primary when another node has been unreachable for `node_lost_after`, and
    /// again every `node_lost_repeat` until a node takes the slot (crate::cluster::replacement).
    pub on_node_lost: Option<Vec<String>>,
    pub node_lost_after: std::time::Duration,
    pub node_lost_repeat: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's address as the others reach it (redis replication and gossip).
    pub advertise_address: IpAddr,
    pub gossip_port: u16,
    pub gossip_key_file: PathBuf,
    /// Every node slot of the data store, this one included, sorted by name.
    pub nodes: Vec<ClusterNode>,
    pub timing: crate::cluster::election::Timing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub address: IpAddr,
    pub redis_port: u16,
    pub gossip_port: u16,
    pub sentinel_port: u16,
}

#[derive(Clone)]
pub struct BackupConfig {
    pub url: String,
    /// object_store settings (endpoint, region, credentials …); never printed.
    pub options: std::collections::BTreeMap<String, String>,
    /// The key new backup objects are sealed with; `None`: no backups (the bucket then only
    /// holds the two-node failover lease), which status reports as a warning.
    pub key_file: Option<PathBuf>,
    /// Older keys, still needed to read objects sealed before a rotation.
    pub previous_key_files: Vec<PathBuf>,
    /// The daily snapshot's time of day, UTC: (hour, minute).
    pub snapshot_time: (u8, u8),
    pub wal_interval: std::time::Duration,
    /// Bytes of WAL not yet uploaded above which the agent raises the alarm (nothing is
    /// dropped: redis keeps the files until they are uploaded).
    pub spool_limit_bytes: u64,
    pub zstd_level: i32,
}

impl fmt::Debug for BackupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.options.keys().collect();
        write!(
            f,
            "BackupConfig {{ url: {:?}, option keys: {keys:?} }}",
            self.url
        )
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub server_path: PathBuf,
    pub bind: Vec<IpAddr>,
    pub port: u16,
    pub password: Secret,
    pub scripting: bool,
    pub memory_limit_mb: Option<u64>,
    pub maxmemory_mb: Option<u64>,
    pub maxmemory_policy: String,
}

/// Where the customer password comes from. The value itself is read at start-up, so a
/// password file can be rotated by restarting the agent.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Inline(<redacted>)"),
            Secret::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

impl Secret {
    /// The secret's value; a file's content is trimmed of surrounding white space.
    pub fn read(&self) -> Result<String, ConfigError> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::File(p) => {
                let s = std::fs::read_to_string(p).map_err(|e| {
                    err(
                        "redis.password_file",
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                let s = s.trim().to_string();
                check_password("redis.password_file", &s)?;
                Ok(s)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfig {
    /// Make a CA and a node certificate on first start (development and tests). When
    /// `ca_file`/`ca_key_file` are given, that CA is used (and created if missing), so several
    /// nodes can share one.
    Generate {
        ca_file: Option<PathBuf>,
        ca_key_file: Option<PathBuf>,
    },
    /// Operator-provided PEM files.
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
        ca_file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallBackend {
    Nftables,
    /// No enforcement at the node; only allowed while `allowed_cidrs` lets everyone in.
    Off,
}

#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub allowed_cidrs: Vec<IpNet>,
    pub firewall: FirewallBackend,
}

impl AccessConfig {
    /// True when the allow list admits every IPv4 and IPv6 address.
    pub fn is_open(&self) -> bool {
        let all4 = self
            .allowed_cidrs
            .iter()
            .any(|n| n.prefix_len() == 0 && n.addr().is_ipv4());
        let all6 = self
            .allowed_cidrs
            .iter()
            .any(|n| n.prefix_len() == 0 && n.addr().is_ipv6());
        all4 && all6
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Every endpoint, the mutating ones (`POST /switchover`, `POST /backup`) included: on
    /// loopback only, since they have no authentication.
    pub listen: SocketAddr,
    /// Read-only endpoints only (status, metrics, the health checks), for a load balancer or
    /// a Prometheus server on another machine.
    pub public_listen: Option<SocketAddr>,
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            "<file>",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    parse(&text)
}

/// Parse and validate config text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        // toml's message names the unknown or mistyped key and its line; keep it whole.
        err(
            "<file>",
            format!("invalid config: {}", e.to_string().trim_end()),
        )
    })?;
    raw.build_and_validate()
}

fn required<T>(v: Option<T>, key: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| err(key, "is required"))
}

/// Names used in object paths, gossip and nftables: lower-case letters, digits and '-'.
fn check_name(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!("{v:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"),
        ))
    }
}

fn check_password(key: &str, p: &str) -> Result<(), ConfigError> {
    if p.len() < 8 {
        return Err(err(key, "password must be at least 8 characters"));
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            key,
            "password must not contain white space or control characters",
        ));
    }
    Ok(())
}

fn positive_mb(key: &str, v: Option<i64>) -> Result<Option<u64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(n) if n > 0 => Ok(Some(n as u64)),
        Some(n) => Err(err(
            key,
            format!("must be a positive number of megabytes, got {n}"),
        )),
    }
}

fn check_file(key: &str, p: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(err(key, format!("{} is not a regular file", p.display()))),
        Err(e) => Err(err(key, format!("cannot use {}: {e}", p.display()))),
    }
}

fn absolute(key: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(err(
            key,
            format!("{} must be an absolute path", p.display()),
        ))
    }
}

const MAXMEMORY_POLICIES: &[&str] = &[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

impl RawConfig {
    fn build_and_validate(self) -> Result<Config, ConfigError> {
        let data_store_id = required(self.data_store_id, "data_store_id")?;
        check_name("data_store_id", &data_store_id)?;
        let node_name = required(self.node_name, "node_name")?;
        check_name("node_name", &node_name)?;
        let plan: Plan = required(self.plan, "plan")?
            .parse()
            .map_err(|m: String| err("plan", m))?;
        let data_dir = absolute(
            "data_dir",
            self.data_dir
                .unwrap_or_else(|| "/var/lib/redis-steward/data".into()),
        )?;
        let state_dir = absolute(
            "state_dir",
            self.state_dir
                .unwrap_or_else(|| "/var/lib/redis-steward/state".into()),
        )?;
        if data_dir == state_dir {
            return Err(err("state_dir", "must differ from data_dir"));
        }
        let redis = self.redis.build()?;
        let tls = self.tls.build()?;
        let access = self.access.build()?;
        let api = ApiConfig {
            listen: self
                .api
                .listen
                .as_deref()
                .unwrap_or(DEFAULT_API_LISTEN)
                .parse()
                .map_err(|e| err("api.listen", format!("expected IP:PORT: {e}")))?,
            public_listen: self
                .api
                .public_listen
                .as_deref()
                .map(|a| a.parse())
                .transpose()
                .map_err(|e| err("api.public_listen", format!("expected IP:PORT: {e}")))?,
        };
        if !api.listen.ip().is_loopback() {
            return Err(err(
                "api.listen",
                format!(
                    "{} is not a loopback address: it would open POST /switchover and POST \
                     /backup, which have no authentication, to the network; keep it on \
                     127.0.0.1 and put what other machines may read (status, metrics, health \
                     checks) on api.public_listen",
                    api.listen
                ),
            ));
        }
        if api.listen.port() == redis.port {
            return Err(err(
                "api.listen",
                "must not use the same port as redis.port",
            ));
        }
        if let Some(public) = api.public_listen {
            if public.port() == redis.port || public.port() == api.listen.port() {
                return Err(err(
                    "api.public_listen",
                    "must not use the port of redis.port or api.listen",
                ));
            }
        }
        let backup = self.backup.map(RawBackup::build).transpose()?;
        let sentinel = SentinelConfig {
            port: port(
                "sentinel.port",
                self.sentinel.port.unwrap_or(DEFAULT_SENTINEL_PORT as i64),
            )?,
        };
        let public_port = api.public_listen.map(|a| a.port());
        if sentinel.port == redis.port
            || sentinel.port == api.listen.port()
            || Some(sentinel.port) == public_port
        {
            return Err(err(
                "sentinel.port",
                "must differ from redis.port and the port of api.listen",
            ));
        }
        let hooks = self.hooks.build()?;
        let cluster = match (plan.is_highly_available(), self.cluster) {
            (true, None) => {
                return Err(err(
                    "cluster",
                    format!(
                        "the {plan} plan has {} nodes: a [cluster] section must list them",
                        plan.redis_nodes()
                    ),
                ))
            }
            (false, Some(_)) => {
                return Err(err(
                    "cluster",
                    format!("the {plan} plan has one node: remove the [cluster] section"),
                ))
            }
            (false, None) => None,
            (true, Some(c)) => Some(c.build(plan, &node_name, redis.port, sentinel.port)?),
        };
        if plan.redis_nodes() == 2 && backup.is_none() {
            return Err(err(
                "backup.url",
                "is required for the business plan: the failover lease lives in the backup bucket",
            ));
        }
        Ok(Config {
            data_store_id,
            node_name,
            plan,
            data_dir,
            state_dir,
            redis,
            tls,
            access,
            api,
            cluster,
            backup,
            sentinel,
            hooks,
        })
    }
}

impl RawHooks {
    fn build(self) -> Result<HooksConfig, ConfigError> {
        for (key, argv) in [
            ("hooks.on_promote", &self.on_promote),
            ("hooks.on_node_lost", &self.on_node_lost),
        ] {
            if let Some(argv) = argv {
                match argv.first() {
                    None => {
                        return Err(err(key, "is an empty command; leave it out to run no hook"))
                    }
                    Some(prog) => {
                        absolute(key, PathBuf::from(prog))?;
                    }
                }
            }
        }
        let secs = |key: &'static str, v: Option<i64>, default: i64, min: i64, max: i64| match v
            .unwrap_or(default)
        {
            t if (min..=max).contains(&t) => Ok(std::time::Duration::from_secs(t as u64)),
            t => Err(err(
                key,
                format!("{t} is not between {min} and {max} seconds"),
            )),
        };
        Ok(HooksConfig {
            on_promote: self.on_promote,
            timeout: secs("hooks.timeout_secs", self.timeout_secs, 30, 1, 3600)?,
            on_node_lost: self.on_node_lost,
            node_lost_after: secs(
                "hooks.node_lost_after_secs",
                self.node_lost_after_secs,
                300,
                1,
                86_400,
            )?,
            node_lost_repeat: secs(
                "hooks.node_lost_repeat_secs",
                self.node_lost_repeat_secs,
                900,
                1,
                86_400,
            )?,
        })
    }
}

/// "HH:MM" (24 h) to (hour, minute).
fn parse_time_of_day(s: &str) -> Option<(u8, u8)> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some((h, m))
}

fn port(key: &str, v: i64) -> Result<u16, ConfigError> {
    match v {
        1..=65535 => Ok(v as u16),
        _ => Err(err(key, format!("{v} is not a port (1-65535)"))),
    }
}

fn ip(key: &str, v: &str) -> Result<IpAddr, ConfigError> {
    let a: IpAddr = v
        .parse()
        .map_err(|_| err(key, format!("{v:?} is not an IP address")))?;
    if a.is_unspecified() {
        return Err(err(key, format!("{v} is not an address others can reach")));
    }
    Ok(a)
}

impl RawCluster {
    fn build(
        self,
        plan: Plan,
        me: &str,
        redis_port: u16,
        sentinel_port: u16,
    ) -> Result<ClusterConfig, ConfigError> {
        let advertise_address = ip(
            "cluster.advertise_address",
            &required(self.advertise_address, "cluster.advertise_address")?,
        )?;
        let gossip_port = port("cluster.gossip_port", self.gossip_port.unwrap_or(7946))?;
        let gossip_key_file = required(self.gossip_key_file, "cluster.gossip_key_file")?;
        check_file("cluster.gossip_key_file", &gossip_key_file)?;
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for n in self.nodes {
            check_name("cluster.nodes.name", &n.name)?;
            nodes.push(ClusterNode {
                address: ip("cluster.nodes.address", &n.address)?,
                redis_port: port(
                    "cluster.nodes.redis_port",
                    n.redis_port.unwrap_or(redis_port as i64),
                )?,
                gossip_port: port(
                    "cluster.nodes.gossip_port",
                    n.gossip_port.unwrap_or(gossip_port as i64),
                )?,
                sentinel_port: port(
                    "cluster.nodes.sentinel_port",
                    n.sentinel_port.unwrap_or(sentinel_port as i64),
                )?,
                name: n.name,
            });
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = nodes.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(err(
                "cluster.nodes",
                format!("node {:?} is listed twice", w[0].name),
            ));
        }
        if nodes.len() != plan.redis_nodes() {
            return Err(err(
                "cluster.nodes",
                format!(
                    "the {plan} plan has {} nodes, but {} are listed",
                    plan.redis_nodes(),
                    nodes.len()
                ),
            ));
        }
        let mine = nodes
            .iter()
            .find(|n| n.name == me)
            .ok_or_else(|| err("cluster.nodes", format!("this node ({me}) is not listed")))?;
        if mine.address != advertise_address
            || mine.redis_port != redis_port
            || mine.gossip_port != gossip_port
            || mine.sentinel_port != sentinel_port
        {
            return Err(err(
                "cluster.nodes",
                format!("the entry for this node ({me}) must match cluster.advertise_address, redis.port, cluster.gossip_port and sentinel.port"),
            ));
        }
        let timing = self.timing.unwrap_or_default();
        timing
            .validate()
            .map_err(|e| err("cluster.timing", e.to_string()))?;
        Ok(ClusterConfig {
            advertise_address,
            gossip_port,
            gossip_key_file,
            nodes,
            timing,
        })
    }
}

impl RawBackup {
    fn build(self) -> Result<BackupConfig, ConfigError> {
        let url = required(self.url, "backup.url")?;
        if !["file://", "s3://", "gs://", "az://", "azure://", "abfs://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(err(
                "backup.url",
                format!("{url:?} must start with file://, s3://, gs:// or az://"),
            ));
        }
        if let Some(k) = &self.key_file {
            check_file("backup.key_file", k)?;
        }
        for k in self.previous_key_files.iter().flatten() {
            check_file("backup.previous_key_files", k)?;
        }
        let snapshot_time = parse_time_of_day(self.snapshot_time.as_deref().unwrap_or("03:00"))
            .ok_or_else(|| {
                err(
                    "backup.snapshot_time",
                    "must be a UTC time of day like \"03:30\"",
                )
            })?;
        let wal_interval_ms = match self.wal_interval_ms.unwrap_or(1000) {
            v @ 100..=60_000 => v as u64,
            v => {
                return Err(err(
                    "backup.wal_interval_ms",
                    format!("{v} is not between 100 and 60000"),
                ))
            }
        };
        let spool_limit_mb =
            positive_mb("backup.spool_limit_mb", self.spool_limit_mb)?.unwrap_or(1024);
        let zstd_level = match self.zstd_level.unwrap_or(1) {
            v @ 1..=19 => v as i32,
            v => {
                return Err(err(
                    "backup.zstd_level",
                    format!("{v} is not between 1 and 19"),
                ))
            }
        };
        Ok(BackupConfig {
            url,
            options: self.options,
            key_file: self.key_file,
            previous_key_files: self.previous_key_files.unwrap_or_default(),
            snapshot_time,
            wal_interval: std::time::Duration::from_millis(wal_interval_ms),
            spool_limit_bytes: spool_limit_mb << 20,
            zstd_level,
        })
    }
}

impl RawRedis {
    fn build(self) -> Result<RedisConfig, ConfigError> {
        let server_path = self
            .server_path
            .unwrap_or_else(|| "/usr/bin/redis-server".into());
        check_file("redis.server_path", &server_path)?;
        let bind = self
            .bind
            .unwrap_or_else(|| vec!["0.0.0.0".into()])
            .iter()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| err("redis.bind", format!("{s:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if bind.is_empty() {
            return Err(err("redis.bind", "needs at least one address"));
        }
        let port = match self.port.unwrap_or(6380) {
            p @ 1..=65535 => p as u16,
            p => {
                return Err(err(
                    "redis.port",
                    format!("{p} is not a TCP port (1-65535)"),
                ))
            }
        };
        let password = match (self.password, self.password_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "redis.password",
                    "set either password or password_file, not both",
                ))
            }
            (Some(p), None) => {
                check_password("redis.password", &p)?;
                Secret::Inline(p)
            }
            (None, Some(f)) => {
                check_file("redis.password_file", &f)?;
                Secret::File(f)
            }
            (None, None) => return Err(err(
                "redis.password",
                "is required (or redis.password_file): the customer user always needs a password",
            )),
        };
        let maxmemory_policy = self.maxmemory_policy.unwrap_or_else(|| "noeviction".into());
        if !MAXMEMORY_POLICIES.contains(&maxmemory_policy.as_str()) {
            return Err(err(
                "redis.maxmemory_policy",
                format!(
                    "{maxmemory_policy:?} is not one of {}",
                    MAXMEMORY_POLICIES.join(", ")
                ),
            ));
        }
        Ok(RedisConfig {
            server_path,
            bind,
            port,
            password,
            scripting: self.scripting.unwrap_or(true),
            memory_limit_mb: positive_mb("redis.memory_limit_mb", self.memory_limit_mb)?,
            maxmemory_mb: positive_mb("redis.maxmemory_mb", self.maxmemory_mb)?,
            maxmemory_policy,
        })
    }
}

impl RawTls {
    fn build(self) -> Result<TlsConfig, ConfigError> {
        match self.mode.as_deref().unwrap_or("generate") {
            "generate" => {
                if self.cert_file.is_some() || self.key_file.is_some() {
                    return Err(err(
                        "tls.cert_file",
                        "is only used with tls.mode = \"files\"; \"generate\" makes the node certificate itself",
                    ));
                }
                if self.ca_file.is_some() != self.ca_key_file.is_some() {
                    return Err(err(
                        "tls.ca_key_file",
                        "tls.ca_file and tls.ca_key_file go together in generate mode",
                    ));
                }
                Ok(TlsConfig::Generate {
                    ca_file: self
                        .ca_file
                        .map(|p| absolute("tls.ca_file", p))
                        .transpose()?,
                    ca_key_file: self
                        .ca_key_file
                        .map(|p| absolute("tls.ca_key_file", p))
                        .transpose()?,
                })
            }
            "files" => {
                let cert_file = required(self.cert_file, "tls.cert_file")?;
                let key_file = required(self.key_file, "tls.key_file")?;
                let ca_file = required(self.ca_file, "tls.ca_file")?;
                check_file("tls.cert_file", &cert_file)?;
                check_file("tls.key_file", &key_file)?;
                check_file("tls.ca_file", &ca_file)?;
                if self.ca_key_file.is_some() {
                    return Err(err(
                        "tls.ca_key_file",
                        "is only used with tls.mode = \"generate\"",
                    ));
                }
                Ok(TlsConfig::Files {
                    cert_file,
                    key_file,
                    ca_file,
                })
            }
            other => Err(err(
                "tls.mode",
                format!("{other:?} is not \"generate\" or \"files\""),
            )),
        }
    }
}

impl RawAccess {
    fn build(self) -> Result<AccessConfig, ConfigError> {
        let raw = self
            .allowed_cidrs
            .unwrap_or_else(|| vec!["0.0.0.0/0".into(), "::/0".into()]);
        let mut allowed_cidrs = Vec::with_capacity(raw.len());
        for s in &raw {
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    err(
                        "access.allowed_cidrs",
                        format!("{s:?} is not a CIDR block (like 203.0.113.0/24) or an IP address"),
                    )
                })?;
            if net.trunc() != net {
                return Err(err(
                    "access.allowed_cidrs",
                    format!("{s:?} has host bits set; did you mean {}?", net.trunc()),
                ));
            }
            allowed_cidrs.push(net);
        }
        let firewall = match self.firewall.as_deref().unwrap_or("nftables") {
            "nftables" => FirewallBackend::Nftables,
            "off" => FirewallBackend::Off,
            other => {
                return Err(err(
                    "access.firewall",
                    format!("{other:?} is not \"nftables\" or \"off\""),
                ))
            }
        };
        let access = AccessConfig {
            allowed_cidrs,
            firewall,
        };
        if access.firewall == FirewallBackend::Off && !access.is_open() {
            return Err(err(
                "access.firewall",
                "is \"off\" but access.allowed_cidrs restricts access: the list would not be enforced",
            ));
        }
        Ok(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        r#"
data_store_id = "ds-1"
node_name = "node-a"
plan = "startup"
data_dir = "/tmp/rs/data"
state_dir = "/tmp/rs/state"
[redis]
server_path = "/bin/sh"
password = "correct-horse"
"#
        .to_string()
    }

    fn parse_err(text: &str) -> ConfigError {
        parse(text).expect_err("config should be rejected")
    }

    #[test]
    fn backup_settings_are_checked() {
        let with = |extra: &str| format!("{}[backup]\nurl = \"file:///tmp/b\"\n{extra}", base());
        let c = parse(&with("")).unwrap().backup.unwrap();
        assert_eq!(c.snapshot_time, (3, 0));
        assert_eq!(c.wal_interval, std::time::Duration::from_secs(1));
        assert_eq!(c.key_file, None);
        assert_eq!(c.spool_limit_bytes, 1 << 30);
        for (extra, key) in [
            ("snapshot_time = \"25:00\"\n", "backup.snapshot_time"),
            ("snapshot_time = \"3:00\"\n", "backup.snapshot_time"),
            ("wal_interval_ms = 10\n", "backup.wal_interval_ms"),
            ("zstd_level = 0\n", "backup.zstd_level"),
            ("spool_limit_mb = 0\n", "backup.spool_limit_mb"),
            ("key_file = \"/nonexistent/key\"\n", "backup.key_file"),
        ] {
            assert_eq!(parse_err(&with(extra)).key, key, "{extra}");
        }
        let c = parse(&with("snapshot_time = \"23:59\"\n"))
            .unwrap()
            .backup
            .unwrap();
        assert_eq!(c.snapshot_time, (23, 59));
    }

    #[test]
    fn minimal_config_gets_sane_defaults() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.plan, Plan::Startup);
        assert_eq!(c.redis.port, 6380);
        assert!(c.redis.scripting);
        assert!(c.access.is_open());
        assert_eq!(c.access.firewall, FirewallBackend::Nftables);
        assert_eq!(c.api.listen.to_string(), DEFAULT_API_LISTEN);
        assert_eq!(
            c.tls,
            TlsConfig::Generate {
                ca_file: None,
                ca_key_file: None
            }
        );
        assert_eq!(c.redis.maxmemory_policy, "noeviction");
    }

    #[test]
    fn backups_off_is_warned_unless_the_plan_keeps_none() {
        // Startup keeps a day of backups: no url is worth a warning.
        let c = parse(&base()).unwrap();
        assert!(!c.backups_enabled());
        let w = c.warnings();
        assert!(w.len() == 1 && w[0].contains("no backup.url"), "{w:?}");
        let hobby = parse(&base().replace("plan = \"startup\"", "plan = \"hobbyist\"")).unwrap();
        assert_eq!(hobby.plan, Plan::Hobbyist);
        assert!(hobby.warnings().is_empty(), "{:?}", hobby.warnings());
        // A url without a key: the example config's state. Warned, naming both keys.
        let c = parse(&(base() + "[backup]\nurl = \"file:///tmp/b\"\n")).unwrap();
        assert!(!c.backups_enabled());
        let w = c.warnings();
        assert!(
            w.len() == 1 && w[0].contains("backup.url is set") && w[0].contains("backup.key_file"),
            "{w:?}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = parse_err(&(base() + "colour = \"blue\"\n"));
        assert!(e.to_string().contains("colour"), "{e}");
        let e = parse_err(&base().replace("[redis]", "[redis]\nprot = 1"));
        assert!(e.to_string().contains("prot"), "{e}");
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: Vec<(String, &str)> = vec![
            (base().replace("startup", "enterprise"), "plan"),
            (base().replace("\"node-a\"", "\"Node A\""), "node_name"),
            (base().replace("\"ds-1\"", "\"\""), "data_store_id"),
            (base().replace("/tmp/rs/data", "relative/data"), "data_dir"),
            (base().replace("/tmp/rs/state", "/tmp/rs/data"), "state_dir"),
            (base().replace("/bin/sh", "/nonexistent/redis-server"), "redis.server_path"),
            (base().replace("correct-horse", "short"), "redis.password"),
            (base() + "port = 70000\n", "redis.port"),
            (base() + "bind = [\"not-an-ip\"]\n", "redis.bind"),
            (base() + "memory_limit_mb = 0\n", "redis.memory_limit_mb"),
            (base() + "maxmemory_policy = \"lru\"\n", "redis.maxmemory_policy"),
            (base() + "password_file = \"/etc/hostname\"\n", "redis.password"),
            (base() + "[access]\nallowed_cidrs = [\"10.0.0.0/33\"]\n", "access.allowed_cidrs"),
            (base() + "[access]\nallowed_cidrs = [\"10.0.0.1/8\"]\n", "access.allowed_cidrs"),
            (
                base() + "[access]\nallowed_cidrs = [\"10.0.0.0/8\"]\nfirewall = \"off\"\n",
                "access.firewall",
            ),
            (base() + "[tls]\nmode = \"self\"\n", "tls.mode"),
            (base() + "[tls]\nmode = \"files\"\n", "tls.cert_file"),
            (
                base()
                    + "[tls]\nmode = \"files\"\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/etc/hostname\"\nca_file = \"/etc/hostname\"\n",
                "tls.cert_file",
            ),
            (base() + "[api]\nlisten = \"localhost\"\n", "api.listen"),
            (base() + "[api]\nlisten = \"127.0.0.1:6380\"\n", "api.listen"),
            // The mutating endpoints have no authentication: never on the network.
            (base() + "[api]\nlisten = \"0.0.0.0:7480\"\n", "api.listen"),
            (base() + "[api]\npublic_listen = \"0.0.0.0:6380\"\n", "api.public_listen"),
            (base() + "[api]\npublic_listen = \"10.0.0.1\"\n", "api.public_listen"),
        ];
        for (text, key) in cases {
            let e = parse_err(&text);
            assert_eq!(e.key, key, "wrong key for error {e}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn missing_required_keys_are_named() {
        for key in ["data_store_id", "node_name", "plan"] {
            let text: String = base()
                .lines()
                .filter(|l| !l.starts_with(key))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(parse_err(&text).key, key);
        }
        let no_pw = base().replace("password = \"correct-horse\"", "");
        assert_eq!(parse_err(&no_pw).key, "redis.password");
    }

    #[test]
    fn cidrs_accept_plain_addresses_and_v6() {
        let c = parse(&(base() + "[access]\nallowed_cidrs = [\"192.0.2.7\", \"2001:db8::/32\"]\n"))
            .unwrap();
        let s: Vec<String> = c
            .access
            .allowed_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(s, vec!["192.0.2.7/32", "2001:db8::/32"]);
        assert!(!c.access.is_open());
    }

    #[test]
    fn secrets_are_not_printed_in_debug() {
        let c = parse(&base()).unwrap();
        assert!(!format!("{c:?}").contains("correct-horse"));
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    fn premium(nodes: &str, extra: &str) -> String {
        format!(
            r#"
data_store_id = "ds-1"
node_name = "node-b"
plan = "premium"
data_dir = "/tmp/rs/data"
state_dir = "/tmp/rs/state"
[redis]
server_path = "/bin/sh"
password = "correct-horse"
port = 6380
[cluster]
advertise_address = "10.0.0.2"
gossip_key_file = "/etc/hostname"
{nodes}
{extra}
"#
        )
    }

    const THREE: &str = r#"nodes = [
  { name = "node-a", address = "10.0.0.1" },
  { name = "node-b", address = "10.0.0.2" },
  { name = "node-c", address = "10.0.0.3", redis_port = 6390 },
]"#;
    const TWO: &str = r#"nodes = [ { name = "node-a", address = "10.0.0.1" }, { name = "node-b", address = "10.0.0.2" } ]"#;

    #[test]
    fn premium_cluster_is_parsed_with_defaults() {
        let c = parse(&premium(THREE, "")).unwrap();
        let cl = c.cluster.unwrap();
        assert_eq!(cl.gossip_port, 7946);
        assert_eq!(cl.nodes.len(), 3);
        assert_eq!(cl.nodes[2].redis_port, 6390);
        assert_eq!(cl.nodes[0].redis_port, 6380);
        assert_eq!(cl.timing, crate::cluster::election::Timing::default());
    }

    #[test]
    fn cluster_mistakes_name_their_key() {
        let dup = r#"nodes = [ { name = "node-b", address = "10.0.0.2" }, { name = "node-b", address = "10.0.0.2" }, { name = "node-c", address = "10.0.0.3" } ]"#;
        let not_me = THREE.replace("node-b", "node-x");
        let wrong_addr = THREE.replace("\"10.0.0.2\" }", "\"10.0.0.9\" }");
        let business = |extra: &str| premium(TWO, extra).replace("premium", "business");
        let cases = [
            (premium(TWO, ""), "cluster.nodes"),
            (premium(dup, ""), "cluster.nodes"),
            (premium(&not_me, ""), "cluster.nodes"),
            (premium(&wrong_addr, ""), "cluster.nodes"),
            (
                premium(THREE, "[cluster.timing]\nfence_after_ms = 5000\n"),
                "cluster.timing",
            ),
            (
                premium(THREE, "[cluster.timing]\nfence_aftr_ms = 5\n"),
                "<file>",
            ),
            (
                premium(THREE, "").replace(
                    "advertise_address = \"10.0.0.2\"",
                    "advertise_address = \"0.0.0.0\"",
                ),
                "cluster.advertise_address",
            ),
            (
                premium(THREE, "").replace("/etc/hostname", "/nonexistent.key"),
                "cluster.gossip_key_file",
            ),
            (
                premium(THREE, "").replace("[cluster]", "[clustr]"),
                "<file>",
            ),
            (premium(THREE, "").replace("premium", "startup"), "cluster"),
            (business(""), "backup.url"),
            (business("[backup]\nurl = \"ftp://x\"\n"), "backup.url"),
        ];
        for (text, key) in cases {
            let e = parse(&text).expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
        let ha_without_cluster = premium("", "")
            .split("[cluster]")
            .next()
            .unwrap()
            .to_string();
        assert_eq!(parse(&ha_without_cluster).unwrap_err().key, "cluster");
        assert!(parse(&business("[backup]\nurl = \"file:///tmp/b\"\n")).is_ok());
    }

    #[test]
    fn backup_options_stay_out_of_debug_output() {
        let text = premium(TWO, "[backup]\nurl = \"s3://b/p\"\n[backup.options]\naws_secret_access_key = \"hunter22\"\n")
            .replace("premium", "business");
        let c = parse(&text).unwrap();
        assert!(!format!("{c:?}").contains("hunter22"));
        assert_eq!(
            c.backup.unwrap().options["aws_secret_access_key"],
            "hunter22"
        );
    }
}

#[cfg(test)]
mod example_tests {
    /// The commented example that ships in packaging/ must stay valid.
    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../packaging/config.example.toml")
            .replace("/usr/bin/redis-server", "/bin/sh")
            .replace(
                "password_file = \"/etc/redis-steward/password\"",
                "password = \"example-pw\"",
            );
        let c = super::parse(&text).expect("example config is valid");
        assert_eq!(c.node_name, "node-1");
        assert!(c.access.is_open());
    }
}
