//! The fabric's outgoing UDP datagrams: one smoltcp socket per underlay destination.
//!
//! smoltcp keeps a datagram whose next hop is not in its neighbour cache at the head of the
//! socket's TX queue until neighbour discovery answers, and its neighbour cache sends at most
//! one solicitation per second for all neighbours together. With one socket for every peer,
//! a member whose address never resolves (a node that is down) held every datagram to the
//! other members behind its handshake, and its solicitations took the cache's only slot.
//! Here each destination has its own small socket (a bounded queue: when full, datagrams to
//! it are dropped and counted), and for a destination whose queue does not drain, this module
//! sends its own neighbour solicitation (at most one a second per destination): the answer
//! fills smoltcp's cache, which lets that socket send. Received datagrams still arrive on the
//! node's main fabric socket (the first socket bound to the port gets them).

use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv6Addr;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::udp;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr, IpAddress, IpEndpoint, IpProtocol,
    Ipv6Packet, Ipv6Repr, NdiscRepr, RawHardwareAddress,
};

use crate::Link;

/// Datagrams queued per destination while its neighbour resolves, at most.
pub const QUEUE_PER_DEST: usize = 64;
/// Between two solicitations of ours for one destination.
const SOLICIT_EVERY_NS: u64 = 1_000_000_000;

struct Dest {
    addr: Ipv6Addr,
    handle: SocketHandle,
    solicited_at: Option<u64>,
}

pub struct UnderlayTx {
    port: u16,
    max_dests: usize,
    dests: Vec<Dest>,
}

impl UnderlayTx {
    /// Sockets bound to `port`, for at most `max_dests` destinations at a time.
    pub fn new(port: u16, max_dests: usize) -> UnderlayTx {
        UnderlayTx { port, max_dests: max_dests.max(1), dests: Vec::new() }
    }

    /// Queue `data` to `dst`:`port`. False: dropped (that destination's queue is full).
    pub fn send(&mut self, set: &mut SocketSet<'static>, dst: Ipv6Addr, port: u16, data: &[u8]) -> bool {
        let i = match self.dests.iter().position(|d| d.addr == dst) {
            Some(i) => i,
            None => {
                if self.dests.len() >= self.max_dests {
                    // Reuse the slot of a destination with nothing waiting, else of the one
                    // waiting longest for its neighbour (its datagrams are dropped): a reachable
                    // destination always gets a slot.
                    let idle = self.dests.iter().position(|d| set.get::<udp::Socket>(d.handle).send_queue() == 0);
                    let stuck = || self.dests.iter().enumerate().filter_map(|(i, d)| d.solicited_at.map(|t| (t, i))).min().map(|(_, i)| i);
                    let Some(j) = idle.or_else(stuck) else {
                        return false;
                    };
                    let old = self.dests.swap_remove(j);
                    set.remove(old.handle);
                }
                let mut s = udp::Socket::new(
                    // Never receives: the node's main socket, bound first, gets every datagram.
                    udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 0]),
                    udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; QUEUE_PER_DEST], vec![0u8; QUEUE_PER_DEST * 1600]),
                );
                if s.bind(self.port).is_err() {
                    return false;
                }
                let handle = set.add(s);
                self.dests.push(Dest { addr: dst, handle, solicited_at: None });
                self.dests.len() - 1
            }
        };
        let s = set.get_mut::<udp::Socket>(self.dests[i].handle);
        s.send_slice(data, IpEndpoint::new(IpAddress::Ipv6(dst), port)).is_ok()
    }

    /// After the interface's poll: solicit the neighbour of each on-link destination whose
    /// datagrams are still queued (smoltcp waits for it), at most once a second each.
    pub fn solicit_stuck<L: Link>(&mut self, set: &SocketSet<'static>, iface: &Interface, link: &mut L, now_ns: u64) {
        let mac = link.mac();
        for d in &mut self.dests {
            if set.get::<udp::Socket>(d.handle).send_queue() == 0 {
                continue;
            }
            if d.solicited_at.is_some_and(|t| now_ns.saturating_sub(t) < SOLICIT_EVERY_NS) {
                continue;
            }
            // Off-link destinations go through a router, which smoltcp resolves for everyone.
            if !iface.ip_addrs().iter().any(|c| c.contains_addr(&IpAddress::Ipv6(d.addr))) {
                continue;
            }
            if !link.can_send() {
                return;
            }
            let frame = neighbor_solicit(mac, iface.get_source_address_ipv6(&d.addr), d.addr);
            link.send(frame.len(), &mut |b| b.copy_from_slice(&frame));
            d.solicited_at = Some(now_ns);
        }
    }
}

/// An Ethernet frame with an ICMPv6 neighbour solicitation for `target` (RFC 4861 §7.2.2:
/// to its solicited-node multicast address, hop limit 255, our link-layer address).
pub fn neighbor_solicit(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let t = target.octets();
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | t[13] as u16, u16::from_be_bytes([t[14], t[15]]));
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(mac))),
    });
    let ip = Ipv6Repr { src_addr: src, dst_addr: dst, next_header: IpProtocol::Icmpv6, payload_len: icmp.buffer_len(), hop_limit: 255 };
    let mut buf = vec![0u8; EthernetFrame::<&[u8]>::header_len() + ip.buffer_len() + icmp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(EthernetAddress([0x33, 0x33, 0xff, t[13], t[14], t[15]]));
    eth.set_src_addr(EthernetAddress(mac));
    eth.set_ethertype(EthernetProtocol::Ipv6);
    let mut ipp = Ipv6Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut ipp);
    let mut pkt = Icmpv6Packet::new_unchecked(ipp.payload_mut());
    icmp.emit(&src, &dst, &mut pkt, &ChecksumCapabilities::default());
    buf
}
