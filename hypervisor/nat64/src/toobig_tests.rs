//! Packets too big for the next hop (RFC 7915 §4, §5; RFC 792, RFC 1191 §4, RFC 4443 §3.2,
//! RFC 8200 §4.5). Expected bytes are written out at the RFCs' offsets; checksums are checked
//! with the one's-complement sum below, not with the code under test.

use alloc::vec::Vec;
use core::time::Duration;

use etherparse::PacketBuilder;

use crate::gateway::{Gateway, GatewayConfig, FABRIC_MTU};
use crate::toobig::{RateLimit, ICMP_BURST};
use crate::uplink::arp_packet;
use crate::{embed, WELL_KNOWN_PREFIX};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 1];
const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 0xfe];
const ADDR: [u8; 4] = [198, 51, 100, 2];
const ROUTER: [u8; 4] = [198, 51, 100, 1];
const REMOTE: [u8; 4] = [203, 0, 113, 80];

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
fn host() -> [u8; 16] {
    "fdaa::100:0:1:1".parse::<std::net::Ipv6Addr>().unwrap().octets()
}
fn ones(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}
fn v6_sum_ok(src_dst: &[u8], next: u8, seg: &[u8]) -> bool {
    let mut pseudo = Vec::from(src_dst);
    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    ones(seg, ones(&pseudo, 0)) == 0xffff
}
fn eth(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::from(MAC);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&ty.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
/// An IPv4/UDP packet by hand (RFC 791): DF as given, identification `id`, UDP checksum 0.
fn v4_udp(df: bool, id: u16, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + data.len()) as u16;
    let mut p = Vec::from([0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[if df { 0x40 } else { 0 }, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&REMOTE);
    p.extend_from_slice(&ADDR);
    let c = !(ones(&p, 0) as u16);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(data);
    p
}

/// A gateway with a UDP session host:40000 -> REMOTE:7 open; returns it and the mapped port.
fn gateway(words: &str) -> (Gateway, u16) {
    let c = GatewayConfig::parse(&alloc::format!("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 {words}")).unwrap();
    let mut g = Gateway::new(&c, MAC, [1; 32]).unwrap();
    let mut v = Vec::new();
    PacketBuilder::ipv6(host(), embed(&WELL_KNOWN_PREFIX, REMOTE), 64).udp(40000, 7).write(&mut v, b"hi").unwrap();
    assert!(g.from_fabric(t(0), &v).is_empty());
    let _arp = g.uplink.take_frame().unwrap();
    assert!(g.from_uplink(t(0), &eth(0x0806, &arp_packet(2, ROUTER_MAC, ROUTER, MAC, ADDR))).is_empty());
    let f = g.uplink.take_frame().expect("the datagram out");
    let port = u16::from_be_bytes([f[34], f[35]]);
    (g, port)
}

#[test]
fn df_set_over_the_fabric_mtu_is_answered_with_fragmentation_needed() {
    let (mut g, port) = gateway("");
    // 1400 bytes of data: 1448 as IPv6, more than the fabric's 1404
    let big = v4_udp(true, 0x1234, 7, port, &[0xab; 1400]);
    assert!(g.from_uplink(t(1), &eth(0x0800, &big)).is_empty(), "nothing for the fabric");
    let f = g.uplink.take_frame().expect("an ICMPv4 error to the sender");
    assert_eq!(&f[..6], &ROUTER_MAC, "through the router");
    let ip = &f[14..];
    // RFC 791 header: version/IHL, total length = 20 + 8 + 548 (576 at most, RFC 1812 §4.3.2.3)
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, 576);
    assert_eq!(ip.len(), 576);
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!((&ip[12..16], &ip[16..20]), (&ADDR[..], &REMOTE[..]), "from the pool address to the sender");
    assert_eq!(ones(&ip[..20], 0), 0xffff, "header checksum");
    // RFC 792 / RFC 1191 §4: type 3, code 4, checksum, unused (16 bits), next-hop MTU (16 bits)
    let icmp = &ip[20..];
    assert_eq!(&icmp[..2], &[3, 4]);
    assert_eq!(&icmp[4..6], &[0, 0]);
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]) as usize, FABRIC_MTU - 20, "the IPv6 MTU less 20 (RFC 7915 §4)");
    assert_eq!(&icmp[6..8], &[0x05, 0x68]);
    assert_eq!(ones(icmp, 0), 0xffff, "ICMP checksum");
    assert_eq!(&icmp[8..], &big[..548], "the packet quoted as it came");
    assert_eq!((g.stats.too_big, g.stats.icmp_sent), (1, 1));
    // a packet that fits is translated as before
    assert_eq!(g.from_uplink(t(1), &eth(0x0800, &v4_udp(true, 1, 7, port, &[1; 1356]))).len(), 1);
    // no error about an ICMP error
    let mut err = Vec::new();
    PacketBuilder::ipv4(REMOTE, ADDR, 64).icmpv4(etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)).write(&mut err, &[0; 1400]).unwrap();
    assert!(crate::toobig::frag_needed(ADDR, &err, 1384).is_none());
}

#[test]
fn df_clear_over_the_fabric_mtu_is_sent_as_ipv6_fragments() {
    let (mut g, port) = gateway("");
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let frags = g.from_uplink(t(1), &eth(0x0800, &v4_udp(false, 0xbeef, 7, port, &data)));
    assert_eq!(frags.len(), 3, "3008 bytes of UDP in 1352-byte pieces");
    assert!(g.uplink.take_frame().is_none(), "no ICMP error");
    let mut whole = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        assert!(f.len() <= FABRIC_MTU);
        assert_eq!(f[6], 44, "Fragment header (RFC 8200 §4.5)");
        assert_eq!(usize::from(u16::from_be_bytes([f[4], f[5]])), f.len() - 40);
        assert_eq!(&f[8..24], &embed(&WELL_KNOWN_PREFIX, REMOTE));
        assert_eq!(&f[24..40], &host());
        let h = &f[40..48];
        assert_eq!(h[0], 17, "next header UDP");
        assert_eq!(h[1], 0);
        let off = u16::from_be_bytes([h[2], h[3]]);
        assert_eq!(usize::from(off >> 3) * 8, whole.len(), "offset in 8-byte units");
        assert_eq!(off & 1 == 1, i < 2, "M flag on all but the last");
        assert_eq!(&h[4..8], &[0, 0, 0xbe, 0xef], "the IPv4 identification in the low 16 bits (RFC 7915 §4.1)");
        whole.extend_from_slice(&f[48..]);
    }
    // the reassembled UDP datagram: destination port the host's, payload intact, checksum over
    // the IPv6 pseudo-header (computed although IPv4's was 0, RFC 7915 §4.5)
    assert_eq!(whole.len(), 8 + 3000);
    assert_eq!(u16::from_be_bytes([whole[2], whole[3]]), 40000);
    assert_eq!(&whole[8..], &data[..]);
    assert!(v6_sum_ok(&frags[0][8..40], 17, &whole));
    assert_eq!(g.stats.fragmented, 1);
}

#[test]
fn over_the_uplink_mtu_is_answered_with_packet_too_big() {
    let (mut g, _) = gateway("nat64.mtu=1300");
    let mut v = Vec::new();
    PacketBuilder::ipv6(host(), embed(&WELL_KNOWN_PREFIX, REMOTE), 64).udp(40000, 7).write(&mut v, &[0x5a; 1300]).unwrap();
    let p = g.from_fabric(t(1), &v).pop().expect("packet too big for the host");
    assert!(g.uplink.take_frame().is_none(), "nothing on the uplink");
    // RFC 8200 header: payload length 8 + 1232 (1280 in all, RFC 4443 §2.4 (c)), next header 58
    assert_eq!(p.len(), 1280);
    assert_eq!(p[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([p[4], p[5]]), 1240);
    assert_eq!(p[6], 58);
    assert_eq!(&p[8..24], &embed(&WELL_KNOWN_PREFIX, ADDR), "from the pool address in the prefix");
    assert_eq!(&p[24..40], &host());
    // RFC 4443 §3.2: type 2, code 0, checksum, MTU (32 bits) = 1300 + 20 (RFC 7915 §5.2)
    assert_eq!(&p[40..42], &[2, 0]);
    assert_eq!(&p[44..48], &[0, 0, 0x05, 0x28]);
    assert!(v6_sum_ok(&p[8..40], 58, &p[40..]));
    assert_eq!(&p[48..], &v[..1232]);
    assert_eq!(g.stats.out_too_big, 1);
    // 1300 bytes of IPv4 fit: translated and sent
    let mut fits = Vec::new();
    PacketBuilder::ipv6(host(), embed(&WELL_KNOWN_PREFIX, REMOTE), 64).udp(40000, 7).write(&mut fits, &[0; 1272]).unwrap();
    assert!(g.from_fabric(t(1), &fits).is_empty());
    assert_eq!(g.uplink.take_frame().expect("sent").len(), 14 + 1300);
    // without nat64.mtu the uplink is Ethernet's 1500: nothing from the fabric is too big
    let (mut g, _) = gateway("");
    assert!(g.from_fabric(t(1), &v).is_empty());
    assert!(g.uplink.take_frame().is_some());
    assert!(GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.mtu=1259").is_err());
    assert!(GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.mtu=1501").is_err());
}

#[test]
fn generated_icmp_is_rate_limited() {
    let (mut g, port) = gateway("");
    let big = eth(0x0800, &v4_udp(true, 9, 7, port, &[0; 1400]));
    let sent = |g: &mut Gateway, at: u64, n: usize| {
        let mut k = 0;
        for _ in 0..n {
            assert!(g.from_uplink(t(at), &big).is_empty());
            while g.uplink.take_frame().is_some() {
                k += 1;
            }
        }
        k
    };
    assert_eq!(sent(&mut g, 10, 50), ICMP_BURST as usize, "a burst, then nothing");
    assert_eq!(sent(&mut g, 510, 50), 5, "5 more after half a second");
    assert_eq!(sent(&mut g, 5000, 50), ICMP_BURST as usize, "the bucket refills, no further");
    assert_eq!(g.stats.too_big, 150);
    assert_eq!(g.stats.icmp_limited, 150 - g.stats.icmp_sent);
    let mut r = RateLimit::default();
    assert!((0..ICMP_BURST).all(|_| r.allow(t(0))));
    assert!(!r.allow(t(0)));
}

#[test]
fn the_gateway_fuzz_entry_takes_random_records() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let data: Vec<u8> = (0..2048)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        crate::fuzzing::gateway(&data);
    }
    crate::fuzzing::gateway(&[1, 0, 0]);
}
