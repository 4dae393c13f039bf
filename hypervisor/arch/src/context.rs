//! Saved task contexts and the context switch, with the ownership that makes them sound.
//!
//! A task that is not running is a [`TaskContext`]: its registers as saved at its last kernel
//! entry, its FPU/SSE/AVX image, and — for a frame that returns to ring 0 — the stack that
//! frame runs on. The rules (docs/microkernel.md, "Saved contexts"):
//!
//! - A ring-0 stack has exactly one owner at a time: the saved context whose frame runs on it,
//!   or the CPU running on it ([`switch`] moves it between the two). Dropping the owner frees
//!   the stack, and with it the only frame that could run there: a task killed with its stack
//!   freed has no frame left that could be loaded.
//! - A context is loaded at most once per save ([`switch`] empties it), so no ring-0 frame is
//!   ever resumed twice (`TaskContext` and `TrapFrame` are neither `Clone` nor `Copy`).
//! - Frames that return to ring 0 come only from [`TaskContext::kernel`] (a function and a
//!   stack taken by value), the idle loop, or saving a ring-0 entry together with the stack
//!   it ran on. Frames that return to ring 3 come from [`TaskContext::user`] (user selectors,
//!   a RIP and RSP below [`USER_END`], RFLAGS 0x202) or from saving a ring-3 entry; loading
//!   one forces the user selectors, IF on and IOPL 0 again.
//! - A ring-3 task's FPU image has one owner at a time too: its context while saved, the CPU
//!   while the task runs. [`switch`] moves the 64-byte-aligned area (a pointer, not the 1 KiB
//!   image) into this CPU's slot and names it to the entry/exit assembly (`gs:[56]`): a ring-3
//!   entry XSAVEs straight into it, the exit XRSTORs from it. Dropping a context whose image
//!   the CPU holds drops only what the context holds (nothing), so the area the assembly writes
//!   stays allocated until [`switch`] takes it off the CPU; migration moves the area with the
//!   context. Ring-0 frames (kernel and vCPU tasks, idle, nested entries) keep the image below
//!   the frame, copied in and out as before.
//!
//! ```compile_fail,E0308
//! #![forbid(unsafe_code)]
//! // a saved context cannot be duplicated
//! fn dup(c: &catenary_arch::context::TaskContext) -> catenary_arch::context::TaskContext { c.clone() }
//! ```
//! ```compile_fail,E0308
//! #![forbid(unsafe_code)]
//! // nor can its frame be reached mutably (and swapped with another context's, away from
//! // the stack it runs on): only its general registers are
//! fn swap(a: &mut catenary_arch::context::TaskContext, b: &mut catenary_arch::context::TaskContext) {
//!     let (fa, fb): (&mut catenary_arch::trap::TrapFrame, &mut catenary_arch::trap::TrapFrame) = (&mut *a, &mut *b);
//!     core::mem::swap(fa, fb);
//! }
//! ```
//! ```compile_fail,E0308
//! #![forbid(unsafe_code)]
//! // a kernel frame takes its stack by value: the caller cannot keep (and drop) it
//! extern "C" fn entry(_: u64) -> ! { loop {} }
//! let stack = catenary_arch::paging::alloc_kernel_stack(8).unwrap();
//! let c = catenary_arch::context::TaskContext::kernel(entry, &stack, 0);
//! ```
//! ```compile_fail,E0308
//! #![forbid(unsafe_code)]
//! // nor an address instead of a function
//! let stack = catenary_arch::paging::alloc_kernel_stack(8).unwrap();
//! let c = catenary_arch::context::TaskContext::kernel(0xffff_8000_dead_0000, stack, 0);
//! ```
//! ```no_run
//! #![forbid(unsafe_code)]
//! extern "C" fn entry(_: u64) -> ! { loop {} }
//! let stack = catenary_arch::paging::alloc_kernel_stack(8).unwrap();
//! let c = catenary_arch::context::TaskContext::kernel(entry, stack, 0);
//! assert!(c.owns_kernel_stack());
//! ```

use alloc::boxed::Box;
use core::mem;

use crate::cpu::FPU_AREA;
use crate::paging::{KernelStack, StaticStack};
use crate::trap::{GpRegs, TrapFrame};
use crate::user_mem::USER_END;

extern "C" {
    fn arch_idle_loop();
}

const KERNEL_CS: u64 = 0x08;
const KERNEL_SS: u64 = 0x10;
const USER_CS: u64 = 0x23;
const USER_SS: u64 = 0x1b;
/// RFLAGS of a fresh frame: IF and the reserved bit 1.
const RFLAGS_FRESH: u64 = 0x202;
const RFLAGS_IF: u64 = 1 << 9;
/// Bits a ring-3 frame never returns with: IOPL (12-13), VM (17), VIF (19), VIP (20).
const RFLAGS_USER_DENY: u64 = (3 << 12) | (1 << 17) | (1 << 19) | (1 << 20);

/// What a ring-0 frame runs on.
#[derive(Debug)]
enum Stack {
    /// A kernel task's stack, owned (dropping it frees the stack; held for that alone).
    Kernel(#[allow(dead_code)] KernelStack),
    /// A stack that lives for good with live state on it (a CPU's boot stack: the code the
    /// boot CPU ran before the scheduler adopted it as a task).
    Static,
    /// The idle loop, which keeps nothing on its stack.
    Idle,
}

/// Per CPU: what the ring-0 code the CPU runs (or returns to from the entry it handles) runs
/// on; `None` while it runs ring 3, or once [`switch`] saved that ring-0 state into a context.
/// Each CPU starts on its boot stack.
static ON_CPU: [spin::Mutex<Option<Stack>>; crate::percpu::MAX_CPUS] =
    [const { spin::Mutex::new(Some(Stack::Static)) }; crate::percpu::MAX_CPUS];

/// An FPU/SSE/AVX save image, aligned as XSAVE/FXSAVE need.
#[repr(C, align(64))]
struct FxArea([u8; FPU_AREA]);

impl core::fmt::Debug for FxArea {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FxArea")
    }
}

fn fresh_fx() -> Box<FxArea> {
    Box::new(FxArea(default_fx()))
}

/// Per CPU: the FPU area of the ring-3 task it runs (`cur`, the one `gs:[56]` names; `None`
/// when it runs ring 0 or no area is set) and one spare (an area a context gave up, kept so
/// a later save need not allocate). Only [`switch`] on that CPU touches it, with interrupts off.
struct CpuFx {
    cur: Option<Box<FxArea>>,
    spare: Option<Box<FxArea>>,
}

static CPU_FX: [spin::Mutex<CpuFx>; crate::percpu::MAX_CPUS] =
    [const { spin::Mutex::new(CpuFx { cur: None, spare: None }) }; crate::percpu::MAX_CPUS];

impl CpuFx {
    /// Keep `b` as the spare, or free it.
    fn recycle(&mut self, b: Option<Box<FxArea>>) {
        if self.spare.is_none() {
            self.spare = b;
        }
    }
}

/// A ring-3 frame refused by [`TaskContext::user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUserFrame {
    /// RIP not below [`USER_END`].
    Rip(u64),
    /// RSP above [`USER_END`].
    Rsp(u64),
}

/// Why [`switch`] did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// The frame is not the live frame of a task's entry on this CPU (a copy, or the frame
    /// of a fault inside a handler).
    NotTaskEntry,
    /// The context to load holds no frame (it is running, or was never saved).
    NotLoadable,
}

/// A task's saved CPU state (see the module docs).
#[derive(Debug)]
pub struct TaskContext {
    frame: TrapFrame,
    /// The FPU image; `None` while a ring-3 frame of this context runs (the CPU holds the area,
    /// see [`CpuFx`]). Always `Some` while `loadable`.
    fx: Option<Box<FxArea>>,
    /// For a ring-0 frame: what it runs on (`None` for ring 3).
    stack: Option<Stack>,
    /// Whether `frame` may be loaded: false once loaded (the CPU has it) until saved again.
    loadable: bool,
}

impl TaskContext {
    /// A context that enters ring 3 at `rip` with stack `rsp` and `rdi` = `arg`: user code and
    /// stack selectors, interrupts on, IOPL 0. Refused if `rip` is not below [`USER_END`] or
    /// `rsp` is above it (kernel half or non-canonical).
    pub fn user(rip: u64, rsp: u64, arg: u64) -> Result<TaskContext, BadUserFrame> {
        if rip >= USER_END {
            return Err(BadUserFrame::Rip(rip));
        }
        if rsp > USER_END {
            return Err(BadUserFrame::Rsp(rsp));
        }
        let mut frame = TrapFrame::zeroed();
        frame.rip = rip;
        frame.rsp = rsp;
        frame.regs.rdi = arg;
        frame.cs = USER_CS;
        frame.ss = USER_SS;
        frame.rflags = RFLAGS_FRESH;
        Ok(TaskContext { frame, fx: Some(fresh_fx()), stack: None, loadable: true })
    }

    /// A context that runs kernel function `entry(arg)` on `stack`, interrupts on. It takes a
    /// function (not an address) and the stack by value (not a pointer, not a borrow): the
    /// frame cannot send ring 0 to arbitrary code, and the stack lives exactly as long as
    /// something may still run on it (this context, then the CPU that loads it).
    pub fn kernel(entry: extern "C" fn(u64) -> !, stack: KernelStack, arg: u64) -> TaskContext {
        // The stack top is 16-aligned; entering a function needs rsp ≡ 8 (mod 16).
        let frame = ring0_frame(entry as *const () as u64, stack.top() - 8, arg);
        TaskContext { frame, fx: Some(fresh_fx()), stack: Some(Stack::Kernel(stack)), loadable: true }
    }

    /// The context of the code running now (the boot CPU's boot code, adopted as a task): no
    /// frame until [`switch`] saves one into it.
    pub fn running() -> TaskContext {
        TaskContext { frame: TrapFrame::zeroed(), fx: Some(fresh_fx()), stack: None, loadable: false }
    }

    /// The saved frame (read-only: see [`TrapFrame`]). Stale while the context is running.
    pub fn frame(&self) -> &TrapFrame {
        &self.frame
    }

    /// Whether [`switch`] can load this context (it holds a saved frame).
    pub fn is_loadable(&self) -> bool {
        self.loadable
    }

    /// Whether it holds a kernel task's stack (a saved ring-0 frame of a kernel task, or a
    /// kernel context not started yet).
    pub fn owns_kernel_stack(&self) -> bool {
        matches!(self.stack, Some(Stack::Kernel(_)))
    }

    /// [`TrapFrame::set_user_rip`] on the saved frame.
    pub fn set_user_rip(&mut self, rip: u64) -> bool {
        self.frame.set_user_rip(rip)
    }
}

impl core::ops::Deref for TaskContext {
    type Target = GpRegs;
    fn deref(&self) -> &GpRegs {
        &self.frame
    }
}

impl core::ops::DerefMut for TaskContext {
    /// The saved general registers; panics for a saved ring-0 frame not stopped in a kernel
    /// system call (see [`TrapFrame`]). While the context runs, its frame is stale (the next
    /// save replaces all of it), so writing it is allowed and does nothing.
    fn deref_mut(&mut self) -> &mut GpRegs {
        if !self.loadable {
            return &mut self.frame.regs;
        }
        &mut self.frame
    }
}

fn ring0_frame(rip: u64, rsp: u64, arg: u64) -> TrapFrame {
    let mut f = TrapFrame::zeroed();
    f.rip = rip;
    f.rsp = rsp;
    f.regs.rdi = arg;
    f.cs = KERNEL_CS;
    f.ss = KERNEL_SS;
    f.rflags = RFLAGS_FRESH;
    f
}

/// A save image with default FPU/SSE state (FCW 0x37f, MXCSR 0x1f80; XSAVE header zero: the
/// other components start in their initial state).
pub fn default_fx() -> [u8; FPU_AREA] {
    let mut fx = [0u8; FPU_AREA];
    fx[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    fx
}

/// The FPU/SSE/AVX save area right below `f` (the entry stub fills it for entries that do not
/// save into the task's own area, and restores from it for frames that are not ring 3 with an
/// area set). `f` must be the frame of the kernel entry this CPU is handling (the one its
/// handler was given): any other `TrapFrame` has no save area below it, and this panics
/// instead of handing out memory that is not one.
pub(crate) fn fx_area(f: &mut TrapFrame) -> &mut [u8; FPU_AREA] {
    assert!(crate::trap::is_live_frame(f), "fx_area: not the live trap frame of this CPU");
    let p = (f as *mut TrapFrame as u64 & !0x3f) - FPU_AREA as u64;
    // SAFETY: `f` is this CPU's live entry frame (checked above), and every entry stub
    // (trap_common, arch_syscall_entry) aligns that frame's address to 64 and places its
    // FPU_AREA-byte save area directly below it, for the handler's lifetime; the returned
    // borrow is tied to the `&mut` of the frame, so there is one user at a time.
    unsafe { &mut *(p as *mut [u8; FPU_AREA]) }
}

/// What [`switch`] loads.
pub enum Next<'a> {
    /// A task's saved context (emptied: the CPU now owns its frame and stack).
    Task(&'a mut TaskContext),
    /// This CPU's idle loop (`sti; hlt` forever; it keeps nothing on `stack`).
    Idle(StaticStack),
}

/// The context switch on `live`, the frame of the task entry this CPU is handling: save it
/// into `prev` (with the stack a ring-0 frame runs on; `None`: the interrupted code is
/// abandoned and its stack, if a kernel task's, freed), then make `next` the frame the CPU
/// returns to. Nothing changes on an error.
pub fn switch(live: &mut TrapFrame, prev: Option<&mut TaskContext>, next: Next<'_>) -> Result<(), SwitchError> {
    if !crate::trap::is_task_entry_frame(live) {
        return Err(SwitchError::NotTaskEntry);
    }
    if let Next::Task(n) = &next {
        if !n.loadable {
            return Err(SwitchError::NotLoadable);
        }
    }
    let c = crate::percpu::cpu_index();
    // What the interrupted code runs on (ring 0), taken from the CPU: it goes to `prev`.
    let was = ON_CPU[c].lock().take();
    let mut fx = CPU_FX[c].lock();
    // Where the live frame's FPU image is: the rule the entry/exit assembly follows (a ring-3
    // frame with an area set: that area; otherwise below the frame).
    let in_cpu = live.is_user() && fx.cur.is_some();
    let abandoned = match prev {
        Some(p) => {
            p.frame = live.snapshot();
            if in_cpu {
                // The image is in the CPU's area: the area itself goes to `prev`.
                let old = mem::replace(&mut p.fx, fx.cur.take());
                fx.recycle(old);
            } else {
                let spare = &mut fx.spare;
                let dst = p.fx.get_or_insert_with(|| spare.take().unwrap_or_else(fresh_fx));
                dst.0.copy_from_slice(fx_area(live));
            }
            if live.is_user() {
                p.stack = None;
                p.loadable = true;
                was // nothing should be there; dropped below if it was
            } else {
                // A ring-0 frame is loadable only with the stack it runs on.
                p.loadable = was.is_some();
                p.stack = was;
                None
            }
        }
        None => was,
    };
    // The area the CPU held and no context took (`prev` was `None`, or the next frame keeps
    // its image below itself): freed or kept as the spare only after `gs:[56]` moved off it.
    let off_cpu;
    let now = match next {
        Next::Task(n) => {
            let f = &n.frame;
            let user = f.is_user();
            live.regs = f.regs;
            live.vector = f.vector;
            live.error_code = f.error_code;
            live.rip = f.rip;
            live.rsp = f.rsp;
            if user {
                // Only the user selectors, IF on, IOPL 0 (a saved ring-3 frame has these
                // already; forced here so no path can return to ring 3 with more).
                live.cs = USER_CS;
                live.ss = USER_SS;
                live.rflags = (f.rflags & !RFLAGS_USER_DENY) | RFLAGS_IF | 2;
                // Its area goes to the CPU (always `Some` in a loadable context).
                let area = n.fx.take().unwrap_or_else(fresh_fx);
                off_cpu = fx.cur.replace(area);
            } else {
                live.cs = f.cs;
                live.ss = f.ss;
                live.rflags = f.rflags;
                match &n.fx {
                    Some(b) => fx_area(live).copy_from_slice(&b.0),
                    None => *fx_area(live) = default_fx(),
                }
                off_cpu = fx.cur.take();
            }
            n.loadable = false;
            n.stack.take()
        }
        Next::Idle(stack) => {
            let f = ring0_frame(arch_idle_loop as *const () as u64, stack.top() - 8, 0);
            live.regs = f.regs;
            live.vector = 0; // not a system call: its registers are not the kernel's to set
            live.error_code = 0;
            live.rip = f.rip;
            live.rsp = f.rsp;
            live.cs = f.cs;
            live.ss = f.ss;
            live.rflags = f.rflags;
            if in_cpu {
                // The entry saved nothing below the frame, and the exit restores from there.
                *fx_area(live) = default_fx();
            }
            off_cpu = fx.cur.take();
            Some(Stack::Idle)
        }
    };
    let area = fx.cur.as_ref().map_or(0, |b| &b.0 as *const [u8; FPU_AREA] as u64);
    assert!(area.is_multiple_of(64), "FPU area {area:#x} not 64-byte aligned");
    // SAFETY: per-CPU data exists (this runs in a task entry's handler on this CPU, which
    // `is_task_entry_frame` checked), and interrupts are off there (every gate is an interrupt
    // gate; `syscall` clears IF). `area` is 0 or the heap allocation of the `Box<FxArea>` now
    // in this CPU's `cur` slot: 64-byte aligned (type alignment, checked above), FPU_AREA
    // bytes, a valid image (from `default_fx`, or saved by XSAVE/FXSAVE); it stays allocated
    // in that slot, which only this function changes, and calls this again whenever it does
    // (always, before the area it named is recycled or freed: `off_cpu` below). No context
    // holds that box meanwhile, so no Rust code reads or writes the area while it is named.
    unsafe { crate::percpu::set_fpu_area(area) };
    fx.recycle(off_cpu);
    drop(fx);
    *ON_CPU[c].lock() = now;
    // Freed only now: this handler runs on its IST stack, and the CPU returns to `live`.
    drop(abandoned);
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// A `TrapFrame` that is not the live entry frame (a copy kept in a task's context) has no
    /// FPU save area below it: `fx_area` refuses it instead of handing out the memory below.
    #[test]
    #[should_panic(expected = "not the live trap frame")]
    fn fx_area_refuses_a_copied_frame() {
        let mut copy = alloc::boxed::Box::new(TrapFrame::zeroed());
        let _ = fx_area(&mut copy);
    }

    /// A user context cannot start in the kernel half (or beyond the canonical user half).
    #[test]
    fn user_frame_refuses_kernel_addresses() {
        assert_eq!(TaskContext::user(0xffff_8000_0010_0000, 0x7fff_0000, 0).err(), Some(BadUserFrame::Rip(0xffff_8000_0010_0000)));
        assert_eq!(TaskContext::user(USER_END, 0x7fff_0000, 0).err(), Some(BadUserFrame::Rip(USER_END)));
        assert_eq!(TaskContext::user(0x40_0000, 0xffff_8000_0010_0000, 0).err(), Some(BadUserFrame::Rsp(0xffff_8000_0010_0000)));
        assert_eq!(TaskContext::user(0x40_0000, USER_END + 8, 0).err(), Some(BadUserFrame::Rsp(USER_END + 8)));
        let c = TaskContext::user(0x40_0000, USER_END, 7).expect("a user frame");
        let f = c.frame();
        assert!(f.is_user() && f.cs() == USER_CS && f.ss() == USER_SS && f.rflags() == RFLAGS_FRESH && f.rdi == 7);
        assert!(c.is_loadable() && !c.owns_kernel_stack());
    }

    /// The registers of a user frame are the kernel's to set; a ring-0 frame stopped by an
    /// interrupt in kernel code is not (its registers are compiled code's).
    #[test]
    fn ring0_registers_are_not_writable_outside_a_kernel_syscall() {
        let mut u = TaskContext::user(0x40_0000, 0x7fff_0000, 0).unwrap();
        u.rax = 5;
        assert_eq!(u.rax, 5);
        let mut f = ring0_frame(0xffff_ffff_8000_0000, 0xffff_c000_0000_1000, 0);
        f.vector = crate::trap::KSYSCALL_VECTOR as u64;
        f.rax = 1; // stopped in `int 0x80`: its result registers
        f.vector = 0x20;
        assert!(!f.regs_writable());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.rbx = 2));
        assert!(r.is_err(), "a preempted ring-0 frame's rbx was written");
        assert_eq!(f.rbx, 0);
    }

    /// A running context (never saved) cannot be loaded; its stale registers may be written.
    #[test]
    fn running_context_is_not_loadable() {
        let mut c = TaskContext::running();
        assert!(!c.is_loadable());
        c.rax = 1;
    }
}
