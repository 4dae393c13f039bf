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

fn has_rdseed() -> bool {
    crate::cpu::cpuid(0, 0).0 >= 7 && crate::cpu::cpuid(7, 0).1 & (1 << 18) != 0
}

fn has_rdrand() -> bool {
    crate::cpu::cpuid(1, 0).2 & (1 << 30) != 0
}

fn rdseed() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..RETRIES {
        // SAFETY: only called after CPUID.(EAX=7,ECX=0):EBX[18] reported RDSEED, so the
        // instruction exists; it writes only `v`.
        if unsafe { _rdseed64_step(&mut v) } == 1 {
            return Some(v);
        }
        core::hint::spin_loop();
    }
    None
}

fn rdrand() -> Option<u64> {
    let mut v = 0u64;
    for _ in 0..RETRIES {
        // SAFETY: only called after CPUID.01H:ECX[30] reported RDRAND, so the instruction
        // exists; it writes only `v`.
        if unsafe { _rdrand64_step(&mut v) } == 1 {
            return Some(v);
        }
    }
    None
}

/// Collect raw material: 512 bits from RDSEED (falling back to RDRAND word by word is not
/// done: one source for the whole sample, so `source` says what it is) and TSC jitter.
pub fn sample() -> Sample {
    let mut s = Sample { hw: [0; 8], source: Source::None, jitter: [0; 32] };
    let fill = |f: fn() -> Option<u64>, hw: &mut [u64; 8]| hw.iter_mut().all(|w| f().map(|v| *w = v).is_some());
    if has_rdseed() && fill(rdseed, &mut s.hw) {
        s.source = Source::Rdseed;
    } else if has_rdrand() && fill(rdrand, &mut s.hw) {
        s.source = Source::Rdrand;
    } else {
        s.hw = [0; 8];
    }
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
