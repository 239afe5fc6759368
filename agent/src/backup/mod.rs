//! Backups and restore: the shipper that uploads snapshots and the write-ahead log (redis's
//! own multi-part AOF), the sealed object format and its keys, the catalog of chains,
//! retention, reading backups back into a data directory, and what an empty node starts from.

pub mod aof;
pub mod aof_cut;
pub mod bootstrap;
pub mod catalog;
pub mod fetch_ahead;
pub mod format;
pub mod keys;
pub mod plan;
pub mod restore;
pub mod retention;
pub mod shipper;

/// The wall clock in unix milliseconds, the backups' one time unit: chain starts and segment
/// stamps, the shipper's status, the name a restore moves an old data directory aside to.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
