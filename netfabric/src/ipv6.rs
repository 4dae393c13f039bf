//! Minimal IPv6 packet building and parsing: UDP (with the mandatory checksum over the
//! IPv6 pseudo-header) for fabric IPC, and ICMPv6 echo for probes and tests.
//!
//! Parsers accept only a plain 40-byte IPv6 header directly followed by the upper layer
//! (no extension headers), verify lengths and checksums and return [`Ipv6Error`]; they never
//! panic. Bytes after the IPv6 payload length (link padding) are ignored.

use alloc::vec::Vec;
use core::net::Ipv6Addr;

use crate::ipc::{FabricFrame, FrameError, FABRIC_IPC_PORT};

/// IPv6 header length.
pub const IPV6_HEADER_LEN: usize = 40;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// Next-header value of UDP.
pub const PROTO_UDP: u8 = 17;
/// Next-header value of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// Default hop limit of packets built here.
pub const HOP_LIMIT: u8 = 64;

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Error {
    /// Shorter than its headers.
    Truncated,
    /// Not IPv6.
    NotIpv6,
    /// Not the expected upper-layer protocol (or an extension header).
    UnexpectedProtocol(u8),
    /// Lengths disagree.
    BadLength,
    /// Checksum wrong (or zero, which IPv6 UDP forbids).
    BadChecksum,
    /// Not an echo request/reply.
    NotEcho,
    /// Payload too large for one packet.
    TooLarge,
    /// UDP port is not the fabric IPC port.
    WrongPort,
    /// Frame addresses differ from the IPv6 header.
    AddressMismatch,
    /// The fabric frame inside is malformed.
    Frame(FrameError),
}

/// The internet checksum over the IPv6 pseudo-header and `upper` (the upper-layer packet).
pub fn checksum(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, upper: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        let mut chunks = b.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(upper.len() as u32).to_be_bytes());
    add(&[0, 0, 0, proto]);
    add(upper);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv6_header(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, payload_len: usize) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    h[6] = proto;
    h[7] = HOP_LIMIT;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// Parsed IPv6 header fields plus the upper-layer bytes.
struct Parsed<'a> {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    upper: &'a [u8],
}

fn parse_ipv6(p: &[u8], proto: u8) -> Result<Parsed<'_>, Ipv6Error> {
    let h = p.get(..IPV6_HEADER_LEN).ok_or(Ipv6Error::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Ipv6Error::NotIpv6);
    }
    if h[6] != proto {
        return Err(Ipv6Error::UnexpectedProtocol(h[6]));
    }
    let plen = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let upper = p.get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + plen).ok_or(Ipv6Error::BadLength)?;
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&h[8..24]);
    d.copy_from_slice(&h[24..40]);
    Ok(Parsed { src: Ipv6Addr::from(s), dst: Ipv6Addr::from(d), upper })
}

/// Build an IPv6/UDP packet.
pub fn build_udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Result<Vec<u8>, Ipv6Error> {
    let ulen = UDP_HEADER_LEN + payload.len();
    if ulen > usize::from(u16::MAX) {
        return Err(Ipv6Error::TooLarge);
    }
    let mut p = Vec::with_capacity(IPV6_HEADER_LEN + ulen);
    p.extend_from_slice(&ipv6_header(&src, &dst, PROTO_UDP, ulen));
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let mut c = checksum(&src, &dst, PROTO_UDP, &p[IPV6_HEADER_LEN..]);
    if c == 0 {
        c = 0xffff;
    }
    p[IPV6_HEADER_LEN + 6..IPV6_HEADER_LEN + 8].copy_from_slice(&c.to_be_bytes());
    Ok(p)
}

/// A parsed IPv6/UDP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpPacket<'a> {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// UDP payload.
    pub payload: &'a [u8],
}

/// Parse and verify an IPv6/UDP packet.
pub fn parse_udp(p: &[u8]) -> Result<UdpPacket<'_>, Ipv6Error> {
    let ip = parse_ipv6(p, PROTO_UDP)?;
    let u = ip.upper;
    let h = u.get(..UDP_HEADER_LEN).ok_or(Ipv6Error::Truncated)?;
    let ulen = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if ulen != u.len() {
        return Err(Ipv6Error::BadLength);
    }
    if h[6] == 0 && h[7] == 0 {
        return Err(Ipv6Error::BadChecksum);
    }
    if checksum(&ip.src, &ip.dst, PROTO_UDP, u) != 0 {
        return Err(Ipv6Error::BadChecksum);
    }
    Ok(UdpPacket {
        src: ip.src,
        dst: ip.dst,
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        payload: u.get(UDP_HEADER_LEN..).ok_or(Ipv6Error::Truncated)?,
    })
}

/// Carry a fabric frame in IPv6/UDP from its `src` to its `dst`, port [`FABRIC_IPC_PORT`].
pub fn frame_to_packet(frame: &FabricFrame) -> Result<Vec<u8>, Ipv6Error> {
    let payload = frame.encode().map_err(Ipv6Error::Frame)?;
    build_udp(frame.src, frame.dst, FABRIC_IPC_PORT, FABRIC_IPC_PORT, &payload)
}

/// Extract the fabric frame from an IPv6/UDP packet to [`FABRIC_IPC_PORT`].
pub fn packet_to_frame(p: &[u8]) -> Result<FabricFrame, Ipv6Error> {
    let u = parse_udp(p)?;
    if u.dport != FABRIC_IPC_PORT {
        return Err(Ipv6Error::WrongPort);
    }
    let f = FabricFrame::decode(u.payload).map_err(Ipv6Error::Frame)?;
    if f.src != u.src || f.dst != u.dst {
        return Err(Ipv6Error::AddressMismatch);
    }
    Ok(f)
}

/// Build an ICMPv6 echo request (`request`) or reply.
pub fn build_icmpv6_echo(src: Ipv6Addr, dst: Ipv6Addr, request: bool, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let ulen = 8 + data.len();
    let mut p = Vec::with_capacity(IPV6_HEADER_LEN + ulen);
    p.extend_from_slice(&ipv6_header(&src, &dst, PROTO_ICMPV6, ulen));
    p.push(if request { 128 } else { 129 });
    p.push(0);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(data);
    let c = checksum(&src, &dst, PROTO_ICMPV6, &p[IPV6_HEADER_LEN..]);
    p[IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4].copy_from_slice(&c.to_be_bytes());
    p
}

/// A parsed ICMPv6 echo message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo<'a> {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Request (true) or reply.
    pub request: bool,
    /// Identifier.
    pub id: u16,
    /// Sequence number.
    pub seq: u16,
    /// Data.
    pub data: &'a [u8],
}

/// Parse and verify an ICMPv6 echo request or reply.
pub fn parse_icmpv6_echo(p: &[u8]) -> Result<Echo<'_>, Ipv6Error> {
    let ip = parse_ipv6(p, PROTO_ICMPV6)?;
    let u = ip.upper;
    let h = u.get(..8).ok_or(Ipv6Error::Truncated)?;
    if checksum(&ip.src, &ip.dst, PROTO_ICMPV6, u) != 0 {
        return Err(Ipv6Error::BadChecksum);
    }
    let request = match (h[0], h[1]) {
        (128, 0) => true,
        (129, 0) => false,
        _ => return Err(Ipv6Error::NotEcho),
    };
    Ok(Echo {
        src: ip.src,
        dst: ip.dst,
        request,
        id: u16::from_be_bytes([h[4], h[5]]),
        seq: u16::from_be_bytes([h[6], h[7]]),
        data: u.get(8..).ok_or(Ipv6Error::Truncated)?,
    })
}
