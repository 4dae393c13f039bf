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
