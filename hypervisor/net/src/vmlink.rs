//! The node's side of a microVM's virtual Ethernet link (issue 6 item 3: the node routes its
//! /64, including its microVMs' /128s).
//!
//! The node is the VM's router: the guest configures its /128 on `eth0` with an on-link
//! default route, so it asks by neighbour solicitation for every destination; [`VmPort`]
//! answers each such solicitation with the port's own MAC (proxy NDP, never for the VM's own
//! addresses, so its duplicate-address detection succeeds) and hands the IPv6 packets the
//! guest sends to the node for routing — only if their source is the VM's /128 (anything else
//! is counted and dropped). Packets routed to the VM's /128 go back as Ethernet frames.
//!
//! The port also answers the guest's router solicitations with a router advertisement that
//! carries the link MTU ([`crate::FABRIC_MTU`], RFC 4861 §4.6.4), so a guest that accepts
//! router advertisements (Linux does by default) sizes its packets for the fabric and does not
//! depend on ICMPv6 Packet Too Big (which the node still sends for anything larger).
//!
//! Every frame from the guest is hostile: parsing is bounds-checked, errors are counted, and
//! nothing panics.

use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv6Addr;

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IP_HDR: usize = 40;
const NEXT_ICMPV6: u8 = 58;
const ND_RS: u8 = 133;
const ND_RA: u8 = 134;
const ND_NS: u8 = 135;
const ND_NA: u8 = 136;

/// Counters the kernel prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmPortCounters {
    /// Packets from the VM handed to the node for routing.
    pub routed_out: u64,
    /// Packets delivered to the VM.
    pub delivered: u64,
    /// Neighbour solicitations answered.
    pub nd_answered: u64,
    /// Router solicitations answered (with a router advertisement carrying the link MTU).
    pub rs_answered: u64,
    /// Packets whose source was not the VM's /128 (dropped).
    pub bad_source: u64,
    /// Frames that were not well-formed IPv6 over Ethernet, or not IPv6 (dropped).
    pub malformed: u64,
    /// Well-formed frames the port does not route: multicast (MLD, router solicitations),
    /// link-local traffic other than NDP (dropped).
    pub ignored: u64,
}

/// What to do with a frame from the VM.
#[derive(Debug, PartialEq, Eq)]
pub enum FromVm {
    /// Route this IPv6 packet (its source is the VM's /128).
    Route(Vec<u8>),
    /// Send this frame back to the VM (an NDP answer).
    Reply(Vec<u8>),
    /// Dropped (counted).
    Drop,
}

/// One microVM's link.
#[derive(Debug, Clone)]
pub struct VmPort {
    pub vm_addr: Ipv6Addr,
    pub vm_mac: [u8; 6],
    /// The MAC the node answers with (the VM's next hop for every destination).
    pub port_mac: [u8; 6],
    /// The MTU the port advertises (the largest packet the node can route on for the VM).
    pub link_mtu: u32,
    pub counters: VmPortCounters,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn addr(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(s))
}

/// The ICMPv6 checksum over the pseudo-header and `msg` (whose checksum field is zero).
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    l4_checksum(src, dst, NEXT_ICMPV6, msg)
}

/// The checksum of an upper-layer protocol `next` over IPv6 (RFC 8200 §8.1): the pseudo-header
/// (addresses, length, next header) and `msg`.
pub fn l4_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, next: u8, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
            sum = sum.wrapping_add(w as u32);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, next]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The modified-EUI-64 link-local address of a MAC.
fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    crate::cluster::link_local_from_mac(mac)
}

impl VmPort {
    pub fn new(vm_addr: Ipv6Addr, vm_mac: [u8; 6], port_mac: [u8; 6]) -> VmPort {
        VmPort { vm_addr, vm_mac, port_mac, link_mtu: crate::FABRIC_MTU as u32, counters: VmPortCounters::default() }
    }

    /// Handle one Ethernet frame the VM sent.
    pub fn from_vm(&mut self, frame: &[u8]) -> FromVm {
        match self.parse(frame) {
            Some(r) => r,
            None => {
                self.counters.malformed += 1;
                FromVm::Drop
            }
        }
    }

    fn parse(&mut self, frame: &[u8]) -> Option<FromVm> {
        if be16(frame, 12)? != ETHERTYPE_IPV6 {
            return None;
        }
        let ip = frame.get(ETH_HDR..)?;
        if ip.first()? >> 4 != 6 || ip.len() < IP_HDR {
            return None;
        }
        let plen = be16(ip, 4)? as usize;
        let ip = ip.get(..IP_HDR + plen)?; // drop Ethernet padding; too short: malformed
        let next = ip[6];
        let src = addr(ip, 8)?;
        let dst = addr(ip, 24)?;
        if next == NEXT_ICMPV6 && ip.get(IP_HDR) == Some(&ND_NS) {
            return Some(self.solicitation(ip, src));
        }
        if next == NEXT_ICMPV6 && ip.get(IP_HDR) == Some(&ND_RS) {
            return Some(self.router_solicitation(ip, src));
        }
        if src != self.vm_addr {
            if src.is_unicast_link_local() || src.is_unspecified() {
                self.counters.ignored += 1;
            } else {
                self.counters.bad_source += 1;
            }
            return Some(FromVm::Drop);
        }
        if dst.is_multicast() || dst.is_unicast_link_local() || dst.is_unspecified() || dst.is_loopback() {
            self.counters.ignored += 1;
            return Some(FromVm::Drop);
        }
        // A router decrements the hop limit and drops what would expire.
        if ip[7] <= 1 {
            self.counters.ignored += 1;
            return Some(FromVm::Drop);
        }
        let mut p = ip.to_vec();
        p[7] -= 1;
        self.counters.routed_out += 1;
        Some(FromVm::Route(p))
    }

    /// Answer a neighbour solicitation for any address but the VM's own.
    fn solicitation(&mut self, ip: &[u8], src: Ipv6Addr) -> FromVm {
        let Some(target) = addr(ip, IP_HDR + 8) else {
            self.counters.malformed += 1;
            return FromVm::Drop;
        };
        // RFC 4861: hop limit 255, and the message must be at least 24 bytes.
        if ip[7] != 255 || ip.len() < IP_HDR + 24 {
            self.counters.malformed += 1;
            return FromVm::Drop;
        }
        if target == self.vm_addr || target == link_local(self.vm_mac) || target.is_multicast() || target.is_unspecified() {
            self.counters.ignored += 1;
            return FromVm::Drop;
        }
        // Only the VM itself (its /128 or link-local) or DAD may ask.
        let dst = if src.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else if src == self.vm_addr || src.is_unicast_link_local() {
            src
        } else {
            self.counters.bad_source += 1;
            return FromVm::Drop;
        };
        let mut msg = vec![0u8; 32];
        msg[0] = ND_NA;
        // Router, Solicited (unless DAD), Override.
        msg[4] = if src.is_unspecified() { 0xa0 } else { 0xe0 };
        msg[8..24].copy_from_slice(&target.octets());
        msg[24] = 2; // target link-layer address
        msg[25] = 1;
        msg[26..32].copy_from_slice(&self.port_mac);
        let ck = icmpv6_checksum(&target, &dst, &msg);
        msg[2..4].copy_from_slice(&ck.to_be_bytes());
        let mut p = ipv6_header(target, dst, NEXT_ICMPV6, 255, msg.len());
        p.extend_from_slice(&msg);
        self.counters.nd_answered += 1;
        FromVm::Reply(self.frame(&p, dst))
    }

    /// Answer a router solicitation with a router advertisement from the port's link-local
    /// address: default router, the link MTU, the port's link-layer address, no prefixes (the
    /// VM's /128 is configured, not autoconfigured).
    fn router_solicitation(&mut self, ip: &[u8], src: Ipv6Addr) -> FromVm {
        // RFC 4861 §6.1.1: hop limit 255, ICMP code 0, at least 8 bytes; the source is the
        // VM's link-local address or unspecified (then the answer goes to all nodes).
        if ip[7] != 255 || ip.len() < IP_HDR + 8 || ip[IP_HDR + 1] != 0 {
            self.counters.malformed += 1;
            return FromVm::Drop;
        }
        let dst = if src.is_unspecified() {
            Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)
        } else if src.is_unicast_link_local() {
            src
        } else {
            self.counters.bad_source += 1;
            return FromVm::Drop;
        };
        let from = link_local(self.port_mac);
        let mut msg = vec![0u8; 16 + 8 + 8];
        msg[0] = ND_RA;
        msg[4] = 64; // the hop limit the VM should use
        msg[6..8].copy_from_slice(&1800u16.to_be_bytes()); // router lifetime (s)
        // option 5: MTU (RFC 4861 §4.6.4)
        msg[16] = 5;
        msg[17] = 1;
        msg[20..24].copy_from_slice(&self.link_mtu.to_be_bytes());
        // option 1: source link-layer address
        msg[24] = 1;
        msg[25] = 1;
        msg[26..32].copy_from_slice(&self.port_mac);
        let ck = icmpv6_checksum(&from, &dst, &msg);
        msg[2..4].copy_from_slice(&ck.to_be_bytes());
        let mut p = ipv6_header(from, dst, NEXT_ICMPV6, 255, msg.len());
        p.extend_from_slice(&msg);
        self.counters.rs_answered += 1;
        FromVm::Reply(self.frame(&p, dst))
    }

    fn frame(&self, ip: &[u8], dst: Ipv6Addr) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HDR + ip.len());
        if dst.is_multicast() {
            let o = dst.octets();
            f.extend_from_slice(&[0x33, 0x33, o[12], o[13], o[14], o[15]]);
        } else {
            f.extend_from_slice(&self.vm_mac);
        }
        f.extend_from_slice(&self.port_mac);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    /// Wrap an IPv6 packet routed to the VM's /128 in a frame for it. None (counted) if it is
    /// not an IPv6 packet for the VM.
    pub fn to_vm(&mut self, ip: &[u8]) -> Option<Vec<u8>> {
        if ip.len() < IP_HDR || ip[0] >> 4 != 6 || addr(ip, 24) != Some(self.vm_addr) {
            self.counters.malformed += 1;
            return None;
        }
        self.counters.delivered += 1;
        Some(self.frame(ip, self.vm_addr))
    }
}

/// ICMPv6 type of Packet Too Big (RFC 4443 §3.2).
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// The IPv6 minimum MTU: an ICMPv6 error never exceeds it.
const MIN_MTU: usize = 1280;

/// The ICMPv6 Packet Too Big that router `router` sends back to the source of `invoking` (a
/// packet it could not forward): MTU `mtu`, and as much of the invoking packet as fits in
/// 1280 bytes. The caller knows `invoking` has an IPv6 header (its source is the VM's /128).
pub fn packet_too_big(router: Ipv6Addr, invoking: &[u8], mtu: u32) -> Vec<u8> {
    let to = addr(invoking, 8).unwrap_or(Ipv6Addr::UNSPECIFIED);
    let quote = &invoking[..invoking.len().min(MIN_MTU - IP_HDR - 8)];
    let mut msg = vec![0u8; 8];
    msg[0] = ICMPV6_PACKET_TOO_BIG;
    msg[4..8].copy_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(quote);
    let ck = icmpv6_checksum(&router, &to, &msg);
    msg[2..4].copy_from_slice(&ck.to_be_bytes());
    let mut p = ipv6_header(router, to, NEXT_ICMPV6, 64, msg.len());
    p.extend_from_slice(&msg);
    p
}

/// An IPv6 header.
pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; IP_HDR];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len.min(0xffff) as u16).to_be_bytes());
    h[6] = next;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM_MAC: [u8; 6] = [0x02, 0xca, 0x7e, 0, 0, 2];
    const PORT_MAC: [u8; 6] = [0x02, 0xca, 0x7e, 0, 0, 1];

    fn vm() -> Ipv6Addr {
        "fd12:3456:789a:bcde:1::1".parse().unwrap()
    }

    fn eth(ip: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&PORT_MAC);
        f.extend_from_slice(&VM_MAC);
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(ip);
        f
    }

    fn ns(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let mut msg = vec![0u8; 32];
        msg[0] = ND_NS;
        msg[8..24].copy_from_slice(&target.octets());
        msg[24] = 1;
        msg[25] = 1;
        msg[26..32].copy_from_slice(&VM_MAC);
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
        let ck = icmpv6_checksum(&src, &dst, &msg);
        msg[2..4].copy_from_slice(&ck.to_be_bytes());
        let mut p = ipv6_header(src, dst, NEXT_ICMPV6, 255, msg.len());
        p.extend_from_slice(&msg);
        eth(&p)
    }

    fn rs(src: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
        let mut msg = vec![0u8; 16];
        msg[0] = ND_RS;
        msg[8] = 1;
        msg[9] = 1;
        msg[10..16].copy_from_slice(&VM_MAC);
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        let ck = icmpv6_checksum(&src, &dst, &msg);
        msg[2..4].copy_from_slice(&ck.to_be_bytes());
        let mut p = ipv6_header(src, dst, NEXT_ICMPV6, hop_limit, msg.len());
        p.extend_from_slice(&msg);
        eth(&p)
    }

    #[test]
    fn router_solicitation_gets_an_advertisement_with_the_fabric_mtu() {
        let mut p = VmPort::new(vm(), VM_MAC, PORT_MAC);
        let ll = link_local(VM_MAC);
        let FromVm::Reply(f) = p.from_vm(&rs(ll, 255)) else { panic!("no advertisement") };
        assert_eq!(&f[..6], &VM_MAC);
        let ip = &f[ETH_HDR..];
        let (src, dst) = (addr(ip, 8).unwrap(), addr(ip, 24).unwrap());
        assert_eq!(src, link_local(PORT_MAC));
        assert_eq!(dst, ll);
        assert_eq!(ip[7], 255);
        let msg = &ip[IP_HDR..];
        assert_eq!(msg[0], ND_RA);
        assert_eq!(icmpv6_checksum(&src, &dst, msg), 0, "checksum over the whole message verifies");
        assert!(u16::from_be_bytes([msg[6], msg[7]]) > 0, "a default router");
        // the MTU option carries the fabric MTU
        let mut opts = &msg[16..];
        let mut mtu = None;
        while opts.len() >= 8 && opts[1] > 0 {
            let len = opts[1] as usize * 8;
            if opts[0] == 5 {
                mtu = Some(u32::from_be_bytes([opts[4], opts[5], opts[6], opts[7]]));
            }
            opts = &opts[len.min(opts.len())..];
        }
        assert_eq!(mtu, Some(crate::FABRIC_MTU as u32));
        assert_eq!(p.counters.rs_answered, 1);
        // DAD-time solicitation (unspecified source): to all nodes
        let FromVm::Reply(f) = p.from_vm(&rs(Ipv6Addr::UNSPECIFIED, 255)) else { panic!() };
        assert_eq!(&f[..2], &[0x33, 0x33]);
        // off-link hop limit, or a global source: not answered
        assert_eq!(p.from_vm(&rs(ll, 64)), FromVm::Drop);
        assert_eq!(p.from_vm(&rs(vm(), 255)), FromVm::Drop);
        assert_eq!(p.counters.rs_answered, 2);
        // truncated solicitations never panic
        let full = rs(ll, 255);
        for n in 0..full.len() {
            let _ = p.from_vm(&full[..n]);
        }
    }

    #[test]
    fn answers_solicitations_for_other_addresses() {
        let mut p = VmPort::new(vm(), VM_MAC, PORT_MAC);
        let other: Ipv6Addr = "fdaa::1".parse().unwrap();
        let FromVm::Reply(f) = p.from_vm(&ns(vm(), other)) else { panic!() };
        assert_eq!(&f[..6], &VM_MAC);
        assert_eq!(&f[6..12], &PORT_MAC);
        let ip = &f[14..];
        assert_eq!(ip[40], ND_NA);
        assert_eq!(addr(ip, 8), Some(other));
        assert_eq!(addr(ip, 24), Some(vm()));
        assert_eq!(addr(ip, 48), Some(other));
        assert_eq!(&ip[66..72], &PORT_MAC);
        // the checksum verifies
        assert_eq!(icmpv6_checksum(&other, &vm(), &ip[40..]), 0);
        // never for the VM's own addresses (DAD must succeed)
        assert_eq!(p.from_vm(&ns(Ipv6Addr::UNSPECIFIED, vm())), FromVm::Drop);
        assert_eq!(p.from_vm(&ns(Ipv6Addr::UNSPECIFIED, link_local(VM_MAC))), FromVm::Drop);
        assert_eq!(p.counters.nd_answered, 1);
    }

    #[test]
    fn routes_only_the_vms_source() {
        let mut p = VmPort::new(vm(), VM_MAC, PORT_MAC);
        let dst: Ipv6Addr = "fdaa::1".parse().unwrap();
        let mut ip = ipv6_header(vm(), dst, 17, 64, 8);
        ip.extend_from_slice(&[0u8; 8]);
        let mut f = eth(&ip);
        f.extend_from_slice(&[0u8; 6]); // Ethernet padding is trimmed
        let FromVm::Route(r) = p.from_vm(&f) else { panic!() };
        assert_eq!(r.len(), 48);
        assert_eq!(r[7], 63);
        // spoofed source
        let mut ip2 = ipv6_header("fd12:3456:789a:bcde::1".parse().unwrap(), dst, 17, 64, 8);
        ip2.extend_from_slice(&[0u8; 8]);
        assert_eq!(p.from_vm(&eth(&ip2)), FromVm::Drop);
        assert_eq!(p.counters.bad_source, 1);
        // back to the VM
        let mut back = ipv6_header(dst, vm(), 17, 64, 8);
        back.extend_from_slice(&[0u8; 8]);
        let f = p.to_vm(&back).unwrap();
        assert_eq!(&f[..6], &VM_MAC);
        assert_eq!(&f[14..], &back[..]);
        assert!(p.to_vm(&ip).is_none());
    }

    #[test]
    fn packet_too_big_is_a_valid_icmpv6_error() {
        let router: Ipv6Addr = "fd12:3456:789a:bcde::1".parse().unwrap();
        let dst: Ipv6Addr = "fdaa::1".parse().unwrap();
        let mut big = ipv6_header(vm(), dst, 6, 63, 1460);
        big.extend((0..1460).map(|i| i as u8));
        let p = packet_too_big(router, &big, 1404);
        assert_eq!(p.len(), 1280); // never more than the minimum MTU
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(p[6], NEXT_ICMPV6);
        assert_eq!(be16(&p, 4), Some(1280 - 40));
        assert_eq!(addr(&p, 8), Some(router));
        assert_eq!(addr(&p, 24), Some(vm()));
        let icmp = &p[40..];
        assert_eq!((icmp[0], icmp[1]), (ICMPV6_PACKET_TOO_BIG, 0));
        assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1404);
        assert_eq!(&icmp[8..], &big[..1232]); // the start of the invoking packet
        assert_eq!(icmpv6_checksum(&router, &vm(), icmp), 0); // checksum verifies
        // a small invoking packet is quoted whole; to_vm takes the answer
        let mut small = ipv6_header(vm(), dst, 17, 64, 8);
        small.extend_from_slice(&[0u8; 8]);
        let p2 = packet_too_big(router, &small, 1404);
        assert_eq!(&p2[48..], &small[..]);
        let mut port = VmPort::new(vm(), VM_MAC, PORT_MAC);
        assert!(port.to_vm(&p2).is_some());
        // hostile input: never panics
        for n in 0..48 {
            let _ = packet_too_big(router, &big[..n], 1404);
        }
    }

    #[test]
    fn hostile_frames_never_panic() {
        let mut p = VmPort::new(vm(), VM_MAC, PORT_MAC);
        let base = ns(vm(), "fdaa::1".parse().unwrap());
        for cut in 0..base.len() {
            let _ = p.from_vm(&base[..cut]);
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut f = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % f.len();
                f[i] = (x >> 8) as u8;
            }
            let _ = p.from_vm(&f);
            let _ = p.to_vm(&f[14..]);
        }
        let _ = p.to_vm(&[]);
        assert!(p.counters.malformed > 0);
    }
}
