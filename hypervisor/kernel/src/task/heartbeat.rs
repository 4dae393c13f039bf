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
//! heartbeat or watchdog, and a call to it fails with `DeadPeer` when it dies). Time is counted
//! in looks, [`SCAN_MS`] each, by the state the task is in at the look: timer ticks, not the
//! clock, so a node whose CPUs were held up (a virtual machine its host did not run) counts
//! only the time it ran. A task is late at the first look that finds less than [`SCAN_MS`] of
//! its period left: between one period and one period plus one look after its last beat.
//!
//! The kill: a task not running at the look is killed there (its saved registers are the
//! dump, printed once the kernel lock is released); a running one is marked and killed by its CPU's next tick that interrupts it in ring
//! 3 (`watchdog::on_tick`), or by a later look once it blocks.

use super::*;

/// The exit code of a task that missed its heartbeat (`catenary_ipc::supervisor`).
pub const HEARTBEAT_CODE: u64 = catenary_ipc::supervisor::HEARTBEAT_CODE;

/// CPU 0 looks every this many timer ticks.
pub(super) const SCAN_TICKS: u64 = 10;
/// The time one look counts (100 ms).
pub(super) const SCAN_MS: u64 = SCAN_TICKS * 1000 / crate::init::TIMER_HZ as u64;

/// A task's armed heartbeat.
#[derive(Clone, Copy, Debug)]
pub struct Beat {
    period_ms: u64,
    /// What is left of the period since the last beat (counted time only).
    left_ms: u64,
    /// Missed: killed as soon as it is not running (or at its next ring-3 tick).
    doomed: bool,
    /// CPU 0's tick count at the last beat: the kill line says how long ago that was by the
    /// timer (the tests' bound; a loaded host loses ticks, so the clock can say far more).
    beat_tick: u64,
}

/// `SYS_ALIVE(period_ms)`: arm or renew the caller's heartbeat. A task already found late
/// stays doomed: a beat after the deadline does not undo the miss.
pub(super) fn sys_alive(k: &mut Kernel, me: TaskId, period_ms: u64) -> u64 {
    if !(HEARTBEAT_MIN_MS..=HEARTBEAT_MAX_MS).contains(&period_ms) {
        return ERR_BAD_ARG.wrapping_neg();
    }
    let now = k.ticks;
    let Some(t) = k.sched.task_mut(me) else { return err(IpcError::NoEndpoint) };
    let beat = match t.context.heartbeat {
        // a beat after the miss changes nothing: the kill line tells of the missed one
        Some(b) if b.doomed => b,
        _ => Beat { period_ms, left_ms: period_ms, doomed: false, beat_tick: now },
    };
    t.context.heartbeat = Some(beat);
    0
}

/// Whether the task running on this CPU was found late (`watchdog::on_tick` kills it).
pub(super) fn doomed(t: &catenary_sched::Tcb<Ctx>) -> bool {
    t.context.heartbeat.is_some_and(|b| b.doomed)
}

/// The message of a heartbeat kill (the register dump's title), at CPU 0's tick `now`: the
/// period, and the time since the last beat by the timer (counted or not: ready time too).
pub(super) fn kill_message(id: TaskId, t: &catenary_sched::Tcb<Ctx>, now: u64) -> String {
    let (period_ms, ago_ms) = t.context.heartbeat.map_or((0, 0), |b| (b.period_ms, now.saturating_sub(b.beat_tick) * 1000 / crate::init::TIMER_HZ as u64));
    alloc::format!("HEARTBEAT: ring-3 task {id} \"{}\" missed its heartbeat (period {period_ms} ms; last beat {ago_ms} ms ago by the timer) - killing the task", t.name)
}

/// CPU 0's look: count [`SCAN_MS`] against each armed task that is not excused, mark late
/// ones, and kill the late ones that are not running. Returns the register dumps of those
/// killed, for the caller to print once it has released the kernel lock.
pub(super) fn scan(k: &mut Kernel) -> Vec<String> {
    let mut dumps = Vec::new();
    let now = k.ticks;
    let armed: Vec<TaskId> = k.sched.tasks().filter(|t| t.context.heartbeat.is_some()).map(|t| t.id).collect();
    for id in armed {
        let Some(t) = k.sched.task_mut(id) else { continue };
        let state = t.state;
        let Some(b) = t.context.heartbeat.as_mut() else { continue };
        match state {
            TaskState::Dead => continue,
            _ if b.doomed => {}
            TaskState::Ready | TaskState::Blocked(BlockReason::Reply(_)) => continue,
            _ if b.left_ms < SCAN_MS => b.doomed = true,
            _ => {
                b.left_ms -= SCAN_MS;
                continue;
            }
        }
        if matches!(state, TaskState::Running(_)) {
            continue; // its CPU's next ring-3 tick, or a later look
        }
        let msg = kill_message(id, t, now);
        let f = t.context.frame.frame();
        let rip = f.rip();
        dumps.push(saved_dump(f, &msg));
        supervisor::note_fault(k, id, rip);
        kill_not_running(k, id, HEARTBEAT_CODE);
    }
    dumps
}

/// The register dump of a task that is not running: its registers as saved when it last
/// left ring 3 (no control registers: the CPU's own would not be the task's).
fn saved_dump(f: &catenary_arch::trap::TrapFrame, what: &str) -> String {
    alloc::format!("\n!!! {what} [not running: registers as saved when it last left ring 3]\n{}", f.general_registers())
}
