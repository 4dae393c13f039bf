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
#![cfg_attr(not(test), no_std)]

#[cfg(not(test))]
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

/// `syscall` with six arguments; returns rax.
#[inline(always)]
pub fn syscall6(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    let r: u64;
    // SAFETY: the kernel's syscall ABI: rcx/r11 are clobbered, everything else but rax is kept.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr => r, in("rdi") a0, in("rsi") a1, in("rdx") a2,
            in("r10") a3, in("r8") a4, in("r9") a5, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// Registers a message-returning syscall (recv, call) gives back.
#[derive(Clone, Copy, Default, Debug)]
pub struct MsgRegs {
    pub rax: u64,
    pub badge: u64,
    pub label: u64,
    pub words: [u64; 4],
    pub reply: u64,
    /// Kernel-set message flags (`catenary_ipc::syscall::MSG_FLAG_GRANT`).
    pub flags: u64,
}

/// `syscall` that returns a message in rdi, rsi, rdx, r10, r8, r9, r12 and flags in r13.
#[inline(always)]
pub fn syscall_msg(nr: u64, a0: u64, a1: u64, w: [u64; 4]) -> MsgRegs {
    let (r, badge, label, w0, w1, w2, w3, reply, flags): (u64, u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: as in `syscall6`; the kernel returns the message in rdi, rsi, rdx, r10, r8, r9,
    // r12 and r13.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr => r, inlateout("rdi") a0 => badge, inlateout("rsi") a1 => label,
            inlateout("rdx") w[0] => w0, inlateout("r10") w[1] => w1, inlateout("r8") w[2] => w2, inlateout("r9") w[3] => w3,
            inlateout("r12") 0u64 => reply, inlateout("r13") 0u64 => flags, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    MsgRegs { rax: r, badge, label, words: [w0, w1, w2, w3], reply, flags }
}

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

/// Raw reads and writes of this task's memory (volatile: MMIO and shared grants). A bad
/// address faults and the kernel kills the task; nothing else can go wrong in ring 3.
pub fn read_u8(addr: u64) -> u8 {
    // SAFETY: ring-3 access checked by the kernel's page tables; a bad address kills this task.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}
pub fn read_u32(addr: u64) -> u32 {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
pub fn write_u32(addr: u64, v: u32) {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}
pub fn write_u64(addr: u64, v: u64) {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
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

pub fn read_u16(addr: u64) -> u16 {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}
pub fn write_u16(addr: u64, v: u16) {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
pub fn write_u8(addr: u64, v: u8) {
    // SAFETY: as in `read_u8`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

/// Copy `buf.len()` bytes from this task's memory at `addr` (shared memory: ring slots).
pub fn copy_from(addr: u64, buf: &mut [u8]) {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    // SAFETY: ring-3 access checked by the page tables (a bad address kills this task); the
    // source may change concurrently (memory shared with the kernel), which only changes data.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) }
}
/// Copy `data` into this task's memory at `addr` (shared memory: ring slots).
pub fn copy_to(addr: u64, data: &[u8]) {
    // SAFETY: as in `copy_from`.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
}

pub mod dma;
pub mod hostile;
pub mod layout;
pub mod region;
pub mod sys;
