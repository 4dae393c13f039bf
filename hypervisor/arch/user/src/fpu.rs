//! Vector registers held across a system call: the ring-3 side of the kernel's FPU-switch
//! tests (`sched_user_fpu_survives_ipc_and_preemption`). A task loads its own pattern into
//! ymm0..ymm15 (xmm0..xmm15 without AVX), MXCSR, the eight x87 registers and the x87 control
//! word, spins (the timer preempts it, other tasks run), makes a `call` or `reply_recv` (the
//! kernel switches straight to the partner and back), spins again, and stores what the
//! registers then hold; the caller compares.

use crate::sys::Msg;
use catenary_ipc::syscall::{SYS_CALL, SYS_REPLY_RECV};

/// Bytes of register state held: 16 ymm registers (the first 256 bytes: 16 xmm registers).
pub const HOLD_BYTES: usize = 512;

/// The seed of the pattern (and MXCSR: round toward zero, flush to zero) that
/// [`load_and_fault`]'s task dies holding, which no later task may see.
pub const DEAD_SEED: u64 = 0x0dea_d5ee_d000_0007;

/// Whether ring 3 may use AVX: CPUID has AVX and OSXSAVE, and XCR0 enables SSE and AVX state.
pub fn avx_usable() -> bool {
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    if ecx & (1 << 27) == 0 || ecx & (1 << 28) == 0 {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV(0) is allowed in any ring once CR4.OSXSAVE is set (CPUID.1:ECX[27],
    // checked above); it reads XCR0 only.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi, options(nostack, nomem, preserves_flags)) };
    lo & 0b110 == 0b110
}

/// The values a hold leaves: the vector registers (the first 256 bytes without AVX), MXCSR,
/// the x87 registers ST(0)..ST(7) as FXSAVE stores them, and the x87 control word.
pub struct Held {
    pub regs: [u8; HOLD_BYTES],
    pub mxcsr: u32,
    pub x87: [X87Reg; 8],
    pub fcw: u16,
}

/// One x87 register in its 80-bit format: the 64-bit significand (explicit integer bit) and
/// the sign and 15-bit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct X87Reg {
    pub significand: u64,
    pub sign_exp: u16,
}

impl X87Reg {
    /// The register `fld qword` makes of the normal double with these bits.
    pub fn of_double(bits: u64) -> X87Reg {
        let exp = ((bits >> 52) & 0x7ff) as u16;
        let sign = ((bits >> 63) as u16) << 15;
        X87Reg { significand: (1 << 63) | ((bits & 0x000f_ffff_ffff_ffff) << 11), sign_exp: sign | (exp + (16383 - 1023)) }
    }
}

/// The eight doubles a hold loads onto the x87 stack, from the last 64 bytes of `pattern`:
/// sign and fraction from the pattern, the exponent kept in the normal range (0x3c0..0x3ff), so
/// loading and storing them is exact whatever the control word's precision and rounding.
pub fn x87_values(pattern: &[u8; HOLD_BYTES]) -> [u64; 8] {
    let mut v = [0u64; 8];
    for (i, c) in pattern[HOLD_BYTES - 64..].chunks(8).enumerate() {
        let b = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        v[i] = (b & 0x800f_ffff_ffff_ffff) | ((0x3c0 + ((b >> 52) & 0x3f)) << 52);
    }
    v
}

/// What ST(0)..ST(7) hold after the values of [`x87_values`] were loaded in order (the last
/// one loaded is ST(0)).
pub fn x87_expected(pattern: &[u8; HOLD_BYTES]) -> [X87Reg; 8] {
    let v = x87_values(pattern);
    core::array::from_fn(|i| X87Reg::of_double(v[7 - i]))
}

/// An x87 control word (every exception masked, as the default 0x037f) with precision control
/// (double or extended) and rounding from `v`, never the default itself (extended precision
/// comes only with a rounding mode other than to-nearest), so that a lost control word shows.
pub fn fcw_for(v: u64) -> u16 {
    let rc = ((v >> 4) & 3) as u16;
    let pc: u16 = if rc == 0 || (v >> 3) & 1 == 0 { 2 } else { 3 };
    0x007f | (pc << 8) | (rc << 10)
}

/// The x87 registers and control word in a 512-byte FXSAVE image.
fn x87_of_fxsave(fx: &[u8; 512]) -> ([X87Reg; 8], u16) {
    let regs = core::array::from_fn(|i| {
        let r = &fx[32 + 16 * i..];
        X87Reg {
            significand: u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]),
            sign_exp: u16::from_le_bytes([r[8], r[9]]),
        }
    });
    (regs, u16::from_le_bytes([fx[0], fx[1]]))
}

/// A 16-byte-aligned FXSAVE image.
#[repr(C, align(16))]
struct FxArea([u8; 512]);

#[repr(C, align(16))]
struct Block {
    /// rax, rdi, rsi, rdx, r10, r8, r9, r12, r13: in before `syscall`, out after.
    regs: [u64; 9],
    spin: u64,
    mxcsr: u32,
    mxcsr_out: u32,
    mxcsr_orig: u32,
    fcw: u16,
    fcw_orig: u16,
    _pad: [u32; 8],
    pattern: [u8; HOLD_BYTES],
    out: [u8; HOLD_BYTES],
    x87: [u64; 8],
    /// FXSAVE image taken at the end (x87 registers and control word as they came back).
    fx: [u8; 512],
}

const _: () = assert!(core::mem::offset_of!(Block, spin) == 72 && core::mem::offset_of!(Block, mxcsr) == 80
    && core::mem::offset_of!(Block, fcw) == 92 && core::mem::offset_of!(Block, fcw_orig) == 94
    && core::mem::offset_of!(Block, pattern) == 128 && core::mem::offset_of!(Block, out) == 640
    && core::mem::offset_of!(Block, x87) == 1152 && core::mem::offset_of!(Block, fx) == 1216);

/// A valid MXCSR (every exception masked, as the default) with rounding and flush-to-zero from `v`.
pub fn mxcsr_for(v: u64) -> u32 {
    0x1f80 | ((v as u32 & 3) << 13) | (((v as u32 >> 2) & 1) << 15)
}

fn hold(nr: u64, regs: [u64; 9], pattern: &[u8; HOLD_BYTES], mxcsr: u64, spin: u64) -> (Msg, u64, Held) {
    let avx = avx_usable();
    let mut b = Block {
        regs, spin, mxcsr: mxcsr_for(mxcsr), mxcsr_out: 0, mxcsr_orig: 0, fcw: fcw_for(mxcsr), fcw_orig: 0, _pad: [0; 8],
        pattern: *pattern, out: [0; HOLD_BYTES], x87: x87_values(pattern), fx: [0; 512],
    };
    b.regs[0] = nr;
    // SAFETY: `nr` is SYS_CALL or SYS_REPLY_RECV (the only callers below): registers in,
    // registers out, as `sys::call` / `sys::reply_recv` (a grant a received message brings is
    // mapped into the grant window, never over Rust memory). The asm reads and writes only
    // `b` (through r14, valid for the whole block) and registers it declares: every general
    // register it uses is an input or clobbered, xmm0..15 are clobbered (the upper ymm halves
    // are caller-saved in the SysV ABI and compiled code here does not use AVX; `vzeroupper`
    // clears them), MXCSR and the x87 control word are put back as they were. The x87 stack is
    // empty on entry (SysV ABI), holds the eight loaded values in between and is empty again on
    // exit (`fninit` after the FXSAVE, whose area at `b.fx` is 16-byte aligned: `Block` is
    // align(16) and `fx` at offset 1216); st(0)..st(7) are clobbered. The values are normal
    // doubles (`x87_values`), so no load raises an exception. AVX instructions run only if
    // `avx_usable`. No stack use.
    unsafe {
        core::arch::asm!(
            "stmxcsr [r14 + 88]",
            "ldmxcsr [r14 + 80]",
            "fnstcw [r14 + 94]",
            "fldcw [r14 + 92]",
            "fld qword ptr [r14 + 1152]",
            "fld qword ptr [r14 + 1160]",
            "fld qword ptr [r14 + 1168]",
            "fld qword ptr [r14 + 1176]",
            "fld qword ptr [r14 + 1184]",
            "fld qword ptr [r14 + 1192]",
            "fld qword ptr [r14 + 1200]",
            "fld qword ptr [r14 + 1208]",
            "test r15, r15",
            "jz 2f",
            "vmovdqu ymm0, [r14 + 128]",
            "vmovdqu ymm1, [r14 + 160]",
            "vmovdqu ymm2, [r14 + 192]",
            "vmovdqu ymm3, [r14 + 224]",
            "vmovdqu ymm4, [r14 + 256]",
            "vmovdqu ymm5, [r14 + 288]",
            "vmovdqu ymm6, [r14 + 320]",
            "vmovdqu ymm7, [r14 + 352]",
            "vmovdqu ymm8, [r14 + 384]",
            "vmovdqu ymm9, [r14 + 416]",
            "vmovdqu ymm10, [r14 + 448]",
            "vmovdqu ymm11, [r14 + 480]",
            "vmovdqu ymm12, [r14 + 512]",
            "vmovdqu ymm13, [r14 + 544]",
            "vmovdqu ymm14, [r14 + 576]",
            "vmovdqu ymm15, [r14 + 608]",
            "jmp 3f",
            "2:",
            "movdqu xmm0, [r14 + 128]",
            "movdqu xmm1, [r14 + 144]",
            "movdqu xmm2, [r14 + 160]",
            "movdqu xmm3, [r14 + 176]",
            "movdqu xmm4, [r14 + 192]",
            "movdqu xmm5, [r14 + 208]",
            "movdqu xmm6, [r14 + 224]",
            "movdqu xmm7, [r14 + 240]",
            "movdqu xmm8, [r14 + 256]",
            "movdqu xmm9, [r14 + 272]",
            "movdqu xmm10, [r14 + 288]",
            "movdqu xmm11, [r14 + 304]",
            "movdqu xmm12, [r14 + 320]",
            "movdqu xmm13, [r14 + 336]",
            "movdqu xmm14, [r14 + 352]",
            "movdqu xmm15, [r14 + 368]",
            "3:",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov rcx, rax",
            "4:",
            "pause",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "sub rax, rcx",
            "cmp rax, [r14 + 72]",
            "jb 4b",
            "mov rax, [r14 + 0]",
            "mov rdi, [r14 + 8]",
            "mov rsi, [r14 + 16]",
            "mov rdx, [r14 + 24]",
            "mov r10, [r14 + 32]",
            "mov r8, [r14 + 40]",
            "mov r9, [r14 + 48]",
            "mov r12, [r14 + 56]",
            "mov r13, [r14 + 64]",
            "syscall",
            "mov [r14 + 0], rax",
            "mov [r14 + 8], rdi",
            "mov [r14 + 16], rsi",
            "mov [r14 + 24], rdx",
            "mov [r14 + 32], r10",
            "mov [r14 + 40], r8",
            "mov [r14 + 48], r9",
            "mov [r14 + 56], r12",
            "mov [r14 + 64], r13",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "mov rcx, rax",
            "5:",
            "pause",
            "rdtsc",
            "shl rdx, 32",
            "or rax, rdx",
            "sub rax, rcx",
            "cmp rax, [r14 + 72]",
            "jb 5b",
            "stmxcsr [r14 + 84]",
            "test r15, r15",
            "jz 6f",
            "vmovdqu [r14 + 640], ymm0",
            "vmovdqu [r14 + 672], ymm1",
            "vmovdqu [r14 + 704], ymm2",
            "vmovdqu [r14 + 736], ymm3",
            "vmovdqu [r14 + 768], ymm4",
            "vmovdqu [r14 + 800], ymm5",
            "vmovdqu [r14 + 832], ymm6",
            "vmovdqu [r14 + 864], ymm7",
            "vmovdqu [r14 + 896], ymm8",
            "vmovdqu [r14 + 928], ymm9",
            "vmovdqu [r14 + 960], ymm10",
            "vmovdqu [r14 + 992], ymm11",
            "vmovdqu [r14 + 1024], ymm12",
            "vmovdqu [r14 + 1056], ymm13",
            "vmovdqu [r14 + 1088], ymm14",
            "vmovdqu [r14 + 1120], ymm15",
            "vzeroupper",
            "jmp 7f",
            "6:",
            "movdqu [r14 + 640], xmm0",
            "movdqu [r14 + 656], xmm1",
            "movdqu [r14 + 672], xmm2",
            "movdqu [r14 + 688], xmm3",
            "movdqu [r14 + 704], xmm4",
            "movdqu [r14 + 720], xmm5",
            "movdqu [r14 + 736], xmm6",
            "movdqu [r14 + 752], xmm7",
            "movdqu [r14 + 768], xmm8",
            "movdqu [r14 + 784], xmm9",
            "movdqu [r14 + 800], xmm10",
            "movdqu [r14 + 816], xmm11",
            "movdqu [r14 + 832], xmm12",
            "movdqu [r14 + 848], xmm13",
            "movdqu [r14 + 864], xmm14",
            "movdqu [r14 + 880], xmm15",
            "7:",
            "fxsave64 [r14 + 1216]",
            "fninit",
            "fldcw [r14 + 94]",
            "ldmxcsr [r14 + 88]",
            in("r14") &mut b as *mut Block, in("r15") avx as u64,
            out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _, out("r8") _, out("r9") _,
            out("r10") _, out("r11") _, out("r12") _, out("r13") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _, out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _, out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack),
        );
    }
    let r = b.regs;
    let msg = Msg { label: r[2], words: [r[3], r[4], r[5], r[6]], badge: r[1], reply: r[7], flags: r[8] };
    let mut regs = b.out;
    if !avx {
        regs[256..].fill(0);
    }
    let (x87, fcw) = x87_of_fxsave(&b.fx);
    (msg, r[0], Held { regs, mxcsr: b.mxcsr_out, x87, fcw })
}

fn result(m: Msg, rax: u64) -> Result<Msg, u64> {
    if rax == 0 { Ok(m) } else { Err(rax.wrapping_neg()) }
}

/// [`crate::sys::call`] with `pattern` held in the vector registers and MXCSR (from `mxcsr`,
/// see [`mxcsr_for`]) from `spin` TSC cycles before the call until `spin` cycles after it.
pub fn hold_call(slot: u64, label: u64, w: [u64; 4], pattern: &[u8; HOLD_BYTES], mxcsr: u64, spin: u64) -> (Result<Msg, u64>, Held) {
    let (m, rax, h) = hold(SYS_CALL, [0, slot & 0xffff_ffff, label, w[0], w[1], w[2], w[3], 0, 0], pattern, mxcsr, spin);
    (result(m, rax), h)
}

/// [`crate::sys::reply_recv`] with `pattern` held as in [`hold_call`].
pub fn hold_reply_recv(token: u64, label: u64, w: [u64; 4], slot: u64, pattern: &[u8; HOLD_BYTES], mxcsr: u64, spin: u64) -> (Result<Msg, u64>, Held) {
    let (m, rax, h) = hold(SYS_REPLY_RECV, [0, token, label, w[0], w[1], w[2], w[3], 0, slot], pattern, mxcsr, spin);
    (result(m, rax), h)
}

/// Load `pattern` into ymm0..15 (xmm0..15 without AVX), MXCSR (from `mxcsr`, see
/// [`mxcsr_for`]), the x87 stack ([`x87_values`]) and the x87 control word ([`fcw_for`]), then
/// execute UD2: the kernel kills the task with these values live, while its FPU area is the
/// CPU's (`sched_user_fpu_of_a_killed_task_does_not_leak`). Never returns.
pub fn load_and_fault(pattern: &[u8; HOLD_BYTES], mxcsr: u64) -> ! {
    let avx = avx_usable();
    let m = mxcsr_for(mxcsr);
    let fcw = fcw_for(mxcsr);
    let x87 = x87_values(pattern);
    // SAFETY: reads `pattern` (512 bytes, valid), `x87` (64 bytes), `m` and `fcw` into the
    // vector registers, MXCSR, the x87 stack and control word (`m` is a valid MXCSR and `fcw` a
    // valid control word, every exception masked; the x87 stack is empty on entry, as compiled
    // x86_64 code never leaves values on it (Rust does floating point in SSE registers, and
    // the SysV ABI has it empty at every call), and takes eight normal doubles), AVX instructions only if `avx_usable`, then UD2: the kernel kills
    // the task there, so nothing after it runs and no register it changed is ever seen by
    // compiled code. No stack use.
    unsafe {
        core::arch::asm!(
            "ldmxcsr [rdx]",
            "fldcw [rdi]",
            "fld qword ptr [rsi]",
            "fld qword ptr [rsi + 8]",
            "fld qword ptr [rsi + 16]",
            "fld qword ptr [rsi + 24]",
            "fld qword ptr [rsi + 32]",
            "fld qword ptr [rsi + 40]",
            "fld qword ptr [rsi + 48]",
            "fld qword ptr [rsi + 56]",
            "test r15, r15",
            "jz 2f",
            "vmovdqu ymm0, [r14]",
            "vmovdqu ymm1, [r14 + 32]",
            "vmovdqu ymm2, [r14 + 64]",
            "vmovdqu ymm3, [r14 + 96]",
            "vmovdqu ymm4, [r14 + 128]",
            "vmovdqu ymm5, [r14 + 160]",
            "vmovdqu ymm6, [r14 + 192]",
            "vmovdqu ymm7, [r14 + 224]",
            "vmovdqu ymm8, [r14 + 256]",
            "vmovdqu ymm9, [r14 + 288]",
            "vmovdqu ymm10, [r14 + 320]",
            "vmovdqu ymm11, [r14 + 352]",
            "vmovdqu ymm12, [r14 + 384]",
            "vmovdqu ymm13, [r14 + 416]",
            "vmovdqu ymm14, [r14 + 448]",
            "vmovdqu ymm15, [r14 + 480]",
            "ud2",
            "2:",
            "movdqu xmm0, [r14]",
            "movdqu xmm1, [r14 + 16]",
            "movdqu xmm2, [r14 + 32]",
            "movdqu xmm3, [r14 + 48]",
            "movdqu xmm4, [r14 + 64]",
            "movdqu xmm5, [r14 + 80]",
            "movdqu xmm6, [r14 + 96]",
            "movdqu xmm7, [r14 + 112]",
            "movdqu xmm8, [r14 + 128]",
            "movdqu xmm9, [r14 + 144]",
            "movdqu xmm10, [r14 + 160]",
            "movdqu xmm11, [r14 + 176]",
            "movdqu xmm12, [r14 + 192]",
            "movdqu xmm13, [r14 + 208]",
            "movdqu xmm14, [r14 + 224]",
            "movdqu xmm15, [r14 + 240]",
            "ud2",
            in("r14") pattern.as_ptr(), in("r15") avx as u64, in("rdx") &m as *const u32,
            in("rsi") x87.as_ptr(), in("rdi") &fcw as *const u16,
            options(noreturn, nostack),
        );
    }
}

/// What this task's vector registers (ymm0..15, xmm0..15 without AVX), MXCSR, x87 registers
/// and x87 control word hold now, nothing loaded first. Compiled code before the call may have
/// written low xmm halves with SSE (which leaves the upper ymm halves as they were); the upper
/// halves and the x87 registers (compiled code here uses no x87) are the task's own.
pub fn snapshot() -> Held {
    let avx = avx_usable();
    let mut regs = [0u8; HOLD_BYTES];
    let mut mxcsr = 0u32;
    let mut fx = FxArea([0; 512]);
    // SAFETY: stores MXCSR into `mxcsr`, the x87/SSE image into `fx` (512 bytes, 16-byte
    // aligned, valid for writes) and the vector registers into `regs` (512 bytes, valid for
    // writes; 256 without AVX); AVX instructions only if `avx_usable`. FXSAVE and the stores
    // change no register. No stack use.
    unsafe {
        core::arch::asm!(
            "stmxcsr [rdx]",
            "fxsave64 [rsi]",
            "test r15, r15",
            "jz 2f",
            "vmovdqu [r14], ymm0",
            "vmovdqu [r14 + 32], ymm1",
            "vmovdqu [r14 + 64], ymm2",
            "vmovdqu [r14 + 96], ymm3",
            "vmovdqu [r14 + 128], ymm4",
            "vmovdqu [r14 + 160], ymm5",
            "vmovdqu [r14 + 192], ymm6",
            "vmovdqu [r14 + 224], ymm7",
            "vmovdqu [r14 + 256], ymm8",
            "vmovdqu [r14 + 288], ymm9",
            "vmovdqu [r14 + 320], ymm10",
            "vmovdqu [r14 + 352], ymm11",
            "vmovdqu [r14 + 384], ymm12",
            "vmovdqu [r14 + 416], ymm13",
            "vmovdqu [r14 + 448], ymm14",
            "vmovdqu [r14 + 480], ymm15",
            "jmp 3f",
            "2:",
            "movdqu [r14], xmm0",
            "movdqu [r14 + 16], xmm1",
            "movdqu [r14 + 32], xmm2",
            "movdqu [r14 + 48], xmm3",
            "movdqu [r14 + 64], xmm4",
            "movdqu [r14 + 80], xmm5",
            "movdqu [r14 + 96], xmm6",
            "movdqu [r14 + 112], xmm7",
            "movdqu [r14 + 128], xmm8",
            "movdqu [r14 + 144], xmm9",
            "movdqu [r14 + 160], xmm10",
            "movdqu [r14 + 176], xmm11",
            "movdqu [r14 + 192], xmm12",
            "movdqu [r14 + 208], xmm13",
            "movdqu [r14 + 224], xmm14",
            "movdqu [r14 + 240], xmm15",
            "3:",
            in("r14") regs.as_mut_ptr(), in("r15") avx as u64, in("rdx") &mut mxcsr as *mut u32,
            in("rsi") fx.0.as_mut_ptr(),
            options(nostack),
        );
    }
    let (x87, fcw) = x87_of_fxsave(&fx.0);
    Held { regs, mxcsr, x87, fcw }
}

/// x87 registers of `h` whose significand equals one that `pattern`'s hold loads (the
/// significand alone: a leak through a reset that zeroed the tags or the top would still show).
pub fn x87_like(h: &Held, pattern: &[u8; HOLD_BYTES]) -> u64 {
    let want = x87_expected(pattern);
    h.x87.iter().filter(|r| want.iter().any(|w| w.significand == r.significand)).count() as u64
}

/// 16-byte lanes of `h` equal to the same lane of `pattern` (32 lanes with AVX, 16 without),
/// and lanes of the upper ymm halves that are not zero (0 without AVX).
pub fn lanes_like(h: &Held, pattern: &[u8; HOLD_BYTES]) -> (u64, u64) {
    let n = if avx_usable() { HOLD_BYTES } else { 256 };
    let same = h.regs[..n].chunks(16).zip(pattern[..n].chunks(16)).filter(|(a, b)| a == b).count() as u64;
    let upper = if avx_usable() { h.regs.chunks(16).skip(1).step_by(2).filter(|l| l.iter().any(|b| *b != 0)).count() as u64 } else { 0 };
    (same, upper)
}

/// A pattern for `seed` (splitmix64): different tasks and rounds hold different values.
pub fn pattern(seed: u64) -> [u8; HOLD_BYTES] {
    let mut p = [0u8; HOLD_BYTES];
    let mut x = seed;
    for c in p.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        c.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    p
}

/// Whether `h` holds `pattern` (all 512 bytes with AVX, the xmm halves without), `mxcsr`, and
/// the x87 registers and control word a hold of them loads.
pub fn intact(h: &Held, pattern: &[u8; HOLD_BYTES], mxcsr: u64) -> bool {
    let n = if avx_usable() { HOLD_BYTES } else { 256 };
    h.regs[..n] == pattern[..n] && h.mxcsr == mxcsr_for(mxcsr) && h.x87 == x87_expected(pattern) && h.fcw == fcw_for(mxcsr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_double_becomes_the_x87_register_fld_makes() {
        // 1.0, -2.5 and the smallest exponent the pattern uses, worked out by hand.
        assert_eq!(X87Reg::of_double(1.0f64.to_bits()), X87Reg { significand: 1 << 63, sign_exp: 0x3fff });
        assert_eq!(X87Reg::of_double((-2.5f64).to_bits()), X87Reg { significand: 0xa000_0000_0000_0000, sign_exp: 0xc000 });
        assert_eq!(X87Reg::of_double(0x3c00_0000_0000_0001), X87Reg { significand: (1 << 63) | (1 << 11), sign_exp: 0x3fc0 });
    }

    /// The CPU's own answer: `fld qword` then `fstp tbyte` of each pattern value.
    #[test]
    fn of_double_agrees_with_the_cpu() {
        for seed in [3, DEAD_SEED] {
            for b in x87_values(&pattern(seed)) {
                let mut out = [0u8; 10];
                // SAFETY: loads the 8 bytes of `b` onto the x87 stack (empty here, as the ABI
                // has it; a normal double) and pops it into `out` (10 bytes, valid for writes).
                unsafe {
                    core::arch::asm!("fld qword ptr [{0}]", "fstp tbyte ptr [{1}]", in(reg) &b as *const u64, in(reg) out.as_mut_ptr(), options(nostack));
                }
                let cpu = X87Reg {
                    significand: u64::from_le_bytes([out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7]]),
                    sign_exp: u16::from_le_bytes([out[8], out[9]]),
                };
                assert_eq!(X87Reg::of_double(b), cpu, "{b:#x}");
            }
        }
    }

    #[test]
    fn pattern_values_are_normal_doubles_in_loading_order() {
        for seed in [0, 1, DEAD_SEED, u64::MAX] {
            let p = pattern(seed);
            let v = x87_values(&p);
            for b in v {
                let f = f64::from_bits(b);
                assert!(f.is_normal(), "{f}");
                assert!((0x3c0..0x400).contains(&((b >> 52) & 0x7ff)));
            }
            // ST(0) is the last value loaded.
            assert_eq!(x87_expected(&p)[0], X87Reg::of_double(v[7]));
            assert_eq!(x87_expected(&p)[7], X87Reg::of_double(v[0]));
        }
    }

    #[test]
    fn control_words_differ_from_the_default_and_stay_valid() {
        for v in 0..64u64 {
            let c = fcw_for(v);
            assert_ne!(c, 0x037f, "seed {v}: the default control word tells nothing");
            assert_eq!(c & 0x3f, 0x3f, "every exception masked");
            assert_eq!(c & 0xf080, 0, "reserved bits clear");
            assert!((c >> 8) & 3 >= 2, "double or extended precision");
        }
    }

    #[test]
    fn fxsave_layout() {
        let mut fx = [0u8; 512];
        fx[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
        fx[32 + 16 * 3..32 + 16 * 3 + 8].copy_from_slice(&0x8000_0000_0000_1234u64.to_le_bytes());
        fx[32 + 16 * 3 + 8..32 + 16 * 3 + 10].copy_from_slice(&0x3fffu16.to_le_bytes());
        let (regs, fcw) = x87_of_fxsave(&fx);
        assert_eq!(fcw, 0x027f);
        assert_eq!(regs[3], X87Reg { significand: 0x8000_0000_0000_1234, sign_exp: 0x3fff });
        assert_eq!(regs[2], X87Reg::default());
    }
}
