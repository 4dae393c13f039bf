//! The null exit round trip benchmark (`bench=exit`; docs/vmm.md "Where exits go"): a guest
//! loops on CPUID (every one an intercepted exit the VMM emulates), then runs the same loop with
//! a NOP in CPUID's place; both are timed with RDTSC in the guest. For reference the node also
//! times the same CPUID loop on the host, where CPUID does not exit. Figures only.

use crate::vm::{Image, RunReport, CPUIDLOOP_GUEST, HOSTILE_LOAD};
use log::{info, warn};

/// CPUID exits the guest makes.
const ITERATIONS: u32 = 20_000;

static REPORT: spin::Mutex<Option<RunReport>> = spin::Mutex::new(None);

fn vm_task(_: u64) {
    let r = crate::vm::run("cpuidloop", Image::Raw { code: CPUIDLOOP_GUEST, load: HOSTILE_LOAD, arg: ITERATIONS }, 4);
    *REPORT.lock() = Some(r);
}

/// `cpuidloop: exit HEX noexit HEX` from the guest's console: the two loops' TSC cycles.
fn parse(console: &[alloc::string::String]) -> Option<(u64, u64)> {
    let line = console.iter().find_map(|l| l.trim_end().strip_prefix("cpuidloop: exit "))?;
    let (exit, none) = line.split_once(" noexit ")?;
    Some((u64::from_str_radix(exit, 16).ok()?, u64::from_str_radix(none, 16).ok()?))
}

/// The host's CPUID loop (leaf 0, like the guest's), TSC cycles for all iterations.
fn host_cpuid_loop() -> u64 {
    let t0 = catenary_arch::cpu::rdtsc();
    for _ in 0..ITERATIONS {
        core::hint::black_box(catenary_arch::cpu::cpuid(0, 0));
    }
    catenary_arch::cpu::rdtsc() - t0
}

pub fn run(cpus: usize) {
    let cpu = crate::vm::vm_test_cpu(cpus);
    let id = crate::task::spawn_kernel("cpuidloop-vm", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::only(cpu), vm_task, 0);
    if crate::task::join(id, 300_000_000_000).is_none() {
        return warn!(target: "bench", "bench exit: the guest did not end in 300 s");
    }
    let Some(r) = REPORT.lock().take() else { return warn!(target: "bench", "bench exit: no report") };
    let cpuid_exits = r.exits_by_reason.iter().find(|(k, _)| *k == "cpuid").map(|(_, n)| *n).unwrap_or(0);
    let Some((exit, none)) = parse(&r.console) else {
        return warn!(target: "bench", "bench exit: no result from the guest; ended {:?}, console {:?}", r.ended, r.console);
    };
    let host = host_cpuid_loop();
    let n = ITERATIONS as u64;
    info!(target: "bench", "bench exit: {n} iterations on CPU {cpu}, {cpuid_exits} CPUID exits counted ({} exits in all)", r.exits);
    info!(target: "bench", "bench exit: CPUID with exit {} cycles, same loop without exit {} cycles, host CPUID without exit {} cycles",
        exit / n, none / n, host / n);
    info!(target: "bench", "bench exit: done");
}
