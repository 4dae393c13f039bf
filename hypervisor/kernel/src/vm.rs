//! The microVM runner: create a microVM (guest RAM, device model, vCPU), run its vCPU loop, and
//! destroy it, reporting why it ended. Backend-neutral: the vCPU is SVM or VMX behind
//! `catenary_arch::virt::Vcpu`; the device model is `catenary_vmm::MicroVm`.
//!
//! Guest images come from the boot module "guest bundle": a cpio archive holding `vmlinux`
//! (PVH entry), `bzImage` (Linux boot protocol) and `initramfs.cpio.gz`.
//!
//! Kernel command line: `vm=none` skips the demo microVM; `vm.boot=pvh|bzimage`,
//! `vm.mem=<MiB>`, `vm.cmd=<base64 shell command>`, `vm.exit=poweroff|reboot|halt`,
//! `vm.disk=<MiB>` (a read-only virtio-blk disk with a marker line), `vm.vcpus=<N>` (N vCPUs,
//! each its own task, with local APICs, an I/O APIC and an MP table) and `vm.debug` shape it;
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
use alloc::sync::Arc;
use catenary_arch::virt::{self, GuestRam, Vcpu, VirtError};
use catenary_arch::{cpu, time};
use catenary_vmm::cpu::{Exit, StopReason, VcpuState};
use catenary_vmm::{Action, EventDecision, MicroVm, VmConfig, VmError};
use crate::vmconsole::VmConsole;
pub use crate::vmcontrol::VmControl;
use catenary_vmm::stop::{StopAction, StopPolicy};
use catenary_vmm::guest_proto::wire::WorkloadExit;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// `vm.debug`: multi-vCPU demo microVMs log each vCPU's exits and last exit RIP every 2 s.
static DEBUG_VCPUS: AtomicBool = AtomicBool::new(false);

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
    run_inner(name, image, ram_mib, disk, net, None, false, None, None, 1)
}

/// Like `run_full`, for a guest whose init is `catenary-init` (the VM gets the workload
/// channel, docs/guest-init.md, whose log and exit status land in the report), controlled
/// through `ctl` while it runs: `ctl.request_signal`,
/// `ctl.request_stop` (StopSignal, SIGKILL after the grace period, then power-off) and
/// `ctl.request_kill` from any task (`vmcontrol`, docs/guest-init.md "Stopping a workload").
/// `ctl` reports the VM running once it is about to enter the guest and ended when this
/// returns (whatever the reason). The run report says how it ended: the workload's exit
/// status (`workload_exit`) when the init reported one, `Ended::Killed` when the node powered it
/// off.
pub fn run_workload_ctl(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>, ctl: &VmControl) -> RunReport {
    run_inner(name, image, ram_mib, disk, net, None, true, Some(ctl), None, 1)
}

/// Like `run`; the VM ends (`Ended::Killed`) soon after `stop` becomes true.
pub fn run_stoppable(name: &str, image: Image, ram_mib: u64, stop: &AtomicBool) -> RunReport {
    run_inner(name, image, ram_mib, None, None, Some(stop), false, None, None, 1)
}

/// Like `run_stoppable`, with a workload VM's devices (the workload channel too): the
/// memory-per-microVM bench (`bench=vmmem`, `crate::vmmembench`).
pub fn run_stoppable_workload(name: &str, image: Image, ram_mib: u64, stop: &AtomicBool) -> RunReport {
    run_inner(name, image, ram_mib, None, None, Some(stop), true, None, None, 1)
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
pub fn run_image_vm(handle: u64, name: &str, mem_mib: u64, vcpus: u8, rootfs: catenary_vmm::virtio::blk::SharedBytes, config: &[u8], node_json: &str, net: Option<NetAttach>, ctl: &VmControl, touched: &core::sync::atomic::AtomicU64) -> RunReport {
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
    run_inner(name, boot, mem_mib, None, net, None, true, Some(ctl), Some(&Sink { handle, touched, rootfs }), vcpus)
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
fn run_inner(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>, stop: Option<&AtomicBool>, channel: bool, ctl: Option<&VmControl>, sink: Option<&Sink>, vcpus: u8) -> RunReport {
    let _end = EndOnDrop(ctl);
    let t0 = time::now_ns();
    let mut report = empty_report();
    if vcpus == 0 || vcpus > virt::max_vcpus_per_vm() || (vcpus > 1 && matches!(image, Image::Raw { .. })) {
        report.ended = Ended::Failed(format!("{name}: {vcpus} vCPUs: this node runs 1 to {} per microVM{}", virt::max_vcpus_per_vm(),
            if virt::max_vcpus_per_vm() == 1 { " (the VMX backend starts no application processors yet: docs/vmm.md)" } else { "" }));
        return report;
    }
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
    // More than one vCPU needs the APICs (IPIs, the MP table); `vm.apic=1` gives them to one.
    cfg.apic = (vcpus > 1 || APIC_MODE.load(core::sync::atomic::Ordering::Relaxed)) && !matches!(image, Image::Raw { .. });
    cfg.vcpus = vcpus;
    // Both backends switch XCR0 and the full XSAVE state (arch guest_switch.rs): the guest
    // may see XSAVE/AVX when the node enabled it.
    cfg.cpuid.xsave = catenary_arch::uspace::xcr0() & 0b111 == 0b111 && !HIDE_XSAVE.load(core::sync::atomic::Ordering::Relaxed);
    let (vm, mut console) = match (MicroVm::try_new(cfg, &host_cpuid), VmConsole::try_new(name, t0)) {
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
    info!(target: "vmm", "microVM {name} (id {id}): {} MiB RAM, {vcpus} vCPU, backend {}, created in {} us (RAM {} us, image load {} us)",
        ram_mib, vcpu.backend(), (time::now_ns() - t0) / 1000, (t_ram - t0) / 1000, (t_loaded - t_ram) / 1000);
    vcpu.set_state(&state);
    let chunks = ram.chunks().len();
    let ram_bytes = ram.size();
    let sh = Arc::new(Shared::new(vm, ram, usize::from(vcpus), ram_bytes));
    sh.task[0].store(crate::task::current_task(), Ordering::SeqCst);
    // The application processors: one task each, started now, waiting for the guest's
    // INIT/SIPI (`ap_task`). They find the shared state through the registry.
    let key = NEXT_SMP_KEY.fetch_add(1, Ordering::Relaxed);
    let mut aps: alloc::vec::Vec<catenary_sched::TaskId> = alloc::vec::Vec::new();
    if vcpus > 1 {
        cpu::without_interrupts(|| SMP_VMS.lock().insert(key, (sh.clone(), id)));
        for i in 1..usize::from(vcpus) {
            match crate::task::try_spawn_kernel(&format!("vcpu{i}-{name}"), catenary_sched::Priority::NORMAL, vcpu_affinity(catenary_arch::smp::online_cpus()), ap_task, key << 8 | i as u64) {
                Ok(t) => {
                    sh.task[i].store(t, Ordering::SeqCst);
                    aps.push(t);
                }
                Err(_) => sh.end(Ended::Failed(format!("vCPU {i}: no memory for its task"))),
            }
        }
    }
    if let Some(c) = ctl {
        c.started(sh.core().vm.has_channel());
    }
    VMS_RUNNING.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut bsp = Bsp { console: &mut console, name, net, stop, ctl, touched: sink.map(|s| s.touched), cycles: &mut report.cycles, policy: StopPolicy::new(), next_debug: 0 };
    let mapped0: alloc::vec::Vec<bool> = {
        let g = sh.core();
        (0..chunks).map(|i| !vcpu.lazy_ram() || g.ram.is_populated(i)).collect()
    };
    let ended = vcpu_loop(&sh, 0, &mut *vcpu, mapped0, Some(&mut bsp));
    // The VM dies as a whole: every other vCPU leaves its loop, and teardown waits for all.
    sh.end(ended.unwrap_or(Ended::Killed));
    for t in aps {
        while crate::task::join(t, 1_000_000_000).is_none() {
            warn!(target: "vmm", "microVM {name}: still waiting for vCPU task {t} to end");
            sh.kick_all();
        }
    }
    cpu::without_interrupts(|| SMP_VMS.lock().remove(&key));
    let ended = sh.ended.lock().clone().unwrap_or(Ended::Killed);
    VMS_RUNNING.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    VMS_ENDED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut g = sh.core();
    let Core { vm, ram } = &mut *g;
    console.drain_vm(vm, time::now_ns(), true);
    report.ready_ns = console.ready;
    report.workload_exit = console.workload.exit();
    report.workload_ready = console.workload.ready();
    report.console = console.lines();
    report.console_written = vm.console().written;
    report.console_dropped = vm.console().dropped + console.discarded;
    report.console_overwritten = vm.console().dropped;
    report.exits = vm.stats().total_exits();
    report.exits_by_reason = vm.stats().exits_by_reason().collect();
    report.overhead_bytes = vcpu.overhead_bytes() + sh.ap_overhead.load(Ordering::Relaxed) + core::mem::size_of::<MicroVm>() as u64;
    report.touched_bytes = ram.populated_bytes();
    report.placement = vcpu.placement();
    report.placement.cpus |= sh.ap_cpus.load(Ordering::Relaxed);
    report.placement.migrations += sh.ap_moves.load(Ordering::Relaxed);
    report.io_by_port = vm.stats().io_by_port.iter().map(|(p, n)| (*p, *n)).collect();
    report.wall_ns = time::now_ns() - t0;
    if channel {
        // Everything this VM holds is still allocated here (its RAM, vCPU, device model, disk).
        info!(target: "vmm", "microVM {name}: memory at its end: {}; guest RAM {} KiB ({} KiB touched)", node_memory(), ram.size() / 1024, report.touched_bytes / 1024);
    }
    if vcpus > 1 {
        info!(target: "vmm", "microVM {name}: {vcpus} vCPUs ran on CPUs {}", cpu_list(report.placement.cpus));
    }
    report.ended = ended;
    drop(g);
    // Dropping the vCPU and the last reference to the shared state (the AP tasks have ended
    // and dropped theirs) returns every frame to the allocator.
    drop(vcpu);
    drop(sh);
    report
}

/// What the vCPUs of one microVM share: the device model and guest RAM, behind one lock that a
/// vCPU takes only around device-model calls (`poll`, `next_event`, `handle_exit`, the console
/// and network), never across `Vcpu::run` (docs/vmm.md "Multi-vCPU microVMs").
pub(crate) struct Core {
    vm: MicroVm,
    ram: GuestRam,
}

/// A microVM's shared state: `Core` plus how its vCPU tasks find, wake and stop each other.
pub(crate) struct Shared {
    core: spin::Mutex<Core>,
    n: usize,
    ram_size: u64,
    /// Set once when the VM ends (any vCPU's stop or fatal fault, the node's stop): every vCPU
    /// loop leaves at its next pass.
    dead: AtomicBool,
    /// Why it ended, as the first vCPU to end it saw it.
    ended: spin::Mutex<Option<Ended>>,
    /// Per vCPU: its task (to wake it from a halt), and the CPU it is about to enter or is in
    /// its guest on (`NOT_IN_GUEST` otherwise), to interrupt it there.
    task: [AtomicU64; MAX_VCPUS],
    in_guest: [AtomicUsize; MAX_VCPUS],
    /// Per vCPU: exits and the RIP of the last one (what `vm.debug` logs every 2 s).
    exits: [AtomicU64; MAX_VCPUS],
    last_rip: [AtomicU64; MAX_VCPUS],
    /// The application processors' figures for the run report.
    ap_cpus: AtomicU64,
    ap_moves: AtomicU64,
    ap_overhead: AtomicU64,
}

const MAX_VCPUS: usize = catenary_vmm::mptable::MAX_VCPUS as usize;
const NOT_IN_GUEST: usize = usize::MAX;

impl Shared {
    fn new(vm: MicroVm, ram: GuestRam, n: usize, ram_size: u64) -> Shared {
        Shared {
            core: spin::Mutex::new(Core { vm, ram }),
            n: n.clamp(1, MAX_VCPUS),
            ram_size,
            dead: AtomicBool::new(false),
            ended: spin::Mutex::new(None),
            task: [const { AtomicU64::new(0) }; MAX_VCPUS],
            in_guest: [const { AtomicUsize::new(NOT_IN_GUEST) }; MAX_VCPUS],
            exits: [const { AtomicU64::new(0) }; MAX_VCPUS],
            last_rip: [const { AtomicU64::new(0) }; MAX_VCPUS],
            ap_cpus: AtomicU64::new(0),
            ap_moves: AtomicU64::new(0),
            ap_overhead: AtomicU64::new(0),
        }
    }

    /// The device model and RAM. The lock is held for a device-model call, never across a world
    /// switch or a sleep; a waiter yields its CPU now and then (the holder may have been
    /// preempted on this very CPU).
    fn core(&self) -> spin::MutexGuard<'_, Core> {
        loop {
            for _ in 0..64 {
                if let Some(g) = self.core.try_lock() {
                    return g;
                }
                core::hint::spin_loop();
            }
            crate::task::yield_now();
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// End the VM (the first reason wins) and get every vCPU out of its guest or its halt.
    fn end(&self, why: Ended) {
        {
            let mut e = self.ended.lock();
            if e.is_none() {
                *e = Some(why);
            }
        }
        self.dead.store(true, Ordering::SeqCst);
        self.kick_all();
    }

    fn kick_all(&self) {
        self.kick(u64::MAX, usize::MAX);
    }

    /// Wake the vCPUs in `mask` (from `ApicBus::take_wakeups`) other than `me`: a halted one's
    /// task is woken, one in its guest is interrupted (a host IPI forces the exit, so it looks
    /// at its interrupts again). One that is between the two looks anyway before its next entry:
    /// it marks itself in the guest *before* taking the lock for `next_event`.
    fn kick(&self, mask: u64, me: usize) {
        for j in (0..self.n).filter(|&j| j != me && mask & (1u64 << j) != 0) {
            let c = self.in_guest[j].load(Ordering::SeqCst);
            if c != NOT_IN_GUEST {
                crate::task::kick_cpu(c);
            }
            let t = self.task[j].load(Ordering::SeqCst);
            if t != 0 {
                crate::task::wake_sleeping(t);
            }
        }
    }
}

/// Multi-vCPU microVMs whose application processors are starting: key → (shared state, VM id).
static SMP_VMS: spin::Mutex<alloc::collections::BTreeMap<u64, (Arc<Shared>, u32)>> = spin::Mutex::new(alloc::collections::BTreeMap::new());
static NEXT_SMP_KEY: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// Application processor `arg & 0xff` of the microVM registered as `arg >> 8`: create its vCPU,
/// run its loop from wait-for-SIPI, and end the whole VM if it fails.
fn ap_task(arg: u64) {
    let (key, idx) = (arg >> 8, (arg & 0xff) as usize);
    let Some((sh, vm_id)) = cpu::without_interrupts(|| SMP_VMS.lock().get(&key).cloned()) else { return };
    if crate::task::restrict_current_affinity(vcpu_affinity(catenary_arch::smp::online_cpus())).is_err() {
        sh.end(Ended::Failed(format!("vCPU {idx}: its task may only run on CPU 0")));
        return;
    }
    let made = {
        let g = sh.core();
        virt::create_vcpu(&g.ram, vm_id).map(|v| {
            let mapped: alloc::vec::Vec<bool> = (0..g.ram.chunks().len()).map(|i| !v.lazy_ram() || g.ram.is_populated(i)).collect();
            (v, mapped)
        })
    };
    let (mut vcpu, mapped) = match made {
        Ok(v) => v,
        Err(e) => {
            sh.end(Ended::Failed(format!("vCPU {idx}: {e:?}")));
            return;
        }
    };
    if let Some(e) = vcpu_loop(&sh, idx, &mut *vcpu, mapped, None) {
        sh.end(e);
    }
    let p = vcpu.placement();
    sh.ap_cpus.fetch_or(p.cpus, Ordering::Relaxed);
    sh.ap_moves.fetch_add(p.migrations, Ordering::Relaxed);
    sh.ap_overhead.fetch_add(vcpu.overhead_bytes(), Ordering::Relaxed);
    // (The vCPU, and with it its reference to guest RAM, is dropped before the task ends: the
    // BSP's join then knows no nested table maps the RAM any more.)
    drop(vcpu);
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
/// Longest an application processor waiting for its Startup IPI sleeps between looks (a SIPI
/// wakes it at once through `Shared::kick`).
const SIPI_POLL_NS: u64 = 10_000_000;

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

/// What only vCPU 0's loop does: the console, the network, the node's stop/control requests,
/// the touched-memory figure and the cycle accounting.
struct Bsp<'a, 'c> {
    console: &'a mut VmConsole<'c>,
    name: &'a str,
    net: Option<NetAttach>,
    stop: Option<&'a AtomicBool>,
    ctl: Option<&'a VmControl>,
    touched: Option<&'a core::sync::atomic::AtomicU64>,
    cycles: &'a mut LoopCycles,
    policy: StopPolicy,
    next_debug: u64,
}

impl Bsp<'_, '_> {
    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// Whether vCPU `idx` waits for a Startup IPI (an AP before the guest starts it, or after an
/// INIT); takes a pending INIT/SIPI first: a SIPI loads the real-mode start state.
fn sipi_wait(vm: &mut MicroVm, idx: usize, vcpu: &mut dyn Vcpu, st: &mut VcpuState) -> bool {
    let Some(l) = vm.apic_bus().and_then(|a| a.lapic_mut(idx)) else { return false };
    l.take_init();
    if let Some(v) = l.take_sipi() {
        *st = catenary_vmm::apic_bus::sipi_state(v);
        vcpu.set_state(st);
    }
    l.run_state() != catenary_vmm::devices::lapic::RunState::Running
}

/// One vCPU's loop (vCPU 0 with `bsp`). Returns why the VM ended when this vCPU ended it, None
/// when another vCPU (or the node) did.
fn vcpu_loop(sh: &Shared, idx: usize, vcpu: &mut dyn Vcpu, mut mapped: alloc::vec::Vec<bool>, mut bsp: Option<&mut Bsp>) -> Option<Ended> {
    let mut st = vcpu.state();
    let name = bsp.as_ref().map(|b| b.name).unwrap_or("");
    loop {
        let t_pass = cpu::rdtsc();
        if sh.is_dead() {
            return None;
        }
        if bsp.as_ref().is_some_and(|b| b.stopped()) {
            return Some(Ended::Killed);
        }
        // Marked "in the guest" before the event decision: a vCPU that sends this one an
        // interrupt after that decision sees the mark and interrupts the entry.
        sh.in_guest[idx].store(catenary_arch::percpu::cpu_index(), Ordering::SeqCst);
        let (ev, now, waiting, wakeups) = {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            if let Some(b) = bsp.as_deref_mut() {
                if let Some(e) = apply_control(b.ctl, &mut b.policy, vm, ram, b.name) {
                    return Some(e);
                }
            }
            let now = time::now_ns();
            vm.poll(now);
            let waiting = sipi_wait(vm, idx, vcpu, &mut st);
            let ev = if waiting || vcpu.reinjection_pending() { EventDecision::None } else { vm.next_event(&st) };
            (ev, now, waiting, vm.apic_bus().map(|a| a.take_wakeups()).unwrap_or(0))
        };
        sh.kick(wakeups, idx);
        if waiting {
            sh.in_guest[idx].store(NOT_IN_GUEST, Ordering::SeqCst);
            crate::task::sleep_ns(SIPI_POLL_NS);
            continue;
        }
        let t_run = cpu::rdtsc();
        let run = vcpu.run(ev);
        let t_ran = cpu::rdtsc();
        sh.in_guest[idx].store(NOT_IN_GUEST, Ordering::SeqCst);
        let exit = match run {
            Ok(e) => e,
            Err(VirtError::EntryFailed(code)) => return Some(Ended::Failed(format!("VM entry failed ({code:#x}) on vCPU {idx}"))),
            Err(e) => return Some(Ended::Failed(format!("{e:?} on vCPU {idx}"))),
        };
        // Always read the state back first: the next event decision depends on the guest's
        // *current* RFLAGS.IF and interrupt shadow (injecting an interrupt into a guest that
        // just executed CLI deadlocks it inside its own critical section).
        st = vcpu.state();
        sh.exits[idx].fetch_add(1, Ordering::Relaxed);
        sh.last_rip[idx].store(st.rip, Ordering::Relaxed);
        if let Some(b) = bsp.as_deref_mut().filter(|_| DEBUG_VCPUS.load(Ordering::Relaxed)) {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            debug_vcpus(sh, vm, ram, b);
        }
        if let Exit::Mmio { gpa, .. } | Exit::PageWalkFault { gpa } = exit {
            // First touch of a RAM chunk the loader did not populate (by an instruction or by
            // the guest's page walk): zero it, map it, retry. (No lock: populating a chunk is
            // atomic, and each vCPU maps RAM into its own nested tables.)
            if gpa < sh.ram_size {
                let c = (gpa / virt::CHUNK) as usize;
                if !mapped[c] {
                    vcpu.map_ram_chunk(c);
                    mapped[c] = true;
                    if let Some(t) = bsp.as_ref().and_then(|b| b.touched) {
                        t.store(sh.core().ram.populated_bytes(), Ordering::Relaxed);
                    }
                    continue;
                }
            }
        }
        if matches!(exit, Exit::ExternalInterrupt) {
            // The host took its interrupt when the backend re-enabled interrupts; count it.
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            let _ = vm.handle_exit(exit, &mut st, ram, now);
            continue;
        }
        let now = time::now_ns();
        let (action, t_handle, t_handled, oom, wakeups) = {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            let t_handle = cpu::rdtsc();
            let action = vm.handle_exit(exit, &mut st, ram, now);
            let t_handled = cpu::rdtsc();
            if let Some(b) = bsp.as_deref_mut() {
                b.console.drain_vm(vm, now, false);
                net_sync(vm, ram, b.net);
            }
            (action, t_handle, t_handled, vm.out_of_memory(), vm.apic_bus().map(|a| a.take_wakeups()).unwrap_or(0))
        };
        sh.kick(wakeups, idx);
        vcpu.set_state(&st);
        if let Some(b) = bsp.as_deref_mut() {
            let t_end = cpu::rdtsc();
            let c = &mut *b.cycles;
            c.passes += 1;
            c.run += t_ran.wrapping_sub(t_run);
            c.handle += t_handled.wrapping_sub(t_handle);
            c.rest += t_end.wrapping_sub(t_pass).wrapping_sub(t_ran.wrapping_sub(t_run)).wrapping_sub(t_handled.wrapping_sub(t_handle));
        }
        if oom {
            return Some(Ended::OutOfMemory);
        }
        match action {
            Ok(Action::Resume) => {}
            Ok(Action::Halt) => {
                if let Some(e) = halt(sh, idx, vcpu, st.interrupts_enabled(), bsp.as_deref_mut()) {
                    return e;
                }
            }
            Ok(Action::Stop(r)) => {
                if sh.n > 1 {
                    info!(target: "vmm", "{name}: vCPU {idx} ended the VM ({r}) at rip {:#x}, rflags {:#x}", st.rip, st.rflags);
                }
                if r == StopReason::TripleFault {
                    // What the guest was doing when it shut down (soak failures keep this line).
                    warn!(target: "vmm", "{name}: vCPU {idx}: triple fault at rip {:#x} (cs {:#x}, cpl {}) rsp {:#x} rflags {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} xcr0 {:#x} idtr {:#x}+{:#x} gdtr {:#x}+{:#x} tr {:#x}",
                        st.rip, st.cs.selector, st.cpl, st.rsp, st.rflags, st.cr0, st.cr2, st.cr3, st.cr4, st.efer, st.xcr0,
                        st.idtr.base, st.idtr.limit, st.gdtr.base, st.gdtr.limit, st.tr.base);
                    log_guest_walks(&st, &sh.core().ram, &mapped, name);
                }
                return Some(Ended::Stopped(r));
            }
            Err(VmError::OutOfMemory) => return Some(Ended::OutOfMemory),
            Err(e) => {
                warn!(target: "vmm", "{name}: vCPU {idx}: device model rejected an exit: {e:?}");
                return Some(Ended::Failed(format!("{e:?}")));
            }
        }
    }
}

/// `vm.debug` on a multi-vCPU VM: every 2 s (vCPU 0's loop, halted or not), each vCPU's exits,
/// the RIP of its last exit, whether it is in its guest, and what its APIC has pending.
fn debug_vcpus(sh: &Shared, vm: &mut MicroVm, ram: &GuestRam, b: &mut Bsp) {
    if !DEBUG_VCPUS.load(Ordering::Relaxed) || sh.n < 2 || time::now_ns() < b.next_debug {
        return;
    }
    b.next_debug = time::now_ns() + 2_000_000_000;
    let cur = vm.vcpu();
    for j in 0..sh.n {
        vm.set_vcpu(j);
        let (nmi, run) = vm.apic_bus().and_then(|a| a.lapic(j)).map(|l| (l.nmi_pending(), l.run_state())).unwrap_or((false, catenary_vmm::devices::lapic::RunState::Running));
        info!(target: "vmm", "{}: vCPU {j}: {} exits, last at rip {:#x}, {}, pending irq {:?} nmi {nmi} {run:?}, deadline in {:?} ns", b.name, sh.exits[j].load(Ordering::Relaxed), sh.last_rip[j].load(Ordering::Relaxed),
            if sh.in_guest[j].load(Ordering::Relaxed) != NOT_IN_GUEST { "in its guest" } else { "out" }, vm.pending_irq(), vm.next_deadline_ns().map(|d| d as i64 - time::now_ns() as i64));
    }
    for (i, d) in vm.virtio.iter().enumerate() {
        if let Some(e) = d.error {
            info!(target: "vmm", "{}: virtio device {i} failed: {e:?}", b.name);
        }
        use catenary_vmm::mem::GuestMemoryExt;
        for (qi, q) in d.queues.iter().enumerate().filter(|(_, q)| q.ready) {
            let avail = q.avail.checked_add(2).and_then(|a| ram.read_u16(a).ok());
            let used = q.used.checked_add(2).and_then(|a| ram.read_u16(a).ok());
            info!(target: "vmm", "{}: virtio {i} q{qi}: notifies {} int {:#x}, device last_avail {} used_idx {}, guest avail.idx {avail:?} used.idx {used:?}, avail at {:#x} used at {:#x}", b.name, d.notifies, d.interrupt_status, q.last_avail, q.used_idx, q.avail, q.used);
        }
    }
    vm.set_vcpu(cur);
}

/// A halted vCPU waits (its task sleeps; other tasks run on its CPU) until its guest has
/// something to take: an interrupt (when its IF is set), an exception, an NMI, an event the
/// backend still holds, or an INIT. `Some(end)` when the wait ends the loop (`None` inside: another vCPU ended the VM).
fn halt(sh: &Shared, idx: usize, vcpu: &mut dyn Vcpu, interrupts_on: bool, mut bsp: Option<&mut Bsp>) -> Option<Option<Ended>> {
    loop {
        if sh.is_dead() {
            return Some(None);
        }
        let (wake, wait, stopped, wakeups) = {
            let mut g = sh.core();
            let Core { vm, ram } = &mut *g;
            vm.set_vcpu(idx);
            let now = time::now_ns();
            if let Some(b) = bsp.as_deref_mut() {
                net_sync(vm, ram, b.net);
                if vm.out_of_memory() {
                    return Some(Some(Ended::OutOfMemory));
                }
                vm.poll(now);
                b.console.drain_vm(vm, now, false);
                if let Some(e) = apply_control(b.ctl, &mut b.policy, vm, ram, b.name) {
                    return Some(Some(e));
                }
                debug_vcpus(sh, vm, ram, b);
            } else {
                vm.poll(now);
            }
            // (An interrupt the backend still holds armed for the guest counts too: `sti; hlt`
            // exits before the guest takes it.)
            let apic = vm.apic_bus().and_then(|a| a.lapic(idx)).map(|l| (l.nmi_pending(), l.run_state() != catenary_vmm::devices::lapic::RunState::Running));
            // (An AP halted with interrupts off, `cli; hlt`, waits for an NMI or INIT only.)
            let wake = (interrupts_on && vm.pending_irq().is_some()) || vm.pending_exception().is_some() || vcpu.reinjection_pending() || apic.is_some_and(|(nmi, init)| nmi || init);
            // Block until the device model's next deadline for this vCPU, at most 1 ms (another
            // vCPU's interrupt wakes the task sooner: `Shared::kick`).
            let wait = vm.next_deadline_ns().map(|d| d.saturating_sub(now)).unwrap_or(HALT_POLL_NS).min(HALT_POLL_NS);
            (wake, wait, vm.stop_reason().cloned(), vm.apic_bus().map(|a| a.take_wakeups()).unwrap_or(0))
        };
        sh.kick(wakeups, idx);
        if wake {
            return None;
        }
        if let Some(r) = stopped {
            return Some(Some(Ended::Stopped(r)));
        }
        if bsp.as_ref().is_some_and(|b| b.stopped()) {
            return Some(Some(Ended::Killed));
        }
        if wait > 0 {
            crate::task::sleep_ns(wait);
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
    if let Some(d) = opt("debug") {
        DEBUG_VCPUS.store(true, Ordering::Relaxed);
        // (earlyprintk: the guest's early messages on the 16550 too, which a VM that dies before
        // its virtio console is up would otherwise take with it. `vm.debug=quiet` leaves the
        // guest's command line alone: the 16550 copy slows its console down.)
        if d != "quiet" {
            gcmd.push_str(" loglevel=7 earlyprintk=serial,ttyS0");
        }
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
    // `vm.vcpus=N`: N vCPUs (with the APICs and an MP table), each its own task.
    let vcpus: u8 = opt("vcpus").and_then(|v| v.parse().ok()).unwrap_or(1);
    let r = run_inner(want, boot, mem, disk, net, None, image.is_some(), None, None, vcpus);
    if let Some(n) = net {
        crate::net::detach_vm(n.addr);
    }
    report(want, &r);
    Some(r)
}

/// The null-exit guest (testguests/cpuidloop.S): EBX CPUID exits, then the same loop without
/// exits, both timed in the guest (`bench=exit`, `crate::exitbench`).
pub const CPUIDLOOP_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cpuidloop.bin"));
