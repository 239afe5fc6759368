//! chitchat's [`Transport`] over sealed datagrams (see [`super::seal`]).
//!
//! [`SealedTransport`] seals every outgoing `ChitchatMessage` and opens every incoming datagram
//! before chitchat sees it. A datagram that fails any check (malformed, unknown key, forged,
//! from another data store, replayed, stale, oversize, or authentic but not a chitchat message)
//! never reaches chitchat: it is counted in [`GossipCounters`] by [`DropReason`], logged at debug
//! (and at warn at most once per [`DROP_WARN_INTERVAL`]), and `recv` waits for the next one.
//!
//! Below it sits a narrow datagram seam, [`DatagramNetwork`] / [`DatagramSocket`], with two
//! implementations run through the same conformance suite: [`UdpNetwork`] (tokio's
//! `UdpSocket`) and [`MemoryNetwork`] (in memory: cut links, inject forged or replayed
//! datagrams, inspect what was delivered).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::seal::{KeyRing, Opener, ReplayConfig, SealError, Sealer, MAX_DATAGRAM_LEN};

/// Drops are logged at warn at most once per this interval per socket (the counters are exact).
pub const DROP_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Receive buffer: larger than [`MAX_DATAGRAM_LEN`] so that an oversize datagram (possible over
/// IPv6) is seen whole and counted as oversize rather than truncated into a bogus tag failure.
const RECV_BUF_LEN: usize = 65_536;

// ---------------------------------------------------------------------------------------------
// The datagram seam
// ---------------------------------------------------------------------------------------------

/// Something that binds datagram sockets: real UDP or the in-memory network.
#[async_trait]
pub trait DatagramNetwork: Send + Sync + 'static {
    /// Binds `addr`. Fails if the address is already bound (as a UDP bind does).
    async fn bind(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn DatagramSocket>>;
}

/// One bound datagram socket. Dropping it releases the address.
#[async_trait]
pub trait DatagramSocket: Send + Sync + 'static {
    /// Sends one whole datagram. Sending to an address nobody is bound to is not an error: the
    /// datagram is lost, as with UDP.
    async fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> io::Result<()>;

    /// Waits for the next datagram and copies it into `buf` (truncating, as UDP does, if it is
    /// longer). Must be cancel-safe: chitchat selects on it.
    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// Real UDP sockets (tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpNetwork;

#[async_trait]
impl DatagramNetwork for UdpNetwork {
    async fn bind(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn DatagramSocket>> {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("failed to bind {addr}/UDP for gossip"))?;
        Ok(Box::new(UdpDatagramSocket(socket)))
    }
}

struct UdpDatagramSocket(tokio::net::UdpSocket);

#[async_trait]
impl DatagramSocket for UdpDatagramSocket {
    async fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        self.0.send_to(datagram, to).await.map(|_| ())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }
}

/// Datagrams queued per in-memory socket before further ones are dropped (a full socket buffer).
const MEMORY_QUEUE_LEN: usize = 1024;
/// Delivered datagrams the in-memory network remembers for [`MemoryNetwork::captured`].
const MEMORY_CAPTURE_LEN: usize = 1024;

/// A datagram the in-memory network delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedDatagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// An in-memory datagram network for tests: addresses are just keys, links can be cut, the
/// UDP payload limit is enforced, delivered datagrams are captured (the last
/// [`MEMORY_CAPTURE_LEN`]) and raw datagrams can be injected, e.g. to replay or forge traffic.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<MemoryInner>>,
}

type MemoryDatagram = (SocketAddr, Vec<u8>);

#[derive(Default)]
struct MemoryInner {
    /// Bound addresses: a binding number (so a dropped socket never unbinds its successor)
    /// and the sender side of the socket's queue.
    sockets: HashMap<SocketAddr, (u64, mpsc::Sender<MemoryDatagram>)>,
    next_binding: u64,
    /// Cut links, as (smaller, larger) address pairs: cut in both directions.
    cut: HashSet<(SocketAddr, SocketAddr)>,
    captured: VecDeque<CapturedDatagram>,
}

fn link(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl MemoryNetwork {
    pub fn new() -> Self {
        MemoryNetwork::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        lock(&self.inner)
    }

    /// Drops every datagram between `a` and `b`, both ways, until [`Self::heal_link`].
    pub fn cut_link(&self, a: SocketAddr, b: SocketAddr) {
        self.lock().cut.insert(link(a, b));
    }

    pub fn heal_link(&self, a: SocketAddr, b: SocketAddr) {
        self.lock().cut.remove(&link(a, b));
    }

    /// Delivers raw bytes to `to` as if `from` had sent them, ignoring cut links (an attacker
    /// next to the receiver). Returns whether a bound socket queued it.
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> io::Result<bool> {
        self.deliver(from, to, bytes, true)
    }

    /// The datagrams delivered so far (injected ones included), oldest first.
    pub fn captured(&self) -> Vec<CapturedDatagram> {
        self.lock().captured.iter().cloned().collect()
    }

    pub fn clear_captured(&self) {
        self.lock().captured.clear();
    }

    fn deliver(
        &self,
        from: SocketAddr,
        to: SocketAddr,
        bytes: &[u8],
        ignore_cuts: bool,
    ) -> io::Result<bool> {
        if bytes.len() > MAX_DATAGRAM_LEN {
            // What the kernel answers (EMSGSIZE) for a UDP payload over the limit.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "datagram of {} bytes exceeds the {MAX_DATAGRAM_LEN}-byte UDP payload limit",
                    bytes.len()
                ),
            ));
        }
        let mut inner = self.lock();
        if !ignore_cuts && inner.cut.contains(&link(from, to)) {
            return Ok(false);
        }
        let Some((_, queue)) = inner.sockets.get(&to) else {
            return Ok(false);
        };
        // A full queue loses the datagram, like a full socket buffer.
        if queue.try_send((from, bytes.to_vec())).is_err() {
            return Ok(false);
        }
        if inner.captured.len() == MEMORY_CAPTURE_LEN {
            inner.captured.pop_front();
        }
        inner.captured.push_back(CapturedDatagram {
            from,
            to,
            bytes: bytes.to_vec(),
        });
        Ok(true)
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryNetwork")
            .field("bound", &inner.sockets.keys().collect::<Vec<_>>())
            .field("cut", &inner.cut)
            .field("captured", &inner.captured.len())
            .finish()
    }
}

#[async_trait]
impl DatagramNetwork for MemoryNetwork {
    async fn bind(&self, addr: SocketAddr) -> anyhow::Result<Box<dyn DatagramSocket>> {
        let mut inner = self.lock();
        if inner.sockets.contains_key(&addr) {
            anyhow::bail!("failed to bind {addr} for gossip: address already in use (in memory)");
        }
        let (queue_tx, queue_rx) = mpsc::channel(MEMORY_QUEUE_LEN);
        let binding = inner.next_binding;
        inner.next_binding += 1;
        inner.sockets.insert(addr, (binding, queue_tx));
        Ok(Box::new(MemorySocket {
            addr,
            binding,
            network: self.clone(),
            queue: queue_rx,
        }))
    }
}

struct MemorySocket {
    addr: SocketAddr,
    binding: u64,
    network: MemoryNetwork,
    queue: mpsc::Receiver<MemoryDatagram>,
}

#[async_trait]
impl DatagramSocket for MemorySocket {
    async fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        self.network
            .deliver(self.addr, to, datagram, false)
            .map(|_| ())
    }

    async fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        // `mpsc::Receiver::recv` is cancel-safe. The queue only closes when this socket is
        // unbound, i.e. dropped, so `None` cannot happen while we are borrowed.
        let (from, bytes) =
            self.queue.recv().await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "in-memory socket unbound")
            })?;
        let len = bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&bytes[..len]);
        Ok((len, from))
    }
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        let mut inner = self.network.lock();
        if matches!(inner.sockets.get(&self.addr), Some((binding, _)) if *binding == self.binding) {
            inner.sockets.remove(&self.addr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// Why an incoming datagram was dropped before reaching chitchat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short, bad magic or version: not our format.
    Malformed,
    /// Sealed under a key id we do not hold.
    UnknownKey,
    /// Wrong key, another data store, or tampered.
    Authentication,
    /// Authentic, already seen (or behind the replay window).
    Replay,
    /// Authentic, timestamp outside the window (replay after our restart, or clock skew).
    Stale,
    /// Longer than the UDP payload limit.
    Oversize,
    /// Authentic, but not a chitchat message this build understands.
    Undecodable,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::UnknownKey,
        DropReason::Authentication,
        DropReason::Replay,
        DropReason::Stale,
        DropReason::Oversize,
        DropReason::Undecodable,
    ];

    /// Stable label, e.g. for a Prometheus `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Authentication => "authentication",
            DropReason::Replay => "replay",
            DropReason::Stale => "stale",
            DropReason::Oversize => "oversize",
            DropReason::Undecodable => "undecodable",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&SealError> for DropReason {
    fn from(err: &SealError) -> Self {
        match err {
            SealError::Malformed(_) => DropReason::Malformed,
            SealError::UnknownKey(_) => DropReason::UnknownKey,
            SealError::Authentication { .. } => DropReason::Authentication,
            SealError::Replay { .. } => DropReason::Replay,
            SealError::Stale { .. } => DropReason::Stale,
            SealError::Oversize { .. } => DropReason::Oversize,
        }
    }
}

/// Gossip traffic counters, shared (`Arc`) between the transport, its sockets and whoever
/// exports them. Monotonic; relaxed atomics are enough since each is independent.
#[derive(Debug, Default)]
pub struct GossipCounters {
    sent: AtomicU64,
    received: AtomicU64,
    oversize: AtomicU64,
    send_errors: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl GossipCounters {
    /// Datagrams handed to the network (including to addresses nobody listens on).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Datagrams that passed every check and were delivered to chitchat.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Outgoing messages not sent because, sealed, they would exceed one UDP datagram.
    pub fn oversize(&self) -> u64 {
        self.oversize.load(Ordering::Relaxed)
    }

    /// Outgoing datagrams the network refused (I/O errors).
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Incoming datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// Every drop reason with its count (zeros included, stable order), for export.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|reason| (reason.as_str(), self.dropped(*reason)))
            .collect()
    }

    /// Incoming datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL
            .iter()
            .map(|reason| self.dropped(*reason))
            .sum()
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count_drop(&self, reason: DropReason) {
        Self::count(&self.dropped[reason.index()]);
    }
}

// ---------------------------------------------------------------------------------------------
// The sealed transport
// ---------------------------------------------------------------------------------------------

/// Where the transport reads the wall clock (Unix seconds); replaceable in tests.
pub type UnixClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system wall clock in Unix seconds (0 if it is set before 1970).
pub fn system_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_secs())
}

/// Sealer and opener of one transport. Shared by every socket the transport opens, so a
/// re-opened socket continues the same incarnation's counter (a fresh counter would reuse
/// nonces) and keeps the replay windows (a fresh window would accept replays).
struct Crypto {
    sealer: Mutex<Sealer>,
    opener: Mutex<Opener>,
}

/// chitchat's [`Transport`], sealing every datagram with the data store's key.
pub struct SealedTransport {
    network: Arc<dyn DatagramNetwork>,
    crypto: Arc<Crypto>,
    counters: Arc<GossipCounters>,
    clock: UnixClock,
}

impl SealedTransport {
    pub fn new(network: impl DatagramNetwork, sealer: Sealer, opener: Opener) -> Self {
        SealedTransport {
            network: Arc::new(network),
            crypto: Arc::new(Crypto {
                sealer: Mutex::new(sealer),
                opener: Mutex::new(opener),
            }),
            counters: Arc::default(),
            clock: Arc::new(system_unix_secs),
        }
    }

    /// The usual set-up: a random incarnation from the OS, default replay limits.
    pub fn for_data_store(
        network: impl DatagramNetwork,
        keyring: KeyRing,
        data_store_id: &str,
    ) -> Self {
        let sealer = Sealer::from_os_rng(keyring.clone(), data_store_id);
        let opener = Opener::new(keyring, data_store_id, ReplayConfig::default());
        SealedTransport::new(network, sealer, opener)
    }

    /// Replaces the wall clock (before any socket is opened).
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Counts into `counters` instead of a private set (before any socket is opened).
    pub fn with_counters(mut self, counters: Arc<GossipCounters>) -> Self {
        self.counters = counters;
        self
    }

    pub fn counters(&self) -> Arc<GossipCounters> {
        self.counters.clone()
    }
}

impl fmt::Debug for SealedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedTransport")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self.network.bind(listen_addr).await?;
        Ok(Box::new(SealedSocket {
            socket,
            peer_log: DropLog::default(),
            send_log: DropLog::default(),
            crypto: self.crypto.clone(),
            counters: self.counters.clone(),
            clock: self.clock.clone(),
            plaintext: Vec::new(),
            sealed: Vec::new(),
            recv_buf: vec![0u8; RECV_BUF_LEN].into_boxed_slice(),
        }))
    }
}

/// Locks a mutex even if a panicking holder poisoned it: the guarded state (sealer counter,
/// replay windows, the network map) is never left half-updated across a panic point that
/// matters for safety (the counter only advances after a successful seal).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rate-limits warnings: every event is logged at debug, one per [`DROP_WARN_INTERVAL`] at warn.
#[derive(Default)]
struct DropLog {
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl DropLog {
    fn should_warn(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last_warn {
            Some(last) if now.duration_since(last) < DROP_WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_warn = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

struct SealedSocket {
    socket: Box<dyn DatagramSocket>,
    /// Drops of incoming datagrams.
    peer_log: DropLog,
    /// Outgoing messages too large to seal.
    send_log: DropLog,
    crypto: Arc<Crypto>,
    counters: Arc<GossipCounters>,
    clock: UnixClock,
    plaintext: Vec<u8>,
    sealed: Vec<u8>,
    recv_buf: Box<[u8]>,
}

/// The receive errors after which the socket still works (as chitchat's own UDP socket).
fn is_transient_io_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

impl SealedSocket {
    fn record_drop(&mut self, reason: DropReason, from: SocketAddr, err: &dyn fmt::Display) {
        self.counters.count_drop(reason);
        debug!(%from, %reason, error = %err, "dropped gossip datagram");
        if let Some(suppressed) = self.peer_log.should_warn() {
            warn!(
                %from,
                %reason,
                error = %err,
                suppressed,
                "dropped gossip datagram (further drops are logged at debug for {}s; \
                 the gossip drop counters count them all)",
                DROP_WARN_INTERVAL.as_secs()
            );
        }
    }

    /// Opens the datagram in `recv_buf[..len]`; `None` if it was dropped (and counted).
    fn open_datagram(&mut self, len: usize, from: SocketAddr) -> Option<ChitchatMessage> {
        let now = (self.clock)();
        let opened =
            lock(&self.crypto.opener).open(&self.recv_buf[..len], now, &mut self.plaintext);
        if let Err(err) = opened {
            self.record_drop(DropReason::from(&err), from, &err);
            return None;
        }
        let mut cursor: &[u8] = &self.plaintext;
        match ChitchatMessage::deserialize(&mut cursor) {
            Ok(message) => {
                GossipCounters::count(&self.counters.received);
                Some(message)
            }
            Err(err) => {
                let err = err.context("authentic gossip datagram is not a chitchat message");
                self.record_drop(DropReason::Undecodable, from, &format!("{err:#}"));
                None
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    /// Seals and sends. An error (message too large to seal, network error) is returned to
    /// chitchat, which logs it and carries on, as with its own UDP socket.
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.plaintext.clear();
        message.serialize(&mut self.plaintext);
        let now = (self.clock)();
        let sealed = lock(&self.crypto.sealer).seal(&self.plaintext, now, &mut self.sealed);
        if let Err(err) = sealed {
            GossipCounters::count(&self.counters.oversize);
            if let Some(suppressed) = self.send_log.should_warn() {
                warn!(
                    %to,
                    message_len = self.plaintext.len(),
                    error = %err,
                    suppressed,
                    "gossip message too large to seal into one datagram, not sent \
                     (is the published gossip state too big?)"
                );
            }
            return Err(anyhow::Error::new(err))
                .with_context(|| format!("gossip message to {to} not sent"));
        }
        match self.socket.send_to(&self.sealed, to).await {
            Ok(()) => {
                GossipCounters::count(&self.counters.sent);
                Ok(())
            }
            Err(err) => {
                GossipCounters::count(&self.counters.send_errors);
                Err(err).with_context(|| format!("failed to send gossip datagram to {to}"))
            }
        }
    }

    /// Returns the next authentic, fresh chitchat message; everything else is counted and
    /// skipped. Cancel-safe: the only await is the datagram socket's `recv_from`.
    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(received) => received,
                Err(err) if is_transient_io_error(&err) => {
                    debug!(error = %err, "transient gossip receive error");
                    continue;
                }
                Err(err) => return Err(err).context("gossip socket failed to receive"),
            };
            if let Some(message) = self.open_datagram(len, from) {
                return Ok((from, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::future::Future;

    use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId};
    use chitchat::{FailureDetectorConfig, NodeState};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use tokio::time::timeout;

    use super::*;
    use crate::cluster::gossip::seal::{GossipKey, Header, MAX_PLAINTEXT_LEN};

    const DATA_STORE: &str = "ds-7c1e";

    fn keyring(fill: u8) -> KeyRing {
        KeyRing::new(GossipKey::new(1, [fill; 32]))
    }

    fn sealed(network: impl DatagramNetwork, keyring: KeyRing) -> SealedTransport {
        SealedTransport::for_data_store(network, keyring, DATA_STORE)
    }

    /// A free 127.0.0.1 port (bound then released). Used for both networks, so the real-UDP
    /// tests never collide with fixed ports used elsewhere. Never the same port twice in this
    /// process: the kernel may hand a released port out again at once, and a test's addresses
    /// must differ.
    fn free_addr() -> SocketAddr {
        static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..1000 {
            let addr = std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|socket| socket.local_addr())
                .expect("reserve a loopback UDP port");
            if !handed_out.contains(&addr.port()) {
                handed_out.push(addr.port());
                return addr;
            }
        }
        panic!("no loopback UDP port that was not handed out already in 1000 tries");
    }

    /// A SYN whose serialized length is `8 + cluster_id.len()` (empty digest).
    fn syn(cluster_id: &str) -> ChitchatMessage {
        ChitchatMessage::Syn {
            cluster_id: cluster_id.to_string(),
            digest: Default::default(),
        }
    }

    async fn recv_within(
        socket: &mut Box<dyn Socket>,
        wait: Duration,
    ) -> Option<(SocketAddr, ChitchatMessage)> {
        timeout(wait, socket.recv())
            .await
            .ok()
            .map(|received| received.expect("recv never fails on a healthy socket"))
    }

    // --- The conformance suite, after chitchat's `test_transport_suite` -----------------------

    async fn cannot_open_twice(transport: &dyn Transport) {
        let addr = free_addr();
        let _socket = transport.open(addr).await.unwrap();
        assert!(transport.open(addr).await.is_err());
    }

    async fn socket_released_on_drop(transport: &dyn Transport) {
        let addr = free_addr();
        let socket = transport.open(addr).await.unwrap();
        drop(socket);
        let _again = transport.open(addr).await.unwrap();
    }

    async fn recv_waits_for_message(transport: &dyn Transport) {
        let (addr1, addr2) = (free_addr(), free_addr());
        let mut socket1 = transport.open(addr1).await.unwrap();
        let mut socket2 = transport.open(addr2).await.unwrap();
        assert!(recv_within(&mut socket2, Duration::from_millis(200))
            .await
            .is_none());
        let receiver = tokio::spawn(async move { socket2.recv().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        socket1.send(addr2, syn("waited-for")).await.unwrap();
        let (from, message) = timeout(Duration::from_secs(5), receiver)
            .await
            .expect("message arrives")
            .unwrap();
        assert_eq!(from, addr1);
        assert_eq!(message, syn("waited-for"));
    }

    async fn sending_to_unbound_addr_is_ok(transport: &dyn Transport) {
        let mut socket = transport.open(free_addr()).await.unwrap();
        socket.send(free_addr(), syn("nobody")).await.unwrap();
    }

    async fn messages_round_trip(transport: &dyn Transport) {
        let (addr1, addr2) = (free_addr(), free_addr());
        let mut socket1 = transport.open(addr1).await.unwrap();
        let mut socket2 = transport.open(addr2).await.unwrap();
        let wait = Duration::from_secs(5);
        for message in [
            syn("first"),
            syn(""),
            ChitchatMessage::BadCluster,
            syn("last"),
        ] {
            let expected = format!("{message:?}");
            socket1.send(addr2, message).await.unwrap();
            let (from, received) = recv_within(&mut socket2, wait).await.expect("delivered");
            assert_eq!((from, format!("{received:?}")), (addr1, expected));
        }
        // And back, to the address the request came from (as chitchat replies).
        socket2.send(addr1, syn("reply")).await.unwrap();
        let (from, received) = recv_within(&mut socket1, wait).await.expect("reply");
        assert_eq!((from, received), (addr2, syn("reply")));
    }

    async fn transport_conformance_suite(transport: &dyn Transport) {
        cannot_open_twice(transport).await;
        socket_released_on_drop(transport).await;
        recv_waits_for_message(transport).await;
        sending_to_unbound_addr_is_ok(transport).await;
        messages_round_trip(transport).await;
    }

    #[tokio::test]
    async fn conformance_sealed_real_udp() {
        transport_conformance_suite(&sealed(UdpNetwork, keyring(1))).await;
    }

    #[tokio::test]
    async fn conformance_sealed_in_memory() {
        transport_conformance_suite(&sealed(MemoryNetwork::new(), keyring(1))).await;
    }

    /// The largest message chitchat may hand us that still fits once sealed goes through; one
    /// byte more is refused with an error, counted as oversize, and nothing is sent.
    async fn size_limit(transport: &SealedTransport) {
        let (addr1, addr2) = (free_addr(), free_addr());
        let mut socket1 = transport.open(addr1).await.unwrap();
        let mut socket2 = transport.open(addr2).await.unwrap();
        let largest = syn(&"x".repeat(MAX_PLAINTEXT_LEN - 8));
        assert_eq!(largest.serialized_len(), MAX_PLAINTEXT_LEN);
        socket1.send(addr2, largest).await.unwrap();
        let (_, received) = recv_within(&mut socket2, Duration::from_secs(5))
            .await
            .expect("largest sealable message delivered");
        assert_eq!(received.serialized_len(), MAX_PLAINTEXT_LEN);

        let too_large = syn(&"x".repeat(MAX_PLAINTEXT_LEN - 7));
        let err = socket1.send(addr2, too_large).await.unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<SealError>(),
                Some(SealError::Oversize { .. })
            ),
            "{err:#}"
        );
        assert!(recv_within(&mut socket2, Duration::from_millis(200))
            .await
            .is_none());
        let counters = transport.counters();
        assert_eq!(
            (counters.sent(), counters.received(), counters.oversize()),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn size_limit_sealed_real_udp() {
        size_limit(&sealed(UdpNetwork, keyring(1))).await;
    }

    #[tokio::test]
    async fn size_limit_sealed_in_memory() {
        size_limit(&sealed(MemoryNetwork::new(), keyring(1))).await;
    }

    // --- In-memory network behaviour ---------------------------------------------------------

    #[tokio::test]
    async fn memory_network_cuts_links_and_enforces_the_datagram_limit() {
        let network = MemoryNetwork::new();
        let (a, b) = (free_addr(), free_addr());
        let mut socket_a = network.bind(a).await.unwrap();
        let mut socket_b = network.bind(b).await.unwrap();
        let mut buf = vec![0u8; RECV_BUF_LEN];

        network.cut_link(b, a);
        socket_a.send_to(b"lost", b).await.unwrap();
        socket_b.send_to(b"lost too", a).await.unwrap();
        assert!(
            timeout(Duration::from_millis(100), socket_b.recv_from(&mut buf))
                .await
                .is_err()
        );
        network.heal_link(a, b);
        socket_a.send_to(b"through", b).await.unwrap();
        let (len, from) = socket_b.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..len], from), (&b"through"[..], a));

        let too_big = vec![0u8; MAX_DATAGRAM_LEN + 1];
        assert!(socket_a.send_to(&too_big, b).await.is_err());
        assert!(network.inject(a, b, &too_big).is_err());
        socket_a
            .send_to(&too_big[..MAX_DATAGRAM_LEN], b)
            .await
            .unwrap();
        let (len, _) = socket_b.recv_from(&mut buf).await.unwrap();
        assert_eq!(len, MAX_DATAGRAM_LEN);

        assert_eq!(
            network
                .captured()
                .iter()
                .map(|datagram| (datagram.from, datagram.to, datagram.bytes.len()))
                .collect::<Vec<_>>(),
            vec![(a, b, 7), (a, b, MAX_DATAGRAM_LEN)]
        );
    }

    /// Every kind of bad datagram is dropped before chitchat, counted by reason, and `recv`
    /// simply returns the next good message.
    #[tokio::test]
    async fn bad_datagrams_never_reach_chitchat_and_are_counted() {
        let network = MemoryNetwork::new();
        let receiver = sealed(network.clone(), keyring(1));
        let honest = sealed(network.clone(), keyring(1));
        let wrong_key = sealed(network.clone(), keyring(2));
        let other_store = SealedTransport::for_data_store(network.clone(), keyring(1), "ds-other");
        let unknown_key_id = sealed(network.clone(), KeyRing::new(GossipKey::new(9, [1; 32])));
        let slow_clock =
            sealed(network.clone(), keyring(1)).with_clock(|| system_unix_secs() - 600);

        let receiver_addr = free_addr();
        let mut inbox = receiver.open(receiver_addr).await.unwrap();
        let mut senders = Vec::new();
        for transport in [
            &honest,
            &wrong_key,
            &other_store,
            &unknown_key_id,
            &slow_clock,
        ] {
            let addr = free_addr();
            senders.push((addr, transport.open(addr).await.unwrap()));
        }
        let forger = free_addr();
        network.inject(forger, receiver_addr, b"junk").unwrap();
        network
            .inject(
                forger,
                receiver_addr,
                &[b'R', b'S', b'G', b'P', 9, 0, 0, 0, 1],
            )
            .unwrap();
        let mut forged = [0u8; 100];
        forged[..5].copy_from_slice(b"RSGP\x01");
        forged[8] = 1; // key id 1, valid-looking header, garbage tag
        network.inject(forger, receiver_addr, &forged).unwrap();
        for (_, socket) in senders.iter_mut().skip(1) {
            socket.send(receiver_addr, syn(DATA_STORE)).await.unwrap();
        }
        // An authentic datagram that is not a chitchat message.
        let mut key_holder = Sealer::new(keyring(1), DATA_STORE, StdRng::seed_from_u64(1));
        let mut not_chitchat = Vec::new();
        key_holder
            .seal(b"not chitchat", system_unix_secs(), &mut not_chitchat)
            .unwrap();
        network
            .inject(forger, receiver_addr, &not_chitchat)
            .unwrap();

        let (honest_addr, honest_socket) = &mut senders[0];
        honest_socket
            .send(receiver_addr, syn("the real one"))
            .await
            .unwrap();
        let (from, message) = recv_within(&mut inbox, Duration::from_secs(5))
            .await
            .expect("the honest message gets through");
        assert_eq!((from, message), (*honest_addr, syn("the real one")));

        // Replay the honest datagram, and a tampered copy of it.
        let captured = network
            .captured()
            .into_iter()
            .find(|datagram| datagram.from == *honest_addr)
            .expect("captured");
        network
            .inject(forger, receiver_addr, &captured.bytes)
            .unwrap();
        let mut tampered = captured.bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        network.inject(forger, receiver_addr, &tampered).unwrap();
        assert!(recv_within(&mut inbox, Duration::from_millis(300))
            .await
            .is_none());

        let counters = receiver.counters();
        assert_eq!(
            counters.drops(),
            vec![
                ("malformed", 2),
                ("unknown_key", 1),
                ("authentication", 4),
                ("replay", 1),
                ("stale", 1),
                ("oversize", 0),
                ("undecodable", 1),
            ]
        );
        assert_eq!(counters.received(), 1);
        assert_eq!(counters.dropped_total(), 10);
    }

    #[tokio::test]
    async fn reopened_socket_continues_the_counter_and_keeps_replay_state() {
        let network = MemoryNetwork::new();
        let transport = sealed(network.clone(), keyring(1));
        let peer = sealed(network.clone(), keyring(1));
        let (addr, peer_addr) = (free_addr(), free_addr());
        let mut peer_socket = peer.open(peer_addr).await.unwrap();

        let mut socket = transport.open(addr).await.unwrap();
        socket.send(peer_addr, syn("one")).await.unwrap();
        recv_within(&mut peer_socket, Duration::from_secs(5))
            .await
            .unwrap();
        drop(socket);
        let mut socket = transport.open(addr).await.unwrap();
        socket.send(peer_addr, syn("two")).await.unwrap();
        recv_within(&mut peer_socket, Duration::from_secs(5))
            .await
            .unwrap();

        let headers: Vec<Header> = network
            .captured()
            .iter()
            .map(|datagram| Header::parse(&datagram.bytes).unwrap())
            .collect();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].incarnation, headers[1].incarnation);
        assert_eq!((headers[0].counter, headers[1].counter), (0, 1));

        // The peer re-opens too: a replay is still recognized.
        drop(peer_socket);
        let mut peer_socket = peer.open(peer_addr).await.unwrap();
        network
            .inject(addr, peer_addr, &network.captured()[0].bytes)
            .unwrap();
        assert!(recv_within(&mut peer_socket, Duration::from_millis(200))
            .await
            .is_none());
        assert_eq!(peer.counters().dropped(DropReason::Replay), 1);
    }

    // --- chitchat end to end ------------------------------------------------------------------

    fn chitchat_config(node: &str, addr: SocketAddr, seeds: &[SocketAddr]) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id: ChitchatId::new(node, 1, addr),
            cluster_id: DATA_STORE.to_string(),
            gossip_interval: Duration::from_millis(100),
            listen_addr: addr,
            seed_nodes: seeds
                .iter()
                .filter(|seed| **seed != addr)
                .map(ToString::to_string)
                .collect(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3_600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        }
    }

    async fn start_node(
        node: &str,
        addr: SocketAddr,
        seeds: &[SocketAddr],
        transport: &SealedTransport,
    ) -> ChitchatHandle {
        let handle = spawn_chitchat(chitchat_config(node, addr, seeds), Vec::new(), transport)
            .await
            .unwrap();
        let role = format!("role-of-{node}");
        handle
            .with_chitchat(|chitchat| chitchat.self_node_state().set("role", &role))
            .await;
        handle
    }

    /// What one node knows: live node names, and every known node's `role`.
    #[derive(Debug, PartialEq, Eq)]
    struct View {
        live: BTreeSet<String>,
        roles: BTreeMap<String, Option<String>>,
    }

    async fn view(handle: &ChitchatHandle) -> View {
        handle
            .with_chitchat(|chitchat| View {
                live: chitchat
                    .live_nodes()
                    .map(|id| id.node_id.to_string())
                    .collect(),
                roles: chitchat
                    .node_states()
                    .iter()
                    .map(|(id, state): (&ChitchatId, &NodeState)| {
                        (
                            id.node_id.to_string(),
                            state.get("role").map(str::to_string),
                        )
                    })
                    .collect(),
            })
            .await
    }

    async fn views(handles: &[ChitchatHandle]) -> Vec<View> {
        let mut views = Vec::new();
        for handle in handles {
            views.push(view(handle).await);
        }
        views
    }

    fn converged_view(nodes: &[&str]) -> View {
        View {
            live: nodes.iter().map(|node| node.to_string()).collect(),
            roles: nodes
                .iter()
                .map(|node| (node.to_string(), Some(format!("role-of-{node}"))))
                .collect(),
        }
    }

    /// Polls `condition` every 50 ms until it holds or `limit` passes; returns whether it held.
    async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if condition().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gossip_converges_over_sealed_udp_and_shuts_out_a_wrong_key() {
        let names = ["node-a", "node-b", "node-c"];
        let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
        let intruder_addr = addrs[3];
        // Every node, the intruder included, has every address as a seed, so traffic flows
        // both ways between the intruder and the data store.
        let transports: Vec<SealedTransport> =
            (0..3).map(|_| sealed(UdpNetwork, keyring(1))).collect();
        let intruder_transport = sealed(UdpNetwork, keyring(66));
        let mut handles = Vec::new();
        for (index, name) in names.iter().enumerate() {
            handles.push(start_node(name, addrs[index], &addrs, &transports[index]).await);
        }
        let intruder = start_node("intruder", intruder_addr, &addrs, &intruder_transport).await;

        let expected = converged_view(&names);
        let (handles_ref, expected_ref) = (&handles, &expected);
        let converged = eventually(Duration::from_secs(10), || async move {
            views(handles_ref)
                .await
                .iter()
                .all(|seen| seen == expected_ref)
        })
        .await;
        assert!(
            converged,
            "no convergence within 10 s: {:#?}",
            views(&handles).await
        );

        // The intruder's datagrams reach the three and are refused, and the other way round.
        let (transports_ref, intruder_ref) = (&transports, &intruder_transport);
        let refused_both_ways = eventually(Duration::from_secs(10), || async move {
            transports_ref
                .iter()
                .map(|transport| transport.counters().dropped(DropReason::Authentication))
                .sum::<u64>()
                > 0
                && intruder_ref.counters().dropped(DropReason::Authentication) > 0
        })
        .await;
        assert!(refused_both_ways, "the intruder exchanged no datagrams");
        // A few more rounds with the intruder knocking.
        tokio::time::sleep(Duration::from_millis(500)).await;

        for handle in &handles {
            assert_eq!(view(handle).await, expected, "{:?}", handle.chitchat_id());
        }
        assert_eq!(view(&intruder).await, converged_view(&["intruder"]));
        for transport in &transports {
            let counters = transport.counters();
            assert!(counters.received() > 0);
            // Honest traffic on loopback trips nothing but the intruder's authentication.
            for reason in DropReason::ALL {
                if reason != DropReason::Authentication {
                    assert_eq!(counters.dropped(reason), 0, "{reason}");
                }
            }
        }
        assert_eq!(intruder_transport.counters().received(), 0);

        for handle in handles.into_iter().chain([intruder]) {
            handle.shutdown().await.unwrap();
        }
    }

    #[tokio::test]
    async fn replayed_gossip_is_dropped_and_counted() {
        let network = MemoryNetwork::new();
        let names = ["node-a", "node-b"];
        let addrs = [free_addr(), free_addr()];
        let transports: Vec<SealedTransport> = (0..2)
            .map(|_| sealed(network.clone(), keyring(1)))
            .collect();
        let mut handles = Vec::new();
        for (index, name) in names.iter().enumerate() {
            handles.push(start_node(name, addrs[index], &addrs, &transports[index]).await);
        }
        let expected = converged_view(&names);
        let (handles_ref, expected_ref) = (&handles, &expected);
        let converged = eventually(Duration::from_secs(10), || async move {
            views(handles_ref)
                .await
                .iter()
                .all(|seen| seen == expected_ref)
        })
        .await;
        assert!(converged, "no convergence: {:?}", view(&handles[0]).await);

        // Replay everything node-a has received so far, from the original source address.
        let to_a: Vec<CapturedDatagram> = network
            .captured()
            .into_iter()
            .filter(|datagram| datagram.to == addrs[0])
            .collect();
        assert!(!to_a.is_empty());
        for datagram in &to_a {
            assert!(network
                .inject(datagram.from, datagram.to, &datagram.bytes)
                .unwrap());
        }
        let counters = transports[0].counters();
        let replays = to_a.len() as u64;
        let counters_ref = &counters;
        let all_counted = eventually(Duration::from_secs(5), || async move {
            counters_ref.dropped(DropReason::Replay) >= replays
        })
        .await;
        assert!(all_counted, "{:?}", counters.drops());
        assert_eq!(counters.dropped(DropReason::Replay), replays);
        assert_eq!(counters.dropped_total(), replays);
        // Gossip carries on.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(view(&handles[0]).await, expected);

        for handle in handles {
            handle.shutdown().await.unwrap();
        }
    }
}
