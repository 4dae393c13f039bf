//! Probes of reliable fabric IPC (docs/networking.md §3a), started by `netd`:
//!
//! - `net.rpcsvc=1` — the kernel task `rpcsvc` serves at the node's second task /128
//!   (`prefix:200::2`, bound right after `echo`): it counts how often each call runs (a call
//!   that runs twice is logged) and checks that sends arrive in order;
//! - `net.rpctest=NAME[,GHOST]` — once the session with NAME is up, the kernel task `rpctest`
//!   makes [`CALLS`] calls and [`SENDS`] numbered sends to NAME's `rpcsvc`, checks every
//!   answer and then `rpcsvc`'s counts (each call ran once, the sends in order), and calls
//!   GHOST (a cluster member that is not running) with a [`GHOST_TIMEOUT_MS`] timeout, which
//!   must end in `Timeout`;
//! - `net.rpcquota=fill:NAME` — `rpcquota` fills this node's quota of calls in flight at
//!   NAME (`CALLS_PER_SOURCE`, per source /64): [`QUOTA_EXTRA`] more concurrent calls than the
//!   quota to `rpcsvc`'s [`LABEL_HOLD`], which it takes and never answers; the excess must be
//!   refused with `QueueFull` at once, the rest end when NAME's kernel answers them with
//!   `Timeout` (`REMOTE_CALL_IN_TIMEOUT_NS`), and then a call must be answered again;
//! - `net.rpcquota=other:NAME` — `rpcquota` (on a third node, another source) calls NAME's
//!   `rpcsvc` until it is answered while `rpcsvc` holds a full quota of calls;
//! - `net.ipcbench=NAME` — `ipcbench` calls NAME's `echo` [`BENCH_CALLS`] times and prints
//!   the median round trip (`cargo xtask bench ipc`).
//!
//! Only in the probes kernel (the cargo feature `probes`, main.rs; docs/testing.md "The probes
//! kernel"): the node kernel has neither this code nor the options' names.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use catenary_arch::time;
use catenary_ipc::{Address, Capability, IpcError, Message, Rights};
use core::net::Ipv6Addr;
use core::sync::atomic::{AtomicBool, Ordering};
use log::{info, warn};
use spin::Mutex;

use crate::task;

/// A call `rpcsvc` counts: words[0] names it; the reply is (words[0] * 3, executions).
pub const LABEL_EXEC: u64 = 0x5201;
/// A numbered send (words[0] = 1, 2, …).
pub const LABEL_SEQ: u64 = 0x5202;
/// A call answered with (executions, calls run twice, sends in order, sends out of order).
pub const LABEL_STATS: u64 = 0x5203;
/// A call `rpcsvc` takes and never answers.
pub const LABEL_HOLD: u64 = 0x5204;
/// A call answered with (calls `rpcsvc` holds unanswered now, 0, 0, 0).
pub const LABEL_HELD: u64 = 0x5205;
/// Calls `rpcquota` makes beyond the quota.
pub const QUOTA_EXTRA: u64 = 4;
/// The held calls' own timeout: longer than the callee's kernel holds them.
pub const HOLD_TIMEOUT_MS: u32 = 90_000;
pub const CALLS: u64 = 30;
pub const SENDS: u64 = 60;
pub const GHOST_TIMEOUT_MS: u32 = 3000;
pub const BENCH_CALLS: usize = 200;

/// The network stack runs in ring 3 (the default; not `net.netd=kernel`): the benchmark says so.
pub static USER_NETD: AtomicBool = AtomicBool::new(false);

/// Set by a probe when `netd` should log its reliability counters.
pub static REPORT: AtomicBool = AtomicBool::new(false);

/// A peer's name and fabric address.
type Peer = (alloc::string::String, Ipv6Addr);
/// `rpctest`'s targets: (peer name, its rpcsvc /128, ghost name and its echo /128).
pub static TEST: Mutex<Option<(alloc::string::String, Ipv6Addr, Option<Peer>)>> = Mutex::new(None);
/// `rpcquota`'s target: (peer name, its rpcsvc /128).
pub static QUOTA: Mutex<Option<(alloc::string::String, Ipv6Addr)>> = Mutex::new(None);
/// The held calls' outcomes: (result label, ms).
static HOLDS: Mutex<Vec<(Result<u64, IpcError>, u64)>> = Mutex::new(Vec::new());
/// `ipcbench`'s target: (peer name, its echo /128).
pub static BENCH: Mutex<Option<(alloc::string::String, Ipv6Addr)>> = Mutex::new(None);

fn remote_slot(a: Ipv6Addr) -> Result<usize, catenary_ipc::IpcError> {
    task::try_give_current(Capability { target: Address { node: a.octets(), endpoint: 0 }, rights: Rights::SEND, badge: 0 })
}

/// The counting service.
pub fn rpcsvc(_: u64) {
    let caps = task::try_create_endpoint_for_current(64)
        .and_then(|(slot, ep)| task::try_give_current(Capability { target: Address::local(ep), rights: Rights::BIND, badge: 0 }).map(|b| (slot, ep, b)));
    let Ok((slot, ep, bind)) = caps else {
        warn!(target: "net", "rpcsvc: no room for its capabilities");
        return;
    };
    match task::bind_address(bind) {
        Ok(a) => info!(target: "net", "rpcsvc: endpoint {} has fabric address {}", ep, Ipv6Addr::from(a)),
        Err(e) => {
            warn!(target: "net", "rpcsvc: cannot bind: {:?}", e);
            return;
        }
    }
    let (mut execs, mut twice, mut in_order, mut out_of_order, mut next) = (0u64, 0u64, 0u64, 0u64, 1u64);
    let mut seen = BTreeSet::new();
    // arrival times of the LABEL_HOLD calls the kernel has not timed out yet
    let mut held: Vec<u64> = Vec::new();
    loop {
        let Ok(m) = task::recv(slot, 0) else { continue };
        let answer = match m.label {
            LABEL_EXEC => {
                execs += 1;
                if seen.contains(&m.words[0]) {
                    twice += 1;
                    warn!(target: "net", "rpcsvc: call {} ran twice", m.words[0]);
                } else if seen.len() < 4096 {
                    seen.insert(m.words[0]);
                }
                Message::new(LABEL_EXEC, [m.words[0].wrapping_mul(3), execs, 0, 0])
            }
            LABEL_SEQ => {
                if m.words[0] == next {
                    in_order += 1;
                } else {
                    out_of_order += 1;
                    warn!(target: "net", "rpcsvc: send {} arrived, expected {}", m.words[0], next);
                }
                next = m.words[0].wrapping_add(1);
                continue;
            }
            LABEL_HOLD | LABEL_HELD => {
                let now = time::now_ns();
                // the kernel answers a held call with Timeout after REMOTE_CALL_IN_TIMEOUT_NS
                // (from its delivery, a little before our recv): count those gone a second early
                held.retain(|t| now - t < task::REMOTE_CALL_IN_TIMEOUT_NS - 1_000_000_000);
                if m.label == LABEL_HOLD {
                    if held.len() < 1024 {
                        held.push(now);
                    }
                    continue;
                }
                Message::new(LABEL_HELD, [held.len() as u64, 0, 0, 0])
            }
            LABEL_STATS => {
                REPORT.store(true, Ordering::Relaxed);
                Message::new(LABEL_STATS, [execs, twice, in_order, out_of_order])
            }
            _ => Message::new(0, [0; 4]),
        };
        if m.reply != 0 {
            let _ = task::reply(m.reply, answer);
        }
    }
}

/// The lossy-link test client.
pub fn rpctest(_: u64) {
    let Some((peer, svc, ghost)) = catenary_arch::cpu::without_interrupts(|| TEST.lock().take()) else { return };
    let Ok(slot) = remote_slot(svc) else { return warn!(target: "net", "rpctest: capability table full") };
    let t0 = time::now_ns();
    let mut good = 0;
    for i in 1..=CALLS {
        match task::call(slot, Message::new(LABEL_EXEC, [i, 0, 0, 0])) {
            Ok(r) if r.label == LABEL_EXEC && r.words[0] == i * 3 => good += 1,
            r => warn!(target: "net", "rpctest: call {} to {}: {:?}", i, peer, r.map(|m| (m.label, m.words))),
        }
    }
    info!(target: "net", "rpctest: {}/{} calls to {} answered correctly in {} ms", good, CALLS, peer, (time::now_ns() - t0) / 1_000_000);
    let mut sent = 0;
    for i in 1..=SENDS {
        match task::send(slot, Message::new(LABEL_SEQ, [i, 0, 0, 0])) {
            Ok(()) => sent += 1,
            Err(e) => warn!(target: "net", "rpctest: send {}: {:?}", i, e),
        }
    }
    // the sends travel on their own stream: ask until they are all in (or 60 s)
    let end = time::now_ns() + 60_000_000_000;
    let mut stats = None;
    while time::now_ns() < end {
        if let Ok(r) = task::call(slot, Message::new(LABEL_STATS, [0; 4])) {
            stats = Some(r.words);
            if r.words[2] + r.words[3] >= SENDS {
                break;
            }
        }
        task::sleep_ns(500_000_000);
    }
    match stats {
        Some([execs, twice, in_order, out_of_order]) => info!(target: "net",
            "rpctest: {} reports {} executions of {} calls ({} ran twice), {}/{} sends in order, {} out of order",
            peer, execs, CALLS, twice, in_order, sent, out_of_order),
        None => warn!(target: "net", "rpctest: no stats from {}", peer),
    }
    if let Some((gname, gaddr)) = ghost {
        let Ok(g) = remote_slot(gaddr) else { return warn!(target: "net", "rpctest: capability table full") };
        let t = time::now_ns();
        let r = task::call_timeout(g, Message::new(LABEL_EXEC, [1, 0, 0, 0]), GHOST_TIMEOUT_MS);
        info!(target: "net", "rpctest: call to {} (down) with a {} ms timeout: {:?} after {} ms",
            gname, GHOST_TIMEOUT_MS, r.map(|m| m.label), (time::now_ns() - t) / 1_000_000);
        if r != Err(IpcError::Timeout) {
            warn!(target: "net", "rpctest: expected Timeout");
        }
    }
    REPORT.store(true, Ordering::Relaxed);
    info!(target: "net", "rpctest done");
}

/// Start `rpcquota` against `peer`'s `rpcsvc` at `svc` (`fill`: this node fills its quota).
pub fn rpcquota_start(peer: &str, svc: Ipv6Addr, fill: bool) {
    catenary_arch::cpu::without_interrupts(|| *QUOTA.lock() = Some((alloc::string::String::from(peer), svc)));
    task::spawn_kernel("rpcquota", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, rpcquota, fill as u64);
}

/// One held call (`rpcquota` starts one task per concurrent call).
fn rpchold(i: u64) {
    let Some(svc) = catenary_arch::cpu::without_interrupts(|| QUOTA.lock().as_ref().map(|q| q.1)) else { return };
    let t = time::now_ns();
    let r = match remote_slot(svc) {
        Ok(slot) => task::call_timeout(slot, Message::new(LABEL_HOLD, [i, 0, 0, 0]), HOLD_TIMEOUT_MS).map(|m| m.label),
        Err(e) => Err(e),
    };
    let ms = (time::now_ns() - t) / 1_000_000;
    catenary_arch::cpu::without_interrupts(|| HOLDS.lock().push((r, ms)));
}

fn holds() -> Vec<(Result<u64, IpcError>, u64)> {
    catenary_arch::cpu::without_interrupts(|| HOLDS.lock().clone())
}

/// The quota test (`net.rpcquota`): fill this node's quota at the peer, or (`fill` = 0) be
/// the other source that must still be served while it is full.
pub fn rpcquota(fill: u64) {
    let Some((peer, svc)) = catenary_arch::cpu::without_interrupts(|| QUOTA.lock().clone()) else { return };
    let Ok(slot) = remote_slot(svc) else { return warn!(target: "net", "rpcquota: capability table full") };
    if fill == 0 {
        let end = time::now_ns() + 200_000_000_000;
        let mut tries = 0u64;
        let mut seen = false;
        while time::now_ns() < end {
            tries += 1;
            match task::call_timeout(slot, Message::new(LABEL_HELD, [0; 4]), 10_000) {
                Ok(r) if r.label == LABEL_HELD && r.words[0] >= catenary_net::ipcroute::CALLS_PER_SOURCE as u64 => {
                    info!(target: "net", "rpcquota: {} answered this node's call while it held {} unanswered calls from another source (try {})", peer, r.words[0], tries);
                    seen = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if tries < 5 || tries.is_multiple_of(50) => warn!(target: "net", "rpcquota: call {} to {}: {:?}", tries, peer, e),
                Err(_) => {}
            }
            task::sleep_ns(250_000_000);
        }
        if !seen {
            warn!(target: "net", "rpcquota: never answered while {} held a full quota ({} tries)", peer, tries);
        }
        return info!(target: "net", "rpcquota other done");
    }
    // the peer's rpcsvc may not have bound its address yet (calls then end `NoEndpoint`, not
    // held): fill the quota only once it answers
    let end = time::now_ns() + 200_000_000_000;
    let mut tries = 0u64;
    loop {
        tries += 1;
        match task::call_timeout(slot, Message::new(LABEL_HELD, [0; 4]), 10_000) {
            Ok(_) => break,
            Err(e) if time::now_ns() >= end => return warn!(target: "net", "rpcquota: {} never answered ({} tries, last {:?})", peer, tries, e),
            Err(_) => task::sleep_ns(250_000_000),
        }
    }
    info!(target: "net", "rpcquota: {}'s rpcsvc answered (try {}); filling the quota", peer, tries);
    let quota = catenary_net::ipcroute::CALLS_PER_SOURCE as u64;
    let n = quota + QUOTA_EXTRA;
    let t0 = time::now_ns();
    for i in 0..n {
        if task::try_spawn_kernel("rpchold", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, rpchold, i).is_err() {
            warn!(target: "net", "rpcquota: cannot start call {}", i);
        }
    }
    // the calls beyond the quota end at once; the others wait for the callee's kernel
    let wait = |count: usize, secs: u64| {
        let end = time::now_ns() + secs * 1_000_000_000;
        while holds().len() < count && time::now_ns() < end {
            task::sleep_ns(100_000_000);
        }
    };
    wait(QUOTA_EXTRA as usize, 30);
    task::sleep_ns(2_000_000_000); // any further (wrong) early ends show up too
    let early = holds();
    let refused = early.iter().filter(|(r, _)| *r == Err(IpcError::QueueFull)).count();
    info!(target: "net", "rpcquota: {} concurrent calls to {}'s never-answering endpoint: {} refused with QueueFull (slowest after {} ms), {} ended otherwise, {} waiting",
        n, peer, refused, early.iter().filter(|(r, _)| *r == Err(IpcError::QueueFull)).map(|h| h.1).max().unwrap_or(0),
        early.len() - refused, n as usize - early.len());
    wait(n as usize, HOLD_TIMEOUT_MS as u64 / 1000 + 30);
    let all = holds();
    let timed: Vec<u64> = all.iter().filter(|(r, _)| *r == Err(IpcError::Timeout)).map(|h| h.1).collect();
    info!(target: "net", "rpcquota: held calls to {} ended with Timeout: {} (after {}..{} ms; {} ms is our own timeout), outcomes {:?}",
        peer, timed.len(), timed.iter().min().unwrap_or(&0), timed.iter().max().unwrap_or(&0), HOLD_TIMEOUT_MS,
        all.iter().map(|h| h.0).collect::<Vec<_>>());
    let r = task::call_timeout(slot, Message::new(LABEL_HELD, [0; 4]), 10_000);
    info!(target: "net", "rpcquota: a call after the held calls ended ({} s after the first): {:?}",
        (time::now_ns() - t0) / 1_000_000_000, r.map(|m| (m.label, m.words[0])));
    info!(target: "net", "rpcquota done");
}

/// The remote call round trip for `cargo xtask bench ipc`.
pub fn ipcbench(_: u64) {
    let Some((peer, echo)) = catenary_arch::cpu::without_interrupts(|| BENCH.lock().take()) else { return };
    let Ok(slot) = remote_slot(echo) else { return warn!(target: "net", "ipcbench: capability table full") };
    for i in 0..10 {
        let _ = task::call(slot, Message::new(7, [i, 0, 0, 0])); // warm up
    }
    let mut rtt = Vec::with_capacity(BENCH_CALLS);
    for i in 0..BENCH_CALLS as u64 {
        let t = time::now_ns();
        if task::call(slot, Message::new(7, [i, 0, 0, 0])).is_ok_and(|r| r.label == 8) {
            rtt.push(time::now_ns() - t);
        }
    }
    rtt.sort_unstable();
    if let (Some(min), Some(max)) = (rtt.first(), rtt.last()) {
        info!(target: "net", "bench ipc: remote call round trip to {} echo ({} netd, ring-3 echo): median {} us, min {} us, max {} us over {} calls",
            peer, if USER_NETD.load(Ordering::Relaxed) { "ring-3" } else { "in-kernel" }, rtt[rtt.len() / 2] / 1000, min / 1000, max / 1000, rtt.len());
    } else {
        warn!(target: "net", "bench ipc: no remote call to {} answered", peer);
    }
    info!(target: "net", "bench ipc: remote done");
}
