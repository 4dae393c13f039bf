//! Probes of the ring-3 `netd` (the default), kernel tasks that use fabric IPC through
//! the ordinary `call`/`send` syscalls (they need nothing from `netd` but its routing):
//!
//! - `net.netdtest=NAME` (with `netd.test_panic=1`): `netdtest` calls NAME's `echo` until it
//!   answers; asks NAME's `panicsvc` to send this node the test panic message, which makes
//!   the first `netd` panic (only `netd` dies; the supervisor restarts it); calls echo again
//!   until 3 in a row answer; then kills `netd` in the middle of a stream of calls
//!   (`netdtraffic`) and again waits for the restart and 3 answered calls. Logs each step and
//!   the restart count.
//! - `net.ipcbench=NAME`: once NAME's echo answers, the remote call benchmark
//!   (`rpcprobe::ipcbench`) through the ring-3 `netd`.
//! - `net.panicsvc=1` (on the peer, any `netd`): `panicsvc` at the node's second task /128
//!   (`prefix:200::2`): a call to it is answered, then a send with
//!   `catenary_ipc::netd::TEST_PANIC_LABEL` goes to the caller's node's `echo` /128.
//!
//! Only in the probes kernel (the cargo feature `probes`, main.rs; docs/testing.md "The probes
//! kernel"): the node kernel has neither this code nor the options' names.

use alloc::string::String;
use catenary_arch::time;
use catenary_ipc::{Address, Capability, Message, Rights};
use core::net::Ipv6Addr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use log::{info, warn};
use netfabric::identity::{AddressKind, Prefix64};
use spin::Mutex;

use crate::task::{self, supervisor};
use catenary_sched::TaskId;

const SEC: u64 = 1_000_000_000;
/// Asks `panicsvc` to send the test panic message back.
pub const LABEL_PANIC_REQUEST: u64 = 0x5301;

/// (peer name, its echo /128, its panicsvc /128)
static TARGET: Mutex<Option<(String, Ipv6Addr, Ipv6Addr)>> = Mutex::new(None);
static TRAFFIC_TO: Mutex<Option<Ipv6Addr>> = Mutex::new(None);
static TRAFFIC_OK: AtomicU64 = AtomicU64::new(0);
static TRAFFIC_FAILED: AtomicU64 = AtomicU64::new(0);
static TRAFFIC_STOP: AtomicBool = AtomicBool::new(false);

fn remote_slot(a: Ipv6Addr) -> Option<usize> {
    task::try_give_current(Capability { target: Address { node: a.octets(), endpoint: 0 }, rights: Rights::SEND, badge: 0 }).ok()
}

fn echo_call(slot: usize, i: u64) -> bool {
    task::call_timeout(slot, Message::new(7, [i, 2 * i, 3 * i, 0xfab]), 2000).is_ok_and(|r| r.label == 8 && r.words == [i + 1, 2 * i + 1, 3 * i + 1, 0xfac])
}

/// Call until one answer comes (or `within_ns` passes); returns the ms it took.
fn first_answer(slot: usize, within_ns: u64) -> Option<u64> {
    let t0 = time::now_ns();
    let mut i = 1;
    while time::now_ns() - t0 < within_ns {
        if echo_call(slot, i) {
            return Some((time::now_ns() - t0) / 1_000_000);
        }
        i += 1;
        task::sleep_ns(200_000_000);
    }
    None
}

/// Call until 3 in a row are answered correctly (or `within_ns` passes).
fn three_in_a_row(slot: usize, within_ns: u64) -> bool {
    let t0 = time::now_ns();
    let mut run = 0;
    let mut i = 100;
    while time::now_ns() - t0 < within_ns {
        if echo_call(slot, i) {
            run += 1;
            if run == 3 {
                return true;
            }
        } else {
            run = 0;
            task::sleep_ns(200_000_000);
        }
        i += 1;
    }
    false
}

/// The peer `name`'s task /128 number `index` (1: echo, 2: the probe service), from the
/// cluster file.
fn peer_task(modules: &[catenary_bootinfo::Module], name: &str, index: u64) -> Option<Ipv6Addr> {
    let c = crate::net::cluster(modules)?;
    let m = c.by_name(name)?;
    Prefix64::from_public_key(&m.public_key).workload_address(AddressKind::Task, index)
}

/// uapp roles that speak the socket protocol (hypervisor/user/src/bin/uapp.rs).
const ROLE_UDP_ECHO: u64 = 30;
const ROLE_UDP_CLIENT: u64 = 31;
/// Badges of their capabilities to `netd` (the socket protocol's client ids).
const BADGE_UDP_ECHO: u64 = 0x100;
const BADGE_UDP_CLIENT: u64 = 0x101;

/// A ring-3 client of the socket protocol: uapp `role` with a send capability to `netd`'s
/// endpoint (slot 1, badge `badge`; send and grant: data travels in memory grants); its own
/// endpoint gets `first`.
fn spawn_socket_client(name: &str, role: u64, badge: u64, first: Message) -> Option<TaskId> {
    let ep = supervisor::service_endpoint("netd")?;
    let spec = task::UserSpec {
        name, elf: task::UAPP_ELF, arg: role, prio: catenary_sched::Priority::NORMAL, affinity: catenary_sched::Affinity::ANY,
        own_endpoint: true, caps: &[Capability { rights: Rights::SEND.union(Rights::GRANT), ..task::send_cap(ep, badge) }], ports: &[], mmio: &[], dma_pages: 0, mem_pages: task::DEFAULT_MEM_PAGES,
    };
    let (tid, own) = task::spawn_user(&spec).ok()?;
    let slot = task::try_give_current(task::send_cap(own?, 0)).ok()?;
    task::send(slot, first).ok()?;
    Some(tid)
}

static UDP_PEER: Mutex<Option<(String, Ipv6Addr, u16)>> = Mutex::new(None);

/// `net.udptest=NAME`: the ring-3 client sends datagrams to NAME's UDP echo (port 7) through
/// the ring-3 `netd`, then hostile requests; the probe reports its exit code.
fn udptest(_: u64) {
    let Some((peer, addr, port)) = catenary_arch::cpu::without_interrupts(|| UDP_PEER.lock().take()) else { return };
    let (hi, lo) = { let v = u128::from_be_bytes(addr.octets()); ((v >> 64) as u64, v as u64) };
    let Some(tid) = spawn_socket_client("udpclient", ROLE_UDP_CLIENT, BADGE_UDP_CLIENT, Message::new(1, [hi, lo, port as u64, 0])) else {
        warn!(target: "net", "udp probe: cannot start the client");
        return info!(target: "net", "udp probe done");
    };
    let code = task::join(tid, 150 * SEC);
    info!(target: "net", "udp probe: the ring-3 client (task {}) of {}'s UDP echo ended: {} echoes, {} hostile requests refused ({:?})",
        tid, peer, code.map(|c| c & 0xff).unwrap_or(0), code.map(|c| (c >> 8) & 0xff).unwrap_or(0), code);
    info!(target: "net", "udp probe done");
}

/// Wait until the routing table exists (the ring-3 `netd` said `OP_UP`), up to 120 s.
pub fn wait_router() -> bool {
    let t0 = time::now_ns();
    while !crate::net::router_ready() {
        if time::now_ns() - t0 > 120 * SEC {
            warn!(target: "net", "no netd came up in 120 s");
            return false;
        }
        task::sleep_ns(10_000_000);
    }
    true
}

/// A probe service (`rpcsvc`, `panicsvc`) binds the node's second task /128 once the router
/// is up (the first is echo's).
fn after_router(which: u64) {
    if wait_router() {
        if which == 0 { crate::rpcprobe::rpcsvc(0) } else { panicsvc(0) }
    }
}

/// (peer's echo /128, what to start once it answers: 0 rpctest, 1 rpcquota fill, 2 rpcquota
/// other)
static AFTER_PEER: Mutex<Option<(Ipv6Addr, u64)>> = Mutex::new(None);

/// Once the peer's echo answers (the ring-3 `netd` has the session), start the probe.
fn after_peer(_: u64) {
    let Some((echo, what)) = catenary_arch::cpu::without_interrupts(|| AFTER_PEER.lock().take()) else { return };
    let answered = remote_slot(echo).and_then(|slot| first_answer(slot, 120 * SEC)).is_some();
    if !answered {
        warn!(target: "net", "probe: no answer from the peer's echo at {} in 120 s", echo);
    }
    match what {
        0 if answered => crate::rpcprobe::rpctest(0),
        0 => info!(target: "net", "rpctest done"),
        _ => match catenary_arch::cpu::without_interrupts(|| crate::rpcprobe::QUOTA.lock().clone()) {
            Some((peer, svc)) if answered => crate::rpcprobe::rpcquota_start(&peer, svc, what == 1),
            _ => info!(target: "net", "rpcquota done"),
        },
    }
}

/// Start the probes the command line asks for (ring-3 `netd`): kernel tasks that use fabric
/// IPC through it (`net.ping` and `net.bench` drive the stack: `netd` runs those itself).
pub fn start(cmdline: &str, modules: &[catenary_bootinfo::Module]) {
    crate::tcpprobe::start(cmdline, modules);
    let get = |k: &str| crate::cmdline::get(cmdline, k);
    if let Some(peer) = get("net.ipccall") {
        match crate::net::cluster(modules).and_then(|c| c.by_name(peer).map(|m| Prefix64::from_public_key(&m.public_key).node_address())) {
            Some(a) => crate::net::start_ipc_client(peer, a, true),
            None => warn!(target: "net", "ipc probe: {} is not in the cluster file", peer),
        }
    }
    if get("net.rpcsvc").is_some() {
        task::spawn_kernel("rpcsvc", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, after_router, 0);
    } else if get("net.panicsvc").is_some() {
        task::spawn_kernel("panicsvc", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, after_router, 1);
    }
    if let Some(arg) = get("net.rpctest") {
        let mut it = arg.split(',');
        let peer = it.next().unwrap_or("");
        let ghost = it.next().and_then(|g| Some((String::from(g), peer_task(modules, g, 1)?)));
        match (peer_task(modules, peer, 1), peer_task(modules, peer, 2)) {
            (Some(echo), Some(svc)) => {
                catenary_arch::cpu::without_interrupts(|| {
                    *crate::rpcprobe::TEST.lock() = Some((String::from(peer), svc, ghost));
                    *AFTER_PEER.lock() = Some((echo, 0));
                });
                task::spawn_kernel("rpctest", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, after_peer, 0);
            }
            _ => warn!(target: "net", "rpctest: {} is not in the cluster file", peer),
        }
    }
    if let Some(arg) = get("net.rpcquota") {
        let (mode, peer) = arg.split_once(':').unwrap_or(("fill", arg));
        match (peer_task(modules, peer, 1), peer_task(modules, peer, 2)) {
            (Some(echo), Some(svc)) => {
                catenary_arch::cpu::without_interrupts(|| {
                    *crate::rpcprobe::QUOTA.lock() = Some((String::from(peer), svc));
                    *AFTER_PEER.lock() = Some((echo, if mode == "fill" { 1 } else { 2 }));
                });
                task::spawn_kernel("rpcquota", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, after_peer, 0);
            }
            _ => warn!(target: "net", "rpcquota: {} is not in the cluster file", peer),
        }
    }
    if let Some(peer) = get("net.nicd_restart") {
        match peer_task(modules, peer, 1) {
            Some(echo) => {
                catenary_arch::cpu::without_interrupts(|| *TARGET.lock() = Some((String::from(peer), echo, echo)));
                task::spawn_kernel("nicdtest", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, nicdtest, 0);
            }
            None => warn!(target: "net", "nicd probe: {} is not in the cluster file", peer),
        }
    }
    if let Some(port) = crate::cmdline::get(cmdline, "net.udpecho").and_then(|p| p.parse::<u64>().ok()) {
        match spawn_socket_client("udpecho", ROLE_UDP_ECHO, BADGE_UDP_ECHO, Message::new(1, [port, 0, 0, 0])) {
            Some(t) => info!(target: "net", "udp probe: UDP echo on port {} (ring-3 task {}, a client of netd's socket protocol)", port, t),
            None => warn!(target: "net", "udp probe: cannot start the UDP echo"),
        }
    }
    if let Some(peer) = crate::cmdline::get(cmdline, "net.udptest") {
        match crate::net::cluster(modules).and_then(|c| c.by_name(peer).map(|m| Prefix64::from_public_key(&m.public_key).node_address())) {
            Some(a) => {
                catenary_arch::cpu::without_interrupts(|| *UDP_PEER.lock() = Some((String::from(peer), a, 7)));
                task::spawn_kernel("udptest", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, udptest, 0);
            }
            None => warn!(target: "net", "udp probe: {} is not in the cluster file", peer),
        }
    }
    if let Some(peer) = crate::cmdline::get(cmdline, "net.netdtest") {
        match (peer_task(modules, peer, 1), peer_task(modules, peer, 2)) {
            (Some(echo), Some(svc)) => {
                catenary_arch::cpu::without_interrupts(|| *TARGET.lock() = Some((String::from(peer), echo, svc)));
                task::spawn_kernel("netdtest", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, netdtest, 0);
            }
            _ => warn!(target: "net", "netd probe: {} is not in the cluster file", peer),
        }
    }
    if let Some(peer) = crate::cmdline::get(cmdline, "net.ipcbench") {
        match peer_task(modules, peer, 1) {
            Some(echo) => {
                catenary_arch::cpu::without_interrupts(|| *crate::rpcprobe::BENCH.lock() = Some((String::from(peer), echo)));
                task::spawn_kernel("ipcbench", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, bench, 0);
            }
            None => warn!(target: "net", "bench ipc: {} is not in the cluster file", peer),
        }
    }
}

fn bench(_: u64) {
    let Some(echo) = catenary_arch::cpu::without_interrupts(|| crate::rpcprobe::BENCH.lock().as_ref().map(|b| b.1)) else { return };
    let Some(slot) = remote_slot(echo) else { return };
    if first_answer(slot, 120 * SEC).is_none() {
        warn!(target: "net", "bench ipc: no answer from the peer's echo in 120 s");
        info!(target: "net", "bench ipc: remote done");
        return;
    }
    crate::rpcprobe::ipcbench(0);
}

fn wait_restart(before: u32, within_ns: u64) -> Option<(u32, u64)> {
    wait_restart_of("netd", before, within_ns)
}

fn wait_restart_of(service: &str, before: u32, within_ns: u64) -> Option<(u32, u64)> {
    let t0 = time::now_ns();
    while time::now_ns() - t0 < within_ns {
        let n = supervisor::service_restarts(service);
        if n > before {
            if let Some(t) = supervisor::service_task(service) {
                return Some((n, t));
            }
        }
        task::sleep_ns(10_000_000);
    }
    None
}

/// Calls to the peer's echo, back to back, until told to stop (the traffic `netd` dies in).
fn traffic(_: u64) {
    let Some(a) = catenary_arch::cpu::without_interrupts(|| *TRAFFIC_TO.lock()) else { return };
    let Some(slot) = remote_slot(a) else { return };
    let mut i = 1000;
    while !TRAFFIC_STOP.load(Ordering::Relaxed) {
        if echo_call(slot, i) {
            TRAFFIC_OK.fetch_add(1, Ordering::Relaxed);
        } else {
            TRAFFIC_FAILED.fetch_add(1, Ordering::Relaxed);
            task::sleep_ns(50_000_000);
        }
        i += 1;
    }
}

fn netdtest(_: u64) {
    let Some((peer, echo, svc)) = catenary_arch::cpu::without_interrupts(|| TARGET.lock().take()) else { return };
    let (Some(slot), Some(svc_slot)) = (remote_slot(echo), remote_slot(svc)) else { return warn!(target: "net", "netd probe: capability table full") };
    let done = || info!(target: "net", "netd probe done");
    let Some(ms) = first_answer(slot, 120 * SEC) else {
        warn!(target: "net", "netd probe: no answer from {} echo at {} in 120 s", peer, echo);
        return done();
    };
    info!(target: "net", "netd probe: {} echo at {} answers through the ring-3 netd (task {:?}; first answer after {} ms)",
        peer, echo, supervisor::service_task("netd"), ms);

    // 1. a message from the network that makes netd panic: only netd dies
    let before = supervisor::service_restarts("netd");
    let r = task::call_timeout(svc_slot, Message::new(LABEL_PANIC_REQUEST, [0; 4]), 5000);
    info!(target: "net", "netd probe: asked {} panicsvc to send the test panic message: {:?}", peer, r.map(|m| m.label));
    let Some((n, t)) = wait_restart(before, 60 * SEC) else {
        warn!(target: "net", "netd probe: netd was not restarted within 60 s of the panic message");
        return done();
    };
    info!(target: "net", "netd probe: the message from {} made netd panic; the node runs on, the supervisor restarted netd as task {} (restarts: {})", peer, t, n);
    let t0 = time::now_ns();
    let ok = three_in_a_row(slot, 120 * SEC);
    info!(target: "net", "netd probe: after the panic: {} remote calls to {} echo in a row ({} ms after the restart)",
        if ok { "3/3" } else { "not 3" }, peer, (time::now_ns() - t0) / 1_000_000);

    // 2. netd killed in the middle of fabric traffic
    catenary_arch::cpu::without_interrupts(|| *TRAFFIC_TO.lock() = Some(echo));
    task::spawn_kernel("netdtraffic", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, traffic, 0);
    let t0 = time::now_ns();
    while TRAFFIC_OK.load(Ordering::Relaxed) < 5 && time::now_ns() - t0 < 60 * SEC {
        task::sleep_ns(10_000_000);
    }
    let before = supervisor::service_restarts("netd");
    let Some(old) = supervisor::service_task("netd") else { return done() };
    let t0 = time::now_ns();
    while !task::kill_for_test(old) {
        if time::now_ns() - t0 > 5 * SEC {
            warn!(target: "net", "netd probe: netd never stopped running long enough to be killed");
            return done();
        }
        task::yield_now();
    }
    let answered = TRAFFIC_OK.load(Ordering::Relaxed);
    info!(target: "net", "netd probe: killed netd (task {}) in the middle of fabric traffic to {} ({} calls answered before)", old, peer, answered);
    let Some((n, t)) = wait_restart(before, 60 * SEC) else {
        warn!(target: "net", "netd probe: netd was not restarted within 60 s of the kill");
        return done();
    };
    let t1 = time::now_ns();
    let ok = three_in_a_row(slot, 120 * SEC);
    TRAFFIC_STOP.store(true, Ordering::Relaxed);
    info!(target: "net", "netd probe: netd restarted as task {} (restarts: {}); after the kill: {} remote calls to {} echo in a row ({} ms after the restart); traffic: {} answered, {} failed",
        t, n, if ok { "3/3" } else { "not 3" }, peer, (time::now_ns() - t1) / 1_000_000, TRAFFIC_OK.load(Ordering::Relaxed), TRAFFIC_FAILED.load(Ordering::Relaxed));
    done();
}

/// `net.panicsvc=1`: see the module docs.
pub fn panicsvc(_: u64) {
    let caps = task::try_create_endpoint_for_current(16)
        .and_then(|(slot, ep)| task::try_give_current(Capability { target: Address::local(ep), rights: Rights::BIND, badge: 0 }).map(|b| (slot, ep, b)));
    let Ok((slot, ep, bind)) = caps else { return warn!(target: "net", "panicsvc: no room for its capabilities") };
    match task::bind_address(bind) {
        Ok(a) => info!(target: "net", "panicsvc: endpoint {} has fabric address {}", ep, Ipv6Addr::from(a)),
        Err(e) => return warn!(target: "net", "panicsvc: cannot bind: {:?}", e),
    }
    loop {
        let Ok(m) = task::recv(slot, 0) else { continue };
        let from = Ipv6Addr::from(task::sender());
        if m.reply == 0 {
            continue;
        }
        let _ = task::reply(m.reply, Message::new(m.label, [0; 4]));
        if m.label != LABEL_PANIC_REQUEST {
            continue;
        }
        let Some(echo) = Prefix64::of(&from).workload_address(AddressKind::Task, 1) else { continue };
        let Some(s) = remote_slot(echo) else { continue };
        let r = task::send(s, Message::new(catenary_ipc::netd::TEST_PANIC_LABEL, [0; 4]));
        info!(target: "net", "panicsvc: sent the test panic message to {} (caller {}): {:?}", echo, from, r);
    }
}

/// `net.nicd_restart=NAME`: the NIC driver killed in the middle of fabric traffic (remote
/// calls to NAME's echo, back to back, through the ring-3 `netd` and `nicd`). The kernel
/// quiesces the device before the dead driver's DMA memory is freed, the supervisor restarts
/// `nicd`, `netd` configures the new one and is lent its frame ring; then calls must be
/// answered again, over the same fabric session.
fn nicdtest(_: u64) {
    let Some((peer, echo, _)) = catenary_arch::cpu::without_interrupts(|| TARGET.lock().take()) else { return };
    let done = || info!(target: "net", "nicd probe done");
    let before = supervisor::service_restarts("nicd");
    let hang = supervisor::nicd_hangs_on_purpose();
    let Some(slot) = remote_slot(echo) else { return done() };
    let Some(ms) = first_answer(slot, 120 * SEC) else {
        warn!(target: "net", "nicd probe: no answer from {} echo at {} in 120 s", peer, echo);
        return done();
    };
    info!(target: "net", "nicd probe: {} echo at {} answers (first answer after {} ms)", peer, echo, ms);
    catenary_arch::cpu::without_interrupts(|| *TRAFFIC_TO.lock() = Some(echo));
    task::spawn_kernel("nicdtraffic", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, traffic, 0);
    let t0 = time::now_ns();
    while TRAFFIC_OK.load(Ordering::Relaxed) < 5 && time::now_ns() - t0 < 60 * SEC {
        task::sleep_ns(10_000_000);
    }
    if supervisor::supd_hangs_on_purpose() {
        // `supd.test_hang=1`: the kill is for the restarted supervisor to see, once it has
        // adopted the running nicd
        let adopted = supd_adopted_nicd(60 * SEC);
        info!(target: "net", "nicd probe: the supervisor was restarted {} time(s) (adopted nicd: {}); killing nicd now", supervisor::supervisor_task().1, adopted);
    }
    let Some(old) = supervisor::service_task("nicd") else { return done() };
    if hang {
        // `nicd.hang_after=N`: nicd hangs by itself in the traffic; its heartbeat must catch it
        info!(target: "net", "nicd probe: nicd (task {}) hangs on purpose; not killing it ({} calls answered so far)", old, TRAFFIC_OK.load(Ordering::Relaxed));
        return restarted(slot, &peer, before, "the hang");
    }
    let t0 = time::now_ns();
    while !task::kill_for_test(old) {
        if time::now_ns() - t0 > 5 * SEC {
            warn!(target: "net", "nicd probe: nicd never stopped running long enough to be killed");
            return done();
        }
        task::yield_now();
    }
    info!(target: "net", "nicd probe: killed nicd (task {}) in the middle of fabric traffic to {} ({} calls answered before)", old, peer, TRAFFIC_OK.load(Ordering::Relaxed));
    restarted(slot, &peer, before, "the kill")
}

/// Wait (at most `within_ns`) until the supervisor has been restarted and the new one's
/// `LABEL_QUERY` answer names the task that runs `nicd` now (it adopted it).
fn supd_adopted_nicd(within_ns: u64) -> bool {
    let t0 = time::now_ns();
    while supervisor::supervisor_task().1 == 0 {
        if time::now_ns() - t0 > within_ns {
            return false;
        }
        task::sleep_ns(10_000_000);
    }
    let (Some(ep), Some(idx)) = (supervisor::supervisor_endpoint(), catenary_manifest::index_of(catenary_manifest::SERVICES, "nicd")) else { return false };
    let Ok(q) = task::try_give_current(task::send_cap(ep, 0)) else { return false };
    let mut adopted = false;
    while !adopted && time::now_ns() - t0 < within_ns {
        let a = task::call_timeout(q, Message::new(catenary_ipc::supervisor::LABEL_QUERY, [idx as u64, 0, 0, 0]), 1_000);
        adopted = a.is_ok_and(|a| supervisor::service_task("nicd").is_some_and(|t| a.words[1] == t));
        if !adopted {
            task::sleep_ns(10_000_000);
        }
    }
    task::drop_current(q);
    adopted
}

/// The nicd probe's second half: `nicd` restarted (after `what`), then three remote calls in
/// a row must be answered over the same fabric session.
fn restarted(slot: usize, peer: &str, before: u32, what: &str) {
    let Some((n, t)) = wait_restart_of("nicd", before, 60 * SEC) else {
        warn!(target: "net", "nicd probe: nicd was not restarted within 60 s of {}", what);
        return info!(target: "net", "nicd probe done");
    };
    let t1 = time::now_ns();
    let ok = three_in_a_row(slot, 120 * SEC);
    TRAFFIC_STOP.store(true, Ordering::Relaxed);
    info!(target: "net", "nicd probe: nicd restarted as task {} (restarts: {}; frames freed while a dead driver's device could master the bus: {}); after {}: {} remote calls to {} echo in a row ({} ms after the restart); traffic: {} answered, {} failed",
        t, n, supervisor::dma_freed_while_mastering(), what, if ok { "3/3" } else { "not 3" }, peer, (time::now_ns() - t1) / 1_000_000,
        TRAFFIC_OK.load(Ordering::Relaxed), TRAFFIC_FAILED.load(Ordering::Relaxed));
    info!(target: "net", "nicd probe done");
}
