//! Intel VT-x exit decoding: the pure part of the VMX backend, host-tested.
//!
//! The backend (`catenary-arch`, `vmx/`) reads the raw VMCS exit fields and calls
//! [`decode_vmx_exit`]; everything here is arithmetic on those numbers (Intel SDM vol. 3C,
//! appendix C "basic exit reasons", §28.2.1 exit qualifications, §31.4 VM-instruction errors).

use crate::cpu::Exit;

/// Basic exit reasons (bits 15:0 of the exit-reason field).
pub mod reason {
    pub const EXCEPTION_NMI: u16 = 0;
    pub const EXTERNAL_INTERRUPT: u16 = 1;
    pub const TRIPLE_FAULT: u16 = 2;
    pub const INIT: u16 = 3;
    pub const SIPI: u16 = 4;
    pub const INTERRUPT_WINDOW: u16 = 7;
    pub const NMI_WINDOW: u16 = 8;
    pub const TASK_SWITCH: u16 = 9;
    pub const CPUID: u16 = 10;
    pub const GETSEC: u16 = 11;
    pub const HLT: u16 = 12;
    pub const INVD: u16 = 13;
    pub const INVLPG: u16 = 14;
    pub const RDPMC: u16 = 15;
    pub const RDTSC: u16 = 16;
    pub const VMCALL: u16 = 18;
    pub const VMCLEAR: u16 = 19;
    pub const VMLAUNCH: u16 = 20;
    pub const VMPTRLD: u16 = 21;
    pub const VMPTRST: u16 = 22;
    pub const VMREAD: u16 = 23;
    pub const VMRESUME: u16 = 24;
    pub const VMWRITE: u16 = 25;
    pub const VMXOFF: u16 = 26;
    pub const VMXON: u16 = 27;
    pub const CR_ACCESS: u16 = 28;
    pub const DR_ACCESS: u16 = 29;
    pub const IO: u16 = 30;
    pub const RDMSR: u16 = 31;
    pub const WRMSR: u16 = 32;
    pub const INVALID_GUEST_STATE: u16 = 33;
    pub const MSR_LOADING: u16 = 34;
    pub const MWAIT: u16 = 36;
    pub const MTF: u16 = 37;
    pub const MONITOR: u16 = 39;
    pub const PAUSE: u16 = 40;
    pub const MACHINE_CHECK: u16 = 41;
    pub const TPR_BELOW_THRESHOLD: u16 = 43;
    pub const APIC_ACCESS: u16 = 44;
    pub const GDTR_IDTR: u16 = 46;
    pub const LDTR_TR: u16 = 47;
    pub const EPT_VIOLATION: u16 = 48;
    pub const EPT_MISCONFIG: u16 = 49;
    pub const INVEPT: u16 = 50;
    pub const RDTSCP: u16 = 51;
    pub const PREEMPTION_TIMER: u16 = 52;
    pub const INVVPID: u16 = 53;
    pub const WBINVD: u16 = 54;
    pub const XSETBV: u16 = 55;
    pub const RDRAND: u16 = 57;
    pub const INVPCID: u16 = 58;
    pub const VMFUNC: u16 = 59;
    pub const RDSEED: u16 = 61;
    pub const XSAVES: u16 = 63;
    pub const XRSTORS: u16 = 64;
}

/// Exit-reason bit 31: the VM entry failed (the guest never ran).
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// Raw VMCS fields describing one exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmxExitInfo {
    /// EXIT_REASON (0x4402).
    pub reason: u32,
    /// EXIT_QUALIFICATION (0x6400).
    pub qualification: u64,
    /// VM_EXIT_INTR_INFO (0x4404).
    pub intr_info: u32,
    /// VM_EXIT_INTR_ERROR_CODE (0x4406).
    pub intr_error: u32,
    /// GUEST_PHYSICAL_ADDRESS (0x2400), meaningful for EPT violations/misconfigurations.
    pub gpa: u64,
}

/// The raw code reported in `Exit::Other` / `Exit::InvalidGuestState`: the full exit reason.
fn raw(info: &VmxExitInfo) -> u64 {
    info.reason as u64
}

/// Decode one VMX exit into the backend-neutral [`Exit`]. Never panics, for any input.
///
/// VMX instructions, GETSEC, INVEPT/INVVPID, VMFUNC, MONITOR and MWAIT executed by the guest are reported as
/// `#UD` exceptions (the device model reflects them: the guest sees them as unsupported).
/// Control-register accesses are handled inside the backend and do not normally reach here;
/// if they do they are `Other`.
pub fn decode_vmx_exit(info: &VmxExitInfo) -> Exit {
    if info.reason & EXIT_REASON_ENTRY_FAILURE != 0 {
        return Exit::InvalidGuestState { code: raw(info) };
    }
    let q = info.qualification;
    match (info.reason & 0xffff) as u16 {
        reason::EXCEPTION_NMI => {
            let ii = info.intr_info;
            if ii & (1 << 31) == 0 {
                return Exit::Other { code: raw(info) };
            }
            let vector = (ii & 0xff) as u8;
            match (ii >> 8) & 7 {
                2 => Exit::Nmi,
                // hardware exception (3), software exception INT3/INTO (6), privileged (5)
                3 | 5 | 6 => {
                    let error_code = if ii & (1 << 11) != 0 { Some(info.intr_error) } else { None };
                    Exit::Exception { vector, error_code }
                }
                _ => Exit::Other { code: raw(info) },
            }
        }
        // The VMX-preemption timer (the backend's backstop for a host interrupt that did not
        // exit: docs/vmm.md "Multi-vCPU microVMs") means the same as an external interrupt: the
        // host takes its CPU back, the guest is entered again unchanged.
        reason::EXTERNAL_INTERRUPT | reason::PREEMPTION_TIMER => Exit::ExternalInterrupt,
        reason::TRIPLE_FAULT => Exit::Shutdown,
        reason::INTERRUPT_WINDOW => Exit::InterruptWindow,
        reason::CPUID => Exit::Cpuid,
        reason::HLT => Exit::Hlt,
        reason::INVD => Exit::Invd,
        reason::WBINVD => Exit::Wbinvd,
        reason::PAUSE => Exit::Pause,
        reason::VMCALL => Exit::Vmcall,
        reason::XSETBV => Exit::Xsetbv,
        reason::RDMSR => Exit::Rdmsr,
        reason::WRMSR => Exit::Wrmsr,
        reason::IO => {
            let size = match q & 7 {
                0 => 1,
                1 => 2,
                3 => 4,
                _ => return Exit::Other { code: raw(info) },
            };
            Exit::Io {
                port: (q >> 16) as u16,
                size,
                write: q & (1 << 3) == 0,
                string: q & (1 << 4) != 0,
                rep: q & (1 << 5) != 0,
            }
        }
        // Qualification bit 8 set: the access was to the translation of a linear address
        // (an operand or fetch of the instruction at RIP). Clear: a paging-structure access
        // during the guest's own walk (bit 7 set), or an access with no linear address at all
        // (PDPTE loads): never an MMIO operand (as KVM's PFERR_GUEST_PAGE).
        reason::EPT_VIOLATION if q & (1 << 8) == 0 => Exit::PageWalkFault { gpa: info.gpa },
        reason::EPT_VIOLATION => Exit::Mmio { gpa: info.gpa, write_hint: Some(q & (1 << 1) != 0) },
        reason::GETSEC
        | reason::VMCLEAR..=reason::VMXON
        | reason::INVEPT
        | reason::INVVPID
        | reason::VMFUNC
        // MONITOR/MWAIT (MONITOR and MWAIT exiting): #UD, as on SVM and on a CPU without
        // MONITOR (CPUID hides it); natively MWAIT would idle the host CPU.
        | reason::MWAIT
        | reason::MONITOR => Exit::Exception { vector: 6, error_code: None },
        reason::INVALID_GUEST_STATE | reason::MSR_LOADING | reason::MACHINE_CHECK => {
            Exit::InvalidGuestState { code: raw(info) }
        }
        _ => Exit::Other { code: raw(info) },
    }
}

/// A short name for a basic exit reason (logs, exit statistics).
pub fn exit_reason_name(reason: u32) -> &'static str {
    use reason::*;
    if reason & EXIT_REASON_ENTRY_FAILURE != 0 {
        return "entry-failure";
    }
    match (reason & 0xffff) as u16 {
        EXCEPTION_NMI => "exception-or-nmi",
        EXTERNAL_INTERRUPT => "external-interrupt",
        TRIPLE_FAULT => "triple-fault",
        INIT => "init",
        SIPI => "sipi",
        INTERRUPT_WINDOW => "interrupt-window",
        NMI_WINDOW => "nmi-window",
        TASK_SWITCH => "task-switch",
        CPUID => "cpuid",
        GETSEC => "getsec",
        HLT => "hlt",
        INVD => "invd",
        INVLPG => "invlpg",
        RDPMC => "rdpmc",
        RDTSC => "rdtsc",
        VMCALL => "vmcall",
        VMCLEAR..=VMXON => "vmx-instruction",
        CR_ACCESS => "cr-access",
        DR_ACCESS => "dr-access",
        IO => "io",
        RDMSR => "rdmsr",
        WRMSR => "wrmsr",
        INVALID_GUEST_STATE => "invalid-guest-state",
        MSR_LOADING => "msr-loading",
        MWAIT => "mwait",
        MTF => "monitor-trap-flag",
        MONITOR => "monitor",
        PAUSE => "pause",
        MACHINE_CHECK => "machine-check",
        TPR_BELOW_THRESHOLD => "tpr-below-threshold",
        APIC_ACCESS => "apic-access",
        GDTR_IDTR => "gdtr-idtr-access",
        LDTR_TR => "ldtr-tr-access",
        EPT_VIOLATION => "ept-violation",
        EPT_MISCONFIG => "ept-misconfig",
        INVEPT => "invept",
        RDTSCP => "rdtscp",
        PREEMPTION_TIMER => "preemption-timer",
        INVVPID => "invvpid",
        WBINVD => "wbinvd",
        XSETBV => "xsetbv",
        RDRAND => "rdrand",
        INVPCID => "invpcid",
        VMFUNC => "vmfunc",
        RDSEED => "rdseed",
        XSAVES => "xsaves",
        XRSTORS => "xrstors",
        _ => "unknown",
    }
}

/// The VM-instruction error numbers (VM_INSTRUCTION_ERROR, 0x4400) by name (SDM §31.4).
pub fn vm_instruction_error_name(n: u64) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

/// Decoded CR-access exit qualification (exit reason 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccess {
    /// MOV to CRn from GPR `gpr` (x86 register number).
    MovTo { cr: u8, gpr: u8 },
    /// MOV from CRn to GPR `gpr`.
    MovFrom { cr: u8, gpr: u8 },
    Clts,
    /// LMSW with the 16-bit source value.
    Lmsw { value: u16 },
}

pub fn decode_cr_access(q: u64) -> CrAccess {
    let cr = (q & 0xf) as u8;
    let gpr = ((q >> 8) & 0xf) as u8;
    match (q >> 4) & 3 {
        0 => CrAccess::MovTo { cr, gpr },
        1 => CrAccess::MovFrom { cr, gpr },
        2 => CrAccess::Clts,
        _ => CrAccess::Lmsw { value: (q >> 16) as u16 },
    }
}

/// A VMX control value from its capability MSR: bits that must be 1 (allowed-0 settings, low
/// half) are forced on, bits that may not be 1 (allowed-1 settings, high half) are dropped.
pub fn adjust_controls(wanted: u32, cap_msr: u64) -> u32 {
    let must_be_one = cap_msr as u32;
    let may_be_one = (cap_msr >> 32) as u32;
    (wanted | must_be_one) & may_be_one
}

/// A control register value adjusted to IA32_VMX_CRx_FIXED0/FIXED1 (bits set in FIXED0 must be
/// 1, bits clear in FIXED1 must be 0).
pub fn adjust_cr(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(reason: u32, qualification: u64) -> VmxExitInfo {
        VmxExitInfo { reason, qualification, ..Default::default() }
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL to 0x3f8: size 1 (0), direction out (bit 3 = 0), port in bits 31:16.
        assert_eq!(
            decode_vmx_exit(&info(30, 0x03f8_0000 | (1 << 6))),
            Exit::Io { port: 0x3f8, size: 1, write: true, string: false, rep: false }
        );
        // IN EAX, DX from 0xcfc: size 4 (3), direction in.
        assert_eq!(
            decode_vmx_exit(&info(30, 0x0cfc_0000 | 3 | (1 << 3))),
            Exit::Io { port: 0xcfc, size: 4, write: false, string: false, rep: false }
        );
        // REP OUTSW to 0x1f0.
        assert_eq!(
            decode_vmx_exit(&info(30, 0x01f0_0000 | 1 | (1 << 4) | (1 << 5))),
            Exit::Io { port: 0x1f0, size: 2, write: true, string: true, rep: true }
        );
        // Size encoding 2 is undefined.
        assert!(matches!(decode_vmx_exit(&info(30, 2)), Exit::Other { .. }));
    }

    #[test]
    fn ept_violation_uses_gpa_and_write_bit() {
        let fin = (1 << 7) | (1 << 8); // linear address valid, access to its translation
        let i = VmxExitInfo { reason: 48, qualification: fin | 0b010, gpa: 0xd000_0010, ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::Mmio { gpa: 0xd000_0010, write_hint: Some(true) });
        let i = VmxExitInfo { reason: 48, qualification: fin | 0b001, gpa: 0xfee0_0030, ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::Mmio { gpa: 0xfee0_0030, write_hint: Some(false) });
        // During the guest's page walk (bit 7 set, bit 8 clear): not MMIO by the instruction.
        let i = VmxExitInfo { reason: 48, qualification: (1 << 7) | 0b001, gpa: 0xd000_0000, ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::PageWalkFault { gpa: 0xd000_0000 });
        // No linear address (PDPTE load): not MMIO either.
        let i = VmxExitInfo { reason: 48, qualification: 0b001, gpa: 0x1000_0000, ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::PageWalkFault { gpa: 0x1000_0000 });
    }

    #[test]
    fn simple_reasons() {
        assert_eq!(decode_vmx_exit(&info(10, 0)), Exit::Cpuid);
        assert_eq!(decode_vmx_exit(&info(12, 0)), Exit::Hlt);
        assert_eq!(decode_vmx_exit(&info(31, 0)), Exit::Rdmsr);
        assert_eq!(decode_vmx_exit(&info(32, 0)), Exit::Wrmsr);
        assert_eq!(decode_vmx_exit(&info(2, 0)), Exit::Shutdown);
        assert_eq!(decode_vmx_exit(&info(18, 0)), Exit::Vmcall);
        assert_eq!(decode_vmx_exit(&info(55, 0)), Exit::Xsetbv);
        assert_eq!(decode_vmx_exit(&info(13, 0)), Exit::Invd);
        assert_eq!(decode_vmx_exit(&info(7, 0)), Exit::InterruptWindow);
        assert_eq!(decode_vmx_exit(&info(1, 0)), Exit::ExternalInterrupt);
        assert_eq!(decode_vmx_exit(&info(52, 0)), Exit::ExternalInterrupt);
        assert_eq!(decode_vmx_exit(&info(24, 0)), Exit::Exception { vector: 6, error_code: None });
        // MWAIT (36) and MONITOR (39) exits: #UD in the guest.
        assert_eq!(decode_vmx_exit(&info(36, 0)), Exit::Exception { vector: 6, error_code: None });
        assert_eq!(decode_vmx_exit(&info(39, 0)), Exit::Exception { vector: 6, error_code: None });
        assert_eq!(decode_vmx_exit(&info(54, 0)), Exit::Wbinvd);
        // #AC (hardware exception with error code) is reflected.
        let i = VmxExitInfo { reason: 0, intr_info: 17 | (3 << 8) | (1 << 11) | (1 << 31), intr_error: 0, ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::Exception { vector: 17, error_code: Some(0) });
        assert_eq!(decode_vmx_exit(&info(49, 0)), Exit::Other { code: 49 });
    }

    #[test]
    fn entry_failures() {
        assert_eq!(decode_vmx_exit(&info(0x8000_0021, 0)), Exit::InvalidGuestState { code: 0x8000_0021 });
        assert_eq!(decode_vmx_exit(&info(0x8000_0022, 0)), Exit::InvalidGuestState { code: 0x8000_0022 });
        assert_eq!(exit_reason_name(0x8000_0021), "entry-failure");
    }

    #[test]
    fn exceptions() {
        // #GP with error code 0x10: vector 13, type 3, error code valid, valid.
        let i = VmxExitInfo { reason: 0, intr_info: 13 | (3 << 8) | (1 << 11) | (1 << 31), intr_error: 0x10, ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::Exception { vector: 13, error_code: Some(0x10) });
        let i = VmxExitInfo { reason: 0, intr_info: 2 | (2 << 8) | (1 << 31), ..Default::default() };
        assert_eq!(decode_vmx_exit(&i), Exit::Nmi);
        let i = VmxExitInfo { reason: 0, intr_info: 6 | (3 << 8), ..Default::default() };
        assert!(matches!(decode_vmx_exit(&i), Exit::Other { .. }));
    }

    #[test]
    fn cr_access() {
        assert_eq!(decode_cr_access(0x0000_0300), CrAccess::MovTo { cr: 0, gpr: 3 });
        assert_eq!(decode_cr_access(0x0000_0014), CrAccess::MovFrom { cr: 4, gpr: 0 });
        assert_eq!(decode_cr_access(0x20), CrAccess::Clts);
        assert_eq!(decode_cr_access(0x0011_0030), CrAccess::Lmsw { value: 0x11 });
    }

    #[test]
    fn control_adjustment() {
        // must-be-one 0x16, may-be-one 0xff: wanted 0x101 → 0x17.
        assert_eq!(adjust_controls(0x101, 0x0000_00ff_0000_0016), 0x17);
        assert_eq!(adjust_cr(0x1, 0x8000_0021, 0xffff_ffff), 0x8000_0021);
        assert_eq!(adjust_cr(0x2000, 0x2000, 0x1fffff), 0x2000);
    }

    #[test]
    fn names() {
        assert_eq!(vm_instruction_error_name(7), "VM entry with invalid control field(s)");
        assert_eq!(vm_instruction_error_name(8), "VM entry with invalid host-state field(s)");
        assert_eq!(exit_reason_name(48), "ept-violation");
    }

    #[test]
    fn no_panic_sweep() {
        // Every basic reason with assorted qualifications, interruption infos and the
        // entry-failure bit: decoding never panics.
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for r in 0..=0xffffu32 {
            for &hi in &[0u32, EXIT_REASON_ENTRY_FAILURE, 0x0800_0000] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = VmxExitInfo { reason: r | hi, qualification: x, intr_info: (x >> 17) as u32, intr_error: x as u32, gpa: x.rotate_left(9) };
                let _ = decode_vmx_exit(&i);
                let _ = exit_reason_name(i.reason);
                let _ = decode_cr_access(x);
            }
        }
        for n in 0..64 {
            assert!(!vm_instruction_error_name(n).is_empty());
        }
    }
}
