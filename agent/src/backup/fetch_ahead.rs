//! Fetching a chain's objects ahead of their turn. A chain holds a WAL segment for every
//! shipping interval that saw writes (up to 86,400 a day at the default 1 s); fetched one
//! after the other, each costs a full round trip to the store (tens of milliseconds on S3),
//! and a day-old chain would spend most of an hour just waiting. So small objects are
//! downloaded several at a time, each in a task of its own that goes on while the caller
//! decrypts and writes the previous ones, and are handed out in chain order. A large object
//! (a base) is left for the caller to stream; the small ones after it download meanwhile.
//! Memory stays bounded: at most [`IN_FLIGHT`] objects and [`BUDGET`] bytes ahead.

use crate::store::{Store, StoreError};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::VecDeque;

/// Objects downloading (or waiting to be taken) at once.
pub const IN_FLIGHT: usize = 16;
/// Stored bytes held ahead of the caller, at most (one object larger than the rest of the
/// budget is still fetched when nothing else is ahead).
pub const BUDGET: u64 = 64 << 20;
/// Objects up to this size are fetched whole; larger ones are streamed by the caller. A WAL
/// segment holds at most 8 MiB of plaintext, so every segment comes whole.
pub const WHOLE_MAX: u64 = 16 << 20;

/// One object, when its turn comes.
#[derive(Debug)]
pub enum Fetched {
    /// The whole stored (sealed) object.
    Whole(Bytes),
    /// Too large to hold in memory: the caller streams it (`Store::get_stream`).
    Large,
}

/// The objects of a chain, in order, fetched ahead. Dropping it stops the downloads.
pub struct FetchAhead {
    store: Store,
    pending: VecDeque<(String, u64)>,
    in_flight: FuturesOrdered<BoxFuture<'static, (String, u64, Result<Fetched>)>>,
    /// Sizes (as listed) of the whole objects in `in_flight`.
    held: u64,
}

impl FetchAhead {
    /// Starts fetching `objects` (path, stored size as listed), in this order.
    pub fn new<'a>(store: &Store, objects: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let mut ahead = FetchAhead {
            store: store.clone(),
            pending: objects
                .into_iter()
                .map(|(path, size)| (path.to_string(), size))
                .collect(),
            in_flight: FuturesOrdered::new(),
            held: 0,
        };
        ahead.fill();
        ahead
    }

    /// The next object in order, with its path; `None` after the last. An error (the object
    /// is missing, the store failed) names the object; later objects still come.
    pub async fn next(&mut self) -> Option<(String, Result<Fetched>)> {
        let (path, size, fetched) = self.in_flight.next().await?;
        if size <= WHOLE_MAX {
            self.held -= size;
        }
        self.fill();
        Some((path, fetched))
    }

    /// Start downloads while there is room in count and in bytes.
    fn fill(&mut self) {
        while self.in_flight.len() < IN_FLIGHT {
            let Some(&(_, size)) = self.pending.front() else {
                return;
            };
            let whole = size <= WHOLE_MAX;
            if whole && self.held > 0 && self.held + size > BUDGET {
                return;
            }
            let (path, size) = self.pending.pop_front().expect("peeked");
            if !whole {
                self.in_flight
                    .push_back(Box::pin(async move { (path, size, Ok(Fetched::Large)) }));
                continue;
            }
            self.held += size;
            let store = self.store.clone();
            let name = path.clone();
            // A task of its own, so the download goes on while the caller is busy; the guard
            // stops it when the FetchAhead is dropped.
            let task = AbortOnDrop(tokio::spawn(async move { store.get(&name).await }));
            self.in_flight.push_back(Box::pin(async move {
                let fetched = fetched(&path, task.await);
                (path, size, fetched)
            }));
        }
    }
}

fn fetched(
    path: &str,
    joined: Result<Result<Option<Bytes>, StoreError>, tokio::task::JoinError>,
) -> Result<Fetched> {
    match joined {
        Ok(Ok(Some(bytes))) => Ok(Fetched::Whole(bytes)),
        Ok(Ok(None)) => Err(anyhow!("backup object {path} is missing")),
        Ok(Err(e)) => Err(e).with_context(|| format!("downloading backup object {path}")),
        Err(e) => Err(e).with_context(|| format!("the download of backup object {path} failed")),
    }
}

/// Aborts the task when dropped (an error or a cancelled restore stops its downloads too).
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes_and_store(sizes: &[u64]) -> (Store, Vec<(String, u64)>) {
        let store = Store::in_memory();
        let objects = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| (format!("obj-{i:03}"), size))
            .collect();
        (store, objects)
    }

    /// An object's own bytes: its number, repeated.
    fn body(path: &str, size: u64) -> Vec<u8> {
        let n: u8 = path.trim_start_matches("obj-").parse().unwrap();
        vec![n; size as usize]
    }

    async fn put_all(store: &Store, objects: &[(String, u64)]) {
        for (path, size) in objects {
            store
                .put(path, Bytes::from(body(path, *size)))
                .await
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_come_in_order_whole_or_left_to_stream() {
        let sizes = [WHOLE_MAX + 1, 10, 0, 3000, WHOLE_MAX, 7, WHOLE_MAX + 5, 1];
        let (store, objects) = sizes_and_store(&sizes);
        // The large ones are never downloaded here: they need not even exist yet.
        let small: Vec<_> = objects
            .iter()
            .filter(|(_, s)| *s <= WHOLE_MAX)
            .cloned()
            .collect();
        put_all(&store, &small).await;
        let mut ahead = FetchAhead::new(&store, objects.iter().map(|(p, s)| (p.as_str(), *s)));
        for (path, size) in &objects {
            let (got_path, fetched) = ahead.next().await.unwrap();
            assert_eq!(&got_path, path);
            match fetched.unwrap() {
                Fetched::Whole(b) => {
                    assert!(*size <= WHOLE_MAX);
                    assert!(b == body(path, *size), "{path} has its own bytes");
                }
                Fetched::Large => assert!(*size > WHOLE_MAX, "{path}"),
            }
        }
        assert!(ahead.next().await.is_none());
        assert_eq!(ahead.held, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn downloads_stay_within_count_and_byte_budget() {
        // 20 objects of 5 MiB: the budget (64 MiB) admits 12 at once, not IN_FLIGHT (16).
        let (store, objects) = sizes_and_store(&[5 << 20; 20]);
        put_all(&store, &objects).await;
        let mut ahead = FetchAhead::new(&store, objects.iter().map(|(p, s)| (p.as_str(), *s)));
        assert_eq!(ahead.in_flight.len(), (BUDGET / (5 << 20)) as usize);
        let mut n = 0;
        while let Some((_, fetched)) = ahead.next().await {
            fetched.unwrap();
            n += 1;
            assert!(ahead.held <= BUDGET);
            assert!(ahead.in_flight.len() <= IN_FLIGHT);
        }
        assert_eq!(n, 20);
        // Small objects: the count is the limit.
        let (store, objects) = sizes_and_store(&[100; 40]);
        put_all(&store, &objects).await;
        let ahead = FetchAhead::new(&store, objects.iter().map(|(p, s)| (p.as_str(), *s)));
        assert_eq!(ahead.in_flight.len(), IN_FLIGHT);
        // One object above the budget's remainder still goes when nothing else is ahead.
        let (store, objects) = sizes_and_store(&[WHOLE_MAX; 5]);
        put_all(&store, &objects).await;
        let mut ahead = FetchAhead::new(&store, objects.iter().map(|(p, s)| (p.as_str(), *s)));
        let mut n = 0;
        while let Some((_, fetched)) = ahead.next().await {
            fetched.unwrap();
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_object_is_named_and_the_rest_still_come() {
        let (store, objects) = sizes_and_store(&[10, 20, 30]);
        put_all(&store, &objects).await;
        store.delete("obj-001").await.unwrap();
        let mut ahead = FetchAhead::new(&store, objects.iter().map(|(p, s)| (p.as_str(), *s)));
        assert!(ahead.next().await.unwrap().1.is_ok());
        let (path, err) = ahead.next().await.unwrap();
        assert_eq!(path, "obj-001");
        let err = format!("{:#}", err.unwrap_err());
        assert!(err.contains("obj-001") && err.contains("missing"), "{err}");
        assert!(ahead.next().await.unwrap().1.is_ok());
        assert!(ahead.next().await.is_none());
    }
}
