//! Kernel, ISO and guest-image builds.

use crate::tools::{out_dir, require, require_file, root, run, which};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags for the no_std kernel against the precompiled x86_64-unknown-linux-gnu core
/// (no build-std, no nightly): see docs/boot.md. Applied only to the kernel build: with an
/// explicit `--target`, cargo does not pass RUSTFLAGS to build scripts and proc macros.
pub const KERNEL_RUSTFLAGS: &[&str] = &[
    "-Crelocation-model=static",
    "-Ccode-model=kernel",
    "-Cno-redzone=yes",
    "-Ctarget-feature=+crt-static",
    "-Cpanic=abort",
    "-Clink-arg=-nostartfiles",
    "-Clink-arg=-nostdlib",
    "-Clink-arg=-static",
    "-Clink-arg=-Wl,--build-id=none",
    "-Clink-arg=-Wl,-z,max-page-size=0x1000",
    "-Clink-arg=-Wl,--no-dynamic-linker",
];

pub fn kernel_elf(test: bool) -> PathBuf {
    out_dir().join(if test { "catenary-test.elf" } else { "catenary.elf" })
}

/// The ring-3 programs' compiler flags: the kernel's, with the small code model.
pub fn user_rustflags() -> Vec<&'static str> {
    let mut flags: Vec<&str> = KERNEL_RUSTFLAGS.iter().copied().filter(|f| !f.starts_with("-Ccode-model")).collect();
    flags.push("-Ccode-model=small");
    flags
}

/// Ring-3 programs (hypervisor/user): static executables at 4 MiB, built with the kernel's
/// flags except the code model (user code lives in the low half). Returns their directory.
/// `probes`: with the feature `probes` (netd's and nicd's command-line
/// test probes), in their own target directory (target/user-probes) so that neither build
/// undoes the other; only the probes kernel embeds those.
pub fn build_user(probes: bool) -> Result<PathBuf, String> {
    let target_dir = root().join("target").join(if probes { "user-probes" } else { "user" });
    let flags = user_rustflags();
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        .args(["build", "--release", "--manifest-path", "hypervisor/user/Cargo.toml"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS");
    if probes {
        c.args(["--features", "probes"]);
    }
    run(&mut c)?;
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release"))
}

pub fn build_kernel(test: bool) -> Result<PathBuf, String> {
    build_kernel_as(test, false)
}

/// The node kernel with the test probes (`--features probes`: `hypervisor/kernel/src/orchprobe.rs`,
/// `netdprobe.rs`, `tcpprobe.rs`, `rpcprobe.rs`, the in-kernel netd's `net/probes.rs`, the
/// boot-time benchmarks `bench=`, `crash=`, `workload.client=`, and the ring-3 netd and nicd
/// built with their feature `probes`): only for the QEMU tests and benchmarks that arm one
/// from the command line. It shares the node kernel's target directory, so only the kernel
/// crate itself is compiled again; the shipped kernel (`build_kernel(false)`: `cargo xtask
/// run`, the ISO, the Nix apps) has no probes (`node_kernel_without_probes` checks its bytes).
/// The file name of the probes kernel under `build/` ([`build_kernel_probes`]).
pub const PROBES_KERNEL_NAME: &str = "catenary-probes.elf";

pub fn build_kernel_probes() -> Result<PathBuf, String> {
    build_kernel_as(false, true)
}

fn build_kernel_as(test: bool, probes: bool) -> Result<PathBuf, String> {
    let user = build_user(probes)?;
    let target_dir = root().join("target").join(if test { "kernel-test" } else { "kernel" });
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root())
        .args(["build", "--release", "-p", "catenary-kernel", "--bin", "catenary"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", KERNEL_RUSTFLAGS.join("\x1f"))
        .env("CATENARY_USER_DIR", &user)
        .env_remove("RUSTFLAGS");
    if test {
        // The in-kernel test build traps every arithmetic overflow (a panic with the location),
        // so a slip in code driven by guest, task or network input shows up in tests. The node
        // build keeps release's wrapping arithmetic: there a panic takes the whole node down,
        // while a wrapped value stays memory-safe (every index is bounds-checked) and harms at
        // most the request that caused it. Code that handles hostile values uses checked_* /
        // wrapping_* explicitly either way (docs/boot.md, "Build profiles").
        c.args(["--features", "ktest", "--config", "profile.release.overflow-checks=true"]);
    }
    if probes {
        c.args(["--features", "probes"]);
    }
    run(&mut c)?;
    let built = target_dir.join("x86_64-unknown-linux-gnu/release/catenary");
    let dst = if probes { out_dir().join(PROBES_KERNEL_NAME) } else { kernel_elf(test) };
    std::fs::copy(&built, &dst).map_err(|e| format!("copy {built:?}: {e}"))?;
    Ok(dst)
}

pub fn cmd_build(args: &[String]) -> Result<(), String> {
    let test = args.iter().any(|a| a == "--test");
    // `--probes`: the node kernel with the command-line test probes (`build_kernel_probes`)
    let p = if args.iter().any(|a| a == "--probes") { build_kernel_probes()? } else { build_kernel(test)? };
    println!("{}", p.display());
    Ok(())
}

/// Module files for the ISO: (path on the host, name the kernel sees).
pub fn build_iso(kernel: &Path, modules: &[(PathBuf, String)], cmdline: &str, iso_name: &str) -> Result<PathBuf, String> {
    let mkrescue = require("grub-mkrescue", "grub-common grub-pc-bin grub-efi-amd64-bin")?;
    require("xorriso", "xorriso")?;
    require("mformat", "mtools")?;
    require_file("/usr/lib/grub/i386-pc", "grub-pc-bin")?;
    require_file("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin")?;
    let stage = out_dir().join(format!("{iso_name}.d"));
    let _ = std::fs::remove_dir_all(&stage);
    write_grub_boot(&stage, kernel, modules, cmdline)?;

    let iso = out_dir().join(format!("{iso_name}.iso"));
    let out = Command::new(mkrescue)
        .arg("-o")
        .arg(&iso)
        .arg(&stage)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("grub-mkrescue failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(iso)
}

/// `DIR/boot/catenary.elf`, `DIR/boot/moduleN` and `DIR/boot/grub/grub.cfg` booting them as
/// Multiboot2 (`multiboot2` + `module2 ... NAME`). Shared by the ISO and the PXE directory
/// (`cargo xtask netboot`), so both boot paths see the same kernel command line and modules.
pub fn write_grub_boot(dir: &std::path::Path, kernel: &Path, modules: &[(PathBuf, String)], cmdline: &str) -> Result<(), String> {
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("grub")).map_err(|e| e.to_string())?;
    std::fs::copy(kernel, boot.join("catenary.elf")).map_err(|e| e.to_string())?;
    let mut cfg = String::from("set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_output serial console\n\n");
    cfg.push_str(&format!("menuentry \"Catenary\" {{\n    multiboot2 /boot/catenary.elf {cmdline}\n"));
    for (i, (path, name)) in modules.iter().enumerate() {
        let file = format!("module{i}");
        std::fs::copy(path, boot.join(&file)).map_err(|e| format!("{path:?}: {e}"))?;
        cfg.push_str(&format!("    module2 /boot/{file} {name}\n"));
    }
    cfg.push_str("    boot\n}\n");
    std::fs::write(boot.join("grub/grub.cfg"), &cfg).map_err(|e| e.to_string())
}

/// A Limine-protocol ISO (BIOS + UEFI) beside the GRUB one, when a `limine` binary is on PATH
/// (nixpkgs has it; no registry reachable from the build machines does). Mirrors nix/iso.nix.
pub fn build_limine_iso(kernel: &PathBuf, modules: &[(PathBuf, String)], cmdline: &str, iso_name: &str) -> Result<Option<PathBuf>, String> {
    let Some(limine) = which("limine") else { return Ok(None) };
    let share = limine.parent().and_then(|b| b.parent()).map(|p| p.join("share/limine")).unwrap_or_default();
    let stage = out_dir().join(format!("{iso_name}-limine.d"));
    let _ = std::fs::remove_dir_all(&stage);
    let boot = stage.join("boot");
    std::fs::create_dir_all(boot.join("limine")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(stage.join("EFI/BOOT")).map_err(|e| e.to_string())?;
    std::fs::copy(kernel, boot.join("catenary.elf")).map_err(|e| e.to_string())?;
    let mut conf = format!("timeout: 0\n\n/Catenary (Limine)\n    protocol: limine\n    path: boot():/boot/catenary.elf\n    cmdline: {cmdline}\n");
    for (i, (path, name)) in modules.iter().enumerate() {
        std::fs::copy(path, boot.join(format!("module{i}"))).map_err(|e| e.to_string())?;
        conf.push_str(&format!("    module_path: boot():/boot/module{i}\n    module_string: {name}\n"));
    }
    std::fs::write(boot.join("limine/limine.conf"), conf).map_err(|e| e.to_string())?;
    for f in ["limine-bios.sys", "limine-bios-cd.bin", "limine-uefi-cd.bin"] {
        std::fs::copy(share.join(f), boot.join("limine").join(f)).map_err(|e| format!("{f} from {}: {e}", share.display()))?;
    }
    let _ = std::fs::copy(share.join("BOOTX64.EFI"), stage.join("EFI/BOOT/BOOTX64.EFI"));
    let iso = out_dir().join(format!("{iso_name}-limine.iso"));
    run(Command::new(require("xorriso", "xorriso")?)
        .args(["-as", "mkisofs", "-R", "-r", "-J", "-b", "boot/limine/limine-bios-cd.bin", "-no-emul-boot"])
        .args(["-boot-load-size", "4", "-boot-info-table", "-hfsplus", "-apm-block-size", "2048"])
        .args(["--efi-boot", "boot/limine/limine-uefi-cd.bin", "-efi-boot-part", "--efi-boot-image", "--protective-msdos-label"])
        .arg(&stage)
        .arg("-o")
        .arg(&iso))?;
    run(Command::new(&limine).arg("bios-install").arg(&iso))?;
    Ok(Some(iso))
}

pub fn cmd_iso(args: &[String]) -> Result<(), String> {
    let test = args.iter().any(|a| a == "--test");
    let k = build_kernel(test)?;
    let mods = crate::qemu::default_modules(true);
    let name = if test { "catenary-test" } else { "catenary" };
    let iso = build_iso(&k, &mods, "", name)?;
    println!("{}", iso.display());
    match build_limine_iso(&k, &mods, "", name)? {
        Some(l) => println!("{}", l.display()),
        None => eprintln!("xtask: no `limine` binary on PATH: Limine ISO skipped (nix build .#iso makes it)"),
    }
    Ok(())
}

/// Guest kernel + initramfs (guest-images/, cached by config hash), bundled as one cpio
/// (newc) boot module: `vmlinux` (PVH), `bzImage` (Linux boot protocol), `initramfs.cpio.gz`.
pub fn guest_bundle() -> Result<PathBuf, String> {
    let dir = out_dir().join("guest");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let gi = root().join("guest-images");
    let quiet = |c: &mut Command| -> Result<(), String> {
        let o = c.output().map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!("{:?} failed:\n{}{}", c, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
        }
    };
    eprintln!("xtask: guest kernel (cached by config hash; the first build takes ~10 min)");
    quiet(Command::new("bash").arg(gi.join("build-kernel.sh")).arg(&dir))?;
    let init = build_guest_init()?;
    quiet(Command::new("bash").arg(gi.join("build-initramfs.sh")).arg(&dir).env("CATENARY_INIT", &init))?;
    let mut files = Vec::new();
    for name in ["vmlinux", "bzImage", "initramfs.cpio.gz"] {
        let data = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        files.push((name.to_string(), data));
    }
    let bundle = out_dir().join("guest-bundle.cpio");
    let bytes = cpio_newc(&files);
    if std::fs::read(&bundle).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(&bundle, bytes).map_err(|e| e.to_string())?;
    }
    Ok(bundle)
}

/// `catenary-init` (guest-init/init), the guest's PID 1 for Catenary images: a static
/// executable (static glibc: the toolchain has only the x86_64-unknown-linux-gnu target), built
/// in its own target directory so that its RUSTFLAGS do not invalidate the workspace's cache.
pub fn build_guest_init() -> Result<PathBuf, String> {
    build_static_guest(&["--bin", "catenary-init"]).map(|d| d.join("catenary-init"))
}

/// An example of guest-init/init (`udpsend`, a tool for test images), static like catenary-init.
pub fn build_guest_example(name: &str) -> Result<PathBuf, String> {
    build_static_guest(&["--example", name]).map(|d| d.join("examples").join(name))
}

/// `cargo build --release -p catenary-init WHAT` static, in its own target directory; returns
/// the release directory.
fn build_static_guest(what: &[&str]) -> Result<PathBuf, String> {
    let target_dir = root().join("target").join("guest-init");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Small: it is in every guest's initramfs (decompressed at each boot).
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--quiet", "--release", "-p", "catenary-init", "--target", "x86_64-unknown-linux-gnu"])
        .args(what)
        .status()
        .map_err(|e| format!("cargo build -p catenary-init {}: {e}", what.join(" ")))?;
    if !st.success() {
        return Err(format!("cargo build -p catenary-init {} failed", what.join(" ")));
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release"))
}

/// A cpio "newc" archive (deterministic: fixed inode numbers, mtime 0, mode 0644).
pub fn cpio_newc(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let mut out = Vec::new();
    let entry = |out: &mut Vec<u8>, ino: usize, name: &str, mode: u32, data: &[u8]| {
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out);
        out.extend_from_slice(data);
        pad(out);
    };
    for (i, (name, data)) in files.iter().enumerate() {
        entry(&mut out, i + 1, name, 0o100644, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

pub fn cmd_guest(_args: &[String]) -> Result<(), String> {
    let b = guest_bundle()?;
    println!("{}", b.display());
    Ok(())
}
