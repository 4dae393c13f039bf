//! Read the CMOS real-time clock (MC146818 at ports 0x70/0x71) once at boot, for the wall
//! clock the fabric's handshake timestamps need. Returns the raw registers; decoding (BCD or
//! binary, 12/24 h, century, validation) is in the safe crate `catenary-net` (`walltime`).
//!
//! Call it before the ring-3 `rtcd` (which owns these ports afterwards) starts: the index
//! register is shared state, and two readers would interleave. A race could only garble the
//! time read, never memory.

use x86_64::instructions::port::Port;

/// The time registers as read, plus status register B (format bits) and the century byte
/// (CMOS 0x32, where PC firmware and QEMU keep it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmosTime {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    pub century: u8,
    pub status_b: u8,
}

fn cmos(reg: u8) -> u8 {
    // SAFETY: 0x70/0x71 are the CMOS index/data ports on every PC; selecting a register
    // (bit 7 clear: NMIs stay enabled) and reading it has no effect on memory.
    unsafe {
        Port::<u8>::new(0x70).write(reg & 0x7f);
        Port::<u8>::new(0x71).read()
    }
}

fn update_in_progress() -> bool {
    cmos(0x0a) & 0x80 != 0
}

fn snapshot() -> CmosTime {
    CmosTime {
        seconds: cmos(0x00),
        minutes: cmos(0x02),
        hours: cmos(0x04),
        day: cmos(0x07),
        month: cmos(0x08),
        year: cmos(0x09),
        century: cmos(0x32),
        status_b: cmos(0x0b),
    }
}

/// Read the clock: wait (bounded) while an update is in progress, then read until two
/// consecutive snapshots agree. `None` if the clock never settles (absent or broken).
pub fn read() -> Option<CmosTime> {
    let mut last: Option<CmosTime> = None;
    for _ in 0..16 {
        let mut spins = 0u32;
        while update_in_progress() {
            spins += 1;
            if spins > 100_000 {
                return None;
            }
            core::hint::spin_loop();
        }
        let now = snapshot();
        if last == Some(now) {
            return Some(now);
        }
        last = Some(now);
    }
    None
}
