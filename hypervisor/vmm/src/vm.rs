//! The microVM device model: exit dispatch, port/MMIO buses, interrupt plumbing (the run
//! statistics are in `stats.rs`).

use crate::apic_bus::ApicBus;
use crate::boot::layout;
use crate::console::{ConsoleRing, RING_BYTES};
use crate::cpu::*;
use crate::cpuid::{guest_cpuid, CpuidConfig};
use crate::devices::misc::{MiscEffect, PostPort, ResetPorts, I8042};
use crate::devices::pic::DualPic;
use crate::devices::pit::Pit;
use crate::devices::rtc::Rtc;
use crate::devices::uart::{Uart, COM1_BASE, COM1_IRQ};
use crate::insn::{classify_mmio, complete_load, decode_at_rip, length_of, skip_length, FetchError, MmioOp};
use crate::mem::GuestMemory;
use crate::msr::{MsrResult, MsrState};
use crate::paging::{linear, read_linear, write_linear, Access, WalkError};
pub use crate::stats::{Stats, CPUID_HV_SCAN_KEY, EXIT_NAMES, MAX_CPUID_LEAVES_TRACKED, MAX_PORTS_TRACKED};
use crate::virtio::blk::VirtioBlk;
use crate::virtio::console::VirtioConsole;
use crate::virtio::net::VirtioNet;
use crate::virtio::mmio::{Device, VirtioMmio, MMIO_WINDOW};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use iced_x86::{Mnemonic, OpKind, Register};

/// What to do with an MMIO access that hits no device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WildMmioPolicy {
    /// Stop the VM with [`GuestFault::WildMmio`] (default: a Linux guest configured for this
    /// machine never does it, so it is a bug or an attack, and the report names the GPA).
    Stop,
    /// Reads return all-ones, writes are dropped (counted in [`Stats::wild_mmio`]).
    AllOnes,
}

/// Hypercall (VMCALL/VMMCALL, CPL 0 only) numbers in RAX.
pub const HC_POWER_OFF: u64 = 0x4341_5400; // "\0TAC": RBX = exit status
/// Returned in RAX for an unknown hypercall (-ENOSYS).
pub const HC_ENOSYS: u64 = (-38i64) as u64;

/// IRQ lines handed to virtio devices, in order.
pub const VIRTIO_IRQS: [u8; 8] = [5, 6, 9, 10, 11, 12, 14, 15];

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub ram_size: u64,
    /// The guest TSC's rate (Hz): the node's calibrated TSC rate (crate::tsc), for the device
    /// models' TSC arithmetic (the local APIC's TSC-deadline timer, RDMSR 0x10). The guest is
    /// told it in whole kHz (CPUID 0x4000_0010, `tsc_early_khz=`), derived by `MicroVm::new`.
    pub tsc_hz: u64,
    /// Wall clock (Unix seconds) at `now_ns == 0`, for the RTC.
    pub wallclock_unix: u64,
    pub cpuid: CpuidConfig,
    pub wild_mmio: WildMmioPolicy,
    pub virtio_console: bool,
    /// A second virtio-console, right after the first (the guest's `/dev/hvc1`): the workload
    /// channel (docs/guest-init.md). Its output lands in [`MicroVm::channel`].
    pub workload_channel: bool,
    /// Disk image and read-only flag.
    pub virtio_blk: Option<(Vec<u8>, bool)>,
    /// A read-only virtio-blk disk over bytes shared with other VMs (used when `virtio_blk` is
    /// `None`): a workload image's root filesystem.
    pub virtio_blk_shared: Option<crate::virtio::blk::SharedBytes>,
    /// A virtio-net device with this MAC.
    pub virtio_net: Option<[u8; 6]>,
    pub queue_size: u16,
    /// Size of the console ring (UART + virtio-console output not yet printed).
    pub console_ring_bytes: usize,
    /// Local APICs + I/O APIC + MP table (docs/vmm.md "Multi-vCPU microVMs"); without it the
    /// guest has the 8259 only and one vCPU.
    pub apic: bool,
    /// vCPUs (1..=8; more than 1 needs `apic`).
    pub vcpus: u8,
}

impl VmConfig {
    pub fn new(name: &str, ram_size: u64, tsc_hz: u64) -> Self {
        VmConfig {
            name: name.into(),
            ram_size,
            tsc_hz,
            wallclock_unix: 0,
            cpuid: CpuidConfig::default(),
            wild_mmio: WildMmioPolicy::Stop,
            virtio_console: true,
            workload_channel: false,
            virtio_blk: None,
            virtio_blk_shared: None,
            virtio_net: None,
            queue_size: 256,
            console_ring_bytes: RING_BYTES,
            apic: false,
            vcpus: 1,
        }
    }
}

/// What the backend should do about events before the next entry (see [`MicroVm::next_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDecision {
    /// Inject this event now.
    Inject(Injection),
    /// An interrupt is pending but the guest cannot take it: request an interrupt window
    /// (SVM V_IRQ + VINTR intercept / VMX interrupt-window exiting).
    RequestWindow,
    None,
}

/// Snapshot of the host CPUID leaves the policy needs.
#[derive(Debug, Clone, Default)]
pub struct HostCpuidTable {
    leaves: BTreeMap<(u32, u32), [u32; 4]>,
}

impl HostCpuidTable {
    /// Query the host for every leaf the policy may consult.
    pub fn capture(host: &dyn Fn(u32, u32) -> [u32; 4]) -> Self {
        let mut leaves = BTreeMap::new();
        let max = host(0, 0)[0].min(0xd);
        for l in 0..=max {
            let subs = match l {
                4 | 7 | 0xd => 0..8,
                _ => 0..1,
            };
            for s in subs {
                leaves.insert((l, s), host(l, s));
            }
        }
        let emax = host(0x8000_0000, 0)[0].clamp(0x8000_0000, 0x8000_0008);
        for l in 0x8000_0000..=emax {
            leaves.insert((l, 0), host(l, 0));
        }
        HostCpuidTable { leaves }
    }
    pub fn get(&self, l: u32, s: u32) -> [u32; 4] {
        self.leaves.get(&(l, s)).copied().unwrap_or([0; 4])
    }
}

/// The device model of one single-vCPU microVM.
pub struct MicroVm {
    pub cfg: VmConfig,
    pub pic: DualPic,
    pub pit: Pit,
    pub uart: Uart,
    pub rtc: Rtc,
    pub kbd: I8042,
    pub post: PostPort,
    pub reset_ports: ResetPorts,
    pub virtio: Vec<VirtioMmio>,
    pub msrs: MsrState,
    host_cpuid: HostCpuidTable,
    console: ConsoleRing,
    /// The workload channel's output not yet decoded (when `cfg.workload_channel`).
    channel: Option<ConsoleRing>,
    #[cfg(any(test, feature = "fuzzing"))]
    lines: crate::console::LineSplitter,
    stats: Stats,
    /// Exceptions queued per vCPU.
    pending: [Option<Injection>; crate::mptable::MAX_VCPUS as usize],
    stopped: Option<StopReason>,
    /// The APICs, when `cfg.apic`.
    apic: Option<ApicBus>,
    /// The vCPU the calls act for ([`MicroVm::set_vcpu`]).
    cur: usize,
    /// Per vCPU: when an NMI was injected and is taken to be in service (NMIs blocked).
    nmi_in_service: [Option<u64>; crate::mptable::MAX_VCPUS as usize],
    /// The latest `now_ns` given to [`MicroVm::poll`].
    now_ns: u64,
}

/// How long after an NMI's injection the next may be injected. The vCPU interface reports
/// neither IRET nor the CPU's NMI-blocking state, so "the handler returned" is approximated:
/// an NMI handler runs far shorter than this, and a second NMI stays latched until then.
pub const NMI_HOLD_NS: u64 = 1_000_000;

type Outcome = Result<Action, VmError>;

impl MicroVm {
    /// Create the device model (panics if the console ring cannot be allocated: for tests and
    /// tools; the kernel uses [`MicroVm::try_new`]).
    pub fn new(cfg: VmConfig, host_cpuid: &dyn Fn(u32, u32) -> [u32; 4]) -> Self {
        Self::try_new(cfg, host_cpuid).expect("console ring allocation")
    }

    /// Create the device model. `host_cpuid` is queried once, here.
    /// The disk image in `cfg.virtio_blk` moves into the device (`cfg.virtio_blk` is `None`
    /// afterwards). Fails only if the console ring cannot be allocated.
    pub fn try_new(mut cfg: VmConfig, host_cpuid: &dyn Fn(u32, u32) -> [u32; 4]) -> Result<Self, VmError> {
        let console = ConsoleRing::try_new(cfg.console_ring_bytes).map_err(|_| VmError::OutOfMemory)?;
        let mut virtio = Vec::new();
        let mut irqs = VIRTIO_IRQS.iter();
        let mut base = layout::MMIO_BASE;
        let qs = if cfg.queue_size.is_power_of_two() { cfg.queue_size.min(1024) } else { 256 };
        // (Both powers of two, so the smaller one is too.)
        let console_qs = qs.min(crate::virtio::console::QUEUE_SIZE);
        if cfg.virtio_console {
            if let Some(&irq) = irqs.next() {
                virtio.push(VirtioMmio::new(base, irq, Device::Console(VirtioConsole::new()), console_qs));
                base += layout::MMIO_STRIDE;
            }
        }
        let mut channel = None;
        if cfg.workload_channel {
            if let Some(&irq) = irqs.next() {
                channel = Some(ConsoleRing::try_new(RING_BYTES).map_err(|_| VmError::OutOfMemory)?);
                virtio.push(VirtioMmio::new(base, irq, Device::Console(VirtioConsole::new_channel()), console_qs));
                base += layout::MMIO_STRIDE;
            }
        }
        let blk = match (cfg.virtio_blk.take(), cfg.virtio_blk_shared.take()) {
            (Some((disk, ro)), _) => Some(VirtioBlk::new(disk, ro, "catenary0")),
            (None, Some(bytes)) => Some(VirtioBlk::shared(bytes, "catenary0")),
            (None, None) => None,
        };
        if let Some(b) = blk {
            if let Some(&irq) = irqs.next() {
                virtio.push(VirtioMmio::new(base, irq, Device::Blk(b), qs));
                base += layout::MMIO_STRIDE;
            }
        }
        if !cfg.apic {
            cfg.vcpus = 1;
        }
        cfg.vcpus = cfg.vcpus.clamp(1, crate::mptable::MAX_VCPUS);
        // CPUID offers the APIC (and its TSC-deadline timer) exactly when there is a model
        // behind it, whatever the caller put in `cfg.cpuid`.
        cfg.cpuid.apic = cfg.apic;
        cfg.cpuid.tsc_khz = u32::try_from(cfg.tsc_hz / 1000).unwrap_or(u32::MAX);
        let tsc = crate::tsc::GuestTsc::new(cfg.tsc_hz);
        let apic = cfg.apic.then(|| ApicBus::new(cfg.vcpus, tsc));
        if let Some(mac) = cfg.virtio_net {
            if let Some(&irq) = irqs.next() {
                virtio.push(VirtioMmio::new(base, irq, Device::Net(VirtioNet::new(mac)), qs));
            }
        }
        Ok(MicroVm {
            pic: DualPic::new(),
            pit: Pit::new(),
            uart: Uart::new(),
            rtc: Rtc::new(cfg.wallclock_unix),
            kbd: I8042::default(),
            post: PostPort::default(),
            reset_ports: ResetPorts::default(),
            virtio,
            msrs: MsrState::new(tsc),
            host_cpuid: HostCpuidTable::capture(host_cpuid),
            console,
            channel,
            #[cfg(any(test, feature = "fuzzing"))]
            lines: Default::default(),
            stats: Stats::default(),
            pending: [None; crate::mptable::MAX_VCPUS as usize],
            nmi_in_service: [None; crate::mptable::MAX_VCPUS as usize],
            now_ns: 0,
            stopped: None,
            apic,
            cur: 0,
            cfg,
        })
    }

    /// Kernel command-line fragment describing this VM's devices for Linux:
    /// `virtio_mmio.device=0x200@<base>:<irq>` per device and `tsc_early_khz=<khz>` (Linux only
    /// reads 0x4000_0010 for VMware, so the TSC frequency goes on the command line too).
    pub fn kernel_cmdline_extras(&self) -> String {
        let mut s = String::new();
        for d in &self.virtio {
            s.push_str(&format!("virtio_mmio.device={:#x}@{:#x}:{} ", MMIO_WINDOW, d.base, d.irq));
        }
        if self.cfg.cpuid.tsc_khz != 0 {
            s.push_str(&format!("tsc_early_khz={}", self.cfg.cpuid.tsc_khz));
        }
        String::from(s.trim_end())
    }

    /// Write the guest's platform tables (the MP table) into its memory; call after the boot
    /// loader. virtio IRQs are level-triggered on the I/O APIC. Without `cfg.apic` the table
    /// says one processor and an unusable I/O APIC (crate::mptable: it spares Linux the BIOS
    /// area's search). Every guest gets one, raw test guests too (at 0x9fc00, E820-reserved;
    /// they do not read it); it fails only with less than 640 KiB of RAM.
    pub fn write_platform_tables(&self, mem: &mut dyn GuestMemory) -> Result<(), crate::mptable::MpTableError> {
        let mut irqs: Vec<crate::mptable::IsaIrq> = Vec::new();
        for d in &self.virtio {
            irqs.push(crate::mptable::IsaIrq { irq: d.irq, level_triggered: true });
        }
        if self.apic.is_none() {
            return crate::mptable::write_pic_only_mptable(mem, &irqs);
        }
        crate::mptable::write_mptable(mem, self.cfg.vcpus, &irqs)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The console ring: UART and virtio-console output not yet printed (the kernel drains
    /// it at the VM's rate limit; see [`crate::console`]).
    pub fn console(&mut self) -> &mut ConsoleRing {
        &mut self.console
    }

    /// The workload channel's bytes not yet decoded (None without the channel device); decode
    /// them with [`crate::workload::WorkloadLog`].
    pub fn channel(&mut self) -> Option<&mut ConsoleRing> {
        self.channel.as_mut()
    }

    /// Complete console lines in the ring (tests and fuzzing; the kernel drains the ring).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn take_console_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = self.console.pop(&mut buf);
            if n == 0 {
                break;
            }
            self.lines.feed(&buf[..n], |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        out
    }

    /// A device could not get host memory for guest-driven work: the VM must end.
    pub fn out_of_memory(&self) -> bool {
        self.virtio.iter().any(|d| d.out_of_memory)
    }

    /// Host input for the guest console (UART RX and virtio-console receiveq).
    pub fn push_console_input(&mut self, bytes: &[u8], mem: &mut dyn GuestMemory) {
        self.uart.push_input(bytes);
        for d in &mut self.virtio {
            if let Device::Console(c) = &mut d.dev {
                if c.channel {
                    continue;
                }
                c.push_input(bytes);
                d.kick_rx(mem);
            }
        }
        self.sync_irqs();
    }

    /// Send one node → init frame (STOP, SIGNAL: `guest_proto::wire`) on the workload channel's
    /// receive queue. `false` when the VM has no channel or its bounded input is full (the
    /// guest has not read what is queued); the frame is then not queued at all.
    pub fn send_to_init(&mut self, frame: &[u8], mem: &mut dyn GuestMemory) -> bool {
        let mut ok = false;
        for d in &mut self.virtio {
            if let Device::Console(c) = &mut d.dev {
                if c.channel {
                    ok = c.push_frame(frame);
                    d.kick_rx(mem);
                    break;
                }
            }
        }
        self.sync_irqs();
        ok
    }

    /// Whether the VM has the workload channel (it runs `catenary-init`).
    pub fn has_channel(&self) -> bool {
        self.channel.is_some()
    }

    /// Ethernet frames the guest sent on its virtio-net device since the last call.
    pub fn take_net_tx(&mut self) -> Vec<Vec<u8>> {
        // One net device at most: its queue is moved out (no allocation).
        let mut out = Vec::new();
        for d in &mut self.virtio {
            let f = d.take_tx_frames();
            if out.is_empty() {
                out = f;
            } else if out.try_reserve(f.len()).is_ok() {
                out.extend(f);
            }
        }
        out
    }

    /// Queue an Ethernet frame for the guest's virtio-net device (dropped if there is none or
    /// its receive queue is full).
    pub fn push_net_rx(&mut self, frame: &[u8], mem: &mut dyn GuestMemory) -> bool {
        let mut ok = false;
        for d in &mut self.virtio {
            if matches!(d.dev, Device::Net(_)) {
                ok = d.push_rx_frame(frame, mem);
                break;
            }
        }
        self.sync_irqs();
        ok
    }

    /// Deliver frames still queued for the guest into receive buffers it posted since.
    pub fn kick_net_rx(&mut self, mem: &mut dyn GuestMemory) {
        for d in &mut self.virtio {
            if let Device::Net(n) = &d.dev {
                if n.rx_pending() > 0 {
                    d.kick_rx(mem);
                }
            }
        }
        self.sync_irqs();
    }

    /// Why the VM stopped, once it has.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    // ----- interrupts -------------------------------------------------------------------------

    /// Advance timers to `now_ns` and update interrupt lines. Call before every VM entry and
    /// when a halted vCPU wakes.
    pub fn poll(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        if self.pit.poll(now_ns) {
            self.pic.pulse(0);
            if let Some(a) = &mut self.apic {
                a.pulse_isa_irq(0);
            }
        }
        if let Some(a) = &mut self.apic {
            a.poll(now_ns);
        }
        self.sync_irqs();
    }

    /// Act for vCPU `v` from now on (exits, events, deadlines); out-of-range indices are
    /// clamped. A one-vCPU VM never needs it.
    pub fn set_vcpu(&mut self, v: usize) {
        self.cur = v.min(usize::from(self.cfg.vcpus) - 1);
    }

    /// The vCPUs the calls currently act for.
    pub fn vcpu(&self) -> usize {
        self.cur
    }

    /// The APICs (None without `cfg.apic`).
    pub fn apic_bus(&mut self) -> Option<&mut ApicBus> {
        self.apic.as_mut()
    }

    /// Whether the 8259's INTR reaches the current vCPU (no APIC, or vCPU 0's LINT0 in
    /// virtual-wire mode / APIC disabled).
    fn pic_reaches_cpu(&self) -> bool {
        match &self.apic {
            None => true,
            Some(a) => self.cur == 0 && a.lapic(0).is_some_and(|l| l.accepts_pic()),
        }
    }

    /// Vector of the interrupt the current vCPU should take next: its local APIC's, else the
    /// PIC's (when INTR reaches it).
    pub fn pending_irq(&self) -> Option<u8> {
        if let Some(v) = self.apic.as_ref().and_then(|a| a.lapic(self.cur)).and_then(|l| l.pending_vector()) {
            return Some(v);
        }
        if self.pic_reaches_cpu() {
            self.pic.pending_vector()
        } else {
            None
        }
    }

    /// INTA: the backend is injecting `vector` (from [`MicroVm::pending_irq`]). Returns the
    /// vector actually delivered (normally the same; the PIC's spurious 7/15 if its IRQ
    /// vanished).
    pub fn ack_irq(&mut self, vector: u8) -> u8 {
        let _ = vector;
        let cur = self.cur;
        let from_apic = self.apic.as_mut().and_then(|a| a.lapic_mut(cur)).and_then(|l| l.ack());
        let v = match from_apic {
            Some(v) => v,
            None => self.pic.ack(),
        };
        self.stats.irqs_injected += 1;
        self.sync_irqs();
        v
    }

    /// Absolute `now_ns` at which the next timer interrupt is due (to bound a HLT wait).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let pit = self.pit.next_deadline_ns();
        let apic = self.apic.as_ref().and_then(|a| a.next_deadline_ns(self.cur));
        match (pit, apic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// An exception queued by the device model (e.g. #GP for an unknown MSR), not yet taken.
    pub fn pending_exception(&self) -> Option<Injection> {
        self.pending[self.cur]
    }

    /// Take the queued exception for injection.
    pub fn take_injection(&mut self) -> Option<Injection> {
        let p = self.pending[self.cur].take();
        if p.is_some() {
            self.stats.exceptions_injected += 1;
        }
        p
    }

    /// One-stop event decision before VM entry: a queued exception first, then a latched NMI
    /// if there is no interrupt shadow and no NMI in service ([`NMI_HOLD_NS`]), then a PIC
    /// interrupt if RFLAGS.IF=1 and no interrupt shadow (acknowledging it), else a request for
    /// an interrupt window.
    pub fn next_event(&mut self, cpu: &VcpuState) -> EventDecision {
        if let Some(i) = self.take_injection() {
            return EventDecision::Inject(i);
        }
        let cur = self.cur;
        if self.nmi_in_service[cur].is_some_and(|at| self.now_ns.saturating_sub(at) >= NMI_HOLD_NS) {
            self.nmi_in_service[cur] = None;
        }
        let nmi = self.apic.as_mut().and_then(|a| a.lapic_mut(cur)).is_some_and(|l| l.nmi_pending());
        if nmi && !cpu.interrupt_shadow && self.nmi_in_service[cur].is_none() {
            if let Some(l) = self.apic.as_mut().and_then(|a| a.lapic_mut(cur)) {
                l.take_nmi();
            }
            self.nmi_in_service[cur] = Some(self.now_ns);
            return EventDecision::Inject(Injection { vector: 2, error_code: None, kind: InjectionKind::Nmi });
        }
        match self.pending_irq() {
            Some(v) if cpu.interrupts_enabled() && !cpu.interrupt_shadow => {
                let v = self.ack_irq(v);
                EventDecision::Inject(Injection { vector: v, error_code: None, kind: InjectionKind::ExtInt })
            }
            Some(_) => EventDecision::RequestWindow,
            None => EventDecision::None,
        }
    }

    fn queue_exception(&mut self, inj: Injection) -> Option<StopReason> {
        let contributory = |v: u8| matches!(v, 0 | 10 | 11 | 12 | 13);
        match self.pending[self.cur] {
            None => {
                self.pending[self.cur] = Some(inj);
                None
            }
            Some(p) if p.vector == 8 => Some(StopReason::TripleFault),
            Some(p) => {
                let df = (contributory(p.vector) && contributory(inj.vector))
                    || (p.vector == 14 && (contributory(inj.vector) || inj.vector == 14));
                self.pending[self.cur] = Some(if df { Injection::exception(8, Some(0)) } else { inj });
                None
            }
        }
    }

    fn sync_irqs(&mut self) {
        self.pic.set_irq(COM1_IRQ, self.uart.irq_level());
        for d in &self.virtio {
            self.pic.set_irq(d.irq, d.irq_level());
        }
        if let Some(a) = &mut self.apic {
            a.set_isa_irq(COM1_IRQ, self.uart.irq_level());
            for d in &self.virtio {
                a.set_isa_irq(d.irq, d.irq_level());
            }
        }
    }

    // ----- exit handling ------------------------------------------------------------------------

    /// Handle one VM exit. See the crate docs for the contract.
    pub fn handle_exit(&mut self, exit: Exit, cpu: &mut VcpuState, mem: &mut dyn GuestMemory, now_ns: u64) -> Outcome {
        if let Some(r) = &self.stopped {
            return Ok(Action::Stop(r.clone()));
        }
        self.stats.count_exit(&exit);
        let r = self.dispatch(exit, cpu, mem, now_ns);
        self.poll(now_ns);
        if let Ok(Action::Stop(reason)) = &r {
            self.stopped = Some(reason.clone());
        }
        r
    }

    fn fetch_fail(&mut self, e: FetchError, cpu: &mut VcpuState) -> Outcome {
        match e {
            FetchError::Inject(inj, cr2) => {
                if let Some(a) = cr2 {
                    cpu.cr2 = a;
                }
                Ok(self.inject(inj))
            }
            FetchError::Fault(f) => Ok(Action::Stop(StopReason::GuestFault(f))),
        }
    }

    fn inject(&mut self, inj: Injection) -> Action {
        match self.queue_exception(inj) {
            Some(stop) => Action::Stop(stop),
            None => Action::Resume,
        }
    }

    /// Decode at RIP, check the mnemonic, advance RIP. Returns Err(outcome) when the
    /// instruction could not be fetched.
    fn skip(&mut self, cpu: &mut VcpuState, mem: &dyn GuestMemory, m: &[Mnemonic], what: &'static str) -> Result<(), Outcome> {
        match skip_length(cpu, mem, m, what) {
            Ok(len) => {
                cpu.advance_rip(len);
                Ok(())
            }
            Err(e) => Err(self.fetch_fail(e, cpu)),
        }
    }

    fn dispatch(&mut self, exit: Exit, cpu: &mut VcpuState, mem: &mut dyn GuestMemory, now_ns: u64) -> Outcome {
        match exit {
            Exit::Io { port, size, write, string, rep } => {
                if !matches!(size, 1 | 2 | 4) {
                    return Err(VmError::BadExit("I/O size must be 1, 2 or 4"));
                }
                self.stats.count_port(port);
                if string {
                    return self.string_io(port, size, write, rep, cpu, mem, now_ns);
                }
                let ms: &[Mnemonic] = if write { &[Mnemonic::Out] } else { &[Mnemonic::In] };
                if let Err(o) = self.skip(cpu, mem, ms, "io") {
                    return o;
                }
                if write {
                    if let Some(stop) = self.io_out(port, size, cpu.rax as u32, now_ns) {
                        return Ok(Action::Stop(stop));
                    }
                } else {
                    let v = self.io_in(port, size, now_ns);
                    cpu.write_gpr_sized(0, size, v as u64);
                }
                Ok(Action::Resume)
            }
            Exit::Mmio { gpa, write_hint } => self.mmio(gpa, write_hint, cpu, mem, now_ns),
            // The backend loop maps RAM chunks on first touch before calling us, so a walk
            // fault that reaches the device model is outside RAM: never emulate the
            // instruction at RIP against that address.
            Exit::PageWalkFault { gpa } => Ok(Action::Stop(StopReason::GuestFault(GuestFault::PageWalkOutsideRam { gpa, rip: cpu.rip }))),
            Exit::Cpuid => {
                if let Err(o) = self.skip(cpu, mem, &[Mnemonic::Cpuid], "cpuid") {
                    return o;
                }
                self.stats.count_cpuid(cpu.rax as u32, cpu.cpl == 3);
                let host = |l: u32, s: u32| self.host_cpuid.get(l, s);
                let mut r = guest_cpuid(&self.cfg.cpuid, cpu.rax as u32, cpu.rcx as u32, cpu.cr4, cpu.xcr0, &host);
                if cpu.rax as u32 == 1 && self.apic.is_some() {
                    // Initial APIC ID of the vCPU executing CPUID (each vCPU is its own package).
                    r[1] = (r[1] & 0x00ff_ffff) | ((self.cur as u32) << 24);
                }
                cpu.rax = r[0] as u64;
                cpu.rbx = r[1] as u64;
                cpu.rcx = r[2] as u64;
                cpu.rdx = r[3] as u64;
                Ok(Action::Resume)
            }
            Exit::Rdmsr => {
                let idx = cpu.rcx as u32;
                let apic = self.apic.as_ref().and_then(|a| a.rdmsr(self.cur, idx, now_ns));
                let r = match apic {
                    Some(Ok(v)) => MsrResult::Ok(v),
                    Some(Err(_)) => MsrResult::Gp,
                    None => self.msrs.read(idx, cpu, now_ns),
                };
                match r {
                    MsrResult::Ok(v) => {
                        if let Err(o) = self.skip(cpu, mem, &[Mnemonic::Rdmsr], "rdmsr") {
                            return o;
                        }
                        cpu.rax = v & 0xffff_ffff;
                        cpu.rdx = v >> 32;
                        Ok(Action::Resume)
                    }
                    MsrResult::Gp => Ok(self.unknown_msr(idx)),
                }
            }
            Exit::Wrmsr => {
                let idx = cpu.rcx as u32;
                let val = (cpu.rdx << 32) | (cpu.rax & 0xffff_ffff);
                // Validate the instruction first so a failed fetch leaves no side effect.
                let len = match length_of(cpu, mem, &[Mnemonic::Wrmsr], "wrmsr") {
                    Ok((l, _)) => l,
                    Err(e) => return self.fetch_fail(e, cpu),
                };
                let cur = self.cur;
                let apic = self.apic.as_mut().and_then(|a| a.wrmsr(cur, idx, val, now_ns));
                let r = match apic {
                    Some(Ok(())) => MsrResult::Ok(0),
                    Some(Err(_)) => MsrResult::Gp,
                    None => self.msrs.write(idx, val, cpu),
                };
                match r {
                    MsrResult::Ok(_) => {
                        cpu.advance_rip(len);
                        Ok(Action::Resume)
                    }
                    MsrResult::Gp => Ok(self.unknown_msr(idx)),
                }
            }
            Exit::Hlt => {
                if let Err(o) = self.skip(cpu, mem, &[Mnemonic::Hlt], "hlt") {
                    return o;
                }
                if !cpu.interrupts_enabled() {
                    // HLT with interrupts off ends the VM when vCPU 0 does it (Linux powers off
                    // that way, on CPU 0, after stopping the others). An application processor
                    // doing it has only stopped itself (Linux's `stop_this_cpu`): it waits for
                    // an NMI or INIT, and the VM goes on.
                    if self.cur != 0 {
                        return Ok(Action::Halt);
                    }
                    return Ok(Action::Stop(StopReason::PowerOff { code: None }));
                }
                self.poll(now_ns);
                if self.pending_irq().is_some() || self.pending_exception().is_some() {
                    Ok(Action::Resume)
                } else {
                    Ok(Action::Halt)
                }
            }
            Exit::InterruptWindow | Exit::ExternalInterrupt | Exit::Nmi => Ok(Action::Resume),
            Exit::Pause => match self.skip(cpu, mem, &[Mnemonic::Pause], "pause") {
                Ok(()) => Ok(Action::Resume),
                Err(o) => o,
            },
            Exit::Invd | Exit::Wbinvd => match self.skip(cpu, mem, &[Mnemonic::Invd, Mnemonic::Wbinvd, Mnemonic::Wbnoinvd], "wbinvd") {
                Ok(()) => Ok(Action::Resume),
                Err(o) => o,
            },
            Exit::Xsetbv => {
                if !self.cfg.cpuid.xsave {
                    return Ok(self.inject(Injection::ud()));
                }
                let len = match length_of(cpu, mem, &[Mnemonic::Xsetbv], "xsetbv") {
                    Ok((l, _)) => l,
                    Err(e) => return self.fetch_fail(e, cpu),
                };
                let v = (cpu.rdx << 32) | (cpu.rax & 0xffff_ffff);
                let ok = cpu.cpl == 0 && cpu.rcx as u32 == 0 && v & 1 != 0 && v & !7 == 0 && (v & 4 == 0 || v & 2 != 0);
                if !ok {
                    return Ok(self.inject(Injection::gp0()));
                }
                cpu.xcr0 = v;
                cpu.advance_rip(len);
                Ok(Action::Resume)
            }
            Exit::Vmcall => {
                if cpu.cpl != 0 {
                    return Ok(self.inject(Injection::ud()));
                }
                if let Err(o) = self.skip(cpu, mem, &[Mnemonic::Vmcall, Mnemonic::Vmmcall], "vmcall") {
                    return o;
                }
                if cpu.rax == HC_POWER_OFF {
                    return Ok(Action::Stop(StopReason::PowerOff { code: Some(cpu.rbx) }));
                }
                cpu.rax = HC_ENOSYS;
                Ok(Action::Resume)
            }
            Exit::Exception { vector, error_code } => {
                let valid = vector < 32 && !matches!(vector, 2 | 9 | 15 | 22..=27 | 31);
                let needs_ec = matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30);
                if !valid || needs_ec != error_code.is_some() {
                    return Ok(Action::Stop(StopReason::GuestFault(GuestFault::BadException { vector })));
                }
                Ok(self.inject(Injection::exception(vector, error_code)))
            }
            Exit::Shutdown => Ok(Action::Stop(StopReason::TripleFault)),
            Exit::InvalidGuestState { code } => {
                Ok(Action::Stop(StopReason::GuestFault(GuestFault::InvalidGuestState { code })))
            }
            Exit::Other { code } => Ok(Action::Stop(StopReason::GuestFault(GuestFault::UnhandledExit { code }))),
        }
    }

    fn unknown_msr(&mut self, idx: u32) -> Action {
        self.stats.count_unknown_msr(idx);
        self.inject(Injection::gp0())
    }

    // ----- port I/O bus -------------------------------------------------------------------------

    fn io_read8(&mut self, port: u16, now: u64) -> Option<u8> {
        Some(match port {
            p if DualPic::handles(p) => self.pic.io_read(p),
            p if Pit::handles(p) => self.pit.io_read(p, now),
            p if (COM1_BASE..COM1_BASE + 8).contains(&p) => self.uart.io_read(p - COM1_BASE),
            p if Rtc::handles(p) => self.rtc.io_read(p, now),
            p if I8042::handles(p) => self.kbd.io_read(p),
            p if ResetPorts::handles(p) => self.reset_ports.io_read(p),
            0x80 | 0xed => self.post.last,
            _ => return None,
        })
    }

    fn io_write8(&mut self, port: u16, v: u8, now: u64) -> Option<MiscEffect> {
        Some(match port {
            p if DualPic::handles(p) => {
                self.pic.io_write(p, v);
                MiscEffect::None
            }
            p if Pit::handles(p) => {
                self.pit.io_write(p, v, now);
                MiscEffect::None
            }
            p if (COM1_BASE..COM1_BASE + 8).contains(&p) => {
                if let Some(b) = self.uart.io_write(p - COM1_BASE, v) {
                    self.console.push_byte(b);
                }
                MiscEffect::None
            }
            p if Rtc::handles(p) => {
                self.rtc.io_write(p, v, now);
                MiscEffect::None
            }
            p if I8042::handles(p) => self.kbd.io_write(p, v),
            p if ResetPorts::handles(p) => self.reset_ports.io_write(p, v),
            0x80 | 0xed => {
                self.post.last = v;
                self.post.writes += 1;
                self.stats.post_code = v;
                MiscEffect::None
            }
            _ => return None,
        })
    }

    /// Port read of `size` bytes (byte lanes at port, port+1, …). Unknown ports read all-ones.
    pub fn io_in(&mut self, port: u16, size: u8, now: u64) -> u32 {
        let mut v = 0u32;
        let mut unknown = false;
        for i in 0..size.min(4) {
            let b = match self.io_read8(port.wrapping_add(i as u16), now) {
                Some(b) => b,
                None => {
                    unknown = true;
                    0xff
                }
            };
            v |= (b as u32) << (8 * i);
        }
        if unknown {
            self.stats.unknown_port_reads += 1;
        }
        self.sync_irqs();
        v
    }

    /// Port write; returns a stop reason if the write resets the machine.
    pub fn io_out(&mut self, port: u16, size: u8, val: u32, now: u64) -> Option<StopReason> {
        if port == 0xcf8 && size == 4 {
            // PCI CONFIG_ADDRESS (there is no PCI here): a dword write to 0xcf8 must not reach
            // the byte-wide reset control register at 0xcf9 through byte-lane splitting.
            self.stats.unknown_port_writes += 1;
            return None;
        }
        let mut unknown = false;
        let mut stop = None;
        for i in 0..size.min(4) {
            match self.io_write8(port.wrapping_add(i as u16), (val >> (8 * i)) as u8, now) {
                Some(MiscEffect::Reset) => stop = Some(StopReason::Reboot),
                Some(MiscEffect::None) => {}
                None => unknown = true,
            }
        }
        if unknown {
            self.stats.unknown_port_writes += 1;
        }
        self.sync_irqs();
        stop
    }

    #[allow(clippy::too_many_arguments)]
    fn string_io(&mut self, port: u16, size: u8, write: bool, rep: bool, cpu: &mut VcpuState, mem: &mut dyn GuestMemory, now: u64) -> Outcome {
        let ms: &[Mnemonic] = if write { &[Mnemonic::Outsb, Mnemonic::Outsw, Mnemonic::Outsd] } else { &[Mnemonic::Insb, Mnemonic::Insw, Mnemonic::Insd] };
        let (len, insn) = match length_of(cpu, mem, ms, "string io") {
            Ok(x) => x,
            Err(e) => return self.fetch_fail(e, cpu),
        };
        // Address size from the memory operand kind.
        let mem_op = if write { 1 } else { 0 };
        let (addr_mask, reg_num) = match insn.op_kind(mem_op) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => (0xffffu64, if write { 6 } else { 7 }),
            OpKind::MemorySegESI | OpKind::MemoryESEDI => (0xffff_ffff, if write { 6 } else { 7 }),
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => (u64::MAX, if write { 6 } else { 7 }),
            _ => return Ok(Action::Stop(StopReason::GuestFault(GuestFault::InstructionMismatch { rip: cpu.rip, exit: "string io" }))),
        };
        let seg = if write {
            match insn.memory_segment() {
                Register::ES => cpu.es,
                Register::CS => cpu.cs,
                Register::SS => cpu.ss,
                Register::FS => cpu.fs,
                Register::GS => cpu.gs,
                _ => cpu.ds,
            }
        } else {
            cpu.es
        };
        let fs_gs = write && matches!(insn.memory_segment(), Register::FS | Register::GS);
        let rep = rep || insn.has_rep_prefix() || insn.has_repne_prefix();
        let mut count = if rep { cpu.rcx & addr_mask } else { 1 };
        let step = if cpu.rflags & RFLAGS_DF != 0 { (size as u64).wrapping_neg() } else { size as u64 };
        let acc = Access { write: !write, fetch: false, user: cpu.cpl == 3 };
        let mut budget = 4096u32;
        while count > 0 && budget > 0 {
            budget -= 1;
            let off = cpu.gpr(reg_num) & addr_mask;
            let la = linear(cpu, &seg, off, fs_gs);
            let mut buf = [0u8; 4];
            let b = &mut buf[..size as usize];
            if write {
                if let Err(e) = read_linear(cpu, mem, la, b, acc) {
                    return self.walk_fail(e, cpu);
                }
                let v = u32::from_le_bytes(buf);
                if let Some(stop) = self.io_out(port, size, v, now) {
                    return Ok(Action::Stop(stop));
                }
            } else {
                let v = self.io_in(port, size, now);
                let bytes = v.to_le_bytes();
                if let Err(e) = write_linear(cpu, mem, la, &bytes[..size as usize], acc) {
                    return self.walk_fail(e, cpu);
                }
            }
            self.stats.string_io_iterations += 1;
            let new = (off.wrapping_add(step) & addr_mask) | (cpu.gpr(reg_num) & !addr_mask);
            cpu.set_gpr(reg_num, new);
            count -= 1;
            if rep {
                cpu.rcx = (count & addr_mask) | (cpu.rcx & !addr_mask);
            }
        }
        if count == 0 {
            cpu.advance_rip(len);
        }
        Ok(Action::Resume)
    }

    fn walk_fail(&mut self, e: WalkError, cpu: &mut VcpuState) -> Outcome {
        match e {
            WalkError::PageFault { addr, error_code } => {
                cpu.cr2 = addr;
                Ok(self.inject(Injection::exception(14, Some(error_code))))
            }
            WalkError::NonCanonical { .. } => Ok(self.inject(Injection::gp0())),
            WalkError::Memory(_) => Ok(Action::Stop(StopReason::GuestFault(GuestFault::Other(String::from(
                "string I/O to a non-RAM guest address",
            ))))),
        }
    }

    // ----- MMIO bus -------------------------------------------------------------------------

    fn mmio(&mut self, gpa: u64, write_hint: Option<bool>, cpu: &mut VcpuState, mem: &mut dyn GuestMemory, now: u64) -> Outcome {
        let (insn, bytes) = match decode_at_rip(cpu, mem) {
            Ok(x) => x,
            Err(e) => return self.fetch_fail(e, cpu),
        };
        let Some(op) = classify_mmio(&insn, cpu) else {
            return Ok(Action::Stop(StopReason::GuestFault(GuestFault::UnsupportedMmioInstruction {
                rip: cpu.rip,
                bytes,
                len: insn.len() as u8,
            })));
        };
        if let Some(w) = write_hint {
            if w != op.is_write() {
                return Ok(Action::Stop(StopReason::GuestFault(GuestFault::InstructionMismatch { rip: cpu.rip, exit: "mmio" })));
            }
        }
        let size = op.size();
        if let (Some(a), Some(w)) = (self.apic.as_mut(), ApicBus::window(gpa)) {
            match op {
                MmioOp::Store { value, .. } => a.mmio_write(self.cur, w, size, value, now),
                MmioOp::Load { .. } => {
                    let v = a.mmio_read(self.cur, w, size, now);
                    complete_load(cpu, &op, v);
                }
            }
            cpu.advance_rip(insn.len() as u64);
            self.sync_irqs();
            return Ok(Action::Resume);
        }
        if self.apic.is_none() && crate::devices::lapic::in_absent_apic_page(gpa) {
            // The page of the local APIC the MP table names but CPUID does not offer: reads
            // of its ID and version answer, the rest reads 0, writes are dropped.
            self.stats.absent_apic_mmio += 1;
            if let MmioOp::Load { .. } = op {
                complete_load(cpu, &op, crate::devices::lapic::absent_apic_read(gpa - crate::devices::lapic::APIC_DEFAULT_BASE));
            }
            cpu.advance_rip(insn.len() as u64);
            return Ok(Action::Resume);
        }
        let dev = self.virtio.iter_mut().find(|d| d.contains(gpa));
        match dev {
            Some(d) => {
                let off = gpa - d.base;
                match op {
                    MmioOp::Store { value, .. } => {
                        d.write(off, size, value, mem);
                        let out = match (&d.dev, self.channel.as_mut()) {
                            (Device::Console(c), Some(ch)) if c.channel => ch,
                            _ => &mut self.console,
                        };
                        d.process_console_tx(mem, out);
                        if d.out_of_memory {
                            return Err(VmError::OutOfMemory);
                        }
                    }
                    MmioOp::Load { .. } => {
                        let v = d.read(off, size);
                        complete_load(cpu, &op, v);
                    }
                }
            }
            None => {
                self.stats.wild_mmio += 1;
                if self.cfg.wild_mmio == WildMmioPolicy::Stop {
                    return Ok(Action::Stop(StopReason::GuestFault(GuestFault::WildMmio { gpa, rip: cpu.rip })));
                }
                if let MmioOp::Load { .. } = op {
                    complete_load(cpu, &op, u64::MAX);
                }
            }
        }
        cpu.advance_rip(insn.len() as u64);
        self.sync_irqs();
        Ok(Action::Resume)
    }
}
