//! The object-store contract against real servers: an S3-compatible one (moto) and the Azure
//! Blob Storage emulator (Azurite), including racing create-only puts: the primitive the
//! 2-node lease is built on.

use redis_steward::store::{contract, Store};
use steward_testbed::azurite::AzuriteServer;
use steward_testbed::s3::MotoServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_keeps_the_store_contract() {
    let moto = MotoServer::start().unwrap();
    moto.create_bucket("steward").unwrap();
    let store = Store::open("s3://steward/ds-1", &moto.options()).unwrap();
    contract::check(&store, "contract").await;
}

/// A bucket that does not exist: the server's answer, said once (object_store's chain
/// repeated it, XML body and all, at every level).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_once() {
    let moto = MotoServer::start().unwrap();
    let store = Store::open("s3://nowhere/ds-1", &moto.options()).unwrap();
    let e = anyhow::Error::from(store.list("backup/").await.unwrap_err());
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with("object store s3://nowhere/ds-1: list backup/ failed: "),
        "{msg}"
    );
    assert_eq!(msg.matches("NoSuchBucket").count(), 1, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_times_out_with_a_clear_error() {
    let moto = MotoServer::start().unwrap();
    moto.create_bucket("steward").unwrap();
    let store = Store::open("s3://steward/x", &moto.options())
        .unwrap()
        .with_timeout(std::time::Duration::from_millis(500));
    moto.pause(true);
    let e = store.get("lease/1").await.unwrap_err().to_string();
    moto.pause(false);
    assert!(
        e.contains("s3://steward/x") && e.contains("lease/1") && e.contains("timed out"),
        "{e}"
    );
    // The same store works again once the server is back (a just-resumed server may take
    // longer than the 500 ms limit for its first answers on a busy machine: a few tries).
    let mut last = None;
    for _ in 0..20 {
        match store.get("lease/1").await {
            Ok(got) => {
                last = Some(Ok(got));
                break;
            }
            Err(e) => last = Some(Err(e.to_string())),
        }
    }
    assert_eq!(last, Some(Ok(None)));
}

/// The two-node lease protocol against the S3 server: exactly one of two racing nodes gets
/// each epoch, renewals by a superseded holder learn they lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_lease_works_on_s3() {
    let moto = MotoServer::start().unwrap();
    moto.create_bucket("steward").unwrap();
    let store = Store::open("s3://steward/ds-lease", &moto.options()).unwrap();
    redis_steward::cluster::ha::lease_contract::check(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_keeps_the_store_contract() {
    let azurite = AzuriteServer::start().unwrap();
    azurite.create_container("steward").unwrap();
    let store = Store::open("az://steward/ds-1", &azurite.options()).unwrap();
    contract::check(&store, "contract").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_lease_works_on_azurite() {
    let azurite = AzuriteServer::start().unwrap();
    azurite.create_container("steward").unwrap();
    let store = Store::open("az://steward/ds-lease", &azurite.options()).unwrap();
    redis_steward::cluster::ha::lease_contract::check(&store).await;
}
