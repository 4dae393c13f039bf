//! Time: a TSC-based monotonic clock, calibrated once at boot from CPUID (0x15/0x16, or the
//! hypervisor timing leaf 0x4000_0010) or, failing that, against PIT channel 2.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    Cpuid15,
    Cpuid16,
    HypervisorLeaf,
    Pit,
}

/// Remember the TSC at boot (timestamps in the log are relative to it).
pub fn mark_boot() {
    BOOT_TSC.store(crate::cpu::rdtsc(), Ordering::Relaxed);
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Nanoseconds since boot (0 until calibrated).
pub fn now_ns() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let d = crate::cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    ((d as u128 * 1_000_000_000) / hz as u128) as u64
}

/// Busy-wait `ns` nanoseconds on the TSC.
pub fn spin_ns(ns: u64) {
    let hz = tsc_hz().max(1);
    let start = crate::cpu::rdtsc();
    let ticks = (ns as u128 * hz as u128 / 1_000_000_000) as u64;
    while crate::cpu::rdtsc().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

pub fn calibrate() -> (u64, TscSource) {
    let (hz, src) = from_cpuid().unwrap_or_else(|| (pit_calibrate(), TscSource::Pit));
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, src)
}

fn from_cpuid() -> Option<(u64, TscSource)> {
    let (max, ..) = crate::cpu::cpuid(0, 0);
    if max >= 0x15 {
        let (den, num, crystal, _) = crate::cpu::cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return Some((crystal as u64 * num as u64 / den as u64, TscSource::Cpuid15));
        }
    }
    let (_, _, ecx, _) = crate::cpu::cpuid(1, 0);
    if ecx & (1 << 31) != 0 {
        let (hmax, ..) = crate::cpu::cpuid(0x4000_0000, 0);
        if (0x4000_0010..0x4000_0100).contains(&hmax) {
            let (khz, ..) = crate::cpu::cpuid(0x4000_0010, 0);
            if khz != 0 {
                return Some((khz as u64 * 1000, TscSource::HypervisorLeaf));
            }
        }
    }
    None
}

/// Measure the TSC over ~50 ms of PIT channel 2 (mode 0, gate via port 0x61).
fn pit_calibrate() -> u64 {
    const PIT_HZ: u64 = 1_193_182;
    const COUNT: u16 = 59_659; // 50 ms
    // SAFETY: PIT and port 0x61 programming; no memory effects.
    unsafe {
        let mut p61 = Port::<u8>::new(0x61);
        let mut cmd = Port::<u8>::new(0x43);
        let mut ch2 = Port::<u8>::new(0x42);
        let v = p61.read();
        p61.write((v & !0x02) | 0x01); // gate on, speaker off
        cmd.write(0xb0); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write((COUNT & 0xff) as u8);
        ch2.write((COUNT >> 8) as u8);
        let t0 = crate::cpu::rdtsc();
        let mut spins = 0u64;
        while p61.read() & 0x20 == 0 {
            spins += 1;
            if spins > 200_000_000 {
                break; // no PIT: fall back below
            }
        }
        let t1 = crate::cpu::rdtsc();
        let d = t1.wrapping_sub(t0);
        if d == 0 || spins > 200_000_000 {
            return 1_000_000_000; // assume 1 GHz rather than hang
        }
        d * PIT_HZ / COUNT as u64
    }
}
