//! The object-store contract against a real S3-compatible server (moto), including racing
//! create-only puts: the primitive the 2-node lease is built on.

use redis_steward::store::{contract, Store};
use steward_testbed::s3::MotoServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_keeps_the_store_contract() {
    let moto = MotoServer::start().unwrap();
    moto.create_bucket("steward").unwrap();
    let store = Store::open("s3://steward/ds-1", &moto.options()).unwrap();
    contract::check(&store, "contract").await;
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
    assert_eq!(store.get("lease/1").await.unwrap(), None);
}

/// The two-node lease protocol against the S3 server: exactly one of two racing nodes gets
/// each epoch, renewals by a superseded holder learn they lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_lease_works_on_s3() {
    use redis_steward::election::{LeaseResult, NodeId};
    use redis_steward::ha::{lease_op, LeaseOp};
    let moto = MotoServer::start().unwrap();
    moto.create_bucket("steward").unwrap();
    let store = Store::open("s3://steward/ds-lease", &moto.options()).unwrap();
    let (a, b) = tokio::join!(
        lease_op(&store, "node-a", LeaseOp::Acquire { epoch: 1 }),
        lease_op(&store, "node-b", LeaseOp::Acquire { epoch: 1 })
    );
    let results = [a.unwrap(), b.unwrap()];
    let winners = results
        .iter()
        .filter(|r| matches!(r, LeaseResult::Acquired { epoch: 1 }))
        .count();
    assert_eq!(winners, 1, "{results:?}");
    let (winner, loser) = if matches!(results[0], LeaseResult::Acquired { .. }) {
        ("node-a", "node-b")
    } else {
        ("node-b", "node-a")
    };
    assert_eq!(
        lease_op(
            &store,
            winner,
            LeaseOp::Renew {
                epoch: 1,
                heartbeat: 7
            }
        )
        .await
        .unwrap(),
        LeaseResult::Renewed {
            epoch: 1,
            heartbeat: 7
        }
    );
    assert_eq!(
        lease_op(
            &store,
            loser,
            LeaseOp::Poll {
                from_epoch: 0,
                asked_at: 3
            }
        )
        .await
        .unwrap(),
        LeaseResult::Heartbeat {
            asked_at: 3,
            epoch: 1,
            holder: Some(NodeId::new(winner)),
            heartbeat: Some(7)
        }
    );
    assert_eq!(
        lease_op(&store, loser, LeaseOp::Acquire { epoch: 2 })
            .await
            .unwrap(),
        LeaseResult::Acquired { epoch: 2 }
    );
    assert_eq!(
        lease_op(
            &store,
            winner,
            LeaseOp::Renew {
                epoch: 1,
                heartbeat: 8
            }
        )
        .await
        .unwrap(),
        LeaseResult::AlreadyTaken {
            epoch: 2,
            holder: NodeId::new(loser)
        }
    );
}
