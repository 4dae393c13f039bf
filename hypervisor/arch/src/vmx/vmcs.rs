//! The VMCS: field encodings (SDM vol. 3D appendix B) and the VMX instructions that read and
//! write it or name a physical region (VMREAD/VMWRITE, VMXON/VMCLEAR/VMPTRLD, INVEPT/INVVPID).
//! Private to the backend: a VMWRITE of a host-state field decides where the CPU goes on the
//! next VM exit, so only the backend's own code (which writes them from the host's own state,
//! `host.rs`) calls these.

use super::*;

// ---- VMCS field encodings (SDM vol. 3D appendix B) ----
#[allow(dead_code)]
pub(super) mod f {
    pub const VPID: u32 = 0x0000;
    pub const GUEST_ES_SEL: u32 = 0x0800;
    pub const GUEST_CS_SEL: u32 = 0x0802;
    pub const GUEST_SS_SEL: u32 = 0x0804;
    pub const GUEST_DS_SEL: u32 = 0x0806;
    pub const GUEST_FS_SEL: u32 = 0x0808;
    pub const GUEST_GS_SEL: u32 = 0x080a;
    pub const GUEST_LDTR_SEL: u32 = 0x080c;
    pub const GUEST_TR_SEL: u32 = 0x080e;
    pub const HOST_ES_SEL: u32 = 0x0c00;
    pub const HOST_CS_SEL: u32 = 0x0c02;
    pub const HOST_SS_SEL: u32 = 0x0c04;
    pub const HOST_DS_SEL: u32 = 0x0c06;
    pub const HOST_FS_SEL: u32 = 0x0c08;
    pub const HOST_GS_SEL: u32 = 0x0c0a;
    pub const HOST_TR_SEL: u32 = 0x0c0c;
    pub const IO_BITMAP_A: u32 = 0x2000;
    pub const IO_BITMAP_B: u32 = 0x2002;
    pub const MSR_BITMAP: u32 = 0x2004;
    pub const TSC_OFFSET: u32 = 0x2010;
    pub const EPT_POINTER: u32 = 0x201a;
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
    pub const GUEST_IA32_PAT: u32 = 0x2804;
    pub const GUEST_IA32_EFER: u32 = 0x2806;
    pub const HOST_IA32_PAT: u32 = 0x2c00;
    pub const HOST_IA32_EFER: u32 = 0x2c02;
    pub const PIN_CONTROLS: u32 = 0x4000;
    pub const PROC_CONTROLS: u32 = 0x4002;
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    pub const PF_ERROR_MASK: u32 = 0x4006;
    pub const PF_ERROR_MATCH: u32 = 0x4008;
    pub const CR3_TARGET_COUNT: u32 = 0x400a;
    pub const EXIT_CONTROLS: u32 = 0x400c;
    pub const EXIT_MSR_STORE_COUNT: u32 = 0x400e;
    pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    pub const ENTRY_CONTROLS: u32 = 0x4012;
    pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    pub const ENTRY_INTR_INFO: u32 = 0x4016;
    pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    pub const ENTRY_INSTRUCTION_LEN: u32 = 0x401a;
    pub const PROC_CONTROLS2: u32 = 0x401e;
    pub const PREEMPTION_TIMER_VALUE: u32 = 0x482e;
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    pub const EXIT_REASON: u32 = 0x4402;
    pub const EXIT_INTR_INFO: u32 = 0x4404;
    pub const EXIT_INTR_ERROR_CODE: u32 = 0x4406;
    pub const IDT_VECTORING_INFO: u32 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440a;
    pub const EXIT_INSTRUCTION_LEN: u32 = 0x440c;
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
    pub const GUEST_ES_AR: u32 = 0x4814;
    pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
    pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
    pub const GUEST_SYSENTER_CS: u32 = 0x482a;
    pub const HOST_SYSENTER_CS: u32 = 0x4c00;
    pub const CR0_MASK: u32 = 0x6000;
    pub const CR4_MASK: u32 = 0x6002;
    pub const CR0_READ_SHADOW: u32 = 0x6004;
    pub const CR4_READ_SHADOW: u32 = 0x6006;
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    pub const GUEST_CR0: u32 = 0x6800;
    pub const GUEST_CR3: u32 = 0x6802;
    pub const GUEST_CR4: u32 = 0x6804;
    pub const GUEST_ES_BASE: u32 = 0x6806;
    pub const GUEST_GDTR_BASE: u32 = 0x6816;
    pub const GUEST_IDTR_BASE: u32 = 0x6818;
    pub const GUEST_DR7: u32 = 0x681a;
    pub const GUEST_RSP: u32 = 0x681c;
    pub const GUEST_RIP: u32 = 0x681e;
    pub const GUEST_RFLAGS: u32 = 0x6820;
    pub const GUEST_PENDING_DBG: u32 = 0x6822;
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    pub const HOST_CR0: u32 = 0x6c00;
    pub const HOST_CR3: u32 = 0x6c02;
    pub const HOST_CR4: u32 = 0x6c04;
    pub const HOST_FS_BASE: u32 = 0x6c06;
    pub const HOST_GS_BASE: u32 = 0x6c08;
    pub const HOST_TR_BASE: u32 = 0x6c0a;
    pub const HOST_GDTR_BASE: u32 = 0x6c0c;
    pub const HOST_IDTR_BASE: u32 = 0x6c0e;
    pub const HOST_SYSENTER_ESP: u32 = 0x6c10;
    pub const HOST_SYSENTER_EIP: u32 = 0x6c12;
    pub const HOST_RIP: u32 = 0x6c16;
}

// ---- VMX instructions ----

pub(super) fn vmread(field: u32) -> u64 {
    let v: u64;
    // SAFETY: VMREAD of the current VMCS (VMX is on and a VMCS is current whenever this module
    // calls it); a failure only sets flags and leaves `v` unspecified-but-initialised.
    unsafe { core::arch::asm!("vmread {v}, {f}", f = in(reg) field as u64, v = out(reg) v, options(nostack)) };
    v
}

pub(super) fn vmwrite(field: u32, value: u64) {
    let failed: u8;
    // SAFETY: VMWRITE to the current VMCS; it has no effect on host memory.
    unsafe {
        core::arch::asm!("vmwrite {f}, {v}", "setna {r}", f = in(reg) field as u64, v = in(reg) value, r = out(reg_byte) failed, options(nostack))
    };
    if failed != 0 {
        let e = vmread(f::VM_INSTRUCTION_ERROR);
        log::warn!(target: "vmx", "VMWRITE {field:#06x} = {value:#x} failed: error {e} ({})", vm_instruction_error_name(e));
    }
}

/// Run one of the VMX instructions taking a 64-bit physical address in memory
/// (VMXON/VMCLEAR/VMPTRLD); returns the VMX status (Ok, or the error number; 0 = VMfailInvalid).
pub(super) fn vmx_pa_insn(which: u8, pa: u64) -> Result<(), u64> {
    let (cf, zf): (u8, u8);
    let p = &pa as *const u64;
    // SAFETY: `pa` is a 4 KiB-aligned frame owned by the caller with the VMCS revision id
    // written (VMXON region or VMCS); these instructions touch only that frame.
    unsafe {
        match which {
            0 => core::arch::asm!("vmxon [{p}]", "setc {c}", "setz {z}", p = in(reg) p, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack)),
            1 => core::arch::asm!("vmclear [{p}]", "setc {c}", "setz {z}", p = in(reg) p, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack)),
            _ => core::arch::asm!("vmptrld [{p}]", "setc {c}", "setz {z}", p = in(reg) p, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack)),
        }
    }
    if cf != 0 {
        Err(0)
    } else if zf != 0 {
        Err(vmread(f::VM_INSTRUCTION_ERROR))
    } else {
        Ok(())
    }
}

pub(super) fn vmptrst() -> u64 {
    let mut pa: u64 = 0;
    // SAFETY: VMPTRST stores the current-VMCS pointer into our local.
    unsafe { core::arch::asm!("vmptrst [{p}]", p = in(reg) &mut pa as *mut u64, options(nostack)) };
    pa
}

pub(super) fn invept_single(eptp: u64) {
    let desc: [u64; 2] = [eptp, 0];
    // SAFETY: INVEPT only invalidates cached EPT translations.
    unsafe { core::arch::asm!("invept {t}, [{d}]", t = in(reg) 1u64, d = in(reg) desc.as_ptr(), options(nostack)) };
}

pub(super) fn invept_all() {
    let desc: [u64; 2] = [0, 0];
    // SAFETY: as above.
    unsafe { core::arch::asm!("invept {t}, [{d}]", t = in(reg) 2u64, d = in(reg) desc.as_ptr(), options(nostack)) };
}

pub(super) fn invvpid(kind: u64, vpid: u16) {
    let desc: [u64; 2] = [vpid as u64, 0];
    // SAFETY: INVVPID only invalidates cached linear translations.
    unsafe { core::arch::asm!("invvpid {t}, [{d}]", t = in(reg) kind, d = in(reg) desc.as_ptr(), options(nostack)) };
}
