//! The agent's own secrets (admin and replication passwords), kept in the state directory
//! with mode 0600, plus the helpers every module uses to write private files safely.

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSecrets {
    pub admin_password: String,
    pub replication_password: String,
}

impl std::fmt::Debug for AgentSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentSecrets(<redacted>)")
    }
}

/// A 256-bit random secret as 64 hex characters.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// Write `content` to `path` atomically (temp file + rename) with the given mode, so a crash
/// never leaves a half-written file and the secret is never readable by others, even briefly.
pub fn write_file_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("path has no parent directory")?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(content)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Create `dir` (and parents) and set it to `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions on {}", dir.display()))?;
    Ok(())
}

/// Load the secrets file, or create it with fresh random secrets on first start.
pub fn load_or_create(path: &Path) -> Result<AgentSecrets> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} has mode {mode:o}; it holds secrets and must not be readable by others (chmod 600)",
                    path.display()
                );
            }
            toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = AgentSecrets {
                admin_password: random_secret(),
                replication_password: random_secret(),
            };
            write_file_atomic(path, toml::to_string(&s)?.as_bytes(), 0o600)?;
            Ok(s)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secrets.toml");
        let a = load_or_create(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.admin_password, b.admin_password);
        assert_eq!(a.admin_password.len(), 64);
        assert_ne!(a.admin_password, a.replication_password);
        assert!(!format!("{a:?}").contains(&a.admin_password));
    }

    #[test]
    fn world_readable_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secrets.toml");
        load_or_create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
