//! Boot services: the APs, then the supervisor, which starts the ring-3 services.

use super::*;

/// Bring up the APs and start the supervisor (which starts the ring-3 services).
pub fn start_node(cpus: &[(u32, bool)], ioapic: Option<u64>, cmdline: &str) {
    IOAPIC_PHYS.store(ioapic.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
    let mut idx = 1;
    for &(apic_id, is_bsp) in cpus {
        if is_bsp {
            continue;
        }
        match smp::start_ap(idx, apic_id) {
            Ok(()) => {}
            Err(e) => warn!(target: "smp", "APIC id {}: {}", apic_id, e),
        }
        idx += 1;
    }
    info!(target: "smp", "{} of {} CPU(s) online", smp::online_cpus(), cpus.len());
    if RTCD_ELF.is_empty() {
        warn!(target: "task", "no ring-3 programs embedded (build with `cargo xtask build`)");
        return;
    }
    // the kernel's power endpoint, which apid sends to: before the services that wait for it
    crate::power::start();
    // rtcd, echo, nicd: the manifest's services, started by the supervisor
    supervisor::start(cmdline);
}

pub const ROLE_ECHO: u64 = 1;
pub const ROLE_CLIENT: u64 = 2;
#[cfg_attr(not(feature = "probes"), allow(dead_code))] // (the probes kernel's `bench=ipc`)
pub const ROLE_BENCH: u64 = 3;
pub const ROLE_TOUCH_KERNEL: u64 = 4;
pub const ROLE_BAD_PORT: u64 = 5;
pub const ROLE_SPIN: u64 = 6;
pub const ROLE_RTC_CLIENT: u64 = 7;
pub const ROLE_ONE_SHOT: u64 = 8;
pub const ROLE_MEMORY: u64 = 9;
pub const ROLE_GRANT_SERVER: u64 = 10;
pub const ROLE_GRANT_CLIENT: u64 = 11;
pub const ROLE_MMIO_DRIVER: u64 = 12;
pub const ROLE_HOSTILE_ARGS: u64 = 20;
pub const ROLE_SET_AC: u64 = 21;
pub const ROLE_SPIN_FOR: u64 = 22;
/// The IPC benchmark's passes with stage accounting: calls only, null syscalls only.
#[cfg_attr(not(feature = "probes"), allow(dead_code))] // (the probes kernel's `bench=ipc`)
pub const ROLE_BENCH_CALLS: u64 = 40;
#[cfg_attr(not(feature = "probes"), allow(dead_code))] // (the probes kernel's `bench=ipc`)
pub const ROLE_BENCH_NULLS: u64 = 41;
/// Holds patterns in rcx/r11 while preempted (`sched_user_regs_survive_preemption`).
pub const ROLE_REGS_HOLD: u64 = 42;
/// Echo server / client holding vector-register patterns across IPC and preemption
/// (`sched_user_fpu_survives_ipc_and_preemption`).
pub const ROLE_FPU_ECHO: u64 = 43;
pub const ROLE_FPU_CLIENT: u64 = 44;
/// Dies by UD2 holding a vector-register pattern; then a task started on its CPU reports what
/// its own registers hold (`sched_user_fpu_of_a_killed_task_does_not_leak`).
pub const ROLE_FPU_DIE: u64 = 45;
pub const ROLE_FPU_FRESH: u64 = 46;
pub const ROLE_HANG_ON_CALL: u64 = 47;
pub const ROLE_SPIN_SLEEP: u64 = 48;
/// Heartbeats (`ktest_core::user_task_that_misses_its_heartbeat_is_killed`): each arms a
/// 300 ms heartbeat. BEAT_SLEEPY beats for 600 ms, then loops sleeping 5 ms without beating;
/// BEAT_RECV then waits in a receive nobody answers; BEAT_BUSY then loops reading the clock
/// (never blocking); BEAT_KEEP beats every 50 ms for 1.5 s, calls slot 0 (answered after
/// 800 ms), beats, and exits 0x52 if out-of-range periods were refused (else 0x53);
/// BEAT_READY beats every 20 ms for 2 s and exits 0x5500_0000 + its longest gap between two
/// beats in ms (the test keeps it ready but off its CPU meanwhile).
pub const ROLE_BEAT_SLEEPY: u64 = 49;
pub const ROLE_BEAT_RECV: u64 = 50;
pub const ROLE_BEAT_BUSY: u64 = 51;
pub const ROLE_BEAT_KEEP: u64 = 52;
pub const ROLE_BEAT_READY: u64 = 53;

static IOAPIC_PHYS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Physical address of the first IOAPIC (from ACPI), if any.
pub fn ioapic_phys() -> Option<u64> {
    Some(IOAPIC_PHYS.load(core::sync::atomic::Ordering::Relaxed)).filter(|a| *a != 0)
}

static ECHO_EP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
impl Kernel {
    pub(super) fn echo_endpoint_set(&mut self, ep: Option<EndpointId>) {
        ECHO_EP.store(ep.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
    }
}
pub fn echo_endpoint() -> EndpointId {
    ECHO_EP.load(core::sync::atomic::Ordering::Relaxed)
}
pub fn rtc_endpoint() -> Option<EndpointId> {
    with(|k| k.rtc_endpoint)
}
