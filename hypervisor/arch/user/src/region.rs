//! Owned regions of mapped memory: fresh pages ([`Pages`], `SYS_MAP`), device windows
//! ([`Mmio`], `SYS_MAP_MMIO`), DMA memory ([`DmaRegion`], `SYS_DMA_ALLOC`) and memory another
//! task lent this one ([`Grant`]).
//!
//! Why safe access is sound: a region's memory holds no Rust object. The kernel maps fresh
//! pages, device windows and DMA memory only into pages that were unmapped (it refuses the
//! rest) below the grant window, and grants only into the grant window; Rust objects live in
//! the image, the stack and the heap/DMA windows, which are mapped before any region can take
//! them (the heap's `init` fails if a region got there first). So nothing else in the program
//! points into a region, and the only way to unmap one is [`Pages::unmap`] / [`Mmio::unmap`],
//! which consume it. The memory may still change under us (a device, the kernel or another
//! task shares it), so it is reached only through volatile, bounds-checked accesses and
//! copies ([`Mem`]), never through a Rust reference. An access that faults (a region whose
//! pages a hostile syscall removed) kills this task; it never reaches a Rust object.

use crate::sys::{check, syscall6};
use catenary_ipc::syscall::*;
use core::sync::atomic::{fence, Ordering};

/// The memory of a region: `[base, base + len)`. Invariant: no overflow, and no Rust object
/// lies there (see the module doc). Not `Clone`: a `&Mem` lives only as long as its region.
#[derive(Debug)]
pub struct Mem {
    base: u64,
    len: u64,
}

impl Mem {
    /// # Safety
    /// `[base, base + len)` must not overflow and must hold no Rust object for as long as the
    /// `Mem` lives (memory this task mapped for the region, or a grant).
    pub(crate) unsafe fn new(base: u64, len: u64) -> Mem {
        debug_assert!(base.checked_add(len).is_some());
        Mem { base, len }
    }
    /// The address of the first byte (to tell the kernel or a device where it is).
    pub fn addr(&self) -> u64 {
        self.base
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of `n` bytes at `off`, if they lie inside and `align` divides it.
    fn at(&self, off: u64, n: u64, align: u64) -> Option<u64> {
        let end = off.checked_add(n)?;
        (end <= self.len && (self.base + off).is_multiple_of(align)).then_some(self.base + off)
    }
    #[track_caller]
    fn at_or_panic(&self, off: u64, n: u64, align: u64) -> u64 {
        match self.at(off, n, align) {
            Some(a) => a,
            None => panic!("region access out of bounds or misaligned"),
        }
    }
}

impl Mem {
    /// `SYS_VM(slot, op, …)` over `len` bytes of this region at `off`: the kernel copies them
    /// in or out (the workload service hands an image chunk a client lent it straight to the
    /// node's store). `ERR_BAD_ARG` if the range is not inside the region.
    pub fn vm(&self, slot: u64, op: u64, off: u64, len: u64, arg: u64) -> Result<u64, u64> {
        let Some(a) = self.at(off, len, 1) else { return Err(ERR_BAD_ARG) };
        // SAFETY: [a, a + len) lies inside this region, whose memory holds no Rust object
        // (Mem's invariant): whatever the kernel reads or writes there, no Rust access races
        // with it and nothing the program refers to changes.
        check(unsafe { syscall6(SYS_VM, slot, op, a, len, arg, 0) })
    }
}

macro_rules! accessors {
    ($($read:ident $write:ident $try_read:ident $t:ty),*) => {
        impl Mem {
            $(
                /// Volatile read at byte offset `off`, or None if out of bounds or misaligned.
                pub fn $try_read(&self, off: u64) -> Option<$t> {
                    let a = self.at(off, core::mem::size_of::<$t>() as u64, core::mem::align_of::<$t>() as u64)?;
                    // SAFETY: `a` is aligned and inside this region, whose memory is mapped
                    // and holds no Rust object (Mem's invariant): the read races with no
                    // Rust access; a concurrent writer (device, kernel) only changes the value.
                    Some(unsafe { core::ptr::read_volatile(a as *const $t) })
                }
                /// Volatile read at byte offset `off`; panics if out of bounds or misaligned.
                #[track_caller]
                pub fn $read(&self, off: u64) -> $t {
                    let a = self.at_or_panic(off, core::mem::size_of::<$t>() as u64, core::mem::align_of::<$t>() as u64);
                    // SAFETY: as in the `try_` read.
                    unsafe { core::ptr::read_volatile(a as *const $t) }
                }
                /// Volatile write at byte offset `off`; panics if out of bounds or misaligned
                /// (a write to a read-only grant faults and kills this task).
                #[track_caller]
                pub fn $write(&self, off: u64, v: $t) {
                    let a = self.at_or_panic(off, core::mem::size_of::<$t>() as u64, core::mem::align_of::<$t>() as u64);
                    // SAFETY: `a` is aligned and inside this region, which holds no Rust
                    // object (Mem's invariant): the write changes no Rust value.
                    unsafe { core::ptr::write_volatile(a as *mut $t, v) }
                }
            )*
        }
    };
}
accessors!(read_u8 write_u8 try_read_u8 u8, read_u16 write_u16 try_read_u16 u16, read_u32 write_u32 try_read_u32 u32, read_u64 write_u64 try_read_u64 u64);

impl Mem {
    /// Copy `buf.len()` bytes from offset `off` into `buf` (volatile: the memory may be shared);
    /// panics if out of bounds.
    #[track_caller]
    pub fn read(&self, off: u64, buf: &mut [u8]) {
        let a = self.at_or_panic(off, buf.len() as u64, 1);
        fence(Ordering::Acquire);
        let mut i = 0;
        while i < buf.len() {
            let p = a + i as u64;
            if p.is_multiple_of(8) && buf.len() - i >= 8 {
                // SAFETY: [p, p+8) is inside the region (checked above), aligned; no Rust object.
                let v = unsafe { core::ptr::read_volatile(p as *const u64) };
                buf[i..i + 8].copy_from_slice(&v.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: as above, one byte.
                buf[i] = unsafe { core::ptr::read_volatile(p as *const u8) };
                i += 1;
            }
        }
    }
    /// Copy `data` to offset `off` (volatile); panics if out of bounds.
    #[track_caller]
    pub fn write(&self, off: u64, data: &[u8]) {
        let a = self.at_or_panic(off, data.len() as u64, 1);
        let mut i = 0;
        while i < data.len() {
            let p = a + i as u64;
            if p.is_multiple_of(8) && data.len() - i >= 8 {
                let v = u64::from_ne_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
                // SAFETY: [p, p+8) is inside the region (checked above), aligned; no Rust object.
                unsafe { core::ptr::write_volatile(p as *mut u64, v) };
                i += 8;
            } else {
                // SAFETY: as above, one byte.
                unsafe { core::ptr::write_volatile(p as *mut u8, data[i]) };
                i += 1;
            }
        }
        fence(Ordering::Release);
    }
    /// Fill `n` bytes from `off` with `v`; panics if out of bounds.
    #[track_caller]
    pub fn fill(&self, off: u64, n: u64, v: u8) {
        self.at_or_panic(off, n, 1);
        let chunk = [v; 64];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(64);
            self.write(off + done, &chunk[..k as usize]);
            done += k;
        }
    }
}

fn pages_len(pages: u64) -> Result<u64, u64> {
    pages.checked_mul(PAGE).ok_or(ERR_BAD_ARG)
}
use crate::layout::PAGE;

/// Fresh zeroed pages of this task (`SYS_MAP`), charged to its memory quota.
#[derive(Debug)]
pub struct Pages {
    mem: Mem,
}

impl Pages {
    /// Map `pages` fresh pages at `virt` (page-aligned, below the grant window, every page
    /// unmapped: the kernel refuses the rest).
    pub fn map(virt: u64, pages: u64) -> Result<Pages, u64> {
        let len = pages_len(pages)?;
        virt.checked_add(len).ok_or(ERR_BAD_ARG)?;
        // SAFETY: SYS_MAP maps only into unmapped pages (it refuses the rest): it changes no
        // memory that holds a Rust object.
        check(unsafe { syscall6(SYS_MAP, virt, pages, 0, 0, 0, 0) })?;
        // SAFETY: the kernel just mapped [virt, virt+len) into pages that were unmapped, so
        // no Rust object is there, and only `unmap(self)` removes them.
        Ok(Pages { mem: unsafe { Mem::new(virt, len) } })
    }
    /// Unmap the pages (back to the quota).
    pub fn unmap(self) -> Result<(), u64> {
        // SAFETY: unmaps exactly this region's pages; the region is consumed, so nothing
        // points there any more.
        check(unsafe { syscall6(SYS_UNMAP, self.mem.base, self.mem.len / PAGE, 0, 0, 0, 0) }).map(|_| ())
    }
}

/// A device window (`SYS_MAP_MMIO`), uncached. A write programs the device: without an IOMMU
/// a device told a DMA address writes wherever it is told (the MMIO grant is the manifest's
/// trust in the driver; see docs/microkernel.md).
#[derive(Debug)]
pub struct Mmio {
    mem: Mem,
    /// The mapped pages: [pages.0, pages.0 + pages.1 pages).
    pages: (u64, u64),
}

impl Mmio {
    /// Map `len` bytes of a granted device range from `phys` (page-aligned) at `virt`.
    pub fn map(virt: u64, phys: u64, len: u64) -> Result<Mmio, u64> {
        Self::map_at(virt, phys, len, 0)
    }
    /// Map the pages holding [phys + off, phys + off + len) at `virt` (`phys` page-aligned);
    /// the region is the `len` bytes at `virt + off`.
    pub(crate) fn map_at(virt: u64, phys: u64, len: u64, off: u64) -> Result<Mmio, u64> {
        let size = off.checked_add(len).ok_or(ERR_BAD_ARG)?;
        let pages = size.div_ceil(PAGE);
        virt.checked_add(pages * PAGE).ok_or(ERR_BAD_ARG)?;
        // SAFETY: SYS_MAP_MMIO maps only into unmapped pages: no Rust object is touched.
        check(unsafe { syscall6(SYS_MAP_MMIO, virt, phys, size, 0, 0, 0) })?;
        // SAFETY: the kernel just mapped the device pages at [virt, virt + pages) into pages
        // that were unmapped: no Rust object is there; only `unmap(self)` removes them.
        Ok(Mmio { mem: unsafe { Mem::new(virt + off, len) }, pages: (virt, pages) })
    }
    pub fn unmap(self) -> Result<(), u64> {
        // SAFETY: unmaps exactly this window's pages; the window is consumed.
        check(unsafe { syscall6(SYS_UNMAP, self.pages.0, self.pages.1, 0, 0, 0, 0) }).map(|_| ())
    }
}

/// Physically contiguous DMA memory (`SYS_DMA_ALLOC`), kept until the task exits (a device
/// may still write it: the kernel stops the device before the frames are freed). Only volatile
/// access: the device may write it at any time.
#[derive(Debug)]
pub struct DmaRegion {
    mem: Mem,
    phys: u64,
}

impl DmaRegion {
    /// Allocate `pages` contiguous zeroed frames (within the DMA quota) mapped at `virt`.
    pub fn alloc(virt: u64, pages: u64) -> Result<DmaRegion, u64> {
        let len = pages_len(pages)?;
        virt.checked_add(len).ok_or(ERR_BAD_ARG)?;
        // SAFETY: SYS_DMA_ALLOC maps only into unmapped pages: no Rust object is touched.
        let phys = check(unsafe { syscall6(SYS_DMA_ALLOC, virt, pages, 0, 0, 0, 0) })?;
        // SAFETY: the kernel just mapped the frames at [virt, virt+len), pages that were
        // unmapped: no Rust object is there, and nothing unmaps a DmaRegion.
        Ok(DmaRegion { mem: unsafe { Mem::new(virt, len) }, phys })
    }
    /// The physical address of the first byte (for the device).
    pub fn phys(&self) -> u64 {
        self.phys
    }
}

/// Memory another task lent this one for a call (`SYS_CALL_GRANT`) or for good (`SYS_SHARE`),
/// as the kernel mapped it in the grant window. After the call is answered the kernel unmaps
/// it: a later access faults (or, once the slot is reused, reaches another lender's grant),
/// never a Rust object of this task.
#[derive(Debug)]
pub struct Grant {
    mem: Mem,
    writable: bool,
}

impl Grant {
    /// The grant the kernel reported at `addr` (bit 0: writable), `len` bytes; None unless it
    /// lies in the grant window.
    pub(crate) fn from_kernel(addr: u64, len: u64) -> Option<Grant> {
        let (base, writable) = (addr & !1, addr & 1 != 0);
        if base == 0 || !crate::layout::in_grant_window(base, len) {
            return None;
        }
        // SAFETY: [base, base+len) lies in the grant window, where the kernel maps only grants
        // and no Rust object ever lives.
        Some(Grant { mem: unsafe { Mem::new(base, len) }, writable })
    }
    /// A grant whose address someone told this task (a standing `SYS_SHARE`, announced in a
    /// message): `len` bytes at `addr`, writable. None unless it lies in the grant window —
    /// where no Rust object lives, so whatever is (or is not) mapped there, access is sound.
    pub fn at(addr: u64, len: u64) -> Option<Grant> {
        Grant::from_kernel(addr | 1, len)
    }
    pub fn writable(&self) -> bool {
        self.writable
    }
}

macro_rules! deref_mem {
    ($($t:ty),*) => {$(
        impl core::ops::Deref for $t {
            type Target = Mem;
            fn deref(&self) -> &Mem {
                &self.mem
            }
        }
    )*};
}
deref_mem!(Pages, Mmio, DmaRegion, Grant);

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Mem` over host memory (the test keeps `backing` alive and touches it only via `m`).
    fn host(backing: &mut [u64], off: u64, len: u64) -> Mem {
        assert!(off + len <= backing.len() as u64 * 8);
        // SAFETY: inside `backing`, which the test does not touch while `m` is used.
        unsafe { Mem::new(backing.as_mut_ptr() as u64 + off, len) }
    }

    #[test]
    fn accessors_stay_inside() {
        let mut b = [0u64; 8];
        let m = host(&mut b, 0, 32);
        m.write_u32(0, 0xdead_beef);
        m.write_u64(8, 7);
        m.write_u16(30, 0x1234);
        assert_eq!(m.read_u32(0), 0xdead_beef);
        assert_eq!(m.read_u64(8), 7);
        assert_eq!(m.try_read_u16(30), Some(0x1234));
        assert_eq!(m.try_read_u16(31), None, "misaligned");
        assert_eq!(m.try_read_u64(32), None, "one past the end");
        assert_eq!(m.try_read_u64(28), None, "crosses the end");
        assert_eq!(m.try_read_u8(u64::MAX), None, "offset overflow");
        assert_eq!(m.try_read_u32(u64::MAX - 1), None, "offset + size overflow");
        let _ = m;
        assert_eq!(b[4], 0, "nothing written beyond the region");
    }

    #[test]
    fn copies_stay_inside() {
        let mut b = [0u64; 8];
        let m = host(&mut b, 8, 20);
        let data: [u8; 20] = core::array::from_fn(|i| i as u8 + 1);
        m.write(0, &data);
        let mut back = [0u8; 19];
        m.read(1, &mut back);
        assert_eq!(&back[..], &data[1..]);
        m.fill(3, 2, 0xaa);
        assert_eq!(m.read_u8(3), 0xaa);
        assert_eq!(m.read_u8(5), 6);
        let _ = m;
        assert_eq!(b[0], 0, "nothing before");
        assert_eq!(b[3] >> 32, 0, "nothing after");
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn write_past_the_end_panics() {
        let mut b = [0u64; 4];
        let m = host(&mut b, 0, 16);
        m.write(10, &[0u8; 7]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn read_with_huge_offset_panics() {
        let mut b = [0u64; 4];
        let m = host(&mut b, 0, 16);
        m.read(u64::MAX, &mut [0u8; 2]);
    }

    #[test]
    fn grants_only_in_the_window() {
        use crate::layout::{GRANT_WINDOW, GRANT_WINDOW_END};
        assert!(Grant::from_kernel(GRANT_WINDOW | 1, 4096).is_some_and(|g| g.writable() && g.addr() == GRANT_WINDOW));
        assert!(Grant::from_kernel(0, 4096).is_none());
        assert!(Grant::from_kernel(0x40_0000, 4096).is_none(), "the image");
        assert!(Grant::from_kernel(GRANT_WINDOW_END - 4096, 8192).is_none(), "crosses the end");
        assert!(Grant::from_kernel(GRANT_WINDOW, u64::MAX).is_none(), "overflow");
    }
}
