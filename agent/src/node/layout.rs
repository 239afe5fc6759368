//! Where the agent keeps its files. One place, so every module agrees.

use std::path::{Path, PathBuf};

/// Paths under the state directory (mode 0700: secrets, generated config, sockets) and the
/// data directory (redis's `dir`, holding `appendonlydir`).
#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path, state_dir: &Path) -> Self {
        Layout {
            data_dir: data_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }
    pub fn redis_conf(&self) -> PathBuf {
        self.state_dir.join("redis.conf")
    }
    pub fn acl_file(&self) -> PathBuf {
        self.state_dir.join("users.acl")
    }
    /// The agent's private line to redis (no TCP port for the admin user).
    pub fn redis_socket(&self) -> PathBuf {
        self.state_dir.join("redis.sock")
    }
    pub fn secrets_file(&self) -> PathBuf {
        self.state_dir.join("secrets.toml")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.data_dir.join(".redis-steward.lock")
    }
    pub fn aof_dir(&self) -> PathBuf {
        self.data_dir.join(AOF_DIR_NAME)
    }
}

pub const AOF_DIR_NAME: &str = "appendonlydir";
pub const AOF_FILE_NAME: &str = "appendonly.aof";
/// Redis 7 names its multi-part AOF manifest after `appendfilename`.
pub const AOF_MANIFEST_NAME: &str = "appendonly.aof.manifest";
