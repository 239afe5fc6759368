//! Retention: which backup objects a prune deletes, and in what order. Pure: it reads a
//! [`Catalog`] and the time, and returns a [`PrunePlan`]; the caller deletes the paths in the
//! order given (stopping at the first error is fine, see below).
//!
//! # Rules
//!
//! Chains are taken in catalog order (start time, epoch, node); N is the newest restorable
//! chain (the last one with a base).
//! - N and every chain after it are kept: the newest restorable state survives any prune,
//!   even when the store has been idle for longer than its history, and chains still
//!   uploading their base are never touched.
//! - A restorable chain before N is kept when its window reaches into the history window
//!   `[now − history, now]` (its window ends at or after `now − history`); otherwise it is
//!   deleted. With no history (Hobbyist) every chain before N is deleted.
//! - A chain before N without a base is an *orphan* (a chain an earlier prune was interrupted
//!   in, or a shipper that died while a new chain replaced it) and is deleted.
//! - Nothing is deleted while no chain is restorable.
//! - Foreign objects are never deleted, and objects of kept chains are never deleted (chains
//!   share no objects: each lives in its own directory), so every point of the history window
//!   a chain covered before the prune is covered by the same, unchanged chain after it — and
//!   the restore plan for it is identical, since a restore prefers the newest chain covering
//!   the target and every chain that covers a point of the history window is kept.
//!
//! # Why this delete order is safe to interrupt
//!
//! A deleted chain goes: extra bases, then its base, then its WAL segments, then its end
//! marker ([`delete_order`]). Until the base goes, the chain is whole and looks exactly as it
//! did (its lowest base stays its base). From the moment the base goes the chain is not
//! restorable, so a prune that stops half-way — a crash, a store error — can never leave a
//! chain that looks restorable but lacks WAL: a restore would never pick it. What is left is
//! an orphan older than N (N is never deleted), which the next prune deletes; resuming is
//! just planning again. Deleting WAL first would leave, after an interruption, a base with a
//! truncated WAL that the catalog can only tell apart from a complete chain when a gap shows.

use crate::backup::catalog::{format_utc, Catalog, Chain, ChainId};
use crate::plan::Plan;
use std::time::Duration;

/// The backup history a plan promises; `None` keeps only the newest restorable chain.
pub fn history_for(plan: Plan) -> Option<Duration> {
    plan.backup_history_days()
        .map(|days| Duration::from_secs(u64::from(days) * 86_400))
}

/// What a prune deletes and keeps, and one sentence per chain saying why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrunePlan {
    /// Object paths, in the order to delete them.
    pub delete: Vec<String>,
    /// Chains left untouched, in catalog order.
    pub keep: Vec<ChainId>,
    pub reasons: Vec<String>,
}

impl PrunePlan {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
    }
}

/// Plan a prune of `catalog` at `now_unix_ms` keeping `history` (see the module doc).
pub fn plan_prune(catalog: &Catalog, history: Option<Duration>, now_unix_ms: u64) -> PrunePlan {
    let mut plan = PrunePlan::default();
    let Some(newest) = catalog.chains.iter().rposition(Chain::restorable) else {
        plan.keep = catalog.chains.iter().map(|c| c.id.clone()).collect();
        plan.reasons.push(format!(
            "nothing is restorable yet: all {} chain(s) kept",
            catalog.chains.len()
        ));
        push_foreign(catalog, &mut plan);
        return plan;
    };
    let newest_id = &catalog.chains[newest].id;
    let cutoff = history.map(|h| {
        let ms = u64::try_from(h.as_millis()).unwrap_or(u64::MAX);
        now_unix_ms.saturating_sub(ms)
    });

    for (i, chain) in catalog.chains.iter().enumerate() {
        let id = &chain.id;
        let decision = match (chain.window, cutoff) {
            _ if i == newest => Ok(format!(
                "newest restorable chain (restores to {})",
                format_utc(chain.window.map_or(0, |w| w.end_unix_ms))
            )),
            (Some(_), _) if i > newest => Ok("newer than the newest restorable chain".to_string()),
            (None, _) if i > newest => {
                Ok("no base, newer than the newest restorable chain: kept (its base is lost, see \
                    `backup list`; the newest point is not restorable)"
                    .to_string())
            }
            (None, _) => Err(format!(
                "orphan: no base, older than the newest restorable chain {newest_id}"
            )),
            (Some(_), None) => Err(format!(
                "older than the newest restorable chain {newest_id}, and the plan keeps only that one"
            )),
            (Some(w), Some(cutoff)) if w.end_unix_ms >= cutoff => Ok(format!(
                "its window ({w}) reaches into the history window (from {})",
                format_utc(cutoff)
            )),
            (Some(w), Some(cutoff)) => Err(format!(
                "its window ended at {}, before the history window (from {})",
                format_utc(w.end_unix_ms),
                format_utc(cutoff)
            )),
        };
        match decision {
            Ok(why) => {
                plan.keep.push(id.clone());
                plan.reasons.push(format!("keep {id}: {why}"));
            }
            Err(why) => {
                let paths = delete_order(chain);
                plan.reasons
                    .push(format!("delete {id} ({} objects): {why}", paths.len()));
                plan.delete.extend(paths);
            }
        }
    }
    push_foreign(catalog, &mut plan);
    plan
}

fn push_foreign(catalog: &Catalog, plan: &mut PrunePlan) {
    if !catalog.foreign.is_empty() {
        let paths: Vec<&str> = catalog.foreign.iter().map(|f| f.path.as_str()).collect();
        plan.reasons.push(format!(
            "left alone: {} foreign object(s): {}",
            paths.len(),
            paths.join(", ")
        ));
    }
}

/// The order to delete a whole chain in: extra bases, the base, the WAL segments, the end
/// markers (see the module doc for why).
pub fn delete_order(chain: &Chain) -> Vec<String> {
    chain
        .extra_bases
        .iter()
        .rev()
        .chain(&chain.base)
        .map(|b| b.path.clone())
        .chain(chain.segments.iter().map(|s| s.path.clone()))
        .chain(chain.end_markers.iter().map(|m| m.path.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::catalog::testkit::*;
    use crate::backup::catalog::{ListedObject, ObjectName};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    fn days(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * 86_400))
    }

    fn prune(listing: &[ListedObject], history: Option<Duration>, now: u64) -> PrunePlan {
        plan_prune(&Catalog::from_listing(listing), history, now)
    }

    #[test]
    fn history_follows_the_plans() {
        assert_eq!(history_for(Plan::Hobbyist), None);
        assert_eq!(history_for(Plan::Startup), days(1));
        assert_eq!(history_for(Plan::Business), days(3));
        assert_eq!(history_for(Plan::Premium), days(13));
    }

    /// A month: a daily snapshot at 00:00 (the previous chain gets its end marker a second
    /// later), a segment every 10 minutes, and a failover at 13:00 every fourth day (the old
    /// primary's chain stops without a marker; the new primary's chain starts at 13:01:30 with
    /// the next epoch, on the other node). `now` is day 30, 12:00.
    fn month() -> (Vec<ListedObject>, Vec<ChainId>, u64) {
        let mut listing = Vec::new();
        let mut ids = Vec::new();
        let nodes = ["node-a", "node-b"];
        let mut epoch = 1;
        let now = T0 + 30 * DAY + 12 * HOUR;
        let mut incr = 1;
        for day in 0..=30 {
            let midnight = T0 + day * DAY;
            let mut starts = vec![midnight];
            if day % 4 == 3 {
                starts.push(midnight + 13 * HOUR + 90 * SEC);
            }
            for (k, &start) in starts.iter().enumerate() {
                if k == 1 {
                    epoch += 1;
                }
                let c = id(start, epoch, nodes[epoch as usize % 2]);
                let next = if k + 1 < starts.len() {
                    starts[k + 1]
                } else {
                    midnight + DAY
                };
                let failover_next = k + 1 < starts.len();
                let until = (if failover_next {
                    next - 90 * SEC
                } else {
                    next - 10 * MIN
                })
                .min(now);
                let closed = (!failover_next && next + SEC <= now).then_some(next + SEC);
                listing.extend(chain(&c, incr, 10 * MIN, until, closed));
                incr += 1;
                ids.push(c);
            }
        }
        (listing, ids, now)
    }

    #[test]
    fn a_month_of_daily_chains_with_failovers_for_every_plan() {
        let (listing, ids, now) = month();
        let before = Catalog::from_listing(&listing);
        assert_eq!(before.chains.len(), ids.len());
        assert!(before.chains.iter().all(|c| c.gaps.is_empty()));

        // (plan, chains kept: the last n)
        for (plan, kept) in [
            (Plan::Hobbyist, 1),
            // day 29 (closed at day 30 00:00:01) and day 30.
            (Plan::Startup, 2),
            // day 27's morning chain (it ended at the 13:00 failover, after the window's start
            // at 12:00), day 27's afternoon chain, days 28, 29, 30.
            (Plan::Business, 5),
            // days 17 to 30, three of them with a failover.
            (Plan::Premium, 17),
        ] {
            let history = history_for(plan);
            let p = plan_prune(&before, history, now);
            assert_eq!(p.keep, ids[ids.len() - kept..], "{plan}: {:#?}", p.reasons);
            assert_eq!(p.reasons.len(), ids.len(), "{plan}");
            let after = Catalog::from_listing(&apply(&listing, &p.delete));
            assert_eq!(after.chains.len(), kept, "{plan}");
            assert_eq!(after.restore_plan(None), before.restore_plan(None));
            // Every 10 minutes of the promised history: restorable before and after, the
            // same way (the 90 s failover gaps fall between the samples).
            if let Some(h) = history {
                let from = now - h.as_millis() as u64;
                let mut t = from;
                while t <= now {
                    let b = before.restore_plan(Some(t));
                    assert!(b.is_ok(), "{plan} at {}: {:?}", format_utc(t), b);
                    assert_eq!(
                        after.restore_plan(Some(t)),
                        b,
                        "{plan} at {}",
                        format_utc(t)
                    );
                    t += 10 * MIN;
                }
                // Deleted chains all ended before the history window.
                for c in &before.chains {
                    if !p.keep.contains(&c.id) {
                        assert!(c.window.unwrap().end_unix_ms < from, "{plan}: {}", c.id);
                    }
                }
            }
            // Planning again deletes nothing.
            assert!(plan_prune(&after, history, now).is_empty(), "{plan}");
        }
    }

    #[test]
    fn an_idle_store_keeps_its_newest_restorable_chain_for_weeks() {
        let old = id(T0, 1, "node-a");
        let last = id(T0 + DAY, 1, "node-a");
        let mut listing = chain(&old, 1, HOUR, T0 + DAY - HOUR, Some(T0 + DAY + SEC));
        // The last writes 40 days ago; the primary then stopped.
        listing.extend(chain(&last, 2, HOUR, T0 + DAY + 3 * HOUR, None));
        let now = T0 + 41 * DAY;
        for plan in Plan::ALL {
            let p = prune(&listing, history_for(plan), now);
            assert_eq!(p.keep, std::slice::from_ref(&last), "{plan}");
            assert_eq!(p.delete.len(), 1 + 23 + 1, "{plan}");
            assert_eq!(
                p.reasons[1],
                "keep 1793577600000-e0000000001-node-a: newest restorable chain \
                 (restores to 2026-11-02T03:00:00Z)"
            );
            let after = apply(&listing, &p.delete);
            assert_eq!(
                Catalog::from_listing(&after)
                    .restore_plan(None)
                    .unwrap()
                    .chain,
                last
            );
        }
    }

    #[test]
    fn chains_newer_than_the_newest_restorable_are_kept_and_older_orphans_deleted() {
        let orphan = id(T0, 1, "node-a");
        let newest = id(T0 + HOUR, 1, "node-a");
        let uploading = id(T0 + 2 * HOUR, 2, "node-b");
        let mut listing = vec![seg(&orphan, 1, 0, 10, T0 + SEC), end(&orphan, T0 + HOUR)];
        listing.extend(chain(&newest, 2, MIN, T0 + 2 * HOUR, None));
        listing.push(seg(&uploading, 1, 0, 10, T0 + 2 * HOUR + SEC));
        for history in [None, days(13)] {
            let p = prune(&listing, history, T0 + 2 * HOUR + MIN);
            assert_eq!(p.keep, [newest.clone(), uploading.clone()]);
            assert_eq!(p.delete, [listing[0].path.clone(), listing[1].path.clone()]);
            assert!(p.reasons[0].contains("orphan: no base"), "{:?}", p.reasons);
            assert!(p.reasons[2].contains("its base is lost"), "{:?}", p.reasons);
        }
    }

    #[test]
    fn nothing_is_deleted_while_nothing_is_restorable() {
        let a = id(T0, 1, "node-a");
        let b = id(T0 + DAY, 2, "node-b");
        let listing = vec![
            seg(&a, 1, 0, 10, T0 + SEC),
            seg(&b, 1, 0, 10, T0 + DAY + SEC),
        ];
        let p = prune(&listing, None, T0 + 90 * DAY);
        assert!(p.is_empty());
        assert_eq!(p.keep, [a, b]);
        assert_eq!(
            p.reasons,
            ["nothing is restorable yet: all 2 chain(s) kept"]
        );
    }

    #[test]
    fn the_history_boundary_is_inclusive() {
        let a = id(T0, 1, "node-a");
        let b = id(T0 + DAY, 1, "node-a");
        let mut listing = chain(&a, 1, HOUR, T0 + 5 * HOUR, None);
        listing.extend(chain(&b, 2, HOUR, T0 + DAY + 5 * HOUR, None));
        let now = T0 + DAY + 5 * HOUR;
        // A's window ends at 05:00 on day 0.
        assert_eq!(prune(&listing, days(1), now).keep, [a.clone(), b.clone()]);
        assert_eq!(prune(&listing, days(1), now + 1).keep, [b]);
    }

    #[test]
    fn chains_are_deleted_base_first_and_foreign_objects_never() {
        let a = id(T0, 1, "node-a");
        let b = id(T0 + DAY, 1, "node-a");
        let mut listing = chain(&a, 3, HOUR, T0 + 3 * HOUR, Some(T0 + DAY + SEC));
        listing.push(base(&a, 9, 10));
        listing.extend(chain(&b, 4, HOUR, T0 + DAY + HOUR, None));
        listing.push(obj(format!("{}notes.txt", a.dir()), 1));
        listing.push(obj("backup/keep-me".into(), 1));
        listing.push(obj("lease/00000000000000000001".into(), 1));
        let p = prune(&listing, None, T0 + DAY + HOUR);
        let kinds: Vec<String> = p
            .delete
            .iter()
            .map(|path| match ObjectName::parse(path).unwrap() {
                ObjectName::Base { seq, .. } => format!("base {seq}"),
                ObjectName::Segment { offset, .. } => format!("wal {offset}"),
                ObjectName::End { .. } => "end".to_string(),
            })
            .collect();
        assert_eq!(
            kinds,
            ["base 9", "base 3", "wal 0", "wal 1000", "wal 2000", "end"]
        );
        assert_eq!(
            p.reasons.last().unwrap(),
            "left alone: 2 foreign object(s): \
             backup/1793491200000-e0000000001-node-a/notes.txt, backup/keep-me"
        );
    }

    /// Every prefix of a plan: planning again deletes exactly the rest, in the same order,
    /// and no chain in between looks restorable unless it is whole.
    fn check_interrupted(listing: &[ListedObject], history: Option<Duration>, now: u64) {
        let before = Catalog::from_listing(listing);
        let plan = plan_prune(&before, history, now);
        for k in 0..=plan.delete.len() {
            let partial = apply(listing, &plan.delete[..k]);
            let mid = Catalog::from_listing(&partial);
            for c in mid.chains.iter().filter(|c| c.restorable()) {
                let orig = before.chain(&c.id).expect("no chain appears");
                assert_eq!(
                    (&c.base, &c.restore_path, &c.window, &c.gaps),
                    (&orig.base, &orig.restore_path, &orig.window, &orig.gaps),
                    "after {k} deletions, {} looks restorable but changed",
                    c.id
                );
            }
            let again = plan_prune(&mid, history, now);
            assert_eq!(again.delete, plan.delete[k..], "resumed after {k}");
            assert_eq!(again.keep, plan.keep, "resumed after {k}");
        }
    }

    #[test]
    fn an_interrupted_prune_resumes_safely() {
        let (listing, _, now) = month();
        // Half of a Business prune, then plan again: the rest, nothing more.
        let plan = prune(&listing, history_for(Plan::Business), now);
        let half = plan.delete.len() / 2;
        let again = prune(&apply(&listing, &plan.delete[..half]), days(3), now);
        assert_eq!(again.delete, plan.delete[half..]);
        assert!(again.reasons.iter().any(|r| r.contains("orphan: no base")));
        // And every other place it could stop, for a smaller listing with an extra base.
        let a = id(T0, 1, "node-a");
        let b = id(T0 + DAY, 2, "node-b");
        let mut listing = chain(&a, 1, HOUR, T0 + 4 * HOUR, Some(T0 + DAY));
        listing.push(base(&a, 2, 10));
        listing.extend(chain(&b, 1, HOUR, T0 + DAY + 2 * HOUR, None));
        check_interrupted(&listing, None, T0 + 2 * DAY);
    }

    /// A random bucket: chains over a month from several epochs and nodes, some without base,
    /// some with extra bases, gaps, retried or overlapping uploads, end markers, plus foreign
    /// objects and leases.
    fn random_listing(rng: &mut StdRng) -> (Vec<ListedObject>, u64) {
        let mut listing = Vec::new();
        let mut t = T0 + rng.random_range(0..DAY);
        let mut epoch = rng.random_range(0..3);
        let nodes = ["node-a", "node-b", "n3"];
        for _ in 0..rng.random_range(0..10) {
            epoch += rng.random_range(0..2);
            let c = id(t, epoch, nodes[rng.random_range(0..3)]);
            let mut seq = rng.random_range(1..5);
            if rng.random_bool(0.85) {
                listing.push(base(&c, seq, 1000));
            }
            if rng.random_bool(0.05) {
                listing.push(base(&c, seq + 3, 1000));
            }
            let mut at = t;
            for _ in 0..rng.random_range(0..4) {
                let mut off = 0;
                for _ in 0..rng.random_range(0..6) {
                    at += rng.random_range(1..3 * HOUR);
                    let len = rng.random_range(0..500);
                    let skip = if rng.random_bool(0.08) { 7 } else { 0 };
                    listing.push(seg(&c, seq, off + skip, off + skip + len, at));
                    if rng.random_bool(0.1) {
                        // A retried or partly retried upload.
                        let cut = rng.random_range(0..=len);
                        listing.push(seg(&c, seq, off + skip, off + skip + cut, at + SEC));
                    }
                    off += skip + len;
                }
                seq += if rng.random_bool(0.1) { 2 } else { 1 };
            }
            if rng.random_bool(0.5) {
                listing.push(end(&c, at + rng.random_range(0..DAY)));
            }
            if rng.random_bool(0.1) {
                listing.push(obj(format!("{}base-{seq}.rsb", c.dir()), 3));
            }
            t += rng.random_range(0..3 * DAY);
        }
        if rng.random_bool(0.3) {
            listing.push(obj("backup/stray".into(), 1));
        }
        listing.push(obj("lease/00000000000000000007".into(), 1));
        let now = t + rng.random_range(0..20 * DAY);
        (listing, now)
    }

    #[test]
    fn random_buckets_keep_what_is_promised() {
        for seed in 0..600 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (listing, now) = random_listing(&mut rng);
            let history = [None, days(1), days(3), days(13)][rng.random_range(0..4)];
            let before = Catalog::from_listing(&listing);
            let plan = plan_prune(&before, history, now);
            let ctx = format!("seed {seed}, history {history:?}, plan {:#?}", plan.reasons);

            // Only whole chains that are not kept; never foreign objects or leases.
            let deleted: BTreeSet<&str> = plan.delete.iter().map(String::as_str).collect();
            assert_eq!(deleted.len(), plan.delete.len(), "{ctx}");
            for c in &before.chains {
                let paths: BTreeSet<&str> = c.paths().into_iter().collect();
                if plan.keep.contains(&c.id) {
                    assert!(paths.is_disjoint(&deleted), "{ctx}");
                } else {
                    assert!(paths.is_subset(&deleted), "{ctx}");
                }
            }
            for f in &before.foreign {
                assert!(!deleted.contains(f.path.as_str()), "{ctx}");
            }
            assert!(deleted.iter().all(|p| p.starts_with("backup/")), "{ctx}");

            let after = Catalog::from_listing(&apply(&listing, &plan.delete));
            assert_eq!(after.foreign, before.foreign, "{ctx}");
            // The newest restorable state is untouched.
            assert_eq!(
                after.restore_plan(None).ok(),
                before.restore_plan(None).ok(),
                "{ctx}"
            );
            // Every chain reaching into the history window is untouched, and so is every
            // restore plan for a point in it.
            if let Some(h) = history {
                let from = now.saturating_sub(h.as_millis() as u64);
                for c in &before.chains {
                    if c.window.is_some_and(|w| w.end_unix_ms >= from) {
                        assert_eq!(after.chain(&c.id), Some(c), "{ctx}");
                    }
                }
                for _ in 0..50 {
                    let t = rng.random_range(from..=now);
                    let b = before.restore_plan(Some(t));
                    let a = after.restore_plan(Some(t));
                    assert_eq!(a.is_ok(), b.is_ok(), "{ctx} at {t}");
                    if b.is_ok() {
                        assert_eq!(a, b, "{ctx} at {t}");
                    }
                }
            }
            // A second prune has nothing left to do.
            assert!(plan_prune(&after, history, now).is_empty(), "{ctx}");
            // And stopping anywhere is safe.
            if seed % 10 == 0 {
                check_interrupted(&listing, history, now);
            }
        }
    }
}
