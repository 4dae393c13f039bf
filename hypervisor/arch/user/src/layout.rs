//! The address-space layout of a ring-3 program, as far as soundness depends on it: where Rust
//! objects live (the image, the stack, the heap and DMA windows) and where they never do (the
//! grant window, memory mapped by a region type, everything outside the user half).
//!
//! The kernel owns the layout (kernel/src/task/mod.rs: `USER_STACK_TOP`, `USER_STACK_PAGES`,
//! `GRANT_WINDOW`, `GRANT_SLOTS` × `GRANT_MAX_PAGES`; hypervisor/user/user.ld: the image at
//! 4 MiB). Kept here by hand: `hostile` checks the stack pointer against [`STACK`] before it
//! trusts it.

pub const PAGE: u64 = 4096;
/// The first address above the user half (non-canonical from here to the kernel half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Where the kernel maps memory granted to this task: 64 slots of 4096 pages. It maps
/// nothing else there, and SYS_MAP / SYS_MAP_MMIO / SYS_DMA_ALLOC accept only addresses below.
pub const GRANT_WINDOW: u64 = 0x0000_6000_0000_0000;
pub const GRANT_WINDOW_END: u64 = GRANT_WINDOW + 64 * 4096 * PAGE;
/// The task's stack: 32 pages below 0x7fff_ffff_0000, an unmapped guard page under them.
pub const STACK_TOP: u64 = 0x0000_7fff_ffff_0000;
pub const STACK_PAGES: u64 = 32;
pub const STACK: (u64, u64) = (STACK_TOP - STACK_PAGES * PAGE, STACK_TOP);
/// The heap (`dma::init`, `dma::init_mapped`) and the DMA window of `virtio-drivers`'
/// queues (`dma::UserHal`): Rust objects live here once mapped.
pub const HEAP_VA: u64 = 0x10_0000_0000;
pub const DMA_VA: u64 = 0x11_0000_0000;
/// Device windows mapped for `virtio-drivers` (`dma::map_mmio`).
pub const MMIO_VA: u64 = 0x12_0000_0000;
pub const MMIO_END: u64 = 0x13_0000_0000;
/// Where the linker puts the image (hypervisor/user/user.ld).
pub const IMAGE_BASE: u64 = 0x40_0000;

/// Where this program's Rust objects are: `[image.0, image.2)` is the image, of which
/// `[image.1, image.2)` is writable (data, bss); `stack` and `heap` are writable.
#[derive(Clone, Copy, Debug)]
pub struct RustMemory {
    pub image: (u64, u64, u64),
    pub stack: (u64, u64),
    pub heap: (u64, u64),
}

impl RustMemory {
    /// Whether [lo, hi) meets any Rust object (read-only or writable).
    pub fn meets(&self, lo: u64, hi: u64) -> bool {
        let m = |a: u64, b: u64| lo < hi && lo < b && hi > a;
        m(self.image.0, self.image.2) || m(self.stack.0, self.stack.1) || m(self.heap.0, self.heap.1)
    }
    /// Whether [lo, hi) meets writable Rust memory (data, bss, stack, heap).
    pub fn meets_writable(&self, lo: u64, hi: u64) -> bool {
        let m = |a: u64, b: u64| lo < hi && lo < b && hi > a;
        m(self.image.1, self.image.2) || m(self.stack.0, self.stack.1) || m(self.heap.0, self.heap.1)
    }
}

#[cfg(feature = "runtime")]
extern "C" {
    // user.ld: the start of the writable segment and the end of the image.
    static __catenary_data: u8;
    static __catenary_end: u8;
}

/// This program's Rust memory (host builds without the runtime: a made-up layout).
pub fn rust_memory() -> RustMemory {
    #[cfg(feature = "runtime")]
    let (data, end) = (core::ptr::addr_of!(__catenary_data) as u64, core::ptr::addr_of!(__catenary_end) as u64);
    #[cfg(not(feature = "runtime"))]
    let (data, end) = (IMAGE_BASE + 0x10_0000, IMAGE_BASE + 0x20_0000);
    RustMemory { image: (IMAGE_BASE, data, end), stack: STACK, heap: (HEAP_VA, MMIO_VA) }
}

/// Whether [addr, addr + len) lies inside the grant window (no overflow).
pub fn in_grant_window(addr: u64, len: u64) -> bool {
    addr >= GRANT_WINDOW && addr.checked_add(len).is_some_and(|e| e <= GRANT_WINDOW_END)
}
