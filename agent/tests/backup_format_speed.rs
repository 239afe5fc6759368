//! Throughput of the sealed backup format on this machine: 1 GiB of RDB-like data through
//! zstd + AES-256-GCM in one pass on one core, no I/O — the limit any backup upload or restore
//! on one core can reach. Ignored by default (it takes a minute in release, far longer in debug):
//!
//! ```text
//! cargo test --release -p redis-steward --test backup_format_speed -- --ignored --nocapture
//! ```
//!
//! MB/s are of plaintext, MB = 10^6 bytes. Each figure is given per wall-clock second and per
//! second of this thread's CPU time: on a busy machine (other builds and tests running) only
//! the second one says what the code can do.

use std::time::Instant;

use bytes::Bytes;
use redis_steward::backup::format::{Opener, Sealer};
use redis_steward::backup::keys::KeyRing;

const TOTAL: usize = 1 << 30;
/// Distinct data pushed repeatedly to make up 1 GiB: far larger than zstd's window at levels
/// 1 and 3 (at most 2 MiB), so the repetition gives zstd nothing to exploit.
const POOL: usize = 64 << 20;
/// What a caller reading an AOF base file would push at a time.
const PIECE: usize = 1 << 20;

/// A small deterministic PRNG (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// RDB-like bytes: per entry an opcode, a length-prefixed key like `user:48213:session`, and a
/// value that is a small integer (30 % of entries), a JSON-ish document from a small vocabulary
/// (45 %), a random hex token (20 %), or an already-compressed blob of 64..1024 random bytes
/// (5 %, about a quarter of the bytes), with occasional TTLs. Roughly what a cache or session
/// store holds; zstd level 1 shrinks it about 1.7-fold.
fn rdb_like(len: usize, seed: u64) -> Vec<u8> {
    const PREFIXES: [&str; 6] = ["user", "session", "cart", "rate", "feed", "product"];
    const FIELDS: [&str; 8] = [
        "name",
        "email",
        "created_at",
        "plan",
        "status",
        "items",
        "price",
        "country",
    ];
    const WORDS: [&str; 12] = [
        "active", "premium", "free", "pending", "DE", "US", "FR", "shipped", "blue", "large",
        "true", "false",
    ];
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        if rng.below(8) == 0 {
            out.push(0xfc); // expiry in ms
            out.extend_from_slice(&(1_700_000_000_000 + rng.below(1 << 30)).to_le_bytes());
        }
        let kind = rng.below(100);
        out.push(match kind {
            0..=29 => 0,  // string
            30..=59 => 4, // hash (listpack in a real RDB)
            _ => 0,
        });
        let key = format!(
            "{}:{}:{}",
            PREFIXES[rng.below(6) as usize],
            rng.below(1_000_000),
            FIELDS[rng.below(8) as usize]
        );
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        match kind {
            0..=29 => {
                let n = rng.below(100_000);
                out.push(0xc2);
                out.extend_from_slice(&(n as u32).to_le_bytes());
            }
            30..=74 => {
                let mut doc = String::from("{");
                for i in 0..(2 + rng.below(6)) {
                    if i > 0 {
                        doc.push(',');
                    }
                    doc.push_str(&format!(
                        "\"{}\":\"{}\"",
                        FIELDS[rng.below(8) as usize],
                        WORDS[rng.below(12) as usize]
                    ));
                }
                doc.push('}');
                out.extend_from_slice(&(doc.len() as u16).to_le_bytes());
                out.extend_from_slice(doc.as_bytes());
            }
            75..=94 => {
                let n = 16 + rng.below(48) as usize;
                out.push(n as u8 * 2);
                for _ in 0..n {
                    let b = rng.next() as u8;
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
            _ => {
                let n = 64 + rng.below(960) as usize;
                out.extend_from_slice(&(n as u16).to_le_bytes());
                for _ in 0..n.div_ceil(8) {
                    out.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// Wall-clock and thread-CPU stopwatch.
struct Stopwatch {
    wall: Instant,
    cpu: f64,
}

fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: thread_cpu_secs(),
        }
    }

    /// "W MB/s (C MB/s of CPU)" for `bytes` since the start.
    fn rate(&self, bytes: usize) -> String {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = thread_cpu_secs() - self.cpu;
        format!(
            "{:.0} MB/s ({:.0} MB/s of CPU)",
            bytes as f64 / 1e6 / wall,
            bytes as f64 / 1e6 / cpu
        )
    }
}

fn pieces(pool: &[u8]) -> impl Iterator<Item = &[u8]> {
    (0..TOTAL / PIECE).map(move |i| {
        let at = (i * PIECE) % pool.len();
        &pool[at..at + PIECE]
    })
}

#[test]
#[ignore = "throughput measurement; run in release with --ignored --nocapture"]
fn backup_format_speed() {
    assert_eq!(POOL % PIECE, 0);
    let pool = rdb_like(POOL, 42);
    let keys = KeyRing::from_keys([7u8; 32], &[]).unwrap();
    let name = "chains/0000000001/base-000001.rsb";
    println!(
        "1 GiB of RDB-like data ({} MiB distinct), pushed in {} KiB pieces, one core, no I/O",
        POOL >> 20,
        PIECE >> 10
    );
    for level in [1, 3] {
        // zstd alone, streaming, for comparison: what the format adds on top.
        let watch = Stopwatch::start();
        let mut encoder = zstd::stream::write::Encoder::new(std::io::sink(), level).unwrap();
        for p in pieces(&pool) {
            std::io::Write::write_all(&mut encoder, p).unwrap();
        }
        encoder.finish().unwrap();
        let zstd_only = watch.rate(TOTAL);

        let watch = Stopwatch::start();
        let mut sealer = Sealer::new(name, &keys, level).unwrap();
        let mut sealed: Vec<Bytes> = Vec::with_capacity(TOTAL / (1 << 20));
        for p in pieces(&pool) {
            sealed.extend(sealer.push(p).unwrap());
        }
        let (rest, stats) = sealer.finish().unwrap();
        sealed.extend(rest);
        let seal = watch.rate(TOTAL);
        assert_eq!(stats.plaintext_len, TOTAL as u64);

        let watch = Stopwatch::start();
        let mut opener = Opener::new(name, &keys);
        let mut opened = 0usize;
        for part in &sealed {
            // As a restore would: plaintext in bounded pieces, checked against the pool (the
            // pieces do not line up with the pool's end, so compare in up to two runs).
            opener
                .push_each(part, |plain| {
                    let at = opened % POOL;
                    let first = plain.len().min(POOL - at);
                    assert!(plain[..first] == pool[at..at + first]);
                    assert!(plain[first..] == pool[..plain.len() - first]);
                    opened += plain.len();
                })
                .unwrap();
        }
        let open_stats = opener.finish().unwrap();
        let open = watch.rate(TOTAL);
        assert_eq!(opened, TOTAL);
        assert_eq!(open_stats, stats);

        println!(
            "zstd level {level}: seal {seal}, open {open}; zstd alone (compress, streaming): \
             {zstd_only}; ratio {:.2} ({} MiB -> {} MiB sealed, {} chunks)",
            stats.plaintext_len as f64 / stats.compressed_len as f64,
            stats.plaintext_len >> 20,
            stats.sealed_len >> 20,
            stats.chunks
        );
    }
}
