//! `SYS_NET`: what the ring-3 `netd` (the manifest's router service) asks of the kernel. The
//! kernel keeps only what a microkernel must: IPC delivery, the queue of sends and calls that
//! name another node's /128 (handed to `netd` with `OP_TAKE`), the /128 → endpoint table (so
//! a restarted `netd` finds it again), and the boot data `netd` needs. Every operation
//! checks the caller's capability for the ROUTER right on its own endpoint, and every record
//! comes through the caller's memory as `UserRange`s, like any other syscall argument.
//! Record layouts: `catenary_ipc::netd`.

use super::*;
use catenary_ipc::netd::*;

fn fail(e: IpcError) -> u64 {
    err(e)
}

/// The caller (`me`) and its router endpoint, if capability `slot` carries the ROUTER right
/// for an endpoint the caller owns.
fn router_of(k: &Kernel, slot: usize) -> Result<(TaskId, EndpointId), u64> {
    let me = k.sched.current(smp::cpu_index()).ok_or(fail(IpcError::NoCapability))?;
    let cap = k.sched.task(me).ok_or(fail(IpcError::NoCapability))?.context.caps.check(slot, Rights::ROUTER).map_err(err)?;
    if !cap.target.is_local() || k.ipc.endpoint(cap.target.endpoint).map(|e| e.owner) != Some(me) {
        return Err(fail(IpcError::NoRight));
    }
    Ok((me, cap.target.endpoint))
}

fn copy_in(k: &Kernel, me: TaskId, ptr: u64, buf: &mut [u8]) -> Result<(), u64> {
    let space = k.sched.task(me).and_then(|t| t.context.space.as_ref()).ok_or(ERR_BAD_ARG.wrapping_neg())?;
    let r = UserRange::new(ptr, buf.len() as u64).map_err(|_| ERR_BAD_ARG.wrapping_neg())?;
    space.copy_from_user(r, buf).map_err(|_| ERR_BAD_ARG.wrapping_neg())
}

fn copy_out(k: &Kernel, me: TaskId, ptr: u64, data: &[u8]) -> Result<(), u64> {
    let space = k.sched.task(me).and_then(|t| t.context.space.as_ref()).ok_or(ERR_BAD_ARG.wrapping_neg())?;
    let r = UserRange::new(ptr, data.len() as u64).map_err(|_| ERR_BAD_ARG.wrapping_neg())?;
    space.copy_to_user(r, data).map_err(|_| ERR_BAD_ARG.wrapping_neg())
}

/// Read a record of `n` bytes from the caller (whose buffer must be at least that long).
fn record_in(slot: usize, ptr: u64, len: u64, n: usize) -> Result<[u8; RECORD], u64> {
    if len < n as u64 {
        return Err(ERR_BAD_ARG.wrapping_neg());
    }
    let mut rec = [0u8; RECORD];
    with(|k| {
        let (me, _) = router_of(k, slot)?;
        copy_in(k, me, ptr, &mut rec[..n])
    })?;
    Ok(rec)
}

fn words(rec: &[u8], off: usize) -> [u64; 4] {
    [get_u64(rec, off), get_u64(rec, off + 8), get_u64(rec, off + 16), get_u64(rec, off + 24)]
}

/// `SYS_NET(slot, op, buf, len, arg)`.
pub(super) fn sys_net(f: &mut TrapFrame) {
    let (slot, op, ptr, len, arg) = (f.rdi as usize, f.rsi, f.rdx, f.r10, f.r8);
    let r: Result<u64, u64> = match op {
        OP_BOOT => (|| {
            let (me, _) = with(|k| router_of(k, slot))?;
            // built without the kernel lock (reads boot modules, samples entropy)
            let data = crate::net::user_boot_data().ok_or(fail(IpcError::Unreachable))?;
            if (len as usize) < data.len() {
                return Err(ERR_BAD_ARG.wrapping_neg());
            }
            with(|k| copy_out(k, me, ptr, &data))?;
            Ok(data.len() as u64)
        })(),
        OP_UP => (|| {
            let rec = record_in(slot, ptr, len, 16)?;
            let (_, ep) = with(|k| router_of(k, slot))?;
            let node = get_addr(&rec, 0);
            if !crate::net::user_router_up(core::net::Ipv6Addr::from(node)) {
                return Err(fail(IpcError::NoRight)); // another node address than before
            }
            router_up(node, ep);
            Ok(0)
        })(),
        OP_TAKE => with(|k| {
            let (me, _) = router_of(k, slot)?;
            if len < RECORD as u64 {
                return Err(ERR_BAD_ARG.wrapping_neg());
            }
            let mut rec = [0u8; RECORD];
            let kind = if let Some(o) = k.remote.out.front() {
                put_u64(&mut rec, 0, TAKE_OUT);
                put_addr(&mut rec, 8, &o.src.unwrap_or([0; 16]));
                put_addr(&mut rec, 24, &o.dst);
                put_u64(&mut rec, 40, o.endpoint);
                put_u64(&mut rec, 48, o.msg.label);
                for (i, w) in o.msg.words.iter().enumerate() {
                    put_u64(&mut rec, 56 + 8 * i, *w);
                }
                put_u64(&mut rec, 88, o.token);
                TAKE_OUT
            } else if let Some(r) = k.remote.replies.front() {
                put_u64(&mut rec, 0, TAKE_REPLY);
                put_addr(&mut rec, 8, &r.to.from.octets());
                put_addr(&mut rec, 24, &r.to.to.octets());
                put_u64(&mut rec, 40, r.to.inc);
                put_u64(&mut rec, 48, r.to.call_id);
                match r.result {
                    Ok(m) => {
                        put_u64(&mut rec, 56, 1);
                        put_u64(&mut rec, 64, m.label);
                        for (i, w) in m.words.iter().enumerate() {
                            put_u64(&mut rec, 72 + 8 * i, *w);
                        }
                    }
                    Err(e) => put_u64(&mut rec, 64, e.code()),
                }
                TAKE_REPLY
            } else {
                return Ok(0);
            };
            // taken only once it reached the caller's memory
            copy_out(k, me, ptr, &rec)?;
            if kind == TAKE_OUT {
                k.remote.out.pop_front();
            } else {
                k.remote.replies.pop_front();
            }
            Ok(kind)
        }),
        OP_DELIVER => (|| {
            let rec = record_in(slot, ptr, len, 88)?;
            let to = core::net::Ipv6Addr::from(get_addr(&rec, 0));
            // the endpoint comes from the kernel's table, never from netd
            let ep = crate::net::router_lookup(&to).ok_or(fail(IpcError::NoEndpoint))?;
            let from = core::net::Ipv6Addr::from(get_addr(&rec, 16));
            let call_id = get_u64(&rec, 40);
            let call = (call_id != 0).then_some(ReplyTo { from, to, inc: get_u64(&rec, 32), call_id });
            deliver_remote(ep, Message::new(get_u64(&rec, 48), words(&rec, 56)), call, from.octets()).map_err(err)?;
            Ok(ep)
        })(),
        OP_COMPLETE => (|| {
            let rec = record_in(slot, ptr, len, 64)?;
            let result = if get_u64(&rec, 16) == 1 {
                Ok(Message::new(get_u64(&rec, 24), words(&rec, 32)))
            } else {
                Err(IpcError::from_code(get_u64(&rec, 24)).unwrap_or(IpcError::Unreachable))
            };
            Ok(complete_remote_call(arg, get_addr(&rec, 0), result) as u64)
        })(),
        OP_WAITING => with(|k| router_of(k, slot)).map(|_| remote_call_waiting(arg) as u64),
        OP_REAP => with(|k| router_of(k, slot)).map(|_| {
            reap_remote_calls();
            // a probe asked for the reliability counters (logged by netd; probes kernel only)
            #[cfg(feature = "probes")]
            let report = crate::rpcprobe::REPORT.swap(false, core::sync::atomic::Ordering::Relaxed);
            #[cfg(not(feature = "probes"))]
            let report = false;
            if report { REAP_REPORT } else { 0 }
        }),
        OP_LOOKUP => (|| {
            let rec = record_in(slot, ptr, len, 16)?;
            crate::net::router_lookup(&core::net::Ipv6Addr::from(get_addr(&rec, 0))).ok_or(fail(IpcError::NoEndpoint))
        })(),
        OP_VM_NEXT => with(|k| router_of(k, slot)).and_then(|(me, _)| {
            if len < RECORD as u64 {
                return Err(ERR_BAD_ARG.wrapping_neg());
            }
            let mut rec = [0u8; RECORD];
            let kind = crate::net::vm_next(me, &mut rec);
            if kind != 0 {
                // (an event whose record cannot be copied out is lost: netd's buffer is its own)
                with(|k| copy_out(k, me, ptr, &rec))?;
            }
            Ok(kind)
        }),
        OP_VM_RING => (|| {
            // the ring's pages: the caller's own RAM pages, mapped at [ptr, ptr + len)
            let frames = with(|k| {
                let (me, _) = router_of(k, slot)?;
                if len != catenary_ipc::vm_ring::PAGES * 4096 {
                    return Err(ERR_BAD_ARG.wrapping_neg());
                }
                let r = UserRange::pages(ptr, catenary_ipc::vm_ring::PAGES).map_err(|_| ERR_BAD_ARG.wrapping_neg())?;
                let t = k.sched.task(me).ok_or(ERR_BAD_ARG.wrapping_neg())?;
                let space = t.context.space.as_ref().ok_or(ERR_BAD_ARG.wrapping_neg())?;
                let mut frames = Vec::new();
                frames.try_reserve_exact(r.page_count() as usize).map_err(|_| ERR_NO_MEMORY.wrapping_neg())?;
                for v in r.page_starts() {
                    match space.page(v) {
                        Some(p) if p.kind == PageKind::Ram && t.context.frames.contains(&p.phys) => frames.push(p.phys),
                        _ => return Err(ERR_BAD_ARG.wrapping_neg()),
                    }
                }
                Ok((me, frames))
            })?;
            if crate::net::vm_ring_lent(frames.0, arg, &frames.1) { Ok(0) } else { Err(fail(IpcError::NoEndpoint)) }
        })(),
        OP_VM_KICK => with(|k| router_of(k, slot)).and_then(|(me, _)| if crate::net::vm_kick(me, arg) { Ok(0) } else { Err(fail(IpcError::NoEndpoint)) }),
        OP_VM_DONE => with(|k| router_of(k, slot)).and_then(|(me, _)| if crate::net::vm_done(me, arg) { Ok(0) } else { Err(fail(IpcError::NoEndpoint)) }),
        OP_NIC_IRQS => with(|k| router_of(k, slot)).map(|_| irq_count(NIC_VECTOR)),
        OP_CALLER => with(|k| {
            let (me, _) = router_of(k, slot)?;
            let caller = k.ipc.caller_of(me, arg).filter(|c| *c != REMOTE).ok_or(fail(IpcError::BadReply))?;
            if len < 16 {
                return Err(ERR_BAD_ARG.wrapping_neg());
            }
            copy_out(k, me, ptr, &k.remote.bound.get(&caller).copied().unwrap_or([0; 16]))?;
            Ok(caller)
        }),
        OP_ALIVE => with(|k| {
            router_of(k, slot)?;
            Ok(k.sched.task(arg).is_some_and(|t| !matches!(t.state, catenary_sched::TaskState::Dead)) as u64)
        }),
        _ => Err(ERR_BAD_ARG.wrapping_neg()),
    };
    f.rax = match r {
        Ok(v) => v,
        Err(e) => e,
    };
}

/// The ring-3 router died: the calls to other nodes it carried cannot be answered through
/// it any more (its retransmission state is gone): they fail with `Unreachable` at once, and
/// calls it had not taken yet are dropped with them (sends stay queued for the next
/// incarnation). Calls from other nodes running here keep going; their answers wait in the
/// queue for the next incarnation.
pub(super) fn router_died(k: &mut Kernel) {
    let calls: Vec<u64> = k.remote.calls_out.keys().copied().collect();
    for t in &calls {
        if let Ok(caller) = k.ipc.end_call(REMOTE, *t) {
            complete(k, caller, Err(err(IpcError::Unreachable)));
        }
    }
    k.remote.calls_out.clear();
    k.remote.out.retain(|o| o.token == 0);
    info!(target: "net", "netd (ring 3) died: {} remote calls in flight failed with Unreachable; the routing table and {} queued sends are kept for the next netd",
        calls.len(), k.remote.out.len());
}
