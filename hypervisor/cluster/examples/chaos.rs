//! Runs the chaos schedules over many seeds and reports how many held every invariant:
//! `cargo run --release -p catenary-cluster --features sim --example chaos -- [SEEDS] [FIRST]`
use std::time::{Duration, Instant};

use catenary_cluster::chaos::chaos;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let seeds = args.first().copied().unwrap_or(1000);
    let first = args.get(1).copied().unwrap_or(0);
    let start = Instant::now();
    let (mut held, mut failed) = (0u64, Vec::new());
    let mut worst = Duration::ZERO;
    for seed in first..first + seeds {
        match chaos(seed) {
            Ok(r) => {
                held += 1;
                worst = worst.max(r.converged_after);
            }
            Err(e) => {
                println!("FAILED {e}");
                failed.push(seed);
            }
        }
    }
    println!(
        "{held} of {seeds} seeds held every invariant ({} failed: {failed:?}); slowest convergence after the final heal {worst:?}; {:.1} s",
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
