//! The workload's health check (docs/guest-init.md "Health check"): when it runs and what its
//! results mean. `main.rs` spawns the check's process and reports; the decisions are here,
//! plain and host-tested.
//!
//! The rules (Docker's `HEALTHCHECK`, with the kill Swarm and Kubernetes' liveness probe add):
//! - the first run is `interval` after the workload started, each next one `interval` after
//!   the previous one ended; one run at a time;
//! - a run passes when it exits 0 within `timeout` (a run still going at `timeout` is killed
//!   and fails);
//! - the first pass makes the workload healthy (the HEALTHY frame, sent again at every pass in
//!   case one is lost; the node keeps the first); it stays healthy for the run;
//! - a failure ends with `retries` failures in a row: the workload is unhealthy and the init
//!   kills it (its restart policy decides what next). Failures that end within
//!   `start_period` of the start do not count, so a slow start is not killed; a pass resets the
//!   count.

use catenary_guest_proto::config::HealthConfig;

/// What a finished run means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed. `first`: the first pass of the run (report it); `after`: the failures in a
    /// row it ends.
    Passed { first: bool, after: u32 },
    /// It failed; `in_a_row` failures now count (0 within the start period, which `counted`
    /// says).
    Failed { in_a_row: u32, counted: bool },
    /// It failed the `retries`-th time in a row: kill the workload.
    Unhealthy { in_a_row: u32 },
}

/// The check's state for one run of the workload.
#[derive(Clone, Debug)]
pub struct Checker {
    interval_ms: u64,
    timeout_ms: u64,
    start_period_ms: u64,
    retries: u32,
    in_a_row: u32,
    passed: bool,
}

impl Checker {
    pub fn new(cfg: &HealthConfig) -> Checker {
        Checker {
            interval_ms: u64::from(cfg.interval_secs) * 1000,
            timeout_ms: u64::from(cfg.timeout_secs) * 1000,
            start_period_ms: u64::from(cfg.start_period_secs) * 1000,
            retries: cfg.retries.max(1),
            in_a_row: 0,
            passed: false,
        }
    }

    /// The time between runs (and from the workload's start to the first).
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// How long a run may take before it is killed.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// A run ended at `ended_ms` (from the workload's start): `ok` if it exited 0 in time.
    pub fn ended(&mut self, ended_ms: u64, ok: bool) -> Outcome {
        if ok {
            let first = !self.passed;
            let after = self.in_a_row;
            self.passed = true;
            self.in_a_row = 0;
            return Outcome::Passed { first, after };
        }
        if ended_ms < self.start_period_ms {
            return Outcome::Failed { in_a_row: self.in_a_row, counted: false };
        }
        self.in_a_row += 1;
        if self.in_a_row >= self.retries {
            Outcome::Unhealthy { in_a_row: self.in_a_row }
        } else {
            Outcome::Failed { in_a_row: self.in_a_row, counted: true }
        }
    }

    /// Whether a run has passed.
    pub fn passed(&self) -> bool {
        self.passed
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(retries: u32, start_period_secs: u32) -> HealthConfig {
        HealthConfig { cmd: vec!["true".into()], interval_secs: 2, timeout_secs: 1, retries, start_period_secs }
    }

    #[test]
    fn schedule() {
        let c = Checker::new(&cfg(3, 0));
        assert_eq!((c.interval_ms(), c.timeout_ms(), c.retries()), (2000, 1000, 3));
    }

    #[test]
    fn first_pass_is_reported_once_and_retries_failures_in_a_row_kill() {
        let mut c = Checker::new(&cfg(3, 0));
        assert_eq!(c.ended(2000, false), Outcome::Failed { in_a_row: 1, counted: true });
        assert!(!c.passed());
        assert_eq!(c.ended(4000, true), Outcome::Passed { first: true, after: 1 });
        assert_eq!(c.ended(6000, true), Outcome::Passed { first: false, after: 0 });
        assert_eq!(c.ended(8000, false), Outcome::Failed { in_a_row: 1, counted: true });
        assert_eq!(c.ended(10000, false), Outcome::Failed { in_a_row: 2, counted: true });
        // a pass resets the count
        assert_eq!(c.ended(12000, true), Outcome::Passed { first: false, after: 2 });
        assert_eq!(c.ended(14000, false), Outcome::Failed { in_a_row: 1, counted: true });
        assert_eq!(c.ended(16000, false), Outcome::Failed { in_a_row: 2, counted: true });
        assert_eq!(c.ended(18000, false), Outcome::Unhealthy { in_a_row: 3 });
        assert!(c.passed());
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut c = Checker::new(&cfg(1, 10));
        assert_eq!(c.ended(2000, false), Outcome::Failed { in_a_row: 0, counted: false });
        assert_eq!(c.ended(9999, false), Outcome::Failed { in_a_row: 0, counted: false });
        assert_eq!(c.ended(10000, false), Outcome::Unhealthy { in_a_row: 1 });
        // a pass in the start period makes it healthy at once
        let mut c = Checker::new(&cfg(1, 10));
        assert_eq!(c.ended(2000, true), Outcome::Passed { first: true, after: 0 });
    }
}
