//! Admission at run time: [`Orch`] nodes over an in-process network routed by *key*, as the
//! fabric routes (each node numbers members from its own list; a datagram from a key the
//! receiver does not list is dropped, as `orchd` drops one from no member's /128 and the
//! fabric refuses a key it has no peer for). Three nodes listed in the cluster file, one
//! unlisted node the operator admits (`AdmitNode`, forwarded from a follower), one unlisted
//! node nobody admits.
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::*;
use crate::desired::RestartPolicy;

struct KeyNet {
    nodes: Vec<(NodeKey, Orch)>,
    now: Duration,
    inflight: Vec<(Duration, NodeKey, NodeKey, Vec<u8>)>,
    rng: u64,
    /// Datagrams the receiver dropped: the sender is not one of its members.
    refused_from: Vec<NodeKey>,
}

impl KeyNet {
    fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z ^ (z >> 31)
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = core::mem::take(&mut self.inflight).into_iter().partition(|d| d.0 <= now);
        self.inflight = later;
        for (_, from, to, b) in due {
            let Some((_, o)) = self.nodes.iter_mut().find(|(k, _)| *k == to) else { continue };
            match o.members().iter().position(|k| *k == from) {
                Some(i) => o.handle(now, i, &b),
                None => self.refused_from.push(from),
            }
        }
        for i in 0..self.nodes.len() {
            let (key, o) = &mut self.nodes[i];
            let key = *key;
            o.tick(now);
            let out: Vec<(NodeKey, Vec<u8>)> = o.take_outgoing().into_iter().filter_map(|(to, b)| o.members().get(to).map(|k| (*k, b))).collect();
            for (to, b) in out {
                let d = Duration::from_millis(1 + self.rand() % 5);
                self.inflight.push((now + d, key, to, b));
            }
        }
    }

    fn run_until(&mut self, limit_ms: u64, f: impl Fn(&KeyNet) -> bool) -> bool {
        for _ in 0..limit_ms {
            if f(self) {
                return true;
            }
            self.step();
        }
        f(self)
    }

    fn orch(&self, k: NodeKey) -> &Orch {
        &self.nodes.iter().find(|(n, _)| *n == k).unwrap().1
    }
}

fn spec(name: &str, replicas: u32) -> WorkloadSpec {
    WorkloadSpec { health: None, name: name.to_string(), image: [1; 32], replicas, vcpus: 1, mem_mib: 64, env: vec![], args: vec![], restart: RestartPolicy::Always, constraints: vec![] }
}

#[test]
fn an_admitted_node_joins_on_every_node_and_an_unadmitted_one_never_does() {
    for seed in 0..5u64 {
        let listed: Vec<NodeKey> = (1..=3u8).map(|i| NodeKey([i; 32])).collect();
        let (newcomer, stranger) = (NodeKey([9; 32]), NodeKey([10; 32]));
        let mut nodes = Vec::new();
        for (i, k) in listed.iter().enumerate() {
            let mut o = Orch::new(i, listed.clone(), OrchConfig::default(), seed ^ i as u64, Duration::ZERO);
            o.set_capacity(4, 1024);
            nodes.push((*k, o));
        }
        for (j, k) in [newcomer, stranger].into_iter().enumerate() {
            let mut o = Orch::new_unlisted(listed.clone(), k, OrchConfig::default(), seed ^ (10 + j as u64), Duration::ZERO);
            o.set_capacity(4, 1024);
            nodes.push((k, o));
        }
        let mut net = KeyNet { nodes, now: Duration::ZERO, inflight: Vec::new(), rng: seed, refused_from: Vec::new() };
        let three = listed.clone();
        assert!(net.run_until(20_000, |n| three.iter().all(|k| n.orch(*k).state().is_some_and(|s| s.nodes.len() == 3))), "seed {seed}: no cluster");
        net.run_until(3_000, |_| false);
        // Nobody admitted the two: they stay unplaced, in nobody's member list.
        for k in [newcomer, stranger] {
            assert_eq!(net.orch(k).member_index(), None, "seed {seed}");
            assert!(net.nodes.iter().all(|(_, o)| !o.members().contains(&k)), "seed {seed}");
        }
        // The operator's write arrives at a follower, which forwards it to the leader.
        let leader = listed[net.orch(listed[0]).leader().unwrap()];
        let follower = *listed.iter().find(|k| **k != leader).unwrap();
        let now = net.now;
        let fi = net.nodes.iter().position(|(k, _)| *k == follower).unwrap();
        net.nodes[fi].1.submit(now, Command::AdmitNode(newcomer)).unwrap();
        let joined = |n: &KeyNet| {
            let Some((id, true)) = n.orch(newcomer).id() else { return false };
            listed.iter().all(|k| n.orch(*k).members().get(3) == Some(&newcomer) && n.orch(*k).replica().is_some_and(|r| r.voters().contains(&id)))
        };
        assert!(net.run_until(20_000, joined), "seed {seed}: the admitted node is not a voter on every node");
        assert_eq!(net.orch(newcomer).member_index(), Some(3), "seed {seed}");
        // It receives a workload: four replicas spread over four nodes.
        let now = net.now;
        let li = net.nodes.iter().position(|(k, _)| *k == leader).unwrap();
        net.nodes[li].1.submit(now, Command::PutWorkload(spec("web", 4))).unwrap();
        assert!(net.run_until(20_000, |n| !n.orch(newcomer).assigned_now(n.now).is_empty()), "seed {seed}: nothing runs on the admitted node");
        // The stranger talked all along, was refused by every member, and is nobody's member.
        net.run_until(2_000, |_| false);
        assert_eq!(net.orch(stranger).member_index(), None, "seed {seed}");
        assert!(net.orch(stranger).assigned_now(net.now).is_empty());
        assert!(net.nodes.iter().all(|(_, o)| !o.members().contains(&stranger)), "seed {seed}");
        assert!(net.refused_from.contains(&stranger), "seed {seed}: the stranger never talked");
        let st = net.orch(leader).state().unwrap();
        assert!(!st.nodes.contains(&stranger) && st.node_order == vec![listed[0], listed[1], listed[2], newcomer], "seed {seed}: {:?}", st.node_order);
    }
}
