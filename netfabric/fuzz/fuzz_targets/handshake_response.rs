#![no_main]
//! Handshake response: the parser, then the initiator's whole path. The device has a pending
//! initiation; mode 1 starts from the genuine response to it (responder ephemeral from the
//! input) and XORs the rest of the input into it; mode 0 takes the input as is with the live
//! receiver index. mac1 is recomputed either way, so the fuzzer reaches the DHs and the AEAD.
use libfuzzer_sys::fuzz_target;
use netfabric::messages::{Initiation, Response, RESPONSE_MAC1_OFFSET, TYPE_RESPONSE};
use netfabric::{noise, Device, Instant, PeerConfig};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Response::parse(data) {
        assert_eq!(&m.encode()[..], data);
    }
    let (i, r) = (common::initiator(), common::responder());
    let mut dev = Device::new(i.clone(), Box::new(common::TestRng(7)));
    let peer = dev.add_peer(PeerConfig::new(r.public_key()).with_endpoint("[fd00::2]:1".parse().unwrap())).unwrap();
    dev.set_under_load(data.get(1).is_some_and(|b| b & 1 == 1));
    let now = Instant::from_secs(1);
    let out = dev.send_to(peer, &[], now);
    let Some(init) = out.transmits.first().and_then(|t| Initiation::parse(&t.data).ok()) else { return };
    let mut msg = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 && rest.len() >= 32 => {
            let mut eph = [0u8; 32];
            eph.copy_from_slice(&rest[..32]);
            let consumed = noise::consume_initiation(&r, &init, |_| noise::static_static(&r, &i.public_key()).ok()).unwrap();
            let Ok((m, _)) = noise::create_response(&consumed, &[0; 32], eph, 9) else { return };
            let mut b = m.encode().to_vec();
            common::mutate(&mut b, &rest[32..]);
            b
        }
        _ => {
            let mut b = data.to_vec();
            if let Some(x) = b.get_mut(8..12) {
                x.copy_from_slice(&init.sender.to_le_bytes());
            }
            b
        }
    };
    if let Some(b) = msg.first_mut() {
        *b = TYPE_RESPONSE;
    }
    common::fix_mac1(&mut msg, RESPONSE_MAC1_OFFSET, &i);
    let _ = dev.handle_incoming(&msg, "[fd00::2]:1".parse().unwrap(), now);
});
