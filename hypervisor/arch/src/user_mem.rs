//! User address spaces and the one checked way into user memory.
//!
//! Every syscall argument that names user memory becomes a [`UserRange`] first: canonical,
//! inside the lower half, `start + len` computed without overflow. The [`AddressSpace`]
//! methods that take one check each page against the task's own page tables: present,
//! user-accessible, writable where written, and of the right *kind*. The kind lives in the
//! leaf entry's software bits, set when the kernel mapped the page:
//!
//! - [`PageKind::Ram`]: a frame the task owns (anonymous memory, its ELF image and stack,
//!   DMA memory), always RAM;
//! - [`PageKind::Grant`]: another task's RAM lent for one call (the grant window);
//! - [`PageKind::Mmio`]: device memory, never read or written by the kernel on the task's
//!   behalf (it is not in the direct map and reads may have side effects).
//!
//! Mapping an arbitrary physical address into user space can break memory safety (a task
//! could reach kernel data), so the raw mapping functions are `unsafe`; the kernel uses the
//! safe ones here, which either take a fresh frame token from the allocator
//! ([`AddressSpace::map_fresh_frame`], [`AddressSpace::map_dma`]), take a [`Lent`] token produced by the lender's own page tables
//! ([`AddressSpace::map_lent`]), or refuse every physical address that is RAM
//! ([`AddressSpace::map_device`]).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::paging::{
    mapper::TranslateResult, FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as F, PhysFrame,
    Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::memory::{FreshFrame, FreshRun};
use crate::paging::{p2v, GlobalFrames, PagingError, PAGE, PHYS_OFFSET};

/// Highest user address + 1 (the lower, canonical half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;

/// Why a user-memory request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserError {
    /// Not inside the user half (kernel or non-canonical address), or `start + len` overflows.
    OutOfRange,
    /// Not page-aligned where pages are required, or an empty range.
    Misaligned,
    /// A page in the range is not mapped (or not user-accessible).
    NotMapped,
    /// A page is mapped but of the wrong kind (MMIO where RAM is needed, a grant where an
    /// owned page is needed, RAM where a device address is needed).
    WrongKind,
    /// A page is read-only and the request writes.
    ReadOnly,
    /// Already mapped.
    Busy,
    /// No memory for a frame or a page table.
    NoMemory,
}

impl From<PagingError> for UserError {
    fn from(e: PagingError) -> Self {
        match e {
            PagingError::OutOfFrames => UserError::NoMemory,
            PagingError::AlreadyMapped | PagingError::HugePage => UserError::Busy,
            PagingError::NotMapped => UserError::NotMapped,
            PagingError::Misaligned => UserError::Misaligned,
            PagingError::NotDevice | PagingError::BadVector => UserError::WrongKind,
        }
    }
}

/// A range of user virtual addresses `[start, start + len)`, checked to lie in the user half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRange {
    start: u64,
    len: u64,
}

impl UserRange {
    /// Any byte range: `start + len <= USER_END`, no overflow.
    pub fn new(start: u64, len: u64) -> Result<UserRange, UserError> {
        let end = start.checked_add(len).ok_or(UserError::OutOfRange)?;
        if start >= USER_END || end > USER_END {
            return Err(UserError::OutOfRange);
        }
        Ok(UserRange { start, len })
    }

    /// `pages` whole pages from page-aligned `start` (at least one).
    pub fn pages(start: u64, pages: u64) -> Result<UserRange, UserError> {
        if !start.is_multiple_of(PAGE) || pages == 0 {
            return Err(UserError::Misaligned);
        }
        UserRange::new(start, pages.checked_mul(PAGE).ok_or(UserError::OutOfRange)?)
    }

    /// The pages covering `[start, start + len)` of any byte range (at least one).
    pub fn covering_pages(start: u64, len: u64) -> Result<UserRange, UserError> {
        let r = UserRange::new(start, len)?;
        if len == 0 {
            return Err(UserError::Misaligned);
        }
        let s = start & !(PAGE - 1);
        let e = (r.end() + PAGE - 1) & !(PAGE - 1); // end <= USER_END: no overflow
        Ok(UserRange { start: s, len: e - s })
    }

    pub fn start(&self) -> u64 {
        self.start
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
    /// Number of pages the range touches.
    pub fn page_count(&self) -> u64 {
        if self.len == 0 {
            return 0;
        }
        ((self.end() - 1) >> 12) - (self.start >> 12) + 1
    }
    /// Whether the range lies entirely in `[lo, hi)`.
    pub fn within(&self, lo: u64, hi: u64) -> bool {
        self.start >= lo && self.end() <= hi
    }
    /// The start of every page the range touches.
    pub fn page_starts(&self) -> impl Iterator<Item = u64> {
        let first = self.start & !(PAGE - 1);
        (0..self.page_count()).map(move |i| first + i * PAGE)
    }
}

/// What a user page is (stored in the leaf entry's software bits 9..11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Ram,
    Grant,
    Mmio,
}

impl PageKind {
    fn bit(self) -> F {
        match self {
            PageKind::Ram => F::BIT_9,
            PageKind::Grant => F::BIT_10,
            PageKind::Mmio => F::BIT_11,
        }
    }
    fn of(flags: F) -> Option<PageKind> {
        [PageKind::Ram, PageKind::Grant, PageKind::Mmio].into_iter().find(|k| flags.contains(k.bit()))
    }
}

/// One present user page: its frame, kind and whether ring 3 may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPage {
    pub phys: u64,
    pub kind: PageKind,
    pub writable: bool,
}

/// Frames a task lends for one call: taken from the lender's own page tables (every page its
/// RAM, writable if the loan is), so mapping them elsewhere shares task memory and nothing else.
/// The loan holds a reference on each frame until it is dropped, so the frames stay allocated
/// (even if the lender unmaps or frees them) while the loan can still be mapped.
#[derive(Debug)]
pub struct Lent {
    frames: Vec<u64>,
    writable: bool,
}

impl Drop for Lent {
    fn drop(&mut self) {
        for &f in &self.frames {
            crate::memory::user_unref(f, false);
        }
    }
}

impl Lent {
    pub fn frames(&self) -> &[u64] {
        &self.frames
    }
    pub fn writable(&self) -> bool {
        self.writable
    }
    pub fn pages(&self) -> u64 {
        self.frames.len() as u64
    }
}

/// A user address space: its own PML4 whose upper half is the kernel's (supervisor-only).
/// Not `Sync` (see `_not_sync`):
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<catenary_arch::uspace::AddressSpace>();
/// ```
pub struct AddressSpace {
    pml4: u64,
    /// Page-table frames of the user half (charged to the task's memory quota).
    tables: u64,
    /// Never reused (a PML4 frame is): what a CPU's PCID slot names (`crate::pcid`).
    id: u64,
    /// Raised by every unmap: a CPU whose PCID slot for this space was flushed at an older
    /// generation flushes it when it loads the space (`crate::pcid`).
    tlb_gen: AtomicU64,
    /// Not `Sync`: `&self` methods walk the tables through a `&mut PageTable` (the x86_64
    /// crate's mapper), so two CPUs must not share a `&AddressSpace` (sending it is fine).
    _not_sync: core::marker::PhantomData<core::cell::Cell<()>>,
}

/// Counts the page-table frames a mapping call allocates.
struct Counting<'a>(&'a mut u64);

// SAFETY: forwards to `GlobalFrames`, which hands out unused, zeroed RAM frames.
unsafe impl FrameAllocator<Size4KiB> for Counting<'_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let f = GlobalFrames.allocate_frame()?;
        *self.0 += 1;
        Some(f)
    }
}

impl AddressSpace {
    pub fn new() -> Result<AddressSpace, PagingError> {
        let f = GlobalFrames.allocate_frame().ok_or(PagingError::OutOfFrames)?.start_address().as_u64();
        let k = p2v(crate::paging::kernel_pml4()) as *const u64;
        let n = p2v(f) as *mut u64;
        // SAFETY: `f` is a fresh zeroed frame; both tables are reached through the direct map.
        unsafe {
            for i in 256..512 {
                n.add(i).write(k.add(i).read());
            }
        }
        let id = NEXT_SPACE_ID.fetch_add(1, Ordering::Relaxed);
        Ok(AddressSpace { pml4: f, tables: 1, id, tlb_gen: AtomicU64::new(0), _not_sync: core::marker::PhantomData })
    }

    pub fn pml4(&self) -> u64 {
        self.pml4
    }

    /// Page-table frames this space uses (PML4 included).
    pub fn table_frames(&self) -> u64 {
        self.tables
    }

    fn mapper(&self) -> OffsetPageTable<'static> {
        // SAFETY: the PML4 is owned by this address space and reached through the direct map.
        // Only one such `&mut` lives at a time: each method makes one and drops it before
        // making another, `&mut self` methods are exclusive, and the type is not `Sync`, so no
        // other CPU can make one through a shared reference. Callers only touch the lower
        // (user) half through it (every address is checked below `USER_END`), whose tables
        // belong to this space alone.
        unsafe { OffsetPageTable::new(&mut *((self.pml4 + PHYS_OFFSET) as *mut PageTable), VirtAddr::new(PHYS_OFFSET)) }
    }

    /// Map frame `phys` at user address `virt` as a page of `kind`.
    ///
    /// # Safety
    /// Ring 3 gets access to `phys`: it must be memory the task may use (a frame it owns, or
    /// lent to it) that stays allocated while mapped, or device memory granted to it.
    unsafe fn map_raw(&mut self, virt: u64, phys: u64, kind: PageKind, writable: bool, executable: bool) -> Result<(), UserError> {
        if !virt.is_multiple_of(PAGE) || !phys.is_multiple_of(PAGE) {
            return Err(UserError::Misaligned);
        }
        if virt >= USER_END {
            return Err(UserError::OutOfRange);
        }
        let mut fl = F::PRESENT | F::USER_ACCESSIBLE | kind.bit();
        if writable {
            fl |= F::WRITABLE;
        }
        if !executable {
            fl |= F::NO_EXECUTE;
        }
        if kind == PageKind::Mmio {
            fl |= F::NO_CACHE | F::WRITE_THROUGH;
        }
        let mut m = self.mapper();
        let mut tables = self.tables;
        // SAFETY: a user-half mapping; what it maps is the caller's promise.
        let r = unsafe {
            m.map_to_with_table_flags(
                Page::<Size4KiB>::containing_address(VirtAddr::new(virt)),
                PhysFrame::containing_address(PhysAddr::new(phys)),
                fl,
                F::PRESENT | F::WRITABLE | F::USER_ACCESSIBLE,
                &mut Counting(&mut tables),
            )
        };
        self.tables = tables;
        r.map_err(PagingError::from)?.flush();
        if kind != PageKind::Mmio {
            crate::memory::user_ref(phys); // a user frame is counted per mapping
        }
        Ok(())
    }

    /// Map frame `phys` (owned by the task) at `virt` as task RAM.
    ///
    /// # Safety
    /// `phys` is a RAM frame the task owns and the kernel keeps allocated while it is mapped.
    pub unsafe fn map(&mut self, virt: u64, phys: u64, writable: bool, executable: bool) -> Result<(), UserError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.map_raw(virt, phys, PageKind::Ram, writable, executable) }
    }

    /// Map device memory `phys` at `virt`: uncached, never executable.
    ///
    /// # Safety
    /// `phys` is device memory granted to the task (not RAM the kernel uses).
    pub unsafe fn map_mmio(&mut self, virt: u64, phys: u64, writable: bool) -> Result<(), UserError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.map_raw(virt, phys, PageKind::Mmio, writable, false) }
    }

    /// Map a fresh zeroed frame at page `virt` as task RAM; the frame becomes the task's
    /// (a user frame: the caller frees it with `memory::free_user_frame` when the task is done
    /// with it). Returns its physical address. On error the frame goes back to the allocator.
    pub fn map_fresh_frame(&mut self, virt: u64, frame: FreshFrame, writable: bool, executable: bool) -> Result<u64, UserError> {
        UserRange::pages(virt, 1)?;
        // SAFETY: a fresh zeroed frame that nothing else refers to, now owned by the task.
        unsafe { self.map_raw(virt, frame.phys(), PageKind::Ram, writable, executable)? };
        Ok(frame.into_user())
    }

    /// Map a fresh contiguous run over the pages of `r` (writable task RAM: DMA memory).
    /// Returns its first frame; every frame becomes the task's (see [`Self::map_fresh_frame`]).
    pub fn map_dma(&mut self, r: UserRange, run: FreshRun) -> Result<u64, UserError> {
        if !r.start().is_multiple_of(PAGE) || !r.len().is_multiple_of(PAGE) || r.page_count() != run.pages() {
            return Err(UserError::Misaligned);
        }
        for (i, v) in r.page_starts().enumerate() {
            // SAFETY: fresh zeroed frames that nothing else refers to, now owned by the task.
            if let Err(e) = unsafe { self.map_raw(v, run.phys() + i as u64 * PAGE, PageKind::Ram, true, false) } {
                for u in r.page_starts().take(i) {
                    let _ = self.unmap(u);
                }
                return Err(e); // `run` drops: its frames go back
            }
        }
        Ok(run.into_user().0)
    }

    /// Map device memory `[phys, phys + r.len())` at `r`, uncached. Refuses any page that is
    /// RAM (see [`crate::memory::is_ram`]): whether the task was granted the device range is
    /// the caller's policy, but RAM never reaches ring 3 this way.
    pub fn map_device(&mut self, r: UserRange, phys: u64, writable: bool) -> Result<(), UserError> {
        if !r.start().is_multiple_of(PAGE) || !r.len().is_multiple_of(PAGE) || r.is_empty() || !phys.is_multiple_of(PAGE) {
            return Err(UserError::Misaligned);
        }
        let pend = phys.checked_add(r.len()).ok_or(UserError::OutOfRange)?;
        if pend > crate::memory::PHYS_LIMIT {
            return Err(UserError::OutOfRange);
        }
        if r.page_starts().enumerate().any(|(i, _)| crate::memory::is_ram(phys + i as u64 * PAGE)) {
            return Err(UserError::WrongKind);
        }
        for (i, v) in r.page_starts().enumerate() {
            // SAFETY: device memory (checked not to be RAM above).
            if let Err(e) = unsafe { self.map_raw(v, phys + i as u64 * PAGE, PageKind::Mmio, writable, false) } {
                for u in r.page_starts().take(i) {
                    let _ = self.unmap(u);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The frames behind `r` for lending: every page present and task RAM (not MMIO, not
    /// itself a grant), writable if `writable`.
    pub fn lend(&self, r: UserRange, writable: bool) -> Result<Lent, UserError> {
        let mut frames = Vec::new();
        frames.try_reserve_exact(r.page_count() as usize).map_err(|_| UserError::NoMemory)?;
        for v in r.page_starts() {
            let p = self.page(v).ok_or(UserError::NotMapped)?;
            if p.kind != PageKind::Ram {
                return Err(UserError::WrongKind);
            }
            if writable && !p.writable {
                return Err(UserError::ReadOnly);
            }
            frames.push(p.phys);
        }
        // Pin every frame (all or nothing): a RAM page that is not a user frame (mapped with
        // the raw `map`) cannot be lent.
        for (i, &f) in frames.iter().enumerate() {
            if !crate::memory::user_ref(f) {
                frames[..i].iter().for_each(|&g| crate::memory::user_unref(g, false));
                return Err(UserError::WrongKind);
            }
        }
        Ok(Lent { frames, writable })
    }

    /// Map a loan at page-aligned `virt` (grant pages, never executable). All or nothing.
    pub fn map_lent(&mut self, virt: u64, lent: &Lent) -> Result<(), UserError> {
        let r = UserRange::pages(virt, lent.pages().max(1))?;
        for (i, v) in r.page_starts().enumerate() {
            // SAFETY: the frames are user frames of the lender (checked by `lend` against its
            // page tables), pinned by `lent` until it drops and then by this mapping's own
            // reference (`map_raw` counts it) until it is unmapped.
            if let Err(e) = unsafe { self.map_raw(v, lent.frames[i], PageKind::Grant, lent.writable, false) } {
                for u in r.page_starts().take(i) {
                    let _ = self.unmap(u);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmap the user page at `virt`; returns what it mapped. Refuses the kernel half and
    /// non-canonical addresses (no page there belongs to the task).
    pub fn unmap(&mut self, virt: u64) -> Result<UserPage, UserError> {
        let r = UserRange::pages(virt & !(PAGE - 1), 1)?;
        let page = self.page(r.start()).ok_or(UserError::NotMapped)?;
        let mut m = self.mapper();
        match m.unmap(Page::<Size4KiB>::containing_address(VirtAddr::new(r.start()))) {
            Ok((_, flush)) => {
                flush.flush();
                // Other PCIDs (this CPU's or others') may keep the translation: the next load
                // of this space flushes them. Raised before `loaded_elsewhere` reads which CPUs
                // have it loaded (`crate::pcid`, the ordering rule).
                self.tlb_gen.fetch_add(1, Ordering::SeqCst);
                if page.kind != PageKind::Mmio {
                    crate::memory::user_unref(page.phys, loaded_elsewhere(self.pml4));
                }
                Ok(page)
            }
            Err(_) => Err(UserError::NotMapped),
        }
    }

    /// The present user page containing `virt`, if any.
    pub fn page(&self, virt: u64) -> Option<UserPage> {
        if virt >= USER_END {
            return None;
        }
        match self.mapper().translate(VirtAddr::new(virt & !(PAGE - 1))) {
            TranslateResult::Mapped { frame, offset, flags } if flags.contains(F::USER_ACCESSIBLE) => Some(UserPage {
                phys: frame.start_address().as_u64() + offset,
                kind: PageKind::of(flags)?,
                writable: flags.contains(F::WRITABLE),
            }),
            _ => None,
        }
    }

    /// The u64 at user address `virt` (8-aligned, a RAM page mapped now) read from ring 0 the
    /// way ring 3 reads it: through this CPU's translation, which the TLB may keep after the
    /// page tables changed. A probe for the TLB tests (`crate::pcid`); `None` unless this space
    /// is the one loaded on this CPU. Only in the in-kernel test build (feature `test-probes`):
    /// a translation a remote unmap left on this CPU could still name a device page unmapped
    /// there, and reading a device register can have side effects.
    #[cfg(feature = "test-probes")]
    pub fn read_as_loaded(&self, virt: u64) -> Option<u64> {
        if !virt.is_multiple_of(8) || self.page(virt).is_none_or(|p| p.kind == PageKind::Mmio) {
            return None;
        }
        crate::cpu::without_interrupts(|| {
            if crate::cpu::read_cr3() & !0xfff != self.pml4 {
                return None;
            }
            let v: u64;
            if crate::cpu::read_cr4() & (1 << 21) != 0 {
                // SAFETY: `virt` is mapped as user RAM in the space loaded on this CPU (checked,
                // interrupts off so nothing switches in between), so the load cannot fault; AC
                // is set (SMAP on) for this one load only. It reads whatever frame the CPU's
                // translation names (a kept TLB entry may name the frame mapped there before,
                // which is what the probe looks for): a read into an integer, no write.
                unsafe { core::arch::asm!("stac", "mov {}, [{}]", "clac", out(reg) v, in(reg) virt, options(nostack, readonly, preserves_flags)) };
            } else {
                // SAFETY: as above, without SMAP (ring 0 may read user pages).
                unsafe { core::arch::asm!("mov {}, [{}]", out(reg) v, in(reg) virt, options(nostack, readonly, preserves_flags)) };
            }
            Some(v)
        })
    }

    /// Whether the CPU set the accessed bit of the page at `virt` since the last call, and
    /// clear it (without a TLB flush, as page aging does: a translation the TLB keeps sets
    /// nothing, a walk sets it again). `None` if nothing is mapped there. In-kernel test build
    /// only, like [`Self::read_as_loaded`].
    #[cfg(feature = "test-probes")]
    pub fn take_accessed(&mut self, virt: u64) -> Option<bool> {
        self.page(virt)?;
        let mut table = self.pml4;
        for level in (1..=4).rev() {
            let idx = (virt >> (12 + 9 * (level - 1))) & 0x1ff;
            let e = (p2v(table) as *mut u64).wrapping_add(idx as usize);
            if level == 1 {
                // SAFETY: the level-1 entry of a page mapped in this space (checked by `page`),
                // in a table this space owns, reached through the direct map; `&mut self`
                // keeps this space's mapping calls away. The CPU may set A/D bits in it
                // concurrently: the atomic AND keeps them, and clears only A (bit 5), which
                // changes no translation.
                let old = unsafe { core::sync::atomic::AtomicU64::from_ptr(e) }.fetch_and(!(1 << 5), Ordering::SeqCst);
                return Some(old & (1 << 5) != 0);
            }
            // SAFETY: as above, an upper-level entry on the path of a mapped page, read only.
            let entry = unsafe { e.read_volatile() };
            if entry & (1 << 7) != 0 {
                return None; // a huge page: its next "table" would be the page itself
            }
            table = entry & 0x000f_ffff_ffff_f000;
        }
        None
    }

    /// (physical address, writable) of user address `virt`.
    pub fn translate(&self, virt: u64) -> Option<(u64, bool)> {
        self.page(virt).map(|p| (p.phys + (virt & (PAGE - 1)), p.writable))
    }

    /// Copy `buf.len()` bytes from user memory at `r` (RAM pages only: the task's own or lent
    /// to it; never MMIO). Through the direct map, so SMAP stays on.
    pub fn copy_from_user(&self, r: UserRange, buf: &mut [u8]) -> Result<(), UserError> {
        if buf.len() as u64 != r.len() {
            return Err(UserError::OutOfRange);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let v = r.start() + done as u64;
            let p = self.page(v).ok_or(UserError::NotMapped)?;
            if p.kind == PageKind::Mmio {
                return Err(UserError::WrongKind);
            }
            let off = (v % PAGE) as usize;
            let n = (PAGE as usize - off).min(buf.len() - done);
            // SAFETY: `p.phys` is a RAM frame mapped in this task (its own or lent to it and
            // kept allocated by the kernel); the direct map covers it; a byte copy has no
            // validity requirements, and ring 3 writing concurrently only changes data.
            unsafe { core::ptr::copy_nonoverlapping((p2v(p.phys) as *const u8).add(off), buf[done..].as_mut_ptr(), n) };
            done += n;
        }
        Ok(())
    }

    /// Copy `data` into user memory at `r` (writable RAM pages only).
    pub fn copy_to_user(&self, r: UserRange, data: &[u8]) -> Result<(), UserError> {
        if data.len() as u64 != r.len() {
            return Err(UserError::OutOfRange);
        }
        // Check every page first: all or nothing.
        for v in r.page_starts() {
            let p = self.page(v).ok_or(UserError::NotMapped)?;
            if p.kind == PageKind::Mmio {
                return Err(UserError::WrongKind);
            }
            if !p.writable {
                return Err(UserError::ReadOnly);
            }
        }
        let mut done = 0usize;
        while done < data.len() {
            let v = r.start() + done as u64;
            let p = self.page(v).ok_or(UserError::NotMapped)?;
            let off = (v % PAGE) as usize;
            let n = (PAGE as usize - off).min(data.len() - done);
            // SAFETY: a writable RAM page of this task (checked above); the direct map covers it.
            unsafe { core::ptr::copy_nonoverlapping(data[done..].as_ptr(), (p2v(p.phys) as *mut u8).add(off), n) };
            done += n;
        }
        Ok(())
    }

    /// Drop the space: every user mapping goes (a user frame is freed once its owner gave it
    /// up and nothing else maps it, see `memory::free_user_frame`), then the page-table frames
    /// of the user half and the PML4. A space still loaded on this CPU is switched away from
    /// first; one still loaded on another CPU is kept until that CPU switches away (its
    /// tables are freed at a later [`activate`]), so no CPU ever walks freed tables.
    pub fn destroy(self) {
        // (`AddressSpace` has no `Drop`: its frames are given back here and nowhere else.)
        let pml4 = self.pml4;
        if current_loaded() == pml4 {
            activate(None);
        }
        if loaded_elsewhere(pml4) {
            crate::cpu::without_interrupts(|| ZOMBIES.lock().push(pml4));
            return;
        }
        free_tables(pml4);
    }
}

/// Free a space's tables (loaded on no CPU). A CPU that had it loaded may still cache its
/// entries under the space's PCID (`crate::pcid`); they are never used: the space's id is
/// never loaded again, and a slot that goes to another space is flushed first.
fn free_tables(pml4: u64) {
    fn free_level(table: u64, level: u8) {
        let t = p2v(table) as *const u64;
        let n = if level == 4 { 256 } else { 512 };
        for i in 0..n {
            // SAFETY: a page-table frame of this space, reached through the direct map; the
            // space is loaded nowhere and owned by this call, so nothing writes it meanwhile.
            let e = unsafe { t.add(i).read() };
            if e & 1 == 0 {
                continue;
            }
            let next = e & 0x000f_ffff_ffff_f000;
            if level == 1 {
                // A leaf: drop its reference on a user frame (RAM or grant; MMIO is not counted).
                if e & (F::BIT_9 | F::BIT_10).bits() != 0 {
                    crate::memory::user_unref(next, false);
                }
            } else if e & (1 << 7) == 0 {
                free_level(next, level - 1);
                // SAFETY: a page-table frame of this space, which is loaded on no CPU (so no
                // CPU walks or caches it) and owned by this call (no later map/unmap reaches it).
                let _ = unsafe { crate::memory::free_frame(next) };
            }
        }
    }
    free_level(pml4, 4);
    // SAFETY: as above, for the PML4.
    let _ = unsafe { crate::memory::free_frame(pml4) };
}

/// Ids of address spaces (0 is never one: a free PCID slot).
static NEXT_SPACE_ID: AtomicU64 = AtomicU64::new(1);

/// The user PML4 each CPU has loaded (0: the kernel's), written only by [`activate`].
static LOADED: [AtomicU64; crate::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::percpu::MAX_CPUS];
/// Destroyed spaces still loaded on some CPU when they were destroyed.
static ZOMBIES: spin::Mutex<Vec<u64>> = spin::Mutex::new(Vec::new());

fn current_loaded() -> u64 {
    LOADED.get(crate::percpu::cpu_index()).map_or(0, |l| l.load(Ordering::SeqCst))
}

/// Whether a CPU other than this one has `pml4` loaded.
fn loaded_elsewhere(pml4: u64) -> bool {
    let me = crate::percpu::cpu_index();
    LOADED.iter().enumerate().any(|(c, l)| c != me && l.load(Ordering::SeqCst) == pml4)
}

/// Load `space`'s page tables on this CPU (the kernel's with `None`; no-op if already loaded).
/// The only way to load a user space: it takes the space itself (not an address), and records
/// which space each CPU has loaded so [`AddressSpace::destroy`] never frees tables a CPU uses.
pub fn activate(space: Option<&AddressSpace>) {
    let pml4 = space.map_or(crate::paging::kernel_pml4(), |s| s.pml4);
    crate::cpu::without_interrupts(|| {
        if let Some(l) = LOADED.get(crate::percpu::cpu_index()) {
            l.store(if space.is_some() { pml4 } else { 0 }, Ordering::SeqCst);
        }
        if crate::cpu::read_cr3() & !0xfff != pml4 {
            // With PCIDs: the kernel's tables are PCID 0 and keep their entries (their user
            // half is empty); a user space gets its slot's PCID, flushed if the space is new
            // here or unmapped something since (the generation is read after the record above).
            let cr3 = match space {
                _ if !crate::pcid::on() => pml4,
                Some(s) => crate::pcid::user_cr3(pml4, s.id, s.tlb_gen.load(Ordering::SeqCst)),
                None => pml4 | crate::pcid::NO_FLUSH,
            };
            // SAFETY: a user space shares the kernel half with the kernel page tables
            // (`AddressSpace::new`), and `space` is alive for this call (borrowed), so the
            // running kernel code, stacks and data stay mapped; the record above keeps
            // `destroy` from freeing the tables while this CPU has them loaded. The PCID bits
            // are set only with CR4.PCIDE on; entries kept under them are never stale
            // (`crate::pcid`).
            unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) };
        }
    });
    let zombies = crate::cpu::without_interrupts(|| {
        let mut z = ZOMBIES.lock();
        if z.is_empty() {
            return Vec::new();
        }
        let (done, keep): (Vec<u64>, Vec<u64>) = z.iter().partition(|&&p| !LOADED.iter().any(|l| l.load(Ordering::SeqCst) == p));
        *z = keep;
        done
    });
    zombies.into_iter().for_each(free_tables);
}

/// Destroyed address spaces whose tables wait for a CPU to switch away (tests).
pub fn spaces_pending() -> usize {
    crate::cpu::without_interrupts(|| ZOMBIES.lock().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(UserRange::new(0x1000, 0x1000).is_ok());
        assert_eq!(UserRange::new(USER_END, 1), Err(UserError::OutOfRange));
        assert_eq!(UserRange::new(USER_END - 1, 2), Err(UserError::OutOfRange));
        assert_eq!(UserRange::new(0xffff_8000_0000_0000, 1), Err(UserError::OutOfRange));
        assert_eq!(UserRange::new(u64::MAX, 2), Err(UserError::OutOfRange));
        assert_eq!(UserRange::pages(0x1000, 1 << 52), Err(UserError::OutOfRange));
        assert_eq!(UserRange::pages(0x1001, 1), Err(UserError::Misaligned));
        assert_eq!(UserRange::pages(0x1000, 0), Err(UserError::Misaligned));
        assert_eq!(UserRange::pages(USER_END - 0x1000, 1).map(|r| r.end()), Ok(USER_END));
        let r = UserRange::covering_pages(0x1ff8, 16).unwrap();
        assert_eq!((r.start(), r.len(), r.page_count()), (0x1000, 0x2000, 2));
        assert_eq!(UserRange::new(0x1ff8, 16).unwrap().page_starts().collect::<Vec<_>>(), [0x1000, 0x2000]);
        assert_eq!(UserRange::covering_pages(USER_END - 1, 1).map(|r| r.end()), Ok(USER_END));
    }
}
