//! Process-context identifiers (CR4.PCIDE): each CPU keeps the TLB entries of the last
//! [`SLOTS`] user address spaces it ran, each under a PCID of its own, so loading one of them
//! again (a call and its reply, a task that blocked and woke, a CPU back from idle) does not
//! flush its translations. Where CPUID has no PCID, or global pages are off, nothing changes:
//! every CR3 write flushes as before (QEMU TCG offers no PCID; Bochs does).
//!
//! Why stale translations are never used (docs/microkernel.md, "PCID"):
//! - PCID 0 is the kernel's page tables (kernel tasks, idle, vCPU loops), whose user half is
//!   empty; PCIDs 1..=[`SLOTS`] are this CPU's slots, each naming a user space by its id
//!   (never reused, unlike a PML4's frame) and the space's TLB generation it was last flushed at.
//! - Every unmap in a space raises the space's generation. Loading a space whose slot holds an
//!   older generation, or that has no slot here (a slot taken from another space), writes CR3
//!   without the no-flush bit, which drops that PCID's entries and paging-structure caches.
//!   A CPU uses only the entries of its current PCID, so the entries a space left behind on a
//!   CPU cannot be reached before that CPU loads the space again.
//! - Ordering with an unmap on another CPU: the unmap raises the generation *before* it reads
//!   which CPUs have the space loaded, and `user_mem::activate` records the space as loaded
//!   *before* it reads the generation (all SeqCst). So either the unmapping CPU sees the space
//!   loaded there (a remote unmap: the frame waits for that CPU's full flush, as without
//!   PCIDs), or the loading CPU sees the new generation and flushes.
//! - A full flush (`cpu::flush_tlb_all`, the TLB epoch's catch-up) toggles CR4.PGE, which drops
//!   the entries of every PCID.
//! - Kernel-half mappings are not global pages, so each PCID may cache its own copy, and
//!   INVLPG drops only the current PCID's. That is why a kernel-half removal waits for every
//!   CPU's full flush (`memory::TLB_EPOCH`: a freed stack's address, a test page's frame) before
//!   the address or frame is used again, as it did for other CPUs before PCIDs.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// PCIDs a CPU gives to user spaces (1..=SLOTS).
pub const SLOTS: usize = 8;
/// CR3 bit 63: keep the entries of the PCID being loaded.
pub(crate) const NO_FLUSH: u64 = 1 << 63;
const CR4_PGE: u64 = 1 << 7;
const CR4_PCIDE: u64 = 1 << 17;

/// One CPU's PCID slots: which space each holds, at which TLB generation, and when it was last
/// used (the least recently used slot is given to a space that has none). Pure: host-tested.
#[derive(Debug, Clone)]
pub struct Slots {
    /// (space id, generation flushed at, last use); space id 0: free.
    slot: [(u64, u64, u64); SLOTS],
    clock: u64,
}

impl Default for Slots {
    fn default() -> Self {
        Self::new()
    }
}

impl Slots {
    pub const fn new() -> Slots {
        Slots { slot: [(0, 0, 0); SLOTS], clock: 0 }
    }

    /// The PCID to load space `space` (id ≠ 0) with, at TLB generation `gen`, and whether its
    /// entries must be flushed: always for a space new to this CPU (its slot may hold another
    /// space's entries) or whose generation moved since the slot was last flushed.
    pub fn load(&mut self, space: u64, gen: u64) -> (u16, bool) {
        self.clock += 1;
        let (i, flush) = match self.slot.iter().position(|s| s.0 == space) {
            Some(i) => (i, self.slot[i].1 != gen),
            None => {
                let lru = (0..SLOTS).min_by_key(|&i| self.slot[i].2).unwrap_or(0);
                (lru, true)
            }
        };
        self.slot[i] = (space, gen, self.clock);
        (i as u16 + 1, flush)
    }
}

static SLOTS_OF: [spin::Mutex<Slots>; crate::percpu::MAX_CPUS] = [const { spin::Mutex::new(Slots::new()) }; crate::percpu::MAX_CPUS];
/// Each CPU's last user-space load: PCID | flushed << 16 | 1 << 17 (0: none yet).
static LAST: [AtomicU64; crate::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::percpu::MAX_CPUS];
static WANTED: AtomicBool = AtomicBool::new(true);

/// Keep PCIDs off on CPUs that have not turned them on yet (the kernel command line's
/// `pcid=off`, read before the APs start): for A/B measurements.
pub fn disallow() {
    WANTED.store(false, Ordering::SeqCst);
}

/// Turn on CR4.PCIDE on this CPU where CPUID has PCID, global pages are on and the kernel's
/// tables are loaded with PCID 0. Returns whether PCIDs are on here.
pub fn enable_this_cpu() -> bool {
    let (_, _, ecx, _) = crate::cpu::cpuid(1, 0);
    let cr4 = crate::cpu::read_cr4();
    if cr4 & CR4_PCIDE != 0 {
        return true; // (on this CPU already: a second call)
    }
    if !WANTED.load(Ordering::SeqCst) || ecx & (1 << 17) == 0 || cr4 & CR4_PGE == 0 || crate::cpu::read_cr3() & 0xfff != 0 {
        return false;
    }
    // SAFETY: CPUID has PCID, the CPU is in long mode (the kernel runs 64-bit) and CR3[11:0]
    // is 0 (checked), so the write cannot fault; it changes no translation: the loaded tables
    // become PCID 0's. Global pages are on, so `cpu::flush_tlb_all` still drops every PCID.
    unsafe { x86_64::registers::control::Cr4::write_raw(cr4 | CR4_PCIDE) };
    true
}

/// Whether this CPU has PCIDs on.
pub fn on() -> bool {
    crate::cpu::read_cr4() & CR4_PCIDE != 0
}

/// The CR3 value that loads `pml4` for user space `space` at TLB generation `gen` on this CPU
/// (PCIDs on; interrupts off, so the CPU and its slots do not change under the caller).
pub(crate) fn user_cr3(pml4: u64, space: u64, gen: u64) -> u64 {
    let cpu = crate::percpu::cpu_index();
    let Some(slots) = SLOTS_OF.get(cpu) else { return pml4 };
    let (pcid, flush) = slots.lock().load(space, gen);
    if let Some(l) = LAST.get(cpu) {
        l.store(pcid as u64 | (flush as u64) << 16 | 1 << 17, Ordering::Relaxed);
    }
    pml4 | pcid as u64 | if flush { 0 } else { NO_FLUSH }
}

/// This CPU's last load of a user space with PCIDs on: (PCID, whether it was flushed). The
/// decision, not what the CPU did with it: a CPU may flush more than it is told (Bochs ignores
/// the no-flush bit). For the tests.
pub fn last_load() -> Option<(u16, bool)> {
    let v = LAST.get(crate::percpu::cpu_index())?.load(Ordering::Relaxed);
    (v & 1 << 17 != 0).then_some(((v & 0xffff) as u16, v & 1 << 16 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_keeps_its_pcid_and_flushes_only_when_its_generation_moved() {
        let mut s = Slots::new();
        assert_eq!(s.load(7, 0), (1, true), "new to this CPU: flushed");
        assert_eq!(s.load(9, 0), (2, true));
        assert_eq!(s.load(7, 0), (1, false), "back again, nothing unmapped: kept");
        assert_eq!(s.load(7, 1), (1, true), "an unmap since: flushed");
        assert_eq!(s.load(7, 1), (1, false));
        assert_eq!(s.load(9, 0), (2, false));
    }

    #[test]
    fn a_slot_given_to_another_space_is_flushed_and_the_least_recently_used_goes() {
        let mut s = Slots::new();
        for id in 1..=SLOTS as u64 {
            assert!(s.load(id, 5).1);
        }
        // Use every space but 3 again: 3 is now the least recently used.
        for id in (1..=SLOTS as u64).filter(|&i| i != 3) {
            assert!(!s.load(id, 5).1);
        }
        let (pcid, flush) = s.load(100, 5);
        assert_eq!((pcid, flush), (3, true), "space 3's slot (PCID 3) goes to the new space, flushed");
        // Space 3 comes back: it has no slot any more, so whatever it gets is flushed, even at
        // the generation it had.
        let (p, flush) = s.load(3, 5);
        assert!(flush && p != 3, "PCID {p} flush {flush}");
        // Every PCID handed out is 1..=SLOTS (0 is the kernel's).
        for id in 200..260 {
            let (p, _) = s.load(id, 0);
            assert!((1..=SLOTS as u16).contains(&p));
        }
    }
}
