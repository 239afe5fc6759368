//! The backup key ring: which 32-byte keys may open backup objects, and which one seals new ones.
//!
//! Backup keys live in key files (32 raw bytes or 64 hex digits, loaded by [`crate::node::keyfile`],
//! which refuses any file that group or others can read). Every sealed object names the key that
//! sealed it by a [`KeyId`]: the first 4 bytes of SHA-256(`"redis-steward backup key id"` ‖
//! key), shown as 8 hex digits. The id reveals nothing useful about the key (it is a hash of it)
//! but lets an opener pick the right key, or say exactly which one is missing.
//!
//! Rotation never rewrites history: the operator generates a new key, makes it the *current*
//! key and keeps the old files as *previous* keys. New objects are sealed under the current key;
//! objects sealed under any key in the ring still open. An old key can be dropped once no
//! retained backup names its id (the chain manifests say which ids are in use).
//!
//! Everything here except [`KeyRing::load`] is pure.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Length of a backup key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Domain separation for [`key_id`], so a backup key id never equals any other hash of the key.
const KEY_ID_CONTEXT: &[u8] = b"redis-steward backup key id";

/// Names a backup key without revealing it: the first 4 bytes of
/// SHA-256(`"redis-steward backup key id"` ‖ key). Displayed as 8 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The id of a backup key.
pub fn key_id(key: &[u8; KEY_LEN]) -> KeyId {
    let digest = Sha256::new()
        .chain_update(KEY_ID_CONTEXT)
        .chain_update(key)
        .finalize();
    KeyId(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// Why a key ring could not be built. Every variant names the key file(s) involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The file is missing, unreadable, readable by group or others, or not a 32-byte key.
    /// The message comes from [`crate::node::keyfile::load`] and names the file.
    #[error("backup key: {message}")]
    File { path: PathBuf, message: String },
    /// Two different keys hash to the same 4-byte id (about one chance in 4 billion): the
    /// objects they seal could not be told apart, so the newer key must be regenerated.
    #[error(
        "backup keys {first} and {second} are different keys with the same key id {id}; \
         generate a new key for {second}"
    )]
    IdCollision {
        id: KeyId,
        first: String,
        second: String,
    },
}

/// One key and its id.
#[derive(Clone)]
struct Entry {
    id: KeyId,
    key: [u8; KEY_LEN],
    /// Where it came from, for error messages: a file path, or "key #n" for in-memory keys.
    source: String,
}

/// The keys a node may open backups with; the first one (the *current* key) seals.
///
/// `Debug` shows key ids only, never key bytes.
#[derive(Clone)]
pub struct KeyRing {
    /// Current key first, then the previous keys in the order given; no id twice.
    entries: Vec<Entry>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current_id())
            .field("ids", &self.ids())
            .finish()
    }
}

impl KeyRing {
    /// Load the current key and the previous keys from their files. A file that is missing,
    /// readable by group or others (mode must be 0600 or stricter) or not a key is an error
    /// naming it. The same key listed twice (e.g. the current key also among the previous
    /// ones) is kept once.
    pub fn load(current: &Path, previous: &[PathBuf]) -> Result<KeyRing, KeyError> {
        let read = |path: &Path| -> Result<(String, [u8; KEY_LEN]), KeyError> {
            let key = crate::node::keyfile::load(path).map_err(|e| KeyError::File {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
            Ok((path.display().to_string(), key))
        };
        let mut keys = vec![read(current)?];
        for path in previous {
            keys.push(read(path)?);
        }
        Self::build(keys)
    }

    /// A key ring from keys in memory (tests, or keys fetched from elsewhere): `current` seals,
    /// all of them open.
    pub fn from_keys(
        current: [u8; KEY_LEN],
        previous: &[[u8; KEY_LEN]],
    ) -> Result<KeyRing, KeyError> {
        let keys = std::iter::once(current)
            .chain(previous.iter().copied())
            .enumerate()
            .map(|(n, key)| (format!("key #{n}"), key))
            .collect();
        Self::build(keys)
    }

    /// This ring after a rotation: `new_current` seals from now on, every key of this ring
    /// still opens.
    pub fn rotated(&self, new_current: [u8; KEY_LEN]) -> Result<KeyRing, KeyError> {
        let keys = std::iter::once(("new current key".to_string(), new_current))
            .chain(self.entries.iter().map(|e| (e.source.clone(), e.key)))
            .collect();
        Self::build(keys)
    }

    fn build(keys: Vec<(String, [u8; KEY_LEN])>) -> Result<KeyRing, KeyError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        for (source, key) in keys {
            let id = key_id(&key);
            match entries.iter().find(|e| e.id == id) {
                Some(existing) if existing.key == key => {} // listed twice: keep the first
                Some(existing) => {
                    return Err(KeyError::IdCollision {
                        id,
                        first: existing.source.clone(),
                        second: source,
                    })
                }
                None => entries.push(Entry { id, key, source }),
            }
        }
        Ok(KeyRing { entries })
    }

    /// The id new objects are sealed under.
    pub fn current_id(&self) -> KeyId {
        self.entries[0].id
    }

    /// Every id this ring opens, the current one first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.entries.iter().map(|e| e.id).collect()
    }

    /// Whether objects sealed under `id` can be opened.
    pub fn contains(&self, id: KeyId) -> bool {
        self.entries.iter().any(|e| e.id == id)
    }

    /// The ids as an operator reads them: `3f2a9c01 (current), 0b7e11d4`.
    pub fn describe_ids(&self) -> String {
        self.entries
            .iter()
            .enumerate()
            .map(|(n, e)| {
                if n == 0 {
                    format!("{} (current)", e.id)
                } else {
                    e.id.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The current key and its id (for sealing).
    pub(crate) fn current(&self) -> (KeyId, &[u8; KEY_LEN]) {
        (self.entries[0].id, &self.entries[0].key)
    }

    /// The key with this id, if the ring holds it (for opening).
    pub(crate) fn get(&self, id: KeyId) -> Option<&[u8; KEY_LEN]> {
        self.entries.iter().find(|e| e.id == id).map(|e| &e.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_key(dir: &Path, name: &str, key: &[u8; KEY_LEN], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("{}\n", hex::encode(key))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_id_is_a_domain_separated_hash_shown_as_8_hex_digits() {
        let key = [7u8; KEY_LEN];
        let mut hasher = Sha256::new();
        hasher.update(b"redis-steward backup key id");
        hasher.update(key);
        let digest = hasher.finalize();
        let id = key_id(&key);
        assert_eq!(id.0.to_be_bytes(), digest[..4]);
        assert_eq!(id.to_string(), hex::encode(&digest[..4]));
        assert_eq!(KeyId(0x0000_00ab).to_string(), "000000ab");
        assert_ne!(key_id(&[8u8; KEY_LEN]), id);
    }

    #[test]
    fn load_reads_current_and_previous_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (new, old) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
        let new_path = write_key(dir.path(), "new", &new, 0o600);
        let old_path = write_key(dir.path(), "old", &old, 0o400);
        // The current key listed again among the previous ones is kept once.
        let ring = KeyRing::load(&new_path, &[old_path, new_path.clone()]).unwrap();
        assert_eq!(ring.current_id(), key_id(&new));
        assert_eq!(ring.ids(), vec![key_id(&new), key_id(&old)]);
        assert!(ring.contains(key_id(&old)));
        assert_eq!(ring.current().1, &new);
        assert_eq!(ring.get(key_id(&old)), Some(&old));
        assert_eq!(ring.get(KeyId(0)), None);
        assert_eq!(
            ring.describe_ids(),
            format!("{} (current), {}", key_id(&new), key_id(&old))
        );
    }

    #[test]
    fn world_or_group_readable_key_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o604, 0o640] {
            let path = write_key(dir.path(), "k", &[3u8; KEY_LEN], mode);
            let err = KeyRing::load(&path, &[]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&path.display().to_string()) && text.contains("chmod 600"),
                "mode {mode:o}: {text}"
            );
            assert!(matches!(err, KeyError::File { path: p, .. } if p == path));
        }
        // A bad previous key is refused too, naming that file.
        let good = write_key(dir.path(), "good", &[4u8; KEY_LEN], 0o600);
        let bad = write_key(dir.path(), "bad", &[5u8; KEY_LEN], 0o644);
        let text = KeyRing::load(&good, std::slice::from_ref(&bad))
            .unwrap_err()
            .to_string();
        assert!(text.contains(&bad.display().to_string()), "{text}");
    }

    #[test]
    fn missing_or_malformed_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let text = KeyRing::load(&missing, &[]).unwrap_err().to_string();
        assert!(
            text.contains("cannot read key file") && text.contains(&missing.display().to_string()),
            "{text}"
        );
        let short = dir.path().join("short");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = KeyRing::load(&short, &[]).unwrap_err().to_string();
        assert!(
            text.contains(&short.display().to_string()) && text.contains("32 raw bytes"),
            "{text}"
        );
    }

    #[test]
    fn rotation_puts_the_new_key_first_and_keeps_the_old_ones() {
        let ring = KeyRing::from_keys([1u8; KEY_LEN], &[[2u8; KEY_LEN]]).unwrap();
        let rotated = ring.rotated([9u8; KEY_LEN]).unwrap();
        assert_eq!(rotated.current_id(), key_id(&[9u8; KEY_LEN]));
        assert_eq!(
            rotated.ids(),
            vec![
                key_id(&[9u8; KEY_LEN]),
                key_id(&[1u8; KEY_LEN]),
                key_id(&[2u8; KEY_LEN])
            ]
        );
        // Rotating to a key already in the ring makes it current without duplicating it.
        let back = rotated.rotated([2u8; KEY_LEN]).unwrap();
        assert_eq!(back.current_id(), key_id(&[2u8; KEY_LEN]));
        assert_eq!(back.ids().len(), 3);
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let ring = KeyRing::from_keys([0xabu8; KEY_LEN], &[]).unwrap();
        let text = format!("{ring:?}");
        assert!(
            !text.contains("171, 171") && !text.contains("abababab"),
            "{text}"
        );
        assert!(text.contains(&key_id(&[0xabu8; KEY_LEN]).to_string()));
    }
}
