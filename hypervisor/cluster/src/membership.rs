//! SWIM membership: the `foca` crate driven with the time as an argument.
//!
//! [`Membership`] wraps one `foca::Foca` per node. The caller (the ring-3 membership service,
//! or the simulator) feeds it the datagrams the fabric delivered, with the fabric-authenticated
//! sender key, and calls [`Membership::tick`] at [`Membership::next_deadline`]; it takes the
//! datagrams to send from [`Membership::take_outgoing`]. Nothing here reads a clock or does I/O.
//!
//! What this layer adds to foca:
//! - key admission (see [`crate::codec`]): only admitted keys are ever decoded;
//! - graceful leave seen as `left`, not `dead`: a leave notice rides foca's custom broadcasts
//!   and the leaving node tells every active member directly;
//! - rejoin: a node that is not active (no member answered yet, idle, or just renewed its
//!   identity) announces itself to its seeds every
//!   `announce_period`, so a partitioned node finds the cluster again once the partition heals
//!   (foca then tells it that its old identity is down and it rejoins as the next generation).
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::num::{NonZeroU8, NonZeroUsize};
use core::time::Duration;

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, State, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::codec::{Codec, LeaveNotices, Shared, SharedRef};
use crate::identity::{NodeId, NodeKey};

const MAX_EVENTS: usize = 64;

/// Protocol timings and limits. The defaults are what docs/orchestration.md measures.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// How often each node probes one random member.
    pub probe_period: Duration,
    /// How long a direct probe waits before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly (and the fan-out of a gossip round).
    pub indirect_probes: usize,
    /// How long a member stays suspect before it is declared dead.
    pub suspect_to_down_after: Duration,
    /// How often updates are gossiped outside the probe cycle, and to how many members.
    pub gossip_period: Duration,
    pub gossip_fanout: usize,
    /// How many times one update is piggybacked before it is dropped.
    pub max_transmissions: u8,
    /// How often a node that is not active announces itself to its seeds.
    pub announce_period: Duration,
    /// Largest datagram produced or accepted.
    pub max_packet_size: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(150),
            indirect_probes: 3,
            suspect_to_down_after: Duration::from_millis(1500),
            gossip_period: Duration::from_millis(200),
            gossip_fanout: 3,
            max_transmissions: 10,
            announce_period: Duration::from_millis(1000),
            // Fits one fabric datagram (1420-byte WireGuard MTU less IPv6+UDP headers).
            max_packet_size: 1280,
        }
    }
}

impl MembershipConfig {
    fn foca(&self, indirect_probes: usize) -> foca::Config {
        let one = NonZeroUsize::MIN;
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: NonZeroUsize::new(indirect_probes).unwrap_or(one),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspect_to_down_after,
            // Down identities are remembered: a dead identity must never come back as alive.
            remove_down_after: None,
            max_packet_size: NonZeroUsize::new(self.max_packet_size).unwrap_or(one),
            // Lets a node the cluster declared dead learn it and rejoin as a new generation.
            notify_down_members: true,
            periodic_announce: None,
            periodic_announce_to_down_members: Some(PeriodicParams {
                frequency: self.announce_period,
                num_members: one,
            }),
            periodic_gossip: Some(PeriodicParams {
                frequency: self.gossip_period,
                num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(one),
            }),
        }
    }
}

/// One outgoing datagram: to the fabric address of `to`, authenticated by the fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub to: NodeId,
    pub data: Vec<u8>,
}

/// A member's state as `catenary nodes` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    Left,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberView {
    pub id: NodeId,
    pub state: MemberState,
    /// `generation << 16 | SWIM incarnation`: grows on every refuted suspicion and every rejoin.
    pub incarnation: u64,
}

pub fn combined_incarnation(generation: u32, incarnation: u16) -> u64 {
    (u64::from(generation) << 16) | u64::from(incarnation)
}

/// Something the node itself went through (members' changes are read from [`Membership::members`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfEvent {
    /// The cluster had declared us down; we came back as this new identity.
    Rejoined(NodeId),
    /// No active member is left (we announce to the seeds until one answers).
    Idle,
    Active,
    /// Our identity is down (we left, or the cluster declared us dead).
    Defunct,
}

pub struct Membership {
    foca: Foca<NodeId, Codec, SmallRng, LeaveNotices>,
    config: MembershipConfig,
    shared: SharedRef,
    rt: AccumulatingRuntime<NodeId>,
    timers: BTreeMap<(Duration, u64), Timer<NodeId>>,
    timer_seq: u64,
    next_announce: Duration,
    seeds: Vec<NodeId>,
    outgoing: Vec<Datagram>,
    events: Vec<SelfEvent>,
    left: bool,
    last_event: Option<SelfEvent>,
    /// The newest foca timer token seen, and the suspicions this node timed (`arm_suspicions`):
    /// key -> (generation, incarnation, token). Bounded by the admitted keys.
    token: u8,
    armed: BTreeMap<NodeKey, (u32, u16, u8)>,
}

impl Membership {
    /// A node that will join through `seeds` (any identities of other nodes; their generation
    /// does not matter). `rng_seed` comes from the node's entropy (or the simulator's seed).
    pub fn new(
        id: NodeId,
        config: MembershipConfig,
        rng_seed: u64,
        admitted: impl IntoIterator<Item = NodeKey>,
        seeds: Vec<NodeId>,
    ) -> Self {
        let shared: SharedRef = Rc::new(RefCell::new(Shared::default()));
        shared.borrow_mut().admitted.extend(admitted);
        let foca = Foca::with_custom_broadcast(
            id,
            config.foca(config.indirect_probes),
            SmallRng::seed_from_u64(rng_seed),
            Codec::new(shared.clone()),
            LeaveNotices::new(shared.clone()),
        );
        let seeds = seeds.into_iter().filter(|s| s.key != id.key).collect();
        Membership {
            foca,
            config,
            shared,
            rt: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            next_announce: Duration::ZERO,
            seeds,
            outgoing: Vec::new(),
            events: Vec::new(),
            left: false,
            token: 0,
            armed: BTreeMap::new(),
            last_event: None,
        }
    }

    pub fn identity(&self) -> NodeId {
        *self.foca.identity()
    }

    /// Lets `key` join (`catenary node add KEY`).
    pub fn admit(&mut self, key: NodeKey) {
        self.shared.borrow_mut().admitted.insert(key);
    }

    pub fn is_admitted(&self, key: &NodeKey) -> bool {
        self.shared.borrow().admitted.contains(key)
    }

    /// Takes `key` out (`catenary node remove`, committed `RemoveNode`): its identities are
    /// marked down here (so foca stops probing them; not gossiped: every node revokes from its
    /// own committed state), then it is no longer admitted, so its datagrams and any gossip
    /// about it are refused from now on, and it leaves the member table [`Membership::members`]
    /// shows. [`Membership::admit`] lets it in again.
    pub fn revoke(&mut self, now: Duration, key: NodeKey) {
        let ids: Vec<NodeId> = self.foca.iter_membership_state().filter(|m| m.id().key == key && m.state() != State::Down).map(|m| *m.id()).collect();
        if !ids.is_empty() {
            let _ = self.foca.apply_many(ids.into_iter().map(foca::Member::down), false, &mut self.rt);
        }
        {
            let mut s = self.shared.borrow_mut();
            s.admitted.remove(&key);
            s.left.remove(&key);
        }
        self.armed.remove(&key);
        self.seeds.retain(|s| s.key != key);
        self.drain(now);
    }

    /// A datagram the fabric delivered from the peer whose public key is `from`. Errors mean the
    /// datagram was dropped (malformed, not admitted, not from who it claims); they are counted
    /// by the caller, never fatal.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: NodeKey,
        data: &[u8],
    ) -> Result<(), foca::Error> {
        if self.left {
            return Ok(());
        }
        self.shared.borrow_mut().authenticated_src = Some(from);
        let r = self.foca.handle_data(data, &mut self.rt);
        self.shared.borrow_mut().authenticated_src = None;
        self.drain(now);
        r
    }

    /// The earliest time [`Membership::tick`] has work.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.left {
            return None;
        }
        let t = self.timers.keys().next().map(|k| k.0);
        Some(t.map_or(self.next_announce, |t| t.min(self.next_announce)))
    }

    /// Runs every timer due at or before `now`, in deadline order.
    pub fn tick(&mut self, now: Duration) {
        if self.left {
            return;
        }
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            // A timer error is foca refusing stale work; the protocol goes on.
            let _ = self.foca.handle_timer(timer, &mut self.rt);
            self.drain(now);
        }
        if now >= self.next_announce {
            self.next_announce = now + self.config.announce_period;
            if !self.active() {
                for seed in self.seeds.clone() {
                    let _ = self.foca.announce(
                        NodeId {
                            generation: 0,
                            ..seed
                        },
                        &mut self.rt,
                    );
                }
                self.drain(now);
            }
        }
    }

    /// Leaves the cluster gracefully: every active member is told directly (and the notice is
    /// gossiped on), so the others show this node as `left` at once rather than dead later.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        let me = self.identity();
        // The handler records the notice in `left` too (inserting it first would make foca
        // think it is old news and not send it).
        let _ = self.foca.add_broadcast(&LeaveNotices::encode(&me));
        // leave_cluster gossips to `indirect_probes` members: widen that to all of them.
        let everyone = self.foca.num_members().max(1);
        let _ = self.foca.set_config(self.config.foca(everyone));
        let _ = self.foca.leave_cluster(&mut self.rt);
        self.drain(now);
        self.left = true;
        self.timers.clear();
    }

    /// The last change in this node's own standing (active, idle, defunct, rejoined).
    pub fn last_self_event(&self) -> Option<SelfEvent> {
        self.last_event
    }

    /// Whether foca is probing (it last said `Active`). It is not before the first member
    /// answers, after it went idle, was declared down, or renewed its identity: a renewed foca
    /// keeps its old member table but stays disconnected until a datagram makes a member
    /// active (found by the chaos simulation, seed 5958, where three rejoined nodes each held
    /// only stale identities of the others and none announced).
    fn active(&self) -> bool {
        matches!(self.last_event, Some(SelfEvent::Active))
    }

    pub fn has_left(&self) -> bool {
        self.left
    }

    pub fn take_outgoing(&mut self) -> Vec<Datagram> {
        core::mem::take(&mut self.outgoing)
    }

    /// Kept to the newest `MAX_EVENTS` if the caller does not take them (it should, after each
    /// call, as it takes the outgoing datagrams).
    fn push_event(&mut self, e: SelfEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(e);
    }

    pub fn take_events(&mut self) -> Vec<SelfEvent> {
        core::mem::take(&mut self.events)
    }

    /// The member table (this node excluded), sorted by key.
    pub fn members(&self) -> Vec<MemberView> {
        let shared = self.shared.borrow();
        let mut v: Vec<MemberView> = self
            .foca
            .iter_membership_state()
            // a revoked key's identities stay in foca's table (down), not in ours
            .filter(|m| shared.admitted.contains(&m.id().key))
            .map(|m| {
                let id = *m.id();
                let state = match m.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down if shared.left.get(&id.key) == Some(&id.generation) => {
                        MemberState::Left
                    }
                    State::Down => MemberState::Dead,
                };
                MemberView {
                    id,
                    state,
                    incarnation: combined_incarnation(id.generation, m.incarnation()),
                }
            })
            .collect();
        v.sort();
        v
    }

    /// The state this node holds for `key`, if it knows it.
    pub fn member(&self, key: &NodeKey) -> Option<MemberView> {
        self.members().into_iter().find(|m| m.id.key == *key)
    }

    /// Every member that holds a suspicion times it out itself, as in the SWIM paper. foca only
    /// arms the suspect-to-dead timer on the node whose probe failed, and drops every pending
    /// timer when it goes idle, is declared down or renews its identity. So a suspicion learnt
    /// by gossip, whose originator then restarted, or one held across a timer reset, stayed
    /// `suspect` for ever unless the suspect happened to hear of it and refute it (found by the
    /// chaos simulation, seeds 37 and 13448). Here each suspect (member, incarnation) gets a
    /// timer under the current foca token; foca still checks the incarnation when it fires, so
    /// a refuted suspicion is not turned into a death.
    fn arm_suspicions(&mut self, now: Duration) {
        let suspects: Vec<(NodeId, u16)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (*m.id(), m.incarnation()))
            .collect();
        self.armed
            .retain(|key, _| suspects.iter().any(|(id, _)| id.key == *key));
        for (member_id, incarnation) in suspects {
            let want = (member_id.generation, incarnation, self.token);
            if self.armed.get(&member_id.key) == Some(&want) {
                continue;
            }
            self.armed.insert(member_id.key, want);
            self.timer_seq += 1;
            let timer = Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                token: self.token,
            };
            self.timers.insert(
                (now + self.config.suspect_to_down_after, self.timer_seq),
                timer,
            );
        }
    }

    fn drain(&mut self, now: Duration) {
        while let Some((to, data)) = self.rt.to_send() {
            self.outgoing.push(Datagram {
                to,
                data: data.to_vec(),
            });
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            let token = timer_token(&timer);
            self.timer_seq += 1;
            self.timers.insert((now + after, self.timer_seq), timer);
            if let Some(t) = token {
                self.token = t;
            }
        }
        self.arm_suspicions(now);
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::Rejoin(id) => {
                    self.push_event(SelfEvent::Rejoined(id));
                    self.last_event = Some(SelfEvent::Rejoined(id));
                }
                OwnedNotification::Idle => {
                    self.push_event(SelfEvent::Idle);
                    self.last_event = Some(SelfEvent::Idle);
                    // Start looking for the cluster at once rather than at the next period.
                    self.next_announce = now;
                }
                OwnedNotification::Active => {
                    self.push_event(SelfEvent::Active);
                    self.last_event = Some(SelfEvent::Active);
                }
                OwnedNotification::Defunct => {
                    self.push_event(SelfEvent::Defunct);
                    self.last_event = Some(SelfEvent::Defunct);
                }
                _ => {}
            }
        }
    }
}

fn timer_token(t: &Timer<NodeId>) -> Option<u8> {
    match t {
        Timer::ProbeRandomMember(token)
        | Timer::PeriodicAnnounce(token)
        | Timer::PeriodicAnnounceDown(token)
        | Timer::PeriodicGossip(token)
        | Timer::SendIndirectProbe { token, .. }
        | Timer::ChangeSuspectToDown { token, .. } => Some(*token),
        Timer::RemoveDown(_) => None,
    }
}
