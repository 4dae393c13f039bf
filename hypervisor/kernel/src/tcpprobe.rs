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
    Some((tid, addr))
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

/// Start what the command line asks for.
pub fn start(cmdline: &str, modules: &[catenary_bootinfo::Module]) {
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
