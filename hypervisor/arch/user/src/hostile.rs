//! Ring-3 misbehaviour for the syscall fuzzer (`sysfuzz`): syscalls entered with hostile
//! flags or a hostile stack pointer, and instructions that fault in ring 3. None of this can
//! harm the kernel (that is what the fuzzer checks); at worst it kills the calling task.

/// RFLAGS.TF (single step) and RFLAGS.AC (alignment check; with CR0.AM also SMAP's override
/// bit, which the kernel must clear on every entry).
pub const FLAG_TF: u64 = 1 << 8;
pub const FLAG_AC: u64 = 1 << 18;

/// `syscall` entered with `flags` (TF and/or AC) set in RFLAGS; they are cleared again right
/// after it returns. With TF the CPU single-steps the `syscall` instruction itself, so a #DB
/// is due at its end: the kernel must cope with where that lands (and this task may be killed
/// by vector 1 on the way back).
#[inline(never)]
pub fn syscall_with_flags(flags: u64, nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    let flags = flags & (FLAG_TF | FLAG_AC);
    let r: u64;
    // SAFETY: changes only this task's RFLAGS (TF/AC are user-settable) around a syscall with
    // the kernel's ABI (rcx/r11 clobbered); a #DB or #AC that follows kills only this task.
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
            lateout("rcx") _, lateout("r11") _,
        );
    }
    r
}

/// `syscall` (a non-blocking one: null, yield, time) made with `rsp` set to `bad_rsp`: the
/// kernel must never touch the user stack on entry or exit. The real stack pointer is kept
/// in r13 meanwhile (the kernel preserves it).
#[inline(never)]
pub fn syscall_with_rsp(bad_rsp: u64, nr: u64) -> u64 {
    let r: u64;
    // SAFETY: nothing uses the stack between the two `mov rsp` (interrupts taken meanwhile
    // switch to the kernel stack from the TSS); the kernel preserves r13 across `syscall`.
    unsafe {
        core::arch::asm!(
            "mov r13, rsp",
            "mov rsp, {bad}",
            "syscall",
            "mov rsp, r13",
            bad = in(reg) bad_rsp,
            inlateout("rax") nr => r,
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
