//! Kernel-side wrappers: kernel tasks use the same syscalls as ring 3.

use super::*;

pub fn sys(nr: u64, a: [u64; 6]) -> uspace::SysRet {
    uspace::ksyscall(nr, a)
}
pub fn sleep_ns(ns: u64) {
    sys(SYS_SLEEP, [ns, 0, 0, 0, 0, 0]);
}
pub fn yield_now() {
    sys(SYS_YIELD, [0; 6]);
}
pub(super) fn res(r: uspace::SysRet) -> Result<Message, IpcError> {
    if r.rax == 0 {
        let mut m = Message::new(r.rsi, [r.rdx, r.r10, r.r8, r.r9]);
        m.badge = r.rdi;
        m.reply = r.r12;
        if r.r13 & MSG_FLAG_GRANT != 0 {
            // a grant to a kernel task: its descriptor, as the kernel mapped it
            m.grant = Some(catenary_ipc::Grant { base: r.r8 & !1, len: r.r9, writable: r.r8 & 1 != 0 });
        }
        Ok(m)
    } else {
        Err(IpcError::from_code(r.rax.wrapping_neg()).unwrap_or(IpcError::NoEndpoint))
    }
}
pub fn send(slot: usize, m: Message) -> Result<(), IpcError> {
    res(sys(SYS_SEND, [slot as u64, m.label, m.words[0], m.words[1], m.words[2], m.words[3]])).map(|_| ())
}
pub fn recv(slot: usize, timeout_ns: u64) -> Result<Message, IpcError> {
    res(sys(SYS_RECV, [slot as u64, timeout_ns, 0, 0, 0, 0]))
}
pub(super) fn join_addr(hi: u64, lo: u64) -> [u8; 16] {
    (((hi as u128) << 64) | lo as u128).to_be_bytes()
}
/// Give the endpoint of capability `slot` (with the bind right) a fabric /128: the same
/// checked syscall ring-3 tasks use.
pub fn bind_address(slot: usize) -> Result<[u8; 16], IpcError> {
    let r = sys(SYS_BIND_ADDRESS, [slot as u64, 0, 0, 0, 0, 0]);
    if r.rax == 0 {
        Ok(join_addr(r.rdi, r.rsi))
    } else {
        Err(IpcError::from_code(r.rax.wrapping_neg()).unwrap_or(IpcError::NoEndpoint))
    }
}
/// The authenticated fabric /128 the last received message came from (zero: local).
#[cfg_attr(not(feature = "probes"), allow(dead_code))] // (the probes' services)
pub fn sender() -> [u8; 16] {
    let r = sys(SYS_SENDER, [0; 6]);
    join_addr(r.rdi, r.rsi)
}
pub fn call(slot: usize, m: Message) -> Result<Message, IpcError> {
    call_timeout(slot, m, 0)
}
/// A call that fails with `Timeout` after `timeout_ms` (0: the default; see `SYS_CALL`).
pub fn call_timeout(slot: usize, m: Message, timeout_ms: u32) -> Result<Message, IpcError> {
    let a = (slot as u64 & 0xffff_ffff) | (timeout_ms as u64) << 32;
    res(sys(SYS_CALL, [a, m.label, m.words[0], m.words[1], m.words[2], m.words[3]]))
}
/// Answer call `token` (kernel tasks serving calls).
pub fn reply(token: u64, m: Message) -> Result<(), IpcError> {
    res(sys(SYS_REPLY, [token, m.label, m.words[0], m.words[1], m.words[2], m.words[3]])).map(|_| ())
}
/// Wait for a task to end; returns its exit code (None on timeout).
pub fn join(id: TaskId, timeout_ns: u64) -> Option<u64> {
    let r = sys(SYS_JOIN, [id, timeout_ns, 0, 0, 0, 0]);
    if r.rax == err(IpcError::Timeout) { None } else { Some(r.rax) }
}

/// Narrow the calling task's affinity to `allowed` (intersected with what it has) and move it
/// off any CPU outside it: the task sleeps until it wakes on an allowed CPU (`wake` places a
/// task only on CPUs its affinity allows). Err when the intersection is empty.
pub fn restrict_current_affinity(allowed: catenary_sched::Affinity) -> Result<(), ()> {
    // `current_task` takes the kernel lock itself: ask for it outside `with` (inside, the
    // non-reentrant lock deadlocks the CPU, and with it the node).
    let me = current_task();
    let now = with(|k| k.sched.affinity(me)).unwrap_or(catenary_sched::Affinity::ANY);
    set_current_affinity(catenary_sched::Affinity(now.0 & allowed.0))
}

/// Set the calling task's affinity to `aff` and move it onto an allowed CPU (see
/// `restrict_current_affinity`). Err when `aff` allows no CPU.
pub fn set_current_affinity(aff: catenary_sched::Affinity) -> Result<(), ()> {
    if aff.0 == 0 {
        return Err(());
    }
    let me = current_task();
    let _ = with(|k| k.sched.set_affinity(me, aff));
    while !aff.allows(catenary_arch::percpu::cpu_index()) {
        sleep_ns(1);
    }
    Ok(())
}

/// Wake task `id` if it is in `sleep_ns` (a halted vCPU whose guest got an interrupt from
/// another vCPU); anything else about it is left alone.
pub fn wake_sleeping(id: TaskId) {
    with(|k| {
        if let Some(TaskState::Blocked(BlockReason::Sleep)) = k.sched.task(id).map(|t| t.state) {
            let _ = wake(k, id);
        }
    })
}

/// Interrupt CPU `cpu` (a reschedule IPI): a vCPU task in its guest there exits to the host.
pub fn kick_cpu(cpu: usize) {
    if cpu != catenary_arch::percpu::cpu_index() {
        if let Some(a) = smp::apic_id_of(cpu) {
            catenary_arch::apic::send_ipi(a, catenary_arch::apic::RESCHED_VECTOR);
        }
    }
}
