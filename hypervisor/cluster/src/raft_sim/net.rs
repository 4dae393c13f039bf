//! The simulated network: each node's outgoing envelopes as `orchd`'s datagrams, dropped,
//! duplicated and delayed by the seeded RNG, and delivered (snapshot chunks reassembled);
//! the fabric cut between a node and one whose removal it applied.

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;

use super::{key_of, slot_of, RaftSim};
use crate::raft_codec::{decode, encode, Wire};
use crate::replica::{Catchup, ReplicaId};

impl RaftSim {
    pub(super) fn flush_all(&mut self) {
        for id in 0..self.slots.len() as u64 {
            self.flush(id);
        }
    }

    /// The node's outgoing envelopes, as the datagrams `orchd` would send.
    pub(super) fn flush(&mut self, id: ReplicaId) {
        let now = self.now;
        let s = &mut self.slots[id as usize];
        let Some(r) = s.replica.as_mut() else { return };
        // as `Orch` does: a pulled state dropped unvouched may be assembled again
        if r.pending_pull().is_none() {
            s.rx.forget_pulled_above(r.applied_index().max(r.commit_index()));
        }
        let mut out = Vec::new();
        for env in r.take_outgoing() {
            let (from, to) = (env.from, env.to);
            out.extend(s.tx.datagrams(env).into_iter().map(|b| (from, to, b)));
        }
        // The catch-up pull (crate::replica::Catchup), as `orchd` sends it.
        for c in r.take_catchup() {
            match c {
                Catchup::Ask { from, to, applied } => out.push((from, to, encode(&Wire::Pull { from, to, applied }))),
                Catchup::Answer { env, asker_has } => {
                    let (from, to) = (env.from, env.to);
                    out.extend(s.tx.pulled_datagrams(env, asker_has, now).into_iter().map(|b| (from, to, b)));
                }
                Catchup::Vouch { from, to, position, digest } => out.push((from, to, encode(&Wire::Vouch { from, to, position, digest }))),
                Catchup::Vouched { from, to, position, digest, verdict, applied } => out.push((from, to, encode(&Wire::Vouched { from, to, position, digest, verdict, applied }))),
            }
        }
        for (from, to, b) in out {
            self.send(from, to, b);
        }
    }

    /// One datagram onto the lossy network.
    fn send(&mut self, from: ReplicaId, to: ReplicaId, b: Vec<u8>) {
        if self.rng.per_mille(self.net.drop_per_mille) {
            return;
        }
        let copies = if self.rng.per_mille(self.net.dup_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let span = (self.net.max_delay - self.net.min_delay).as_micros() as u64;
            let at = self.now + self.net.min_delay + Duration::from_micros(self.rng.below(span.max(1)));
            self.seq += 1;
            self.queue.insert((at, self.seq), (from, to, b.clone()));
        }
    }

    /// A datagram that arrived at node `slot`'s current replica `to`.
    pub(super) fn deliver(&mut self, to: ReplicaId, bytes: &[u8]) {
        let slot = slot_of(to) as usize;
        let limits = self.cfg.limits;
        let now = self.now;
        let w = match decode(bytes) {
            Ok(w) => w,
            Err(e) => {
                self.violations.push(format!("{now:?}: a datagram to {to} does not decode: {e:?}"));
                return;
            }
        };
        let s = &mut self.slots[slot];
        let Some(r) = s.replica.as_mut() else { return };
        let mut replies: Vec<(ReplicaId, ReplicaId, Vec<u8>)> = Vec::new();
        match w {
            Wire::Raft(env) => {
                s.tx.on_reply(r, &env);
                r.handle(now, env);
                self.delivered += 1;
            }
            Wire::SnapChunk(c) => {
                if c.head.to != to {
                    return;
                }
                self.chunks_delivered += 1;
                let (pulled, source) = (c.head.pulled, c.head.from);
                let (ack, env) = s.rx.on_chunk(c, r.term(), &limits);
                if pulled && ack.is_some() {
                    r.pull_progress(now, source);
                }
                if let Some(env) = env {
                    self.snapshots_assembled += 1;
                    let len = env.snapshot.as_ref().map_or(0, |s| crate::snapshot::encode_snapshot(s).len());
                    self.largest_snapshot = self.largest_snapshot.max(len);
                    match env.snapshot {
                        Some(snap) if pulled => {
                            r.pulled(now, source, snap);
                        }
                        _ => r.handle(now, env),
                    }
                    self.delivered += 1;
                }
                if let Some(a) = ack {
                    replies.push((a.from, a.to, encode(&Wire::SnapAck(a))));
                }
            }
            Wire::SnapAck(a) => {
                if a.to == to {
                    replies.extend(s.tx.on_ack_if(&a, r.is_leader(), now).into_iter().map(|b| (a.to, a.from, b)));
                }
            }
            // Any generation of the member asked (as `Orch` takes it).
            Wire::Pull { from, applied, .. } => r.handle_pull(now, from, applied),
            Wire::Vouch { from, position, digest, .. } => r.handle_vouch(now, from, position, digest),
            Wire::Vouched { from, to: asker, position, digest, verdict, applied } => {
                if asker == to {
                    r.handle_vouched(now, from, position, digest, verdict, applied);
                }
            }
            other => self.violations.push(format!("{now:?}: not a Raft datagram: {other:?}")),
        }
        for (from, to, b) in replies {
            self.send(from, to, b);
        }
        self.flush(slot as u64);
    }

    /// The fabric between two nodes is gone while either node's `netd` drops the other
    /// ([`RaftSim::sync_netd`]). A node does not drop itself.
    pub(super) fn fabric_drops(&mut self, from: usize, to: usize) -> bool {
        self.sync_netd(from);
        self.sync_netd(to);
        from != to && (self.slots[to].netd_drops.contains(&(from as u64)) || self.slots[from].netd_drops.contains(&(to as u64)))
    }

    /// Node `slot`'s `netd` as its `orchd` keeps it (crate::service::FabricHand): a key its
    /// replica's committed state removed is dropped (`RemoveNode`), one it admits is a peer
    /// again; a key the state never admitted keeps what `netd` had. This lives beside the
    /// replica, not in it: `netd` keeps it when `orchd` restarts (with or without storage).
    pub(super) fn sync_netd(&mut self, slot: usize) {
        let n = self.slots.len() as u64;
        let s = &mut self.slots[slot];
        let Some(r) = s.replica.as_ref() else { return };
        let st = r.state();
        for other in (0..n).filter(|o| *o != slot as u64) {
            let k = key_of(other);
            if st.nodes.contains(&k) {
                s.netd_drops.remove(&other);
            } else if st.node_order.contains(&k) {
                s.netd_drops.insert(other);
            }
        }
    }
}
