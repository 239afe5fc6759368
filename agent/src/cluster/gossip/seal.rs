//! Sealing of gossip datagrams: authenticated encryption and replay protection, with no I/O.
//!
//! Every chitchat message leaves the node as one sealed datagram:
//!
//! | offset | size | field | meaning |
//! |---:|---:|---|---|
//! | 0  | 4  | magic | `RSGP` (`52 53 47 50`): a redis-steward gossip datagram |
//! | 4  | 1  | version | format version, `1` |
//! | 5  | 4  | key id | u32, big-endian: which data-store key sealed it |
//! | 9  | 8  | incarnation | u64, big-endian: random, chosen when the sender starts |
//! | 17 | 8  | counter | u64, big-endian: per incarnation, strictly increasing, < 2³² |
//! | 25 | 8  | timestamp | u64, big-endian: sender's wall clock, Unix seconds |
//! | 33 | n  | ciphertext | AES-256-GCM of the serialized `ChitchatMessage` |
//! | 33+n | 16 | tag | GCM tag over the ciphertext and the associated data |
//!
//! The associated data is the 33 header bytes followed by the data store id (the chitchat
//! cluster id), which is authenticated but never sent: a datagram from another data store, or
//! one whose header was altered, fails authentication exactly like one sealed under another key.
//! The nonce is `incarnation (8 bytes) ‖ counter (low 4 bytes)`, see [`Sealer`] for why it is
//! never reused.
//!
//! Replay protection, per sender incarnation: a 1024-counter sliding window (the
//! WireGuard/IPsec anti-replay bitmap) accepts each counter once and anything older than the
//! window never. The window lives in memory, so after the *receiver* restarts it would accept a
//! captured datagram again; the timestamp bounds that: a datagram whose timestamp is further than
//! [`ReplayConfig::timestamp_window_secs`] (60 s by default) from the receiver's clock is
//! rejected as stale. This assumes node clocks are roughly synchronized (NTP): nodes whose clocks
//! differ by more than the window cannot gossip at all, which shows as `stale` drops.
//!
//! Time is an input (`now_unix_secs`), randomness comes from an injected RNG: everything here is
//! deterministic and testable without a network or a clock.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// First bytes of every sealed datagram.
pub const MAGIC: [u8; 4] = *b"RSGP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the cleartext (but authenticated) header.
pub const HEADER_LEN: usize = 4 + 1 + 4 + 8 + 8 + 8;
/// Length of the AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to the serialized chitchat message.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP), which chitchat also sizes for.
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// The largest serialized chitchat message that still fits one sealed datagram.
pub const MAX_PLAINTEXT_LEN: usize = MAX_DATAGRAM_LEN - SEAL_OVERHEAD;
/// Counters stay below this, so that their low 32 bits (the nonce part) are unique per
/// incarnation; a sender that reaches it starts a new incarnation.
pub const COUNTER_LIMIT: u64 = 1 << 32;
/// Width of the anti-replay window, in counters.
pub const REPLAY_WINDOW: u64 = 1024;
/// Default for [`ReplayConfig::timestamp_window_secs`].
pub const DEFAULT_TIMESTAMP_WINDOW_SECS: u64 = 60;
/// Default for [`ReplayConfig::max_tracked_incarnations`].
pub const DEFAULT_MAX_TRACKED_INCARNATIONS: usize = 256;

const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;
const NONCE_LEN: usize = 12;

/// Identifies a key in the key ring; sent in every datagram so keys can rotate.
pub type KeyId = u32;

/// Why a datagram could not even be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error(
        "{len} bytes is shorter than a sealed datagram's header and tag ({SEAL_OVERHEAD} bytes)"
    )]
    TooShort { len: usize },
    #[error("bad magic {found:02x?} (not a redis-steward gossip datagram)")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported format version {found} (this build speaks version {FORMAT_VERSION})")]
    BadVersion { found: u8 },
    #[error("counter {counter} is not below the counter limit {COUNTER_LIMIT}")]
    CounterOutOfRange { counter: u64 },
}

/// How a replayed datagram was recognized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    /// The counter was already accepted.
    Duplicate,
    /// The counter is older than the window, so it cannot be told apart from a replay.
    BehindWindow,
}

impl fmt::Display for ReplayKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayKind::Duplicate => "counter already seen",
            ReplayKind::BehindWindow => "counter behind the replay window",
        })
    }
}

/// Why sealing or opening a datagram failed. Each variant is counted separately by the
/// transport, so the variants are the reasons an operator needs to tell apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Too short, bad magic, bad version: not (this version of) our format.
    #[error("malformed gossip datagram: {0}")]
    Malformed(#[from] Malformed),
    /// Sealed under a key id this node does not hold (rotation not rolled out everywhere?).
    #[error("gossip datagram sealed with unknown key id {0}")]
    UnknownKey(KeyId),
    /// The tag does not verify: wrong key bytes, another data store, or a tampered datagram.
    #[error(
        "gossip datagram failed authentication under key id {key_id} \
         (wrong key, another data store, or tampered)"
    )]
    Authentication { key_id: KeyId },
    /// Authentic, but already accepted (or too old to tell).
    #[error("replayed gossip datagram: incarnation {incarnation:016x}, counter {counter}: {kind}")]
    Replay {
        incarnation: u64,
        counter: u64,
        kind: ReplayKind,
    },
    /// Authentic, but its timestamp is outside the window around our clock (a replay after
    /// we restarted, or clocks too far apart).
    #[error(
        "stale gossip datagram: sender clock {timestamp} s, ours {now} s, \
         allowed difference {window_secs} s (are the node clocks synchronized?)"
    )]
    Stale {
        timestamp: u64,
        now: u64,
        window_secs: u64,
    },
    /// The sealed datagram would not fit (or does not fit) in one UDP datagram.
    #[error("sealed gossip datagram of {len} bytes exceeds the {max}-byte UDP payload limit")]
    Oversize { len: usize, max: usize },
}

/// A configuration error of the key ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("gossip key id {0} appears twice in the key ring")]
    DuplicateKeyId(KeyId),
    #[error("gossip key {id}: expected 64 hex digits (32 bytes): {reason}")]
    BadHex { id: KeyId, reason: String },
}

/// One data-store gossip key: an id and 32 secret bytes. `Debug` never prints the bytes.
#[derive(Clone)]
pub struct GossipKey {
    id: KeyId,
    bytes: [u8; 32],
}

impl GossipKey {
    pub fn new(id: KeyId, bytes: [u8; 32]) -> Self {
        GossipKey { id, bytes }
    }

    /// Parses 64 hex digits (surrounding whitespace ignored, as in a key file).
    pub fn from_hex(id: KeyId, hex_digits: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits.trim(), &mut bytes).map_err(|err| KeyError::BadHex {
            id,
            reason: err.to_string(),
        })?;
        Ok(GossipKey { id, bytes })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipKey")
            .field("id", &self.id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// The keys of one data store: the current key seals, every key opens.
///
/// Rotation without a flag day: (1) add the new key to every node as an accepted key,
/// (2) make it current everywhere (nodes still open datagrams sealed with the old one),
/// (3) drop the old key.
#[derive(Clone)]
pub struct KeyRing {
    current: KeyId,
    ciphers: Vec<(KeyId, Aes256Gcm)>,
}

impl KeyRing {
    pub fn new(current: GossipKey) -> Self {
        KeyRing {
            current: current.id,
            ciphers: vec![(current.id, cipher_for(&current))],
        }
    }

    /// Adds a key accepted for opening only (an older or an upcoming key).
    pub fn with_accepted(mut self, key: GossipKey) -> Result<Self, KeyError> {
        if self.cipher(key.id).is_some() {
            return Err(KeyError::DuplicateKeyId(key.id));
        }
        self.ciphers.push((key.id, cipher_for(&key)));
        Ok(self)
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> KeyId {
        self.current
    }

    /// Every key id that opens, current first.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.ciphers.iter().map(|(id, _)| *id)
    }

    fn cipher(&self, id: KeyId) -> Option<&Aes256Gcm> {
        self.ciphers
            .iter()
            .find(|(key_id, _)| *key_id == id)
            .map(|(_, cipher)| cipher)
    }

    fn current_cipher(&self) -> &Aes256Gcm {
        // `current` is the first entry, pushed by `new`, and entries are never removed.
        &self.ciphers[0].1
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current)
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

fn cipher_for(key: &GossipKey) -> Aes256Gcm {
    Aes256Gcm::new(&key.bytes.into())
}

/// The cleartext header of a sealed datagram. Authenticated, not encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub key_id: KeyId,
    pub incarnation: u64,
    pub counter: u64,
    pub timestamp: u64,
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4] = FORMAT_VERSION;
        bytes[5..9].copy_from_slice(&self.key_id.to_be_bytes());
        bytes[9..17].copy_from_slice(&self.incarnation.to_be_bytes());
        bytes[17..25].copy_from_slice(&self.counter.to_be_bytes());
        bytes[25..33].copy_from_slice(&self.timestamp.to_be_bytes());
        bytes
    }

    /// Parses the header of a whole datagram, checking it is long enough to hold a tag too.
    pub fn parse(datagram: &[u8]) -> Result<Header, Malformed> {
        if datagram.len() < SEAL_OVERHEAD {
            return Err(Malformed::TooShort {
                len: datagram.len(),
            });
        }
        let found: [u8; 4] = array(&datagram[0..4]);
        if found != MAGIC {
            return Err(Malformed::BadMagic { found });
        }
        if datagram[4] != FORMAT_VERSION {
            return Err(Malformed::BadVersion { found: datagram[4] });
        }
        let header = Header {
            key_id: u32::from_be_bytes(array(&datagram[5..9])),
            incarnation: u64::from_be_bytes(array(&datagram[9..17])),
            counter: u64::from_be_bytes(array(&datagram[17..25])),
            timestamp: u64::from_be_bytes(array(&datagram[25..33])),
        };
        // A sender never uses such a counter (see `Sealer`); rejecting it here keeps the
        // nonce derivation injective on everything we decrypt.
        if header.counter >= COUNTER_LIMIT {
            return Err(Malformed::CounterOutOfRange {
                counter: header.counter,
            });
        }
        Ok(header)
    }

    /// The 96-bit GCM nonce: incarnation ‖ low 32 bits of the counter.
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[0..8].copy_from_slice(&self.incarnation.to_be_bytes());
        // Truncation is the point: counters are < 2^32 (`COUNTER_LIMIT`), so nothing is lost.
        nonce[8..12].copy_from_slice(&(self.counter as u32).to_be_bytes());
        nonce
    }
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

/// Associated data = header ‖ data store id. The header has a fixed length, so the
/// concatenation is unambiguous. Kept as one buffer whose first bytes are overwritten per
/// datagram, to avoid an allocation per packet.
#[derive(Debug, Clone)]
struct AssociatedData(Vec<u8>);

impl AssociatedData {
    fn new(data_store_id: &str) -> Self {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes.extend_from_slice(data_store_id.as_bytes());
        AssociatedData(bytes)
    }

    fn with_header(&mut self, header: &[u8; HEADER_LEN]) -> &[u8] {
        self.0[..HEADER_LEN].copy_from_slice(header);
        &self.0
    }
}

/// Seals outgoing datagrams with the current key.
///
/// Nonce uniqueness (AES-GCM breaks if a (key, nonce) pair is ever reused): the nonce is
/// `incarnation ‖ counter mod 2³²`. Within one incarnation the counter strictly increases and
/// the sealer switches to a fresh incarnation before it reaches 2³², so nonces never repeat
/// inside an incarnation. Across incarnations — every process start of every node of the data
/// store, all sharing the key — incarnations are independent uniform 64-bit values, so a repeat
/// needs two equal incarnations: with n incarnations ever drawn under one key the probability
/// is about n²/2⁶⁵, e.g. 3·10⁻⁸ for a million restarts. Keys are rotated long before that
/// matters. One `Sealer` must therefore be used for all datagrams of a process (never two
/// sealers with the same incarnation, never a counter reset): the transport shares it across
/// sockets.
pub struct Sealer {
    keyring: KeyRing,
    associated_data: AssociatedData,
    incarnation: u64,
    next_counter: u64,
    rng: StdRng,
}

impl Sealer {
    /// A sealer whose incarnations come from `rng` (seed it from the OS outside of tests).
    pub fn new(keyring: KeyRing, data_store_id: &str, mut rng: StdRng) -> Self {
        let incarnation = rng.random();
        Sealer {
            keyring,
            associated_data: AssociatedData::new(data_store_id),
            incarnation,
            next_counter: 0,
            rng,
        }
    }

    /// A sealer with a random incarnation from the operating system's generator.
    ///
    /// # Panics
    /// If the OS random generator fails (`getrandom`), i.e. on a broken system at start-up;
    /// sealing without a fresh random incarnation would risk nonce reuse.
    pub fn from_os_rng(keyring: KeyRing, data_store_id: &str) -> Self {
        Sealer::new(keyring, data_store_id, StdRng::from_os_rng())
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Seals `plaintext` (a serialized chitchat message) into `out` (cleared first).
    /// Fails only with [`SealError::Oversize`]; no counter is used up then.
    pub fn seal(
        &mut self,
        plaintext: &[u8],
        now_unix_secs: u64,
        out: &mut Vec<u8>,
    ) -> Result<Header, SealError> {
        let len = plaintext.len() + SEAL_OVERHEAD;
        if len > MAX_DATAGRAM_LEN {
            return Err(SealError::Oversize {
                len,
                max: MAX_DATAGRAM_LEN,
            });
        }
        if self.next_counter >= COUNTER_LIMIT {
            self.start_new_incarnation();
        }
        let header = Header {
            key_id: self.keyring.current_key_id(),
            incarnation: self.incarnation,
            counter: self.next_counter,
            timestamp: now_unix_secs,
        };
        let header_bytes = header.to_bytes();
        out.clear();
        out.reserve(len);
        out.extend_from_slice(&header_bytes);
        out.extend_from_slice(plaintext);
        let aad = self.associated_data.with_header(&header_bytes);
        let tag = self
            .keyring
            .current_cipher()
            .encrypt_inout_detached(&header.nonce().into(), aad, (&mut out[HEADER_LEN..]).into())
            // AES-GCM only refuses inputs of gigabytes, which the size check above rules out;
            // still, report rather than panic.
            .map_err(|_| SealError::Oversize {
                len,
                max: MAX_DATAGRAM_LEN,
            })?;
        out.extend_from_slice(&tag);
        self.next_counter += 1;
        Ok(header)
    }

    fn start_new_incarnation(&mut self) {
        let previous = self.incarnation;
        while self.incarnation == previous {
            self.incarnation = self.rng.random();
        }
        self.next_counter = 0;
    }

    #[cfg(test)]
    fn set_next_counter_for_test(&mut self, counter: u64) {
        self.next_counter = counter;
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keyring", &self.keyring)
            .field("incarnation", &format_args!("{:016x}", self.incarnation))
            .field("next_counter", &self.next_counter)
            .finish()
    }
}

/// Limits of the receiver's replay protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// A datagram is accepted only if |our clock − its timestamp| ≤ this many seconds. Bounds
    /// replays after the receiver restarts (its windows are in memory) and after an incarnation
    /// was evicted; must exceed the clock skew between nodes.
    pub timestamp_window_secs: u64,
    /// At most this many sender incarnations are tracked. Only key holders create incarnations
    /// (state changes only after authentication), so this is reached only by more than this many
    /// restarts inside one timestamp window; the least recently active one is evicted then.
    pub max_tracked_incarnations: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            timestamp_window_secs: DEFAULT_TIMESTAMP_WINDOW_SECS,
            max_tracked_incarnations: DEFAULT_MAX_TRACKED_INCARNATIONS,
        }
    }
}

/// Anti-replay state of one sender incarnation: a bitmap of the last [`REPLAY_WINDOW`]
/// counters, indexed by `counter mod REPLAY_WINDOW`, covering `(top − REPLAY_WINDOW, top]`.
#[derive(Debug, Clone)]
struct ReplayWindow {
    top: u64,
    bitmap: [u64; WINDOW_WORDS],
    /// Highest timestamp accepted from this incarnation; once it is older than the timestamp
    /// window, every datagram of the incarnation is stale anyway and the state can go.
    max_timestamp: u64,
}

impl ReplayWindow {
    fn new(counter: u64, timestamp: u64) -> Self {
        let mut window = ReplayWindow {
            top: counter,
            bitmap: [0; WINDOW_WORDS],
            max_timestamp: timestamp,
        };
        window.set(counter);
        window
    }

    fn slot(counter: u64) -> (usize, u64) {
        let bit = counter % REPLAY_WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn is_set(&self, counter: u64) -> bool {
        let (word, mask) = Self::slot(counter);
        self.bitmap[word] & mask != 0
    }

    fn set(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        self.bitmap[word] |= mask;
    }

    fn clear(&mut self, counter: u64) {
        let (word, mask) = Self::slot(counter);
        self.bitmap[word] &= !mask;
    }

    fn check(&self, counter: u64) -> Result<(), ReplayKind> {
        if counter > self.top {
            Ok(())
        } else if self.top - counter >= REPLAY_WINDOW {
            Err(ReplayKind::BehindWindow)
        } else if self.is_set(counter) {
            Err(ReplayKind::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `counter` (which passed `check`), sliding the window forward if needed.
    fn accept(&mut self, counter: u64, timestamp: u64) {
        if counter > self.top {
            let advance = counter - self.top;
            if advance >= REPLAY_WINDOW {
                self.bitmap = [0; WINDOW_WORDS];
            } else {
                // Slots of the counters we slide over still hold bits of counters that are now
                // behind the window; clear them so they read as "not seen yet".
                for skipped in self.top + 1..=counter {
                    self.clear(skipped);
                }
            }
            self.top = counter;
        }
        self.set(counter);
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }
}

/// Opens incoming datagrams: parse, authenticate, then check freshness and replay.
pub struct Opener {
    keyring: KeyRing,
    associated_data: AssociatedData,
    config: ReplayConfig,
    windows: HashMap<u64, ReplayWindow>,
}

impl Opener {
    pub fn new(keyring: KeyRing, data_store_id: &str, config: ReplayConfig) -> Self {
        Opener {
            keyring,
            associated_data: AssociatedData::new(data_store_id),
            config,
            windows: HashMap::new(),
        }
    }

    /// Number of sender incarnations whose replay windows are held in memory.
    pub fn tracked_incarnations(&self) -> usize {
        self.windows.len()
    }

    /// Opens `datagram` into `plaintext` (cleared first) and returns its header.
    ///
    /// Authentication comes before the freshness and replay checks on purpose: the header is
    /// not trustworthy until the tag verifies, so a forged datagram is always reported as
    /// `Authentication` (never as `Stale`/`Replay`), `Stale`/`Replay` always mean an authentic
    /// sender (clock skew, duplicated or replayed traffic), and only authentic datagrams can
    /// change the replay state. On error `plaintext` holds nothing meaningful.
    pub fn open(
        &mut self,
        datagram: &[u8],
        now_unix_secs: u64,
        plaintext: &mut Vec<u8>,
    ) -> Result<Header, SealError> {
        plaintext.clear();
        if datagram.len() > MAX_DATAGRAM_LEN {
            return Err(SealError::Oversize {
                len: datagram.len(),
                max: MAX_DATAGRAM_LEN,
            });
        }
        let header = Header::parse(datagram)?;
        let cipher = self
            .keyring
            .cipher(header.key_id)
            .ok_or(SealError::UnknownKey(header.key_id))?;
        let header_bytes: [u8; HEADER_LEN] = array(&datagram[..HEADER_LEN]);
        let (ciphertext, tag) = datagram[HEADER_LEN..].split_at(datagram.len() - SEAL_OVERHEAD);
        plaintext.resize(ciphertext.len(), 0);
        let authentic = InOutBuf::new(ciphertext, plaintext.as_mut_slice())
            .ok()
            .and_then(|buffer| {
                let aad = self.associated_data.with_header(&header_bytes);
                cipher
                    .decrypt_inout_detached(
                        &header.nonce().into(),
                        aad,
                        buffer,
                        &array::<TAG_LEN>(tag).into(),
                    )
                    .ok()
            })
            .is_some();
        if !authentic {
            plaintext.clear();
            return Err(SealError::Authentication {
                key_id: header.key_id,
            });
        }

        let window_secs = self.config.timestamp_window_secs;
        if now_unix_secs.abs_diff(header.timestamp) > window_secs {
            plaintext.clear();
            return Err(SealError::Stale {
                timestamp: header.timestamp,
                now: now_unix_secs,
                window_secs,
            });
        }

        if let Some(window) = self.windows.get_mut(&header.incarnation) {
            if let Err(kind) = window.check(header.counter) {
                plaintext.clear();
                return Err(SealError::Replay {
                    incarnation: header.incarnation,
                    counter: header.counter,
                    kind,
                });
            }
            window.accept(header.counter, header.timestamp);
        } else {
            self.make_room(now_unix_secs);
            self.windows.insert(
                header.incarnation,
                ReplayWindow::new(header.counter, header.timestamp),
            );
        }
        Ok(header)
    }

    /// Keeps the number of tracked incarnations below the cap before one is added.
    fn make_room(&mut self, now_unix_secs: u64) {
        let cap = self.config.max_tracked_incarnations.max(1);
        if self.windows.len() < cap {
            return;
        }
        // Safe to forget: every datagram these incarnations ever sent has a timestamp at most
        // `max_timestamp`, which is already outside the window, so it would be stale.
        let window_secs = self.config.timestamp_window_secs;
        self.windows
            .retain(|_, window| window.max_timestamp.saturating_add(window_secs) >= now_unix_secs);
        // Still full: evict the least recently active, accepting that its datagrams younger
        // than the timestamp window could be replayed once (see `ReplayConfig`).
        while self.windows.len() >= cap {
            let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, window)| window.max_timestamp)
                .map(|(incarnation, _)| *incarnation)
            else {
                break;
            };
            self.windows.remove(&oldest);
        }
    }
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener")
            .field("keyring", &self.keyring)
            .field("config", &self.config)
            .field("tracked_incarnations", &self.windows.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_760_000_000;
    const DATA_STORE: &str = "ds-0f3a";

    fn key(id: KeyId, fill: u8) -> GossipKey {
        GossipKey::new(id, [fill; 32])
    }

    fn ring(id: KeyId, fill: u8) -> KeyRing {
        KeyRing::new(key(id, fill))
    }

    fn sealer(keyring: KeyRing, seed: u64) -> Sealer {
        Sealer::new(keyring, DATA_STORE, StdRng::seed_from_u64(seed))
    }

    fn opener(keyring: KeyRing) -> Opener {
        Opener::new(keyring, DATA_STORE, ReplayConfig::default())
    }

    fn seal(sealer: &mut Sealer, plaintext: &[u8], now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(plaintext, now, &mut out).unwrap();
        out
    }

    fn open(opener: &mut Opener, datagram: &[u8], now: u64) -> Result<Vec<u8>, SealError> {
        let mut plaintext = Vec::new();
        opener.open(datagram, now, &mut plaintext)?;
        Ok(plaintext)
    }

    #[test]
    fn round_trip_and_layout() {
        let mut sealer = sealer(ring(7, 1), 1);
        let mut opener = opener(ring(7, 1));
        let datagram = seal(&mut sealer, b"hello gossip", NOW);
        assert_eq!(datagram.len(), b"hello gossip".len() + SEAL_OVERHEAD);
        assert_eq!(SEAL_OVERHEAD, 49);
        assert_eq!(&datagram[..4], b"RSGP");
        assert_eq!(datagram[4], FORMAT_VERSION);
        let header = Header::parse(&datagram).unwrap();
        assert_eq!(
            header,
            Header {
                key_id: 7,
                incarnation: sealer.incarnation(),
                counter: 0,
                timestamp: NOW,
            }
        );
        // Encrypted: the plaintext does not appear in the datagram.
        assert!(!datagram.windows(5).any(|w| w == b"hello"));
        assert_eq!(open(&mut opener, &datagram, NOW).unwrap(), b"hello gossip");

        let second = seal(&mut sealer, b"", NOW);
        assert_eq!(Header::parse(&second).unwrap().counter, 1);
        assert_eq!(open(&mut opener, &second, NOW).unwrap(), b"");
    }

    #[test]
    fn flipping_any_bit_is_rejected() {
        let mut sealer = sealer(ring(7, 1), 2);
        let datagram = seal(&mut sealer, b"some chitchat message", NOW);
        for index in 0..datagram.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = datagram.clone();
                tampered[index] ^= bit;
                let mut opener = opener(ring(7, 1));
                let err = open(&mut opener, &tampered, NOW).unwrap_err();
                match index {
                    0..=4 => assert!(
                        matches!(err, SealError::Malformed(_)),
                        "byte {index}: {err}"
                    ),
                    // Key id: another id is unknown.
                    5..=8 => assert!(
                        matches!(err, SealError::UnknownKey(_)),
                        "byte {index}: {err}"
                    ),
                    // High bytes of the counter push it over the limit.
                    17..=20 => assert!(
                        matches!(
                            err,
                            SealError::Malformed(Malformed::CounterOutOfRange { .. })
                        ),
                        "byte {index}: {err}"
                    ),
                    _ => assert_eq!(err, SealError::Authentication { key_id: 7 }, "byte {index}"),
                }
                assert_eq!(opener.tracked_incarnations(), 0, "byte {index}");
            }
        }
    }

    #[test]
    fn truncated_or_extended_datagrams_are_rejected() {
        let mut sealer = sealer(ring(7, 1), 3);
        let datagram = seal(&mut sealer, b"payload", NOW);
        let mut opener = opener(ring(7, 1));
        for len in 0..SEAL_OVERHEAD {
            assert_eq!(
                open(&mut opener, &datagram[..len], NOW).unwrap_err(),
                SealError::Malformed(Malformed::TooShort { len })
            );
        }
        for len in SEAL_OVERHEAD..datagram.len() {
            assert_eq!(
                open(&mut opener, &datagram[..len], NOW).unwrap_err(),
                SealError::Authentication { key_id: 7 }
            );
        }
        let mut longer = datagram.clone();
        longer.push(0);
        assert_eq!(
            open(&mut opener, &longer, NOW).unwrap_err(),
            SealError::Authentication { key_id: 7 }
        );
        // The untouched datagram still opens: failures left no replay state behind.
        assert_eq!(open(&mut opener, &datagram, NOW).unwrap(), b"payload");
    }

    #[test]
    fn bad_magic_and_version_are_malformed() {
        let mut sealer = sealer(ring(7, 1), 4);
        let mut datagram = seal(&mut sealer, b"payload", NOW);
        let mut opener = opener(ring(7, 1));
        datagram[4] = 2;
        assert_eq!(
            open(&mut opener, &datagram, NOW).unwrap_err(),
            SealError::Malformed(Malformed::BadVersion { found: 2 })
        );
        datagram[0] = b'X';
        assert!(matches!(
            open(&mut opener, &datagram, NOW).unwrap_err(),
            SealError::Malformed(Malformed::BadMagic { .. })
        ));
        // A plain (unsealed) chitchat message: magic 45139 little-endian.
        let plain_chitchat = [0x53, 0xb0, 0, 3];
        assert!(matches!(
            open(&mut opener, &plain_chitchat, NOW).unwrap_err(),
            SealError::Malformed(Malformed::TooShort { len: 4 })
        ));
    }

    #[test]
    fn wrong_key_other_data_store_and_unknown_key_id() {
        let mut sealer = sealer(ring(7, 1), 5);
        let datagram = seal(&mut sealer, b"payload", NOW);

        let mut wrong_bytes = opener(ring(7, 2));
        assert_eq!(
            open(&mut wrong_bytes, &datagram, NOW).unwrap_err(),
            SealError::Authentication { key_id: 7 }
        );

        let mut other_store = Opener::new(ring(7, 1), "ds-other", ReplayConfig::default());
        assert_eq!(
            open(&mut other_store, &datagram, NOW).unwrap_err(),
            SealError::Authentication { key_id: 7 }
        );
        // The data store id is bound exactly, not as a prefix.
        let mut prefix_store = Opener::new(ring(7, 1), "ds-0f3", ReplayConfig::default());
        assert_eq!(
            open(&mut prefix_store, &datagram, NOW).unwrap_err(),
            SealError::Authentication { key_id: 7 }
        );

        let mut unknown = opener(ring(8, 1));
        assert_eq!(
            open(&mut unknown, &datagram, NOW).unwrap_err(),
            SealError::UnknownKey(7)
        );
    }

    #[test]
    fn replay_of_the_same_datagram_is_rejected() {
        let mut sealer = sealer(ring(7, 1), 6);
        let mut opener = opener(ring(7, 1));
        let datagram = seal(&mut sealer, b"payload", NOW);
        open(&mut opener, &datagram, NOW).unwrap();
        let incarnation = sealer.incarnation();
        assert_eq!(
            open(&mut opener, &datagram, NOW + 1).unwrap_err(),
            SealError::Replay {
                incarnation,
                counter: 0,
                kind: ReplayKind::Duplicate
            }
        );
        // Later datagrams still flow.
        let next = seal(&mut sealer, b"next", NOW + 1);
        assert_eq!(open(&mut opener, &next, NOW + 1).unwrap(), b"next");
    }

    #[test]
    fn out_of_order_within_the_window_is_accepted_once() {
        let mut sealer = sealer(ring(7, 1), 7);
        let mut opener = opener(ring(7, 1));
        let datagrams: Vec<_> = (0..10)
            .map(|i| seal(&mut sealer, &[i as u8], NOW))
            .collect();
        // Arrival order 9, 3, 0, 5, ..., then everything again.
        for index in [9, 3, 0, 5, 1, 2, 4, 8, 6, 7] {
            assert_eq!(
                open(&mut opener, &datagrams[index], NOW).unwrap(),
                [index as u8]
            );
        }
        for datagram in &datagrams {
            assert!(matches!(
                open(&mut opener, datagram, NOW).unwrap_err(),
                SealError::Replay {
                    kind: ReplayKind::Duplicate,
                    ..
                }
            ));
        }
    }

    #[test]
    fn counter_far_behind_the_window_is_rejected() {
        let mut sealer = sealer(ring(7, 1), 8);
        let mut opener = opener(ring(7, 1));
        let early = seal(&mut sealer, b"early", NOW); // counter 0, never delivered
        let edge = seal(&mut sealer, b"edge", NOW); // counter 1, never delivered
        sealer.set_next_counter_for_test(REPLAY_WINDOW + 1);
        let late = seal(&mut sealer, b"late", NOW); // counter 1025
        open(&mut opener, &late, NOW).unwrap();
        // 1025 - 1 = 1024: just outside the window; 1025 - 2 would be inside.
        for datagram in [&early, &edge] {
            assert!(matches!(
                open(&mut opener, datagram, NOW).unwrap_err(),
                SealError::Replay {
                    kind: ReplayKind::BehindWindow,
                    ..
                }
            ));
        }
        sealer.set_next_counter_for_test(2);
        let inside = seal(&mut sealer, b"inside", NOW); // counter 2: 1023 behind
        assert_eq!(open(&mut opener, &inside, NOW).unwrap(), b"inside");
    }

    #[test]
    fn window_slides_without_forgetting_recent_counters() {
        let mut sealer = sealer(ring(7, 1), 9);
        let mut opener = opener(ring(7, 1));
        let mut accepted = Vec::new();
        // Every third datagram is lost, for three window widths.
        for i in 0..3 * REPLAY_WINDOW {
            let datagram = seal(&mut sealer, b"x", NOW);
            if i % 3 != 0 {
                open(&mut opener, &datagram, NOW).unwrap();
                accepted.push(datagram);
            }
        }
        let top = 3 * REPLAY_WINDOW - 1;
        for datagram in &accepted {
            let counter = Header::parse(datagram).unwrap().counter;
            let expected = if top - counter >= REPLAY_WINDOW {
                ReplayKind::BehindWindow
            } else {
                ReplayKind::Duplicate
            };
            match open(&mut opener, datagram, NOW).unwrap_err() {
                SealError::Replay { kind, .. } => assert_eq!(kind, expected, "counter {counter}"),
                other => panic!("counter {counter}: {other}"),
            }
        }
        // A big jump forward clears the whole bitmap but keeps rejecting old counters.
        sealer.set_next_counter_for_test(top + 5 * REPLAY_WINDOW);
        open(&mut opener, &seal(&mut sealer, b"x", NOW), NOW).unwrap();
        assert!(open(&mut opener, &accepted[accepted.len() - 1], NOW).is_err());
    }

    #[test]
    fn old_and_future_timestamps_are_stale() {
        let mut sealer = sealer(ring(7, 1), 10);
        let mut opener = opener(ring(7, 1));
        let window = DEFAULT_TIMESTAMP_WINDOW_SECS;
        let old = seal(&mut sealer, b"old", NOW - window - 1);
        assert_eq!(
            open(&mut opener, &old, NOW).unwrap_err(),
            SealError::Stale {
                timestamp: NOW - window - 1,
                now: NOW,
                window_secs: window
            }
        );
        let future = seal(&mut sealer, b"future", NOW + window + 1);
        assert!(matches!(
            open(&mut opener, &future, NOW).unwrap_err(),
            SealError::Stale { .. }
        ));
        // Stale datagrams leave no replay state.
        assert_eq!(opener.tracked_incarnations(), 0);
        let edge_old = seal(&mut sealer, b"edge", NOW - window);
        let edge_future = seal(&mut sealer, b"edge", NOW + window);
        open(&mut opener, &edge_old, NOW).unwrap();
        open(&mut opener, &edge_future, NOW).unwrap();
    }

    #[test]
    fn receiver_restart_accepts_replays_only_within_the_timestamp_window() {
        let mut sealer = sealer(ring(7, 1), 11);
        let datagram = seal(&mut sealer, b"captured", NOW);
        let mut before_restart = opener(ring(7, 1));
        open(&mut before_restart, &datagram, NOW).unwrap();
        // The documented limit: a fresh receiver cannot know it saw this one...
        let mut after_restart = opener(ring(7, 1));
        open(&mut after_restart, &datagram, NOW + 30).unwrap();
        // ...but once the timestamp window has passed, the capture is worthless.
        let mut much_later = opener(ring(7, 1));
        assert!(matches!(
            open(&mut much_later, &datagram, NOW + 61).unwrap_err(),
            SealError::Stale { .. }
        ));
    }

    #[test]
    fn key_rotation_old_key_opens_new_key_seals() {
        let old = key(1, 0xaa);
        let new = key(2, 0xbb);
        // Step 1: a node that only knows the old key, and one that already accepts the new one.
        let mut old_sealer = sealer(KeyRing::new(old.clone()), 12);
        let step1 = KeyRing::new(old.clone())
            .with_accepted(new.clone())
            .unwrap();
        assert_eq!(step1.current_key_id(), 1);
        // Step 2: the new key is current, the old one still opens.
        let step2 = KeyRing::new(new.clone())
            .with_accepted(old.clone())
            .unwrap();
        let mut new_sealer = sealer(step2.clone(), 13);
        let mut step1_opener = opener(step1);
        let mut step2_opener = opener(step2);

        let from_old = seal(&mut old_sealer, b"old key", NOW);
        let from_new = seal(&mut new_sealer, b"new key", NOW);
        assert_eq!(Header::parse(&from_old).unwrap().key_id, 1);
        assert_eq!(Header::parse(&from_new).unwrap().key_id, 2);
        assert_eq!(open(&mut step1_opener, &from_new, NOW).unwrap(), b"new key");
        assert_eq!(open(&mut step2_opener, &from_old, NOW).unwrap(), b"old key");
        // Step 3: the old key is gone.
        let mut step3_opener = opener(KeyRing::new(new));
        let from_old_again = seal(&mut old_sealer, b"old key", NOW);
        assert_eq!(
            open(&mut step3_opener, &from_old_again, NOW).unwrap_err(),
            SealError::UnknownKey(1)
        );
        assert_eq!(
            KeyRing::new(old.clone()).with_accepted(old).unwrap_err(),
            KeyError::DuplicateKeyId(1)
        );
    }

    #[test]
    fn oversize_is_refused_without_using_a_counter() {
        let mut sealer = sealer(ring(7, 1), 14);
        let mut out = Vec::new();
        let largest = vec![0x5a; MAX_PLAINTEXT_LEN];
        sealer.seal(&largest, NOW, &mut out).unwrap();
        assert_eq!(out.len(), MAX_DATAGRAM_LEN);
        let too_big = vec![0x5a; MAX_PLAINTEXT_LEN + 1];
        assert_eq!(
            sealer.seal(&too_big, NOW, &mut out).unwrap_err(),
            SealError::Oversize {
                len: MAX_DATAGRAM_LEN + 1,
                max: MAX_DATAGRAM_LEN
            }
        );
        let next = seal(&mut sealer, b"", NOW);
        assert_eq!(Header::parse(&next).unwrap().counter, 1);
        let mut opener = opener(ring(7, 1));
        let mut huge = next.clone();
        huge.resize(MAX_DATAGRAM_LEN + 1, 0);
        assert!(matches!(
            open(&mut opener, &huge, NOW).unwrap_err(),
            SealError::Oversize { .. }
        ));
    }

    #[test]
    fn counter_exhaustion_starts_a_new_incarnation() {
        let mut sealer = sealer(ring(7, 1), 15);
        let mut opener = opener(ring(7, 1));
        let first_incarnation = sealer.incarnation();
        sealer.set_next_counter_for_test(COUNTER_LIMIT - 1);
        let last = seal(&mut sealer, b"last", NOW);
        let first_of_next = seal(&mut sealer, b"next", NOW);
        let last_header = Header::parse(&last).unwrap();
        let next_header = Header::parse(&first_of_next).unwrap();
        assert_eq!(last_header.incarnation, first_incarnation);
        assert_eq!(last_header.counter, COUNTER_LIMIT - 1);
        assert_ne!(next_header.incarnation, first_incarnation);
        assert_eq!(next_header.counter, 0);
        assert_ne!(last_header.nonce(), next_header.nonce());
        open(&mut opener, &last, NOW).unwrap();
        open(&mut opener, &first_of_next, NOW).unwrap();
        assert_eq!(opener.tracked_incarnations(), 2);
    }

    #[test]
    fn nonces_differ_across_counters_and_incarnations() {
        let header = |incarnation, counter| Header {
            key_id: 1,
            incarnation,
            counter,
            timestamp: 0,
        };
        assert_ne!(header(1, 0).nonce(), header(1, 1).nonce());
        assert_ne!(header(1, 0).nonce(), header(2, 0).nonce());
        assert_ne!(header(1, 1 << 8).nonce(), header(1 << 8, 1).nonce());
        assert_eq!(header(1, 5).nonce()[8..], [0, 0, 0, 5]);
    }

    #[test]
    fn tracked_incarnations_are_bounded() {
        let config = ReplayConfig {
            timestamp_window_secs: 60,
            max_tracked_incarnations: 4,
        };
        let mut opener = Opener::new(ring(7, 1), DATA_STORE, config);
        let mut sealers: Vec<Sealer> = (0..6).map(|seed| sealer(ring(7, 1), 100 + seed)).collect();
        for (i, sealer) in sealers.iter_mut().enumerate() {
            let now = NOW + i as u64;
            open(&mut opener, &seal(sealer, b"hi", now), now).unwrap();
            assert!(opener.tracked_incarnations() <= 4);
        }
        assert_eq!(opener.tracked_incarnations(), 4);
        // The least recently active ones were evicted; the newest is still protected.
        let newest = seal(&mut sealers[5], b"again", NOW + 5);
        open(&mut opener, &newest, NOW + 5).unwrap();
        assert!(matches!(
            open(&mut opener, &newest, NOW + 5).unwrap_err(),
            SealError::Replay { .. }
        ));
        // Incarnations silent for longer than the window are dropped first, safely.
        let later = NOW + 1_000;
        let mut fresh = sealer(ring(7, 1), 200);
        open(&mut opener, &seal(&mut fresh, b"hi", later), later).unwrap();
        assert_eq!(opener.tracked_incarnations(), 1);
    }

    #[test]
    fn key_parsing_and_debug_redaction() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let key = GossipKey::from_hex(3, hex_key).unwrap();
        assert_eq!(key.id(), 3);
        assert!(!format!("{key:?}").contains("0011"));
        assert!(matches!(
            GossipKey::from_hex(3, "abcd"),
            Err(KeyError::BadHex { id: 3, .. })
        ));
        let ring = KeyRing::new(key);
        assert_eq!(format!("{ring:?}"), "KeyRing { current: 3, key_ids: [3] }");
    }
}
