//! Redis 7's multi-part append-only file as the backup sees it: the manifest
//! (`appendonly.aof.manifest`) names one base file (an RDB snapshot), the incremental files
//! written since (the write-ahead log), and history files left from earlier rewrites (kept
//! until the agent has uploaded them: `aof-disable-auto-gc yes`). Pure parsing, no I/O.
//!
//! Manifest lines look like `file appendonly.aof.3.base.rdb seq 3 type b`; the order of `i`
//! lines is the order their writes happened in.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The current base (an RDB snapshot, `type b`).
    Base,
    /// An incremental file of the current base (`type i`).
    Incr,
    /// A file from before the last rewrite (`type h`), base or incremental.
    History,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub file: String,
    pub seq: u64,
    pub kind: Kind,
}

impl Entry {
    /// A history entry that was an incremental file (by its name).
    pub fn is_incr_file(&self) -> bool {
        self.file.ends_with(".incr.aof")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AOF manifest line {}: {}", self.line, self.message)
    }
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |m: &str| ManifestError {
                line: i + 1,
                message: format!("{m}: {line:?}"),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let (mut file, mut seq, mut kind) = (None, None, None);
            for pair in words.chunks(2) {
                let [k, v] = pair else {
                    return Err(err("odd number of words"));
                };
                match *k {
                    "file" => file = Some(v.to_string()),
                    "seq" => seq = Some(v.parse::<u64>().map_err(|_| err("bad seq"))?),
                    "type" => {
                        kind = Some(match *v {
                            "b" => Kind::Base,
                            "i" => Kind::Incr,
                            "h" => Kind::History,
                            _ => return Err(err("unknown type")),
                        })
                    }
                    // Later Redis versions may add keys: ignore them.
                    _ => {}
                }
            }
            let (Some(file), Some(seq), Some(kind)) = (file, seq, kind) else {
                return Err(err("needs file, seq and type"));
            };
            if file.contains('/') || file.starts_with('.') {
                return Err(err("file name must be a plain name"));
            }
            entries.push(Entry { file, seq, kind });
        }
        let m = Manifest { entries };
        if m.entries.iter().filter(|e| e.kind == Kind::Base).count() > 1 {
            return Err(ManifestError {
                line: 0,
                message: "more than one base file".into(),
            });
        }
        Ok(m)
    }

    pub fn base(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.kind == Kind::Base)
    }

    /// Incremental files of the current base, oldest first; the last one is being written.
    pub fn incrs(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == Kind::Incr)
    }

    /// The file redis appends to now.
    pub fn current_incr(&self) -> Option<&Entry> {
        self.incrs().last()
    }

    /// History incremental files (from before the last rewrite), oldest first.
    pub fn history_incrs(&self) -> Vec<&Entry> {
        let mut h: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.kind == Kind::History && e.is_incr_file())
            .collect();
        h.sort_by_key(|e| e.seq);
        h
    }

    pub fn has_history(&self) -> bool {
        self.entries.iter().any(|e| e.kind == Kind::History)
    }

    /// An incremental file (current or history) by sequence number.
    pub fn incr(&self, seq: u64) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.seq == seq && e.is_incr_file() && e.kind != Kind::Base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER_TWO_REWRITES: &str = "\
file appendonly.aof.3.base.rdb seq 3 type b
file appendonly.aof.2.incr.aof seq 2 type h
file appendonly.aof.2.base.rdb seq 2 type h
file appendonly.aof.1.incr.aof seq 1 type h
file appendonly.aof.1.base.rdb seq 1 type h
file appendonly.aof.3.incr.aof seq 3 type i
";

    #[test]
    fn parses_what_redis_7_writes() {
        let m = Manifest::parse(AFTER_TWO_REWRITES).unwrap();
        assert_eq!(m.base().unwrap().file, "appendonly.aof.3.base.rdb");
        assert_eq!(m.current_incr().unwrap().seq, 3);
        let h: Vec<u64> = m.history_incrs().iter().map(|e| e.seq).collect();
        assert_eq!(h, vec![1, 2]);
        assert!(m.has_history());
        assert_eq!(m.incr(2).unwrap().kind, Kind::History);
        assert_eq!(m.incr(3).unwrap().kind, Kind::Incr);
        assert!(m.incr(4).is_none());
    }

    #[test]
    fn a_fresh_manifest_has_one_base_and_one_incr() {
        let m = Manifest::parse(
            "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n",
        )
        .unwrap();
        assert!(!m.has_history());
        assert_eq!(m.incrs().count(), 1);
    }

    #[test]
    fn damage_is_reported_with_the_line() {
        for (text, line, what) in [
            ("file a seq 1\n", 1, "needs file, seq and type"),
            ("file a seq x type b\n", 1, "bad seq"),
            ("\nfile a seq 1 type z\n", 2, "unknown type"),
            ("file ../x seq 1 type b\n", 1, "plain name"),
            ("file a seq 1 type\n", 1, "odd number"),
        ] {
            let e = Manifest::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}");
            assert!(e.to_string().contains(what), "{e}");
        }
        let two_bases = "file a seq 1 type b\nfile b seq 2 type b\n";
        assert!(Manifest::parse(two_bases)
            .unwrap_err()
            .to_string()
            .contains("more than one base"));
    }
}
