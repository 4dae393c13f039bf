//! How a microVM run ended and what it reports, and the log lines operators read.

use alloc::format;
use alloc::string::String;
use catenary_arch::virt;
use catenary_vmm::cpu::StopReason;
use catenary_vmm::guest_proto::wire::WorkloadExit;
use log::{info, warn};

/// How a microVM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Stopped(StopReason),
    /// The hypervisor could not create or enter it.
    Failed(String),
    /// A host allocation the guest caused (or its creation needed) failed: only this VM ends.
    OutOfMemory,
    /// The node stopped it (`run_stoppable`).
    Killed,
}

pub struct RunReport {
    pub ended: Ended,
    pub exits: u64,
    pub wall_ns: u64,
    /// Host memory this microVM used beyond its guest RAM (vCPU structures, device model).
    pub overhead_bytes: u64,
    pub exits_by_reason: alloc::vec::Vec<(&'static str, u64)>,
    /// Time from creation to the guest printing `catenary-init: ready` (Linux guests).
    pub ready_ns: Option<u64>,
    /// Guest RAM the guest (or the loader) actually touched, i.e. populated chunks.
    pub touched_bytes: u64,
    /// The guest's console lines as printed: the first and last 8 KiB (`vmconsole`).
    pub console: alloc::vec::Vec<String>,
    /// Console bytes the guest wrote; those not printed (ring overwrites + discarded at the
    /// end); those its ring overwrote while it ran.
    pub console_written: u64,
    pub console_dropped: u64,
    pub console_overwritten: u64,
    /// The CPUs its vCPU entered the guest on and how often it moved between them.
    pub placement: virt::Placement,
    /// Port exits by port (the first 256 distinct ports): test guests count progress this way.
    pub io_by_port: alloc::vec::Vec<(u16, u64)>,
    /// CPUID exits by `(leaf, user mode)` (`Stats::cpuid_by_leaf`).
    pub cpuid_by_leaf: alloc::vec::Vec<((u32, bool), u64)>,
    /// What the guest init reported on the workload channel (VMs from a Catenary image).
    pub workload_exit: Option<WorkloadExit>,
    pub workload_ready: bool,
    /// Where the vCPU loop's time went, in TSC cycles (`cargo xtask bench exit`).
    pub cycles: LoopCycles,
}

/// TSC cycles the vCPU loop spent, summed over its passes that ended in an exit the device
/// model handled: in `Vcpu::run` (world switch there and back plus the guest's own time), in
/// `MicroVm::handle_exit` (decode, emulation), and in the rest (state copies, polling, console).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopCycles {
    pub passes: u64,
    pub run: u64,
    pub handle: u64,
    pub rest: u64,
}

/// Log the outcome of a run the way operators read it.
pub fn report(name: &str, r: &RunReport) {
    match &r.ended {
        Ended::Stopped(reason) => info!(target: "vmm", "microVM {name} ended: {reason} ({} exits, {} ms)", r.exits, r.wall_ns / 1_000_000),
        Ended::Failed(why) => warn!(target: "vmm", "microVM {name} failed: {why}"),
        Ended::Killed => info!(target: "vmm", "microVM {name} stopped by the node ({} exits, {} ms)", r.exits, r.wall_ns / 1_000_000),
        Ended::OutOfMemory => warn!(target: "vmm", "microVM {name} ended: out of host memory (only this VM stopped)"),
    }
    match (r.workload_exit, r.workload_ready) {
        (Some(e), _) => info!(target: "vmm", "microVM {name}: workload {e}"),
        (None, true) => warn!(target: "vmm", "microVM {name}: workload started but reported no exit status"),
        (None, false) => {}
    }
    if r.console_dropped > 0 {
        info!(target: "vmm", "microVM {name}: console {} bytes written, {} dropped", r.console_written, r.console_dropped);
    }
    if r.placement.cpus != 0 {
        info!(target: "vmm", "microVM {name}: vCPU ran on CPUs {}, moved {} times", cpu_list(r.placement.cpus), r.placement.migrations);
    }
}

/// "0,1" for CPU mask 0b11.
pub fn cpu_list(mask: u64) -> String {
    let mut s = String::new();
    for c in (0..64).filter(|c| mask & (1u64 << c) != 0) {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&format!("{c}"));
    }
    s
}
