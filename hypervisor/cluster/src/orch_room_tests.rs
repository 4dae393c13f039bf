//! A replica whose spec grew past its node's room moves to a node with room
//! (`reconcile::overfull_move`): not when no node has room, and not while another replica of
//! its workload is not healthy.
use alloc::vec::Vec;

use super::*;
use crate::raft_codec::{replica_tag, HealthyReplica};

/// The memory the committed state assigns node `i` (desired specs).
fn used_mib(net: &Net, i: usize) -> u64 {
    let s = net.nodes[0].as_ref().unwrap().state().unwrap();
    s.assignments.iter().filter(|(_, k)| **k == net.keys[i]).map(|((w, _), _)| s.workloads[w].mem_mib).sum()
}

/// Every node reports the replicas it runs healthy (as `orchd` does once they ran 10 s).
fn report_health(net: &mut Net) {
    let now = net.now;
    for i in 0..net.nodes.len() {
        let run: Vec<HealthyReplica> = net.running[i].iter().map(|(w, r)| HealthyReplica { tag: replica_tag(&alloc::format!("cl-{w}-{r}")), spec: [0; 32] }).collect();
        if let Some(o) = net.nodes[i].as_mut() {
            o.set_healthy(now, run);
        }
    }
}

/// `grow` (300 MiB, `replicas` of it) placed; each node that runs one reports room for what it
/// is assigned plus 50 MiB, each other node `others` MiB in all (`None`: 1,024). Then `grow`
/// is put again at 600 MiB. The nodes that ran it, by replica.
fn grown(seed: u64, replicas: u32, others: Option<u64>, healthy: bool) -> (Net, Vec<usize>) {
    let mut net = formed(seed);
    let l = net.leader().unwrap();
    net.submit_via(l, Command::PutWorkload(sized("grow", replicas, 300)));
    assert!(net.run_until(10_000, |n| (0..replicas).all(|r| n.runner_of("grow", r).is_some())), "seed {seed}: grow not placed");
    let hosts: Vec<usize> = (0..replicas).map(|r| net.runner_of("grow", r).unwrap()).collect();
    for i in 0..3 {
        let mem = if hosts.contains(&i) { used_mib(&net, i) + 50 } else { others.unwrap_or(1024) };
        net.nodes[i].as_mut().unwrap().set_capacity(4, mem);
    }
    // the reports reach the leader, and nothing moves while everything fits
    for _ in 0..3_000 {
        net.step();
        if healthy {
            report_health(&mut net);
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
        let (mut net, hosts) = grown(500 + seed, 1, None, false);
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
        let (mut net, hosts) = grown(510 + seed, 1, Some(400), false);
        for _ in 0..10_000 {
            net.step();
            assert_eq!(net.runner_of("grow", 0), Some(hosts[0]), "seed {seed}: taken off its node with nowhere to go at {:?}", net.now);
        }
    }
}

/// Two replicas of `grow`, each on a node that has no room for the new spec, and the third
/// node with room for one: replica moves wait until the other replica is reported healthy.
#[test]
fn a_move_for_room_waits_for_the_workloads_other_replicas_to_be_healthy() {
    for seed in 0..3 {
        let (mut net, hosts) = grown(520 + seed, 2, None, false);
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
            report_health(&mut net);
            t += 1;
        }
        assert!(moved(&net), "seed {seed}: no replica moved once the other was healthy");
    }
}
