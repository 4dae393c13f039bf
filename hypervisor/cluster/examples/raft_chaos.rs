//! The desired state's chaos schedules over many seeds (Raft, scheduler, leases):
//! `cargo run --release -p catenary-cluster --features sim --example raft_chaos -- [SEEDS] [FIRST]`
use std::time::Instant;

use catenary_cluster::raft_sim::raft_chaos;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let seeds = args.first().copied().unwrap_or(1000);
    let first = args.get(1).copied().unwrap_or(0);
    let start = Instant::now();
    let mut failed = Vec::new();
    let (mut taken, mut installed, mut diskless, mut chunks, mut assembled, mut largest) = (0, 0, 0, 0, 0, 0);
    let (mut removals, mut out, mut back, mut pulls, mut held, mut assigns, mut copies) = (0, 0, 0, 0, 0, 0, 0);
    let (mut grown, mut overfull) = (0, 0);
    for seed in first..first + seeds {
        match raft_chaos(seed) {
            Ok(st) => {
                taken += st.snapshots_taken;
                installed += st.snapshots_installed;
                diskless += st.diskless_restarts;
                chunks += st.chunks_delivered;
                assembled += st.snapshots_assembled;
                largest = largest.max(st.largest_snapshot);
                removals += st.removals;
                out += st.voters_taken_out;
                back += st.voters_added_back;
                pulls += st.pulls_installed;
                held += st.compactions_held;
                assigns += st.assigns;
                copies += st.assigns_without_image;
                grown += st.grown_puts;
                overfull += st.overfull_episodes;
            }
            Err(e) => {
                println!("FAILED {e}");
                failed.push(seed);
            }
        }
    }
    println!(
        "desired state: {} of {seeds} seeds held every invariant ({} failed: {failed:?}); {taken} snapshots taken, {installed} installed by lagging followers, {held} compactions put off for a follower a few entries behind, {diskless} restarts without storage rejoined as new members; {assembled} snapshots assembled from {chunks} chunks over the codec (largest {largest} bytes); {removals} removals of down nodes, {out} removed voters taken out, {back} admitted again added back; {pulls} committed states pulled by nodes that heard no leader; {assigns} replicas assigned, {copies} of them to a node without their image; {grown} workloads grown past half a node or shrunk back, {overfull} times a node over its room; {:.1} s",
        seeds - failed.len() as u64,
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
