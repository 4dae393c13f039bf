//! A microVM's run statistics: exits by reason, port I/O by port, CPUID by leaf, unknown
//! ports/MSRs, wild MMIO, injections. Read by the node's end-of-VM report, `exitprofile` and the
//! hostile-guest tests. Every per-key table is bounded: a guest must not grow host memory by
//! touching every port, leaf or MSR.

use crate::cpu::Exit;
use alloc::collections::BTreeMap;

/// Exit reasons counted in [`Stats::exits`].
pub const EXIT_NAMES: [&str; 19] = [
    "io", "mmio", "cpuid", "rdmsr", "wrmsr", "hlt", "interrupt_window", "external_interrupt", "nmi",
    "exception", "shutdown", "vmcall", "xsetbv", "invd", "wbinvd", "pause", "invalid_guest_state", "other",
    "page_walk",
];

/// The name of an exit's reason (one of [`EXIT_NAMES`]).
pub fn exit_name(e: &Exit) -> &'static str {
    EXIT_NAMES[exit_index(e)]
}

fn exit_index(e: &Exit) -> usize {
    match e {
        Exit::Io { .. } => 0,
        Exit::Mmio { .. } => 1,
        Exit::Cpuid => 2,
        Exit::Rdmsr => 3,
        Exit::Wrmsr => 4,
        Exit::Hlt => 5,
        Exit::InterruptWindow => 6,
        Exit::ExternalInterrupt => 7,
        Exit::Nmi => 8,
        Exit::Exception { .. } => 9,
        Exit::Shutdown => 10,
        Exit::Vmcall => 11,
        Exit::Xsetbv => 12,
        Exit::Invd => 13,
        Exit::Wbinvd => 14,
        Exit::Pause => 15,
        Exit::InvalidGuestState { .. } => 16,
        Exit::Other { .. } => 17,
        Exit::PageWalkFault { .. } => 18,
    }
}

/// Distinct ports counted in [`Stats::io_by_port`].
pub const MAX_PORTS_TRACKED: usize = 256;

/// Distinct CPUID leaves counted in [`Stats::cpuid_by_leaf`].
pub const MAX_CPUID_LEAVES_TRACKED: usize = 64;
/// The key under which [`Stats::cpuid_by_leaf`] counts every leaf in 0x4000_0100..=0x4000_ffff:
/// Linux's `hypervisor_cpuid_base()` walks them in steps of 0x100 looking for a signature
/// (256 exits a walk), and one key per step would fill the table.
pub const CPUID_HV_SCAN_KEY: u32 = 0x4000_0100;

/// Distinct unknown MSRs counted in [`Stats::unknown_msrs`].
pub const MAX_UNKNOWN_MSRS_TRACKED: usize = 256;

/// Counters for the benchmark and for hostile-guest reports.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Exits by reason, indexed like [`EXIT_NAMES`].
    pub exits: [u64; 19],
    /// Port I/O exits by port (the first [`MAX_PORTS_TRACKED`] distinct ports; the rest are
    /// only in `exits`: a guest must not grow host memory by touching every port).
    pub io_by_port: BTreeMap<u16, u64>,
    /// CPUID exits by `(leaf, executed in user mode)` (the first [`MAX_CPUID_LEAVES_TRACKED`]
    /// distinct keys, bounded like `io_by_port`): where a boot's CPUIDs come from.
    pub cpuid_by_leaf: BTreeMap<(u32, bool), u64>,
    pub unknown_port_reads: u64,
    pub unknown_port_writes: u64,
    /// Distinct unknown MSRs (capped at [`MAX_UNKNOWN_MSRS_TRACKED`] entries) and their access
    /// counts.
    pub unknown_msrs: BTreeMap<u32, u64>,
    pub unknown_msr_total: u64,
    pub wild_mmio: u64,
    /// MMIO to the local APIC page of a guest without one (`devices::lapic::absent_apic_read`).
    pub absent_apic_mmio: u64,
    pub exceptions_injected: u64,
    pub irqs_injected: u64,
    pub string_io_iterations: u64,
    pub post_code: u8,
}

/// `map[key] += 1`, adding a new key only while the map holds fewer than `cap`.
fn count_bounded<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, cap: usize) {
    if map.len() < cap || map.contains_key(&key) {
        *map.entry(key).or_insert(0) += 1;
    }
}

impl Stats {
    /// `(reason, count)` for every reason with a non-zero count.
    pub fn exits_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        EXIT_NAMES.iter().zip(self.exits.iter()).filter(|(_, c)| **c > 0).map(|(n, c)| (*n, *c))
    }
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }

    /// One exit of `exit`'s reason.
    pub(crate) fn count_exit(&mut self, exit: &Exit) {
        self.exits[exit_index(exit)] += 1;
    }

    /// One port I/O exit on `port`.
    pub(crate) fn count_port(&mut self, port: u16) {
        count_bounded(&mut self.io_by_port, port, MAX_PORTS_TRACKED);
    }

    /// One CPUID exit for `leaf` (the hypervisor-range walk under one key).
    pub(crate) fn count_cpuid(&mut self, leaf: u32, user: bool) {
        let key = if (0x4000_0100..=0x4000_ffff).contains(&leaf) { CPUID_HV_SCAN_KEY } else { leaf };
        count_bounded(&mut self.cpuid_by_leaf, (key, user), MAX_CPUID_LEAVES_TRACKED);
    }

    /// One access to an MSR the VMM does not know (#GP injected).
    pub(crate) fn count_unknown_msr(&mut self, idx: u32) {
        self.unknown_msr_total += 1;
        count_bounded(&mut self.unknown_msrs, idx, MAX_UNKNOWN_MSRS_TRACKED);
    }
}
