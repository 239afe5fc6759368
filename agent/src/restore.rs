//! Reading backups back: download a sealed object as a stream, authenticate and decrypt it
//! piece by piece (`backup_format::Opener`), and hand the plaintext to a sink — a file of a
//! rebuilt AOF directory, or nothing when only verifying. Errors name the object.
//!
//! `materialize` turns a restore plan (a base and the WAL segments after it) into a Redis 7
//! multi-part AOF directory that a fresh redis-server loads as is.

use crate::backup_catalog::{Catalog, ListedObject, RestorePlan, BACKUP_PREFIX};
use crate::backup_format::Opener;
use crate::backup_keys::KeyRing;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use std::path::Path;

/// The catalog of the store's backups.
pub async fn catalog(store: &Store) -> Result<Catalog> {
    let listing = store
        .list(BACKUP_PREFIX)
        .await
        .context("listing the backups")?;
    let objects: Vec<ListedObject> = listing
        .into_iter()
        .map(|e| ListedObject {
            path: e.path,
            size: e.size,
            last_modified_unix_ms: e.last_modified_ms,
        })
        .collect();
    Ok(Catalog::from_listing(&objects))
}

/// Stream object `path`, authenticated and decrypted, into `sink` (if any). Returns the
/// plaintext length. Memory stays at a few chunks whatever the object's size: plaintext is
/// written in pieces of at most 1 MiB as it is opened (a chunk of very compressible data, e.g.
/// a large SETRANGE of zeros, may expand to hundreds of MiB). The sink is written with
/// blocking calls: restores and verification are offline work, not the agent's loop.
/// Plaintext written before an error is incomplete: callers discard the file then.
pub async fn open_object(
    store: &Store,
    keys: &KeyRing,
    path: &str,
    mut sink: Option<&mut std::fs::File>,
) -> Result<u64> {
    use std::io::Write;
    let Some(mut stream) = store.get_stream(path).await? else {
        bail!("backup object {path} is missing");
    };
    let mut opener = Opener::new(path, keys);
    let mut total = 0u64;
    while let Some(piece) = stream.next().await {
        let mut written: std::io::Result<()> = Ok(());
        opener.push_each(&piece?, |p| {
            total += p.len() as u64;
            if let (Some(f), Ok(())) = (sink.as_deref_mut(), &written) {
                written = f.write_all(p);
            }
        })?;
        written.with_context(|| format!("writing what {path} holds"))?;
    }
    opener.finish()?;
    Ok(total)
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub objects: usize,
    pub bytes: u64,
    /// (object, error) for every object that failed.
    pub failures: Vec<(String, String)>,
}

/// Download and authenticate every object of the chains (all when `chain` is None).
pub async fn verify(store: &Store, keys: &KeyRing, chain: Option<&str>) -> Result<Verified> {
    let cat = catalog(store).await?;
    let mut v = Verified::default();
    let mut matched = false;
    for c in &cat.chains {
        if chain.is_some_and(|id| c.id.to_string() != id) {
            continue;
        }
        matched = true;
        for path in c.paths() {
            match open_object(store, keys, path, None).await {
                Ok(n) => {
                    v.objects += 1;
                    v.bytes += n;
                }
                Err(e) => v.failures.push((path.to_string(), format!("{e:#}"))),
            }
        }
    }
    if let Some(id) = chain.filter(|_| !matched) {
        bail!("no chain {id} in the backups (see `redis-steward backup list`)");
    }
    Ok(v)
}

/// Rebuild a Redis 7 AOF directory from a restore plan: the base as
/// `appendonly.aof.1.base.rdb`, every WAL segment appended in order to
/// `appendonly.aof.1.incr.aof`, and the manifest naming both. `dir` must not exist yet.
pub async fn materialize(
    store: &Store,
    keys: &KeyRing,
    plan: &RestorePlan,
    dir: &Path,
) -> Result<()> {
    if dir.exists() {
        bail!("{} exists; not overwriting it", dir.display());
    }
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let paths = plan.paths();
    let Some((base, wal)) = paths.split_first() else {
        bail!("the restore plan is empty");
    };
    let base_file = "appendonly.aof.1.base.rdb";
    let incr_file = "appendonly.aof.1.incr.aof";
    let mut f = std::fs::File::create(dir.join(base_file))?;
    open_object(store, keys, base, Some(&mut f)).await?;
    f.sync_all()?;
    let mut f = std::fs::File::create(dir.join(incr_file))?;
    for path in wal {
        open_object(store, keys, path, Some(&mut f)).await?;
    }
    f.sync_all()?;
    let manifest = format!("file {base_file} seq 1 type b\nfile {incr_file} seq 1 type i\n");
    tokio::fs::write(dir.join(crate::layout::AOF_MANIFEST_NAME), manifest).await?;
    Ok(())
}
