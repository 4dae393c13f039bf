//! Vouching for a pulled state: a node installs a member's answer to its catch-up pull only
//! once other members say it is their committed state too (docs/orchestration.md, "A pulled
//! state is vouched for").
//!
//! Why: a node restarted without storage knows only the cluster file, and its `netd` lets
//! every file member in. A member the cluster removed whose key the file still lists (a
//! retired or stolen key) could answer the pull with a state of its own making, at any
//! position; before this, one answer ahead of the node was installed as it came.
//!
//! The rule. An answer from member A at position p with digest d (SHA-256 of the snapshot's
//! encoding) waits as the node's *pending* pull. The node asks every other member of its
//! voter set V (its configuration's voters, or the file's members while it has none; itself
//! included) whether its state at p is d. A member answers:
//! - `Same`: p is committed and applied there, the entry at p has p's term, and the state it
//!   replays to p (from its snapshot through its log) has the digest d;
//! - `Differs`: it has applied p and its state there is not d (or p's term is not its entry's);
//! - `Behind`: it has not applied p yet (with its applied index: a member no further along
//!   than this node is not waited for);
//! - `Stale`: p is older than its snapshot (it cannot replay to p; it is further along).
//!
//! The pending state is installed once, after a reply window of `election_min` from its
//! arrival: (1) this node, A and the members that answered `Same` are a majority of V (Raft's
//! own quorum arithmetic: a committed state is on a majority), and (2) no member's latest
//! answer is `Behind` from further along than this node. Any `Differs` drops it (counted in `pulls_contradicted`); `Stale` drops
//! it and makes that member the next one asked. A pending state not installed within
//! [`PENDING_FOR`] is dropped and the pull starts again.
//!
//! What this buys: in a cluster of five or more, a forged state needs a second member to
//! vouch for it, so one removed key cannot forge alone. In a cluster of three, quorum (1) is
//! this node and A, so the protection is (2) and `Differs`: the third member, if it answers,
//! holds a forged state back (it is `Behind` a state forged far ahead, `Differs` at a position
//! it applied). A forger wins only while no honest member answers this node at all; in the
//! three-node readmission case the pull exists for (this node hears only one member), that one
//! member's word is all there is, as before. What it costs: a reachable member that lies can
//! hold a pull back (`Differs`, `Behind`); the node then waits for a leader as it would without
//! the pull. Bounded: one vouch request per member of V per election timeout; a member answers
//! a requester at most once per `election_min / 2`, replaying at most the entries after its
//! snapshot (`snapshot_every`, twice that on a leader that waits for a follower: `compact`).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{LogPosition, NodeId};

use super::{member_key, member_of, Catchup, Replica, ReplicaId, Snapshot};
use crate::snapshot::{digest_parts, snapshot_digest};

/// A pending pulled state not installed within this many election timeouts (`election_max`)
/// is dropped, and the pull starts again.
pub const PENDING_FOR: u32 = 6;

/// Requesters a member remembers answering (the oldest is forgotten first).
pub(super) const VOUCHES_KEPT: usize = 64;

/// A member's answer to [`Catchup::Vouch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Differs,
    Behind,
    Stale,
}

/// A pulled state waiting for its vouchers.
#[derive(Clone, Debug)]
pub(super) struct PendingPull {
    snap: Snapshot,
    digest: [u8; 32],
    /// When it arrived.
    since: Duration,
    /// Members (by index) whose word counts for it: the answerer, and those that said `Same`.
    vouched: BTreeSet<usize>,
    /// Members whose latest answer was `Behind`.
    behind: BTreeSet<usize>,
    /// A decision ran after the reply window ended (the window's end is no longer a deadline).
    window_over: bool,
}

impl Replica {
    /// The voter sets a pulled state is checked against, as member indexes: this
    /// configuration's voters and, in a joint configuration, its new voters (a majority of
    /// each, as Raft commits), or the file's members while it has no configuration.
    fn vouch_sets(&self) -> Vec<BTreeSet<usize>> {
        let c = self.node.config();
        let members = |ids: &BTreeSet<NodeId>| ids.iter().map(|id| member_of(id.get())).collect::<BTreeSet<usize>>();
        let mut sets: Vec<BTreeSet<usize>> = [&c.voters, &c.new_voters].into_iter().filter(|s| !s.is_empty()).map(members).collect();
        if sets.is_empty() {
            sets.push((0..self.cfg.members.len()).collect());
        }
        sets
    }

    /// Whom to ask: every member of the vouch sets but this node, as (member index, the id to
    /// ask; a file member by its index: any generation takes a request addressed to it).
    fn vouch_targets(&self) -> Vec<(usize, ReplicaId)> {
        let me = member_of(self.id);
        let c = self.node.config();
        let mut set: Vec<(usize, ReplicaId)> = c.voters.iter().chain(c.new_voters.iter()).map(|id| (member_of(id.get()), id.get())).filter(|(m, _)| *m != me).collect();
        if c.voters.is_empty() && c.new_voters.is_empty() {
            set = (0..self.cfg.members.len()).filter(|m| *m != me).map(|m| (m, m as u64)).collect();
        }
        set.sort_unstable();
        set.dedup_by_key(|(m, _)| *m);
        set
    }

    /// Member `from`'s state pulled by this node (assembled from chunks marked pulled) arrived
    /// whole. If it is ahead of what this node applied and committed, within the limits, and
    /// this node does not lead, it becomes the pending pulled state (replacing an older one)
    /// and the other members are asked to vouch for it (module docs). True if it is installed
    /// at once (never before the reply window, so in practice false).
    pub fn pulled(&mut self, now: Duration, from: ReplicaId, snap: Snapshot) -> bool {
        let mine = self.applied_index.max(self.commit_index());
        if self.is_leader() || snap.position.index.get() <= mine || !snap.state.within(&self.cfg.limits) {
            return false;
        }
        let digest = snapshot_digest(&snap);
        let answerer = member_of(from);
        if let Some(p) = &mut self.pending_pull {
            if p.snap.position == snap.position && p.digest == digest {
                p.vouched.insert(answerer);
                return self.decide_pulled(now);
            }
            // A later pending state keeps its place, unless only its answerer backs it and this
            // answer is another member's (a forgery far ahead must not hold the real state back
            // until it expires).
            if p.snap.position.index > snap.position.index && (p.vouched.len() > 1 || p.vouched.contains(&answerer)) {
                return false;
            }
        }
        let mut vouched = BTreeSet::new();
        vouched.insert(answerer);
        self.pending_pull = Some(PendingPull { snap, digest, since: now, vouched, behind: BTreeSet::new(), window_over: false });
        self.ask_vouchers();
        self.decide_pulled(now)
    }

    /// Ask every member of the vouch set that has not vouched for the pending state yet.
    fn ask_vouchers(&mut self) {
        let Some(p) = &self.pending_pull else { return };
        let (position, digest) = (p.snap.position, p.digest);
        let asks: Vec<ReplicaId> = self.vouch_targets().into_iter().filter(|(m, _)| !p.vouched.contains(m)).map(|(_, id)| id).collect();
        for to in asks {
            self.catchup.push(Catchup::Vouch { from: self.id, to, position, digest });
        }
    }

    /// Install the pending pulled state if the rule holds (module docs), drop it if it
    /// expired or this node got as far by itself. True if installed.
    pub(super) fn decide_pulled(&mut self, now: Duration) -> bool {
        let Some(p) = &self.pending_pull else { return false };
        let mine = self.applied_index.max(self.commit_index());
        let age = now.saturating_sub(p.since);
        if self.is_leader() || p.snap.position.index.get() <= mine || age > self.cfg.election_max * PENDING_FOR {
            if age > self.cfg.election_max * PENDING_FOR {
                self.pulls_expired += 1;
            }
            self.pending_pull = None;
            return false;
        }
        if age < self.cfg.election_min {
            return false;
        }
        if let Some(p) = &mut self.pending_pull {
            p.window_over = true;
        }
        let Some(p) = &self.pending_pull else { return false };
        if !p.behind.is_empty() {
            return false;
        }
        // A majority of each set: this node (if in it), the answerer, those that said `Same`.
        let me = member_of(self.id);
        let quorum = self.vouch_sets().iter().all(|set| {
            let counted = set.iter().filter(|m| **m == me || p.vouched.contains(m)).count();
            counted > set.len() / 2
        });
        if !quorum {
            return false;
        }
        match self.pending_pull.take() {
            Some(p) => self.install_pulled(now, p.snap),
            None => false,
        }
    }

    /// Called on this node's election timeout while a pulled state is pending: decide, and
    /// ask again those that have not vouched. True while one is still pending (no new pull).
    pub(super) fn pending_pull_turn(&mut self, now: Duration) -> bool {
        self.decide_pulled(now);
        if self.pending_pull.is_some() {
            self.ask_vouchers();
            return true;
        }
        false
    }

    /// Member `from` asks whether this node's committed state at `position` has `digest`.
    pub fn handle_vouch(&mut self, now: Duration, from: ReplicaId, position: LogPosition, digest: [u8; 32]) {
        if from == self.id || !self.admits(from) {
            return;
        }
        if !self.vouch_answered.allow(now, from, self.cfg.election_min / 2) {
            return;
        }
        let verdict = self.verdict(position, &digest);
        self.vouches_answered += 1;
        self.catchup.push(Catchup::Vouched { from: self.id, to: from, position, digest, verdict, applied: self.applied_index });
    }

    /// Whether this node's committed state at `position` has `digest`: replayed from its
    /// snapshot through its log (module docs).
    fn verdict(&self, position: LogPosition, digest: &[u8; 32]) -> Verdict {
        let i = position.index.get();
        if i > self.applied_index {
            return Verdict::Behind;
        }
        let base = self.node.log().snapshot_position().index.get();
        if i < base {
            return Verdict::Stale;
        }
        let Some((at, config)) = self.node.log().get_position_and_config(position.index) else { return Verdict::Stale };
        if at != position {
            return Verdict::Differs;
        }
        // The common case (a quiet cluster): the position is the one applied, no copy.
        if i == self.applied_index {
            return if digest_parts(position, config, &self.state) == *digest { Verdict::Same } else { Verdict::Differs };
        }
        let Some(state) = self.snapshot_state().and_then(|from| self.replayed(from, base, i)) else { return Verdict::Stale };
        if digest_parts(position, config, &state) == *digest {
            Verdict::Same
        } else {
            Verdict::Differs
        }
    }

    /// Member `from`'s answer to this node's vouch request (it applied `applied` entries).
    pub fn handle_vouched(&mut self, now: Duration, from: ReplicaId, position: LogPosition, digest: [u8; 32], verdict: Verdict, applied: u64) {
        let mine = self.applied_index.max(self.commit_index());
        let m = member_of(from);
        if !self.vouch_targets().iter().any(|(x, _)| *x == m) {
            return;
        }
        let Some(p) = &mut self.pending_pull else { return };
        if p.snap.position != position || p.digest != digest {
            return;
        }
        match verdict {
            Verdict::Same => {
                p.vouched.insert(m);
                p.behind.remove(&m);
            }
            // A member no further along than this node knows nothing this node does not: its
            // `Behind` holds nothing back (two stuck nodes would otherwise wait for each other).
            Verdict::Behind if applied > mine => {
                p.behind.insert(m);
            }
            Verdict::Behind => {
                p.behind.remove(&m);
            }
            Verdict::Differs => {
                self.pulls_contradicted += 1;
                self.pending_pull = None;
            }
            Verdict::Stale => {
                self.pending_pull = None;
                self.pull_next = Some(from);
            }
        }
        self.decide_pulled(now);
    }

    /// Whether this node's state admits member `from` (a file member also before the cluster
    /// first admitted it): a removed key gets no answer to a pull or a vouch request.
    pub(super) fn admits(&self, from: ReplicaId) -> bool {
        if self.cfg.members.is_empty() {
            return true;
        }
        let m = member_of(from);
        member_key(&self.cfg.members, &self.state, m).is_some_and(|k| self.state.nodes.contains(&k) || (m < self.cfg.members.len() && !self.state.node_order.contains(&k)))
    }

    /// When the pending pulled state's reply window ends (it may be installed from then on).
    pub(super) fn pending_pull_window(&self) -> Option<Duration> {
        self.pending_pull.as_ref().filter(|p| !p.window_over).map(|p| p.since + self.cfg.election_min)
    }

    /// The pulled state waiting for vouchers, if any: (position, digest, members whose word
    /// counts).
    pub fn pending_pull(&self) -> Option<(LogPosition, [u8; 32], usize)> {
        self.pending_pull.as_ref().map(|p| (p.snap.position, p.digest, p.vouched.len()))
    }
}
