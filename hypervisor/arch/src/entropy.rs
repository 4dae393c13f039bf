//! A 256-bit seed for the kernel's CSPRNGs: RDRAND where the CPU has it, mixed with the TSC.
//! (QEMU TCG `-cpu max` and every recent x86 CPU have RDRAND; without it the seed is only
//! timing jitter, which is logged as a warning by the caller.)

use x86_64::instructions::random::RdRand;

/// (seed, whether RDRAND contributed).
pub fn seed() -> ([u8; 32], bool) {
    let mut out = [0u8; 32];
    let rd = RdRand::new();
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let t = crate::time::now_ns().rotate_left(17 * i as u32) ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
        let r = rd.and_then(|r| r.get_u64()).unwrap_or(0);
        chunk.copy_from_slice(&(t ^ r).to_le_bytes());
    }
    (out, rd.is_some())
}
