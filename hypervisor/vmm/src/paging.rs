//! A safe guest page-table walker over [`GuestMemory`].
//!
//! Supports: paging off (real / flat protected mode), 32-bit 2-level paging (4 KiB and, with
//! CR4.PSE, 4 MiB pages incl. PSE-36), PAE (3-level, 2 MiB pages) and long mode 4-level and
//! 5-level (CR4.LA57) paging with 2 MiB / 1 GiB pages. The walker only reads; it does not set
//! accessed/dirty bits (the accesses the device model performs are either re-fetches of an
//! instruction the CPU already executed, or emulated string I/O).

use crate::cpu::*;
use crate::mem::{GuestMemory, GuestMemoryExt, MemError};

/// What kind of access is being translated (for permission checks and the #PF error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access {
    pub write: bool,
    pub fetch: bool,
    /// CPL 3 access.
    pub user: bool,
}

/// Translation failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// The guest would take #PF with this error code at this linear address (CR2).
    PageFault { addr: u64, error_code: u32 },
    /// Non-canonical address in long mode (#GP(0)).
    NonCanonical { addr: u64 },
    /// A paging structure lies outside guest RAM.
    Memory(MemError),
}

impl From<MemError> for WalkError {
    fn from(e: MemError) -> Self {
        WalkError::Memory(e)
    }
}

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const PF_P: u32 = 1 << 0;
const PF_W: u32 = 1 << 1;
const PF_U: u32 = 1 << 2;
const PF_I: u32 = 1 << 4;

/// Tracks the combined permissions across levels.
struct Perm {
    rw: bool,
    us: bool,
    nx: bool,
}

impl Perm {
    fn add(&mut self, e: u64) {
        self.rw &= e & PTE_RW != 0;
        self.us &= e & PTE_US != 0;
        self.nx |= e & PTE_NX != 0;
    }
}

fn pf(addr: u64, acc: Access, present: bool) -> WalkError {
    let mut ec = 0;
    if present {
        ec |= PF_P;
    }
    if acc.write {
        ec |= PF_W;
    }
    if acc.user {
        ec |= PF_U;
    }
    if acc.fetch {
        ec |= PF_I;
    }
    WalkError::PageFault { addr, error_code: ec }
}

fn check(cpu: &VcpuState, la: u64, acc: Access, p: &Perm) -> Result<(), WalkError> {
    if acc.user && !p.us {
        return Err(pf(la, acc, true));
    }
    if acc.write && !p.rw && (acc.user || cpu.cr0 & CR0_WP != 0) {
        return Err(pf(la, acc, true));
    }
    if acc.fetch && p.nx && cpu.efer & EFER_NXE != 0 {
        return Err(pf(la, acc, true));
    }
    Ok(())
}

/// Translate linear address `la` to a guest-physical address.
pub fn translate(
    cpu: &VcpuState,
    mem: &dyn GuestMemory,
    la: u64,
    acc: Access,
) -> Result<u64, WalkError> {
    if !cpu.paging() {
        // Paging off: linear == physical (32-bit wrap outside long mode is the caller's job).
        return Ok(la);
    }
    let mut perm = Perm { rw: true, us: true, nx: false };
    if cpu.efer & EFER_LMA != 0 {
        let la57 = cpu.cr4 & CR4_LA57 != 0;
        let bits = if la57 { 57 } else { 48 };
        let sext = ((la << (64 - bits)) as i64 >> (64 - bits)) as u64;
        if sext != la {
            return Err(WalkError::NonCanonical { addr: la });
        }
        let levels = if la57 { 5 } else { 4 };
        let mut table = cpu.cr3 & ADDR_MASK;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let idx = (la >> shift) & 0x1ff;
            let e = mem.read_u64(table + idx * 8)?;
            if e & PTE_P == 0 {
                return Err(pf(la, acc, false));
            }
            perm.add(e);
            if level == 1 || ((level == 2 || level == 3) && e & PTE_PS != 0) {
                check(cpu, la, acc, &perm)?;
                let page_mask = (1u64 << shift) - 1;
                let base = e & ADDR_MASK & !page_mask;
                return Ok(base | (la & page_mask));
            }
            table = e & ADDR_MASK;
        }
        // Not reached: level 1 always returns above.
        Err(pf(la, acc, false))
    } else if cpu.cr4 & CR4_PAE != 0 {
        let la = la & 0xffff_ffff;
        let pdpt = cpu.cr3 & 0xffff_ffe0;
        let pdpte = mem.read_u64(pdpt + ((la >> 30) & 3) * 8)?;
        if pdpte & PTE_P == 0 {
            return Err(pf(la, acc, false));
        }
        let pde = mem.read_u64((pdpte & ADDR_MASK) + ((la >> 21) & 0x1ff) * 8)?;
        if pde & PTE_P == 0 {
            return Err(pf(la, acc, false));
        }
        perm.add(pde);
        if pde & PTE_PS != 0 {
            check(cpu, la, acc, &perm)?;
            return Ok((pde & ADDR_MASK & !0x1f_ffff) | (la & 0x1f_ffff));
        }
        let pte = mem.read_u64((pde & ADDR_MASK) + ((la >> 12) & 0x1ff) * 8)?;
        if pte & PTE_P == 0 {
            return Err(pf(la, acc, false));
        }
        perm.add(pte);
        check(cpu, la, acc, &perm)?;
        Ok((pte & ADDR_MASK) | (la & 0xfff))
    } else {
        let la = la & 0xffff_ffff;
        let pd = cpu.cr3 & 0xffff_f000;
        let pde = mem.read_u32(pd + ((la >> 22) & 0x3ff) * 4)? as u64;
        if pde & PTE_P == 0 {
            return Err(pf(la, acc, false));
        }
        perm.add(pde);
        if pde & PTE_PS != 0 && cpu.cr4 & CR4_PSE != 0 {
            check(cpu, la, acc, &perm)?;
            // PSE-36: bits 20:13 of the PDE are physical bits 39:32.
            let base = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32);
            return Ok(base | (la & 0x3f_ffff));
        }
        let pte = mem.read_u32((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4)? as u64;
        if pte & PTE_P == 0 {
            return Err(pf(la, acc, false));
        }
        perm.add(pte);
        check(cpu, la, acc, &perm)?;
        Ok((pte & 0xffff_f000) | (la & 0xfff))
    }
}

/// Linear address of `seg:offset` in the current mode (segment base ignored in 64-bit mode
/// except for FS/GS, which the caller passes as `honour_base_in_64`). Offsets wrap to the
/// address size outside 64-bit mode.
pub fn linear(cpu: &VcpuState, seg: &Segment, offset: u64, honour_base_in_64: bool) -> u64 {
    match cpu.mode() {
        CpuMode::Long64 => {
            if honour_base_in_64 {
                seg.base.wrapping_add(offset)
            } else {
                offset
            }
        }
        CpuMode::Real | CpuMode::Virtual8086 => {
            (seg.base.wrapping_add(offset & 0xffff)) & 0xf_ffff_ffff
        }
        _ => (seg.base.wrapping_add(offset)) & 0xffff_ffff,
    }
}

/// Read `buf.len()` bytes at linear address `la`, translating page by page.
pub fn read_linear(
    cpu: &VcpuState,
    mem: &dyn GuestMemory,
    la: u64,
    buf: &mut [u8],
    acc: Access,
) -> Result<(), WalkError> {
    let mut done = 0usize;
    while done < buf.len() {
        let cur = la.wrapping_add(done as u64);
        let in_page = (0x1000 - (cur & 0xfff)) as usize;
        let n = core::cmp::min(in_page, buf.len() - done);
        let gpa = translate(cpu, mem, cur, acc)?;
        mem.read(gpa, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Write `buf` at linear address `la`, translating page by page. Every page is translated
/// before anything is written, so a fault leaves memory untouched.
pub fn write_linear(
    cpu: &VcpuState,
    mem: &mut dyn GuestMemory,
    la: u64,
    buf: &[u8],
    acc: Access,
) -> Result<(), WalkError> {
    let acc = Access { write: true, ..acc };
    // Two pages at most for the sizes we write (<= 4 KiB chunks); translate both first.
    let mut done = 0usize;
    while done < buf.len() {
        let cur = la.wrapping_add(done as u64);
        let in_page = (0x1000 - (cur & 0xfff)) as usize;
        let n = core::cmp::min(in_page, buf.len() - done);
        translate(cpu, mem, cur, acc)?;
        done += n;
    }
    done = 0;
    while done < buf.len() {
        let cur = la.wrapping_add(done as u64);
        let in_page = (0x1000 - (cur & 0xfff)) as usize;
        let n = core::cmp::min(in_page, buf.len() - done);
        let gpa = translate(cpu, mem, cur, acc)?;
        mem.write(gpa, &buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Fetch up to 15 instruction bytes at CS:RIP. Returns the bytes and how many could be read
/// (a fetch stops early at an unmapped page or the end of RAM; the decoder then decides whether
/// the shorter buffer still holds a whole instruction).
pub fn fetch_instruction(cpu: &VcpuState, mem: &dyn GuestMemory) -> Result<([u8; 15], usize), WalkError> {
    fetch_instruction_bytes(cpu, mem, 15)
}

/// Like [`fetch_instruction`], at most `max` (≤ 15) bytes: the exit fast path
/// (`insn::skip_length`) needs 3, and usually one page walk instead of two.
pub fn fetch_instruction_bytes(cpu: &VcpuState, mem: &dyn GuestMemory, max: usize) -> Result<([u8; 15], usize), WalkError> {
    let max = max.min(15);
    let la = linear(cpu, &cpu.cs, cpu.rip, false);
    let acc = Access { write: false, fetch: true, user: cpu.cpl == 3 };
    let mut buf = [0u8; 15];
    let mut got = 0usize;
    while got < max {
        let cur = la.wrapping_add(got as u64);
        let cur = if cpu.mode() == CpuMode::Long64 { cur } else { cur & 0xffff_ffff };
        let in_page = (0x1000 - (cur & 0xfff)) as usize;
        let n = core::cmp::min(in_page, max - got);
        let gpa = match translate(cpu, mem, cur, acc) {
            Ok(g) => g,
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        };
        // Read byte-wise at the end of RAM so a partially backed page still yields bytes.
        if mem.read(gpa, &mut buf[got..got + n]).is_err() {
            let mut k = 0;
            while k < n {
                let mut b = [0u8; 1];
                if mem.read(gpa.wrapping_add(k as u64), &mut b).is_err() {
                    break;
                }
                buf[got + k] = b[0];
                k += 1;
            }
            got += k;
            if got == 0 {
                return Err(WalkError::Memory(MemError::OutOfRange { gpa, len: n as u64 }));
            }
            break;
        }
        got += n;
    }
    Ok((buf, got))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::VecMemory;

    fn long_cpu(cr3: u64) -> VcpuState {
        let mut c = VcpuState::new();
        c.cr0 = CR0_PE | CR0_PG | CR0_WP;
        c.cr4 = CR4_PAE;
        c.efer = EFER_LME | EFER_LMA | EFER_NXE;
        c.cr3 = cr3;
        c.cs = Segment::flat(0x10, 0xb, false, true);
        c
    }

    #[test]
    fn long_mode_4k_2m_1g() {
        let mut m = VecMemory::new(0x100000);
        // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
        // la 0xffff_8000_0040_3123 -> pml4[256], pdpt[0], pd[2], pt[3].
        m.write_u64(0x1000 + 256 * 8, 0x2000 | 3).unwrap();
        m.write_u64(0x2000, 0x3000 | 3).unwrap();
        m.write_u64(0x3000 + 2 * 8, 0x4000 | 3).unwrap();
        m.write_u64(0x4000 + 3 * 8, 0x7_7000 | 1).unwrap();
        // pd[3]: 2M page at 0x4000_0000 (not RAM but translation is fine)
        m.write_u64(0x3000 + 3 * 8, 0x4000_0000 | 0x83).unwrap();
        // pdpt[1]: 1G page at 0x8000_0000
        m.write_u64(0x2000 + 8, 0x8000_0000 | 0x83 | PTE_NX).unwrap();
        let c = long_cpu(0x1000);
        let r = Access::default();
        assert_eq!(translate(&c, &m, 0xffff_8000_0040_3123, r).unwrap(), 0x7_7123);
        assert_eq!(translate(&c, &m, 0xffff_8000_0060_0010, r).unwrap(), 0x4000_0010);
        assert_eq!(translate(&c, &m, 0xffff_8000_4000_0010, r).unwrap(), 0x8000_0010);
        // write to read-only PTE with WP -> #PF P|W
        let w = Access { write: true, ..r };
        assert_eq!(
            translate(&c, &m, 0xffff_8000_0040_3000, w),
            Err(WalkError::PageFault { addr: 0xffff_8000_0040_3000, error_code: PF_P | PF_W })
        );
        // fetch from NX 1G page
        let f = Access { fetch: true, ..r };
        assert!(matches!(translate(&c, &m, 0xffff_8000_4000_0000, f), Err(WalkError::PageFault { .. })));
        // not present
        assert!(matches!(translate(&c, &m, 0x1000, r), Err(WalkError::PageFault { error_code: 0, .. })));
        // non-canonical
        assert!(matches!(translate(&c, &m, 0x0000_8000_0000_0000, r), Err(WalkError::NonCanonical { .. })));
        // table outside RAM
        let c2 = long_cpu(0xffff_0000);
        assert!(matches!(translate(&c2, &m, 0, r), Err(WalkError::Memory(_))));
    }

    #[test]
    fn pae_and_32bit() {
        let mut m = VecMemory::new(0x100000);
        let mut c = VcpuState::new();
        c.cr0 = CR0_PE | CR0_PG;
        c.cr4 = CR4_PAE;
        c.cr3 = 0x1020; // 32-byte aligned PDPT
        c.cs = Segment::flat(0x10, 0xb, true, false);
        m.write_u64(0x1020 + 3 * 8, 0x2000 | 1).unwrap(); // pdpt[3]
        m.write_u64(0x2000 + 8, 0x3000 | 3).unwrap(); // pd[1] -> PT
        m.write_u64(0x3000 + 5 * 8, 0x9000 | 3).unwrap();
        m.write_u64(0x2000 + 2 * 8, 0x60_0000 | 0x83).unwrap(); // 2M
        assert_eq!(translate(&c, &m, 0xc020_5abc, Access::default()).unwrap(), 0x9abc);
        assert_eq!(translate(&c, &m, 0xc041_0000, Access::default()).unwrap(), 0x61_0000);
        // 32-bit non-PAE with PSE 4M page
        let mut c = VcpuState::new();
        c.cr0 = CR0_PE | CR0_PG;
        c.cr4 = CR4_PSE;
        c.cr3 = 0x5000;
        m.write_u32(0x5000 + 0x300 * 4, 0x0040_0083).unwrap();
        m.write_u32(0x5000 + 0x301 * 4, 0x6000 | 3).unwrap();
        m.write_u32(0x6000 + 2 * 4, 0x8000 | 3).unwrap();
        assert_eq!(translate(&c, &m, 0xc012_3456, Access::default()).unwrap(), 0x52_3456);
        assert_eq!(translate(&c, &m, 0xc040_2010, Access::default()).unwrap(), 0x8010);
        // paging off
        c.cr0 = CR0_PE;
        assert_eq!(translate(&c, &m, 0x1234, Access::default()).unwrap(), 0x1234);
    }

    #[test]
    fn fetch_crosses_into_unmapped() {
        let mut m = VecMemory::new(0x10000);
        let mut c = VcpuState::new();
        c.cr0 = CR0_PE;
        c.cs = Segment::flat(8, 0xb, true, false);
        c.rip = 0xfffa; // 6 bytes left in RAM
        m.write(0xfffa, &[0x90; 6]).unwrap();
        let (b, n) = fetch_instruction(&c, &m).unwrap();
        assert_eq!(n, 6);
        assert_eq!(&b[..6], &[0x90; 6]);
        c.rip = 0x10000;
        assert!(fetch_instruction(&c, &m).is_err());
    }
}
