//! Limine boot protocol: conversion of the boot loader's responses into a [`BootInfo`].
//!
//! Limine responses are read through the `limine` crate in the kernel glue (which needs the
//! request statics and pointer dereferences); the glue copies them into a [`LimineView`], a plain
//! value this crate can check and convert without `unsafe`, and which host tests build directly.
//!
//! Addresses: Limine pointers are HHDM-virtual (physical + HHDM offset). Module addresses and
//! the framebuffer address are always virtual and are converted to physical here. The RSDP
//! address changed meaning across base revisions (virtual before base revision 3, physical
//! from base revision 3 on); [`BootInfo::from_limine`] accepts either: a value at or above the
//! HHDM offset is treated as virtual and converted, a lower value is taken as physical.

use crate::{
    BootError, BootInfo, BootProtocol, Framebuffer, MemoryKind, MemoryRegion, Module,
    MAX_MEMMAP_ENTRIES, MAX_MODULES,
};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// A Limine module as `(address (HHDM-virtual), size, path, cmdline)`.
pub type LimineModule = (u64, u64, String, String);

/// Plain copy of the Limine responses the kernel uses. Build with `LimineView::default()` and
/// fill in what the boot loader answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimineView {
    /// Whether the boot loader supports the base revision the kernel requested.
    pub base_revision_supported: bool,
    /// Memory map entries as `(base, length, limine_type)` with the Limine types 0 usable,
    /// 1 reserved, 2 ACPI reclaimable, 3 ACPI NVS, 4 bad memory, 5 bootloader reclaimable,
    /// 6 executable and modules, 7 framebuffer; anything else (e.g. 8 "mapped reserved") is
    /// treated as reserved.
    pub memmap: Vec<(u64, u64, u64)>,
    /// HHDM offset (HHDM response), needed to convert virtual addresses.
    pub hhdm_offset: Option<u64>,
    /// RSDP address from the RSDP response, physical or HHDM-virtual (see the module docs).
    pub rsdp: Option<u64>,
    /// Modules (module response).
    pub modules: Vec<LimineModule>,
    /// The kernel command line (executable cmdline / kernel file response).
    pub cmdline: Option<String>,
    /// Physical load address of the kernel (executable address response).
    pub kernel_phys_base: Option<u64>,
    /// Virtual load address of the kernel (executable address response).
    pub kernel_virt_base: Option<u64>,
    /// Boot loader name (bootloader info response).
    pub bootloader_name: Option<String>,
    /// Boot loader version (bootloader info response).
    pub bootloader_version: Option<String>,
    /// Framebuffer with its address as given by Limine (HHDM-virtual); converted to physical.
    pub framebuffer: Option<Framebuffer>,
    /// MP response: `(ACPI processor id, local APIC id)` of every CPU, BSP included.
    pub mp_cpus: Vec<(u32, u32)>,
    /// MP response: the BSP's local APIC id.
    pub bsp_lapic_id: Option<u32>,
}

/// Most CPUs accepted from an MP response.
pub const MAX_CPUS: usize = 4096;

fn limine_kind(ty: u64) -> MemoryKind {
    match ty {
        0 => MemoryKind::Usable,
        2 => MemoryKind::AcpiReclaimable,
        3 => MemoryKind::AcpiNvs,
        4 => MemoryKind::BadMemory,
        5 => MemoryKind::BootloaderReclaimable,
        6 => MemoryKind::KernelAndModules,
        7 => MemoryKind::Framebuffer,
        _ => MemoryKind::Reserved,
    }
}

/// Converts an HHDM-virtual address to physical; errors if there is no HHDM or the address is
/// below it.
fn virt_to_phys(vaddr: u64, hhdm: Option<u64>, what: &'static str) -> Result<u64, BootError> {
    let hhdm = hhdm.ok_or(BootError::Malformed(
        "HHDM offset needed to convert addresses",
    ))?;
    vaddr.checked_sub(hhdm).ok_or(BootError::Malformed(what))
}

impl BootInfo {
    /// Converts Limine responses into a `BootInfo` (normalised). Fails if the base revision is
    /// unsupported, the memory map is missing, empty or too long, an entry overflows, or a
    /// virtual address cannot be converted (missing HHDM, address below the HHDM offset).
    pub fn from_limine(view: &LimineView) -> Result<BootInfo, BootError> {
        if !view.base_revision_supported {
            return Err(BootError::UnsupportedRevision);
        }
        if view.memmap.is_empty() {
            return Err(BootError::NoMemoryMap);
        }
        if view.memmap.len() > MAX_MEMMAP_ENTRIES {
            return Err(BootError::TooMany {
                what: "memory map entries",
                count: view.memmap.len() as u64,
            });
        }
        if view.modules.len() > MAX_MODULES {
            return Err(BootError::TooMany {
                what: "modules",
                count: view.modules.len() as u64,
            });
        }
        let mut info = BootInfo::empty(BootProtocol::Limine);
        for &(base, len, ty) in &view.memmap {
            base.checked_add(len).ok_or(BootError::AddressOverflow)?;
            info.memory_map.push(MemoryRegion {
                start: base,
                len,
                kind: limine_kind(ty),
            });
        }
        for (addr, size, path, cmdline) in &view.modules {
            let start = virt_to_phys(*addr, view.hhdm_offset, "module address below HHDM")?;
            start.checked_add(*size).ok_or(BootError::AddressOverflow)?;
            let name = if cmdline.is_empty() {
                path.clone()
            } else {
                cmdline.clone()
            };
            info.modules.push(Module {
                start,
                len: *size,
                name,
            });
        }
        info.rsdp = match (view.rsdp, view.hhdm_offset) {
            (Some(a), Some(h)) if a >= h => Some(a - h),
            (Some(0), _) => None,
            (a, _) => a,
        };
        if let Some(fb) = view.framebuffer {
            let addr = virt_to_phys(fb.addr, view.hhdm_offset, "framebuffer address below HHDM")?;
            info.framebuffer = Some(Framebuffer { addr, ..fb });
        }
        if view.mp_cpus.len() > MAX_CPUS {
            return Err(BootError::TooMany { what: "CPUs", count: view.mp_cpus.len() as u64 });
        }
        if !view.mp_cpus.is_empty() {
            let bsp = view.bsp_lapic_id.ok_or(BootError::Malformed("MP response without a BSP APIC id"))?;
            if !view.mp_cpus.iter().any(|&(_, l)| l == bsp) {
                return Err(BootError::Malformed("BSP missing from the MP response"));
            }
            for (i, &(processor_id, lapic_id)) in view.mp_cpus.iter().enumerate() {
                if view.mp_cpus[..i].iter().any(|&(_, l)| l == lapic_id) {
                    return Err(BootError::Malformed("duplicate APIC id in the MP response"));
                }
                info.cpus.push(crate::BootCpu { processor_id, lapic_id, is_bsp: lapic_id == bsp });
            }
        }
        info.cmdline = view.cmdline.clone().unwrap_or_default();
        info.bootloader = match (&view.bootloader_name, &view.bootloader_version) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (Some(n), None) => Some(n.clone()),
            (None, Some(v)) => Some(format!("Limine-compatible {v}")),
            (None, None) => None,
        };
        info.normalize();
        Ok(info)
    }
}
