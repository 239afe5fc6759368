//! One agent per data directory: an exclusive, non-blocking flock held for the agent's life.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(path: &Path, data_dir: &Path) -> Result<DataDirLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; the kernel releases it when the process dies.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "data directory {} is already in use by another redis-steward (pid {}); refusing to start a second agent on it",
                data_dir.display(),
                holder.trim().parse::<u32>().map(|p| p.to_string()).unwrap_or_else(|_| "unknown".into())
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DataDirLock { _file: file })
    }
}
