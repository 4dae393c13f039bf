//! Cycle accounting by stage of the kernel's entry, IPC and switch paths: the breakdown the
//! IPC benchmark prints (`bench=ipc`, docs/microkernel.md "Benchmark"). Off unless a
//! benchmark turns it on; then every [`mark`] adds the TSC cycles since this CPU's previous
//! mark to the stage it names, so the stages of one CPU add up to its whole time.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::percpu::MAX_CPUS;

/// Ring 3 and the entry/exit assembly (XRSTOR, `iretq`/`sysret`, user code, `syscall`,
/// XSAVE), from the last handler's end to this entry's Rust dispatch.
pub const USER: usize = 0;
/// The same from a ring-0 frame (the idle loop or a kernel task).
pub const KERNEL_OTHER: usize = 1;
/// Dispatch start to the kernel lock held.
pub const LOCK: usize = 2;
/// The IPC operation (capability, endpoint, call/reply bookkeeping).
pub const IPC: usize = 3;
/// Blocking the caller, delivering the message, waking the receiver.
pub const WAKE: usize = 4;
/// Picking the next task (`Scheduler::switch`).
pub const PICK: usize = 5;
/// Moving the frame and FPU image out of and into task contexts.
pub const CONTEXT: usize = 6;
/// Loading the next address space (CR3) and I/O bitmap.
pub const SPACE: usize = 7;
/// From there to the end of the Rust handler (unlock, the return checks).
pub const TAIL: usize = 8;
/// Stage visits longer than [`OUTLIER`] cycles, whatever the stage.
pub const OUTLIERS: usize = 9;
/// Number of stages.
pub const COUNT: usize = 10;
/// A stage visit longer than this (cycles; ~20 us at 2.6 GHz, a third of a whole call/reply
/// before this work) goes to [`OUTLIERS`].
pub const OUTLIER: u64 = 50_000;
/// Their names, for printing.
pub const NAMES: [&str; COUNT] =
    ["ring 3 + entry/exit asm", "idle / kernel task", "entry to lock", "ipc operation", "block + deliver + wake", "pick next", "context copy", "cr3 + io bitmap", "unlock + return", "outliers"];

static ON: AtomicBool = AtomicBool::new(false);
static LAST: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SUM: [[AtomicU64; COUNT]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; COUNT] }; MAX_CPUS];
/// Kernel entries by system call number 0..31 while on (the benchmark divides by them).
static SYSCALLS: [AtomicU64; 32] = [const { AtomicU64::new(0) }; 32];

/// Add the cycles since this CPU's last mark to `stage` (nothing while off).
#[inline]
pub fn mark(stage: usize) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let now = crate::cpu::rdtsc();
    let c = crate::percpu::cpu_index();
    let (Some(last), Some(sums)) = (LAST.get(c), SUM.get(c)) else { return };
    let was = last.swap(now, Ordering::Relaxed);
    let d = now.wrapping_sub(was);
    if was != 0 && stage < COUNT {
        // A stage this long was interrupted (the host descheduled the vCPU, another task's
        // work): counted apart, so the means describe the undisturbed path.
        sums[if d > OUTLIER { OUTLIERS } else { stage }].fetch_add(d, Ordering::Relaxed);
    }
}

/// Count a system call `nr` (while on).
#[inline]
pub fn count_syscall(nr: u64) {
    if ON.load(Ordering::Relaxed) {
        if let Some(s) = SYSCALLS.get(nr as usize) {
            s.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Zero the sums and start accounting.
pub fn start() {
    ON.store(false, Ordering::SeqCst);
    LAST.iter().for_each(|l| l.store(0, Ordering::SeqCst));
    SUM.iter().flatten().chain(SYSCALLS.iter()).for_each(|s| s.store(0, Ordering::SeqCst));
    ON.store(true, Ordering::SeqCst);
}

/// Each stage's cycles on CPU `cpu` since [`start`].
pub fn sums(cpu: usize) -> [u64; COUNT] {
    core::array::from_fn(|i| SUM.get(cpu).map_or(0, |s| s[i].load(Ordering::SeqCst)))
}

/// Stop accounting; the system calls counted, by number.
pub fn stop() -> [u64; 32] {
    ON.store(false, Ordering::SeqCst);
    core::array::from_fn(|i| SYSCALLS[i].load(Ordering::SeqCst))
}
