//! In-kernel tests of the workload service (docs/workloads.md): a ring-3 client (`wkctl`, with
//! one capability: send + grant to `workd`'s endpoint) speaks the workload protocol to the
//! ring-3 `workd` the supervisor started, which runs real Linux microVMs from the packed
//! busybox image in the node's store. The client's checks are its `wkctl: RESULT …` lines and
//! its exit code (the number of failed checks); here the test also requires that `workd` was
//! neither restarted nor replaced meanwhile. Run by `cargo xtask test --only workload_` (one
//! boot with the guest bundle and image, `ktest.only=workload`; `ON_REQUEST`; that boot also runs
//! `ktest_workload`'s `workload_stop_grace_policy`).

use alloc::format;
use alloc::string::String;
use catenary_ipc::{Address, Capability, Rights};
use catenary_sched::{Affinity, Priority};

use crate::init::Node;
use crate::task::{self, supervisor, UserSpec};

const SEC: u64 = 1_000_000_000;

fn run_client(scenario: u64, timeout_s: u64) -> Result<(), String> {
    let ep = supervisor::service_endpoint("workd").ok_or("no workd service in the manifest")?;
    let end = catenary_arch::time::now_ns() + 10 * SEC;
    while supervisor::service_task("workd").is_none() {
        if catenary_arch::time::now_ns() > end {
            return Err("workd is not running 10 s after boot".into());
        }
        task::sleep_ns(10_000_000);
    }
    let (workd, restarts) = (supervisor::service_task("workd"), supervisor::service_restarts("workd"));
    let cap = Capability { target: Address::local(ep), rights: Rights::SEND.union(Rights::GRANT), badge: 0x77 };
    let (id, _) = task::spawn_user(&UserSpec {
        name: "wkctl", elf: supervisor::program_elf("wkctl"), arg: scenario, prio: Priority::NORMAL, affinity: Affinity::ANY,
        own_endpoint: true, caps: &[cap], ports: &[], mmio: &[], dma_pages: 0, mem_pages: 512,
    })
    .map_err(|e| format!("spawn wkctl: {e:?}"))?;
    let code = task::join(id, timeout_s * SEC).ok_or_else(|| format!("wkctl did not finish within {timeout_s} s"))?;
    if supervisor::service_task("workd") != workd || supervisor::service_restarts("workd") != restarts {
        return Err(format!("workd was replaced meanwhile (task {:?} -> {:?})", workd, supervisor::service_task("workd")));
    }
    if code != 0 {
        return Err(format!("wkctl: {code:#x} checks failed (its RESULT lines say which)"));
    }
    Ok(())
}

pub fn workload_hostile_requests(_: &Node) -> Result<(), String> {
    run_client(1, 120)
}

pub fn workload_restart_on_failure(_: &Node) -> Result<(), String> {
    run_client(2, 600)
}

pub fn workload_eight_at_once(_: &Node) -> Result<(), String> {
    run_client(3, 900)
}

/// Not a check: `cargo xtask bench workload` boots `ktest.only=workbench` and reads the node's
/// lines (wkctl scenario 4).
pub fn workbench_service(_: &Node) -> Result<(), String> {
    run_client(4, 1500)
}

/// Image push through `workd` into the kernel's store (wkctl scenario 6: good, corrupted chunk,
/// resumed, already present, mismatch refused, removal refused while used then done, an
/// abandoned upload expired); here also: the store holds no more frames than before.
pub fn workload_image_push(_: &Node) -> Result<(), String> {
    let before = crate::vmstore::info();
    run_client(6, 600)?;
    let after = crate::vmstore::info();
    if after.used_pages != before.used_pages || after.uploads != 0 {
        return Err(format!("the store holds {} pages in {} uploads after the scenario (before: {} pages)", after.used_pages, after.uploads, before.used_pages));
    }
    Ok(())
}

/// Kill `workd` while two workloads run: the supervisor restarts it, the new incarnation
/// adopts both microVMs (wkctl scenarios 7 and 8).
pub fn workload_adopted_after_restart(_: &Node) -> Result<(), String> {
    run_client(7, 600)?;
    let old = supervisor::service_task("workd").ok_or("workd is not running")?;
    let restarts = supervisor::service_restarts("workd");
    let end = catenary_arch::time::now_ns() + 5 * SEC;
    while !task::kill_for_test(old) {
        if catenary_arch::time::now_ns() > end {
            return Err("workd never stopped running long enough to be killed".into());
        }
        task::yield_now();
    }
    let end = catenary_arch::time::now_ns() + 30 * SEC;
    loop {
        match supervisor::service_task("workd") {
            Some(t) if t != old && supervisor::service_restarts("workd") == restarts + 1 => {
                log::info!(target: "ktest", "workd killed (task {old}) and restarted as task {t}: {} restarts", restarts + 1);
                break;
            }
            _ if catenary_arch::time::now_ns() > end => return Err(format!("workd was not restarted within 30 s (restarts {})", supervisor::service_restarts("workd"))),
            _ => task::sleep_ns(50_000_000),
        }
    }
    run_client(8, 600)
}
