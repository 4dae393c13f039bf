//! The global physical frame allocator (the logic is `catenary-mm`, host-tested) and physical
//! memory access through the current physical view.

use catenary_mm::FrameAllocator;
use spin::Mutex;

static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

pub use catenary_mm::{AllocError, FrameStats};

/// Offset through which physical memory is reachable right now: 0 (identity map of the low
/// 4 GiB) on PVH/Multiboot2 before our tables are live, the HHDM offset on Limine, and
/// `paging::PHYS_OFFSET` once `paging::build_and_activate` has run.
static PHYS_VIEW: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn phys_view() -> u64 {
    PHYS_VIEW.load(core::sync::atomic::Ordering::Relaxed)
}
pub fn set_early_phys_view(offset: u64) {
    PHYS_VIEW.store(offset, core::sync::atomic::Ordering::Relaxed);
}
/// Virtual address at which physical address `p` can be read now.
pub fn p2v(p: u64) -> u64 {
    p.wrapping_add(phys_view())
}

pub fn install(frames: FrameAllocator) {
    crate::cpu::without_interrupts(|| *FRAMES.lock() = Some(frames));
}

/// Physical addresses are below this (52-bit physical address space).
pub const PHYS_LIMIT: u64 = 1 << 52;

/// RAM the kernel may use other than through the frame allocator: the memory-map ranges that
/// are not device or reserved space (kernel image, boot modules, ACPI, boot-loader data).
static RAM_RANGES: Mutex<alloc::vec::Vec<(u64, u64)>> = Mutex::new(alloc::vec::Vec::new());

/// Record the RAM ranges (`(start, len)`) of the memory map, once, after `install`.
pub fn set_ram_ranges(ranges: &[(u64, u64)]) {
    crate::cpu::without_interrupts(|| *RAM_RANGES.lock() = ranges.to_vec());
}

/// Whether the frame at `paddr` is (or may be) RAM: managed by the frame allocator, inside a
/// recorded RAM range, or in the first MiB (AP trampoline, BIOS data). Device memory is what
/// this refuses; ring 3 gets uncached device mappings only where it is false.
pub fn is_ram(paddr: u64) -> bool {
    if paddr < 0x10_0000 || with(|a| a.manages(paddr)) {
        return true;
    }
    crate::cpu::without_interrupts(|| RAM_RANGES.lock().iter().any(|&(s, l)| paddr >= s && paddr - s < l))
}

fn with<R>(f: impl FnOnce(&mut FrameAllocator) -> R) -> R {
    crate::cpu::without_interrupts(|| f(FRAMES.lock().as_mut().expect("frame allocator not installed")))
}

pub fn alloc_frame() -> Result<u64, AllocError> {
    with(|a| a.alloc())
}

/// A fresh frame, zeroed.
pub fn alloc_zeroed_frame() -> Result<u64, AllocError> {
    let f = alloc_frame()?;
    // SAFETY: just allocated: nothing else refers to it.
    unsafe { zero_frame(f) };
    Ok(f)
}

pub fn alloc_contiguous(count: u64, align_frames: u64) -> Result<u64, AllocError> {
    with(|a| a.alloc_contiguous(count, align_frames))
}

/// Give a frame back to the allocator. Not exported: outside this crate frames are freed
/// only by dropping the tokens that own them ([`FreshFrame`], [`FreshRun`]) or through
/// [`free_user_frame`] (task memory the kernel tracks). Safe code cannot free a frame by its
/// address (it compiled before, and freeing a frame still in use corrupts memory):
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// let _ = catenary_arch::memory::free_frame(0x10_0000);
/// ```
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// let _ = catenary_arch::memory::free_contiguous(0x10_0000, 512);
/// ```
/// ```no_run
/// #![forbid(unsafe_code)]
/// // what safe code has: owning tokens, freed when dropped
/// let f = catenary_arch::memory::FreshFrame::alloc().unwrap();
/// drop(f);
/// ```
///
/// # Safety
/// `paddr` was allocated here and nothing refers to it any more: no page-table entry (in any
/// address space, nested or EPT tables included) maps it, no CPU may still hold a TLB entry
/// for such a mapping that could be used, no device may DMA into it, no pointer into it is
/// used after this call.
pub(crate) unsafe fn free_frame(paddr: u64) -> Result<(), catenary_mm::FreeError> {
    with(|a| a.free(paddr))
}

/// Give `count` contiguous frames back (see [`free_frame`]).
///
/// # Safety
/// As for [`free_frame`], for every frame of the run.
pub(crate) unsafe fn free_contiguous(paddr: u64, count: u64) -> Result<(), catenary_mm::FreeError> {
    with(|a| a.free_contiguous(paddr, count))
}

/// The allocator refuses a double free (a self-test of the allocator in place: allocates a
/// frame, frees it twice). True when the second free was refused.
pub fn double_free_refused() -> bool {
    let Ok(f) = alloc_frame() else { return false };
    // SAFETY: just allocated, never mapped or shared: nothing refers to it.
    let first = unsafe { free_frame(f) };
    // SAFETY: the frame is free now; the allocator must refuse this (that is the test), and
    // a refused free changes nothing. If it were accepted, only allocator bookkeeping of a
    // frame nobody uses would be touched.
    let second = unsafe { free_frame(f) };
    first.is_ok() && second.is_err()
}

/// One frame just taken from the allocator and zeroed, owned by nobody else; freed on drop
/// unless it is mapped into a task (`AddressSpace::map_fresh_frame`). Allocating and zeroing
/// needs no kernel lock, so callers do it before taking theirs.
#[derive(Debug)]
pub struct FreshFrame(u64);

impl FreshFrame {
    pub fn alloc() -> Result<FreshFrame, AllocError> {
        let f = alloc_frame()?;
        // SAFETY: just allocated: nothing else refers to it; the direct map covers it.
        unsafe { core::ptr::write_bytes(p2v(f) as *mut u8, 0, 4096) };
        Ok(FreshFrame(f))
    }
    pub fn phys(&self) -> u64 {
        self.0
    }
    /// Copy `data` into the frame at `offset` (a program image, say). False if it does not fit.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        if offset.checked_add(data.len()).is_none_or(|e| e > 4096) {
            return false;
        }
        // SAFETY: the frame is ours alone (not yet mapped anywhere); the range is inside it.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), (p2v(self.0) as *mut u8).add(offset), data.len()) };
        true
    }
    /// Give up the token for a kernel mapping that now owns the frame.
    pub(crate) fn into_mapped(self) -> u64 {
        let f = self.0;
        core::mem::forget(self);
        f
    }
    /// Give the frame to ring 3: it becomes a user frame (see [`user_write`]).
    pub(crate) fn into_user(self) -> u64 {
        let f = self.0;
        core::mem::forget(self);
        with_user(|u| u.insert(f));
        f
    }
}

impl Drop for FreshFrame {
    fn drop(&mut self) {
        // SAFETY: the token owns the frame and was never mapped (mapping consumes it).
        let _ = unsafe { free_frame(self.0) };
    }
}

/// `pages` physically contiguous frames, zeroed, owned by nobody else (DMA memory before it
/// is mapped); freed on drop unless mapped into a task.
#[derive(Debug)]
pub struct FreshRun {
    phys: u64,
    pages: u64,
}

impl FreshRun {
    pub fn alloc(pages: u64) -> Result<FreshRun, AllocError> {
        Self::alloc_aligned(pages, 1)
    }
    /// `pages` frames starting at a multiple of `align_frames` frames (a power of two).
    pub fn alloc_aligned(pages: u64, align_frames: u64) -> Result<FreshRun, AllocError> {
        let phys = alloc_contiguous(pages, align_frames)?;
        for i in 0..pages {
            // SAFETY: just allocated: nothing else refers to these frames.
            unsafe { core::ptr::write_bytes(p2v(phys + i * 4096) as *mut u8, 0, 4096) };
        }
        Ok(FreshRun { phys, pages })
    }
    pub fn phys(&self) -> u64 {
        self.phys
    }
    pub fn pages(&self) -> u64 {
        self.pages
    }
    pub(crate) fn into_user(self) -> (u64, u64) {
        let (p, n) = (self.phys, self.pages);
        core::mem::forget(self);
        with_user(|u| (0..n).for_each(|i| {
            u.insert(p + i * 4096);
        }));
        (p, n)
    }
}

impl Drop for FreshRun {
    fn drop(&mut self) {
        // SAFETY: the token owns the run and was never mapped (mapping consumes it).
        let _ = unsafe { free_contiguous(self.phys, self.pages) };
    }
}

/// Frames handed to ring 3 as task memory and not yet freed: the only frames the kernel
/// writes on a task's behalf through [`user_write`].
static USER_FRAMES: Mutex<alloc::collections::BTreeSet<u64>> = Mutex::new(alloc::collections::BTreeSet::new());

fn with_user<R>(f: impl FnOnce(&mut alloc::collections::BTreeSet<u64>) -> R) -> R {
    crate::cpu::without_interrupts(|| f(&mut USER_FRAMES.lock()))
}

/// Free a task's frame (when it unmaps it or exits). Frames that are not user frames are
/// left alone (and reported).
pub fn free_user_frame(paddr: u64) -> Result<(), catenary_mm::FreeError> {
    if !with_user(|u| u.remove(&paddr)) {
        return Err(catenary_mm::FreeError::Foreign { paddr });
    }
    // SAFETY: a user frame holds no kernel object, and `user_write` no longer reaches it (just
    // removed from the set under its lock). The caller (the kernel, when a task unmaps a page
    // or has died) removed the task's mapping first, on the CPU that ran it.
    unsafe { free_frame(paddr) }
}

fn all_user(u: &alloc::collections::BTreeSet<u64>, paddr: u64, len: u64) -> bool {
    let Some(end) = paddr.checked_add(len) else { return false };
    (paddr & !0xfff..end).step_by(4096).all(|f| u.contains(&f))
}

/// Whether every frame of `[paddr, paddr + len)` is a user frame.
pub fn is_user_memory(paddr: u64, len: u64) -> bool {
    with_user(|u| all_user(u, paddr, len))
}

/// Copy into task memory (a ring shared with a ring-3 driver). Refuses (false) anything that
/// is not a user frame; whose frame it is, is the caller's policy.
pub fn user_write(paddr: u64, data: &[u8]) -> bool {
    with_user(|u| {
        if !all_user(u, paddr, data.len() as u64) {
            return false;
        }
        // SAFETY: user frames hold no kernel data, and they stay allocated while we hold the
        // user-frame lock (`free_user_frame` takes it before freeing).
        unsafe { phys_write(paddr, data) };
        true
    })
}

/// An aligned 64-bit volatile store into task memory (see [`user_write`]).
pub fn user_write_u64(paddr: u64, v: u64) -> bool {
    with_user(|u| {
        if paddr % 8 != 0 || !all_user(u, paddr, 8) {
            return false;
        }
        // SAFETY: as in `user_write`; aligned.
        unsafe { phys_write_u64(paddr, v) };
        true
    })
}

pub fn stats() -> FrameStats {
    with(|a| a.stats())
}

/// Reads physical memory through the current physical view (boot identity map, HHDM or the
/// direct map). Used to parse boot information and ACPI tables.
pub struct PhysView;

impl catenary_bootinfo::PhysRead for PhysView {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), catenary_bootinfo::BootError> {
        let view = phys_view();
        // Before our tables are live only the low 4 GiB is identity mapped.
        if view == 0 && paddr.saturating_add(buf.len() as u64) > 0x1_0000_0000 {
            return Err(catenary_bootinfo::BootError::Unreadable { paddr, len: buf.len() as u64 });
        }
        // SAFETY: the address lies in RAM or firmware tables that the current view maps
        // read-only-safe (we never hold references across this copy).
        unsafe {
            core::ptr::copy_nonoverlapping((paddr + view) as *const u8, buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }
}

/// A byte slice view of physical memory. Valid while the direct map exists, i.e. forever
/// after paging is set up.
///
/// # Safety
/// `[paddr, paddr + len)` is direct-mapped memory that nothing writes for the rest of the
/// kernel's life (boot modules: reserved, never handed out by the frame allocator).
pub unsafe fn phys_slice(paddr: u64, len: usize) -> &'static [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(p2v(paddr) as *const u8, len) }
}

/// The boot modules (start, len), recorded once at boot by [`set_boot_modules`].
static MODULES: Mutex<Option<alloc::vec::Vec<(u64, u64)>>> = Mutex::new(None);

/// Record the boot modules the frame allocator keeps reserved (once; later calls are ignored).
pub fn set_boot_modules(modules: &[catenary_bootinfo::Module]) {
    crate::cpu::without_interrupts(|| {
        let mut g = MODULES.lock();
        if g.is_none() {
            *g = Some(modules.iter().map(|m| (m.start, m.len)).collect());
        }
    })
}

/// A boot module's bytes: `m` must be one of the modules recorded at boot (reserved in the
/// frame allocator, never written), else `None`.
pub fn boot_module(m: &catenary_bootinfo::Module) -> Option<&'static [u8]> {
    let (start, len) = (m.start, m.len);
    let known = crate::cpu::without_interrupts(|| MODULES.lock().as_ref().is_some_and(|v| v.contains(&(start, len))));
    if !known || usize::try_from(len).is_err() {
        return None;
    }
    // SAFETY: a boot module: reserved (KernelAndModules) so the frame allocator never hands
    // its frames out, never written after boot, and direct-mapped for good.
    Some(unsafe { phys_slice(start, len as usize) })
}

/// Copy out of physical memory shared with a ring-3 driver (its DMA frames) through the
/// direct map. The caller checked that the frames belong to that driver (`task`), so they
/// are allocated; their content is untrusted data, read with a copy.
pub fn phys_read(paddr: u64, buf: &mut [u8]) {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    // SAFETY: the direct map covers all RAM; the frames are allocated (caller's check) and a
    // byte copy has no validity requirements. A concurrent ring-3 writer only changes data.
    unsafe { core::ptr::copy_nonoverlapping(p2v(paddr) as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Copy into physical memory shared with a ring-3 driver (see [`phys_read`]).
///
/// # Safety
/// `[paddr, paddr + data.len())` is RAM that no kernel object lives in: frames a live
/// ring-3 task owns (checked by the caller under the kernel lock), kept allocated meanwhile.
pub unsafe fn phys_write(paddr: u64, data: &[u8]) {
    // SAFETY: forwarded to the caller; ring-3 memory holds no kernel data.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p2v(paddr) as *mut u8, data.len()) }
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
}

/// An aligned 64-bit load/store in shared driver memory (ring indices), volatile.
pub fn phys_read_u64(paddr: u64) -> u64 {
    assert!(paddr % 8 == 0);
    // SAFETY: as in `phys_read`; aligned.
    let v = unsafe { core::ptr::read_volatile(p2v(paddr) as *const u64) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    v
}
///
/// # Safety
/// As for [`phys_write`].
pub unsafe fn phys_write_u64(paddr: u64, v: u64) {
    assert!(paddr % 8 == 0);
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    // SAFETY: forwarded to the caller; aligned.
    unsafe { core::ptr::write_volatile(p2v(paddr) as *mut u64, v) }
}

/// Zero a physical frame through the direct map.
///
/// # Safety
/// The caller owns the frame (just allocated, nothing else refers to it).
pub unsafe fn zero_frame(paddr: u64) {
    // SAFETY: forwarded to the caller; the direct map covers all RAM.
    unsafe { core::ptr::write_bytes(p2v(paddr) as *mut u8, 0, 4096) }
}

pub fn is_allocated(paddr: u64) -> bool {
    with(|a| a.is_allocated(paddr))
}
