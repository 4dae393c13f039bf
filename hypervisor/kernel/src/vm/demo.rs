//! The demo microVMs the kernel command line asks for (`vm.*`, `vm2.*`).

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;
use log::{info, warn};
use super::bundle::find_bundle;
use super::report::{report, RunReport};
use super::run::{node_memory, run_inner, NEXT_VM_ID};
use super::debug::DEBUG_VCPUS;
use super::{Image, NetAttach};

/// `vm.xsave=0`: the demo microVMs' CPUID hides XSAVE/AVX (a diagnostic for the open guest
/// triple fault, docs/vmm.md "Soak").
pub(super) static HIDE_XSAVE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// `vm.apic=1`: the demo microVMs get a local APIC, an I/O APIC and an MP table instead of
/// the bare 8259 (still one vCPU; docs/vmm.md "Multi-vCPU microVMs").
pub(super) static APIC_MODE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// `vm.timeline=1` (`cargo xtask bench vm`): the demo microVMs record their boot timeline
/// (exits by group per 10 ms, the node times of the guest's phase lines) and log it at the end.
pub(super) static TIMELINE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Most copies of the demo microVM `vm.count` starts.
pub const MAX_DEMO_VMS: usize = 64;

/// `vm.count=N`: how many copies of the demo microVM the node starts (1 by default, at most
/// `MAX_DEMO_VMS`; 0 with `vm=none`). Each copy is the same `vm.*` configuration and goes
/// through the same creation path; copy `i` (from 0) is named `demo` for 0, else `demo-<i+1>`.
pub fn demo_count(cmdline: &str) -> usize {
    crate::cmdline::get(cmdline, "vm.count").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).min(MAX_DEMO_VMS)
}

/// Boot copy `index` (from 0) of the demo Linux microVM from the bundle, as the command line
/// asks (`vm.*` words; `vm.count`).
pub fn run_demo_nth(cmdline: &str, modules: &[catenary_bootinfo::Module], index: usize) -> Option<RunReport> {
    run_demo_as("vm", "demo", index, cmdline, modules)
}

/// Whether the command line asks for a second demo microVM (`vm2.*` words), which runs beside
/// the first one (the hostile-guest tests run an attacker beside a healthy VM this way).
pub fn second_demo_wanted(cmdline: &str) -> bool {
    crate::cmdline::get(cmdline, "vm2").is_some() || crate::cmdline::get(cmdline, "vm2.cmd").is_some()
}

/// The second demo microVM: the same options as the first, read from `vm2.*`.
pub fn run_demo2(cmdline: &str, modules: &[catenary_bootinfo::Module]) -> Option<RunReport> {
    run_demo_as("vm2", "demo2", 0, cmdline, modules)
}

/// A demo microVM configured by the command-line words `<key>`, `<key>.mem`, `<key>.cmd`,
/// `<key>.exit`, `<key>.console`, `<key>.disk`, `<key>.net`, `<key>.ipc`, `<key>.debug`, `<key>.boot`,
/// `<key>.vcpus`.
fn run_demo_as(key: &str, default_name: &str, index: usize, cmdline: &str, modules: &[catenary_bootinfo::Module]) -> Option<RunReport> {
    let opt = |name: &str| -> Option<&str> {
        if name.is_empty() {
            crate::cmdline::get(cmdline, key)
        } else {
            crate::cmdline::get(cmdline, &format!("{key}.{name}"))
        }
    };
    let base = opt("").unwrap_or(default_name);
    if base == "none" {
        return None;
    }
    let name = if index == 0 { String::from(base) } else { format!("{base}-{}", index + 1) };
    let want = name.as_str();
    if opt("xsave") == Some("0") {
        HIDE_XSAVE.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    if opt("apic") == Some("1") {
        APIC_MODE.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    if opt("timeline") == Some("1") {
        TIMELINE.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    let Some(bundle) = find_bundle(modules) else {
        info!(target: "vmm", "no guest bundle boot module: no microVM started (build one with `cargo xtask guest`)");
        return None;
    };
    let mem: u64 = opt("mem").and_then(|m| m.parse().ok()).unwrap_or(256);
    // `vm.console=ttyS0`: the guest's console on the 16550 instead of hvc0 (a guest that
    // resets its own virtio devices, e.g. the hostile-userland test, would silence hvc0).
    let mut gcmd = String::from(if opt("console") == Some("ttyS0") { catenary_vmm::LINUX_CMDLINE_SERIAL } else { catenary_vmm::LINUX_CMDLINE });
    // `vm.image=1`: run the Catenary image in the bundle (image/rootfs.squashfs +
    // image/config.json, `cargo xtask test` packs one) under catenary-init (docs/guest-init.md).
    let image = if opt("image").is_some_and(|v| v != "0") {
        match (bundle.image_rootfs, bundle.image_config) {
            (Some(r), Some(c)) => Some((r, c)),
            _ => {
                warn!(target: "vmm", "microVM {want}: vm.image: the guest bundle holds no image/rootfs.squashfs + image/config.json");
                return None;
            }
        }
    } else {
        None
    };
    if image.is_some() {
        // `cargo xtask bench workload` reads this and the "memory at its end" line.
        info!(target: "vmm", "microVM {want}: create: {}", node_memory());
        gcmd.push_str(" rdinit=/sbin/catenary-init");
    }
    if let Some(c) = opt("cmd") {
        gcmd.push_str(" catenary.cmd=");
        gcmd.push_str(c);
    }
    if let Some(mode) = opt("exit") {
        gcmd.push_str(" catenary.exit=");
        gcmd.push_str(mode);
    }
    // `vm.disk=<MiB>`: attach a virtio-blk disk whose first sector starts with a marker line.
    // The image's root, read-only (catenary-init mounts /dev/vda as squashfs), read from the
    // boot module itself like the service path reads the store's frames: no per-VM copy.
    let shared_disk = image.map(|(rootfs, _)| catenary_vmm::virtio::blk::SharedBytes(alloc::sync::Arc::new(rootfs)));
    let disk = if image.is_some() {
        None
    } else { opt("disk").and_then(|m| m.parse::<usize>().ok()).map(|mib| {
        let mut d = alloc::vec![0u8; mib.clamp(1, 64) << 20];
        let marker = b"catenary-virtio-blk-marker\n";
        d[..marker.len()].copy_from_slice(marker);
        (d, true)
    }) };
    // `vm.net=1`: a virtio-net device and a /128 of the node's /64, routed by netd.
    let net = match opt("net") {
        Some(v) if v != "0" => {
            // (The copy index keeps the MACs of `vm.count` copies apart: they start at once.)
            let mac = [0x02, 0xca, 0x7e, 0x00, 0x01u8.wrapping_add(index as u8), NEXT_VM_ID.load(core::sync::atomic::Ordering::Relaxed) as u8];
            // `vm.ipc=1` (`vm2.ipc=1`): the node lets this guest use fabric IPC (default: blocked)
            let ipc = opt("ipc") == Some("1");
            match crate::net::attach_vm(mac, 60_000_000_000, ipc) {
                Some(addr) => {
                    info!(target: "vmm", "microVM {want}: virtio-net MAC {mac:02x?}, address {addr}/128 (routed by netd)");
                    gcmd.push_str(&format!(" catenary.addr={addr}"));
                    Some(NetAttach { mac, addr })
                }
                None => {
                    warn!(target: "vmm", "microVM {want}: vm.net: networking is not up: no network device");
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(d) = opt("debug") {
        DEBUG_VCPUS.store(true, Ordering::Relaxed);
        // (earlyprintk: the guest's early messages on the 16550 too, which a VM that dies before
        // its virtio console is up would otherwise take with it. `vm.debug=quiet` leaves the
        // guest's command line alone: the 16550 copy slows its console down.)
        if d != "quiet" {
            gcmd.push_str(" loglevel=7 earlyprintk=serial,ttyS0");
        }
    }
    // A Catenary image's run config rides in a cpio after the initramfs in guest memory.
    let tail = match image {
        Some((_, config)) => {
            let node = catenary_vmm::workload::node_json(want, net.map(|n| n.addr));
            match catenary_vmm::workload::workload_initrd_tail(config, node.as_bytes()) {
                Ok(v) => v,
                Err(_) => {
                    warn!(target: "vmm", "microVM {want}: no memory for its initrd");
                    return None;
                }
            }
        }
        None => alloc::vec::Vec::new(),
    };
    let initrd = bundle.initramfs;
    let boot = match (opt("boot"), bundle.vmlinux, bundle.bzimage) {
        (Some("bzimage"), _, Some(bz)) | (_, None, Some(bz)) => Image::LinuxBzImage { bzimage: bz, initrd, tail, cmdline: &gcmd },
        (_, Some(vml), _) => Image::LinuxPvh { vmlinux: vml, initrd, tail, cmdline: &gcmd },
        _ => {
            warn!(target: "vmm", "guest bundle has no kernel");
            return None;
        }
    };
    // `vm.vcpus=N`: N vCPUs (with the APICs and an MP table), each its own task.
    let vcpus: u8 = opt("vcpus").and_then(|v| v.parse().ok()).unwrap_or(1);
    let r = run_inner(want, boot, mem, disk, net, None, image.is_some(), None, None, shared_disk, vcpus);
    if let Some(n) = net {
        crate::net::detach_vm(n.addr);
    }
    report(want, &r);
    Some(r)
}
