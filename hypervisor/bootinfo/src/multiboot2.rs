//! Multiboot2 boot information (MBI).
//!
//! The MBI starts (8-aligned) with `total_size: u32, reserved: u32`, followed by tags, each
//! 8-aligned, each starting with `type: u32, size: u32` (size includes this header, excludes
//! padding). Tags used here:
//!
//! | type | tag | payload after the 8-byte header |
//! |------|-----|---------------------------------|
//! | 0 | end | — |
//! | 1 | boot command line | NUL-terminated string |
//! | 2 | boot loader name | NUL-terminated string |
//! | 3 | module | mod_start u32, mod_end u32 (exclusive), NUL-terminated string |
//! | 6 | memory map | entry_size u32, entry_version u32, entries {base u64, length u64, type u32, reserved u32} |
//! | 8 | framebuffer | addr u64, pitch u32, width u32, height u32, bpp u8, type u8, ... |
//! | 14 | ACPI old RSDP | copy of the RSDPv1 |
//! | 15 | ACPI new RSDP | copy of the RSDPv2 |
//!
//! Memory types: 1 available, 3 ACPI reclaimable, 4 ACPI NVS, 5 bad, anything else reserved.

use crate::mem::{bytes_to_string, le32, le64, read_u32, read_vec};
use crate::{
    add, BootError, BootInfo, BootProtocol, Framebuffer, MemoryKind, MemoryRegion, Module,
    PhysRead, MAX_MBI_SIZE, MAX_MEMMAP_ENTRIES, MAX_MODULES,
};
use alloc::vec::Vec;

/// The value in `%eax` at a Multiboot2 entry.
pub const MULTIBOOT2_BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_BOOTLOADER: u32 = 2;
const TAG_MODULE: u32 = 3;
const TAG_MMAP: u32 = 6;
const TAG_FRAMEBUFFER: u32 = 8;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;
const RSDP_V1_LEN: usize = 20;

fn mb2_kind(ty: u32) -> MemoryKind {
    match ty {
        1 => MemoryKind::Usable,
        3 => MemoryKind::AcpiReclaimable,
        4 => MemoryKind::AcpiNvs,
        5 => MemoryKind::BadMemory,
        _ => MemoryKind::Reserved,
    }
}

impl BootInfo {
    /// Parses the Multiboot2 information structure at `mbi_paddr` (the value of `%ebx`; the
    /// caller checks `%eax` == [`MULTIBOOT2_BOOTLOADER_MAGIC`]). The whole MBI is copied once
    /// (at most [`MAX_MBI_SIZE`] bytes), then parsed from the copy. The MBI range is marked
    /// `BootloaderReclaimable` (it holds the RSDP copy); module ranges become
    /// `KernelAndModules`. The result is normalised.
    pub fn from_multiboot2(mbi_paddr: u64, mem: &impl PhysRead) -> Result<BootInfo, BootError> {
        if !mbi_paddr.is_multiple_of(8) {
            return Err(BootError::Unaligned { paddr: mbi_paddr });
        }
        let total = read_u32(mem, mbi_paddr)?;
        if total > MAX_MBI_SIZE {
            return Err(BootError::TooMany {
                what: "MBI bytes",
                count: total.into(),
            });
        }
        if total < 16 {
            return Err(BootError::Malformed(
                "MBI total_size smaller than header and end tag",
            ));
        }
        let mbi = read_vec(mem, mbi_paddr, total.into(), MAX_MBI_SIZE.into())?;
        let mut info = BootInfo::empty(BootProtocol::Multiboot2);
        let mut map: Option<Vec<MemoryRegion>> = None;
        let (mut rsdp_old, mut rsdp_new) = (None, None);

        let mut off = 8usize;
        let mut saw_end = false;
        while off + 8 <= mbi.len() {
            let ty = le32(&mbi, off);
            let size = le32(&mbi, off + 4) as usize;
            if size < 8 {
                return Err(BootError::Malformed("MBI tag smaller than its header"));
            }
            let tag_end = off.checked_add(size).ok_or(BootError::AddressOverflow)?;
            let tag = mbi
                .get(off..tag_end)
                .ok_or(BootError::Malformed("MBI tag past total_size"))?;
            let body = &tag[8..];
            match ty {
                TAG_END => {
                    saw_end = true;
                    break;
                }
                TAG_CMDLINE => info.cmdline = bytes_to_string(body),
                TAG_BOOTLOADER => info.bootloader = Some(bytes_to_string(body)),
                TAG_MODULE => {
                    if body.len() < 8 {
                        return Err(BootError::Malformed("module tag too short"));
                    }
                    if info.modules.len() >= MAX_MODULES {
                        return Err(BootError::TooMany {
                            what: "modules",
                            count: info.modules.len() as u64 + 1,
                        });
                    }
                    let (start, end) = (le32(body, 0), le32(body, 4));
                    if end < start {
                        return Err(BootError::Malformed("module end before start"));
                    }
                    info.modules.push(Module {
                        start: start.into(),
                        len: u64::from(end - start),
                        name: bytes_to_string(&body[8..]),
                    });
                }
                TAG_MMAP => map = Some(parse_mmap(body)?),
                TAG_FRAMEBUFFER => {
                    // addr u64, pitch, width, height u32, bpp u8, type u8
                    if body.len() < 22 {
                        return Err(BootError::Malformed("framebuffer tag too short"));
                    }
                    // Type 2 is EGA text mode (width/height in characters): not a framebuffer.
                    if body[21] != 2 {
                        info.framebuffer = Some(Framebuffer {
                            addr: le64(body, 0),
                            pitch: le32(body, 8),
                            width: le32(body, 12),
                            height: le32(body, 16),
                            bpp: body[20],
                        });
                    }
                }
                TAG_ACPI_OLD | TAG_ACPI_NEW => {
                    if body.len() < RSDP_V1_LEN {
                        return Err(BootError::Malformed("ACPI RSDP tag too short"));
                    }
                    let paddr = add(mbi_paddr, off as u64 + 8)?;
                    if ty == TAG_ACPI_NEW {
                        rsdp_new = Some(paddr);
                    } else {
                        rsdp_old = Some(paddr);
                    }
                }
                _ => {}
            }
            // Next tag is 8-aligned; `tag_end <= mbi.len() <= MAX_MBI_SIZE`, so no overflow.
            off = (tag_end + 7) & !7;
        }
        if !saw_end {
            return Err(BootError::Malformed("MBI has no end tag"));
        }
        info.memory_map = map.ok_or(BootError::NoMemoryMap)?;
        info.rsdp = rsdp_new.or(rsdp_old);
        info.normalize();
        info.reserve(mbi_paddr, total.into(), MemoryKind::BootloaderReclaimable);
        Ok(info)
    }
}

fn parse_mmap(body: &[u8]) -> Result<Vec<MemoryRegion>, BootError> {
    if body.len() < 8 {
        return Err(BootError::Malformed("memory map tag too short"));
    }
    let entry_size = le32(body, 0) as usize;
    if entry_size < 24 || !entry_size.is_multiple_of(8) {
        return Err(BootError::Malformed(
            "memory map entry_size must be a multiple of 8, >= 24",
        ));
    }
    let entries = &body[8..];
    let count = entries.len() / entry_size;
    if count > MAX_MEMMAP_ENTRIES {
        return Err(BootError::TooMany {
            what: "memory map entries",
            count: count as u64,
        });
    }
    if count == 0 {
        return Err(BootError::NoMemoryMap);
    }
    let mut map = Vec::with_capacity(count + 4);
    for e in entries.chunks_exact(entry_size) {
        let (base, len, ty) = (le64(e, 0), le64(e, 8), le32(e, 16));
        add(base, len)?;
        map.push(MemoryRegion {
            start: base,
            len,
            kind: mb2_kind(ty),
        });
    }
    Ok(map)
}
