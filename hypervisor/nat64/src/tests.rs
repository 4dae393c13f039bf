//! Translation and state tests. Inputs are built with etherparse's PacketBuilder; outputs are
//! read at the RFC's byte offsets and their checksums checked with the one's-complement sum
//! written out below, not with the code under test.

use alloc::vec::Vec;
use core::time::Duration;
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{Icmpv4Type, PacketBuilder};

use crate::{embed, fuzzing, Config, Drop, Nat64, WELL_KNOWN_PREFIX};

const POOL: [u8; 4] = [203, 0, 113, 1];
const REMOTE: [u8; 4] = [198, 51, 100, 7];
const ROUTER: [u8; 4] = [198, 51, 100, 254];

fn host() -> [u8; 16] {
    "fd00:ca7e::5".parse::<Ipv6Addr>().unwrap().octets()
}
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    embed(&WELL_KNOWN_PREFIX, v4)
}
fn t(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// RFC 1071 one's-complement sum of 16-bit words.
fn ones(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The transport checksum of an IPv4 packet (TCP/UDP) verifies: the sum over the pseudo-header
/// and the segment is 0xffff.
fn v4_l4_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 15) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let seg = &p[ihl..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, p[9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    ones(seg, ones(&pseudo, 0)) == 0xffff
}

fn v4_header_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 15) * 4;
    ones(&p[..ihl], 0) == 0xffff
}

/// The transport (or ICMPv6) checksum of an IPv6 packet verifies.
fn v6_l4_ok(p: &[u8]) -> bool {
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let seg = &p[40..40 + len];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[8..40]);
    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, p[6]]);
    ones(seg, ones(&pseudo, 0)) == 0xffff
}

fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, hop: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src, dst, hop).udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}
fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}
fn port_at(p: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([p[off], p[off + 1]])
}

fn nat() -> Nat64 {
    let mut c = Config::new(POOL);
    c.ports = (40000, 40009);
    Nat64::new(c)
}

#[test]
fn rfc6052_embeds_ipv4_in_the_well_known_prefix() {
    // RFC 6052 §2.4's example for the /96 well-known prefix: 192.0.2.33 is 64:ff9b::192.0.2.33.
    assert_eq!(Ipv6Addr::from(embed(&WELL_KNOWN_PREFIX, [192, 0, 2, 33])), "64:ff9b::c000:221".parse::<Ipv6Addr>().unwrap());
    assert!(!crate::is_global_v4([10, 1, 2, 3]) && !crate::is_global_v4([127, 0, 0, 1]) && !crate::is_global_v4([224, 0, 0, 1]));
    assert!(crate::is_global_v4(REMOTE));
}

#[test]
fn udp_goes_out_and_its_answer_comes_back() {
    let mut n = nat();
    let out = n.outbound(t(1), &udp6(host(), 5000, mapped(REMOTE), 53, 64, b"query")).unwrap();
    assert_eq!(out[0] >> 4, 4);
    assert_eq!(Ipv4Addr::from(<[u8; 4]>::try_from(&out[12..16]).unwrap()), Ipv4Addr::from(POOL));
    assert_eq!(&out[16..20], &REMOTE);
    assert_eq!(out[8], 63, "TTL = hop limit - 1");
    assert_eq!(out[6] & 0x40, 0x40, "DF set");
    assert!(v4_header_ok(&out) && v4_l4_ok(&out));
    let v4_port = port_at(&out, 20);
    assert!((40000..=40009).contains(&v4_port));
    assert_eq!(port_at(&out, 22), 53);
    assert_eq!(&out[28..], b"query");
    // The answer.
    let back = n.inbound(t(2), &udp4(REMOTE, 53, POOL, v4_port, b"answer")).unwrap();
    assert_eq!(back[0] >> 4, 6);
    assert_eq!(&back[8..24], &mapped(REMOTE));
    assert_eq!(&back[24..40], &host());
    assert_eq!(back[7], 63);
    assert_eq!((port_at(&back, 40), port_at(&back, 42)), (53, 5000));
    assert!(v6_l4_ok(&back));
    assert_eq!(&back[48..], b"answer");
    // Endpoint-independent mapping: the same source to another destination keeps its port.
    let out2 = n.outbound(t(3), &udp6(host(), 5000, mapped([198, 51, 100, 8]), 53, 64, b"q")).unwrap();
    assert_eq!(port_at(&out2, 20), v4_port);
    assert_eq!((n.bindings(), n.sessions()), (1, 2));
}

#[test]
fn inbound_needs_a_session_from_inside() {
    let mut n = nat();
    assert_eq!(n.inbound(t(1), &udp4(REMOTE, 53, POOL, 40000, b"x")), Err(Drop::NoBinding));
    let out = n.outbound(t(1), &udp6(host(), 5000, mapped(REMOTE), 53, 64, b"q")).unwrap();
    let p = port_at(&out, 20);
    // Another remote, or another port of the same remote: filtered.
    assert_eq!(n.inbound(t(2), &udp4([198, 51, 100, 9], 53, POOL, p, b"x")), Err(Drop::Filtered));
    assert_eq!(n.inbound(t(2), &udp4(REMOTE, 54, POOL, p, b"x")), Err(Drop::Filtered));
    // Not for the pool address.
    assert_eq!(n.inbound(t(2), &udp4(REMOTE, 53, [203, 0, 113, 2], p, b"x")), Err(Drop::NotOurs));
    // An inbound ping opens nothing.
    let mut ping = Vec::new();
    PacketBuilder::ipv4(REMOTE, POOL, 64).icmpv4_echo_request(1, 1).write(&mut ping, b"hi").unwrap();
    assert_eq!(n.inbound(t(2), &ping), Err(Drop::Filtered));
}

#[test]
fn tcp_state_follows_the_handshake_and_times_out() {
    let mut n = nat();
    let mut syn = Vec::new();
    PacketBuilder::ipv6(host(), mapped(REMOTE), 64).tcp(40123, 80, 1000, 65535).syn().write(&mut syn, &[]).unwrap();
    let mut ack = Vec::new();
    PacketBuilder::ipv6(host(), mapped(REMOTE), 64).tcp(40124, 80, 1000, 65535).ack(1).write(&mut ack, b"GET").unwrap();
    // A segment without SYN opens nothing.
    assert_eq!(n.outbound(t(1), &ack), Err(Drop::NoBinding));
    let out = n.outbound(t(1), &syn).unwrap();
    assert!(v4_header_ok(&out) && v4_l4_ok(&out));
    let p = port_at(&out, 20);
    let mut synack = Vec::new();
    PacketBuilder::ipv4(REMOTE, POOL, 64).tcp(80, p, 5000, 65535).syn().ack(1001).write(&mut synack, &[]).unwrap();
    let back = n.inbound(t(2), &synack).unwrap();
    assert!(v6_l4_ok(&back));
    assert_eq!(port_at(&back, 42), 40123);
    // Established: still there after the transitory timeout (4 min), not after 2 h 4 min.
    n.expire(t(2 + 300));
    assert_eq!(n.sessions(), 1);
    n.expire(t(2 + 7440 + 1));
    assert_eq!(n.sessions(), 0);
    assert_eq!(n.bindings(), 0, "a binding goes with its last session");
    // A FIN makes it transitory again.
    let out = n.outbound(t(10_000), &syn).unwrap();
    let p = port_at(&out, 20);
    let mut synack = Vec::new();
    PacketBuilder::ipv4(REMOTE, POOL, 64).tcp(80, p, 5000, 65535).syn().ack(1001).write(&mut synack, &[]).unwrap();
    n.inbound(t(10_001), &synack).unwrap();
    let mut fin = Vec::new();
    PacketBuilder::ipv4(REMOTE, POOL, 64).tcp(80, p, 5001, 65535).fin().ack(1001).write(&mut fin, &[]).unwrap();
    n.inbound(t(10_002), &fin).unwrap();
    n.expire(t(10_002 + 241));
    assert_eq!(n.sessions(), 0);
}

#[test]
fn ping_goes_out_and_the_reply_comes_back() {
    let mut n = nat();
    let mut req = Vec::new();
    PacketBuilder::ipv6(host(), mapped(REMOTE), 64).icmpv6_echo_request(0x77, 3).write(&mut req, b"ping").unwrap();
    let out = n.outbound(t(1), &req).unwrap();
    assert_eq!((out[9], out[20]), (1, 8), "ICMPv4 echo request");
    assert_eq!(ones(&out[20..], 0), 0xffff, "ICMPv4 checksum");
    let id = port_at(&out, 24);
    assert_eq!(port_at(&out, 26), 3);
    let mut reply = Vec::new();
    PacketBuilder::ipv4(REMOTE, POOL, 64).icmpv4_echo_reply(id, 3).write(&mut reply, b"ping").unwrap();
    let back = n.inbound(t(2), &reply).unwrap();
    assert_eq!((back[6], back[40]), (58, 129), "ICMPv6 echo reply");
    assert!(v6_l4_ok(&back));
    assert_eq!((port_at(&back, 44), port_at(&back, 46)), (0x77, 3));
    n.expire(t(2 + 61));
    assert_eq!(n.sessions(), 0);
}

#[test]
fn icmpv4_errors_come_back_with_the_packet_inside_translated() {
    let mut n = nat();
    let out = n.outbound(t(1), &udp6(host(), 5000, mapped(REMOTE), 53, 64, b"query")).unwrap();
    let errors = [
        (Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port), 1u8, 4u8),
        (Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }), 2, 0),
        (Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit), 3, 0),
        (Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Protocol), 4, 1),
    ];
    for (ty, t6, c6) in errors {
        let mut err = Vec::new();
        PacketBuilder::ipv4(ROUTER, POOL, 64).icmpv4(ty).write(&mut err, &out).unwrap();
        let back = n.inbound(t(2), &err).unwrap();
        assert_eq!((back[40], back[41]), (t6, c6));
        assert!(v6_l4_ok(&back));
        assert_eq!(&back[8..24], &mapped(ROUTER));
        assert_eq!(&back[24..40], &host());
        if t6 == 2 {
            assert_eq!(u32::from_be_bytes(back[44..48].try_into().unwrap()), 1420, "MTU + 20");
        }
        // The packet inside, as the host sent it.
        let inner = &back[48..];
        assert_eq!(inner[0] >> 4, 6);
        assert_eq!(&inner[8..24], &host());
        assert_eq!(&inner[24..40], &mapped(REMOTE));
        assert_eq!((port_at(inner, 40), port_at(inner, 42)), (5000, 53));
    }
    // An error about a flow the host does not have is dropped.
    let forged = udp4(POOL, 40009, REMOTE, 53, b"x");
    let mut err = Vec::new();
    PacketBuilder::ipv4(ROUTER, POOL, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port))
        .write(&mut err, &forged)
        .unwrap();
    assert_eq!(n.inbound(t(2), &err), Err(Drop::NoBinding));
}

#[test]
fn icmpv6_errors_from_inside_go_out_with_the_packet_inside_translated() {
    let mut n = nat();
    let out = n.outbound(t(1), &udp6(host(), 5000, mapped(REMOTE), 53, 64, b"q")).unwrap();
    let p = port_at(&out, 20);
    let inside = n.inbound(t(2), &udp4(REMOTE, 53, POOL, p, b"answer")).unwrap();
    // The host refuses it (port unreachable), quoting the packet it got.
    let mut err = Vec::new();
    PacketBuilder::ipv6(host(), mapped(REMOTE), 64)
        .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port))
        .write(&mut err, &inside)
        .unwrap();
    let o = n.outbound(t(3), &err).unwrap();
    assert!(v4_header_ok(&o));
    assert_eq!((o[9], o[20], o[21]), (1, 3, 3), "ICMPv4 port unreachable");
    assert_eq!(ones(&o[20..], 0), 0xffff);
    let inner = &o[28..];
    assert_eq!((&inner[12..16], &inner[16..20]), (&REMOTE[..], &POOL[..]));
    assert_eq!((port_at(inner, 20), port_at(inner, 22)), (53, p));
}

#[test]
fn fragments_extension_headers_and_foreign_destinations_are_dropped() {
    let mut n = nat();
    // IPv4 fragment (MF set).
    let mut frag = udp4(REMOTE, 53, POOL, 40000, b"x");
    frag[6] |= 0x20;
    let sum = {
        frag[10] = 0;
        frag[11] = 0;
        !(ones(&frag[..20], 0) as u16)
    };
    frag[10..12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(n.inbound(t(1), &frag), Err(Drop::Fragment));
    // A bad IPv4 header checksum.
    let mut bad = udp4(REMOTE, 53, POOL, 40000, b"x");
    bad[10] ^= 1;
    assert_eq!(n.inbound(t(1), &bad), Err(Drop::Malformed));
    // IPv6 Fragment header.
    let mut f6 = udp6(host(), 1, mapped(REMOTE), 2, 64, b"x");
    f6[6] = 44;
    assert_eq!(n.outbound(t(1), &f6), Err(Drop::Fragment));
    // Outside the prefix, a private IPv4 address behind it, an expiring hop limit.
    assert_eq!(n.outbound(t(1), &udp6(host(), 1, "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(), 2, 64, b"x")), Err(Drop::NotOurs));
    assert_eq!(n.outbound(t(1), &udp6(host(), 1, mapped([10, 0, 0, 1]), 2, 64, b"x")), Err(Drop::BadAddress));
    assert_eq!(n.outbound(t(1), &udp6(host(), 1, mapped(REMOTE), 2, 1, b"x")), Err(Drop::HopLimit));
    assert_eq!(n.sessions(), 0);
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_the_old_ones() {
    let mut n = nat(); // 10 ports
    let mut ports = Vec::new();
    for i in 0..10u16 {
        let o = n.outbound(t(1), &udp6(host(), 1000 + i, mapped(REMOTE), 53, 64, b"q")).unwrap();
        ports.push(port_at(&o, 20));
    }
    assert_eq!(n.outbound(t(1), &udp6(host(), 2000, mapped(REMOTE), 53, 64, b"q")), Err(Drop::TableFull));
    // The existing ones still work both ways.
    for (i, p) in ports.iter().enumerate() {
        assert!(n.outbound(t(2), &udp6(host(), 1000 + i as u16, mapped(REMOTE), 53, 64, b"q")).is_ok());
        assert!(n.inbound(t(2), &udp4(REMOTE, 53, POOL, *p, b"a")).is_ok());
    }
    // After the UDP timeout everything is gone and new flows get ports again.
    n.expire(t(2 + 301));
    assert_eq!((n.sessions(), n.bindings()), (0, 0));
    assert!(n.outbound(t(400), &udp6(host(), 2000, mapped(REMOTE), 53, 64, b"q")).is_ok());
    assert_eq!(*n.stats().dropped.get(&Drop::TableFull).unwrap(), 1);
}

#[test]
fn hostile_packets_never_panic_and_never_grow_the_tables() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut c = Config::new(POOL);
    c.ports = (40000, 40009);
    c.max_sessions = 12;
    let mut n = Nat64::new(c);
    let good6 = udp6(host(), 5000, mapped(REMOTE), 53, 64, b"query");
    let good4 = udp4(REMOTE, 53, POOL, 40000, b"answer");
    for i in 0..30_000u64 {
        let base = if i % 2 == 0 { &good6 } else { &good4 };
        let mut p = base.clone();
        match rnd() % 4 {
            0 => p.truncate((rnd() % (p.len() as u64 + 1)) as usize),
            1 => {
                for _ in 0..1 + rnd() % 4 {
                    let at = (rnd() % p.len() as u64) as usize;
                    p[at] ^= 1 << (rnd() % 8);
                }
            }
            2 => p = (0..rnd() % 200).map(|_| rnd() as u8).collect(),
            _ => p.extend((0..rnd() % 64).map(|_| rnd() as u8)),
        }
        let _ = if rnd() % 2 == 0 { n.outbound(t(i), &p) } else { n.inbound(t(i), &p) };
        assert!(n.sessions() <= 12 && n.bindings() <= 10);
    }
    let data: Vec<u8> = (0..50_000).map(|_| rnd() as u8).collect();
    fuzzing::run(&data);
    fuzzing::run(&[0u8; 3]);
}

#[test]
fn a_host_cannot_quote_another_hosts_flow_in_an_icmp_error() {
    let mut n = nat();
    let out = n.outbound(t(1), &udp6(host(), 5000, mapped(REMOTE), 53, 64, b"q")).unwrap();
    let p = port_at(&out, 20);
    let to_a = n.inbound(t(2), &udp4(REMOTE, 53, POOL, p, b"answer")).unwrap();
    let other: [u8; 16] = "fd00:ca7e::6".parse::<Ipv6Addr>().unwrap().octets();
    let unreachable = etherparse::Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port);
    // Host B quotes the packet A received, to the real remote and to an address of its choice.
    for dst in [REMOTE, [8, 8, 4, 4]] {
        let mut err = Vec::new();
        PacketBuilder::ipv6(other, mapped(dst), 64).icmpv6(unreachable).write(&mut err, &to_a).unwrap();
        assert_eq!(n.outbound(t(3), &err), Err(Drop::Filtered));
    }
    // A itself, to another address than the remote: filtered too.
    let mut err = Vec::new();
    PacketBuilder::ipv6(host(), mapped([8, 8, 4, 4]), 64).icmpv6(unreachable).write(&mut err, &to_a).unwrap();
    assert_eq!(n.outbound(t(3), &err), Err(Drop::Filtered));
}

#[test]
fn damaged_segments_are_not_given_a_good_checksum() {
    let mut n = nat();
    let mut out6 = udp6(host(), 5000, mapped(REMOTE), 53, 64, b"query");
    let last = out6.len() - 1;
    out6[last] ^= 0x10;
    assert_eq!(n.outbound(t(1), &out6), Err(Drop::Malformed));
    let o = n.outbound(t(1), &udp6(host(), 5000, mapped(REMOTE), 53, 64, b"query")).unwrap();
    let mut in4 = udp4(REMOTE, 53, POOL, port_at(&o, 20), b"answer");
    let last = in4.len() - 1;
    in4[last] ^= 0x10;
    assert_eq!(n.inbound(t(2), &in4), Err(Drop::Malformed));
    // IPv4's "no checksum" is accepted and gets a real one on the IPv6 side.
    let mut zero = udp4(REMOTE, 53, POOL, port_at(&o, 20), b"answer");
    zero[26] = 0;
    zero[27] = 0;
    let back = n.inbound(t(2), &zero).unwrap();
    assert!(v6_l4_ok(&back));
}
