//! Replays one seed of the desired-state chaos and prints what went on:
//! `cargo run --release -p catenary-cluster --features sim --example raft_replay -- SEED [FROM TO]`
//! (FROM/TO in simulated seconds: every node's role, term, commit index, log tail and vote
//! after each event in that window).
use std::time::Duration;

use catenary_cluster::raft_sim::raft_chaos_run;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed: u64 = args.first().and_then(|s| s.parse().ok()).expect("SEED");
    let window = match (args.get(1).and_then(|s| s.parse::<f64>().ok()), args.get(2).and_then(|s| s.parse::<f64>().ok())) {
        (Some(a), Some(b)) => Some((Duration::from_secs_f64(a), Duration::from_secs_f64(b))),
        _ => None,
    };
    // The same run as `raft_chaos` (raft_sim::raft_chaos_run).
    let (sim, result) = raft_chaos_run(seed, window);
    for line in &sim.notes {
        println!("{line}");
    }
    for (at, leader, term, commit) in &sim.trace {
        println!("leader {leader} of term {term} at {at:?} (commit {commit})");
    }
    println!("violations: {:?}", &sim.violations[..sim.violations.len().min(10)]);
    println!("result: {result:?}");
    println!("snapshots (taken, installed): {:?}", sim.snapshots());
    for id in 0..sim.len() as u64 {
        if let Some(r) = sim.replica(id) {
            let st = r.state();
            println!("node {id} (raft id {}): voters {:?} role {:?} last {:?}", r.id(), r.voters(), r.role(), r.log().last_position());
            println!("node {id}: leader {} term {} commit {} log from {} drained {} nodes {} assignments {:?} running {:?}", r.is_leader(), r.term(), r.commit_index(), r.log().snapshot_position().index.get(), st.drained.len(), st.nodes.len(), st.assignments.iter().map(|((w, rep), k)| (w.clone(), *rep, k.0[0])).collect::<Vec<_>>(), sim.running_on(id));
        }
    }
}
