//! Loading an ELF program into a ring-3 address space.

use super::*;

pub(super) fn load_elf(space: &mut AddressSpace, frames: &mut alloc::collections::BTreeSet<u64>, elf: &[u8]) -> Result<u64, SpawnError> {
    let rd = |o: usize, n: usize| -> Result<u64, SpawnError> {
        let b = elf.get(o..o.checked_add(n).ok_or(SpawnError::BadElf)?).ok_or(SpawnError::BadElf)?;
        Ok(b.iter().rev().fold(0u64, |a, x| (a << 8) | *x as u64))
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        return Err(SpawnError::BadElf);
    }
    let entry = rd(24, 8)?;
    let (phoff, phentsize, phnum) = (rd(32, 8)? as usize, rd(54, 2)? as usize, rd(56, 2)? as usize);
    for i in 0..phnum {
        let ph = i.checked_mul(phentsize).and_then(|x| x.checked_add(phoff)).ok_or(SpawnError::BadElf)?;
        if rd(ph, 4)? != 1 {
            continue;
        }
        let flags = rd(ph + 4, 4)?;
        let (off, vaddr, filesz, memsz) = (rd(ph + 8, 8)?, rd(ph + 16, 8)?, rd(ph + 32, 8)?, rd(ph + 40, 8)?);
        let seg = UserRange::covering_pages(vaddr, memsz).map_err(|_| SpawnError::BadElf)?;
        if !seg.within(0, 0x0000_7000_0000_0000) || filesz > memsz {
            return Err(SpawnError::BadElf);
        }
        for page in seg.page_starts() {
            let mut fr = memory::FreshFrame::alloc().map_err(|_| SpawnError::NoMemory)?;
            // Copy the part of [vaddr, vaddr+filesz) that falls in this page.
            let lo = page.max(vaddr);
            let hi = (page + 4096).min(vaddr + filesz);
            if lo < hi {
                let src = off.checked_add(lo - vaddr).ok_or(SpawnError::BadElf)? as usize;
                let data = elf.get(src..src.saturating_add((hi - lo) as usize)).ok_or(SpawnError::BadElf)?;
                fr.write((lo - page) as usize, data);
            }
            let phys = space.map_fresh_frame(page, fr, flags & 2 != 0, flags & 1 != 0).map_err(|_| SpawnError::BadElf)?;
            frames.insert(phys);
        }
    }
    Ok(entry)
}
