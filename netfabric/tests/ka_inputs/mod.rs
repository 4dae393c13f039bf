//! The fixed inputs of the known-answer tests and the helpers both the test and the recorder
//! (`examples/record_wireguard_go.rs`) use.
#![allow(dead_code)]

use std::time::Duration;

use netfabric::cookie;
use netfabric::crypto::aead_seal;
use netfabric::ipv6::build_icmpv6_echo;
use netfabric::messages::{Transport, INITIATION_MAC1_OFFSET};
use netfabric::noise::{self, InitiatorState};
use netfabric::tai64n::Tai64n;
use netfabric::Identity;

// ------------------------------------------------------------------ fixed inputs

pub const H_SECRET: [u8; 32] = [0x48; 32]; // initiator ("H", this crate)
pub const L_SECRET: [u8; 32] = [0x4c; 32]; // responder ("L", wireguard-go in the recording)
pub const EPH_I: [u8; 32] = [0xe1; 32];
pub const EPH_R: [u8; 32] = [0xe2; 32];
pub const PSK: [u8; 32] = [0x50; 32];
pub const SENDER_I: u32 = 0x0403_0201;
pub const SENDER_R: u32 = 0x0807_0605;
/// 2023-11-14 22:13:20.5 UTC.
pub fn timestamp() -> Tai64n {
    Tai64n::from_unix(Duration::new(1_700_000_000, 500_000_000))
}
pub const ECHO_ID: u16 = 0x4b41;
pub const ECHO_PAYLOAD: &[u8] = b"netfabric known-answer";

// ------------------------------------------------------------------ helpers

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

pub fn ids() -> (Identity, Identity) {
    (Identity::from_secret_bytes(H_SECRET), Identity::from_secret_bytes(L_SECRET))
}

/// Our initiation with the fixed inputs, mac1 filled (no cookie).
pub fn initiation() -> (InitiatorState, Vec<u8>) {
    let (h, l) = ids();
    let ss = noise::static_static(&h, &l.public_key()).unwrap();
    let (state, msg) = noise::create_initiation(&h, &l.public_key(), &ss, EPH_I, SENDER_I, timestamp()).unwrap();
    let mut b = msg.encode();
    cookie::add_macs(&mut b, INITIATION_MAC1_OFFSET, &cookie::mac1_key(&l.public_key()), None);
    (state, b.to_vec())
}

/// A transport message: header, padded plaintext sealed under `key` with `counter`.
pub fn seal_transport(key: &[u8; 32], receiver: u32, counter: u64, plaintext: &[u8]) -> Vec<u8> {
    let mut padded = plaintext.to_vec();
    padded.resize(plaintext.len().div_ceil(16) * 16, 0);
    let mut b = Transport::header(receiver, counter).to_vec();
    b.extend(aead_seal(key, counter, &padded, &[]));
    b
}

/// The echo request we send as the first data packet (confirms the session to the responder).
pub fn echo_request() -> Vec<u8> {
    let (h, l) = ids();
    build_icmpv6_echo(h.node_address(), l.node_address(), true, ECHO_ID, 1, ECHO_PAYLOAD)
}


