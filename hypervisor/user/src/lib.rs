//! Ring-3 runtime for Catenary user programs: `_start`, the syscall ABI wrappers, `mem*`.
//!
//! This is the user side of the syscall ABI (see docs/microkernel.md): the `syscall`
//! instruction and the entry point need inline assembly, which is why this crate, which runs
//! in ring 3 and cannot harm the kernel, has the only `unsafe` outside `catenary-arch`.
#![no_std]

pub const SYS_NULL: u64 = 0;
pub const SYS_YIELD: u64 = 1;
pub const SYS_EXIT: u64 = 2;
pub const SYS_SLEEP: u64 = 3;
pub const SYS_TIME: u64 = 4;
pub const SYS_SEND: u64 = 5;
pub const SYS_RECV: u64 = 6;
pub const SYS_CALL: u64 = 7;
pub const SYS_REPLY: u64 = 8;
pub const SYS_MAP: u64 = 9;
pub const SYS_UNMAP: u64 = 10;
pub const SYS_LOG: u64 = 11;
pub const SYS_JOIN: u64 = 12;
pub const SYS_CALL_GRANT: u64 = 13;
pub const SYS_MAP_MMIO: u64 = 14;
pub const SYS_DMA_ALLOC: u64 = 15;

pub const LABEL_NOTIFY: u64 = 0xffff_ffff_ffff_0001;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Msg {
    pub label: u64,
    pub words: [u64; 4],
    pub badge: u64,
    pub reply: u64,
}

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
);

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

/// A syscall that returns a message in registers (recv, call).
#[inline(always)]
fn syscall_msg(nr: u64, a0: u64, a1: u64, w: [u64; 4]) -> Result<Msg, u64> {
    let (r, badge, label, w0, w1, w2, w3, reply): (u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: as in `syscall6`; the kernel returns the message in rdi, rsi, rdx, r10, r8, r9, r12.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr => r, inlateout("rdi") a0 => badge, inlateout("rsi") a1 => label,
            inlateout("rdx") w[0] => w0, inlateout("r10") w[1] => w1, inlateout("r8") w[2] => w2, inlateout("r9") w[3] => w3,
            inlateout("r12") 0u64 => reply, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if r == 0 { Ok(Msg { label, words: [w0, w1, w2, w3], badge, reply }) } else { Err(r.wrapping_neg()) }
}

pub fn null() -> u64 {
    syscall6(SYS_NULL, 0, 0, 0, 0, 0, 0)
}
pub fn yield_now() {
    syscall6(SYS_YIELD, 0, 0, 0, 0, 0, 0);
}
pub fn exit(code: u64) -> ! {
    syscall6(SYS_EXIT, code, 0, 0, 0, 0, 0);
    loop {}
}
pub fn sleep_ns(ns: u64) {
    syscall6(SYS_SLEEP, ns, 0, 0, 0, 0, 0);
}
pub fn now_ns() -> u64 {
    syscall6(SYS_TIME, 0, 0, 0, 0, 0, 0)
}
/// Send; Err(code) on failure (codes as `catenary_ipc::IpcError::code`).
pub fn send(slot: u64, label: u64, w: [u64; 4]) -> Result<(), u64> {
    let r = syscall6(SYS_SEND, slot, label, w[0], w[1], w[2], w[3]);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
/// Receive on `slot`, blocking up to `timeout_ns` (0 = forever).
pub fn recv(slot: u64, timeout_ns: u64) -> Result<Msg, u64> {
    syscall_msg(SYS_RECV, slot, timeout_ns, [0; 4])
}
pub fn call(slot: u64, label: u64, w: [u64; 4]) -> Result<Msg, u64> {
    syscall_msg(SYS_CALL, slot, label, w)
}
/// Call with a grant of [base, base+len) of this task's memory (read-only or read-write) to
/// the receiver, valid until it replies. The receiver finds the pages mapped at
/// `words[2] & !1` (bit 0: writable), `words[3]` bytes.
pub fn call_grant(slot: u64, label: u64, w0: u64, w1: u64, base: u64, len: u64, writable: bool) -> Result<Msg, u64> {
    syscall_msg(SYS_CALL_GRANT, slot, label, [w0, w1, base | writable as u64, len])
}
pub fn reply(token: u64, label: u64, w: [u64; 4]) -> Result<(), u64> {
    let r = syscall6(SYS_REPLY, token, label, w[0], w[1], w[2], w[3]);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
/// Map `pages` fresh zeroed pages at `virt`.
pub fn map(virt: u64, pages: u64) -> Result<(), u64> {
    let r = syscall6(SYS_MAP, virt, pages, 0, 0, 0, 0);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
pub fn unmap(virt: u64, pages: u64) -> Result<(), u64> {
    let r = syscall6(SYS_UNMAP, virt, pages, 0, 0, 0, 0);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
/// Map [phys, phys+len) of a granted MMIO range at `virt` (uncached).
pub fn map_mmio(virt: u64, phys: u64, len: u64) -> Result<(), u64> {
    let r = syscall6(SYS_MAP_MMIO, virt, phys, len, 0, 0, 0);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
/// Allocate `pages` physically contiguous pages for DMA at `virt`; returns their physical
/// address (for programming a device).
pub fn dma_alloc(virt: u64, pages: u64) -> Result<u64, u64> {
    let r = syscall6(SYS_DMA_ALLOC, virt, pages, 0, 0, 0, 0);
    if r < 1 << 63 { Ok(r) } else { Err(r.wrapping_neg()) }
}
pub fn log(s: &str) {
    syscall6(SYS_LOG, s.as_ptr() as u64, s.len() as u64, 0, 0, 0, 0);
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

/// Read a byte of memory at an arbitrary address (used to show the kernel kills a task that
/// touches kernel memory).
pub fn peek(addr: u64) -> u8 {
    // SAFETY: deliberately unchecked; a bad address faults and the kernel kills this task.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Read / write a 64-bit word of this task's memory (a bad address kills the task).
pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: ring-3 access; the kernel's page tables decide, a bad address faults this task.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}
pub fn write_u64(addr: u64, v: u64) {
    // SAFETY: as in `read_u64`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}
pub fn read_u32(addr: u64) -> u32 {
    // SAFETY: as in `read_u64`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
pub fn write_u32(addr: u64, v: u32) {
    // SAFETY: as in `read_u64`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Small fixed-buffer formatter for log lines.
pub struct Line {
    buf: [u8; 160],
    len: usize,
}
impl Line {
    pub fn new() -> Line {
        Line { buf: [0; 160], len: 0 }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}
impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}
impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[macro_export]
macro_rules! logf {
    ($($a:tt)*) => {{
        let mut l = $crate::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut l, format_args!($($a)*));
        $crate::log(l.as_str());
    }};
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    log("user panic");
    exit(0xbad)
}
