//! PXE netboot: `cargo xtask netboot [DIR]` (the non-Nix twin of `nix build .#netboot`, same
//! layout) and the boot tests that start a node from that directory over the network.
//!
//! Layout (a TFTP root; nothing secret in it — no key, the node makes its own at boot):
//!   boot/grub/i386-pc/core.0        GRUB's PXE image for BIOS (DHCP bootfile)
//!   boot/grub/x86_64-efi/core.efi   GRUB's network image for UEFI (DHCP bootfile)
//!   boot/grub/{i386-pc,x86_64-efi}/ GRUB's modules, fetched over TFTP (grub-mknetdir)
//!   boot/grub/grub.cfg              `multiboot2 /boot/catenary.elf` + `module2 /boot/moduleN NAME`
//!   boot/catenary.elf, boot/moduleN the kernel and its boot modules (the guest bundle, and
//!                                   with `--cluster FILE` the cluster file: public keys and
//!                                   seed endpoints only)
//!
//! Tests (`boot_pxe_seabios`, `boot_pxe_ovmf`): QEMU's built-in DHCP/TFTP (`-netdev user,
//! tftp=DIR,bootfile=...`) and iPXE's e1000 option ROM (SeaBIOS) or OVMF's network stack load GRUB,
//! GRUB fetches the test kernel and the ktest module over TFTP, and the in-kernel suite must end
//! with a clean summary, as on the ISO boot paths (test.rs checks the lines).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::qemu::Boot;
use crate::tools::{out_dir, require, require_file};

pub const TESTS: [&str; 2] = ["boot_pxe_seabios", "boot_pxe_ovmf"];
pub const BIOS_BOOTFILE: &str = "boot/grub/i386-pc/core.0";
pub const UEFI_BOOTFILE: &str = "boot/grub/x86_64-efi/core.efi";

/// Write the netboot directory `dir` (replacing it).
pub fn build_netdir(dir: &Path, kernel: &Path, modules: &[(PathBuf, String)], cmdline: &str) -> Result<(), String> {
    let mknetdir = require("grub-mknetdir", "grub-common")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (platform, package) in [("i386-pc", "grub-pc-bin"), ("x86_64-efi", "grub-efi-amd64-bin")] {
        let lib = require_file(&format!("/usr/lib/grub/{platform}"), package)?;
        let out = Command::new(&mknetdir)
            .arg(format!("--net-directory={}", dir.display()))
            .args(["--subdir=boot/grub", "-d"])
            .arg(&lib)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("grub-mknetdir ({platform}) failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    crate::build::write_grub_boot(dir, kernel, modules, cmdline)?;
    for f in [BIOS_BOOTFILE, UEFI_BOOTFILE, "boot/grub/grub.cfg"] {
        if !dir.join(f).is_file() {
            return Err(format!("netboot directory has no {f}"));
        }
    }
    Ok(())
}

pub fn cmd_netboot(args: &[String]) -> Result<(), String> {
    let test = args.iter().any(|a| a == "--test");
    // `--cluster FILE`: the cluster file (public: seed endpoints, admitted keys) as a module;
    // a node booted from here makes its own key and waits to be admitted (docs/boot.md).
    let cluster = args.iter().position(|a| a == "--cluster").map(|i| args.get(i + 1).map(PathBuf::from).ok_or("--cluster FILE")).transpose()?;
    let dir = args.iter().enumerate().find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--cluster")).map(|(_, a)| PathBuf::from(a)).unwrap_or_else(|| out_dir().join("netboot"));
    let k = crate::build::build_kernel(test)?;
    let mut mods = crate::qemu::default_modules(true);
    if let Some(c) = cluster {
        let text = std::fs::read_to_string(&c).map_err(|e| format!("{}: {e}", c.display()))?;
        catenary_net::Cluster::parse(&text).map_err(|e| format!("{}: {e}", c.display()))?;
        mods.push((c, "cluster.txt".into()));
    }
    if mods.is_empty() {
        eprintln!("xtask: no build/guest-bundle.cpio (`cargo xtask guest`): the directory has no guest bundle");
    }
    build_netdir(&dir, &k, &mods, "")?;
    println!("{}", dir.display());
    println!("DHCP bootfile: {BIOS_BOOTFILE} (BIOS), {UEFI_BOOTFILE} (UEFI); TFTP root: {}", dir.display());
    Ok(())
}

/// The two PXE boots of the test kernel (names from TESTS, with their deadlines in seconds),
/// or why they cannot run (a missing tool: the caller records SKIPPED).
pub fn test_boots(kernel: &Path, modules: &[(PathBuf, String)], cmdline: &str) -> Result<Vec<(String, Boot, u64)>, String> {
    // SeaBIOS: Debian's pxe-virtio.rom never offers a boot entry with QEMU 7.2's virtio-net
    // ("No bootable device"), while iPXE's e1000 ROM does; the node boots without a NIC driver
    // for it (the ktest suite needs none).
    let bios_rom = require_file("/usr/lib/ipxe/qemu/efi-e1000.rom", "ipxe-qemu")?;
    let efi_rom = require_file("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu")?;
    let code = require_file("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf")?;
    let vars_template = require_file("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf")?;
    let dir = out_dir().join("netboot-test");
    build_netdir(&dir, kernel, modules, cmdline)?;
    // OVMF writes its variable store: each run gets a fresh copy.
    let vars = out_dir().join("pxe-ovmf-vars.fd");
    std::fs::copy(&vars_template, &vars).map_err(|e| format!("{}: {e}", vars.display()))?;
    let net = |bootfile: &str, nic: &str, rom: &Path| {
        vec![
            "-netdev".to_string(),
            format!("user,id=n0,tftp={},bootfile={bootfile}", dir.display()),
            "-device".into(),
            format!("{nic},netdev=n0,romfile={}", rom.display()),
            "-boot".into(),
            "n".into(),
        ]
    };
    let mut bios = Boot { kernel: None, ..Boot::pvh("q35", PathBuf::new()) };
    bios.smp = 4;
    bios.mem = "512M".into();
    let mut uefi = bios.clone();
    bios.extra = net(BIOS_BOOTFILE, "e1000", &bios_rom);
    uefi.extra = vec![
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ];
    uefi.extra.extend(net(UEFI_BOOTFILE, "virtio-net-pci", &efi_rom));
    Ok(vec![(TESTS[0].into(), bios, 240), (TESTS[1].into(), uefi, 360)])
}
