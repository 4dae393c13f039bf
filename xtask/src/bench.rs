//! `cargo xtask bench`: figures, never assertions. Every benchmark adds its rows to the table
//! of `benchtable` (figure, reference from the same run, ratio, goal).

use crate::qemu::{run_captured, Boot};
use std::time::Duration;

const USAGE: &str = "usage: cargo xtask bench [boot|vm|exit|vmmem|ipc [local]|net|workload|aead|cluster|nat64|api|vcpus]";

/// `cargo xtask bench` runs every benchmark and ends with one table (`benchtable`); `bench
/// NAME` runs one and ends with its rows. A benchmark that fails is reported and the others
/// still run; the command then fails.
pub fn cmd_bench(args: &[String]) -> Result<(), String> {
    type Bench = fn(&[String]) -> Result<(), String>;
    let all: [(&str, Bench); 12] = [
        ("boot", |_| bench_boot()),
        ("vm", |_| crate::vmbench::bench_vm()),
        ("exit", |_| crate::vmbench::bench_exit()),
        ("vmmem", |_| crate::vmbench::bench_vmmem()),
        ("ipc", |a| bench_ipc(a)),
        ("net", |a| crate::netbench::bench(a)),
        ("workload", |_| crate::workbench::bench_workload()),
        ("aead", |_| bench_aead()),
        ("cluster", |a| crate::clusterbench::bench_cluster(a)),
        ("nat64", crate::nat64bench::bench),
        ("api", |_| crate::apibench::bench_api()),
        ("vcpus", |_| crate::vmbench::bench_vcpus()),
    ];
    let (chosen, file): (Vec<(&str, Bench)>, String) = match args.first().map(String::as_str) {
        None => (all.to_vec(), "bench.json".into()),
        Some(name) => match all.iter().find(|(n, _)| *n == name) {
            Some(b) => (vec![*b], format!("bench-{name}.json")),
            None => return Err(USAGE.into()),
        },
    };
    let rest = if args.is_empty() { &[][..] } else { &args[1..] };
    let mut failed = Vec::new();
    for (name, run) in chosen {
        if let Err(e) = run(rest) {
            println!("bench {name}: FAILED: {e}");
            failed.push(name);
        }
    }
    crate::benchtable::finish(&file)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("benchmarks that did not produce figures: {}", failed.join(", ")))
    }
}

/// netfabric's transport throughput vs raw ChaCha20-Poly1305 seal+open on the host
/// (`cargo bench -p netfabric`, netfabric/benches/fabric.rs): the AEAD reference of item 4.
fn bench_aead() -> Result<(), String> {
    println!("bench aead: netfabric send+receive vs raw chacha20poly1305 seal+open on the host (cargo bench -p netfabric)");
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::tools::root())
        .args(["bench", "-q", "-p", "netfabric", "--bench", "fabric"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for l in text.lines() {
        println!("  {l}");
    }
    let mbs = |key: &str| {
        text.lines().find(|l| l.trim_start().starts_with(key)).and_then(|l| l.split(':').nth(1)).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok())
    };
    match (mbs("netfabric (send"), mbs("raw chacha20poly1305")) {
        (Some(lib), Some(raw)) => {
            crate::benchtable::ratio("fabric AEAD path on the host (1400 B packets)", "MB/s", lib, "raw ChaCha20-Poly1305", raw, crate::benchtable::Goal::None);
            Ok(())
        }
        _ => Err(format!("no figures in `cargo bench -p netfabric` output: {}", String::from_utf8_lossy(&out.stderr))),
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
        let med = median(times);
        println!("  {m:8} median {med:7.1} ms   (runs: {} ms)", all.join(", "));
        crate::benchtable::value(&format!("node boot to `catenary: ready` (QEMU {m})"), "ms", med, crate::benchtable::Goal::None);
    }
    Ok(())
}

/// Ring-3 IPC round trips and the null syscall, measured in the guest (TSC cycles, medians),
/// with the kernel's per-stage breakdown; then the remote round trip (`bench ipc local`: not).
fn bench_ipc(args: &[String]) -> Result<(), String> {
    // `bench=ipc` and `net.ipcbench`: probes, only in the probes kernel (the same code plus them)
    let kernel = crate::build::build_kernel_probes()?;
    let kernel_path = kernel.clone();
    let mut b = Boot::pvh("q35", kernel);
    b.smp = 4;
    b.mem = "512M".into();
    b.cmdline = "bench=ipc".into();
    println!("bench ipc: ring-3 <-> ring-3 call/reply and null syscall, TSC cycles, median of 2000 (QEMU TCG, -smp 4)");
    let o = run_captured(b.command(false)?, &["bench ipc: done"], &["KERNEL PANIC"], Duration::from_secs(240), false)?;
    for l in o.lines.iter().filter(|l| l.contains("bench ipc:")) {
        let text = l.split("bench ipc: ").nth(1).unwrap_or(l);
        println!("  {text}");
        // `same CPU: call/reply round trip R cycles, null syscall N cycles, ratio X`
        let num = |key: &str| text.split(key).nth(1).and_then(|x| x.split_whitespace().next()).and_then(|x| x.parse::<f64>().ok());
        if let (Some((what, _)), Some(rt), Some(null)) = (text.split_once(": call/reply"), num("round trip "), num("null syscall ")) {
            let goal = if what == "same CPU" { 3.0 } else { 6.0 };
            crate::benchtable::ratio(&format!("IPC call/reply, ring 3, {what}"), "cycles", rt, "null syscall", null, crate::benchtable::Goal::AtMost(goal));
        }
    }
    if args.first().map(String::as_str) == Some("local") {
        return Ok(());
    }
    bench_ipc_remote(&kernel_path)
}

/// The host's load averages (1, 5, 15 min), to print next to figures taken on a shared machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|| "?".into())
}

/// The remote call round trip: two nodes (QEMU TCG, one CPU each) on a vde switch; node1's
/// kernel task calls node2's ring-3 `echo` through the fabric (`net.ipcbench`), median and
/// min of 200 calls after 10 warm-up calls. Measured twice in one run: with `netd` (the IPC
/// router, smoltcp, the sessions) as the ring-3 service on both nodes (the default), then as
/// the in-kernel task (`net.netd=kernel` on both, kept as this reference). Printed, not
/// asserted; the host's load average is printed with each.
fn bench_ipc_remote(kernel: &std::path::Path) -> Result<(), String> {
    if crate::tools::which("vde_switch").is_none() {
        println!("bench ipc: remote call round trip skipped (vde_switch not installed: apt-get install vde2)");
        return Ok(());
    }
    let mut figures = Vec::new();
    for (what, words, tag) in [("ring-3 netd", "", "bench-ipc-remote-ring3"), ("in-kernel netd", "net.netd=kernel ", "bench-ipc-remote-kernel")] {
        let load = loadavg();
        println!("bench ipc: remote call round trip between two nodes (QEMU TCG, one CPU each, {what} on both), 200 calls; host load average {load}");
        let mut a = crate::cluster::NodeSpec::new(1);
        a.cmdline = format!("{words}net.ipcbench=node2");
        let mut b = crate::cluster::NodeSpec::new(2);
        b.cmdline = words.trim().into();
        let mut r = crate::cluster::start(kernel, &[a, b], "bench-ipc-remote", &[])?;
        let ok = r.wait(Duration::from_secs(240), false, |l| l[0].iter().any(|x| x.contains("bench ipc: remote done") || x.contains("KERNEL PANIC")));
        let lines: Vec<String> = r.lines[0].iter().filter(|l| l.contains("bench ipc: remote call")).cloned().collect();
        let log = r.save_logs(tag);
        drop(r);
        let load = format!("{load} at the start, {} at the end", loadavg());
        for l in &lines {
            println!("  {}", l.split("bench ipc: ").nth(1).unwrap_or(l));
        }
        if !ok || lines.is_empty() {
            return Err(format!("bench ipc: no remote call figure with the {what} (log {})", log.display()));
        }
        let num = |key: &str| lines[0].split(key).nth(1).and_then(|x| x.split(' ').next()).and_then(|x| x.parse::<f64>().ok());
        figures.push((num("median "), num("min "), load));
    }
    if let [(Some(um), Some(un), ul), (Some(km), Some(kn), kl)] = &figures[..] {
        println!("bench ipc: remote call round trip, ring-3 netd vs in-kernel netd:");
        println!("  median {um:.0} us vs {km:.0} us (ratio {:.2}), min {un:.0} us vs {kn:.0} us (ratio {:.2})", um / km, un / kn);
        println!("  host load average (1/5/15 min) during the ring-3 run: {ul}; during the in-kernel run: {kl}");
        crate::benchtable::ratio("remote call round trip, two nodes (median)", "us", *um, "in-kernel netd", *km, crate::benchtable::Goal::None);
    }
    Ok(())
}
