//! Replays one seed of the desired-state chaos and prints what went on:
//! `cargo run --release -p catenary-cluster --features sim --example raft_replay -- SEED [FROM TO]`
//! (FROM/TO in simulated seconds: every node's role, term, commit index, log tail and vote
//! after each event in that window).
use std::time::Duration;

use catenary_cluster::raft_sim::RaftSim;
use catenary_cluster::sim::NetConfig;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed: u64 = args.first().and_then(|s| s.parse().ok()).expect("SEED");
    let n = 3 + (seed % 5) as usize;
    let mut sim = RaftSim::new(n, seed, NetConfig::default(), 64, 65536);
    if let (Some(a), Some(b)) = (args.get(1).and_then(|s| s.parse::<f64>().ok()), args.get(2).and_then(|s| s.parse::<f64>().ok())) {
        sim.debug_window = Some((Duration::from_secs_f64(a), Duration::from_secs_f64(b)));
    }
    // The same schedule as `raft_chaos` (raft_sim::raft_chaos).
    sim.run_until(Duration::from_secs(3));
    if !sim.admit_all() {
        sim.run_until(Duration::from_secs(6));
        sim.admit_all();
    }
    sim.chaos(30, 20, seed % 3 == 0);
    for line in &sim.notes {
        println!("{line}");
    }
    for (at, leader, term, commit) in &sim.trace {
        println!("leader {leader} of term {term} at {at:?} (commit {commit})");
    }
    println!("violations: {:?}", &sim.violations[..sim.violations.len().min(10)]);
    println!("converged: {:?}", sim.converged());
    for id in 0..n as u64 {
        if let Some(r) = sim.replica(id) {
            let st = r.state();
            println!("node {id}: leader {} term {} commit {} drained {} nodes {} assignments {:?} running {:?}", r.is_leader(), r.term(), r.commit_index(), st.drained.len(), st.nodes.len(), st.assignments.iter().map(|((w, rep), k)| (w.clone(), *rep, k.0[0])).collect::<Vec<_>>(), sim.running_on(id));
        }
    }
}
