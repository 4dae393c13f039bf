//! Leases and releases: until when a node may run what it is assigned (check-quorum contact,
//! the grants a leader sends), and the applied counts that tell the leader a replica stopped.

use alloc::vec::Vec;
use core::time::Duration;

use raftbare::NodeId;

use super::{Replica, ReplicaId};

impl Replica {
    /// Leader only: the latest instant `M` such that a majority of the voters (the leader
    /// included) acknowledged an AppendEntries the leader sent at or after `M` — during a
    /// configuration change, a majority of the old voters and one of the new (as an election
    /// needs). No other leader can have been elected before a majority stopped hearing from
    /// this one, so this leader held its majority at least until `M`.
    pub fn majority_contact(&self, now: Duration) -> Option<Duration> {
        if !self.is_leader() {
            return None;
        }
        let c = self.node.config();
        let contact = |set: &alloc::collections::BTreeSet<NodeId>| -> Option<Duration> {
            if set.is_empty() {
                return Some(now);
            }
            let need = set.len() / 2 + 1;
            let mut acks: Vec<Duration> = set.iter().filter_map(|v| if v.get() == self.id { Some(now) } else { self.follower_acks.get(&v.get()).copied() }).collect();
            if acks.len() < need {
                return None;
            }
            acks.sort_unstable_by(|a, b| b.cmp(a));
            Some(acks[need - 1])
        };
        // (Counting a majority of the union of both configurations, as before, lost the
        // lease for a moment whenever a rejoining node's new id entered the configuration.)
        Some(contact(&c.voters)?.min(contact(&c.new_voters)?))
    }

    /// Until when this node may run what the desired state assigns it (its *lease*), given a
    /// lease length. A follower's lease starts when it received an AppendEntries from a leader
    /// that had heard from a majority within the last `grant_window` (the leader stops granting
    /// once it has not: check-quorum); the leader's starts at its [`Replica::majority_contact`].
    /// A node cut off from the majority stops renewing and its lease runs out; whoever then
    /// places its workloads elsewhere waits the lease out first ([`crate::reconcile`]).
    pub fn lease_until(&self, now: Duration, lease: Duration) -> Option<Duration> {
        // A grant received as a follower holds to its end whatever this node became since: it
        // knows no less as a candidate or a new leader than when it was granted, and whoever
        // moves its replicas waits that grant out. (A new leader dropped it until an entry of
        // its term committed, and every leader change stopped the new leader's replicas.)
        let granted = self.last_grant.map(|(_, t)| t + lease);
        if self.is_leader() && self.committed_own_term() {
            return self.majority_contact(now).map(|m| m + lease).max(granted);
        }
        granted
    }

    /// Leader: an entry of its own term is committed, so its commit index (and what it has
    /// applied) covers everything the cluster ever committed. Until then a new leader's commit
    /// index can be behind the cluster's (after a restart it starts at 0): it neither runs
    /// its assignments nor grants leases (the simulator found the overlap, seed 9745).
    pub(super) fn committed_own_term(&self) -> bool {
        let c = self.node.commit_index();
        self.node.log().entries().get_term(c).is_some_and(|t| t == self.node.current_term())
    }

    /// When this replica became the leader of its current term.
    pub fn leader_since(&self) -> Option<Duration> {
        self.became_leader.filter(|(t, _)| *t == self.term() && self.is_leader()).map(|(_, at)| at)
    }

    /// Leader only: when this leader last sent `peer` a lease grant.
    pub fn last_grant_sent(&self, peer: ReplicaId) -> Option<Duration> {
        self.grants_sent.get(&peer).copied()
    }

    /// Leader only: the highest applied count `peer` reported in this term (see
    /// [`Envelope::applied`]).
    pub fn peer_applied(&self, peer: ReplicaId) -> Option<u64> {
        if peer == self.id {
            return Some(self.reported_applied());
        }
        self.peer_applied.get(&peer).copied()
    }

    /// See [`ReplicaConfig::local_host`].
    pub fn set_local_host(&mut self, host: Option<crate::identity::NodeKey>) {
        self.cfg.local_host = host;
    }

    /// The local service looked at what runs on this node: `active` are the replicas it still
    /// runs or is stopping, as it saw them after this replica had applied everything it has
    /// applied now (it must not start a replica its state no longer assigns here after that).
    pub fn set_local_runs(&mut self, active: alloc::collections::BTreeSet<(alloc::string::String, u32)>) {
        self.local_runs = Some((self.state.applied, active));
    }

    /// The applied count this node reports ([`Envelope::applied`]): the state's, but with a
    /// [`ReplicaConfig::local_host`], below the `Unassign` of every replica of this node the
    /// local service has not yet confirmed stopped ([`Replica::set_local_runs`] after it
    /// applied it), so the leader does not release the replica while it still runs here
    /// (docs/orchestration.md, "Releases"). Bounded: a release stays in the state only until
    /// `Released` commits, which the leader proposes after the lease rule at the latest.
    pub fn reported_applied(&self) -> u64 {
        let applied = self.state.applied;
        let Some(me) = self.cfg.local_host else { return applied };
        let stopped = |k: &(alloc::string::String, u32), at: u64| self.local_runs.as_ref().is_some_and(|(seen, active)| *seen >= at && !active.contains(k));
        self.state.releases.iter().filter(|(k, r)| r.host == me && !stopped(k, r.at)).map(|(_, r)| r.at.saturating_sub(1)).fold(applied, u64::min)
    }

    /// Leader only: when this leader, in its current term, applied the `Unassign` whose
    /// [`crate::desired::Release::at`] is `at` (None if it was applied before this term).
    pub fn release_committed_at(&self, at: u64) -> Option<Duration> {
        self.release_times.get(&at).copied()
    }

    /// Leader only: when `peer` last acknowledged (the send time of the acknowledged call).
    pub fn last_ack(&self, peer: ReplicaId) -> Option<Duration> {
        self.follower_acks.get(&peer).copied()
    }
}
