//! ACPI: maps firmware tables for the `acpi` crate through the direct map, and summarises the
//! MADT (CPUs, local APIC address, IOAPICs).

use alloc::vec::Vec;
use acpi::AcpiTable;
use core::ptr::NonNull;

#[derive(Clone)]
pub(crate) struct DirectMapHandler;

impl acpi::AcpiHandler for DirectMapHandler {
    unsafe fn map_physical_region<T>(&self, physical_address: usize, size: usize) -> acpi::PhysicalMapping<Self, T> {
        // Firmware tables only: never memory the frame allocator manages (a wild table pointer
        // would otherwise alias kernel objects others are writing).
        assert!(crate::memory::firmware_readable(physical_address as u64, size as u64), "ACPI table at {physical_address:#x} in allocator-managed memory");
        let virt = crate::paging::p2v(physical_address as u64) as *mut T;
        // SAFETY: the region is not allocator-managed (checked above: firmware or boot data no
        // Rust code writes), the direct map covers the memory map's firmware table regions, and
        // the acpi crate only reads through the mapping.
        unsafe {
            acpi::PhysicalMapping::new(
                physical_address,
                NonNull::new(virt).expect("direct map address is never null"),
                size,
                size,
                self.clone(),
            )
        }
    }
    fn unmap_physical_region<T>(_region: &acpi::PhysicalMapping<Self, T>) {}
}

#[derive(Debug, Clone)]
pub struct CpuEntry {
    pub uid: u32,
    pub apic_id: u32,
    pub is_bsp: bool,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct IoApicEntry {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Debug, Clone)]
pub struct PlatformSummary {
    pub oem_id: alloc::string::String,
    pub revision: u8,
    pub local_apic_address: u64,
    pub cpus: Vec<CpuEntry>,
    pub ioapics: Vec<IoApicEntry>,
    pub has_legacy_pics: bool,
}

#[derive(Debug)]
pub enum AcpiProblem {
    Tables(acpi::AcpiError),
    NotApic,
    /// The RSDP address lies in memory the frame allocator manages (not a firmware table).
    NotFirmware,
}

/// Parse RSDP → XSDT/RSDT → MADT. An `rsdp` in allocator-managed memory is refused; a table
/// pointer into it stops the CPU (`DirectMapHandler`) rather than reading kernel objects.
pub fn parse(rsdp: u64) -> Result<PlatformSummary, AcpiProblem> {
    if !crate::memory::firmware_readable(rsdp, 36) {
        return Err(AcpiProblem::NotFirmware);
    }
    // SAFETY: `from_rsdp` reads through `DirectMapHandler`, which maps only non-allocator
    // memory covered by the direct map (checked per mapping); the crate validates signatures
    // and checksums, and only reads.
    let tables = unsafe { acpi::AcpiTables::from_rsdp(DirectMapHandler, rsdp as usize) }.map_err(AcpiProblem::Tables)?;
    let revision = tables.revision();
    let oem_id = tables
        .find_table::<acpi::fadt::Fadt>()
        .ok()
        .map(|f| alloc::string::String::from_utf8_lossy(&f.header().oem_id).into_owned())
        .unwrap_or_default();
    // The `acpi` crate's PlatformInfo needs the nightly allocator_api; walk the MADT directly.
    let madt = tables.find_table::<acpi::madt::Madt>().map_err(AcpiProblem::Tables)?;
    let local_apic_address = { madt.get().local_apic_address } as u64;
    let has_legacy_pics = madt.get().supports_8259();
    let mut cpus: Vec<CpuEntry> = Vec::new();
    let mut ioapics = Vec::new();
    let mut lapic_override = None;
    for e in madt.get().entries() {
        match e {
            acpi::madt::MadtEntry::LocalApic(l) => {
                let flags = { l.flags };
                cpus.push(CpuEntry { uid: l.processor_id as u32, apic_id: l.apic_id as u32, is_bsp: false, enabled: flags & 3 != 0 })
            }
            acpi::madt::MadtEntry::LocalX2Apic(l) => {
                let flags = { l.flags };
                let (uid, id) = ({ l.processor_uid }, { l.x2apic_id });
                if !cpus.iter().any(|c| c.apic_id == id) {
                    cpus.push(CpuEntry { uid, apic_id: id, is_bsp: false, enabled: flags & 3 != 0 })
                }
            }
            acpi::madt::MadtEntry::IoApic(i) => ioapics.push(IoApicEntry {
                id: i.io_apic_id,
                address: { i.io_apic_address },
                gsi_base: { i.global_system_interrupt_base },
            }),
            acpi::madt::MadtEntry::LocalApicAddressOverride(o) => lapic_override = Some(o.local_apic_address),
            _ => {}
        }
    }
    if cpus.is_empty() {
        return Err(AcpiProblem::NotApic);
    }
    let bsp_id = crate::cpu::cpuid(1, 0).1 >> 24;
    for c in cpus.iter_mut() {
        c.is_bsp = c.apic_id == bsp_id;
    }
    let local_apic_address = lapic_override.unwrap_or(local_apic_address);
    Ok(PlatformSummary {
        oem_id,
        revision,
        local_apic_address,
        cpus,
        ioapics,
        has_legacy_pics,
    })
}
