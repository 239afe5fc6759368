//! One node, end to end: the real agent binary owning Debian's redis-server 7.0, reached with
//! the real redis-cli over TLS.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use steward_testbed::node::{
    http_get, pid_alive, run_cli, wait_for, wait_pid_gone, Agent, NodeSpec, PASSWORD,
};

fn started(spec: NodeSpec) -> Agent {
    let a = Agent::prepare(spec).unwrap();
    a.start_healthy().unwrap();
    a
}

/// The whole reply of a customer command (redis-cli puts some errors on stderr, and SYNC
/// prints a banner before the error).
fn reply(a: &Agent, args: &[&str]) -> String {
    let o = a.cli(args);
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn assert_noperm(a: &Agent, args: &[&str]) {
    let r = reply(a, args);
    assert!(
        r.contains("NOPERM this user has no permissions"),
        "{args:?} answered {r:?}"
    );
}

#[test]
fn customers_reach_redis_over_tls_only_with_everyday_commands() {
    let a = started(NodeSpec::new("node-a"));

    // Everyday commands work.
    let checks: &[(&[&str], &str)] = &[
        (&["SET", "s", "v"], "OK"),
        (&["GET", "s"], "v"),
        (&["INCR", "n"], "1"),
        (&["HSET", "h", "f", "v"], "1"),
        (&["HGET", "h", "f"], "v"),
        (&["RPUSH", "l", "a", "b"], "2"),
        (&["LRANGE", "l", "0", "-1"], "a\nb"),
        (&["SADD", "set", "x"], "1"),
        (&["SMEMBERS", "set"], "x"),
        (&["ZADD", "z", "1", "m"], "1"),
        (&["ZRANGE", "z", "0", "-1"], "m"),
        (&["XADD", "st", "1-1", "k", "v"], "1-1"),
        (&["XLEN", "st"], "1"),
        (&["PUBLISH", "chan", "hello"], "0"),
        (&["EXPIRE", "s", "100"], "1"),
        (&["DBSIZE"], "7"),
        (&["WAIT", "0", "10"], "0"),
    ];
    for (args, want) in checks {
        assert_eq!(a.cmd(args), *want, "{args:?}");
    }
    let info = a.cmd(&["INFO", "server"]);
    assert!(info.contains("redis_version:7."), "{info}");

    // MULTI/EXEC in one connection.
    let mut c = a
        .redis_cli_command(Some(PASSWORD))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"MULTI\nSET t1 a\nINCR n\nEXEC\n")
        .unwrap();
    let out = String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["OK", "QUEUED", "QUEUED", "OK", "2"],
        "{out}"
    );

    // Pub/sub: a subscriber receives a message published by another client.
    let mut sub = a
        .redis_cli_command(Some(PASSWORD))
        .args(["SUBSCRIBE", "news"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // redis-cli prints the message after PUBLISH has already answered: read its output on a
    // thread and wait (bounded) for the message instead of racing a kill against the print.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Bounded generously: a redis-cli start, a TLS handshake and SUBSCRIBE on a busy machine.
    let delivered = wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
        (a.cmd(&["PUBLISH", "news", "hi"]) == "1").then_some(())
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.iter().any(|l| l == "hi") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = reader.join();
    assert!(
        delivered.is_some() && seen.iter().any(|l| l == "hi"),
        "{seen:?}"
    );

    assert_eq!(a.cmd(&["FLUSHDB"]), "OK");
    assert_eq!(a.cmd(&["DBSIZE"]), "0");

    // Plaintext to the TLS port fails.
    let plain = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &a.spec.port.to_string(),
            "-a",
            PASSWORD,
            "--no-auth-warning",
            "PING",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plain.stdout).to_string()
        + &String::from_utf8_lossy(&plain.stderr);
    assert!(!text.contains("PONG"), "plaintext PING answered: {text}");

    // redis listens on the TLS port only (plus its unix socket): no plaintext TCP port.
    let pid = a.redis_pid().unwrap();
    let ss = Command::new("ss").args(["-Hltnp"]).output().unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    let ports: Vec<&str> = ss
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(ports, vec![format!("127.0.0.1:{}", a.spec.port)], "{ss}");
}

#[test]
fn passwords_are_enforced() {
    let a = started(NodeSpec::new("node-a"));
    // redis-cli runs the command even after a failed AUTH: check the reply, not the exit code.
    let wrong = a.cli_as(Some("not-the-password"), &["SET", "k", "v"]);
    let text = String::from_utf8_lossy(&wrong.stdout).to_string()
        + &String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("WRONGPASS"), "{text}");
    assert!(
        text.contains("NOAUTH"),
        "command after failed AUTH must be refused: {text}"
    );
    let none = a.cli_as(None, &["GET", "k"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("NOAUTH"));
    assert_eq!(a.cmd(&["EXISTS", "k"]), "0", "no write got through");
    // The agent's own secrets stay private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["secrets.toml", "users.acl", "redis.conf", "tls/node.key"] {
        let mode = std::fs::metadata(a.state_dir().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let acl = std::fs::read_to_string(a.state_dir().join("users.acl")).unwrap();
    assert!(!acl.contains(PASSWORD), "plaintext password in ACL file");
}

const ALWAYS_BLOCKED: &[&[&str]] = &[
    &["CONFIG", "GET", "maxclients"],
    &["CONFIG", "SET", "maxclients", "1"],
    &["DEBUG", "SLEEP", "0"],
    &["ACL", "LIST"],
    &["ACL", "WHOAMI"],
    &["SAVE"],
    &["BGSAVE"],
    &["BGREWRITEAOF"],
    &["SHUTDOWN", "NOSAVE"],
    &["MONITOR"],
    &["REPLICAOF", "NO", "ONE"],
    &["SLAVEOF", "NO", "ONE"],
    &["FAILOVER"],
    &["ROLE"],
    &["CLUSTER", "INFO"],
    &["COMMAND"],
    &["COMMAND", "COUNT"],
    &["MIGRATE", "127.0.0.1", "1", "k", "0", "100"],
    &["LASTSAVE"],
    &["SYNC"],
    &["PSYNC", "?", "-1"],
    &["REPLCONF", "listening-port", "1"],
    &["MODULE", "LIST"],
    &["CLIENT", "PAUSE", "100"],
    &["CLIENT", "UNPAUSE"],
    &["CLIENT", "KILL", "127.0.0.1:1"],
];

const SCRIPTING: &[&[&str]] = &[
    &["EVAL", "return 1", "0"],
    &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"],
    &["EVAL_RO", "return 1", "0"],
    &[
        "EVALSHA_RO",
        "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
        "0",
    ],
    &["FCALL", "f", "0"],
    &["FCALL_RO", "f", "0"],
    &["FUNCTION", "LIST"],
    &[
        "SCRIPT",
        "EXISTS",
        "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
    ],
];

#[test]
fn blocked_commands_get_noperm_and_scripting_is_on_by_default() {
    let a = started(NodeSpec::new("node-a"));
    for args in ALWAYS_BLOCKED {
        assert_noperm(&a, args);
    }
    // Scripting is allowed by default.
    assert_eq!(a.cmd(&["EVAL", "return 7", "0"]), "7");
    assert_eq!(
        a.cmd(&[
            "SCRIPT",
            "EXISTS",
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        ]),
        "0"
    );
    assert_eq!(a.cmd(&["FUNCTION", "LIST"]), "");
    // CLIENT subcommands other than the blocked ones still work.
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "me"]), "OK");
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), "");
}

#[test]
fn scripting_can_be_switched_off() {
    let mut spec = NodeSpec::new("node-a");
    spec.scripting = false;
    let a = started(spec);
    for args in SCRIPTING.iter().chain(ALWAYS_BLOCKED) {
        assert_noperm(&a, args);
    }
    assert_eq!(a.cmd(&["SET", "k", "v"]), "OK");
}

#[test]
fn maxclients_follows_memory_and_shows_in_info() {
    for (mb, want) in [(4096u64, 16384u64), (1000, 10000)] {
        let mut spec = NodeSpec::new("node-a");
        spec.memory_limit_mb = Some(mb);
        let a = started(spec);
        let info = a.cmd(&["INFO", "clients"]);
        assert!(
            info.contains(&format!("maxclients:{want}")),
            "memory {mb} MB: {info}"
        );
        let s = a.status().unwrap();
        assert_eq!(s["redis"]["maxclients"], want);
        assert_eq!(s["limits"]["memory_source"], "Override");
        assert!(faults(&s).is_empty(), "{s}");
    }
}

/// The status warnings other than the configuration's own (these nodes take no backups).
fn faults(status: &serde_json::Value) -> Vec<String> {
    status["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .filter(|w| !w.starts_with("backups are off"))
        .collect()
}

#[test]
fn open_files_limit_is_raised_or_the_agent_says_why_not() {
    // A low soft limit under a high enough hard limit is lifted to fit maxclients 16384.
    let a = Agent::prepare(NodeSpec::new("node-a"))
        .unwrap()
        .with_wrapper(vec![
            "prlimit".into(),
            "--nofile=1024:20000".into(),
            "--".into(),
        ]);
    a.start().unwrap();
    a.wait_healthy(Duration::from_secs(20)).unwrap();
    assert!(a.cmd(&["INFO", "clients"]).contains("maxclients:16384"));
    drop(a);

    // Without CAP_SYS_RESOURCE the hard limit holds: redis caps maxclients and the agent warns.
    let b = Agent::prepare(NodeSpec::new("node-b"))
        .unwrap()
        .with_wrapper(vec![
            "prlimit".into(),
            "--nofile=4096:4096".into(),
            "--".into(),
            "setpriv".into(),
            "--inh-caps=-sys_resource".into(),
            "--bounding-set=-sys_resource".into(),
            "--".into(),
        ]);
    b.start().unwrap();
    let s = b.wait_healthy(Duration::from_secs(20)).unwrap();
    let info = b.cmd(&["INFO", "clients"]);
    assert!(info.contains("maxclients:4064"), "{info}");
    let s = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        b.status().filter(|s| faults(s).len() == 2)
    })
    .unwrap_or(s);
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("raise LimitNOFILE") && warnings.contains("4064"),
        "{warnings}"
    );
    assert!(b.log().contains("open-files limit is 4096"), "{}", b.log());
}

#[test]
fn a_crashed_redis_is_restarted_with_its_fsynced_writes() {
    let a = started(NodeSpec::new("node-a"));
    for i in 0..200 {
        assert_eq!(a.cmd(&["SET", &format!("k{i}"), &i.to_string()]), "OK");
    }
    // Killing redis loses only what it had not written to the AOF (the page cache survives
    // the process). With appendfsync everysec redis may hold writes back up to 2 s while a
    // fsync runs, so wait (bounded) until the last one is in the file rather than sleep.
    let aof_dir = a.data_dir().join("appendonlydir");
    let written = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        std::fs::read_dir(&aof_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".incr.aof"))
            .any(|e| std::fs::read(e.path()).is_ok_and(|b| b.windows(4).any(|w| w == b"k199")))
            .then_some(())
    });
    assert!(written.is_some(), "k199 never reached the AOF");
    let pid = a.redis_pid().unwrap();
    let t0 = Instant::now();
    // SAFETY: kill(2) of the redis-server this test's agent started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let back = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        (a.cmd(&["GET", "k199"]) == "199").then(|| t0.elapsed())
    })
    .expect("redis did not serve again");
    eprintln!("redis served again {back:?} after kill -9");
    assert_eq!(a.cmd(&["DBSIZE"]), "200");
    let s = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        a.status()
            .filter(|s| s["redis"]["healthy"] == true && s["redis"]["restarts"] == 1)
    })
    .expect("status shows the restart");
    assert_ne!(s["redis"]["pid"].as_u64().unwrap() as u32, pid);
    assert!(
        s["redis"]["last_exit"]
            .as_str()
            .unwrap()
            .contains("signal 9"),
        "{s}"
    );
    let metrics = a.api_get("/metrics").unwrap();
    assert!(
        metrics.contains("redis_steward_redis_restarts_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("redis_steward_redis_up 1"), "{metrics}");
}

#[test]
fn sigterm_stops_redis_cleanly_and_keeps_every_write() {
    let a = started(NodeSpec::new("node-a"));
    for i in 0..100 {
        assert_eq!(a.cmd(&["SET", &format!("k{i}"), "x"]), "OK");
    }
    let pid = a.redis_pid().unwrap();
    // No pause for fsync: a clean SHUTDOWN must flush the AOF itself.
    assert_eq!(a.stop().unwrap(), Some(0));
    assert!(!pid_alive(pid), "redis outlived the agent");
    assert!(a.log().contains("redis-server stopped"), "{}", a.log());
    a.start_healthy().unwrap();
    assert_eq!(a.cmd(&["DBSIZE"]), "100");
    // SIGINT (Ctrl-C) is a clean stop too.
    a.signal(libc::SIGINT);
    assert_eq!(a.wait_exit(Duration::from_secs(40)).unwrap(), Some(0));
}

#[test]
fn redis_never_outlives_a_killed_agent() {
    let a = started(NodeSpec::new("node-a"));
    let pid = a.redis_pid().unwrap();
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(
        wait_pid_gone(pid, Duration::from_secs(10)),
        "redis {pid} orphaned"
    );
}

#[test]
fn a_second_agent_on_the_same_data_dir_refuses_to_start() {
    let a = started(NodeSpec::new("node-a"));
    let mut spec = NodeSpec::new("node-a");
    spec.port = NodeSpec::new("x").port;
    let b = Agent::prepare(spec).unwrap();
    // Point b at a's directories.
    let text = std::fs::read_to_string(&b.config_path).unwrap().replace(
        &b.dir.path().display().to_string(),
        &a.dir.path().display().to_string(),
    );
    std::fs::write(&b.config_path, text).unwrap();
    b.start().unwrap();
    assert_eq!(b.wait_exit(Duration::from_secs(10)).unwrap(), Some(1));
    assert!(
        b.log().contains("already in use by another redis-steward"),
        "{}",
        b.log()
    );
    assert_eq!(a.cmd(&["PING"]), "PONG");
}

#[test]
fn a_taken_port_stops_the_start_with_a_clear_error() {
    let spec = NodeSpec::new("node-a");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", spec.port)).unwrap();
    let a = Agent::prepare(spec).unwrap();
    a.start().unwrap();
    assert_eq!(a.wait_exit(Duration::from_secs(10)).unwrap(), Some(1));
    let log = a.log();
    assert!(
        log.contains("redis.port") && log.contains("already in use"),
        "{log}"
    );
    assert!(!log.contains("redis-server started"), "{log}");
}

#[test]
fn bad_configs_start_nothing() {
    let mut spec = NodeSpec::new("node-a");
    spec.extra = "\n[tls]\nmode = \"files\"\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/etc/hostname\"\nca_file = \"/etc/hostname\"\n".into();
    let a = Agent::prepare(spec).unwrap();
    a.start().unwrap();
    assert_eq!(a.wait_exit(Duration::from_secs(10)).unwrap(), Some(1));
    assert!(a.log().contains("tls.cert_file"), "{}", a.log());
    assert!(
        !a.data_dir().exists(),
        "nothing may be created for a bad config"
    );

    let mut spec = NodeSpec::new("node-b");
    spec.allowed_cidrs = Some(vec!["10.0.0.0/40".into()]);
    let b = Agent::prepare(spec).unwrap();
    b.start().unwrap();
    assert_eq!(b.wait_exit(Duration::from_secs(10)).unwrap(), Some(1));
    assert!(b.log().contains("access.allowed_cidrs"), "{}", b.log());
}

#[test]
fn status_command_and_metrics_describe_the_node() {
    let a = started(NodeSpec::new("node-a"));
    let api = a.api_addr().to_string();
    let table = run_cli(&["status", "--api", &api]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    for want in [
        "role  primary",
        "node  node-a",
        "(healthy)",
        "maxclients",
        "scripting  on",
        "startup plan",
    ] {
        assert!(table.contains(want), "status lacks {want:?}:\n{table}");
    }
    let json = run_cli(&[
        "status",
        "--json",
        "--config",
        a.config_path.to_str().unwrap(),
    ]);
    let s: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(s["node"], "node-a");
    assert_eq!(s["redis"]["healthy"], true);
    assert_eq!(s["redis"]["aof_enabled"], true);
    assert_eq!(s["config"]["client_port"], a.spec.port);
    let m = http_get(a.api_addr(), "/metrics").unwrap();
    for want in [
        "redis_steward_redis_up 1",
        "redis_steward_redis_maxclients 16384",
        "redis_steward_agent_info{",
    ] {
        assert!(m.contains(want), "metrics lack {want}:\n{m}");
    }
    // 200 with the reason (Patroni's /health; /healthz is the same check).
    assert_eq!(
        http_get(a.api_addr(), "/healthz").unwrap(),
        "redis answering (primary)\n"
    );
}

#[test]
fn aof_is_multi_part_with_timestamps() {
    let a = started(NodeSpec::new("node-a"));
    assert_eq!(a.cmd(&["SET", "k", "v"]), "OK");
    let dir = a.data_dir().join("appendonlydir");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".manifest")), "{names:?}");
    assert!(names.iter().any(|n| n.contains(".incr.aof")), "{names:?}");
    let incr = names.iter().find(|n| n.contains(".incr.aof")).unwrap();
    let found = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let text = std::fs::read(dir.join(incr)).ok()?;
        String::from_utf8_lossy(&text)
            .contains("#TS:")
            .then_some(())
    });
    assert!(found.is_some(), "no #TS: annotation in the incr file");
}

#[test]
fn systemd_gets_ready_status_watchdog_and_stopping() {
    let a = Agent::prepare(NodeSpec::new("node-a")).unwrap();
    let sock_path = a.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    a.start_with(|c| {
        c.env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "1000000");
    })
    .unwrap();
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stop_sent = false;
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let watchdogs = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if !stop_sent && got.iter().any(|m| m.contains("READY=1")) && watchdogs >= 3 {
            a.signal(libc::SIGTERM);
            stop_sent = true;
        }
        if got.iter().any(|m| m.contains("STOPPING=1")) {
            break;
        }
    }
    assert!(
        stop_sent,
        "no READY=1 and 3 × WATCHDOG=1 within 20 s: {got:?}"
    );
    assert!(got.iter().any(|m| m.contains("STATUS=primary")), "{got:?}");
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    assert_eq!(a.wait_exit(Duration::from_secs(40)).unwrap(), Some(0));
}
