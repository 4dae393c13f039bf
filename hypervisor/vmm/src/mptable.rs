//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI (Linux with
//! `CONFIG_X86_MPPARSE`) learns its CPUs, its I/O APIC and how ISA IRQs reach it.
//!
//! [`write_mptable`] puts the floating pointer and the configuration table in the last KiB of
//! base memory ([`MPTABLE_GPA`], inside the E820-reserved 0x9fc00–0x100000, one of the places
//! Linux's `smp_scan_config` searches). Entries: one processor per vCPU (APIC ID = index, the
//! first the BSP), bus 0 "ISA", the I/O APIC, one I/O interrupt entry per ISA IRQ (IRQ 0 → pin
//! 2, as on PCs; the others to their own pin, edge or level as given), LINT0 = ExtINT, LINT1 =
//! NMI on every local APIC.
//!
//! A guest without the APICs (one vCPU, the 8259 only) gets [`write_pic_only_mptable`]: the
//! same layout with one processor and the I/O APIC marked unusable (flags 0: Linux does not
//! register it). Why a table at all: without one, Linux searches the whole BIOS area
//! 0xF0000–0xFFFFF for a floating pointer in 16-byte steps, each an `early_memremap` and unmap,
//! which cost ~24 ms of a ~0.8 s boot under nested TCG (docs/vmm.md "Where the boot's time
//! goes"); QEMU's firmware gives the direct reference a table, so its search stops here too.
//! With a table Linux reads the local APIC's ID and version registers even when CPUID has no
//! APIC, so such a guest's APIC page answers those reads (`devices::lapic::absent_apic_read`).

use crate::devices::ioapic::{IOAPIC_BASE, IOAPIC_VERSION};
use crate::devices::lapic::{APIC_DEFAULT_BASE, APIC_VERSION};
use crate::mem::{GuestMemory, MemError};
use alloc::vec::Vec;

/// Where the floating pointer goes; the configuration table follows it.
pub const MPTABLE_GPA: u64 = 0x9_fc00;
/// Most vCPUs a microVM can have.
pub const MAX_VCPUS: u8 = 8;

/// How one ISA IRQ is wired to the I/O APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaIrq {
    pub irq: u8,
    pub level_triggered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpTableError {
    /// vCPUs outside 1..=[`MAX_VCPUS`].
    BadCpuCount,
    /// An IRQ above 15 or given twice.
    BadIrq,
    Mem(MemError),
}

/// The I/O APIC's APIC ID in the table (after the vCPUs' IDs 0..n).
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// I/O APIC pin of an ISA IRQ (IRQ 0, the PIT, arrives on pin 2).
pub fn ioapic_pin(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)).wrapping_neg()
}

/// Build both structures for `cpus` vCPUs and the ISA IRQs in `irqs` (every other ISA IRQ gets
/// an edge-triggered entry too). Returns the bytes written at [`MPTABLE_GPA`].
pub fn build_mptable(cpus: u8, irqs: &[IsaIrq]) -> Result<Vec<u8>, MpTableError> {
    build(cpus, irqs, true)
}

/// The table of a one-vCPU guest without local or I/O APIC (see the module comment).
pub fn build_pic_only_mptable(irqs: &[IsaIrq]) -> Result<Vec<u8>, MpTableError> {
    build(1, irqs, false)
}

fn build(cpus: u8, irqs: &[IsaIrq], apics: bool) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MpTableError::BadCpuCount);
    }
    let mut seen = 0u16;
    for i in irqs {
        if i.irq > 15 || seen & (1 << i.irq) != 0 {
            return Err(MpTableError::BadIrq);
        }
        seen |= 1 << i.irq;
    }
    let io_id = ioapic_id(cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count = 0u16;
    for c in 0..cpus {
        let mut e = [0u8; 20];
        e[0] = 0; // processor
        e[1] = c; // local APIC ID
        e[2] = APIC_VERSION as u8;
        e[3] = 1 | if c == 0 { 2 } else { 0 }; // enabled, BSP
        e[4..8].copy_from_slice(&0x0006_00f0u32.to_le_bytes()); // family 6 signature
        // Feature flags as CPUID leaf 1 EDX has them: FPU, and APIC when there is one.
        let flags: u32 = if apics { 0x0000_0201 } else { 0x0000_0001 };
        e[8..12].copy_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // bus 0 = ISA
    count += 1;
    // The I/O APIC, usable (flags bit 0) only when the guest has one.
    let mut e = [2u8, io_id, IOAPIC_VERSION as u8, u8::from(apics), 0, 0, 0, 0];
    e[4..8].copy_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    entries.extend_from_slice(&e);
    count += 1;
    // (Listed with an unusable I/O APIC too: a table without I/O interrupt entries makes
    // Linux warn and make up ISA defaults.)
    for irq in 0..16u8 {
        // IRQ 2 is the 8259 cascade: no I/O APIC entry (pin 2 is the timer's).
        if irq == 2 {
            continue;
        }
        let level = irqs.iter().any(|i| i.irq == irq && i.level_triggered);
        // Flags: polarity active high (01), trigger edge (01 << 2) or level (11 << 2).
        let flags: u16 = if level { 0b1101 } else { 0b0101 };
        let f = flags.to_le_bytes();
        entries.extend_from_slice(&[3, 0, f[0], f[1], 0, irq, io_id, ioapic_pin(irq)]);
        count += 1;
    }
    // Local interrupts: LINT0 ExtINT (the 8259 in virtual-wire mode), LINT1 NMI, all APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_gpa = MPTABLE_GPA + 16;
    let mut hdr = [0u8; 44];
    hdr[0..4].copy_from_slice(b"PCMP");
    let len = u16::try_from(44 + entries.len()).map_err(|_| MpTableError::BadCpuCount)?;
    hdr[4..6].copy_from_slice(&len.to_le_bytes());
    hdr[6] = 4; // spec 1.4
    hdr[8..16].copy_from_slice(b"CATENARY");
    hdr[16..28].copy_from_slice(b"MICROVM     ");
    hdr[34..36].copy_from_slice(&count.to_le_bytes());
    hdr[36..40].copy_from_slice(&(APIC_DEFAULT_BASE as u32).to_le_bytes());
    let mut table = Vec::new();
    table.extend_from_slice(&hdr);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&(table_gpa as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4;
    // Feature bytes 0: the configuration table is present; IMCR absent (virtual wire).
    fp[10] = checksum(&fp);
    let mut out = Vec::new();
    out.extend_from_slice(&fp);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Build the tables and write them to guest memory at [`MPTABLE_GPA`].
pub fn write_mptable(mem: &mut dyn GuestMemory, cpus: u8, irqs: &[IsaIrq]) -> Result<(), MpTableError> {
    let t = build_mptable(cpus, irqs)?;
    mem.write(MPTABLE_GPA, &t).map_err(MpTableError::Mem)
}

/// [`build_pic_only_mptable`] written to guest memory at [`MPTABLE_GPA`].
pub fn write_pic_only_mptable(mem: &mut dyn GuestMemory, irqs: &[IsaIrq]) -> Result<(), MpTableError> {
    let t = build_pic_only_mptable(irqs)?;
    mem.write(MPTABLE_GPA, &t).map_err(MpTableError::Mem)
}
