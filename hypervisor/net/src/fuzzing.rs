//! The node's whole receive path under hostile input, shared by the cargo-fuzz target
//! (`hypervisor/net/fuzz`, `node_poll`) and the host test below.
//!
//! [`run`] builds a target node with an established fabric session to a real peer (fixed keys,
//! so every run is reproducible), a microVM route and an IPC router with a bound /128, and
//! then reads the input as a program of steps: raw Ethernet frames, IPv6 packets with correct
//! ICMPv6/UDP checksums (so they get past smoltcp's checks), NDP messages (RS, RA with
//! options, NS, NA, redirect), fragments, datagrams to the fabric port (random or shaped like
//! handshake and transport messages), mutated copies of frames the peer really sent, inner
//! packets the peer encrypts through the session (so hostile *decrypted* packets reach the
//! IPC router, the fabric interface and the microVM queue), and time jumps (timers, rekeys).
//! After each step the target is polled with [`Node::poll`] and whatever it routed to the
//! IPC router or the microVM is decoded. Nothing may panic.

use crate::ipcroute::IpcRouter;
use crate::rpc::{Delivery, Outcome, Rpc};
use crate::{Cluster, Link, Member, Node, NodeConfig, Path};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv6Addr;
use netfabric::identity::{AddressKind, Prefix64};
use netfabric::Identity;

const TARGET_MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0, 1];
const PEER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0, 2];

/// An in-memory Ethernet link: frames in, frames out.
#[derive(Default)]
pub struct QueueLink {
    pub mac: [u8; 6],
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
}

impl Link for QueueLink {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.pop_front()
    }
    fn can_send(&self) -> bool {
        self.tx.len() < 4096
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        let mut b = vec![0u8; len];
        f(&mut b);
        self.tx.push(b);
    }
}

/// The input, read front to back; past the end every read gives zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, r)) => {
                self.0 = r;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.u16() as usize % (max + 1)).min(self.0.len());
        let (a, r) = self.0.split_at(n);
        self.0 = r;
        a.to_vec()
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

pub use crate::vmlink::l4_checksum;

/// An IPv6 packet; for ICMPv6 and UDP the checksum is filled in (and UDP gets its header).
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = body.to_vec();
    match next {
        58 if msg.len() >= 4 => {
            msg[2] = 0;
            msg[3] = 0;
            let c = l4_checksum(&src, &dst, 58, &msg);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
        }
        17 if msg.len() >= 8 => {
            let l = (msg.len().min(0xffff) as u16).to_be_bytes();
            msg[4..6].copy_from_slice(&l);
            msg[6] = 0;
            msg[7] = 0;
            let c = l4_checksum(&src, &dst, 17, &msg);
            msg[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
        }
        _ => {}
    }
    let mut p = crate::vmlink::ipv6_header(src, dst, next, hop, msg.len());
    p.extend_from_slice(&msg);
    p
}

fn ethernet(dst_mac: [u8; 6], src_mac: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(ip);
    f
}

/// A target node with a session to a real peer, ready for hostile input.
pub struct Harness {
    pub target: Node,
    pub tlink: QueueLink,
    pub peer: Node,
    pub plink: QueueLink,
    pub router: IpcRouter,
    pub rpc: Rpc,
    vm: Ipv6Addr,
    bound: Ipv6Addr,
    /// Frames the peer sent (handshakes, transport data, NDP): material for mutations.
    pub seen: Vec<Vec<u8>>,
    pub now: u64,
}

impl Harness {
    pub fn new() -> Harness {
        let a = Identity::from_secret_bytes([0x11; 32]);
        let b = Identity::from_secret_bytes([0x22; 32]);
        let m = |n: &str, id: &Identity, mac| Member {
            name: n.into(),
            public_key: id.public_key(),
            underlay: crate::cluster::link_local_from_mac(mac),
            port: crate::cluster::FABRIC_PORT,
        };
        let cluster = Cluster { members: vec![m("target", &a, TARGET_MAC), m("peer", &b, PEER_MAC)], operators: vec![] };
        let mut tlink = QueueLink { mac: TARGET_MAC, ..Default::default() };
        let mut plink = QueueLink { mac: PEER_MAC, ..Default::default() };
        let cfg = |id: &Identity, s: u8| NodeConfig { identity: id.clone(), cluster: cluster.clone(), unix_time_at_origin: 1_700_000_000, rng_seed: [s; 32] };
        let mut target = Node::new(&mut tlink, cfg(&a, 1), 0);
        let peer = Node::new(&mut plink, cfg(&b, 2), 0);
        let vm = Prefix64::of(&target.fabric_addr).workload_address(AddressKind::MicroVm, 1).unwrap_or(Ipv6Addr::UNSPECIFIED);
        target.add_vm_route(vm);
        let mut router = IpcRouter::new(target.fabric_addr);
        let bound = router.bind(2).unwrap_or(Ipv6Addr::UNSPECIFIED);
        let rpc = Rpc::new(target.fabric_addr, 7);
        let mut h = Harness { target, tlink, peer, plink, router, rpc, vm, bound, seen: Vec::new(), now: 0 };
        h.peer.connect("target", 0);
        for _ in 0..400 {
            h.step(1_000_000);
            if h.peer.peer_by_name("target").is_some_and(|p| p.established) && h.target.peer_by_name("peer").is_some_and(|p| p.established) {
                break;
            }
        }
        h
    }

    /// Advance the clock, poll both nodes and carry their frames across; drain what the
    /// target routed to its IPC router and microVM queue through the decoders.
    pub fn step(&mut self, dt_ns: u64) {
        self.now = self.now.saturating_add(dt_ns);
        self.target.poll(&mut self.tlink, self.now);
        self.peer.poll(&mut self.plink, self.now);
        for f in self.plink.tx.drain(..) {
            if self.seen.len() < 64 {
                self.seen.push(f.clone());
            }
            self.tlink.rx.push_back(f);
        }
        for f in self.tlink.tx.drain(..) {
            self.plink.rx.push_back(f);
        }
        self.target.poll(&mut self.tlink, self.now);
        while let Some(p) = self.target.take_ipc() {
            // decoded frames go through the reliability layer: deliveries alternate between
            // accepted (a call answered at once), busy and failed
            match self.router.decode(&p) {
                Ok(f) => {
                    let mut n = 0u32;
                    let mut tickets = Vec::new();
                    let _ = self.rpc.inbound(self.now, f, &mut |d| {
                        n += 1;
                        match n % 3 {
                            0 => Outcome::Busy,
                            1 => {
                                if let Delivery::Call { ticket, .. } = d {
                                    tickets.push(ticket);
                                }
                                Outcome::Delivered
                            }
                            _ => Outcome::Failed(6),
                        }
                    });
                    for t in tickets {
                        let _ = self.rpc.answer(self.now, t, Ok(crate::ipcroute::Body::default())).packet();
                    }
                }
                Err(_) => {
                    let _ = IpcRouter::refusal(&p, 6);
                }
            }
            let _ = self.rpc.poll(self.now, |_| true);
        }
        while let Some(p) = self.target.take_vm_packet() {
            let mut port = crate::vmlink::VmPort::new(self.vm, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let _ = port.to_vm(&p);
        }
    }

    /// An address the input picks: the nodes' own, multicast, unspecified or arbitrary.
    fn pick_addr(&self, inp: &mut Input) -> Ipv6Addr {
        match inp.u8() % 10 {
            0 => self.target.link_local,
            1 => self.peer.link_local,
            2 => self.target.fabric_addr,
            3 => self.peer.fabric_addr,
            4 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            5 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | self.target.link_local.segments()[6] & 0xff, self.target.link_local.segments()[7]),
            6 => Ipv6Addr::UNSPECIFIED,
            7 => self.vm,
            8 => self.bound,
            _ => {
                let mut o = [0u8; 16];
                for b in o.iter_mut() {
                    *b = inp.u8();
                }
                Ipv6Addr::from(o)
            }
        }
    }

    fn dst_mac(&self, inp: &mut Input) -> [u8; 6] {
        match inp.u8() % 4 {
            0 => [0xff; 6],
            1 => [0x33, 0x33, 0, 0, 0, 1],
            2 => [inp.u8(), inp.u8(), inp.u8(), inp.u8(), inp.u8(), inp.u8()],
            _ => TARGET_MAC,
        }
    }

    /// Feed one step of hostile input.
    fn hostile_step(&mut self, inp: &mut Input) {
        let dmac = self.dst_mac(inp);
        let frame = match inp.u8() % 9 {
            // raw bytes as a frame
            0 => Some(inp.bytes(1600)),
            // any IPv6 packet (ICMPv6/UDP with correct checksums)
            1 => {
                let (src, dst) = (self.pick_addr(inp), self.pick_addr(inp));
                let (next, hop) = (inp.u8(), inp.u8());
                let body = inp.bytes(1500);
                Some(ethernet(dmac, PEER_MAC, &ipv6(src, dst, next, hop, &body)))
            }
            // NDP: RS, RA (with options), NS, NA, redirect; hop limit 255 as NDP wants
            2 => {
                let (src, dst) = (self.pick_addr(inp), self.pick_addr(inp));
                let mut body = vec![133 + inp.u8() % 5, inp.u8(), 0, 0];
                body.extend(inp.bytes(600));
                Some(ethernet(dmac, PEER_MAC, &ipv6(src, dst, 58, 255, &body)))
            }
            // a fragment header in front of whatever follows
            3 => {
                let (src, dst) = (self.pick_addr(inp), self.pick_addr(inp));
                let mut body = vec![inp.u8(), 0, inp.u8(), inp.u8(), inp.u8(), inp.u8(), inp.u8(), inp.u8()];
                body.extend(inp.bytes(1400));
                Some(ethernet(dmac, PEER_MAC, &ipv6(src, dst, 44, 64, &body)))
            }
            // a datagram to the fabric port: random, or shaped like a WireGuard message
            4 => {
                let mut udp = vec![0u8; 8];
                udp[0..2].copy_from_slice(&crate::cluster::FABRIC_PORT.to_be_bytes());
                udp[2..4].copy_from_slice(&self.target.port.to_be_bytes());
                let kind = inp.u8();
                if kind < 128 {
                    let t = 1 + kind % 4;
                    let len = [0usize, 148, 92, 64, 32 + (inp.u8() as usize)][t as usize];
                    let mut m = vec![0u8; len.max(4)];
                    m[0] = t;
                    let fill = inp.bytes(len);
                    let n = fill.len().min(m.len() - 4);
                    m[4..4 + n].copy_from_slice(&fill[..n]);
                    udp.extend(m);
                } else {
                    udp.extend(inp.bytes(1450));
                }
                Some(ethernet(TARGET_MAC, PEER_MAC, &ipv6(self.peer.link_local, self.target.link_local, 17, 64, &udp)))
            }
            // a frame the peer really sent, with a few bytes changed (checksums fixed or not)
            5 if !self.seen.is_empty() => {
                let mut f = self.seen[inp.u8() as usize % self.seen.len()].clone();
                for _ in 0..1 + inp.u8() % 4 {
                    let i = inp.u16() as usize % f.len().max(1);
                    if let Some(b) = f.get_mut(i) {
                        *b ^= inp.u8() | 1;
                    }
                }
                if inp.u8() & 1 == 0 && f.len() >= 14 + 48 && f[14 + 6] == 17 {
                    // fix the UDP checksum so the change reaches netfabric
                    let ip = &f[14..];
                    let (Some(s), Some(d)) = (ip.get(8..24), ip.get(24..40)) else { return };
                    let (s, d) = (Ipv6Addr::from(<[u8; 16]>::try_from(s).unwrap_or([0; 16])), Ipv6Addr::from(<[u8; 16]>::try_from(d).unwrap_or([0; 16])));
                    let mut udp = f[14 + 40..].to_vec();
                    udp[6] = 0;
                    udp[7] = 0;
                    let c = l4_checksum(&s, &d, 17, &udp);
                    f[14 + 46..14 + 48].copy_from_slice(&c.to_be_bytes());
                }
                Some(f)
            }
            // an inner packet the peer encrypts through the session: hostile decrypted traffic
            6 => {
                let src = match inp.u8() % 3 {
                    0 => self.peer.fabric_addr,
                    1 => Prefix64::of(&self.peer.fabric_addr).workload_address(AddressKind::Task, inp.u8() as u64 + 1).unwrap_or(self.peer.fabric_addr),
                    _ => self.pick_addr(inp),
                };
                if inp.u8().is_multiple_of(2) {
                    // a well-formed fabric IPC frame with hostile fields
                    use netfabric::ipc::{FabricFrame, FrameKind};
                    let dst = match inp.u8() % 4 {
                        0 => self.bound,
                        1 => self.target.fabric_addr,
                        2 => self.vm,
                        _ => Prefix64::of(&self.target.fabric_addr).workload_address(AddressKind::Task, inp.u8() as u64).unwrap_or(self.bound),
                    };
                    let payload = if inp.u8().is_multiple_of(2) {
                        let mut v = alloc::vec![crate::ipcroute::WIRE_VERSION, 0, 0, 0, 0, 0, 0, 0];
                        for x in [inp.u8() as u64 % 3, inp.u8() as u64 % 5, inp.u8() as u64 % 4] {
                            v.extend_from_slice(&x.to_be_bytes());
                        }
                        if !inp.u8().is_multiple_of(4) {
                            v.extend_from_slice(&[inp.u8(); 40]);
                        }
                        v
                    } else {
                        inp.bytes(64)
                    };
                    let mut f = FabricFrame::message(src, dst, inp.u8() as u64 % 4, inp.u8() as u32 % 3, payload);
                    f.kind = [FrameKind::Message, FrameKind::Reply, FrameKind::Error, FrameKind::Ack][inp.u8() as usize % 4];
                    if let Ok(p) = netfabric::ipv6::frame_to_packet(&f) {
                        self.peer.send_ipc(&p, self.now);
                    }
                    self.step(1_000_000);
                    return;
                }
                let dst = self.pick_addr(inp);
                let next = [17u8, 58, 6, 44, 0][inp.u8() as usize % 5];
                let mut body = inp.bytes(1300);
                if next == 17 && body.len() >= 4 && inp.u8() & 1 == 0 {
                    body[2..4].copy_from_slice(&netfabric::ipc::FABRIC_IPC_PORT.to_be_bytes());
                }
                let p = ipv6(src, dst, next, 64, &body);
                self.peer.send_ipc(&p, self.now);
                None
            }
            // the peer's own traffic: echoes over the fabric and the link
            7 => {
                let path = if inp.u8() & 1 == 0 { Path::Fabric } else { Path::Underlay };
                let dst = if path == Path::Fabric { self.target.fabric_addr } else { self.target.link_local };
                self.peer.start_ping(path, dst, 1, inp.u8() as usize, 0, self.now);
                None
            }
            // time passes: timers, keepalives, rekeys, expiries
            _ => {
                self.step(inp.u16() as u64 * 10_000_000);
                None
            }
        };
        if let Some(f) = frame {
            self.tlink.rx.push_back(f);
        }
        self.step(1_000_000);
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// Steps per input, at most (keeps one input's run short).
const MAX_STEPS: usize = 64;

/// The fuzz entry point: a fresh target and peer, then `data` as hostile steps.
pub fn run(data: &[u8]) {
    let mut h = Harness::new();
    run_on(&mut h, data);
}

/// `data` as hostile steps against an existing harness.
pub fn run_on(h: &mut Harness, data: &[u8]) {
    let mut inp = Input(data);
    for _ in 0..MAX_STEPS {
        if inp.done() {
            break;
        }
        h.hostile_step(&mut inp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn harness_has_a_session_and_the_session_survives_hostile_frames() {
        let mut h = Harness::new();
        assert!(h.target.peer_by_name("peer").unwrap().established);
        assert!(!h.seen.is_empty());
        // thousands of pseudo-random steps, each a frame or an action
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut frames = 0;
        for _ in 0..400 {
            let n = (xorshift(&mut x) % 2000) as usize;
            let data: Vec<u8> = (0..n).map(|_| xorshift(&mut x) as u8).collect();
            run_on(&mut h, &data);
            frames += 1;
        }
        assert!(frames > 0);
        // the input reached every layer: fabric datagrams in, netfabric refusals, decrypted
        // packets at the IPC router, NDP/other frames at smoltcp
        let fc = h.target.fabric().counters();
        let rc = h.router.counters;
        std::eprintln!("fuzz smoke: target {:?}; fabric dropped {}; router {:?}", h.target.counters, fc.total_dropped(), rc);
        assert!(h.target.counters.fabric_in > 100);
        assert!(fc.total_dropped() > 10);
        assert!(rc.dropped_malformed + rc.dropped_unbound + rc.delivered > 10);
        assert!(h.target.counters.vm_in > 0);
        // the legitimate peer still reaches the target over the fabric
        let dst = h.target.fabric_addr;
        h.peer.start_ping(Path::Fabric, dst, 3, 64, 0, h.now);
        let mut rep = None;
        for _ in 0..5000 {
            h.step(1_000_000);
            if let Some(r) = h.peer.take_ping() {
                rep = Some(r);
                break;
            }
        }
        let rep = rep.expect("ping finished");
        assert!(rep.received >= 2, "{}/{} replies after the hostile frames", rep.received, rep.sent);
    }

    #[test]
    fn each_step_kind_on_fresh_nodes() {
        // every step kind first, on a fresh harness, with short and long inputs
        for kind in 0u8..9 {
            for len in [0usize, 1, 7, 64, 700, 3000] {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (kind as u64) << 8 ^ len as u64;
                let mut data = vec![0u8, kind];
                data.extend((0..len).map(|_| xorshift(&mut x) as u8));
                run(&data);
            }
        }
    }
}
