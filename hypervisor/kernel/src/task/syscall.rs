//! System call dispatch (the ABI is in the module docs of `task`).

use super::*;

pub(super) fn on_syscall(f: &mut TrapFrame) {
    with(|k| syscall(k, f))
}

pub(super) fn msg_from(f: &TrapFrame) -> Message {
    Message::new(f.rsi, [f.rdx, f.r10, f.r8, f.r9])
}

pub(super) fn syscall(k: &mut Kernel, f: &mut TrapFrame) {
    let c = smp::cpu_index();
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
            let _ = k.sched.block(me, BlockReason::Sleep, Some(time::now_ns() + f.rdi));
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
            match k.ipc.recv(me, ep) {
                Ok(Some(mut m)) => {
                    deliver_grant(k, me, &mut m);
                    put_msg(f, &m);
                    if let Some(t) = k.sched.task_mut(me) {
                        t.context.origin = m.origin;
                    }
                }
                Ok(None) => {
                    let deadline = if f.rsi == 0 { None } else { Some(time::now_ns() + f.rsi) };
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
            match k.ipc.call(me, &cap, msg_from(f)) {
                Ok((tok, d)) => {
                    let _ = k.sched.block(me, BlockReason::Reply(tok), deadline(None));
                    if let Delivery::Direct { receiver, msg } = d {
                        complete(k, receiver, Ok(msg));
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
                    k.grants.insert(tok, GrantRec { sender: me, mapped: None, frames, writable });
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
            match k.ipc.reply(me, f.rdi, msg_from(f)) {
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
                    if complete(k, caller, Ok(m)) {
                        resched(k, f);
                    }
                }
                Err(e) => f.rax = err(e),
            }
        }
        SYS_MAP => f.rax = map_anon(k, me, f.rdi, f.rsi),
        SYS_MAP_MMIO => f.rax = map_mmio(k, me, f.rdi, f.rsi, f.rdx),
        SYS_DMA_ALLOC => f.rax = dma_alloc(k, me, f.rdi, f.rsi),
        SYS_UNMAP => f.rax = unmap_anon(k, me, f.rdi, f.rsi),
        SYS_LOG => {
            let t = k.sched.task(me).unwrap();
            let len = (f.rsi as usize).min(200);
            let mut buf = alloc::vec![0u8; len];
            let ok = match &t.context.space {
                Some(s) => s.read(f.rdi, &mut buf).is_ok(),
                None => false,
            };
            if ok {
                info!(target: "user", "[{} {}] {}", me, t.name, String::from_utf8_lossy(&buf));
                f.rax = 0;
            } else {
                f.rax = ERR_BAD_ARG.wrapping_neg();
            }
        }
        SYS_BIND_ADDRESS => match sys_bind_address(k, me, f.rdi as usize) {
            Ok(a) => {
                f.rax = 0;
                (f.rdi, f.rsi) = split_addr(a);
            }
            Err(e) => f.rax = err(e),
        },
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
                let deadline = if f.rsi == 0 { None } else { Some(time::now_ns() + f.rsi) };
                let _ = k.sched.block(me, BlockReason::Join(target), deadline);
                resched(k, f);
            }
        }
        _ => f.rax = ERR_BAD_ARG.wrapping_neg(),
    }
}
