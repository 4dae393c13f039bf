//! The interrupt fabric of an APIC microVM: one local APIC per vCPU and the I/O APIC, wired as
//! on a PC (ISA IRQ n → I/O APIC pin n, IRQ 0 → pin 2; messages routed to the local APICs; EOIs
//! of level-triggered vectors broadcast back to the I/O APIC). The 8259 stays beside it and
//! reaches vCPU 0 through LINT0 (virtual-wire mode) until the guest masks it.
//!
//! Every entry point takes the vCPU index it acts for; indices outside the set are ignored.
//! Which vCPUs got something since the last [`ApicBus::take_wakeups`] is a bit mask, so the
//! backend can wake halted vCPU tasks (or kick running ones).

use crate::devices::ioapic::{IoApic, IOAPIC_BASE, IOAPIC_MMIO_SIZE};
use crate::devices::lapic::{route, ApicEffect, ApicFault, IpiRequest, LocalApic, APIC_DEFAULT_BASE, APIC_MMIO_SIZE};
use crate::mptable::{ioapic_id, ioapic_pin, MAX_VCPUS};
use alloc::vec::Vec;

#[derive(Debug, Clone)]
pub struct ApicBus {
    lapics: Vec<LocalApic>,
    ioapic: IoApic,
    /// ISA line levels as last driven (bit n = IRQ n).
    lines: u16,
    wake: u64,
}

/// Which APIC window a guest-physical address falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicWindow {
    Local(u64),
    Io(u64),
}

impl ApicBus {
    /// `vcpus` local APICs (IDs 0..n, the first the BSP; clamped to 1..=[`MAX_VCPUS`]).
    pub fn new(vcpus: u8, tsc: crate::tsc::GuestTsc) -> Self {
        let n = vcpus.clamp(1, MAX_VCPUS);
        ApicBus {
            lapics: (0..n).map(|i| LocalApic::new(u32::from(i), i == 0, tsc)).collect(),
            ioapic: IoApic::new(ioapic_id(n)),
            lines: 0,
            wake: 0,
        }
    }

    pub fn vcpus(&self) -> usize {
        self.lapics.len()
    }

    pub fn lapic(&self, v: usize) -> Option<&LocalApic> {
        self.lapics.get(v)
    }

    pub fn lapic_mut(&mut self, v: usize) -> Option<&mut LocalApic> {
        self.lapics.get_mut(v)
    }

    pub fn window(gpa: u64) -> Option<ApicWindow> {
        if (APIC_DEFAULT_BASE..APIC_DEFAULT_BASE + APIC_MMIO_SIZE).contains(&gpa) {
            Some(ApicWindow::Local(gpa - APIC_DEFAULT_BASE))
        } else if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_MMIO_SIZE).contains(&gpa) {
            Some(ApicWindow::Io(gpa - IOAPIC_BASE))
        } else {
            None
        }
    }

    fn send(&mut self, from: Option<usize>, m: &IpiRequest) {
        self.wake |= route(&mut self.lapics, from, m);
    }

    fn apply(&mut self, v: usize, e: ApicEffect) {
        match e {
            ApicEffect::None => {}
            ApicEffect::Send(m) => self.send(Some(v), &m),
            ApicEffect::LevelEoi(vec) => {
                let lapics = &mut self.lapics;
                let wake = &mut self.wake;
                self.ioapic.eoi(vec, &mut |m| *wake |= route(lapics, None, &m));
            }
        }
    }

    /// Drive ISA IRQ `irq` (0–15) to `level` (edge pins see the rising edge).
    pub fn set_isa_irq(&mut self, irq: u8, level: bool) {
        if irq > 15 || irq == 2 {
            return;
        }
        let bit = 1u16 << irq;
        if (self.lines & bit != 0) == level {
            return;
        }
        self.lines = if level { self.lines | bit } else { self.lines & !bit };
        let lapics = &mut self.lapics;
        let wake = &mut self.wake;
        self.ioapic.set_irq(usize::from(ioapic_pin(irq)), level, &mut |m| *wake |= route(lapics, None, &m));
    }

    /// An edge on ISA IRQ `irq` (the PIT's output).
    pub fn pulse_isa_irq(&mut self, irq: u8) {
        self.set_isa_irq(irq, false);
        self.set_isa_irq(irq, true);
        self.set_isa_irq(irq, false);
    }

    /// MMIO read in a window from vCPU `v`.
    pub fn mmio_read(&mut self, v: usize, w: ApicWindow, size: u8, now: u64) -> u64 {
        match w {
            ApicWindow::Local(off) => self.lapics.get(v).map_or(u64::MAX, |a| a.mmio_read(off, size, now)),
            ApicWindow::Io(off) => self.ioapic.mmio_read(off, size),
        }
    }

    /// MMIO write in a window from vCPU `v`.
    pub fn mmio_write(&mut self, v: usize, w: ApicWindow, size: u8, val: u64, now: u64) {
        match w {
            ApicWindow::Local(off) => {
                if let Some(a) = self.lapics.get_mut(v) {
                    let e = a.mmio_write(off, size, val, now);
                    self.apply(v, e);
                }
            }
            ApicWindow::Io(off) => {
                let lapics = &mut self.lapics;
                let wake = &mut self.wake;
                self.ioapic.mmio_write(off, size, val, &mut |m| *wake |= route(lapics, None, &m));
            }
        }
    }

    /// RDMSR from vCPU `v`: `None` when the MSR is not the APIC's.
    pub fn rdmsr(&self, v: usize, msr: u32, now: u64) -> Option<Result<u64, ApicFault>> {
        self.lapics.get(v)?.rdmsr(msr, now)
    }

    /// WRMSR from vCPU `v`: `None` when the MSR is not the APIC's.
    pub fn wrmsr(&mut self, v: usize, msr: u32, val: u64, now: u64) -> Option<Result<(), ApicFault>> {
        let r = self.lapics.get_mut(v)?.wrmsr(msr, val, now)?;
        Some(r.map(|e| self.apply(v, e)))
    }

    /// Run every local APIC's timer up to `now`.
    pub fn poll(&mut self, now: u64) {
        for (i, a) in self.lapics.iter_mut().enumerate() {
            if a.poll(now) {
                self.wake |= 1 << i;
            }
        }
    }

    /// Earliest timer expiry of vCPU `v`'s APIC.
    pub fn next_deadline_ns(&self, v: usize) -> Option<u64> {
        self.lapics.get(v)?.next_deadline_ns()
    }

    /// vCPUs that received an interrupt, NMI, INIT or SIPI since the last call.
    pub fn take_wakeups(&mut self) -> u64 {
        core::mem::take(&mut self.wake)
    }
}

/// The state an application processor starts in after INIT and a Startup IPI with `vector`
/// (SDM vol. 3 §9.4.4, §10.6.1 / §11.6.1): real mode, CS selector `vector << 8` with base
/// `vector << 12`, IP 0, the other segments at 0 with 64 KiB limits, IDTR 0/0x3ff, TR a busy
/// 16-bit TSS (what VM entry needs), RFLAGS 2, CR0 = ET, EFER 0.
pub fn sipi_state(vector: u8) -> crate::cpu::VcpuState {
    use crate::cpu::{DescTable, Segment, VcpuState};
    let mut s = VcpuState::new();
    s.cs = Segment::real(u16::from(vector) << 8, 0xb);
    for seg in [&mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss] {
        *seg = Segment::real(0, 0x3);
    }
    s.tr = Segment { selector: 0, base: 0, limit: 0xffff, attr: 0x3 | Segment::ATTR_P };
    s.ldtr = Segment { selector: 0, base: 0, limit: 0xffff, attr: 0x2 | Segment::ATTR_P };
    s.idtr = DescTable { base: 0, limit: 0x3ff };
    s.gdtr = DescTable { base: 0, limit: 0xffff };
    s.rip = 0;
    s
}
