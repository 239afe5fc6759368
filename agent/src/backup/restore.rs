//! Reading backups back: download a sealed object — a base as a stream, the small segments
//! whole and several at a time ahead of their turn (`fetch_ahead`) — authenticate and decrypt
//! it (`format`), and hand the plaintext to a sink: a file of a rebuilt AOF directory,
//! or nothing when only verifying. Errors name the object.
//!
//! `restore` turns the backups into a data directory a fresh redis-server loads as is: the
//! chain covering the time asked for, laid out as a Redis 7 multi-part AOF directory and cut
//! at that second (`aof_cut`), with progress reported as it goes.

use crate::backup::catalog::{
    format_utc, human_bytes, parse_utc, Catalog, ListedObject, RestorePlan, BACKUP_PREFIX,
};
use crate::backup::fetch_ahead::{AbortOnDrop, FetchAhead, Fetched};
use crate::backup::format::{Inflater, OpenedChunk, Opener, Unsealer};
use crate::backup::keys::KeyRing;
use crate::store::{Store, StoreError};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The store and the keys that `[backup]` names (the key file's mode is checked).
pub fn open_backups(b: &crate::config::BackupConfig) -> Result<(Store, KeyRing)> {
    let store = Store::open(&b.url, &b.options).context("config key `backup.url`")?;
    let key = b
        .key_file
        .as_ref()
        .context("backup.key_file is not set: cannot read or write backups")?;
    let keys = KeyRing::load(key, &b.previous_key_files).context("config key `backup.key_file`")?;
    Ok((store, keys))
}

/// The catalog of the store's backups.
pub async fn catalog(store: &Store) -> Result<Catalog> {
    let listing = store
        .list(BACKUP_PREFIX)
        .await
        .context("listing the backups")?;
    let objects: Vec<ListedObject> = listing
        .into_iter()
        .map(|e| ListedObject {
            path: e.path,
            size: e.size,
            last_modified_unix_ms: e.last_modified_ms,
        })
        .collect();
    Ok(Catalog::from_listing(&objects))
}

/// Stream object `path`, authenticated and decrypted, into `sink` (if any). Returns the
/// plaintext length. Memory stays at a few chunks whatever the object's size (a few pieces
/// downloaded ahead, [`CHUNKS_AHEAD`] authenticated chunks waiting to be inflated): plaintext is
/// written in pieces of at most 1 MiB as it is opened (a chunk of very compressible data, e.g.
/// a large SETRANGE of zeros, may expand to hundreds of MiB). The sink is written with
/// blocking calls: restores and verification are offline work, not the agent's loop.
/// Plaintext written before an error is incomplete: callers discard the file then.
pub async fn open_object(
    store: &Store,
    keys: &KeyRing,
    path: &str,
    sink: Option<&mut std::fs::File>,
    mut downloaded: impl FnMut(u64),
) -> Result<u64> {
    let Some(mut stream) = store.get_stream(path).await? else {
        bail!("backup object {path} is missing");
    };
    // Download ahead (a few pieces) while this task opens and writes: the two overlap.
    // Pieces are gathered to about 1 MiB: HTTP bodies arrive in pieces of a few KiB, and
    // each hand-over costs more than its bytes.
    let (tx, mut pieces) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(4);
    let reader = tokio::spawn(async move {
        let mut gathered = BytesMut::new();
        while let Some(piece) = stream.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = if gathered.is_empty() && piece.len() >= GATHER {
                piece // already large (a local file is read 1 MiB at a time): no copy
            } else {
                gathered.extend_from_slice(&piece);
                if gathered.len() < GATHER {
                    continue;
                }
                gathered.split().freeze()
            };
            if tx.send(Ok(full)).await.is_err() {
                return;
            }
        }
        if !gathered.is_empty() {
            let _ = tx.send(Ok(gathered.freeze())).await;
        }
    });
    let _stop_reader = AbortOnDrop(reader);
    tokio::task::block_in_place(|| open_pieces(path, keys, &mut pieces, sink, &mut downloaded))
}

/// Open one object a [`FetchAhead`] handed out into `sink`: from memory when it came whole,
/// else streamed from the store.
async fn open_fetched(
    store: &Store,
    keys: &KeyRing,
    path: &str,
    fetched: Result<Fetched>,
    sink: Option<&mut std::fs::File>,
    mut downloaded: impl FnMut(u64),
) -> Result<u64> {
    match fetched? {
        Fetched::Whole(sealed) => {
            downloaded(sealed.len() as u64);
            tokio::task::block_in_place(|| open_whole(path, keys, &sealed, sink))
        }
        Fetched::Large => open_object(store, keys, path, sink, downloaded).await,
    }
}

/// Authenticate, decrypt and decompress a whole stored object into `sink` on this thread (a
/// small object is not worth a second thread). Returns the plaintext length.
fn open_whole(
    path: &str,
    keys: &KeyRing,
    sealed: &[u8],
    mut sink: Option<&mut std::fs::File>,
) -> Result<u64> {
    use std::io::Write;
    let mut opener = Opener::new(path, keys);
    let mut written: std::io::Result<()> = Ok(());
    opener.push_each(sealed, |p| {
        if let (Some(f), Ok(())) = (sink.as_deref_mut(), &written) {
            written = f.write_all(p);
        }
    })?;
    let stats = opener.finish()?;
    written.with_context(|| format!("writing what {path} holds"))?;
    Ok(stats.plaintext_len)
}

/// The blocking part of [`open_object`]: authenticate and decrypt the pieces on this thread as
/// they arrive, and decompress and write on a second one. On two cores the stages overlap;
/// run one after the other they took twice as long. Returns the plaintext length.
fn open_pieces(
    path: &str,
    keys: &KeyRing,
    pieces: &mut tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>>,
    sink: Option<&mut std::fs::File>,
    downloaded: &mut dyn FnMut(u64),
) -> Result<u64> {
    use std::io::Write;
    use std::ops::ControlFlow;
    let (chunks_tx, chunks) = std::sync::mpsc::sync_channel::<OpenedChunk>(CHUNKS_AHEAD);
    // Spent chunk buffers go back to the unsealer (no allocation per chunk).
    let (spares_tx, spares) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let inflating = scope.spawn(move || -> Result<u64> {
            let mut inflater = Inflater::new(path);
            let mut sink = sink;
            let mut flushed = 0u64;
            for chunk in chunks {
                let mut written: std::io::Result<()> = Ok(());
                inflater.inflate(&chunk, &mut |p| {
                    if let (Some(f), Ok(())) = (sink.as_deref_mut(), &written) {
                        written = f.write_all(p);
                    }
                })?;
                written.with_context(|| format!("writing what {path} holds"))?;
                if let Some(f) = sink.as_deref_mut() {
                    start_writeback(f, &mut flushed)?;
                }
                let _ = spares_tx.send(chunk.into_buffer());
            }
            Ok(inflater.finish()?.plaintext_len)
        });
        let unsealed = (|| -> Result<()> {
            let mut unsealer = Unsealer::new(path, keys);
            while let Some(piece) = pieces.blocking_recv() {
                let piece = piece?;
                downloaded(piece.len() as u64);
                let mut stopped = false;
                unsealer.push_each(&piece, |chunk| match chunks_tx.send(chunk) {
                    Ok(()) => ControlFlow::Continue(spares.try_recv().ok()),
                    Err(_) => {
                        stopped = true;
                        ControlFlow::Break(())
                    }
                })?;
                if stopped {
                    // The inflating thread failed: its error is the one to report.
                    return Ok(());
                }
            }
            unsealer.finish()?;
            Ok(())
        })();
        drop(chunks_tx);
        let inflated = inflating
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A download or authentication error comes first: the inflater then only saw the
        // object end early.
        unsealed.and(inflated)
    })
}

/// Authenticated chunks (1 MiB each by default) waiting to be inflated.
const CHUNKS_AHEAD: usize = 4;

/// Bytes gathered from the download before they are opened.
const GATHER: usize = 1 << 20;

/// Ask the kernel to start writing what was appended since `flushed` once 8 MiB piled up, so
/// the disk works while decryption goes on and the final fsync finds little left to do.
fn start_writeback(f: &mut std::fs::File, flushed: &mut u64) -> Result<()> {
    use std::io::Seek;
    use std::os::fd::AsRawFd;
    let end = f.stream_position()?;
    if end >= *flushed + (8 << 20) {
        // SAFETY: sync_file_range on a descriptor we own; it only starts writeback.
        let rc = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                *flushed as i64,
                (end - *flushed) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("starting writeback");
        }
        *flushed = end;
    }
    Ok(())
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub objects: usize,
    pub bytes: u64,
    /// (object, error) for every object that failed.
    pub failures: Vec<(String, String)>,
    /// (chain, problem) for every break in continuity the listing shows: a missing base, a
    /// WAL gap, an end marker that does not close the WAL ([`crate::backup::catalog::Problem`]).
    pub breaks: Vec<(String, String)>,
    /// Chains looked at.
    pub chains: usize,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.breaks.is_empty()
    }

    /// Chains with at least one break.
    pub fn broken_chains(&self) -> usize {
        let mut ids: Vec<&str> = self.breaks.iter().map(|(c, _)| c.as_str()).collect();
        ids.dedup();
        ids.len()
    }
}

/// Check the chains (all when `chain` is None): download and authenticate every object, and
/// check continuity from the listing — every chain has its base, its WAL segments join with
/// no missing range, its end marker (if any) comes after its last segment
/// ([`crate::backup::catalog::Chain::breaks`]).
///
/// What no listing shows is not checked: the loss of a chain's *last* segments (an open
/// chain's newest WAL, or a closed chain's WAL just before its end marker, which records no
/// position) leaves WAL that looks complete. That needs a per-chain manifest of what was
/// shipped, which the format does not have yet.
pub async fn verify(store: &Store, keys: &KeyRing, chain: Option<&str>) -> Result<Verified> {
    let cat = catalog(store).await?;
    let mut v = Verified::default();
    let mut matched = false;
    for c in &cat.chains {
        if chain.is_some_and(|id| c.id.to_string() != id) {
            continue;
        }
        matched = true;
        v.chains += 1;
        v.breaks
            .extend(c.breaks().map(|p| (c.id.to_string(), p.to_string())));
        let mut ahead = FetchAhead::new(store, c.objects());
        while let Some((path, fetched)) = ahead.next().await {
            match open_fetched(store, keys, &path, fetched, None, |_| {}).await {
                Ok(n) => {
                    v.objects += 1;
                    v.bytes += n;
                }
                Err(e) => v.failures.push((path, format!("{e:#}"))),
            }
        }
    }
    if let Some(id) = chain.filter(|_| !matched) {
        bail!("no chain {id} in the backups (see `redis-steward backup list`)");
    }
    Ok(v)
}

/// How far a restore is: stored (sealed) bytes and objects fetched so far.
#[derive(Debug, Clone)]
pub struct Progress {
    pub objects_done: usize,
    pub objects_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub elapsed: Duration,
}

impl Progress {
    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        self.bytes_done as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Time left at the rate so far (None before anything arrived).
    pub fn time_left(&self) -> Option<Duration> {
        let rate = self.rate();
        (self.bytes_done > 0 && rate > 0.0).then(|| {
            Duration::from_secs_f64(self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate)
        })
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = if self.bytes_total == 0 {
            100.0
        } else {
            self.bytes_done as f64 * 100.0 / self.bytes_total as f64
        };
        write!(
            f,
            "{} / {} ({pct:.0}%), {}/{} objects, {}/s",
            human_bytes(self.bytes_done),
            human_bytes(self.bytes_total),
            self.objects_done,
            self.objects_total,
            human_bytes(self.rate() as u64),
        )?;
        match self.time_left() {
            Some(t) => write!(f, ", ~{} s left", t.as_secs()),
            None => Ok(()),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub chain: String,
    pub objects: usize,
    pub stored_bytes: u64,
    /// Bytes of the rebuilt AOF directory.
    pub aof_bytes: u64,
    /// The point asked for (`--at`, whole seconds) or the newest point of the chain.
    pub restores_to_unix_ms: u64,
    /// The newest second the kept WAL holds writes of (its last `#TS` annotation).
    pub last_write_second: Option<u64>,
    /// WAL bytes dropped: after the point asked for, or an unfinished last command.
    pub dropped_bytes: u64,
    /// Where data that was in the target before went (`--force`).
    pub moved_aside: Vec<PathBuf>,
    pub elapsed: Duration,
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored chain {} to {}: {} object(s), {} downloaded, {} of AOF in {:.1} s",
            self.chain,
            format_utc(self.restores_to_unix_ms),
            self.objects,
            human_bytes(self.stored_bytes),
            human_bytes(self.aof_bytes),
            self.elapsed.as_secs_f64()
        )?;
        if let Some(ts) = self.last_write_second {
            write!(f, "; newest write from {}", format_utc(ts * 1000))?;
        }
        if self.dropped_bytes > 0 {
            write!(
                f,
                "; {} of later WAL cut off",
                human_bytes(self.dropped_bytes)
            )?;
        }
        for p in &self.moved_aside {
            write!(f, "; earlier data moved to {}", p.display())?;
        }
        Ok(())
    }
}

/// Names in a data directory that mean it holds data.
const DATA_NAMES: [&str; 2] = [crate::node::layout::AOF_DIR_NAME, "dump.rdb"];

/// Whether `data_dir` holds redis data (an AOF directory or an RDB file).
pub fn holds_data(data_dir: &Path) -> bool {
    DATA_NAMES.iter().any(|n| data_dir.join(n).exists())
}

/// Parse `--at`: unix seconds, or RFC 3339 (`2026-11-26T10:00:00Z`, `…+02:00`, fractions
/// allowed). Returns whole unix seconds (a fraction is dropped: restores are to the second).
pub fn parse_time(s: &str) -> Result<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().context("unix seconds out of range");
    }
    let bad = || {
        anyhow::anyhow!(
            "`{s}` is not a time: give unix seconds or RFC 3339 such as 2026-11-26T10:00:00Z \
             or 2026-11-26T12:00:00+02:00"
        )
    };
    // Split off the zone: Z, or ±HH:MM.
    let (local, offset_s): (&str, i64) = if let Some(l) = s.strip_suffix(['Z', 'z']) {
        (l, 0)
    } else if s.len() > 6 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-') {
        let (l, z) = s.split_at(s.len() - 6);
        let (h, m) = z[1..].split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let sign = if z.starts_with('-') { -1 } else { 1 };
        (l, sign * (h * 3600 + m * 60))
    } else {
        return Err(bad());
    };
    let whole = local.split_once('.').map_or(local, |(w, frac)| {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            ""
        } else {
            w
        }
    });
    let ms = parse_utc(&format!("{}Z", whole.replace(' ', "T"))).ok_or_else(bad)?;
    let secs = (ms / 1000) as i64 - offset_s;
    u64::try_from(secs).map_err(|_| bad())
}

/// Rebuild the data directory `data_dir` from the backups: the chain covering `at_unix_s`
/// (whole seconds; `None`: the newest point), authenticated, decrypted and laid out as a
/// Redis 7 multi-part AOF directory (the base, every WAL segment appended in order to one
/// incremental file, a manifest), cut after the last write of second `at_unix_s`.
///
/// Nothing is half-done: the directory is built beside the target and renamed into place
/// only when complete. A target that holds data is refused unless `force`, which moves the
/// old data aside (never deletes it). The caller holds the data directory's lock.
pub async fn restore(
    store: &Store,
    keys: &KeyRing,
    at_unix_s: Option<u64>,
    data_dir: &Path,
    force: bool,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Restored> {
    let started = Instant::now();
    if holds_data(data_dir) && !force {
        bail!(
            "{} already holds data ({}); refusing to replace it without --force (which \
             moves it aside, never deletes it)",
            data_dir.display(),
            DATA_NAMES
                .iter()
                .filter(|n| data_dir.join(n).exists())
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let cat = catalog(store).await?;
    // Second T means everything redis ran up to T.999.
    let target_ms = at_unix_s.map(|s| s * 1000 + 999);
    // Without a time: the newest point, refused when the newest chain lacks its base or has
    // a WAL gap (`Catalog::newest_point`), never an older chain in its place.
    let plan = cat.restore_plan(target_ms)?;

    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let work = data_dir.join(format!(".restore-{}", std::process::id()));
    clear_stale_work_dirs(data_dir)?;
    let result = build(
        store,
        keys,
        &plan,
        at_unix_s,
        &work,
        started,
        &mut on_progress,
    )
    .await;
    let (mut restored, aof_dir) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    // Into place: move the old data aside first (with --force), then one rename.
    let stamp = format_utc(crate::backup::now_ms()).replace(':', "");
    for name in DATA_NAMES {
        let p = data_dir.join(name);
        if p.exists() {
            let aside = data_dir.join(format!("{name}.before-restore-{stamp}"));
            std::fs::rename(&p, &aside).with_context(|| format!("moving {} aside", p.display()))?;
            restored.moved_aside.push(aside);
        }
    }
    let target = data_dir.join(crate::node::layout::AOF_DIR_NAME);
    std::fs::rename(&aof_dir, &target)
        .with_context(|| format!("moving the restored AOF into {}", target.display()))?;
    std::fs::remove_dir_all(&work).ok();
    fsync_dir(data_dir)?;
    restored.elapsed = started.elapsed();
    Ok(restored)
}

/// Work directories of restores that died (this process holds the lock, so none is live).
fn clear_stale_work_dirs(data_dir: &Path) -> Result<()> {
    for e in
        std::fs::read_dir(data_dir).with_context(|| format!("reading {}", data_dir.display()))?
    {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(".restore-") {
            std::fs::remove_dir_all(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Download and lay out the plan under `work/appendonlydir`; returns it.
async fn build(
    store: &Store,
    keys: &KeyRing,
    plan: &RestorePlan,
    at_unix_s: Option<u64>,
    work: &Path,
    started: Instant,
    on_progress: &mut impl FnMut(&Progress),
) -> Result<(Restored, PathBuf)> {
    let dir = work.join(crate::node::layout::AOF_DIR_NAME);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let objects = plan.objects();
    let mut progress = Progress {
        objects_done: 0,
        objects_total: objects.len(),
        bytes_done: 0,
        bytes_total: plan.total_bytes(),
        elapsed: Duration::ZERO,
    };
    on_progress(&progress);
    let base_file = "appendonly.aof.1.base.rdb";
    let incr_file = "appendonly.aof.1.incr.aof";
    let incr_path = dir.join(incr_file);
    let mut base_out = std::fs::File::create(dir.join(base_file))?;
    let mut f = std::fs::File::create(&incr_path)?;
    let (mut base_bytes, mut wal_bytes) = (0, 0);
    let mut last_report = Instant::now();
    let mut ahead = FetchAhead::new(store, objects.iter().copied());
    for i in 0..objects.len() {
        let (path, fetched) = ahead.next().await.expect("one per object");
        let out = if i == 0 { &mut base_out } else { &mut f };
        let mut done = progress.bytes_done;
        let n = open_fetched(store, keys, &path, fetched, Some(out), |n| {
            done += n;
            if last_report.elapsed() >= Duration::from_millis(200) {
                let p = Progress {
                    bytes_done: done,
                    elapsed: started.elapsed(),
                    ..progress.clone()
                };
                on_progress(&p);
                last_report = Instant::now();
            }
        })
        .await?;
        progress.bytes_done = done;
        progress.objects_done += 1;
        if i == 0 {
            base_bytes = n;
            base_out.sync_all()?;
        } else {
            wal_bytes += n;
        }
    }
    progress.elapsed = started.elapsed();
    on_progress(&progress);

    // Cut at the second asked for (and drop an unfinished last command either way).
    let find_cut = || -> Result<crate::backup::aof_cut::Cut> {
        let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&incr_path)?);
        tokio::task::block_in_place(|| crate::backup::aof_cut::find_cut(reader, at_unix_s))
            .map_err(anyhow::Error::from)
    };
    let cut = match find_cut() {
        Ok(cut) => cut,
        // WAL shipped before the agent mended a hole redis 7.0 left after a short write
        // (`node::aof_repair`) still has the NULs: fill them the same way, then cut.
        Err(e) if mend_holes(&incr_path)? => {
            tracing::info!("filled the NUL holes of a short AOF write in the restored WAL ({e:#})");
            find_cut()
        }
        .with_context(|| format!("reading the WAL of chain {}", plan.chain))?,
        Err(e) => return Err(e.context(format!("reading the WAL of chain {}", plan.chain))),
    };
    f.set_len(cut.keep_bytes)?;
    f.sync_all()?;
    let manifest = format!("file {base_file} seq 1 type b\nfile {incr_file} seq 1 type i\n");
    std::fs::write(dir.join(crate::node::layout::AOF_MANIFEST_NAME), manifest)?;
    fsync_dir(&dir)?;
    let restored = Restored {
        chain: plan.chain.to_string(),
        objects: objects.len(),
        stored_bytes: progress.bytes_done,
        aof_bytes: base_bytes + cut.keep_bytes,
        restores_to_unix_ms: match at_unix_s {
            Some(s) => s * 1000,
            None => plan.restores_to_unix_ms,
        },
        last_write_second: cut.last_kept_ts,
        dropped_bytes: wal_bytes - cut.keep_bytes,
        moved_aside: Vec::new(),
        elapsed: started.elapsed(),
    };
    Ok((restored, dir))
}

/// Fills the NUL holes of a short AOF write in `path` in place (see `node::aof_repair`); true
/// if there were any and all could be filled.
fn mend_holes(path: &Path) -> Result<bool> {
    let mut data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    use crate::node::aof_repair::{mend, Mend};
    if !matches!(mend(&mut data), Mend::Mended(_)) {
        return Ok(false);
    }
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::format::{seal_all, testing::hand_sealed, MIN_CHUNK_SIZE, TRAILER_LEN};

    /// Pseudo-random bytes: incompressible, so their object has one chunk per MiB.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Open `name` into a file as a restore does; its contents, or the whole error.
    async fn open_to_file(store: &Store, keys: &KeyRing, name: &str) -> Result<Vec<u8>, String> {
        use std::io::{Read, Seek};
        let mut f = tempfile::tempfile().unwrap();
        let mut downloaded = 0;
        let n = open_object(store, keys, name, Some(&mut f), |n| downloaded += n)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let mut out = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_open_into_files_and_each_stage_names_its_own_failure() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&url, &Default::default()).unwrap();
        let keys = KeyRing::from_keys([3u8; crate::backup::keys::KEY_LEN], &[]).unwrap();
        let plain = noise((3 << 20) + 123);
        let put = |name: &'static str, bytes: Vec<u8>| {
            let store = &store;
            async move { store.put(name, Bytes::from(bytes)).await.unwrap() }
        };

        // Whole: the plaintext arrives in the file, in order.
        let good = "backup/c/base-000001.rsb";
        put(good, seal_all(good, &keys, 1, &plain).unwrap()).await;
        assert!(open_to_file(&store, &keys, good).await.unwrap() == plain);

        // Cut short: the unsealing stage says so (the inflater only saw the chunks end).
        let cut = "backup/c/cut.rsb";
        let sealed = seal_all(cut, &keys, 1, &plain).unwrap();
        put(cut, sealed[..sealed.len() - 100].to_vec()).await;
        let e = open_to_file(&store, &keys, cut).await.unwrap_err();
        assert!(e.contains(cut) && e.contains("truncated in chunk 3"), "{e}");

        // Altered: authentication fails in the chunk that was changed.
        let altered = "backup/c/altered.rsb";
        let mut sealed = seal_all(altered, &keys, 1, &plain).unwrap();
        sealed[(2 << 20) + 4096] ^= 1;
        put(altered, sealed).await;
        let e = open_to_file(&store, &keys, altered).await.unwrap_err();
        assert!(e.contains("authentication failed in chunk 2"), "{e}");

        // Authentic chunks that are not zstd data: the inflating thread's error is reported,
        // and the unsealing stops instead of reading on.
        let garbage = "backup/c/garbage.rsb";
        let body = [0xabu8; MIN_CHUNK_SIZE];
        let trailer = [0u8; TRAILER_LEN];
        let mut chunks: Vec<(&[u8], bool)> = vec![(&body, false); 20];
        chunks.push((&trailer, true));
        put(garbage, hand_sealed(garbage, &keys, &chunks)).await;
        let e = open_to_file(&store, &keys, garbage).await.unwrap_err();
        assert!(e.contains("decompression failed in chunk 0"), "{e}");

        let e = open_to_file(&store, &keys, "backup/c/gone.rsb")
            .await
            .unwrap_err();
        assert!(e.contains("backup/c/gone.rsb is missing"), "{e}");
    }

    #[test]
    fn restore_times() {
        assert_eq!(parse_time("1793491200").unwrap(), 1_793_491_200);
        assert_eq!(parse_time("2026-11-01T00:00:00Z").unwrap(), 1_793_491_200);
        assert_eq!(
            parse_time("2026-11-01T00:00:07.999Z").unwrap(),
            1_793_491_207
        );
        assert_eq!(parse_time("2026-11-01T00:00:07.5Z").unwrap(), 1_793_491_207);
        assert_eq!(
            parse_time("2026-11-01T02:00:00+02:00").unwrap(),
            1_793_491_200
        );
        assert_eq!(
            parse_time("2026-10-31T19:30:00-04:30").unwrap(),
            1_793_491_200
        );
        assert_eq!(parse_time("2026-11-01 00:00:00Z").unwrap(), 1_793_491_200);
        for bad in [
            "",
            "yesterday",
            "2026-11-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-11-01T00:00:00.Z",
            "2026-11-01T00:00:00+25:00",
            "1970-01-01T00:00:00+01:00",
        ] {
            let e = parse_time(bad).unwrap_err().to_string();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }

    #[test]
    fn progress_reads_like_a_person_wrote_it() {
        let p = Progress {
            objects_done: 3,
            objects_total: 10,
            bytes_done: 512 << 20,
            bytes_total: 1 << 30,
            elapsed: Duration::from_secs(4),
        };
        assert_eq!(
            p.to_string(),
            "512.0 MiB / 1.0 GiB (50%), 3/10 objects, 128.0 MiB/s, ~4 s left"
        );
    }
}
