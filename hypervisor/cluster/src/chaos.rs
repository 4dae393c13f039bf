//! Randomised fault schedules for the simulator, with the invariants checked after every step.
//!
//! One seed picks the cluster size and a sequence of faults: crashes, restarts (as the next
//! generation), graceful leaves, partitions into two random sides, heals, over the lossy,
//! duplicating, reordering default network. After each simulated instant
//! [`Sim::check_invariants`] runs. At the end the network heals, every crashed node restarts,
//! and after a quiet period every running node must see every other running node alive.
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::membership::{MemberState, MembershipConfig};
use crate::sim::{NetConfig, Sim, SimRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosReport {
    pub nodes: usize,
    pub faults: usize,
    pub trace_events: usize,
    /// Time from the final heal until every running node saw every other alive.
    pub converged_after: Duration,
}

pub fn chaos(seed: u64) -> Result<ChaosReport, String> {
    let mut r = SimRng::new(seed ^ 0x0063_6861_6f73);
    let n = 4 + r.below(6) as usize;
    let mut sim = Sim::new(seed, n, MembershipConfig::default(), NetConfig::default());
    let faults = 8 + r.below(12) as usize;
    let mut left: Vec<bool> = alloc::vec![false; n];
    let fail = |seed: u64, t: Duration, e: String| format!("seed {seed} at {t:?}: {e}");
    for _ in 0..faults {
        let until = sim.now() + Duration::from_millis(r.below(4000));
        while sim.step(until) {
            sim.check_invariants()
                .map_err(|e| fail(seed, sim.now(), e))?;
        }
        let i = r.below(n as u64) as usize;
        match r.below(6) {
            0 | 1 if sim.is_alive(i) => sim.kill(i),
            0..=2 if !sim.is_alive(i) && !left[i] => sim.restart(i),
            3 if sim.is_alive(i) && r.per_mille(500) => {
                sim.leave(i);
                left[i] = true;
            }
            4 => {
                let side: Vec<usize> = (0..n).filter(|_| r.per_mille(400)).collect();
                sim.partition(&[&side]);
            }
            _ => sim.heal(),
        }
        sim.check_invariants()
            .map_err(|e| fail(seed, sim.now(), e))?;
    }
    sim.heal();
    for (i, &gone) in left.iter().enumerate() {
        if !sim.is_alive(i) && !gone {
            sim.restart(i);
        }
    }
    let healed = sim.now();
    let running: Vec<usize> = (0..n).filter(|&i| sim.is_alive(i)).collect();
    let limit = healed + Duration::from_secs(60);
    let mut converged = None;
    loop {
        if sim.all_see(&running, &running, MemberState::Alive) {
            converged = Some(sim.now());
            break;
        }
        if !sim.step(limit) {
            break;
        }
        sim.check_invariants()
            .map_err(|e| fail(seed, sim.now(), e))?;
    }
    let Some(t) = converged else {
        // Who sees whom how: the first thing one needs to replay the failure.
        let mut views = String::new();
        for &o in &running {
            let row: Vec<_> = running
                .iter()
                .map(|&m| sim.view(o, m).map(|v| (v.0, v.1 >> 16, v.1 & 0xffff)))
                .collect();
            views += &format!(
                "\n  node {o} (generation, last event: {:?}) sees {row:?}",
                sim.node(o)
                    .map(|m| (m.identity().generation, m.last_self_event()))
            );
        }
        return Err(format!(
            "seed {seed}: running nodes {running:?} did not all see each other alive 60 s after the heal:{views}"
        ));
    };
    Ok(ChaosReport {
        nodes: n,
        faults,
        trace_events: sim.trace().len(),
        converged_after: t - healed,
    })
}
