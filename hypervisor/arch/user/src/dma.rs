//! DMA-capable memory for ring-3 drivers: a heap whose every byte is DMA memory (so that
//! `virtio-drivers`' heap buffers have a physical address without a translation syscall) and
//! the `virtio_drivers` HAL over the kernel's grant syscalls (`dma_alloc` 15, `map_mmio` 14).
//!
//! One region of the address space is laid out here:
//! - `HEAP_VA`: the heap, one `dma_alloc` of `heap_pages` contiguous frames ([`init`]);
//! - `DMA_VA`..: further `dma_alloc`s (virtqueues), bump-allocated, never freed;
//! - `MMIO_VA`..: device windows (`map_mmio`), bump-allocated.
//!
//! Single-threaded programs only (a ring-3 driver is one task): the heap lock is a spin flag.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

pub use crate::layout::{DMA_VA, HEAP_VA, MMIO_VA};
use crate::region::{DmaRegion, Mmio};

const SYS_MAP_MMIO: u64 = 14;
const SYS_DMA_ALLOC: u64 = 15;

static HEAP_PHYS: AtomicU64 = AtomicU64::new(0);
static HEAP_LEN: AtomicU64 = AtomicU64::new(0);
static DMA_NEXT: AtomicU64 = AtomicU64::new(DMA_VA);
static MMIO_NEXT: AtomicU64 = AtomicU64::new(MMIO_VA);
/// (virt, phys, len) of the `dma_alloc`s beyond the heap, for `share`.
#[allow(clippy::declare_interior_mutable_const)] // only to initialise REGIONS
const NONE: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static REGIONS: [[AtomicU64; 3]; 16] = [NONE; 16];

fn dma_syscall(virt: u64, pages: u64) -> Option<u64> {
    // SAFETY: SYS_DMA_ALLOC maps only into unmapped pages: it touches no Rust object.
    let r = unsafe { crate::sys::syscall6(SYS_DMA_ALLOC, virt, pages, 0, 0, 0, 0) };
    (r < 1 << 63).then_some(r)
}

/// Allocate `pages` contiguous DMA pages at the next free address of the DMA region; returns
/// (virt, phys) (for the HAL, which hands them to `virtio-drivers`).
fn alloc_pages(pages: u64) -> Option<(u64, u64)> {
    let v = DMA_NEXT.fetch_add(pages * 4096, Ordering::Relaxed);
    let p = dma_syscall(v, pages)?;
    for r in REGIONS.iter() {
        if r[2].load(Ordering::Relaxed) == 0 {
            r[0].store(v, Ordering::Relaxed);
            r[1].store(p, Ordering::Relaxed);
            r[2].store(pages * 4096, Ordering::Relaxed);
            break;
        }
    }
    Some((v, p))
}

/// `pages` contiguous DMA pages at the next free address of the DMA window, as an owned
/// region (kept until the task exits).
pub fn alloc(pages: u64) -> Option<DmaRegion> {
    let size = pages.checked_mul(4096)?;
    let v = DMA_NEXT.fetch_add(size, Ordering::Relaxed);
    DmaRegion::alloc(v, pages).ok()
}

/// Map the `len` bytes of a granted device range at `phys` (any alignment) at the next free
/// address of the MMIO window, uncached.
pub fn mmio(phys: u64, len: u64) -> Option<Mmio> {
    let start = phys & !0xfff;
    let size = (phys - start).checked_add(len)?.checked_add(4095)? & !0xfff;
    let v = MMIO_NEXT.fetch_add(size.checked_add(4096)?, Ordering::Relaxed);
    Mmio::map_at(v, start, len, phys - start).ok()
}

/// Map [phys, phys+len) (page-aligned start, granted by the kernel) uncached; returns the
/// virtual address of `phys` (for the HAL).
fn map_mmio(phys: u64, len: u64) -> Option<u64> {
    let start = phys & !0xfff;
    let size = phys.checked_add(len)?.checked_sub(start)?.checked_add(4095)? & !4095;
    let v = MMIO_NEXT.fetch_add(size.checked_add(4096)?, Ordering::Relaxed);
    // SAFETY: SYS_MAP_MMIO maps only into unmapped pages: it touches no Rust object.
    let r = unsafe { crate::sys::syscall6(SYS_MAP_MMIO, v, start, size, 0, 0, 0) };
    (r == 0).then_some(v + (phys - start))
}

/// The heap stays inside its window (`layout`: Rust memory, which `hostile` never unmaps).
const HEAP_MAX_PAGES: u64 = (DMA_VA - HEAP_VA) / 4096;

struct Heap {
    lock: AtomicBool,
    heap: core::cell::UnsafeCell<linked_list_allocator::Heap>,
}
// SAFETY: every access to `heap` holds `lock`.
unsafe impl Sync for Heap {}

#[cfg_attr(feature = "runtime", global_allocator)]
static HEAP: Heap = Heap { lock: AtomicBool::new(false), heap: core::cell::UnsafeCell::new(linked_list_allocator::Heap::empty()) };

impl Heap {
    fn with<R>(&self, f: impl FnOnce(&mut linked_list_allocator::Heap) -> R) -> R {
        while self.lock.swap(true, Ordering::Acquire) {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held: this is the only reference.
        let r = f(unsafe { &mut *self.heap.get() });
        self.lock.store(false, Ordering::Release);
        r
    }
}

// SAFETY: allocation is delegated to `linked_list_allocator::Heap`, under the lock.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.with(|h| h.allocate_first_fit(l).map(|p| p.as_ptr()).unwrap_or(core::ptr::null_mut()))
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with layout `l` (GlobalAlloc's contract).
        self.with(|h| unsafe { h.deallocate(NonNull::new_unchecked(p), l) })
    }
}

/// Make the heap: `pages` contiguous DMA pages at `HEAP_VA`. Returns false if the kernel
/// refused (no DMA grant).
pub fn init(pages: u64) -> bool {
    if pages > HEAP_MAX_PAGES {
        return false;
    }
    let Some(p) = dma_syscall(HEAP_VA, pages) else { return false };
    HEAP_PHYS.store(p, Ordering::Relaxed);
    HEAP_LEN.store(pages * 4096, Ordering::Relaxed);
    // SAFETY: [HEAP_VA, +pages*4096) was just mapped for this task into unmapped pages (so no
    // other object is there, and a second `init` fails: the pages are taken) and is used only
    // as heap.
    HEAP.with(|h| unsafe { h.init(HEAP_VA as *mut u8, (pages * 4096) as usize) });
    true
}

/// Make the heap out of ordinary memory (a program without DMA grants, e.g. `netd`):
/// `pages` fresh pages mapped at `HEAP_VA` with `SYS_MAP` (at most 1024 a call). Not DMA
/// memory: the virtio HAL never sees it. Returns false if the kernel refused (quota).
pub fn init_mapped(pages: u64) -> bool {
    const SYS_MAP: u64 = 9;
    if pages > HEAP_MAX_PAGES {
        return false;
    }
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(1024);
        // SAFETY: SYS_MAP maps only into unmapped pages: it touches no Rust object.
        if unsafe { crate::sys::syscall6(SYS_MAP, HEAP_VA + done * 4096, n, 0, 0, 0, 0) } != 0 {
            return false;
        }
        done += n;
    }
    // SAFETY: [HEAP_VA, +pages*4096) was just mapped for this task into unmapped pages (so no
    // other object is there, and a second `init` fails: the pages are taken) and is used only
    // as heap.
    HEAP.with(|h| unsafe { h.init(HEAP_VA as *mut u8, (pages * 4096) as usize) });
    true
}

/// Bounce slots for buffers outside DMA memory (the driver's stack: `virtio-drivers` shares a
/// stack-allocated virtio-net header on transmit). 16 slots of 256 bytes in one DMA page;
/// bit i of BOUNCE_USED = slot i in use.
const BOUNCE_SLOT: u64 = 256;
static BOUNCE_VA: AtomicU64 = AtomicU64::new(0);
static BOUNCE_PA: AtomicU64 = AtomicU64::new(0);
static BOUNCE_USED: AtomicU64 = AtomicU64::new(0);

fn in_dma(v: u64) -> Option<u64> {
    let (hp, hl) = (HEAP_PHYS.load(Ordering::Relaxed), HEAP_LEN.load(Ordering::Relaxed));
    if (HEAP_VA..HEAP_VA + hl).contains(&v) {
        return Some(hp + (v - HEAP_VA));
    }
    for r in REGIONS.iter() {
        let (rv, rp, rl) = (r[0].load(Ordering::Relaxed), r[1].load(Ordering::Relaxed), r[2].load(Ordering::Relaxed));
        if rl != 0 && (rv..rv + rl).contains(&v) {
            return Some(rp + (v - rv));
        }
    }
    None
}

fn virt_to_phys(v: u64) -> u64 {
    let (hp, hl) = (HEAP_PHYS.load(Ordering::Relaxed), HEAP_LEN.load(Ordering::Relaxed));
    if (HEAP_VA..HEAP_VA + hl).contains(&v) {
        return hp + (v - HEAP_VA);
    }
    for r in REGIONS.iter() {
        let (rv, rp, rl) = (r[0].load(Ordering::Relaxed), r[1].load(Ordering::Relaxed), r[2].load(Ordering::Relaxed));
        if rl != 0 && (rv..rv + rl).contains(&v) {
            return rp + (v - rv);
        }
    }
    panic!("DMA: buffer outside DMA memory")
}

/// The `virtio_drivers` HAL of a ring-3 driver.
pub struct UserHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, physically contiguous frames owned by this
// task (kernel `dma_alloc`), mapped at the returned address; `share` returns the physical
// address of heap or DMA memory, which is physically contiguous (one allocation each) and
// stays mapped for the task's life; `mmio_phys_to_virt` maps a granted device window.
unsafe impl Hal for UserHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let (v, p) = alloc_pages(pages as u64).expect("DMA: out of granted pages");
        (p, NonNull::new(v as *mut u8).expect("DMA region is not at 0"))
    }
    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0 // kept until the task exits (the kernel frees its frames then)
    }
    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let v = map_mmio(paddr, size as u64).expect("MMIO: range not granted");
        NonNull::new(v as *mut u8).expect("MMIO region is not at 0")
    }
    unsafe fn share(buffer: NonNull<[u8]>, dir: BufferDirection) -> PhysAddr {
        let v = buffer.as_ptr() as *mut u8 as u64;
        if in_dma(v).is_none() {
            // a small buffer elsewhere (stack): bounce it through a DMA slot
            assert!(buffer.len() as u64 <= BOUNCE_SLOT, "DMA: large buffer outside DMA memory");
            if BOUNCE_VA.load(Ordering::Relaxed) == 0 {
                let (bv, bp) = alloc_pages(1).expect("DMA: no page for bounce buffers");
                BOUNCE_VA.store(bv, Ordering::Relaxed);
                BOUNCE_PA.store(bp, Ordering::Relaxed);
            }
            let used = BOUNCE_USED.load(Ordering::Relaxed);
            let i = (!used).trailing_zeros() as u64;
            assert!(i < 4096 / BOUNCE_SLOT, "DMA: out of bounce slots");
            BOUNCE_USED.store(used | 1 << i, Ordering::Relaxed);
            let slot = BOUNCE_VA.load(Ordering::Relaxed) + i * BOUNCE_SLOT;
            if dir != BufferDirection::DeviceToDriver {
                // SAFETY: `buffer` is valid for reads (Hal::share's contract); the slot is a
                // DMA page of this task, not aliased (its bit was free).
                unsafe { core::ptr::copy_nonoverlapping(buffer.as_ptr() as *const u8, slot as *mut u8, buffer.len()) };
            }
            return BOUNCE_PA.load(Ordering::Relaxed) + i * BOUNCE_SLOT;
        }
        let p = virt_to_phys(v);
        if buffer.len() > 1 {
            assert_eq!(virt_to_phys(v + buffer.len() as u64 - 1), p + buffer.len() as u64 - 1, "DMA: buffer crosses regions");
        }
        p
    }
    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, dir: BufferDirection) {
        let bp = BOUNCE_PA.load(Ordering::Relaxed);
        if bp != 0 && (bp..bp + 4096).contains(&paddr) {
            let i = (paddr - bp) / BOUNCE_SLOT;
            if dir != BufferDirection::DriverToDevice {
                let slot = BOUNCE_VA.load(Ordering::Relaxed) + i * BOUNCE_SLOT;
                // SAFETY: `buffer` is valid for writes when the device may have written it
                // (Hal::unshare's contract); the slot is ours.
                unsafe { core::ptr::copy_nonoverlapping(slot as *const u8, buffer.as_ptr() as *mut u8, buffer.len()) };
            }
            BOUNCE_USED.fetch_and(!(1 << i), Ordering::Relaxed);
        }
    }
}
