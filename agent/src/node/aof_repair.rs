//! Repairs the one kind of AOF damage redis 7.0 does to itself: a run of NUL bytes between two
//! commands of an incremental file, left when a write to a full disk was short.
//!
//! Redis answers a short write by truncating the file back to its last complete command, but
//! an incremental file that an AOF rewrite opened is not in append mode, so the next write
//! lands at the old file offset: the bytes of the short write become a hole (NULs), and redis
//! then refuses to load the file ("Bad file format reading the append only file") and never
//! starts again. Reproduced with redis-server 7.0.15 alone (20 MiB tmpfs, a rewrite, writes
//! while the disk fills and after it frees): a 25-byte NUL run where the short write of 25
//! bytes had been; the nemesis campaign met it as a node that never came back after a
//! disk-full fault. Every command around the hole is intact and acknowledged, so filling the
//! hole restores exactly what redis acknowledged; `redis-check-aof --fix` would instead
//! truncate the file at the hole and drop every later write.
//!
//! A hole is filled, not cut out, with annotation lines (`#000…\r\n`, which redis skips like
//! its `#TS:` lines) of exactly its length, so every offset in the file stays where it was:
//! the backup shipper's cursor, and segments it already uploaded, still line up. A hole of 1
//! or 2 bytes (the short write's length is whatever was left of tmpfs's last page, so any
//! length happens; the long nemesis campaign met a node that never came back this way) is too
//! short for a line: the next command's `*N` header absorbs it instead, moved back by the
//! hole's length and widened with leading zeros (`*003\r\n`, which redis reads with `atoi`),
//! together with any annotation lines between; every byte from that header's digits on stays
//! where it was. A shipper cursor can only stand before the hole or after the write that
//! followed it, never inside what moved. Only NUL runs that stand where a command must begin
//! count, and only in a file that otherwise parses as commands (a NUL inside a value is data);
//! anything else is reported (see [`Outcome::Unmendable`]) and left for an operator. The
//! original file is kept beside the directory.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// What [`scan`] found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Every command parses (a truncated last one included, which redis itself tolerates).
    Clean,
    /// Parses once these `(offset, length)` NUL runs between commands are removed.
    Holes(Vec<(usize, usize)>),
    /// Something else is wrong at this offset: not ours to repair.
    Damaged(usize),
}

/// Walks an incremental AOF command by command: RESP arrays of bulk strings and `#…`
/// annotation lines (e.g. `#TS:`).
pub fn scan(data: &[u8]) -> Scan {
    let mut holes = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match data[pos] {
            0 => {
                let len = data[pos..].iter().take_while(|&&b| b == 0).count();
                holes.push((pos, len));
                pos += len;
            }
            b'#' => match line_end(data, pos) {
                Some(end) => pos = end,
                None => break,
            },
            b'*' => match command_end(data, pos) {
                Ok(Some(end)) => pos = end,
                // A truncated last command: redis loads the rest (aof-load-truncated).
                Ok(None) => break,
                Err(at) => return Scan::Damaged(at),
            },
            _ => return Scan::Damaged(pos),
        }
    }
    if holes.is_empty() {
        Scan::Clean
    } else {
        Scan::Holes(holes)
    }
}

/// The offset after the `\r\n` ending the line that starts at `pos`.
fn line_end(data: &[u8], pos: usize) -> Option<usize> {
    data[pos..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| pos + i + 2)
}

/// A number line such as `*3\r\n` or `$5\r\n` starting at `pos` with `prefix`:
/// `Ok(Some((n, next)))`, `Ok(None)` when the data ends first, `Err(pos)` when malformed.
fn number(data: &[u8], pos: usize, prefix: u8) -> Result<Option<(usize, usize)>, usize> {
    if pos >= data.len() {
        return Ok(None);
    }
    if data[pos] != prefix {
        return Err(pos);
    }
    let Some(end) = line_end(data, pos) else {
        return Ok(None);
    };
    let digits = std::str::from_utf8(&data[pos + 1..end - 2]).map_err(|_| pos)?;
    let n = digits.parse().map_err(|_| pos)?;
    Ok(Some((n, end)))
}

fn command_end(data: &[u8], pos: usize) -> Result<Option<usize>, usize> {
    let Some((args, mut at)) = number(data, pos, b'*')? else {
        return Ok(None);
    };
    for _ in 0..args {
        let Some((len, body)) = number(data, at, b'$')? else {
            return Ok(None);
        };
        let end = body + len + 2;
        if end > data.len() {
            return Ok(None);
        }
        if &data[body + len..end] != b"\r\n" {
            return Err(body + len);
        }
        at = end;
    }
    Ok(Some(at))
}

/// Longest filler line: redis reads annotation lines into a small buffer.
const FILLER_LINE_MAX: usize = 64;

/// The shortest hole a filler line covers (`#\r\n`).
const FILLER_LINE_MIN: usize = 3;

/// Mends each hole in place, keeping the data's length: a filler of annotation lines, or for a
/// hole too short for a line, the next command's header widened over it. False, with nothing
/// changed, when a short hole has no command after it.
pub fn fill(data: &mut [u8], holes: &[(usize, usize)]) -> bool {
    let mut absorbers = Vec::new();
    for &(at, len) in holes {
        if len < FILLER_LINE_MIN {
            match next_command(data, at + len) {
                Some(p) => absorbers.push((at, len, p)),
                None => return false,
            }
        }
    }
    for &(at, len) in holes.iter().filter(|(_, len)| *len >= FILLER_LINE_MIN) {
        let mut pos = at;
        let mut left = len;
        while left > 0 {
            // Leave at least 3 bytes for the last line.
            let take = if left <= FILLER_LINE_MAX {
                left
            } else if left - FILLER_LINE_MAX >= FILLER_LINE_MIN {
                FILLER_LINE_MAX
            } else {
                left - FILLER_LINE_MIN
            };
            data[pos] = b'#';
            data[pos + 1..pos + take - 2].fill(b'0');
            data[pos + take - 2] = b'\r';
            data[pos + take - 1] = b'\n';
            pos += take;
            left -= take;
        }
    }
    for (at, len, p) in absorbers {
        // The annotation lines after the hole and the command's `*` move back over it; the
        // gap this opens before the count's digits becomes leading zeros.
        data.copy_within(at + len..=p, at);
        data[p + 1 - len..=p].fill(b'0');
    }
    true
}

/// Where the first command at or after `pos` begins, past annotation lines only.
fn next_command(data: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        match data.get(pos)? {
            b'*' => return Some(pos),
            b'#' => pos = line_end(data, pos)?,
            _ => return None,
        }
    }
}

/// What [`mend`] did to a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mend {
    Clean,
    /// These `(offset, length)` holes were filled in place.
    Mended(Vec<(usize, usize)>),
    /// Damage not mended, nothing changed: the offset of the first bad byte and what is there.
    Unmendable {
        at: usize,
        what: String,
    },
}

/// Scans `data` and fills its holes in place (the one scan-then-fill the supervisor's
/// [`repair_dir`] and restore's WAL use).
pub fn mend(data: &mut [u8]) -> Mend {
    match scan(data) {
        Scan::Clean => Mend::Clean,
        Scan::Damaged(at) => Mend::Unmendable {
            at,
            what: format!("not a command: {}", excerpt(data, at)),
        },
        Scan::Holes(holes) if fill(data, &holes) => Mend::Mended(holes),
        Scan::Holes(holes) => Mend::Unmendable {
            at: holes[0].0,
            what: format!("a {}-byte NUL hole with no command after it", holes[0].1),
        },
    }
}

/// One file mended by [`repair_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub file: PathBuf,
    pub holes: Vec<(usize, usize)>,
    /// Where the original was moved.
    pub original: PathBuf,
}

/// What [`repair_dir`] did about one damaged incremental file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Repaired(Repaired),
    /// Damage this module does not mend (redis will refuse the file), left as it was: the
    /// offset of the first bad byte and what is there.
    Unmendable {
        file: PathBuf,
        at: usize,
        what: String,
    },
}

/// Mends every incremental file of `aof_dir` that has holes (see the module docs): the
/// original moves to `keep_dir` (created; same filesystem, so a rename), the mended file (the
/// same size) is written beside it, synced, and renamed into its place. Files with other
/// damage are left alone and reported, so that an operator hears why redis does not start.
pub fn repair_dir(aof_dir: &Path, keep_dir: &Path) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let entries =
        std::fs::read_dir(aof_dir).with_context(|| format!("reading {}", aof_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .collect();
    files.sort();
    for file in files {
        let mut mended =
            std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let holes = match mend(&mut mended) {
            Mend::Clean => continue,
            Mend::Unmendable { at, what } => {
                outcomes.push(Outcome::Unmendable { file, at, what });
                continue;
            }
            Mend::Mended(holes) => holes,
        };
        std::fs::create_dir_all(keep_dir)
            .with_context(|| format!("creating {}", keep_dir.display()))?;
        let name = file.file_name().context("AOF file name")?;
        let original = keep_dir.join(name);
        let tmp = file.with_extension("aof.mending");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(&mended)?;
            f.sync_all()?;
        }
        std::fs::rename(&file, &original)
            .with_context(|| format!("keeping {} as {}", file.display(), original.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("replacing {}", file.display()))?;
        std::fs::File::open(aof_dir)?.sync_all()?;
        outcomes.push(Outcome::Repaired(Repaired {
            file,
            holes,
            original,
        }));
    }
    Ok(outcomes)
}

/// Up to 16 bytes from `at`, escaped, for a message.
fn excerpt(data: &[u8], at: usize) -> String {
    let end = (at + 16).min(data.len());
    let shown: String = data[at..end].escape_ascii().to_string();
    format!("\"{shown}\"{}", if end < data.len() { "…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        )
        .into_bytes();
        v.extend_from_slice(value);
        v.extend_from_slice(b"\r\n");
        v
    }

    #[test]
    fn finds_holes_between_commands_only() {
        let ts = b"#TS:1796195944\r\n".to_vec();
        let a = set("a", b"1");
        // A value made of NULs is data, not a hole.
        let b = set("b", &[0u8; 25]);
        let mut clean = [ts.clone(), a.clone(), b.clone()].concat();
        assert_eq!(scan(&clean), Scan::Clean);
        // A truncated last command is tolerated (redis loads the rest).
        clean.extend_from_slice(&set("c", b"3")[..9]);
        assert_eq!(scan(&clean), Scan::Clean);

        let holed = [a.clone(), vec![0; 25], b.clone(), vec![0; 3], ts.clone()].concat();
        assert_eq!(
            scan(&holed),
            Scan::Holes(vec![(a.len(), 25), (a.len() + 25 + b.len(), 3)])
        );
        // A hole at the very end (the short write was the last thing written).
        let tail = [a.clone(), vec![0; 7]].concat();
        assert_eq!(scan(&tail), Scan::Holes(vec![(a.len(), 7)]));

        // Anything else is not ours: a broken length, garbage where a command begins.
        let mut bad = a.clone();
        bad[a.len() - 2] = b'x';
        assert_eq!(scan(&bad), Scan::Damaged(a.len() - 2));
        let garbage = [a.clone(), b"hello".to_vec()].concat();
        assert_eq!(scan(&garbage), Scan::Damaged(a.len()));
    }

    #[test]
    fn fillers_are_annotation_lines_of_exactly_the_hole_length() {
        for len in (3..300).chain([64, 65, 66, 67, 128, 129, 130, 4096]) {
            let mut d = vec![0u8; len + 2];
            d[0] = b'x';
            d[len + 1] = b'y';
            assert!(fill(&mut d, &[(1, len)]));
            assert_eq!((d[0], d[len + 1]), (b'x', b'y'), "len {len}");
            let body = &d[1..=len];
            assert_eq!(
                scan(body),
                Scan::Clean,
                "len {len}: {:?}",
                String::from_utf8_lossy(body)
            );
            for line in body.split_inclusive(|&b| b == b'\n') {
                assert!(
                    line.len() >= 3 && line.len() <= FILLER_LINE_MAX,
                    "len {len}"
                );
                assert!(line.starts_with(b"#") && line.ends_with(b"\r\n"));
            }
        }
    }

    #[test]
    fn a_hole_too_short_for_a_line_is_absorbed_by_the_next_command_header() {
        let ts = b"#TS:1796195944\r\n".to_vec();
        let a = set("a", b"1");
        let b = set("b", b"2");
        for len in 1..FILLER_LINE_MIN {
            for between in [
                vec![],
                ts.clone(),
                [ts.clone(), b"#x\r\n".to_vec()].concat(),
            ] {
                let holed = [a.clone(), vec![0; len], between.clone(), b.clone()].concat();
                let mut d = holed.clone();
                assert_eq!(mend(&mut d), Mend::Mended(vec![(a.len(), len)]));
                assert_eq!(d.len(), holed.len(), "offsets after the header stay");
                assert_eq!(scan(&d), Scan::Clean, "{:?}", String::from_utf8_lossy(&d));
                let widened = format!("*{}3\r\n", "0".repeat(len));
                let expect = [
                    a.clone(),
                    between.clone(),
                    widened.into_bytes(),
                    b[4..].to_vec(),
                ];
                assert_eq!(d, expect.concat(), "len {len}");
                // Every byte from the count's last digit on is where it was.
                let digit = a.len() + len + between.len() + 1;
                assert_eq!(d[digit..], holed[digit..]);
            }
        }
        // Short and long holes in one file, each mended its way.
        let holed = [a.clone(), vec![0; 2], b.clone(), vec![0; 9], a.clone()].concat();
        let mut d = holed.clone();
        assert!(matches!(mend(&mut d), Mend::Mended(_)));
        assert_eq!(scan(&d), Scan::Clean);
        assert_eq!(d.len(), holed.len());
        // Nothing after a short hole to absorb it: left alone, unchanged.
        let mut d = [a.clone(), vec![0; 2]].concat();
        let before = d.clone();
        assert!(!fill(&mut d, &[(a.len(), 2)]));
        assert_eq!(d, before);
        let mut d = [a.clone(), vec![0; 1], b"hello".to_vec()].concat();
        assert_eq!(scan(&d), Scan::Damaged(a.len() + 1));
        assert!(matches!(mend(&mut d), Mend::Unmendable { .. }));
    }

    #[test]
    fn repair_fills_the_holes_and_keeps_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let aof = dir.path().join("appendonlydir");
        std::fs::create_dir(&aof).unwrap();
        let a = set("a", b"1");
        let b = set("b", b"2");
        let holed = [a.clone(), vec![0; 25], b.clone()].concat();
        std::fs::write(aof.join("appendonly.aof.3.incr.aof"), &holed).unwrap();
        std::fs::write(aof.join("appendonly.aof.2.incr.aof"), &a).unwrap();
        std::fs::write(aof.join("appendonly.aof.3.base.rdb"), [0u8; 10]).unwrap();
        std::fs::write(
            aof.join("appendonly.aof.4.incr.aof"),
            [&a[..], b"junk"].concat(),
        )
        .unwrap();
        let keep = dir.path().join("kept");
        let outcomes = repair_dir(&aof, &keep).unwrap();
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        let Outcome::Repaired(r) = &outcomes[0] else {
            panic!("{outcomes:?}")
        };
        assert_eq!(r.holes, vec![(a.len(), 25)]);
        // The junk is reported, not touched.
        assert_eq!(
            outcomes[1],
            Outcome::Unmendable {
                file: aof.join("appendonly.aof.4.incr.aof"),
                at: a.len(),
                what: "not a command: \"junk\"".into()
            }
        );
        let mended = std::fs::read(aof.join("appendonly.aof.3.incr.aof")).unwrap();
        assert_eq!(mended.len(), holed.len(), "offsets stay where they were");
        assert_eq!(&mended[..a.len()], &a[..]);
        assert_eq!(&mended[a.len() + 25..], &b[..]);
        assert_eq!(scan(&mended), Scan::Clean);
        assert_eq!(std::fs::read(&r.original).unwrap(), holed);
        // Untouched: a clean incr file and the base (NULs in an RDB are data).
        assert_eq!(
            std::fs::read(aof.join("appendonly.aof.2.incr.aof")).unwrap(),
            a
        );
        let again = repair_dir(&aof, &keep).unwrap();
        assert!(
            again
                .iter()
                .all(|o| matches!(o, Outcome::Unmendable { .. })),
            "idempotent: {again:?}"
        );
    }
}
