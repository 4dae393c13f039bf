//! How the node stops a workload microVM (docs/guest-init.md, "Stopping a workload"): the
//! image's StopSignal through the init, SIGKILL after a grace period, then power-off. A pure
//! state machine over the monotonic clock (the kernel's vCPU task drives it between exits), so
//! that the policy is host-tested.

use crate::guest_proto::wire::SIGKILL;

/// Grace period between the StopSignal and SIGKILL when the caller gives none (Docker's 10 s).
pub const DEFAULT_GRACE_NS: u64 = 10_000_000_000;
/// After SIGKILL, how long the init gets to report the exit and power off before the node
/// powers the VM off itself (a guest whose init does not answer is not waited for forever).
pub const KILL_GRACE_NS: u64 = 5_000_000_000;
/// Longest grace period a request may ask for (an hour): a longer one is cut to this.
pub const MAX_GRACE_NS: u64 = 3_600_000_000_000;

/// What the vCPU task must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAction {
    /// Send the init a STOP frame (the image's StopSignal).
    SendStop,
    /// Send the init a SIGNAL frame with this number.
    SendSignal(u8),
    /// End the VM now (it has no init to ask, or it did not stop in time).
    PowerOff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// The StopSignal went out; SIGKILL at `kill_at`.
    Asked { kill_at: u64 },
    /// SIGKILL went out; power-off at `off_at`.
    Killed { off_at: u64 },
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPolicy {
    phase: Phase,
}

impl Default for StopPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl StopPolicy {
    pub const fn new() -> Self {
        StopPolicy { phase: Phase::Running }
    }

    /// A stop request at `now` with this grace period. `has_init`: the VM runs catenary-init
    /// (it has the workload channel); without it there is nobody to ask and the VM is powered
    /// off at once. A second request while a stop is under way changes nothing (the first
    /// deadline stands).
    pub fn request(&mut self, now: u64, grace_ns: u64, has_init: bool) -> Option<StopAction> {
        if self.phase != Phase::Running {
            return None;
        }
        if !has_init {
            self.phase = Phase::Off;
            return Some(StopAction::PowerOff);
        }
        self.phase = Phase::Asked { kill_at: now.saturating_add(grace_ns.min(MAX_GRACE_NS)) };
        Some(StopAction::SendStop)
    }

    /// A request to end the VM now (no grace).
    pub fn kill(&mut self) -> Option<StopAction> {
        if self.phase == Phase::Off {
            return None;
        }
        self.phase = Phase::Off;
        Some(StopAction::PowerOff)
    }

    /// The node's requests of one pass of the vCPU loop, in one decision: a kill, else a stop
    /// with its grace period (`stop_grace`), then the owner's power-off deadline if it passed.
    /// An action once decided is never dropped: a kill and a passed deadline in the same pass
    /// power the VM off once (the cluster lease's fence and `workd`'s own enforcement fall on
    /// the same instant by design; overwriting the kill's power-off with the deadline's
    /// "already off" left a VM running past its lease, seen in `cluster_orchd_killed`).
    /// Returns the action and whether the deadline caused it (for the log).
    pub fn apply_requests(&mut self, now: u64, kill: bool, stop_grace: Option<u64>, has_init: bool, deadline_passed: bool) -> (Option<StopAction>, bool) {
        let mut action = if kill {
            self.kill()
        } else if let Some(grace) = stop_grace {
            self.request(now, grace, has_init)
        } else {
            None
        };
        let mut by_deadline = false;
        if deadline_passed {
            if let Some(off) = self.kill() {
                action = Some(off);
                by_deadline = true;
            }
        }
        (action, by_deadline)
    }

    /// What the deadline reached at `now` calls for.
    pub fn poll(&mut self, now: u64) -> Option<StopAction> {
        match self.phase {
            Phase::Asked { kill_at } if now >= kill_at => {
                self.phase = Phase::Killed { off_at: now.saturating_add(KILL_GRACE_NS) };
                Some(StopAction::SendSignal(SIGKILL))
            }
            Phase::Killed { off_at } if now >= off_at => {
                self.phase = Phase::Off;
                Some(StopAction::PowerOff)
            }
            _ => None,
        }
    }

    /// The next deadline, if a stop is under way.
    pub fn deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::Asked { kill_at } => Some(kill_at),
            Phase::Killed { off_at } => Some(off_at),
            Phase::Running | Phase::Off => None,
        }
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: u64 = 1_000_000_000;

    #[test]
    fn stop_signal_then_sigkill_then_power_off() {
        let mut p = StopPolicy::new();
        assert_eq!(p.poll(100 * S), None);
        assert!(!p.stopping());
        assert_eq!(p.request(100 * S, 3 * S, true), Some(StopAction::SendStop));
        assert_eq!(p.request(101 * S, 0, true), None, "a second request must not shorten the grace period");
        assert_eq!(p.deadline(), Some(103 * S));
        assert_eq!(p.poll(103 * S - 1), None);
        assert_eq!(p.poll(103 * S), Some(StopAction::SendSignal(9)));
        assert_eq!(p.poll(103 * S), None);
        assert_eq!(p.deadline(), Some(103 * S + KILL_GRACE_NS));
        assert_eq!(p.poll(103 * S + KILL_GRACE_NS), Some(StopAction::PowerOff));
        assert_eq!(p.poll(u64::MAX), None);
        assert_eq!(p.deadline(), None);
        assert_eq!(p.kill(), None);
    }

    #[test]
    fn without_an_init_or_when_killed_power_off_at_once() {
        let mut p = StopPolicy::new();
        assert_eq!(p.request(5, DEFAULT_GRACE_NS, false), Some(StopAction::PowerOff));
        assert_eq!(p.poll(u64::MAX), None);
        let mut p = StopPolicy::new();
        assert_eq!(p.request(5, DEFAULT_GRACE_NS, true), Some(StopAction::SendStop));
        assert_eq!(p.kill(), Some(StopAction::PowerOff));
        assert_eq!(p.poll(u64::MAX), None);
    }

    #[test]
    fn a_kill_and_a_passed_deadline_in_one_pass_power_off_once() {
        // workd's kill for the lease and the kernel's deadline in the same pass
        let mut p = StopPolicy::new();
        assert_eq!(p.apply_requests(S, true, None, true, true), (Some(StopAction::PowerOff), false));
        assert_eq!(p.apply_requests(S, false, None, true, true), (None, false), "once");
        // the deadline alone, also during a stop under way
        let mut p = StopPolicy::new();
        assert_eq!(p.apply_requests(S, false, None, true, true), (Some(StopAction::PowerOff), true));
        let mut p = StopPolicy::new();
        assert_eq!(p.apply_requests(S, false, Some(10 * S), true, false), (Some(StopAction::SendStop), false));
        assert_eq!(p.apply_requests(2 * S, false, Some(10 * S), true, true), (Some(StopAction::PowerOff), true));
        // a stop and a passed deadline together: off now, not after the grace period
        let mut p = StopPolicy::new();
        assert_eq!(p.apply_requests(S, false, Some(10 * S), true, true), (Some(StopAction::PowerOff), true));
        assert_eq!(p.poll(u64::MAX), None);
    }

    #[test]
    fn grace_is_bounded_and_never_overflows() {
        let mut p = StopPolicy::new();
        p.request(u64::MAX - 1, u64::MAX, true);
        assert_eq!(p.deadline(), Some(u64::MAX));
        assert_eq!(p.poll(u64::MAX), Some(StopAction::SendSignal(9)));
        assert_eq!(p.poll(u64::MAX), Some(StopAction::PowerOff));
        let mut p = StopPolicy::new();
        p.request(0, u64::MAX, true);
        assert_eq!(p.deadline(), Some(MAX_GRACE_NS));
    }
}
