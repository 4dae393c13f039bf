//! Workloads that grow past their node's room, in the chaos runs ([`RaftSim::growth`]): a put
//! raises an unconstrained `w{k}` to [`GROWN_MIB`], more than half a node's room, preferably
//! one on a node that already holds a grown replica, so that node is over its room and the
//! scheduler must move one away (`reconcile`'s overfull move); later puts shrink them back.
//! The end check ([`RaftSim::room_converged`]): no node holds two grown replicas while a node
//! that may take one of them holds none.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;

use super::{key_of, RaftSim};
use crate::desired::{Command, DesiredState};
use crate::identity::NodeKey;
use crate::placement::NodeCapacity;

/// A grown workload's memory: more than half of the chaos runs' 65,536 MiB per node, so two
/// grown replicas never fit one node (and one always fits a node with none).
pub const GROWN_MIB: u64 = 40_000;

impl RaftSim {
    /// The grown replicas each node holds in `st`.
    fn grown_on(st: &DesiredState) -> BTreeMap<NodeKey, u32> {
        let mut on = BTreeMap::new();
        for ((w, _), k) in &st.assignments {
            if st.workloads.get(w).is_some_and(|s| s.mem_mib == GROWN_MIB) {
                *on.entry(*k).or_insert(0) += 1;
            }
        }
        on
    }

    /// The chaos schedule's growth step (after its `named`th new workload; it draws nothing
    /// from the generator itself, but its proposals send datagrams whose loss and delay are
    /// drawn, so the rest of the run differs from the one without growth): grow a workload,
    /// or shrink one back when none can grow (none unconstrained and not grown, or growing it
    /// would make the grown replicas outnumber the nodes). The count is of the schedule's own
    /// proposals, which a lost proposal can make drift from the committed state, and the
    /// nodes include drained and removed ones; the end check asks only for a node holding
    /// none, so neither makes it fail falsely.
    pub(super) fn grow_or_shrink(&mut self, named: u32) {
        let Some(st) = self.leader().and_then(|l| self.replica(l)).map(|r| r.state().clone()) else { return };
        // The schedule's own growths, and those the leader's state holds (a shrink proposed may
        // have been lost).
        let held = st.workloads.values().filter(|s| s.mem_mib == GROWN_MIB).filter_map(|s| s.name.strip_prefix('w')?.parse::<u32>().ok());
        let all: alloc::collections::BTreeSet<u32> = self.grown.iter().copied().chain(held).collect();
        let grown_replicas: u32 = all.iter().map(|k| st.workloads.get(&format!("w{k}")).map_or(2, |s| s.replicas)).sum();
        // Unconstrained (`chaos_workload`'s k % 4 == 0, or 2 with k % 8 == 6) and not grown.
        let grown_on = Self::grown_on(&st);
        let candidates: alloc::vec::Vec<(u32, u32, bool)> = (1..=named)
            .filter(|k| k % 4 == 0 || k % 8 == 6)
            .filter(|k| !self.grown.contains(k))
            .filter_map(|k| {
                let s = st.workloads.get(&format!("w{k}"))?;
                let beside = st.assignments.range((s.name.clone(), 0)..=(s.name.clone(), u32::MAX)).any(|(_, node)| grown_on.contains_key(node));
                Some((k, s.replicas, beside))
            })
            .collect();
        // Beside a grown replica first: that node is then over its room.
        let pick = candidates.iter().find(|c| c.2).or(candidates.get(named as usize % candidates.len().max(1))).copied();
        let cmd = match pick {
            Some((k, replicas, _)) if grown_replicas + replicas <= self.slots.len() as u32 => {
                let mut spec = Self::chaos_workload(k, replicas);
                spec.mem_mib = GROWN_MIB;
                self.grown.insert(k);
                Command::PutWorkload(spec)
            }
            _ => {
                let Some(k) = self.grown.iter().next().copied() else { return };
                self.grown.remove(&k);
                Command::PutWorkload(Self::chaos_workload(k, st.workloads.get(&format!("w{k}")).map_or(1, |s| s.replicas)))
            }
        };
        if self.propose(cmd) {
            self.grown_puts += 1;
        }
    }

    /// The end of a schedule: until the leader's committed state (with nothing uncommitted)
    /// holds no more grown replicas than there are nodes, shrink one back, so that everything
    /// fits once quiet (a lost shrink, or a growth committed late, can leave more).
    pub(super) fn settle_growth(&mut self, until: core::time::Duration) {
        if !self.growth {
            return;
        }
        while self.now < until {
            self.run_until(self.now + core::time::Duration::from_millis(500));
            let Some(r) = self.leader().and_then(|l| self.replica(l)) else { continue };
            if r.has_uncommitted() {
                continue;
            }
            let grown: alloc::vec::Vec<(u32, u32)> =
                r.state().workloads.values().filter(|s| s.mem_mib == GROWN_MIB).filter_map(|s| Some((s.name.strip_prefix('w')?.parse().ok()?, s.replicas))).collect();
            if grown.iter().map(|g| g.1).sum::<u32>() <= self.slots.len() as u32 {
                break;
            }
            let (k, replicas) = grown[0];
            if self.propose(Command::PutWorkload(Self::chaos_workload(k, replicas))) {
                self.grown.remove(&k);
                self.grown_puts += 1;
            }
        }
    }

    /// A `w{k}` was put at its normal size or removed: not grown (as far as the schedule knows).
    pub(super) fn not_grown(&mut self, k: u32) {
        self.grown.remove(&k);
    }

    /// Count the leader's states going from no node over its room to one.
    pub(super) fn watch_room(&mut self) {
        if !self.growth {
            return;
        }
        let Some(st) = self.leader().and_then(|l| self.replica(l)).map(|r| r.state()) else { return };
        let over = Self::grown_on(st).values().any(|n| *n > 1);
        if over && !self.overfull_now {
            self.overfull_episodes += 1;
        }
        self.overfull_now = over;
    }

    /// Once quiet: no node holds two grown replicas (more than its room) while a node that may
    /// take one of them (admitted, not drained, allowed by its constraints, holding no other
    /// replica of its workload) holds none.
    pub fn room_converged(&self, st: &DesiredState, labels: &BTreeMap<NodeKey, BTreeMap<String, String>>) -> Result<(), String> {
        let grown_on = Self::grown_on(st);
        for (k, n) in grown_on.iter().filter(|(_, n)| **n > 1) {
            for ((w, r), _) in st.assignments.iter().filter(|(_, node)| *node == k) {
                let Some(spec) = st.workloads.get(w).filter(|s| s.mem_mib == GROWN_MIB) else { continue };
                let takes = |to: &NodeKey| {
                    let node = NodeCapacity { key: *to, free_vcpus: 0, free_mem_mib: 0, labels: labels.get(to).cloned().unwrap_or_default(), images: alloc::vec![], image_mib: alloc::vec![], store_free_mib: crate::placement::STORE_UNKNOWN };
                    st.nodes.contains(to)
                        && !st.drained.contains(to)
                        && !grown_on.contains_key(to)
                        && spec.constraints.iter().all(|c| c.allows(&node))
                        && !st.assignments.range((w.clone(), 0)..=(w.clone(), u32::MAX)).any(|(_, at)| at == to)
                };
                if let Some(to) = (0..self.slots.len() as u64).map(key_of).find(|to| to != k && takes(to)) {
                    return Err(format!("node {k:?} holds {n} grown replicas ({GROWN_MIB} MiB each, {} MiB room) and {w} replica {r} did not move to {to:?}, which has room", self.capacity.1));
                }
            }
        }
        Ok(())
    }
}
