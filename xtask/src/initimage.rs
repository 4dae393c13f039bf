//! `vm_linux_catenary_init`: a busybox OCI image built offline with umoci (Entrypoint, Cmd, Env,
//! WorkingDir, a non-root User with supplementary groups from the image's /etc/group), packed
//! with `catenary image pack`, run in a Catenary node's microVM under catenary-init (`vm.image=1`, docs/guest-init.md). The node's log must show
//! `catenary-init: ready` on the guest console, the workload's stdout and stderr as its log
//! (`[vm:demo stdout]`, `[vm:demo stderr]`, never on the console), all four settings applied,
//! and exit code 3 reported through the workload channel.
//!
//! `vm_linux_workload_oom_killed`: an image whose entrypoint doubles a shell string (in a shell
//! run from a tmpfs copy of busybox) until the guest kernel's OOM killer kills it, run by the workload service as the node's demo workload
//! (`workload.demo=demo workload.mem=128`): workd must report it as killed by the OOM killer,
//! not as a plain signal 9, and the init's note names the victim in the workload's log.
//!
//! `vm_linux_workload_thrash_killed`: an image whose entrypoint fills its 128 MiB microVM with
//! anonymous memory (`dd` buffers held by a pipe nobody reads) until under 4 % is available,
//! waits 15 s (no kill allowed), then reads a 24 MiB file of its squashfs over and over: the kernel evicts and reads back the
//! file (and busybox's own text) and never decides it is out of memory. The init's thrash guard
//! must kill it, and workd must report that kill, not an OOM kill or a plain signal 9.
//!
//! `vm_linux_workload_unhealthy`: the node's demo workload with a health check
//! (`workload.health=/bin/busybox,test,-f,/tmp/up`, every 2 s, 2 retries). Its entrypoint
//! creates /tmp/up, says `up`, sleeps 7 s, removes the file, says `down` and sleeps on. The
//! check must pass (workd logs the workload healthy, from the guest's HEALTHY report) before
//! `down`, and fail twice after it; the init must kill the workload then, and workd report it
//! as unhealthy, not as a plain signal 9.

use crate::ociimage as oci;
use crate::qemu::run_captured;
use crate::test::Tally;
use crate::tools::out_dir;
use std::path::Path;
use std::time::Duration;

const NAME: &str = "vm_linux_catenary_init";

/// The workload: `sh -c SCRIPT entry from-cmd` ($0 from the Entrypoint, $1 from Cmd).
const SCRIPT: &str = "echo \"catenary-test entrypoint=$0 cmd=$1 user=$(busybox id -u):$(busybox id -g) name=$(busybox id -un) groups=$(busybox id -G)\"; \
echo \"catenary-test pwd=$(pwd) greeting=$GREETING home=$HOME host=$(busybox hostname)\"; \
echo catenary-test to-stderr >&2; exit 3";

/// The OCI layout (umoci, rootless) and the packed Catenary image in `dir/out`.
fn build_image(dir: &Path) -> Result<(), String> {
    let rootfs = oci::new_image(dir, "bb")?;
    for p in ["etc", "home/app", "srv/data"] {
        std::fs::create_dir_all(rootfs.join(p)).map_err(|e| e.to_string())?;
    }
    oci::add_busybox(&rootfs)?;
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n").map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1001:\nstaff:x:50:app\naudio:x:29:other,app\nwheel:x:10:root\n").map_err(|e| e.to_string())?;
    oci::repack(dir, "bb")?;
    oci::config(
        dir,
        "bb",
        &[
            "--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", SCRIPT, "--config.entrypoint", "entry",
            "--config.cmd", "from-cmd", "--config.env", "GREETING=hello-from-env", "--config.workingdir", "/srv/data", "--config.user", "app",
        ],
    )?;
    oci::pack(dir, "bb", &dir.join("out")).map(|_| ())
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    if let Some(why) = oci::missing_tools() {
        t.skip(NAME, why);
        return Ok(());
    }
    let dir = out_dir().join("catenary-init-test");
    if let Err(e) = build_image(&dir) {
        t.record(NAME, false, &format!("(building the image: {e})"));
        return Ok(());
    }
    // The guest bundle plus the packed image, as one boot module.
    let bundle = dir.join("bundle.cpio");
    oci::bundle_with_image(&dir.join("out"), &bundle)?;

    let b = crate::vmbench::node_with_guest(kernel, &bundle, "vm.image=1");
    let want = [
        "[vm:demo] catenary-init: ready",
        "[vm:demo stdout] catenary-test entrypoint=entry cmd=from-cmd user=1000:1001 name=app groups=1001 29 50",
        "[vm:demo stdout] catenary-test pwd=/srv/data greeting=hello-from-env home=/home/app host=demo",
        "[vm:demo stderr] catenary-test to-stderr",
        "microVM demo: workload exit code 3",
        "microVM demo ended: power off",
    ];
    let fail = ["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "catenary-init: error", "microVM demo ended: reboot", "microVM demo ended: triple"];
    let o = run_captured(b.command(false)?, &want, &fail, Duration::from_secs(300), false)?;
    let log = out_dir().join(format!("{NAME}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    // The workload's output is its log, never a console line.
    let on_console = o.lines.iter().filter(|l| l.contains("[vm:demo] catenary-test")).count();
    let missing: Vec<&str> = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| *w).collect();
    let ok = o.matched && o.failed_on.is_none() && on_console == 0;
    t.record(
        NAME,
        ok,
        &format!(
            "(missing {missing:?}{}, {on_console} workload lines on the guest console; serial log {})",
            o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
            log.display()
        ),
    );
    Ok(())
}

/// What a memory test's run left: the run's outcome, the wanted lines it missed and where its
/// serial log was saved.
struct MemoryRun {
    o: crate::qemu::Outcome,
    missing: Vec<&'static str>,
    log: std::path::PathBuf,
}

impl MemoryRun {
    /// `, stopped at LINE` when a fail line ended the run.
    fn stopped(&self) -> String {
        self.o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default()
    }
}

/// The memory (and health) tests' common part: an image of busybox and whatever `add` puts into
/// its root file system, with `sh -c SCRIPT` as its command, run by the workload service as the
/// node's demo workload in a 128 MiB microVM (`cmdline`: more of the node's command line);
/// its serial log saved as `build/NAME.log`. None when the
/// test was already recorded (SKIPPED without the image tools, failed when the image could not
/// be built).
fn run_memory_image(
    t: &mut Tally,
    name: &str,
    add: impl FnOnce(&Path) -> Result<(), String>,
    script: &str,
    cmdline: &str,
    want: &[&'static str],
    fail: &[&str],
) -> Result<Option<MemoryRun>, String> {
    if let Some(why) = oci::missing_tools() {
        t.skip(name, why);
        return Ok(None);
    }
    let dir = out_dir().join(name);
    let built = (|| {
        let rootfs = oci::new_image(&dir, "img")?;
        oci::add_busybox(&rootfs)?;
        add(&rootfs)?;
        oci::repack(&dir, "img")?;
        oci::config(&dir, "img", &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.cmd", script])?;
        oci::pack(&dir, "img", &dir.join("out"))
    })();
    if let Err(e) = built {
        t.record(name, false, &format!("(building the image: {e})"));
        return Ok(None);
    }
    let bundle = dir.join("bundle.cpio");
    oci::bundle_with_image(&dir.join("out"), &bundle)?;
    let kernel = crate::build::build_kernel(false)?;
    let b = crate::vmbench::node_with_guest(&kernel, &bundle, &format!("{} workload.mem=128 heartbeat=1000 {cmdline}", crate::qemu::RUN_IMAGE_CMDLINE));
    let o = run_captured(b.command(false)?, want, fail, Duration::from_secs(300), false)?;
    let log = out_dir().join(format!("{name}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    let missing = want.iter().zip(&o.times).filter(|(_, t)| t.is_none()).map(|(w, _)| *w).collect();
    Ok(Some(MemoryRun { o, missing, log }))
}

/// `vm_linux_workload_oom_killed` (see the top of this file).
pub fn oom_test(t: &mut Tally) -> Result<(), String> {
    const OOM: &str = "vm_linux_workload_oom_killed";
    // The allocating shell runs from a copy of busybox in the guest's /tmp (tmpfs: with no
    // swap, pages the kernel cannot drop). Run from the image's squashfs, its own program
    // pages are what the kernel drops and reads back as memory runs out, and the kill can
    // wait for minutes (docs/guest-init.md "Out of memory").
    let script = "/bin/busybox cp /bin/busybox /tmp/busybox && exec /tmp/busybox sh -c 'echo allocating; x=xxxxxxxxxxxxxxxx; while :; do x=\"$x$x\"; done'";
    let want = ["[vm:demo stdout] allocating", "the kernel's OOM killer killed process", "workd: demo ended: killed by the kernel's OOM killer (signal 9)"];
    let fail = [
        "KERNEL PANIC",
        "- stopping this CPU",
        "workd: demo ended: killed by signal",
        "workd: demo ended: killed by the guest init",
        "workd: demo ended: crashed",
        "catenary-init: error",
    ];
    let Some(r) = run_memory_image(t, OOM, |_| Ok(()), script, "", &want, &fail)? else { return Ok(()) };
    t.record(
        OOM,
        r.o.matched && r.o.failed_on.is_none(),
        &format!(
            "(missing {:?}{}; last heartbeat: {}; serial log {})",
            r.missing,
            r.stopped(),
            // A hang says whether the node lived on and the VM still exited (the workload busy
            // or thrashing) or not.
            r.o.lines.iter().rev().find(|l| l.contains("INFO  heartbeat:")).map(String::as_str).unwrap_or("none"),
            r.log.display()
        ),
    );
    Ok(())
}

/// The thrash test's workload. It fills memory to under 4 % available in `dd` buffers that stay
/// (each `dd` blocks writing into a pipe that `sleep` never reads), sleeps 15 s (memory low but
/// nothing read back: the guard must wait), then streams the whole 24 MiB `/big` again and
/// again: the kernel drops the file's pages and busybox's text and reads them back, and never
/// decides it is out of memory.
const THRASH_SCRIPT: &str = "echo filling; t=$(busybox awk '/MemTotal/{print $2}' /proc/meminfo); \
while :; do a=$(busybox awk '/MemAvailable/{print $2}' /proc/meminfo); [ $((a * 25)) -lt $t ] && break; \
if [ $a -gt 16384 ]; then bs=4M; else bs=512K; fi; busybox dd if=/dev/zero bs=$bs count=1 2>/dev/null | busybox sleep 100000 & busybox sleep 0.3; done; \
echo \"filled: $a KiB of $t KiB available\"; busybox sleep 15; echo rereading; while :; do busybox cat /big > /dev/null; done";

/// 24 MiB that squashfs cannot compress (xorshift), so reading it takes 6,144 pages.
fn add_incompressible_file(rootfs: &Path) -> Result<(), String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut big = Vec::with_capacity(24 << 20);
    while big.len() < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(rootfs.join("big"), &big).map_err(|e| e.to_string())
}

/// `vm_linux_workload_thrash_killed` (see the top of this file).
pub fn thrash_test(t: &mut Tally) -> Result<(), String> {
    const NAME: &str = "vm_linux_workload_thrash_killed";
    let want = [
        "[vm:demo stdout] filling",
        "[vm:demo stdout] filled: ",
        "[vm:demo stdout] rereading",
        "the VM is thrashing",
        "workd: demo ended: killed by the guest init: out of memory, thrashing (signal 9)",
    ];
    let fail = [
        "KERNEL PANIC",
        "- stopping this CPU",
        "workd: demo ended: killed by signal",
        "workd: demo ended: killed by the kernel's OOM killer",
        "the kernel's OOM killer killed process",
        "workd: demo ended: crashed",
        "catenary-init: error",
    ];
    let Some(r) = run_memory_image(t, NAME, add_incompressible_file, THRASH_SCRIPT, "", &want, &fail)? else { return Ok(()) };
    // Measured on the host's clock from the captured lines: the rereading's start to the kill.
    // A kill before it (low memory alone, nothing read back) fails the test.
    let (guard_ms, in_order) = match (r.o.times[2], r.o.times[3]) {
        (Some(a), Some(b)) => (format!("{} ms from the rereading's start to the kill", b.saturating_sub(a).as_millis()), a < b),
        (None, Some(_)) => ("killed before the rereading".into(), false),
        _ => ("no kill".into(), false),
    };
    let filled = r.o.lines.iter().find(|l| l.contains("[vm:demo stdout] filled: ")).map(String::as_str).unwrap_or("not filled");
    println!("{NAME}: {guard_ms}; {filled}");
    t.record(
        NAME,
        r.o.matched && r.o.failed_on.is_none() && in_order,
        &format!("({guard_ms}; {filled}; missing {:?}{}; serial log {})", r.missing, r.stopped(), r.log.display()),
    );
    Ok(())
}

/// `vm_linux_workload_unhealthy` (see the top of this file).
pub fn unhealthy_test(t: &mut Tally) -> Result<(), String> {
    const NAME: &str = "vm_linux_workload_unhealthy";
    let script = "busybox touch /tmp/up; echo up; busybox sleep 7; busybox rm /tmp/up; echo down; busybox sleep 600";
    let cmdline = "workload.health=/bin/busybox,test,-f,/tmp/up workload.health_interval=2 workload.health_retries=2";
    let want = [
        "[vm:demo stdout] up",
        "workd: demo health: healthy",
        "[vm:demo stdout] down",
        "[vm:demo init] catenary-init: health check failed (exit code 1): 1 of 2 in a row",
        "[vm:demo init] catenary-init: health check failed (exit code 1): 2 of 2 in a row: the workload is unhealthy; killing it",
        "workd: demo ended: killed by the guest init: unhealthy, its health check failed (signal 9)",
    ];
    let fail = [
        "KERNEL PANIC",
        "- stopping this CPU",
        "workd: demo ended: killed by signal",
        "workd: demo ended: exit code",
        "workd: demo ended: crashed",
        "catenary-init: error",
    ];
    let Some(r) = run_memory_image(t, NAME, |_| Ok(()), script, cmdline, &want, &fail)? else { return Ok(()) };
    // In this order: healthy while /tmp/up is there, failing only after `down` (so the pass was
    // not a stale or a made-up one, nor the failures early).
    let times: Vec<_> = r.o.times.iter().flatten().collect();
    let in_order = times.len() == want.len() && times.windows(2).all(|w| w[0] <= w[1]);
    let span = |a: usize, b: usize| match (r.o.times[a], r.o.times[b]) {
        (Some(x), Some(y)) => format!("{} ms", y.saturating_sub(x).as_millis()),
        _ => "-".into(),
    };
    let timing = format!("healthy {} after `up`; killed {} after `down`", span(0, 1), span(2, 4));
    println!("{NAME}: {timing}");
    t.record(
        NAME,
        r.o.matched && r.o.failed_on.is_none() && in_order,
        &format!("({timing}; in order: {in_order}; missing {:?}{}; serial log {})", r.missing, r.stopped(), r.log.display()),
    );
    Ok(())
}
