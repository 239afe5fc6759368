//! What the backup shipper should upload next, decided from what it has uploaded (a cursor)
//! and what redis's AOF directory holds now (the manifest and file sizes). Pure: the shipper
//! (`shipper`) reads the directory, asks, carries the steps out in order and advances the
//! cursor only after each upload succeeded — so a failed or interrupted upload is simply
//! asked for again, and nothing is ever skipped.
//!
//! A chain is one base (an AOF rewrite's RDB) and every byte of the incremental files that
//! follow it. Any rewrite — the daily snapshot, `backup now`, a new primary's first snapshot,
//! or one redis starts by itself when the AOF grows — ends the chain: the rest of its files
//! (history by then, their sizes final) is shipped, and a new chain starts from the new base.
//!
//! # The times in the names
//!
//! A point-in-time restore trusts three recorded times, and this module chooses all three
//! (the shell only reads clocks and names objects), so that for every whole second a chain
//! claims, the chain holds exactly the writes that ran by its end:
//!
//! - a segment's stamp ([`Step::Ship`]) and [`Step::Covered`]: the chain holds every write
//!   acknowledged *before* the observation ([`Observed::unix_ms`], taken before the manifest
//!   and sizes were read); the stamp is that instant minus 1 ms, the last millisecond whose
//!   writes are all in (the catalog's windows include both ends);
//! - the end marker ([`Step::EndChain`]): redis switches to a new incremental file when a
//!   rewrite *starts* (R), and the new chain's base is the data at that fork. The old chain
//!   holds exactly the writes before R, so its end can claim no later than a lower bound of R:
//!   the time just before the shipper sent `BGREWRITEAOF` (when redis started or scheduled
//!   it), or the last observation whose WAL it shipped in full, whichever is later. The
//!   segments of its last file shipped after the switch carry the same stamp, not the
//!   (later) time they were read;
//! - the new chain's start ([`Step::StartChain`]): an upper bound of R — the time just after
//!   redis answered that the rewrite started (when the new chain's first incremental file is
//!   the one that rewrite opened), else the time just after the manifest showing the new base
//!   was read. Its base may hold writes up to R, so it can serve no earlier second.
//!
//! A second between the two (R's second, when the shipper could not place R inside it) is in
//! neither window, and a restore to it is refused rather than restored from the wrong chain.

use crate::backup::aof::{Kind, Manifest};
use std::collections::BTreeMap;

/// How far the current chain has been uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The base file number the chain starts from.
    pub base_seq: u64,
    pub base_uploaded: bool,
    /// The incremental file being shipped and the offset uploaded up to.
    pub incr_seq: u64,
    pub offset: u64,
    /// Every write acknowledged before this instant (unix ms) is in what was uploaded (0: no
    /// observation was shipped in full yet).
    pub covered_unix_ms: u64,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask redis for an AOF rewrite (a new base): a snapshot. It will open incremental file
    /// `opens_incr` (the shell records [`RewriteSent`]).
    Rewrite { opens_incr: u64 },
    /// Begin a chain on this base (its first incremental file is `first_incr`), named by
    /// `start_unix_ms`: no earlier than the switch to `first_incr` (module doc).
    StartChain {
        base_seq: u64,
        base_file: String,
        first_incr: u64,
        start_unix_ms: u64,
    },
    /// Upload the chain's base.
    UploadBase { base_seq: u64, file: String },
    /// Upload bytes `[from, to)` of incremental file `incr_seq`, stamped `unix_ms`.
    Ship {
        incr_seq: u64,
        file: String,
        from: u64,
        to: u64,
        unix_ms: u64,
    },
    /// Move the cursor to the start of the next incremental file (the previous one is done).
    NextIncr { incr_seq: u64 },
    /// The chain is complete (a rewrite superseded it): mark its end at `unix_ms`, the last
    /// millisecond whose writes it holds in full.
    EndChain { unix_ms: u64 },
    /// Once the steps before it succeeded, the chain holds every write acknowledged before
    /// `unix_ms`. Nothing to upload.
    Covered { unix_ms: u64 },
    /// Remove history files redis keeps for us (all of them are uploaded).
    CollectHistory,
    /// The chain cannot continue (e.g. redis truncated a file we had shipped past when it
    /// restarted): abandon it and start over with a snapshot.
    Abandon { reason: String },
}

/// The situation the shipper sees.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub manifest: Manifest,
    /// Sizes of the incremental files (current and history) by file number.
    pub sizes: BTreeMap<u64, u64>,
    /// A rewrite was requested and has not produced a new base yet: the base number then.
    pub rewrite_pending_from: Option<u64>,
    /// A snapshot is due (schedule or `backup now`).
    pub snapshot_due: bool,
    /// Wall clock taken *before* the sizes were read: every write redis acknowledged by then is
    /// in the bytes up to `sizes` (redis writes the AOF before it replies). Segments carry it
    /// in their names, which point-in-time restores rely on.
    pub unix_ms: u64,
    /// Wall clock taken *after* the manifest and sizes were read: a switch of incremental
    /// file the manifest shows happened before it.
    pub read_unix_ms: u64,
    /// The last `BGREWRITEAOF` the shipper sent, if no chain started since.
    pub rewrite_sent: Option<RewriteSent>,
}

/// What the shipper saw of its `BGREWRITEAOF`: the clock just before sending it and just after
/// the answer, which bound the moment redis switched to a new incremental file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewriteSent {
    /// The base current when it was sent.
    pub base_seq: u64,
    pub sent_unix_ms: u64,
    pub answered_unix_ms: u64,
    pub reply: RewriteReply,
    /// The incremental file it opens (when it started).
    pub opens_incr: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteReply {
    /// Started before the answer: redis switched files between sending and answering.
    Started,
    /// Redis will start it later (a child process was busy): it switches after the sending.
    Scheduled,
    /// One was running already: it switched at some unknown earlier time.
    AlreadyRunning,
}

impl RewriteSent {
    /// A lower bound of the switch ending the chain on `base_seq`, if this tells one.
    fn switch_after(&self, base_seq: u64) -> Option<u64> {
        (self.base_seq == base_seq && self.reply != RewriteReply::AlreadyRunning)
            .then_some(self.sent_unix_ms)
    }

    /// An upper bound of the switch to `first_incr`, if this tells one.
    fn switch_before(&self, first_incr: u64) -> Option<u64> {
        (self.reply == RewriteReply::Started && self.opens_incr == first_incr)
            .then_some(self.answered_unix_ms)
    }
}

/// The incremental file a rewrite started now opens: redis numbers them on from the highest.
pub fn opens_incr(obs: &Observed) -> u64 {
    obs.manifest
        .entries
        .iter()
        .filter(|e| e.is_incr_file() && e.kind != Kind::Base)
        .map(|e| e.seq)
        .max()
        .map_or(1, |m| m + 1)
}

/// The steps to take now. `max_segment` bounds the bytes of one `Ship`.
pub fn next_steps(cursor: Option<&Cursor>, obs: &Observed, max_segment: u64) -> Vec<Step> {
    let mut steps = Vec::new();
    let Some(base) = obs.manifest.base() else {
        // No base yet (redis is starting): nothing to ship.
        return steps;
    };
    let rewrite_pending = obs
        .rewrite_pending_from
        .is_some_and(|from| base.seq <= from);
    let Some(c) = cursor else {
        // No chain: start one from a fresh snapshot, never from a base of unknown age.
        match obs.rewrite_pending_from {
            Some(from) if base.seq > from => start_chain(obs, &mut steps),
            Some(_) => {}
            None => steps.push(Step::Rewrite {
                opens_incr: opens_incr(obs),
            }),
        }
        return steps;
    };
    // The chain's base is still current: this observation holds for it (every incremental
    // file of the chain is listed). Otherwise a rewrite ended it, and its last segments
    // are stamped with what is known of the switch (module doc).
    let current = base.seq == c.base_seq;
    let stamp = if current {
        obs.unix_ms
    } else {
        let switch = obs
            .rewrite_sent
            .and_then(|r| r.switch_after(c.base_seq))
            .unwrap_or(0);
        c.covered_unix_ms.max(switch)
    }
    .saturating_sub(1);
    if !c.base_uploaded {
        steps.push(Step::UploadBase {
            base_seq: c.base_seq,
            file: base_file_of(obs, c.base_seq),
        });
    }
    // Ship everything of the chain's incremental files, in order, from the cursor.
    let chain_incrs = chain_incrs(obs, c);
    let mut at = (c.incr_seq, c.offset);
    for (seq, file) in &chain_incrs {
        if *seq < at.0 {
            continue;
        }
        let from = if *seq == at.0 { at.1 } else { 0 };
        if *seq != at.0 {
            steps.push(Step::NextIncr { incr_seq: *seq });
        }
        let Some(&size) = obs.sizes.get(seq) else {
            steps.push(Step::Abandon {
                reason: format!("{file} is gone before it was uploaded"),
            });
            return steps;
        };
        if size < from {
            steps.push(Step::Abandon {
                reason: format!(
                    "{file} shrank to {size} bytes, below the {from} already uploaded (redis \
                     truncated it when it restarted)"
                ),
            });
            return steps;
        }
        let mut pos = from;
        while pos < size {
            let to = size.min(pos + max_segment);
            steps.push(Step::Ship {
                incr_seq: *seq,
                file: file.clone(),
                from: pos,
                to,
                unix_ms: stamp,
            });
            pos = to;
        }
        at = (*seq, size);
    }
    if chain_incrs.is_empty() && c.incr_seq != 0 && base.seq == c.base_seq {
        steps.push(Step::Abandon {
            reason: format!(
                "incremental file {} of the chain is not in the manifest",
                c.incr_seq
            ),
        });
        return steps;
    }
    if base.seq != c.base_seq {
        // A rewrite ended this chain: its files are history now and complete.
        steps.push(Step::EndChain { unix_ms: stamp });
        start_chain(obs, &mut steps);
        return steps;
    }
    if obs.unix_ms > c.covered_unix_ms {
        steps.push(Step::Covered {
            unix_ms: obs.unix_ms,
        });
    }
    if obs.snapshot_due && !rewrite_pending {
        steps.push(Step::Rewrite {
            opens_incr: opens_incr(obs),
        });
    }
    steps
}

/// Incremental files that belong to the cursor's chain, in order: those numbered from the
/// chain's first up to (not including) the next base's.
fn chain_incrs(obs: &Observed, c: &Cursor) -> Vec<(u64, String)> {
    let base = obs.manifest.base().map(|b| b.seq).unwrap_or(0);
    let mut v: Vec<(u64, String)> = obs
        .manifest
        .entries
        .iter()
        .filter(|e| e.is_incr_file() && e.kind != Kind::Base)
        .filter(|e| e.seq >= c.base_seq && (base == c.base_seq || e.seq < base))
        .map(|e| (e.seq, e.file.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn base_file_of(obs: &Observed, seq: u64) -> String {
    obs.manifest
        .entries
        .iter()
        .find(|e| e.seq == seq && e.file.ends_with(".base.rdb"))
        .map(|e| e.file.clone())
        .unwrap_or_else(|| format!("base {seq}"))
}

fn start_chain(obs: &Observed, steps: &mut Vec<Step>) {
    let Some(base) = obs.manifest.base() else {
        return;
    };
    let first_incr = obs
        .manifest
        .incrs()
        .map(|e| e.seq)
        .min()
        .unwrap_or(base.seq);
    // The manifest showing the new base was read before `read_unix_ms`, so the switch to its
    // first incremental file came before that; the answer to our BGREWRITEAOF may say sooner.
    let start_unix_ms = obs
        .rewrite_sent
        .and_then(|r| r.switch_before(first_incr))
        .map_or(obs.read_unix_ms, |t| t.min(obs.read_unix_ms));
    steps.push(Step::StartChain {
        base_seq: base.seq,
        base_file: base.file.clone(),
        first_incr,
        start_unix_ms,
    });
    steps.push(Step::UploadBase {
        base_seq: base.seq,
        file: base.file.clone(),
    });
    if obs.manifest.has_history() {
        steps.push(Step::CollectHistory);
    }
}

/// Where a restarted shipper goes on with its own chain instead of waiting for a new
/// snapshot, which left every write since the start unprotected for as long as a snapshot
/// takes (seconds per GB). Only `chain` (the newest in the bucket) as it is listed: this
/// node's and this epoch's, open (no end marker), whole (a base, nothing that breaks it), with
/// WAL shipped; and only while redis's AOF still holds what was shipped: the same base file
/// number, and the chain's last incremental file at least as long as what was uploaded of it.
/// The shell still compares the last segment's bytes with the file before it resumes.
pub fn resume<'c>(
    chain: &'c crate::backup::catalog::Chain,
    node: &str,
    epoch: u64,
    obs: &Observed,
) -> Option<(Cursor, &'c crate::backup::catalog::Segment)> {
    let base = chain.base.as_ref()?;
    let last = chain.restore_path.last()?;
    let whole = chain.end_markers.is_empty() && chain.breaks().next().is_none();
    let ours = chain.id.node == node && chain.id.epoch == epoch;
    let same_base = obs.manifest.base().is_some_and(|b| b.seq == base.seq);
    let holds = obs
        .sizes
        .get(&last.incr_seq)
        .is_some_and(|&len| len >= last.end);
    (whole && ours && same_base && holds).then_some((
        Cursor {
            base_seq: base.seq,
            base_uploaded: true,
            incr_seq: last.incr_seq,
            offset: last.end,
            covered_unix_ms: last.unix_ms,
        },
        last,
    ))
}

/// Where the cursor stands after `step` succeeded.
pub fn advance(cursor: Option<Cursor>, step: &Step) -> Option<Cursor> {
    match step {
        Step::StartChain {
            base_seq,
            first_incr,
            ..
        } => Some(Cursor {
            base_seq: *base_seq,
            base_uploaded: false,
            incr_seq: *first_incr,
            offset: 0,
            covered_unix_ms: 0,
        }),
        Step::UploadBase { .. } => cursor.map(|c| Cursor {
            base_uploaded: true,
            ..c
        }),
        Step::Ship {
            incr_seq,
            to,
            unix_ms,
            ..
        } => cursor.map(|c| Cursor {
            incr_seq: *incr_seq,
            offset: *to,
            covered_unix_ms: c.covered_unix_ms.max(unix_ms.saturating_add(1)),
            ..c
        }),
        Step::Covered { unix_ms } => cursor.map(|c| Cursor {
            covered_unix_ms: c.covered_unix_ms.max(*unix_ms),
            ..c
        }),
        Step::NextIncr { incr_seq } => cursor.map(|c| Cursor {
            incr_seq: *incr_seq,
            offset: 0,
            ..c
        }),
        Step::EndChain { .. } | Step::Abandon { .. } => None,
        Step::Rewrite { .. } | Step::CollectHistory => cursor,
    }
}

/// Bytes written to the chain's files but not uploaded yet (the backup lag).
pub fn lag_bytes(cursor: Option<&Cursor>, obs: &Observed) -> u64 {
    let Some(c) = cursor else {
        return obs.sizes.values().sum();
    };
    chain_incrs(obs, c)
        .iter()
        .map(|(seq, _)| {
            let size = obs.sizes.get(seq).copied().unwrap_or(0);
            match seq.cmp(&c.incr_seq) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => size.saturating_sub(c.offset),
                std::cmp::Ordering::Greater => size,
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(base: u64, incrs: &[u64], history: &[u64]) -> Manifest {
        let mut text = format!("file appendonly.aof.{base}.base.rdb seq {base} type b\n");
        for h in history {
            text += &format!("file appendonly.aof.{h}.incr.aof seq {h} type h\n");
            text += &format!("file appendonly.aof.{h}.base.rdb seq {h} type h\n");
        }
        for i in incrs {
            text += &format!("file appendonly.aof.{i}.incr.aof seq {i} type i\n");
        }
        Manifest::parse(&text).unwrap()
    }

    fn obs(m: Manifest, sizes: &[(u64, u64)]) -> Observed {
        Observed {
            manifest: m,
            sizes: sizes.iter().copied().collect(),
            ..Observed::default()
        }
    }

    #[test]
    fn a_restart_resumes_only_its_own_open_whole_chain_that_redis_still_holds() {
        use crate::backup::catalog::testkit::{base, end, id, seg, T0};
        use crate::backup::catalog::Catalog;
        let c = id(T0, 3, "node-a");
        let listing = vec![
            base(&c, 5, 100),
            seg(&c, 5, 0, 400, T0 + 1000),
            seg(&c, 5, 400, 900, T0 + 2000),
        ];
        let chain = |l: &[crate::backup::catalog::ListedObject]| {
            Catalog::from_listing(l).chains.last().unwrap().clone()
        };
        let ch = chain(&listing);
        let o = obs(manifest(5, &[5], &[]), &[(5, 950)]);
        let (cursor, last) = resume(&ch, "node-a", 3, &o).expect("resumes");
        assert_eq!(
            cursor,
            Cursor {
                base_seq: 5,
                base_uploaded: true,
                incr_seq: 5,
                offset: 900,
                covered_unix_ms: T0 + 2000,
            }
        );
        assert_eq!((last.offset, last.end), (400, 900));
        // What is left to ship starts exactly there.
        assert_eq!(
            ships(&next_steps(Some(&cursor), &o, 1 << 20)),
            [(5, 900, 950)]
        );
        // The file holds all that was shipped (a file exactly that long resumes too).
        assert!(resume(&ch, "node-a", 3, &obs(manifest(5, &[5], &[]), &[(5, 900)])).is_some());
        for (what, node, epoch, o) in [
            ("another node's", "node-b", 3, o.clone()),
            ("another epoch's", "node-a", 4, o.clone()),
            (
                "a new base",
                "node-a",
                3,
                obs(manifest(6, &[6], &[]), &[(6, 10)]),
            ),
            (
                "a shorter file",
                "node-a",
                3,
                obs(manifest(5, &[5], &[]), &[(5, 899)]),
            ),
            (
                "no such file",
                "node-a",
                3,
                obs(manifest(5, &[7], &[]), &[(7, 5000)]),
            ),
        ] {
            assert!(resume(&ch, node, epoch, &o).is_none(), "{what}");
        }
        let mut closed = listing.clone();
        closed.push(end(&c, T0 + 3000));
        assert!(
            resume(&chain(&closed), "node-a", 3, &o).is_none(),
            "a closed chain"
        );
        let gap = vec![
            base(&c, 5, 100),
            seg(&c, 5, 0, 400, T0 + 1000),
            seg(&c, 5, 500, 900, T0 + 2000),
        ];
        assert!(
            resume(&chain(&gap), "node-a", 3, &o).is_none(),
            "a chain with a gap"
        );
        assert!(
            resume(&chain(&listing[..1]), "node-a", 3, &o).is_none(),
            "no WAL shipped"
        );
    }

    /// Carry out `steps` as if every upload succeeded.
    fn run(mut cursor: Option<Cursor>, steps: &[Step]) -> Option<Cursor> {
        for s in steps {
            cursor = advance(cursor, s);
        }
        cursor
    }

    fn ships(steps: &[Step]) -> Vec<(u64, u64, u64)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Ship {
                    incr_seq, from, to, ..
                } => Some((*incr_seq, *from, *to)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_chain_starts_with_a_fresh_snapshot() {
        let mut o = obs(manifest(1, &[1], &[]), &[(1, 500)]);
        assert_eq!(
            next_steps(None, &o, 1 << 20),
            vec![Step::Rewrite { opens_incr: 2 }]
        );
        // Waiting for the rewrite: nothing.
        o.rewrite_pending_from = Some(1);
        assert!(next_steps(None, &o, 1 << 20).is_empty());
        // It finished: base 2 with incr 2; the old files are history.
        let mut o = obs(manifest(2, &[2], &[1]), &[(1, 500), (2, 0)]);
        o.rewrite_pending_from = Some(1);
        let steps = next_steps(None, &o, 1 << 20);
        assert_eq!(
            steps,
            vec![
                Step::StartChain {
                    base_seq: 2,
                    base_file: "appendonly.aof.2.base.rdb".into(),
                    first_incr: 2,
                    start_unix_ms: 0,
                },
                Step::UploadBase {
                    base_seq: 2,
                    file: "appendonly.aof.2.base.rdb".into()
                },
                Step::CollectHistory,
            ]
        );
        let c = run(None, &steps).unwrap();
        assert_eq!(
            c,
            Cursor {
                base_seq: 2,
                base_uploaded: true,
                incr_seq: 2,
                offset: 0,
                covered_unix_ms: 0,
            }
        );
    }

    #[test]
    fn new_bytes_are_shipped_in_bounded_segments_and_nothing_when_idle() {
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 100,
            ..Cursor::default()
        };
        let o = obs(manifest(2, &[2], &[]), &[(2, 100)]);
        assert!(next_steps(Some(&c), &o, 64).is_empty(), "idle: nothing");
        let o = obs(manifest(2, &[2], &[]), &[(2, 300)]);
        let steps = next_steps(Some(&c), &o, 64);
        assert_eq!(
            ships(&steps),
            vec![(2, 100, 164), (2, 164, 228), (2, 228, 292), (2, 292, 300)]
        );
        assert_eq!(lag_bytes(Some(&c), &o), 200);
        let after = run(Some(c), &steps).unwrap();
        assert_eq!(after.offset, 300);
        assert_eq!(lag_bytes(Some(&after), &o), 0);
    }

    #[test]
    fn a_failed_upload_is_asked_for_again() {
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 0,
            ..Cursor::default()
        };
        let o = obs(manifest(2, &[2], &[]), &[(2, 50)]);
        let first = next_steps(Some(&c), &o, 1 << 20);
        // The upload failed: the cursor did not move, so the same range comes back.
        assert_eq!(next_steps(Some(&c), &o, 1 << 20), first);
        // A base that failed to upload is retried before any WAL.
        let c = Cursor {
            base_uploaded: false,
            ..c
        };
        assert!(matches!(
            next_steps(Some(&c), &o, 1 << 20)[0],
            Step::UploadBase { base_seq: 2, .. }
        ));
    }

    #[test]
    fn a_rewrite_finishes_the_old_chain_then_starts_a_new_one() {
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 80,
            ..Cursor::default()
        };
        // Redis rewrote (by itself or for a snapshot): incr 2 is history, final at 120.
        let o = obs(manifest(3, &[3], &[2]), &[(2, 120), (3, 10)]);
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert_eq!(ships(&steps), vec![(2, 80, 120)]);
        let end = steps
            .iter()
            .position(|s| matches!(s, Step::EndChain { .. }))
            .unwrap();
        let start = steps
            .iter()
            .position(|s| matches!(s, Step::StartChain { base_seq: 3, .. }))
            .unwrap();
        assert!(
            end < start,
            "the old chain ends before the new one starts: {steps:?}"
        );
        assert!(steps.contains(&Step::CollectHistory));
        let c = run(Some(c), &steps).unwrap();
        assert_eq!((c.base_seq, c.incr_seq, c.offset), (3, 3, 0));
        // Next tick ships incr 3.
        assert_eq!(ships(&next_steps(Some(&c), &o, 1 << 20)), vec![(3, 0, 10)]);
    }

    #[test]
    fn several_incremental_files_of_one_base_are_shipped_in_order() {
        // A failed rewrite can leave two incr files on one base.
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 5,
            ..Cursor::default()
        };
        let o = obs(manifest(2, &[2, 3], &[]), &[(2, 10), (3, 7)]);
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert_eq!(ships(&steps), vec![(2, 5, 10), (3, 0, 7)]);
        assert!(steps.contains(&Step::NextIncr { incr_seq: 3 }));
        let c = run(Some(c), &steps).unwrap();
        assert_eq!((c.incr_seq, c.offset), (3, 7));
    }

    #[test]
    fn a_truncated_or_vanished_file_abandons_the_chain() {
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 100,
            ..Cursor::default()
        };
        let o = obs(manifest(2, &[2], &[]), &[(2, 90)]);
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert!(
            matches!(&steps[..], [Step::Abandon { reason }] if reason.contains("shrank")),
            "{steps:?}"
        );
        assert_eq!(run(Some(c.clone()), &steps), None);
        let o = obs(manifest(2, &[2], &[]), &[]);
        assert!(matches!(
            &next_steps(Some(&c), &o, 1 << 20)[..],
            [Step::Abandon { .. }]
        ));
    }

    #[test]
    fn a_due_snapshot_asks_for_one_rewrite() {
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 10,
            ..Cursor::default()
        };
        let mut o = obs(manifest(2, &[2], &[]), &[(2, 10)]);
        o.snapshot_due = true;
        assert_eq!(
            next_steps(Some(&c), &o, 1 << 20),
            vec![Step::Rewrite { opens_incr: 3 }]
        );
        o.rewrite_pending_from = Some(2);
        assert!(next_steps(Some(&c), &o, 1 << 20).is_empty());
    }

    fn at(mut o: Observed, unix_ms: u64, read_unix_ms: u64) -> Observed {
        o.unix_ms = unix_ms;
        o.read_unix_ms = read_unix_ms;
        o
    }

    fn stamps(steps: &[Step]) -> Vec<u64> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Ship { unix_ms, .. } => Some(*unix_ms),
                _ => None,
            })
            .collect()
    }

    fn end_and_start(steps: &[Step]) -> (Option<u64>, Option<u64>) {
        let end = steps.iter().find_map(|s| match s {
            Step::EndChain { unix_ms } => Some(*unix_ms),
            _ => None,
        });
        let start = steps.iter().find_map(|s| match s {
            Step::StartChain { start_unix_ms, .. } => Some(*start_unix_ms),
            _ => None,
        });
        (end, start)
    }

    #[test]
    fn stamps_end_markers_and_chain_starts_bound_the_switch_of_files() {
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 80,
            covered_unix_ms: 10_000,
        };
        // A current observation: its segment holds every write acknowledged before 10_200,
        // so it is stamped with the last millisecond before it.
        let o = at(obs(manifest(2, &[2], &[]), &[(2, 100)]), 10_200, 10_201);
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert_eq!(stamps(&steps), vec![10_199]);
        assert!(steps.contains(&Step::Covered { unix_ms: 10_200 }));
        let c = run(Some(c), &steps).unwrap();
        assert_eq!(c.covered_unix_ms, 10_200);
        // Idle, later: still covered up to the new observation.
        let o = at(obs(manifest(2, &[2], &[]), &[(2, 100)]), 10_250, 10_251);
        let c = run(Some(c.clone()), &next_steps(Some(&c), &o, 1 << 20)).unwrap();
        assert_eq!(c.covered_unix_ms, 10_250);

        // BGREWRITEAOF sent at 10_300, started by 10_305 (opening incr 3). The next
        // observation (10_500) finds base 3; incr 2 grew to 120 before the switch.
        let sent = |reply| RewriteSent {
            base_seq: 2,
            sent_unix_ms: 10_300,
            answered_unix_ms: 10_305,
            reply,
            opens_incr: 3,
        };
        let after = |rewrite_sent| Observed {
            rewrite_sent,
            ..at(
                obs(manifest(3, &[3], &[2]), &[(2, 120), (3, 10)]),
                10_500,
                10_502,
            )
        };
        let case = |rewrite_sent| {
            let steps = next_steps(Some(&c), &after(rewrite_sent), 1 << 20);
            let (end, start) = end_and_start(&steps);
            (stamps(&steps), end.unwrap(), start.unwrap())
        };
        // Started: the switch is inside [10_300, 10_305]. The old chain's tail and end claim
        // up to 10_299, the new chain starts at 10_305 — not 10_500, when it was seen.
        assert_eq!(
            case(Some(sent(RewriteReply::Started))),
            (vec![10_299], 10_299, 10_305)
        );
        // Scheduled: after 10_300, but when is not known: the manifest read bounds it.
        assert_eq!(
            case(Some(sent(RewriteReply::Scheduled))),
            (vec![10_299], 10_299, 10_502)
        );
        // Already running (or one redis started itself): it may have switched any time after
        // the last observation shipped in full (10_250).
        assert_eq!(
            case(Some(sent(RewriteReply::AlreadyRunning))),
            (vec![10_249], 10_249, 10_502)
        );
        assert_eq!(case(None), (vec![10_249], 10_249, 10_502));
        // Ours started but failed, and another one made the base (its first incr is 4, not
        // 3): our answer says nothing about when that one switched.
        let mut o = after(Some(sent(RewriteReply::Started)));
        o.manifest = manifest(4, &[4], &[2, 3]);
        o.sizes = [(2, 120), (3, 30), (4, 5)].into_iter().collect();
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert_eq!(end_and_start(&steps), (Some(10_299), Some(10_502)));
        // A BGREWRITEAOF sent on an older base says nothing about this chain's end.
        let stale = RewriteSent {
            base_seq: 1,
            ..sent(RewriteReply::Started)
        };
        assert_eq!(case(Some(stale)).1, 10_249);
    }

    #[test]
    fn a_slow_rewrite_ships_the_new_file_into_the_old_chain_until_the_base_changes() {
        // During the rewrite redis lists incr 3 beside base 2: the old chain takes it (it
        // holds the writes after the switch), and the observation covers the chain in full.
        let c = Cursor {
            base_seq: 2,
            base_uploaded: true,
            incr_seq: 2,
            offset: 100,
            covered_unix_ms: 10_000,
        };
        let o = at(
            obs(manifest(2, &[2, 3], &[]), &[(2, 120), (3, 40)]),
            10_400,
            10_401,
        );
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert_eq!(ships(&steps), vec![(2, 100, 120), (3, 0, 40)]);
        assert_eq!(stamps(&steps), vec![10_399, 10_399]);
        let c = run(Some(c), &steps).unwrap();
        // The rewrite finishes: incr 3 belongs to base 3 now; the old chain ends where its
        // last observation left it, later than the BGREWRITEAOF.
        let o = Observed {
            rewrite_sent: Some(RewriteSent {
                base_seq: 2,
                sent_unix_ms: 10_300,
                answered_unix_ms: 10_302,
                reply: RewriteReply::Started,
                opens_incr: 3,
            }),
            ..at(
                obs(manifest(3, &[3], &[2]), &[(2, 120), (3, 90)]),
                10_600,
                10_601,
            )
        };
        let steps = next_steps(Some(&c), &o, 1 << 20);
        assert!(ships(&steps).is_empty(), "{steps:?}");
        assert_eq!(end_and_start(&steps), (Some(10_399), Some(10_302)));
    }
}
