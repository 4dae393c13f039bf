//! Measures failure detection in the simulator (docs/orchestration.md quotes its output):
//! `cargo run --release -p catenary-cluster --features sim --example detection -- [SEEDS] [N...]`
//!
//! For each seed: N nodes converge, one is killed, and the time until *every* survivor shows it
//! dead is recorded (also the time until the first does). The network is the simulator's lossy
//! default (1-20 ms delay, 1% loss, 0.5% duplicates).
use std::time::Duration;

use catenary_cluster::membership::{MemberState, MembershipConfig};
use catenary_cluster::sim::{NetConfig, Sim};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let seeds = args.first().copied().unwrap_or(200);
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..].iter().map(|&n| n as usize).collect()
    } else {
        vec![3, 7, 16]
    };
    let cfg = MembershipConfig::default();
    println!(
        "probe_period {:?}, probe_rtt {:?}, suspect_to_down_after {:?}, gossip {:?} x{}, net {:?}",
        cfg.probe_period,
        cfg.probe_rtt,
        cfg.suspect_to_down_after,
        cfg.gossip_period,
        cfg.gossip_fanout,
        NetConfig::default()
    );
    for n in sizes {
        let mut all_dead = Vec::new();
        let mut first_dead = Vec::new();
        let mut datagrams_per_node_s = 0.0;
        let mut failed = 0;
        for seed in 0..seeds {
            let mut sim = Sim::new(seed, n, cfg.clone(), NetConfig::default());
            let everyone: Vec<usize> = (0..n).collect();
            if sim
                .run_until_true(Duration::from_secs(30), |s| {
                    s.all_see(&everyone, &everyone, MemberState::Alive)
                })
                .is_none()
            {
                failed += 1;
                continue;
            }
            // Steady state for a while, then measure the load over a quiet 10 s.
            let t0 = sim.now() + Duration::from_secs(5);
            sim.run_until(t0);
            let d0 = sim.delivered + sim.dropped;
            sim.run_until(t0 + Duration::from_secs(10));
            datagrams_per_node_s += (sim.delivered + sim.dropped - d0) as f64 / n as f64 / 10.0;
            // Kill at a seed-dependent phase of the probe cycle.
            let phase = Duration::from_micros(seed * 7919 % 500_000);
            let kill_at = sim.now() + phase;
            sim.run_until(kill_at);
            let victim = seed as usize % n;
            sim.kill(victim);
            let survivors: Vec<usize> = everyone.iter().copied().filter(|&i| i != victim).collect();
            let first = sim.run_until_true(kill_at + Duration::from_secs(60), |s| {
                survivors
                    .iter()
                    .any(|&o| s.view(o, victim).map(|v| v.0) == Some(MemberState::Dead))
            });
            let all = sim.run_until_true(kill_at + Duration::from_secs(60), |s| {
                s.all_see(&survivors, &[victim], MemberState::Dead)
            });
            match (first, all) {
                (Some(f), Some(a)) => {
                    first_dead.push(f - kill_at);
                    all_dead.push(a - kill_at);
                }
                _ => failed += 1,
            }
        }
        all_dead.sort();
        first_dead.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "N={n:<3} seeds={seeds} undetected={failed} | dead on all survivors: min {:.0} ms, median {:.0} ms, p99 {:.0} ms, max {:.0} ms | first survivor: median {:.0} ms, max {:.0} ms | steady load {:.1} datagrams/node/s",
            ms(all_dead[0]),
            ms(pct(&all_dead, 0.5)),
            ms(pct(&all_dead, 0.99)),
            ms(*all_dead.last().unwrap()),
            ms(pct(&first_dead, 0.5)),
            ms(*first_dead.last().unwrap()),
            datagrams_per_node_s / (seeds - failed) as f64,
        );
    }
}
