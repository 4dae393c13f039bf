//! Ring 3: the `syscall` MSRs and entry (`asm/trap.s`), user address spaces (a PML4 sharing
//! the kernel half, user pages with the US bit), SMEP/SMAP, the per-CPU TSS I/O permission
//! bitmap, and kernel system calls (`int 0x80`).
//!
//! Context switching works on trap frames: every kernel entry (interrupt, exception, `int`,
//! `syscall`) saves the full register state as a `TrapFrame`, and restores whatever frame is
//! there on exit. The FPU state of a ring-3 entry goes straight into the running task's own
//! area (the per-CPU pointer `context::switch` keeps); a ring-0 entry's goes directly below
//! its frame. Switching tasks is [`crate::context::switch`] (the frame out to the old task's
//! `TaskContext` and the new one's in; a ring-3 task's FPU area moves as a pointer, a ring-0
//! frame's image is copied, with the ownership of the kernel stack a ring-0 frame runs on),
//! then loading the new task's CR3 and I/O bitmap here.

use x86_64::structures::paging::FrameAllocator;

use crate::paging::{p2v, GlobalFrames, PagingError};

pub use crate::trap::{set_syscall_handler, SYSCALL_FRAME};
pub use crate::user_mem::{spaces_pending, AddressSpace, UserRange, USER_END};
pub const IO_BITMAP_BYTES: usize = 8192;

extern "C" {
    fn arch_syscall_entry();
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

/// Turn on SMEP and SMAP (and XSAVE, see `enable_xsave`, and PCIDs, see `crate::pcid`) on
/// this CPU where CPUID has them. Returns (smep, smap).
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
    crate::cpu::enable_xsave();
    crate::pcid::enable_this_cpu();
    (smep, smap)
}

pub use crate::cpu::{xcr0, FPU_AREA};

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
pub use crate::trap::KSYSCALL_VECTOR;

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
///
/// Safe code may write any general register of the frame this leaves behind (`TrapFrame`'s
/// `DerefMut` allows it for ring-0 frames stopped at this vector): every one is either an
/// output, declared clobbered (rcx, r11, r14, r15), or saved on this task's own stack around
/// the `int` (rbx and rbp, which inline assembly cannot name) — none carries compiled code's
/// state across it.
pub fn ksyscall(nr: u64, a: [u64; 6]) -> SysRet {
    let mut r = SysRet::default();
    // SAFETY: `int 0x80` enters the kernel's syscall handler, which may switch to other tasks
    // and later resume this one exactly here with the result registers set; memory is shared
    // kernel state, hence no `nomem`. rbx and rbp are pushed and popped around it on this
    // stack (no `nostack`: the asm may use the stack; the kernel target has no red zone) and
    // the stack pointer is back where it was at the end.
    unsafe {
        core::arch::asm!("push rbx", "push rbp", "int 0x80", "pop rbp", "pop rbx",
            inlateout("rax") nr => r.rax, inlateout("rdi") a[0] => r.rdi, inlateout("rsi") a[1] => r.rsi,
            inlateout("rdx") a[2] => r.rdx, inlateout("r10") a[3] => r.r10, inlateout("r8") a[4] => r.r8,
            inlateout("r9") a[5] => r.r9, inlateout("r12") 0u64 => r.r12,
            inlateout("r13") 0u64 => r.r13, lateout("rcx") _, lateout("r11") _, lateout("r14") _, lateout("r15") _);
    }
    r
}
