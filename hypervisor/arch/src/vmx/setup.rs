//! Creating a vCPU: its VMCS, I/O and MSR bitmaps, EPT and VPID, and the VMCS controls;
//! making the VMCS current on a CPU and clearing it again.

use super::*;

/// Longest a guest runs without an exit (the VMX-preemption timer): one host timer tick.
pub(super) const PREEMPTION_TIMER_NS: u64 = 10_000_000;

/// The VMX-preemption timer value for `PREEMPTION_TIMER_NS` (it counts down once every
/// 2^IA32_VMX_MISC[4:0] TSC cycles), or None when the CPU lacks the timer or the TSC is not
/// calibrated yet (a value of 0 would exit before every guest instruction).
pub(super) fn preemption_timer_value(c: &Caps) -> Option<u32> {
    if !c.pin_allowed(PIN_PREEMPTION_TIMER) {
        return None;
    }
    let cycles = (crate::time::tsc_hz() as u128 * PREEMPTION_TIMER_NS as u128 / 1_000_000_000) >> (c.misc & 0x1f);
    (cycles > 0).then(|| cycles.min(u32::MAX as u128) as u32)
}

/// The next VPID to hand out (1..=0xffff, wrapping: a reused one is
/// flushed at creation and at the vCPU's first entry on each CPU).
static NEXT_VPID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

impl VmxVcpu {
    pub fn new(ram: &GuestRam, vm_id: u32) -> Result<VmxVcpu, VirtError> {
        // (VMX was turned on on every CPU as it came up; the VMCS setup below checks this one.)
        let caps = Caps::read();
        if !caps.proc2_allowed(PROC2_EPT) {
            return Err(VirtError::Unsupported("VMX without EPT"));
        }
        if caps.ept_vpid & (1 << 6) == 0 || caps.ept_vpid & (1 << 14) == 0 || caps.ept_vpid & (1 << 16) == 0 {
            return Err(VirtError::Unsupported("EPT without 4-level walks, WB or 2 MiB pages"));
        }
        let vmcs = zeroed_frame()?;
        let io_bitmaps = crate::memory::alloc_contiguous(2, 1).map_err(|_| VirtError::OutOfMemory)?;
        let msr_bitmap = zeroed_frame()?;
        // SAFETY: freshly allocated frames reached through the direct map; the VMCS gets its
        // revision id, the I/O bitmaps all ones (every port exits), the MSR bitmap all ones.
        unsafe {
            core::ptr::write_volatile(crate::paging::p2v(vmcs) as *mut u32, caps.revision);
            core::ptr::write_bytes(crate::paging::p2v(io_bitmaps) as *mut u8, 0xff, 2 * 4096);
            core::ptr::write_bytes(crate::paging::p2v(msr_bitmap) as *mut u8, 0xff, 4096);
        }
        let ept = match Ept::build(ram) {
            Ok(e) => e,
            Err(e) => {
                // SAFETY: allocated just above, never loaded (no VMPTRLD yet): nothing uses them.
                unsafe {
                    let _ = crate::memory::free_frame(vmcs);
                    let _ = crate::memory::free_contiguous(io_bitmaps, 2);
                    let _ = crate::memory::free_frame(msr_bitmap);
                }
                return Err(e);
            }
        };
        let vpid_ok = caps.proc2_allowed(PROC2_VPID) && caps.ept_vpid & (1 << 32) != 0;
        // One VPID per vCPU, not per VM: the vCPUs of a multi-vCPU VM time-share CPUs, and
        // each must see only its own guest-linear translations.
        let vpid = if vpid_ok { 1 + (NEXT_VPID.fetch_add(1, Ordering::Relaxed) % 0xffff) as u16 } else { 0 };
        let unrestricted = caps.proc2_allowed(PROC2_UNRESTRICTED);
        log::debug!(target: "vmx", "VM {vm_id}: new vCPU, VPID {vpid}, unrestricted guest {unrestricted}");
        let mut v = VmxVcpu {
            ram: ram.share(),
            vmcs,
            io_bitmaps,
            msr_bitmap,
            ept,
            vpid,
            caps,
            unrestricted,
            gprs: GuestGprs::default(),
            host_fpu: XsaveArea::reset(),
            guest_fpu: XsaveArea::reset(),
            dr: GuestDebugRegs::RESET,
            guest_msrs: [0; 5],
            xcr0: 1,
            cr2: 0,
            launched: false,
            placement: Placement::default(),
            reinject: None,
            proc_base: 0,
            cr0_mask: 0,
            cr4_mask: 0,
        };
        for msr in [IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK,
            IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP, IA32_PAT]
        {
            v.msr_passthrough(msr);
        }
        crate::cpu::without_interrupts(|| {
            on_here()?;
            let r = v.setup_vmcs();
            v.release();
            r
        })?;
        Ok(v)
    }

    pub(super) fn msr_passthrough(&mut self, msr: u32) {
        let (base, off) = match msr {
            0..=0x1fff => (0u64, msr as u64),
            0xc000_0000..=0xc000_1fff => (1024, (msr - 0xc000_0000) as u64),
            _ => return,
        };
        for area in [base, base + 2048] {
            let p = (crate::paging::p2v(self.msr_bitmap) + area + off / 8) as *mut u8;
            // SAFETY: inside the 4 KiB MSR bitmap this vCPU owns.
            unsafe { *p &= !(1 << (off % 8)) };
        }
    }

    /// Make this vCPU's VMCS current on this CPU. Call with interrupts off.
    pub(super) fn load(&self) -> Result<(), VirtError> {
        on_here()?;
        if vmptrst() != self.vmcs {
            vmx_pa_insn(2, self.vmcs).map_err(|e| {
                log::warn!(target: "vmx", "VMPTRLD failed ({e}: {})", vm_instruction_error_name(e));
                VirtError::EntryFailed(e)
            })?;
        }
        Ok(())
    }

    /// VMCLEAR: write the VMCS back to memory and make it inactive on this CPU, before
    /// interrupts come back on (the task may then be moved: a VMCS must never be active on two
    /// CPUs, and only the CPU it is active on can clear it). The next entry is a VMLAUNCH.
    pub(super) fn release(&mut self) {
        if on_here().is_ok() {
            let _ = vmx_pa_insn(1, self.vmcs);
        }
        self.launched = false;
    }

    pub(super) fn setup_vmcs(&mut self) -> Result<(), VirtError> {
        let c = self.caps;
        vmx_pa_insn(1, self.vmcs).map_err(VirtError::EntryFailed)?;
        self.load()?;
        let icpt = catenary_vmm::intercepts::vmx_intercepts();
        // The VMX-preemption timer as a backstop: the guest exits after at most
        // `PREEMPTION_TIMER_NS` of guest time even if a host interrupt does not make it exit.
        // Bochs 2.7 is such a CPU: entered from the host's interrupts-off window with guest
        // RFLAGS.IF = 0 too, it leaves host interrupts masked (it re-evaluates interrupt
        // masking only when IF changes), so a guest spinning with interrupts off (a Linux AP
        // waiting for its BSP in `wait_for_master_cpu`) kept the only CPU for good and the
        // whole node stopped (docs/vmm.md "Multi-vCPU microVMs").
        let timer = preemption_timer_value(&c);
        let want_pin = if timer.is_some() { icpt.pin | PIN_PREEMPTION_TIMER } else { icpt.pin };
        let pin = adjust_controls(want_pin, c.pin);
        let proc = adjust_controls(icpt.proc, c.proc) & !PROC_UNCOND_IO;
        let mut want2 = icpt.proc2 | PROC2_EPT | PROC2_RDTSCP | PROC2_INVPCID | PROC2_XSAVES;
        if self.vpid != 0 {
            want2 |= PROC2_VPID;
        }
        if self.unrestricted {
            want2 |= PROC2_UNRESTRICTED;
        }
        let proc2 = adjust_controls(want2, c.proc2);
        if pin & icpt.pin != icpt.pin || proc & icpt.proc != icpt.proc || proc2 & icpt.proc2 != icpt.proc2 {
            log::warn!(target: "vmx", "CPU refuses intercepts: pin {:#x} proc {:#x} proc2 {:#x} missing",
                icpt.pin & !pin, icpt.proc & !proc, icpt.proc2 & !proc2);
        }
        let exit = adjust_controls(EXIT_SAVE_DEBUG | EXIT_HOST_64 | EXIT_SAVE_EFER | EXIT_LOAD_EFER | EXIT_SAVE_PAT | EXIT_LOAD_PAT, c.exit) & !EXIT_ACK_INTR;
        let entry = adjust_controls(ENTRY_LOAD_DEBUG | ENTRY_LOAD_EFER | ENTRY_LOAD_PAT, c.entry) & !ENTRY_IA32E;
        self.proc_base = proc & !PROC_INTR_WINDOW;
        vmwrite(f::PIN_CONTROLS, pin as u64);
        vmwrite(f::PROC_CONTROLS, self.proc_base as u64);
        vmwrite(f::PROC_CONTROLS2, proc2 as u64);
        vmwrite(f::EXIT_CONTROLS, exit as u64);
        vmwrite(f::ENTRY_CONTROLS, entry as u64);
        vmwrite(f::EXCEPTION_BITMAP, icpt.exception_bitmap as u64);
        vmwrite(f::PF_ERROR_MASK, 0);
        vmwrite(f::PF_ERROR_MATCH, 0);
        vmwrite(f::CR3_TARGET_COUNT, 0);
        vmwrite(f::EXIT_MSR_STORE_COUNT, 0);
        vmwrite(f::EXIT_MSR_LOAD_COUNT, 0);
        vmwrite(f::ENTRY_MSR_LOAD_COUNT, 0);
        vmwrite(f::ENTRY_INTR_INFO, 0);
        vmwrite(f::IO_BITMAP_A, self.io_bitmaps);
        vmwrite(f::IO_BITMAP_B, self.io_bitmaps + 4096);
        vmwrite(f::MSR_BITMAP, self.msr_bitmap);
        vmwrite(f::TSC_OFFSET, crate::time::guest_tsc_offset());
        vmwrite(f::EPT_POINTER, self.ept.eptp());
        if let Some(t) = timer.filter(|_| pin & PIN_PREEMPTION_TIMER != 0) {
            // (Without "save VMX-preemption timer value" every entry starts from this value.)
            vmwrite(f::PREEMPTION_TIMER_VALUE, t as u64);
        }
        if self.vpid != 0 {
            vmwrite(f::VPID, self.vpid as u64);
        }
        vmwrite(f::VMCS_LINK_POINTER, u64::MAX);
        vmwrite(f::GUEST_IA32_DEBUGCTL, 0);
        vmwrite(f::GUEST_IA32_PAT, 0x0007_0406_0007_0406);
        vmwrite(f::GUEST_DR7, 0x400);
        vmwrite(f::GUEST_PENDING_DBG, 0);
        vmwrite(f::GUEST_ACTIVITY_STATE, 0);
        vmwrite(f::GUEST_INTERRUPTIBILITY, 0);
        vmwrite(f::GUEST_SYSENTER_CS, 0);
        vmwrite(f::GUEST_SYSENTER_ESP, 0);
        vmwrite(f::GUEST_SYSENTER_EIP, 0);
        // Host-owned CR bits: those VMX forces either way (PE/PG are free with unrestricted guest).
        let (f0, f1) = self.cr0_fixed();
        self.cr0_mask = (f0 | !f1) & 0xffff_ffff;
        self.cr4_mask = (c.cr4_fixed0 | !c.cr4_fixed1) & 0xffff_ffff;
        vmwrite(f::CR0_MASK, self.cr0_mask);
        vmwrite(f::CR4_MASK, self.cr4_mask);
        write_host_state();
        // A previous VM may have used this VPID / this EPT root address.
        self.flush_tlb();
        log::debug!(target: "vmx", "VMCS {:#x}: pin {pin:#x} proc {proc:#x} proc2 {proc2:#x} exit {exit:#x} entry {entry:#x} vpid {} preemption timer {timer:?}", self.vmcs, self.vpid);
        Ok(())
    }

}
