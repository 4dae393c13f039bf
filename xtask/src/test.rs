//! `cargo xtask test`: host unit tests, the in-kernel test suite on every boot path, and the
//! fault-dump boots. Prints one line per test and ends with `N passed, N failed`.

use crate::build::{build_iso, build_kernel};
use crate::qemu::{run_captured, Boot};
use crate::tools::{out_dir, root};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The run's results. A test that could not run (no root, a missing tool) is `skip`ped: counted
/// apart, never as a pass. Under `CI=true` a skip is also a failure of the run (CI installs
/// everything the tests need, so nothing may be skipped there).
#[derive(Default)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub failures: Vec<String>,
    pub skips: Vec<String>,
    /// Wall time from the previous result (or the run's start) to each result, in order: the
    /// time a group's build or boot took goes to its first result. `time_report` sums it.
    steps: Vec<(String, Duration)>,
    last: Option<Instant>,
}

impl Tally {
    /// Start the clock now (otherwise the first result starts it, and its own time is lost).
    pub fn start_clock(&mut self) {
        self.last = Some(Instant::now());
    }

    /// Charge the time since the previous step to `name` (also done by every result).
    pub fn clock(&mut self, name: &str) {
        let now = Instant::now();
        let took = self.last.map(|l| now - l).unwrap_or_default();
        self.last = Some(now);
        self.steps.push((name.to_string(), took));
    }

    /// Where the run's time went: per group (a test name's part before `::`, e.g. a boot path
    /// or `fuzz`), the groups of 30 s or more, longest first. Figures only, never pass/fail.
    pub fn time_report(&self) -> String {
        let mut groups: Vec<(String, Duration, usize)> = Vec::new();
        for (name, took) in &self.steps {
            let group = name.split("::").next().unwrap_or(name);
            match groups.iter_mut().find(|g| g.0 == group) {
                Some(g) => {
                    g.1 += *took;
                    g.2 += 1;
                }
                None => groups.push((group.to_string(), *took, 1)),
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.1));
        let all: Duration = self.steps.iter().map(|s| s.1).sum();
        let long: Vec<_> = groups.iter().filter(|g| g.1 >= Duration::from_secs(30)).collect();
        let mut out = format!("time: {:.0} s from the first step to the last result; groups of 30 s or more: {}", all.as_secs_f64(), if long.is_empty() { "none" } else { "" });
        for (g, d, n) in long {
            out.push_str(&format!("\n  {:>6.0} s  {g} ({n} result{})", d.as_secs_f64(), if *n == 1 { "" } else { "s" }));
        }
        out
    }

    pub fn record(&mut self, name: &str, ok: bool, why: &str) {
        self.clock(name);
        if ok {
            self.passed += 1;
            println!("test {name} ... ok");
        } else {
            self.failed += 1;
            println!("test {name} ... FAILED {why}");
            self.failures.push(name.to_string());
        }
    }

    /// The test could not run here; `why` says what is missing.
    pub fn skip(&mut self, name: &str, why: &str) {
        self.clock(name);
        self.skipped += 1;
        println!("test {name} ... SKIPPED ({why})");
        self.skips.push(name.to_string());
    }

    /// The closing line every test run ends with.
    pub fn summary(&self) -> String {
        format!("{} passed, {} failed, {} skipped", self.passed, self.failed, self.skipped)
    }
}

/// `--only SUBSTRING` (repeatable): run only the test groups whose names contain one of the
/// substrings; `None` runs everything. Groups are coarse (a QEMU boot runs a whole suite), so
/// a filter selects which boots and which host crates run, not single in-kernel tests.
pub fn only_filter(args: &[String]) -> Option<Vec<String>> {
    let mut v = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--only" {
            if let Some(x) = it.next() {
                v.push(x.clone());
            }
        } else if let Some(x) = a.strip_prefix("--only=") {
            v.push(x.to_string());
        }
    }
    if v.is_empty() { None } else { Some(v) }
}

/// Whether the test or group `name` is selected by the `--only` filter of this process's
/// arguments: its name contains a filter, or a filter names something inside it (a filter
/// `vm_linux_hostile` selects the group `vm_linux`, which then selects only that test).
pub fn selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match only_filter(&args) {
        None => true,
        Some(v) => v.iter().any(|s| name.contains(s.as_str()) || s.starts_with(name)),
    }
}

/// FNV-1a, as the kernel computes it for boot modules.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A deterministic 96 KiB boot module for the boot tests.
fn test_module() -> Result<(PathBuf, u64), String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..96 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = out_dir().join("ktest-module.bin");
    std::fs::write(&p, &data).map_err(|e| e.to_string())?;
    Ok((p, fnv1a(&data)))
}

pub fn cmd_test(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let only_kernel = args.iter().any(|a| a == "--kernel-only");
    let mut t = Tally::default();
    t.start_clock();
    if !only_kernel && selected("host::") {
        host_tests(&mut t);
    }
    if !quick && !only_kernel && selected("fuzz::") {
        // Every cargo-fuzz target for a few seconds with a fixed seed: the fuzz entry points
        // build and survive a short run (longer runs: `cargo xtask fuzz --seconds N`).
        let targets = crate::fuzz::all_targets();
        println!("== fuzz smoke ({} targets, {}s each, two at a time)", targets.len(), crate::fuzz::SMOKE_SECONDS);
        crate::fuzz::run_targets(&mut t, &targets, crate::fuzz::SMOKE_SECONDS, "fuzz::");
    }
    let net = !quick || args.iter().any(|a| a == "--net");
    if (!quick && (selected("vm_linux") || selected("vm_two_vcpus") || selected("bochs") || selected("soak"))) || (net && crate::cluster::any_selected()) {
        // The guest images (cached by config hash; ~10 min the first time on a new machine)
        // are needed by the Linux microVM tests under SVM and under VT-x (Bochs), the soak and
        // the microVM networking tests.
        println!("== guest images (cargo xtask guest)");
        if let Err(e) = crate::build::guest_bundle() {
            t.record("guest_images_build", false, &e);
        }
    }
    kernel_tests(&mut t, quick)?;
    if !quick && selected("vm_linux") {
        crate::vmbench::linux_guest_tests(&mut t)?;
    }
    if !quick && selected("vm_two_vcpus") {
        crate::vmbench::two_vcpus_test(&mut t)?;
    }
    if !quick && selected("soak_vm") {
        crate::soak::short_test(&mut t);
    }
    if net && crate::cluster::any_selected() {
        crate::cluster::tests(&mut t)?;
    }
    println!();
    if !t.failures.is_empty() {
        println!("failed: {}", t.failures.join(", "));
    }
    if !t.skips.is_empty() {
        println!("skipped: {}", t.skips.join(", "));
    }
    let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
    println!("{}", t.time_report());
    println!("{}", t.summary());
    if t.failed > 0 {
        Err(format!("{} test(s) failed", t.failed))
    } else if ci && t.skipped > 0 {
        Err(format!("{} test(s) skipped under CI=true: CI must install what every test needs", t.skipped))
    } else {
        Ok(())
    }
}

/// `cargo test` over the host crates (the workspace's default members).
fn host_tests(t: &mut Tally) {
    println!("== host unit tests (cargo test)");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        // Default members only: `--workspace` would pull in the kernel binary, whose `kernel`
        // feature on catenary-arch must never reach host builds.
        // `--show-output` so that a test which could not run and printed `SKIP: …` is seen.
        .args(["test", "--no-fail-fast", "--", "--show-output"])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            t.record("host::cargo-test", false, &e.to_string());
            return;
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let log = out_dir().join("host-tests.log");
    let _ = std::fs::write(&log, &text);
    // `#[ignore]`d tests did not run: they count as skipped.
    let (mut p, mut f, mut ig) = (0, 0, 0);
    let mut suite = String::new();
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("Running ") {
            suite = rest.split_whitespace().next().unwrap_or("").to_string();
        }
        if let Some(r) = line.strip_prefix("test ") {
            if let Some((name, res)) = r.rsplit_once(" ... ") {
                if res.starts_with("FAILED") {
                    println!("test host::{suite}::{name} ... FAILED");
                    t.failures.push(format!("host::{name}"));
                }
            }
        }
        if let Some(r) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> usize {
                r.split(';')
                    .find_map(|part| part.trim().strip_suffix(key).map(|n| n.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").parse().unwrap_or(0)))
                    .unwrap_or(0)
            };
            p += num("passed");
            f += num("failed");
            ig += num("ignored");
        }
    }
    // A host test that cannot run here (no root, a missing tool) returns early after printing
    // `SKIP: <what>: <why>` on stdout: it is counted as skipped, not passed.
    let mut skips: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("---- ").and_then(|r| r.strip_suffix(" stdout ----")) {
            current = n.to_string();
        } else if let Some(why) = line.trim().strip_prefix("SKIP:") {
            if !skips.iter().any(|(n, _)| *n == current) {
                skips.push((current.clone(), why.trim().to_string()));
            }
        }
    }
    let s = skips.len().min(p);
    println!("host: {} passed, {f} failed, {} skipped (log: {})", p - s, s + ig, log.display());
    // (Counted, not recorded one by one: the clock gets the whole run.)
    t.clock("host::cargo-test");
    t.passed += p - s;
    t.failed += f;
    for (name, why) in skips.iter().take(s) {
        t.skip(&format!("host::{name}"), why);
    }
    if ig > 0 {
        t.skip(&format!("host::{ig}-ignored-tests"), "#[ignore]d tests did not run");
        t.skipped += ig - 1;
    }
    if !out.status.success() && f == 0 {
        t.record("host::cargo-test-build", false, &format!("cargo test failed to build; see {}", log.display()));
    }
}

fn kernel_tests(t: &mut Tally, quick: bool) -> Result<(), String> {
    println!("== in-kernel tests on every boot path");
    let kernel = build_kernel(true)?;
    let plain = build_kernel(false)?;
    let (module, fnv) = test_module()?;
    // `--ktest-only PREFIX`: only the in-kernel tests whose names start with PREFIX (debugging).
    let only = crate::sysfuzz::opt("--ktest-only").map(|p| format!(" ktest.only={p}")).unwrap_or_default();
    // `--ktest-repeat N`: the selected in-kernel tests N times over in one boot (an intermittent
    // failure); each boot path's time limit grows N-fold.
    let repeat: u64 = crate::sysfuzz::opt("--ktest-repeat").and_then(|n| n.parse().ok()).unwrap_or(1).clamp(1, 10_000);
    let only = if repeat > 1 { format!("{only} ktest.repeat={repeat}") } else { only };
    let args = |proto: &str| format!("ktest.protocol={proto} ktest.module_fnv={fnv:016x} ktest.marker=cmdline-ok ktest.cpus=4{only}");

    let mut boots: Vec<(String, Boot, u64)> = Vec::new();
    for m in ["microvm", "q35", "pc"] {
        let mut b = Boot::pvh(m, kernel.clone());
        b.smp = 4;
        b.mem = "512M".into();
        b.cmdline = args("pvh");
        b.initrd = Some(module.clone());
        boots.push((format!("boot_pvh_{m}"), b, 120));
    }
    if !quick {
        let iso = build_iso(&kernel, &[(module.clone(), "ktest-module".into())], &args("multiboot2"), "catenary-test")?;
        let mut bios = Boot::iso(iso.clone(), false);
        bios.smp = 4;
        bios.mem = "512M".into();
        boots.push(("boot_grub_iso_seabios".into(), bios.clone(), 120));
        let mut uefi = bios;
        uefi.uefi = true;
        boots.push(("boot_grub_iso_ovmf".into(), uefi, 240));
        if crate::pxe::TESTS.iter().any(|n| selected(n)) {
            match crate::pxe::test_boots(&kernel, &[(module.clone(), "ktest-module".into())], &args("multiboot2")) {
                Ok(pxe) => boots.extend(pxe),
                Err(e) => crate::pxe::TESTS.iter().filter(|n| selected(n)).for_each(|n| t.skip(n, &e)),
            }
        }
    }
    for (name, b, secs) in boots.into_iter().filter(|(n, _, _)| selected(n)) {
        let c = b.command(false)?;
        let o = run_captured(c, &[" passed, "], &["KERNEL PANIC", "- stopping this CPU"], Duration::from_secs(secs * repeat), repeat > 1)?;
        let (mut kp, mut kf) = (0, 0);
        for l in &o.lines {
            if let Some(r) = l.strip_prefix("ktest ") {
                if let Some((tn, res)) = r.split_once(" ... ") {
                    if let Some(why) = res.strip_prefix("SKIPPED: ") {
                        t.skip(&format!("{name}::{tn}"), why);
                        continue;
                    }
                    let ok = res == "ok";
                    t.record(&format!("{name}::{tn}"), ok, res);
                    if ok { kp += 1 } else { kf += 1 }
                }
            }
        }
        let summary = o.lines.iter().find(|l| l.starts_with("ktest: ") && l.contains("passed"));
        let ok = o.matched && kf == 0 && kp > 0 && summary.is_some() && o.exit_code.map(|c| c == 1).unwrap_or(true);
        // (kept either way: some tests print figures)
        let log = out_dir().join(format!("{name}.log"));
        let _ = std::fs::write(&log, o.lines.join("\n"));
        let why = if ok {
            String::new()
        } else {
            format!(
                "(no clean summary after {:.1}s, exit {:?}{}; serial log {})",
                o.elapsed.as_secs_f64(),
                o.exit_code,
                o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
                log.display()
            )
        };
        t.record(&name, ok, &why);
    }

    // An unhandled exception prints the full register dump and stops the CPU. `df`: a double
    // fault (the exception stack exhausted) while the console lock is held: the dump comes
    // from #DF's own IST stack without taking any lock.
    // `crash=` is a probe: only the probes kernel has it (built once, if a fault_dump test runs)
    let mut probes: Option<std::path::PathBuf> = None;
    for (kind, vector) in [("ud", "CPU EXCEPTION 6 (#UD"), ("pf", "CPU EXCEPTION 14 (#PF"), ("df", "CPU EXCEPTION 8 (#DF")] {
        if !selected(&format!("fault_dump_{kind}")) {
            continue;
        }
        if probes.is_none() {
            probes = Some(crate::build::build_kernel_probes()?);
        }
        let mut b = Boot::pvh("microvm", probes.clone().unwrap_or_default());
        b.smp = 1;
        b.mem = "256M".into();
        b.cmdline = format!("crash={kind}");
        let want = [vector, "RIP 0x", "RAX 0x", "R15 0x", "CR0 0x", "CR2 0x", "CR3 0x", "CR4 0x", "RFLAGS", "stopping this CPU"];
        let o = run_captured(b.command(false)?, &want, &["KERNEL PANIC"], Duration::from_secs(40), false)?;
        t.record(&format!("fault_dump_{kind}"), o.matched, "(register dump incomplete)");
    }
    // The ring-3 syscall fuzzer (a fixed time; under --quick only when --only selects it).
    if selected("syscall_fuzz") && (!quick || only_filter(&std::env::args().collect::<Vec<_>>()).is_some()) {
        crate::sysfuzz::test(t, &kernel)?;
    }
    // Eight microVMs on a 2-CPU node (one boot; under --quick only when --only selects it).
    if crate::smpvm::TESTS.iter().any(|n| selected(n)) && (!quick || only_filter(&std::env::args().collect::<Vec<_>>()).is_some()) {
        crate::smpvm::test(t, &kernel)?;
    }
    // The workload service with Linux microVMs (one boot; under --quick only when --only selects it).
    if crate::workloadtest::TESTS.iter().any(|n| selected(n)) && (!quick || only_filter(&std::env::args().collect::<Vec<_>>()).is_some()) {
        crate::workloadtest::test(t, &kernel)?;
    }
    // Intel VT-x under Bochs (slow: skipped by --quick unless --bochs is given).
    if (!quick || std::env::args().any(|a| a == "--bochs")) && selected("bochs") {
        crate::bochs::tests(t, &plain, &kernel, &[(module.clone(), "ktest-module".into())], &args("multiboot2"))?;
    }
    Ok(())
}
