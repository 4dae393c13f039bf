//! The built-in test guests (testguests/*.S, assembled at build time) and the state raw guests start in.

use catenary_vmm::cpu::VcpuState;

/// 32-bit flat protected mode, paging off, interrupts off: the state raw test guests start in.
pub(super) fn flat32(entry: u64) -> VcpuState {
    use catenary_vmm::cpu::{Segment, CR0_ET, CR0_PE};
    let mut s = VcpuState::new();
    s.cs = Segment::flat(0x08, 0xb, true, false);
    let data = Segment::flat(0x10, 0x3, true, false);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = Segment { selector: 0x18, base: 0, limit: 0x67, attr: Segment::ATTR_P | 0xb };
    s.ldtr = Segment { selector: 0, base: 0, limit: 0xffff, attr: Segment::ATTR_P | 0x2 };
    s.cr0 = CR0_PE | CR0_ET;
    s.rflags = 2;
    s.rip = entry;
    s.rsp = entry; // stack grows down below the code
    s
}

/// The hostile test guest (testguests/hostile.S), assembled at build time.
pub const HOSTILE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hostile.bin"));
pub const HOSTILE_LOAD: u64 = 0x10000;
/// The console test guest (testguests/flood.S), loaded at `HOSTILE_LOAD` too.
pub const FLOOD_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flood.bin"));
/// The re-injection test guest (testguests/reinject.S), loaded at `HOSTILE_LOAD` too.
pub const REINJECT_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/reinject.bin"));
/// The exactly-once interrupt test guest (testguests/irqonce.S), loaded at `HOSTILE_LOAD` too.
pub const IRQONCE_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/irqonce.bin"));
/// The progress-counting SMP test guest (testguests/progress.S), loaded at `HOSTILE_LOAD` too.
pub const PROGRESS_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/progress.bin"));

/// The world-switch stress guest (testguests/exitloop.S): EBX back-to-back port exits.
pub const EXITLOOP_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exitloop.bin"));

/// The host-NMI test guest (testguests/nmispin.S): RDTSC busy loops, few exits.
pub const NMISPIN_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/nmispin.bin"));

/// The null-exit guest (testguests/cpuidloop.S): EBX CPUID exits, then the same loop without
/// exits, both timed in the guest (`bench=exit`, `crate::exitbench`).
pub const CPUIDLOOP_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cpuidloop.bin"));
