//! Intel VT-x backend (VMX + EPT + VPID + unrestricted guest).
//!
//! Per CPU: CR4.VMXE, IA32_FEATURE_CONTROL checked (locked-on, or enabled and locked by us), a
//! VMXON region. Per vCPU: a VMCS (current on a CPU only inside one interrupts-off section:
//! VMPTRLD, use, VMCLEAR, so the vCPU's task can move to another CPU in between), I/O
//! bitmaps intercepting every port, an MSR bitmap intercepting every MSR except those the guest
//! owns (FS/GS/KERNEL_GS base, STAR/LSTAR/CSTAR/SFMASK, SYSENTER, PAT), 4-level EPT with 2 MiB
//! write-back pages over the guest RAM chunks, a VPID (one per vCPU), the VMX-preemption timer
//! (10 ms: the host gets its CPU back even where a host interrupt does not exit), the guest's GPRs, and its XSAVE area, XCR0, DR0–DR3 and DR6 (`guest_switch.rs`).
//!
//! Controls come from the capability MSRs (the TRUE_* ones when IA32_VMX_BASIC bit 55 says so):
//! wanted bits are adjusted to the allowed-0/allowed-1 settings. CR0/CR4 bits VMX forces
//! (IA32_VMX_CRx_FIXED0/1; PE/PG are free with unrestricted guest) are host-owned through the
//! guest/host masks, and the read shadows show the guest its own values; a guest write that
//! changes a host-owned bit exits (CR access) and is emulated here, inside `run`.
//!
//! Exits are decoded by `catenary_vmm::vmx_exit::decode_vmx_exit` (host-tested) with RIP left
//! at the exiting instruction: the device model advances it.
//!
//! Files: `caps.rs` (capability MSRs, control bits, per-CPU VMXON), `vmcs.rs` (field encodings
//! and the VMX instructions), `ept.rs`, `host.rs` (host state restored by a VM exit),
//! `setup.rs` (creating a vCPU and its VMCS), `state.rs` (guest registers and CR emulation),
//! `entry.rs` (VMLAUNCH/VMRESUME, injection, exits); this file: the vCPU and its `Vcpu` impl.

use crate::guest_switch::{FpuSwitch, GuestDebugRegs, XsaveArea};
use crate::virt::{GuestRam, Placement, RamChunks, Vcpu, VirtError, CHUNK};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use catenary_vmm::cpu::{DescTable, Exit, Segment, VcpuState, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use catenary_vmm::vmx_exit::{
    adjust_controls, adjust_cr, decode_cr_access, decode_vmx_exit, exit_reason_name, vm_instruction_error_name,
    CrAccess, VmxExitInfo,
};
use catenary_vmm::EventDecision;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

mod caps;
mod entry;
mod ept;
mod host;
mod setup;
mod state;
mod vmcs;

use caps::*;
pub use caps::{enable_on_this_cpu, unrestricted_guest_available};
use entry::*;
use ept::*;
use host::*;
use vmcs::*;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct GuestGprs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
}


// ---- the vCPU ----

pub struct VmxVcpu {
    /// The guest RAM its EPT maps (kept alive as long as this vCPU).
    ram: alloc::sync::Arc<RamChunks>,
    vmcs: u64,
    io_bitmaps: u64,
    msr_bitmap: u64,
    ept: Ept,
    vpid: u16,
    caps: Caps,
    unrestricted: bool,
    gprs: GuestGprs,
    host_fpu: Box<XsaveArea>,
    guest_fpu: Box<XsaveArea>,
    /// DR0–DR3 and DR6 (the guest DR7 lives in the VMCS).
    dr: GuestDebugRegs,
    guest_msrs: [u64; 5],
    xcr0: u64,
    /// CR2 is not in the VMCS: loaded into the real register around each entry.
    cr2: u64,
    launched: bool,
    /// The CPUs this vCPU entered its guest on (TLB flush decisions, reports).
    placement: Placement,
    /// Entry interruption info (+ error code, + instruction length) to re-deliver.
    reinject: Option<(u32, u32, u32)>,
    proc_base: u32,
    cr0_mask: u64,
    cr4_mask: u64,
}

pub fn create(ram: &GuestRam, vm_id: u32) -> Result<Box<dyn Vcpu>, VirtError> {
    VmxVcpu::new(ram, vm_id).map(|v| Box::new(v) as Box<dyn Vcpu>)
}

impl Vcpu for VmxVcpu {
    fn backend(&self) -> &'static str {
        "vmx"
    }

    fn id(&self) -> u32 {
        self.vpid as u32
    }

    fn set_state(&mut self, s: &VcpuState) {
        // Interrupts off: a task switch between VMPTRLD and the VMWRITEs could make another
        // vCPU's VMCS current on this CPU (two microVMs share a CPU), and the VMCS must be
        // cleared again before the task can move.
        crate::cpu::without_interrupts(|| {
            self.set_state_current(s);
            self.release();
        })
    }

    fn state(&self) -> VcpuState {
        crate::cpu::without_interrupts(|| {
            let s = self.state_current();
            // (As `release`; `launched` is already false: every section ends with VMCLEAR.)
            if on_here().is_ok() {
                let _ = vmx_pa_insn(1, self.vmcs);
            }
            s
        })
    }

    fn run(&mut self, event: EventDecision) -> Result<Exit, VirtError> {
        self.run_inner(event)
    }

    fn reinjection_pending(&self) -> bool {
        self.reinject.is_some()
    }

    fn lazy_ram(&self) -> bool {
        true
    }

    fn map_ram_chunk(&mut self, idx: usize) {
        let Some(hpa) = self.ram.chunk(idx) else { return };
        self.ram.populate(idx);
        let _ = self.ept.map_chunk(idx, hpa);
    }

    fn placement(&self) -> Placement {
        self.placement
    }

    fn overhead_bytes(&self) -> u64 {
        // VMCS + I/O bitmaps (2) + MSR bitmap + EPT tables + GPR/XSAVE areas
        (1 + 2 + 1 + 1 + self.ept.tables.len() as u64) * 4096 + 2 * core::mem::size_of::<XsaveArea>() as u64 + core::mem::size_of::<Self>() as u64
    }
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        crate::cpu::without_interrupts(|| {
            // Flush what this VM cached, then make the VMCS inactive before its frame goes back.
            if self.load().is_ok() {
                self.flush_tlb();
                let _ = vmx_pa_insn(1, self.vmcs);
            }
        });
        // SAFETY: this vCPU's own frames; its VMCS is not active on any CPU (every
        // interrupts-off section that loads it ends with VMCLEAR, and so does the flush just
        // above), and no VM entry can name them again.
        unsafe {
            let _ = crate::memory::free_frame(self.vmcs);
            let _ = crate::memory::free_contiguous(self.io_bitmaps, 2);
            let _ = crate::memory::free_frame(self.msr_bitmap);
        }
    }
}
