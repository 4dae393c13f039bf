//! The machine side of Catenary's ring-3 runtime and its only `unsafe` code: the `_start`
//! entry and `mem*` routines, the `syscall` instruction, port I/O, and the safe API the
//! programs use instead of raw addresses:
//! - [`sys`]: the typed syscalls, sound for every argument (memory goes in as slices or
//!   regions; the raw `syscall` is `unsafe`);
//! - [`region`]: owned mapped memory ([`region::Pages`], [`region::Mmio`],
//!   [`region::DmaRegion`], [`region::Grant`]) with bounds-checked volatile access;
//! - [`dma`]: the heap and the `virtio-drivers` HAL of a ring-3 driver;
//! - [`hostile`]: hostile syscalls and faults for the fuzzer, filtered so that they cannot
//!   corrupt this program's own memory.
//!
//! Everything here runs in ring 3 and cannot harm the kernel (its page tables, TSS I/O bitmap
//! and syscall checks decide). `catenary-user` and the programs forbid `unsafe`; what this
//! crate exports as safe must keep `forbid(unsafe_code)` there meaningful (docs/microkernel.md,
//! "Soundness of the arch crates").
//!
//! What safe code cannot do (each a `compile_fail` doctest, `cargo test -p catenary-arch-user
//! --doc`): call the raw syscall,
//! ```compile_fail
//! #![forbid(unsafe_code)]
//! // SYS_UNMAP of its own text
//! catenary_arch_user::sys::syscall6(10, 0x40_0000, 1, 0, 0, 0, 0);
//! ```
//! make a region out of an address,
//! ```compile_fail
//! #![forbid(unsafe_code)]
//! let _ = catenary_arch_user::region::Mem { base: 0x40_0000, len: 4096 };
//! ```
//! ```compile_fail
//! #![forbid(unsafe_code)]
//! let _ = catenary_arch_user::region::Mem::new(0x40_0000, 4096);
//! ```
//! keep using a region after unmapping it,
//! ```compile_fail
//! #![forbid(unsafe_code)]
//! fn f(p: catenary_arch_user::region::Pages) {
//!     let _ = p.unmap();
//!     p.write_u64(0, 1);
//! }
//! ```
//! or lend memory that is not a region (its heap or stack).
//! ```compile_fail
//! #![forbid(unsafe_code)]
//! let buf = [0u8; 4096];
//! let _ = catenary_arch_user::sys::call_grant(1, 0, 0, 0, &buf, 4096, true);
//! ```
#![cfg_attr(not(test), no_std)]

extern crate alloc;

#[cfg(feature = "runtime")]
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    xor ebp, ebp",
    "    call user_main",
    "    mov rdi, rax",
    "    mov eax, 2",
    "    syscall",
    "    ud2",
    ".section .text.mem, \"ax\"",
    ".global memcpy", "memcpy:", "  mov rax, rdi", "  mov rcx, rdx", "  rep movsb", "  ret",
    ".global memset", "memset:", "  mov rax, rdi", "  mov ecx, esi", "  xchg eax, ecx", "  mov rcx, rdx", "  mov r8, rdi", "  rep stosb", "  mov rax, r8", "  ret",
    ".global memmove", "memmove:", "  mov rax, rdi", "  mov rcx, rdx", "  cmp rdi, rsi", "  jbe 1f",
    "  lea rsi, [rsi + rdx - 1]", "  lea rdi, [rdi + rdx - 1]", "  std", "  rep movsb", "  cld", "  ret", "1: rep movsb", "  ret",
    ".global memcmp", ".global bcmp", "memcmp:", "bcmp:", "  xor eax, eax", "  test rdx, rdx", "  jz 3f",
    "2: movzx eax, byte ptr [rdi]", "  movzx ecx, byte ptr [rsi]", "  sub eax, ecx", "  jnz 3f", "  inc rdi", "  inc rsi", "  dec rdx", "  jnz 2b",
    "3: ret",
    ".global rust_eh_personality", "rust_eh_personality:", "  ret",
    // the precompiled `alloc` names it on unwind paths that panic=abort never takes
    ".global _Unwind_Resume", "_Unwind_Resume:", "  ud2",
);

/// Set or clear EFLAGS.AC in ring 3 (tests: the kernel must not run with a task's AC).
pub fn set_ac(on: bool) {
    // SAFETY: AC is a ring-3-writable flag; with CR0.AM clear it changes nothing for this task,
    // and the kernel clears it on every entry.
    unsafe {
        if on {
            core::arch::asm!("pushfq", "or qword ptr [rsp], 0x40000", "popfq");
        } else {
            core::arch::asm!("pushfq", "and qword ptr [rsp], ~0x40000", "popfq");
        }
    }
}

/// Spin `iters` turns holding `pattern` in rcx and `!pattern` in r11, checking both on every
/// turn; returns the turns on which either had changed. Every return to ring 3 but the one
/// from this task's own `syscall` (whose ABI clobbers rcx and r11, so `sysret` may) must
/// give a preempted task all its registers back: a test of the kernel's `sysret` choice.
pub fn regs_hold(pattern: u64, iters: u64) -> u64 {
    let bad: u64;
    // SAFETY: registers only (rcx and r11 declared clobbered, the others are asm operands);
    // no memory, no stack.
    unsafe {
        core::arch::asm!(
            "mov rcx, {p}",
            "mov r11, {p}",
            "not r11",
            "2:",
            "cmp rcx, {p}",
            "jne 3f",
            "mov {t}, r11",
            "not {t}",
            "cmp {t}, {p}",
            "je 4f",
            "3:",
            "inc {bad}",
            "mov rcx, {p}",
            "mov r11, {p}",
            "not r11",
            "4:",
            "dec {n}",
            "jnz 2b",
            p = in(reg) pattern,
            n = inout(reg) iters.max(1) => _,
            bad = inout(reg) 0u64 => bad,
            t = out(reg) _,
            out("rcx") _,
            out("r11") _,
            options(nostack, nomem),
        );
    }
    bad
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed in ring 3 (CR4.TSD clear) and has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Port I/O: faults (#GP → the task is killed) unless the kernel granted the port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: only affects the device behind `port`, which the kernel checks via the TSS bitmap.
    unsafe { core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nostack, nomem)) };
    v
}
pub fn outb(port: u16, v: u8) {
    // SAFETY: as in `inb`.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nostack, nomem)) };
}

/// Declare a program's entry point: `_start` calls `user_main(arg)` (the start argument from
/// the kernel) and exits with its result. The exported symbol is generated here, so the
/// program crates can `forbid(unsafe_code)`.
#[macro_export]
macro_rules! entry {
    ($f:path) => {
        #[no_mangle]
        pub extern "C" fn user_main(arg: u64) -> u64 {
            $f(arg)
        }
    };
}

pub mod dma;
pub mod fpu;
pub mod hostile;
pub mod layout;
pub mod region;
pub mod sys;
pub mod virtio_net;
