//! The cluster's desired state as the API shows it (`GET /v1/cluster/workloads`), and the
//! placement constraints an operator writes (`catenary run --constraint zone=a`).
//!
//! A node's orchestration service lists the committed workloads with each replica's node
//! (`catenary_cluster::listing`); this node fills in the state of the replicas assigned to it
//! from its own workload service (a replica of `web` runs there as `cl-web-R`), and
//! [`crate::cluster::elsewhere`] takes each other node's word for the replicas assigned to it.

use crate::error::ApiError;
use crate::types::{restart_text, ClusterWorkloadStatus, ReplicaStatus};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use catenary_cluster::desired::{Command, RestartPolicy as R, WorkloadSpec};
use catenary_cluster::listing::Listed;
use catenary_cluster::placement::Constraint;
use catenary_workload::status::{State, Summary};
use catenary_workload::{Digest, RestartPolicy};

/// The workd name prefix of cluster replicas: node-level workloads may not use it.
pub const REPLICA_PREFIX: &str = catenary_workload::proto::CLUSTER_PREFIX;
// The scheduler names replicas by catenary_cluster's copy of the prefix; the test
// `the_scheduler_and_workd_agree_on_a_replica` checks the two agree.
// The scheduler counts a replica's node memory as workd's admission does.
const _: () = assert!(catenary_cluster::desired::REPLICA_OVERHEAD_MIB == catenary_workload::admission::VM_OVERHEAD_MIB);
// The cluster refuses a put whose health check's argument count or numbers are out of workd's
// bounds (each argument's size and NUL bytes are checked by the API's `spec.check()` before a
// put; the cluster bounds an argument's size by its own `string_len`).
const _: () = assert!(catenary_cluster::desired::HEALTH_CMD_MAX == catenary_workload::spec::HEALTH_CMD_MAX);
const _: () = assert!(catenary_cluster::desired::HEALTH_SECS_MAX == catenary_workload::spec::HEALTH_SECS_MAX);
const _: () = assert!(catenary_cluster::desired::HEALTH_RETRIES_MAX == catenary_workload::spec::HEALTH_RETRIES_MAX);

/// A health check as the cluster keeps it, as `workd` takes it (the same fields).
fn workd_check(h: &catenary_cluster::desired::HealthCheck) -> catenary_workload::spec::HealthCheck {
    let catenary_cluster::desired::HealthCheck { cmd, interval_secs, timeout_secs, retries, start_period_secs } = h.clone();
    catenary_workload::spec::HealthCheck { cmd, interval_secs, timeout_secs, retries, start_period_secs }
}

/// A health check as `workd` takes it, as the cluster keeps it.
fn cluster_check(h: catenary_workload::spec::HealthCheck) -> catenary_cluster::desired::HealthCheck {
    let catenary_workload::spec::HealthCheck { cmd, interval_secs, timeout_secs, retries, start_period_secs } = h;
    catenary_cluster::desired::HealthCheck { cmd, interval_secs, timeout_secs, retries, start_period_secs }
}

/// Constraints per workload.
pub const CONSTRAINTS_MAX: usize = 16;

/// The workd name of replica `r` of cluster workload `name`.
pub fn replica_name(name: &str, r: u32) -> String {
    catenary_cluster::desired::replica_name(name, r)
}

/// The spec `orchd` gives `workd` for replica `r` of `s` (named [`replica_name`], with its
/// network); `None` when that name is not one `workd` takes. `apid` compares its digest with
/// the one `workd` lists to tell a replica that runs an older spec
/// ([`ReplicaStatus::outdated`]).
pub fn replica_spec(s: &WorkloadSpec, r: u32) -> Option<catenary_workload::WorkloadSpec> {
    let name = replica_name(&s.name, r);
    catenary_workload::spec::valid_name(&name).then(|| catenary_workload::WorkloadSpec {
        name,
        image: Digest(s.image),
        vcpus: s.vcpus.min(u8::MAX as u32) as u8,
        memory_mib: s.mem_mib.min(u32::MAX as u64) as u32,
        env: s.env.iter().map(|(k, v)| alloc::format!("{k}={v}")).collect(),
        args: if s.args.is_empty() { None } else { Some(s.args.clone()) },
        restart: match s.restart {
            R::No => RestartPolicy::No,
            R::OnFailure { max_restarts } => RestartPolicy::OnFailure { limit: max_restarts },
            R::Always => RestartPolicy::Always,
        },
        net: true,
        health: s.health.as_ref().map(workd_check),
    })
}

/// `KEY=VALUE` or `KEY!=VALUE` (the label rules of the cluster file's `node` lines).
pub fn parse_constraint(s: &str) -> Result<Constraint, ApiError> {
    let bad = || ApiError::bad_request(&alloc::format!("constraints: {:?} is not KEY=VALUE or KEY!=VALUE (key 1-63 of a-z 0-9 . _ - /, value 0-63 of A-Z a-z 0-9 . _ -)", s.get(..80).unwrap_or(s)));
    let (k, v, eq) = match s.split_once("!=") {
        Some((k, v)) => (k, v, false),
        None => s.split_once('=').map(|(k, v)| (k, v, true)).ok_or_else(bad)?,
    };
    let key_ok = !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
    let value_ok = v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !key_ok || !value_ok {
        return Err(bad());
    }
    let (key, value) = (k.to_string(), v.to_string());
    Ok(if eq { Constraint::LabelEquals { key, value } } else { Constraint::LabelNotEquals { key, value } })
}

/// A constraint as an operator writes it (node-key constraints by key).
pub fn constraint_text(c: &Constraint) -> String {
    match c {
        Constraint::LabelEquals { key, value } => alloc::format!("{key}={value}"),
        Constraint::LabelNotEquals { key, value } => alloc::format!("{key}!={value}"),
        Constraint::OnNodes(keys) => alloc::format!("node in [{}]", keys.iter().map(|k| crate::auth::hex(&k.0[..8])).collect::<Vec<_>>().join(",")),
        Constraint::NotOnNode(k) => alloc::format!("node != {}", crate::auth::hex(&k.0[..8])),
    }
}

/// The command a cluster write commits. `node`: the key of the node a `Drain` names (the
/// caller resolved it; a name no member has is refused before).
pub fn command(w: crate::ClusterWrite, node: Option<[u8; 32]>) -> Command {
    match w {
        crate::ClusterWrite::Put { spec, replicas, constraints } => Command::PutWorkload(WorkloadSpec {
            name: spec.name,
            image: spec.image.0,
            replicas,
            vcpus: u32::from(spec.vcpus),
            mem_mib: u64::from(spec.memory_mib),
            // `NAME=value` entries (checked by the spec)
            env: spec.env.iter().map(|e| e.split_once('=').map(|(k, v)| (k.into(), v.into())).unwrap_or_else(|| (e.clone(), String::new()))).collect(),
            args: spec.args.unwrap_or_default(),
            restart: match spec.restart {
                RestartPolicy::No => R::No,
                RestartPolicy::OnFailure { limit } => R::OnFailure { max_restarts: limit },
                RestartPolicy::Always => R::Always,
            },
            constraints,
            health: spec.health.map(cluster_check),
        }),
        crate::ClusterWrite::Remove(name) => Command::RemoveWorkload(name),
        crate::ClusterWrite::Drain(_) => Command::Drain(catenary_cluster::NodeKey(node.unwrap_or([0; 32]))),
        crate::ClusterWrite::Undrain(_) => Command::Undrain(catenary_cluster::NodeKey(node.unwrap_or([0; 32]))),
        crate::ClusterWrite::Label { changes, .. } => Command::SetLabels { node: catenary_cluster::NodeKey(node.unwrap_or([0; 32])), changes },
        crate::ClusterWrite::RemoveNode(_) => Command::RemoveNode(catenary_cluster::NodeKey(node.unwrap_or([0; 32]))),
    }
}

/// The state of a replica assigned to a node whose store lacks its image: the node fetches it
/// from one that has it before the replica is created (docs/orchestration.md, "Images follow
/// their replicas"). Not counted as running.
pub const FETCHING_IMAGE: &str = "fetching-image";

/// The listed workloads as the API answers them. `name_of`: a node's name from its key;
/// `own`: this node's key, whose replicas' states come from `local` (its workload list), or
/// are [`FETCHING_IMAGE`] when not created yet and their image is not in `images` (its store).
pub fn statuses(entries: Vec<Listed>, name_of: &dyn Fn(&[u8; 32]) -> String, own: Option<[u8; 32]>, local: &[Summary], images: &[Digest]) -> Vec<ClusterWorkloadStatus> {
    entries
        .into_iter()
        .map(|e| {
            let s = e.spec;
            let assignments: Vec<ReplicaStatus> = e
                .replicas
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let r = i as u32;
                    let here = k.filter(|k| Some(k.0) == own).map(|_| local.iter().find(|w| w.name == replica_name(&s.name, r)));
                    let state = here.and_then(|w| match w {
                        Some(w) => Some(w.state.name().to_string()),
                        None if !images.contains(&Digest(s.image)) => Some(FETCHING_IMAGE.to_string()),
                        None => None,
                    });
                    let outdated = here.flatten().is_some_and(|w| replica_spec(&s, r).is_some_and(|d| d.digest() != w.spec));
                    ReplicaStatus { replica: r, node: k.map(|k| name_of(&k.0)), state, outdated }
                })
                .collect();
            let mut w = status_of(s, e.eligible);
            w.assignments = assignments;
            count_running(&mut w);
            w
        })
        .collect()
}

/// A desired workload's spec as the API shows it (no replica listed, none running).
fn status_of(s: WorkloadSpec, eligible: u32) -> ClusterWorkloadStatus {
    ClusterWorkloadStatus {
        image: Digest(s.image).to_string(),
        replicas: s.replicas,
        cpus: s.vcpus,
        memory_mib: s.mem_mib,
        env: s.env.iter().map(|(k, v)| alloc::format!("{k}={v}")).collect(),
        args: s.args.clone(),
        restart: restart_text(match s.restart {
            R::No => RestartPolicy::No,
            R::OnFailure { max_restarts } => RestartPolicy::OnFailure { limit: max_restarts },
            R::Always => RestartPolicy::Always,
        }),
        constraints: s.constraints.iter().map(constraint_text).collect(),
        health: s.health.as_ref().map(|h| crate::types::HealthCheck::from_spec(&workd_check(h))),
        running: 0,
        eligible_nodes: eligible,
        placeable: eligible >= s.replicas,
        assignments: Vec::new(),
        name: s.name,
    }
}

/// What a committed put did, as `POST /v1/cluster/workloads` answers it: `created`,
/// `unchanged`, or `updated` with the fields that differ, in the API's names
/// ([`catenary_cluster::put_change::Fields::NAMES`]).
pub fn change_text(c: catenary_cluster::put_change::PutChange) -> (&'static str, Vec<String>) {
    use catenary_cluster::put_change::PutChange;
    match c {
        PutChange::Created => ("created", Vec::new()),
        PutChange::Unchanged => ("unchanged", Vec::new()),
        PutChange::Updated(f) => ("updated", f.names().map(String::from).collect()),
    }
}

/// `running` from the replicas' states.
pub fn count_running(w: &mut ClusterWorkloadStatus) {
    w.running = w.assignments.iter().filter(|a| a.state.as_deref() == Some("running")).count() as u32;
}

/// Take `from`'s word (`theirs`, the answer of the node named `from`) for the replicas whose
/// state this node does not know, only for those assigned to `from` (a node knows the replicas
/// assigned to it, and nothing else); a state that is not a workload state's name is shown as
/// [`UNKNOWN_STATE`] (the text is another node's and reaches operators' terminals).
pub fn merge(mine: &mut ClusterWorkloadStatus, theirs: &ClusterWorkloadStatus, from: &str) {
    if mine.name != theirs.name {
        return;
    }
    for a in &mut mine.assignments {
        if a.state.is_some() || a.node.as_deref() != Some(from) {
            continue;
        }
        if let Some(t) = theirs.assignments.iter().find(|t| t.replica == a.replica && t.node == a.node) {
            a.state = t.state.as_deref().map(known_state);
            // (that node's word, against the desired state as it applied it)
            a.outdated = t.outdated && a.state.is_some();
        }
    }
    count_running(mine);
}

/// What a replica's state is shown as when another node does not name a workload state.
pub const UNKNOWN_STATE: &str = "unknown";

/// `s` if it names a workload state (or is [`FETCHING_IMAGE`]), else [`UNKNOWN_STATE`].
pub fn known_state(s: &str) -> String {
    State::ALL.iter().map(|k| k.name()).chain([FETCHING_IMAGE]).find(|n| *n == s).unwrap_or(UNKNOWN_STATE).to_string()
}
