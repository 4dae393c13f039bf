//! The guest boundary: which guest events each backend intercepts.
//!
//! The arch backends (`svm.rs`, `vmx/`) program their VMCB intercept vectors and VMCS
//! exception bitmap / controls from these functions, so the configuration is host-tested here:
//! a missing bit would let a guest hang a real CPU (the CVE-2015-5307 / CVE-2015-8104
//! benign-exception microcode loops on #AC and #DB, which QEMU's emulated CPU cannot show),
//! flush the host's caches (WBINVD/INVD), reach the SVM instructions, or idle a host CPU outside
//! the host's control (MONITOR/MWAIT).
//!
//! What happens after each intercept (the device model's part) is in `vm.rs` and
//! docs/vmm.md ("The guest boundary").

/// Exception vectors.
pub const DB: u8 = 1;
pub const UD: u8 = 6;
pub const AC: u8 = 17;

/// AMD SVM intercept bits (APM vol. 2, appendix B, VMCB control area).
pub mod svm {
    // VMCB 0x00c ("vector 3")
    pub const I3_INTR: u32 = 1 << 0;
    pub const I3_NMI: u32 = 1 << 1;
    pub const I3_VINTR: u32 = 1 << 4;
    pub const I3_CPUID: u32 = 1 << 18;
    pub const I3_INVD: u32 = 1 << 22;
    pub const I3_HLT: u32 = 1 << 24;
    pub const I3_INVLPGA: u32 = 1 << 26;
    pub const I3_IOIO: u32 = 1 << 27;
    pub const I3_MSR: u32 = 1 << 28;
    pub const I3_SHUTDOWN: u32 = 1 << 31;
    // VMCB 0x010 ("vector 4")
    pub const I4_VMRUN: u32 = 1 << 0;
    pub const I4_VMMCALL: u32 = 1 << 1;
    pub const I4_VMLOAD: u32 = 1 << 2;
    pub const I4_VMSAVE: u32 = 1 << 3;
    pub const I4_STGI: u32 = 1 << 4;
    pub const I4_CLGI: u32 = 1 << 5;
    pub const I4_SKINIT: u32 = 1 << 6;
    pub const I4_WBINVD: u32 = 1 << 9;
    /// MONITOR and MONITORX.
    pub const I4_MONITOR: u32 = 1 << 10;
    /// MWAIT and MWAITX, unconditionally (bit 12, "only if armed", is then redundant).
    pub const I4_MWAIT: u32 = 1 << 11;
    pub const I4_XSETBV: u32 = 1 << 13;

    // Exit codes of the intercepts above that the decoder maps specially.
    pub const EXIT_INVLPGA: u64 = 0x7a;
    pub const EXIT_VMRUN: u64 = 0x80;
    pub const EXIT_VMLOAD: u64 = 0x82;
    pub const EXIT_VMSAVE: u64 = 0x83;
    pub const EXIT_STGI: u64 = 0x84;
    pub const EXIT_CLGI: u64 = 0x85;
    pub const EXIT_SKINIT: u64 = 0x86;
    pub const EXIT_MONITOR: u64 = 0x8a;
    pub const EXIT_MWAIT: u64 = 0x8b;
    pub const EXIT_MWAIT_CONDITIONAL: u64 = 0x8c;
}

/// The VMCB intercept words an SVM vCPU is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmIntercepts {
    /// VMCB 0x008: exception intercepts, bit n = vector n.
    pub exceptions: u32,
    /// VMCB 0x00c.
    pub vec3: u32,
    /// VMCB 0x010.
    pub vec4: u32,
}

/// SVM: what KVM intercepts for a guest without nested virtualization.
///
/// - #AC and #DB: reflected into the guest (`Exit::Exception`), so a guest-made
///   benign-exception loop (delivering #AC/#DB raises it again) is a stream of exits the host
///   can preempt, not a microcode loop that hangs the physical CPU.
/// - INVD, WBINVD: emulated as no-ops (a guest must not flush or drop the host's caches).
/// - VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA: the guest sees EFER.SVME set (VMRUN
///   requires it in hardware), so without intercepts it could run these; they end up as #UD
///   in the guest. VMRUN's intercept is also architecturally required.
/// - MONITOR/MONITORX, MWAIT/MWAITX: #UD in the guest (CPUID hides MONITOR; MONITORX/MWAITX
///   are not shown either). Natively MWAIT would park the host CPU in a C-state until the next
///   host interrupt or a write to the monitored line, outside the host's accounting.
/// - Physical interrupts and NMIs exit (the host keeps its CPU), as do CPUID, HLT, port I/O,
///   MSRs (through the permission maps), XSETBV, VMMCALL and shutdown.
pub fn svm_intercepts() -> SvmIntercepts {
    use svm::*;
    SvmIntercepts {
        exceptions: (1 << AC) | (1 << DB),
        vec3: I3_INTR | I3_NMI | I3_CPUID | I3_INVD | I3_HLT | I3_INVLPGA | I3_IOIO | I3_MSR | I3_SHUTDOWN,
        vec4: I4_VMRUN | I4_VMMCALL | I4_VMLOAD | I4_VMSAVE | I4_STGI | I4_CLGI | I4_SKINIT | I4_WBINVD | I4_XSETBV | I4_MONITOR | I4_MWAIT,
    }
}

/// Intel VT-x control bits (SDM vol. 3C, §25.6).
pub mod vmx {
    pub const PIN_EXT_INTR_EXITING: u32 = 1 << 0;
    pub const PIN_NMI_EXITING: u32 = 1 << 3;
    pub const PROC_TSC_OFFSETTING: u32 = 1 << 3;
    pub const PROC_HLT_EXITING: u32 = 1 << 7;
    pub const PROC_MWAIT_EXITING: u32 = 1 << 10;
    pub const PROC_IO_BITMAPS: u32 = 1 << 25;
    pub const PROC_MSR_BITMAPS: u32 = 1 << 28;
    pub const PROC_MONITOR_EXITING: u32 = 1 << 29;
    pub const PROC_SECONDARY: u32 = 1 << 31;
    pub const PROC2_WBINVD_EXITING: u32 = 1 << 6;
}

/// The VT-x intercept configuration a VMX vCPU asks for (before adjusting to what the CPU
/// allows; the backend logs any wanted bit the CPU refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxIntercepts {
    pub exception_bitmap: u32,
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
}

/// VT-x: #AC is reflected (the CVE-2015-5307 loop exists on Intel too); #DB is not
/// intercepted (KVM intercepts it only on SVM). INVD, the VMX instructions, GETSEC and XSETBV
/// exit unconditionally; WBINVD exits through the secondary control. External interrupts and
/// NMIs exit (NMIs are then re-raised on the host), HLT exits, all ports and MSRs through the
/// bitmaps. MWAIT and MONITOR exit and become #UD in the guest (as on SVM; CPUID hides MONITOR).
/// UMONITOR/UMWAIT/TPAUSE stay #UD natively: the secondary control "enable user wait and pause"
/// is never set. TSC offsetting is on: the guest's TSC counts from the node's boot (see
/// `catenary_arch::time::guest_tsc_offset`), the clock the device models' `now_ns` is on.
pub fn vmx_intercepts() -> VmxIntercepts {
    use vmx::*;
    VmxIntercepts {
        exception_bitmap: 1 << AC,
        pin: PIN_EXT_INTR_EXITING | PIN_NMI_EXITING,
        proc: PROC_TSC_OFFSETTING | PROC_HLT_EXITING | PROC_MWAIT_EXITING | PROC_IO_BITMAPS | PROC_MSR_BITMAPS | PROC_MONITOR_EXITING | PROC_SECONDARY,
        proc2: PROC2_WBINVD_EXITING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svm_intercepts_every_boundary_event() {
        let i = svm_intercepts();
        // CVE-2015-5307 (#AC) and CVE-2015-8104 (#DB): both exceptions exit.
        assert_ne!(i.exceptions & (1 << 17), 0, "#AC not intercepted");
        assert_ne!(i.exceptions & (1 << 1), 0, "#DB not intercepted");
        // Cache control.
        assert_ne!(i.vec3 & (1 << 22), 0, "INVD not intercepted");
        assert_ne!(i.vec4 & (1 << 9), 0, "WBINVD not intercepted");
        // The SVM instructions and INVLPGA.
        for (bit, name) in [(0, "VMRUN"), (2, "VMLOAD"), (3, "VMSAVE"), (4, "STGI"), (5, "CLGI"), (6, "SKINIT")] {
            assert_ne!(i.vec4 & (1 << bit), 0, "{name} not intercepted");
        }
        assert_ne!(i.vec3 & (1 << 26), 0, "INVLPGA not intercepted");
        // The host keeps its CPU and its devices.
        for (bit, name) in [(0, "INTR"), (1, "NMI"), (18, "CPUID"), (24, "HLT"), (27, "IOIO"), (28, "MSR"), (31, "SHUTDOWN")] {
            assert_ne!(i.vec3 & (1 << bit), 0, "{name} not intercepted");
        }
        assert_ne!(i.vec4 & (1 << 13), 0, "XSETBV not intercepted");
        assert_ne!(i.vec4 & (1 << 1), 0, "VMMCALL not intercepted");
        // A guest must not idle the host CPU outside the host's control.
        assert_ne!(i.vec4 & (1 << 10), 0, "MONITOR not intercepted");
        assert_ne!(i.vec4 & (1 << 11), 0, "MWAIT not intercepted");
        // VINTR is switched on per entry only when an interrupt window is wanted.
        assert_eq!(i.vec3 & svm::I3_VINTR, 0);
    }

    #[test]
    fn vmx_intercepts_every_boundary_event() {
        let i = vmx_intercepts();
        assert_ne!(i.exception_bitmap & (1 << 17), 0, "#AC not intercepted");
        assert_ne!(i.proc2 & (1 << 6), 0, "WBINVD exiting not requested");
        assert_ne!(i.pin & (1 << 3), 0, "NMI exiting not requested");
        assert_ne!(i.pin & 1, 0, "external-interrupt exiting not requested");
        assert_ne!(i.proc & (1 << 7), 0, "HLT exiting not requested");
        assert_ne!(i.proc & (1 << 10), 0, "MWAIT exiting not requested");
        assert_ne!(i.proc & (1 << 29), 0, "MONITOR exiting not requested");
        assert_ne!(i.proc & (1 << 25), 0, "I/O bitmaps not requested");
        assert_ne!(i.proc & (1 << 28), 0, "MSR bitmaps not requested");
        assert_ne!(i.proc & (1 << 31), 0, "secondary controls not requested");
        // (The guest's TSC must count from the node's boot: crate::tsc.)
        assert_ne!(i.proc & (1 << 3), 0, "TSC offsetting not requested");
    }
}
