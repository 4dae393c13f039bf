//! Ring 3: the `syscall` MSRs and entry (`asm/trap.s`), task contexts (a saved
//! `TrapFrame` + its FXSAVE area), user address spaces (a PML4 sharing the kernel half, user
//! pages with the US bit), SMEP/SMAP, and the per-CPU TSS I/O permission bitmap.
//!
//! Context switching works on trap frames: every kernel entry (interrupt, exception, `int`,
//! `syscall`) saves the full register state as a `TrapFrame` with the 512-byte FXSAVE area
//! directly below it, and restores whatever frame is there on exit. Switching tasks is copying
//! the current frame + FXSAVE area out to the old task and the new task's in, then loading the
//! new task's CR3 and I/O bitmap.

use x86_64::structures::paging::FrameAllocator;

use crate::paging::{p2v, GlobalFrames, PagingError};
use crate::trap::TrapFrame;

pub use crate::trap::{set_syscall_handler, SYSCALL_FRAME};
pub use crate::user_mem::{AddressSpace, UserRange, USER_END};
pub const IO_BITMAP_BYTES: usize = 8192;

extern "C" {
    fn arch_syscall_entry();
    fn arch_idle_loop();
}

/// EFER.SCE, STAR (kernel CS 0x08 / user base 0x10 → user SS 0x1b, CS 0x23), LSTAR, SFMASK.
pub(crate) fn init_syscall_msrs(sel: &crate::gdt::Selectors) {
    let kcs = sel.kernel_code.0 as u64;
    let ubase = (sel.user_data.0 as u64 & !3) - 8;
    // SAFETY: the GDT has kernel code/data then user data/code in the order sysret expects
    // (checked by the assert), and LSTAR points to the syscall entry stub.
    unsafe {
        assert!(sel.user_code.0 as u64 & !3 == ubase + 16 && sel.kernel_data.0 as u64 == kcs + 8);
        crate::cpu::wrmsr(0xc000_0080, crate::cpu::rdmsr(0xc000_0080) | 1); // EFER.SCE
        crate::cpu::wrmsr(0xc000_0081, (ubase << 48) | (kcs << 32)); // STAR
        crate::cpu::wrmsr(0xc000_0082, arch_syscall_entry as *const () as u64); // LSTAR
        // SFMASK: IF, TF, DF, AC, NT cleared on entry (AC: SMAP stays enforced).
        crate::cpu::wrmsr(0xc000_0084, (1 << 9) | (1 << 8) | (1 << 10) | (1 << 18) | (1 << 14));
    }
}

/// Turn on SMEP and SMAP (and XSAVE, see `enable_xsave`) on this CPU where CPUID has them.
/// Returns (smep, smap).
pub fn enable_protections() -> (bool, bool) {
    let (_, ebx, _, _) = crate::cpu::cpuid(7, 0);
    let smep = ebx & (1 << 7) != 0;
    let smap = ebx & (1 << 20) != 0;
    let mut bits = 0;
    if smep {
        bits |= 1 << 20;
    }
    if smap {
        bits |= 1 << 21;
    }
    crate::cpu::cr4_set(bits);
    enable_xsave();
    (smep, smap)
}

pub use crate::cpu::{enable_xsave, xcr0, ARCH_XSAVE_ON, FPU_AREA};

/// The FPU/SSE/AVX save area that the entry stub filled right below `f` (restored on exit).
pub fn fx_area(f: &mut TrapFrame) -> &mut [u8; FPU_AREA] {
    let p = (f as *mut TrapFrame as u64 & !0x3f) - FPU_AREA as u64;
    // SAFETY: every entry stub (trap_common, arch_syscall_entry) aligns the frame's address to
    // 64 and places its FPU_AREA-byte save area directly below it, for the handler's lifetime.
    unsafe { &mut *(p as *mut [u8; FPU_AREA]) }
}

/// A save image with default FPU/SSE state (FCW 0x37f, MXCSR 0x1f80; XSAVE header zero: the
/// other components start in their initial state).
pub fn default_fx() -> [u8; FPU_AREA] {
    let mut fx = [0u8; FPU_AREA];
    fx[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    fx
}

/// A frame that enters ring 3 at `rip` with stack `rsp` and `rdi` = `arg`.
pub fn user_frame(rip: u64, rsp: u64, arg: u64) -> TrapFrame {
    TrapFrame { rip, rsp, rdi: arg, cs: 0x23, ss: 0x1b, rflags: 0x202, ..Default::default() }
}

/// A frame that runs kernel code `rip` on stack `rsp` with `rdi` = `arg`, interrupts on.
pub fn kernel_frame(rip: u64, rsp: u64, arg: u64) -> TrapFrame {
    // The stack top is 16-aligned; entering a function needs rsp ≡ 8 (mod 16).
    TrapFrame { rip, rsp: rsp - 8, rdi: arg, cs: 0x08, ss: 0x10, rflags: 0x202, ..Default::default() }
}

/// A fresh frame for this CPU's idle loop on `stack_top`.
pub fn idle_frame(stack_top: u64) -> TrapFrame {
    kernel_frame(arch_idle_loop as *const () as u64, stack_top, 0)
}

pub fn current_cr3() -> u64 {
    crate::cpu::read_cr3() & !0xfff
}

/// Switch to the page tables at `pml4` (no-op if already loaded).
pub fn switch_cr3(pml4: u64) {
    if current_cr3() != pml4 {
        // SAFETY: every PML4 given here shares the kernel half with the kernel page tables
        // (`AddressSpace::new`), so the running kernel code, stacks and data stay mapped.
        unsafe { core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
    }
}

/// Make sure every kernel-half PML4 slot has a PDPT, so address spaces created later (which copy
/// the kernel half) see every kernel mapping made afterwards. Call once before the first
/// `AddressSpace::new`.
pub fn prefill_kernel_half() -> Result<(), PagingError> {
    let pml4 = p2v(crate::paging::kernel_pml4()) as *mut u64;
    for i in 256..512 {
        // SAFETY: the kernel PML4 is reached through the direct map; slots are filled with fresh
        // zeroed tables before any other CPU or address space uses them.
        unsafe {
            if pml4.add(i).read_volatile() & 1 == 0 {
                let f = GlobalFrames.allocate_frame().ok_or(PagingError::OutOfFrames)?;
                pml4.add(i).write_volatile(f.start_address().as_u64() | 0x3);
            }
        }
    }
    Ok(())
}

/// Load `bitmap` as this CPU's TSS I/O permission bitmap (`owner` identifies it so an
/// unchanged bitmap is not copied again), or deny every port with `None`.
pub fn set_io_bitmap(owner: u64, bitmap: Option<&[u8; IO_BITMAP_BYTES]>) {
    crate::cpu::without_interrupts(|| set_io_bitmap_here(owner, bitmap))
}

fn set_io_bitmap_here(owner: u64, bitmap: Option<&[u8; IO_BITMAP_BYTES]>) {
    // SAFETY: interrupts are off (caller) and this is the only live reference; per-CPU data
    // exists before the scheduler switches tasks.
    let pc = unsafe { crate::percpu::percpu() };
    let tss = pc.tss as *mut crate::gdt::TssWithIo;
    match bitmap {
        Some(b) if pc.io_owner != owner => {
            // SAFETY: this CPU's TSS, written with interrupts off (context switch path).
            unsafe { (&mut (*tss).iomap)[..IO_BITMAP_BYTES].copy_from_slice(b) };
            pc.io_owner = owner;
        }
        None if pc.io_owner != 0 => {
            // SAFETY: as above.
            unsafe { (&mut (*tss).iomap)[..IO_BITMAP_BYTES].fill(0xff) };
            pc.io_owner = 0;
        }
        _ => {}
    }
}

/// A bitmap that allows exactly `ports`.
pub fn io_bitmap_for(ports: &[u16]) -> alloc::boxed::Box<[u8; IO_BITMAP_BYTES]> {
    let mut b = alloc::boxed::Box::new([0xffu8; IO_BITMAP_BYTES]);
    for &p in ports {
        b[p as usize / 8] &= !(1 << (p % 8));
    }
    b
}

/// Vector of the kernel-mode system call gate (kernel tasks use the same ABI as ring 3).
pub const KSYSCALL_VECTOR: u8 = 0x80;

/// Registers a system call returns: rax (status), rdi, rsi, rdx, r10, r8, r9, r12.
#[derive(Debug, Clone, Copy, Default)]
pub struct SysRet {
    pub rax: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub r10: u64,
    pub r8: u64,
    pub r9: u64,
    pub r12: u64,
    pub r13: u64,
}

/// A system call from a kernel task (`int 0x80`, same registers as `syscall` from ring 3).
pub fn ksyscall(nr: u64, a: [u64; 6]) -> SysRet {
    let mut r = SysRet::default();
    // SAFETY: `int 0x80` enters the kernel's syscall handler, which may switch to other tasks
    // and later resume this one exactly here with the result registers set; memory is shared
    // kernel state, hence no `nomem`.
    unsafe {
        core::arch::asm!("int 0x80",
            inlateout("rax") nr => r.rax, inlateout("rdi") a[0] => r.rdi, inlateout("rsi") a[1] => r.rsi,
            inlateout("rdx") a[2] => r.rdx, inlateout("r10") a[3] => r.r10, inlateout("r8") a[4] => r.r8,
            inlateout("r9") a[5] => r.r9, inlateout("r12") 0u64 => r.r12,
            inlateout("r13") 0u64 => r.r13, lateout("rcx") _, lateout("r11") _);
    }
    r
}
