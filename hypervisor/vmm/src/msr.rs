//! MSR policy.
//!
//! **Backend passes through (must not intercept; hardware switches them):** FS_BASE, GS_BASE,
//! KERNEL_GS_BASE, STAR, LSTAR, CSTAR, SFMASK, SYSENTER_CS/ESP/EIP, PAT (VMCB G_PAT / VMCS
//! load+save IA32_PAT). RDTSC is not intercepted (the guest reads the TSC plus the node's
//! offset: crate::tsc); RDMSR 0x10 is, below.
//! **EFER**: if the backend intercepts writes, the device model validates the value
//! (reserved bits, SVME → #GP) and updates `VcpuState::efer` (LMA = LME && CR0.PG); the backend
//! writes `efer` back (keeping SVME set in the real VMCB on SVM).
//! **Emulated here:** TSC (0x10: RDMSR of it exits, and reads the guest's TSC at `now_ns`,
//! crate::tsc, the value RDTSC gives; writes ignored), FEATURE_CONTROL (locked, VMX off),
//! BIOS_SIGN_ID, MTRRcap (no variable ranges, no fixed ranges), MTRRdefType (enabled, WB,
//! writes kept), variable/fixed MTRRs (read 0, writes ignored), MISC_ENABLE (fast strings),
//! MCG_CAP/MCG_STATUS (0), AMD HWCR and DE_CFG.
//! **Everything else:** `#GP(0)` injected and counted (see [`crate::Stats`]).

use crate::cpu::{VcpuState, CR0_PG, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE};

pub const MSR_TSC: u32 = 0x10;
pub const MSR_APIC_BASE: u32 = 0x1b;
pub const MSR_FEATURE_CONTROL: u32 = 0x3a;
pub const MSR_BIOS_SIGN_ID: u32 = 0x8b;
pub const MSR_MTRRCAP: u32 = 0xfe;
pub const MSR_MCG_CAP: u32 = 0x179;
pub const MSR_MCG_STATUS: u32 = 0x17a;
pub const MSR_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_EFER: u32 = 0xc000_0080;
pub const MSR_AMD_INT_PENDING_MSG: u32 = 0xc001_0055;
pub const MSR_AMD_HWCR: u32 = 0xc001_0015;
pub const MSR_AMD_DE_CFG: u32 = 0xc001_1029;

/// Outcome of an MSR access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrResult {
    /// Read value / write accepted.
    Ok(u64),
    /// Inject #GP(0).
    Gp,
}

#[derive(Debug, Clone)]
pub struct MsrState {
    pub mtrr_def_type: u64,
    pub tsc: crate::tsc::GuestTsc,
}

impl MsrState {
    pub fn new(tsc: crate::tsc::GuestTsc) -> Self {
        MsrState { mtrr_def_type: 0x806, tsc }
    }

    fn is_mtrr_range(idx: u32) -> bool {
        matches!(idx, 0x200..=0x20f | 0x250 | 0x258 | 0x259 | 0x268..=0x26f)
    }

    pub fn read(&self, idx: u32, cpu: &VcpuState, now_ns: u64) -> MsrResult {
        match idx {
            MSR_TSC => {
                MsrResult::Ok(self.tsc.at(now_ns))
            }
            MSR_FEATURE_CONTROL => MsrResult::Ok(1),
            MSR_BIOS_SIGN_ID => MsrResult::Ok(0),
            MSR_MTRRCAP => MsrResult::Ok(0),
            MSR_MTRR_DEF_TYPE => MsrResult::Ok(self.mtrr_def_type),
            i if Self::is_mtrr_range(i) => MsrResult::Ok(0),
            MSR_MISC_ENABLE => MsrResult::Ok(1),
            MSR_MCG_CAP | MSR_MCG_STATUS => MsrResult::Ok(0),
            MSR_EFER => MsrResult::Ok(cpu.efer),
            MSR_AMD_HWCR => MsrResult::Ok(0),
            MSR_AMD_DE_CFG => MsrResult::Ok(1 << 1),
            // K8 interrupt-pending message: Linux reads it (unchecked) to pick the AMD E400
            // idle routine; 0 = no C1E, which is what we emulate.
            MSR_AMD_INT_PENDING_MSG => MsrResult::Ok(0),
            _ => MsrResult::Gp,
        }
    }

    pub fn write(&mut self, idx: u32, val: u64, cpu: &mut VcpuState) -> MsrResult {
        match idx {
            MSR_TSC | MSR_BIOS_SIGN_ID | MSR_MISC_ENABLE | MSR_MCG_STATUS | MSR_AMD_HWCR
            | MSR_AMD_DE_CFG => MsrResult::Ok(0),
            MSR_MTRR_DEF_TYPE => {
                if val & !0xcff != 0 {
                    return MsrResult::Gp;
                }
                self.mtrr_def_type = val;
                MsrResult::Ok(0)
            }
            i if Self::is_mtrr_range(i) => MsrResult::Ok(0),
            MSR_EFER => {
                let allowed = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
                if val & !allowed != 0 {
                    return MsrResult::Gp;
                }
                // LME may not change while paging is on.
                let paging = cpu.cr0 & CR0_PG != 0;
                if paging && (val ^ cpu.efer) & EFER_LME != 0 {
                    return MsrResult::Gp;
                }
                let mut new = val & !EFER_LMA;
                if new & EFER_LME != 0 && paging {
                    new |= EFER_LMA;
                }
                cpu.efer = new;
                MsrResult::Ok(0)
            }
            _ => MsrResult::Gp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn policy() {
        let mut m = MsrState::new(crate::tsc::GuestTsc::new(1_000_000_000));
        let mut c = VcpuState::new();
        assert_eq!(m.read(0x1234_5678, &c, 0), MsrResult::Gp);
        assert_eq!(m.read(MSR_APIC_BASE, &c, 0), MsrResult::Gp);
        assert_eq!(m.write(0xc000_0081, 0, &mut c), MsrResult::Gp);
        assert_eq!(m.read(MSR_TSC, &c, 1_000_000_000), MsrResult::Ok(1_000_000_000));
        assert_eq!(m.read(MSR_MTRR_DEF_TYPE, &c, 0), MsrResult::Ok(0x806));
        assert_eq!(m.write(MSR_MTRR_DEF_TYPE, 0x1_0000, &mut c), MsrResult::Gp);
        assert_eq!(m.write(MSR_EFER, 1 << 12, &mut c), MsrResult::Gp);
        assert_eq!(m.write(MSR_EFER, EFER_LME | EFER_SCE, &mut c), MsrResult::Ok(0));
        assert_eq!(c.efer, EFER_LME | EFER_SCE);
    }
}
