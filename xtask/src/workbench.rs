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
//! There is no workload service yet (issue 11, item 3): the "create request" is the node's
//! demo-VM path (`vm.image=1`, `kernel/src/vm.rs` `run_demo_as`), whose first step logs
//! `microVM NAME: create: node time …`. The figures come from the node's own log lines.

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
    for l in lines {
        if l.contains(&create) {
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
    let cmdline = format!("console=ttyS0 panic=-1 reboot=k tsc=reliable rdinit=/sbin/catenary-init tsc_early_khz={}", host_tsc_khz());
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max", "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"]);
    c.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    c.arg("-serial").arg(format!("file:{}", serial.display()));
    c.arg("-kernel").arg(g.join("vmlinux")).arg("-initrd").arg(&initrd_path).args(["-append", &cmdline]);
    c.args(["-device", "virtio-serial-device", "-chardev", "null,id=con", "-device", "virtconsole,chardev=con"]);
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
    println!("bench workload: no workload service yet: \"create\" is the node starting its image VM (`vm.image=1`, kernel/src/vm.rs)");

    // Latency and memory: one VM per node boot (QEMU TCG, q35, 2 CPUs, 1 GiB; guest 256 MiB).
    let (mut cat, mut direct, mut beyond, mut detail) = (Vec::new(), Vec::new(), Vec::new(), String::new());
    for _ in 0..RUNS {
        let lines = node_run(&kernel, &bundle, "vm.image=1", &["demo".to_string()])?;
        let f = figures(&lines, "demo");
        let (Some(t0), Some(t1)) = (f.create_us, f.first_us) else { return Err(format!("no create/first-line figures in the node log: {f:?}")) };
        cat.push((t1 - t0) as f64 / 1000.0);
        if let (Some(fr0), Some(fr1), Some(u0), Some(u1), Some(s0), Some(s1), Some(ram)) = (f.free0, f.free1, f.heap_used0, f.heap_used1, f.heap_size0, f.heap_size1, f.ram_kib) {
            // Frames taken outside the heap, minus the guest's RAM, plus the heap bytes it took.
            let frames = (fr0 as i64 - fr1 as i64) * 4096;
            let heap_grow = s1 as i64 - s0 as i64;
            let heap_used = u1 as i64 - u0 as i64;
            let b = frames - heap_grow - (ram as i64) * 1024 + heap_used;
            beyond.push(b as f64 / 1024.0);
            detail = format!(
                "free frames {fr0} -> {fr1} ({} KiB), heap used {u0} -> {u1} bytes ({:+} KiB), heap grown {} KiB, guest RAM {ram} KiB ({} KiB touched)",
                frames / 1024, heap_used / 1024, heap_grow / 1024, f.touched_kib.unwrap_or(0)
            );
        }
        direct.push(direct_ms(&dir, &image)?);
    }
    let (mc, md) = (median(cat.clone()), median(direct.clone()));
    let r = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    println!("bench workload: create -> entrypoint's first log line, median of {RUNS} (QEMU TCG)");
    println!("  under Catenary (node time, create -> line decoded from the channel): median {mc:.0} ms   runs {} ms", r(&cat));
    println!("  direct QEMU -M microvm (QEMU start -> line in the channel file):    median {md:.0} ms   runs {} ms", r(&direct));
    println!("  ratio Catenary / direct: {:.2}", mc / md);
    println!("bench workload: host memory per microVM beyond its guest RAM (node counters at create and at the VM's end)");
    println!("  median {:.0} KiB   runs {} KiB", median(beyond.clone()), r(&beyond));
    println!("  last run: {detail}");

    // Start rate: COUNT copies at once.
    let names: Vec<String> = (0..COUNT).map(|i| if i == 0 { "demo".to_string() } else { format!("demo-{}", i + 1) }).collect();
    let lines = node_run(&kernel, &bundle, &format!("vm.image=1 vm.count={COUNT} vm.mem={COUNT_MEM}"), &names)?;
    let fs: Vec<VmFigures> = names.iter().map(|n| figures(&lines, n)).collect();
    let first_create = fs.iter().filter_map(|f| f.create_us).min();
    let last_line = fs.iter().filter_map(|f| f.first_us).max();
    let lines_seen = fs.iter().filter(|f| f.first_us.is_some()).count();
    match (first_create, last_line) {
        (Some(a), Some(b)) if lines_seen == COUNT && b > a => {
            let s = (b - a) as f64 / 1e6;
            println!("bench workload: {COUNT} workloads started at once on one node (2 CPUs, vCPUs on CPU 1 under TCG; {COUNT_MEM} MiB each)");
            println!("  first create -> last first-log-line: {:.0} ms = {:.2} workloads started per second", s * 1000.0, COUNT as f64 / s);
        }
        _ => println!("bench workload: start rate: only {lines_seen} of {COUNT} workloads printed their first line"),
    }
    concurrent_memory(&lines, &fs);
    Ok(())
}

/// Memory per microVM with `COUNT` of them alive: the node's counters at the first create
/// (before any of them existed) and at the first VM's end (checked: every one had been
/// created by then), divided by `COUNT`.
fn concurrent_memory(lines: &[String], fs: &[VmFigures]) {
    let Some(first) = fs.iter().filter(|f| f.create_us.is_some()).min_by_key(|f| f.create_us) else { return };
    let Some(end_at) = lines.iter().position(|l| l.contains(": memory at its end: ")) else { return };
    let end = &lines[end_at];
    // `microVM NAME (id N): … created in …`: the VM's RAM, vCPU and device model exist.
    let created_before = lines[..end_at].iter().filter(|l| l.contains("microVM demo") && l.contains(" created in ")).count();
    if created_before < COUNT {
        println!("bench workload: memory with {COUNT} alive: only {created_before} had been created when the first ended; no figure");
        return;
    }
    let (Some(fr0), Some(u0), Some(s0)) = (first.free0, first.heap_used0, first.heap_size0) else { return };
    let (Some(fr1), Some(u1), Some(s1)) = (num_after(end, "free frames"), num_after(end, "heap"), num_after(end, " of")) else { return };
    let ram = COUNT_MEM as i64 * 1024 * 1024 * COUNT as i64;
    let frames = (fr0 as i64 - fr1 as i64) * 4096;
    let (heap_grow, heap_used) = (s1 as i64 - s0 as i64, u1 as i64 - u0 as i64);
    let per = (frames - heap_grow - ram + heap_used) / COUNT as i64;
    println!("bench workload: host memory per microVM beyond its guest RAM with {COUNT} alive (node counters at the first create and at the first VM's end)");
    println!("  {} KiB per microVM: frames taken {} KiB (guest RAM {} KiB), heap grown {} KiB, heap used {:+} KiB", per / 1024, frames / 1024, ram / 1024, heap_grow / 1024, heap_used / 1024);
}
