//! The deterministic simulator: many nodes in one process, one seed.
//!
//! A virtual clock, and a network that delays (uniformly between `min_delay` and `max_delay`,
//! which also reorders), drops, duplicates and partitions datagrams, all drawn from one seeded
//! generator. Nodes can be killed, restarted, made to leave, and non-admitted outsiders can talk
//! to the cluster. Every change a node sees in its member table is recorded in a trace, so a
//! failing seed replays exactly and two runs of one seed can be compared.
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::identity::{NodeId, NodeKey};
use crate::membership::{MemberState, Membership, MembershipConfig};

/// SplitMix64: tiny, seedable, and the same on every host.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn per_mille(&mut self, p: u32) -> bool {
        self.below(1000) < u64::from(p)
    }
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub drop_per_mille: u32,
    pub dup_per_mille: u32,
}

impl Default for NetConfig {
    /// A lossy LAN: 1–20 ms, 1% loss, 0.5% duplicates.
    fn default() -> Self {
        NetConfig {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            drop_per_mille: 10,
            dup_per_mille: 5,
        }
    }
}

/// One change a node saw in its member table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at: Duration,
    pub observer: usize,
    /// The observer's own generation (its table starts empty after a restart).
    pub observer_generation: u32,
    pub member: NodeKey,
    pub state: MemberState,
    pub incarnation: u64,
}

struct SimNode {
    key: NodeKey,
    addr: [u8; 16],
    generation: u32,
    node: Option<Membership>,
}

struct InFlight {
    from: NodeKey,
    to: usize,
    data: Vec<u8>,
}

pub struct Sim {
    now: Duration,
    rng: SimRng,
    config: MembershipConfig,
    net: NetConfig,
    nodes: Vec<SimNode>,
    admitted: Vec<NodeKey>,
    in_flight: BTreeMap<(Duration, u64), InFlight>,
    seq: u64,
    /// Partition group per node; datagrams only pass within a group.
    group: Vec<u32>,
    views: Vec<BTreeMap<NodeKey, (MemberState, u64)>>,
    trace: Vec<TraceEvent>,
    outsiders: Vec<usize>,
    /// Invariant checking: the trace up to here is checked; the last (state, incarnation) per
    /// (observer, observer generation, member).
    checked: usize,
    last_seen: BTreeMap<(usize, u32, NodeKey), (MemberState, u64)>,
    pub delivered: u64,
    pub dropped: u64,
    pub rejected: u64,
    /// Datagrams the nodes sent, and their bytes (the message load; duplicates the network
    /// made are not counted).
    pub sent: u64,
    pub sent_bytes: u64,
    /// Record every member-table change (views, trace, invariants) after every event; off for
    /// the 1,000-node measurements, where that costs O(N) per event ([`Sim::set_tracking`]).
    tracking: bool,
}

/// The key of simulated node `i` (public keys only; no secret exists in the simulator).
pub fn sim_key(i: usize) -> NodeKey {
    let mut r = SimRng::new(0xc1u64 << 56 | i as u64);
    let mut k = [0u8; 32];
    for chunk in k.chunks_mut(8) {
        chunk.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    NodeKey(k)
}

fn sim_addr(i: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[8..].copy_from_slice(&(i as u64).to_be_bytes());
    a
}

impl Sim {
    /// `n` admitted nodes, all started at time zero, each seeded with all the others.
    pub fn new(seed: u64, n: usize, config: MembershipConfig, net: NetConfig) -> Self {
        let mut sim = Sim {
            now: Duration::ZERO,
            rng: SimRng::new(seed),
            config,
            net,
            nodes: Vec::new(),
            admitted: (0..n).map(sim_key).collect(),
            in_flight: BTreeMap::new(),
            seq: 0,
            group: Vec::new(),
            views: Vec::new(),
            trace: Vec::new(),
            outsiders: Vec::new(),
            checked: 0,
            last_seen: BTreeMap::new(),
            delivered: 0,
            dropped: 0,
            rejected: 0,
            sent: 0,
            sent_bytes: 0,
            tracking: true,
        };
        for i in 0..n {
            sim.nodes.push(SimNode {
                key: sim_key(i),
                addr: sim_addr(i),
                generation: 0,
                node: None,
            });
            sim.group.push(0);
            sim.views.push(BTreeMap::new());
        }
        for i in 0..n {
            sim.boot(i);
        }
        sim
    }

    /// Adds a node whose key the cluster never admitted. It admits everyone (itself included)
    /// and knows every address, so only the others' admission can keep it out.
    pub fn add_outsider(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(SimNode {
            key: sim_key(i),
            addr: sim_addr(i),
            generation: 0,
            node: None,
        });
        self.group.push(0);
        self.views.push(BTreeMap::new());
        self.outsiders.push(i);
        let mut keys = self.admitted.clone();
        keys.push(sim_key(i));
        self.boot_with(i, keys);
        i
    }

    /// Every running node admits `key` (as each node's `memberd` does once the replicated
    /// desired state commits `AdmitNode`), and so does every node booted later.
    pub fn admit(&mut self, key: NodeKey) {
        if !self.admitted.contains(&key) {
            self.admitted.push(key);
        }
        self.outsiders.retain(|&i| self.nodes[i].key != key);
        for n in self.nodes.iter_mut() {
            if let Some(m) = n.node.as_mut() {
                m.admit(key);
            }
        }
    }

    /// Node `i`'s key is removed from the cluster (`RemoveNode` committed): every other running
    /// node revokes it, as `memberd` does from the committed state. Node `i` keeps running and
    /// talking, an outsider from now on (the invariants then refuse its key in any table; the
    /// trace so far is checked first, under the admission it was made under).
    pub fn revoke(&mut self, i: usize) -> Result<(), String> {
        self.check_invariants()?;
        let key = self.nodes[i].key;
        self.admitted.retain(|k| *k != key);
        if !self.outsiders.contains(&i) {
            self.outsiders.push(i);
        }
        let now = self.now;
        for j in 0..self.nodes.len() {
            if j == i {
                continue;
            }
            if let Some(m) = self.nodes[j].node.as_mut() {
                m.revoke(now, key);
                // Its table no longer lists the key (views track only what tables list).
                self.views[j].remove(&key);
                self.after_step(j);
            }
        }
        Ok(())
    }

    fn boot(&mut self, i: usize) {
        let keys = self.admitted.clone();
        self.boot_with(i, keys);
    }

    fn boot_with(&mut self, i: usize, admitted: Vec<NodeKey>) {
        let seeds = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| NodeId::new(self.nodes[j].key, self.nodes[j].addr, 0))
            .collect();
        let n = &self.nodes[i];
        let id = NodeId::new(n.key, n.addr, n.generation);
        let rng_seed = self.rng.next_u64();
        let mut m = Membership::new(id, self.config.clone(), rng_seed, admitted, seeds);
        m.tick(self.now);
        self.nodes[i].node = Some(m);
        self.after_step(i);
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn key(&self, i: usize) -> NodeKey {
        self.nodes[i].key
    }

    pub fn node(&self, i: usize) -> Option<&Membership> {
        self.nodes[i].node.as_ref()
    }

    pub fn trace(&self) -> &[TraceEvent] {
        &self.trace
    }

    /// Off: no views, trace or invariant tracking after each event (use [`Sim::all_see_now`],
    /// which reads the nodes' tables when called).
    pub fn set_tracking(&mut self, on: bool) {
        self.tracking = on;
    }

    /// Like [`Sim::all_see`], from the nodes' member tables as they are now (O(N) per observer),
    /// for runs without tracking.
    pub fn all_see_now(&self, observers: &[usize], members: &[usize], state: MemberState) -> bool {
        observers.iter().filter(|&&o| self.nodes[o].node.is_some()).all(|&o| {
            let table: BTreeMap<NodeKey, MemberState> =
                self.nodes[o].node.as_ref().map(|m| m.members().into_iter().map(|v| (v.id.key, v.state)).collect()).unwrap_or_default();
            members.iter().filter(|&&m| m != o).all(|&m| table.get(&self.nodes[m].key) == Some(&state))
        })
    }

    /// What `observer` holds about `member`.
    pub fn view(&self, observer: usize, member: usize) -> Option<(MemberState, u64)> {
        self.views[observer].get(&self.nodes[member].key).copied()
    }

    /// Crashes node `i`: no leave, no more datagrams in or out.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].node = None;
    }

    /// Restarts a killed node as its next generation (a real node keeps that counter on disk).
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].generation += 1;
        self.views[i].clear();
        self.boot(i);
    }

    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(m) = self.nodes[i].node.as_mut() {
            m.leave(now);
        }
        self.after_step(i);
    }

    /// Cuts the network into groups; a node not named stays in group 0.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        self.group.iter_mut().for_each(|g| *g = 0);
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                self.group[i] = g as u32 + 1;
            }
        }
    }

    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    fn next_time(&self) -> Option<Duration> {
        let net = self.in_flight.keys().next().map(|k| k.0);
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref()?.next_deadline())
            .min();
        match (net, timers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs one instant of simulated time (the next one with work); false past `limit`.
    pub fn step(&mut self, limit: Duration) -> bool {
        let Some(t) = self.next_time() else {
            return false;
        };
        if t > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let d = entry.remove();
            // The node may have died while the datagram was in flight.
            let Some(m) = self.nodes[d.to].node.as_mut() else {
                self.dropped += 1;
                continue;
            };
            self.delivered += 1;
            if m.handle_datagram(now, d.from, &d.data).is_err() {
                self.rejected += 1;
            }
            self.after_step(d.to);
        }
        for i in 0..self.nodes.len() {
            let due = self.nodes[i]
                .node
                .as_ref()
                .and_then(|m| m.next_deadline())
                .is_some_and(|d| d <= now);
            if due {
                if let Some(m) = self.nodes[i].node.as_mut() {
                    m.tick(now);
                }
                self.after_step(i);
            }
        }
        true
    }

    pub fn run_until(&mut self, t: Duration) {
        while self.step(t) {}
        self.now = self.now.max(t);
    }

    /// Runs until `done` holds (checked after every instant); the time it first held, or None
    /// if it did not by `limit`.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        loop {
            if done(self) {
                return Some(self.now);
            }
            if !self.step(limit) {
                return done(self).then_some(self.now);
            }
        }
    }

    /// Sends what node `i` produced and records the changes in its member table.
    fn after_step(&mut self, i: usize) {
        let Some(m) = self.nodes[i].node.as_mut() else {
            return;
        };
        let out = m.take_outgoing();
        let _ = m.take_events();
        let members = if self.tracking { m.members() } else { Vec::new() };
        let from = self.nodes[i].key;
        for d in out {
            self.sent += 1;
            self.sent_bytes += d.data.len() as u64;
            // The index is in the address (sim_addr); the key must match too.
            let guess = u64::from_be_bytes(d.to.addr[8..].try_into().unwrap_or([0xff; 8])) as usize;
            let Some(to) = Some(guess).filter(|&g| g < self.nodes.len() && self.nodes[g].key == d.to.key && self.nodes[g].addr == d.to.addr)
            else {
                self.dropped += 1;
                continue;
            };
            let copies = if self.rng.per_mille(self.net.dup_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                if self.group[i] != self.group[to] || self.rng.per_mille(self.net.drop_per_mille) {
                    self.dropped += 1;
                    continue;
                }
                let span = self
                    .net
                    .max_delay
                    .saturating_sub(self.net.min_delay)
                    .as_micros() as u64;
                let delay = self.net.min_delay + Duration::from_micros(self.rng.below(span + 1));
                self.seq += 1;
                self.in_flight.insert(
                    (self.now + delay, self.seq),
                    InFlight {
                        from,
                        to,
                        data: d.data.clone(),
                    },
                );
            }
        }
        let view = &mut self.views[i];
        for mv in members {
            let new = (mv.state, mv.incarnation);
            if view.get(&mv.id.key) != Some(&new) {
                view.insert(mv.id.key, new);
                self.trace.push(TraceEvent {
                    at: self.now,
                    observer: i,
                    observer_generation: self.nodes[i].generation,
                    member: mv.id.key,
                    state: mv.state,
                    incarnation: mv.incarnation,
                });
            }
        }
    }

    /// True when every live node in `observers` sees every node in `members` in `state`.
    pub fn all_see(&self, observers: &[usize], members: &[usize], state: MemberState) -> bool {
        observers
            .iter()
            .filter(|&&o| self.nodes[o].node.is_some())
            .all(|&o| {
                members
                    .iter()
                    .filter(|&&m| m != o)
                    .all(|&m| self.view(o, m).map(|v| v.0) == Some(state))
            })
    }
}

impl Sim {
    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].node.as_ref().is_some_and(|m| !m.has_left())
    }

    /// Checks the membership invariants on every trace event since the last call:
    /// - no admitted node ever lists a key that was not admitted;
    /// - what an observer holds about a member never goes back to an older generation, nor, while
    ///   the member is alive or suspect, to a lower incarnation;
    /// - a generation declared dead or left never comes back alive or suspect (SWIM never
    ///   revives an identity; only a new generation can return).
    pub fn check_invariants(&mut self) -> Result<(), String> {
        while self.checked < self.trace.len() {
            let e = self.trace[self.checked];
            self.checked += 1;
            if !self.outsiders.contains(&e.observer) && !self.admitted.contains(&e.member) {
                return Err(format!("{e:?}: a non-admitted key entered a member table"));
            }
            let k = (e.observer, e.observer_generation, e.member);
            if let Some(&(state, inc)) = self.last_seen.get(&k) {
                let (old_gen, new_gen) = (inc >> 16, e.incarnation >> 16);
                let active =
                    |s: MemberState| matches!(s, MemberState::Alive | MemberState::Suspect);
                if new_gen < old_gen {
                    return Err(format!("{e:?}: generation went back from {old_gen}"));
                }
                // SWIM's incarnation orders alive/suspect claims; a death notice overrides any
                // incarnation (foca sends it with 0), so only active-to-active is compared.
                if new_gen == old_gen && active(state) && active(e.state) && e.incarnation < inc {
                    return Err(format!("{e:?}: incarnation went back from {inc:#x}"));
                }
                if new_gen == old_gen && !active(state) && active(e.state) {
                    return Err(format!("{e:?}: a {state:?} generation came back"));
                }
            }
            self.last_seen.insert(k, (e.state, e.incarnation));
        }
        Ok(())
    }
}
