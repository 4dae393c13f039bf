#![no_main]
//! Cookie reply: the parser, then the device's cookie path with a pending initiation, so the
//! receiver index is live (mode 0 patches it in) and the XChaCha20-Poly1305 open runs against
//! the mac1 we sent; mode 1 starts from a genuine reply and XORs the input into it.
use libfuzzer_sys::fuzz_target;
use netfabric::cookie;
use netfabric::messages::{CookieReply, Initiation, INITIATION_MAC1_OFFSET, TYPE_COOKIE_REPLY};
use netfabric::{Device, Instant, PeerConfig};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CookieReply::parse(data) {
        assert_eq!(&m.encode()[..], data);
    }
    let (i, r) = (common::initiator(), common::responder());
    let mut dev = Device::new(i.clone(), Box::new(common::TestRng(7)));
    let peer = dev.add_peer(PeerConfig::new(r.public_key()).with_endpoint("[fd00::2]:1".parse().unwrap())).unwrap();
    let now = Instant::from_secs(1);
    let out = dev.send_to(peer, &[], now);
    let Some(init) = out.transmits.first().and_then(|t| Initiation::parse(&t.data).ok()) else { return };
    let mut msg = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let src = "[fd00::1]:1".parse().unwrap();
            let reply = cookie::create_reply(&cookie::cookie_key(&r.public_key()), &[3; 32], &src, init.sender, &init.mac1, [4; 24]);
            let mut b = reply.encode().to_vec();
            common::mutate(&mut b, rest);
            b
        }
        _ => {
            let mut b = data.to_vec();
            if let Some(x) = b.get_mut(4..8) {
                x.copy_from_slice(&init.sender.to_le_bytes());
            }
            b
        }
    };
    if let Some(b) = msg.first_mut() {
        *b = TYPE_COOKIE_REPLY;
    }
    let _ = INITIATION_MAC1_OFFSET;
    let _ = dev.handle_incoming(&msg, "[fd00::2]:1".parse().unwrap(), now);
});
