//! Where to cut an append-only file so that it holds exactly the writes up to a second: the
//! point-in-time half of a restore. Pure reading of any `BufRead`, no files.
//!
//! With `aof-timestamp-enabled yes` redis writes a `#TS:<unix seconds>\r\n` annotation before
//! the first command of every new second (taken when the command runs, before its reply).
//! Keeping everything before the first annotation newer than T keeps exactly the writes that
//! ran in second T or earlier — what `redis-check-aof --truncate-to-timestamp` does, and the
//! tests compare the two. The cut also drops a command cut short at the end (a segment
//! shipped while redis was in the middle of writing) and a `MULTI` block without its `EXEC`,
//! so redis loads the result without having to repair it.

use std::io::BufRead;

/// Where to cut, and what is on either side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cut {
    /// Bytes to keep from the start.
    pub keep_bytes: u64,
    /// Commands kept (MULTI and EXEC count as commands).
    pub commands: u64,
    /// The newest annotation kept.
    pub last_kept_ts: Option<u64>,
    /// The annotation the cut stops at (the first newer than the target), if any.
    pub first_dropped_ts: Option<u64>,
    /// Bytes of a command the input ends in the middle of (dropped).
    pub partial_tail: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a redis append-only file at byte {offset}: {what}")]
pub struct CutError {
    pub offset: u64,
    pub what: String,
}

/// Longest protocol line accepted (`*<n>\r\n`, `$<n>\r\n`, an annotation).
const MAX_LINE: usize = 256;

struct Reader<R> {
    inner: R,
    pos: u64,
}

enum Line {
    Full(Vec<u8>),
    /// The input ended first.
    Eof,
}

impl<R: BufRead> Reader<R> {
    fn err(&self, what: impl Into<String>) -> CutError {
        CutError {
            offset: self.pos,
            what: what.into(),
        }
    }

    /// The buffer, or a read error naming the offset.
    fn fill(&mut self) -> Result<&[u8], CutError> {
        let pos = self.pos;
        self.inner.fill_buf().map_err(|e| CutError {
            offset: pos,
            what: format!("read error: {e}"),
        })
    }

    fn peek(&mut self) -> Result<Option<u8>, CutError> {
        let buf = self.fill()?;
        Ok(buf.first().copied())
    }

    /// A line ending in `\r\n`, without it.
    fn line(&mut self) -> Result<Line, CutError> {
        let mut out = Vec::new();
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(Line::Eof);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            out.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
            self.pos += take as u64;
            if done {
                if out.len() < 2 || out[out.len() - 2] != b'\r' {
                    return Err(self.err("a line does not end in CRLF"));
                }
                out.truncate(out.len() - 2);
                return Ok(Line::Full(out));
            }
            if out.len() > MAX_LINE {
                return Err(self.err("a protocol line is too long"));
            }
        }
    }

    /// Skip `n` bytes; false when the input ends first.
    fn skip(&mut self, mut n: u64) -> Result<bool, CutError> {
        while n > 0 {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(false);
            }
            let take = (buf.len() as u64).min(n) as usize;
            self.inner.consume(take);
            self.pos += take as u64;
            n -= take as u64;
        }
        Ok(true)
    }

    /// Read `n` bytes (small), or None at the end of input.
    fn read_small(&mut self, n: usize) -> Result<Option<Vec<u8>>, CutError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let take = buf.len().min(n - out.len());
            out.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
            self.pos += take as u64;
        }
        Ok(Some(out))
    }
}

fn number(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// One command's first argument, upper-cased when it is short (enough to spot MULTI/EXEC).
enum Parsed {
    Command(Option<Vec<u8>>),
    Truncated,
}

fn command<R: BufRead>(r: &mut Reader<R>) -> Result<Parsed, CutError> {
    let argc = match r.line()? {
        Line::Eof => return Ok(Parsed::Truncated),
        Line::Full(l) => number(&l[1..]).ok_or_else(|| r.err("bad argument count"))?,
    };
    let mut name = None;
    for i in 0..argc {
        let len = match r.line()? {
            Line::Eof => return Ok(Parsed::Truncated),
            Line::Full(l) if l.first() == Some(&b'$') => {
                number(&l[1..]).ok_or_else(|| r.err("bad argument length"))?
            }
            Line::Full(_) => return Err(r.err("expected a bulk string ($)")),
        };
        if i == 0 && len <= 16 {
            match r.read_small(len as usize)? {
                Some(v) => name = Some(v.to_ascii_uppercase()),
                None => return Ok(Parsed::Truncated),
            }
        } else if !r.skip(len)? {
            return Ok(Parsed::Truncated);
        }
        match r.read_small(2)? {
            Some(crlf) if crlf == b"\r\n" => {}
            Some(_) => return Err(r.err("an argument does not end in CRLF")),
            None => return Ok(Parsed::Truncated),
        }
    }
    Ok(Parsed::Command(name))
}

/// Scan `input` (an incremental AOF, or base-less concatenation of them) and say where to cut
/// to keep the writes of second `until_unix_s` and before (`None`: keep all whole commands).
pub fn find_cut<R: BufRead>(input: R, until_unix_s: Option<u64>) -> Result<Cut, CutError> {
    let mut r = Reader {
        inner: input,
        pos: 0,
    };
    let mut cut = Cut::default();
    // Commands and bytes as of the last point where no transaction was open.
    let mut safe = (0u64, 0u64);
    let mut in_multi = false;
    loop {
        let start = r.pos;
        match r.peek()? {
            None => break,
            Some(b'#') => {
                let Line::Full(line) = r.line()? else {
                    cut.partial_tail = r.pos - start;
                    r.pos = start;
                    break;
                };
                if let Some(ts) = line.strip_prefix(b"#TS:") {
                    let ts = number(ts).ok_or_else(|| CutError {
                        offset: start,
                        what: "bad #TS annotation".into(),
                    })?;
                    if until_unix_s.is_some_and(|t| ts > t) {
                        cut.first_dropped_ts = Some(ts);
                        r.pos = start;
                        break;
                    }
                    cut.last_kept_ts = Some(ts);
                }
                if !in_multi {
                    safe = (r.pos, cut.commands);
                }
            }
            Some(b'*') => match command(&mut r)? {
                Parsed::Truncated => {
                    cut.partial_tail = r.pos - start;
                    r.pos = start;
                    break;
                }
                Parsed::Command(name) => {
                    cut.commands += 1;
                    match name.as_deref() {
                        Some(b"MULTI") => in_multi = true,
                        Some(b"EXEC") => in_multi = false,
                        _ => {}
                    }
                    if !in_multi {
                        safe = (r.pos, cut.commands);
                    }
                }
            },
            Some(b) => {
                return Err(r.err(format!(
                    "expected a command or an annotation, found byte 0x{b:02x}"
                )))
            }
        }
    }
    if in_multi {
        // An open transaction at the cut: drop it whole.
        cut.keep_bytes = safe.0;
        cut.commands = safe.1;
    } else {
        cut.keep_bytes = r.pos;
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> String {
        let mut s = format!("*{}\r\n", args.len());
        for a in args {
            s += &format!("${}\r\n{a}\r\n", a.len());
        }
        s
    }

    fn ts(t: u64) -> String {
        format!("#TS:{t}\r\n")
    }

    fn cut(aof: &str, t: Option<u64>) -> Cut {
        find_cut(aof.as_bytes(), t).unwrap()
    }

    #[test]
    fn keeps_the_writes_up_to_the_second() {
        let a = ts(100) + &cmd(&["SET", "a", "1"]) + &cmd(&["SET", "b", "2"]);
        let b = ts(101) + &cmd(&["SET", "c", "3"]);
        let c = ts(105) + &cmd(&["DEL", "a"]);
        let aof = a.clone() + &b + &c;
        let at = |t| cut(&aof, Some(t));
        assert_eq!(at(99).keep_bytes, 0);
        assert_eq!(at(99).first_dropped_ts, Some(100));
        assert_eq!(at(100).keep_bytes, a.len() as u64);
        assert_eq!(at(100).commands, 2);
        assert_eq!(at(100).last_kept_ts, Some(100));
        assert_eq!(at(100).first_dropped_ts, Some(101));
        // Seconds without writes keep what came before.
        assert_eq!(at(104).keep_bytes, (a.len() + b.len()) as u64);
        assert_eq!(at(105).keep_bytes, aof.len() as u64);
        assert_eq!(at(105).first_dropped_ts, None);
        assert_eq!(cut(&aof, None).keep_bytes, aof.len() as u64);
        assert_eq!(cut(&aof, None).commands, 4);
    }

    #[test]
    fn commands_before_any_annotation_are_kept() {
        // A file written before timestamps were enabled, then with them.
        let aof = cmd(&["SET", "a", "1"]) + &ts(200) + &cmd(&["SET", "b", "2"]);
        let c = cut(&aof, Some(150));
        assert_eq!(c.keep_bytes, cmd(&["SET", "a", "1"]).len() as u64);
        assert_eq!(c.last_kept_ts, None);
    }

    #[test]
    fn a_command_cut_short_is_dropped_wherever_it_ends() {
        let whole = ts(1) + &cmd(&["SET", "key", "value"]);
        let next = cmd(&["SET", "other", "x".repeat(100).as_str()]);
        let aof = whole.clone() + &next;
        for end in whole.len()..aof.len() {
            let c = cut(&aof[..end], None);
            assert_eq!(c.keep_bytes, whole.len() as u64, "ending at {end}");
            assert_eq!(c.partial_tail, (end - whole.len()) as u64);
            assert_eq!(c.commands, 1);
        }
        // A half annotation too.
        let c = cut(&(whole.clone() + "#TS:12"), None);
        assert_eq!(c.keep_bytes, whole.len() as u64);
    }

    #[test]
    fn an_open_transaction_is_dropped_whole() {
        let before = ts(10) + &cmd(&["SET", "a", "1"]);
        let tx = cmd(&["MULTI"]) + &cmd(&["INCR", "n"]) + &cmd(&["exec"]);
        let aof = before.clone() + &tx + &cmd(&["SET", "z", "1"]);
        assert_eq!(cut(&aof, None).keep_bytes, aof.len() as u64);
        // Ending inside the transaction (after MULTI and INCR, before EXEC).
        let open = before.clone() + &cmd(&["MULTI"]) + &cmd(&["INCR", "n"]);
        let c = cut(&open, None);
        assert_eq!(c.keep_bytes, before.len() as u64);
        assert_eq!(c.commands, 1);
        // A newer second starting inside one (redis does not do this; be safe anyway).
        let odd = before.clone() + &cmd(&["MULTI"]) + &ts(11) + &cmd(&["EXEC"]);
        assert_eq!(cut(&odd, Some(10)).keep_bytes, before.len() as u64);
    }

    #[test]
    fn garbage_is_named_with_its_offset() {
        let good = ts(1) + &cmd(&["SET", "a", "1"]);
        let err = find_cut((good.clone() + "hello").as_bytes(), None).unwrap_err();
        assert_eq!(err.offset, good.len() as u64);
        assert!(err.to_string().contains("found byte 0x68"), "{err}");
        for bad in [
            "*x\r\n",
            "*1\r\n:3\r\n",
            "*1\r\n$1\r\nab\r\n",
            "#TS:abc\r\n",
            "*1\n",
        ] {
            let e = find_cut(bad.as_bytes(), None).unwrap_err();
            assert!(
                e.to_string().starts_with("not a redis append-only file"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn large_arguments_stream_through_small_buffers() {
        let big = "v".repeat(300_000);
        let aof = ts(5) + &cmd(&["SET", "k", &big]) + &ts(6) + &cmd(&["SET", "k", "x"]);
        let reader = std::io::BufReader::with_capacity(7, aof.as_bytes());
        let c = find_cut(reader, Some(5)).unwrap();
        assert_eq!(
            c.keep_bytes,
            (ts(5) + &cmd(&["SET", "k", &big])).len() as u64
        );
        assert_eq!(c.first_dropped_ts, Some(6));
    }
}
