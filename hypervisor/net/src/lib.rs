//! # catenary-net — a node's network stack
//!
//! `#![no_std]` + `alloc`, `#![forbid(unsafe_code)]`, driven by the caller's clock and an
//! Ethernet [`Link`] (the kernel's virtio-net driver, or an in-memory wire in the host tests).
//!
//! Two smoltcp interfaces, IPv6 only:
//!
//! * **underlay** (`Medium::Ethernet`): the link-local address from the MAC (modified EUI-64),
//!   SLAAC (router solicitations; router advertisements add addresses and a default route
//!   where a router exists), NDP (smoltcp answers neighbour solicitations), ICMPv6 echo
//!   replies, and the UDP sockets that carry the fabric sessions (port 51820: one receives,
//!   one per destination sends, so an unreachable peer delays no other; [`underlay_tx`]);
//! * **fabric** (`Medium::Ip`): the node's fabric address `prefix::1` (derived from its key).
//!   IP packets it emits go to [`netfabric::Device::send`] (cryptokey routing picks the peer by
//!   its /64) and leave encrypted through the underlay UDP socket; decrypted packets whose
//!   destination lies in the node's /64 are fed back into it.
//!
//! Peers come from the [`cluster::Cluster`] file; a key that is not listed gets no session.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cluster;
pub mod ipcroute;
pub mod rpc;
pub mod vmlink;
pub mod entropy;
pub mod walltime;
pub mod nodekey;
mod underlay_tx;
pub mod sockets;
pub mod tcp;
pub mod nat64route;
pub mod stages;
pub mod hello;
pub mod admission;
/// Entry points shared by the cargo-fuzz target (`hypervisor/net/fuzz`) and the host tests.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use log::{debug, error, info, warn};
use netfabric::{Device as Fabric, Event, Identity, Instant as FInstant, PeerConfig, PeerId};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, Icmpv6Packet, Icmpv6Repr, IpAddress, IpCidr, IpEndpoint};

pub use cluster::{Cluster, Member};

/// The bytes the probes put in every echo payload: a capture of the wire must show them for
/// underlay pings and never for fabric pings.
pub const PLAINTEXT_MARKER: &[u8] = b"CATENARY-PLAINTEXT-MARKER";
/// UDP port of the throughput responder (both interfaces).
pub const BENCH_PORT: u16 = 5001;
const MTU: usize = 1500;
/// Room for the fabric's overhead (IPv6 40 + UDP 8 + transport header 16 + tag 16 + padding).
/// The largest IPv6 packet the fabric carries: bigger ones from a microVM are answered with
/// an ICMPv6 Packet Too Big naming this MTU.
pub const FABRIC_MTU: usize = MTU - 96;

/// An Ethernet link: the NIC driver implements this.
pub trait Link {
    fn mac(&self) -> [u8; 6];
    /// Copy out the next received frame, if any.
    fn recv(&mut self) -> Option<Vec<u8>>;
    fn can_send(&self) -> bool;
    /// How many frames could be sent now, if the driver knows (its queue's free slots).
    fn room(&self) -> usize {
        if self.can_send() {
            usize::MAX
        } else {
            0
        }
    }
    /// Send a frame of `len` bytes that `f` fills in place (in the driver's TX buffer).
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8]));
    /// The frames sent so far may go: a driver that batches wakes its device side here
    /// ([`Node::poll`] calls it once at the end of a pass).
    fn flush(&mut self) {}
}

struct EthDev<'a, L: Link>(&'a mut L);
struct EthRx(Vec<u8>);
struct EthTx<'a, L: Link>(&'a mut L);

impl phy::RxToken for EthRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl<L: Link> phy::TxToken for EthTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let mut r = None;
        self.0.send(len, &mut |buf| r = Some((f.take().unwrap())(buf)));
        match r {
            Some(r) => r,
            // the driver could not take it: build it anyway and drop it (counted as lost)
            None => (f.take().unwrap())(&mut vec![0u8; len]),
        }
    }
}
impl<L: Link> phy::Device for EthDev<'_, L> {
    type RxToken<'a> = EthRx where Self: 'a;
    type TxToken<'a> = EthTx<'a, L> where Self: 'a;
    fn receive(&mut self, _t: SInstant) -> Option<(EthRx, EthTx<'_, L>)> {
        let f = self.0.recv()?;
        Some((EthRx(f), EthTx(&mut *self.0)))
    }
    fn transmit(&mut self, _t: SInstant) -> Option<EthTx<'_, L>> {
        if self.0.can_send() {
            Some(EthTx(&mut *self.0))
        } else {
            None
        }
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU + 14;
        c.max_burst_size = Some(32);
        c
    }
}

/// The fabric interface's device: IP packets in and out through queues.
#[derive(Default)]
struct TunDev {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    /// Packets it may still emit this pass: the link's room (set by `Node::poll`), so that
    /// a full NIC holds datagrams in the fabric sockets (the sender waits) instead of the
    /// underlay queues dropping them.
    budget: usize,
}
struct TunRx(Vec<u8>);
struct TunTx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for TunRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for TunTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl phy::Device for TunDev {
    type RxToken<'a> = TunRx;
    type TxToken<'a> = TunTx<'a>;
    fn receive(&mut self, _t: SInstant) -> Option<(TunRx, TunTx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((TunRx(p), TunTx(&mut self.tx)))
    }
    fn transmit(&mut self, _t: SInstant) -> Option<TunTx<'_>> {
        if self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        Some(TunTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = FABRIC_MTU;
        let mut cs = ChecksumCapabilities::default();
        cs.ipv4 = Checksum::Both;
        c.checksum = cs;
        c
    }
}

/// Which interface a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Encrypted, between fabric addresses.
    Fabric,
    /// Plain IPv6 on the link, between link-local addresses.
    Underlay,
}

#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub id: PeerId,
    pub public_key: [u8; 32],
    pub fabric_addr: Ipv6Addr,
    pub underlay: Ipv6Addr,
    pub established: bool,
    /// An operator's workstation: no fixed endpoint (learned from its handshake), never
    /// initiated to by the node.
    pub operator: bool,
}

/// Results of a ping run.
#[derive(Clone, Debug, Default)]
pub struct PingReport {
    pub sent: u32,
    pub received: u32,
    pub rtts_ns: Vec<u64>,
}

impl PingReport {
    pub fn median_ns(&self) -> u64 {
        let mut v = self.rtts_ns.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }
}

struct PingRun {
    path: Path,
    dst: Ipv6Addr,
    count: u32,
    payload: Vec<u8>,
    next_seq: u16,
    inflight: Option<(u16, u64)>,
    next_at: u64,
    interval_ns: u64,
    report: PingReport,
    done: bool,
}

/// Throughput run: `total` bytes in datagrams of `dgram` bytes to the peer's responder.
struct StreamRun {
    path: Path,
    dst: Ipv6Addr,
    id: u32,
    dgram: usize,
    total: u64,
    sent: u64,
    start: u64,
    end_sent_at: u64,
    result: Option<(u64, u64)>, // (bytes delivered, ns)
}

/// Counters the kernel prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetCounters {
    pub fabric_in: u64,
    pub fabric_out: u64,
    pub fabric_no_route: u64,
    pub not_for_us: u64,
    /// Fabric IPC packets (UDP 51900 to a /128 of our /64) dropped because the queue to
    /// `netd`'s router was full.
    pub ipc_queue_full: u64,
    /// Fabric IPC datagrams dropped on purpose ([`Node::set_test_loss`]; tests only).
    pub test_dropped: u64,
    /// Packets routed to a microVM /128 of this node's /64.
    pub vm_in: u64,
    /// Packets from microVMs routed (fabric or this node).
    pub vm_out: u64,
    /// Packets for microVMs dropped because their queue was full.
    pub vm_queue_full: u64,
    /// Fabric IPC packets (UDP 51900) from microVMs that may not use IPC (dropped).
    pub vm_ipc_blocked: u64,
    /// Packets from microVMs larger than the fabric MTU, answered with Packet Too Big.
    pub vm_too_big: u64,
    /// Fabric datagrams dropped because their destination's underlay queue was full (its
    /// neighbour does not resolve: a node that is down).
    pub underlay_queue_full: u64,
    /// Packets for the fabric interface dropped because its queue was full.
    pub tun_queue_full: u64,
}

/// Packets waiting for the microVMs, at most.
const VM_QUEUE: usize = 256;

/// Fabric IPC packets waiting for the router, at most.
const IPC_QUEUE: usize = 256;
/// Packets waiting for the fabric interface, at most.
const TUN_QUEUE: usize = 512;

pub struct Node {
    pub name: String,
    pub link_local: Ipv6Addr,
    pub fabric_addr: Ipv6Addr,
    pub mac: [u8; 6],
    pub port: u16,
    pub peers: Vec<Peer>,
    pub counters: NetCounters,
    eth: Interface,
    eth_sockets: SocketSet<'static>,
    tun: Interface,
    tun_sockets: SocketSet<'static>,
    tun_dev: TunDev,
    fabric: Fabric,
    fab_udp: SocketHandle,
    underlay_tx: underlay_tx::UnderlayTx,
    ping_eth: SocketHandle,
    ping_tun: SocketHandle,
    bench_eth: SocketHandle,
    bench_tun: SocketHandle,
    responder: (u32, u64),
    ping: Option<PingRun>,
    stream: Option<StreamRun>,
    logged_drops: u32,
    ipc_rx: VecDeque<Vec<u8>>,
    /// The microVM /128s of this node's /64 it routes (to `take_vm_packet`).
    vm_routes: Vec<Ipv6Addr>,
    vm_rx: VecDeque<Vec<u8>>,
    /// Induced loss of fabric IPC datagrams (tests only): percent and the dice's state.
    test_loss: Option<(u64, u64)>,
    /// Task /128s of this node's /64 with client sockets on them (`tcp::add_socket_addr`):
    /// how many sockets each.
    socket_addrs: alloc::collections::BTreeMap<Ipv6Addr, u32>,
    /// The latest RSTs that reached the fabric interface (tcp.rs: tells a reset connection
    /// from one that timed out), at most [`tcp::RSTS_KEPT`].
    tcp_rsts: VecDeque<(tcp::TcpTuple, u64)>,
    /// The time of the current (or last) [`Node::poll`].
    poll_ns: u64,
    /// The NAT64 prefix's route (`nat64route.rs`).
    nat64: nat64route::Nat64Route,
    pub nat64_counters: nat64route::Nat64Counters,
    /// Cycles per stage of the packet path (counted only with a clock: `set_stage_clock`).
    stages: stages::Stages,
    /// Peers admitted at run time, pending nodes, hellos (`admission.rs`).
    pub admission: admission::Admission,
}

fn sinstant(ns: u64) -> SInstant {
    SInstant::from_micros((ns / 1000) as i64)
}

fn udp_socket(packets: usize, bytes: usize) -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; packets], vec![0u8; bytes]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; packets], vec![0u8; bytes]),
    )
}

fn icmp_socket() -> icmp::Socket<'static> {
    icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0u8; 8 * 1600]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0u8; 8 * 1600]),
    )
}

/// How a node is configured.
pub struct NodeConfig {
    pub identity: Identity,
    pub cluster: Cluster,
    /// Seconds since the Unix epoch at `now_ns = 0` (for TAI64N).
    pub unix_time_at_origin: u64,
    /// Seed of the fabric's CSPRNG (`entropy::derive(..).fabric`); the IP stack's seed is
    /// derived from it under its own label.
    pub rng_seed: [u8; 32],
}

const ICMP_IDENT: u16 = 0xca7e;

impl Node {
    pub fn new<L: Link>(link: &mut L, cfg: NodeConfig, now_ns: u64) -> Node {
        let mac = link.mac();
        let link_local = cluster::link_local_from_mac(mac);
        let me = cfg.cluster.by_key(&cfg.identity.public_key()).cloned();
        let name = me.as_ref().map(|m| m.name.clone()).unwrap_or_else(|| String::from("(not in cluster)"));
        let port = me.as_ref().map(|m| m.port).unwrap_or(cluster::FABRIC_PORT);
        let fabric_addr = cfg.identity.node_address();

        let mut ec = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // The stack's seed shows in what it sends (ports): never the fabric RNG's key itself.
        let stack_seed = entropy::subseed(entropy::LABEL_STACK, &cfg.rng_seed);
        let seed = u64::from_le_bytes([stack_seed[0], stack_seed[1], stack_seed[2], stack_seed[3], stack_seed[4], stack_seed[5], stack_seed[6], stack_seed[7]]);
        ec.random_seed = seed;
        ec.slaac = true;
        let mut eth = Interface::new(ec, &mut EthDev(link), sinstant(now_ns));
        eth.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(link_local), 64));
        });
        let mut tun_dev = TunDev::default();
        let mut tc = Config::new(HardwareAddress::Ip);
        tc.random_seed = seed ^ 1;
        let mut tun = Interface::new(tc, &mut tun_dev, sinstant(now_ns));
        // Everything in fd00::/8 (all fabric prefixes) is "on link" for the fabric interface:
        // the netfabric routing table decides which peer, if any, gets a packet.
        tun.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(fabric_addr), 8));
        });
        // Client sockets bind task /128s too (`tcp`, `sockets`): the interface takes packets
        // for any address; `fabric_output` hands it only those for the node's /128 and for
        // task /128s with sockets on them.
        tun.set_any_ip(true);

        let mut eth_sockets = SocketSet::new(vec![]);
        // Receives only: datagrams leave through `underlay_tx`'s sockets.
        let mut fab = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0u8; 256 * 1600]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 0]),
        );
        fab.bind(port).expect("bind fabric port");
        let fab_udp = eth_sockets.add(fab);
        let mut pe = icmp_socket();
        pe.bind(icmp::Endpoint::Ident(ICMP_IDENT)).unwrap();
        let ping_eth = eth_sockets.add(pe);
        let mut be = udp_socket(128, 128 * 1600);
        be.bind(BENCH_PORT).unwrap();
        let bench_eth = eth_sockets.add(be);
        let mut tun_sockets = SocketSet::new(vec![]);
        let mut pt = icmp_socket();
        pt.bind(icmp::Endpoint::Ident(ICMP_IDENT)).unwrap();
        let ping_tun = tun_sockets.add(pt);
        let mut bt = udp_socket(128, 128 * 1600);
        bt.bind(BENCH_PORT).unwrap();
        let bench_tun = tun_sockets.add(bt);

        let mut fabric = Fabric::new(cfg.identity.clone(), Box::new(entropy::fabric_rng(cfg.rng_seed)));
        fabric.set_unix_time_at_origin(core::time::Duration::from_secs(cfg.unix_time_at_origin));
        let mut peers = Vec::new();
        for m in &cfg.cluster.members {
            if m.public_key == cfg.identity.public_key() {
                continue;
            }
            let ep = SocketAddr::V6(SocketAddrV6::new(m.underlay, m.port, 0, 0));
            let id = match fabric.add_peer(
                PeerConfig::new(m.public_key)
                    .with_endpoint(ep)
                    .with_persistent_keepalive(core::time::Duration::from_secs(25)),
            ) {
                Ok(id) => id,
                Err(e) => {
                    warn!(target: "net", "cluster: peer {} not added: {}", m.name, e);
                    continue;
                }
            };
            let pfx = netfabric::identity::Prefix64::from_public_key(&m.public_key);
            peers.push(Peer { name: m.name.clone(), id, public_key: m.public_key, fabric_addr: pfx.node_address(), underlay: m.underlay, established: false, operator: false });
        }
        // Operators (docs/api.md): peers without an endpoint; only their handshakes start a
        // session, and replies go where the authenticated handshake came from.
        for o in &cfg.cluster.operators {
            match fabric.add_peer(PeerConfig::new(o.public_key)) {
                Ok(id) => {
                    let pfx = netfabric::identity::Prefix64::from_public_key(&o.public_key);
                    peers.push(Peer { name: alloc::format!("operator:{}", o.name), id, public_key: o.public_key, fabric_addr: pfx.node_address(), underlay: Ipv6Addr::UNSPECIFIED, established: false, operator: true });
                }
                Err(e) => warn!(target: "net", "cluster: operator {} not added: {}", o.name, e),
            }
        }
        info!(target: "net", "{}: MAC {:02x?}, link-local {}, fabric address {} ({}/64), {} peer(s), fabric UDP port {}",
            name, mac, link_local, fabric_addr, cfg.identity.prefix().network(), peers.len(), port);
        if me.is_none() {
            warn!(target: "net", "this node's key is not in the cluster file");
        }
        let mut admission = admission::Admission::default();
        admission.seeds = cfg.cluster.members.iter().filter(|m| m.public_key != cfg.identity.public_key()).map(|m| (m.public_key, SocketAddrV6::new(m.underlay, m.port, 0, 0))).collect();
        let underlay_tx = underlay_tx::UnderlayTx::new(port, peers.len() + 4);
        Node {
            underlay_tx, name, link_local, fabric_addr, mac, port, peers, counters: NetCounters::default(),
            eth, eth_sockets, tun, tun_sockets, tun_dev, fabric, fab_udp, ping_eth, ping_tun, bench_eth, bench_tun,
            responder: (0, 0), ping: None, stream: None, logged_drops: 0, ipc_rx: VecDeque::new(),
            vm_routes: Vec::new(), vm_rx: VecDeque::new(), test_loss: None, socket_addrs: Default::default(),
            tcp_rsts: VecDeque::new(), poll_ns: 0, nat64: Default::default(), nat64_counters: Default::default(),
            stages: Default::default(),
            admission,
        }
    }

    pub fn fabric(&self) -> &Fabric {
        &self.fabric
    }

    /// Count cycles per stage of the packet path with `clock` (e.g. the TSC); None stops.
    pub fn set_stage_clock(&mut self, clock: Option<fn() -> u64>) {
        self.stages.set_clock(clock);
    }

    /// Pick the fabric's ChaCha20-Poly1305 code for the sessions to come: `force` if given
    /// (`net.cipher=vector|portable`), else the faster of the two as timed now on packet-sized
    /// buffers with `clock` (the TSC; a few ms under QEMU TCG, where the AVX2 code the vector
    /// crate picks by CPUID is emulated and slower than scalar code). Only a code that gives
    /// RFC 8439's known answer on this CPU may be used, forced or not
    /// (`netfabric::crypto::known_answer_ok`). Logs the choice, both timings and both checks
    /// (a fixed public test key is timed, never a session key). Call before the first
    /// handshake: existing keypairs keep their code. `Err` (logged) when neither code is
    /// correct: the caller must not run the fabric.
    pub fn choose_cipher(&mut self, clock: fn() -> u64, force: Option<netfabric::crypto::CipherImpl>) -> Result<netfabric::crypto::CipherImpl, netfabric::crypto::CipherMeasurement> {
        use netfabric::crypto::CipherImpl;
        let m = netfabric::crypto::measure_cipher_impls(&mut || clock());
        let correct = |c: CipherImpl| m.correct[match c { CipherImpl::Vector => 0, CipherImpl::Portable => 1 }];
        let ok = |b: bool| if b { "ok" } else { "WRONG" };
        let checks = alloc::format!("RFC 8439 known answer: vector {}, portable {}", ok(m.correct[0]), ok(m.correct[1]));
        let chosen = match force {
            Some(f) if correct(f) => Some((f, "(forced by net.cipher)")),
            Some(f) => {
                error!(target: "net", "net.cipher={} refused: that code fails RFC 8439's known answer on this CPU", match f { CipherImpl::Vector => "vector", CipherImpl::Portable => "portable" });
                m.chosen.map(|c| (c, "(the forced code is wrong here)"))
            }
            None => m.chosen.map(|c| (c, "(measured faster)")),
        };
        match chosen {
            Some((c, why)) => {
                self.fabric.set_cipher_impl(c);
                info!(target: "net", "fabric cipher: {} {why}; one round vector {} / portable {} cycles; {checks}", c.name(), m.vector, m.portable);
                Ok(c)
            }
            None => {
                error!(target: "net", "fabric cipher: no ChaCha20-Poly1305 code is correct on this CPU ({checks}): the fabric must not run");
                Err(m)
            }
        }
    }

    /// Parse `net.cipher=`'s value (`vector` or `portable`).
    pub fn parse_cipher_word(v: &str) -> Option<netfabric::crypto::CipherImpl> {
        match v {
            "vector" => Some(netfabric::crypto::CipherImpl::Vector),
            "portable" => Some(netfabric::crypto::CipherImpl::Portable),
            _ => None,
        }
    }

    /// The per-stage counters so far ([`stages::StageCounts::since`] for an interval).
    pub fn stage_counts(&self) -> stages::StageCounts {
        self.stages.counts
    }

    pub fn peer_by_name(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// Start handshakes now (instead of on the first packet) with every peer whose public key
    /// sorts after ours: one side initiates, so boot-time handshakes never cross.
    pub fn connect_all(&mut self, now_ns: u64) {
        let me = self.fabric.identity().public_key();
        let ids: Vec<PeerId> = self.peers.iter().filter(|p| p.public_key > me && !p.operator).map(|p| p.id).collect();
        for id in ids {
            let out = self.fabric.send_to(id, &[], FInstant::from_nanos(now_ns));
            self.fabric_output(out);
        }
    }

    /// Start a handshake with one peer now, unless a session is up.
    pub fn connect(&mut self, name: &str, now_ns: u64) {
        let Some(p) = self.peers.iter().find(|p| p.name == name && !p.established) else { return };
        let out = self.fabric.send_to(p.id, &[], FInstant::from_nanos(now_ns));
        self.fabric_output(out);
    }

    fn peer_name(&self, id: PeerId) -> &str {
        self.peers.iter().find(|p| p.id == id).map(|p| p.name.as_str()).unwrap_or("?")
    }

    fn fabric_output(&mut self, out: netfabric::Output) {
        let t0 = self.stages.start();
        self.route_output(out);
        self.stages.end(stages::Stage::FabricOut, t0);
    }

    fn route_output(&mut self, out: netfabric::Output) {
        for t in out.transmits {
            if let SocketAddr::V6(d) = t.dst {
                if self.underlay_tx.send(&mut self.eth_sockets, *d.ip(), d.port(), &t.data) {
                    self.counters.fabric_out += 1;
                } else {
                    self.counters.underlay_queue_full += 1;
                }
            }
        }
        for p in out.packets {
            // The node routes its /64: fabric IPC (UDP 51900) to any /128 of it goes to the
            // IPC router (`take_ipc`), other traffic to its own /128 to the fabric interface;
            // packets for a microVM's /128 to its queue (`take_vm_packet`); the rest is counted.
            match netfabric::device::inner_header(&p.packet) {
                Some((_, dst, _)) if self.vm_routes.contains(&dst) => self.queue_to_vm(p.packet),
                Some((_, dst, _))
                    if ipcroute::is_ipc_packet(&p.packet) && netfabric::identity::Prefix64::of(&dst) == netfabric::identity::Prefix64::of(&self.fabric_addr) =>
                {
                    if self.test_drop() {
                        // lost on purpose (inbound)
                    } else if self.ipc_rx.len() < IPC_QUEUE {
                        self.ipc_rx.push_back(p.packet)
                    } else {
                        self.counters.ipc_queue_full += 1
                    }
                }
                Some((_, dst, _)) if self.is_local_socket_addr(&dst) || dst.is_multicast() => self.queue_for_tun(p.packet),
                h => {
                    // the NAT64 prefix, on the gateway: to natd
                    let mut pk = Some(p.packet);
                    match h {
                        Some((_, dst, _)) if self.nat64_claim(&dst, &mut pk) => {}
                        _ => self.counters.not_for_us += 1,
                    }
                }
            }
        }
        for e in out.events {
            match e {
                Event::HandshakeCompleted { peer, initiator } => {
                    let n = String::from(self.peer_name(peer));
                    if let Some(p) = self.peers.iter_mut().find(|p| p.id == peer) {
                        if !p.established {
                            info!(target: "net", "fabric: session with {} established ({}), peer address {}",
                                n, if initiator { "initiator" } else { "responder" }, p.fabric_addr);
                        }
                        p.established = true;
                    }
                }
                Event::HandshakeResponded(peer) => debug!(target: "net", "fabric: answered a handshake from {}", self.peer_name(peer)),
                Event::HandshakeGaveUp(peer) => warn!(target: "net", "fabric: no session with {}: handshake gave up", self.peer_name(peer)),
                Event::Dropped { peer, reason } if self.logged_drops < 8 => {
                    self.logged_drops += 1;
                    info!(target: "net", "fabric: dropped a packet from {}: {:?}",
                        peer.map(|p| self.peer_name(p)).unwrap_or("an unknown sender"), reason);
                }
                Event::KeysExpired(peer) | Event::SessionZeroed(peer) => {
                    if let Some(p) = self.peers.iter_mut().find(|p| p.id == peer) {
                        p.established = false;
                    }
                }
                _ => {}
            }
        }
    }

    /// Move packets: NIC → underlay → fabric → fabric interface → fabric → underlay → NIC.
    /// Returns whether anything happened.
    pub fn poll<L: Link>(&mut self, link: &mut L, now_ns: u64) -> bool {
        self.poll_ns = now_ns;
        let now = sinstant(now_ns);
        let fnow = FInstant::from_nanos(now_ns);
        let t = self.stages.start();
        let mut active = self.eth.poll(now, &mut EthDev(&mut *link), &mut self.eth_sockets) != smoltcp::iface::PollResult::None;
        self.stages.end(stages::Stage::Underlay, t);
        // Datagrams from peers.
        loop {
            let s = self.eth_sockets.get_mut::<udp::Socket>(self.fab_udp);
            let Ok((data, meta)) = s.recv() else { break };
            let IpAddress::Ipv6(src) = meta.endpoint.addr;
            let src = SocketAddr::V6(SocketAddrV6::new(src, meta.endpoint.port, 0, 0));
            let data = data.to_vec();
            self.counters.fabric_in += 1;
            active = true;
            if hello::is_hello(&data) {
                self.on_hello(&data, src, now_ns);
                continue;
            }
            let t = self.stages.start();
            let out = self.fabric.handle_incoming(&data, src, fnow);
            self.stages.end(stages::Stage::Decrypt, t);
            self.fabric_output(out);
        }
        self.hello_tick(now_ns);
        if self.fabric.next_deadline().is_some_and(|d| d <= fnow) {
            let out = self.fabric.tick(fnow);
            self.fabric_output(out);
        }
        let t = self.stages.start();
        self.apps(now_ns);
        self.stages.end(stages::Stage::Apps, t);
        self.tun_dev.budget = link.room();
        for _ in 0..4 {
            let t = self.stages.start();
            if self.tun.poll(now, &mut self.tun_dev, &mut self.tun_sockets) != smoltcp::iface::PollResult::None {
                active = true;
            }
            self.stages.end(stages::Stage::Fabric, t);
            if self.tun_dev.tx.is_empty() {
                break;
            }
            while let Some(p) = self.tun_dev.tx.pop_front() {
                if let Some((_, dst, _)) = netfabric::device::inner_header(&p) {
                    if self.vm_routes.contains(&dst) {
                        self.queue_to_vm(p);
                        active = true;
                        continue;
                    }
                    if self.is_local_socket_addr(&dst) {
                        // between two sockets of this node: back into the interface
                        self.queue_for_tun(p);
                        active = true;
                        continue;
                    }
                }
                let t = self.stages.start();
                let sent = self.fabric.send(&p, fnow);
                self.stages.end(stages::Stage::Encrypt, t);
                match sent {
                    Ok(out) => self.fabric_output(out),
                    Err(_) => self.counters.fabric_no_route += 1,
                }
                active = true;
            }
        }
        let t = self.stages.start();
        self.apps(now_ns);
        self.stages.end(stages::Stage::Apps, t);
        let t = self.stages.start();
        if self.eth.poll(now, &mut EthDev(&mut *link), &mut self.eth_sockets) != smoltcp::iface::PollResult::None {
            active = true;
        }
        self.stages.end(stages::Stage::Underlay, t);
        self.underlay_tx.solicit_stuck(&self.eth_sockets, &self.eth, link, now_ns);
        link.flush();
        active
    }

    /// Queue a packet for the fabric interface (bounded: beyond [`TUN_QUEUE`] it is dropped
    /// and counted, as a full NIC queue would drop it).
    fn queue_for_tun(&mut self, p: Vec<u8>) {
        if self.tun_dev.rx.len() < TUN_QUEUE {
            self.note_rst(&p);
            self.tun_dev.rx.push_back(p);
        } else {
            self.counters.tun_queue_full += 1;
        }
    }

    // ------------------------------------------------------------------ fabric IPC

    /// The next decrypted fabric IPC packet for a /128 of this node's /64 (undecoded: see
    /// [`ipcroute::IpcRouter::decode`]).
    pub fn take_ipc(&mut self) -> Option<Vec<u8>> {
        self.ipc_rx.pop_front()
    }

    /// TESTS ONLY: drop `percent`% (at most 90) of the fabric IPC datagrams this node sends
    /// and of those it receives, chosen by a xorshift generator seeded with `seed`, to show
    /// that fabric IPC survives loss (kernel command line `net.test-loss=PCT`). 0 turns it off.
    pub fn set_test_loss(&mut self, percent: u64, seed: u64) {
        self.test_loss = (percent > 0).then_some((percent.min(90), seed | 1));
    }

    fn test_drop(&mut self) -> bool {
        let Some((pct, x)) = self.test_loss.as_mut() else { return false };
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let drop = *x % 100 < *pct;
        if drop {
            self.counters.test_dropped += 1;
        }
        drop
    }

    /// Tunnel an IPC packet (from [`ipcroute::IpcRouter`]) to the peer owning its
    /// destination. False: no peer routes it (counted in `fabric_no_route`).
    pub fn send_ipc(&mut self, packet: &[u8], now_ns: u64) -> bool {
        let routed = netfabric::device::inner_header(packet).is_some_and(|(_, dst, _)| self.fabric.routes().lookup(&dst).is_some());
        if routed && self.test_drop() {
            return true; // lost on purpose, as if on the wire (outbound)
        }
        let t = self.stages.start();
        let sent = self.fabric.send(packet, FInstant::from_nanos(now_ns));
        self.stages.end(stages::Stage::Encrypt, t);
        match sent {
            Ok(out) => {
                self.fabric_output(out);
                true
            }
            Err(_) => {
                self.counters.fabric_no_route += 1;
                false
            }
        }
    }

    // ------------------------------------------------------------------ microVMs

    /// Route `addr` (a microVM /128 of this node's /64) to [`Node::take_vm_packet`].
    pub fn add_vm_route(&mut self, addr: Ipv6Addr) {
        if netfabric::identity::Prefix64::of(&addr) == netfabric::identity::Prefix64::of(&self.fabric_addr)
            && addr != self.fabric_addr
            && !self.vm_routes.contains(&addr)
        {
            self.vm_routes.push(addr);
        }
    }

    pub fn remove_vm_route(&mut self, addr: &Ipv6Addr) {
        self.vm_routes.retain(|a| a != addr);
    }

    fn queue_to_vm(&mut self, p: Vec<u8>) {
        if self.vm_rx.len() < VM_QUEUE {
            self.counters.vm_in += 1;
            self.vm_rx.push_back(p);
        } else {
            self.counters.vm_queue_full += 1;
        }
    }

    /// The next IPv6 packet for a microVM /128 (its destination says which VM).
    pub fn take_vm_packet(&mut self) -> Option<Vec<u8>> {
        self.vm_rx.pop_front()
    }

    /// Route an IPv6 packet a microVM sent (its source already checked by the VM's port):
    /// to this node's own stack, another local microVM, or over the fabric to the peer owning
    /// the destination. Fabric IPC (UDP 51900, to any node) is the node's own business: it is
    /// routed only for a VM the node lets use IPC (`allow_ipc`), otherwise dropped and counted
    /// (`vm_ipc_blocked`). A packet the fabric cannot carry (over [`FABRIC_MTU`]) gets an
    /// ICMPv6 Packet Too Big back from the node, so the guest's path MTU discovery (and TCP)
    /// adapts. False: dropped (no route, counted in `fabric_no_route`; blocked; too big).
    pub fn route_from_vm(&mut self, packet: Vec<u8>, now_ns: u64, allow_ipc: bool) -> bool {
        let Some((src, dst, _)) = netfabric::device::inner_header(&packet) else {
            self.counters.fabric_no_route += 1;
            return false;
        };
        if ipcroute::is_ipc_packet(&packet) && !allow_ipc {
            self.counters.vm_ipc_blocked += 1;
            return false;
        }
        self.counters.vm_out += 1;
        let ours = netfabric::identity::Prefix64::of(&dst) == netfabric::identity::Prefix64::of(&self.fabric_addr);
        if ours && ipcroute::is_ipc_packet(&packet) {
            if self.ipc_rx.len() < IPC_QUEUE {
                self.ipc_rx.push_back(packet);
            } else {
                self.counters.ipc_queue_full += 1;
            }
            return true;
        }
        if self.is_local_socket_addr(&dst) {
            self.queue_for_tun(packet);
            return true;
        }
        if self.vm_routes.contains(&dst) {
            self.queue_to_vm(packet);
            return true;
        }
        let mut p = Some(packet);
        if self.nat64_claim(&dst, &mut p) {
            return true; // this node is the NAT64 gateway: to natd
        }
        let Some(packet) = p else { return false };
        if packet.len() > FABRIC_MTU {
            self.counters.vm_too_big += 1;
            if self.vm_routes.contains(&src) {
                let ptb = vmlink::packet_too_big(self.fabric_addr, &packet, FABRIC_MTU as u32);
                self.queue_to_vm(ptb);
            }
            return false;
        }
        self.send_ipc(&packet, now_ns)
    }

    // ------------------------------------------------------------------ probes

    /// Ping `dst` `count` times (one in flight, 1 s timeout) with a payload of `len` bytes
    /// that contains [`PLAINTEXT_MARKER`].
    pub fn start_ping(&mut self, path: Path, dst: Ipv6Addr, count: u32, len: usize, interval_ns: u64, now_ns: u64) {
        let mut payload = Vec::with_capacity(len);
        while payload.len() < len {
            payload.extend_from_slice(PLAINTEXT_MARKER);
        }
        payload.truncate(len.max(PLAINTEXT_MARKER.len()));
        self.ping = Some(PingRun { path, dst, count, payload, next_seq: 1, inflight: None, next_at: now_ns, interval_ns, report: PingReport::default(), done: false });
    }

    /// The finished ping run's report (taken once).
    pub fn take_ping(&mut self) -> Option<PingReport> {
        if self.ping.as_ref().is_some_and(|p| p.done) {
            return self.ping.take().map(|p| p.report);
        }
        None
    }

    /// Send `total` bytes in `dgram`-byte UDP datagrams to `dst`'s responder and wait for its
    /// count of delivered bytes.
    pub fn start_stream(&mut self, path: Path, dst: Ipv6Addr, total: u64, dgram: usize, now_ns: u64) {
        let id = (now_ns as u32) | 1;
        self.stream = Some(StreamRun { path, dst, id, dgram: dgram.max(16), total, sent: 0, start: now_ns, end_sent_at: 0, result: None });
    }

    /// (bytes delivered, elapsed ns) of the finished stream (taken once).
    pub fn take_stream(&mut self) -> Option<(u64, u64)> {
        if self.stream.as_ref().is_some_and(|s| s.result.is_some()) {
            return self.stream.take().and_then(|s| s.result);
        }
        None
    }

    fn sockets(&mut self, path: Path) -> (&mut SocketSet<'static>, SocketHandle, SocketHandle, Ipv6Addr) {
        match path {
            Path::Fabric => (&mut self.tun_sockets, self.ping_tun, self.bench_tun, self.fabric_addr),
            Path::Underlay => (&mut self.eth_sockets, self.ping_eth, self.bench_eth, self.link_local),
        }
    }

    fn apps(&mut self, now_ns: u64) {
        // Responders on both interfaces: 'D' id data… counts, 'E' id → 'C' id bytes.
        let mut count_reply = None;
        for path in [Path::Fabric, Path::Underlay] {
            let mut resp = self.responder;
            let (set, _, bh, _) = self.sockets(path);
            let s = set.get_mut::<udp::Socket>(bh);
            while let Ok((d, meta)) = s.recv() {
                if d.len() < 5 {
                    continue;
                }
                let id = u32::from_be_bytes(d[1..5].try_into().unwrap());
                match d[0] {
                    b'D' => {
                        if resp.0 != id {
                            resp = (id, 0);
                        }
                        resp.1 += d.len() as u64;
                    }
                    b'E' => {
                        let n = if resp.0 == id { resp.1 } else { 0 };
                        let mut r = vec![b'C'];
                        r.extend_from_slice(&id.to_be_bytes());
                        r.extend_from_slice(&n.to_be_bytes());
                        let ep = meta.endpoint;
                        let _ = s.send_slice(&r, ep);
                    }
                    b'C' if d.len() == 13 => {
                        count_reply = Some((id, u64::from_be_bytes(d[5..13].try_into().unwrap())));
                    }
                    _ => {}
                }
            }
            self.responder = resp;
        }
        self.ping_app(now_ns);
        self.stream_app(now_ns, count_reply);
    }

    fn ping_app(&mut self, now_ns: u64) {
        let Some(mut run) = self.ping.take() else { return };
        let (set, ph, _, src) = self.sockets(run.path);
        let s = set.get_mut::<icmp::Socket>(ph);
        while let Ok((d, _from)) = s.recv() {
            // smoltcp hands us the ICMPv6 message; echo reply = type 129.
            if d.len() >= 8 && d[0] == 129 {
                let seq = u16::from_be_bytes([d[6], d[7]]);
                if let Some((want, t0)) = run.inflight {
                    if seq == want && d[8..] == run.payload[..] {
                        run.report.received += 1;
                        run.report.rtts_ns.push(now_ns.saturating_sub(t0));
                        run.inflight = None;
                    }
                }
            }
        }
        if let Some((_, t0)) = run.inflight {
            if now_ns.saturating_sub(t0) > 1_000_000_000 {
                run.inflight = None; // lost
            }
        }
        if run.inflight.is_none() && !run.done {
            if run.report.sent >= run.count {
                run.done = true;
            } else if now_ns >= run.next_at && s.can_send() {
                let seq = run.next_seq;
                let repr = Icmpv6Repr::EchoRequest { ident: ICMP_IDENT, seq_no: seq, data: &run.payload };
                if let Ok(buf) = s.send(repr.buffer_len(), IpAddress::Ipv6(run.dst)) {
                    let mut pkt = Icmpv6Packet::new_unchecked(buf);
                    repr.emit(&src, &run.dst, &mut pkt, &ChecksumCapabilities::default());
                    run.inflight = Some((seq, now_ns));
                    run.report.sent += 1;
                    run.next_seq = seq.wrapping_add(1);
                    run.next_at = now_ns + run.interval_ns;
                }
            }
        }
        self.ping = Some(run);
    }

    fn stream_app(&mut self, now_ns: u64, count_reply: Option<(u32, u64)>) {
        let Some(mut run) = self.stream.take() else { return };
        if let Some((id, n)) = count_reply {
            if id == run.id && run.result.is_none() {
                run.result = Some((n, now_ns.saturating_sub(run.start)));
            }
        }
        let (set, _, bh, _) = self.sockets(run.path);
        let s = set.get_mut::<udp::Socket>(bh);
        let ep = IpEndpoint::new(IpAddress::Ipv6(run.dst), BENCH_PORT);
        if run.result.is_none() {
            let mut budget = 16;
            while run.sent < run.total && budget > 0 && s.can_send() {
                let mut d = vec![0x5au8; run.dgram];
                d[0] = b'D';
                d[1..5].copy_from_slice(&run.id.to_be_bytes());
                if s.send_slice(&d, ep).is_err() {
                    break;
                }
                run.sent += run.dgram as u64;
                budget -= 1;
            }
            if run.sent >= run.total && now_ns.saturating_sub(run.end_sent_at) > 100_000_000 {
                let mut e = vec![b'E'];
                e.extend_from_slice(&run.id.to_be_bytes());
                if s.send_slice(&e, ep).is_ok() {
                    run.end_sent_at = now_ns;
                }
            }
        }
        self.stream = Some(run);
    }
}
