//! AMD SVM exit decoding: the pure part of the SVM backend, host-tested and fuzzed.
//!
//! The backend (`catenary-arch`, `svm.rs`) reads EXITCODE, EXITINFO1 and EXITINFO2 from the
//! VMCB and calls [`decode_svm_exit`] (AMD APM vol. 2, appendix C "SVM intercept exit codes",
//! §15.10.2 IOIO EXITINFO1, §15.25.6 nested page fault EXITINFO1).

use crate::cpu::Exit;

/// SVM exit code + EXITINFO1/2 → backend-neutral exit.
pub fn decode_svm_exit(code: u64, info1: u64, info2: u64) -> Exit {
    match code {
        0x40..=0x5f => {
            let vector = (code - 0x40) as u8;
            let has_ec = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
            Exit::Exception { vector, error_code: has_ec.then_some(info1 as u32) }
        }
        0x60 => Exit::ExternalInterrupt,
        0x61 => Exit::Nmi,
        0x64 => Exit::InterruptWindow,
        0x72 => Exit::Cpuid,
        0x76 => Exit::Invd,
        0x77 => Exit::Pause,
        0x78 => Exit::Hlt,
        0x7b => {
            let size = if info1 & 0x10 != 0 {
                1
            } else if info1 & 0x20 != 0 {
                2
            } else {
                4
            };
            Exit::Io { port: (info1 >> 16) as u16, size, write: info1 & 1 == 0, string: info1 & 4 != 0, rep: info1 & 8 != 0 }
        }
        0x7c => {
            if info1 & 1 == 0 {
                Exit::Rdmsr
            } else {
                Exit::Wrmsr
            }
        }
        0x7f => Exit::Shutdown,
        // INVLPGA and the SVM instructions (the guest sees EFER.SVME set): #UD, as for a CPU
        // without SVM. VMMCALL (0x81) is the hypercall.
        0x7a | 0x80 | 0x82..=0x86 => Exit::Exception { vector: crate::intercepts::UD, error_code: None },
        0x81 => Exit::Vmcall,
        // MONITOR(X), MWAIT(X) and MWAIT-if-armed: #UD, as on a CPU without MONITOR (CPUID
        // hides it); never executed natively (the guest would idle the host CPU).
        0x8a..=0x8c => Exit::Exception { vector: crate::intercepts::UD, error_code: None },
        0x89 => Exit::Wbinvd,
        0x8d => Exit::Xsetbv,
        // A nested fault during the guest's own page-table walk (EXITINFO1 bit 33): the GPA is
        // a paging-structure entry, not an MMIO access by the instruction at RIP.
        0x400 if info1 & (1 << 33) != 0 => Exit::PageWalkFault { gpa: info2 },
        0x400 => Exit::Mmio { gpa: info2, write_hint: Some(info1 & 2 != 0) },
        // VMEXIT_INVALID (-1); QEMU reports it as 0xffff_ffff in 32 bits.
        0xffff_ffff | 0xffff_ffff_ffff_ffff => Exit::InvalidGuestState { code },
        _ => Exit::Other { code },
    }
}


/// What to deliver again after an exit whose EXITINTINFO shows an event that was being
/// delivered when the exit hit (APM vol. 2 §15.7.2): the EVENTINJ value for the next VMRUN, or
/// `None` when nothing must be injected.
///
/// - Valid bit clear (QEMU can leave stale bits otherwise): nothing.
/// - Software interrupts (type 4: `INT n`, and in QEMU also `INT3`/`INTO`) and the software
///   exceptions #BP/#OF (type 3, how AMD reports `INT3`/`INTO`): not re-injected. RIP still
///   points at the instruction, and without NRIPS the CPU pushes the RIP at VMRUN as the return
///   address, i.e. the INT instruction itself; the guest's handler would then see a return
///   address one instruction early (Linux's `int3` handler, which live code patching relies
///   on, takes that as a stray breakpoint and oopses). Letting the guest execute the
///   instruction again raises the same event with the right return address, as KVM does.
/// - Type 3 with a vector of 32 or more: QEMU records interrupts it delivered on its own (a
///   virtual interrupt) as "exceptions", which VMRUN refuses; re-inject them as interrupts.
/// - Everything else (external interrupts, NMIs, hardware exceptions with their error code):
///   unchanged.
pub fn redelivery(exitintinfo: u64) -> Option<u64> {
    if exitintinfo & (1 << 31) == 0 {
        return None;
    }
    let vector = exitintinfo & 0xff;
    match (exitintinfo >> 8) & 7 {
        4 => None,
        3 if vector == 3 || vector == 4 => None,
        3 if vector >= 32 => Some(exitintinfo & !((7 << 8) | (1 << 11) | (0xffff_ffff << 32))),
        _ => Some(exitintinfo),
    }
}

/// External interrupts reach an SVM guest as a *virtual* interrupt (VMCB V_IRQ with the vector
/// in V_INTR_VECTOR), never through EVENTINJ. Given an EVENTINJ-encoded event (valid bit set),
/// the vector to arm V_IRQ with when it is an external interrupt (type 0); `None` for NMIs and
/// exceptions, which keep going through EVENTINJ.
///
/// Why (docs/vmm.md "Soak", issue 9): QEMU's TCG `helper_vmrun` delivers an EVENTINJ external
/// interrupt on the spot but leaves the vector in `cs->exception_index`; the next time anything
/// asks the vCPU thread to leave its loop (`cpu->exit_request`: a kick from another thread)
/// before the guest's next exit or exception, `cpu_handle_interrupt` keeps that stale index and
/// `cpu_handle_exception` delivers the vector a second time as an exception, whatever the
/// guest's RFLAGS.IF. Guests then take the same interrupt nested inside its own handler, with
/// interrupts off (a Linux guest oopses, deadlocks on its irq lock or triple-faults). A virtual
/// interrupt is delivered by QEMU's `x86_cpu_exec_interrupt`, which leaves no stale index. On
/// hardware V_IRQ is the architected way to hand a guest an interrupt (APM vol. 2 §15.21.4) and
/// is taken at the first instruction boundary where the guest has IF=1 and no interrupt shadow,
/// exactly when the device model decides to inject.
pub fn virtual_interrupt_vector(eventinj: u64) -> Option<u8> {
    (eventinj & (1 << 31) != 0 && (eventinj >> 8) & 7 == 0).then_some(eventinj as u8)
}

/// VMCB V_INTR control word (offset 0x60) bits the world switch owns.
pub mod vintr {
    /// V_IRQ: a virtual interrupt is pending (the CPU clears it when the guest takes it).
    pub const V_IRQ: u64 = 1 << 8;
    /// V_INTR_PRIO (bits 19:16).
    pub const PRIO_MASK: u64 = 0xf << 16;
    /// V_IGN_TPR: take the virtual interrupt whatever the guest's virtual TPR.
    pub const IGN_TPR: u64 = 1 << 20;
    /// V_INTR_VECTOR (bits 39:32).
    pub const VECTOR_MASK: u64 = 0xff << 32;

    /// `current` with any virtual interrupt disarmed.
    pub fn cleared(current: u64) -> u64 {
        current & !(V_IRQ | PRIO_MASK | IGN_TPR | VECTOR_MASK)
    }

    /// `current` with a virtual interrupt armed: top priority, TPR ignored, `vector` (for the
    /// interrupt-window request the vector is never delivered: VINTR is intercepted).
    pub fn armed(current: u64, vector: u8) -> u64 {
        cleared(current) | V_IRQ | PRIO_MASK | IGN_TPR | ((vector as u64) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioio() {
        // OUT dx, al to 0x3f8: type 0 (out), SZ8 (bit 4), port in 31:16
        assert_eq!(decode_svm_exit(0x7b, (0x3f8 << 16) | 0x10, 0), Exit::Io { port: 0x3f8, size: 1, write: true, string: false, rep: false });
        // REP INSW from 0x1234: type 1 (in), STR (2), REP (3), SZ16 (5)
        assert_eq!(decode_svm_exit(0x7b, (0x1234 << 16) | 1 | 4 | 8 | 0x20, 0), Exit::Io { port: 0x1234, size: 2, write: false, string: true, rep: true });
        assert_eq!(decode_svm_exit(0x7b, (0xcfc << 16) | 1 | 0x40, 0), Exit::Io { port: 0xcfc, size: 4, write: false, string: false, rep: false });
    }

    #[test]
    fn npf_and_walk_faults() {
        assert_eq!(decode_svm_exit(0x400, 0x2 | 0x1 | (1 << 32), 0xd000_0010), Exit::Mmio { gpa: 0xd000_0010, write_hint: Some(true) });
        assert_eq!(decode_svm_exit(0x400, 1 << 32, 0xfee0_0000), Exit::Mmio { gpa: 0xfee0_0000, write_hint: Some(false) });
        // fault during the guest's page-table walk: not an MMIO access by the instruction
        assert_eq!(decode_svm_exit(0x400, 1 << 33, 0x1234_5000), Exit::PageWalkFault { gpa: 0x1234_5000 });
        assert_eq!(decode_svm_exit(0x400, (1 << 33) | 2 | 1, 0xd000_0000), Exit::PageWalkFault { gpa: 0xd000_0000 });
    }

    #[test]
    fn svm_instructions_are_ud_and_cache_flushes_are_exits() {
        for code in [0x7a, 0x80, 0x82, 0x83, 0x84, 0x85, 0x86] {
            assert_eq!(decode_svm_exit(code, 0, 0), Exit::Exception { vector: 6, error_code: None }, "exit {code:#x}");
        }
        assert_eq!(decode_svm_exit(0x81, 0, 0), Exit::Vmcall);
        // MONITOR, MWAIT, MWAIT-if-armed
        for code in [0x8a, 0x8b, 0x8c] {
            assert_eq!(decode_svm_exit(code, 0, 0), Exit::Exception { vector: 6, error_code: None }, "exit {code:#x}");
        }
        assert_eq!(decode_svm_exit(0x89, 0, 0), Exit::Wbinvd);
        assert_eq!(decode_svm_exit(0x76, 0, 0), Exit::Invd);
        // #AC (error code) and #DB (none) are reflected.
        assert_eq!(decode_svm_exit(0x40 + 17, 0, 0), Exit::Exception { vector: 17, error_code: Some(0) });
        assert_eq!(decode_svm_exit(0x40 + 1, 0, 0), Exit::Exception { vector: 1, error_code: None });
    }

    #[test]
    fn exceptions_and_misc() {
        assert_eq!(decode_svm_exit(0x40 + 14, 0x6, 0xdead), Exit::Exception { vector: 14, error_code: Some(6) });
        assert_eq!(decode_svm_exit(0x40 + 6, 0, 0), Exit::Exception { vector: 6, error_code: None });
        assert_eq!(decode_svm_exit(0x7c, 0, 0), Exit::Rdmsr);
        assert_eq!(decode_svm_exit(0x7c, 1, 0), Exit::Wrmsr);
        assert_eq!(decode_svm_exit(0x72, 0, 0), Exit::Cpuid);
        assert_eq!(decode_svm_exit(0x78, 0, 0), Exit::Hlt);
        assert_eq!(decode_svm_exit(0x7f, 0, 0), Exit::Shutdown);
        assert_eq!(decode_svm_exit(0x81, 0, 0), Exit::Vmcall);
        assert_eq!(decode_svm_exit(0x60, 0, 0), Exit::ExternalInterrupt);
        assert_eq!(decode_svm_exit(0x64, 0, 0), Exit::InterruptWindow);
        // VMEXIT_INVALID as QEMU reports it (32-bit) and as the APM defines it (-1)
        assert_eq!(decode_svm_exit(0xffff_ffff, 0, 0), Exit::InvalidGuestState { code: 0xffff_ffff });
        assert!(matches!(decode_svm_exit(u64::MAX, 0, 0), Exit::InvalidGuestState { .. }));
        assert_eq!(decode_svm_exit(0x8e, 0, 0), Exit::Other { code: 0x8e });
    }

    #[test]
    fn never_panics_and_io_sizes_are_valid() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let code = if x & 1 == 0 { x % 0x500 } else { x };
            if let Exit::Io { size, .. } = decode_svm_exit(code, x.rotate_left(17), x.rotate_left(31)) {
                assert!(matches!(size, 1 | 2 | 4));
            }
        }
    }

    #[test]
    fn redelivery_of_interrupted_events() {
        let v = 1u64 << 31;
        // stale data without the valid bit: nothing
        assert_eq!(redelivery(0x30), None);
        assert_eq!(redelivery(0), None);
        // external interrupt, NMI, #PF with error code: delivered again unchanged
        assert_eq!(redelivery(v | 0x30), Some(v | 0x30));
        assert_eq!(redelivery(v | (2 << 8) | 2), Some(v | (2 << 8) | 2));
        let pf = v | (3 << 8) | (1 << 11) | 14 | (0x6 << 32);
        assert_eq!(redelivery(pf), Some(pf));
        assert_eq!(redelivery(v | (3 << 8) | 6), Some(v | (3 << 8) | 6));
        // software interrupts and #BP/#OF: the guest executes the instruction again
        assert_eq!(redelivery(v | (4 << 8) | 0x80), None);
        assert_eq!(redelivery(v | (4 << 8) | 3), None);
        assert_eq!(redelivery(v | (3 << 8) | 3), None);
        assert_eq!(redelivery(v | (3 << 8) | 4), None);
        // an "exception" with an interrupt vector (QEMU's record of a virtual interrupt)
        assert_eq!(redelivery(v | (3 << 8) | 0x30), Some(v | 0x30));
    }

    #[test]
    fn interrupts_go_through_v_irq_exceptions_through_eventinj() {
        // external interrupt 0x30 (type 0), as `Injection::svm_eventinj` and `redelivery` encode it
        assert_eq!(virtual_interrupt_vector(0x30 | (1 << 31)), Some(0x30));
        // QEMU's own record of an interrupt (type 3, vector >= 32) becomes type 0 first
        assert_eq!(redelivery(0x34 | (3 << 8) | (1 << 31)).and_then(virtual_interrupt_vector), Some(0x34));
        // NMI, #PF with error code, not valid: not a virtual interrupt
        assert_eq!(virtual_interrupt_vector(2 | (2 << 8) | (1 << 31)), None);
        assert_eq!(virtual_interrupt_vector(14 | (3 << 8) | (1 << 11) | (1 << 31) | (2 << 32)), None);
        assert_eq!(virtual_interrupt_vector(0x30), None);
        let v = vintr::armed(1 << 24, 0x31);
        assert_eq!(v, (1 << 24) | (1 << 8) | (0xf << 16) | (1 << 20) | (0x31 << 32));
        assert_eq!(vintr::cleared(v), 1 << 24, "V_INTR_MASKING and V_TPR are kept");
    }
}
