//! The Vagrant testbed's node provisioning (packaging/provision-node.sh), run here so it
//! cannot rot unseen: the script writes the configs of a three-node Premium data store in
//! "config only" mode, one per namespace host, with the shared CA, gossip key, backup key
//! and password it made, and a backup bucket on a fourth host running moto's S3 server (as
//! the Vagrant object-store VM does). The real agents then run on exactly those configs: one
//! primary and two replicas must answer over TLS, the Sentinel ports must name the primary,
//! and the first snapshot must reach the bucket.
//!
//! Needs root, `ip`, `nft`, `openssl`, redis-server, redis-cli and moto (`python3 -m
//! moto.server`), like the other namespace tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use steward_testbed::netns::{cleanup_stale, Host, Testbed};
use steward_testbed::node::{wait_for, Agent, NodeSpec};

const NODES: usize = 3;
const STORE_HOST: usize = 3;
const S3_PORT: u16 = 5000;
const BUCKET: &str = "steward-backups";
const DATA_STORE: &str = "prov-test";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/provision-node.sh")
}

fn run_script(args: &[&str]) {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("cannot run bash");
    assert!(
        out.status.success(),
        "provision-node.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.1 request from inside `host`; returns the whole response.
fn http(host: &Host, to: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    host.run_in(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })
}

/// moto's S3 server on the object-store host, stopped on drop (the testbed's drop would
/// kill it too).
struct ObjectStore(Child);

impl ObjectStore {
    fn start(host: &Host) -> ObjectStore {
        let child = host
            .command("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "0.0.0.0",
                "-p",
                &S3_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto (python3 -m pip install 'moto[server]')");
        let store = ObjectStore(child);
        let addr = SocketAddr::new(host.ip.into(), S3_PORT);
        wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
            http(host, addr, "GET", "/").ok()
        })
        .expect("moto did not answer within 30 s");
        let created = http(host, addr, "PUT", &format!("/{BUCKET}")).unwrap();
        assert!(created.starts_with("HTTP/1.1 200"), "{created}");
        store
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// redis-cli over TLS from `client` to `ip:port`, as the customer; trimmed stdout.
fn cli(client: &Host, shared: &Path, ip: &str, port: u16, args: &[&str]) -> String {
    let password = std::fs::read_to_string(shared.join("password")).unwrap();
    let out = client
        .command("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(shared.join("ca.crt"))
        .args(["-h", ip, "-p", &port.to_string(), "--no-auth-warning", "-a"])
        .arg(password.trim())
        .args(args)
        .output()
        .expect("cannot run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn provisioned_premium_nodes_elect_a_primary_and_serve_tls() {
    let _ = cleanup_stale();
    let bed = Testbed::new(NODES + 1).unwrap();
    let _store = ObjectStore::start(bed.host(STORE_HOST));
    let shared = tempfile::Builder::new()
        .prefix("rs-provision-")
        .tempdir()
        .unwrap();
    let shared_dir = shared.path().join("shared");
    run_script(&["--init-shared", shared_dir.to_str().unwrap()]);

    let members: Vec<String> = (0..NODES)
        .map(|i| format!("node-{}={}", i + 1, bed.host(i).ip))
        .collect();
    let members = members.join(",");
    let endpoint = format!("http://{}:{S3_PORT}", bed.host(STORE_HOST).ip);
    let mut agents = Vec::new();
    for i in 0..NODES {
        let dir = tempfile::Builder::new()
            .prefix("rs-provision-node-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_str().unwrap().to_string();
        let name = format!("node-{}", i + 1);
        let ip = bed.host(i).ip.to_string();
        run_script(&[
            "--config-only",
            "--root",
            &root,
            "--shared",
            shared_dir.to_str().unwrap(),
            "--node",
            &name,
            "--address",
            &ip,
            "--nodes",
            &members,
            "--s3-endpoint",
            &endpoint,
            "--bucket",
            BUCKET,
            "--data-store",
            DATA_STORE,
            // This machine's hard open-files limit cannot hold the maxclients of its RAM.
            "--memory-mb",
            "1024",
        ]);
        let config = dir.path().join("etc/redis-steward/config.toml");
        let check = steward_testbed::node::run_cli(&["check-config", config.to_str().unwrap()]);
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut spec = NodeSpec::new(&name);
        spec.data_store_id = DATA_STORE.into();
        spec.bind = ip;
        spec.port = 6380;
        spec.api_port = 7480;
        spec.sentinel_port = 26379;
        agents.push(Agent::from_config(spec, dir, config).in_netns(&bed.host(i).name));
    }
    for a in &agents {
        a.start().unwrap();
    }
    for a in &agents {
        a.wait_healthy(Duration::from_secs(30)).unwrap();
    }

    // One writable primary, two replicas, all agreeing on the epoch.
    let roles = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        let st: Vec<_> = agents.iter().map(|a| a.status()).collect::<Option<_>>()?;
        let primaries: Vec<usize> = (0..NODES)
            .filter(|&i| st[i]["role"] == "primary" && st[i]["cluster"]["writable"] == true)
            .collect();
        let replicas = st.iter().filter(|s| s["role"] == "replica").count();
        (primaries.len() == 1 && replicas == NODES - 1).then(|| primaries[0])
    });
    let logs = || {
        agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.spec.node_name, a.log()))
            .collect::<String>()
    };
    let primary = roles.unwrap_or_else(|| panic!("no primary and two replicas; logs:\n{}", logs()));

    // As a client on another host sees it: over TLS with the shared CA and password.
    let client = bed.host(STORE_HOST);
    let ip = |i: usize| bed.host(i).ip.to_string();
    assert_eq!(
        cli(
            client,
            &shared_dir,
            &ip(primary),
            6380,
            &["SET", "provisioned", "yes"]
        ),
        "OK"
    );
    for i in (0..NODES).filter(|&i| i != primary) {
        let replicated = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
            (cli(client, &shared_dir, &ip(i), 6380, &["GET", "provisioned"]) == "yes").then_some(())
        });
        assert!(replicated.is_some(), "node {i} did not replicate the write");
        let refused = cli(client, &shared_dir, &ip(i), 6380, &["SET", "x", "1"]);
        assert!(
            refused.contains("READONLY"),
            "replica {i} took a write: {refused}"
        );
    }
    // Every Sentinel port names the primary.
    for i in 0..NODES {
        let answer = cli(
            client,
            &shared_dir,
            &ip(i),
            26379,
            &["SENTINEL", "get-master-addr-by-name", DATA_STORE],
        );
        assert_eq!(
            answer,
            format!("{}\n6380", ip(primary)),
            "sentinel on node {i}"
        );
    }
    // The primary's first snapshot reaches the shared bucket on the object-store host.
    let s3 = SocketAddr::new(bed.host(STORE_HOST).ip.into(), S3_PORT);
    let listed = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
        let body = http(client, s3, "GET", &format!("/{BUCKET}?list-type=2")).ok()?;
        body.contains(&format!("<Key>{DATA_STORE}/"))
            .then_some(body)
    });
    assert!(
        listed.is_some(),
        "no backup object in s3://{BUCKET}/{DATA_STORE}; logs:\n{}",
        logs()
    );
    for a in &agents {
        assert_eq!(a.stop().unwrap(), Some(0), "{}", a.log());
    }
}
