//! Ring-3 runtime for Catenary user programs: the syscall API, log lines, the panic handler.
//!
//! This is the user side of the syscall ABI (see docs/microkernel.md). The machine pieces
//! (`syscall`, `_start`, port I/O, the typed syscalls and owned memory regions) live in
//! `catenary-arch-user`, whose safe API is sound for every argument; this crate and the
//! programs built on it contain no `unsafe`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

// The syscall numbers: one definition, shared by the kernel and the ring-3 runtime.
pub use catenary_ipc::syscall::*;

pub use catenary_ipc::LABEL_NOTIFY;

pub mod echo;
pub mod netsock_client;
pub mod netsock_server;
pub mod nic;
pub mod virtio_pci;

// The syscall ABI, mapped memory and the machine pieces: safe for every argument, from
// `catenary-arch-user` (the only crate of the user programs with `unsafe`).
pub use catenary_arch_user::region::{DmaRegion, Grant, Mem, Mmio, Pages};
pub use catenary_arch_user::sys::{
    alive, bind_address, call, call_grant, call_grant_at, call_timeout, exit, grant_of, join, log, log_bytes, net, net_vm_ring, now_ns, null, recv, reply_recv, reply, send, sender,
    share, sleep_ns, vm, vm_value, yield_now, Msg, REMOTE_BADGE,
};
pub use catenary_arch_user::{dma, entry, fpu, hostile, inb, outb, rdtsc, regs_hold, set_ac, virtio_net};

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
