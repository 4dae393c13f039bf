#![no_main]
//! Handshake initiation: the parser, then the full responder path (mac1, consume, response).
use libfuzzer_sys::fuzz_target;
use netfabric::messages::{Initiation, TYPE_INITIATION};
use netfabric::{Device, Identity, Instant};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Initiation::parse(data) {
        assert_eq!(&m.encode()[..], data);
    }
    let mut msg = data.to_vec();
    if let Some(b) = msg.first_mut() {
        *b = TYPE_INITIATION;
    }
    let mut dev = Device::new(Identity::from_secret_bytes([1; 32]), Box::new(rand_core::OsRng));
    let _ = dev.handle_incoming(&msg, "[fd00::1]:1".parse().unwrap(), Instant::from_secs(1));
});
