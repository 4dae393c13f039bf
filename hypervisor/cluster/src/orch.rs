//! One node's orchestration, sans I/O: what the ring-3 service `orchd` runs over the fabric,
//! and what the host tests run over an in-process network.
//!
//! An [`Orch`] holds this node's [`Replica`] of the desired state and everything around it
//! that is not Raft itself:
//!
//! - **Who is who.** The cluster file lists the members (their keys) in order; a member's Raft
//!   ids are `generation << 16 | index`. The caller says which member a datagram came from (the
//!   fabric authenticated its key); an envelope whose sender id is not that member's is dropped.
//! - **Diskless start.** A node has no disk, so it cannot tell a first boot from a restart by
//!   its storage. It listens first ([`OrchConfig::boot_wait`]): a leader's AppendEntries
//!   addressed to any id of its index means the cluster exists and counted it as a voter, so it
//!   comes back as the next generation (a new, empty Raft member) and asks to replace its old id
//!   ([`Wire::Join`]; the leader proposes the joint configuration change). A vote request of a
//!   cluster being created (candidate's log at the bootstrap entry) lets it join as generation
//!   0; silence lets member 0 create the cluster and the others wait as generation 0. Reusing
//!   the old id with an empty log would be unsafe: it could vote twice in a term, or forget an
//!   entry a majority needed it for.
//! - **The scheduler** ([`crate::reconcile`]) on the leader, with each node's capacity as the
//!   node last reported it ([`Wire::Capacity`]), and the admission of the cluster file's members.
//! - **Writes from any node**: [`Orch::submit`] proposes on the leader or forwards there.
//! - **What to run**: [`Orch::assigned_now`] is the replicas the committed state assigns this
//!   node while its lease holds, and nothing otherwise.
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{LogIndex, Message};

use crate::desired::{Command, DesiredState, WorkloadSpec};
use crate::identity::NodeKey;
use crate::placement::NodeCapacity;
use crate::raft_codec::{command_fits, decode, encode, replica_tag, HealthyReplica, Wire, EXTRA_MAX};
use crate::reconcile::{reconcile, LeaseConfig, NodeSlot};
use crate::replica::{Catchup, Envelope, ProposeError, Replica, ReplicaConfig, ReplicaId};
use crate::snapshot::{SnapshotReceiver, SnapshotSender};
use health::Health;
pub use health::HEALTHY_FRESH_PERIODS;
use store::{StoreReport, StoreSender};
use ticket::{Tickets, PROPOSED_FULL};
pub use ticket::{TicketStatus, TICKETS_MAX, TICKET_KEPT_FOR};

/// The IPC protocol of `orchd`'s endpoint (what `apid` calls). `WRITE`: words[0] is the length
/// of a [`Wire::Propose`] in the call's grant; the answer is [`IPC_OK`] with the ticket in
/// words[0], or [`IPC_REFUSED`] / [`IPC_UNAVAILABLE`]. `TICKET`: words[0] is a ticket; the
/// answer is [`IPC_OK`] (committed; for a put, words[0..2] say what it did:
/// [`crate::put_change::PutChange::to_words`]), [`IPC_PENDING`], [`IPC_FAILED`], [`IPC_UNKNOWN`],
/// [`IPC_FULL`] or [`IPC_UNCONFIRMED`] ([`TicketStatus`] says what each means). `LIST`: words[0] is the first workload wanted; the answer is [`IPC_OK`] with
/// the length of a [`crate::listing`] page written into the call's grant in words[0].
pub const LABEL_WRITE: u64 = 1;
pub const LABEL_TICKET: u64 = 2;
pub const LABEL_LIST: u64 = 3;
/// `WANTED`: which image this node's assigned replicas wait for (docs/orchestration.md "Images
/// follow their replicas"): [`IPC_OK`] with the 32 digest bytes in the four words, or
/// [`IPC_UNKNOWN`] when none is missing. `apid` asks and fetches it from a node that has it.
pub const LABEL_WANTED: u64 = 4;
/// `LABELS`: every admitted node's labels as placement sees them (the cluster file's with the
/// committed `node label` changes over them): [`IPC_OK`] with the length of a
/// [`crate::listing::encode_labels`] table written into the call's grant in words[0].
pub const LABEL_LABELS: u64 = 5;
pub const IPC_OK: u64 = 0;
pub const IPC_REFUSED: u64 = 1;
pub const IPC_UNAVAILABLE: u64 = 2;
pub const IPC_FAILED: u64 = 3;
pub const IPC_PENDING: u64 = 4;
pub const IPC_UNKNOWN: u64 = 5;
/// The desired state has no room for the write ([`OrchConfig::write_budget`]).
pub const IPC_FULL: u64 = 6;
/// The write's outcome cannot be known here ([`TicketStatus::Unconfirmed`]).
pub const IPC_UNCONFIRMED: u64 = 7;

/// `orchd`'s heap (4 MiB) holds the log's commands, the state and the snapshot: the log is
/// refused past this many bytes ([`crate::replica::ReplicaConfig::max_log_bytes`]; with
/// compaction it stays short, this binds only while commits stall) ...
pub const NODE_LOG_BYTES: u64 = 2 * 1024 * 1024;
/// ... and an operator's write once the log and the state would take more than this, so that
/// the scheduler keeps room to place what was accepted, and the state's snapshot (a copy kept
/// in `Storage`, its encoding at most [`crate::snapshot::SNAPSHOT_MAX`]) fits beside it
/// (docs/orchestration.md, "Bounds").
pub const NODE_WRITE_BUDGET: u64 = 1024 * 1024;
/// Log compaction on nodes: a snapshot every this many applied entries (about 160 KiB of
/// realistic commands), sent in chunks to a follower behind it (crate::snapshot).
pub const NODE_SNAPSHOT_EVERY: u64 = 256;
/// ... taken once 32 more are applied, of the state before them: those 32 entries stay in
/// the log for a follower a few entries behind
/// ([`crate::replica::ReplicaConfig::snapshot_margin`]).
pub const NODE_SNAPSHOT_MARGIN: u64 = 32;

pub use crate::replica::member_of;
pub fn generation_of(id: ReplicaId) -> u64 {
    id >> 16
}
pub fn id_for(member: usize, generation: u64) -> ReplicaId {
    generation << 16 | member as u64
}

/// At most this many members (ids keep the index in 16 bits; a configuration holds at most
/// [`crate::raft_codec::CONFIG_NODES_MAX`]).
pub const MEMBERS_MAX: usize = crate::raft_codec::CONFIG_NODES_MAX;

#[derive(Clone, Debug)]
pub struct OrchConfig {
    pub replica: ReplicaConfig,
    pub lease: LeaseConfig,
    /// How long a starting node listens for an existing cluster.
    pub boot_wait: Duration,
    pub join_period: Duration,
    pub reconcile_period: Duration,
    pub capacity_period: Duration,
    /// A node whose capacity report is older than this gets nothing new placed on it.
    pub capacity_stale: Duration,
    /// A write with no outcome by then is [`TicketStatus::Unconfirmed`] (it may still take
    /// effect: the caller must look before it retries).
    pub submit_timeout: Duration,
    /// An operator's write is refused ([`SubmitError::Full`]) when the log's and the state's
    /// heap bytes plus its own would pass this.
    pub write_budget: u64,
}

impl Default for OrchConfig {
    fn default() -> Self {
        OrchConfig {
            replica: ReplicaConfig { max_log_bytes: NODE_LOG_BYTES, snapshot_every: NODE_SNAPSHOT_EVERY, snapshot_margin: NODE_SNAPSHOT_MARGIN, ..ReplicaConfig::default() },
            lease: LeaseConfig::default(),
            boot_wait: Duration::from_secs(3),
            join_period: Duration::from_secs(1),
            reconcile_period: Duration::from_millis(200),
            capacity_period: Duration::from_secs(1),
            capacity_stale: Duration::from_secs(5),
            submit_timeout: Duration::from_secs(5),
            write_budget: NODE_WRITE_BUDGET,
        }
    }
}

enum Phase {
    /// Not in the cluster file: asking the listed members which member it is
    /// ([`Wire::WhoAmI`]); a node the cluster never admitted stays here.
    Unplaced,
    /// Listening for a cluster. `existed`: a vote request of a cluster with history addressed
    /// this member (so it must not take generation 0, and waits for a leader).
    Discover { since: Duration, existed: bool },
    Running(Box<Replica>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// A command of a kind only the scheduler proposes, or one too large for a datagram.
    Refused,
    /// No leader is known, or too many writes are waiting.
    Unavailable,
    /// The desired state has no room for it ([`OrchConfig::write_budget`]).
    Full,
}


/// What happened to datagrams (for the service's log).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub undecodable: u64,
    /// The envelope's sender id is not the authenticated member's, or it names another member.
    pub misaddressed: u64,
    pub joins_proposed: u64,
    /// Joint changes proposed to take a removed member's voter out.
    pub voters_removed: u64,
    /// Members' committed states this node pulled and installed (crate::replica::Catchup).
    pub pulls_installed: u64,
}

/// The voter ids of the first member (by index) whose key the committed state removed (in
/// `node_order`, not in `nodes`), other than `me` (a removed leader is cut off by the others'
/// fabric; the next leader takes it out). Deterministic for the same configuration and state.
pub fn removed_voters(r: &Replica, members: &[NodeKey], me: usize) -> Option<Vec<ReplicaId>> {
    let st = r.state();
    let voters = r.voters();
    let m = voters.iter().map(|v| member_of(*v)).filter(|m| *m != me).find(|m| members.get(*m).is_some_and(|k| st.node_order.contains(k) && !st.nodes.contains(k)))?;
    Some(voters.into_iter().filter(|v| member_of(*v) == m).collect())
}

pub struct Orch {
    me: usize,
    /// The cluster file's members, then the keys admitted at run time in the committed
    /// admission order ([`DesiredState::node_order`]): the same numbering on every node.
    members: Vec<NodeKey>,
    /// How many of `members` the cluster file lists.
    file_len: usize,
    /// This node's key.
    own: NodeKey,
    cfg: OrchConfig,
    seed: u64,
    phase: Phase,
    /// The current id is in the configuration (an envelope addressed to it arrived, or it
    /// started the cluster under it).
    joined: bool,
    own_capacity: Option<(u32, u64)>,
    /// Each member's labels (the cluster file's `node` lines), for the scheduler's constraints.
    labels: BTreeMap<NodeKey, BTreeMap<String, String>>,
    capacities: BTreeMap<usize, (u32, u64, Duration)>,
    /// This node's image store, and each member's as it last reported it with its capacity
    /// (the scheduler prefers holders and places only where an image fits:
    /// [`crate::placement`]).
    own_store: StoreReport,
    stores: BTreeMap<usize, StoreReport>,
    store_sender: StoreSender,
    /// Which cluster replicas are healthy here and on each member (rolling updates).
    health: Health,
    outgoing: Vec<(usize, Vec<u8>)>,
    next_join: Duration,
    next_reconcile: Duration,
    next_capacity: Duration,
    tickets: Tickets,
    /// What this node's scheduler proposed since the caller last took it (for its log).
    scheduled: Vec<Command>,
    /// Snapshots over the fabric (crate::snapshot): this node's transfers as a leader, and its
    /// assembly as a follower.
    pub snap_out: SnapshotSender,
    pub snap_in: SnapshotReceiver,
    /// The current replica's pulled-state count last seen, and the earlier replicas' total.
    pulls_seen: u64,
    pulls_base: u64,
    pub counters: Counters,
    /// The digest of replica `r`'s `workd` spec ([`Orch::set_replica_digest`]).
    replica_digest: Option<ReplicaDigest>,
}

/// What `orchd` computes a replica's `workd` spec digest with (`catenary_api::cluster_state::replica_spec`,
/// which this crate cannot call): `None` for a replica `workd` would not take.
pub type ReplicaDigest = fn(&WorkloadSpec, u32) -> Option<[u8; 32]>;

impl Orch {
    /// Member `me` of `members` (the cluster file's order), starting at `now`.
    pub fn new(me: usize, members: Vec<NodeKey>, cfg: OrchConfig, seed: u64, now: Duration) -> Orch {
        let own = members.get(me).copied().unwrap_or(NodeKey([0; 32]));
        Orch::with_phase(me, members, own, cfg, seed, now, Phase::Discover { since: now, existed: false })
    }

    /// A node whose key `own` is not among the cluster file's `members`: it takes part once
    /// the cluster admitted it (`catenary node add KEY`), under the index a member tells it.
    pub fn new_unlisted(members: Vec<NodeKey>, own: NodeKey, cfg: OrchConfig, seed: u64, now: Duration) -> Orch {
        Orch::with_phase(usize::MAX, members, own, cfg, seed, now, Phase::Unplaced)
    }

    fn with_phase(me: usize, members: Vec<NodeKey>, own: NodeKey, mut cfg: OrchConfig, seed: u64, now: Duration, phase: Phase) -> Orch {
        let file_len = members.len();
        // The replica maps Raft ids to keys as `sync_members` numbers them (RemoveNode's guard).
        cfg.replica.members = members.clone();
        Orch {
            me,
            members,
            file_len,
            own,
            cfg,
            seed,
            phase,
            joined: false,
            own_capacity: None,
            labels: BTreeMap::new(),
            capacities: BTreeMap::new(),
            own_store: StoreReport::default(),
            stores: BTreeMap::new(),
            store_sender: StoreSender::default(),
            health: Health::default(),
            outgoing: Vec::new(),
            next_join: now,
            next_reconcile: now,
            next_capacity: now,
            tickets: Tickets::new(seed),
            scheduled: Vec::new(),
            snap_out: SnapshotSender::default(),
            snap_in: SnapshotReceiver::default(),
            pulls_seen: 0,
            pulls_base: 0,
            counters: Counters::default(),
            replica_digest: None,
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }
    /// This node's member index, once it has one (an unlisted node learns it when admitted).
    pub fn member_index(&self) -> Option<usize> {
        (!matches!(self.phase, Phase::Unplaced)).then_some(self.me)
    }
    /// Every member's key by index (the file's, then those admitted at run time).
    pub fn members(&self) -> &[NodeKey] {
        &self.members
    }
    pub fn replica(&self) -> Option<&Replica> {
        match &self.phase {
            Phase::Running(r) => Some(r),
            Phase::Discover { .. } | Phase::Unplaced => None,
        }
    }
    /// This node's Raft id once it has one, and whether the configuration holds it yet.
    pub fn id(&self) -> Option<(ReplicaId, bool)> {
        self.replica().map(|r| (r.id(), self.joined))
    }
    pub fn state(&self) -> Option<&DesiredState> {
        self.replica().map(|r| r.state())
    }
    /// The member that leads, as this node believes.
    pub fn leader(&self) -> Option<usize> {
        self.replica().and_then(|r| r.leader()).map(member_of)
    }

    /// The members' labels (every node reads them from the same cluster file; the leader's
    /// scheduler uses its own).
    pub fn set_labels(&mut self, labels: BTreeMap<NodeKey, BTreeMap<String, String>>) {
        self.labels = labels;
    }

    pub fn labels(&self) -> &BTreeMap<NodeKey, BTreeMap<String, String>> {
        &self.labels
    }

    /// Every node's labels: the cluster file's with the committed `node label` changes over
    /// them (what the scheduler and the listing use).
    pub fn effective_labels(&self) -> BTreeMap<NodeKey, BTreeMap<String, String>> {
        match self.state() {
            Some(s) => s.effective_labels(&self.labels),
            None => self.labels.clone(),
        }
    }

    /// A page of the committed desired state (crate::listing) from workload `start`.
    pub fn list_page(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        self.state().map(|s| crate::listing::encode_page(s, &s.effective_labels(&self.labels), start, max))
    }

    /// The labels table ([`LABEL_LABELS`]) in at most `max` bytes.
    pub fn labels_table(&self, max: usize) -> Option<Vec<u8>> {
        self.state().map(|s| crate::listing::encode_labels(s, &s.effective_labels(&self.labels), max))
    }

    /// Whether an operator's write has room: the log's and the state's heap bytes and its own
    /// within [`OrchConfig::write_budget`].
    pub fn has_room(&self, command: &Command) -> bool {
        self.replica().is_none_or(|r| r.log_bytes().saturating_add(r.state().heap_bytes()).saturating_add(command.heap_bytes()) <= self.cfg.write_budget)
    }

    /// What this node's workload service can give cluster workloads now.
    pub fn set_capacity(&mut self, vcpus: u32, mem_mib: u64) {
        self.own_capacity = Some((vcpus, mem_mib));
    }

    /// The images in this node's store (digest and size in MiB; sorted, at most
    /// [`crate::placement::IMAGES_MAX`] kept) and the room left in it (MiB), reported with
    /// the capacity.
    pub fn set_images(&mut self, images: Vec<([u8; 32], u32)>, store_free_mib: u64) {
        self.set_store(images, Vec::new(), store_free_mib);
    }

    /// [`Self::set_images`], and the uploads under way (digest and the room reserved for it,
    /// MiB; not those also held), whose room `store_free_mib` no longer includes. The held
    /// images go in [`Wire::Capacity`] and [`Wire::Store`]; the uploads only in `Store`, with
    /// the room (see `StoreReport::placement_images`), and only while `Store` has room for
    /// them beside the held ones (at most [`crate::placement::IMAGES_MAX`] in all; an upload
    /// left out is counted against the room by the scheduler: cautious).
    pub fn set_store(&mut self, held: Vec<([u8; 32], u32)>, uploading: Vec<([u8; 32], u32)>, store_free_mib: u64) {
        self.own_store = StoreReport::new(held, uploading, store_free_mib);
    }

    /// What the local service runs or is stopping now ([`Replica::set_local_runs`]).
    pub fn set_local_runs(&mut self, active: alloc::collections::BTreeSet<(String, u32)>) {
        if let Phase::Running(r) = &mut self.phase {
            r.set_local_runs(active);
        }
    }

    /// The scheduler's proposals since the last call (at most [`TICKETS_MAX`] kept).
    pub fn take_scheduled(&mut self) -> Vec<Command> {
        core::mem::take(&mut self.scheduled)
    }

    /// Datagrams to send: (member index, bytes).
    pub fn take_outgoing(&mut self) -> Vec<(usize, Vec<u8>)> {
        core::mem::take(&mut self.outgoing)
    }

    /// The cluster replicas that have run here for `catenary_workload::restart::HEALTHY_MS`
    /// without a restart, as `orchd`'s list of `workd` at `now` shows them (at most
    /// [`crate::raft_codec::HEALTHY_MAX`] are sent): reported to every member with the capacity while fresh. A
    /// node that stops telling (its `workd` does not answer) stops reporting them after
    /// [`HEALTHY_FRESH_PERIODS`] periods, and no longer counts them itself. A replica that is
    /// no longer healthy here (stopped for an update) is reported at once.
    pub fn set_healthy(&mut self, now: Duration, replicas: Vec<HealthyReplica>) {
        self.health.set_own(now, replicas);
    }

    /// Whether the node the desired state assigns replica `replica` of `workload` to reported
    /// within [`HEALTHY_FRESH_PERIODS`] capacity periods that the replica tagged `tag`
    /// ([`crate::raft_codec::replica_tag`] of its `workd` name) is healthy there: created from
    /// the spec with digest `spec`, or from any spec (`None`). This node's own report counts
    /// as soon as it is set, and goes stale alike. A report from any other node, or an older
    /// one, does not count: the replica may have moved, or its node died.
    pub fn replica_healthy(&self, workload: &str, replica: u32, tag: [u8; 8], spec: Option<&[u8; 32]>, now: Duration) -> bool {
        let Some(host) = self.replica().and_then(|r| r.state().assignments.get(&(String::from(workload), replica)).copied()) else { return false };
        let member = if host == self.own {
            None
        } else {
            let Some(m) = self.members.iter().position(|k| *k == host) else { return false };
            Some(m)
        };
        self.health.lists(member, tag, spec, now, self.healthy_fresh())
    }

    fn healthy_fresh(&self) -> Duration {
        self.cfg.capacity_period * HEALTHY_FRESH_PERIODS
    }

    /// The replicas the committed state assigns this node, while its lease holds; nothing
    /// otherwise (a node cut off from the majority stops its workloads when its lease runs out).
    pub fn assigned_now(&self, now: Duration) -> Vec<(WorkloadSpec, u32)> {
        if !self.lease_holds(now) {
            return Vec::new();
        }
        self.assigned_in_state().unwrap_or_default()
    }

    /// How replicas' `workd` spec digests are computed, so that the scheduler can tell a
    /// replica reported healthy on its desired spec (a move for room waits for the lower
    /// replicas to run it, as a rolling update does). Without it, none counts as running its
    /// desired spec.
    pub fn set_replica_digest(&mut self, f: ReplicaDigest) {
        self.replica_digest = Some(f);
    }

    /// The replicas the committed state assigns this node, whether its lease holds or not
    /// (`None` before it has a state): what `orchd` counts as held here in the capacity it
    /// reports, so that a lease gap does not make the node look over its capacity.
    pub fn assigned_in_state(&self) -> Option<Vec<(WorkloadSpec, u32)>> {
        let r = self.replica()?;
        Some(r.state().assigned_to(self.own).filter_map(|(w, i)| r.state().workloads.get(w).map(|s| (s.clone(), *i))).collect())
    }

    pub fn lease_holds(&self, now: Duration) -> bool {
        self.lease_deadline(now).is_some()
    }

    /// While this node's lease holds, the instant (on the clock `now` is on) it runs out:
    /// what `orchd` tells `workd`, which stops the cluster replicas itself once it passes
    /// (docs/orchestration.md, "workd enforces the lease"). Never later than this node's own
    /// lease, so the leader's arithmetic that bounds the overlap still holds.
    pub fn lease_deadline(&self, now: Duration) -> Option<Duration> {
        let r = self.replica()?;
        r.lease_until(now, self.cfg.lease.lease).filter(|u| self.joined && *u > now)
    }

    /// A datagram from member `from` (whose key the fabric authenticated), handled at `now`
    /// and taken to have arrived then (see [`Orch::handle_received`]).
    pub fn handle(&mut self, now: Duration, from: usize, bytes: &[u8]) {
        self.handle_received(now, now, from, bytes)
    }

    /// A datagram handled at `now` that arrived no earlier than `since` (`orchd`: when it last
    /// found its socket empty). A lease grant it carries is timed from `since`, not from
    /// `now`: a grant that waited in the socket behind a slow turn must not start its lease
    /// late (the leader's bound counts from when it sent it).
    pub fn handle_received(&mut self, now: Duration, since: Duration, from: usize, bytes: &[u8]) {
        let since = since.min(now);
        if from >= self.members.len() || from == self.me {
            self.counters.misaddressed += 1;
            return;
        }
        let Ok(w) = decode(bytes) else {
            self.counters.undecodable += 1;
            return;
        };
        if matches!(self.phase, Phase::Unplaced) {
            // Only a listed member's answer places this node.
            if let (Wire::Members { extra }, true) = (w, from < self.file_len) {
                self.place(now, extra);
            }
            return;
        }
        self.sync_members();
        match w {
            Wire::Raft(env) => {
                if member_of(env.from) != from || member_of(env.to) != self.me {
                    self.counters.misaddressed += 1;
                    return;
                }
                match &mut self.phase {
                    Phase::Discover { existed, .. } => match &env.message {
                        Message::AppendEntriesCall { .. } => {
                            // A leader counts this member as a voter: come back as the next
                            // generation and ask to replace the old id.
                            let id = id_for(self.me, generation_of(env.to) + 1);
                            self.phase = Phase::Running(Box::new(Replica::join(id, self.cfg.replica.clone(), self.seed, now)));
                            self.joined = false;
                            self.next_join = now;
                        }
                        Message::RequestVoteCall { last_position, .. } if generation_of(env.to) == 0 && last_position.index <= LogIndex::new(1) => {
                            // A cluster being created: join it as generation 0.
                            let mut r = Replica::join(env.to, self.cfg.replica.clone(), self.seed, now);
                            r.handle(now, env);
                            self.phase = Phase::Running(Box::new(r));
                            self.joined = true;
                        }
                        _ => *existed = true,
                    },
                    Phase::Running(r) => {
                        // A member with no voter that still talks Raft (its key was removed,
                        // then admitted again, and it never learnt it was out): as its `Join`.
                        let outsider = r.is_leader() && !r.voters().contains(&env.from);
                        let from_id = env.from;
                        if env.to == r.id() {
                            self.joined = true;
                            self.snap_out.on_reply(r, &env);
                            r.handle_received(now, since, env);
                        }
                        if outsider {
                            self.handle_join(now, from_id);
                        }
                    }
                    Phase::Unplaced => {}
                }
            }
            Wire::Join { id } => {
                if member_of(id) == from {
                    self.handle_join(now, id);
                }
            }
            Wire::Propose { request, command } => {
                let room = self.has_room(&command);
                let (term, index) = match &mut self.phase {
                    Phase::Running(r) if r.is_leader() && !room => (PROPOSED_FULL, 0),
                    Phase::Running(r) if Self::forwardable(&command) && command_fits(&command) => match r.propose(now, command) {
                        Ok(p) => (p.term.get(), p.index.get()),
                        Err(ProposeError::LogFull) => (PROPOSED_FULL, 0),
                        Err(_) => (0, 0),
                    },
                    _ => (0, 0),
                };
                self.push(from, &Wire::Proposed { request, term, index });
            }
            Wire::Proposed { request, term, index } => self.tickets.on_proposed(from, request, term, index),
            Wire::Capacity { vcpus, mem_mib, images } => {
                self.capacities.insert(from, (vcpus, mem_mib, now));
                self.stores.entry(from).or_default().on_capacity(images);
            }
            Wire::Store { free_mib, images } => {
                self.stores.entry(from).or_default().on_store(free_mib, images);
            }
            Wire::Healthy { replicas } => self.health.on_report(from, replicas, now),
            Wire::SnapChunk(c) => {
                if member_of(c.head.from) != from || member_of(c.head.to) != self.me {
                    self.counters.misaddressed += 1;
                    return;
                }
                let Phase::Running(r) = &mut self.phase else { return };
                if c.head.to != r.id() {
                    return;
                }
                // A leader's snapshot counts this id in; a member's pulled answer does not.
                let pulled = c.head.pulled;
                self.joined |= !pulled;
                let source = c.head.from;
                let (ack, env) = self.snap_in.on_chunk(c, r.term(), &self.cfg.replica.limits);
                if pulled && ack.is_some() {
                    r.pull_progress(now, source);
                }
                match env {
                    Some(Envelope { snapshot: Some(snap), .. }) if pulled => {
                        r.pulled(now, source, snap);
                    }
                    Some(env) => r.handle(now, env),
                    None => {}
                }
                if let Some(a) = ack {
                    self.push(from, &Wire::SnapAck(a));
                }
            }
            Wire::SnapAck(a) => {
                if member_of(a.from) != from || member_of(a.to) != self.me {
                    self.counters.misaddressed += 1;
                    return;
                }
                if let Phase::Running(r) = &self.phase {
                    if a.to == r.id() {
                        for b in self.snap_out.on_ack_if(&a, r.is_leader(), now) {
                            self.outgoing.push((from, b));
                        }
                    }
                }
            }
            Wire::Pull { from: id, to, applied } => {
                if member_of(id) != from || member_of(to) != self.me {
                    self.counters.misaddressed += 1;
                    return;
                }
                // Any generation of this member: a member with no configuration yet asks by
                // index (crate::replica::Catchup).
                if let Phase::Running(r) = &mut self.phase {
                    r.handle_pull(now, id, applied);
                }
            }
            // Vouching for a pulled state (crate::replica's `vouch`): a request is taken by any
            // generation of this member, as a pull is; an answer only by the id that asked.
            Wire::Vouch { from: id, to, position, digest } => {
                if member_of(id) != from || member_of(to) != self.me {
                    self.counters.misaddressed += 1;
                    return;
                }
                if let Phase::Running(r) = &mut self.phase {
                    r.handle_vouch(now, id, position, digest);
                }
            }
            Wire::Vouched { from: id, to, position, digest, verdict, applied } => {
                if member_of(id) != from || member_of(to) != self.me {
                    self.counters.misaddressed += 1;
                    return;
                }
                if let Phase::Running(r) = &mut self.phase {
                    if r.id() == to {
                        r.handle_vouched(now, id, position, digest, verdict, applied);
                    }
                }
            }
            Wire::WhoAmI => {
                let extra = self.members[self.file_len..].to_vec();
                self.push(from, &Wire::Members { extra });
            }
            Wire::Members { .. } => {}
        }
        self.flush(now);
    }

    /// An unlisted node learns the run-time members from a listed one: if its key is among
    /// them it is that member, and starts as any member does (listening first).
    fn place(&mut self, now: Duration, extra: Vec<NodeKey>) {
        let mut members = self.members[..self.file_len].to_vec();
        for k in extra {
            if members.contains(&k) || members.len() >= self.members_cap() {
                return; // a key twice: not an answer any member gives
            }
            members.push(k);
        }
        let Some(me) = members.iter().position(|k| *k == self.own) else { return };
        self.members = members;
        self.me = me;
        self.phase = Phase::Discover { since: now, existed: false };
        self.next_join = now;
    }

    fn members_cap(&self) -> usize {
        MEMBERS_MAX.min(self.file_len + EXTRA_MAX)
    }

    /// Number the keys the committed state admitted that the file does not list, in the
    /// committed admission order (so every node numbers them alike).
    fn sync_members(&mut self) {
        let cap = self.members_cap();
        let Phase::Running(r) = &self.phase else { return };
        let order = &r.state().node_order;
        for k in order {
            if self.members.len() >= cap {
                break;
            }
            if !self.members.contains(k) {
                self.members.push(*k);
            }
        }
    }

    /// Leader: replace member `member_of(id)`'s voter ids by `id` (a restarted node).
    fn handle_join(&mut self, now: Duration, id: ReplicaId) {
        let Phase::Running(r) = &mut self.phase else { return };
        if !r.is_leader() || r.config_changing() {
            return;
        }
        // A member is a voter only while the committed state admits it (a file member also
        // before the leader first admitted it: the cluster is being created). A removed one
        // stays out until `catenary node add` admits it again.
        let m = member_of(id);
        let st = r.state();
        let admitted = self.members.get(m).is_some_and(|k| st.nodes.contains(k) || (m < self.file_len && !st.node_order.contains(k)));
        if !admitted {
            return;
        }
        let voters = r.voters();
        if voters.contains(&id) {
            return;
        }
        let old: Vec<ReplicaId> = voters.iter().copied().filter(|v| member_of(*v) == member_of(id)).collect();
        // Only a newer generation replaces: an old datagram must not bring back a dead id.
        if old.iter().any(|o| generation_of(*o) >= generation_of(id)) || voters.len() >= MEMBERS_MAX {
            return;
        }
        if r.propose_config(now, &[id], &old).is_ok() {
            self.counters.joins_proposed += 1;
        }
    }

    /// The writes another node may forward (the API's); the scheduler's own commands and
    /// admissions are the leader's alone.
    fn forwardable(c: &Command) -> bool {
        matches!(c, Command::PutWorkload(_) | Command::RemoveWorkload(_) | Command::Drain(_) | Command::Undrain(_) | Command::AdmitNode(_) | Command::RemoveNode(_) | Command::SetLabels { .. })
    }

    /// Propose a write (the API's): on the leader directly, or forwarded to it. The ticket's
    /// outcome comes from [`Orch::ticket`].
    pub fn submit(&mut self, now: Duration, command: Command) -> Result<u64, SubmitError> {
        if !Self::forwardable(&command) || !command_fits(&command) {
            return Err(SubmitError::Refused);
        }
        self.expire_tickets(now);
        if self.tickets.full() {
            return Err(SubmitError::Unavailable);
        }
        if !self.has_room(&command) {
            return Err(SubmitError::Full);
        }
        let Phase::Running(r) = &mut self.phase else { return Err(SubmitError::Unavailable) };
        let t = match r.propose(now, command.clone()) {
            Ok(p) => self.tickets.issue(now, Some(p), None),
            Err(ProposeError::LogFull) => return Err(SubmitError::Full),
            Err(ProposeError::NotLeader { leader: Some(l) }) if member_of(l) != self.me => {
                let t = self.tickets.issue(now, None, Some(member_of(l)));
                self.push(member_of(l), &Wire::Propose { request: t, command });
                t
            }
            Err(_) => return Err(SubmitError::Unavailable),
        };
        self.flush(now);
        Ok(t)
    }

    /// A write's outcome: committed once this node's log has it committed and applied
    /// ([`TicketStatus`]). An answer other than `Pending` is given once; the ticket is gone then.
    pub fn ticket(&mut self, now: Duration, t: u64) -> TicketStatus {
        self.expire_tickets(now);
        let Phase::Running(r) = &self.phase else { return TicketStatus::Unknown };
        self.tickets.status(r, now, self.cfg.submit_timeout, t)
    }

    /// Drop the tickets nobody asked about in [`TICKET_KEPT_FOR`] submit timeouts.
    fn expire_tickets(&mut self, now: Duration) {
        self.tickets.expire(now, self.cfg.submit_timeout * TICKET_KEPT_FOR);
    }

    /// The earliest instant something is due.
    pub fn next_deadline(&self) -> Duration {
        let mut d = self.next_capacity.min(self.next_reconcile);
        match &self.phase {
            Phase::Unplaced => d = d.min(self.next_join),
            Phase::Discover { since, .. } => d = d.min(*since + self.cfg.boot_wait),
            Phase::Running(r) => {
                d = d.min(r.next_deadline());
                if !self.joined {
                    d = d.min(self.next_join);
                }
            }
        }
        d
    }

    pub fn tick(&mut self, now: Duration) {
        if matches!(self.phase, Phase::Unplaced) {
            if now >= self.next_join {
                self.next_join = now + self.cfg.join_period;
                for m in 0..self.file_len {
                    self.push(m, &Wire::WhoAmI);
                }
            }
            return;
        }
        if let Phase::Discover { since, existed } = self.phase {
            if now >= since + self.cfg.boot_wait && !existed {
                // The cluster is created over the file's members; one admitted at run time
                // is in no configuration yet and asks the leader to add it (`Join`). So does
                // every member but the creator until it is addressed: a file member removed
                // from the configuration and restarted hears nobody, and once admitted again
                // the leader adds it on this `Join` (a member already a voter ignores it).
                let n = self.file_len.min(MEMBERS_MAX);
                let r = if self.me == 0 {
                    let ids: Vec<ReplicaId> = (0..n).map(|m| id_for(m, 0)).collect();
                    Replica::bootstrap(0, &ids, self.cfg.replica.clone(), self.seed, now)
                } else {
                    Replica::join(id_for(self.me, 0), self.cfg.replica.clone(), self.seed, now)
                };
                self.phase = Phase::Running(Box::new(r));
                self.joined = self.me == 0;
                self.next_join = now;
            }
        }
        self.sync_members();
        if now >= self.next_capacity {
            self.next_capacity = now + self.cfg.capacity_period;
            if let Some((vcpus, mem_mib)) = self.own_capacity {
                self.capacities.insert(self.me, (vcpus, mem_mib, now));
                self.stores.insert(self.me, self.own_store.clone());
                let w = Wire::Capacity { vcpus, mem_mib, images: self.own_store.images.clone() };
                // the store's room and sizes: when they changed, or every few periods
                let store = self.store_sender.due(&self.own_store);
                for m in 0..self.members.len() {
                    if m != self.me {
                        self.push(m, &w);
                        if let Some(s) = &store {
                            self.push(m, s);
                        }
                    }
                }
            }
            self.health.period();
        }
        let fresh = self.healthy_fresh();
        if let Some(w) = self.health.due_report(now, fresh) {
            let me = self.me;
            for m in (0..self.members.len()).filter(|m| *m != me) {
                self.push(m, &w);
            }
        }
        if let Phase::Running(r) = &mut self.phase {
            r.tick(now);
            // Also once its own log shows it out of the configuration (its key was removed and
            // the leader took its voter out): should the key be admitted again, the leader
            // adds it back on this `Join`.
            if (!self.joined || r.out_of_config()) && now >= self.next_join {
                self.next_join = now + self.cfg.join_period;
                let id = r.id();
                for m in 0..self.members.len() {
                    if m != self.me {
                        self.push(m, &Wire::Join { id });
                    }
                }
            }
        }
        if now >= self.next_reconcile {
            self.next_reconcile = now + self.cfg.reconcile_period;
            self.schedule(now);
        }
        self.flush(now);
    }

    /// Leader: admit the cluster file's members (once), then the scheduler's moves.
    fn schedule(&mut self, now: Duration) {
        let Phase::Running(r) = &mut self.phase else { return };
        if !r.is_leader() || r.has_uncommitted() {
            return;
        }
        // Only those never admitted: a file member an operator removed (`RemoveNode`) stays out
        // until it is admitted again (`catenary node add`).
        let missing: Vec<NodeKey> = self.members[..self.file_len].iter().copied().filter(|k| !r.state().node_order.contains(k)).collect();
        if !missing.is_empty() {
            for k in missing {
                if r.propose(now, Command::AdmitNode(k)).is_err() {
                    break;
                }
            }
            return;
        }
        // A removed member's voter leaves the configuration (one member per joint change).
        // Every node's fabric dropped it when it applied the removal, and the removal's quorum
        // guard kept the admitted voters a majority of both halves of this change.
        if !r.config_changing() {
            if let Some(ids) = removed_voters(r, &self.members, self.me) {
                if r.propose_config(now, &[], &ids).is_ok() {
                    self.counters.voters_removed += 1;
                }
                return;
            }
        }
        // Every voter is a slot (one per member, its newest id), so the lease rule knows it
        // even when its capacity is unknown; a stale capacity is none.
        let mut newest: BTreeMap<usize, ReplicaId> = BTreeMap::new();
        for v in r.voters() {
            let e = newest.entry(member_of(v)).or_insert(v);
            *e = (*e).max(v);
        }
        let labels = r.state().effective_labels(&self.labels);
        let slots: Vec<NodeSlot> = newest
            .iter()
            .filter(|(m, _)| **m < self.members.len())
            .map(|(m, id)| {
                let (vcpus, mem) = self.capacities.get(m).filter(|c| now.saturating_sub(c.2) <= self.cfg.capacity_stale).map(|c| (c.0, c.1)).unwrap_or((0, 0));
                let st = self.stores.get(m).cloned().unwrap_or_default();
                let images = st.placement_images();
                let capacity = NodeCapacity {
                    key: self.members[*m],
                    free_vcpus: vcpus,
                    free_mem_mib: mem,
                    labels: labels.get(&self.members[*m]).cloned().unwrap_or_default(),
                    image_mib: st.image_mib(&images),
                    images,
                    store_free_mib: st.free_mib,
                };
                NodeSlot { id: *id, capacity }
            })
            .collect();
        let state = r.state().clone();
        // A replica is ready when the node the state assigns it to reports it healthy, on its
        // desired spec (`new`) or on any: what a move for room waits for in the workload's
        // other replicas (the node's report names replicas by workd name, `cl-NAME-R`).
        let (health, members, own, fresh, digest) = (&self.health, &self.members, self.own, self.cfg.capacity_period * HEALTHY_FRESH_PERIODS, self.replica_digest);
        let ready = |w: &str, j: u32, new: bool| {
            let Some(host) = state.assignments.get(&(String::from(w), j)) else { return false };
            let member = if *host == own { None } else { members.iter().position(|k| k == host) };
            let spec = match new {
                true => match digest.zip(state.workloads.get(w)).and_then(|(f, s)| f(s, j)) {
                    Some(d) => Some(d),
                    None => return false,
                },
                false => None,
            };
            (*host == own || member.is_some()) && health.lists(member, replica_tag(&crate::desired::replica_name(w, j)), spec.as_ref(), now, fresh)
        };
        for c in reconcile(&state, r, now, &self.cfg.lease, &slots, &ready) {
            if r.propose(now, c.clone()).is_err() {
                break;
            }
            if self.scheduled.len() < TICKETS_MAX {
                self.scheduled.push(c);
            }
        }
    }

    fn push(&mut self, to: usize, w: &Wire) {
        self.outgoing.push((to, encode(w)));
    }

    fn flush(&mut self, now: Duration) {
        let Phase::Running(r) = &mut self.phase else { return };
        // installed on a chunk, a vouch or a timeout (crate::replica's `vouch`); a pulled state
        // dropped unvouched may be assembled again
        // (a replica replaced by a new one starts counting again: its count adds to the last's)
        let n = r.pulls_installed();
        if n < self.pulls_seen {
            self.pulls_base += self.pulls_seen;
        }
        self.pulls_seen = n;
        self.counters.pulls_installed = self.pulls_base + n;
        if r.pending_pull().is_none() {
            self.snap_in.forget_pulled_above(r.applied_index().max(r.commit_index()));
        }
        for env in r.take_outgoing() {
            let to = member_of(env.to);
            if to >= self.members.len() || to == self.me {
                continue;
            }
            // A snapshot goes in chunks; anything else in one datagram.
            for b in self.snap_out.datagrams(env) {
                self.outgoing.push((to, b));
            }
        }
        // The catch-up pull (crate::replica::Catchup): requests, and answers in chunks.
        for c in r.take_catchup() {
            let (to, bytes) = match c {
                Catchup::Ask { from, to, applied } => (member_of(to), alloc::vec![encode(&Wire::Pull { from, to, applied })]),
                Catchup::Answer { env, asker_has } => (member_of(env.to), self.snap_out.pulled_datagrams(env, asker_has, now)),
                Catchup::Vouch { from, to, position, digest } => (member_of(to), alloc::vec![encode(&Wire::Vouch { from, to, position, digest })]),
                Catchup::Vouched { from, to, position, digest, verdict, applied } => (member_of(to), alloc::vec![encode(&Wire::Vouched { from, to, position, digest, verdict, applied })]),
            };
            if to < self.members.len() && to != self.me {
                self.outgoing.extend(bytes.into_iter().map(|b| (to, b)));
            }
        }
    }
}

#[path = "orch_store.rs"]
mod store;

#[path = "orch_health.rs"]
mod health;

#[path = "orch_ticket.rs"]
mod ticket;

#[cfg(test)]
#[path = "orch_tests.rs"]
mod tests;
#[cfg(test)]
#[path = "orch_admission_tests.rs"]
mod admission_tests;

