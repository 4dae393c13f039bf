//! Traps: the IDT (all 256 gates, each on an IST stack), the `TrapFrame` the entry stubs build,
//! dispatch to registered handlers, fault recovery for probes, and the full register dump that
//! every unhandled exception prints before the CPU stops.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

use crate::gdt;

/// The general-purpose registers of a [`TrapFrame`], in the entry stub's order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
}

/// Register state saved by the trap entry stub (`asm/trap.s`), lowest address first.
///
/// Ownership rules (docs/microkernel.md, "Saved contexts"):
/// - Safe code never owns a `TrapFrame`: it gets `&mut` to the live frame of the kernel entry
///   it handles, and keeps tasks' states as `context::TaskContext`s. `TrapFrame` is not
///   `Clone`, `Copy` or `Default`, so a frame cannot be duplicated (a second copy of a ring-0
///   frame would resume a kernel stack twice, or after the stack was freed) or made up.
/// - The fields `iretq` restores (RIP, CS, RFLAGS, RSP, SS) and the vector are not writable
///   outside this crate: safe code cannot send ring 0 to an arbitrary address or stack, nor
///   give ring 3 a ring-0 selector or IOPL.
/// - The general registers are read through `Deref`; writing them (`DerefMut`) is for frames
///   whose registers are the caller's to set: ring 3, and ring 0 stopped in a kernel system
///   call (`int 0x80`, whose stub treats every register as clobbered). Writing a ring-0 frame
///   stopped anywhere else (an interrupt in the middle of kernel code) panics: it would change
///   registers compiled code relies on.
///
/// ```compile_fail,E0616
/// #![forbid(unsafe_code)]
/// fn hijack(f: &mut catenary_arch::trap::TrapFrame) { f.cs = 0x08; f.rip = 0xffff_8000_dead_0000; }
/// ```
/// ```compile_fail,E0308
/// #![forbid(unsafe_code)]
/// // no copies of a frame (a ring-0 frame copied and restored twice runs a stack twice)
/// fn dup(f: &catenary_arch::trap::TrapFrame) -> catenary_arch::trap::TrapFrame { f.clone() }
/// ```
/// ```compile_fail,E0277
/// #![forbid(unsafe_code)]
/// fn forge(f: &mut catenary_arch::trap::TrapFrame) { *f = Default::default(); }
/// ```
/// ```
/// #![forbid(unsafe_code)]
/// fn syscall_result(f: &mut catenary_arch::trap::TrapFrame) { if f.is_user() { f.rax = 0; } let _ = (f.rip(), f.rdi); }
/// ```
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub(crate) regs: GpRegs,
    pub(crate) vector: u64,
    pub(crate) error_code: u64,
    pub(crate) rip: u64,
    pub(crate) cs: u64,
    pub(crate) rflags: u64,
    pub(crate) rsp: u64,
    pub(crate) ss: u64,
}

impl core::ops::Deref for TrapFrame {
    type Target = GpRegs;
    fn deref(&self) -> &GpRegs {
        &self.regs
    }
}

impl core::ops::DerefMut for TrapFrame {
    /// Panics for a ring-0 frame not stopped in a kernel system call (see the type's docs).
    fn deref_mut(&mut self) -> &mut GpRegs {
        assert!(self.regs_writable(), "TrapFrame: register write to a ring-0 frame stopped at vector {:#x}", self.vector);
        &mut self.regs
    }
}

impl TrapFrame {
    /// An all-zero frame (selector 0: restoring it faults). For arch's own constructors.
    pub(crate) const fn zeroed() -> TrapFrame {
        TrapFrame {
            regs: GpRegs { r15: 0, r14: 0, r13: 0, r12: 0, r11: 0, r10: 0, r9: 0, r8: 0, rbp: 0, rdi: 0, rsi: 0, rdx: 0, rcx: 0, rbx: 0, rax: 0 },
            vector: 0,
            error_code: 0,
            rip: 0,
            cs: 0,
            rflags: 0,
            rsp: 0,
            ss: 0,
        }
    }
    /// A copy, for arch's own use (a dump of the frame before recovery, saving a context).
    pub(crate) fn snapshot(&self) -> TrapFrame {
        TrapFrame { regs: self.regs, vector: self.vector, error_code: self.error_code, rip: self.rip, cs: self.cs, rflags: self.rflags, rsp: self.rsp, ss: self.ss }
    }
    /// Whether safe code may write the general registers (see the type's docs).
    pub fn regs_writable(&self) -> bool {
        self.is_user() || self.vector == KSYSCALL_VECTOR as u64
    }
    pub fn vector(&self) -> u64 {
        self.vector
    }
    pub fn error_code(&self) -> u64 {
        self.error_code
    }
    pub fn rip(&self) -> u64 {
        self.rip
    }
    pub fn cs(&self) -> u64 {
        self.cs
    }
    pub fn rflags(&self) -> u64 {
        self.rflags
    }
    pub fn rsp(&self) -> u64 {
        self.rsp
    }
    pub fn ss(&self) -> u64 {
        self.ss
    }
    /// Whether the frame returns to ring 3.
    pub fn is_user(&self) -> bool {
        self.cs & 3 == 3
    }
    /// Point a ring-3 frame's RIP at `rip` (any value: a bad one faults in ring 3, and a
    /// non-canonical one is caught by the return check). False, and nothing changed, for a
    /// ring-0 frame.
    pub fn set_user_rip(&mut self, rip: u64) -> bool {
        if !self.is_user() {
            return false;
        }
        self.rip = rip;
        true
    }
}

/// Vector of the kernel-mode system call gate (kernel tasks use the same ABI as ring 3; see
/// `uspace::ksyscall`).
pub const KSYSCALL_VECTOR: u8 = 0x80;

pub const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved (15)",
    "#MF x87 floating point",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating point",
    "#VE virtualization",
    "#CP control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved (31)",
];

pub fn vector_name(v: u64) -> &'static str {
    EXCEPTION_NAMES.get(v as usize).copied().unwrap_or("interrupt")
}

/// A device/timer interrupt handler. Runs with interrupts disabled on the IRQ IST stack.
pub type IrqHandler = fn(&mut TrapFrame);

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// Called after an IRQ handler for vectors >= 32 (the LAPIC EOI), set by `apic`.
static EOI_HOOK: AtomicUsize = AtomicUsize::new(0);
/// Optional kernel hook for exceptions (e.g. to kill a faulting user task). Returns true if
/// it handled the exception and the frame may be resumed.
pub type ExceptionHook = fn(&mut TrapFrame) -> bool;
static EXCEPTION_HOOK: AtomicUsize = AtomicUsize::new(0);

pub fn register_irq(vector: u8, handler: IrqHandler) {
    assert!(vector >= 32, "vectors below 32 are exceptions");
    HANDLERS[vector as usize].store(handler as usize, Ordering::Release);
}

pub fn set_eoi_hook(f: fn()) {
    EOI_HOOK.store(f as usize, Ordering::Release);
}

pub fn set_exception_hook(f: ExceptionHook) {
    EXCEPTION_HOOK.store(f as usize, Ordering::Release);
}

/// The local APIC's spurious-interrupt vector (no EOI for it).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// `TrapFrame::vector` of a frame built by the `syscall` entry (`asm/trap.s`).
pub const SYSCALL_FRAME: u64 = 0x100;
static SYSCALL_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// The kernel's handler for `syscall` from ring 3.
pub fn set_syscall_handler(f: fn(&mut TrapFrame)) {
    SYSCALL_HANDLER.store(f as usize, Ordering::Release);
}

/// A `syscall` from ring 3 (the shared entry in `asm/trap.s`, vector [`SYSCALL_FRAME`]).
#[cfg(feature = "kernel")]
fn syscall_dispatch(f: &mut TrapFrame) {
    let h = SYSCALL_HANDLER.load(Ordering::Acquire);
    if h == 0 {
        f.regs.rax = u64::MAX;
        return;
    }
    // SAFETY: only `set_syscall_handler` stores into SYSCALL_HANDLER, always a valid fn.
    let h: fn(&mut TrapFrame) = unsafe { core::mem::transmute(h) };
    h(f)
}

static mut IDT: InterruptDescriptorTable = InterruptDescriptorTable::new();

extern "C" {
    static arch_trap_stubs: u8;
    #[cfg_attr(not(feature = "kernel"), allow(dead_code))]
    static arch_probe_read_insn: u8;
    #[cfg_attr(not(feature = "kernel"), allow(dead_code))]
    static arch_probe_write_insn: u8;
    #[cfg_attr(not(feature = "kernel"), allow(dead_code))]
    static arch_probe_resume: u8;
    fn arch_probe_read(addr: u64) -> ProbeRet;
    fn arch_probe_write(addr: u64, val: u64) -> ProbeRet;
    fn arch_probe_exec(addr: u64) -> ProbeRet;
}

#[repr(C)]
struct ProbeRet {
    value: u64,
    faulted: u64,
}

/// Fill every IDT gate with its stub and IST index, then load the IDT on this CPU. The gates
/// are filled once (the boot CPU's first call); later calls only load the IDT.
pub fn init() {
    static FILLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if FILLED.swap(true, Ordering::SeqCst) {
        return load();
    }
    let stubs = core::ptr::addr_of!(arch_trap_stubs) as u64;
    // SAFETY: the first call (checked above), on the boot CPU before interrupts are on and
    // before any other CPU runs: no other reference to the IDT exists yet.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for v in 0..256usize {
        let addr = VirtAddr::new(stubs + 16 * v as u64);
        let ist = match v {
            2 => gdt::IST_NMI,
            8 => gdt::IST_DOUBLE_FAULT,
            18 => gdt::IST_MACHINE_CHECK,
            0..=31 => gdt::IST_EXCEPTION,
            _ => gdt::IST_IRQ,
        };
        // SAFETY: `addr` is the entry stub for vector v, and the IST index refers to a stack
        // installed in this CPU's TSS by `gdt::init_*`.
        unsafe {
            let opts = match v {
                0..=31 => idt_entry_raw(idt, v).set_handler_addr(addr),
                _ => idt[v as u8].set_handler_addr(addr),
            };
            opts.set_stack_index(ist - 1);
            if v == 3 || v == 4 {
                opts.set_privilege_level(x86_64::PrivilegeLevel::Ring3);
            }
        }
    }
    load();
}

/// Load the (shared) IDT on the current CPU.
pub fn load() {
    // SAFETY: the IDT is a static that lives forever and is fully initialised by `init`.
    unsafe { (*core::ptr::addr_of!(IDT)).load() }
}

fn idt_entry_raw(
    idt: &mut InterruptDescriptorTable,
    v: usize,
) -> &mut x86_64::structures::idt::Entry<x86_64::structures::idt::HandlerFunc> {
    // The x86_64 crate types exception entries by handler signature; we install raw stub
    // addresses for all of them, so view each exception slot as a plain entry.
    // SAFETY: all IDT entries have the same layout regardless of the handler type parameter.
    unsafe {
        let base = idt as *mut InterruptDescriptorTable
            as *mut x86_64::structures::idt::Entry<x86_64::structures::idt::HandlerFunc>;
        &mut *base.add(v)
    }
}

static PROBE_EXEC_TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
static LAST_PROBE_FAULT: AtomicU64 = AtomicU64::new(0);
static LAST_PROBE_ERR: AtomicU64 = AtomicU64::new(0);
static PRINT_DUMP_ON_PROBE: AtomicU64 = AtomicU64::new(1);

/// A fault caught by a probe: faulting address (CR2) and the #PF error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault {
    pub addr: u64,
    pub error_code: u64,
}

fn last_probe_fault() -> ProbeFault {
    ProbeFault { addr: LAST_PROBE_FAULT.load(Ordering::Relaxed), error_code: LAST_PROBE_ERR.load(Ordering::Relaxed) }
}

/// Read a byte at `addr`, returning the page fault instead of dying if it is not readable.
pub fn probe_read(addr: u64) -> Result<u8, ProbeFault> {
    // SAFETY: the read happens at a known instruction whose faults the trap handler recovers.
    let r = unsafe { arch_probe_read(addr) };
    if r.faulted != 0 { Err(last_probe_fault()) } else { Ok(r.value as u8) }
}

/// Write a byte at `addr`, returning the page fault if it is not writable.
///
/// # Safety
/// If the write succeeds it modifies memory at `addr`: the caller owns that memory.
pub unsafe fn probe_write(addr: u64, val: u8) -> Result<(), ProbeFault> {
    // SAFETY: forwarded to the caller; faults are recovered.
    let r = unsafe { arch_probe_write(addr, val as u64) };
    if r.faulted != 0 { Err(last_probe_fault()) } else { Ok(()) }
}

/// Call `addr` (which must hold a `ret` if it is executable), returning the fault if it is
/// not executable (e.g. NX).
///
/// # Safety
/// If `addr` is executable, whatever code is there runs.
pub unsafe fn probe_exec(addr: u64) -> Result<(), ProbeFault> {
    PROBE_EXEC_TARGET.store(addr, Ordering::SeqCst);
    // SAFETY: forwarded to the caller; an instruction-fetch fault at `addr` is recovered.
    let r = unsafe { arch_probe_exec(addr) };
    PROBE_EXEC_TARGET.store(u64::MAX, Ordering::SeqCst);
    if r.faulted != 0 { Err(last_probe_fault()) } else { Ok(()) }
}

/// Try to execute a byte of data memory (which must hold `ret`): faults if NX is enforced.
pub fn probe_exec_data(addr: u64) -> Result<(), ProbeFault> {
    match crate::paging::translate(addr) {
        Some((_, _, true)) => Err(ProbeFault { addr, error_code: 0 }), // executable: refuse to run it
        // SAFETY: the page is mapped non-executable, so the call faults at its first fetch and is
        // recovered; nothing runs.
        _ => unsafe { probe_exec(addr) },
    }
}

/// Try to write a read-only kernel page: faults if write protection is enforced.
pub fn probe_write_readonly(addr: u64) -> Result<(), ProbeFault> {
    match crate::paging::translate(addr) {
        Some((_, false, _)) => {
            let old = probe_read(addr)?;
            // SAFETY: the page is mapped read-only, so the write faults and is recovered; if
            // it did not, it writes back the byte that was there.
            unsafe { probe_write(addr, old) }
        }
        _ => Err(ProbeFault { addr, error_code: 0 }),
    }
}

/// Whether recovered probe faults print the register dump (tests want to see it).
pub fn set_probe_dump(on: bool) {
    PRINT_DUMP_ON_PROBE.store(on as u64, Ordering::Relaxed);
}

#[cfg_attr(not(feature = "kernel"), allow(dead_code))] // (used by the kernel build only)
fn try_recover_probe(f: &mut TrapFrame) -> bool {
    if f.vector != 14 && f.vector != 13 {
        return false;
    }
    let (rd, wr, resume) = (
        core::ptr::addr_of!(arch_probe_read_insn) as u64,
        core::ptr::addr_of!(arch_probe_write_insn) as u64,
        core::ptr::addr_of!(arch_probe_resume) as u64,
    );
    let exec_target = PROBE_EXEC_TARGET.load(Ordering::SeqCst);
    let recovered = if f.rip == rd || f.rip == wr {
        f.rip = resume;
        true
    } else if f.rip == exec_target {
        // The faulting fetch is at the call target: pop the return address `call` pushed.
        f.rip = resume;
        f.rsp += 8;
        true
    } else {
        false
    };
    if recovered {
        LAST_PROBE_FAULT.store(crate::cpu::read_cr2(), Ordering::Relaxed);
        LAST_PROBE_ERR.store(f.error_code, Ordering::Relaxed);
        f.regs.rdx = 1;
    }
    recovered
}

/// Print the full register dump. Allocates nothing; once `serial::enter_panic_mode` has run
/// (the fatal path) it takes no lock either, so it works from any context.
pub fn print_dump(f: &TrapFrame, note: &str) {
    use crate::println;
    println!("");
    println!("!!! CPU EXCEPTION {} ({}) {} [APIC id {}]", f.vector, vector_name(f.vector), note, crate::cpu::cpuid(1, 0).1 >> 24);
    print_registers(f);
}

/// The register dump of code an interrupt stopped (not a fault: the kernel's watchdog), under
/// `!!! {what}`.
pub fn print_interrupted(f: &TrapFrame, what: &str) {
    use crate::println;
    println!("");
    println!("!!! {} [APIC id {}]", what, crate::cpu::cpuid(1, 0).1 >> 24);
    print_registers(f);
}

fn print_registers(f: &TrapFrame) {
    use crate::println;
    println!("    error code {:#x}{}", f.error_code, PfDecode(f));
    // one line per print: a print goes out in 256-byte pieces, and another CPU's line may
    // land between two of them
    for line in 0..REGISTER_LINES {
        println!("{}", RegisterLine(f, line));
    }
    println!(
        "    CR0 {:#018x}  CR2 {:#018x}  CR3 {:#018x}  CR4 {:#018x}",
        crate::cpu::read_cr0(),
        crate::cpu::read_cr2(),
        crate::cpu::read_cr3(),
        crate::cpu::read_cr4()
    );
}

/// A frame's instruction pointer, stack and general registers as dump lines (no control
/// registers: those are the CPU's, not necessarily the frame's owner's). Shared by the fault
/// dump and the kernel's dump of a task killed while not running.
pub struct GeneralRegisters<'a>(&'a TrapFrame);

impl TrapFrame {
    /// See [`GeneralRegisters`]. Formatting it allocates nothing.
    pub fn general_registers(&self) -> GeneralRegisters<'_> {
        GeneralRegisters(self)
    }
}

impl core::fmt::Display for GeneralRegisters<'_> {
    fn fmt(&self, fm: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for line in 0..REGISTER_LINES {
            if line > 0 {
                writeln!(fm)?;
            }
            write!(fm, "{}", RegisterLine(self.0, line))?;
        }
        Ok(())
    }
}

/// How many lines [`GeneralRegisters`] has.
const REGISTER_LINES: usize = 6;

/// Line `.1` of [`GeneralRegisters`] (no newline).
struct RegisterLine<'a>(&'a TrapFrame, usize);

impl core::fmt::Display for RegisterLine<'_> {
    fn fmt(&self, fm: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let f = self.0;
        match self.1 {
            0 => write!(fm, "    RIP {:#018x}  CS {:#06x}  RFLAGS {:#018x}", f.rip, f.cs, f.rflags),
            1 => write!(fm, "    RSP {:#018x}  SS {:#06x}", f.rsp, f.ss),
            2 => write!(fm, "    RAX {:#018x}  RBX {:#018x}  RCX {:#018x}  RDX {:#018x}", f.rax, f.rbx, f.rcx, f.rdx),
            3 => write!(fm, "    RSI {:#018x}  RDI {:#018x}  RBP {:#018x}  R8  {:#018x}", f.rsi, f.rdi, f.rbp, f.r8),
            4 => write!(fm, "    R9  {:#018x}  R10 {:#018x}  R11 {:#018x}  R12 {:#018x}", f.r9, f.r10, f.r11, f.r12),
            _ => write!(fm, "    R13 {:#018x}  R14 {:#018x}  R15 {:#018x}", f.r13, f.r14, f.r15),
        }
    }
}

struct PfBits(u64);
impl core::fmt::Display for PfBits {
    fn fmt(&self, fm: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let e = self.0;
        write!(
            fm,
            " ({} {} {}{}{})",
            if e & 1 != 0 { "protection" } else { "not-present" },
            if e & 2 != 0 { "write" } else { "read" },
            if e & 4 != 0 { "user" } else { "supervisor" },
            if e & 8 != 0 { " reserved-bit" } else { "" },
            if e & 16 != 0 { " instruction-fetch" } else { "" }
        )
    }
}

/// The #PF error-code bits for a #PF frame, nothing otherwise (no allocation: the dump may run
/// while the heap lock is held).
struct PfDecode<'a>(&'a TrapFrame);
impl core::fmt::Display for PfDecode<'_> {
    fn fmt(&self, fm: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0.vector == 14 {
            PfBits(self.0.error_code).fmt(fm)
        } else {
            Ok(())
        }
    }
}

/// The end of the line for this CPU: switch the console to raw, lock-free output, print the
/// dump and stop. Used for unhandled exceptions and, always, for NMI, #DF and #MC.
#[cfg_attr(not(feature = "kernel"), allow(dead_code))] // (used by the kernel build only)
fn fatal(f: &TrapFrame) -> ! {
    crate::serial::enter_panic_mode();
    print_dump(f, "- stopping this CPU");
    crate::cpu::halt_forever();
}

/// Rust side of the trap entry: called by `trap_common` with the saved frame.
#[cfg(feature = "kernel")]
#[no_mangle]
extern "C" fn arch_trap_dispatch(f: &mut TrapFrame) {
    let v = f.vector;
    if read_rflags() & RFLAGS_AC != 0 {
        AC_ENTRIES.fetch_add(1, Ordering::Relaxed); // the entry stub failed to clear AC
    }
    // NMI, double fault and machine check run on their own IST stacks and may have interrupted
    // anything, including a holder of the console, heap or kernel lock, or the two
    // instructions of the syscall path that run in ring 0 with the user's GS: no probe
    // recovery, no kernel hook (it takes the kernel lock), nothing that reads per-CPU data.
    match v {
        // An NMI is not the interrupted code's doing (watchdog, IPI, a parity report):
        // count it and resume, whatever ring it came from.
        2 => {
            NMI_COUNT.fetch_add(1, Ordering::Relaxed);
            if f.cs & 3 == 3 {
                NMI_RING3.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        // A machine check the CPU says can resume (MCG_STATUS.RIPV): clear MCIP and resume;
        // the task in ring 3 did nothing wrong. Otherwise this CPU cannot go on.
        18 if machine_check_recoverable() => {
            MCE_COUNT.fetch_add(1, Ordering::Relaxed);
            return;
        }
        8 | 18 => fatal(f),
        _ => {}
    }
    // The frame handlers get is this CPU's live frame until they return (`is_live_frame`);
    // a nested entry (a probe's fault) saves and restores the outer one.
    let cpu = crate::percpu::cpu_index();
    crate::stages::mark(if f.cs & 3 == 3 { crate::stages::USER } else { crate::stages::KERNEL_OTHER });
    if v == SYSCALL_FRAME {
        crate::stages::count_syscall(f.regs.rax);
    }
    let outer = LIVE_FRAME[cpu].swap(f as *mut TrapFrame as u64, Ordering::SeqCst);
    let outer_nested = NESTED[cpu].swap(outer != 0, Ordering::SeqCst);
    dispatch(f, v);
    crate::stages::mark(crate::stages::TAIL);
    NESTED[cpu].store(outer_nested, Ordering::SeqCst);
    LIVE_FRAME[cpu].store(outer, Ordering::SeqCst);
}

/// Per CPU: whether the entry being handled interrupted another entry's handler (a probe's
/// fault): its frame then points into that handler's IST stack, not at a task.
static NESTED: [core::sync::atomic::AtomicBool; crate::percpu::MAX_CPUS] =
    [const { core::sync::atomic::AtomicBool::new(false) }; crate::percpu::MAX_CPUS];

/// Whether `f` is this CPU's live frame of an entry from a task (ring 3, or ring 0 on the
/// stack the CPU ran on), not of a fault inside a handler: the only frame a context switch
/// may save or replace.
pub(crate) fn is_task_entry_frame(f: &TrapFrame) -> bool {
    is_live_frame(f) && NESTED.get(crate::percpu::cpu_index()).is_some_and(|n| !n.load(Ordering::SeqCst))
}

/// The frame of the kernel entry each CPU is handling (0: none), set by `arch_trap_dispatch`.
static LIVE_FRAME: [AtomicU64; crate::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::percpu::MAX_CPUS];

/// Whether `f` is the frame of the kernel entry this CPU is handling (the one the entry stub
/// built, with its FPU save area below it), not a copy of one.
pub fn is_live_frame(f: &TrapFrame) -> bool {
    LIVE_FRAME.get(crate::percpu::cpu_index()).is_some_and(|l| l.load(Ordering::SeqCst) == f as *const TrapFrame as u64)
}

#[cfg(feature = "kernel")]
fn dispatch(f: &mut TrapFrame, v: u64) {
    if v == SYSCALL_FRAME {
        syscall_dispatch(f);
        check_user_return(f);
        return;
    }
    if v < 32 {
        let before = f.snapshot();
        if try_recover_probe(f) {
            if PRINT_DUMP_ON_PROBE.load(Ordering::Relaxed) != 0 {
                print_dump(&before, "(caught by probe, recovered)");
            }
            return;
        }
        let hook = EXCEPTION_HOOK.load(Ordering::Acquire);
        if hook != 0 {
            // SAFETY: only `set_exception_hook` stores into EXCEPTION_HOOK, always a valid fn.
            let hook: ExceptionHook = unsafe { core::mem::transmute(hook) };
            if hook(f) {
                check_user_return(f);
                return;
            }
        }
        fatal(f);
    }
    let h = HANDLERS[v as usize].load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `register_irq` stores into HANDLERS, always a valid IrqHandler.
        let h: IrqHandler = unsafe { core::mem::transmute(h) };
        h(f);
    }
    // No EOI for the spurious vector or for software interrupts (`int 0x80..0x8f`).
    if v != SPURIOUS_VECTOR as u64 && !(0x80..0x90).contains(&v) {
        let eoi = EOI_HOOK.load(Ordering::Acquire);
        if eoi != 0 {
            // SAFETY: only `set_eoi_hook` stores into EOI_HOOK, always a valid fn().
            let eoi: fn() = unsafe { core::mem::transmute(eoi) };
            eoi();
        }
    }
    check_user_return(f);
}

#[cfg(feature = "kernel")]
const RFLAGS_AC: u64 = 1 << 18;
static AC_ENTRIES: AtomicU64 = AtomicU64::new(0);
static NMI_COUNT: AtomicU64 = AtomicU64::new(0);
static NMI_RING3: AtomicU64 = AtomicU64::new(0);
static MCE_COUNT: AtomicU64 = AtomicU64::new(0);
static BAD_RETURNS: AtomicU64 = AtomicU64::new(0);

/// Returns to ring 3 refused because the RIP was not canonical (the task was killed instead).
pub fn noncanonical_returns() -> u64 {
    BAD_RETURNS.load(Ordering::Relaxed)
}

#[cfg(feature = "kernel")]
fn read_rflags() -> u64 {
    x86_64::registers::rflags::read_raw()
}

/// Kernel entries that reached Rust with EFLAGS.AC set (SMAP off): zero unless an entry path
/// forgets to clear it.
pub fn ac_entries() -> u64 {
    AC_ENTRIES.load(Ordering::Relaxed)
}

/// NMIs taken (and resumed from) since boot, on every CPU.
pub fn nmi_count() -> u64 {
    NMI_COUNT.load(Ordering::Relaxed)
}

/// Of those, the NMIs that interrupted ring 3.
pub fn nmi_ring3_count() -> u64 {
    NMI_RING3.load(Ordering::Relaxed)
}

/// Machine checks resumed from since boot.
pub fn machine_check_count() -> u64 {
    MCE_COUNT.load(Ordering::Relaxed)
}

#[cfg(feature = "kernel")]
/// For a #MC: whether the interrupted code may resume (MCG_STATUS.RIPV); if so, clear
/// MCG_STATUS.MCIP so the next machine check does not shut the CPU down.
fn machine_check_recoverable() -> bool {
    const IA32_MCG_STATUS: u32 = 0x17a;
    let (_, _, _, edx) = crate::cpu::cpuid(1, 0);
    if edx & (1 << 14) == 0 {
        return false; // no MCA: no MCG_STATUS to ask
    }
    if crate::cpu::rdmsr(IA32_MCG_STATUS) & 1 == 0 {
        return false;
    }
    // SAFETY: clearing MCG_STATUS (MCIP and the flags) after handling a machine check is what
    // the architecture asks for; it has no other effect.
    unsafe { crate::cpu::wrmsr(IA32_MCG_STATUS, 0) };
    true
}

/// Bits 47..63 all equal.
pub fn is_canonical(a: u64) -> bool {
    ((a << 16) as i64 >> 16) as u64 == a
}

#[cfg(feature = "kernel")]
/// The frame about to be restored returns to ring 3: its RIP must be canonical, or `iretq`
/// raises #GP in ring 0 with the user's GS already loaded. Such a task is treated as if it
/// had faulted with #GP in ring 3 (the exception hook kills it and picks another frame).
fn check_user_return(f: &mut TrapFrame) {
    while f.cs & 3 == 3 && !is_canonical(f.rip) {
        BAD_RETURNS.fetch_add(1, Ordering::Relaxed);
        let hook = EXCEPTION_HOOK.load(Ordering::Acquire);
        f.vector = 13;
        f.error_code = 0;
        if hook == 0 {
            fatal(f);
        }
        // SAFETY: only `set_exception_hook` stores into EXCEPTION_HOOK, always a valid fn.
        let hook: ExceptionHook = unsafe { core::mem::transmute(hook) };
        if !hook(f) {
            fatal(f);
        }
    }
}

/// Deliberately crash this CPU (used by the boot tests that check the fault dump).
pub fn crash_for_test(kind: &str) {
    match kind {
        // SAFETY: ud2 raises #UD, which prints the register dump and stops the CPU.
        "ud" => unsafe { core::arch::asm!("ud2") },
        // SAFETY: reading an unmapped address raises #PF, which prints the dump and stops.
        "pf" => unsafe {
            core::ptr::read_volatile(0x0000_7000_dead_0000 as *const u64);
        },
        // A double fault: exhaust this CPU's exception stack (IST1 pointed at the top of its
        // guard page, as if it had overflowed) with the console lock held and interrupts off,
        // then raise #UD. Delivering #UD faults on the guard page, delivering that #PF (also
        // IST1) faults again: #DF on its own IST stack, whose dump must not need the lock.
        "df" => crate::serial::hold_console_lock(|| {
            // SAFETY: interrupts are off (console lock held), per-CPU data exists on a booted CPU,
            // and only the TSS address is read from the block.
            let tss = unsafe { crate::percpu::percpu() }.tss as *mut x86_64::structures::tss::TaskStateSegment;
            // SAFETY: `tss` is this CPU's live TSS (leaked by `gdt::init_cpu`); only IST1 is
            // changed, and this CPU never returns from the #DF that follows (it halts).
            unsafe {
                let mut ist = core::ptr::read_unaligned(core::ptr::addr_of!((*tss).interrupt_stack_table));
                let i = (gdt::IST_EXCEPTION - 1) as usize;
                ist[i] = VirtAddr::new(ist[i].as_u64() - gdt::IST_STACK_SIZE as u64);
                core::ptr::write_unaligned(core::ptr::addr_of_mut!((*tss).interrupt_stack_table), ist);
                core::arch::asm!("ud2");
            }
        }),
        // A triple fault (QEMU's `-d cpu_reset` logs it; `soak vm --inspect` reads the dead
        // machine): an empty IDT, then #UD, whose delivery faults, and so does the #DF's.
        "tf" => {
            let empty = x86_64::structures::DescriptorTablePointer { limit: 0, base: VirtAddr::new(0) };
            // SAFETY: this CPU never runs again (the machine resets or stops on the triple
            // fault); nothing reads the IDT register afterwards.
            unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &empty, options(noreturn)) }
        }
        _ => {}
    }
}
