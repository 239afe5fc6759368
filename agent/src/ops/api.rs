//! The agent's local HTTP API (loopback by default): `GET /status` (JSON), `GET /metrics`
//! (Prometheus text) and the health checks (`/primary`, `/replica`, `/health`, `/liveness`,
//! `/readiness`; `/healthz` is `/health`, see `ops::health`) read the parts' snapshots; `POST /switchover` and
//! `POST /backup` send an intent to the election loop or the backup shipper and wait for its
//! answer, never acting here themselves.

use crate::node::supervisor::RedisState;
use crate::ops::health;
use crate::ops::metrics::Metrics;
use crate::ops::status::{self, NodeStatus, StaticInfo};
use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub struct ApiState {
    pub static_info: StaticInfo,
    pub redis: watch::Receiver<RedisState>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// HA data stores: the election's view, and the gossip transport's counters.
    pub ha: Option<watch::Receiver<crate::cluster::ha::HaStatus>>,
    /// HA data stores: requests to the election loop (switchover).
    pub ha_commands: Option<tokio::sync::mpsc::Sender<crate::cluster::ha::HaCommand>>,
    pub gossip_counters: Option<Arc<crate::cluster::gossip::transport::GossipCounters>>,
    pub hook_counters: Option<Arc<crate::cluster::hook::HookCounters>>,
    /// Backups on: the shipper's state and its command channel (`backup now`).
    pub backup: Option<(
        watch::Receiver<crate::backup::shipper::BackupStatus>,
        tokio::sync::mpsc::Sender<crate::backup::shipper::BackupCommand>,
    )>,
    /// HA data stores: the epoch history this node keeps (`cluster::history`).
    pub history: Option<std::path::PathBuf>,
    /// What `POST` requests must send as `Authorization: Bearer …` ([`API_TOKEN_FILE`]).
    pub token: String,
}

/// The API token's file in the state directory: mode 0640, so root and the agent's group
/// can read it (the CLI does), and nobody else can change the data store through the API.
pub const API_TOKEN_FILE: &str = "api.token";

/// Reads the token, making one (32 random bytes, hex) on the first start.
pub fn ensure_token(state_dir: &std::path::Path) -> Result<String> {
    let path = state_dir.join(API_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    crate::node::secrets::write_file_atomic(&path, format!("{token}\n").as_bytes(), 0o640)?;
    Ok(token)
}

/// The answer to `POST /switchover`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SwitchoverAnswer {
    pub started: bool,
    pub message: String,
}

#[derive(Debug, serde::Deserialize)]
struct SwitchoverQuery {
    to: Option<String>,
}

impl ApiState {
    pub fn status(&self) -> NodeStatus {
        let ha = self.ha.as_ref().map(|h| h.borrow().clone());
        let mut s = status::build(
            &self.static_info,
            &self.redis.borrow(),
            ha,
            self.started.elapsed().as_secs(),
        );
        status::add_backup(
            &mut s,
            self.backup
                .as_ref()
                .map(|(b, _)| b.borrow().clone().as_of(crate::backup::now_ms())),
        );
        s
    }
}

/// Every endpoint: for `api.listen` (loopback only, see `config`). Those that change
/// anything also need the API token.
pub fn router(state: Arc<ApiState>) -> Router {
    let mutating = Router::new()
        .route("/switchover", axum::routing::post(post_switchover))
        .route("/backup", axum::routing::post(post_backup))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    read_only(Router::new()).merge(mutating).with_state(state)
}

async fn require_token(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared in full whatever the first difference, so timing tells nothing.
    let matches = given.is_some_and(|g| {
        g.len() == s.token.len()
            && g.bytes()
                .zip(s.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        return next.run(req).await;
    }
    let message = format!(
        "{} {} changes the data store and needs the API token (Authorization: Bearer, from \
         {API_TOKEN_FILE} in the agent's state directory; redis-steward reads it when run as \
         root or as a member of the agent's group)",
        req.method(),
        req.uri().path()
    );
    (
        StatusCode::UNAUTHORIZED,
        Json(SwitchoverAnswer {
            started: false,
            message,
        }),
    )
        .into_response()
}

/// The endpoints that change nothing: for `api.public_listen`, which other machines reach
/// (a load balancer's health checks, a Prometheus server).
pub fn public_router(state: Arc<ApiState>) -> Router {
    read_only(Router::new()).with_state(state)
}

fn read_only(r: Router<Arc<ApiState>>) -> Router<Arc<ApiState>> {
    r.route("/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_health))
        .route("/health", get(get_health))
        .route("/primary", get(get_primary))
        .route("/replica", get(get_replica))
        .route("/liveness", get(get_liveness))
        .route("/readiness", get(get_readiness))
        .route("/history", get(get_history))
}

/// The data store's epochs as this node kept them (`[]` for a one-node store).
async fn get_history(
    State(s): State<Arc<ApiState>>,
) -> Result<Json<Vec<crate::cluster::history::Promotion>>, (StatusCode, String)> {
    let Some(path) = &s.history else {
        return Ok(Json(Vec::new()));
    };
    crate::cluster::history::load(path).map(Json).map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {}: {e}\n", path.display()),
        )
    })
}

/// `backup now`: a snapshot on this node (the primary); answers once it is uploaded.
async fn post_backup(State(s): State<Arc<ApiState>>) -> (StatusCode, Json<SwitchoverAnswer>) {
    let answer =
        |code, started, message: String| (code, Json(SwitchoverAnswer { started, message }));
    let Some((_, commands)) = &s.backup else {
        return answer(
            StatusCode::CONFLICT,
            false,
            "backups are off: set backup.url and backup.key_file".into(),
        );
    };
    let (reply, rx) = tokio::sync::oneshot::channel();
    if commands
        .send(crate::backup::shipper::BackupCommand::SnapshotNow(reply))
        .await
        .is_err()
    {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            "the backup shipper is not running".into(),
        );
    }
    // A snapshot of a large data store takes a while; the CLI waits as long.
    match tokio::time::timeout(Duration::from_secs(3600), rx).await {
        Ok(Ok(Ok(m))) => answer(StatusCode::OK, true, m),
        Ok(Ok(Err(why))) => answer(StatusCode::CONFLICT, false, why),
        _ => answer(
            StatusCode::GATEWAY_TIMEOUT,
            false,
            "no snapshot within an hour".into(),
        ),
    }
}

/// Ask the primary (through this node's election loop) for a planned switchover. Answers
/// 200 when it started, 409 with the reason when it was refused.
async fn post_switchover(
    State(s): State<Arc<ApiState>>,
    axum::extract::Query(q): axum::extract::Query<SwitchoverQuery>,
) -> (StatusCode, Json<SwitchoverAnswer>) {
    let refuse = |code, message: String| {
        (
            code,
            Json(SwitchoverAnswer {
                started: false,
                message,
            }),
        )
    };
    let Some(commands) = &s.ha_commands else {
        return refuse(
            StatusCode::CONFLICT,
            "a one-node data store has no other node to hand over to".into(),
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let sent = commands
        .send(crate::cluster::ha::HaCommand::Switchover { to: q.to, reply })
        .await;
    if sent.is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the election loop is not running".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(15), answer).await {
        Ok(Ok(Ok(message))) => (
            StatusCode::OK,
            Json(SwitchoverAnswer {
                started: true,
                message,
            }),
        ),
        Ok(Ok(Err(why))) => refuse(StatusCode::CONFLICT, why),
        _ => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            "no answer from the election loop within 15 s".into(),
        ),
    }
}

async fn get_status(State(s): State<Arc<ApiState>>) -> Json<NodeStatus> {
    Json(s.status())
}

async fn get_metrics(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    s.metrics.observe_redis(&s.redis.borrow());
    if let Some(c) = &s.gossip_counters {
        s.metrics.observe_gossip(c);
    }
    if let Some(h) = &s.ha {
        s.metrics.observe_ha(&h.borrow());
    }
    s.metrics.backup_enabled.set(s.backup.is_some() as i64);
    if let Some((b, _)) = &s.backup {
        s.metrics
            .observe_backup(&b.borrow().clone().as_of(crate::backup::now_ms()));
    }
    if let Some(c) = &s.hook_counters {
        s.metrics.observe_hook(c);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// The supervisor loop counts as stalled after this long (the systemd watchdog's own test is
/// twice its ping interval; this is for orchestrators that ask `/liveness` instead).
const LOOP_STALLED_AFTER: Duration = Duration::from_secs(10);

impl ApiState {
    /// What the health checks look at, from this moment's snapshots.
    fn health_facts(&self) -> health::Facts {
        let redis = self.redis.borrow();
        let info = &redis.info;
        let ha = self.ha.as_ref().map(|h| h.borrow().clone());
        let me = ha
            .as_ref()
            .and_then(|h| h.members.iter().find(|m| m.is_self).cloned());
        health::Facts {
            redis_healthy: redis.healthy,
            agent_alive: redis.loop_alive_at.elapsed() < LOOP_STALLED_AFTER,
            single: ha.is_none(),
            role: ha
                .as_ref()
                .map_or_else(|| "primary".into(), |h| h.role.clone()),
            writable: ha.as_ref().is_none_or(|h| h.writable),
            epoch: ha.as_ref().map_or(0, |h| h.epoch),
            linked: info.get("role") == Some("slave")
                && info.get("master_link_status") == Some("up"),
            lag_bytes: me.and_then(|m| m.lag),
            lag_seconds: info.get_u64("master_last_io_seconds_ago"),
        }
    }

    fn check(&self, check: health::Check) -> (StatusCode, String) {
        let (code, why) = health::judge(check, &self.health_facts());
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        (code, format!("{why}\n"))
    }
}

async fn get_health(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    s.check(health::Check::Health)
}

async fn get_primary(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    s.check(health::Check::Primary)
}

#[derive(Debug, serde::Deserialize)]
struct ReplicaQuery {
    lag: Option<String>,
}

async fn get_replica(
    State(s): State<Arc<ApiState>>,
    axum::extract::Query(q): axum::extract::Query<ReplicaQuery>,
) -> (StatusCode, String) {
    let max_lag = match q.lag.as_deref().map(health::parse_lag).transpose() {
        Ok(l) => l,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    s.check(health::Check::Replica { max_lag })
}

async fn get_liveness(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    s.check(health::Check::Liveness)
}

async fn get_readiness(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    s.check(health::Check::Readiness)
}

/// Bind the API listener (fails early and clearly if the address is taken).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on api.listen {addr} (is another agent running?)"))
}

/// A minimal HTTP/1.0 GET, enough for the CLI to talk to its own agent on loopback.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let (code, body) = http_request(addr, "GET", path, None, Duration::from_secs(5)).await?;
    if !(200..300).contains(&code) {
        bail!("agent API answered {code}: {}", body.trim());
    }
    Ok(body)
}

/// One HTTP/1.0 request without a body: (status code, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req =
            format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, io)
        .await
        .with_context(|| {
            format!(
                "agent API at {addr} did not answer within {} s",
                timeout.as_secs()
            )
        })?
        .with_context(|| format!("cannot reach the agent API at {addr} (is the agent running?)"))?;
    let text = String::from_utf8(buf).context("agent API sent invalid UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("agent API sent a malformed HTTP response")?;
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("agent API sent a malformed status line: {status_line}"))?;
    Ok((code, body.to_string()))
}

pub async fn fetch_status(addr: SocketAddr) -> Result<NodeStatus> {
    let body = http_get(addr, "/status").await?;
    serde_json::from_str(&body).context("agent API sent a status this version cannot read")
}
