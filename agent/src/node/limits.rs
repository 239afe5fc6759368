//! Memory and connection limits: how much memory this node really has (physical RAM, the
//! cgroup limit, the operator's override), the maxclients rule that follows from it, and the
//! file-descriptor limit redis needs to honour it.
//!
//! Parsing and arithmetic are pure; the thin `detect_*` / `raise_*` functions do the I/O.

use serde::Serialize;
use std::path::Path;

/// Redis keeps this many descriptors for itself beyond maxclients (`CONFIG_MIN_RESERVED_FDS`).
pub const REDIS_RESERVED_FDS: u64 = 32;

/// The product rule: `maxclients = max(10000, 4 × memory in MB)`.
pub fn maxclients_for(memory_mb: u64) -> u64 {
    std::cmp::max(10_000, memory_mb.saturating_mul(4))
}

/// Where the effective memory figure came from, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    PhysicalRam,
    Cgroup,
    Override,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub mb: u64,
    pub source: MemorySource,
}

/// The least of the known figures; ties prefer the more specific source (override, then cgroup).
pub fn effective_memory(
    physical_mb: u64,
    cgroup_mb: Option<u64>,
    override_mb: Option<u64>,
) -> Memory {
    let mut best = Memory {
        mb: physical_mb,
        source: MemorySource::PhysicalRam,
    };
    for (mb, source) in [
        (cgroup_mb, MemorySource::Cgroup),
        (override_mb, MemorySource::Override),
    ] {
        if let Some(mb) = mb {
            if mb <= best.mb {
                best = Memory { mb, source };
            }
        }
    }
    best
}

/// `MemTotal` from /proc/meminfo, in MB.
pub fn parse_meminfo_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// A cgroup memory limit file (v2 `memory.max` or v1 `memory.limit_in_bytes`), in MB.
/// "max" and the v1 "unlimited" sentinel (a huge number) mean no limit.
pub fn parse_cgroup_limit_mb(content: &str) -> Option<u64> {
    let s = content.trim();
    if s == "max" {
        return None;
    }
    let bytes: u64 = s.parse().ok()?;
    // cgroup v1 reports "no limit" as a page-rounded i64::MAX.
    if bytes >= (1u64 << 62) {
        return None;
    }
    Some(bytes / (1024 * 1024))
}

/// The cgroup paths of this process from /proc/self/cgroup: (v2 path, v1 memory path).
pub fn parse_proc_cgroup(content: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in content.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        if ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The tightest cgroup memory limit that applies to this process, walking up the hierarchy.
pub fn detect_cgroup_limit_mb() -> Option<u64> {
    let (v2, v1) = parse_proc_cgroup(&read(Path::new("/proc/self/cgroup"))?);
    let candidates: Vec<(String, &str)> = [
        v2.map(|p| (format!("/sys/fs/cgroup{p}"), "memory.max")),
        v1.map(|p| (format!("/sys/fs/cgroup/memory{p}"), "memory.limit_in_bytes")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut best: Option<u64> = None;
    for (dir, file) in candidates {
        let mut dir = std::path::PathBuf::from(dir);
        loop {
            if let Some(mb) = read(&dir.join(file))
                .as_deref()
                .and_then(parse_cgroup_limit_mb)
            {
                best = Some(best.map_or(mb, |b| b.min(mb)));
            }
            if !dir.pop() || !dir.starts_with("/sys/fs/cgroup") {
                break;
            }
        }
    }
    best
}

pub fn detect_memory(override_mb: Option<u64>) -> Memory {
    let physical = read(Path::new("/proc/meminfo"))
        .as_deref()
        .and_then(parse_meminfo_total_mb)
        .unwrap_or(1024);
    effective_memory(physical, detect_cgroup_limit_mb(), override_mb)
}

/// What happened when the agent sized RLIMIT_NOFILE for redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdLimit {
    pub wanted: u64,
    pub soft: u64,
    pub hard: u64,
    /// maxclients redis can actually honour with this limit.
    pub maxclients_possible: u64,
}

impl FdLimit {
    pub fn sufficient(&self) -> bool {
        self.soft >= self.wanted
    }
}

/// Raise this process's RLIMIT_NOFILE (inherited by redis) so `maxclients` fits. Raising the
/// hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes as high as the hard one.
pub fn raise_nofile_for(maxclients: u64) -> std::io::Result<FdLimit> {
    let wanted = maxclients + REDIS_RESERVED_FDS;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < wanted {
            let want = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: lim.rlim_max.max(wanted),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                // No privilege to raise the hard limit: go as far as it allows.
                let capped = libc::rlimit {
                    rlim_cur: lim.rlim_max.min(wanted),
                    rlim_max: lim.rlim_max,
                };
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &capped);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    Ok(FdLimit {
        wanted,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
        maxclients_possible: lim
            .rlim_cur
            .saturating_sub(REDIS_RESERVED_FDS)
            .min(maxclients),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxclients_rule() {
        assert_eq!(maxclients_for(0), 10_000);
        assert_eq!(maxclients_for(1024), 10_000);
        assert_eq!(maxclients_for(2500), 10_000);
        assert_eq!(maxclients_for(2501), 10_004);
        assert_eq!(maxclients_for(4096), 16_384);
        assert_eq!(maxclients_for(65536), 262_144);
    }

    #[test]
    fn effective_memory_takes_the_least() {
        use MemorySource::*;
        let m = |mb, source| Memory { mb, source };
        assert_eq!(effective_memory(8000, None, None), m(8000, PhysicalRam));
        assert_eq!(effective_memory(8000, Some(2000), None), m(2000, Cgroup));
        assert_eq!(
            effective_memory(8000, Some(2000), Some(4000)),
            m(2000, Cgroup)
        );
        assert_eq!(
            effective_memory(8000, Some(2000), Some(1000)),
            m(1000, Override)
        );
        assert_eq!(
            effective_memory(8000, None, Some(9000)),
            m(8000, PhysicalRam)
        );
        assert_eq!(
            effective_memory(8000, Some(8000), Some(8000)),
            m(8000, Override)
        );
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_meminfo_total_mb("MemTotal:       24522324 kB\nMemFree: 1 kB\n"),
            Some(23947)
        );
        assert_eq!(parse_meminfo_total_mb("garbage"), None);
        assert_eq!(parse_cgroup_limit_mb("max\n"), None);
        assert_eq!(parse_cgroup_limit_mb("9223372036854771712\n"), None);
        assert_eq!(parse_cgroup_limit_mb("536870912\n"), Some(512));
        assert_eq!(parse_cgroup_limit_mb("junk"), None);
        let (v2, v1) =
            parse_proc_cgroup("12:memory:/docker/abc\n11:cpu,cpuacct:/x\n0::/user.slice\n");
        assert_eq!(v2.as_deref(), Some("/user.slice"));
        assert_eq!(v1.as_deref(), Some("/docker/abc"));
        let (v2, v1) = parse_proc_cgroup("0::/\n");
        assert_eq!((v2.as_deref(), v1), (Some("/"), None));
    }

    #[test]
    fn detection_runs_on_this_machine() {
        let m = detect_memory(None);
        assert!(m.mb > 0);
        assert_eq!(detect_memory(Some(1)).mb, 1);
    }
}
