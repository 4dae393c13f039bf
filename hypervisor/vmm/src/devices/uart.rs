//! 16550A UART (COM1 at 0x3f8, IRQ 4).
//!
//! Transmit is instantaneous: every THR write leaves THR/TSR empty at once, raising the THRE
//! interrupt when enabled, which is what Linux's 8250 driver needs in interrupt mode. Receive
//! data comes from a host-side input queue ([`Uart::push_input`]). Transmitted bytes are
//! returned by [`Uart::io_write`] and go straight into the VM's bounded console ring. Loopback (MCR bit 4) routes
//! THR to RBR and MCR outputs to the MSR inputs, which Linux's autoconfig probe checks. The
//! IRQ line is gated by MCR.OUT2 as on a PC.

use alloc::collections::VecDeque;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;
const RX_FIFO: usize = 16;

const IER_RDA: u8 = 1;
const IER_THRE: u8 = 2;
const IER_RLS: u8 = 4;
const IER_MS: u8 = 8;
const LSR_DR: u8 = 1;
const LSR_OE: u8 = 2;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
const MCR_OUT2: u8 = 0x08;
const LCR_DLAB: u8 = 0x80;

#[derive(Debug, Clone)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    lsr_err: u8,
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    thr_ipending: bool,
    rx: VecDeque<u8>,
    host_input: VecDeque<u8>,
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart {
    pub fn new() -> Self {
        Uart {
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            lsr_err: 0,
            msr: 0xb0, // CTS, DSR, DCD asserted (a connected terminal)
            scr: 0,
            dll: 0x0c,
            dlm: 0,
            fifo_enabled: false,
            thr_ipending: false,
            rx: VecDeque::new(),
            host_input: VecDeque::new(),
        }
    }

    /// Queue host input for the guest (bounded at 4096 bytes; excess is dropped).
    pub fn push_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.host_input.len() < 4096 {
                self.host_input.push_back(b);
            }
        }
        self.refill();
    }

    fn refill(&mut self) {
        if self.mcr & MCR_LOOP != 0 {
            return;
        }
        while self.rx.len() < RX_FIFO {
            match self.host_input.pop_front() {
                Some(b) => self.rx.push_back(b),
                None => break,
            }
        }
    }

    fn lsr(&self) -> u8 {
        let mut v = LSR_THRE | LSR_TEMT | self.lsr_err;
        if !self.rx.is_empty() {
            v |= LSR_DR;
        }
        v
    }

    /// Highest-priority pending interrupt as an IIR id (bits 3:1), or None.
    fn pending_id(&self) -> Option<u8> {
        if self.ier & IER_RLS != 0 && self.lsr_err != 0 {
            return Some(0x06);
        }
        if self.ier & IER_RDA != 0 && !self.rx.is_empty() {
            return Some(0x04);
        }
        if self.ier & IER_THRE != 0 && self.thr_ipending {
            return Some(0x02);
        }
        if self.ier & IER_MS != 0 && self.msr & 0x0f != 0 {
            return Some(0x00);
        }
        None
    }

    /// Level of the IRQ 4 line.
    pub fn irq_level(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.mcr & MCR_LOOP == 0 && self.pending_id().is_some()
    }

    fn set_msr_inputs(&mut self, new_hi: u8) {
        let old = self.msr;
        let mut delta = 0;
        if (old ^ new_hi) & 0x10 != 0 {
            delta |= 0x01;
        }
        if (old ^ new_hi) & 0x20 != 0 {
            delta |= 0x02;
        }
        if old & 0x40 != 0 && new_hi & 0x40 == 0 {
            delta |= 0x04; // trailing edge RI
        }
        if (old ^ new_hi) & 0x80 != 0 {
            delta |= 0x08;
        }
        self.msr = (new_hi & 0xf0) | (old & 0x0f) | delta;
    }

    pub fn io_read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll,
            0 => {
                let v = self.rx.pop_front().unwrap_or(0);
                self.refill();
                v
            }
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let fifo = if self.fifo_enabled { 0xc0 } else { 0 };
                match self.pending_id() {
                    Some(id) => {
                        if id == 0x02 {
                            self.thr_ipending = false;
                        }
                        fifo | id
                    }
                    None => fifo | 1,
                }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let v = self.lsr();
                self.lsr_err = 0;
                v
            }
            6 => {
                let v = self.msr;
                self.msr &= 0xf0;
                v
            }
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// Register write; returns the byte transmitted on the line, if any.
    pub fn io_write(&mut self, offset: u16, v: u8) -> Option<u8> {
        let dlab = self.lcr & LCR_DLAB != 0;
        let mut tx = None;
        match offset {
            0 if dlab => self.dll = v,
            0 => {
                if self.mcr & MCR_LOOP != 0 {
                    if self.rx.len() < RX_FIFO {
                        self.rx.push_back(v);
                    } else {
                        self.lsr_err |= LSR_OE;
                    }
                } else {
                    tx = Some(v);
                }
                // Transmitted instantly: THR empty again.
                self.thr_ipending = true;
            }
            1 if dlab => self.dlm = v,
            1 => {
                let newly_thre = v & IER_THRE != 0 && self.ier & IER_THRE == 0;
                self.ier = v & 0x0f;
                if newly_thre {
                    self.thr_ipending = true;
                }
            }
            2 => {
                self.fifo_enabled = v & 1 != 0;
                if v & 2 != 0 {
                    self.rx.clear();
                    self.refill();
                }
            }
            3 => self.lcr = v,
            4 => {
                let was_loop = self.mcr & MCR_LOOP != 0;
                self.mcr = v & 0x1f;
                if self.mcr & MCR_LOOP != 0 {
                    // MSR inputs follow MCR outputs: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2.
                    let hi = ((v & 0x02) << 3) | ((v & 0x01) << 5) | ((v & 0x04) << 4) | ((v & 0x08) << 4);
                    self.set_msr_inputs(hi);
                } else if was_loop {
                    self.set_msr_inputs(0xb0);
                    self.refill();
                }
            }
            5 | 6 => {} // LSR/MSR are read-only (factory test writes ignored)
            7 => self.scr = v,
            _ => {}
        }
        tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_autoconfig_probe() {
        let mut u = Uart::new();
        // scratch
        u.io_write(7, 0xa5);
        assert_eq!(u.io_read(7), 0xa5);
        // IER test: write 0, read 0 (upper nibble), write 0x0f, read 0x0f
        u.io_write(1, 0);
        assert_eq!(u.io_read(1) & 0x0f, 0);
        u.io_write(1, 0x0f);
        assert_eq!(u.io_read(1) & 0x0f, 0x0f);
        u.io_write(1, 0);
        // loopback probe: MCR = LOOP | 0x0a -> MSR high nibble must be 0x90
        let save_mcr = u.io_read(4);
        u.io_write(4, 0x10 | 0x0a);
        assert_eq!(u.io_read(6) & 0xf0, 0x90);
        u.io_write(4, save_mcr);
        // FIFO probe: IIR bits 7:6 = 11 -> 16550A; EFR probe sees non-zero
        u.io_write(2, 0x01);
        assert_eq!(u.io_read(2) & 0xc0, 0xc0);
        u.io_write(3, 0xbf);
        assert_ne!(u.io_read(2), 0);
        u.io_write(3, 0x03);
        // loopback data path
        u.io_write(4, 0x10);
        assert_eq!(u.io_write(0, 0x55), None); // looped back, not transmitted
        assert_eq!(u.io_read(5) & 1, 1);
        assert_eq!(u.io_read(0), 0x55);
        u.io_write(4, 0x0b);
    }

    #[test]
    fn thre_interrupts_and_output() {
        let mut u = Uart::new();
        u.io_write(4, 0x0b); // DTR RTS OUT2
        assert!(!u.irq_level());
        u.io_write(1, IER_THRE);
        assert!(u.irq_level());
        assert_eq!(u.io_read(2) & 0x0f, 0x02);
        assert!(!u.irq_level()); // IIR read cleared THRE
        let out: alloc::vec::Vec<u8> = b"hi\n".iter().filter_map(|b| u.io_write(0, *b)).collect();
        assert!(u.irq_level());
        assert_eq!(out, b"hi\n");
        // disabling THRE interrupts drops the line
        u.io_write(1, 0);
        assert!(!u.irq_level());
        // divisor latch
        u.io_write(3, 0x83);
        u.io_write(0, 0x01);
        u.io_write(1, 0x00);
        assert_eq!(u.io_read(0), 1);
        u.io_write(3, 0x03);
        assert_eq!(u.io_read(1), 0);
    }

    #[test]
    fn receive() {
        let mut u = Uart::new();
        u.io_write(4, 0x08);
        u.io_write(1, IER_RDA);
        assert!(!u.irq_level());
        u.push_input(b"ab");
        assert!(u.irq_level());
        assert_eq!(u.io_read(2) & 0x0f, 0x04);
        assert_eq!(u.io_read(0), b'a');
        assert_eq!(u.io_read(0), b'b');
        assert!(!u.irq_level());
        assert_eq!(u.io_read(0), 0);
    }
}
