#![no_main]
//! Handshake initiation: the parser, then the responder's whole path. mac1 is recomputed over
//! the fuzzed message so it is not dropped at the mac1 check: the fuzzer reaches the ephemeral
//! DH and the static-key AEAD. In mode 1 the message starts as a genuine initiation from a
//! configured peer (ephemeral and timestamp from the input), then the rest of the input is
//! XORed into it, so the fuzzer also reaches the static-static DH, the timestamp check and the
//! response.
use libfuzzer_sys::fuzz_target;
use netfabric::messages::{Initiation, INITIATION_MAC1_OFFSET, TYPE_INITIATION};
use netfabric::tai64n::Tai64n;
use netfabric::{noise, Device, Instant, PeerConfig};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Initiation::parse(data) {
        assert_eq!(&m.encode()[..], data);
    }
    let (i, r) = (common::initiator(), common::responder());
    let mut dev = Device::new(r.clone(), Box::new(common::TestRng(7)));
    dev.add_peer(PeerConfig::new(i.public_key())).unwrap();
    dev.set_under_load(data.get(1).is_some_and(|b| b & 1 == 1));
    let mut msg = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 && rest.len() >= 44 => {
            let mut eph = [0u8; 32];
            eph.copy_from_slice(&rest[..32]);
            let mut ts = [0u8; 12];
            ts.copy_from_slice(&rest[32..44]);
            let ss = noise::static_static(&i, &r.public_key()).unwrap();
            let Ok((_, m)) = noise::create_initiation(&i, &r.public_key(), &ss, eph, 5, Tai64n(ts)) else { return };
            let mut b = m.encode().to_vec();
            common::mutate(&mut b, &rest[44..]);
            b
        }
        _ => data.to_vec(),
    };
    if let Some(b) = msg.first_mut() {
        *b = TYPE_INITIATION;
    }
    common::fix_mac1(&mut msg, INITIATION_MAC1_OFFSET, &r);
    let out = dev.handle_incoming(&msg, "[fd00::1]:1".parse().unwrap(), Instant::from_secs(1));
    assert!(out.transmits.len() <= 1 && out.packets.is_empty());
});
