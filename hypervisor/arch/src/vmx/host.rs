//! Host state a VM exit restores: selectors, descriptor tables, TR (reloaded after each exit
//! to get the TSS I/O bitmap back), control registers and MSRs, the exit RIP.

use super::*;

// ---- host state ----

#[repr(C, packed)]
#[derive(Default, Clone, Copy)]
pub(super) struct DtPtr {
    pub(super) limit: u16,
    pub(super) base: u64,
}

pub(super) fn sgdt() -> DtPtr {
    let mut d = DtPtr::default();
    // SAFETY: SGDT stores 10 bytes into our local.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) &mut d as *mut DtPtr, options(nostack)) };
    d
}
pub(super) fn sidt() -> DtPtr {
    let mut d = DtPtr::default();
    // SAFETY: SIDT stores 10 bytes into our local.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) &mut d as *mut DtPtr, options(nostack)) };
    d
}

pub(super) struct HostSelectors {
    pub(super) cs: u16,
    pub(super) ss: u16,
    pub(super) ds: u16,
    pub(super) es: u16,
    pub(super) fs: u16,
    pub(super) gs: u16,
    pub(super) tr: u16,
}

pub(super) fn host_selectors() -> HostSelectors {
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    // SAFETY: reading segment selectors and the task register has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {0:x}, fs", "mov {1:x}, gs", "str {2:x}",
            out(reg) fs, out(reg) gs, out(reg) tr, options(nomem, nostack, preserves_flags));
    }
    HostSelectors { cs, ss, ds, es, fs, gs, tr }
}

/// Base of the TSS the GDT descriptor `sel` describes (16-byte system descriptor).
pub(super) fn tss_base(gdt: u64, sel: u16) -> u64 {
    let p = gdt + (sel as u64 & !7);
    // SAFETY: the GDT is mapped kernel memory and `sel` is the loaded TR selector, so its
    // 16-byte descriptor lies inside it.
    let (lo, hi) = unsafe { (core::ptr::read_unaligned(p as *const u64), core::ptr::read_unaligned((p + 8) as *const u64)) };
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32)
}

/// VM exit sets the host TR limit to 0x67, which cuts off the TSS I/O permission bitmap the
/// kernel grants ring-3 drivers ports through: reload TR from its GDT descriptor (after clearing
/// the descriptor's busy bit, which LTR requires).
pub(super) fn reload_host_tr() {
    let gdt = sgdt();
    let sel = host_selectors().tr;
    if sel == 0 {
        return;
    }
    let p = (gdt.base + (sel as u64 & !7)) as *mut u64;
    // SAFETY: `sel` is the loaded TR selector, so its descriptor lies inside the (writable,
    // kernel-owned) GDT; clearing the busy bit (type 0xb -> 0x9) and reloading TR with the same
    // selector restores the full limit and changes nothing else.
    unsafe {
        let d = core::ptr::read_volatile(p);
        core::ptr::write_volatile(p, d & !(1u64 << 41));
        core::arch::asm!("ltr {0:x}", in(reg) sel, options(nostack));
    }
}

pub(super) fn write_host_state() {
    let sel = host_selectors();
    let gdt = sgdt();
    let idt = sidt();
    vmwrite(f::HOST_CR0, crate::cpu::read_cr0());
    vmwrite(f::HOST_CR3, crate::cpu::read_cr3());
    vmwrite(f::HOST_CR4, crate::cpu::read_cr4());
    vmwrite(f::HOST_CS_SEL, (sel.cs & !7) as u64);
    vmwrite(f::HOST_SS_SEL, (sel.ss & !7) as u64);
    vmwrite(f::HOST_DS_SEL, (sel.ds & !7) as u64);
    vmwrite(f::HOST_ES_SEL, (sel.es & !7) as u64);
    vmwrite(f::HOST_FS_SEL, (sel.fs & !7) as u64);
    vmwrite(f::HOST_GS_SEL, (sel.gs & !7) as u64);
    vmwrite(f::HOST_TR_SEL, (sel.tr & !7) as u64);
    vmwrite(f::HOST_FS_BASE, crate::cpu::rdmsr(IA32_FS_BASE));
    vmwrite(f::HOST_GS_BASE, crate::cpu::rdmsr(IA32_GS_BASE));
    vmwrite(f::HOST_TR_BASE, tss_base(gdt.base, sel.tr));
    vmwrite(f::HOST_GDTR_BASE, gdt.base);
    vmwrite(f::HOST_IDTR_BASE, idt.base);
    vmwrite(f::HOST_SYSENTER_CS, crate::cpu::rdmsr(IA32_SYSENTER_CS));
    vmwrite(f::HOST_SYSENTER_ESP, crate::cpu::rdmsr(IA32_SYSENTER_ESP));
    vmwrite(f::HOST_SYSENTER_EIP, crate::cpu::rdmsr(IA32_SYSENTER_EIP));
    vmwrite(f::HOST_IA32_EFER, crate::cpu::rdmsr(IA32_EFER));
    vmwrite(f::HOST_IA32_PAT, crate::cpu::rdmsr(IA32_PAT));
    vmwrite(f::HOST_RIP, arch_vmx_exit as *const () as u64);
}
