//! Heartbeats: the hung services the spin watchdog (`watchdog`) cannot see. A service's main
//! loop that stopped going round while it still makes system calls (retrying a call that
//! fails at once, sleeping in a loop that waits for something that never comes, blocked in a
//! receive nobody will answer) looks alive to the watchdog. A task that arms a heartbeat
//! (`SYS_ALIVE(period_ms)`, normally at the top of its main loop) promises the next one within
//! the period; CPU 0 looks every [`SCAN_TICKS`] ticks, and a task that missed its promise is
//! killed like a faulting task: a register dump under `!!! HEARTBEAT:`, exit code
//! [`HEARTBEAT_CODE`], and the supervisor restarts it.
//!
//! What counts: time the task runs, sleeps, or waits in a receive or a join (its own doing).
//! What does not: time it is ready but not running (the CPU's fault: a loaded node must not
//! kill its services), and time it waits for the reply to a call (the callee's: it has its own
//! heartbeat or watchdog, and a call to it fails with `DeadPeer` when it dies). Both are
//! sampled at each look (100 ms grain), and the credit never exceeds one period.
//!
//! The kill: a task not running at the look is killed there (its saved registers are the
//! dump); a running one is marked and killed by its CPU's next tick that interrupts it in ring
//! 3 (`watchdog::on_tick`), or by a later look once it blocks.

use super::*;

/// The exit code of a task that missed its heartbeat (`catenary_ipc::supervisor`).
pub const HEARTBEAT_CODE: u64 = catenary_ipc::supervisor::HEARTBEAT_CODE;

/// CPU 0 looks every this many timer ticks (100 ms).
pub(super) const SCAN_TICKS: u64 = 10;

/// A task's armed heartbeat.
#[derive(Clone, Copy, Debug)]
pub struct Beat {
    period_ns: u64,
    /// The next heartbeat is due by then (moved on by excused time).
    due_ns: u64,
    /// Missed: killed as soon as it is not running (or at its next ring-3 tick).
    doomed: bool,
}

/// `SYS_ALIVE(period_ms)`: arm or renew the caller's heartbeat. A task already found late
/// stays doomed: a beat after the deadline does not undo the miss.
pub(super) fn sys_alive(k: &mut Kernel, me: TaskId, period_ms: u64) -> u64 {
    if !(HEARTBEAT_MIN_MS..=HEARTBEAT_MAX_MS).contains(&period_ms) {
        return ERR_BAD_ARG.wrapping_neg();
    }
    let Some(t) = k.sched.task_mut(me) else { return err(IpcError::NoEndpoint) };
    let period_ns = period_ms * 1_000_000;
    let doomed = t.context.heartbeat.is_some_and(|b| b.doomed);
    t.context.heartbeat = Some(Beat { period_ns, due_ns: time::now_ns().saturating_add(period_ns), doomed });
    0
}

/// Whether the task running on this CPU was found late (`watchdog::on_tick` kills it).
pub(super) fn doomed(t: &catenary_sched::Tcb<Ctx>) -> bool {
    t.context.heartbeat.is_some_and(|b| b.doomed)
}

/// The message of a heartbeat kill (the register dump's title).
pub(super) fn kill_message(id: TaskId, name: &str, period_ns: u64) -> String {
    alloc::format!("HEARTBEAT: ring-3 task {id} \"{name}\" missed its heartbeat (period {} ms) - killing the task", period_ns / 1_000_000)
}

/// The period of task `id`'s heartbeat (0: none).
pub(super) fn period_ns(t: &catenary_sched::Tcb<Ctx>) -> u64 {
    t.context.heartbeat.map_or(0, |b| b.period_ns)
}

/// CPU 0's look, `elapsed` ns after the previous one: move excused tasks' deadlines on, mark
/// late ones, and kill the late ones that are not running.
pub(super) fn scan(k: &mut Kernel, now: u64, elapsed: u64) {
    let armed: Vec<TaskId> = k.sched.tasks().filter(|t| t.context.heartbeat.is_some()).map(|t| t.id).collect();
    for id in armed {
        let Some(t) = k.sched.task_mut(id) else { continue };
        let state = t.state;
        let Some(b) = t.context.heartbeat.as_mut() else { continue };
        match state {
            TaskState::Dead => continue,
            _ if b.doomed => {}
            TaskState::Ready | TaskState::Blocked(BlockReason::Reply(_)) => {
                b.due_ns = b.due_ns.saturating_add(elapsed).min(now.saturating_add(b.period_ns));
                continue;
            }
            _ if now > b.due_ns => b.doomed = true,
            _ => continue,
        }
        if matches!(state, TaskState::Running(_)) {
            continue; // its CPU's next ring-3 tick, or a later look
        }
        let msg = kill_message(id, &t.name, b.period_ns);
        let rip = t.context.frame.frame().rip();
        catenary_arch::trap::print_interrupted(t.context.frame.frame(), &msg);
        supervisor::note_fault(k, id, rip);
        kill_not_running(k, id, HEARTBEAT_CODE);
    }
}
