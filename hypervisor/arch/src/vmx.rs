//! Intel VT-x backend (VMX + EPT + VPID + unrestricted guest).
//!
//! Per CPU: CR4.VMXE, IA32_FEATURE_CONTROL checked (locked-on, or enabled and locked by us), a
//! VMXON region. Per vCPU: a VMCS (current on a CPU only inside one interrupts-off section:
//! VMPTRLD, use, VMCLEAR, so the vCPU's task can move to another CPU in between), I/O
//! bitmaps intercepting every port, an MSR bitmap intercepting every MSR except those the guest
//! owns (FS/GS/KERNEL_GS base, STAR/LSTAR/CSTAR/SFMASK, SYSENTER, PAT), 4-level EPT with 2 MiB
//! write-back pages over the guest RAM chunks, a VPID, the guest's GPRs, and its XSAVE area, XCR0, DR0–DR3 and DR6 (`guest_switch.rs`).
//!
//! Controls come from the capability MSRs (the TRUE_* ones when IA32_VMX_BASIC bit 55 says so):
//! wanted bits are adjusted to the allowed-0/allowed-1 settings. CR0/CR4 bits VMX forces
//! (IA32_VMX_CRx_FIXED0/1; PE/PG are free with unrestricted guest) are host-owned through the
//! guest/host masks, and the read shadows show the guest its own values; a guest write that
//! changes a host-owned bit exits (CR access) and is emulated here, inside `run`.
//!
//! Exits are decoded by `catenary_vmm::vmx_exit::decode_vmx_exit` (host-tested) with RIP left
//! at the exiting instruction: the device model advances it.

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

// ---- capability MSRs ----
const IA32_FEATURE_CONTROL: u32 = 0x3a;
const IA32_VMX_BASIC: u32 = 0x480;
const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
const IA32_VMX_EXIT_CTLS: u32 = 0x483;
const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
const IA32_VMX_CR0_FIXED0: u32 = 0x486;
const IA32_VMX_CR0_FIXED1: u32 = 0x487;
const IA32_VMX_CR4_FIXED0: u32 = 0x488;
const IA32_VMX_CR4_FIXED1: u32 = 0x489;
const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
const IA32_EFER: u32 = 0xc000_0080;
const IA32_PAT: u32 = 0x277;
const IA32_FS_BASE: u32 = 0xc000_0100;
const IA32_GS_BASE: u32 = 0xc000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
const IA32_STAR: u32 = 0xc000_0081;
const IA32_LSTAR: u32 = 0xc000_0082;
const IA32_CSTAR: u32 = 0xc000_0083;
const IA32_FMASK: u32 = 0xc000_0084;
const IA32_SYSENTER_CS: u32 = 0x174;
const IA32_SYSENTER_ESP: u32 = 0x175;
const IA32_SYSENTER_EIP: u32 = 0x176;

/// MSRs the guest owns but VM entry/exit does not switch: swapped around each entry.
const SWAPPED_MSRS: [u32; 5] = [IA32_KERNEL_GS_BASE, IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK];

// ---- VMCS field encodings (SDM vol. 3D appendix B) ----
#[allow(dead_code)]
mod f {
    pub const VPID: u32 = 0x0000;
    pub const GUEST_ES_SEL: u32 = 0x0800;
    pub const GUEST_CS_SEL: u32 = 0x0802;
    pub const GUEST_SS_SEL: u32 = 0x0804;
    pub const GUEST_DS_SEL: u32 = 0x0806;
    pub const GUEST_FS_SEL: u32 = 0x0808;
    pub const GUEST_GS_SEL: u32 = 0x080a;
    pub const GUEST_LDTR_SEL: u32 = 0x080c;
    pub const GUEST_TR_SEL: u32 = 0x080e;
    pub const HOST_ES_SEL: u32 = 0x0c00;
    pub const HOST_CS_SEL: u32 = 0x0c02;
    pub const HOST_SS_SEL: u32 = 0x0c04;
    pub const HOST_DS_SEL: u32 = 0x0c06;
    pub const HOST_FS_SEL: u32 = 0x0c08;
    pub const HOST_GS_SEL: u32 = 0x0c0a;
    pub const HOST_TR_SEL: u32 = 0x0c0c;
    pub const IO_BITMAP_A: u32 = 0x2000;
    pub const IO_BITMAP_B: u32 = 0x2002;
    pub const MSR_BITMAP: u32 = 0x2004;
    pub const TSC_OFFSET: u32 = 0x2010;
    pub const EPT_POINTER: u32 = 0x201a;
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
    pub const GUEST_IA32_PAT: u32 = 0x2804;
    pub const GUEST_IA32_EFER: u32 = 0x2806;
    pub const HOST_IA32_PAT: u32 = 0x2c00;
    pub const HOST_IA32_EFER: u32 = 0x2c02;
    pub const PIN_CONTROLS: u32 = 0x4000;
    pub const PROC_CONTROLS: u32 = 0x4002;
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    pub const PF_ERROR_MASK: u32 = 0x4006;
    pub const PF_ERROR_MATCH: u32 = 0x4008;
    pub const CR3_TARGET_COUNT: u32 = 0x400a;
    pub const EXIT_CONTROLS: u32 = 0x400c;
    pub const EXIT_MSR_STORE_COUNT: u32 = 0x400e;
    pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    pub const ENTRY_CONTROLS: u32 = 0x4012;
    pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    pub const ENTRY_INTR_INFO: u32 = 0x4016;
    pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    pub const ENTRY_INSTRUCTION_LEN: u32 = 0x401a;
    pub const PROC_CONTROLS2: u32 = 0x401e;
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    pub const EXIT_REASON: u32 = 0x4402;
    pub const EXIT_INTR_INFO: u32 = 0x4404;
    pub const EXIT_INTR_ERROR_CODE: u32 = 0x4406;
    pub const IDT_VECTORING_INFO: u32 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440a;
    pub const EXIT_INSTRUCTION_LEN: u32 = 0x440c;
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
    pub const GUEST_ES_AR: u32 = 0x4814;
    pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
    pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
    pub const GUEST_SYSENTER_CS: u32 = 0x482a;
    pub const HOST_SYSENTER_CS: u32 = 0x4c00;
    pub const CR0_MASK: u32 = 0x6000;
    pub const CR4_MASK: u32 = 0x6002;
    pub const CR0_READ_SHADOW: u32 = 0x6004;
    pub const CR4_READ_SHADOW: u32 = 0x6006;
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    pub const GUEST_CR0: u32 = 0x6800;
    pub const GUEST_CR3: u32 = 0x6802;
    pub const GUEST_CR4: u32 = 0x6804;
    pub const GUEST_ES_BASE: u32 = 0x6806;
    pub const GUEST_GDTR_BASE: u32 = 0x6816;
    pub const GUEST_IDTR_BASE: u32 = 0x6818;
    pub const GUEST_DR7: u32 = 0x681a;
    pub const GUEST_RSP: u32 = 0x681c;
    pub const GUEST_RIP: u32 = 0x681e;
    pub const GUEST_RFLAGS: u32 = 0x6820;
    pub const GUEST_PENDING_DBG: u32 = 0x6822;
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    pub const HOST_CR0: u32 = 0x6c00;
    pub const HOST_CR3: u32 = 0x6c02;
    pub const HOST_CR4: u32 = 0x6c04;
    pub const HOST_FS_BASE: u32 = 0x6c06;
    pub const HOST_GS_BASE: u32 = 0x6c08;
    pub const HOST_TR_BASE: u32 = 0x6c0a;
    pub const HOST_GDTR_BASE: u32 = 0x6c0c;
    pub const HOST_IDTR_BASE: u32 = 0x6c0e;
    pub const HOST_SYSENTER_ESP: u32 = 0x6c10;
    pub const HOST_SYSENTER_EIP: u32 = 0x6c12;
    pub const HOST_RIP: u32 = 0x6c16;
}

// ---- control bits ----
// The intercepts (exception bitmap, pin/proc/proc2 exiting bits) come from
// `catenary_vmm::intercepts::vmx_intercepts()` (host-tested); these are the other controls.
const PROC_INTR_WINDOW: u32 = 1 << 2;
const PROC_UNCOND_IO: u32 = 1 << 24;
const PROC2_EPT: u32 = 1 << 1;
const PROC2_RDTSCP: u32 = 1 << 3;
const PROC2_VPID: u32 = 1 << 5;
const PROC2_UNRESTRICTED: u32 = 1 << 7;
const PROC2_INVPCID: u32 = 1 << 12;
const PROC2_XSAVES: u32 = 1 << 20;
const EXIT_SAVE_DEBUG: u32 = 1 << 2;
const EXIT_HOST_64: u32 = 1 << 9;
const EXIT_ACK_INTR: u32 = 1 << 15;
const EXIT_SAVE_PAT: u32 = 1 << 18;
const EXIT_LOAD_PAT: u32 = 1 << 19;
const EXIT_SAVE_EFER: u32 = 1 << 20;
const EXIT_LOAD_EFER: u32 = 1 << 21;
const ENTRY_LOAD_DEBUG: u32 = 1 << 2;
const ENTRY_IA32E: u32 = 1 << 9;
const ENTRY_LOAD_PAT: u32 = 1 << 14;
const ENTRY_LOAD_EFER: u32 = 1 << 15;

extern "C" {
    fn arch_vmx_run(gprs: *mut GuestGprs, resume: u64, fpu: *mut FpuSwitch) -> u32;
    fn arch_vmx_exit();
}

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


// ---- VMX instructions ----

fn vmread(field: u32) -> u64 {
    let v: u64;
    // SAFETY: VMREAD of the current VMCS (VMX is on and a VMCS is current whenever this module
    // calls it); a failure only sets flags and leaves `v` unspecified-but-initialised.
    unsafe { core::arch::asm!("vmread {v}, {f}", f = in(reg) field as u64, v = out(reg) v, options(nostack)) };
    v
}

fn vmwrite(field: u32, value: u64) {
    let failed: u8;
    // SAFETY: VMWRITE to the current VMCS; it has no effect on host memory.
    unsafe {
        core::arch::asm!("vmwrite {f}, {v}", "setna {r}", f = in(reg) field as u64, v = in(reg) value, r = out(reg_byte) failed, options(nostack))
    };
    if failed != 0 {
        let e = vmread(f::VM_INSTRUCTION_ERROR);
        log::warn!(target: "vmx", "VMWRITE {field:#06x} = {value:#x} failed: error {e} ({})", vm_instruction_error_name(e));
    }
}

/// Run one of the VMX instructions taking a 64-bit physical address in memory
/// (VMXON/VMCLEAR/VMPTRLD); returns the VMX status (Ok, or the error number; 0 = VMfailInvalid).
fn vmx_pa_insn(which: u8, pa: u64) -> Result<(), u64> {
    let (cf, zf): (u8, u8);
    let p = &pa as *const u64;
    // SAFETY: `pa` is a 4 KiB-aligned frame owned by the caller with the VMCS revision id
    // written (VMXON region or VMCS); these instructions touch only that frame.
    unsafe {
        match which {
            0 => core::arch::asm!("vmxon [{p}]", "setc {c}", "setz {z}", p = in(reg) p, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack)),
            1 => core::arch::asm!("vmclear [{p}]", "setc {c}", "setz {z}", p = in(reg) p, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack)),
            _ => core::arch::asm!("vmptrld [{p}]", "setc {c}", "setz {z}", p = in(reg) p, c = out(reg_byte) cf, z = out(reg_byte) zf, options(nostack)),
        }
    }
    if cf != 0 {
        Err(0)
    } else if zf != 0 {
        Err(vmread(f::VM_INSTRUCTION_ERROR))
    } else {
        Ok(())
    }
}

fn vmptrst() -> u64 {
    let mut pa: u64 = 0;
    // SAFETY: VMPTRST stores the current-VMCS pointer into our local.
    unsafe { core::arch::asm!("vmptrst [{p}]", p = in(reg) &mut pa as *mut u64, options(nostack)) };
    pa
}

fn invept_single(eptp: u64) {
    let desc: [u64; 2] = [eptp, 0];
    // SAFETY: INVEPT only invalidates cached EPT translations.
    unsafe { core::arch::asm!("invept {t}, [{d}]", t = in(reg) 1u64, d = in(reg) desc.as_ptr(), options(nostack)) };
}

fn invept_all() {
    let desc: [u64; 2] = [0, 0];
    // SAFETY: as above.
    unsafe { core::arch::asm!("invept {t}, [{d}]", t = in(reg) 2u64, d = in(reg) desc.as_ptr(), options(nostack)) };
}

fn invvpid(kind: u64, vpid: u16) {
    let desc: [u64; 2] = [vpid as u64, 0];
    // SAFETY: INVVPID only invalidates cached linear translations.
    unsafe { core::arch::asm!("invvpid {t}, [{d}]", t = in(reg) kind, d = in(reg) desc.as_ptr(), options(nostack)) };
}

// ---- per-CPU enable ----

#[derive(Clone, Copy)]
struct Caps {
    revision: u32,
    pin: u64,
    proc: u64,
    proc2: u64,
    exit: u64,
    entry: u64,
    cr0_fixed0: u64,
    cr0_fixed1: u64,
    cr4_fixed0: u64,
    cr4_fixed1: u64,
    ept_vpid: u64,
}

impl Caps {
    fn read() -> Caps {
        let rd = crate::cpu::rdmsr;
        let basic = rd(IA32_VMX_BASIC);
        let true_ctls = basic & (1 << 55) != 0;
        let proc = if true_ctls { rd(IA32_VMX_TRUE_PROCBASED_CTLS) } else { rd(IA32_VMX_PROCBASED_CTLS) };
        Caps {
            revision: basic as u32 & 0x7fff_ffff,
            pin: if true_ctls { rd(IA32_VMX_TRUE_PINBASED_CTLS) } else { rd(IA32_VMX_PINBASED_CTLS) },
            proc,
            proc2: if proc >> 63 != 0 { rd(IA32_VMX_PROCBASED_CTLS2) } else { 0 },
            exit: if true_ctls { rd(IA32_VMX_TRUE_EXIT_CTLS) } else { rd(IA32_VMX_EXIT_CTLS) },
            entry: if true_ctls { rd(IA32_VMX_TRUE_ENTRY_CTLS) } else { rd(IA32_VMX_ENTRY_CTLS) },
            cr0_fixed0: rd(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rd(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rd(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rd(IA32_VMX_CR4_FIXED1),
            ept_vpid: rd(IA32_VMX_EPT_VPID_CAP),
        }
    }
    fn proc2_allowed(&self, bit: u32) -> bool {
        (self.proc2 >> 32) as u32 & bit != 0
    }
}

/// Per CPU (APIC id): the VMXON region.
static VMXON: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());
/// Per CPU (by `smp::cpu_index`): in VMX root operation. Read with interrupts off before any
/// VMX instruction, lock-free (a vCPU task can be on any CPU; a VMX instruction outside VMX
/// operation raises #UD in the host).
static VMX_ON: [AtomicBool; crate::smp::MAX_CPUS] = [const { AtomicBool::new(false) }; crate::smp::MAX_CPUS];

/// Ok if this CPU is in VMX root operation. Call with interrupts off.
fn on_here() -> Result<(), VirtError> {
    match VMX_ON.get(crate::smp::cpu_index()) {
        Some(on) if on.load(Ordering::Acquire) => Ok(()),
        _ => Err(VirtError::Unsupported("VMX is not on on this CPU")),
    }
}

fn zeroed_frame() -> Result<u64, VirtError> {
    crate::memory::alloc_zeroed_frame().map_err(|_| VirtError::OutOfMemory)
}

fn apic_id() -> u32 {
    crate::cpu::cpuid(1, 0).1 >> 24
}

/// Enter VMX root operation on this CPU (once).
pub fn enable_on_this_cpu() -> Result<(), VirtError> {
    // Interrupts off: the APIC id, VMXON and the record must all be of one CPU.
    crate::cpu::without_interrupts(enable_on_this_cpu_now)
}

fn enable_on_this_cpu_now() -> Result<(), VirtError> {
    let id = apic_id();
    let mut on = VMXON.lock();
    if on.contains_key(&id) {
        return Ok(());
    }
    let slot = VMX_ON.get(crate::smp::cpu_index()).ok_or(VirtError::Unsupported("CPU index out of range"))?;
    let fc = crate::cpu::rdmsr(IA32_FEATURE_CONTROL);
    if fc & 1 != 0 && fc & (1 << 2) == 0 {
        return Err(VirtError::Unsupported("VMX disabled by firmware (IA32_FEATURE_CONTROL locked)"));
    }
    if fc & 1 == 0 {
        // SAFETY: setting lock + "VMX outside SMX" in an unlocked FEATURE_CONTROL only enables VMXON.
        unsafe { crate::cpu::wrmsr(IA32_FEATURE_CONTROL, fc | 1 | (1 << 2)) };
    }
    let caps = Caps::read();
    // CR0/CR4 must satisfy the VMX fixed bits (CR0.NE in particular) before VMXON.
    let cr0 = crate::cpu::read_cr0();
    let want0 = adjust_cr(cr0, caps.cr0_fixed0, caps.cr0_fixed1);
    if want0 != cr0 {
        // SAFETY: only forces bits VMX requires (NE, PE, PG are already on in the kernel).
        unsafe { core::arch::asm!("mov cr0, {}", in(reg) want0, options(nostack)) };
    }
    crate::cpu::cr4_set(caps.cr4_fixed0 | (1 << 13));
    let region = zeroed_frame()?;
    // SAFETY: a fresh frame we own for good; its first dword is the VMCS revision id.
    unsafe { core::ptr::write_volatile(crate::paging::p2v(region) as *mut u32, caps.revision) };
    if let Err(e) = vmx_pa_insn(0, region) {
        // SAFETY: VMXON failed, so the CPU does not use the region; nothing else knows it.
        let _ = unsafe { crate::memory::free_frame(region) };
        log::warn!(target: "vmx", "VMXON failed ({e}: {})", vm_instruction_error_name(e));
        return Err(VirtError::EntryFailed(e));
    }
    // Nothing cached from before VMXON may survive (a previous VMM, firmware).
    if caps.ept_vpid & (1 << 20) != 0 && caps.ept_vpid & (1 << 26) != 0 {
        invept_all();
    }
    if caps.ept_vpid & (1 << 32) != 0 && caps.ept_vpid & (1 << 42) != 0 {
        invvpid(2, 0);
    }
    on.insert(id, region);
    slot.store(true, Ordering::Release);
    log::info!(target: "vmx", "VMX on (cpu {id}): revision {:#x}, EPT/VPID caps {:#x}, unrestricted guest {}",
        caps.revision, caps.ept_vpid, caps.proc2_allowed(PROC2_UNRESTRICTED));
    Ok(())
}

// ---- EPT ----

const EPT_RWX: u64 = 0x7;
const EPT_WB: u64 = 6 << 3;
const EPT_LARGE: u64 = 1 << 7;

/// Extended page tables mapping guest-physical RAM onto the GuestRam chunks with 2 MiB pages.
struct Ept {
    root: u64,
    tables: Vec<u64>,
}

impl Ept {
    fn build(ram: &GuestRam) -> Result<Ept, VirtError> {
        let root = zeroed_frame()?;
        let mut ept = Ept { root, tables: Vec::new() };
        for (i, &hpa) in ram.chunks().iter().enumerate() {
            let gpa = i as u64 * CHUNK;
            let pdpt = ept.next_level(root, (gpa >> 39) & 511)?;
            let pd = ept.next_level(pdpt, (gpa >> 30) & 511)?;
            // Only chunks the loader populated are mapped now; the rest on first access.
            if ram.is_populated(i) {
                ept.write_entry(pd, (gpa >> 21) & 511, hpa | EPT_RWX | EPT_WB | EPT_LARGE);
            }
        }
        Ok(ept)
    }
    /// Map chunk `idx` (not-present -> present: not-present EPT entries are never cached, so
    /// no INVEPT is needed). The table levels exist already, so this does not allocate.
    fn map_chunk(&mut self, idx: usize, hpa: u64) -> Result<(), VirtError> {
        let gpa = idx as u64 * CHUNK;
        let pdpt = self.next_level(self.root, (gpa >> 39) & 511)?;
        let pd = self.next_level(pdpt, (gpa >> 30) & 511)?;
        self.write_entry(pd, (gpa >> 21) & 511, hpa | EPT_RWX | EPT_WB | EPT_LARGE);
        Ok(())
    }
    fn entry_ptr(table: u64, idx: u64) -> *mut u64 {
        (crate::paging::p2v(table) + idx * 8) as *mut u64
    }
    fn write_entry(&mut self, table: u64, idx: u64, v: u64) {
        // SAFETY: `table` is a page-table frame this Ept owns; idx < 512.
        unsafe { core::ptr::write_volatile(Self::entry_ptr(table, idx), v) }
    }
    fn next_level(&mut self, table: u64, idx: u64) -> Result<u64, VirtError> {
        // SAFETY: as in write_entry.
        let e = unsafe { core::ptr::read_volatile(Self::entry_ptr(table, idx)) };
        if e & EPT_RWX != 0 {
            return Ok(e & 0x000f_ffff_ffff_f000);
        }
        let t = zeroed_frame()?;
        self.tables.push(t);
        self.write_entry(table, idx, t | EPT_RWX);
        Ok(t)
    }
    /// EPTP: write-back paging structures, 4-level walk.
    fn eptp(&self) -> u64 {
        self.root | 6 | (3 << 3)
    }
}

impl Drop for Ept {
    fn drop(&mut self) {
        for &t in self.tables.iter().chain(core::iter::once(&self.root)) {
            // SAFETY: EPT frames only this Ept owns; its vCPU flushed what this EPT cached
            // (INVEPT) and cleared its VMCS in its own `drop` before the fields are dropped,
            // or (`new` failing) the tables were never used by a VM entry.
            let _ = unsafe { crate::memory::free_frame(t) };
        }
    }
}

// ---- host state ----

#[repr(C, packed)]
#[derive(Default, Clone, Copy)]
struct DtPtr {
    limit: u16,
    base: u64,
}

fn sgdt() -> DtPtr {
    let mut d = DtPtr::default();
    // SAFETY: SGDT stores 10 bytes into our local.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) &mut d as *mut DtPtr, options(nostack)) };
    d
}
fn sidt() -> DtPtr {
    let mut d = DtPtr::default();
    // SAFETY: SIDT stores 10 bytes into our local.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) &mut d as *mut DtPtr, options(nostack)) };
    d
}

struct HostSelectors {
    cs: u16,
    ss: u16,
    ds: u16,
    es: u16,
    fs: u16,
    gs: u16,
    tr: u16,
}

fn host_selectors() -> HostSelectors {
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    // SAFETY: reading segment selectors and the task register has no side effects.
    unsafe {
        core::arch::asm!("mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, options(nomem, nostack, preserves_flags));
        core::arch::asm!("mov {0:x}, fs", "mov {1:x}, gs", "str {2:x}",
            out(reg) fs, out(reg) gs, out(reg) tr, options(nomem, nostack, preserves_flags));
    }
    HostSelectors { cs, ss, ds, es, fs, gs, tr }
}

/// Base of the TSS the GDT descriptor `sel` describes (16-byte system descriptor).
fn tss_base(gdt: u64, sel: u16) -> u64 {
    let p = gdt + (sel as u64 & !7);
    // SAFETY: the GDT is mapped kernel memory and `sel` is the loaded TR selector, so its
    // 16-byte descriptor lies inside it.
    let (lo, hi) = unsafe { (core::ptr::read_unaligned(p as *const u64), core::ptr::read_unaligned((p + 8) as *const u64)) };
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32)
}

/// VM exit sets the host TR limit to 0x67, which cuts off the TSS I/O permission bitmap the
/// kernel grants ring-3 drivers ports through: reload TR from its GDT descriptor (after clearing
/// the descriptor's busy bit, which LTR requires).
fn reload_host_tr() {
    let gdt = sgdt();
    let sel = host_selectors().tr;
    if sel == 0 {
        return;
    }
    let p = (gdt.base + (sel as u64 & !7)) as *mut u64;
    // SAFETY: `sel` is the loaded TR selector, so its descriptor lies inside the (writable,
    // kernel-owned) GDT; clearing the busy bit (type 0xb -> 0x9) and reloading TR with the same
    // selector restores the full limit and changes nothing else.
    unsafe {
        let d = core::ptr::read_volatile(p);
        core::ptr::write_volatile(p, d & !(1u64 << 41));
        core::arch::asm!("ltr {0:x}", in(reg) sel, options(nostack));
    }
}

fn write_host_state() {
    let sel = host_selectors();
    let gdt = sgdt();
    let idt = sidt();
    vmwrite(f::HOST_CR0, crate::cpu::read_cr0());
    vmwrite(f::HOST_CR3, crate::cpu::read_cr3());
    vmwrite(f::HOST_CR4, crate::cpu::read_cr4());
    vmwrite(f::HOST_CS_SEL, (sel.cs & !7) as u64);
    vmwrite(f::HOST_SS_SEL, (sel.ss & !7) as u64);
    vmwrite(f::HOST_DS_SEL, (sel.ds & !7) as u64);
    vmwrite(f::HOST_ES_SEL, (sel.es & !7) as u64);
    vmwrite(f::HOST_FS_SEL, (sel.fs & !7) as u64);
    vmwrite(f::HOST_GS_SEL, (sel.gs & !7) as u64);
    vmwrite(f::HOST_TR_SEL, (sel.tr & !7) as u64);
    vmwrite(f::HOST_FS_BASE, crate::cpu::rdmsr(IA32_FS_BASE));
    vmwrite(f::HOST_GS_BASE, crate::cpu::rdmsr(IA32_GS_BASE));
    vmwrite(f::HOST_TR_BASE, tss_base(gdt.base, sel.tr));
    vmwrite(f::HOST_GDTR_BASE, gdt.base);
    vmwrite(f::HOST_IDTR_BASE, idt.base);
    vmwrite(f::HOST_SYSENTER_CS, crate::cpu::rdmsr(IA32_SYSENTER_CS));
    vmwrite(f::HOST_SYSENTER_ESP, crate::cpu::rdmsr(IA32_SYSENTER_ESP));
    vmwrite(f::HOST_SYSENTER_EIP, crate::cpu::rdmsr(IA32_SYSENTER_EIP));
    vmwrite(f::HOST_IA32_EFER, crate::cpu::rdmsr(IA32_EFER));
    vmwrite(f::HOST_IA32_PAT, crate::cpu::rdmsr(IA32_PAT));
    vmwrite(f::HOST_RIP, arch_vmx_exit as *const () as u64);
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

impl VmxVcpu {
    pub fn new(ram: &GuestRam, vm_id: u32) -> Result<VmxVcpu, VirtError> {
        // (VMX was turned on on every CPU as it came up; the VMCS setup below checks this one.)
        let caps = Caps::read();
        if !caps.proc2_allowed(PROC2_EPT) {
            return Err(VirtError::Unsupported("VMX without EPT"));
        }
        if caps.ept_vpid & (1 << 6) == 0 || caps.ept_vpid & (1 << 14) == 0 || caps.ept_vpid & (1 << 16) == 0 {
            return Err(VirtError::Unsupported("EPT without 4-level walks, WB or 2 MiB pages"));
        }
        let vmcs = zeroed_frame()?;
        let io_bitmaps = crate::memory::alloc_contiguous(2, 1).map_err(|_| VirtError::OutOfMemory)?;
        let msr_bitmap = zeroed_frame()?;
        // SAFETY: freshly allocated frames reached through the direct map; the VMCS gets its
        // revision id, the I/O bitmaps all ones (every port exits), the MSR bitmap all ones.
        unsafe {
            core::ptr::write_volatile(crate::paging::p2v(vmcs) as *mut u32, caps.revision);
            core::ptr::write_bytes(crate::paging::p2v(io_bitmaps) as *mut u8, 0xff, 2 * 4096);
            core::ptr::write_bytes(crate::paging::p2v(msr_bitmap) as *mut u8, 0xff, 4096);
        }
        let ept = match Ept::build(ram) {
            Ok(e) => e,
            Err(e) => {
                // SAFETY: allocated just above, never loaded (no VMPTRLD yet): nothing uses them.
                unsafe {
                    let _ = crate::memory::free_frame(vmcs);
                    let _ = crate::memory::free_contiguous(io_bitmaps, 2);
                    let _ = crate::memory::free_frame(msr_bitmap);
                }
                return Err(e);
            }
        };
        let vpid_ok = caps.proc2_allowed(PROC2_VPID) && caps.ept_vpid & (1 << 32) != 0;
        let vpid = if vpid_ok { 1 + (vm_id % 0xfffe) as u16 } else { 0 };
        let unrestricted = caps.proc2_allowed(PROC2_UNRESTRICTED);
        let mut v = VmxVcpu {
            ram: ram.share(),
            vmcs,
            io_bitmaps,
            msr_bitmap,
            ept,
            vpid,
            caps,
            unrestricted,
            gprs: GuestGprs::default(),
            host_fpu: XsaveArea::reset(),
            guest_fpu: XsaveArea::reset(),
            dr: GuestDebugRegs::RESET,
            guest_msrs: [0; 5],
            xcr0: 1,
            cr2: 0,
            launched: false,
            placement: Placement::default(),
            reinject: None,
            proc_base: 0,
            cr0_mask: 0,
            cr4_mask: 0,
        };
        for msr in [IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK,
            IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP, IA32_PAT]
        {
            v.msr_passthrough(msr);
        }
        crate::cpu::without_interrupts(|| {
            on_here()?;
            let r = v.setup_vmcs();
            v.release();
            r
        })?;
        Ok(v)
    }

    fn msr_passthrough(&mut self, msr: u32) {
        let (base, off) = match msr {
            0..=0x1fff => (0u64, msr as u64),
            0xc000_0000..=0xc000_1fff => (1024, (msr - 0xc000_0000) as u64),
            _ => return,
        };
        for area in [base, base + 2048] {
            let p = (crate::paging::p2v(self.msr_bitmap) + area + off / 8) as *mut u8;
            // SAFETY: inside the 4 KiB MSR bitmap this vCPU owns.
            unsafe { *p &= !(1 << (off % 8)) };
        }
    }

    /// Make this vCPU's VMCS current on this CPU. Call with interrupts off.
    fn load(&self) -> Result<(), VirtError> {
        on_here()?;
        if vmptrst() != self.vmcs {
            vmx_pa_insn(2, self.vmcs).map_err(|e| {
                log::warn!(target: "vmx", "VMPTRLD failed ({e}: {})", vm_instruction_error_name(e));
                VirtError::EntryFailed(e)
            })?;
        }
        Ok(())
    }

    /// VMCLEAR: write the VMCS back to memory and make it inactive on this CPU, before
    /// interrupts come back on (the task may then be moved: a VMCS must never be active on two
    /// CPUs, and only the CPU it is active on can clear it). The next entry is a VMLAUNCH.
    fn release(&mut self) {
        if on_here().is_ok() {
            let _ = vmx_pa_insn(1, self.vmcs);
        }
        self.launched = false;
    }

    fn setup_vmcs(&mut self) -> Result<(), VirtError> {
        let c = self.caps;
        vmx_pa_insn(1, self.vmcs).map_err(VirtError::EntryFailed)?;
        self.load()?;
        let icpt = catenary_vmm::intercepts::vmx_intercepts();
        let pin = adjust_controls(icpt.pin, c.pin);
        let proc = adjust_controls(icpt.proc, c.proc) & !PROC_UNCOND_IO;
        let mut want2 = icpt.proc2 | PROC2_EPT | PROC2_RDTSCP | PROC2_INVPCID | PROC2_XSAVES;
        if self.vpid != 0 {
            want2 |= PROC2_VPID;
        }
        if self.unrestricted {
            want2 |= PROC2_UNRESTRICTED;
        }
        let proc2 = adjust_controls(want2, c.proc2);
        if pin & icpt.pin != icpt.pin || proc & icpt.proc != icpt.proc || proc2 & icpt.proc2 != icpt.proc2 {
            log::warn!(target: "vmx", "CPU refuses intercepts: pin {:#x} proc {:#x} proc2 {:#x} missing",
                icpt.pin & !pin, icpt.proc & !proc, icpt.proc2 & !proc2);
        }
        let exit = adjust_controls(EXIT_SAVE_DEBUG | EXIT_HOST_64 | EXIT_SAVE_EFER | EXIT_LOAD_EFER | EXIT_SAVE_PAT | EXIT_LOAD_PAT, c.exit) & !EXIT_ACK_INTR;
        let entry = adjust_controls(ENTRY_LOAD_DEBUG | ENTRY_LOAD_EFER | ENTRY_LOAD_PAT, c.entry) & !ENTRY_IA32E;
        self.proc_base = proc & !PROC_INTR_WINDOW;
        vmwrite(f::PIN_CONTROLS, pin as u64);
        vmwrite(f::PROC_CONTROLS, self.proc_base as u64);
        vmwrite(f::PROC_CONTROLS2, proc2 as u64);
        vmwrite(f::EXIT_CONTROLS, exit as u64);
        vmwrite(f::ENTRY_CONTROLS, entry as u64);
        vmwrite(f::EXCEPTION_BITMAP, icpt.exception_bitmap as u64);
        vmwrite(f::PF_ERROR_MASK, 0);
        vmwrite(f::PF_ERROR_MATCH, 0);
        vmwrite(f::CR3_TARGET_COUNT, 0);
        vmwrite(f::EXIT_MSR_STORE_COUNT, 0);
        vmwrite(f::EXIT_MSR_LOAD_COUNT, 0);
        vmwrite(f::ENTRY_MSR_LOAD_COUNT, 0);
        vmwrite(f::ENTRY_INTR_INFO, 0);
        vmwrite(f::IO_BITMAP_A, self.io_bitmaps);
        vmwrite(f::IO_BITMAP_B, self.io_bitmaps + 4096);
        vmwrite(f::MSR_BITMAP, self.msr_bitmap);
        vmwrite(f::TSC_OFFSET, 0);
        vmwrite(f::EPT_POINTER, self.ept.eptp());
        if self.vpid != 0 {
            vmwrite(f::VPID, self.vpid as u64);
        }
        vmwrite(f::VMCS_LINK_POINTER, u64::MAX);
        vmwrite(f::GUEST_IA32_DEBUGCTL, 0);
        vmwrite(f::GUEST_IA32_PAT, 0x0007_0406_0007_0406);
        vmwrite(f::GUEST_DR7, 0x400);
        vmwrite(f::GUEST_PENDING_DBG, 0);
        vmwrite(f::GUEST_ACTIVITY_STATE, 0);
        vmwrite(f::GUEST_INTERRUPTIBILITY, 0);
        vmwrite(f::GUEST_SYSENTER_CS, 0);
        vmwrite(f::GUEST_SYSENTER_ESP, 0);
        vmwrite(f::GUEST_SYSENTER_EIP, 0);
        // Host-owned CR bits: those VMX forces either way (PE/PG are free with unrestricted guest).
        let (f0, f1) = self.cr0_fixed();
        self.cr0_mask = (f0 | !f1) & 0xffff_ffff;
        self.cr4_mask = (c.cr4_fixed0 | !c.cr4_fixed1) & 0xffff_ffff;
        vmwrite(f::CR0_MASK, self.cr0_mask);
        vmwrite(f::CR4_MASK, self.cr4_mask);
        write_host_state();
        // A previous VM may have used this VPID / this EPT root address.
        self.flush_tlb();
        log::debug!(target: "vmx", "VMCS {:#x}: pin {pin:#x} proc {proc:#x} proc2 {proc2:#x} exit {exit:#x} entry {entry:#x} vpid {}", self.vmcs, self.vpid);
        Ok(())
    }

    fn cr0_fixed(&self) -> (u64, u64) {
        let mut f0 = self.caps.cr0_fixed0;
        if self.unrestricted {
            f0 &= !(CR0_PE | CR0_PG);
        }
        (f0, self.caps.cr0_fixed1)
    }

    fn flush_tlb(&self) {
        if self.caps.ept_vpid & (1 << 20) != 0 {
            if self.caps.ept_vpid & (1 << 25) != 0 {
                invept_single(self.ept.eptp());
            } else if self.caps.ept_vpid & (1 << 26) != 0 {
                invept_all();
            }
        }
        if self.vpid != 0 {
            if self.caps.ept_vpid & (1 << 41) != 0 {
                invvpid(1, self.vpid);
            } else if self.caps.ept_vpid & (1 << 42) != 0 {
                invvpid(2, 0);
            }
        }
    }

    fn write_cr0(&mut self, cr0: u64) {
        let (f0, f1) = self.cr0_fixed();
        vmwrite(f::GUEST_CR0, adjust_cr(cr0, f0, f1));
        vmwrite(f::CR0_READ_SHADOW, cr0);
    }
    fn write_cr4(&mut self, cr4: u64) {
        vmwrite(f::GUEST_CR4, adjust_cr(cr4, self.caps.cr4_fixed0, self.caps.cr4_fixed1));
        vmwrite(f::CR4_READ_SHADOW, cr4);
    }
    fn guest_cr0(&self) -> u64 {
        (vmread(f::GUEST_CR0) & !self.cr0_mask) | (vmread(f::CR0_READ_SHADOW) & self.cr0_mask)
    }
    fn guest_cr4(&self) -> u64 {
        (vmread(f::GUEST_CR4) & !self.cr4_mask) | (vmread(f::CR4_READ_SHADOW) & self.cr4_mask)
    }
    fn set_efer(&mut self, efer: u64) {
        vmwrite(f::GUEST_IA32_EFER, efer);
        let entry = vmread(f::ENTRY_CONTROLS) as u32;
        let entry = if efer & EFER_LMA != 0 { entry | ENTRY_IA32E } else { entry & !ENTRY_IA32E };
        vmwrite(f::ENTRY_CONTROLS, entry as u64);
    }

    fn write_seg(&mut self, idx: u32, s: &Segment) {
        vmwrite(f::GUEST_ES_SEL + idx * 2, s.selector as u64);
        vmwrite(f::GUEST_ES_BASE + idx * 2, s.base);
        vmwrite(f::GUEST_ES_LIMIT + idx * 2, s.limit as u64);
        vmwrite(f::GUEST_ES_AR + idx * 2, s.vmx_access_rights() as u64);
    }
    fn read_seg(&self, idx: u32) -> Segment {
        Segment {
            selector: vmread(f::GUEST_ES_SEL + idx * 2) as u16,
            base: vmread(f::GUEST_ES_BASE + idx * 2),
            limit: vmread(f::GUEST_ES_LIMIT + idx * 2) as u32,
            attr: Segment::attr_from_vmx(vmread(f::GUEST_ES_AR + idx * 2) as u32),
        }
    }

    fn gpr(&self, n: u8) -> u64 {
        let g = &self.gprs;
        match n & 15 {
            0 => g.rax,
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => vmread(f::GUEST_RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        }
    }

    fn inject_gp(&mut self) {
        vmwrite(f::ENTRY_INTR_INFO, (13 | (3 << 8) | (1 << 11) | (1 << 31)) as u64);
        vmwrite(f::ENTRY_EXCEPTION_ERROR_CODE, 0);
    }

    fn skip_instruction(&mut self) {
        let len = vmread(f::EXIT_INSTRUCTION_LEN);
        let rip = vmread(f::GUEST_RIP).wrapping_add(len);
        let rip = if vmread(f::ENTRY_CONTROLS) as u32 & ENTRY_IA32E != 0 { rip } else { rip & 0xffff_ffff };
        vmwrite(f::GUEST_RIP, rip);
        // The instruction retired: an STI/MOV SS shadow ends with it.
        let ib = vmread(f::GUEST_INTERRUPTIBILITY);
        vmwrite(f::GUEST_INTERRUPTIBILITY, ib & !3);
    }

    /// A guest write to a host-owned CR0/CR4 bit (or LMSW) exited: emulate it.
    fn emulate_cr_access(&mut self, q: u64) -> bool {
        match decode_cr_access(q) {
            CrAccess::MovTo { cr: 0, gpr } => self.set_guest_cr0(self.gpr(gpr)),
            CrAccess::MovTo { cr: 4, gpr } => {
                let v = self.gpr(gpr);
                let allowed = self.caps.cr4_fixed1 & !(1 << 13);
                if v & !allowed != 0 {
                    self.inject_gp();
                    return true;
                }
                self.write_cr4(v);
                self.flush_tlb();
                self.skip_instruction();
                true
            }
            CrAccess::Lmsw { value } => {
                let old = self.guest_cr0();
                // LMSW loads PE/MP/EM/TS and cannot clear PE.
                let new = (old & !0xe) | (value as u64 & 0xf) | (old & 1);
                self.set_guest_cr0(new)
            }
            CrAccess::Clts => {
                let old = self.guest_cr0();
                self.set_guest_cr0(old & !(1 << 3))
            }
            _ => false,
        }
    }

    fn set_guest_cr0(&mut self, v: u64) -> bool {
        let old = self.guest_cr0();
        let efer = vmread(f::GUEST_IA32_EFER);
        let (_, f1) = self.cr0_fixed();
        let bad = (v >> 32) != 0
            || (v & CR0_PG != 0 && v & CR0_PE == 0)
            || (v & (1 << 29) != 0 && v & (1 << 30) == 0) // NW without CD
            || (v & CR0_PG != 0 && old & CR0_PG == 0 && efer & EFER_LME != 0 && self.guest_cr4() & CR4_PAE == 0)
            || (v & !f1 & 0xffff_ffff & !((1 << 29) | (1 << 30))) != 0;
        if bad {
            self.inject_gp();
            return true;
        }
        self.write_cr0(v);
        if (old ^ v) & CR0_PG != 0 {
            // Long mode activates/deactivates with paging when EFER.LME is set.
            let new_efer = if v & CR0_PG != 0 && efer & EFER_LME != 0 { efer | EFER_LMA } else { efer & !EFER_LMA };
            self.set_efer(new_efer);
            self.flush_tlb();
        }
        self.skip_instruction();
        true
    }

    fn swap_msrs(&mut self, to_guest: bool, saved_host: &mut [u64; 5]) {
        for (i, &msr) in SWAPPED_MSRS.iter().enumerate() {
            if to_guest {
                saved_host[i] = crate::cpu::rdmsr(msr);
                if saved_host[i] != self.guest_msrs[i] {
                    // SAFETY: loading the guest's syscall/swapgs MSRs just before entry; the host
                    // values are restored right after the exit, with interrupts still off.
                    unsafe { crate::cpu::wrmsr(msr, self.guest_msrs[i]) };
                }
            } else {
                self.guest_msrs[i] = crate::cpu::rdmsr(msr);
                if saved_host[i] != self.guest_msrs[i] {
                    // SAFETY: restores the host value saved above.
                    unsafe { crate::cpu::wrmsr(msr, saved_host[i]) };
                }
            }
        }
    }

    /// One VMLAUNCH/VMRESUME with interrupts off; Ok(exit reason) or the VM-instruction error.
    fn enter(&mut self) -> Result<u32, VirtError> {
        let gprs: *mut GuestGprs = &mut self.gprs;
        let mut fpu = FpuSwitch::new(&mut self.host_fpu, &mut self.guest_fpu, self.xcr0);
        let mut host_msrs = [0u64; 5];
        self.swap_msrs(true, &mut host_msrs);
        let gdt = sgdt();
        let idt = sidt();
        let host_dr = self.dr.load(true);
        // SAFETY: VMX root operation on this CPU, this vCPU's VMCS is current and fully set up
        // (host state points back at `arch_vmx_exit` on this stack), interrupts are off, and the
        // GPR and XSAVE areas the FPU switch points at are owned by this vCPU (with XCR0 values
        // the CPU supports). CR2 takes the guest's value only while interrupts are off (no host
        // page fault can happen before the entry).
        let status = unsafe {
            core::arch::asm!("mov cr2, {}", in(reg) self.cr2, options(nostack));
            arch_vmx_run(gprs, self.launched as u64, &mut fpu)
        };
        self.cr2 = crate::cpu::read_cr2();
        if let Some(x) = fpu.guest_xcr0_after() {
            self.xcr0 = x;
        }
        // VM exit leaves DR7 = 0x400 (the guest's DR7 is in the VMCS).
        self.dr.save(&host_dr, true);
        // VM exit sets the GDTR/IDTR limits to 0xffff: put the real ones back.
        // SAFETY: reloading the descriptor tables that were loaded a moment ago.
        unsafe {
            core::arch::asm!("lgdt [{}]", in(reg) &gdt as *const DtPtr, options(nostack));
            core::arch::asm!("lidt [{}]", in(reg) &idt as *const DtPtr, options(nostack));
        }
        reload_host_tr();
        self.swap_msrs(false, &mut host_msrs);
        match status {
            0 => {
                self.launched = true;
                Ok(vmread(f::EXIT_REASON) as u32)
            }
            1 => {
                let e = vmread(f::VM_INSTRUCTION_ERROR);
                log::warn!(target: "vmx", "VM entry failed: VM-instruction error {e} ({})", vm_instruction_error_name(e));
                Err(VirtError::EntryFailed(e))
            }
            _ => {
                log::warn!(target: "vmx", "VM entry failed: VMfailInvalid (no current VMCS)");
                Err(VirtError::EntryFailed(0))
            }
        }
    }
}

impl VmxVcpu {
    /// `set_state` with interrupts off.
    fn set_state_current(&mut self, s: &VcpuState) {
        if self.load().is_err() {
            return;
        }

        self.gprs = GuestGprs {
            rax: s.rax,
            rbx: s.rbx,
            rcx: s.rcx,
            rdx: s.rdx,
            rsi: s.rsi,
            rdi: s.rdi,
            rbp: s.rbp,
            r8: s.r8,
            r9: s.r9,
            r10: s.r10,
            r11: s.r11,
            r12: s.r12,
            r13: s.r13,
            r14: s.r14,
            r15: s.r15,
        };
        vmwrite(f::GUEST_RSP, s.rsp);
        vmwrite(f::GUEST_RIP, s.rip);
        vmwrite(f::GUEST_RFLAGS, s.rflags | 2);
        self.write_cr0(s.cr0);
        self.cr2 = s.cr2;
        vmwrite(f::GUEST_CR3, s.cr3);
        self.write_cr4(s.cr4);
        self.set_efer(s.efer);
        self.xcr0 = s.xcr0;
        for (i, seg) in [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs, &s.ldtr, &s.tr].into_iter().enumerate() {
            self.write_seg(i as u32, seg);
        }
        vmwrite(f::GUEST_GDTR_BASE, s.gdtr.base);
        vmwrite(f::GUEST_GDTR_LIMIT, s.gdtr.limit as u64);
        vmwrite(f::GUEST_IDTR_BASE, s.idtr.base);
        vmwrite(f::GUEST_IDTR_LIMIT, s.idtr.limit as u64);
        let ib = vmread(f::GUEST_INTERRUPTIBILITY);
        let mut shadow = if s.interrupt_shadow { ib & 3 } else { 0 };
        if s.interrupt_shadow && shadow == 0 {
            shadow = 1;
        }
        if s.rflags & (1 << 9) == 0 {
            shadow &= !1; // blocking by STI requires IF=1
        }
        vmwrite(f::GUEST_INTERRUPTIBILITY, (ib & !3) | shadow);
    }

    fn state_current(&self) -> VcpuState {
        let mut s = VcpuState::new();
        if self.load().is_err() {
            return s;
        }
        let g = &self.gprs;
        s.rax = g.rax;
        s.rbx = g.rbx;
        s.rcx = g.rcx;
        s.rdx = g.rdx;
        s.rsi = g.rsi;
        s.rdi = g.rdi;
        s.rbp = g.rbp;
        s.r8 = g.r8;
        s.r9 = g.r9;
        s.r10 = g.r10;
        s.r11 = g.r11;
        s.r12 = g.r12;
        s.r13 = g.r13;
        s.r14 = g.r14;
        s.r15 = g.r15;
        s.rsp = vmread(f::GUEST_RSP);
        s.rip = vmread(f::GUEST_RIP);
        s.rflags = vmread(f::GUEST_RFLAGS);
        s.cr0 = self.guest_cr0();
        s.cr2 = self.cr2;
        s.cr3 = vmread(f::GUEST_CR3);
        s.cr4 = self.guest_cr4();
        s.efer = vmread(f::GUEST_IA32_EFER);
        s.xcr0 = self.xcr0;
        s.es = self.read_seg(0);
        s.cs = self.read_seg(1);
        s.ss = self.read_seg(2);
        s.ds = self.read_seg(3);
        s.fs = self.read_seg(4);
        s.gs = self.read_seg(5);
        s.ldtr = self.read_seg(6);
        s.tr = self.read_seg(7);
        s.gdtr = DescTable { base: vmread(f::GUEST_GDTR_BASE), limit: vmread(f::GUEST_GDTR_LIMIT) as u16 };
        s.idtr = DescTable { base: vmread(f::GUEST_IDTR_BASE), limit: vmread(f::GUEST_IDTR_LIMIT) as u16 };
        s.cpl = ((vmread(f::GUEST_ES_AR + 2 * 2) >> 5) & 3) as u8;
        s.interrupt_shadow = vmread(f::GUEST_INTERRUPTIBILITY) & 3 != 0;
        s
    }

    fn run_inner(&mut self, event: EventDecision) -> Result<Exit, VirtError> {
        let mut event = event;
        loop {
            // Everything per-CPU happens inside one interrupts-off section (the task can be
            // moved to another CPU before and after it): VMPTRLD, this CPU's host state, a TLB
            // flush if the vCPU last ran elsewhere, the entry, the exit, VMCLEAR.
            let r = crate::cpu::without_interrupts(|| {
                let r = self.enter_once(event);
                self.release();
                r
            })?;
            // Interrupts are back on here: a host interrupt that caused the exit has been taken.
            match r {
                (_, Some(exit)) => return Ok(exit),
                // Handled inside the backend (CR access): enter again, nothing new to inject.
                (_, None) => event = EventDecision::None,
            }
        }
    }

    /// One entry and exit, with interrupts off.
    fn enter_once(&mut self, event: EventDecision) -> Result<(u32, Option<Exit>), VirtError> {
        let cpu = crate::smp::cpu_index();
        let moved = self.placement.enter(cpu);
        self.load()?;
        write_host_state();
        if moved {
            // VPID/EPT-tagged translations this vCPU (or a dead VM with the same VPID or
            // EPT root) left on this CPU may be stale: its guest may have changed its
            // page tables and flushed only the CPU it ran on meanwhile.
            self.flush_tlb();
        }
        let mut window = false;
        if let Some((info, ec, len)) = self.reinject.take() {
            vmwrite(f::ENTRY_INTR_INFO, info as u64);
            vmwrite(f::ENTRY_EXCEPTION_ERROR_CODE, ec as u64);
            vmwrite(f::ENTRY_INSTRUCTION_LEN, len as u64);
        } else {
            match event {
                EventDecision::Inject(i) => {
                    let mut info = i.vmx_entry_info();
                    if self.guest_cr0() & CR0_PE == 0 {
                        info &= !(1 << 11); // no error codes in real mode
                    }
                    vmwrite(f::ENTRY_INTR_INFO, info as u64);
                    vmwrite(f::ENTRY_EXCEPTION_ERROR_CODE, i.error_code.unwrap_or(0) as u64);
                }
                EventDecision::RequestWindow => window = true,
                EventDecision::None => {}
            }
        }
        let proc = if window { self.proc_base | PROC_INTR_WINDOW } else { self.proc_base };
        vmwrite(f::PROC_CONTROLS, proc as u64);
        let reason = self.enter()?;
        // An event that was being delivered when the exit hit is delivered again.
        let idt = vmread(f::IDT_VECTORING_INFO) as u32;
        if idt & (1 << 31) != 0 {
            let ec = vmread(f::IDT_VECTORING_ERROR_CODE) as u32;
            let len = vmread(f::EXIT_INSTRUCTION_LEN) as u32;
            self.reinject = Some((idt & 0x8000_0fff, ec, len));
        }
        vmwrite(f::ENTRY_INTR_INFO, 0);
        if reason & 0xffff == 28 && reason & (1 << 31) == 0 {
            let q = vmread(f::EXIT_QUALIFICATION);
            if self.emulate_cr_access(q) {
                return Ok((reason, None));
            }
        }
        let info = VmxExitInfo {
            reason,
            qualification: vmread(f::EXIT_QUALIFICATION),
            intr_info: vmread(f::EXIT_INTR_INFO) as u32,
            intr_error: vmread(f::EXIT_INTR_ERROR_CODE) as u32,
            gpa: vmread(f::GUEST_PHYSICAL_ADDRESS),
        };
        let exit = decode_vmx_exit(&info);
        if exit == Exit::Nmi {
            // NMI exiting consumed a host NMI: deliver it to the host now, as KVM does,
            // through the host's NMI gate (the NMI handler on its own IST stack).
            // SAFETY: `int 2` enters the kernel's own vector-2 handler, exactly as the
            // NMI would have; interrupts are off, as they are for a real NMI.
            unsafe { core::arch::asm!("int 2") };
        }
        if let Exit::InvalidGuestState { .. } | Exit::Other { .. } = exit {
            log::warn!(target: "vmx", "exit {} ({reason:#x}), qualification {:#x}, guest RIP {:#x}",
                exit_reason_name(reason), info.qualification, vmread(f::GUEST_RIP));
        }
        Ok((reason, Some(exit)))
    }

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
