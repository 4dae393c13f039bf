//! Log compaction and snapshots: snapshot the applied state and drop the log up to it; send a
//! lagging follower the snapshot, install one from the leader; the commands' byte count.

use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{LogEntries, LogIndex, Message, MessageHeader, MessageSeqNo, NodeId};

use crate::desired::Command;

use super::{Envelope, Replica, Snapshot};

/// A held compaction ends once the log's commands reach `max_log_bytes` / this.
const HOLD_BYTES_DIVISOR: u64 = 8;

impl Replica {
    /// Log compaction: once `snapshot_every` entries past the last snapshot were applied, and
    /// `snapshot_margin` more, snapshot the state `snapshot_margin` entries before the applied
    /// index (replayed from the last snapshot through the log) and drop the log and commands
    /// up to it; the margin's entries stay for a follower a few entries behind.
    ///
    /// A leader first keeps the entries a follower still needs: while a follower that
    /// acknowledged it within `peer_down_after` has a log (its latest reply) that ends at or
    /// past the snapshot but before the applied index, compacting now would leave that
    /// follower only the whole snapshot (up to `SNAPSHOT_MAX` in chunks) for what a few
    /// entries bring; a slow follower is often just a reply behind. It waits for that follower
    /// up to twice `snapshot_every` entries (and the margin), half `max_log_entries`, or an eighth of
    /// `max_log_bytes` of commands (256 KiB on nodes: the log's commands count against
    /// `orchd`'s write budget, so a hold may cost it at most that), then compacts anyway. (Only the leader sends entries and snapshots, so only it waits; a silent
    /// follower, down or cut off, is not waited for, and one whose log ends before the
    /// snapshot needs the snapshot whatever is kept.)
    pub(super) fn compact(&mut self, now: Duration) {
        let base = self.node.log().snapshot_position().index.get();
        let every = self.cfg.snapshot_every.max(1);
        // the snapshot's index: `snapshot_margin` applied entries stay behind it
        let margin = self.cfg.snapshot_margin.min(every);
        let upto = self.applied_index.saturating_sub(margin);
        if upto < base.saturating_add(every) {
            return;
        }
        let kept = self.node.log().last_position().index.get().saturating_sub(base);
        let bound = upto >= base.saturating_add(every.saturating_mul(2))
            || kept >= self.cfg.max_log_entries / 2
            || self.log_bytes >= self.cfg.max_log_bytes / HOLD_BYTES_DIVISOR;
        if self.is_leader() && !bound {
            let heard = |p: u64| self.follower_acks.get(&p).is_some_and(|sent| now.saturating_sub(*sent) < self.cfg.peer_down_after);
            let needs_entries = self.node.peers().any(|p| heard(p.get()) && self.peer_log_end.get(&p.get()).is_some_and(|&(_, end)| end >= base && end < upto));
            if needs_entries {
                if self.held_at != Some(base) {
                    self.held_at = Some(base);
                    self.compactions_held += 1;
                }
                return;
            }
        }
        // The state at `upto`, replayed from the last snapshot through the log; should the
        // log not hold what the replay needs (it always does), the applied state, no margin.
        let replayed = (upto < self.applied_index).then(|| self.snapshot_state().and_then(|from| self.replayed(from, base, upto))).flatten();
        let (upto, state) = match replayed {
            Some(state) => (upto, state),
            None => (self.applied_index, self.state.clone()),
        };
        let Some((position, config)) = self.node.log().get_position_and_config(LogIndex::new(upto)) else { return };
        let config = config.clone();
        if !self.node.handle_snapshot_installed(position, config.clone()) {
            return;
        }
        self.storage.snapshot = Some(Snapshot { position, config, state });
        self.storage.log = self.node.log().clone();
        self.prune_commands(position.index.get());
        self.snapshots_taken += 1;
    }

    pub(super) fn prune_commands(&mut self, upto: u64) {
        // Keyed by (term, index): keep the entries past `upto` of any term.
        self.storage.commands.retain(|(_, i), _| *i > upto);
        self.recount_log_bytes();
    }

    pub(super) fn keep_command(&mut self, key: (u64, u64), cmd: Command) {
        let add = cmd.heap_bytes();
        if let Some(old) = self.storage.commands.insert(key, cmd) {
            self.log_bytes = self.log_bytes.saturating_sub(old.heap_bytes());
        }
        self.log_bytes = self.log_bytes.saturating_add(add);
    }

    pub(super) fn recount_log_bytes(&mut self) {
        self.log_bytes = self.storage.commands.values().map(Command::heap_bytes).sum();
    }

    /// Heap bytes the log's commands take ([`ReplicaConfig::max_log_bytes`] bounds them).
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Leader: send `to` the snapshot with an empty AppendEntries call that starts right after
    /// it (seqno 0: raftbare ignores the reply; the next heartbeat's reply moves it on).
    pub(super) fn send_snapshot(&mut self, now: Duration, to: NodeId) {
        let Some(snap) = self.storage.snapshot.clone() else { return };
        if !self.is_leader() || self.snapshot_sent.get(&to.get()).is_some_and(|t| now.saturating_sub(*t) < self.cfg.election_min) {
            return;
        }
        self.snapshot_sent.insert(to.get(), now);
        let message = Message::AppendEntriesCall {
            header: MessageHeader { from: NodeId::new(self.id), term: self.node.current_term(), seqno: MessageSeqNo::new(0) },
            commit_index: self.node.commit_index(),
            entries: LogEntries::new(snap.position),
        };
        self.outgoing.push(Envelope { from: self.id, to: to.get(), message, commands: Vec::new(), grant: false, applied: self.reported_applied(), snapshot: Some(snap), pre_vote: false });
    }

    /// Follower: install a leader's snapshot that is ahead of what this node committed.
    pub(super) fn install(&mut self, snap: Snapshot) {
        if snap.position.index <= self.node.commit_index() || self.is_leader() {
            return;
        }
        if !self.node.handle_snapshot_installed(snap.position, snap.config.clone()) {
            return;
        }
        self.state = snap.state.clone();
        self.applied_index = snap.position.index.get();
        self.prune_commands(snap.position.index.get());
        self.storage.snapshot = Some(snap);
        self.snapshots_installed += 1;
    }
}
