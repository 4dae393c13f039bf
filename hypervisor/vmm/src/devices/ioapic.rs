//! I/O APIC (82093AA-style, version 0x11, 24 pins) at 0xfec0_0000: IOREGSEL at +0x00,
//! IOWIN at +0x10; registers ID, version, arbitration and the redirection table.
//!
//! A pin's line level comes from the devices ([`IoApic::set_irq`]); an unmasked edge-triggered
//! pin sends one message per rising edge, a level-triggered pin sends while its line is
//! asserted and Remote IRR is clear, and sets Remote IRR until the local APIC's EOI of that
//! vector ([`IoApic::eoi`]) — then re-sends if the line is still asserted. Messages go out
//! through a callback as [`IpiRequest`]s for [`super::lapic::route`].
//!
//! Hostile input: IOREGSEL is an 8-bit index, unknown registers read 0 and ignore writes,
//! read-only bits (delivery status, Remote IRR) cannot be written, any MMIO size or offset is
//! accepted; nothing panics. One EOI or line change sends at most one message per pin.

use super::lapic::{DeliveryMode, Destination, IpiRequest};

pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const IOAPIC_MMIO_SIZE: u64 = 0x20;
pub const IOAPIC_PINS: usize = 24;
pub const IOAPIC_VERSION: u32 = 0x11 | ((IOAPIC_PINS as u32 - 1) << 16);

const MASKED: u64 = 1 << 16;
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL: u64 = 1 << 15;
const ACTIVE_LOW: u64 = 1 << 13;
/// Writable bits of a redirection entry: vector, delivery mode, destination mode, polarity,
/// trigger mode, mask, destination (bits 56-63).
const WRITABLE: u64 = 0xff00_0000_0001_afff;

#[derive(Debug, Clone)]
pub struct IoApic {
    id: u32,
    regsel: u8,
    redir: [u64; IOAPIC_PINS],
    /// Line levels as the devices drive them (before polarity).
    lines: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new(0)
    }
}

impl IoApic {
    /// An I/O APIC with APIC ID `id`, every pin masked (as after reset).
    pub fn new(id: u8) -> Self {
        IoApic { id: u32::from(id & 0xf), regsel: 0, redir: [MASKED; IOAPIC_PINS], lines: 0 }
    }

    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.redir.get(pin).copied()
    }

    fn asserted(&self, pin: usize) -> bool {
        let line = self.lines & (1 << pin) != 0;
        let low = self.redir[pin] & ACTIVE_LOW != 0;
        line != low
    }

    fn message(e: u64) -> Option<IpiRequest> {
        let mode = DeliveryMode::from_bits((e >> 8) as u32)?;
        let dest8 = (e >> 56) as u32;
        let dest = if e & (1 << 11) != 0 {
            Destination::Logical { dest: dest8, x2apic: false }
        } else {
            Destination::Physical { id: dest8, x2apic: false }
        };
        Some(IpiRequest { vector: e as u8, mode, dest, level_triggered: e & LEVEL != 0 })
    }

    /// Send pin's message if it is due (unmasked; level pins: asserted, Remote IRR clear).
    fn try_level(&mut self, pin: usize, out: &mut dyn FnMut(IpiRequest)) {
        let e = self.redir[pin];
        if e & MASKED != 0 || e & LEVEL == 0 || e & REMOTE_IRR != 0 || !self.asserted(pin) {
            return;
        }
        if let Some(m) = Self::message(e) {
            // Only fixed/lowest-priority level interrupts wait for an EOI.
            if matches!(m.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) {
                self.redir[pin] |= REMOTE_IRR;
            }
            out(m);
        }
    }

    /// A device drives `pin` to `level`.
    pub fn set_irq(&mut self, pin: usize, level: bool, out: &mut dyn FnMut(IpiRequest)) {
        if pin >= IOAPIC_PINS {
            return;
        }
        let was = self.asserted(pin);
        if level {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let now = self.asserted(pin);
        let e = self.redir[pin];
        if e & LEVEL != 0 {
            self.try_level(pin, out);
        } else if now && !was && e & MASKED == 0 {
            if let Some(m) = Self::message(e) {
                out(m);
            }
        }
    }

    /// The local APIC's EOI of a level-triggered `vector` (broadcast to the I/O APIC).
    pub fn eoi(&mut self, vector: u8, out: &mut dyn FnMut(IpiRequest)) {
        for pin in 0..IOAPIC_PINS {
            let e = self.redir[pin];
            if e & REMOTE_IRR != 0 && e as u8 == vector {
                self.redir[pin] &= !REMOTE_IRR;
                self.try_level(pin, out);
            }
        }
    }

    fn read_reg(&self) -> u32 {
        match self.regsel {
            0 => self.id << 24,
            1 => IOAPIC_VERSION,
            2 => self.id << 24,
            r @ 0x10..=0x3f => {
                let e = self.redir[usize::from((r - 0x10) / 2)];
                if r & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn write_reg(&mut self, v: u32, out: &mut dyn FnMut(IpiRequest)) {
        match self.regsel {
            0 => self.id = (v >> 24) & 0xf,
            r @ 0x10..=0x3f => {
                let pin = usize::from((r - 0x10) / 2);
                let old = self.redir[pin];
                let new = if r & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(v)
                } else {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                };
                // Read-only bits keep their value; Remote IRR stays until the EOI.
                self.redir[pin] = (new & WRITABLE) | (old & REMOTE_IRR);
                if self.redir[pin] & LEVEL == 0 {
                    self.redir[pin] &= !REMOTE_IRR;
                }
                // Unmasking an asserted level pin delivers it now.
                self.try_level(pin, out);
            }
            _ => {}
        }
    }

    /// MMIO read at `offset` in the window (IOREGSEL / IOWIN; anything else reads 0).
    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        let v = match offset & !3 {
            0x00 => u64::from(self.regsel),
            0x10 => u64::from(self.read_reg()),
            _ => 0,
        } >> ((offset & 3) * 8);
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    /// MMIO write (IOREGSEL takes its low byte; IOWIN only whole 32-bit writes).
    pub fn mmio_write(&mut self, offset: u64, size: u8, val: u64, out: &mut dyn FnMut(IpiRequest)) {
        match offset {
            0x00 => self.regsel = val as u8,
            0x10 if size >= 4 => self.write_reg(val as u32, out),
            _ => {}
        }
    }
}
