//! Cryptokey routing: which peer owns which prefixes.
//!
//! Outgoing: the destination of an inner packet selects the peer by longest-prefix match.
//! Incoming: a decrypted packet is accepted only if the longest-prefix match of its *source*
//! is the peer it arrived from. IPv6 is the fabric's protocol; IPv4 prefixes are accepted too
//! because it costs nothing (separate table, same rule).

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::device::PeerId;

/// An IP prefix (address + length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpPrefix {
    /// IPv6 prefix; length 0..=128.
    V6(Ipv6Addr, u8),
    /// IPv4 prefix; length 0..=32.
    V4(Ipv4Addr, u8),
}

impl IpPrefix {
    /// An IPv6 prefix (length clamped to 128, host bits cleared).
    pub fn v6(addr: Ipv6Addr, len: u8) -> Self {
        let len = len.min(128);
        IpPrefix::V6(Ipv6Addr::from(u128::from(addr) & mask128(len)), len)
    }
    /// An IPv4 prefix (length clamped to 32, host bits cleared).
    pub fn v4(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        IpPrefix::V4(Ipv4Addr::from(u32::from(addr) & mask32(len)), len)
    }
    /// Prefix length.
    pub fn len(&self) -> u8 {
        match self {
            IpPrefix::V6(_, l) | IpPrefix::V4(_, l) => *l,
        }
    }
    /// True for a zero-length prefix (matches everything of its family).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Does the prefix contain `addr`?
    pub fn contains(&self, addr: &IpAddr) -> bool {
        match (self, addr) {
            (IpPrefix::V6(p, l), IpAddr::V6(a)) => u128::from(*a) & mask128(*l) == u128::from(*p),
            (IpPrefix::V4(p, l), IpAddr::V4(a)) => u32::from(*a) & mask32(*l) == u32::from(*p),
            _ => false,
        }
    }
}

impl core::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IpPrefix::V6(a, l) => write!(f, "{a}/{l}"),
            IpPrefix::V4(a, l) => write!(f, "{a}/{l}"),
        }
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
}
fn mask32(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) }
}

/// The cryptokey routing table. Each prefix is owned by exactly one peer; inserting a prefix
/// another peer owns moves it (as WireGuard's allowed-ips do).
#[derive(Clone, Debug, Default)]
pub struct RoutingTable {
    entries: Vec<(IpPrefix, PeerId)>,
}

impl RoutingTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
    /// Give `prefix` to `peer`.
    pub fn insert(&mut self, prefix: IpPrefix, peer: PeerId) {
        self.entries.retain(|(p, _)| *p != prefix);
        self.entries.push((prefix, peer));
        // Keep longest prefixes first so the first match is the longest.
        self.entries.sort_by_key(|e| core::cmp::Reverse(e.0.len()));
    }
    /// Remove every prefix of `peer`.
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.entries.retain(|(_, p)| *p != peer);
    }
    /// Longest-prefix match.
    pub fn lookup(&self, addr: &IpAddr) -> Option<PeerId> {
        self.entries.iter().find(|(p, _)| p.contains(addr)).map(|(_, id)| *id)
    }
    /// The prefixes a peer owns.
    pub fn prefixes_of(&self, peer: PeerId) -> impl Iterator<Item = &IpPrefix> + '_ {
        self.entries.iter().filter(move |(_, p)| *p == peer).map(|(pre, _)| pre)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut t = RoutingTable::new();
        let a: Ipv6Addr = "fd12:3456::".parse().unwrap();
        t.insert(IpPrefix::v6(a, 32), PeerId(1));
        t.insert(IpPrefix::v6(a, 64), PeerId(2));
        t.insert(IpPrefix::v4(Ipv4Addr::new(10, 0, 0, 0), 8), PeerId(3));
        assert_eq!(t.lookup(&"fd12:3456::1".parse().unwrap()), Some(PeerId(2)));
        assert_eq!(t.lookup(&"fd12:3456:1::1".parse().unwrap()), Some(PeerId(1)));
        assert_eq!(t.lookup(&"fd99::1".parse().unwrap()), None);
        assert_eq!(t.lookup(&"10.1.2.3".parse().unwrap()), Some(PeerId(3)));
        t.remove_peer(PeerId(2));
        assert_eq!(t.lookup(&"fd12:3456::1".parse().unwrap()), Some(PeerId(1)));
    }
}
