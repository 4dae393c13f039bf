//! In-kernel test of the node's stop path for workload microVMs (`vmcontrol`, docs/guest-init.md
//! "Stopping a workload"): a guest that ignores every request (it spins and never reads its
//! workload channel) is asked to stop with no grace period; the node must send the stop, then
//! SIGKILL, and power it off only after `KILL_GRACE_NS`: the whole grace policy, through the
//! same `VmControl` calls the workload service makes.

use alloc::format;
use alloc::string::String;

use catenary_sched::{Affinity, Priority};
use spin::Mutex;

use crate::init::Node;
use crate::task;
use crate::vm::{self, Ended, Image, RunReport, FLOOD_GUEST, HOSTILE_LOAD};
use crate::vmcontrol::{ControlError, VmControl};
use catenary_vmm::stop::KILL_GRACE_NS;

const SEC: u64 = 1_000_000_000;
static CTL: VmControl = VmControl::new();
static REPORT: Mutex<Option<RunReport>> = Mutex::new(None);

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// flood.S mode 0: spins without exits (only host interrupts take it out of the guest).
fn deaf_vm(_: u64) {
    let r = vm::run_workload_ctl("stop-deaf", Image::Raw { code: FLOOD_GUEST, load: HOSTILE_LOAD, arg: 0 }, 16, None, None, &CTL);
    vm::report("stop-deaf", &r);
    *REPORT.lock() = Some(r);
}

fn wait_for(what: impl Fn() -> bool, within_ns: u64) -> bool {
    let end = catenary_arch::time::now_ns() + within_ns;
    while !what() {
        if catenary_arch::time::now_ns() > end {
            return false;
        }
        task::sleep_ns(10_000_000);
    }
    true
}

pub fn workload_stop_grace_policy(_: &Node) -> Result<(), String> {
    check(CTL.request_signal(0) == Err(ControlError::BadSignal) && CTL.request_signal(65) == Err(ControlError::BadSignal), || "signal 0 or 65 accepted".into())?;
    task::spawn_kernel("stop-deaf", Priority::NORMAL, Affinity::ANY, deaf_vm, 0);
    check(wait_for(|| CTL.running() || CTL.ended(), 30 * SEC), || "the VM did not start within 30 s".into())?;
    check(CTL.running(), || format!("the VM ended before it ran: {:?}", REPORT.lock().as_ref().map(|r| r.ended.clone())))?;
    CTL.request_signal(15).map_err(|e| format!("request_signal(15): {e:?}"))?;
    let t0 = catenary_arch::time::now_ns();
    CTL.request_stop(0).map_err(|e| format!("request_stop: {e:?}"))?;
    check(wait_for(|| CTL.ended(), 60 * SEC), || "the VM was not powered off within 60 s of the stop request".into())?;
    let took = catenary_arch::time::now_ns() - t0;
    // (The report lands right after `ended` is set.)
    check(wait_for(|| REPORT.lock().is_some(), 5 * SEC), || "no run report".into())?;
    let r = REPORT.lock().take().ok_or("no run report")?;
    check(r.ended == Ended::Killed, || format!("ended {:?}, not killed by the node", r.ended))?;
    check(r.workload_exit.is_none(), || format!("a deaf guest reported {:?}", r.workload_exit))?;
    // StopSignal, SIGKILL at once (grace 0), power-off KILL_GRACE_NS later: never sooner.
    check(took >= KILL_GRACE_NS, || format!("powered off {} ms after the request, before the {} ms SIGKILL grace", took / 1_000_000, KILL_GRACE_NS / 1_000_000))?;
    check(CTL.request_stop(0) == Err(ControlError::Ended) && CTL.request_signal(9) == Err(ControlError::Ended) && CTL.request_kill() == Err(ControlError::Ended),
        || "requests to an ended VM were accepted".into())?;
    Ok(())
}

static FENCED: VmControl = VmControl::new();
static RENEWED: VmControl = VmControl::new();

fn fenced_vm(which: u64) {
    let (name, ctl) = if which == 0 { ("fence-idle", &FENCED) } else { ("fence-renewed", &RENEWED) };
    let r = vm::run_workload_ctl(name, Image::Raw { code: FLOOD_GUEST, load: HOSTILE_LOAD, arg: 0 }, 16, None, None, ctl);
    vm::report(name, &r);
}

/// The kernel's fence for the cluster lease (`VmControl::set_deadline`, `OP_DEADLINE`): two
/// guests that ignore everything get a power-off deadline 1 s ahead; nobody touches the first
/// again (its owner dead or hung), the second's deadline is renewed every 100 ms for 3 s. The
/// first must be powered off at its deadline (not before, within `LATE_MAX_NS` after), the
/// second must run until its renewals stop and then end by its last deadline.
pub fn workload_deadline_power_off(_: &Node) -> Result<(), String> {
    const LATE_MAX_NS: u64 = SEC;
    let now = catenary_arch::time::now_ns;
    task::spawn_kernel("fence-idle", Priority::NORMAL, Affinity::ANY, fenced_vm, 0);
    task::spawn_kernel("fence-renewed", Priority::NORMAL, Affinity::ANY, fenced_vm, 1);
    check(wait_for(|| FENCED.running() && RENEWED.running(), 30 * SEC), || "the VMs did not start within 30 s".into())?;
    let t0 = now();
    let first = t0 + SEC;
    FENCED.set_deadline(first).map_err(|e| format!("set_deadline: {e:?}"))?;
    RENEWED.set_deadline(first).map_err(|e| format!("set_deadline: {e:?}"))?;
    let (mut idle_end, mut last) = (None, first);
    while now() < t0 + 3 * SEC {
        task::sleep_ns(SEC / 100);
        if idle_end.is_none() && FENCED.ended() {
            idle_end = Some(now());
        }
        if now() + 900_000_000 > last {
            last = now() + SEC;
            RENEWED.set_deadline(last).map_err(|e| format!("renewing: {e:?}"))?;
        }
        check(!RENEWED.ended(), || format!("the renewed VM ended {} ms after the first deadline", (now() - t0) / 1_000_000))?;
    }
    let idle_end = idle_end.ok_or("the VM whose owner did nothing still ran 2 s past its deadline")?;
    // "Not before" on the vCPU task's own clock reading when it decided (the 10 ms polls above
    // see the end late, so they could not tell an early power-off from a punctual one).
    let fenced = FENCED.fenced_at().ok_or("the VM ended, but not by its deadline")?;
    check(fenced >= first, || format!("powered off {} us before its deadline", (first - fenced) / 1_000))?;
    check(idle_end >= first, || format!("powered off {} ms before its deadline", (first - idle_end) / 1_000_000))?;
    check(idle_end <= first + LATE_MAX_NS, || format!("powered off {} ms after its deadline", (idle_end - first) / 1_000_000))?;
    check(FENCED.set_deadline(1) == Err(ControlError::Ended), || "a deadline for an ended VM accepted".into())?;
    // the renewals stop: it ends by its last deadline
    check(wait_for(|| RENEWED.ended(), 2 * SEC), || "the renewed VM ran on 2 s after its renewals stopped".into())?;
    let renewed_end = now();
    check(renewed_end >= last, || format!("the renewed VM ended {} ms before its last deadline", (last - renewed_end) / 1_000_000))?;
    let renewed_fenced = RENEWED.fenced_at().ok_or("the renewed VM ended, but not by its deadline")?;
    check(renewed_fenced >= last, || format!("the renewed VM was powered off {} us before its last deadline", (last - renewed_fenced) / 1_000))?;
    catenary_arch::println!("ktest workload_deadline_power_off: unrenewed VM powered off {} us after its deadline (its end seen {} ms after, 10 ms polls), the renewed one {} us after its last", (fenced - first) / 1_000, (idle_end - first) / 1_000_000, (renewed_fenced - last) / 1_000);
    Ok(())
}
