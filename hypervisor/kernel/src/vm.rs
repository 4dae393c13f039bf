//! The microVM runner: create a microVM (guest RAM, device model, vCPU), run its vCPU loop, and
//! destroy it, reporting why it ended. Backend-neutral: the vCPU is SVM or VMX behind
//! `catenary_arch::virt::Vcpu`; the device model is `catenary_vmm::MicroVm`.
//!
//! Guest images come from the boot module "guest bundle": a cpio archive holding `vmlinux`
//! (PVH entry), `bzImage` (Linux boot protocol) and `initramfs.cpio.gz`.
//!
//! Kernel command line: `vm=none` skips the demo microVM; `vm.boot=pvh|bzimage`,
//! `vm.mem=<MiB>`, `vm.cmd=<base64 shell command>`, `vm.exit=poweroff|reboot|halt`,
//! `vm.disk=<MiB>` (a read-only virtio-blk disk with a marker line) and `vm.debug` shape it;
//! `vm.count=N` starts N copies of it (`demo`, `demo-2`, …), each its own vCPU task on any CPU.
//! `vm.net=1` gives the demo microVM a virtio-net device and a /128 of the node's /64
//! (`net::attach_vm`); `netd` routes it (the guest gets `catenary.addr=<addr>` on its command
//! line; with it the guest's init configures `eth0`, or `vm.cmd` does).
//! `vm.image=1` runs the Catenary image the bundle carries (`image/rootfs.squashfs`,
//! `image/config.json`) under `catenary-init`: the root filesystem as a read-only virtio-blk
//! disk, the run config appended to the initramfs, the workload channel for its log and exit
//! status (docs/guest-init.md). (Stopping such a VM is the workload service's: its VMs
//! take stop requests through their [`VmControl`].)
//!
//! A VM started with a [`VmControl`] (`run_workload_ctl`) takes signal, stop and kill requests
//! from any task while it runs (`vmcontrol`).

use alloc::format;
use alloc::string::String;
use catenary_arch::virt::{self, GuestRam, Vcpu, VirtError};
use catenary_arch::{cpu, time};
use catenary_vmm::cpu::{Exit, StopReason, VcpuState};
use catenary_vmm::{Action, EventDecision, MicroVm, VmConfig, VmError};
use crate::vmconsole::VmConsole;
pub use crate::vmcontrol::VmControl;
use catenary_vmm::stop::{StopAction, StopPolicy};
use catenary_vmm::guest_proto::wire::WorkloadExit;
use core::sync::atomic::{AtomicBool, Ordering};
use log::{info, warn};

/// How a microVM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Stopped(StopReason),
    /// The hypervisor could not create or enter it.
    Failed(String),
    /// A host allocation the guest caused (or its creation needed) failed: only this VM ends.
    OutOfMemory,
    /// The node stopped it (`run_stoppable`).
    Killed,
}

pub struct RunReport {
    pub ended: Ended,
    pub exits: u64,
    pub wall_ns: u64,
    /// Host memory this microVM used beyond its guest RAM (vCPU structures, device model).
    pub overhead_bytes: u64,
    pub exits_by_reason: alloc::vec::Vec<(&'static str, u64)>,
    /// Time from creation to the guest printing `catenary-init: ready` (Linux guests).
    pub ready_ns: Option<u64>,
    /// Guest RAM the guest (or the loader) actually touched, i.e. populated chunks.
    pub touched_bytes: u64,
    /// The guest's console lines as printed: the first and last 8 KiB (`vmconsole`).
    pub console: alloc::vec::Vec<String>,
    /// Console bytes the guest wrote; those not printed (ring overwrites + discarded at the
    /// end); those its ring overwrote while it ran.
    pub console_written: u64,
    pub console_dropped: u64,
    pub console_overwritten: u64,
    /// The CPUs its vCPU entered the guest on and how often it moved between them.
    pub placement: virt::Placement,
    /// Port exits by port (the first 256 distinct ports): test guests count progress this way.
    pub io_by_port: alloc::vec::Vec<(u16, u64)>,
    /// What the guest init reported on the workload channel (VMs from a Catenary image).
    pub workload_exit: Option<WorkloadExit>,
    pub workload_ready: bool,
    /// Where the vCPU loop's time went, in TSC cycles (`cargo xtask bench exit`).
    pub cycles: LoopCycles,
}

/// TSC cycles the vCPU loop spent, summed over its passes that ended in an exit the device
/// model handled: in `Vcpu::run` (world switch there and back plus the guest's own time), in
/// `MicroVm::handle_exit` (decode, emulation), and in the rest (state copies, polling, console).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoopCycles {
    pub passes: u64,
    pub run: u64,
    pub handle: u64,
    pub rest: u64,
}

fn host_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d) = cpu::cpuid(leaf, sub);
    [a, b, c, d]
}

/// What to load into the microVM.
pub enum Image<'a> {
    /// Linux via PVH (uncompressed vmlinux) or the 64-bit boot protocol (bzImage).
    LinuxPvh { vmlinux: &'a [u8], initrd: &'a [u8], cmdline: &'a str },
    LinuxBzImage { bzimage: &'a [u8], initrd: &'a [u8], cmdline: &'a str },
    /// Raw code loaded at `load` and entered in 32-bit flat protected mode at `load`,
    /// with EBX = `arg` (small test guests).
    Raw { code: &'a [u8], load: u64, arg: u32 },
}

static NEXT_VM_ID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

/// `vm.xsave=0`: the demo microVMs' CPUID hides XSAVE/AVX (a diagnostic for the open guest
/// triple fault, docs/vmm.md "Soak").
static HIDE_XSAVE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// `vm.apic=1`: the demo microVMs get a local APIC, an I/O APIC and an MP table instead of
/// the bare 8259 (still one vCPU; docs/vmm.md "Multi-vCPU microVMs").
static APIC_MODE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// MicroVMs whose vCPU loop is running, and microVMs that have ended since boot (the node's
/// heartbeat reports both).
static VMS_RUNNING: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static VMS_ENDED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// (running, ended since boot)
pub fn vm_counts() -> (usize, usize) {
    use core::sync::atomic::Ordering::Relaxed;
    (VMS_RUNNING.load(Relaxed), VMS_ENDED.load(Relaxed))
}

/// Create, run to completion and destroy one microVM. Its console lines are printed as
/// `[vm:<name>] ...`. Never panics on guest behaviour.
pub fn run(name: &str, image: Image, ram_mib: u64) -> RunReport {
    run_with(name, image, ram_mib, None)
}

/// Like `run`, with an optional virtio-blk disk image (`(bytes, read_only)`).
pub fn run_with(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>) -> RunReport {
    run_full(name, image, ram_mib, disk, None)
}

/// A microVM's network attachment: its MAC and its /128 (routed by `netd`).
#[derive(Clone, Copy)]
pub struct NetAttach {
    pub mac: [u8; 6],
    pub addr: core::net::Ipv6Addr,
}

/// Like `run_with`, with an optional virtio-net device linked to `netd`.
pub fn run_full(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>) -> RunReport {
    run_inner(name, image, ram_mib, disk, net, None, false, None, None)
}

/// Like `run_full`, for a guest whose init is `catenary-init`: the VM gets the workload
/// channel (docs/guest-init.md), whose log and exit status land in the report.
pub fn run_workload(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>) -> RunReport {
    run_inner(name, image, ram_mib, disk, net, None, true, None, None)
}

/// Like `run_workload`, controlled through `ctl` while it runs: `ctl.request_signal`,
/// `ctl.request_stop` (StopSignal, SIGKILL after the grace period, then power-off) and
/// `ctl.request_kill` from any task (`vmcontrol`, docs/guest-init.md "Stopping a workload").
/// `ctl` reports the VM running once it is about to enter the guest and ended when this
/// returns (whatever the reason). The run report says how it ended: the workload's exit
/// status (`workload_exit`) when the init reported one, `Ended::Killed` when the node powered it
/// off.
pub fn run_workload_ctl(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>, ctl: &VmControl) -> RunReport {
    run_inner(name, image, ram_mib, disk, net, None, true, Some(ctl), None)
}

/// Like `run`; the VM ends (`Ended::Killed`) soon after `stop` becomes true.
pub fn run_stoppable(name: &str, image: Image, ram_mib: u64, stop: &AtomicBool) -> RunReport {
    run_inner(name, image, ram_mib, None, None, Some(stop), false, None, None)
}

/// Like `run_stoppable`, with a workload VM's devices (the workload channel too): the
/// memory-per-microVM bench (`bench=vmmem`, `crate::vmmembench`).
pub fn run_stoppable_workload(name: &str, image: Image, ram_mib: u64, stop: &AtomicBool) -> RunReport {
    run_inner(name, image, ram_mib, None, None, Some(stop), true, None, None)
}

/// Marks the control block ended however `run_inner` returns.
struct EndOnDrop<'a>(Option<&'a VmControl>);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.finished();
        }
    }
}

/// A workload's microVM, as `SYS_VM`'s `OP_CREATE` asks (docs/workloads.md): the image's root
/// filesystem as a read-only virtio-blk disk over the store's frames (shared by every VM of
/// the image), the run config and `node_json` appended to the initramfs, the workload channel,
/// a virtio-net device linked to `netd` with `net` (its /128 is in `node_json`);
/// its log lines, READY and touched memory go to the owner's event queue as VM `handle`
/// (`task::vmctl`). Stopped, signalled and killed through `ctl` (`vmcontrol`).
#[allow(clippy::too_many_arguments)]
pub fn run_image_vm(handle: u64, name: &str, mem_mib: u64, rootfs: catenary_vmm::virtio::blk::SharedBytes, config: &[u8], node_json: &str, net: Option<NetAttach>, ctl: &VmControl, touched: &core::sync::atomic::AtomicU64) -> RunReport {
    let failed = |why: &str| {
        let mut r = empty_report();
        r.ended = Ended::Failed(String::from(why));
        r
    };
    // `cargo xtask bench workload` reads this and the "memory at its end" line.
    info!(target: "vmm", "microVM {name}: create: {}", node_memory());
    let Some(g) = crate::vmstore::guest_kernel() else { return failed("no guest kernel among the boot modules") };
    let initrd = match catenary_vmm::workload::workload_initrd(g.initramfs, config, node_json.as_bytes()) {
        Ok(v) => v,
        Err(_) => return failed("no memory for its initrd"),
    };
    let cmdline = format!("{} rdinit=/sbin/catenary-init", catenary_vmm::LINUX_CMDLINE);
    let cmdline = cmdline.as_str();
    let boot = match (g.vmlinux, g.bzimage) {
        (Some(vml), _) => Image::LinuxPvh { vmlinux: vml, initrd: &initrd, cmdline },
        (None, Some(bz)) => Image::LinuxBzImage { bzimage: bz, initrd: &initrd, cmdline },
        _ => return failed("the guest bundle has no kernel"),
    };
    run_inner(name, boot, mem_mib, None, net, None, true, Some(ctl), Some(&Sink { handle, touched, rootfs }))
}

/// A workload VM's shared root disk, and where its events go (`task::vmctl`).
pub struct Sink<'a> {
    pub handle: u64,
    /// Guest RAM touched so far (`OP_TOUCHED`), updated as chunks are populated.
    pub touched: &'a core::sync::atomic::AtomicU64,
    pub rootfs: catenary_vmm::virtio::blk::SharedBytes,
}

fn empty_report() -> RunReport {
    RunReport { ended: Ended::Failed(String::new()), exits: 0, wall_ns: 0, overhead_bytes: 0, exits_by_reason: alloc::vec::Vec::new(), ready_ns: None, touched_bytes: 0, console: alloc::vec::Vec::new(), console_written: 0, console_dropped: 0, console_overwritten: 0, placement: virt::Placement::default(), io_by_port: alloc::vec::Vec::new(), workload_exit: None, workload_ready: false, cycles: LoopCycles::default() }
}

#[allow(clippy::too_many_arguments)]
fn run_inner(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>, stop: Option<&AtomicBool>, channel: bool, ctl: Option<&VmControl>, sink: Option<&Sink>) -> RunReport {
    let _end = EndOnDrop(ctl);
    let t0 = time::now_ns();
    let mut report = empty_report();
    // Never a world switch on a CPU where it is unsafe (vcpu_affinity): move this task first.
    if crate::task::restrict_current_affinity(vcpu_affinity(catenary_arch::smp::online_cpus())).is_err() {
        report.ended = Ended::Failed(alloc::format!("{name}: its vCPU task is pinned to CPU 0, where QEMU TCG cannot run world switches safely (docs/vmm.md)"));
        report.wall_ns = time::now_ns() - t0;
        return report;
    }
    let ram_size = ram_mib << 20;
    let mut ram = match GuestRam::new(ram_size) {
        Ok(r) => r,
        Err(e) => {
            report.ended = Ended::Failed(format!("guest RAM: {e:?}"));
            return report;
        }
    };
    let t_ram = time::now_ns();
    let tsc_khz = (time::tsc_hz() / 1000) as u32;
    let mut cfg = VmConfig::new(name, ram_size, tsc_khz);
    cfg.virtio_blk = disk;
    cfg.virtio_blk_shared = sink.map(|s| s.rootfs.clone());
    cfg.virtio_net = net.map(|n| n.mac);
    cfg.workload_channel = channel;
    cfg.apic = APIC_MODE.load(core::sync::atomic::Ordering::Relaxed) && !matches!(image, Image::Raw { .. });
    // Both backends switch XCR0 and the full XSAVE state (arch guest_switch.rs): the guest
    // may see XSAVE/AVX when the node enabled it.
    cfg.cpuid.xsave = catenary_arch::uspace::xcr0() & 0b111 == 0b111 && !HIDE_XSAVE.load(core::sync::atomic::Ordering::Relaxed);
    let (mut vm, mut console) = match (MicroVm::try_new(cfg, &host_cpuid), VmConsole::try_new(name, t0)) {
        (Ok(vm), Some(mut c)) => {
            c.sink = sink.map(|s| s.handle);
            (vm, c)
        }
        _ => {
            report.ended = Ended::OutOfMemory;
            return report;
        }
    };
    let setup = match image {
        Image::LinuxPvh { vmlinux, initrd, cmdline } => {
            let cmd = format!("{} {}", cmdline, vm.kernel_cmdline_extras());
            catenary_vmm::load_pvh(&mut ram, vmlinux, Some(initrd), cmd.as_bytes(), ram_size).map(|b| b.cpu)
        }
        Image::LinuxBzImage { bzimage, initrd, cmdline } => {
            let cmd = format!("{} {}", cmdline, vm.kernel_cmdline_extras());
            catenary_vmm::load_bzimage(&mut ram, bzimage, Some(initrd), cmd.as_bytes(), ram_size).map(|b| b.cpu)
        }
        Image::Raw { code, load, arg } => {
            use catenary_vmm::mem::GuestMemory;
            match ram.write(load, code) {
                Ok(()) => {
                    let mut s = flat32(load);
                    s.rbx = arg as u64;
                    Ok(s)
                }
                Err(e) => Err(catenary_vmm::BootError::Memory(e)),
            }
        }
    };
    if let Err(e) = vm.write_platform_tables(&mut ram) {
        report.ended = Ended::Failed(format!("MP table: {e:?}"));
        return report;
    }
    let state = match setup {
        Ok(s) => s,
        Err(e) => {
            report.ended = Ended::Failed(format!("loading the guest: {e:?}"));
            return report;
        }
    };
    let t_loaded = time::now_ns();
    let id = NEXT_VM_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut vcpu = match virt::create_vcpu(&ram, id) {
        Ok(v) => v,
        Err(e) => {
            report.ended = Ended::Failed(format!("vCPU: {e:?}"));
            return report;
        }
    };
    if !vcpu.lazy_ram() {
        ram.populate_all();
    }
    info!(target: "vmm", "microVM {name} (id {id}): {} MiB RAM, backend {}, created in {} us (RAM {} us, image load {} us)",
        ram_mib, vcpu.backend(), (time::now_ns() - t0) / 1000, (t_ram - t0) / 1000, (t_loaded - t_ram) / 1000);
    vcpu.set_state(&state);
    if let Some(c) = ctl {
        c.started(vm.has_channel());
    }
    VMS_RUNNING.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let ended = vcpu_loop(&mut vm, &mut *vcpu, &mut ram, &mut console, name, net, stop, ctl, sink.map(|s| s.touched), &mut report.cycles);
    VMS_RUNNING.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    VMS_ENDED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    console.drain_vm(&mut vm, time::now_ns(), true);
    report.ready_ns = console.ready;
    report.workload_exit = console.workload.exit();
    report.workload_ready = console.workload.ready();
    report.console = console.lines();
    report.console_written = vm.console().written;
    report.console_dropped = vm.console().dropped + console.discarded;
    report.console_overwritten = vm.console().dropped;
    report.exits = vm.stats().total_exits();
    report.exits_by_reason = vm.stats().exits_by_reason().collect();
    report.overhead_bytes = vcpu.overhead_bytes() + core::mem::size_of::<MicroVm>() as u64;
    report.touched_bytes = ram.populated_bytes();
    report.placement = vcpu.placement();
    report.io_by_port = vm.stats().io_by_port.iter().map(|(p, n)| (*p, *n)).collect();
    report.wall_ns = time::now_ns() - t0;
    if channel {
        // Everything this VM holds is still allocated here (its RAM, vCPU, device model, disk).
        info!(target: "vmm", "microVM {name}: memory at its end: {}; guest RAM {} KiB ({} KiB touched)", node_memory(), ram.size() / 1024, report.touched_bytes / 1024);
    }
    report.ended = ended;
    // Dropping the vCPU and the RAM returns every frame to the allocator.
    drop(vcpu);
    drop(ram);
    report
}

/// The node's time and memory now: free frames and the kernel heap (bytes allocated, bytes it
/// holds), for before/after figures (`cargo xtask bench workload`, docs/images.md).
fn node_memory() -> String {
    format!("node time {} us, free frames {}, heap {} of {} bytes",
        time::now_ns() / 1000, catenary_arch::memory::stats().free, catenary_arch::heap::used_bytes(), catenary_arch::heap::size())
}

/// Move frames between the guest's virtio-net device and `netd`.
fn net_sync(vm: &mut MicroVm, ram: &mut GuestRam, net: Option<NetAttach>) {
    let Some(n) = net else { return };
    let tx = vm.take_net_tx();
    if !tx.is_empty() {
        crate::net::vm_send(n.addr, tx);
    }
    for f in crate::net::vm_take(n.addr) {
        vm.push_net_rx(&f, ram);
    }
}

/// Longest a halted vCPU's task sleeps before polling the device model again.
const HALT_POLL_NS: u64 = 1_000_000;

/// Apply the node's requests (`ctl`) and the stop policy's deadlines; `Some` when the node
/// powers the VM off now.
fn apply_control(ctl: Option<&VmControl>, policy: &mut StopPolicy, vm: &mut MicroVm, ram: &mut GuestRam, name: &str) -> Option<Ended> {
    use catenary_vmm::guest_proto::wire;
    let ctl = ctl?;
    let now = time::now_ns();
    let mut actions = [None, None];
    if let Some(p) = ctl.take() {
        for signo in (1..=wire::MAX_SIGNAL).filter(|s| p.signals & (1u64 << (s - 1)) != 0) {
            let sent = wire::encode_signal(signo).is_some_and(|f| vm.send_to_init(&f, ram));
            info!(target: "vmm", "microVM {name}: signal {signo} {}", if sent { "sent to its init" } else { "not sent: its init has not read the earlier requests" });
        }
        if p.kill {
            actions[0] = policy.kill();
        } else if let Some(grace) = p.stop_grace {
            actions[0] = policy.request(now, grace, vm.has_channel());
            if actions[0].is_some() {
                info!(target: "vmm", "microVM {name}: stop requested (grace {} ms)", grace / 1_000_000);
            }
        }
    }
    actions[1] = policy.poll(now);
    for a in actions.into_iter().flatten() {
        match a {
            StopAction::SendStop => {
                let sent = vm.send_to_init(&wire::encode_stop(), ram);
                info!(target: "vmm", "microVM {name}: {}", if sent { "the image's StopSignal sent to its init" } else { "STOP not sent: its init has not read the earlier requests" });
            }
            StopAction::SendSignal(s) => {
                let sent = wire::encode_signal(s).is_some_and(|f| vm.send_to_init(&f, ram));
                info!(target: "vmm", "microVM {name}: still running after its grace period: signal {s} {}", if sent { "sent to its init" } else { "not sent" });
            }
            StopAction::PowerOff => {
                info!(target: "vmm", "microVM {name}: powered off by the node");
                return Some(Ended::Killed);
            }
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn vcpu_loop(vm: &mut MicroVm, vcpu: &mut dyn Vcpu, ram: &mut GuestRam, console: &mut VmConsole, name: &str, net: Option<NetAttach>, stop: Option<&AtomicBool>, ctl: Option<&VmControl>, touched: Option<&core::sync::atomic::AtomicU64>, cycles: &mut LoopCycles) -> Ended {
    let mut st = vcpu.state();
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let mut policy = StopPolicy::new();
    // Which RAM chunks the vCPU maps: those populated when it was created (lazy backends map
    // the rest on first touch). The device model can populate a chunk on its own (virtio
    // writes into guest buffers), so "populated" does not imply "mapped".
    let mut mapped: alloc::vec::Vec<bool> = (0..ram.chunks().len()).map(|i| !vcpu.lazy_ram() || ram.is_populated(i)).collect();
    loop {
        let t_pass = cpu::rdtsc();
        if stopped() {
            return Ended::Killed;
        }
        if let Some(e) = apply_control(ctl, &mut policy, vm, ram, name) {
            return e;
        }
        let now = time::now_ns();
        vm.poll(now);
        let ev = if vcpu.reinjection_pending() { EventDecision::None } else { vm.next_event(&st) };
        let t_run = cpu::rdtsc();
        let run = vcpu.run(ev);
        let t_ran = cpu::rdtsc();
        let exit = match run {
            Ok(e) => e,
            Err(VirtError::EntryFailed(code)) => return Ended::Failed(format!("VM entry failed ({code:#x})")),
            Err(e) => return Ended::Failed(format!("{e:?}")),
        };
        // Always read the state back first: the next event decision depends on the guest's
        // *current* RFLAGS.IF and interrupt shadow (injecting an interrupt into a guest that
        // just executed CLI deadlocks it inside its own critical section).
        st = vcpu.state();
        if let Exit::Mmio { gpa, .. } | Exit::PageWalkFault { gpa } = exit {
            // First touch of a RAM chunk the loader did not populate (by an instruction or by
            // the guest's page walk): zero it, map it, retry.
            if gpa < ram.size() {
                let idx = (gpa / virt::CHUNK) as usize;
                if !mapped[idx] {
                    vcpu.map_ram_chunk(idx);
                    mapped[idx] = true;
                    if let Some(t) = touched {
                        t.store(ram.populated_bytes(), Ordering::Relaxed);
                    }
                    continue;
                }
            }
        }
        if matches!(exit, Exit::ExternalInterrupt) {
            // The host took its interrupt when the backend re-enabled interrupts; count it.
            let _ = vm.handle_exit(exit, &mut st, ram, now);
            continue;
        }
        let now = time::now_ns();
        let t_handle = cpu::rdtsc();
        let action = vm.handle_exit(exit, &mut st, ram, now);
        let t_handled = cpu::rdtsc();
        vcpu.set_state(&st);
        console.drain_vm(vm, now, false);
        net_sync(vm, ram, net);
        let t_end = cpu::rdtsc();
        cycles.passes += 1;
        cycles.run += t_ran.wrapping_sub(t_run);
        cycles.handle += t_handled.wrapping_sub(t_handle);
        cycles.rest += t_end.wrapping_sub(t_pass).wrapping_sub(t_ran.wrapping_sub(t_run)).wrapping_sub(t_handled.wrapping_sub(t_handle));
        if vm.out_of_memory() {
            return Ended::OutOfMemory;
        }
        match action {
            Ok(Action::Resume) => {}
            Ok(Action::Halt) => {
                // Wait (host halts between timer ticks) until the guest has an interrupt.
                loop {
                    net_sync(vm, ram, net);
                    if vm.out_of_memory() {
                        return Ended::OutOfMemory;
                    }
                    vm.poll(time::now_ns());
                    console.drain_vm(vm, time::now_ns(), false);
                    // (An interrupt the backend still holds armed for the guest counts too:
                    // `sti; hlt` exits before the guest takes it.)
                    if vm.pending_irq().is_some() || vm.pending_exception().is_some() || vcpu.reinjection_pending() {
                        break;
                    }
                    if let Some(r) = vm.stop_reason().cloned() {
                        return Ended::Stopped(r);
                    }
                    if stopped() {
                        return Ended::Killed;
                    }
                    if let Some(e) = apply_control(ctl, &mut policy, vm, ram, name) {
                        return e;
                    }
                    // Block this task (other tasks run on this CPU meanwhile) until the
                    // device model's next deadline, at most 1 ms; the sleep ends on a host tick.
                    let now = time::now_ns();
                    let wait = vm.next_deadline_ns().map(|d| d.saturating_sub(now)).unwrap_or(HALT_POLL_NS).min(HALT_POLL_NS);
                    if wait > 0 {
                        crate::task::sleep_ns(wait);
                    }
                }
            }
            Ok(Action::Stop(r)) => {
                if r == StopReason::TripleFault {
                    // What the guest was doing when it shut down (soak failures keep this line).
                    warn!(target: "vmm", "{name}: triple fault at rip {:#x} (cs {:#x}, cpl {}) rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} xcr0 {:#x} idtr {:#x}+{:#x} gdtr {:#x}+{:#x} tr {:#x}",
                        st.rip, st.cs.selector, st.cpl, st.rsp, st.rflags, st.cr0, st.cr2, st.cr3, st.cr4, st.efer, st.xcr0,
                        st.idtr.base, st.idtr.limit, st.gdtr.base, st.gdtr.limit, st.tr.base);
                    log_guest_walks(&st, ram, &mapped, name);
                }
                return Ended::Stopped(r);
            }
            Err(VmError::OutOfMemory) => return Ended::OutOfMemory,
            Err(e) => {
                warn!(target: "vmm", "{name}: device model rejected an exit: {e:?}");
                return Ended::Failed(format!("{e:?}"));
            }
        }
    }
}

/// After a guest triple fault: the guest's own page walk (as its tables are now) of what the
/// last event delivery touched (its IDT's #DF/#PF gates, RIP, RSP, the TSS), and whether each
/// table lies in a chunk our nested tables map. A walk that succeeds now means the delivery
/// fault was not in the guest's tables as they ended up (docs/vmm.md "Soak").
fn log_guest_walks(st: &VcpuState, ram: &GuestRam, mapped: &[bool], name: &str) {
    use catenary_vmm::mem::GuestMemoryExt;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if st.cr0 & (1 << 31) == 0 || st.efer & (1 << 10) == 0 {
        return;
    }
    let levels: u32 = if st.cr4 & (1 << 12) != 0 { 5 } else { 4 };
    // (Every address here is the guest's: wrapping arithmetic, the test build traps overflow.)
    let targets = [("idt#DF", st.idtr.base.wrapping_add(0x80)), ("idt#PF", st.idtr.base.wrapping_add(0xe0)), ("rip", st.rip), ("rsp", st.rsp), ("tss", st.tr.base.wrapping_add(4))];
    for (what, va) in targets {
        let mut line = format!("{name}: walk {what} {va:#x}:");
        let mut table = st.cr3 & ADDR;
        for l in (1..=levels).rev() {
            let shift = 12 + 9 * (l - 1);
            let at = table + ((va >> shift) & 511) * 8;
            let chunk = (at / virt::CHUNK) as usize;
            let m = mapped.get(chunk).copied().unwrap_or(false);
            let Ok(e) = ram.read_u64(at) else {
                line.push_str(&format!(" L{l}@{at:#x} outside RAM"));
                break;
            };
            line.push_str(&format!(" L{l}@{at:#x}{}={e:#x}", if m { "" } else { "(chunk unmapped)" }));
            if e & 1 == 0 {
                line.push_str(" not present");
                break;
            }
            if l == 1 || (l <= 3 && e & 0x80 != 0) {
                let size = 1u64 << shift;
                let pa = (e & ADDR & !(size - 1)) | (va & (size - 1));
                let pm = mapped.get((pa / virt::CHUNK) as usize).copied().unwrap_or(false);
                line.push_str(&format!(" -> {pa:#x}{}", if pm { "" } else { " (chunk unmapped)" }));
                break;
            }
            table = e & ADDR;
        }
        warn!(target: "vmm", "{line}");
    }
}

/// Log the outcome of a run the way operators read it.
pub fn report(name: &str, r: &RunReport) {
    match &r.ended {
        Ended::Stopped(reason) => info!(target: "vmm", "microVM {name} ended: {reason} ({} exits, {} ms)", r.exits, r.wall_ns / 1_000_000),
        Ended::Failed(why) => warn!(target: "vmm", "microVM {name} failed: {why}"),
        Ended::Killed => info!(target: "vmm", "microVM {name} stopped by the node ({} exits, {} ms)", r.exits, r.wall_ns / 1_000_000),
        Ended::OutOfMemory => warn!(target: "vmm", "microVM {name} ended: out of host memory (only this VM stopped)"),
    }
    match (r.workload_exit, r.workload_ready) {
        (Some(e), _) => info!(target: "vmm", "microVM {name}: workload {e}"),
        (None, true) => warn!(target: "vmm", "microVM {name}: workload started but reported no exit status"),
        (None, false) => {}
    }
    if r.console_dropped > 0 {
        info!(target: "vmm", "microVM {name}: console {} bytes written, {} dropped", r.console_written, r.console_dropped);
    }
    if r.placement.cpus != 0 {
        info!(target: "vmm", "microVM {name}: vCPU ran on CPUs {}, moved {} times", cpu_list(r.placement.cpus), r.placement.migrations);
    }
}

/// "0,1" for CPU mask 0b11.
pub fn cpu_list(mask: u64) -> String {
    let mut s = String::new();
    for c in (0..64).filter(|c| mask & (1u64 << c) != 0) {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&format!("{c}"));
    }
    s
}

/// 32-bit flat protected mode, paging off, interrupts off: the state raw test guests start in.
fn flat32(entry: u64) -> VcpuState {
    use catenary_vmm::cpu::{Segment, CR0_ET, CR0_PE};
    let mut s = VcpuState::new();
    s.cs = Segment::flat(0x08, 0xb, true, false);
    let data = Segment::flat(0x10, 0x3, true, false);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = Segment { selector: 0x18, base: 0, limit: 0x67, attr: Segment::ATTR_P | 0xb };
    s.ldtr = Segment { selector: 0, base: 0, limit: 0xffff, attr: Segment::ATTR_P | 0x2 };
    s.cr0 = CR0_PE | CR0_ET;
    s.rflags = 2;
    s.rip = entry;
    s.rsp = entry; // stack grows down below the code
    s
}

/// The hostile test guest (testguests/hostile.S), assembled at build time.
pub const HOSTILE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hostile.bin"));
pub const HOSTILE_LOAD: u64 = 0x10000;
/// The console test guest (testguests/flood.S), loaded at `HOSTILE_LOAD` too.
pub const FLOOD_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flood.bin"));
/// The re-injection test guest (testguests/reinject.S), loaded at `HOSTILE_LOAD` too.
pub const REINJECT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reinject.bin"));
/// The exactly-once interrupt test guest (testguests/irqonce.S), loaded at `HOSTILE_LOAD` too.
pub const IRQONCE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/irqonce.bin"));
/// The progress-counting SMP test guest (testguests/progress.S), loaded at `HOSTILE_LOAD` too.
pub const PROGRESS_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/progress.bin"));
/// Where vCPU tasks may run: every CPU, except CPU 0 on QEMU TCG with two or more CPUs, where
/// another CPU's x87-state restores race with CPU 0's world switches and lose its SVM flags
/// (`catenary_arch::cpu::qemu_tcg_first_cpu_race`; docs/vmm.md "The host triple fault").
pub fn vcpu_affinity(cpus: usize) -> catenary_sched::Affinity {
    if catenary_arch::cpu::qemu_tcg_first_cpu_race(cpus) {
        catenary_sched::Affinity(!1u64)
    } else {
        catenary_sched::Affinity::ANY
    }
}

/// The CPU a test pins one microVM to: the last CPU where CPU 0 is off limits, else CPU 0.
pub fn vm_test_cpu(cpus: usize) -> usize {
    if catenary_arch::cpu::qemu_tcg_first_cpu_race(cpus) { cpus - 1 } else { 0 }
}

/// The world-switch stress guest (testguests/exitloop.S): EBX back-to-back port exits.
pub const EXITLOOP_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exitloop.bin"));

/// The host-NMI test guest (testguests/nmispin.S): RDTSC busy loops, few exits.
pub const NMISPIN_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nmispin.bin"));

/// The guest image bundle (a cpio boot module holding vmlinux, bzImage, initramfs.cpio.gz).
pub struct GuestBundle {
    pub vmlinux: Option<&'static [u8]>,
    pub bzimage: Option<&'static [u8]>,
    pub initramfs: &'static [u8],
    /// A Catenary image's root filesystem and run config (docs/images.md), when the bundle
    /// carries one (`vm.image=1`).
    pub image_rootfs: Option<&'static [u8]>,
    pub image_config: Option<&'static [u8]>,
    /// Its `image.json` (the image store verifies the image by it).
    pub image_manifest: Option<&'static [u8]>,
}

pub fn find_bundle(modules: &[catenary_bootinfo::Module]) -> Option<GuestBundle> {
    for m in modules {
        let Some(data) = catenary_arch::memory::boot_module(m) else { continue };
        if let Ok(store) = catenary_bootinfo::ImageStore::parse(data) {
            if let Some(initramfs) = store.get("initramfs.cpio.gz") {
                return Some(GuestBundle {
                    vmlinux: store.get("vmlinux"),
                    bzimage: store.get("bzImage"),
                    initramfs,
                    image_rootfs: store.get("image/rootfs.squashfs"),
                    image_config: store.get("image/config.json"),
                    image_manifest: store.get("image/image.json"),
                });
            }
        }
    }
    None
}

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
/// `<key>.exit`, `<key>.console`, `<key>.disk`, `<key>.net`, `<key>.ipc`, `<key>.debug`, `<key>.boot`.
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
    let disk = if let Some((rootfs, _)) = image {
        // The image's root, read-only (catenary-init mounts /dev/vda as squashfs).
        let mut d = alloc::vec::Vec::new();
        if d.try_reserve_exact(rootfs.len()).is_err() {
            warn!(target: "vmm", "microVM {want}: no memory for its {} byte root filesystem", rootfs.len());
            return None;
        }
        d.extend_from_slice(rootfs);
        Some((d, true))
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
    if opt("debug").is_some() {
        gcmd.push_str(" loglevel=7");
    }
    // A Catenary image's run config rides in a cpio appended to the initramfs.
    let initrd_buf = match image {
        Some((_, config)) => {
            let node = catenary_vmm::workload::node_json(want, net.map(|n| n.addr));
            match catenary_vmm::workload::workload_initrd(bundle.initramfs, config, node.as_bytes()) {
                Ok(v) => Some(v),
                Err(_) => {
                    warn!(target: "vmm", "microVM {want}: no memory for its initrd");
                    return None;
                }
            }
        }
        None => None,
    };
    let initrd: &[u8] = initrd_buf.as_deref().unwrap_or(bundle.initramfs);
    let boot = match (opt("boot"), bundle.vmlinux, bundle.bzimage) {
        (Some("bzimage"), _, Some(bz)) | (_, None, Some(bz)) => Image::LinuxBzImage { bzimage: bz, initrd, cmdline: &gcmd },
        (_, Some(vml), _) => Image::LinuxPvh { vmlinux: vml, initrd, cmdline: &gcmd },
        _ => {
            warn!(target: "vmm", "guest bundle has no kernel");
            return None;
        }
    };
    let r = if image.is_some() { run_workload(want, boot, mem, disk, net) } else { run_full(want, boot, mem, disk, net) };
    if let Some(n) = net {
        crate::net::detach_vm(n.addr);
    }
    report(want, &r);
    Some(r)
}

/// The null-exit guest (testguests/cpuidloop.S): EBX CPUID exits, then the same loop without
/// exits, both timed in the guest (`bench=exit`, `crate::exitbench`).
pub const CPUIDLOOP_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cpuidloop.bin"));
