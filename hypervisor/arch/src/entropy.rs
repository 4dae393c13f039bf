//! Raw entropy for the kernel's CSPRNGs: RDSEED where the CPU has it (the conditioned output of
//! the hardware noise source, meant for seeding), RDRAND otherwise, plus TSC jitter. This
//! module only collects; mixing, domain separation and the refuse-without-hardware policy are
//! in the safe crate `catenary-net` (`entropy`), where they are host-tested.

use core::arch::x86_64::{_rdrand64_step, _rdseed64_step};

/// Which hardware instruction supplied [`Sample::hw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Rdseed,
    Rdrand,
    /// Neither instruction exists or both kept failing: `hw` is all zero.
    None,
}

/// One collection of raw material.
pub struct Sample {
    pub hw: [u64; 8],
    pub source: Source,
    /// TSC deltas around short busy loops (timing jitter; weak alone, mixed in always).
    pub jitter: [u64; 32],
}

/// Attempts per word: RDSEED may fail transiently when its buffer is drained (Intel advises
/// retrying with a pause); RDRAND only fails on a broken part.
const RETRIES: usize = 128;

/// RDSEED and RDRAND from the CPUID bits: leaf 7 EBX[18] counts only when the maximum basic
/// leaf (leaf 0 EAX) reaches 7 (a CPU without leaf 7 answers it with another leaf's data).
pub fn features(max_leaf: u32, leaf1_ecx: u32, leaf7_ebx: u32) -> (bool, bool) {
    (max_leaf >= 7 && leaf7_ebx & (1 << 18) != 0, leaf1_ecx & (1 << 30) != 0)
}

/// The CPU's entropy instructions, behind a trait so that the choice between them
/// ([`collect_hw`]) is host-tested: neither QEMU TCG nor Bochs has RDSEED.
pub trait HwRng {
    /// (RDSEED, RDRAND) present.
    fn features(&self) -> (bool, bool);
    fn rdseed(&mut self) -> Option<u64>;
    fn rdrand(&mut self) -> Option<u64>;
}

/// This CPU.
pub struct Cpu;

impl HwRng for Cpu {
    fn features(&self) -> (bool, bool) {
        let max = crate::cpu::cpuid(0, 0).0;
        let leaf7 = if max >= 7 { crate::cpu::cpuid(7, 0).1 } else { 0 };
        features(max, crate::cpu::cpuid(1, 0).2, leaf7)
    }

    fn rdseed(&mut self) -> Option<u64> {
        if !self.features().0 {
            return None;
        }
        let mut v = 0u64;
        for _ in 0..RETRIES {
            // SAFETY: CPUID.(EAX=7,ECX=0):EBX[18] reported RDSEED (checked above), so the
            // instruction exists; it writes only `v`.
            if unsafe { _rdseed64_step(&mut v) } == 1 {
                return Some(v);
            }
            core::hint::spin_loop();
        }
        None
    }

    fn rdrand(&mut self) -> Option<u64> {
        if !self.features().1 {
            return None;
        }
        let mut v = 0u64;
        for _ in 0..RETRIES {
            // SAFETY: CPUID.01H:ECX[30] reported RDRAND (checked above), so the instruction
            // exists; it writes only `v`.
            if unsafe { _rdrand64_step(&mut v) } == 1 {
                return Some(v);
            }
        }
        None
    }
}

/// The hardware words of a sample: all eight from RDSEED when the CPU has it and it delivers,
/// else all eight from RDRAND, else none (zeros, [`Source::None`]). One source for the whole
/// sample, so that the source reported is the one used.
pub fn collect_hw(cpu: &mut impl HwRng) -> (Source, [u64; 8]) {
    let (has_seed, has_rand) = cpu.features();
    let mut hw = [0u64; 8];
    if has_seed && hw.iter_mut().all(|w| cpu.rdseed().map(|v| *w = v).is_some()) {
        return (Source::Rdseed, hw);
    }
    if has_rand && hw.iter_mut().all(|w| cpu.rdrand().map(|v| *w = v).is_some()) {
        return (Source::Rdrand, hw);
    }
    (Source::None, [0; 8])
}

/// Collect raw material: 512 bits from RDSEED or RDRAND ([`collect_hw`]) and TSC jitter.
pub fn sample() -> Sample {
    let (source, hw) = collect_hw(&mut Cpu);
    let mut s = Sample { hw, source, jitter: [0; 32] };
    let mut x = 0u64;
    for (i, j) in s.jitter.iter_mut().enumerate() {
        let t0 = crate::cpu::rdtsc();
        for k in 0..(64 + (x & 63)) {
            x = x.rotate_left(7) ^ k ^ i as u64;
            core::hint::black_box(x);
        }
        *j = crate::cpu::rdtsc().wrapping_sub(t0) ^ t0.rotate_left(32);
        x ^= *j;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU with the given instructions; RDSEED yields `seed_words` good words, RDRAND
    /// `rand_words`, then each fails.
    struct Fake {
        seed: bool,
        rand: bool,
        seed_words: usize,
        rand_words: usize,
        seed_calls: usize,
        rand_calls: usize,
    }

    impl Fake {
        fn new(seed: bool, rand: bool) -> Self {
            Fake { seed, rand, seed_words: usize::MAX, rand_words: usize::MAX, seed_calls: 0, rand_calls: 0 }
        }
    }

    impl HwRng for Fake {
        fn features(&self) -> (bool, bool) {
            (self.seed, self.rand)
        }
        fn rdseed(&mut self) -> Option<u64> {
            assert!(self.seed, "RDSEED executed on a CPU without it");
            self.seed_calls += 1;
            (self.seed_calls <= self.seed_words).then_some(0x5eed_0000 + self.seed_calls as u64)
        }
        fn rdrand(&mut self) -> Option<u64> {
            assert!(self.rand, "RDRAND executed on a CPU without it");
            self.rand_calls += 1;
            (self.rand_calls <= self.rand_words).then_some(0x4a4d_0000 + self.rand_calls as u64)
        }
    }

    #[test]
    fn rdseed_is_preferred_when_present() {
        let mut cpu = Fake::new(true, true);
        let (src, hw) = collect_hw(&mut cpu);
        assert_eq!(src, Source::Rdseed);
        assert_eq!(hw, core::array::from_fn(|i| 0x5eed_0001 + i as u64));
        assert_eq!(cpu.rand_calls, 0, "RDRAND used although RDSEED delivered");
    }

    #[test]
    fn rdrand_is_used_without_rdseed() {
        let mut cpu = Fake::new(false, true);
        let (src, hw) = collect_hw(&mut cpu);
        assert_eq!(src, Source::Rdrand);
        assert_eq!(hw, core::array::from_fn(|i| 0x4a4d_0001 + i as u64));
        // RDSEED present but failing part-way: the whole sample comes from RDRAND.
        let mut cpu = Fake { seed_words: 5, ..Fake::new(true, true) };
        let (src, hw) = collect_hw(&mut cpu);
        assert_eq!(src, Source::Rdrand);
        assert!(hw.iter().all(|w| w >> 16 == 0x4a4d), "{hw:x?}");
    }

    #[test]
    fn neither_instruction_gives_no_hardware_words() {
        let (src, hw) = collect_hw(&mut Fake::new(false, false));
        assert_eq!((src, hw), (Source::None, [0; 8]));
        // Both present but both failing (a broken part): no source, and no partial words.
        let (src, hw) = collect_hw(&mut Fake { seed_words: 3, rand_words: 7, ..Fake::new(true, true) });
        assert_eq!((src, hw), (Source::None, [0; 8]));
    }

    #[test]
    fn cpuid_bits() {
        assert_eq!(features(0x16, 1 << 30, 1 << 18), (true, true));
        assert_eq!(features(0x16, 1 << 30, 0), (false, true));
        assert_eq!(features(0x16, 0, 1 << 18), (true, false));
        // Leaf 7 beyond the maximum basic leaf: its EBX is meaningless.
        assert_eq!(features(6, 0, 1 << 18), (false, false));
        assert_eq!(features(0x16, !(1 << 30), !(1 << 18)), (false, false));
    }
}
