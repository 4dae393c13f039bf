//! Kernel page tables. Virtual layout (see docs/memory.md):
//!
//! | range                                   | what                                   |
//! |-----------------------------------------|----------------------------------------|
//! | `0xffff_8000_0000_0000` + phys          | direct map of all RAM (2 MiB, RW, NX)   |
//! | `0xffff_c000_0000_0000` ..              | MMIO window (4 KiB, UC, NX)            |
//! | `0xffff_e000_0000_0000` ..              | kernel stacks, each over a guard page  |
//! | `0xffff_ffff_8000_0000` + 2 MiB ..      | kernel image: text RX, rodata R NX, data RW NX |
//!
//! The low half is left for user tasks. Page tables are reached through the direct map.

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;
use x86_64::structures::paging::{
    mapper::{MapToError, MapperFlush, TranslateResult, UnmapError},
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTableFlags as F, PhysFrame, Size4KiB, Translate,
};
#[cfg(feature = "kernel")]
use x86_64::structures::paging::{PageTable, Size2MiB};
use x86_64::{PhysAddr, VirtAddr};

pub const PHYS_OFFSET: u64 = 0xffff_8000_0000_0000;
pub const MMIO_BASE: u64 = 0xffff_c000_0000_0000;
pub const STACK_BASE: u64 = 0xffff_e000_0000_0000;
pub const KERNEL_VIRT: u64 = 0xffff_ffff_8000_0000;
pub const PAGE: u64 = 4096;
/// Where the PVH/Multiboot2 trampoline loads the kernel image (see linker.ld).
pub const KERNEL_PHYS_DEFAULT: u64 = 0x20_0000;

pub use crate::memory::{p2v, phys_view};
#[cfg(feature = "kernel")]
use crate::memory::set_early_phys_view;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    OutOfFrames,
    AlreadyMapped,
    NotMapped,
    HugePage,
    Misaligned,
    /// A device mapping was asked for RAM (or a range that wraps).
    NotDevice,
    /// An interrupt vector below 32 (the exception vectors) was asked for.
    BadVector,
}

impl<S: x86_64::structures::paging::PageSize> From<MapToError<S>> for PagingError {
    fn from(e: MapToError<S>) -> Self {
        match e {
            MapToError::FrameAllocationFailed => PagingError::OutOfFrames,
            MapToError::PageAlreadyMapped(_) => PagingError::AlreadyMapped,
            MapToError::ParentEntryHugePage => PagingError::HugePage,
        }
    }
}

/// Page-table frames come from the global frame allocator (zeroed here).
pub struct GlobalFrames;

// SAFETY: frames handed out by the global allocator are unused, RAM, and zeroed before use.
unsafe impl FrameAllocator<Size4KiB> for GlobalFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let p = crate::memory::alloc_frame().ok()?;
        // SAFETY: the frame was just allocated, so nothing else references it; p2v maps it.
        unsafe { core::ptr::write_bytes(p2v(p) as *mut u8, 0, PAGE as usize) };
        Some(PhysFrame::containing_address(PhysAddr::new(p)))
    }
}

/// Section ranges of the kernel image (virtual), from the linker script.
#[derive(Debug, Clone, Copy)]
pub struct KernelSections {
    pub text: (u64, u64),
    pub rodata: (u64, u64),
    pub data: (u64, u64),
}

#[cfg(feature = "kernel")]
pub fn kernel_sections() -> KernelSections {
    extern "C" {
        static __text_start: u8;
        static __text_end: u8;
        static __rodata_start: u8;
        static __rodata_end: u8;
        static __data_start: u8;
        static __data_end: u8;
    }
    KernelSections {
        text: (core::ptr::addr_of!(__text_start) as u64, core::ptr::addr_of!(__text_end) as u64),
        rodata: (core::ptr::addr_of!(__rodata_start) as u64, core::ptr::addr_of!(__rodata_end) as u64),
        data: (core::ptr::addr_of!(__data_start) as u64, core::ptr::addr_of!(__data_end) as u64),
    }
}

/// What `build_and_activate` needs to know.
pub struct KernelSpaceSpec<'a> {
    /// Physical ranges to direct-map (all RAM, ACPI and reserved regions of the memory map).
    pub phys_ranges: &'a [(u64, u64)],
    /// Physical address the kernel image's first byte (`__text_start`) is loaded at.
    pub kernel_phys: u64,
    pub sections: KernelSections,
    /// Virtual pages inside the image that stay unmapped (stack guard pages).
    pub guard_pages: &'a [u64],
    pub global_pages: bool,
}

static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);
static KERNEL_SPACE: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

/// Build the kernel's page tables from scratch and switch CR3 to them. Once (a second call
/// is refused with `AlreadyMapped`: address spaces share the first tables' kernel half), and
/// only with the running image's own sections at the physical address the CPU runs them
/// from (`Misaligned` otherwise): a wrong `kernel_phys` would map other frames as kernel text.
#[cfg(feature = "kernel")]
pub fn build_and_activate(spec: &KernelSpaceSpec) -> Result<(), PagingError> {
    static BUILT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    let k = kernel_sections();
    if (spec.sections.text, spec.sections.rodata, spec.sections.data) != (k.text, k.rodata, k.data) {
        return Err(PagingError::Misaligned);
    }
    if BUILT.swap(true, Ordering::SeqCst) {
        return Err(PagingError::AlreadyMapped);
    }
    if current_phys_of(k.text.0) != Some(spec.kernel_phys) {
        BUILT.store(false, Ordering::SeqCst);
        return Err(PagingError::Misaligned);
    }
    let pml4_phys = crate::memory::alloc_frame().map_err(|_| PagingError::OutOfFrames)?;
    let view = phys_view();
    // SAFETY: the frame was just allocated and is reachable through the current phys view.
    let pml4: &'static mut PageTable = unsafe {
        let p = (pml4_phys + view) as *mut PageTable;
        core::ptr::write_bytes(p as *mut u8, 0, PAGE as usize);
        &mut *p
    };
    // SAFETY: `view` maps all physical memory the page tables can live in (low 4 GiB
    // identity on PVH/Multiboot2, the HHDM on Limine).
    let mut mapper = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(view)) };
    let g = if spec.global_pages { F::GLOBAL } else { F::empty() };

    // Direct map, 2 MiB pages, rounded outward.
    let mut last_end = 0u64;
    let mut ranges: alloc::vec::Vec<(u64, u64)> = spec.phys_ranges.to_vec();
    ranges.sort();
    for &(start, len) in &ranges {
        let s = (start & !(0x20_0000 - 1)).max(last_end);
        let e = (start.saturating_add(len) + 0x1f_ffff) & !(0x20_0000 - 1);
        let mut p = s;
        while p < e {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(PHYS_OFFSET + p));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(p));
            // SAFETY: the direct map aliases physical memory at a fixed offset; nothing in the
            // kernel relies on it being absent.
            unsafe {
                mapper
                    .map_to(page, frame, F::PRESENT | F::WRITABLE | F::NO_EXECUTE | g, &mut GlobalFrames)?
                    .ignore();
            }
            p += 0x20_0000;
        }
        last_end = last_end.max(e);
    }

    // Kernel image with per-section permissions.
    let base_virt = spec.sections.text.0;
    let sections = [
        (spec.sections.text, F::PRESENT | g),
        (spec.sections.rodata, F::PRESENT | F::NO_EXECUTE | g),
        (spec.sections.data, F::PRESENT | F::WRITABLE | F::NO_EXECUTE | g),
    ];
    for ((s, e), flags) in sections {
        let mut v = s & !(PAGE - 1);
        while v < e {
            if !spec.guard_pages.contains(&v) {
                let phys = spec.kernel_phys + (v - base_virt);
                // SAFETY: maps the kernel image onto its own physical pages.
                unsafe {
                    mapper
                        .map_to(
                            Page::<Size4KiB>::containing_address(VirtAddr::new(v)),
                            PhysFrame::containing_address(PhysAddr::new(phys)),
                            flags,
                            &mut GlobalFrames,
                        )?
                        .ignore();
                }
            }
            v += PAGE;
        }
    }

    // Enable global pages and write protection in supervisor mode, then switch.
    if spec.global_pages {
        crate::cpu::cr4_set(1 << 7);
    }
    // SAFETY: the new tables map the running kernel (text, stacks in .bss, data) at the same
    // virtual addresses, and the direct map used from now on.
    unsafe {
        x86_64::registers::control::Cr0::update(|c| c.insert(x86_64::registers::control::Cr0Flags::WRITE_PROTECT));
        x86_64::registers::control::Cr3::write(
            PhysFrame::containing_address(PhysAddr::new(pml4_phys)),
            x86_64::registers::control::Cr3Flags::empty(),
        );
    }
    set_early_phys_view(PHYS_OFFSET);
    crate::memory::set_kernel_image(spec.kernel_phys, spec.sections.data.1 - spec.sections.text.0);
    KERNEL_PML4.store(pml4_phys, Ordering::Relaxed);
    // SAFETY: the PML4 is now reachable through the direct map, and only KERNEL_SPACE (under its
    // lock) uses this mapper from here on.
    let pml4: &'static mut PageTable = unsafe { &mut *((pml4_phys + PHYS_OFFSET) as *mut PageTable) };
    // SAFETY: PHYS_OFFSET direct-maps all RAM.
    *KERNEL_SPACE.lock() = Some(unsafe { OffsetPageTable::new(pml4, VirtAddr::new(PHYS_OFFSET)) });
    Ok(())
}

/// Walk the tables in CR3 (the boot tables before `build_and_activate`) for `virt`, reading
/// entries through the current physical view (no references to the tables are made).
#[cfg(feature = "kernel")]
fn current_phys_of(virt: u64) -> Option<u64> {
    let mut table = crate::cpu::read_cr3() & 0x000f_ffff_ffff_f000;
    for level in (0..4u32).rev() {
        let idx = (virt >> (12 + 9 * level)) & 0x1ff;
        // SAFETY: `table` is a page table of the loaded hierarchy (CR3 or an entry of it),
        // which the current physical view maps (the boot identity map, HHDM or direct map);
        // an aligned u64 read with no reference kept.
        let e = unsafe { core::ptr::read_volatile((p2v(table) + idx * 8) as *const u64) };
        if e & 1 == 0 {
            return None;
        }
        let addr = e & 0x000f_ffff_ffff_f000;
        if level == 0 || (level <= 2 && e & (1 << 7) != 0) {
            let size = 1u64 << (12 + 9 * level);
            return Some((addr & !(size - 1)) + (virt & (size - 1)));
        }
        table = addr;
    }
    None
}

pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Relaxed)
}

fn with_space<R>(f: impl FnOnce(&mut OffsetPageTable<'static>) -> R) -> R {
    crate::cpu::without_interrupts(|| {
        let mut g = KERNEL_SPACE.lock();
        f(g.as_mut().expect("kernel page tables not built"))
    })
}

/// Page flags offered to callers of the kernel mapping API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapFlags {
    pub writable: bool,
    pub executable: bool,
    pub uncached: bool,
}

impl MapFlags {
    pub const DATA: MapFlags = MapFlags { writable: true, executable: false, uncached: false };
    pub const RO: MapFlags = MapFlags { writable: false, executable: false, uncached: false };
    pub const MMIO: MapFlags = MapFlags { writable: true, executable: false, uncached: true };
    fn bits(self) -> F {
        let mut f = F::PRESENT;
        if self.writable {
            f |= F::WRITABLE;
        }
        if !self.executable {
            f |= F::NO_EXECUTE;
        }
        if self.uncached {
            f |= F::NO_CACHE | F::WRITE_THROUGH;
        }
        f
    }
}

/// Map one 4 KiB kernel page. Errors if the page is already mapped.
///
/// # Safety
/// Mapping `phys` must not break memory safety: the caller owns that frame (or it is MMIO
/// the caller drives), and nothing relies on `virt` being unmapped.
pub unsafe fn map_page(virt: u64, phys: u64, flags: MapFlags) -> Result<(), PagingError> {
    if !virt.is_multiple_of(PAGE) || !phys.is_multiple_of(PAGE) {
        return Err(PagingError::Misaligned);
    }
    with_space(|m| {
        // SAFETY: forwarded to the caller.
        let flush: MapperFlush<Size4KiB> = unsafe {
            m.map_to(
                Page::containing_address(VirtAddr::new(virt)),
                PhysFrame::containing_address(PhysAddr::new(phys)),
                flags.bits(),
                &mut GlobalFrames,
            )?
        };
        flush.flush();
        Ok(())
    })
}

/// Unmap one 4 KiB kernel page and return the frame it mapped (the TLB entry is flushed).
///
/// # Safety
/// Nothing uses the page any more (a kernel stack, the image or a live mapping would fault).
pub unsafe fn unmap_page(virt: u64) -> Result<u64, PagingError> {
    with_space(|m| match m.unmap(Page::<Size4KiB>::containing_address(VirtAddr::new(virt))) {
        Ok((frame, flush)) => {
            flush.flush();
            Ok(frame.start_address().as_u64())
        }
        Err(UnmapError::PageNotMapped) => Err(PagingError::NotMapped),
        Err(UnmapError::ParentEntryHugePage) => Err(PagingError::HugePage),
        Err(UnmapError::InvalidFrameAddress(_)) => Err(PagingError::NotMapped),
    })
}

/// Translate a kernel virtual address to (physical address, writable, executable).
pub fn translate(virt: u64) -> Option<(u64, bool, bool)> {
    with_space(|m| match m.translate(VirtAddr::new(virt)) {
        TranslateResult::Mapped { frame, offset, flags } => {
            Some((frame.start_address().as_u64() + offset, flags.contains(F::WRITABLE), !flags.contains(F::NO_EXECUTE)))
        }
        _ => None,
    })
}

static MMIO_NEXT: AtomicU64 = AtomicU64::new(MMIO_BASE);
static STACK_NEXT: AtomicU64 = AtomicU64::new(STACK_BASE);

/// Map a device's MMIO range uncached; returns the virtual address of `phys`. Refuses
/// (`NotDevice`) a range with any page of RAM (`memory::is_ram`) or one that wraps: mapped
/// writable and uncached, RAM would alias the direct map with another memory type, and the
/// callers (APIC, IOAPIC, virtio register accessors) write through what this returns.
pub fn map_mmio(phys: u64, size: u64) -> Result<u64, PagingError> {
    let start = phys & !(PAGE - 1);
    let end = phys.checked_add(size).and_then(|e| e.checked_add(PAGE - 1)).ok_or(PagingError::NotDevice)? & !(PAGE - 1);
    if end > crate::memory::PHYS_LIMIT || (start..end).step_by(PAGE as usize).any(crate::memory::is_ram) {
        return Err(PagingError::NotDevice);
    }
    let virt = MMIO_NEXT.fetch_add(end - start + PAGE, Ordering::Relaxed); // + a hole page
    let mut off = 0;
    while start + off < end {
        // SAFETY: MMIO of a device the kernel drives, mapped into a fresh window.
        unsafe { map_page(virt + off, start + off, MapFlags::MMIO)? };
        off += PAGE;
    }
    Ok(virt + (phys - start))
}

/// A stack that lives for good (boot, AP, idle and syscall stacks): mapped pages above an
/// unmapped guard page, never freed. Only [`alloc_stack`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct StaticStack {
    bottom: u64,
    top: u64,
}

impl StaticStack {
    pub fn bottom(&self) -> u64 {
        self.bottom
    }
    pub fn top(&self) -> u64 {
        self.top
    }
}

/// Allocate a kernel stack of `pages` pages with an unmapped guard page below it, for good.
pub fn alloc_stack(pages: u64) -> Result<StaticStack, PagingError> {
    let slot = STACK_NEXT.fetch_add((pages + 1) * PAGE, Ordering::Relaxed);
    let bottom = slot + PAGE; // `slot` itself stays unmapped: the guard
    for i in 0..pages {
        let f = crate::memory::FreshFrame::alloc().map_err(|_| PagingError::OutOfFrames)?.into_mapped();
        // SAFETY: a fresh frame (owned by nobody else, given to this mapping for good) at a
        // fresh stack address nobody else uses.
        unsafe { map_page(bottom + i * PAGE, f, MapFlags::DATA)? };
    }
    Ok(StaticStack { bottom, top: bottom + pages * PAGE })
}

/// A kernel task's stack: `pages` mapped pages above an unmapped guard page, in a slot of
/// the stack region. Dropping it unmaps the pages and frees their frames; the slot's
/// addresses are reused only once every CPU that may have cached them has flushed its TLB
/// since ([`tlb_catch_up`]: there is no shootdown IPI, and a stale entry would let a new
/// stack at the same address reach the old, freed frames).
///
/// The owner drops it only when nothing runs on it any more (the kernel: after the task
/// died and its CPU entered the kernel on another stack).
#[derive(Debug)]
pub struct KernelStack {
    bottom: u64,
    pages: u64,
}

impl KernelStack {
    pub fn top(&self) -> u64 {
        self.bottom + self.pages * PAGE
    }
    /// Whether `addr` (a stack pointer) lies in this stack.
    pub fn contains(&self, addr: u64) -> bool {
        (self.bottom..self.top()).contains(&addr)
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        for i in 0..self.pages {
            // SAFETY: the pages of this stack's slot, mapped by `alloc_kernel_stack` with frames
            // it owns; nothing runs on the stack any more (the owner's contract above).
            if let Ok(f) = unsafe { unmap_page(self.bottom + i * PAGE) } {
                // SAFETY: the frame was this stack's alone; its mapping is gone (this CPU's
                // entry, under the current PCID, flushed). Other CPUs, and this CPU's other
                // PCIDs, may hold stale entries for the slot, which nobody uses: the slot is not
                // handed out again before every CPU's full flush (`reusable`).
                let _ = unsafe { crate::memory::free_frame(f) };
            }
        }
        let epoch = TLB_EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
        crate::cpu::without_interrupts(|| FREE_STACK_SLOTS.lock().push((self.bottom - PAGE, self.pages, epoch)));
        KERNEL_STACKS_LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Kernel stacks allocated and not dropped yet.
static KERNEL_STACKS_LIVE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// How many [`KernelStack`]s exist (tests: a dead task's stack is freed with its context).
pub fn kernel_stacks_live() -> usize {
    KERNEL_STACKS_LIVE.load(Ordering::SeqCst)
}

/// Stack slots given back: (slot, pages, epoch at which they were freed).
static FREE_STACK_SLOTS: spin::Mutex<alloc::vec::Vec<(u64, u64, u64)>> = spin::Mutex::new(alloc::vec::Vec::new());
use crate::memory::{all_flushed_since, TLB_EPOCH};

/// Called by the scheduler on this CPU at its ticks and context switches: flush the TLB if a
/// translation other CPUs may cache was removed since the last flush (a freed stack, a user
/// mapping removed remotely), so the slot or frame can be reused; then free the user frames
/// every CPU has flushed for.
pub fn tlb_catch_up() {
    let c = crate::percpu::cpu_index();
    let Some(seen) = crate::memory::tlb_seen(c) else { return };
    let e = TLB_EPOCH.load(Ordering::SeqCst);
    if seen < e {
        crate::cpu::flush_tlb_all();
    }
    crate::memory::tlb_flushed_at(c, e);
    crate::memory::free_flushed_user_frames();
}

/// Freed stack slots whose addresses cannot be reused yet (tests).
pub fn stack_slots_waiting() -> usize {
    crate::cpu::without_interrupts(|| FREE_STACK_SLOTS.lock().iter().filter(|s| !all_flushed_since(s.2)).count())
}

/// Freed stack slots kept for reuse (tests: the slot of an ended task is reused).
pub fn stack_slots_free() -> usize {
    crate::cpu::without_interrupts(|| FREE_STACK_SLOTS.lock().len())
}

/// A kernel task's stack of `pages` pages (see [`KernelStack`]).
pub fn alloc_kernel_stack(pages: u64) -> Result<KernelStack, PagingError> {
    let reused = crate::cpu::without_interrupts(|| {
        let mut free = FREE_STACK_SLOTS.lock();
        let i = free.iter().position(|s| s.1 == pages && all_flushed_since(s.2))?;
        Some(free.swap_remove(i).0)
    });
    let slot = reused.unwrap_or_else(|| STACK_NEXT.fetch_add((pages + 1) * PAGE, Ordering::Relaxed));
    // From here on the slot is owned by `stack` (dropping it on failure unmaps what was mapped).
    let mut stack = KernelStack { bottom: slot + PAGE, pages: 0 };
    KERNEL_STACKS_LIVE.fetch_add(1, Ordering::SeqCst);
    for i in 0..pages {
        let f = crate::memory::FreshFrame::alloc().map_err(|_| PagingError::OutOfFrames)?;
        let f = f.into_mapped();
        // SAFETY: a fresh frame (owned by nobody else) at an address of this slot, which
        // nobody else uses (a fresh slot, or a freed one every CPU has flushed since).
        if let Err(e) = unsafe { map_page(stack.bottom + i * PAGE, f, MapFlags::DATA) } {
            // SAFETY: not mapped: the frame is still referred to by nothing.
            let _ = unsafe { crate::memory::free_frame(f) };
            return Err(e);
        }
        stack.pages = i + 1;
    }
    Ok(stack)
}

/// Kernel addresses for test mappings (`map_fresh_test_page`, `unmap_test_page`): 1 GiB that
/// nothing else maps.
pub const TEST_WINDOW: (u64, u64) = (0xffff_d000_0000_0000, 0xffff_d000_4000_0000);

fn in_test_window(virt: u64) -> bool {
    (TEST_WINDOW.0..TEST_WINDOW.1).contains(&virt)
}

/// Unmap a page of the test window and give its frame back to the allocator; returns the
/// frame's address.
pub fn unmap_test_page(virt: u64) -> Result<u64, PagingError> {
    if !in_test_window(virt) {
        return Err(PagingError::NotMapped);
    }
    // SAFETY: only `map_fresh_test_page` maps pages in the test window, each with a frame it
    // took ownership of (a `FreshFrame`), so unmapping takes nothing from anyone else.
    let f = unsafe { unmap_page(virt) }?;
    // SAFETY: that frame was owned by the mapping just removed (this CPU's TLB entry flushed);
    // another CPU that read the page (`trap::probe_read`) may keep a stale entry, so the frame
    // is freed only once every CPU has flushed since.
    unsafe { crate::memory::free_after_flush(f) };
    Ok(f)
}

/// Map a fresh frame at an unused address of the test window; the mapping owns the frame
/// until `unmap_test_page` (on an error the frame is freed with the token).
pub fn map_fresh_test_page(virt: u64, frame: crate::memory::FreshFrame) -> Result<(), PagingError> {
    if !in_test_window(virt) {
        return Err(PagingError::AlreadyMapped);
    }
    if translate(virt).is_some() {
        return Err(PagingError::AlreadyMapped);
    }
    let f = frame.into_mapped();
    // SAFETY: the frame was a `FreshFrame` (allocated, zeroed, referred to by nothing else),
    // whose ownership passes to this mapping; `virt` was unmapped.
    let r = unsafe { map_page(virt, f, MapFlags::DATA) };
    if r.is_err() {
        // SAFETY: the mapping failed: the frame is still referred to by nothing.
        let _ = unsafe { crate::memory::free_frame(f) };
    }
    r
}
