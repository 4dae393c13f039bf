//! Loading an ELF program into a ring-3 address space.

use super::*;

pub(super) fn load_elf(space: &mut AddressSpace, frames: &mut Vec<u64>, elf: &[u8]) -> Result<u64, SpawnError> {
    let rd = |o: usize, n: usize| -> Result<u64, SpawnError> {
        let b = elf.get(o..o + n).ok_or(SpawnError::BadElf)?;
        Ok(b.iter().rev().fold(0u64, |a, x| (a << 8) | *x as u64))
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err(SpawnError::BadElf);
    }
    let entry = rd(24, 8)?;
    let (phoff, phentsize, phnum) = (rd(32, 8)? as usize, rd(54, 2)? as usize, rd(56, 2)? as usize);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if rd(ph, 4)? != 1 {
            continue;
        }
        let flags = rd(ph + 4, 4)?;
        let (off, vaddr, filesz, memsz) = (rd(ph + 8, 8)?, rd(ph + 16, 8)?, rd(ph + 32, 8)?, rd(ph + 40, 8)?);
        if vaddr >= 0x0000_7000_0000_0000 || filesz > memsz {
            return Err(SpawnError::BadElf);
        }
        let start = vaddr & !0xfff;
        let end = (vaddr + memsz + 0xfff) & !0xfff;
        let mut page = start;
        while page < end {
            let fr = memory::alloc_frame().map_err(|_| SpawnError::NoMemory)?;
            memory::zero_frame(fr);
            frames.push(fr);
            // Copy the part of [vaddr, vaddr+filesz) that falls in this page.
            let lo = page.max(vaddr);
            let hi = (page + 4096).min(vaddr + filesz);
            if lo < hi {
                let src = (off + (lo - vaddr)) as usize;
                let data = elf.get(src..src + (hi - lo) as usize).ok_or(SpawnError::BadElf)?;
                uspace::write_phys(fr + (lo - page), data);
            }
            space.map(page, fr, flags & 2 != 0, flags & 1 != 0).map_err(|_| SpawnError::NoMemory)?;
            page += 4096;
        }
    }
    Ok(entry)
}
