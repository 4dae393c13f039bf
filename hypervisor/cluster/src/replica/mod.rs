//! The replicated desired state: Raft (the `raftbare` core, vendored `no_std` in
//! third_party/raftbare) carrying [`Command`]s, applied in commit order to a [`DesiredState`].
//!
//! Like [`crate::membership`], a [`Replica`] never reads a clock or does I/O: `handle`,
//! `tick` and `propose` take the current time, and what to send comes out of
//! [`Replica::take_outgoing`]. raftbare tracks only the *positions* of commands in the log; the
//! commands themselves are kept here, keyed by (term, index), which names one entry across the
//! whole cluster (Raft's log matching), so an entry a new leader overwrote can never be applied
//! with the old command. AppendEntries messages carry the commands of the entries they carry.
//!
//! [`Storage`] is what Raft requires to survive a crash (term, vote, log, commands). It is
//! updated before any message leaves ([`Replica::take_outgoing`] is only called after the step
//! that produced the messages has updated it), so a caller that writes it to stable storage
//! before sending keeps Raft's guarantees. The simulator keeps it across a crash.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{Action, CommitStatus, LogEntries, LogEntry, LogIndex, LogPosition, Message, Node, NodeId, Role, Term};

use crate::desired::{Command, DesiredState, Limits, Refused, Voters};
use crate::identity::NodeKey;
use crate::put_change::PutChange;

mod catchup;
mod compaction;
mod election;
mod lease;
mod per_member;
mod vouch;

pub use catchup::Catchup;
pub use vouch::{Verdict, PENDING_FOR};

/// A Raft member's id: the node's index in the cluster's voter list, or a newer id for a node
/// re-added after losing its storage.
pub type ReplicaId = u64;

/// A member's index in the cluster file, from one of its Raft ids (`generation << 16 | member`,
/// crate::orch).
pub fn member_of(id: ReplicaId) -> usize {
    (id & 0xffff) as usize
}

/// How many AppendEntries send times a leader remembers (a reply to an older one renews nothing).
const SENT_AT_KEPT: usize = 1024;
/// How many applied positions and refusals are kept (the latest ones).
pub const APPLIED_KEPT: usize = 4096;
/// How many puts' changes are kept: a ticket is asked about within seconds of its commit
/// (`apid` polls every 50 ms), and a node takes few writes at once.
pub const PUT_CHANGES_KEPT: usize = 256;

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The leader's heartbeat period.
    pub heartbeat: Duration,
    /// A follower or candidate starts an election after a random time in this range.
    pub election_min: Duration,
    pub election_max: Duration,
    /// At most this many log entries per AppendEntries message.
    pub max_entries_per_message: usize,
    /// `propose` refuses (`LogFull`) while the log holds this many entries after its snapshot
    /// (only when commits stall: applied entries are compacted, see `snapshot_every`).
    pub max_log_entries: u64,
    /// `propose` refuses (`LogFull`) once the commands kept for the log would take more than
    /// this many heap bytes ([`Command::heap_bytes`]): a node's heap is small (`orchd`: 4 MiB),
    /// and a log whose commits stall is not compacted. Unbounded by default; `orchd` sets it
    /// (crate::orch).
    pub max_log_bytes: u64,
    /// Log compaction: once this many entries were applied after the last snapshot, the state
    /// is snapshotted and the log and commands up to it dropped; a follower too far behind
    /// gets the snapshot ([`Envelope::snapshot`], sent over the fabric in chunks:
    /// crate::snapshot). Off by default (`u64::MAX`); `orchd` compacts every 256 entries
    /// (crate::orch::NODE_SNAPSHOT_EVERY), the simulator every 4–32. A leader puts it off
    /// while a follower it heard lately has a log that ends inside the entries it would drop
    /// (that follower then gets entries, not the whole state), up to twice this many entries
    /// (bounds: `Replica::compact`).
    pub snapshot_every: u64,
    /// Log compaction keeps this many applied entries behind every snapshot (at most
    /// `snapshot_every`): a compaction waits for `snapshot_every` entries past the last
    /// snapshot and this many more, and snapshots the state this many entries before the
    /// applied index, replayed from the last snapshot through the log
    /// ([`Replica::replayed`]). A follower that fell a few entries behind just before a
    /// compaction still gets entries, not the whole state (etcd keeps 5,000 entries behind a
    /// snapshot taken every 10,000 for the same reason); snapshots still come every
    /// `snapshot_every` entries, and the log holds up to that many plus the margin. 0 (the
    /// default): the snapshot is of the applied state. `orchd` keeps 32
    /// (crate::orch::NODE_SNAPSHOT_MARGIN).
    pub snapshot_margin: u64,
    /// A leader grants leases only while a majority acknowledged it within this window
    /// (check-quorum; at most the election timeout, so a deposed leader stops first).
    pub grant_window: Duration,
    /// A peer that has not acknowledged the leader for this long gets no lease grants and is
    /// treated as down by the scheduler ([`crate::reconcile`]).
    pub peer_down_after: Duration,
    /// Pre-vote (Raft thesis §9.6): on its election timeout a follower first asks whether a
    /// majority would vote for it, without raising its term; only then does it stand. A node
    /// that was stalled or cut off (its peers still hear the leader) cannot depose a working
    /// leader by raising the term.
    pub pre_vote: bool,
    pub limits: Limits,
    /// The node this replica runs replicas for, when its local service stops them
    /// asynchronously (`orchd` through `workd`): then the applied count it reports
    /// ([`Replica::reported_applied`]) stays below an `Unassign` of a replica of this node
    /// until [`Replica::set_local_runs`] says it no longer runs there. None (the default, the
    /// simulator without a stop delay): a replica stops the moment its `Unassign` applies.
    pub local_host: Option<crate::identity::NodeKey>,
    /// The cluster file's members in order: a Raft id's member (`id & 0xffff`, crate::orch)
    /// is the key of this list, past its end the next key of the state's `node_order` that it
    /// does not list (as `Orch` numbers members). What `RemoveNode`'s quorum guard maps the
    /// configuration's voters with ([`crate::desired::Voters`]).
    pub members: Vec<NodeKey>,
    /// The catch-up pull ([`Catchup`]): a node that is not the leader and has heard no leader
    /// for this long asks a peer for its committed state on each election timeout.
    /// `Duration::MAX`: never.
    pub catch_up_after: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            max_entries_per_message: 64,
            max_log_entries: 100_000,
            max_log_bytes: u64::MAX,
            snapshot_every: u64::MAX,
            snapshot_margin: 0,
            grant_window: Duration::from_millis(500),
            peer_down_after: Duration::from_millis(1000),
            pre_vote: true,
            limits: Limits::default(),
            local_host: None,
            members: Vec::new(),
            catch_up_after: Duration::from_secs(2),
        }
    }
}

/// A Raft message and the commands of the `Command` entries it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub message: Message,
    pub commands: Vec<(LogPosition, Command)>,
    /// AppendEntries only: the leader heard from a majority within the grant window, so the
    /// receiver may renew its lease ([`Replica::lease_until`]).
    pub grant: bool,
    /// How many commands the sender's state has applied ([`DesiredState::applied`]): in an
    /// AppendEntries reply, tells the leader the follower applied an `Unassign` and stopped
    /// that replica, so it may be placed elsewhere ([`crate::reconcile`]).
    pub applied: u64,
    /// With an (empty) AppendEntries call from the leader: the leader's snapshot, for a
    /// follower whose log ends before the leader's log begins. Installed before the call is
    /// handled, so the call then matches.
    pub snapshot: Option<Snapshot>,
    /// A pre-vote ([`ReplicaConfig::pre_vote`]): a `RequestVoteCall` for the term the sender
    /// would stand in (the seqno numbers the round), or a `RequestVoteReply` echoing that term
    /// and round. Handled by [`Replica`] alone, never by the Raft core: nobody's term or vote
    /// changes.
    pub pre_vote: bool,
}

/// The desired state as of a committed log position: what replaces the log up to there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub position: LogPosition,
    /// The cluster configuration (Raft voters) at `position`.
    pub config: raftbare::ClusterConfig,
    pub state: DesiredState,
}

/// What must survive a crash.
#[derive(Clone, Debug)]
pub struct Storage {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// The log after the snapshot (its `snapshot_position` is the snapshot's).
    pub log: raftbare::Log,
    /// The commands of the log's `Command` entries (none before the snapshot).
    pub commands: BTreeMap<(u64, u64), Command>,
    pub snapshot: Option<Snapshot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader takes proposals; this is who this replica thinks leads (if anyone).
    NotLeader { leader: Option<ReplicaId> },
    LogFull,
}

pub struct Replica {
    id: ReplicaId,
    node: Node,
    cfg: ReplicaConfig,
    state: DesiredState,
    /// The last applied log index, and the positions of the commands applied so far (what the
    /// simulator checks across nodes).
    applied_index: u64,
    applied: Vec<LogPosition>,
    /// How many older applied positions were dropped from `applied` (bounded memory).
    applied_dropped: usize,
    refusals: Vec<(LogPosition, Refused)>,
    /// What the latest applied puts did ([`PUT_CHANGES_KEPT`]), for the tickets of the writes
    /// this node took (`crate::orch`).
    put_changes: alloc::collections::VecDeque<(LogPosition, PutChange)>,
    deadline: Duration,
    rng: u64,
    outgoing: Vec<Envelope>,
    /// When this node last got an AppendEntries from a leader of its term (or a newer one).
    leader_heard: Option<Duration>,
    /// Follower: the leader of `term` it last heard from, and when (an AppendEntries that
    /// granted a lease, see [`Replica::lease_until`]).
    leader_hint: Option<(u64, ReplicaId)>,
    last_grant: Option<(u64, Duration)>,
    /// Leader: when each AppendEntries of this term was sent (by seqno; bounded), and for each
    /// follower the send time of the latest call it acknowledged.
    sent_at: BTreeMap<u64, Duration>,
    follower_acks: BTreeMap<ReplicaId, Duration>,
    /// Leader: when it last sent each peer an AppendEntries that granted a lease.
    grants_sent: BTreeMap<ReplicaId, Duration>,
    /// Leader: the highest applied count each follower reported in this term.
    peer_applied: BTreeMap<ReplicaId, u64>,
    /// Leader: the seqno of each peer's latest AppendEntries reply of this term and where its
    /// log ended then (what compaction keeps for it: [`Replica::compact`]).
    peer_log_end: BTreeMap<ReplicaId, (u64, u64)>,
    /// Compactions put off because a follower still needed the entries (counted once per
    /// snapshot position put off).
    pub compactions_held: u64,
    held_at: Option<u64>,
    /// Leader: when it applied (committed) each `Unassign` still being released in this term,
    /// by the release's `at`.
    release_times: BTreeMap<u64, Duration>,
    became_leader: Option<(u64, Duration)>,
    /// Leader: when it last sent each peer its snapshot (at most one per election_min).
    snapshot_sent: BTreeMap<ReplicaId, Duration>,
    snapshots_taken: u64,
    snapshots_installed: u64,
    /// Heap bytes of `storage.commands` ([`Command::heap_bytes`]).
    log_bytes: u64,
    /// The pre-vote round in progress: its number, the term it asks for, who granted.
    pre_vote: Option<(u64, u64, alloc::collections::BTreeSet<ReplicaId>)>,
    pre_vote_rounds: u64,
    /// Elections this replica stood in (real ones, after a pre-vote when that is on).
    pub elections_started: u64,
    storage: Storage,
    /// What the local service last said runs here ([`Replica::set_local_runs`]): the applied
    /// count when it looked, and the replicas still active then (running or stopping).
    local_runs: Option<(u64, alloc::collections::BTreeSet<(alloc::string::String, u32)>)>,
    /// The catch-up pull ([`Catchup`]): when this replica started (it has heard no leader
    /// since at least then), the next peer to ask, what to send, whom it answered when, and
    /// how many pulled states it installed.
    started: Duration,
    pull_turn: usize,
    catchup: Vec<Catchup>,
    pull_answered: per_member::PerMember,
    pulls_installed: u64,
    /// The member whose pulled answer this node is assembling, and when a chunk of it last
    /// arrived ([`Replica::pull_progress`]): re-asked until done, not the next peer in turn.
    pull_source: Option<(ReplicaId, Duration)>,
    /// Pulls refused because the asker's key is not admitted in this node's state.
    pub pulls_refused: u64,
    /// The member to pull from next (it said the pending state is older than its snapshot).
    pull_next: Option<ReplicaId>,
    /// A pulled state waiting for other members to vouch for it ([`vouch`]).
    pending_pull: Option<vouch::PendingPull>,
    /// Whom this node answered a vouch request when.
    vouch_answered: per_member::PerMember,
    /// Pending pulled states dropped because a member's state differs at their position.
    pub pulls_contradicted: u64,
    /// Pending pulled states dropped because they were not vouched for in time.
    pub pulls_expired: u64,
    /// Vouch requests this node answered.
    pub vouches_answered: u64,
}

impl Replica {
    /// The first node of a new cluster of `voters` (itself included).
    pub fn bootstrap(id: ReplicaId, voters: &[ReplicaId], cfg: ReplicaConfig, seed: u64, now: Duration) -> Replica {
        let mut r = Replica::fresh(id, cfg, seed, now);
        let ids: Vec<NodeId> = voters.iter().map(|v| NodeId::new(*v)).collect();
        r.node.create_cluster(&ids);
        r.step(now);
        r
    }

    /// A node that joins a cluster being created by another's [`Replica::bootstrap`] (or that
    /// was added to it): it waits to hear from a leader.
    pub fn join(id: ReplicaId, cfg: ReplicaConfig, seed: u64, now: Duration) -> Replica {
        let mut r = Replica::fresh(id, cfg, seed, now);
        r.step(now);
        r
    }

    /// A node restarted with the storage it had when it stopped.
    pub fn restart(id: ReplicaId, storage: Storage, cfg: ReplicaConfig, seed: u64, now: Duration) -> Replica {
        let mut r = Replica::fresh(id, cfg, seed, now);
        r.node = Node::restart(NodeId::new(id), storage.term, storage.voted_for, storage.log.clone());
        r.node.set_vote_guard(false);
        // The state starts from the snapshot (if any); the entries after it are applied again as
        // the commit index advances.
        if let Some(snap) = &storage.snapshot {
            r.state = snap.state.clone();
            r.applied_index = snap.position.index.get();
        }
        r.storage = storage;
        r.recount_log_bytes();
        // The state machine is rebuilt by applying the log again as the commit index advances.
        r.step(now);
        r
    }

    fn fresh(id: ReplicaId, cfg: ReplicaConfig, seed: u64, now: Duration) -> Replica {
        let mut node = Node::start(NodeId::new(id));
        // The guard against disruptive vote requests is applied here, with the clock (`handle`).
        node.set_vote_guard(false);
        let storage = Storage { term: node.current_term(), voted_for: node.voted_for(), log: node.log().clone(), commands: BTreeMap::new(), snapshot: None };
        Replica {
            id,
            node,
            cfg,
            state: DesiredState::default(),
            applied_index: 0,
            applied: Vec::new(),
            applied_dropped: 0,
            refusals: Vec::new(),
            put_changes: alloc::collections::VecDeque::new(),
            deadline: now,
            rng: seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            outgoing: Vec::new(),
            leader_hint: None,
            leader_heard: None,
            last_grant: None,
            sent_at: BTreeMap::new(),
            follower_acks: BTreeMap::new(),
            grants_sent: BTreeMap::new(),
            peer_applied: BTreeMap::new(),
            peer_log_end: BTreeMap::new(),
            compactions_held: 0,
            held_at: None,
            release_times: BTreeMap::new(),
            became_leader: None,
            snapshot_sent: BTreeMap::new(),
            snapshots_taken: 0,
            snapshots_installed: 0,
            log_bytes: 0,
            pre_vote: None,
            pre_vote_rounds: 0,
            elections_started: 0,
            storage,
            local_runs: None,
            started: now,
            pull_turn: 0,
            catchup: Vec::new(),
            pull_answered: per_member::PerMember::new(catchup::ANSWERED_KEPT),
            pulls_installed: 0,
            pull_source: None,
            pulls_refused: 0,
            pull_next: None,
            pending_pull: None,
            vouch_answered: per_member::PerMember::new(vouch::VOUCHES_KEPT),
            pulls_contradicted: 0,
            pulls_expired: 0,
            vouches_answered: 0,
        }
    }

    pub fn id(&self) -> ReplicaId {
        self.id
    }
    pub fn role(&self) -> Role {
        self.node.role()
    }
    pub fn is_leader(&self) -> bool {
        self.node.role().is_leader()
    }
    pub fn term(&self) -> u64 {
        self.node.current_term().get()
    }
    pub fn commit_index(&self) -> u64 {
        self.node.commit_index().get()
    }
    pub fn log(&self) -> &raftbare::Log {
        self.node.log()
    }
    pub fn state(&self) -> &DesiredState {
        &self.state
    }
    /// The last log index applied to the state (committed).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Positions of the commands applied so far, in order.
    /// (The latest `APPLIED_KEPT`; [`Replica::applied_dropped`] says how many came before.)
    pub fn applied(&self) -> &[LogPosition] {
        &self.applied
    }
    pub fn applied_dropped(&self) -> usize {
        self.applied_dropped
    }
    /// Snapshots this replica took of its own state (log compaction), and installed from a
    /// leader.
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots_taken
    }
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
    }
    pub fn refusals(&self) -> &[(LogPosition, Refused)] {
        &self.refusals
    }
    /// What the put at `pos` did, if it was applied here from the log (not from a snapshot)
    /// among the latest [`PUT_CHANGES_KEPT`] puts.
    pub fn put_change(&self, pos: LogPosition) -> Option<PutChange> {
        self.put_changes.iter().find(|(p, _)| *p == pos).map(|(_, c)| *c)
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Whether [`Replica::storage`] holds the core's current term, vote and log (what the
    /// simulator checks after every event), and the command of every `Command` entry.
    pub fn storage_is_current(&self) -> bool {
        self.storage.term == self.node.current_term()
            && self.storage.voted_for == self.node.voted_for()
            && self.storage.log == *self.node.log()
            && (self.node.log().snapshot_position().index.get() == 0
                || self.storage.snapshot.as_ref().is_some_and(|s| s.position == self.node.log().snapshot_position()))
            && self.node.log().entries().iter_with_positions().all(|(p, e)| {
                !matches!(e, LogEntry::Command) || self.storage.commands.contains_key(&(p.term.get(), p.index.get()))
            })
    }

    /// The core's vote (for the restart check).
    pub fn voted_for(&self) -> Option<ReplicaId> {
        self.node.voted_for().map(|n| n.get())
    }
    pub fn next_deadline(&self) -> Duration {
        // the end of a pending pulled state's reply window ([`vouch`]) too
        self.pending_pull_window().map_or(self.deadline, |t| self.deadline.min(t))
    }
    /// Who this replica believes leads its current term.
    pub fn leader(&self) -> Option<ReplicaId> {
        if self.is_leader() {
            return Some(self.id);
        }
        self.leader_hint.filter(|(t, _)| *t == self.term()).map(|(_, l)| l)
    }

    /// The voters of the current configuration.
    pub fn voters(&self) -> Vec<ReplicaId> {
        self.node.config().unique_nodes().map(|n| n.get()).collect()
    }

    pub fn grant_window(&self) -> Duration {
        self.cfg.grant_window
    }

    pub fn peer_down_after(&self) -> Duration {
        self.cfg.peer_down_after
    }

    pub fn propose(&mut self, now: Duration, cmd: Command) -> Result<LogPosition, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        let log = self.node.log();
        if log.last_position().index.get() - log.snapshot_position().index.get() >= self.cfg.max_log_entries
            || self.log_bytes.saturating_add(cmd.heap_bytes()) > self.cfg.max_log_bytes
        {
            return Err(ProposeError::LogFull);
        }
        let pos = self.node.propose_command();
        if pos.is_invalid() {
            return Err(ProposeError::NotLeader { leader: None });
        }
        self.keep_command((pos.term.get(), pos.index.get()), cmd);
        self.step(now);
        Ok(pos)
    }

    /// Leader only: make `add` voters instead of `remove` (raftbare's joint consensus; it
    /// proposes the final configuration itself once the joint one is committed). Used to
    /// replace a diskless node's old id by the new one it rejoins with (crate::orch).
    pub fn propose_config(&mut self, now: Duration, add: &[ReplicaId], remove: &[ReplicaId]) -> Result<LogPosition, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        let add: Vec<NodeId> = add.iter().map(|i| NodeId::new(*i)).collect();
        let remove: Vec<NodeId> = remove.iter().map(|i| NodeId::new(*i)).collect();
        let cfg = self.node.config().to_joint_consensus(&add, &remove);
        let pos = self.node.propose_config(cfg);
        if pos.is_invalid() {
            return Err(ProposeError::NotLeader { leader: None });
        }
        self.step(now);
        Ok(pos)
    }

    /// This replica's log has a configuration and it is not a voter of it (taken out, or not
    /// yet added: a joiner catching up on older entries).
    pub fn out_of_config(&self) -> bool {
        let c = self.node.config();
        !c.voters.is_empty() && !self.is_voter()
    }

    /// A configuration change is in progress (joint consensus).
    pub fn config_changing(&self) -> bool {
        self.node.config().is_joint_consensus()
    }

    /// Entries in the log that are not committed yet.
    pub fn has_uncommitted(&self) -> bool {
        self.node.log().last_position().index.get() > self.node.commit_index().get()
    }

    /// Whether the entry at `pos` committed. An entry compacted away since is still known
    /// committed while it is among the latest applied positions.
    pub fn commit_status(&self, pos: LogPosition) -> CommitStatus {
        match self.node.get_commit_status(pos) {
            CommitStatus::Unknown if self.applied.binary_search_by(|p| p.index.cmp(&pos.index)).is_ok_and(|i| self.applied[i] == pos) => CommitStatus::Committed,
            s => s,
        }
    }

    /// Run the timer if it is due.
    pub fn tick(&mut self, now: Duration) {
        if self.pending_pull_window().is_some_and(|t| now >= t) {
            self.decide_pulled(now);
        }
        if now >= self.deadline {
            // Pushed out first: raftbare asks for a new timeout when it needs one.
            self.deadline = now + self.cfg.election_max;
            if self.cfg.pre_vote && !self.is_leader() && self.is_voter() {
                self.start_pre_vote(now);
            } else {
                self.stand(now);
            }
            self.maybe_pull(now);
        }
    }

    /// A message from a peer. Malformed envelopes (commands that do not match the entries
    /// carried, a sender that is not the message's sender) are dropped.
    pub fn handle(&mut self, now: Duration, env: Envelope) {
        self.handle_received(now, now, env)
    }

    /// How far a follower's log matches this leader's, by an AppendEntries reply not yet
    /// handled: the reply's last position, if this leader's log holds it (the same term at that
    /// index, so by Raft's log matching everything before it is the same too). Only a reply
    /// this replica would take (addressed to it, of its current term, not a pre-vote) and newer
    /// than the latest reply from that peer (by seqno: a late one says nothing of now). A
    /// snapshot transfer at or below it is over
    /// ([`crate::snapshot::SnapshotSender::on_matched`]).
    pub fn follower_matched(&self, env: &Envelope) -> Option<u64> {
        let Message::AppendEntriesReply { header, last_position } = &env.message else { return None };
        let fresh = self.peer_log_end.get(&env.from).is_none_or(|(s, _)| *s < header.seqno.get());
        let ours = env.to == self.id && header.from.get() == env.from && !env.pre_vote && self.is_leader() && header.term == self.node.current_term();
        (ours && fresh && self.node.log().entries().contains(*last_position)).then_some(last_position.index.get())
    }

    /// [`Replica::handle`] of a message that arrived no earlier than `since`: a lease grant it
    /// carries counts from `since` (a grant that waited before it was handled must not
    /// extend the lease past what the leader's bound assumes).
    pub fn handle_received(&mut self, now: Duration, since: Duration, env: Envelope) {
        let since = since.min(now);
        if env.to != self.id || env.message.from().get() != env.from {
            return;
        }
        if env.pre_vote {
            if self.cfg.pre_vote && env.snapshot.is_none() && env.commands.is_empty() && !env.grant {
                self.handle_pre_vote(now, env);
            }
            return;
        }
        match &env.message {
            Message::AppendEntriesCall { header, entries, .. } => {
                let wanted: Vec<LogPosition> =
                    entries.iter_with_positions().filter(|(_, e)| matches!(e, LogEntry::Command)).map(|(p, _)| p).collect();
                if wanted.len() != env.commands.len() || wanted.iter().zip(&env.commands).any(|(w, (p, _))| w != p) {
                    return;
                }
                if let Some(snap) = &env.snapshot {
                    // Only with an empty call that starts right after it, and within the limits.
                    if !entries.is_empty() || entries.prev_position() != snap.position || !snap.state.within(&self.cfg.limits) {
                        return;
                    }
                    self.install(snap.clone());
                }
                for (p, c) in &env.commands {
                    self.keep_command((p.term.get(), p.index.get()), c.clone());
                }
                if header.term >= self.node.current_term() {
                    self.leader_hint = Some((header.term.get(), env.from));
                    self.leader_heard = Some(now);
                    // a leader is heard: no election to prepare, and no pulled state to wait for
                    // (the leader brings this node up to date itself)
                    self.pre_vote = None;
                    self.pending_pull = None;
                }
            }
            // Raft thesis §4.2.3: within the minimum election timeout of hearing from a current
            // leader, a vote request of a newer term is ignored (a removed or cut-off node must
            // not depose a working leader). (raftbare's own, clockless version ignored it for
            // ever once this node had voted for another: third_party/raftbare/CATENARY.md.)
            Message::RequestVoteCall { header, .. }
                if header.term > self.node.current_term()
                    && !self.is_leader()
                    && self.leader_heard.is_some_and(|t| now.saturating_sub(t) < self.cfg.election_min) =>
            {
                return;
            }
            _ if env.snapshot.is_some() => return,
            Message::AppendEntriesReply { header, .. } if self.is_leader() && header.term == self.node.current_term() => {
                if let Some(sent) = self.sent_at.get(&header.seqno.get()).copied() {
                    let e = self.follower_acks.entry(env.from).or_insert(sent);
                    *e = (*e).max(sent);
                }
                let a = self.peer_applied.entry(env.from).or_insert(env.applied);
                *a = (*a).max(env.applied);
                // Where the follower's log ends, by its latest reply (by seqno: a reply that
                // arrives late does not move it back; a log can be cut back, so not the
                // highest end), for the configuration's peers only (bounded by it).
                let seqno = header.seqno.get();
                if self.node.peers().any(|p| p.get() == env.from) && self.peer_log_end.get(&env.from).is_none_or(|(s, _)| *s < seqno) {
                    if let Message::AppendEntriesReply { last_position, .. } = &env.message {
                        self.peer_log_end.insert(env.from, (seqno, last_position.index.get()));
                    }
                }
            }
            _ => {}
        }
        let grant = match &env.message {
            Message::AppendEntriesCall { header, commit_index, .. } if env.grant => Some((header.term, commit_index.get())),
            _ => None,
        };
        self.node.handle_message(env.message);
        self.step(now);
        // A grant renews the lease only once this node has applied everything the leader had
        // committed when it sent it: a node that comes back behind (after a partition, say)
        // must not run yesterday's assignments under today's lease.
        if let Some((term, commit)) = grant {
            if term == self.node.current_term() && !self.is_leader() && self.applied_index >= commit {
                // (a grant handled later but stamped earlier never shortens the lease)
                let at = self.last_grant.filter(|(t, _)| *t == term.get()).map_or(since, |(_, at)| at.max(since));
                self.last_grant = Some((term.get(), at));
            }
        }
    }

    pub fn take_outgoing(&mut self) -> Vec<Envelope> {
        core::mem::take(&mut self.outgoing)
    }

    fn jitter(&mut self) -> Duration {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let span = (self.cfg.election_max - self.cfg.election_min).as_micros().max(1) as u64;
        self.cfg.election_min + Duration::from_micros(z % span)
    }

    /// Carry out raftbare's actions: storage first, then messages; then apply what committed.
    fn step(&mut self, now: Duration) {
        let mut storage_dirty = false;
        let mut sends: Vec<(Option<NodeId>, Message)> = Vec::new();
        let mut snapshot_to: Vec<NodeId> = Vec::new();
        while let Some(action) = self.node.actions_mut().next() {
            match action {
                Action::SetElectionTimeout => {
                    self.deadline = now + if self.node.role().is_leader() { self.cfg.heartbeat } else { self.jitter() };
                }
                Action::SaveCurrentTerm | Action::SaveVotedFor | Action::AppendLogEntries(_) => storage_dirty = true,
                Action::BroadcastMessage(m) => sends.push((None, m)),
                Action::SendMessage(to, m) => sends.push((Some(to), m)),
                // The follower's log ends before ours begins: it gets our snapshot.
                Action::InstallSnapshot(to) => snapshot_to.push(to),
            }
        }
        if self.is_leader() && self.became_leader.is_none_or(|(t, _)| t != self.term()) {
            self.follower_acks.clear();
            self.sent_at.clear();
            self.grants_sent.clear();
            self.peer_applied.clear();
            self.peer_log_end.clear();
            self.release_times.clear();
            self.became_leader = Some((self.term(), now));
        }
        // raftbare truncates a diverging suffix without asking for a write until it knows
        // where the logs agree; storing the truncation at once is as safe and keeps the
        // storage exactly the core's state (the simulator checks it after every event).
        if storage_dirty || self.storage.log != *self.node.log() || self.storage.term != self.node.current_term() || self.storage.voted_for != self.node.voted_for() {
            self.storage.term = self.node.current_term();
            self.storage.voted_for = self.node.voted_for();
            self.storage.log = self.node.log().clone();
        }
        let peers: Vec<NodeId> = self.node.peers().collect();
        for (to, m) in sends {
            match to {
                Some(t) => self.send(now, t, m),
                None => {
                    for p in &peers {
                        self.send(now, *p, m.clone());
                    }
                }
            }
        }
        for to in snapshot_to {
            self.send_snapshot(now, to);
        }
        self.apply_committed(now);
        self.compact(now);
    }

    fn send(&mut self, now: Duration, to: NodeId, mut message: Message) {
        let mut commands = Vec::new();
        let mut grant = false;
        if let Message::AppendEntriesCall { header, entries, .. } = &mut message {
            self.sent_at.insert(header.seqno.get(), now);
            while self.sent_at.len() > SENT_AT_KEPT {
                self.sent_at.pop_first();
            }
            // Only to a peer that answers: grants to a dead or cut-off peer would keep its
            // lease "possibly alive" for ever, and its replicas could never move.
            grant = self.committed_own_term()
                && self.majority_contact(now).is_some_and(|m| now.saturating_sub(m) <= self.cfg.grant_window)
                && self.follower_acks.get(&to.get()).is_some_and(|a| now.saturating_sub(*a) <= self.cfg.peer_down_after);
            if grant {
                self.grants_sent.insert(to.get(), now);
            }
            if entries.len() > self.cfg.max_entries_per_message {
                entries.truncate(self.cfg.max_entries_per_message);
            }
            for (p, e) in entries.iter_with_positions() {
                if matches!(e, LogEntry::Command) {
                    match self.storage.commands.get(&(p.term.get(), p.index.get())) {
                        Some(c) => commands.push((p, c.clone())),
                        // Cannot happen (every Command entry in the log came with its command);
                        // sending the entry without it would stall the follower, so drop it.
                        None => return,
                    }
                }
            }
        }
        self.outgoing.push(Envelope { from: self.id, to: to.get(), message, commands, grant, applied: self.reported_applied(), snapshot: None, pre_vote: false });
    }

    /// The configuration in force at log index `i` (the latest configuration entry at or
    /// before it, or the snapshot's), its voters as member keys: the same on every node for a
    /// committed entry.
    fn voters_at(&self, i: LogIndex) -> Voters {
        self.voters_with(i, &self.state)
    }

    /// [`Replica::voters_at`] with run-time members numbered by `state` (a replay's).
    fn voters_with(&self, i: LogIndex, state: &DesiredState) -> Voters {
        let Some((_, c)) = self.node.log().get_position_and_config(i) else { return Voters::default() };
        let keys = |ids: &alloc::collections::BTreeSet<NodeId>| ids.iter().map(|id| member_key(&self.cfg.members, state, member_of(id.get()))).collect();
        Voters { old: keys(&c.voters), new: keys(&c.new_voters) }
    }

    /// The committed state as of log index `upto`: `state`, the state at log index `base`,
    /// with the log's commands `base + 1..=upto` applied as `apply_committed` applies them (a
    /// refusal changes only the applied count). None if one of those entries or its command
    /// is no longer in the log.
    pub(super) fn replayed(&self, mut state: DesiredState, base: u64, upto: u64) -> Option<DesiredState> {
        let entries = self.node.log().entries();
        for j in base + 1..=upto {
            let (Some(term), Some(entry)) = (entries.get_term(LogIndex::new(j)), entries.get_entry(LogIndex::new(j))) else { return None };
            if !matches!(entry, LogEntry::Command) {
                continue;
            }
            let cmd = self.storage.commands.get(&(term.get(), j))?;
            let voters = matches!(cmd, Command::RemoveNode(_)).then(|| self.voters_with(LogIndex::new(j), &state));
            let _ = state.apply_at(cmd, &self.cfg.limits, voters.as_ref());
        }
        Some(state)
    }

    /// The state at the log's snapshot index, what a replay starts from: the snapshot's, or
    /// the empty state before the first snapshot.
    pub(super) fn snapshot_state(&self) -> Option<DesiredState> {
        let base = self.node.log().snapshot_position().index.get();
        match &self.storage.snapshot {
            Some(s) if s.position.index.get() == base => Some(s.state.clone()),
            None if base == 0 => Some(DesiredState::default()),
            _ => None,
        }
    }

    fn apply_committed(&mut self, now: Duration) {
        let commit = self.node.commit_index().get();
        while self.applied_index < commit {
            let i = self.applied_index + 1;
            let entries: &LogEntries = self.node.log().entries();
            let (Some(term), Some(entry)) = (entries.get_term(LogIndex::new(i)), entries.get_entry(LogIndex::new(i))) else { break };
            if matches!(entry, LogEntry::Command) {
                let pos = LogPosition { term, index: LogIndex::new(i) };
                let Some(cmd) = self.storage.commands.get(&(term.get(), i)).cloned() else { break };
                let releasing = match &cmd {
                    Command::Released { workload, replica } => self.state.releases.get(&(workload.clone(), *replica)).map(|r| r.at),
                    _ => None,
                };
                let voters = matches!(cmd, Command::RemoveNode(_)).then(|| self.voters_at(LogIndex::new(i)));
                // judged against the state just before the put, the same on every node
                let change = match &cmd {
                    Command::PutWorkload(spec) => Some(PutChange::of(self.state.workloads.get(&spec.name), spec)),
                    _ => None,
                };
                let result = self.state.apply_at(&cmd, &self.cfg.limits, voters.as_ref());
                if let (Ok(()), Some(c)) = (&result, change) {
                    if self.put_changes.len() >= PUT_CHANGES_KEPT {
                        self.put_changes.pop_front();
                    }
                    self.put_changes.push_back((pos, c));
                }
                match result {
                    Err(e) => {
                        if self.refusals.len() >= APPLIED_KEPT {
                            self.refusals.remove(0);
                        }
                        self.refusals.push((pos, e));
                    }
                    // The leader times its own releases (a follower's would not help it: a
                    // new leader counts from its election, see reconcile::release_done).
                    Ok(()) if matches!(cmd, Command::Unassign { .. }) && self.is_leader() => {
                        self.release_times.insert(self.state.applied, now);
                    }
                    Ok(()) => {
                        if let Some(at) = releasing {
                            self.release_times.remove(&at);
                        }
                    }
                }
                self.applied.push(pos);
                if self.applied.len() >= 2 * APPLIED_KEPT {
                    self.applied.drain(..APPLIED_KEPT);
                    self.applied_dropped += APPLIED_KEPT;
                }
            }
            self.applied_index = i;
        }
    }
}

/// Member `m`'s key: the cluster file's (`file`), then the keys of `state.node_order` that the
/// file does not list, in that order (how crate::orch numbers the members admitted at run time).
pub fn member_key(file: &[NodeKey], state: &DesiredState, m: usize) -> Option<NodeKey> {
    match m.checked_sub(file.len()) {
        None => Some(file[m]),
        Some(extra) => state.node_order.iter().filter(|k| !file.contains(k)).nth(extra).copied(),
    }
}
