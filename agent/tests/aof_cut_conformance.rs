//! `aof_cut::find_cut` against the reference: `redis-check-aof --truncate-to-timestamp`
//! (Debian's redis-tools) on generated append-only files — commands of every size, MULTI
//! blocks, seconds without writes — cut at every second they span.

use rand::{Rng, SeedableRng};
use redis_steward::backup::aof_cut::find_cut;
use std::process::Command;

fn command(rng: &mut impl Rng) -> Vec<u8> {
    let argc = rng.random_range(1..5);
    let mut out = format!("*{argc}\r\n").into_bytes();
    for i in 0..argc {
        let arg: Vec<u8> = if i == 0 {
            ["SET", "DEL", "INCR", "LPUSH", "HSET"][rng.random_range(0..5)]
                .as_bytes()
                .to_vec()
        } else {
            let len = if rng.random_bool(0.1) {
                rng.random_range(1000..70_000)
            } else {
                rng.random_range(0..20)
            };
            // Payloads that look like protocol must not confuse the reader.
            (0..len).map(|k| b"*#$\r\nab"[k % 7]).collect()
        };
        out.extend(format!("${}\r\n", arg.len()).as_bytes());
        out.extend(&arg);
        out.extend(b"\r\n");
    }
    out
}

fn simple(name: &str) -> Vec<u8> {
    format!("*1\r\n${}\r\n{name}\r\n", name.len()).into_bytes()
}

/// An AOF over `seconds` seconds starting at `t0`, and the seconds it annotates.
fn generate(seed: u64, t0: u64, seconds: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut aof = Vec::new();
    for t in t0..t0 + seconds {
        if rng.random_bool(0.3) {
            continue; // a quiet second: no annotation
        }
        aof.extend(format!("#TS:{t}\r\n").as_bytes());
        for _ in 0..rng.random_range(1..6) {
            if rng.random_bool(0.2) {
                aof.extend(simple("MULTI"));
                for _ in 0..rng.random_range(1..4) {
                    aof.extend(command(&mut rng));
                }
                aof.extend(simple("EXEC"));
            } else {
                aof.extend(command(&mut rng));
            }
        }
    }
    aof
}

#[test]
fn cuts_where_redis_check_aof_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for seed in 0..6 {
        let t0 = 1_790_000_000 + seed * 100;
        let aof = generate(seed, t0, 12);
        for t in t0 - 1..=t0 + 12 {
            let path = dir.path().join(format!("s{seed}-{t}.aof"));
            std::fs::write(&path, &aof).unwrap();
            let out = Command::new("redis-check-aof")
                .arg("--truncate-to-timestamp")
                .arg(t.to_string())
                .arg(&path)
                .output()
                .expect("redis-check-aof (Debian's redis-tools) must be installed");
            let said = String::from_utf8_lossy(&out.stdout);
            let ours = find_cut(&aof[..], Some(t)).unwrap();
            // redis-check-aof refuses to truncate to nothing; the cut keeps nothing then (a
            // restore to that second is the base alone).
            if said.contains("has nothing before timestamp") {
                assert_eq!(ours.keep_bytes, 0, "seed {seed}, second {t}");
                compared += 1;
                continue;
            }
            assert!(out.status.success(), "redis-check-aof failed: {said}");
            let reference = std::fs::metadata(&path).unwrap().len();
            assert_eq!(ours.keep_bytes, reference, "seed {seed}, second {t}");
            std::fs::remove_file(&path).unwrap();
            compared += 1;
        }
        // No target: everything is kept.
        assert_eq!(
            find_cut(&aof[..], None).unwrap().keep_bytes,
            aof.len() as u64
        );
    }
    assert_eq!(compared, 6 * 14);
}
