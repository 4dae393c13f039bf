//! `orchd.kill_test=HOLD_MS` (test; the QEMU test `cluster_orchd_killed`, docs/orchestration.md
//! "workd enforces the lease"): `orchd` dies alone, its node up, while the node runs a cluster
//! replica. Once a workload microVM named [`TRIGGER`] is created on this node (the test asks
//! this node's API for a node-level workload of that name, so the moment is the test's), the
//! kernel kills the `orchd` task (`kill_for_test`, as the `nicd`/`netd` restart probes do) and
//! holds its restart for HOLD_MS: with the supervisor's 50 ms backoff the new `orchd` would end
//! the lease at workd itself at once and hide workd's own enforcement; held past the lease, a
//! replica still stopping must be workd's doing. Then the supervisor restarts it as always.
//! Logs the kill, every `cl-` microVM that ends (ms after the kill, node clock) and the restart.
//! At most once per boot.

use catenary_arch::time;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use log::{info, warn};

use crate::task::{self, supervisor};

/// The node-level workload whose microVM's creation kills `orchd`.
pub const TRIGGER: &str = "killorchd";
/// The longest hold accepted.
#[cfg_attr(feature = "ktest", allow(dead_code))]
const HOLD_MAX_MS: u64 = 120_000;
const MS: u64 = 1_000_000;

/// How long the restart is held (0: the probe is off).
static HOLD_MS: AtomicU64 = AtomicU64::new(0);
static FIRED: AtomicBool = AtomicBool::new(false);
/// When `orchd` was killed (ns; 0: not yet).
static KILLED_AT: AtomicU64 = AtomicU64::new(0);

/// (The node kernel; the in-kernel test build has no cluster.)
#[cfg_attr(feature = "ktest", allow(dead_code))]
pub fn start(cmdline: &str) {
    let Some(ms) = crate::cmdline::get(cmdline, "orchd.kill_test").and_then(|v| v.parse::<u64>().ok()).filter(|&ms| ms > 0) else { return };
    HOLD_MS.store(ms.clamp(1, HOLD_MAX_MS), Ordering::Relaxed);
    info!(target: "orchprobe", "orchd kill test: armed; orchd is killed when a microVM named {} is created, its restart held {} ms", TRIGGER, ms.clamp(1, HOLD_MAX_MS));
}

/// (vmctl) A workload microVM named `name` is about to be created.
pub fn vm_created(name: &str) {
    if name == TRIGGER && HOLD_MS.load(Ordering::Relaxed) > 0 && !FIRED.swap(true, Ordering::AcqRel) {
        task::spawn_kernel("orchkill", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::ANY, kill, 0);
    }
}

/// (vmctl) Workload microVM `name` ended.
pub fn vm_ended(name: &str) {
    let at = KILLED_AT.load(Ordering::Acquire);
    if at != 0 && name.starts_with("cl-") {
        info!(target: "orchprobe", "orchd kill test: microVM {} ended {} ms after orchd was killed", name, time::now_ns().saturating_sub(at) / MS);
    }
}

fn kill(_: u64) {
    let hold = HOLD_MS.load(Ordering::Relaxed);
    let Some(old) = supervisor::service_task("orchd") else { return warn!(target: "orchprobe", "orchd kill test: orchd is not running") };
    supervisor::hold_restart_for_test("orchd", true);
    let t0 = time::now_ns();
    while !task::kill_for_test(old) {
        if time::now_ns() - t0 > 5_000 * MS {
            supervisor::hold_restart_for_test("orchd", false);
            return warn!(target: "orchprobe", "orchd kill test: orchd never stopped running long enough to be killed");
        }
        task::yield_now();
    }
    let at = time::now_ns();
    KILLED_AT.store(at, Ordering::Release);
    info!(target: "orchprobe", "orchd kill test: killed orchd (task {}); its restart is held for {} ms", old, hold);
    task::sleep_ns(hold * MS);
    supervisor::hold_restart_for_test("orchd", false);
    info!(target: "orchprobe", "orchd kill test: orchd may be restarted now ({} ms after the kill)", (time::now_ns() - at) / MS);
    let t1 = time::now_ns();
    while time::now_ns() - t1 < 30_000 * MS {
        if let Some(t) = supervisor::service_task("orchd").filter(|t| *t != old) {
            return info!(target: "orchprobe", "orchd kill test: orchd restarted as task {} ({} ms after the kill)", t, (time::now_ns() - at) / MS);
        }
        task::sleep_ns(10 * MS);
    }
    warn!(target: "orchprobe", "orchd kill test: orchd was not restarted within 30 s of the release");
}
