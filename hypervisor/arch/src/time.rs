//! Time: a TSC-based monotonic clock, calibrated once at boot from CPUID (0x15/0x16, or the
//! hypervisor timing leaf 0x4000_0010) or, failing that, against PIT channel 0.

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

/// The TSC offset every guest runs with: guest TSC = host TSC − the TSC at the node's boot, so
/// a guest's TSC and [`now_ns`] count from the same instant and the device models (the local
/// APIC's TSC-deadline timer, MSR 0x10) can turn one into the other.
pub fn guest_tsc_offset() -> u64 {
    0u64.wrapping_sub(BOOT_TSC.load(Ordering::Relaxed))
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
/// Why three windows, and TSC readings on both sides of each PIT reading: a vCPU descheduled
/// by its host (QEMU TCG on a loaded machine) between the last PIT reading and the TSC reading
/// after it made one CI node's clock run at 0.62 of real time (it took 4158 MHz for a 2599 MHz
/// TSC), so its 60 s RPC timeout took 96 s. Each PIT reading is timed by the midpoint of the
/// TSC readings around it, and only a reading whose bracket is tight ([`TIGHT`] times the
/// narrowest of a warm-up) may end a window: a pause inside it would move the midpoint by half
/// its length. A window spoiled anyway (a PIT wrap missed while the vCPU was away between two
/// readings) is outvoted by the other two.
fn pit_calibrate() -> u64 {
    const WANT: u64 = 17_898; // 15 ms of PIT ticks
    // SAFETY: PIT programming on ports 0x43/0x40; no memory effects.
    unsafe {
        Port::<u8>::new(0x43).write(0x34); // channel 0, lobyte/hibyte, mode 2, binary
        Port::<u8>::new(0x40).write(0);
        Port::<u8>::new(0x40).write(0); // reload 65536
    }
    let read = || {
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
        Reading { before, pit, after }
    };
    let mut rates = [0u64; 3];
    for r in rates.iter_mut() {
        let Some((tsc, pit)) = pit_window(read, WANT) else {
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

/// One PIT reading and the TSC read just before and just after it.
#[derive(Debug, Clone, Copy)]
struct Reading {
    before: u64,
    pit: u64,
    after: u64,
}

impl Reading {
    /// When the PIT was read, as well as the TSC can tell.
    fn mid(&self) -> u64 {
        self.before / 2 + self.after / 2
    }
    fn width(&self) -> u64 {
        self.after.wrapping_sub(self.before)
    }
}

/// A reading whose bracket is at most this many times the narrowest of the warm-up may start
/// or end a window.
const TIGHT: u64 = 4;
/// Readings taken to find the narrowest bracket.
const WARMUP: usize = 16;
/// After this many wide readings in a row the limit doubles (a warm-up that was lucky must not
/// stall the boot), up to [`MAX_WIDENING`] times the narrowest; at that cap the next reading
/// after as many wide ones is taken whatever its width (the median of the three windows is
/// left to outvote a window ended that way).
const WIDE_IN_A_ROW: u32 = 1_000;
/// The most the limit grows to, in multiples of the narrowest warm-up bracket.
const MAX_WIDENING: u64 = 64;
/// Readings before a PIT that does not count is given up on.
const MAX_READINGS: u64 = 50_000_000;

/// One calibration window: (TSC ticks, PIT ticks) between a tightly bracketed PIT reading and
/// the first tightly bracketed one at least `want` PIT ticks later, each timed by the midpoint
/// of its bracket. None if the PIT does not count.
fn pit_window(mut read: impl FnMut() -> Reading, want: u64) -> Option<(u64, u64)> {
    let mut narrowest = u64::MAX;
    let mut prev = read();
    for _ in 0..WARMUP {
        prev = read();
        narrowest = narrowest.min(prev.width());
    }
    let mut limit = narrowest.saturating_mul(TIGHT).max(1);
    let cap = narrowest.saturating_mul(MAX_WIDENING).max(limit);
    let mut readings = 0u64;
    let mut wide = 0u32;
    // Whether `r` may be a window's end; widens the limit after too many misses.
    let mut tight = |r: &Reading| {
        if r.width() <= limit {
            wide = 0;
            return true;
        }
        wide += 1;
        if wide >= WIDE_IN_A_ROW {
            wide = 0;
            if limit >= cap {
                return true;
            }
            limit = limit.saturating_mul(2).min(cap);
        }
        false
    };
    while !tight(&prev) {
        prev = read();
        readings += 1;
        if readings > MAX_READINGS {
            return None;
        }
    }
    let start = prev;
    let mut elapsed = 0u64;
    loop {
        let r = read();
        // counting down; a wrap reloads at 65536
        elapsed += if r.pit <= prev.pit { prev.pit - r.pit } else { prev.pit + 65536 - r.pit };
        prev = r;
        if elapsed >= want && tight(&r) {
            return Some((r.mid().wrapping_sub(start.mid()), elapsed));
        }
        readings += 1;
        if readings > MAX_READINGS {
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

    const HZ: u64 = 2_599_000_000;

    /// PIT readings from a simulated machine: a 2599 MHz TSC and a PIT (mode 2, reload 65536)
    /// on one clock in ns. Each reading takes 1 µs to the latch, `inside(n, t)` more (a host
    /// pause between the PIT reading and the TSC reading after it) and 1 µs to the second TSC
    /// reading, and the next one starts 1 µs later.
    fn machine(mut inside: impl FnMut(u64, u64) -> u64) -> impl FnMut() -> Reading {
        let mut t = 0u64;
        let mut n = 0u64;
        move || {
            let tsc = |t: u64| (t as u128 * HZ as u128 / 1_000_000_000) as u64;
            let before = tsc(t);
            t += 1_000;
            let ticks = (t as u128 * PIT_HZ as u128 / 1_000_000_000) as u64;
            let pit = (65_536 - ticks % 65_536) & 0xffff;
            t += inside(n, t);
            t += 1_000;
            let after = tsc(t);
            t += 1_000;
            n += 1;
            Reading { before, pit, after }
        }
    }

    fn error_ppm(hz: u64) -> u64 {
        hz.abs_diff(HZ) * 1_000_000 / HZ
    }

    #[test]
    fn an_undisturbed_window_measures_the_rate() {
        let (tsc, pit) = pit_window(machine(|_, _| 0), 17_898).unwrap();
        assert!(error_ppm(rate(tsc, pit)) < 500, "{}", rate(tsc, pit));
    }

    /// A host pause of 300 µs inside every reading around the 15 ms mark (where the window
    /// ends) would put the end's midpoint ~150 µs late: 1% fast. Wide readings do not end it.
    #[test]
    fn a_pause_inside_the_closing_reading_does_not_move_the_rate() {
        let paused = |_, t: u64| if (15_000_000..16_000_000).contains(&t) { 300_000 } else { 0 };
        let (tsc, pit) = pit_window(machine(paused), 17_898).unwrap();
        assert!(error_ppm(rate(tsc, pit)) < 500, "{} Hz", rate(tsc, pit));
        // ... and nor at the start.
        // (Reading WARMUP is the first candidate start: the warm-up's minimum comes from 1..WARMUP.)
        let paused = |n, _| if (WARMUP as u64..WARMUP as u64 + 50).contains(&n) { 300_000 } else { 0 };
        let (tsc, pit) = pit_window(machine(paused), 17_898).unwrap();
        assert!(error_ppm(rate(tsc, pit)) < 500, "{} Hz", rate(tsc, pit));
    }

    /// A warm-up that saw narrow brackets, then only wide ones, does not stall the window: the
    /// limit grows (here to 32x, past the readings' 21x).
    #[test]
    fn a_lucky_warm_up_does_not_stall_the_window() {
        // Every reading after the warm-up is 21x as wide as the narrowest (2 us, then 42 us).
        let wide = |n, _| if n > WARMUP as u64 { 40_000 } else { 0 };
        let (tsc, pit) = pit_window(machine(wide), 17_898).unwrap();
        assert!(error_ppm(rate(tsc, pit)) < 5_000, "{} Hz", rate(tsc, pit));
    }

    /// Readings wider than the cap allows still end a window, after the limit reached its cap
    /// and as many wide readings again: the boot goes on (the median outvotes such a window).
    #[test]
    fn readings_past_the_cap_still_end_the_window() {
        // 201x the narrowest, every reading after the warm-up.
        let wide = |n, _| if n > WARMUP as u64 { 400_000 } else { 0 };
        assert!(pit_window(machine(wide), 17_898).is_some());
    }

    #[test]
    fn a_pit_that_does_not_count_is_given_up_on() {
        let mut t = 0u64;
        let stuck = move || {
            t += 1;
            Reading { before: t, pit: 0xffff, after: t + 1 }
        };
        assert_eq!(pit_window(stuck, 17_898), None);
    }
}
