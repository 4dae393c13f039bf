//! The kernel heap: `talc` (a well-kept allocator crate) over a bootstrap arena in .bss, so
//! `Vec`/`Box` work before the frame allocator exists, grown later with spans of frames taken
//! from the frame allocator and reached through the direct map.

use core::sync::atomic::{AtomicU64, Ordering};

const BOOT_ARENA: usize = 4 << 20;

#[repr(C, align(4096))]
struct Arena([u8; BOOT_ARENA]);
static mut ARENA: Arena = Arena([0; BOOT_ARENA]);

static HEAP_BYTES: AtomicU64 = AtomicU64::new(BOOT_ARENA as u64);

/// The heap lock disables interrupts while held: a task preempted inside the allocator must
/// never leave the lock taken while an interrupt handler on the same CPU allocates.
pub struct IrqSpinLock {
    locked: core::sync::atomic::AtomicBool,
    /// Whether interrupts were on when the holder took the lock (only the holder touches it).
    irq_was_on: core::sync::atomic::AtomicBool,
}

// SAFETY: a test-and-set spin lock: `lock` only returns once this caller flipped `locked`
// from false to true (Acquire), `unlock` releases it (Release); exclusive access follows.
unsafe impl lock_api::RawMutex for IrqSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: IrqSpinLock =
        IrqSpinLock { locked: core::sync::atomic::AtomicBool::new(false), irq_was_on: core::sync::atomic::AtomicBool::new(false) };
    type GuardMarker = lock_api::GuardNoSend;
    fn lock(&self) {
        loop {
            let on = crate::cpu::interrupts_enabled();
            crate::cpu::disable_interrupts();
            if self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                self.irq_was_on.store(on, Ordering::Relaxed);
                return;
            }
            if on {
                crate::cpu::enable_interrupts();
            }
            core::hint::spin_loop();
        }
    }
    fn try_lock(&self) -> bool {
        let on = crate::cpu::interrupts_enabled();
        crate::cpu::disable_interrupts();
        if self.locked.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.irq_was_on.store(on, Ordering::Relaxed);
            true
        } else {
            if on {
                crate::cpu::enable_interrupts();
            }
            false
        }
    }
    unsafe fn unlock(&self) {
        let on = self.irq_was_on.load(Ordering::Relaxed);
        self.locked.store(false, Ordering::Release);
        if on {
            crate::cpu::enable_interrupts();
        }
    }
}

#[cfg(feature = "kernel")]
#[global_allocator]
static ALLOCATOR: talc::Talck<IrqSpinLock, talc::ClaimOnOom> = talc::Talc::new(
    // SAFETY: the arena is a static used by nothing else; ClaimOnOom claims it on first use.
    unsafe { talc::ClaimOnOom::new(talc::Span::from_array(core::ptr::addr_of!(ARENA.0) as *mut [u8; BOOT_ARENA])) },
)
.lock();

/// Add `frames` contiguous frames (allocated here) to the heap.
#[cfg(feature = "kernel")]
pub fn grow(frames: usize) -> Result<(), crate::memory::AllocError> {
    let p = crate::memory::alloc_contiguous(frames as u64, 1)?;
    let base = crate::paging::p2v(p) as *mut u8;
    let size = frames * 4096;
    crate::cpu::without_interrupts(|| {
        // SAFETY: the frames were just allocated and are mapped by the direct map; the span is
        // handed to the allocator for good.
        unsafe { ALLOCATOR.lock().claim(talc::Span::from_base_size(base, size)) }
    })
    .map_err(|_| crate::memory::AllocError::OutOfMemory)?;
    HEAP_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    Ok(())
}

/// Bytes currently allocated from the heap (talc's counters).
#[cfg(feature = "kernel")]
pub fn used_bytes() -> u64 {
    ALLOCATOR.lock().get_counters().allocated_bytes as u64
}

/// Total bytes given to the heap so far.
pub fn size() -> u64 {
    HEAP_BYTES.load(Ordering::Relaxed)
}

/// The bootstrap arena's virtual range (it lives in the kernel's .bss).
pub fn arena_range() -> (u64, u64) {
    let a = core::ptr::addr_of!(ARENA) as u64;
    (a, a + BOOT_ARENA as u64)
}
