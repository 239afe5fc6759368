//! The backup catalog: what a listing of the bucket's `backup/` prefix means — which chains
//! exist, what each one can restore, what is missing — and the plan for a restore. Pure: the
//! caller lists the bucket ([`crate::store::Store::list`]) and hands names and sizes in;
//! nothing here reads, writes or deletes an object. Retention builds on it
//! ([`crate::backup::retention`]).
//!
//! # Object names
//!
//! Every backup object lives in the directory of its *chain* under [`BACKUP_PREFIX`]. All
//! numbers are zero-padded decimal so a plain lexicographic listing is in time and sequence
//! order. [`ChainId`] and [`ObjectName`] are the only code that formats or parses these names.
//!
//! | object | name |
//! |---|---|
//! | chain id | `{start_unix_ms:013}-e{epoch:010}-{node}`, node `[a-z0-9-]{1,63}` |
//! | base | `backup/{chain}/base-{base_seq:06}.rsb` |
//! | WAL segment | `backup/{chain}/wal/{incr_seq:06}-{offset:016}-{end:016}-{unix_ms:013}.rsb` |
//! | end marker | `backup/{chain}/end-{unix_ms:013}.rsb` |
//!
//! - The base is Redis's AOF base file `appendonly.aof.{base_seq}.base.rdb`; the chain starts
//!   at `start_unix_ms`, no earlier than redis switched to the chain's first incremental file
//!   (the rewrite's start: the base may hold every write before that switch).
//! - A segment holds bytes `[offset, end)` of `appendonly.aof.{incr_seq}.incr.aof`; every write
//!   acknowledged at or before `unix_ms` is in the chain up to it, and none of its writes is
//!   newer than its upload.
//! - The end marker says the primary closed the chain cleanly (the next snapshot) after its
//!   last segment was uploaded; the chain holds every write acknowledged at or before its
//!   `unix_ms`, which is no later than redis switched to the next chain's file.
//!
//! These are the shipper's recorded times (`plan`'s module doc says how it picks them so that
//! a second next to a snapshot is claimed only by a chain that restores it whole). Buckets
//! written before that rule kept the same names, but their end markers and last segments
//! were stamped when uploaded, after the switch: such a chain may claim up to a WAL interval
//! plus a rewrite's length past the writes it holds.
//!
//! Parsing is strict: a number must read exactly as the formatter writes it, so every parsed
//! name formats back to itself. A number too big for its width still formats and parses (it
//! is only wider), but 13 digits of milliseconds last until the year 2286. Anything else under
//! `backup/` is a *foreign object*: reported with the reason it did not parse, never deleted,
//! never fatal. Objects outside `backup/` (the failover leases) are not the catalog's business
//! and are skipped.
//!
//! # Chains and their restorable window
//!
//! A chain is one base plus the WAL that follows it, written by the primary of one epoch; a
//! newly promoted primary and every daily snapshot start a new chain. Chains sort by
//! `(start, epoch, node)` — start time first: epochs can start over (a lost data store rebuilt
//! on new nodes from its bucket), while wall clocks only drift by seconds.
//!
//! The WAL is walked in `(incr_seq, offset)` order with these rules:
//! - the first segment must start at offset 0 of its incr file, and that incr file is the
//!   first of the chain (Redis numbers base and incr files with separate counters, so the base
//!   number says nothing about it);
//! - inside one incr file a segment joins when its `offset` equals the `end` reached so far;
//! - the next incr file must be numbered previous + 1 and start at offset 0;
//! - overlaps: a segment contained in another (a retried upload of the same range, or
//!   `[0,100)` then `[0,150)` after a shipper crash) is fine — the walk takes the fewest
//!   objects that reach the furthest boundary, so the covering one is used and the other is
//!   listed as *redundant*. Objects are never sliced: a restore concatenates whole objects,
//!   which keeps it simple and lets it check every object's length against its name. So a
//!   segment starting in the middle of another (`[0,100)` and `[50,150)`) cannot be joined,
//!   and the bytes only it holds count as missing;
//! - anything else is a [`Gap`], reported with the missing range. The first gap ends the
//!   restorable window; the walk goes on past it only to report further gaps.
//!
//! The shipper uploads a chain's base before any other object of it, so a listed chain
//! without a base lost it (deleted, or a prune of an old chain cut short); it is never
//! "still uploading".
//!
//! A chain is *restorable* when it has a base. Its window runs from its start to the stamp of
//! the last segment reached without a gap — or to its end marker when the WAL has no gap. A
//! restore to second T takes the newest chain whose window holds T.999 ([`Window::seconds`]);
//! a second no window holds (an agent restart, a failover, the second a snapshot started in
//! when the shipper could not place the switch inside it) is refused, naming the nearest
//! restorable seconds ([`nearest_seconds`]). A chain with
//! several bases (a shipper bug) uses the lowest-numbered one and reports the others.
//!
//! # Problems
//!
//! Everything wrong with a chain is computed once, in [`Chain::issues`] ([`Problem`]), and
//! used by `backup list` (the PROBLEMS column), `backup verify` (which fails on every
//! [`Problem::is_break`]: a missing base, a WAL gap, an extra end marker, a segment newer
//! than the end marker), restores and an empty node's start ([`Catalog::newest_point`]).
//!
//! # Restore
//!
//! [`Catalog::restore_plan`] without a target takes the newest point,
//! [`Catalog::newest_point`]: the newest chain in chain order and its whole restore path —
//! and only when that chain has its base and no WAL gap. Otherwise the newest point is not in
//! the backups, and the plan is an error naming the chain and what is missing, with the
//! `--at` of the newest second an older chain restores ([`newest_second`]): an older chain is
//! never taken in its place, since it would restore data up to a day old as if it were the
//! newest. With a target it takes the newest restorable chain whose window contains it
//! (chains overlap around a daily snapshot), and the restore path through the first segment
//! uploaded at or after the target: that segment may hold later writes, so the restore
//! truncates the AOF at the target. A target outside every window is an error listing the
//! windows — also one after the newest window's end, as writes after it may never have been
//! shipped; restoring without a target gives the newest state.
//!
//! What the listing cannot show, the shipper's contract covers: an incr file is uploaded in
//! order to its last byte before any byte of the next one, so a segment of incr N+1 proves
//! incr N was complete. The loss of a chain's *last* segments — an open chain's newest WAL,
//! or a closed chain's WAL just before its end marker (which records no position) — and of a
//! whole incr file at the very start of a chain are invisible here and to `backup verify`:
//! finding them needs a per-chain manifest of what was shipped, which the format does not
//! have yet.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

/// Where every backup object lives, relative to the bucket (and its URL's prefix).
pub const BACKUP_PREFIX: &str = "backup/";
const SUFFIX: &str = ".rsb";
const NODE_MAX: usize = 63;

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Why a name is not a backup object's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

/// A chain's identity: when its base was taken, by the primary of which epoch on which node.
/// Orders by start time, then epoch, then node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId {
    pub start_unix_ms: u64,
    pub epoch: u64,
    pub node: String,
}

impl ChainId {
    pub fn new(start_unix_ms: u64, epoch: u64, node: &str) -> Result<ChainId, NameError> {
        check_node(node)?;
        Ok(ChainId {
            start_unix_ms,
            epoch,
            node: node.to_string(),
        })
    }

    /// `backup/{chain}/`: the directory holding every object of the chain.
    pub fn dir(&self) -> String {
        format!("{BACKUP_PREFIX}{self}/")
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:013}-e{:010}-{}",
            self.start_unix_ms, self.epoch, self.node
        )
    }
}

impl FromStr for ChainId {
    type Err = NameError;

    fn from_str(s: &str) -> Result<ChainId, NameError> {
        let shape = || {
            NameError(format!(
                "chain id {s:?} is not {{start:013}}-e{{epoch:010}}-{{node}}"
            ))
        };
        let (start, rest) = s.split_once('-').ok_or_else(shape)?;
        let rest = rest.strip_prefix('e').ok_or_else(shape)?;
        let (epoch, node) = rest.split_once('-').ok_or_else(shape)?;
        let start_unix_ms = fixed(start, 13, "chain start")?;
        let epoch = fixed(epoch, 10, "epoch")?;
        ChainId::new(start_unix_ms, epoch, node)
    }
}

fn check_node(node: &str) -> Result<(), NameError> {
    let ok = !node.is_empty()
        && node.len() <= NODE_MAX
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "node {node:?} is not 1-63 characters of a-z, 0-9 and '-'"
        )))
    }
}

/// A zero-padded decimal number exactly as `{n:0width$}` writes it.
fn fixed(s: &str, width: usize, what: &str) -> Result<u64, NameError> {
    let bad = || {
        NameError(format!(
            "{what} {s:?} is not a {width}-digit zero-padded number"
        ))
    };
    if s.len() < width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = s.parse().map_err(|_| bad())?;
    if format!("{n:0width$}") != s {
        return Err(bad());
    }
    Ok(n)
}

/// A parsed backup object name. `path()` and `parse()` are inverses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    /// `backup/{chain}/base-{seq:06}.rsb`
    Base { chain: ChainId, seq: u64 },
    /// `backup/{chain}/wal/{incr_seq:06}-{offset:016}-{end:016}-{unix_ms:013}.rsb`
    Segment {
        chain: ChainId,
        incr_seq: u64,
        offset: u64,
        end: u64,
        unix_ms: u64,
    },
    /// `backup/{chain}/end-{unix_ms:013}.rsb`
    End { chain: ChainId, unix_ms: u64 },
}

impl ObjectName {
    pub fn chain(&self) -> &ChainId {
        match self {
            ObjectName::Base { chain, .. }
            | ObjectName::Segment { chain, .. }
            | ObjectName::End { chain, .. } => chain,
        }
    }

    /// The object's path in the bucket.
    pub fn path(&self) -> String {
        match self {
            ObjectName::Base { chain, seq } => format!("{}base-{seq:06}{SUFFIX}", chain.dir()),
            ObjectName::Segment {
                chain,
                incr_seq,
                offset,
                end,
                unix_ms,
            } => format!(
                "{}wal/{incr_seq:06}-{offset:016}-{end:016}-{unix_ms:013}{SUFFIX}",
                chain.dir()
            ),
            ObjectName::End { chain, unix_ms } => {
                format!("{}end-{unix_ms:013}{SUFFIX}", chain.dir())
            }
        }
    }

    /// Parse a path from a listing; the error says why it is not a backup object.
    pub fn parse(path: &str) -> Result<ObjectName, NameError> {
        let rest = path
            .strip_prefix(BACKUP_PREFIX)
            .ok_or_else(|| NameError(format!("not under {BACKUP_PREFIX}")))?;
        let (chain, file, in_wal) = match rest.split('/').collect::<Vec<_>>().as_slice() {
            [chain, file] => (*chain, *file, false),
            [chain, "wal", file] => (*chain, *file, true),
            _ => {
                return Err(NameError(
                    "not backup/{chain}/base-…, backup/{chain}/end-… or backup/{chain}/wal/…"
                        .into(),
                ))
            }
        };
        let chain: ChainId = chain.parse()?;
        let stem = file
            .strip_suffix(SUFFIX)
            .ok_or_else(|| NameError(format!("{file:?} does not end in {SUFFIX}")))?;
        if in_wal {
            let [incr, offset, end, unix_ms] = stem.split('-').collect::<Vec<_>>()[..] else {
                return Err(NameError(format!(
                    "WAL segment {file:?} is not {{incr_seq}}-{{offset}}-{{end}}-{{unix_ms}}{SUFFIX}"
                )));
            };
            let incr_seq = fixed(incr, 6, "incr seq")?;
            let offset = fixed(offset, 16, "offset")?;
            let end = fixed(end, 16, "end")?;
            let unix_ms = fixed(unix_ms, 13, "upload time")?;
            if end < offset {
                return Err(NameError(format!(
                    "WAL segment {file:?} ends ({end}) before it starts ({offset})"
                )));
            }
            Ok(ObjectName::Segment {
                chain,
                incr_seq,
                offset,
                end,
                unix_ms,
            })
        } else if let Some(seq) = stem.strip_prefix("base-") {
            let seq = fixed(seq, 6, "base seq")?;
            Ok(ObjectName::Base { chain, seq })
        } else if let Some(t) = stem.strip_prefix("end-") {
            let unix_ms = fixed(t, 13, "end time")?;
            Ok(ObjectName::End { chain, unix_ms })
        } else {
            Err(NameError(format!(
                "{file:?} is neither base-{{seq}}{SUFFIX} nor end-{{unix_ms}}{SUFFIX}"
            )))
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

// ---------------------------------------------------------------------------------------------
// Time and size formatting (no chrono here)
// ---------------------------------------------------------------------------------------------

/// `2026-11-20T10:00:00Z`, with `.mmm` when the milliseconds are not zero.
pub fn format_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if unix_ms % 1000 != 0 {
        let _ = write!(s, ".{:03}", unix_ms % 1000);
    }
    s.push('Z');
    s
}

/// Parse what [`format_utc`] writes (`YYYY-MM-DDTHH:MM:SS[.mmm]Z`), e.g. for `restore --at`.
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let (time, ms) = match time.split_once('.') {
        Some((t, ms)) if ms.len() == 3 => (t, ms.parse::<u64>().ok()?),
        Some(_) => return None,
        None => (time, 0),
    };
    let num = |p: &str, len: usize| -> Option<u64> {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok())?
    };
    let [y, mo, d] = date.split('-').collect::<Vec<_>>()[..] else {
        return None;
    };
    let [h, mi, sec] = time.split(':').collect::<Vec<_>>()[..] else {
        return None;
    };
    let (y, mo, d) = (num(y, 4)?, num(mo, 2)?, num(d, 2)?);
    let (h, mi, sec) = (num(h, 2)?, num(mi, 2)?, num(sec, 2)?);
    if y < 1970 || !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1000) + ms)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm,
/// restricted to dates from 1970 on).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// (year ≥ 1970, month, day) → days since 1970-01-01.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `512 B`, `1.5 KiB`, `12.0 MiB`, …
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

// ---------------------------------------------------------------------------------------------
// The catalog
// ---------------------------------------------------------------------------------------------

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub path: String,
    pub size: u64,
    /// The store's clock. Not used for decisions: the catalog goes by the times in the names,
    /// which the writing primary chose.
    pub last_modified_unix_ms: u64,
}

/// An object under `backup/` whose name is not a backup object's. Never deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignObject {
    pub path: String,
    pub size: u64,
    /// Why the name did not parse.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub path: String,
    /// Redis's base file number (`appendonly.aof.{seq}.base.rdb`).
    pub seq: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: String,
    /// Redis's incr file number (`appendonly.aof.{incr_seq}.incr.aof`).
    pub incr_seq: u64,
    /// Bytes `[offset, end)` of that file.
    pub offset: u64,
    pub end: u64,
    /// Upload time; none of the segment's writes is newer.
    pub unix_ms: u64,
    /// Stored (sealed) size.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndMarker {
    pub path: String,
    pub unix_ms: u64,
    pub size: u64,
}

/// A byte position in the WAL: an offset in one incr file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub incr_seq: u64,
    pub offset: u64,
}

/// WAL the restore cannot use: from `from` (the first byte missing) to `to` (where usable
/// segments resume, or the furthest byte any segment of that incr file holds). The bytes are
/// missing, or only inside a segment that starts in the middle of another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: Position,
    pub to: Position,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from.incr_seq == self.to.incr_seq {
            write!(
                f,
                "incr {} bytes [{}, {})",
                self.from.incr_seq, self.from.offset, self.to.offset
            )
        } else {
            write!(
                f,
                "incr {} byte {} to incr {} byte {}",
                self.from.incr_seq, self.from.offset, self.to.incr_seq, self.to.offset
            )
        }
    }
}

/// The times a chain can restore to, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
}

impl Window {
    pub fn contains(&self, unix_ms: u64) -> bool {
        self.start_unix_ms <= unix_ms && unix_ms <= self.end_unix_ms
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to {}",
            format_utc(self.start_unix_ms),
            format_utc(self.end_unix_ms)
        )
    }
}

/// One chain as the listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub id: ChainId,
    /// The lowest-numbered base of the chain; `None` when it was lost (deleted, or a prune cut
    /// short: an orphan). The shipper uploads it before any other object of the chain.
    pub base: Option<Base>,
    /// Further bases (a shipper bug): reported, ignored by the restore.
    pub extra_bases: Vec<Base>,
    /// Every segment, sorted by (incr_seq, offset, end, upload time).
    pub segments: Vec<Segment>,
    /// Normally none or one.
    pub end_markers: Vec<EndMarker>,
    /// The segments a full restore fetches, in order: the fewest objects reaching the first
    /// gap (or the end of the WAL).
    pub restore_path: Vec<Segment>,
    /// Paths of segments no walk uses (contained in others, retried, or joined nowhere).
    pub redundant: Vec<String>,
    pub gaps: Vec<Gap>,
    /// `Some` exactly when the chain has a base.
    pub window: Option<Window>,
    /// Everything wrong with the chain that the listing shows, computed once here and used by
    /// `backup list`, `backup verify`, restores and an empty node's start alike.
    pub issues: Vec<Problem>,
}

/// Something wrong with a chain, as far as the listing shows.
///
/// What a listing cannot show is not here: the loss of an open chain's *last* segments (or of
/// a closed chain's last segments before its end marker, which records no position) leaves
/// WAL that looks complete. Detecting that needs a per-chain manifest of what was shipped,
/// which the format does not have yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No base object: nothing of the chain can be restored. The shipper uploads a chain's
    /// base before any other object of it, so a listed chain without one lost its base
    /// (deleted by hand or by the store, or a prune of an old chain cut short).
    MissingBase { chain: ChainId },
    /// A further base (a shipper bug): reported, ignored by the restore. Not a break.
    ExtraBase { seq: u64 },
    /// WAL the restore cannot use. The first gap of a chain with a base ends its window.
    Gap { gap: Gap, ends_window: bool },
    /// More end markers than one (the first one counts).
    ExtraEndMarker { path: String },
    /// A segment stamped after the chain's end marker: the marker does not close the WAL it
    /// claims to (the chain was written to after it was closed, or the clock went back).
    SegmentAfterEnd {
        segment: String,
        segment_unix_ms: u64,
        marker: String,
        marker_unix_ms: u64,
    },
}

impl Problem {
    /// Whether backup data is missing or contradicts itself (`backup verify` fails on it).
    /// Only an extra base is not: the chain is whole, it just has one base too many.
    pub fn is_break(&self) -> bool {
        !matches!(self, Problem::ExtraBase { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingBase { chain } => write!(
                f,
                "no base: {}base-NNNNNN{SUFFIX} is missing, nothing of the chain can be restored",
                chain.dir()
            ),
            Problem::ExtraBase { seq } => write!(f, "extra base {seq} ignored"),
            Problem::Gap {
                gap,
                ends_window: true,
            } => write!(f, "WAL gap ends the window: {gap}"),
            Problem::Gap { gap, .. } => write!(f, "WAL gap: {gap}"),
            Problem::ExtraEndMarker { path } => write!(f, "extra end marker {path}"),
            Problem::SegmentAfterEnd {
                segment,
                segment_unix_ms,
                marker_unix_ms,
                ..
            } => write!(
                f,
                "end marker ({}) is older than the last segment {segment} (uploaded {})",
                format_utc(*marker_unix_ms),
                format_utc(*segment_unix_ms)
            ),
        }
    }
}

impl Chain {
    fn build(
        id: ChainId,
        mut bases: Vec<Base>,
        mut segments: Vec<Segment>,
        mut end_markers: Vec<EndMarker>,
    ) -> Chain {
        bases.sort_by(|a, b| (a.seq, &a.path).cmp(&(b.seq, &b.path)));
        let base = (!bases.is_empty()).then(|| bases.remove(0));
        segments.sort_by(|a, b| {
            (a.incr_seq, a.offset, a.end, a.unix_ms, &a.path)
                .cmp(&(b.incr_seq, b.offset, b.end, b.unix_ms, &b.path))
        });
        end_markers.sort_by(|a, b| (a.unix_ms, &a.path).cmp(&(b.unix_ms, &b.path)));
        let walk = walk(&segments);
        let restore_path: Vec<Segment> = walk
            .restore_path
            .iter()
            .map(|&i| segments[i].clone())
            .collect();
        let redundant = segments
            .iter()
            .zip(&walk.used)
            .filter(|(_, used)| !**used)
            .map(|(s, _)| s.path.clone())
            .collect();
        let window = base.as_ref().map(|_| {
            let start = id.start_unix_ms;
            let mut end = restore_path
                .iter()
                .map(|s| s.unix_ms)
                .max()
                .unwrap_or(start)
                .max(start);
            if walk.gaps.is_empty() {
                if let Some(marker) = end_markers.first() {
                    end = end.max(marker.unix_ms);
                }
            }
            Window {
                start_unix_ms: start,
                end_unix_ms: end,
            }
        });
        let mut issues = Vec::new();
        if base.is_none() {
            issues.push(Problem::MissingBase { chain: id.clone() });
        }
        issues.extend(bases.iter().map(|b| Problem::ExtraBase { seq: b.seq }));
        issues.extend(walk.gaps.iter().enumerate().map(|(i, g)| Problem::Gap {
            gap: *g,
            ends_window: i == 0 && base.is_some(),
        }));
        if let Some(marker) = end_markers.first() {
            issues.extend(end_markers[1..].iter().map(|m| Problem::ExtraEndMarker {
                path: m.path.clone(),
            }));
            let last = segments.iter().max_by_key(|s| (s.unix_ms, &s.path));
            if let Some(last) = last.filter(|s| s.unix_ms > marker.unix_ms) {
                issues.push(Problem::SegmentAfterEnd {
                    segment: last.path.clone(),
                    segment_unix_ms: last.unix_ms,
                    marker: marker.path.clone(),
                    marker_unix_ms: marker.unix_ms,
                });
            }
        }
        Chain {
            id,
            base,
            extra_bases: bases,
            segments,
            end_markers,
            restore_path,
            redundant,
            gaps: walk.gaps,
            window,
            issues,
        }
    }

    /// The problems that mean backup data is missing or contradicts itself
    /// ([`Problem::is_break`]): what `backup verify` fails on.
    pub fn breaks(&self) -> impl Iterator<Item = &Problem> {
        self.issues.iter().filter(|p| p.is_break())
    }

    /// Whether the chain has a base (and so a window).
    pub fn restorable(&self) -> bool {
        self.base.is_some()
    }

    /// Sum of the stored sizes of every object of the chain.
    pub fn total_bytes(&self) -> u64 {
        self.base.iter().map(|b| b.size).sum::<u64>()
            + self.extra_bases.iter().map(|b| b.size).sum::<u64>()
            + self.segments.iter().map(|s| s.size).sum::<u64>()
            + self.end_markers.iter().map(|m| m.size).sum::<u64>()
    }

    /// Every object path of the chain.
    pub fn paths(&self) -> Vec<&str> {
        self.objects().into_iter().map(|(path, _)| path).collect()
    }

    /// Every object of the chain with its stored size.
    pub fn objects(&self) -> Vec<(&str, u64)> {
        self.base
            .iter()
            .chain(&self.extra_bases)
            .map(|b| (b.path.as_str(), b.size))
            .chain(self.segments.iter().map(|s| (s.path.as_str(), s.size)))
            .chain(self.end_markers.iter().map(|m| (m.path.as_str(), m.size)))
            .collect()
    }

    /// What an operator should look at, in plain words ([`Chain::issues`]).
    pub fn problems(&self) -> Vec<String> {
        self.issues.iter().map(Problem::to_string).collect()
    }

    /// Base plus the restore path cut after the first segment stamped at or after `target`,
    /// and the segments after it with the same stamp (one observation shipped in pieces: the
    /// stamp holds for the last piece only). They may hold writes newer than `target`: the
    /// restore truncates the AOF there.
    fn plan(&self, target: Option<u64>) -> Option<RestorePlan> {
        let base = self.base.clone()?;
        let window = self.window?;
        let segments = match target {
            None => self.restore_path.clone(),
            Some(t) => {
                let path = &self.restore_path;
                let n = match path.iter().position(|s| s.unix_ms >= t) {
                    Some(i) => {
                        i + 1
                            + path[i + 1..]
                                .iter()
                                .take_while(|s| s.unix_ms == path[i].unix_ms)
                                .count()
                    }
                    None => path.len(),
                };
                path[..n].to_vec()
            }
        };
        Some(RestorePlan {
            chain: self.id.clone(),
            target_unix_ms: target,
            restores_to_unix_ms: target.unwrap_or(window.end_unix_ms),
            base,
            segments,
        })
    }
}

struct Walk {
    restore_path: Vec<usize>,
    used: Vec<bool>,
    gaps: Vec<Gap>,
}

/// The WAL walk of the module doc over sorted segments.
fn walk(segments: &[Segment]) -> Walk {
    let mut used = vec![false; segments.len()];
    let mut gaps = Vec::new();
    let mut restore_path = Vec::new();
    let mut broken = false;
    let mut expected: Option<Position> = None;
    let mut i = 0;
    while i < segments.len() {
        let incr = segments[i].incr_seq;
        let len = segments[i..]
            .iter()
            .take_while(|s| s.incr_seq == incr)
            .count();
        let group: Vec<(usize, &Segment)> = (i..i + len).map(|k| (k, &segments[k])).collect();
        i += len;

        let first = Position {
            incr_seq: incr,
            offset: group[0].1.offset,
        };
        let want = expected.unwrap_or(Position {
            incr_seq: incr,
            offset: 0,
        });
        if want != first {
            gaps.push(Gap {
                from: want,
                to: first,
            });
            broken = true;
        }
        let max_end = group.iter().map(|(_, s)| s.end).max().unwrap_or(0);
        let mut start = first.offset;
        loop {
            let (reached, path) = cover(&group, start);
            for &k in &path {
                used[k] = true;
            }
            if !broken {
                restore_path.extend(&path);
            }
            let at = |offset| Position {
                incr_seq: incr,
                offset,
            };
            let next = group
                .iter()
                .map(|(_, s)| s.offset)
                .filter(|&o| o > reached)
                .min();
            match next {
                Some(next) => {
                    gaps.push(Gap {
                        from: at(reached),
                        to: at(next),
                    });
                    broken = true;
                    start = next;
                }
                None => {
                    if max_end > reached {
                        gaps.push(Gap {
                            from: at(reached),
                            to: at(max_end),
                        });
                        broken = true;
                    }
                    break;
                }
            }
        }
        expected = Some(Position {
            incr_seq: incr.saturating_add(1),
            offset: 0,
        });
    }
    Walk {
        restore_path,
        used,
        gaps,
    }
}

/// Inside one incr file (segments sorted by offset): from `start`, the furthest boundary
/// reachable by joining segments end to start, and the fewest objects (then fewest bytes)
/// reaching it. Processing by offset is a topological order: a segment ending at `p` starts
/// before `p`, so `best[p]` is final before any segment starting at `p` is looked at.
fn cover(group: &[(usize, &Segment)], start: u64) -> (u64, Vec<usize>) {
    /// The best way found to reach a boundary.
    #[derive(Clone, Copy)]
    struct Step {
        objects: usize,
        bytes: u64,
        /// The last segment taken and the boundary it started from.
        via: Option<(usize, u64)>,
    }
    let mut best: BTreeMap<u64, Step> = BTreeMap::new();
    best.insert(
        start,
        Step {
            objects: 0,
            bytes: 0,
            via: None,
        },
    );
    for &(k, s) in group {
        if s.end <= s.offset || s.offset < start {
            continue;
        }
        let Some(&from) = best.get(&s.offset) else {
            continue;
        };
        let candidate = Step {
            objects: from.objects + 1,
            bytes: from.bytes + s.size,
            via: Some((k, s.offset)),
        };
        let better = best
            .get(&s.end)
            .is_none_or(|cur| (candidate.objects, candidate.bytes) < (cur.objects, cur.bytes));
        if better {
            best.insert(s.end, candidate);
        }
    }
    let reached = *best.keys().next_back().unwrap_or(&start);
    let mut path = Vec::new();
    let mut pos = reached;
    while let Some(&Step {
        via: Some((k, prev)),
        ..
    }) = best.get(&pos)
    {
        path.push(k);
        pos = prev;
    }
    path.reverse();
    (reached, path)
}

/// What to fetch for a restore, in order: the base, then the segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub chain: ChainId,
    /// The point in time asked for, if any. The last segment may hold writes after it: the
    /// restore truncates the AOF there.
    pub target_unix_ms: Option<u64>,
    /// The target, or the end of the chain's window.
    pub restores_to_unix_ms: u64,
    pub base: Base,
    pub segments: Vec<Segment>,
}

impl RestorePlan {
    /// Objects in fetch order, with their stored sizes.
    pub fn objects(&self) -> Vec<(&str, u64)> {
        std::iter::once((self.base.path.as_str(), self.base.size))
            .chain(self.segments.iter().map(|s| (s.path.as_str(), s.size)))
            .collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.base.size + self.segments.iter().map(|s| s.size).sum::<u64>()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "no restorable backup: none of the {chains} chain(s) under {BACKUP_PREFIX} has a base \
         ({foreign} foreign object(s) left alone)"
    )]
    NothingRestorable { chains: usize, foreign: usize },
    #[error("{}", not_covered(*target_unix_ms, windows, newest_problem.as_deref()))]
    NotCovered {
        target_unix_ms: u64,
        /// Every restorable chain's window, in chain order.
        windows: Vec<(ChainId, Window)>,
        /// Why the newest point cannot be restored, when it cannot ([`Catalog::newest_point`]).
        newest_problem: Option<String>,
    },
    /// The newest chain has no base: the newest point is lost, and an older chain would
    /// restore older data as if it were the newest. Never chosen silently.
    #[error("{}", newest_without_base(chain, *segments, windows))]
    NewestHasNoBase {
        chain: ChainId,
        /// WAL segments the chain holds (writes no restore can reach).
        segments: usize,
        /// Every restorable chain's window, in chain order.
        windows: Vec<(ChainId, Window)>,
    },
    /// The newest chain's WAL has a gap: its writes after the gap are not in the backups.
    #[error("{}", newest_has_gap(chain, gap, window))]
    NewestHasGap {
        chain: ChainId,
        gap: Gap,
        /// How far the chain restores (to just before the gap).
        window: Window,
    },
}

/// The newest `--at` second (a restore to second T takes everything up to T.999) inside
/// `w`, if the window holds one.
pub fn newest_second(w: &Window) -> Option<u64> {
    w.seconds().map(|(_, last)| last)
}

impl Window {
    /// The first and last `--at` seconds the window restores: second T when T.999 is inside
    /// it (a restore to T holds every write that ran by the end of T); `None` when it holds
    /// no such instant.
    pub fn seconds(&self) -> Option<(u64, u64)> {
        let last = self.end_unix_ms.checked_sub(999)? / 1000;
        let first = self.start_unix_ms.saturating_sub(999).div_ceil(1000);
        (first <= last).then_some((first, last))
    }
}

/// The restorable `--at` seconds nearest to `second` among `windows`: the newest before it and
/// the oldest after it.
pub fn nearest_seconds(windows: &[Window], second: u64) -> (Option<u64>, Option<u64>) {
    let ranges: Vec<(u64, u64)> = windows.iter().filter_map(Window::seconds).collect();
    let before = ranges
        .iter()
        .filter(|(first, _)| *first < second)
        .map(|&(_, last)| last.min(second - 1))
        .max();
    let after = ranges
        .iter()
        .filter(|(_, last)| *last > second)
        .map(|&(first, _)| first.max(second + 1))
        .min();
    (before, after)
}

fn nearest_hint(windows: &[(ChainId, Window)], target: u64) -> String {
    let ws: Vec<Window> = windows.iter().map(|(_, w)| *w).collect();
    let say = |s: u64| format!("--at {s} ({})", format_utc(s * 1000));
    match nearest_seconds(&ws, target / 1000) {
        (Some(b), Some(a)) => format!(
            "; nearest restorable seconds: {} before, {} after",
            say(b),
            say(a)
        ),
        (Some(b), None) => format!("; nearest restorable second: {} before", say(b)),
        (None, Some(a)) => format!("; nearest restorable second: {} after", say(a)),
        (None, None) => String::new(),
    }
}

fn list_windows(windows: &[(ChainId, Window)]) -> String {
    if windows.is_empty() {
        return "none".to_string();
    }
    let list: Vec<String> = windows
        .iter()
        .map(|(id, w)| format!("{w} (chain {id})"))
        .collect();
    list.join(", ")
}

fn newest_without_base(chain: &ChainId, segments: usize, windows: &[(ChainId, Window)]) -> String {
    let older = windows
        .iter()
        .rev()
        .find_map(|(id, w)| Some((id, newest_second(w)?)));
    let choose = match older {
        Some((id, s)) => format!(
            "To accept losing those writes, choose an older point explicitly: `redis-steward \
             restore --at {s}` ({}, the newest second of chain {id}) or another time in a \
             restorable window",
            format_utc(s * 1000)
        ),
        None => "No older chain holds a whole restorable second either".to_string(),
    };
    format!(
        "the newest backup chain {chain} cannot be restored: its base object \
         ({}base-NNNNNN{SUFFIX}) is missing ({segments} WAL segment(s) of it are there, \
         unusable without it). Refusing to restore an older chain in its place, which would \
         silently lose every write since that chain ended. {choose}; restorable windows: {}",
        chain.dir(),
        list_windows(windows)
    )
}

fn newest_has_gap(chain: &ChainId, gap: &Gap, window: &Window) -> String {
    let at = match newest_second(window) {
        Some(s) => format!("Restore with --at {s} to accept losing them"),
        None => "No whole second before the gap can be restored".to_string(),
    };
    format!(
        "chain {chain} is missing WAL ({gap}): its newest complete point is {}; writes after \
         that are not in the backups. {at}",
        format_utc(window.end_unix_ms)
    )
}

fn not_covered(target: u64, windows: &[(ChainId, Window)], newest_problem: Option<&str>) -> String {
    let list: Vec<String> = windows
        .iter()
        .map(|(id, w)| format!("{w} (chain {id})"))
        .collect();
    let oldest = windows.iter().map(|(_, w)| w.start_unix_ms).min();
    let newest = windows.iter().map(|(_, w)| w.end_unix_ms).max();
    let hint = match (oldest, newest) {
        (Some(o), _) if target < o => format!(
            "it is before the oldest backup ({}); older history was pruned or never taken",
            format_utc(o)
        ),
        (_, Some(n)) if target > n => match newest_problem {
            Some(p) => format!(
                "it is after the newest restorable point ({}), and nothing later can be \
                 restored: {p}",
                format_utc(n)
            ),
            None => format!(
                "it is after the newest restorable point ({}); restore without a time to get it",
                format_utc(n)
            ),
        },
        _ => "it falls between windows (a failover, an agent restart, a gap in the WAL, or the \
              second a snapshot started in, when it cannot be told which chain holds its \
              writes)"
            .to_string(),
    };
    format!(
        "no restorable chain covers {}: {hint}{}; restorable windows: {}",
        format_utc(target),
        nearest_hint(windows, target),
        list.join(", ")
    )
}

/// [`CatalogError::NewestHasNoBase`] and [`CatalogError::NewestHasGap`] in a few words, for
/// the hint of [`CatalogError::NotCovered`] and the footer of `backup list`.
fn newest_problem_short(e: &CatalogError) -> Option<String> {
    match e {
        CatalogError::NewestHasNoBase { chain, .. } => Some(format!(
            "the newest chain {chain} has no base ({}base-NNNNNN{SUFFIX} is missing)",
            chain.dir()
        )),
        CatalogError::NewestHasGap { chain, gap, .. } => {
            Some(format!("the newest chain {chain} is missing WAL ({gap})"))
        }
        _ => None,
    }
}

/// Everything under `backup/`, by chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// Sorted by (start, epoch, node).
    pub chains: Vec<Chain>,
    /// Sorted by path.
    pub foreign: Vec<ForeignObject>,
    /// The data stores `backup/owner-{id}` markers name (see [`Ownership`]), sorted.
    pub owners: Vec<String>,
}

/// `backup/owner-{data store id}`: an empty object naming the data store whose backups the
/// prefix holds, written by its primary before its first chain. Two data stores configured
/// with the same URL would otherwise prune each other's chains and restore each other's
/// data as their own.
pub const OWNER_PREFIX: &str = "backup/owner-";

/// Whose backups a prefix holds, for a data store about to write, prune or restore there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// The only owner marker names this data store.
    Ours,
    /// No marker: an empty prefix, or chains an agent before markers wrote (adopted).
    Unclaimed,
    /// A marker names another data store: never write, prune or restore here.
    Other(Vec<String>),
}

impl Catalog {
    pub fn ownership(&self, data_store: &str) -> Ownership {
        match self.owners.as_slice() {
            [] => Ownership::Unclaimed,
            [one] if one == data_store => Ownership::Ours,
            _ => Ownership::Other(
                self.owners
                    .iter()
                    .filter(|o| *o != data_store)
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// The error for [`Ownership::Other`]: names both data stores and the way out.
    pub fn refuse_foreign(&self, data_store: &str, store: &str) -> Option<String> {
        let Ownership::Other(others) = self.ownership(data_store) else {
            return None;
        };
        Some(format!(
            "the backups at {store} belong to data store {} (marker {OWNER_PREFIX}{}), not to \
             {data_store:?}: two data stores must not share a backup location (each would \
             prune the other's chains). Give this data store its own backup.url prefix, or \
             restore that data store's backups with a configuration whose data_store_id is \
             {:?}",
            others.join(", "),
            others[0],
            others[0]
        ))
    }
}

impl Catalog {
    /// Build the catalog from a listing (any order; paths outside `backup/` are skipped).
    pub fn from_listing(objects: &[ListedObject]) -> Catalog {
        type Parts = (Vec<Base>, Vec<Segment>, Vec<EndMarker>);
        let mut sorted: Vec<&ListedObject> = objects
            .iter()
            .filter(|o| o.path.starts_with(BACKUP_PREFIX))
            .collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        sorted.dedup_by(|a, b| a.path == b.path);

        let mut chains: BTreeMap<ChainId, Parts> = BTreeMap::new();
        let mut foreign = Vec::new();
        let mut owners = Vec::new();
        for o in sorted {
            if let Some(owner) = o.path.strip_prefix(OWNER_PREFIX) {
                owners.push(owner.to_string());
                continue;
            }
            let name = match ObjectName::parse(&o.path) {
                Ok(name) => name,
                Err(e) => {
                    foreign.push(ForeignObject {
                        path: o.path.clone(),
                        size: o.size,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let parts = chains.entry(name.chain().clone()).or_default();
            let path = o.path.clone();
            let size = o.size;
            match name {
                ObjectName::Base { seq, .. } => parts.0.push(Base { path, seq, size }),
                ObjectName::Segment {
                    incr_seq,
                    offset,
                    end,
                    unix_ms,
                    ..
                } => parts.1.push(Segment {
                    path,
                    incr_seq,
                    offset,
                    end,
                    unix_ms,
                    size,
                }),
                ObjectName::End { unix_ms, .. } => parts.2.push(EndMarker {
                    path,
                    unix_ms,
                    size,
                }),
            }
        }
        Catalog {
            chains: chains
                .into_iter()
                .map(|(id, (b, s, e))| Chain::build(id, b, s, e))
                .collect(),
            foreign,
            owners,
        }
    }

    pub fn chain(&self, id: &ChainId) -> Option<&Chain> {
        self.chains.iter().find(|c| &c.id == id)
    }

    /// The last restorable chain in chain order. Not the newest point when a newer chain lost
    /// its base: restores go by [`Catalog::newest_point`].
    pub fn newest_restorable(&self) -> Option<&Chain> {
        self.chains.iter().rev().find(|c| c.restorable())
    }

    /// Every restorable chain's window, in chain order.
    fn windows(&self) -> Vec<(ChainId, Window)> {
        self.chains
            .iter()
            .filter_map(|c| Some((c.id.clone(), c.window?)))
            .collect()
    }

    /// The chain holding the newest point, which a restore without a time (and an empty
    /// node's start) takes: the newest chain in chain order, and only when it is whole. When
    /// the newest chain has no base or a WAL gap, the newest point is not in the backups, and
    /// this is an error saying so — never the previous chain, which would restore older data
    /// as if it were the newest (an older point is for the operator to choose, with a time).
    pub fn newest_point(&self) -> Result<&Chain, CatalogError> {
        let newest = match self.chains.last() {
            Some(c) if self.chains.iter().any(Chain::restorable) => c,
            _ => {
                return Err(CatalogError::NothingRestorable {
                    chains: self.chains.len(),
                    foreign: self.foreign.len(),
                })
            }
        };
        match (newest.window, newest.gaps.first()) {
            (None, _) => Err(CatalogError::NewestHasNoBase {
                chain: newest.id.clone(),
                segments: newest.segments.len(),
                windows: self.windows(),
            }),
            (Some(window), Some(gap)) => Err(CatalogError::NewestHasGap {
                chain: newest.id.clone(),
                gap: *gap,
                window,
            }),
            (Some(_), None) => Ok(newest),
        }
    }

    /// What to fetch to restore the newest state (`None`: [`Catalog::newest_point`]) or the
    /// state at `target_unix_ms`: the newest restorable chain whose window covers it.
    pub fn restore_plan(&self, target_unix_ms: Option<u64>) -> Result<RestorePlan, CatalogError> {
        let chain = match target_unix_ms {
            None => self.newest_point()?,
            Some(t) => {
                let windows = self.windows();
                if windows.is_empty() {
                    return Err(CatalogError::NothingRestorable {
                        chains: self.chains.len(),
                        foreign: self.foreign.len(),
                    });
                }
                // Newest first; every restorable chain has a window.
                let covering = self
                    .chains
                    .iter()
                    .rev()
                    .find(|c| c.window.is_some_and(|w| w.contains(t)));
                match covering {
                    Some(c) => c,
                    None => {
                        let newest_problem = self
                            .newest_point()
                            .err()
                            .and_then(|e| newest_problem_short(&e));
                        return Err(CatalogError::NotCovered {
                            target_unix_ms: t,
                            windows,
                            newest_problem,
                        });
                    }
                }
            }
        };
        Ok(chain
            .plan(target_unix_ms)
            .expect("a chain with a window has a base"))
    }

    /// The `backup list` table: one line per chain, then the newest restorable point and the
    /// foreign objects.
    /// `backup list --json`: every chain with its state, window and problems, the newest
    /// restorable point (or why it is lost) and the owner markers. Stable field names; times
    /// in unix ms and UTC text both.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let utc = |t: Option<u64>| t.map(format_utc);
        let chains: Vec<serde_json::Value> = self
            .chains
            .iter()
            .map(|c| {
                let w = c.window;
                json!({
                    "chain": c.id.to_string(),
                    "epoch": c.id.epoch,
                    "node": c.id.node,
                    "started_unix_ms": c.id.start_unix_ms,
                    "state": if c.end_markers.is_empty() { "open" } else { "closed" },
                    "base": c.base.as_ref().map(|b| json!({"seq": b.seq, "bytes": b.size})),
                    "segments": c.segments.len(),
                    "stored_bytes": c.total_bytes(),
                    "restorable": c.restorable(),
                    "oldest_restorable_unix_ms": w.map(|w| w.start_unix_ms),
                    "newest_restorable_unix_ms": w.map(|w| w.end_unix_ms),
                    "oldest_restorable": utc(w.map(|w| w.start_unix_ms)),
                    "newest_restorable": utc(w.map(|w| w.end_unix_ms)),
                    "newest_second": w.as_ref().and_then(newest_second),
                    "problems": c.problems(),
                    "broken": c.breaks().next().is_some(),
                })
            })
            .collect();
        let newest = match self.newest_point() {
            Ok(c) => json!({
                "chain": c.id.to_string(),
                "unix_ms": c.window.map(|w| w.end_unix_ms),
                "utc": utc(c.window.map(|w| w.end_unix_ms)),
            }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        json!({
            "owners": self.owners,
            "foreign_objects": self.foreign.len(),
            "newest_point": newest,
            "chains": chains,
        })
    }

    pub fn render_table(&self) -> String {
        let header = [
            "CHAIN",
            "EPOCH",
            "NODE",
            "BASE",
            "WAL",
            "WINDOW (UTC)",
            "SIZE",
            "PROBLEMS",
        ];
        let rows: Vec<[String; 8]> = self
            .chains
            .iter()
            .map(|c| {
                let base = match &c.base {
                    Some(b) => format!("#{} {}", b.seq, human_bytes(b.size)),
                    None => "missing".to_string(),
                };
                let mut wal = match (c.segments.first(), c.segments.last()) {
                    (Some(first), Some(last)) if first.incr_seq == last.incr_seq => {
                        format!("{} seg, incr {}", c.segments.len(), first.incr_seq)
                    }
                    (Some(first), Some(last)) => format!(
                        "{} seg, incr {}-{}",
                        c.segments.len(),
                        first.incr_seq,
                        last.incr_seq
                    ),
                    _ => "none".to_string(),
                };
                if !c.redundant.is_empty() {
                    let _ = write!(wal, " ({} redundant)", c.redundant.len());
                }
                let window = c
                    .window
                    .map_or_else(|| "not restorable".to_string(), |w| w.to_string());
                let problems = c.problems();
                [
                    c.id.to_string(),
                    c.id.epoch.to_string(),
                    c.id.node.clone(),
                    base,
                    wal,
                    window,
                    human_bytes(c.total_bytes()),
                    if problems.is_empty() {
                        "-".to_string()
                    } else {
                        problems.join("; ")
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    let _ = write!(l, "{cell:<w$}  ", w = widths[i]);
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header);
        for row in &rows {
            line(&row.each_ref().map(String::as_str));
        }
        if self.chains.is_empty() {
            out.push_str("(no backup chains)\n");
        }
        match (self.newest_point(), self.newest_restorable()) {
            (Ok(c), _) => {
                let w = c.window.expect("restorable chains have a window");
                let _ = writeln!(
                    out,
                    "newest restorable: {} (restores to {})",
                    c.id,
                    format_utc(w.end_unix_ms)
                );
            }
            (Err(e), Some(c)) if newest_problem_short(&e).is_some() => {
                let w = c.window.expect("restorable chains have a window");
                let why = newest_problem_short(&e).unwrap_or_default();
                let older = match newest_second(&w) {
                    Some(s) => format!("restore --at {s} or earlier"),
                    None => "restore --at a time in its window".to_string(),
                };
                let _ = writeln!(
                    out,
                    "newest point not restorable: {why}; a restore without --at refuses. \
                     Newest restorable chain: {} (to {}; {older})",
                    c.id,
                    format_utc(w.end_unix_ms)
                );
            }
            _ => out.push_str("newest restorable: none\n"),
        }
        if !self.foreign.is_empty() {
            let _ = writeln!(
                out,
                "foreign objects under {BACKUP_PREFIX} (left alone): {}",
                self.foreign.len()
            );
            for f in &self.foreign {
                let _ = writeln!(out, "  {} ({}): {}", f.path, human_bytes(f.size), f.reason);
            }
        }
        out
    }
}

impl fmt::Display for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_table())
    }
}

/// Listings for tests, here and in `retention`.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;

    pub const SEC: u64 = 1000;
    pub const MIN: u64 = 60 * SEC;
    pub const HOUR: u64 = 60 * MIN;
    pub const DAY: u64 = 24 * HOUR;
    /// 2026-11-01T00:00:00Z
    pub const T0: u64 = 1_793_491_200_000;

    pub fn id(start: u64, epoch: u64, node: &str) -> ChainId {
        ChainId::new(start, epoch, node).unwrap()
    }

    pub fn obj(path: String, size: u64) -> ListedObject {
        ListedObject {
            path,
            size,
            last_modified_unix_ms: 0,
        }
    }

    pub fn base(c: &ChainId, seq: u64, size: u64) -> ListedObject {
        let chain = c.clone();
        obj(ObjectName::Base { chain, seq }.path(), size)
    }

    pub fn seg(c: &ChainId, incr_seq: u64, offset: u64, end: u64, unix_ms: u64) -> ListedObject {
        let chain = c.clone();
        let name = ObjectName::Segment {
            chain,
            incr_seq,
            offset,
            end,
            unix_ms,
        };
        obj(name.path(), end - offset + 40)
    }

    pub fn end(c: &ChainId, unix_ms: u64) -> ListedObject {
        let chain = c.clone();
        obj(ObjectName::End { chain, unix_ms }.path(), 40)
    }

    /// A healthy chain: base, then one 1000-byte segment every `every` ms until `until`
    /// (incr file `incr`), and an end marker at `closed` if given.
    pub fn chain(
        c: &ChainId,
        incr: u64,
        every: u64,
        until: u64,
        closed: Option<u64>,
    ) -> Vec<ListedObject> {
        let mut out = vec![base(c, incr, 5000)];
        let mut t = c.start_unix_ms + every;
        let mut off = 0;
        while t <= until {
            out.push(seg(c, incr, off, off + 1000, t));
            off += 1000;
            t += every;
        }
        if let Some(m) = closed {
            out.push(end(c, m));
        }
        out
    }

    pub fn apply(listing: &[ListedObject], deleted: &[String]) -> Vec<ListedObject> {
        listing
            .iter()
            .filter(|o| !deleted.contains(&o.path))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn chain_ids_round_trip() {
        let c = id(1_763_632_800_000, 7, "node-a");
        assert_eq!(c.to_string(), "1763632800000-e0000000007-node-a");
        assert_eq!(c.dir(), "backup/1763632800000-e0000000007-node-a/");
        assert_eq!(c.to_string().parse::<ChainId>().unwrap(), c);
        // Nodes may hold dashes and digits; 63 characters is the limit.
        let long = "a-".repeat(31) + "b";
        assert_eq!(long.len(), 63);
        let c = id(0, 0, &long);
        assert_eq!(c.to_string().parse::<ChainId>().unwrap(), c);
        assert_eq!(
            "0000000000000-e0000000000-9".parse::<ChainId>().unwrap(),
            id(0, 0, "9")
        );
    }

    #[test]
    fn chain_ids_reject_what_the_formatter_never_writes() {
        for (s, why) in [
            ("", "is not {start:013}"),
            ("1763632800000", "is not {start:013}"),
            ("1763632800000-0000000007-node-a", "is not {start:013}"),
            ("1763632800000-e0000000007", "is not {start:013}"),
            ("176363280000-e0000000007-node-a", "chain start"),
            ("01763632800000-e0000000007-node-a", "chain start"),
            ("1763632800000-e000000007-node-a", "epoch"),
            ("1763632800000-e+000000007-node-a", "epoch"),
            ("1763632800000-e0000000007-", "node"),
            ("1763632800000-e0000000007-Node-a", "node"),
            ("1763632800000-e0000000007-node_a", "node"),
            ("1763632800000-e0000000007-node.a", "node"),
        ] {
            let err = s.parse::<ChainId>().unwrap_err().to_string();
            assert!(err.contains(why), "{s:?}: {err}");
        }
        let too_long = "a".repeat(64);
        assert!(ChainId::new(0, 0, &too_long).is_err());
        assert!(ChainId::new(0, 0, "").is_err());
    }

    #[test]
    fn object_names_round_trip() {
        let c = id(1_763_632_800_000, 3, "node-b");
        let cases = [
            (
                ObjectName::Base {
                    chain: c.clone(),
                    seq: 12,
                },
                "backup/1763632800000-e0000000003-node-b/base-000012.rsb",
            ),
            (
                ObjectName::Segment {
                    chain: c.clone(),
                    incr_seq: 13,
                    offset: 4096,
                    end: 8192,
                    unix_ms: 1_763_632_801_000,
                },
                "backup/1763632800000-e0000000003-node-b/wal/\
                 000013-0000000000004096-0000000000008192-1763632801000.rsb",
            ),
            (
                ObjectName::End {
                    chain: c.clone(),
                    unix_ms: 1_763_719_200_000,
                },
                "backup/1763632800000-e0000000003-node-b/end-1763719200000.rsb",
            ),
        ];
        for (name, path) in cases {
            assert_eq!(name.path(), path);
            assert_eq!(name.to_string(), path);
            assert_eq!(ObjectName::parse(path).unwrap(), name);
            assert_eq!(name.chain(), &c);
        }
        // Random values, including ones wider than their padding: still inverses.
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let chain = id(rng.random(), rng.random(), "n-1");
            let offset = rng.random_range(0..u64::MAX / 2);
            let name = match rng.random_range(0..3) {
                0 => ObjectName::Base {
                    chain,
                    seq: rng.random(),
                },
                1 => ObjectName::Segment {
                    chain,
                    incr_seq: rng.random(),
                    offset,
                    end: offset + rng.random_range(0..u64::MAX / 2),
                    unix_ms: rng.random(),
                },
                _ => ObjectName::End {
                    chain,
                    unix_ms: rng.random(),
                },
            };
            assert_eq!(ObjectName::parse(&name.path()).unwrap(), name);
        }
        // Padding makes listing order the numeric order.
        let a = ObjectName::Segment {
            chain: c.clone(),
            incr_seq: 9,
            offset: 999,
            end: 1000,
            unix_ms: 5,
        };
        let b = ObjectName::Segment {
            chain: c,
            incr_seq: 10,
            offset: 0,
            end: 1,
            unix_ms: 4,
        };
        assert!(a.path() < b.path());
    }

    #[test]
    fn object_names_reject_everything_else() {
        let d = "backup/1763632800000-e0000000003-node-b";
        for (path, why) in [
            ("lease/00000000000000000003", "not under backup/"),
            ("backup/", "not backup/{chain}"),
            ("backup/README", "not backup/{chain}"),
            (
                &format!("{d}/sub/dir/base-000001.rsb"),
                "not backup/{chain}",
            ),
            (&format!("{d}/wal/x/y.rsb"), "not backup/{chain}"),
            ("backup/latest/base-000001.rsb", "is not {start:013}"),
            (&format!("{d}/base-000001"), "does not end in .rsb"),
            (&format!("{d}/base-000001.rsb.tmp"), "does not end in .rsb"),
            (&format!("{d}/base-1.rsb"), "base seq"),
            (&format!("{d}/base-0000001.rsb"), "base seq"),
            (&format!("{d}/manifest.rsb"), "neither base-"),
            (&format!("{d}/end-176363280000.rsb"), "end time"),
            (
                &format!("{d}/wal/000001-0000000000000000-0000000000000100.rsb"),
                "is not {incr_seq}",
            ),
            (
                &format!("{d}/wal/000001-000000000000000-0000000000000100-1763632800000.rsb"),
                "offset",
            ),
            (
                &format!("{d}/wal/00000a-0000000000000000-0000000000000100-1763632800000.rsb"),
                "incr seq",
            ),
            (
                &format!("{d}/wal/000001-0000000000000200-0000000000000100-1763632800000.rsb"),
                "ends (100) before it starts (200)",
            ),
        ] {
            let err = ObjectName::parse(path).unwrap_err().to_string();
            assert!(err.contains(why), "{path:?}: {err}");
        }
    }

    #[test]
    fn utc_formatting_round_trips() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(T0), "2026-11-01T00:00:00Z");
        assert_eq!(
            format_utc(T0 + 19 * DAY + 10 * HOUR + 5),
            "2026-11-20T10:00:00.005Z"
        );
        assert_eq!(format_utc(4_102_444_800_000), "2100-01-01T00:00:00Z");
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5000 {
            let t = rng.random_range(0..9_999_999_999_999);
            assert_eq!(parse_utc(&format_utc(t)), Some(t), "{}", format_utc(t));
        }
        for bad in [
            "2026-11-20T10:00:00",
            "2026-11-20 10:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-20T24:00:00Z",
            "2026-11-20T10:00:00.5Z",
            "1969-12-31T23:59:59Z",
            "26-11-20T10:00:00Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 * 1024 * 1024), "12.0 MiB");
    }

    fn paths(segments: &[Segment]) -> Vec<(u64, u64, u64)> {
        segments
            .iter()
            .map(|s| (s.incr_seq, s.offset, s.end))
            .collect()
    }

    #[test]
    fn a_clean_chain_across_incr_files() {
        let c = id(T0, 1, "node-a");
        let listing = vec![
            // Out of order on purpose: the catalog sorts.
            seg(&c, 5, 0, 10, T0 + 3 * SEC),
            base(&c, 4, 5000),
            seg(&c, 4, 100, 250, T0 + 2 * SEC),
            seg(&c, 4, 0, 100, T0 + SEC),
            seg(&c, 5, 10, 20, T0 + 4 * SEC),
        ];
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.chains.len(), 1);
        let ch = &cat.chains[0];
        assert!(ch.restorable());
        assert_eq!(ch.base.as_ref().unwrap().seq, 4);
        assert_eq!(
            paths(&ch.restore_path),
            [(4, 0, 100), (4, 100, 250), (5, 0, 10), (5, 10, 20)]
        );
        assert!(ch.gaps.is_empty() && ch.redundant.is_empty() && ch.problems().is_empty());
        assert_eq!(
            ch.window,
            Some(Window {
                start_unix_ms: T0,
                end_unix_ms: T0 + 4 * SEC
            })
        );
        let sizes: u64 = listing.iter().map(|o| o.size).sum();
        assert_eq!(ch.total_bytes(), sizes);
        assert_eq!(ch.paths().len(), 5);
    }

    #[test]
    fn a_gap_ends_the_window_and_every_gap_is_reported() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            seg(&c, 1, 0, 100, T0 + SEC),
            seg(&c, 1, 100, 200, T0 + 2 * SEC),
            // [200, 350) missing
            seg(&c, 1, 350, 400, T0 + 4 * SEC),
            seg(&c, 2, 0, 50, T0 + 5 * SEC),
            // incr 3 and 4 missing
            seg(&c, 5, 0, 10, T0 + 8 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert_eq!(paths(&ch.restore_path), [(1, 0, 100), (1, 100, 200)]);
        assert_eq!(ch.window.unwrap().end_unix_ms, T0 + 2 * SEC);
        let gaps: Vec<String> = ch.gaps.iter().map(Gap::to_string).collect();
        assert_eq!(
            gaps,
            ["incr 1 bytes [200, 350)", "incr 3 byte 0 to incr 5 byte 0"]
        );
        assert_eq!(
            ch.problems(),
            [
                "WAL gap ends the window: incr 1 bytes [200, 350)",
                "WAL gap: incr 3 byte 0 to incr 5 byte 0"
            ]
        );
        // Segments past a gap are not redundant: they belong to the chain, just unusable.
        assert!(ch.redundant.is_empty());
    }

    #[test]
    fn a_missing_incr_file_or_a_late_first_segment_is_a_gap() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            seg(&c, 3, 0, 100, T0 + SEC),
            seg(&c, 5, 0, 100, T0 + 2 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert_eq!(paths(&ch.restore_path), [(3, 0, 100)]);
        assert_eq!(ch.gaps.len(), 1);
        assert_eq!(ch.gaps[0].to_string(), "incr 4 byte 0 to incr 5 byte 0");

        // The first segment must start at offset 0: the window is the base alone.
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            seg(&c, 2, 100, 200, T0 + SEC),
            seg(&c, 2, 200, 300, T0 + 2 * SEC),
            end(&c, T0 + 3 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert!(ch.restore_path.is_empty());
        assert_eq!(ch.gaps[0].to_string(), "incr 2 bytes [0, 100)");
        // A gap also stops the end marker from stretching the window.
        assert_eq!(
            ch.window,
            Some(Window {
                start_unix_ms: T0,
                end_unix_ms: T0
            })
        );
    }

    #[test]
    fn contained_overlaps_and_retries_use_the_covering_segment() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            // A crash after uploading [0,100): the shipper uploaded [0,150) again.
            seg(&c, 1, 0, 100, T0 + SEC),
            seg(&c, 1, 0, 150, T0 + 3 * SEC),
            seg(&c, 1, 100, 200, T0 + 2 * SEC),
            seg(&c, 1, 150, 300, T0 + 4 * SEC),
            // A retried upload of the same range (another upload time).
            seg(&c, 1, 300, 400, T0 + 5 * SEC),
            seg(&c, 1, 300, 400, T0 + 6 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert!(ch.gaps.is_empty(), "{:?}", ch.gaps);
        assert_eq!(
            paths(&ch.restore_path),
            [(1, 0, 150), (1, 150, 300), (1, 300, 400)]
        );
        // Of two identical ranges, the earlier upload is used (its time bounds its writes).
        assert_eq!(ch.restore_path[2].unix_ms, T0 + 5 * SEC);
        assert_eq!(ch.redundant.len(), 3);
        assert_eq!(ch.window.unwrap().end_unix_ms, T0 + 5 * SEC);

        // Fewest objects, found even when the first choice is a dead end.
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            seg(&c, 1, 0, 100, T0 + SEC),
            seg(&c, 1, 0, 50, T0 + SEC),
            seg(&c, 1, 50, 200, T0 + 2 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert!(ch.gaps.is_empty());
        assert_eq!(paths(&ch.restore_path), [(1, 0, 50), (1, 50, 200)]);
    }

    #[test]
    fn a_segment_starting_mid_way_through_another_is_not_joined() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            seg(&c, 1, 0, 100, T0 + SEC),
            seg(&c, 1, 50, 150, T0 + 2 * SEC),
            seg(&c, 2, 0, 100, T0 + 3 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert_eq!(paths(&ch.restore_path), [(1, 0, 100)]);
        assert_eq!(ch.gaps[0].to_string(), "incr 1 bytes [100, 150)");
        assert_eq!(ch.window.unwrap().end_unix_ms, T0 + SEC);
    }

    #[test]
    fn empty_segments_are_harmless() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            base(&c, 1, 10),
            seg(&c, 1, 0, 0, T0 + SEC),
            seg(&c, 1, 0, 100, T0 + 2 * SEC),
            seg(&c, 2, 0, 0, T0 + 3 * SEC),
            seg(&c, 3, 0, 10, T0 + 4 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert!(ch.gaps.is_empty());
        assert_eq!(paths(&ch.restore_path), [(1, 0, 100), (3, 0, 10)]);
        assert_eq!(ch.redundant.len(), 2);
    }

    #[test]
    fn end_markers_stretch_a_gapless_window() {
        let c = id(T0, 1, "node-a");
        let mut listing = chain(&c, 1, HOUR, T0 + 3 * HOUR, Some(T0 + DAY));
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.chains[0].window.unwrap().end_unix_ms, T0 + DAY);
        // A base and a marker: nothing was written during the chain.
        listing.retain(|o| !o.path.contains("/wal/"));
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.chains[0].window.unwrap().end_unix_ms, T0 + DAY);
        // Without the marker, the window ends at the base.
        listing.retain(|o| !o.path.contains("/end-"));
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.chains[0].window.unwrap().end_unix_ms, T0);
    }

    #[test]
    fn a_chain_without_base_is_listed_but_not_restorable() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            seg(&c, 1, 0, 100, T0 + SEC),
            seg(&c, 1, 100, 200, T0 + 2 * SEC),
        ]);
        let ch = &cat.chains[0];
        assert!(!ch.restorable());
        assert_eq!(ch.window, None);
        assert!(ch.problems()[0].starts_with("no base"));
        assert_eq!(ch.restore_path.len(), 2);
        assert_eq!(
            cat.restore_plan(None).unwrap_err().to_string(),
            "no restorable backup: none of the 1 chain(s) under backup/ has a base \
             (0 foreign object(s) left alone)"
        );
        assert!(matches!(
            cat.restore_plan(Some(T0 + SEC)),
            Err(CatalogError::NothingRestorable { chains: 1, .. })
        ));
        assert!(matches!(
            Catalog::from_listing(&[]).restore_plan(None),
            Err(CatalogError::NothingRestorable { chains: 0, .. })
        ));
    }

    #[test]
    fn extra_bases_are_reported_and_the_lowest_is_used() {
        let c = id(T0, 1, "node-a");
        let cat = Catalog::from_listing(&[
            base(&c, 8, 10),
            base(&c, 7, 10),
            seg(&c, 9, 0, 100, T0 + SEC),
        ]);
        let ch = &cat.chains[0];
        assert_eq!(ch.base.as_ref().unwrap().seq, 7);
        assert_eq!(ch.extra_bases.len(), 1);
        assert_eq!(ch.problems(), ["extra base 8 ignored"]);
        assert_eq!(ch.paths().len(), 3);
    }

    #[test]
    fn foreign_objects_are_reported_never_fatal_and_leases_are_skipped() {
        let c = id(T0, 1, "node-a");
        let mut listing = chain(&c, 1, SEC, T0 + 3 * SEC, None);
        listing.push(obj("backup/README.txt".into(), 12));
        listing.push(obj(format!("{}base-000001.rsb.partial", c.dir()), 99));
        listing.push(obj(format!("{}wal/garbage.rsb", c.dir()), 1));
        listing.push(obj("lease/00000000000000000004".into(), 30));
        listing.push(obj("lease/00000000000000000004.heartbeat".into(), 30));
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.chains.len(), 1);
        assert_eq!(cat.chains[0].restore_path.len(), 3);
        let foreign: Vec<&str> = cat.foreign.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            foreign,
            [
                "backup/1793491200000-e0000000001-node-a/base-000001.rsb.partial",
                "backup/1793491200000-e0000000001-node-a/wal/garbage.rsb",
                "backup/README.txt",
            ]
        );
        assert!(cat.foreign[0].reason.contains("does not end in .rsb"));
        let table = cat.render_table();
        assert!(
            table.contains("foreign objects under backup/ (left alone): 3"),
            "{table}"
        );
        assert!(
            table.contains("backup/README.txt (12 B): not backup/{chain}"),
            "{table}"
        );
        assert!(!table.contains("lease/"), "{table}");
    }

    #[test]
    fn chains_of_several_epochs_and_nodes_sort_by_start_time() {
        let a = id(T0 + DAY, 2, "node-b");
        let b = id(T0, 1, "node-a");
        let c = id(T0 + DAY, 1, "node-a");
        let d = id(T0 + 2 * DAY, 3, "node-c");
        let mut listing = Vec::new();
        for x in [&a, &b, &c, &d] {
            listing.extend(chain(x, 1, HOUR, x.start_unix_ms + 2 * HOUR, None));
        }
        let cat = Catalog::from_listing(&listing);
        let order: Vec<&ChainId> = cat.chains.iter().map(|ch| &ch.id).collect();
        assert_eq!(order, [&b, &c, &a, &d]);
        assert_eq!(cat.newest_restorable().unwrap().id, d);
        assert_eq!(cat.chain(&a).unwrap().id, a);
    }

    /// Three chains: A (day 0, closed at day 1), B (day 1, a failover at 13:00 with no
    /// marker), C (day 1 13:05, epoch 2, on node-b, still open), and D (its base lost).
    fn history() -> (Vec<ListedObject>, [ChainId; 4]) {
        let a = id(T0, 1, "node-a");
        let b = id(T0 + DAY, 1, "node-a");
        let c = id(T0 + DAY + 13 * HOUR + 5 * MIN, 2, "node-b");
        let d = id(T0 + 2 * DAY, 2, "node-b");
        let mut listing = chain(&a, 1, HOUR, T0 + DAY - HOUR, Some(T0 + DAY + SEC));
        listing.extend(chain(&b, 2, HOUR, T0 + DAY + 13 * HOUR, None));
        listing.extend(chain(&c, 1, HOUR, T0 + 2 * DAY, None));
        listing.push(seg(&d, 2, 0, 100, T0 + 2 * DAY + SEC));
        (listing, [a, b, c, d])
    }

    #[test]
    fn restore_plan_for_the_newest_state() {
        let (mut listing, [_, _, c, d]) = history();
        // D lost its base: the newest point is lost, and C is not silently taken instead.
        let cat = Catalog::from_listing(&listing);
        let err = cat.restore_plan(None).unwrap_err();
        assert_eq!(cat.newest_point().unwrap_err(), err);
        assert!(
            matches!(&err, CatalogError::NewestHasNoBase { chain, segments: 1, windows }
                if *chain == d && windows.len() == 3),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "the newest backup chain 1793664000000-e0000000002-node-b cannot be restored: \
                 its base object (backup/1793664000000-e0000000002-node-b/base-NNNNNN.rsb) is \
                 missing (1 WAL segment(s) of it are there, unusable without it). Refusing to \
                 restore an older chain in its place"
            ),
            "{msg}"
        );
        // The way to an older point, explicitly: C's newest whole second, which restores.
        let s = (T0 + 2 * DAY - 55 * MIN) / 1000 - 1;
        assert!(
            msg.contains(&format!(
                "`redis-steward restore --at {s}` (2026-11-02T23:04:59Z, the newest second of \
                 chain {c})"
            )),
            "{msg}"
        );
        assert_eq!(cat.restore_plan(Some(s * 1000 + 999)).unwrap().chain, c);
        // That retention keeps D (newer than the newest restorable chain) is retention's
        // test `chains_newer_than_the_newest_restorable_are_kept_and_older_orphans_deleted`.

        // Without D, C holds the newest point.
        listing.retain(|o| !o.path.starts_with(&d.dir()));
        let cat = Catalog::from_listing(&listing);
        let plan = cat.restore_plan(None).unwrap();
        assert_eq!(plan.chain, c);
        assert_eq!(plan.target_unix_ms, None);
        assert_eq!(plan.restores_to_unix_ms, T0 + 2 * DAY - 55 * MIN);
        assert_eq!(plan.segments.len(), 10);
        let p: Vec<&str> = plan.objects().into_iter().map(|(path, _)| path).collect();
        assert_eq!(p.len(), 11);
        assert_eq!(plan.objects()[0].1, 5000);
        assert!(p[0].ends_with("/base-000001.rsb"));
        assert!(p[1..].iter().all(|s| s.contains("/wal/")));
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(p, sorted, "fetch order is listing order within a chain");
        assert_eq!(plan.total_bytes(), 5000 + 10 * 1040);
    }

    #[test]
    fn a_point_in_time_takes_every_piece_of_one_observation() {
        // One observation (stamp T0 + 2 s) shipped as three pieces of at most MAX_SEGMENT:
        // only the last holds everything acknowledged before the stamp.
        let c = id(T0, 1, "n1");
        let listing = vec![
            base(&c, 1, 100),
            seg(&c, 1, 0, 10, T0 + SEC),
            seg(&c, 1, 10, 20, T0 + 2 * SEC),
            seg(&c, 1, 20, 30, T0 + 2 * SEC),
            seg(&c, 1, 30, 40, T0 + 2 * SEC),
            seg(&c, 1, 40, 50, T0 + 3 * SEC),
        ];
        let cat = Catalog::from_listing(&listing);
        let ends = |t| -> Vec<u64> {
            let plan = cat.restore_plan(Some(t)).unwrap();
            plan.segments.iter().map(|s| s.end).collect()
        };
        assert_eq!(ends(T0 + SEC + 1), vec![10, 20, 30, 40]);
        assert_eq!(ends(T0 + 2 * SEC), vec![10, 20, 30, 40]);
        assert_eq!(ends(T0 + 2 * SEC + 1), vec![10, 20, 30, 40, 50]);
        assert_eq!(ends(T0 + SEC), vec![10]);
    }

    #[test]
    fn restore_plan_for_a_point_in_time() {
        let (listing, [a, b, c, _]) = history();
        let cat = Catalog::from_listing(&listing);

        // Inside A's window: base + segments through the first uploaded at or after it.
        let plan = cat.restore_plan(Some(T0 + 5 * HOUR + 30 * MIN)).unwrap();
        assert_eq!(plan.chain, a);
        assert_eq!(plan.segments.len(), 6);
        assert_eq!(plan.segments[5].unix_ms, T0 + 6 * HOUR);
        assert_eq!(plan.restores_to_unix_ms, T0 + 5 * HOUR + 30 * MIN);
        // Exactly on a segment's time: that segment is the last.
        let plan = cat.restore_plan(Some(T0 + 5 * HOUR)).unwrap();
        assert_eq!(plan.segments.len(), 5);
        // The chain's start: the first segment too (the same rule; the restore truncates).
        let plan = cat.restore_plan(Some(T0)).unwrap();
        assert_eq!(plan.segments.len(), 1);
        // After A's last segment, before its marker: A took no writes then, and B starts only
        // at midnight.
        let plan = cat.restore_plan(Some(T0 + DAY - 30 * MIN)).unwrap();
        assert_eq!((plan.chain.clone(), plan.segments.len()), (a.clone(), 23));
        // A and B overlap between B's start and A's marker: the newer chain wins.
        let plan = cat.restore_plan(Some(T0 + DAY)).unwrap();
        assert_eq!(plan.chain, b);
        assert_eq!(plan.segments.len(), 1);
        // In C's window.
        let plan = cat.restore_plan(Some(T0 + DAY + 20 * HOUR)).unwrap();
        assert_eq!(plan.chain, c);

        // In the failover gap between B (last segment 13:00) and C (13:05).
        let t = T0 + DAY + 13 * HOUR + 2 * MIN;
        let err = cat.restore_plan(Some(t)).unwrap_err();
        assert!(matches!(err, CatalogError::NotCovered { ref windows, .. } if windows.len() == 3));
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "no restorable chain covers 2026-11-02T13:02:00Z: it falls between windows"
            ),
            "{msg}"
        );
        assert!(
            msg.contains(
                "restorable windows: 2026-11-01T00:00:00Z to 2026-11-02T00:00:01Z \
                 (chain 1793491200000-e0000000001-node-a), 2026-11-02T00:00:00Z to \
                 2026-11-02T13:00:00Z (chain 1793577600000-e0000000001-node-a), \
                 2026-11-02T13:05:00Z to 2026-11-02T23:05:00Z"
            ),
            "{msg}"
        );
        // Before any backup.
        let msg = cat.restore_plan(Some(T0 - 1)).unwrap_err().to_string();
        assert!(
            msg.contains("it is before the oldest backup (2026-11-01T00:00:00Z)"),
            "{msg}"
        );
        // After the newest restorable point.
        let msg = cat
            .restore_plan(Some(T0 + 2 * DAY))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "it is after the newest restorable point (2026-11-02T23:05:00Z), and nothing \
                 later can be restored: the newest chain 1793664000000-e0000000002-node-b has \
                 no base (backup/1793664000000-e0000000002-node-b/base-NNNNNN.rsb is missing)"
            ),
            "{msg}"
        );
        // Without the broken chain D, a restore without a time gets the newest point.
        let whole: Vec<ListedObject> = listing
            .iter()
            .filter(|o| !o.path.contains(&ids_d().to_string()))
            .cloned()
            .collect();
        let msg = Catalog::from_listing(&whole)
            .restore_plan(Some(T0 + 2 * DAY))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "it is after the newest restorable point (2026-11-02T23:05:00Z); \
                 restore without a time to get it"
            ),
            "{msg}"
        );
    }

    #[test]
    fn the_json_listing_carries_state_windows_and_problems() {
        let (listing, [a, _, c, d]) = history();
        let j = Catalog::from_listing(&listing).to_json();
        let chains = j["chains"].as_array().unwrap();
        assert_eq!(chains.len(), 4);
        let by = |id: &ChainId| {
            chains
                .iter()
                .find(|x| x["chain"] == id.to_string())
                .unwrap()
                .clone()
        };
        assert_eq!(by(&a)["state"], "closed");
        assert_eq!(by(&c)["state"], "open");
        assert_eq!(by(&c)["restorable"], true);
        assert!(by(&c)["newest_restorable_unix_ms"].as_u64().unwrap() > T0);
        assert_eq!(by(&d)["restorable"], false);
        assert_eq!(by(&d)["broken"], true);
        assert!(by(&d)["problems"][0].as_str().unwrap().contains("base"));
        // D lost its base: the newest point is lost, and says why.
        assert!(j["newest_point"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot be restored"));
        assert_eq!(j["owners"], serde_json::json!([]));
    }

    #[test]
    fn owner_markers_say_whose_backups_a_prefix_holds() {
        let (mut listing, _) = history();
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.ownership("ds-a"), Ownership::Unclaimed);
        let marker = |id: &str| ListedObject {
            path: format!("{OWNER_PREFIX}{id}"),
            size: 0,
            last_modified_unix_ms: T0,
        };
        listing.push(marker("ds-a"));
        let cat = Catalog::from_listing(&listing);
        assert!(cat.foreign.is_empty(), "a marker is not a foreign object");
        assert_eq!(cat.ownership("ds-a"), Ownership::Ours);
        assert_eq!(cat.refuse_foreign("ds-a", "file:///b"), None);
        assert_eq!(cat.ownership("ds-b"), Ownership::Other(vec!["ds-a".into()]));
        let msg = cat.refuse_foreign("ds-b", "file:///b").unwrap();
        assert!(
            msg.contains("belong to data store ds-a") && msg.contains("\"ds-b\""),
            "{msg}"
        );
        // Two claims (two stores met in one legacy prefix): neither may act.
        listing.push(marker("ds-b"));
        let cat = Catalog::from_listing(&listing);
        assert_eq!(cat.ownership("ds-a"), Ownership::Other(vec!["ds-b".into()]));
        assert_eq!(cat.ownership("ds-b"), Ownership::Other(vec!["ds-a".into()]));
    }

    fn ids_d() -> ChainId {
        history().1[3].clone()
    }

    #[test]
    fn the_table_shows_every_chain_and_its_problems() {
        let (mut listing, [_, b, _, _]) = history();
        listing.retain(|o| {
            !o.path
                .ends_with(&format!("{:016}-{:013}.rsb", 4000, T0 + DAY + 4 * HOUR))
        });
        listing.push(seg(&b, 2, 0, 1000, T0 + DAY + 2 * HOUR));
        let table = Catalog::from_listing(&listing).render_table();
        let expected = "\
CHAIN                             EPOCH  NODE    BASE        WAL                           WINDOW (UTC)                                  SIZE      PROBLEMS
1793491200000-e0000000001-node-a  1      node-a  #1 4.9 KiB  23 seg, incr 1                2026-11-01T00:00:00Z to 2026-11-02T00:00:01Z  28.3 KiB  -
1793577600000-e0000000001-node-a  1      node-a  #2 4.9 KiB  13 seg, incr 2 (1 redundant)  2026-11-02T00:00:00Z to 2026-11-02T03:00:00Z  18.1 KiB  WAL gap ends the window: incr 2 bytes [3000, 4000)
1793624700000-e0000000002-node-b  2      node-b  #1 4.9 KiB  10 seg, incr 1                2026-11-02T13:05:00Z to 2026-11-02T23:05:00Z  15.0 KiB  -
1793664000000-e0000000002-node-b  2      node-b  missing     1 seg, incr 2                 not restorable                                140 B     no base: backup/1793664000000-e0000000002-node-b/base-NNNNNN.rsb is missing, nothing of the chain can be restored
newest point not restorable: the newest chain 1793664000000-e0000000002-node-b has no base (backup/1793664000000-e0000000002-node-b/base-NNNNNN.rsb is missing); a restore without --at refuses. Newest restorable chain: 1793624700000-e0000000002-node-b (to 2026-11-02T23:05:00Z; restore --at 1793660699 or earlier)
";
        assert_eq!(table, expected, "\n{table}");
        assert_eq!(
            Catalog::default().to_string(),
            "CHAIN  EPOCH  NODE  BASE  WAL  WINDOW (UTC)  SIZE  PROBLEMS\n(no backup chains)\n\
             newest restorable: none\n"
        );
    }

    fn breaks(ch: &Chain) -> Vec<String> {
        ch.breaks().map(Problem::to_string).collect()
    }

    /// Two chains: A (closed by its end marker when B started) and B (open), both healthy.
    fn two_chains() -> (Vec<ListedObject>, ChainId, ChainId) {
        let a = id(T0, 1, "node-a");
        let b = id(T0 + DAY, 1, "node-a");
        let mut listing = chain(&a, 1, HOUR, T0 + DAY - HOUR, Some(T0 + DAY));
        listing.extend(chain(&b, 2, HOUR, T0 + DAY + 5 * HOUR, None));
        (listing, a, b)
    }

    fn without(listing: &[ListedObject], pred: impl Fn(&str) -> bool) -> Vec<ListedObject> {
        listing.iter().filter(|o| !pred(&o.path)).cloned().collect()
    }

    #[test]
    fn healthy_chains_have_no_breaks_and_the_newest_holds_the_newest_point() {
        let (listing, _, b) = two_chains();
        let cat = Catalog::from_listing(&listing);
        assert!(cat.chains.iter().all(|c| c.issues.is_empty()));
        assert_eq!(cat.newest_point().unwrap().id, b);
        assert!(cat.to_string().contains("newest restorable: "));
    }

    #[test]
    fn a_missing_newest_base_refuses_the_newest_point_and_names_the_object() {
        let (listing, a, b) = two_chains();
        let cat = Catalog::from_listing(&without(&listing, |p| {
            p.starts_with(&b.dir()) && p.contains("/base-")
        }));
        let ch = cat.chain(&b).unwrap();
        assert_eq!(
            breaks(ch),
            [format!(
                "no base: {}base-NNNNNN.rsb is missing, nothing of the chain can be restored",
                b.dir()
            )]
        );
        // The older chain is fine, and still restorable at a time in its window.
        assert!(cat.chain(&a).unwrap().issues.is_empty());
        let e = cat.restore_plan(None).unwrap_err();
        assert!(
            matches!(&e, CatalogError::NewestHasNoBase { chain, segments: 5, .. } if *chain == b)
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&b.to_string()) && msg.contains("base-NNNNNN.rsb"),
            "{msg}"
        );
        // The suggested --at restores the older chain's newest second.
        let s = (T0 + DAY) / 1000 - 1;
        assert!(msg.contains(&format!("restore --at {s}`")), "{msg}");
        let plan = cat.restore_plan(Some(s * 1000 + 999)).unwrap();
        assert_eq!(plan.chain, a);
        // A time after the older chain: refused, saying why nothing later restores.
        let msg = cat
            .restore_plan(Some(T0 + DAY + HOUR))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nothing later can be restored: the newest chain"),
            "{msg}"
        );
        let table = cat.render_table();
        assert!(
            table.contains(&format!(
                "newest point not restorable: the newest chain {b} has no base"
            )),
            "{table}"
        );

        // Only the newest chain, and nothing restorable at all: the error it always was.
        let only_b = without(&listing, |p| {
            p.starts_with(&a.dir()) || p.contains("/base-")
        });
        let e = Catalog::from_listing(&only_b).newest_point().unwrap_err();
        assert!(
            matches!(e, CatalogError::NothingRestorable { chains: 1, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn a_missing_older_base_is_a_break_but_the_newest_point_stands() {
        let (listing, a, b) = two_chains();
        let cat = Catalog::from_listing(&without(&listing, |p| {
            p.starts_with(&a.dir()) && p.contains("/base-")
        }));
        assert_eq!(breaks(cat.chain(&a).unwrap()).len(), 1);
        assert!(breaks(cat.chain(&a).unwrap())[0].starts_with("no base"));
        assert!(cat.chain(&b).unwrap().issues.is_empty());
        assert_eq!(cat.restore_plan(None).unwrap().chain, b);
    }

    #[test]
    fn wal_gaps_at_the_start_in_the_middle_and_before_the_last_segment() {
        let c = id(T0, 1, "node-a");
        // Ten segments of incr 1, [0,1000) … [9000,10000), one an hour.
        let full = chain(&c, 1, HOUR, T0 + 10 * HOUR, None);
        let seg_path = |k: u64| {
            ObjectName::Segment {
                chain: c.clone(),
                incr_seq: 1,
                offset: k * 1000,
                end: k * 1000 + 1000,
                unix_ms: T0 + (k + 1) * HOUR,
            }
            .path()
        };
        for (k, gap, window_end) in [
            (0, "incr 1 bytes [0, 1000)", T0),
            (4, "incr 1 bytes [4000, 5000)", T0 + 4 * HOUR),
            (8, "incr 1 bytes [8000, 9000)", T0 + 8 * HOUR),
        ] {
            let listing = without(&full, |p| p == seg_path(k));
            let cat = Catalog::from_listing(&listing);
            let ch = &cat.chains[0];
            assert_eq!(
                breaks(ch),
                [format!("WAL gap ends the window: {gap}")],
                "k={k}"
            );
            assert_eq!(ch.window.unwrap().end_unix_ms, window_end);
            let e = cat.restore_plan(None).unwrap_err();
            assert!(matches!(e, CatalogError::NewestHasGap { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("is missing WAL") && msg.contains(gap), "{msg}");
            // The suggested --at (when the window holds a whole second) restores.
            match newest_second(&ch.window.unwrap()) {
                Some(s) => {
                    assert!(msg.contains(&format!("--at {s} ")), "{msg}");
                    assert!(cat.restore_plan(Some(s * 1000 + 999)).is_ok());
                }
                None => assert!(msg.contains("No whole second"), "{msg}"),
            }
        }
        // Two gaps: both are breaks, only the first ends the window.
        let listing = without(&full, |p| p == seg_path(2) || p == seg_path(6));
        let ch = &Catalog::from_listing(&listing).chains[0];
        assert_eq!(
            breaks(ch),
            [
                "WAL gap ends the window: incr 1 bytes [2000, 3000)",
                "WAL gap: incr 1 bytes [6000, 7000)"
            ]
        );
        // A whole incr file missing between two others.
        let mut listing = full.clone();
        listing.push(seg(&c, 3, 0, 10, T0 + 11 * HOUR));
        let ch = &Catalog::from_listing(&listing).chains[0];
        assert_eq!(
            breaks(ch),
            ["WAL gap ends the window: incr 2 byte 0 to incr 3 byte 0"]
        );
        // The lost *last* segment is invisible in a listing (a manifest's job, not this).
        let listing = without(&full, |p| p == seg_path(9));
        let ch = &Catalog::from_listing(&listing).chains[0];
        assert!(ch.issues.is_empty());
    }

    #[test]
    fn an_end_marker_must_close_the_wal_it_follows() {
        let c = id(T0, 1, "node-a");
        let closed = chain(&c, 1, HOUR, T0 + 3 * HOUR, Some(T0 + 3 * HOUR + SEC));
        assert!(Catalog::from_listing(&closed).chains[0].issues.is_empty());
        // A marker exactly at the last segment's stamp is fine (same millisecond).
        let at = chain(&c, 1, HOUR, T0 + 3 * HOUR, Some(T0 + 3 * HOUR));
        assert!(Catalog::from_listing(&at).chains[0].issues.is_empty());

        // A segment uploaded after the chain was closed.
        let mut listing = closed.clone();
        listing.push(seg(&c, 1, 3000, 4000, T0 + 4 * HOUR));
        let ch = &Catalog::from_listing(&listing).chains[0];
        let b = breaks(ch);
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(
            b[0].starts_with("end marker (2026-11-01T03:00:01Z) is older than the last segment")
                && b[0].ends_with("(uploaded 2026-11-01T04:00:00Z)"),
            "{b:?}"
        );
        assert!(matches!(ch.issues[0], Problem::SegmentAfterEnd { .. }));

        // Two markers.
        let mut listing = closed.clone();
        listing.push(end(&c, T0 + 5 * HOUR));
        let ch = &Catalog::from_listing(&listing).chains[0];
        assert_eq!(
            breaks(ch),
            [format!(
                "extra end marker {}end-{:013}.rsb",
                c.dir(),
                T0 + 5 * HOUR
            )]
        );
        // An extra base is reported, but is no break.
        let mut listing = closed;
        listing.push(base(&c, 9, 10));
        let ch = &Catalog::from_listing(&listing).chains[0];
        assert_eq!(ch.problems(), ["extra base 9 ignored"]);
        assert_eq!(ch.breaks().count(), 0);
    }

    #[test]
    fn newest_second_is_inside_its_window() {
        let w = |start, end| Window {
            start_unix_ms: start,
            end_unix_ms: end,
        };
        assert_eq!(newest_second(&w(T0, T0 + 5 * SEC)), Some(T0 / 1000 + 4));
        assert_eq!(
            newest_second(&w(T0, T0 + 5 * SEC + 999)),
            Some(T0 / 1000 + 5)
        );
        assert_eq!(newest_second(&w(T0 + 100, T0 + 1100)), Some(T0 / 1000));
        assert_eq!(newest_second(&w(T0 + 100, T0 + 900)), None);
        assert_eq!(newest_second(&w(T0, T0 + 999)), Some(T0 / 1000));
        assert_eq!(newest_second(&w(0, 500)), None);
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..5000 {
            let start = rng.random_range(T0..T0 + DAY);
            let win = w(start, start + rng.random_range(0..10 * SEC));
            match newest_second(&win) {
                Some(s) => {
                    assert!(win.contains(s * 1000 + 999), "{win:?} {s}");
                    assert!(!win.contains((s + 1) * 1000 + 999), "{win:?} {s}");
                }
                None => assert!(
                    (start / 1000..=start / 1000 + 10).all(|s| !win.contains(s * 1000 + 999))
                ),
            }
        }
    }

    /// Every single object lost from a healthy history of three chains: the newest point is
    /// restored only when the loss cannot matter to it, never from an older chain; every lost
    /// base and every lost segment but a chain's last is a break in its own chain.
    #[test]
    fn every_single_loss_is_caught_or_cannot_matter() {
        let (mut listing, _, _) = two_chains();
        let c = id(T0 + DAY + 5 * HOUR + MIN, 2, "node-b");
        listing.extend(chain(&c, 1, HOUR, T0 + DAY + 9 * HOUR, None));
        let whole = Catalog::from_listing(&listing);
        assert_eq!(whole.newest_point().unwrap().id, c);
        for lost in &listing {
            let rest = without(&listing, |p| p == lost.path);
            let cat = Catalog::from_listing(&rest);
            let name = ObjectName::parse(&lost.path).unwrap();
            let chain = cat.chain(name.chain()).unwrap();
            let last_segment = chain.segments.last().is_none_or(|s| {
                let ObjectName::Segment { offset, .. } = name else {
                    return false;
                };
                offset > s.offset
            });
            let invisible = matches!(name, ObjectName::End { .. })
                || matches!(name, ObjectName::Segment { .. }) && last_segment;
            assert_eq!(chain.breaks().count() == 0, invisible, "{}", lost.path);
            let newest = cat.newest_point();
            if name.chain() == &c && !invisible {
                let e = newest.unwrap_err();
                assert!(e.to_string().contains(&c.to_string()), "{e}");
            } else {
                assert_eq!(newest.unwrap().id, c, "{}", lost.path);
            }
            // Never an older chain for the newest point.
            if let Ok(plan) = cat.restore_plan(None) {
                assert_eq!(plan.chain, c);
            }
        }
    }

    /// The window rules around a snapshot, over every small case: the old chain recorded as
    /// the shipper records it (segments stamped 1 ms before their observation, the tail and
    /// the end marker 1 ms before the BGREWRITEAOF was sent, at `lo`), the new chain named by
    /// the time redis answered, `hi`. Redis switched files at some R in [lo, hi]. Every second
    /// restores from the old chain exactly when it ends by `lo` (so by R), from the new one
    /// exactly when it ends after `hi` (its base holds writes up to R), and is refused,
    /// naming the nearest restorable seconds, when neither can be told — for any R.
    #[test]
    fn a_snapshot_boundary_claims_exactly_the_seconds_one_chain_restores_whole() {
        let old = id(T0, 1, "n");
        let mut cases = 0;
        for lo_off in (1_980..=2_020).chain([2_400, 2_500, 2_999, 3_000, 3_001]) {
            for width in [0, 1, 2, 20, 500, 999, 1_000, 1_001, 1_500] {
                for tail in [false, true] {
                    let (lo, hi) = (T0 + lo_off, T0 + lo_off + width);
                    let new = id(hi, 1, "n");
                    let mut listing = vec![base(&old, 1, 100)];
                    // Observations every 300 ms before the BGREWRITEAOF.
                    let mut offset = 0;
                    let mut o = T0 + 300;
                    while o < lo {
                        listing.push(seg(&old, 1, offset, offset + 10, o - 1));
                        offset += 10;
                        o += 300;
                    }
                    if tail {
                        listing.push(seg(&old, 1, offset, offset + 10, lo - 1));
                    }
                    listing.push(end(&old, lo - 1));
                    listing.push(base(&new, 2, 100));
                    let mut offset = 0;
                    for k in 1..=20 {
                        listing.push(seg(&new, 2, offset, offset + 10, hi + 300 * k - 1));
                        offset += 10;
                    }
                    let cat = Catalog::from_listing(&listing);
                    assert!(cat.chains.iter().all(|c| c.breaks().next().is_none()));
                    for t in T0 / SEC..T0 / SEC + 7 {
                        let at = t * SEC + 999;
                        let next = (t + 1) * SEC;
                        let got = cat.restore_plan(Some(at));
                        let what = format!(
                            "lo {lo_off} width {width} tail {tail} second +{}",
                            t - T0 / SEC
                        );
                        match got {
                            Ok(p) if p.chain == old => {
                                assert!(next <= lo, "{what}: the old chain misses writes after R");
                            }
                            Ok(p) => {
                                assert_eq!(p.chain, new, "{what}");
                                assert!(
                                    next > hi,
                                    "{what}: the new chain's base may hold later writes"
                                );
                            }
                            Err(e @ CatalogError::NotCovered { .. }) => {
                                assert!(
                                    lo < next && next <= hi,
                                    "{what}: refused a second a chain restores whole: {e}"
                                );
                                let msg = e.to_string();
                                assert!(
                                    msg.contains("nearest restorable seconds"),
                                    "{what}: {msg}"
                                );
                                // The last second ending by lo, the first ending after hi.
                                let before = lo / SEC - 1;
                                assert!(msg.contains(&format!("--at {before} (")), "{what}: {msg}");
                                assert!(
                                    msg.contains(&format!("--at {} (", hi / SEC)),
                                    "{what}: {msg}"
                                );
                            }
                            Err(e) => panic!("{what}: {e}"),
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 5_000, "{cases}");
    }

    #[test]
    fn window_seconds_and_the_nearest_ones() {
        let w = |a, b| Window {
            start_unix_ms: a,
            end_unix_ms: b,
        };
        // Second T is in when T.999 is.
        assert_eq!(w(1_000, 1_999).seconds(), Some((1, 1)));
        assert_eq!(w(1_000, 1_998).seconds(), None);
        assert_eq!(w(1_999, 3_998).seconds(), Some((1, 2)));
        assert_eq!(w(2_000, 3_999).seconds(), Some((2, 3)));
        assert_eq!(w(0, 998).seconds(), None);
        let ws = [w(1_000, 4_999), w(7_500, 9_999)];
        assert_eq!(nearest_seconds(&ws, 5), (Some(4), Some(7)));
        assert_eq!(nearest_seconds(&ws, 0), (None, Some(1)));
        assert_eq!(nearest_seconds(&ws, 10), (Some(9), None));
        assert_eq!(nearest_seconds(&ws, 3), (Some(2), Some(4)));
    }
}
