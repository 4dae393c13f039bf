//! Interrupts and exceptions: the timer tick, reschedule IPIs, device interrupts delivered as
//! IPC notifications, and faults in ring 3.

use super::*;

pub(super) fn on_tick(f: &mut TrapFrame) {
    let mut dumps = Vec::new();
    let hung = with(|k| {
        // first, while `f` is still the interrupted task's
        if let Some(h) = watchdog::on_tick(k, f) {
            return Some(h);
        }
        free_dead_stacks(k);
        let c = smp::cpu_index();
        if c == 0 {
            k.ticks += 1;
            if k.ticks % heartbeat::SCAN_TICKS == 0 {
                dumps = heartbeat::scan(k);
            }
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
        None
    });
    for d in dumps {
        catenary_arch::println!("{d}");
    }
    // A ring-3 task over the watchdog's limit, or late with its heartbeat: dumped (outside
    // the lock, as a fault is) and killed; this tick's other work waits for the next tick
    // (10 ms).
    if let Some((id, msg, code)) = hung {
        catenary_arch::trap::print_interrupted(f, &msg);
        with(|k| {
            if k.sched.current(smp::cpu_index()) == Some(id) {
                supervisor::note_fault(k, id, f.rip());
                kill_current(k, f, code);
            }
        });
    }
}

pub(super) fn on_resched(f: &mut TrapFrame) {
    with(|k| {
        let c = smp::cpu_index();
        if k.on_idle[c] || k.sched.should_preempt(c) {
            resched(k, f);
        }
    })
}

pub(super) fn on_rtc_irq(f: &mut TrapFrame) {
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

/// Interrupts taken per vector bound with [`bind_irq_notification`].
static IRQ_COUNT: [core::sync::atomic::AtomicU64; 256] = [const { core::sync::atomic::AtomicU64::new(0) }; 256];

/// Deliver interrupt `vector` as an IPC notification (`bits`) to endpoint `ep`, the mechanism
/// ring-3 drivers use (rtcd), open to kernel tasks too (`netd` waits for its NIC with `recv`).
/// A notification that arrives while nobody waits stays pending, so a `recv` after it returns
/// at once: no wakeup is lost between a driver's last poll and its wait.
pub fn bind_irq_notification(vector: u8, ep: EndpointId, bits: u64) {
    with(|k| k.irq_notify.insert(vector, (ep, bits)));
    catenary_arch::trap::register_irq(vector, on_bound_irq);
}


/// How many times `vector` (bound with [`bind_irq_notification`]) fired.
pub fn irq_count(vector: u8) -> u64 {
    IRQ_COUNT[vector as usize].load(core::sync::atomic::Ordering::Relaxed)
}

pub(super) fn on_bound_irq(f: &mut TrapFrame) {
    let v = f.vector() as u8;
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

pub(super) fn on_exception(f: &mut TrapFrame) -> bool {
    if !f.is_user() {
        return false; // a kernel fault: dump and stop, as before
    }
    let (id, name) = with(|k| {
        let id = k.sched.current(smp::cpu_index()).unwrap_or(0);
        (id, k.sched.task(id).map(|t| t.name.clone()).unwrap_or_default())
    });
    catenary_arch::trap::print_dump(f, &alloc::format!("in ring-3 task {} \"{}\" - killing the task", id, name));
    // what the supervisor is told: the faulting address of a page fault, else where it ran
    let addr = if f.vector() == 14 { cpu::read_cr2() } else { f.rip() };
    with(|k| {
        supervisor::note_fault(k, id, addr);
        kill_current(k, f, killed_by(f.vector()))
    });
    true
}
