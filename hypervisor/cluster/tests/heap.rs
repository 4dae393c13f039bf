//! How much heap a log entry of realistic size takes, measured with a counting allocator, and
//! that the replica's estimate ([`Command::heap_bytes`], what `max_log_bytes` bounds) is never
//! below it: `orchd` has a 4 MiB heap and, without compaction on nodes, the log only grows
//! (docs/orchestration.md, "Bounds"). One test in this binary: the allocator is global.
use std::alloc::System;
use std::time::Duration;

use catenary_cluster::desired::{Command, RestartPolicy, WorkloadSpec};
use catenary_cluster::identity::NodeKey;
use catenary_cluster::orch::{NODE_LOG_BYTES, NODE_SNAPSHOT_EVERY, NODE_SNAPSHOT_MARGIN, NODE_WRITE_BUDGET};
use catenary_cluster::snapshot::{encode_snapshot, SNAPSHOT_MAX};
use catenary_cluster::placement::Constraint;
use catenary_cluster::replica::{ProposeError, Replica, ReplicaConfig};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// What an operator's `catenary run --replicas 2 --env … --constraint …` commits.
fn realistic(i: u32) -> Command {
    Command::PutWorkload(WorkloadSpec {
        health: None,
        name: format!("web-{}", i % 100),
        image: [0x5a; 32],
        replicas: 2,
        vcpus: 1,
        mem_mib: 128,
        env: vec![("PORT".into(), "8080".into()), ("LOG_LEVEL".into(), "info".into()), ("GREETING".into(), format!("hello from {i}"))],
        args: vec!["--serve".into(), "/srv/www".into()],
        restart: RestartPolicy::OnFailure { max_restarts: 5 },
        constraints: vec![Constraint::LabelEquals { key: "zone".into(), value: "a".into() }],
    })
}

fn leader(cfg: ReplicaConfig) -> Replica {
    let mut r = Replica::bootstrap(0, &[0], cfg, 7, Duration::ZERO);
    let mut now = Duration::ZERO;
    while !r.is_leader() {
        now = r.next_deadline().max(now + Duration::from_millis(1));
        r.tick(now);
    }
    r
}

/// The heap a batch of `n` entries takes (allocated less freed), and the estimate's growth.
fn measure(r: &mut Replica, from: u32, n: u32, cmd: &dyn Fn(u32) -> Command) -> (i64, i64) {
    let before = r.log_bytes() as i64 + r.state().heap_bytes() as i64;
    let region = Region::new(GLOBAL);
    for i in from..from + n {
        r.propose(Duration::from_secs(10), cmd(i)).expect("a leader with room takes it");
    }
    let s = region.change();
    let after = r.log_bytes() as i64 + r.state().heap_bytes() as i64;
    (s.bytes_allocated as i64 - s.bytes_deallocated as i64, after - before)
}

#[test]
fn log_entries_heap_is_measured_and_bounded_by_bytes() {
    let mut r = leader(ReplicaConfig::default());
    // Warm up: the bounded structures (the latest 4,096 applied positions, the refusals) full,
    // the 100 workloads in the state, the maps past their first nodes.
    measure(&mut r, 0, 5_000, &realistic);
    let assign = |i: u32| Command::Assign { workload: format!("web-{}", i % 100), replica: i % 2, node: NodeKey([i as u8; 32]) };
    let mut report = Vec::new();
    for (what, cmd) in [("put (realistic spec)", &realistic as &dyn Fn(u32) -> Command), ("assign (scheduler)", &assign)] {
        let n = 5_000;
        let (heap, estimate) = measure(&mut r, 10_000, n, cmd);
        let per = heap as f64 / f64::from(n);
        println!("{what}: measured {per:.0} heap bytes per entry, estimated {:.0}; {} such entries fill orchd's 4 MiB heap", estimate as f64 / f64::from(n), (4 << 20) / (per as u64).max(1));
        report.push((what, per));
        // The estimate is never below what the allocator was asked for.
        assert!(estimate >= heap, "{what}: estimate {estimate} below the measured {heap} bytes for {n} entries");
    }
    // The bound: a node's replica refuses the log past NODE_LOG_BYTES, before its heap is gone.
    let mut small = leader(ReplicaConfig { max_log_bytes: NODE_LOG_BYTES, ..ReplicaConfig::default() });
    let region = Region::new(GLOBAL);
    let mut taken = 0u32;
    loop {
        match small.propose(Duration::from_secs(10), realistic(taken)) {
            Ok(_) => taken += 1,
            Err(ProposeError::LogFull) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(taken < 100_000, "never full");
    }
    let s = region.change();
    let held = s.bytes_allocated as i64 - s.bytes_deallocated as i64;
    println!("max_log_bytes {NODE_LOG_BYTES}: {taken} realistic puts taken, then LogFull; heap held {held} bytes (log estimate {}); write budget {NODE_WRITE_BUDGET}", small.log_bytes());
    assert!(small.log_bytes() <= NODE_LOG_BYTES);
    assert!(held < 3 << 20, "the full log holds {held} bytes of a 4 MiB heap");
    assert!(taken > 1_000, "only {taken} entries fit");

    // With compaction as on nodes the log no longer only grows: 20,000 puts replacing 100
    // workloads are all taken, and the log keeps at most one snapshot interval and its margin.
    let node_cfg = || ReplicaConfig { max_log_bytes: NODE_LOG_BYTES, snapshot_every: NODE_SNAPSHOT_EVERY, snapshot_margin: NODE_SNAPSHOT_MARGIN, ..ReplicaConfig::default() };
    let mut compacting = leader(node_cfg());
    for i in 0..20_000 {
        compacting.propose(Duration::from_secs(10), realistic(i)).expect("compaction keeps room");
    }
    let log = compacting.log();
    let kept = log.last_position().index.get() - log.snapshot_position().index.get();
    println!("compaction every {NODE_SNAPSHOT_EVERY} (margin {NODE_SNAPSHOT_MARGIN}): 20000 puts taken, {kept} entries after the snapshot, log estimate {} bytes", compacting.log_bytes());
    assert!((NODE_SNAPSHOT_MARGIN..=NODE_SNAPSHOT_EVERY + NODE_SNAPSHOT_MARGIN).contains(&kept), "{kept} entries kept");
    // What the write budget now bounds is the live state: distinct workloads until an
    // operator's write is refused (orch::Orch::has_room), and that state's snapshot.
    let mut full = leader(node_cfg());
    let distinct = |i: u32| match realistic(i) {
        Command::PutWorkload(mut w) => {
            w.name = format!("web-{i}");
            Command::PutWorkload(w)
        }
        c => c,
    };
    let region = Region::new(GLOBAL);
    let mut n = 0u32;
    while full.log_bytes() + full.state().heap_bytes() + distinct(n).heap_bytes() <= NODE_WRITE_BUDGET {
        full.propose(Duration::from_secs(10), distinct(n)).expect("room");
        n += 1;
    }
    let held = region.change();
    let snap = full.storage().snapshot.clone().expect("compacted");
    let snap_len = encode_snapshot(&snap).len();
    println!(
        "write budget {NODE_WRITE_BUDGET}: {n} distinct realistic workloads, then desired_state_full; heap held {} bytes; last snapshot ({} workloads) {snap_len} bytes encoded",
        held.bytes_allocated as i64 - held.bytes_deallocated as i64,
        snap.state.workloads.len()
    );
    assert!(n > 500, "only {n} workloads fit");
    assert!(snap_len < SNAPSHOT_MAX / 2, "a snapshot of {snap_len} bytes");
}
