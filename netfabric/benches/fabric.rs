//! `cargo bench -p netfabric`: prints (does not assert)
//! * transport throughput through the library (1400-byte inner packets, `Device::send` on one
//!   side + `Device::handle_incoming` on the other: encrypt + decrypt + framing, replay window,
//!   cryptokey routing) against raw `chacha20poly1305` seal+open of the same buffers, as a ratio;
//! * complete handshakes per second (initiation + response + first transport, both sides).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant as StdInstant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use netfabric::{Device, Identity, Instant, PeerConfig};
use rand_core::OsRng;

const PAYLOAD: usize = 1400;

fn main() {
    let ia = Identity::generate(&mut OsRng);
    let ib = Identity::generate(&mut OsRng);
    let aa: SocketAddr = "[fd00::a]:51820".parse().unwrap();
    let ba: SocketAddr = "[fd00::b]:51820".parse().unwrap();
    let mut a = Device::new(ia.clone(), Box::new(OsRng));
    let mut b = Device::new(ib.clone(), Box::new(OsRng));
    a.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    b.add_peer(PeerConfig::new(ia.public_key()).with_endpoint(aa)).unwrap();
    let now = Instant::from_secs(1);
    // A 1400-byte IPv6/UDP packet (1352 bytes of UDP payload).
    let pkt = netfabric::ipv6::build_udp(ia.node_address(), ib.node_address(), 1, 2, &[0xa5; PAYLOAD - 48]).unwrap();
    assert_eq!(pkt.len(), PAYLOAD);
    let init = a.send(&pkt, now).unwrap().transmits.remove(0).data;
    let resp = b.handle_incoming(&init, aa, now).transmits.remove(0).data;
    let first = a.handle_incoming(&resp, ba, now).transmits.remove(0).data;
    assert_eq!(b.handle_incoming(&first, aa, now).packets.len(), 1);

    let n = 50_000usize;
    // Warm up, then measure the library.
    for _ in 0..1000 {
        let o = a.send(&pkt, now).unwrap();
        black_box(b.handle_incoming(&o.transmits[0].data, aa, now));
    }
    // Interleave library and raw runs and keep the best of each (the machine is shared).
    let ka = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut buf = pkt.clone();
    let mut lib = Duration::MAX;
    let mut raw = Duration::MAX;
    for _round in 0..3 {
        let t = StdInstant::now();
        let mut delivered = 0usize;
        for _ in 0..n {
            let o = a.send(black_box(&pkt), now).unwrap();
            let r = b.handle_incoming(&o.transmits[0].data, aa, now);
            delivered += r.packets.len();
        }
        lib = lib.min(t.elapsed());
        assert_eq!(delivered, n);

        // Raw AEAD on the same buffer size: seal then open, fresh nonce per packet.
        let t = StdInstant::now();
        for i in 0..n as u64 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&i.to_le_bytes());
            let tag = ka.encrypt_in_place_detached(&nonce.into(), &[], black_box(&mut buf)).unwrap();
            ka.decrypt_in_place_detached(&nonce.into(), &[], &mut buf, &tag).unwrap();
        }
        raw = raw.min(t.elapsed());
        black_box(&buf);
    }

    let mbps = |d: Duration| (n * PAYLOAD) as f64 / d.as_secs_f64() / 1e6;
    let (lm, rm) = (mbps(lib), mbps(raw));
    println!("transport: {n} packets x {PAYLOAD} B, encrypt+decrypt, best of 3");
    println!("  netfabric (send + handle_incoming): {lm:8.1} MB/s  ({:.2} us/packet)", lib.as_secs_f64() * 1e6 / n as f64);
    println!("  raw chacha20poly1305 (seal + open): {rm:8.1} MB/s  ({:.2} us/packet)", raw.as_secs_f64() * 1e6 / n as f64);
    println!("  ratio netfabric / raw:              {:8.3}", lm / rm);

    // Handshakes per second: a fresh initiator each time (new timestamp), one responder.
    let hs = 300u64;
    let t = StdInstant::now();
    for i in 0..hs {
        let mut c = Device::new(ia.clone(), Box::new(OsRng));
        c.set_unix_time_at_origin(Duration::from_secs(1_000 + i));
        let pc = c.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
        let init = c.send_to(pc, &pkt, now).transmits.remove(0).data;
        let resp = b.handle_incoming(&init, aa, now + Duration::from_millis(30 * (i + 1))).transmits.remove(0).data;
        let data = c.handle_incoming(&resp, ba, now).transmits.remove(0).data;
        let r = b.handle_incoming(&data, aa, now + Duration::from_millis(30 * (i + 1)));
        assert_eq!(r.packets.len(), 1);
    }
    let d = t.elapsed();
    println!("handshakes: {:.0} complete handshakes/s ({:.1} us each; initiation + response + confirmation, both sides, 8 X25519 ops + static-static precompute)", hs as f64 / d.as_secs_f64(), d.as_secs_f64() * 1e6 / hs as f64);
}
