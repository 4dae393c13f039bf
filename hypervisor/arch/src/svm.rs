//! AMD SVM backend with nested paging (NPT).
//!
//! Per CPU: EFER.SVME, a host save area (VM_HSAVE_PA) and a host VMSAVE page. Per vCPU: a VMCB,
//! an I/O permission map (all ports intercepted), an MSR permission map (all MSRs intercepted
//! except those VMLOAD/VMSAVE switch and the guest PAT), nested page tables over the guest RAM
//! chunks (2 MiB pages), an ASID, the guest's GPRs, XSAVE area, XCR0 and DR0–DR3
//! (`guest_switch.rs`). The intercepts are `catenary_vmm::intercepts::svm_intercepts()`.
//!
//! QEMU TCG's SVM has no NRIPS and no decode assists, so exits report RIP at the instruction
//! and the device model (`catenary-vmm`) advances it and decodes MMIO instructions itself.

use crate::guest_switch::{FpuSwitch, GuestDebugRegs, XsaveArea};
use crate::virt::{GuestRam, Placement, RamChunks, Vcpu, VirtError, CHUNK};
use alloc::boxed::Box;
use alloc::vec::Vec;
use catenary_vmm::cpu::{DescTable, Exit, Segment, VcpuState};
use catenary_vmm::EventDecision;
use catenary_vmm::svm_exit;
use core::sync::atomic::{AtomicU64, Ordering};
use crate::smp::MAX_CPUS;

const MSR_EFER: u32 = 0xc000_0080;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;
const EFER_SVME: u64 = 1 << 12;

// VMCB control area
const C_INTERCEPT_EXC: usize = 0x008;
const C_INTERCEPT_V3: usize = 0x00c;
const C_INTERCEPT_V4: usize = 0x010;
const C_IOPM: usize = 0x040;
const C_MSRPM: usize = 0x048;
const C_TSC_OFFSET: usize = 0x050;
const C_ASID: usize = 0x058;
const C_TLB_CONTROL: usize = 0x05c;
const C_VINTR: usize = 0x060;
const C_INT_SHADOW: usize = 0x068;
const C_EXITCODE: usize = 0x070;
const C_EXITINFO1: usize = 0x078;
const C_EXITINFO2: usize = 0x080;
const C_EXITINTINFO: usize = 0x088;
const C_NP_ENABLE: usize = 0x090;
const C_EVENTINJ: usize = 0x0a8;
const C_NCR3: usize = 0x0b0;
// VMCB state save area
const S_ES: usize = 0x400;
const S_CS: usize = 0x410;
const S_SS: usize = 0x420;
const S_DS: usize = 0x430;
const S_FS: usize = 0x440;
const S_GS: usize = 0x450;
const S_GDTR: usize = 0x460;
const S_LDTR: usize = 0x470;
const S_IDTR: usize = 0x480;
const S_TR: usize = 0x490;
const S_CPL: usize = 0x4cb;
const S_EFER: usize = 0x4d0;
const S_CR4: usize = 0x548;
const S_CR3: usize = 0x550;
const S_CR0: usize = 0x558;
const S_DR7: usize = 0x560;
const S_DR6: usize = 0x568;
const S_RFLAGS: usize = 0x570;
const S_RIP: usize = 0x578;
const S_RSP: usize = 0x5d8;
const S_RAX: usize = 0x5f8;
const S_CR2: usize = 0x640;
const S_GPAT: usize = 0x668;

// Intercept bits: the configuration is `catenary_vmm::intercepts::svm_intercepts()`
// (host-tested); VINTR is toggled per entry.
use catenary_vmm::intercepts::svm::I3_VINTR;

extern "C" {
    fn arch_svm_run(vmcb_pa: u64, gprs: *mut GuestGprs, host_vmsave_pa: u64, fpu: *mut FpuSwitch);
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct GuestGprs {
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
}


/// Per CPU (by `smp::cpu_index`): the host VMSAVE page once SVM is on there (0 before), and the
/// serial of the vCPU that last entered a guest there (TLB flush decisions). Plain atomics, no
/// lock: `run` reads them with interrupts off, after the last point where its task could have
/// been preempted and moved to another CPU (a spin lock there could be held by a preempted task
/// on the same CPU).
static HOST_VMSAVE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static LAST_VCPU_ON_CPU: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

fn zeroed_frame() -> Result<u64, VirtError> {
    crate::memory::alloc_zeroed_frame().map_err(|_| VirtError::OutOfMemory)
}

/// CPU `cpu`'s host VMSAVE page; an error if SVM is not on there. Never allocates: `run` calls
/// it with interrupts off (every CPU enables SVM when it comes up: `virt::enable_this_cpu`).
fn host_vmsave_of(cpu: usize) -> Result<u64, VirtError> {
    match HOST_VMSAVE.get(cpu).map(|s| s.load(Ordering::Relaxed)) {
        Some(pa) if pa != 0 => Ok(pa),
        _ => Err(VirtError::Unsupported("SVM is not enabled on this CPU")),
    }
}

/// Enable SVM on this CPU (once) and return its host VMSAVE page.
pub fn enable_on_this_cpu() -> Result<u64, VirtError> {
    crate::cpu::without_interrupts(|| {
        // Interrupts off: the check, the MSR writes and the store all happen on one CPU.
        let cpu = crate::smp::cpu_index();
        let slot = HOST_VMSAVE.get(cpu).ok_or(VirtError::Unsupported("CPU index out of range"))?;
        let vmsave = slot.load(Ordering::Relaxed);
        if vmsave != 0 {
            return Ok(vmsave);
        }
        // VM_CR.SVMDIS (MSR 0xc001_0114 bit 4) set by firmware means SVM is locked off.
        if crate::cpu::rdmsr(0xc001_0114) & (1 << 4) != 0 {
            return Err(VirtError::Unsupported("SVM disabled by firmware (VM_CR.SVMDIS)"));
        }
        let hsave = zeroed_frame()?;
        let vmsave = zeroed_frame()?;
        // SAFETY: EFER.SVME enables the SVM instructions; VM_HSAVE_PA points at a page we own
        // for good. Neither changes memory safety of the running kernel.
        unsafe {
            crate::cpu::wrmsr(MSR_EFER, crate::cpu::rdmsr(MSR_EFER) | EFER_SVME);
            crate::cpu::wrmsr(MSR_VM_HSAVE_PA, hsave);
        }
        slot.store(vmsave, Ordering::Relaxed);
        Ok(vmsave)
    })
}

/// Nested page tables mapping guest-physical RAM onto the GuestRam chunks with 2 MiB pages.
struct Npt {
    root: u64,
    tables: Vec<u64>,
}

const NPT_TABLE: u64 = 0x7; // P | RW | US (nested walks are user accesses)
const NPT_LEAF_2M: u64 = 0x7 | 0x80; // + PS; executable

impl Npt {
    fn build(ram: &GuestRam) -> Result<Npt, VirtError> {
        let root = zeroed_frame()?;
        let mut npt = Npt { root, tables: Vec::new() };
        // Build the table levels for all of RAM, but map only the chunks the loader populated;
        // the rest is mapped on first access (`map_chunk`).
        for (i, &hpa) in ram.chunks().iter().enumerate() {
            let gpa = i as u64 * CHUNK;
            let pdpt = npt.next_level(root, (gpa >> 39) & 511)?;
            let pd = npt.next_level(pdpt, (gpa >> 30) & 511)?;
            if ram.is_populated(i) {
                npt.write_entry(pd, (gpa >> 21) & 511, hpa | NPT_LEAF_2M);
            }
        }
        Ok(npt)
    }

    /// Map chunk `idx` (not-present → present: no TLB flush needed).
    fn map_chunk(&mut self, idx: usize, hpa: u64) -> Result<(), VirtError> {
        let gpa = idx as u64 * CHUNK;
        let pdpt = self.next_level(self.root, (gpa >> 39) & 511)?;
        let pd = self.next_level(pdpt, (gpa >> 30) & 511)?;
        self.write_entry(pd, (gpa >> 21) & 511, hpa | NPT_LEAF_2M);
        Ok(())
    }

    fn entry_ptr(table: u64, idx: u64) -> *mut u64 {
        (crate::paging::p2v(table) + idx * 8) as *mut u64
    }

    fn write_entry(&mut self, table: u64, idx: u64, v: u64) {
        // SAFETY: `table` is a page-table frame this Npt owns; idx < 512.
        unsafe { core::ptr::write_volatile(Self::entry_ptr(table, idx), v) }
    }

    fn next_level(&mut self, table: u64, idx: u64) -> Result<u64, VirtError> {
        // SAFETY: as in write_entry.
        let e = unsafe { core::ptr::read_volatile(Self::entry_ptr(table, idx)) };
        if e & 1 != 0 {
            return Ok(e & 0x000f_ffff_ffff_f000);
        }
        let t = zeroed_frame()?;
        self.tables.push(t);
        self.write_entry(table, idx, t | NPT_TABLE);
        Ok(t)
    }
}

impl Drop for Npt {
    fn drop(&mut self) {
        for &t in self.tables.iter().chain(core::iter::once(&self.root)) {
            // SAFETY: nested-table frames only this Npt owns; its vCPU is being dropped, so no
            // VMRUN uses them again, and the next vCPU entering on any CPU flushes the TLB
            // (TLB_CONTROL, `run`) before its guest could use a stale nested translation.
            let _ = unsafe { crate::memory::free_frame(t) };
        }
    }
}

pub struct SvmVcpu {
    /// The guest RAM its NPT maps (kept alive as long as this vCPU).
    ram: alloc::sync::Arc<RamChunks>,
    vmcb: u64,
    iopm: u64,
    msrpm: u64,
    npt: Npt,
    gprs: GuestGprs,
    host_fpu: Box<XsaveArea>,
    guest_fpu: Box<XsaveArea>,
    /// The guest's XCR0 (set through the intercepted XSETBV, validated by the device model).
    xcr0: u64,
    /// DR0–DR3 (DR6/DR7 live in the VMCB).
    dr: GuestDebugRegs,
    asid: u32,
    /// Unique for the node's lifetime (ASIDs are reused).
    serial: u64,
    /// The CPUs (index) this vCPU entered a guest on, the last one, and how often it moved.
    placement: Placement,
    reinject: Option<u64>,
    /// An external interrupt armed as a virtual interrupt (V_IRQ) that the guest has not taken
    /// yet: re-armed on every entry, and the device model is asked for nothing else meanwhile.
    virq: Option<u8>,
    /// The RIP of the last exit that found the guest in an interrupt shadow, until an exit
    /// elsewhere: the shadowed instruction has not run while the guest is still there.
    shadow_at: Option<u64>,
}

impl SvmVcpu {
    pub fn new(ram: &GuestRam, vm_id: u32) -> Result<SvmVcpu, VirtError> {
        // (No SVM instruction here: SVM was turned on on every CPU as it came up, and `run`
        // checks the CPU it enters on.)
        let vmcb = zeroed_frame()?;
        let iopm = crate::memory::alloc_contiguous(3, 1).map_err(|_| VirtError::OutOfMemory)?;
        let msrpm = crate::memory::alloc_contiguous(2, 1).map_err(|_| VirtError::OutOfMemory)?;
        // SAFETY: freshly allocated frames reached through the direct map.
        unsafe {
            core::ptr::write_bytes(crate::paging::p2v(iopm) as *mut u8, 0xff, 3 * 4096);
            core::ptr::write_bytes(crate::paging::p2v(msrpm) as *mut u8, 0xff, 2 * 4096);
        }
        let npt = Npt::build(ram)?;
        let max_asid = crate::cpu::cpuid(0x8000_000a, 0).1.max(2);
        let asid = 1 + vm_id % (max_asid - 1);
        let mut v = SvmVcpu {
            ram: ram.share(),
            vmcb,
            iopm,
            msrpm,
            npt,
            gprs: GuestGprs::default(),
            host_fpu: XsaveArea::reset(),
            guest_fpu: XsaveArea::reset(),
            xcr0: 1,
            dr: GuestDebugRegs::RESET,
            asid,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            placement: Placement::default(),
            reinject: None,
            virq: None,
            shadow_at: None,
        };
        // MSRs that VMLOAD/VMSAVE switch, and the guest PAT (G_PAT with NPT): the guest owns them.
        for msr in [0xc000_0100, 0xc000_0101, 0xc000_0102, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0x174, 0x175, 0x176, 0x277] {
            v.msr_passthrough(msr);
        }
        let icpt = catenary_vmm::intercepts::svm_intercepts();
        v.w32(C_INTERCEPT_EXC, icpt.exceptions);
        v.w32(C_INTERCEPT_V3, icpt.vec3);
        v.w32(C_INTERCEPT_V4, icpt.vec4);
        v.w64(C_IOPM, iopm);
        v.w64(C_MSRPM, msrpm);
        v.w64(C_TSC_OFFSET, crate::time::guest_tsc_offset());
        v.w32(C_ASID, asid);
        v.w64(C_VINTR, 1 << 24); // V_INTR_MASKING: host IF controls physical interrupts
        v.w64(C_NP_ENABLE, 1);
        v.w64(C_NCR3, v.npt.root);
        v.w64(S_GPAT, 0x0007_0406_0007_0406);
        v.w64(S_DR6, 0xffff_0ff0);
        v.w64(S_DR7, 0x400);
        Ok(v)
    }

    fn msr_passthrough(&mut self, msr: u32) {
        let (base, off) = match msr {
            0..=0x1fff => (0u64, msr as u64),
            0xc000_0000..=0xc000_1fff => (0x800, (msr - 0xc000_0000) as u64),
            0xc001_0000..=0xc001_1fff => (0x1000, (msr - 0xc001_0000) as u64),
            _ => return,
        };
        let bit = off * 2;
        let byte = base + bit / 8;
        let p = (crate::paging::p2v(self.msrpm) + byte) as *mut u8;
        // SAFETY: inside the 8 KiB MSRPM this vCPU owns.
        unsafe { *p &= !(0b11 << (bit % 8)) };
    }

    fn ptr(&self, off: usize) -> u64 {
        crate::paging::p2v(self.vmcb) + off as u64
    }
    fn r64(&self, off: usize) -> u64 {
        // SAFETY: `off` is a VMCB field offset inside the VMCB page this vCPU owns.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u64) }
    }
    fn w64(&mut self, off: usize, v: u64) {
        // SAFETY: as in r64.
        unsafe { core::ptr::write_volatile(self.ptr(off) as *mut u64, v) }
    }
    fn r32(&self, off: usize) -> u32 {
        // SAFETY: as in r64.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u32) }
    }
    fn w32(&mut self, off: usize, v: u32) {
        // SAFETY: as in r64.
        unsafe { core::ptr::write_volatile(self.ptr(off) as *mut u32, v) }
    }
    fn r16(&self, off: usize) -> u16 {
        // SAFETY: as in r64.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u16) }
    }
    fn w16(&mut self, off: usize, v: u16) {
        // SAFETY: as in r64.
        unsafe { core::ptr::write_volatile(self.ptr(off) as *mut u16, v) }
    }
    fn w8(&mut self, off: usize, v: u8) {
        // SAFETY: as in r64.
        unsafe { core::ptr::write_volatile(self.ptr(off) as *mut u8, v) }
    }
    fn r8(&self, off: usize) -> u8 {
        // SAFETY: as in r64.
        unsafe { core::ptr::read_volatile(self.ptr(off) as *const u8) }
    }

    fn set_seg(&mut self, off: usize, s: &Segment) {
        self.w16(off, s.selector);
        self.w16(off + 2, s.attr);
        self.w32(off + 4, s.limit);
        self.w64(off + 8, s.base);
    }
    fn seg(&self, off: usize) -> Segment {
        Segment { selector: self.r16(off), attr: self.r16(off + 2), limit: self.r32(off + 4), base: self.r64(off + 8) }
    }
    fn set_table(&mut self, off: usize, t: &DescTable) {
        self.w32(off + 4, t.limit as u32);
        self.w64(off + 8, t.base);
    }
    fn table(&self, off: usize) -> DescTable {
        DescTable { limit: self.r32(off + 4) as u16, base: self.r64(off + 8) }
    }

    fn decode(&self) -> Exit {
        let code = self.r64(C_EXITCODE);
        let info1 = self.r64(C_EXITINFO1);
        let info2 = self.r64(C_EXITINFO2);
        catenary_vmm::svm_exit::decode_svm_exit(code, info1, info2)
    }
}

impl Vcpu for SvmVcpu {
    fn backend(&self) -> &'static str {
        "svm"
    }

    fn id(&self) -> u32 {
        self.asid
    }

    fn set_state(&mut self, s: &VcpuState) {
        self.gprs = GuestGprs {
            rbx: s.rbx,
            rcx: s.rcx,
            rdx: s.rdx,
            rsi: s.rsi,
            rdi: s.rdi,
            rbp: s.rbp,
            r8: s.r8,
            r9: s.r9,
            r10: s.r10,
            r11: s.r11,
            r12: s.r12,
            r13: s.r13,
            r14: s.r14,
            r15: s.r15,
        };
        self.w64(S_RAX, s.rax);
        self.w64(S_RSP, s.rsp);
        self.w64(S_RIP, s.rip);
        self.w64(S_RFLAGS, s.rflags | 2);
        self.w64(S_CR0, s.cr0);
        self.w64(S_CR2, s.cr2);
        self.w64(S_CR3, s.cr3);
        self.w64(S_CR4, s.cr4);
        self.w64(S_EFER, s.efer | EFER_SVME);
        for (off, seg) in [(S_CS, &s.cs), (S_DS, &s.ds), (S_ES, &s.es), (S_FS, &s.fs), (S_GS, &s.gs), (S_SS, &s.ss), (S_TR, &s.tr), (S_LDTR, &s.ldtr)] {
            self.set_seg(off, seg);
        }
        self.set_table(S_GDTR, &s.gdtr);
        self.set_table(S_IDTR, &s.idtr);
        self.w8(S_CPL, s.cpl);
        self.w64(C_INT_SHADOW, s.interrupt_shadow as u64);
        self.xcr0 = s.xcr0;
    }

    fn state(&self) -> VcpuState {
        let g = &self.gprs;
        let mut s = VcpuState::new();
        s.rax = self.r64(S_RAX);
        s.rbx = g.rbx;
        s.rcx = g.rcx;
        s.rdx = g.rdx;
        s.rsi = g.rsi;
        s.rdi = g.rdi;
        s.rsp = self.r64(S_RSP);
        s.rbp = g.rbp;
        s.r8 = g.r8;
        s.r9 = g.r9;
        s.r10 = g.r10;
        s.r11 = g.r11;
        s.r12 = g.r12;
        s.r13 = g.r13;
        s.r14 = g.r14;
        s.r15 = g.r15;
        s.rip = self.r64(S_RIP);
        s.rflags = self.r64(S_RFLAGS);
        s.cr0 = self.r64(S_CR0);
        s.cr2 = self.r64(S_CR2);
        s.cr3 = self.r64(S_CR3);
        s.cr4 = self.r64(S_CR4);
        s.efer = self.r64(S_EFER) & !EFER_SVME;
        s.cs = self.seg(S_CS);
        s.ds = self.seg(S_DS);
        s.es = self.seg(S_ES);
        s.fs = self.seg(S_FS);
        s.gs = self.seg(S_GS);
        s.ss = self.seg(S_SS);
        s.tr = self.seg(S_TR);
        s.ldtr = self.seg(S_LDTR);
        s.gdtr = self.table(S_GDTR);
        s.idtr = self.table(S_IDTR);
        s.cpl = self.r8(S_CPL);
        s.interrupt_shadow = self.r64(C_INT_SHADOW) & 1 != 0;
        s.xcr0 = self.xcr0;
        s
    }

    fn run(&mut self, event: EventDecision) -> Result<Exit, VirtError> {
        // External interrupts go in as a virtual interrupt (V_IRQ), never through EVENTINJ:
        // see `catenary_vmm::svm_exit::virtual_interrupt_vector` (a QEMU TCG bug delivers an
        // EVENTINJ interrupt twice). NMIs and exceptions keep using EVENTINJ.
        let mut window = false;
        let inject = |v: &mut Self, ev: u64| match svm_exit::virtual_interrupt_vector(ev) {
            Some(vector) => v.virq = Some(vector),
            None => v.w64(C_EVENTINJ, ev),
        };
        if let Some(ev) = self.reinject.take() {
            inject(self, ev);
        } else if self.virq.is_none() {
            match event {
                EventDecision::Inject(i) => inject(self, i.svm_eventinj()),
                EventDecision::RequestWindow => window = true,
                EventDecision::None => {}
            }
        }
        let vintr = self.r64(C_VINTR);
        let i3 = self.r32(C_INTERCEPT_V3);
        // Never arm an interrupt (nor open a window) into an STI / MOV SS shadow. The guest is
        // in one when it exited on the shadowed instruction (a host interrupt between `sti`
        // and `hlt`). Hardware honours the VMCB's shadow at VMRUN; QEMU's TCG before 9.1 drops
        // it (fixed by "target/i386: fix INHIBIT_IRQ/TF/RF handling for VMRUN"), so the
        // interrupt came in before the HLT, its handler returned to the HLT, and the guest
        // slept through the wakeup it was waiting for (the irqonce test's intermittent hang,
        // docs/vmm.md "Soak"). Now the guest runs the shadowed instruction first; the next exit
        // (at the latest the host's next timer interrupt) arms it, `virq` staying pending.
        let in_shadow = self.r64(C_INT_SHADOW) & 1 != 0;
        if let Some(vector) = self.virq.filter(|_| !in_shadow) {
            // Taken at the first instruction boundary where the guest can take an interrupt;
            // the exit path looks at V_IRQ to learn whether it was.
            self.w64(C_VINTR, svm_exit::vintr::armed(vintr, vector));
            self.w32(C_INTERCEPT_V3, i3 & !I3_VINTR);
        } else if window && !in_shadow {
            // A dummy virtual interrupt with the VINTR intercept: #VMEXIT(VINTR) fires as soon
            // as the guest can take an interrupt; then the real one is armed.
            self.w64(C_VINTR, svm_exit::vintr::armed(vintr, 0));
            self.w32(C_INTERCEPT_V3, i3 | I3_VINTR);
        } else {
            self.w64(C_VINTR, svm_exit::vintr::cleared(vintr));
            self.w32(C_INTERCEPT_V3, i3 & !I3_VINTR);
        }

        let gprs: *mut GuestGprs = &mut self.gprs;
        let tlb_control = self.ptr(C_TLB_CONTROL) as *mut u8;
        let serial = self.serial;
        let mut fpu = FpuSwitch::new(&mut self.host_fpu, &mut self.guest_fpu, self.xcr0);
        let fpu_ptr: *mut FpuSwitch = &mut fpu;
        let vmcb = self.vmcb;
        let dr = &mut self.dr;
        let placement = &mut self.placement;
        crate::cpu::without_interrupts(|| -> Result<(), VirtError> {
            // Everything per-CPU is chosen here, with interrupts off: until this point the task
            // may have been preempted and resumed on another CPU (vCPU tasks migrate, docs/vmm.md
            // "SMP"), and the host VMSAVE page and the TLB that matter are those of the CPU that
            // executes VMRUN. VM_HSAVE_PA is per CPU in hardware (an MSR each CPU set when it
            // enabled SVM), and the VMCB has no cached state to drop: this backend never sets
            // VMCB clean bits (offset 0xc0 stays 0), so VMRUN reloads every field on any CPU.
            let cpu = crate::smp::cpu_index();
            let host_vmsave = host_vmsave_of(cpu)?;
            // ASIDs are a small pool (16 on QEMU) shared by all microVMs, so two vCPUs can
            // carry the same ASID: flush whenever this CPU last ran a different vCPU, or this
            // vCPU last ran elsewhere (its guest may have changed its page tables and flushed
            // only that other CPU's TLB). TLB_CONTROL=1 (flush all) is the one mode every SVM
            // implementation has (QEMU has no flush-by-ASID).
            let prev = LAST_VCPU_ON_CPU.get(cpu).ok_or(VirtError::Unsupported("CPU index out of range"))?.swap(serial, Ordering::Relaxed);
            let moved = placement.enter(cpu);
            let flush = prev != serial || moved;
            // SAFETY: TLB_CONTROL is a byte inside the VMCB page this vCPU owns.
            unsafe { core::ptr::write_volatile(tlb_control, flush as u8) };
            let host_dr = dr.load(false);
            // SAFETY: SVM is enabled on this CPU with a valid VM_HSAVE_PA and `host_vmsave` is
            // this CPU's own VMSAVE page (read with interrupts off); the VMCB, IOPM, MSRPM and
            // nested tables are owned by this vCPU and valid; the FPU switch points at this
            // vCPU's two XSAVE areas with XCR0 values the CPU supports; GIF is cleared so no
            // interrupt lands between the host-state switches and VMRUN, and set again after.
            // IF is set (under GIF=0) for VMRUN: with V_INTR_MASKING the host's IF at VMRUN
            // decides whether physical interrupts reach the host (as #VMEXIT(INTR)) while the
            // guest runs; with IF clear a guest that never exits would keep its CPU forever.
            // A host NMI that arrives meanwhile exits (NMI intercept) and stays pending until
            // STGI, where the host takes it.
            unsafe {
                core::arch::asm!("clgi", "sti");
                arch_svm_run(vmcb, gprs, host_vmsave, fpu_ptr);
                core::arch::asm!("cli", "stgi");
            }
            dr.save(&host_dr, false);
            Ok(())
        })?;
        if let Some(x) = fpu.guest_xcr0_after() {
            self.xcr0 = x;
        }
        // Interrupts are back on here: a host interrupt that caused the exit has been taken.

        self.w64(C_EVENTINJ, 0);
        // The armed virtual interrupt stays pending until the CPU clears V_IRQ (taken; if its
        // delivery was cut short EXITINTINFO holds it, below).
        if self.virq.is_some() && self.r64(C_VINTR) & svm_exit::vintr::V_IRQ == 0 {
            self.virq = None;
        }
        // QEMU's TCG before 9.1 does not load the VMCB's interrupt shadow at VMRUN (see above),
        // so an exit that comes before the guest ran its shadowed instruction (a second host
        // interrupt) reports no shadow at the same RIP: the recorded exits of the irqonce hang
        // were `external_interrupt at 0x10099 shadow 1`, then `… at 0x10099 shadow 0`, then the
        // interrupt went in before the HLT. Still at the RIP where the shadow was seen, the
        // shadow is still there. (An exit at the same RIP after the guest did run the
        // instruction and came back to it would delay an interrupt by one instruction.)
        let rip = self.r64(S_RIP);
        if self.r64(C_INT_SHADOW) & 1 != 0 {
            self.shadow_at = Some(rip);
        } else if self.shadow_at == Some(rip) {
            self.w64(C_INT_SHADOW, 1);
        } else {
            self.shadow_at = None;
        }
        let intinfo = self.r64(C_EXITINTINFO);
        // An event was being delivered when the exit hit: deliver it again on the next entry
        // (or let the guest re-execute the INT instruction that raised it: see `redelivery`).
        self.reinject = catenary_vmm::svm_exit::redelivery(intinfo);
        Ok(self.decode())
    }

    fn reinjection_pending(&self) -> bool {
        self.reinject.is_some() || self.virq.is_some()
    }

    fn lazy_ram(&self) -> bool {
        true
    }

    fn map_ram_chunk(&mut self, idx: usize) {
        let Some(hpa) = self.ram.chunk(idx) else { return };
        self.ram.populate(idx);
        // The table levels were built for all of RAM at creation, so this cannot allocate.
        let _ = self.npt.map_chunk(idx, hpa);
    }

    fn placement(&self) -> Placement {
        self.placement
    }

    fn overhead_bytes(&self) -> u64 {
        // VMCB + IOPM (3) + MSRPM (2) + nested tables + GPR/XSAVE areas
        (1 + 3 + 2 + 1 + self.npt.tables.len() as u64) * 4096 + 2 * core::mem::size_of::<XsaveArea>() as u64 + core::mem::size_of::<Self>() as u64
    }
}

impl Drop for SvmVcpu {
    fn drop(&mut self) {
        // SAFETY: control frames only this vCPU owns; it is being dropped, so no VMRUN on any
        // CPU names its VMCB (VMRUN runs only inside `run`, which needs `&mut self`).
        unsafe {
            let _ = crate::memory::free_frame(self.vmcb);
            let _ = crate::memory::free_contiguous(self.iopm, 3);
            let _ = crate::memory::free_contiguous(self.msrpm, 2);
        }
    }
}
