//! Stopping an agent whose redis is busy: redis refuses SHUTDOWN (and ignores SIGTERM) while
//! it writes its first AOF after a replica's full sync. The agent must wait for that rewrite
//! and then stop redis cleanly, not sit out its shutdown timeout and kill it.

use std::time::{Duration, Instant};
use steward_testbed::backups::load_dataset_with;
use steward_testbed::cluster::Cluster;
use steward_testbed::node::wait_for;

/// What redis logs when its initial AOF rewrite begins after a full sync.
const REWRITE_STARTED: &str = "Background append only file rewriting started";

#[test]
fn a_replica_stopped_while_writing_its_first_aof_stops_cleanly() {
    let mut c = Cluster::start("business").unwrap();
    let primary = c.wait_settled(Duration::from_secs(60)).unwrap();
    let replica = 1 - primary;
    // Enough data that the replica's first AOF rewrite after its full sync takes a moment.
    load_dataset_with(c.redis_cli(primary), 256);

    // A new machine in the replica's slot joins by full sync, then redis rewrites its AOF;
    // the agent is told to stop as soon as that starts. A rewrite that finishes before the
    // stop reaches redis misses the case: try again (bounded).
    let mut hit = None;
    for _attempt in 0..3 {
        c.replace_node(replica).unwrap();
        let node = &c.nodes[replica];
        let started = wait_for(Duration::from_secs(120), Duration::from_millis(10), || {
            node.log().contains(REWRITE_STARTED).then_some(())
        });
        assert!(
            started.is_some(),
            "no AOF rewrite after the full sync:\n{}",
            c.logs()
        );
        node.signal(libc::SIGTERM);
        let asked = Instant::now();
        let exit = node.wait_exit(Duration::from_secs(60)).unwrap();
        let log = node.log();
        assert_eq!(exit, Some(0), "{log}");
        if log.contains("SHUTDOWN refused") {
            hit = Some((log, asked.elapsed()));
            break;
        }
    }
    let (log, took) = hit.expect("the stop never reached redis during its first AOF rewrite");
    assert!(log.contains("Writing initial AOF, can't exit"), "{log}");
    assert!(log.contains("redis-server stopped"), "{log}");
    assert!(
        !log.contains("did not stop within"),
        "the agent killed redis instead of waiting for the rewrite:\n{log}"
    );
    eprintln!("stopped {:.1} s after SIGTERM", took.as_secs_f64());
}
