//! The boot CPU's init sequence: console → boot info → traps → frames → page tables → heap →
//! clock → CPU/ACPI → LAPIC timer → ready.

use alloc::vec::Vec;
use catenary_arch::{acpi, apic, boot, cpu, gdt, heap, memory, paging, serial, smp, time, trap, uspace};
use catenary_bootinfo::{BootInfo, BootProtocol, MemoryKind};
use catenary_mm::FrameAllocator;
use log::{error, info, warn};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const TIMER_HZ: u32 = 100;

/// What the rest of the kernel (and the tests) may want to know after init.
pub struct Node {
    pub boot: BootInfo,
    pub cpus: usize,
}

fn protocol_name(p: BootProtocol) -> &'static str {
    match p {
        BootProtocol::Pvh => "pvh",
        BootProtocol::Multiboot2 => "multiboot2",
        BootProtocol::Limine => "limine",
    }
}

/// FNV-1a: lets the boot tests check that module contents arrived intact.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

fn mib(b: u64) -> u64 {
    b >> 20
}

pub fn kernel_main(protocol: u32, info_ptr: u64) -> ! {
    time::mark_boot();
    serial::init();
    catenary_arch::println!("\nCatenary {} — bare-metal microVM hypervisor", VERSION);

    // Traps first, so anything that goes wrong below prints a register dump.
    let selectors = gdt::init_bsp();
    trap::init();

    let mut handoff = match boot::handoff(protocol, info_ptr) {
        Ok(h) => h,
        Err(e) => panic!("cannot read boot information (protocol {}): {:?}", protocol, e),
    };
    let level = match crate::cmdline::get(&handoff.info.cmdline, "loglevel") {
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        Some("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    crate::klog::init(level);
    let (tsc_hz, tsc_src) = time::calibrate();
    info!(target: "boot", "boot protocol: {} (loader: {})", protocol_name(handoff.info.protocol),
        handoff.info.bootloader.as_deref().unwrap_or("-"));
    // secrets (`*.key=`) never reach the log
    info!(target: "boot", "command line: \"{}\"", catenary_bootinfo::redact_secrets(&handoff.info.cmdline));
    info!(target: "time", "TSC {}.{:03} MHz (source {:?})", tsc_hz / 1_000_000, (tsc_hz / 1000) % 1000, tsc_src);

    // Physical memory: reserve the kernel image, the first MiB (BIOS data, trampolines) and
    // the boot structures we still read, then hand the rest to the frame allocator.
    let sections = paging::kernel_sections();
    let kernel_len = sections.data.1 - sections.text.0;
    let bi = &mut handoff.info;
    bi.reserve(handoff.kernel_phys, kernel_len, MemoryKind::KernelAndModules);
    bi.reserve(0, 0x10_0000, MemoryKind::Reserved);
    for &(s, l) in &handoff.keep {
        bi.reserve(s, l, MemoryKind::BootloaderReclaimable);
    }
    let frames = match FrameAllocator::from_boot_info(bi, &[]) {
        Ok(f) => f,
        Err(e) => panic!("frame allocator: {:?}", e),
    };
    assert!(memory::install(frames), "frame allocator installed twice");
    // What ring 3 may never get as device memory, and the modules read in place for good.
    let ram: Vec<(u64, u64)> = bi.memory_map.iter()
        .filter(|r| !matches!(r.kind, MemoryKind::Reserved | MemoryKind::BadMemory | MemoryKind::Framebuffer))
        .map(|r| (r.start, r.len)).collect();
    memory::set_ram_ranges(&ram);
    memory::set_boot_modules(&bi.modules);
    for r in &bi.memory_map {
        log::debug!(target: "mm", "  {:#014x}-{:#014x} {:?}", r.start, r.start + r.len, r.kind);
    }

    // Kernel page tables: direct map of every range in the memory map, the image with
    // per-section permissions, guard pages under the boot and IST stacks.
    let phys_ranges: Vec<(u64, u64)> = bi.memory_map.iter().map(|r| (r.start, r.len)).collect();
    let mut guards: Vec<u64> = gdt::bsp_guard_pages().to_vec();
    guards.push(boot::boot_stack_guard());
    let spec = paging::KernelSpaceSpec {
        phys_ranges: &phys_ranges,
        kernel_phys: handoff.kernel_phys,
        sections,
        guard_pages: &guards,
        global_pages: true,
    };
    if let Err(e) = paging::build_and_activate(&spec) {
        panic!("building kernel page tables: {:?}", e);
    }
    info!(target: "mm", "kernel page tables live: direct map at {:#x}, text RX, rodata R/NX, data RW/NX, {} guard pages",
        paging::PHYS_OFFSET, guards.len());

    // Heap: grow beyond the bootstrap arena (1/16 of usable RAM, 8..64 MiB).
    let usable = bi.total_usable();
    let grow = (usable / 16).clamp(8 << 20, 64 << 20) / 4096;
    if let Err(e) = heap::grow(grow as usize) {
        warn!(target: "mm", "heap growth failed: {:?}", e);
    }
    let st = memory::stats();
    info!(target: "mm", "memory: total {} MiB, free {} MiB, used {} MiB (heap {} MiB)",
        mib(st.total_bytes()), mib(st.free_bytes()), mib(st.used_bytes()), mib(heap::size()));

    // CPU and platform.
    let f = cpu::features();
    info!(target: "cpu", "{} \"{}\" family {:#x} model {:#x}", f.vendor, f.brand, f.family, f.model);
    info!(target: "cpu", "virtualization: SVM {} (NPT {}, NRIPS {}, {} ASIDs), VMX {} (EPT {}); x2APIC {}, NX {}, 1G pages {}",
        f.svm, f.npt, f.nrips, f.svm_asids, f.vmx, f.ept, f.x2apic, f.nx, f.pdpe1gb);
    let rsdp = bi.rsdp.or_else(boot::scan_rsdp);
    let mut ncpus = 1;
    let mut cpu_list: Vec<(u32, bool)> = Vec::new();
    let mut ioapic_addr = None;
    match rsdp.map(acpi::parse) {
        Some(Ok(p)) => {
            info!(target: "acpi", "ACPI rev {} OEM \"{}\", LAPIC at {:#x}, legacy PICs {}", p.revision, p.oem_id.trim(), p.local_apic_address, p.has_legacy_pics);
            for c in &p.cpus {
                info!(target: "acpi", "  cpu {}: APIC id {}{}{}", c.uid, c.apic_id, if c.is_bsp { " (boot)" } else { "" }, if c.enabled { "" } else { " disabled" });
            }
            for io in &p.ioapics {
                info!(target: "acpi", "  IOAPIC id {} at {:#x}, GSI base {}", io.id, io.address, io.gsi_base);
            }
            ncpus = p.cpus.iter().filter(|c| c.enabled).count().max(1);
            cpu_list = p.cpus.iter().filter(|c| c.enabled).map(|c| (c.apic_id, c.is_bsp)).collect();
            ioapic_addr = p.ioapics.first().map(|io| io.address as u64);
        }
        Some(Err(e)) => warn!(target: "acpi", "ACPI tables unusable: {:?}", e),
        None => warn!(target: "acpi", "no ACPI RSDP: assuming one CPU"),
    }
    info!(target: "cpu", "{} CPU(s)", ncpus);

    // Interrupts: legacy PIC off, LAPIC on, periodic timer.
    apic::disable_pic();
    let mut bsp_apic = 0;
    match apic::init(f.x2apic) {
        Ok((id, x2)) => {
            bsp_apic = id;
            info!(target: "apic", "local APIC id {} ({} mode)", id, if x2 { "x2APIC" } else { "xAPIC" })
        }
        Err(e) => error!(target: "apic", "LAPIC: {:?}", e),
    }
    // Per-CPU data, syscall entry, SMEP/SMAP, then the scheduler (which adopts this context).
    if let Err(e) = smp::init_this_cpu(0, bsp_apic, selectors) {
        panic!("per-CPU data: {:?}", e);
    }
    // `pcid=off`: every CR3 write flushes, as on a CPU without PCIDs (A/B measurements).
    if crate::cmdline::get(&bi.cmdline, "pcid") == Some("off") {
        catenary_arch::pcid::disallow();
    }
    let (smep, smap) = uspace::enable_protections();
    info!(target: "cpu", "syscall/sysret entry on, SMEP {}, SMAP {}, FPU state via {} (XCR0 {:#x}), PCID {} (CPUID {})", smep, smap,
        if uspace::xcr0() != 0 { "XSAVE" } else { "FXSAVE" }, uspace::xcr0(), if catenary_arch::pcid::on() { "on" } else { "off" },
        catenary_arch::cpu::cpuid(1, 0).2 & (1 << 17) != 0);
    smp::set_x2apic(f.x2apic);
    crate::task::init(ncpus);
    match catenary_arch::virt::enable_this_cpu() {
        Ok(b) => info!(target: "vmm", "hardware virtualization on: {}", b),
        Err(e) => warn!(target: "vmm", "no microVMs on this node: {:?}", e),
    }
    let bus = apic::start_timer(TIMER_HZ);
    cpu::enable_interrupts();
    info!(target: "apic", "LAPIC timer {} Hz (bus {} MHz)", TIMER_HZ, bus / 1_000_000);
    if cpu_list.is_empty() {
        cpu_list.push((bsp_apic, true));
    }
    // The wall clock, before the ring-3 rtcd takes the RTC's ports.
    crate::net::record_rtc();
    // Images among the boot modules, verified before the workload service can ask for them.
    crate::vmstore::init(&bi.modules, &bi.cmdline);
    // The ACPI power button and soft-off (the power task serves them once services start).
    crate::power::init(rsdp);
    crate::task::start_node(&cpu_list, ioapic_addr, &bi.cmdline);
    // The boot-time benchmarks (`cargo xtask bench ipc|exit|vmmem`) and `crash=` (the
    // `fault_dump_*` tests): only in the probes kernel, as the other command-line probes.
    #[cfg(feature = "probes")]
    match crate::cmdline::get(&bi.cmdline, "bench") {
        Some("ipc") => crate::task::run_ipc_bench(ncpus),
        Some("exit") => crate::exitbench::run(ncpus),
        Some("vmmem") => crate::vmmembench::run(ncpus),
        _ => {}
    }

    for m in &bi.modules {
        let Some(data) = memory::boot_module(m) else { continue };
        info!(target: "boot", "module \"{}\" at {:#x}, {} bytes, fnv1a {:016x}", m.name, m.start, m.len, fnv1a(data));
    }

    #[cfg(feature = "probes")]
    if let Some(kind) = crate::cmdline::get(&bi.cmdline, "crash") {
        warn!(target: "boot", "crashing on purpose (crash={kind})");
        trap::crash_for_test(kind);
    }

    let node = Node { boot: handoff.info, cpus: ncpus };
    info!(target: "boot", "catenary: ready ({} ms since entry)", time::now_ns() / 1_000_000);

    #[cfg(feature = "ktest")]
    crate::ktest::run(&node);
    #[cfg(not(feature = "ktest"))]
    crate::net::start(&node.boot.cmdline, &node.boot.modules);
    #[cfg(not(feature = "ktest"))]
    start_heartbeat(&node);
    #[cfg(not(feature = "ktest"))]
    start_demo_vm(&node);
    #[cfg(all(feature = "probes", not(feature = "ktest")))]
    crate::wkclient::start(&node.boot.cmdline);
    #[cfg(not(feature = "ktest"))]
    crate::orchprobe::start(&node.boot.cmdline);
    #[cfg(not(feature = "ktest"))]
    idle(&node)
}

/// What the demo microVMs' tasks need from the boot information (each task clones it).
static DEMO_VM: spin::Mutex<Option<(alloc::string::String, Vec<catenary_bootinfo::Module>)>> = spin::Mutex::new(None);

/// Run each demo microVM's vCPU loop as a kernel task of its own, while every other task keeps
/// running. `vm.count=N` starts N copies of the demo microVM (`demo`, `demo-2`, …). The tasks
/// may run on any CPU and the scheduler spreads and moves them like any task (every CPU has
/// hardware virtualization on; docs/vmm.md "SMP").
#[cfg_attr(feature = "ktest", allow(dead_code))]
fn start_demo_vm(node: &Node) {
    cpu::without_interrupts(|| *DEMO_VM.lock() = Some((node.boot.cmdline.clone(), node.boot.modules.clone())));
    fn body(index: u64) {
        let Some((cmdline, modules)) = cpu::without_interrupts(|| DEMO_VM.lock().clone()) else { return };
        if let Some(r) = crate::vm::run_demo_nth(&cmdline, &modules, index as usize) {
            let st = memory::stats();
            info!(target: "vmm", "after the microVM: {} MiB free; exits by reason: {:?}; host overhead {} KiB; guest RAM touched {} MiB; ready after {} ms",
                mib(st.free_bytes()), r.exits_by_reason, r.overhead_bytes / 1024, mib(r.touched_bytes), r.ready_ns.map(|n| n / 1_000_000).unwrap_or(0));
            // Where the exits went, one row per reason (port I/O by device); docs/vmm.md.
            for (row, n) in catenary_vmm::exitprofile::profile(&r.exits_by_reason, &r.io_by_port) {
                info!(target: "vmm", "exit profile: {n} {row}");
            }
            // (Before the total: `bench vm` stops reading at it.) The CPUID row by leaf, kernel (k) or user mode (u): `leaf:k=count`
            // (docs/vmm.md "Where exits go").
            let leaves: alloc::vec::Vec<alloc::string::String> = r.cpuid_by_leaf.iter().map(|((l, u), n)| {
                let leaf = if *l == catenary_vmm::vm::CPUID_HV_SCAN_KEY { alloc::string::String::from("0x40000100-0x4000ffff") } else { alloc::format!("{l:#x}") };
                alloc::format!("{leaf}:{}={n}", if *u { 'u' } else { 'k' })
            }).collect();
            info!(target: "vmm", "cpuid exits by leaf: {}", leaves.join(" "));
            // Where the host's time went across the whole run (ms): in `Vcpu::run` (the guest's
            // own time plus the world switches), in the device model, in the rest of the loop.
            let c = r.cycles;
            let ms = |cy: u64| cy / (catenary_arch::time::tsc_hz() / 1000).max(1);
            info!(target: "vmm", "vCPU loop time ({} exits handled): guest + world switch {} ms, device model {} ms, rest of the loop {} ms",
                c.passes, ms(c.run), ms(c.handle), ms(c.rest));
            info!(target: "vmm", "exit profile: total {}", r.exits);
        }
    }
    for i in 0..crate::vm::demo_count(&node.boot.cmdline) {
        let name = if i == 0 { alloc::string::String::from("vcpu-demo") } else { alloc::format!("vcpu-demo-{}", i + 1) };
        let id = crate::task::spawn_kernel(&name, catenary_sched::Priority::NORMAL, crate::vm::vcpu_affinity(node.cpus), body, i as u64);
        log::debug!(target: "vmm", "demo microVM task {}", id);
    }

    // `vm2.*`: a second demo microVM beside the first, configured separately.
    if crate::vm::second_demo_wanted(&node.boot.cmdline) {
        cpu::without_interrupts(|| *DEMO_VM2.lock() = Some((node.boot.cmdline.clone(), node.boot.modules.clone())));
        fn body2(_: u64) {
            let Some((cmdline, modules)) = cpu::without_interrupts(|| DEMO_VM2.lock().take()) else { return };
            if crate::vm::run_demo2(&cmdline, &modules).is_some() {
                info!(target: "vmm", "after the second microVM: {} MiB free", mib(memory::stats().free_bytes()));
            }
        }
        let id = crate::task::spawn_kernel("vcpu-demo2", catenary_sched::Priority::NORMAL, crate::vm::vcpu_affinity(node.cpus), body2, 0);
        log::debug!(target: "vmm", "second demo microVM task {}", id);
    }
}

static DEMO_VM2: spin::Mutex<Option<(alloc::string::String, Vec<catenary_bootinfo::Module>)>> = spin::Mutex::new(None);

/// `heartbeat=MS`: a kernel task on the last CPU logs `heartbeat N` every MS milliseconds, with
/// how late it woke. Tests use it to see that the node's other tasks keep running while a
/// microVM misbehaves (the heartbeat is not a VM task; vCPU tasks share its CPU fairly).
#[cfg_attr(feature = "ktest", allow(dead_code))]
fn start_heartbeat(node: &Node) {
    let Some(ms) = crate::cmdline::get(&node.boot.cmdline, "heartbeat").and_then(|v| v.parse::<u64>().ok()) else { return };
    fn beat(period_ms: u64) {
        let period = period_ms.clamp(10, 60_000) * 1_000_000;
        let mut due = time::now_ns() + period;
        let mut exits = crate::vm::vm_exits();
        for n in 1u64.. {
            crate::task::sleep_ns(due.saturating_sub(time::now_ns()));
            let now = time::now_ns();
            let (running, ended) = crate::vm::vm_counts();
            let (before, after) = (exits, crate::vm::vm_exits());
            exits = after;
            info!(target: "heartbeat", "heartbeat {} (late {} ms; microVMs: {} running, {} ended; {} VM exits since the last)", n, now.saturating_sub(due) / 1_000_000, running, ended, after.wrapping_sub(before));
            due = due.saturating_add(period).max(now);
        }
    }
    let last = node.cpus.saturating_sub(1);
    crate::task::spawn_kernel("heartbeat", catenary_sched::Priority::NORMAL, catenary_sched::Affinity::only(last), beat, ms);
}

/// The boot task's last job: report the timer for a few seconds, then sleep.
#[cfg_attr(feature = "ktest", allow(dead_code))]
fn idle(node: &Node) -> ! {
    info!(target: "boot", "node up: {} CPU(s), booted via {}, {} boot module(s)", node.cpus,
        protocol_name(node.boot.protocol), node.boot.modules.len());
    // The boot task sleeps (its CPU runs the other tasks, or halts when there are none).
    for _ in 0..5 {
        crate::task::sleep_ns(1_000_000_000);
        info!(target: "timer", "tick {} ({} ms uptime)", apic::ticks(), time::now_ns() / 1_000_000);
    }
    loop {
        crate::task::sleep_ns(3_600_000_000_000);
    }
}
