//! What each simulated node runs: its assignments while its lease holds, and with a stop
//! delay the replicas it is still stopping.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use super::{key_of, RaftSim};
use crate::replica::ReplicaId;

impl RaftSim {
    /// What node `id` runs now: its assignments in its own applied state, while its lease
    /// holds, and with a stop delay those it is still stopping.
    pub fn running_on(&self, id: ReplicaId) -> Vec<(String, u32)> {
        let mut v = self.assigned_on(id);
        if !self.stop_delay.is_zero() {
            let s = &self.slots[id as usize];
            let more: Vec<(String, u32)> = s.stopping.keys().filter(|k| !v.contains(k)).cloned().collect();
            v.extend(more);
        }
        v
    }

    /// The stop delay's model: what each node runs now, told to its replica.
    pub(super) fn update_runs(&mut self) {
        if self.stop_delay.is_zero() {
            return;
        }
        let now = self.now;
        for id in 0..self.slots.len() {
            let assigned: BTreeSet<(String, u32)> = self.assigned_on(id as u64).into_iter().collect();
            let holds = self.slots[id].replica.as_ref().is_some_and(|r| r.lease_until(now, self.lease.lease).is_some_and(|t| t > now));
            let delay = self.stop_delay;
            let s = &mut self.slots[id];
            let Some(r) = s.replica.as_mut() else { continue };
            for k in s.ran.difference(&assigned) {
                if holds {
                    s.stopping.entry(k.clone()).or_insert(now + delay);
                }
            }
            s.stopping.retain(|k, until| holds && *until > now && !assigned.contains(k));
            s.ran = assigned;
            r.set_local_runs(s.ran.iter().chain(s.stopping.keys()).cloned().collect());
        }
    }

    /// Node `id`'s assignments in its own applied state, while its lease holds.
    fn assigned_on(&self, id: ReplicaId) -> Vec<(String, u32)> {
        let Some(r) = self.slots[id as usize].replica.as_ref() else { return Vec::new() };
        if r.lease_until(self.now, self.lease.lease).is_none_or(|t| t <= self.now) {
            return Vec::new();
        }
        let st = r.state();
        st.assigned_to(key_of(id)).filter(|(w, _)| st.workloads.contains_key(w)).cloned().collect()
    }
}
