//! In-kernel tests of the microkernel core (SMP, scheduler, ring 3, IPC, driver grants). They
//! run in the boot task ("main", pinned to CPU 0) and use the same system calls as ring 3.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use catenary_arch::{smp, time};
use catenary_ipc::{IpcError, Message, Rights};
use catenary_sched::{Affinity, Priority};

use crate::init::Node;
use crate::task::{self, UserSpec};

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

const SEC: u64 = 1_000_000_000;

pub fn smp_all_cpus_online(node: &Node) -> Result<(), String> {
    check(smp::online_cpus() == node.cpus, || format!("{} of {} CPUs online", smp::online_cpus(), node.cpus))
}

static SEEN: [AtomicUsize; 64] = [const { AtomicUsize::new(usize::MAX) }; 64];
fn record_cpu(slot: u64) {
    SEEN[slot as usize].store(smp::cpu_index(), Ordering::SeqCst);
}

pub fn sched_tasks_on_every_cpu(node: &Node) -> Result<(), String> {
    let ids: alloc::vec::Vec<_> =
        (0..node.cpus).map(|c| task::spawn_kernel("pin", Priority::NORMAL, Affinity::only(c), record_cpu, c as u64)).collect();
    for id in ids {
        task::join(id, 5 * SEC).ok_or("task did not finish")?;
    }
    for (c, seen) in SEEN.iter().enumerate().take(node.cpus) {
        let s = seen.load(Ordering::SeqCst);
        check(s == c, || format!("task pinned to cpu {c} ran on {s}"))?;
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);
static COUNTS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
fn spinner(slot: u64) {
    while !STOP.load(Ordering::Relaxed) {
        COUNTS[slot as usize].fetch_add(1, Ordering::Relaxed);
    }
}

fn last_cpu(node: &Node) -> usize {
    node.cpus.saturating_sub(1)
}

pub fn sched_preemption(node: &Node) -> Result<(), String> {
    STOP.store(false, Ordering::SeqCst);
    COUNTS.iter().for_each(|c| c.store(0, Ordering::SeqCst));
    let cpu = last_cpu(node);
    // Two spinners that never yield share one CPU: only timer preemption lets both run.
    let a = task::spawn_kernel("spin-a", Priority::NORMAL, Affinity::only(cpu), spinner, 0);
    let b = task::spawn_kernel("spin-b", Priority::NORMAL, Affinity::only(cpu), spinner, 1);
    task::sleep_ns(400_000_000);
    let (ca, cb) = (COUNTS[0].load(Ordering::SeqCst), COUNTS[1].load(Ordering::SeqCst));
    STOP.store(true, Ordering::SeqCst);
    task::join(a, 5 * SEC).ok_or("spinner a stuck")?;
    task::join(b, 5 * SEC).ok_or("spinner b stuck")?;
    check(ca > 0 && cb > 0, || format!("counts {ca} / {cb}: one spinner never ran"))
}

/// A high-priority spinner that gives up its CPU by itself after 300 ms and records how far the
/// low-priority spinner got meanwhile (it must not have run at all).
static LO_AT_HI_END: AtomicU64 = AtomicU64::new(u64::MAX);
fn bounded_high_spinner(slot: u64) {
    let end = time::now_ns() + 300_000_000;
    while time::now_ns() < end {
        COUNTS[slot as usize].fetch_add(1, Ordering::Relaxed);
    }
    LO_AT_HI_END.store(COUNTS[3].load(Ordering::SeqCst), Ordering::SeqCst);
}

pub fn sched_priorities(node: &Node) -> Result<(), String> {
    STOP.store(false, Ordering::SeqCst);
    COUNTS.iter().for_each(|c| c.store(0, Ordering::SeqCst));
    LO_AT_HI_END.store(u64::MAX, Ordering::SeqCst);
    let cpu = last_cpu(node);
    // Both pinned to one CPU. With several CPUs the high task starts first and the low one
    // joins while it spins; on a single CPU (where this test task shares the CPU too) the low
    // task is created first — it cannot run while this NORMAL task is runnable — and then the
    // high one, which preempts us both. Either way the low task must not run until the high
    // task gives the CPU up.
    let (hi, lo) = if node.cpus > 1 {
        let hi = task::spawn_kernel("hi", Priority::HIGH, Affinity::only(cpu), bounded_high_spinner, 2);
        task::sleep_ns(50_000_000);
        (hi, task::spawn_kernel("lo", Priority::LOW, Affinity::only(cpu), spinner, 3))
    } else {
        let lo = task::spawn_kernel("lo", Priority::LOW, Affinity::only(cpu), spinner, 3);
        (task::spawn_kernel("hi", Priority::HIGH, Affinity::only(cpu), bounded_high_spinner, 2), lo)
    };
    task::join(hi, 5 * SEC).ok_or("high task stuck")?;
    let hi_count = COUNTS[2].load(Ordering::SeqCst);
    let lo_during_hi = LO_AT_HI_END.load(Ordering::SeqCst);
    // Once the high task is gone, the low one gets the CPU.
    let t0 = time::now_ns();
    while COUNTS[3].load(Ordering::SeqCst) == 0 && time::now_ns() - t0 < 2 * SEC {
        task::sleep_ns(10_000_000);
    }
    let lo_after = COUNTS[3].load(Ordering::SeqCst);
    STOP.store(true, Ordering::SeqCst);
    task::join(lo, 5 * SEC).ok_or("low task stuck")?;
    check(hi_count > 0 && lo_during_hi == 0, || format!("high ran {hi_count}, low ran {lo_during_hi} while high was runnable"))?;
    check(lo_after > 0, || "the low task never ran after the high one finished".into())
}

pub fn sched_sleep_timeouts(_: &Node) -> Result<(), String> {
    let t0 = time::now_ns();
    task::sleep_ns(50_000_000);
    let slept = time::now_ns() - t0;
    check((50_000_000..2 * SEC).contains(&slept), || format!("sleep(50 ms) took {} ms", slept / 1_000_000))?;
    let (slot, _) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let t0 = time::now_ns();
    let r = task::recv(slot, 30_000_000);
    let waited = time::now_ns() - t0;
    check(r == Err(IpcError::Timeout), || format!("recv on an empty endpoint: {r:?}"))?;
    check(waited >= 30_000_000, || format!("timed out after {} ms", waited / 1_000_000))
}

pub fn ipc_ordering(_: &Node) -> Result<(), String> {
    let (slot, _) = task::try_create_endpoint_for_current(16).map_err(crate::ktest::cap_err)?;
    for i in 0..16 {
        task::send(slot, Message::new(100 + i, [i, i * i, 0, 0])).map_err(|e| format!("send {i}: {e:?}"))?;
    }
    for i in 0..16 {
        let m = task::recv(slot, SEC).map_err(|e| format!("recv {i}: {e:?}"))?;
        check(m.label == 100 + i && m.words[1] == i * i, || format!("message {i} arrived as label {}", m.label))?;
    }
    Ok(())
}

pub fn ipc_full_queue(_: &Node) -> Result<(), String> {
    let (slot, _) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    for i in 0..4 {
        task::send(slot, Message::new(i, [0; 4])).map_err(|e| format!("send {i}: {e:?}"))?;
    }
    let r = task::send(slot, Message::new(4, [0; 4]));
    check(r == Err(IpcError::QueueFull), || format!("fifth send into a 4-deep queue: {r:?}"))?;
    for i in 0..4 {
        let m = task::recv(slot, SEC).map_err(|e| format!("{e:?}"))?;
        check(m.label == i, || "queued messages lost or reordered".into())?;
    }
    Ok(())
}

/// A call nobody answers ends with `Timeout` after the caller's own timeout (`SYS_CALL` rdi
/// bits 32..63); the callee's late answer is refused.
pub fn ipc_call_timeout(_: &Node) -> Result<(), String> {
    let (slot, _) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let t0 = time::now_ns();
    let r = task::call_timeout(slot, Message::new(5, [0; 4]), 50);
    let waited = time::now_ns() - t0;
    check(r == Err(IpcError::Timeout), || format!("call nobody answers, 50 ms timeout: {r:?}"))?;
    check((50_000_000..5 * SEC).contains(&waited), || format!("timed out after {} ms", waited / 1_000_000))?;
    if let Ok(m) = task::recv(slot, 100_000_000) {
        let late = task::reply(m.reply, Message::new(6, [0; 4]));
        check(late == Err(IpcError::BadReply), || format!("answer after the caller's timeout: {late:?}"))?;
    }
    Ok(())
}

pub fn ipc_missing_capability(_: &Node) -> Result<(), String> {
    let r = task::send(63, Message::default());
    check(r == Err(IpcError::NoCapability), || format!("send on an empty slot: {r:?}"))?;
    let (_, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let recv_only = task::try_give_current(catenary_ipc::Capability {
        target: catenary_ipc::Address::local(ep),
        rights: Rights::RECV,
        badge: 0,
    }).map_err(crate::ktest::cap_err)?;
    let r = task::send(recv_only, Message::default());
    check(r == Err(IpcError::NoRight), || format!("send with a receive-only capability: {r:?}"))?;
    let send_only = task::try_give_current(task::send_cap(ep, 0)).map_err(crate::ktest::cap_err)?;
    let r = task::recv(send_only, 1_000_000);
    check(r == Err(IpcError::NoRight), || format!("receive with a send-only capability: {r:?}"))
}

fn spawn_uapp(name: &str, role: u64, aff: Affinity, own: bool, caps: &[catenary_ipc::Capability]) -> Result<(u64, Option<u64>), String> {
    task::spawn_user(&UserSpec { name, elf: task::UAPP_ELF, arg: role, prio: Priority::NORMAL, affinity: aff, own_endpoint: own, caps, ports: &[], mmio: &[], dma_pages: 0, mem_pages: task::DEFAULT_MEM_PAGES })
        .map_err(|e| format!("spawn {name}: {e:?}"))
}

pub fn ipc_dead_peer(_: &Node) -> Result<(), String> {
    // The server takes the call and exits without replying: the caller gets DeadPeer, and later
    // sends to its closed endpoint fail the same way.
    let (id, ep) = spawn_uapp("one-shot", task::ROLE_ONE_SHOT, Affinity::ANY, true, &[])?;
    let slot = task::try_give_current(task::send_cap(ep.unwrap(), 0)).map_err(crate::ktest::cap_err)?;
    let r = task::call(slot, Message::new(1, [0; 4]));
    check(r == Err(IpcError::DeadPeer), || format!("call to a server that died: {r:?}"))?;
    check(task::join(id, 5 * SEC) == Some(5), || "server exit code".into())?;
    let r = task::send(slot, Message::default());
    check(r == Err(IpcError::DeadPeer), || format!("send to a dead endpoint: {r:?}"))
}

pub fn ipc_call_reply_across_cpus(node: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let server_cpu = 1.min(node.cpus - 1);
    let client_cpu = last_cpu(node);
    let (srv, sep) = spawn_uapp("echo-x", task::ROLE_ECHO, Affinity::only(server_cpu), true, &[])?;
    let sep = sep.unwrap();
    let (cli, _) = spawn_uapp("client-x", task::ROLE_CLIENT, Affinity::only(client_cpu), false, &[task::send_cap(sep, 7), task::send_cap(ep, 0)])?;
    let m = task::recv(slot, 20 * SEC).map_err(|e| format!("no report from the ring-3 client: {e:?}"))?;
    task::join(cli, 5 * SEC);
    check(m.label == 0x600d && m.words[0] == 200 && m.words[1] == 0, || format!("client report {m:?}"))?;
    // Kernel task on CPU 0 calling the ring-3 server on another CPU.
    let s2 = task::try_give_current(task::send_cap(sep, 9)).map_err(crate::ktest::cap_err)?;
    for i in 0..50 {
        let r = task::call(s2, Message::new(41, [i, 0, 0, 0])).map_err(|e| format!("call {i}: {e:?}"))?;
        check(r.label == 42 && r.words[0] == i + 1, || format!("bad reply {r:?}"))?;
    }
    let _ = srv;
    Ok(())
}

/// The IPC fastpath (`task/fastpath.rs`): a ring-3 echo server answering with
/// `SYS_REPLY_RECV` and two ring-3 clients on its CPU, 200 checked calls each (so the
/// server sometimes finds the other client's call queued when it answers, and sometimes
/// switches straight to its caller); every answer right, and the direct switches taken.
pub fn ipc_fastpath_same_cpu(node: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let cpu = last_cpu(node);
    let before = task::fastpath_handoffs();
    let (srv, sep) = spawn_uapp("echo-f", task::ROLE_ECHO, Affinity::only(cpu), true, &[])?;
    let sep = sep.unwrap();
    let mut clients = alloc::vec::Vec::new();
    for i in 0..2u64 {
        let (cli, _) = spawn_uapp("client-f", task::ROLE_CLIENT, Affinity::only(cpu), false, &[task::send_cap(sep, 7 + i), task::send_cap(ep, 0)])?;
        clients.push(cli);
    }
    for _ in 0..2 {
        let m = task::recv(slot, 20 * SEC).map_err(|e| format!("no report from a ring-3 client: {e:?}"))?;
        check(m.label == 0x600d && m.words[0] == 200 && m.words[1] == 0, || format!("client report {m:?}"))?;
    }
    for c in clients {
        let _ = task::join(c, 5 * SEC);
    }
    task::kill_for_test(srv);
    let n = task::fastpath_handoffs() - before;
    check(n >= 200, || format!("{n} direct switches for 400 calls on one CPU: the fastpath was not taken"))
}

/// Returns to ring 3 by `sysretq` (which overwrites rcx and r11) only for frames saved by
/// `syscall`: two ring-3 tasks on one CPU spin holding patterns in rcx and r11, preempted by
/// the timer and switched between, yielding now and then; both find them intact.
pub fn sched_user_regs_survive_preemption(node: &Node) -> Result<(), String> {
    let cpu = last_cpu(node);
    let a = spawn_uapp("regs-a", task::ROLE_REGS_HOLD, Affinity::only(cpu), false, &[])?.0;
    let b = spawn_uapp("regs-b", task::ROLE_REGS_HOLD, Affinity::only(cpu), false, &[])?.0;
    let (ca, cb) = (task::join(a, 60 * SEC), task::join(b, 60 * SEC));
    check(ca == Some(0x600d) && cb == Some(0x600d), || format!("rcx/r11 of a preempted ring-3 task changed: exit codes {ca:x?} {cb:x?} (0x600d = intact, 0xbad0000 | turns)"))
}

/// The FPU tests' three ring-3 tasks, all pinned to `cpu`: an echo server (`ROLE_FPU_ECHO`)
/// and two clients (`ROLE_FPU_CLIENT`, badges 7 and 8) that call it 150 times each while
/// holding their patterns and then report to `ep`. Returns the server and the clients.
fn spawn_fpu_trio(cpu: usize, ep: u64) -> Result<(u64, alloc::vec::Vec<u64>), String> {
    let (srv, sep) = spawn_uapp("fpu-echo", task::ROLE_FPU_ECHO, Affinity::only(cpu), true, &[])?;
    let Some(sep) = sep else {
        task::kill_for_test(srv);
        return Err("the FPU echo server got no endpoint".into());
    };
    let mut clients = alloc::vec::Vec::new();
    for i in 0..2u64 {
        match spawn_uapp("fpu-client", task::ROLE_FPU_CLIENT, Affinity::only(cpu), false, &[task::send_cap(sep, 7 + i), task::send_cap(ep, 0)]) {
            Ok((cli, _)) => clients.push(cli),
            Err(e) => {
                for c in clients.into_iter().chain([srv]) {
                    task::kill_for_test(c);
                }
                return Err(e);
            }
        }
    }
    Ok((srv, clients))
}

/// The FPU clients' reports (label 0x600d, words: answers right, the client's broken holds,
/// the server's broken holds as the client saw them, AVX used): 150 right answers and no
/// broken hold on either side. `what` says which tasks, for the message.
fn fpu_reports_intact(reports: &[Message], what: &str) -> Result<(), String> {
    for m in reports {
        check(m.label == 0x600d && m.words[0] == 150, || format!("client report {m:?}: wrong answers"))?;
        check(m.words[1] == 0 && m.words[2] == 0, || format!("FPU registers (vector, x87, MXCSR, x87 control word) of a ring-3 task {what} changed: client holds broken {}, server holds broken {} (avx {})", m.words[1], m.words[2], m.words[3]))?;
    }
    Ok(())
}

/// Two ring-3 clients and a ring-3 echo server on one CPU, each holding its own pattern in
/// ymm0..15 (xmm0..15 without AVX), the x87 registers, MXCSR and the x87 control word from 1M
/// TSC cycles before each call to 1M after
/// (server: around each `reply_recv`): the kernel switches between them directly (the IPC
/// fastpath) and by timer preemption, and every task gets its own values back. The FPU image
/// of a ring-3 task lives in its own area, which the CPU holds while it runs (`context`).
pub fn sched_user_fpu_survives_ipc_and_preemption(node: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let cpu = last_cpu(node);
    let before = task::fastpath_handoffs();
    let (srv, clients) = spawn_fpu_trio(cpu, ep)?;
    let mut reports = alloc::vec::Vec::new();
    for _ in 0..2 {
        match task::recv(slot, 60 * SEC) {
            Ok(m) => reports.push(m),
            Err(e) => {
                task::kill_for_test(srv);
                return Err(format!("no report from a ring-3 client: {e:?} (reports so far {reports:?})"));
            }
        }
    }
    for c in clients {
        let _ = task::join(c, 5 * SEC);
    }
    task::kill_for_test(srv);
    let n = task::fastpath_handoffs() - before;
    fpu_reports_intact(&reports, "switched on one CPU")?;
    log::info!(target: "ktest", "ring-3 FPU holds: 300 calls, {n} direct switches, avx {}", reports[0].words[3]);
    check(n >= 100, || format!("{n} direct switches for 300 calls on one CPU: the fastpath was not taken"))
}

/// The FPU state of ring-3 tasks that move between CPUs while they hold it: the two clients
/// and the echo server of `sched_user_fpu_survives_ipc_and_preemption`, with their affinity
/// flipped between two CPUs at every timer tick (the server's every other tick), so a client
/// saved on one CPU is restored on the other, after other ring-3 tasks ran on both. Every
/// hold must come back intact, and each client must have been seen moving at least 5 times
/// (150 calls of 2M TSC cycles of holds take at least ~0.1 s: ten ticks).
pub fn sched_fpu_follows_a_migrating_task(node: &Node) -> Result<(), String> {
    if node.cpus < 2 {
        return Err("SKIP: one CPU".into());
    }
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let (a, b) = (last_cpu(node), last_cpu(node) - 1);
    let (srv, clients) = spawn_fpu_trio(a, ep)?;
    let mut reports = alloc::vec::Vec::new();
    let mut last: alloc::vec::Vec<Option<usize>> = clients.iter().map(|&c| task::cpu_of(c)).collect();
    let mut moves = [0u32; 2];
    let (mut server_moves, mut server_last) = (0u32, task::cpu_of(srv));
    let start = catenary_arch::time::now_ns();
    let mut turn = 0u64;
    while reports.len() < 2 {
        if catenary_arch::time::now_ns() - start > 120 * SEC {
            for &c in &clients {
                task::kill_for_test(c);
            }
            task::kill_for_test(srv);
            return Err(format!("the clients did not report in 120 s ({} reports, moves {moves:?})", reports.len()));
        }
        // One turn per wait below (a timer tick, 10 ms): the clients flip every turn, the
        // server every other one.
        turn += 1;
        for &c in &clients {
            task::set_affinity_for_test(c, Affinity::only(if turn.is_multiple_of(2) { a } else { b }));
        }
        task::set_affinity_for_test(srv, Affinity::only(if (turn / 2).is_multiple_of(2) { a } else { b }));
        for (i, &c) in clients.iter().enumerate() {
            let now = task::cpu_of(c);
            if now.is_some() && now != last[i] {
                moves[i] += 1;
                last[i] = now;
            }
        }
        let now = task::cpu_of(srv);
        if now != server_last {
            server_moves += 1;
            server_last = now;
        }
        if let Ok(m) = task::recv(slot, 1_000_000) {
            reports.push(m);
        }
    }
    for c in clients {
        let _ = task::join(c, 5 * SEC);
    }
    task::kill_for_test(srv);
    log::info!(target: "ktest", "ring-3 FPU holds across CPUs {a} and {b}: clients seen moving {moves:?} times, the server {server_moves} times, avx {}", reports[0].words[3]);
    fpu_reports_intact(&reports, &format!("that moved between CPUs (moves {moves:?}, server {server_moves})"))?;
    check(moves.iter().all(|&n| n >= 5), || format!("the clients were seen moving {moves:?} times (wanted 5 each): they did not migrate"))
}

/// A ring-3 task killed (UD2) while it runs, holding a pattern in ymm0..15 and the x87
/// registers and a non-default MXCSR and x87 control word: its FPU area is the CPU's at that
/// moment. The next ring-3 task on that CPU must start with the default state, not the dead
/// task's: no 16-byte lane of its registers equals the pattern, no x87 register holds one of
/// the dead task's values, MXCSR is 0x1f80, the x87 control word 0x037f, and (with AVX) every
/// upper ymm half is zero.
pub fn sched_user_fpu_of_a_killed_task_does_not_leak(node: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let cpu = last_cpu(node);
    let (dier, _) = spawn_uapp("fpu-die", task::ROLE_FPU_DIE, Affinity::only(cpu), false, &[])?;
    let code = task::join(dier, 10 * SEC).ok_or("the fpu-die task was not killed")?;
    check(code == task::killed_by(6), || format!("fpu-die: exit code {code:#x}, expected the #UD kill"))?;
    let (fresh, _) = spawn_uapp("fpu-fresh", task::ROLE_FPU_FRESH, Affinity::only(cpu), false, &[task::send_cap(ep, 0)])?;
    let m = task::recv(slot, 10 * SEC).map_err(|e| format!("no report from fpu-fresh: {e:?}"))?;
    let _ = task::join(fresh, 5 * SEC);
    let (lanes, x87) = (m.words[0] & 0xffff_ffff, m.words[0] >> 32);
    let (mxcsr, fcw) = (m.words[1] & 0xffff_ffff, m.words[1] >> 32);
    log::info!(target: "ktest", "a new ring-3 task after a killed one: {lanes} lanes and {x87} x87 registers like the dead task's, MXCSR {mxcsr:#x}, x87 control word {fcw:#x}, {} upper ymm lanes not zero (avx {})", m.words[2], m.words[3]);
    check(m.label == 0x600d && lanes == 0 && x87 == 0 && mxcsr == 0x1f80 && fcw == 0x037f && m.words[2] == 0,
        || format!("a new ring-3 task saw the killed task's FPU state: {lanes} lanes equal to its pattern, {x87} x87 registers holding its values, MXCSR {mxcsr:#x} (default 0x1f80), x87 control word {fcw:#x} (default 0x037f), {} upper ymm lanes not zero", m.words[2]))
}

pub fn user_kernel_memory_access_killed(_: &Node) -> Result<(), String> {
    let (id, _) = spawn_uapp("touch-kernel", task::ROLE_TOUCH_KERNEL, Affinity::ANY, false, &[])?;
    let code = task::join(id, 5 * SEC).ok_or("task not killed")?;
    check(code == task::killed_by(14), || format!("exit code {code:#x}, expected #PF kill"))?;
    echo_still_answers()
}

pub fn user_ungranted_port_killed(_: &Node) -> Result<(), String> {
    let (id, _) = spawn_uapp("bad-port", task::ROLE_BAD_PORT, Affinity::ANY, false, &[])?;
    let code = task::join(id, 5 * SEC).ok_or("task not killed")?;
    check(code == task::killed_by(13), || format!("exit code {code:#x}, expected #GP kill"))?;
    echo_still_answers()
}

fn echo_still_answers() -> Result<(), String> {
    let slot = task::try_give_current(task::send_cap(task::echo_endpoint(), 1)).map_err(crate::ktest::cap_err)?;
    let r = task::call(slot, Message::new(1, [10, 0, 0, 0])).map_err(|e| format!("echo service after the kill: {e:?}"))?;
    check(r.words[0] == 11, || "echo service answered wrongly".into())
}

/// A blocked ring-3 task killed from outside (`kill_for_test`, the path a supervisor takes)
/// gives its frames back at once and wakes a task waiting in `join` for it.
pub fn user_killed_while_blocked_frees_frames(_: &Node) -> Result<(), String> {
    let before = crate::ktest::free_frames_settled();
    let (id, _) = spawn_uapp("blocked", task::ROLE_ONE_SHOT, Affinity::ANY, true, &[])?;
    task::sleep_ns(50_000_000); // it reaches its recv and blocks
    check(task::kill_for_test(id), || "task not killable (not blocked?)".into())?;
    let code = task::join(id, 5 * SEC).ok_or("join did not return")?;
    check(code == task::killed_by(0xff), || format!("exit code {code:#x}"))?;
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames leaked by the kill", before as i64 - after as i64))
}

pub fn user_memory_map_unmap(_: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let (id, _) = spawn_uapp("mem", task::ROLE_MEMORY, Affinity::ANY, false, &[task::send_cap(ep, 0)])?;
    let m = task::recv(slot, 10 * SEC).map_err(|e| format!("{e:?}"))?;
    task::join(id, 5 * SEC);
    check(m.words[0] == 1 && m.words[1] == 2047 * 2048 / 2 && m.words[2] == 1, || format!("report {m:?}"))
}

pub fn user_preempted_spinner(_: &Node) -> Result<(), String> {
    // A ring-3 task that never makes a syscall on CPU 0 cannot starve this task.
    let (id, _) = spawn_uapp("spin", task::ROLE_SPIN, Affinity::only(0), false, &[])?;
    let t0 = time::now_ns();
    for _ in 0..5 {
        task::yield_now();
    }
    task::sleep_ns(20_000_000);
    let starved = time::now_ns() - t0 >= 5 * SEC;
    // `kill_for_test` refuses a task running on another CPU: until session 28 the spinner
    // often ran on for the whole boot. Now it is killed here, or by the watchdog (its limit
    // lowered for the purpose).
    if !task::kill_for_test(id) {
        task::watchdog::set_limit_for_test(Some(100));
    }
    let code = task::join(id, 5 * SEC);
    task::watchdog::set_limit_for_test(None);
    check(!starved, || "main task starved".into())?;
    check(code == Some(task::killed_by(0xff)) || code == Some(task::watchdog::WATCHDOG_CODE), || format!("the spinner did not end: {code:x?}"))
}

/// The spin watchdog (`task::watchdog`), its limit lowered to 300 ms: a ring-3 task that
/// never makes a system call is killed with the watchdog's exit code once it has run the
/// limit, not before, and its frames come back; one that spins five times as long but reads
/// the clock (a system call) every millisecond or so is left alone, and so is one whose
/// quiet stretches (each under the limit, more than it together) end in a blocking sleep; a
/// task calling a server that took its call and hung is released with `DeadPeer`.
pub fn user_spinner_killed_by_the_watchdog(_: &Node) -> Result<(), String> {
    task::watchdog::set_limit_for_test(Some(300));
    let r = (|| {
        let before = crate::ktest::free_frames_settled();
        let t0 = time::now_ns();
        let (id, _) = spawn_uapp("hung", task::ROLE_SPIN, Affinity::ANY, false, &[])?;
        let code = task::join(id, 20 * SEC).ok_or("the spinner was not killed within 20 s")?;
        let took = time::now_ns() - t0;
        check(code == task::watchdog::WATCHDOG_CODE, || format!("exit code {code:#x}"))?;
        // (the limit is 30 timer ticks: one tick, 10 ms, is the count's own grain)
        check(took >= 290_000_000, || format!("killed after {} ms, before the limit", took / 1_000_000))?;
        log::info!(target: "ktest", "watchdog: a ring-3 spinner was killed {} ms after its start (limit 300 ms of CPU time)", took / 1_000_000);
        let after = crate::ktest::free_frames_settled();
        check(after == before, || format!("{} frames leaked by the kill", before as i64 - after as i64))?;
        let (id, _) = spawn_uapp("busy", task::ROLE_SPIN_FOR, Affinity::ANY, false, &[])?;
        let code = task::join(id, 30 * SEC).ok_or("the busy task did not end")?;
        check(code == 0x5f, || format!("a task making system calls ended with {code:#x} (0x5f: its own exit)"))?;
        // 6 x 120 ms quiet stretches, each ended by a blocking sleep: the sleep's system call
        // counts when the task is switched out (not at a tick), so the stretches never add up
        let (id, _) = spawn_uapp("spin-sleep", task::ROLE_SPIN_SLEEP, Affinity::ANY, false, &[])?;
        let code = task::join(id, 30 * SEC).ok_or("the spin-sleep task did not end")?;
        check(code == 0x51, || format!("a task whose quiet stretches end in a blocking call ended with {code:#x} (0x51: its own exit)"))?;
        // a server that takes a call and hangs: its caller is released (DeadPeer) once the
        // watchdog kills it, not held for ever
        let (id, ep) = spawn_uapp("hung-server", task::ROLE_HANG_ON_CALL, Affinity::ANY, true, &[])?;
        let slot = task::try_give_current(task::send_cap(ep.ok_or("no endpoint")?, 0)).map_err(crate::ktest::cap_err)?;
        let t0 = time::now_ns();
        let r = task::call_timeout(slot, Message::new(1, [0; 4]), 10_000);
        let took = time::now_ns() - t0;
        check(r == Err(IpcError::DeadPeer), || format!("a call to a server that hangs: {r:?}"))?;
        check(task::join(id, 5 * SEC) == Some(task::watchdog::WATCHDOG_CODE), || "the hung server was not the watchdog's".into())?;
        log::info!(target: "ktest", "watchdog: a call to a server that hung was released after {} ms", took / 1_000_000);
        Ok(())
    })();
    task::watchdog::set_limit_for_test(None);
    r
}

/// Heartbeats (`task::heartbeat`): three ring-3 tasks arm a 300 ms heartbeat, beat for
/// 600 ms and then stop in the ways the spin watchdog does not see: a loop that sleeps 5 ms
/// (a retry loop), a receive nobody answers (killed where it waits), and a loop that reads
/// the clock without ever blocking (killed by its CPU's tick). Each ends with the heartbeat's
/// exit code, not before its last beat's period has run out, and its frames come back. A
/// fourth beats every 50 ms for 1.5 s and makes a call answered after 800 ms (time waiting
/// for a reply does not count): it lives to exit on its own, and out-of-range periods were
/// refused. A fifth beats every 20 ms on one CPU while a higher-priority kernel task spins
/// there for 1 s: ready but not running for over three periods, it is not killed (time ready
/// does not count), and its own longest gap between beats shows it was kept off the CPU.
pub fn user_task_that_misses_its_heartbeat_is_killed(node: &Node) -> Result<(), String> {
    let before = crate::ktest::free_frames_settled();
    for (name, role) in [("beat-sleepy", task::ROLE_BEAT_SLEEPY), ("beat-recv", task::ROLE_BEAT_RECV), ("beat-busy", task::ROLE_BEAT_BUSY)] {
        let t0 = time::now_ns();
        let (id, _) = spawn_uapp(name, role, Affinity::ANY, true, &[])?;
        let code = task::join(id, 20 * SEC).ok_or_else(|| format!("{name} was not killed within 20 s"))?;
        let took = time::now_ns() - t0;
        check(code == task::heartbeat::HEARTBEAT_CODE, || format!("{name}: exit code {code:#x}"))?;
        // its last beat came after 580-600 ms: not killed before that beat's 300 ms ran out
        check(took >= 880_000_000, || format!("{name} killed after {} ms, before its heartbeat was late", took / 1_000_000))?;
        // and soon after: a look every 100 ms (beat-busy, always running, is killed by its
        // CPU's tick once the look has marked it)
        check(took < 1_500_000_000, || format!("{name} killed only after {} ms", took / 1_000_000))?;
        log::info!(target: "ktest", "heartbeat: {name} was killed {} ms after its start (beats stopped after 600 ms, period 300 ms)", took / 1_000_000);
    }
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames leaked by the kills", before as i64 - after as i64))?;
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let (id, _) = spawn_uapp("beat-keep", task::ROLE_BEAT_KEEP, Affinity::ANY, false, &[task::send_cap(ep, 0)])?;
    let m = task::recv(slot, 20 * SEC).map_err(|e| format!("beat-keep made no call: {e:?}"))?;
    task::sleep_ns(800_000_000);
    task::reply(m.reply, Message::new(0, [0; 4])).map_err(|e| format!("reply to beat-keep: {e:?}"))?;
    let code = task::join(id, 10 * SEC).ok_or("beat-keep did not end")?;
    check(code == 0x52, || format!("a task that kept its heartbeat ended with {code:#x} (0x52: its own exit; 0x53: a bad period was taken)"))?;
    // ready, not running: a higher-priority kernel task takes its CPU for 1 s
    let cpu = last_cpu(node);
    let (id, _) = spawn_uapp("beat-ready", task::ROLE_BEAT_READY, Affinity::only(cpu), false, &[])?;
    task::sleep_ns(300_000_000);
    let hog = task::spawn_kernel("beat-hog", Priority::HIGH, Affinity::only(cpu), spin_for, SEC);
    let code = task::join(id, 20 * SEC).ok_or("beat-ready did not end")?;
    task::join(hog, 5 * SEC).ok_or("the hog did not end")?;
    check(code != task::heartbeat::HEARTBEAT_CODE, || "beat-ready was killed for the time it was kept ready".into())?;
    check(code >> 24 == 0x55, || format!("beat-ready ended with {code:#x}"))?;
    let gap = code & 0xff_ffff;
    // not vacuous: it really went over three of its periods without running
    check(gap >= 900, || format!("beat-ready's longest gap between beats was {gap} ms: it was not kept off its CPU"))?;
    log::info!(target: "ktest", "heartbeat: beat-ready kept ready {gap} ms (period 300 ms) by a kernel task on cpu {cpu}, not killed");
    Ok(())
}

/// Spin on this CPU for `ns` by the clock, never blocking.
fn spin_for(ns: u64) {
    let t0 = time::now_ns();
    while time::now_ns() - t0 < ns {
        core::hint::spin_loop();
    }
}

pub fn driver_rtc_over_ipc(_: &Node) -> Result<(), String> {
    let rtc = task::rtc_endpoint().ok_or("rtcd not running")?;
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let (id, _) = spawn_uapp("rtc-client", task::ROLE_RTC_CLIENT, Affinity::ANY, false, &[task::send_cap(rtc, 3), task::send_cap(ep, 0)])?;
    let m = task::recv(slot, 20 * SEC).map_err(|e| format!("no report: {e:?}"))?;
    task::join(id, 5 * SEC);
    check(m.words[0] < 86_400 && (2000..2200).contains(&m.words[1]), || format!("RTC time {m:?}"))?;
    check(m.words[2] > 0, || "no RTC interrupt reached rtcd as a notification".into())
}

// ---- the microVM vCPU loop as a task ----

static VM_TASK: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
fn vm_task_body(_: u64) {
    use crate::vm::{Ended, Image, HOSTILE_GUEST, HOSTILE_LOAD};
    VM_TASK[0].store(smp::cpu_index() as u64, Ordering::SeqCst);
    let before = COUNTS[0].load(Ordering::SeqCst);
    let r = crate::vm::run("hostile-long", Image::Raw { code: HOSTILE_GUEST, load: HOSTILE_LOAD, arg: 6 }, 16);
    crate::vm::report("hostile-long", &r);
    log::info!(target: "ktest", "hostile-long exits by reason: {:?}", r.exits_by_reason);
    let after = COUNTS[0].load(Ordering::SeqCst);
    VM_TASK[1].store(smp::cpu_index() as u64, Ordering::SeqCst);
    VM_TASK[2].store(after - before, Ordering::SeqCst);
    let ok = matches!(r.ended, Ended::Stopped(catenary_vmm::cpu::StopReason::PowerOff { .. }))
        && r.console.iter().any(|l| l.contains("long run done"));
    VM_TASK[3].store(ok as u64, Ordering::SeqCst);
    VM_TASK[4].store(r.exits, Ordering::SeqCst);
    VM_TASK[5].store(r.wall_ns, Ordering::SeqCst);
}

/// A microVM's vCPU loop runs as a task pinned to one CPU (`vm::vm_test_cpu`), sharing it with
/// a kernel spinner that never yields: both make progress, so the vCPU loop is preempted (and
/// preempts) like any other task.
pub fn vm_vcpu_loop_is_a_task(_: &Node) -> Result<(), String> {
    let f = catenary_arch::cpu::features();
    if !f.svm && !f.vmx {
        return Err("no hardware virtualization on this CPU".into());
    }
    STOP.store(false, Ordering::SeqCst);
    COUNTS[0].store(0, Ordering::SeqCst);
    VM_TASK.iter().for_each(|c| c.store(u64::MAX, Ordering::SeqCst));
    let spin = task::spawn_kernel("spin-vm", Priority::NORMAL, Affinity::only(crate::vm::vm_test_cpu(catenary_arch::smp::online_cpus())), spinner, 0);
    let vm = task::spawn_kernel("vcpu-test", Priority::NORMAL, Affinity::only(crate::vm::vm_test_cpu(catenary_arch::smp::online_cpus())), vm_task_body, 0);
    let done = task::join(vm, 60 * SEC);
    STOP.store(true, Ordering::SeqCst);
    task::join(spin, 5 * SEC).ok_or("spinner stuck")?;
    done.ok_or("the vCPU task did not finish")?;
    let v: alloc::vec::Vec<u64> = VM_TASK.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    check(v[3] == 1, || format!("the guest did not run to its power-off: {v:?}"))?;
    let want = crate::vm::vm_test_cpu(catenary_arch::smp::online_cpus()) as u64;
    check(v[0] == want && v[1] == want, || format!("vCPU task ran on cpu {} / {} (pinned to {want})", v[0], v[1]))?;
    check(v[2] > 0, || "the spinner on the same CPU made no progress while the vCPU ran".into())?;
    log::info!(target: "ktest", "vCPU task: {} exits in {} ms, spinner made {} steps meanwhile", v[4], v[5] / 1_000_000, v[2]);
    Ok(())
}

// ---- memory grants through the syscall ABI ----

/// Two ring-3 tasks move 64 KiB through a grant (read-only, then read-write), the kernel
/// refuses grants of memory the sender does not own or may not write, and the receiver's
/// mapping is gone after its reply (touching it kills the receiver).
pub fn ipc_memory_grant(_: &Node) -> Result<(), String> {
    let (slot, ep) = task::try_create_endpoint_for_current(4).map_err(crate::ktest::cap_err)?;
    let before = crate::ktest::free_frames_settled();
    let (srv, sep) = spawn_uapp("grant-srv", task::ROLE_GRANT_SERVER, Affinity::ANY, true, &[])?;
    let sep = sep.unwrap();
    let grant_cap = catenary_ipc::Capability { target: catenary_ipc::Address::local(sep), rights: Rights::SEND.union(Rights::GRANT), badge: 5 };
    let (cli, _) = spawn_uapp("grant-cli", task::ROLE_GRANT_CLIENT, Affinity::ANY, false, &[grant_cap, task::send_cap(ep, 0), task::send_cap(sep, 6)])?;
    let m = task::recv(slot, 20 * SEC).map_err(|e| format!("no report from the client: {e:?}"))?;
    let code = task::join(srv, 5 * SEC).ok_or("grant server not killed")?;
    task::join(cli, 5 * SEC).ok_or("client did not exit")?;
    check(m.words[0] == 1, || format!("read-only 64 KiB grant: checksum mismatch ({m:?})"))?;
    check(m.words[1] == 1, || format!("read-write grant: data not seen by the sender ({m:?})"))?;
    check(m.words[2] == 63, || format!("bad grants accepted: error mask {:#b} (want 0b111111; 0b100000: a forged descriptor refused)", m.words[2]))?;
    check(m.words[3] == 1 && code == task::killed_by(14), || format!("revoked grant still mapped (server exit {code:#x})"))?;
    check(task::grants_outstanding() == 0, || format!("{} grants left", task::grants_outstanding()))?;
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames leaked", before as i64 - after as i64))
}

// ---- driver grants: MMIO and DMA ----

/// A ring-3 driver granted the IOAPIC's page reads the IOAPIC version register through
/// IOREGSEL/IOWIN (the kernel reads the same value), cannot map anything else, gets
/// physically contiguous DMA memory whose physical address the kernel checks by reading the
/// driver's data there, cannot exceed its DMA quota, and is killed when it touches MMIO it
/// was not granted; its DMA frames come back.
pub fn driver_mmio_dma_grants(_: &Node) -> Result<(), String> {
    let io = task::ioapic_phys().ok_or("no IOAPIC in ACPI")?;
    let before = crate::ktest::free_frames_settled();
    let (id, ep) = task::spawn_user(&UserSpec { name: "mmio-drv", elf: task::UAPP_ELF, arg: task::ROLE_MMIO_DRIVER, prio: Priority::DRIVER,
        affinity: Affinity::ANY, own_endpoint: true, caps: &[], ports: &[], mmio: &[(io, 4096)], dma_pages: 4, mem_pages: task::DEFAULT_MEM_PAGES })
        .map_err(|e| format!("spawn: {e:?}"))?;
    let slot = task::try_give_current(task::send_cap(ep.unwrap(), 0)).map_err(crate::ktest::cap_err)?;
    let r = task::call(slot, Message::new(1, [io, 0xfee0_0000, 0, 0])).map_err(|e| format!("driver call: {e:?}"))?;
    let kernel_ver = catenary_arch::apic::ioapic_read(io, 1).map_err(|e| format!("{e:?}"))? as u64;
    check(r.words[0] == kernel_ver && matches!(kernel_ver & 0xff, 0x11 | 0x20), || format!("IOAPIC version from ring 3 {:#x}, kernel reads {kernel_ver:#x}", r.words[0]))?;
    let phys = r.words[1];
    check(phys != 0 && phys % 4096 == 0, || format!("DMA physical address {phys:#x}"))?;
    for i in 0..4u64 {
        let mut b = [0u8; 8];
        catenary_arch::memory::phys_read(phys + i * 4096, &mut b);
        let v = u64::from_le_bytes(b);
        check(v == 0xd4a0 + i, || format!("DMA page {i} at {:#x} holds {v:#x}: not the driver's memory", phys + i * 4096))?;
    }
    check(r.words[2] == 7, || format!("ungranted MMIO / DMA over quota accepted: error mask {:#b}", r.words[2]))?;
    task::send(slot, Message::new(9, [0; 4])).map_err(|e| format!("{e:?}"))?;
    let code = task::join(id, 5 * SEC).ok_or("driver not killed")?;
    check(code == task::killed_by(14), || format!("exit code {code:#x}, expected #PF kill"))?;
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames leaked", before as i64 - after as i64))?;
    log::info!(target: "ktest", "ring-3 driver: IOAPIC version {kernel_ver:#x} via granted MMIO, 4 DMA pages at {phys:#x}");
    Ok(())
}

// ---- XSAVE: AVX state survives preemption ----

static AVX_OK: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
fn avx_task(seed: u64) {
    let mut pattern = [0u8; 256];
    for (i, b) in pattern.iter_mut().enumerate() {
        *b = (i as u64).wrapping_mul(31).wrapping_add(seed * 97) as u8;
    }
    let mut out = [0u8; 256];
    // ~0.3 s at a few GHz: many timer ticks, the other AVX task runs in between.
    catenary_arch::cpu::avx_hold(&pattern, &mut out, 1 << 30);
    AVX_OK[seed as usize].store(if out == pattern { 1 } else { 2 }, Ordering::SeqCst);
}

/// Two kernel tasks on one CPU each hold a different pattern in ymm0..ymm7 (all 256 bits)
/// while being preempted by each other; both get their own values back (XSAVE/XRSTOR).
pub fn sched_avx_state_survives_preemption(node: &Node) -> Result<(), String> {
    if !catenary_arch::cpu::avx_enabled() {
        log::info!(target: "ktest", "no AVX on this CPU: ymm test skipped (XCR0 {:#x})", catenary_arch::uspace::xcr0());
        return Ok(());
    }
    AVX_OK.iter().for_each(|a| a.store(0, Ordering::SeqCst));
    let cpu = last_cpu(node);
    let a = task::spawn_kernel("avx-a", Priority::NORMAL, Affinity::only(cpu), avx_task, 0);
    let b = task::spawn_kernel("avx-b", Priority::NORMAL, Affinity::only(cpu), avx_task, 1);
    task::join(a, 30 * SEC).ok_or("avx task a stuck")?;
    task::join(b, 30 * SEC).ok_or("avx task b stuck")?;
    let (ra, rb) = (AVX_OK[0].load(Ordering::SeqCst), AVX_OK[1].load(Ordering::SeqCst));
    check(ra == 1 && rb == 1, || format!("ymm registers corrupted across preemption: a {ra}, b {rb} (1 = intact)"))
}
