//! Membership under the simulator: convergence, failure detection, graceful leave, partition
//! and rejoin, admission, and replay determinism, each over several seeds.
use alloc::vec::Vec;
use core::time::Duration;

use crate::membership::{MemberState, MembershipConfig};
use crate::sim::{NetConfig, Sim};

const N: usize = 7;
const SEEDS: u64 = 20;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

fn converged(seed: u64, n: usize, net: NetConfig) -> Sim {
    let mut sim = Sim::new(seed, n, MembershipConfig::default(), net);
    let everyone = all(n);
    let t = sim.run_until_true(secs(30), |s| {
        s.all_see(&everyone, &everyone, MemberState::Alive)
    });
    assert!(
        t.is_some(),
        "seed {seed}: {n} nodes did not converge on alive in 30 s"
    );
    sim
}

#[test]
fn all_nodes_converge_on_alive() {
    for seed in 0..SEEDS {
        let mut sim = converged(seed, N, NetConfig::default());
        // And stay there while nothing fails (no false suspicion that sticks).
        let until = sim.now() + secs(20);
        sim.run_until(until);
        let everyone = all(N);
        assert!(
            sim.all_see(&everyone, &everyone, MemberState::Alive),
            "seed {seed}: flapped"
        );
    }
}

#[test]
fn killed_node_is_declared_dead_on_every_survivor() {
    for seed in 0..SEEDS {
        let mut sim = converged(seed, N, NetConfig::default());
        let victim = (seed as usize) % N;
        sim.kill(victim);
        let killed_at = sim.now();
        let survivors: Vec<usize> = all(N).into_iter().filter(|&i| i != victim).collect();
        let t = sim.run_until_true(killed_at + secs(30), |s| {
            s.all_see(&survivors, &[victim], MemberState::Dead)
        });
        let t = t.unwrap_or_else(|| panic!("seed {seed}: node {victim} not declared dead in 30 s"));
        // The measured bound is in docs/orchestration.md; this is only a sanity bound.
        assert!(
            t - killed_at < secs(15),
            "seed {seed}: detection took {:?}",
            t - killed_at
        );
        assert!(
            sim.all_see(&survivors, &survivors, MemberState::Alive),
            "seed {seed}: a survivor was lost"
        );
    }
}

#[test]
fn graceful_leave_is_seen_as_left_at_once() {
    // Lossless: the leaving node tells every active member directly, so each sees `left`
    // within one network delay.
    let lossless = NetConfig {
        drop_per_mille: 0,
        dup_per_mille: 0,
        ..NetConfig::default()
    };
    for seed in 0..SEEDS {
        let mut sim = converged(seed, N, lossless.clone());
        let leaver = (seed as usize + 1) % N;
        sim.leave(leaver);
        let at = sim.now();
        let others: Vec<usize> = all(N).into_iter().filter(|&i| i != leaver).collect();
        let t = sim.run_until_true(at + secs(10), |s| {
            s.all_see(&others, &[leaver], MemberState::Left)
        });
        let t = t.unwrap_or_else(|| panic!("seed {seed}: leave not seen"));
        assert!(
            t - at <= lossless.max_delay,
            "seed {seed}: leave took {:?}",
            t - at
        );
    }
    // Lossy: a member that missed the direct notice learns it from gossip, and nobody ever
    // shows the leaver as dead.
    for seed in 0..SEEDS {
        let mut sim = converged(
            seed,
            N,
            NetConfig {
                drop_per_mille: 100,
                ..NetConfig::default()
            },
        );
        let leaver = (seed as usize + 1) % N;
        sim.leave(leaver);
        let at = sim.now();
        let others: Vec<usize> = all(N).into_iter().filter(|&i| i != leaver).collect();
        let t = sim.run_until_true(at + secs(10), |s| {
            s.all_see(&others, &[leaver], MemberState::Left)
        });
        assert!(t.is_some(), "seed {seed}: leave not seen under loss");
        let until = sim.now() + secs(10);
        sim.run_until(until);
        assert!(
            sim.all_see(&others, &[leaver], MemberState::Left),
            "seed {seed}: left turned into something else"
        );
        let key = sim.key(leaver);
        assert!(
            !sim.trace()
                .iter()
                .any(|e| e.member == key && e.state == MemberState::Dead),
            "seed {seed}: the leaver was shown dead"
        );
    }
}

#[test]
fn partitioned_node_rejoins_with_higher_incarnation() {
    for seed in 0..SEEDS {
        let mut sim = converged(seed, N, NetConfig::default());
        let cut = (seed as usize + 2) % N;
        let before = sim.view((cut + 1) % N, cut).expect("known").1;
        let majority: Vec<usize> = all(N).into_iter().filter(|&i| i != cut).collect();
        sim.partition(&[&[cut]]);
        let start = sim.now();
        let t = sim.run_until_true(start + secs(30), |s| {
            s.all_see(&majority, &[cut], MemberState::Dead)
                && s.all_see(&[cut], &majority, MemberState::Dead)
        });
        assert!(
            t.is_some(),
            "seed {seed}: the partition was not detected on both sides"
        );
        sim.heal();
        let healed = sim.now();
        let everyone = all(N);
        let t = sim.run_until_true(healed + secs(30), |s| {
            s.all_see(&everyone, &everyone, MemberState::Alive)
        });
        assert!(
            t.is_some(),
            "seed {seed}: node {cut} did not rejoin after the heal"
        );
        for &o in &majority {
            let after = sim.view(o, cut).expect("known").1;
            assert!(
                after > before,
                "seed {seed}: incarnation {after:#x} not above {before:#x}"
            );
        }
    }
}

#[test]
fn non_admitted_key_never_becomes_a_member() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, N, MembershipConfig::default(), NetConfig::default());
        let outsider = sim.add_outsider();
        sim.run_until(secs(20));
        let key = sim.key(outsider);
        for o in 0..N {
            assert!(
                sim.view(o, outsider).is_none(),
                "seed {seed}: node {o} lists the outsider"
            );
        }
        assert!(!sim
            .trace()
            .iter()
            .any(|e| e.member == key && e.observer != outsider));
        // The outsider did talk: its datagrams were refused, not lost.
        assert!(sim.rejected > 0, "seed {seed}: nothing was refused");
        let admitted = all(N);
        assert!(
            sim.all_see(&admitted, &admitted, MemberState::Alive),
            "seed {seed}"
        );
    }
}

#[test]
fn admitted_outsider_becomes_a_member_on_every_node() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, N, MembershipConfig::default(), NetConfig::default());
        let outsider = sim.add_outsider();
        sim.run_until(secs(10));
        for o in 0..N {
            assert!(sim.view(o, outsider).is_none(), "seed {seed}: node {o} lists the outsider before its admission");
        }
        sim.check_invariants().unwrap();
        sim.admit(sim.key(outsider));
        let everyone = all(N + 1);
        let t = sim.run_until_true(secs(40), |s| s.all_see(&everyone, &everyone, MemberState::Alive));
        assert!(t.is_some(), "seed {seed}: the admitted node is not alive on every node");
        sim.check_invariants().unwrap();
    }
}

fn scenario(seed: u64) -> (Vec<crate::sim::TraceEvent>, u64, u64) {
    let mut sim = Sim::new(seed, N, MembershipConfig::default(), NetConfig::default());
    sim.run_until(secs(5));
    sim.kill(1);
    sim.partition(&[&[2, 3]]);
    sim.run_until(secs(10));
    sim.heal();
    sim.leave(4);
    sim.restart(1);
    sim.run_until(secs(20));
    (sim.trace().to_vec(), sim.delivered, sim.dropped)
}

#[test]
fn same_seed_replays_the_identical_trace() {
    for seed in 0..5 {
        let a = scenario(seed);
        let b = scenario(seed);
        assert!(!a.0.is_empty());
        assert_eq!(a, b, "seed {seed} did not replay");
    }
    // The trace does depend on the seed (the check above is not comparing constants).
    assert_ne!(scenario(1).0, scenario(2).0);
}

/// Random crashes, restarts, leaves, partitions and heals over a lossy network: the invariants
/// hold after every step and the cluster converges once the faults stop.
#[test]
fn chaos_schedules_hold_the_invariants() {
    for seed in 0..150 {
        if let Err(e) = crate::chaos::chaos(seed) {
            panic!("{e}");
        }
    }
}

/// Seed 37 found members stuck in `suspect` for ever after foca dropped their timers
/// (`Membership::arm_suspicions`).
#[test]
fn regression_seed_37_suspect_outlives_a_timer_reset() {
    crate::chaos::chaos(37).unwrap();
}

/// Seed 5958 found rejoined nodes that held only stale identities of each other and never
/// announced (`Membership::active`).
#[test]
fn regression_seed_5958_renewed_nodes_announce() {
    crate::chaos::chaos(5958).unwrap();
}

/// Seed 13448 found a suspicion learnt by gossip that nobody timed out once its originator had
/// restarted (`Membership::arm_suspicions`).
#[test]
fn regression_seed_13448_gossiped_suspicion_times_out() {
    crate::chaos::chaos(13448).unwrap();
}

#[test]
fn a_node_that_left_can_come_back_as_a_newer_generation() {
    for seed in 0..SEEDS {
        let mut sim = converged(seed, N, NetConfig::default());
        let node = (seed as usize + 3) % N;
        sim.leave(node);
        let at = sim.now();
        let others: Vec<usize> = all(N).into_iter().filter(|&i| i != node).collect();
        let t = sim.run_until_true(at + secs(10), |s| {
            s.all_see(&others, &[node], MemberState::Left)
        });
        assert!(t.is_some(), "seed {seed}: leave not seen");
        let left_inc = sim.view(others[0], node).expect("known").1;
        sim.restart(node);
        let everyone = all(N);
        let t = sim.run_until_true(sim.now() + secs(30), |s| {
            s.all_see(&everyone, &everyone, MemberState::Alive)
        });
        assert!(t.is_some(), "seed {seed}: the node did not come back");
        assert!(
            sim.view(others[0], node).expect("known").1 > left_inc,
            "seed {seed}"
        );
        sim.check_invariants().unwrap();
    }
}

/// `catenary node remove`: once every other node revoked a member's key (as `memberd` does
/// from the committed `RemoveNode`), it leaves every table and never comes back, though it
/// keeps running and talking; the others stay alive with each other; invariants hold.
#[test]
fn a_revoked_node_leaves_every_table_and_is_refused_after() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(seed, N, MembershipConfig::default(), NetConfig::default());
        let everyone = all(N);
        assert!(sim.run_until_true(secs(30), |s| s.all_see(&everyone, &everyone, MemberState::Alive)).is_some(), "seed {seed}: no convergence");
        let gone = N - 1;
        sim.revoke(gone).unwrap();
        let rest = all(N - 1);
        for o in &rest {
            assert!(sim.view(*o, gone).is_none(), "seed {seed}: node {o} still lists the removed node at once");
        }
        // 20 s of it talking: nobody lists it again (the invariant checker refuses its key in
        // any table), and the others still see each other alive.
        sim.run_until(sim.now() + secs(20));
        for o in &rest {
            assert!(sim.view(*o, gone).is_none(), "seed {seed}: node {o} lists the removed node again");
        }
        assert!(sim.all_see_now(&rest, &rest, MemberState::Alive), "seed {seed}: the others lost each other");
        sim.check_invariants().unwrap();
    }
}
