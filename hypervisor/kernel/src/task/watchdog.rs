//! The spin watchdog: a ring-3 task that runs [`limit_ms`] of CPU time without one system
//! call is hung (an endless loop in a service), not working: it is killed like a faulting
//! task, with a register dump and exit code [`WATCHDOG_CODE`], and the supervisor restarts it
//! as after a crash. Without it a service stuck in a loop held its CPU's lower-priority tasks
//! and every task that called it (an `apid` call to a looping `memberd` never returned) for
//! ever: a bad task must hurt only itself. A call the killed task had taken fails with
//! `DeadPeer`; calls queued at a service's endpoint wait for its restart.
//!
//! Counting, without a clock read on the system call path: each CPU has a flag that a system
//! call sets (`on_syscall`). A task's quiet ticks go back to 0 whenever the flag is seen set
//! while it is the CPU's task (at a timer tick, or when it is switched out); a tick that
//! interrupts it in ring 3 with the flag clear adds one. So only CPU time counts (a task
//! preempted or blocked is not charged), and any system call (a `recv`, a `log`, a clock
//! read) shows the task is alive. Kernel tasks and vCPU tasks (no address space) are not
//! watched: a guest's time is the guest's. A loop that keeps making system calls is not
//! caught here: that takes a heartbeat (`heartbeat`), which a service arms itself.

use super::*;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The exit code of a task the watchdog killed (as `killed_by(vector)` is an exception's;
/// `catenary_ipc::supervisor::WATCHDOG_CODE`).
pub const WATCHDOG_CODE: u64 = catenary_ipc::supervisor::WATCHDOG_CODE;

/// CPU time without a system call after which a ring-3 task is killed. No service ran 80 ms
/// without one in the whole QEMU test suite (docs/microkernel.md, "Hung tasks: the spin
/// watchdog"): a service's loop makes a system call every few milliseconds.
pub const LIMIT_MS: u32 = 10_000;

static LIMIT_TICKS: AtomicU32 = AtomicU32::new(LIMIT_MS * crate::init::TIMER_HZ / 1000);

/// A system call entered the kernel on this CPU since its task was last looked at.
static SYSCALLED: [AtomicBool; smp::MAX_CPUS] = [const { AtomicBool::new(false) }; smp::MAX_CPUS];

/// The limit now, in ms.
pub fn limit_ms() -> u64 {
    LIMIT_TICKS.load(Ordering::Relaxed) as u64 * 1000 / crate::init::TIMER_HZ as u64
}

/// Set the limit (tests: a spinner killed in a fraction of a second); at least one tick.
/// `None`: back to [`LIMIT_MS`].
pub fn set_limit_for_test(ms: Option<u32>) {
    let ms = ms.unwrap_or(LIMIT_MS);
    LIMIT_TICKS.store((ms * crate::init::TIMER_HZ / 1000).max(1), Ordering::Relaxed);
}

/// A system call entered the kernel on this CPU (first thing `on_syscall` does).
pub(super) fn note_syscall() {
    SYSCALLED[smp::cpu_index()].store(true, Ordering::Relaxed);
}

/// `prev` leaves this CPU (`switch_to`): the system calls it made count.
pub(super) fn on_switch(k: &mut Kernel, prev: Option<TaskId>) {
    if SYSCALLED[smp::cpu_index()].swap(false, Ordering::Relaxed) {
        if let Some(t) = prev.and_then(|p| k.sched.task_mut(p)) {
            t.context.quiet_ticks = 0;
        }
    }
}

/// A timer tick on this CPU, which interrupted `f`: charge the CPU's task. `Some((task,
/// message, exit code))` when it is a ring-3 task to be killed (by the caller, after the
/// register dump is printed outside the kernel lock): over the limit, or one that missed its
/// heartbeat (`heartbeat::scan` marked it while it ran).
pub(super) fn on_tick(k: &mut Kernel, f: &TrapFrame) -> Option<(TaskId, String, u64)> {
    let c = smp::cpu_index();
    let syscalled = SYSCALLED[c].swap(false, Ordering::Relaxed);
    if k.on_idle[c] {
        return None;
    }
    let id = k.sched.current(c)?;
    let now = k.ticks;
    let t = k.sched.task_mut(id)?;
    if f.is_user() && super::heartbeat::doomed(t) {
        return Some((id, super::heartbeat::kill_message(id, t, now), super::heartbeat::HEARTBEAT_CODE));
    }
    if syscalled {
        t.context.quiet_ticks = 0;
        return None;
    }
    if !f.is_user() || t.context.space.is_none() {
        return None;
    }
    t.context.quiet_ticks = t.context.quiet_ticks.saturating_add(1);
    let limit = LIMIT_TICKS.load(Ordering::Relaxed);
    let ms = t.context.quiet_ticks as u64 * 1000 / crate::init::TIMER_HZ as u64;
    if t.context.quiet_ticks >= limit {
        let msg = alloc::format!("WATCHDOG: ring-3 task {id} \"{}\" ran {ms} ms of CPU without a system call (hung) - killing the task", t.name);
        return Some((id, msg, WATCHDOG_CODE));
    }
    // a quarter of the way: said once, so a near miss shows in the log
    if t.context.quiet_ticks == limit / 4 && limit >= 8 {
        warn!(target: "watchdog", "task {} \"{}\" has run {} ms without a system call (killed at {} ms)", id, t.name, ms, limit_ms());
    }
    None
}
