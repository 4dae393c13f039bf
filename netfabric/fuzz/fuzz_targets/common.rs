//! Shared by the handshake fuzz targets: fixed identities and a deterministic RNG (so a crash
//! reproduces from its input alone), and the mac1 fix-up that lets fuzzed handshake messages
//! past the cheap mac1 check into the Diffie-Hellman path.
#![allow(dead_code)]
use netfabric::{cookie, Identity};

/// xorshift64*: deterministic, not secure; for fuzzing only.
pub struct TestRng(pub u64);

impl rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        for c in d.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(d);
        Ok(())
    }
}
impl rand_core::CryptoRng for TestRng {}

pub fn initiator() -> Identity {
    Identity::from_secret_bytes([1; 32])
}
pub fn responder() -> Identity {
    Identity::from_secret_bytes([2; 32])
}

/// Recompute mac1 (for `receiver`) over `msg`, mac2 zero.
pub fn fix_mac1(msg: &mut [u8], mac1_offset: usize, receiver: &Identity) {
    if msg.len() >= mac1_offset + 32 {
        cookie::add_macs(msg, mac1_offset, &cookie::mac1_key(&receiver.public_key()), None);
    }
}

/// XOR `mutation` into `msg` from byte 4 on (type and reserved bytes stay valid).
pub fn mutate(msg: &mut [u8], mutation: &[u8]) {
    for (b, m) in msg.iter_mut().skip(4).zip(mutation) {
        *b ^= m;
    }
}
