//! Instruction fetch and decode at guest RIP (iced-x86), for RIP advance and MMIO emulation.
//!
//! QEMU TCG's SVM has neither NRIPS nor decode assists, so for every exit that retires an
//! instruction the device model re-fetches the bytes at CS:RIP through the guest page tables,
//! decodes them with iced-x86 and advances RIP by the decoded length.

use crate::cpu::{GuestFault, Injection, VcpuState};
use crate::mem::GuestMemory;
use crate::paging::{fetch_instruction, fetch_instruction_bytes, WalkError};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Result of failing to get a decoded instruction at RIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Inject this exception (e.g. #PF on the fetch) and resume without advancing RIP.
    Inject(Injection, Option<u64>),
    /// End the VM.
    Fault(GuestFault),
}

/// Fetch and decode the instruction at CS:RIP.
pub fn decode_at_rip(cpu: &VcpuState, mem: &dyn GuestMemory) -> Result<(Instruction, [u8; 15]), FetchError> {
    let (bytes, n) = match fetch_instruction(cpu, mem) {
        Ok(x) => x,
        Err(WalkError::PageFault { addr, error_code }) => {
            return Err(FetchError::Inject(Injection::exception(14, Some(error_code)), Some(addr)))
        }
        Err(WalkError::NonCanonical { .. }) => return Err(FetchError::Inject(Injection::gp0(), None)),
        Err(WalkError::Memory(_)) => {
            return Err(FetchError::Fault(GuestFault::InstructionFetch { rip: cpu.rip }))
        }
    };
    let bitness = cpu.mode().bitness();
    let slice = bytes.get(..n).unwrap_or(&[]);
    let mut dec = Decoder::with_ip(bitness, slice, cpu.rip, DecoderOptions::NONE);
    let insn = dec.decode();
    if insn.is_invalid() || insn.len() == 0 || insn.len() > n {
        return Err(FetchError::Fault(GuestFault::InstructionFetch { rip: cpu.rip }));
    }
    Ok((insn, bytes))
}

/// Decode at RIP and check that the instruction is one of `expected` (guards against an exit
/// whose instruction was changed under us); returns its length.
pub fn length_of(
    cpu: &VcpuState,
    mem: &dyn GuestMemory,
    expected: &[Mnemonic],
    what: &'static str,
) -> Result<(u64, Instruction), FetchError> {
    let (insn, _) = decode_at_rip(cpu, mem)?;
    if !expected.contains(&insn.mnemonic()) {
        return Err(FetchError::Fault(GuestFault::InstructionMismatch { rip: cpu.rip, exit: what }));
    }
    Ok((insn.len() as u64, insn))
}

/// The length of the instruction at RIP for an exit that only needs it (CPUID, IN/OUT, HLT):
/// the common encodings are recognised from their first bytes (`fast_length`), everything
/// else goes through [`length_of`]. Same checks as `length_of` (the bytes must be the
/// instruction the exit claims), at a fraction of the cost: the null exit's device-model time
/// was mostly the 15-byte fetch and the iced decode (docs/vmm.md "Where exits go").
pub fn skip_length(cpu: &VcpuState, mem: &dyn GuestMemory, expected: &[Mnemonic], what: &'static str) -> Result<u64, FetchError> {
    if let Ok((bytes, n)) = fetch_instruction_bytes(cpu, mem, 3) {
        if let Some(len) = fast_length(bytes.get(..n).unwrap_or(&[]), expected) {
            return Ok(len);
        }
    }
    length_of(cpu, mem, expected, what).map(|(len, _)| len)
}

/// `Some(length)` when `bytes` start with an encoding of one of `expected` that means the same
/// in 16-, 32- and 64-bit code and has no prefix but an operand-size override: CPUID `0f a2`,
/// IN `e4 ib`/`e5 ib`/`ec`/`ed`, OUT `e6 ib`/`e7 ib`/`ee`/`ef` (each optionally after `66`),
/// HLT `f4`. `None` sends the caller to the full decoder. (Host-tested against iced-x86 for
/// every 3-byte input in every mode.)
pub fn fast_length(bytes: &[u8], expected: &[Mnemonic]) -> Option<u64> {
    let (prefix, rest) = match bytes.first() {
        Some(0x66) => (1u64, bytes.get(1..)?),
        _ => (0, bytes),
    };
    let (m, len) = match *rest.first()? {
        0x0f if prefix == 0 && rest.get(1) == Some(&0xa2) => (Mnemonic::Cpuid, 2),
        0xe4 | 0xe5 => (Mnemonic::In, 2),
        0xe6 | 0xe7 => (Mnemonic::Out, 2),
        0xec | 0xed => (Mnemonic::In, 1),
        0xee | 0xef => (Mnemonic::Out, 1),
        0xf4 if prefix == 0 => (Mnemonic::Hlt, 1),
        _ => return None,
    };
    // The immediate must have been fetched too.
    if rest.len() < len as usize || !expected.contains(&m) {
        return None;
    }
    Some(prefix + len)
}

/// A general-purpose register operand: encoding number (0..15), size in bytes, and whether it is
/// one of AH/CH/DH/BH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GprRef {
    pub num: usize,
    pub size: u8,
    pub high8: bool,
}

impl GprRef {
    pub fn from_iced(r: Register) -> Option<GprRef> {
        if !r.is_gpr() {
            return None;
        }
        let high8 = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
        let full = r.full_register();
        let num = full.number();
        if num > 15 {
            return None;
        }
        Some(GprRef { num, size: r.size() as u8, high8 })
    }
    pub fn read(&self, cpu: &VcpuState) -> u64 {
        let v = cpu.gpr(self.num);
        if self.high8 {
            return (v >> 8) & 0xff;
        }
        match self.size {
            1 => v & 0xff,
            2 => v & 0xffff,
            4 => v & 0xffff_ffff,
            _ => v,
        }
    }
    pub fn write(&self, cpu: &mut VcpuState, val: u64) {
        if self.high8 {
            let old = cpu.gpr(self.num);
            cpu.set_gpr(self.num, (old & !0xff00) | ((val & 0xff) << 8));
        } else {
            cpu.write_gpr_sized(self.num, self.size, val);
        }
    }
}

/// How a load's value is extended into the destination register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extend {
    None,
    Zero,
    Sign,
}

/// An emulatable MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// Read `size` bytes from the device into `dst` (with extension).
    Load { size: u8, dst: GprRef, extend: Extend },
    /// Write `size` bytes of `value` to the device.
    Store { size: u8, value: u64 },
}

impl MmioOp {
    pub fn size(&self) -> u8 {
        match *self {
            MmioOp::Load { size, .. } | MmioOp::Store { size, .. } => size,
        }
    }
    pub fn is_write(&self) -> bool {
        matches!(self, MmioOp::Store { .. })
    }
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

fn sign_extend(v: u64, from: u8) -> u64 {
    match from {
        1 => v as u8 as i8 as i64 as u64,
        2 => v as u16 as i16 as i64 as u64,
        4 => v as u32 as i32 as i64 as u64,
        _ => v,
    }
}

/// Classify a decoded instruction as an MMIO access. Supports MOV r/m<->reg (1/2/4/8 bytes,
/// including the moffs forms), MOV r/m, imm, MOVZX, MOVSX and MOVSXD loads. Anything else is
/// `None` (the caller stops the VM).
pub fn classify_mmio(insn: &Instruction, cpu: &VcpuState) -> Option<MmioOp> {
    if insn.op_count() != 2 {
        return None;
    }
    let k0 = insn.op_kind(0);
    let k1 = insn.op_kind(1);
    let msize = insn.memory_size().size();
    if !matches!(msize, 1 | 2 | 4 | 8) {
        return None;
    }
    let msize = msize as u8;
    match insn.mnemonic() {
        Mnemonic::Mov => {
            if k0 == OpKind::Memory {
                match k1 {
                    OpKind::Register => {
                        let src = GprRef::from_iced(insn.op_register(1))?;
                        if src.size != msize {
                            return None;
                        }
                        Some(MmioOp::Store { size: msize, value: src.read(cpu) })
                    }
                    OpKind::Immediate8
                    | OpKind::Immediate16
                    | OpKind::Immediate32
                    | OpKind::Immediate32to64
                    | OpKind::Immediate8to16
                    | OpKind::Immediate8to32
                    | OpKind::Immediate8to64 => {
                        Some(MmioOp::Store { size: msize, value: insn.immediate(1) & mask(msize) })
                    }
                    _ => None,
                }
            } else if k1 == OpKind::Memory && k0 == OpKind::Register {
                let dst = GprRef::from_iced(insn.op_register(0))?;
                if dst.size != msize {
                    return None;
                }
                Some(MmioOp::Load { size: msize, dst, extend: Extend::None })
            } else {
                None
            }
        }
        Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
            if k0 != OpKind::Register || k1 != OpKind::Memory {
                return None;
            }
            let dst = GprRef::from_iced(insn.op_register(0))?;
            let extend = if insn.mnemonic() == Mnemonic::Movzx || insn.code() == Code::Movsxd_r16_rm16 {
                Extend::Zero
            } else {
                Extend::Sign
            };
            if msize > dst.size {
                return None;
            }
            Some(MmioOp::Load { size: msize, dst, extend })
        }
        _ => None,
    }
}

/// Complete an MMIO load: write `value` (already `size` bytes wide) into the destination.
pub fn complete_load(cpu: &mut VcpuState, op: &MmioOp, value: u64) {
    if let MmioOp::Load { size, dst, extend } = *op {
        let v = value & mask(size);
        let v = match extend {
            Extend::None | Extend::Zero => v,
            Extend::Sign => sign_extend(v, size),
        };
        dst.write(cpu, v);
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    const SETS: [&[Mnemonic]; 4] = [&[Mnemonic::Cpuid], &[Mnemonic::In], &[Mnemonic::Out], &[Mnemonic::Hlt]];

    /// Every 3-byte start (the third byte from a spread of values) in every mode: whenever
    /// the fast path answers, iced-x86 decodes the same bytes as that instruction with that
    /// length.
    #[test]
    fn fast_length_agrees_with_iced_everywhere() {
        let mut answered = 0u32;
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                for b2 in [0x00u8, 0x60, 0xa2, 0xec, 0xf4, 0xff] {
                    let bytes = [b0, b1, b2];
                    for set in SETS {
                        let Some(len) = fast_length(&bytes, set) else { continue };
                        answered += 1;
                        for bitness in [16, 32, 64] {
                            let mut buf = [0x90u8; 15];
                            buf[..3].copy_from_slice(&bytes);
                            let insn = Decoder::with_ip(bitness, &buf, 0, DecoderOptions::NONE).decode();
                            assert!(!insn.is_invalid(), "{bytes:02x?} in {bitness}-bit");
                            assert_eq!(insn.len() as u64, len, "{bytes:02x?} in {bitness}-bit");
                            assert!(set.contains(&insn.mnemonic()), "{bytes:02x?} in {bitness}-bit is {:?}", insn.mnemonic());
                        }
                    }
                }
            }
        }
        assert!(answered > 0);
    }

    /// The forms Linux and the test guests use take the fast path (and nothing else claims
    /// them); a truncated immediate or another mnemonic falls back to the decoder.
    #[test]
    fn common_exit_instructions_take_the_fast_path() {
        assert_eq!(fast_length(&[0x0f, 0xa2, 0x90], &[Mnemonic::Cpuid]), Some(2));
        assert_eq!(fast_length(&[0xec, 0x90, 0x90], &[Mnemonic::In]), Some(1));
        assert_eq!(fast_length(&[0xee, 0x90, 0x90], &[Mnemonic::Out]), Some(1));
        assert_eq!(fast_length(&[0x66, 0xef, 0x90], &[Mnemonic::Out]), Some(2));
        assert_eq!(fast_length(&[0xe6, 0x80, 0x90], &[Mnemonic::Out]), Some(2));
        assert_eq!(fast_length(&[0x66, 0xe5, 0x40], &[Mnemonic::In]), Some(3));
        assert_eq!(fast_length(&[0xf4, 0x90, 0x90], &[Mnemonic::Hlt]), Some(1));
        assert_eq!(fast_length(&[0xe6], &[Mnemonic::Out]), None);
        assert_eq!(fast_length(&[0xee, 0x90, 0x90], &[Mnemonic::In]), None);
        assert_eq!(fast_length(&[0x66, 0x0f, 0xa2], &[Mnemonic::Cpuid]), None);
        assert_eq!(fast_length(&[0xf3, 0xee, 0x90], &[Mnemonic::Out]), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::*;
    use crate::mem::VecMemory;

    fn cpu64() -> VcpuState {
        let mut c = VcpuState::new();
        c.cr0 = CR0_PE;
        c.efer = EFER_LMA | EFER_LME;
        c.cs = Segment::flat(0x10, 0xb, false, true);
        c
    }
    fn cpu32() -> VcpuState {
        let mut c = VcpuState::new();
        c.cr0 = CR0_PE;
        c.cs = Segment::flat(0x10, 0xb, true, false);
        c
    }

    fn decode(c: &VcpuState, bytes: &[u8]) -> (Instruction, Option<MmioOp>) {
        let mut m = VecMemory::new(0x2000);
        m.as_mut_slice()[0x1000..0x1000 + bytes.len()].copy_from_slice(bytes);
        let mut c = c.clone();
        c.rip = 0x1000;
        let (i, _) = decode_at_rip(&c, &m).unwrap();
        let op = classify_mmio(&i, &c);
        (i, op)
    }

    #[test]
    fn mov_forms_64() {
        let mut c = cpu64();
        c.rax = 0x1122_3344_5566_7788;
        c.r9 = 0xdead_beef_cafe_f00d;
        // mov [rdi], eax
        let (i, op) = decode(&c, &[0x89, 0x07]);
        assert_eq!(i.len(), 2);
        assert_eq!(op, Some(MmioOp::Store { size: 4, value: 0x5566_7788 }));
        // mov [rdi+0x70], r9 (REX.W R)
        let (i, op) = decode(&c, &[0x4c, 0x89, 0x4f, 0x70]);
        assert_eq!(i.len(), 4);
        assert_eq!(op, Some(MmioOp::Store { size: 8, value: 0xdead_beef_cafe_f00d }));
        // mov eax, [rdi+0x100]  -> zero-extends to 64
        let (_, op) = decode(&c, &[0x8b, 0x87, 0x00, 0x01, 0x00, 0x00]);
        let op = op.unwrap();
        let mut c2 = c.clone();
        complete_load(&mut c2, &op, 0xffff_ffff_8000_0001);
        assert_eq!(c2.rax, 0x8000_0001);
        // mov al, [rdi] keeps upper bits
        let (_, op) = decode(&c, &[0x8a, 0x07]);
        let mut c2 = c.clone();
        complete_load(&mut c2, &op.unwrap(), 0xab);
        assert_eq!(c2.rax, 0x1122_3344_5566_77ab);
        // mov ah, [rdi]
        let (_, op) = decode(&c, &[0x8a, 0x27]);
        let mut c2 = c.clone();
        complete_load(&mut c2, &op.unwrap(), 0xcd);
        assert_eq!(c2.rax, 0x1122_3344_5566_cd88);
        // mov word [rdi], 0x1234 (66 c7 07 34 12)
        let (i, op) = decode(&c, &[0x66, 0xc7, 0x07, 0x34, 0x12]);
        assert_eq!(i.len(), 5);
        assert_eq!(op, Some(MmioOp::Store { size: 2, value: 0x1234 }));
        // mov qword [rdi], -1 (48 c7 07 ff ff ff ff) sign-extended imm32
        let (_, op) = decode(&c, &[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(op, Some(MmioOp::Store { size: 8, value: u64::MAX }));
        // movzx ecx, word [rdi]
        let (_, op) = decode(&c, &[0x0f, 0xb7, 0x0f]);
        let mut c2 = c.clone();
        c2.rcx = u64::MAX;
        complete_load(&mut c2, &op.unwrap(), 0x8001);
        assert_eq!(c2.rcx, 0x8001);
        // movsx rdx, byte [rdi]
        let (_, op) = decode(&c, &[0x48, 0x0f, 0xbe, 0x17]);
        let mut c2 = c.clone();
        complete_load(&mut c2, &op.unwrap(), 0x80);
        assert_eq!(c2.rdx, 0xffff_ffff_ffff_ff80);
        // mov rax, moffs64 (48 a1 + 8 bytes)
        let (i, op) = decode(&c, &[0x48, 0xa1, 0, 0, 0, 0xd0, 0, 0, 0, 0]);
        assert_eq!(i.len(), 10);
        assert!(matches!(op, Some(MmioOp::Load { size: 8, .. })));
        // add [rdi], eax is not emulated
        let (_, op) = decode(&c, &[0x01, 0x07]);
        assert_eq!(op, None);
        // rep movsb is not emulated
        let (_, op) = decode(&c, &[0xf3, 0xa4]);
        assert_eq!(op, None);
    }

    #[test]
    fn mov_forms_32_and_16() {
        let mut c = cpu32();
        c.rbx = 0x1234_5678;
        // mov [eax+4], ebx
        let (i, op) = decode(&c, &[0x89, 0x58, 0x04]);
        assert_eq!(i.len(), 3);
        assert_eq!(op, Some(MmioOp::Store { size: 4, value: 0x1234_5678 }));
        // 66 89 18: mov [eax], bx (16-bit)
        let (_, op) = decode(&c, &[0x66, 0x89, 0x18]);
        assert_eq!(op, Some(MmioOp::Store { size: 2, value: 0x5678 }));
        // in 32-bit mode 0x48 is DEC eax, not REX
        let (i, _) = decode(&c, &[0x48, 0x89, 0x18]);
        assert_eq!(i.len(), 1);
        // real mode: 89 18 is mov [bx+si], bx
        let mut r = VcpuState::new();
        r.cs = Segment::real(0, 0xb);
        r.rbx = 0xabcd;
        let (i, op) = decode(&r, &[0x89, 0x18]);
        assert_eq!(i.len(), 2);
        assert_eq!(op, Some(MmioOp::Store { size: 2, value: 0xabcd }));
    }

    #[test]
    fn garbage_and_truncated() {
        let c = cpu64();
        let mut m = VecMemory::new(0x1003);
        m.as_mut_slice()[0x1000..].copy_from_slice(&[0x48, 0xc7, 0x07]);
        let mut c = c;
        c.rip = 0x1000;
        assert!(decode_at_rip(&c, &m).is_err());
        c.rip = u64::MAX;
        assert!(decode_at_rip(&c, &m).is_err());
    }
}
