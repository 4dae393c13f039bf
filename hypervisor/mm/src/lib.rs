//! catenary-mm: physical memory management for the Catenary kernel.
//!
//! [`FrameAllocator`] hands out 4 KiB physical frames. It is built from the usable ranges of the
//! boot memory map ([`FrameAllocator::from_boot_info`] or [`FrameAllocator::new`] with plain
//! `(start, len)` pairs) minus a list of extra reserved ranges (the first MiB, the kernel image,
//! boot modules, ...). The set of frames it manages is fixed at construction.
//!
//! State is one bit per frame (`1` = allocated or not managed) in a `Vec<u64>` taken from the
//! kernel heap, covering the frames from the lowest to the highest managed frame, plus the sorted
//! list of managed frame ranges (used to tell foreign addresses from double frees). Single-frame
//! allocation is next-fit from a hint (word-at-a-time scan, wrapping once), contiguous allocation
//! is first-fit with a physical-address alignment. Every failure is a returned error: exhaustion,
//! bad arguments, double frees and frees of frames the allocator does not manage. No `unsafe`, no
//! panics on any input.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::vec::Vec;
use catenary_bootinfo::BootInfo;
use core::fmt;

/// Size of a physical frame in bytes.
pub const PAGE_SIZE: u64 = 4096;
const FRAME_SHIFT: u32 = 12;
/// Largest span (highest minus lowest managed frame) the bitmap may cover: 2^28 frames = 1 TiB
/// of physical address space, a 32 MiB bitmap.
pub const MAX_SPAN_FRAMES: u64 = 1 << 28;

/// A 4 KiB-aligned physical frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysFrame {
    start: u64,
}

impl PhysFrame {
    /// The frame starting at `paddr`, or `None` if `paddr` is not page-aligned.
    pub fn from_start(paddr: u64) -> Option<PhysFrame> {
        paddr
            .is_multiple_of(PAGE_SIZE)
            .then_some(PhysFrame { start: paddr })
    }

    /// The frame containing `paddr`.
    pub fn containing(paddr: u64) -> PhysFrame {
        PhysFrame {
            start: paddr & !(PAGE_SIZE - 1),
        }
    }

    /// Physical address of the first byte.
    pub fn start(self) -> u64 {
        self.start
    }

    /// Frame number (`start / PAGE_SIZE`).
    pub fn number(self) -> u64 {
        self.start >> FRAME_SHIFT
    }
}

/// Why the allocator could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitError {
    /// No whole usable frame remains after removing the reserved ranges.
    NoUsableMemory,
    /// The managed frames span more than [`MAX_SPAN_FRAMES`].
    SpanTooLarge {
        /// The span in frames.
        frames: u64,
    },
    /// The heap could not provide the bitmap.
    OutOfHeap {
        /// Bitmap size requested, in bytes.
        bytes: u64,
    },
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No free frame (or no suitable free run) is left.
    OutOfMemory,
    /// A zero count, or an alignment that is zero or not a power of two.
    InvalidRequest,
}

/// Why a free was refused. Nothing is changed when a free fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not page-aligned.
    Unaligned {
        /// The address given.
        paddr: u64,
    },
    /// The frame is not managed by this allocator (reserved, or not memory at all).
    Foreign {
        /// The offending frame's address.
        paddr: u64,
    },
    /// The frame is managed but currently free.
    DoubleFree {
        /// The offending frame's address.
        paddr: u64,
    },
    /// A zero count, or a range that overflows the address space.
    InvalidRequest,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::NoUsableMemory => f.write_str("no usable memory for the frame allocator"),
            InitError::SpanTooLarge { frames } => {
                write!(f, "physical memory span of {frames} frames is too large")
            }
            InitError::OutOfHeap { bytes } => write!(f, "cannot allocate a {bytes}-byte bitmap"),
        }
    }
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::OutOfMemory => f.write_str("out of physical memory"),
            AllocError::InvalidRequest => f.write_str("invalid frame allocation request"),
        }
    }
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreeError::Unaligned { paddr } => write!(f, "free of unaligned address {paddr:#x}"),
            FreeError::Foreign { paddr } => write!(f, "free of unmanaged frame {paddr:#x}"),
            FreeError::DoubleFree { paddr } => write!(f, "double free of frame {paddr:#x}"),
            FreeError::InvalidRequest => f.write_str("invalid frame free request"),
        }
    }
}

/// Frame counts. `total = free + used`; `total` counts managed frames only (usable memory
/// minus reserved ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    /// Managed frames.
    pub total: u64,
    /// Frames available for allocation.
    pub free: u64,
    /// Frames currently allocated.
    pub used: u64,
}

impl FrameStats {
    /// `total` in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total * PAGE_SIZE
    }
    /// `free` in bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free * PAGE_SIZE
    }
    /// `used` in bytes.
    pub fn used_bytes(&self) -> u64 {
        self.used * PAGE_SIZE
    }
}

/// Bitmap physical frame allocator. See the crate documentation.
#[derive(Debug, Clone)]
pub struct FrameAllocator {
    /// Frame number of bitmap bit 0.
    base: u64,
    /// Number of frames covered by the bitmap.
    nframes: u64,
    /// One bit per frame: 1 = allocated or not managed.
    bitmap: Vec<u64>,
    /// Managed frame-number ranges `[first, end)`, sorted, disjoint, non-adjacent.
    ranges: Vec<(u64, u64)>,
    total: u64,
    free: u64,
    /// Bitmap index where the next single-frame search starts.
    hint: u64,
}

/// Sorts and merges overlapping or adjacent `[a, b)` ranges.
fn merge(ranges: &mut Vec<(u64, u64)>) {
    ranges.retain(|r| r.1 > r.0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *ranges = out;
}

/// Removes `[a, b)` from sorted disjoint `ranges`.
fn subtract(ranges: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    if b <= a {
        return;
    }
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(s, e) in ranges.iter() {
        if e <= a || s >= b {
            out.push((s, e));
            continue;
        }
        if s < a {
            out.push((s, a));
        }
        if b < e {
            out.push((b, e));
        }
    }
    *ranges = out;
}

impl FrameAllocator {
    /// Builds an allocator managing the whole frames inside `usable` (`(start, len)` byte
    /// ranges; partial frames at the edges are dropped) minus every frame touching a `reserved`
    /// range. Ranges may be unsorted and overlapping; lengths running past the end of the
    /// address space are clamped. All managed frames start free.
    pub fn new(
        usable: &[(u64, u64)],
        reserved: &[(u64, u64)],
    ) -> Result<FrameAllocator, InitError> {
        let mut ranges: Vec<(u64, u64)> = usable
            .iter()
            .map(|&(start, len)| {
                let end = start.saturating_add(len);
                (start.div_ceil(PAGE_SIZE), end >> FRAME_SHIFT)
            })
            .collect();
        merge(&mut ranges);
        for &(start, len) in reserved {
            let end = start.saturating_add(len);
            subtract(&mut ranges, start >> FRAME_SHIFT, end.div_ceil(PAGE_SIZE));
        }
        let (Some(&(base, _)), Some(&(_, end))) = (ranges.first(), ranges.last()) else {
            return Err(InitError::NoUsableMemory);
        };
        let nframes = end - base;
        if nframes > MAX_SPAN_FRAMES {
            return Err(InitError::SpanTooLarge { frames: nframes });
        }
        let words = nframes.div_ceil(64) as usize;
        let mut bitmap = Vec::new();
        bitmap
            .try_reserve_exact(words)
            .map_err(|_| InitError::OutOfHeap {
                bytes: words as u64 * 8,
            })?;
        bitmap.resize(words, u64::MAX);
        let mut fa = FrameAllocator {
            base,
            nframes,
            bitmap,
            ranges,
            total: 0,
            free: 0,
            hint: 0,
        };
        for i in 0..fa.ranges.len() {
            let (a, b) = fa.ranges[i];
            fa.clear_bits(a - base, b - base);
            fa.total += b - a;
        }
        fa.free = fa.total;
        Ok(fa)
    }

    /// Builds an allocator from the usable memory of a (normalised) [`BootInfo`] memory map,
    /// minus `reserved`. Note the map's module ranges are already excluded (they are
    /// `KernelAndModules`); pass the kernel image, the first MiB and anything else to keep.
    pub fn from_boot_info(
        info: &BootInfo,
        reserved: &[(u64, u64)],
    ) -> Result<FrameAllocator, InitError> {
        let usable: Vec<(u64, u64)> = info.usable_frames().collect();
        FrameAllocator::new(&usable, reserved)
    }

    /// Allocates one frame and returns its physical address.
    pub fn alloc(&mut self) -> Result<u64, AllocError> {
        if self.free == 0 {
            return Err(AllocError::OutOfMemory);
        }
        let i = self
            .find_clear(self.hint, self.nframes)
            .or_else(|| self.find_clear(0, self.hint))
            .ok_or(AllocError::OutOfMemory)?;
        self.set_bits(i, i + 1);
        self.free -= 1;
        self.hint = if i + 1 >= self.nframes { 0 } else { i + 1 };
        Ok((self.base + i) << FRAME_SHIFT)
    }

    /// Allocates one frame as a [`PhysFrame`].
    pub fn alloc_frame(&mut self) -> Result<PhysFrame, AllocError> {
        self.alloc().map(|start| PhysFrame { start })
    }

    /// Allocates `count` physically contiguous frames whose first frame's address is a
    /// multiple of `align_frames * PAGE_SIZE` (`align_frames` a power of two; 1 = no extra
    /// alignment, 512 = 2 MiB). First fit from the lowest address. Returns the physical
    /// address of the first frame.
    pub fn alloc_contiguous(&mut self, count: u64, align_frames: u64) -> Result<u64, AllocError> {
        if count == 0 || !align_frames.is_power_of_two() {
            return Err(AllocError::InvalidRequest);
        }
        if count > self.free {
            return Err(AllocError::OutOfMemory);
        }
        let mut pos = 0;
        loop {
            let f = self
                .find_clear(pos, self.nframes)
                .ok_or(AllocError::OutOfMemory)?;
            let frame = self.base + f;
            let aligned = frame
                .checked_add(align_frames - 1)
                .map(|x| x & !(align_frames - 1))
                .ok_or(AllocError::OutOfMemory)?;
            let cand = aligned - self.base;
            let cand_end = cand.checked_add(count).ok_or(AllocError::OutOfMemory)?;
            if cand_end > self.nframes {
                return Err(AllocError::OutOfMemory);
            }
            match self.find_set(cand, cand_end) {
                Some(used) => pos = used + 1,
                None => {
                    self.set_bits(cand, cand_end);
                    self.free -= count;
                    return Ok(aligned << FRAME_SHIFT);
                }
            }
        }
    }

    /// Frees the frame at `paddr` (as returned by [`FrameAllocator::alloc`], or any frame of a
    /// contiguous allocation).
    pub fn free(&mut self, paddr: u64) -> Result<(), FreeError> {
        self.free_contiguous(paddr, 1)
    }

    /// Frees `count` contiguous frames starting at `paddr`. All frames are checked before any is
    /// freed: on error nothing changes.
    pub fn free_contiguous(&mut self, paddr: u64, count: u64) -> Result<(), FreeError> {
        if !paddr.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Unaligned { paddr });
        }
        if count == 0 {
            return Err(FreeError::InvalidRequest);
        }
        let first = paddr >> FRAME_SHIFT;
        let end = first.checked_add(count).ok_or(FreeError::InvalidRequest)?;
        // The whole run must lie in one managed range (ranges are non-adjacent, so a run that
        // crosses a range end crosses an unmanaged frame).
        let idx = self.ranges.partition_point(|r| r.1 <= first);
        match self.ranges.get(idx) {
            Some(&(a, b)) if a <= first => {
                if end > b {
                    return Err(FreeError::Foreign {
                        paddr: b << FRAME_SHIFT,
                    });
                }
            }
            _ => return Err(FreeError::Foreign { paddr }),
        }
        let (i, j) = (first - self.base, end - self.base);
        if let Some(k) = self.find_clear(i, j) {
            return Err(FreeError::DoubleFree {
                paddr: (self.base + k) << FRAME_SHIFT,
            });
        }
        self.clear_bits(i, j);
        self.free += count;
        Ok(())
    }

    /// Whether the frame containing `paddr` is managed by this allocator.
    pub fn manages(&self, paddr: u64) -> bool {
        let f = paddr >> FRAME_SHIFT;
        let idx = self.ranges.partition_point(|r| r.1 <= f);
        self.ranges.get(idx).is_some_and(|&(a, _)| a <= f)
    }

    /// Whether the frame containing `paddr` is managed and currently allocated.
    pub fn is_allocated(&self, paddr: u64) -> bool {
        self.manages(paddr) && self.bit((paddr >> FRAME_SHIFT) - self.base)
    }

    /// Current frame counts.
    pub fn stats(&self) -> FrameStats {
        FrameStats {
            total: self.total,
            free: self.free,
            used: self.total - self.free,
        }
    }

    /// The managed physical ranges as `(start, len)` byte pairs, sorted.
    pub fn managed_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .map(|&(a, b)| (a << FRAME_SHIFT, (b - a) << FRAME_SHIFT))
    }

    // ---- bitmap helpers (indices relative to `base`, `[a, b)` within `0..=nframes`) ----

    fn bit(&self, i: u64) -> bool {
        self.bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Mask of bits `[lo, hi)` within one word (`0 <= lo < hi <= 64`).
    fn mask(lo: u64, hi: u64) -> u64 {
        let upper = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
        upper & !((1u64 << lo) - 1)
    }

    fn set_bits(&mut self, a: u64, b: u64) {
        self.update_bits(a, b, true);
    }

    fn clear_bits(&mut self, a: u64, b: u64) {
        self.update_bits(a, b, false);
    }

    fn update_bits(&mut self, mut a: u64, b: u64, set: bool) {
        while a < b {
            let w = a / 64;
            let hi = (b - w * 64).min(64);
            let m = Self::mask(a % 64, hi);
            let word = &mut self.bitmap[w as usize];
            if set {
                *word |= m;
            } else {
                *word &= !m;
            }
            a = (w + 1) * 64;
        }
    }

    /// First index in `[a, b)` whose bit equals `want`.
    fn find_bit(&self, mut a: u64, b: u64, want: bool) -> Option<u64> {
        while a < b {
            let w = a / 64;
            let hi = (b - w * 64).min(64);
            let m = Self::mask(a % 64, hi);
            let word = self.bitmap[w as usize];
            let hits = if want { word } else { !word } & m;
            if hits != 0 {
                return Some(w * 64 + u64::from(hits.trailing_zeros()));
            }
            a = (w + 1) * 64;
        }
        None
    }

    fn find_clear(&self, a: u64, b: u64) -> Option<u64> {
        self.find_bit(a, b, false)
    }

    fn find_set(&self, a: u64, b: u64) -> Option<u64> {
        self.find_bit(a, b, true)
    }
}
