//! In-kernel test: an NMI that arrives while a guest runs reaches the host's NMI handler
//! exactly once, and the guest carries on (docs/vmm.md, "Host NMIs while a guest runs").
//!
//! The NMI comes from PIT channel 0 as a one-shot, routed through the IOAPIC with delivery
//! mode NMI to the CPU the guest runs on: an LVT timer cannot deliver an NMI on Bochs, and a
//! self-IPI is taken by the host at once. The guest (testguests/nmispin.S) busy-loops for
//! about 500 ms with one exit per 25 ms, so the PIT's 55 ms deadline falls while it runs.

use alloc::format;
use alloc::string::String;

use catenary_arch::{apic, smp, time, trap};
use catenary_vmm::cpu::StopReason;

use crate::init::Node;
use crate::vm::{Ended, Image, RunReport, HOSTILE_LOAD, NMISPIN_GUEST};

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// ISA IRQ 0 (the PIT) is IOAPIC input 2 on QEMU and Bochs.
const PIT_PIN: u8 = 2;
/// The longest PIT one-shot: 65535 ticks at 1.193182 MHz, about 55 ms.
const PIT_TICKS: u16 = 0xffff;

static RESULT: spin::Mutex<Option<Result<(RunReport, u64), String>>> = spin::Mutex::new(None);

/// Runs on the VM test CPU: arm the NMI for this CPU, run the guest, disarm.
fn nmi_vm(_: u64) {
    let r = (|| {
        let io = crate::task::ioapic_phys().ok_or("no IOAPIC in ACPI")?;
        let dest = smp::apic_id_of(smp::cpu_index()).ok_or("no APIC id for this CPU")?;
        // 25 ms of TSC ticks per round, in units of 1024 ticks (the guest shifts EBX left 10).
        let per_round = ((time::tsc_hz() / 40) >> 10).clamp(1, u32::MAX as u64) as u32;
        let n0 = trap::nmi_count();
        // Mode 0 first (its output goes low), then unmask: the one rising edge is the deadline.
        time::pit_one_shot(PIT_TICKS);
        apic::ioapic_route_nmi(io, PIT_PIN, dest).map_err(|e| format!("IOAPIC: {e:?}"))?;
        let report = crate::vm::run("nmispin", Image::Raw { code: NMISPIN_GUEST, load: HOSTILE_LOAD, arg: per_round }, 4);
        apic::ioapic_mask(io, PIT_PIN).map_err(|e| format!("IOAPIC: {e:?}"))?;
        Ok((report, trap::nmi_count() - n0))
    })();
    *RESULT.lock() = Some(r);
}

/// At most this many runs: the NMI may land while the host handles one of the guest's exits
/// (its timer interrupts, its port writes), which is no test of the guest-time path.
const ATTEMPTS: usize = 8;

pub fn vm_host_nmi_while_guest_runs(node: &Node) -> Result<(), String> {
    use crate::task;
    use catenary_sched::{Affinity, Priority};
    let cpu = crate::vm::vm_test_cpu(node.cpus);
    for attempt in 1..=ATTEMPTS {
        let t = task::spawn_kernel("nmispin-vm", Priority::NORMAL, Affinity::only(cpu), nmi_vm, 0);
        task::join(t, 300_000_000_000).ok_or("the nmispin VM did not end in 300 s")?;
        let (r, nmis) = RESULT.lock().take().ok_or("no nmispin result")??;
        crate::vm::report("nmispin", &r);
        let nmi_exits = r.exits_by_reason.iter().find(|(n, _)| *n == "nmi").map_or(0, |(_, c)| *c);
        let rounds = r.io_by_port.iter().find(|(p, _)| *p == 0x21).map_or(0, |(_, c)| *c);
        log::info!(target: "ktest", "nmispin attempt {attempt}: {nmis} NMI(s) handled by the host, {nmi_exits} NMI exit(s), {rounds} rounds, {} exits", r.exits);
        // Every run: the one NMI reached the host's handler exactly once, the guest finished.
        check(nmi_exits <= 1, || format!("{nmi_exits} NMI exits, want at most 1"))?;
        check(nmis == 1, || format!("the host's NMI handler ran {nmis} times, want 1 (the VMM dropped or duplicated the NMI; {nmi_exits} NMI exits)"))?;
        check(rounds == 20 && r.console.iter().any(|l| l.trim_end() == "nmispin: done"), || format!("{rounds} of 20 rounds; console {:?}", r.console))?;
        check(matches!(r.ended, Ended::Stopped(StopReason::PowerOff { .. })), || format!("ended {:?}", r.ended))?;
        if nmi_exits == 1 {
            return Ok(());
        }
    }
    Err(format!("in {ATTEMPTS} runs the NMI never arrived while the guest ran (no nmi exit)"))
}
