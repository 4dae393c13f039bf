//! WireGuard's cryptographic primitives, built on well-kept crates.
//!
//! * `HASH` = BLAKE2s-256, `MAC` = keyed BLAKE2s with a 16-byte output, `HMAC` = HMAC-BLAKE2s
//!   (RFC 2104 over BLAKE2s-256, block size 64).
//! * `KDF1/2/3` = the HKDF-like chain WireGuard specifies: `t0 = HMAC(key, input)`,
//!   `t1 = HMAC(t0, 0x1)`, `ti = HMAC(t0, t(i-1) ‖ i)`.
//! * `AEAD` = ChaCha20-Poly1305 with the nonce `0u32 ‖ le64(counter)`; `XAEAD` =
//!   XChaCha20-Poly1305 with a 24-byte random nonce (cookie replies).

use alloc::sync::Arc;
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
    nonce_bytes(counter).into()
}

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
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

/// Which ChaCha20-Poly1305 code seals and opens transport data. Both are RFC 8439 and
/// interoperate bit for bit; they differ only in speed, which depends on the CPU — and, under
/// an emulator, on how well it emulates vector instructions (QEMU TCG runs AVX2 code about
/// 3× slower than scalar code; real hardware runs it faster). `measure_cipher_impls` times
/// both and picks the faster (docs/netfabric.md §2, "Cipher code chosen at run time").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CipherImpl {
    /// RustCrypto's `chacha20poly1305`: AVX2 or SSE2 code, chosen by CPUID at first use.
    #[default]
    Vector,
    /// orion's `chacha20poly1305`: an independently written, pure-Rust scalar implementation
    /// (no SIMD intrinsics, no unsafe code).
    Portable,
}

impl CipherImpl {
    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            CipherImpl::Vector => "vector (RustCrypto, AVX2/SSE2 by CPUID)",
            CipherImpl::Portable => "portable (orion, scalar)",
        }
    }
}

/// A transport cipher with its key schedule precomputed (one per direction of a keypair).
#[derive(Clone)]
pub enum TransportCipher {
    /// RustCrypto.
    Vector(ChaCha20Poly1305),
    /// orion. Its key type is not `Clone`; shared, it zeroizes once on the last drop.
    Portable(Arc<orion::hazardous::aead::chacha20poly1305::SecretKey>),
}

impl TransportCipher {
    /// From a 32-byte key, with the default code (`CipherImpl::Vector`).
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with_impl(key, CipherImpl::Vector)
    }
    /// From a 32-byte key, with the given code.
    pub fn with_impl(key: &[u8; 32], imp: CipherImpl) -> Self {
        match imp {
            CipherImpl::Vector => TransportCipher::Vector(ChaCha20Poly1305::new(key.into())),
            CipherImpl::Portable => TransportCipher::Portable(Arc::new(orion::hazardous::aead::chacha20poly1305::SecretKey::from(*key))),
        }
    }
    /// Which code this cipher runs.
    pub fn implementation(&self) -> CipherImpl {
        match self {
            TransportCipher::Vector(_) => CipherImpl::Vector,
            TransportCipher::Portable(_) => CipherImpl::Portable,
        }
    }
    /// Encrypt `buf` in place with `counter` as nonce and an empty AD; returns the tag.
    pub fn seal_in_place(&self, counter: u64, buf: &mut [u8]) -> [u8; 16] {
        self.seal_in_place_ad(counter, &[], buf)
    }
    /// Decrypt `buf` in place; `false` (and `buf` unspecified) if the tag does not verify.
    pub fn open_in_place(&self, counter: u64, buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.open_in_place_ad(counter, &[], buf, tag)
    }
    /// `seal_in_place` with associated data (for known-answer tests: WireGuard's transport
    /// uses none).
    pub fn seal_in_place_ad(&self, counter: u64, ad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        self.seal_nonce(&nonce_bytes(counter), ad, buf)
    }
    /// `open_in_place` with associated data.
    pub fn open_in_place_ad(&self, counter: u64, ad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.open_nonce(&nonce_bytes(counter), ad, buf, tag)
    }
    /// Seal under any 96-bit nonce (RFC 8439's test vectors use nonces that are not
    /// WireGuard's `0 ‖ le64(counter)`). Only for tests and the measurement: the transport
    /// always goes through `seal_in_place`.
    pub fn seal_nonce(&self, n: &[u8; 12], ad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        match self {
            // Encryption only fails for messages beyond 256 GiB (both crates).
            TransportCipher::Vector(c) => match c.encrypt_in_place_detached(chacha20poly1305::Nonce::from_slice(n), ad, buf) {
                Ok(t) => t.into(),
                Err(_) => [0u8; 16],
            },
            TransportCipher::Portable(k) => {
                use orion::hazardous::aead::chacha20poly1305 as o;
                match o::ChaCha20Poly1305::seal_inplace(k, &o::Nonce::from(*n), Some(ad), buf) {
                    Ok(t) => {
                        let mut out = [0u8; 16];
                        out.copy_from_slice(t.unprotected_as_ref());
                        out
                    }
                    Err(_) => [0u8; 16],
                }
            }
        }
    }
    /// Open under any 96-bit nonce (see `seal_nonce`).
    pub fn open_nonce(&self, n: &[u8; 12], ad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        match self {
            TransportCipher::Vector(c) => c.decrypt_in_place_detached(chacha20poly1305::Nonce::from_slice(n), ad, buf, Tag::from_slice(tag)).is_ok(),
            TransportCipher::Portable(k) => {
                use orion::hazardous::aead::chacha20poly1305 as o;
                // orion compares tags in constant time (`Tag`'s `PartialEq`) and decrypts
                // only after the tag verifies.
                o::ChaCha20Poly1305::open_inplace(k, &o::Nonce::from(*n), &o::Tag::from(*tag), Some(ad), buf).is_ok()
            }
        }
    }
}

/// What `measure_cipher_impls` found: whether each code gave RFC 8439's known answer on this
/// CPU, the best time of each over the same work in the caller's clock units, and the faster
/// of those that are correct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherMeasurement {
    /// Best (lowest) time of one round with `CipherImpl::Vector` (`u64::MAX`: not timed).
    pub vector: u64,
    /// Best time of one round with `CipherImpl::Portable`.
    pub portable: u64,
    /// Whether each code (vector, portable) gave RFC 8439's answer here (`known_answer_ok`).
    pub correct: [bool; 2],
    /// The faster of the correct codes (`Vector` on a tie); `None` if neither is correct.
    pub chosen: Option<CipherImpl>,
}

/// RFC 8439 §2.8.2 ("Example and Test Vector for AEAD_CHACHA20_POLY1305"), copied from the RFC.
mod rfc8439 {
    pub const KEY: [u8; 32] = [
        0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93,
        0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
    ];
    pub const NONCE: [u8; 12] = [0x07, 0x00, 0x00, 0x00, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
    pub const AAD: [u8; 12] = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
    pub const PLAINTEXT: &[u8; 114] =
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    pub const CIPHERTEXT: [u8; 114] = [
        0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb, 0x7b, 0x86, 0xaf, 0xbc, 0x53, 0xef, 0x7e, 0xc2, 0xa4, 0xad, 0xed, 0x51,
        0x29, 0x6e, 0x08, 0xfe, 0xa9, 0xe2, 0xb5, 0xa7, 0x36, 0xee, 0x62, 0xd6, 0x3d, 0xbe, 0xa4, 0x5e, 0x8c, 0xa9, 0x67, 0x12,
        0x82, 0xfa, 0xfb, 0x69, 0xda, 0x92, 0x72, 0x8b, 0x1a, 0x71, 0xde, 0x0a, 0x9e, 0x06, 0x0b, 0x29, 0x05, 0xd6, 0xa5, 0xb6,
        0x7e, 0xcd, 0x3b, 0x36, 0x92, 0xdd, 0xbd, 0x7f, 0x2d, 0x77, 0x8b, 0x8c, 0x98, 0x03, 0xae, 0xe3, 0x28, 0x09, 0x1b, 0x58,
        0xfa, 0xb3, 0x24, 0xe4, 0xfa, 0xd6, 0x75, 0x94, 0x55, 0x85, 0x80, 0x8b, 0x48, 0x31, 0xd7, 0xbc, 0x3f, 0xf4, 0xde, 0xf0,
        0x8e, 0x4b, 0x7a, 0x9d, 0xe5, 0x76, 0xd2, 0x65, 0x86, 0xce, 0xc6, 0x4b, 0x61, 0x16,
    ];
    pub const TAG: [u8; 16] = [0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91];
}

/// Whether `imp` gives RFC 8439's AEAD known answer on this CPU: seals the RFC's plaintext to
/// its ciphertext and tag, opens it back, and refuses it with one bit of the tag flipped. The
/// two codes agreeing with each other is not enough: a fault in one CPU path (a miscompile,
/// an emulator's vector instructions) would still let a node seal with it and talk to a node
/// of the same build without either noticing. Run for each code before it may carry traffic.
pub fn known_answer_ok(imp: CipherImpl) -> bool {
    use rfc8439::*;
    let c = TransportCipher::with_impl(&KEY, imp);
    let mut buf = *PLAINTEXT;
    let tag = c.seal_nonce(&NONCE, &AAD, &mut buf);
    if buf != CIPHERTEXT || tag != TAG {
        return false;
    }
    let mut bad_tag = TAG;
    bad_tag[15] ^= 1;
    let mut refused = CIPHERTEXT;
    if c.open_nonce(&NONCE, &AAD, &mut refused, &bad_tag) {
        return false;
    }
    c.open_nonce(&NONCE, &AAD, &mut buf, &TAG) && buf == *PLAINTEXT
}

/// The code to use from each code's correctness and best time: the faster of the correct ones
/// (`Vector` on a tie), `None` when neither is correct.
pub fn pick_cipher_impl(best: [u64; 2], correct: [bool; 2]) -> Option<CipherImpl> {
    match correct {
        [true, true] => Some(if best[1] < best[0] { CipherImpl::Portable } else { CipherImpl::Vector }),
        [true, false] => Some(CipherImpl::Vector),
        [false, true] => Some(CipherImpl::Portable),
        [false, false] => None,
    }
}

/// Rounds per code in `measure_cipher_impls`, alternating between the two so a burst of
/// load hits both; the best round of each counts (noise only ever adds time).
pub const MEASURE_ROUNDS: usize = 4;
/// Packet sizes of one round: an echo-sized packet and a full datagram (sealed, then opened).
pub const MEASURE_SIZES: [usize; 2] = [96, 1280];

/// Check both ChaCha20-Poly1305 codes against RFC 8439's known answer (`known_answer_ok`),
/// time both on packet-sized buffers and return the faster correct one, as Linux tests and
/// picks its RAID6/xor and crypto code by timing at boot. Bounded: `MEASURE_ROUNDS` rounds of
/// each code, one seal and one open of each of `MEASURE_SIZES` per round (under QEMU TCG about
/// 0.6 ms per vector round, a few ms in all). `clock` is any monotonic counter (the TSC);
/// the key is a fixed public constant, so nothing secret is involved or logged.
pub fn measure_cipher_impls(clock: &mut dyn FnMut() -> u64) -> CipherMeasurement {
    let key = [0x5au8; 32];
    let ciphers = [TransportCipher::with_impl(&key, CipherImpl::Vector), TransportCipher::with_impl(&key, CipherImpl::Portable)];
    let mut buf = [0u8; 1280];
    let mut round = |c: &TransportCipher, clock: &mut dyn FnMut() -> u64| -> u64 {
        let t0 = clock();
        for (i, &n) in MEASURE_SIZES.iter().enumerate() {
            let b = &mut buf[..n];
            let tag = c.seal_in_place(i as u64, b);
            // Open what was sealed: the result also keeps the work from being optimised away.
            if !c.open_in_place(i as u64, b, &tag) {
                return u64::MAX;
            }
        }
        clock().saturating_sub(t0)
    };
    // Warm-up (untimed): the vector code's first call runs its CPUID detection.
    for c in &ciphers {
        round(c, clock);
    }
    let mut best = [u64::MAX; 2];
    for r in 0..MEASURE_ROUNDS {
        for k in 0..2 {
            let k = if r % 2 == 0 { k } else { 1 - k };
            best[k] = best[k].min(round(&ciphers[k], clock));
        }
    }
    let correct = [known_answer_ok(CipherImpl::Vector), known_answer_ok(CipherImpl::Portable)];
    CipherMeasurement { vector: best[0], portable: best[1], correct, chosen: pick_cipher_impl(best, correct) }
}

/// Constant-time equality of two byte strings of equal length.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
