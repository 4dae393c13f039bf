//! Tasks, the scheduler glue and the system calls.
//!
//! Policy lives in `catenary-sched` (run queues, priorities, sleep queue) and `catenary-ipc`
//! (endpoints, capabilities, call/reply); this module keeps one of each behind a lock taken
//! with interrupts off, and does the machine side through `catenary-arch`: a task's context is
//! the `TrapFrame` + FXSAVE image saved at its last kernel entry, its address space and its I/O
//! bitmap. Every kernel entry (timer, IPI, `syscall`, `int 0x80`, a fault) may end with a
//! different task's frame restored: that is the context switch.
//!
//! System call ABI (rax = number; arguments rdi, rsi, rdx, r10, r8, r9; rax = 0 or -error):
//! 0 null, 1 yield, 2 exit(code), 3 sleep(ns), 4 time → ns, 5 send(slot, label, w0..w3),
//! 6 recv(slot, timeout_ns; 0 = forever), 7 call(slot, label, w0..w3), 8 reply(token, label,
//! w0..w3), 9 map(virt, pages), 10 unmap(virt, pages), 11 log(ptr, len), 12 join(task) → exit
//! code, 13 call_grant(slot, label, w0, w1, base | writable, len), 14 map_mmio(virt, phys,
//! len): map part of a granted MMIO range uncached, 15 dma_alloc(virt, pages) → physical
//! address of fresh contiguous zeroed frames mapped at virt (within the DMA quota), 16
//! bind_address(slot) → fabric /128 in rdi (high), rsi (low): the capability must carry the
//! BIND right and name an open local endpoint (how an endpoint becomes reachable from other
//! nodes), 17 sender() → the authenticated fabric /128 the last received message came from
//! (rdi, rsi; zero for a local message). A received message comes
//! back in rdi (badge), rsi (label), rdx, r10, r8, r9 (words) and r12 (reply token, non-zero
//! for a call).
//!
//! Memory grants: `call_grant` lends the pages [base, base+len) of the caller (pages it owns:
//! mapped by the kernel for it, not themselves granted; writable grants need writable pages)
//! to the receiver of the call, who finds them mapped in its grant window: words 2 and 3 of
//! the message are (address | writable, len). The mapping is removed when the receiver replies
//! (or replies too late), when the receiver dies (with its address space), and when the caller
//! dies (the pages then pass to the receiver's ownership until it exits, so nothing it might
//! still reach through a stale TLB entry is reused). The capability needs the GRANT right.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_arch::trap::TrapFrame;
use catenary_arch::uspace::{self, AddressSpace};
use catenary_arch::{apic, cpu, memory, paging, smp, time};
use catenary_ipc::{Address, CapTable, Capability, Delivery, EndpointId, IpcError, IpcSpace, Message, Rights, REMOTE};
use catenary_sched::{Affinity, BlockReason, Priority, Scheduler, TaskId, TaskState};
use log::{info, warn};
use spin::Mutex;

// The syscall numbers: one definition, shared by the kernel and the ring-3 runtime.
pub use catenary_ipc::syscall::*;

pub const RTC_VECTOR: u8 = 0x58;
/// The virtio-net receive interrupt (MSI-X, programmed by `net`).
pub const NIC_VECTOR: u8 = 0x59;
const USER_STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
const USER_STACK_PAGES: u64 = 32;
const ERR_BAD_ARG: u64 = 100;
/// Where granted pages appear in a receiver: 64 slots of `GRANT_MAX_PAGES` pages.
pub const GRANT_WINDOW: u64 = 0x0000_6000_0000_0000;
pub const GRANT_MAX_PAGES: u64 = 4096;
const GRANT_SLOTS: u64 = 64;

/// A grant travelling with call `token`.
struct GrantRec {
    sender: TaskId,
    /// The receiver and where the pages are mapped in it, once delivered.
    mapped: Option<(TaskId, u64)>,
    frames: Vec<u64>,
    writable: bool,
}
/// Exit code of a task killed by exception `v`.
pub const fn killed_by(v: u64) -> u64 {
    0xdead_0000 | v
}

pub static RTCD_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_RTCD"));
pub static UAPP_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_UAPP"));
pub static NICD_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_NICD"));

pub struct Ctx {
    frame: TrapFrame,
    fx: Box<[u8; uspace::FPU_AREA]>,
    space: Option<AddressSpace>,
    io: Option<Box<[u8; uspace::IO_BITMAP_BYTES]>>,
    pub caps: CapTable,
    frames: Vec<u64>,
    kentry: Option<(fn(u64), u64)>,
    /// Driver grants: physical MMIO ranges (base, len) it may map, DMA pages it may allocate.
    mmio: Vec<(u64, u64)>,
    dma_left: u64,
    /// The fabric /128 the last message this task received came from (`SYS_SENDER`).
    origin: [u8; 16],
}

impl Ctx {
    fn new(frame: TrapFrame) -> Ctx {
        Ctx { frame, fx: Box::new(uspace::default_fx()), space: None, io: None, caps: CapTable::new(64), frames: Vec::new(), kentry: None, mmio: Vec::new(), dma_left: 0, origin: [0; 16] }
    }
}

pub struct Kernel {
    pub sched: Scheduler<Ctx>,
    pub ipc: IpcSpace,
    idle_stack: Vec<u64>,
    on_idle: Vec<bool>,
    exit_codes: alloc::collections::BTreeMap<TaskId, u64>,
    rtc_endpoint: Option<EndpointId>,
    ticks: u64,
    grants: alloc::collections::BTreeMap<u64, GrantRec>,
    /// Device interrupt vectors delivered as IPC notifications: vector -> (endpoint, bits).
    irq_notify: alloc::collections::BTreeMap<u8, (EndpointId, u64)>,
    /// Fabric IPC (sends and calls to other nodes, handed to `netd`).
    remote: Remote,
}

/// Sends and calls that cross nodes. The kernel queues them for the router (`netd`, see
/// `net.rs`) and wakes it with a notification on its endpoint; `netd` carries them in fabric
/// frames and brings back the replies.
#[derive(Default)]
struct Remote {
    /// This node's fabric /128 and `netd`'s wake endpoint, once `netd` is up.
    node: Option<[u8; 16]>,
    wake: Option<EndpointId>,
    out: alloc::collections::VecDeque<RemoteOut>,
    /// Our calls in flight to other nodes: token -> the /128 that must answer.
    calls_out: alloc::collections::BTreeMap<u64, [u8; 16]>,
    /// Calls from other nodes in flight here: token -> where the answer goes.
    calls_in: alloc::collections::BTreeMap<u64, ReplyTo>,
    replies: alloc::collections::VecDeque<RemoteReply>,
    /// The fabric /128 bound to an endpoint a task owns (`SYS_BIND_ADDRESS`): its remote
    /// sends and calls go out from that /128, so the receiver learns which task sent them.
    bound: alloc::collections::BTreeMap<TaskId, [u8; 16]>,
}

/// A send (`token == 0`) or call to endpoint `endpoint` of the node or task /128 `dst`.
#[derive(Clone, Copy, Debug)]
pub struct RemoteOut {
    /// The sending task's bound /128 (None: the node's /128).
    pub src: Option<[u8; 16]>,
    pub dst: [u8; 16],
    pub endpoint: u64,
    pub msg: Message,
    pub token: u64,
}

/// Where the answer to a call from another node goes: `to` (the caller's node /128) from
/// `from` (the /128 the call was addressed to), naming the caller's `call_id`.
#[derive(Clone, Copy, Debug)]
pub struct ReplyTo {
    pub to: [u8; 16],
    pub from: [u8; 16],
    pub call_id: u64,
}

/// The answer (or failure) of a call from another node.
#[derive(Clone, Copy, Debug)]
pub struct RemoteReply {
    pub to: ReplyTo,
    pub result: Result<Message, IpcError>,
}

/// Badge of messages that came from another node.
pub const REMOTE_BADGE: u64 = catenary_ipc::REMOTE_BADGE;
/// A call to another node fails with `Timeout` after this long without an answer.
pub const REMOTE_CALL_TIMEOUT_NS: u64 = 20_000_000_000;
/// Remote sends and calls waiting for `netd`, at most (then `QueueFull`).
const REMOTE_QUEUE: usize = 64;
/// Calls from other nodes in flight here, at most.
const REMOTE_CALLS_IN: usize = 256;
/// The notification bit that wakes `netd` for fabric IPC.
pub const REMOTE_NOTIFY_BIT: u64 = 1 << 16;

static K: Mutex<Option<Kernel>> = Mutex::new(None);

pub fn with<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    cpu::without_interrupts(|| f(K.lock().as_mut().expect("scheduler not initialised")))
}

/// Create the scheduler for `cpus` CPUs and adopt the running boot context as task "main".
pub fn init(cpus: usize) {
    uspace::prefill_kernel_half().expect("kernel half");
    let mut k = Kernel {
        sched: Scheduler::new(cpus),
        ipc: IpcSpace::new(),
        idle_stack: Vec::new(),
        on_idle: alloc::vec![true; cpus],
        exit_codes: Default::default(),
        rtc_endpoint: None,
        ticks: 0,
        grants: Default::default(),
        irq_notify: Default::default(),
        remote: Remote::default(),
    };
    for _ in 0..cpus {
        k.idle_stack.push(paging::alloc_stack(4).expect("idle stack").1);
    }
    k.sched.set_online(0, true);
    k.sched.adopt_running(0, "main", Priority::NORMAL, Ctx::new(TrapFrame::default()));
    k.on_idle[0] = false;
    cpu::without_interrupts(|| *K.lock() = Some(k));
    catenary_arch::trap::register_irq(uspace::KSYSCALL_VECTOR, on_syscall);
    uspace::set_syscall_handler(on_syscall);
    apic::set_tick_hook(on_tick);
    catenary_arch::trap::register_irq(apic::RESCHED_VECTOR, on_resched);
    catenary_arch::trap::register_irq(RTC_VECTOR, on_rtc_irq);
    catenary_arch::trap::set_exception_hook(on_exception);
    smp::set_ap_entry(ap_entry);
}

fn ap_entry(cpu_idx: usize) -> ! {
    with(|k| k.sched.set_online(cpu_idx, true));
    info!(target: "smp", "cpu {} online (APIC id {}), scheduler running", cpu_idx, smp::apic_id_of(cpu_idx).unwrap_or(0));
    loop {
        cpu::wait_for_interrupt();
    }
}

// ---------------------------------------------------------------- switching

fn save(k: &mut Kernel, f: &mut TrapFrame, id: TaskId) {
    if let Some(t) = k.sched.task_mut(id) {
        t.context.frame = *f;
        t.context.fx.copy_from_slice(uspace::fx_area(f));
    }
}

fn load(k: &mut Kernel, f: &mut TrapFrame, id: TaskId) {
    let t = k.sched.task_mut(id).expect("picked task exists");
    *f = t.context.frame;
    uspace::fx_area(f).copy_from_slice(&t.context.fx[..]);
    uspace::switch_cr3(t.context.space.as_ref().map(|s| s.pml4()).unwrap_or_else(paging::kernel_pml4));
    uspace::set_io_bitmap(id, t.context.io.as_deref());
}

/// Pick the next task for this CPU and make `f` its frame.
fn resched(k: &mut Kernel, f: &mut TrapFrame) {
    let c = smp::cpu_index();
    let prev = if k.on_idle[c] { None } else { k.sched.current(c) };
    let next = k.sched.switch(c);
    if next == prev && prev.is_some() {
        return;
    }
    if let Some(p) = prev {
        save(k, f, p);
    }
    match next {
        Some(n) => {
            load(k, f, n);
            k.on_idle[c] = false;
        }
        None => {
            if !k.on_idle[c] {
                *f = uspace::idle_frame(k.idle_stack[c]);
                uspace::switch_cr3(paging::kernel_pml4());
                uspace::set_io_bitmap(0, None);
                k.on_idle[c] = true;
            }
        }
    }
    if let Some(p) = prev {
        if k.sched.task(p).map(|t| t.state == TaskState::Dead).unwrap_or(false) {
            if let Some(t) = k.sched.reap(p) {
                for fr in t.context.frames {
                    let _ = memory::free_frame(fr);
                }
                if let Some(s) = t.context.space {
                    s.destroy();
                }
            }
        }
    }
}

/// Wake `id`, sending a reschedule IPI to its CPU if it should run there now.
fn wake(k: &mut Kernel, id: TaskId) -> bool {
    match k.sched.wake(id) {
        Ok(w) => {
            let here = smp::cpu_index();
            if w.preempt && w.cpu != here {
                if let Some(a) = smp::apic_id_of(w.cpu) {
                    apic::send_ipi(a, apic::RESCHED_VECTOR);
                }
            }
            w.preempt && w.cpu == here
        }
        Err(_) => false,
    }
}

fn put_msg(f: &mut TrapFrame, m: &Message) {
    f.rax = 0;
    f.rdi = m.badge;
    f.rsi = m.label;
    f.rdx = m.words[0];
    f.r10 = m.words[1];
    f.r8 = m.words[2];
    f.r9 = m.words[3];
    f.r12 = m.reply;
}

fn err(e: IpcError) -> u64 {
    e.code().wrapping_neg()
}

/// Complete the blocking operation of task `id` with `m` (or an error) and wake it.
fn complete(k: &mut Kernel, id: TaskId, r: Result<Message, u64>) -> bool {
    if let Some(t) = k.sched.task_mut(id) {
        match r {
            Ok(m) => {
                put_msg(&mut t.context.frame, &m);
                t.context.origin = m.origin;
            }
            Err(code) => t.context.frame.rax = code,
        }
    }
    wake(k, id)
}

fn kill_current(k: &mut Kernel, f: &mut TrapFrame, code: u64) {
    let c = smp::cpu_index();
    let Some(me) = k.sched.current(c) else { return };
    let rep = k.ipc.task_died(me);
    grants_on_death(k, me);
    k.remote.bound.remove(&me);
    let _ = k.sched.kill(me);
    k.exit_codes.insert(me, code);
    for (w, e) in rep.wake_with_error {
        complete(k, w, Err(err(e)));
    }
    let joiners: Vec<TaskId> =
        k.sched.tasks().filter(|t| t.state == TaskState::Blocked(BlockReason::Join(me))).map(|t| t.id).collect();
    for j in joiners {
        if let Some(t) = k.sched.task_mut(j) {
            t.context.frame.rax = code;
        }
        wake(k, j);
    }
    resched(k, f);
}

// ---------------------------------------------------------------- interrupts

fn on_tick(f: &mut TrapFrame) {
    with(|k| {
        let c = smp::cpu_index();
        if c == 0 {
            k.ticks += 1;
            for id in k.sched.expire(time::now_ns()) {
                let reason = match k.sched.task(id).map(|t| t.state) {
                    Some(TaskState::Blocked(r)) => r,
                    _ => continue,
                };
                let code = match reason {
                    BlockReason::Sleep => 0,
                    BlockReason::Recv(ep) => {
                        k.ipc.cancel_wait(id, ep);
                        err(IpcError::Timeout)
                    }
                    BlockReason::Reply(tok) => {
                        k.ipc.cancel_call(tok);
                        k.remote.calls_out.remove(&tok);
                        err(IpcError::Timeout)
                    }
                    BlockReason::Join(_) => err(IpcError::Timeout),
                };
                complete(k, id, Err(code));
            }
            if k.ticks % 10 == 0 {
                k.sched.balance();
            }
        }
        let idle = k.on_idle[c];
        if k.sched.tick(c) || (idle && k.sched.queue_len(c) > 0) {
            resched(k, f);
        }
    })
}

fn on_resched(f: &mut TrapFrame) {
    with(|k| {
        let c = smp::cpu_index();
        if k.on_idle[c] || k.sched.should_preempt(c) {
            resched(k, f);
        }
    })
}

fn on_rtc_irq(f: &mut TrapFrame) {
    with(|k| {
        if let Some(ep) = k.rtc_endpoint {
            if let Ok(Some((who, m))) = k.ipc.notify(ep, 1 << 8) {
                if let Some(TaskState::Blocked(BlockReason::Recv(_))) = k.sched.task(who).map(|t| t.state) {
                    if complete(k, who, Ok(m)) {
                        resched(k, f);
                    }
                }
            }
        }
    })
}

const NO_IRQS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Interrupts taken per vector bound with [`bind_irq_notification`].
static IRQ_COUNT: [core::sync::atomic::AtomicU64; 256] = [NO_IRQS; 256];

/// Deliver interrupt `vector` as an IPC notification (`bits`) to endpoint `ep`, the mechanism
/// ring-3 drivers use (rtcd), open to kernel tasks too (`netd` waits for its NIC with `recv`).
/// A notification that arrives while nobody waits stays pending, so a `recv` after it returns
/// at once: no wakeup is lost between a driver's last poll and its wait.
pub fn bind_irq_notification(vector: u8, ep: EndpointId, bits: u64) {
    with(|k| k.irq_notify.insert(vector, (ep, bits)));
    catenary_arch::trap::register_irq(vector, on_bound_irq);
}

/// Whether the live task `id` owns the `pages` frames from `phys` (its DMA memory, say), so
/// that the kernel may use them as memory shared with it (they stay allocated while it lives).
pub fn owns_frames(id: TaskId, phys: u64, pages: u64) -> bool {
    with(|k| match k.sched.task(id) {
        Some(t) => (0..pages).all(|i| t.context.frames.contains(&(phys + i * 4096))),
        None => false,
    })
}

/// Run `f` under the kernel lock if the live task `id` owns every frame in `frames`: memory
/// shared with a ring-3 driver is used only while it is the driver's (it could exit or unmap
/// it, which frees the frames, but not while the lock is held).
pub fn with_owned_frames<R>(id: TaskId, frames: &[u64], f: impl FnOnce() -> R) -> Option<R> {
    with(|k| {
        let t = k.sched.task(id)?;
        if k.exit_codes.contains_key(&id) || !frames.iter().all(|p| t.context.frames.contains(p)) {
            return None;
        }
        Some(f())
    })
}

/// How many times `vector` (bound with [`bind_irq_notification`]) fired.
pub fn irq_count(vector: u8) -> u64 {
    IRQ_COUNT[vector as usize].load(core::sync::atomic::Ordering::Relaxed)
}

fn on_bound_irq(f: &mut TrapFrame) {
    let v = f.vector as u8;
    IRQ_COUNT[v as usize].fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    with(|k| {
        let Some(&(ep, bits)) = k.irq_notify.get(&v) else { return };
        if let Ok(Some((who, m))) = k.ipc.notify(ep, bits) {
            if let Some(TaskState::Blocked(BlockReason::Recv(_))) = k.sched.task(who).map(|t| t.state) {
                if complete(k, who, Ok(m)) {
                    resched(k, f);
                }
            }
        }
    })
}

fn on_exception(f: &mut TrapFrame) -> bool {
    if f.cs & 3 != 3 {
        return false; // a kernel fault: dump and stop, as before
    }
    let (id, name) = with(|k| {
        let id = k.sched.current(smp::cpu_index()).unwrap_or(0);
        (id, k.sched.task(id).map(|t| t.name.clone()).unwrap_or_default())
    });
    catenary_arch::trap::print_dump(f, &alloc::format!("in ring-3 task {} \"{}\" - killing the task", id, name));
    with(|k| kill_current(k, f, killed_by(f.vector)));
    true
}

// ---------------------------------------------------------------- system calls

fn on_syscall(f: &mut TrapFrame) {
    with(|k| syscall(k, f))
}

fn msg_from(f: &TrapFrame) -> Message {
    Message::new(f.rsi, [f.rdx, f.r10, f.r8, f.r9])
}

fn syscall(k: &mut Kernel, f: &mut TrapFrame) {
    let c = smp::cpu_index();
    let Some(me) = k.sched.current(c) else {
        f.rax = err(IpcError::NoEndpoint);
        return;
    };
    match f.rax {
        SYS_NULL => f.rax = 0,
        SYS_YIELD => {
            f.rax = 0;
            resched(k, f);
        }
        SYS_EXIT => {
            let code = f.rdi;
            kill_current(k, f, code);
        }
        SYS_SLEEP => {
            f.rax = 0;
            let _ = k.sched.block(me, BlockReason::Sleep, Some(time::now_ns() + f.rdi));
            resched(k, f);
        }
        SYS_TIME => f.rax = time::now_ns(),
        SYS_SEND => {
            let cap = match k.sched.task(me).unwrap().context.caps.get(f.rdi as usize) {
                Ok(c) => c,
                Err(e) => return f.rax = err(e),
            };
            let cap = match localize(k, cap) {
                Ok(c) => c,
                Err(node) => {
                    match remote_send(k, me, &cap, node, msg_from(f), false) {
                        Ok((_, preempt)) => {
                            f.rax = 0;
                            if preempt {
                                resched(k, f);
                            }
                        }
                        Err(e) => f.rax = err(e),
                    }
                    return;
                }
            };
            match k.ipc.send(&cap, msg_from(f)) {
                Ok(Delivery::Queued) => f.rax = 0,
                Ok(Delivery::Direct { receiver, mut msg }) => {
                    f.rax = 0;
                    deliver_grant(k, receiver, &mut msg);
                    if complete(k, receiver, Ok(msg)) {
                        resched(k, f);
                    }
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_RECV => {
            let cap = match k.sched.task(me).unwrap().context.caps.check(f.rdi as usize, Rights::RECV) {
                Ok(c) => c,
                Err(e) => return f.rax = err(e),
            };
            let ep = cap.target.endpoint;
            match k.ipc.recv(me, ep) {
                Ok(Some(mut m)) => {
                    deliver_grant(k, me, &mut m);
                    put_msg(f, &m);
                    if let Some(t) = k.sched.task_mut(me) {
                        t.context.origin = m.origin;
                    }
                }
                Ok(None) => {
                    let deadline = if f.rsi == 0 { None } else { Some(time::now_ns() + f.rsi) };
                    let _ = k.sched.block(me, BlockReason::Recv(ep), deadline);
                    resched(k, f);
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_CALL => {
            let cap = match k.sched.task(me).unwrap().context.caps.get(f.rdi as usize) {
                Ok(c) => c,
                Err(e) => return f.rax = err(e),
            };
            let cap = match localize(k, cap) {
                Ok(c) => c,
                Err(node) => {
                    match remote_send(k, me, &cap, node, msg_from(f), true) {
                        Ok((tok, _)) => {
                            let _ = k.sched.block(me, BlockReason::Reply(tok), Some(time::now_ns() + REMOTE_CALL_TIMEOUT_NS));
                            resched(k, f);
                        }
                        Err(e) => f.rax = err(e),
                    }
                    return;
                }
            };
            match k.ipc.call(me, &cap, msg_from(f)) {
                Ok((tok, d)) => {
                    let _ = k.sched.block(me, BlockReason::Reply(tok), None);
                    if let Delivery::Direct { receiver, msg } = d {
                        complete(k, receiver, Ok(msg));
                    }
                    resched(k, f);
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_CALL_GRANT => {
            let cap = match k.sched.task(me).unwrap().context.caps.get(f.rdi as usize) {
                Ok(c) => c,
                Err(e) => return f.rax = err(e),
            };
            let (base, len, writable) = (f.r8 & !1, f.r9, f.r8 & 1 != 0);
            let frames = match grant_frames(k, me, base, len, writable) {
                Some(v) => v,
                None => return f.rax = ERR_BAD_ARG.wrapping_neg(),
            };
            let mut m = Message::new(f.rsi, [f.rdx, f.r10, 0, len]);
            m.grant = Some(catenary_ipc::Grant { base, len, writable });
            match k.ipc.call(me, &cap, m) {
                Ok((tok, d)) => {
                    k.grants.insert(tok, GrantRec { sender: me, mapped: None, frames, writable });
                    let _ = k.sched.block(me, BlockReason::Reply(tok), None);
                    if let Delivery::Direct { receiver, mut msg } = d {
                        deliver_grant(k, receiver, &mut msg);
                        complete(k, receiver, Ok(msg));
                    }
                    resched(k, f);
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_REPLY => {
            revoke_on_reply(k, me, f.rdi);
            match k.ipc.reply(me, f.rdi, msg_from(f)) {
                Ok((REMOTE, m)) => {
                    // the answer to a call from another node: back through netd
                    f.rax = 0;
                    if let Some(to) = k.remote.calls_in.remove(&f.rdi) {
                        k.remote.replies.push_back(RemoteReply { to, result: Ok(m) });
                        if wake_router(k) {
                            resched(k, f);
                        }
                    }
                }
                Ok((caller, m)) => {
                    f.rax = 0;
                    if complete(k, caller, Ok(m)) {
                        resched(k, f);
                    }
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_MAP => f.rax = map_anon(k, me, f.rdi, f.rsi),
        SYS_MAP_MMIO => f.rax = map_mmio(k, me, f.rdi, f.rsi, f.rdx),
        SYS_DMA_ALLOC => f.rax = dma_alloc(k, me, f.rdi, f.rsi),
        SYS_UNMAP => f.rax = unmap_anon(k, me, f.rdi, f.rsi),
        SYS_LOG => {
            let t = k.sched.task(me).unwrap();
            let len = (f.rsi as usize).min(200);
            let mut buf = alloc::vec![0u8; len];
            let ok = match &t.context.space {
                Some(s) => s.read(f.rdi, &mut buf).is_ok(),
                None => false,
            };
            if ok {
                info!(target: "user", "[{} {}] {}", me, t.name, String::from_utf8_lossy(&buf));
                f.rax = 0;
            } else {
                f.rax = ERR_BAD_ARG.wrapping_neg();
            }
        }
        SYS_BIND_ADDRESS => match sys_bind_address(k, me, f.rdi as usize) {
            Ok(a) => {
                f.rax = 0;
                (f.rdi, f.rsi) = split_addr(a);
            }
            Err(e) => f.rax = err(e),
        },
        SYS_SENDER => {
            let o = k.sched.task(me).map(|t| t.context.origin).unwrap_or([0; 16]);
            f.rax = 0;
            (f.rdi, f.rsi) = split_addr(o);
        }
        SYS_JOIN => {
            let target = f.rdi;
            if let Some(code) = k.exit_codes.get(&target) {
                f.rax = *code;
            } else if k.sched.task(target).is_none() {
                f.rax = ERR_BAD_ARG.wrapping_neg();
            } else {
                let deadline = if f.rsi == 0 { None } else { Some(time::now_ns() + f.rsi) };
                let _ = k.sched.block(me, BlockReason::Join(target), deadline);
                resched(k, f);
            }
        }
        _ => f.rax = ERR_BAD_ARG.wrapping_neg(),
    }
}

// ---------------------------------------------------------------- fabric IPC

/// A /128 in two registers (high, low 64 bits).
fn split_addr(a: [u8; 16]) -> (u64, u64) {
    let v = u128::from_be_bytes(a);
    ((v >> 64) as u64, v as u64)
}

/// `SYS_BIND_ADDRESS`: the capability in `slot` must carry the bind right and name a local
/// endpoint that is open; the router (`netd`'s table) gives it a fresh task /128, and the
/// endpoint's owner sends from that /128 from now on.
fn sys_bind_address(k: &mut Kernel, me: TaskId, slot: usize) -> Result<[u8; 16], IpcError> {
    let cap = k.sched.task(me).ok_or(IpcError::NoCapability)?.context.caps.check(slot, Rights::BIND)?;
    let cap = localize(k, cap).map_err(|_| IpcError::Unreachable)?;
    let owner = k.ipc.endpoint(cap.target.endpoint).ok_or(IpcError::NoEndpoint)?.owner;
    if k.remote.node.is_none() {
        return Err(IpcError::Unreachable); // networking is not up
    }
    let a = crate::net::router_bind(cap.target.endpoint).ok_or(IpcError::TableFull)?.octets();
    k.remote.bound.entry(owner).or_insert(a);
    Ok(a)
}

/// A capability whose target is this node (all-zero node, or this node's own /128) as a
/// local one; `Err(node)` for another node.
fn localize(k: &Kernel, cap: Capability) -> Result<Capability, [u8; 16]> {
    if cap.target.is_local() {
        return Ok(cap);
    }
    if k.remote.node == Some(cap.target.node) {
        return Ok(Capability { target: Address::local(cap.target.endpoint), ..cap });
    }
    Err(cap.target.node)
}

/// Queue a send (`caller` None) or call for `netd`. Returns the call's token (0 for a send)
/// and whether the woken `netd` should preempt this CPU.
fn remote_send(k: &mut Kernel, me: TaskId, cap: &Capability, node: [u8; 16], msg: Message, is_call: bool) -> Result<(u64, bool), IpcError> {
    if !cap.rights.contains(Rights::SEND) {
        return Err(IpcError::NoRight);
    }
    if k.remote.node.is_none() || k.remote.wake.is_none() {
        return Err(IpcError::Unreachable);
    }
    if k.remote.out.len() >= REMOTE_QUEUE {
        return Err(IpcError::QueueFull);
    }
    let token = if is_call {
        let t = k.ipc.call_remote(me);
        k.remote.calls_out.insert(t, node);
        t
    } else {
        0
    };
    let src = k.remote.bound.get(&me).copied();
    k.remote.out.push_back(RemoteOut { src, dst: node, endpoint: cap.target.endpoint, msg: Message::new(msg.label, msg.words), token });
    Ok((token, wake_router(k)))
}

/// Wake `netd` (frames from a microVM wait for it). No-op before networking is up.
pub fn wake_netd() {
    with(|k| {
        let _ = wake_router(k);
    })
}

/// Notify `netd`'s endpoint that fabric IPC waits; true if it should preempt this CPU.
fn wake_router(k: &mut Kernel) -> bool {
    let Some(ep) = k.remote.wake else { return false };
    if let Ok(Some((who, m))) = k.ipc.notify(ep, REMOTE_NOTIFY_BIT) {
        if let Some(TaskState::Blocked(BlockReason::Recv(_))) = k.sched.task(who).map(|t| t.state) {
            return complete(k, who, Ok(m));
        }
    }
    false
}

/// `netd` is up: this node's /128 and the endpoint (held by `netd`) to notify when fabric IPC
/// waits. From now on, sends and calls to other nodes go to `netd`.
pub fn router_up(node: [u8; 16], wake: EndpointId) {
    with(|k| {
        k.remote.node = Some(node);
        k.remote.wake = Some(wake);
    })
}

/// The endpoint behind the calling task's capability `slot`.
pub fn endpoint_of_slot(slot: usize) -> Option<EndpointId> {
    with(|k| {
        let me = k.sched.current(smp::cpu_index())?;
        k.sched.task(me)?.context.caps.get(slot).ok().map(|c| c.target.endpoint)
    })
}

/// (`netd`) The sends and calls to other nodes, and the answers to calls from other nodes.
pub fn take_remote() -> (Vec<RemoteOut>, Vec<RemoteReply>) {
    with(|k| (k.remote.out.drain(..).collect(), k.remote.replies.drain(..).collect()))
}

/// (`netd`) A message from `origin` (another node's /128, or a microVM's, as the fabric or
/// the VM's port authenticated it) for local endpoint `ep`: a send, or a call (`call`) whose
/// answer comes back through [`take_remote`]. The receiver sees [`REMOTE_BADGE`] and learns
/// `origin` with `SYS_SENDER`.
pub fn deliver_remote(ep: EndpointId, msg: Message, call: Option<ReplyTo>, origin: [u8; 16]) -> Result<(), IpcError> {
    with(|k| {
        let cap = Capability { target: Address::local(ep), rights: Rights::SEND, badge: REMOTE_BADGE };
        let msg = Message { origin, ..Message::new(msg.label, msg.words) };
        let d = match call {
            Some(to) => {
                if k.remote.calls_in.len() >= REMOTE_CALLS_IN {
                    return Err(IpcError::QueueFull);
                }
                let (tok, d) = k.ipc.call(REMOTE, &cap, msg)?;
                k.remote.calls_in.insert(tok, to);
                d
            }
            None => k.ipc.send(&cap, msg)?,
        };
        if let Delivery::Direct { receiver, msg } = d {
            complete(k, receiver, Ok(msg));
        }
        Ok(())
    })
}

/// (`netd`) The answer to our call `token` came from `from`: wake the caller with it. False
/// if no such call is waiting for `from` (timed out, or a forged answer).
pub fn complete_remote_call(token: u64, from: [u8; 16], result: Result<Message, IpcError>) -> bool {
    with(|k| {
        if k.remote.calls_out.get(&token) != Some(&from) {
            return false;
        }
        k.remote.calls_out.remove(&token);
        match result {
            Ok(m) => match k.ipc.reply(REMOTE, token, m) {
                Ok((caller, m)) => {
                    complete(k, caller, Ok(m));
                    true
                }
                Err(_) => false,
            },
            Err(e) => match k.ipc.end_call(REMOTE, token) {
                Ok(caller) => {
                    complete(k, caller, Err(err(e)));
                    true
                }
                Err(_) => false,
            },
        }
    })
}

/// (`netd`) Calls from other nodes whose callee died: answer them with `DeadPeer`.
pub fn reap_remote_calls() {
    with(|k| {
        let dead: Vec<u64> = k.remote.calls_in.keys().copied().filter(|t| !k.ipc.call_pending(*t)).collect();
        for t in dead {
            if let Some(to) = k.remote.calls_in.remove(&t) {
                k.remote.replies.push_back(RemoteReply { to, result: Err(IpcError::DeadPeer) });
            }
        }
    })
}

fn map_anon(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    if virt % 4096 != 0 || pages > 1024 || virt.saturating_add(pages * 4096) > GRANT_WINDOW {
        return ERR_BAD_ARG.wrapping_neg();
    }
    for i in 0..pages {
        let Ok(fr) = memory::alloc_frame() else { return ERR_BAD_ARG.wrapping_neg() };
        memory::zero_frame(fr);
        if space.map(virt + i * 4096, fr, true, false).is_err() {
            let _ = memory::free_frame(fr);
            return ERR_BAD_ARG.wrapping_neg();
        }
        t.context.frames.push(fr);
    }
    0
}

/// Map [phys, phys+len) at `virt`, uncached, if it lies inside one of the task's MMIO grants.
fn map_mmio(k: &mut Kernel, me: TaskId, virt: u64, phys: u64, len: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    let pages = len.div_ceil(4096);
    let granted = t.context.mmio.iter().any(|&(b, l)| phys >= b && phys.saturating_add(pages * 4096) <= b + l);
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    if !granted || pages == 0 || virt % 4096 != 0 || phys % 4096 != 0 || virt.saturating_add(pages * 4096) > GRANT_WINDOW {
        return ERR_BAD_ARG.wrapping_neg();
    }
    for i in 0..pages {
        if space.map_mmio(virt + i * 4096, phys + i * 4096, true).is_err() {
            return ERR_BAD_ARG.wrapping_neg();
        }
    }
    0
}

/// Allocate `pages` physically contiguous zeroed frames (within the DMA quota), map them at
/// `virt` and return their physical address for the device.
fn dma_alloc(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    if pages == 0 || pages > t.context.dma_left || virt % 4096 != 0 || virt.saturating_add(pages * 4096) > GRANT_WINDOW {
        return ERR_BAD_ARG.wrapping_neg();
    }
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    let Ok(phys) = memory::alloc_contiguous(pages, 1) else { return ERR_BAD_ARG.wrapping_neg() };
    for i in 0..pages {
        memory::zero_frame(phys + i * 4096);
        if space.map(virt + i * 4096, phys + i * 4096, true, false).is_err() {
            for j in 0..i {
                let _ = space.unmap(virt + j * 4096);
            }
            let _ = memory::free_contiguous(phys, pages);
            return ERR_BAD_ARG.wrapping_neg();
        }
    }
    t.context.frames.extend((0..pages).map(|i| phys + i * 4096));
    t.context.dma_left -= pages;
    phys
}

fn unmap_anon(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    for i in 0..pages {
        match space.unmap(virt + i * 4096) {
            Ok(fr) => {
                if let Some(pos) = t.context.frames.iter().position(|x| *x == fr) {
                    t.context.frames.swap_remove(pos);
                    let _ = memory::free_frame(fr);
                }
            }
            Err(_) => return ERR_BAD_ARG.wrapping_neg(),
        }
    }
    0
}

// ---------------------------------------------------------------- memory grants

/// The frames behind [base, base+len) of `me`, if `me` owns every page (and they are
/// writable when `writable`).
fn grant_frames(k: &Kernel, me: TaskId, base: u64, len: u64, writable: bool) -> Option<Vec<u64>> {
    let t = k.sched.task(me)?;
    let space = t.context.space.as_ref()?;
    let pages = len.div_ceil(4096);
    if base % 4096 != 0 || pages == 0 || pages > GRANT_MAX_PAGES || base.checked_add(pages * 4096)? > uspace::USER_END {
        return None;
    }
    let mut frames = Vec::with_capacity(pages as usize);
    for i in 0..pages {
        let (phys, w) = space.translate(base + i * 4096)?;
        if (writable && !w) || !t.context.frames.contains(&phys) {
            return None;
        }
        frames.push(phys);
    }
    Some(frames)
}

/// A message reaches `receiver`: map the grant travelling with it (if any) into its grant
/// window and tell it where (words 2, 3 = address | writable, length; address 0 = not mapped).
fn deliver_grant(k: &mut Kernel, receiver: TaskId, m: &mut Message) {
    if m.grant.is_none() {
        return;
    }
    m.words[2] = 0;
    let Some(rec) = k.grants.get(&m.reply) else { return };
    let used: Vec<u64> = k.grants.values().filter_map(|g| g.mapped.filter(|(r, _)| *r == receiver).map(|(_, v)| v)).collect();
    let Some(virt) = (0..GRANT_SLOTS).map(|i| GRANT_WINDOW + i * GRANT_MAX_PAGES * 4096).find(|v| !used.contains(v)) else { return };
    let (frames, writable) = (rec.frames.clone(), rec.writable);
    let Some(space) = k.sched.task_mut(receiver).and_then(|t| t.context.space.as_mut()) else { return };
    for (i, fr) in frames.iter().enumerate() {
        if space.map(virt + i as u64 * 4096, *fr, writable, false).is_err() {
            for j in 0..i as u64 {
                let _ = space.unmap(virt + j * 4096);
            }
            return;
        }
    }
    k.grants.get_mut(&m.reply).unwrap().mapped = Some((receiver, virt));
    m.words[2] = virt | writable as u64;
}

fn unmap_grant(k: &mut Kernel, rec: &GrantRec) {
    if let Some((r, virt)) = rec.mapped {
        if let Some(space) = k.sched.task_mut(r).and_then(|t| t.context.space.as_mut()) {
            for i in 0..rec.frames.len() as u64 {
                let _ = space.unmap(virt + i * 4096);
            }
        }
    }
}

/// The receiver answers call `token` (running on this CPU, so the local TLB flush of the
/// unmap is enough): the grant ends.
fn revoke_on_reply(k: &mut Kernel, me: TaskId, token: u64) {
    if k.grants.get(&token).is_some_and(|g| g.mapped.map(|(r, _)| r) == Some(me)) {
        let rec = k.grants.remove(&token).unwrap();
        unmap_grant(k, &rec);
    }
}

/// Task `dead` is going away: end its grants on both sides.
fn grants_on_death(k: &mut Kernel, dead: TaskId) {
    let tokens: Vec<u64> = k.grants.iter().filter(|(_, g)| g.sender == dead || g.mapped.map(|(r, _)| r) == Some(dead)).map(|(t, _)| *t).collect();
    for tok in tokens {
        let rec = k.grants.remove(&tok).unwrap();
        if rec.sender != dead {
            continue; // the receiver died: its address space goes, the sender keeps its pages
        }
        unmap_grant(k, &rec);
        // The receiver may run on another CPU with the pages still in its TLB: they become
        // its own (freed when it exits) instead of returning to the allocator now.
        if let Some((r, _)) = rec.mapped {
            if let Some(t) = k.sched.task_mut(dead) {
                t.context.frames.retain(|f| !rec.frames.contains(f));
            }
            if let Some(t) = k.sched.task_mut(r) {
                t.context.frames.extend_from_slice(&rec.frames);
            }
        }
    }
}

/// Number of grants in flight (tests).
pub fn grants_outstanding() -> usize {
    with(|k| k.grants.len())
}

// ---------------------------------------------------------------- creating tasks

fn kernel_task_start(_: u64) {
    let entry = with(|k| {
        let me = k.sched.current(smp::cpu_index()).unwrap();
        k.sched.task(me).and_then(|t| t.context.kentry)
    });
    if let Some((f, arg)) = entry {
        f(arg);
    }
    uspace::ksyscall(SYS_EXIT, [0; 6]);
}

/// Start a kernel task running `f(arg)`.
pub fn spawn_kernel(name: &str, prio: Priority, aff: Affinity, f: fn(u64), arg: u64) -> TaskId {
    let (_, top) = paging::alloc_stack(8).expect("kernel task stack");
    let entry: extern "C" fn(u64) = {
        extern "C" fn tramp(a: u64) {
            kernel_task_start(a)
        }
        tramp
    };
    let mut ctx = Ctx::new(uspace::kernel_frame(entry as *const () as u64, top, 0));
    ctx.kentry = Some((f, arg));
    with(|k| {
        let id = k.sched.create(name, prio, aff, ctx);
        wake(k, id);
        id
    })
}

#[derive(Debug)]
#[allow(dead_code)] // the payload is for Debug output in error reports
pub enum SpawnError {
    BadElf,
    NoMemory,
    Cap(IpcError),
}

fn load_elf(space: &mut AddressSpace, frames: &mut Vec<u64>, elf: &[u8]) -> Result<u64, SpawnError> {
    let rd = |o: usize, n: usize| -> Result<u64, SpawnError> {
        let b = elf.get(o..o + n).ok_or(SpawnError::BadElf)?;
        Ok(b.iter().rev().fold(0u64, |a, x| (a << 8) | *x as u64))
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err(SpawnError::BadElf);
    }
    let entry = rd(24, 8)?;
    let (phoff, phentsize, phnum) = (rd(32, 8)? as usize, rd(54, 2)? as usize, rd(56, 2)? as usize);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd(ph, 4)? != 1 {
            continue;
        }
        let flags = rd(ph + 4, 4)?;
        let (off, vaddr, filesz, memsz) = (rd(ph + 8, 8)?, rd(ph + 16, 8)?, rd(ph + 32, 8)?, rd(ph + 40, 8)?);
        if vaddr >= 0x0000_7000_0000_0000 || filesz > memsz {
            return Err(SpawnError::BadElf);
        }
        let start = vaddr & !0xfff;
        let end = (vaddr + memsz + 0xfff) & !0xfff;
        let mut page = start;
        while page < end {
            let fr = memory::alloc_frame().map_err(|_| SpawnError::NoMemory)?;
            memory::zero_frame(fr);
            frames.push(fr);
            // Copy the part of [vaddr, vaddr+filesz) that falls in this page.
            let lo = page.max(vaddr);
            let hi = (page + 4096).min(vaddr + filesz);
            if lo < hi {
                let src = (off + (lo - vaddr)) as usize;
                let data = elf.get(src..src + (hi - lo) as usize).ok_or(SpawnError::BadElf)?;
                uspace::write_phys(fr + (lo - page), data);
            }
            space.map(page, fr, flags & 2 != 0, flags & 1 != 0).map_err(|_| SpawnError::NoMemory)?;
            page += 4096;
        }
    }
    Ok(entry)
}

/// What a new ring-3 task gets.
pub struct UserSpec<'a> {
    pub name: &'a str,
    pub elf: &'a [u8],
    pub arg: u64,
    pub prio: Priority,
    pub affinity: Affinity,
    /// Give the task an endpoint of its own in slot 0 (receive + send).
    pub own_endpoint: bool,
    /// Further capabilities, in slot order.
    pub caps: &'a [Capability],
    /// I/O ports it may use.
    pub ports: &'a [u16],
    /// Physical MMIO ranges (base, len) it may map (uncached) with `map_mmio`.
    pub mmio: &'a [(u64, u64)],
    /// How many pages of DMA memory it may allocate with `dma_alloc`.
    pub dma_pages: u64,
}

/// Load an embedded program into a fresh address space and start it. Returns the task and its
/// endpoint (when `own_endpoint`).
pub fn spawn_user(s: &UserSpec) -> Result<(TaskId, Option<EndpointId>), SpawnError> {
    let mut space = AddressSpace::new().map_err(|_| SpawnError::NoMemory)?;
    let mut frames = Vec::new();
    let entry = load_elf(&mut space, &mut frames, s.elf)?;
    for i in 0..USER_STACK_PAGES {
        let fr = memory::alloc_frame().map_err(|_| SpawnError::NoMemory)?;
        memory::zero_frame(fr);
        frames.push(fr);
        space.map(USER_STACK_TOP - (i + 1) * 4096, fr, true, false).map_err(|_| SpawnError::NoMemory)?;
    }
    let mut ctx = Ctx::new(uspace::user_frame(entry, USER_STACK_TOP, s.arg));
    ctx.space = Some(space);
    ctx.frames = frames;
    if !s.ports.is_empty() {
        ctx.io = Some(uspace::io_bitmap_for(s.ports));
    }
    ctx.mmio = s.mmio.to_vec();
    ctx.dma_left = s.dma_pages;
    with(|k| {
        let id = k.sched.create(s.name, s.prio, s.affinity, ctx);
        let mut ep = None;
        let t = k.sched.task_mut(id).unwrap();
        let _ = t;
        if s.own_endpoint {
            let e = k.ipc.create_endpoint(id, catenary_ipc::DEFAULT_CAPACITY);
            let cap = Capability { target: Address::local(e), rights: Rights::SEND.union(Rights::RECV), badge: 0 };
            k.sched.task_mut(id).unwrap().context.caps.insert(cap).map_err(SpawnError::Cap)?;
            ep = Some(e);
        }
        for c in s.caps {
            k.sched.task_mut(id).unwrap().context.caps.insert(*c).map_err(SpawnError::Cap)?;
        }
        wake(k, id);
        Ok((id, ep))
    })
}

/// A send capability for endpoint `ep` with `badge`.
pub fn send_cap(ep: EndpointId, badge: u64) -> Capability {
    Capability { target: Address::local(ep), rights: Rights::SEND, badge }
}

/// Give the calling task (kernel or user) a new endpoint; returns (slot, endpoint).
pub fn create_endpoint_for_current(capacity: usize) -> (usize, EndpointId) {
    with(|k| {
        let me = k.sched.current(smp::cpu_index()).unwrap();
        let e = k.ipc.create_endpoint(me, capacity);
        let cap = Capability { target: Address::local(e), rights: Rights::SEND.union(Rights::RECV), badge: 0 };
        (k.sched.task_mut(me).unwrap().context.caps.insert(cap).unwrap(), e)
    })
}

/// Put a capability into the calling task's table; returns the slot.
pub fn give_current(c: Capability) -> usize {
    with(|k| {
        let me = k.sched.current(smp::cpu_index()).unwrap();
        k.sched.task_mut(me).unwrap().context.caps.insert(c).unwrap()
    })
}

#[cfg_attr(feature = "ktest", allow(dead_code))]
pub fn current_task() -> TaskId {
    with(|k| k.sched.current(smp::cpu_index()).unwrap_or(0))
}

// ---------------------------------------------------------------- kernel-side wrappers

pub fn sys(nr: u64, a: [u64; 6]) -> uspace::SysRet {
    uspace::ksyscall(nr, a)
}
pub fn sleep_ns(ns: u64) {
    sys(SYS_SLEEP, [ns, 0, 0, 0, 0, 0]);
}
pub fn yield_now() {
    sys(SYS_YIELD, [0; 6]);
}
fn res(r: uspace::SysRet) -> Result<Message, IpcError> {
    if r.rax == 0 {
        let mut m = Message::new(r.rsi, [r.rdx, r.r10, r.r8, r.r9]);
        m.badge = r.rdi;
        m.reply = r.r12;
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
fn join_addr(hi: u64, lo: u64) -> [u8; 16] {
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
pub fn call(slot: usize, m: Message) -> Result<Message, IpcError> {
    res(sys(SYS_CALL, [slot as u64, m.label, m.words[0], m.words[1], m.words[2], m.words[3]]))
}
/// Wait for a task to end; returns its exit code (None on timeout).
pub fn join(id: TaskId, timeout_ns: u64) -> Option<u64> {
    let r = sys(SYS_JOIN, [id, timeout_ns, 0, 0, 0, 0]);
    if r.rax == err(IpcError::Timeout) { None } else { Some(r.rax) }
}

// ---------------------------------------------------------------- boot services

/// Bring up the APs, route the RTC interrupt and start the ring-3 services.
pub fn start_node(cpus: &[(u32, bool)], ioapic: Option<u64>) {
    IOAPIC_PHYS.store(ioapic.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
    let mut idx = 1;
    for &(apic_id, is_bsp) in cpus {
        if is_bsp {
            continue;
        }
        match smp::start_ap(idx, apic_id) {
            Ok(()) => {}
            Err(e) => warn!(target: "smp", "APIC id {}: {}", apic_id, e),
        }
        idx += 1;
    }
    info!(target: "smp", "{} of {} CPU(s) online", smp::online_cpus(), cpus.len());
    if RTCD_ELF.is_empty() {
        warn!(target: "task", "no ring-3 programs embedded (build with `cargo xtask build`)");
        return;
    }
    match spawn_user(&UserSpec {
        name: "rtcd",
        elf: RTCD_ELF,
        arg: 0,
        prio: Priority::DRIVER,
        affinity: Affinity::ANY,
        own_endpoint: true,
        caps: &[],
        ports: &[0x70, 0x71],
        mmio: &[],
        dma_pages: 0,
    }) {
        Ok((id, ep)) => {
            with(|k| k.rtc_endpoint = ep);
            if let (Some(io), Some(bsp)) = (ioapic, smp::apic_id_of(0)) {
                if let Err(e) = apic::ioapic_route(io, 8, RTC_VECTOR, bsp) {
                    warn!(target: "task", "IOAPIC: {:?}", e);
                }
            }
            info!(target: "task", "ring-3 service rtcd started: task {}, endpoint {}, ports 0x70-0x71, IRQ 8 -> vector {:#x}",
                id, ep.unwrap_or(0), RTC_VECTOR);
        }
        Err(e) => warn!(target: "task", "rtcd: {:?}", e),
    }
    match spawn_user(&UserSpec {
        name: "echo",
        elf: UAPP_ELF,
        arg: ROLE_ECHO,
        prio: Priority::NORMAL,
        affinity: Affinity::ANY,
        own_endpoint: true,
        caps: &[],
        ports: &[],
        mmio: &[],
        dma_pages: 0,
    }) {
        Ok((id, ep)) => {
            with(|k| k.echo_endpoint_set(ep));
            info!(target: "task", "ring-3 service echo started: task {}, endpoint {}", id, ep.unwrap_or(0));
        }
        Err(e) => warn!(target: "task", "echo: {:?}", e),
    }
}

pub const ROLE_ECHO: u64 = 1;
pub const ROLE_CLIENT: u64 = 2;
pub const ROLE_BENCH: u64 = 3;
pub const ROLE_TOUCH_KERNEL: u64 = 4;
pub const ROLE_BAD_PORT: u64 = 5;
pub const ROLE_SPIN: u64 = 6;
pub const ROLE_RTC_CLIENT: u64 = 7;
pub const ROLE_ONE_SHOT: u64 = 8;
pub const ROLE_MEMORY: u64 = 9;
pub const ROLE_GRANT_SERVER: u64 = 10;
pub const ROLE_GRANT_CLIENT: u64 = 11;
pub const ROLE_MMIO_DRIVER: u64 = 12;

static IOAPIC_PHYS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Physical address of the first IOAPIC (from ACPI), if any.
pub fn ioapic_phys() -> Option<u64> {
    Some(IOAPIC_PHYS.load(core::sync::atomic::Ordering::Relaxed)).filter(|a| *a != 0)
}

static ECHO_EP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
impl Kernel {
    fn echo_endpoint_set(&mut self, ep: Option<EndpointId>) {
        ECHO_EP.store(ep.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
    }
}
pub fn echo_endpoint() -> EndpointId {
    ECHO_EP.load(core::sync::atomic::Ordering::Relaxed)
}
pub fn rtc_endpoint() -> Option<EndpointId> {
    with(|k| k.rtc_endpoint)
}

/// Kill a task that is not running right now (tests). Returns whether it was killed.
pub fn kill_for_test(id: TaskId) -> bool {
    with(|k| match k.sched.task(id).map(|t| t.state) {
        Some(TaskState::Ready) | Some(TaskState::Blocked(_)) => {
            let rep = k.ipc.task_died(id);
            grants_on_death(k, id);
            k.remote.bound.remove(&id);
            let _ = k.sched.kill(id);
            k.exit_codes.insert(id, killed_by(0xff));
            for (w, e) in rep.wake_with_error {
                complete(k, w, Err(err(e)));
            }
            true
        }
        _ => false,
    })
}

/// `bench=ipc` on the command line: ring-3 call/reply round trip on one CPU and across CPUs,
/// and the null syscall, in TSC cycles (medians of 2000, measured in ring 3).
pub fn run_ipc_bench(cpus: usize) {
    let (slot, ep) = create_endpoint_for_current(4);
    let other = if cpus > 1 { 1 } else { 0 };
    for (what, srv_cpu, cli_cpu) in [("same CPU", 0usize, 0usize), ("across CPUs", other, 0)] {
        let srv = spawn_user(&UserSpec { name: "bench-echo", elf: UAPP_ELF, arg: ROLE_ECHO, prio: Priority::NORMAL,
            affinity: Affinity::only(srv_cpu), own_endpoint: true, caps: &[], ports: &[], mmio: &[], dma_pages: 0 });
        let Ok((sid, Some(sep))) = srv else { warn!(target: "bench", "cannot start server"); return };
        let cli = spawn_user(&UserSpec { name: "bench-client", elf: UAPP_ELF, arg: ROLE_BENCH, prio: Priority::NORMAL,
            affinity: Affinity::only(cli_cpu), own_endpoint: false, caps: &[send_cap(sep, 1), send_cap(ep, 0)], ports: &[], mmio: &[], dma_pages: 0 });
        let Ok((cid, _)) = cli else { warn!(target: "bench", "cannot start client"); return };
        match recv(slot, 60_000_000_000) {
            Ok(m) => {
                let (null, rt) = (m.words[0], m.words[1]);
                info!(target: "bench", "bench ipc: {}: call/reply round trip {} cycles, null syscall {} cycles, ratio {:.1}",
                    what, rt, null, rt as f64 / null.max(1) as f64);
            }
            Err(e) => warn!(target: "bench", "bench ipc: {}: no result ({:?})", what, e),
        }
        join(cid, 5_000_000_000);
        kill_for_test(sid);
    }
    info!(target: "bench", "bench ipc: done");
}
