//! Every decoder over thousands of random and mutated inputs: errors, never panics.
//! (The `cargo fuzz` targets in `netfabric/fuzz/` do the same with coverage guidance.)

use std::net::SocketAddr;

use netfabric::ipv6::{build_icmpv6_echo, frame_to_packet, packet_to_frame, parse_icmpv6_echo, parse_udp};
use netfabric::messages::{self, CookieReply, Initiation, Response, Transport};
use netfabric::{Device, FabricFrame, Identity, Instant, PeerConfig};
use rand_core::OsRng;

/// xorshift64*: deterministic, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=self.below(4) {
            match self.below(5) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] ^= 1 << self.below(8);
                }
                1 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next() as u8;
                }
                2 => {
                    let n = self.below(v.len() + 1);
                    v.truncate(n);
                }
                3 => {
                    let n = self.below(32);
                    let extra = self.bytes(n);
                    v.extend(extra);
                }
                _ if v.len() >= 4 => {
                    let i = self.below(v.len() - 3);
                    v[i..i + 4].copy_from_slice(&(self.next() as u32).to_le_bytes());
                }
                _ => {}
            }
        }
        v
    }
}

fn seeds() -> (Vec<Vec<u8>>, Device, SocketAddr) {
    let ia = Identity::generate(&mut OsRng);
    let ib = Identity::generate(&mut OsRng);
    let aa: SocketAddr = "[fd00::a]:1".parse().unwrap();
    let ba: SocketAddr = "[fd00::b]:1".parse().unwrap();
    let mut a = Device::new(ia.clone(), Box::new(OsRng));
    let mut b = Device::new(ib.clone(), Box::new(OsRng));
    a.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    b.add_peer(PeerConfig::new(ia.public_key()).with_endpoint(aa)).unwrap();
    let now = Instant::from_secs(1);
    let pkt = build_icmpv6_echo(ia.node_address(), ib.node_address(), true, 1, 1, b"seed");
    let init = a.send(&pkt, now).unwrap().transmits.remove(0).data;
    let resp = b.handle_incoming(&init, aa, now).transmits.remove(0).data;
    let data = a.handle_incoming(&resp, ba, now).transmits.remove(0).data;
    b.set_under_load(true);
    let mut c = Device::new(ia.clone(), Box::new(OsRng));
    c.set_unix_time_at_origin(std::time::Duration::from_secs(99));
    let pc = c.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    let init2 = c.send_to(pc, &pkt, now).transmits.remove(0).data;
    let cookie = b.handle_incoming(&init2, aa, now).transmits.remove(0).data;
    b.set_under_load(false);
    let frame = FabricFrame::message(ia.node_address(), ib.node_address(), 1, 2, b"payload".to_vec());
    let seeds = vec![init, resp, data, cookie, frame.encode().unwrap(), frame_to_packet(&frame).unwrap(), pkt];
    (seeds, b, aa)
}

#[test]
fn decoders_never_panic_on_random_and_mutated_input() {
    let (seeds, mut dev, from) = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let now = Instant::from_secs(2);
    for i in 0..20_000 {
        let input = if i % 4 == 0 {
            let n = rng.below(200);
            let mut v = rng.bytes(n);
            if let Some(b) = v.first_mut() {
                *b = (*b % 5) + if i % 8 == 0 { 0x40 } else { 0 };
            }
            v
        } else {
            let s = &seeds[rng.below(seeds.len())];
            rng.mutate(s)
        };
        let _ = messages::parse(&input);
        let _ = Initiation::parse(&input);
        let _ = Response::parse(&input);
        let _ = CookieReply::parse(&input);
        let _ = Transport::parse(&input);
        let _ = FabricFrame::decode(&input);
        let _ = parse_udp(&input);
        let _ = packet_to_frame(&input);
        let _ = parse_icmpv6_echo(&input);
        let _ = netfabric::device::inner_header(&input);
        let out = dev.handle_incoming(&input, from, now);
        assert!(out.packets.len() <= 1);
    }
    // The device stayed consistent and counted what it dropped.
    assert!(dev.counters().total_dropped() > 10_000);
}
