//! PVH boot: Xen's `hvm_start_info` (public/arch-x86/hvm/start_info.h).
//!
//! Layout (all little-endian; a 0 address means "not present"):
//!
//! | off | field            | size |
//! |-----|------------------|------|
//! | 0   | magic 0x336ec578 | u32  |
//! | 4   | version          | u32  |
//! | 8   | flags            | u32  |
//! | 12  | nr_modules       | u32  |
//! | 16  | modlist_paddr    | u64  |
//! | 24  | cmdline_paddr    | u64  |
//! | 32  | rsdp_paddr       | u64  |
//! | 40  | memmap_paddr     | u64  (version >= 1) |
//! | 48  | memmap_entries   | u32  (version >= 1) |
//! | 52  | reserved         | u32  |
//!
//! Module list entry (32 bytes): paddr u64, size u64, cmdline_paddr u64, reserved u64.
//! Memory map entry (24 bytes): addr u64, size u64, type u32, reserved u32, with types
//! 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable, 6 disabled, 7 pmem.

use crate::mem::{le32, le64, read_cstr, read_u32, read_vec};
use crate::{
    add, BootError, BootInfo, BootProtocol, MemoryKind, MemoryRegion, Module, PhysRead,
    MAX_MEMMAP_ENTRIES, MAX_MODULES,
};
use alloc::string::String;
use alloc::vec::Vec;

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
const HEADER_V0: u64 = 40;
const HEADER_V1: u64 = 56;
const MODLIST_ENTRY: u64 = 32;
const MEMMAP_ENTRY: u64 = 24;

fn pvh_kind(ty: u32) -> MemoryKind {
    match ty {
        1 => MemoryKind::Usable,
        3 => MemoryKind::AcpiReclaimable,
        4 => MemoryKind::AcpiNvs,
        5 => MemoryKind::BadMemory,
        _ => MemoryKind::Reserved,
    }
}

impl BootInfo {
    /// Parses a PVH `hvm_start_info` at `start_info_paddr` (the value of `%ebx` at the PVH
    /// entry point). Requires structure version >= 1 (the version carrying the memory map; QEMU
    /// and Xen provide it). The start-info structure, module list and memory map table are
    /// marked `BootloaderReclaimable`; module ranges become `KernelAndModules`. The result is
    /// normalised.
    pub fn from_pvh(start_info_paddr: u64, mem: &impl PhysRead) -> Result<BootInfo, BootError> {
        if !start_info_paddr.is_multiple_of(8) {
            return Err(BootError::Unaligned {
                paddr: start_info_paddr,
            });
        }
        let magic = read_u32(mem, start_info_paddr)?;
        if magic != PVH_MAGIC {
            return Err(BootError::BadMagic {
                found: magic.into(),
            });
        }
        let version = read_u32(mem, add(start_info_paddr, 4)?)?;
        let hdr_len = if version >= 1 { HEADER_V1 } else { HEADER_V0 };
        let h = read_vec(mem, start_info_paddr, hdr_len, HEADER_V1)?;
        let nr_modules = le32(&h, 12);
        let modlist_paddr = le64(&h, 16);
        let cmdline_paddr = le64(&h, 24);
        let rsdp_paddr = le64(&h, 32);
        if version < 1 {
            return Err(BootError::NoMemoryMap);
        }
        let memmap_paddr = le64(&h, 40);
        let memmap_entries = le32(&h, 48);

        let mut info = BootInfo::empty(BootProtocol::Pvh);
        info.rsdp = (rsdp_paddr != 0).then_some(rsdp_paddr);
        info.cmdline = if cmdline_paddr != 0 {
            read_cstr(mem, cmdline_paddr)?
        } else {
            String::new()
        };

        // Memory map.
        if memmap_paddr == 0 || memmap_entries == 0 {
            return Err(BootError::NoMemoryMap);
        }
        if memmap_entries as usize > MAX_MEMMAP_ENTRIES {
            return Err(BootError::TooMany {
                what: "memory map entries",
                count: memmap_entries.into(),
            });
        }
        let table_len = u64::from(memmap_entries) * MEMMAP_ENTRY;
        let table = read_vec(mem, memmap_paddr, table_len, table_len)?;
        let mut map = Vec::with_capacity(memmap_entries as usize + 4);
        for e in table.chunks_exact(MEMMAP_ENTRY as usize) {
            let (addr, size, ty) = (le64(e, 0), le64(e, 8), le32(e, 16));
            add(addr, size)?;
            map.push(MemoryRegion {
                start: addr,
                len: size,
                kind: pvh_kind(ty),
            });
        }
        info.memory_map = map;

        // Modules.
        if nr_modules as usize > MAX_MODULES {
            return Err(BootError::TooMany {
                what: "modules",
                count: nr_modules.into(),
            });
        }
        let mut reclaim = Vec::from([(start_info_paddr, hdr_len), (memmap_paddr, table_len)]);
        if nr_modules > 0 {
            if modlist_paddr == 0 {
                return Err(BootError::Malformed(
                    "modules present but modlist_paddr is 0",
                ));
            }
            let list_len = u64::from(nr_modules) * MODLIST_ENTRY;
            let list = read_vec(mem, modlist_paddr, list_len, list_len)?;
            reclaim.push((modlist_paddr, list_len));
            for e in list.chunks_exact(MODLIST_ENTRY as usize) {
                let (paddr, size, cmd) = (le64(e, 0), le64(e, 8), le64(e, 16));
                add(paddr, size)?;
                let name = if cmd != 0 {
                    read_cstr(mem, cmd)?
                } else {
                    String::new()
                };
                info.modules.push(Module {
                    start: paddr,
                    len: size,
                    name,
                });
            }
        }

        info.normalize();
        for (s, l) in reclaim {
            info.reserve(s, l, MemoryKind::BootloaderReclaimable);
        }
        Ok(info)
    }
}
