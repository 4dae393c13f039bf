//! TCP probes of the ring-3 `netd`'s socket protocol: ring-3 clients (uapp
//! roles 32..34, hypervisor/user/src/bin/uapp/tcp.rs) with their own task /128s.
//!
//! - `net.tcpecho=PORT`: an echo server on its own task /128 (bound after `echo`, so
//!   `prefix:200::2` when nothing else binds first), port PORT.
//! - `net.tcptest=NAME`: a client with its own task /128 against NAME's echo server at NAME's
//!   `prefix:200::2` port 7 (several connections at once, 1 MiB checksummed, a refused
//!   connect, hostile requests); then a client without a /128 of its own that connects and
//!   exits with its sockets open (its `netd` must close them). Logs each exit code, then
//!   `tcp probe done`.
//! - `net.sockrestart=NAME`: a client (uapp role 35, `uapp/restart.rs`) with a listener, a
//!   UDP socket and a connection to NAME's echo server; `netd` is killed in the middle of its
//!   transfer; the client checks the errors and opens its sockets again.
//! - `net.restartpeer=NAME`: (role 36) connects to NAME's restart client (NAME's
//!   `prefix:200::2`, TCP 8, UDP 9) until each echoes once.
//!
//! Only in the probes kernel (the cargo feature `probes`, main.rs; docs/testing.md "The probes
//! kernel"): the node kernel has neither this code nor the options' names.

use alloc::string::String;
use catenary_ipc::{Address, Capability, Message, Rights};
use core::net::Ipv6Addr;
use log::{info, warn};
use netfabric::identity::{AddressKind, Prefix64};
use spin::Mutex;

use crate::task::{self, supervisor};
use catenary_sched::TaskId;

const SEC: u64 = 1_000_000_000;
const ROLE_TCP_SERVER: u64 = 32;
const ROLE_TCP_CLIENT: u64 = 33;
const ROLE_TCP_DIER: u64 = 34;

static SERVER_PORT: Mutex<u16> = Mutex::new(0);
static TARGET: Mutex<Option<(String, Ipv6Addr)>> = Mutex::new(None);

/// Start uapp `role` with a send+grant capability to `netd` (slot 1); if `bind`, give its
/// endpoint a task /128 (waiting for the router); then send it `first`.
fn spawn(name: &str, role: u64, bind: bool, first: Message) -> Option<(TaskId, Option<Ipv6Addr>)> {
    spawn_slot(name, role, bind, first).map(|(t, a, _)| (t, a))
}

/// [`spawn`], also returning the probe's capability slot to the task's endpoint.
fn spawn_slot(name: &str, role: u64, bind: bool, first: Message) -> Option<(TaskId, Option<Ipv6Addr>, usize)> {
    let ep = supervisor::service_endpoint("netd")?;
    let spec = task::UserSpec {
        name, elf: task::UAPP_ELF, arg: role, prio: catenary_sched::Priority::NORMAL, affinity: catenary_sched::Affinity::ANY,
        own_endpoint: true, caps: &[Capability { rights: Rights::SEND.union(Rights::GRANT), ..task::send_cap(ep, 0) }], ports: &[], mmio: &[], dma_pages: 0,
        mem_pages: task::DEFAULT_MEM_PAGES,
    };
    let (tid, own) = task::spawn_user(&spec).ok()?;
    let own = own?;
    let mut addr = None;
    if bind {
        let b = task::try_give_current(Capability { target: Address::local(own), rights: Rights::BIND, badge: 0 }).ok()?;
        let t0 = catenary_arch::time::now_ns();
        while addr.is_none() && catenary_arch::time::now_ns() - t0 < 120 * SEC {
            match task::bind_address(b) {
                Ok(a) => addr = Some(Ipv6Addr::from(a)),
                Err(_) => task::sleep_ns(200_000_000), // netd is not up yet
            }
        }
        addr?;
    }
    let slot = task::try_give_current(task::send_cap(own, 0)).ok()?;
    task::send(slot, first).ok()?;
    Some((tid, addr, slot))
}

fn words(a: Ipv6Addr, port: u16) -> [u64; 4] {
    let v = u128::from_be_bytes(a.octets());
    [(v >> 64) as u64, v as u64, port as u64, 0]
}

fn server(_: u64) {
    let port = catenary_arch::cpu::without_interrupts(|| *SERVER_PORT.lock());
    match spawn("tcpecho", ROLE_TCP_SERVER, true, Message::new(1, [port as u64, 0, 0, 0])) {
        Some((t, a)) => info!(target: "net", "tcp probe: TCP echo server (ring-3 task {}) has the task /128 {:?}, port {}", t, a, port),
        None => warn!(target: "net", "tcp probe: cannot start the TCP echo server"),
    }
}

fn client(_: u64) {
    let Some((peer, addr)) = catenary_arch::cpu::without_interrupts(|| TARGET.lock().take()) else { return };
    let done = || info!(target: "net", "tcp probe done");
    let Some((t, own)) = spawn("tcpclient", ROLE_TCP_CLIENT, true, Message::new(1, words(addr, 7))) else {
        warn!(target: "net", "tcp probe: cannot start the client");
        return done();
    };
    info!(target: "net", "tcp probe: TCP client (ring-3 task {}, its task /128 {:?}) against {}'s echo server at [{}]:7", t, own, peer, addr);
    let code = task::join(t, 300 * SEC);
    info!(target: "net", "tcp probe: the client ended: {:?} (bits: 1 concurrent, 2 1 MiB, 4 refused, 8 hostile)", code);
    let Some((d, _)) = spawn("tcpdier", ROLE_TCP_DIER, false, Message::new(1, words(addr, 7))) else {
        warn!(target: "net", "tcp probe: cannot start the dying client");
        return done();
    };
    let code = task::join(d, 120 * SEC);
    info!(target: "net", "tcp probe: the client that exits with open sockets (task {}) ended: {:?} (bits: 1 Own refused, 2 sent)", d, code);
    // netd notices within its sweep interval
    task::sleep_ns(3 * SEC);
    done();
}

const ROLE_RESTART_CLIENT: u64 = 35;
const ROLE_RESTART_PEER: u64 = 36;
static RESTART_TARGET: Mutex<Option<(String, Ipv6Addr)>> = Mutex::new(None);

/// `net.sockrestart=NAME`: the restart client (its own task /128) against NAME's echo server;
/// once it says it is mid-transfer, `netd` is killed; logs the restart and its exit code.
fn sockrestart(_: u64) {
    let Some((peer, addr)) = catenary_arch::cpu::without_interrupts(|| RESTART_TARGET.lock().take()) else { return };
    let done = || info!(target: "net", "sockrestart probe done");
    let Some((t, own, slot)) = spawn_slot("restartclient", ROLE_RESTART_CLIENT, true, Message::new(1, words(addr, 7))) else {
        warn!(target: "net", "sockrestart probe: cannot start the client");
        return done();
    };
    info!(target: "net", "sockrestart probe: client (ring-3 task {}, its task /128 {:?}) against {}'s echo server at [{}]:7", t, own, peer, addr);
    // the client answers when it is in the middle of its transfer
    match task::call_timeout(slot, Message::new(2, [0; 4]), 240_000) {
        Ok(m) => info!(target: "net", "sockrestart probe: the client is mid-transfer ({} bytes echoed)", m.words[0]),
        Err(e) => {
            warn!(target: "net", "sockrestart probe: the client never got to its transfer: {:?}", e);
            return done();
        }
    }
    let before = supervisor::service_restarts("netd");
    let Some(old) = supervisor::service_task("netd") else {
        warn!(target: "net", "sockrestart probe: no netd to kill");
        return done();
    };
    let t0 = catenary_arch::time::now_ns();
    while !task::kill_for_test(old) {
        if catenary_arch::time::now_ns() - t0 > 10 * SEC {
            warn!(target: "net", "sockrestart probe: netd never stopped running long enough to be killed");
            return done();
        }
        task::yield_now();
    }
    info!(target: "net", "sockrestart probe: killed netd (task {}) in the middle of the client's transfer", old);
    while supervisor::service_restarts("netd") == before && catenary_arch::time::now_ns() - t0 < 60 * SEC {
        task::sleep_ns(50_000_000);
    }
    info!(target: "net", "sockrestart probe: netd restarted as task {:?} (restarts: {})", supervisor::service_task("netd"), supervisor::service_restarts("netd"));
    let code = task::join(t, 400 * SEC);
    info!(target: "net", "sockrestart probe: the client ended: {:?} (bits: 1 unaligned echoes, 2 connection Restarted, 4 listener/UDP/poll Restarted, 8 reopened, 16 TCP served, 32 UDP served, 64 buffer misuse refused)", code);
    done();
}

fn restartpeer(_: u64) {
    let Some((peer, addr)) = catenary_arch::cpu::without_interrupts(|| RESTART_TARGET.lock().take()) else { return };
    match spawn("restartpeer", ROLE_RESTART_PEER, false, Message::new(1, words(addr, 8))) {
        Some((t, _)) => {
            info!(target: "net", "sockrestart peer: ring-3 task {} against {}'s restart client at [{}]", t, peer, addr);
            let code = task::join(t, 600 * SEC);
            info!(target: "net", "sockrestart peer: ended: {:?} (bits: 1 TCP echoed, 2 UDP echoed)", code);
        }
        None => warn!(target: "net", "sockrestart peer: cannot start"),
    }
}

/// Start what the command line asks for.
pub fn start(cmdline: &str, modules: &[catenary_bootinfo::Module]) {
    let task2 = |peer: &str| crate::net::cluster(modules).and_then(|c| c.by_name(peer).and_then(|m| Prefix64::from_public_key(&m.public_key).workload_address(AddressKind::Task, 2)));
    for (key, f, name) in [("net.sockrestart", sockrestart as fn(u64), "sockrestart"), ("net.restartpeer", restartpeer as fn(u64), "restartpeer")] {
        if let Some(peer) = crate::cmdline::get(cmdline, key) {
            match task2(peer) {
                Some(a) => {
                    catenary_arch::cpu::without_interrupts(|| *RESTART_TARGET.lock() = Some((String::from(peer), a)));
                    task::spawn_kernel(name, catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, f, 0);
                }
                None => warn!(target: "net", "{}: {} is not in the cluster file", key, peer),
            }
        }
    }
    if let Some(port) = crate::cmdline::get(cmdline, "net.tcpecho").and_then(|p| p.parse::<u16>().ok()) {
        catenary_arch::cpu::without_interrupts(|| *SERVER_PORT.lock() = port);
        task::spawn_kernel("tcpecho", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, server, 0);
    }
    if let Some(peer) = crate::cmdline::get(cmdline, "net.tcptest") {
        match crate::net::cluster(modules).and_then(|c| c.by_name(peer).and_then(|m| Prefix64::from_public_key(&m.public_key).workload_address(AddressKind::Task, 2))) {
            Some(a) => {
                catenary_arch::cpu::without_interrupts(|| *TARGET.lock() = Some((String::from(peer), a)));
                task::spawn_kernel("tcptest", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, client, 0);
            }
            None => warn!(target: "net", "tcp probe: {} is not in the cluster file", peer),
        }
    }
}
