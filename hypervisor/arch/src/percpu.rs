//! Per-CPU data, reached through GS base (layer 0: CPU registers).
//!
//! Block layout (offsets are used by `asm/trap.s`): +0 self pointer, +8 syscall stack top, +16
//! user RSP scratch, +24 CPU index, +32 APIC id, +40 TSS (with I/O bitmap), +48 owner of the
//! loaded I/O bitmap (0 = deny all), +56 the FPU area of the ring-3 task this CPU runs (0 =
//! none: entries save below the frame; see `context`).

use core::sync::atomic::{AtomicBool, Ordering};

pub const MAX_CPUS: usize = 64;
const IA32_GS_BASE: u32 = 0xc000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

#[repr(C)]
pub struct PerCpu {
    self_ptr: u64,
    pub syscall_stack_top: u64,
    user_rsp: u64,
    pub index: u64,
    pub apic_id: u64,
    pub(crate) tss: u64,
    pub(crate) io_owner: u64,
    /// Written only by `set_fpu_area` (through GS), read by the entry/exit assembly.
    fpu_area: u64,
}

impl PerCpu {
    pub(crate) fn new(index: usize, apic_id: u32, syscall_stack_top: u64, tss: u64) -> PerCpu {
        PerCpu { self_ptr: 0, syscall_stack_top, user_rsp: 0, index: index as u64, apic_id: apic_id as u64, tss, io_owner: 0, fpu_area: 0 }
    }
}

static PERCPU_READY: AtomicBool = AtomicBool::new(false);

/// Make `pc` this CPU's block (GS base); the user GS (KERNEL_GS_BASE) starts at 0.
pub(crate) fn install(pc: &'static mut PerCpu) {
    pc.self_ptr = pc as *mut PerCpu as u64;
    // SAFETY: GS base points to this CPU's block, which lives forever (`'static`);
    // KERNEL_GS_BASE holds the user GS (0) until the first swapgs on a ring-3 entry.
    unsafe {
        crate::cpu::wrmsr(IA32_GS_BASE, pc.self_ptr);
        crate::cpu::wrmsr(IA32_KERNEL_GS_BASE, 0);
    }
    PERCPU_READY.store(true, Ordering::Release);
}

/// This CPU's index (0 = boot CPU); 0 before per-CPU data exists.
pub fn cpu_index() -> usize {
    if !PERCPU_READY.load(Ordering::Acquire) {
        return 0;
    }
    let v: u64;
    // SAFETY: GS base points to this CPU's PerCpu block once PERCPU_READY is set (the boot CPU
    // sets it first; APs set GS before enabling interrupts or calling kernel code).
    unsafe { core::arch::asm!("mov {}, gs:[24]", out(reg) v, options(nostack, readonly, preserves_flags)) };
    v as usize
}

/// This CPU's per-CPU block.
///
/// # Safety
/// Per-CPU data exists (after `install` on this CPU), interrupts are off until the reference
/// is dropped (nothing else on this CPU touches the block meanwhile), and the caller holds no
/// other reference from `percpu` at the same time.
pub(crate) unsafe fn percpu() -> &'static mut PerCpu {
    let v: u64;
    // SAFETY: GS base points to this CPU's leaked PerCpu block (caller's promise that it
    // exists); exclusivity is the caller's promise.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) v, options(nostack, readonly, preserves_flags));
        &mut *(v as *mut PerCpu)
    }
}

/// Make `area` this CPU's FPU area (+56): ring-3 entries XSAVE into it and ring-3 frames are
/// XRSTORed from it (`asm/trap.s`); 0 turns that off (the area below the frame is used).
///
/// # Safety
/// Per-CPU data exists on this CPU and interrupts are off; `area` is 0 or the address of a
/// 64-byte-aligned, `FPU_AREA`-byte save image that stays allocated, holds a valid image, and
/// is touched by nothing but the entry/exit assembly of this CPU until this is called again
/// (`context::switch` keeps it in this CPU's slot for exactly that long).
pub(crate) unsafe fn set_fpu_area(area: u64) {
    // SAFETY: GS base is this CPU's PerCpu block (caller), and +56 is its `fpu_area` field,
    // which only this function writes; nothing else on this CPU runs meanwhile (interrupts
    // off; an NMI handler does not read it from ring 0).
    unsafe { core::arch::asm!("mov gs:[56], {}", in(reg) area, options(nostack, preserves_flags)) };
}

const _: () = assert!(core::mem::offset_of!(PerCpu, fpu_area) == 56);
