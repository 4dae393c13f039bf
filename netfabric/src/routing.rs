//! Cryptokey routing: which peer owns which prefixes.
//!
//! Outgoing: the destination of an inner packet selects the peer by longest-prefix match.
//! Incoming: a decrypted packet is accepted only if the longest-prefix match of its *source*
//! is the peer it arrived from. The fabric is IPv6-only inside (every node, microVM and task
//! has a /128), so the table holds IPv6 prefixes only; IPv4 reaches the cluster only through
//! the NAT64 gateway (`hypervisor/nat64`), as IPv6 in `64:ff9b::/96`.

use alloc::vec::Vec;
use core::net::Ipv6Addr;

use crate::device::PeerId;

/// An IPv6 prefix (address + length); there is no IPv4 variant on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpPrefix {
    /// IPv6 prefix; length 0..=128.
    V6(Ipv6Addr, u8),
}

impl IpPrefix {
    /// An IPv6 prefix (length clamped to 128, host bits cleared).
    pub fn v6(addr: Ipv6Addr, len: u8) -> Self {
        let len = len.min(128);
        IpPrefix::V6(Ipv6Addr::from(u128::from(addr) & mask128(len)), len)
    }
    /// Prefix length.
    pub fn len(&self) -> u8 {
        match self {
            IpPrefix::V6(_, l) => *l,
        }
    }
    /// True for a zero-length prefix (matches every address).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Does the prefix contain `addr`?
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        match self {
            IpPrefix::V6(p, l) => u128::from(*addr) & mask128(*l) == u128::from(*p),
        }
    }
}

impl core::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IpPrefix::V6(a, l) => write!(f, "{a}/{l}"),
        }
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
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
    pub fn lookup(&self, addr: &Ipv6Addr) -> Option<PeerId> {
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
        assert_eq!(t.lookup(&"fd12:3456::1".parse().unwrap()), Some(PeerId(2)));
        assert_eq!(t.lookup(&"fd12:3456:1::1".parse().unwrap()), Some(PeerId(1)));
        assert_eq!(t.lookup(&"fd99::1".parse().unwrap()), None);
        // a zero-length prefix is the default route (as WireGuard's `::/0`)
        t.insert(IpPrefix::v6(Ipv6Addr::UNSPECIFIED, 0), PeerId(3));
        assert_eq!(t.lookup(&"fd99::1".parse().unwrap()), Some(PeerId(3)));
        t.remove_peer(PeerId(3));
        t.remove_peer(PeerId(2));
        assert_eq!(t.lookup(&"fd12:3456::1".parse().unwrap()), Some(PeerId(1)));
    }
}
