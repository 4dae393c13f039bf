//! MC146818 CMOS RTC at 0x70 (index, bit 7 = NMI mask) / 0x71 (data).
//!
//! Time comes from a wall clock given at VM creation (`unix seconds at now_ns = 0`) plus
//! `now_ns`. Registers A–D: A reports UIP during the last 244 µs of each second and keeps the
//! guest's divider/rate bits; B selects BCD/binary (DM, bit 2) and 12/24 h (bit 1); C reads as
//! 0 (no RTC interrupts are generated — Linux does not need them); D reports VRT (battery OK).
//! Guest writes to the time registers set an offset applied to later reads. Bytes 0x0e..0x7f
//! are plain CMOS RAM.

#[derive(Debug, Clone)]
pub struct Rtc {
    index: u8,
    pub nmi_masked: bool,
    ram: [u8; 128],
    base_unix: u64,
    /// Signed seconds the guest moved the clock by.
    offset: i64,
}

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}
fn from_bcd(v: u8) -> u8 {
    (v >> 4).wrapping_mul(10).wrapping_add(v & 0xf)
}

impl Rtc {
    pub fn new(base_unix: u64) -> Self {
        let mut ram = [0u8; 128];
        ram[0x0a] = 0x26; // 32.768 kHz divider, 1024 Hz rate
        ram[0x0b] = 0x02; // 24 h, BCD
        ram[0x0d] = 0x80; // VRT
        Rtc { index: 0, nmi_masked: false, ram, base_unix, offset: 0 }
    }

    pub fn handles(port: u16) -> bool {
        matches!(port, 0x70 | 0x71)
    }

    fn now_secs(&self, now_ns: u64) -> i64 {
        (self.base_unix as i64)
            .saturating_add((now_ns / 1_000_000_000) as i64)
            .saturating_add(self.offset)
    }

    fn enc(&self, v: u8) -> u8 {
        if self.ram[0x0b] & 0x04 != 0 {
            v
        } else {
            to_bcd(v)
        }
    }
    fn dec(&self, v: u8) -> u8 {
        if self.ram[0x0b] & 0x04 != 0 {
            v
        } else {
            from_bcd(v)
        }
    }

    fn fields(&self, now_ns: u64) -> [u8; 8] {
        // sec, min, hour, wday(1-7), mday, month, year%100, century
        let t = self.now_secs(now_ns);
        let days = t.div_euclid(86_400);
        let sod = t.rem_euclid(86_400);
        let (y, m, d) = civil(days);
        let wday = ((days + 4).rem_euclid(7) + 1) as u8; // 1970-01-01 was a Thursday; Sunday = 1
        let y = y.clamp(0, 9999);
        [
            (sod % 60) as u8,
            ((sod / 60) % 60) as u8,
            (sod / 3600) as u8,
            wday,
            d as u8,
            m as u8,
            (y % 100) as u8,
            (y / 100) as u8,
        ]
    }

    fn read_reg(&mut self, r: u8, now_ns: u64) -> u8 {
        let f = self.fields(now_ns);
        match r {
            0x00 => self.enc(f[0]),
            0x02 => self.enc(f[1]),
            0x04 => {
                let h = f[2];
                if self.ram[0x0b] & 0x02 != 0 {
                    self.enc(h)
                } else {
                    let pm = h >= 12;
                    let h12 = match h % 12 {
                        0 => 12,
                        x => x,
                    };
                    self.enc(h12) | if pm { 0x80 } else { 0 }
                }
            }
            0x06 => self.enc(f[3]),
            0x07 => self.enc(f[4]),
            0x08 => self.enc(f[5]),
            0x09 => self.enc(f[6]),
            0x32 => self.enc(f[7]),
            0x0a => {
                let uip = now_ns % 1_000_000_000 >= 1_000_000_000 - 244_000;
                (self.ram[0x0a] & 0x7f) | if uip { 0x80 } else { 0 }
            }
            0x0c => 0,
            0x0d => 0x80,
            r => self.ram.get(r as usize).copied().unwrap_or(0xff),
        }
    }

    fn write_time(&mut self, r: u8, v: u8, now_ns: u64) {
        let mut f = self.fields(now_ns);
        let val = if r == 0x04 { self.dec(v & 0x7f) } else { self.dec(v) };
        match r {
            0x00 => f[0] = val.min(59),
            0x02 => f[1] = val.min(59),
            0x04 => {
                let mut h = val;
                if self.ram[0x0b] & 0x02 == 0 {
                    h %= 12;
                    if v & 0x80 != 0 {
                        h += 12;
                    }
                }
                f[2] = h.min(23);
            }
            0x07 => f[4] = val.clamp(1, 31),
            0x08 => f[5] = val.clamp(1, 12),
            0x09 => f[6] = val.min(99),
            0x32 => f[7] = val.min(99),
            _ => return,
        }
        let year = f[7] as i64 * 100 + f[6] as i64;
        let days = days_from_civil(year, f[5] as u32, f[4] as u32);
        let t = days * 86_400 + f[2] as i64 * 3600 + f[1] as i64 * 60 + f[0] as i64;
        self.offset = self.offset.saturating_add(t.saturating_sub(self.now_secs(now_ns)));
    }

    pub fn io_read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            0x71 => self.read_reg(self.index, now_ns),
            _ => 0xff,
        }
    }

    pub fn io_write(&mut self, port: u16, v: u8, now_ns: u64) {
        match port {
            0x70 => {
                self.index = v & 0x7f;
                self.nmi_masked = v & 0x80 != 0;
            }
            0x71 => match self.index {
                0x00 | 0x02 | 0x04 | 0x07 | 0x08 | 0x09 | 0x32 => self.write_time(self.index, v, now_ns),
                0x0a => self.ram[0x0a] = v & 0x7f,
                0x0b => self.ram[0x0b] = v,
                0x0c | 0x0d | 0x06 => {}
                i => {
                    if let Some(b) = self.ram.get_mut(i as usize) {
                        *b = v;
                    }
                }
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(r: &mut Rtc, idx: u8, now: u64) -> u8 {
        r.io_write(0x70, idx, now);
        r.io_read(0x71, now)
    }

    #[test]
    fn bcd_and_binary() {
        // 2024-02-29 13:45:56 UTC = 1709214356
        let mut r = Rtc::new(1_709_214_356);
        assert_eq!(rd(&mut r, 0, 0), 0x56);
        assert_eq!(rd(&mut r, 2, 0), 0x45);
        assert_eq!(rd(&mut r, 4, 0), 0x13);
        assert_eq!(rd(&mut r, 7, 0), 0x29);
        assert_eq!(rd(&mut r, 8, 0), 0x02);
        assert_eq!(rd(&mut r, 9, 0), 0x24);
        assert_eq!(rd(&mut r, 0x32, 0), 0x20);
        assert_eq!(rd(&mut r, 6, 0), 5); // Thursday
        assert_eq!(rd(&mut r, 0, 5_000_000_000), 0x01);
        // binary mode
        r.io_write(0x70, 0x0b, 0);
        r.io_write(0x71, 0x06, 0);
        assert_eq!(rd(&mut r, 4, 0), 13);
        // 12 h mode BCD: 1 PM
        r.io_write(0x70, 0x0b, 0);
        r.io_write(0x71, 0x00, 0);
        assert_eq!(rd(&mut r, 4, 0), 0x81);
        assert_eq!(rd(&mut r, 0x0d, 0), 0x80);
        // UIP near the end of a second
        assert_eq!(rd(&mut r, 0x0a, 999_900_000) & 0x80, 0x80);
        assert_eq!(rd(&mut r, 0x0a, 500_000_000) & 0x80, 0);
        // NMI mask bit
        r.io_write(0x70, 0x8f, 0);
        assert!(r.nmi_masked);
        // CMOS RAM
        r.io_write(0x71, 0x42, 0);
        assert_eq!(r.io_read(0x71, 0), 0x42);
    }

    #[test]
    fn set_time() {
        let mut r = Rtc::new(0);
        r.io_write(0x70, 0x09, 0);
        r.io_write(0x71, 0x99, 0); // year 99 (century 19)
        assert_eq!(rd(&mut r, 9, 0), 0x99);
        assert_eq!(rd(&mut r, 0x32, 0), 0x19);
        assert_eq!(civil(days_from_civil(2000, 3, 1)), (2000, 3, 1));
    }
}
