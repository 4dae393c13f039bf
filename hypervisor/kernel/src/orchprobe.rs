//! `orchd.kill_test=HOLD_MS` (test; the QEMU test `cluster_orchd_killed`, docs/orchestration.md
//! "workd enforces the lease"): `orchd` dies alone, its node up, while the node runs a cluster
//! replica. Once a workload microVM named `killorchd` is created on this node (the test asks
//! this node's API for a node-level workload of that name, so the moment is the test's), the
//! kernel kills the `orchd` task (`kill_for_test`, as the `nicd`/`netd` restart probes do) and
//! holds its restart for HOLD_MS: with the supervisor's 50 ms backoff the new `orchd` would end
//! the lease at workd itself at once and hide workd's own enforcement; held past the lease, a
//! replica still stopping must be workd's doing. Then the supervisor restarts it as always.
//! Logs the kill, every `cl-` microVM that ends (ms after the kill, node clock) and the restart.
//! At most once per boot.
//!
//! `workd.kill_test=HOLD_MS` does the same to `workd` when a microVM named `killworkd` is
//! created (`cluster_workd_killed`): with `workd` dead, nothing in ring 3 stops a cluster
//! replica, and the kernel's power-off deadline (`OP_DEADLINE`) must.

//!
//! Only in a kernel built with the cargo feature `probes` (`cargo xtask` builds it for the QEMU
//! tests that arm a probe, `build::build_kernel_probes`): the node kernel that `cargo xtask
//! run` and the ISO ship has neither the option nor the kill, so no command line can make it
//! kill `orchd` (review finding (e)); `cluster_orchd_killed` checks the option's name is not
//! in that kernel's bytes.

#[cfg(not(feature = "probes"))]
mod off {
    /// (No probes in this build: the option is not even read.)
    #[cfg_attr(feature = "ktest", allow(dead_code))]
    pub fn start(_: &str) {}
    pub fn vm_created(_: &str) {}
    pub fn vm_ended(_: &str) {}
}
#[cfg(not(feature = "probes"))]
pub use off::*;

#[cfg(feature = "probes")]
pub use on::*;

#[cfg(feature = "probes")]
mod on {
    use catenary_arch::time;
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use log::{info, warn};

    use crate::task::{self, supervisor};

    /// One probe: `{service}.kill_test=HOLD_MS` kills `service` when a microVM named `trigger`
    /// is created.
    struct Probe {
        service: &'static str,
        option: &'static str,
        trigger: &'static str,
        /// How long the restart is held (0: the probe is off).
        hold_ms: AtomicU64,
        fired: AtomicBool,
        /// When the service was killed (ns; 0: not yet).
        killed_at: AtomicU64,
    }

    /// `orchd.kill_test` (`cluster_orchd_killed`: workd enforces the lease) and
    /// `workd.kill_test` (`cluster_workd_killed`: the kernel's deadline does, workd dead).
    static PROBES: [Probe; 2] = [
        Probe { service: "orchd", option: "orchd.kill_test", trigger: "killorchd", hold_ms: AtomicU64::new(0), fired: AtomicBool::new(false), killed_at: AtomicU64::new(0) },
        Probe { service: "workd", option: "workd.kill_test", trigger: "killworkd", hold_ms: AtomicU64::new(0), fired: AtomicBool::new(false), killed_at: AtomicU64::new(0) },
    ];
    /// The longest hold accepted.
    #[cfg_attr(feature = "ktest", allow(dead_code))]
    const HOLD_MAX_MS: u64 = 120_000;
    const MS: u64 = 1_000_000;

    /// (The node kernel; the in-kernel test build has no cluster.)
    #[cfg_attr(feature = "ktest", allow(dead_code))]
    pub fn start(cmdline: &str) {
        for p in &PROBES {
            let Some(ms) = crate::cmdline::get(cmdline, p.option).and_then(|v| v.parse::<u64>().ok()).filter(|&ms| ms > 0) else { continue };
            p.hold_ms.store(ms.clamp(1, HOLD_MAX_MS), Ordering::Relaxed);
            info!(target: "orchprobe", "{} kill test: armed; {} is killed when a microVM named {} is created, its restart held {} ms", p.service, p.service, p.trigger, ms.clamp(1, HOLD_MAX_MS));
        }
    }

    /// (vmctl) A workload microVM named `name` is about to be created.
    pub fn vm_created(name: &str) {
        for (i, p) in PROBES.iter().enumerate() {
            if name == p.trigger && p.hold_ms.load(Ordering::Relaxed) > 0 && !p.fired.swap(true, Ordering::AcqRel) {
                task::spawn_kernel("probekill", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, kill, i as u64);
            }
        }
    }

    /// (vmctl) Workload microVM `name` ended.
    pub fn vm_ended(name: &str) {
        for p in &PROBES {
            let at = p.killed_at.load(Ordering::Acquire);
            if at != 0 && name.starts_with("cl-") {
                info!(target: "orchprobe", "{} kill test: microVM {} ended {} ms after {} was killed", p.service, name, time::now_ns().saturating_sub(at) / MS, p.service);
            }
        }
    }

    fn kill(i: u64) {
        let Some(p) = PROBES.get(i as usize) else { return };
        let (svc, hold) = (p.service, p.hold_ms.load(Ordering::Relaxed));
        let Some(old) = supervisor::service_task(svc) else { return warn!(target: "orchprobe", "{svc} kill test: {svc} is not running") };
        supervisor::hold_restart_for_test(svc, true);
        let t0 = time::now_ns();
        while !task::kill_for_test(old) {
            if time::now_ns() - t0 > 5_000 * MS {
                supervisor::hold_restart_for_test(svc, false);
                return warn!(target: "orchprobe", "{svc} kill test: {svc} never stopped running long enough to be killed");
            }
            task::yield_now();
        }
        let at = time::now_ns();
        p.killed_at.store(at, Ordering::Release);
        info!(target: "orchprobe", "{svc} kill test: killed {svc} (task {}); its restart is held for {} ms", old, hold);
        task::sleep_ns(hold * MS);
        supervisor::hold_restart_for_test(svc, false);
        info!(target: "orchprobe", "{svc} kill test: {svc} may be restarted now ({} ms after the kill)", (time::now_ns() - at) / MS);
        let t1 = time::now_ns();
        while time::now_ns() - t1 < 30_000 * MS {
            if let Some(t) = supervisor::service_task(svc).filter(|t| *t != old) {
                return info!(target: "orchprobe", "{svc} kill test: {svc} restarted as task {} ({} ms after the kill)", t, (time::now_ns() - at) / MS);
            }
            task::sleep_ns(10 * MS);
        }
        warn!(target: "orchprobe", "{svc} kill test: {svc} was not restarted within 30 s of the release");
    }
}
