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
/// Start PIT channel 0 as a one-shot (mode 0) of `ticks` PIT ticks (1.193182 MHz): its output
/// (ISA IRQ 0, IOAPIC input 2) goes low now and rises once when the count ends. Tests only:
/// the kernel does not use the PIT's interrupt.
pub fn pit_one_shot(ticks: u16) {
    // SAFETY: PIT programming on ports 0x40/0x43; no memory effects.
    unsafe {
        Port::<u8>::new(0x43).write(0x30); // channel 0, lobyte/hibyte, mode 0, binary
        Port::<u8>::new(0x40).write(ticks as u8);
        Port::<u8>::new(0x40).write((ticks >> 8) as u8);
    }
}

/// PIT ticks per second.
const PIT_HZ: u64 = 1_193_182;

/// Measure the TSC against PIT channel 0 counting down (mode 2, polled through the latch
/// command) over three windows of ~15 ms, and take the median rate. Channel 0 needs no gate,
/// so this also works on QEMU microvm, which has no port 0x61. The PIT's interrupt is not used
/// (interrupts are still off).
///
/// Why three windows and TSC readings on both sides of each PIT reading: a vCPU descheduled
/// by its host (QEMU TCG on a loaded machine) between the last PIT reading and the TSC reading
/// after it made one CI node's clock run at 0.62 of real time (it took 4158 MHz for a 2599 MHz
/// TSC), so its 60 s RPC timeout took 96 s. Each window's ends are the midpoints of the TSC
/// readings around the first and the last PIT reading, and a window spoiled anyway (a pause at
/// an end, a PIT wrap missed while the vCPU was away) is outvoted by the other two.
fn pit_calibrate() -> u64 {
    const WANT: u64 = 17_898; // 15 ms of PIT ticks
    // SAFETY: PIT programming on ports 0x43/0x40; no memory effects.
    unsafe {
        Port::<u8>::new(0x43).write(0x34); // channel 0, lobyte/hibyte, mode 2, binary
        Port::<u8>::new(0x40).write(0);
        Port::<u8>::new(0x40).write(0); // reload 65536
    }
    let mut rates = [0u64; 3];
    for r in rates.iter_mut() {
        let Some((tsc, pit)) = pit_window(WANT) else {
            return 1_000_000_000; // no PIT: assume 1 GHz rather than hang
        };
        *r = rate(tsc, pit);
    }
    median3(rates)
}

/// TSC ticks per second from `tsc` TSC ticks over `pit` PIT ticks.
fn rate(tsc: u64, pit: u64) -> u64 {
    (tsc as u128 * PIT_HZ as u128 / pit.max(1) as u128) as u64
}

/// The middle one of three rates (a window spoiled by a host pause is high or low).
fn median3(mut r: [u64; 3]) -> u64 {
    r.sort_unstable();
    r[1]
}

/// One calibration window: (TSC ticks, PIT ticks) between the first PIT reading and the first
/// one at least `want` PIT ticks later, each PIT reading timed by the midpoint of the TSC
/// readings around it. None if the PIT does not count.
fn pit_window(want: u64) -> Option<(u64, u64)> {
    let sample = || {
        let before = crate::cpu::rdtsc();
        // SAFETY: latching and reading PIT channel 0 (ports 0x43/0x40); no memory effects.
        let pit = unsafe {
            Port::<u8>::new(0x43).write(0x00); // latch channel 0
            let mut ch0 = Port::<u8>::new(0x40);
            let lo = ch0.read() as u64;
            let hi = ch0.read() as u64;
            lo | (hi << 8)
        };
        let after = crate::cpu::rdtsc();
        (before / 2 + after / 2, pit)
    };
    let (t0, mut prev) = sample();
    let mut elapsed = 0u64;
    let mut polls = 0u64;
    loop {
        let (t, now) = sample();
        // counting down; a wrap reloads at 65536
        elapsed += if now <= prev { prev - now } else { prev + 65536 - now };
        prev = now;
        if elapsed >= want {
            return Some((t.wrapping_sub(t0), elapsed));
        }
        polls += 1;
        if polls > 50_000_000 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window spoiled by a pause at its end (here 1.6x the TSC ticks, as the CI node that
    /// took 4158 MHz) or at its start (0.7x) does not move the rate: the median is the good one.
    #[test]
    fn a_spoiled_window_is_outvoted() {
        let good = rate(38_985_000, 17_898);
        assert!((2_598_000_000..2_600_000_000).contains(&good), "{good}");
        let high = rate(38_985_000 * 16 / 10, 17_898);
        let low = rate(38_985_000 * 7 / 10, 17_898);
        assert_eq!(median3([high, good, low]), good);
        assert_eq!(median3([good, high, good + 10]), good + 10);
        assert_eq!(median3([high, high / 2, good]), good);
    }
}
