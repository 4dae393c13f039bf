//! `cargo xtask bench workload`: a Catenary image run as a microVM workload, printed, never
//! asserted (docs/images.md "Benchmarks").
//!
//! - latency: from the create request to the entrypoint's first log line, median of 5, under
//!   Catenary versus the same guest kernel, initramfs (+ the run-config appendix the node adds)
//!   and squashfs booted directly by QEMU (`-M microvm`, the same guest command line);
//! - workloads started per second: `vm.count=N` copies started at once on one node;
//! - host memory per microVM beyond its guest RAM, from the node's own free-frame and heap
//!   counters before the create and at the VM's end.
//!
//! Two ways to start the same image on a node, both measured:
//! - **through the workload service** (`workd`, docs/workloads.md): the test kernel booted with
//!   `ktest.only=workbench` runs the ring-3 client `wkctl` (scenario 4), which logs
//!   `wkctl: bench create NAME at node time …` just before each Create request and then Starts
//!   it: five workloads one after another (256 MiB), then eight at once (64 MiB);
//! - **the node's `vm.image=1` path** (no service: the demo VM started from the bundle's image,
//!   `kernel/src/vm/demo.rs` `run_demo_as`, whose first step logs `microVM NAME: create: …`), one
//!   VM per boot, and `vm.count=8` for eight at once.
//!
//! The figures come from the node's own log lines (its clock; `vmconsole.rs` logs when it decodes
//! a workload's first stdout/stderr line).

use crate::bench::median;
use crate::ociimage as oci;
use crate::qemu::run_captured;
use crate::tools::out_dir;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The entrypoint prints this first (and only) line, then exits 0.
const MARKER: &str = "catenary-bench first-line";
const RUNS: usize = 5;
/// `vm.count` for the start-rate figure, and the guest RAM of each (MiB: 8 fit a 1 GiB node).
const COUNT: usize = 8;
const COUNT_MEM: u64 = 64;

/// The number after `key ` in `line` (`"free frames 123,"` → 123).
fn num_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The node's figures for one VM, from its log lines.
#[derive(Default, Debug)]
struct VmFigures {
    /// `wkctl: bench create NAME at node time T us` (the workload service path).
    request_us: Option<u64>,
    create_us: Option<u64>,
    first_us: Option<u64>,
    free0: Option<u64>,
    heap_used0: Option<u64>,
    heap_size0: Option<u64>,
    free1: Option<u64>,
    heap_used1: Option<u64>,
    heap_size1: Option<u64>,
    ram_kib: Option<u64>,
    touched_kib: Option<u64>,
}

fn figures(lines: &[String], name: &str) -> VmFigures {
    let mut f = VmFigures::default();
    let create = format!("microVM {name}: create: ");
    let first = format!("microVM {name}: first workload log line");
    let end = format!("microVM {name}: memory at its end: ");
    let request = format!("wkctl: bench create {name} at node time");
    for l in lines {
        if l.contains(&request) {
            f.request_us = num_after(l, "node time");
        } else if l.contains(&create) {
            f.create_us = num_after(l, "node time");
            f.free0 = num_after(l, "free frames");
            f.heap_used0 = num_after(l, "heap");
            f.heap_size0 = num_after(l, " of");
        } else if l.contains(&first) {
            f.first_us = num_after(l, "node time");
        } else if l.contains(&end) {
            f.free1 = num_after(l, "free frames");
            f.heap_used1 = num_after(l, "heap");
            f.heap_size1 = num_after(l, " of");
            f.ram_kib = num_after(l, "guest RAM");
            f.touched_kib = num_after(l, "KiB (");
        }
    }
    f
}

/// The image: busybox, Entrypoint `/bin/sh -c 'echo MARKER'`.
fn build_image(dir: &Path) -> Result<PathBuf, String> {
    let r = oci::new_image(dir, "bench")?;
    oci::add_busybox(&r)?;
    oci::repack(dir, "bench")?;
    oci::config(dir, "bench", &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", &format!("echo {MARKER}")])?;
    let out = dir.join("out");
    let digest = oci::pack(dir, "bench", &out)?;
    println!("bench workload: image {digest} (busybox, Entrypoint `sh -c 'echo {MARKER}'`)");
    Ok(out)
}

/// One node, `words` on its command line; its log once every VM in `names` has exited.
fn node_run(kernel: &Path, bundle: &Path, words: &str, names: &[String]) -> Result<Vec<String>, String> {
    let b = crate::vmbench::node_with_guest(kernel, bundle, words);
    let ends: Vec<String> = names.iter().map(|n| format!("microVM {n}: workload exit code")).collect();
    let want: Vec<&str> = ends.iter().map(String::as_str).collect();
    let failed: Vec<String> = names.iter().flat_map(|n| [format!("microVM {n} failed"), format!("microVM {n} ended: out of host memory")]).collect();
    let mut fail = vec!["KERNEL PANIC", "- stopping this CPU", "catenary-init: error"];
    fail.extend(failed.iter().map(String::as_str));
    let o = run_captured(b.command(false)?, &want, &fail, Duration::from_secs(600), false)?;
    let log = out_dir().join(format!("bench-workload-{}.log", names.len()));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    if !o.matched {
        return Err(format!("the node did not run every workload to its end (log {})", log.display()));
    }
    Ok(o.lines)
}

/// The host's TSC in kHz (what QEMU TCG's RDTSC counts at), for the direct boot's
/// `tsc_early_khz=` (the node passes its own measurement).
fn host_tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("cpu MHz").and_then(|r| r.split(':').nth(1)).and_then(|v| v.trim().parse::<f64>().ok()))
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_000_000)
}

/// QEMU alone: `-M microvm`, PVH vmlinux, the initramfs with the node's run-config appendix,
/// the squashfs as a read-only virtio-blk disk, the console and the workload channel as two
/// virtio consoles (hvc0, hvc1) like the node's. Milliseconds from QEMU's start to `MARKER`
/// appearing in the channel (polled every 2 ms).
fn direct_ms(dir: &Path, image: &Path) -> Result<f64, String> {
    let g = out_dir().join("guest");
    let base = std::fs::read(g.join("initramfs.cpio.gz")).map_err(|e| e.to_string())?;
    let config = std::fs::read(image.join("config.json")).map_err(|e| e.to_string())?;
    let node = catenary_vmm::workload::node_json("demo", None);
    let initrd = catenary_vmm::workload::workload_initrd(&base, &config, node.as_bytes()).map_err(|_| "initrd: out of memory")?;
    let initrd_path = dir.join("direct-initrd");
    std::fs::write(&initrd_path, initrd).map_err(|e| e.to_string())?;
    let chan = dir.join("direct-channel.bin");
    let serial = dir.join("direct-serial.log");
    let _ = std::fs::remove_file(&chan);
    let cmdline = format!("{} rdinit=/sbin/catenary-init tsc_early_khz={}", catenary_vmm::LINUX_CMDLINE, host_tsc_khz());
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max", "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"]);
    c.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    c.args(["-serial", "null"]);
    c.arg("-kernel").arg(g.join("vmlinux")).arg("-initrd").arg(&initrd_path).args(["-append", &cmdline]);
    c.args(["-device", "virtio-serial-device"]);
    c.arg("-chardev").arg(format!("file,id=con,path={}", serial.display())).args(["-device", "virtconsole,chardev=con"]);
    c.arg("-chardev").arg(format!("file,id=chan,path={}", chan.display())).args(["-device", "virtconsole,chardev=chan"]);
    c.arg("-drive").arg(format!("file={},format=raw,if=none,id=root,readonly=on", image.join("rootfs.squashfs").display()));
    c.args(["-device", "virtio-blk-device,drive=root"]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let found = loop {
        if start.elapsed() > Duration::from_secs(120) {
            break None;
        }
        if let Ok(bytes) = std::fs::read(&chan) {
            if bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
                break Some(start.elapsed());
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    found.map(|d| d.as_secs_f64() * 1000.0).ok_or_else(|| format!("direct QEMU: no `{MARKER}` on the channel ({}; serial {})", err.trim(), serial.display()))
}


/// Create (the request, or the VM path's first step) → first log line, in ms, per VM.
fn latency_ms(f: &VmFigures) -> Option<f64> {
    let t0 = f.request_us.or(f.create_us)?;
    Some((f.first_us? as f64 - t0 as f64) / 1000.0)
}

/// Host memory beyond guest RAM of one VM alone, KiB: frames taken outside the heap, minus the
/// guest's RAM, plus the heap bytes allocated, between its create line and its end line.
fn beyond_kib(f: &VmFigures) -> Option<(f64, String)> {
    let (fr0, fr1, u0, u1, s0, s1, ram) = (f.free0?, f.free1?, f.heap_used0?, f.heap_used1?, f.heap_size0?, f.heap_size1?, f.ram_kib?);
    let frames = (fr0 as i64 - fr1 as i64) * 4096;
    let heap_grow = s1 as i64 - s0 as i64;
    let heap_used = u1 as i64 - u0 as i64;
    let b = frames - heap_grow - (ram as i64) * 1024 + heap_used;
    let detail = format!(
        "free frames {fr0} -> {fr1} ({} KiB), heap used {u0} -> {u1} bytes ({:+} KiB), heap grown {} KiB, guest RAM {ram} KiB ({} KiB touched)",
        frames / 1024, heap_used / 1024, heap_grow / 1024, f.touched_kib.unwrap_or(0)
    );
    Some((b as f64 / 1024.0, detail))
}

fn runs(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
}

/// Eight at once: the rate (8 / first create → last first line) and the memory per VM (KiB,
/// when the log holds the counters).
fn print_eight(lines: &[String], names: &[String], what: &str) -> Option<i64> {
    let fs: Vec<VmFigures> = names.iter().map(|n| figures(lines, n)).collect();
    let first_create = fs.iter().filter_map(|f| f.request_us.or(f.create_us)).min();
    let last_line = fs.iter().filter_map(|f| f.first_us).max();
    let lines_seen = fs.iter().filter(|f| f.first_us.is_some()).count();
    match (first_create, last_line) {
        (Some(a), Some(b)) if lines_seen == names.len() && b > a => {
            let s = (b - a) as f64 / 1e6;
            println!("  {what}: first create -> last first-log-line {:.0} ms = {:.2} workloads started per second", s * 1000.0, names.len() as f64 / s);
        }
        _ => println!("  {what}: only {lines_seen} of {} workloads printed their first line", names.len()),
    }
    concurrent_memory(lines, &fs, names, what)
}

/// The service path: one boot of the test kernel with `ktest.only=workbench`.
fn service_figures(bundle: &Path) -> Result<f64, String> {
    let kernel = crate::build::build_kernel(true)?;
    let b = crate::vmbench::node_with_guest(&kernel, bundle, "ktest.only=workbench");
    let o = run_captured(b.command(false)?, &["ktest workbench_service ... "], &["KERNEL PANIC", "- stopping this CPU"], Duration::from_secs(1500), false)?;
    let log = out_dir().join("bench-workload-service.log");
    let _ = std::fs::write(&log, o.lines.join("\n"));
    if !o.lines.iter().any(|l| l.contains("ktest workbench_service ... ok")) {
        return Err(format!("the workload service run did not finish (log {})", log.display()));
    }
    let lat: Vec<VmFigures> = (1..=5).map(|i| figures(&o.lines, &format!("lat{i}"))).collect();
    let ms: Vec<f64> = lat.iter().filter_map(latency_ms).collect();
    let mem: Vec<(f64, String)> = lat.iter().filter_map(beyond_kib).collect();
    println!("bench workload: through the workload service (workd; wkctl's Create request -> the node decodes the first log line; one node, 5 workloads one after another, 256 MiB)");
    println!("  median {:.0} ms   runs {} ms", median(ms.clone()), runs(&ms));
    if let Some((_, d)) = mem.last() {
        let k: Vec<f64> = mem.iter().map(|m| m.0).collect();
        println!("  host memory beyond guest RAM per microVM (node counters at the VM's create and at its end): median {:.0} KiB   runs {} KiB", median(k.clone()), runs(&k));
        crate::benchtable::value("host memory per microVM beyond guest RAM (workd, median)", "KiB", median(k.clone()), crate::benchtable::Goal::AtMost(256.0));
        println!("  last: {d}");
    }
    let names: Vec<String> = (1..=8).map(|i| format!("w{i}")).collect();
    if let Some(per) = print_eight(&o.lines, &names, "through the workload service, 8 at once (64 MiB each)") {
        crate::benchtable::value("host memory per microVM beyond guest RAM (workd, 8 alive, per VM)", "KiB", per as f64, crate::benchtable::Goal::AtMost(256.0));
    }
    println!("  (node log {})", log.display());
    Ok(median(ms))
}

pub fn bench_workload() -> Result<(), String> {
    if let Some(why) = oci::missing_tools() {
        return Err(format!("bench workload: {why}"));
    }
    crate::build::guest_bundle()?;
    let kernel = crate::build::build_kernel(false)?;
    let dir = out_dir().join("bench-workload");
    let image = build_image(&dir)?;
    let bundle = dir.join("bundle.cpio");
    oci::bundle_with_image(&image, &bundle)?;
    let ms = service_figures(&bundle)?;

    // The node's vm.image=1 path, one VM per node boot (QEMU TCG, q35, 2 CPUs, 1 GiB; 256 MiB),
    // and the same image booted directly by QEMU.
    let (mut cat, mut direct, mut beyond, mut detail) = (Vec::new(), Vec::new(), Vec::new(), String::new());
    for _ in 0..RUNS {
        let lines = node_run(&kernel, &bundle, "vm.image=1", &["demo".to_string()])?;
        let f = figures(&lines, "demo");
        cat.push(latency_ms(&f).ok_or_else(|| format!("no create/first-line figures in the node log: {f:?}"))?);
        if let Some((k, d)) = beyond_kib(&f) {
            beyond.push(k);
            detail = d;
        }
        direct.push(direct_ms(&dir, &image)?);
    }
    let (mc, md) = (median(cat.clone()), median(direct.clone()));
    println!("bench workload: the node's vm.image=1 path (no service; its create step -> first log line decoded; a fresh node per run, 256 MiB)");
    println!("  median {mc:.0} ms   runs {} ms", runs(&cat));
    println!("  host memory beyond guest RAM per microVM: median {:.0} KiB   runs {} KiB", median(beyond.clone()), runs(&beyond));
    println!("  last: {detail}");
    println!("bench workload: the same kernel, initramfs + run config and squashfs booted directly by QEMU -M microvm (QEMU start -> the line in the channel file)");
    println!("  median {md:.0} ms   runs {} ms", runs(&direct));
    println!("  ratio workload service / direct: {:.2}; vm.image path / direct: {:.2}", ms / md, mc / md);
    crate::benchtable::ratio("workload create to first log line (workd)", "ms", ms, "direct QEMU -M microvm", md, crate::benchtable::Goal::None);
    // Every run here is a fresh node's first VM, which also pays the node's once-per-node state
    // (~330 KiB, docs/images.md): a per-node cost, so this row has no per-VM goal; the goal is
    // checked on the eight-at-once figure below.
    crate::benchtable::value("host memory beyond guest RAM, vm.image path, a fresh node's first VM (incl. once-per-node state; median)", "KiB", median(beyond.clone()), crate::benchtable::Goal::None);

    let names: Vec<String> = (0..COUNT).map(|i| if i == 0 { "demo".to_string() } else { format!("demo-{}", i + 1) }).collect();
    let lines = node_run(&kernel, &bundle, &format!("vm.image=1 vm.count={COUNT} vm.mem={COUNT_MEM}"), &names)?;
    if let Some(per) = print_eight(&lines, &names, &format!("the vm.image=1 path, vm.count={COUNT} ({COUNT_MEM} MiB each)")) {
        crate::benchtable::value(&format!("host memory per microVM beyond guest RAM (vm.image path, {COUNT} alive, per VM)"), "KiB", per as f64, crate::benchtable::Goal::AtMost(256.0));
    }
    Ok(())
}

/// Memory per microVM with all of `names` alive: the node's counters at the first VM's create
/// line (before any of them existed) and at the first VM's end (checked: every one had been
/// created by then), divided by their number.
fn concurrent_memory(lines: &[String], fs: &[VmFigures], names: &[String], what: &str) -> Option<i64> {
    let n = names.len();
    let first = fs.iter().filter(|f| f.create_us.is_some()).min_by_key(|f| f.create_us)?;
    let is_ours = |l: &str, tail: &str| names.iter().any(|m| l.contains(&format!("microVM {m}{tail}")));
    let end_at = lines.iter().position(|l| is_ours(l, ": memory at its end: "))?;
    let end = &lines[end_at];
    // `microVM NAME (id N): … created in …`: the VM's RAM, vCPU and device model exist.
    let created_before = lines[..end_at].iter().filter(|l| is_ours(l, " (id ") && l.contains(" created in ")).count();
    if created_before < n {
        println!("  {what}: only {created_before} had been created when the first ended: no memory figure");
        return None;
    }
    let (Some(fr0), Some(u0), Some(s0)) = (first.free0, first.heap_used0, first.heap_size0) else { return None };
    let (Some(fr1), Some(u1), Some(s1), Some(ram1)) = (num_after(end, "free frames"), num_after(end, "heap"), num_after(end, " of"), num_after(end, "guest RAM")) else { return None };
    let ram = ram1 as i64 * 1024 * n as i64;
    let frames = (fr0 as i64 - fr1 as i64) * 4096;
    let (heap_grow, heap_used) = (s1 as i64 - s0 as i64, u1 as i64 - u0 as i64);
    let per = (frames - heap_grow - ram + heap_used) / n as i64;
    println!("  {what}: host memory beyond guest RAM with all {n} alive (node counters at the first create and at the first end): {} KiB per microVM (frames taken {} KiB for {} KiB of guest RAM, heap grown {} KiB, heap used {:+} KiB)",
        per / 1024, frames / 1024, ram / 1024, heap_grow / 1024, heap_used / 1024);
    Some(per / 1024)
}
