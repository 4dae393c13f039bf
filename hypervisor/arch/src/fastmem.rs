//! Zeroing and copying large blocks of guest RAM (2 MiB chunks on first touch, the loader's
//! kernel and initrd images) with an unrolled loop of 64-bit moves, 64 bytes per iteration.
//!
//! Why not `rep stosq` / `rep movsq` (what `memset`/`memcpy` compile to here): under QEMU TCG,
//! where every test and benchmark of this node runs, a REP string instruction executes one
//! element per pass through its translation block; zeroing one 2 MiB chunk took ~11 ms at load
//! 10 (`cargo xtask bench vm`, docs/vmm.md "Where the boot's time goes"), 15 chunks per Linux
//! boot. The unrolled loop does 8 stores per pass. On hardware both are memory-bound.
//! General-purpose registers only: the kernel does not save SSE state around its own code.

/// Bytes moved per loop iteration.
const STEP: usize = 64;

/// Write zeros to `len` bytes at `dst`.
///
/// # Safety
/// `dst..dst+len` must be valid for writes and not aliased by any Rust reference meanwhile.
pub unsafe fn zero(dst: *mut u8, len: usize) {
    let bulk = len - len % STEP;
    if bulk > 0 {
        // SAFETY: the caller's range; `bulk` is a non-zero multiple of STEP inside it.
        unsafe {
            core::arch::asm!(
                "2:",
                "mov qword ptr [{d}], {z}",
                "mov qword ptr [{d} + 8], {z}",
                "mov qword ptr [{d} + 16], {z}",
                "mov qword ptr [{d} + 24], {z}",
                "mov qword ptr [{d} + 32], {z}",
                "mov qword ptr [{d} + 40], {z}",
                "mov qword ptr [{d} + 48], {z}",
                "mov qword ptr [{d} + 56], {z}",
                "add {d}, 64",
                "sub {n}, 64",
                "jnz 2b",
                d = inout(reg) dst => _,
                n = inout(reg) bulk => _,
                z = in(reg) 0u64,
                options(nostack),
            );
        }
    }
    // SAFETY: the rest of the caller's range.
    unsafe { core::ptr::write_bytes(dst.add(bulk), 0, len - bulk) };
}

/// Copy `len` bytes from `src` to `dst` (the ranges must not overlap).
///
/// # Safety
/// As `core::ptr::copy_nonoverlapping`: `src` valid for reads, `dst` for writes, both for
/// `len` bytes, not overlapping.
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    let bulk = len - len % STEP;
    if bulk > 0 {
        // SAFETY: the caller's ranges; `bulk` is a non-zero multiple of STEP inside both.
        unsafe {
            core::arch::asm!(
                "2:",
                "mov {a}, qword ptr [{s}]",
                "mov {b}, qword ptr [{s} + 8]",
                "mov {c}, qword ptr [{s} + 16]",
                "mov {e}, qword ptr [{s} + 24]",
                "mov qword ptr [{d}], {a}",
                "mov qword ptr [{d} + 8], {b}",
                "mov qword ptr [{d} + 16], {c}",
                "mov qword ptr [{d} + 24], {e}",
                "mov {a}, qword ptr [{s} + 32]",
                "mov {b}, qword ptr [{s} + 40]",
                "mov {c}, qword ptr [{s} + 48]",
                "mov {e}, qword ptr [{s} + 56]",
                "mov qword ptr [{d} + 32], {a}",
                "mov qword ptr [{d} + 40], {b}",
                "mov qword ptr [{d} + 48], {c}",
                "mov qword ptr [{d} + 56], {e}",
                "add {s}, 64",
                "add {d}, 64",
                "sub {n}, 64",
                "jnz 2b",
                s = inout(reg) src => _,
                d = inout(reg) dst => _,
                n = inout(reg) bulk => _,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                e = out(reg) _,
                options(nostack),
            );
        }
    }
    // SAFETY: the rest of the caller's ranges.
    unsafe { core::ptr::copy_nonoverlapping(src.add(bulk), dst.add(bulk), len - bulk) };
}

/// `zero` and `copy` against `write_bytes` / `copy_nonoverlapping` on every length 0..=200 and
/// a few large ones, at every alignment 0..8 (ktest `fastmem_matches_the_plain_loops`). Returns
/// the first mismatch.
pub fn self_test() -> Result<(), alloc::string::String> {
    use alloc::vec;
    let n = 4096 + 3 * STEP + 16;
    let mut src = vec![0u8; n];
    for (i, b) in src.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761).wrapping_shr(13) as u8 | 1;
    }
    let lens = (0..=200).chain([255, 256, 257, 4095, 4096, 4096 + 3 * STEP]);
    for len in lens {
        for off in 0..8 {
            let mut a = vec![0xa5u8; n];
            let mut b = a.clone();
            // SAFETY: `off + len + 8 <= n` for every case above; a, b, src are distinct Vecs.
            unsafe {
                copy(a.as_mut_ptr().add(off), src.as_ptr().add(off ^ 3), len);
                core::ptr::copy_nonoverlapping(src.as_ptr().add(off ^ 3), b.as_mut_ptr().add(off), len);
            }
            if a != b {
                return Err(alloc::format!("copy of {len} bytes at offset {off} differs"));
            }
            // SAFETY: as above.
            unsafe {
                zero(a.as_mut_ptr().add(off), len);
                core::ptr::write_bytes(b.as_mut_ptr().add(off), 0, len);
            }
            if a != b {
                return Err(alloc::format!("zero of {len} bytes at offset {off} differs"));
            }
        }
    }
    Ok(())
}
