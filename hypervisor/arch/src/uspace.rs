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
pub use crate::user_mem::{spaces_pending, AddressSpace, UserRange, USER_END};
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
/// `f` must be the frame of the kernel entry this CPU is handling (the one its handler was
/// given): any other `TrapFrame` (a copy in a task's context, say) has no save area below it,
/// and this panics instead of handing out memory that is not one.
pub fn fx_area(f: &mut TrapFrame) -> &mut [u8; FPU_AREA] {
    assert!(crate::trap::is_live_frame(f), "fx_area: not the live trap frame of this CPU");
    let p = (f as *mut TrapFrame as u64 & !0x3f) - FPU_AREA as u64;
    // SAFETY: `f` is this CPU's live entry frame (checked above), and every entry stub
    // (trap_common, arch_syscall_entry) aligns that frame's address to 64 and places its
    // FPU_AREA-byte save area directly below it, for the handler's lifetime; the returned
    // borrow is tied to the `&mut` of the frame, so there is one user at a time.
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

/// A frame that runs kernel function `entry(arg)` on `stack`, interrupts on. It takes a
/// function (not an address) and a stack from the allocator (not a stack pointer), so the
/// frame cannot point ring-0 execution or its stack at arbitrary memory. The caller keeps
/// `stack` for as long as the frame may run (the kernel keeps it in the task's context).
/// (It took a raw entry address and stack top before.)
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// let _ = catenary_arch::uspace::kernel_frame(0xffff_8000_dead_0000, 0xffff_8000_0010_0000, 0);
/// ```
/// ```no_run
/// #![forbid(unsafe_code)]
/// extern "C" fn entry(_: u64) -> ! { loop {} }
/// let stack = catenary_arch::paging::alloc_kernel_stack(8).unwrap();
/// let _ = catenary_arch::uspace::kernel_frame(entry, &stack, 0);
/// ```
pub fn kernel_frame(entry: extern "C" fn(u64) -> !, stack: &crate::paging::KernelStack, arg: u64) -> TrapFrame {
    ring0_frame(entry as *const () as u64, stack.top(), arg)
}

/// The stack top is 16-aligned; entering a function needs rsp ≡ 8 (mod 16).
fn ring0_frame(rip: u64, top: u64, arg: u64) -> TrapFrame {
    TrapFrame { rip, rsp: top - 8, rdi: arg, cs: 0x08, ss: 0x10, rflags: 0x202, ..Default::default() }
}

/// A fresh frame for this CPU's idle loop on `stack` (a stack that lives for good).
pub fn idle_frame(stack: crate::paging::StaticStack) -> TrapFrame {
    ring0_frame(arch_idle_loop as *const () as u64, stack.top(), 0)
}

pub fn current_cr3() -> u64 {
    crate::cpu::read_cr3() & !0xfff
}

/// Switch to `space`'s page tables (the kernel's with `None`); see
/// [`crate::user_mem::activate`]. It took a raw PML4 address before, which let safe code load
/// any frame as page tables:
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// catenary_arch::uspace::switch_cr3(0x1000);
/// ```
pub fn switch_cr3(space: Option<&AddressSpace>) {
    crate::user_mem::activate(space)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `TrapFrame` that is not the live entry frame (a copy kept in a task's context) has no
    /// FPU save area below it: `fx_area` refuses it instead of handing out the memory below.
    #[test]
    #[should_panic(expected = "not the live trap frame")]
    fn fx_area_refuses_a_copied_frame() {
        let mut copy = alloc::boxed::Box::new(TrapFrame::default());
        let _ = fx_area(&mut copy);
    }
}
