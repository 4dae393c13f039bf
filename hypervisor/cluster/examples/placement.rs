//! Times the placement function (docs/orchestration.md quotes its output):
//! `cargo run --release -p catenary-cluster --features sim --example placement -- [NODES] [WORKLOADS]`
//!
//! Nodes with 64 vCPUs and 256 GiB, three zones; workloads of 1–3 replicas, 1–4 vCPUs and
//! 256 MiB–4 GiB, a third constrained to a zone; all drawn from a fixed seed.
use std::collections::BTreeMap;
use std::time::Instant;

use catenary_cluster::placement::{place, Constraint, NodeCapacity, WorkloadDemand};
use catenary_cluster::sim::{sim_key, SimRng};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let n = args.first().copied().unwrap_or(1000);
    let w = args.get(1).copied().unwrap_or(10_000);
    let mut r = SimRng::new(1);
    let zones = ["a", "b", "c"];
    let nodes: Vec<NodeCapacity> = (0..n)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), zones[i % 3].to_string());
            NodeCapacity {
                key: sim_key(i),
                free_vcpus: 64,
                free_mem_mib: 256 * 1024,
                labels,
                images: Vec::new(),
                image_mib: Vec::new(),
                store_free_mib: catenary_cluster::placement::STORE_UNKNOWN,
            }
        })
        .collect();
    let workloads: Vec<WorkloadDemand> = (0..w)
        .map(|j| WorkloadDemand {
            name: format!("w{j}"),
            replicas: 1 + r.below(3) as u32,
            vcpus: 1 + r.below(4) as u32,
            mem_mib: 256 << r.below(5),
            constraints: if j % 3 == 0 {
                vec![Constraint::LabelEquals {
                    key: "zone".into(),
                    value: zones[r.below(3) as usize].into(),
                }]
            } else {
                Vec::new()
            },
            image: [0; 32],
            image_mib: 0,
        })
        .collect();
    let replicas: u64 = workloads.iter().map(|w| u64::from(w.replicas)).sum();
    let start = Instant::now();
    let plan = place(&nodes, &workloads);
    let took = start.elapsed();
    println!(
        "{n} nodes, {w} workloads ({replicas} replicas): {} placed, {} refused in {:.1} ms = {:.0} replica placements/s",
        plan.placements.len(),
        plan.refused.len(),
        took.as_secs_f64() * 1000.0,
        plan.placements.len() as f64 / took.as_secs_f64()
    );
}
