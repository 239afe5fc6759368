//! 32-byte secret keys kept in files (the data store's gossip key, backup keys): raw
//! bytes or 64 hex digits, and never readable by group or others.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Read a 32-byte key. Refuses files that group or others can read, since anyone holding the
/// key can join the data store's gossip or read its backups.
pub fn load(path: &Path) -> Result<[u8; 32]> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} has mode {mode:o}; a key must be readable by its owner only (chmod 600)",
            path.display()
        );
    }
    let raw =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    parse(&raw).with_context(|| format!("key file {}", path.display()))
}

/// 32 raw bytes, or 64 hex digits with optional surrounding white space.
pub fn parse(raw: &[u8]) -> Result<[u8; 32]> {
    if raw.len() == 32 {
        return Ok(raw.try_into().expect("length checked"));
    }
    let text = std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .unwrap_or_default();
    let mut key = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
        return Ok(key);
    }
    bail!(
        "expected 32 raw bytes or 64 hex digits, found {} bytes",
        raw.len()
    )
}

/// Write a fresh random key as hex (mode 0600), e.g. for `redis-steward keygen`.
pub fn generate(path: &Path) -> Result<()> {
    let key: [u8; 32] = rand::random();
    crate::node::secrets::write_file_atomic(
        path,
        format!("{}\n", hex::encode(key)).as_bytes(),
        0o600,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_raw_or_hex_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        generate(&p).unwrap();
        let k = load(&p).unwrap();
        std::fs::write(&p, k).unwrap();
        assert_eq!(load(&p).unwrap(), k);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("chmod 600"));
        assert!(parse(b"short")
            .unwrap_err()
            .to_string()
            .contains("32 raw bytes"));
        assert!(parse(&[b'z'; 64]).is_err());
    }
}
