//! # netfabric — Catenary's IPv6 fabric
//!
//! `netfabric` is a `#![no_std]` + `alloc`, `#![forbid(unsafe_code)]`, **sans-I/O** library:
//! every entry point takes bytes plus a caller-provided clock ([`Instant`]) and returns bytes
//! plus events ([`Output`]). It never opens a socket, reads a clock or spawns a thread, so the
//! same code runs inside the Catenary kernel, in host tests and in host tools.
//!
//! ## Core types
//!
//! * **[`Identity`]** ([`identity`]) — a node identity: an x25519 static key pair. Everything about
//!   a node's addressing follows from its public key.
//! * **Address scheme** ([`identity`]) — the node's /64 prefix is *self-certifying*:
//!   `fd` ‖ first 7 bytes of `BLAKE2s-256("catenary-prefix-v1" ‖ public_key)`. Inside it the node
//!   owns `prefix::1` ([`Identity::node_address`]), and an [`AddressAllocator`] hands out one /128
//!   per microVM and per task with the kind encoded in the interface identifier, so allocations
//!   never collide. [`identity::verify`] checks that an address belongs to a public key.
//! * **[`Device`]** ([`device`]) — our side of the fabric: the static key, the set of peers, the
//!   cryptokey routing table, the cookie checker and the counters. Its three entry points are
//!   [`Device::handle_incoming`] (a UDP datagram from the network), [`Device::send`] (an IP
//!   packet to tunnel) and [`Device::tick`] (timers). Each returns an [`Output`]:
//!   [`Transmit`]s (datagrams to put on the wire, with their destination), [`Received`] (decrypted
//!   and source-validated inner IP packets) and [`Event`]s (handshake completed, keys expired,
//!   packet dropped with a [`DropReason`], …).
//! * **Peer / session state machine** ([`device`]) — each peer has a handshake state
//!   (idle → initiation sent → established) and up to three keypairs: *current*, *previous* and
//!   *next* (a responder's keypair that is not confirmed until the initiator's first transport
//!   packet arrives), exactly as WireGuard does. Timers implement WireGuard's rekey and reject
//!   rules, keepalives, handshake retransmission with jitter and persistent keepalive.
//! * **Sessions** ([`noise`], [`messages`], [`cookie`], [`replay`]) — wire-compatible with
//!   WireGuard: `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, message types 1–4 with WireGuard's exact
//!   layouts, mac1/mac2, cookie replies (XChaCha20-Poly1305) under load, TAI64N timestamps with an
//!   initiation replay check, and an 8128-message sliding replay window. The Noise handshake is
//!   written in this crate from the protocol description (no Noise crate matches WireGuard's exact
//!   construction in `no_std`); the primitives come from `x25519-dalek`, `chacha20poly1305`,
//!   `blake2` and `hmac`.
//! * **Cryptokey routing** ([`routing`]) — a [`RoutingTable`] maps prefixes (IPv6, and IPv4 for
//!   completeness) to peers. Outgoing packets pick the peer by longest-prefix match on the
//!   destination; an incoming packet whose inner source is not owned by the peer it arrived from
//!   is dropped and counted in [`Counters`].
//! * **IPC frames** ([`ipc`], [`ipv6`]) — [`FabricFrame`] is the versioned, length-checked wire
//!   format of an IPC message between nodes: a 56-byte header (magic `"CFAB"`, version, frame
//!   kind, flags, source and destination /128, endpoint id, message kind, payload length) and the
//!   payload. Frames travel in IPv6/UDP to port [`ipc::FABRIC_IPC_PORT`] (51900) inside the
//!   tunnel; [`ipv6`] builds and parses those packets with a correct UDP checksum. All decoders
//!   return errors on malformed input and never panic.
//!
//! ## Minimal use
//!
//! ```
//! use netfabric::{Device, Identity, Instant, PeerConfig};
//! use rand_core::OsRng;
//! # fn main() {
//! let a_id = Identity::generate(&mut OsRng);
//! let b_id = Identity::generate(&mut OsRng);
//! let mut a = Device::new(a_id.clone(), Box::new(OsRng));
//! let mut b = Device::new(b_id.clone(), Box::new(OsRng));
//! let b_addr: core::net::SocketAddr = "[fd00::2]:51820".parse().unwrap();
//! let a_addr: core::net::SocketAddr = "[fd00::1]:51820".parse().unwrap();
//! let pb = a.add_peer(PeerConfig::new(b_id.public_key()).with_endpoint(b_addr)).unwrap();
//! let _pa = b.add_peer(PeerConfig::new(a_id.public_key())).unwrap();
//! let now = Instant::from_secs(1);
//! // An IPv6 packet from A's node address to B's node address.
//! let pkt = netfabric::ipv6::build_icmpv6_echo(a_id.node_address(), b_id.node_address(), true, 1, 1, b"hi");
//! let out = a.send(&pkt, now).unwrap();          // no session yet: queues, emits an initiation
//! let init = &out.transmits[0];
//! let resp = b.handle_incoming(&init.data, a_addr, now); // B answers with a response
//! let out = a.handle_incoming(&resp.transmits[0].data, b_addr, now); // A: session up, sends data
//! let got = b.handle_incoming(&out.transmits[0].data, a_addr, now);
//! assert_eq!(got.packets[0].packet, pkt);
//! # let _ = pb;
//! # }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod cookie;
pub mod crypto;
pub mod device;
pub mod identity;
pub mod ipc;
pub mod ipv6;
pub mod messages;
pub mod noise;
pub mod ratelimit;
pub mod replay;
pub mod routing;
pub mod tai64n;
pub mod time;

pub use device::{
    AddPeerError, Counters, Device, DropReason, Event, Output, PeerConfig, PeerCounters, PeerId, Received,
    SendError, Transmit,
};
pub use identity::{AddressAllocator, AddressKind, Identity, Prefix64};
pub use ipc::{FabricFrame, FrameError, FrameKind};
pub use routing::{IpPrefix, RoutingTable};
pub use time::Instant;
