//! The deterministic simulator for the replicated desired state: Raft replicas, the leader's
//! scheduler and the nodes that run what they are assigned, over the same seeded lossy network
//! as [`crate::sim`], with crashes (storage kept, as on a disk), restarts and partitions.
//!
//! After every event it checks:
//! - **election safety**: at most one leader per term, ever;
//! - **state machine safety**: no two nodes apply different commands at one log index;
//! - **no accepted write lost**: every proposal the cluster acknowledged (committed at the node
//!   that took it) is in the log of every later leader;
//! - **one runner**: a `replicas = 1` workload never runs on two nodes at once (a node runs an
//!   assignment only while its lease holds), not even while it is moved off a drained or
//!   removed node;
//! - **spread**: no node holds two replicas of one workload.
//!
//! Every message crosses the network as the bytes `orchd` sends (`raft_codec`, one datagram
//! each, an AppendEntries cut to fit): the network drops, duplicates and reorders datagrams,
//! and a snapshot travels as chunks and acknowledgements ([`crate::snapshot`]) exactly as
//! between nodes. A datagram that does not decode is a violation.
//!
//! [`RaftSim::converged`] then says whether, once quiet, every node agrees on the desired state
//! and on what runs where, and every acknowledged workload is there.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use raftbare::LogPosition;

use crate::desired::{Command, RestartPolicy, WorkloadSpec};
use crate::identity::NodeKey;
use crate::placement::{Constraint, NodeCapacity};
use crate::reconcile::{reconcile, LeaseConfig, NodeSlot};
use crate::replica::{Replica, ReplicaConfig, ReplicaId, Storage};
use crate::snapshot::{SnapshotReceiver, SnapshotSender};
use crate::sim::{NetConfig, SimRng};

mod checks;
mod growth;
mod net;
mod runners;
mod scenario;

pub use scenario::{raft_chaos, raft_chaos_run, raft_chaos_run_with, raft_chaos_with, ChaosStats};

/// How often a leader runs its scheduler.
const RECONCILE_EVERY: Duration = Duration::from_millis(100);
/// The simulator's log compaction threshold (the nodes' default is 1024).
pub const SIM_SNAPSHOT_EVERY: u64 = 16;

struct Slot {
    replica: Option<Replica>,
    /// What survives a crash.
    disk: Option<Storage>,
    group: u32,
    /// Bumped by a restart without storage: the node comes back as a new Raft member, id
    /// `generation << 16 | slot` (as `crate::orch` numbers them).
    generation: u64,
    /// How many of the replica's applied positions were checked already.
    checked: usize,
    next_reconcile: Duration,
    /// The node's snapshot transfers (in memory: a crash loses them).
    tx: SnapshotSender,
    rx: SnapshotReceiver,
    /// With a stop delay ([`RaftSim::set_stop_delay`]): what the node ran at the last event,
    /// and the replicas it is still stopping (until when).
    ran: BTreeSet<(String, u32)>,
    stopping: BTreeMap<(String, u32), Duration>,
    /// The nodes this node's `netd` drops ([`RaftSim::sync_netd`]): kept across a replica's
    /// restart, as `netd` keeps what a predecessor `orchd` handed it.
    netd_drops: BTreeSet<u64>,
}

pub struct RaftSim {
    pub now: Duration,
    rng: SimRng,
    pub net: NetConfig,
    pub lease: LeaseConfig,
    cfg: ReplicaConfig,
    seed: u64,
    slots: Vec<Slot>,
    capacity: (u32, u64),
    /// Datagrams in flight: (from id, to id, bytes).
    queue: BTreeMap<(Duration, u64), (ReplicaId, ReplicaId, Vec<u8>)>,
    seq: u64,
    leaders: BTreeMap<u64, ReplicaId>,
    applied_at: BTreeMap<u64, u64>,
    /// Acknowledged proposals: position and workload name.
    pub accepted: Vec<(LogPosition, String)>,
    /// The term of the node that acknowledged each (same order): every leader of that term or
    /// a later one must hold it (Raft's leader completeness).
    accepted_term: Vec<u64>,
    pending: Vec<(ReplicaId, LogPosition, String)>,
    /// Drains happened: overlaps up to one lease are allowed from then on.
    pub drains: u32,
    /// The chaos schedule relabels nodes (`SetLabels`) as it puts workloads.
    pub relabels: bool,
    /// The chaos schedule grows workloads past half a node's room and shrinks them back as it
    /// puts workloads ([`growth`]).
    pub growth: bool,
    /// The workloads (`w{k}`) it grew and has not shrunk or removed since.
    grown: BTreeSet<u32>,
    /// Growths and shrinks proposed, and the times a leader's state went from no node over its
    /// room to one (each must be resolved by a move once a node has room).
    pub grown_puts: u64,
    pub overfull_episodes: u64,
    overfull_now: bool,
    /// The chaos schedule removes down nodes (`RemoveNode`) as it puts workloads (from their
    /// count, not the generator), and admits them again once healed.
    pub removals: bool,
    /// `RemoveNode` proposals the chaos schedule made (a leader took them; the guard may refuse).
    pub removals_proposed: u64,
    /// Nodes a removal was proposed for (committed or not yet): the crash budget counts them as
    /// down from the proposal on (a removal that commits after another crash would otherwise
    /// be a second failure the budget did not allow: seed 401).
    removing: BTreeSet<u64>,
    /// Joint changes a leader proposed to take a removed node's voter out, and to add an
    /// admitted node with no voter back.
    pub voters_taken_out: u64,
    pub voters_added_back: u64,
    /// Workloads a `RemoveWorkload` was proposed for (whether it committed is not tracked):
    /// the end check does not require them.
    removed: BTreeSet<String>,
    pub violations: Vec<String>,
    /// Every leader change and commit, for replay comparison.
    pub trace: Vec<(Duration, ReplicaId, u64, u64)>,
    pub delivered: u64,
    /// Debugging a seed: every event's node states inside this window go to `notes`.
    pub debug_window: Option<(Duration, Duration)>,
    pub notes: Vec<String>,
    /// Check after every event that each node's storage is current, and that a restart
    /// restores its term, vote and log.
    pub check_storage: bool,
    pub restarts_checked: u32,
    /// How long a node takes to stop a replica unassigned from it while its lease holds (as
    /// `orchd` through `workd`: not at once); zero: at once. See [`RaftSim::set_stop_delay`].
    stop_delay: Duration,
    /// Snapshots taken and installed by nodes that crashed since (the live ones are added by
    /// [`RaftSim::snapshots`]).
    snapshots_gone: (u64, u64),
    /// Compactions a leader put off for a follower ([`Replica::compactions_held`]), of
    /// replicas that crashed.
    held_gone: u64,
    /// Snapshot chunks delivered, and snapshots assembled from chunks and handed to a replica
    /// (over the whole run).
    pub chunks_delivered: u64,
    pub snapshots_assembled: u64,
    /// The longest snapshot assembled (bytes).
    pub largest_snapshot: usize,
    /// Replicas the leaders' schedulers assigned (proposed), and of those the ones assigned to
    /// a node whose store lacks the workload's image (a copy over the fabric on a node).
    pub assigns: u64,
    pub assigns_without_image: u64,
    /// Pulled states installed by nodes that crashed since (crate::replica::Catchup).
    pulls_gone: u64,
    /// Slots below this are the cluster file's members as `netd` knows them: a restarted
    /// `orchd` with a state hands them to its `netd` as admissions again
    /// (crate::service::FabricHand::at_orchd_start), unless its state removes them. Slots from here stand for keys admitted at run time,
    /// which a `netd` that dropped them keeps dropping until the node's state admits them again
    /// (their numbering and first admission stay the file's: a simplification). Default: all.
    pub file_len: usize,
}

/// The node (slot) a Raft id belongs to.
pub fn slot_of(id: ReplicaId) -> ReplicaId {
    id & 0xffff
}

pub fn key_of(id: ReplicaId) -> NodeKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(id + 1).to_le_bytes());
    NodeKey(k)
}

impl RaftSim {
    /// `n` nodes, each with `vcpus` and `mem_mib` free; node 0 creates the cluster. The log is
    /// compacted every [`SIM_SNAPSHOT_EVERY`] entries (small, so that runs exercise snapshots).
    pub fn new(n: usize, seed: u64, net: NetConfig, vcpus: u32, mem_mib: u64) -> RaftSim {
        RaftSim::with_config(n, seed, net, vcpus, mem_mib, ReplicaConfig { snapshot_every: SIM_SNAPSHOT_EVERY, ..ReplicaConfig::default() })
    }

    pub fn with_config(n: usize, seed: u64, net: NetConfig, vcpus: u32, mem_mib: u64, mut cfg: ReplicaConfig) -> RaftSim {
        let ids: Vec<ReplicaId> = (0..n as u64).collect();
        // Slot i is member i, its key `key_of(i)` (the cluster file's order).
        cfg.members = (0..n as u64).map(key_of).collect();
        let mut slots = Vec::new();
        for id in 0..n as u64 {
            let r = if id == 0 { Replica::bootstrap(id, &ids, cfg.clone(), seed, Duration::ZERO) } else { Replica::join(id, cfg.clone(), seed, Duration::ZERO) };
            slots.push(Slot { replica: Some(r), disk: None, group: 0, generation: 0, checked: 0, next_reconcile: Duration::ZERO, tx: SnapshotSender::default(), rx: SnapshotReceiver::default(), ran: BTreeSet::new(), stopping: BTreeMap::new(), netd_drops: BTreeSet::new() });
        }
        // The delay bound the leases assume: the network's own.
        let lease = LeaseConfig { max_delay: net.max_delay, ..LeaseConfig::default() };
        let mut sim = RaftSim {
            now: Duration::ZERO,
            rng: SimRng::new(seed),
            net,
            lease,
            cfg,
            seed,
            slots,
            capacity: (vcpus, mem_mib),
            queue: BTreeMap::new(),
            seq: 0,
            leaders: BTreeMap::new(),
            applied_at: BTreeMap::new(),
            accepted: Vec::new(),
            accepted_term: Vec::new(),
            pending: Vec::new(),
            drains: 0,
            relabels: false,
            growth: false,
            grown: BTreeSet::new(),
            grown_puts: 0,
            overfull_episodes: 0,
            overfull_now: false,
            removals: false,
            removals_proposed: 0,
            removing: BTreeSet::new(),
            voters_taken_out: 0,
            voters_added_back: 0,
            assigns: 0,
            assigns_without_image: 0,
            removed: BTreeSet::new(),
            violations: Vec::new(),
            trace: Vec::new(),
            delivered: 0,
            debug_window: None,
            notes: Vec::new(),
            check_storage: false,
            restarts_checked: 0,
            snapshots_gone: (0, 0),
            held_gone: 0,
            chunks_delivered: 0,
            snapshots_assembled: 0,
            largest_snapshot: 0,
            stop_delay: Duration::ZERO,
            pulls_gone: 0,
            file_len: n,
        };
        sim.flush_all();
        sim
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn replica(&self, id: ReplicaId) -> Option<&Replica> {
        self.slots[id as usize].replica.as_ref()
    }

    pub fn is_up(&self, id: ReplicaId) -> bool {
        self.slots[id as usize].replica.is_some()
    }

    /// The node (slot) whose replica leads the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.slots.iter().filter_map(|s| s.replica.as_ref()).filter(|r| r.is_leader()).max_by_key(|r| r.term()).map(|r| slot_of(r.id()))
    }

    /// Node `slot`'s current Raft id.
    pub fn raft_id(&self, slot: ReplicaId) -> ReplicaId {
        self.slots[slot as usize].generation << 16 | slot
    }

    /// Diskless restarts so far, and how many of those nodes are voters again.
    pub fn diskless_restarts(&self) -> u64 {
        self.slots.iter().map(|s| s.generation).sum()
    }

    /// Nodes that cannot count towards a majority: down, or back without storage and not yet
    /// the only voter of theirs under their new id (in the leader's configuration; during the
    /// joint configuration the old id still counts in the old majority and is dead; with no
    /// leader, every node that came back without storage counts).
    /// A node whose key the leader's state removed (its fabric is cut), or that has no voter in
    /// the leader's configuration (taken out, not yet added back) counts too.
    /// With no leader, the running node furthest ahead stands in for it (a removed node is
    /// as good as down whether or not someone leads just now), and a node whose removal the
    /// chaos schedule proposed counts from the proposal on.
    pub fn unavailable(&self) -> usize {
        let ahead = self.slots.iter().filter_map(|s| s.replica.as_ref()).max_by_key(|r| (r.commit_index(), r.id()));
        let leader = self.leader().and_then(|l| self.replica(l)).or(ahead);
        let voters = leader.map(|r| r.voters()).unwrap_or_default();
        let removed = |s: u64| leader.is_some_and(|r| !r.state().nodes.contains(&key_of(s)) && r.state().node_order.contains(&key_of(s)));
        (0..self.slots.len() as u64)
            .filter(|s| {
                let mine: Vec<&ReplicaId> = voters.iter().filter(|v| slot_of(**v) == *s).collect();
                !self.is_up(*s) || removed(*s) || self.removing.contains(s) || (leader.is_some() && mine.is_empty()) || (self.slots[*s as usize].generation > 0 && mine != [&self.raft_id(*s)])
            })
            .count()
    }

    /// Restart node `slot` without its storage (a diskless node): it comes back as the next
    /// generation, a new and empty Raft member, and the leader replaces its old id by the new
    /// one with a configuration change (`RaftSim::run_scheduler`, as `crate::orch` does on a
    /// `Join`). Its empty log gets the leader's snapshot.
    pub fn restart_diskless(&mut self, slot: ReplicaId) {
        self.crash(slot);
        let s = &mut self.slots[slot as usize];
        s.disk = None;
        s.generation += 1;
        self.restart(slot);
    }

    /// Model a local service that stops an unassigned replica `d` after its `Unassign` applied
    /// (`orchd` asks `workd`, which stops the microVM): the node keeps running it that long
    /// (a lease that runs out still stops everything at once), and tells its replica what
    /// runs ([`Replica::set_local_runs`], with [`ReplicaConfig::local_host`] set), which then
    /// reports the `Unassign` applied only once it stopped. The one-runner check counts the
    /// replicas being stopped.
    pub fn set_stop_delay(&mut self, d: Duration) {
        self.stop_delay = d;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(r) = s.replica.as_mut() {
                r.set_local_host(Some(key_of(i as u64)));
            }
        }
    }

    pub fn crash(&mut self, slot: ReplicaId) {
        let s = &mut self.slots[slot as usize];
        // A crash stops everything the node ran.
        s.ran.clear();
        s.stopping.clear();
        if let Some(r) = s.replica.take() {
            let id = r.id();
            if self.check_storage {
                let back = Replica::restart(id, r.storage().clone(), self.cfg.clone(), 0, self.now);
                if back.term() != r.term() || back.voted_for() != r.voted_for() || back.log() != r.log() {
                    self.violations.push(format!("{:?}: node {id} restarted with term {} vote {:?}, had term {} vote {:?}", self.now, back.term(), back.voted_for(), r.term(), r.voted_for()));
                }
                self.restarts_checked += 1;
            }
            s.disk = Some(r.storage().clone());
            s.tx = SnapshotSender::default();
            s.rx = SnapshotReceiver::default();
            self.snapshots_gone.0 += r.snapshots_taken();
            self.snapshots_gone.1 += r.snapshots_installed();
            self.held_gone += r.compactions_held;
            self.pulls_gone += r.pulls_installed();
        }
    }

    /// Committed states pulled from a member and installed (crate::replica::Catchup), over
    /// the whole run.
    pub fn pulls_installed(&self) -> u64 {
        self.pulls_gone + self.slots.iter().filter_map(|s| s.replica.as_ref()).map(|r| r.pulls_installed()).sum::<u64>()
    }

    /// Snapshots taken (log compaction) and installed from a leader, over the whole run.
    pub fn snapshots(&self) -> (u64, u64) {
        let live = self.slots.iter().filter_map(|s| s.replica.as_ref());
        live.fold(self.snapshots_gone, |(t, i), r| (t + r.snapshots_taken(), i + r.snapshots_installed()))
    }

    /// Compactions leaders put off because a follower still needed the entries.
    pub fn compactions_held(&self) -> u64 {
        self.slots.iter().filter_map(|s| s.replica.as_ref()).fold(self.held_gone, |h, r| h + r.compactions_held)
    }

    pub fn restart(&mut self, slot: ReplicaId) {
        let (now, cfg) = (self.now, self.cfg.clone());
        let seed = self.seed ^ self.now.as_micros() as u64;
        let id = self.raft_id(slot);
        let s = &mut self.slots[slot as usize];
        if s.replica.is_some() {
            return;
        }
        let with_storage = s.disk.is_some();
        let mut r = match s.disk.take() {
            Some(d) => Replica::restart(id, d, cfg, seed, now),
            None => Replica::join(id, cfg, seed, now),
        };
        if !self.stop_delay.is_zero() {
            r.set_local_host(Some(key_of(slot)));
        }
        // A new `orchd` that has a state hands netd the file's members again (those its state
        // removes are dropped again at the next sync); one without a state hands nothing until
        // it learns one (`FabricHand::unsure_todo`: a removed member must not be let back in
        // to answer its pull). Keys admitted at run time stay as netd had them.
        if with_storage {
            let file_len = self.file_len as u64;
            s.netd_drops.retain(|o| *o >= file_len);
        }
        s.replica = Some(r);
        s.checked = 0;
        self.flush(slot);
    }

    /// Nodes in different groups cannot talk.
    pub fn partition(&mut self, groups: &[&[ReplicaId]]) {
        for (g, members) in groups.iter().enumerate() {
            for id in *members {
                self.slots[*id as usize].group = g as u32 + 1;
            }
        }
    }

    pub fn heal(&mut self) {
        for s in &mut self.slots {
            s.group = 0;
        }
    }

    /// Propose through the current leader; false when there is none.
    pub fn propose(&mut self, cmd: Command) -> bool {
        let Some(l) = self.leader() else { return false };
        let name = match &cmd {
            Command::PutWorkload(s) => s.name.clone(),
            _ => String::new(),
        };
        if matches!(cmd, Command::Drain(_)) {
            self.drains += 1;
        }
        if let Command::RemoveWorkload(w) = &cmd {
            self.removed.insert(w.clone());
        }
        let now = self.now;
        let r = self.slots[l as usize].replica.as_mut().unwrap();
        match r.propose(now, cmd) {
            Ok(pos) => {
                if !name.is_empty() {
                    self.pending.push((l, pos, name));
                }
                self.flush(l);
                true
            }
            Err(_) => false,
        }
    }

    /// Node `id`'s labels: `zone` = `z0`, `z1`, `z2` round the nodes.
    pub fn labels_of(id: ReplicaId) -> BTreeMap<String, String> {
        [("zone".to_string(), format!("z{}", id % 3))].into()
    }

    /// The images node `id` holds: every second node has the chaos workloads' image, so the
    /// scheduler's preference for holders decides ties (placement stays a pure function).
    pub fn images_of(id: ReplicaId) -> Vec<[u8; 32]> {
        if id.is_multiple_of(2) {
            vec![[0xab; 32]]
        } else {
            vec![]
        }
    }

    /// Every node's labels, by key.
    pub fn labels(&self) -> BTreeMap<NodeKey, BTreeMap<String, String>> {
        (0..self.slots.len() as u64).map(|id| (key_of(id), Self::labels_of(id))).collect()
    }

    /// The chaos runs' `w{k}`: every fourth not in zone `z{k % 3}`, every fourth (another)
    /// only in it (with two replicas and three nodes, unplaceable). Fixed by the name, so that
    /// a workload put again has the constraints it had.
    /// Each carries 1,000 bytes of environment, so that the snapshots of a run span more chunks
    /// than one window ([`crate::snapshot::WINDOW`]) and their transfers resume on
    /// acknowledgements.
    pub fn chaos_workload(k: u32, replicas: u32) -> WorkloadSpec {
        let mut w = Self::workload(&format!("w{k}"), replicas, 64);
        w.env.push((String::from("PAD"), "p".repeat(1000)));
        let zone = (String::from("zone"), format!("z{}", k % 3));
        match k % 4 {
            1 => w.constraints.push(Constraint::LabelNotEquals { key: zone.0, value: zone.1 }),
            3 => w.constraints.push(Constraint::LabelEquals { key: zone.0, value: zone.1 }),
            // Off the nodes a relabel marked `tier=t1` (the chaos runs relabel nodes).
            2 if k % 8 == 2 => w.constraints.push(Constraint::LabelNotEquals { key: "tier".into(), value: "t1".into() }),
            _ => {}
        }
        w
    }

    pub fn workload(name: &str, replicas: u32, mem_mib: u64) -> WorkloadSpec {
        WorkloadSpec {
            health: None,
            name: name.to_string(),
            image: [0xab; 32],
            replicas,
            vcpus: 1,
            mem_mib,
            env: vec![],
            args: vec![],
            restart: RestartPolicy::Always,
            constraints: vec![],
        }
    }

    /// Admit every node (what `catenary cluster new` writes into the initial state).
    pub fn admit_all(&mut self) -> bool {
        (0..self.slots.len() as u64).all(|id| self.propose(Command::AdmitNode(key_of(id))))
    }

    /// The nodes as `id`'s scheduler sees them: labels from [`Self::labels_of`] with the
    /// committed `SetLabels` of `id`'s state over them (as `Orch` does with the cluster file's).
    fn node_slots(&self, id: ReplicaId) -> Vec<NodeSlot> {
        let labels = match self.slots[id as usize].replica.as_ref() {
            Some(r) => r.state().effective_labels(&self.labels()),
            None => self.labels(),
        };
        (0..self.slots.len() as u64)
            .map(|id| NodeSlot {
                id: self.raft_id(id),
                capacity: NodeCapacity { key: key_of(id), free_vcpus: self.capacity.0, free_mem_mib: self.capacity.1, labels: labels.get(&key_of(id)).cloned().unwrap_or_default(), images: Self::images_of(id), image_mib: Vec::new(), store_free_mib: crate::placement::STORE_UNKNOWN },
            })
            .collect()
    }

    /// Run events until `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.now < until {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self
                .slots
                .iter()
                .filter_map(|s| s.replica.as_ref().map(|r| r.next_deadline().min(s.next_reconcile)))
                .min();
            let next = [next_msg, next_timer, Some(until)].into_iter().flatten().min().unwrap().max(self.now);
            self.now = next;
            if self.now >= until && next_msg.is_none_or(|m| m > until) && next_timer.is_none_or(|t| t > until) {
                break;
            }
            // Messages due now.
            while let Some((&(at, seq), _)) = self.queue.iter().next() {
                if at > self.now {
                    break;
                }
                let (from_id, to_id, bytes) = self.queue.remove(&(at, seq)).unwrap();
                let (to, from) = (slot_of(to_id) as usize, slot_of(from_id) as usize);
                if to >= self.slots.len() || from >= self.slots.len() || self.slots[to].group != self.slots[from].group || self.fabric_drops(from, to) {
                    continue;
                }
                // A datagram to an older generation of the node finds nobody (a pull: any
                // generation of the member takes it, as `Orch` does).
                if self.slots[to].replica.as_ref().is_some_and(|r| r.id() == to_id || crate::raft_codec::is_pull(&bytes)) {
                    self.deliver(to_id, &bytes);
                }
            }
            // Timers and the leaders' scheduler.
            for id in 0..self.slots.len() as u64 {
                let now = self.now;
                let Some(r) = self.slots[id as usize].replica.as_mut() else { continue };
                if r.next_deadline() <= now {
                    r.tick(now);
                }
                self.flush(id);
                if self.slots[id as usize].next_reconcile <= now {
                    self.slots[id as usize].next_reconcile = now + RECONCILE_EVERY;
                    self.run_scheduler(id);
                }
            }
            self.after_step();
        }
    }

    fn run_scheduler(&mut self, id: ReplicaId) {
        let slots = self.node_slots(id);
        let now = self.now;
        let Some(r) = self.slots[id as usize].replica.as_mut() else { return };
        if !r.is_leader() || r.has_uncommitted() {
            return;
        }
        // One configuration change at a time (as `crate::orch`'s leader): a removed member's
        // voter out; then a node back without storage replaces its old id (orch's `Join`,
        // only a newer generation replacing an older one), and an admitted node with no voter
        // (removed, then admitted again) is added.
        if !r.config_changing() {
            if let Some(ids) = crate::orch::removed_voters(r, &self.cfg.members, id as usize) {
                if r.propose_config(now, &[], &ids).is_ok() {
                    self.voters_taken_out += 1;
                }
                self.flush(id);
                return;
            }
            let voters = r.voters();
            let admitted = |id: ReplicaId| r.state().nodes.contains(&key_of(slot_of(id)));
            // (The first node that qualifies: a removed one waiting is no reason to skip it.)
            for new in slots.iter().map(|s| s.id).filter(|id| !voters.contains(id)) {
                let old: Vec<ReplicaId> = voters.iter().copied().filter(|v| slot_of(*v) == slot_of(new) && *v >> 16 < new >> 16).collect();
                let none = !voters.iter().any(|v| slot_of(*v) == slot_of(new));
                // Only while admitted (orch's `handle_join`): a removed node stays out.
                if (!old.is_empty() || none) && admitted(new) {
                    if r.propose_config(now, &[new], &old).is_ok() && none {
                        self.voters_added_back += 1;
                    }
                    self.flush(id);
                    return;
                }
            }
        }
        // (health is not simulated: every assigned replica counts as ready)
        let cmds = reconcile(r.state(), r, now, &self.lease, &slots, &|_, _, _| true);
        for c in cmds {
            let without_image = match &c {
                Command::Assign { workload, node, .. } => Some(
                    r.state().workloads.get(workload).is_some_and(|w| !slots.iter().any(|s| s.capacity.key == *node && s.capacity.images.contains(&w.image))),
                ),
                _ => None,
            };
            if r.propose(now, c).is_err() {
                break;
            }
            if let Some(without) = without_image {
                self.assigns += 1;
                self.assigns_without_image += u64::from(without);
            }
        }
        self.flush(id);
    }
}
