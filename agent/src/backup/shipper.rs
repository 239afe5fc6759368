//! The backup shipper: while this node is the writable primary, it uploads a snapshot (an AOF
//! rewrite's base) and then the write-ahead log (the new bytes of redis's incremental AOF
//! files) every `wal_interval`, sealed (`format`), to the backup store; it starts a
//! new chain on every rewrite (daily snapshot, `backup now`, a new primary, or one redis
//! starts by itself) and prunes old chains by the plan's history (`retention`).
//!
//! One select loop. Decisions come from `plan::next_steps` (pure); this module only
//! observes (manifest, file sizes), carries steps out in order, and advances the cursor after
//! each success. Redis keeps the files a rewrite replaces (`aof-disable-auto-gc yes`) until
//! they are uploaded, so the AOF directory itself is the spool: a store outage loses nothing,
//! and when the un-uploaded bytes pass `spool_limit` the agent says so loudly (log, status,
//! metric) instead of dropping WAL.

use crate::backup::aof::Manifest;
use crate::backup::catalog::{ChainId, ObjectName};
use crate::backup::format::Sealer;
use crate::backup::keys::KeyRing;
use crate::backup::now_ms;
use crate::backup::plan::{self, Cursor, Observed, RewriteReply, RewriteSent, Step};
use crate::node::redis_client::AdminLink;
use crate::store::Store;
use anyhow::{Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

/// One WAL object holds at most this much (a backlog after an outage is cut up); it is
/// sealed in memory, so this bounds the shipper's memory too.
const MAX_SEGMENT: u64 = 8 << 20;
/// Read size when streaming a base.
const READ_CHUNK: usize = 1 << 20;
/// Sealed chunks (1 MiB each) the sealing thread may run ahead of a base's upload.
const SEAL_AHEAD: usize = 4;

pub struct BackupSettings {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub data_store: String,
    pub node: String,
    pub aof_dir: PathBuf,
    pub socket: PathBuf,
    pub admin_user: String,
    pub admin_password: String,
    pub wal_interval: Duration,
    /// Daily snapshot time, UTC.
    pub snapshot_time: (u8, u8),
    pub spool_limit_bytes: u64,
    pub zstd_level: i32,
    /// Restorable history to keep; `None`: only the newest restorable chain.
    pub history: Option<Duration>,
}

impl BackupStatus {
    /// The status as of `now_ms`: `lag_seconds` counted from `lag_since_unix_ms`.
    pub fn as_of(mut self, now_ms: u64) -> BackupStatus {
        if let Some(since) = self.lag_since_unix_ms {
            self.lag_seconds = now_ms.saturating_sub(since) / 1000;
        }
        self
    }
}

/// What the shipper reports (status, metrics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStatus {
    /// off | standby | snapshotting | shipping | failing
    pub state: String,
    pub chain: Option<String>,
    pub last_snapshot_unix_ms: Option<u64>,
    pub last_upload_unix_ms: Option<u64>,
    /// WAL bytes written but not uploaded yet, and for how long some have waited.
    pub lag_bytes: u64,
    pub lag_seconds: u64,
    /// Since when (wall clock) WAL has been waiting: readers count `lag_seconds` on from it
    /// with [`BackupStatus::as_of`], so a long upload does not freeze it.
    #[serde(default)]
    pub lag_since_unix_ms: Option<u64>,
    /// The un-uploaded WAL passed the spool limit.
    pub spool_full: bool,
    pub last_error: Option<String>,
    /// Bytes stored (sealed: compressed and encrypted) and objects uploaded since start.
    pub uploaded_bytes: u64,
    pub uploads: u64,
    /// Cycles that failed (an upload, a listing, a rewrite request) since start.
    #[serde(default)]
    pub upload_failures: u64,
    /// The last snapshot: how long its upload took and how many bytes it stored.
    #[serde(default)]
    pub last_snapshot_duration_ms: Option<u64>,
    #[serde(default)]
    pub last_snapshot_bytes: Option<u64>,
    /// The newest moment whose writes are all in the store (the current chain's base and
    /// every WAL byte redis had written by then): the recovery point if this node died now.
    #[serde(default)]
    pub newest_restorable_unix_ms: Option<u64>,
    /// The start of the oldest restorable chain in the store, as of the last prune.
    #[serde(default)]
    pub oldest_restorable_unix_ms: Option<u64>,
    /// How far the WAL is uploaded: the incremental file's number and offset.
    pub wal_incr_seq: Option<u64>,
    pub wal_offset: u64,
}

pub enum BackupCommand {
    /// Take a snapshot now (a new chain); answers when it is uploaded, or why not.
    SnapshotNow(oneshot::Sender<Result<String, String>>),
}

pub type BackupHandle = crate::actor::ActorHandle<BackupStatus>;

/// Start the shipper. `role` says, at every moment, whether this node is the writable
/// primary, and of which epoch.
pub fn spawn(
    s: BackupSettings,
    role: watch::Receiver<Option<u64>>,
) -> (BackupHandle, mpsc::Sender<BackupCommand>) {
    let (tx, rx) = mpsc::channel(4);
    let handle = crate::actor::ActorHandle::spawn(
        BackupStatus {
            state: "standby".into(),
            ..BackupStatus::default()
        },
        move |status, shutdown| async move {
            let admin = AdminLink::new(&s.socket, &s.admin_user, &s.admin_password);
            let mut shipper = Shipper {
                s,
                admin,
                status,
                cursor: None,
                chain: None,
                epoch: None,
                rewrite_pending_from: None,
                rewrite_sent: None,
                snapshot_requested: Vec::new(),
                last_snapshot_ms: None,
                failures: 0,
                retry_at: None,
                lag_since: None,
                shipped_through_ms: None,
                spool_warned_at: None,
                owner_checked: false,
            };
            shipper.run(role, rx, shutdown).await
        },
    );
    (handle, tx)
}

struct Shipper {
    s: BackupSettings,
    admin: AdminLink,
    status: watch::Sender<BackupStatus>,
    cursor: Option<Cursor>,
    chain: Option<ChainId>,
    /// The epoch the chain belongs to.
    epoch: Option<u64>,
    rewrite_pending_from: Option<u64>,
    /// The clock around the last BGREWRITEAOF, until a chain starts (`plan::RewriteSent`).
    rewrite_sent: Option<RewriteSent>,
    /// `backup now` callers waiting for the next snapshot.
    snapshot_requested: Vec<oneshot::Sender<Result<String, String>>>,
    last_snapshot_ms: Option<u64>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Wall clock (ms) since which some WAL has been waiting.
    lag_since: Option<u64>,
    /// The last observation (wall clock, ms) at which every WAL byte was uploaded: WAL
    /// waiting now was written after it, so the lag is counted from there.
    shipped_through_ms: Option<u64>,
    spool_warned_at: Option<Instant>,
    /// The location is this data store's (checked, or claimed, once per run).
    owner_checked: bool,
}

/// The daily snapshot is due: today's snapshot time has passed and no snapshot since.
pub fn snapshot_due(now_ms: u64, at: (u8, u8), last_snapshot_ms: Option<u64>) -> bool {
    const DAY: u64 = 86_400_000;
    let today = now_ms - now_ms % DAY + (at.0 as u64 * 3600 + at.1 as u64 * 60) * 1000;
    let due_at = if now_ms >= today { today } else { today - DAY };
    last_snapshot_ms.is_none_or(|last| last < due_at)
}

impl Shipper {
    async fn run(
        &mut self,
        mut role: watch::Receiver<Option<u64>>,
        mut commands: mpsc::Receiver<BackupCommand>,
        mut shutdown: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut role_open = true;
        let mut tick = tokio::time::interval(self.s.wal_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // First what happened, then the work, which a shutdown may cut short: an upload
            // dropped halfway leaves the cursor where it was (it advances only on success).
            let role_now = tokio::select! {
                _ = tick.tick() => *role.borrow(),
                // A one-node data store's role never changes: its sender is gone at once.
                changed = role.changed(), if role_open => {
                    if changed.is_err() {
                        role_open = false;
                        continue;
                    }
                    *role.borrow_and_update()
                }
                Some(cmd) = commands.recv() => match cmd {
                    BackupCommand::SnapshotNow(reply) => {
                        let r = *role.borrow();
                        if r.is_none() {
                            let _ = reply.send(Err("only the primary takes snapshots; this node is not it".into()));
                            continue;
                        }
                        self.snapshot_requested.push(reply);
                        self.retry_at = None;
                        r
                    }
                },
                done = shutdown.recv() => {
                    if let Some(done) = done { let _ = done.send(()); }
                    return;
                }
            };
            tokio::select! {
                _ = self.cycle(role_now) => {}
                done = shutdown.recv() => {
                    info!("backup: stopping in the middle of an upload; it is redone next start");
                    if let Some(done) = done { let _ = done.send(()); }
                    return;
                }
            }
        }
    }

    async fn cycle(&mut self, role: Option<u64>) {
        let Some(epoch) = role else {
            if self.chain.is_some() {
                info!("not the writable primary any more: backups stop here (the new primary starts its own chain)");
            }
            self.reset_chain();
            self.lag_since = None;
            for r in self.snapshot_requested.drain(..) {
                let _ = r.send(Err("this node stopped being the primary".into()));
            }
            self.status.send_modify(|st| {
                st.state = "standby".into();
                st.chain = None;
                st.lag_bytes = 0;
                st.lag_seconds = 0;
                st.lag_since_unix_ms = None;
                st.newest_restorable_unix_ms = None;
            });
            return;
        };
        if self.epoch != Some(epoch) && self.chain.is_some() {
            info!(epoch, "new epoch: starting a new backup chain");
            self.reset_chain();
        }
        self.epoch = Some(epoch);
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let mut listed = None;
        if !self.owner_checked {
            match self.claim().await {
                Ok(catalog) => listed = Some(catalog),
                Err(e) => {
                    self.failed(format!("{e:#}"));
                    return;
                }
            }
            self.owner_checked = true;
        }
        let obs = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                self.failed(format!("{e:#}"));
                return;
            }
        };
        if let (Some(catalog), None) = (&listed, &self.cursor) {
            self.try_resume(catalog, &obs, epoch).await;
        }
        // Before any upload: a hung one must not hide the lag it causes.
        self.note_lag(&obs);
        let steps = plan::next_steps(self.cursor.as_ref(), &obs, MAX_SEGMENT);
        for step in steps {
            if let Err(e) = self.execute(&step, &obs).await {
                self.failed(format!("{e:#}"));
                self.report(&obs);
                return;
            }
            self.cursor = plan::advance(self.cursor.take(), &step);
            if matches!(step, Step::EndChain { .. } | Step::Abandon { .. }) {
                self.chain = None;
            }
        }
        if self.failures > 0 {
            info!("backup store reachable again");
        }
        self.failures = 0;
        self.retry_at = None;
        self.status.send_modify(|st| st.last_error = None);
        self.report(&obs);
    }

    fn reset_chain(&mut self) {
        self.cursor = None;
        self.chain = None;
        self.epoch = None;
        self.rewrite_pending_from = None;
        self.rewrite_sent = None;
    }

    fn failed(&mut self, e: String) {
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_millis((500u64 << self.failures.min(7)).min(60_000));
        self.retry_at = Some(Instant::now() + wait);
        warn!(
            attempt = self.failures,
            "backup: {e}; retrying in {} ms (nothing is skipped)",
            wait.as_millis()
        );
        // `backup now` answers at once rather than wait out an outage in silence.
        for r in self.snapshot_requested.drain(..) {
            let _ = r.send(Err(format!(
                "the snapshot failed: {e}; backups retry by themselves (next in {} ms), and \
                 `backup now` can be asked again",
                wait.as_millis()
            )));
        }
        self.status.send_modify(|st| {
            st.state = "failing".into();
            st.last_error = Some(e);
            st.upload_failures += 1;
        });
    }

    /// Lag bookkeeping for one observation, published at once: WAL waiting now has waited
    /// since the last observation that found none waiting. Returns the bytes waiting.
    fn note_lag(&mut self, obs: &Observed) -> u64 {
        let lag = plan::lag_bytes(self.cursor.as_ref(), obs);
        if lag == 0 {
            self.lag_since = None;
            self.shipped_through_ms = Some(obs.unix_ms);
        } else if self.lag_since.is_none() {
            self.lag_since = Some(self.shipped_through_ms.unwrap_or(obs.unix_ms));
        }
        let newest = self.newest_restorable();
        let since = self.lag_since;
        self.status.send_modify(|st| {
            st.lag_bytes = lag;
            st.lag_since_unix_ms = since;
            st.lag_seconds = since.map_or(0, |t| now_ms().saturating_sub(t) / 1000);
            // While a new chain's base uploads, the previous chain still restores to here.
            if newest.is_some() {
                st.newest_restorable_unix_ms = newest;
            }
        });
        lag
    }

    /// [`BackupStatus::newest_restorable_unix_ms`]: only once the chain has its base.
    fn newest_restorable(&self) -> Option<u64> {
        self.cursor
            .as_ref()
            .filter(|c| c.base_uploaded)
            .and(self.shipped_through_ms)
    }

    /// Lag, spool alarm and state for status.
    fn report(&mut self, obs: &Observed) {
        let lag = self.note_lag(obs);
        let full = lag > self.s.spool_limit_bytes;
        if full
            && self
                .spool_warned_at
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            error!(
                lag_bytes = lag,
                limit = self.s.spool_limit_bytes,
                "backup spool full: {lag} bytes of WAL are not uploaded yet (limit {}); redis \
                 keeps them on disk until the backup store takes them — fix the store or \
                 its credentials before the disk fills",
                self.s.spool_limit_bytes
            );
            self.spool_warned_at = Some(Instant::now());
        }
        let (chain, failing) = (
            self.chain.as_ref().map(|c| c.to_string()),
            self.failures > 0,
        );
        let snapshotting = self.rewrite_pending_from.is_some()
            || self.cursor.as_ref().is_some_and(|c| !c.base_uploaded);
        let (seq, offset) = self
            .cursor
            .as_ref()
            .map_or((None, 0), |c| (Some(c.incr_seq), c.offset));
        self.status.send_modify(|st| {
            st.wal_incr_seq = seq;
            st.wal_offset = offset;
            st.spool_full = full;
            st.chain = chain;
            st.last_snapshot_unix_ms = self.last_snapshot_ms;
            st.state = if failing {
                "failing"
            } else if snapshotting {
                "snapshotting"
            } else {
                "shipping"
            }
            .into();
        });
    }

    async fn observe(&mut self) -> Result<Observed> {
        let observed_at = now_ms();
        let path = self.s.aof_dir.join(crate::node::layout::AOF_MANIFEST_NAME);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            // Redis has not written its AOF yet (starting): nothing to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let manifest = Manifest::parse(&text).with_context(|| path.display().to_string())?;
        let mut sizes = std::collections::BTreeMap::new();
        for e in manifest.entries.iter().filter(|e| e.is_incr_file()) {
            if let Ok(m) = tokio::fs::metadata(self.s.aof_dir.join(&e.file)).await {
                sizes.insert(e.seq, m.len());
            }
        }
        // After the reads: a switch of file the manifest shows came before this.
        let now = now_ms();
        let snapshot_due = !self.snapshot_requested.is_empty()
            || (self.cursor.is_some()
                && snapshot_due(now, self.s.snapshot_time, self.last_snapshot_ms));
        Ok(Observed {
            manifest,
            sizes,
            rewrite_pending_from: self.rewrite_pending_from,
            snapshot_due,
            unix_ms: observed_at,
            read_unix_ms: now,
            rewrite_sent: self.rewrite_sent,
        })
    }

    async fn execute(&mut self, step: &Step, obs: &Observed) -> Result<()> {
        match step {
            Step::Rewrite { opens_incr } => {
                let base = obs.manifest.base().map_or(0, |b| b.seq);
                info!(base, "backup: asking redis for an AOF rewrite (a snapshot)");
                // The clock on both sides of the command bounds when redis switched to a new
                // incremental file: the old chain's end and the new chain's start.
                let sent_unix_ms = now_ms();
                let r = self
                    .admin
                    .query::<redis::Value>(&redis::cmd("BGREWRITEAOF"))
                    .await;
                let answered_unix_ms = now_ms();
                let reply = match r {
                    Ok(v) if format!("{v:?}").contains("scheduled") => RewriteReply::Scheduled,
                    Ok(_) => RewriteReply::Started,
                    // One already running (e.g. redis's own) is as good as ours.
                    Err(e) if format!("{e:#}").contains("already in progress") => {
                        RewriteReply::AlreadyRunning
                    }
                    Err(e) => return Err(e.context("BGREWRITEAOF")),
                };
                self.rewrite_sent = Some(RewriteSent {
                    base_seq: base,
                    sent_unix_ms,
                    answered_unix_ms,
                    reply,
                    opens_incr: *opens_incr,
                });
                self.rewrite_pending_from = Some(base);
                self.status
                    .send_modify(|st| st.state = "snapshotting".into());
            }
            Step::StartChain {
                base_seq,
                start_unix_ms,
                ..
            } => {
                let epoch = self.epoch.unwrap_or(0);
                let id = ChainId::new(*start_unix_ms, epoch, &self.s.node)?;
                info!(chain = %id, base = base_seq, "backup: new chain");
                self.chain = Some(id);
                self.rewrite_pending_from = None;
                self.rewrite_sent = None;
            }
            Step::UploadBase { base_seq, file } => {
                let chain = self.chain.clone().context("no chain")?;
                let object = ObjectName::Base {
                    chain,
                    seq: *base_seq,
                }
                .path();
                let stored_before = self.status.borrow().uploaded_bytes;
                let began = Instant::now();
                let bytes = self.upload_file(&object, file).await?;
                let now = now_ms();
                self.last_snapshot_ms = Some(now);
                let took = began.elapsed().as_millis() as u64;
                let stored = self.status.borrow().uploaded_bytes - stored_before;
                self.status.send_modify(|st| {
                    st.last_snapshot_duration_ms = Some(took);
                    st.last_snapshot_bytes = Some(stored);
                });
                info!(
                    object,
                    bytes,
                    ms = began.elapsed().as_millis() as u64,
                    "backup: snapshot uploaded"
                );
                for r in self.snapshot_requested.drain(..) {
                    let _ = r.send(Ok(format!("snapshot uploaded: {object} ({bytes} bytes)")));
                }
                self.prune().await;
            }
            Step::Ship {
                incr_seq,
                file,
                from,
                to,
                unix_ms,
            } => {
                let chain = self.chain.clone().context("no chain")?;
                let object = ObjectName::Segment {
                    chain,
                    incr_seq: *incr_seq,
                    offset: *from,
                    end: *to,
                    // What the plan chose (module doc of `plan`), never now: a later stamp
                    // would overstate what the segment holds.
                    unix_ms: *unix_ms,
                }
                .path();
                let mut sealer = Sealer::new(&object, &self.s.keys, self.s.zstd_level)?;
                let mut out = Vec::new();
                self.read_range(file, *from, *to, |piece| {
                    out.extend(sealer.push(piece)?);
                    Ok(())
                })
                .await?;
                let (last, _) = sealer.finish()?;
                out.extend(last);
                let sealed: Vec<u8> = out.concat();
                let stored = sealed.len() as u64;
                self.s.store.put(&object, Bytes::from(sealed)).await?;
                self.uploaded(stored);
            }
            Step::NextIncr { .. } | Step::Covered { .. } => {}
            Step::EndChain { unix_ms } => {
                if let Some(chain) = &self.chain {
                    let object = ObjectName::End {
                        chain: chain.clone(),
                        unix_ms: *unix_ms,
                    }
                    .path();
                    let sealed = crate::backup::format::seal_all(
                        &object,
                        &self.s.keys,
                        self.s.zstd_level,
                        b"end of chain",
                    )?;
                    self.s.store.put(&object, Bytes::from(sealed)).await?;
                    info!(chain = %chain, "backup: chain complete");
                }
            }
            Step::CollectHistory => {
                // Every file the rewrite replaced is uploaded: let redis delete them.
                for v in ["no", "yes"] {
                    self.admin
                        .query::<redis::Value>(
                            redis::cmd("CONFIG")
                                .arg("SET")
                                .arg("aof-disable-auto-gc")
                                .arg(v),
                        )
                        .await?;
                }
            }
            Step::Abandon { reason } => {
                warn!("backup: abandoning chain: {reason}; starting a new one with a snapshot");
            }
        }
        Ok(())
    }

    /// Counts one stored object of `bytes` (sealed) bytes.
    fn uploaded(&mut self, bytes: u64) {
        let now = now_ms();
        self.status.send_modify(|st| {
            st.uploaded_bytes += bytes;
            st.uploads += 1;
            st.last_upload_unix_ms = Some(now);
        });
    }

    /// Feed bytes `[from, to)` of an AOF file to `each`, a piece at a time.
    async fn read_range(
        &self,
        file: &str,
        from: u64,
        to: u64,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        use tokio::io::AsyncSeekExt;
        let path = self.s.aof_dir.join(file);
        let mut f = tokio::fs::File::open(&path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        f.seek(std::io::SeekFrom::Start(from)).await?;
        let mut buf = vec![0; READ_CHUNK];
        let mut left = to - from;
        while left > 0 {
            let n = (left as usize).min(READ_CHUNK);
            f.read_exact(&mut buf[..n])
                .await
                .with_context(|| format!("reading {} bytes {from}..{to}", path.display()))?;
            each(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Stream a file through the sealer into a multipart upload: memory stays at a few
    /// chunks whatever the file's size. The file is read and sealed on a blocking thread,
    /// at most [`SEAL_AHEAD`] chunks ahead of the upload, so sealing (one core) and the
    /// store's I/O (the runtime's threads) overlap, and the runtime never waits on zstd.
    /// Compression stays on that one thread: zstd's own workers
    /// ([`Sealer::with_workers`]) helped on the 2-core machine of BENCHMARKS.md only while
    /// a core was idle, and their buffers took the peak RSS past 64 MiB. Dropping the future (a shutdown) stops the sealing thread at its next
    /// chunk.
    async fn upload_file(&mut self, object: &str, file: &str) -> Result<u64> {
        let path = self.s.aof_dir.join(file);
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut sealer = Sealer::new(object, &self.s.keys, self.s.zstd_level)?;
        let mut up = self.s.store.upload(object).await?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(SEAL_AHEAD);
        let sealing = tokio::task::spawn_blocking(move || -> Result<u64> {
            use std::io::Read;
            let send = |chunk: Bytes| {
                tx.blocking_send(chunk)
                    .map_err(|_| anyhow::anyhow!("the upload stopped"))
            };
            let mut buf = vec![0u8; READ_CHUNK];
            let mut total = 0u64;
            loop {
                let n = f
                    .read(&mut buf)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                for chunk in sealer.push(&buf[..n])? {
                    send(chunk)?;
                }
            }
            let (last, _) = sealer.finish()?;
            for chunk in last {
                send(chunk)?;
            }
            Ok(total)
        });
        let mut stored = 0u64;
        let result: Result<u64> = async {
            while let Some(chunk) = rx.recv().await {
                stored += chunk.len() as u64;
                up.write(chunk).await?;
            }
            // The sender is gone: the sealing thread finished, or failed.
            sealing.await.context("the sealing thread")?
        }
        .await;
        match result {
            Ok(total) => {
                up.finish().await?;
                self.uploaded(stored);
                Ok(total)
            }
            Err(e) => {
                up.abort().await;
                Err(e)
            }
        }
    }

    /// Before the first upload of a run: the location must hold this data store's backups
    /// only. An unclaimed one (empty, or written before owner markers) gets the marker; another
    /// data store's is refused, again at every retry, and nothing is written or pruned there.
    async fn claim(&mut self) -> Result<crate::backup::catalog::Catalog> {
        use crate::backup::catalog::{Ownership, OWNER_PREFIX};
        let catalog = crate::backup::restore::catalog(&self.s.store).await?;
        if let Some(e) = catalog.refuse_foreign(&self.s.data_store, self.s.store.name()) {
            anyhow::bail!("{e}");
        }
        if catalog.ownership(&self.s.data_store) == Ownership::Unclaimed {
            let marker = format!("{OWNER_PREFIX}{}", self.s.data_store);
            self.s.store.put(&marker, Bytes::new()).await?;
            info!(
                marker,
                adopted_chains = catalog.chains.len(),
                "backup: claimed the backup location for this data store"
            );
        }
        Ok(catalog)
    }

    /// After a restart, go on with this node's open chain when redis's AOF still continues it
    /// ([`plan::resume`]) and the last segment shipped is byte for byte what the file holds
    /// there (redis may have cut a torn tail at its start and written on over it).
    async fn try_resume(
        &mut self,
        catalog: &crate::backup::catalog::Catalog,
        obs: &Observed,
        epoch: u64,
    ) {
        let Some(newest) = catalog.chains.last() else {
            return;
        };
        let Some((cursor, last)) = plan::resume(newest, &self.s.node, epoch, obs) else {
            return;
        };
        let same = async {
            let file = obs
                .manifest
                .entries
                .iter()
                .find(|e| e.seq == last.incr_seq && e.is_incr_file())
                .map(|e| e.file.clone())
                .context("the chain's incremental file is not in the manifest")?;
            let stored = self
                .s
                .store
                .get(&last.path)
                .await?
                .with_context(|| format!("{} is gone", last.path))?;
            let shipped = crate::backup::format::open_all(&last.path, &self.s.keys, &stored)?;
            let mut local = Vec::with_capacity(shipped.len());
            self.read_range(&file, last.offset, last.end, |piece| {
                local.extend_from_slice(piece);
                Ok(())
            })
            .await?;
            anyhow::Ok(local == shipped)
        };
        match same.await {
            Ok(true) => {
                info!(
                    chain = %newest.id,
                    incr = cursor.incr_seq,
                    offset = cursor.offset,
                    "backup: resuming this node's chain where it stopped: no new snapshot needed"
                );
                self.chain = Some(newest.id.clone());
                self.last_snapshot_ms = Some(newest.id.start_unix_ms);
                self.cursor = Some(cursor);
            }
            Ok(false) => info!(
                chain = %newest.id,
                "backup: not resuming the chain: redis's AOF no longer holds what was shipped \
                 last; a new chain starts with a snapshot"
            ),
            Err(e) => warn!(
                chain = %newest.id,
                "backup: not resuming the chain ({e:#}); a new chain starts with a snapshot"
            ),
        }
    }

    /// Apply the plan's retention; a failure is logged and retried after the next snapshot.
    async fn prune(&mut self) {
        let r: Result<usize> = async {
            let catalog = crate::backup::restore::catalog(&self.s.store).await?;
            // Never another data store's chains (its marker may have appeared since the claim).
            if let Some(e) = catalog.refuse_foreign(&self.s.data_store, self.s.store.name()) {
                anyhow::bail!("{e}");
            }
            let plan = crate::backup::retention::plan_prune(&catalog, self.s.history, now_ms());
            for path in &plan.delete {
                self.s.store.delete(path).await?;
            }
            let oldest = catalog
                .chains
                .iter()
                .filter(|c| plan.keep.contains(&c.id))
                .filter_map(|c| c.window.as_ref().map(|w| w.start_unix_ms))
                .min();
            self.status
                .send_modify(|st| st.oldest_restorable_unix_ms = oldest);
            Ok(plan.delete.len())
        }
        .await;
        match r {
            Ok(0) => {}
            Ok(n) => info!(objects = n, "backup: pruned by retention"),
            Err(e) => warn!("backup: pruning failed (retried after the next snapshot): {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_seconds_count_on_between_reports() {
        let st = BackupStatus {
            lag_bytes: 90 << 20,
            lag_seconds: 1,
            lag_since_unix_ms: Some(1_000_000),
            ..BackupStatus::default()
        };
        // A long upload: nothing reported for 42 s, yet readers see the lag grow.
        assert_eq!(st.clone().as_of(1_042_500).lag_seconds, 42);
        // No lag: nothing to count.
        let idle = BackupStatus::default();
        assert_eq!(idle.as_of(5_000_000).lag_seconds, 0);
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn the_daily_snapshot_is_due_once_per_day_after_its_time() {
        let day = 20_000 * DAY;
        let at = (3, 30);
        let t = |h: u64, m: u64| day + (h * 3600 + m * 60) * 1000;
        // Never snapshotted: due.
        assert!(snapshot_due(t(1, 0), at, None));
        // Snapshot yesterday after 03:30: not due before today's 03:30, due after.
        assert!(!snapshot_due(t(1, 0), at, Some(t(4, 0) - DAY)));
        assert!(snapshot_due(t(3, 31), at, Some(t(4, 0) - DAY)));
        // Snapshot today after 03:30: not due again today.
        assert!(!snapshot_due(t(23, 0), at, Some(t(3, 31))));
        // A snapshot yesterday before 03:30 is older than yesterday's slot: due.
        assert!(snapshot_due(t(1, 0), at, Some(t(2, 0) - DAY)));
    }
}
