//! VMX capability MSRs, the control bits chosen from them, and turning VMX root operation on
//! on each CPU (IA32_FEATURE_CONTROL, CR0/CR4 fixed bits, the per-CPU VMXON region).

use super::*;

// ---- capability MSRs ----
pub(super) const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub(super) const IA32_VMX_BASIC: u32 = 0x480;
pub(super) const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub(super) const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub(super) const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub(super) const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub(super) const IA32_VMX_MISC: u32 = 0x485;
pub(super) const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub(super) const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub(super) const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub(super) const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub(super) const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub(super) const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub(super) const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub(super) const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
pub(super) const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub(super) const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
pub(super) const IA32_EFER: u32 = 0xc000_0080;
pub(super) const IA32_PAT: u32 = 0x277;
pub(super) const IA32_FS_BASE: u32 = 0xc000_0100;
pub(super) const IA32_GS_BASE: u32 = 0xc000_0101;
pub(super) const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub(super) const IA32_STAR: u32 = 0xc000_0081;
pub(super) const IA32_LSTAR: u32 = 0xc000_0082;
pub(super) const IA32_CSTAR: u32 = 0xc000_0083;
pub(super) const IA32_FMASK: u32 = 0xc000_0084;
pub(super) const IA32_SYSENTER_CS: u32 = 0x174;
pub(super) const IA32_SYSENTER_ESP: u32 = 0x175;
pub(super) const IA32_SYSENTER_EIP: u32 = 0x176;

// ---- control bits ----
// The intercepts (exception bitmap, pin/proc/proc2 exiting bits) come from
// `catenary_vmm::intercepts::vmx_intercepts()` (host-tested); these are the other controls.
pub(super) const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
pub(super) const PROC_INTR_WINDOW: u32 = 1 << 2;
pub(super) const PROC_UNCOND_IO: u32 = 1 << 24;
pub(super) const PROC2_EPT: u32 = 1 << 1;
pub(super) const PROC2_RDTSCP: u32 = 1 << 3;
pub(super) const PROC2_VPID: u32 = 1 << 5;
pub(super) const PROC2_UNRESTRICTED: u32 = 1 << 7;
pub(super) const PROC2_INVPCID: u32 = 1 << 12;
pub(super) const PROC2_XSAVES: u32 = 1 << 20;
pub(super) const EXIT_SAVE_DEBUG: u32 = 1 << 2;
pub(super) const EXIT_HOST_64: u32 = 1 << 9;
pub(super) const EXIT_ACK_INTR: u32 = 1 << 15;
pub(super) const EXIT_SAVE_PAT: u32 = 1 << 18;
pub(super) const EXIT_LOAD_PAT: u32 = 1 << 19;
pub(super) const EXIT_SAVE_EFER: u32 = 1 << 20;
pub(super) const EXIT_LOAD_EFER: u32 = 1 << 21;
pub(super) const ENTRY_LOAD_DEBUG: u32 = 1 << 2;
pub(super) const ENTRY_IA32E: u32 = 1 << 9;
pub(super) const ENTRY_LOAD_PAT: u32 = 1 << 14;
pub(super) const ENTRY_LOAD_EFER: u32 = 1 << 15;

// ---- per-CPU enable ----

#[derive(Clone, Copy)]
pub(super) struct Caps {
    pub(super) revision: u32,
    pub(super) pin: u64,
    pub(super) proc: u64,
    pub(super) proc2: u64,
    pub(super) exit: u64,
    pub(super) entry: u64,
    pub(super) cr0_fixed0: u64,
    pub(super) cr0_fixed1: u64,
    pub(super) cr4_fixed0: u64,
    pub(super) cr4_fixed1: u64,
    pub(super) ept_vpid: u64,
    pub(super) misc: u64,
}

impl Caps {
    pub(super) fn read() -> Caps {
        let rd = crate::cpu::rdmsr;
        let basic = rd(IA32_VMX_BASIC);
        let true_ctls = basic & (1 << 55) != 0;
        let proc = if true_ctls { rd(IA32_VMX_TRUE_PROCBASED_CTLS) } else { rd(IA32_VMX_PROCBASED_CTLS) };
        let proc2 = if proc >> 63 != 0 { rd(IA32_VMX_PROCBASED_CTLS2) } else { 0 };
        // IA32_VMX_EPT_VPID_CAP exists only when EPT (secondary bit 1) or VPID (bit 5) may be
        // set (SDM A.10); reading it otherwise raises #GP, a dead CPU.
        let ept_or_vpid = (proc2 >> 32) & ((1 << 1) | (1 << 5)) != 0;
        Caps {
            revision: basic as u32 & 0x7fff_ffff,
            pin: if true_ctls { rd(IA32_VMX_TRUE_PINBASED_CTLS) } else { rd(IA32_VMX_PINBASED_CTLS) },
            proc,
            proc2,
            exit: if true_ctls { rd(IA32_VMX_TRUE_EXIT_CTLS) } else { rd(IA32_VMX_EXIT_CTLS) },
            entry: if true_ctls { rd(IA32_VMX_TRUE_ENTRY_CTLS) } else { rd(IA32_VMX_ENTRY_CTLS) },
            cr0_fixed0: rd(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rd(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rd(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rd(IA32_VMX_CR4_FIXED1),
            ept_vpid: if ept_or_vpid { rd(IA32_VMX_EPT_VPID_CAP) } else { 0 },
            misc: rd(IA32_VMX_MISC),
        }
    }
    pub(super) fn pin_allowed(&self, bit: u32) -> bool {
        (self.pin >> 32) as u32 & bit != 0
    }
    pub(super) fn proc2_allowed(&self, bit: u32) -> bool {
        (self.proc2 >> 32) as u32 & bit != 0
    }
}

/// Whether this CPU's VMX offers the unrestricted-guest control (with EPT, which it needs):
/// a guest may then run in real mode and unpaged protected mode, as an application processor
/// does from its Startup IPI. False without VMX (its capability MSRs would #GP).
pub fn unrestricted_guest_available() -> bool {
    if !crate::cpu::features().vmx {
        return false;
    }
    let c = Caps::read();
    c.proc2_allowed(PROC2_EPT) && c.proc2_allowed(PROC2_UNRESTRICTED)
}

/// Per CPU (APIC id): the VMXON region.
pub(super) static VMXON: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());
/// Per CPU (by `smp::cpu_index`): in VMX root operation. Read with interrupts off before any
/// VMX instruction, lock-free (a vCPU task can be on any CPU; a VMX instruction outside VMX
/// operation raises #UD in the host).
pub(super) static VMX_ON: [AtomicBool; crate::smp::MAX_CPUS] = [const { AtomicBool::new(false) }; crate::smp::MAX_CPUS];

/// Ok if this CPU is in VMX root operation. Call with interrupts off.
pub(super) fn on_here() -> Result<(), VirtError> {
    match VMX_ON.get(crate::smp::cpu_index()) {
        Some(on) if on.load(Ordering::Acquire) => Ok(()),
        _ => Err(VirtError::Unsupported("VMX is not on on this CPU")),
    }
}

pub(super) fn zeroed_frame() -> Result<u64, VirtError> {
    crate::memory::alloc_zeroed_frame().map_err(|_| VirtError::OutOfMemory)
}

pub(super) fn apic_id() -> u32 {
    crate::cpu::cpuid(1, 0).1 >> 24
}

/// Enter VMX root operation on this CPU (once).
pub fn enable_on_this_cpu() -> Result<(), VirtError> {
    // Interrupts off: the APIC id, VMXON and the record must all be of one CPU.
    crate::cpu::without_interrupts(enable_on_this_cpu_now)
}

pub(super) fn enable_on_this_cpu_now() -> Result<(), VirtError> {
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
    log::info!(target: "vmx", "VMX on (cpu {id}): revision {:#x}, EPT/VPID caps {:#x}, unrestricted guest {}, preemption timer {:?}",
        caps.revision, caps.ept_vpid, caps.proc2_allowed(PROC2_UNRESTRICTED), super::setup::preemption_timer_value(&caps));
    Ok(())
}
