//! `workload_*`: the workload service end to end (docs/workloads.md). One boot of the test
//! kernel on a 2-CPU node with 1 GiB (q35, TCG, SVM) whose boot module is the guest bundle plus a
//! packed busybox image (built offline with umoci, packed with `catenary image pack`), running
//! only the in-kernel `workload_*` tests (hypervisor/kernel/src/ktest_workload.rs): a ring-3
//! client speaks the workload protocol to the ring-3 `workd` the supervisor started, which runs
//! the image in real Linux microVMs. Each ktest result is a test line; so are the admission
//! refusal (a `wkctl: RESULT admission` line), the image verified on arrival, and `workd`'s
//! start by the supervisor with exactly its grants. `workload_run_image` boots the ordinary
//! kernel with the command line `cargo xtask run --image` uses: `workd` starts the image as the
//! workload `demo`, whose log reaches the console.

use crate::ociimage as oci;
use crate::qemu::{run_captured, Boot};
use crate::test::Tally;
use crate::tools::out_dir;
use std::path::Path;
use std::time::Duration;

pub const TESTS: [&str; 11] = [
    "workload_run_image",
    "workload_started_by_supervisor",
    "workload_image_verified",
    "workload_hostile_requests",
    "workload_restart_on_failure",
    "workload_eight_at_once",
    "workload_admission_refused",
    "workload_image_push",
    "workload_image_remove",
    "workload_adopted_after_restart",
    "workload_deadline_power_off",
];

/// The image's entrypoint: `sh -c SCRIPT entry ARGS…`. `flaky` fails until the run's
/// `CATENARY_ATTEMPT` (set by workd for every run) reaches 3; `hello NAME` greets and sleeps.
pub const SCRIPT: &str = r#"case "$1" in
flaky) if [ "$CATENARY_ATTEMPT" -ge 3 ]; then echo "flaky attempt $CATENARY_ATTEMPT: succeeding"; exit 0; fi
       echo "flaky attempt $CATENARY_ATTEMPT: failing"; echo "failing on purpose" >&2; exit 1;;
hello) echo "hello from $2"; echo "stderr of $2" >&2; exec busybox sleep 600;;
tick) i=0; while true; do i=$((i+1)); echo "tick $i"; busybox sleep 1; done;;
*) echo "args: $*"; exit 3;;
esac"#;

/// The packed image and the bundle holding it (`dir/bundle.cpio`).
pub fn build(dir: &Path) -> Result<std::path::PathBuf, String> {
    let rootfs = oci::new_image(dir, "wk")?;
    oci::add_busybox(&rootfs)?;
    oci::repack(dir, "wk")?;
    oci::config(dir, "wk", &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", SCRIPT, "--config.entrypoint", "entry", "--config.cmd", "hello", "--config.cmd", "default"])?;
    let out = dir.join("out");
    let digest = oci::pack(dir, "wk", &out)?;
    println!("  image {digest}");
    let bundle = dir.join("bundle.cpio");
    oci::bundle_with_image(&out, &bundle)?;
    Ok(bundle)
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    println!("== the workload service (2 CPUs, 1 GiB; busybox image in Linux microVMs)");
    if !crate::preflight::ready(t, &TESTS, &crate::preflight::Needs { images: true, guest: true, ..Default::default() }) {
        return Ok(());
    }
    let dir = out_dir().join("workload-test");
    let bundle = match build(&dir) {
        Ok(b) => b,
        Err(e) => {
            for n in TESTS {
                t.record(n, false, &format!("(building the image: {e})"));
            }
            return Ok(());
        }
    };
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.smp = 2;
    b.mem = "1G".into();
    b.initrd = Some(bundle.clone());
    // uploads idle for 20 s are dropped (workload_image_push waits for one to be)
    b.cmdline = "ktest.only=workload store.upload_idle_s=20".into();
    let o = run_captured(b.command(false)?, &[" passed, "], &["KERNEL PANIC", "- stopping this CPU"], Duration::from_secs(1500), false)?;
    let log = out_dir().join("workload.log");
    let _ = std::fs::write(&log, o.lines.join("\n"));
    for l in o.lines.iter().filter(|l| l.contains("wkctl: RESULT") || l.contains("workd: ") && (l.contains("ended") || l.contains("serving"))) {
        println!("  {}", l.trim());
    }
    let stopped = |why: String| match &o.failed_on {
        Some(f) => format!("{why} (node stopped: `{f}`; serial log {})", log.display()),
        None => format!("{why} (serial log {})", log.display()),
    };
    let has = |p: &str| o.lines.iter().any(|l| l.contains(p));
    // workd started by the supervisor with its grants: its endpoint and the VM-control capability
    let started = o.lines.iter().find(|l| l.contains("service workd started"));
    let ok = started.is_some_and(|l| l.contains("the VM-control capability (SYS_VM) in slot 1") && l.contains("sends []") && l.contains("MMIO []"))
        && has("supd: workd running as task")
        && has("workd: serving the workload protocol; 1 images");
    t.record("workload_started_by_supervisor", ok, &stopped(format!("start line: {:?}", started.map(|l| l.trim()))));
    let ok = has("verified on arrival") && has("workd: image sha256:");
    t.record("workload_image_verified", ok, &stopped("no `verified on arrival` / `workd: image` line".into()));
    for name in ["workload_hostile_requests", "workload_restart_on_failure", "workload_eight_at_once", "workload_image_push", "workload_adopted_after_restart", "workload_deadline_power_off"] {
        let line = o.lines.iter().find_map(|l| l.strip_prefix(&format!("ktest {name} ... ")));
        t.record(name, line == Some("ok"), &stopped(format!("{line:?}")));
    }
    let ok = has("wkctl: RESULT remove_refused_while_used ok") && has("wkctl: RESULT remove_done ok") && has("wkctl: RESULT remove_frames_returned ok");
    t.record("workload_image_remove", ok, &stopped("no `wkctl: RESULT remove_… ok` lines".into()));
    let ok = has("wkctl: RESULT admission ok");
    t.record("workload_admission_refused", ok, &stopped("no `wkctl: RESULT admission ok`".into()));
    run_image(t, &bundle)
}

/// `cargo xtask run --image`'s node: the demo is a workload that workd creates and starts.
fn run_image(t: &mut Tally, bundle: &Path) -> Result<(), String> {
    const NAME: &str = "workload_run_image";
    if !crate::test::selected(NAME) {
        return Ok(());
    }
    let kernel = crate::build::build_kernel(false)?;
    let mut b = Boot::pvh("q35", kernel);
    b.smp = 2;
    b.mem = "1G".into();
    b.initrd = Some(bundle.to_path_buf());
    b.cmdline = crate::qemu::RUN_IMAGE_CMDLINE.into();
    // the image's default cmd: `hello default` (greets, then sleeps)
    let want = ["workd: workload demo from image", "created and started, as the node's command line asks", "[vm:demo stdout] hello from default", "[vm:demo stderr] stderr of default"];
    let o = run_captured(b.command(false)?, &want, &["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "refused"], Duration::from_secs(300), false)?;
    let log = out_dir().join(format!("{NAME}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    let missing: Vec<&str> = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| *w).collect();
    // no demo VM of the kernel's own: the only microVM is the workload's
    let kernel_demo = o.lines.iter().any(|l| l.contains("vcpu-demo") || l.contains("no guest bundle"));
    t.record(NAME, o.matched && !kernel_demo, &format!("(missing {missing:?}{}; serial log {})",
        o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(), log.display()));
    Ok(())
}
