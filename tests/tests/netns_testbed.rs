//! Checks the network-namespace testbed itself: reachability, every fault and its reversal,
//! cleanup, and that parallel testbeds stay apart. The cluster end-to-end tests trust these.
//!
//! Needs root, `ip`, `tc` and `nft`, like every test that uses `steward_testbed::netns`.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use steward_testbed::netns::{cleanup_stale, Host, Testbed};

/// How long a blocked connection attempt is given before it counts as blocked.
const BLOCKED_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a connection that should work may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds a TCP listener on `host`'s address (an ephemeral port unless `port` is given).
fn listen(host: &Host, port: u16) -> TcpListener {
    let ip = host.ip;
    host.run_in(move || TcpListener::bind((ip, port)))
        .unwrap_or_else(|err| panic!("binding {ip}:{port} on {}: {err}", host.name))
}

fn connect(from: &Host, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    from.run_in(move || TcpStream::connect_timeout(&to, timeout))
}

/// Accepts one connection, which must already be (nearly) established; bounded wait.
fn accept_bounded(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    for _ in 0..200 {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
    panic!("no connection to accept within {CONNECT_TIMEOUT:?}");
}

/// Whether `from` can open a TCP connection to `to` and exchange a byte with it. A few
/// attempts are allowed, because a healed link may still have a failed ARP entry to redo.
fn reachable(from: &Host, to: &Host) -> bool {
    let listener = listen(to, 0);
    let addr = listener.local_addr().unwrap();
    for _ in 0..3 {
        if let Ok(mut stream) = connect(from, addr, CONNECT_TIMEOUT) {
            let mut accepted = accept_bounded(&listener);
            accepted.write_all(b"x").unwrap();
            stream.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
            let mut byte = [0u8];
            return stream.read_exact(&mut byte).is_ok() && byte == *b"x";
        }
    }
    false
}

/// Whether a single short connection attempt from `from` to `to` fails. Only meaningful
/// together with a `reachable` check before the fault, which rules out a broken setup.
fn blocked(from: &Host, to: &Host) -> bool {
    let listener = listen(to, 0);
    connect(from, listener.local_addr().unwrap(), BLOCKED_TIMEOUT).is_err()
}

fn assert_reachable(tb: &Testbed, pairs: &[(usize, usize)]) {
    for &(a, b) in pairs {
        assert!(
            reachable(tb.host(a), tb.host(b)),
            "host {a} cannot reach host {b}"
        );
    }
}

fn assert_blocked(tb: &Testbed, pairs: &[(usize, usize)]) {
    for &(a, b) in pairs {
        assert!(
            blocked(tb.host(a), tb.host(b)),
            "host {a} still reaches host {b}"
        );
    }
}

/// Spawns `sleep 30` inside `host`, standing in for an agent or redis-server.
fn spawn_sleeper(host: &Host) -> Child {
    host.command("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning sleep inside the host")
}

/// Waits (bounded) for `child` to exit and returns its status.
fn wait_exit(child: &mut Child) -> ExitStatus {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("process {} still running after 3 s", child.id());
}

fn netns_names() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success(), "ip netns list failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// What a testbed must never change in the root namespace: its interfaces, IPv4 addresses and
/// main-table IPv4 routes.
fn root_snapshot() -> (BTreeSet<String>, String, String) {
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let links = ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(':').nth(1).map(|name| name.trim().to_owned()))
        .collect();
    // Brief form: no address lifetimes, which count down on a host with a DHCP address.
    (
        links,
        ip(&["-4", "-br", "addr", "show"]),
        ip(&["-4", "route", "show"]),
    )
}

#[test]
fn two_hosts_reach_each_other_with_documented_addresses() {
    let tb = Testbed::new(2).unwrap();
    assert_eq!(tb.hosts().len(), 2);
    assert_eq!(tb.host(0).ip, Ipv4Addr::new(10, 77, 0, 10));
    assert_eq!(tb.host(1).ip, Ipv4Addr::new(10, 77, 0, 11));
    assert_ne!(tb.host(0).name, tb.host(1).name);
    assert!(tb.host(0).name.starts_with(tb.tag()));
    assert_reachable(&tb, &[(0, 1), (1, 0)]);

    // The host has its address on its own interface, and loopback is up and usable.
    let addrs = tb
        .host(0)
        .exec(&["ip", "-4", "-o", "addr", "show"])
        .unwrap();
    assert!(addrs.contains("inet 10.77.0.10/24"), "{addrs}");
    assert!(addrs.contains(&tb.host(0).iface), "{addrs}");
    let lo = tb
        .host(0)
        .exec(&["ip", "-o", "link", "show", "lo"])
        .unwrap();
    assert!(lo.contains(",UP,"), "{lo}");
    tb.host(0).run_in(|| {
        let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        TcpStream::connect_timeout(&local.local_addr().unwrap(), CONNECT_TIMEOUT).unwrap();
    });
}

#[test]
fn run_in_enters_the_host_network_and_propagates_panics() {
    let tb = Testbed::new(2).unwrap();
    let (h0, h1) = (tb.host(0), tb.host(1));
    // Each host owns only its own address: binding the other's fails inside the namespace.
    h0.run_in(|| TcpListener::bind((h0.ip, 0))).unwrap();
    let err = h0.run_in(|| TcpListener::bind((h1.ip, 0))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}");

    let panicked = std::panic::catch_unwind(|| h0.run_in(|| panic!("inside the host")));
    assert!(panicked.is_err());
}

#[test]
fn exec_reports_failures_with_stderr() {
    let tb = Testbed::new(1).unwrap();
    let err = tb
        .host(0)
        .exec(&["ip", "link", "show", "dev", "no-such-if"])
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains(&tb.host(0).name), "{message}");
}

#[test]
fn isolate_cuts_one_host_off_and_heal_restores_it() {
    let tb = Testbed::new(3).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 2), (0, 2)]);

    tb.isolate(1).unwrap();
    assert_blocked(&tb, &[(0, 1), (1, 0), (1, 2), (2, 1)]);
    assert_reachable(&tb, &[(0, 2), (2, 0)]);

    tb.heal(1).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 0), (1, 2), (2, 1), (0, 2)]);
}

#[test]
fn cut_link_blocks_only_that_pair() {
    let tb = Testbed::new(3).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 0)]);

    tb.cut_link(0, 1).unwrap();
    assert_blocked(&tb, &[(0, 1), (1, 0)]);
    assert_reachable(&tb, &[(0, 2), (2, 0), (1, 2), (2, 1)]);

    tb.heal_link(1, 0).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 0)]);
    // With every fault healed the testbed's nft table is gone again.
    let tables = tb.host(0).exec(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("rs_testbed"), "{tables}");

    assert!(tb.cut_link(0, 0).is_err());
    assert!(tb.cut_link(0, 3).is_err());
}

#[test]
fn full_loss_blocks_and_clear_loss_restores() {
    let tb = Testbed::new(2).unwrap();
    assert_reachable(&tb, &[(0, 1)]);

    tb.set_loss(1, 100).unwrap();
    assert_blocked(&tb, &[(0, 1), (1, 0)]);
    // Loopback inside the lossy host is exempt.
    tb.host(1).run_in(|| {
        let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        TcpStream::connect_timeout(&local.local_addr().unwrap(), CONNECT_TIMEOUT).unwrap();
    });

    tb.clear_loss(1).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 0)]);
    assert!(tb.set_loss(1, 101).is_err());
}

/// Sends `count` datagrams from host 0 to host 1 and returns how many arrived.
fn udp_delivered(tb: &Testbed, count: usize) -> usize {
    udp_delivered_between(tb, 0, 1, count)
}

/// Sends `count` datagrams from host `from` to host `to` and returns how many arrived.
fn udp_delivered_between(tb: &Testbed, from: usize, to: usize, count: usize) -> usize {
    let receiver = tb
        .host(to)
        .run_in(|| UdpSocket::bind((tb.host(to).ip, 0)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    tb.host(from).run_in(|| {
        let sender = UdpSocket::bind((tb.host(from).ip, 0)).unwrap();
        for i in 0..count {
            // A packet dropped on the sender's way out fails with EPERM: not delivered.
            let _ = sender.send_to(&(i as u32).to_be_bytes(), to);
        }
    });
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut received = 0;
    let mut buf = [0u8; 16];
    for _ in 0..count {
        match receiver.recv_from(&mut buf) {
            Ok(_) => received += 1,
            Err(_) => break,
        }
    }
    received
}

#[test]
fn partial_loss_drops_some_packets_but_not_all() {
    let tb = Testbed::new(2).unwrap();
    assert_eq!(udp_delivered(&tb, 100), 100, "lossless link lost packets");

    // Loss is applied on host 1's way in only here (host 0 sends): ~50 of 100 arrive.
    // 15..=85 is more than 7 standard deviations each way.
    tb.set_loss(1, 50).unwrap();
    let delivered = udp_delivered(&tb, 100);
    assert!((15..=85).contains(&delivered), "{delivered} of 100 arrived");

    tb.clear_loss(1).unwrap();
    assert_eq!(udp_delivered(&tb, 100), 100);
}

#[test]
fn one_way_drop_blocks_one_direction_only() {
    let tb = Testbed::new(3).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 0)]);

    tb.drop_one_way(0, 1).unwrap();
    assert_eq!(udp_delivered_between(&tb, 0, 1, 20), 0, "0 -> 1 passed");
    assert_eq!(
        udp_delivered_between(&tb, 1, 0, 20),
        20,
        "1 -> 0 was dropped"
    );
    assert_eq!(
        udp_delivered_between(&tb, 0, 2, 20),
        20,
        "0 -> 2 was dropped"
    );
    // TCP needs both directions.
    assert_blocked(&tb, &[(0, 1), (1, 0)]);
    assert_reachable(&tb, &[(0, 2), (2, 1)]);

    tb.heal_one_way(0, 1).unwrap();
    assert_reachable(&tb, &[(0, 1), (1, 0)]);
    for i in [0, 1] {
        let tables = tb.host(i).exec(&["nft", "list", "tables"]).unwrap();
        assert!(!tables.contains("rs_testbed"), "{tables}");
    }
    assert!(tb.drop_one_way(1, 1).is_err());
}

/// How long sending `bytes` over TCP from host `from` to host `to` takes, until the
/// receiver has read them all. Bounded: every read and write gives up after 30 s.
fn tcp_transfer_time(tb: &Testbed, from: usize, to: usize, bytes: usize) -> Duration {
    let listener = listen(tb.host(to), 0);
    let addr = listener.local_addr().unwrap();
    let reader = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len()
    });
    let started = Instant::now();
    let mut stream = connect(tb.host(from), addr, CONNECT_TIMEOUT).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&vec![7u8; bytes]).unwrap();
    drop(stream);
    assert_eq!(reader.join().unwrap(), bytes);
    started.elapsed()
}

#[test]
fn limit_rate_slows_the_link_both_ways_and_clearing_restores_it() {
    let tb = Testbed::new(2).unwrap();
    // 256 KiB: milliseconds on a veth, about 4 s at 512 kbit/s (64 kB/s) after the burst.
    let bytes = 256 << 10;
    let fast = tcp_transfer_time(&tb, 0, 1, bytes);
    assert!(fast < Duration::from_secs(1), "unlimited took {fast:?}");

    tb.limit_rate(1, 512).unwrap();
    for (from, to) in [(0, 1), (1, 0)] {
        let slow = tcp_transfer_time(&tb, from, to, bytes);
        assert!(
            slow > Duration::from_secs(2),
            "{from} -> {to} took {slow:?}"
        );
    }
    tb.clear_rate_limit(1).unwrap();
    // Twice is harmless.
    tb.clear_rate_limit(1).unwrap();
    let fast = tcp_transfer_time(&tb, 1, 0, bytes);
    assert!(
        fast < Duration::from_secs(1),
        "after clearing took {fast:?}"
    );
    assert!(tb.limit_rate(1, 0).is_err());
}

#[test]
fn kill_all_kills_every_process_of_one_host_only() {
    let tb = Testbed::new(2).unwrap();
    let mut doomed = [spawn_sleeper(tb.host(0)), spawn_sleeper(tb.host(0))];
    let mut survivor = spawn_sleeper(tb.host(1));
    // `ip netns exec` execs the program: the child is the process inside the namespace.
    let wait_listed = |host: &Host, pid: u32| {
        (0..100).any(|_| {
            let listed = host.pids().unwrap().contains(&(pid as i32));
            if !listed {
                thread::sleep(Duration::from_millis(10));
            }
            listed
        })
    };
    assert!(wait_listed(tb.host(0), doomed[0].id()));
    assert!(wait_listed(tb.host(0), doomed[1].id()));
    assert!(wait_listed(tb.host(1), survivor.id()));

    assert_eq!(tb.kill_all(0).unwrap(), 2);
    for child in &mut doomed {
        assert_eq!(wait_exit(child).signal(), Some(libc::SIGKILL));
    }
    assert!(tb.host(0).pids().unwrap().is_empty());
    assert!(survivor.try_wait().unwrap().is_none(), "host 1 was hit too");
    assert_eq!(tb.host(1).pids().unwrap(), vec![survivor.id() as i32]);

    drop(tb);
    assert_eq!(wait_exit(&mut survivor).signal(), Some(libc::SIGKILL));
}

#[test]
fn drop_removes_namespaces_and_never_touches_the_root_namespace() {
    let before = root_snapshot();
    let tb = Testbed::new(2).unwrap();
    let tag = tb.tag().to_owned();
    let names: Vec<String> = tb.hosts().iter().map(|h| h.name.clone()).collect();
    let mut child = spawn_sleeper(tb.host(1));
    tb.isolate(0).unwrap();
    tb.cut_link(0, 1).unwrap();
    tb.set_loss(1, 10).unwrap();

    let listed = netns_names();
    for name in &names {
        assert!(listed.contains(name), "{name} missing from {listed:?}");
    }
    assert!(listed.contains(&format!("{tag}-sw")), "{listed:?}");
    let during = root_snapshot();
    assert!(
        during.0.iter().all(|link| !link.contains(&tag)),
        "{:?}",
        during.0
    );
    assert_eq!(
        before, during,
        "the root namespace changed while a testbed exists"
    );

    drop(tb);
    let listed = netns_names();
    assert!(
        listed.iter().all(|name| !name.starts_with(&tag)),
        "{listed:?}"
    );
    assert_eq!(wait_exit(&mut child).signal(), Some(libc::SIGKILL));
    assert_eq!(before, root_snapshot(), "the root namespace changed");
}

#[test]
fn drop_cleans_up_while_a_test_panics() {
    let tag = std::panic::catch_unwind(|| {
        let tb = Testbed::new(1).unwrap();
        let tag = tb.tag().to_owned();
        std::panic::panic_any(tag);
    })
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    assert!(netns_names().iter().all(|name| !name.starts_with(&*tag)));
}

#[test]
fn add_host_joins_the_same_network_with_a_new_address() {
    let mut tb = Testbed::new(2).unwrap();
    tb.cut_link(0, 1).unwrap();
    let added = tb.add_host().unwrap();
    assert_eq!((added.index, added.ip), (2, Ipv4Addr::new(10, 77, 0, 12)));
    assert_reachable(&tb, &[(0, 2), (2, 0), (2, 1), (1, 2)]);
    assert_blocked(&tb, &[(0, 1)]);
}

#[test]
fn concurrent_testbeds_do_not_interfere() {
    // Both testbeds are built at the same moment and use the same addresses and port.
    const PORT: u16 = 7000;
    let start = Arc::new(Barrier::new(2));
    let builders: Vec<_> = (0..2)
        .map(|_| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                Testbed::new(2).unwrap()
            })
        })
        .collect();
    let beds: Vec<Testbed> = builders.into_iter().map(|b| b.join().unwrap()).collect();
    let (a, b) = (&beds[0], &beds[1]);
    assert_ne!(a.tag(), b.tag());
    assert_eq!(a.host(1).ip, b.host(1).ip);

    let listeners = [listen(a.host(1), PORT), listen(b.host(1), PORT)];
    for (bed, listener, id) in [(a, &listeners[0], b'A'), (b, &listeners[1], b'B')] {
        let to = SocketAddr::from((bed.host(1).ip, PORT));
        let mut stream = connect(bed.host(0), to, CONNECT_TIMEOUT).unwrap();
        accept_bounded(listener).write_all(&[id]).unwrap();
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
        let mut byte = [0u8];
        stream.read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], id, "host 0 reached the other testbed's host 1");
    }
    // Each connection reached its own testbed only.
    for listener in &listeners {
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
    }

    // A fault in one testbed leaves the other alone.
    a.isolate(1).unwrap();
    b.set_loss(0, 100).unwrap();
    assert_blocked(a, &[(0, 1)]);
    assert_blocked(b, &[(0, 1)]);
    b.clear_loss(0).unwrap();
    assert_reachable(b, &[(0, 1)]);
    assert_blocked(a, &[(0, 1)]);
}

#[test]
fn cleanup_stale_removes_only_namespaces_of_dead_owners() {
    /// Deletes the namespaces this test made by hand, whatever happens.
    struct Created(Vec<String>);
    impl Drop for Created {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = Command::new("ip").args(["netns", "delete", name]).output();
            }
        }
    }
    // A pid that belonged to a process which has exited and been reaped.
    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    let dead = exited.id();

    let stale = [format!("rs{dead:x}t0-sw"), format!("rs{dead:x}t0-h0")];
    let lookalikes = [format!("rs{dead:x}t0-other"), format!("rs{dead:x}-sw")];
    let mut created = Created(Vec::new());
    for name in stale.iter().chain(&lookalikes) {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        created.0.push(name.clone());
    }
    // A leftover process inside a stale host must be killed, not stranded.
    let mut stranded = Command::new("ip")
        .args(["netns", "exec", &stale[1], "sleep", "30"])
        .spawn()
        .unwrap();
    let entered = (0..300).any(|_| {
        let out = Command::new("ip")
            .args(["netns", "pids", &stale[1]])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.trim() == stranded.id().to_string());
        if !listed {
            thread::sleep(Duration::from_millis(10));
        }
        listed
    });
    assert!(entered, "sleep never entered {}", stale[1]);
    let live = Testbed::new(1).unwrap();

    let removed = cleanup_stale().unwrap();
    for name in &stale {
        assert!(removed.contains(name), "{name} not in {removed:?}");
    }
    let listed = netns_names();
    for name in &lookalikes {
        assert!(!removed.contains(name), "{name} removed");
        assert!(listed.contains(name), "{name} gone");
    }
    assert!(
        listed.contains(&live.host(0).name),
        "a live testbed was removed"
    );
    assert!(removed.iter().all(|name| !name.starts_with(live.tag())));
    assert_eq!(wait_exit(&mut stranded).signal(), Some(libc::SIGKILL));
}
