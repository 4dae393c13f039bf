//! `syscall_fuzz`: the ring-3 syscall fuzzer (`hypervisor/user/src/bin/sysfuzz.rs`) against
//! this node for a fixed time. Run on request only (`ktest.only=syscall_fuzz`; `cargo xtask
//! test --only syscall_fuzz`), with `sysfuzz.seconds=N` (default 60), `sysfuzz.seed=HEX`
//! (default: from the clock; printed either way) and `sysfuzz.classes=HEX` (operation classes
//! that crash the kernel until their finding is fixed; default `DEFAULT_CLASSES`).
//!
//! The test restarts the fuzzer whenever it ends (killed by a fault, a chosen exit, or, when it
//! blocks past its deadline, killed by the test), each run with a seed derived from the master
//! seed, beside a peer task it calls and grants memory to. It passes if the node survives, no
//! call that must fail succeeded, every syscall was exercised, the node's services still
//! answer, and the free-frame count is back at its starting value after the last run.

use alloc::format;
use alloc::string::String;
use catenary_arch::{apic, smp, time, trap};
use catenary_ipc::sysfuzz::*;
use catenary_ipc::{Address, Capability, IpcError, Message, Rights};
use catenary_sched::{Affinity, Priority};
use log::info;

use crate::init::Node;
use crate::task::{self, UserSpec};

const SEC: u64 = 1_000_000_000;
/// Classes on by default: those whose kernel finding is fixed on main (see the class list
/// in catenary_ipc::sysfuzz and docs/microkernel.md).
const DEFAULT_CLASSES: u64 = ALL_CLASSES;
/// A run ends after at most this long (then a new fuzzer with the next seed starts).
const RUN_NS: u64 = 10 * SEC;
/// How long past its deadline a fuzzer may stay blocked before the test kills it.
const GRACE_NS: u64 = 2 * SEC;
/// Fuzzers running at once (beside one peer), so syscalls race on the node's CPUs.
const FUZZERS: usize = 2;
/// The badge of fuzzer i's report capability: REPORT_BADGE | i.
const REPORT_BADGE: u64 = 0x5f00;
/// The syscalls (and "any other number") the fuzzer reports coverage for: bits 0..=18.
const ALL_CALLS: u64 = (1 << 19) - 1;

fn arg<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    crate::cmdline::get(&node.boot.cmdline, key)
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
}

/// SplitMix64 step: the seed of run `n` from the master seed.
fn run_seed(master: u64, n: u64) -> u64 {
    let mut z = master.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn vector_name(v: u64) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        6 => "#UD",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        0xff => "killed-by-test",
        _ => "other",
    }
}

#[derive(Default)]
struct Tally {
    runs: u64,
    calls: u64,
    errors: u64,
    violations: u64,
    covered: u64,
    finished: u64,
    chosen_exits: u64,
    blocked: u64,
    kills: alloc::collections::BTreeMap<u64, u64>,
    bad_exits: u64,
    peer_failures: u64,
    peer_deaths: u64,
}

pub fn syscall_fuzz(node: &Node) -> Result<(), String> {
    let secs = arg(node, "sysfuzz.seconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(60).max(1);
    let master = arg(node, "sysfuzz.seed").and_then(hex).unwrap_or_else(|| time::now_ns() ^ catenary_arch::cpu::rdtsc().rotate_left(17));
    let classes = arg(node, "sysfuzz.classes").and_then(hex).unwrap_or(DEFAULT_CLASSES) & ALL_CLASSES;
    let io = task::ioapic_phys().ok_or("no IOAPIC in ACPI: nothing to grant as MMIO")?;
    info!(target: "sysfuzz", "sysfuzz: master seed {master:#018x}, {secs} s, classes {classes:#x} (reproduce with sysfuzz.seed={master:x} sysfuzz.classes={classes:x})");

    // A stale capability: the endpoint of a task that has exited.
    let (gone, gone_ep) = task::spawn_user(&UserSpec { name: "sysfuzz-gone", elf: task::UAPP_ELF, arg: task::ROLE_ONE_SHOT, prio: Priority::NORMAL,
        affinity: Affinity::ANY, own_endpoint: true, caps: &[], ports: &[], mmio: &[], dma_pages: 0, mem_pages: task::DEFAULT_MEM_PAGES })
        .map_err(|e| format!("spawn: {e:?}"))?;
    let s = task::try_give_current(task::send_cap(gone_ep.ok_or("no endpoint")?, 0)).map_err(crate::ktest::cap_err)?;
    task::send(s, Message::new(1, [0; 4])).map_err(|e| format!("{e:?}"))?;
    task::drop_current(s);
    task::join(gone, 5 * SEC).ok_or("one-shot task did not exit")?;
    let stale = Capability { target: Address::local(gone_ep.unwrap()), rights: Rights::SEND.union(Rights::RECV), badge: 7 };

    let (rslot, rep_ep) = task::try_create_endpoint_for_current(64).map_err(crate::ktest::cap_err)?;
    let before = crate::ktest::free_frames_settled();
    let (nmi0, nmi3_0, ac0) = (trap::nmi_count(), trap::nmi_ring3_count(), trap::ac_entries());
    info!(target: "sysfuzz", "sysfuzz: free frames before: {before}");
    let end = time::now_ns() + secs * SEC;
    let mut t = Tally::default();
    while time::now_ns() < end {
        one_run(&mut t, master, classes, io, end, stale, rslot, rep_ep)?;
    }
    task::drop_current(rslot);
    let after = crate::ktest::free_frames_settled();
    info!(target: "sysfuzz", "sysfuzz: free frames after: {after} (before: {before})");

    let (nmis, nmis3) = (trap::nmi_count() - nmi0, trap::nmi_ring3_count() - nmi3_0);
    info!(target: "sysfuzz", "sysfuzz: NMIs sent to the fuzzers' CPUs: {nmis} handled, {nmis3} of them in ring 3");
    let mut kills = String::new();
    for (v, n) in &t.kills {
        kills.push_str(&format!(" {}({v})={n}", vector_name(*v)));
    }
    info!(target: "sysfuzz", "sysfuzz: summary: {} runs, {} calls ({} errors), {} violations, syscalls covered {:#x}/{ALL_CALLS:#x}; runs ended: {} at the deadline, {} chosen exits, {} blocked (killed by the test); peer told to exit {}; kills by vector:{}",
        t.runs, t.calls, t.errors, t.violations, t.covered, t.finished, t.chosen_exits, t.blocked, t.peer_deaths, if kills.is_empty() { " none" } else { &kills });

    // The node's services still answer.
    let echo = task::try_give_current(task::send_cap(task::echo_endpoint(), 1)).map_err(crate::ktest::cap_err)?;
    let r = task::call(echo, Message::new(1, [41, 0, 0, 0]));
    task::drop_current(echo);
    check(matches!(r, Ok(m) if m.words[0] == 42), || format!("echo service after fuzzing: {r:?}"))?;
    // The fuzzers enter the kernel with RFLAGS.AC set (syscalls, interrupts): it must be clear
    // in every handler (SMAP on).
    let ac = trap::ac_entries() - ac0;
    check(ac == 0, || format!("{ac} kernel entries ran with RFLAGS.AC set"))?;
    // NMI and #MC are not the task's doing: they must never kill it.
    check(!t.kills.contains_key(&2) && !t.kills.contains_key(&18), || format!("a fuzzer was killed by NMI/#MC: {kills}"))?;
    // About 1 in 100 lands in ring 3 here (the CPUs spend most of their time in the kernel
    // under TCG): a run without one is unlikely but not wrong, so it is only reported.
    if classes & C_NMI != 0 && nmis3 == 0 {
        log::warn!(target: "sysfuzz", "sysfuzz: none of the {nmis} NMIs arrived in ring 3 this time");
    }
    check(t.violations == 0, || format!("{} calls that must fail succeeded (see VIOLATION lines)", t.violations))?;
    check(t.peer_failures == 0, || format!("the peer died in {} runs", t.peer_failures))?;
    check(t.bad_exits == 0, || format!("{} runs ended with an unexpected exit code (fuzzer bug?)", t.bad_exits))?;
    check(t.blocked >= 1, || "the first run's held grant did not leave its caller blocked".into())?;
    check(t.covered & ALL_CALLS == ALL_CALLS, || format!("syscalls covered {:#x}, want {ALL_CALLS:#x}", t.covered))?;
    check(after == before, || format!("free frames {before} before, {after} after: {} leaked", before as i64 - after as i64))
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// One fuzzer instance of a run.
struct Fuzzer {
    id: u64,
    slot: usize,
    seed: u64,
    code: Option<u64>,
    calls: u64,
    errors: u64,
}

fn spec<'a>(name: &'a str, seed: u64, caps: &'a [Capability], mmio: &'a [(u64, u64)], dma: u64) -> UserSpec<'a> {
    UserSpec { name, elf: task::SYSFUZZ_ELF, arg: seed, prio: Priority::NORMAL, affinity: Affinity::ANY, own_endpoint: true, caps, ports: &[], mmio, dma_pages: dma, mem_pages: task::DEFAULT_MEM_PAGES }
}

/// One run: a peer and `FUZZERS` fuzzers beside it (on any CPU), until every fuzzer ended.
#[allow(clippy::too_many_arguments)]
fn one_run(t: &mut Tally, master: u64, classes: u64, io: u64, end: u64, stale: Capability, rslot: usize, rep_ep: u64) -> Result<(), String> {
    let (peer, peer_ep) = task::spawn_user(&spec("sysfuzz-peer", 0, &[], &[], 0)).map_err(|e| format!("spawn peer: {e:?}"))?;
    let peer_ep = peer_ep.ok_or("peer has no endpoint")?;
    let pslot = task::try_give_current(task::send_cap(peer_ep, 0)).map_err(crate::ktest::cap_err)?;
    task::send(pslot, Message::new(CFG_PEER, [0; 4])).map_err(|e| format!("peer config: {e:?}"))?;

    // The first run is short and ends at its deadline (SYS_EXIT covered every time).
    let first = t.runs == 0;
    let deadline = end.min(time::now_ns() + if first { SEC } else { RUN_NS });
    let cls = classes | if first { F_FIRST_RUN } else { 0 };
    let remote = Address { node: [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], endpoint: 1 };
    let mmio = [(io, 4096), (HOLE_PHYS, 4096)];
    let mut fz = alloc::vec::Vec::new();
    for i in 0..FUZZERS {
        let seed = run_seed(master, t.runs);
        t.runs += 1;
        let caps = [
            Capability { target: Address::local(peer_ep), rights: Rights::SEND.union(Rights::GRANT), badge: 1 },
            stale,
            task::send_cap(rep_ep, REPORT_BADGE | i as u64),
            Capability { target: remote, rights: Rights::SEND.union(Rights::GRANT).union(Rights::BIND), badge: 2 },
            Capability { target: Address::local(peer_ep), rights: Rights::NONE, badge: 3 },
        ];
        let (id, ep) = task::spawn_user(&spec("sysfuzz", seed, &caps, &mmio, 4)).map_err(|e| format!("spawn fuzzer: {e:?}"))?;
        let slot = task::try_give_current(task::send_cap(ep.ok_or("fuzzer has no endpoint")?, 0)).map_err(crate::ktest::cap_err)?;
        // In the first run, the second fuzzer ends holding a grant (see GRANT_HOLD).
        let cls = if first && i == 1 { cls | F_FIRST_HOLD } else { cls };
        task::send(slot, Message::new(CFG_FUZZ, [deadline, cls, io, peer])).map_err(|e| format!("fuzzer config: {e:?}"))?;
        fz.push(Fuzzer { id, slot, seed, code: None, calls: 0, errors: 0 });
    }

    // Collect reports until every fuzzer ended; past the deadline and grace, kill the rest.
    while fz.iter().any(|f| f.code.is_none()) {
        match task::recv(rslot, 20_000_000) {
            Ok(m) => {
                take_report(t, &mut fz, &m);
                continue;
            }
            Err(IpcError::Timeout) => {}
            Err(e) => return Err(format!("report endpoint: {e:?}")),
        }
            if classes & C_NMI != 0 {
            for c in (0..smp::online_cpus()).filter(|c| *c != smp::cpu_index()) {
                if let Some(a) = smp::apic_id_of(c) {
                    apic::send_nmi(a);
                }
            }
        }
        let late = time::now_ns() > deadline + GRACE_NS;
        for f in fz.iter_mut().filter(|f| f.code.is_none()) {
            let _ = task::send(f.slot, Message::new(TICK, [0; 4]));
            if let Some(c) = task::join(f.id, 1) {
                f.code = Some(c);
            } else if late && task::kill_for_test(f.id) {
                t.blocked += 1;
                f.code = Some(task::killed_by(0xff));
            }
        }
    }
    while let Ok(m) = task::recv(rslot, 1) {
        take_report(t, &mut fz, &m);
    }
    for f in &fz {
        task::drop_current(f.slot);
        let code = f.code.unwrap_or(0);
        t.calls += f.calls;
        t.errors += f.errors;
        if code == 0 || code & 1 << 63 != 0 {
            t.covered |= 1 << catenary_ipc::syscall::SYS_EXIT; // it ended with SYS_EXIT
        }
        match code {
            0 => t.finished += 1,
            c if c & 1 << 63 != 0 || c & !0xff == 0x5f_0000 => t.chosen_exits += 1,
            c if c & !0xff == task::killed_by(0) => {
                if c & 0xff != 0xff {
                    *t.kills.entry(c & 0xff).or_default() += 1;
                }
            }
            c => {
                t.bad_exits += 1;
                log::warn!(target: "sysfuzz", "sysfuzz: fuzzer with seed {:#x} exited with {c:#x}", f.seed);
            }
        }
        info!(target: "sysfuzz", "sysfuzz: fuzzer seed {:#018x}: {} calls, {} errors, ended with {code:#x}", f.seed, f.calls, f.errors);
    }

    // Stop the peer (it answers badge-0 PEER_STOP only), unless a fuzzer told it to exit.
    let _ = task::send(pslot, Message::new(PEER_STOP, [0; 4]));
    match task::join(peer, 2 * SEC) {
        Some(0) => {}
        Some(PEER_DIED) => t.peer_deaths += 1,
        r => {
            // The peer only answers calls and reads real grants: it must never die, and a
            // reply to a call whose caller was killed must fail.
            t.peer_failures += 1;
            log::warn!(target: "sysfuzz", "sysfuzz: the peer ended with {r:x?}");
            task::kill_for_test(peer);
        }
    }
    task::drop_current(pslot);
    Ok(())
}

/// Fold a fuzzer report into the tally (stats are cumulative per run: keep the latest).
fn take_report(t: &mut Tally, fz: &mut [Fuzzer], m: &Message) {
    let Some(f) = fz.get_mut((m.badge ^ REPORT_BADGE) as usize) else { return };
    match m.label {
        REPORT_STATS | REPORT_DONE => {
            f.calls = f.calls.max(m.words[0]);
            f.errors = f.errors.max(m.words[1]);
            t.covered |= m.words[3];
        }
        REPORT_VIOLATION => {
            t.violations += 1;
            log::warn!(target: "sysfuzz", "sysfuzz: VIOLATION reported: nr {} arg0 {:#x} arg1 {:#x} -> {:#x}", m.words[0], m.words[1], m.words[2], m.words[3]);
        }
        _ => {}
    }
}
