//! The Sentinel port over real TLS sockets: raw byte exchanges for the exact RESP2/RESP3
//! shapes, the redis crate as a client, and redis-rs's own `SentinelClient` following a
//! primary switch between two real TLS redis-servers.
//!
//! Every wait is bounded (`T`), every child process is killed by a Drop guard.

use futures::StreamExt;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, PushKind, TlsCertificates, TlsMode};
use redis_steward::cluster::resp::{self, Value};
use redis_steward::cluster::sentinel::{
    server_tls_config, Endpoint, ReplicaEntry, SentinelPeer, SentinelServer, SentinelSettings,
    SentinelView,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Bound for any single wait in these tests.
const T: Duration = Duration::from_secs(10);
const PW: &str = "customer-pw";
const RUN_ID: &str = "feedfacefeedfacefeedfacefeedfacefeedface";
const NAME: &str = "ds-test";

fn install_provider() {
    // object_store links aws-lc too, so rustls has no implicit default: pick ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A throwaway CA and a server certificate for localhost / 127.0.0.1, made by the agent's
/// own development-mode generator (`tls::prepare`).
struct Pki {
    dir: tempfile::TempDir,
    files: redis_steward::node::tls::TlsMaterial,
    ca_pem: String,
    ca_der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let layout = redis_steward::node::layout::Layout::new(
            &dir.path().join("data"),
            &dir.path().join("state"),
        );
        let tls = redis_steward::config::TlsConfig::Generate {
            ca_file: None,
            ca_key_file: None,
        };
        let files = redis_steward::node::tls::prepare(&tls, &layout, "localhost", &[]).unwrap();
        let ca_pem = std::fs::read_to_string(&files.ca).unwrap();
        let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .unwrap()
            .to_vec();
        Pki {
            dir,
            files,
            ca_pem,
            ca_der,
        }
    }

    /// A scratch path beside the certificates.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn certs(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: None,
            root_cert: Some(self.ca_pem.clone().into_bytes()),
        }
    }
}

fn sample_view() -> SentinelView {
    SentinelView {
        master_name: NAME.into(),
        epoch: 7,
        primary: Some(Endpoint::new("127.0.0.1", 7001)),
        primary_down: false,
        replicas: vec![ReplicaEntry {
            name: "node-b".into(),
            ip: "127.0.0.1".into(),
            port: 7002,
            up: true,
            offset: 4242,
            link_up: true,
        }],
        sentinels: vec![SentinelPeer {
            name: "b".repeat(40),
            ip: "127.0.0.1".into(),
            port: 27002,
            up: true,
        }],
        quorum: 2,
    }
}

/// A running Sentinel port on 127.0.0.1 with its view sender.
struct Server {
    addr: SocketAddr,
    view: watch::Sender<SentinelView>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pki: Pki,
}

impl Server {
    async fn start(view: SentinelView) -> Server {
        install_provider();
        let pki = Pki::new();
        let tls = server_tls_config(&pki.files.cert, &pki.files.key).unwrap();
        let server = SentinelServer::bind(SentinelSettings {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            tls,
            password: PW.into(),
            run_id: RUN_ID.into(),
        })
        .await
        .unwrap();
        let addr = server.local_addrs()[0];
        let (view_tx, view_rx) = watch::channel(view);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(view_rx, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            view: view_tx,
            stop: Some(stop),
            task,
            pki,
        }
    }

    fn url(&self, resp3: bool) -> String {
        let proto = if resp3 { "?protocol=resp3" } else { "" };
        format!("rediss://:{PW}@127.0.0.1:{}/{proto}", self.addr.port())
    }

    fn client(&self, resp3: bool) -> redis::Client {
        redis::Client::build_with_tls(self.url(resp3), self.pki.certs()).unwrap()
    }

    async fn raw(&self) -> Raw {
        Raw::connect(self.addr, &self.pki).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(T, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

/// A TLS connection speaking bytes, to check exact reply shapes.
struct Raw {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr, pki: &Pki) -> Raw {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone().into()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream =
            tokio::time::timeout(T, TlsConnector::from(Arc::new(config)).connect(name, tcp))
                .await
                .unwrap()
                .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Send a command as a multibulk request.
    async fn send(&mut self, cmd: &str) {
        let args = resp::split_args(cmd.as_bytes()).unwrap();
        let req = Value::Array(args.into_iter().map(Value::Bulk).collect());
        self.send_bytes(&req.to_bytes(resp::Protocol::Resp2)).await;
    }

    /// The bytes of exactly one reply.
    async fn reply(&mut self) -> Vec<u8> {
        tokio::time::timeout(T, async {
            loop {
                if let Some((_, n)) = resp::decode(&self.buf).unwrap() {
                    return self.buf.drain(..n).collect();
                }
                let mut chunk = [0u8; 8192];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed; have {:?}", lossy(&self.buf));
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a reply within the time bound")
    }

    async fn call(&mut self, cmd: &str) -> Vec<u8> {
        self.send(cmd).await;
        self.reply().await
    }

    async fn value(&mut self, cmd: &str) -> Value {
        let bytes = self.call(cmd).await;
        resp::decode(&bytes).unwrap().unwrap().0
    }

    /// The server closes the connection (after any bytes already buffered).
    async fn expect_closed(&mut self) {
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(T, self.stream.read(&mut chunk))
            .await
            .expect("closed within the time bound");
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected a close, got {:?}", lossy(&chunk[..n])),
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The string fields of a map reply (RESP3 map or RESP2 flat array).
fn fields(v: &Value) -> HashMap<String, String> {
    let items: Vec<Value> = match v {
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        Value::Array(flat) => flat.clone(),
        other => panic!("not a map: {other:?}"),
    };
    items
        .chunks(2)
        .map(|kv| match kv {
            [Value::Bulk(k), Value::Bulk(v)] => (lossy(k), lossy(v)),
            other => panic!("not string pairs: {other:?}"),
        })
        .collect()
}

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";

#[tokio::test]
async fn authentication_rules_over_tls() {
    let server = Server::start(sample_view()).await;
    let mut c = server.raw().await;
    assert_eq!(c.call("PING").await, NOAUTH);
    assert_eq!(
        c.call("SENTINEL get-master-addr-by-name ds-test").await,
        NOAUTH
    );
    assert_eq!(c.call("ROLE").await, NOAUTH);
    let hello = lossy(&c.call("HELLO 3").await);
    assert!(
        hello.starts_with("-NOAUTH HELLO must be called with the client already authenticated"),
        "{hello}"
    );
    assert_eq!(c.call("AUTH wrong").await, WRONGPASS);
    assert_eq!(c.call("AUTH default wrong").await, WRONGPASS);
    assert_eq!(c.call(&format!("AUTH admin {PW}")).await, WRONGPASS);
    assert_eq!(c.call("HELLO 3 AUTH default wrong").await, WRONGPASS);
    assert_eq!(
        c.call("HELLO 4 AUTH default x").await,
        b"-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(c.call("PING").await, NOAUTH, "still not authenticated");
    // Inline commands work too (redis-cli, telnet).
    c.send_bytes(format!("AUTH {PW}\r\nPING\r\n").as_bytes())
        .await;
    assert_eq!(c.reply().await, b"+OK\r\n");
    assert_eq!(c.reply().await, b"+PONG\r\n");

    let mut c = server.raw().await;
    assert_eq!(c.call(&format!("AUTH default {PW}")).await, b"+OK\r\n");
    assert_eq!(c.call("PING").await, b"+PONG\r\n");

    // The redis crate: no password -> NOAUTH, wrong password -> WRONGPASS.
    let no_pw = format!("rediss://127.0.0.1:{}/", server.addr.port());
    let client = redis::Client::build_with_tls(no_pw, server.pki.certs()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let err = redis::cmd("ROLE")
        .query_async::<redis::Value>(&mut con)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    for resp3 in [false, true] {
        let proto = if resp3 { "?protocol=resp3" } else { "" };
        let url = format!("rediss://:nope@127.0.0.1:{}/{proto}", server.addr.port());
        let client = redis::Client::build_with_tls(url, server.pki.certs()).unwrap();
        let err = client.get_multiplexed_async_connection().await.unwrap_err();
        // redis-rs shows HELLO's WRONGPASS as is, and turns AUTH's into its own error kind.
        assert!(
            err.to_string().contains("WRONGPASS")
                || (!resp3 && err.kind() == redis::ErrorKind::AuthenticationFailed),
            "resp3={resp3}: {err}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn resp3_replies_are_maps_like_sentinel_7() {
    let server = Server::start(sample_view()).await;
    let mut c = server.raw().await;
    let hello = c
        .value(&format!("HELLO 3 AUTH default {PW} SETNAME probe"))
        .await;
    let Value::Map(pairs) = &hello else {
        panic!("HELLO 3 answers a map: {hello:?}")
    };
    let keys: Vec<Value> = pairs.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        ["server", "version", "proto", "id", "mode", "modules"]
            .map(Value::bulk)
            .to_vec()
    );
    assert_eq!(pairs[1].1, Value::bulk("7.0.15"));
    assert_eq!(pairs[2].1, Value::Integer(3));
    assert_eq!(pairs[4].1, Value::bulk("sentinel"));
    assert_eq!(c.call("CLIENT GETNAME").await, b"$5\r\nprobe\r\n");
    assert_eq!(c.call("CLIENT SETINFO LIB-NAME raw").await, b"+OK\r\n");
    let id = c.value("CLIENT ID").await;
    assert!(matches!(id, Value::Integer(n) if n > 0), "{id:?}");

    assert_eq!(
        c.call("SENTINEL get-master-addr-by-name ds-test").await,
        b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n7001\r\n"
    );
    assert_eq!(
        c.call("SENTINEL get-master-addr-by-name other").await,
        b"_\r\n"
    );
    assert_eq!(
        c.call("ROLE").await,
        b"*2\r\n$8\r\nsentinel\r\n*1\r\n$7\r\nds-test\r\n"
    );
    let master = c.call("SENTINEL master ds-test").await;
    assert!(master.starts_with(b"%20\r\n$4\r\nname\r\n$7\r\nds-test\r\n"));
    let m = fields(&resp::decode(&master).unwrap().unwrap().0);
    assert_eq!(m["ip"], "127.0.0.1");
    assert_eq!(m["port"], "7001");
    assert_eq!(m["flags"], "master");
    assert_eq!(m["config-epoch"], "7");
    assert_eq!(m["num-slaves"], "1");
    assert_eq!(m["num-other-sentinels"], "1");
    assert_eq!(m["quorum"], "2");
    let masters = c.call("SENTINEL masters").await;
    assert_eq!(masters, [b"*1\r\n".as_slice(), &master].concat());
    let replicas = c.call("SENTINEL replicas ds-test").await;
    assert!(
        replicas.starts_with(b"*1\r\n%21\r\n"),
        "{}",
        lossy(&replicas)
    );
    let Value::Array(rs) = resp::decode(&replicas).unwrap().unwrap().0 else {
        panic!()
    };
    let r = fields(&rs[0]);
    assert_eq!(r["name"], "127.0.0.1:7002");
    assert_eq!(r["flags"], "slave");
    assert_eq!(r["master-link-status"], "ok");
    assert_eq!(r["master-port"], "7001");
    assert_eq!(r["slave-repl-offset"], "4242");
    assert_eq!(c.call("SENTINEL slaves ds-test").await, replicas);
    let sentinels = c.call("SENTINEL sentinels ds-test").await;
    assert!(
        sentinels.starts_with(b"*1\r\n%14\r\n"),
        "{}",
        lossy(&sentinels)
    );
    let Value::Array(ss) = resp::decode(&sentinels).unwrap().unwrap().0 else {
        panic!()
    };
    let s = fields(&ss[0]);
    assert_eq!(
        (s["ip"].as_str(), s["port"].as_str()),
        ("127.0.0.1", "27002")
    );
    assert_eq!(s["flags"], "sentinel");
    assert_eq!(
        c.call("SENTINEL ckquorum ds-test").await,
        b"+OK 2 usable Sentinels. Quorum and failover authorization can be reached\r\n"
    );
    assert_eq!(
        c.call("SENTINEL myid").await,
        format!("$40\r\n{RUN_ID}\r\n").as_bytes()
    );
    assert_eq!(
        c.call("SENTINEL master other").await,
        b"-ERR No such master with that name\r\n"
    );
    assert_eq!(
        c.call("SENTINEL failover ds-test").await,
        b"-ERR this data store is managed by redis-steward; use 'redis-steward switchover'\r\n"
    );
    let info = lossy(&c.call("INFO").await);
    assert!(info.contains("redis_mode:sentinel\r\n"), "{info}");
    assert!(info.contains(&format!("tcp_port:{}\r\n", server.addr.port())));
    assert!(info.contains(
        "master0:name=ds-test,status=ok,address=127.0.0.1:7001,slaves=1,sentinels=2\r\n"
    ));
    assert_eq!(
        c.call("SELECT 0").await,
        b"-ERR unknown command 'SELECT', with args beginning with: '0' \r\n"
    );
    // Back to RESP2: the same master becomes a flat array.
    let hello2 = c.call("HELLO 2").await;
    assert!(hello2.starts_with(b"*12\r\n"));
    let flat = c.call("SENTINEL master ds-test").await;
    assert!(flat.starts_with(b"*40\r\n$4\r\nname\r\n"));
    assert_eq!(
        c.call("SENTINEL get-master-addr-by-name other").await,
        b"*-1\r\n"
    );
    assert_eq!(c.call("CLIENT SETNAME \"\"").await, b"+OK\r\n");
    assert_eq!(c.call("CLIENT GETNAME").await, b"$-1\r\n");
    c.send("QUIT").await;
    assert_eq!(c.reply().await, b"+OK\r\n");
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn the_redis_crate_reads_every_command_in_resp2_and_resp3() {
    let server = Server::start(sample_view()).await;
    for resp3 in [false, true] {
        let mut con = server
            .client(resp3)
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let ctx = format!("resp3={resp3}");
        let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
        assert_eq!(pong, "PONG", "{ctx}");
        let role: redis::Role = redis::cmd("ROLE").query_async(&mut con).await.unwrap();
        assert!(
            matches!(&role, redis::Role::Sentinel { primary_names } if primary_names == &[NAME]),
            "{ctx}: {role:?}"
        );
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(NAME)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(addr, Some(("127.0.0.1".into(), 7001)), "{ctx}");
        let none: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("nope")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(none, None, "{ctx}");
        let masters: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("MASTERS")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(masters.len(), 1);
        assert_eq!(masters[0]["name"], NAME, "{ctx}");
        assert_eq!(masters[0]["flags"], "master", "{ctx}");
        let master: HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(NAME)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(master, masters[0], "{ctx}");
        let slaves: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("SLAVES")
            .arg(NAME)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(slaves[0]["port"], "7002", "{ctx}");
        let sentinels: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("SENTINELS")
            .arg(NAME)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(sentinels[0]["runid"], "b".repeat(40), "{ctx}");
        let ck: String = redis::cmd("SENTINEL")
            .arg("CKQUORUM")
            .arg(NAME)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ck.starts_with("OK 2 usable Sentinels"), "{ctx}: {ck}");
        let myid: String = redis::cmd("SENTINEL")
            .arg("MYID")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(myid, RUN_ID, "{ctx}");
        let info: String = redis::cmd("INFO")
            .arg("sentinel")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(info.contains("sentinel_masters:1"), "{ctx}: {info}");
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("crate")
            .query_async(&mut con)
            .await
            .unwrap();
        let name: Option<String> = redis::cmd("CLIENT")
            .arg("GETNAME")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("crate"), "{ctx}");
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(id > 0);
        let err = redis::cmd("SENTINEL")
            .arg("SET")
            .arg(NAME)
            .arg("quorum")
            .arg("1")
            .query_async::<redis::Value>(&mut con)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("managed by redis-steward"),
            "{ctx}: {err}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn plaintext_clients_get_no_resp_answer() {
    let server = Server::start(sample_view()).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PING\r\n").await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(T, tcp.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server must close a plaintext connection");
    // Nothing, or a TLS alert record (content type 21): never a RESP reply.
    assert!(
        got.is_empty() || got[0] == 0x15,
        "plaintext client got {:?}",
        lossy(&got)
    );
    // The redis crate without TLS fails too.
    let plain =
        redis::Client::open(format!("redis://:{PW}@127.0.0.1:{}/", server.addr.port())).unwrap();
    let res = tokio::time::timeout(T, plain.get_multiplexed_async_connection()).await;
    assert!(
        matches!(res, Ok(Err(_))),
        "plaintext redis client must fail"
    );
    server.stop().await;
}

#[tokio::test]
async fn oversized_or_malformed_requests_are_refused_and_closed() {
    let server = Server::start(sample_view()).await;
    // Before AUTH: Redis's own small limits.
    let mut c = server.raw().await;
    c.send_bytes(b"*11\r\n").await;
    assert_eq!(
        c.reply().await,
        b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    c.expect_closed().await;
    let mut c = server.raw().await;
    c.send_bytes(b"*2\r\n$20000\r\n").await;
    assert_eq!(
        c.reply().await,
        b"-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    c.expect_closed().await;
    // After AUTH: a bulk over 64 KiB, more than 64 arguments, garbage.
    for (req, err) in [
        (
            b"*1\r\n$65537\r\n".as_slice(),
            b"-ERR Protocol error: invalid bulk length\r\n".as_slice(),
        ),
        (
            b"*65\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n+PING\r\n",
            b"-ERR Protocol error: expected '$', got '+'\r\n",
        ),
    ] {
        let mut c = server.raw().await;
        assert_eq!(c.call(&format!("AUTH {PW}")).await, b"+OK\r\n");
        c.send_bytes(req).await;
        assert_eq!(c.reply().await, err);
        c.expect_closed().await;
    }
    // A bulk of exactly 64 KiB is fine.
    let mut c = server.raw().await;
    assert_eq!(c.call(&format!("AUTH {PW}")).await, b"+OK\r\n");
    let big = "x".repeat(64 * 1024);
    let mut req = b"*2\r\n$4\r\nPING\r\n$65536\r\n".to_vec();
    req.extend_from_slice(big.as_bytes());
    req.extend_from_slice(b"\r\n");
    c.send_bytes(&req).await;
    assert_eq!(c.reply().await.len(), 64 * 1024 + 10);
    // A huge inline line without a newline is cut off: one byte past the limit, so the server
    // has read everything sent when it refuses and closes (unread bytes would make the close
    // a reset, and could fail this write).
    let mut c = server.raw().await;
    assert_eq!(c.call(&format!("AUTH {PW}")).await, b"+OK\r\n");
    let too_big = redis_steward::cluster::resp::Limits::AUTHENTICATED.max_request + 1;
    c.send_bytes(&vec![b'a'; too_big]).await;
    assert_eq!(
        c.reply().await,
        b"-ERR Protocol error: too big inline request\r\n"
    );
    c.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    install_provider();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let pki = Pki::new();
    let settings = SentinelSettings {
        listen: vec![addr],
        tls: server_tls_config(&pki.files.cert, &pki.files.key).unwrap(),
        password: PW.into(),
        run_id: RUN_ID.into(),
    };
    let err = SentinelServer::bind(settings.clone()).await.err().unwrap();
    assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
    let err = SentinelServer::bind(SentinelSettings {
        password: String::new(),
        ..settings.clone()
    })
    .await
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("password"), "{err:#}");
    let err = SentinelServer::bind(SentinelSettings {
        run_id: "short".into(),
        ..settings
    })
    .await
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("run id"), "{err:#}");
}

#[tokio::test]
async fn switch_master_reaches_resp2_and_resp3_subscribers() {
    let server = Server::start(sample_view()).await;
    // Raw RESP2 subscriber to the channel.
    let mut r2 = server.raw().await;
    assert_eq!(r2.call(&format!("AUTH {PW}")).await, b"+OK\r\n");
    assert_eq!(
        r2.call("SUBSCRIBE +switch-master").await,
        b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
    );
    assert_eq!(
        r2.call("ROLE").await,
        b"-ERR Can't execute 'role': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / \
          RESET are allowed in this context\r\n"
            .to_vec()
    );
    assert_eq!(r2.call("PING").await, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // Raw RESP3 subscriber to every channel.
    let mut r3 = server.raw().await;
    r3.call(&format!("HELLO 3 AUTH default {PW}")).await;
    assert_eq!(
        r3.call("PSUBSCRIBE *").await,
        b">3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:1\r\n"
    );
    // The redis crate in RESP2 (PubSub) and RESP3 (pushes on a multiplexed connection).
    let mut pubsub = server.client(false).get_async_pubsub().await.unwrap();
    pubsub.subscribe("+switch-master").await.unwrap();
    let (push_tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let mut con3 = server
        .client(true)
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_push_sender(push_tx),
        )
        .await
        .unwrap();
    con3.subscribe("+switch-master").await.unwrap();

    // Failover: epoch 8, primary 7001 -> 7002.
    server.view.send_modify(|v| {
        v.epoch = 8;
        v.primary = Some(Endpoint::new("127.0.0.1", 7002));
    });
    let payload = "ds-test 127.0.0.1 7001 127.0.0.1 7002";
    assert_eq!(
        r2.reply().await,
        format!("*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$37\r\n{payload}\r\n").as_bytes()
    );
    assert_eq!(
        r3.reply().await,
        b">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$10\r\n+new-epoch\r\n$1\r\n8\r\n"
    );
    assert_eq!(
        r3.reply().await,
        format!(">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$14\r\n+switch-master\r\n$37\r\n{payload}\r\n")
            .as_bytes()
    );
    let msg = tokio::time::timeout(T, pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.get_channel_name(), "+switch-master");
    assert_eq!(msg.get_payload::<String>().unwrap(), payload);
    let push = tokio::time::timeout(T, async {
        loop {
            let p = pushes.recv().await.expect("push channel open");
            if p.kind == PushKind::Message {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        push.data,
        vec![
            redis::Value::BulkString(b"+switch-master".to_vec()),
            redis::Value::BulkString(payload.as_bytes().to_vec())
        ]
    );
    // A subscriber that hears the switch finds the new primary at once.
    let mut c = server.raw().await;
    c.call(&format!("AUTH {PW}")).await;
    assert_eq!(
        c.call("SENTINEL get-master-addr-by-name ds-test").await,
        b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n7002\r\n"
    );

    // The primary goes down, then comes back: +sdown/+odown, -sdown/-odown, in order.
    server.view.send_modify(|v| v.primary_down = true);
    let who = "master ds-test 127.0.0.1 7002";
    let pmsg = |ch: &str, body: &str| {
        format!(
            ">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n${}\r\n{ch}\r\n${}\r\n{body}\r\n",
            ch.len(),
            body.len()
        )
        .into_bytes()
    };
    assert_eq!(r3.reply().await, pmsg("+sdown", who));
    assert_eq!(
        r3.reply().await,
        pmsg("+odown", &format!("{who} #quorum 2/2"))
    );
    let flags = fields(&c.value("SENTINEL master ds-test").await)["flags"].clone();
    assert_eq!(flags, "s_down,o_down,master");
    server.view.send_modify(|v| v.primary_down = false);
    assert_eq!(r3.reply().await, pmsg("-sdown", who));
    assert_eq!(r3.reply().await, pmsg("-odown", who));
    // The channel subscriber got nothing but the switch.
    assert_eq!(r2.call("PING").await, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(
        r2.call("UNSUBSCRIBE").await,
        b"*3\r\n$11\r\nunsubscribe\r\n$14\r\n+switch-master\r\n:0\r\n"
    );
    assert!(r2.call("ROLE").await.starts_with(b"*2\r\n"));
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// End to end with redis-rs's SentinelClient and two real TLS redis-servers.

/// A redis-server child, killed on drop (also when a test panics).
struct RedisProc {
    child: Child,
    port: u16,
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_redis(pki: &Pki, dir: &Path) -> RedisProc {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(&pki.files.cert)
        .arg("--tls-key-file")
        .arg(&pki.files.key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.files.ca)
        .args(["--tls-auth-clients", "no", "--requirepass", PW])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let proc = RedisProc { child, port };
    let client =
        redis::Client::build_with_tls(format!("rediss://:{PW}@127.0.0.1:{port}/"), pki.certs())
            .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Ok(Ok(mut con)) =
            tokio::time::timeout(T, client.get_multiplexed_async_connection()).await
        {
            if redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .is_ok()
            {
                return proc;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn label(pki: &Pki, port: u16, who: &str) {
    let client =
        redis::Client::build_with_tls(format!("rediss://:{PW}@127.0.0.1:{port}/"), pki.certs())
            .unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("whoami")
        .arg(who)
        .query_async(&mut con)
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_rs_sentinel_client_follows_a_switch() {
    let mut view = sample_view();
    view.primary = None;
    view.replicas.clear();
    let server = Server::start(view).await;
    let a = start_redis(&server.pki, &server.pki.path("a")).await;
    let b = start_redis(&server.pki, &server.pki.path("b")).await;
    label(&server.pki, a.port, "a").await;
    label(&server.pki, b.port, "b").await;

    let sentinel_addr = ConnectionAddr::TcpTls {
        host: "127.0.0.1".into(),
        port: server.addr.port(),
        insecure: false,
        tls_params: None,
    };
    let mut client = SentinelClientBuilder::new([sentinel_addr], NAME, SentinelServerType::Master)
        .unwrap()
        .set_client_to_sentinel_password(PW)
        .set_client_to_sentinel_certificates(server.pki.certs())
        .set_client_to_redis_password(PW)
        .set_client_to_redis_tls_mode(TlsMode::Secure)
        .set_client_to_redis_certificates(server.pki.certs())
        .build()
        .unwrap();

    // No primary known yet: the name is unknown, so no connection.
    let res = tokio::time::timeout(T, client.get_async_connection()).await;
    assert!(matches!(res, Ok(Err(_))), "no primary, no connection");

    server.view.send_modify(|v| {
        v.primary = Some(Endpoint::new("127.0.0.1", a.port));
        v.replicas = vec![ReplicaEntry {
            name: "b".into(),
            ip: "127.0.0.1".into(),
            port: b.port,
            up: true,
            offset: 0,
            link_up: true,
        }];
    });
    let mut con = tokio::time::timeout(T, client.get_async_connection())
        .await
        .unwrap()
        .unwrap();
    let who: String = redis::cmd("GET")
        .arg("whoami")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(who, "a");
    let _: () = redis::cmd("SET")
        .arg("written")
        .arg("via sentinel")
        .query_async(&mut con)
        .await
        .unwrap();

    // The agents fail over to b: a fresh connection through the sentinel lands there.
    server.view.send_modify(|v| {
        v.epoch += 1;
        v.primary = Some(Endpoint::new("127.0.0.1", b.port));
        v.replicas[0].port = a.port;
    });
    let mut con = tokio::time::timeout(T, client.get_async_connection())
        .await
        .unwrap()
        .unwrap();
    let who: String = redis::cmd("GET")
        .arg("whoami")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(who, "b");
    drop(con);
    drop((a, b));
    server.stop().await;
}
