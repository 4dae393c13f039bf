//! Handshake floods: a responder flooded with valid-mac1 initiations (from one source, a few,
//! and more sources than its rate-limit table holds), whose attacker answers every cookie
//! reply so its mac2 is valid too, keeps its session with a legitimate peer, lets a rebooted
//! peer re-establish, and does a bounded amount of Diffie-Hellman work.

use core::net::SocketAddr;
use std::collections::HashMap;
use std::time::Duration;

use netfabric::cookie;
use netfabric::device::timers::REKEY_TIMEOUT;
use netfabric::ipv6::build_icmpv6_echo;
use netfabric::messages::{self, Message, INITIATION_MAC1_OFFSET};
use netfabric::noise;
use netfabric::ratelimit::{BURST, PACKETS_PER_SECOND};
use netfabric::tai64n::Tai64n;
use netfabric::{Device, Identity, Instant, PeerConfig, PeerId};
use rand_core::OsRng;

const UNIX: u64 = 1_700_000_000;
/// The responder's default load threshold (handshake messages a second).
const LOAD_THRESHOLD: u64 = 256;

/// An attacker that knows the responder's public key (so mac1 is valid), owns `sources`
/// addresses and answers cookie replies (so mac2 becomes valid for each address).
struct Attacker {
    sources: Vec<SocketAddr>,
    msgs: Vec<[u8; messages::INITIATION_LEN]>,
    mac1s: Vec<[u8; 16]>,
    cookies: HashMap<usize, [u8; 16]>,
    cookie_key: [u8; 32],
    mac1_key: [u8; 32],
}

impl Attacker {
    fn new(responder: &[u8; 32], sources: usize) -> Self {
        let me = Identity::generate(&mut OsRng);
        let ss = noise::static_static(&me, responder).unwrap();
        let mac1_key = cookie::mac1_key(responder);
        let mut msgs = Vec::new();
        let mut mac1s = Vec::new();
        let sources: Vec<SocketAddr> =
            (0..sources).map(|i| format!("[fd00:66::{:x}]:{}", i + 1, 1000 + i).parse().unwrap()).collect();
        for i in 0..sources.len() {
            let ts = Tai64n::from_unix(Duration::from_secs(UNIX + i as u64));
            let (_, m) = noise::create_initiation(&me, responder, &ss, [(i % 250) as u8 + 1; 32], i as u32, ts).unwrap();
            let mut b = m.encode();
            mac1s.push(cookie::add_macs(&mut b, INITIATION_MAC1_OFFSET, &mac1_key, None));
            msgs.push(b);
        }
        Attacker { sources, msgs, mac1s, cookies: HashMap::new(), cookie_key: cookie::cookie_key(responder), mac1_key }
    }

    /// Send initiation `n` (round robin over the sources) and learn any cookie in the answer.
    fn hit(&mut self, victim: &mut Device, n: usize, now: Instant) {
        let i = n % self.sources.len();
        let out = victim.handle_incoming(&self.msgs[i], self.sources[i], now);
        for t in out.transmits {
            if let Ok(Message::CookieReply(r)) = messages::parse(&t.data) {
                let c = cookie::open_reply(&self.cookie_key, &self.mac1s[i], &r).expect("cookie for our mac1");
                self.cookies.insert(i, c);
                let m1 = cookie::add_macs(&mut self.msgs[i], INITIATION_MAC1_OFFSET, &self.mac1_key, Some(&c));
                assert_eq!(m1, self.mac1s[i]);
            }
        }
    }
}

struct Side {
    id: Identity,
    dev: Device,
    addr: SocketAddr,
    peer: PeerId,
}

fn side(id: &Identity, other: &Identity, other_addr: SocketAddr, addr: SocketAddr, unix: u64) -> Side {
    let mut dev = Device::new(id.clone(), Box::new(OsRng));
    dev.set_unix_time_at_origin(Duration::from_secs(unix));
    let peer = dev.add_peer(PeerConfig::new(other.public_key()).with_endpoint(other_addr)).unwrap();
    Side { id: id.clone(), dev, addr, peer }
}

fn ping(from: &Side, to: &Side, seq: u16) -> Vec<u8> {
    build_icmpv6_echo(from.id.node_address(), to.id.node_address(), true, 1, seq, &[7; 64])
}

/// Carry datagrams between `x` and `y` until quiet; returns the packets `y` received.
fn carry(x: &mut Side, y: &mut Side, out: netfabric::Output, now: Instant) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut queue = vec![(true, out)];
    let mut rounds = 0;
    while let Some((to_y, o)) = queue.pop() {
        rounds += 1;
        assert!(rounds < 50);
        for t in o.transmits {
            if to_y {
                let r = y.dev.handle_incoming(&t.data, x.addr, now);
                got.extend(r.packets.iter().map(|p| p.packet.clone()));
                queue.push((false, r));
            } else {
                let r = x.dev.handle_incoming(&t.data, y.addr, now);
                queue.push((true, r));
            }
        }
    }
    got
}

fn established() -> (Side, Side, Identity) {
    let (ia, ib) = (Identity::generate(&mut OsRng), Identity::generate(&mut OsRng));
    let (aa, ba): (SocketAddr, SocketAddr) = ("[fd00:aa::1]:51820".parse().unwrap(), "[fd00:bb::1]:51820".parse().unwrap());
    let mut a = side(&ia, &ib, ba, aa, UNIX);
    let mut b = side(&ib, &ia, aa, ba, UNIX);
    let t = Instant::from_secs(1);
    let p = ping(&a, &b, 1);
    let out = a.dev.send(&p, t).unwrap();
    assert_eq!(carry(&mut a, &mut b, out, t), vec![p]);
    (a, b, ia)
}

/// Most DH work the responder may do for `sources` flooding sources over `secs` seconds:
/// the messages before it noticed the load, then per tracked source (plus the shared overflow
/// bucket) a burst and the sustained rate.
fn dh_bound(buckets: u64, secs: u64, legit: u64) -> u64 {
    LOAD_THRESHOLD + 1 + buckets * (BURST + PACKETS_PER_SECOND * secs) + legit
}

/// A few sources flood at 2 000 initiations/s for 9 s. Meanwhile the established session keeps
/// carrying data, and a rebooted peer (same key, fresh device, later clock) gets a cookie
/// reply, retransmits with mac2 and re-establishes.
#[test]
fn flood_from_few_sources_keeps_and_reestablishes_the_legitimate_session() {
    let (mut a, mut b, ia) = established();
    let mut att = Attacker::new(&b.id.public_key(), 4);
    let start = Instant::from_secs(2);
    let before = b.dev.counters().handshakes_processed;
    let mut rebooted: Option<Side> = None;
    let mut reestablished = false;
    let mut n = 0;
    for ms in 0..9000u64 {
        let now = start + Duration::from_millis(ms);
        for _ in 0..2 {
            att.hit(&mut b.dev, n, now);
            n += 1;
        }
        if ms == 500 {
            // The existing session carries data both ways under the flood.
            let p = ping(&a, &b, 2);
            let out = a.dev.send(&p, now).unwrap();
            assert_eq!(carry(&mut a, &mut b, out, now), vec![p]);
            let q = ping(&b, &a, 3);
            let out = b.dev.send(&q, now).unwrap();
            assert_eq!(carry(&mut b, &mut a, out, now), vec![q]);
        }
        if ms == 1000 {
            // A reboots: same identity, new device, its clock one minute later.
            let mut r = side(&ia, &b.id, b.addr, a.addr, UNIX + 60);
            let out = r.dev.send(&ping(&r, &b, 4), now).unwrap();
            let got = carry(&mut r, &mut b, out, now);
            assert!(got.is_empty(), "under load the first initiation only earns a cookie");
            assert!(b.dev.counters().cookie_replies_sent > 0);
            rebooted = Some(r);
        }
        if let Some(r) = rebooted.as_mut() {
            if ms % 100 == 0 && !reestablished {
                let out = r.dev.tick(now);
                let got = carry(r, &mut b, out, now);
                if r.dev.has_session(r.peer, now) {
                    assert_eq!(got, vec![ping(r, &b, 4)], "the queued packet arrives");
                    reestablished = true;
                }
            }
        }
    }
    assert!(reestablished, "rebooted peer re-established within {:?} of retransmission", REKEY_TIMEOUT);
    let r = rebooted.unwrap();
    let now = start + Duration::from_millis(9000);
    let q = ping(&b, &r, 5);
    let out = b.dev.send(&q, now).unwrap();
    let mut r = r;
    assert_eq!(carry(&mut b, &mut r, out, now), vec![q]);
    let c = *b.dev.counters();
    let dh = c.handshakes_processed - before;
    eprintln!("few sources: {n} initiations, {dh} reached DH, {} rate-limited, {} cookie replies", c.dropped_rate_limited, c.cookie_replies_sent);
    assert!(c.dropped_rate_limited > 0);
    assert!(dh <= dh_bound(4, 9, 4), "DH work {dh} exceeds the rate limit's bound");
    let _ = a.peer;
}

/// Sources beyond the table's capacity share one bucket: 256 sources against a table of 32,
/// 2 s of flood; the session survives and the DH work stays within 33 buckets.
#[test]
fn flood_from_many_sources_is_bounded_by_the_table() {
    let (mut a, mut b, _) = established();
    b.dev.set_rate_limit_sources(32);
    let mut att = Attacker::new(&b.id.public_key(), 256);
    let start = Instant::from_secs(2);
    let before = b.dev.counters().handshakes_processed;
    let mut n = 0;
    for ms in 0..2000u64 {
        let now = start + Duration::from_millis(ms);
        for _ in 0..8 {
            att.hit(&mut b.dev, n, now);
            n += 1;
        }
    }
    let now = start + Duration::from_millis(2000);
    let p = ping(&a, &b, 9);
    let out = a.dev.send(&p, now).unwrap();
    assert_eq!(carry(&mut a, &mut b, out, now), vec![p]);
    let c = *b.dev.counters();
    let dh = c.handshakes_processed - before;
    eprintln!("many sources: {n} initiations, {dh} reached DH, {} rate-limited", c.dropped_rate_limited);
    assert_eq!(att.cookies.len(), 256, "every source holds a valid cookie");
    assert!(dh <= dh_bound(33, 2, 0), "DH work {dh} exceeds the rate limit's bound");
}

/// One source at 4 000 initiations/s for 2 s: a burst, then 20/s.
#[test]
fn flood_from_one_source_is_held_to_its_bucket() {
    let (mut a, mut b, _) = established();
    let mut att = Attacker::new(&b.id.public_key(), 1);
    let start = Instant::from_secs(2);
    let before = b.dev.counters().handshakes_processed;
    for ms in 0..2000u64 {
        for k in 0..4 {
            att.hit(&mut b.dev, 0, start + Duration::from_millis(ms) + Duration::from_micros(250 * k));
        }
    }
    let now = start + Duration::from_millis(2000);
    let p = ping(&a, &b, 9);
    let out = a.dev.send(&p, now).unwrap();
    assert_eq!(carry(&mut a, &mut b, out, now), vec![p]);
    let dh = b.dev.counters().handshakes_processed - before;
    eprintln!("one source: 8000 initiations, {dh} reached DH");
    assert!(dh <= dh_bound(1, 2, 0), "DH work {dh} exceeds the rate limit's bound");
}
