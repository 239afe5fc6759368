//! Log setup. Under systemd the agent writes to journald's native socket, one datagram per
//! record, with fields an operator can filter on: `REDIS_STEWARD_NODE`, `REDIS_STEWARD_ROLE`,
//! `REDIS_STEWARD_EPOCH` (from the small shared [`LogContext`] the agent and the HA shell keep
//! current), `REDIS_STEWARD_TARGET` (`redis` for redis-server's own lines) and the usual
//! `PRIORITY`, `SYSLOG_IDENTIFIER`, `CODE_FILE`/`CODE_LINE`. Anywhere else it keeps plain lines
//! on stderr: colours only on a terminal, no timestamps when stderr is a journal stream.
//!
//! Which one: `REDIS_STEWARD_LOG=journald|stderr` decides; unset (`auto`), the journal is used
//! when stderr *is* the journal stream (`JOURNAL_STREAM` names stderr's device and inode, as
//! systemd sets it for the service's own process) and the socket exists. RUST_LOG overrides
//! the default `info` level either way. `REDIS_STEWARD_JOURNAL_SOCKET` names another socket
//! (packaging/install-test.sh listens there to check the fields without a journald).
//!
//! The protocol is systemd's native one (`systemd.journal-fields(7)`, "Native Journal
//! Protocol"): `KEY=value` lines, or `KEY\n<u64 LE length><bytes>\n` for values holding a
//! newline. A record the socket refuses (journald gone, or too large) is written to stderr
//! instead, so nothing is lost silently.

use crate::log_context::LogContext;
use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// journald's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Records longer than this lose the end of their message (journald's datagrams are limited
/// by the socket buffers; the agent's records are a line or two).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Where log records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stderr { timestamps: bool },
    Journald(PathBuf),
}

/// `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected; it names stderr only
/// when both match stderr's own (a child whose stderr was redirected inherits the variable).
pub fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

fn stderr_is_journal_stream() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat fills the struct we pass for a descriptor we do not close.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return false;
    }
    journal_stream_matches(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

/// The sink for this process, from `REDIS_STEWARD_LOG` and systemd's environment.
pub fn choose_sink() -> Sink {
    let socket = std::env::var_os("REDIS_STEWARD_JOURNAL_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(JOURNAL_SOCKET));
    let journal_stream = stderr_is_journal_stream();
    match std::env::var("REDIS_STEWARD_LOG").as_deref() {
        Ok("journald") => Sink::Journald(socket),
        Ok("stderr") => Sink::Stderr {
            timestamps: !journal_stream,
        },
        _ if journal_stream && socket.exists() => Sink::Journald(socket),
        _ => Sink::Stderr {
            timestamps: !journal_stream,
        },
    }
}

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match choose_sink() {
        Sink::Journald(path) => {
            let layer = JournaldLayer::new(path, crate::log_context::global().clone());
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
        }
        Sink::Stderr { timestamps } => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal());
            if timestamps {
                let _ = builder.try_init();
            } else {
                let _ = builder.without_time().try_init();
            }
        }
    }
}

/// A `tracing` layer that sends every event to journald's native socket at `path`.
pub struct JournaldLayer {
    socket: Option<UnixDatagram>,
    path: PathBuf,
    context: Arc<LogContext>,
    identifier: String,
}

impl JournaldLayer {
    pub fn new(path: impl Into<PathBuf>, context: Arc<LogContext>) -> JournaldLayer {
        JournaldLayer {
            socket: UnixDatagram::unbound().ok(),
            path: path.into(),
            context,
            identifier: "redis-steward".into(),
        }
    }

    fn send(&self, payload: &[u8]) -> std::io::Result<()> {
        match &self.socket {
            Some(s) => s.send_to(payload, &self.path).map(|_| ()),
            None => Err(std::io::Error::other("no datagram socket")),
        }
    }
}

/// The event's message and its other fields as `key=value`, like the plain-text format.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.push_field(field, &format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.message, "{value:?}");
        } else {
            self.push_field(field, &format_args!("{value:?}"));
        }
    }
}

impl MessageVisitor {
    fn push_field(&mut self, field: &Field, value: &dyn std::fmt::Display) {
        use std::fmt::Write as _;
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value}", field.name());
    }

    fn line(&self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message.clone(),
            (true, false) => self.fields.clone(),
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

/// syslog priorities, as journald files them.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// Append one field in the native protocol.
pub fn put_field(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<S: Subscriber> Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let line = visitor.line();
        let mut buf = Vec::with_capacity(256 + line.len());
        put_field(&mut buf, "PRIORITY", priority(meta.level()).as_bytes());
        put_field(&mut buf, "SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        put_field(
            &mut buf,
            "MESSAGE",
            truncate(&line, MAX_MESSAGE_BYTES).as_bytes(),
        );
        put_field(&mut buf, "REDIS_STEWARD_TARGET", meta.target().as_bytes());
        let ctx = self.context.snapshot();
        if let Some(node) = &ctx.node {
            put_field(&mut buf, "REDIS_STEWARD_NODE", node.as_bytes());
        }
        if let Some(role) = &ctx.role {
            put_field(&mut buf, "REDIS_STEWARD_ROLE", role.as_bytes());
        }
        if let Some(epoch) = ctx.epoch {
            put_field(
                &mut buf,
                "REDIS_STEWARD_EPOCH",
                epoch.to_string().as_bytes(),
            );
        }
        if let Some(file) = meta.file() {
            put_field(&mut buf, "CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            put_field(&mut buf, "CODE_LINE", line.to_string().as_bytes());
        }
        if self.send(&buf).is_err() {
            // journald is gone or refused the record: keep it on stderr (the journal stream
            // under systemd) rather than losing it.
            let _ = writeln!(
                std::io::stderr().lock(),
                "{} {}: {line}",
                meta.level(),
                meta.target()
            );
        }
    }
}

impl std::fmt::Debug for JournaldLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournaldLayer")
            .field("path", &self.path)
            .finish()
    }
}

/// Parse one native-protocol datagram into (key, value) pairs, for tests and tools.
pub fn parse_datagram(mut data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let nl = data.iter().position(|&b| b == b'\n')?;
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = std::str::from_utf8(&line[..eq]).ok()?.to_string();
            fields.push((key, line[eq + 1..].to_vec()));
            data = &data[nl + 1..];
        } else {
            let key = std::str::from_utf8(line).ok()?.to_string();
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8 + len)?.to_vec();
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            fields.push((key, value));
            data = &rest[8 + len + 1..];
        }
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn field<'a>(fields: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    /// A journald stand-in: a datagram socket bound at a temporary path.
    fn fake_journald() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> Vec<(String, Vec<u8>)> {
        let mut buf = vec![0u8; 256 * 1024];
        let n = sock.recv(&mut buf).expect("a journal record");
        parse_datagram(&buf[..n]).expect("a well-formed datagram")
    }

    #[test]
    fn records_carry_node_role_and_epoch_as_they_change() {
        let (_dir, path, sock) = fake_journald();
        let ctx = Arc::new(LogContext::default());
        let subscriber =
            tracing_subscriber::registry().with(JournaldLayer::new(&path, ctx.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before the node is known");
            ctx.set_node("node-2");
            tracing::warn!(pid = 42, "redis-server started");
            ctx.set_role("primary", 7);
            tracing::info!(target: "redis", "Ready to accept connections tls");
        });

        let first = recv(&sock);
        assert_eq!(field(&first, "MESSAGE"), Some("before the node is known"));
        assert_eq!(field(&first, "PRIORITY"), Some("6"));
        assert_eq!(field(&first, "SYSLOG_IDENTIFIER"), Some("redis-steward"));
        assert_eq!(field(&first, "REDIS_STEWARD_NODE"), None);
        assert_eq!(field(&first, "REDIS_STEWARD_ROLE"), None);

        let second = recv(&sock);
        assert_eq!(
            field(&second, "MESSAGE"),
            Some("redis-server started pid=42")
        );
        assert_eq!(field(&second, "PRIORITY"), Some("4"));
        assert_eq!(field(&second, "REDIS_STEWARD_NODE"), Some("node-2"));
        assert_eq!(field(&second, "REDIS_STEWARD_EPOCH"), None);
        assert!(field(&second, "CODE_FILE").unwrap().ends_with("logging.rs"));
        assert!(field(&second, "CODE_LINE").unwrap().parse::<u32>().is_ok());

        let third = recv(&sock);
        assert_eq!(field(&third, "REDIS_STEWARD_NODE"), Some("node-2"));
        assert_eq!(field(&third, "REDIS_STEWARD_ROLE"), Some("primary"));
        assert_eq!(field(&third, "REDIS_STEWARD_EPOCH"), Some("7"));
        assert_eq!(field(&third, "REDIS_STEWARD_TARGET"), Some("redis"));
    }

    #[test]
    fn multi_line_values_use_the_length_prefixed_form() {
        let (_dir, path, sock) = fake_journald();
        let subscriber =
            tracing_subscriber::registry().with(JournaldLayer::new(&path, Default::default()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("first line\nsecond line");
        });
        let fields = recv(&sock);
        assert_eq!(field(&fields, "MESSAGE"), Some("first line\nsecond line"));
        assert_eq!(field(&fields, "PRIORITY"), Some("3"));
    }

    #[test]
    fn a_missing_socket_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let subscriber = tracing_subscriber::registry().with(JournaldLayer::new(
            dir.path().join("absent"),
            Default::default(),
        ));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("goes to stderr instead");
        });
    }

    #[test]
    fn native_protocol_round_trips() {
        let mut buf = Vec::new();
        put_field(&mut buf, "A", b"plain");
        put_field(&mut buf, "B", b"two\nlines");
        put_field(&mut buf, "C", b"");
        assert_eq!(&buf[..8], b"A=plain\n");
        let parsed = parse_datagram(&buf).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("A".to_string(), b"plain".to_vec()),
                ("B".to_string(), b"two\nlines".to_vec()),
                ("C".to_string(), b"".to_vec()),
            ]
        );
        assert_eq!(parse_datagram(b"B\n\x05\0\0\0\0\0\0\0ab"), None);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
