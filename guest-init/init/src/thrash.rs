//! The init's guard against memory thrashing (docs/guest-init.md "Out of memory").
//!
//! A guest has no swap. When its anonymous memory fills RAM the kernel can reclaim only page
//! cache, among it the program text of the image's squashfs that the workload runs next, and
//! read it back at once. Linux then may go on for minutes without deciding it is out of
//! memory; the guest kernel has no PSI to notice this with, so the init watches two figures
//! the kernel always keeps:
//! - `MemAvailable` in /proc/meminfo (what could be had without swapping), and
//! - `workingset_refault_file` in /proc/vmstat (file pages read back after being evicted while
//!   their shadow entry lived: the pages the kernel dropped and was wrong to drop).
//!
//! A second is *thrashing* when `MemAvailable` is under [`LOW_MEMORY_PERCENT`] of `MemTotal`
//! and at least [`MIN_REFAULTS_PER_S`] file pages were read back during it. When
//! [`NEEDED`] of the last [`WINDOW`] seconds thrashed, the init kills the workload's process
//! group (SIGKILL), as the kernel's OOM killer would have, and reports a thrash kill. A workload
//! that streams a large file with memory to spare is not thrashing (its `MemAvailable` counts
//! the page cache), and one that is merely full but not reading back is left to the kernel.
//! One that streams a file through under 5 % of its memory is killed, though it is only slow.
//! `workingset_activate_file` (refaults the kernel judged within its working set) would spare
//! it, but in a guest (`vm_linux_workload_thrash_killed`'s workload, two runs) it hovered at the
//! threshold (one run never had 8 seconds in 10 over 256 a second in 2 minutes; the next
//! averaged 339) while the plain refault count read 8,523 a second. earlyoom, without swap, kills whenever under 10 % is available.
//!
//! The logic is plain and host-tested; `main.rs` samples the two files once a second.

/// Seconds looked back over.
pub const WINDOW: usize = 10;
/// Thrashing seconds in the window that make the verdict.
pub const NEEDED: usize = 8;
/// `MemAvailable` under this share of `MemTotal` is low.
pub const LOW_MEMORY_PERCENT: u64 = 5;
/// File pages read back per second that count as thrashing (1 MiB/s in 4 KiB pages).
pub const MIN_REFAULTS_PER_S: u64 = 256;

/// One reading of the two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub total_kib: u64,
    pub available_kib: u64,
    /// The cumulative count of refaulted file pages.
    pub refaults: u64,
}

/// `(MemTotal, MemAvailable)` in KiB from /proc/meminfo's text.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let value = rest.trim().strip_suffix("kB")?.trim();
        *slot = Some(value.parse::<u64>().ok()?);
    }
    Some((total?, available?))
}

/// The refaulted file pages from /proc/vmstat's text: `workingset_refault_file`, or
/// `workingset_refault` from kernels before 5.9 that do not split it.
pub fn parse_refaults(text: &str) -> Option<u64> {
    let mut old = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else { continue };
        match key {
            "workingset_refault_file" => return value.trim().parse().ok(),
            "workingset_refault" => old = value.trim().parse().ok(),
            _ => {}
        }
    }
    old
}

/// Why the workload is to be killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub total_kib: u64,
    pub available_kib: u64,
    /// Refaulted pages per second, averaged over the window's thrashing seconds.
    pub refaults_per_s: u64,
    /// Thrashing seconds in the window.
    pub seconds: usize,
}

/// The window of the last [`WINDOW`] seconds.
#[derive(Debug, Default)]
pub struct Guard {
    last: Option<(u64, u64)>, // (ms, refaults) of the previous sample
    window: [Option<u64>; WINDOW], // per second: the refault rate if it thrashed
    next: usize,
}

impl Guard {
    pub fn new() -> Guard {
        Guard::default()
    }

    /// Take a sample read at `now_ms` (the caller samples about once a second). Returns the
    /// verdict once [`NEEDED`] of the last [`WINDOW`] samples thrashed; the window then starts
    /// afresh.
    pub fn observe(&mut self, now_ms: u64, s: Sample) -> Option<Verdict> {
        let (then_ms, then_refaults) = self.last.replace((now_ms, s.refaults))?;
        let elapsed = now_ms.saturating_sub(then_ms);
        if elapsed == 0 {
            // Two samples at once: keep the earlier one as the base.
            self.last = Some((then_ms, then_refaults));
            return None;
        }
        // A counter that went back (it should not) counts as no refaults.
        let rate = s.refaults.saturating_sub(then_refaults).saturating_mul(1000) / elapsed;
        let low = s.available_kib.saturating_mul(100) < s.total_kib.saturating_mul(LOW_MEMORY_PERCENT);
        self.window[self.next] = (low && rate >= MIN_REFAULTS_PER_S).then_some(rate);
        self.next = (self.next + 1) % WINDOW;
        let thrashing: Vec<u64> = self.window.iter().flatten().copied().collect();
        if thrashing.len() < NEEDED {
            return None;
        }
        self.window = [None; WINDOW];
        Some(Verdict {
            total_kib: s.total_kib,
            available_kib: s.available_kib,
            refaults_per_s: thrashing.iter().sum::<u64>() / thrashing.len() as u64,
            seconds: thrashing.len(),
        })
    }
}

/// The two files, opened once (before the workload runs, so that it cannot take them away)
/// and read again from the start for each sample.
pub struct Sampler {
    meminfo: std::fs::File,
    vmstat: std::fs::File,
    buf: Vec<u8>,
}

/// Neither file is near this (about 1.5 and 5 KiB); a longer one is cut, not grown into.
const MAX_FILE: u64 = 64 * 1024;

impl Sampler {
    pub fn open() -> std::io::Result<Sampler> {
        Ok(Sampler { meminfo: std::fs::File::open("/proc/meminfo")?, vmstat: std::fs::File::open("/proc/vmstat")?, buf: Vec::new() })
    }

    fn text(file: &mut std::fs::File, buf: &mut Vec<u8>) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        buf.clear();
        file.seek(SeekFrom::Start(0)).ok()?;
        (&mut *file).take(MAX_FILE).read_to_end(buf).ok()?;
        Some(String::from_utf8_lossy(buf).into_owned())
    }

    /// A sample, or `None` when either file cannot be read or parsed.
    pub fn read(&mut self) -> Option<Sample> {
        let (total_kib, available_kib) = parse_meminfo(&Self::text(&mut self.meminfo, &mut self.buf)?)?;
        let refaults = parse_refaults(&Self::text(&mut self.vmstat, &mut self.buf)?)?;
        Some(Sample { total_kib, available_kib, refaults })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:         118588 kB\nMemFree:            1024 kB\nMemAvailable:       2048 kB\nBuffers:               0 kB\n";

    #[test]
    fn the_kernels_files_parse() {
        assert_eq!(parse_meminfo(MEMINFO), Some((118_588, 2_048)));
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: 10\nMemAvailable: 1 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
        let vmstat = "nr_free_pages 256\nworkingset_refault_anon 0\nworkingset_refault_file 48213\nworkingset_activate_file 1\n";
        assert_eq!(parse_refaults(vmstat), Some(48_213));
        assert_eq!(parse_refaults("workingset_refault 77\nnr_dirty 0\n"), Some(77));
        assert_eq!(parse_refaults("nr_free_pages 256\n"), None);
        assert_eq!(parse_refaults("workingset_refault_file -1\n"), None);
    }

    fn sample(available_kib: u64, refaults: u64) -> Sample {
        Sample { total_kib: 131_072, available_kib, refaults }
    }

    /// Feed one sample a second; returns the second at which a verdict came.
    fn run(per_second: impl Fn(u64) -> (u64, u64), seconds: u64) -> Option<(u64, Verdict)> {
        let mut g = Guard::new();
        let mut refaults = 0;
        for t in 0..=seconds {
            let (available, rate) = per_second(t);
            refaults += rate;
            if let Some(v) = g.observe(t * 1000, sample(available, refaults)) {
                return Some((t, v));
            }
        }
        None
    }

    #[test]
    fn low_memory_with_pages_read_back_is_thrashing() {
        // 2 MiB of 128 available, 1,000 pages read back a second: the verdict after 8 seconds.
        let (t, v) = run(|_| (2_048, 1_000), 60).expect("a verdict");
        assert_eq!(t, NEEDED as u64);
        assert_eq!(v, Verdict { total_kib: 131_072, available_kib: 2_048, refaults_per_s: 1_000, seconds: NEEDED });
        // Two calm seconds in ten still make it: 8 of 10.
        let (t, _) = run(|t| (2_048, if t % 5 == 0 { 0 } else { 1_000 }), 60).expect("a verdict");
        assert!(t <= WINDOW as u64 + 1, "verdict at {t}");
    }

    #[test]
    fn what_is_not_thrashing() {
        // Memory to spare while streaming a file: no verdict.
        assert_eq!(run(|_| (65_536, 100_000), 60), None);
        // Just above the low mark (5 % of 128 MiB = 6,553.6 KiB).
        assert_eq!(run(|_| (6_554, 100_000), 60), None);
        // Full but not reading back (or under the rate).
        assert_eq!(run(|_| (1_024, 0), 60), None);
        assert_eq!(run(|_| (1_024, MIN_REFAULTS_PER_S - 1), 60), None);
        // Thrashing only every other second never fills the window.
        assert_eq!(run(|t| (1_024, if t % 2 == 0 { 10_000 } else { 0 }), 60), None);
        // Short bursts (7 seconds) with a calm spell between them.
        assert_eq!(run(|t| (1_024, if t % 20 < 7 { 10_000 } else { 0 }), 200), None);
    }

    #[test]
    fn the_rate_is_per_second_of_real_time() {
        let mut g = Guard::new();
        // Samples 4 s apart with 2,000 pages each: 500 a second, thrashing.
        let mut v = None;
        for i in 0..=NEEDED as u64 {
            v = v.or(g.observe(i * 4_000, sample(1_024, i * 2_000)));
        }
        assert_eq!(v.map(|v| v.refaults_per_s), Some(500));
        // Samples 10 s apart with 2,000 pages each: 200 a second, not thrashing.
        let mut g = Guard::new();
        assert!((0..=30u64).all(|i| g.observe(i * 10_000, sample(1_024, i * 2_000)).is_none()));
        // Two samples in the same millisecond and a counter that goes back do not divide by zero.
        let mut g = Guard::new();
        assert_eq!(g.observe(5, sample(1_024, 100)), None);
        assert_eq!(g.observe(5, sample(1_024, 1_000_000)), None);
        assert_eq!(g.observe(6, sample(1_024, 0)), None);
    }
}
