//! System call dispatch (the ABI is in the module docs of `task`).

use super::*;

pub(super) fn on_syscall(f: &mut TrapFrame) {
    watchdog::note_syscall();
    // Calls whose slow part (zeroing memory, the UART) runs without the kernel lock.
    match f.rax {
        SYS_MAP => sys_map(f),
        SYS_DMA_ALLOC => sys_dma_alloc(f),
        SYS_LOG => sys_log(f),
        SYS_NET => super::netd::sys_net(f),
        SYS_VM => super::vmctl::sys_vm(f),
        _ => with(|k| syscall(k, f)),
    }
}

/// The deadline `ns` from now (0 = none); saturates instead of wrapping to the past.
pub(super) fn deadline(ns: u64) -> Option<u64> {
    (ns != 0).then(|| time::now_ns().saturating_add(ns))
}

/// Longest `SYS_LOG` line (bytes).
const LOG_MAX: u64 = 200;

/// `SYS_LOG(ptr, len)`: copy at most `LOG_MAX` bytes of the caller's RAM under the lock, print
/// them after releasing it.
fn sys_log(f: &mut TrapFrame) {
    let (ptr, len) = (f.rdi, f.rsi.min(LOG_MAX));
    let got = with(|k| {
        let me = k.sched.current(smp::cpu_index())?;
        let t = k.sched.task(me)?;
        let r = UserRange::new(ptr, len).ok()?;
        let mut buf = alloc::vec![0u8; len as usize];
        t.context.space.as_ref()?.copy_from_user(r, &mut buf).ok()?;
        Some((me, t.name.clone(), buf))
    });
    match got {
        Some((me, name, buf)) => {
            info!(target: "user", "[{} {}] {}", me, name, String::from_utf8_lossy(&buf));
            f.rax = 0;
        }
        None => f.rax = ERR_BAD_ARG.wrapping_neg(),
    }
}

pub(super) fn msg_from(f: &TrapFrame) -> Message {
    Message::new(f.rsi, [f.rdx, f.r10, f.r8, f.r9])
}

pub(super) fn syscall(k: &mut Kernel, f: &mut TrapFrame) {
    let c = smp::cpu_index();
    stages::mark(stages::LOCK);
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
            let _ = k.sched.block(me, BlockReason::Sleep, deadline(f.rdi.max(1)));
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
            let r = k.ipc.recv(me, ep);
            stages::mark(stages::IPC);
            match r {
                Ok(Some(mut m)) => {
                    deliver_grant(k, me, &mut m);
                    put_msg(f, &m);
                    if let Some(t) = k.sched.task_mut(me) {
                        t.context.origin = m.origin;
                    }
                }
                Ok(None) => {
                    let deadline = deadline(f.rsi);
                    let _ = k.sched.block(me, BlockReason::Recv(ep), deadline);
                    resched(k, f);
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_CALL => {
            // rdi: capability slot (bits 0..31) and the caller's timeout in ms (bits 32..63;
            // 0: none for a local call, REMOTE_CALL_TIMEOUT_NS for a remote one)
            let (slot, timeout_ms) = (f.rdi & 0xffff_ffff, f.rdi >> 32);
            let deadline = |dflt: Option<u64>| match timeout_ms {
                0 => dflt.map(|d| time::now_ns().saturating_add(d)),
                ms => Some(time::now_ns().saturating_add(ms.saturating_mul(1_000_000))),
            };
            let cap = match k.sched.task(me).unwrap().context.caps.get(slot as usize) {
                Ok(c) => c,
                Err(e) => return f.rax = err(e),
            };
            let cap = match localize(k, cap) {
                Ok(c) => c,
                Err(node) => {
                    match remote_send(k, me, &cap, node, msg_from(f), true) {
                        Ok((tok, _)) => {
                            let _ = k.sched.block(me, BlockReason::Reply(tok), deadline(Some(REMOTE_CALL_TIMEOUT_NS)));
                            resched(k, f);
                        }
                        Err(e) => f.rax = err(e),
                    }
                    return;
                }
            };
            let r = k.ipc.call(me, &cap, msg_from(f));
            stages::mark(stages::IPC);
            match r {
                Ok((tok, d)) => {
                    let _ = k.sched.block(me, BlockReason::Reply(tok), deadline(None));
                    if let Delivery::Direct { receiver, msg } = d {
                        // the fastpath: straight to the waiting receiver (`fastpath.rs`)
                        if super::fastpath::hand_to(k, f, me, receiver, msg) {
                            return;
                        }
                        wake(k, receiver);
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
                    k.grants.insert(tok, GrantRec { sender: me, mapped: None, lent: frames, standing: false });
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
            let r = k.ipc.reply(me, f.rdi, msg_from(f));
            stages::mark(stages::IPC);
            match r {
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
                    let preempt = complete(k, caller, Ok(m));
                    stages::mark(stages::WAKE);
                    if preempt {
                        resched(k, f);
                    }
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_REPLY_RECV => super::fastpath::reply_recv(k, f, me),
        SYS_ALIVE => f.rax = super::heartbeat::sys_alive(k, me, f.rdi),
        SYS_MAP_MMIO => f.rax = map_mmio(k, me, f.rdi, f.rsi, f.rdx),
        SYS_UNMAP => f.rax = unmap_anon(k, me, f.rdi, f.rsi),
        SYS_BIND_ADDRESS => match sys_bind_address(k, me, f.rdi as usize) {
            Ok(a) => {
                f.rax = 0;
                (f.rdi, f.rsi) = split_addr(a);
            }
            Err(e) => f.rax = err(e),
        },
        SYS_GRANT_OF => match k.grants.get(&f.rdi).filter(|g| !g.standing).and_then(|g| g.mapped.filter(|(r, _)| *r == me).map(|(_, v)| (v, g))) {
            Some((v, g)) => {
                f.rax = 0;
                (f.rdi, f.rsi) = (v | g.lent.writable() as u64, g.lent.pages() * 4096);
            }
            None => f.rax = err(IpcError::BadReply),
        },
        SYS_SHARE => {
            f.rax = match sys_share(k, me, f.rdi as usize, f.rsi, f.rdx) {
                Ok(v) => v,
                Err(e) => e,
            }
        }
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
                let deadline = deadline(f.rsi);
                let _ = k.sched.block(me, BlockReason::Join(target), deadline);
                resched(k, f);
            }
        }
        _ => f.rax = ERR_BAD_ARG.wrapping_neg(),
    }
}
