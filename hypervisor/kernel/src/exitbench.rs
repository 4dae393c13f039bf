//! The null exit round trip benchmark (`bench=exit`; docs/vmm.md "Where exits go"): a guest
//! loops on CPUID (every one an intercepted exit the VMM emulates), then runs the same loop with
//! a NOP in CPUID's place; both are timed with RDTSC in the guest. For reference the node also
//! times the same CPUID loop on the host, where CPUID does not exit. Figures only.
//!
//! The benchmark runs only in the probes kernel (`bench=` is a probe, main.rs); the in-kernel
//! test build uses [`vm_exit_profile_counts`] alone.
#![cfg_attr(not(feature = "probes"), allow(dead_code))]

use crate::vm::{Image, RunReport, CPUIDLOOP_GUEST, HOSTILE_LOAD};
use log::{info, warn};

/// CPUID exits the guest makes.
const ITERATIONS: u32 = 20_000;

static REPORT: spin::Mutex<Option<RunReport>> = spin::Mutex::new(None);

fn vm_task(iterations: u64) {
    let r = crate::vm::run("cpuidloop", Image::Raw { code: CPUIDLOOP_GUEST, load: HOSTILE_LOAD, arg: iterations as u32 }, 4);
    *REPORT.lock() = Some(r);
}

/// Runs the guest for `iterations` on the test CPU; `None` if it did not end in 300 s.
fn run_guest(cpus: usize, iterations: u32) -> Option<RunReport> {
    let cpu = crate::vm::vm_test_cpu(cpus);
    let id = crate::task::spawn_kernel("cpuidloop-vm", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::only(cpu), vm_task, iterations as u64);
    crate::task::join(id, 300_000_000_000)?;
    REPORT.lock().take()
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
    let Some(r) = run_guest(cpus, ITERATIONS) else { return warn!(target: "bench", "bench exit: no report from the guest in 300 s") };
    let cpuid_exits = r.exits_by_reason.iter().find(|(k, _)| *k == "cpuid").map(|(_, n)| *n).unwrap_or(0);
    let Some((exit, none)) = parse(&r.console) else {
        return warn!(target: "bench", "bench exit: no result from the guest; ended {:?}, console {:?}", r.ended, r.console);
    };
    let host = host_cpuid_loop();
    let n = ITERATIONS as u64;
    info!(target: "bench", "bench exit: {n} iterations on CPU {cpu}, {cpuid_exits} CPUID exits counted ({} exits in all)", r.exits);
    info!(target: "bench", "bench exit: CPUID with exit {} cycles, same loop without exit {} cycles, host CPUID without exit {} cycles",
        exit / n, none / n, host / n);
    let c = r.cycles;
    let per = |x: u64| x / c.passes.max(1);
    info!(target: "bench", "bench exit: per handled exit ({} passes): world switch + guest {} cycles, device model {} cycles, rest of the vCPU loop {} cycles",
        c.passes, per(c.run), per(c.handle), per(c.rest));
    info!(target: "bench", "bench exit: done");
}

/// The exit counters add up: the CPUID guest's N iterations are exactly N `cpuid` exits, its
/// report on the UART is exactly one `io: uart 0x3f8` exit per byte, and the exit profile's rows
/// sum to the VM's total (docs/vmm.md "Where exits go"). Counts only; no time is checked.
#[cfg(feature = "ktest")]
pub fn vm_exit_profile_counts(node: &crate::init::Node) -> Result<(), alloc::string::String> {
    const N: u32 = 500;
    let r = run_guest(node.cpus, N).ok_or("the CPUID guest did not end in 300 s")?;
    crate::vm::report("cpuidloop", &r);
    let line = r.console.iter().find(|l| l.starts_with("cpuidloop: exit ")).ok_or_else(|| alloc::format!("no report; console {:?}", r.console))?;
    parse(&r.console).ok_or_else(|| alloc::format!("unreadable report `{line}`"))?;
    let rows = catenary_vmm::exitprofile::profile(&r.exits_by_reason, &r.io_by_port);
    let get = |k: &str| rows.iter().find(|(row, _)| row == k).map(|(_, n)| *n).unwrap_or(0);
    let sum: u64 = rows.iter().map(|(_, n)| n).sum();
    log::info!(target: "ktest", "exit profile of the CPUID guest: {rows:?}, {} exits in all", r.exits);
    // The line as printed plus its newline: one UART write exit per byte.
    let uart_bytes = line.trim_end().len() as u64 + 1;
    if get("cpuid") != N as u64 {
        return Err(alloc::format!("{} cpuid exits counted for {N} CPUIDs", get("cpuid")));
    }
    if get("io: uart 0x3f8") != uart_bytes {
        return Err(alloc::format!("{} UART exits for {uart_bytes} bytes printed", get("io: uart 0x3f8")));
    }
    if sum != r.exits || r.exits < N as u64 + uart_bytes {
        return Err(alloc::format!("profile rows sum to {sum}, total {}", r.exits));
    }
    Ok(())
}
