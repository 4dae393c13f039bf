//! The uplink (Ethernet, ARP) and the gateway joining it to the translator. Frames are built
//! by hand at RFC 826 / IEEE 802.3 offsets; packets with etherparse's PacketBuilder.

use alloc::vec::Vec;
use core::time::Duration;

use etherparse::PacketBuilder;

use crate::gateway::{Gateway, GatewayConfig};
use crate::uplink::{arp_packet, parse_cidr, Input, Uplink, UplinkConfig, ARP_ENTRIES, PENDING_MAX};
use crate::{embed, WELL_KNOWN_PREFIX};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 1];
const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 0xfe];
const ADDR: [u8; 4] = [198, 51, 100, 2];
const ROUTER: [u8; 4] = [198, 51, 100, 1];
const REMOTE: [u8; 4] = [203, 0, 113, 80];

fn t(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn uplink() -> Uplink {
    Uplink::new(UplinkConfig { mac: MAC, addr: ADDR, prefix_len: 24, gateway: ROUTER }).unwrap()
}

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ty.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn v4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src, dst, 64).udp(sport, dport).write(&mut v, data).unwrap();
    v
}

fn v6_udp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src, dst, 64).udp(sport, dport).write(&mut v, data).unwrap();
    v
}

#[test]
fn packets_wait_for_arp_then_go_to_the_router_or_an_on_link_host() {
    let mut u = uplink();
    u.send(t(0), v4_udp(ADDR, REMOTE, 1, 2, b"x"));
    // an ARP request for the router, broadcast, from our MAC and address
    let f = u.take_frame().expect("ARP request");
    assert_eq!(&f[0..6], &[0xff; 6]);
    assert_eq!(&f[6..12], &MAC);
    assert_eq!(u16::from_be_bytes([f[12], f[13]]), 0x0806);
    assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
    assert_eq!(&f[22..28], &MAC);
    assert_eq!(&f[28..32], &ADDR);
    assert_eq!(&f[38..42], &ROUTER);
    assert!(u.take_frame().is_none(), "the packet waits");
    // a second packet does not ask again within a second
    u.send(t(10), v4_udp(ADDR, REMOTE, 1, 2, b"y"));
    assert!(u.take_frame().is_none());
    // the reply releases both, in order, to the router's MAC
    let reply = arp_packet(2, ROUTER_MAC, ROUTER, MAC, ADDR);
    assert_eq!(u.input(t(20), &eth(MAC, ROUTER_MAC, 0x0806, &reply)), Input::None);
    for want in [b"x", b"y"] {
        let f = u.take_frame().expect("released");
        assert_eq!(&f[0..6], &ROUTER_MAC);
        assert_eq!(u16::from_be_bytes([f[12], f[13]]), 0x0800);
        assert_eq!(f.last(), Some(&want[0]));
    }
    // known now: straight out
    u.send(t(30), v4_udp(ADDR, REMOTE, 1, 2, b"z"));
    assert_eq!(&u.take_frame().unwrap()[0..6], &ROUTER_MAC);
    // an on-link destination is asked for itself, not the router
    u.send(t(40), v4_udp(ADDR, [198, 51, 100, 9], 1, 2, b"w"));
    let f = u.take_frame().unwrap();
    assert_eq!(&f[38..42], &[198, 51, 100, 9]);
    // the cache entry expires; the packet waiting for .9 is dropped after its 3 s
    u.tick(t(61_000));
    assert_eq!(u.arp_entries(), 0);
    assert_eq!(u.pending(), 0);
    assert_eq!(u.stats().pending_dropped, 1);
}

#[test]
fn requests_for_our_address_are_answered_and_nothing_else_is_learned() {
    let mut u = uplink();
    let host = [0x52, 0x54, 0, 1, 2, 3];
    let req = arp_packet(1, host, [198, 51, 100, 9], [0; 6], ADDR);
    assert_eq!(u.input(t(0), &eth([0xff; 6], host, 0x0806, &req)), Input::None);
    let f = u.take_frame().expect("ARP reply");
    assert_eq!(&f[0..6], &host);
    assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 2]);
    assert_eq!(&f[22..28], &MAC);
    assert_eq!(&f[28..32], &ADDR);
    assert_eq!(&f[32..38], &host);
    assert_eq!(u.arp_entries(), 1, "the asker is learned (RFC 826)");
    // a request for another address, an unsolicited reply, a request from off the subnet:
    // nothing answered, nothing learned
    let other = arp_packet(1, host, [198, 51, 100, 9], [0; 6], [198, 51, 100, 77]);
    let unsolicited = arp_packet(2, [0x52, 0, 0, 0, 0, 9], [198, 51, 100, 50], MAC, ADDR);
    let foreign = arp_packet(1, [0x52, 0, 0, 0, 0, 8], [10, 0, 0, 1], [0; 6], ADDR);
    for p in [other, unsolicited, foreign] {
        u.input(t(1), &eth([0xff; 6], host, 0x0806, &p));
    }
    assert!(u.take_frame().is_none());
    assert_eq!(u.arp_entries(), 1);
    // IPv4 to our MAC is for the translator; to another MAC or broadcast it is not
    let p = v4_udp(REMOTE, ADDR, 5, 6, b"hi");
    assert_eq!(u.input(t(2), &eth(MAC, ROUTER_MAC, 0x0800, &p)), Input::Ipv4(p.clone()));
    assert_eq!(u.input(t(2), &eth([2, 0, 0, 0, 0, 1], ROUTER_MAC, 0x0800, &p)), Input::None);
    assert_eq!(u.input(t(2), &eth([0xff; 6], ROUTER_MAC, 0x0800, &p)), Input::None);
    assert_eq!(u.input(t(2), &eth(MAC, ROUTER_MAC, 0x86dd, &p)), Input::None);
}

#[test]
fn the_cache_and_the_waiting_packets_are_bounded() {
    let mut u = uplink();
    // PENDING_MAX + 10 packets to distinct on-link hosts that never answer
    for i in 0..PENDING_MAX + 10 {
        u.send(t(0), v4_udp(ADDR, [198, 51, 100, 10 + i as u8], 1, 2, b"x"));
    }
    assert_eq!(u.pending(), PENDING_MAX);
    assert_eq!(u.stats().pending_dropped, 10);
    while u.take_frame().is_some() {}
    // more hosts answering than the cache holds: the oldest go
    let mut v = uplink();
    for i in 0..ARP_ENTRIES + 5 {
        let ip = [198, 51, 100, 100 + i as u8];
        let mac = [0x52, 0, 0, 0, 1, i as u8];
        let req = arp_packet(1, mac, ip, [0; 6], ADDR);
        v.input(t(i as u64), &eth([0xff; 6], mac, 0x0806, &req));
    }
    assert_eq!(v.arp_entries(), ARP_ENTRIES);
}

#[test]
fn hostile_frames_never_panic() {
    let mut u = uplink();
    let mut x = 0x1234_5678u32;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let arp_req = eth([0xff; 6], ROUTER_MAC, 0x0806, &arp_packet(1, ROUTER_MAC, ROUTER, [0; 6], ADDR));
    for i in 0..20_000 {
        let mut f = if i % 2 == 0 { arp_req.clone() } else { eth(MAC, ROUTER_MAC, 0x0800, &v4_udp(REMOTE, ADDR, 1, 2, b"abc")) };
        let n = rnd() as usize % (f.len() + 1);
        f.truncate(n);
        for _ in 0..rnd() % 4 {
            if !f.is_empty() {
                let j = rnd() as usize % f.len();
                f[j] ^= rnd() as u8;
            }
        }
        let _ = u.input(t(i), &f);
        while u.take_frame().is_some() {}
    }
    assert!(u.arp_entries() <= ARP_ENTRIES);
}

#[test]
fn configuration_words() {
    let c = GatewayConfig::parse("vm=none nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.udp_timeout=5 net.x=1").unwrap();
    assert_eq!((c.addr, c.prefix_len, c.router), (ADDR, 24, ROUTER));
    assert_eq!(c.udp_timeout, Duration::from_secs(5));
    assert_eq!(c.tcp_established_timeout, Duration::from_secs(7440), "RFC 6146's default");
    for bad in [
        "nat64.uplink=198.51.100.2/24",
        "nat64.router=198.51.100.1",
        "nat64.uplink=198.51.100.2 nat64.router=198.51.100.1",
        "nat64.uplink=198.51.100.2/33 nat64.router=198.51.100.1",
        "nat64.uplink=10.0.0.2/24 nat64.router=10.0.0.1",
        "nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.udp_timeout=0",
        "nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.bogus=1",
        "nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.max_sessions=99999999",
        "nat64.uplink=1.2.3.4.5/8 nat64.router=1.2.3.1",
    ] {
        assert!(GatewayConfig::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_cidr("203.0.113.9/32"), Some(([203, 0, 113, 9], 32)));
    // the router must be on the uplink's subnet
    let c = GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=203.0.113.1").unwrap();
    assert!(Gateway::new(&c, MAC, [1; 32]).is_none());
}

#[test]
fn gateway_translates_between_the_fabric_and_the_uplink() {
    let c = GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.udp_timeout=5").unwrap();
    let mut g = Gateway::new(&c, MAC, [1; 32]).unwrap();
    let host: [u8; 16] = "fdaa::100:0:1:1".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mapped = embed(&WELL_KNOWN_PREFIX, REMOTE);
    assert!(g.from_fabric(t(0), &v6_udp(host, mapped, 40000, 7, b"ping")).is_empty());
    let _arp = g.uplink.take_frame().unwrap();
    let reply = arp_packet(2, ROUTER_MAC, ROUTER, MAC, ADDR);
    assert!(g.from_uplink(t(1), &eth(MAC, ROUTER_MAC, 0x0806, &reply)).is_empty());
    let f = g.uplink.take_frame().expect("translated datagram");
    assert_eq!(&f[14 + 12..14 + 16], &ADDR, "from the uplink address");
    assert_eq!(&f[14 + 16..14 + 20], &REMOTE);
    let port = u16::from_be_bytes([f[14 + 20], f[14 + 21]]);
    // the answer comes back as IPv6 from the mapped address to the host
    let back = g.from_uplink(t(2), &eth(MAC, ROUTER_MAC, 0x0800, &v4_udp(REMOTE, ADDR, 7, port, b"pong"))).pop().expect("IPv6 answer");
    assert_eq!(&back[8..24], &mapped);
    assert_eq!(&back[24..40], &host);
    assert_eq!(&back[back.len() - 4..], b"pong");
    assert_eq!(g.nat.sessions(), 1);
    // an answer over the fabric MTU (DF set) is dropped and counted (toobig_tests: the ICMP)
    let big = v4_udp(REMOTE, ADDR, 7, port, &[0u8; 1400]);
    assert!(g.from_uplink(t(3), &eth(MAC, ROUTER_MAC, 0x0800, &big)).is_empty());
    assert_eq!(g.stats.too_big, 1);
    let _icmp = g.uplink.take_frame();
    // the configured UDP timeout drains the table
    g.tick(t(4_000));
    assert_eq!(g.nat.sessions(), 1);
    g.tick(t(8_000));
    assert_eq!((g.nat.sessions(), g.nat.bindings()), (0, 0));
    // and nothing comes in after it
    assert!(g.from_uplink(t(9_000), &eth(MAC, ROUTER_MAC, 0x0800, &v4_udp(REMOTE, ADDR, 7, port, b"late"))).is_empty());
}
