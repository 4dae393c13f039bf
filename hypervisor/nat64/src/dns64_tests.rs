//! DNS64 (RFC 6147): synthesis, pass-through, matching, bounds, hostile messages, and the
//! gateway carrying it between the fabric and the uplink. Messages are built with simple-dns.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::PacketBuilder;
use simple_dns::rdata::{RData, A, AAAA, CNAME};
use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, RCODE, TYPE};

use alloc::collections::BTreeSet;

use crate::dns64::{Client, Dns64, Out, DNS64_ADDR, MAX_PENDING};
use crate::gateway::{Gateway, GatewayConfig};
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

/// The question upstream and its source port.
fn upstream(o: Out) -> (u16, Vec<u8>) {
    match o {
        Out::Upstream { port, msg } => (port, msg),
        o => panic!("expected a question upstream, got {o:?}"),
    }
}
fn udp(port: u16) -> Client {
    Client::Udp(CLIENT, port)
}

fn qtype_of(m: &[u8]) -> QTYPE {
    Packet::parse(m).unwrap().questions[0].qtype
}

#[test]
fn a_name_with_only_a_records_gets_synthesized_aaaa() {
    let mut d = Dns64::new([7; 32]);
    let mut ports = BTreeSet::new();
    let (p1, q1) = upstream(d.from_client(t(0), udp(40000), &ask(0x1234, "www.example.net", TYPE::AAAA), &mut ports));
    assert_eq!(qtype_of(&q1), QTYPE::TYPE(TYPE::AAAA));
    assert!(ports.contains(&p1), "the port is held while the question is open");
    // no AAAA (NOERROR, empty): the same name is asked for A, from a fresh port
    let (p2, q2) = upstream(d.from_upstream(t(0), p1, &answer(&q1, RCODE::NoError, Vec::new()), &mut ports));
    assert_eq!(qtype_of(&q2), QTYPE::TYPE(TYPE::A));
    assert_eq!(ports.iter().copied().collect::<Vec<_>>(), [p2], "the first port released");
    let cname = ResourceRecord::new(Name::new_unchecked("www.example.net"), CLASS::IN, 300, RData::CNAME(CNAME(Name::new_unchecked("web.example.net"))));
    let recs = vec![cname, a("web.example.net", [203, 0, 113, 80], 120), a("web.example.net", [10, 0, 0, 1], 120)];
    let Out::Client(client, m) = d.from_upstream(t(1), p2, &answer(&q2, RCODE::NoError, recs), &mut ports) else { panic!("no answer for the client") };
    assert_eq!(client, udp(40000));
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
    assert_eq!((d.pending(), ports.len()), (0, 0));
}

#[test]
fn real_aaaa_nxdomain_and_other_types_pass_through() {
    let mut d = Dns64::new([9; 32]);
    let mut ports = BTreeSet::new();
    let native = ResourceRecord::new(Name::new_unchecked("v6.example.net"), CLASS::IN, 60, RData::AAAA(AAAA { address: 0x2001_0db8 << 96 | 1 }));
    let (p, q) = upstream(d.from_client(t(0), udp(1), &ask(1, "v6.example.net", TYPE::AAAA), &mut ports));
    let Out::Client(_, m) = d.from_upstream(t(0), p, &answer(&q, RCODE::NoError, vec![native]), &mut ports) else { panic!() };
    let r = Packet::parse(&m).unwrap();
    assert!(matches!(r.answers[0].rdata, RData::AAAA(AAAA { address }) if address == (0x2001_0db8 << 96 | 1)));
    let (p, q) = upstream(d.from_client(t(0), udp(1), &ask(2, "nope.example.net", TYPE::AAAA), &mut ports));
    let Out::Client(_, m) = d.from_upstream(t(0), p, &answer(&q, RCODE::NameError, Vec::new()), &mut ports) else { panic!() };
    assert_eq!(Packet::parse(&m).unwrap().rcode(), RCODE::NameError);
    let (p, q) = upstream(d.from_client(t(0), udp(1), &ask(3, "example.net", TYPE::MX), &mut ports));
    assert_eq!(qtype_of(&q), QTYPE::TYPE(TYPE::MX));
    let Out::Client(_, m) = d.from_upstream(t(0), p, &answer(&q, RCODE::NoError, vec![a("example.net", [203, 0, 113, 9], 5)]), &mut ports) else { panic!() };
    assert!(matches!(Packet::parse(&m).unwrap().answers[0].rdata, RData::A(_)), "another type is passed through");
    assert_eq!(d.stats().synthesized, 0);
    // an A question is answered at once, empty (the guests have no IPv4)
    let Out::Client(client, m) = d.from_client(t(0), udp(9), &ask(4, "example.net", TYPE::A), &mut ports) else { panic!("no answer") };
    assert_eq!(client, udp(9));
    let r = Packet::parse(&m).unwrap();
    assert_eq!((r.id(), r.rcode(), r.answers.len()), (4, RCODE::NoError, 0));
    assert_eq!(r.questions[0].qtype, QTYPE::TYPE(TYPE::A));
}

#[test]
fn answers_must_match_port_id_and_question() {
    let mut d = Dns64::new([11; 32]);
    let mut ports = BTreeSet::new();
    let (port, q) = upstream(d.from_client(t(0), udp(1), &ask(5, "www.example.net", TYPE::AAAA), &mut ports));
    // another id, another name, another class, a query instead of a response, another port:
    // dropped, the question stays open
    let good = answer(&q, RCODE::NoError, Vec::new());
    let mut other_id = good.clone();
    other_id[0] ^= 0xff;
    let other_name = {
        let mut r = Packet::parse(&good).unwrap().into_reply();
        r.questions = vec![Question::new(Name::new_unchecked("evil.example"), QTYPE::TYPE(TYPE::AAAA), QCLASS::CLASS(CLASS::IN), false)];
        r.set_id(Packet::parse(&q).unwrap().id());
        r.build_bytes_vec().unwrap()
    };
    let mut other_class = good.clone();
    let n = other_class.len();
    other_class[n - 1] = 3; // the question's class (last two bytes): CHAOS
    for m in [other_id, other_name, other_class, q.clone()] {
        assert_eq!(d.from_upstream(t(1), port, &m, &mut ports), Out::None);
    }
    assert_eq!(d.from_upstream(t(1), port.wrapping_add(1).max(1024), &good, &mut ports), Out::None, "another port");
    assert_eq!(d.stats().unmatched, 5);
    assert_eq!(d.pending(), 1, "still open");
    assert!(matches!(d.from_upstream(t(1), port, &good, &mut ports), Out::Upstream { .. }), "the real answer still counts");
    // bounded: after MAX_PENDING open questions new ones are refused; all forgotten after 5 s
    let mut d = Dns64::new([13; 32]);
    let mut ports = BTreeSet::new();
    for i in 0..MAX_PENDING + 5 {
        let _ = d.from_client(t(0), udp(1), &ask(i as u16, "x.example", TYPE::AAAA), &mut ports);
    }
    assert_eq!((d.pending(), ports.len()), (MAX_PENDING, MAX_PENDING));
    assert_eq!(d.stats().full, 5);
    d.expire(t(6), &mut ports);
    assert_eq!((d.pending(), ports.len()), (0, 0), "ports released");
    assert_eq!(d.stats().timed_out, MAX_PENDING as u64);
    // several questions, another class, a response, garbage: dropped
    let one = ask(1, "a.example", TYPE::AAAA);
    let mut two = Packet::parse(&one).unwrap();
    two.questions.push(Question::new(Name::new_unchecked("b.example"), QTYPE::TYPE(TYPE::A), QCLASS::CLASS(CLASS::IN), false));
    let mut chaos = Packet::new_query(2);
    chaos.questions.push(Question::new(Name::new_unchecked("version.bind"), QTYPE::TYPE(TYPE::TXT), QCLASS::CLASS(CLASS::CH), false));
    for m in [two.build_bytes_vec().unwrap(), chaos.build_bytes_vec().unwrap(), answer(&one, RCODE::NoError, Vec::new()), vec![1, 2, 3]] {
        assert_eq!(d.from_client(t(10), udp(1), &m, &mut ports), Out::None);
    }
}

#[test]
fn upstream_ids_and_ports_are_unpredictable() {
    let draw = |seed: u8| {
        let mut d = Dns64::new([seed; 32]);
        let mut ports = BTreeSet::new();
        (0..2000u64)
            .map(|i| {
                let (port, q) = upstream(d.from_client(t(i * 6), udp(1), &ask(7, "x.example", TYPE::AAAA), &mut ports));
                (port, Packet::parse(&q).unwrap().id())
            })
            .collect::<Vec<(u16, u16)>>()
    };
    let a = draw(1);
    assert_eq!(a, draw(1), "a function of the seed only");
    let b = draw(2);
    assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() == 0, "another seed, other draws");
    // ports over the pool's range, ids over all 16 bits: each half of each range gets about
    // half the draws, consecutive draws are not steps of a counter, no pair repeats
    for (lo, hi, f) in [(1024u32, 65535u32, 0usize), (0, 65535, 1)] {
        let v: Vec<u32> = a.iter().map(|p| u32::from(if f == 0 { p.0 } else { p.1 })).collect();
        assert!(v.iter().all(|x| (lo..=hi).contains(x)));
        let low = v.iter().filter(|x| **x < (lo + hi) / 2).count();
        assert!((850..1150).contains(&low), "{low} of 2000 in the lower half");
        let steps: BTreeSet<u32> = v.windows(2).map(|w| w[1].wrapping_sub(w[0]) & 0xffff).collect();
        assert!(steps.len() > 1900, "{} distinct steps", steps.len());
    }
    assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), a.len());
    // the translator keeps a claimed port from flows, and gives it back
    let mut cfg = crate::Config::new([203, 0, 113, 1]);
    cfg.ports = (2000, 2001);
    let mut nat = crate::Nat64::new(cfg);
    use crate::dns64::Ports;
    assert!(nat.claim(2000) && !nat.claim(2000) && !nat.claim(80));
    let out = |nat: &mut crate::Nat64, sport: u16| {
        let mut v = Vec::new();
        PacketBuilder::ipv6(CLIENT, crate::embed(&crate::WELL_KNOWN_PREFIX, [198, 51, 100, 9]), 64).udp(sport, 53).write(&mut v, b"q").unwrap();
        nat.outbound(t(0), &v).map(|p| u16::from_be_bytes([p[20], p[21]]))
    };
    assert_eq!(out(&mut nat, 5000), Ok(2001), "the flow gets the other port");
    assert_eq!(out(&mut nat, 5001), Err(crate::Drop::TableFull));
    nat.release(2000);
    assert_eq!(out(&mut nat, 5001), Ok(2000));
}

#[test]
fn edns_is_answered_and_long_answers_are_truncated() {
    let mut d = Dns64::new([3; 32]);
    let mut ports = BTreeSet::new();
    let with_opt = |id: u16, size: u16, version: u8| {
        let b = ask(id, "many.example", TYPE::AAAA);
        let mut q = Packet::parse(&b).unwrap();
        *q.opt_mut() = Some(simple_dns::rdata::OPT { opt_codes: Vec::new(), udp_packet_size: size, version });
        q.build_bytes_vec().unwrap()
    };
    // 45 A records: 45 synthesized AAAA of 28 bytes, about 1290 bytes in all
    let many: Vec<ResourceRecord<'static>> = (0..45u8).map(|i| a("many.example", [203, 0, 113, i + 1], 60)).collect();
    let run = |d: &mut Dns64, ports: &mut BTreeSet<u16>, client: Client, q: &[u8]| {
        let (p1, q1) = upstream(d.from_client(t(0), client, q, ports));
        // RFC 6891 §6.1.2: our question carries OPT, CLASS = our UDP size 1232, TTL 0 (version 0)
        let n = q1.len();
        assert_eq!(&q1[10..12], &[0, 1], "ARCOUNT 1");
        assert_eq!(&q1[n - 11..], &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0], "root, OPT, 1232, ext-rcode/version/flags 0, no options");
        let (p2, q2) = upstream(d.from_upstream(t(0), p1, &answer(&q1, RCODE::NoError, Vec::new()), ports));
        // compressed upstream (720 bytes of records); the 45 AAAA are 1260
        let up = {
            let q = Packet::parse(&q2).unwrap();
            let mut r = Packet::new_reply(q.id());
            r.questions = q.questions.clone();
            r.answers = many.clone();
            r.build_bytes_vec_compressed().unwrap()
        };
        let Out::Client(_, m) = d.from_upstream(t(0), p2, &up, ports) else { panic!() };
        m
    };
    // without EDNS: at most 512 bytes, so the question alone with TC (RFC 1035 §4.2.1, RFC 7766 §5)
    let m = run(&mut d, &mut ports, udp(1), &ask(1, "many.example", TYPE::AAAA));
    assert!(m.len() <= 512);
    assert_eq!(m[2] & 0x02, 0x02, "TC");
    assert_eq!((&m[4..6], &m[6..8]), (&[0, 1][..], &[0, 0][..]), "the question, no answers");
    // EDNS 4096: our size 1232 bounds it; still too long, truncated, OPT in the answer
    let m = run(&mut d, &mut ports, udp(1), &with_opt(2, 4096, 0));
    let r = Packet::parse(&m).unwrap();
    assert!(r.has_flags(PacketFlag::TRUNCATION) && r.answers.is_empty());
    assert_eq!(r.opt().map(|o| o.udp_packet_size), Some(1232));
    // over TCP the whole answer
    let m = run(&mut d, &mut ports, Client::Tcp(1), &with_opt(3, 512, 0));
    let r = Packet::parse(&m).unwrap();
    assert!(m.len() > 1232 && !r.has_flags(PacketFlag::TRUNCATION));
    assert_eq!(r.answers.len(), 45);
    assert!(d.stats().truncated >= 2);
    // a short answer with EDNS: OPT back, not truncated
    let (p, q) = upstream(d.from_client(t(0), udp(1), &with_opt(4, 1232, 0), &mut ports));
    let (p, q) = upstream(d.from_upstream(t(0), p, &answer(&q, RCODE::NoError, Vec::new()), &mut ports));
    let Out::Client(_, m) = d.from_upstream(t(0), p, &answer(&q, RCODE::NoError, vec![a("many.example", [203, 0, 113, 1], 60)]), &mut ports) else { panic!() };
    let r = Packet::parse(&m).unwrap();
    assert!(!r.has_flags(PacketFlag::TRUNCATION) && r.answers.len() == 1 && r.opt().is_some());
    // EDNS version 1: BADVERS (16: extended RCODE 1 in the OPT TTL, header RCODE 0), nothing upstream
    let Out::Client(_, m) = d.from_client(t(0), udp(1), &with_opt(5, 1232, 1), &mut ports) else { panic!("answered at once") };
    assert_eq!(m[3] & 0x0f, 0);
    assert_eq!(Packet::parse(&m).unwrap().rcode(), RCODE::BADVERS);
    // an upstream answer with TC keeps it
    let (p, q) = upstream(d.from_client(t(0), udp(1), &ask(6, "big.example", TYPE::TXT), &mut ports));
    let tb = answer(&q, RCODE::NoError, Vec::new());
    let mut tc = Packet::parse(&tb).unwrap();
    tc.set_flags(PacketFlag::TRUNCATION);
    let Out::Client(_, m) = d.from_upstream(t(0), p, &tc.build_bytes_vec().unwrap(), &mut ports) else { panic!() };
    assert_eq!(m[2] & 0x02, 0x02);
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
    let mut g = Gateway::new(&c, MAC, [77; 32]).unwrap();
    assert!(g.from_fabric(t(0), &v6_udp(CLIENT, DNS64_ADDR, 40001, 53, &ask(0x4242, "www.example.net", TYPE::AAAA))).is_empty());
    let _arp = g.uplink.take_frame().expect("ARP for the router");
    let mut eth = Vec::from(MAC);
    eth.extend_from_slice(&ROUTER_MAC);
    eth.extend_from_slice(&[8, 6]);
    eth.extend_from_slice(&arp_packet(2, ROUTER_MAC, [198, 51, 100, 1], MAC, [198, 51, 100, 2]));
    assert!(g.from_uplink(t(0), &eth).is_empty());
    let f = g.uplink.take_frame().expect("the question upstream");
    let ip = &f[14..];
    assert_eq!((&ip[12..16], &ip[16..20]), (&[198, 51, 100, 2][..], &[203, 0, 113, 53][..]));
    let port1 = u16::from_be_bytes([ip[20], ip[21]]);
    assert!(port1 >= 1024, "a port of the pool");
    assert_eq!(g.nat.reserved_udp(), 1, "held in the table");
    let q1 = ip[28..].to_vec();
    let frame = |port: u16, dns: &[u8]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, MAC).ipv4([203, 0, 113, 53], [198, 51, 100, 2], 60).udp(53, port).write(&mut v, dns).unwrap();
        v
    };
    // to another port: not DNS64's, and no flow's
    assert!(g.from_uplink(t(1), &frame(port1 ^ 1, &answer(&q1, RCODE::NoError, Vec::new()))).is_empty());
    assert!(g.uplink.take_frame().is_none());
    // no AAAA -> the A question goes upstream, nothing for the guest yet
    assert!(g.from_uplink(t(1), &frame(port1, &answer(&q1, RCODE::NoError, Vec::new()))).is_empty());
    let f = g.uplink.take_frame().expect("the A question");
    let port2 = u16::from_be_bytes([f[34], f[35]]);
    let q2 = f[14 + 28..].to_vec();
    assert_eq!(qtype_of(&q2), QTYPE::TYPE(TYPE::A));
    let v6 = g.from_uplink(t(1), &frame(port2, &answer(&q2, RCODE::NoError, vec![a("www.example.net", [203, 0, 113, 80], 30)]))).pop().expect("the answer");
    assert_eq!(g.nat.reserved_udp(), 0, "released");
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
    PacketBuilder::ethernet2(ROUTER_MAC, MAC).ipv4([203, 0, 113, 54], [198, 51, 100, 2], 60).udp(53, port2).write(&mut v, &q2).unwrap();
    assert!(g.from_uplink(t(2), &v).is_empty());
    // an A question is answered by the gateway at once, back to the guest over the fabric
    let back = g.from_fabric(t(3), &v6_udp(CLIENT, DNS64_ADDR, 40002, 53, &ask(0x77, "www.example.net", TYPE::A))).pop().expect("the empty A answer");
    assert!(g.uplink.take_frame().is_none(), "nothing asked upstream");
    assert_eq!((&back[8..24], &back[24..40]), (&DNS64_ADDR[..], &CLIENT[..]));
    let (ip6, rest) = etherparse::Ipv6Header::from_slice(&back).unwrap();
    let (udp, data) = etherparse::UdpHeader::from_slice(rest).unwrap();
    assert_eq!((udp.destination_port, udp.calc_checksum_ipv6(&ip6, data).unwrap()), (40002, udp.checksum));
    assert_eq!(Packet::parse(data).unwrap().id(), 0x77);
    // without nat64.dns there is no DNS64: the question is dropped
    let c = GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1").unwrap();
    let mut g = Gateway::new(&c, MAC, [77; 32]).unwrap();
    assert!(g.from_fabric(t(0), &v6_udp(CLIENT, DNS64_ADDR, 40001, 53, &ask(1, "x.example", TYPE::AAAA))).is_empty());
    assert!(g.uplink.take_frame().is_none());
}

/// A guest's TCP (smoltcp, on an interface of its own) talking to the gateway's DNS64 over
/// TCP: packets carried by hand between the two.
mod tcp_client {
    use alloc::collections::VecDeque;
    use alloc::vec;
    use alloc::vec::Vec;
    use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
    use smoltcp::phy::{self, DeviceCapabilities, Medium};
    use smoltcp::socket::tcp;
    use smoltcp::time::Instant;
    use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv6Address};

    #[derive(Default)]
    pub struct Q {
        pub rx: VecDeque<Vec<u8>>,
        pub tx: VecDeque<Vec<u8>>,
    }
    pub struct Rx(Vec<u8>);
    pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
    impl phy::RxToken for Rx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }
    impl phy::TxToken for Tx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut b = vec![0u8; len];
            let r = f(&mut b);
            self.0.push_back(b);
            r
        }
    }
    impl phy::Device for Q {
        type RxToken<'a> = Rx;
        type TxToken<'a> = Tx<'a>;
        fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
            let p = self.rx.pop_front()?;
            Some((Rx(p), Tx(&mut self.tx)))
        }
        fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
            Some(Tx(&mut self.tx))
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ip;
            c.max_transmission_unit = 1404;
            c
        }
    }

    pub struct Guest {
        pub iface: Interface,
        pub sockets: SocketSet<'static>,
        pub dev: Q,
        pub h: SocketHandle,
    }

    impl Guest {
        pub fn connect(addr: [u8; 16], port: u16) -> Guest {
            let mut dev = Q::default();
            let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, Instant::from_millis(0));
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(IpAddress::Ipv6(Ipv6Address::from(addr)), 128));
            });
            let _ = iface.routes_mut().add_default_ipv6_route(Ipv6Address::from(addr));
            let mut sockets = SocketSet::new(Vec::new());
            let s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 8192]), tcp::SocketBuffer::new(vec![0; 8192]));
            let h = sockets.add(s);
            let remote = (IpAddress::Ipv6(Ipv6Address::from(crate::dns64::DNS64_ADDR)), 53);
            sockets.get_mut::<tcp::Socket>(h).connect(iface.context(), remote, port).unwrap();
            Guest { iface, sockets, dev, h }
        }
        pub fn poll(&mut self, ms: u64) {
            let _ = self.iface.poll(Instant::from_millis(ms as i64), &mut self.dev, &mut self.sockets);
        }
        pub fn sock(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(self.h)
        }
    }
}

#[test]
fn dns64_over_tcp_answers_length_prefixed_and_bounds_connections() {
    use crate::dns64_tcp::{IDLE_TIMEOUT, MAX_CONNS, MAX_PER_SOURCE};
    let source = |n: u8| {
        let mut a = CLIENT;
        a[15] = n;
        a
    };
    use smoltcp::socket::tcp::State;
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 1];
    const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0, 0xca, 0x64, 0xfe];
    let c = GatewayConfig::parse("nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.dns=203.0.113.53").unwrap();
    let mut g = Gateway::new(&c, MAC, [5; 32]).unwrap();
    let mut eth = Vec::from(MAC);
    eth.extend_from_slice(&ROUTER_MAC);
    eth.extend_from_slice(&[8, 6]);
    eth.extend_from_slice(&arp_packet(2, ROUTER_MAC, [198, 51, 100, 1], MAC, [198, 51, 100, 2]));
    // carry packets both ways until nothing moves; the upstream's questions are collected
    let mut ms = 0u64;
    let pump = |g: &mut Gateway, c: &mut tcp_client::Guest, ms: &mut u64, up: &mut Vec<Vec<u8>>| {
        for _ in 0..20 {
            *ms += 10;
            c.poll(*ms);
            let out: Vec<Vec<u8>> = c.dev.tx.drain(..).collect();
            for p in &out {
                c.dev.rx.extend(g.from_fabric(Duration::from_millis(*ms), p));
            }
            c.dev.rx.extend(g.tick(Duration::from_millis(*ms)));
            while let Some(f) = g.uplink.take_frame() {
                if f[12..14] == [8, 6] {
                    let _ = g.from_uplink(Duration::from_millis(*ms), &eth);
                } else {
                    up.push(f);
                }
            }
            c.poll(*ms);
            if out.is_empty() && c.dev.rx.is_empty() && c.dev.tx.is_empty() {
                break;
            }
        }
    };
    let mut up = Vec::new();
    let mut guest = tcp_client::Guest::connect(CLIENT, 50000);
    pump(&mut g, &mut guest, &mut ms, &mut up);
    assert_eq!(guest.sock().state(), State::Established, "the handshake with [64:ff9b::35]:53");
    // one AAAA question, length-prefixed (RFC 1035 §4.2.2), sent in two pieces
    let q = ask(0x5151, "www.example.net", TYPE::AAAA);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    guest.sock().send_slice(&framed[..5]).unwrap();
    pump(&mut g, &mut guest, &mut ms, &mut up);
    assert!(up.is_empty(), "half a message asks nothing");
    guest.sock().send_slice(&framed[5..]).unwrap();
    pump(&mut g, &mut guest, &mut ms, &mut up);
    let f = up.pop().expect("the question upstream (UDP)");
    let port1 = u16::from_be_bytes([f[34], f[35]]);
    let frame = |port: u16, dns: &[u8]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(ROUTER_MAC, MAC).ipv4([203, 0, 113, 53], [198, 51, 100, 2], 60).udp(53, port).write(&mut v, dns).unwrap();
        v
    };
    let now = Duration::from_millis(ms);
    guest.dev.rx.extend(g.from_uplink(now, &frame(port1, &answer(&f[42..], RCODE::NoError, Vec::new()))));
    let f = g.uplink.take_frame().expect("the A question");
    let port2 = u16::from_be_bytes([f[34], f[35]]);
    guest.dev.rx.extend(g.from_uplink(now, &frame(port2, &answer(&f[42..], RCODE::NoError, vec![a("www.example.net", [203, 0, 113, 80], 30)]))));
    pump(&mut g, &mut guest, &mut ms, &mut up);
    let mut got = vec![0u8; 4096];
    let n = guest.sock().recv_slice(&mut got).unwrap();
    let len = usize::from(u16::from_be_bytes([got[0], got[1]]));
    assert_eq!(n, 2 + len, "one length-prefixed answer");
    let r = Packet::parse(&got[2..n]).unwrap();
    assert_eq!(r.id(), 0x5151);
    assert!(matches!(r.answers[0].rdata, RData::AAAA(AAAA { address }) if address == 0x0064_ff9b_0000_0000_0000_0000_cb00_7150));
    // a length prefix over 1232 bytes: the connection is reset
    guest.sock().send_slice(&[0x10, 0x00]).unwrap();
    pump(&mut g, &mut guest, &mut ms, &mut up);
    assert_eq!(guest.sock().state(), State::Closed, "reset by the gateway");
    assert_eq!(g.dns_tcp.as_ref().unwrap().connections(), 0);
    // at most MAX_PER_SOURCE from one address: its next SYN is reset, another address still
    // gets a slot
    let mut mine: Vec<tcp_client::Guest> = (0..MAX_PER_SOURCE + 1).map(|i| tcp_client::Guest::connect(CLIENT, 52000 + i as u16)).collect();
    for c in mine.iter_mut() {
        pump(&mut g, c, &mut ms, &mut up);
    }
    let states: Vec<State> = mine.iter_mut().map(|c| c.sock().state()).collect();
    assert_eq!(states, [State::Established, State::Established, State::Closed], "the third from one guest is reset");
    assert_eq!(g.dns_tcp.as_ref().unwrap().connections(), MAX_PER_SOURCE);
    let mut other = tcp_client::Guest::connect(source(0x41), 52100);
    pump(&mut g, &mut other, &mut ms, &mut up);
    assert_eq!(other.sock().state(), State::Established, "another guest is not crowded out");
    drop((mine, other));
    ms += IDLE_TIMEOUT.as_millis() as u64 + 1000;
    for _ in 0..2 {
        ms += 10;
        let _ = g.tick(Duration::from_millis(ms));
    }
    assert_eq!(g.dns_tcp.as_ref().unwrap().connections(), 0, "idle connections closed");
    // at most MAX_CONNS at once (from different guests): the next is refused; an idle one is
    // closed after the timeout
    let mut guests: Vec<tcp_client::Guest> = (0..MAX_CONNS + 1).map(|i| tcp_client::Guest::connect(source(0x50 + i as u8), 51000 + i as u16)).collect();
    for c in guests.iter_mut() {
        pump(&mut g, c, &mut ms, &mut up);
    }
    let est = guests.iter_mut().filter_map(|c| (c.sock().state() == State::Established).then_some(())).count();
    assert_eq!(est, MAX_CONNS);
    assert_eq!(g.dns_tcp.as_ref().unwrap().connections(), MAX_CONNS);
    ms += IDLE_TIMEOUT.as_millis() as u64 + 1000;
    for c in guests.iter_mut() {
        pump(&mut g, c, &mut ms, &mut up);
    }
    assert_eq!(g.dns_tcp.as_ref().unwrap().connections(), 0, "idle connections closed");
}
