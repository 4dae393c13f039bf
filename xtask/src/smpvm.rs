//! `smp_vm`: one boot of the test kernel on a 3-CPU node with 1 GiB (q35, TCG, SVM: CPU 0 runs no
//! vCPUs under QEMU TCG, `vm::vcpu_affinity`, so CPUs 1 and 2 share the microVMs) that runs
//! only the in-kernel `smp_vm_*` tests (hypervisor/kernel/src/ktest_smp_vm.rs): eight microVMs
//! at once spread over both CPUs, and a spinning guest beside seven progress guests. Each
//! ktest result is its own test line; the per-VM progress lines and fairness ratios are
//! printed (measured figures, not assertions beyond the tests' generous bounds).

use crate::qemu::{run_captured, Boot};
use crate::test::Tally;
use crate::tools::out_dir;
use std::path::Path;
use std::time::Duration;

pub const TESTS: [&str; 2] = ["smp_vm_eight_guests", "smp_vm_spinner_fair_share"];

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    println!("== microVMs on every CPU that may run them (3 CPUs, CPU 0 excluded under QEMU TCG, 1 GiB)");
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.smp = 3;
    b.mem = "1G".into();
    b.cmdline = "ktest.only=smp_vm".into();
    // QEMU's CPU state at a reset (a host triple fault ends QEMU under -no-reboot): the open
    // triple fault of docs/vmm.md "Soak" shows there.
    let qlog = out_dir().join("smp_vm.qemu-d.log");
    b.extra = vec!["-d".into(), "cpu_reset".into(), "-D".into(), qlog.display().to_string()];
    let o = run_captured(b.command(false)?, &[" passed, "], &["KERNEL PANIC", "- stopping this CPU"], Duration::from_secs(240), false)?;
    let log = out_dir().join("smp_vm.log");
    let _ = std::fs::write(&log, o.lines.join("\n"));
    for l in o.lines.iter().filter(|l| l.contains("smp_vm") && !l.starts_with("ktest ")) {
        println!("  {}", l.trim());
    }
    for name in TESTS {
        let line = o.lines.iter().find_map(|l| l.strip_prefix(&format!("ktest {name} ... ")));
        let why = match (line, &o.failed_on) {
            (Some(r), _) => format!("({r}; serial log {})", log.display()),
            (None, Some(f)) => format!("(node stopped: `{f}`; serial log {})", log.display()),
            (None, None) => format!("(no result after {:.0}s; serial log {})", o.elapsed.as_secs_f64(), log.display()),
        };
        let tf = std::fs::read_to_string(&qlog).map(|l| l.contains("Triple fault")).unwrap_or(false);
        let why = if tf { format!("{why}; QEMU logged a host triple fault, see {}", qlog.display()) } else { why };
        t.record(name, line == Some("ok"), &why);
    }
    Ok(())
}
