//! The syscall ABI as a safe API: every function here is sound for every argument. Registers
//! only (send, recv, call, reply, time, ...) cannot touch this task's memory; memory goes in
//! as `&[u8]` (the kernel only reads it), `&mut [u8]` (the kernel writes at most its length)
//! or a region (`crate::region`); mapped memory comes back as an owned region. The raw
//! `syscall` instruction ([`syscall6`], [`syscall_msg`]) is `unsafe`: with a wrong number or
//! address it unmaps or overwrites this task's own stack, heap or code.
//!
//! Soundness rests on the kernel's documented checks (docs/microkernel.md): user ranges are
//! validated, maps go only into unmapped pages below the grant window, copies out are bounded
//! by the length given.

use crate::region::{Grant, Mem};
use catenary_ipc::syscall::*;

/// `syscall` with six arguments (rdi, rsi, rdx, r10, r8, r9); returns rax.
///
/// # Safety
/// The syscall must not unmap, remap or let anyone write memory that holds a Rust object of
/// this program (its image, stack, heap, or memory a live reference points to): see the
/// typed wrappers in this module and `crate::hostile` for the cases that are sound.
#[inline(always)]
pub unsafe fn syscall6(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
    let r: u64;
    // SAFETY: the kernel's syscall ABI: rcx/r11 are clobbered, everything else but rax is
    // kept; what the syscall does to memory is the caller's contract.
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
    /// Kernel-set message flags (`MSG_FLAG_GRANT`).
    pub flags: u64,
}

/// `syscall` that returns a message in rdi, rsi, rdx, r10, r8, r9, r12 and flags in r13.
///
/// # Safety
/// As [`syscall6`] (arguments in rdi, rsi and the four words in rdx, r10, r8, r9).
#[inline(always)]
pub unsafe fn syscall_msg(nr: u64, a0: u64, a1: u64, w: [u64; 4]) -> MsgRegs {
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

/// A syscall's rax as a result: a negated error code is Err(code).
pub(crate) fn check(r: u64) -> Result<u64, u64> {
    if r < 1 << 63 { Ok(r) } else { Err(r.wrapping_neg()) }
}

fn unit(r: u64) -> Result<(), u64> {
    check(r).map(|_| ())
}

/// A syscall that passes registers only (no address the kernel follows).
fn regs(nr: u64, a: [u64; 6]) -> u64 {
    // SAFETY: callers pass only syscalls whose arguments are not memory (ids, slots, labels,
    // words, times): the kernel touches no memory of this task.
    unsafe { syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

fn msg(nr: u64, a0: u64, a1: u64, w: [u64; 4]) -> Result<Msg, u64> {
    // SAFETY: recv/call/sender/bind_address/grant_of: registers in, registers out (a grant a
    // received message brings is mapped into the grant window, never over Rust memory).
    let r = unsafe { syscall_msg(nr, a0, a1, w) };
    if r.rax == 0 { Ok(Msg { label: r.label, words: r.words, badge: r.badge, reply: r.reply, flags: r.flags }) } else { Err(r.rax.wrapping_neg()) }
}

/// A received message.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Msg {
    pub label: u64,
    pub words: [u64; 4],
    pub badge: u64,
    pub reply: u64,
    /// Kernel-set flags (`MSG_FLAG_GRANT`).
    pub flags: u64,
}

impl Msg {
    /// The memory grant this message brought, as the kernel mapped it. `None` for any message
    /// the kernel did not flag, whatever its words say.
    pub fn grant(&self) -> Option<Grant> {
        if self.flags & MSG_FLAG_GRANT == 0 {
            return None;
        }
        Grant::from_kernel(self.words[2], self.words[3])
    }
}

pub fn null() -> u64 {
    regs(SYS_NULL, [0; 6])
}
pub fn yield_now() {
    regs(SYS_YIELD, [0; 6]);
}
pub fn exit(code: u64) -> ! {
    regs(SYS_EXIT, [code, 0, 0, 0, 0, 0]);
    loop {
        core::hint::spin_loop();
    }
}
pub fn sleep_ns(ns: u64) {
    regs(SYS_SLEEP, [ns, 0, 0, 0, 0, 0]);
}
pub fn now_ns() -> u64 {
    regs(SYS_TIME, [0; 6])
}
/// A heartbeat (`SYS_ALIVE`): the next one is promised within `period_ms`, or the kernel
/// kills this task as hung. Err(code) for a period out of range.
pub fn alive(period_ms: u64) -> Result<(), u64> {
    let r = regs(SYS_ALIVE, [period_ms, 0, 0, 0, 0, 0]);
    if r == 0 { Ok(()) } else { Err(r.wrapping_neg()) }
}
/// Wait up to `timeout_ns` for task `task` to end; rax as the kernel gives it.
pub fn join(task: u64, timeout_ns: u64) -> u64 {
    regs(SYS_JOIN, [task, timeout_ns, 0, 0, 0, 0])
}
/// Send; Err(code) on failure (codes as `catenary_ipc::IpcError::code`).
pub fn send(slot: u64, label: u64, w: [u64; 4]) -> Result<(), u64> {
    unit(regs(SYS_SEND, [slot, label, w[0], w[1], w[2], w[3]]))
}
/// Receive on `slot`, blocking up to `timeout_ns` (0 = forever).
pub fn recv(slot: u64, timeout_ns: u64) -> Result<Msg, u64> {
    msg(SYS_RECV, slot, timeout_ns, [0; 4])
}
pub fn call(slot: u64, label: u64, w: [u64; 4]) -> Result<Msg, u64> {
    msg(SYS_CALL, slot & 0xffff_ffff, label, w)
}
/// Answer call `token` with `label` and `w`, then wait on `slot` for the next message (no
/// timeout), in one system call (the server loop's fastpath). Err(code) if the token is not a
/// call this task owes (nothing answered, nothing received: wait with [`recv`]) or the
/// receive failed.
pub fn reply_recv(token: u64, label: u64, w: [u64; 4], slot: u64) -> Result<Msg, u64> {
    let (r, badge, lbl, w0, w1, w2, w3, reply, flags): (u64, u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: registers in, registers out, as `syscall_msg` (plus the receive slot in r13): a
    // grant the received message brings is mapped into the grant window, never over Rust
    // memory.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") SYS_REPLY_RECV => r, inlateout("rdi") token => badge, inlateout("rsi") label => lbl,
            inlateout("rdx") w[0] => w0, inlateout("r10") w[1] => w1, inlateout("r8") w[2] => w2, inlateout("r9") w[3] => w3,
            inlateout("r12") 0u64 => reply, inlateout("r13") slot => flags, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    if r == 0 { Ok(Msg { label: lbl, words: [w0, w1, w2, w3], badge, reply, flags }) } else { Err(r.wrapping_neg()) }
}
/// A call that fails with `Timeout` (code 5) after `timeout_ms` without an answer (0: no
/// timeout for a local call, 20 s for a call to another node).
pub fn call_timeout(slot: u64, label: u64, w: [u64; 4], timeout_ms: u32) -> Result<Msg, u64> {
    msg(SYS_CALL, (slot & 0xffff_ffff) | (timeout_ms as u64) << 32, label, w)
}
/// Call with a grant of the first `len` bytes of `mem` (read-only or read-write) to the
/// receiver, valid until it replies. The receiver finds it with [`Msg::grant`].
pub fn call_grant(slot: u64, label: u64, w0: u64, w1: u64, mem: &Mem, len: u64, writable: bool) -> Result<Msg, u64> {
    call_grant_at(slot, label, w0, w1, mem, 0, len, writable)
}
/// [`call_grant`] of the `len` bytes at offset `off` of `mem` (the kernel lends whole pages).
/// Err(`ERR_BAD_ARG`) without a call when the range is not inside `mem` or `mem.addr() + off`
/// is not page-aligned (bit 0 of the address word is the writable flag: an odd address would
/// turn a read-only lend into a writable one).
#[allow(clippy::too_many_arguments)]
pub fn call_grant_at(slot: u64, label: u64, w0: u64, w1: u64, mem: &Mem, off: u64, len: u64, writable: bool) -> Result<Msg, u64> {
    if off.checked_add(len).is_none_or(|end| end > mem.len()) || !(mem.addr() + off).is_multiple_of(4096) {
        return Err(ERR_BAD_ARG);
    }
    // SAFETY: the lent range lies in a region (checked above), which holds no Rust object
    // (region::Mem's invariant): the receiver writing it changes no Rust value of this task.
    let r = unsafe { syscall_msg(SYS_CALL_GRANT, slot, label, [w0, w1, (mem.addr() + off) | writable as u64, len]) };
    if r.rax == 0 { Ok(Msg { label: r.label, words: r.words, badge: r.badge, reply: r.reply, flags: r.flags }) } else { Err(r.rax.wrapping_neg()) }
}
/// Lend `mem` (own RAM: fresh pages or DMA memory) writable to the owner of the endpoint of
/// `slot` until either dies (`SYS_SHARE`); returns where it is mapped in the receiver.
pub fn share(slot: u64, mem: &Mem) -> Result<u64, u64> {
    // SAFETY: as in `call_grant`: a region holds no Rust object, so the receiver's writes at
    // any time change no Rust value of this task.
    check(unsafe { syscall6(SYS_SHARE, slot, mem.addr(), mem.len(), 0, 0, 0) })
}
/// The badge of a message from another node (or a microVM): [`sender`] names it.
pub use catenary_ipc::REMOTE_BADGE;
/// The fabric /128 the last received message came from, as the node's router authenticated
/// it (all zero: a message from this node).
pub fn sender() -> core::net::Ipv6Addr {
    // SAFETY: registers only.
    let r = unsafe { syscall_msg(SYS_SENDER, 0, 0, [0; 4]) };
    core::net::Ipv6Addr::from(((r.badge as u128) << 64) | r.label as u128)
}
/// Give the endpoint of capability `slot` (which must carry the bind right) a fabric /128 of
/// the node's /64, so other nodes can reach it.
pub fn bind_address(slot: u64) -> Result<core::net::Ipv6Addr, u64> {
    // SAFETY: registers only.
    let r = unsafe { syscall_msg(SYS_BIND_ADDRESS, slot, 0, [0; 4]) };
    if r.rax == 0 { Ok(core::net::Ipv6Addr::from(((r.badge as u128) << 64) | r.label as u128)) } else { Err(r.rax.wrapping_neg()) }
}
/// The memory grant that came with call `token` (received, not answered yet), as the kernel
/// mapped it. None if that call brought none.
pub fn grant_of(token: u64) -> Option<Grant> {
    // SAFETY: registers only.
    let r = unsafe { syscall_msg(SYS_GRANT_OF, token, 0, [0; 4]) };
    if r.rax != 0 {
        return None;
    }
    Grant::from_kernel(r.badge, r.label)
}
pub fn reply(token: u64, label: u64, w: [u64; 4]) -> Result<(), u64> {
    unit(regs(SYS_REPLY, [token, label, w[0], w[1], w[2], w[3]]))
}
/// `SYS_VM(slot, op, buf, len, arg)` with a buffer the kernel reads or writes (at most
/// `buf.len()` bytes): the workload service's VM control (`catenary_workload::vmctl`).
pub fn vm(slot: u64, op: u64, buf: &mut [u8], arg: u64) -> Result<u64, u64> {
    // SAFETY: the kernel copies at most `buf.len()` bytes in or out of `buf`, which is ours
    // and exclusively borrowed for the call.
    check(unsafe { syscall6(SYS_VM, slot, op, buf.as_mut_ptr() as u64, buf.len() as u64, arg, 0) })
}
/// `SYS_VM(slot, op, -, value, arg)` for the ops whose `len` is a number (stop's grace time,
/// signal). The buffer address is in the kernel half: a buffer op given it fails.
pub fn vm_value(slot: u64, op: u64, value: u64, arg: u64) -> Result<u64, u64> {
    // SAFETY: the buffer address is not a user address: the kernel's range check refuses any
    // copy through it, so no memory of this task is touched.
    check(unsafe { syscall6(SYS_VM, slot, op, NO_BUFFER, value, arg, 0) })
}
/// An address the kernel never copies through (the kernel half).
const NO_BUFFER: u64 = 0xffff_8000_0000_0000;

/// `SYS_NET(slot, op, buf, len, arg)`, the router's calls (`catenary_ipc::netd`), with a
/// buffer the kernel reads or writes (at most `buf.len()` bytes). `OP_VM_RING`, which lends
/// pages for good, goes through [`net_vm_ring`]; an op this runtime does not know is refused.
pub fn net(slot: u64, op: u64, buf: &mut [u8], arg: u64) -> Result<u64, u64> {
    use catenary_ipc::netd::*;
    let copies = matches!(op, OP_BOOT | OP_UP | OP_TAKE | OP_DELIVER | OP_COMPLETE | OP_WAITING | OP_REAP | OP_LOOKUP | OP_VM_NEXT | OP_VM_KICK | OP_VM_DONE | OP_NIC_IRQS | OP_CALLER | OP_ALIVE);
    if !copies {
        return Err(ERR_BAD_ARG);
    }
    // SAFETY: these ops copy at most `buf.len()` bytes in or out of `buf` (ours, exclusively
    // borrowed) during the call and keep nothing.
    check(unsafe { syscall6(SYS_NET, slot, op, buf.as_mut_ptr() as u64, buf.len() as u64, arg, 0) })
}
/// `SYS_NET` `OP_VM_RING`: lend `ring` (fresh pages) to the kernel as link `link`'s frame ring.
pub fn net_vm_ring(slot: u64, ring: &Mem, link: u64) -> Result<u64, u64> {
    // SAFETY: a region holds no Rust object: the kernel writing it at any time changes no Rust
    // value of this task.
    check(unsafe { syscall6(SYS_NET, slot, catenary_ipc::netd::OP_VM_RING, ring.addr(), ring.len(), link, 0) })
}
/// Print `s` to the node's log (`SYS_LOG`; the kernel reads at most 200 bytes).
pub fn log(s: &str) {
    log_bytes(s.as_bytes());
}
pub fn log_bytes(s: &[u8]) {
    // SAFETY: the kernel only reads [s, s+len).
    unsafe { syscall6(SYS_LOG, s.as_ptr() as u64, s.len() as u64, 0, 0, 0, 0) };
}
