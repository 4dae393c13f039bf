//! Which cluster replicas are healthy where, for rolling updates (docs/orchestration.md, "A
//! workload's spec changes"): what this node reports of its own ([`Health::set_own`], sent
//! as [`Wire::Healthy`] every capacity period and at once when one stops being healthy) and
//! what it keeps of each member's reports ([`Health::on_report`]). Soft state: a report counts
//! only while fresh, never goes through Raft, and is lost on a restart.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::time::Duration;

use crate::raft_codec::{HealthyReplica, Wire, HEALTHY_MAX};

/// A report counts for this many capacity periods after it was made (this node's) or arrived
/// (another's): reports come every period, so two may be lost.
pub const HEALTHY_FRESH_PERIODS: u32 = 3;

#[derive(Default)]
pub(super) struct Health {
    /// This node's healthy replicas as `orchd` last listed them, and when (`None`: not told
    /// yet).
    own: Option<(Vec<HealthyReplica>, Duration)>,
    /// Each member's last report, and when it arrived.
    members: BTreeMap<usize, (Vec<HealthyReplica>, Duration)>,
    /// Reports due: the period came (1), or a replica reported healthy no longer is (2: sent
    /// at once and on the next tick, in case one datagram is lost).
    due: u8,
}

impl Health {
    /// This node's healthy replicas at `now`; one that no longer is makes a report due at once.
    pub(super) fn set_own(&mut self, now: Duration, replicas: Vec<HealthyReplica>) {
        if self.own.as_ref().is_some_and(|(h, _)| h.iter().any(|x| !replicas.contains(x))) {
            self.due = 2;
        }
        self.own = Some((replicas, now));
    }

    pub(super) fn on_report(&mut self, from: usize, replicas: Vec<HealthyReplica>, now: Duration) {
        self.members.insert(from, (replicas, now));
    }

    /// The capacity period came: a report is due.
    pub(super) fn period(&mut self) {
        self.due = self.due.max(1);
    }

    /// The report to send every other member now, if one is due and this node's own list is
    /// fresh (`fresh`: [`HEALTHY_FRESH_PERIODS`] capacity periods).
    pub(super) fn due_report(&mut self, now: Duration, fresh: Duration) -> Option<Wire> {
        if self.due == 0 {
            return None;
        }
        self.due -= 1;
        let (h, _) = self.own.as_ref().filter(|(_, at)| now.saturating_sub(*at) <= fresh)?;
        Some(Wire::Healthy { replicas: h[..h.len().min(HEALTHY_MAX)].to_vec() })
    }

    /// Whether this node's own report (`member` `None`) or member `member`'s, if fresh, lists
    /// the replica tagged `tag`, created from `spec` (`None`: from any spec).
    pub(super) fn lists(&self, member: Option<usize>, tag: [u8; 8], spec: Option<&[u8; 32]>, now: Duration, fresh: Duration) -> bool {
        let report = match member {
            None => self.own.as_ref(),
            Some(m) => self.members.get(&m),
        };
        report.is_some_and(|(h, at)| now.saturating_sub(*at) <= fresh && h.iter().any(|x| x.tag == tag && spec.is_none_or(|s| x.spec == *s)))
    }
}
