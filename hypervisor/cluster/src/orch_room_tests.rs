//! A replica whose spec grew past its node's room moves to a node with room
//! (`reconcile::overfull_move`): not when no node has room, not while the workload's other
//! replicas are not healthy as a rolling update wants them, and two moves never count on the
//! same room.
use alloc::vec::Vec;

use super::*;
use crate::raft_codec::{replica_tag, HealthyReplica};

/// The node memory the committed state assigns node `i` (desired specs, with each replica's
/// overhead, as `orchd` counts what its replicas hold).
fn used_mib(net: &Net, i: usize) -> u64 {
    let s = net.nodes[0].as_ref().unwrap().state().unwrap();
    s.assignments.iter().filter(|(_, k)| **k == net.keys[i]).map(|((w, _), _)| s.workloads[w].replica_mem_mib()).sum()
}

/// The tests' stand-in for a replica's `workd` spec digest (`Orch::set_replica_digest`).
fn digest(s: &WorkloadSpec, r: u32) -> Option<[u8; 32]> {
    let mut d = [0; 32];
    d[..8].copy_from_slice(&s.mem_mib.to_le_bytes());
    d[8..12].copy_from_slice(&r.to_le_bytes());
    Some(d)
}

/// Every node reports the replicas it runs healthy (as `orchd` does once they ran 10 s): the
/// replicas of `grow` in `new` on their desired spec, every other on an old one.
fn report_health(net: &mut Net, new: &[u32]) {
    let now = net.now;
    let state = net.nodes[0].as_ref().unwrap().state().unwrap().clone();
    for i in 0..net.nodes.len() {
        let run: Vec<HealthyReplica> = net.running[i]
            .iter()
            .map(|(w, r)| {
                let spec = match (w.as_str(), state.workloads.get(w)) {
                    ("grow", Some(s)) if new.contains(r) => digest(s, *r).unwrap(),
                    _ => [0; 32],
                };
                HealthyReplica { tag: replica_tag(&crate::desired::replica_name(w, *r)), spec }
            })
            .collect();
        if let Some(o) = net.nodes[i].as_mut() {
            o.set_healthy(now, run);
        }
    }
}

/// `grow` (300 MiB, `replicas` of it) placed; each node that runs one of the `tight` replicas
/// reports room for what it is assigned plus 50 MiB, each other node `others` MiB in all
/// (`None`: 1,024). Then `grow` is put again at 600 MiB. The nodes that ran it, by replica.
fn grown(seed: u64, replicas: u32, tight: &[u32], others: Option<u64>, healthy: bool) -> (Net, Vec<usize>) {
    let mut net = formed(seed);
    for o in net.nodes.iter_mut().flatten() {
        o.set_replica_digest(digest);
    }
    let l = net.leader().unwrap();
    net.submit_via(l, Command::PutWorkload(sized("grow", replicas, 300)));
    assert!(net.run_until(10_000, |n| (0..replicas).all(|r| n.runner_of("grow", r).is_some())), "seed {seed}: grow not placed");
    let hosts: Vec<usize> = (0..replicas).map(|r| net.runner_of("grow", r).unwrap()).collect();
    for i in 0..3 {
        let mem = if tight.iter().any(|r| hosts[*r as usize] == i) { used_mib(&net, i) + 50 } else { others.unwrap_or(1024) };
        net.nodes[i].as_mut().unwrap().set_capacity(4, mem);
    }
    // the reports reach the leader, and nothing moves while everything fits
    for _ in 0..3_000 {
        net.step();
        if healthy {
            report_health(&mut net, &[]);
        }
    }
    for (r, h) in hosts.iter().enumerate() {
        assert_eq!(net.runner_of("grow", r as u32), Some(*h), "seed {seed}: replica {r} moved while it fit");
    }
    let l = net.leader().unwrap();
    net.submit_via(l, Command::PutWorkload(sized("grow", replicas, 600)));
    (net, hosts)
}

/// `spec(name, replicas)` with `mem_mib` MiB.
fn sized(name: &str, replicas: u32, mem_mib: u64) -> WorkloadSpec {
    WorkloadSpec { mem_mib, ..spec(name, replicas) }
}

#[test]
fn a_replica_grown_past_its_nodes_room_moves_to_a_node_with_room() {
    for seed in 0..3 {
        let (mut net, hosts) = grown(500 + seed, 1, &[0], None, false);
        let h = hosts[0];
        assert!(net.run_until(15_000, |n| n.runner_of("grow", 0).is_some_and(|x| x != h)), "seed {seed}: grow stayed on node {h}, which has no room for it");
        let to = net.runner_of("grow", 0).unwrap();
        assert!(used_mib(&net, to) <= 1024, "seed {seed}: moved to a node without room");
        // and it stays there
        net.run_for(3_000);
        assert_eq!(net.runner_of("grow", 0), Some(to), "seed {seed}: moved again");
    }
}

#[test]
fn a_grown_replica_with_no_room_anywhere_keeps_its_node() {
    for seed in 0..3 {
        let (mut net, hosts) = grown(510 + seed, 1, &[0], Some(400), false);
        for _ in 0..10_000 {
            net.step();
            assert_eq!(net.runner_of("grow", 0), Some(hosts[0]), "seed {seed}: taken off its node with nowhere to go at {:?}", net.now);
        }
    }
}

/// Two replicas of `grow`, each on a node that has no room for the new spec, and the third
/// node with room for one: replica moves wait until the other replica is reported healthy;
/// then one moves (replica 0: its higher replica may run any spec), and only one.
#[test]
fn a_move_for_room_waits_for_the_workloads_other_replicas_to_be_healthy() {
    for seed in 0..3 {
        let (mut net, hosts) = grown(520 + seed, 2, &[0, 1], None, false);
        // nothing is reported healthy: neither replica may go
        for _ in 0..8_000 {
            net.step();
            for (r, h) in hosts.iter().enumerate() {
                assert_eq!(net.runner_of("grow", r as u32), Some(*h), "seed {seed}: replica {r} moved while the other was not known healthy");
            }
        }
        // reported healthy: one moves (to the one node with room)
        let moved = |n: &Net| (0..2).any(|r| n.runner_of("grow", r).is_some_and(|x| x != hosts[r as usize]));
        let mut t = 0;
        while !moved(&net) && t < 15_000 {
            net.step();
            report_health(&mut net, &[]);
            t += 1;
        }
        assert!(moved(&net), "seed {seed}: no replica moved once the other was healthy");
        for _ in 0..5_000 {
            net.step();
            report_health(&mut net, &[]);
        }
        assert_eq!(net.runner_of("grow", 1), Some(hosts[1]), "seed {seed}: replica 1 moved too (or went)");
        assert!(net.runner_of("grow", 0).is_some_and(|x| x != hosts[0]), "seed {seed}: replica 0 did not stay moved");
    }
}

/// Replica 1 alone has no room on its node, and replica 0 (whose node has room) runs its old
/// spec: replica 1 waits until replica 0 runs the desired spec healthily, as replica 1's turn
/// in a rolling update would (so a move and replica 0's own replacement never take both down).
#[test]
fn a_move_for_room_waits_for_the_lower_replicas_to_run_the_desired_spec() {
    for seed in 0..3 {
        let (mut net, hosts) = grown(540 + seed, 2, &[1], None, false);
        for _ in 0..8_000 {
            net.step();
            report_health(&mut net, &[]);
            assert_eq!(net.runner_of("grow", 1), Some(hosts[1]), "seed {seed}: replica 1 moved while replica 0 ran its old spec");
        }
        let mut t = 0;
        while net.runner_of("grow", 1).is_none_or(|x| x == hosts[1]) && t < 15_000 {
            net.step();
            report_health(&mut net, &[0]);
            t += 1;
        }
        assert!(net.runner_of("grow", 1).is_some_and(|x| x != hosts[1]), "seed {seed}: replica 1 did not move once replica 0 ran the desired spec");
        assert_eq!(net.runner_of("grow", 0), Some(hosts[0]), "seed {seed}: replica 0 moved");
    }
}

/// Two workloads grown past their nodes' room, the third node with room for one of them: one
/// moves; the other is never taken off its node meanwhile (the first move's room is counted as
/// taken while that replica waits for its release and placement).
#[test]
fn two_moves_never_count_on_the_same_room() {
    let mut exercised = 0;
    for seed in 0..6 {
        let mut net = formed(560 + seed);
        let l = net.leader().unwrap();
        net.submit_via(l, Command::PutWorkload(sized("ga", 1, 300)));
        net.submit_via(l, Command::PutWorkload(sized("gb", 1, 300)));
        assert!(net.run_until(10_000, |n| n.runner_of("ga", 0).is_some() && n.runner_of("gb", 0).is_some()), "seed {seed}: not placed");
        let (a, b) = (net.runner_of("ga", 0).unwrap(), net.runner_of("gb", 0).unwrap());
        if a == b {
            continue;
        }
        let third = 3 - a - b;
        for i in 0..3 {
            let mem = used_mib(&net, i) + if i == third { 650 } else { 50 };
            net.nodes[i].as_mut().unwrap().set_capacity(4, mem);
        }
        net.run_for(3_000);
        let l = net.leader().unwrap();
        net.submit_via(l, Command::PutWorkload(sized("ga", 1, 600)));
        net.submit_via(l, Command::PutWorkload(sized("gb", 1, 600)));
        let assigned = |n: &Net, w: &str| n.nodes[0].as_ref().unwrap().state().unwrap().assignments.contains_key(&(String::from(w), 0));
        for _ in 0..15_000 {
            net.step();
            assert!(assigned(&net, "ga") || assigned(&net, "gb"), "seed {seed}: both taken off their nodes at {:?}", net.now);
        }
        let on_third = ["ga", "gb"].iter().filter(|w| net.runner_of(w, 0) == Some(third)).count();
        assert_eq!(on_third, 1, "seed {seed}: one of them moves to the node with room");
        exercised += 1;
    }
    assert!(exercised >= 2, "only {exercised} seeds put ga and gb on two nodes");
}

/// A replica takes its guest memory and the microVM's overhead on its node (workd's
/// admission): a node whose room is its guest memory alone does not get it, one with room for
/// both does, and a node with exactly that much is full, not over its room.
#[test]
fn a_replica_goes_only_where_its_overhead_fits_too() {
    for seed in 0..3 {
        let mut net = formed(580 + seed);
        let tight = seed as usize % 3;
        for i in 0..3 {
            let mem = used_mib(&net, i) + if i == tight { 300 } else { 100 };
            net.nodes[i].as_mut().unwrap().set_capacity(4, mem);
        }
        net.run_for(3_000);
        let l = net.leader().unwrap();
        net.submit_via(l, Command::PutWorkload(sized("fit", 1, 300)));
        net.run_for(5_000);
        assert_eq!(net.runner_of("fit", 0), None, "seed {seed}: placed where only its guest memory fits");
        let roomy = (tight + 1) % 3;
        let mem = used_mib(&net, roomy) + 300 + crate::desired::REPLICA_OVERHEAD_MIB;
        net.nodes[roomy].as_mut().unwrap().set_capacity(4, mem);
        assert!(net.run_until(5_000, |n| n.runner_of("fit", 0) == Some(roomy)), "seed {seed}: not placed on the node with room for it and its overhead");
        // exactly full: the node reports what its replicas hold and nothing more, while the
        // tight node now has room for it (so a node taken as over its room would move it)
        let full = used_mib(&net, roomy);
        net.nodes[roomy].as_mut().unwrap().set_capacity(4, full);
        let room = used_mib(&net, tight) + 400;
        net.nodes[tight].as_mut().unwrap().set_capacity(4, room);
        for _ in 0..5_000 {
            net.step();
            assert_eq!(net.runner_of("fit", 0), Some(roomy), "seed {seed}: moved off a node that is full, not over its room");
        }
    }
}
