//! 8254 programmable interval timer (ports 0x40–0x43) and the port 0x61 gate/status bits.
//!
//! Counts are derived from `now_ns` (the backend's monotonic clock) at 1.193182 MHz, so reading a
//! counter never needs a host timer. Modes 0 (interrupt on terminal count), 1 (treated as 0),
//! 2 (rate generator), 3 (square wave) and 4/5 (strobe, treated like 0) are modelled; counter
//! latch and read-back commands, lobyte/hibyte/lo-hi access. BCD counting is accepted but
//! counts in binary. Channel 0 drives IRQ 0 (rising edge of OUT0); channel 2's gate is port
//! 0x61 bit 0 and OUT2 reads back in port 0x61 bit 5 (Linux's PIT calibration loop).

pub const PIT_HZ: u64 = 1_193_182;

fn ticks_since(start: u64, now: u64) -> u64 {
    let d = now.saturating_sub(start) as u128;
    (d * PIT_HZ as u128 / 1_000_000_000) as u64
}

fn ns_of_ticks(t: u64) -> u64 {
    let ns = (t as u128 * 1_000_000_000).div_ceil(PIT_HZ as u128);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Default)]
pub struct Channel {
    pub mode: u8,
    /// 1 = lobyte, 2 = hibyte, 3 = lo then hi.
    pub access: u8,
    pub bcd: bool,
    /// Reload value (1..=65536).
    pub reload: u32,
    /// Counter value at `start_ns` (mode 0 resume after a gate pause) — normally `reload`.
    start_count: u32,
    start_ns: u64,
    pub armed: bool,
    gate: bool,
    paused: bool,
    write_lo: Option<u8>,
    write_hi_next: bool,
    read_hi_next: bool,
    latched: Option<u16>,
    latched_hi_next: bool,
    status_latch: Option<u8>,
    null_count: bool,
    /// Index of the next OUT rising edge to report as an IRQ (periodic modes).
    next_edge: u64,
    oneshot_fired: bool,
}

impl Channel {
    fn elapsed(&self, now: u64) -> u64 {
        if !self.armed || self.paused || !self.gate {
            return 0;
        }
        ticks_since(self.start_ns, now)
    }

    fn periodic(&self) -> bool {
        matches!(self.mode, 2 | 3)
    }

    /// Current counter value.
    pub fn count(&self, now: u64) -> u16 {
        if !self.armed {
            return 0;
        }
        let t = self.elapsed(now);
        let reload = self.reload.max(1) as u64;
        if self.periodic() {
            let v = reload - (t % reload);
            if self.mode == 3 {
                // Square wave decrements by two each half period.
                let half = reload.div_ceil(2);
                let into = t % reload;
                let v = if into < half { reload - 2 * into } else { reload - 2 * (into - half) };
                return (v & 0xfffe) as u16;
            }
            (v & 0xffff) as u16
        } else {
            let start = self.start_count as u64;
            (start.wrapping_sub(t) & 0xffff) as u16
        }
    }

    /// OUT pin level.
    pub fn out(&self, now: u64) -> bool {
        if !self.armed {
            return self.mode != 0;
        }
        let t = self.elapsed(now);
        let reload = self.reload.max(1) as u64;
        match self.mode {
            2 => (t % reload) != reload - 1,
            3 => (t % reload) < reload.div_ceil(2),
            _ => t >= self.start_count as u64,
        }
    }

    fn load(&mut self, v: u32, now: u64) {
        self.reload = if v == 0 { 0x10000 } else { v };
        self.start_count = self.reload;
        self.start_ns = now;
        self.armed = true;
        self.paused = false;
        self.null_count = false;
        self.next_edge = 1;
        self.oneshot_fired = false;
    }

    fn set_gate(&mut self, g: bool, now: u64) {
        if g == self.gate {
            return;
        }
        if !g {
            // Falling: freeze the count.
            if self.armed && !self.paused {
                self.start_count = self.count(now) as u32;
                if self.start_count == 0 {
                    self.start_count = 0x10000;
                }
                self.paused = true;
            }
            self.gate = false;
        } else {
            self.gate = true;
            if self.armed {
                if self.periodic() || self.mode == 1 || self.mode == 5 {
                    // Rising gate retriggers.
                    self.start_count = self.reload;
                    self.next_edge = 1;
                    self.oneshot_fired = false;
                }
                self.start_ns = now;
                self.paused = false;
            }
        }
    }

    fn status(&self, now: u64) -> u8 {
        ((self.out(now) as u8) << 7)
            | ((self.null_count as u8) << 6)
            | ((self.access & 3) << 4)
            | ((self.mode & 7) << 1)
            | self.bcd as u8
    }

    /// Absolute time of the next IRQ-raising edge, if any.
    fn next_edge_ns(&self) -> Option<u64> {
        if !self.armed || self.paused || !self.gate {
            return None;
        }
        if self.periodic() {
            let t = self.next_edge.checked_mul(self.reload as u64)?;
            Some(self.start_ns.saturating_add(ns_of_ticks(t)))
        } else if !self.oneshot_fired {
            Some(self.start_ns.saturating_add(ns_of_ticks(self.start_count as u64)))
        } else {
            None
        }
    }

    /// Consume edges up to `now`; true if at least one occurred (missed edges coalesce).
    fn take_edges(&mut self, now: u64) -> bool {
        match self.next_edge_ns() {
            Some(t) if t <= now => {
                if self.periodic() {
                    let passed = self.elapsed(now) / self.reload.max(1) as u64;
                    self.next_edge = passed.max(self.next_edge) + 1;
                } else {
                    self.oneshot_fired = true;
                }
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pit {
    pub ch: [Channel; 3],
    speaker_data: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    pub fn new() -> Self {
        let mut ch: [Channel; 3] = Default::default();
        ch[0].gate = true;
        ch[1].gate = true;
        Pit { ch, speaker_data: false }
    }

    pub fn handles(port: u16) -> bool {
        matches!(port, 0x40..=0x43 | 0x61)
    }

    /// Advance to `now`: true if IRQ 0 should get an edge.
    pub fn poll(&mut self, now: u64) -> bool {
        let fired = self.ch[0].take_edges(now);
        // Channel 2 has no IRQ; keep its edge bookkeeping moving.
        let _ = self.ch[2].take_edges(now);
        fired
    }

    /// Next time IRQ 0 will fire.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.ch[0].next_edge_ns()
    }

    pub fn io_read(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x40..=0x42 => {
                let c = &mut self.ch[(port - 0x40) as usize];
                if let Some(s) = c.status_latch.take() {
                    return s;
                }
                if let Some(l) = c.latched {
                    let v = match c.access {
                        1 => {
                            c.latched = None;
                            l as u8
                        }
                        2 => {
                            c.latched = None;
                            (l >> 8) as u8
                        }
                        _ => {
                            if c.latched_hi_next {
                                c.latched = None;
                                c.latched_hi_next = false;
                                (l >> 8) as u8
                            } else {
                                c.latched_hi_next = true;
                                l as u8
                            }
                        }
                    };
                    return v;
                }
                let cnt = c.count(now);
                match c.access {
                    1 => cnt as u8,
                    2 => (cnt >> 8) as u8,
                    _ => {
                        c.read_hi_next = !c.read_hi_next;
                        if c.read_hi_next {
                            cnt as u8
                        } else {
                            (cnt >> 8) as u8
                        }
                    }
                }
            }
            0x43 => 0xff,
            0x61 => {
                let refresh = ((now / 15_085) & 1) as u8;
                (self.ch[2].gate as u8)
                    | ((self.speaker_data as u8) << 1)
                    | (refresh << 4)
                    | ((self.ch[2].out(now) as u8) << 5)
            }
            _ => 0xff,
        }
    }

    pub fn io_write(&mut self, port: u16, v: u8, now: u64) {
        match port {
            0x40..=0x42 => {
                let c = &mut self.ch[(port - 0x40) as usize];
                match c.access {
                    1 => c.load(v as u32, now),
                    2 => c.load((v as u32) << 8, now),
                    _ => {
                        if c.write_hi_next {
                            let lo = c.write_lo.take().unwrap_or(0) as u32;
                            c.write_hi_next = false;
                            c.load(lo | ((v as u32) << 8), now);
                        } else {
                            c.write_lo = Some(v);
                            c.write_hi_next = true;
                            if c.mode == 0 {
                                // Writing the first byte in mode 0 stops counting.
                                c.armed = false;
                            }
                        }
                    }
                }
            }
            0x43 => {
                let sel = v >> 6;
                if sel == 3 {
                    // Read-back: bit5 = don't latch count, bit4 = don't latch status.
                    for i in 0..3 {
                        if v & (2 << i) != 0 {
                            let c = &mut self.ch[i];
                            if v & 0x20 == 0 && c.latched.is_none() {
                                c.latched = Some(c.count(now));
                                c.latched_hi_next = false;
                            }
                            if v & 0x10 == 0 && c.status_latch.is_none() {
                                c.status_latch = Some(c.status(now));
                            }
                        }
                    }
                    return;
                }
                let c = &mut self.ch[sel as usize];
                let access = (v >> 4) & 3;
                if access == 0 {
                    if c.latched.is_none() {
                        c.latched = Some(c.count(now));
                        c.latched_hi_next = false;
                    }
                    return;
                }
                c.access = access;
                let mut mode = (v >> 1) & 7;
                if mode > 5 {
                    mode -= 4; // 6,7 alias 2,3
                }
                c.mode = mode;
                c.bcd = v & 1 != 0;
                c.armed = false;
                c.null_count = true;
                c.write_hi_next = false;
                c.read_hi_next = false;
                c.write_lo = None;
                c.latched = None;
                c.status_latch = None;
            }
            0x61 => {
                self.speaker_data = v & 2 != 0;
                self.ch[2].set_gate(v & 1 != 0, now);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode2_periodic_irq() {
        let mut p = Pit::new();
        // Linux: 0x34 = ch0, lo/hi, mode 2; LATCH for HZ=1000 is 1193.
        p.io_write(0x43, 0x34, 0);
        p.io_write(0x40, (1193 & 0xff) as u8, 0);
        p.io_write(0x40, (1193 >> 8) as u8, 1_000);
        let first = p.next_deadline_ns().unwrap();
        assert!((1_000_000..=1_001_100).contains(&first), "{first}");
        assert!(!p.poll(first - 1));
        assert!(p.poll(first));
        assert!(!p.poll(first));
        let second = p.next_deadline_ns().unwrap();
        assert!(second > first && second - first >= 999_000 && second - first <= 1_001_000);
        // 10 ms later: missed ticks coalesce into one edge
        assert!(p.poll(first + 10_000_000));
        assert!(!p.poll(first + 10_000_000));
        let mut count = 0;
        let mut t = first + 10_000_000;
        while t < first + 110_000_000 {
            t += 50_000;
            if p.poll(t) {
                count += 1;
            }
        }
        assert!((99..=101).contains(&count), "{count}");
        // count readback decreases within a period
        p.io_write(0x43, 0x00, t);
        let lo = p.io_read(0x40, t) as u16;
        let hi = p.io_read(0x40, t) as u16;
        let c = lo | (hi << 8);
        assert!((1..=1193).contains(&c), "{c}");
    }

    #[test]
    fn mode0_oneshot_and_readback() {
        let mut p = Pit::new();
        p.io_write(0x43, 0x30, 0);
        p.io_write(0x40, 0x00, 0);
        p.io_write(0x40, 0x10, 0); // 4096 ticks ~ 3.43 ms
        let d = p.next_deadline_ns().unwrap();
        assert!((3_430_000..3_440_000).contains(&d));
        assert!(p.poll(d));
        assert!(p.next_deadline_ns().is_none());
        assert!(!p.poll(d + 100_000_000));
        // read-back status of ch0: OUT high, mode 0, lo/hi
        p.io_write(0x43, 0xe2, d);
        assert_eq!(p.io_read(0x40, d), 0x80 | 0x30);
    }

    #[test]
    fn channel2_calibration_loop() {
        // pit_calibrate_tsc(): gate on, ch2 mode 0, latch = 1193182/20 (50 ms), poll 0x61 bit 5.
        let mut p = Pit::new();
        let v = p.io_read(0x61, 0);
        p.io_write(0x61, (v & !0x02) | 0x01, 0);
        p.io_write(0x43, 0xb0, 0);
        let latch: u32 = 1_193_182 / 20;
        p.io_write(0x42, latch as u8, 0);
        p.io_write(0x42, (latch >> 8) as u8, 0);
        assert_eq!(p.io_read(0x61, 10_000_000) & 0x20, 0);
        assert_eq!(p.io_read(0x61, 49_000_000) & 0x20, 0);
        assert_eq!(p.io_read(0x61, 50_001_000) & 0x20, 0x20);
        // gate low freezes the count
        p.io_write(0x61, 0, 60_000_000);
        let a = p.ch[2].count(60_000_000);
        assert_eq!(a, p.ch[2].count(90_000_000));
        // mode-0 count (MSB read, as quick_pit_calibrate does)
        let mut p = Pit::new();
        p.io_write(0x61, 1, 0);
        p.io_write(0x43, 0xb0, 0);
        p.io_write(0x42, 0xff, 0);
        p.io_write(0x42, 0xff, 0);
        let _lo = p.io_read(0x42, 1_000_000);
        let hi = p.io_read(0x42, 1_000_000);
        // 1 ms = 1193 ticks -> 0xffff - 1193 = 0xfb56
        assert_eq!(hi, 0xfb);
    }
}
