//! netd in ring 3: the node's network stack (smoltcp, netfabric sessions, fabric routing and
//! the fabric IPC router with its reliability layer: the `catenary-net` crate the in-kernel
//! `netd` runs too) and the microVM links' routing, started and restarted by the supervisor
//! (the default; `net.netd=kernel` runs the kernel task instead).
//!
//! Granted (manifest entry `netd`): its endpoint (slot 0: `nicd`'s reports, the kernel's
//! wakeups), a send capability to `nicd` (slot 1), the router capability (slot 2: `SYS_NET`)
//! and a memory quota for its heap and the microVM frame rings. No ports, MMIO or DMA: frames
//! come through the ring `nicd` lends it (`SYS_SHARE`), mapped in its grant window, and
//! through the rings it lends the kernel for the microVM links (`netd/vms.rs`). What crosses
//! to the kernel: boot data (`OP_BOOT`), remote sends/calls to carry (`OP_TAKE`), messages
//! from other nodes to deliver (`OP_DELIVER`, to the endpoint the kernel's table names),
//! answers to our calls (`OP_COMPLETE`), microVM link events (`OP_VM_*`). On its first start
//! it runs the command line's `net.ping`/`net.bench` probes (`netd/probes.rs`). It also
//! serves the IPC socket protocol (`catenary-netsock`): UDP and TCP on the node's /128 and the
//! callers' task /128s (`catenary_user::netsock_server`). See docs/microkernel.md, "netd in ring 3",
//! and docs/networking.md §3c.
//!
//! `arg` bit 0 (TESTS ONLY, `netd.test_panic=1`, first start only): panic on a fabric IPC
//! message whose label is `catenary_ipc::netd::TEST_PANIC_LABEL`. Bits 8.. : this start's
//! number (1 at boot, 2 after the first restart…), the socket handles' epoch.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

// the command line's probes: only in the probes kernel's netd (the feature `probes`)
#[cfg(feature = "probes")]
#[path = "netd/probes.rs"]
mod probes;
#[path = "netd/vms.rs"]
mod vms;
#[path = "netd/natgw.rs"]
mod natgw;

/// The value of `key=` on the command line.
pub fn cmdline_arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

use alloc::vec::Vec;
use catenary_ipc::netd::*;
use catenary_ipc::nic_ring as ring;
use catenary_ipc::IpcError;
use catenary_net::ipcroute::{Body, Frame, IpcRouter, RouteError};
use catenary_net::rpc::{Delivery, Outcome, Rpc, Ticket};
use catenary_net::{Cluster, Link, Node, NodeConfig};
use catenary_user::*;
use core::net::Ipv6Addr;
use core::sync::atomic::{fence, Ordering};
use netfabric::Identity;

const OWN: u64 = 0;
const NICD: u64 = 1;
const ROUTER: u64 = 2;
/// Heap pages (of the manifest's 4096-page quota; page tables come out of the rest).
const HEAP_PAGES: u64 = 3072;
/// How long `netd` waits for a wakeup before running the stack's timers anyway.
const IDLE_WAKE_NS: u64 = 10_000_000;
/// The heartbeat's period (`SYS_ALIVE`): 500 times the longest idle wait.
const HEARTBEAT_MS: u64 = 5_000;
/// Kernel records taken per pass, at most (the rest wait for the next pass).
const TAKE_PER_PASS: usize = 64;

entry!(run);

struct Logger;
impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            logf!("{}: {}", r.target(), r.args());
        }
    }
    fn flush(&self) {}
}
static LOGGER: Logger = Logger;

fn net(op: u64, buf: &mut [u8], arg: u64) -> Result<u64, u64> {
    catenary_user::net(ROUTER, op, buf, arg)
}

/// The frame ring `nicd` lends us, in our grant window (None: none yet).
struct RingNic {
    ring: Option<Grant>,
    mac: [u8; 6],
    bad: u64,
    /// Frames queued since the last wakeup decision ([`Link::flush`]).
    unflushed: u64,
    /// `net.nic=reference`: wake `nicd` after every frame, as before batching.
    wake_each: bool,
    /// Cycles and counts of the ring's side in `netd` ([`nicstat`]), for the bench.
    stats: [u64; nicstat::COUNT],
}

/// `RingNic::stats` indices: cumulative TSC cycles and counts.
pub mod nicstat {
    /// Frames taken from the receive ring; cycles to copy them out; cycles they waited in
    /// the ring (from `nicd`'s stamp to us: the handoff, mostly the switch to `netd`).
    pub const RX_FRAMES: usize = 0;
    pub const RX_CYCLES: usize = 1;
    pub const RX_WAIT_CYCLES: usize = 2;
    /// Frames put in the transmit ring; cycles to build and copy them in.
    pub const TX_FRAMES: usize = 3;
    pub const TX_CYCLES: usize = 4;
    /// `LABEL_TX` wakeups sent to `nicd` and their cycles (the send, and the switch to the
    /// higher-priority `nicd` and back, which runs it).
    pub const TX_WAKES: usize = 5;
    pub const TX_WAKE_CYCLES: usize = 6;
    pub const COUNT: usize = 7;
}

impl RingNic {
    fn bad_ring(&mut self, e: ring::BadIndices) {
        self.bad += 1;
        if self.bad == 1 {
            logf!("net: nicd: frame ring indices out of range (head {}, tail {}): frames ignored", e.head, e.tail);
        }
    }
}

impl Link for RingNic {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        use ring::*;
        let r = self.ring.as_ref()?;
        let (head, tail) = (r.read_u64(RX_HEAD), r.read_u64(RX_TAIL));
        let n = match pending(head, tail) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => {
                self.bad_ring(e);
                return None;
            }
        };
        let t = rdtsc();
        let s = slot(tail);
        let stamp = r.read_u64(RX_STAMP + s * 8);
        let len = frame_len(r.read_u64(RX_LEN + s * 8));
        let v = len.map(|len| {
            let mut v = alloc::vec![0u8; len];
            r.read(RX_SLOTS + s * SLOT_LEN, &mut v);
            v
        });
        // a bad length drops the frame (the slot is consumed either way: no stall)
        r.write_u64(RX_TAIL, tail.wrapping_add(1));
        let e = rdtsc();
        self.stats[nicstat::RX_FRAMES] += 1;
        self.stats[nicstat::RX_CYCLES] += e - t;
        if stamp != 0 && stamp < t {
            self.stats[nicstat::RX_WAIT_CYCLES] += t - stamp; // (nicd's stamp: figures only)
        }
        if n >= SLOTS {
            let _ = send(NICD, LABEL_TX, [0; 4]); // the ring was full: nicd waits for room
        }
        v
    }
    fn can_send(&self) -> bool {
        self.room() > 0
    }
    fn room(&self) -> usize {
        use ring::*;
        self.ring.as_ref().map_or(0, |r| room(r.read_u64(TX_HEAD), r.read_u64(TX_TAIL)).unwrap_or(0) as usize)
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        use ring::*;
        if len as u64 > SLOT_LEN || !self.can_send() {
            return; // dropped, as a full NIC queue would
        }
        let t = rdtsc();
        let mut frame = alloc::vec![0u8; len];
        f(&mut frame);
        let Some(r) = self.ring.as_ref() else { return };
        let head = r.read_u64(TX_HEAD);
        let s = slot(head);
        r.write(TX_SLOTS + s * SLOT_LEN, &frame);
        r.write_u64(TX_LEN + s * 8, len as u64);
        r.write_u64(TX_STAMP + s * 8, rdtsc());
        r.write_u64(TX_HEAD, head.wrapping_add(1));
        self.stats[nicstat::TX_FRAMES] += 1;
        self.stats[nicstat::TX_CYCLES] += rdtsc() - t;
        self.unflushed += 1;
        if self.wake_each {
            self.wake();
        }
    }
    /// Wake `nicd` for the frames queued this pass, only if it sleeps (it says so in the
    /// ring before it sleeps and looks at the ring again after: see `nicd`'s loop).
    fn flush(&mut self) {
        use ring::*;
        if self.unflushed == 0 {
            return;
        }
        let Some(r) = self.ring.as_ref() else { return };
        fence(Ordering::SeqCst); // our TX_HEAD before its flag
        if r.read_u64(TX_WAITING) != 0 {
            self.wake();
        }
        self.unflushed = 0;
    }
}

impl RingNic {
    fn wake(&mut self) {
        let t = rdtsc();
        let _ = send(NICD, ring::LABEL_TX, [0; 4]);
        self.stats[nicstat::TX_WAKES] += 1;
        self.stats[nicstat::TX_WAKE_CYCLES] += rdtsc() - t;
        self.unflushed = 0;
    }
}

struct Boot {
    cmdline: alloc::string::String,
    flags: u64,
    unix_at_origin: u64,
    cfg: [u64; 7],
    key: [u8; 32],
    identity_seed: [u8; 32],
    fabric_seed: [u8; 32],
    cluster: Vec<u8>,
    cpus: u64,
    mem_mib: u64,
}

fn boot() -> Option<Boot> {
    let mut b = alloc::vec![0u8; BOOT_MAX];
    let n = net(OP_BOOT, &mut b, 0).ok()? as usize;
    if n < BOOT_HEADER || get_u64(&b, 0) != 1 {
        return None;
    }
    let (cl, kl) = (get_u64(&b, 80) as usize, get_u64(&b, 88) as usize);
    let cluster = b.get(BOOT_HEADER + cl..BOOT_HEADER + cl + kl)?.to_vec();
    let arr = |o: usize| {
        let mut a = [0u8; 32];
        a.copy_from_slice(&b[o..o + 32]);
        a
    };
    let mut cfg = [0u64; 7];
    for (i, w) in cfg.iter_mut().enumerate() {
        *w = get_u64(&b, 24 + 8 * i);
    }
    let cmdline = alloc::string::String::from(core::str::from_utf8(b.get(BOOT_HEADER..BOOT_HEADER + cl)?).ok()?);
    Some(Boot { cmdline, flags: get_u64(&b, 8), unix_at_origin: get_u64(&b, 16), cfg, key: arr(96), identity_seed: arr(128), fabric_seed: arr(160), cluster, cpus: get_u64(&b, 192), mem_mib: get_u64(&b, 200) })
}

/// Socket requests kept while `netd` starts (one call per client task: bounded by clients).
const EARLY_MAX: usize = 64;

/// `reference` (`net.nic=reference`): the driver waits for the device after each frame.
fn configure_nicd(cfg: &[u64; 7], reference: bool) {
    let _ = send(NICD, ring::LABEL_CONFIG, [cfg[0], cfg[1], cfg[2], cfg[3]]);
    let flags = if reference { ring::CONFIG2_WAIT_EACH } else { 0 };
    let _ = send(NICD, ring::LABEL_CONFIG2, [cfg[4], cfg[5], cfg[6], flags]);
}

struct State {
    nic: RingNic,
    node: Node,
    rpc: Rpc,
    /// Our copy of the kernel's /128 → endpoint table (filled on demand with `OP_LOOKUP`).
    router: IpcRouter,
    cfg: [u64; 7],
    /// Where `nicd` said it lent us the ring (waiting for its `LABEL_UP`).
    shared: u64,
    test_panic: bool,
    logged: [u32; 4],
    /// The socket protocol's server.
    sockets: catenary_user::netsock_server::SocketServer,
    /// The microVM links.
    vms: vms::VmLinks,
    /// Waiting for the first wakeup (logged once).
    woken: bool,
    /// The NIC interrupts through MSI-X (else `nicd` polls).
    /// (read by the `net.ping` probe only)
    #[cfg_attr(not(feature = "probes"), allow(dead_code))]
    msix: bool,
    /// The cluster file as booted with (`LABEL_CLUSTER`), and its nodes' keys in file order.
    cluster_text: Vec<u8>,
    member_keys: Vec<[u8; 32]>,
    /// The NAT64 gateway's exchange with `natd` (netd/natgw.rs).
    natgw: natgw::NatGw,
    /// `LABEL_SEED`: the key its answers are hashed from (from the fabric seed), the calls so
    /// far, and the wall clock at the clock's origin.
    seed_key: [u8; 32],
    seeds_given: u64,
    /// `LABEL_ADMIT_PEER` calls refused for not coming from `orchd` (the first few are logged).
    admit_refused: u64,
    unix_at_origin: u64,
    /// Cycles and counts of `step` outside the stack ([`passstat`]), for the bench.
    pass: [u64; passstat::COUNT],
}

/// `State::pass` indices: cumulative TSC cycles and counts of netd's passes.
pub mod passstat {
    /// Passes; cycles in `Node::poll` (all calls).
    pub const PASSES: usize = 0;
    pub const POLL_CYCLES: usize = 1;
    /// Cycles in the fabric IPC pump (kernel records: `OP_REAP`, `OP_TAKE`…).
    pub const IPC_CYCLES: usize = 2;
    /// Cycles in the microVM links, the socket server and the NAT64 gateway.
    pub const OTHER_CYCLES: usize = 3;
    /// Yields after a busy pass and their cycles (others ran meanwhile).
    pub const YIELDS: usize = 4;
    pub const YIELD_CYCLES: usize = 5;
    /// Waits for a wakeup and their cycles (idle, or others ran).
    pub const WAITS: usize = 6;
    pub const WAIT_CYCLES: usize = 7;
    pub const COUNT: usize = 8;
}

/// A message on our endpoint: `nicd`'s reports, the kernel's wakeups, socket requests.
fn on_message(st: &mut State, m: Msg) {
    match m.label {
        ring::LABEL_HELLO => {
            logf!("net: a new nicd asks for its configuration");
            configure_nicd(&st.cfg, st.nic.wake_each);
        }
        ring::LABEL_SHARED => st.shared = m.words[0],
        ring::LABEL_UP => {
            if st.shared == 0 {
                logf!("net: nicd is up but did not lend its frame ring");
                return;
            }
            st.nic.ring = Grant::at(st.shared, ring::RING_PAGES * 4096);
            st.nic.bad = 0;
            logf!("net: nicd's frame ring is lent to netd at {:#x} ({} pages, SYS_SHARE): frames flow", st.shared, ring::RING_PAGES);
        }
        ring::LABEL_FAIL => logf!("net: nicd failed at step {}", m.words[0]),
        LABEL_CLUSTER if m.reply != 0 => cluster_file(st, m.reply),
        l if natgw::NatGw::is_request(l) => st.natgw.serve(&mut st.node, &m),
        LABEL_SELF if m.reply != 0 => {
            let _ = reply(m.reply, 0, catenary_cluster::service::key_words(&st.node.fabric().identity().public_key()));
        }
        // only orchd (from this node's committed Raft state) admits: any other caller's badge is refused
        LABEL_ADMIT_PEER | LABEL_REMOVE_PEER if m.reply != 0 && !catenary_manifest::is_from(catenary_manifest::SERVICES, "orchd", m.badge) => {
            st.admit_refused += 1;
            if st.admit_refused <= 4 {
                logf!("net: admission: a peer admission from badge {} (not orchd) refused", m.badge);
            }
            let _ = reply(m.reply, catenary_ipc::netd::ADMIT_NOT_ORCHD, [0; 4]);
        }
        LABEL_ADMIT_PEER if m.reply != 0 => {
            let key = catenary_cluster::service::words_key(m.words);
            let label = match st.node.admit_peer(key, now_ns()) {
                Ok(_) => 0,
                Err(e) => {
                    logf!("net: admission: key {} not taken as a peer: {}", catenary_net::cluster::hex_encode(&key), e);
                    ADMIT_REFUSED
                }
            };
            let _ = reply(m.reply, label, [0; 4]);
        }
        LABEL_REMOVE_PEER if m.reply != 0 => {
            let key = catenary_cluster::service::words_key(m.words);
            let label = match st.node.remove_peer(key) {
                Ok(_) => 0,
                Err(e) => {
                    logf!("net: admission: key {} not removed: {}", catenary_net::cluster::hex_encode(&key), e);
                    ADMIT_REFUSED
                }
            };
            let _ = reply(m.reply, label, [0; 4]);
        }
        LABEL_ADMISSION if m.reply != 0 => {
            let b = catenary_net::admission::encode_table(&st.node.admission_rows(now_ns()));
            let (label, words) = match grant_of(m.reply) {
                Some(g) if g.writable() && g.len() as usize >= b.len() => {
                    g.write(0, &b);
                    (0, [b.len() as u64, ((b.len() - catenary_net::admission::TABLE_HEADER) / catenary_net::admission::TABLE_ROW) as u64, 0, 0])
                }
                Some(g) if g.writable() => (CLUSTER_TOO_SMALL, [b.len() as u64, 0, 0, 0]),
                _ => (CLUSTER_NO_GRANT, [0; 4]),
            };
            let _ = reply(m.reply, label, words);
        }
        LABEL_SEED if m.reply != 0 => {
            st.seeds_given += 1;
            let now = now_ns();
            let h = netfabric::crypto::hash(&[b"catenary netd seed answer", &st.seed_key, &st.seeds_given.to_le_bytes(), &now.to_le_bytes()]);
            let seed = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
            let _ = reply(m.reply, 0, [seed, st.unix_at_origin + now / 1_000_000_000, 0, 0]);
        }
        l if catenary_netsock::is_request(l) && m.reply != 0 => st.sockets.serve(&mut st.node, m.reply, m.label, m.words),
        _ => {} // wakeups (frames, the kernel's notification)
    }
}

/// `LABEL_CLUSTER`: copy the cluster file into the caller's writable grant; say which nodes
/// are up (this one, or a peer with an established session).
fn cluster_file(st: &State, token: u64) {
    let (label, words) = match grant_of(token) {
        Some(g) if g.writable() && g.len() as usize >= st.cluster_text.len() => {
            g.write(0, &st.cluster_text);
            let mut up = 0u64;
            for (i, k) in st.member_keys.iter().enumerate().take(64) {
                let own = netfabric::identity::Prefix64::from_public_key(k).node_address() == st.node.fabric_addr;
                if own || st.node.peers.iter().any(|p| p.public_key == *k && p.established) {
                    up |= 1 << i;
                }
            }
            (0, [st.cluster_text.len() as u64, up, st.member_keys.len() as u64, 0])
        }
        Some(g) if g.writable() => (CLUSTER_TOO_SMALL, [st.cluster_text.len() as u64, 0, 0, 0]),
        _ => (CLUSTER_NO_GRANT, [0; 4]),
    };
    let _ = reply(token, label, words);
}

/// Hand a call or send from another node to its local endpoint (through the kernel).
fn deliver(d: Delivery, test_panic: bool, logged: &mut u32) -> Outcome {
    let (rec_to, from, inc, call_id, body) = match d {
        Delivery::Call { ticket, body, .. } => (ticket.to, ticket.from, ticket.inc, ticket.call_id, body),
        Delivery::Send { from, to, body, .. } => (to, from, 0, 0, body),
    };
    if cfg!(feature = "probes") && test_panic && body.label == TEST_PANIC_LABEL {
        logf!("net: TEST ONLY: a fabric IPC message from {} carries the test panic label: netd panics", from);
        panic!("netd: test panic message");
    }
    let mut rec = [0u8; RECORD];
    put_addr(&mut rec, 0, &rec_to.octets());
    put_addr(&mut rec, 16, &from.octets());
    put_u64(&mut rec, 32, inc);
    put_u64(&mut rec, 40, call_id);
    put_u64(&mut rec, 48, body.label);
    for (i, w) in body.words.iter().enumerate() {
        put_u64(&mut rec, 56 + 8 * i, *w);
    }
    let r = net(OP_DELIVER, &mut rec, 0);
    if *logged < 8 {
        *logged += 1;
        match r {
            Ok(ep) => logf!("net: ipc: {} from {} to {} -> endpoint {}: delivered", if call_id != 0 { "call" } else { "send" }, from, rec_to, ep),
            Err(_) => logf!("net: ipc: {} from {} to {}: refused", if call_id != 0 { "call" } else { "send" }, from, rec_to),
        }
    }
    match r {
        Ok(_) => Outcome::Delivered,
        Err(c) if c == IpcError::QueueFull.code() => Outcome::Busy,
        Err(c) => Outcome::Failed(c),
    }
}

fn complete(token: u64, from: Ipv6Addr, result: Result<Body, u64>) {
    let mut rec = [0u8; RECORD];
    put_addr(&mut rec, 0, &from.octets());
    match result {
        Ok(b) => {
            put_u64(&mut rec, 16, 1);
            put_u64(&mut rec, 24, b.label);
            for (i, w) in b.words.iter().enumerate() {
                put_u64(&mut rec, 32 + 8 * i, *w);
            }
        }
        Err(code) => put_u64(&mut rec, 24, code),
    }
    let _ = net(OP_COMPLETE, &mut rec, token);
}

/// Decode with our copy of the routing table, asking the kernel's for a /128 it lacks.
fn decode(router: &mut IpcRouter, p: &[u8]) -> Result<Frame, RouteError> {
    match router.decode(p) {
        Err(RouteError::Unbound(a)) => {
            let mut rec = [0u8; 16];
            put_addr(&mut rec, 0, &a.octets());
            match net(OP_LOOKUP, &mut rec, 0) {
                Ok(ep) if router.adopt_binding(a, ep) => router.decode(p),
                _ => Err(RouteError::Unbound(a)),
            }
        }
        r => r,
    }
}

/// Fabric IPC: the kernel's remote sends and calls out, answers out, inbound frames
/// delivered, retransmissions. Returns whether anything happened.
fn ipc_pump(st: &mut State) -> bool {
    let now = now_ns();
    let reaped = net(OP_REAP, &mut [], 0);
    // a probe asked for the reliability counters (only the probes kernel ever does)
    #[cfg(not(feature = "probes"))]
    let _ = reaped;
    #[cfg(feature = "probes")]
    if reaped == Ok(REAP_REPORT) {
        // (two lines: a log line is at most 200 bytes)
        let c = &st.rpc.counters;
        logf!("net: ipc: reliability counters retransmits: {}, dup_running: {}, dup_replayed: {}, datagrams dropped by net.test-loss {}",
            c.retransmits, c.dup_running, c.dup_replayed, st.node.counters.test_dropped);
        logf!("net: ipc: more counters calls_out: {}, sends_out: {}, calls_given_up: {}, sends_lost: {}, stale_calls: {}, over_quota: {}, dup_sends: {}, held_sends: {}, busy: {}, stale_answers: {}",
            c.calls_out, c.sends_out, c.calls_given_up, c.sends_lost, c.stale_calls, c.over_quota, c.dup_sends, c.held_sends, c.busy, c.stale_answers);
    }
    let over_quota = st.rpc.counters.over_quota;
    let mut tx: Vec<Frame> = Vec::new();
    let mut active = false;
    let node_addr = st.node.fabric_addr;
    for _ in 0..TAKE_PER_PASS {
        let mut rec = [0u8; RECORD];
        match net(OP_TAKE, &mut rec, 0) {
            Ok(TAKE_OUT) => {
                active = true;
                let src = get_addr(&rec, 8);
                let src = if src == [0; 16] { node_addr } else { Ipv6Addr::from(src) };
                let dst = Ipv6Addr::from(get_addr(&rec, 24));
                let endpoint = get_u64(&rec, 40);
                let body = Body { label: get_u64(&rec, 48), words: [get_u64(&rec, 56), get_u64(&rec, 64), get_u64(&rec, 72), get_u64(&rec, 80)] };
                let token = get_u64(&rec, 88);
                let sent = if token != 0 {
                    match st.rpc.start_call(now, src, dst, endpoint, token, body) {
                        Some(f) => f.packet().is_some_and(|p| st.node.send_ipc(&p, now)),
                        None => false,
                    }
                } else {
                    match st.rpc.send(now, src, dst, endpoint, body) {
                        Ok(Some(f)) => f.packet().is_some_and(|p| st.node.send_ipc(&p, now)),
                        Ok(None) => true,
                        Err(_) => continue,
                    }
                };
                if st.logged[0] < 8 {
                    st.logged[0] += 1;
                    logf!("net: ipc: {} to {} {}", if token != 0 { "call" } else { "send" }, dst, if sent { "forwarded over the fabric" } else { "unreachable" });
                }
                if !sent && token != 0 {
                    st.rpc.cancel_call(token);
                    complete(token, dst, Err(IpcError::Unreachable.code()));
                }
            }
            Ok(TAKE_REPLY) => {
                active = true;
                let ticket = Ticket { from: Ipv6Addr::from(get_addr(&rec, 8)), to: Ipv6Addr::from(get_addr(&rec, 24)), inc: get_u64(&rec, 40), call_id: get_u64(&rec, 48) };
                let answer = if get_u64(&rec, 56) == 1 {
                    Ok(Body { label: get_u64(&rec, 64), words: [get_u64(&rec, 72), get_u64(&rec, 80), get_u64(&rec, 88), get_u64(&rec, 96)] })
                } else {
                    Err(get_u64(&rec, 64))
                };
                tx.push(st.rpc.answer(now, ticket, answer));
            }
            _ => break,
        }
    }
    while let Some(p) = st.node.take_ipc() {
        active = true;
        match decode(&mut st.router, &p) {
            Ok(f) => {
                let (test_panic, logged) = (st.test_panic, &mut st.logged[1]);
                let router = &mut st.router;
                let (out, done) = st.rpc.inbound(now, f, &mut |d| {
                    let to = match &d {
                        Delivery::Call { ticket, .. } => ticket.to,
                        Delivery::Send { to, .. } => *to,
                    };
                    let o = deliver(d, test_panic, logged);
                    if o == Outcome::Failed(IpcError::DeadPeer.code()) || o == Outcome::Failed(IpcError::NoEndpoint.code()) {
                        router.unbind(&to); // our copy: asked again next time
                    }
                    o
                });
                tx.extend(out);
                if let Some(c) = done {
                    complete(c.call_id, c.from, c.result);
                }
            }
            Err(e) => {
                if let RouteError::Unbound(a) = e {
                    if st.logged[2] < 8 {
                        st.logged[2] += 1;
                        logf!("net: ipc: dropped a frame to unbound {} (dropped to unbound /128s: {})", a, st.router.counters.dropped_unbound);
                    }
                } else if st.logged[3] < 8 {
                    st.logged[3] += 1;
                    logf!("net: ipc: refused a frame: {:?} (refused: {})", e, st.router.counters.dropped_malformed);
                }
                if let Some(f) = IpcRouter::refusal(&p, IpcError::NoEndpoint.code()) {
                    tx.push(f);
                }
            }
        }
    }
    if st.rpc.counters.over_quota > over_quota && st.logged[3] < 8 {
        st.logged[3] += 1;
        logf!("net: ipc: refused calls over the quota of {} in flight per source (over quota: {})",
            catenary_net::ipcroute::CALLS_PER_SOURCE, st.rpc.counters.over_quota);
    }
    tx.extend(st.rpc.poll(now, |t| net(OP_WAITING, &mut [], t) == Ok(1)));
    active |= !tx.is_empty();
    for f in tx {
        if let Some(p) = f.packet() {
            st.node.send_ipc(&p, now);
        }
    }
    active
}

fn run(arg: u64) -> u64 {
    if !dma::init_mapped(HEAP_PAGES) {
        log("netd: no heap (memory quota)");
        return 1;
    }
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
    let Some(b) = boot() else {
        log("netd: no boot data from the kernel (networking off, or no router capability)");
        return 2;
    };
    // `net.nic=reference`: the ring and driver as they were before batching (the bench's
    // reference): nicd woken after every frame, and it waits for the device after each
    let wake_each = cmdline_arg(&b.cmdline, "net.nic") == Some("reference");
    if wake_each {
        log("net: net.nic=reference: nicd is woken after every frame and waits for the device after each (the bench's reference)");
    }
    // nicd: its configuration (a running nicd lends us its ring again), then its ring
    configure_nicd(&b.cfg, wake_each);
    let mut nic = RingNic { ring: None, mac: [0; 6], bad: 0, unflushed: 0, wake_each, stats: [0; nicstat::COUNT] };
    let mut shared = 0;
    // socket requests that reach the endpoint before we serve (calls made while no netd ran
    // wait on it): kept and served once we do, never dropped unanswered (the caller would
    // wait forever); beyond EARLY_MAX, WouldBlock
    let mut early: Vec<Msg> = Vec::new();
    let t0 = now_ns();
    while nic.ring.is_none() {
        if now_ns() - t0 > 10_000_000_000 {
            log("netd: nicd did not lend its frame ring in 10 s");
            return 3;
        }
        let Ok(m) = recv(OWN, 1_000_000_000) else {
            configure_nicd(&b.cfg, wake_each);
            continue;
        };
        match m.label {
            ring::LABEL_SHARED => shared = m.words[0],
            ring::LABEL_UP if shared != 0 => {
                nic.ring = Grant::at(shared, ring::RING_PAGES * 4096);
                nic.mac.copy_from_slice(&m.words[1].to_le_bytes()[..6]);
            }
            ring::LABEL_HELLO => configure_nicd(&b.cfg, wake_each),
            ring::LABEL_FAIL => {
                logf!("netd: nicd failed at step {}", m.words[0]);
                return 4;
            }
            // a client's call before the stack is up: answered (ask again), never dropped
            LABEL_CLUSTER | LABEL_SEED | LABEL_SELF | LABEL_ADMIT_PEER | LABEL_REMOVE_PEER | LABEL_ADMISSION if m.reply != 0 => {
                let _ = reply(m.reply, CLUSTER_NOT_READY, [0; 4]);
            }
            l if natgw::NatGw::is_request(l) && m.reply != 0 => {
                let _ = reply(m.reply, catenary_ipc::natgw::ERR_NOT_READY, [0; 4]);
            }
            l if catenary_netsock::is_request(l) && m.reply != 0 => {
                if early.len() < EARLY_MAX {
                    early.push(m);
                } else {
                    let _ = reply(m.reply, catenary_netsock::NetError::WouldBlock.code(), [0; 4]);
                }
            }
            _ => {}
        }
    }
    logf!("net: netd (ring 3): nicd lent its frame ring at {:#x} ({} pages); MAC {:02x?}{}", nic.ring.as_ref().map_or(0, |g| g.addr()), ring::RING_PAGES, nic.mac,
        if b.flags & BOOT_MSIX != 0 { ", MSI-X receive interrupt" } else { "" });
    let identity = if b.flags & BOOT_GENERATED != 0 {
        let id = Identity::from_secret_bytes(b.key);
        // two lines: a log record holds at most 128 bytes
        logf!("net: identity: generated at boot from hardware entropy (no node.key); public key {}", catenary_net::cluster::hex_encode(&id.public_key()));
        logf!("net: hardware: {} CPUs, {} MiB of memory, NIC MAC {}", b.cpus, b.mem_mib, mac_text(&nic.mac));
        id
    } else if b.flags & BOOT_KEY != 0 {
        logf!("net: identity: the node key from the boot module");
        Identity::from_secret_bytes(b.key)
    } else {
        logf!("net: no node key: using a random identity");
        Identity::from_secret_bytes(b.identity_seed)
    };
    let cluster_text = b.cluster.clone();
    let cluster = if b.cluster.is_empty() {
        Cluster::default()
    } else {
        match core::str::from_utf8(&b.cluster).map_err(|_| alloc::string::String::from("not UTF-8")).and_then(|t| Cluster::parse(t).map_err(|e| alloc::format!("{e}"))) {
            Ok(c) => c,
            Err(e) => {
                logf!("net: cluster file rejected ({}): no peers", e);
                Cluster::default()
            }
        }
    };
    let member_keys: Vec<[u8; 32]> = cluster.members.iter().map(|m| m.public_key).collect();
    let now = now_ns();
    let h = netfabric::crypto::hash(&[b"catenary fabric ipc incarnation", &b.fabric_seed]);
    let incarnation = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]) | 1;
    let own_key = identity.public_key();
    let listed = cluster.members.iter().any(|m| m.public_key == own_key);
    let mut node = Node::new(&mut nic, NodeConfig { identity, cluster, unix_time_at_origin: b.unix_at_origin, rng_seed: b.fabric_seed }, now);
    if !listed && !member_keys.is_empty() {
        // In no cluster file (a netbooted node): hello to the seeds until the cluster admits us.
        node.enable_hello(b.cpus.min(u16::MAX as u64) as u16, b.mem_mib.min(u32::MAX as u64) as u32);
        logf!("net: admission: this node's key is in no cluster file: saying hello to {} seed(s) every {} s until an admin admits it", member_keys.len(), catenary_net::admission::HELLO_PERIOD_NS / 1_000_000_000);
    }
    // The fabric's ChaCha20-Poly1305 code, by measurement unless `net.cipher=` names one
    // (docs/networking.md §6): before connect_all, so every session gets it.
    let force = cmdline_arg(&b.cmdline, "net.cipher").and_then(|v| {
        let r = Node::parse_cipher_word(v);
        if r.is_none() {
            logf!("net: net.cipher={:?} refused (vector or portable): measuring instead", v);
        }
        r
    });
    if node.choose_cipher(rdtsc, force).is_err() {
        // a node whose every cipher code is wrong must not seal a packet: stop loudly (the
        // supervisor logs it and restarts netd, which checks again)
        panic!("netd: no ChaCha20-Poly1305 code gives RFC 8439's known answer on this CPU");
    }
    #[cfg(feature = "probes")]
    if let Some(pct) = cmdline_arg(&b.cmdline, "net.test-loss") {
        match pct.parse::<u64>() {
            Ok(p) if (1..=90).contains(&p) => {
                logf!("net: TEST ONLY: net.test-loss={}: dropping {}% of fabric IPC datagrams in each direction", p, p);
                node.set_test_loss(p, u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]));
            }
            _ => logf!("net: net.test-loss={:?} refused (a test-only switch: 1..=90 percent)", pct),
        }
    }
    node.set_stage_clock(Some(rdtsc));
    let rpc = Rpc::new(node.fabric_addr, incarnation);
    node.connect_all(now);
    let mut a = [0u8; 16];
    put_addr(&mut a, 0, &node.fabric_addr.octets());
    if let Err(e) = net(OP_UP, &mut a, 0) {
        logf!("netd: the kernel refused our fabric address {} (error {})", node.fabric_addr, e);
        return 5;
    }
    logf!("net: netd (ring 3) routes fabric IPC for {}; the kernel forwards remote sends and calls to it", node.fabric_addr);
    // (the node kernel never sets bit 0; without the feature `probes` it means nothing)
    let test_panic = cfg!(feature = "probes") && arg & 1 != 0;
    #[cfg(feature = "probes")]
    if test_panic {
        logf!("net: TEST ONLY: netd.test_panic=1: a fabric IPC message with label {:#x} makes this netd panic", TEST_PANIC_LABEL);
    }
    let natgw = natgw::NatGw::new(&mut node, &b.cmdline);
    let router = IpcRouter::new(node.fabric_addr);
    let msix = b.flags & BOOT_MSIX != 0;
    let epoch = (arg >> 8).max(1);
    logf!("net: sockets: this netd is start {}: its socket handles carry epoch {}", arg >> 8, epoch);
    let mut st = State { nic, node, rpc, router, cfg: b.cfg, shared, test_panic, logged: [0; 4],
        sockets: catenary_user::netsock_server::SocketServer::new(ROUTER, epoch), vms: vms::VmLinks::new(), woken: false, msix, cluster_text, member_keys, natgw,
        seed_key: netfabric::crypto::hash(&[b"catenary netd seed key", &b.fabric_seed]), seeds_given: 0, admit_refused: 0, unix_at_origin: b.unix_at_origin,
        pass: [0; passstat::COUNT] };
    if !early.is_empty() {
        logf!("net: sockets: serving {} request(s) that came before this netd was up", early.len());
    }
    for m in early {
        on_message(&mut st, m);
    }
    // the command line's probes (tests, benchmarks): once per boot, not per restart
    #[cfg(feature = "probes")]
    if b.flags & BOOT_FIRST != 0 {
        probes::run(&mut st, &b.cmdline);
    }
    loop {
        // A pass waits at most IDLE_WAKE_NS: a netd whose passes stopped is hung, and is
        // restarted (its sockets' owners see `Restarted`).
        let _ = alive(HEARTBEAT_MS);
        step(&mut st);
    }
}

/// One pass: the stack, fabric IPC, the microVM links; then, if nothing happened, wait for
/// a wakeup (frames from `nicd`, the kernel's notification, a socket request) or the stack's
/// next timer. A wakeup that came during the pass is pending: the wait returns at once.
fn step(st: &mut State) -> bool {
    use passstat::*;
    let t0 = rdtsc();
    let now = now_ns();
    let mut active = st.node.poll(&mut st.nic, now);
    let t1 = rdtsc();
    let mut poll = t1 - t0;
    let ipc = ipc_pump(st);
    let t2 = rdtsc();
    let ipc_cycles = t2 - t1;
    if ipc {
        active = true;
        st.node.poll(&mut st.nic, now_ns());
        poll += rdtsc() - t2;
    }
    let t3 = rdtsc();
    if st.vms.pump(&mut st.node, now_ns()) {
        active = true;
        st.node.poll(&mut st.nic, now_ns());
        st.vms.pump(&mut st.node, now_ns());
    }
    st.sockets.poll(&mut st.node, now_ns());
    st.natgw.poll(&mut st.node);
    let t4 = rdtsc();
    st.pass[PASSES] += 1;
    st.pass[POLL_CYCLES] += poll;
    st.pass[IPC_CYCLES] += ipc_cycles;
    st.pass[OTHER_CYCLES] += t4 - t3;
    if active {
        yield_now();
        st.pass[YIELDS] += 1;
        st.pass[YIELD_CYCLES] += rdtsc() - t4;
    } else {
        let m = recv(OWN, IDLE_WAKE_NS);
        st.pass[WAITS] += 1;
        st.pass[WAIT_CYCLES] += rdtsc() - t4;
        if let Ok(m) = m {
            if !st.woken && m.label == ring::LABEL_RX {
                st.woken = true;
                logf!("net: virtio-net: frames from nicd woke netd");
            }
            on_message(st, m);
        }
    }
    active
}

fn mac_text(m: &[u8; 6]) -> alloc::string::String {
    alloc::format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}
