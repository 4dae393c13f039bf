//! Bochs runs: the Intel VT-x path. Bochs 2.7 emulates VMX with EPT, VPID and unrestricted guest
//! (`cpu: model=corei7_haswell_4770`); it boots the Multiboot2 kernel from the GRUB ISO.
//!
//! The serial console (COM1) goes to a file that is polled while Bochs runs; a run ends when all
//! expected lines have appeared, a failure line appears, Bochs exits (the kernel ends it through
//! the debugger port 0x8a00, `catenary_arch::qemu::bochs_shutdown`), or at the deadline.

use crate::build::build_iso;
use crate::test::Tally;
use crate::tools::{out_dir, require, require_file};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct BochsOutcome {
    pub lines: Vec<String>,
    /// Time from spawn to each expected pattern's first match.
    pub times: Vec<Option<Duration>>,
    pub failed_on: Option<String>,
    pub elapsed: Duration,
    pub exited: bool,
    pub log: PathBuf,
}

impl BochsOutcome {
    pub fn saw(&self, i: usize) -> bool {
        self.times.get(i).map(|t| t.is_some()).unwrap_or(false)
    }
}

/// The bochsrc for booting `iso` with COM1 into `com1`.
pub fn bochsrc(iso: &Path, com1: &Path, log: &Path, megs: u32) -> String {
    format!(
        "megs: {megs}\n\
         cpu: model=corei7_haswell_4770, count=1, ips=200000000, reset_on_triple_fault=0\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         display_library: rfb, options=\"timeout=0\"\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={}\n\
         log: {}\n\
         clock: sync=none, time0=local\n\
         speaker: enabled=0\n\
         sound: driver=dummy\n\
         port_e9_hack: enabled=1\n",
        iso.display(),
        com1.display(),
        log.display()
    )
}

/// Boot `iso` under Bochs and watch COM1.
pub fn run(iso: &Path, name: &str, expect: &[&str], fail: &[&str], deadline: Duration) -> Result<BochsOutcome, String> {
    run_watch(iso, name, expect, fail, deadline, None)
}

/// `run`, and with `stall` also end the run (as failed) when COM1 stays silent that long: a node
/// that stopped (no more log lines, not even its timer) shows it in minutes, not at the deadline.
pub fn run_watch(iso: &Path, name: &str, expect: &[&str], fail: &[&str], deadline: Duration, stall: Option<Duration>) -> Result<BochsOutcome, String> {
    let bochs = require("bochs", "bochs bochsbios vgabios")?;
    require_file("/usr/share/bochs/BIOS-bochs-latest", "bochsbios")?;
    require_file("/usr/share/bochs/VGABIOS-lgpl-latest", "vgabios")?;
    let dir = out_dir().join("bochs");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let com1 = dir.join(format!("{name}.com1"));
    let log = dir.join(format!("{name}.bochs.log"));
    let rc = dir.join(format!("{name}.bochsrc"));
    let dbg = dir.join("dbg.rc");
    let _ = std::fs::remove_file(&com1);
    std::fs::write(&rc, bochsrc(iso, &com1, &log, 512)).map_err(|e| e.to_string())?;
    std::fs::write(&dbg, "c\nq\n").map_err(|e| e.to_string())?;
    let out = std::fs::File::create(dir.join(format!("{name}.stdout"))).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut child = Command::new(bochs)
        .current_dir(&dir)
        .arg("-q")
        .arg("-f")
        .arg(&rc)
        .arg("-rc")
        .arg(&dbg)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("cannot start bochs: {e}"))?;
    let mut times: Vec<Option<Duration>> = vec![None; expect.len()];
    let mut failed_on = None;
    let mut exited = false;
    let mut lines: Vec<String>;
    let (mut last_len, mut last_change) = (0usize, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let done = match child.try_wait() {
            Ok(Some(_)) => {
                exited = true;
                true
            }
            _ => false,
        };
        let text = std::fs::read(&com1).unwrap_or_default();
        lines = String::from_utf8_lossy(&text).lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
        if text.len() != last_len {
            (last_len, last_change) = (text.len(), Instant::now());
        } else if let Some(s) = stall.filter(|s| last_change.elapsed() > *s) {
            failed_on.get_or_insert(format!("(no serial output for {} s)", s.as_secs()));
        }
        for l in &lines {
            for (i, p) in expect.iter().enumerate() {
                if times[i].is_none() && l.contains(p) {
                    times[i] = Some(start.elapsed());
                }
            }
            if failed_on.is_none() && fail.iter().any(|f| l.contains(f)) {
                failed_on = Some(l.clone());
            }
        }
        let all = !expect.is_empty() && times.iter().all(|t| t.is_some());
        if done || all || failed_on.is_some() || start.elapsed() > deadline {
            break;
        }
    }
    if !exited {
        // Give the kernel a moment to end Bochs itself, then stop it.
        for _ in 0..20 {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    Ok(BochsOutcome { lines, times, failed_on, elapsed: start.elapsed(), exited, log: com1 })
}

/// The Bochs (VT-x) tests: boot the node from the GRUB ISO and check that it sees VMX with EPT;
/// then run the in-kernel suite, whose microVM tests (hostile guests) go through the VT-x backend.
pub fn tests(t: &mut Tally, kernel: &Path, test_kernel: &Path, modules: &[(PathBuf, String)], ktest_args: &str) -> Result<(), String> {
    println!("== Bochs (Intel VT-x) tests");
    if require("bochs", "bochs").is_err() {
        t.record("bochs_boot_vmx_cpu", false, "(bochs not installed: apt-get install bochs bochsbios vgabios)");
        return Ok(());
    }
    // Each Bochs run takes minutes: `--only bochs_NAME` runs only that one (`--only bochs` all).
    let sel = crate::test::selected;
    if sel("bochs_boot_vmx_cpu") {
        boot_vmx_cpu(t, kernel)?;
    }
    if sel("bochs_vmx_guest_runs") || sel("bochs::") {
        vmx_guest_runs(t, test_kernel, modules, ktest_args)?;
    }
    if sel("bochs_pcid") {
        pcid(t, test_kernel, modules, ktest_args)?;
    }
    let bundle = crate::tools::out_dir().join("guest-bundle.cpio");
    if sel("bochs_linux_guest_boots") {
        linux_guest_boots(t, kernel, &bundle)?;
    }
    if sel("bochs_two_vcpus") {
        two_vcpus(t, kernel, &bundle)?;
    }
    Ok(())
}

/// The node boots under Bochs and sees VMX with EPT. Booted with `pcid=off`, it keeps PCIDs
/// off although the CPU has them (the other Bochs runs have them on).
fn boot_vmx_cpu(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let iso = build_iso(kernel, &[], "vm=none pcid=off", "catenary-bochs")?;
    let expect = ["VMX true (EPT true)", "PCID off (CPUID true)"];
    let fail = ["KERNEL PANIC", "- stopping this CPU"];
    let o = run(&iso, "vmx", &expect, &fail, Duration::from_secs(300))?;
    let why = |what: &str| {
        format!(
            "({what}; {:.1}s, {} serial lines, bochs {}{}; serial log {})",
            o.elapsed.as_secs_f64(),
            o.lines.len(),
            if o.exited { "exited" } else { "stopped" },
            o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
            o.log.display()
        )
    };
    t.record("bochs_boot_vmx_cpu", o.saw(0) && o.saw(1), &why(if o.saw(0) { "no `PCID off (CPUID true)` line with pcid=off" } else { "no `VMX true (EPT true)` line" }));
    Ok(())
}

/// What the in-kernel suite printed in one Bochs run.
struct KtestLines {
    /// Names of the tests that printed `ok`, and of those that printed anything else (not skipped).
    passed: Vec<String>,
    failed: Vec<String>,
    skipped: usize,
    /// The suite's closing `ktest: N passed, ...` line, if it got that far.
    summary: Option<String>,
}

impl KtestLines {
    fn passed_with(&self, prefix: &str) -> usize {
        self.passed.iter().filter(|n| n.starts_with(prefix)).count()
    }
    fn failed_with(&self, prefix: &str) -> usize {
        self.failed.iter().filter(|n| n.starts_with(prefix)).count()
    }
}

/// Records each in-kernel result line (`ktest NAME ... ok`, `... SKIPPED: why`, or a failure)
/// as the test `{group}::NAME`, and finds the suite's summary.
fn record_ktests(t: &mut Tally, group: &str, lines: &[String]) -> KtestLines {
    let mut k = KtestLines { passed: Vec::new(), failed: Vec::new(), skipped: 0, summary: None };
    for l in lines {
        if let Some((tn, res)) = l.strip_prefix("ktest ").and_then(|r| r.split_once(" ... ")) {
            if let Some(why) = res.strip_prefix("SKIPPED: ") {
                k.skipped += 1;
                t.skip(&format!("{group}::{tn}"), why);
                continue;
            }
            let ok = res == "ok";
            t.record(&format!("{group}::{tn}"), ok, res);
            if ok { k.passed.push(tn.to_string()) } else { k.failed.push(tn.to_string()) }
        }
    }
    k.summary = lines.iter().find(|l| l.starts_with("ktest: ") && l.contains(" passed, ")).cloned();
    k
}

/// The in-kernel suite's `vm_*` tests on the VMX backend.
fn vmx_guest_runs(t: &mut Tally, test_kernel: &Path, modules: &[(PathBuf, String)], ktest_args: &str) -> Result<(), String> {
    // The in-kernel suite on the VT-x backend: the microVM tests run their guests through VMX.
    // Bochs runs one CPU.
    let ktest_args = format!("{} ktest.only=vm_", ktest_args.replace("ktest.cpus=2", "ktest.cpus=1"));
    let iso = build_iso(test_kernel, modules, &ktest_args, "catenary-bochs-test")?;
    let o = run(&iso, "ktest", &[" passed, "], &["KERNEL PANIC", "- stopping this CPU"], Duration::from_secs(300))?;
    let k = record_ktests(t, "bochs", &o.lines);
    let (vm_ok, vm_failed) = (k.passed_with("vm_"), k.failed_with("vm_"));
    for l in o.lines.iter().filter(|l| l.contains("vmx") || l.contains("[vm:") || l.contains("vmm")).take(60) {
        println!("    {l}");
    }
    let backend_vmx = o.lines.iter().any(|l| l.contains("backend vmx"));
    // The suite must have run to its end: the `ktest: N passed, 0 failed` summary, no panic or
    // stopped CPU on the way.
    let summary = k.summary;
    let clean_summary = summary.as_deref().map(|l| l.contains(" 0 failed")).unwrap_or(false);
    let why = format!(
        "({vm_ok} vm_* tests ok, {vm_failed} failed, VMX backend used: {backend_vmx}, summary {:?}{}; {:.1}s; serial log {})",
        summary.as_deref().unwrap_or("missing"),
        o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
        o.elapsed.as_secs_f64(),
        o.log.display()
    );
    t.record("bochs_vmx_guest_runs", backend_vmx && vm_ok > 0 && vm_failed == 0 && clean_summary && o.failed_on.is_none(), &why);
    Ok(())
}

/// PCIDs (issue 14 item 3): QEMU TCG offers none, Bochs's Haswell does. The in-kernel PCID
/// tests (a page moved while its space was away is read anew; a PCID given to another space
/// brings nothing along; a space's translations are kept across switches, and flushed after
/// an unmap) and the ring-3 scheduler and IPC tests (direct switches between spaces, FPU
/// state, preemption) run with PCIDs on. The node must say `PCID on`.
fn pcid(t: &mut Tally, test_kernel: &Path, modules: &[(PathBuf, String)], ktest_args: &str) -> Result<(), String> {
    const SELECTED: &str = "pcid_,sched_user_,ipc_fastpath";
    let ktest_args = format!("{} ktest.only={SELECTED}", ktest_args.replace("ktest.cpus=2", "ktest.cpus=1"));
    let iso = build_iso(test_kernel, modules, &ktest_args, "catenary-bochs-pcid")?;
    let o = run(&iso, "pcid", &[" passed, "], &["KERNEL PANIC", "- stopping this CPU"], Duration::from_secs(900))?;
    let k = record_ktests(t, "bochs_pcid", &o.lines);
    let (ok, failed, skipped, pcid_ok) = (k.passed.len(), k.failed.len(), k.skipped, k.passed_with("pcid_"));
    for l in o.lines.iter().filter(|l| l.contains("PCID") || l.contains("ktest pcid")).take(12) {
        println!("    {l}");
    }
    let on = o.lines.iter().any(|l| l.contains("PCID on"));
    let summary = k.summary;
    let why = format!(
        "(PCID on: {on}; {ok} ok, {failed} failed, {skipped} skipped, {pcid_ok} of 3 PCID tests ok; summary {:?}{}; {:.1}s; serial log {})",
        summary.as_deref().unwrap_or("missing"),
        o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
        o.elapsed.as_secs_f64(),
        o.log.display()
    );
    t.record("bochs_pcid", on && pcid_ok == 3 && failed == 0 && skipped == 0 && summary.is_some() && o.failed_on.is_none(), &why);
    Ok(())
}

/// The Linux guest under VMX must boot to its init (`catenary-init: ready`, read by the node
/// from the guest's console) and power off cleanly (the node reports the power-off).
fn linux_guest_boots(t: &mut Tally, kernel: &Path, bundle: &Path) -> Result<(), String> {
    if !bundle.exists() {
        t.record("bochs_linux_guest_boots", false, "(no guest bundle: run `cargo xtask guest`)");
        return Ok(());
    }
    // PVH (vmlinux) and the Linux 64-bit boot protocol (bzImage), both under VT-x.
    for (name, boot) in [("bochs_linux_guest_boots", "pvh"), ("bochs_linux_guest_boots_bzimage", "bzimage")] {
        let iso = build_iso(kernel, &[(bundle.to_path_buf(), "guest-bundle".into())], &format!("vm.boot={boot} vm.mem=128"), &format!("catenary-bochs-linux-{boot}"))?;
        let expect = ["Linux version", "[vm:demo] catenary-init: ready", "microVM demo ended: power off"];
        let o = run(&iso, &format!("linux-{boot}"), &expect, &["KERNEL PANIC", "- stopping this CPU", "failed:"], Duration::from_secs(900))?;
        for l in o.lines.iter().filter(|l| l.contains("vmm") || l.contains("vmx")).take(20) {
            println!("    {l}");
        }
        let seen: Vec<String> = expect.iter().zip(&o.times).map(|(p, t)| format!("`{p}` {}", t.map(|d| format!("at {:.0}s", d.as_secs_f64())).unwrap_or("missing".into()))).collect();
        println!("    Linux ({boot}) under VMX in Bochs: {}", seen.join(", "));
        let why = format!("({}; serial log {})", seen.join(", "), o.log.display());
        let all = (0..expect.len()).all(|i| o.saw(i));
        t.record(name, all && o.failed_on.is_none(), &why);
    }
    Ok(())
}

/// `bochs_two_vcpus`: Linux in a 2-vCPU microVM under VT-x. vCPU 1 starts in real mode at its
/// Startup IPI vector (unrestricted guest); the guest must list CPUs `0-1` online, reach its
/// init, finish two busy processes with their known sums and power off. Bochs emulates one host
/// CPU (`count=1`), so the two vCPU tasks time-share it: this checks the AP start and the
/// 2-vCPU device model under VMX, not parallel speed-up (`bench vcpus` on SVM does that).
fn two_vcpus(t: &mut Tally, kernel: &Path, bundle: &Path) -> Result<(), String> {
    let name = "bochs_two_vcpus";
    if !bundle.exists() {
        t.record(name, false, "(no guest bundle: run `cargo xtask guest`)");
        return Ok(());
    }
    const ROUNDS: u64 = 100_000;
    let cmd = crate::vmbench::parallel_busy_cmd(ROUNDS);
    let iso = build_iso(kernel, &[(bundle.to_path_buf(), "guest-bundle".into())], &format!("vm.boot=pvh vm.mem=128 vm.apic=1 vm.vcpus=2 vm.cmd={cmd}"), "catenary-bochs-two-vcpus")?;
    let sum = format!("[vm:demo] busy-sum {}", crate::vmbench::busy_sum(ROUNDS));
    let expect = ["Linux version", "[vm:demo] vcpu-online [0-1]", "[vm:demo] catenary-init: ready", "[vm:demo] busy-start", sum.as_str(), "[vm:demo] busy-done", "microVM demo ended: power off"];
    // One CPU online (the AP never started) or any failure ends the run at once.
    let fail = ["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "microVM demo ended: triple", "microVM demo ended: guest fault", "[vm:demo] vcpu-online [0]", "failed:"];
    // A node that stops (as it did when Bochs left host interrupts masked under a guest
    // spinning with IF=0: docs/vmm.md "Multi-vCPU microVMs") fails after 4 silent minutes.
    let o = run_watch(&iso, "two-vcpus", &expect, &fail, Duration::from_secs(1200), Some(Duration::from_secs(240)))?;
    for l in o.lines.iter().filter(|l| l.contains("vmm") || l.contains("vmx") || l.contains("vCPU")).take(20) {
        println!("    {l}");
    }
    // The busy sum appears twice (one line per process): count them.
    let sums = o.lines.iter().filter(|l| l.contains(&sum)).count();
    let seen: Vec<String> = expect.iter().zip(&o.times).map(|(p, t)| format!("`{p}` {}", t.map(|d| format!("at {:.0}s", d.as_secs_f64())).unwrap_or("missing".into()))).collect();
    println!("    Linux with 2 vCPUs under VMX in Bochs: {}; busy sums {sums}", seen.join(", "));
    let ok = (0..expect.len()).all(|i| o.saw(i)) && sums == 2 && o.failed_on.is_none();
    let why = format!("({}; busy sums {sums}/2{}; serial log {})", seen.join(", "),
        o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(), o.log.display());
    t.record(name, ok, &why);
    Ok(())
}
