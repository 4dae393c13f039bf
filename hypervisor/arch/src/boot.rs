//! Boot handoff: the trampoline (`asm/boot.s`) calls the kernel with the protocol number and the
//! physical address of the protocol's boot information; this module turns that into the one
//! `BootInfo` (parsing lives in the safe `catenary-bootinfo` crate).

use catenary_bootinfo::{BootError, BootInfo, PhysRead};

pub const PROTO_PVH: u32 = 1;
pub const PROTO_MB2: u32 = 2;
pub const PROTO_LIMINE: u32 = 3;

pub use crate::paging::KERNEL_PHYS_DEFAULT;

/// Everything the kernel needs from the boot path.
pub struct Handoff {
    pub info: BootInfo,
    /// Physical address of the kernel image's first byte.
    pub kernel_phys: u64,
    /// Physical ranges that must never be handed out (boot structures still in use).
    pub keep: alloc::vec::Vec<(u64, u64)>,
}

#[derive(Debug)]
pub enum HandoffError {
    UnknownProtocol(u32),
    Boot(BootError),
}

/// Parse the boot information of `proto` found at `info` (physical).
pub fn handoff(proto: u32, info: u64) -> Result<Handoff, HandoffError> {
    let mem = crate::memory::PhysView::new();
    let mut keep = alloc::vec::Vec::new();
    let (bi, kernel_phys) = match proto {
        PROTO_PVH => (BootInfo::from_pvh(info, &mem).map_err(HandoffError::Boot)?, KERNEL_PHYS_DEFAULT),
        PROTO_MB2 => {
            // The MBI holds the RSDP copy the ACPI parser will read: keep it.
            let mut sz = [0u8; 4];
            mem.read(info, &mut sz).map_err(HandoffError::Boot)?;
            keep.push((info, u32::from_le_bytes(sz) as u64));
            (BootInfo::from_multiboot2(info, &mem).map_err(HandoffError::Boot)?, KERNEL_PHYS_DEFAULT)
        }
        #[cfg(feature = "kernel")]
        PROTO_LIMINE => crate::limine::handoff().map_err(HandoffError::Boot)?,
        p => return Err(HandoffError::UnknownProtocol(p)),
    };
    Ok(Handoff { info: bi, kernel_phys, keep })
}

/// Look for the ACPI RSDP in the BIOS area (0xe0000..0x100000) when the boot protocol gave none.
pub fn scan_rsdp() -> Option<u64> {
    let mem = crate::memory::PhysView::new();
    let mut buf = [0u8; 20];
    let mut a = 0xe0000u64;
    while a < 0x100000 {
        if mem.read(a, &mut buf[..8]).is_ok()
            && &buf[..8] == b"RSD PTR "
            && mem.read(a, &mut buf).is_ok()
            && buf.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
        {
            return Some(a);
        }
        a += 16;
    }
    None
}

/// The unmapped guard page below the boot stack (see `asm/boot.s`).
#[cfg(feature = "kernel")]
pub fn boot_stack_guard() -> u64 {
    extern "C" {
        static boot_stack_guard: u8;
    }
    core::ptr::addr_of!(boot_stack_guard) as u64
}
