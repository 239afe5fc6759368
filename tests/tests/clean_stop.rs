//! Stopping an agent whose redis is busy: redis refuses SHUTDOWN (and a plain SIGTERM) while
//! it writes its first AOF after a replica's full sync. A stopped agent must wait for that
//! rewrite and then stop redis cleanly, not sit out its shutdown timeout and kill it; a killed
//! agent's redis must not live on.

use std::time::{Duration, Instant};
use steward_testbed::backups::load_dataset_with;
use steward_testbed::cluster::Cluster;
use steward_testbed::node::{wait_for, wait_pid_gone, Agent};

/// What redis logs when its initial AOF rewrite begins after a full sync.
const REWRITE_STARTED: &str = "Background append only file rewriting started";

/// A business store whose primary holds enough data that the replica's first AOF rewrite
/// after a full sync takes a moment; returns it with the replica's index.
fn store_with_data() -> (Cluster, usize) {
    let c = Cluster::start("business").unwrap();
    let primary = c.wait_settled(Duration::from_secs(60)).unwrap();
    load_dataset_with(c.redis_cli(primary), 256);
    (c, 1 - primary)
}

/// A new machine takes the replica's slot and joins by full sync; returns once its redis has
/// started writing its first AOF (the agent's log shows redis's own line).
fn replace_until_first_aof(c: &mut Cluster, replica: usize) -> &Agent {
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
    node
}

#[test]
fn a_replica_stopped_while_writing_its_first_aof_stops_cleanly() {
    let (mut c, replica) = store_with_data();
    // The stop must reach redis before its rewrite ends; when it does not, the case was
    // missed: try again (bounded).
    let mut hit = None;
    for _attempt in 0..3 {
        let node = replace_until_first_aof(&mut c, replica);
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

#[test]
fn a_killed_agents_redis_ends_even_while_writing_its_first_aof() {
    let (mut c, replica) = store_with_data();
    let mut hit = false;
    for _attempt in 0..3 {
        let node = replace_until_first_aof(&mut c, replica);
        let pid = node.redis_pid().expect("the agent reports its redis pid");
        node.signal(libc::SIGKILL);
        node.wait_exit(Duration::from_secs(10)).unwrap();
        // Redis gets SIGTERM from the kernel as its agent dies (PR_SET_PDEATHSIG).
        assert!(
            wait_pid_gone(pid, Duration::from_secs(20)),
            "redis {pid} outlived its killed agent"
        );
        // Whether redis was still rewriting when its agent died (redis's lines reach the
        // agent's log only while the agent lives): then a plain SIGTERM is refused.
        if !node.log().contains("Background AOF rewrite terminated") {
            hit = true;
            break;
        }
    }
    assert!(hit, "the agent never died during redis's first AOF rewrite");
}
