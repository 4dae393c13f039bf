//! The leader's scheduler loop: from the committed desired state and what the leader knows of
//! its peers, the `Assign`/`Unassign` commands that bring assignments to what should run.
//!
//! Safety of `replicas = 1` rests on leases ([`Replica::lease_until`]): a node runs what it is
//! assigned only while its lease holds, and a replica on a node that stopped answering is moved
//! only once that node's lease must have run out, counted from the last lease grant the leader
//! sent it (or, for grants from an earlier leader, from this leader's election plus the grant
//! window; see docs/orchestration.md for the argument). The one assumption is a bound
//! `max_delay` on how long a datagram can be in flight (and clocks that run at about the same
//! rate). A replica taken off a host that still answers (drained, removed, or its workload removed
//! or shrunk) is unassigned at once, but placed again only once that host reported applying the
//! `Unassign` or its lease must have run out ([`release_done`], `Command::Released`): the host
//! may have been cut off just after its last answer (simulator seed 2883), so no move ever
//! overlaps.
//!
//! A node whose assigned replicas no longer fit it at their desired specs (a spec grew past the
//! room its node has: its `workd` keeps the old instance, which has the room) gives one of them
//! up to a node with room ([`overfull_move`]), one replica of a workload at a time.
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::desired::{Command, DesiredState, Release, WorkloadSpec};
use crate::identity::NodeKey;
use crate::placement::{image_sizes, place, Constraint, NodeCapacity, WorkloadDemand};
use crate::replica::{Replica, ReplicaId};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// How long a lease lasts after the grant that renewed it.
    pub lease: Duration,
    /// The bound on a datagram's time in flight that the lease argument assumes.
    pub max_delay: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig { lease: Duration::from_secs(2), max_delay: Duration::from_millis(500) }
    }
}

/// A cluster node as the scheduler sees it: its Raft id and its capacity (totals: what is
/// assigned to it is subtracted here).
#[derive(Clone, Debug)]
pub struct NodeSlot {
    pub id: ReplicaId,
    pub capacity: NodeCapacity,
}

/// May `node`'s replicas be moved now? Only once every lease it may hold has run out.
pub fn lease_expired(leader: &Replica, node: ReplicaId, now: Duration, cfg: &LeaseConfig) -> bool {
    let Some(since) = leader.leader_since() else { return false };
    let from = (since + leader.grant_window()).max(leader.last_grant_sent(node).unwrap_or(Duration::ZERO));
    now > from + cfg.max_delay + cfg.lease
}

/// Has the host of a [`Release`] surely stopped the replica? Yes once it reported applying the
/// `Unassign` ([`Replica::peer_applied`]), or once every lease it got before the `Unassign`
/// committed has run out: a grant sent after the commit renews a lease only once the host has
/// applied up to the leader's commit index, the `Unassign` included; grants from earlier
/// leaders end by this leader's election plus the grant window (as in [`lease_expired`]).
/// A host the caller did not list is waited out the same way.
pub fn release_done(leader: &Replica, release: &Release, host: Option<ReplicaId>, now: Duration, cfg: &LeaseConfig) -> bool {
    if host.and_then(|h| leader.peer_applied(h)).is_some_and(|a| a >= release.at) {
        return true;
    }
    let Some(since) = leader.leader_since() else { return false };
    let from = (since + leader.grant_window()).max(leader.release_committed_at(release.at).unwrap_or(Duration::ZERO));
    now > from + cfg.max_delay + cfg.lease
}

/// The leader's view of whether `node` is up: it acknowledged within the replica's
/// `peer_down_after` (the same rule that decides whether it gets lease grants).
pub fn is_up(leader: &Replica, node: ReplicaId, now: Duration) -> bool {
    node == leader.id() || leader.last_ack(node).is_some_and(|t| now.saturating_sub(t) <= leader.peer_down_after())
}

/// The commands that move the assignments towards the desired state. Empty when nothing is to
/// do, and only from a leader. `ready(workload, replica, new)`: the replica runs healthily on
/// the node the state assigns it to, on its desired spec (`new`) or on any (what a move for
/// room waits for in the workload's other replicas, as a rolling update does).
pub fn reconcile(state: &DesiredState, leader: &Replica, now: Duration, cfg: &LeaseConfig, nodes: &[NodeSlot], ready: &dyn Fn(&str, u32, bool) -> bool) -> Vec<Command> {
    let mut out = Vec::new();
    if !leader.is_leader() {
        return out;
    }
    // Indexes, so that a pass is O((assignments + workloads × nodes) log) rather than
    // quadratic in the assignments (1,000 nodes, 10,000 workloads: docs/orchestration.md).
    let ids: BTreeMap<NodeKey, ReplicaId> = nodes.iter().map(|n| (n.capacity.key, n.id)).rev().collect();
    let id_of = |key: &NodeKey| ids.get(key).copied();
    let labels: BTreeMap<NodeKey, &NodeCapacity> = nodes.iter().map(|n| (n.capacity.key, &n.capacity)).rev().collect();
    // 0. Replicas whose old host surely stopped them may be placed again (in this same batch:
    // the `Released` is applied before the `Assign`s that follow it in the log).
    let mut held: BTreeSet<(String, u32)> = BTreeSet::new();
    for (key, rel) in &state.releases {
        if release_done(leader, rel, id_of(&rel.host), now, cfg) {
            out.push(Command::Released { workload: key.0.clone(), replica: key.1 });
        } else {
            held.insert(key.clone());
        }
    }
    // 1. Unassign what must move: workload shrunk (or put again with constraints its node
    // no longer meets), node gone, drained, or down past its lease.
    for ((w, r), key) in &state.assignments {
        let unlabelled = NodeCapacity { key: *key, free_vcpus: 0, free_mem_mib: 0, labels: BTreeMap::new(), images: Vec::new(), image_mib: Vec::new(), store_free_mib: crate::placement::STORE_UNKNOWN };
        let node = labels.get(key).copied().unwrap_or(&unlabelled);
        let shrunk = state.workloads.get(w).is_none_or(|s| *r >= s.replicas || !s.constraints.iter().all(|c| c.allows(node)));
        let gone = !state.nodes.contains(key) || state.drained.contains(key);
        let id = id_of(key);
        let up = id.is_some_and(|id| is_up(leader, id, now));
        // Every lease the host may hold has run out (for a host the caller did not list, any
        // lease from this leader's term: it never got a grant from this leader).
        let expired = lease_expired(leader, id.unwrap_or(ReplicaId::MAX), now, cfg);
        // A host that answers applies the Unassign (at the latest when its lease runs out:
        // the drain bound); one that does not may still run the replica until its lease ends.
        let movable = up || expired;
        if (shrunk || gone || !up) && movable && (shrunk || gone || expired) {
            out.push(Command::Unassign { workload: w.clone(), replica: *r });
        }
    }
    if out.iter().any(|c| matches!(c, Command::Unassign { .. })) {
        // Moves are two steps (Unassign committed, then Assign), so that a replica is never
        // assigned twice.
        return out;
    }
    // 2. Free capacity of the nodes that can take work. The images' sizes come from the
    // holders' reports; a copy already assigned to a node that does not hold its image yet
    // takes its room in that node's store. (Before the copy begins, the node's report does not
    // count it; once it has begun, the kernel's store has reserved the whole image, the room
    // reported excludes it and the node reports the upload beside that room: held, so not
    // counted here again; see `StoreReport::placement_images`.)
    let sizes = image_sizes(&nodes.iter().map(|n| n.capacity.clone()).collect::<Vec<_>>());
    let size_of = |d: &[u8; 32]| sizes.get(d).copied().unwrap_or(0);
    let mut used: BTreeMap<NodeKey, (u32, u64)> = BTreeMap::new();
    let mut copying: BTreeMap<NodeKey, BTreeSet<[u8; 32]>> = BTreeMap::new();
    for ((w, _), key) in &state.assignments {
        if let Some(s) = state.workloads.get(w) {
            let u = used.entry(*key).or_insert((0, 0));
            u.0 = u.0.saturating_add(s.vcpus);
            u.1 = u.1.saturating_add(s.replica_mem_mib());
            if labels.get(key).is_some_and(|c| !c.images.contains(&s.image)) {
                copying.entry(*key).or_default().insert(s.image);
            }
        }
    }
    let usable = |n: &&NodeSlot| state.nodes.contains(&n.capacity.key) && !state.drained.contains(&n.capacity.key) && is_up(leader, n.id, now);
    let free: Vec<NodeCapacity> = nodes
        .iter()
        .filter(usable)
        .map(|n| {
            let mut c = n.capacity.clone();
            if let Some((vcpus, mem)) = used.get(&c.key) {
                c.free_vcpus = c.free_vcpus.saturating_sub(*vcpus);
                c.free_mem_mib = c.free_mem_mib.saturating_sub(*mem);
            }
            for d in copying.get(&c.key).into_iter().flatten() {
                // the copy under way: its room is taken, and the node counts as holding the
                // image (another workload of it there needs no second copy)
                c.store_free_mib = c.store_free_mib.saturating_sub(size_of(d));
                c.images.push(*d);
                c.image_mib.clear();
            }
            c
        })
        .collect();
    // 2b. A replica that no longer fits its node moves to one with room (placed like any
    // moved replica once released; the missing ones below are placed meanwhile).
    if let Some((w, r)) = overfull_move(state, nodes.iter().filter(usable), &used, &free, &size_of, ready) {
        out.push(Command::Unassign { workload: w, replica: r });
    }
    // 3. Place the missing replicas: one `place` call for all of them (larger workloads
    // first, each placed whole or not at all; see crate::placement), the replicas a workload
    // already runs excluded by constraint.
    let mut demands = Vec::new();
    let mut missing: BTreeMap<&str, (Vec<u32>, &WorkloadSpec)> = BTreeMap::new();
    for (name, spec) in &state.workloads {
        let m: Vec<u32> = (0..spec.replicas)
            .filter(|r| !state.assignments.contains_key(&(name.clone(), *r)) && !held.contains(&(name.clone(), *r)))
            .collect();
        if m.is_empty() {
            continue;
        }
        let mut constraints = spec.constraints.clone();
        for (_, key) in state.assignments.range((name.clone(), 0)..=(name.clone(), u32::MAX)) {
            constraints.push(Constraint::NotOnNode(*key));
        }
        demands.push(WorkloadDemand { name: name.clone(), replicas: m.len() as u32, vcpus: spec.vcpus, mem_mib: spec.replica_mem_mib(), constraints, image: spec.image, image_mib: size_of(&spec.image) });
        missing.insert(name.as_str(), (m, spec));
    }
    if demands.is_empty() {
        return out;
    }
    for p in place(&free, &demands).placements {
        let Some((m, _)) = missing.get(p.workload.as_str()) else { continue };
        let Some(r) = m.get(p.replica as usize) else { continue };
        out.push(Command::Assign { workload: p.workload.clone(), replica: *r, node: p.node });
    }
    out
}

/// The node's capacity as reported is known (a stale or missing report is all zeros).
fn known(c: &NodeCapacity) -> bool {
    c.free_vcpus > 0 || c.free_mem_mib > 0
}

/// The replica to take off a node whose assigned replicas, at their desired specs, need more
/// vCPUs or memory than the node reports (`used` against the slot's totals), if any, and only
/// if `place` finds it a node with room elsewhere (otherwise its old instance, running, is
/// better than none). The room elsewhere is what is left once every replica not assigned now
/// (missing, or held for its release: an earlier move's among them) has been placed, so two
/// moves never count on the same room. Candidates: those that can go now, first the ones not
/// running their desired spec healthily (they are replaced anyway), then by memory (largest
/// first), name and index. One can go now when every replica of its workload is assigned and
/// none is held (one replica of a workload moves at a time), and the others are `ready` as a
/// rolling update's turn wants them (`replicas::Replicas`, `crate::replace`): the lower ones on
/// their desired spec, the higher ones on any; so a move and a node's own replacement never
/// take two replicas down together. Nodes in the order given, so the choice is the same for
/// the same input.
fn overfull_move<'a>(
    state: &DesiredState,
    nodes: impl Iterator<Item = &'a NodeSlot>,
    used: &BTreeMap<NodeKey, (u32, u64)>,
    free: &[NodeCapacity],
    size_of: &dyn Fn(&[u8; 32]) -> u64,
    ready: &dyn Fn(&str, u32, bool) -> bool,
) -> Option<(String, u32)> {
    let over: Vec<&NodeSlot> = nodes
        .filter(|n| known(&n.capacity) && used.get(&n.capacity.key).is_some_and(|(v, m)| *v > n.capacity.free_vcpus || *m > n.capacity.free_mem_mib))
        .collect();
    if over.is_empty() {
        return None;
    }
    let demand = |w: &String, spec: &WorkloadSpec, replicas: u32, extra: Option<NodeKey>| {
        let mut constraints = spec.constraints.clone();
        for (_, key) in state.assignments.range((w.clone(), 0)..=(w.clone(), u32::MAX)) {
            constraints.push(Constraint::NotOnNode(*key));
        }
        constraints.extend(extra.map(Constraint::NotOnNode));
        WorkloadDemand { name: w.clone(), replicas, vcpus: spec.vcpus, mem_mib: spec.replica_mem_mib(), constraints, image: spec.image, image_mib: size_of(&spec.image) }
    };
    // The room the unassigned replicas will take.
    let pending: Vec<WorkloadDemand> = state
        .workloads
        .iter()
        .filter_map(|(w, s)| {
            let n = (0..s.replicas).filter(|r| !state.assignments.contains_key(&(w.clone(), *r))).count() as u32;
            (n > 0).then(|| demand(w, s, n, None))
        })
        .collect();
    let mut after: Vec<NodeCapacity> = free.to_vec();
    if !pending.is_empty() {
        let by_name: BTreeMap<&str, &WorkloadDemand> = pending.iter().map(|d| (d.name.as_str(), d)).collect();
        for p in place(free, &pending).placements {
            if let (Some(d), Some(c)) = (by_name.get(p.workload.as_str()), after.iter_mut().find(|c| c.key == p.node)) {
                c.free_vcpus = c.free_vcpus.saturating_sub(d.vcpus);
                c.free_mem_mib = c.free_mem_mib.saturating_sub(d.mem_mib);
            }
        }
    }
    for n in over {
        let key = n.capacity.key;
        let mut here: Vec<(bool, &String, u32, &WorkloadSpec)> = state
            .assignments
            .iter()
            .filter(|(_, k)| **k == key)
            .filter_map(|((w, r), _)| state.workloads.get(w).map(|s| (ready(w, *r, true), w, *r, s)))
            .collect();
        here.sort_by(|a, b| a.0.cmp(&b.0).then(b.3.mem_mib.cmp(&a.3.mem_mib)).then(a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
        for (_, w, r, spec) in here {
            let can_go = (0..spec.replicas).all(|j| j == r || (state.assignments.contains_key(&(w.clone(), j)) && ready(w, j, j < r)));
            // (a node with an unknown capacity has none free: place refuses it)
            if can_go && !place(&after, core::slice::from_ref(&demand(w, spec, 1, Some(key)))).placements.is_empty() {
                return Some((w.clone(), r));
            }
        }
    }
    None
}
