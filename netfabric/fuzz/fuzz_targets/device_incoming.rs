#![no_main]
//! Any datagram into a device with one configured peer, under load or not.
use libfuzzer_sys::fuzz_target;
use netfabric::{Device, Identity, Instant, PeerConfig};

fuzz_target!(|data: &[u8]| {
    let mut dev = Device::new(Identity::from_secret_bytes([2; 32]), Box::new(rand_core::OsRng));
    dev.add_peer(PeerConfig::new(Identity::from_secret_bytes([1; 32]).public_key())).unwrap();
    dev.set_under_load(data.first().is_some_and(|b| b & 0x80 != 0));
    let _ = netfabric::messages::parse(data);
    let _ = dev.handle_incoming(data, "[fd00::1]:1".parse().unwrap(), Instant::from_secs(1));
    let _ = dev.tick(Instant::from_secs(200));
});
