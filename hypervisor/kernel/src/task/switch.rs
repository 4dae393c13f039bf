//! The context switch: saving and loading a task's frame, picking the next task, waking and
//! killing tasks.

use super::*;

pub(super) fn save(k: &mut Kernel, f: &mut TrapFrame, id: TaskId) {
    if let Some(t) = k.sched.task_mut(id) {
        t.context.frame = *f;
        t.context.fx.copy_from_slice(uspace::fx_area(f));
    }
}

pub(super) fn load(k: &mut Kernel, f: &mut TrapFrame, id: TaskId) {
    let t = k.sched.task_mut(id).expect("picked task exists");
    *f = t.context.frame;
    uspace::fx_area(f).copy_from_slice(&t.context.fx[..]);
    uspace::switch_cr3(t.context.space.as_ref());
    uspace::set_io_bitmap(id, t.context.io.as_deref());
}

/// Free the stacks of dead kernel tasks this CPU no longer runs on (a dying kernel task
/// enters the kernel for its exit on its own stack: its stack waits here for the next entry),
/// and let this CPU's TLB catch up with freed stack addresses. At every tick and switch.
pub(super) fn free_dead_stacks(k: &mut Kernel) {
    let c = smp::cpu_index();
    paging::tlb_catch_up();
    if let Some(dead) = k.dead_stacks.get_mut(c) {
        if !dead.is_empty() {
            let sp = cpu::stack_pointer();
            dead.retain(|s| s.contains(sp));
        }
    }
}

/// Pick the next task for this CPU and make `f` its frame.
pub(super) fn resched(k: &mut Kernel, f: &mut TrapFrame) {
    free_dead_stacks(k);
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
                uspace::switch_cr3(None);
                uspace::set_io_bitmap(0, None);
                k.on_idle[c] = true;
            }
        }
    }
    if let Some(p) = prev {
        reap_dead(k, p);
    }
}

/// Free a dead task's frames and address space once no CPU runs it any more.
pub(super) fn reap_dead(k: &mut Kernel, id: TaskId) {
    if k.sched.task(id).map(|t| t.state == TaskState::Dead).unwrap_or(false) {
        if let Some(mut t) = k.sched.reap(id) {
            if let Some(s) = t.context.kstack.take() {
                // this CPU may be running on it right now (the task's own exit)
                let c = smp::cpu_index();
                k.dead_stacks[c].push(s);
            }
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

pub(super) fn put_msg(f: &mut TrapFrame, m: &Message) {
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
