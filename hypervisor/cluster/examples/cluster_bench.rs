//! The simulator's figures for `cargo xtask bench cluster` (docs/orchestration.md):
//! `cargo run --release -p catenary-cluster --features sim --example cluster_bench -- [SEEDS...]`
//!
//! - placement decisions per second for 1,000 nodes and 10,000 workloads: the pure placement
//!   function, and the leader's whole scheduler pass (`reconcile`) from a state that assigns
//!   nothing yet;
//! - failure detection (kill → dead on every survivor) and the membership message load per node
//!   at 10, 100 and 1,000 nodes, over the simulator's lossy default network.
//!
//! Prints one `BENCH name key=value …` line per figure (xtask parses them) after a readable one.
//! Optional arguments: the number of seeds at 10, 100 and 1,000 nodes (default 20 10 2).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catenary_cluster::desired::{Command, DesiredState, RestartPolicy, WorkloadSpec};
use catenary_cluster::membership::{MemberState, MembershipConfig};
use catenary_cluster::placement::{place, Constraint, NodeCapacity, WorkloadDemand};
use catenary_cluster::reconcile::{reconcile, LeaseConfig, NodeSlot};
use catenary_cluster::replica::{Replica, ReplicaConfig};
use catenary_cluster::sim::{sim_key, NetConfig, Sim, SimRng};

const ZONES: [&str; 3] = ["a", "b", "c"];

/// Nodes with 64 vCPUs and 256 GiB in three zones; workloads of 1–3 replicas, 1–4 vCPUs and
/// 256 MiB–4 GiB, a third constrained to a zone; all from a fixed seed (as examples/placement.rs).
fn inputs(n: usize, w: usize) -> (Vec<NodeCapacity>, Vec<WorkloadDemand>) {
    let mut r = SimRng::new(1);
    let nodes = (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), ZONES[i % 3].to_string());
            NodeCapacity { key: sim_key(i), free_vcpus: 64, free_mem_mib: 256 * 1024, labels, images: Vec::new(), image_mib: Vec::new(), store_free_mib: catenary_cluster::placement::STORE_UNKNOWN }
        })
        .collect();
    let workloads = (0..w)
        .map(|j| WorkloadDemand {
            name: format!("w{j}"),
            replicas: 1 + r.below(3) as u32,
            vcpus: 1 + r.below(4) as u32,
            mem_mib: 256 << r.below(5),
            constraints: if j % 3 == 0 {
                vec![Constraint::LabelEquals { key: "zone".into(), value: ZONES[r.below(3) as usize].into() }]
            } else {
                Vec::new()
            },
            image: [0; 32],
            image_mib: 0,
        })
        .collect();
    (nodes, workloads)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench_placement(n: usize, w: usize) {
    let (nodes, workloads) = inputs(n, w);
    let mut rates = Vec::new();
    let mut placed = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let plan = place(&nodes, &workloads);
        let took = start.elapsed().as_secs_f64();
        placed = plan.placements.len();
        rates.push(placed as f64 / took);
    }
    let rate = median(rates);
    println!("placement function, {n} nodes, {w} workloads: {placed} replicas placed, median of 3: {rate:.0} decisions/s");
    println!("BENCH place nodes={n} workloads={w} placed={placed} per_s={rate:.0}");

    // The leader's scheduler pass: the committed state admits the nodes and holds the
    // workloads, nothing assigned; `reconcile` returns the Assign commands.
    let mut state = DesiredState::default();
    let limits = catenary_cluster::desired::Limits { workloads: w, nodes: n, ..Default::default() };
    for c in &nodes {
        state.apply(&Command::AdmitNode(c.key), &limits).unwrap();
    }
    for d in &workloads {
        let spec = WorkloadSpec {
            health: None,
            name: d.name.clone(),
            image: [0; 32],
            replicas: d.replicas,
            vcpus: d.vcpus,
            mem_mib: d.mem_mib,
            env: Vec::new(),
            args: Vec::new(),
            restart: RestartPolicy::Always,
            constraints: d.constraints.clone(),
        };
        state.apply(&Command::PutWorkload(spec), &limits).unwrap();
    }
    // A one-voter Raft leader; every node is listed under its id so that all count as up
    // (the pass's cost is the same: each is checked).
    let mut leader = Replica::bootstrap(0, &[0], ReplicaConfig::default(), 1, Duration::ZERO);
    let mut t = Duration::ZERO;
    while !leader.is_leader() {
        t = leader.next_deadline().max(t);
        leader.tick(t);
    }
    let slots: Vec<NodeSlot> = nodes.iter().map(|c| NodeSlot { id: 0, capacity: c.clone() }).collect();
    let mut rates = Vec::new();
    let mut assigns = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let cmds = reconcile(&state, &leader, t, &LeaseConfig::default(), &slots, &|_, _, _| true);
        let took = start.elapsed().as_secs_f64();
        assigns = cmds.iter().filter(|c| matches!(c, Command::Assign { .. })).count();
        rates.push(assigns as f64 / took);
    }
    let rate = median(rates);
    println!("scheduler pass (reconcile), {n} nodes, {w} workloads: {assigns} assignments, median of 3: {rate:.0} decisions/s");
    println!("BENCH reconcile nodes={n} workloads={w} placed={assigns} per_s={rate:.0}");
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn bench_detection(n: usize, seeds: u64) {
    let cfg = MembershipConfig::default();
    let mut all_dead = Vec::new();
    let mut first_dead = Vec::new();
    let (mut per_node_dgrams, mut per_node_bytes) = (0.0, 0.0);
    let mut failed = 0;
    let wall = Instant::now();
    for seed in 0..seeds {
        let mut sim = Sim::new(seed, n, cfg.clone(), NetConfig::default());
        // No per-event member-table tracking (O(N) per event); the checks below read the
        // nodes' tables when they run.
        sim.set_tracking(false);
        let everyone: Vec<usize> = (0..n).collect();
        // Converged: checked every 500 ms (the full check is quadratic in N).
        let mut converged = false;
        while sim.now() < Duration::from_secs(120) {
            let t = sim.now() + Duration::from_millis(500);
            sim.run_until(t);
            if sim.all_see_now(&everyone, &everyone, MemberState::Alive) {
                converged = true;
                break;
            }
        }
        if !converged {
            failed += 1;
            continue;
        }
        // Steady state, then the load over a quiet 10 s.
        let t0 = sim.now() + Duration::from_secs(5);
        sim.run_until(t0);
        let (s0, b0) = (sim.sent, sim.sent_bytes);
        sim.run_until(t0 + Duration::from_secs(10));
        per_node_dgrams += (sim.sent - s0) as f64 / n as f64 / 10.0;
        per_node_bytes += (sim.sent_bytes - b0) as f64 / n as f64 / 10.0;
        // Kill at a seed-dependent phase of the probe cycle.
        let kill_at = sim.now() + Duration::from_micros(seed * 7919 % 500_000);
        sim.run_until(kill_at);
        let victim = seed as usize % n;
        sim.kill(victim);
        let survivors: Vec<usize> = everyone.iter().copied().filter(|&i| i != victim).collect();
        // Checked every 10 ms of simulated time (datagrams take 1–20 ms).
        let (mut first, mut all) = (None, None);
        while sim.now() < kill_at + Duration::from_secs(60) && all.is_none() {
            let t = sim.now() + Duration::from_millis(10);
            sim.run_until(t);
            if first.is_none() && survivors.iter().any(|&o| sim.all_see_now(&[o], &[victim], MemberState::Dead)) {
                first = Some(sim.now());
            }
            if sim.all_see_now(&survivors, &[victim], MemberState::Dead) {
                all = Some(sim.now());
            }
        }
        match (first, all) {
            (Some(f), Some(a)) => {
                first_dead.push(f - kill_at);
                all_dead.push(a - kill_at);
            }
            _ => failed += 1,
        }
    }
    let ok = seeds - failed;
    if all_dead.is_empty() {
        println!("detection N={n}: no seed converged and detected ({failed} failed)");
        println!("BENCH detection nodes={n} seeds={seeds} failed={failed}");
        return;
    }
    all_dead.sort();
    first_dead.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (dg, by) = (per_node_dgrams / ok as f64, per_node_bytes / ok as f64);
    println!(
        "detection N={n} seeds={seeds} failed={failed}: dead on all survivors median {:.0} ms, p99 {:.0} ms, max {:.0} ms; first survivor median {:.0} ms; load {dg:.1} datagrams/node/s, {by:.0} B/node/s ({:.1} s wall)",
        ms(pct(&all_dead, 0.5)),
        ms(pct(&all_dead, 0.99)),
        ms(*all_dead.last().unwrap()),
        ms(pct(&first_dead, 0.5)),
        wall.elapsed().as_secs_f64()
    );
    println!(
        "BENCH detection nodes={n} seeds={seeds} failed={failed} median_ms={:.0} p99_ms={:.0} max_ms={:.0} first_ms={:.0} dgrams_per_node_s={dg:.2} bytes_per_node_s={by:.0}",
        ms(pct(&all_dead, 0.5)),
        ms(pct(&all_dead, 0.99)),
        ms(*all_dead.last().unwrap()),
        ms(pct(&first_dead, 0.5)),
    );
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let seeds = [args.first().copied().unwrap_or(20), args.get(1).copied().unwrap_or(10), args.get(2).copied().unwrap_or(2)];
    bench_placement(1000, 10_000);
    for (n, s) in [10usize, 100, 1000].into_iter().zip(seeds) {
        if s > 0 {
            bench_detection(n, s);
        }
    }
}
