//! Multi-host networks on one machine, built from Linux network namespaces.
//!
//! End-to-end tests need several "machines" that talk over a real IP network and can be
//! partitioned, made lossy or killed (design §6). A [`Testbed`] gives them that without
//! touching the machine it runs on:
//!
//! ```text
//!   host ns "<tag>-h0"          switch ns "<tag>-sw"           host ns "<tag>-h1"
//!   lo (up), <tag>e0 ──veth── <tag>p0 ─┐               ┌─ <tag>p1 ──veth── <tag>e1, lo (up)
//!   10.77.0.10/24                      └── <tag>b ─────┘                   10.77.0.11/24
//!                                         (bridge)
//! ```
//!
//! * The bridge lives in a namespace the testbed owns, and both ends of every veth pair are
//!   created directly inside their target namespaces, so the root namespace never gets an
//!   interface, an address, a route or an nftables rule — not even for a moment.
//! * Every namespace and interface name starts with the testbed's tag `rs{pid:x}t{counter:x}`:
//!   unique per testbed in this process, and it names the owning process, which is what lets
//!   [`cleanup_stale`] remove leftovers of crashed test runs and nothing else.
//! * Because every testbed has its own isolated switch, all testbeds can reuse the same private
//!   subnet ([`SUBNET`]); host `i` is always `10.77.0.(10 + i)`. Tests running in parallel never
//!   see each other's packets.
//! * Faults are reversible and confined to the testbed's namespaces: link down on the switch
//!   port ([`Testbed::isolate`]), rules in an nftables table named [`NFT_TABLE`] inside the
//!   affected host namespaces ([`Testbed::cut_link`], [`Testbed::drop_one_way`],
//!   [`Testbed::set_loss`]), and token-bucket qdiscs on a host's link
//!   ([`Testbed::limit_rate`]).
//! * Dropping the testbed kills every process left in its host namespaces and deletes all of
//!   its namespaces, also while a test is unwinding from a panic.
//!
//! Everything needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), `ip` and `tc` (iproute2) and `nft`.
//! Every wait in this module is bounded, so a broken environment fails a test instead of
//! hanging it.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The subnet every testbed uses inside its own isolated switch, as `(network, prefix length)`.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 24);

/// Name of the nftables table (family `inet`) the testbed manages inside host namespaces.
///
/// Only this table is ever created, replaced or deleted, so an agent that installs its own
/// firewall table in the same namespace keeps it.
pub const NFT_TABLE: &str = "rs_testbed";

/// Last octet of host 0's address; the lower ones are left free for future infrastructure
/// (e.g. an object store reachable from every host).
const FIRST_HOST_OCTET: u8 = 10;

/// Hosts `10.77.0.10` ..= `10.77.0.254`.
const MAX_HOSTS: usize = 255 - FIRST_HOST_OCTET as usize;

/// Where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_IFNAME_LEN: usize = 15;

/// Upper bound for one `ip`/`nft` invocation; they take milliseconds when healthy.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for a veth carrier change to become visible after a link up/down.
const LINK_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bound for SIGKILLed processes to leave a namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);

/// Interval between polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Distinguishes testbeds created by the same process.
static NEXT_TESTBED: AtomicU32 = AtomicU32::new(0);

/// `ip netns add` sets up the shared `/run/netns` mount on first use; two first uses racing
/// each other can stack mounts, so creations from this process are serialized.
static NETNS_ADD_LOCK: Mutex<()> = Mutex::new(());

/// A set of hosts (network namespaces) on one private switch, with fault injection.
///
/// `Testbed` is `Send + Sync`: faults take `&self`, so one thread can partition the network
/// while others drive the hosts. Dropping it kills the hosts' processes and deletes all of its
/// namespaces; call [`cleanup_stale`] at the start of a test run to remove what a crashed run
/// (SIGKILL, abort) could not.
#[derive(Debug)]
pub struct Testbed {
    /// `rs{pid:x}t{counter:x}`: prefix of every name this testbed creates.
    tag: String,
    /// Namespace holding the bridge.
    switch: String,
    /// Bridge interface inside `switch`.
    bridge: String,
    hosts: Vec<Host>,
    /// Every namespace this testbed created, in creation order; Drop deletes exactly these.
    /// Kept apart from `hosts` so a host whose setup failed half way is still removed.
    namespaces: Vec<String>,
}

/// One host of a [`Testbed`]: a network namespace with one address on the switch.
#[derive(Debug)]
pub struct Host {
    /// Network namespace name (`ip netns` name, e.g. `rs1c62t0-h0`).
    pub name: String,
    /// The host's only non-loopback address, `10.77.0.(10 + index)`.
    pub ip: Ipv4Addr,
    /// Position in [`Testbed::hosts`]; stable for the testbed's lifetime.
    pub index: usize,
    /// The host's interface on the switch (inside this host's namespace).
    pub iface: String,
    /// The switch-side end of the host's veth pair (inside the switch namespace).
    port: String,
    /// nftables faults currently applied to this host; the lock also orders rule updates.
    faults: Mutex<Faults>,
}

/// The nftables faults of one host, rendered as a whole into [`NFT_TABLE`] on every change so
/// the kernel state is always exactly this (no rule handles to track, no partial updates).
#[derive(Debug, Default)]
struct Faults {
    /// Peers whose traffic is dropped in both directions.
    cut: BTreeSet<Ipv4Addr>,
    /// Peers this host's packets to are dropped (on the way out): one half of a one-way drop.
    drop_to: BTreeSet<Ipv4Addr>,
    /// Peers whose packets to this host are dropped (on the way in): the other half.
    drop_from: BTreeSet<Ipv4Addr>,
    /// Share of packets (0..=100) dropped in each direction, loopback excepted.
    loss_percent: u8,
}

impl Testbed {
    /// Builds a testbed with `n_hosts` hosts that can all reach each other.
    ///
    /// Returns once every host's link has carrier, so the first packet a test sends is not
    /// lost to link setup. On error, whatever was already created is removed again.
    pub fn new(n_hosts: usize) -> Result<Testbed> {
        ensure!(
            n_hosts <= MAX_HOSTS,
            "a testbed holds at most {MAX_HOSTS} hosts, {n_hosts} requested"
        );
        let counter = NEXT_TESTBED.fetch_add(1, Ordering::Relaxed);
        let tag = format!("rs{:x}t{:x}", std::process::id(), counter);
        let mut testbed = Testbed {
            switch: format!("{tag}-sw"),
            bridge: checked_ifname(format!("{tag}b"))?,
            tag,
            hosts: Vec::with_capacity(n_hosts),
            namespaces: Vec::new(),
        };
        // From here on `testbed` is dropped on any error, which removes what exists so far.
        netns_add(&testbed.switch)?;
        testbed.namespaces.push(testbed.switch.clone());
        let bridge = &testbed.bridge;
        ip_batch(
            &testbed.switch,
            &format!("link set lo up\nlink add {bridge} type bridge\nlink set {bridge} up\n"),
        )
        .context("setting up the switch bridge")?;
        for _ in 0..n_hosts {
            testbed.add_host()?;
        }
        Ok(testbed)
    }

    /// Adds one more host on the next free address, e.g. a replacement node with a new IP.
    ///
    /// The new host can reach every host that is not isolated; existing faults on other hosts
    /// are by address, so a new host is not affected by earlier `cut_link` calls.
    pub fn add_host(&mut self) -> Result<&Host> {
        let index = self.hosts.len();
        ensure!(
            index < MAX_HOSTS,
            "a testbed holds at most {MAX_HOSTS} hosts"
        );
        let name = format!("{}-h{index}", self.tag);
        let [a, b, c, _] = SUBNET.0.octets();
        // In range: index < MAX_HOSTS keeps the last octet within 10..=254.
        let ip = Ipv4Addr::new(a, b, c, FIRST_HOST_OCTET + index as u8);
        let iface = checked_ifname(format!("{}e{index}", self.tag))?;
        let port = checked_ifname(format!("{}p{index}", self.tag))?;

        netns_add(&name)?;
        self.namespaces.push(name.clone());
        // Created from inside the switch namespace with the peer placed straight into the
        // host namespace: neither end ever exists in the root namespace.
        ip_batch(
            &self.switch,
            &format!(
                "link add {port} type veth peer name {iface} netns {name}\n\
                 link set {port} master {bridge}\n\
                 link set {port} up\n",
                bridge = self.bridge
            ),
        )
        .with_context(|| format!("plugging host {name} into the switch"))?;
        ip_batch(
            &name,
            &format!(
                "link set lo up\n\
                 addr add {ip}/{prefix} dev {iface}\n\
                 link set {iface} up\n",
                prefix = SUBNET.1
            ),
        )
        .with_context(|| format!("configuring host {name}"))?;
        wait_carrier(&name, &iface, true)?;

        self.hosts.push(Host {
            name,
            ip,
            index,
            iface,
            port,
            faults: Mutex::new(Faults::default()),
        });
        Ok(&self.hosts[index])
    }

    /// All hosts, in index order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    ///
    /// # Panics
    /// If there is no host `i`, like slice indexing: that is a bug in the test.
    pub fn host(&self, i: usize) -> &Host {
        match self.hosts.get(i) {
            Some(host) => host,
            None => panic!(
                "testbed {} has {} hosts, no host {i}",
                self.tag,
                self.hosts.len()
            ),
        }
    }

    /// The prefix of every namespace and interface name of this testbed (`rs{pid:x}t{n:x}`),
    /// for tests that check nothing was left behind.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Cuts host `i` off from every other host, like pulling its cable: its switch port goes
    /// down, so the host sees no carrier and nothing passes in either direction. Loopback
    /// inside the host keeps working. Returns once the host has lost carrier.
    pub fn isolate(&self, i: usize) -> Result<()> {
        let host = self.get(i)?;
        run_ip(&self.switch, &["link", "set", &host.port, "down"])
            .with_context(|| format!("isolating host {}", host.name))?;
        wait_carrier(&host.name, &host.iface, false)
    }

    /// Reverses [`isolate`](Self::isolate). Returns once the host has carrier again.
    pub fn heal(&self, i: usize) -> Result<()> {
        let host = self.get(i)?;
        run_ip(&self.switch, &["link", "set", &host.port, "up"])
            .with_context(|| format!("healing host {}", host.name))?;
        wait_carrier(&host.name, &host.iface, true)
    }

    /// Drops all IPv4 traffic between hosts `i` and `j` in both directions, and nothing else.
    ///
    /// Rules go into both hosts (input and output), so the pair is cut even if one side's
    /// rules were flushed by something else. Locally generated packets dropped on output make
    /// the sender's syscall fail with EPERM at once, while packets dropped on input vanish;
    /// either way no byte gets through.
    pub fn cut_link(&self, i: usize, j: usize) -> Result<()> {
        self.update_link(i, j, true)
    }

    /// Reverses [`cut_link`](Self::cut_link).
    pub fn heal_link(&self, i: usize, j: usize) -> Result<()> {
        self.update_link(i, j, false)
    }

    /// Drops every IPv4 packet host `from` sends to host `to`, and nothing else: `to` still
    /// reaches `from` (UDP from `to` arrives; TCP from either side stalls, since its replies
    /// or acknowledgements cannot travel back). Like [`cut_link`](Self::cut_link), the rule
    /// goes into both hosts: output on `from`, input on `to`.
    pub fn drop_one_way(&self, from: usize, to: usize) -> Result<()> {
        self.update_one_way(from, to, true)
    }

    /// Reverses [`drop_one_way`](Self::drop_one_way).
    pub fn heal_one_way(&self, from: usize, to: usize) -> Result<()> {
        self.update_one_way(from, to, false)
    }

    /// Limits host `i`'s link to `kbit` kbit/s in each direction with a token-bucket filter
    /// (`tc qdisc tbf`, burst 16 kB, packets that would wait longer than 300 ms dropped),
    /// on the host's interface (what it sends) and on its switch port (what it receives).
    ///
    /// This is the testbed's way to add latency: the kernels it runs on may lack `sch_netem`
    /// (`tc qdisc … netem` fails with "Specified qdisc kind is unknown"), so there is no
    /// fixed delay. Delay comes from queueing, up to 300 ms, and only while the host moves
    /// more than the rate, e.g. under a writer's load; beyond that, packets are lost.
    pub fn limit_rate(&self, i: usize, kbit: u32) -> Result<()> {
        ensure!(kbit > 0, "a rate limit needs a rate");
        let host = self.get(i)?;
        let rate = format!("{kbit}kbit");
        for (ns, dev) in [(&host.name, &host.iface), (&self.switch, &host.port)] {
            let args = ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate];
            run_tc(
                ns,
                &[&args[..], &["burst", "16kb", "latency", "300ms"]].concat(),
            )
            .with_context(|| format!("limiting the rate of host {}", host.name))?;
        }
        Ok(())
    }

    /// Reverses [`limit_rate`](Self::limit_rate) (nothing to do if host `i` has no limit).
    pub fn clear_rate_limit(&self, i: usize) -> Result<()> {
        let host = self.get(i)?;
        for (ns, dev) in [(&host.name, &host.iface), (&self.switch, &host.port)] {
            if run_tc(ns, &["qdisc", "show", "dev", dev, "root"])?.contains("tbf") {
                run_tc(ns, &["qdisc", "del", "dev", dev, "root"])
                    .with_context(|| format!("clearing the rate limit of host {}", host.name))?;
            }
        }
        Ok(())
    }

    /// Drops `percent`% of host `i`'s packets, chosen at random, independently on the way in
    /// and on the way out (so a request/response exchange with a lossless peer loses
    /// `percent`% twice). Loopback inside the host is exempt. 0 removes the loss.
    pub fn set_loss(&self, i: usize, percent: u8) -> Result<()> {
        ensure!(
            percent <= 100,
            "loss must be 0..=100 percent, got {percent}"
        );
        let host = self.get(i)?;
        let mut faults = lock(&host.faults);
        faults.loss_percent = percent;
        apply_faults(host, &faults)
    }

    /// Removes the packet loss of host `i`.
    pub fn clear_loss(&self, i: usize) -> Result<()> {
        self.set_loss(i, 0)
    }

    /// The "node dies" fault: SIGKILLs every process in host `i`'s namespace (the agent,
    /// redis-server, anything spawned with [`Host::command`]) and waits until they are gone.
    /// The host's network stays as it is. Returns how many processes were killed.
    pub fn kill_all(&self, i: usize) -> Result<usize> {
        let host = self.get(i)?;
        kill_netns_processes(&host.name)
    }

    fn get(&self, i: usize) -> Result<&Host> {
        self.hosts.get(i).with_context(|| {
            format!(
                "testbed {} has {} hosts, no host {i}",
                self.tag,
                self.hosts.len()
            )
        })
    }

    fn update_one_way(&self, from: usize, to: usize, drop: bool) -> Result<()> {
        ensure!(from != to, "cannot drop host {from}'s packets to itself");
        let (a, b) = (self.get(from)?, self.get(to)?);
        for (host, set, peer) in [(a, true, b), (b, false, a)] {
            let mut faults = lock(&host.faults);
            let peers = if set {
                &mut faults.drop_to
            } else {
                &mut faults.drop_from
            };
            if drop {
                peers.insert(peer.ip);
            } else {
                peers.remove(&peer.ip);
            }
            apply_faults(host, &faults)?;
        }
        Ok(())
    }

    fn update_link(&self, i: usize, j: usize, cut: bool) -> Result<()> {
        ensure!(i != j, "cannot cut host {i} from itself");
        let (a, b) = (self.get(i)?, self.get(j)?);
        for (host, peer) in [(a, b), (b, a)] {
            let mut faults = lock(&host.faults);
            if cut {
                faults.cut.insert(peer.ip);
            } else {
                faults.cut.remove(&peer.ip);
            }
            apply_faults(host, &faults)?;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    /// Kills what runs in the hosts, then deletes every namespace this testbed created.
    /// Never panics (it also runs while a failed test unwinds); problems are printed.
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(err) = kill_netns_processes(ns) {
                eprintln!("testbed cleanup: {err:#}");
            }
        }
        // Hosts first, the switch last: deleting a host namespace takes its veth pair along.
        for ns in self.namespaces.iter().rev() {
            if let Err(err) = netns_delete(ns) {
                eprintln!("testbed cleanup: {err:#}");
            }
        }
    }
}

impl Host {
    /// A command that runs `program` inside this host's namespace (`ip netns exec NAME
    /// program`). Add arguments, spawn it and keep the `Child` as usual: `ip netns exec`
    /// execs the program, so the child's pid is the program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec"]).arg(&self.name).arg(program);
        command
    }

    /// Runs `args` (program first) inside this host's namespace and returns its stdout.
    ///
    /// Fails with the program's stderr if it exits unsuccessfully, and kills it if it runs
    /// longer than 10 seconds: meant for short tools (`ip`, `nft`, `redis-cli`), not daemons.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let (program, rest) = args.split_first().context("exec needs a program")?;
        let mut command = self.command(program);
        command.args(rest);
        run(&mut command, None).with_context(|| format!("in host {}", self.name))
    }

    /// Runs `f` on a fresh thread that has entered this host's network namespace, and returns
    /// its result (a panic in `f` is propagated).
    ///
    /// Sockets created inside `f` belong to the host's network for their whole life, even
    /// after they are returned to another thread, so a test can bind a listener "on host 1"
    /// and accept on it from the test thread. Threads started inside `f` inherit the
    /// namespace, so a tokio runtime built inside works too (a current-thread one is the
    /// simplest); one built outside does not. Only the network namespace changes: the
    /// filesystem and processes are the test's own.
    ///
    /// # Panics
    /// If the namespace cannot be entered (it is gone, or the process lacks CAP_SYS_ADMIN):
    /// the test cannot do anything meaningful then.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in_netns(&self.name, f)
    }

    /// Pids of the processes whose network namespace is this host's, e.g. to check that a
    /// node is really down. The test process itself is never listed.
    pub fn pids(&self) -> Result<Vec<i32>> {
        netns_pids(&self.name)
    }
}

/// [`Host::run_in`] by namespace name, for code that keeps only the name (e.g. an agent
/// started inside a host).
///
/// # Panics
/// If the namespace cannot be entered.
pub fn run_in_netns<F, R>(name: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let netns = netns_file(name).unwrap_or_else(|err| panic!("run_in on host {name}: {err:#}"));
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn_scoped(scope, move || {
                // SAFETY: setns only reads the fd, which `netns` keeps open for the call.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!(
                        "setns into network namespace {name}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                drop(netns);
                f()
            })
            .unwrap_or_else(|err| panic!("spawning a thread for host {name}: {err}"));
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Removes namespaces left behind by testbeds of processes that no longer exist (a test run
/// killed with SIGKILL cannot run `Drop`), killing any process still inside them.
///
/// Only names of exactly this library's form (`rs{pid:x}t{n:x}-sw` or `rs{pid:x}t{n:x}-h{i}`)
/// are considered, and only when no process with that pid is alive, so testbeds of a
/// concurrently running test binary are left alone. Pids are those of this pid namespace:
/// do not share `/run/netns` with test runs in other containers. Returns the names removed.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {NETNS_RUN_DIR}")),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {NETNS_RUN_DIR}"))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(pid) = owner_pid(&name) {
            if !pid_alive(pid) {
                stale.push(name);
            }
        }
    }
    // Same order as Drop: stop processes everywhere, then delete each testbed's host
    // namespaces before its switch (`-h…` sorts before `-sw`).
    stale.sort();
    for name in &stale {
        kill_netns_processes(name)?;
    }
    for name in &stale {
        netns_delete(name)?;
    }
    Ok(stale)
}

/// The owner pid encoded in a namespace name of this library's form, or `None` for any other
/// name. Strict on purpose: a name that merely looks similar is never touched.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("rs")?;
    let (pid, rest) = rest.split_once('t')?;
    let (counter, role) = rest.split_once('-')?;
    let is_hex =
        |s: &str| !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hex(pid) || !is_hex(counter) {
        return None;
    }
    let role_ok = role == "sw"
        || role
            .strip_prefix('h')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    if !role_ok {
        return None;
    }
    u32::from_str_radix(pid, 16).ok().filter(|&pid| pid > 1)
}

/// Whether a process with this pid exists (zombies count: when unsure, keep the namespace).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Replaces [`NFT_TABLE`] in `host`'s namespace with the rules for `faults`.
fn apply_faults(host: &Host, faults: &Faults) -> Result<()> {
    let script = render_faults(faults);
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &host.name, "nft", "-f", "-"]);
    run(&mut command, Some(script.as_bytes()))
        .with_context(|| format!("applying nftables faults to host {}", host.name))?;
    Ok(())
}

/// The nft script for `faults`, one atomic transaction: declare the table (so the delete
/// cannot fail), delete it, recreate it. No faults leaves no table at all.
fn render_faults(faults: &Faults) -> String {
    let mut script = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    let dropped_in: BTreeSet<&Ipv4Addr> = faults.cut.union(&faults.drop_from).collect();
    let dropped_out: BTreeSet<&Ipv4Addr> = faults.cut.union(&faults.drop_to).collect();
    if !dropped_in.is_empty() || !dropped_out.is_empty() || faults.loss_percent > 0 {
        let mut input = String::from("iif \"lo\" accept\n");
        let mut output = String::from("oif \"lo\" accept\n");
        let list = |peers: &BTreeSet<&Ipv4Addr>| {
            peers
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !dropped_in.is_empty() {
            input.push_str(&format!("ip saddr {{ {} }} drop\n", list(&dropped_in)));
        }
        if !dropped_out.is_empty() {
            output.push_str(&format!("ip daddr {{ {} }} drop\n", list(&dropped_out)));
        }
        if faults.loss_percent > 0 {
            // nft rejects `< 100` on a `mod 100` value (range 0-99), so 100% is a plain drop.
            let rule = match faults.loss_percent {
                100.. => String::from("drop\n"),
                percent => format!("numgen random mod 100 < {percent} drop\n"),
            };
            input.push_str(&rule);
            output.push_str(&rule);
        }
        script.push_str(&format!(
            "table inet {NFT_TABLE} {{\n\
             chain input {{\ntype filter hook input priority filter; policy accept;\n{input}}}\n\
             chain output {{\ntype filter hook output priority filter; policy accept;\n{output}}}\n\
             }}\n"
        ));
    }
    script
}

/// SIGKILLs every process in namespace `ns` until none is left (new ones may appear while a
/// dying supervisor forks). Bounded by [`KILL_TIMEOUT`]. Returns how many distinct
/// processes were signalled.
fn kill_netns_processes(ns: &str) -> Result<usize> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut killed = BTreeSet::new();
    for _ in 0..poll_rounds(KILL_TIMEOUT) {
        let pids = netns_pids(ns)?;
        if pids.is_empty() {
            return Ok(killed.len());
        }
        if Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            // SAFETY: plain kill(2); the pid was just listed as a member of `ns`.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed.insert(pid);
            }
        }
        thread::sleep(POLL_INTERVAL);
    }
    bail!(
        "processes {:?} still in namespace {ns} after SIGKILL and {KILL_TIMEOUT:?}",
        netns_pids(ns).unwrap_or_default()
    )
}

/// Pids in namespace `ns`, never including this process (whose main thread stays in the root
/// namespace anyway; the check guards against killing the test runner by accident).
fn netns_pids(ns: &str) -> Result<Vec<i32>> {
    let out = run(Command::new("ip").args(["netns", "pids", ns]), None)
        .with_context(|| format!("listing processes of namespace {ns}"))?;
    let me = std::process::id();
    let mut pids = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid: i32 = line
            .parse()
            .with_context(|| format!("unexpected `ip netns pids {ns}` line {line:?}"))?;
        if pid > 1 && u32::try_from(pid) != Ok(me) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

fn netns_add(name: &str) -> Result<()> {
    let _guard = lock(&NETNS_ADD_LOCK);
    run(Command::new("ip").args(["netns", "add", name]), None)
        .with_context(|| format!("creating network namespace {name}"))?;
    Ok(())
}

fn netns_delete(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "delete", name]), None)
        .with_context(|| format!("deleting network namespace {name}"))?;
    Ok(())
}

fn netns_file(name: &str) -> Result<File> {
    let path = format!("{NETNS_RUN_DIR}/{name}");
    File::open(&path).with_context(|| format!("opening {path}"))
}

/// `ip -n NS ARGS...`
fn run_ip(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(["-n", ns]).args(args), None)
}

/// `tc -n NS ARGS...`
fn run_tc(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("tc").args(["-n", ns]).args(args), None)
}

/// Several `ip` commands in namespace `ns` with one process; stops at the first failure.
fn ip_batch(ns: &str, commands: &str) -> Result<String> {
    run(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(commands.as_bytes()),
    )
}

/// Waits until interface `iface` in `ns` has (or has lost) carrier.
fn wait_carrier(ns: &str, iface: &str, up: bool) -> Result<()> {
    let deadline = Instant::now() + LINK_TIMEOUT;
    let mut flags = String::new();
    for _ in 0..poll_rounds(LINK_TIMEOUT) {
        flags = run_ip(ns, &["-o", "link", "show", "dev", iface])?;
        // `ip -o link` prints e.g. `<BROADCAST,MULTICAST,UP,LOWER_UP>` or `<NO-CARRIER,...>`.
        if flags.contains("LOWER_UP") == up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL_INTERVAL);
    }
    let want = if up { "carrier" } else { "no carrier" };
    bail!(
        "{iface} in {ns} did not reach {want} within {LINK_TIMEOUT:?}: {}",
        flags.trim()
    )
}

/// How many polls fit into `timeout`, so loops are bounded in count as well as in time.
fn poll_rounds(timeout: Duration) -> u128 {
    timeout.as_millis() / POLL_INTERVAL.as_millis() + 2
}

fn checked_ifname(name: String) -> Result<String> {
    ensure!(
        name.len() <= MAX_IFNAME_LEN,
        "interface name {name:?} is longer than {MAX_IFNAME_LEN} bytes \
         (too many testbeds or hosts in one process)"
    );
    Ok(name)
}

/// Locks a mutex, ignoring poisoning: the guarded data stays meaningful after a panicking
/// test thread, and cleanup must not panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `command` to completion with optional stdin and returns its stdout; fails with its
/// stderr on a non-zero exit, and kills it after [`COMMAND_TIMEOUT`].
///
/// Output goes to anonymous temp files rather than pipes so a chatty child can never block on
/// a full pipe while we poll for its exit.
fn run(command: &mut Command, stdin: Option<&[u8]>) -> Result<String> {
    let what = format!("{command:?}");
    let mut stdout = tempfile::tempfile().context("creating a temp file for stdout")?;
    let mut stderr = tempfile::tempfile().context("creating a temp file for stderr")?;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout.try_clone().context("duplicating stdout file")?)
        .stderr(stderr.try_clone().context("duplicating stderr file")?);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    if let Some(input) = stdin {
        // Inputs are a few hundred bytes, far below the pipe buffer: this write cannot block.
        let written = match child.stdin.take() {
            Some(mut pipe) => pipe.write_all(input),
            None => Err(std::io::Error::other("no stdin pipe")),
        };
        if let Err(err) = written {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err).with_context(|| format!("writing stdin of {what}"));
        }
    }
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT).with_context(|| what.clone())?;
    let out = read_all(&mut stdout).with_context(|| format!("reading stdout of {what}"))?;
    if !status.success() {
        let err = read_all(&mut stderr).unwrap_or_default();
        bail!("{what} failed ({status}): {}", err.trim());
    }
    Ok(out)
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    // Pauses double up to POLL_INTERVAL, so this is at most timeout/POLL_INTERVAL + a few.
    for _ in 0..poll_rounds(timeout) + 8 {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(POLL_INTERVAL);
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("killed after running longer than {timeout:?}")
}

fn read_all(file: &mut File) -> Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_accepts_only_this_librarys_names() {
        assert_eq!(owner_pid("rs1c62t0-sw"), Some(0x1c62));
        assert_eq!(owner_pid("rs1c62t1f-h12"), Some(0x1c62));
        for other in [
            "rs1c62t0-other",
            "rs1c62-sw",
            "rs1c62t-sw",
            "rst0-sw",
            "rs1C62t0-sw",
            "rs1c62t0-h",
            "rs1c62t0-h1x",
            "rs1t0-sw", // pid 1 is never a test runner
            "xrs1c62t0-sw",
            "redis-sw",
            "",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn no_faults_renders_a_table_deletion_only() {
        let script = render_faults(&Faults::default());
        assert_eq!(
            script,
            "table inet rs_testbed\ndelete table inet rs_testbed\n"
        );
    }

    #[test]
    fn faults_render_both_directions_and_exempt_loopback() {
        let faults = Faults {
            cut: [Ipv4Addr::new(10, 77, 0, 12), Ipv4Addr::new(10, 77, 0, 11)].into(),
            loss_percent: 30,
            ..Faults::default()
        };
        let script = render_faults(&faults);
        let input = script.split("chain input").nth(1).unwrap();
        let input = input.split("chain output").next().unwrap();
        let output = script.split("chain output").nth(1).unwrap();
        assert!(input.contains("iif \"lo\" accept\nip saddr { 10.77.0.11, 10.77.0.12 } drop"));
        assert!(output.contains("oif \"lo\" accept\nip daddr { 10.77.0.11, 10.77.0.12 } drop"));
        assert!(input.contains("numgen random mod 100 < 30 drop"));
        assert!(output.contains("numgen random mod 100 < 30 drop"));
    }

    #[test]
    fn full_loss_renders_an_unconditional_drop() {
        let faults = Faults {
            loss_percent: 100,
            ..Faults::default()
        };
        let script = render_faults(&faults);
        assert!(!script.contains("numgen"), "{script}");
        assert_eq!(script.matches("accept\ndrop\n").count(), 2, "{script}");
    }

    #[test]
    fn one_way_drops_render_in_one_direction_only() {
        let faults = Faults {
            cut: [Ipv4Addr::new(10, 77, 0, 11)].into(),
            drop_to: [Ipv4Addr::new(10, 77, 0, 12)].into(),
            drop_from: [Ipv4Addr::new(10, 77, 0, 13)].into(),
            ..Faults::default()
        };
        let script = render_faults(&faults);
        let input = script.split("chain input").nth(1).unwrap();
        let input = input.split("chain output").next().unwrap();
        let output = script.split("chain output").nth(1).unwrap();
        assert!(
            input.contains("ip saddr { 10.77.0.11, 10.77.0.13 } drop"),
            "{script}"
        );
        assert!(
            output.contains("ip daddr { 10.77.0.11, 10.77.0.12 } drop"),
            "{script}"
        );
        let only_to = Faults {
            drop_to: [Ipv4Addr::new(10, 77, 0, 12)].into(),
            ..Faults::default()
        };
        let script = render_faults(&only_to);
        assert!(!script.contains("saddr"), "{script}");
        assert!(script.contains("ip daddr { 10.77.0.12 } drop"), "{script}");
    }

    #[test]
    fn interface_names_fit_with_realistic_pids_and_counters() {
        // pid_max is at most 2^22 (6 hex digits); 256 testbeds of 100 hosts per process fit.
        assert!(checked_ifname("rs3ffffftffp99".into()).is_ok());
        assert!(checked_ifname("rs3ffffftfffp244".into()).is_err());
    }
}
