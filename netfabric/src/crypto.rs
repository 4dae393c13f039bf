//! WireGuard's cryptographic primitives, built on well-kept crates.
//!
//! * `HASH` = BLAKE2s-256, `MAC` = keyed BLAKE2s with a 16-byte output, `HMAC` = HMAC-BLAKE2s
//!   (RFC 2104 over BLAKE2s-256, block size 64).
//! * `KDF1/2/3` = the HKDF-like chain WireGuard specifies: `t0 = HMAC(key, input)`,
//!   `t1 = HMAC(t0, 0x1)`, `ti = HMAC(t0, t(i-1) ‖ i)`.
//! * `AEAD` = ChaCha20-Poly1305 with the nonce `0u32 ‖ le64(counter)`; `XAEAD` =
//!   XChaCha20-Poly1305 with a 24-byte random nonce (cookie replies).

use alloc::vec::Vec;
use blake2::digest::consts::U16;
use blake2::digest::{Digest, Mac};
use blake2::{Blake2s256, Blake2sMac};
use chacha20poly1305::aead::{Aead, AeadInPlace, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use hmac::SimpleHmac;

/// Length of a BLAKE2s-256 hash / chaining key / symmetric key.
pub const HASH_LEN: usize = 32;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of a keyed BLAKE2s-128 MAC.
pub const MAC_LEN: usize = 16;

/// `HASH(parts[0] ‖ parts[1] ‖ …)` with BLAKE2s-256.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `MAC(key, parts…)`: keyed BLAKE2s with a 16-byte output (`key` is 16 or 32 bytes).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    // Keys are always 16 or 32 bytes here, within BLAKE2s's 1..=32 byte key range.
    let mut m = match <Blake2sMac<U16> as blake2::digest::KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 16],
    };
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// `HMAC(key, parts…)` with BLAKE2s-256 as the hash.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = match <SimpleHmac<Blake2s256> as blake2::digest::KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    for p in parts {
        Mac::update(&mut m, p);
    }
    m.finalize().into_bytes().into()
}

/// `KDF1(key, input)`.
pub fn kdf1(key: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let t0 = hmac(key, &[input]);
    hmac(&t0, &[&[1u8]])
}

/// `KDF2(key, input)`.
pub fn kdf2(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1u8]]);
    let t2 = hmac(&t0, &[&t1, &[2u8]]);
    (t1, t2)
}

/// `KDF3(key, input)`.
pub fn kdf3(key: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let t0 = hmac(key, &[input]);
    let t1 = hmac(&t0, &[&[1u8]]);
    let t2 = hmac(&t0, &[&t1, &[2u8]]);
    let t3 = hmac(&t0, &[&t2, &[3u8]]);
    (t1, t2, t3)
}

/// The 12-byte ChaCha20-Poly1305 nonce WireGuard uses: four zero bytes, then the
/// little-endian 64-bit counter.
pub fn nonce(counter: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

/// `AEAD(key, counter, plaintext, ad)` → ciphertext ‖ tag.
pub fn aead_seal(key: &[u8; 32], counter: u64, plaintext: &[u8], ad: &[u8]) -> Vec<u8> {
    let c = ChaCha20Poly1305::new(key.into());
    // Encryption only fails for plaintexts beyond 256 GiB.
    c.encrypt(&nonce(counter), Payload { msg: plaintext, aad: ad })
        .unwrap_or_default()
}

/// Open an `AEAD` ciphertext; `None` if the tag does not verify.
pub fn aead_open(key: &[u8; 32], counter: u64, ciphertext: &[u8], ad: &[u8]) -> Option<Vec<u8>> {
    let c = ChaCha20Poly1305::new(key.into());
    c.decrypt(&nonce(counter), Payload { msg: ciphertext, aad: ad }).ok()
}

/// `XAEAD(key, nonce, plaintext, ad)` → ciphertext ‖ tag.
pub fn xaead_seal(key: &[u8; 32], nonce: &[u8; 24], plaintext: &[u8], ad: &[u8]) -> Vec<u8> {
    let c = XChaCha20Poly1305::new(key.into());
    c.encrypt(XNonce::from_slice(nonce), Payload { msg: plaintext, aad: ad })
        .unwrap_or_default()
}

/// Open an `XAEAD` ciphertext; `None` if the tag does not verify.
pub fn xaead_open(key: &[u8; 32], nonce: &[u8; 24], ciphertext: &[u8], ad: &[u8]) -> Option<Vec<u8>> {
    let c = XChaCha20Poly1305::new(key.into());
    c.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: ad }).ok()
}

/// A transport cipher with its key schedule precomputed (one per direction of a keypair).
#[derive(Clone)]
pub struct TransportCipher(ChaCha20Poly1305);

impl TransportCipher {
    /// From a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        TransportCipher(ChaCha20Poly1305::new(key.into()))
    }
    /// Encrypt `buf` in place with `counter` as nonce and an empty AD; returns the tag.
    pub fn seal_in_place(&self, counter: u64, buf: &mut [u8]) -> [u8; 16] {
        match self.0.encrypt_in_place_detached(&nonce(counter), &[], buf) {
            Ok(t) => t.into(),
            Err(_) => [0u8; 16],
        }
    }
    /// Decrypt `buf` in place; `false` (and `buf` unspecified) if the tag does not verify.
    pub fn open_in_place(&self, counter: u64, buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0
            .decrypt_in_place_detached(&nonce(counter), &[], buf, Tag::from_slice(tag))
            .is_ok()
    }
}

/// Constant-time equality of two byte strings of equal length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
