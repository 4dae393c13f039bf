//! The node's wall clock: the CMOS RTC read once at boot plus the monotonic clock since. The
//! fabric needs it for the TAI64N timestamps of handshake initiations: a responder accepts an
//! initiation only if its timestamp is later than the last one it saw from that peer, so a
//! rebooted node must not restart its timestamps from the epoch (it could not reconnect until
//! the old session's timestamps were passed) — with real time it reconnects at once.
//!
//! The RTC has 1 s resolution, so the time at boot is up to 1 s early: a node that reboots
//! and initiates within the same second as its last initiation before the reboot is refused
//! until that second has passed (its retransmission, 5 s later, is accepted).

/// The raw RTC registers (as `catenary_arch::rtc::CmosTime` reads them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmos {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    pub century: u8,
    pub status_b: u8,
}

/// Status register B: binary (not BCD) values.
const B_BINARY: u8 = 0x04;
/// Status register B: 24-hour mode.
const B_24H: u8 = 0x02;

/// Why the RTC's registers are not a usable time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtcError {
    /// A field is not valid BCD.
    BadBcd,
    /// A field is out of range (second 60+, month 13, day 32, February 30, …).
    OutOfRange,
    /// Before 2020: the battery died or the clock was never set.
    Unset,
}

fn bcd(v: u8) -> Result<u8, RtcError> {
    let (hi, lo) = (v >> 4, v & 0x0f);
    if hi > 9 || lo > 9 {
        return Err(RtcError::BadBcd);
    }
    Ok(hi * 10 + lo)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

impl Cmos {
    /// Seconds since the Unix epoch. The century register is used when it holds 19–29,
    /// else the 21st century is assumed.
    pub fn unix_seconds(&self) -> Result<u64, RtcError> {
        let binary = self.status_b & B_BINARY != 0;
        let conv = |v: u8| if binary { Ok(v) } else { bcd(v) };
        let pm = self.hours & 0x80 != 0;
        let mut hour = conv(self.hours & 0x7f)?;
        if self.status_b & B_24H == 0 {
            // 12-hour mode: 12 AM is 0 h, 12 PM is 12 h.
            if !(1..=12).contains(&hour) {
                return Err(RtcError::OutOfRange);
            }
            hour = (hour % 12) + if pm { 12 } else { 0 };
        }
        let (sec, min) = (conv(self.seconds)?, conv(self.minutes)?);
        let (day, month, yy) = (conv(self.day)?, conv(self.month)?, conv(self.year)?);
        let century = conv(self.century).ok().filter(|c| (19..=29).contains(c)).unwrap_or(20);
        let year = i64::from(century) * 100 + i64::from(yy);
        if sec > 59 || min > 59 || hour > 23 || yy > 99 || !(1..=12).contains(&month) {
            return Err(RtcError::OutOfRange);
        }
        if day == 0 || u32::from(day) > days_in_month(year, u32::from(month)) {
            return Err(RtcError::OutOfRange);
        }
        if year < 2020 {
            return Err(RtcError::Unset);
        }
        let days = days_from_civil(year, u32::from(month), u32::from(day));
        let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec);
        u64::try_from(secs).map_err(|_| RtcError::OutOfRange)
    }
}

/// Unix seconds at the monotonic clock's origin (boot), given a clock reading `unix` taken
/// `uptime_ns` after the origin.
pub fn unix_at_origin(unix: u64, uptime_ns: u64) -> u64 {
    unix.saturating_sub(uptime_ns / 1_000_000_000)
}
