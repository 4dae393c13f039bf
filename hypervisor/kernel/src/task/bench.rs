//! The IPC benchmark (`bench=ipc`).

use super::*;

/// `bench=ipc` on the command line: ring-3 call/reply round trip on one CPU and across CPUs,
/// and the null syscall, in TSC cycles (medians of 2000, measured in ring 3). Then the same
/// again with the kernel's stage accounting on (`catenary_arch::stages`): where the cycles of
/// one call/reply and of one null syscall go, per CPU.
pub fn run_ipc_bench(cpus: usize) {
    let Ok((slot, ep)) = try_create_endpoint_for_current(4) else { return warn!(target: "bench", "capability table full") };
    let other = if cpus > 1 { 1 } else { 0 };
    let client = |role: u64, cpu: usize, sep: EndpointId| {
        spawn_user(&UserSpec { name: "bench-client", elf: UAPP_ELF, arg: role, prio: Priority::NORMAL,
            affinity: Affinity::only(cpu), own_endpoint: false, caps: &[send_cap(sep, 1), send_cap(ep, 0)], ports: &[], mmio: &[], dma_pages: 0, mem_pages: DEFAULT_MEM_PAGES })
    };
    for (what, srv_cpu, cli_cpu) in [("same CPU", 0usize, 0usize), ("across CPUs", other, 0)] {
        let srv = spawn_user(&UserSpec { name: "bench-echo", elf: UAPP_ELF, arg: ROLE_ECHO, prio: Priority::NORMAL,
            affinity: Affinity::only(srv_cpu), own_endpoint: true, caps: &[], ports: &[], mmio: &[], dma_pages: 0, mem_pages: DEFAULT_MEM_PAGES });
        let Ok((sid, Some(sep))) = srv else { warn!(target: "bench", "cannot start server"); return };
        let Ok((cid, _)) = client(ROLE_BENCH, cli_cpu, sep) else { warn!(target: "bench", "cannot start client"); return };
        match recv(slot, 60_000_000_000) {
            Ok(m) => {
                let (null, rt) = (m.words[0], m.words[1]);
                info!(target: "bench", "bench ipc: {}: call/reply round trip {} cycles, null syscall {} cycles, ratio {:.1}",
                    what, rt, null, rt as f64 / null.max(1) as f64);
            }
            Err(e) => warn!(target: "bench", "bench ipc: {}: no result ({:?})", what, e),
        }
        join(cid, 5_000_000_000);
        let mut passes = alloc::vec![(ROLE_BENCH_CALLS, SYS_CALL, "call/reply")];
        if srv_cpu == cli_cpu {
            passes.push((ROLE_BENCH_NULLS, SYS_NULL, "null syscall"));
        }
        for (role, per, name) in passes {
            stages::start();
            let handoffs = fastpath_handoffs();
            let Ok((cid, _)) = client(role, cli_cpu, sep) else { warn!(target: "bench", "cannot start client"); return };
            let got = recv(slot, 60_000_000_000);
            let counts = stages::stop();
            join(cid, 5_000_000_000);
            let n = counts[per as usize].max(1);
            let direct = fastpath_handoffs() - handoffs;
            let med = got.map(|m| m.words[1]).unwrap_or(0);
            let cpus_used: &[usize] = if srv_cpu == cli_cpu { &[cli_cpu] } else { &[cli_cpu, srv_cpu] };
            for &c in cpus_used {
                let s = stages::sums(c);
                let total: u64 = s.iter().sum();
                let parts: Vec<String> = stages::NAMES.iter().zip(s.iter()).map(|(n_, v)| alloc::format!("{} {}", n_, v / n)).collect();
                info!(target: "bench", "bench ipc: stages: {}: {} (median {} cycles with accounting on, {} direct switches), cpu {}: {} per {} ({} cycles): {}",
                    what, name, med, direct, c, n, name, total / n, parts.join(", "));
            }
        }
        kill_for_test(sid);
    }
    info!(target: "bench", "bench ipc: done");
}
