//! The syscall boundary: each finding of the syscall review has a test here that failed (or
//! took the node down) before its fix. Ring-3 halves are roles of `uapp`.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};
use catenary_arch::{apic, smp, trap};
use catenary_ipc::Message;
use catenary_sched::{Affinity, Priority};

use crate::init::Node;
use crate::task::{self, UserSpec};

const SEC: u64 = 1_000_000_000;
/// Memory quota of the hostile task (`map` and page tables).
const QUOTA: u64 = 64;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn spawn(name: &str, role: u64, aff: Affinity, mmio: &[(u64, u64)], mem_pages: u64) -> Result<(u64, Option<u64>), String> {
    task::spawn_user(&UserSpec { name, elf: task::UAPP_ELF, arg: role, prio: Priority::NORMAL, affinity: aff, own_endpoint: true, caps: &[],
        ports: &[], mmio, dma_pages: 0, mem_pages })
        .map_err(|e| format!("spawn {name}: {e:?}"))
}

fn echo_still_answers() -> Result<(), String> {
    let slot = task::try_give_current(task::send_cap(task::echo_endpoint(), 1)).map_err(crate::ktest::cap_err)?;
    let r = task::call(slot, Message::new(1, [10, 0, 0, 0])).map_err(|e| format!("echo service afterwards: {e:?}"))?;
    check(r.words[0] == 11, || format!("echo answered {r:?}"))
}

static LATE_EP: AtomicU64 = AtomicU64::new(0);

/// Sends label 2 to endpoint `LATE_EP` 300 ms after it is set (the answer a long receive
/// waits for). Its kernel stack is freed after it ends (counted in the frame check).
fn late_send(_: u64) {
    let mut ep = 0;
    for _ in 0..500 {
        ep = LATE_EP.load(Ordering::SeqCst);
        if ep != 0 {
            break;
        }
        task::sleep_ns(10_000_000);
    }
    let Ok(slot) = task::try_give_current(task::send_cap(ep, 0)) else { return };
    task::sleep_ns(300_000_000);
    let _ = task::send(slot, Message::new(2, [0; 4]));
}

/// A ring-3 task calls `unmap` on kernel text, the direct map and a non-canonical address,
/// `map_mmio` with a length whose page count wraps, `log` on its MMIO page, on kernel memory
/// and on wrapping ranges, `map`/`dma_alloc` with overflowing page counts, `call_grant` of a
/// wrapping range and of MMIO; it maps until its 64-page quota says no, gets the pages back by
/// unmapping, and waits with the longest receive timeout. Every call is refused with an
/// error, the node lives on, and every frame comes back.
pub fn syscall_hostile_arguments(_: &Node) -> Result<(), String> {
    let io = task::ioapic_phys().ok_or("no IOAPIC in ACPI: nothing to grant as MMIO")?;
    LATE_EP.store(0, Ordering::SeqCst);
    let before = crate::ktest::free_frames_settled();
    let sender = task::spawn_kernel("late-send", Priority::NORMAL, Affinity::ANY, late_send, 0);
    let (id, ep) = spawn("hostile-args", task::ROLE_HOSTILE_ARGS, Affinity::ANY, &[(io, 4096)], QUOTA)?;
    let ep = ep.ok_or("no endpoint")?;
    let slot = task::try_give_current(task::send_cap(ep, 0)).map_err(crate::ktest::cap_err)?;
    LATE_EP.store(ep, Ordering::SeqCst);
    let r = task::call(slot, Message::new(1, [io, 0, 0, 0])).map_err(|e| format!("the hostile task did not answer: {e:?}"))?;
    task::join(sender, 5 * SEC).ok_or("late sender stuck")?;
    let code = task::join(id, 5 * SEC).ok_or("hostile task did not exit")?;
    let (mask, pages, waited) = (r.words[0], r.words[1], r.words[2]);
    const ALL: u64 = (1 << 16) - 1;
    check(mask == ALL, || format!("refusals seen {mask:#06x}, want {ALL:#06x} (missing {:#06x})", ALL & !mask))?;
    check((16..=QUOTA).contains(&pages), || format!("a task with a {QUOTA}-page quota mapped {pages} pages"))?;
    check(waited == 1, || "a receive with timeout u64::MAX - 1 timed out at once (deadline wrapped)".into())?;
    check(code == 0, || format!("hostile task exit code {code:#x}"))?;
    echo_still_answers()?;
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames leaked", before as i64 - after as i64))
}

/// A ring-3 task runs with EFLAGS.AC set through timer interrupts and syscalls: no kernel
/// entry reaches Rust with AC set (which would turn SMAP off in the kernel).
pub fn syscall_entry_clears_ac(_: &Node) -> Result<(), String> {
    let before = trap::ac_entries();
    let (id, _) = spawn("set-ac", task::ROLE_SET_AC, Affinity::ANY, &[], task::DEFAULT_MEM_PAGES)?;
    let code = task::join(id, 10 * SEC).ok_or("AC task stuck")?;
    check(code == 0x0ac, || format!("AC task exit code {code:#x}"))?;
    let n = trap::ac_entries() - before;
    check(n == 0, || format!("{n} kernel entries ran with the task's EFLAGS.AC set"))
}

/// NMIs sent to a CPU while a ring-3 task spins there: the CPU and the task carry on (an NMI
/// used to stop the CPU). NMIs are sent one at a time until three have interrupted ring 3.
pub fn syscall_nmi_in_ring3_resumes(node: &Node) -> Result<(), String> {
    // Another CPU than the runner's (the runner may sit on the last one: vm::vm_test_cpu).
    let cpu = (0..node.cpus).rev().find(|c| *c != smp::cpu_index()).unwrap_or(smp::cpu_index());
    if cpu == smp::cpu_index() {
        return Err("needs a second CPU (ktest.cpus >= 2)".into());
    }
    let target = smp::apic_id_of(cpu).ok_or("no APIC id for the last CPU")?;
    let (all0, ring3_0) = (trap::nmi_count(), trap::nmi_ring3_count());
    let (id, _) = spawn("nmi-target", task::ROLE_SPIN_FOR, Affinity::only(cpu), &[], task::DEFAULT_MEM_PAGES)?;
    task::sleep_ns(50_000_000);
    for _ in 0..40 {
        if trap::nmi_ring3_count() - ring3_0 >= 3 {
            break;
        }
        let c = trap::nmi_count();
        apic::send_nmi(target);
        for _ in 0..100 {
            if trap::nmi_count() > c {
                break;
            }
            task::sleep_ns(5_000_000);
        }
        task::sleep_ns(10_000_000);
    }
    let code = task::join(id, 20 * SEC).ok_or("the task on the NMI'd CPU did not finish")?;
    let (all, ring3) = (trap::nmi_count() - all0, trap::nmi_ring3_count() - ring3_0);
    check(code == 0x5f, || format!("task exit code {code:#x}, want 0x5f (killed?)"))?;
    check(ring3 >= 3, || format!("{ring3} of {all} NMIs handled came from ring 3, want 3"))?;
    // the CPU still schedules
    let probe = task::spawn_kernel("after-nmi", Priority::NORMAL, Affinity::only(cpu), |_| {}, 0);
    task::join(probe, 5 * SEC).ok_or("the CPU that took the NMIs no longer runs tasks")?;
    log::info!(target: "ktest", "NMIs: {all} handled, {ring3} of them in ring 3; the task lived on");
    Ok(())
}

/// A ring-3 task whose saved RIP is non-canonical (as after a `syscall` at the very top of
/// the user half) is killed with #GP when the kernel would return to it, instead of `iretq`
/// faulting in ring 0 with the user's GS.
pub fn syscall_noncanonical_return_killed(_: &Node) -> Result<(), String> {
    let (id, ep) = spawn("bad-rip", task::ROLE_ONE_SHOT, Affinity::ANY, &[], task::DEFAULT_MEM_PAGES)?;
    let slot = task::try_give_current(task::send_cap(ep.ok_or("no endpoint")?, 0)).map_err(crate::ktest::cap_err)?;
    let mut set = false;
    for _ in 0..100 {
        task::sleep_ns(10_000_000);
        if task::set_user_rip_for_test(id, 0x0000_8000_0000_0000) {
            set = true;
            break;
        }
    }
    check(set, || "the task never blocked in its receive".into())?;
    let caught = trap::noncanonical_returns();
    task::send(slot, Message::new(1, [0; 4])).map_err(|e| format!("{e:?}"))?;
    let code = task::join(id, 5 * SEC).ok_or("task with a non-canonical RIP neither ran nor died")?;
    check(code == task::killed_by(13), || format!("exit code {code:#x}, want the #GP kill {:#x}", task::killed_by(13)))?;
    // The kernel refused the return itself (QEMU's iretq does not check the RIP; hardware
    // raises #GP in ring 0 there, with the user's GS loaded).
    check(trap::noncanonical_returns() > caught, || "the kernel returned to a non-canonical RIP (the task died of it in ring 3)".into())?;
    echo_still_answers()
}

/// A task whose capabilities do not fit its table is not started, and nothing of it stays
/// behind: no half-made task, every frame of its image and stack back.
pub fn syscall_spawn_failure_frees_everything(_: &Node) -> Result<(), String> {
    let caps = alloc::vec![task::send_cap(task::echo_endpoint(), 1); 80];
    let before = crate::ktest::free_frames_settled();
    let r = task::spawn_user(&UserSpec { name: "too-many-caps", elf: task::UAPP_ELF, arg: task::ROLE_ONE_SHOT, prio: Priority::NORMAL,
        affinity: Affinity::ANY, own_endpoint: true, caps: &caps, ports: &[], mmio: &[], dma_pages: 0, mem_pages: task::DEFAULT_MEM_PAGES });
    check(r.is_err(), || format!("a task with 81 capabilities in a 64-slot table started: {r:?}"))?;
    task::sleep_ns(20_000_000);
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames left behind by the refused task", before as i64 - after as i64))?;
    echo_still_answers()
}
