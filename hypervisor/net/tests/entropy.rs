//! Seeds are domain-separated, and a node without hardware entropy refuses to create keys
//! unless told to.
use catenary_net::entropy::*;
use netfabric::Identity;
use rand_core::RngCore;

#[test]
fn no_hardware_entropy_refuses_unless_overridden() {
    let hw = [1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(check(HwSource::None, &[0; 8], false), Err(NoEntropy));
    assert_eq!(check(HwSource::None, &[0; 8], true), Ok(Verdict::Insecure));
    assert_eq!(check(HwSource::Rdseed, &hw, false), Ok(Verdict::Hardware(HwSource::Rdseed)));
    assert_eq!(check(HwSource::Rdrand, &hw, false), Ok(Verdict::Hardware(HwSource::Rdrand)));
    assert_eq!(check(HwSource::Rdrand, &hw, true), Ok(Verdict::Hardware(HwSource::Rdrand)));
    // A stuck generator (constant words reported as good) is no source.
    assert_eq!(check(HwSource::Rdrand, &[u64::MAX; 8], false), Err(NoEntropy));
    assert_eq!(check(HwSource::Rdseed, &[0; 8], true), Ok(Verdict::Insecure));
    let msg = NoEntropy.to_string();
    assert!(msg.contains(INSECURE_FLAG) && msg.contains("refusing"), "{msg}");
    assert!(INSECURE_WARNING.contains("INSECURE"));
}

#[test]
fn seeds_are_domain_separated() {
    let m = material(&[1, 2, 3, 4, 5, 6, 7, 8], &[9; 32]);
    let s = derive(&m);
    assert_eq!(s, derive(&m), "deterministic");
    assert_ne!(s.identity, s.fabric);
    let stack = subseed(LABEL_STACK, &s.fabric);
    assert!(stack != s.fabric && stack != s.identity);
    let labels = [LABEL_IDENTITY, LABEL_FABRIC, LABEL_STACK];
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            assert_ne!(a, b);
        }
    }
    // Neither seed is the raw material, and every material bit matters.
    assert_ne!(&s.identity[..], &m[..32]);
    let mut m2 = m.clone();
    m2[300] ^= 1;
    let s2 = derive(&m2);
    assert!(s2.identity != s.identity && s2.fabric != s.fabric);
    // The identity's secret never appears in the fabric RNG's output (ephemeral keys).
    let id = Identity::from_secret_bytes(s.identity);
    let mut rng = fabric_rng(s.fabric);
    let mut out = vec![0u8; 4096];
    rng.fill_bytes(&mut out);
    assert!(!out.windows(8).any(|w| w == &id.secret_bytes()[..8] || w == &s.identity[..8] || w == &s.fabric[..8]));
}

/// The CSPRNG is ChaCha20 as specified (RFC 8439 block function, zero nonce): pinned first
/// output for the all-zero key, so a change of generator shows.
#[test]
fn fabric_rng_is_chacha20() {
    let mut rng = fabric_rng([0; 32]);
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    // ChaCha20 keystream, key 0, nonce 0, block 0 (RFC 7539 test vector A.1 #1).
    assert_eq!(b, [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90, 0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd, 0x28]);
}
