//! Stateful NAT64 for the cluster's edge (issue 15; docs/nat64.md): IPv6 hosts inside the
//! cluster (microVMs, tasks) reach the IPv4 world through one IPv4 address of a gateway node.
//!
//! - Addresses: the RFC 6052 well-known prefix `64:ff9b::/96`; IPv4 address `a.b.c.d` is
//!   `64:ff9b::a.b.c.d` inside (RFC 6052 §2.2, /96 layout). Destinations that are not global
//!   unicast IPv4 (0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.0.0/24,
//!   192.168/16, 198.18/15, 224/4, 240/4) are refused, as RFC 6052 §3.1 requires for the well-known prefix.
//! - State (RFC 6146): endpoint-independent mapping, address- and port-dependent filtering,
//!   bounded tables with the RFC's timeouts ([`table`]).
//! - Translation (RFC 7915, [`translate`]): TCP, UDP, ICMP echo, and the ICMP errors that carry
//!   a packet (destination unreachable, packet too big ↔ fragmentation needed, time exceeded,
//!   protocol unreachable ↔ parameter problem), with the packet inside translated too and every
//!   checksum recomputed. **Fragments are dropped deliberately** (IPv4 with MF or an offset, the
//!   IPv6 Fragment header) and counted: the translated side sets DF, the fabric's MTU is known,
//!   and reassembly state is a memory sink a hostile sender can fill. Whole packets too big for
//!   the next hop get fragmentation-needed / packet-too-big, or IPv6 fragments ([`toobig`]). IPv6 extension headers
//!   other than none are dropped likewise; IPv4 options are ignored.
//!
//! Everything that arrives is hostile: parsing is etherparse's, every length is checked
//! against the slice, nothing panics (the fuzz target `nat64_packets` runs both directions),
//! and the tables never grow past their bounds.
//!
//! This crate is the only IPv4 code in Catenary: the translator, the uplink's Ethernet and
//! ARP ([`uplink`]) and the gateway that joins them ([`gateway`]); the ring-3 service `natd`
//! only moves packets and frames.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod dns64;
pub mod dns64_tcp;
pub mod gateway;
pub mod table;
pub mod toobig;
pub mod translate;
pub mod uplink;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod uplink_tests;
#[cfg(test)]
mod dns64_tests;
#[cfg(test)]
mod toobig_tests;

use alloc::vec::Vec;
use core::time::Duration;

pub use table::Proto;

/// The RFC 6052 well-known prefix, `64:ff9b::/96`.
pub const WELL_KNOWN_PREFIX: [u8; 12] = [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0];

#[derive(Clone, Debug)]
pub struct Config {
    /// The gateway's IPv4 address on the uplink: every translated packet leaves from it.
    pub pool: [u8; 4],
    /// The IPv6 prefix (/96) the IPv4 world is mapped into.
    pub prefix: [u8; 12],
    /// Ports (and ICMP identifiers) handed out on `pool`, inclusive.
    pub ports: (u16, u16),
    pub max_bindings: usize,
    pub max_sessions: usize,
    pub udp_timeout: Duration,
    pub tcp_established_timeout: Duration,
    pub tcp_transitory_timeout: Duration,
    pub icmp_timeout: Duration,
}

impl Config {
    /// RFC 6146's defaults: UDP 5 min, TCP established 2 h 4 min, transitory 4 min, ICMP 60 s;
    /// 16,384 sessions (a few MiB at most), ports 1024–65535.
    pub fn new(pool: [u8; 4]) -> Config {
        Config {
            pool,
            prefix: WELL_KNOWN_PREFIX,
            ports: (1024, 65535),
            max_bindings: 16_384,
            max_sessions: 16_384,
            udp_timeout: Duration::from_secs(300),
            tcp_established_timeout: Duration::from_secs(7440),
            tcp_transitory_timeout: Duration::from_secs(240),
            icmp_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a packet was not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drop {
    /// Not a well-formed packet (lengths, checksums of IPv4 headers, truncated headers).
    Malformed,
    /// IPv6 destination outside the prefix, or an IPv4 destination that is not the pool.
    NotOurs,
    /// A destination that is not global unicast IPv4.
    BadAddress,
    /// Fragments are not translated (see the crate docs).
    Fragment,
    /// Extension headers, protocols and ICMP types that are not translated.
    Unsupported,
    /// The hop limit / TTL ran out.
    HopLimit,
    /// Inbound traffic for a port no inside host holds, or a TCP segment without SYN that
    /// would need new state.
    NoBinding,
    /// Inbound traffic from an address and port no inside host opened a session to.
    Filtered,
    /// The tables are full: no new state; existing sessions go on.
    TableFull,
}

/// Counters the gateway reports.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub out_translated: u64,
    pub in_translated: u64,
    pub dropped: alloc::collections::BTreeMap<Drop, u64>,
    pub expired: u64,
}

pub struct Nat64 {
    cfg: Config,
    table: table::Table,
    stats: Stats,
}

impl Nat64 {
    pub fn new(cfg: Config) -> Nat64 {
        Nat64 { cfg, table: table::Table::default(), stats: Stats::default() }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// An IPv6 packet from inside, to `prefix::a.b.c.d`: the IPv4 packet to send on the uplink.
    pub fn outbound(&mut self, now: Duration, packet: &[u8]) -> Result<Vec<u8>, Drop> {
        let r = translate::outbound(&self.cfg, &mut self.table, now, packet);
        self.count(&r, true);
        r
    }

    /// An IPv4 packet from the uplink, to the pool address: the IPv6 packet to route inside.
    pub fn inbound(&mut self, now: Duration, packet: &[u8]) -> Result<Vec<u8>, Drop> {
        let r = translate::inbound(&self.cfg, &mut self.table, now, packet);
        self.count(&r, false);
        r
    }

    /// Drop timed-out sessions (and bindings left without one). Call it every few seconds.
    pub fn expire(&mut self, now: Duration) {
        self.stats.expired += self.table.expire(now) as u64;
    }

    pub fn sessions(&self) -> usize {
        self.table.sessions()
    }

    pub fn bindings(&self) -> usize {
        self.table.bindings()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// UDP ports of the pool the gateway holds for itself (DNS64).
    pub fn reserved_udp(&self) -> usize {
        self.table.reserved_udp()
    }

    fn count(&mut self, r: &Result<Vec<u8>, Drop>, out: bool) {
        match r {
            Ok(_) if out => self.stats.out_translated += 1,
            Ok(_) => self.stats.in_translated += 1,
            Err(d) => *self.stats.dropped.entry(*d).or_default() += 1,
        }
    }
}

/// DNS64's upstream ports come from the pool and are kept from flows while in use.
impl dns64::Ports for Nat64 {
    fn claim(&mut self, port: u16) -> bool {
        (self.cfg.ports.0..=self.cfg.ports.1).contains(&port) && self.table.reserve_udp(port)
    }
    fn release(&mut self, port: u16) {
        self.table.release_udp(port);
    }
}

/// `prefix::a.b.c.d`.
pub fn embed(prefix: &[u8; 12], v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..12].copy_from_slice(prefix);
    a[12..].copy_from_slice(&v4);
    a
}

/// Global unicast IPv4 (RFC 6052 §3.1: no translation to other addresses with the
/// well-known prefix).
pub fn is_global_v4(a: [u8; 4]) -> bool {
    !(a[0] == 0
        || a[0] == 10
        || (a[0] == 192 && a[1] == 0 && a[2] == 0)
        || (a[0] == 198 && (a[1] == 18 || a[1] == 19))
        || a[0] == 127
        || (a[0] == 169 && a[1] == 254)
        || (a[0] == 172 && (16..32).contains(&a[1]))
        || (a[0] == 192 && a[1] == 168)
        || (a[0] == 100 && (64..128).contains(&a[1]))
        || a[0] >= 224)
}

/// The entry point of the fuzz target: both directions over one table, with expiry.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use super::*;

    pub fn run(data: &[u8]) {
        let mut cfg = Config::new([203, 0, 113, 1]);
        cfg.max_sessions = 64;
        cfg.max_bindings = 64;
        cfg.ports = (40000, 40100);
        let mut nat = Nat64::new(cfg);
        let mut now = Duration::ZERO;
        // Records: [dir, len_hi, len_lo, bytes...]
        let mut rest = data;
        while rest.len() >= 3 {
            let dir = rest[0];
            let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])).min(rest.len() - 3);
            let pkt = &rest[3..3 + len];
            rest = &rest[3 + len..];
            now += Duration::from_secs(u64::from(dir >> 2));
            let out = if dir & 1 == 0 { nat.outbound(now, pkt) } else { nat.inbound(now, pkt) };
            if let Ok(p) = out {
                // What comes out parses again (and is translated back without panicking).
                let _ = if dir & 1 == 0 { nat.inbound(now, &p) } else { nat.outbound(now, &p) };
            }
            if dir & 2 != 0 {
                nat.expire(now);
            }
            assert!(nat.sessions() <= 64 && nat.bindings() <= 64);
        }
    }

    /// The gateway target: records [dir, len, bytes...] (dir bit 0: an IPv6 packet from the
    /// fabric or an Ethernet frame from the uplink; bit 1: tick), through ARP, translation,
    /// DNS64, fragmentation and the ICMP errors for packets too big. What goes to the fabric
    /// fits its MTU; the uplink's frames fit Ethernet's.
    pub fn gateway(data: &[u8]) {
        use crate::gateway::{Gateway, GatewayConfig, FABRIC_MTU};
        let cfg = GatewayConfig::parse("nat64.uplink=203.0.113.1/24 nat64.router=203.0.113.254 nat64.dns=198.51.100.53 nat64.mtu=1300 nat64.max_sessions=64").expect("valid");
        let Some(mut g) = Gateway::new(&cfg, [2, 0, 0, 0, 0, 1], [1; 32]) else { return };
        let mut now = Duration::ZERO;
        let mut rest = data;
        while rest.len() >= 3 {
            let dir = rest[0];
            let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])).min(rest.len() - 3);
            let pkt = &rest[3..3 + len];
            rest = &rest[3 + len..];
            now += Duration::from_millis(u64::from(dir >> 2) * 50);
            let to_fabric: Vec<Vec<u8>> = if dir & 1 == 0 { g.from_fabric(now, pkt).into_iter().collect() } else { g.from_uplink(now, pkt) };
            assert!(to_fabric.iter().all(|p| p.len() <= FABRIC_MTU));
            while let Some(f) = g.uplink.take_frame() {
                assert!(f.len() <= 14 + 1500);
            }
            if dir & 2 != 0 {
                g.tick(now);
            }
            assert!(g.nat.sessions() <= 64 && g.nat.bindings() <= 64);
        }
    }

    /// The DNS64 target: records [dir, len, bytes...] (dir bit 0: from a guest or from the
    /// upstream resolver), with time passing; the state stays within its bound.
    pub fn dns64(data: &[u8]) {
        let mut d = crate::dns64::Dns64::new([1; 32]);
        let mut ports = alloc::collections::BTreeSet::new();
        let mut last_port = 0u16;
        let mut now = Duration::ZERO;
        let mut rest = data;
        while rest.len() >= 3 {
            let dir = rest[0];
            let len = (usize::from(rest[1]) << 8 | usize::from(rest[2])).min(rest.len() - 3);
            let msg = &rest[3..3 + len];
            rest = &rest[3 + len..];
            now += Duration::from_millis(u64::from(dir >> 1) * 100);
            let client = if dir & 4 == 0 { crate::dns64::Client::Udp([0xfd; 16], 5353) } else { crate::dns64::Client::Tcp(u32::from(dir)) };
            let out = if dir & 1 == 0 { d.from_client(now, client, msg, &mut ports) } else { d.from_upstream(now, last_port, msg, &mut ports) };
            // what goes upstream parses again and is answered by itself (not a response: dropped)
            if let crate::dns64::Out::Upstream { port, msg } = &out {
                let (port, msg) = (*port, msg.clone());
                last_port = port;
                let _ = d.from_upstream(now, port, &msg, &mut ports);
            }
            if let crate::dns64::Out::Client(_, m) = &out {
                assert!(m.len() <= usize::from(u16::MAX));
            }
            assert!(d.pending() <= crate::dns64::MAX_PENDING);
            assert_eq!(ports.len(), d.pending(), "every open question holds one port, no more");
        }
    }
}
