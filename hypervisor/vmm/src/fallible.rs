//! Fallible reservations for memory a guest makes the host allocate, with a test seam: host
//! tests can make the next reservations on their thread fail ([`fail_allocations`]) to check
//! that a failure ends only the VM.

use alloc::collections::TryReserveError;

/// A host allocation for guest-driven work failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

/// Run a `try_reserve*` call; `Err(OutOfMemory)` if it fails (or a test injected a failure).
pub fn reserve(r: impl FnOnce() -> Result<(), TryReserveError>) -> Result<(), OutOfMemory> {
    #[cfg(test)]
    if FAIL.with(|f| f.get()) {
        return Err(OutOfMemory);
    }
    r().map_err(|_| OutOfMemory)
}

#[cfg(test)]
std::thread_local! {
    static FAIL: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// (tests) Make every [`reserve`] on this thread fail while `on`.
#[cfg(test)]
pub fn fail_allocations(on: bool) {
    FAIL.with(|f| f.set(on));
}
