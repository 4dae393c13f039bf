//! The IPC fastpath: a call to a receiver that waits, and the receiver's combined
//! reply-and-receive (`SYS_REPLY_RECV`), switch this CPU straight to the partner (after
//! seL4's fastpath): the message goes into the partner's saved registers and
//! `Scheduler::hand_over` makes it the running task without the run queues, unless a higher
//! priority is ready here or the partner may not run here (then the ordinary wake-up and
//! reschedule run).

use core::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Direct switches made (tests check that the fastpath is taken).
static HANDOFFS: AtomicU64 = AtomicU64::new(0);

/// Direct switches made since boot.
pub fn fastpath_handoffs() -> u64 {
    HANDOFFS.load(Ordering::Relaxed)
}

/// Give `to` (blocked, waiting for `me`) message `m` and switch this CPU straight to it;
/// `me` has just blocked. False if the direct switch is not allowed (nothing was switched;
/// `to` holds the message and is still blocked: the caller wakes it the ordinary way).
pub(super) fn hand_to(k: &mut Kernel, f: &mut TrapFrame, me: TaskId, to: TaskId, m: Message) -> bool {
    let Some(t) = k.sched.task_mut(to) else { return false };
    put_msg(&mut t.context.frame, &m);
    t.context.origin = m.origin;
    stages::mark(stages::WAKE);
    let c = smp::cpu_index();
    if k.on_idle[c] || k.sched.hand_over(c, me, to).is_err() {
        return false;
    }
    HANDOFFS.fetch_add(1, Ordering::Relaxed);
    stages::mark(stages::PICK);
    free_dead_stacks(k);
    let loaded = switch_to(k, f, Some(me), Some(to));
    if !loaded {
        warn!("cpu {c}: task {to} had no saved context; idling");
    }
    k.on_idle[c] = !loaded;
    true
}

/// `SYS_REPLY_RECV(token, label, w0..w3; r13 = receive slot)`: answer call `token` (as
/// `SYS_REPLY`) and receive on the slot (as `SYS_RECV` without a timeout). A bad slot or
/// token refuses the whole call (nothing answered, nothing received); a failure to receive
/// after the answer went out is returned as the receive's error.
pub(super) fn reply_recv(k: &mut Kernel, f: &mut TrapFrame, me: TaskId) {
    let (token, slot) = (f.rdi, f.r13);
    let ep = match k.sched.task(me).map(|t| t.context.caps.check(slot as usize, Rights::RECV)) {
        Some(Ok(cap)) => cap.target.endpoint,
        Some(Err(e)) => return f.rax = err(e),
        None => return f.rax = err(IpcError::NoEndpoint),
    };
    if k.ipc.caller_of(me, token).is_none() {
        return f.rax = err(IpcError::BadReply);
    }
    revoke_on_reply(k, me, token);
    let answered = match k.ipc.reply(me, token, msg_from(f)) {
        Ok((REMOTE, m)) => {
            // the answer to a call from another node: back through netd
            let mut preempt = false;
            if let Some(to) = k.remote.calls_in.remove(&token) {
                k.remote.replies.push_back(RemoteReply { to, result: Ok(m) });
                preempt = wake_router(k);
            }
            Err(preempt)
        }
        Ok((caller, m)) => Ok((caller, m)),
        Err(e) => return f.rax = err(e),
    };
    let r = k.ipc.recv(me, ep);
    stages::mark(stages::IPC);
    match r {
        Ok(None) => {
            let _ = k.sched.block(me, BlockReason::Recv(ep), None);
            if let Ok((caller, m)) = answered {
                if hand_to(k, f, me, caller, m) {
                    return;
                }
                wake(k, caller);
            }
            resched(k, f);
        }
        got => {
            let preempt = match answered {
                Ok((caller, m)) => complete(k, caller, Ok(m)),
                Err(p) => p,
            };
            match got {
                Ok(Some(mut m)) => {
                    deliver_grant(k, me, &mut m);
                    put_msg(f, &m);
                    if let Some(t) = k.sched.task_mut(me) {
                        t.context.origin = m.origin;
                    }
                }
                Err(e) => f.rax = err(e),
                Ok(None) => {}
            }
            if preempt {
                resched(k, f);
            }
        }
    }
}
