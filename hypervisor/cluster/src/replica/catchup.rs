//! The catch-up pull: a node that has heard no leader for a while takes the committed state
//! from any member it can hear (docs/orchestration.md, "Admitted again").
//!
//! Why: a node's fabric follows its own committed state. A node N that applied
//! `RemoveNode(K)` and then missed `AdmitNode(K)` (down, cut off or slow meanwhile) drops
//! every datagram from K (`netd` dropped the peer). Should K, admitted again, lead, N never
//! hears its AppendEntries, and the members that do hear K refuse N's pre-votes: N would stay
//! behind for as long as K leads. So N asks the others, one at a time, for their state; a
//! member whose applied index is ahead answers with that state as a snapshot, and once N has
//! applied the admission its fabric lets K in and Raft goes on as usual.
//!
//! Why it is safe: entries at or below a node's applied index are committed, and a committed
//! prefix is the same on every node (state machine safety), so that prefix's state and
//! configuration are what any leader would eventually give N. Installing it is Raft's own
//! InstallSnapshot rule (raftbare's `handle_snapshot_installed`: keep the entries after it if
//! the log holds its last position, otherwise drop the log), and it never touches N's term or
//! vote, never counts as hearing a leader (no lease, no pre-vote refusal) and is refused by a
//! leader. The commit index is then the snapshot's position, as a restart from that storage
//! would have it (raftbare's `Node::restart`), which is what is done (a restart's election
//! timer with it). Bounded: one small request per election timeout, to one peer in turn; a member
//! answers a requester at most once per `election_min`, only while it is not the leader and is
//! ahead; the answer travels through the same chunked transfer as a leader's snapshot (its
//! chunks marked pulled), into the node's one assembly buffer.

use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{LogEntries, LogIndex, LogPosition, Message, MessageHeader, MessageSeqNo, Node, NodeId};

use super::{Envelope, Replica, ReplicaId, Snapshot};

/// Requesters a member remembers answering (the oldest is forgotten first).
pub(super) const ANSWERED_KEPT: usize = 64;

/// What the catch-up pull sends ([`Replica::take_catchup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // a few at a time, each sent at once: boxing buys nothing
pub enum Catchup {
    /// Ask member `to` for its state: `crate::raft_codec::Wire::Pull`.
    Ask { from: ReplicaId, to: ReplicaId, applied: u64 },
    /// The answer: this node's state as a snapshot at its applied index, with an empty
    /// AppendEntries call after it that only carries the position (the receiver's core never
    /// sees it). Sent as chunks marked pulled ([`crate::snapshot::SnapshotSender::pulled_datagrams`]),
    /// which may send an older snapshot it is still sending (pinned) if that is past
    /// `asker_has`, what the asker said it applied or committed.
    Answer { env: Envelope, asker_has: u64 },
    /// Ask member `to` whether its committed state at `position` has `digest`
    /// (`crate::raft_codec::Wire::Vouch`; [`super::vouch`]).
    Vouch { from: ReplicaId, to: ReplicaId, position: LogPosition, digest: [u8; 32] },
    /// The answer (`crate::raft_codec::Wire::Vouched`), with the index the member applied.
    Vouched { from: ReplicaId, to: ReplicaId, position: LogPosition, digest: [u8; 32], verdict: super::Verdict, applied: u64 },
}

impl Replica {
    /// On an election timeout of a node that is not the leader: once it has heard no leader
    /// for [`super::ReplicaConfig::catch_up_after`], ask the next peer of its configuration.
    pub(super) fn maybe_pull(&mut self, now: Duration) {
        if self.is_leader() {
            return;
        }
        // A pulled state waiting for its vouchers ([`super::vouch`]): no new pull meanwhile.
        if self.pending_pull_turn(now) {
            return;
        }
        let quiet_since = self.leader_heard.map_or(self.started, |t| t.max(self.started));
        if now.saturating_sub(quiet_since) < self.cfg.catch_up_after {
            return;
        }
        // A member with no configuration yet (restarted without storage: an empty log) asks
        // the members it boots with, by index: any generation of a member answers (`orchd`
        // takes a pull addressed to its index; generation 0 here). Otherwise its peers.
        let me = super::member_of(self.id);
        let mut peers: Vec<ReplicaId> = self.node.peers().map(|p| p.get()).collect();
        if peers.is_empty() {
            peers = (0..self.cfg.members.len()).filter(|m| *m != me).map(|m| m as ReplicaId).collect();
        }
        if peers.is_empty() {
            return;
        }
        // While a member's answer is arriving, ask it again (it re-sends what is missing, from
        // the same snapshot), not the next one, whose answer would start another transfer.
        let to = match (self.pull_next.take(), self.pull_source) {
            // a member that said the last pulled state is older than its snapshot
            (Some(p), _) => p,
            (None, Some((p, t))) if now.saturating_sub(t) < self.cfg.catch_up_after => p,
            _ => {
                let p = peers[self.pull_turn % peers.len()];
                self.pull_turn = self.pull_turn.wrapping_add(1);
                p
            }
        };
        // what an answer must pass to be installed ([`Replica::install_pulled`]): a member only
        // as far along as this node's commit index would send its state for nothing
        let applied = self.applied_index.max(self.commit_index());
        self.catchup.push(Catchup::Ask { from: self.id, to, applied });
    }

    /// Member `from` has applied `applied` entries and asks for this node's state.
    pub fn handle_pull(&mut self, now: Duration, from: ReplicaId, applied: u64) {
        // A leader brings its followers up to date itself (and its sender is busy with its own
        // snapshots); nothing to give a node as far along.
        if self.is_leader() || from == self.id || self.applied_index <= applied {
            return;
        }
        // Only to a member this node's state admits (a file member also before the cluster
        // first admitted it): a removed key gets nothing, even in the one `orchd` turn before
        // its `netd` drops it.
        if !self.admits(from) {
            self.pulls_refused += 1;
            return;
        }
        if !self.pull_answered.allow(now, from, self.cfg.election_min) {
            return;
        }
        let Some((position, config)) = self.node.log().get_position_and_config(LogIndex::new(self.applied_index)) else { return };
        let snap = Snapshot { position, config: config.clone(), state: self.state.clone() };
        let message = Message::AppendEntriesCall {
            header: MessageHeader { from: NodeId::new(self.id), term: self.node.current_term(), seqno: MessageSeqNo::new(0) },
            commit_index: self.node.commit_index().max(position.index),
            entries: LogEntries::new(position),
        };
        let env = Envelope { from: self.id, to: from, message, commands: Vec::new(), grant: false, applied: self.reported_applied(), snapshot: Some(snap), pre_vote: false };
        self.catchup.push(Catchup::Answer { env, asker_has: applied });
    }

    /// Install a pulled state the vouch rule accepted. True if installed.
    pub(super) fn install_pulled(&mut self, now: Duration, snap: Snapshot) -> bool {
        let mine = self.applied_index.max(self.commit_index());
        if self.is_leader() || snap.position.index.get() <= mine || !snap.state.within(&self.cfg.limits) {
            return false;
        }
        if !self.node.handle_snapshot_installed(snap.position, snap.config.clone()) {
            return false;
        }
        // The commit index moves to the snapshot's position: the core restarted from this
        // storage (same term, vote and log) has it so; nothing else of the core's is lost
        // (a follower's or candidate's, and the step before emptied its actions).
        let (term, vote, log) = (self.node.current_term(), self.node.voted_for(), self.node.log().clone());
        self.node = Node::restart(NodeId::new(self.id), term, vote, log);
        self.node.set_vote_guard(false);
        self.state = snap.state.clone();
        self.applied_index = snap.position.index.get();
        self.prune_commands(snap.position.index.get());
        self.storage.snapshot = Some(snap);
        self.pulls_installed += 1;
        self.pull_source = None;
        self.step(now);
        true
    }

    /// A chunk of member `from`'s pulled answer was taken (the caller's assembler
    /// acknowledged it): the next pull goes to `from` again while chunks keep coming.
    pub fn pull_progress(&mut self, now: Duration, from: ReplicaId) {
        self.pull_source = Some((from, now));
    }

    /// The catch-up requests and answers to send.
    pub fn take_catchup(&mut self) -> Vec<Catchup> {
        core::mem::take(&mut self.catchup)
    }

    /// Pulled states this replica installed.
    pub fn pulls_installed(&self) -> u64 {
        self.pulls_installed
    }
}
