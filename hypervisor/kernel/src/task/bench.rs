//! The IPC benchmark (`bench=ipc`).

use super::*;

/// `bench=ipc` on the command line: ring-3 call/reply round trip on one CPU and across CPUs,
/// and the null syscall, in TSC cycles (medians of 2000, measured in ring 3).
pub fn run_ipc_bench(cpus: usize) {
    let Ok((slot, ep)) = try_create_endpoint_for_current(4) else { return warn!(target: "bench", "capability table full") };
    let other = if cpus > 1 { 1 } else { 0 };
    for (what, srv_cpu, cli_cpu) in [("same CPU", 0usize, 0usize), ("across CPUs", other, 0)] {
        let srv = spawn_user(&UserSpec { name: "bench-echo", elf: UAPP_ELF, arg: ROLE_ECHO, prio: Priority::NORMAL,
            affinity: Affinity::only(srv_cpu), own_endpoint: true, caps: &[], ports: &[], mmio: &[], dma_pages: 0, mem_pages: DEFAULT_MEM_PAGES });
        let Ok((sid, Some(sep))) = srv else { warn!(target: "bench", "cannot start server"); return };
        let cli = spawn_user(&UserSpec { name: "bench-client", elf: UAPP_ELF, arg: ROLE_BENCH, prio: Priority::NORMAL,
            affinity: Affinity::only(cli_cpu), own_endpoint: false, caps: &[send_cap(sep, 1), send_cap(ep, 0)], ports: &[], mmio: &[], dma_pages: 0, mem_pages: DEFAULT_MEM_PAGES });
        let Ok((cid, _)) = cli else { warn!(target: "bench", "cannot start client"); return };
        match recv(slot, 60_000_000_000) {
            Ok(m) => {
                let (null, rt) = (m.words[0], m.words[1]);
                info!(target: "bench", "bench ipc: {}: call/reply round trip {} cycles, null syscall {} cycles, ratio {:.1}",
                    what, rt, null, rt as f64 / null.max(1) as f64);
            }
            Err(e) => warn!(target: "bench", "bench ipc: {}: no result ({:?})", what, e),
        }
        join(cid, 5_000_000_000);
        kill_for_test(sid);
    }
    info!(target: "bench", "bench ipc: done");
}
