//! Create a microVM, run its vCPUs to the end and destroy it: the entry points, the node's VM counters.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use catenary_arch::virt::{self, GuestRam};
use catenary_arch::{cpu, time};
use catenary_vmm::stop::StopPolicy;
use catenary_vmm::{MicroVm, VmConfig};
use core::sync::atomic::{AtomicBool, Ordering};
use log::{info, warn};
use super::affinity::vcpu_affinity;
use super::demo::{APIC_MODE, HIDE_XSAVE, TIMELINE};
use super::guests::flat32;
use super::report::{cpu_list, Ended, LoopCycles, RunReport};
use super::shared::{Core, Shared, NEXT_SMP_KEY, SMP_VMS};
use super::vcpu_loop::{ap_task, vcpu_loop, Bsp};
use super::{Image, NetAttach, Sink, VmConsole, VmControl};

fn host_cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (a, b, c, d) = cpu::cpuid(leaf, sub);
    [a, b, c, d]
}

pub(super) static NEXT_VM_ID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(1);

/// MicroVMs whose vCPU loop is running, and microVMs that have ended since boot (the node's
/// heartbeat reports both).
static VMS_RUNNING: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static VMS_ENDED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// (running, ended since boot)
pub fn vm_counts() -> (usize, usize) {
    use core::sync::atomic::Ordering::Relaxed;
    (VMS_RUNNING.load(Relaxed), VMS_ENDED.load(Relaxed))
}

/// VM exits taken on each CPU since boot, one cache line per CPU (a shared counter would bounce
/// between the CPUs that run vCPUs on every exit). The heartbeat reports their sum: a VM that
/// runs on without a line of output still shows whether it exits (busy in its devices, or
/// paging its program back in from its disk) or not.
#[repr(align(64))]
struct ExitCount(core::sync::atomic::AtomicU64);
static VM_EXITS: [ExitCount; catenary_arch::percpu::MAX_CPUS] = [const { ExitCount(core::sync::atomic::AtomicU64::new(0)) }; catenary_arch::percpu::MAX_CPUS];

/// One VM exit handled on this CPU.
pub(super) fn count_exit() {
    if let Some(c) = VM_EXITS.get(catenary_arch::percpu::cpu_index()) {
        c.0.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// VM exits on every CPU since boot.
pub fn vm_exits() -> u64 {
    VM_EXITS.iter().map(|c| c.0.load(core::sync::atomic::Ordering::Relaxed)).fold(0, u64::wrapping_add)
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

/// Like `run_with`, with an optional virtio-net device linked to `netd`.
pub fn run_full(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>) -> RunReport {
    run_inner(name, image, ram_mib, disk, net, None, false, None, None, None, 1)
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
    run_inner(name, image, ram_mib, disk, net, None, true, Some(ctl), None, None, 1)
}

/// Like `run`; the VM ends (`Ended::Killed`) soon after `stop` becomes true.
pub fn run_stoppable(name: &str, image: Image, ram_mib: u64, stop: &AtomicBool) -> RunReport {
    run_inner(name, image, ram_mib, None, None, Some(stop), false, None, None, None, 1)
}

/// Like `run_stoppable`, with a workload VM's devices (the workload channel too): the
/// memory-per-microVM bench (`bench=vmmem`, `crate::vmmembench`; the probes kernel).
#[cfg_attr(not(feature = "probes"), allow(dead_code))]
pub fn run_stoppable_workload(name: &str, image: Image, ram_mib: u64, stop: &AtomicBool) -> RunReport {
    run_inner(name, image, ram_mib, None, None, Some(stop), true, None, None, None, 1)
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
    let tail = match catenary_vmm::workload::workload_initrd_tail(config, node_json.as_bytes()) {
        Ok(v) => v,
        Err(_) => return failed("no memory for its initrd"),
    };
    let cmdline = format!("{} rdinit=/sbin/catenary-init", catenary_vmm::LINUX_CMDLINE);
    let cmdline = cmdline.as_str();
    let boot = match (g.vmlinux, g.bzimage) {
        (Some(vml), _) => Image::LinuxPvh { vmlinux: vml, initrd: g.initramfs, tail, cmdline },
        (None, Some(bz)) => Image::LinuxBzImage { bzimage: bz, initrd: g.initramfs, tail, cmdline },
        _ => return failed("the guest bundle has no kernel"),
    };
    run_inner(name, boot, mem_mib, None, net, None, true, Some(ctl), Some(&Sink { handle, touched }), Some(rootfs), vcpus)
}

fn empty_report() -> RunReport {
    RunReport { ended: Ended::Failed(String::new()), exits: 0, wall_ns: 0, overhead_bytes: 0, exits_by_reason: alloc::vec::Vec::new(), ready_ns: None, touched_bytes: 0, console: alloc::vec::Vec::new(), console_written: 0, console_dropped: 0, console_overwritten: 0, placement: virt::Placement::default(), io_by_port: alloc::vec::Vec::new(), cpuid_by_leaf: alloc::vec::Vec::new(), workload_exit: None, workload_ready: false, cycles: LoopCycles::default() }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_inner(name: &str, image: Image, ram_mib: u64, disk: Option<(alloc::vec::Vec<u8>, bool)>, net: Option<NetAttach>, stop: Option<&AtomicBool>, channel: bool, ctl: Option<&VmControl>, sink: Option<&Sink>, shared_disk: Option<catenary_vmm::virtio::blk::SharedBytes>, vcpus: u8) -> RunReport {
    let _end = EndOnDrop(ctl);
    let t0 = time::now_ns();
    let mut report = empty_report();
    if vcpus == 0 || vcpus > virt::max_vcpus_per_vm() || (vcpus > 1 && matches!(image, Image::Raw { .. })) {
        report.ended = Ended::Failed(format!("{name}: {vcpus} vCPUs: this node runs 1 to {} per microVM{}", virt::max_vcpus_per_vm(),
            if virt::max_vcpus_per_vm() == 1 { " (VMX without the unrestricted-guest control cannot start application processors: docs/vmm.md)" } else { "" }));
        return report;
    }
    // Never a world switch on a CPU where it is unsafe (vcpu_affinity): move this task first.
    if crate::task::restrict_current_affinity(vcpu_affinity(catenary_arch::smp::online_cpus())).is_err() {
        report.ended = Ended::Failed(alloc::format!("{name}: its vCPU task is pinned to CPU 0, where QEMU TCG cannot run world switches safely (docs/vmm.md)"));
        report.wall_ns = time::now_ns() - t0;
        return report;
    }
    let ram_size = ram_mib << 20;
    let zeroed0 = virt::zeroed_chunks();
    let mut ram = match GuestRam::new(ram_size) {
        Ok(r) => r,
        Err(e) => {
            report.ended = Ended::Failed(format!("guest RAM: {e:?}"));
            return report;
        }
    };
    let t_ram = time::now_ns();
    // (The guest's TSC counts from the node's boot at this rate: catenary_vmm::tsc.)
    let mut cfg = VmConfig::new(name, ram_size, time::tsc_hz());
    cfg.virtio_blk = disk;
    // (A read-only root filesystem shared with every VM of its image: no per-VM copy.)
    cfg.virtio_blk_shared = shared_disk;
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
        // The guest gets its own copy of the initrd in its RAM (it may overwrite that, never
        // the node's); `tail` is dropped at the end of the arm.
        Image::LinuxPvh { vmlinux, initrd, tail, cmdline } => {
            let cmd = format!("{} {}", cmdline, vm.kernel_cmdline_extras());
            catenary_vmm::load_pvh(&mut ram, vmlinux, Some(catenary_vmm::Initrd { head: initrd, tail: &tail }), cmd.as_bytes(), ram_size).map(|b| b.cpu)
        }
        Image::LinuxBzImage { bzimage, initrd, tail, cmdline } => {
            let cmd = format!("{} {}", cmdline, vm.kernel_cmdline_extras());
            catenary_vmm::load_bzimage(&mut ram, bzimage, Some(catenary_vmm::Initrd { head: initrd, tail: &tail }), cmd.as_bytes(), ram_size).map(|b| b.cpu)
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
    let t_vcpu = time::now_ns();
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
    let mut timeline = if TIMELINE.load(Ordering::Relaxed) { catenary_vmm::timeline::Timeline::try_new() } else { None };
    if timeline.is_some() {
        console.marks = Some(crate::vmconsole::MARKS.iter().map(|m| (*m, None)).collect());
    }
    let t_entry = time::now_ns();
    let mut bsp = Bsp { console: &mut console, name, net, stop, ctl, touched: sink.map(|s| s.touched), cycles: &mut report.cycles, policy: StopPolicy::new(), next_debug: 0, dumped: super::debug::state_dumps(), recent: Default::default(), timeline: timeline.as_mut(), t0 };
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
    report.cpuid_by_leaf = vm.stats().cpuid_by_leaf.iter().map(|(k, n)| (*k, *n)).collect();
    report.wall_ns = time::now_ns() - t0;
    if let Some(t) = &timeline {
        log_timeline(name, t, &console, [t_ram - t0, t_loaded - t_ram, t_vcpu - t_loaded, t_entry - t0], zeroed0);
    }
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

/// The boot timeline (`vm.timeline=1`, read by `cargo xtask bench vm`, docs/vmm.md "Where the
/// boot's time goes"): the node's own steps before the first guest instruction, the node times
/// of the guest's phase lines, then the exits by group per bucket.
fn log_timeline(name: &str, t: &catenary_vmm::timeline::Timeline, console: &VmConsole, [ram, load, vcpu, entry]: [u64; 4], zeroed0: (u64, u64)) {
    use catenary_vmm::timeline::{BUCKET_NS, GROUPS};
    info!(target: "vmm", "vm timeline: {name}: guest RAM {} us, image load {} us, vCPU {} us, first entry at {} us", ram / 1000, load / 1000, vcpu / 1000, entry / 1000);
    let us = |cy: u64| cy / (time::tsc_hz() / 1_000_000).max(1);
    let z = virt::zeroed_chunks();
    info!(target: "vmm", "vm timeline: {name}: {} RAM chunks zeroed in {} us (this VM's whole run, loader included); guest console printed on the node console in {} us",
        z.0 - zeroed0.0, us(z.1 - zeroed0.1), us(console.print_cycles));
    for (pat, seen) in console.marks.iter().flatten() {
        if let Some((ns, line)) = seen {
            info!(target: "vmm", "vm timeline: mark \"{pat}\" at {} us: {line}", ns / 1000);
        }
    }
    info!(target: "vmm", "vm timeline: bucket_us {} groups {}", BUCKET_NS / 1000, GROUPS.join(","));
    for l in t.lines() {
        info!(target: "vmm", "vm timeline: bucket {l}");
    }
}

/// The node's time and memory now: free frames and the kernel heap (bytes allocated, bytes it
/// holds), for before/after figures (`cargo xtask bench workload`, docs/images.md).
pub(super) fn node_memory() -> String {
    format!("node time {} us, free frames {}, heap {} of {} bytes",
        time::now_ns() / 1000, catenary_arch::memory::stats().free, catenary_arch::heap::used_bytes(), catenary_arch::heap::size())
}
