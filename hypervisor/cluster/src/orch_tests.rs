//! [`Orch`] nodes over an in-process network (1–5 ms delays, reordering), with nodes killed
//! and restarted *without* their storage (as a diskless node restarts). What every node "runs"
//! is exactly [`Orch::assigned_now`] (what `orchd` makes its workload service run); a killed
//! node runs nothing. Checked after every millisecond: no replica runs on two nodes.
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::*;
use crate::desired::RestartPolicy;
use raftbare::{LogPosition, Term};

/// The replicas an `orchd`-less node's workd still runs, and its last lease deadline.
type Orphans = (Duration, BTreeSet<(String, u32)>);

struct Net {
    nodes: Vec<Option<Orch>>,
    keys: Vec<NodeKey>,
    now: Duration,
    inflight: Vec<(Duration, usize, usize, Vec<u8>)>,
    rng: u64,
    running: Vec<BTreeSet<(String, u32)>>,
    /// When each (workload, replica) last started on a node: (node, time).
    started: Vec<(String, u32, usize, Duration)>,
    cfg: OrchConfig,
    /// Datagrams dropped, per mille.
    drop_per_mille: u64,
    /// Nodes whose `orchd` alone died ([`Net::kill_orchd`]): the replicas their workd still
    /// runs and the lease deadline the dead `orchd` last told it (workd stops them there).
    orphaned: Vec<Option<Orphans>>,
    /// Partitions: nodes of different groups cannot talk (all 0: none).
    groups: Vec<u32>,
    /// Pairs of nodes that cannot talk (either way), whatever their groups.
    cut: Vec<(usize, usize)>,
    /// (from, to): datagrams from the first to the second are lost (one way only).
    one_way: Vec<(usize, usize)>,
    /// How long before its handling each node's datagrams are said to have arrived
    /// ([`Orch::handle_received`]; `orchd`'s last empty socket).
    lag: Vec<Duration>,
    /// Snapshot acknowledgements that say "whole" (`next` at the transfer's length, as its
    /// chunks passing through announced it) are lost.
    drop_whole_snap_acks: bool,
    /// Each transfer's length by (sending node, transfer number), from its chunks.
    snap_totals: BTreeMap<(usize, u64), u32>,
}

fn spec(name: &str, replicas: u32) -> WorkloadSpec {
    WorkloadSpec {
        health: None,
        name: name.to_string(),
        image: [1; 32],
        replicas,
        vcpus: 1,
        mem_mib: 64,
        env: vec![],
        args: vec![],
        restart: RestartPolicy::Always,
        constraints: vec![],
    }
}

impl Net {
    fn new(n: usize, seed: u64) -> Net {
        Net::with_config(n, seed, OrchConfig::default())
    }

    fn with_config(n: usize, seed: u64, cfg: OrchConfig) -> Net {
        let keys: Vec<NodeKey> = (0..n).map(|i| NodeKey([i as u8 + 1; 32])).collect();
        let mut net = Net { nodes: Vec::new(), keys, now: Duration::ZERO, inflight: Vec::new(), rng: seed, running: vec![BTreeSet::new(); n], started: Vec::new(), cfg, drop_per_mille: 0, orphaned: vec![None; n], groups: vec![0; n], cut: Vec::new(), one_way: Vec::new(), lag: vec![Duration::ZERO; n], drop_whole_snap_acks: false, snap_totals: BTreeMap::new() };
        for i in 0..n {
            let o = net.fresh(i);
            net.nodes.push(Some(o));
        }
        net
    }

    fn fresh(&mut self, i: usize) -> Orch {
        let mut o = Orch::new(i, self.keys.clone(), self.cfg.clone(), self.rng ^ i as u64, self.now);
        o.set_capacity(4, 1024);
        o
    }

    fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = core::mem::take(&mut self.inflight).into_iter().partition(|d| d.0 <= now);
        self.inflight = later;
        for (_, from, to, b) in due {
            if self.fabric_drops(from, to) || self.groups[from] != self.groups[to] || self.cut.iter().any(|c| *c == (from, to) || *c == (to, from)) || self.one_way.contains(&(from, to)) {
                continue;
            }
            if self.drop_whole_snap_acks {
                match decode(&b) {
                    Ok(Wire::SnapChunk(c)) => {
                        self.snap_totals.insert((from, c.head.transfer), c.head.total);
                    }
                    Ok(Wire::SnapAck(a)) if self.snap_totals.get(&(to, a.transfer)).is_some_and(|t| a.next >= *t) => continue,
                    _ => {}
                }
            }
            if let Some(o) = self.nodes[to].as_mut() {
                o.handle_received(now, now.saturating_sub(self.lag[to]), from, &b);
            }
        }
        for i in 0..self.nodes.len() {
            let Some(o) = self.nodes[i].as_mut() else { continue };
            o.tick(now);
            let out = o.take_outgoing();
            for (to, b) in out {
                if self.rand() % 1000 < self.drop_per_mille {
                    continue;
                }
                let delay = Duration::from_millis(1 + self.rand() % 5);
                self.inflight.push((now + delay, i, to, b));
            }
        }
        for i in 0..self.nodes.len() {
            let run: BTreeSet<(String, u32)> = match (&self.nodes[i], &self.orphaned[i]) {
                (Some(o), _) => o.assigned_now(now).into_iter().map(|(s, r)| (s.name, r)).collect(),
                // workd runs what the dead orchd left until the deadline it was told
                (None, Some((until, set))) if now < *until => set.clone(),
                (None, _) => BTreeSet::new(),
            };
            for (w, r) in run.difference(&self.running[i]) {
                self.started.push((w.clone(), *r, i, now));
            }
            self.running[i] = run;
        }
        // Never one replica on two nodes at once.
        let mut seen: BTreeSet<&(String, u32)> = BTreeSet::new();
        for set in &self.running {
            for k in set {
                assert!(seen.insert(k), "{k:?} runs on two nodes at {now:?}");
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    fn run_until(&mut self, limit_ms: u64, mut f: impl FnMut(&Net) -> bool) -> bool {
        for _ in 0..limit_ms {
            if f(self) {
                return true;
            }
            self.step();
        }
        f(self)
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().enumerate().find(|(_, o)| o.as_ref().is_some_and(|o| o.replica().is_some_and(|r| r.is_leader()))).map(|(i, _)| i)
    }

    fn submit_via(&mut self, via: usize, cmd: Command) {
        match self.write_via(via, cmd) {
            TicketStatus::Committed(_) => {}
            s => panic!("write {s:?}"),
        }
    }

    /// A write through `via`, as `orchd` serves the API's: its ticket's final status.
    fn write_via(&mut self, via: usize, cmd: Command) -> TicketStatus {
        // Until the node knows a leader (a caller retries the same way).
        let t = loop {
            let now = self.now;
            match self.nodes[via].as_mut().unwrap().submit(now, cmd.clone()) {
                Ok(t) => break t,
                Err(SubmitError::Unavailable) if self.now < Duration::from_secs(60) => self.step(),
                Err(e) => panic!("submit: {e:?}"),
            }
        };
        for _ in 0..5_000 {
            self.step();
            let now = self.now;
            match self.nodes[via].as_mut().unwrap().ticket(now, t) {
                TicketStatus::Pending => continue,
                s => return s,
            }
        }
        panic!("write not committed in 5 s");
    }

    /// As `netd` does once its `orchd` handed it a removal: no datagrams between a node and one
    /// whose key its committed state removed (until admitted again). A node keeps itself.
    fn fabric_drops(&self, from: usize, to: usize) -> bool {
        let removed = |at: usize, other: usize| {
            let k = self.keys[other];
            self.nodes[at].as_ref().and_then(|o| o.state()).is_some_and(|s| s.node_order.contains(&k) && !s.nodes.contains(&k))
        };
        removed(to, from) || removed(from, to)
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        self.running[i].clear();
        self.inflight.retain(|d| d.2 != i);
    }

    fn restart(&mut self, i: usize) {
        let o = self.fresh(i);
        self.nodes[i] = Some(o);
        // a new orchd has no lease yet and tells workd so at once
        self.orphaned[i] = None;
    }

    /// Node `i`'s `orchd` dies alone: its workd keeps running the node's replicas until the
    /// lease deadline `orchd` told it last (`Orch::lease_deadline`, told as it changes).
    fn kill_orchd(&mut self, i: usize) -> Duration {
        let now = self.now;
        let until = self.nodes[i].as_ref().and_then(|o| o.lease_deadline(now)).unwrap_or(Duration::ZERO);
        self.orphaned[i] = Some((until, self.running[i].clone()));
        self.nodes[i] = None;
        self.inflight.retain(|d| d.2 != i);
        until
    }

    /// Every replica of every workload runs exactly once, and every live node has the same
    /// desired state.
    fn settled(&self) -> bool {
        let Some(s) = self.nodes.iter().flatten().next().and_then(|o| o.state()) else { return false };
        let all: Vec<&(String, u32)> = self.running.iter().flatten().collect();
        let want: usize = s.workloads.values().map(|w| w.replicas as usize).sum();
        self.nodes.iter().flatten().all(|o| o.state() == Some(s)) && all.len() == want && want > 0
    }

    fn runner_of(&self, w: &str, r: u32) -> Option<usize> {
        self.running.iter().position(|s| s.contains(&(w.to_string(), r)))
    }
}

fn formed(seed: u64) -> Net {
    let mut net = Net::new(3, seed);
    assert!(net.run_until(10_000, |n| n.leader().is_some()), "no leader");
    let follower = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
    // Through a follower: forwarded to the leader.
    net.submit_via(follower, Command::PutWorkload(spec("web", 2)));
    net.submit_via(follower, Command::PutWorkload(spec("db", 1)));
    assert!(net.run_until(10_000, |n| n.settled()), "not placed");
    net
}

#[test]
fn three_nodes_form_a_cluster_and_run_forwarded_writes() {
    for seed in 0..5 {
        let net = formed(seed);
        let web: BTreeSet<usize> = (0..2).map(|r| net.runner_of("web", r).unwrap()).collect();
        assert_eq!(web.len(), 2, "web's replicas on distinct nodes");
        assert!(net.runner_of("db", 0).is_some());
        // Every member was admitted by the leader.
        let s = net.nodes[0].as_ref().unwrap().state().unwrap();
        assert_eq!(s.nodes.len(), 3);
        // Generation 0 everywhere: nobody restarted.
        assert!(net.nodes.iter().flatten().all(|o| o.id().is_some_and(|(id, joined)| generation_of(id) == 0 && joined)));
    }
}

/// The scenario on the logic alone: the singleton's host dies; its replicas start on
/// the survivors only after its lease; it comes back without storage, rejoins as a new
/// generation, and nothing runs twice at any millisecond (checked by `step`).
#[test]
fn a_killed_node_rejoins_as_a_new_generation_and_nothing_runs_twice() {
    for seed in 0..5 {
        let mut net = formed(seed);
        let victim = net.runner_of("db", 0).unwrap();
        let lost: Vec<(String, u32)> = net.running[victim].iter().cloned().collect();
        let killed_at = net.now;
        net.kill(victim);
        assert!(net.run_until(20_000, |n| n.settled()), "seed {seed}: lost replicas not replaced");
        let moved = net.started.iter().filter(|(w, r, _, at)| *at > killed_at && lost.contains(&(w.clone(), *r))).map(|s| s.3).min().unwrap();
        let lease = LeaseConfig::default();
        // Not before the victim's lease must have run out.
        assert!(moved - killed_at >= lease.lease, "seed {seed}: moved after {:?}", moved - killed_at);
        net.run_for(1_000);
        net.restart(victim);
        assert!(
            net.run_until(20_000, |n| n.nodes[victim].as_ref().unwrap().id().is_some_and(|(id, joined)| joined && generation_of(id) == 1)),
            "seed {seed}: did not rejoin"
        );
        // The old id is out of the configuration, the new one in.
        let l = net.leader().unwrap();
        assert!(net.run_until(5_000, |n| n.nodes[l].as_ref().unwrap().replica().is_some_and(|r| !r.config_changing())));
        let voters = net.nodes[l].as_ref().unwrap().replica().unwrap().voters();
        assert!(voters.contains(&id_for(victim, 1)) && !voters.contains(&id_for(victim, 0)), "seed {seed}: {voters:?}");
        net.run_for(3_000);
        assert!(net.settled(), "seed {seed}: not settled after the rejoin");
    }
}

/// `orchd` dies alone on the singleton's host, its node up: workd runs the replicas on until
/// the lease deadline `orchd` last told it (never past its own lease), then stops them; the
/// leader moves them only after that, so nothing runs twice at any millisecond (`step`), and
/// the restarted `orchd` rejoins.
#[test]
fn orchd_dying_alone_leaves_its_replicas_to_workd_until_the_lease_and_nothing_runs_twice() {
    for seed in 0..5 {
        let mut net = formed(seed);
        let victim = net.runner_of("db", 0).unwrap();
        let killed_at = net.now;
        let lost = net.running[victim].clone();
        let until = net.kill_orchd(victim);
        let lease = LeaseConfig::default();
        assert!(until > killed_at && until <= killed_at + lease.lease, "seed {seed}: deadline {until:?} at {killed_at:?}");
        net.run_for(1);
        assert_eq!(net.running[victim], lost, "seed {seed}: workd runs them on under the lease");
        // held down past the lease (a supervisor backoff, a slow start): the others take over
        assert!(net.run_until(20_000, |n| n.running[victim].is_empty() && n.settled()), "seed {seed}: lost replicas not replaced");
        assert!(net.now >= until);
        let moved = net.started.iter().filter(|(w, r, i, at)| *at > killed_at && *i != victim && lost.contains(&(w.clone(), *r))).map(|s| s.3).min().unwrap();
        assert!(moved >= until, "seed {seed}: moved at {moved:?}, workd's deadline {until:?}");
        net.restart(victim);
        assert!(
            net.run_until(20_000, |n| n.nodes[victim].as_ref().unwrap().id().is_some_and(|(id, joined)| joined && generation_of(id) == 1)),
            "seed {seed}: did not rejoin"
        );
        net.run_for(3_000);
        assert!(net.settled(), "seed {seed}: not settled after the rejoin");
    }
}

/// Review finding (d): a lease grant that waited before `orchd` handled it (in its socket,
/// behind a slow turn) counts from when it arrived, not from when it was handled: a
/// follower whose datagrams are all handled 1.5 s after they arrived holds a lease that ends
/// 0.5 s after the handling of the latest grant, not 2 s, and so does the deadline `workd` is told.
#[test]
fn a_grant_that_waited_is_timed_from_its_arrival() {
    let lease = LeaseConfig::default().lease;
    for seed in 0..3 {
        let mut net = formed(seed);
        let f = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
        let now = net.now;
        let fresh = net.nodes[f].as_ref().unwrap().lease_deadline(now).unwrap();
        assert!(fresh > now + lease - Duration::from_millis(300), "seed {seed}: {fresh:?} at {now:?}");
        let lag = Duration::from_millis(1_500);
        net.lag[f] = lag;
        // (lag < lease: the grants still renew it, from their arrival; checked once the
        // lease of the last grant before the lag ran out)
        for _ in 0..4_000 {
            net.step();
            let now = net.now;
            if now < fresh {
                continue;
            }
            let d = net.nodes[f].as_ref().unwrap().lease_deadline(now).unwrap_or(now);
            assert!(d <= now + lease - lag, "seed {seed}: lease to {d:?} at {now:?}: timed from the handling, not the arrival");
        }
        assert!(net.nodes[f].as_ref().unwrap().lease_holds(net.now), "seed {seed}: the renewals stopped counting");
    }
}

/// Member 0 creates the cluster when nobody answers; restarted, it must not create a second
/// one: it hears the leader and rejoins.
#[test]
fn member_zero_restarted_rejoins_instead_of_creating_a_cluster() {
    for seed in 0..5 {
        let mut net = formed(seed);
        net.kill(0);
        net.run_for(4_000);
        net.restart(0);
        assert!(net.run_until(20_000, |n| n.nodes[0].as_ref().unwrap().id().is_some_and(|(id, j)| j && generation_of(id) == 1)), "seed {seed}");
        assert!(net.run_until(20_000, |n| n.settled()), "seed {seed}");
        let s = net.nodes[0].as_ref().unwrap().state().unwrap();
        assert!(s.workloads.contains_key("web") && s.workloads.contains_key("db"), "seed {seed}: state lost");
    }
}

#[test]
fn datagrams_from_the_wrong_member_are_dropped() {
    let mut net = formed(1);
    let l = net.leader().unwrap();
    let f = (l + 1) % 3;
    let other = (l + 2) % 3;
    // A vote request in the leader's name, sent by another member.
    let h = raftbare::MessageHeader { from: raftbare::NodeId::new(id_for(l, 0)), term: Term::new(99), seqno: raftbare::MessageSeqNo::new(1) };
    let env = crate::replica::Envelope {
        from: id_for(l, 0),
        to: id_for(f, 0),
        message: Message::RequestVoteCall { header: h, last_position: LogPosition { term: Term::new(99), index: LogIndex::new(999) } },
        commands: vec![],
        grant: false,
        applied: 0,
        snapshot: None,
        pre_vote: false,
    };
    let term = net.nodes[f].as_ref().unwrap().replica().unwrap().term();
    let now = net.now;
    net.nodes[f].as_mut().unwrap().handle(now, other, &encode(&Wire::Raft(env)));
    assert_eq!(net.nodes[f].as_ref().unwrap().counters.misaddressed, 1);
    assert_eq!(net.nodes[f].as_ref().unwrap().replica().unwrap().term(), term);
    net.nodes[f].as_mut().unwrap().handle(now, other, b"\xca\x09junk");
    assert_eq!(net.nodes[f].as_ref().unwrap().counters.undecodable, 1);
    // A follower does not take the scheduler's commands from another node.
    assert_eq!(net.nodes[f].as_mut().unwrap().submit(now, Command::Unassign { workload: "db".into(), replica: 0 }), Err(SubmitError::Refused));
}

/// Node labels (node 1 in zone `a`, the others in `b`) and constraints: `db` (zone = a) runs
/// only on node 1, `web` (zone != a, 2 replicas) on nodes 0 and 2, `gpu` (gpu = yes) is
/// accepted but no node can take it: every node's listing says so (eligible 0, unassigned).
#[test]
fn constraints_place_on_labelled_nodes_and_the_listing_shows_it() {
    use crate::listing::{decode_page, PAGE_MAX};
    use crate::placement::Constraint;
    let label = |k: &str, v: &str| Constraint::LabelEquals { key: k.to_string(), value: v.to_string() };
    for seed in 0..3 {
        let mut net = Net::new(3, seed);
        let labels: BTreeMap<NodeKey, BTreeMap<String, String>> =
            (0..3).map(|i| (net.keys[i], [("zone".to_string(), (if i == 1 { "a" } else { "b" }).to_string())].into())).collect();
        for o in net.nodes.iter_mut().flatten() {
            o.set_labels(labels.clone());
        }
        assert!(net.run_until(10_000, |n| n.leader().is_some()), "no leader");
        let follower = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { constraints: vec![label("zone", "a")], ..spec("db", 1) }));
        let not_a = Constraint::LabelNotEquals { key: "zone".to_string(), value: "a".to_string() };
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { constraints: vec![not_a], ..spec("web", 2) }));
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { constraints: vec![label("gpu", "yes")], ..spec("gpu", 1) }));
        let placed = |n: &Net| n.runner_of("db", 0).is_some() && n.runner_of("web", 0).is_some() && n.runner_of("web", 1).is_some();
        assert!(net.run_until(10_000, placed), "seed {seed}: not placed");
        net.run_for(2_000);
        assert_eq!(net.runner_of("db", 0), Some(1), "seed {seed}");
        let web: BTreeSet<usize> = (0..2).filter_map(|r| net.runner_of("web", r)).collect();
        assert_eq!(web, [0, 2].into(), "seed {seed}");
        assert_eq!(net.runner_of("gpu", 0), None);
        for o in net.nodes.iter().flatten() {
            let page = decode_page(&o.list_page(0, PAGE_MAX).unwrap()).unwrap();
            assert_eq!((page.total, page.entries.len()), (3, 3));
            let e = |n: &str| page.entries.iter().find(|e| e.spec.name == n).unwrap();
            assert_eq!((e("gpu").eligible, e("gpu").replicas.clone()), (0, vec![None]), "seed {seed}");
            assert_eq!((e("db").eligible, e("db").replicas.clone()), (1, vec![Some(net.keys[1])]));
            assert_eq!(e("web").eligible, 2);
            assert!(e("web").replicas.iter().all(|r| r.is_some_and(|k| k != net.keys[1])));
        }
        // Put again with a constraint its node no longer meets: it moves (never on two nodes).
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { constraints: vec![label("zone", "b")], ..spec("db", 1) }));
        assert!(net.run_until(10_000, |n| n.runner_of("db", 0).is_some_and(|h| h != 1)), "seed {seed}: db did not move off node 1");
    }
}

/// The write budget: once the log and the state would pass it, an operator's write is refused
/// as `Full` (what `apid` answers 503 `desired_state_full`) on the leader and on a follower,
/// and what was accepted before is still placed.
#[test]
fn a_full_desired_state_refuses_writes_and_keeps_what_it_has() {
    let cfg = OrchConfig { write_budget: 16 * 1024, ..OrchConfig::default() };
    let mut net = Net::with_config(3, 4, cfg);
    assert!(net.run_until(10_000, |n| n.leader().is_some()), "no leader");
    let l = net.leader().unwrap();
    let mut accepted = 0;
    let full = loop {
        let now = net.now;
        let cmd = Command::PutWorkload(spec(&alloc::format!("w{accepted}"), 1));
        match net.nodes[l].as_mut().unwrap().submit(now, cmd.clone()) {
            Ok(_) => {
                accepted += 1;
                net.run_for(300);
            }
            Err(e) => break e,
        }
        assert!(accepted < 200, "never full");
    };
    assert_eq!(full, SubmitError::Full);
    assert!(accepted >= 5, "only {accepted} writes fit");
    let follower = (0..3).find(|i| *i != l).unwrap();
    net.run_for(500);
    let now = net.now;
    assert_eq!(net.nodes[follower].as_mut().unwrap().submit(now, Command::PutWorkload(spec("more", 1))), Err(SubmitError::Full));
    assert!(net.run_until(10_000, |n| n.settled()), "what was accepted is placed");
}

/// `catenary node label`: a `SetLabels` forwarded by a follower is committed on every node,
/// the listing's eligibility follows it, and a replica whose node no longer meets its
/// constraints after the relabel moves (never on two nodes); a workload no node could take
/// is placed once a node is labelled for it; removing the label moves it off again.
#[test]
fn a_relabel_moves_replicas_and_places_what_now_fits() {
    use crate::listing::{decode_page, PAGE_MAX};
    use crate::placement::Constraint;
    for seed in 0..3 {
        let mut net = Net::new(3, seed);
        // Node 1 is `zone=a` by its cluster-file line; the others have no labels.
        let labels: BTreeMap<NodeKey, BTreeMap<String, String>> = [(net.keys[1], [("zone".to_string(), "a".to_string())].into())].into();
        for o in net.nodes.iter_mut().flatten() {
            o.set_labels(labels.clone());
        }
        assert!(net.run_until(10_000, |n| n.leader().is_some()), "no leader");
        let follower = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
        let zone_a = Constraint::LabelEquals { key: "zone".to_string(), value: "a".to_string() };
        let gpu = Constraint::LabelEquals { key: "gpu".to_string(), value: "yes".to_string() };
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { constraints: vec![zone_a], ..spec("db", 1) }));
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { constraints: vec![gpu], ..spec("ml", 1) }));
        assert!(net.run_until(10_000, |n| n.runner_of("db", 0) == Some(1)), "seed {seed}: db not on node 1");
        assert_eq!(net.runner_of("ml", 0), None);
        // Relabel: node 1 leaves zone a (the file's label removed), node 2 joins it and gets a GPU.
        let (k1, k2) = (net.keys[1], net.keys[2]);
        net.submit_via(follower, Command::SetLabels { node: k1, changes: vec![("zone".to_string(), None)] });
        net.submit_via(follower, Command::SetLabels { node: k2, changes: vec![("zone".to_string(), Some("a".to_string())), ("gpu".to_string(), Some("yes".to_string()))] });
        let mut twice = false;
        let moved = net.run_until(15_000, |n| {
            twice |= (0..3).filter(|i| n.nodes[*i].as_ref().is_some_and(|o| o.assigned_now(n.now).iter().any(|(s, _)| s.name == "db"))).count() > 1;
            n.runner_of("db", 0) == Some(2) && n.runner_of("ml", 0) == Some(2)
        });
        assert!(moved, "seed {seed}: db did not move to node 2, or ml was not placed there");
        assert!(!twice, "seed {seed}: db ran on two nodes");
        net.run_for(1_000);
        for o in net.nodes.iter().flatten() {
            let l = o.effective_labels();
            assert_eq!(l.get(&k1).and_then(|m| m.get("zone")), None, "seed {seed}");
            assert_eq!(l[&k2].get("gpu").map(String::as_str), Some("yes"));
            let page = decode_page(&o.list_page(0, PAGE_MAX).unwrap()).unwrap();
            let e = |n: &str| page.entries.iter().find(|e| e.spec.name == n).unwrap().clone();
            assert_eq!((e("db").eligible, e("ml").eligible), (1, 1), "seed {seed}");
        }
        // The GPU label removed again: ml has no node left and is taken off.
        net.submit_via(follower, Command::SetLabels { node: k2, changes: vec![("gpu".to_string(), None)] });
        assert!(net.run_until(15_000, |n| n.runner_of("ml", 0).is_none() && n.nodes.iter().flatten().all(|o| o.state().is_some_and(|s| !s.assignments.contains_key(&("ml".to_string(), 0))))), "seed {seed}: ml stayed");
    }
}

/// The images each node reports with its capacity reach the leader's scheduler: among nodes
/// with equal room, the one whose store holds a workload's image gets its replica; an image
/// nobody holds goes by key as before.
#[test]
fn replicas_go_to_a_node_that_holds_their_image() {
    for seed in 0..3 {
        let mut net = Net::new(3, seed);
        for (i, o) in net.nodes.iter_mut().enumerate() {
            o.as_mut().unwrap().set_images(if i == 2 { vec![([9; 32], 10), ([8; 32], 10)] } else { vec![([8; 32], 10)] }, crate::placement::STORE_UNKNOWN);
        }
        assert!(net.run_until(10_000, |n| n.leader().is_some()), "no leader");
        let follower = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { image: [9; 32], ..spec("img", 1) }));
        assert!(net.run_until(10_000, |n| n.runner_of("img", 0).is_some()), "seed {seed}: not placed");
        assert_eq!(net.runner_of("img", 0), Some(2), "seed {seed}: not on the node that holds the image");
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { image: [7; 32], ..spec("plain", 1) }));
        assert!(net.run_until(10_000, |n| n.runner_of("plain", 0).is_some()), "seed {seed}: not placed");
        assert_eq!(net.runner_of("plain", 0), Some(0), "seed {seed}: no holder: the smallest key with the most room");
    }
}

/// Three nodes with store rooms `rooms` (MiB), node 2 holding `held_by_2` (digest, MiB), a
/// leader: the workload `big` (image `[9; 32]`, kept off node 2) is put through a follower and
/// must go to node 1, the only other store it fits. Returns the net, the follower and the
/// constraint that keeps a workload off node 2.
fn big_placed_where_it_fits(seed: u64, rooms: [u64; 3], held_by_2: Vec<([u8; 32], u32)>) -> (Net, usize, Vec<crate::placement::Constraint>) {
    let mut net = Net::new(3, seed);
    for (i, o) in net.nodes.iter_mut().enumerate() {
        let images = if i == 2 { held_by_2.clone() } else { vec![] };
        o.as_mut().unwrap().set_images(images, rooms[i]);
    }
    assert!(net.run_until(10_000, |n| n.leader().is_some()), "no leader");
    let follower = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
    let not2 = vec![crate::placement::Constraint::NotOnNode(net.keys[2])];
    net.submit_via(follower, Command::PutWorkload(WorkloadSpec { image: [9; 32], constraints: not2.clone(), ..spec("big", 1) }));
    assert!(net.run_until(10_000, |n| n.runner_of("big", 0).is_some()), "seed {seed}: not placed");
    assert_eq!(net.runner_of("big", 0), Some(1), "seed {seed}: placed where its image does not fit");
    (net, follower, not2)
}

/// Each node's store room and its images' sizes reach the leader with the capacity: a
/// workload whose image (600 MiB, as its holder reports it) fits only node 1's store is placed
/// there although node 0 has the same room and the smaller key; a second one with two
/// replicas has one node short (node 2 holds the image but is excluded by constraint) and is
/// refused whole; and a node that reports no room (an older node) is never refused for it.
#[test]
fn a_replica_goes_only_where_its_image_fits_the_store() {
    use crate::placement::STORE_UNKNOWN;
    for seed in 0..3 {
        let (mut net, follower, not2) = big_placed_where_it_fits(seed, [100, 700, 0], vec![([9; 32], 600)]);
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { image: [9; 32], constraints: not2, ..spec("two", 2) }));
        net.run_for(3_000);
        assert!((0..2).all(|r| net.runner_of("two", r).is_none()), "seed {seed}: two replicas placed with one store short");
        // node 0 now reports no room at all (as a node of the older layout): it takes one
        net.nodes[0].as_mut().unwrap().set_images(vec![], STORE_UNKNOWN);
        assert!(net.run_until(10_000, |n| (0..2).all(|r| n.runner_of("two", r).is_some())), "seed {seed}: a node without a room report was refused");
    }
}

/// A copy under way takes its room in the store once. Node 1 (700 MiB free) gets `big`
/// (a 600 MiB image only node 2 holds); once its copy has begun, its store has reserved the
/// image, so node 1 reports 100 MiB free and, beside that room, the upload (`orchd`:
/// `StoreInfo::uploads_mib`, `Orch::set_store`). A second workload of a 90 MiB image then
/// still fits node 1. (Before, node 1 reported only finished images: the leader counted the
/// 600 MiB copy against the 100 MiB left as well, and refused the second workload.)
#[test]
fn a_copy_under_way_takes_its_room_once() {
    for seed in 0..3 {
        let (mut net, follower, not2) = big_placed_where_it_fits(seed, [50, 700, 0], vec![([9; 32], 600), ([5; 32], 90)]);
        // the copy has begun on node 1: 600 MiB reserved, the image reported as its store's
        net.nodes[1].as_mut().unwrap().set_store(vec![], vec![([9; 32], 601)], 100);
        net.run_for(2_000);
        net.submit_via(follower, Command::PutWorkload(WorkloadSpec { image: [5; 32], constraints: not2, ..spec("small", 1) }));
        assert!(net.run_until(10_000, |n| n.runner_of("small", 0).is_some()), "seed {seed}: the copy under way was counted twice against node 1's store");
        assert_eq!(net.runner_of("small", 0), Some(1), "seed {seed}");
    }
}

/// An upload goes only in the store report, beside the room it is reserved from, and never
/// pushes a held image out of the 32 a node reports; the leader counts it as the node's only
/// with that report (one that was lost leaves the older room and no upload: the copy is then
/// counted against that room, once).
#[test]
fn uploads_travel_with_the_room_and_never_displace_held_images() {
    let mut net = Net::new(3, 0);
    let o = net.nodes[0].as_mut().unwrap();
    // 32 images held (the index is full): an upload, even of the smallest digest, is left out
    let held: Vec<([u8; 32], u32)> = (1..=32u8).map(|i| ([i; 32], 10)).collect();
    o.set_store(held, vec![([0; 32], 50), ([5; 32], 10)], 100);
    assert_eq!(o.own_store.images, (1..=32u8).map(|i| [i; 32]).collect::<Vec<_>>());
    assert_eq!(o.own_store.sizes.len(), 32);
    assert!(!o.own_store.sizes.iter().any(|s| s.0 == [0; 32]), "an upload displaced a held image");
    // an upload of an image not held: in the store report's sizes only
    o.set_store(vec![([1; 32], 10)], vec![([2; 32], 600), ([1; 32], 10)], 100);
    assert_eq!(o.own_store.images, vec![[1; 32]]);
    assert_eq!(o.own_store.sizes, vec![([1; 32], 10), ([2; 32], 600)]);
    let st = o.own_store.clone();
    assert_eq!(st.placement_images(), vec![[1; 32], [2; 32]]);
    assert_eq!(st.image_mib(&st.placement_images()), vec![10, 600]);
    // at the leader, with that store report lost: the older one (700 MiB free, no upload)
    // beside the same capacity report, so the copy is counted against 700 MiB
    let older = StoreReport { images: vec![[1; 32]], sizes: vec![([1; 32], 10)], free_mib: 700 };
    assert_eq!(older.placement_images(), vec![[1; 32]]);
}

/// `catenary node remove` of a cluster-file member: committed through a follower, the leader
/// does not admit it again (it admits the file's members only once), its replicas move to the
/// others (never on two nodes), and a later `AdmitNode` lets it back (a voter again, so it
/// hears the admission too).
#[test]
fn a_removed_file_member_stays_out_and_its_replicas_move() {
    for seed in 0..3 {
        let mut net = formed(seed);
        let follower = (0..3).find(|i| Some(*i) != net.leader()).unwrap();
        net.submit_via(follower, Command::PutWorkload(spec("web", 2)));
        assert!(net.run_until(10_000, |n| n.runner_of("web", 0).is_some() && n.runner_of("web", 1).is_some()), "seed {seed}: not placed");
        // Remove a node that runs a replica and is not the one asked.
        let gone = (0..3).find(|i| *i != follower && (0..2).any(|r| net.runner_of("web", r) == Some(*i))).unwrap();
        let key = net.keys[gone];
        net.submit_via(follower, Command::RemoveNode(key));
        let moved = net.run_until(15_000, |n| (0..2).all(|r| n.runner_of("web", r).is_some_and(|h| h != gone)));
        assert!(moved, "seed {seed}: web did not move off the removed node");
        net.run_for(3_000);
        // The removed node is not told (the others' fabric dropped it): its state is its own.
        for (_, o) in net.nodes.iter().enumerate().filter(|(i, _)| *i != gone) {
            let s = o.as_ref().unwrap().state().unwrap();
            assert!(!s.nodes.contains(&key), "seed {seed}: the removed node was admitted again");
            assert!(s.node_order.contains(&key));
            assert!(s.assignments.values().all(|k| *k != key));
        }
        net.submit_via(follower, Command::AdmitNode(key));
        assert!(net.run_until(5_000, |n| n.nodes.iter().flatten().all(|o| o.state().is_some_and(|s| s.nodes.contains(&key)))), "seed {seed}: not admitted again");
    }
}

/// Compaction on nodes: a node restarted without its storage while the leader compacted its log
/// far past it (the leader's log no longer reaches back to it) catches up through the
/// snapshot's chunks, as `orchd` sends them, over a network that drops 5% of datagrams; the
/// leader's log stays short.
#[test]
fn a_node_far_behind_a_compacted_leader_catches_up_through_chunks() {
    let mut cfg = OrchConfig::default();
    cfg.replica.snapshot_every = 16;
    // the nodes' ratio (32 of 256)
    cfg.replica.snapshot_margin = 2;
    for seed in 0..3u64 {
        let mut net = Net::with_config(3, 70 + seed, cfg.clone());
        net.drop_per_mille = 50;
        // The follower's final acknowledgement never arrives: its log tells the leader.
        net.drop_whole_snap_acks = true;
        assert!(net.run_until(10_000, |n| n.leader().is_some()), "seed {seed}: no leader");
        let l = net.leader().unwrap();
        let behind = (l + 1) % 3;
        net.kill(behind);
        for i in 0..60 {
            // 1 kB of environment each: the snapshot is about 60 chunks.
            let mut w = spec(&alloc::format!("w{i}"), 1);
            w.env.push(("PAD".to_string(), "p".repeat(1000)));
            net.submit_via(l, Command::PutWorkload(w));
        }
        let leader = net.nodes[l].as_ref().unwrap();
        let log = leader.replica().unwrap().log();
        assert!(log.snapshot_position().index.get() >= 48, "seed {seed}: compacted only to {:?}", log.snapshot_position());
        assert!(log.last_position().index.get() - log.snapshot_position().index.get() <= 32, "seed {seed}: the log kept {:?}", log.last_position());
        net.restart(behind);
        let caught_up = net.run_until(30_000, |n| {
            let b = n.nodes[behind].as_ref().and_then(|o| o.state());
            let a = n.nodes[l].as_ref().and_then(|o| o.state());
            b.is_some_and(|b| b.workloads.len() == 60 && a.is_some_and(|a| a.workloads == b.workloads))
        });
        let b = net.nodes[behind].as_ref().unwrap();
        assert!(caught_up, "seed {seed}: the restarted node has {:?} workloads; assembled {}, refused {}", b.state().map(|s| s.workloads.len()), b.snap_in.assembled, b.snap_in.refused);
        assert!(b.replica().unwrap().snapshots_installed() >= 1 && b.snap_in.assembled >= 1, "seed {seed}: caught up without a snapshot");
        let sent = net.nodes.iter().flatten().map(|o| o.snap_out.chunks_sent).sum::<u64>();
        assert!(sent > 2 * crate::snapshot::WINDOW as u64, "seed {seed}: {sent} chunks sent");
        assert_eq!(b.snap_in.refused, 0);
        // The leader ends the transfer on the caught-up follower's AppendEntries reply.
        let ended = net.run_until(5_000, |n| n.nodes[l].as_ref().is_some_and(|o| o.snap_out.leader_transfers().count() == 0));
        let out = &net.nodes[l].as_ref().unwrap().snap_out;
        assert!(ended && out.completed_by_log >= 1 && out.completed == out.completed_by_log, "seed {seed}: {} transfers open, {} ended ({} by the log)", out.leader_transfers().count(), out.completed, out.completed_by_log);
    }
}

/// The voter ids in `i`'s configuration, as members.
fn voter_members(net: &Net, i: usize) -> BTreeSet<usize> {
    net.nodes[i].as_ref().and_then(|o| o.replica()).map(|r| r.voters().into_iter().map(member_of).collect()).unwrap_or_default()
}

/// `catenary node remove` of a running member over a fabric that drops it (as `netd` does):
/// the leader takes its voter out of the configuration; admitted again, the node (which
/// never learnt it was out: the fabric cut it before the joint change) is a voter again on its
/// next Raft datagram to the leader (or, restarted while removed, on its `Join`), catches up
/// and gets replicas; and it counts: with one of
/// the two others then killed, it and the last one commit a write (out of the configuration,
/// one of two voters could not).
#[test]
fn a_removed_member_leaves_the_configuration_and_is_a_voter_again_when_admitted() {
    let mut restarts = 0;
    for seed in 0..4 {
        let mut net = formed(20 + seed);
        let l = net.leader().unwrap();
        let gone = (l + 1 + seed as usize % 2) % 3;
        let other = (0..3).find(|i| *i != l && *i != gone).unwrap();
        net.submit_via(other, Command::RemoveNode(net.keys[gone]));
        let out = net.run_until(10_000, |n| [l, other].iter().all(|i| !voter_members(n, *i).contains(&gone)) && (0..2).all(|r| n.runner_of("web", r).is_some_and(|h| h != gone)));
        assert!(out, "seed {seed}: {gone} is still a voter ({:?}) or runs web", voter_members(&net, l));
        assert!(net.nodes[l].as_ref().unwrap().counters.voters_removed >= 1);
        // Odd seeds: it restarts (without storage) while removed, hears nobody and takes
        // generation 0 again (member 0 would create a cluster of its own: not that one).
        let restarted = seed % 2 == 1 && gone != 0;
        if restarted {
            restarts += 1;
            net.kill(gone);
            net.restart(gone);
            net.run_for(4_000);
        }
        net.submit_via(other, Command::AdmitNode(net.keys[gone]));
        let back = net.run_until(15_000, |n| {
            let key = n.keys[gone];
            let changing = n.nodes[l].as_ref().and_then(|o| o.replica()).is_none_or(|r| r.config_changing());
            !changing && voter_members(n, l).contains(&gone) && n.nodes[gone].as_ref().and_then(|o| o.state()).is_some_and(|s| s.nodes.contains(&key)) && n.nodes[gone].as_ref().is_some_and(|o| o.lease_holds(n.now))
        });
        assert!(back, "seed {seed}: {gone} is not a voter again: leader's voters {:?}", voter_members(&net, l));
        // It counts in the majority.
        let kill = if net.leader() == Some(l) { other } else { l };
        net.kill(kill);
        net.submit_via(gone, Command::PutWorkload(spec("late", 1)));
        assert!(net.run_until(15_000, |n| n.runner_of("late", 0).is_some()), "seed {seed}: late not placed");
    }
    assert!(restarts > 0, "no seed restarted the removed node");
}

/// A removal the state machine refuses (`WouldLoseQuorum`: in three nodes, the second one) is
/// committed to the log but not applied: its ticket says `Failed` (what `apid` answers 409
/// `write_not_applied`), never `Committed`, and the node stays admitted.
#[test]
fn a_refused_removal_is_reported_failed_not_done() {
    for seed in 0..3 {
        let mut net = formed(40 + seed);
        let l = net.leader().unwrap();
        let first = (l + 1) % 3;
        let second = (l + 2) % 3;
        assert_eq!(net.write_via(l, Command::RemoveNode(net.keys[first])), TicketStatus::Committed(None), "seed {seed}: the first removal");
        let key = net.keys[second];
        let leader = net.leader().unwrap();
        assert_eq!(net.write_via(leader, Command::RemoveNode(key)), TicketStatus::Failed, "seed {seed}: the second removal was reported done");
        let s = net.nodes[leader].as_ref().unwrap().state().unwrap();
        assert!(s.nodes.contains(&key), "seed {seed}: the refused removal removed the node");
    }
}

/// The catch-up pull on `Orch` nodes (what `orchd` runs; docs/orchestration.md "Admitted
/// again"): five nodes; K removed (every fabric drops it) and, while node N is cut off,
/// admitted again and a voter again; K is made the leader (whoever else leads is cut off until
/// K wins); N comes back. N's fabric still drops K (its state removed K), and the others hear
/// K, so without the pull N stays behind for as long as K leads. With it N asks a member it
/// hears, installs that member's committed state, applies the admission, hears K and follows
/// it, and every node holds the same state.
#[test]
fn a_member_that_missed_the_readmission_pulls_the_state_and_follows_the_readmitted_leader() {
    let top = |n: &Net| {
        let lead = n.nodes.iter().enumerate().filter_map(|(i, o)| o.as_ref().and_then(|o| o.replica()).filter(|r| r.is_leader()).map(|r| (r.term(), i)));
        lead.max().map(|(_, i)| i)
    };
    let mut exercised = 0;
    for seed in 0..3u64 {
        let mut net = Net::new(5, 70 + seed);
        assert!(net.run_until(15_000, |n| top(n).is_some() && n.nodes.iter().flatten().all(|o| o.state().is_some_and(|s| s.nodes.len() == 5))), "seed {seed}: not formed");
        let l = top(&net).unwrap();
        let (k, n) = ((l + 1) % 5, (l + 2) % 5);
        net.submit_via(l, Command::PutWorkload(spec("web", 2)));
        net.submit_via(l, Command::RemoveNode(net.keys[k]));
        let out = net.run_until(10_000, |x| top(x).is_some_and(|t| !voter_members(x, t).contains(&k)) && x.nodes[n].as_ref().and_then(|o| o.state()).is_some_and(|s| !s.nodes.contains(&x.keys[k])));
        assert!(out, "seed {seed}: {k} is still a voter, or {n} did not apply its removal");
        // N cut off; K admitted again and a voter again.
        net.groups[n] = 1;
        let via = top(&net).unwrap();
        net.submit_via(via, Command::AdmitNode(net.keys[k]));
        let back = net.run_until(15_000, |x| {
            (0..5).filter(|i| *i != n).all(|i| voter_members(x, i).contains(&k) && x.nodes[i].as_ref().and_then(|o| o.replica()).is_some_and(|r| !r.config_changing() && !r.has_uncommitted()))
        });
        assert!(back, "seed {seed}: {k} is not a voter again");
        // K leads: cut off whoever else leads until K does (each time healing the one before).
        let mut cut: Option<usize> = None;
        for _ in 0..20 {
            match top(&net) {
                Some(t) if t == k => break,
                Some(t) => {
                    if let Some(c) = cut {
                        net.groups[c] = 0;
                    }
                    net.groups[t] = 2;
                    cut = Some(t);
                    net.run_for(3_000);
                }
                None => net.run_for(1_000),
            }
        }
        if let Some(c) = cut {
            net.groups[c] = 0;
        }
        net.run_for(2_000);
        if top(&net) != Some(k) {
            continue;
        }
        assert!(net.nodes[n].as_ref().unwrap().state().is_some_and(|s| !s.nodes.contains(&net.keys[k])), "seed {seed}: {n} learnt the admission while cut off");
        // N back; quiet.
        net.groups[n] = 0;
        net.run_for(10_000);
        if top(&net) != Some(k) {
            continue;
        }
        exercised += 1;
        let o = net.nodes[n].as_ref().unwrap();
        assert!(o.state().is_some_and(|s| s.nodes.contains(&net.keys[k])), "seed {seed}: {n} still has {k} removed while {k} leads");
        assert!(o.counters.pulls_installed >= 1, "seed {seed}: {n} caught up without a pull");
        assert_eq!(o.leader(), Some(k), "seed {seed}: {n} does not follow {k}");
        let s = net.nodes[k].as_ref().unwrap().state().unwrap();
        assert!(net.nodes.iter().flatten().all(|o| o.state() == Some(s)), "seed {seed}: the nodes disagree");
    }
    assert!(exercised >= 2, "only {exercised} of 3 seeds had the readmitted node lead through the quiet period");
}

/// A pulled answer completes while commits go on (review of 2026-12-04, finding (b)): node N
/// hears a follower but not the leader (cut both ways), so it catches up only by pulling; the
/// state is some 60 chunks (1 kB workloads), a tenth of the datagrams are lost, and the leader
/// commits a write every 100 ms, so every answer's position is newer than the last. The
/// answerer keeps sending the snapshot it started for N (pinned) and N re-asks it on its
/// election timeout, which re-sends from N's acknowledgement: N installs pulled states and ends
/// no further behind than what the writes of a few seconds add.
#[test]
fn a_pulled_answer_completes_under_steady_commits_and_loss() {
    let mut cfg = OrchConfig::default();
    cfg.replica.snapshot_every = 16;
    // the nodes' ratio (32 of 256)
    cfg.replica.snapshot_margin = 2;
    for seed in 0..3u64 {
        let mut net = Net::with_config(3, 90 + seed, cfg.clone());
        assert!(net.run_until(10_000, |n| n.leader().is_some()), "seed {seed}: no leader");
        let l = net.leader().unwrap();
        let (b, n) = ((l + 1) % 3, (l + 2) % 3);
        let put = |i: u64, round: u64| {
            let mut w = spec(&alloc::format!("w{i}"), 1);
            w.env.push(("PAD".to_string(), alloc::format!("{round}").repeat(1000 / alloc::format!("{round}").len())));
            Command::PutWorkload(w)
        };
        for i in 0..60 {
            net.submit_via(l, put(i, 0));
        }
        net.cut.push((l, n));
        net.drop_per_mille = 100;
        // 20 s of a write every 100 ms (the same 60 names again: the state stays its size).
        let (mut round, mut tickets, mut committed) = (1, Vec::new(), 0);
        for k in 0..200u64 {
            let now = net.now;
            let o = net.nodes[l].as_mut().unwrap();
            tickets.retain(|t| match o.ticket(now, *t) {
                TicketStatus::Pending => true,
                TicketStatus::Committed(_) => {
                    committed += 1;
                    false
                }
                _ => false,
            });
            if let Ok(t) = o.submit(now, put(k % 60, round)) {
                tickets.push(t);
            }
            if k % 60 == 59 {
                round += 1;
            }
            net.run_for(100);
        }
        assert!(committed >= 150, "seed {seed}: only {committed} writes committed");
        let o = net.nodes[n].as_ref().unwrap();
        let installed = o.counters.pulls_installed;
        let behind = net.nodes[b].as_ref().unwrap().replica().unwrap().commit_index().saturating_sub(o.replica().unwrap().commit_index());
        assert!(installed >= 2, "seed {seed}: {n} installed {installed} pulled states in 20 s of commits (assembled {}, behind by {behind})", o.snap_in.assembled);
        // Where the test ends in N's pull cycle decides the lag: over seeds 90..102, with and
        // without the spec's health field (which shifted every seed's run), it was 27-102
        // entries (one bound of 80 held for seeds 90..93 by luck: seed 97 was at 94 before the
        // field). 120 is 12 s of the 20 s of writes.
        assert!(behind < 120, "seed {seed}: {n} is {behind} entries behind {b}");
        assert_eq!(o.snap_in.refused, 0);
    }
}

/// A pull is answered only to a member the answerer's state admits (finding (c)): once a
/// follower applied `RemoveNode(K)`, K's pull (as it could arrive in the one `orchd` turn before
/// `netd` drops K) gets no chunk and is counted refused; an admitted member's pull is answered.
#[test]
fn a_pull_from_a_removed_member_is_refused() {
    for seed in 0..3u64 {
        let mut net = formed(60 + seed);
        let l = net.leader().unwrap();
        let (f, k) = ((l + 1) % 3, (l + 2) % 3);
        net.submit_via(l, Command::RemoveNode(net.keys[k]));
        let key = net.keys[k];
        assert!(net.run_until(10_000, |x| x.nodes[f].as_ref().and_then(|o| o.state()).is_some_and(|s| !s.nodes.contains(&key))), "seed {seed}: {f} did not apply the removal");
        let ask = |net: &mut Net, from: usize| {
            let now = net.now;
            let asker = net.nodes[from].as_ref().unwrap().replica().unwrap().id();
            let fid = net.nodes[f].as_ref().unwrap().replica().unwrap().id();
            let o = net.nodes[f].as_mut().unwrap();
            o.take_outgoing();
            o.handle(now, from, &encode(&Wire::Pull { from: asker, to: fid, applied: 0 }));
            o.take_outgoing().into_iter().filter(|(to, b)| *to == from && matches!(decode(b), Ok(Wire::SnapChunk(c)) if c.head.pulled)).count()
        };
        assert_eq!(ask(&mut net, k), 0, "seed {seed}: the removed member's pull was answered");
        assert!(net.nodes[f].as_ref().unwrap().replica().unwrap().pulls_refused >= 1, "seed {seed}: not counted");
        // the leader never answers; an admitted follower's pull (from N = the leader's id asked
        // of f would be the leader's): ask as the leader, which is admitted
        assert!(ask(&mut net, l) > 0, "seed {seed}: an admitted member's pull was not answered");
    }
}

/// Finding (a) on `Orch` nodes: a member restarted without storage that cannot hear the leader
/// (here cut from it; on nodes, its `netd` dropping a key admitted at run time) has no
/// configuration and so no peers; it asks the file's members by index, and a member that is
/// itself a later generation (restarted before) takes the pull addressed to its index and
/// answers: the fresh member installs the committed state.
#[test]
fn a_fresh_member_that_cannot_hear_the_leader_pulls_from_a_file_member_of_any_generation() {
    for seed in 0..3u64 {
        let mut net = formed(110 + seed);
        let l = net.leader().unwrap();
        let (b, n) = ((l + 1) % 3, (l + 2) % 3);
        net.kill(b);
        net.restart(b);
        let again = net.run_until(15_000, |x| x.nodes[b].as_ref().and_then(|o| o.id()).is_some_and(|(id, joined)| joined && generation_of(id) >= 1) && x.nodes[b].as_ref().and_then(|o| o.state()).is_some_and(|s| s.workloads.len() == 2));
        assert!(again, "seed {seed}: {b} did not rejoin as a later generation");
        net.kill(n);
        net.cut.push((l, n));
        net.restart(n);
        let pulled = net.run_until(15_000, |x| x.nodes[n].as_ref().is_some_and(|o| o.counters.pulls_installed >= 1 && o.state().is_some_and(|s| s.workloads.len() == 2)));
        let o = net.nodes[n].as_ref().unwrap();
        assert!(pulled, "seed {seed}: the fresh {n} has {:?} workloads, pulled {}", o.state().map(|s| s.workloads.len()), o.counters.pulls_installed);
    }
}

#[path = "orch_vouch_tests.rs"]
mod vouch;

#[path = "orch_ticket_tests.rs"]
mod tickets;

#[path = "orch_room_tests.rs"]
mod room;

/// `Wire::Healthy`: a node's report of the replicas healthy there reaches every member, and
/// counts for a replica only from the node the state assigns it to, for the spec reported (or
/// any), and while fresh, its own too (a rolling update waits on it: docs/orchestration.md "A
/// workload's spec changes").
#[test]
fn a_healthy_report_counts_only_from_the_replicas_host_and_while_fresh() {
    use crate::raft_codec::{replica_tag, HealthyReplica};
    for seed in 0..3 {
        let mut net = formed(seed);
        let (a, b) = (net.runner_of("web", 0).unwrap(), net.runner_of("web", 1).unwrap());
        let other = (0..3).find(|i| *i != a && *i != b).unwrap();
        let (t0, t1) = (replica_tag("cl-web-0"), replica_tag("cl-web-1"));
        let (d0, d1) = ([0xd0; 32], [0xd1; 32]);
        // a reports web 0 healthy (and, wrongly, web 1: it does not run it)
        let at = net.now;
        net.nodes[a].as_mut().unwrap().set_healthy(at, vec![HealthyReplica { tag: t0, spec: d0 }, HealthyReplica { tag: t1, spec: d1 }]);
        net.run_for(2_500);
        let now = net.now;
        for i in [b, other, a] {
            let o = net.nodes[i].as_ref().unwrap();
            assert!(o.replica_healthy("web", 0, t0, Some(&d0), now), "seed {seed}: node {i} does not see web 0 healthy");
            assert!(o.replica_healthy("web", 0, t0, None, now), "seed {seed}: node {i}: on any spec");
            assert!(!o.replica_healthy("web", 0, t0, Some(&[0xee; 32]), now), "seed {seed}: another spec counted");
            assert!(!o.replica_healthy("web", 0, replica_tag("cl-web-9"), None, now), "seed {seed}: a tag not reported counted");
            assert!(!o.replica_healthy("web", 1, t1, Some(&d1), now) && !o.replica_healthy("web", 1, t1, None, now), "seed {seed}: web 1 counted from a node that does not run it");
            assert!(!o.replica_healthy("web", 7, t0, None, now) && !o.replica_healthy("nope", 0, t0, None, now));
        }
        // too old a report does not count (its node may have died), nor its own
        let fresh = OrchConfig::default().capacity_period * crate::orch::HEALTHY_FRESH_PERIODS;
        let later = now + fresh + Duration::from_millis(1_001);
        assert!(!net.nodes[other].as_ref().unwrap().replica_healthy("web", 0, t0, None, later), "seed {seed}: a stale report counted");
        assert!(!net.nodes[a].as_ref().unwrap().replica_healthy("web", 0, t0, None, at + fresh + Duration::from_millis(1)), "seed {seed}: its own stale report counted");
        // a node whose own report went stale (its workd stopped answering) stops sending it
        net.run_for(u64::try_from((fresh + Duration::from_secs(2)).as_millis()).unwrap());
        let now = net.now;
        assert!(!net.nodes[other].as_ref().unwrap().replica_healthy("web", 0, t0, None, now), "seed {seed}: a stale own report was still sent");
        // a fresh report without it takes it back
        net.nodes[a].as_mut().unwrap().set_healthy(now, vec![HealthyReplica { tag: t0, spec: d0 }]);
        net.run_for(2_500);
        assert!(net.nodes[other].as_ref().unwrap().replica_healthy("web", 0, t0, None, net.now), "seed {seed}: a fresh report again");
        // one that is no longer healthy is reported at once, not a period later
        let now = net.now;
        net.nodes[a].as_mut().unwrap().set_healthy(now, vec![]);
        net.run_for(20);
        let now = net.now;
        assert!(!net.nodes[other].as_ref().unwrap().replica_healthy("web", 0, t0, None, now), "seed {seed}: not taken back at once");
        assert!(!net.nodes[a].as_ref().unwrap().replica_healthy("web", 0, t0, None, now));
    }
}

/// A replica no longer healthy is reported at once and again on the next tick (one lost
/// datagram does not leave it counted healthy for a period), then only with the period.
#[test]
fn a_lost_healthy_replica_is_reported_twice_at_once() {
    use crate::raft_codec::{decode, HealthyReplica, Wire};
    let keys: Vec<NodeKey> = (0..3).map(|i| NodeKey([i as u8 + 1; 32])).collect();
    let mut o = Orch::new(0, keys, OrchConfig::default(), 7, Duration::ZERO);
    let healthy_sent = |o: &mut Orch| o.take_outgoing().into_iter().filter(|(_, b)| matches!(decode(b), Ok(Wire::Healthy { .. }))).count();
    let ms = Duration::from_millis;
    o.set_healthy(ms(0), vec![HealthyReplica { tag: [1; 8], spec: [2; 32] }]);
    o.tick(ms(1));
    assert_eq!(healthy_sent(&mut o), 2, "the period's report, to both other members");
    o.tick(ms(2));
    assert_eq!(healthy_sent(&mut o), 0, "not again before the period");
    o.set_healthy(ms(3), vec![]);
    o.tick(ms(4));
    assert_eq!(healthy_sent(&mut o), 2, "at once");
    o.tick(ms(5));
    assert_eq!(healthy_sent(&mut o), 2, "and once more");
    o.tick(ms(6));
    assert_eq!(healthy_sent(&mut o), 0, "then only with the period");
    // a list that only grows is not sent at once
    o.set_healthy(ms(7), vec![HealthyReplica { tag: [1; 8], spec: [2; 32] }]);
    o.tick(ms(8));
    assert_eq!(healthy_sent(&mut o), 0);
}

/// A put's ticket says what the put did as the log applied it, not as the node that took the
/// write had its state then: a follower takes `web2` while the leader's own put of `web2` is
/// not yet committed, and its ticket says `updated` (the args), not `created`; the leader's
/// says `created`; the same spec again says `unchanged`.
#[test]
fn a_put_is_answered_from_the_log_not_from_a_lagging_state() {
    use crate::put_change::{Fields, PutChange};
    for seed in 0..3 {
        let mut net = formed(120 + seed);
        let l = net.leader().unwrap();
        let f = (l + 1) % 3;
        let first = spec("web2", 1);
        let mut second = spec("web2", 1);
        second.args.push(String::from("v2"));
        let now = net.now;
        let t1 = net.nodes[l].as_mut().unwrap().submit(now, Command::PutWorkload(first)).unwrap();
        let t2 = net.nodes[f].as_mut().unwrap().submit(now, Command::PutWorkload(second.clone())).unwrap();
        assert!(!net.nodes[f].as_ref().unwrap().state().unwrap().workloads.contains_key("web2"), "seed {seed}: the follower already has web2");
        let (mut a1, mut a2) = (None, None);
        for _ in 0..5_000 {
            net.step();
            let now = net.now;
            if a1.is_none() {
                a1 = Some(net.nodes[l].as_mut().unwrap().ticket(now, t1)).filter(|s| *s != TicketStatus::Pending);
            }
            if a2.is_none() {
                a2 = Some(net.nodes[f].as_mut().unwrap().ticket(now, t2)).filter(|s| *s != TicketStatus::Pending);
            }
            if a1.is_some() && a2.is_some() {
                break;
            }
        }
        assert_eq!(a1, Some(TicketStatus::Committed(Some(PutChange::Created))), "seed {seed}: the leader's put");
        assert_eq!(a2, Some(TicketStatus::Committed(Some(PutChange::Updated(Fields(Fields::ARGS))))), "seed {seed}: the follower's put");
        assert_eq!(net.write_via(f, Command::PutWorkload(second)), TicketStatus::Committed(Some(PutChange::Unchanged)), "seed {seed}: the same again");
        // not a put: nothing to say
        assert_eq!(net.write_via(f, Command::RemoveWorkload(String::from("web2"))), TicketStatus::Committed(None), "seed {seed}: a removal");
    }
}
