//! The context switch: saving and loading a task's frame, picking the next task, waking and
//! killing tasks.

use super::*;

/// Save `f` (this CPU's entry frame) into task `prev` (`None`: this CPU was idle) and load task
/// `next` (`None`: the idle loop). `catenary_arch::context::switch` moves the kernel stack a
/// ring-0 frame runs on along with it. False if `next` had no saved frame (then this CPU
/// idles; cannot happen for a task the scheduler picked).
pub(super) fn switch_to(k: &mut Kernel, f: &mut TrapFrame, prev: Option<TaskId>, next: Option<TaskId>) -> bool {
    watchdog::on_switch(k, prev);
    let c = smp::cpu_index();
    let idle = k.idle_stack[c];
    // Two tasks of one table: `next`'s context is swapped out into `k.spare` (an empty one)
    // for the switch and swapped back after: no allocation here.
    let swapped = match next.and_then(|n| k.sched.task_mut(n)) {
        Some(t) => {
            core::mem::swap(&mut t.context.frame, &mut k.spare);
            true
        }
        None => false,
    };
    let prev_ctx = prev.and_then(|p| k.sched.task_mut(p)).map(|t| &mut t.context.frame);
    let to = if swapped && k.spare.is_loadable() { context::Next::Task(&mut k.spare) } else { context::Next::Idle(idle) };
    let loaded = matches!(to, context::Next::Task(_));
    if let Err(e) = context::switch(f, prev_ctx, to) {
        panic!("context switch on a frame that is not this CPU's task entry: {e:?}");
    }
    stages::mark(stages::CONTEXT);
    if let Some(t) = next.filter(|_| swapped).and_then(|n| k.sched.task_mut(n)) {
        core::mem::swap(&mut t.context.frame, &mut k.spare);
    }
    match next.filter(|_| loaded).and_then(|n| k.sched.task(n)) {
        Some(t) => {
            uspace::switch_cr3(t.context.space.as_ref());
            uspace::set_io_bitmap(next.unwrap_or(0), t.context.io.as_deref());
        }
        None => {
            uspace::switch_cr3(None);
            uspace::set_io_bitmap(0, None);
        }
    }
    stages::mark(stages::SPACE);
    loaded
}

/// Let this CPU's TLB catch up with freed stack addresses and unmapped user pages. At every
/// tick and switch. (Dead kernel tasks' stacks are freed with their contexts: see `reap_dead`.)
pub(super) fn free_dead_stacks(_: &mut Kernel) {
    paging::tlb_catch_up();
}

/// Pick the next task for this CPU and make `f` its frame.
pub(super) fn resched(k: &mut Kernel, f: &mut TrapFrame) {
    stages::mark(stages::WAKE);
    free_dead_stacks(k);
    let c = smp::cpu_index();
    let prev = if k.on_idle[c] { None } else { k.sched.current(c) };
    let next = k.sched.switch(c);
    stages::mark(stages::PICK);
    if next == prev && prev.is_some() {
        return;
    }
    if next.is_some() || !k.on_idle[c] {
        let loaded = switch_to(k, f, prev, next);
        if let (Some(n), false) = (next, loaded) {
            warn!("cpu {c}: task {n} had no saved context; idling");
        }
        k.on_idle[c] = !loaded;
    }
    if let Some(p) = prev {
        reap_dead(k, p);
    }
}

/// Free a dead task's frames and address space once no CPU runs it any more.
pub(super) fn reap_dead(k: &mut Kernel, id: TaskId) {
    if k.sched.task(id).map(|t| t.state == TaskState::Dead).unwrap_or(false) {
        if let Some(t) = k.sched.reap(id) {
            // A kernel task's stack is freed with its context (`t` dropped at the end): no CPU
            // runs on it, or its context would not hold it (`context::switch` moves it).
            supervisor::before_free(k, id, t.context.frames.len());
            match t.context.space {
                Some(s) => discard(s, t.context.frames),
                None => debug_assert!(t.context.frames.is_empty()),
            }
        }
    }
}

/// Wake `id`, sending a reschedule IPI to its CPU if it should run there now.
pub(super) fn wake(k: &mut Kernel, id: TaskId) -> bool {
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

pub(super) fn put_msg(f: &mut GpRegs, m: &Message) {
    f.rax = 0;
    f.rdi = m.badge;
    f.rsi = m.label;
    f.rdx = m.words[0];
    f.r10 = m.words[1];
    f.r8 = m.words[2];
    f.r9 = m.words[3];
    f.r12 = m.reply;
    // kernel-set: words 2 and 3 are a grant this receiver has mapped (see `deliver_grant`)
    f.r13 = if m.grant.is_some() && m.words[2] != 0 { MSG_FLAG_GRANT } else { 0 };
}

pub(super) fn err(e: IpcError) -> u64 {
    e.code().wrapping_neg()
}

/// Complete the blocking operation of task `id` with `m` (or an error) and wake it.
pub(super) fn complete(k: &mut Kernel, id: TaskId, r: Result<Message, u64>) -> bool {
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

pub(super) fn kill_current(k: &mut Kernel, f: &mut TrapFrame, code: u64) {
    let c = smp::cpu_index();
    let Some(me) = k.sched.current(c) else { return };
    supervisor::on_death(k, me, code);
    let rep = k.ipc.task_died(me);
    grants_on_death(k, me);
    k.remote.bound.remove(&me);
    let _ = k.sched.kill(me);
    k.exit_codes.insert(me, code);
    for (w, e) in rep.wake_with_error {
        complete(k, w, Err(err(e)));
    }
    wake_joiners(k, me, code);
    resched(k, f);
}

/// Wake the tasks waiting in `join` for `dead`, with its exit code.
pub(super) fn wake_joiners(k: &mut Kernel, dead: TaskId, code: u64) {
    let joiners: Vec<TaskId> =
        k.sched.tasks().filter(|t| t.state == TaskState::Blocked(BlockReason::Join(dead))).map(|t| t.id).collect();
    for j in joiners {
        if let Some(t) = k.sched.task_mut(j) {
            t.context.frame.rax = code;
        }
        wake(k, j);
    }
}
