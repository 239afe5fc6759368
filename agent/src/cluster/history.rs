//! The data store's epochs, as `patronictl history` shows a cluster's timelines: which node
//! became primary when, after whom, and why. The promoted node writes the record (so every
//! node keeps the same words) and gossips it; every agent appends the records it has not yet
//! kept to `history.jsonl` in its state directory. A node that was down while an epoch began
//! and ended misses that record (it learns only what gossip still carries).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The history's file in the state directory.
pub const FILE: &str = "history.jsonl";

/// The gossip key a primary publishes its promotion record under.
pub const PROMOTION_KEY: &str = "promotion";

/// One epoch's beginning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub epoch: u64,
    /// The node promoted.
    pub primary: String,
    /// Wall clock of the promoted node, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// The primary it replaced (the newest one it had heard of), if any.
    pub previous: Option<String>,
    pub previous_epoch: Option<u64>,
    /// The election's own words: failover, switchover, re-election, and the positions
    /// compared.
    pub reason: String,
    /// How long the promoted node had seen no writable primary when it was promoted (writes
    /// resume a gossip round trip later, once its voters' acknowledgements arrive).
    #[serde(default)]
    pub unavailable_ms: Option<u64>,
}

/// Records in `new` that `kept` lacks (by epoch), in epoch order.
pub fn unseen<'a>(
    kept: &[Promotion],
    new: impl IntoIterator<Item = &'a Promotion>,
) -> Vec<Promotion> {
    let mut out: Vec<Promotion> = new
        .into_iter()
        .filter(|p| kept.iter().all(|k| k.epoch != p.epoch))
        .cloned()
        .collect();
    out.sort_by_key(|p| p.epoch);
    out.dedup_by_key(|p| p.epoch);
    out
}

/// The kept history, oldest first; lines that do not parse are skipped (a torn last line
/// after a crash), and a missing file is an empty history.
pub fn load(path: &Path) -> std::io::Result<Vec<Promotion>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Promotion> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    out.sort_by_key(|p| p.epoch);
    Ok(out)
}

/// Appends records (one JSON line each).
pub fn append(path: &Path, records: &[Promotion]) -> std::io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(r).map_err(std::io::Error::other)?;
        text.push('\n');
    }
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, primary: &str) -> Promotion {
        Promotion {
            epoch,
            primary: primary.into(),
            at_unix_ms: 1_796_000_000_000 + epoch,
            previous: (epoch > 1).then(|| "node-0".into()),
            previous_epoch: (epoch > 1).then(|| epoch - 1),
            reason: format!("won epoch {epoch}"),
            unavailable_ms: Some(1234),
        }
    }

    #[test]
    fn only_unseen_epochs_are_kept_once_in_order() {
        let kept = vec![rec(1, "node-0")];
        let gossip = [
            rec(3, "node-2"),
            rec(1, "node-0"),
            rec(2, "node-1"),
            rec(3, "node-2"),
        ];
        let new = unseen(&kept, gossip.iter());
        assert_eq!(new.iter().map(|r| r.epoch).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn the_file_round_trips_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("history.jsonl");
        assert!(load(&p).unwrap().is_empty());
        append(&p, &[rec(2, "node-1"), rec(1, "node-0")]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"epoch\":3,\"prim")
            .unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back, vec![rec(1, "node-0"), rec(2, "node-1")]);
    }
}
