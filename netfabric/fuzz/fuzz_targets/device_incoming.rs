#![no_main]
//! Any datagram into a device with one configured peer, under load or not. Handshake-sized
//! inputs get a valid mac1 half of the time so they reach the DH path.
use libfuzzer_sys::fuzz_target;
use netfabric::messages::{INITIATION_LEN, INITIATION_MAC1_OFFSET, RESPONSE_LEN, RESPONSE_MAC1_OFFSET};
use netfabric::{Device, Instant, PeerConfig};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (i, r) = (common::initiator(), common::responder());
    let mut dev = Device::new(r.clone(), Box::new(common::TestRng(7)));
    dev.add_peer(PeerConfig::new(i.public_key())).unwrap();
    dev.set_under_load(data.first().is_some_and(|b| b & 0x80 != 0));
    let _ = netfabric::messages::parse(data);
    let mut msg = data.to_vec();
    if data.get(1).is_some_and(|b| b & 1 == 1) {
        match msg.len() {
            INITIATION_LEN => common::fix_mac1(&mut msg, INITIATION_MAC1_OFFSET, &r),
            RESPONSE_LEN => common::fix_mac1(&mut msg, RESPONSE_MAC1_OFFSET, &r),
            _ => {}
        }
    }
    let _ = dev.handle_incoming(&msg, "[fd00::1]:1".parse().unwrap(), Instant::from_secs(1));
    let _ = dev.tick(Instant::from_secs(200));
});
