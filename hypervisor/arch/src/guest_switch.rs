//! What VMRUN / VM entry do not switch between host and guest, switched the same way by both
//! backends around every entry:
//!
//! - FPU/SSE/AVX state and XCR0: XSAVE/XRSTOR of every component the host enabled (x87|SSE|AVX)
//!   for both sides, the guest's own XCR0 while it runs (`asm/guest_fpu.s`, called from
//!   svm.s / vmx.s right next to the world switch), FXSAVE when the CPU has no XSAVE. Without it a guest would see another guest's (or a ring-3
//!   task's) ymm upper halves, and run with the host's XCR0 instead of its own.
//! - DR0–DR3 (both backends) and DR6 (VMX; SVM keeps the guest DR6/DR7 in the VMCB, VMX the
//!   guest DR7 in the VMCS): the host's values are saved before entry, host breakpoints are
//!   disarmed while guest addresses are loaded, and everything is put back after the exit,
//!   so a guest's breakpoints never fire in the host and the host's never in the guest.

use alloc::boxed::Box;
use core::sync::atomic::Ordering;

/// XCR0 components the switch handles: x87 | SSE | AVX. The device model accepts no other
/// guest XCR0 bits and the kernel enables no others, so [`XsaveArea`] (standard format,
/// 832 bytes for these) always fits.
const XCR0_HANDLED: u64 = 0b111;
const AREA: usize = 1024;
const XSTATE_BV: usize = 512;
const XSAVE_HEADER_END: usize = 576;

/// A 64-byte-aligned XSAVE (or FXSAVE) area.
#[repr(C, align(64))]
pub(crate) struct XsaveArea([u8; AREA]);

impl XsaveArea {
    /// The reset state: FCW 0x37f, MXCSR 0x1f80, empty XSAVE header (all components in
    /// their initial configuration).
    pub(crate) fn reset() -> Box<XsaveArea> {
        let mut a = Box::new(XsaveArea([0; AREA]));
        a.0[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        a.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        a
    }

    /// XRSTOR faults (#GP, in the host) on header bits outside the XCR0 it runs under and on
    /// non-zero reserved header bytes: keep the header valid for `xcr0`.
    fn sanitize(&mut self, xcr0: u64) {
        let bv = u64::from_le_bytes(self.0[XSTATE_BV..XSTATE_BV + 8].try_into().unwrap_or([0; 8])) & xcr0;
        self.0[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
        self.0[XSTATE_BV + 8..XSAVE_HEADER_END].fill(0);
    }
}

/// The argument block of `arch_fpu_to_guest` / `arch_fpu_to_host` (layout fixed by
/// asm/guest_fpu.s).
#[repr(C)]
pub(crate) struct FpuSwitch {
    host: *mut XsaveArea,
    guest: *mut XsaveArea,
    host_xcr0: u64,
    guest_xcr0: u64,
    xsave: u64,
}

impl FpuSwitch {
    /// The switch for one entry. `guest_xcr0` is what the guest set through XSETBV (validated
    /// by the device model); it is further limited to what the host enabled, so XSETBV in the
    /// host never faults.
    pub(crate) fn new(host: &mut XsaveArea, guest: &mut XsaveArea, guest_xcr0: u64) -> FpuSwitch {
        let host_xcr0 = crate::uspace::xcr0() & XCR0_HANDLED;
        let xsave = crate::cpu::ARCH_XSAVE_ON.load(Ordering::Acquire) != 0 && host_xcr0 & 3 == 3;
        let mut g = (guest_xcr0 & host_xcr0) | 1;
        if g & 4 != 0 {
            g |= 2; // AVX requires SSE
        }
        if xsave {
            host.sanitize(host_xcr0);
            guest.sanitize(host_xcr0);
        }
        FpuSwitch { host, guest, host_xcr0, guest_xcr0: g, xsave: xsave as u64 }
    }

    /// After the exit: the XCR0 the guest actually ran with (read back by `arch_fpu_to_host`;
    /// the same as the one it set through the intercepted XSETBV on a CPU that honours that
    /// intercept — QEMU's SVM does not), or `None` without XSAVE.
    pub(crate) fn guest_xcr0_after(&self) -> Option<u64> {
        (self.xsave != 0).then_some(self.guest_xcr0)
    }
}

fn read_dr(n: u8) -> u64 {
    let v: u64;
    // SAFETY: reading a debug register at CPL 0 has no side effects.
    unsafe {
        match n {
            0 => core::arch::asm!("mov {}, dr0", out(reg) v, options(nomem, nostack, preserves_flags)),
            1 => core::arch::asm!("mov {}, dr1", out(reg) v, options(nomem, nostack, preserves_flags)),
            2 => core::arch::asm!("mov {}, dr2", out(reg) v, options(nomem, nostack, preserves_flags)),
            3 => core::arch::asm!("mov {}, dr3", out(reg) v, options(nomem, nostack, preserves_flags)),
            6 => core::arch::asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags)),
            _ => core::arch::asm!("mov {}, dr7", out(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
    v
}

/// # Safety
/// Writing DR7 arms breakpoints: the caller decides what may be armed. DR0–DR3 are only
/// addresses (inert unless DR7 arms them); DR6 is a status register.
unsafe fn write_dr(n: u8, v: u64) {
    // SAFETY: forwarded to the caller (see above).
    unsafe {
        match n {
            0 => core::arch::asm!("mov dr0, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            1 => core::arch::asm!("mov dr1, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            2 => core::arch::asm!("mov dr2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            3 => core::arch::asm!("mov dr3, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            6 => core::arch::asm!("mov dr6, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            _ => core::arch::asm!("mov dr7, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
}

/// DR7 with every breakpoint disabled (its reset value).
const DR7_OFF: u64 = 0x400;

/// A guest's debug registers that neither VMCB nor VMCS holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuestDebugRegs {
    dr: [u64; 4],
    /// Used by VMX only (SVM keeps the guest DR6 in the VMCB).
    dr6: u64,
}

/// The host's debug registers while a guest runs.
pub(crate) struct HostDebugRegs {
    dr: [u64; 4],
    dr6: u64,
    dr7: u64,
}

impl GuestDebugRegs {
    pub(crate) const RESET: GuestDebugRegs = GuestDebugRegs { dr: [0; 4], dr6: 0xffff_0ff0 };

    /// Save the host's DR0–3/DR6/DR7, disarm host breakpoints, load the guest's DR0–3 (and
    /// DR6 when `with_dr6`). Call with interrupts off, right before the world switch.
    pub(crate) fn load(&self, with_dr6: bool) -> HostDebugRegs {
        let host = HostDebugRegs { dr: [read_dr(0), read_dr(1), read_dr(2), read_dr(3)], dr6: read_dr(6), dr7: read_dr(7) };
        // SAFETY: DR7 is disarmed before the guest's addresses go into DR0–3, so no host
        // access can hit a guest breakpoint; the guest's own DR7 is loaded by the world switch.
        unsafe {
            if host.dr7 != DR7_OFF {
                write_dr(7, DR7_OFF);
            }
            for (i, &v) in self.dr.iter().enumerate() {
                if v != host.dr[i] {
                    write_dr(i as u8, v);
                }
            }
            if with_dr6 {
                write_dr(6, self.dr6);
            }
        }
        host
    }

    /// After the exit (interrupts still off): keep the guest's DR0–3 (and DR6), disarm
    /// anything the guest left armed, and put the host's values back.
    pub(crate) fn save(&mut self, host: &HostDebugRegs, with_dr6: bool) {
        // SAFETY: DR7 is disarmed first (VM exit already does so on VMX; on SVM this covers a
        // CPU that leaves the guest's DR7 loaded), then the host's own values come back,
        // re-arming exactly what the host had armed.
        unsafe {
            write_dr(7, DR7_OFF);
            for i in 0..4 {
                self.dr[i] = read_dr(i as u8);
                if self.dr[i] != host.dr[i] {
                    write_dr(i as u8, host.dr[i]);
                }
            }
            if with_dr6 {
                self.dr6 = read_dr(6);
            }
            write_dr(6, host.dr6);
            if host.dr7 != DR7_OFF {
                write_dr(7, host.dr7);
            }
        }
    }
}

/// This CPU's DR0–DR3 and DR7 (the kernel arms no breakpoints; tests check that a guest's
/// debug registers never leak into the host's).
pub fn host_debug_regs() -> [u64; 5] {
    [read_dr(0), read_dr(1), read_dr(2), read_dr(3), read_dr(7)]
}

/// Put addresses into this CPU's DR0–DR3 (tests: sentinels a guest must not change). Refused
/// (returns false) if DR7 arms any breakpoint, so this never arms one.
pub fn set_host_breakpoint_addresses(a: [u64; 4]) -> bool {
    crate::cpu::without_interrupts(|| {
        if read_dr(7) & 0xff != 0 {
            return false;
        }
        for (i, &v) in a.iter().enumerate() {
            // SAFETY: DR7 enables none of DR0–3 (checked above, interrupts off), so these are
            // inert addresses.
            unsafe { write_dr(i as u8, v) };
        }
        true
    })
}
