//! The guest's TSC as a function of the node's clock.
//!
//! Every guest runs with the TSC offset that makes its TSC count from the node's boot
//! (`catenary_arch::time::guest_tsc_offset`), the instant `now_ns` counts from, at the node's
//! calibrated TSC rate. So guest TSC = `now_ns` × `hz` / 10⁹: the device models turn a
//! TSC-deadline the guest wrote into a time on the node's clock with [`GuestTsc::ns_at`], and
//! answer an intercepted RDMSR 0x10 with [`GuestTsc::at`].
//!
//! The rate is the exact one (Hz), not the kHz the guest is told (CPUID 0x4000_0010,
//! `tsc_early_khz=`): a deadline is an absolute TSC value, and converting it at a rate rounded
//! down to whole kHz (up to 999 Hz less) would put it off by up to 0.38 µs per second of node
//! uptime at 2.6 GHz (1.09 ms an hour in at 2,596,136,789 Hz).

/// The guest TSC's rate; 0 = unknown (deadlines never fire, RDMSR 0x10 reads 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestTsc {
    pub hz: u64,
}

impl GuestTsc {
    pub const fn new(hz: u64) -> Self {
        GuestTsc { hz }
    }

    /// The guest's TSC at node time `now_ns`.
    pub fn at(self, now_ns: u64) -> u64 {
        u64::try_from(u128::from(now_ns) * u128::from(self.hz) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// The first node time at which the guest's TSC has reached `tsc` (rounded up, so a timer
    /// armed for it never fires early); `None` if the rate is unknown or the time is past
    /// `u64::MAX` ns.
    pub fn ns_at(self, tsc: u64) -> Option<u64> {
        if self.hz == 0 {
            return None;
        }
        let hz = u128::from(self.hz);
        u64::try_from((u128::from(tsc) * 1_000_000_000).div_ceil(hz)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_reached_exactly_when_the_guest_tsc_gets_there() {
        // A rate that is not a whole number of kHz: what calibration gives.
        let c = GuestTsc::new(2_596_136_789);
        for tsc in [0, 1, 2_596_136, 2_596_136_789, 9_346_092_440_400, u64::MAX / 1_000_000_000] {
            let t = c.ns_at(tsc).unwrap();
            assert!(c.at(t) >= tsc, "at {t} ns the TSC {} is still short of {tsc}", c.at(t));
            if t > 0 {
                assert!(c.at(t - 1) < tsc, "{tsc} was reached before {t} ns");
            }
        }
    }

    #[test]
    fn an_hour_of_uptime_does_not_move_a_deadline() {
        // The guest computes deadline = its TSC now + 1 ms of ticks; the node must see the
        // deadline 1 ms after now, however long it has been up. (With the kHz rate, an hour in,
        // it was 1.09 ms late for 2,596,136,789 Hz.)
        let c = GuestTsc::new(2_596_136_789);
        let now = 3_600_000_000_000u64;
        let deadline = c.at(now) + c.hz / 1000;
        let due = c.ns_at(deadline).unwrap();
        assert!((due as i64 - (now + 1_000_000) as i64).abs() <= 1, "due {} ns after now", due - now);
    }

    #[test]
    fn unknown_rate_never_fires() {
        assert_eq!(GuestTsc::default().ns_at(5), None);
        assert_eq!(GuestTsc::default().at(5), 0);
    }
}
