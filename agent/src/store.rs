//! The object store seam: the few operations the agent needs from a bucket (create-only put,
//! overwrite, get, list, delete), over `object_store` for `file://`, `s3://`, `gs://`, `az://`
//! and `memory://` URLs. Everything else (leases, backups) is built on these five calls.
//!
//! Contracts (checked by [`contract::check`] against every backend the tests can run):
//! - `create` succeeds for exactly one caller per path, even when racing; later callers get
//!   `Ok(false)`. This is the arbiter primitive for 2-node data stores.
//! - `get` of a missing object is `Ok(None)`, not an error.
//! - `delete` is idempotent.
//! - every call is bounded by a timeout, so an unreachable store is an error, never a hang.

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store {store}: {op} {path} timed out after {timeout:?}")]
    Timeout {
        store: String,
        op: &'static str,
        path: String,
        timeout: Duration,
    },
    /// `detail` is the backend's error chain said once ([`chain_once`]); `backend` is kept for
    /// matching, not as an error source: every level of object_store's chain repeats the
    /// levels below it, and printing the sources again repeated it four or five times.
    #[error("object store {store}: {op} {path} failed: {detail}")]
    Backend {
        store: String,
        op: &'static str,
        path: String,
        detail: String,
        backend: Box<object_store::Error>,
    },
    #[error("object store URL {url:?}: {message}")]
    Url { url: String, message: String },
}

/// An error and its sources, each level's own words once: a level whose message ends with
/// (or contains) the next level's drops that part, a level that adds nothing is skipped, so
/// the root cause ("Connection refused") ends the line instead of hiding in repeats.
pub fn chain_once(e: &(dyn std::error::Error + 'static)) -> String {
    let mut levels = Vec::new();
    let mut cur = Some(e);
    while let Some(level) = cur {
        levels.push(level.to_string());
        cur = level.source();
    }
    let mut parts: Vec<String> = Vec::new();
    for (i, text) in levels.iter().enumerate() {
        let own = match levels.get(i + 1) {
            Some(next) if !next.is_empty() => match text.find(next.as_str()) {
                Some(at) => text[..at].to_string(),
                None => text.clone(),
            },
            _ => text.clone(),
        };
        let own = own.trim().trim_end_matches([':', '-']).trim().to_string();
        if !own.is_empty() && parts.last() != Some(&own) {
            parts.push(own);
        }
    }
    parts.join(": ")
}

/// A bucket (or folder) as the agent sees it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// For messages; never holds credentials.
    name: String,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.name)
    }
}

/// An object's name and size from a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    /// When the store last wrote it (unix ms).
    pub last_modified_ms: u64,
}

/// A large object written in parts (S3/GCS/Azure multipart; a temp file for the local
/// folder), so it never sits whole in memory. Nothing is visible until `finish`.
pub struct Upload {
    inner: object_store::WriteMultipart,
    store: Store,
    path: String,
}

impl Upload {
    /// Queue `data`; waits while too many parts are in flight (bounded memory).
    pub async fn write(&mut self, data: Bytes) -> Result<(), StoreError> {
        let store = self.store.clone();
        store
            .bounded("upload", &self.path, self.inner.wait_for_capacity(4))
            .await?;
        self.inner.put(data);
        Ok(())
    }

    /// Complete the object.
    pub async fn finish(self) -> Result<(), StoreError> {
        let Upload { inner, store, path } = self;
        store
            .bounded("upload", &path, inner.finish())
            .await
            .map(|_| ())
    }

    /// Give up; the parts are discarded.
    pub async fn abort(self) {
        let Upload { inner, store, path } = self;
        let _ = store.bounded("abort upload", &path, inner.abort()).await;
    }
}

/// A URL fit for logs and errors: user info and query (where credentials hide) removed.
pub fn redact(url: &str) -> String {
    if !url.contains('@') && !url.contains('?') {
        return url.to_string();
    }
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.path()
        ),
        Err(_) => url
            .split_once("://")
            .map(|(s, _)| format!("{s}://…"))
            .unwrap_or_else(|| "…".into()),
    }
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries end well inside [`DEFAULT_TIMEOUT`], so that an unreachable store's own error
/// ("Connection refused", a DNS failure, the bucket's 404) is what a caller sees rather than
/// "timed out" (object_store's default retries for 3 minutes).
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(6),
    }
}

impl Store {
    /// Open a store by URL. `options` are object_store configuration keys (e.g.
    /// `aws_endpoint`, `aws_region`, `aws_allow_http`, `aws_access_key_id`); credentials not
    /// given there come from the backend's usual environment variables.
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Store, StoreError> {
        let bad = |message: String| StoreError::Url {
            url: redact(url),
            message,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected scheme://…, e.g. file:///var/lib/backups or s3://bucket/prefix".into())
        })?;
        let inner: Arc<dyn ObjectStore> = match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "file:// URLs need an absolute path (file:///path)".into()
                    ));
                }
                std::fs::create_dir_all(rest)
                    .map_err(|e| bad(format!("cannot create {rest}: {e}")))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(rest)
                        .map_err(|e| bad(e.to_string()))?,
                )
            }
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            "s3" | "gs" | "az" | "azure" | "abfs" => {
                let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
                // Unknown keys are refused by name (object_store's own parser skips them, so a
                // misspelt endpoint would silently go to AWS).
                macro_rules! build {
                    ($builder:ty) => {{
                        let mut b = <$builder>::new().with_url(url).with_retry(retry());
                        for (k, v) in options {
                            let key = k.to_ascii_lowercase().parse().map_err(|_| {
                                bad(format!(
                                    "backup.options: {k:?} is not an option of {scheme}:// \
                                     stores (object_store's configuration keys, e.g. \
                                     aws_endpoint, aws_region, azure_storage_account_name)"
                                ))
                            })?;
                            b = b.with_config(key, v);
                        }
                        let store: Arc<dyn ObjectStore> =
                            Arc::new(b.build().map_err(|e| bad(chain_once(&e)))?);
                        store
                    }};
                }
                let store = match scheme {
                    "s3" => build!(object_store::aws::AmazonS3Builder),
                    "gs" => build!(object_store::gcp::GoogleCloudStorageBuilder),
                    _ => build!(object_store::azure::MicrosoftAzureBuilder),
                };
                let prefix =
                    ObjPath::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
                if prefix.as_ref().is_empty() {
                    store
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                }
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?} (file, s3, gs, az)"
                )))
            }
        };
        // Never echo credentials: the name is scheme + location only (see `redact`).
        Ok(Store {
            inner,
            name: redact(url),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn in_memory() -> Store {
        Store {
            inner: Arc::new(object_store::memory::InMemory::new()),
            name: "memory://".into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Store {
        self.timeout = timeout;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        path: &str,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|source| StoreError::Backend {
                store: self.name.clone(),
                op,
                path: path.to_string(),
                detail: chain_once(&source),
                backend: Box::new(source),
            }),
            Err(_) => Err(StoreError::Timeout {
                store: self.name.clone(),
                op,
                path: path.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    /// Create `path` only if it does not exist. `Ok(true)`: this call created it;
    /// `Ok(false)`: it already existed (someone else won).
    pub async fn create(&self, path: &str, data: Bytes) -> Result<bool, StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let p = ObjPath::from(path);
        let r = self
            .bounded(
                "create",
                path,
                self.inner.put_opts(&p, PutPayload::from(data), opts),
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(StoreError::Backend { backend, .. })
                if matches!(
                    *backend,
                    object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. }
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Write `path`, replacing any previous content.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), StoreError> {
        let p = ObjPath::from(path);
        self.bounded("put", path, self.inner.put(&p, PutPayload::from(data)))
            .await
            .map(|_| ())
    }

    /// Start writing `path` in parts (see [`Upload`]).
    pub async fn upload(&self, path: &str) -> Result<Upload, StoreError> {
        let p = ObjPath::from(path);
        let parts = self
            .bounded("upload", path, self.inner.put_multipart(&p))
            .await?;
        Ok(Upload {
            inner: object_store::WriteMultipart::new(parts),
            store: self.clone(),
            path: path.to_string(),
        })
    }

    /// Read `path` as a stream of pieces (each bounded by the store's timeout), so a large
    /// object never sits whole in memory; `None` if it does not exist.
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<Option<futures::stream::BoxStream<'static, Result<Bytes, StoreError>>>, StoreError>
    {
        use futures::StreamExt;
        let p = ObjPath::from(path);
        let fut = async {
            match self.inner.get(&p).await {
                Ok(r) => Ok(Some(r)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let Some(r) = self.bounded("get", path, fut).await? else {
            return Ok(None);
        };
        let (store, path, timeout) = (self.name.clone(), path.to_string(), self.timeout);
        let pieces = match r.payload {
            // object_store reads local files in 8 KiB pieces, a blocking-pool round trip
            // each: that, not decryption, bounded restores from a folder. Read 1 MiB at a time.
            object_store::GetResultPayload::File(file, _) => local_file_stream(file, r.range),
            object_store::GetResultPayload::Stream(s) => s,
        };
        Ok(Some(
            futures::stream::unfold(Some(pieces), move |pieces| {
                let (store, path) = (store.clone(), path.clone());
                async move {
                    let mut pieces = pieces?;
                    match tokio::time::timeout(timeout, pieces.next()).await {
                        Ok(None) => None,
                        Ok(Some(Ok(b))) => Some((Ok(b), Some(pieces))),
                        Ok(Some(Err(source))) => Some((
                            Err(StoreError::Backend {
                                store,
                                op: "get",
                                path,
                                detail: chain_once(&source),
                                backend: Box::new(source),
                            }),
                            None,
                        )),
                        Err(_) => Some((
                            Err(StoreError::Timeout {
                                store,
                                op: "get",
                                path,
                                timeout,
                            }),
                            None,
                        )),
                    }
                }
            })
            .boxed(),
        ))
    }

    /// Read `path`; `None` if it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>, StoreError> {
        let p = ObjPath::from(path);
        let fut = async {
            match self.inner.get(&p).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.bounded("get", path, fut).await
    }

    /// Every object under `prefix` (recursively), sorted by path.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        use futures::TryStreamExt;
        let p = ObjPath::from(prefix);
        let fut = async {
            let metas: Vec<_> = self
                .inner
                .list(if prefix.is_empty() { None } else { Some(&p) })
                .try_collect()
                .await?;
            Ok(metas)
        };
        let mut out: Vec<Entry> = self
            .bounded("list", prefix, fut)
            .await?
            .into_iter()
            .map(|m| Entry {
                path: m.location.to_string(),
                size: m.size,
                last_modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Delete `path`; deleting a missing object is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), StoreError> {
        let p = ObjPath::from(path);
        let fut = async {
            match self.inner.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        };
        self.bounded("delete", path, fut).await
    }
}

/// The store contract, as executable checks. Public so that integration tests can run it
/// against real servers (S3-compatible, Azurite) as well as the unit tests' backends.
pub mod contract {
    use super::*;

    /// Run every contract check under `base` (a fresh prefix) of `store`; panics on a breach.
    pub async fn check(store: &Store, base: &str) {
        let p = |s: &str| format!("{base}/{s}");
        // get of a missing object is None.
        assert_eq!(store.get(&p("missing")).await.unwrap(), None);
        // create is create-only.
        assert!(store
            .create(&p("lease/1"), Bytes::from_static(b"a"))
            .await
            .unwrap());
        assert!(!store
            .create(&p("lease/1"), Bytes::from_static(b"b"))
            .await
            .unwrap());
        assert_eq!(
            store.get(&p("lease/1")).await.unwrap().unwrap(),
            Bytes::from_static(b"a")
        );
        // put overwrites.
        store.put(&p("hb"), Bytes::from_static(b"1")).await.unwrap();
        store.put(&p("hb"), Bytes::from_static(b"2")).await.unwrap();
        assert_eq!(
            store.get(&p("hb")).await.unwrap().unwrap(),
            Bytes::from_static(b"2")
        );
        // list is recursive and sorted, with sizes.
        let l = store.list(base).await.unwrap();
        let names: Vec<_> = l.iter().map(|e| e.path.clone()).collect();
        assert_eq!(names, vec![p("hb"), p("lease/1")]);
        assert_eq!(l[1].size, 1);
        // Racing creates: exactly one wins.
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let s = store.clone();
                let path = p("lease/2");
                tokio::spawn(
                    async move { s.create(&path, Bytes::from(format!("n{i}"))).await.unwrap() },
                )
            })
            .collect();
        let mut wins = 0;
        for r in racers {
            wins += r.await.unwrap() as usize;
        }
        assert_eq!(wins, 1, "exactly one racing create may win");
        // Large objects in parts: invisible until finished, streamed back whole. 11 MiB
        // in 1 MiB writes spans several 5 MiB parts (S3's minimum part size).
        let big: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut up = store.upload(&p("big")).await.unwrap();
        for piece in big.chunks(1 << 20) {
            up.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        assert_eq!(
            store.get(&p("big")).await.unwrap(),
            None,
            "visible before finish"
        );
        up.finish().await.unwrap();
        let mut stream = store.get_stream(&p("big")).await.unwrap().unwrap();
        let mut back = Vec::new();
        while let Some(piece) = futures::StreamExt::next(&mut stream).await {
            back.extend_from_slice(&piece.unwrap());
        }
        assert!(back == big, "multipart round trip differs");
        assert!(store.get_stream(&p("none")).await.unwrap().is_none());
        let listed = store.list(base).await.unwrap();
        let big_entry = listed.iter().find(|e| e.path == p("big")).unwrap();
        assert_eq!(big_entry.size, big.len() as u64);
        assert!(
            big_entry.last_modified_ms > 1_600_000_000_000,
            "{big_entry:?}"
        );
        // An aborted upload leaves nothing.
        let mut up = store.upload(&p("aborted")).await.unwrap();
        up.write(Bytes::from_static(b"x")).await.unwrap();
        up.abort().await;
        assert_eq!(store.get(&p("aborted")).await.unwrap(), None);
        // delete is idempotent.
        store.delete(&p("hb")).await.unwrap();
        store.delete(&p("hb")).await.unwrap();
        assert_eq!(store.get(&p("hb")).await.unwrap(), None);
        for e in store.list(base).await.unwrap() {
            store.delete(&e.path).await.unwrap();
        }
    }
}

/// `range` of a local file as a stream of pieces of up to 1 MiB, each read on the blocking
/// pool.
fn local_file_stream(
    file: std::fs::File,
    range: std::ops::Range<u64>,
) -> futures::stream::BoxStream<'static, object_store::Result<Bytes>> {
    use futures::StreamExt;
    const PIECE: u64 = 1 << 20;
    futures::stream::try_unfold(
        (file, range.start, range.end),
        |(mut file, at, end)| async move {
            if at >= end {
                return Ok(None);
            }
            let len = (end - at).min(PIECE) as usize;
            let (file, piece) = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut piece = vec![0u8; len];
                file.seek(SeekFrom::Start(at))?;
                file.read_exact(&mut piece)?;
                Ok::<_, std::io::Error>((file, piece))
            })
            .await
            .map_err(local_error)?
            .map_err(local_error)?;
            Ok(Some((Bytes::from(piece), (file, at + len as u64, end))))
        },
    )
    .boxed()
}

fn local_error(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "local",
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused connection (nothing listens on port 1): the cause is said, once.
    #[tokio::test]
    async fn an_unreachable_s3_endpoint_names_the_refusal_once() {
        let opts: BTreeMap<String, String> = [
            ("endpoint", "http://127.0.0.1:1"),
            ("aws_access_key_id", "x"),
            ("aws_secret_access_key", "y"),
            ("region", "us-east-1"),
            ("allow_http", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = Store::open("s3://nobucket/ds", &opts).unwrap();
        let e = anyhow::Error::from(s.list("backup/").await.unwrap_err());
        let msg = format!("{e:#}");
        assert!(msg.ends_with("Connection refused (os error 111)"), "{msg}");
        for once in [
            "Connection refused",
            "Error performing GET",
            "Generic S3 error",
        ] {
            assert_eq!(msg.matches(once).count(), 1, "{once:?} in {msg}");
        }
        assert!(msg.starts_with("object store s3://nobucket/ds: list backup/ failed: "));
    }

    #[test]
    fn chains_are_said_once() {
        #[derive(Debug)]
        struct E(String, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let root = E("refused".into(), None);
        let mid = E("sending: refused".into(), Some(Box::new(root)));
        let same = E("sending: refused".into(), Some(Box::new(mid)));
        let top = E("GET /x - sending: refused".into(), Some(Box::new(same)));
        assert_eq!(chain_once(&top), "GET /x: sending: refused");
        assert_eq!(chain_once(&E("alone".into(), None)), "alone");
    }

    #[tokio::test]
    async fn in_memory_store_keeps_the_contract() {
        contract::check(&Store::in_memory(), "t").await;
    }

    #[tokio::test]
    async fn local_folder_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bucket", dir.path().display());
        let s = Store::open(&url, &BTreeMap::new()).unwrap();
        contract::check(&s, "t").await;
    }

    #[test]
    fn bad_urls_are_named() {
        for (url, want) in [
            ("/no/scheme", "scheme://"),
            ("file://relative", "absolute path"),
            ("ftp://host/x", "unsupported scheme"),
        ] {
            let e = Store::open(url, &BTreeMap::new()).unwrap_err().to_string();
            assert!(e.contains(url) && e.contains(want), "{e}");
        }
        // A misspelt option is named, never skipped (the endpoint would silently be AWS).
        let o = BTreeMap::from([("aws_endpiont".to_string(), "http://x".to_string())]);
        let e = Store::open("s3://b/p", &o).unwrap_err().to_string();
        assert!(
            e.contains("\"aws_endpiont\" is not an option of s3://"),
            "{e}"
        );
    }

    #[test]
    fn store_names_never_carry_credentials() {
        let mut o = BTreeMap::new();
        o.insert("aws_region".into(), "us-east-1".into());
        o.insert("aws_access_key_id".into(), "key-id".into());
        o.insert("aws_secret_access_key".into(), "secret-key".into());
        let s = Store::open("s3://user:secret@bucket/prefix", &o).unwrap();
        assert_eq!(s.name(), "s3://bucket/prefix");
        assert!(!format!("{s:?}").contains("secret"));
        let shown = match Store::open("s3://user:secret@bucket/prefix?x=secret", &BTreeMap::new()) {
            Ok(s) => s.name().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(redact("ftp://u:pw@host/p?token=t"), "ftp://host/p");
        assert_eq!(redact("file:///plain/path"), "file:///plain/path");
    }
}
