//! Both ChaCha20-Poly1305 codes of the transport (`CipherImpl::Vector`, RustCrypto with
//! AVX2/SSE2 chosen by CPUID; `CipherImpl::Portable`, orion's scalar code) against RFC 8439's
//! AEAD test vector (§2.8.2, copied from the RFC, not produced by either code), and the
//! run-time choice between them (`measure_cipher_impls`). WireGuard's own bytes for each
//! code: `known_answer.rs` (`recorded_transport_with_each_cipher_impl`); devices on
//! different codes talking: `sessions.rs` (`every_pair_of_cipher_impls_interoperates`).

use netfabric::crypto::{known_answer_ok, measure_cipher_impls, pick_cipher_impl, CipherImpl, TransportCipher};

const IMPLS: [CipherImpl; 2] = [CipherImpl::Vector, CipherImpl::Portable];

// RFC 8439 §2.8.2 "Example and Test Vector for AEAD_CHACHA20_POLY1305".
const KEY: [u8; 32] = [
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93,
    0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
];
const NONCE: [u8; 12] = [0x07, 0x00, 0x00, 0x00, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
const AAD: [u8; 12] = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
const PLAINTEXT: &[u8] =
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
const CIPHERTEXT: &str = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b\
1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116";
const TAG: [u8; 16] = [0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06, 0x91];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn rfc8439_aead_vector_with_each_cipher_impl() {
    assert_eq!(PLAINTEXT.len(), 114);
    for imp in IMPLS {
        let c = TransportCipher::with_impl(&KEY, imp);
        assert_eq!(c.implementation(), imp);
        let mut buf = PLAINTEXT.to_vec();
        let tag = c.seal_nonce(&NONCE, &AAD, &mut buf);
        assert_eq!(hex(&buf), CIPHERTEXT, "{imp:?}: ciphertext");
        assert_eq!(tag, TAG, "{imp:?}: tag");
        assert!(c.open_nonce(&NONCE, &AAD, &mut buf, &TAG), "{imp:?}: the RFC's ciphertext opens");
        assert_eq!(buf, PLAINTEXT, "{imp:?}: plaintext");
        // Any flipped bit in ciphertext, tag, AD or nonce fails to open.
        let ct: Vec<u8> = (0..CIPHERTEXT.len() / 2).map(|i| u8::from_str_radix(&CIPHERTEXT[2 * i..2 * i + 2], 16).unwrap()).collect();
        for flip in 0..4 {
            let (mut b, mut t, mut a, mut n) = (ct.clone(), TAG, AAD, NONCE);
            match flip {
                0 => b[113] ^= 1,
                1 => t[0] ^= 0x80,
                2 => a[11] ^= 1,
                _ => n[0] ^= 1,
            }
            assert!(!c.open_nonce(&n, &a, &mut b, &t), "{imp:?}: flip {flip} must not open");
        }
    }
}

#[test]
fn measurement_times_both_and_picks_the_faster() {
    let origin = std::time::Instant::now();
    let mut clock = || origin.elapsed().as_nanos() as u64;
    let m = measure_cipher_impls(&mut clock);
    println!("vector {} ns, portable {} ns per round: {:?}", m.vector, m.portable, m.chosen);
    // Both codes ran (a failed open would report u64::MAX) and took measurable time.
    assert!(m.vector > 0 && m.vector < u64::MAX && m.portable > 0 && m.portable < u64::MAX, "{m:?}");
    assert_eq!(m.correct, [true, true], "both codes give RFC 8439's answer here");
    let faster = if m.portable < m.vector { CipherImpl::Portable } else { CipherImpl::Vector };
    assert_eq!(m.chosen, Some(faster), "{m:?}");
    // Bounded: the whole measurement (warm-up and all rounds) takes well under a second even
    // in an unoptimised test build on a loaded machine.
    assert!(origin.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn a_code_that_fails_the_known_answer_is_never_picked() {
    for imp in IMPLS {
        assert!(known_answer_ok(imp), "{imp:?} gives RFC 8439's answer on this CPU");
    }
    // a wrong code is not picked however fast it is; with none correct, none is
    assert_eq!(pick_cipher_impl([1, 1000], [false, true]), Some(CipherImpl::Portable));
    assert_eq!(pick_cipher_impl([1000, 1], [true, false]), Some(CipherImpl::Vector));
    assert_eq!(pick_cipher_impl([1000, 1], [true, true]), Some(CipherImpl::Portable));
    assert_eq!(pick_cipher_impl([1, 1000], [true, true]), Some(CipherImpl::Vector));
    assert_eq!(pick_cipher_impl([5, 5], [true, true]), Some(CipherImpl::Vector), "a tie keeps the default");
    assert_eq!(pick_cipher_impl([1, 1], [false, false]), None);
}
