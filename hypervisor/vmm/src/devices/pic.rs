//! Dual 8259A programmable interrupt controller (master 0x20/0x21, slave 0xa0/0xa1, ELCR
//! 0x4d0/0x4d1), cascaded on master IRQ 2.
//!
//! Modelled: ICW1–ICW4 (edge/level flag, single/cascade, ICW4 AEOI), OCW1 (IMR), OCW2
//! (non-specific / specific EOI, rotate on EOI, set priority, rotate in AEOI), OCW3 (read
//! IRR/ISR, poll, special mask mode), edge and level (ELCR) triggering, spurious IRQ 7/15,
//! special-fully-nested is not modelled (Linux does not use it).

/// One 8259A.
#[derive(Debug, Clone, Default)]
pub struct Pic8259 {
    pub irr: u8,
    pub isr: u8,
    pub imr: u8,
    /// Level-triggered inputs (ELCR / ICW1 LTIM).
    pub elcr: u8,
    elcr_mask: u8,
    /// Current input levels (for edge detection / level mode).
    lines: u8,
    pub vector_base: u8,
    /// Lowest-priority IRQ + 1 (rotation), 0 = IRQ0 highest.
    priority_add: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    auto_eoi: bool,
    rotate_on_aeoi: bool,
    init_step: u8,
    icw4_needed: bool,
    single: bool,
    level_all: bool,
}

impl Pic8259 {
    fn new(elcr_mask: u8, base: u8) -> Self {
        Pic8259 { elcr_mask, vector_base: base, imr: 0xff, ..Default::default() }
    }

    fn is_level(&self, bit: u8) -> bool {
        self.level_all || self.elcr & bit != 0
    }

    /// Set input line `irq` (0..7) to `level`.
    pub fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << (irq & 7);
        if self.is_level(bit) {
            if level {
                self.irr |= bit;
                self.lines |= bit;
            } else {
                self.irr &= !bit;
                self.lines &= !bit;
            }
        } else if level {
            if self.lines & bit == 0 {
                self.irr |= bit;
            }
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// Highest-priority bit set in `mask`, as an IRQ number, honouring rotation.
    fn priority(&self, mask: u8) -> Option<u8> {
        if mask == 0 {
            return None;
        }
        (0..8u8).find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
    }

    /// IRQ the chip would present on INTA, if its INT output is asserted.
    pub fn pending(&self) -> Option<u8> {
        let p = self.priority(self.irr & !self.imr)?;
        let mut isr = self.isr;
        if self.special_mask {
            isr &= !self.imr;
        }
        match self.priority(isr) {
            Some(s) if s <= p => None,
            _ => Some((p + self.priority_add) & 7),
        }
    }

    /// INTA cycle for `irq` (which must be what `pending` returned).
    fn ack(&mut self, irq: u8) {
        let bit = 1u8 << (irq & 7);
        if !self.is_level(bit) {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_aeoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    fn eoi_highest(&mut self, rotate: bool) {
        if let Some(p) = self.priority(self.isr) {
            let irq = (p + self.priority_add) & 7;
            self.isr &= !(1 << irq);
            if rotate {
                self.priority_add = (irq + 1) & 7;
            }
        }
    }

    pub fn write_cmd(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1
            self.init_step = 2;
            self.icw4_needed = v & 1 != 0;
            self.single = v & 2 != 0;
            self.level_all = v & 8 != 0;
            self.imr = 0;
            self.isr = 0;
            self.irr = 0;
            self.priority_add = 0;
            self.read_isr = false;
            self.poll = false;
            self.special_mask = false;
            self.auto_eoi = false;
            self.rotate_on_aeoi = false;
        } else if v & 0x08 != 0 {
            // OCW3
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 1 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2
            match v >> 5 {
                0 => self.rotate_on_aeoi = false,
                1 => self.eoi_highest(false),
                3 => self.isr &= !(1 << (v & 7)),
                4 => self.rotate_on_aeoi = true,
                5 => self.eoi_highest(true),
                6 => self.priority_add = ((v & 7) + 1) & 7,
                7 => {
                    self.isr &= !(1 << (v & 7));
                    self.priority_add = ((v & 7) + 1) & 7;
                }
                _ => {}
            }
        }
    }

    pub fn write_data(&mut self, v: u8) {
        match self.init_step {
            2 => {
                self.vector_base = v & 0xf8;
                self.init_step = if !self.single { 3 } else if self.icw4_needed { 4 } else { 0 };
            }
            3 => {
                self.init_step = if self.icw4_needed { 4 } else { 0 };
            }
            4 => {
                self.auto_eoi = v & 2 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
    }

    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending() {
            Some(irq) => {
                self.ack(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    pub fn read_cmd(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    pub fn read_data(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        self.imr
    }
}

/// Master + slave pair as wired in a PC.
#[derive(Debug, Clone)]
pub struct DualPic {
    pub master: Pic8259,
    pub slave: Pic8259,
    /// INTA cycles that returned a spurious vector.
    pub spurious: u64,
}

impl Default for DualPic {
    fn default() -> Self {
        Self::new()
    }
}

impl DualPic {
    pub fn new() -> Self {
        // IRQ 0,1,2 and 8,13 are edge-only in the ELCR.
        DualPic { master: Pic8259::new(0xf8, 0x08), slave: Pic8259::new(0xde, 0x70), spurious: 0 }
    }

    fn update_cascade(&mut self) {
        let lvl = self.slave.pending().is_some();
        self.master.set_line(2, lvl);
    }

    /// Drive ISA IRQ line `irq` (0..15).
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        if irq >= 8 {
            self.slave.set_line(irq - 8, level);
        } else if irq != 2 {
            self.master.set_line(irq, level);
        }
        self.update_cascade();
    }

    /// Edge-triggered pulse on `irq`.
    pub fn pulse(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// Vector the CPU would receive now, if INTR is asserted.
    pub fn pending_vector(&self) -> Option<u8> {
        let irq = self.master.pending()?;
        if irq == 2 {
            let s = self.slave.pending();
            Some(match s {
                Some(si) => self.slave.vector_base.wrapping_add(si),
                None => self.slave.vector_base.wrapping_add(7),
            })
        } else {
            Some(self.master.vector_base.wrapping_add(irq))
        }
    }

    /// INTA: acknowledge and return the vector to deliver (spurious 7/15 if nothing pends).
    pub fn ack(&mut self) -> u8 {
        let v = match self.master.pending() {
            None => {
                self.spurious += 1;
                self.master.vector_base.wrapping_add(7)
            }
            Some(2) => {
                self.master.ack(2);
                match self.slave.pending() {
                    Some(si) => {
                        self.slave.ack(si);
                        self.slave.vector_base.wrapping_add(si)
                    }
                    None => {
                        self.spurious += 1;
                        self.slave.vector_base.wrapping_add(7)
                    }
                }
            }
            Some(irq) => {
                self.master.ack(irq);
                self.master.vector_base.wrapping_add(irq)
            }
        };
        self.update_cascade();
        v
    }

    pub fn handles(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1)
    }

    pub fn io_read(&mut self, port: u16) -> u8 {
        let v = match port {
            0x20 => self.master.read_cmd(),
            0x21 => self.master.read_data(),
            0xa0 => self.slave.read_cmd(),
            0xa1 => self.slave.read_data(),
            0x4d0 => self.master.elcr,
            0x4d1 => self.slave.elcr,
            _ => 0xff,
        };
        self.update_cascade();
        v
    }

    pub fn io_write(&mut self, port: u16, v: u8) {
        match port {
            0x20 => self.master.write_cmd(v),
            0x21 => self.master.write_data(v),
            0xa0 => self.slave.write_cmd(v),
            0xa1 => self.slave.write_data(v),
            0x4d0 => self.master.elcr = v & self.master.elcr_mask,
            0x4d1 => self.slave.elcr = v & self.slave.elcr_mask,
            _ => {}
        }
        self.update_cascade();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence Linux's init_8259A() issues.
    fn linux_init(p: &mut DualPic, aeoi: bool) {
        p.io_write(0x21, 0xff);
        p.io_write(0xa1, 0xff);
        p.io_write(0x20, 0x11);
        p.io_write(0x21, 0x30);
        p.io_write(0x21, 0x04);
        p.io_write(0x21, if aeoi { 0x03 } else { 0x01 });
        p.io_write(0xa0, 0x11);
        p.io_write(0xa1, 0x38);
        p.io_write(0xa1, 0x02);
        p.io_write(0xa1, 0x01);
        p.io_write(0x21, 0xfb); // everything masked except cascade
        p.io_write(0xa1, 0xff);
    }

    #[test]
    fn linux_probe_and_init() {
        let mut p = DualPic::new();
        // probe_8259A: write IMR, read it back
        p.io_write(0xa1, 0xff);
        p.io_write(0x21, 0xfb);
        assert_eq!(p.io_read(0x21), 0xfb);
        linux_init(&mut p, false);
        assert_eq!(p.master.vector_base, 0x30);
        assert_eq!(p.slave.vector_base, 0x38);
        assert_eq!(p.io_read(0x21), 0xfb);
        // timer irq masked: nothing
        p.pulse(0);
        assert_eq!(p.pending_vector(), None);
        // unmask irq0: the latched edge is delivered
        p.io_write(0x21, 0xfa);
        assert_eq!(p.pending_vector(), Some(0x30));
        assert_eq!(p.ack(), 0x30);
        assert_eq!(p.pending_vector(), None);
        // read ISR via OCW3
        p.io_write(0x20, 0x0b);
        assert_eq!(p.io_read(0x20), 0x01);
        p.io_write(0x20, 0x0a);
        // another edge while in service: not delivered until EOI
        p.pulse(0);
        assert_eq!(p.pending_vector(), None);
        p.io_write(0x20, 0x60); // specific EOI irq0
        assert_eq!(p.pending_vector(), Some(0x30));
    }

    #[test]
    fn cascade_priority_and_eoi() {
        let mut p = DualPic::new();
        linux_init(&mut p, false);
        p.io_write(0x21, 0x00);
        p.io_write(0xa1, 0x00);
        p.set_irq(10, true);
        assert_eq!(p.pending_vector(), Some(0x38 + 2));
        p.pulse(4);
        // irq 2 (cascade) outranks irq 4
        assert_eq!(p.ack(), 0x3a);
        // irq 4 has lower priority than in-service irq 2
        assert_eq!(p.pending_vector(), None);
        p.pulse(1);
        assert_eq!(p.ack(), 0x31);
        p.io_write(0x20, 0x20); // non-specific EOI -> clears irq1
        p.io_write(0xa0, 0x62); // slave specific EOI irq 10
        p.io_write(0x20, 0x62); // master specific EOI cascade
        assert_eq!(p.pending_vector(), Some(0x34));
        assert_eq!(p.ack(), 0x34);
        p.io_write(0x20, 0x20);
        // irq10 line still high but edge-triggered: no re-delivery
        assert_eq!(p.pending_vector(), None);
        // spurious INTA
        assert_eq!(p.ack(), 0x37);
        assert_eq!(p.spurious, 1);
    }

    #[test]
    fn level_mode_and_aeoi() {
        let mut p = DualPic::new();
        linux_init(&mut p, true);
        p.io_write(0x21, 0x00);
        p.io_write(0xa1, 0x00);
        p.io_write(0x4d0, 0xff);
        assert_eq!(p.io_read(0x4d0), 0xf8);
        p.set_irq(5, true);
        assert_eq!(p.ack(), 0x35);
        // AEOI: no ISR bit; level still high -> pending again
        assert_eq!(p.master.isr, 0);
        assert_eq!(p.pending_vector(), Some(0x35));
        p.set_irq(5, false);
        assert_eq!(p.pending_vector(), None);
        // poll mode
        p.pulse(1);
        p.io_write(0x20, 0x0c);
        assert_eq!(p.io_read(0x20), 0x81);
        assert_eq!(p.pending_vector(), None);
    }
}
