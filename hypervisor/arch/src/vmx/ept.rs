//! Extended page tables: guest-physical RAM onto the guest's 2 MiB host chunks.

use super::*;

// ---- EPT ----

pub(super) const EPT_RWX: u64 = 0x7;
pub(super) const EPT_WB: u64 = 6 << 3;
pub(super) const EPT_LARGE: u64 = 1 << 7;

/// Extended page tables mapping guest-physical RAM onto the GuestRam chunks with 2 MiB pages.
pub(super) struct Ept {
    pub(super) root: u64,
    pub(super) tables: Vec<u64>,
}

impl Ept {
    pub(super) fn build(ram: &GuestRam) -> Result<Ept, VirtError> {
        let root = zeroed_frame()?;
        let mut ept = Ept { root, tables: Vec::new() };
        for (i, &hpa) in ram.chunks().iter().enumerate() {
            let gpa = i as u64 * CHUNK;
            let pdpt = ept.next_level(root, (gpa >> 39) & 511)?;
            let pd = ept.next_level(pdpt, (gpa >> 30) & 511)?;
            // Only chunks the loader populated are mapped now; the rest on first access.
            if ram.is_populated(i) {
                ept.write_entry(pd, (gpa >> 21) & 511, hpa | EPT_RWX | EPT_WB | EPT_LARGE);
            }
        }
        Ok(ept)
    }
    /// Map chunk `idx` (not-present -> present: not-present EPT entries are never cached, so
    /// no INVEPT is needed). The table levels exist already, so this does not allocate.
    pub(super) fn map_chunk(&mut self, idx: usize, hpa: u64) -> Result<(), VirtError> {
        let gpa = idx as u64 * CHUNK;
        let pdpt = self.next_level(self.root, (gpa >> 39) & 511)?;
        let pd = self.next_level(pdpt, (gpa >> 30) & 511)?;
        self.write_entry(pd, (gpa >> 21) & 511, hpa | EPT_RWX | EPT_WB | EPT_LARGE);
        Ok(())
    }
    pub(super) fn entry_ptr(table: u64, idx: u64) -> *mut u64 {
        (crate::paging::p2v(table) + idx * 8) as *mut u64
    }
    pub(super) fn write_entry(&mut self, table: u64, idx: u64, v: u64) {
        // SAFETY: `table` is a page-table frame this Ept owns; idx < 512.
        unsafe { core::ptr::write_volatile(Self::entry_ptr(table, idx), v) }
    }
    pub(super) fn next_level(&mut self, table: u64, idx: u64) -> Result<u64, VirtError> {
        // SAFETY: as in write_entry.
        let e = unsafe { core::ptr::read_volatile(Self::entry_ptr(table, idx)) };
        if e & EPT_RWX != 0 {
            return Ok(e & 0x000f_ffff_ffff_f000);
        }
        let t = zeroed_frame()?;
        self.tables.push(t);
        self.write_entry(table, idx, t | EPT_RWX);
        Ok(t)
    }
    /// EPTP: write-back paging structures, 4-level walk.
    pub(super) fn eptp(&self) -> u64 {
        self.root | 6 | (3 << 3)
    }
}

impl Drop for Ept {
    fn drop(&mut self) {
        for &t in self.tables.iter().chain(core::iter::once(&self.root)) {
            // SAFETY: EPT frames only this Ept owns; its vCPU flushed what this EPT cached
            // (INVEPT) and cleared its VMCS in its own `drop` before the fields are dropped,
            // or (`new` failing) the tables were never used by a VM entry.
            let _ = unsafe { crate::memory::free_frame(t) };
        }
    }
}
