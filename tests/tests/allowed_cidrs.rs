//! Allowed CIDR blocks are enforced at the node: the agent runs in its own network namespace,
//! and clients connect from two others, one inside the allowed list and one outside it.

use std::time::Duration;
use steward_testbed::netns::{Host, Testbed};
use steward_testbed::node::{Agent, NodeSpec, PASSWORD};

/// PING the node from `client` with the real redis-cli over TLS; true on PONG.
fn ping_from(client: &Host, agent: &Agent, server_ip: &str) -> bool {
    let out = client
        .command("timeout")
        .args(["5", "redis-cli", "--tls", "--cacert"])
        .arg(agent.ca_file())
        .args([
            "-h",
            server_ip,
            "-p",
            &agent.spec.port.to_string(),
            "-a",
            PASSWORD,
            "--no-auth-warning",
            "PING",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "PONG"
}

fn agent_tables(server: &Host) -> String {
    server.exec(&["nft", "list", "tables"]).unwrap()
}

#[test]
fn only_allowed_networks_reach_redis_and_rules_follow_the_config() {
    let bed = Testbed::new(3).unwrap();
    let (server, inside, outside) = (bed.host(0), bed.host(1), bed.host(2));
    let server_ip = server.ip.to_string();

    let mut spec = NodeSpec::new("node-a");
    spec.bind = "0.0.0.0".into();
    spec.allowed_cidrs = Some(vec![format!("{}/32", inside.ip), "2001:db8::/32".into()]);
    let agent = Agent::prepare(spec).unwrap().in_netns(&server.name);
    agent.start().unwrap();
    agent.wait_healthy(Duration::from_secs(20)).unwrap();

    assert!(
        ping_from(inside, &agent, &server_ip),
        "allowed client refused"
    );
    assert!(
        !ping_from(outside, &agent, &server_ip),
        "client outside the list got in"
    );
    let table = "redis_steward_test_ds_node_a";
    assert!(agent_tables(server).contains(table));
    // The node itself (loopback) is always allowed.
    assert!(ping_from(server, &agent, "127.0.0.1"));

    // A changed list replaces the rules on the next start; stopping removes them.
    assert_eq!(agent.stop().unwrap(), Some(0));
    assert!(
        !agent_tables(server).contains(table),
        "table left behind after exit"
    );
    let text = std::fs::read_to_string(&agent.config_path)
        .unwrap()
        .replace(&format!("{}/32", inside.ip), &format!("{}/32", outside.ip));
    std::fs::write(&agent.config_path, text).unwrap();
    agent.start().unwrap();
    agent.wait_healthy(Duration::from_secs(20)).unwrap();
    assert!(
        ping_from(outside, &agent, &server_ip),
        "newly allowed client refused"
    );
    assert!(
        !ping_from(inside, &agent, &server_ip),
        "removed client still allowed"
    );

    // Opening the list to everyone removes the table; everyone gets in.
    agent.stop().unwrap();
    let text = std::fs::read_to_string(&agent.config_path)
        .unwrap()
        .replace(
            &format!("\"{}/32\", \"2001:db8::/32\"", outside.ip),
            "\"0.0.0.0/0\", \"::/0\"",
        );
    std::fs::write(&agent.config_path, text).unwrap();
    agent.start().unwrap();
    agent.wait_healthy(Duration::from_secs(20)).unwrap();
    assert!(!agent_tables(server).contains(table));
    assert!(ping_from(inside, &agent, &server_ip) && ping_from(outside, &agent, &server_ip));
}
