//! The sealed backup object: zstd-compressed, AES-256-GCM-encrypted in fixed-size chunks,
//! streamed both ways, with no I/O. The byte layout is specified in `docs/backup-format.md`;
//! this module is its only implementation.
//!
//! ```text
//! object = header (30 bytes) ‖ chunk 0 ‖ chunk 1 ‖ … ‖ final chunk
//! header = "RSBK" ‖ version 1 ‖ compression 1 (zstd) ‖ key id (4) ‖ chunk size C (4) ‖ salt (16)
//! chunk  = frame word (4: final flag ‖ 31-bit length) ‖ AES-256-GCM ciphertext ‖ tag (16)
//! ```
//!
//! The plaintext is one zstd frame, cut into chunks of exactly C compressed bytes; the final
//! chunk holds the rest (0..=C bytes) followed by a 16-byte trailer recording the plaintext and
//! compressed lengths. Each object has its own AES key, HKDF-SHA256(backup key, salt), and
//! chunk `i` is sealed with nonce = salt\[0..8\] ‖ i and associated data = header ‖ i ‖ frame
//! word ‖ object name. So an object that was altered anywhere, had chunks dropped, swapped or
//! duplicated, was cut short, has bytes appended, or is read under another object's name fails
//! with a [`FormatError`] that names the object and, where it can, the chunk.
//!
//! Why this shape:
//! - **Push-style and I/O-free** ([`Sealer::push`], [`Opener::push`]): the caller owns the
//!   network (multipart uploads, ranged GETs), and memory stays bounded: a sealer holds at most
//!   two chunks of compressed data ([`Sealer::buffered`]), an opener one chunk and one piece
//!   of plaintext ([`Opener::push_each`]).
//! - **Nothing unauthenticated reaches zstd**: a chunk is decompressed only after its tag
//!   verified, and plaintext is only handed out chunk by chunk after that. A caller must still
//!   treat everything it received as void if [`Opener::finish`] fails (the object may be
//!   truncated).
//! - **A key per object** (HKDF over a 128-bit random salt) means AES-GCM's nonce limit is per
//!   object, not per backup key: two objects share a key only if their 128-bit salts collide,
//!   whereas a 64-bit random nonce prefix under one key reaches NIST's 2⁻³² collision bound
//!   after about 2¹⁶ objects (days of WAL segments).
//! - Own STREAM-style construction rather than the `aead-stream` crate: we need the chunk
//!   length in clear (so a reader can frame chunks without trial decryption), the header and
//!   object name in every chunk's associated data, and a layout written down in our own doc.

use std::fmt;
use std::ops::ControlFlow;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use bytes::Bytes;
use hkdf::Hkdf;
use sha2::Sha256;
use zstd::stream::raw::{CParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use crate::backup::keys::{KeyId, KeyRing, KEY_LEN};

/// First bytes of every sealed backup object.
pub const MAGIC: [u8; 4] = *b"RSBK";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Compression code for zstd, the only one version 1 knows.
pub const COMPRESSION_ZSTD: u8 = 1;
/// Length of the random per-object salt in the header.
pub const SALT_LEN: usize = 16;
/// Length of the header: magic, version, compression, key id, chunk size, salt.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 4 + SALT_LEN;
/// Length of the cleartext frame word in front of every chunk.
pub const FRAME_WORD_LEN: usize = 4;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of the trailer at the end of the final chunk's plaintext: plaintext length and
/// compressed length, u64 big-endian each.
pub const TRAILER_LEN: usize = 16;
/// Compressed bytes per non-final chunk written by [`Sealer::new`].
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// Smallest chunk size a header may announce.
pub const MIN_CHUNK_SIZE: usize = 64;
/// Largest chunk size a header may announce; bounds what an opener buffers for a hostile
/// header (which is only authenticated with the first chunk).
pub const MAX_CHUNK_SIZE: usize = 16 << 20;

/// Largest plaintext piece [`Opener::push_each`] hands out.
pub const OPEN_PIECE: usize = 1 << 20;

/// Plaintext per zstd job when compressing with workers ([`Sealer::with_workers`]): zstd's
/// default at level 1 is 2 MiB; 1 MiB halves the buffers it keeps per worker.
pub const WORKER_JOB_SIZE: u32 = 1 << 20;

/// Bit 31 of the frame word: this is the final chunk.
const FINAL_FLAG: u32 = 1 << 31;
/// HKDF info for the per-object key.
const OBJECT_KEY_INFO: &[u8] = b"redis-steward backup object key v1";
/// Output space given to zstd per call when sealing (capped by the chunk size, see
/// [`Sealer::buffered`]).
const ZSTD_OUT_STEP: usize = 128 << 10;
/// Offset of the chunk index and frame word in the associated data.
const AAD_INDEX_AT: usize = HEADER_LEN;

/// Why sealing or opening an object failed. Every message starts with
/// `backup object <name>:`, and the variants are the cases an operator or a caller needs to
/// tell apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("backup object {object}: not a redis-steward backup object (bad magic {found})")]
    BadMagic { object: String, found: String },
    #[error(
        "backup object {object}: unsupported format version {version} \
         (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion { object: String, version: u8 },
    #[error(
        "backup object {object}: unsupported compression {code} \
         (this build reads {COMPRESSION_ZSTD} = zstd)"
    )]
    UnsupportedCompression { object: String, code: u8 },
    #[error(
        "backup object {object}: chunk size {size} is outside \
         {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
    )]
    BadChunkSize { object: String, size: u64 },
    #[error(
        "backup object {object}: sealed with key id {key_id}, which is not in the key ring \
         (have: {have}); add that key file to the previous backup keys"
    )]
    UnknownKey {
        object: String,
        key_id: KeyId,
        have: String,
    },
    #[error(
        "backup object {object}: authentication failed in chunk {chunk} (header or chunk \
         altered, chunks reordered or dropped, or sealed under another name)"
    )]
    Authentication { object: String, chunk: u64 },
    #[error("backup object {object}: chunk {chunk} has a corrupt frame: {detail}")]
    BadFrame {
        object: String,
        chunk: u64,
        detail: String,
    },
    #[error("backup object {object}: {at}")]
    Truncated { object: String, at: Truncation },
    #[error("backup object {object}: trailing data after the final chunk (chunk {final_chunk})")]
    TrailingData { object: String, final_chunk: u64 },
    #[error("backup object {object}: decompression failed in chunk {chunk}: {detail}")]
    Decompression {
        object: String,
        chunk: u64,
        detail: String,
    },
    #[error(
        "backup object {object}: the final chunk records {recorded} {what} bytes, \
         but there were {actual}"
    )]
    LengthMismatch {
        object: String,
        what: &'static str,
        recorded: u64,
        actual: u64,
    },
    #[error("backup object {object}: zstd level {level} is outside {min}..={max}")]
    InvalidLevel {
        object: String,
        level: i32,
        min: i32,
        max: i32,
    },
    #[error("backup object {object}: zstd compression failed: {detail}")]
    Compression { object: String, detail: String },
    #[error(
        "backup object {object}: more than 2^32 chunks (too large for format version \
         {FORMAT_VERSION})"
    )]
    TooManyChunks { object: String },
}

/// Where an object ended too early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// No bytes at all.
    Empty,
    /// Inside the header.
    InHeader { have: usize },
    /// Right after the header.
    NoChunks,
    /// At a chunk boundary: chunk `last` was complete but not final.
    AfterChunk { last: u64 },
    /// Inside chunk `chunk` (counting its frame word): `have` of the `need` bytes its frame
    /// announces (a final chunk whose length field was altered looks the same).
    InChunk {
        chunk: u64,
        have: usize,
        need: usize,
    },
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Truncation::Empty => write!(f, "truncated: the object is empty"),
            Truncation::InHeader { have } => {
                write!(f, "truncated in the header ({have} of {HEADER_LEN} bytes)")
            }
            Truncation::NoChunks => write!(f, "truncated after the header (no chunks)"),
            Truncation::AfterChunk { last } => {
                write!(f, "truncated after chunk {last} (no final chunk)")
            }
            Truncation::InChunk { chunk, have, need } => write!(
                f,
                "truncated in chunk {chunk} ({have} of the {need} bytes its frame announces)"
            ),
        }
    }
}

/// The cleartext (but authenticated) header of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub key_id: KeyId,
    /// Compressed bytes in every non-final chunk.
    pub chunk_size: u32,
    /// Random per object: HKDF salt for the object key and, first 8 bytes, the nonce prefix.
    pub salt: [u8; SALT_LEN],
}

impl Header {
    /// The header's bytes (always [`FORMAT_VERSION`] and zstd).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = FORMAT_VERSION;
        b[5] = COMPRESSION_ZSTD;
        b[6..10].copy_from_slice(&self.key_id.0.to_be_bytes());
        b[10..14].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[14..30].copy_from_slice(&self.salt);
        b
    }

    /// Parse the first [`HEADER_LEN`] bytes of `object` (e.g. to list which key ids a backup
    /// needs without opening it). Not authenticated: only opening the first chunk proves it.
    pub fn parse(object: &str, bytes: &[u8]) -> Result<Header, FormatError> {
        check_magic(object, bytes)?;
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                object: object.to_string(),
                at: if bytes.is_empty() {
                    Truncation::Empty
                } else {
                    Truncation::InHeader { have: bytes.len() }
                },
            });
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                object: object.to_string(),
                version: bytes[4],
            });
        }
        if bytes[5] != COMPRESSION_ZSTD {
            return Err(FormatError::UnsupportedCompression {
                object: object.to_string(),
                code: bytes[5],
            });
        }
        let chunk_size = u32::from_be_bytes(array(&bytes[10..14]));
        check_chunk_size(object, chunk_size as usize)?;
        Ok(Header {
            key_id: KeyId(u32::from_be_bytes(array(&bytes[6..10]))),
            chunk_size,
            salt: array(&bytes[14..30]),
        })
    }
}

/// What a sealed object holds, from [`Sealer::finish`] (for the chain manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealStats {
    pub key_id: KeyId,
    /// Bytes pushed in.
    pub plaintext_len: u64,
    /// Bytes of the zstd frame.
    pub compressed_len: u64,
    /// Bytes handed out: header and all chunks (the object's size in the store).
    pub sealed_len: u64,
    /// Chunks, the final one included.
    pub chunks: u64,
}

/// What an opened object held, from [`Opener::finish`]; equal to the [`SealStats`] the sealer
/// returned for it.
pub type OpenStats = SealStats;

/// Seals one object. Push plaintext in pieces of any size; each call returns the object bytes
/// that are complete so far (the header first, then whole chunks), to be appended to the object
/// in order; [`Sealer::finish`] returns the rest.
pub struct Sealer {
    object: String,
    cipher: ChunkCipher,
    encoder: Encoder<'static>,
    chunk_size: usize,
    /// Compressed bytes not yet sealed; never more than `chunk_size` + the zstd step.
    pending: Vec<u8>,
    header_sent: bool,
    stats: SealStats,
    failed: Sticky,
}

impl Sealer {
    /// A sealer for the object named `object_name` (its path in the bucket, bound to every
    /// chunk) under the ring's current key, with [`DEFAULT_CHUNK_SIZE`] chunks.
    pub fn new(object_name: &str, keys: &KeyRing, zstd_level: i32) -> Result<Sealer, FormatError> {
        Self::with_chunk_size(object_name, keys, zstd_level, DEFAULT_CHUNK_SIZE)
    }

    /// As [`Sealer::new`] with another chunk size ([`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`]
    /// compressed bytes). The chunk size is written in the header, so openers need not know it.
    pub fn with_chunk_size(
        object_name: &str,
        keys: &KeyRing,
        zstd_level: i32,
        chunk_size: usize,
    ) -> Result<Sealer, FormatError> {
        let object = object_name.to_string();
        check_chunk_size(&object, chunk_size)?;
        let levels = zstd::compression_level_range();
        if !levels.contains(&zstd_level) {
            return Err(FormatError::InvalidLevel {
                object,
                level: zstd_level,
                min: *levels.start(),
                max: *levels.end(),
            });
        }
        let compression = |e: std::io::Error| FormatError::Compression {
            object: object_name.to_string(),
            detail: e.to_string(),
        };
        let mut encoder = Encoder::new(zstd_level).map_err(compression)?;
        // XXH64 of the plaintext inside the frame: catches a bug in our own chunking even
        // though every chunk is authenticated. Costs next to nothing beside compression.
        encoder
            .set_parameter(CParameter::ChecksumFlag(true))
            .map_err(compression)?;
        let (key_id, key) = keys.current();
        let header = Header {
            key_id,
            chunk_size: chunk_size as u32,
            salt: rand::random(),
        };
        let step = ZSTD_OUT_STEP.min(chunk_size);
        Ok(Sealer {
            cipher: ChunkCipher::new(key, &header, object_name),
            encoder,
            chunk_size,
            pending: Vec::with_capacity(chunk_size + step),
            header_sent: false,
            stats: SealStats {
                key_id,
                plaintext_len: 0,
                compressed_len: 0,
                sealed_len: 0,
                chunks: 0,
            },
            failed: Sticky::default(),
            object,
        })
    }

    /// Compress with `workers` threads of zstd's own (its multithreaded mode) instead of on
    /// the caller's thread; 0 keeps everything on the caller's thread. The object is the same
    /// single zstd frame, so openers see no difference; the caller's thread then only seals
    /// (AES-GCM) and waits for compressed output. Meant for large objects (a snapshot's
    /// base): zstd splits the input into jobs of [`WORKER_JOB_SIZE`] and holds input and
    /// output for a few jobs per worker, so memory grows by a few MiB per worker. Must be
    /// called before the first [`Sealer::push`].
    pub fn with_workers(mut self, workers: u32) -> Result<Sealer, FormatError> {
        if self.header_sent {
            return Err(FormatError::Compression {
                object: self.object.clone(),
                detail: "zstd workers must be set before the first push".into(),
            });
        }
        for p in [
            CParameter::NbWorkers(workers),
            CParameter::JobSize(WORKER_JOB_SIZE),
        ] {
            self.encoder
                .set_parameter(p)
                .map_err(|e| FormatError::Compression {
                    object: self.object.clone(),
                    detail: format!("setting {workers} zstd workers: {e}"),
                })?;
        }
        Ok(self)
    }

    /// Compress and seal `plaintext`; returns the object bytes completed by it (the header on
    /// the first call, then every chunk that filled up), possibly none.
    pub fn push(&mut self, plaintext: &[u8]) -> Result<Vec<Bytes>, FormatError> {
        self.failed.check()?;
        let mut out = Vec::new();
        let result = self.push_inner(plaintext, &mut out);
        self.failed.remember(result).map(|()| out)
    }

    /// End the zstd frame and seal the final chunk; returns the remaining object bytes and
    /// what the object holds.
    pub fn finish(mut self) -> Result<(Vec<Bytes>, SealStats), FormatError> {
        self.failed.check()?;
        let mut out = Vec::new();
        self.finish_inner(&mut out)?;
        Ok((out, self.stats))
    }

    /// Compressed bytes held back, waiting to fill a chunk. Never more than two chunks'
    /// worth (one chunk plus one zstd output step of at most a chunk).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// The object name this sealer binds.
    pub fn object(&self) -> &str {
        &self.object
    }

    fn push_inner(&mut self, plaintext: &[u8], out: &mut Vec<Bytes>) -> Result<(), FormatError> {
        self.send_header(out);
        let mut input = InBuffer::around(plaintext);
        while input.pos() < plaintext.len() {
            self.seal_full_chunks(out)?;
            let at = self.pending.len();
            let mut output = OutBuffer::around_pos(&mut self.pending, at);
            self.encoder
                .run(&mut input, &mut output)
                .map_err(|e| FormatError::Compression {
                    object: self.object.clone(),
                    detail: e.to_string(),
                })?;
        }
        self.stats.plaintext_len += plaintext.len() as u64;
        self.seal_full_chunks(out)
    }

    fn finish_inner(&mut self, out: &mut Vec<Bytes>) -> Result<(), FormatError> {
        self.send_header(out);
        loop {
            self.seal_full_chunks(out)?;
            let at = self.pending.len();
            let mut output = OutBuffer::around_pos(&mut self.pending, at);
            let left =
                self.encoder
                    .finish(&mut output, true)
                    .map_err(|e| FormatError::Compression {
                        object: self.object.clone(),
                        detail: e.to_string(),
                    })?;
            if left == 0 {
                break;
            }
        }
        self.seal_full_chunks(out)?;
        // The final chunk: the last 0..=C compressed bytes and the trailer.
        let data_len = self.pending.len();
        let compressed_len = self.stats.compressed_len + data_len as u64;
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..8].copy_from_slice(&self.stats.plaintext_len.to_be_bytes());
        trailer[8..].copy_from_slice(&compressed_len.to_be_bytes());
        let frame = self.seal_chunk(data_len, Some(&trailer))?;
        out.push(frame);
        Ok(())
    }

    fn send_header(&mut self, out: &mut Vec<Bytes>) {
        if !self.header_sent {
            self.header_sent = true;
            out.push(Bytes::copy_from_slice(&self.cipher.header));
            self.stats.sealed_len += HEADER_LEN as u64;
        }
    }

    /// Seal chunks while more than a chunk is pending: only then is the first chunk known not
    /// to be the final one (the final chunk may hold a full chunk's worth).
    fn seal_full_chunks(&mut self, out: &mut Vec<Bytes>) -> Result<(), FormatError> {
        while self.pending.len() > self.chunk_size {
            let frame = self.seal_chunk(self.chunk_size, None)?;
            out.push(frame);
            self.pending.drain(..self.chunk_size);
        }
        Ok(())
    }

    /// Seal the first `data_len` pending bytes as the next chunk; final iff a trailer is given.
    fn seal_chunk(
        &mut self,
        data_len: usize,
        trailer: Option<&[u8; TRAILER_LEN]>,
    ) -> Result<Bytes, FormatError> {
        let index = u32::try_from(self.stats.chunks).map_err(|_| FormatError::TooManyChunks {
            object: self.object.clone(),
        })?;
        let trailer: &[u8] = trailer.map_or(&[], |t| t);
        let len = data_len + trailer.len();
        let word = frame_word(!trailer.is_empty(), len);
        let mut frame = Vec::with_capacity(FRAME_WORD_LEN + len + TAG_LEN);
        frame.extend_from_slice(&word.to_be_bytes());
        frame.extend_from_slice(&self.pending[..data_len]);
        frame.extend_from_slice(trailer);
        let tag = self.cipher.seal(index, word, &mut frame[FRAME_WORD_LEN..]);
        frame.extend_from_slice(&tag);
        self.stats.chunks += 1;
        self.stats.compressed_len += data_len as u64;
        self.stats.sealed_len += frame.len() as u64;
        Ok(Bytes::from(frame))
    }
}

/// The first error of a sealer or an opener, returned again by every later call: a stream
/// that failed once must not go on as if the bytes in between had not happened.
#[derive(Debug, Default)]
struct Sticky(Option<FormatError>);

impl Sticky {
    fn check(&self) -> Result<(), FormatError> {
        match &self.0 {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn remember<T>(&mut self, result: Result<T, FormatError>) -> Result<T, FormatError> {
        if let Err(e) = &result {
            self.0 = Some(e.clone());
        }
        result
    }
}

/// What the unsealer expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Header,
    FrameWord,
    /// The chunk body: `len` ciphertext bytes and the tag.
    Body {
        word: u32,
        len: usize,
    },
    /// The final chunk was opened; nothing may follow.
    Done,
    /// The consumer stopped the unsealing (its stage failed); input is ignored.
    Stopped,
}

/// Opens one object. Push its bytes in pieces of any size, in order; each call returns the
/// plaintext of the chunks completed by it. [`Opener::finish`] must succeed before any of the
/// plaintext is trusted as the whole object: only it can tell a complete object from a
/// truncated one.
///
/// An opener is the two stages, [`Unsealer`] then [`Inflater`], run one after the other on
/// the caller's thread; a restore runs them on two threads instead (decryption overlaps
/// decompression and the writes).
pub struct Opener {
    unsealer: Unsealer,
    inflater: Inflater,
    failed: Sticky,
}

impl Opener {
    /// An opener for the object named `object_name` (it must be the name it was sealed
    /// under), with any key of `keys`.
    pub fn new(object_name: &str, keys: &KeyRing) -> Opener {
        Opener {
            unsealer: Unsealer::new(object_name, keys),
            inflater: Inflater::new(object_name),
            failed: Sticky::default(),
        }
    }

    /// Take the next bytes of the object; returns the plaintext of every chunk they complete
    /// (authenticated, then decompressed). After an error every call returns that error.
    ///
    /// The returned plaintext is as large as those chunks decompress to, which is unbounded for
    /// very compressible data (a 512 MB string of zeros made with `SETRANGE` compresses to a few
    /// KiB): restores should use [`Opener::push_each`].
    pub fn push(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        self.push_each(ciphertext, |plain| out.extend_from_slice(plain))?;
        Ok(out)
    }

    /// As [`Opener::push`], but hands the plaintext to `each` in order, in pieces of at most
    /// [`OPEN_PIECE`] bytes, so memory stays bounded however well the data compressed.
    pub fn push_each(
        &mut self,
        ciphertext: &[u8],
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), FormatError> {
        self.failed.check()?;
        let inflater = &mut self.inflater;
        let mut inflated = Ok(());
        let unsealed = self.unsealer.push_each(ciphertext, |chunk| {
            inflated = inflater.inflate(&chunk, &mut each);
            match inflated {
                // The chunk's buffer goes back to the unsealer for the next chunk.
                Ok(()) => ControlFlow::Continue(Some(chunk.data)),
                Err(_) => ControlFlow::Break(()),
            }
        });
        let result = unsealed.and(inflated);
        self.failed.remember(result)
    }

    /// The object ended: succeeds only if the final chunk was opened and nothing followed it.
    pub fn finish(self) -> Result<OpenStats, FormatError> {
        self.failed.check()?;
        let unsealed = self.unsealer.finish()?;
        let inflated = self.inflater.finish()?;
        Ok(OpenStats {
            key_id: unsealed.key_id,
            plaintext_len: inflated.plaintext_len,
            compressed_len: inflated.compressed_len,
            sealed_len: unsealed.sealed_len,
            chunks: unsealed.chunks,
        })
    }

    /// Bytes held back, waiting to complete the header, a frame word or a chunk: at most one
    /// chunk with its frame word and tag. (Besides, plaintext passes through one buffer of
    /// [`OPEN_PIECE`] bytes.)
    pub fn buffered(&self) -> usize {
        self.unsealer.buffered()
    }

    /// The header, once it has arrived (not authenticated until the first chunk opened).
    pub fn header(&self) -> Option<Header> {
        self.unsealer.header()
    }
}

/// One authenticated chunk on its way from the [`Unsealer`] to the [`Inflater`]: its
/// compressed bytes and, for the final chunk, the trailer.
#[derive(Debug)]
pub struct OpenedChunk {
    index: u64,
    data: Vec<u8>,
    trailer: Option<[u8; TRAILER_LEN]>,
}

impl OpenedChunk {
    /// The chunk's buffer, to hand back to the unsealer once inflated.
    pub fn into_buffer(self) -> Vec<u8> {
        self.data
    }
}

/// What the unsealing stage saw, from [`Unsealer::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealStats {
    pub key_id: KeyId,
    pub sealed_len: u64,
    pub chunks: u64,
}

/// What the inflating stage produced, from [`Inflater::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflateStats {
    pub plaintext_len: u64,
    pub compressed_len: u64,
}

/// The first stage of opening: header, frame words and AES-GCM. Hands out each chunk's
/// compressed bytes once its tag verified (see [`Unsealer::push_each`]); nothing is
/// decompressed here.
pub struct Unsealer {
    object: String,
    keys: KeyRing,
    phase: Phase,
    /// The unit being collected: the header, a frame word, or a chunk body and tag.
    buf: Vec<u8>,
    /// A buffer handed back by the consumer, reused for the next chunk body.
    spare: Option<Vec<u8>>,
    cipher: Option<ChunkCipher>,
    stats: UnsealStats,
    failed: Sticky,
}

impl Unsealer {
    pub fn new(object_name: &str, keys: &KeyRing) -> Unsealer {
        Unsealer {
            object: object_name.to_string(),
            keys: keys.clone(),
            phase: Phase::Header,
            buf: Vec::with_capacity(HEADER_LEN),
            spare: None,
            cipher: None,
            stats: UnsealStats {
                key_id: KeyId(0),
                sealed_len: 0,
                chunks: 0,
            },
            failed: Sticky::default(),
        }
    }

    /// Take the next bytes of the object and hand every chunk they complete, authenticated, to
    /// `each`, in order. `each` may give a spent chunk buffer back (`Continue(Some(buffer))`)
    /// to spare an allocation, or stop the unsealing (`Break`, e.g. when the next stage
    /// failed): the rest of `ciphertext` is then ignored and later calls do nothing more. After
    /// an error every call returns that error.
    pub fn push_each(
        &mut self,
        ciphertext: &[u8],
        mut each: impl FnMut(OpenedChunk) -> ControlFlow<(), Option<Vec<u8>>>,
    ) -> Result<(), FormatError> {
        self.failed.check()?;
        let result = self.push_inner(ciphertext, &mut each);
        self.failed.remember(result)
    }

    /// The object ended: succeeds only if the final chunk arrived and nothing followed it.
    pub fn finish(self) -> Result<UnsealStats, FormatError> {
        self.failed.check()?;
        let at = match self.phase {
            Phase::Done => return Ok(self.stats),
            Phase::Stopped => Truncation::AfterChunk {
                last: self.stats.chunks.saturating_sub(1),
            },
            Phase::Header if self.buf.is_empty() => Truncation::Empty,
            Phase::Header => Truncation::InHeader {
                have: self.buf.len(),
            },
            Phase::FrameWord if self.buf.is_empty() => match self.stats.chunks {
                0 => Truncation::NoChunks,
                n => Truncation::AfterChunk { last: n - 1 },
            },
            Phase::FrameWord => Truncation::InChunk {
                chunk: self.stats.chunks,
                have: self.buf.len(),
                need: FRAME_WORD_LEN,
            },
            Phase::Body { len, .. } => Truncation::InChunk {
                chunk: self.stats.chunks,
                have: FRAME_WORD_LEN + self.buf.len(),
                need: FRAME_WORD_LEN + len + TAG_LEN,
            },
        };
        Err(FormatError::Truncated {
            object: self.object,
            at,
        })
    }

    /// Bytes held back: at most one chunk with its frame word and tag.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The header, once it has arrived (not authenticated until the first chunk opened).
    pub fn header(&self) -> Option<Header> {
        self.cipher.as_ref().map(|c| c.parsed)
    }

    fn push_inner(
        &mut self,
        mut input: &[u8],
        each: &mut dyn FnMut(OpenedChunk) -> ControlFlow<(), Option<Vec<u8>>>,
    ) -> Result<(), FormatError> {
        while !input.is_empty() {
            let need = match self.phase {
                Phase::Header => HEADER_LEN,
                Phase::FrameWord => FRAME_WORD_LEN,
                Phase::Body { len, .. } => len + TAG_LEN,
                Phase::Stopped => return Ok(()),
                Phase::Done => {
                    return Err(FormatError::TrailingData {
                        object: self.object.clone(),
                        final_chunk: self.stats.chunks - 1,
                    })
                }
            };
            let take = (need - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            self.stats.sealed_len += take as u64;
            if self.phase == Phase::Header {
                // Say "not a backup object" as early as possible.
                check_magic(&self.object, &self.buf)?;
            }
            if self.buf.len() == need {
                self.advance(each)?;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// A whole unit is in `buf`: act on it.
    fn advance(
        &mut self,
        each: &mut dyn FnMut(OpenedChunk) -> ControlFlow<(), Option<Vec<u8>>>,
    ) -> Result<(), FormatError> {
        match self.phase {
            Phase::Header => self.open_header(),
            Phase::FrameWord => {
                let word = u32::from_be_bytes(array(&self.buf));
                let len = self.check_frame(word)?;
                if let Some(spare) = self.spare.take() {
                    self.buf = spare;
                }
                self.buf.clear();
                self.buf.reserve_exact(len + TAG_LEN);
                self.phase = Phase::Body { word, len };
                Ok(())
            }
            Phase::Body { word, len } => self.open_chunk(word, len, each),
            Phase::Done | Phase::Stopped => {
                unreachable!("no unit is collected after the final chunk or a stop")
            }
        }
    }

    fn open_header(&mut self) -> Result<(), FormatError> {
        let header = Header::parse(&self.object, &self.buf)?;
        let key = self
            .keys
            .get(header.key_id)
            .ok_or_else(|| FormatError::UnknownKey {
                object: self.object.clone(),
                key_id: header.key_id,
                have: self.keys.describe_ids(),
            })?;
        self.cipher = Some(ChunkCipher::new(key, &header, &self.object));
        self.stats.key_id = header.key_id;
        self.phase = Phase::FrameWord;
        Ok(())
    }

    /// The body length a frame word announces, if it is one a sealer can write.
    fn check_frame(&self, word: u32) -> Result<usize, FormatError> {
        let chunk_size = self.cipher.as_ref().expect("header read").parsed.chunk_size as usize;
        let len = (word & !FINAL_FLAG) as usize;
        let detail = if word & FINAL_FLAG == 0 {
            if len == chunk_size {
                return Ok(len);
            }
            format!("a non-final chunk holds {chunk_size} bytes, its frame says {len}")
        } else {
            if (TRAILER_LEN..=chunk_size + TRAILER_LEN).contains(&len) {
                return Ok(len);
            }
            format!(
                "a final chunk holds {TRAILER_LEN}..={} bytes, its frame says {len}",
                chunk_size + TRAILER_LEN
            )
        };
        Err(FormatError::BadFrame {
            object: self.object.clone(),
            chunk: self.stats.chunks,
            detail,
        })
    }

    fn open_chunk(
        &mut self,
        word: u32,
        len: usize,
        each: &mut dyn FnMut(OpenedChunk) -> ControlFlow<(), Option<Vec<u8>>>,
    ) -> Result<(), FormatError> {
        let chunk = self.stats.chunks;
        let index = u32::try_from(chunk).map_err(|_| FormatError::TooManyChunks {
            object: self.object.clone(),
        })?;
        let cipher = self.cipher.as_mut().expect("header read");
        let (body, tag) = self.buf.split_at_mut(len);
        if !cipher.open(index, word, body, &array(tag)) {
            return Err(FormatError::Authentication {
                object: self.object.clone(),
                chunk,
            });
        }
        let is_final = word & FINAL_FLAG != 0;
        let data_len = if is_final { len - TRAILER_LEN } else { len };
        let trailer = is_final.then(|| array(&self.buf[data_len..len]));
        let mut data = std::mem::take(&mut self.buf);
        data.truncate(data_len);
        self.stats.chunks += 1;
        self.phase = if is_final {
            Phase::Done
        } else {
            Phase::FrameWord
        };
        let opened = OpenedChunk {
            index: chunk,
            data,
            trailer,
        };
        match each(opened) {
            ControlFlow::Continue(spare) => self.spare = spare,
            ControlFlow::Break(()) => self.phase = Phase::Stopped,
        }
        Ok(())
    }
}

/// The second stage of opening: zstd, and the final chunk's recorded lengths checked against
/// what was decompressed. Takes the chunks an [`Unsealer`] handed out, in order.
pub struct Inflater {
    object: String,
    decoder: Option<Decoder<'static>>,
    /// Where zstd writes plaintext before it is handed out: [`OPEN_PIECE`] bytes.
    scratch: Vec<u8>,
    /// The zstd frame ended (and must not continue).
    frame_done: bool,
    /// The final chunk was inflated.
    done: bool,
    chunks: u64,
    stats: InflateStats,
    failed: Sticky,
}

impl Inflater {
    pub fn new(object_name: &str) -> Inflater {
        Inflater {
            object: object_name.to_string(),
            decoder: None,
            scratch: Vec::new(),
            frame_done: false,
            done: false,
            chunks: 0,
            stats: InflateStats {
                plaintext_len: 0,
                compressed_len: 0,
            },
            failed: Sticky::default(),
        }
    }

    /// Decompress the next chunk, handing its plaintext to `out` in pieces of at most
    /// [`OPEN_PIECE`] bytes. After an error every call returns that error.
    pub fn inflate(
        &mut self,
        chunk: &OpenedChunk,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FormatError> {
        self.failed.check()?;
        let result = self.inflate_inner(chunk, out);
        self.failed.remember(result)
    }

    /// The object ended: succeeds only if the final chunk was inflated.
    pub fn finish(self) -> Result<InflateStats, FormatError> {
        self.failed.check()?;
        if !self.done {
            return Err(FormatError::Truncated {
                object: self.object,
                at: match self.chunks {
                    0 => Truncation::NoChunks,
                    n => Truncation::AfterChunk { last: n - 1 },
                },
            });
        }
        Ok(self.stats)
    }

    fn inflate_inner(
        &mut self,
        chunk: &OpenedChunk,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FormatError> {
        let index = chunk.index;
        // An unsealer hands chunks out in order and stops at the final one: anything else is
        // a caller mixing up objects.
        assert!(
            index == self.chunks && !self.done,
            "chunk {index} of {} inflated out of order",
            self.object
        );
        let decompression = |detail: String| FormatError::Decompression {
            object: self.object.clone(),
            chunk: index,
            detail,
        };
        if self.decoder.is_none() {
            self.decoder = Some(Decoder::new().map_err(|e| decompression(e.to_string()))?);
            self.scratch = Vec::with_capacity(OPEN_PIECE);
        }
        let decoder = self.decoder.as_mut().expect("made above");
        let produced = decompress(
            decoder,
            &mut self.frame_done,
            &chunk.data,
            &mut self.scratch,
            out,
        )
        .map_err(decompression)?;
        self.stats.plaintext_len += produced;
        self.stats.compressed_len += chunk.data.len() as u64;
        self.chunks += 1;
        let Some(trailer) = &chunk.trailer else {
            return Ok(());
        };
        if !self.frame_done {
            return Err(decompression(
                "the zstd frame is incomplete at the final chunk".into(),
            ));
        }
        for (what, recorded, actual) in [
            (
                "plaintext",
                u64::from_be_bytes(array(&trailer[..8])),
                self.stats.plaintext_len,
            ),
            (
                "compressed",
                u64::from_be_bytes(array(&trailer[8..])),
                self.stats.compressed_len,
            ),
        ] {
            if recorded != actual {
                return Err(FormatError::LengthMismatch {
                    object: self.object.clone(),
                    what,
                    recorded,
                    actual,
                });
            }
        }
        self.done = true;
        Ok(())
    }
}

/// Seal a whole object held in memory (small objects and tests).
pub fn seal_all(
    object_name: &str,
    keys: &KeyRing,
    zstd_level: i32,
    data: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut sealer = Sealer::new(object_name, keys, zstd_level)?;
    let mut pieces = sealer.push(data)?;
    let (rest, stats) = sealer.finish()?;
    pieces.extend(rest);
    let mut sealed = Vec::with_capacity(stats.sealed_len as usize);
    for piece in pieces {
        sealed.extend_from_slice(&piece);
    }
    Ok(sealed)
}

/// Open a whole object held in memory (small objects and tests).
pub fn open_all(object_name: &str, keys: &KeyRing, data: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut opener = Opener::new(object_name, keys);
    let plaintext = opener.push(data)?;
    opener.finish()?;
    Ok(plaintext)
}

/// The per-object AEAD state shared by sealing and opening.
struct ChunkCipher {
    aead: Aes256Gcm,
    parsed: Header,
    header: [u8; HEADER_LEN],
    /// header ‖ chunk index (4) ‖ frame word (4) ‖ object name; index and word are patched in
    /// per chunk. The name comes last, after fixed-size fields, so the encoding is injective.
    aad: Vec<u8>,
}

impl ChunkCipher {
    fn new(key: &[u8; KEY_LEN], header: &Header, object: &str) -> ChunkCipher {
        let header_bytes = header.to_bytes();
        let mut object_key = [0u8; KEY_LEN];
        Hkdf::<Sha256>::new(Some(&header.salt), key)
            .expand(OBJECT_KEY_INFO, &mut object_key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut aad = Vec::with_capacity(HEADER_LEN + 8 + object.len());
        aad.extend_from_slice(&header_bytes);
        aad.extend_from_slice(&[0u8; 8]);
        aad.extend_from_slice(object.as_bytes());
        ChunkCipher {
            aead: Aes256Gcm::new(&object_key.into()),
            parsed: *header,
            header: header_bytes,
            aad,
        }
    }

    /// salt\[0..8\] ‖ chunk index, big-endian.
    fn nonce(&self, index: u32) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&self.parsed.salt[..8]);
        nonce[8..].copy_from_slice(&index.to_be_bytes());
        nonce
    }

    fn set_chunk(&mut self, index: u32, word: u32) {
        self.aad[AAD_INDEX_AT..AAD_INDEX_AT + 4].copy_from_slice(&index.to_be_bytes());
        self.aad[AAD_INDEX_AT + 4..AAD_INDEX_AT + 8].copy_from_slice(&word.to_be_bytes());
    }

    /// Encrypt `buf` in place; returns the tag.
    fn seal(&mut self, index: u32, word: u32, buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.set_chunk(index, word);
        let nonce = self.nonce(index);
        self.aead
            .encrypt_inout_detached(&nonce.into(), &self.aad, buf.into())
            // Refused only for inputs over 64 GiB; chunks are at most 16 MiB.
            .expect("a chunk is far below AES-GCM's message limit")
            .into()
    }

    /// Decrypt `buf` in place; false if the tag does not verify.
    fn open(&mut self, index: u32, word: u32, buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        self.set_chunk(index, word);
        let nonce = self.nonce(index);
        self.aead
            .decrypt_inout_detached(&nonce.into(), &self.aad, buf.into(), &(*tag).into())
            .is_ok()
    }
}

/// Decompress one chunk's data through `scratch` (capacity [`OPEN_PIECE`]), handing each
/// filled piece to `out`; returns the plaintext length. Compressed data after the end of the
/// zstd frame is an error (a sealer writes exactly one frame).
fn decompress(
    decoder: &mut Decoder<'static>,
    frame_done: &mut bool,
    data: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut dyn FnMut(&[u8]),
) -> Result<u64, String> {
    let mut input = InBuffer::around(data);
    let mut produced = 0;
    loop {
        if *frame_done {
            if input.pos() < data.len() {
                return Err("compressed data continues after the end of the zstd frame".into());
            }
            return Ok(produced);
        }
        scratch.clear();
        let (hint, output_full) = {
            let mut output = OutBuffer::around(scratch);
            let hint = decoder
                .run(&mut input, &mut output)
                .map_err(|e| e.to_string())?;
            (hint, output.pos() == output.capacity())
        };
        if !scratch.is_empty() {
            out(scratch);
            produced += scratch.len() as u64;
        }
        if hint == 0 {
            // The frame is decoded and flushed.
            *frame_done = true;
        } else if input.pos() == data.len() && !output_full {
            return Ok(produced);
        }
    }
}

fn frame_word(is_final: bool, len: usize) -> u32 {
    debug_assert!(len <= MAX_CHUNK_SIZE + TRAILER_LEN);
    len as u32 | if is_final { FINAL_FLAG } else { 0 }
}

/// As much of the magic as `bytes` holds must match.
fn check_magic(object: &str, bytes: &[u8]) -> Result<(), FormatError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(FormatError::BadMagic {
            object: object.to_string(),
            found: hex::encode(&bytes[..n]),
        });
    }
    Ok(())
}

fn check_chunk_size(object: &str, size: usize) -> Result<(), FormatError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        return Err(FormatError::BadChunkSize {
            object: object.to_string(),
            size: size as u64,
        });
    }
    Ok(())
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("slice length checked by caller")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "chains/0000000007/base-000003.rsb";
    const SMALL_CHUNK: usize = 4096;

    fn ring() -> KeyRing {
        KeyRing::from_keys([1u8; KEY_LEN], &[]).unwrap()
    }

    /// Deterministic test data: runs of pseudo-random bytes (incompressible) alternating with
    /// repetitive redis-like records, so both compressible and incompressible stretches occur.
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            let r = next();
            if r % 3 == 0 {
                let record = format!("user:{}:session\x00{{\"ttl\":3600}}", r % 1000);
                out.extend_from_slice(record.as_bytes());
            } else {
                for _ in 0..(r % 64) {
                    out.extend_from_slice(&next().to_le_bytes());
                }
            }
        }
        out.truncate(len);
        out
    }

    /// Random bytes: zstd stores them raw, so compressed ≈ plaintext.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Seal `plain` pushed in `piece`-sized pieces; returns the header and chunks as handed out.
    fn seal_pieces(
        name: &str,
        keys: &KeyRing,
        chunk_size: usize,
        plain: &[u8],
        piece: usize,
    ) -> (Vec<Bytes>, SealStats) {
        let mut sealer = Sealer::with_chunk_size(name, keys, 1, chunk_size).unwrap();
        let mut parts = Vec::new();
        for p in plain.chunks(piece.max(1)) {
            parts.extend(sealer.push(p).unwrap());
        }
        let (rest, stats) = sealer.finish().unwrap();
        parts.extend(rest);
        (parts, stats)
    }

    fn concat(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    fn open_pieces(
        name: &str,
        keys: &KeyRing,
        sealed: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, OpenStats), FormatError> {
        let mut opener = Opener::new(name, keys);
        let mut plain = Vec::new();
        for p in sealed.chunks(piece.max(1)) {
            plain.extend(opener.push(p)?);
        }
        let stats = opener.finish()?;
        Ok((plain, stats))
    }

    /// A sealed object of `n_chunks`+ small chunks, split into header and chunks.
    fn sample(name: &str, keys: &KeyRing) -> (Vec<u8>, Vec<Bytes>) {
        let plain = noise(10 * SMALL_CHUNK + 123, 5);
        let (parts, _) = seal_pieces(name, keys, SMALL_CHUNK, &plain, 1000);
        assert_eq!(parts.len(), 1 + 11, "header + 10 full chunks + final");
        (plain, parts)
    }

    fn open_err(name: &str, keys: &KeyRing, sealed: &[u8]) -> FormatError {
        // Whole, and byte by byte: the error must not depend on how the bytes arrive.
        let whole = open_pieces(name, keys, sealed, sealed.len()).unwrap_err();
        let odd = open_pieces(name, keys, sealed, 997).unwrap_err();
        assert_eq!(whole, odd);
        let text = whole.to_string();
        assert!(
            text.starts_with(&format!("backup object {name}: ")),
            "error does not name the object: {text}"
        );
        whole
    }

    #[test]
    fn backup_round_trips_of_every_size_in_odd_pieces() {
        let keys = ring();
        for (len, seal_piece, open_piece) in [
            (0, 1, 1),
            (1, 1, 1),
            (100, 7, 3),
            (SMALL_CHUNK, 13, 1),
            (SMALL_CHUNK * 3 + 17, 4097, 333),
            (200_000, 65_537, 5_003),
        ] {
            for plain in [data(len, len as u64), noise(len, 9)] {
                let (parts, sealed_stats) =
                    seal_pieces(NAME, &keys, SMALL_CHUNK, &plain, seal_piece);
                let sealed = concat(&parts);
                assert_eq!(sealed_stats.sealed_len, sealed.len() as u64);
                assert_eq!(sealed_stats.plaintext_len, len as u64);
                let (opened, open_stats) = open_pieces(NAME, &keys, &sealed, open_piece).unwrap();
                assert!(opened == plain, "round trip of {len} bytes");
                assert_eq!(open_stats, sealed_stats);
            }
        }
    }

    #[test]
    fn backup_round_trips_when_compressed_data_ends_exactly_on_a_chunk() {
        // Random data is stored raw, so compressed length = plaintext + a few bytes of framing:
        // sweeping the plaintext length hits every compressed length around 1 and 2 chunks.
        let keys = ring();
        let mut exact = Vec::new();
        for len in 0..(2 * MIN_CHUNK_SIZE + 40) {
            let plain = noise(len, len as u64);
            let (parts, stats) = seal_pieces(NAME, &keys, MIN_CHUNK_SIZE, &plain, 5);
            let (opened, _) = open_pieces(NAME, &keys, &concat(&parts), 3).unwrap();
            assert_eq!(opened, plain);
            assert_eq!(stats.chunks, stats.compressed_len.div_ceil(64).max(1));
            if stats.compressed_len % MIN_CHUNK_SIZE as u64 == 0 {
                exact.push(stats.compressed_len);
                // A full final chunk, no empty one after it.
                assert_eq!(parts.last().unwrap().len(), 4 + 64 + TRAILER_LEN + TAG_LEN);
            }
        }
        assert_eq!(exact, vec![64, 128], "exactly one and exactly two chunks");
    }

    /// Very compressible redis-like records (zstd level 1 shrinks them about 20-fold). The
    /// debug-build tests keep the bytes that go through AES small: unoptimized AES-GCM runs at
    /// a few MB/s.
    fn records(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 64);
        while out.len() < len {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = x >> 33;
            let record = format!(
                "SET user:{}:plan {} EX 3600\r\n",
                r % 500,
                ["free", "pro", "team"][(r % 3) as usize]
            );
            out.extend_from_slice(record.as_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn backup_round_trip_of_several_mib_with_default_chunks() {
        let keys = ring();
        let plain = [records(8 << 20, 1), noise(5 << 19, 2), records(1 << 20, 3)].concat();
        let mut sealer = Sealer::new(NAME, &keys, 3).unwrap();
        let mut sealed = Vec::new();
        for p in plain.chunks(777_777) {
            for part in sealer.push(p).unwrap() {
                sealed.extend_from_slice(&part);
            }
        }
        let (rest, stats) = sealer.finish().unwrap();
        rest.iter().for_each(|p| sealed.extend_from_slice(p));
        assert!(stats.chunks >= 3, "{stats:?}");
        let (opened, open_stats) = open_pieces(NAME, &keys, &sealed, 333_333).unwrap();
        assert!(opened == plain);
        assert_eq!(open_stats, stats);
        assert!(open_all(NAME, &keys, &sealed).unwrap() == plain);
        let small = seal_all(NAME, &keys, 1, b"hello").unwrap();
        assert_eq!(open_all(NAME, &keys, &small).unwrap(), b"hello");
    }

    #[test]
    fn backup_sealed_by_zstd_workers_opens_the_same_and_stays_bounded() {
        // Several of zstd's jobs (2 MiB at level 1) so the workers really split the frame;
        // small chunks, so many are sealed while the workers run.
        let keys = ring();
        let plain = [records(6 << 20, 4), noise(1 << 20, 5), records(3 << 20, 6)].concat();
        for workers in [0, 1, 2] {
            let mut sealer = Sealer::with_chunk_size(NAME, &keys, 1, 64 << 10)
                .unwrap()
                .with_workers(workers)
                .unwrap();
            let mut sealed = Vec::new();
            for p in plain.chunks(1 << 20) {
                for part in sealer.push(p).unwrap() {
                    sealed.extend_from_slice(&part);
                }
                assert!(sealer.buffered() <= 2 * (64 << 10), "{}", sealer.buffered());
            }
            let (rest, stats) = sealer.finish().unwrap();
            rest.iter().for_each(|p| sealed.extend_from_slice(p));
            assert_eq!(stats.plaintext_len, plain.len() as u64);
            assert_eq!(stats.sealed_len, sealed.len() as u64);
            let (opened, open_stats) = open_pieces(NAME, &keys, &sealed, 100_003).unwrap();
            assert!(opened == plain, "round trip with {workers} workers");
            assert_eq!(open_stats, stats);
        }
        // Workers are set before the first push, never in the middle of the frame.
        let mut sealer = Sealer::new(NAME, &keys, 1).unwrap();
        sealer.push(b"x").unwrap();
        let e = sealer.with_workers(2).err().unwrap();
        assert!(e.to_string().contains("before the first push"), "{e}");
    }

    #[test]
    fn backup_sealing_twice_gives_different_bytes() {
        let keys = ring();
        let a = seal_all(NAME, &keys, 1, b"same").unwrap();
        let b = seal_all(NAME, &keys, 1, b"same").unwrap();
        assert_ne!(a, b, "a fresh salt per object");
        assert_ne!(a[14..30], b[14..30]);
    }

    #[test]
    fn backup_header_layout_is_as_documented() {
        let keys = ring();
        let sealed = seal_all(NAME, &keys, 1, b"x").unwrap();
        assert_eq!(&sealed[..4], b"RSBK");
        assert_eq!(sealed[4], 1, "version");
        assert_eq!(sealed[5], 1, "zstd");
        assert_eq!(sealed[6..10], keys.current_id().0.to_be_bytes());
        assert_eq!(sealed[10..14], (DEFAULT_CHUNK_SIZE as u32).to_be_bytes());
        let header = Header::parse(NAME, &sealed).unwrap();
        assert_eq!(header.key_id, keys.current_id());
        assert_eq!(header.to_bytes()[..], sealed[..HEADER_LEN]);
        // One final chunk: flag set, length = data + trailer.
        let word = u32::from_be_bytes(array(&sealed[30..34]));
        assert_ne!(word & FINAL_FLAG, 0);
        let len = (word & !FINAL_FLAG) as usize;
        assert_eq!(sealed.len(), HEADER_LEN + FRAME_WORD_LEN + len + TAG_LEN);
    }

    #[test]
    fn backup_flipped_header_bytes_are_named() {
        let keys = ring();
        let (_, parts) = sample(NAME, &keys);
        let sealed = concat(&parts);
        let flip = |at: usize, bit: u8| {
            let mut s = sealed.clone();
            s[at] ^= bit;
            open_err(NAME, &keys, &s)
        };
        let e = flip(0, 0x01);
        assert!(matches!(e, FormatError::BadMagic { .. }), "{e}");
        assert!(e.to_string().contains("not a redis-steward backup object"));
        let e = flip(4, 0x08);
        assert!(
            matches!(e, FormatError::UnsupportedVersion { version: 9, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("unsupported format version 9"));
        let e = flip(5, 0x02);
        assert!(
            matches!(e, FormatError::UnsupportedCompression { code: 3, .. }),
            "{e}"
        );
        let e = flip(7, 0x10);
        assert!(matches!(e, FormatError::UnknownKey { .. }), "{e}");
        // Chunk size: out of range, or in range and then caught by the frame check.
        let e = flip(10, 0x80);
        assert!(matches!(e, FormatError::BadChunkSize { .. }), "{e}");
        let e = flip(12, 0x20);
        assert!(matches!(e, FormatError::BadFrame { chunk: 0, .. }), "{e}");
        // The salt changes the key and nonces: chunk 0 fails.
        for at in [14, 21, 29] {
            let e = flip(at, 0x04);
            assert_eq!(
                e,
                FormatError::Authentication {
                    object: NAME.into(),
                    chunk: 0
                }
            );
        }
    }

    #[test]
    fn backup_flipped_chunk_bytes_fail_authentication_in_that_chunk() {
        let keys = ring();
        let (_, parts) = sample(NAME, &keys);
        let chunk_start = |i: usize| parts[..=i].iter().map(|p| p.len()).sum::<usize>();
        let sealed = concat(&parts);
        // Chunk 3 is parts[4]; its ciphertext starts after the frame word, its tag is last.
        let at3 = chunk_start(3);
        let end3 = at3 + parts[4].len();
        let last = parts.len() - 2;
        for (at, what) in [
            (at3 + 4, "first ciphertext byte"),
            (at3 + 2000, "middle of the ciphertext"),
            (end3 - 1, "last tag byte"),
            (end3 - TAG_LEN, "first tag byte"),
        ] {
            let mut s = sealed.clone();
            s[at] ^= 0x40;
            let e = open_err(NAME, &keys, &s);
            assert_eq!(
                e,
                FormatError::Authentication {
                    object: NAME.into(),
                    chunk: 3
                },
                "{what}"
            );
            assert!(e.to_string().contains("authentication failed in chunk 3"));
        }
        // The final chunk's ciphertext (which holds the trailer) and tag.
        let at_final = chunk_start(last);
        for at in [at_final + 5, sealed.len() - 1] {
            let mut s = sealed.clone();
            s[at] ^= 1;
            let e = open_err(NAME, &keys, &s);
            assert!(
                matches!(e, FormatError::Authentication { chunk: 10, .. }),
                "{e}"
            );
        }
        // Frame word: the final flag set on a full chunk, the length of a full chunk changed.
        let mut s = sealed.clone();
        s[at3] ^= 0x80;
        let e = open_err(NAME, &keys, &s);
        assert!(
            matches!(e, FormatError::Authentication { chunk: 3, .. }),
            "{e}"
        );
        let mut s = sealed.clone();
        s[at3 + 3] ^= 0x01;
        let e = open_err(NAME, &keys, &s);
        assert!(matches!(e, FormatError::BadFrame { chunk: 3, .. }), "{e}");
        assert!(e.to_string().contains("chunk 3 has a corrupt frame"), "{e}");
        // The final flag cleared on the final chunk.
        let mut s = sealed.clone();
        s[at_final] ^= 0x80;
        let e = open_err(NAME, &keys, &s);
        assert!(matches!(e, FormatError::BadFrame { chunk: 10, .. }), "{e}");
        // The final chunk's length shortened: read as a shorter final chunk, which fails, then
        // the rest is ignored because the error came first.
        let mut s = sealed.clone();
        s[at_final + 3] ^= 0x01;
        let e = open_err(NAME, &keys, &s);
        assert!(
            matches!(
                e,
                FormatError::Authentication { chunk: 10, .. }
                    | FormatError::Truncated {
                        at: Truncation::InChunk { chunk: 10, .. },
                        ..
                    }
            ),
            "{e}"
        );
    }

    #[test]
    fn backup_truncation_anywhere_is_named() {
        let keys = ring();
        let (_, parts) = sample(NAME, &keys);
        let sealed = concat(&parts);
        let cut = |len: usize| open_err(NAME, &keys, &sealed[..len]);
        let boundary = |n_parts: usize| parts[..n_parts].iter().map(|p| p.len()).sum::<usize>();
        let truncated = |at| FormatError::Truncated {
            object: NAME.into(),
            at,
        };
        assert_eq!(cut(0), truncated(Truncation::Empty));
        assert_eq!(cut(3), truncated(Truncation::InHeader { have: 3 }));
        assert_eq!(
            cut(HEADER_LEN - 1),
            truncated(Truncation::InHeader { have: 29 })
        );
        assert_eq!(cut(HEADER_LEN), truncated(Truncation::NoChunks));
        // At each chunk boundary before the final chunk: the last complete chunk is named.
        for n_chunks in 1..=10 {
            let e = cut(boundary(1 + n_chunks));
            assert_eq!(
                e,
                truncated(Truncation::AfterChunk {
                    last: n_chunks as u64 - 1
                })
            );
            assert!(e.to_string().contains(&format!(
                "truncated after chunk {} (no final chunk)",
                n_chunks - 1
            )));
        }
        // Inside a chunk: in the frame word, in the body, in the tag, in the final chunk.
        let full = FRAME_WORD_LEN + SMALL_CHUNK + TAG_LEN;
        assert_eq!(
            cut(boundary(3) + 2),
            truncated(Truncation::InChunk {
                chunk: 2,
                have: 2,
                need: 4
            })
        );
        assert_eq!(
            cut(boundary(3) + 100),
            truncated(Truncation::InChunk {
                chunk: 2,
                have: 100,
                need: full
            })
        );
        assert_eq!(
            cut(boundary(4) - 1),
            truncated(Truncation::InChunk {
                chunk: 2,
                have: full - 1,
                need: full
            })
        );
        let e = cut(sealed.len() - 1);
        assert!(
            matches!(
                e,
                FormatError::Truncated {
                    at: Truncation::InChunk { chunk: 10, .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn backup_dropped_swapped_or_duplicated_chunks_fail_at_that_chunk() {
        let keys = ring();
        let (_, parts) = sample(NAME, &keys);
        let rebuild = |order: &[usize]| -> Vec<u8> {
            order
                .iter()
                .flat_map(|&i| parts[i].iter().copied())
                .collect()
        };
        let auth = |chunk| FormatError::Authentication {
            object: NAME.into(),
            chunk,
        };
        // parts[0] is the header, parts[1 + i] chunk i, parts[11] the final chunk (10).
        let all: Vec<usize> = (0..parts.len()).collect();
        let without =
            |skip: usize| -> Vec<usize> { all.iter().copied().filter(|&i| i != skip).collect() };
        // Drop middle chunk 4: chunk 5 arrives in its place.
        assert_eq!(open_err(NAME, &keys, &rebuild(&without(5))), auth(4));
        // Drop chunk 0.
        assert_eq!(open_err(NAME, &keys, &rebuild(&without(1))), auth(0));
        // Drop the final chunk: truncated at a chunk boundary.
        assert_eq!(
            open_err(NAME, &keys, &rebuild(&without(11))),
            FormatError::Truncated {
                object: NAME.into(),
                at: Truncation::AfterChunk { last: 9 }
            }
        );
        // Swap chunks 2 and 6.
        let mut swapped = all.clone();
        swapped.swap(3, 7);
        assert_eq!(open_err(NAME, &keys, &rebuild(&swapped)), auth(2));
        // A chunk repeated.
        let mut repeated = all.clone();
        repeated.insert(4, 3);
        assert_eq!(open_err(NAME, &keys, &rebuild(&repeated)), auth(3));
        // The final chunk moved before the end: it is authentic for index 10 only.
        let mut moved = all.clone();
        moved.swap(10, 11);
        assert_eq!(open_err(NAME, &keys, &rebuild(&moved)), auth(9));
    }

    #[test]
    fn backup_swapped_or_spliced_objects_fail() {
        let keys = ring();
        let other = "chains/0000000007/base-000004.rsb";
        let (_, a) = sample(NAME, &keys);
        // Object A's bytes stored (or read) under B's name.
        let e = open_err(other, &keys, &concat(&a));
        assert_eq!(
            e,
            FormatError::Authentication {
                object: other.into(),
                chunk: 0
            }
        );
        assert!(e.to_string().contains("sealed under another name"), "{e}");
        // A's header with B's chunks (same key, same name for both): different salt, so
        // different object key.
        let (_, b_same_name) = sample(NAME, &keys);
        let mut spliced = a[0].to_vec();
        b_same_name[1..]
            .iter()
            .for_each(|p| spliced.extend_from_slice(p));
        assert!(matches!(
            open_err(NAME, &keys, &spliced),
            FormatError::Authentication { chunk: 0, .. }
        ));
        // A's first chunks followed by the tail of another object with the same name.
        let mut mixed = concat(&a[..4]);
        b_same_name[4..]
            .iter()
            .for_each(|p| mixed.extend_from_slice(p));
        assert!(matches!(
            open_err(NAME, &keys, &mixed),
            FormatError::Authentication { chunk: 3, .. }
        ));
    }

    #[test]
    fn backup_trailing_data_after_the_final_chunk_is_refused() {
        let keys = ring();
        let (_, parts) = sample(NAME, &keys);
        let mut s = concat(&parts);
        s.extend_from_slice(b"garbage");
        let e = open_err(NAME, &keys, &s);
        assert!(
            matches!(
                e,
                FormatError::TrailingData {
                    final_chunk: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e
            .to_string()
            .contains("trailing data after the final chunk"));
        // A whole second copy of the final chunk.
        let mut s = concat(&parts);
        s.extend_from_slice(parts.last().unwrap());
        assert!(matches!(
            open_err(NAME, &keys, &s),
            FormatError::TrailingData { .. }
        ));
        // Garbage pushed after finishing a clean object, one byte at a time.
        let mut opener = Opener::new(NAME, &keys);
        opener.push(&concat(&parts)).unwrap();
        assert!(matches!(
            opener.push(b"x"),
            Err(FormatError::TrailingData {
                final_chunk: 10,
                ..
            })
        ));
    }

    #[test]
    fn backup_unknown_key_id_names_the_id_and_the_ring() {
        let old = KeyRing::from_keys([1u8; KEY_LEN], &[]).unwrap();
        let other = KeyRing::from_keys([2u8; KEY_LEN], &[[3u8; KEY_LEN]]).unwrap();
        let sealed = seal_all(NAME, &old, 1, b"data").unwrap();
        let e = open_err(NAME, &other, &sealed);
        assert_eq!(
            e,
            FormatError::UnknownKey {
                object: NAME.into(),
                key_id: old.current_id(),
                have: other.describe_ids(),
            }
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "sealed with key id {}, which is not in the key ring (have: {} (current), {})",
                old.current_id(),
                other.ids()[0],
                other.ids()[1]
            )),
            "{text}"
        );
        // The header alone is enough to know which key is missing.
        let mut opener = Opener::new(NAME, &other);
        assert!(matches!(
            opener.push(&sealed[..HEADER_LEN]),
            Err(FormatError::UnknownKey { .. })
        ));
    }

    #[test]
    fn backup_rotation_keeps_old_objects_readable() {
        let old_ring = KeyRing::from_keys([1u8; KEY_LEN], &[]).unwrap();
        let old_obj = seal_all("a", &old_ring, 1, b"before rotation").unwrap();
        let new_ring = old_ring.rotated([2u8; KEY_LEN]).unwrap();
        assert_ne!(new_ring.current_id(), old_ring.current_id());
        let new_obj = seal_all("b", &new_ring, 1, b"after rotation").unwrap();
        assert_eq!(
            Header::parse("a", &old_obj).unwrap().key_id,
            old_ring.current_id()
        );
        assert_eq!(
            Header::parse("b", &new_obj).unwrap().key_id,
            new_ring.current_id()
        );
        assert_eq!(
            open_all("a", &new_ring, &old_obj).unwrap(),
            b"before rotation"
        );
        assert_eq!(
            open_all("b", &new_ring, &new_obj).unwrap(),
            b"after rotation"
        );
        // A node that has not received the new key yet says which key it lacks.
        assert!(matches!(
            open_all("b", &old_ring, &new_obj),
            Err(FormatError::UnknownKey { key_id, .. }) if key_id == new_ring.current_id()
        ));
        // Once the old key is retired, old objects name it.
        let retired = KeyRing::from_keys([2u8; KEY_LEN], &[]).unwrap();
        assert!(matches!(
            open_all("a", &retired, &old_obj),
            Err(FormatError::UnknownKey { key_id, .. }) if key_id == old_ring.current_id()
        ));
    }

    #[test]
    fn backup_memory_stays_bounded_while_streaming_50_mib() {
        let keys = ring();
        // 50 MiB in 3 MiB + 1 pieces, mostly compressible, with 3 MiB of noise in one push
        // (3 MiB of compressed output from a single call).
        let text = records(8 << 20, 4);
        let burst = noise(3 << 20, 5);
        let piece = 3 * (1 << 20) + 1;
        let mut script: Vec<&[u8]> = Vec::new();
        let mut total = 0;
        while total < 50 << 20 {
            let p: &[u8] = if script.len() == 7 {
                &burst
            } else {
                let at = total % (text.len() - piece);
                &text[at..at + piece.min((50 << 20) - total)]
            };
            total += p.len();
            script.push(p);
        }
        // The opener's output, checked against the script as it arrives.
        let (mut part, mut offset, mut opened) = (0, 0, 0);
        let mut check = |plain: &[u8]| {
            let mut rest = plain;
            while !rest.is_empty() {
                let want = &script[part][offset..];
                let n = want.len().min(rest.len());
                assert!(rest[..n] == want[..n], "plaintext at {opened}");
                (rest, offset, opened) = (&rest[n..], offset + n, opened + n);
                if offset == script[part].len() {
                    (part, offset) = (part + 1, 0);
                }
            }
        };
        let mut sealer = Sealer::new(NAME, &keys, 1).unwrap();
        let mut opener = Opener::new(NAME, &keys);
        let (mut max_sealer, mut max_opener) = (0, 0);
        for p in &script {
            for sealed in sealer.push(p).unwrap() {
                // Feed the opener in odd pieces, as ranged GETs would.
                for s in sealed.chunks(700_001) {
                    opener.push_each(s, &mut check).unwrap();
                    max_opener = max_opener.max(opener.buffered());
                    let u = &opener.unsealer;
                    let spare = u.spare.as_ref().map_or(0, Vec::capacity);
                    assert!(u.buf.capacity() + spare <= DEFAULT_CHUNK_SIZE + 64);
                }
            }
            max_sealer = max_sealer.max(sealer.buffered());
            // The allocation never grew past two chunks, not even inside a call.
            assert!(sealer.pending.capacity() <= 2 * DEFAULT_CHUNK_SIZE);
        }
        let (rest, stats) = sealer.finish().unwrap();
        for sealed in rest {
            opener.push_each(&sealed, &mut check).unwrap();
        }
        assert!(opener.inflater.scratch.capacity() <= OPEN_PIECE);
        assert_eq!(opener.finish().unwrap(), stats);
        assert_eq!(stats.plaintext_len, total as u64);
        assert_eq!((part, offset), (script.len(), 0), "all plaintext came back");
        assert!(stats.chunks >= 4, "{stats:?}");
        assert!(
            (DEFAULT_CHUNK_SIZE / 2..=2 * DEFAULT_CHUNK_SIZE).contains(&max_sealer),
            "sealer held {max_sealer} bytes"
        );
        assert!(
            max_opener <= DEFAULT_CHUNK_SIZE + TRAILER_LEN + TAG_LEN,
            "opener held {max_opener} bytes"
        );
    }

    #[test]
    fn backup_plaintext_comes_out_in_bounded_pieces_however_well_it_compressed() {
        // 256 MiB of zeros (as `SETRANGE key 268435455 x` would make) fit one small chunk.
        let keys = ring();
        let zeros = vec![0u8; 1 << 20];
        let mut sealer = Sealer::new(NAME, &keys, 1).unwrap();
        let mut sealed = Vec::new();
        for _ in 0..256 {
            sealed.extend(sealer.push(&zeros).unwrap());
        }
        let (rest, stats) = sealer.finish().unwrap();
        sealed.extend(rest);
        assert_eq!(stats.chunks, 1, "{stats:?}");
        let mut opener = Opener::new(NAME, &keys);
        let (mut total, mut largest, mut pieces) = (0, 0, 0);
        for part in &sealed {
            opener
                .push_each(part, |plain| {
                    assert!(plain.iter().all(|&b| b == 0));
                    (total, largest, pieces) =
                        (total + plain.len(), largest.max(plain.len()), pieces + 1);
                })
                .unwrap();
        }
        assert_eq!(opener.finish().unwrap(), stats);
        assert_eq!(total, 256 << 20);
        assert!(
            largest <= OPEN_PIECE && pieces >= 256,
            "{pieces} pieces, largest {largest}"
        );
    }

    #[test]
    fn backup_errors_stick_and_bad_parameters_are_refused() {
        let keys = ring();
        let mut opener = Opener::new(NAME, &keys);
        let first = opener.push(b"XXXX").unwrap_err();
        assert_eq!(opener.push(b"RSBK").unwrap_err(), first);
        assert_eq!(opener.finish().unwrap_err(), first);
        assert!(matches!(
            Sealer::new(NAME, &keys, 100),
            Err(FormatError::InvalidLevel { level: 100, .. })
        ));
        assert!(matches!(
            Sealer::with_chunk_size(NAME, &keys, 1, 10),
            Err(FormatError::BadChunkSize { size: 10, .. })
        ));
        assert!(matches!(
            Sealer::with_chunk_size(NAME, &keys, 1, MAX_CHUNK_SIZE + 1),
            Err(FormatError::BadChunkSize { .. })
        ));
    }

    /// Seal chunks by hand, so authentic but inconsistent contents can be built.
    fn hand_sealed(chunks: &[(&[u8], bool)]) -> Vec<u8> {
        testing::hand_sealed(NAME, &ring(), chunks)
    }

    fn trailer(plain: u64, compressed: u64) -> Vec<u8> {
        [plain.to_be_bytes(), compressed.to_be_bytes()].concat()
    }

    #[test]
    fn backup_authentic_but_inconsistent_contents_are_refused() {
        let keys = ring();
        let frame = zstd::bulk::compress(b"hello", 1).unwrap();
        let n = frame.len() as u64;
        // The hand-built object is valid...
        let good = hand_sealed(&[(&[frame.clone(), trailer(5, n)].concat(), true)]);
        assert_eq!(open_all(NAME, &keys, &good).unwrap(), b"hello");
        // ...not zstd data.
        let bad = hand_sealed(&[(&[b"not zstd".to_vec(), trailer(0, 8)].concat(), true)]);
        let e = open_all(NAME, &keys, &bad).unwrap_err();
        assert!(
            matches!(e, FormatError::Decompression { chunk: 0, .. }),
            "{e}"
        );
        // A zstd frame cut short.
        let cut = &frame[..frame.len() - 2];
        let bad = hand_sealed(&[(&[cut.to_vec(), trailer(5, n - 2)].concat(), true)]);
        let e = open_all(NAME, &keys, &bad).unwrap_err();
        assert!(matches!(e, FormatError::Decompression { .. }), "{e}");
        // Data after the zstd frame.
        let extra = [frame.clone(), b"zz".to_vec(), trailer(5, n + 2)].concat();
        let e = open_all(NAME, &keys, &hand_sealed(&[(&extra, true)])).unwrap_err();
        assert!(
            e.to_string().contains("after the end of the zstd frame"),
            "{e}"
        );
        // A trailer that disagrees.
        let lying = hand_sealed(&[(&[frame.clone(), trailer(6, n)].concat(), true)]);
        let e = open_all(NAME, &keys, &lying).unwrap_err();
        assert_eq!(
            e,
            FormatError::LengthMismatch {
                object: NAME.into(),
                what: "plaintext",
                recorded: 6,
                actual: 5
            }
        );
        let lying = hand_sealed(&[(&[frame.clone(), trailer(5, n + 1)].concat(), true)]);
        assert!(matches!(
            open_all(NAME, &keys, &lying),
            Err(FormatError::LengthMismatch {
                what: "compressed",
                ..
            })
        ));
    }
}

/// Objects no sealer writes, for the tests of this module and of the restore.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Seal `chunks` (compressed bytes, is final) by hand with the ring's current key and
    /// chunk size [`MIN_CHUNK_SIZE`]: authentic, whatever the bytes say.
    pub(crate) fn hand_sealed(name: &str, keys: &KeyRing, chunks: &[(&[u8], bool)]) -> Vec<u8> {
        let (key_id, key) = keys.current();
        let header = Header {
            key_id,
            chunk_size: MIN_CHUNK_SIZE as u32,
            salt: [7u8; SALT_LEN],
        };
        let mut cipher = ChunkCipher::new(key, &header, name);
        let mut out = header.to_bytes().to_vec();
        for (index, (body, is_final)) in chunks.iter().enumerate() {
            let word = frame_word(*is_final, body.len());
            let mut buf = body.to_vec();
            let tag = cipher.seal(index as u32, word, &mut buf);
            out.extend_from_slice(&word.to_be_bytes());
            out.extend_from_slice(&buf);
            out.extend_from_slice(&tag);
        }
        out
    }
}
