//! A microVM's boot timeline (issue 14 item 2, `cargo xtask bench vm`): its exits counted by
//! group in fixed buckets of node time since the VM's creation, so the bench can say which boot
//! phase the exits fall in (the phases come from the guest's printk times, mapped onto the
//! node's clock by the bench). Bounded: [`MAX_BUCKETS`] buckets of [`BUCKET_NS`], allocated
//! once and fallibly; exits after the last bucket count in the last one. Counters saturate.

use crate::cpu::Exit;
use alloc::string::String;
use alloc::vec::Vec;

/// Width of one bucket (node time).
pub const BUCKET_NS: u64 = 10_000_000;
/// Buckets kept (10.24 s): a boot at high load fits; later exits go into the last bucket.
pub const MAX_BUCKETS: usize = 1024;

/// The groups, in the order of a bucket's counters. `npt` is a first touch of a guest RAM
/// chunk (nested page fault → zero, map, re-enter: not a device-model exit, so not in
/// `Stats`); `cpuid k` / `cpuid u` split CPUID by the guest's privilege level.
pub const GROUPS: [&str; 13] = [
    "cpuid k", "cpuid u", "mmio", "io pic", "io pit", "io uart", "io other", "interrupt_window", "external_interrupt", "hlt", "msr", "npt", "other",
];
/// Index of the `npt` group (the vCPU loop records those itself).
pub const NPT: usize = 11;

/// The group of one exit the device model handles; `cpl` is the guest's privilege level at the
/// exit.
pub fn group_of(exit: &Exit, cpl: u8) -> usize {
    match exit {
        Exit::Cpuid if cpl == 0 => 0,
        Exit::Cpuid => 1,
        Exit::Mmio { .. } => 2,
        Exit::Io { port, .. } => match crate::exitprofile::port_owner(*port) {
            "pic 0x20/0xa0" => 3,
            "pit 0x40" => 4,
            "uart 0x3f8" => 5,
            _ => 6,
        },
        Exit::InterruptWindow => 7,
        Exit::ExternalInterrupt => 8,
        Exit::Hlt => 9,
        Exit::Rdmsr | Exit::Wrmsr => 10,
        _ => 12,
    }
}

/// Exits by group per bucket.
pub struct Timeline {
    buckets: Vec<[u16; GROUPS.len()]>,
}

impl Timeline {
    /// All buckets, zeroed; `None` if the host has no memory for them (the VM runs without).
    pub fn try_new() -> Option<Timeline> {
        let mut buckets = Vec::new();
        crate::fallible::reserve(|| buckets.try_reserve_exact(MAX_BUCKETS)).ok()?;
        buckets.resize(MAX_BUCKETS, [0; GROUPS.len()]);
        Some(Timeline { buckets })
    }

    /// One exit of `group` at `since_ns` after the VM's creation.
    pub fn record(&mut self, since_ns: u64, group: usize) {
        let b = ((since_ns / BUCKET_NS) as usize).min(MAX_BUCKETS - 1);
        if let Some(c) = self.buckets.get_mut(b).and_then(|row| row.get_mut(group)) {
            *c = c.saturating_add(1);
        }
    }

    /// Exits of `group` in bucket `b`.
    pub fn count(&self, b: usize, group: usize) -> u16 {
        self.buckets.get(b).and_then(|r| r.get(group)).copied().unwrap_or(0)
    }

    /// One text line per non-empty bucket: `<bucket> <count per group…>` (what the node logs as
    /// `vm timeline: bucket …` and `cargo xtask bench vm` parses).
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.buckets.iter().enumerate().filter(|(_, r)| r.iter().any(|&c| c > 0)).map(|(i, r)| {
            let mut s = alloc::format!("{i}");
            for c in r {
                s.push_str(&alloc::format!(" {c}"));
            }
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_land_in_their_bucket_and_group_and_the_last_bucket_takes_the_rest() {
        let mut t = Timeline::try_new().unwrap();
        t.record(0, group_of(&Exit::Cpuid, 0));
        t.record(BUCKET_NS - 1, group_of(&Exit::Cpuid, 3));
        t.record(BUCKET_NS, group_of(&Exit::Io { port: 0x20, size: 1, write: true, string: false, rep: false }, 0));
        t.record(5 * BUCKET_NS + 7, group_of(&Exit::Io { port: 0x43, size: 1, write: true, string: false, rep: false }, 0));
        t.record(5 * BUCKET_NS, NPT);
        t.record(u64::MAX, group_of(&Exit::Mmio { gpa: 0xd000_0050, write_hint: None }, 0));
        assert_eq!((t.count(0, 0), t.count(0, 1)), (1, 1));
        assert_eq!(t.count(1, 3), 1);
        assert_eq!((t.count(5, 4), t.count(5, NPT)), (1, 1));
        assert_eq!(t.count(MAX_BUCKETS - 1, 2), 1);
        let lines: Vec<String> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "0 1 1 0 0 0 0 0 0 0 0 0 0 0");
        assert!(lines[3].starts_with("1023 0 0 1 "));
        for _ in 0..70_000 {
            t.record(0, 0);
        }
        assert_eq!(t.count(0, 0), u16::MAX);
    }

    #[test]
    fn no_memory_no_timeline() {
        crate::fallible::fail_allocations(true);
        assert!(Timeline::try_new().is_none());
        crate::fallible::fail_allocations(false);
        assert!(Timeline::try_new().is_some());
    }
}
