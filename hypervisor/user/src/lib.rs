//! Ring-3 runtime for Catenary user programs: `_start`, the syscall ABI wrappers, `mem*`.
//!
//! This is the user side of the syscall ABI (see docs/microkernel.md). The machine pieces
//! (`syscall`, `_start`, port I/O, raw memory access) live in `catenary-arch-user`; this crate
//! and the programs built on it contain no `unsafe`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

// The syscall numbers: one definition, shared by the kernel and the ring-3 runtime.
pub use catenary_ipc::syscall::*;

pub use catenary_ipc::LABEL_NOTIFY;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Msg {
    pub label: u64,
    pub words: [u64; 4],
    pub badge: u64,
    pub reply: u64,
    /// Kernel-set flags ([`MSG_FLAG_GRANT`]).
    pub flags: u64,
}

impl Msg {
    /// The memory grant this message brought, as the kernel mapped it: (address, writable,
    /// length). `None` for any message the kernel did not flag, whatever its words say.
    pub fn grant(&self) -> Option<(u64, bool, u64)> {
        (self.flags & MSG_FLAG_GRANT != 0).then(|| (self.words[2] & !1, self.words[2] & 1 != 0, self.words[3]))
    }
}

pub mod netsock_client;
pub mod netsock_server;
pub mod nic;
pub mod virtio_pci;

pub use catenary_arch_user::{copy_from, copy_to, dma, entry, hostile, inb, outb, rdtsc, read_u32, read_u64, set_ac, syscall6, write_u32, write_u64};

/// A syscall that returns a message in registers (recv, call).
fn syscall_msg(nr: u64, a0: u64, a1: u64, w: [u64; 4]) -> Result<Msg, u64> {
    let r = catenary_arch_user::syscall_msg(nr, a0, a1, w);
    if r.rax == 0 { Ok(Msg { label: r.label, words: r.words, badge: r.badge, reply: r.reply, flags: r.flags }) } else { Err(r.rax.wrapping_neg()) }
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
    syscall_msg(SYS_CALL, slot & 0xffff_ffff, label, w)
}
/// A call that fails with `Timeout` (code 5) after `timeout_ms` without an answer (0: no
/// timeout for a local call, 20 s for a call to another node).
pub fn call_timeout(slot: u64, label: u64, w: [u64; 4], timeout_ms: u32) -> Result<Msg, u64> {
    syscall_msg(SYS_CALL, (slot & 0xffff_ffff) | (timeout_ms as u64) << 32, label, w)
}
/// Call with a grant of [base, base+len) of this task's memory (read-only or read-write) to
/// the receiver, valid until it replies. The receiver finds the pages mapped at
/// `words[2] & !1` (bit 0: writable), `words[3]` bytes, and the kernel's grant flag set
/// ([`Msg::grant`]; words 2 and 3 of an unflagged message are data, never a grant).
pub fn call_grant(slot: u64, label: u64, w0: u64, w1: u64, base: u64, len: u64, writable: bool) -> Result<Msg, u64> {
    syscall_msg(SYS_CALL_GRANT, slot, label, [w0, w1, base | writable as u64, len])
}
/// The badge of a message from another node (or a microVM): [`sender`] names it.
pub use catenary_ipc::REMOTE_BADGE;
/// The fabric /128 the last received message came from, as the node's router authenticated
/// it (all zero: a message from this node).
pub fn sender() -> core::net::Ipv6Addr {
    let r = catenary_arch_user::syscall_msg(SYS_SENDER, 0, 0, [0; 4]);
    core::net::Ipv6Addr::from(((r.badge as u128) << 64) | r.label as u128)
}
/// Give the endpoint of capability `slot` (which must carry the bind right) a fabric /128 of
/// the node's /64, so other nodes can reach it.
pub fn bind_address(slot: u64) -> Result<core::net::Ipv6Addr, u64> {
    let r = catenary_arch_user::syscall_msg(SYS_BIND_ADDRESS, slot, 0, [0; 4]);
    if r.rax == 0 { Ok(core::net::Ipv6Addr::from(((r.badge as u128) << 64) | r.label as u128)) } else { Err(r.rax.wrapping_neg()) }
}
/// The memory grant that came with call `token` (received, not answered yet), as the kernel
/// mapped it: (address, writable, bytes). None if that call brought none.
pub fn grant_of(token: u64) -> Option<(u64, bool, u64)> {
    let r = catenary_arch_user::syscall_msg(SYS_GRANT_OF, token, 0, [0; 4]);
    (r.rax == 0).then_some((r.badge & !1, r.badge & 1 != 0, r.label))
}
pub fn reply(token: u64, label: u64, w: [u64; 4]) -> Result<(), u64> {
    let r = syscall6(SYS_REPLY, token, label, w[0], w[1], w[2], w[3]);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
/// `SYS_VM(slot, op, buf, len, arg)`: the workload service's VM control
/// (`catenary_workload::vmctl`); Ok(rax) or Err(code).
pub fn vm(slot: u64, op: u64, buf: u64, len: u64, arg: u64) -> Result<u64, u64> {
    let r = syscall6(SYS_VM, slot, op, buf, len, arg, 0);
    if r < 1 << 63 { Ok(r) } else { Err(r.wrapping_neg()) }
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
/// `SYS_LOG` of `len` bytes at any address (tests of the kernel's checks): Err(code) when
/// the kernel refuses the range.
pub fn log_at(addr: u64, len: u64) -> Result<(), u64> {
    let r = syscall6(SYS_LOG, addr, len, 0, 0, 0, 0);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
pub fn log(s: &str) {
    syscall6(SYS_LOG, s.as_ptr() as u64, s.len() as u64, 0, 0, 0, 0);
}
/// Read a byte of memory at an arbitrary address (used to show the kernel kills a task that
/// touches kernel memory).
pub fn peek(addr: u64) -> u8 {
    catenary_arch_user::read_u8(addr)
}

/// Small fixed-buffer formatter for log lines (as long as the kernel's `SYS_LOG` takes).
pub struct Line {
    buf: [u8; 200],
    len: usize,
}
impl Line {
    pub fn new() -> Line {
        Line { buf: [0; 200], len: 0 }
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
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => logf!("user panic at {}:{}", l.file(), l.line()),
        None => log("user panic"),
    }
    exit(0xbad)
}
