//! Fabric IPC routing: which /128 of the node's /64 names which local IPC endpoint, and the
//! wire format of fabric IPC ([`Frame`]) inside a [`FabricFrame`] (IPv6/UDP port
//! [`FABRIC_IPC_PORT`] inside the encrypted tunnel). The reliability rules (retransmission,
//! duplicate suppression, ordered sends) are in [`crate::rpc`]; this module only encodes and
//! checks.
//!
//! The payload of every IPC frame starts with a 32-byte header (integers big-endian):
//!
//! | offset | size | field                                                               |
//! |-------:|-----:|---------------------------------------------------------------------|
//! | 0      | 1    | payload version, [`WIRE_VERSION`] (= 2)                             |
//! | 1      | 7    | reserved, must be 0                                                 |
//! | 8      | 8    | incarnation: the caller's (call, reply, error) or the stream sender's (send, ack) random instance number, never 0 |
//! | 16     | 8    | id: call id (call, reply, error; never 0), sequence number (send; never 0), cumulative ack (ack) |
//! | 24     | 8    | aux: watermark (call; ≤ id), stream number (send, ack; never 0), 0 (reply), IPC error code (error; never 0) |
//! | 32     | 40   | label + 4 words (call, send and reply only)                         |
//!
//! | frame kind, message kind | payload | from → to |
//! |---|---|---|
//! | Message, [`KIND_CALL`] | 72 | caller's /128 → callee's task /128 |
//! | Message, [`KIND_SEND`] | 72 | sender's /128 → receiver's task /128 |
//! | Reply (message kind 0, endpoint 0) | 72 | callee's /128 → caller's /128 |
//! | Error (message kind 0, endpoint 0) | 32 | callee's /128 → caller's /128 |
//! | Ack (message kind 0, endpoint 0) | 32 | receiver's /128 → sender's /128 |
//!
//! The FabricFrame flags must be 0. Only a task /128 that was bound to an endpoint
//! ([`IpcRouter::bind`], reached through the kernel's capability-checked `bind_address`)
//! names a local endpoint; a Message's endpoint field must be 0 or that endpoint. The wire
//! never picks an endpoint by number: a message to the node's own /128 is refused like one to
//! an unbound /128. Replies, errors and acks are taken at the node's /128 and its bound
//! /128s only.
//!
//! Everything here comes from the network: [`IpcRouter::decode`] returns [`RouteError`] and
//! never panics; every refused frame is counted. The sender of a delivered message is the
//! packet's source /128, which the fabric authenticated (netfabric accepts a decrypted packet
//! only if its source lies in the sending peer's /64, derived from the peer's key; a microVM's
//! port accepts only the VM's own /128).

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
/// Version of the IPC payload format (1 was the unreliable 48-byte format).
pub const WIRE_VERSION: u8 = 2;
/// Length of the payload header every frame carries.
pub const HEADER: usize = 32;
/// Payload length of call, send and reply frames.
pub const MSG_PAYLOAD: usize = HEADER + 40;
/// Payload length of error and ack frames.
pub const SHORT_PAYLOAD: usize = HEADER;

/// The message an IPC call, send or reply carries: label and 4 words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Body {
    pub label: u64,
    pub words: [u64; 4],
}

/// One fabric IPC frame, decoded (and checked) or to be encoded. `src`/`dst` are the IPv6
/// source and destination /128s; `inc` the incarnation (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A call; `endpoint` is the frame's endpoint field when encoding and the local endpoint
    /// the destination /128 is bound to once decoded.
    Call { src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, inc: u64, call_id: u64, watermark: u64, body: Body },
    /// Send number `seq` of stream `stream` from `src` to `dst`.
    Send { src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, inc: u64, stream: u64, seq: u64, body: Body },
    /// The answer to call `call_id` of incarnation `inc` of the caller `dst`.
    Reply { src: Ipv6Addr, dst: Ipv6Addr, inc: u64, call_id: u64, body: Body },
    /// Call `call_id` failed at `src` with IPC error `code`.
    Error { src: Ipv6Addr, dst: Ipv6Addr, inc: u64, call_id: u64, code: u64 },
    /// `src` delivered sends `1..=seq` of stream (`inc`, `stream`) from `dst`.
    Ack { src: Ipv6Addr, dst: Ipv6Addr, inc: u64, stream: u64, seq: u64 },
}

impl Frame {
    pub fn src(&self) -> Ipv6Addr {
        match *self {
            Frame::Call { src, .. } | Frame::Send { src, .. } | Frame::Reply { src, .. } | Frame::Error { src, .. } | Frame::Ack { src, .. } => src,
        }
    }
    pub fn dst(&self) -> Ipv6Addr {
        match *self {
            Frame::Call { dst, .. } | Frame::Send { dst, .. } | Frame::Reply { dst, .. } | Frame::Error { dst, .. } | Frame::Ack { dst, .. } => dst,
        }
    }

    /// The IPv6/UDP packet carrying this frame (None only if netfabric refuses to encode it).
    pub fn packet(&self) -> Option<Vec<u8>> {
        let payload = |inc: u64, id: u64, aux: u64, body: Option<&Body>| {
            let mut v = Vec::with_capacity(MSG_PAYLOAD);
            v.push(WIRE_VERSION);
            v.extend_from_slice(&[0; 7]);
            for x in [inc, id, aux] {
                v.extend_from_slice(&x.to_be_bytes());
            }
            if let Some(b) = body {
                v.extend_from_slice(&b.label.to_be_bytes());
                for w in b.words {
                    v.extend_from_slice(&w.to_be_bytes());
                }
            }
            v
        };
        let f = match *self {
            Frame::Call { src, dst, endpoint, inc, call_id, watermark, ref body } => {
                FabricFrame::message(src, dst, endpoint, KIND_CALL, payload(inc, call_id, watermark, Some(body)))
            }
            Frame::Send { src, dst, endpoint, inc, stream, seq, ref body } => {
                FabricFrame::message(src, dst, endpoint, KIND_SEND, payload(inc, seq, stream, Some(body)))
            }
            Frame::Reply { src, dst, inc, call_id, ref body } => {
                FabricFrame { kind: FrameKind::Reply, ..FabricFrame::message(src, dst, 0, 0, payload(inc, call_id, 0, Some(body))) }
            }
            Frame::Error { src, dst, inc, call_id, code } => {
                FabricFrame { kind: FrameKind::Error, ..FabricFrame::message(src, dst, 0, 0, payload(inc, call_id, code, None)) }
            }
            Frame::Ack { src, dst, inc, stream, seq } => {
                FabricFrame { kind: FrameKind::Ack, ..FabricFrame::message(src, dst, 0, 0, payload(inc, seq, stream, None)) }
            }
        };
        ipv6::frame_to_packet(&f).ok()
    }
}

/// The checked payload header and body.
struct Payload {
    inc: u64,
    id: u64,
    aux: u64,
    body: Option<Body>,
}

fn be64(b: &[u8], at: usize) -> Result<u64, RouteError> {
    let s = b.get(at..at + 8).ok_or(RouteError::BadPayload)?;
    Ok(u64::from_be_bytes(s.try_into().map_err(|_| RouteError::BadPayload)?))
}

/// Check a payload: exact length, version, reserved bytes, incarnation never 0.
fn parse_payload(b: &[u8], with_body: bool) -> Result<Payload, RouteError> {
    if b.len() != if with_body { MSG_PAYLOAD } else { SHORT_PAYLOAD } {
        return Err(RouteError::BadPayload);
    }
    if b.first() != Some(&WIRE_VERSION) {
        return Err(RouteError::BadVersion);
    }
    if b.get(1..8).is_none_or(|r| r.iter().any(|&x| x != 0)) {
        return Err(RouteError::BadPayload);
    }
    let (inc, id, aux) = (be64(b, 8)?, be64(b, 16)?, be64(b, 24)?);
    if inc == 0 {
        return Err(RouteError::BadPayload);
    }
    let body = if with_body {
        Some(Body { label: be64(b, 32)?, words: [be64(b, 40)?, be64(b, 48)?, be64(b, 56)?, be64(b, 64)?] })
    } else {
        None
    };
    Ok(Payload { inc, id, aux, body })
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
    /// The payload is not what the frame kind needs (length, reserved bytes, zero ids).
    BadPayload,
    /// The payload version is not [`WIRE_VERSION`].
    BadVersion,
    /// Unknown message kind, or fields that must be 0 are not (flags, endpoint, kind).
    BadKind,
}

/// Calls from one source (a peer node's /64, or one local microVM's /128) that may be in
/// flight here at once; the kernel's table of calls from other nodes holds 256, so no single
/// source can fill it. Enforced by [`crate::rpc::Rpc`].
pub const CALLS_PER_SOURCE: u32 = 16;

/// Counters the node prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Calls and sends decoded for a bound /128.
    pub delivered: u64,
    pub replies: u64,
    pub errors_in: u64,
    pub acks_in: u64,
    pub dropped_unbound: u64,
    pub dropped_malformed: u64,
}

/// Who a call or stream from `from` counts against, at the node whose /64 is `ours`: the peer
/// node's /64 (its network address) for another node — the fabric authenticated that much and
/// no more — or the /128 of a microVM of this node.
pub fn source_key(ours: &Prefix64, from: &Ipv6Addr) -> Ipv6Addr {
    if ours.contains(from) {
        *from
    } else {
        Prefix64::of(from).network()
    }
}

/// The node's /128 → endpoint table and its task address allocator.
pub struct IpcRouter {
    node: Ipv6Addr,
    prefix: Prefix64,
    alloc: AddressAllocator,
    bound: BTreeMap<Ipv6Addr, u64>,
    pub counters: RouteCounters,
}

impl IpcRouter {
    /// A router for the node whose own address is `node` (`prefix::1`).
    pub fn new(node: Ipv6Addr) -> IpcRouter {
        let prefix = Prefix64::of(&node);
        IpcRouter { node, prefix, alloc: AddressAllocator::new(prefix), bound: BTreeMap::new(), counters: RouteCounters::default() }
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

    /// Take microVM /128 `addr` of the node's /64 (the workload service numbers its
    /// workloads' addresses); false if it is not one or is live.
    pub fn claim_vm(&mut self, addr: Ipv6Addr) -> bool {
        self.alloc.claim(addr)
    }

    /// Forget a /128 (its endpoint closed); it is never handed out again.
    pub fn unbind(&mut self, addr: &Ipv6Addr) -> bool {
        self.alloc.release(addr);
        self.bound.remove(addr).is_some()
    }

    /// Record that `addr`, a task /128 of this node's /64, names `endpoint`, as the table
    /// that hands them out says (the kernel's, for the ring-3 `netd`, which keeps this one
    /// as its copy for decoding). False (nothing recorded) for the node's /128, endpoint 0 or
    /// an address outside the /64.
    pub fn adopt_binding(&mut self, addr: Ipv6Addr, endpoint: u64) -> bool {
        if endpoint == 0 || addr == self.node || !self.prefix.contains(&addr) {
            return false;
        }
        self.bound.insert(addr, endpoint);
        true
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

    /// See [`source_key`].
    pub fn source_key(&self, from: &Ipv6Addr) -> Ipv6Addr {
        source_key(&self.prefix, from)
    }

    /// The /128 a task's sends and calls go out from: its bound /128 (`from`) if it is one of
    /// ours, else the node's.
    pub fn source_for(&self, from: Option<Ipv6Addr>) -> Ipv6Addr {
        match from {
            Some(a) if self.bound.contains_key(&a) => a,
            _ => self.node,
        }
    }

    /// Decode an inbound IPv6 packet (already decrypted) and decide where it goes. Refusals
    /// are counted.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Frame, RouteError> {
        let r = self.decode_inner(packet);
        match &r {
            Ok(Frame::Call { .. } | Frame::Send { .. }) => self.counters.delivered += 1,
            Ok(Frame::Reply { .. }) => self.counters.replies += 1,
            Ok(Frame::Error { .. }) => self.counters.errors_in += 1,
            Ok(Frame::Ack { .. }) => self.counters.acks_in += 1,
            Err(RouteError::Unbound(_)) => self.counters.dropped_unbound += 1,
            Err(_) => self.counters.dropped_malformed += 1,
        }
        r
    }

    fn decode_inner(&self, packet: &[u8]) -> Result<Frame, RouteError> {
        let f = ipv6::packet_to_frame(packet).map_err(RouteError::Packet)?;
        if !self.prefix.contains(&f.dst) {
            return Err(RouteError::NotOurPrefix);
        }
        if f.flags != 0 {
            return Err(RouteError::BadKind);
        }
        let (src, dst) = (f.src, f.dst);
        if f.kind == FrameKind::Message {
            if f.message_kind != KIND_SEND && f.message_kind != KIND_CALL {
                return Err(RouteError::BadKind);
            }
            let p = parse_payload(&f.payload, true)?;
            let body = p.body.ok_or(RouteError::BadPayload)?;
            if p.id == 0 {
                return Err(RouteError::BadPayload);
            }
            if f.message_kind == KIND_CALL && p.aux > p.id {
                return Err(RouteError::BadPayload); // the watermark is at most the call's own id
            }
            if f.message_kind == KIND_SEND && p.aux == 0 {
                return Err(RouteError::BadPayload);
            }
            // only a bound /128 names an endpoint; the node's own /128 names none
            let ep = self.bound.get(&dst).copied().ok_or(RouteError::Unbound(dst))?;
            if f.endpoint != 0 && f.endpoint != ep {
                return Err(RouteError::WrongEndpoint);
            }
            return Ok(if f.message_kind == KIND_CALL {
                Frame::Call { src, dst, endpoint: ep, inc: p.inc, call_id: p.id, watermark: p.aux, body }
            } else {
                Frame::Send { src, dst, endpoint: ep, inc: p.inc, stream: p.aux, seq: p.id, body }
            });
        }
        if f.endpoint != 0 || f.message_kind != 0 {
            return Err(RouteError::BadKind);
        }
        // answers come back to the /128 the call or send went out from: the node's, or a bound one
        if !self.is_local(&dst) {
            return Err(RouteError::Unbound(dst));
        }
        match f.kind {
            FrameKind::Reply => {
                let p = parse_payload(&f.payload, true)?;
                match (p.id, p.aux, p.body) {
                    (call_id, 0, Some(body)) if call_id != 0 => Ok(Frame::Reply { src, dst, inc: p.inc, call_id, body }),
                    _ => Err(RouteError::BadPayload),
                }
            }
            FrameKind::Error => {
                let p = parse_payload(&f.payload, false)?;
                if p.id == 0 || p.aux == 0 {
                    return Err(RouteError::BadPayload);
                }
                Ok(Frame::Error { src, dst, inc: p.inc, call_id: p.id, code: p.aux })
            }
            FrameKind::Ack => {
                let p = parse_payload(&f.payload, false)?;
                if p.aux == 0 {
                    return Err(RouteError::BadPayload);
                }
                Ok(Frame::Ack { src, dst, inc: p.inc, stream: p.aux, seq: p.id })
            }
            FrameKind::Message => Err(RouteError::BadKind),
        }
    }

    /// For a well-formed call frame that could not be delivered (unbound /128, wrong
    /// endpoint): the Error frame with IPC error `code` that answers it, so that the caller
    /// does not wait for its timeout. None for anything else (sends, replies, malformed
    /// frames: no answer).
    pub fn refusal(packet: &[u8], code: u64) -> Option<Frame> {
        let f = ipv6::packet_to_frame(packet).ok()?;
        if f.kind != FrameKind::Message || f.message_kind != KIND_CALL || f.flags != 0 {
            return None;
        }
        let p = parse_payload(&f.payload, true).ok()?;
        (p.id != 0 && p.aux <= p.id && code != 0).then_some(Frame::Error { src: f.dst, dst: f.src, inc: p.inc, call_id: p.id, code })
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
    const B: Body = Body { label: 5, words: [1, 2, 3, 4] };

    fn call(src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, call_id: u64) -> Frame {
        Frame::Call { src, dst, endpoint, inc: 77, call_id, watermark: call_id, body: B }
    }

    #[test]
    fn every_kind_round_trips() {
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let mut rb = IpcRouter::new(b);
        let t = rb.bind(7).unwrap();
        assert_ne!(t, b);
        assert!(rb.in_prefix(&t) && rb.is_local(&t));
        let p = call(a, t, 0, 42).packet().unwrap();
        assert!(is_ipc_packet(&p));
        assert_eq!(p.len(), 40 + 8 + 56 + MSG_PAYLOAD);
        assert_eq!(rb.decode(&p), Ok(Frame::Call { src: a, dst: t, endpoint: 7, inc: 77, call_id: 42, watermark: 42, body: B }));
        let s = Frame::Send { src: a, dst: t, endpoint: 7, inc: 9, stream: 3, seq: 1, body: B };
        assert_eq!(rb.decode(&s.packet().unwrap()), Ok(s));
        for f in [
            Frame::Reply { src: t, dst: a, inc: 77, call_id: 42, body: B },
            Frame::Error { src: t, dst: a, inc: 77, call_id: 43, code: 6 },
            Frame::Ack { src: t, dst: a, inc: 9, stream: 3, seq: 0 },
            Frame::Ack { src: t, dst: a, inc: 9, stream: 3, seq: u64::MAX },
        ] {
            assert_eq!(ra.decode(&f.packet().unwrap()), Ok(f));
        }
        assert_eq!(rb.counters.delivered, 2);
        assert_eq!((ra.counters.replies, ra.counters.errors_in, ra.counters.acks_in), (1, 1, 2));
    }

    #[test]
    fn node_address_names_no_endpoint() {
        // the wire never picks an endpoint by number: only bound /128s deliver
        let (a, b) = (node(1), node(2));
        let mut rb = IpcRouter::new(b);
        for ep in [0, 1, 2, 9, u64::MAX] {
            let p = Frame::Send { src: a, dst: b, endpoint: ep, inc: 1, stream: 1, seq: 1, body: B }.packet().unwrap();
            assert_eq!(rb.decode(&p), Err(RouteError::Unbound(b)), "endpoint {ep}");
            let c = call(a, b, ep, 3).packet().unwrap();
            assert_eq!(rb.decode(&c), Err(RouteError::Unbound(b)));
            assert_eq!(IpcRouter::refusal(&c, 6), Some(Frame::Error { src: b, dst: a, inc: 77, call_id: 3, code: 6 }));
            assert_eq!(IpcRouter::refusal(&p, 6), None); // a send: no answer
        }
        assert_eq!(rb.counters.delivered, 0);
        assert_eq!(rb.counters.dropped_unbound, 10);
    }

    #[test]
    fn adopted_bindings_are_task_addresses_of_our_prefix_only() {
        // the ring-3 netd's copy of the kernel's table: what it adopts decodes like a bind
        let (a, b) = (node(1), node(2));
        let mut rb = IpcRouter::new(b);
        let t = Prefix64::of(&b).workload_address(AddressKind::Task, 1).unwrap();
        let p = call(a, t, 0, 3).packet().unwrap();
        assert_eq!(rb.decode(&p), Err(RouteError::Unbound(t)));
        assert!(!rb.adopt_binding(t, 0));
        assert!(!rb.adopt_binding(b, 5)); // the node's /128 never names an endpoint
        assert!(!rb.adopt_binding(Prefix64::of(&a).workload_address(AddressKind::Task, 1).unwrap(), 5));
        assert!(rb.adopt_binding(t, 5));
        assert!(matches!(rb.decode(&p), Ok(Frame::Call { endpoint: 5, .. })));
        assert!(rb.unbind(&t));
        assert_eq!(rb.decode(&p), Err(RouteError::Unbound(t)));
    }

    #[test]
    fn sources_and_source_keys() {
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let rb = IpcRouter::new(b);
        let cli = ra.bind(6).unwrap();
        assert_eq!(ra.source_for(Some(cli)), cli);
        assert_eq!(ra.source_for(None), a);
        // a /128 we do not own is never used as the source
        let foreign = Prefix64::of(&a).workload_address(AddressKind::Task, 77).unwrap();
        assert_eq!(ra.source_for(Some(foreign)), a);
        // source keys: a peer counts as its /64, a local microVM as its /128
        let vm = Prefix64::of(&b).workload_address(AddressKind::MicroVm, 1).unwrap();
        assert_eq!(rb.source_key(&cli), Prefix64::of(&a).network());
        assert_eq!(rb.source_key(&a), Prefix64::of(&a).network());
        assert_eq!(rb.source_key(&vm), vm);
    }

    #[test]
    fn unbound_and_foreign_addresses_are_counted() {
        let (a, b) = (node(1), node(2));
        let mut ra = IpcRouter::new(a);
        let mut rb = IpcRouter::new(b);
        let t = rb.bind(3).unwrap();
        let unbound = Prefix64::of(&b).workload_address(AddressKind::Task, 99).unwrap();
        assert_eq!(rb.decode(&call(a, unbound, 1, 5).packet().unwrap()), Err(RouteError::Unbound(unbound)));
        assert_eq!(rb.counters.dropped_unbound, 1);
        // a bound /128 with another endpoint
        assert_eq!(rb.decode(&call(a, t, 4, 5).packet().unwrap()), Err(RouteError::WrongEndpoint));
        // someone else's prefix
        assert_eq!(rb.decode(&call(a, node(3), 1, 5).packet().unwrap()), Err(RouteError::NotOurPrefix));
        // after unbind
        assert!(rb.unbind(&t));
        assert_eq!(rb.decode(&call(a, t, 0, 5).packet().unwrap()), Err(RouteError::Unbound(t)));
        assert_eq!(rb.counters.dropped_unbound, 2);
        assert_eq!(rb.counters.dropped_malformed, 2);
        // answers only to the node's /128 and bound /128s
        let p = Frame::Reply { src: a, dst: t, inc: 1, call_id: 1, body: B }.packet().unwrap();
        assert_eq!(rb.decode(&p), Err(RouteError::Unbound(t)));
        let p = Frame::Ack { src: b, dst: unbound, inc: 1, stream: 1, seq: 1 }.packet().unwrap();
        assert!(ra.decode(&p).is_err());
    }

    /// A payload with the given header words (and a body for 72-byte kinds).
    fn raw(version: u8, inc: u64, id: u64, aux: u64, body: bool) -> Vec<u8> {
        let mut v = alloc::vec![version, 0, 0, 0, 0, 0, 0, 0];
        for x in [inc, id, aux] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        if body {
            v.extend_from_slice(&[0u8; 40]);
        }
        v
    }

    #[test]
    fn hostile_fields_are_refused() {
        let (a, b) = (node(1), node(2));
        let mut rb = IpcRouter::new(b);
        let ep = rb.bind(3).unwrap();
        let pkt = call(a, ep, 0, 1).packet().unwrap();
        assert!(rb.decode(&pkt).is_ok());
        let mut reserved = raw(2, 1, 1, 1, true);
        reserved[3] = 1;
        let msg = |mk: u32, payload: Vec<u8>| FabricFrame::message(a, ep, 0, mk, payload);
        let with = |kind: FrameKind, payload: Vec<u8>| FabricFrame { kind, ..FabricFrame::message(a, b, 0, 0, payload) };
        for (f, want) in [
            (msg(KIND_CALL, Vec::new()), RouteError::BadPayload),
            (msg(KIND_CALL, alloc::vec![2u8; 71]), RouteError::BadPayload),
            (msg(KIND_CALL, alloc::vec![2u8; 73]), RouteError::BadPayload),
            (msg(KIND_CALL, raw(1, 1, 1, 1, true)), RouteError::BadVersion),
            (msg(KIND_CALL, raw(3, 1, 1, 1, true)), RouteError::BadVersion),
            (msg(KIND_CALL, reserved.clone()), RouteError::BadPayload),
            (msg(KIND_CALL, raw(2, 0, 1, 1, true)), RouteError::BadPayload), // no incarnation
            (msg(KIND_CALL, raw(2, 1, 0, 0, true)), RouteError::BadPayload), // call without id
            (msg(KIND_CALL, raw(2, 1, 5, 6, true)), RouteError::BadPayload), // watermark above the id
            (msg(KIND_SEND, raw(2, 1, 0, 1, true)), RouteError::BadPayload), // seq 0
            (msg(KIND_SEND, raw(2, 1, 1, 0, true)), RouteError::BadPayload), // stream 0
            (msg(77, raw(2, 1, 1, 1, true)), RouteError::BadKind),
            (FabricFrame { flags: 1, ..msg(KIND_CALL, raw(2, 1, 1, 1, true)) }, RouteError::BadKind),
            (with(FrameKind::Reply, raw(2, 1, 1, 0, false)), RouteError::BadPayload),
            (with(FrameKind::Reply, raw(2, 1, 0, 0, true)), RouteError::BadPayload),
            (with(FrameKind::Reply, raw(2, 1, 1, 1, true)), RouteError::BadPayload),
            (with(FrameKind::Error, raw(2, 1, 1, 0, false)), RouteError::BadPayload), // code 0
            (with(FrameKind::Error, raw(2, 1, 0, 3, false)), RouteError::BadPayload),
            (with(FrameKind::Error, raw(2, 1, 1, 3, true)), RouteError::BadPayload),
            (with(FrameKind::Ack, raw(2, 1, 1, 0, false)), RouteError::BadPayload), // stream 0
            (with(FrameKind::Ack, raw(2, 0, 1, 1, false)), RouteError::BadPayload),
            (FabricFrame { endpoint: 1, ..with(FrameKind::Ack, raw(2, 1, 1, 1, false)) }, RouteError::BadKind),
            (FabricFrame { message_kind: 1, ..with(FrameKind::Reply, raw(2, 1, 1, 0, true)) }, RouteError::BadKind),
        ] {
            let p = ipv6::frame_to_packet(&f).unwrap();
            assert_eq!(rb.decode(&p), Err(want), "{f:?}");
        }
        assert_eq!(IpcRouter::refusal(&ipv6::frame_to_packet(&msg(KIND_CALL, raw(2, 1, 5, 6, true))).unwrap(), 6), None);
        // every truncation and every single-byte corruption of a good packet: an error or a
        // valid decode, never a panic
        for n in 0..pkt.len() {
            assert!(rb.decode(&pkt[..n]).is_err());
            assert!(IpcRouter::refusal(&pkt[..n], 6).is_none());
        }
        let mut seed = 0x1234_5678u32;
        for i in 0..pkt.len() {
            for _ in 0..8 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let mut p = pkt.clone();
                p[i] ^= (seed >> 16) as u8 | 1;
                let _ = rb.decode(&p);
                let _ = IpcRouter::refusal(&p, 6);
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
