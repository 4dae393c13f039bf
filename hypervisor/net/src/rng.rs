//! A ChaCha20 keystream CSPRNG seeded by the caller (the kernel seeds it from RDRAND and the
//! TSC). netfabric needs one for ephemeral keys, indices and cookie secrets.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use rand_core::{CryptoRng, RngCore};

pub struct ChaChaRng(ChaCha20);

impl ChaChaRng {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        ChaChaRng(ChaCha20::new(&seed.into(), &[0u8; 12].into()))
    }
}

impl RngCore for ChaChaRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
        self.0.apply_keystream(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ChaChaRng {}
