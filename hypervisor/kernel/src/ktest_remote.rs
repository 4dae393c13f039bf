//! In-kernel test: a call from another node whose callee never answers gives its slot back.
//!
//! `netd` counts the calls of each source in flight here (the per-source quota,
//! `catenary_net::rpc`) until the kernel hands it their answer; a callee that takes a call
//! and never replies must not hold that slot forever, or a peer could be locked out for good.
//! The kernel answers such a call with `Timeout` after `REMOTE_CALL_IN_TIMEOUT_NS`
//! (`task::reap_remote_calls`), which `netd` sends back like any answer.

use alloc::format;
use alloc::string::String;
use catenary_ipc::{IpcError, Message};
use core::net::Ipv6Addr;

use crate::init::Node;
use crate::task;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

pub fn remote_call_unanswered_times_out(_: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let caller: Ipv6Addr = "fd00:1:2:3:200::7".parse().unwrap();
    let ticket = catenary_net::rpc::Ticket { from: caller, to: "fd00:9:8:7:200::1".parse().unwrap(), inc: 7, call_id: 42 };
    task::deliver_remote(ep, Message::new(5, [1, 2, 3, 4]), Some(ticket), caller.octets()).map_err(|e| format!("deliver: {e:?}"))?;
    // the callee takes the call and never answers
    let m = task::recv(slot, 1_000_000_000).map_err(|e| format!("recv: {e:?}"))?;
    check(m.reply != 0 && m.label == 5, || format!("not the call: {m:?}"))?;
    task::reap_remote_calls();
    let (_, now) = task::take_remote();
    check(now.is_empty(), || format!("answered before its time: {now:?}"))?;
    // time passes: the kernel answers for it, once
    let later = catenary_arch::time::now_ns() + task::REMOTE_CALL_IN_TIMEOUT_NS + 1;
    task::reap_remote_calls_at(later);
    let (_, r) = task::take_remote();
    check(r.len() == 1 && r[0].to == ticket && r[0].result == Err(IpcError::Timeout), || format!("answers after the deadline: {r:?}"))?;
    task::reap_remote_calls_at(later + 1);
    let (_, again) = task::take_remote();
    check(again.is_empty(), || format!("answered twice: {again:?}"))?;
    // the callee's late answer is refused, not sent
    check(task::reply(m.reply, Message::new(6, [0; 4])).is_err(), || String::from("late reply accepted"))?;
    let (_, late) = task::take_remote();
    check(late.is_empty(), || format!("late reply forwarded: {late:?}"))?;
    Ok(())
}
