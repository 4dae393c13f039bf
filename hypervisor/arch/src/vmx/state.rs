//! Guest register state in the VMCS: CR0/CR4 with their host-owned bits and read shadows,
//! EFER, segments, GPRs, the emulation of guest CR writes that exit, and `VcpuState` in/out.

use super::*;

impl VmxVcpu {
    pub(super) fn cr0_fixed(&self) -> (u64, u64) {
        let mut f0 = self.caps.cr0_fixed0;
        if self.unrestricted {
            f0 &= !(CR0_PE | CR0_PG);
        }
        (f0, self.caps.cr0_fixed1)
    }

    pub(super) fn write_cr0(&mut self, cr0: u64) {
        let (f0, f1) = self.cr0_fixed();
        vmwrite(f::GUEST_CR0, adjust_cr(cr0, f0, f1));
        vmwrite(f::CR0_READ_SHADOW, cr0);
    }
    pub(super) fn write_cr4(&mut self, cr4: u64) {
        vmwrite(f::GUEST_CR4, adjust_cr(cr4, self.caps.cr4_fixed0, self.caps.cr4_fixed1));
        vmwrite(f::CR4_READ_SHADOW, cr4);
    }
    pub(super) fn guest_cr0(&self) -> u64 {
        (vmread(f::GUEST_CR0) & !self.cr0_mask) | (vmread(f::CR0_READ_SHADOW) & self.cr0_mask)
    }
    pub(super) fn guest_cr4(&self) -> u64 {
        (vmread(f::GUEST_CR4) & !self.cr4_mask) | (vmread(f::CR4_READ_SHADOW) & self.cr4_mask)
    }
    pub(super) fn set_efer(&mut self, efer: u64) {
        vmwrite(f::GUEST_IA32_EFER, efer);
        let entry = vmread(f::ENTRY_CONTROLS) as u32;
        let entry = if efer & EFER_LMA != 0 { entry | ENTRY_IA32E } else { entry & !ENTRY_IA32E };
        vmwrite(f::ENTRY_CONTROLS, entry as u64);
    }

    pub(super) fn write_seg(&mut self, idx: u32, s: &Segment) {
        vmwrite(f::GUEST_ES_SEL + idx * 2, s.selector as u64);
        vmwrite(f::GUEST_ES_BASE + idx * 2, s.base);
        vmwrite(f::GUEST_ES_LIMIT + idx * 2, s.limit as u64);
        vmwrite(f::GUEST_ES_AR + idx * 2, s.vmx_access_rights() as u64);
    }
    pub(super) fn read_seg(&self, idx: u32) -> Segment {
        Segment {
            selector: vmread(f::GUEST_ES_SEL + idx * 2) as u16,
            base: vmread(f::GUEST_ES_BASE + idx * 2),
            limit: vmread(f::GUEST_ES_LIMIT + idx * 2) as u32,
            attr: Segment::attr_from_vmx(vmread(f::GUEST_ES_AR + idx * 2) as u32),
        }
    }

    pub(super) fn gpr(&self, n: u8) -> u64 {
        let g = &self.gprs;
        match n & 15 {
            0 => g.rax,
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => vmread(f::GUEST_RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        }
    }

    /// A guest write to a host-owned CR0/CR4 bit (or LMSW) exited: emulate it.
    pub(super) fn emulate_cr_access(&mut self, q: u64) -> bool {
        match decode_cr_access(q) {
            CrAccess::MovTo { cr: 0, gpr } => self.set_guest_cr0(self.gpr(gpr)),
            CrAccess::MovTo { cr: 4, gpr } => {
                let v = self.gpr(gpr);
                let allowed = self.caps.cr4_fixed1 & !(1 << 13);
                if v & !allowed != 0 {
                    self.inject_gp();
                    return true;
                }
                self.write_cr4(v);
                self.flush_tlb();
                self.skip_instruction();
                true
            }
            CrAccess::Lmsw { value } => {
                let old = self.guest_cr0();
                // LMSW loads PE/MP/EM/TS and cannot clear PE.
                let new = (old & !0xe) | (value as u64 & 0xf) | (old & 1);
                self.set_guest_cr0(new)
            }
            CrAccess::Clts => {
                let old = self.guest_cr0();
                self.set_guest_cr0(old & !(1 << 3))
            }
            _ => false,
        }
    }

    pub(super) fn set_guest_cr0(&mut self, v: u64) -> bool {
        let old = self.guest_cr0();
        let efer = vmread(f::GUEST_IA32_EFER);
        let (_, f1) = self.cr0_fixed();
        let bad = (v >> 32) != 0
            || (v & CR0_PG != 0 && v & CR0_PE == 0)
            || (v & (1 << 29) != 0 && v & (1 << 30) == 0) // NW without CD
            || (v & CR0_PG != 0 && old & CR0_PG == 0 && efer & EFER_LME != 0 && self.guest_cr4() & CR4_PAE == 0)
            || (v & !f1 & 0xffff_ffff & !((1 << 29) | (1 << 30))) != 0;
        if bad {
            self.inject_gp();
            return true;
        }
        self.write_cr0(v);
        if (old ^ v) & CR0_PG != 0 {
            // Long mode activates/deactivates with paging when EFER.LME is set.
            let new_efer = if v & CR0_PG != 0 && efer & EFER_LME != 0 { efer | EFER_LMA } else { efer & !EFER_LMA };
            self.set_efer(new_efer);
            self.flush_tlb();
        }
        self.skip_instruction();
        true
    }

    /// `set_state` with interrupts off.
    pub(super) fn set_state_current(&mut self, s: &VcpuState) {
        if self.load().is_err() {
            return;
        }

        self.gprs = GuestGprs {
            rax: s.rax,
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
        vmwrite(f::GUEST_RSP, s.rsp);
        vmwrite(f::GUEST_RIP, s.rip);
        vmwrite(f::GUEST_RFLAGS, s.rflags | 2);
        self.write_cr0(s.cr0);
        self.cr2 = s.cr2;
        vmwrite(f::GUEST_CR3, s.cr3);
        self.write_cr4(s.cr4);
        self.set_efer(s.efer);
        self.xcr0 = s.xcr0;
        // A real-mode TR (an AP's start state, `apic_bus::sipi_state`) as a 32-bit busy TSS, as
        // KVM's VMX vCPU reset has it (AR 0x8b): nothing in real mode can use or see TR (LTR
        // and task switches need protected mode), but once the guest turns long mode on
        // before its LTR, VM entry wants type 11 in TR, and Bochs refuses the CR0.PG write
        // itself ("attempt to enter x86-64 long mode with TSS286 in TR").
        let mut tr = s.tr;
        if s.cr0 & CR0_PE == 0 && tr.attr & 0x1f == 0x3 {
            tr.attr = (tr.attr & !0xf) | 0xb;
        }
        for (i, seg) in [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs, &s.ldtr, &tr].into_iter().enumerate() {
            self.write_seg(i as u32, seg);
        }
        vmwrite(f::GUEST_GDTR_BASE, s.gdtr.base);
        vmwrite(f::GUEST_GDTR_LIMIT, s.gdtr.limit as u64);
        vmwrite(f::GUEST_IDTR_BASE, s.idtr.base);
        vmwrite(f::GUEST_IDTR_LIMIT, s.idtr.limit as u64);
        let ib = vmread(f::GUEST_INTERRUPTIBILITY);
        let mut shadow = if s.interrupt_shadow { ib & 3 } else { 0 };
        if s.interrupt_shadow && shadow == 0 {
            shadow = 1;
        }
        if s.rflags & (1 << 9) == 0 {
            shadow &= !1; // blocking by STI requires IF=1
        }
        vmwrite(f::GUEST_INTERRUPTIBILITY, (ib & !3) | shadow);
    }

    pub(super) fn state_current(&self) -> VcpuState {
        let mut s = VcpuState::new();
        if self.load().is_err() {
            return s;
        }
        let g = &self.gprs;
        s.rax = g.rax;
        s.rbx = g.rbx;
        s.rcx = g.rcx;
        s.rdx = g.rdx;
        s.rsi = g.rsi;
        s.rdi = g.rdi;
        s.rbp = g.rbp;
        s.r8 = g.r8;
        s.r9 = g.r9;
        s.r10 = g.r10;
        s.r11 = g.r11;
        s.r12 = g.r12;
        s.r13 = g.r13;
        s.r14 = g.r14;
        s.r15 = g.r15;
        s.rsp = vmread(f::GUEST_RSP);
        s.rip = vmread(f::GUEST_RIP);
        s.rflags = vmread(f::GUEST_RFLAGS);
        s.cr0 = self.guest_cr0();
        s.cr2 = self.cr2;
        s.cr3 = vmread(f::GUEST_CR3);
        s.cr4 = self.guest_cr4();
        s.efer = vmread(f::GUEST_IA32_EFER);
        s.xcr0 = self.xcr0;
        s.es = self.read_seg(0);
        s.cs = self.read_seg(1);
        s.ss = self.read_seg(2);
        s.ds = self.read_seg(3);
        s.fs = self.read_seg(4);
        s.gs = self.read_seg(5);
        s.ldtr = self.read_seg(6);
        s.tr = self.read_seg(7);
        s.gdtr = DescTable { base: vmread(f::GUEST_GDTR_BASE), limit: vmread(f::GUEST_GDTR_LIMIT) as u16 };
        s.idtr = DescTable { base: vmread(f::GUEST_IDTR_BASE), limit: vmread(f::GUEST_IDTR_LIMIT) as u16 };
        s.cpl = ((vmread(f::GUEST_ES_AR + 2 * 2) >> 5) & 3) as u8;
        s.interrupt_shadow = vmread(f::GUEST_INTERRUPTIBILITY) & 3 != 0;
        s
    }

}
