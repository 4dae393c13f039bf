//! microVM tests and the `bench vm` benchmark: a Linux guest booted by Catenary's hypervisor
//! (SVM under QEMU TCG `-cpu max`) versus the same kernel + initramfs booted directly by QEMU.

use crate::bench::median;
use crate::qemu::{run_captured, Boot};
use crate::test::Tally;
use std::process::Command;
use std::time::Duration;

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn node_with_guest(kernel: &std::path::Path, bundle: &std::path::Path, cmdline: &str) -> Boot {
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.smp = 2;
    b.mem = "1G".into();
    b.initrd = Some(bundle.to_path_buf());
    b.cmdline = cmdline.into();
    b
}

/// The Linux guest boots under the SVM backend via PVH and via the bzImage boot protocol,
/// runs its command and powers off; the node reports the clean exit.
pub fn linux_guest_tests(t: &mut Tally) -> Result<(), String> {
    println!("== Linux microVM under Catenary (SVM, QEMU TCG -cpu max)");
    let bundle = crate::tools::out_dir().join("guest-bundle.cpio");
    if !bundle.exists() {
        t.record("vm_linux_svm", false, "(no guest bundle: the guest image build failed above)");
        return Ok(());
    }
    let kernel = crate::build::build_kernel(false)?;
    // The command also exercises virtio end to end: a line written to the virtio console
    // (/dev/hvc0) and the first line of a read-only virtio-blk disk (/dev/vda); and it shows
    // what /init set up before `ready` (guest-images/README.md): its mounts (from /etc/fstab),
    // the hostname and the console log level.
    let cmd = base64(b"echo catenary-test-marker $((6*7)); echo catenary-virtio-console-ok > /dev/hvc0; head -n1 /dev/vda; uname -r; \
        echo catenary-mounts: $(awk '{print $2 \"=\" $3}' /proc/mounts | sort | tr '\\n' ' '); \
        echo catenary-setup: $(hostname) loglevel $(cut -f1 /proc/sys/kernel/printk)");
    let cases: [(&str, &str, &[&str]); 3] = [
        ("vm_linux_svm_pvh", "vm.boot=pvh", &["microVM demo ended: power off"]),
        ("vm_linux_svm_bzimage", "vm.boot=bzimage", &["microVM demo ended: power off"]),
        ("vm_linux_svm_reboot", "vm.boot=pvh vm.exit=reboot", &["microVM demo ended: reboot requested"]),
    ];
    for (name, opts, end) in cases {
        if !crate::test::selected(name) {
            continue;
        }
        let b = node_with_guest(&kernel, &bundle, &format!("{opts} vm.disk=1 vm.cmd={cmd}"));
        let mut want = vec![
            "[vm:demo] [",
            "Linux version",
            // The PIC-only MP table (catenary_vmm::mptable): found where Linux looks first, the
            // guest stays on the 8259 (no APIC in CPUID), no `BIOS bug` (see the fail list).
            "found SMP MP-table at [mem 0x0009fc00-0x0009fc0f]",
            "MPTABLE: OEM ID: CATENARY",
            "APIC: Keep in PIC mode(8259)",
            "[vm:demo] catenary-init: ready",
            "[vm:demo] catenary-test-marker 42",
            "[vm:demo] catenary-virtio-console-ok",
            "[vm:demo] catenary-virtio-blk-marker",
            "[vm:demo] catenary-mounts: /=rootfs /dev/pts=devpts /dev/shm=tmpfs /dev=devtmpfs /proc=proc /run=tmpfs /sys=sysfs /tmp=tmpfs",
            "[vm:demo] catenary-setup: catenary-guest loglevel 1",
            "[vm:demo] catenary-init: exit status 0",
        ];
        want.extend_from_slice(end);
        let o = run_captured(b.command(false)?, &want, &["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "BIOS bug", "MPTABLE: bad", "MPTABLE: checksum", "MPTABLE: null", "MPTABLE: no processors"], Duration::from_secs(300), false)?;
        let why = if o.matched {
            String::new()
        } else {
            let log = crate::tools::out_dir().join(format!("{name}.log"));
            let _ = std::fs::write(&log, o.lines.join("\n"));
            let missing: Vec<&str> = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| *w).collect();
            format!("(missing {missing:?}{}; serial log {})", o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(), log.display())
        };
        t.record(name, o.matched, &why);
    }
    if crate::test::selected("vm_linux_apic") {
        apic_test(t, &kernel, &bundle)?;
    }
    if crate::test::selected("vm_linux_catenary_init") {
        crate::initimage::test(t, &kernel)?;
    }
    if crate::test::selected("vm_linux_workload_oom_killed") {
        crate::initimage::oom_test(t)?;
    }
    if crate::test::selected("vm_linux_workload_thrash_killed") {
        crate::initimage::thrash_test(t)?;
    }
    if crate::test::selected("vm_linux_workload_unhealthy") {
        crate::initimage::unhealthy_test(t)?;
    }
    if crate::test::selected("vm_linux_image_layers") {
        crate::layerimage::test(t, &kernel)?;
    }
    if crate::test::selected("vm_linux_hostile") {
        hostile_userland_test(t, &kernel, &bundle)?;
    }
    Ok(())
}

/// The Linux guest with `vm.apic=1` (local APIC, I/O APIC, MP table; one vCPU): it must boot
/// and show its local APIC timer and a virtio interrupt through the I/O APIC, level-triggered as
/// the MP table says (`fasteoi`), both with a non-zero count, and its timer on the TSC-deadline
/// timer, keeping time.
fn apic_test(t: &mut Tally, kernel: &std::path::Path, bundle: &std::path::Path) -> Result<(), String> {
    let name = "vm_linux_apic";
    // (The disk's reads give the virtio interrupts: the console's transmit raises none,
    // docs/vmm.md "Multi-vCPU microVMs".)
    // The clock event device: `lapic-deadline` when the guest took the TSC-deadline timer (so
    // no APIC timer calibration). The guest's uptime around thirty 0.01 s sleeps: no deadline
    // may fire late (a guest TSC that does not count from the node's boot, as the device model
    // assumes, puts every deadline out by the TSC at the node's boot: catenary_vmm::tsc; 0.08-0.12 s
    // each under QEMU, minutes on hardware). Many short sleeps, because the lateness is per
    // deadline while a loaded host slows each round's process start. (An early deadline is not
    // visible here: Linux re-arms it; the host tests cover that.)
    let cmd = base64(b"head -n1 /dev/vda; grep -E 'IO-APIC|Local timer' /proc/interrupts | sed 's/^/apic-irq /'; echo apic-cpus $(cat /sys/devices/system/cpu/online); echo apic-clockevent $(cat /sys/devices/system/clockevents/clockevent0/current_device); read a x </proc/uptime; for i in 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0; do sleep 0.01; done; read b x </proc/uptime; echo apic-sleep $a $b");
    let b = node_with_guest(kernel, bundle, &format!("vm.boot=pvh vm.apic=1 vm.disk=1 vm.cmd={cmd}"));
    let want = ["[vm:demo] catenary-init: ready", "apic-irq LOC:", "apic-cpus 0", "microVM demo ended: power off"];
    let o = run_captured(b.command(false)?, &want, &["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "microVM demo ended: triple", "microVM demo ended: guest fault"], Duration::from_secs(300), false)?;
    let log = crate::tools::out_dir().join(format!("{name}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    // `apic-irq  LOC:  123  Local timer interrupts`, `apic-irq  5:  45  IO-APIC  5-fasteoi  virtio0`
    let count = |l: &str| l.split("apic-irq").nth(1).and_then(|r| r.split_whitespace().nth(1)).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let loc = o.lines.iter().find(|l| l.contains("apic-irq LOC:")).map(|l| count(l)).unwrap_or(0);
    let virtio = o.lines.iter().filter(|l| l.contains("apic-irq") && l.contains("IO-APIC") && l.contains("fasteoi") && l.contains("virtio")).map(|l| count(l)).max().unwrap_or(0);
    let clockevent = o.lines.iter().find_map(|l| l.split("apic-clockevent ").nth(1)).map(|s| s.trim().to_string()).unwrap_or_default();
    let slept = o.lines.iter().find_map(|l| l.split("apic-sleep ").nth(1)).and_then(|r| {
        let v: Vec<f64> = r.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        (v.len() == 2).then(|| v[1] - v[0])
    });
    // (/proc/uptime has 10 ms steps. Thirty 0.01 s sleeps took 0.60 s at load 1, and 4.14 s
    // with every deadline late by the node's boot TSC.)
    let slept_ok = slept.is_some_and(|d| (0.3..2.0).contains(&d));
    let ok = o.matched && loc > 0 && virtio > 0 && clockevent == "lapic-deadline" && slept_ok;
    let why = if ok {
        println!("  {name}: clock event device {clockevent}, thirty 0.01 s sleeps took {:.2} s of guest uptime", slept.unwrap_or(0.0));
        String::new()
    } else {
        let missing: Vec<&str> = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| *w).collect();
        format!("(missing {missing:?}, local timer interrupts {loc}, level-triggered virtio interrupts {virtio}, clock event device `{clockevent}` (want lapic-deadline), thirty 0.01 s sleeps took {slept:?} s (want 0.3-2.0); serial log {})", log.display())
    };
    t.record(name, ok, &why);
    Ok(())
}

/// The sum of the primes below `n` (what the healthy guest's awk computes each round).
fn prime_sum_below(n: u64) -> u64 {
    (2..n).filter(|&k| (2..).take_while(|j| j * j <= k).all(|j| k % j != 0)).sum()
}

/// A root process in one Linux microVM attacks the hypervisor from guest userland
/// (guest-images/hostile/hostile.c: bogus virtio queue addresses through /dev/mem, a console
/// flood, pseudo-random port I/O, then an access where no device is) while a second, healthy
/// Linux microVM on the same node computes a known answer and a heartbeat task on the other CPU
/// keeps ticking. The attacker's VM must end with exactly the wild-MMIO fault at the address it
/// chose; the healthy VM must finish with the right answer and power off; the node must keep
/// running after both (a heartbeat that sees both VMs ended).
pub fn hostile_userland_test(t: &mut Tally, kernel: &std::path::Path, bundle: &std::path::Path) -> Result<(), String> {
    let name = "vm_linux_hostile_userland";
    // Guest-physical 0xc0000000: above the guest's RAM and below the virtio-mmio windows
    // (0xd0000000...), so no device is there.
    let wild = "0xc0000000";
    let hostile = base64(format!("H=/usr/libexec/catenary-hostile; $H virtio && $H flood 5 && $H ports 30000 && $H wild {wild}; echo hostile: still alive").as_bytes());
    let rounds = 40u64;
    let healthy = base64(format!(
        "i=1; total=0; while [ $i -le {rounds} ]; do s=$(awk 'BEGIN {{ s = 0; for (n = 2; n < 3000; n++) {{ p = 1; for (j = 2; j * j <= n; j++) if (n % j == 0) {{ p = 0; break }}; if (p) s += n }}; print s }}'); total=$((total + s)); echo healthy round $i; i=$((i + 1)); done; echo healthy: total $total"
    ).as_bytes());
    let expected_total = rounds * prime_sum_below(3000);
    // The attacker resets every virtio device, its console too: its console is the 16550.
    let b = node_with_guest(kernel, bundle, &format!("vm.cmd={hostile} vm.console=ttyS0 vm.disk=1 vm2.cmd={healthy} vm2.mem=128 heartbeat=500"));
    let hostile_end = format!("microVM demo ended: guest fault: MMIO to {wild} where no device is");
    let wild_line = format!("[vm:demo] hostile: wild access to {wild}");
    let healthy_total = format!("[vm:demo2] healthy: total {expected_total}");
    let want: Vec<&str> = vec![
        "[vm:demo] hostile: virtio done",
        "[vm:demo] hostile: flood done",
        "[vm:demo] hostile: ports done",
        &wild_line,
        &hostile_end,
        &healthy_total,
        "microVM demo2 ended: power off",
        "microVMs: 0 running, 2 ended",
    ];
    // Any other end of either VM stops the run at once (the expected end is a guest fault).
    let fail = [
        "KERNEL PANIC", "- stopping this CPU", "hostile: wild done", "hostile: still alive", "microVM demo2 failed", "microVM demo failed",
        "microVM demo ended: reboot", "microVM demo ended: power off", "microVM demo ended: triple", "microVM demo2 ended: reboot", "microVM demo2 ended: triple",
    ];
    let o = run_captured(b.command(false)?, &want, &fail, Duration::from_secs(600), false)?;
    let log = crate::tools::out_dir().join(format!("{name}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    let pos = |p: &str| o.lines.iter().position(|l| l.contains(p));
    // The healthy VM was alive (and the heartbeat ticking) while the attack ran.
    let (attack_start, attack_end) = (pos("[vm:demo] hostile: virtio done"), pos(&hostile_end));
    let during = |pat: &str| match (attack_start, attack_end) {
        (Some(a), Some(e)) if a < e => o.lines[a..e].iter().filter(|l| l.contains(pat)).count(),
        _ => 0,
    };
    let beats_both = during("microVMs: 2 running");
    let rounds_during = during("[vm:demo2] healthy round");
    let floods = o.lines.iter().filter(|l| l.contains("catenary-console-flood-")).count();
    let missing: Vec<&str> = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| *w).collect();
    println!("    attack: {beats_both} heartbeats with both VMs running, {rounds_during} healthy rounds, {floods} flood lines printed; {:.0}s", o.elapsed.as_secs_f64());
    let ok = o.matched && o.failed_on.is_none() && beats_both > 0;
    let why = format!(
        "(missing {missing:?}{}, {beats_both} heartbeats during the attack with both VMs running; serial log {})",
        o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
        log.display()
    );
    t.record(name, ok, &why);
    Ok(())
}

/// A guest command line without the words that name where this VMM put things (the virtio-mmio
/// windows) or what it measured (the TSC): what must be equal under Catenary and direct QEMU.
fn comparable_cmdline(c: &str) -> String {
    c.split_whitespace().filter(|w| !w.starts_with("virtio_mmio.device=") && !w.starts_with("tsc_early_khz=")).collect::<Vec<_>>().join(" ")
}

/// The demo guest's `/proc/cmdline` as it printed it (`catenary-demo: cmdline: ...`).
fn guest_cmdline(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| l.split("catenary-demo: cmdline: ").nth(1)).map(|c| c.trim().to_string())
}

/// Catenary's side of `bench vm`: one node boot; the demo guest ends by rebooting, as the
/// direct reference must (QEMU exits on a reset, not on a halt), so both guests get the same
/// command line. Returns ms to ready, the node log lines of interest and the guest's cmdline.
fn catenary_ready_ms(kernel: &std::path::Path, bundle: &std::path::Path) -> Result<(f64, Vec<String>, String, crate::bootphases::Side), String> {
    // (`vm.timeline=1`: the node logs the boot-phase data, crate::bootphases.)
    let b = node_with_guest(kernel, bundle, "vm.exit=reboot vm.timeline=1");
    let o = run_captured(b.command(false)?, &["after the microVM:", "exit profile: total"], &["KERNEL PANIC", "microVM demo failed"], Duration::from_secs(300), false)?;
    // The run's whole log (the guest's printk times show where its boot went), kept before
    // anything is parsed so that a failed run leaves its log.
    let log = crate::tools::out_dir().join("bench-vm-catenary.log");
    let _ = std::fs::write(&log, o.lines.join("\n"));
    let line = o.lines.iter().find(|l| l.contains("after the microVM:")).ok_or_else(|| format!("the microVM did not finish ({})", log.display()))?;
    let ms = line.rsplit("ready after ").next().and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| format!("no ready time in `{line}` ({})", log.display()))?;
    let details = o.lines.iter().filter(|l| l.contains("after the microVM") || l.contains("created in") || l.contains("ended:") || l.contains("exit profile:") || l.contains("cpuid exits by leaf:") || l.contains("vCPU loop time") || l.contains("vm timeline: demo:")).cloned().collect();
    let cmdline = guest_cmdline(&o.lines).ok_or("the guest printed no `catenary-demo: cmdline:` line")?;
    Ok((ms, details, cmdline, crate::bootphases::Side::catenary(&o.lines)))
}

/// The reference: the same vmlinux + initramfs under QEMU `-M microvm`, with Catenary's guest
/// command line (`--base`, catenary_vmm::LINUX_CMDLINE) on the machine a one-vCPU Catenary
/// microVM gives it (`--like-catenary`: 8259 + PIT, no local APIC, the CPUID Catenary's filter
/// leaves; docs/vmm.md "Like for like"). Returns ms to ready and the guest's cmdline.
fn direct_ready_ms(vmlinux: &std::path::Path, initrd: &std::path::Path) -> Result<(f64, String, crate::bootphases::Side), String> {
    let script = crate::tools::root().join("guest-images/run-direct.sh");
    let times = crate::tools::out_dir().join("bench-vm-direct.times");
    let out = Command::new("bash").env("RUN_DIRECT_LOG", crate::tools::out_dir().join("bench-vm-direct.log")).env("RUN_DIRECT_TIMES", &times).arg(script).arg("--quiet").arg("--like-catenary").args(["--base", catenary_vmm::LINUX_CMDLINE]).arg(vmlinux).arg(initrd).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = text.lines()
        .find_map(|l| l.strip_prefix("run-direct: ready_ms=").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .ok_or_else(|| format!("direct boot failed: {}", String::from_utf8_lossy(&out.stderr)))?;
    let cmdline = text.lines().find_map(|l| l.strip_prefix("run-direct: cmdline=")).unwrap_or("").trim().to_string();
    let side = crate::bootphases::Side::direct(&std::fs::read_to_string(&times).unwrap_or_default());
    Ok((ms, cmdline, side))
}

pub fn bench_vm() -> Result<(), String> {
    let bundle = crate::build::guest_bundle()?;
    let kernel = crate::build::build_kernel(false)?;
    let gdir = crate::tools::out_dir().join("guest");
    println!("bench vm: Linux guest, microVM creation -> `catenary-init: ready` (median of 5; load average before {})", crate::bench::loadavg());
    let mut cat = Vec::new();
    let mut direct = Vec::new();
    let mut details = Vec::new();
    let mut cmdlines = (String::new(), String::new());
    let (mut cat_sides, mut direct_sides) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (ms, d, c, cs) = catenary_ready_ms(&kernel, &bundle)?;
        cat.push(ms);
        details = d;
        cat_sides.push(cs);
        let (dms, dc, ds) = direct_ready_ms(&gdir.join("vmlinux"), &gdir.join("initramfs.cpio.gz"))?;
        direct.push(dms);
        direct_sides.push(ds);
        cmdlines = (c, dc);
    }
    // Same kernel, same initramfs, same command line (issue 14 item 2): only the words that
    // say where each VMM put its virtio-mmio windows and its TSC measurement may differ.
    println!("  guest command line under Catenary: {}", cmdlines.0);
    println!("  guest command line, direct QEMU:   {}", cmdlines.1);
    if comparable_cmdline(&cmdlines.0) != comparable_cmdline(&cmdlines.1) {
        return Err(format!("the guests' command lines differ: `{}` vs `{}`", cmdlines.0, cmdlines.1));
    }
    let (mc, md) = (median(cat.clone()), median(direct.clone()));
    println!("  under Catenary (SVM in QEMU TCG, PVH): median {mc:.0} ms   runs {cat:?}");
    println!("  direct QEMU TCG -M microvm (PVH, --like-catenary: no LAPIC, same CPUID): median {md:.0} ms   runs {direct:?}");
    println!("  ratio Catenary / direct: {:.2} (load average after {})", mc / md, crate::bench::loadavg());
    crate::benchtable::ratio("Linux guest to `catenary-init: ready`", "ms", mc, "direct QEMU -M microvm", md, crate::benchtable::Goal::AtMost(1.15));
    // Where the time goes, phase by phase (figures only; docs/vmm.md "Where the boot's time goes").
    println!("  boot phases, last run (ms on each side's clock; exits: Catenary's, by group):");
    if let (Some(c), Some(d)) = (cat_sides.last(), direct_sides.last()) {
        for l in crate::bootphases::table(c, d) {
            println!("    {l}");
        }
    }
    for l in crate::bootphases::median_table(&cat_sides, &direct_sides) {
        println!("    {l}");
    }
    println!("  last run, node log:");
    for d in &details {
        println!("    {d}");
    }
    // The last run's exits by reason (`exit profile: COUNT ROW` lines, docs/vmm.md).
    let profile: Vec<(u64, &str)> = details
        .iter()
        .filter_map(|l| l.split("exit profile: ").nth(1))
        .filter_map(|t| t.split_once(' ').and_then(|(n, row)| Some((n.parse().ok()?, row.trim()))))
        .collect();
    if profile.is_empty() {
        return Err("the node logged no exit profile".into());
    }
    let total: u64 = details.iter().find_map(|l| l.split("exit profile: total ").nth(1)).and_then(|n| n.trim().parse().ok()).ok_or("no exit total")?;
    let sum: u64 = profile.iter().map(|(n, _)| n).sum();
    println!("  exits per boot by reason (last run; {total} in all):");
    for (n, row) in &profile {
        println!("    {n:>8}  {:>5.1}%  {row}", 100.0 * *n as f64 / total.max(1) as f64);
        crate::benchtable::value(&format!("Linux guest boot exits: {row}"), "exits", *n as f64, crate::benchtable::Goal::None);
    }
    crate::benchtable::value("Linux guest boot exits: all", "exits", total as f64, crate::benchtable::Goal::None);
    if sum != total {
        return Err(format!("the exit profile's rows sum to {sum}, not the total {total}"));
    }
    Ok(())
}

/// The null exit round trip (`bench=exit` on the node, `hypervisor/kernel/src/exitbench.rs`):
/// TSC cycles per CPUID that exits to the VMM, against the same guest loop without the exit and
/// CPUID on the host (no exit), all measured in one node run.
pub fn bench_exit() -> Result<(), String> {
    // `bench=exit`: only in the probes kernel
    let kernel = crate::build::build_kernel_probes()?;
    let mut b = Boot::pvh("q35", kernel);
    b.smp = 2;
    b.mem = "512M".into();
    b.cmdline = "bench=exit".into();
    println!("bench exit: a guest loops on CPUID (each an exit) and on NOP (no exit), TSC cycles per iteration (QEMU TCG, -smp 2)");
    let o = run_captured(b.command(false)?, &["bench exit: done"], &["KERNEL PANIC", "bench exit: no", "bench exit: the guest"], Duration::from_secs(300), false)?;
    let mut found = false;
    for l in o.lines.iter().filter(|l| l.contains("bench exit:")) {
        let text = l.split("bench exit: ").nth(1).unwrap_or(l);
        println!("  {text}");
        let num = |key: &str| text.split(key).nth(1).and_then(|x| x.split_whitespace().next()).and_then(|x| x.parse::<f64>().ok());
        if let (Some(exit), Some(none), Some(host)) = (num("CPUID with exit "), num("same loop without exit "), num("host CPUID without exit ")) {
            use crate::benchtable::{ratio, Goal};
            ratio("Null exit round trip vs guest NOP", "cycles", exit, "same guest loop, NOP, no exit", none, Goal::None);
            ratio("Null exit round trip vs host CPUID", "cycles", exit, "CPUID on the host, no exit", host, Goal::None);
            found = true;
        }
        // Where one exit's time goes (the vCPU loop's own TSC accounting, per handled exit).
        if let (Some(run), Some(dm), Some(rest)) = (num("world switch + guest "), num("device model "), num("rest of the vCPU loop ")) {
            use crate::benchtable::{value, Goal};
            value("Null exit: world switch + guest (per exit)", "cycles", run, Goal::None);
            value("Null exit: device model (per exit)", "cycles", dm, Goal::None);
            value("Null exit: rest of the vCPU loop (per exit)", "cycles", rest, Goal::None);
        }
    }
    if found {
        Ok(())
    } else {
        Err(o.failed_on.map(|l| format!("stopped at `{l}`")).unwrap_or_else(|| "no `bench exit:` figures".into()))
    }
}

/// Node memory per microVM beyond its guest RAM (`bench=vmmem` on the node,
/// `hypervisor/kernel/src/vmmembench.rs`): frame and heap counters before and while 4 microVMs
/// with a workload VM's devices run. Goal (issue 14 item 6): at most 256 KiB.
pub fn bench_vmmem() -> Result<(), String> {
    // `bench=vmmem`: only in the probes kernel
    let kernel = crate::build::build_kernel_probes()?;
    let mut b = Boot::pvh("q35", kernel);
    b.smp = 2;
    b.mem = "512M".into();
    b.cmdline = "bench=vmmem".into();
    println!("bench vmmem: node memory a microVM costs beyond its guest RAM (frame + heap counters, 4 microVMs, QEMU TCG -smp 2)");
    let o = run_captured(b.command(false)?, &["bench vmmem: done"], &["KERNEL PANIC", "bench vmmem: no", "bench vmmem: the microVMs"], Duration::from_secs(300), false)?;
    let mut found = false;
    for l in o.lines.iter().filter(|l| l.contains("bench vmmem:")) {
        let text = l.split("bench vmmem: ").nth(1).unwrap_or(l);
        println!("  {text}");
        if let Some(per) = text.split("per microVM beyond guest RAM ").nth(1).and_then(|x| x.split_whitespace().next()).and_then(|x| x.parse::<f64>().ok()) {
            crate::benchtable::value("Node memory per microVM beyond guest RAM", "KiB", per / 1024.0, crate::benchtable::Goal::AtMost(256.0));
            found = true;
        }
    }
    if found {
        Ok(())
    } else {
        Err(o.failed_on.map(|l| format!("stopped at `{l}`")).unwrap_or_else(|| "no `bench vmmem:` figures".into()))
    }
}

/// The guest command of `vm_two_vcpus`, `bochs_two_vcpus` and `bench vcpus`: the CPUs Linux brought up, then two
/// busy processes at once (awk loops of `rounds` iterations), each printing its sum.
pub fn parallel_busy_cmd(rounds: u64) -> String {
    base64(format!(
        "echo vcpu-online [$(cat /sys/devices/system/cpu/online)]; echo busy-start; for p in 1 2; do awk 'BEGIN {{ s = 0; for (i = 0; i < {rounds}; i++) s += i % 7; print \"busy-sum\", s }}' & done; wait; echo busy-done"
    ).as_bytes())
}

/// The sum each busy process prints (`i % 7` over `0..rounds`).
pub fn busy_sum(rounds: u64) -> u64 {
    (rounds / 7) * 21 + (0..rounds % 7).sum::<u64>()
}

/// One node (q35, `-smp 3`: vCPU tasks keep off CPU 0 under TCG, so two CPUs are theirs)
/// running the Linux guest with `vcpus` vCPUs and the parallel busy command. Returns the run,
/// the seconds from `busy-start` to `busy-done` (host clock, as the lines arrived) and the log.
fn parallel_busy_run(vcpus: u8, rounds: u64, tag: &str) -> Result<(crate::qemu::Outcome, Option<f64>, std::path::PathBuf, Vec<String>), String> {
    let bundle = crate::tools::out_dir().join("guest-bundle.cpio");
    if !bundle.exists() {
        return Err("no guest bundle (cargo xtask guest)".into());
    }
    let kernel = crate::build::build_kernel(false)?;
    // (vm.apic=1 for one vCPU too: the same device model either way. The guest's console is
    // hvc0, as in the product: a 2-vCPU guest once hung there, docs/vmm.md "Multi-vCPU microVMs".)
    let mut b = node_with_guest(&kernel, &bundle, &format!("vm.boot=pvh vm.apic=1 vm.vcpus={vcpus} vm.cmd={}", parallel_busy_cmd(rounds)));
    b.smp = 3;
    let online = if vcpus == 1 { "vcpu-online [0]".to_string() } else { format!("vcpu-online [0-{}]", vcpus - 1) };
    // Any other list of CPUs ends the run at once.
    let wrong = if vcpus == 1 { "vcpu-online [0-".to_string() } else { "vcpu-online [0]".to_string() };
    let sum = format!("[vm:demo] busy-sum {}", busy_sum(rounds));
    let want: Vec<String> = vec!["[vm:demo] catenary-init: ready".into(), format!("[vm:demo] {online}"), "[vm:demo] busy-start".into(), sum, "[vm:demo] busy-done".into(), "microVM demo ended: power off".into()];
    let want_ref: Vec<&str> = want.iter().map(String::as_str).collect();
    let fail = ["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "microVM demo ended: triple", "microVM demo ended: guest fault", wrong.as_str()];
    let o = run_captured(b.command(false)?, &want_ref, &fail, Duration::from_secs(600), false)?;
    let log = crate::tools::out_dir().join(format!("{tag}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    let secs = match (o.times[2], o.times[4]) {
        (Some(a), Some(b)) if b >= a => Some((b - a).as_secs_f64()),
        _ => None,
    };
    let missing: Vec<String> = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| w.clone()).collect();
    Ok((o, secs, log, missing))
}

/// `vm_two_vcpus`: Linux in a 2-vCPU microVM brings its second CPU up through INIT/SIPI
/// (`/sys/devices/system/cpu/online` = `0-1`), reaches `catenary-init: ready`, runs two busy
/// processes at once to completion and powers off.
pub fn two_vcpus_test(t: &mut Tally) -> Result<(), String> {
    let name = "vm_two_vcpus";
    println!("== Linux microVM with two vCPUs (QEMU TCG, -smp 3)");
    let (o, secs, log, missing) = match parallel_busy_run(2, VCPU_TEST_ROUNDS, name) {
        Ok(r) => r,
        Err(e) => {
            t.record(name, false, &format!("({e})"));
            return Ok(());
        }
    };
    let online = o.lines.iter().find_map(|l| l.split("[vm:demo] vcpu-online ").nth(1)).unwrap_or("(not printed)").trim().to_string();
    let ok = o.matched && o.failed_on.is_none();
    println!("    CPUs online in the guest: {online}; parallel work {}", secs.map(|s| format!("{s:.1}s")).unwrap_or_else(|| "did not finish".into()));
    let why = if ok { String::new() } else {
        format!("(missing {missing:?}, CPUs online {online}{}; serial log {})", o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(), log.display())
    };
    t.record(name, ok, &why);
    Ok(())
}

/// awk iterations per busy process in `vm_two_vcpus`.
const VCPU_TEST_ROUNDS: u64 = 300_000;
/// awk iterations per busy process in `bench vcpus` (long enough that the guest's own
/// start-up noise is small against it).
const VCPU_BENCH_ROUNDS: u64 = 1_500_000;

/// `bench vcpus`: the same two busy processes on 1 and on 2 vCPUs (one node boot each, run back
/// to back); the row is the 2-vCPU time over the 1-vCPU time (goal ≈ 0.5, i.e. the two
/// processes really ran in parallel). The host's load average is printed with it.
pub fn bench_vcpus() -> Result<(), String> {
    println!("== bench vcpus: two busy processes in a Linux microVM, 1 vs 2 vCPUs (QEMU TCG, -smp 3)");
    let mut secs = [0.0f64; 2];
    for (i, vcpus) in [1u8, 2].into_iter().enumerate() {
        let load = crate::bench::loadavg();
        let (o, s, log, missing) = parallel_busy_run(vcpus, VCPU_BENCH_ROUNDS, &format!("bench-vcpus-{vcpus}"))?;
        let Some(s) = s.filter(|_| o.matched) else {
            return Err(format!("{vcpus} vCPU run did not finish (missing {missing:?}; serial log {})", log.display()));
        };
        println!("    {vcpus} vCPU: {s:.2}s for the parallel work (load average before {load})");
        secs[i] = s;
    }
    println!("    ratio 2 vCPUs / 1 vCPU: {:.2} (load average after {})", secs[1] / secs[0], crate::bench::loadavg());
    crate::benchtable::ratio("two busy processes, 2 vCPUs (vs 1 vCPU)", "s", secs[1], "1 vCPU", secs[0], crate::benchtable::Goal::AtMost(0.6));
    Ok(())
}
