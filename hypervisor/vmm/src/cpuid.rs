//! CPUID policy: the guest sees a filtered view of the host CPUID.
//!
//! Allowlist-based: only feature bits the VMM knows are safe to expose pass through. Always
//! hidden: VMX/SVM, MONITOR/MWAIT, x2APIC, perf/debug-store, MCE/MCA, speculation
//! control MSRs, RDTSCP (TSC_AUX is not context-switched), topology leaves (one vCPU). The local
//! APIC is hidden by default: the guest uses the 8259 PIC + 8254 PIT (Linux then runs with
//! "no local APIC", timer on IRQ 0 — see docs/vmm.md); with it ([`CpuidConfig::apic`]) the
//! guest also gets the TSC-deadline timer, which the local APIC model emulates. XSAVE/AVX are
//! exposed only when the backend context-switches XCR0/XSAVE state ([`CpuidConfig::xsave`]).
//!
//! Hypervisor leaves: 0x4000_0000 = max leaf 0x4000_0010 + signature "CatenaryVMM\0";
//! 0x4000_0010 EAX = TSC frequency in kHz, EBX = APIC bus kHz (0 without APIC) — the
//! VMware-style timing leaf.

/// Host CPUID: `(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
pub type HostCpuid<'a> = &'a dyn Fn(u32, u32) -> [u32; 4];

pub const HV_SIGNATURE: &[u8; 12] = b"CatenaryVMM\0";
pub const HV_MAX_LEAF: u32 = 0x4000_0010;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[derive(Default)]
pub struct CpuidConfig {
    /// Guest TSC frequency in kHz (reported in 0x4000_0010).
    pub tsc_khz: u32,
    /// Expose XSAVE/XSAVEOPT/AVX/AVX2/FMA/F16C (the backend must switch XCR0 and XSAVE state).
    pub xsave: bool,
    /// Expose the local APIC (CPUID.1:EDX.APIC) and its TSC-deadline timer (CPUID.1:ECX bit
    /// 24). Off by default: PIC + PIT guest.
    pub apic: bool,
}


const fn bits(list: &[u32]) -> u32 {
    let mut v = 0;
    let mut i = 0;
    while i < list.len() {
        v |= 1 << list[i];
        i += 1;
    }
    v
}

// Leaf 1 ECX: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2, MOVBE, POPCNT, AES, RDRAND, PCID.
const L1_ECX: u32 = bits(&[0, 1, 9, 13, 17, 19, 20, 22, 23, 25, 30]);
// + FMA, XSAVE, AVX, F16C.
const L1_ECX_XSAVE: u32 = bits(&[12, 26, 28, 29]);
// Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE CX8 SEP MTRR PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2.
const L1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 15, 16, 17, 19, 23, 24, 25, 26]);
// Leaf 7.0 EBX: FSGSBASE BMI1 SMEP BMI2 ERMS ADX SMAP CLFLUSHOPT CLWB SHA.
const L7_EBX: u32 = bits(&[0, 3, 7, 8, 9, 19, 20, 23, 24, 29]);
const L7_EBX_XSAVE: u32 = bits(&[5]); // AVX2
// 0x8000_0001 ECX: LAHF, ABM, SSE4A, MISALIGNSSE, 3DNOWPREFETCH.
const E1_ECX: u32 = bits(&[0, 5, 6, 7, 8]);
// 0x8000_0001 EDX: the legacy duplicates AMD mirrors + SYSCALL NX MMXEXT FFXSR PDPE1GB LM.
const E1_EDX: u32 = (L1_EDX & !bits(&[11, 19, 25, 26])) | bits(&[11, 20, 22, 25, 26, 29]);

/// Compute the guest's CPUID result for `leaf`/`subleaf`. `guest_cr4` and `guest_xcr0` feed the
/// dynamic bits (OSXSAVE, XSAVE area size).
pub fn guest_cpuid(
    cfg: &CpuidConfig,
    leaf: u32,
    subleaf: u32,
    guest_cr4: u64,
    guest_xcr0: u64,
    host: HostCpuid<'_>,
) -> [u32; 4] {
    let h = |l: u32, s: u32| host(l, s);
    let max_basic = h(0, 0)[0].min(0xd);
    let max_ext = h(0x8000_0000, 0)[0].clamp(0x8000_0000, 0x8000_0008);
    match leaf {
        0 => {
            let r = h(0, 0);
            [max_basic, r[1], r[2], r[3]]
        }
        1 if leaf <= max_basic => {
            let r = h(1, 0);
            let mut ecx_allow = L1_ECX;
            if cfg.xsave {
                ecx_allow |= L1_ECX_XSAVE;
            }
            let mut ecx = (r[2] & ecx_allow) | (1 << 31);
            if cfg.xsave && r[2] & (1 << 26) != 0 && guest_cr4 & (1 << 18) != 0 {
                ecx |= 1 << 27; // OSXSAVE mirrors CR4.OSXSAVE
            }
            let mut edx_allow = L1_EDX;
            if cfg.apic {
                edx_allow |= 1 << 9;
                // TSC-deadline timer: the local APIC model has it, and with it Linux skips its
                // 100 ms calibration of the APIC timer against the PIT.
                ecx |= 1 << 24;
            }
            // EBX: keep brand index + CLFLUSH size; 1 logical CPU; APIC id 0.
            let ebx = (r[1] & 0xffff) | (1 << 16);
            [r[0], ebx, ecx, r[3] & edx_allow]
        }
        2 | 3 if leaf <= max_basic => h(leaf, subleaf),
        4 if leaf <= max_basic => {
            let mut r = h(4, subleaf);
            r[0] &= 0x3fff; // one core, one thread sharing each cache
            r
        }
        7 if leaf <= max_basic => {
            if subleaf != 0 {
                return [0; 4];
            }
            let r = h(7, 0);
            let mut allow = L7_EBX;
            if cfg.xsave {
                allow |= L7_EBX_XSAVE;
            }
            [0, r[1] & allow, 0, 0]
        }
        0xd if cfg.xsave && leaf <= max_basic => {
            let allowed: u32 = 0x7; // x87 | SSE | AVX
            match subleaf {
                0 => {
                    let r = h(0xd, 0);
                    let sup = r[0] & allowed;
                    let size_for = |mask: u64| if mask & 4 != 0 { 832 } else { 576 };
                    [sup, size_for(guest_xcr0), size_for(sup as u64), 0]
                }
                1 => [h(0xd, 1)[0] & 1, 0, 0, 0], // XSAVEOPT only
                2 if h(0xd, 0)[0] & 4 != 0 => h(0xd, 2),
                _ => [0; 4],
            }
        }
        0x4000_0000 => {
            let s = HV_SIGNATURE;
            let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
            [HV_MAX_LEAF, w(0), w(4), w(8)]
        }
        0x4000_0010 => [cfg.tsc_khz, if cfg.apic { 1_000_000 } else { 0 }, 0, 0],
        0x8000_0000 => {
            let r = h(0x8000_0000, 0);
            [max_ext, r[1], r[2], r[3]]
        }
        0x8000_0001 if leaf <= max_ext => {
            let r = h(0x8000_0001, 0);
            let mut edx_allow = E1_EDX;
            if cfg.apic {
                edx_allow |= 1 << 9;
            }
            [r[0], 0, r[2] & E1_ECX, r[3] & edx_allow]
        }
        0x8000_0002..=0x8000_0006 if leaf <= max_ext => h(leaf, 0),
        0x8000_0007 if leaf <= max_ext => [0, 0, 0, h(leaf, 0)[3] & (1 << 8)],
        0x8000_0008 if leaf <= max_ext => [h(leaf, 0)[0] & 0xffff, 0, 0, 0],
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(l: u32, s: u32) -> [u32; 4] {
        match (l, s) {
            (0, _) => [0x16, 0x6874_7541, 0x444d_4163, 0x6974_6e65], // AuthenticAMD
            (1, _) => [0x00a2_0f10, 0x0010_0800, 0xffff_ffff, 0xffff_ffff],
            (7, 0) => [1, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
            (0xd, 0) => [0x207, 0x340, 0x988, 0],
            (0x8000_0000, _) => [0x8000_0023, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            (0x8000_0001, _) => [0x00a2_0f10, 0, 0xffff_ffff, 0xffff_ffff],
            (0x8000_0008, _) => [0x3030, 0xffff, 0xff, 0],
            (0x8000_000a, _) => [1, 16, 0, 0xffff_ffff],
            _ => [0xdead_beef; 4],
        }
    }

    #[test]
    fn policy() {
        let cfg = CpuidConfig { tsc_khz: 2_500_000, ..Default::default() };
        let l0 = guest_cpuid(&cfg, 0, 0, 0, 0, &host);
        assert_eq!(l0[0], 0xd);
        let l1 = guest_cpuid(&cfg, 1, 0, 0, 0, &host);
        assert_ne!(l1[2] & (1 << 31), 0, "hypervisor bit");
        assert_eq!(l1[2] & (1 << 5), 0, "VMX hidden");
        assert_eq!(l1[2] & (1 << 21), 0, "x2APIC hidden");
        assert_eq!(l1[2] & (1 << 24), 0, "TSC deadline hidden");
        assert_eq!(l1[2] & (1 << 26), 0, "XSAVE hidden by default");
        assert_eq!(l1[3] & (1 << 9), 0, "APIC hidden");
        assert_eq!(l1[3] & (1 << 7), 0, "MCE hidden");
        assert_eq!(l1[1] >> 16, 1);
        let e1 = guest_cpuid(&cfg, 0x8000_0001, 0, 0, 0, &host);
        assert_eq!(e1[2] & (1 << 2), 0, "SVM hidden");
        assert_ne!(e1[3] & (1 << 29), 0, "LM");
        assert_eq!(e1[3] & (1 << 27), 0, "RDTSCP hidden");
        assert_eq!(guest_cpuid(&cfg, 0x8000_000a, 0, 0, 0, &host), [0; 4]);
        let hv = guest_cpuid(&cfg, 0x4000_0000, 0, 0, 0, &host);
        assert_eq!(hv[0], 0x4000_0010);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&hv[1].to_le_bytes());
        sig[4..8].copy_from_slice(&hv[2].to_le_bytes());
        sig[8..].copy_from_slice(&hv[3].to_le_bytes());
        assert_eq!(&sig, HV_SIGNATURE);
        assert_eq!(guest_cpuid(&cfg, 0x4000_0010, 0, 0, 0, &host)[0], 2_500_000);
        assert_eq!(guest_cpuid(&cfg, 0xd, 0, 0, 0, &host), [0; 4]);
        assert_eq!(guest_cpuid(&cfg, 0xb, 0, 0, 0, &host), [0; 4]);
        // xsave on
        let cfg = CpuidConfig { xsave: true, ..cfg };
        let l1 = guest_cpuid(&cfg, 1, 0, 1 << 18, 0, &host);
        assert_ne!(l1[2] & (1 << 27), 0);
        let d = guest_cpuid(&cfg, 0xd, 0, 1 << 18, 7, &host);
        assert_eq!(d, [7, 832, 832, 0]);
    }
}
