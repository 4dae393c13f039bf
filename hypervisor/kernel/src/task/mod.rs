//! Tasks, the scheduler glue and the system calls.
//!
//! Policy lives in `catenary-sched` (run queues, priorities, sleep queue) and `catenary-ipc`
//! (endpoints, capabilities, call/reply); this module keeps one of each behind a lock taken
//! with interrupts off, and does the machine side through `catenary-arch`: a task's context is
//! a `catenary_arch::context::TaskContext` (the registers + FPU image saved at its last kernel
//! entry, and for a kernel task the stack they run on), its address space and its I/O bitmap. Every kernel entry (timer, IPI, `syscall`, `int 0x80`, a fault) may end with a
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
//! (rdi, rsi; zero for a local message), 18 net(slot, op, buf, len, arg): the ring-3
//! router's operations (`netd.rs`; the capability needs the ROUTER right), 19 share(slot,
//! base, len) → where the pages are mapped in the receiver: a standing writable loan of the
//! caller's RAM to the owner of the capability's endpoint (SHARE right) until either dies
//! (`grant.rs`), 20 grant_of(token) → the grant that came with the unanswered call `token`
//! (rdi = address | writable, rsi = bytes mapped), 21 vm(slot, op, buf, len, arg): the
//! workload service's VM control (`vmctl.rs`; the capability needs the VMCTL right), 22
//! reply_recv(token, label, w0..w3; r13 = receive slot): reply, then receive without a
//! timeout, in one call, switching straight to the caller where it may (`fastpath.rs`), 23
//! alive(period_ms): a heartbeat, the next promised within the period (`heartbeat.rs`). A received message comes
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
//!
//! Files: `switch` (context switch, wake, kill), `irq` (timer, IPIs, device interrupts,
//! ring-3 faults), `syscall` (dispatch), `mapping` (memory syscalls), `grant` (memory grants),
//! `remote` (fabric IPC for `netd`), `netd` (the ring-3 router's syscall), `fastpath` (direct
//! switches of call and reply_recv), `spawn` + `elf` (creating tasks), `api` (kernel-side
//! syscall wrappers), `services` (boot services), `bench` (IPC benchmark).

mod api;
// `bench=ipc`: only in the probes kernel (see main.rs)
#[cfg(feature = "probes")]
mod bench;
mod elf;
mod fastpath;
mod grant;
mod irq;
mod mapping;
mod netd;
mod remote;
mod services;
mod spawn;
pub mod supervisor;
mod switch;
mod syscall;
pub mod vmctl;
pub mod watchdog;
pub mod heartbeat;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_arch::context::TaskContext;
use catenary_arch::trap::{GpRegs, TrapFrame};
use catenary_arch::uspace::{self, AddressSpace, UserRange};
use catenary_arch::user_mem::PageKind;
use catenary_arch::{apic, context, cpu, memory, paging, smp, stages, time};
use catenary_ipc::{Address, CapTable, Capability, Delivery, EndpointId, IpcError, IpcSpace, Message, Rights, REMOTE};
use catenary_sched::{Affinity, BlockReason, Priority, Scheduler, TaskId, TaskState};
use log::{info, warn};
use spin::Mutex;

// The syscall numbers: one definition, shared by the kernel and the ring-3 runtime.
pub use catenary_ipc::syscall::*;

pub use api::*;
#[cfg(feature = "probes")]
pub use bench::*;
use elf::*;
#[cfg_attr(not(any(feature = "probes", feature = "ktest")), allow(unused_imports))] // (the benchmarks and the in-kernel tests)
pub use fastpath::fastpath_handoffs;
pub use grant::*;
pub use irq::*;
pub use mapping::*;
pub use remote::*;
pub use services::*;
pub use spawn::*;
use switch::*;
use syscall::*;

pub const RTC_VECTOR: u8 = 0x58;
/// The virtio-net receive interrupt (MSI-X, programmed by `net`).
pub const NIC_VECTOR: u8 = 0x59;
const USER_STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
const USER_STACK_PAGES: u64 = 32;
/// Where granted pages appear in a receiver: 64 slots of `GRANT_MAX_PAGES` pages.
pub const GRANT_WINDOW: u64 = 0x0000_6000_0000_0000;
pub const GRANT_MAX_PAGES: u64 = 4096;
/// Page tables one mapping call may add (a run of up to `MAP_MAX_PAGES` pages crosses at most
/// two page tables, two directories and two PDPTs): reserved from the quota up front.
const TABLES_PER_CALL: u64 = 6;
/// Memory quota of a ring-3 task whose spec does not set one (pages).
pub const DEFAULT_MEM_PAGES: u64 = 1024;

/// Exit code of a task killed by exception `v`.
pub const fn killed_by(v: u64) -> u64 {
    0xdead_0000 | v
}

pub static RTCD_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_RTCD"));
pub static UAPP_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_UAPP"));
pub static NICD_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_NICD"));
/// The ring-3 syscall fuzzer (test builds only: `ktest_sysfuzz`).
#[cfg(feature = "ktest")]
pub static SYSFUZZ_ELF: &[u8] = include_bytes!(env!("CATENARY_USER_SYSFUZZ"));

pub struct Ctx {
    /// Registers, FPU image and (a kernel task's) stack; arch moves them in and out of the CPU.
    frame: TaskContext,
    space: Option<AddressSpace>,
    io: Option<Box<[u8; uspace::IO_BITMAP_BYTES]>>,
    pub caps: CapTable,
    /// The RAM frames the task owns (freed when it exits).
    frames: alloc::collections::BTreeSet<u64>,
    /// Pages it may still take with `map` and `dma_alloc` (page tables included).
    mem_left: u64,
    kentry: Option<(fn(u64), u64)>,
    /// Driver grants: physical MMIO ranges (base, len) it may map, DMA pages it may allocate.
    mmio: Vec<(u64, u64)>,
    dma_left: u64,
    /// The fabric /128 the last message this task received came from (`SYS_SENDER`).
    origin: [u8; 16],
    /// Timer ticks it ran in ring 3 without a system call since its last one (`watchdog`).
    quiet_ticks: u32,
    /// Its heartbeat, once armed (`heartbeat`).
    heartbeat: Option<heartbeat::Beat>,
}

impl Ctx {
    fn new(frame: TaskContext) -> Ctx {
        Ctx { frame, space: None, io: None, caps: CapTable::new(64), frames: Default::default(), mem_left: 0, kentry: None, mmio: Vec::new(), dma_left: 0, origin: [0; 16], quiet_ticks: 0, heartbeat: None }
    }
}

pub struct Kernel {
    pub sched: Scheduler<Ctx>,
    pub ipc: IpcSpace,
    idle_stack: Vec<paging::StaticStack>,
    on_idle: Vec<bool>,
    /// An empty context, held in a task's place while `switch::switch_to` loads that task.
    spare: TaskContext,
    exit_codes: alloc::collections::BTreeMap<TaskId, u64>,
    rtc_endpoint: Option<EndpointId>,
    ticks: u64,
    grants: alloc::collections::BTreeMap<u64, GrantRec>,
    /// Device interrupt vectors delivered as IPC notifications: vector -> (endpoint, bits).
    irq_notify: alloc::collections::BTreeMap<u8, (EndpointId, u64)>,
    /// Fabric IPC (sends and calls to other nodes, handed to `netd`).
    remote: Remote,
    /// The manifest's services (see `supervisor`).
    svc: supervisor::Supervision,
    /// MicroVMs of the workload service (`SYS_VM`).
    vmctl: vmctl::VmCtl,
}

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
        spare: TaskContext::running(),
        exit_codes: Default::default(),
        rtc_endpoint: None,
        ticks: 0,
        grants: Default::default(),
        irq_notify: Default::default(),
        remote: Remote::default(),
        svc: Default::default(),
        vmctl: Default::default(),
    };
    for _ in 0..cpus {
        k.idle_stack.push(paging::alloc_stack(4).expect("idle stack"));
    }
    k.sched.set_online(0, true);
    k.sched.adopt_running(0, "main", Priority::NORMAL, Ctx::new(TaskContext::running()));
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
    // Hardware virtualization on every CPU before it takes tasks: vCPU tasks may run, and
    // move, anywhere (docs/vmm.md "SMP"); a vCPU on a CPU without it fails its entry.
    let virt = catenary_arch::virt::enable_this_cpu();
    with(|k| k.sched.set_online(cpu_idx, true));
    info!(target: "smp", "cpu {} online (APIC id {}), scheduler running, virtualization {}", cpu_idx, smp::apic_id_of(cpu_idx).unwrap_or(0),
        virt.unwrap_or("off"));
    loop {
        cpu::wait_for_interrupt();
    }
}

/// Stacks of dead kernel tasks not freed yet: dead tasks not reaped whose context still owns
/// one (a stack goes with its task's context, when the task is reaped).
pub fn kernel_stacks_pending() -> usize {
    with(|k| k.sched.tasks().filter(|t| t.state == TaskState::Dead && t.context.frame.owns_kernel_stack()).count())
}

/// Point the saved RIP of blocked ring-3 task `id` at `rip` (tests of the return-to-ring-3
/// checks). False if it is not a blocked ring-3 task.
pub fn set_user_rip_for_test(id: TaskId, rip: u64) -> bool {
    with(|k| match k.sched.task_mut(id) {
        Some(t) if matches!(t.state, TaskState::Blocked(_)) && t.context.space.is_some() => {
            t.context.frame.set_user_rip(rip)
        }
        _ => false,
    })
}

/// Whether blocked task `id`'s saved context holds a kernel stack, and its saved frame's vector
/// (tests of the context ownership). None if it is not blocked.
pub fn saved_context_for_test(id: TaskId) -> Option<(bool, u64)> {
    with(|k| match k.sched.task(id) {
        Some(t) if matches!(t.state, TaskState::Blocked(_)) => Some((t.context.frame.owns_kernel_stack(), t.context.frame.frame().vector())),
        _ => None,
    })
}

/// Whether task `id` still exists (in any state).
pub fn task_exists(id: TaskId) -> bool {
    with(|k| k.sched.task(id).is_some())
}

/// Write `v` into every general register but rax (the result, set on wake-up) of blocked
/// kernel task `id`'s saved frame: it is stopped in a kernel system call, whose registers are
/// the kernel's to set (`uspace::ksyscall`). False if it is not a blocked kernel task.
pub fn scribble_saved_regs_for_test(id: TaskId, v: u64) -> bool {
    with(|k| match k.sched.task_mut(id) {
        Some(t) if matches!(t.state, TaskState::Blocked(_)) && t.context.space.is_none() && t.context.frame.frame().regs_writable() => {
            let r = &mut *t.context.frame;
            (r.r15, r.r14, r.r13, r.r12, r.r11, r.r10, r.r9, r.r8) = (v, v, v, v, v, v, v, v);
            (r.rbp, r.rdi, r.rsi, r.rdx, r.rcx, r.rbx) = (v, v, v, v, v, v);
            true
        }
        _ => false,
    })
}

/// Set task `id`'s affinity (tests: a task moved between CPUs while it runs). It moves when
/// it is next placed: woken from a block, or stolen. False if there is no such task.
pub fn set_affinity_for_test(id: TaskId, aff: catenary_sched::Affinity) -> bool {
    aff.0 != 0 && with(|k| k.sched.set_affinity(id, aff).is_ok())
}

/// The CPU task `id` runs on, or last ran or was queued on (tests).
pub fn cpu_of(id: TaskId) -> Option<usize> {
    with(|k| k.sched.task(id).map(|t| t.cpu))
}

/// Kill a task that is not running right now (tests). Returns whether it was killed.
pub fn kill_for_test(id: TaskId) -> bool {
    with(|k| kill_not_running(k, id, killed_by(0xff)))
}

/// Kill two tasks that are not running right now, under one hold of the kernel lock (tests):
/// nothing runs between the two deaths. Returns whether both were killed (neither, if either
/// is running, dead or unknown).
#[cfg(feature = "ktest")]
pub fn kill_two_for_test(a: TaskId, b: TaskId) -> bool {
    with(|k| {
        let idle = |k: &Kernel, id| matches!(k.sched.task(id).map(|t| t.state), Some(TaskState::Ready | TaskState::Blocked(_)));
        a != b && idle(k, a) && idle(k, b) && kill_not_running(k, a, killed_by(0xff)) && kill_not_running(k, b, killed_by(0xff))
    })
}

/// Kill task `id` with exit `code` if it is ready or blocked (not running on any CPU): its
/// callers and joiners are released and its frames and address space go back now. False if
/// it is running, dead or unknown.
pub(super) fn kill_not_running(k: &mut Kernel, id: TaskId, code: u64) -> bool {
    let state = k.sched.task(id).map(|t| t.state);
    if let Some(TaskState::Blocked(BlockReason::Reply(tok))) = state {
        // a call to another node: no longer wanted (as when it times out)
        k.remote.calls_out.remove(&tok);
        k.remote.out.retain(|o| o.token != tok);
    }
    match state {
        Some(TaskState::Ready) | Some(TaskState::Blocked(_)) => {
            supervisor::on_death(k, id, code);
            let rep = k.ipc.task_died(id);
            grants_on_death(k, id);
            k.remote.bound.remove(&id);
            let _ = k.sched.kill(id);
            k.exit_codes.insert(id, code);
            for (w, e) in rep.wake_with_error {
                complete(k, w, Err(err(e)));
            }
            wake_joiners(k, id, code);
            reap_dead(k, id);
            true
        }
        _ => false,
    }
}
