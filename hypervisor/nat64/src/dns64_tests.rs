//! DNS64 (RFC 6147): synthesis, pass-through, matching, bounds, hostile messages, and the
//! gateway carrying it between the fabric and the uplink. Messages are built with simple-dns.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::PacketBuilder;
use simple_dns::rdata::{RData, A, AAAA, CNAME};
use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use crate::dns64::{Dns64, Out, DNS64_ADDR, MAX_PENDING};
use crate::gateway::{Gateway, GatewayConfig, DNS_PORT};
use crate::uplink::arp_packet;

const CLIENT: [u8; 16] = [0xfd, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 1, 0, 1];

fn t(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ask(id: u16, name: &str, ty: TYPE) -> Vec<u8> {
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(ty), QCLASS::CLASS(CLASS::IN), false));
    q.build_bytes_vec().unwrap()
}

/// The upstream's answer to `query` with `records` and `rcode`.
fn answer(query: &[u8], rcode: RCODE, records: Vec<ResourceRecord<'static>>) -> Vec<u8> {
    let q = Packet::parse(query).unwrap();
    let mut r = Packet::new_reply(q.id());
    *r.rcode_mut() = rcode;
    r.questions = q.questions.clone();
    r.answers = records;
    r.build_bytes_vec().unwrap()
}

fn a(name: &'static str, v4: [u8; 4], ttl: u32) -> ResourceRecord<'static> {
    ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, ttl, RData::A(A { address: u32::from_be_bytes(v4) }))
}

fn upstream(o: Out) -> Vec<u8> {
    match o {
        Out::Upstream(m) => m,
        o => panic!("expected a question upstream, got {o:?}"),
    }
}

fn qtype_of(m: &[u8]) -> QTYPE {
    Packet::parse(m).unwrap().questions[0].qtype
}

#[test]
fn a_name_with_only_a_records_gets_synthesized_aaaa() {
    let mut d = Dns64::new(7);
    let q1 = upstream(d.from_client(t(0), CLIENT, 40000, &ask(0x1234, "www.example.net", TYPE::AAAA)));
    assert_eq!(qtype_of(&q1), QTYPE::TYPE(TYPE::AAAA));
    // no AAAA (NOERROR, empty): the same name is asked for A
    let q2 = upstream(d.from_upstream(t(0), &answer(&q1, RCODE::NoError, Vec::new())));
    assert_eq!(qtype_of(&q2), QTYPE::TYPE(TYPE::A));
    let cname = ResourceRecord::new(Name::new_unchecked("www.example.net"), CLASS::IN, 300, RData::CNAME(CNAME(Name::new_unchecked("web.example.net"))));
    let recs = vec![cname, a("web.example.net", [203, 0, 113, 80], 120), a("web.example.net", [10, 0, 0, 1], 120)];
    let Out::Client(addr, port, m) = d.from_upstream(t(1), &answer(&q2, RCODE::NoError, recs)) else { panic!("no answer for the client") };
    assert_eq!((addr, port), (CLIENT, 40000));
    let r = Packet::parse(&m).unwrap();
    assert_eq!(r.id(), 0x1234, "the client's id");
    assert!(r.has_flags(PacketFlag::RESPONSE));
    assert_eq!(r.rcode(), RCODE::NoError);
    assert_eq!(r.questions[0].qtype, QTYPE::TYPE(TYPE::AAAA), "the client's question");
    let aaaa: Vec<(u128, u32)> = r.answers.iter().filter_map(|x| if let RData::AAAA(v) = &x.rdata { Some((v.address, x.ttl)) } else { None }).collect();
    // 203.0.113.80 in 64:ff9b::/96 (RFC 6052), its TTL; 10.0.0.1 is not global: left out
    assert_eq!(aaaa, [(0x0064_ff9b_0000_0000_0000_0000_cb00_7150, 120)]);
    assert!(r.answers.iter().any(|x| matches!(x.rdata, RData::CNAME(_))), "CNAME kept");
    assert_eq!(d.stats().synthesized, 1);
    assert_eq!(d.pending(), 0);
}

#[test]
fn real_aaaa_nxdomain_and_other_types_pass_through() {
    let mut d = Dns64::new(9);
    let native = ResourceRecord::new(Name::new_unchecked("v6.example.net"), CLASS::IN, 60, RData::AAAA(AAAA { address: 0x2001_0db8 << 96 | 1 }));
    let q = upstream(d.from_client(t(0), CLIENT, 1, &ask(1, "v6.example.net", TYPE::AAAA)));
    let Out::Client(_, _, m) = d.from_upstream(t(0), &answer(&q, RCODE::NoError, vec![native])) else { panic!() };
    let r = Packet::parse(&m).unwrap();
    assert!(matches!(r.answers[0].rdata, RData::AAAA(AAAA { address }) if address == (0x2001_0db8 << 96 | 1)));
    let q = upstream(d.from_client(t(0), CLIENT, 1, &ask(2, "nope.example.net", TYPE::AAAA)));
    let Out::Client(_, _, m) = d.from_upstream(t(0), &answer(&q, RCODE::NameError, Vec::new())) else { panic!() };
    assert_eq!(Packet::parse(&m).unwrap().rcode(), RCODE::NameError);
    let q = upstream(d.from_client(t(0), CLIENT, 1, &ask(3, "example.net", TYPE::MX)));
    assert_eq!(qtype_of(&q), QTYPE::TYPE(TYPE::MX));
    let Out::Client(_, _, m) = d.from_upstream(t(0), &answer(&q, RCODE::NoError, vec![a("example.net", [203, 0, 113, 9], 5)])) else { panic!() };
    assert!(matches!(Packet::parse(&m).unwrap().answers[0].rdata, RData::A(_)), "another type is passed through");
    assert_eq!(d.stats().synthesized, 0);
    // an A question is answered at once, empty (the guests have no IPv4)
    let Out::Client(addr, 9, m) = d.from_client(t(0), CLIENT, 9, &ask(4, "example.net", TYPE::A)) else { panic!("no answer") };
    assert_eq!(addr, CLIENT);
    let r = Packet::parse(&m).unwrap();
    assert_eq!((r.id(), r.rcode(), r.answers.len()), (4, RCODE::NoError, 0));
    assert_eq!(r.questions[0].qtype, QTYPE::TYPE(TYPE::A));
}

#[test]
fn answers_must_match_an_open_question() {
    let mut d = Dns64::new(11);
    let q = upstream(d.from_client(t(0), CLIENT, 1, &ask(5, "www.example.net", TYPE::AAAA)));
    // another id, another name, a query instead of a response: dropped, the question stays open
    let mut other_id = answer(&q, RCODE::NoError, Vec::new());
    other_id[0] ^= 0xff;
    let other_name = {
        let base = answer(&q, RCODE::NoError, Vec::new());
        let mut r = Packet::parse(&base).unwrap().into_reply();
        r.questions = vec![Question::new(Name::new_unchecked("evil.example"), QTYPE::TYPE(TYPE::AAAA), QCLASS::CLASS(CLASS::IN), false)];
        r.set_id(Packet::parse(&q).unwrap().id());
        r.build_bytes_vec().unwrap()
    };
    let not_response = q.clone();
    for m in [other_id, other_name, not_response] {
        assert_eq!(d.from_upstream(t(1), &m), Out::None);
    }
    assert_eq!(d.stats().unmatched, 3);
    // bounded: after MAX_PENDING open questions new ones are refused; all forgotten after 5 s
    let mut d = Dns64::new(13);
    for i in 0..MAX_PENDING + 5 {
        let _ = d.from_client(t(0), CLIENT, 1, &ask(i as u16, "x.example", TYPE::AAAA));
    }
    assert_eq!(d.pending(), MAX_PENDING);
    assert_eq!(d.stats().full, 5);
    d.expire(t(6));
    assert_eq!(d.pending(), 0);
    assert_eq!(d.stats().timed_out, MAX_PENDING as u64);
    // several questions, another class, garbage: dropped
    let one = ask(1, "a.example", TYPE::AAAA);
    let mut two = Packet::parse(&one).unwrap();
    two.questions.push(Question::new(Name::new_unchecked("b.example"), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
    let mut chaos = Packet::new_query(2);
    chaos.questions.push(Question::new(Name::new_unchecked("version.bind"), QTYPE::TYPE(TYPE::TXT), QCLASS::CLASS(CLASS::CH), false));
    for m in [two.build_bytes_vec().unwrap(), chaos.build_bytes_vec().unwrap(), vec![1, 2, 3]] {
        assert_eq!(d.from_client(t(10), CLIENT, 1, &m), Out::None);
    }
}

#[test]
fn hostile_messages_never_panic_and_never_grow_the_state() {
    crate::fuzzing::dns64(&[]);
    let mut x = 0x9e37_79b9u32;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let base = [ask(1, "www.example.net", TYPE::AAAA), answer(&ask(1, "www.example.net", TYPE::A), RCODE::NoError, vec![a("www.example.net", [203, 0, 113, 1], 9)])];
    for i in 0..20_000 {
        let mut m = base[i % 2].clone();
        for _ in 0..1 + rnd() % 4 {
            let j = rnd() as usize % m.len();
            m[j] ^= rnd() as u8;
        }
        m.truncate(rnd() as usize % (m.len() + 1));
        let mut input = vec![(i % 2) as u8, 0, m.len() as u8];
        input.extend_from_slice(&m);
        crate::fuzzing::dns64(&input);
    }
}

fn v6_udp(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src, dst, 64).udp(sport, dport).write(&mut v, data).unwrap();
    v
}

#[test]
fn the_gateway_answers_guests_at_64_ff9b_35_through_the_upstream_resolver() {
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 1];
    const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 0xfe];
    let c = GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.dns=203.0.113.53").unwrap();
    let mut g = Gateway::new(&c, MAC, 77).unwrap();
    assert!(g.from_fabric(t(0), &v6_udp(CLIENT, DNS64_ADDR, 40001, 53, &ask(0x4242, "www.example.net", TYPE::AAAA))).is_none());
    let _arp = g.uplink.take_frame().expect("ARP for the router");
    let mut eth = Vec::from(MAC);
    eth.extend_from_slice(&ROUTER_MAC);
    eth.extend_from_slice(&[8, 6]);
    eth.extend_from_slice(&arp_packet(2, ROUTER_MAC, [198, 51, 100, 1], MAC, [198, 51, 100, 2]));
    assert!(g.from_uplink(t(0), &eth).is_empty());
    let f = g.uplink.take_frame().expect("the question upstream");
    let ip = &f[14..];
    assert_eq!((&ip[12..16], &ip[16..20]), (&[198, 51, 100, 2][..], &[203, 0, 113, 53][..]));
    assert_eq!(u16::from_be_bytes([ip[20], ip[21]]), DNS_PORT);
    let q1 = ip[28..].to_vec();
    let frame = |dns: &[u8]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, MAC).ipv4([203, 0, 113, 53], [198, 51, 100, 2], 60).udp(53, DNS_PORT).write(&mut v, dns).unwrap();
        v
    };
    // no AAAA -> the A question goes upstream, nothing for the guest yet
    assert!(g.from_uplink(t(1), &frame(&answer(&q1, RCODE::NoError, Vec::new()))).is_empty());
    let f = g.uplink.take_frame().expect("the A question");
    let q2 = f[14 + 28..].to_vec();
    assert_eq!(qtype_of(&q2), QTYPE::TYPE(TYPE::A));
    let v6 = g.from_uplink(t(1), &frame(&answer(&q2, RCODE::NoError, vec![a("www.example.net", [203, 0, 113, 80], 30)]))).pop().expect("the answer");
    assert_eq!(&v6[8..24], &DNS64_ADDR);
    assert_eq!(&v6[24..40], &CLIENT);
    assert_eq!(u16::from_be_bytes([v6[40], v6[41]]), 53);
    assert_eq!(u16::from_be_bytes([v6[42], v6[43]]), 40001);
    let (ip6, rest) = etherparse::Ipv6Header::from_slice(&v6).unwrap();
    let (udp, data) = etherparse::UdpHeader::from_slice(rest).unwrap();
    assert_eq!(udp.calc_checksum_ipv6(&ip6, data).unwrap(), udp.checksum);
    let r = Packet::parse(data).unwrap();
    assert_eq!(r.id(), 0x4242);
    assert!(matches!(r.answers[0].rdata, RData::AAAA(AAAA { address }) if address == 0x0064_ff9b_0000_0000_0000_0000_cb00_7150));
    // an answer from another address, or to another port, is not DNS64's (and no flow's)
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, MAC).ipv4([203, 0, 113, 54], [198, 51, 100, 2], 60).udp(53, DNS_PORT).write(&mut v, &q2).unwrap();
    assert!(g.from_uplink(t(2), &v).is_empty());
    // an A question is answered by the gateway at once, back to the guest over the fabric
    let back = g.from_fabric(t(3), &v6_udp(CLIENT, DNS64_ADDR, 40002, 53, &ask(0x77, "www.example.net", TYPE::A))).expect("the empty A answer");
    assert!(g.uplink.take_frame().is_none(), "nothing asked upstream");
    assert_eq!((&back[8..24], &back[24..40]), (&DNS64_ADDR[..], &CLIENT[..]));
    let (ip6, rest) = etherparse::Ipv6Header::from_slice(&back).unwrap();
    let (udp, data) = etherparse::UdpHeader::from_slice(rest).unwrap();
    assert_eq!((udp.destination_port, udp.calc_checksum_ipv6(&ip6, data).unwrap()), (40002, udp.checksum));
    assert_eq!(Packet::parse(data).unwrap().id(), 0x77);
    // without nat64.dns there is no DNS64: the question is dropped
    let c = GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1").unwrap();
    let mut g = Gateway::new(&c, MAC, 77).unwrap();
    assert!(g.from_fabric(t(0), &v6_udp(CLIENT, DNS64_ADDR, 40001, 53, &ask(1, "x.example", TYPE::AAAA))).is_none());
    assert!(g.uplink.take_frame().is_none());
}
