//! What a node starts from when its data directory is empty: a new machine taking a lost
//! node's slot, or the first boot of a data store.
//!
//! The rule is pure (`decide`); `prepare` gathers the facts (gossip, the backup store, a marker
//! in the state directory) and carries the decision out before redis starts.
//!
//! * An HA node that sees a live writable primary joins it as a replica with a plain full
//!   sync. Restoring from the backup first would not spare the primary anything: redis can
//!   resume replication only from a replication id and offset that an AOF restore does not
//!   carry, so the primary forks and sends a full RDB either way, and the replica would only
//!   be ready later (ARCHITECTURE.md, "Restore and replacement").
//! * Otherwise the newest backup is restored (one-node plans, or an HA data store with no
//!   primary left) — the newest point only ([`Catalog::newest_point`]): when the newest chain
//!   lost its base or has a WAL gap, the start is refused rather than an older chain
//!   restored, which would serve data up to a day old as if nothing were lost. The operator
//!   decides: restore an older point by hand (`redis-steward restore --at …`), or
//!   `run --start-empty`.
//! * A data store starts empty only when nothing says it had history: no backup at all, and
//!   this node never started one before (the marker survives a wiped data directory). A
//!   backup store that cannot be read, or backups none of which restores, stop the start
//!   rather than risk serving an empty data set; `run --start-empty` overrides.

use crate::backup::catalog::{format_utc, Catalog, CatalogError};
use crate::cluster::election::{PublishedState, Role};
use crate::cluster::gossip::cluster::Gossip;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What the backup store says about the data store's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backups {
    /// No `[backup]` with a key: there is no history to look at.
    Off,
    /// The store answered and holds no chain.
    Empty,
    Restorable {
        chain: String,
        newest_unix_ms: u64,
    },
    /// Chains exist but none has a base.
    NothingRestorable {
        chains: usize,
    },
    /// The newest point cannot be restored (the newest chain has no base, or a WAL gap),
    /// though an older chain could: the error says which chain and what is missing.
    NewestLost(String),
    /// The store did not answer (the error).
    Unreadable(String),
    /// The prefix holds another data store's backups ([`Catalog::refuse_foreign`]).
    Foreign(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Situation {
    /// An HA data store (gossip and an election).
    pub ha: bool,
    /// A live, writable primary seen in gossip.
    pub live_primary: Option<String>,
    pub backups: Backups,
    /// This node started a data store before (its state directory says so).
    pub served_before: bool,
    /// The operator passed `--start-empty`.
    pub start_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Start redis empty and let the election make it a replica of this primary.
    JoinPrimary(String),
    /// Restore the newest backup first.
    Restore,
    /// Start with an empty data set.
    Empty,
    /// Do not start; the reason says what to do.
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub start: Start,
    pub reason: String,
}

/// The rule of the module doc.
pub fn decide(s: &Situation) -> Decision {
    let d = |start, reason: String| Decision { start, reason };
    if let (true, Some(p)) = (s.ha, &s.live_primary) {
        return d(
            Start::JoinPrimary(p.clone()),
            format!(
                "empty data directory and {p} is the primary: joining it with a full sync \
                 (a restore first would cost the primary the same sync)"
            ),
        );
    }
    if s.start_empty {
        return d(
            Start::Empty,
            "empty data directory: starting empty because --start-empty was given".into(),
        );
    }
    let no_primary = if s.ha { " and no live primary" } else { "" };
    match &s.backups {
        Backups::Restorable {
            chain,
            newest_unix_ms,
        } => d(
            Start::Restore,
            format!(
                "empty data directory{no_primary}: restoring backup chain {chain} (newest \
                 point {})",
                format_utc(*newest_unix_ms)
            ),
        ),
        Backups::Foreign(e) => d(
            Start::Refuse,
            format!(
                "empty data directory{no_primary}, and the backup location is another data \
                 store's: not restoring its data as this one's, nor starting empty above it. {e}"
            ),
        ),
        Backups::Unreadable(e) => d(
            Start::Refuse,
            format!(
                "empty data directory{no_primary}, and the backup store cannot be read to \
                 tell whether this data store has history ({e}); not starting empty on top \
                 of possible history. Fix the store (the agent tries again when restarted), \
                 or pass --start-empty to start with no data"
            ),
        ),
        Backups::NothingRestorable { chains } => d(
            Start::Refuse,
            format!(
                "empty data directory{no_primary}, and the backup store holds {chains} \
                 chain(s) of which none can be restored (see `redis-steward backup list`); \
                 not starting empty on top of that history. Pass --start-empty to start \
                 with no data"
            ),
        ),
        Backups::NewestLost(why) => d(
            Start::Refuse,
            format!(
                "empty data directory{no_primary}, and the newest backup cannot be restored: \
                 {why}. Not restoring an older backup on its own, which would serve older data \
                 as if it were the newest. Restore an older point by hand (`redis-steward \
                 restore --at …`) and start again, or pass --start-empty to start with no data"
            ),
        ),
        Backups::Off | Backups::Empty if s.served_before => d(
            Start::Refuse,
            format!(
                "empty data directory{no_primary}, but this node served this data store \
                 before{}: its data was lost or removed. Not starting empty; restore with \
                 `redis-steward restore`, or pass --start-empty to start with no data",
                if s.backups == Backups::Off {
                    " (and backups are off)"
                } else {
                    " (and the backup store is empty)"
                }
            ),
        ),
        Backups::Off | Backups::Empty => d(
            Start::Empty,
            format!("first start of this data store{no_primary}: starting empty"),
        ),
    }
}

/// The marker saying this node started a data store (in the state directory, so a wiped data
/// directory alone does not erase it).
pub fn marker_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("started-once")
}

/// Where the backups are, when they are on.
pub struct BackupSource<'a> {
    pub store: &'a crate::store::Store,
    pub keys: &'a crate::backup::keys::KeyRing,
    /// This data store's id: the backups must be its own ([`crate::backup::catalog::Ownership`]).
    pub data_store: &'a str,
}

/// Gather the facts, decide, and carry it out (a restore) before redis starts. Returns the
/// decision; an error when the decision is to refuse. `busy` hears what it is doing while that
/// takes time (the agent passes it on to systemd, so a long restore is not a failed start).
pub async fn prepare(
    data_dir: &Path,
    state_dir: &Path,
    gossip: Option<&Gossip>,
    backups: Option<BackupSource<'_>>,
    start_empty: bool,
    mut busy: impl FnMut(&str),
) -> Result<Option<Decision>> {
    let marker = marker_path(state_dir);
    if crate::backup::restore::holds_data(data_dir) {
        if !marker.exists() {
            crate::node::secrets::write_file_atomic(&marker, b"", 0o600)?;
        }
        return Ok(None);
    }
    let live_primary = match gossip {
        Some(g) => {
            busy("empty data directory: looking for a live primary");
            find_live_primary(g, Duration::from_secs(3)).await
        }
        None => None,
    };
    let seen = match (&backups, &live_primary) {
        // Joining a primary does not need the store.
        (_, Some(_)) => Backups::Off,
        (None, None) => Backups::Off,
        (Some(b), None) => look_at_backups(b.store, b.data_store).await,
    };
    let situation = Situation {
        ha: gossip.is_some(),
        live_primary,
        backups: seen,
        served_before: marker.exists(),
        start_empty,
    };
    let decision = decide(&situation);
    match decision.start {
        Start::Refuse => bail!("{}", decision.reason),
        Start::Empty | Start::JoinPrimary(_) => info!("{}", decision.reason),
        Start::Restore => {
            info!("{}", decision.reason);
            let b = backups.expect("a restore decision needs backups");
            let mut last_log = Instant::now();
            let restored =
                crate::backup::restore::restore(b.store, b.keys, None, data_dir, false, |p| {
                    busy(&format!("restoring from backup: {p}"));
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        info!("restoring from backup: {p}");
                        last_log = Instant::now();
                    }
                })
                .await
                .context("restoring the newest backup into the empty data directory")?;
            info!("{restored}");
        }
    }
    crate::node::secrets::write_file_atomic(&marker, b"", 0o600)?;
    Ok(Some(decision))
}

async fn look_at_backups(store: &crate::store::Store, data_store: &str) -> Backups {
    let listed = tokio::time::timeout(
        Duration::from_secs(30),
        crate::backup::restore::catalog(store),
    );
    let cat: Catalog = match listed.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Backups::Unreadable(format!("{e:#}")),
        Err(_) => return Backups::Unreadable("no answer within 30 s".into()),
    };
    if let Some(e) = cat.refuse_foreign(data_store, store.name()) {
        return Backups::Foreign(e);
    }
    if cat.chains.is_empty() {
        if !cat.foreign.is_empty() {
            warn!(
                objects = cat.foreign.len(),
                "the backup store holds objects that are not backups of this format"
            );
        }
        return Backups::Empty;
    }
    match cat.newest_point() {
        Ok(c) => Backups::Restorable {
            chain: c.id.to_string(),
            newest_unix_ms: c.window.map_or(0, |w| w.end_unix_ms),
        },
        Err(CatalogError::NothingRestorable { .. }) => Backups::NothingRestorable {
            chains: cat.chains.len(),
        },
        Err(e) => Backups::NewestLost(e.to_string()),
    }
}

/// A live peer publishing itself as a writable primary, within `wait`.
async fn find_live_primary(g: &Gossip, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    loop {
        for m in g.members().await.iter().filter(|m| m.alive) {
            let state = m
                .keys
                .get(crate::cluster::ha::STATE_KEY)
                .and_then(|s| serde_json::from_str::<PublishedState>(s).ok());
            if state.is_some_and(|s| s.role == Role::Primary && s.writable) {
                return Some(m.name.clone());
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(ha: bool, primary: bool, backups: Backups, served: bool, flag: bool) -> Situation {
        Situation {
            ha,
            live_primary: primary.then(|| "node-1".to_string()),
            backups,
            served_before: served,
            start_empty: flag,
        }
    }

    fn all_backups() -> Vec<Backups> {
        vec![
            Backups::Off,
            Backups::Empty,
            Backups::Restorable {
                chain: "c".into(),
                newest_unix_ms: 0,
            },
            Backups::NothingRestorable { chains: 2 },
            Backups::NewestLost("the newest backup chain c cannot be restored".into()),
            Backups::Unreadable("connection refused".into()),
        ]
    }

    /// Every combination: the safety rule (never empty on top of history unless asked) and
    /// the preferences.
    #[test]
    fn never_starts_empty_on_top_of_history_unless_asked() {
        for ha in [false, true] {
            for primary in [false, true] {
                for backups in all_backups() {
                    for served in [false, true] {
                        for flag in [false, true] {
                            let s = situation(ha, primary, backups.clone(), served, flag);
                            let d = decide(&s);
                            let why = format!("{s:?} -> {d:?}");
                            if ha && primary {
                                assert_eq!(d.start, Start::JoinPrimary("node-1".into()), "{why}");
                                continue;
                            }
                            let history =
                                served || !matches!(backups, Backups::Off | Backups::Empty);
                            if d.start == Start::Empty {
                                assert!(flag || !history, "{why}");
                            }
                            if flag {
                                assert_eq!(d.start, Start::Empty, "{why}");
                            } else if matches!(backups, Backups::Restorable { .. }) {
                                assert_eq!(d.start, Start::Restore, "{why}");
                            } else if history {
                                assert_eq!(d.start, Start::Refuse, "{why}");
                            } else {
                                assert_eq!(d.start, Start::Empty, "{why}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let d = decide(&situation(
            false,
            false,
            Backups::Unreadable("connection refused".into()),
            false,
            false,
        ));
        assert!(d.reason.contains("connection refused"), "{}", d.reason);
        assert!(d.reason.contains("--start-empty"), "{}", d.reason);
        let d = decide(&situation(true, false, Backups::Off, true, false));
        assert!(
            d.reason
                .starts_with("empty data directory and no live primary, but this node"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("backups are off"), "{}", d.reason);
        let d = decide(&situation(
            false,
            false,
            Backups::NothingRestorable { chains: 3 },
            false,
            false,
        ));
        assert!(d.reason.contains("3 chain(s)"), "{}", d.reason);
        let d = decide(&situation(
            false,
            false,
            Backups::NewestLost("the newest backup chain c has no base".into()),
            true,
            false,
        ));
        assert_eq!(d.start, Start::Refuse);
        assert!(d.reason.contains("chain c has no base"), "{}", d.reason);
        assert!(d.reason.contains("restore --at"), "{}", d.reason);
        assert!(d.reason.contains("--start-empty"), "{}", d.reason);
    }
}
