//! The global physical frame allocator (the logic is `catenary-mm`, host-tested) and physical
//! memory access through the current physical view.

use catenary_mm::FrameAllocator;
use spin::Mutex;

static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

pub use catenary_mm::{AllocError, FrameStats};

pub fn install(frames: FrameAllocator) {
    crate::cpu::without_interrupts(|| *FRAMES.lock() = Some(frames));
}

fn with<R>(f: impl FnOnce(&mut FrameAllocator) -> R) -> R {
    crate::cpu::without_interrupts(|| f(FRAMES.lock().as_mut().expect("frame allocator not installed")))
}

pub fn alloc_frame() -> Result<u64, AllocError> {
    with(|a| a.alloc())
}

pub fn alloc_contiguous(count: u64, align_frames: u64) -> Result<u64, AllocError> {
    with(|a| a.alloc_contiguous(count, align_frames))
}

pub fn free_frame(paddr: u64) -> Result<(), catenary_mm::FreeError> {
    with(|a| a.free(paddr))
}

pub fn free_contiguous(paddr: u64, count: u64) -> Result<(), catenary_mm::FreeError> {
    with(|a| a.free_contiguous(paddr, count))
}

pub fn stats() -> FrameStats {
    with(|a| a.stats())
}

/// Reads physical memory through the current physical view (boot identity map, HHDM or the
/// direct map). Used to parse boot information and ACPI tables.
pub struct PhysView;

impl catenary_bootinfo::PhysRead for PhysView {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), catenary_bootinfo::BootError> {
        let view = crate::paging::phys_view();
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

/// A byte slice view of physical memory (boot modules). Valid while the direct map exists,
/// i.e. forever after paging is set up, as long as the frames are never handed out.
pub fn phys_slice(paddr: u64, len: usize) -> &'static [u8] {
    // SAFETY: callers pass ranges reserved in the frame allocator (boot modules), which are
    // never freed or written, and the direct map is permanent.
    unsafe { core::slice::from_raw_parts(crate::paging::p2v(paddr) as *const u8, len) }
}

/// Copy out of physical memory shared with a ring-3 driver (its DMA frames) through the
/// direct map. The caller checked that the frames belong to that driver (`task`), so they
/// are allocated; their content is untrusted data, read with a copy.
pub fn phys_read(paddr: u64, buf: &mut [u8]) {
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    // SAFETY: the direct map covers all RAM; the frames are allocated (caller's check) and a
    // byte copy has no validity requirements. A concurrent ring-3 writer only changes data.
    unsafe { core::ptr::copy_nonoverlapping(crate::paging::p2v(paddr) as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Copy into physical memory shared with a ring-3 driver (see [`phys_read`]).
pub fn phys_write(paddr: u64, data: &[u8]) {
    // SAFETY: as in `phys_read`; the frames belong to the driver, not to the kernel.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), crate::paging::p2v(paddr) as *mut u8, data.len()) }
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
}

/// An aligned 64-bit load/store in shared driver memory (ring indices), volatile.
pub fn phys_read_u64(paddr: u64) -> u64 {
    assert!(paddr % 8 == 0);
    // SAFETY: as in `phys_read`; aligned.
    let v = unsafe { core::ptr::read_volatile(crate::paging::p2v(paddr) as *const u64) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    v
}
pub fn phys_write_u64(paddr: u64, v: u64) {
    assert!(paddr % 8 == 0);
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    // SAFETY: as in `phys_read`; aligned.
    unsafe { core::ptr::write_volatile(crate::paging::p2v(paddr) as *mut u64, v) }
}

/// Zero a physical frame through the direct map.
pub fn zero_frame(paddr: u64) {
    // SAFETY: the caller owns the frame (just allocated); the direct map covers it.
    unsafe { core::ptr::write_bytes(crate::paging::p2v(paddr) as *mut u8, 0, 4096) }
}

pub fn is_allocated(paddr: u64) -> bool {
    with(|a| a.is_allocated(paddr))
}
