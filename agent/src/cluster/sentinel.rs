//! The Redis Sentinel protocol, served by every agent for its own data store, so unmodified
//! Sentinel-aware clients find the primary and follow failovers with no new code.
//!
//! What clients send (redis-py 8, ioredis, redis-rs 1.8, Jedis, go-redis against Redis
//! Sentinel 7.0), and so what this server answers like Sentinel 7.0.15 does, byte for byte
//! where it matters:
//! * `HELLO 3 [AUTH default <pass>]` (redis-py, ioredis, go-redis default to RESP3) or
//!   `AUTH <pass>` (redis-rs, RESP2), then `CLIENT SETINFO` (may be refused harmlessly).
//! * `ROLE` answering `sentinel` (redis-rs checks it before every lookup).
//! * `SENTINEL get-master-addr-by-name` (ioredis, Jedis, go-redis), `SENTINEL masters`
//!   (redis-py, redis-rs: name, ip, port, flags, num-other-sentinels), `SENTINEL slaves` /
//!   `replicas` for replica reads, `SENTINEL sentinels` (ioredis discovers the other agents).
//! * `SUBSCRIBE +switch-master` (ioredis, Jedis: their failover detectors) and `PSUBSCRIBE *`
//!   (Lettuce). RESP3 clients get the messages as pushes.
//!
//! The snapshot rule: the agent replaces the whole [`SentinelView`] through a `watch` channel
//! and every command reads exactly one snapshot of it ([`Session::handle`] takes the view as
//! an `FnOnce`), so a client that asks `get-master-addr-by-name` never sees a different
//! primary than one that asks `masters` at the same moment. One watcher task per server diffs
//! consecutive views into events ([`view_events`]) and fans them out through a broadcast
//! channel, so every subscriber sees every event in the same order; a subscriber too slow to
//! keep up is disconnected (as Redis's pub/sub output limit does) and rediscovers.
//!
//! A data store is "monitored" from the moment a primary is known: before that, the name is
//! unknown to every command (`ROLE` lists no master, `get-master-addr-by-name` is null), the
//! way a Sentinel that was never told about it answers. Commands that would change
//! configuration (`SENTINEL failover`, `set`, `monitor`, ...) are refused: the agents own it.
//!
//! The server is TLS only and always requires the customer password (user `default`). A
//! stray or hostile client is bounded: 1024 connections, small requests (Redis's own
//! pre-authentication limits, then 64 arguments of 64 KiB), 10 s for the TLS handshake and
//! 10 s more to authenticate, 30 s for a reply to be taken.
//!
//! Pure parts (sessions, reply builders, view diffs, glob matching) do no I/O and are
//! unit-tested; [`SentinelServer`] is the thin network edge.

use crate::cluster::resp::{self, Limits, Parsed, Protocol, Value};
use anyhow::{ensure, Context, Result};
use bytes::{Buf, BytesMut};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// The Redis version the server reports (HELLO, INFO): the Sentinel it imitates.
pub const REDIS_VERSION: &str = "7.0.15";
/// Connections served at once; more are accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets, after the handshake, to authenticate.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a reply may take to be written before the client is dropped as not reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Events a subscriber may fall behind by before it is disconnected.
const EVENT_BUFFER: usize = 1024;

// Sentinel reports its own timing settings; the agents' election decides failover here, so
// these are Sentinel's defaults, only for clients that display them.
const DOWN_AFTER_MS: &str = "30000";
const FAILOVER_TIMEOUT_MS: &str = "180000";
const PARALLEL_SYNCS: &str = "1";

/// A redis address as clients should dial it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(ip: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            ip: ip.into(),
            port,
        }
    }
}

/// A replica of the data store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaEntry {
    /// The agent's node name. Not sent: Sentinel names a replica by its `ip:port`.
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// Reachable now; a replica that is not gets the `s_down` flag.
    pub up: bool,
    /// Replication offset (`slave-repl-offset`).
    pub offset: u64,
    /// Its link to the primary is up (`master-link-status` ok/err).
    pub link_up: bool,
}

/// Another agent's Sentinel port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SentinelPeer {
    /// Sent as both `name` and `runid` (Sentinel names a sentinel by its run id).
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub up: bool,
}

/// What the data store looks like right now, as this agent knows it. Replaced as a whole via a
/// `watch` channel, so every command answered from one snapshot agrees with every other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SentinelView {
    /// The data store id; clients ask for the master by this name.
    pub master_name: String,
    /// The config-epoch; growing it publishes `+new-epoch`.
    pub epoch: u64,
    /// The last known primary, kept while it is down (as Sentinel does). None = none known
    /// yet: the data store is not announced at all.
    pub primary: Option<Endpoint>,
    /// The primary is not reachable now: flags `s_down,o_down,master`, INFO `status=odown`.
    pub primary_down: bool,
    pub replicas: Vec<ReplicaEntry>,
    /// The other agents' Sentinel ports (not this one).
    pub sentinels: Vec<SentinelPeer>,
    pub quorum: u32,
}

/// How to serve.
#[derive(Clone)]
pub struct SentinelSettings {
    pub listen: Vec<SocketAddr>,
    /// TLS only: the product never serves plaintext.
    pub tls: Arc<rustls::ServerConfig>,
    /// The customer password (user `default`); must not be empty.
    pub password: String,
    /// 40 hex characters, stable for one agent start (`SENTINEL myid`, INFO `run_id`).
    pub run_id: String,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("listen", &self.listen)
            .field("password", &"<redacted>")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// A server certificate chain and key from PEM files, with the ring provider chosen
/// explicitly (two rustls providers are linked into the binary, so none is the default).
pub fn server_tls_config(
    cert_pem_path: impl AsRef<Path>,
    key_pem_path: impl AsRef<Path>,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_path, key_path) = (cert_pem_path.as_ref(), key_pem_path.as_ref());
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", cert_path.display()))?;
    ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read a private key from {}", key_path.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "{} and {} are not a usable certificate and key",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// Events (pure)

/// A pub/sub message as Sentinel publishes it: the channel is the event type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub channel: &'static str,
    pub payload: String,
}

fn event(channel: &'static str, payload: String) -> Event {
    Event { channel, payload }
}

/// `master <name> <ip> <port>`, Sentinel's `%@` for a master.
fn master_ref(name: &str, ep: &Endpoint) -> String {
    format!("master {name} {} {}", ep.ip, ep.port)
}

fn addr_name(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn down_events(view: &SentinelView, ep: &Endpoint, out: &mut Vec<Event>) {
    let who = master_ref(&view.master_name, ep);
    out.push(event("+sdown", who.clone()));
    let q = view.quorum;
    out.push(event("+odown", format!("{who} #quorum {q}/{q}")));
}

/// The events Sentinel would publish going from `old` to `new`, in its order: `+new-epoch`,
/// then `+switch-master`, then down/up changes of the primary and of replicas.
pub fn view_events(old: &SentinelView, new: &SentinelView) -> Vec<Event> {
    let mut out = Vec::new();
    if new.epoch > old.epoch {
        out.push(event("+new-epoch", new.epoch.to_string()));
    }
    let name = &new.master_name;
    match (&old.primary, &new.primary) {
        (Some(a), Some(b)) if a != b => {
            out.push(event(
                "+switch-master",
                format!("{name} {} {} {} {}", a.ip, a.port, b.ip, b.port),
            ));
            // Sentinel resets a switched master silently; a new primary already down is news.
            if new.primary_down {
                down_events(new, b, &mut out);
            }
        }
        (Some(_), Some(b)) => {
            if new.primary_down && !old.primary_down {
                down_events(new, b, &mut out);
            } else if old.primary_down && !new.primary_down {
                let who = master_ref(name, b);
                out.push(event("-sdown", who.clone()));
                out.push(event("-odown", who));
            }
        }
        (None, Some(b)) if new.primary_down => down_events(new, b, &mut out),
        _ => {}
    }
    if let Some(p) = &new.primary {
        for r in &new.replicas {
            let Some(before) = old
                .replicas
                .iter()
                .find(|o| o.ip == r.ip && o.port == r.port)
            else {
                continue;
            };
            if before.up == r.up {
                continue;
            }
            let who = format!(
                "slave {} {} {} @ {name} {} {}",
                addr_name(&r.ip, r.port),
                r.ip,
                r.port,
                p.ip,
                p.port
            );
            out.push(event(if r.up { "-sdown" } else { "+sdown" }, who));
        }
    }
    out
}

/// Redis's glob (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as PSUBSCRIBE uses it. Iterative with one
/// backtrack point, so hostile patterns (`*a*a*a*…b`) cost O(pattern × text), not exponential.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last '*': (pattern index after it, text index it absorbed to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            let step = match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => Some(p + 1),
                b'[' => {
                    let (matched, next) = match_class(pattern, p + 1, text[t]);
                    matched.then_some(next)
                }
                b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
                c => (c == text[t]).then_some(p + 1),
            };
            if let Some(next) = step {
                p = next;
                t += 1;
                continue;
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Match `c` against the class starting at `p` (just after '['): whether it matched and the
/// pattern index after the closing ']' (an unterminated class runs to the end, as in Redis).
fn match_class(pattern: &[u8], mut p: usize, c: u8) -> (bool, usize) {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut matched = false;
    while p < pattern.len() && pattern[p] != b']' {
        if pattern[p] == b'\\' && p + 1 < pattern.len() {
            matched |= pattern[p + 1] == c;
            p += 2;
        } else if p + 2 < pattern.len() && pattern[p + 1] == b'-' {
            let (lo, hi) = (
                pattern[p].min(pattern[p + 2]),
                pattern[p].max(pattern[p + 2]),
            );
            matched |= (lo..=hi).contains(&c);
            p += 3;
        } else {
            matched |= pattern[p] == c;
            p += 1;
        }
    }
    (matched != negate, (p + 1).min(pattern.len()))
}

// ---------------------------------------------------------------------------------------
// Reply builders (pure)

fn the_master<'a>(view: &'a SentinelView, name: &[u8]) -> Option<&'a Endpoint> {
    view.primary
        .as_ref()
        .filter(|_| name == view.master_name.as_bytes())
}

fn no_such_master() -> Value {
    Value::error("ERR No such master with that name")
}

/// `SENTINEL master`: Sentinel 7.0's field order; a map in RESP3, a flat array in RESP2.
fn master_reply(view: &SentinelView, ep: &Endpoint) -> Value {
    let flags = if view.primary_down {
        "s_down,o_down,master"
    } else {
        "master"
    };
    Value::string_map(&[
        ("name", view.master_name.clone()),
        ("ip", ep.ip.clone()),
        ("port", ep.port.to_string()),
        (
            "runid",
            run_id_of(&view.master_name, &ep.ip, ep.port, view.epoch),
        ),
        ("flags", flags.into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", DOWN_AFTER_MS.into()),
        ("info-refresh", "0".into()),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        ("config-epoch", view.epoch.to_string()),
        ("num-slaves", view.replicas.len().to_string()),
        ("num-other-sentinels", view.sentinels.len().to_string()),
        ("quorum", view.quorum.to_string()),
        ("failover-timeout", FAILOVER_TIMEOUT_MS.into()),
        ("parallel-syncs", PARALLEL_SYNCS.into()),
    ])
}

/// A 40-hex run id for a redis this view names (Sentinel reports the server's own INFO
/// `run_id`, which clients may compare to notice a new server): stable for one server in one
/// epoch, new when the primary changes.
fn run_id_of(master: &str, ip: &str, port: u16, epoch: u64) -> String {
    let digest = Sha256::digest(format!("{master}/{ip}:{port}/{epoch}").as_bytes());
    hex::encode(digest)[..40].to_string()
}

fn replica_reply(r: &ReplicaEntry, primary: &Endpoint, epoch: u64) -> Value {
    let flags = if r.up { "slave" } else { "s_down,slave" };
    Value::string_map(&[
        ("name", addr_name(&r.ip, r.port)),
        ("ip", r.ip.clone()),
        ("port", r.port.to_string()),
        ("runid", run_id_of("", &r.ip, r.port, epoch)),
        ("flags", flags.into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", DOWN_AFTER_MS.into()),
        ("info-refresh", "0".into()),
        ("role-reported", "slave".into()),
        ("role-reported-time", "0".into()),
        ("master-link-down-time", "0".into()),
        (
            "master-link-status",
            if r.link_up { "ok" } else { "err" }.into(),
        ),
        ("master-host", primary.ip.clone()),
        ("master-port", primary.port.to_string()),
        ("slave-priority", "100".into()),
        ("slave-repl-offset", r.offset.to_string()),
        ("replica-announced", "1".into()),
    ])
}

fn sentinel_reply(s: &SentinelPeer) -> Value {
    let flags = if s.up { "sentinel" } else { "s_down,sentinel" };
    Value::string_map(&[
        ("name", s.name.clone()),
        ("ip", s.ip.clone()),
        ("port", s.port.to_string()),
        ("runid", s.name.clone()),
        ("flags", flags.into()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", DOWN_AFTER_MS.into()),
        ("last-hello-message", "0".into()),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", "0".into()),
    ])
}

/// Sentinel's `ckquorum`: this agent plus the reachable others must reach the quorum and a
/// majority of all of them.
fn ckquorum_reply(view: &SentinelView) -> Value {
    let voters = view.sentinels.len() + 1;
    let usable = 1 + view.sentinels.iter().filter(|s| s.up).count();
    let no_quorum = usable < view.quorum as usize;
    let no_majority = usable < voters / 2 + 1;
    if !no_quorum && !no_majority {
        return Value::Simple(format!(
            "OK {usable} usable Sentinels. Quorum and failover authorization can be reached"
        ));
    }
    let mut e = format!("NOQUORUM {usable} usable Sentinels. ");
    if no_quorum {
        e.push_str("Not enough available Sentinels to reach the specified quorum for this master");
    }
    if no_majority {
        if no_quorum {
            e.push_str(". ");
        }
        e.push_str("Not enough available Sentinels to reach the majority and authorize a failover");
    }
    Value::Error(e)
}

/// What the server says about itself in INFO.
#[derive(Debug, Clone)]
pub struct ServerInfo<'a> {
    pub run_id: &'a str,
    pub password: &'a str,
    pub tcp_port: u16,
    pub process_id: u32,
    pub uptime: Duration,
}

fn info_reply(view: &SentinelView, server: &ServerInfo, sections: &[Vec<u8>]) -> Value {
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || ["default", "all", "everything"]
                        .iter()
                        .any(|a| s.eq_ignore_ascii_case(a.as_bytes()))
            })
    };
    let mut parts = Vec::new();
    if wanted("server") {
        let up = server.uptime.as_secs();
        parts.push(format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_git_sha1:00000000\r\n\
             redis_git_dirty:0\r\nredis_mode:sentinel\r\narch_bits:64\r\nprocess_id:{}\r\n\
             run_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{up}\r\nuptime_in_days:{}\r\n",
            server.process_id,
            server.run_id,
            server.tcp_port,
            up / 86400
        ));
    }
    if wanted("sentinel") {
        let masters = usize::from(view.primary.is_some());
        let mut s = format!(
            "# Sentinel\r\nsentinel_masters:{masters}\r\nsentinel_tilt:0\r\n\
             sentinel_tilt_since_seconds:-1\r\nsentinel_running_scripts:0\r\n\
             sentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\n"
        );
        if let Some(p) = &view.primary {
            let status = if view.primary_down { "odown" } else { "ok" };
            s.push_str(&format!(
                "master0:name={},status={status},address={}:{},slaves={},sentinels={}\r\n",
                view.master_name,
                p.ip,
                p.port,
                view.replicas.len(),
                view.sentinels.len() + 1
            ));
        }
        parts.push(s);
    }
    Value::bulk(parts.join("\r\n"))
}

// ---------------------------------------------------------------------------------------
// Sessions (pure)

struct Spec {
    name: &'static str,
    /// Redis's arity: n = exactly n words, -n = at least n.
    arity: i32,
    /// Allowed before authentication.
    no_auth: bool,
    /// Allowed while subscribed in RESP2.
    in_pubsub: bool,
}

const fn spec(name: &'static str, arity: i32, no_auth: bool, in_pubsub: bool) -> Spec {
    Spec {
        name,
        arity,
        no_auth,
        in_pubsub,
    }
}

const COMMANDS: &[Spec] = &[
    spec("auth", -2, true, false),
    spec("hello", -1, true, false),
    // Sentinel 7.0 does not know QUIT; answering it like redis-server costs nothing and
    // spares clients that send it on close an error in their logs.
    spec("quit", -1, true, true),
    spec("ping", -1, false, true),
    spec("role", 1, false, false),
    spec("info", -1, false, false),
    spec("client", -2, false, false),
    spec("sentinel", -2, false, false),
    spec("subscribe", -2, false, true),
    spec("psubscribe", -2, false, true),
    spec("unsubscribe", -1, false, true),
    spec("punsubscribe", -1, false, true),
];

const CLIENT_SUBCOMMANDS: &[Spec] = &[
    spec("id", 2, false, false),
    spec("getname", 2, false, false),
    spec("setname", 3, false, false),
    // Redis 7.2's library report (redis-py, go-redis, redis-rs send it); not in 7.0.
    spec("setinfo", 4, false, false),
    spec("help", 2, false, false),
];

const SENTINEL_SUBCOMMANDS: &[Spec] = &[
    spec("masters", 2, false, false),
    spec("master", 3, false, false),
    spec("replicas", 3, false, false),
    spec("slaves", 3, false, false),
    spec("sentinels", 3, false, false),
    spec("get-master-addr-by-name", 3, false, false),
    spec("ckquorum", 3, false, false),
    spec("myid", 2, false, false),
    spec("help", 2, false, false),
];

/// SENTINEL subcommands that change or drive configuration: refused with a clear reason,
/// whatever their arguments.
const REFUSED_SENTINEL_SUBCOMMANDS: &[&str] = &[
    "failover",
    "set",
    "monitor",
    "remove",
    "reset",
    "config",
    "flushconfig",
    "is-master-down-by-addr",
    "simulate-failure",
    "debug",
    "info-cache",
    "pending-scripts",
];

const MANAGED: &str = "ERR this data store is managed by redis-steward";

fn find<'a>(table: &'a [Spec], name: &[u8]) -> Option<&'a Spec> {
    table
        .iter()
        .find(|s| name.eq_ignore_ascii_case(s.name.as_bytes()))
}

fn arity_ok(arity: i32, argc: usize) -> bool {
    if arity >= 0 {
        argc == arity as usize
    } else {
        argc >= arity.unsigned_abs() as usize
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wrong_args(fullname: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{fullname}' command"
    ))
}

/// Redis's text, quoting up to 128 characters of the arguments.
fn unknown_command(args: &[Vec<u8>]) -> Value {
    let name: String = text(&args[0]).chars().take(128).collect();
    let mut rest = String::new();
    for a in &args[1..] {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        let a: String = text(a).chars().take(room).collect();
        rest.push_str(&format!("'{a}' "));
    }
    Value::error(format!(
        "ERR unknown command '{name}', with args beginning with: {rest}"
    ))
}

fn help(lines: &[&str]) -> Value {
    Value::Array(lines.iter().map(|l| Value::Simple(l.to_string())).collect())
}

/// Compare secrets in time independent of where they differ (and of their lengths).
fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    let diff = da
        .iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// One client connection's protocol state: protocol version, authentication, name,
/// subscriptions. Commands in, reply bytes out.
#[derive(Debug)]
pub struct Session {
    id: u64,
    proto: Protocol,
    authenticated: bool,
    name: Option<Vec<u8>>,
    /// In subscription order, as Redis reports them when unsubscribing from all.
    channels: Vec<Vec<u8>>,
    patterns: Vec<Vec<u8>>,
}

impl Session {
    pub fn new(id: u64) -> Session {
        Session {
            id,
            proto: Protocol::Resp2,
            authenticated: false,
            name: None,
            channels: Vec::new(),
            patterns: Vec::new(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    pub fn is_subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    /// Request limits for the next request.
    pub fn limits(&self) -> Limits {
        if self.authenticated {
            Limits::AUTHENTICATED
        } else {
            Limits::UNAUTHENTICATED
        }
    }

    /// Answer one request, appending the reply bytes to `out`. `view` is called at most once:
    /// one command, one snapshot.
    pub fn handle(
        &mut self,
        args: &[Vec<u8>],
        server: &ServerInfo,
        view: impl FnOnce() -> SentinelView,
        out: &mut Vec<u8>,
    ) -> Flow {
        if args.is_empty() {
            return Flow::Continue;
        }
        let (replies, flow) = self.dispatch(args, server, view);
        // Encoded after dispatch: HELLO 3 is itself answered in RESP3.
        for r in &replies {
            r.encode(self.proto, out);
        }
        flow
    }

    /// The messages one event produces for this session: one for the channel, one per
    /// matching pattern (Redis delivers both when a client has both).
    pub fn deliver(&self, ev: &Event, out: &mut Vec<u8>) {
        let channel = ev.channel.as_bytes();
        if self.channels.iter().any(|c| c == channel) {
            Value::Push(vec![
                Value::bulk("message"),
                Value::bulk(channel),
                Value::bulk(&ev.payload),
            ])
            .encode(self.proto, out);
        }
        for p in self.patterns.iter().filter(|p| glob_match(p, channel)) {
            Value::Push(vec![
                Value::bulk("pmessage"),
                Value::bulk(p),
                Value::bulk(channel),
                Value::bulk(&ev.payload),
            ])
            .encode(self.proto, out);
        }
    }

    fn dispatch(
        &mut self,
        args: &[Vec<u8>],
        server: &ServerInfo,
        view: impl FnOnce() -> SentinelView,
    ) -> (Vec<Value>, Flow) {
        let one = |v: Value| (vec![v], Flow::Continue);
        // Redis's order of checks: unknown command, arity, subcommand, authentication, then
        // the RESP2 subscribed context.
        let Some(cmd) = find(COMMANDS, &args[0]) else {
            return one(unknown_command(args));
        };
        if !arity_ok(cmd.arity, args.len()) {
            return one(wrong_args(cmd.name));
        }
        let mut fullname = cmd.name.to_string();
        let mut sub = None;
        if cmd.name == "client" || cmd.name == "sentinel" {
            let table = if cmd.name == "client" {
                CLIENT_SUBCOMMANDS
            } else {
                SENTINEL_SUBCOMMANDS
            };
            match find(table, &args[1]) {
                Some(s) => {
                    fullname = format!("{}|{}", cmd.name, s.name);
                    if !arity_ok(s.arity, args.len()) {
                        return one(wrong_args(&fullname));
                    }
                    sub = Some(s.name);
                }
                None if cmd.name == "sentinel"
                    && REFUSED_SENTINEL_SUBCOMMANDS
                        .iter()
                        .any(|r| args[1].eq_ignore_ascii_case(r.as_bytes())) =>
                {
                    fullname = format!("sentinel|{}", text(&args[1]).to_ascii_lowercase());
                }
                None => {
                    return one(Value::error(format!(
                        "ERR unknown subcommand '{}'. Try {} HELP.",
                        text(&args[1]),
                        cmd.name.to_ascii_uppercase()
                    )))
                }
            }
        }
        if !self.authenticated && !cmd.no_auth {
            return one(Value::error("NOAUTH Authentication required."));
        }
        if self.proto == Protocol::Resp2 && self.is_subscribed() && !cmd.in_pubsub {
            return one(Value::error(format!(
                "ERR Can't execute '{fullname}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / \
                 PING / QUIT / RESET are allowed in this context"
            )));
        }
        match cmd.name {
            "auth" => one(self.auth(args, server)),
            "hello" => one(self.hello(args, server)),
            "quit" => (vec![Value::ok()], Flow::Close),
            "ping" => one(self.ping(args)),
            "role" => {
                let view = view();
                let names = match &view.primary {
                    Some(_) => vec![Value::bulk(&view.master_name)],
                    None => vec![],
                };
                one(Value::Array(vec![
                    Value::bulk("sentinel"),
                    Value::Array(names),
                ]))
            }
            "info" => one(info_reply(&view(), server, &args[1..])),
            "client" => one(self.client(sub.unwrap_or_default(), args)),
            "sentinel" => one(sentinel_command(sub, args, server, view)),
            "subscribe" | "psubscribe" => (self.subscribe(cmd.name, &args[1..]), Flow::Continue),
            "unsubscribe" | "punsubscribe" => {
                (self.unsubscribe(cmd.name, &args[1..]), Flow::Continue)
            }
            _ => one(unknown_command(args)),
        }
    }

    fn check_password(&self, user: &[u8], pass: &[u8], server: &ServerInfo) -> bool {
        // Always compare the password, so a wrong user name takes as long as a wrong password.
        let pass_ok = secret_eq(pass, server.password.as_bytes());
        user == b"default" && pass_ok && !server.password.is_empty()
    }

    fn auth(&mut self, args: &[Vec<u8>], server: &ServerInfo) -> Value {
        let (user, pass): (&[u8], &[u8]) = match args.len() {
            2 => (b"default", &args[1]),
            3 => (&args[1], &args[2]),
            _ => return Value::error("ERR syntax error"),
        };
        if self.check_password(user, pass, server) {
            self.authenticated = true;
            Value::ok()
        } else {
            Value::error("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn hello(&mut self, args: &[Vec<u8>], server: &ServerInfo) -> Value {
        let mut version = None;
        let mut j = 1;
        if let Some(v) = args.get(1) {
            match resp::parse_integer(v) {
                None => {
                    return Value::error("ERR Protocol version is not an integer or out of range")
                }
                Some(2) => version = Some(Protocol::Resp2),
                Some(3) => version = Some(Protocol::Resp3),
                Some(_) => return Value::error("NOPROTO unsupported protocol version"),
            }
            j = 2;
        }
        let (mut auth, mut setname) = (None, None);
        while j < args.len() {
            let more = args.len() - 1 - j;
            if args[j].eq_ignore_ascii_case(b"auth") && more >= 2 {
                auth = Some((&args[j + 1], &args[j + 2]));
                j += 3;
            } else if args[j].eq_ignore_ascii_case(b"setname") && more >= 1 {
                setname = Some(&args[j + 1]);
                j += 2;
            } else {
                return Value::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    text(&args[j])
                ));
            }
        }
        if let Some((user, pass)) = auth {
            if !self.check_password(user, pass, server) {
                return Value::error(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            return Value::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO AUTH <user> <pass> option can be used to authenticate the client and \
                 select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = setname {
            if let Err(e) = self.set_name(name) {
                return e;
            }
        }
        if let Some(v) = version {
            self.proto = v;
        }
        // Sentinel 7.0's HELLO map: no `role` entry, unlike redis-server's.
        Value::Map(vec![
            (Value::bulk("server"), Value::bulk("redis")),
            (Value::bulk("version"), Value::bulk(REDIS_VERSION)),
            (Value::bulk("proto"), Value::Integer(self.proto.number())),
            (Value::bulk("id"), Value::Integer(self.id as i64)),
            (Value::bulk("mode"), Value::bulk("sentinel")),
            (Value::bulk("modules"), Value::Array(vec![])),
        ])
    }

    fn set_name(&mut self, name: &[u8]) -> Result<(), Value> {
        if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
            return Err(Value::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then(|| name.to_vec());
        Ok(())
    }

    fn ping(&self, args: &[Vec<u8>]) -> Value {
        if args.len() > 2 {
            return wrong_args("ping");
        }
        if self.proto == Protocol::Resp2 && self.is_subscribed() {
            let arg = args.get(1).map(Value::bulk).unwrap_or(Value::bulk(""));
            return Value::Array(vec![Value::bulk("pong"), arg]);
        }
        match args.get(1) {
            Some(a) => Value::bulk(a),
            None => Value::Simple("PONG".into()),
        }
    }

    fn client(&mut self, sub: &str, args: &[Vec<u8>]) -> Value {
        match sub {
            "id" => Value::Integer(self.id as i64),
            "getname" => match &self.name {
                Some(n) => Value::bulk(n),
                None => Value::NullBulk,
            },
            "setname" => match self.set_name(&args[2]) {
                Ok(()) => Value::ok(),
                Err(e) => e,
            },
            "setinfo" => {
                let attr = &args[2];
                if attr.eq_ignore_ascii_case(b"lib-name") || attr.eq_ignore_ascii_case(b"lib-ver") {
                    Value::ok()
                } else {
                    Value::error(format!("ERR Unrecognized option '{}'", text(attr)))
                }
            }
            _ => help(&[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "SETINFO <option> <value>",
                "    Set client meta attr (LIB-NAME or LIB-VER).",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ]),
        }
    }

    fn subscribe(&mut self, kind: &'static str, names: &[Vec<u8>]) -> Vec<Value> {
        names
            .iter()
            .map(|n| {
                let list = if kind == "subscribe" {
                    &mut self.channels
                } else {
                    &mut self.patterns
                };
                if !list.contains(n) {
                    list.push(n.clone());
                }
                Value::Push(vec![
                    Value::bulk(kind),
                    Value::bulk(n),
                    Value::Integer(self.subscription_count()),
                ])
            })
            .collect()
    }

    fn unsubscribe(&mut self, kind: &'static str, names: &[Vec<u8>]) -> Vec<Value> {
        let from_list = |s: &mut Session| {
            if kind == "unsubscribe" {
                s.channels.clone()
            } else {
                s.patterns.clone()
            }
        };
        let targets = if names.is_empty() {
            from_list(self)
        } else {
            names.to_vec()
        };
        if targets.is_empty() {
            return vec![Value::Push(vec![
                Value::bulk(kind),
                Value::NullBulk,
                Value::Integer(self.subscription_count()),
            ])];
        }
        targets
            .into_iter()
            .map(|n| {
                let list = if kind == "unsubscribe" {
                    &mut self.channels
                } else {
                    &mut self.patterns
                };
                list.retain(|c| c != &n);
                Value::Push(vec![
                    Value::bulk(kind),
                    Value::Bulk(n),
                    Value::Integer(self.subscription_count()),
                ])
            })
            .collect()
    }

    fn subscription_count(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }
}

fn sentinel_command(
    sub: Option<&str>,
    args: &[Vec<u8>],
    server: &ServerInfo,
    view: impl FnOnce() -> SentinelView,
) -> Value {
    let Some(sub) = sub else {
        // A refused subcommand (see REFUSED_SENTINEL_SUBCOMMANDS).
        if args[1].eq_ignore_ascii_case(b"failover") {
            return Value::error(format!("{MANAGED}; use 'redis-steward switchover'"));
        }
        return Value::error(format!(
            "{MANAGED}; SENTINEL {} is not available",
            text(&args[1]).to_ascii_uppercase()
        ));
    };
    match sub {
        "myid" => return Value::bulk(server.run_id),
        "help" => {
            return help(&[
                "SENTINEL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CKQUORUM <master-name>",
                "GET-MASTER-ADDR-BY-NAME <master-name>",
                "MASTER <master-name>",
                "MASTERS",
                "MYID",
                "REPLICAS <master-name>",
                "SENTINELS <master-name>",
                "SLAVES <master-name>",
                "HELP",
                "This data store is managed by redis-steward: its configuration is read-only.",
            ])
        }
        _ => {}
    }
    let view = view();
    if sub == "masters" {
        let masters = view
            .primary
            .iter()
            .map(|p| master_reply(&view, p))
            .collect();
        return Value::Array(masters);
    }
    let master = the_master(&view, &args[2]);
    match (sub, master) {
        ("get-master-addr-by-name", Some(p)) => {
            Value::Array(vec![Value::bulk(&p.ip), Value::bulk(p.port.to_string())])
        }
        ("get-master-addr-by-name", None) => Value::NullArray,
        (_, None) => no_such_master(),
        ("master", Some(p)) => master_reply(&view, p),
        ("replicas" | "slaves", Some(p)) => Value::Array(
            view.replicas
                .iter()
                .map(|r| replica_reply(r, p, view.epoch))
                .collect(),
        ),
        ("sentinels", Some(_)) => Value::Array(view.sentinels.iter().map(sentinel_reply).collect()),
        ("ckquorum", Some(_)) => ckquorum_reply(&view),
        _ => no_such_master(),
    }
}

// ---------------------------------------------------------------------------------------
// The network edge

/// Bound listeners, ready to [`run`](SentinelServer::run). Binding first lets the caller
/// learn the ports (tests bind port 0) and report a taken port before anything starts.
pub struct SentinelServer {
    listeners: Vec<TcpListener>,
    settings: SentinelSettings,
}

/// What every connection task shares.
struct Shared {
    acceptor: TlsAcceptor,
    password: String,
    run_id: String,
    started: Instant,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    events: broadcast::Sender<Event>,
}

impl SentinelServer {
    pub async fn bind(settings: SentinelSettings) -> Result<SentinelServer> {
        ensure!(
            !settings.listen.is_empty(),
            "the Sentinel port has no listen address"
        );
        ensure!(
            !settings.password.is_empty(),
            "the Sentinel port needs the customer password (it never serves without one)"
        );
        ensure!(
            settings.run_id.len() == 40 && settings.run_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "the Sentinel run id must be 40 hex characters, not {:?}",
            settings.run_id
        );
        let mut listeners = Vec::new();
        for addr in &settings.listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the Sentinel port"))?;
            listeners.push(l);
        }
        Ok(SentinelServer {
            listeners,
            settings,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serve until `shutdown` completes; then every connection is closed.
    pub async fn run(
        self,
        view: watch::Receiver<SentinelView>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            acceptor: TlsAcceptor::from(self.settings.tls.clone()),
            password: self.settings.password.clone(),
            run_id: self.settings.run_id.clone(),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            events: events.clone(),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(publish_events(view.clone(), events));
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "Sentinel port listening");
            }
            tasks.spawn(accept_loop(listener, shared.clone(), view.clone()));
        }
        shutdown.await;
        // Aborting an accept loop drops its JoinSet, which aborts its connections.
        tasks.shutdown().await;
        Ok(())
    }
}

/// Bind and serve until `shutdown` completes (see [`SentinelServer`]).
pub async fn serve(
    settings: SentinelSettings,
    view: watch::Receiver<SentinelView>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    SentinelServer::bind(settings)
        .await?
        .run(view, shutdown)
        .await
}

/// The one watcher per server: diff consecutive views, publish the events in order.
async fn publish_events(mut view: watch::Receiver<SentinelView>, events: broadcast::Sender<Event>) {
    let mut prev = view.borrow_and_update().clone();
    while view.changed().await.is_ok() {
        let next = view.borrow_and_update().clone();
        for ev in view_events(&prev, &next) {
            tracing::debug!(channel = ev.channel, payload = %ev.payload, "Sentinel event");
            // No subscriber is not an error.
            let _ = events.send(ev);
        }
        prev = next;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    view: watch::Receiver<SentinelView>,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut conns = JoinSet::new();
    // A flood of connections must not become a flood of log lines.
    let mut last_full_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
                        if last_full_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            tracing::warn!(%peer, "Sentinel port: {MAX_CONNECTIONS} connections open, refusing more");
                            last_full_warning = Some(Instant::now());
                        }
                        drop(tcp);
                        continue;
                    };
                    conns.spawn(connection(tcp, peer, port, shared.clone(), view.clone(), permit));
                }
                Err(e) => {
                    // Out of descriptors and the like: do not spin, try again shortly.
                    tracing::warn!("Sentinel port: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    shared: Arc<Shared>,
    view: watch::Receiver<SentinelView>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "Sentinel port: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "Sentinel port: TLS handshake timed out");
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = converse(stream, id, port, &shared, view).await {
        tracing::debug!(%peer, "Sentinel port: connection closed: {e}");
    }
}

async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await
    .context("the client does not read its replies")??;
    out.clear();
    Ok(())
}

/// Requests in, replies and events out, until the client leaves or misbehaves.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    id: u64,
    port: u16,
    shared: &Shared,
    view: watch::Receiver<SentinelView>,
) -> Result<()> {
    let mut session = Session::new(id);
    let auth_deadline = Instant::now() + AUTH_TIMEOUT;
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::new();
    let mut events: Option<broadcast::Receiver<Event>> = None;
    loop {
        // Answer every complete request already buffered (pipelining), then flush once.
        loop {
            match resp::parse_request(&buf, session.limits()) {
                Ok(Parsed::Request(args, n)) => {
                    buf.advance(n);
                    let server = ServerInfo {
                        run_id: &shared.run_id,
                        password: &shared.password,
                        tcp_port: port,
                        process_id: std::process::id(),
                        uptime: shared.started.elapsed(),
                    };
                    let flow = session.handle(&args, &server, || view.borrow().clone(), &mut out);
                    if flow == Flow::Close {
                        write_out(&mut stream, &mut out).await?;
                        let _ = stream.shutdown().await;
                        return Ok(());
                    }
                }
                Ok(Parsed::Skip(n)) => buf.advance(n),
                Ok(Parsed::Incomplete) => break,
                Err(e) => {
                    Value::error(format!("ERR {e}")).encode(session.protocol(), &mut out);
                    write_out(&mut stream, &mut out).await?;
                    let _ = stream.shutdown().await;
                    anyhow::bail!("{e}");
                }
            }
        }
        // Subscribe to the event stream only while the client is subscribed to something.
        match (session.is_subscribed(), events.is_some()) {
            (true, false) => events = Some(shared.events.subscribe()),
            (false, true) => events = None,
            _ => {}
        }
        write_out(&mut stream, &mut out).await?;
        buf.reserve(16 * 1024);
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            ev = next_event(&mut events) => match ev {
                Ok(ev) => session.deliver(&ev, &mut out),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    anyhow::bail!("subscriber fell {n} events behind");
                }
                // The server is stopping.
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = tokio::time::sleep_until(auth_deadline), if !session.authenticated() => {
                anyhow::bail!("did not authenticate within {AUTH_TIMEOUT:?}");
            }
        }
    }
}

async fn next_event(
    events: &mut Option<broadcast::Receiver<Event>>,
) -> Result<Event, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "s3cret";
    const RUN_ID: &str = "0123456789abcdef0123456789abcdef01234567";

    fn server() -> ServerInfo<'static> {
        ServerInfo {
            run_id: RUN_ID,
            password: PW,
            tcp_port: 26379,
            process_id: 42,
            uptime: Duration::from_secs(90000),
        }
    }

    fn view() -> SentinelView {
        SentinelView {
            master_name: "ds1".into(),
            epoch: 3,
            primary: Some(Endpoint::new("10.0.0.1", 6380)),
            primary_down: false,
            replicas: vec![
                ReplicaEntry {
                    name: "node-b".into(),
                    ip: "10.0.0.2".into(),
                    port: 6380,
                    up: true,
                    offset: 1234,
                    link_up: true,
                },
                ReplicaEntry {
                    name: "node-c".into(),
                    ip: "10.0.0.3".into(),
                    port: 6380,
                    up: false,
                    offset: 1000,
                    link_up: false,
                },
            ],
            sentinels: vec![
                SentinelPeer {
                    name: "b".repeat(40),
                    ip: "10.0.0.2".into(),
                    port: 26379,
                    up: true,
                },
                SentinelPeer {
                    name: "c".repeat(40),
                    ip: "10.0.0.3".into(),
                    port: 26379,
                    up: false,
                },
            ],
            quorum: 2,
        }
    }

    /// Run one command (inline syntax) and return the reply bytes.
    fn run(s: &mut Session, v: &SentinelView, line: &str) -> Vec<u8> {
        let args = resp::split_args(line.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.handle(&args, &server(), || v.clone(), &mut out);
        out
    }

    fn authed(proto: u8) -> Session {
        let mut s = Session::new(7);
        let v = view();
        let r = run(&mut s, &v, &format!("HELLO {proto} AUTH default {PW}"));
        assert!(r.starts_with(if proto == 3 { b"%6" } else { b"*12" }));
        s
    }

    fn decode(bytes: &[u8]) -> Value {
        let (v, n) = resp::decode(bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len(), "one reply expected in {:?}", text(bytes));
        v
    }

    fn field(map: &Value, key: &str) -> String {
        let pairs: Vec<(Value, Value)> = match map {
            Value::Map(p) => p.clone(),
            Value::Array(flat) => flat
                .chunks(2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect(),
            other => panic!("not a map: {other:?}"),
        };
        for (k, v) in pairs {
            if k == Value::bulk(key) {
                let Value::Bulk(b) = v else { panic!() };
                return text(&b);
            }
        }
        panic!("no field {key}")
    }

    #[test]
    fn before_auth_only_auth_and_hello_pass_in_redis_check_order() {
        let v = view();
        let mut s = Session::new(1);
        assert_eq!(
            run(&mut s, &v, "PING"),
            b"-NOAUTH Authentication required.\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "SENTINEL masters"),
            b"-NOAUTH Authentication required.\r\n"
        );
        // Unknown commands and arity errors come before authentication, as in Redis.
        assert_eq!(
            run(&mut s, &v, "FOO"),
            b"-ERR unknown command 'FOO', with args beginning with: \r\n"
        );
        assert_eq!(
            run(&mut s, &v, "SENTINEL masters x"),
            b"-ERR wrong number of arguments for 'sentinel|masters' command\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "SENTINEL foo"),
            b"-ERR unknown subcommand 'foo'. Try SENTINEL HELP.\r\n"
        );
        assert!(run(&mut s, &v, "HELLO 3").starts_with(
            b"-NOAUTH HELLO must be called with the client already authenticated, otherwise"
        ));
        assert_eq!(
            run(&mut s, &v, "HELLO 4"),
            b"-NOPROTO unsupported protocol version\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "HELLO x"),
            b"-ERR Protocol version is not an integer or out of range\r\n"
        );
        let wrongpass = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
        assert_eq!(run(&mut s, &v, "AUTH wrong"), wrongpass);
        assert_eq!(run(&mut s, &v, &format!("AUTH other {PW}")), wrongpass);
        assert_eq!(run(&mut s, &v, "HELLO 3 AUTH default nope"), wrongpass);
        assert_eq!(run(&mut s, &v, "AUTH a b c"), b"-ERR syntax error\r\n");
        assert_eq!(
            run(&mut s, &v, "AUTH"),
            b"-ERR wrong number of arguments for 'auth' command\r\n"
        );
        assert!(!s.authenticated());
        assert_eq!(s.limits(), Limits::UNAUTHENTICATED);
        assert_eq!(run(&mut s, &v, &format!("AUTH {PW}")), b"+OK\r\n");
        assert_eq!(run(&mut s, &v, "PING"), b"+PONG\r\n");
        assert_eq!(s.limits(), Limits::AUTHENTICATED);
        let mut s = Session::new(2);
        assert_eq!(run(&mut s, &v, &format!("AUTH default {PW}")), b"+OK\r\n");
        // A later wrong AUTH does not log the client out (Redis keeps the old user).
        assert_eq!(run(&mut s, &v, "AUTH bad"), wrongpass);
        assert_eq!(run(&mut s, &v, "PING"), b"+PONG\r\n");
    }

    #[test]
    fn hello_answers_sentinels_map_and_switches_protocol() {
        let v = view();
        let mut s = Session::new(9);
        let r = run(
            &mut s,
            &v,
            &format!("HELLO 3 AUTH default {PW} SETNAME app"),
        );
        assert_eq!(
            r,
            b"%6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n\
              $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n$4\r\nmode\r\n$8\r\nsentinel\r\n\
              $7\r\nmodules\r\n*0\r\n"
                .to_vec()
        );
        assert_eq!(s.protocol(), Protocol::Resp3);
        assert_eq!(run(&mut s, &v, "CLIENT GETNAME"), b"$3\r\napp\r\n");
        // HELLO without a version keeps the protocol.
        assert!(run(&mut s, &v, "HELLO").starts_with(b"%6\r\n"));
        let r = run(&mut s, &v, "HELLO 2");
        assert!(r.starts_with(b"*12\r\n") && r.windows(4).any(|w| w == b":2\r\n"));
        assert_eq!(
            run(&mut s, &v, "HELLO 2 SETNAME"),
            b"-ERR Syntax error in HELLO option 'SETNAME'\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "HELLO 2 AUTH default x y"),
            b"-ERR Syntax error in HELLO option 'y'\r\n"
        );
    }

    #[test]
    fn client_subcommands() {
        let v = view();
        let mut s = authed(2);
        assert_eq!(run(&mut s, &v, "CLIENT ID"), b":7\r\n");
        assert_eq!(run(&mut s, &v, "CLIENT GETNAME"), b"$-1\r\n");
        assert_eq!(run(&mut s, &v, "CLIENT SETNAME foo"), b"+OK\r\n");
        assert_eq!(run(&mut s, &v, "client getname"), b"$3\r\nfoo\r\n");
        assert_eq!(
            run(&mut s, &v, "CLIENT SETNAME \"a b\""),
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        );
        assert_eq!(run(&mut s, &v, "CLIENT SETNAME \"\""), b"+OK\r\n");
        assert_eq!(run(&mut s, &v, "CLIENT GETNAME"), b"$-1\r\n");
        assert_eq!(
            run(&mut s, &v, "CLIENT SETINFO LIB-NAME redis-rs"),
            b"+OK\r\n"
        );
        assert_eq!(run(&mut s, &v, "CLIENT SETINFO lib-ver 1.8"), b"+OK\r\n");
        assert_eq!(
            run(&mut s, &v, "CLIENT SETINFO foo 1"),
            b"-ERR Unrecognized option 'foo'\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "CLIENT MAINT_NOTIFICATIONS on"),
            b"-ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "CLIENT"),
            b"-ERR wrong number of arguments for 'client' command\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "CLIENT ID x"),
            b"-ERR wrong number of arguments for 'client|id' command\r\n"
        );
        assert!(run(&mut s, &v, "CLIENT HELP").starts_with(b"*11\r\n+CLIENT"));
        let mut s3 = authed(3);
        assert_eq!(run(&mut s3, &v, "CLIENT GETNAME"), b"_\r\n");
    }

    #[test]
    fn ping_role_quit_and_unknown_commands() {
        let v = view();
        let mut s = authed(2);
        assert_eq!(run(&mut s, &v, "PING"), b"+PONG\r\n");
        assert_eq!(run(&mut s, &v, "PING hello"), b"$5\r\nhello\r\n");
        assert_eq!(
            run(&mut s, &v, "PING a b"),
            b"-ERR wrong number of arguments for 'ping' command\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "ROLE"),
            b"*2\r\n$8\r\nsentinel\r\n*1\r\n$3\r\nds1\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "ROLE x"),
            b"-ERR wrong number of arguments for 'role' command\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "SELECT 0"),
            b"-ERR unknown command 'SELECT', with args beginning with: '0' \r\n"
        );
        assert_eq!(
            run(&mut s, &v, "foo a b c"),
            b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' 'c' \r\n"
        );
        let long = "x".repeat(300);
        let r = text(&run(&mut s, &v, &format!("GET {long} {long}")));
        assert!(r.len() < 220, "{r}");
        let args = resp::split_args(b"QUIT").unwrap();
        let mut out = Vec::new();
        assert_eq!(
            s.handle(&args, &server(), || v.clone(), &mut out),
            Flow::Close
        );
        assert_eq!(out, b"+OK\r\n");
        let none = SentinelView {
            primary: None,
            ..view()
        };
        assert_eq!(
            run(&mut s, &none, "ROLE"),
            b"*2\r\n$8\r\nsentinel\r\n*0\r\n"
        );
    }

    #[test]
    fn get_master_addr_and_null_forms() {
        let v = view();
        let mut s2 = authed(2);
        let mut s3 = authed(3);
        let addr = b"*2\r\n$8\r\n10.0.0.1\r\n$4\r\n6380\r\n";
        assert_eq!(
            run(&mut s2, &v, "SENTINEL get-master-addr-by-name ds1"),
            addr
        );
        assert_eq!(
            run(&mut s3, &v, "SENTINEL GET-MASTER-ADDR-BY-NAME ds1"),
            addr
        );
        assert_eq!(
            run(&mut s2, &v, "SENTINEL get-master-addr-by-name nope"),
            b"*-1\r\n"
        );
        assert_eq!(
            run(&mut s3, &v, "SENTINEL get-master-addr-by-name nope"),
            b"_\r\n"
        );
        // A down primary is still named (Sentinel keeps answering with it until a switch).
        let down = SentinelView {
            primary_down: true,
            ..view()
        };
        assert_eq!(
            run(&mut s2, &down, "SENTINEL get-master-addr-by-name ds1"),
            addr
        );
        let none = SentinelView {
            primary: None,
            ..view()
        };
        assert_eq!(
            run(&mut s2, &none, "SENTINEL get-master-addr-by-name ds1"),
            b"*-1\r\n"
        );
        for cmd in ["master", "replicas", "slaves", "sentinels", "ckquorum"] {
            assert_eq!(
                run(&mut s2, &v, &format!("SENTINEL {cmd} nope")),
                b"-ERR No such master with that name\r\n"
            );
            assert_eq!(
                run(&mut s2, &none, &format!("SENTINEL {cmd} ds1")),
                b"-ERR No such master with that name\r\n"
            );
        }
        assert_eq!(run(&mut s2, &none, "SENTINEL masters"), b"*0\r\n");
    }

    #[test]
    fn master_is_a_map_in_resp3_and_a_flat_array_in_resp2() {
        let v = view();
        let mut s2 = authed(2);
        let mut s3 = authed(3);
        let r3 = run(&mut s3, &v, "SENTINEL master ds1");
        assert!(r3.starts_with(b"%20\r\n$4\r\nname\r\n$3\r\nds1\r\n$2\r\nip\r\n"));
        let r2 = run(&mut s2, &v, "SENTINEL master ds1");
        assert!(r2.starts_with(b"*40\r\n$4\r\nname\r\n"));
        let m = decode(&r2);
        assert_eq!(field(&m, "ip"), "10.0.0.1");
        assert_eq!(field(&m, "port"), "6380");
        assert_eq!(field(&m, "flags"), "master");
        assert_eq!(field(&m, "config-epoch"), "3");
        assert_eq!(field(&m, "num-slaves"), "2");
        assert_eq!(field(&m, "num-other-sentinels"), "2");
        assert_eq!(field(&m, "quorum"), "2");
        for key in [
            "runid",
            "link-pending-commands",
            "link-refcount",
            "last-ping-sent",
            "last-ok-ping-reply",
            "last-ping-reply",
            "down-after-milliseconds",
            "info-refresh",
            "role-reported",
            "role-reported-time",
            "failover-timeout",
            "parallel-syncs",
        ] {
            field(&m, key);
        }
        // masters: an array of the same entries (maps in RESP3).
        let ms = run(&mut s3, &v, "SENTINEL masters");
        assert_eq!(ms, [b"*1\r\n".as_slice(), &r3].concat());
        let down = SentinelView {
            primary_down: true,
            ..view()
        };
        let m = decode(&run(&mut s2, &down, "SENTINEL master ds1"));
        assert_eq!(field(&m, "flags"), "s_down,o_down,master");
        // A run id like redis's (it was empty), new with a new primary.
        let id = field(&m, "runid");
        assert!(
            id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id:?}"
        );
        let next = SentinelView { epoch: 4, ..view() };
        let m2 = decode(&run(&mut s2, &next, "SENTINEL master ds1"));
        assert_ne!(field(&m2, "runid"), id);
    }

    #[test]
    fn replicas_and_sentinels_entries() {
        let v = view();
        let mut s3 = authed(3);
        let Value::Array(rs) = decode(&run(&mut s3, &v, "SENTINEL replicas ds1")) else {
            panic!()
        };
        assert!(matches!(&rs[0], Value::Map(p) if p.len() == 21));
        assert_eq!(field(&rs[0], "name"), "10.0.0.2:6380");
        assert_eq!(field(&rs[0], "flags"), "slave");
        assert_eq!(field(&rs[0], "master-link-status"), "ok");
        assert_eq!(field(&rs[0], "master-host"), "10.0.0.1");
        assert_eq!(field(&rs[0], "master-port"), "6380");
        assert_eq!(field(&rs[0], "slave-repl-offset"), "1234");
        assert_eq!(field(&rs[1], "flags"), "s_down,slave");
        assert_eq!(field(&rs[1], "master-link-status"), "err");
        assert_eq!(
            run(&mut s3, &v, "SENTINEL slaves ds1"),
            run(&mut s3, &v, "SENTINEL replicas ds1")
        );
        let Value::Array(ss) = decode(&run(&mut s3, &v, "SENTINEL sentinels ds1")) else {
            panic!()
        };
        assert_eq!(ss.len(), 2);
        assert_eq!(field(&ss[0], "name"), "b".repeat(40));
        assert_eq!(field(&ss[0], "runid"), "b".repeat(40));
        assert_eq!(field(&ss[0], "ip"), "10.0.0.2");
        assert_eq!(field(&ss[0], "port"), "26379");
        assert_eq!(field(&ss[0], "flags"), "sentinel");
        assert_eq!(field(&ss[1], "flags"), "s_down,sentinel");
        let v6 = SentinelView {
            replicas: vec![ReplicaEntry {
                ip: "fd00::2".into(),
                port: 6380,
                ..Default::default()
            }],
            ..view()
        };
        let Value::Array(rs) = decode(&run(&mut s3, &v6, "SENTINEL replicas ds1")) else {
            panic!()
        };
        assert_eq!(field(&rs[0], "name"), "[fd00::2]:6380");
    }

    #[test]
    fn ckquorum_texts_match_sentinel() {
        let mut s = authed(2);
        // Three agents, one peer down: 2 usable of 3, quorum 2.
        assert_eq!(
            run(&mut s, &view(), "SENTINEL ckquorum ds1"),
            b"+OK 2 usable Sentinels. Quorum and failover authorization can be reached\r\n"
        );
        let both_down = SentinelView {
            sentinels: view()
                .sentinels
                .into_iter()
                .map(|p| SentinelPeer { up: false, ..p })
                .collect(),
            ..view()
        };
        assert_eq!(
            text(&run(&mut s, &both_down, "SENTINEL ckquorum ds1")),
            "-NOQUORUM 1 usable Sentinels. Not enough available Sentinels to reach the specified \
             quorum for this master. Not enough available Sentinels to reach the majority and \
             authorize a failover\r\n"
        );
        let quorum1 = SentinelView {
            quorum: 1,
            ..both_down
        };
        assert_eq!(
            text(&run(&mut s, &quorum1, "SENTINEL ckquorum ds1")),
            "-NOQUORUM 1 usable Sentinels. Not enough available Sentinels to reach the majority \
             and authorize a failover\r\n"
        );
        let quorum3 = SentinelView {
            quorum: 3,
            ..view()
        };
        assert_eq!(
            text(&run(&mut s, &quorum3, "SENTINEL ckquorum ds1")),
            "-NOQUORUM 2 usable Sentinels. Not enough available Sentinels to reach the specified \
             quorum for this master\r\n"
        );
    }

    #[test]
    fn myid_and_refused_configuration_commands() {
        let v = view();
        let mut s = authed(2);
        assert_eq!(
            run(&mut s, &v, "SENTINEL myid"),
            format!("$40\r\n{RUN_ID}\r\n").as_bytes()
        );
        assert_eq!(
            run(&mut s, &v, "SENTINEL failover ds1"),
            b"-ERR this data store is managed by redis-steward; use 'redis-steward switchover'\r\n"
        );
        for cmd in [
            "SENTINEL set ds1 quorum 1",
            "SENTINEL monitor x 1.2.3.4 6379 2",
            "SENTINEL remove ds1",
            "SENTINEL reset *",
            "SENTINEL config set announce-ip 1.2.3.4",
            "SENTINEL flushconfig",
        ] {
            let r = text(&run(&mut s, &v, cmd));
            assert!(
                r.starts_with("-ERR this data store is managed by redis-steward; SENTINEL ")
                    && r.contains("is not available"),
                "{cmd}: {r}"
            );
        }
        // Refusals need authentication like everything else.
        let mut anon = Session::new(1);
        assert_eq!(
            run(&mut anon, &v, "SENTINEL failover ds1"),
            b"-NOAUTH Authentication required.\r\n"
        );
    }

    #[test]
    fn info_has_server_and_sentinel_sections() {
        let v = view();
        let mut s = authed(2);
        let Value::Bulk(all) = decode(&run(&mut s, &v, "INFO")) else {
            panic!()
        };
        let all = text(&all);
        assert!(
            all.starts_with("# Server\r\nredis_version:7.0.15\r\n"),
            "{all}"
        );
        assert!(all.contains("redis_mode:sentinel\r\n"));
        assert!(all.contains(&format!("run_id:{RUN_ID}\r\n")));
        assert!(all.contains("tcp_port:26379\r\nuptime_in_seconds:90000\r\nuptime_in_days:1\r\n"));
        assert!(all.contains("\r\n\r\n# Sentinel\r\nsentinel_masters:1\r\n"));
        assert!(all.ends_with(
            "master0:name=ds1,status=ok,address=10.0.0.1:6380,slaves=2,sentinels=3\r\n"
        ));
        let Value::Bulk(sent) = decode(&run(&mut s, &v, "INFO Sentinel")) else {
            panic!()
        };
        assert!(text(&sent).starts_with("# Sentinel\r\n"));
        assert_eq!(run(&mut s, &v, "INFO foo"), b"$0\r\n\r\n");
        let down = SentinelView {
            primary_down: true,
            ..view()
        };
        assert!(run(&mut s, &down, "INFO sentinel")
            .windows(12)
            .any(|w| w == b"status=odown"));
        let none = SentinelView {
            primary: None,
            ..view()
        };
        let Value::Bulk(b) = decode(&run(&mut s, &none, "INFO sentinel")) else {
            panic!()
        };
        let b = text(&b);
        assert!(b.contains("sentinel_masters:0\r\n") && !b.contains("master0:"));
    }

    #[test]
    fn one_command_takes_one_snapshot() {
        let mut s = authed(2);
        for cmd in [
            "SENTINEL masters",
            "SENTINEL master ds1",
            "SENTINEL replicas ds1",
            "SENTINEL get-master-addr-by-name ds1",
            "INFO",
            "ROLE",
        ] {
            let args = resp::split_args(cmd.as_bytes()).unwrap();
            let mut calls = 0;
            let mut out = Vec::new();
            s.handle(
                &args,
                &server(),
                || {
                    calls += 1;
                    view()
                },
                &mut out,
            );
            assert_eq!(calls, 1, "{cmd}");
        }
    }

    #[test]
    fn subscriptions_in_resp2_confirm_and_restrict() {
        let v = view();
        let mut s = authed(2);
        assert_eq!(
            run(&mut s, &v, "SUBSCRIBE +switch-master +sdown"),
            b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n\
              *3\r\n$9\r\nsubscribe\r\n$6\r\n+sdown\r\n:2\r\n"
                .to_vec()
        );
        assert_eq!(run(&mut s, &v, "PING"), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(
            run(&mut s, &v, "PING x"),
            b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "ROLE"),
            b"-ERR Can't execute 'role': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT \
              / RESET are allowed in this context\r\n"
                .to_vec()
        );
        assert!(text(&run(&mut s, &v, "sentinel masters"))
            .starts_with("-ERR Can't execute 'sentinel|masters': only"));
        assert_eq!(
            run(&mut s, &v, "PSUBSCRIBE *"),
            b"*3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:3\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "UNSUBSCRIBE"),
            b"*3\r\n$11\r\nunsubscribe\r\n$14\r\n+switch-master\r\n:2\r\n\
              *3\r\n$11\r\nunsubscribe\r\n$6\r\n+sdown\r\n:1\r\n"
                .to_vec()
        );
        assert_eq!(
            run(&mut s, &v, "PUNSUBSCRIBE"),
            b"*3\r\n$12\r\npunsubscribe\r\n$1\r\n*\r\n:0\r\n"
        );
        assert!(!s.is_subscribed());
        assert_eq!(
            run(&mut s, &v, "UNSUBSCRIBE"),
            b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
        );
        assert_eq!(
            run(&mut s, &v, "PUNSUBSCRIBE x"),
            b"*3\r\n$12\r\npunsubscribe\r\n$1\r\nx\r\n:0\r\n"
        );
        assert_eq!(run(&mut s, &v, "PING"), b"+PONG\r\n");
        assert_eq!(
            run(&mut s, &v, "SUBSCRIBE a a"),
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
                .to_vec()
        );
        assert_eq!(
            run(&mut s, &v, "SUBSCRIBE"),
            b"-ERR wrong number of arguments for 'subscribe' command\r\n"
        );
    }

    #[test]
    fn subscriptions_in_resp3_are_pushes_and_allow_everything() {
        let v = view();
        let mut s = authed(3);
        assert_eq!(
            run(&mut s, &v, "SUBSCRIBE +switch-master"),
            b">3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
        );
        assert_eq!(run(&mut s, &v, "PING"), b"+PONG\r\n");
        assert_eq!(
            run(&mut s, &v, "ROLE"),
            b"*2\r\n$8\r\nsentinel\r\n*1\r\n$3\r\nds1\r\n"
        );
        run(&mut s, &v, "UNSUBSCRIBE");
        assert_eq!(
            run(&mut s, &v, "UNSUBSCRIBE"),
            b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"
        );
    }

    #[test]
    fn events_reach_channel_and_pattern_subscribers() {
        let v = view();
        let ev = Event {
            channel: "+switch-master",
            payload: "ds1 10.0.0.1 6380 10.0.0.2 6380".into(),
        };
        let mut s = authed(2);
        run(&mut s, &v, "SUBSCRIBE +switch-master");
        run(&mut s, &v, "PSUBSCRIBE *switch* +sdown");
        let mut out = Vec::new();
        s.deliver(&ev, &mut out);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$31\r\nds1 10.0.0.1 6380 10.0.0.2 6380\r\n\
              *4\r\n$8\r\npmessage\r\n$8\r\n*switch*\r\n$14\r\n+switch-master\r\n$31\r\nds1 10.0.0.1 6380 10.0.0.2 6380\r\n"
                .to_vec()
        );
        let mut s3 = authed(3);
        run(&mut s3, &v, "SUBSCRIBE +switch-master");
        let mut out = Vec::new();
        s3.deliver(&ev, &mut out);
        assert!(out.starts_with(b">3\r\n$7\r\nmessage\r\n"));
        let mut out = Vec::new();
        s3.deliver(
            &Event {
                channel: "+sdown",
                payload: "x".into(),
            },
            &mut out,
        );
        assert!(out.is_empty());
    }

    fn evs(old: &SentinelView, new: &SentinelView) -> Vec<(&'static str, String)> {
        view_events(old, new)
            .into_iter()
            .map(|e| (e.channel, e.payload))
            .collect()
    }

    #[test]
    fn view_diffs_become_sentinel_events() {
        let a = view();
        assert!(evs(&a, &a).is_empty());
        // Failover: new epoch, new primary.
        let b = SentinelView {
            epoch: 4,
            primary: Some(Endpoint::new("10.0.0.2", 6380)),
            ..view()
        };
        assert_eq!(
            evs(&a, &b),
            vec![
                ("+new-epoch", "4".into()),
                ("+switch-master", "ds1 10.0.0.1 6380 10.0.0.2 6380".into()),
            ]
        );
        // Down and back.
        let down = SentinelView {
            primary_down: true,
            ..view()
        };
        assert_eq!(
            evs(&a, &down),
            vec![
                ("+sdown", "master ds1 10.0.0.1 6380".into()),
                ("+odown", "master ds1 10.0.0.1 6380 #quorum 2/2".into()),
            ]
        );
        assert_eq!(
            evs(&down, &a),
            vec![
                ("-sdown", "master ds1 10.0.0.1 6380".into()),
                ("-odown", "master ds1 10.0.0.1 6380".into()),
            ]
        );
        // A switch away from a down primary: no -sdown for it (Sentinel resets it silently).
        assert_eq!(
            evs(&down, &b),
            vec![
                ("+new-epoch", "4".into()),
                ("+switch-master", "ds1 10.0.0.1 6380 10.0.0.2 6380".into()),
            ]
        );
        // No old address, no switch; an epoch that does not grow is no news.
        let none = SentinelView {
            primary: None,
            ..view()
        };
        assert!(evs(&none, &a).is_empty());
        assert!(evs(&a, &none).is_empty());
        let older = SentinelView { epoch: 2, ..view() };
        assert!(evs(&a, &older).is_empty());
        // Replicas going down and up.
        let mut r = view();
        r.replicas[0].up = false;
        r.replicas[1].up = true;
        assert_eq!(
            evs(&a, &r),
            vec![
                (
                    "+sdown",
                    "slave 10.0.0.2:6380 10.0.0.2 6380 @ ds1 10.0.0.1 6380".into()
                ),
                (
                    "-sdown",
                    "slave 10.0.0.3:6380 10.0.0.3 6380 @ ds1 10.0.0.1 6380".into()
                ),
            ]
        );
    }

    #[test]
    fn glob_matches_like_redis() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", "+switch-master"));
        assert!(m("*", ""));
        assert!(m("+switch-*", "+switch-master"));
        assert!(m("*master", "+switch-master"));
        assert!(m("*s*d*n", "+sdown"));
        assert!(!m("+sdown", "-sdown"));
        assert!(m("?sdown", "-sdown"));
        assert!(m("[-+]sdown", "-sdown"));
        assert!(m("[-+]sdown", "+sdown"));
        assert!(!m("[^-+]sdown", "-sdown"));
        assert!(m("[^-+]sdown", "xsdown"));
        assert!(m("[a-z]down", "sdown"));
        assert!(m("[z-a]down", "sdown"), "reversed ranges work as in Redis");
        assert!(m("\\*x", "*x"));
        assert!(!m("\\*x", "ax"));
        assert!(!m("+odown", "+odown "));
        assert!(!m("a*b", "acbd"));
        assert!(m("a*b*", "acbd"));
        assert!(m("a**b", "axxb"));
        // Backtracking past a partial match.
        assert!(m("*ab", "aab"));
        assert!(m("*a?c", "abxabc"));
        // Hostile patterns finish quickly.
        let hostile = format!("{}b", "*a".repeat(200));
        let start = std::time::Instant::now();
        assert!(!glob_match(hostile.as_bytes(), &[b'a'; 4000]));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(secret_eq(b"abc", b"abc"));
        assert!(!secret_eq(b"abc", b"abd"));
        assert!(!secret_eq(b"abc", b"abcd"));
        assert!(!secret_eq(b"", b"x"));
    }

    #[test]
    fn tls_config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = format!("{:#}", server_tls_config(&missing, &missing).unwrap_err());
        assert!(err.contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = format!("{:#}", server_tls_config(&empty, &empty).unwrap_err());
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
    }
}
