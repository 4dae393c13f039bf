//! `workload.client=N` on an ordinary node's command line: start the ring-3 workload client
//! `wkctl` with scenario N, holding only a send + grant capability to `workd` (as any client
//! of the workload protocol would). The cluster test `net_workload_server_stop` uses it
//! (scenario 5: a web server workload with network, stopped by a `Stop` request); the
//! `workload_*` QEMU tests use the test kernel's `ktest_workd` instead. Only in the probes
//! kernel (the cargo feature `probes`; docs/testing.md "The probes kernel").

use catenary_ipc::{Address, Capability, Rights};
use catenary_sched::{Affinity, Priority};
use log::{info, warn};

use crate::task::{self, supervisor, UserSpec};

const SEC: u64 = 1_000_000_000;

pub fn start(cmdline: &str) {
    let Some(scenario) = crate::cmdline::get(cmdline, "workload.client").and_then(|s| s.parse::<u64>().ok()) else { return };
    task::spawn_kernel("wkclient", Priority::NORMAL, Affinity::ANY, run, scenario);
}

fn run(scenario: u64) {
    let Some(ep) = supervisor::service_endpoint("workd") else { return warn!(target: "workd", "workload.client: no workd service in the manifest") };
    let end = catenary_arch::time::now_ns() + 30 * SEC;
    while supervisor::service_task("workd").is_none() {
        if catenary_arch::time::now_ns() > end {
            return warn!(target: "workd", "workload.client: workd is not running 30 s after boot");
        }
        task::sleep_ns(10_000_000);
    }
    let cap = Capability { target: Address::local(ep), rights: Rights::SEND.union(Rights::GRANT), badge: 0x78 };
    let spec = UserSpec {
        name: "wkctl", elf: supervisor::program_elf("wkctl"), arg: scenario, prio: Priority::NORMAL, affinity: Affinity::ANY,
        own_endpoint: true, caps: &[cap], ports: &[], mmio: &[], dma_pages: 0, mem_pages: 512,
    };
    match task::spawn_user(&spec) {
        Ok((id, _)) => match task::join(id, 3600 * SEC) {
            Some(code) => info!(target: "workd", "workload.client: wkctl scenario {} ended: {} checks failed", scenario, code),
            None => warn!(target: "workd", "workload.client: wkctl scenario {} still running after an hour", scenario),
        },
        Err(e) => warn!(target: "workd", "workload.client: spawn wkctl: {:?}", e),
    }
}
