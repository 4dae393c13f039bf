//! The global physical frame allocator (the logic is `catenary-mm`, host-tested) and physical
//! memory access through the current physical view.

use catenary_mm::FrameAllocator;
use core::sync::atomic::{AtomicU64, Ordering};
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
/// Set by the boot path (the Limine HHDM) and `paging::build_and_activate`; not exported:
/// a wrong offset would make every physical access write elsewhere.
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// catenary_arch::paging::set_early_phys_view(0);
/// ```
#[cfg_attr(not(feature = "kernel"), allow(dead_code))]
pub(crate) fn set_early_phys_view(offset: u64) {
    PHYS_VIEW.store(offset, core::sync::atomic::Ordering::Relaxed);
}
/// Virtual address at which physical address `p` can be read now.
pub fn p2v(p: u64) -> u64 {
    p.wrapping_add(phys_view())
}

/// Install the frame allocator, once (from the boot memory map). A second call is refused
/// (false): replacing the allocator would hand out frames that are in use.
pub fn install(frames: FrameAllocator) -> bool {
    crate::cpu::without_interrupts(|| {
        let mut g = FRAMES.lock();
        if g.is_some() {
            return false;
        }
        *g = Some(frames);
        true
    })
}

/// Physical addresses are below this (52-bit physical address space).
pub const PHYS_LIMIT: u64 = 1 << 52;

/// RAM the kernel may use other than through the frame allocator: the memory-map ranges that
/// are not device or reserved space (kernel image, boot modules, ACPI, boot-loader data).
static RAM_RANGES: Mutex<alloc::vec::Vec<(u64, u64)>> = Mutex::new(alloc::vec::Vec::new());

static RAM_RANGES_SET: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Record the RAM ranges (`(start, len)`) of the memory map, once, after `install`; later
/// calls are ignored (they could only shrink what `is_ram` refuses to ring 3).
pub fn set_ram_ranges(ranges: &[(u64, u64)]) {
    if RAM_RANGES_SET.swap(true, Ordering::SeqCst) {
        return;
    }
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
    /// Give the frame to ring 3, just mapped once: it becomes a user frame owned by the
    /// task (see [`free_user_frame`]).
    pub(crate) fn into_user(self) -> u64 {
        let f = self.0;
        core::mem::forget(self);
        with_user(|u| insert_user(u, f));
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
        with_user(|u| (0..n).for_each(|i| insert_user(u, p + i * 4096)));
        (p, n)
    }
}

impl Drop for FreshRun {
    fn drop(&mut self) {
        // SAFETY: the token owns the run and was never mapped (mapping consumes it).
        let _ = unsafe { free_contiguous(self.phys, self.pages) };
    }
}

/// `pages` physically contiguous frames the kernel keeps for itself (the image store's
/// bytes): zeroed, never mapped into a task or a guest, reached only through this token (the
/// direct map), freed on drop. Safe because the token owns the frames alone: `bytes` and
/// `bytes_mut` borrow it, so nothing can read or write them after it is dropped.
#[derive(Debug)]
pub struct KernelRun {
    phys: u64,
    pages: u64,
}

impl KernelRun {
    pub fn alloc(pages: u64) -> Result<KernelRun, AllocError> {
        let phys = alloc_contiguous(pages, 1)?;
        let run = KernelRun { phys, pages };
        // SAFETY: just allocated: the run is ours alone; the direct map covers RAM.
        unsafe { core::ptr::write_bytes(p2v(phys) as *mut u8, 0, (pages * 4096) as usize) };
        Ok(run)
    }
    pub fn pages(&self) -> u64 {
        self.pages
    }
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the frames are allocated, owned by this token alone and mapped by the direct
        // map; the slice borrows the token, so it cannot outlive the frames, and writes need
        // `&mut self`.
        unsafe { core::slice::from_raw_parts(p2v(self.phys) as *const u8, (self.pages * 4096) as usize) }
    }
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `bytes`; `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(p2v(self.phys) as *mut u8, (self.pages * 4096) as usize) }
    }
}

impl Drop for KernelRun {
    fn drop(&mut self) {
        // SAFETY: the token owns the run; it was never mapped anywhere but the direct map, and
        // no borrow of it outlives the token.
        let _ = unsafe { free_contiguous(self.phys, self.pages) };
    }
}

/// Advanced whenever a translation other CPUs may cache is removed (a freed kernel stack, a
/// user mapping removed from a space loaded on another CPU); each CPU records the value it
/// last flushed its TLB at (`paging::tlb_catch_up`, at its ticks and switches).
pub(crate) static TLB_EPOCH: AtomicU64 = AtomicU64::new(1);
static TLB_FLUSHED: [AtomicU64; crate::percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; crate::percpu::MAX_CPUS];
/// CPUs that have recorded a flush (a CPU that never has, never ran a task).
static TLB_CPUS: AtomicU64 = AtomicU64::new(0);

/// This CPU flushed its whole TLB at epoch `e` (or later).
pub(crate) fn tlb_flushed_at(cpu: usize, e: u64) {
    if let Some(seen) = TLB_FLUSHED.get(cpu) {
        seen.store(e, Ordering::SeqCst);
        TLB_CPUS.fetch_or(1 << cpu, Ordering::SeqCst);
    }
}

/// The epoch `cpu` last flushed at.
pub(crate) fn tlb_seen(cpu: usize) -> Option<u64> {
    TLB_FLUSHED.get(cpu).map(|s| s.load(Ordering::SeqCst))
}

/// Every CPU has flushed its TLB since `epoch`.
pub(crate) fn all_flushed_since(epoch: u64) -> bool {
    let cpus = TLB_CPUS.load(Ordering::SeqCst);
    (0..crate::percpu::MAX_CPUS).filter(|c| cpus & (1 << c) != 0).all(|c| TLB_FLUSHED[c].load(Ordering::SeqCst) >= epoch)
}

/// A frame handed to ring 3 as task memory (see [`free_user_frame`]).
#[derive(Debug, Clone, Copy)]
struct UserFrame {
    /// Page-table mappings of it (in any address space) plus live loans (`user_mem::Lent`).
    refs: u32,
    /// The owning task has not given it up yet (`free_user_frame`).
    owned: bool,
    /// A mapping of it was removed while its address space was loaded on another CPU, which
    /// may still cache it: the frame is reused only once every CPU flushed since this TLB
    /// epoch (0: no such removal).
    stale: u64,
}

/// Frames handed to ring 3 as task memory and not yet freed: the only frames the kernel
/// writes on a task's behalf through [`user_write`]. A user frame goes back to the allocator
/// when its owner has given it up *and* nothing maps or lends it any more (and no other CPU
/// may hold a stale translation of it): safe code cannot free a frame twice or free one that
/// a task can still reach.
static USER_FRAMES: Mutex<alloc::collections::BTreeMap<u64, UserFrame>> = Mutex::new(alloc::collections::BTreeMap::new());
/// User frames released but waiting for every CPU to flush its TLB: (frame, epoch).
static PENDING_FREES: Mutex<alloc::vec::Vec<(u64, u64)>> = Mutex::new(alloc::vec::Vec::new());

fn with_user<R>(f: impl FnOnce(&mut alloc::collections::BTreeMap<u64, UserFrame>) -> R) -> R {
    crate::cpu::without_interrupts(|| f(&mut USER_FRAMES.lock()))
}

/// Make frames the task's, each mapped once (called by the mapping code in `user_mem`).
fn insert_user(u: &mut alloc::collections::BTreeMap<u64, UserFrame>, f: u64) {
    u.insert(f, UserFrame { refs: 1, owned: true, stale: 0 });
}

/// One more mapping or loan of user frame `paddr`; false (nothing counted) if it is not one.
pub(crate) fn user_ref(paddr: u64) -> bool {
    with_user(|u| match u.get_mut(&paddr) {
        Some(e) => {
            e.refs += 1;
            true
        }
        None => false,
    })
}

/// A mapping or loan of user frame `paddr` is gone. `remote`: the mapping was removed from an
/// address space loaded on another CPU (which may cache it until it flushes).
pub(crate) fn user_unref(paddr: u64, remote: bool) {
    with_user(|u| {
        let Some(e) = u.get_mut(&paddr) else { return };
        e.refs = e.refs.saturating_sub(1);
        if remote {
            e.stale = TLB_EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
        }
        if e.refs == 0 && !e.owned {
            release(u, paddr);
        }
    })
}

/// Remove a user frame nobody owns, maps or lends any more, and free it (now, or once every
/// CPU has flushed a translation another CPU may still hold).
fn release(u: &mut alloc::collections::BTreeMap<u64, UserFrame>, paddr: u64) {
    let Some(e) = u.remove(&paddr) else { return };
    if e.stale != 0 && !all_flushed_since(e.stale) {
        PENDING_FREES.lock().push((paddr, e.stale));
        return;
    }
    // SAFETY: a user frame (holds no kernel object) that no page table maps and no loan
    // names (refs 0), whose owner gave it up, and no CPU can still use a translation to it:
    // removed from a space loaded nowhere else (a CPU that ran the space may cache the entry
    // under its PCID, but flushes that PCID before it loads the space again, `crate::pcid`),
    // or every CPU flushed since; `user_write` cannot reach it any more (removed from the set
    // under its lock).
    let _ = unsafe { free_frame(paddr) };
}

/// Free `paddr` once every CPU has flushed its TLB since now.
///
/// # Safety
/// `paddr` was allocated here; no page table maps it and nothing refers to it any more, except
/// translations other CPUs may still cache (its mapping was removed and flushed on this CPU
/// only).
pub(crate) unsafe fn free_after_flush(paddr: u64) {
    let e = TLB_EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
    crate::cpu::without_interrupts(|| PENDING_FREES.lock().push((paddr, e)));
}

/// Free the released user frames every CPU has flushed since (called at TLB catch-up).
pub(crate) fn free_flushed_user_frames() {
    crate::cpu::without_interrupts(|| {
        let mut p = PENDING_FREES.lock();
        p.retain(|&(f, epoch)| {
            if !all_flushed_since(epoch) {
                return true;
            }
            // SAFETY: as in `release`: no mapping, loan or owner, and every CPU has flushed
            // its TLB since the last mapping was removed.
            let _ = unsafe { free_frame(f) };
            false
        });
    })
}

/// User frames released but not yet back in the allocator (waiting for other CPUs' TLB
/// flushes; tests wait for zero before counting free frames).
pub fn user_frees_pending() -> usize {
    crate::cpu::without_interrupts(|| PENDING_FREES.lock().len())
}

/// The owning task gives up user frame `paddr` (it unmapped it, or it has died). The frame
/// goes back to the allocator now if nothing maps or lends it, else when the last mapping or
/// loan goes. Refused (`Foreign`) for a frame that is not a user frame or was given up
/// already, so a double free is an error, and a frame still mapped somewhere is never reused:
///
/// ```no_run
/// #![forbid(unsafe_code)]
/// use catenary_arch::{memory, uspace::AddressSpace};
/// let mut space = AddressSpace::new().unwrap();
/// let f = space.map_fresh_frame(0x40_0000, memory::FreshFrame::alloc().unwrap(), true, false).unwrap();
/// assert!(memory::free_user_frame(f).is_ok()); // still mapped: stays allocated
/// assert!(memory::is_allocated(f) && memory::user_write(f, b"still the task's"));
/// assert!(memory::free_user_frame(f).is_err()); // a second free is refused
/// space.unmap(0x40_0000).unwrap(); // the last mapping goes: now it is freed
/// assert!(!memory::is_allocated(f));
/// ```
pub fn free_user_frame(paddr: u64) -> Result<(), catenary_mm::FreeError> {
    with_user(|u| match u.get_mut(&paddr) {
        Some(e) if e.owned => {
            e.owned = false;
            if e.refs == 0 {
                release(u, paddr);
            }
            Ok(())
        }
        _ => Err(catenary_mm::FreeError::Foreign { paddr }),
    })
}

fn all_user(u: &alloc::collections::BTreeMap<u64, UserFrame>, paddr: u64, len: u64) -> bool {
    let Some(end) = paddr.checked_add(len) else { return false };
    (paddr & !0xfff..end).step_by(4096).all(|f| u.contains_key(&f))
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
        // user-frame lock (they leave the set under it before they are freed).
        unsafe { phys_write(paddr, data) };
        true
    })
}

/// An aligned 64-bit volatile store into task memory (see [`user_write`]).
pub fn user_write_u64(paddr: u64, v: u64) -> bool {
    with_user(|u| {
        if !paddr.is_multiple_of(8) || !all_user(u, paddr, 8) {
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

/// Physical (start, len) of the kernel image, recorded when the kernel page tables go live.
static KERNEL_IMAGE: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

#[cfg_attr(not(feature = "kernel"), allow(dead_code))]
pub(crate) fn set_kernel_image(start: u64, len: u64) {
    KERNEL_IMAGE.0.store(start, Ordering::Relaxed);
    KERNEL_IMAGE.1.store(len, Ordering::Relaxed);
}

/// Whether `[paddr, paddr + len)` may be read as firmware or boot-loader data: no page of it
/// is managed by the frame allocator or part of the kernel image (free frames, the kernel's
/// allocations and statics, which other CPUs may be writing, are not firmware tables), and the
/// range does not wrap. Only the image check applies before the allocator is installed (boot:
/// one CPU, nothing allocated yet).
pub(crate) fn firmware_readable(paddr: u64, len: u64) -> bool {
    let Some(end) = paddr.checked_add(len) else { return false };
    let (ks, kl) = (KERNEL_IMAGE.0.load(Ordering::Relaxed), KERNEL_IMAGE.1.load(Ordering::Relaxed));
    if kl != 0 && paddr < ks + kl && end > ks {
        return false; // the kernel image: its data and bss are Rust statics
    }
    crate::cpu::without_interrupts(|| match FRAMES.lock().as_ref() {
        None => true,
        Some(a) => (paddr & !0xfff..end).step_by(4096).all(|p| !a.manages(p)),
    })
}

/// Reads physical memory through the current physical view (boot identity map, HHDM or the
/// direct map). Used to parse boot information and ACPI tables; refuses (`Unreadable`) a range
/// that is not firmware or boot-loader data ([`firmware_readable`]). Only this crate makes one:
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// let _ = catenary_arch::memory::PhysView;
/// ```
pub struct PhysView(());

impl PhysView {
    pub(crate) fn new() -> PhysView {
        PhysView(())
    }
}

impl catenary_bootinfo::PhysRead for PhysView {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), catenary_bootinfo::BootError> {
        let view = phys_view();
        // Before our tables are live only the low 4 GiB is identity mapped.
        if view == 0 && paddr.saturating_add(buf.len() as u64) > 0x1_0000_0000 {
            return Err(catenary_bootinfo::BootError::Unreadable { paddr, len: buf.len() as u64 });
        }
        if !firmware_readable(paddr, buf.len() as u64) {
            return Err(catenary_bootinfo::BootError::Unreadable { paddr, len: buf.len() as u64 });
        }
        // SAFETY: not memory the frame allocator manages (checked above), so no Rust object
        // lives there and no other CPU writes it; the current view maps the boot structures and
        // firmware tables of the memory map. A byte copy holds no reference across it. (An
        // address outside every mapped range faults: a fatal kernel fault, not a wrong read.)
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

/// Record the boot modules the frame allocator keeps reserved (once, after `install`; later
/// calls, and calls before the allocator exists, are ignored). A recorded module is handed out
/// by [`boot_module`] only while it is neither allocator-managed nor kernel image.
pub fn set_boot_modules(modules: &[catenary_bootinfo::Module]) {
    crate::cpu::without_interrupts(|| {
        let mut g = MODULES.lock();
        if g.is_none() && FRAMES.lock().is_some() {
            *g = Some(modules.iter().map(|m| (m.start, m.len)).collect());
        }
    })
}

/// A boot module's bytes: `m` must be one of the modules recorded at boot (reserved in the
/// frame allocator, never written), else `None`.
pub fn boot_module(m: &catenary_bootinfo::Module) -> Option<&'static [u8]> {
    let (start, len) = (m.start, m.len);
    let known = crate::cpu::without_interrupts(|| MODULES.lock().as_ref().is_some_and(|v| v.contains(&(start, len))));
    if !known || usize::try_from(len).is_err() || !firmware_readable(start, len) || KERNEL_IMAGE.1.load(Ordering::Relaxed) == 0 {
        return None;
    }
    // SAFETY: a boot module recorded at boot, not managed by the frame allocator (so never
    // handed out or written by Rust code) and not the kernel image (checked above), in the
    // direct map (live once the kernel image is recorded, at the switch to the kernel's
    // tables: checked above), which maps the memory map's ranges for good.
    Some(unsafe { phys_slice(start, len as usize) })
}

/// Copy out of task memory shared with a ring-3 driver (its DMA frames, a ring) through the
/// direct map. Refuses (false, `buf` zeroed) anything that is not a user frame: the kernel's
/// own memory, device memory or a free frame cannot be read this way (it could before: any
/// physical address, racing kernel writers or faulting on MMIO). Whose frames they are is the
/// caller's policy.
pub fn phys_read(paddr: u64, buf: &mut [u8]) -> bool {
    let ok = with_user(|u| {
        if !all_user(u, paddr, buf.len() as u64) {
            return false;
        }
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: user frames, kept allocated while we hold the user-frame lock; the direct
        // map covers them and a byte copy has no validity requirements. A concurrent ring-3
        // writer only changes data (it is outside the Rust abstract machine).
        unsafe { core::ptr::copy_nonoverlapping(p2v(paddr) as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    });
    if !ok {
        buf.fill(0);
    }
    ok
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

/// An aligned 64-bit volatile load from task memory (ring indices); 0 when refused
/// (misaligned, or not a user frame: see [`phys_read`]).
pub fn phys_read_u64(paddr: u64) -> u64 {
    with_user(|u| {
        if !paddr.is_multiple_of(8) || !all_user(u, paddr, 8) {
            return 0;
        }
        // SAFETY: as in `phys_read`; aligned.
        let v = unsafe { core::ptr::read_volatile(p2v(paddr) as *const u64) };
        core::sync::atomic::fence(Ordering::Acquire);
        v
    })
}
/// An aligned 64-bit volatile store into shared driver memory.
///
/// # Safety
/// As for [`phys_write`].
pub unsafe fn phys_write_u64(paddr: u64, v: u64) {
    assert!(paddr.is_multiple_of(8));
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
