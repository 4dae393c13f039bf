//! The restart policy's decisions. Deterministic: the clock is an argument.

use crate::spec::RestartPolicy;
use crate::status::ExitStatus;

/// The first restart waits this long; each restart in a row doubles it, up to the maximum.
pub const BACKOFF_MIN_MS: u64 = 100;
pub const BACKOFF_MAX_MS: u64 = 30_000;
/// A run that lasted this long was healthy: the next failure starts the backoff over.
pub const HEALTHY_MS: u64 = 10_000;

/// The delay before restart number `n` in a row (1 = the first): 100 ms · 2^(n−1), at most 30 s.
pub const fn backoff_ms(n: u32) -> u64 {
    let shift = if n == 0 { 0 } else { n - 1 };
    if shift >= 16 {
        return BACKOFF_MAX_MS;
    }
    let d = BACKOFF_MIN_MS << shift;
    if d > BACKOFF_MAX_MS { BACKOFF_MAX_MS } else { d }
}

/// What to do when a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it ended.
    Stay,
    /// Start it again at `at_ms` (the clock's time); it will be restart number `n` in a row.
    Restart { at_ms: u64, n: u32 },
}

/// Restart bookkeeping of one workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restarts {
    /// Restarts since the last `start` request (what the status reports).
    pub total: u32,
    /// Restarts in a row (the backoff exponent; reset by a healthy run).
    pub streak: u32,
}

impl Restarts {
    /// A run that lasted `ran_ms` ended with `exit` at `now_ms`; `stopped`: a stop request
    /// ended it (never restarted).
    pub fn decide(&mut self, policy: RestartPolicy, exit: ExitStatus, stopped: bool, ran_ms: u64, now_ms: u64) -> Decision {
        if stopped {
            return Decision::Stay;
        }
        if ran_ms >= HEALTHY_MS {
            self.streak = 0;
        }
        let again = match policy {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            // the limit counts failures in a row, as Docker's on-failure:N counts restarts
            RestartPolicy::OnFailure { limit } => !exit.success() && self.streak < limit,
        };
        if !again || exit == ExitStatus::CreateFailed && policy != RestartPolicy::Always {
            return Decision::Stay;
        }
        self.streak = self.streak.saturating_add(1);
        self.total = self.total.saturating_add(1);
        Decision::Restart { at_ms: now_ms.saturating_add(backoff_ms(self.streak)), n: self.streak }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!([1, 2, 3, 4].map(backoff_ms), [100, 200, 400, 800]);
        assert_eq!(backoff_ms(0), 100);
        assert_eq!(backoff_ms(9), 25_600);
        assert_eq!(backoff_ms(10), 30_000);
        assert_eq!(backoff_ms(u32::MAX), 30_000);
    }

    #[test]
    fn on_failure_limit_counts_failures_in_a_row() {
        let mut r = Restarts::default();
        let p = RestartPolicy::OnFailure { limit: 2 };
        assert_eq!(r.decide(p, ExitStatus::Code(1), false, 50, 1000), Decision::Restart { at_ms: 1100, n: 1 });
        assert_eq!(r.decide(p, ExitStatus::Signal(9), false, 50, 2000), Decision::Restart { at_ms: 2200, n: 2 });
        assert_eq!(r.decide(p, ExitStatus::Code(1), false, 50, 3000), Decision::Stay);
        assert_eq!(r.total, 2);
        // success ends it
        let mut r = Restarts::default();
        assert_eq!(r.decide(p, ExitStatus::Code(0), false, 50, 0), Decision::Stay);
        // a healthy run resets the streak, not the total
        let mut r = Restarts { total: 5, streak: 2 };
        assert_eq!(r.decide(p, ExitStatus::Code(2), false, HEALTHY_MS, 0), Decision::Restart { at_ms: 100, n: 1 });
        assert_eq!(r.total, 6);
    }

    #[test]
    fn no_always_and_stop() {
        let mut r = Restarts::default();
        assert_eq!(r.decide(RestartPolicy::No, ExitStatus::Code(1), false, 0, 0), Decision::Stay);
        assert_eq!(r.decide(RestartPolicy::Always, ExitStatus::Code(0), false, 0, 0), Decision::Restart { at_ms: 100, n: 1 });
        assert_eq!(r.decide(RestartPolicy::Always, ExitStatus::Code(0), true, 0, 0), Decision::Stay);
        assert_eq!(r.decide(RestartPolicy::OnFailure { limit: 9 }, ExitStatus::PoweredOff, true, 0, 0), Decision::Stay);
        // a microVM the kernel refused is not retried unless the policy is `always`
        assert_eq!(r.decide(RestartPolicy::OnFailure { limit: 9 }, ExitStatus::CreateFailed, false, 0, 0), Decision::Stay);
        // the clock saturates
        assert_eq!(Restarts::default().decide(RestartPolicy::Always, ExitStatus::Crashed, false, 0, u64::MAX), Decision::Restart { at_ms: u64::MAX, n: 1 });
    }
}
