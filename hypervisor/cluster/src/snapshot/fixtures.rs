//! Test states shared by the encoding and the transfer tests.
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;

use raftbare::{ClusterConfig, LogIndex, LogPosition, NodeId, Term};

use crate::desired::{Command, DesiredState, Limits, RestartPolicy, Role, WorkloadSpec};
use crate::identity::NodeKey;
use crate::placement::Constraint;
use crate::replica::Snapshot;

pub(super) fn rnd(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What an operator's `catenary run --replicas 2 --env … --constraint …` commits (as in
/// tests/heap.rs), with `pad` bytes more in one env value.
fn realistic(i: u32, pad: usize) -> WorkloadSpec {
    WorkloadSpec {
        health: None,
        name: format!("web-{i}"),
        image: [0x5a; 32],
        replicas: 2,
        vcpus: 1,
        mem_mib: 128,
        env: vec![("PORT".into(), "8080".into()), ("LOG_LEVEL".into(), "info".into()), ("GREETING".into(), format!("hello from {i}{}", "x".repeat(pad)))],
        args: vec!["--serve".into(), "/srv/www".into()],
        restart: RestartPolicy::OnFailure { max_restarts: 5 },
        constraints: vec![Constraint::LabelEquals { key: "zone".into(), value: "a".into() }, Constraint::OnNodes(vec![NodeKey([3; 32])])],
    }
}

/// A state with every field in use: `n` workloads (each padded by `pad` bytes), 3 nodes
/// (one drained), an operator, assignments and a release.
fn state(n: u32, pad: usize) -> DesiredState {
    let l = Limits::default();
    let mut s = DesiredState::default();
    let keys = [NodeKey([3; 32]), NodeKey([1; 32]), NodeKey([2; 32])];
    for k in keys {
        s.apply(&Command::AdmitNode(k), &l).unwrap();
    }
    s.apply(&Command::SetOperator { key: NodeKey([9; 32]), role: Some(Role::Viewer) }, &l).unwrap();
    s.apply(&Command::SetOperator { key: NodeKey([8; 32]), role: Some(Role::Admin) }, &l).unwrap();
    for i in 0..n {
        s.apply(&Command::PutWorkload(realistic(i, pad)), &l).unwrap();
        s.apply(&Command::Assign { workload: format!("web-{i}"), replica: i % 2, node: keys[i as usize % 3] }, &l).unwrap();
    }
    if n > 0 {
        s.apply(&Command::Unassign { workload: "web-0".to_string(), replica: 0 }, &l).unwrap();
    }
    s.apply(&Command::Drain(keys[2]), &l).unwrap();
    s.apply(&Command::SetLabels { node: keys[1], changes: vec![("zone".to_string(), Some("b".to_string())), ("disk".to_string(), None)] }, &l).unwrap();
    s.apply(&Command::SetLabels { node: keys[0], changes: vec![("gpu".to_string(), Some(String::new()))] }, &l).unwrap();
    s
}

pub(super) fn snap(n: u32, pad: usize) -> Snapshot {
    let mut config = ClusterConfig::new();
    config.voters.extend([NodeId::new(0), NodeId::new(1), NodeId::new(2)]);
    config.new_voters.extend([NodeId::new(0), NodeId::new(65537), NodeId::new(2)]);
    Snapshot { position: LogPosition { term: Term::new(3), index: LogIndex::new(40 + u64::from(n)) }, config, state: state(n, pad) }
}

