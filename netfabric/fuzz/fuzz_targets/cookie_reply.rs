#![no_main]
//! Cookie reply parser and the device's cookie path.
use libfuzzer_sys::fuzz_target;
use netfabric::messages::{CookieReply, TYPE_COOKIE_REPLY};
use netfabric::{Device, Identity, Instant};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CookieReply::parse(data) {
        assert_eq!(&m.encode()[..], data);
    }
    let mut msg = data.to_vec();
    if let Some(b) = msg.first_mut() {
        *b = TYPE_COOKIE_REPLY;
    }
    let mut dev = Device::new(Identity::from_secret_bytes([1; 32]), Box::new(rand_core::OsRng));
    let _ = dev.handle_incoming(&msg, "[fd00::1]:1".parse().unwrap(), Instant::from_secs(1));
});
