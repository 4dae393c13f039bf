//! Fabric IPC routing: which /128 of the node's /64 names which local IPC endpoint, and the
//! encoding of one IPC message (label + 4 words) in a [`FabricFrame`] (IPv6/UDP port
//! [`FABRIC_IPC_PORT`] inside the encrypted tunnel).
//!
//! Frames (all integers big-endian in the payload):
//!
//! * `Message`, message kind [`KIND_SEND`] or [`KIND_CALL`]: payload = label, words[0..4],
//!   call id (0 for a send) — 48 bytes. Only a task /128 that was bound to an endpoint
//!   ([`IpcRouter::bind`], reached through the kernel's capability-checked `bind_address`)
//!   names a local endpoint; the frame's endpoint field must be 0 or that endpoint. The wire
//!   never picks an endpoint by number: a message to the node's own /128 is refused like one
//!   to an unbound /128.
//! * `Reply`: payload = label, words, call id of the caller's node — 48 bytes.
//! * `Error`: payload = call id, IPC error code — 16 bytes (a call that cannot be delivered).
//!
//! Everything here comes from the network: [`IpcRouter::decode`] returns [`RouteError`] and
//! never panics; every refused frame is counted. The sender of a delivered message is the
//! packet's source /128, which the fabric authenticated (netfabric accepts a decrypted packet
//! only if its source lies in the sending peer's /64, derived from the peer's key; a microVM's
//! port accepts only the VM's own /128). Calls in flight here are bounded per source
//! ([`IpcRouter::admit_call`]): a peer's /64, or a local microVM's /128.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::Ipv6Addr;
use netfabric::identity::{AddressAllocator, AddressKind, Prefix64};
use netfabric::ipc::{FabricFrame, FrameKind, FABRIC_IPC_PORT};
use netfabric::ipv6::{self, Ipv6Error};

/// Message kind of a one-way send.
pub const KIND_SEND: u32 = 0;
/// Message kind of a call (the receiver replies).
pub const KIND_CALL: u32 = 1;
/// Payload length of message and reply frames.
pub const MSG_PAYLOAD: usize = 48;
/// Payload length of error frames.
pub const ERR_PAYLOAD: usize = 16;

/// One IPC message as it crosses the fabric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WireMsg {
    pub label: u64,
    pub words: [u64; 4],
    /// The calling node's id for the call (0: a send).
    pub call_id: u64,
}

impl WireMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MSG_PAYLOAD);
        v.extend_from_slice(&self.label.to_be_bytes());
        for w in self.words {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(&self.call_id.to_be_bytes());
        v
    }
    pub fn decode(b: &[u8]) -> Result<WireMsg, RouteError> {
        if b.len() != MSG_PAYLOAD {
            return Err(RouteError::BadPayload);
        }
        let w = |i: usize| -> Result<u64, RouteError> {
            let s = b.get(i * 8..i * 8 + 8).ok_or(RouteError::BadPayload)?;
            Ok(u64::from_be_bytes(s.try_into().map_err(|_| RouteError::BadPayload)?))
        };
        Ok(WireMsg { label: w(0)?, words: [w(1)?, w(2)?, w(3)?, w(4)?], call_id: w(5)? })
    }
}

/// Why an inbound IPC packet was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not a valid IPv6/UDP fabric frame (checksum, port, frame header…).
    Packet(Ipv6Error),
    /// The destination is outside this node's /64.
    NotOurPrefix,
    /// The destination is a /128 of our /64 that no endpoint is bound to.
    Unbound(Ipv6Addr),
    /// A task /128 named an endpoint other than the one bound to it.
    WrongEndpoint,
    /// The payload is not what the frame kind needs.
    BadPayload,
    /// Unknown message kind, or a frame kind this router does not take (ack).
    BadKind,
    /// A call to the node /128 with endpoint 0.
    NoEndpoint,
    /// The source already has [`CALLS_PER_SOURCE`] calls in flight here.
    OverQuota,
}

/// Calls from one source (a peer node's /64, or one local microVM's /128) that may be in
/// flight here at once; the kernel's table of calls from other nodes holds 256, so no single
/// source can fill it.
pub const CALLS_PER_SOURCE: u32 = 16;

/// What an inbound frame asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Deliver `msg` to local endpoint `endpoint`; when `msg.call_id != 0` the sender waits
    /// for a reply (send it back to `from`, from `to`).
    Deliver { from: Ipv6Addr, to: Ipv6Addr, endpoint: u64, msg: WireMsg },
    /// A reply to our call `msg.call_id`, from `from`.
    Reply { from: Ipv6Addr, msg: WireMsg },
    /// Our call `call_id` to `from` failed there with IPC error `code`.
    Error { from: Ipv6Addr, call_id: u64, code: u64 },
}

/// Counters the node prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    pub delivered: u64,
    pub replies: u64,
    pub errors_in: u64,
    pub dropped_unbound: u64,
    pub dropped_malformed: u64,
    pub sent: u64,
    /// Calls refused because their source had [`CALLS_PER_SOURCE`] in flight.
    pub over_quota: u64,
}

/// The node's /128 → endpoint table and its task address allocator.
pub struct IpcRouter {
    node: Ipv6Addr,
    prefix: Prefix64,
    alloc: AddressAllocator,
    bound: BTreeMap<Ipv6Addr, u64>,
    /// Calls in flight here per source key ([`IpcRouter::source_key`]).
    calls_in: BTreeMap<Ipv6Addr, u32>,
    pub counters: RouteCounters,
}

impl IpcRouter {
    /// A router for the node whose own address is `node` (`prefix::1`).
    pub fn new(node: Ipv6Addr) -> IpcRouter {
        let prefix = Prefix64::of(&node);
        IpcRouter { node, prefix, alloc: AddressAllocator::new(prefix), bound: BTreeMap::new(), calls_in: BTreeMap::new(), counters: RouteCounters::default() }
    }

    pub fn node_address(&self) -> Ipv6Addr {
        self.node
    }

    /// Give local endpoint `endpoint` a fresh task /128 of the node's /64. The caller checks
    /// the right to do so (the kernel's `bind_address` syscall wants a capability with the
    /// bind right).
    pub fn bind(&mut self, endpoint: u64) -> Option<Ipv6Addr> {
        if endpoint == 0 {
            return None;
        }
        let a = self.alloc.allocate(AddressKind::Task).ok()?;
        self.bound.insert(a, endpoint);
        Some(a)
    }

    /// A fresh microVM /128 of the node's /64 (netfabric's allocator, kind microVM).
    pub fn allocate_vm(&mut self) -> Option<Ipv6Addr> {
        self.alloc.allocate(AddressKind::MicroVm).ok()
    }

    /// Forget a /128 (its endpoint closed); it is never handed out again.
    pub fn unbind(&mut self, addr: &Ipv6Addr) -> bool {
        self.alloc.release(addr);
        self.bound.remove(addr).is_some()
    }

    pub fn lookup(&self, addr: &Ipv6Addr) -> Option<u64> {
        self.bound.get(addr).copied()
    }

    /// Whether `addr` is this node's own /128 or one bound to an endpoint.
    pub fn is_local(&self, addr: &Ipv6Addr) -> bool {
        *addr == self.node || self.bound.contains_key(addr)
    }

    /// Whether `addr` lies in this node's /64.
    pub fn in_prefix(&self, addr: &Ipv6Addr) -> bool {
        self.prefix.contains(addr)
    }

    /// Who a call from `from` counts against: the peer node's /64 (its network address) for
    /// another node — the fabric authenticated that much and no more — or the /128 of a
    /// microVM of this node.
    pub fn source_key(&self, from: &Ipv6Addr) -> Ipv6Addr {
        if self.prefix.contains(from) {
            *from
        } else {
            Prefix64::of(from).network()
        }
    }

    /// Take one of `from`'s [`CALLS_PER_SOURCE`] slots for a call about to be delivered.
    /// False (counted in `over_quota`): answer the call with an error instead.
    pub fn admit_call(&mut self, from: &Ipv6Addr) -> bool {
        let k = self.source_key(from);
        let n = self.calls_in.entry(k).or_insert(0);
        if *n >= CALLS_PER_SOURCE {
            self.counters.over_quota += 1;
            return false;
        }
        *n += 1;
        true
    }

    /// A call from `from` was answered (or failed): give its slot back.
    pub fn call_done(&mut self, from: &Ipv6Addr) {
        let k = self.source_key(from);
        if let Some(n) = self.calls_in.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.calls_in.remove(&k);
            }
        }
    }

    /// Calls from `from`'s source in flight here.
    pub fn calls_in_flight(&self, from: &Ipv6Addr) -> u32 {
        self.calls_in.get(&self.source_key(from)).copied().unwrap_or(0)
    }

    /// Decode an inbound IPv6 packet (already decrypted) and decide where it goes. Refusals
    /// are counted.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Inbound, RouteError> {
        let r = self.decode_inner(packet);
        match &r {
            Ok(Inbound::Deliver { .. }) => self.counters.delivered += 1,
            Ok(Inbound::Reply { .. }) => self.counters.replies += 1,
            Ok(Inbound::Error { .. }) => self.counters.errors_in += 1,
            Err(RouteError::Unbound(_)) => self.counters.dropped_unbound += 1,
            Err(_) => self.counters.dropped_malformed += 1,
        }
        r
    }

    fn decode_inner(&self, packet: &[u8]) -> Result<Inbound, RouteError> {
        let f = ipv6::packet_to_frame(packet).map_err(RouteError::Packet)?;
        if !self.prefix.contains(&f.dst) {
            return Err(RouteError::NotOurPrefix);
        }
        match f.kind {
            FrameKind::Message => {
                let msg = WireMsg::decode(&f.payload)?;
                match (f.message_kind, msg.call_id) {
                    (KIND_SEND, 0) => {}
                    (KIND_CALL, id) if id != 0 => {}
                    _ => return Err(RouteError::BadKind),
                }
                // only a bound /128 names an endpoint; the node's own /128 names none
                let ep = self.bound.get(&f.dst).copied().ok_or(RouteError::Unbound(f.dst))?;
                if f.endpoint != 0 && f.endpoint != ep {
                    return Err(RouteError::WrongEndpoint);
                }
                Ok(Inbound::Deliver { from: f.src, to: f.dst, endpoint: ep, msg })
            }
            // answers come back to the /128 the call went out from: the node's, or a bound one
            FrameKind::Reply | FrameKind::Error if !self.is_local(&f.dst) => Err(RouteError::Unbound(f.dst)),
            FrameKind::Reply => {
                let msg = WireMsg::decode(&f.payload)?;
                if msg.call_id == 0 {
                    return Err(RouteError::BadPayload);
                }
                Ok(Inbound::Reply { from: f.src, msg })
            }
            FrameKind::Error => {
                if f.payload.len() != ERR_PAYLOAD {
                    return Err(RouteError::BadPayload);
                }
                let call_id = u64::from_be_bytes(f.payload[..8].try_into().map_err(|_| RouteError::BadPayload)?);
                let code = u64::from_be_bytes(f.payload[8..16].try_into().map_err(|_| RouteError::BadPayload)?);
                if call_id == 0 {
                    return Err(RouteError::BadPayload);
                }
                Ok(Inbound::Error { from: f.src, call_id, code })
            }
            FrameKind::Ack => Err(RouteError::BadKind),
        }
    }

    /// For a well-formed call frame that could not be delivered: (caller's /128, the /128 it
    /// called, call id), so that the caller gets an error frame instead of waiting for its
    /// timeout. None for anything else (sends, replies, malformed frames: no answer).
    pub fn refused_call(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, u64)> {
        let f = ipv6::packet_to_frame(packet).ok()?;
        if f.kind != FrameKind::Message || f.message_kind != KIND_CALL {
            return None;
        }
        let m = WireMsg::decode(&f.payload).ok()?;
        (m.call_id != 0).then_some((f.src, f.dst, m.call_id))
    }

    fn packet(&mut self, f: FabricFrame) -> Option<Vec<u8>> {
        let p = ipv6::frame_to_packet(&f).ok()?;
        self.counters.sent += 1;
        Some(p)
    }

    /// The IPv6/UDP packet of a send (`msg.call_id == 0`) or call to endpoint `endpoint` at
    /// `dst`, from `from` (the sending task's bound /128) or else from the node's /128.
    pub fn message_packet(&mut self, from: Option<Ipv6Addr>, dst: Ipv6Addr, endpoint: u64, msg: WireMsg) -> Option<Vec<u8>> {
        let kind = if msg.call_id == 0 { KIND_SEND } else { KIND_CALL };
        let src = match from {
            Some(a) if self.bound.contains_key(&a) => a,
            _ => self.node,
        };
        let f = FabricFrame::message(src, dst, endpoint, kind, msg.encode());
        self.packet(f)
    }

    /// The packet answering call `msg.call_id` of `to`, from `from` (the /128 it was sent to).
    pub fn reply_packet(&mut self, from: Ipv6Addr, to: Ipv6Addr, msg: WireMsg) -> Option<Vec<u8>> {
        let mut f = FabricFrame::message(from, to, 0, 0, msg.encode());
        f.kind = FrameKind::Reply;
        self.packet(f)
    }

    /// The packet telling `to` that its call `call_id` failed with IPC error `code`.
    pub fn error_packet(&mut self, from: Ipv6Addr, to: Ipv6Addr, call_id: u64, code: u64) -> Option<Vec<u8>> {
        let mut p = Vec::with_capacity(ERR_PAYLOAD);
        p.extend_from_slice(&call_id.to_be_bytes());
        p.extend_from_slice(&code.to_be_bytes());
        let mut f = FabricFrame::message(from, to, 0, 0, p);
        f.kind = FrameKind::Error;
        self.packet(f)
    }
}

/// Is `packet` an IPv6/UDP datagram to the fabric IPC port (a cheap look at the headers; the
/// router verifies everything)?
pub fn is_ipc_packet(packet: &[u8]) -> bool {
    packet.len() >= 48 && packet[0] >> 4 == 6 && packet[6] == ipv6::PROTO_UDP && u16::from_be_bytes([packet[42], packet[43]]) == FABRIC_IPC_PORT
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfabric::Identity;

    fn node(seed: u8) -> Ipv6Addr {
        Identity::from_secret_bytes([seed; 32]).node_address()
    }

    #[test]
    fn call_to_bound_task_address_and_reply() {
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let mut rb = IpcRouter::new(b);
        let t = rb.bind(7).unwrap();
        assert_ne!(t, b);
        assert!(rb.in_prefix(&t) && rb.is_local(&t));
        let m = WireMsg { label: 5, words: [1, 2, 3, 4], call_id: 42 };
        let p = ra.message_packet(None, t, 0, m).unwrap();
        assert!(is_ipc_packet(&p));
        let Ok(Inbound::Deliver { from, to, endpoint, msg }) = rb.decode(&p) else { panic!() };
        assert_eq!((from, to, endpoint, msg), (a, t, 7, m));
        let r = WireMsg { label: 6, words: [2, 3, 4, 5], call_id: 42 };
        let rp = rb.reply_packet(to, from, r).unwrap();
        assert_eq!(ra.decode(&rp), Ok(Inbound::Reply { from: t, msg: r }));
        let ep = rb.error_packet(to, from, 43, 6).unwrap();
        assert_eq!(ra.decode(&ep), Ok(Inbound::Error { from: t, call_id: 43, code: 6 }));
        assert_eq!(rb.counters.delivered, 1);
        assert_eq!(ra.counters.replies, 1);
    }

    #[test]
    fn node_address_names_no_endpoint() {
        // the wire never picks an endpoint by number: only bound /128s deliver
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let mut rb = IpcRouter::new(b);
        for ep in [0, 1, 2, 9, u64::MAX] {
            let p = ra.message_packet(None, b, ep, WireMsg { label: 1, ..Default::default() }).unwrap();
            assert_eq!(rb.decode(&p), Err(RouteError::Unbound(b)), "endpoint {ep}");
            let c = ra.message_packet(None, b, ep, WireMsg { label: 1, call_id: 3, ..Default::default() }).unwrap();
            assert_eq!(rb.decode(&c), Err(RouteError::Unbound(b)));
            assert_eq!(IpcRouter::refused_call(&c), Some((a, b, 3)));
        }
        assert_eq!(rb.counters.delivered, 0);
        assert_eq!(rb.counters.dropped_unbound, 10);
    }

    #[test]
    fn sender_is_the_authenticated_source() {
        // a call from a bound task goes out from its /128, and the receiver is told that /128;
        // a task without one sends from the node's /128
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let mut rb = IpcRouter::new(b);
        let srv = rb.bind(4).unwrap();
        let cli = ra.bind(6).unwrap();
        let m = WireMsg { label: 1, words: [1, 2, 3, 4], call_id: 9 };
        let p = ra.message_packet(Some(cli), srv, 0, m).unwrap();
        let Ok(Inbound::Deliver { from, to, endpoint, .. }) = rb.decode(&p) else { panic!() };
        assert_eq!((from, to, endpoint), (cli, srv, 4));
        // the answer goes back to the bound /128, which takes it
        let rp = rb.reply_packet(to, from, WireMsg { call_id: 9, ..m }).unwrap();
        assert_eq!(ra.decode(&rp), Ok(Inbound::Reply { from: srv, msg: WireMsg { call_id: 9, ..m } }));
        // a /128 we do not own is never used as the source
        let foreign = Prefix64::of(&a).workload_address(AddressKind::Task, 77).unwrap();
        let p = ra.message_packet(Some(foreign), srv, 0, m).unwrap();
        let Ok(Inbound::Deliver { from, .. }) = rb.decode(&p) else { panic!() };
        assert_eq!(from, a);
        // source keys: a peer counts as its /64, a local microVM as its /128
        let vm = Prefix64::of(&b).workload_address(AddressKind::MicroVm, 1).unwrap();
        assert_eq!(rb.source_key(&cli), Prefix64::of(&a).network());
        assert_eq!(rb.source_key(&a), Prefix64::of(&a).network());
        assert_eq!(rb.source_key(&vm), vm);
    }

    #[test]
    fn calls_in_flight_are_bounded_per_source() {
        let (a, b, c) = (node(1), node(2), node(3));
        let mut rb = IpcRouter::new(b);
        let a_task = Prefix64::of(&a).workload_address(AddressKind::Task, 5).unwrap();
        let vm1 = Prefix64::of(&b).workload_address(AddressKind::MicroVm, 1).unwrap();
        let vm2 = Prefix64::of(&b).workload_address(AddressKind::MicroVm, 2).unwrap();
        for i in 0..CALLS_PER_SOURCE {
            // the peer's node /128 and its task /128s share one quota
            assert!(rb.admit_call(if i % 2 == 0 { &a } else { &a_task }));
        }
        assert!(!rb.admit_call(&a));
        assert!(!rb.admit_call(&a_task));
        assert_eq!(rb.counters.over_quota, 2);
        // others are unaffected: another peer, each microVM on its own
        for _ in 0..CALLS_PER_SOURCE {
            assert!(rb.admit_call(&c));
            assert!(rb.admit_call(&vm1));
        }
        assert!(!rb.admit_call(&vm1));
        assert!(rb.admit_call(&vm2));
        // an answered call gives the slot back
        rb.call_done(&a_task);
        assert_eq!(rb.calls_in_flight(&a), CALLS_PER_SOURCE - 1);
        assert!(rb.admit_call(&a));
        assert!(!rb.admit_call(&a));
        for _ in 0..CALLS_PER_SOURCE + 5 {
            rb.call_done(&vm2); // more answers than calls: never underflows
        }
        assert_eq!(rb.calls_in_flight(&vm2), 0);
        assert_eq!(rb.counters.over_quota, 4);
    }

    #[test]
    fn unbound_and_foreign_addresses_are_counted() {
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let mut rb = IpcRouter::new(b);
        let t = rb.bind(3).unwrap();
        let unbound = Prefix64::of(&b).workload_address(AddressKind::Task, 99).unwrap();
        let p = ra.message_packet(None, unbound, 1, WireMsg::default()).unwrap();
        assert_eq!(rb.decode(&p), Err(RouteError::Unbound(unbound)));
        assert_eq!(rb.counters.dropped_unbound, 1);
        assert_eq!(IpcRouter::refused_call(&p), None); // a send: no answer
        let c = ra.message_packet(None, unbound, 1, WireMsg { call_id: 5, ..Default::default() }).unwrap();
        assert_eq!(rb.decode(&c), Err(RouteError::Unbound(unbound)));
        assert_eq!(IpcRouter::refused_call(&c), Some((a, unbound, 5)));
        let e = rb.error_packet(unbound, a, 5, 6).unwrap();
        assert_eq!(ra.decode(&e), Ok(Inbound::Error { from: unbound, call_id: 5, code: 6 }));
        // a bound /128 with another endpoint
        let p = ra.message_packet(None, t, 4, WireMsg::default()).unwrap();
        assert_eq!(rb.decode(&p), Err(RouteError::WrongEndpoint));
        // someone else's prefix
        let p = ra.message_packet(None, node(3), 1, WireMsg::default()).unwrap();
        assert_eq!(rb.decode(&p), Err(RouteError::NotOurPrefix));
        // after unbind
        assert!(rb.unbind(&t));
        let p = ra.message_packet(None, t, 0, WireMsg::default()).unwrap();
        assert_eq!(rb.decode(&p), Err(RouteError::Unbound(t)));
        assert_eq!(rb.counters.dropped_unbound, 3);
        assert_eq!(rb.counters.dropped_malformed, 2);
        // replies only to the node address
        let p = ra.reply_packet(a, t, WireMsg { call_id: 1, ..Default::default() }).unwrap();
        assert!(rb.decode(&p).is_err());
    }

    #[test]
    fn hostile_frames_return_errors() {
        let (a, b) = (node(1), node(2));
        let mut rb = IpcRouter::new(b);
        let ep = rb.bind(3).unwrap();
        let good = FabricFrame::message(a, ep, 0, KIND_CALL, WireMsg { call_id: 1, ..Default::default() }.encode());
        let pkt = ipv6::frame_to_packet(&good).unwrap();
        assert!(rb.decode(&pkt).is_ok());
        // wrong payload sizes, kinds, call ids
        for (kind, mk, payload) in [
            (FrameKind::Message, KIND_CALL, Vec::new()),
            (FrameKind::Message, KIND_CALL, alloc::vec![0u8; 47]),
            (FrameKind::Message, KIND_CALL, alloc::vec![0u8; 49]),
            (FrameKind::Message, KIND_CALL, WireMsg::default().encode()), // call without id
            (FrameKind::Message, KIND_SEND, WireMsg { call_id: 1, ..Default::default() }.encode()),
            (FrameKind::Message, 77, WireMsg::default().encode()),
            (FrameKind::Ack, 0, Vec::new()),
        ] {
            let mut f = FabricFrame::message(a, ep, 0, mk, payload);
            f.kind = kind;
            let p = ipv6::frame_to_packet(&f).unwrap();
            assert!(rb.decode(&p).is_err(), "{kind:?} {mk}");
        }
        let mut f = FabricFrame::message(a, b, 0, 0, alloc::vec![0u8; 15]);
        f.kind = FrameKind::Error;
        assert_eq!(rb.decode(&ipv6::frame_to_packet(&f).unwrap()), Err(RouteError::BadPayload));
        // every truncation and every single-byte corruption of a good packet: an error or a
        // valid decode, never a panic
        for n in 0..pkt.len() {
            assert!(rb.decode(&pkt[..n]).is_err());
            assert!(IpcRouter::refused_call(&pkt[..n]).is_none());
        }
        let mut seed = 0x1234_5678u32;
        for i in 0..pkt.len() {
            for _ in 0..8 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let mut p = pkt.clone();
                p[i] ^= (seed >> 16) as u8 | 1;
                let _ = rb.decode(&p);
                let _ = IpcRouter::refused_call(&p);
            }
        }
        // random garbage
        for len in [0usize, 1, 40, 48, 104, 200, 1500] {
            let mut p = alloc::vec![0u8; len];
            for b in p.iter_mut() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            if len > 0 {
                p[0] = 0x60;
            }
            assert!(rb.decode(&p).is_err());
        }
        assert!(rb.counters.dropped_malformed > 0);
    }
}
