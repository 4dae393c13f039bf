//! Membership changes under the simulator: diskless restarts, removal and re-admission
//! (docs/orchestration.md "Removal", "Admitted again").
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::{cluster, runner_of, secs};
use crate::desired::Command;
use crate::raft_sim::{key_of, RaftSim};
use crate::sim::NetConfig;

/// A node restarted without its storage (diskless) comes back as a new Raft member: the leader
/// replaces its old id by the new one (joint consensus), the empty log gets the snapshot, the
/// node agrees with the others again, and its singleton never ran twice meanwhile.
#[test]
fn a_node_restarted_without_storage_rejoins_as_a_new_member() {
    for seed in 0..5 {
        let s = 600 + seed;
        let cfg = crate::replica::ReplicaConfig { snapshot_every: 8, ..Default::default() };
        let mut sim = RaftSim::with_config(3, s, NetConfig::default(), 64, 65536, cfg);
        sim.run_until(secs(3));
        assert!(sim.admit_all());
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("db", 1, 256))));
        sim.run_until(secs(8));
        let node = (sim.leader().unwrap() + 1 + seed % 2) % 3;
        let old_id = sim.raft_id(node);
        sim.crash(node);
        for i in 0..12 {
            assert!(sim.propose(Command::PutWorkload(RaftSim::workload(&format!("w{i}"), 1, 64))), "seed {s}");
            sim.run_until(sim.now + Duration::from_millis(100));
        }
        sim.run_until(sim.now + secs(3));
        sim.restart_diskless(node);
        let new_id = sim.raft_id(node);
        assert_ne!(new_id, old_id);
        sim.run_until(sim.now + secs(10));
        let l = sim.replica(sim.leader().unwrap()).unwrap();
        let voters = l.voters();
        assert!(voters.contains(&new_id) && !voters.contains(&old_id), "seed {s}: voters {voters:?}, old {old_id}, new {new_id}");
        let back = sim.replica(node).unwrap();
        assert!(back.snapshots_installed() >= 1, "seed {s}: no snapshot installed");
        assert_eq!(back.state().workloads.len(), 13, "seed {s}");
        assert!(sim.violations.is_empty(), "seed {s}: {:?}", sim.violations);
        sim.converged().unwrap_or_else(|e| panic!("seed {s}: {e}"));
        // And the new member counts: with another node down, the two left still commit.
        let other = (0..3).find(|i| *i != node && Some(*i) != sim.leader()).unwrap();
        sim.crash(other);
        sim.run_until(sim.now + secs(3));
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("after", 1, 64))), "seed {s}: no leader with the new member");
        sim.run_until(sim.now + secs(3));
        assert!(sim.replica(node).unwrap().state().workloads.contains_key("after"), "seed {s}: the write did not commit with the new member");
    }
}

/// Propose `cmd` until a leader takes it (none while an election runs), then run 3 s.
fn propose_retrying(sim: &mut RaftSim, cmd: Command, seed: u64) {
    for _ in 0..40 {
        if sim.propose(cmd.clone()) {
            sim.run_until(sim.now + secs(3));
            return;
        }
        sim.run_until(sim.now + Duration::from_millis(250));
    }
    panic!("seed {seed}: no leader took {cmd:?}");
}

/// The leader's voters as node slots (sorted).
fn voter_slots(sim: &RaftSim) -> Vec<u64> {
    let mut v: Vec<u64> = sim.leader().and_then(|l| sim.replica(l)).map(|r| r.voters().into_iter().map(crate::raft_sim::slot_of).collect()).unwrap_or_default();
    v.sort();
    v
}

/// `catenary node remove` of dead nodes takes their voters out of the configuration (the
/// leader's joint change), so the nodes left are a cluster of their own size: five nodes, two
/// crash for good and are removed, the voters are the three left; a third then crashes and
/// the two left still elect a leader, commit a write and run every replica. (With removed
/// voters kept, two of five voters are no majority.) The removal guard then takes a removal
/// that leaves two of three voters.
#[test]
fn removed_dead_nodes_leave_the_configuration_and_a_third_failure_is_survived() {
    for seed in 0..6u64 {
        let mut sim = cluster(5, 1300 + seed);
        let seed = 1300 + seed;
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("web", 2, 256))));
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("db", 1, 256))));
        sim.run_until(sim.now + secs(5));
        // The leader among the dead for odd seeds.
        let l = sim.leader().unwrap();
        let dead: Vec<u64> = if seed % 2 == 1 { vec![l, (l + 1) % 5] } else { vec![(l + 1) % 5, (l + 2) % 5] };
        for d in &dead {
            sim.crash(*d);
        }
        sim.run_until(sim.now + secs(2));
        for d in &dead {
            propose_retrying(&mut sim, Command::RemoveNode(key_of(*d)), seed);
        }
        let left: Vec<u64> = (0..5).filter(|i| !dead.contains(i)).collect();
        let deadline = sim.now + secs(10);
        sim_wait(&mut sim, deadline, |sim| voter_slots(sim) == left);
        assert_eq!(voter_slots(&sim), left, "seed {seed}: voters after removing {dead:?}");
        // A third node crashes: the one running db.
        let third = runner_of(&sim, "db")[0];
        sim.crash(third);
        let two: Vec<u64> = left.iter().copied().filter(|i| *i != third).collect();
        sim.run_until(sim.now + secs(3));
        assert!(sim.leader().is_some_and(|l| two.contains(&l)), "seed {seed}: no leader among {two:?} after {third} crashed");
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("after", 1, 64))), "seed {seed}");
        sim.run_until(sim.now + secs(12));
        assert!(sim.accepted.iter().any(|(_, n)| n == "after"), "seed {seed}: the write after the third failure did not commit");
        for (w, n) in [("web", 2), ("db", 1), ("after", 1)] {
            let on = runner_of(&sim, w);
            assert!(on.len() == n && on.iter().all(|i| two.contains(i)), "seed {seed}: {w} runs on {on:?}, the nodes left are {two:?}");
        }
        // Two voters of three left: removing the third's key is taken (the old guard, every
        // node ever admitted as a voter, refused it: 2 of 5).
        propose_retrying(&mut sim, Command::RemoveNode(key_of(third)), seed);
        let st = sim.replica(two[0]).unwrap().state();
        assert!(!st.nodes.contains(&key_of(third)), "seed {seed}: the third removal was refused");
        assert!(sim.violations.is_empty(), "seed {seed}: {:?}", sim.violations);
    }
}

/// A removed node admitted again becomes a voter again: removed while it runs (every other
/// node's fabric drops it, the leader takes its voter out), or crashed and back without its
/// storage while removed (a new generation), then `AdmitNode`: the leader adds its id, it
/// catches up and gets replicas, and it counts in the majority (with two others crashed the
/// three left, itself among them, commit a write; with it out of the configuration, two of
/// four could not).
#[test]
fn a_removed_node_admitted_again_is_a_voter_again() {
    for seed in 0..6u64 {
        let mut sim = cluster(5, 1400 + seed);
        let seed = 1400 + seed;
        let l = sim.leader().unwrap();
        let node = (l + 1 + seed % 4) % 5;
        let others = remove_and_wait(&mut sim, node, seed);
        if seed % 2 == 1 {
            sim.restart_diskless(node);
        }
        for i in 0..4 {
            assert!(sim.propose(Command::PutWorkload(RaftSim::workload(&format!("w{i}"), 1, 64))) || i > 0, "seed {seed}");
        }
        sim.run_until(sim.now + secs(3));
        propose_retrying(&mut sim, Command::AdmitNode(key_of(node)), seed);
        let deadline = sim.now + secs(15);
        sim_wait(&mut sim, deadline, |sim| voter_slots(sim).contains(&node) && sim.replica(node).is_some_and(|r| r.state().nodes.contains(&key_of(node))));
        assert!(voter_slots(&sim).contains(&node), "seed {seed}: {node} is not a voter again ({:?})", voter_slots(&sim));
        let id = sim.raft_id(node);
        assert!(sim.leader().and_then(|l| sim.replica(l)).is_some_and(|r| r.voters().contains(&id)), "seed {seed}: not under its current id {id}");
        // It counts: two others crash, the three left (it among them) commit.
        let crash: Vec<u64> = others.iter().copied().filter(|i| Some(*i) != sim.leader()).take(2).collect();
        for c in &crash {
            sim.crash(*c);
        }
        sim.run_until(sim.now + secs(3));
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("late", 1, 64))), "seed {seed}: no leader");
        sim.run_until(sim.now + secs(5));
        assert!(sim.accepted.iter().any(|(_, n)| n == "late"), "seed {seed}: no majority with {node} back and {crash:?} down");
        assert!(sim.replica(node).is_some_and(|r| r.state().workloads.contains_key("late")), "seed {seed}: {node} did not apply the write");
        assert!(sim.violations.is_empty(), "seed {seed}: {:?}", sim.violations);
    }
}

/// Issue 13's "when quiet, every node agrees": a node N that applied `RemoveNode(K)` and then
/// missed `AdmitNode(K)` (cut off meanwhile) still drops K on its fabric (netd dropped the peer;
/// the simulator's fabric does the same from N's applied state). Once K, admitted again and a
/// voter, leads, N never hears its AppendEntries; the others hear K, so they refuse N's
/// pre-votes. N must still catch up: it pulls the committed state from a member it can hear
/// (`Replica`'s catch-up pull, docs/orchestration.md "Admitted again"). 5 nodes; K is made the
/// leader by crashing whoever else leads; then the heal and 10 s of quiet with K leading.
#[test]
fn a_node_that_missed_the_readmission_catches_up_while_the_readmitted_node_leads() {
    let mut exercised = 0;
    for seed in 0..6u64 {
        let seed = 1500 + seed;
        let mut sim = cluster(5, seed);
        let l = sim.leader().unwrap();
        let (k, n) = ((l + 1) % 5, (l + 2) % 5);
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("web", 2, 64))));
        remove_and_wait(&mut sim, k, seed);
        assert!(!sim.replica(n).unwrap().state().nodes.contains(&key_of(k)), "seed {seed}: {n} did not apply the removal");
        // N is cut off and misses the admission; K is a voter again.
        readmit_with_one_cut_off(&mut sim, k, n, false, seed);
        for i in 0..3 {
            propose_retrying(&mut sim, Command::PutWorkload(RaftSim::workload(&format!("w{i}"), 1, 64)), seed);
        }
        if !make_leader(&mut sim, k) {
            continue;
        }
        assert!(!sim.replica(n).unwrap().state().nodes.contains(&key_of(k)), "seed {seed}: {n} learnt the admission while cut off");
        exercised += u32::from(heal_and_check_the_pull(&mut sim, k, n, seed));
    }
    assert!(exercised >= 4, "only {exercised} of 6 seeds had the readmitted node lead through the quiet period");
}

/// Review of 2026-12-04, finding (a): a member restarted without storage has no configuration,
/// hence no peers to pull from, and its `netd` still drops a key admitted at run time that its
/// previous `orchd` had it remove (`netd` keeps it across an `orchd` restart; the restarted
/// `orchd` hands only the file's members again). Should that key, admitted again meanwhile,
/// lead, the fresh member never hears the state that admits it. Now a member with no peers asks
/// the members it boots with (any generation answers). 5 nodes, slots 3 and 4 admitted at run
/// time (`RaftSim::file_len`); K one of them, N a file member: K removed, N applied it, N cut
/// off and restarted without storage, K admitted again and made the leader, then the heal and
/// 10 s of quiet with K leading.
#[test]
fn a_fresh_member_that_drops_the_readmitted_leader_pulls_from_the_file_members() {
    let mut exercised = 0;
    for seed in 0..6u64 {
        let seed = 1600 + seed;
        let mut sim = cluster(5, seed);
        sim.file_len = 3;
        let l = sim.leader().unwrap();
        let k = [3u64, 4].into_iter().find(|s| *s != l).unwrap();
        let n = (0..3u64).find(|s| *s != l).unwrap();
        assert!(sim.propose(Command::PutWorkload(RaftSim::workload("web", 2, 64))));
        remove_and_wait(&mut sim, k, seed);
        assert!(!sim.replica(n).unwrap().state().nodes.contains(&key_of(k)), "seed {seed}: {n} did not apply the removal");
        // N is cut off, restarted without storage (its netd keeps dropping K); K admitted again.
        readmit_with_one_cut_off(&mut sim, k, n, true, seed);
        if !make_leader(&mut sim, k) {
            continue;
        }
        assert!(sim.replica(n).unwrap().voters().is_empty(), "seed {seed}: {n} has a configuration while cut off");
        exercised += u32::from(heal_and_check_the_pull(&mut sim, k, n, seed));
    }
    assert!(exercised >= 4, "only {exercised} of 6 seeds had the readmitted node lead through the quiet period");
}

/// Remove `k`'s key and wait (up to 10 s) until the leader's voters are the other four of
/// five; returns them.
fn remove_and_wait(sim: &mut RaftSim, k: u64, seed: u64) -> Vec<u64> {
    propose_retrying(sim, Command::RemoveNode(key_of(k)), seed);
    let others: Vec<u64> = (0..5).filter(|i| *i != k).collect();
    let deadline = sim.now + secs(10);
    sim_wait(sim, deadline, |sim| voter_slots(sim) == others);
    assert_eq!(voter_slots(sim), others, "seed {seed}: {k} is still a voter");
    others
}

/// Run in 100 ms steps until `done` holds or `deadline` passes.
fn sim_wait(sim: &mut RaftSim, deadline: Duration, done: impl Fn(&RaftSim) -> bool) {
    while !done(sim) && sim.now < deadline {
        sim.run_until(sim.now + Duration::from_millis(100));
    }
}

/// Crash whoever else leads (restarted with its storage) until `k` does, 30 tries at most;
/// whether `k` leads.
fn make_leader(sim: &mut RaftSim, k: u64) -> bool {
    for _ in 0..30 {
        match sim.leader() {
            Some(x) if x == k => break,
            Some(x) => {
                sim.crash(x);
                sim.run_until(sim.now + secs(2));
                sim.restart(x);
                sim.run_until(sim.now + secs(1));
            }
            None => sim.run_until(sim.now + secs(1)),
        }
    }
    sim.leader() == Some(k)
}

/// Cut `n` off from the other four of five (restarted without storage if `diskless`), admit
/// `k` again and wait (up to 15 s) until it is a voter.
fn readmit_with_one_cut_off(sim: &mut RaftSim, k: u64, n: u64, diskless: bool, seed: u64) {
    let rest: Vec<u64> = (0..5).filter(|i| *i != n).collect();
    sim.partition(&[&[n], &rest]);
    if diskless {
        sim.restart_diskless(n);
    }
    propose_retrying(sim, Command::AdmitNode(key_of(k)), seed);
    let deadline = sim.now + secs(15);
    sim_wait(sim, deadline, |sim| voter_slots(sim).contains(&k));
    assert!(voter_slots(sim).contains(&k), "seed {seed}: {k} is not a voter again");
}

/// The heal and 10 s of quiet; if `k` still leads (whether the seed counts), check that `n`
/// has `k` admitted, follows it, got there by a catch-up pull, and that everyone agrees.
fn heal_and_check_the_pull(sim: &mut RaftSim, k: u64, n: u64, seed: u64) -> bool {
    sim.heal();
    sim.run_until(sim.now + secs(10));
    if sim.leader() != Some(k) {
        return false;
    }
    let (lr, nr) = (sim.replica(k).unwrap(), sim.replica(n).unwrap());
    assert!(nr.state().nodes.contains(&key_of(k)), "seed {seed}: node {n} still drops {k} while {k} leads (applied {} vs {})", nr.state().applied, lr.state().applied);
    assert_eq!(nr.leader(), Some(sim.raft_id(k)), "seed {seed}: node {n} does not follow {k}");
    assert!(nr.pulls_installed() >= 1, "seed {seed}: node {n} caught up without a pull");
    sim.converged().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(sim.violations.is_empty(), "seed {seed}: {:?}", sim.violations);
    true
}
