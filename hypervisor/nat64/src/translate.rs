//! Header translation per RFC 7915 (§4 IPv4 → IPv6, §5 IPv6 → IPv4), on top of the state
//! in [`crate::table`]. Headers are parsed and written with `etherparse`; lengths are checked
//! against the slice before any use.
//!
//! Choices where RFC 7915 leaves room, and one deliberate deviation: the IPv4 header always
//! gets DF set and identification 0 (RFC 7915 §5.1 clears DF for packets of 1260 bytes or less
//! and fills the identification; we do not fragment or reassemble at all, so a path with an
//! IPv4 MTU under 1280 loses the packet and says so with fragmentation-needed, translated to a
//! packet-too-big of at least 1280), TTL/hop limit are decremented (a packet that would leave
//! with 0 is dropped, not answered), the traffic class maps to DSCP+ECN and back, the flow label
//! is 0. ICMP errors translate the packet they carry (its addresses and the port or echo
//! identifier of the mapping, not its checksum, which the receiver does not check) and are cut
//! so that an ICMPv6 error stays within the IPv6 minimum MTU (1280 bytes).
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::icmpv4::{DestUnreachableHeader, TimeExceededCode as TimeExceeded4};
use etherparse::icmpv6::{DestUnreachableCode, ParameterProblemCode, ParameterProblemHeader, TimeExceededCode as TimeExceeded6};
use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header,
    Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader,
};

use crate::table::{Flow, Proto, Table, TcpFlags};
use crate::{embed, is_global_v4, Config, Drop};

/// An ICMPv6 error (with the outer IPv6 header) fits in the IPv6 minimum MTU.
const ICMP6_ERROR_MAX: usize = 1280;
/// ICMPv4 errors are cut to 576 bytes (RFC 1812 §4.3.2.3).
const ICMP4_ERROR_MAX: usize = 576;

// ---------------------------------------------------------------------------------------
// IPv6 → IPv4
// ---------------------------------------------------------------------------------------

pub fn outbound(cfg: &Config, table: &mut Table, now: Duration, packet: &[u8]) -> Result<Vec<u8>, Drop> {
    let (ip6, rest) = Ipv6Header::from_slice(packet).map_err(|_| Drop::Malformed)?;
    let payload = rest.get(..usize::from(ip6.payload_length)).ok_or(Drop::Malformed)?;
    if ip6.destination[..12] != cfg.prefix {
        return Err(Drop::NotOurs);
    }
    let dst4: [u8; 4] = ip6.destination[12..].try_into().expect("4 bytes");
    if !is_global_v4(dst4) || dst4 == cfg.pool {
        return Err(Drop::BadAddress);
    }
    if ip6.hop_limit <= 1 {
        return Err(Drop::HopLimit);
    }
    let ttl = ip6.hop_limit - 1;
    match ip6.next_header {
        IpNumber::TCP => {
            let (tcp, data) = TcpHeader::from_slice(payload).map_err(|_| Drop::Malformed)?;
            // Verified before it is recomputed: a segment damaged on the way must not leave
            // with a good checksum.
            if tcp.calc_checksum_ipv6(&ip6, data).map_err(|_| Drop::Malformed)? != tcp.checksum {
                return Err(Drop::Malformed);
            }
            let flags = TcpFlags { syn: tcp.syn, fin: tcp.fin, rst: tcp.rst };
            let b = table.outbound(cfg, now, Flow { proto: Proto::Tcp, remote: dst4, remote_port: tcp.destination_port, tcp: Some(flags) }, ip6.source, tcp.source_port)?;
            let mut out_tcp = tcp.clone();
            out_tcp.source_port = b.v4_port;
            let ip4 = v4_header(cfg.pool, dst4, ttl, IpNumber::TCP, ip6.traffic_class, out_tcp.header_len() + data.len())?;
            out_tcp.checksum = out_tcp.calc_checksum_ipv4(&ip4, data).map_err(|_| Drop::Malformed)?;
            Ok(concat(&[&ip4.to_bytes(), &out_tcp.to_bytes(), data]))
        }
        IpNumber::UDP => {
            let (udp, data) = udp_parts(payload)?;
            if udp.calc_checksum_ipv6(&ip6, data).map_err(|_| Drop::Malformed)? != udp.checksum {
                return Err(Drop::Malformed);
            }
            let b = table.outbound(cfg, now, Flow { proto: Proto::Udp, remote: dst4, remote_port: udp.destination_port, tcp: None }, ip6.source, udp.source_port)?;
            let mut out_udp = udp;
            out_udp.source_port = b.v4_port;
            let ip4 = v4_header(cfg.pool, dst4, ttl, IpNumber::UDP, ip6.traffic_class, 8 + data.len())?;
            out_udp.checksum = out_udp.calc_checksum_ipv4(&ip4, data).map_err(|_| Drop::Malformed)?;
            Ok(concat(&[&ip4.to_bytes(), &out_udp.to_bytes(), data]))
        }
        IpNumber::IPV6_ICMP => {
            let (icmp, data) = Icmpv6Header::from_slice(payload).map_err(|_| Drop::Malformed)?;
            // The ICMPv6 checksum covers a pseudo-header the IPv4 side does not have: check it
            // here, since the ICMPv4 checksum recomputed below would otherwise launder a bad one.
            let good = Icmpv6Header::with_checksum(icmp.icmp_type, ip6.source, ip6.destination, data).map_err(|_| Drop::Malformed)?;
            if good.checksum != icmp.checksum {
                return Err(Drop::Malformed);
            }
            let (t4, body): (Icmpv4Type, Vec<u8>) = match icmp.icmp_type {
                Icmpv6Type::EchoRequest(e) => {
                    let b = table.outbound(cfg, now, Flow { proto: Proto::Icmp, remote: dst4, remote_port: 0, tcp: None }, ip6.source, e.id)?;
                    (Icmpv4Type::EchoRequest(IcmpEchoHeader { id: b.v4_port, seq: e.seq }), data.to_vec())
                }
                Icmpv6Type::DestinationUnreachable(code) => {
                    let h = match code {
                        DestUnreachableCode::NoRoute | DestUnreachableCode::BeyondScope | DestUnreachableCode::Address => DestUnreachableHeader::Host,
                        DestUnreachableCode::Prohibited => DestUnreachableHeader::HostProhibited,
                        DestUnreachableCode::Port => DestUnreachableHeader::Port,
                        _ => return Err(Drop::Unsupported),
                    };
                    (Icmpv4Type::DestinationUnreachable(h), inner_6to4(cfg, table, &ip6, dst4, data)?)
                }
                Icmpv6Type::PacketTooBig { mtu } => {
                    let next_hop_mtu = u16::try_from(mtu.saturating_sub(20)).unwrap_or(u16::MAX);
                    (Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }), inner_6to4(cfg, table, &ip6, dst4, data)?)
                }
                Icmpv6Type::TimeExceeded(code) => {
                    let c = match code {
                        TimeExceeded6::HopLimitExceeded => TimeExceeded4::TtlExceededInTransit,
                        TimeExceeded6::FragmentReassemblyTimeExceeded => TimeExceeded4::FragmentReassemblyTimeExceeded,
                    };
                    (Icmpv4Type::TimeExceeded(c), inner_6to4(cfg, table, &ip6, dst4, data)?)
                }
                // Echo replies to inbound pings cannot happen (inbound pings open no state);
                // neighbour discovery and the rest stay inside.
                _ => return Err(Drop::Unsupported),
            };
            let h4 = Icmpv4Header::with_checksum(t4, &body);
            let icmp_bytes = concat(&[&h4.to_bytes(), &body]);
            let ip4 = v4_header(cfg.pool, dst4, ttl, IpNumber::ICMP, ip6.traffic_class, icmp_bytes.len())?;
            Ok(concat(&[&ip4.to_bytes(), &icmp_bytes]))
        }
        IpNumber::IPV6_FRAGMENTATION_HEADER => Err(Drop::Fragment),
        _ => Err(Drop::Unsupported),
    }
}

/// The packet inside an ICMPv6 error a host inside sent about a packet that came in through
/// us: it went `prefix::remote` → host:port; as IPv4 it went remote → pool:mapped port.
fn inner_6to4(cfg: &Config, table: &Table, outer: &Ipv6Header, outer_dst4: [u8; 4], data: &[u8]) -> Result<Vec<u8>, Drop> {
    // ICMPv6 errors carry 4 bytes (unused / MTU / pointer) before the packet; etherparse
    // keeps them in the header, so `data` is the packet.
    let (ip6, rest) = Ipv6Header::from_slice(data).map_err(|_| Drop::Malformed)?;
    if ip6.source[..12] != cfg.prefix {
        return Err(Drop::NotOurs);
    }
    // A host may only report errors about packets it received itself, to the sender of that
    // packet: otherwise one tenant could quote another's flow and leak its mapping or inject
    // errors into it.
    if ip6.destination != outer.source || ip6.source[12..] != outer_dst4 {
        return Err(Drop::Filtered);
    }
    let remote: [u8; 4] = ip6.source[12..].try_into().expect("4 bytes");
    let (proto, number) = match ip6.next_header {
        IpNumber::TCP => (Proto::Tcp, IpNumber::TCP),
        IpNumber::UDP => (Proto::Udp, IpNumber::UDP),
        IpNumber::IPV6_ICMP => (Proto::Icmp, IpNumber::ICMP),
        _ => return Err(Drop::Unsupported),
    };
    let mut l4: Vec<u8> = rest.get(..rest.len().min(usize::from(ip6.payload_length))).ok_or(Drop::Malformed)?.to_vec();
    if l4.len() < 8 {
        return Err(Drop::Malformed);
    }
    let (port_at, remote_port) = match proto {
        // The host's own port is the destination of the packet it refused.
        Proto::Tcp | Proto::Udp => (2, u16::from_be_bytes([l4[0], l4[1]])),
        Proto::Icmp => (4, 0),
    };
    let host_port = u16::from_be_bytes([l4[port_at], l4[port_at + 1]]);
    let b = table.binding_for_v6(proto, ip6.destination, host_port).ok_or(Drop::NoBinding)?;
    if !table.has_session(proto, b.v4_port, remote, remote_port) {
        return Err(Drop::Filtered);
    }
    l4[port_at..port_at + 2].copy_from_slice(&b.v4_port.to_be_bytes());
    if proto == Proto::Icmp {
        l4[0] = match l4[0] {
            128 => 8,
            129 => 0,
            _ => return Err(Drop::Unsupported),
        };
    }
    let claimed = usize::from(ip6.payload_length);
    let ip4 = v4_header(remote, cfg.pool, ip6.hop_limit, number, ip6.traffic_class, claimed)?;
    let mut inner = concat(&[&ip4.to_bytes(), &l4]);
    inner.truncate(ICMP4_ERROR_MAX - 20 - 8);
    Ok(inner)
}

// ---------------------------------------------------------------------------------------
// IPv4 → IPv6
// ---------------------------------------------------------------------------------------

pub fn inbound(cfg: &Config, table: &mut Table, now: Duration, packet: &[u8]) -> Result<Vec<u8>, Drop> {
    let (ip4, rest) = Ipv4Header::from_slice(packet).map_err(|_| Drop::Malformed)?;
    if ip4.header_checksum != ip4.calc_header_checksum() {
        return Err(Drop::Malformed);
    }
    let payload_len = usize::from(ip4.total_len).checked_sub(ip4.header_len()).ok_or(Drop::Malformed)?;
    let payload = rest.get(..payload_len).ok_or(Drop::Malformed)?;
    if ip4.more_fragments || ip4.fragment_offset.value() != 0 {
        return Err(Drop::Fragment);
    }
    if ip4.destination != cfg.pool {
        return Err(Drop::NotOurs);
    }
    if !is_global_v4(ip4.source) {
        return Err(Drop::BadAddress);
    }
    if ip4.time_to_live <= 1 {
        return Err(Drop::HopLimit);
    }
    let hop = ip4.time_to_live - 1;
    let tc = ip4.dscp.value() << 2 | ip4.ecn.value();
    let src6 = embed(&cfg.prefix, ip4.source);
    match ip4.protocol {
        IpNumber::TCP => {
            let (tcp, data) = TcpHeader::from_slice(payload).map_err(|_| Drop::Malformed)?;
            if tcp.calc_checksum_ipv4(&ip4, data).map_err(|_| Drop::Malformed)? != tcp.checksum {
                return Err(Drop::Malformed);
            }
            let flags = TcpFlags { syn: tcp.syn, fin: tcp.fin, rst: tcp.rst };
            let b = table.inbound(cfg, now, Flow { proto: Proto::Tcp, remote: ip4.source, remote_port: tcp.source_port, tcp: Some(flags) }, tcp.destination_port)?;
            let mut out = tcp.clone();
            out.destination_port = b.v6_port;
            let ip6 = v6_header(src6, b.v6, hop, IpNumber::TCP, tc, out.header_len() + data.len())?;
            out.checksum = out.calc_checksum_ipv6(&ip6, data).map_err(|_| Drop::Malformed)?;
            Ok(concat(&[&ip6.to_bytes(), &out.to_bytes(), data]))
        }
        IpNumber::UDP => {
            let (udp, data) = udp_parts(payload)?;
            // 0 is IPv4's "no checksum"; anything else must verify.
            if udp.checksum != 0 && udp.calc_checksum_ipv4(&ip4, data).map_err(|_| Drop::Malformed)? != udp.checksum {
                return Err(Drop::Malformed);
            }
            let b = table.inbound(cfg, now, Flow { proto: Proto::Udp, remote: ip4.source, remote_port: udp.source_port, tcp: None }, udp.destination_port)?;
            let mut out = udp;
            out.destination_port = b.v6_port;
            let ip6 = v6_header(src6, b.v6, hop, IpNumber::UDP, tc, 8 + data.len())?;
            // IPv4's "no checksum" (0) is not allowed in IPv6 (RFC 7915 §4.5): always computed.
            out.checksum = out.calc_checksum_ipv6(&ip6, data).map_err(|_| Drop::Malformed)?;
            Ok(concat(&[&ip6.to_bytes(), &out.to_bytes(), data]))
        }
        IpNumber::ICMP => {
            let (icmp, data) = Icmpv4Header::from_slice(payload).map_err(|_| Drop::Malformed)?;
            if Icmpv4Header::with_checksum(icmp.icmp_type.clone(), data).checksum != icmp.checksum {
                return Err(Drop::Malformed);
            }
            let (t6, dst6, body): (Icmpv6Type, [u8; 16], Vec<u8>) = match icmp.icmp_type {
                Icmpv4Type::EchoReply(e) => {
                    let b = table.inbound(cfg, now, Flow { proto: Proto::Icmp, remote: ip4.source, remote_port: 0, tcp: None }, e.id)?;
                    (Icmpv6Type::EchoReply(IcmpEchoHeader { id: b.v6_port, seq: e.seq }), b.v6, data.to_vec())
                }
                Icmpv4Type::DestinationUnreachable(h) => {
                    let t = match h {
                        DestUnreachableHeader::Port => Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
                        DestUnreachableHeader::Protocol => Icmpv6Type::ParameterProblem(ParameterProblemHeader {
                            code: ParameterProblemCode::UnrecognizedNextHeader,
                            pointer: 6,
                        }),
                        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu } => {
                            Icmpv6Type::PacketTooBig { mtu: (u32::from(next_hop_mtu) + 20).max(1280) }
                        }
                        DestUnreachableHeader::NetworkProhibited
                        | DestUnreachableHeader::HostProhibited
                        | DestUnreachableHeader::FilterProhibited
                        | DestUnreachableHeader::PrecedenceCutoff => Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Prohibited),
                        DestUnreachableHeader::HostPrecedenceViolation => return Err(Drop::Unsupported),
                        _ => Icmpv6Type::DestinationUnreachable(DestUnreachableCode::NoRoute),
                    };
                    let (dst, inner) = inner_4to6(cfg, table, data)?;
                    (t, dst, inner)
                }
                Icmpv4Type::TimeExceeded(c) => {
                    let t = Icmpv6Type::TimeExceeded(match c {
                        TimeExceeded4::TtlExceededInTransit => TimeExceeded6::HopLimitExceeded,
                        TimeExceeded4::FragmentReassemblyTimeExceeded => TimeExceeded6::FragmentReassemblyTimeExceeded,
                    });
                    let (dst, inner) = inner_4to6(cfg, table, data)?;
                    (t, dst, inner)
                }
                // Inbound echo requests open no state (filtering); the rest is not translated.
                Icmpv4Type::EchoRequest(_) => return Err(Drop::Filtered),
                _ => return Err(Drop::Unsupported),
            };
            let mut body = body;
            if !matches!(t6, Icmpv6Type::EchoReply(_)) {
                body.truncate(ICMP6_ERROR_MAX - 40 - 8);
            }
            let h6 = Icmpv6Header::with_checksum(t6, src6, dst6, &body).map_err(|_| Drop::Malformed)?;
            let icmp_bytes = concat(&[&h6.to_bytes(), &body]);
            let ip6 = v6_header(src6, dst6, hop, IpNumber::IPV6_ICMP, tc, icmp_bytes.len())?;
            Ok(concat(&[&ip6.to_bytes(), &icmp_bytes]))
        }
        _ => Err(Drop::Unsupported),
    }
}

/// The packet inside an ICMPv4 error about a packet we sent out: pool:mapped port → remote.
/// Returns the inside host's address (the error's destination) and the translated packet.
fn inner_4to6(cfg: &Config, table: &Table, data: &[u8]) -> Result<([u8; 16], Vec<u8>), Drop> {
    let (ip4, rest) = Ipv4Header::from_slice(data).map_err(|_| Drop::Malformed)?;
    if ip4.source != cfg.pool {
        return Err(Drop::NotOurs);
    }
    let (proto, number) = match ip4.protocol {
        IpNumber::TCP => (Proto::Tcp, IpNumber::TCP),
        IpNumber::UDP => (Proto::Udp, IpNumber::UDP),
        IpNumber::ICMP => (Proto::Icmp, IpNumber::IPV6_ICMP),
        _ => return Err(Drop::Unsupported),
    };
    // At least the first 8 bytes of the transport header came back (RFC 792).
    let claimed = usize::from(ip4.total_len).saturating_sub(ip4.header_len());
    let mut l4: Vec<u8> = rest[..rest.len().min(claimed)].to_vec();
    if l4.len() < 8 {
        return Err(Drop::Malformed);
    }
    let (port_at, remote_port) = match proto {
        Proto::Tcp | Proto::Udp => (0, u16::from_be_bytes([l4[2], l4[3]])),
        Proto::Icmp => (4, 0),
    };
    let v4_port = u16::from_be_bytes([l4[port_at], l4[port_at + 1]]);
    let b = table.binding_for_v4(proto, v4_port).ok_or(Drop::NoBinding)?;
    // Only errors about a flow the host really has (an attacker cannot inject errors for
    // flows it only guesses the port of without also knowing the remote end).
    if !table.has_session(proto, v4_port, ip4.destination, remote_port) {
        return Err(Drop::Filtered);
    }
    l4[port_at..port_at + 2].copy_from_slice(&b.v6_port.to_be_bytes());
    if proto == Proto::Icmp {
        l4[0] = match l4[0] {
            8 => 128,
            0 => 129,
            _ => return Err(Drop::Unsupported),
        };
    }
    let tc = ip4.dscp.value() << 2 | ip4.ecn.value();
    let ip6 = v6_header(b.v6, embed(&cfg.prefix, ip4.destination), ip4.time_to_live, number, tc, claimed)?;
    Ok((b.v6, concat(&[&ip6.to_bytes(), &l4])))
}

// ---------------------------------------------------------------------------------------

/// A UDP header and the datagram it describes (its own length field, checked).
pub(crate) fn udp_parts(payload: &[u8]) -> Result<(UdpHeader, &[u8]), Drop> {
    let (udp, _) = UdpHeader::from_slice(payload).map_err(|_| Drop::Malformed)?;
    let len = usize::from(udp.length);
    if len < 8 || len > payload.len() {
        return Err(Drop::Malformed);
    }
    Ok((udp, &payload[8..len]))
}

pub(crate) fn v4_header(src: [u8; 4], dst: [u8; 4], ttl: u8, proto: IpNumber, traffic_class: u8, payload_len: usize) -> Result<Ipv4Header, Drop> {
    let len = u16::try_from(payload_len).map_err(|_| Drop::Malformed)?;
    let mut h = Ipv4Header::new(len, ttl, proto, src, dst).map_err(|_| Drop::Malformed)?;
    h.dscp = Ipv4Dscp::try_new(traffic_class >> 2).map_err(|_| Drop::Malformed)?;
    h.ecn = Ipv4Ecn::try_new(traffic_class & 3).map_err(|_| Drop::Malformed)?;
    h.dont_fragment = true;
    h.more_fragments = false;
    h.fragment_offset = IpFragOffset::ZERO;
    h.identification = 0;
    h.header_checksum = h.calc_header_checksum();
    Ok(h)
}

pub(crate) fn v6_header(src: [u8; 16], dst: [u8; 16], hop: u8, next: IpNumber, traffic_class: u8, payload_len: usize) -> Result<Ipv6Header, Drop> {
    Ok(Ipv6Header {
        traffic_class,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: u16::try_from(payload_len).map_err(|_| Drop::Malformed)?,
        next_header: next,
        hop_limit: hop,
        source: src,
        destination: dst,
    })
}

pub(crate) fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}
