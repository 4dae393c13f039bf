//! Entering the guest and coming back: the per-entry TLB flush, MSR swap, VMLAUNCH/VMRESUME
//! (`asm/vmx.s`), event injection and re-injection, and decoding the exit.

use super::*;

extern "C" {
    pub(super) fn arch_vmx_run(gprs: *mut GuestGprs, resume: u64, fpu: *mut FpuSwitch) -> u32;
    pub(super) fn arch_vmx_exit();
}

/// MSRs the guest owns but VM entry/exit does not switch: swapped around each entry.
pub(super) const SWAPPED_MSRS: [u32; 5] = [IA32_KERNEL_GS_BASE, IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK];

impl VmxVcpu {
    pub(super) fn flush_tlb(&self) {
        if self.caps.ept_vpid & (1 << 20) != 0 {
            if self.caps.ept_vpid & (1 << 25) != 0 {
                invept_single(self.ept.eptp());
            } else if self.caps.ept_vpid & (1 << 26) != 0 {
                invept_all();
            }
        }
        if self.vpid != 0 {
            if self.caps.ept_vpid & (1 << 41) != 0 {
                invvpid(1, self.vpid);
            } else if self.caps.ept_vpid & (1 << 42) != 0 {
                invvpid(2, 0);
            }
        }
    }

    pub(super) fn inject_gp(&mut self) {
        vmwrite(f::ENTRY_INTR_INFO, (13 | (3 << 8) | (1 << 11) | (1 << 31)) as u64);
        vmwrite(f::ENTRY_EXCEPTION_ERROR_CODE, 0);
    }

    pub(super) fn skip_instruction(&mut self) {
        let len = vmread(f::EXIT_INSTRUCTION_LEN);
        let rip = vmread(f::GUEST_RIP).wrapping_add(len);
        let rip = if vmread(f::ENTRY_CONTROLS) as u32 & ENTRY_IA32E != 0 { rip } else { rip & 0xffff_ffff };
        vmwrite(f::GUEST_RIP, rip);
        // The instruction retired: an STI/MOV SS shadow ends with it.
        let ib = vmread(f::GUEST_INTERRUPTIBILITY);
        vmwrite(f::GUEST_INTERRUPTIBILITY, ib & !3);
    }

    pub(super) fn swap_msrs(&mut self, to_guest: bool, saved_host: &mut [u64; 5]) {
        for (i, &msr) in SWAPPED_MSRS.iter().enumerate() {
            if to_guest {
                saved_host[i] = crate::cpu::rdmsr(msr);
                if saved_host[i] != self.guest_msrs[i] {
                    // SAFETY: loading the guest's syscall/swapgs MSRs just before entry; the host
                    // values are restored right after the exit, with interrupts still off.
                    unsafe { crate::cpu::wrmsr(msr, self.guest_msrs[i]) };
                }
            } else {
                self.guest_msrs[i] = crate::cpu::rdmsr(msr);
                if saved_host[i] != self.guest_msrs[i] {
                    // SAFETY: restores the host value saved above.
                    unsafe { crate::cpu::wrmsr(msr, saved_host[i]) };
                }
            }
        }
    }

    /// One VMLAUNCH/VMRESUME with interrupts off; Ok(exit reason) or the VM-instruction error.
    pub(super) fn enter(&mut self) -> Result<u32, VirtError> {
        let gprs: *mut GuestGprs = &mut self.gprs;
        let mut fpu = FpuSwitch::new(&mut self.host_fpu, &mut self.guest_fpu, self.xcr0);
        let mut host_msrs = [0u64; 5];
        self.swap_msrs(true, &mut host_msrs);
        let gdt = sgdt();
        let idt = sidt();
        let host_dr = self.dr.load(true);
        // SAFETY: VMX root operation on this CPU, this vCPU's VMCS is current and fully set up
        // (host state points back at `arch_vmx_exit` on this stack), interrupts are off, and the
        // GPR and XSAVE areas the FPU switch points at are owned by this vCPU (with XCR0 values
        // the CPU supports). CR2 takes the guest's value only while interrupts are off (no host
        // page fault can happen before the entry).
        let status = unsafe {
            core::arch::asm!("mov cr2, {}", in(reg) self.cr2, options(nostack));
            arch_vmx_run(gprs, self.launched as u64, &mut fpu)
        };
        self.cr2 = crate::cpu::read_cr2();
        if let Some(x) = fpu.guest_xcr0_after() {
            self.xcr0 = x;
        }
        // VM exit leaves DR7 = 0x400 (the guest's DR7 is in the VMCS).
        self.dr.save(&host_dr, true);
        // VM exit sets the GDTR/IDTR limits to 0xffff: put the real ones back.
        // SAFETY: reloading the descriptor tables that were loaded a moment ago.
        unsafe {
            core::arch::asm!("lgdt [{}]", in(reg) &gdt as *const DtPtr, options(nostack));
            core::arch::asm!("lidt [{}]", in(reg) &idt as *const DtPtr, options(nostack));
        }
        reload_host_tr();
        self.swap_msrs(false, &mut host_msrs);
        match status {
            0 => {
                self.launched = true;
                Ok(vmread(f::EXIT_REASON) as u32)
            }
            1 => {
                let e = vmread(f::VM_INSTRUCTION_ERROR);
                log::warn!(target: "vmx", "VM entry failed: VM-instruction error {e} ({})", vm_instruction_error_name(e));
                Err(VirtError::EntryFailed(e))
            }
            _ => {
                log::warn!(target: "vmx", "VM entry failed: VMfailInvalid (no current VMCS)");
                Err(VirtError::EntryFailed(0))
            }
        }
    }
    pub(super) fn run_inner(&mut self, event: EventDecision) -> Result<Exit, VirtError> {
        let mut event = event;
        loop {
            // Everything per-CPU happens inside one interrupts-off section (the task can be
            // moved to another CPU before and after it): VMPTRLD, this CPU's host state, a TLB
            // flush if the vCPU last ran elsewhere, the entry, the exit, VMCLEAR.
            let r = crate::cpu::without_interrupts(|| {
                let r = self.enter_once(event);
                self.release();
                r
            })?;
            // Interrupts are back on here: a host interrupt that caused the exit has been taken.
            match r {
                (_, Some(exit)) => return Ok(exit),
                // Handled inside the backend (CR access): enter again, nothing new to inject.
                (_, None) => event = EventDecision::None,
            }
        }
    }

    /// One entry and exit, with interrupts off.
    pub(super) fn enter_once(&mut self, event: EventDecision) -> Result<(u32, Option<Exit>), VirtError> {
        let cpu = crate::smp::cpu_index();
        let moved = self.placement.enter(cpu);
        self.load()?;
        write_host_state();
        if moved {
            // VPID/EPT-tagged translations this vCPU (or a dead VM with the same VPID or
            // EPT root) left on this CPU may be stale: its guest may have changed its
            // page tables and flushed only the CPU it ran on meanwhile.
            self.flush_tlb();
        }
        let mut window = false;
        if let Some((info, ec, len)) = self.reinject.take() {
            vmwrite(f::ENTRY_INTR_INFO, info as u64);
            vmwrite(f::ENTRY_EXCEPTION_ERROR_CODE, ec as u64);
            vmwrite(f::ENTRY_INSTRUCTION_LEN, len as u64);
        } else {
            match event {
                EventDecision::Inject(i) => {
                    let mut info = i.vmx_entry_info();
                    if self.guest_cr0() & CR0_PE == 0 {
                        info &= !(1 << 11); // no error codes in real mode
                    }
                    vmwrite(f::ENTRY_INTR_INFO, info as u64);
                    vmwrite(f::ENTRY_EXCEPTION_ERROR_CODE, i.error_code.unwrap_or(0) as u64);
                }
                EventDecision::RequestWindow => window = true,
                EventDecision::None => {}
            }
        }
        let proc = if window { self.proc_base | PROC_INTR_WINDOW } else { self.proc_base };
        vmwrite(f::PROC_CONTROLS, proc as u64);
        let reason = self.enter()?;
        // An event that was being delivered when the exit hit is delivered again.
        let idt = vmread(f::IDT_VECTORING_INFO) as u32;
        if idt & (1 << 31) != 0 {
            let ec = vmread(f::IDT_VECTORING_ERROR_CODE) as u32;
            let len = vmread(f::EXIT_INSTRUCTION_LEN) as u32;
            self.reinject = Some((idt & 0x8000_0fff, ec, len));
        }
        vmwrite(f::ENTRY_INTR_INFO, 0);
        if reason & 0xffff == 28 && reason & (1 << 31) == 0 {
            let q = vmread(f::EXIT_QUALIFICATION);
            if self.emulate_cr_access(q) {
                return Ok((reason, None));
            }
        }
        let info = VmxExitInfo {
            reason,
            qualification: vmread(f::EXIT_QUALIFICATION),
            intr_info: vmread(f::EXIT_INTR_INFO) as u32,
            intr_error: vmread(f::EXIT_INTR_ERROR_CODE) as u32,
            gpa: vmread(f::GUEST_PHYSICAL_ADDRESS),
        };
        let exit = decode_vmx_exit(&info);
        if exit == Exit::Nmi {
            // NMI exiting consumed a host NMI: deliver it to the host now, as KVM does,
            // through the host's NMI gate (the NMI handler on its own IST stack).
            // SAFETY: `int 2` enters the kernel's own vector-2 handler, exactly as the
            // NMI would have; interrupts are off, as they are for a real NMI.
            unsafe { core::arch::asm!("int 2") };
        }
        if let Exit::InvalidGuestState { .. } | Exit::Other { .. } = exit {
            log::warn!(target: "vmx", "exit {} ({reason:#x}), qualification {:#x}, guest RIP {:#x}",
                exit_reason_name(reason), info.qualification, vmread(f::GUEST_RIP));
        }
        Ok((reason, Some(exit)))
    }

}
