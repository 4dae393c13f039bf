//! Booting Catenary in QEMU: interactive (`cargo xtask run`) and captured with a deadline
//! (tests and benchmarks).

use crate::tools::{out_dir, require, require_file};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Boot {
    pub machine: String,
    pub smp: u32,
    pub mem: String,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub iso: Option<PathBuf>,
    pub uefi: bool,
    pub extra: Vec<String>,
}

impl Boot {
    pub fn pvh(machine: &str, kernel: PathBuf) -> Boot {
        Boot {
            machine: machine.into(),
            smp: 2,
            mem: "1G".into(),
            kernel: Some(kernel),
            initrd: None,
            cmdline: String::new(),
            iso: None,
            uefi: false,
            extra: vec![],
        }
    }

    pub fn iso(iso: PathBuf, uefi: bool) -> Boot {
        Boot { iso: Some(iso), uefi, kernel: None, ..Boot::pvh("q35", PathBuf::new()) }
    }

    pub fn command(&self, interactive: bool) -> Result<Command, String> {
        let qemu = require("qemu-system-x86_64", "qemu-system-x86")?;
        let mut c = Command::new(qemu);
        let machine = match self.machine.as_str() {
            // microvm: keep the legacy PIC/PIT/RTC and ISA (serial, debug-exit) devices.
            "microvm" => "microvm,pit=on,pic=on,rtc=on,isa-serial=on".to_string(),
            m => m.to_string(),
        };
        c.args(["-M", &machine]);
        if kvm_usable() {
            c.args(["-enable-kvm", "-cpu", "host"]);
        } else {
            c.args(["-accel", "tcg", "-cpu", "max"]);
        }
        c.args(["-smp", &self.smp.to_string(), "-m", &self.mem]);
        c.args(["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        if interactive {
            c.args(["-nographic"]);
        } else {
            c.args(["-display", "none", "-serial", "stdio", "-monitor", "none"]);
        }
        if let Some(iso) = &self.iso {
            c.arg("-cdrom").arg(iso);
            if self.uefi {
                let ovmf = require_file("/usr/share/ovmf/OVMF.fd", "ovmf")?;
                c.arg("-bios").arg(ovmf);
            }
        } else if let Some(k) = &self.kernel {
            c.arg("-kernel").arg(k);
            c.args(["-append", &self.cmdline]);
            if let Some(i) = &self.initrd {
                c.arg("-initrd").arg(i);
            }
        }
        c.args(&self.extra);
        Ok(c)
    }
}

/// A command as xtask prints it: program and arguments, with the value of every `*.key=`
/// word redacted (a secret never reaches a printed command line).
pub fn shown_command(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().to_string();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&catenary_bootinfo::redact_secrets(&a.to_string_lossy()));
    }
    s
}

/// Whether /dev/kvm can really run our kernel. On these machines it is a PVM-flavoured KVM
/// that cannot, so we probe once (boot the kernel under KVM for a few seconds) and cache the
/// verdict in build/kvm-probe. CATENARY_KVM=0/1 overrides.
pub fn kvm_usable() -> bool {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ONCE.get_or_init(|| {
        if let Ok(v) = std::env::var("CATENARY_KVM") {
            return v == "1";
        }
        let cache = out_dir().join("kvm-probe");
        if let Ok(s) = std::fs::read_to_string(&cache) {
            return s.trim() == "yes";
        }
        let ok = probe_kvm();
        let _ = std::fs::write(&cache, if ok { "yes\n" } else { "no\n" });
        ok
    })
}

fn probe_kvm() -> bool {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return false;
    }
    let kernel = crate::build::kernel_elf(false);
    if !kernel.exists() {
        return false;
    }
    let Some(qemu) = crate::tools::which("qemu-system-x86_64") else { return false };
    let mut c = Command::new(qemu);
    c.args(["-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", "256M", "-display", "none", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel);
    match run_captured(c, &["catenary: ready"], &[], Duration::from_secs(8), false) {
        Ok(o) => o.matched,
        Err(_) => false,
    }
}

pub struct Outcome {
    pub lines: Vec<String>,
    pub matched: bool,
    pub failed_on: Option<String>,
    pub elapsed: Duration,
    pub exit_code: Option<i32>,
    /// Time from spawn to each expected pattern's first match.
    pub times: Vec<Option<Duration>>,
}

/// Run QEMU, capture serial, stop when every `expect` pattern has appeared (in any order),
/// when a `fail` pattern appears, when QEMU exits, or at the deadline.
pub fn run_captured(mut c: Command, expect: &[&str], fail: &[&str], deadline: Duration, echo: bool) -> Result<Outcome, String> {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let start = Instant::now();
    let mut child: Child = c.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            let s = String::from_utf8_lossy(&l).trim_end_matches('\r').to_string();
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("[qemu stderr] {l}"));
        }
    });
    let mut lines = Vec::new();
    let mut times: Vec<Option<Duration>> = vec![None; expect.len()];
    let mut failed_on = None;
    let mut exit_code = None;
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if echo {
                    println!("{line}");
                }
                for (i, p) in expect.iter().enumerate() {
                    if times[i].is_none() && line.contains(p) {
                        times[i] = Some(start.elapsed());
                    }
                }
                if failed_on.is_none() && fail.iter().any(|f| line.contains(f)) {
                    failed_on = Some(line.clone());
                }
                lines.push(line);
                if failed_on.is_some() || (!expect.is_empty() && times.iter().all(|t| t.is_some())) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(st)) = child.try_wait() {
                    exit_code = st.code();
                    // drain what is left
                    while let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                        for (i, p) in expect.iter().enumerate() {
                            if times[i].is_none() && l.contains(p) {
                                times[i] = Some(start.elapsed());
                            }
                        }
                        if echo {
                            println!("{l}");
                        }
                        lines.push(l);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exit_code = child.wait().ok().and_then(|s| s.code());
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    if exit_code.is_none() {
        // give QEMU a moment to exit by itself (isa-debug-exit), then stop it
        for _ in 0..20 {
            if let Ok(Some(st)) = child.try_wait() {
                exit_code = st.code();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if exit_code.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let matched = failed_on.is_none() && times.iter().all(|t| t.is_some());
    Ok(Outcome { lines, matched, failed_on, elapsed, exit_code, times })
}

/// Boot modules attached by default: the guest image bundle when it has been built.
pub fn default_modules(_iso: bool) -> Vec<(PathBuf, String)> {
    let b = out_dir().join("guest-bundle.cpio");
    if b.exists() {
        vec![(b, "guest-bundle".into())]
    } else {
        vec![]
    }
}

/// The guest bundle for `run`: refreshed from the guest-kernel cache when that exists (fast);
/// never starts the ~10 minute first guest-kernel build behind the user's back.
fn guest_modules_for_run() -> Vec<(PathBuf, String)> {
    let cache = std::env::var_os("CATENARY_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/catenary")));
    let cached = cache
        .and_then(|c| std::fs::read_dir(c).ok())
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("guest-kernel-") && e.path().join(".complete").exists()))
        .unwrap_or(false);
    if cached {
        if let Err(e) = crate::build::guest_bundle() {
            eprintln!("xtask: guest images: {e}");
        }
    }
    let m = default_modules(false);
    if m.is_empty() {
        eprintln!("xtask: no guest images yet: the node boots without the demo microVM.");
        eprintln!("xtask: build them once with `cargo xtask guest` (about 10 minutes), then run again.");
    }
    m
}

/// What `run --image` puts on the node's command line: no demo VM of its own; the workload
/// service creates and starts the store's image as the workload `demo` (docs/workloads.md).
pub const RUN_IMAGE_CMDLINE: &str = "vm=none workload.demo=demo";

/// `catenary image verify DIR` (the node verifies it again on arrival: a bad image fails here
/// with a clearer message).
fn verify_image(dir: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(crate::tools::root())
        .args(["run", "--quiet", "-p", "catenary", "--", "image", "verify"])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("--image {}: {}", dir.display(), String::from_utf8_lossy(&o.stderr).trim()));
    }
    eprintln!("xtask: image {} ({})", dir.display(), String::from_utf8_lossy(&o.stdout).trim());
    Ok(())
}

pub fn cmd_run(args: &[String]) -> Result<(), String> {
    let mut machine = "q35".to_string();
    let mut smp = 2;
    let mut mem = "1G".to_string();
    let mut iso = false;
    let mut uefi = false;
    let mut guest = true;
    let mut cmdline = Vec::new();
    let mut nodes = 0usize;
    let mut image: Option<PathBuf> = None;
    // `--probes`: boot the probes kernel instead (the command-line test probes, e.g.
    // `-- net.ping=node3`; `build::build_kernel_probes`); by default the node kernel as shipped
    let mut probes = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--machine" => machine = it.next().ok_or("--machine needs a value")?.clone(),
            "--smp" => smp = it.next().ok_or("--smp needs a value")?.parse().map_err(|_| "--smp needs a number")?,
            "--mem" => mem = it.next().ok_or("--mem needs a value")?.clone(),
            "--iso" => iso = true,
            "--uefi" => uefi = true,
            "--no-guest" => guest = false,
            "--probes" => probes = true,
            "--image" => image = Some(PathBuf::from(it.next().ok_or("--image needs a packed image directory (catenary image pack -o DIR)")?)),
            "--nodes" => nodes = it.next().ok_or("--nodes needs a value")?.parse().map_err(|_| "--nodes needs a number")?,
            "--" => {
                cmdline.extend(it.by_ref().cloned());
            }
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    if !["microvm", "q35", "pc"].contains(&machine.as_str()) {
        return Err(format!("--machine must be microvm, q35 or pc (got {machine})"));
    }
    if nodes > 0 {
        if guest {
            // builds or unpacks the cached bundle into build/guest
            guest_modules_for_run();
        }
        return crate::cluster::run_nodes(nodes, &cmdline.join(" "), guest, probes);
    }
    let kernel = if probes { crate::build::build_kernel_probes()? } else { crate::build::build_kernel(false)? };
    let mut mods = if guest { guest_modules_for_run() } else { vec![] };
    if let Some(dir) = &image {
        // The packed image rides in the guest bundle; the node's image store verifies it and
        // the workload service runs it as the workload `demo` (docs/workloads.md).
        if mods.is_empty() {
            return Err("--image needs the guest bundle (run `cargo xtask guest` once; not with --no-guest)".into());
        }
        verify_image(dir)?;
        let bundle = out_dir().join("run-image-bundle.cpio");
        crate::ociimage::bundle_with_image(dir, &bundle)?;
        mods = vec![(bundle, "guest-bundle".into())];
        cmdline.insert(0, RUN_IMAGE_CMDLINE.into());
    }
    let cmd = cmdline.join(" ");
    crate::orchkilltest::check_probe_words(&kernel, &cmd)?;
    let mut b = if iso {
        // the probes kernel's ISO under its own name: `catenary.iso` is what `cargo xtask iso` ships
        let iso = crate::build::build_iso(&kernel, &mods, &cmd, if probes { "catenary-probes" } else { "catenary" })?;
        Boot::iso(iso, uefi)
    } else {
        let mut b = Boot::pvh(&machine, kernel);
        b.cmdline = cmd;
        b.initrd = mods.first().map(|m| m.0.clone());
        b
    };
    b.machine = if iso { "q35".into() } else { machine };
    b.smp = smp;
    b.mem = mem;
    let mut c = b.command(true)?;
    eprintln!("xtask: {}", shown_command(&c));
    eprintln!("xtask: QEMU console on stdout; quit with Ctrl-A X");
    let st = c.status().map_err(|e| e.to_string())?;
    // isa-debug-exit codes are odd numbers; treat QEMU's own exit as the end of the run.
    let _ = st;
    Ok(())
}
