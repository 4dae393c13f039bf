//! The invariants checked after every event (election safety, state machine safety, no
//! acknowledged write lost, spread, constraints, one runner) and the end check, [`RaftSim::converged`].

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{key_of, RaftSim};
use crate::placement::NodeCapacity;
use crate::replica::Replica;

impl RaftSim {
    pub(super) fn after_step(&mut self) {
        let now = self.now;
        if self.debug_window.is_some_and(|(a, b)| now >= a && now <= b) {
            for (id, s) in self.slots.iter().enumerate() {
                if let Some(r) = &s.replica {
                    let e = r.log().entries();
                    let tail: Vec<u64> = (e.last_position().index.get().saturating_sub(4)..=e.last_position().index.get())
                        .filter_map(|i| e.get_term(raftbare::LogIndex::new(i)).map(|t| t.get()))
                        .collect();
                    self.notes.push(format!("{now:?} n{id} g{} {:?} t{} commit {} last {:?} tail-terms {tail:?} voted {:?}", s.group, r.role(), r.term(), r.commit_index(), e.last_position().index.get(), r.storage().voted_for.map(|v| v.get())));
                } else {
                    self.notes.push(format!("{now:?} n{id} down"));
                }
            }
        }
        // Acknowledged proposals.
        let mut still = Vec::new();
        for (node, pos, name) in core::mem::take(&mut self.pending) {
            match self.slots[node as usize].replica.as_ref().map(|r| (r.commit_status(pos), r.term())) {
                Some((s, term)) if s.is_committed() => {
                    self.accepted.push((pos, name));
                    self.accepted_term.push(term);
                }
                Some((s, _)) if s.is_in_progress() => still.push((node, pos, name)),
                _ => {}
            }
        }
        self.pending = still;
        for id in 0..self.slots.len() {
            let Some(r) = self.slots[id].replica.as_ref() else { continue };
            if self.check_storage && !r.storage_is_current() {
                self.violations.push(format!("{now:?}: node {id}'s storage is behind its state"));
            }
            // Election safety.
            if r.is_leader() {
                let l = *self.leaders.entry(r.term()).or_insert(r.id());
                if l != r.id() {
                    self.violations.push(format!("{now:?}: two leaders in term {}: {l} and {}", r.term(), r.id()));
                }
                if self.trace.last().is_none_or(|t| t.1 != r.id() || t.2 != r.term()) {
                    self.trace.push((now, r.id(), r.term(), r.commit_index()));
                }
                // Every acknowledged write is in the leader's log.
                // (Leaders of that term or later: a deposed leader of an older term, cut off
                // from the majority, may lack what was committed after it.)
                // (Or compacted into its snapshot: it was committed, and state machine safety
                // checks the applied entries.)
                let snap = r.log().snapshot_position().index;
                for ((pos, name), ack_term) in self.accepted.iter().zip(&self.accepted_term) {
                    if r.term() >= *ack_term && pos.index > snap && !r.log().entries().contains(*pos) {
                        self.violations.push(format!("{now:?}: leader {} (term {}) lacks acknowledged {name} at {pos:?}", r.id(), r.term()));
                    }
                }
            }
            // State machine safety.
            let from = self.slots[id].checked.saturating_sub(r.applied_dropped()).min(r.applied().len());
            for pos in &r.applied()[from..] {
                let t = *self.applied_at.entry(pos.index.get()).or_insert(pos.term.get());
                if t != pos.term.get() {
                    self.violations.push(format!("{now:?}: node {id} applied term {} at index {}, another node term {t}", pos.term.get(), pos.index.get()));
                }
            }
            let n = r.applied_dropped() + r.applied().len();
            // Spread.
            let st = r.state();
            let mut seen = BTreeSet::new();
            for ((w, _), k) in &st.assignments {
                if !seen.insert((w.clone(), *k)) {
                    self.violations.push(format!("{now:?}: node {id} has two replicas of {w} on one node"));
                }
                // Constraints: no replica on a node whose labels its workload refuses.
                let labels = (0..self.slots.len() as u64).find(|i| key_of(*i) == *k).map(Self::labels_of).unwrap_or_default();
                let node = NodeCapacity { key: *k, free_vcpus: 0, free_mem_mib: 0, labels, images: vec![], image_mib: vec![], store_free_mib: crate::placement::STORE_UNKNOWN };
                if let Some(spec) = st.workloads.get(w) {
                    if let Some(c) = spec.constraints.iter().find(|c| !c.allows(&node)) {
                        self.violations.push(format!("{now:?}: node {id}'s state assigns {w} to a node that violates {c:?}"));
                    }
                }
            }
            self.slots[id].checked = n;
        }
        self.update_runs();
        self.watch_room();
        // One runner: who runs what right now.
        let mut runners: BTreeMap<(String, u32), Vec<u64>> = BTreeMap::new();
        for id in 0..self.slots.len() as u64 {
            for (w, rep) in self.running_on(id) {
                runners.entry((w, rep)).or_default().push(id);
            }
        }
        let live: Vec<&Replica> = self.slots.iter().filter_map(|s| s.replica.as_ref()).collect();
        let singles: BTreeSet<String> =
            live.iter().flat_map(|r| r.state().workloads.values().filter(|w| w.replicas == 1).map(|w| w.name.clone()).collect::<Vec<_>>()).collect();
        // No overlap at all: not for a dead or cut-off host, and not for a drained or removed
        // one either (a replica is placed again only once its old host reported applying the
        // `Unassign` or its lease ran out).
        for ((w, _), ids) in runners {
            if ids.len() > 1 && singles.contains(&w) {
                self.violations.push(format!("{now:?}: {w} (replicas = 1) runs on {} nodes {ids:?}", ids.len()));
            }
        }
    }

    /// Once quiet: every running node has the same desired state and assignments, every
    /// acknowledged workload is in it, and every workload's replicas are all running somewhere
    /// (given room). `Err` says what is off.
    pub fn converged(&self) -> Result<(), String> {
        let running: Vec<&Replica> = self.slots.iter().filter_map(|s| s.replica.as_ref()).collect();
        let first = running.first().ok_or("no node runs")?.state();
        for r in &running {
            if r.state().workloads != first.workloads || r.state().assignments != first.assignments || r.state().nodes != first.nodes {
                return Err(format!("node {} disagrees (applied {} vs {})", r.id(), r.state().applied, first.applied));
            }
        }
        for (pos, name) in &self.accepted {
            if !first.workloads.contains_key(name) && !self.removed.contains(name) {
                return Err(format!("acknowledged {name} at {pos:?} is missing"));
            }
        }
        // The labels as committed relabels left them: a replica whose node no longer meets its
        // constraints must have been moved.
        let labels = first.effective_labels(&self.labels());
        for ((w, r), k) in &first.assignments {
            let node = NodeCapacity { key: *k, free_vcpus: 0, free_mem_mib: 0, labels: labels.get(k).cloned().unwrap_or_default(), images: vec![], image_mib: vec![], store_free_mib: crate::placement::STORE_UNKNOWN };
            if let Some(c) = first.workloads.get(w).and_then(|s| s.constraints.iter().find(|c| !c.allows(&node))) {
                return Err(format!("{w} replica {r} is still on a node that violates {c:?} after relabelling"));
            }
        }
        if self.growth {
            self.room_converged(first, &labels)?;
        }
        // No leader holds a snapshot transfer open to a running follower whose log matches past
        // it: its final acknowledgement may be lost, the quiet heartbeats' replies end it.
        for s in &self.slots {
            let Some(leader) = s.replica.as_ref().filter(|r| r.is_leader()) else { continue };
            for (peer, pos) in s.tx.leader_transfers() {
                let Some(f) = self.slots.iter().filter_map(|x| x.replica.as_ref()).find(|x| x.id() == peer) else { continue };
                let end = f.log().entries().last_position();
                if end.index >= pos.index && leader.log().entries().contains(end) && leader.voters().contains(&peer) {
                    return Err(format!("leader {} still holds a snapshot transfer at {pos:?} to {peer}, whose log matches to {end:?}", leader.id()));
                }
            }
        }
        let file = self.labels();
        for (name, spec) in &first.workloads {
            // Accepted but unplaceable as the nodes are labelled: nothing of it runs. (One that
            // a relabel made unplaceable after it was placed keeps the replicas whose nodes
            // still meet its constraints, checked above, as after losing nodes.)
            if first.eligible_nodes(spec, &labels) < spec.replicas && first.eligible_nodes(spec, &file) >= spec.replicas {
                continue;
            }
            if first.eligible_nodes(spec, &labels) < spec.replicas {
                if let Some(((_, r), _)) = first.assignments.range((name.clone(), 0)..=(name.clone(), u32::MAX)).next() {
                    return Err(format!("unplaceable {name} has replica {r} assigned"));
                }
                continue;
            }
            for rep in 0..spec.replicas {
                let runs = (0..self.slots.len() as u64).filter(|id| self.running_on(*id).contains(&(name.clone(), rep))).count();
                if runs != 1 {
                    return Err(format!("{name} replica {rep} runs on {runs} nodes"));
                }
            }
        }
        Ok(())
    }
}
