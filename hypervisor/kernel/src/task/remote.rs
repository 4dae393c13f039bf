//! Fabric IPC: sends and calls that cross nodes, queued for the router (`netd`).

use super::*;

/// Sends and calls that cross nodes. The kernel queues them for the router (`netd`, see
/// `net.rs`) and wakes it with a notification on its endpoint; `netd` carries them in fabric
/// frames and brings back the replies.
#[derive(Default)]
pub(super) struct Remote {
    /// This node's fabric /128 and `netd`'s wake endpoint, once `netd` is up.
    pub(super) node: Option<[u8; 16]>,
    pub(super) wake: Option<EndpointId>,
    pub(super) out: alloc::collections::VecDeque<RemoteOut>,
    /// Our calls in flight to other nodes: token -> the /128 that must answer.
    pub(super) calls_out: alloc::collections::BTreeMap<u64, [u8; 16]>,
    /// Calls from other nodes in flight here: token -> where the answer goes.
    pub(super) calls_in: alloc::collections::BTreeMap<u64, ReplyTo>,
    /// When each of those is answered with `Timeout` if its callee has not answered by then.
    pub(super) calls_in_deadline: alloc::collections::BTreeMap<u64, u64>,
    pub(super) replies: alloc::collections::VecDeque<RemoteReply>,
    /// The fabric /128 bound to an endpoint a task owns (`SYS_BIND_ADDRESS`): its remote
    /// sends and calls go out from that /128, so the receiver learns which task sent them.
    pub(super) bound: alloc::collections::BTreeMap<TaskId, [u8; 16]>,
}

/// A send (`token == 0`) or call to endpoint `endpoint` of the node or task /128 `dst`.
#[derive(Clone, Copy, Debug)]
pub struct RemoteOut {
    /// The sending task's bound /128 (None: the node's /128).
    pub src: Option<[u8; 16]>,
    pub dst: [u8; 16],
    pub endpoint: u64,
    pub msg: Message,
    pub token: u64,
}

/// Where the answer to a call from another node goes (the caller's /128, incarnation and
/// call id; the /128 it called): `netd`'s reliability layer keeps the answer for
/// retransmitted requests.
pub type ReplyTo = catenary_net::rpc::Ticket;

/// The answer (or failure) of a call from another node.
#[derive(Clone, Copy, Debug)]
pub struct RemoteReply {
    pub to: ReplyTo,
    pub result: Result<Message, IpcError>,
}

/// Badge of messages that came from another node.
pub const REMOTE_BADGE: u64 = catenary_ipc::REMOTE_BADGE;
/// A call to another node fails with `Timeout` after this long without an answer, unless
/// the caller chose its own timeout (`SYS_CALL`, rdi bits 32..63).
pub const REMOTE_CALL_TIMEOUT_NS: u64 = 20_000_000_000;
// `netd` retransmits a call within its retry span: its last try still has a second to be
// answered before the caller's default timeout.
const _: () = assert!(catenary_net::rpc::RETRY_SPAN_NS + 1_000_000_000 <= REMOTE_CALL_TIMEOUT_NS);
/// Remote sends and calls waiting for `netd`, at most (then `QueueFull`).
pub(super) const REMOTE_QUEUE: usize = 64;
/// Calls from other nodes in flight here, at most.
pub(super) const REMOTE_CALLS_IN: usize = 256;
/// The notification bit that wakes `netd` for fabric IPC.
pub const REMOTE_NOTIFY_BIT: u64 = 1 << 16;

/// A /128 in two registers (high, low 64 bits).
pub(super) fn split_addr(a: [u8; 16]) -> (u64, u64) {
    let v = u128::from_be_bytes(a);
    ((v >> 64) as u64, v as u64)
}

/// `SYS_BIND_ADDRESS`: the capability in `slot` must carry the bind right and name a local
/// endpoint that is open; the router (`netd`'s table) gives it a fresh task /128, and the
/// endpoint's owner sends from that /128 from now on.
pub(super) fn sys_bind_address(k: &mut Kernel, me: TaskId, slot: usize) -> Result<[u8; 16], IpcError> {
    let cap = k.sched.task(me).ok_or(IpcError::NoCapability)?.context.caps.check(slot, Rights::BIND)?;
    let cap = localize(k, cap).map_err(|_| IpcError::Unreachable)?;
    let owner = k.ipc.endpoint(cap.target.endpoint).ok_or(IpcError::NoEndpoint)?.owner;
    if k.remote.node.is_none() {
        return Err(IpcError::Unreachable); // networking is not up
    }
    let a = crate::net::router_bind(cap.target.endpoint).ok_or(IpcError::TableFull)?.octets();
    k.remote.bound.entry(owner).or_insert(a);
    Ok(a)
}

/// A capability whose target is this node (all-zero node, or this node's own /128) as a
/// local one; `Err(node)` for another node.
pub(super) fn localize(k: &Kernel, cap: Capability) -> Result<Capability, [u8; 16]> {
    if cap.target.is_local() {
        return Ok(cap);
    }
    if k.remote.node == Some(cap.target.node) {
        return Ok(Capability { target: Address::local(cap.target.endpoint), ..cap });
    }
    Err(cap.target.node)
}

/// Queue a send (`caller` None) or call for `netd`. Returns the call's token (0 for a send)
/// and whether the woken `netd` should preempt this CPU.
pub(super) fn remote_send(k: &mut Kernel, me: TaskId, cap: &Capability, node: [u8; 16], msg: Message, is_call: bool) -> Result<(u64, bool), IpcError> {
    if !cap.rights.contains(Rights::SEND) {
        return Err(IpcError::NoRight);
    }
    if k.remote.node.is_none() || k.remote.wake.is_none() {
        return Err(IpcError::Unreachable);
    }
    if k.remote.out.len() >= REMOTE_QUEUE {
        return Err(IpcError::QueueFull);
    }
    let token = if is_call {
        let t = k.ipc.call_remote(me);
        k.remote.calls_out.insert(t, node);
        t
    } else {
        0
    };
    let src = k.remote.bound.get(&me).copied();
    k.remote.out.push_back(RemoteOut { src, dst: node, endpoint: cap.target.endpoint, msg: Message::new(msg.label, msg.words), token });
    Ok((token, wake_router(k)))
}

/// Wake `netd` (frames from a microVM wait for it). No-op before networking is up.
pub fn wake_netd() {
    with(|k| {
        let _ = wake_router(k);
    })
}

/// Notify `netd`'s endpoint that fabric IPC waits; true if it should preempt this CPU.
pub(super) fn wake_router(k: &mut Kernel) -> bool {
    let Some(ep) = k.remote.wake else { return false };
    if let Ok(Some((who, m))) = k.ipc.notify(ep, REMOTE_NOTIFY_BIT) {
        if let Some(TaskState::Blocked(BlockReason::Recv(_))) = k.sched.task(who).map(|t| t.state) {
            return complete(k, who, Ok(m));
        }
    }
    false
}

/// `netd` is up: this node's /128 and the endpoint (held by `netd`) to notify when fabric IPC
/// waits. From now on, sends and calls to other nodes go to `netd`.
pub fn router_up(node: [u8; 16], wake: EndpointId) {
    with(|k| {
        k.remote.node = Some(node);
        k.remote.wake = Some(wake);
    })
}

/// The endpoint behind the calling task's capability `slot`.
pub fn endpoint_of_slot(slot: usize) -> Option<EndpointId> {
    with(|k| {
        let me = k.sched.current(smp::cpu_index())?;
        k.sched.task(me)?.context.caps.get(slot).ok().map(|c| c.target.endpoint)
    })
}

/// (`netd`) The sends and calls to other nodes, and the answers to calls from other nodes.
pub fn take_remote() -> (Vec<RemoteOut>, Vec<RemoteReply>) {
    with(|k| (k.remote.out.drain(..).collect(), k.remote.replies.drain(..).collect()))
}

/// (`netd`) A message from `origin` (another node's /128, or a microVM's, as the fabric or
/// the VM's port authenticated it) for local endpoint `ep`: a send, or a call (`call`) whose
/// answer comes back through [`take_remote`]. The receiver sees [`REMOTE_BADGE`] and learns
/// `origin` with `SYS_SENDER`.
pub fn deliver_remote(ep: EndpointId, msg: Message, call: Option<ReplyTo>, origin: [u8; 16]) -> Result<(), IpcError> {
    with(|k| {
        let cap = Capability { target: Address::local(ep), rights: Rights::SEND, badge: REMOTE_BADGE };
        let msg = Message { origin, ..Message::new(msg.label, msg.words) };
        let d = match call {
            Some(to) => {
                if k.remote.calls_in.len() >= REMOTE_CALLS_IN {
                    return Err(IpcError::QueueFull);
                }
                let (tok, d) = k.ipc.call(REMOTE, &cap, msg)?;
                k.remote.calls_in.insert(tok, to);
                k.remote.calls_in_deadline.insert(tok, time::now_ns().saturating_add(REMOTE_CALL_IN_TIMEOUT_NS));
                d
            }
            None => k.ipc.send(&cap, msg)?,
        };
        if let Delivery::Direct { receiver, msg } = d {
            complete(k, receiver, Ok(msg));
        }
        Ok(())
    })
}

/// (`netd`) The answer to our call `token` came from `from`: wake the caller with it. False
/// if no such call is waiting for `from` (timed out, or a forged answer).
pub fn complete_remote_call(token: u64, from: [u8; 16], result: Result<Message, IpcError>) -> bool {
    with(|k| {
        if k.remote.calls_out.get(&token) != Some(&from) {
            return false;
        }
        k.remote.calls_out.remove(&token);
        match result {
            Ok(m) => match k.ipc.reply(REMOTE, token, m) {
                Ok((caller, m)) => {
                    complete(k, caller, Ok(m));
                    true
                }
                Err(_) => false,
            },
            Err(e) => match k.ipc.end_call(REMOTE, token) {
                Ok(caller) => {
                    complete(k, caller, Err(err(e)));
                    true
                }
                Err(_) => false,
            },
        }
    })
}

/// (`netd`) Whether a task still waits for our call `token` to another node (it did not
/// time out): `netd` retransmits only those.
pub fn remote_call_waiting(token: u64) -> bool {
    with(|k| k.remote.calls_out.contains_key(&token))
}

/// A call from another node whose callee has not answered after this long is answered with
/// `Timeout` (and forgotten: a late reply gets `BadReply`), so the caller's slot of the
/// per-source quota of calls in flight comes back: a callee that never replies cannot lock a
/// peer out. Longer than callers wait by default (`REMOTE_CALL_TIMEOUT_NS`).
pub const REMOTE_CALL_IN_TIMEOUT_NS: u64 = 60_000_000_000;

/// (`netd`) Calls from other nodes whose callee died (answered with `DeadPeer`) or has not
/// answered within [`REMOTE_CALL_IN_TIMEOUT_NS`] (answered with `Timeout`).
pub fn reap_remote_calls() {
    reap_remote_calls_at(time::now_ns())
}

/// [`reap_remote_calls`] as of `now` (ns of uptime).
pub fn reap_remote_calls_at(now: u64) {
    with(|k| {
        let dead: Vec<u64> = k.remote.calls_in.keys().copied().filter(|t| !k.ipc.call_pending(*t)).collect();
        for t in dead {
            k.remote.calls_in_deadline.remove(&t);
            if let Some(to) = k.remote.calls_in.remove(&t) {
                k.remote.replies.push_back(RemoteReply { to, result: Err(IpcError::DeadPeer) });
            }
        }
        let late: Vec<u64> = k.remote.calls_in_deadline.iter().filter(|(_, d)| **d <= now).map(|(t, _)| *t).collect();
        for t in late {
            k.remote.calls_in_deadline.remove(&t);
            if let Some(to) = k.remote.calls_in.remove(&t) {
                k.ipc.cancel_call(t);
                k.remote.replies.push_back(RemoteReply { to, result: Err(IpcError::Timeout) });
            }
        }
        // deadlines of calls answered meanwhile (the reply syscall removed them from calls_in)
        let calls_in = &k.remote.calls_in;
        k.remote.calls_in_deadline.retain(|t, _| calls_in.contains_key(t));
    })
}
