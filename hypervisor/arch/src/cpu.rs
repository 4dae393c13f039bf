//! Control registers, MSRs, TSC, CPUID, interrupt flag, halting.

use x86_64::registers::control::{Cr0, Cr2, Cr3, Cr4};
use x86_64::registers::model_specific::Msr;

pub fn read_cr0() -> u64 {
    Cr0::read_raw()
}
pub fn read_cr2() -> u64 {
    Cr2::read_raw()
}
pub fn read_cr3() -> u64 {
    Cr3::read_raw().0.start_address().as_u64() | Cr3::read_raw().1 as u64
}
pub fn read_cr4() -> u64 {
    Cr4::read_raw()
}

/// The current stack pointer.
pub fn stack_pointer() -> u64 {
    let sp: u64;
    // SAFETY: reads RSP into a register; no memory access.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// Flush this CPU's whole TLB: global entries and every PCID's entries included (changing
/// CR4.PGE does that, whichever way; a CR3 reload would drop only the current PCID's).
pub fn flush_tlb_all() {
    without_interrupts(|| {
        let cr4 = Cr4::read_raw();
        // SAFETY: toggling PGE and restoring it only invalidates TLB entries (all of them,
        // global ones and every PCID's); no translation changes. Interrupts are off in between.
        unsafe {
            Cr4::write_raw(cr4 ^ (1 << 7));
            Cr4::write_raw(cr4);
        }
    })
}

/// CR4 bits `cr4_set` may turn on: PGE, OSFXSR, OSXMMEXCPT, VMXE, OSXSAVE, SMEP, SMAP.
const CR4_SETTABLE: u64 = (1 << 7) | (1 << 9) | (1 << 10) | (1 << 13) | (1 << 18) | (1 << 20) | (1 << 21);

/// OR bits into CR4 (never overwrite: firmware may have set bits we must keep). Only the
/// feature-enable bits of `CR4_SETTABLE` may be turned on (others, such as FSGSBASE or PCIDE, change what
/// ring 3 or the paging code may rely on); not exported:
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// catenary_arch::cpu::cr4_set(1 << 16); // FSGSBASE
/// ```
pub(crate) fn cr4_set(bits: u64) {
    let now = Cr4::read_raw();
    assert!(bits & !now & !CR4_SETTABLE == 0, "cr4_set: would turn on a bit outside CR4_SETTABLE");
    // SAFETY: each allowed bit only enables a feature (global pages, SSE/XSAVE state, VMX
    // operation, SMEP/SMAP) that restricts or extends what the kernel itself uses; none changes
    // the paging mode or lets ring 3 touch kernel state. A bit the CPU lacks raises #GP (a
    // fault, not a memory error).
    unsafe { Cr4::write_raw(now | bits) }
}

pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: reading an MSR writes no memory and changes no translation; an MSR that does not
    // exist raises #GP, which the trap handler treats as a fatal kernel fault (the CPU stops;
    // nothing is corrupted).
    unsafe { Msr::new(msr).read() }
}

/// # Safety
/// Writing MSRs can change paging, syscall entry points and more: the caller guarantees the
/// value is valid for that MSR and keeps the machine's invariants.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { Msr::new(msr).write(value) }
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One locked add to a dword at byte offset 1 of `word` (misaligned, inside one cache line).
/// Test aid: under QEMU's multi-threaded TCG a misaligned atomic stops the world
/// (`cpu_exec_step_atomic` → `start_exclusive`), which kicks every other vCPU thread out of
/// its execution loop: the interrupt-delivery test uses it from one CPU to kick another
/// (docs/vmm.md "Soak").
pub fn misaligned_locked_add(word: &mut u64) {
    let p = (word as *mut u64 as *mut u8).wrapping_add(1);
    // SAFETY: the 4 bytes at offset 1..5 lie inside the 8-byte `word`, which we hold
    // exclusively; an 8-aligned u64 keeps them inside one cache line.
    unsafe { core::arch::asm!("lock add dword ptr [{}], 1", in(reg) p, options(nostack)) }
}

/// FXSAVE, then FXRSTOR of the image just saved: the FPU/SSE state is left as it was.
/// Test aid for the QEMU TCG race below (`qemu_tcg_first_cpu_race`): every x87-state restore
/// (FXRSTOR, XRSTOR, FRSTOR, FLDENV) makes QEMU clear IGNNE in the *first* CPU's flags word.
pub fn fpu_state_roundtrip() {
    #[repr(C, align(16))]
    struct Area([u8; 512]);
    let mut area = Area([0; 512]);
    // SAFETY: FXSAVE writes exactly the 512-byte, 16-byte-aligned area we own; FXRSTOR then
    // reads back the image FXSAVE just wrote (so its MXCSR is valid): the FPU/SSE state
    // afterwards is the state before. The kernel runs with CR4.OSFXSR set (trap.s saves
    // FXSAVE/XSAVE state on every entry).
    unsafe { core::arch::asm!("fxsave64 [{0}]", "fxrstor64 [{0}]", in(reg) area.0.as_mut_ptr(), options(nostack)) }
}

/// True when the CPU is QEMU's TCG emulator (CPUID 0x4000_0000 signature "TCGTCGTCGTCG").
pub fn is_qemu_tcg() -> bool {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 31) == 0 {
        return false;
    }
    let (_, b, c, d) = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..12].copy_from_slice(&d.to_le_bytes());
    &sig == b"TCGTCGTCGTCG"
}

/// QEMU TCG (7.2, also current upstream) races on the first CPU's `hflags2`: every x87-state
/// restore on *any* vCPU (`cpu_set_fpus` -> `cpu_clear_ignne` in target/i386/tcg/sysemu/
/// fpu_helper.c) does an unlocked `first_cpu->env.hflags2 &= ~HF2_IGNNE_MASK` from its own
/// thread. When that read-modify-write straddles the first CPU's own update of `hflags2`
/// (VMRUN sets GIF/NPT, #VMEXIT clears them), the first CPU's update is lost: after #VMEXIT
/// nested paging stays on in host mode (the host's next fetch walks its page tables through
/// the guest's NPT and the node triple-faults), or inside a guest it is turned off (the guest
/// triple-faults). So on QEMU TCG with more than one CPU, no world switch may run on CPU 0
/// (docs/vmm.md "The host triple fault"). On hardware and with one CPU this is false.
pub fn qemu_tcg_first_cpu_race(cpus: usize) -> bool {
    cpus >= 2 && is_qemu_tcg()
}

pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

pub fn enable_interrupts() {
    x86_64::instructions::interrupts::enable();
}
pub fn disable_interrupts() {
    x86_64::instructions::interrupts::disable();
}
pub fn interrupts_enabled() -> bool {
    x86_64::instructions::interrupts::are_enabled()
}
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(f)
}

/// Halt until the next interrupt (interrupts enabled atomically with `sti; hlt`).
pub fn wait_for_interrupt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// Stop this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        disable_interrupts();
        x86_64::instructions::hlt();
    }
}

/// CPU features the kernel reports and relies on.
#[derive(Debug, Clone)]
pub struct CpuFeatures {
    pub vendor: alloc::string::String,
    pub brand: alloc::string::String,
    pub family: u8,
    pub model: u8,
    pub svm: bool,
    pub npt: bool,
    pub nrips: bool,
    pub svm_asids: u32,
    pub vmx: bool,
    pub ept: bool,
    pub x2apic: bool,
    pub nx: bool,
    pub pdpe1gb: bool,
    pub invariant_tsc: bool,
    pub tsc_deadline: bool,
    pub hypervisor: bool,
    pub smep: bool,
    pub smap: bool,
    pub xsave: bool,
}

pub fn features() -> CpuFeatures {
    use raw_cpuid::CpuId;
    let c = CpuId::new();
    let vendor = c.get_vendor_info().map(|v| alloc::string::String::from(v.as_str())).unwrap_or_default();
    let brand = c
        .get_processor_brand_string()
        .map(|b| alloc::string::String::from(b.as_str().trim()))
        .unwrap_or_default();
    let fi = c.get_feature_info();
    let ext = c.get_extended_processor_and_feature_identifiers();
    let svm = ext.as_ref().map(|e| e.has_svm()).unwrap_or(false);
    let svm_info = if svm { c.get_svm_info() } else { None };
    let vmx = fi.as_ref().map(|f| f.has_vmx()).unwrap_or(false);
    // EPT: IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 1, only readable when secondary controls exist.
    let ept = vmx && {
        let proc = rdmsr(0x482); // IA32_VMX_PROCBASED_CTLS
        (proc >> 63) & 1 == 1 && (rdmsr(0x48b) >> 33) & 1 == 1
    };
    let efi = c.get_extended_feature_info();
    CpuFeatures {
        vendor,
        brand,
        family: fi.as_ref().map(|f| f.family_id()).unwrap_or(0),
        model: fi.as_ref().map(|f| f.model_id()).unwrap_or(0),
        svm,
        npt: svm_info.as_ref().map(|s| s.has_nested_paging()).unwrap_or(false),
        nrips: svm_info.as_ref().map(|s| s.has_nrip()).unwrap_or(false),
        svm_asids: svm_info.as_ref().map(|s| s.supported_asids()).unwrap_or(0),
        vmx,
        ept,
        x2apic: fi.as_ref().map(|f| f.has_x2apic()).unwrap_or(false),
        nx: ext.as_ref().map(|e| e.has_execute_disable()).unwrap_or(false),
        pdpe1gb: ext.as_ref().map(|e| e.has_1gib_pages()).unwrap_or(false),
        invariant_tsc: c.get_advanced_power_mgmt_info().map(|a| a.has_invariant_tsc()).unwrap_or(false),
        tsc_deadline: fi.as_ref().map(|f| f.has_tsc_deadline()).unwrap_or(false),
        hypervisor: fi.as_ref().map(|f| f.has_hypervisor()).unwrap_or(false),
        smep: efi.as_ref().map(|e| e.has_smep()).unwrap_or(false),
        smap: efi.as_ref().map(|e| e.has_smap()).unwrap_or(false),
        xsave: fi.as_ref().map(|f| f.has_xsave()).unwrap_or(false),
    }
}

/// Bytes reserved below every trap frame for the FPU/SSE/AVX state (XSAVE of x87|SSE|AVX
/// needs 832; FXSAVE uses the first 512).
pub const FPU_AREA: usize = 1024;

/// Non-zero when the entry stubs use XSAVE/XRSTOR (CR4.OSXSAVE on every CPU, XCR0 set).
/// Crate-private: only `enable_xsave` sets it. Were it public, safe code could turn it off
/// while frames hold XSAVE images (or on, before CR4.OSXSAVE), and the next entry or exit
/// would fault in the stubs.
#[no_mangle]
pub(crate) static ARCH_XSAVE_ON: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
static XCR0: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Non-zero when a ring-3 entry saves into the task's own area with XSAVEOPT instead of XSAVE
/// (CPUID.(0xd,1):EAX[0]). Sound there because nothing writes a task's area between the exit's
/// XRSTOR from it and the next entry's XSAVEOPT into it (the CPU owns it meanwhile; see
/// `context`): the modified optimization may skip components unchanged since that XRSTOR.
#[no_mangle]
pub(crate) static ARCH_XSAVEOPT_ON: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Turn on XSAVE on this CPU where CPUID has it: CR4.OSXSAVE, XCR0 = x87|SSE(|AVX). Returns
/// XCR0 (0 = FXSAVE only). Every CPU calls it before it takes interrupts.
pub(crate) fn enable_xsave() -> u64 {
    let (_, _, ecx, _) = cpuid(1, 0);
    if ecx & (1 << 26) == 0 {
        return 0;
    }
    let (supported, _, _, _) = cpuid(0xd, 0);
    let mut xcr0 = 0b11;
    if ecx & (1 << 28) != 0 && supported & 0b100 != 0 {
        xcr0 |= 0b100;
    }
    cr4_set(1 << 18);
    // SAFETY: CR4.OSXSAVE is on and XCR0 holds x87|SSE plus AVX only if CPUID reports it.
    unsafe { core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") xcr0 as u32, in("edx") 0u32, options(nostack, nomem)) };
    let (_, size, _, _) = cpuid(0xd, 0);
    if size as usize > FPU_AREA {
        return 0; // cannot happen with x87|SSE|AVX (832 bytes); stay on FXSAVE
    }
    XCR0.store(xcr0, core::sync::atomic::Ordering::Relaxed);
    let (sub1, _, _, _) = cpuid(0xd, 1);
    ARCH_XSAVEOPT_ON.store((sub1 & 1) as u8, core::sync::atomic::Ordering::Release);
    ARCH_XSAVE_ON.store(1, core::sync::atomic::Ordering::Release);
    xcr0
}

/// The XCR0 the kernel set (0 = FXSAVE only).
pub fn xcr0() -> u64 {
    XCR0.load(core::sync::atomic::Ordering::Relaxed)
}

/// Whether AVX (ymm) state is enabled for tasks (XCR0 has AVX).
pub fn avx_enabled() -> bool {
    xcr0() & 0b100 != 0
}

/// Test helper: load ymm0..ymm7 from `pattern`, spin for `cycles` TSC cycles (preemption
/// happens meanwhile), then store ymm0..ymm7 into `out`. Only call when `avx_enabled()`.
pub fn avx_hold(pattern: &[u8; 256], out: &mut [u8; 256], cycles: u64) {
    assert!(avx_enabled());
    // SAFETY: AVX is enabled (CR4.OSXSAVE, XCR0.AVX), so the VEX instructions (encoded as
    // bytes: the kernel is built without AVX) are valid; they read 256 bytes at `pattern`
    // and write 256 bytes at `out`, both valid for that length. ymm registers are not used
    // by compiled kernel code, so clobbering them affects nothing else.
    unsafe {
        core::arch::asm!(
            // vmovdqu ymmN, [rdi]; add rdi, 32   (C5 FE 6F /r)
            ".byte 0xc5, 0xfe, 0x6f, 0x07", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x0f", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x17", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x1f", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x27", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x2f", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x37", "add rdi, 32",
            ".byte 0xc5, 0xfe, 0x6f, 0x3f",
            "rdtsc", "shl rdx, 32", "or rax, rdx", "mov r8, rax",
            "2:", "pause", "rdtsc", "shl rdx, 32", "or rax, rdx", "sub rax, r8", "cmp rax, rcx", "jb 2b",
            // vmovdqu [rsi], ymmN; add rsi, 32   (C5 FE 7F /r)
            ".byte 0xc5, 0xfe, 0x7f, 0x06", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x0e", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x16", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x1e", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x26", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x2e", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x36", "add rsi, 32",
            ".byte 0xc5, 0xfe, 0x7f, 0x3e",
            inout("rdi") pattern.as_ptr() => _, inout("rsi") out.as_mut_ptr() => _, in("rcx") cycles,
            out("rax") _, out("rdx") _, out("r8") _, options(nostack),
        );
    }
}
