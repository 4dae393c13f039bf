//! The one vCPU interface of the microVM monitor and the guest RAM both backends map.
//!
//! ```text
//!  kernel vm loop (safe)                 arch (this crate)                 vmm (safe, host-tested)
//!  ───────────────────                   ─────────────────                 ───────────────────────
//!  vm.poll(now); ev = vm.next_event(st)
//!  exit = vcpu.run(ev) ───────────────▶  SVM: VMCB/VMRUN   VMX: VMCS/VMLAUNCH
//!  st = vcpu.state()                     decodes the hardware exit into vmm::Exit
//!  vm.handle_exit(exit, &mut st, ram) ────────────────────────────────────▶ device model
//!  vcpu.set_state(&st)
//! ```
//!
//! Contract for every backend:
//! - `run` enters the guest once with interrupts masked around the world switch, and lets
//!   pending host interrupts be serviced before it returns (an `ExternalInterrupt` exit needs
//!   no handling by the caller).
//! - Exits are reported with RIP **at** the exiting instruction; the device model advances it.
//! - An event interrupted mid-delivery (EXITINTINFO / IDT-vectoring info) is re-injected by the
//!   backend itself on the next `run`; `reinjection_pending()` tells the loop not to ask the
//!   device model for another event meanwhile.
//! - The backend switches what the world switch leaves alone (`guest_switch.rs`): the FPU/SSE/AVX
//!   state and XCR0 (XSAVE), DR0–DR3 and DR6; the guest has its own of each.
//! - The intercepts are `catenary_vmm::intercepts` (host-tested); a host NMI that arrives while
//!   a guest runs reaches the host's NMI handler on both backends.
//! - A nested/EPT fault during the guest's own page walk is `Exit::PageWalkFault`, never MMIO.
//! - `VcpuState.efer` never shows the virtualization-enable bit (SVME): that is the backend's.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};
use catenary_vmm::cpu::{Exit, VcpuState};
use catenary_vmm::mem::{GuestMemory, MemError};
use catenary_vmm::EventDecision;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtError {
    /// Neither SVM+NPT nor VMX+EPT is available.
    Unsupported(&'static str),
    OutOfMemory,
    /// The hardware refused to enter (VMX VM-instruction error number, or SVM reason).
    EntryFailed(u64),
}

/// One virtual CPU, backed by SVM or VMX.
pub trait Vcpu {
    /// "svm" or "vmx".
    fn backend(&self) -> &'static str;
    /// The hardware tag of this vCPU's address space (SVM ASID / VMX VPID).
    fn id(&self) -> u32;
    fn set_state(&mut self, s: &VcpuState);
    fn state(&self) -> VcpuState;
    /// Enter the guest once with `event` (an injection, an interrupt-window request, or
    /// nothing), and return the decoded exit.
    fn run(&mut self, event: EventDecision) -> Result<Exit, VirtError>;
    fn reinjection_pending(&self) -> bool;
    /// Whether the backend maps guest RAM lazily: only populated chunks are mapped at creation
    /// and `map_ram_chunk` maps the others on the guest's first access (reported as an
    /// `Exit::Mmio` inside RAM). Backends that map everything up front return false, and the
    /// caller populates all of guest RAM before the first entry.
    fn lazy_ram(&self) -> bool {
        false
    }
    /// Zero (if not yet) and map RAM chunk `idx` (guest-physical `idx * 2 MiB`) of the guest
    /// RAM this vCPU was made for; an index outside it is ignored. Only this vCPU's own RAM
    /// can be mapped: there is no way to name other host memory (it took a host address
    /// before, which let safe code map anything, the APIC or kernel memory, into a guest):
    ///
    /// ```compile_fail
    /// #![forbid(unsafe_code)]
    /// fn map_any(v: &mut dyn catenary_arch::virt::Vcpu) { v.map_ram_chunk(0, 0xfee0_0000) }
    /// ```
    /// ```
    /// #![forbid(unsafe_code)]
    /// fn map_own(v: &mut dyn catenary_arch::virt::Vcpu) { v.map_ram_chunk(0) }
    /// ```
    fn map_ram_chunk(&mut self, _idx: usize) {}
    /// Host memory this vCPU uses beyond guest RAM (control structures, bitmaps, page tables).
    fn overhead_bytes(&self) -> u64;
    /// Which CPUs this vCPU entered its guest on, and how often it moved (docs/vmm.md, "SMP").
    fn placement(&self) -> Placement;
}

/// vCPU moves between CPUs since boot, all vCPUs (`Placement::enter`).
static MIGRATIONS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How many times any vCPU entered its guest on a different CPU than the time before.
pub fn migrations_total() -> u64 {
    MIGRATIONS.load(core::sync::atomic::Ordering::Relaxed)
}

/// Where a vCPU ran: recorded by the backend inside the interrupts-off window of each entry,
/// where the CPU cannot change any more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    /// Bit n: the vCPU entered its guest on CPU index n at least once.
    pub cpus: u64,
    /// Entries on a different CPU than the previous entry.
    pub migrations: u64,
    /// The CPU of the last entry.
    pub last_cpu: Option<usize>,
}

impl Placement {
    /// Record an entry on `cpu`; true if the vCPU last entered elsewhere (or never), i.e. the
    /// TLB of this CPU may hold stale translations for it and per-CPU state must be this CPU's.
    pub fn enter(&mut self, cpu: usize) -> bool {
        let moved = self.last_cpu != Some(cpu);
        if moved && self.last_cpu.is_some() {
            self.migrations += 1;
            MIGRATIONS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
        self.cpus |= 1u64.checked_shl(cpu as u32).unwrap_or(0);
        self.last_cpu = Some(cpu);
        moved
    }
}

pub const CHUNK: u64 = 2 << 20;

/// Guest RAM: 2 MiB host chunks from the frame allocator, guest-physical from 0. Returned to the
/// allocator when the `GuestRam` *and* every vCPU made from it are dropped: a vCPU holds its
/// own reference to the chunks it maps, so no safe sequence of calls leaves a guest mapping
/// onto freed frames.
///
/// Chunks are zeroed on first use, not up front: a chunk becomes visible to the guest only
/// after it has been zeroed (the loader's writes populate what they touch; backends with lazy
/// mapping zero and map the rest on the guest's first access, `Vcpu::map_ram_chunk`). So a
/// guest never sees another guest's data, and creating a microVM does not pay for zeroing
/// RAM the guest never touches.
pub struct GuestRam {
    chunks: Arc<RamChunks>,
    size: u64,
}

/// The frames of one guest's RAM, shared by its `GuestRam` and its vCPUs.
pub(crate) struct RamChunks {
    phys: Vec<u64>,
    populated: Vec<AtomicU8>,
}

impl RamChunks {
    /// Host physical address of chunk `idx`.
    pub(crate) fn chunk(&self, idx: usize) -> Option<u64> {
        self.phys.get(idx).copied()
    }
    pub(crate) fn is_populated(&self, idx: usize) -> bool {
        self.populated.get(idx).is_some_and(|p| p.load(Ordering::Acquire) == POPULATED)
    }
    /// Zero chunk `idx` if it has not been yet; true if this call did. One caller zeroes (the
    /// one that moves the chunk from `EMPTY` to `ZEROING`); a concurrent caller (the `GuestRam`
    /// and a vCPU share the chunks) waits until it is `POPULATED` instead of zeroing it again
    /// (possibly after a guest already wrote it).
    pub(crate) fn populate(&self, idx: usize) -> bool {
        let Some(p) = self.populated.get(idx) else { return false };
        match p.compare_exchange(EMPTY, ZEROING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let t = crate::cpu::rdtsc();
                // SAFETY: a 2 MiB chunk these RamChunks own, reached through the direct map;
                // this caller alone moved it to ZEROING, so nobody else writes it, and it is
                // not populated, so no guest mapping of it exists (backends map only populated
                // chunks) and nothing reads it.
                unsafe { crate::fastmem::zero(crate::paging::p2v(self.phys[idx]) as *mut u8, CHUNK as usize) };
                p.store(POPULATED, Ordering::Release);
                ZEROED.0.fetch_add(1, Ordering::Relaxed);
                ZEROED.1.fetch_add(crate::cpu::rdtsc().wrapping_sub(t), Ordering::Relaxed);
                true
            }
            Err(_) => {
                while p.load(Ordering::Acquire) != POPULATED {
                    core::hint::spin_loop();
                }
                false
            }
        }
    }
}

/// Guest RAM chunks zeroed since boot and the TSC cycles that took (`zeroed_chunks`).
static ZEROED: (core::sync::atomic::AtomicU64, core::sync::atomic::AtomicU64) = (core::sync::atomic::AtomicU64::new(0), core::sync::atomic::AtomicU64::new(0));

/// (chunks zeroed, TSC cycles spent zeroing them) since boot, all microVMs (the boot
/// timeline's figure, docs/vmm.md).
pub fn zeroed_chunks() -> (u64, u64) {
    (ZEROED.0.load(Ordering::Relaxed), ZEROED.1.load(Ordering::Relaxed))
}

/// Chunk states (`RamChunks::populated`).
const EMPTY: u8 = 0;
const ZEROING: u8 = 1;
const POPULATED: u8 = 2;

impl Drop for RamChunks {
    fn drop(&mut self) {
        for &c in &self.phys {
            // SAFETY: the last reference is gone: neither the `GuestRam` nor any vCPU (whose
            // nested/EPT tables map these chunks; each holds a reference until its own drop
            // has made its tables unusable) remains.
            let _ = unsafe { crate::memory::free_contiguous(c, 512) };
        }
    }
}

impl GuestRam {
    pub fn new(size: u64) -> Result<GuestRam, VirtError> {
        let n = size.div_ceil(CHUNK);
        let mut phys = Vec::new();
        phys.try_reserve_exact(n as usize).map_err(|_| VirtError::OutOfMemory)?;
        let mut populated = Vec::new();
        populated.try_reserve_exact(n as usize).map_err(|_| VirtError::OutOfMemory)?;
        let mut chunks = RamChunks { phys, populated };
        for _ in 0..n {
            // (on failure, dropping `chunks` frees those taken so far)
            let p = crate::memory::alloc_contiguous(512, 512).map_err(|_| VirtError::OutOfMemory)?;
            chunks.phys.push(p);
            chunks.populated.push(AtomicU8::new(EMPTY));
        }
        Ok(GuestRam { chunks: Arc::new(chunks), size: n * CHUNK })
    }

    /// The chunks, for a vCPU that maps them (it keeps them alive).
    pub(crate) fn share(&self) -> Arc<RamChunks> {
        self.chunks.clone()
    }

    /// Zero chunk `idx` if it has not been yet. Returns true if this call populated it.
    pub fn populate(&mut self, idx: usize) -> bool {
        self.chunks.populate(idx)
    }

    pub fn populate_all(&mut self) {
        for i in 0..self.chunks.phys.len() {
            self.populate(i);
        }
    }

    pub fn is_populated(&self, idx: usize) -> bool {
        self.chunks.is_populated(idx)
    }

    pub fn populated_bytes(&self) -> u64 {
        (0..self.chunks.phys.len()).filter(|&i| self.is_populated(i)).count() as u64 * CHUNK
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host physical chunks (guest-physical `i * 2 MiB` maps to `chunks()[i]`).
    pub fn chunks(&self) -> &[u64] {
        &self.chunks.phys
    }

    fn span(&self, gpa: u64, len: usize) -> Result<(), MemError> {
        match gpa.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(MemError::OutOfRange { gpa, len: len as u64 }),
        }
    }

    /// Iterate (host virtual address, length, offset in the buffer) over chunk pieces.
    fn pieces(&self, gpa: u64, len: usize, mut f: impl FnMut(u64, usize, usize)) {
        let mut done = 0usize;
        while done < len {
            let g = gpa + done as u64;
            let idx = (g / CHUNK) as usize;
            let off = g % CHUNK;
            let n = ((CHUNK - off) as usize).min(len - done);
            f(crate::paging::p2v(self.chunks.phys[idx] + off), n, done);
            done += n;
        }
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.span(gpa, buf.len())?;
        // An unpopulated chunk reads as zeros (it will be zeroed before the guest sees it).
        if (gpa / CHUNK..=(gpa + buf.len().max(1) as u64 - 1) / CHUNK).any(|i| !self.is_populated(i as usize)) {
            let mut at = 0usize;
            while at < buf.len() {
                let g = gpa + at as u64;
                let n = ((CHUNK - g % CHUNK) as usize).min(buf.len() - at);
                if self.is_populated((g / CHUNK) as usize) {
                    self.pieces(g, n, |hva, m, o| {
                        // SAFETY: inside a populated chunk of this guest's RAM (checked above).
                        unsafe { core::ptr::copy_nonoverlapping(hva as *const u8, buf[at + o..].as_mut_ptr(), m) }
                    });
                } else {
                    buf[at..at + n].fill(0);
                }
                at += n;
            }
            return Ok(());
        }
        self.pieces(gpa, buf.len(), |hva, n, at| {
            // SAFETY: [gpa, gpa+len) is inside guest RAM (checked), which this struct owns and
            // the direct map covers; guest RAM is plain bytes, any value is valid. With several
            // vCPUs another CPU's guest may write these bytes meanwhile (as a device's DMA
            // would): no Rust reference to guest RAM ever exists, only raw copies in and out,
            // so a torn read gives the device model odd bytes (which it treats as hostile
            // anyway), never undefined behaviour of a Rust object.
            unsafe { crate::fastmem::copy(buf[at..].as_mut_ptr(), hva as *const u8, n) }
        });
        Ok(())
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.span(gpa, buf.len())?;
        if !buf.is_empty() {
            for i in gpa / CHUNK..=(gpa + buf.len() as u64 - 1) / CHUNK {
                self.populate(i as usize);
            }
        }
        self.pieces(gpa, buf.len(), |hva, n, at| {
            // SAFETY: as in `read`; we hold `&mut self`.
            unsafe { crate::fastmem::copy(hva as *mut u8, buf[at..].as_ptr(), n) }
        });
        Ok(())
    }
}


/// Turn on hardware virtualization on this CPU ahead of the first microVM (per-CPU host save
/// areas are allocated here, once). Returns the backend name, or why there is none.
pub fn enable_this_cpu() -> Result<&'static str, VirtError> {
    let f = crate::cpu::features();
    if f.svm && f.npt {
        crate::svm::enable_on_this_cpu().map(|_| "svm")
    } else if f.vmx && f.ept {
        crate::vmx::enable_on_this_cpu().map(|_| "vmx")
    } else {
        Err(VirtError::Unsupported("this CPU has neither SVM+NPT nor VMX+EPT"))
    }
}

/// Most vCPUs one microVM may have on this node's backend: 8 (the MP table's limit) when an
/// application processor can start. Each vCPU is its own backend object (SVM: VMCB and nested
/// tables; VMX: VMCS and EPT, over the shared `RamChunks`), so vCPUs of one VM on different
/// CPUs share nothing but guest RAM. An AP starts in real mode at its Startup IPI vector, which
/// SVM runs under NPT and VMX only with the unrestricted-guest control: without it, 1.
pub fn max_vcpus_per_vm() -> u8 {
    let f = crate::cpu::features();
    if (f.svm && f.npt) || (f.vmx && f.ept && crate::vmx::unrestricted_guest_available()) {
        8
    } else {
        1
    }
}

/// Pick the backend from CPUID: SVM with nested paging, else VMX with EPT.
pub fn create_vcpu(ram: &GuestRam, vm_id: u32) -> Result<Box<dyn Vcpu>, VirtError> {
    let f = crate::cpu::features();
    if f.svm && f.npt {
        return crate::svm::SvmVcpu::new(ram, vm_id).map(|v| Box::new(v) as Box<dyn Vcpu>);
    }
    if f.vmx && f.ept {
        return crate::vmx::create(ram, vm_id);
    }
    Err(VirtError::Unsupported("this CPU has neither SVM+NPT nor VMX+EPT"))
}
