//! Routing the NAT64 prefix (`64:ff9b::/96`, RFC 6052) through the fabric to the cluster's
//! gateway node (docs/nat64.md). This crate holds no IPv4: the gateway service (`natd`,
//! crate `catenary-nat64`) translates; here the prefix is only an IPv6 route.
//!
//! - On every other node the gateway peer owns the prefix in netfabric's cryptokey routing
//!   (as a WireGuard allowed-ip): packets from microVMs and tasks to the prefix go to it, and
//!   its packets from prefix addresses are accepted as its own.
//! - On the gateway node itself, packets to the prefix (from the fabric or a local microVM)
//!   wait in a bounded queue for `natd` ([`Node::take_nat64`]); what `natd` hands back
//!   ([`Node::from_nat64`], sources in the prefix only) is routed like any packet of the node.

use super::*;

/// The RFC 6052 well-known prefix.
pub const NAT64_PREFIX: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
pub const NAT64_PREFIX_LEN: u8 = 96;
/// The cluster's DNS64 resolver (`natd` on the gateway): `64:ff9b::35`, which embeds 0.0.0.53,
/// an address the translator never uses. Workloads get it in their `/etc/resolv.conf`.
pub const DNS64_ADDR: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0x35);
/// Packets waiting for `natd`, at most (the rest are dropped and counted).
pub const NAT64_QUEUE: usize = 256;

/// Whether `a` lies in `64:ff9b::/96`.
pub fn in_nat64_prefix(a: &Ipv6Addr) -> bool {
    a.octets()[..12] == NAT64_PREFIX.octets()[..12]
}

/// This node's part in NAT64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nat64Role {
    /// No gateway named: the prefix has no route.
    #[default]
    None,
    /// This node is the gateway: the prefix goes to `natd`.
    Gateway,
    /// Another node is: the prefix goes to that peer over the fabric.
    Peer,
}

#[derive(Default)]
pub(crate) struct Nat64Route {
    pub(crate) role: Nat64Role,
    pub(crate) rx: VecDeque<Vec<u8>>,
}

/// NAT64 routing counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nat64Counters {
    /// Packets to the prefix queued for `natd`.
    pub to_natd: u64,
    /// Dropped: the queue to `natd` was full.
    pub queue_full: u64,
    /// Packets from `natd` routed.
    pub from_natd: u64,
    /// Packets from `natd` refused: source outside the prefix, not the gateway, malformed,
    /// larger than the fabric MTU, or no route to the destination.
    pub refused: u64,
}

/// Why [`Node::set_nat64_gateway`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat64Error {
    /// The name is neither this node nor a member peer.
    UnknownNode,
    /// Set once per `netd` run.
    AlreadySet,
}

impl Node {
    /// Name the cluster's NAT64 gateway (`net.nat64gw=NAME` on every node's command line):
    /// this node, or the peer that gets `64:ff9b::/96` as an allowed prefix.
    pub fn set_nat64_gateway(&mut self, name: &str) -> Result<Nat64Role, Nat64Error> {
        if self.nat64.role != Nat64Role::None {
            return Err(Nat64Error::AlreadySet);
        }
        if name == self.name {
            self.nat64.role = Nat64Role::Gateway;
            return Ok(Nat64Role::Gateway);
        }
        let Some(id) = self.peers.iter().find(|p| p.name == name && !p.operator).map(|p| p.id) else {
            return Err(Nat64Error::UnknownNode);
        };
        if !self.fabric.add_prefix(id, netfabric::routing::IpPrefix::v6(NAT64_PREFIX, NAT64_PREFIX_LEN)) {
            return Err(Nat64Error::UnknownNode);
        }
        self.nat64.role = Nat64Role::Peer;
        Ok(Nat64Role::Peer)
    }

    pub fn nat64_role(&self) -> Nat64Role {
        self.nat64.role
    }

    /// On the gateway: queue a packet to the prefix for `natd`. False: not for it.
    pub(crate) fn nat64_claim(&mut self, dst: &Ipv6Addr, packet: &mut Option<Vec<u8>>) -> bool {
        if self.nat64.role != Nat64Role::Gateway || !in_nat64_prefix(dst) {
            return false;
        }
        if let Some(p) = packet.take() {
            if self.nat64.rx.len() < NAT64_QUEUE {
                self.nat64_counters.to_natd += 1;
                self.nat64.rx.push_back(p);
            } else {
                self.nat64_counters.queue_full += 1;
            }
        }
        true
    }

    /// The next packet for `natd` (gateway only).
    pub fn take_nat64(&mut self) -> Option<Vec<u8>> {
        self.nat64.rx.pop_front()
    }

    /// Packets waiting for `natd`.
    pub fn nat64_pending(&self) -> usize {
        self.nat64.rx.len()
    }

    /// Route an IPv6 packet `natd` made (a translated IPv4 answer): its source must lie in the
    /// prefix; it goes to a local microVM, the node's own stack, or over the fabric to the
    /// peer owning the destination. False: refused (counted).
    pub fn from_nat64(&mut self, packet: Vec<u8>, now_ns: u64) -> bool {
        let ok = self.nat64.role == Nat64Role::Gateway && packet.len() <= MTU;
        let Some((src, dst, _)) = netfabric::device::inner_header(&packet).filter(|_| ok) else {
            self.nat64_counters.refused += 1;
            return false;
        };
        if !in_nat64_prefix(&src) || in_nat64_prefix(&dst) || ipcroute::is_ipc_packet(&packet) {
            self.nat64_counters.refused += 1;
            return false;
        }
        self.nat64_counters.from_natd += 1;
        if self.vm_routes.contains(&dst) {
            self.queue_to_vm(packet);
            return true;
        }
        if self.is_local_socket_addr(&dst) || dst == self.fabric_addr {
            self.queue_for_tun(packet);
            return true;
        }
        if packet.len() > FABRIC_MTU || !self.send_ipc(&packet, now_ns) {
            self.nat64_counters.from_natd -= 1;
            self.nat64_counters.refused += 1;
            return false;
        }
        true
    }
}

impl Node {
    /// Put a packet taken with [`Node::take_nat64`] back at the head (it did not fit `natd`'s
    /// buffer this time).
    pub fn requeue_nat64(&mut self, packet: Vec<u8>) {
        self.nat64.rx.push_front(packet);
    }
}
