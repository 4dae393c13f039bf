//! Ring-3 misbehaviour for the syscall fuzzer (`sysfuzz`) and the kernel's argument tests:
//! raw syscalls with hostile arguments, syscalls entered with hostile flags or a hostile stack
//! pointer, wild memory accesses, and instructions that fault in ring 3. None of this can harm
//! the kernel (that is what the fuzzer checks); at worst it kills the calling task.
//!
//! Sound from safe code because every raw syscall goes through [`refused`]: a call that could
//! unmap this program's Rust memory (image, stack, heap and DMA windows) or let anyone write
//! its writable part (data, bss, stack, heap) is not made ([`REFUSED`]); everything else is
//! passed to the kernel unchanged — kernel-half, non-canonical, wrapping and huge ranges (the
//! kernel refuses a range that leaves the user half as a whole), unowned, MMIO and guard
//! pages, stale and foreign capabilities. Wild reads and writes likewise avoid Rust memory
//! (a write to the read-only image faults). Killing itself by unmapping its own code or stack
//! is [`unmap_then_exit`]: no Rust code runs after that unmap.

/// RFLAGS.TF (single step) and RFLAGS.AC (alignment check; with CR0.AM also SMAP's override
/// bit, which the kernel must clear on every entry).
pub const FLAG_TF: u64 = 1 << 8;
pub const FLAG_AC: u64 = 1 << 18;

use crate::layout::{rust_memory, RustMemory, PAGE, STACK, USER_END};
use catenary_ipc::syscall::*;

/// What a refused call returns (error code 0xfff, never a kernel code).
pub const REFUSED: u64 = 0xfffu64.wrapping_neg();

// Every syscall number up to SYS_REPLY_RECV is classified in `refused`; a new syscall must be too.
const _: () = assert!(SYS_REPLY_RECV == 22, "a new syscall: classify it in hostile::refused");

/// The pages [lo, hi) a syscall given [base, base + len) works on, if the whole range lies in
/// the user half; None when it overflows or leaves the user half (the kernel's `UserRange`
/// refuses such a range as a whole, before it touches anything).
fn user_pages(base: u64, len: u64) -> Option<(u64, u64)> {
    let end = base.checked_add(len)?;
    let hi = end.checked_add(PAGE - 1)? & !(PAGE - 1);
    (hi <= USER_END).then_some((base & !(PAGE - 1), hi))
}

/// Whether syscall `nr` with arguments `a` (rdi, rsi, rdx, r10, r8, r9) could unmap Rust
/// memory of this program or let anyone write its writable part.
pub fn refused(nr: u64, a: [u64; 6], rm: &RustMemory) -> bool {
    let writes = |base: u64, len: u64| user_pages(base, len).is_some_and(|(lo, hi)| rm.meets_writable(lo, hi));
    match nr {
        SYS_UNMAP => a[1].checked_mul(PAGE).and_then(|len| user_pages(a[0], len)).is_some_and(|(lo, hi)| rm.meets(lo, hi)),
        // a standing writable share of [base, base + len)
        SYS_SHARE => writes(a[1], a[2]),
        // words 2 and 3: base | writable, length
        SYS_CALL_GRANT => a[4] & 1 != 0 && writes(a[4] & !1, a[5]),
        // the kernel copies into [buf, buf + len) (or, OP_VM_RING, keeps writing it)
        SYS_NET | SYS_VM => writes(a[2], a[3]),
        // registers only, reads only (log), or maps into unmapped pages only
        SYS_NULL | SYS_YIELD | SYS_EXIT | SYS_SLEEP | SYS_TIME | SYS_SEND | SYS_RECV | SYS_CALL | SYS_REPLY | SYS_MAP | SYS_LOG | SYS_JOIN
        | SYS_MAP_MMIO | SYS_DMA_ALLOC | SYS_BIND_ADDRESS | SYS_SENDER | SYS_GRANT_OF | SYS_REPLY_RECV => false,
        // unknown numbers: the kernel refuses them
        _ => nr <= SYS_REPLY_RECV,
    }
}

/// The stack pointer, to check the layout this module relies on.
fn stack_pointer() -> u64 {
    let sp: u64;
    // SAFETY: reads rsp; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// Whether a raw syscall with these arguments may be made: not `refused`, and the stack is
/// where `layout` says (else nothing is trusted).
fn allowed(nr: u64, a: [u64; 6]) -> bool {
    (STACK.0..STACK.1).contains(&stack_pointer()) && !refused(nr, a, &rust_memory())
}

/// A raw syscall with hostile arguments; [`REFUSED`] if it could harm this program's Rust
/// memory (see the module doc).
pub fn syscall(nr: u64, a: [u64; 6]) -> u64 {
    if !allowed(nr, a) {
        return REFUSED;
    }
    // SAFETY: `refused` said no: the call unmaps no Rust memory and writes none.
    unsafe { crate::sys::syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// A raw message syscall (arguments in rdi, rsi, words in rdx, r10, r8, r9); its rax, or
/// [`REFUSED`].
pub fn syscall_msg(nr: u64, a0: u64, a1: u64, w: [u64; 4]) -> u64 {
    if !allowed(nr, [a0, a1, w[0], w[1], w[2], w[3]]) {
        return REFUSED;
    }
    // SAFETY: as in `syscall` (the same registers).
    unsafe { crate::sys::syscall_msg(nr, a0, a1, w).rax }
}

/// `SYS_LOG` of `len` bytes at any address (the kernel only reads; it must refuse what is not
/// this task's readable memory).
pub fn log_at(addr: u64, len: u64) -> Result<(), u64> {
    crate::sys::check(syscall(SYS_LOG, [addr, len, 0, 0, 0, 0])).map(|_| ())
}

/// Unmap [virt, virt + pages) — its own code or stack, say — and exit with `code` right
/// after, without running any Rust code in between (the exit follows whatever the unmap did).
pub fn unmap_then_exit(virt: u64, pages: u64, code: u64) -> ! {
    // SAFETY: after the unmap only the two instructions of the exit syscall run (registers
    // only, no stack or memory access); if the unmap took this code page, the fetch faults
    // and the task dies: either way no Rust code runs on the unmapped memory.
    unsafe {
        core::arch::asm!(
            "syscall",
            "mov eax, 2",
            "mov rdi, r12",
            "syscall",
            "ud2",
            in("rax") SYS_UNMAP, in("rdi") virt, in("rsi") pages, in("r12") code,
            options(noreturn, nostack),
        );
    }
}

/// A wild volatile read of 8 bytes at `addr` (kernel half, non-canonical, guard page, ...):
/// None (not made) if it meets Rust memory or is misaligned; a bad address kills this task.
pub fn read_u64(addr: u64) -> Option<u64> {
    if !addr.is_multiple_of(8) || rust_memory().meets(addr, addr.saturating_add(8)) {
        return None;
    }
    // SAFETY: aligned, and no Rust object lies there: the read changes nothing, races with no
    // Rust access, and faults (killing this task) if nothing is mapped.
    Some(unsafe { core::ptr::read_volatile(addr as *const u64) })
}
/// A wild volatile read of one byte (see [`read_u64`]).
pub fn read_u8(addr: u64) -> Option<u8> {
    if rust_memory().meets(addr, addr.saturating_add(1)) {
        return None;
    }
    // SAFETY: as in `read_u64`.
    Some(unsafe { core::ptr::read_volatile(addr as *const u8) })
}
/// A wild volatile write of 8 bytes at `addr`: false (not made) if it meets writable Rust
/// memory or is misaligned. Aimed at the read-only image it must fault (the kernel maps text
/// and rodata read-only).
pub fn write_u64(addr: u64, v: u64) -> bool {
    if !addr.is_multiple_of(8) || rust_memory().meets_writable(addr, addr.saturating_add(8)) {
        return false;
    }
    // SAFETY: aligned, and no writable Rust object lies there: the image is mapped read-only
    // (the write faults and kills this task), anything else holds no Rust object.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) };
    true
}

/// `syscall` entered with `flags` (TF and/or AC) set in RFLAGS; they are cleared again right
/// after it returns. With TF the CPU single-steps the `syscall` instruction itself, so a #DB
/// is due at its end: the kernel must cope with where that lands (and this task may be killed
/// by vector 1 on the way back). Arguments as [`syscall`] (r10, r8, r9 zero); [`REFUSED`]
/// likewise.
#[inline(never)]
pub fn syscall_with_flags(flags: u64, nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    if !allowed(nr, [a0, a1, a2, 0, 0, 0]) {
        return REFUSED;
    }
    let flags = flags & (FLAG_TF | FLAG_AC);
    let r: u64;
    // SAFETY: changes only this task's RFLAGS (TF/AC are user-settable) around a syscall with
    // the kernel's ABI (rcx/r11 clobbered) that `refused` allowed; a #DB or #AC that follows
    // kills only this task.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], {f}",
            "popfq",
            "syscall",
            "pushfq",
            "and qword ptr [rsp], {nf}",
            "popfq",
            f = in(reg) flags,
            nf = in(reg) !(FLAG_TF | FLAG_AC),
            inlateout("rax") nr => r, in("rdi") a0, in("rsi") a1, in("rdx") a2,
            in("r10") 0u64, in("r8") 0u64, in("r9") 0u64,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    r
}

/// `syscall` made with `rsp` set to `bad_rsp`: the kernel must never touch the user stack on
/// entry or exit. Only the non-blocking, argument-free calls (null, yield, time; anything else
/// is [`REFUSED`]), all arguments zero. The real stack pointer is kept in r13 meanwhile (the
/// kernel preserves it).
#[inline(never)]
pub fn syscall_with_rsp(bad_rsp: u64, nr: u64) -> u64 {
    if !matches!(nr, SYS_NULL | SYS_YIELD | SYS_TIME) {
        return REFUSED;
    }
    let r: u64;
    // SAFETY: nothing uses the stack between the two `mov rsp` (interrupts taken meanwhile
    // switch to the kernel stack from the TSS); the kernel preserves r13 across `syscall`;
    // null/yield/time with zero arguments touch no memory of this task.
    unsafe {
        core::arch::asm!(
            "mov r13, rsp",
            "mov rsp, {bad}",
            "syscall",
            "mov rsp, r13",
            bad = in(reg) bad_rsp,
            inlateout("rax") nr => r,
            in("rdi") 0u64, in("rsi") 0u64, in("rdx") 0u64, in("r10") 0u64, in("r8") 0u64, in("r9") 0u64,
            out("r13") _, lateout("rcx") _, lateout("r11") _,
        );
    }
    r
}

/// Ways to fault in ring 3. Each kills the calling task with the vector in brackets (if the
/// kernel is right); `SegLoad` may also succeed (a valid selector).
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// #UD (6)
    Ud2,
    /// #BP (3): the one software interrupt ring 3 may raise.
    Int3,
    /// #DB (1) through the ICEBP opcode, which ignores the gate's DPL.
    Icebp,
    /// `int n` for any vector: #GP (13) through a DPL-0 gate (3 and 4 are DPL 3).
    Int(u8),
    /// Privileged instructions: #GP (13).
    Hlt,
    Cli,
    Rdmsr,
    WriteCr3,
    /// Load `ds` with a selector (#GP for a bad one, nothing for 0 or a user selector).
    SegLoad(u16),
    /// An unmasked SSE exception: #XM (19).
    SimdDivZero,
    /// Single-step the next instruction: #DB (1).
    TrapFlag,
}

core::arch::global_asm!(
    ".section .text.sysfuzz_int, \"ax\"",
    ".balign 16",
    ".global catenary_int_table",
    "catenary_int_table:",
    ".set vec, 0",
    ".rept 256",
    "    .byte 0xcd, vec",
    "    ret",
    "    .balign 4, 0xcc",
    "    .set vec, vec + 1",
    ".endr",
);

extern "C" {
    fn catenary_int_table();
}

/// Execute `f`. Returns only if the instruction did not fault (a valid `SegLoad`).
pub fn fault(f: Fault) {
    // SAFETY (every block): ring-3 instructions whose only effect is an exception that kills
    // this task, or (a valid selector) a `ds` this task may use in 64-bit mode.
    unsafe {
        match f {
            Fault::Ud2 => core::arch::asm!("ud2"),
            Fault::Int3 => core::arch::asm!("int3"),
            Fault::Icebp => core::arch::asm!(".byte 0xf1"),
            Fault::Int(v) => {
                let stub = catenary_int_table as *const () as u64 + 4 * v as u64;
                core::arch::asm!("call {}", in(reg) stub, clobber_abi("C"));
            }
            Fault::Hlt => core::arch::asm!("hlt"),
            Fault::Cli => core::arch::asm!("cli"),
            Fault::Rdmsr => core::arch::asm!("rdmsr", in("ecx") 0xc000_0080u32, out("eax") _, out("edx") _),
            Fault::WriteCr3 => core::arch::asm!("mov cr3, {}", in(reg) 0u64),
            Fault::SegLoad(sel) => core::arch::asm!("mov ds, {0:x}", "mov {0:x}, ss", "mov ds, {0:x}", inout(reg) sel as u64 => _),
            Fault::SimdDivZero => {
                let z = 0.0f32;
                core::arch::asm!(
                    "sub rsp, 8",
                    "stmxcsr [rsp]",
                    "and dword ptr [rsp], 0xfffffdff", // unmask divide-by-zero
                    "ldmxcsr [rsp]",
                    "add rsp, 8",
                    "movss xmm0, dword ptr [{one}]",
                    "divss xmm0, dword ptr [{z}]",
                    one = in(reg) &1.0f32, z = in(reg) &z, out("xmm0") _,
                );
            }
            Fault::TrapFlag => core::arch::asm!("pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "nop"),
        }
    }
}

/// Busy-loop `iterations` times with RFLAGS.AC set, so timer interrupts enter the kernel with
/// it (the kernel must `clac` on every entry, or SMAP is off in its handlers).
#[inline(never)]
pub fn spin_with_ac(iterations: u64) {
    // SAFETY: sets and clears this task's AC flag around a register-only loop (no memory
    // access, so no alignment check can fire).
    unsafe {
        core::arch::asm!(
            "pushfq",
            "or qword ptr [rsp], {ac}",
            "popfq",
            "2:",
            "dec {n}",
            "jnz 2b",
            "pushfq",
            "and qword ptr [rsp], {nac}",
            "popfq",
            ac = in(reg) FLAG_AC,
            nac = in(reg) !FLAG_AC,
            n = inout(reg) iterations.max(1) => _,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{HEAP_VA, IMAGE_BASE};

    fn rm() -> RustMemory {
        rust_memory()
    }

    #[test]
    fn unmap_of_rust_memory_is_refused() {
        let rm = rm();
        let data = rm.image.1;
        for (virt, pages) in [(IMAGE_BASE, 1), (data, 1), (IMAGE_BASE - PAGE, 2), (STACK.0, 1), (STACK.1 - PAGE, 1), (HEAP_VA, 4), (0, 0x500)] {
            assert!(refused(SYS_UNMAP, [virt, pages, 0, 0, 0, 0], &rm), "{virt:#x} {pages}");
        }
    }

    #[test]
    fn hostile_ranges_still_reach_the_kernel() {
        let rm = rm();
        // kernel half, non-canonical, crossing the end of the user half, wrapping, huge counts
        for (virt, pages) in [(0xffff_ffff_8020_0000, 1), (0x0000_8000_0000_0000, 1), (0xffff_8000_0000_0000, 1), (0x7fff_ffff_f000, u64::MAX), (STACK.0, 1 << 40), (0x1000_0000, 8), (STACK.0 - PAGE, 1), (0x6000_0000_0000, 64)] {
            assert!(!refused(SYS_UNMAP, [virt, pages, 0, 0, 0, 0], &rm), "{virt:#x} {pages}");
        }
        for nr in [SYS_MAP, SYS_MAP_MMIO, SYS_DMA_ALLOC, SYS_LOG] {
            assert!(!refused(nr, [IMAGE_BASE, 1, 0, 0, 0, 0], &rm), "{nr} over the image goes to the kernel");
        }
        // a read-only grant of the stack: the receiver only reads
        assert!(!refused(SYS_CALL_GRANT, [1, 0, 0, 0, STACK.0, PAGE], &rm));
        // a writable grant of the text: the kernel must refuse (read-only pages)
        assert!(!refused(SYS_CALL_GRANT, [1, 0, 0, 0, IMAGE_BASE | 1, PAGE], &rm));
        assert!(!refused(99, [rm.image.1; 6], &rm), "unknown numbers");
        assert!(!refused(SYS_UNMAP, [IMAGE_BASE + 0x5000, 0, 0, 0, 0, 0], &rm), "no pages: nothing unmapped");
    }

    #[test]
    fn kernel_writes_into_rust_memory_are_refused() {
        let rm = rm();
        let data = rm.image.1;
        assert!(refused(SYS_CALL_GRANT, [1, 0, 0, 0, STACK.0 | 1, PAGE], &rm));
        assert!(refused(SYS_CALL_GRANT, [1, 0, 0, 0, (data - 8) | 1, 16], &rm), "a range that reaches into data");
        assert!(refused(SYS_SHARE, [1, HEAP_VA, PAGE, 0, 0, 0], &rm));
        assert!(refused(SYS_NET, [0, 3, STACK.1 - 64, 128, 0, 0], &rm));
        assert!(refused(SYS_VM, [0, 1, data, 64, 0, 0], &rm));
        assert!(!refused(SYS_VM, [0, 1, 0xffff_8000_0000_0000, 64, 0, 0], &rm));
        assert!(!refused(SYS_NET, [0, 3, 0x1000_0000, 128, 0, 0], &rm));
    }

    #[test]
    fn every_known_syscall_is_classified() {
        // no known number falls through to the catch-all refusal
        let rm = rm();
        for nr in 0..=SYS_REPLY_RECV {
            assert!(!refused(nr, [0; 6], &rm), "{nr}");
        }
    }
}
