//! The Redis wire protocol (RESP2 and RESP3) as pure functions: reading client requests
//! (multibulk and inline, with hard size limits) and writing replies. No I/O here, so the
//! Sentinel server's network edge stays thin and every byte it sends is unit-tested.
//!
//! Requests are parsed from the start of the connection's buffer each time more bytes arrive;
//! a request is only ever the size the limits allow, so re-parsing is cheap, and a header that
//! announces too much is refused before its data is waited for. Error texts are Redis's own
//! (`Protocol error: invalid bulk length`, ...), because clients log them verbatim.

use std::fmt;

/// The reply dialect a connection speaks (`HELLO 2` / `HELLO 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn number(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// How much a single request may hold. Redis itself allows 10 arguments of 16 KiB before a
/// client has authenticated; a Sentinel port never needs big requests after that either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_args: usize,
    pub max_bulk: usize,
    /// Bytes one request may occupy in the input buffer (all arguments and framing).
    pub max_request: usize,
    /// Only changes the wording of errors, which Redis words differently before AUTH.
    pub authenticated: bool,
}

impl Limits {
    /// Before authentication: Redis 7's own limits for unauthenticated clients.
    pub const UNAUTHENTICATED: Limits = Limits {
        max_args: 10,
        max_bulk: 16 * 1024,
        max_request: 64 * 1024,
        authenticated: false,
    };
    /// After authentication: still small, so 1024 connections cannot pin much memory.
    pub const AUTHENTICATED: Limits = Limits {
        max_args: 64,
        max_bulk: 64 * 1024,
        max_request: 128 * 1024,
        authenticated: true,
    };
}

/// A request the client framed wrongly or made too big. The connection answers
/// `-ERR <message>` and closes, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn perr<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

/// The outcome of looking at the front of the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request and how many bytes it took.
    Request(Vec<Vec<u8>>, usize),
    /// Bytes that carry no command (`*0`, `*-1`, an empty line): consume and go on.
    Skip(usize),
    /// Wait for more bytes.
    Incomplete,
}

/// Read one request from the start of `buf`.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Parsed, ProtocolError> {
    let parsed = match buf.first() {
        None => return Ok(Parsed::Incomplete),
        Some(b'*') => parse_multibulk(buf, limits)?,
        Some(_) => parse_inline(buf, limits)?,
    };
    if parsed == Parsed::Incomplete && buf.len() > limits.max_request {
        return perr("too big request");
    }
    Ok(parsed)
}

/// The line starting at `start`, without its `\r\n`, and the index after it.
fn line_at(buf: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(start..)?;
    let pos = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..pos], start + pos + 2))
}

/// An integer as Redis's string2ll reads it: an optional '-', digits only, no '+', no spaces.
pub fn parse_integer(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse::<i64>().ok()
}

fn parse_multibulk(buf: &[u8], limits: Limits) -> Result<Parsed, ProtocolError> {
    let authenticated = limits.authenticated;
    let Some((header, mut pos)) = line_at(buf, 0) else {
        if buf.len() > limits.max_request {
            return perr("too big mbulk count string");
        }
        return Ok(Parsed::Incomplete);
    };
    let count = match parse_integer(&header[1..]) {
        Some(n) if n <= 0 => return Ok(Parsed::Skip(pos)),
        Some(n) if (n as u64) <= limits.max_args as u64 => n as usize,
        Some(_) if !authenticated => return perr("unauthenticated multibulk length"),
        _ => return perr("invalid multibulk length"),
    };
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let Some((line, next)) = line_at(buf, pos) else {
            if buf.len() - pos > 32 {
                // A bulk header is at most "$" + 20 digits; anything longer is garbage.
                return perr("too big bulk count string");
            }
            return Ok(Parsed::Incomplete);
        };
        match line.first() {
            Some(b'$') => {}
            other => {
                let got = other.map(|&b| b as char).unwrap_or(' ');
                return perr(format!("expected '$', got '{got}'"));
            }
        }
        let len = match parse_integer(&line[1..]) {
            Some(n) if n >= 0 && (n as u64) <= limits.max_bulk as u64 => n as usize,
            Some(n) if n >= 0 && !authenticated => return perr("unauthenticated bulk length"),
            _ => return perr("invalid bulk length"),
        };
        // Redis skips the two bytes after the data without looking at them; so do we.
        if buf.len() < next + len + 2 {
            return Ok(Parsed::Incomplete);
        }
        args.push(buf[next..next + len].to_vec());
        pos = next + len + 2;
    }
    Ok(Parsed::Request(args, pos))
}

fn parse_inline(buf: &[u8], limits: Limits) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_request {
            return perr("too big inline request");
        }
        return Ok(Parsed::Incomplete);
    };
    let mut line = &buf[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args =
        split_args(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    if args.is_empty() {
        return Ok(Parsed::Skip(nl + 1));
    }
    if args.len() > limits.max_args || args.iter().any(|a| a.len() > limits.max_bulk) {
        return perr("too big inline request");
    }
    Ok(Parsed::Request(args, nl + 1))
}

/// Split an inline command the way redis-cli and Redis do (sdssplitargs): whitespace
/// separates, "double quotes" understand \n \r \t \b \a \\ \" \xHH, 'single quotes' only \'.
/// A closing quote must be followed by whitespace or the end. None = unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(out);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            if in_dq {
                let c = *line.get(i)?;
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex_val(line[i + 2]), hex_val(line[i + 3])) {
                        cur.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    cur.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else if in_sq {
                let c = *line.get(i)?;
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    cur.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < line.len() && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(&c) => cur.push(c),
                }
                i += 1;
            }
        }
        out.push(cur);
    }
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// A reply. `Map` and `Push` are RESP3 types that degrade to arrays in RESP2, and the two
/// nulls keep their RESP2 spelling (`$-1` vs `*-1`) while both become `_` in RESP3: that is
/// exactly how Redis answers the same command in either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    /// The whole error line without the leading '-', e.g. `ERR syntax error`.
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing string (`$-1` in RESP2).
    NullBulk,
    /// A missing array (`*-1` in RESP2).
    NullArray,
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Push(Vec<Value>),
}

impl Value {
    pub fn ok() -> Value {
        Value::Simple("OK".into())
    }

    pub fn bulk(s: impl AsRef<[u8]>) -> Value {
        Value::Bulk(s.as_ref().to_vec())
    }

    /// An error reply; `msg` starts with its code (`ERR ...`, `NOAUTH ...`).
    pub fn error(msg: impl Into<String>) -> Value {
        Value::Error(msg.into())
    }

    /// A map whose keys and values are all bulk strings (Sentinel's instance descriptions).
    pub fn string_map<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::bulk(k), Value::bulk(v)))
                .collect(),
        )
    }

    pub fn encode(&self, proto: Protocol, out: &mut Vec<u8>) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            // Error lines cannot carry newlines; Redis replaces them with spaces too.
            Value::Error(s) => line(out, b'-', s.replace(['\r', '\n'], " ").as_bytes()),
            Value::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Value::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::NullBulk if resp3 => out.extend_from_slice(b"_\r\n"),
            Value::NullBulk => out.extend_from_slice(b"$-1\r\n"),
            Value::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Value::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Value::Array(items) => aggregate(out, b'*', items, proto),
            Value::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
            Value::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }

    pub fn to_bytes(&self, proto: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(proto, &mut out);
        out
    }
}

fn line(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn aggregate(out: &mut Vec<u8>, tag: u8, items: &[Value], proto: Protocol) {
    line(out, tag, items.len().to_string().as_bytes());
    for item in items {
        item.encode(proto, out);
    }
}

/// Read one reply from the start of `buf` (the client side, for tests and tools): the value
/// and the bytes it took, `None` while incomplete. Understands everything [`Value::encode`]
/// writes; RESP2 nulls come back as `NullBulk`/`NullArray`, RESP3's `_` as `NullBulk`.
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], start: usize, depth: usize) -> Result<Option<(Value, usize)>, String> {
    if depth > 32 {
        return Err("nesting too deep".into());
    }
    let Some((header, mut pos)) = line_at(buf, start) else {
        return Ok(None);
    };
    let Some((&tag, body)) = header.split_first() else {
        return Err("empty line".into());
    };
    let text = || String::from_utf8_lossy(body).into_owned();
    let number = || parse_integer(body).ok_or_else(|| format!("bad length {:?}", text()));
    let value = match tag {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Integer(number()?),
        b'_' => Value::NullBulk,
        b'$' => {
            let n = number()?;
            if n < 0 {
                Value::NullBulk
            } else {
                let n = n as usize;
                if buf.len() < pos + n + 2 {
                    return Ok(None);
                }
                let v = Value::Bulk(buf[pos..pos + n].to_vec());
                pos += n + 2;
                v
            }
        }
        b'*' | b'>' | b'%' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Value::NullArray, pos)));
            }
            let items = if tag == b'%' { 2 * n } else { n };
            let mut vals = Vec::new();
            for _ in 0..items {
                let Some((v, next)) = decode_at(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                vals.push(v);
                pos = next;
            }
            match tag {
                b'*' => Value::Array(vals),
                b'>' => Value::Push(vals),
                _ => {
                    let mut pairs = Vec::new();
                    let mut it = vals.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                }
            }
        }
        other => return Err(format!("unknown type byte {:?}", other as char)),
    };
    Ok(Some((value, pos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: Limits = Limits::AUTHENTICATED;
    const UNAUTH: Limits = Limits::UNAUTHENTICATED;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn err(buf: &[u8], limits: Limits) -> String {
        parse_request(buf, limits).unwrap_err().to_string()
    }

    #[test]
    fn multibulk_requests_parse_and_report_their_length() {
        let buf = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n*1\r\n$4\r\nROLE\r\n";
        let Parsed::Request(a, n) = parse_request(buf, AUTH).unwrap() else {
            panic!()
        };
        assert_eq!(a, args(&["PING", "hi"]));
        assert_eq!(
            parse_request(&buf[n..], AUTH).unwrap(),
            Parsed::Request(args(&["ROLE"]), buf.len() - n)
        );
        // Binary-safe: the data may hold \r\n.
        assert_eq!(
            parse_request(b"*1\r\n$4\r\na\r\nb\r\n", AUTH).unwrap(),
            Parsed::Request(vec![b"a\r\nb".to_vec()], 14)
        );
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let buf = b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$2\r\nds\r\n";
        for cut in 0..buf.len() {
            assert_eq!(
                parse_request(&buf[..cut], AUTH).unwrap(),
                Parsed::Incomplete,
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse_request(buf, AUTH).unwrap(),
            Parsed::Request(_, n) if n == buf.len()
        ));
    }

    #[test]
    fn empty_multibulks_and_blank_lines_are_skipped() {
        assert_eq!(parse_request(b"*0\r\n", AUTH).unwrap(), Parsed::Skip(4));
        assert_eq!(parse_request(b"*-1\r\n", AUTH).unwrap(), Parsed::Skip(5));
        assert_eq!(parse_request(b"\r\n", AUTH).unwrap(), Parsed::Skip(2));
        assert_eq!(parse_request(b"   \n", AUTH).unwrap(), Parsed::Skip(4));
    }

    #[test]
    fn malformed_multibulks_get_redis_error_texts() {
        assert_eq!(
            err(b"*abc\r\n", AUTH),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*2\r\n+x\r\n", AUTH),
            "Protocol error: expected '$', got '+'"
        );
        assert_eq!(
            err(b"*2\r\n$-5\r\n", AUTH),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$+5\r\n", AUTH),
            "Protocol error: invalid bulk length"
        );
    }

    #[test]
    fn oversized_requests_are_refused_from_the_header_alone() {
        // 65 arguments, or one bulk of 64 KiB + 1, before any of the data has arrived.
        assert_eq!(
            err(b"*65\r\n", AUTH),
            "Protocol error: invalid multibulk length"
        );
        assert!(matches!(
            parse_request(b"*64\r\n", AUTH).unwrap(),
            Parsed::Incomplete
        ));
        assert_eq!(
            err(b"*1\r\n$65537\r\n", AUTH),
            "Protocol error: invalid bulk length"
        );
        assert!(matches!(
            parse_request(b"*1\r\n$65536\r\n", AUTH).unwrap(),
            Parsed::Incomplete
        ));
        // Redis's own wording for unauthenticated clients.
        assert_eq!(
            err(b"*11\r\n", UNAUTH),
            "Protocol error: unauthenticated multibulk length"
        );
        assert_eq!(
            err(b"*2\r\n$16385\r\n", UNAUTH),
            "Protocol error: unauthenticated bulk length"
        );
        // Many arguments that each fit still cannot add up to more than the request limit.
        let mut big = b"*64\r\n".to_vec();
        for _ in 0..3 {
            big.extend_from_slice(b"$60000\r\n");
            big.extend(std::iter::repeat_n(b'x', 60000));
            big.extend_from_slice(b"\r\n");
        }
        assert_eq!(err(&big, AUTH), "Protocol error: too big request");
        // An endless header line or inline command.
        assert_eq!(
            err(&vec![b'*'; 200_000], AUTH),
            "Protocol error: too big mbulk count string"
        );
        assert_eq!(
            err(&vec![b'a'; 200_000], AUTH),
            "Protocol error: too big inline request"
        );
        assert_eq!(
            err(b"*2\r\n$111111111111111111111111111111111111", AUTH),
            "Protocol error: too big bulk count string"
        );
    }

    #[test]
    fn inline_commands_split_like_redis() {
        assert_eq!(
            parse_request(b"PING\r\n", AUTH).unwrap(),
            Parsed::Request(args(&["PING"]), 6)
        );
        assert_eq!(
            parse_request(b"ping  a\n", AUTH).unwrap(),
            Parsed::Request(args(&["ping", "a"]), 8)
        );
        assert_eq!(
            split_args(br#"SET "a b" 'c\'d' "\x41\n""#).unwrap(),
            vec![
                b"SET".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\n".to_vec()
            ]
        );
        assert_eq!(split_args(br#"a "b"#), None);
        assert_eq!(split_args(br#""a"b"#), None);
        assert_eq!(
            err(b"PING \"a\r\n", AUTH),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(split_args(b"\"\"").unwrap(), vec![Vec::<u8>::new()]);
        assert_eq!(
            parse_request(b"PING", AUTH).unwrap(),
            Parsed::Incomplete,
            "no newline yet"
        );
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        let v = Value::Array(vec![
            Value::Simple("OK".into()),
            Value::error("ERR x\ny"),
            Value::Integer(-3),
            Value::bulk("ab"),
            Value::NullBulk,
            Value::NullArray,
        ]);
        assert_eq!(
            v.to_bytes(Protocol::Resp2),
            b"*6\r\n+OK\r\n-ERR x y\r\n:-3\r\n$2\r\nab\r\n$-1\r\n*-1\r\n"
        );
        assert_eq!(
            v.to_bytes(Protocol::Resp3),
            b"*6\r\n+OK\r\n-ERR x y\r\n:-3\r\n$2\r\nab\r\n_\r\n_\r\n"
        );
        let m = Value::string_map(&[("ip", "1.2.3.4")]);
        assert_eq!(
            m.to_bytes(Protocol::Resp2),
            b"*2\r\n$2\r\nip\r\n$7\r\n1.2.3.4\r\n"
        );
        assert_eq!(
            m.to_bytes(Protocol::Resp3),
            b"%1\r\n$2\r\nip\r\n$7\r\n1.2.3.4\r\n"
        );
        let p = Value::Push(vec![Value::bulk("message")]);
        assert_eq!(p.to_bytes(Protocol::Resp2), b"*1\r\n$7\r\nmessage\r\n");
        assert_eq!(p.to_bytes(Protocol::Resp3), b">1\r\n$7\r\nmessage\r\n");
    }

    #[test]
    fn decode_reads_back_what_encode_writes() {
        let v = Value::Array(vec![
            Value::Map(vec![(Value::bulk("k"), Value::Integer(1))]),
            Value::Push(vec![Value::Simple("x".into()), Value::error("ERR e")]),
            Value::bulk(""),
            Value::NullArray,
        ]);
        let bytes = v.to_bytes(Protocol::Resp3);
        let (back, n) = decode(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            back,
            Value::Array(vec![
                Value::Map(vec![(Value::bulk("k"), Value::Integer(1))]),
                Value::Push(vec![Value::Simple("x".into()), Value::error("ERR e")]),
                Value::bulk(""),
                Value::NullBulk, // RESP3 has one null
            ])
        );
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
        let r2 = v.to_bytes(Protocol::Resp2);
        let (back2, _) = decode(&r2).unwrap().unwrap();
        assert!(matches!(&back2, Value::Array(items) if items[3] == Value::NullArray));
        assert!(decode(b"!x\r\n").is_err());
    }
}
