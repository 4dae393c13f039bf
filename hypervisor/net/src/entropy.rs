//! Seeds for the node's keys, from the raw material the kernel collects (`catenary_arch::
//! entropy`: RDSEED or RDRAND words plus TSC jitter), and the policy for a node without a
//! hardware entropy source.
//!
//! * All seeds are `BLAKE2s-256(label ‖ material)` with a different label per use, so the
//!   static identity (when the node has no configured key), the fabric's CSPRNG (ephemeral
//!   keys, indices, cookie secrets) and the IP stack's seed (ports, which the network sees)
//!   are independent: learning one output reveals nothing about the others.
//! * The fabric's CSPRNG is ChaCha20 (`rand_chacha`, no_std, 64-bit block counter).
//! * Without RDSEED/RDRAND only timing jitter is left, which is guessable; the node then
//!   refuses to create keys unless `net.insecure-entropy` is on its command line (and says so
//!   loudly when it is).

use netfabric::crypto::hash;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Label of the node identity's secret (only when no key is configured).
pub const LABEL_IDENTITY: &[u8] = b"catenary-entropy-v1 node identity";
/// Label of the fabric CSPRNG's seed (ephemeral keys, indices, cookie secrets, jitter).
pub const LABEL_FABRIC: &[u8] = b"catenary-entropy-v1 fabric rng";
/// Label of the IP stack's random seed (derived from the fabric seed with [`subseed`]).
pub const LABEL_STACK: &[u8] = b"catenary-entropy-v1 ip stack";
/// The command-line flag that lets a node without hardware entropy create keys anyway.
pub const INSECURE_FLAG: &str = "net.insecure-entropy";

/// What supplied the hardware part of the material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwSource {
    Rdseed,
    Rdrand,
    None,
}

/// The outcome of [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A hardware source contributed: go ahead.
    Hardware(HwSource),
    /// No hardware source, but `net.insecure-entropy` was given: go ahead, warn loudly.
    Insecure,
}

/// No hardware entropy and no override: no keys may be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoEntropy;

impl core::fmt::Display for NoEntropy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "no hardware entropy source (RDSEED/RDRAND): refusing to create keys; boot with {INSECURE_FLAG} to use timing jitter only (INSECURE)")
    }
}

/// The loud warning printed when [`Verdict::Insecure`] is in effect.
pub const INSECURE_WARNING: &str = "*** INSECURE: no hardware entropy source; net.insecure-entropy given: the fabric's keys are seeded from timing jitter only and may be guessable ***";

/// May the node create keys with material from `source` (its words `hw`)? `insecure_flag`:
/// whether [`INSECURE_FLAG`] is on the command line. Words that are all equal count as no
/// hardware source: some parts have returned a constant (all ones) from RDRAND while
/// reporting success.
pub fn check(source: HwSource, hw: &[u64], insecure_flag: bool) -> Result<Verdict, NoEntropy> {
    let stuck = hw.windows(2).all(|w| w[0] == w[1]);
    let source = if stuck { HwSource::None } else { source };
    match (source, insecure_flag) {
        (HwSource::None, false) => Err(NoEntropy),
        (HwSource::None, true) => Ok(Verdict::Insecure),
        (s, _) => Ok(Verdict::Hardware(s)),
    }
}

/// The independent seeds derived from one collection of material.
#[derive(Clone, PartialEq, Eq)]
pub struct Seeds {
    pub identity: [u8; 32],
    pub fabric: [u8; 32],
}

impl core::fmt::Debug for Seeds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Seeds(..)")
    }
}

/// `BLAKE2s(label ‖ material)` for each use.
pub fn derive(material: &[u8]) -> Seeds {
    Seeds {
        identity: hash(&[LABEL_IDENTITY, material]),
        fabric: hash(&[LABEL_FABRIC, material]),
    }
}

/// Material bytes from the kernel's sample: the hardware words, then the jitter words.
pub fn material(hw: &[u64], jitter: &[u64]) -> alloc::vec::Vec<u8> {
    hw.iter().chain(jitter).flat_map(|w| w.to_le_bytes()).collect()
}

/// The fabric's CSPRNG.
pub fn fabric_rng(seed: [u8; 32]) -> ChaCha20Rng {
    ChaCha20Rng::from_seed(seed)
}

/// A seed for another purpose derived from an existing one (the IP stack's from the fabric's,
/// in `Node::new`): `BLAKE2s(label ‖ seed)`.
pub fn subseed(label: &[u8], seed: &[u8; 32]) -> [u8; 32] {
    hash(&[label, seed])
}
