//! `cargo xtask bench`: figures, never assertions.

use crate::qemu::{run_captured, Boot};
use std::time::Duration;

pub fn cmd_bench(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("boot") => bench_boot(),
        Some("vm") => crate::vmbench::bench_vm(),
        Some("ipc") => bench_ipc(),
        Some("net") => crate::cluster::bench(&args[1..]),
        _ => Err("usage: cargo xtask bench boot|vm|ipc|net".into()),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Wall time from QEMU start to the kernel's ready line, median of 5, for microvm and q35.
fn bench_boot() -> Result<(), String> {
    let kernel = crate::build::build_kernel(false)?;
    println!("bench boot: wall time from QEMU start to `catenary: ready` (median of 5, TCG{})",
        if crate::qemu::kvm_usable() { "/KVM" } else { "" });
    for m in ["microvm", "q35"] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut b = Boot::pvh(m, kernel.clone());
            b.smp = 1;
            b.mem = "512M".into();
            let o = run_captured(b.command(false)?, &["catenary: ready"], &["KERNEL PANIC"], Duration::from_secs(60), false)?;
            match o.times.first().copied().flatten() {
                Some(t) => times.push(t.as_secs_f64() * 1000.0),
                None => return Err(format!("{m}: kernel did not reach ready")),
            }
        }
        let all: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
        println!("  {m:8} median {:7.1} ms   (runs: {} ms)", median(times), all.join(", "));
    }
    Ok(())
}

/// Ring-3 IPC round trips and the null syscall, measured in the guest (TSC cycles, medians).
fn bench_ipc() -> Result<(), String> {
    let kernel = crate::build::build_kernel(false)?;
    let kernel_path = kernel.clone();
    let mut b = Boot::pvh("q35", kernel);
    b.smp = 4;
    b.mem = "512M".into();
    b.cmdline = "bench=ipc".into();
    println!("bench ipc: ring-3 <-> ring-3 call/reply and null syscall, TSC cycles, median of 2000 (QEMU TCG, -smp 4)");
    let o = run_captured(b.command(false)?, &["bench ipc: done"], &["KERNEL PANIC"], Duration::from_secs(240), false)?;
    for l in o.lines.iter().filter(|l| l.contains("bench ipc:")) {
        println!("  {}", l.split("bench ipc: ").nth(1).unwrap_or(l));
    }
    bench_ipc_remote(&kernel_path)
}

/// The remote call round trip: two nodes (QEMU TCG, one CPU each) on a vde switch; node1's
/// kernel task calls node2's ring-3 `echo` through the fabric (`net.ipcbench`), median of
/// 200 calls after 10 warm-up calls. `netd` (the IPC router) is the in-kernel task today.
fn bench_ipc_remote(kernel: &std::path::Path) -> Result<(), String> {
    if crate::tools::which("vde_switch").is_none() {
        println!("bench ipc: remote call round trip skipped (vde_switch not installed: apt-get install vde2)");
        return Ok(());
    }
    println!("bench ipc: remote call round trip between two nodes (QEMU TCG, one CPU each, in-kernel netd), median of 200");
    let mut a = crate::cluster::NodeSpec::new(1);
    a.cmdline = "net.ipcbench=node2".into();
    let b = crate::cluster::NodeSpec::new(2);
    let mut r = crate::cluster::start(kernel, &[a, b], "bench-ipc-remote", &[])?;
    let ok = r.wait(Duration::from_secs(240), false, |l| l[0].iter().any(|x| x.contains("bench ipc: remote done") || x.contains("KERNEL PANIC")));
    let lines: Vec<String> = r.lines[0].iter().filter(|l| l.contains("bench ipc: remote call")).cloned().collect();
    let log = r.save_logs("bench-ipc-remote");
    drop(r);
    for l in &lines {
        println!("  {}", l.split("bench ipc: ").nth(1).unwrap_or(l));
    }
    if !ok || lines.is_empty() {
        return Err(format!("bench ipc: no remote call figure (log {})", log.display()));
    }
    Ok(())
}
