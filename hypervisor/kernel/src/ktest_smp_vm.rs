//! In-kernel tests of microVMs on every CPU (docs/vmm.md, "SMP"): eight small guests at once
//! on a 2-CPU node, each vCPU loop a kernel task the scheduler may place and move anywhere;
//! and a guest that spins without exits next to seven that count their progress.
//!
//! The guests are `testguests/progress.S`: each block of work is computed twice (integer and
//! SSE registers) and checked, then reported with one port exit (port 0x80), so the node
//! counts progress per VM and a vCPU whose state a move between CPUs corrupted powers off
//! with 0xbad instead of running on. Run by `cargo xtask test --only smp_vm` (one q35 boot with
//! `-smp 2 -m 1G`, `ktest.only=smp_vm`); not part of the ordinary boots (`ON_REQUEST`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use catenary_sched::{Affinity, Priority};
use spin::Mutex;

use crate::init::Node;
use crate::task;
use crate::vm::{self, Ended, Image, RunReport, FLOOD_GUEST, HOSTILE_LOAD, PROGRESS_GUEST};

const SEC: u64 = 1_000_000_000;
/// How many microVMs run at once.
const VMS: usize = 8;
/// How long each measurement runs.
const RUN_NS: u64 = 3 * SEC;
/// Guest RAM per microVM (the guests use one page of it).
const VM_MIB: u64 = 16;
/// The port each progress mark is written to.
const PROGRESS_PORT: u16 = 0x80;
/// Argument for a spinning guest: flood.S mode 0 (spins without exits). Progress guests get
/// their index + 1 as their xorshift seed.
const SPIN: u64 = 1 << 32;

static STOP: AtomicBool = AtomicBool::new(false);
static REPORTS: Mutex<[Option<RunReport>; VMS]> = Mutex::new([const { None }; VMS]);

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn vm_name(i: usize, spin: bool) -> String {
    if spin { format!("smp-spin{i}") } else { format!("smp-vm{i}") }
}

/// A vCPU task: run guest `arg & 0xff` (spinning when `arg & SPIN`) until `STOP`.
fn vm_task(arg: u64) {
    let i = (arg & 0xff) as usize;
    let spin = arg & SPIN != 0;
    let image = if spin {
        Image::Raw { code: FLOOD_GUEST, load: HOSTILE_LOAD, arg: 0 }
    } else {
        Image::Raw { code: PROGRESS_GUEST, load: HOSTILE_LOAD, arg: i as u32 + 1 }
    };
    let name = vm_name(i, spin);
    let r = vm::run_stoppable(&name, image, VM_MIB, &STOP);
    vm::report(&name, &r);
    if let Some(slot) = REPORTS.lock().get_mut(i) {
        *slot = Some(r);
    }
}

/// A burst of host load: spin on this task's CPU until time `until` (ns).
fn burner(until: u64) {
    while catenary_arch::time::now_ns() < until {
        core::hint::spin_loop();
    }
}

/// Bursts of host load every `BURST_EVERY_NS`: `BURNERS` tasks pinned to one CPU, then the
/// other, for half the period. The scheduler's balancing then moves vCPU tasks away from the
/// loaded CPU and back, so vCPUs are moved between CPUs while their guests run.
const BURST_EVERY_NS: u64 = 400_000_000;
const BURNERS: usize = 3;
/// vCPU moves the run with load bursts waits for.
const MIN_MOVES: u64 = 2;

/// One run: VMS microVMs (guest `spinner` spins, if any), each in its own task with any
/// affinity, measured for `RUN_NS` from the moment all are running. With `bursts`, host load
/// bursts move vCPUs between CPUs, and the run goes on (at most `RUN_NS` more) until at least
/// `MIN_MOVES` moves happened. Returns the reports, the most microVMs seen running at once, the
/// measured time and the moves during it.
fn run_all(spinner: Option<usize>, bursts: bool) -> Result<(Vec<RunReport>, usize, u64, u64), String> {
    STOP.store(false, Ordering::SeqCst);
    *REPORTS.lock() = [const { None }; VMS];
    let now = catenary_arch::time::now_ns;
    let (running0, _) = vm::vm_counts();
    let ids: Vec<catenary_sched::TaskId> = (0..VMS)
        .map(|i| {
            let arg = i as u64 | if spinner == Some(i) { SPIN } else { 0 };
            task::spawn_kernel(&format!("vcpu-smp{i}"), Priority::NORMAL, crate::vm::vcpu_affinity(catenary_arch::smp::online_cpus()), vm_task, arg)
        })
        .collect();
    let running = || vm::vm_counts().0.saturating_sub(running0);
    let start = now();
    while running() < VMS && now() - start < 30 * SEC {
        task::sleep_ns(10_000_000);
    }
    let t0 = now();
    let moves0 = catenary_arch::virt::migrations_total();
    let mut most = running();
    let mut burners = Vec::new();
    let mut next_burst = t0;
    loop {
        let moved = catenary_arch::virt::migrations_total() - moves0;
        let t = now() - t0;
        if t >= 2 * RUN_NS || (t >= RUN_NS && (!bursts || moved >= MIN_MOVES)) {
            break;
        }
        task::sleep_ns(50_000_000);
        most = most.max(running());
        let t = now();
        if bursts && t >= next_burst {
            // Alternate between the CPUs vCPUs may use (not CPU 0 under QEMU TCG: vm::vcpu_affinity).
            let n = catenary_arch::smp::online_cpus();
            let vcpu_cpus: Vec<usize> = (0..n).filter(|c| vm::vcpu_affinity(n).allows(*c)).collect();
            let cpu = vcpu_cpus[(burners.len() / BURNERS) % vcpu_cpus.len()];
            for _ in 0..BURNERS {
                burners.push(task::spawn_kernel("smp-burner", Priority::NORMAL, Affinity::only(cpu), burner, t + BURST_EVERY_NS / 2));
            }
            log::info!(target: "ktest", "smp_vm: load burst on CPU {cpu} at {} ms", (t - t0) / 1_000_000);
            next_burst = t + BURST_EVERY_NS;
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let ran = now() - t0;
    let moved = catenary_arch::virt::migrations_total() - moves0;
    for b in burners {
        task::join(b, 10 * SEC).ok_or("a load burner did not end")?;
    }
    for (i, id) in ids.iter().enumerate() {
        task::join(*id, 30 * SEC).ok_or_else(|| format!("{} did not stop", vm_name(i, spinner == Some(i))))?;
    }
    let mut reports = REPORTS.lock();
    let mut out = Vec::new();
    for (i, r) in reports.iter_mut().enumerate() {
        out.push(r.take().ok_or_else(|| format!("no report from {}", vm_name(i, spinner == Some(i))))?);
    }
    Ok((out, most, ran, moved))
}

fn progress(r: &RunReport) -> u64 {
    r.io_by_port.iter().find(|(p, _)| *p == PROGRESS_PORT).map(|(_, n)| *n).unwrap_or(0)
}

/// Every guest ran until the node stopped it, with its state intact (no "state lost").
fn check_healthy(reports: &[RunReport], spinner: Option<usize>) -> Result<(), String> {
    for (i, r) in reports.iter().enumerate() {
        let name = vm_name(i, spinner == Some(i));
        check(r.ended == Ended::Killed, || format!("{name} ended by itself: {:?} (console {:?})", r.ended, r.console))?;
        check(!r.console.iter().any(|l| l.contains("state lost")), || format!("{name}: the guest saw its registers change: {:?}", r.console))?;
        check(r.placement.cpus != 0, || format!("{name}: its vCPU never entered the guest"))?;
    }
    Ok(())
}

fn needs_two_cpus(node: &Node) -> Result<(), String> {
    let f = catenary_arch::cpu::features();
    check(f.svm || f.vmx, || "no hardware virtualization on this CPU".into())?;
    check(node.cpus >= 2 && catenary_arch::smp::online_cpus() >= 2, || format!("needs 2 CPUs online ({} of {})", catenary_arch::smp::online_cpus(), node.cpus))
}

/// Eight microVMs at once on the node's CPUs: all eight running at the same time, each making
/// progress with its state intact, and vCPUs entering guests on at least two CPUs.
pub fn smp_vm_eight_guests(node: &Node) -> Result<(), String> {
    needs_two_cpus(node)?;
    let (reports, most, ran, moved) = run_all(None, true)?;
    let mut cpus = 0u64;
    let mut moves = 0u64;
    for (i, r) in reports.iter().enumerate() {
        cpus |= r.placement.cpus;
        moves += r.placement.migrations;
        log::info!(target: "ktest", "smp_vm: {}: {} blocks, {} exits, vCPU on CPUs {}, moved {} times",
            vm_name(i, false), progress(r), r.exits, vm::cpu_list(r.placement.cpus), r.placement.migrations);
    }
    log::info!(target: "ktest", "smp_vm: {VMS} microVMs, at most {most} running at once, measured {} ms, vCPUs on CPUs {}, {moves} moves in all ({moved} while all ran)",
        ran / 1_000_000, vm::cpu_list(cpus));
    check_healthy(&reports, None)?;
    check(most >= VMS, || format!("at most {most} of {VMS} microVMs were running at once"))?;
    for (i, r) in reports.iter().enumerate() {
        check(progress(r) > 0, || format!("{} made no progress ({} exits)", vm_name(i, false), r.exits))?;
    }
    check(cpus.count_ones() >= 2, || format!("every vCPU ran on CPU(s) {} only", vm::cpu_list(cpus)))?;
    check(moves >= MIN_MOVES, || format!("{moves} vCPU moves between CPUs while the guests ran (want {MIN_MOVES}: the load bursts should make the scheduler move some)"))
}

/// One guest spins without exits beside seven progress guests. Its fair share is one eighth of
/// the node, the same as each of the others', so the seven should go as fast as when all eight
/// were progress guests (ratio ~1; printed per VM: the figure; the host running QEMU is
/// shared and its load changes between the two runs). A spinner that kept its CPU would
/// starve the guests queued behind it (~0). Asserted, generously and within the run: each of
/// the seven makes at least a fifth of the seven's mean progress.
pub fn smp_vm_spinner_fair_share(node: &Node) -> Result<(), String> {
    needs_two_cpus(node)?;
    let (base, _, base_ns, _) = run_all(None, false)?;
    check_healthy(&base, None)?;
    let spin = VMS - 1;
    let (with_spin, most, spin_ns, _) = run_all(Some(spin), false)?;
    check_healthy(&with_spin, Some(spin))?;
    check(most >= VMS, || format!("at most {most} of {VMS} microVMs were running at once"))?;
    // Progress per second, so that the two runs' slightly different lengths do not count;
    // ratios in hundredths.
    let rate = |r: &RunReport, ns: u64| (progress(r) as u128 * SEC as u128 / ns.max(1) as u128) as u64;
    let base_rates: Vec<u64> = base.iter().map(|r| rate(r, base_ns)).collect();
    let base_mean = base_rates.iter().sum::<u64>() / base_rates.len() as u64;
    check(base_mean > 0, || "no progress in the run without a spinner".into())?;
    let pct = |x: u64, of: u64| x * 100 / of.max(1);
    let mut line = String::new();
    for (i, r) in base_rates.iter().enumerate() {
        line.push_str(&format!(" {}={}", vm_name(i, false), hundredths(pct(*r, base_mean))));
    }
    log::info!(target: "ktest", "smp_vm fairness: 8 progress guests, {base_mean} blocks/s each on average; each / mean:{line}");
    let rates: Vec<(usize, u64)> = with_spin.iter().enumerate().filter(|(i, _)| *i != spin).map(|(i, r)| (i, rate(r, spin_ns))).collect();
    let mean = rates.iter().map(|(_, r)| r).sum::<u64>() / rates.len() as u64;
    let (mut line, mut within) = (String::new(), String::new());
    let mut slowest = u64::MAX;
    for (i, r) in &rates {
        slowest = slowest.min(pct(*r, mean));
        line.push_str(&format!(" {}={}", vm_name(*i, false), hundredths(pct(*r, base_mean))));
        within.push_str(&format!(" {}={}", vm_name(*i, false), hundredths(pct(*r, mean))));
    }
    log::info!(target: "ktest", "smp_vm fairness: 7 progress guests + 1 spinner (its vCPU on CPUs {}, moved {} times), {mean} blocks/s each on average; each / mean without the spinner:{line}; mean with / without the spinner {}",
        vm::cpu_list(with_spin[spin].placement.cpus), with_spin[spin].placement.migrations, hundredths(pct(mean, base_mean)));
    log::info!(target: "ktest", "smp_vm fairness: with the spinner, each / mean of the seven:{within}; slowest {}", hundredths(slowest));
    check(slowest >= 20, || format!("with a spinning guest, the slowest progress guest made {} of the others' mean (bound: 0.20)", hundredths(slowest)))
}

/// 87 -> "0.87".
fn hundredths(x: u64) -> String {
    format!("{}.{:02}", x / 100, x % 100)
}
