//! The cluster's desired state: what should run and who belongs, as a deterministic state
//! machine that every node applies in the order the replicated log ([`crate::replica`])
//! commits.
//!
//! A [`Command`] is validated when it is applied, not only when it is proposed: every node
//! applies the same committed commands in the same order, so every node reaches the same
//! [`DesiredState`] and the same refusals. Sizes are bounded ([`Limits`]) so that a committed
//! command can never make a node allocate without limit.
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use crate::identity::NodeKey;
use crate::placement::{Constraint, NodeCapacity, WorkloadDemand};

/// What a workload should be (the API's `run` request, as the cluster keeps it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub name: String,
    /// The Catenary image's digest (sha256).
    pub image: [u8; 32],
    pub replicas: u32,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub restart: RestartPolicy,
    pub constraints: Vec<Constraint>,
    /// The health check each replica's guest init runs (`catenary_workload::spec::HealthCheck`:
    /// the API checks it before a put, and a put is refused here out of the same bounds, so no
    /// committed spec is one every node's `workd` refuses).
    pub health: Option<HealthCheck>,
}

/// A replica's health check, as the cluster keeps it (the fields of
/// `catenary_workload::spec::HealthCheck`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub cmd: Vec<String>,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    pub retries: u32,
    pub start_period_secs: u32,
}

/// The bounds of a [`HealthCheck`]: `catenary_workload::spec`'s `HEALTH_CMD_MAX`,
/// `HEALTH_SECS_MAX` and `HEALTH_RETRIES_MAX`, which `catenary_api` asserts are the same (this
/// crate does not depend on the workload crate).
pub const HEALTH_CMD_MAX: usize = 64;
pub const HEALTH_SECS_MAX: u32 = 3600;
pub const HEALTH_RETRIES_MAX: u32 = 100;

impl HealthCheck {
    /// The bounds of `catenary_workload::spec::HealthCheck::check` (argument count and the
    /// first argument; each argument's size is [`Limits::string_len`]'s). `catenary_api`'s
    /// test `the_cluster_and_workd_bound_a_health_check_alike` runs both on the same cases.
    pub fn in_bounds(&self) -> bool {
        (1..=HEALTH_CMD_MAX).contains(&self.cmd.len())
            && !self.cmd[0].is_empty()
            && (1..=HEALTH_SECS_MAX).contains(&self.interval_secs)
            && (1..=self.interval_secs).contains(&self.timeout_secs)
            && (1..=HEALTH_RETRIES_MAX).contains(&self.retries)
            && self.start_period_secs <= HEALTH_SECS_MAX
    }
}

/// The prefix of a cluster replica's `workd` name (`workd`'s `proto::CLUSTER_PREFIX`, which
/// `catenary_api` checks is the same).
pub const REPLICA_PREFIX: &str = "cl-";

/// The `workd` name of replica `r` of cluster workload `workload` (`cl-NAME-R`): one spelling
/// for `orchd`, `apid` and the scheduler's health gate, which match replicas by it.
pub fn replica_name(workload: &str, r: u32) -> String {
    alloc::format!("{REPLICA_PREFIX}{workload}-{r}")
}

/// The node memory a replica takes beyond its guest memory (`workd`'s admission:
/// `catenary_workload::admission::VM_OVERHEAD_MIB`, which `catenary_api` checks is the same).
/// The scheduler counts it with every replica ([`WorkloadSpec::replica_mem_mib`]), as the nodes
/// count it in the capacity they report (`orchd`: admission's free memory plus each held
/// replica's guest memory and overhead).
pub const REPLICA_OVERHEAD_MIB: u64 = 4;

impl WorkloadSpec {
    /// The node memory one replica takes: its guest memory plus [`REPLICA_OVERHEAD_MIB`]. What
    /// the scheduler places and weighs against a node's reported capacity, so that a node it
    /// picks also admits the replica.
    pub fn replica_mem_mib(&self) -> u64 {
        self.mem_mib.saturating_add(REPLICA_OVERHEAD_MIB)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    OnFailure { max_restarts: u32 },
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Viewer,
}

/// One change to the desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create or replace a workload (by name).
    PutWorkload(WorkloadSpec),
    RemoveWorkload(String),
    /// `catenary node add KEY`: the node may join.
    AdmitNode(NodeKey),
    RemoveNode(NodeKey),
    /// `catenary node drain KEY`: nothing is placed there any more.
    Drain(NodeKey),
    Undrain(NodeKey),
    SetOperator { key: NodeKey, role: Option<Role> },
    /// The leader's scheduler ([`crate::reconcile`]): replica `replica` of `workload` runs on
    /// `node`. Refused unless the workload has that replica, the node is admitted and not
    /// drained, and the replica is not assigned (moving is `Unassign`, then `Assign`).
    Assign { workload: String, replica: u32, node: NodeKey },
    Unassign { workload: String, replica: u32 },
    /// The leader's scheduler: the host an `Unassign` took `replica` of `workload` from has
    /// surely stopped it (it reported applying the `Unassign`, or its lease ran out), so the
    /// replica may be assigned again ([`DesiredState::releases`]).
    Released { workload: String, replica: u32 },
    /// `catenary node label NODE k=v k-`: set (`Some`) or remove (`None`) labels of an admitted
    /// node, over what the cluster file's `node` line gives it ([`DesiredState::labels`]). At
    /// most [`LABEL_CHANGES_MAX`] changes, each key once, keys and values as
    /// [`label_key_ok`]/[`label_value_ok`]; refused whole otherwise.
    SetLabels { node: NodeKey, changes: Vec<(String, Option<String>)> },
}

/// Label changes in one [`Command::SetLabels`].
pub const LABEL_CHANGES_MAX: usize = 16;
/// Label entries (set or removed) the state keeps per node over its cluster-file labels.
pub const NODE_LABELS_MAX: usize = 32;

/// A label key: 1–63 of `a-z 0-9 . _ - /` (the cluster file's `node` line rules).
pub fn label_key_ok(k: &str) -> bool {
    !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
}

/// A label value: 0–63 of `A-Z a-z 0-9 . _ -`.
pub fn label_value_ok(v: &str) -> bool {
    v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Labels by node key.
pub type Labels = BTreeMap<NodeKey, BTreeMap<String, String>>;

/// A replica taken off its host by `Unassign` whose host may still run it: until the leader
/// knows the host stopped it (`Command::Released`), it is not assigned anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub host: NodeKey,
    /// The state's [`DesiredState::applied`] count right after the `Unassign`: a host whose
    /// state has applied this many commands has applied the `Unassign` and stopped the replica.
    pub at: u64,
}

/// Why an applied command changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Empty or too long a name, zero replicas/vCPUs/memory, too many env/args entries.
    Invalid,
    TooMany,
    NoSuchWorkload,
    NoSuchNode,
    /// A node's key cannot also be an operator's, nor the reverse.
    KeyInUse,
    /// `Assign` of a replica that is already assigned, or to a drained node.
    Conflict,
    /// `RemoveNode` that would leave the admitted voters less than a majority of the Raft
    /// configuration in force at its log index ([`Voters`]).
    WouldLoseQuorum,
}

/// The Raft configuration in force at a command's log index, each voter as its member's key
/// (`None`: an id no member has, which counts as unreachable): what [`Command::RemoveNode`]'s
/// quorum guard checks. `new` is empty unless a joint change is in progress (then both halves
/// must keep a majority). The replica derives it from its log ([`crate::replica`]), so every
/// node passes the same for the same entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Voters {
    pub old: Vec<Option<NodeKey>>,
    pub new: Vec<Option<NodeKey>>,
}

/// Bounds on what the state can hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub workloads: usize,
    pub nodes: usize,
    pub operators: usize,
    pub name_len: usize,
    pub replicas: u32,
    pub env_and_args: usize,
    pub string_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { workloads: 10_000, nodes: 1_024, operators: 256, name_len: 63, replicas: 64, env_and_args: 256, string_len: 4_096 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub workloads: BTreeMap<String, WorkloadSpec>,
    pub nodes: BTreeSet<NodeKey>,
    /// Every key ever admitted, in the order it was first admitted (a removed key keeps its
    /// place): the same on every node, so it numbers the members admitted at run time
    /// ([`crate::orch`]) identically everywhere.
    pub node_order: Vec<NodeKey>,
    pub drained: BTreeSet<NodeKey>,
    pub operators: BTreeMap<NodeKey, Role>,
    /// Which node runs each replica (workload name, replica index).
    pub assignments: BTreeMap<(String, u32), NodeKey>,
    /// Replicas unassigned whose former host may still run them (see [`Release`]).
    pub releases: BTreeMap<(String, u32), Release>,
    /// Label changes committed per node (`catenary node label`): `Some` sets, `None` removes,
    /// over the node's cluster-file labels ([`DesiredState::effective_labels`]).
    pub labels: BTreeMap<NodeKey, BTreeMap<String, Option<String>>>,
    /// Commands applied (refused ones included): the state's version.
    pub applied: u64,
}

impl DesiredState {
    /// Apply one committed command. Deterministic: the result depends only on the state and
    /// the command.
    /// Without a configuration (a state used outside a replica) every key ever admitted
    /// counts as a voter ([`DesiredState::apply_at`]).
    pub fn apply(&mut self, cmd: &Command, limits: &Limits) -> Result<(), Refused> {
        self.apply_at(cmd, limits, None)
    }

    /// [`DesiredState::apply`] with the Raft voters in force at the command's log index (the
    /// quorum guard of `RemoveNode`).
    pub fn apply_at(&mut self, cmd: &Command, limits: &Limits, voters: Option<&Voters>) -> Result<(), Refused> {
        self.applied += 1;
        match cmd {
            Command::PutWorkload(spec) => {
                validate(spec, limits)?;
                if !self.workloads.contains_key(&spec.name) && self.workloads.len() >= limits.workloads {
                    return Err(Refused::TooMany);
                }
                self.workloads.insert(spec.name.clone(), spec.clone());
            }
            Command::RemoveWorkload(name) => {
                // Its assignments stay until the scheduler unassigns them, which waits out the
                // host's lease if the host does not answer (a cut-off host may still run it).
                self.workloads.remove(name).ok_or(Refused::NoSuchWorkload)?;
            }
            Command::AdmitNode(key) => {
                if self.operators.contains_key(key) {
                    return Err(Refused::KeyInUse);
                }
                let known = self.node_order.contains(key);
                if (!self.nodes.contains(key) && self.nodes.len() >= limits.nodes) || (!known && self.node_order.len() >= limits.nodes) {
                    return Err(Refused::TooMany);
                }
                if !known {
                    self.node_order.push(*key);
                }
                self.nodes.insert(*key);
            }
            Command::RemoveNode(key) => {
                if !self.nodes.contains(key) {
                    return Err(Refused::NoSuchNode);
                }
                // Every node's fabric drops a removed node as soon as it applies this, while
                // its Raft voter leaves the configuration only later (the leader's joint
                // change, crate::orch): until then it counts in every majority and cannot
                // vote. So the admitted voters left must be a majority of each half of the
                // configuration in force here (the joint change that takes the voter out then
                // needs only them; removed voters not yet taken out count as lost). Otherwise
                // quorum would be lost for good (`node add` could not commit to undo it).
                if !self.keeps_quorum_without(key, voters) {
                    return Err(Refused::WouldLoseQuorum);
                }
                self.nodes.remove(key);
                self.drained.remove(key);
                self.labels.remove(key);
                // Assignments on it are moved by the scheduler, after its lease if it is down.
            }
            Command::Drain(key) => {
                if !self.nodes.contains(key) {
                    return Err(Refused::NoSuchNode);
                }
                self.drained.insert(*key);
            }
            Command::Undrain(key) => {
                if !self.drained.remove(key) {
                    return Err(Refused::NoSuchNode);
                }
            }
            Command::SetOperator { key, role } => match role {
                Some(r) => {
                    if self.nodes.contains(key) {
                        return Err(Refused::KeyInUse);
                    }
                    if !self.operators.contains_key(key) && self.operators.len() >= limits.operators {
                        return Err(Refused::TooMany);
                    }
                    self.operators.insert(*key, *r);
                }
                None => {
                    self.operators.remove(key);
                }
            },
            Command::Assign { workload, replica, node } => {
                let w = self.workloads.get(workload).ok_or(Refused::NoSuchWorkload)?;
                if *replica >= w.replicas {
                    return Err(Refused::Invalid);
                }
                if !self.nodes.contains(node) {
                    return Err(Refused::NoSuchNode);
                }
                let key = (workload.clone(), *replica);
                // A replica still being released may still run on its old host.
                if self.drained.contains(node) || self.assignments.contains_key(&key) || self.releases.contains_key(&key) {
                    return Err(Refused::Conflict);
                }
                self.assignments.insert(key, *node);
            }
            Command::Unassign { workload, replica } => {
                let key = (workload.clone(), *replica);
                let host = self.assignments.remove(&key).ok_or(Refused::NoSuchWorkload)?;
                self.releases.insert(key, Release { host, at: self.applied });
            }
            Command::Released { workload, replica } => {
                self.releases.remove(&(workload.clone(), *replica)).ok_or(Refused::NoSuchWorkload)?;
            }
            Command::SetLabels { node, changes } => {
                if !self.nodes.contains(node) {
                    return Err(Refused::NoSuchNode);
                }
                if !labels_valid(changes) {
                    return Err(Refused::Invalid);
                }
                let mut l = self.labels.get(node).cloned().unwrap_or_default();
                for (k, v) in changes {
                    l.insert(k.clone(), v.clone());
                }
                if l.len() > NODE_LABELS_MAX {
                    return Err(Refused::TooMany);
                }
                self.labels.insert(*node, l);
            }
        }
        Ok(())
    }

    /// Whether the admitted voters other than `gone` are a majority of every half of `voters`
    /// (without a configuration: of every key ever admitted, `node_order`).
    fn keeps_quorum_without(&self, gone: &NodeKey, voters: Option<&Voters>) -> bool {
        let left = |k: &NodeKey| k != gone && self.nodes.contains(k);
        match voters {
            None => self.node_order.iter().filter(|k| left(k)).count() * 2 > self.node_order.len(),
            Some(v) if v.old.is_empty() && v.new.is_empty() => self.keeps_quorum_without(gone, None),
            Some(v) => [&v.old, &v.new].into_iter().filter(|h| !h.is_empty()).all(|h| h.iter().filter(|k| k.as_ref().is_some_and(left)).count() * 2 > h.len()),
        }
    }

    /// Whether the state is within `limits` (a snapshot received from a peer is checked).
    pub fn within(&self, l: &Limits) -> bool {
        let replicas = (l.workloads as u64).saturating_mul(u64::from(l.replicas));
        self.workloads.len() <= l.workloads
            && self.nodes.len() <= l.nodes
            && self.node_order.len() <= l.nodes
            && self.nodes.iter().all(|k| self.node_order.contains(k))
            && self.operators.len() <= l.operators
            && self.drained.len() <= l.nodes
            && self.assignments.len() as u64 <= replicas
            && self.releases.len() as u64 <= replicas.saturating_mul(2)
            && self.workloads.values().all(|w| validate(w, l).is_ok())
            && self.labels.len() <= l.nodes
            && self.labels.iter().all(|(k, m)| self.nodes.contains(k) && m.len() <= NODE_LABELS_MAX && m.iter().all(|(k, v)| label_key_ok(k) && v.as_deref().is_none_or(label_value_ok)))
    }

    /// Each node's labels: its cluster-file labels (`file`) with the committed changes
    /// ([`Command::SetLabels`]) over them. What the scheduler's constraints and the listing see.
    pub fn effective_labels(&self, file: &Labels) -> Labels {
        let mut out = file.clone();
        for (node, changes) in &self.labels {
            let l = out.entry(*node).or_default();
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        l.insert(k.clone(), v.clone());
                    }
                    None => {
                        l.remove(k);
                    }
                }
            }
        }
        out
    }

    /// The replicas assigned to `node`.
    pub fn assigned_to(&self, node: NodeKey) -> impl Iterator<Item = &(String, u32)> + '_ {
        self.assignments.iter().filter(move |(_, n)| **n == node).map(|(k, _)| k)
    }

    /// What the scheduler ([`crate::placement::place`]) is given: every workload, with the
    /// drained nodes excluded by constraint (image sizes unknown here: 0; the leader's
    /// scheduler fills them from the nodes' reports, `crate::reconcile`).
    pub fn demands(&self) -> Vec<WorkloadDemand> {
        self.workloads
            .values()
            .map(|w| {
                let mut constraints = w.constraints.clone();
                constraints.extend(self.drained.iter().map(|k| Constraint::NotOnNode(*k)));
                WorkloadDemand { name: w.name.clone(), replicas: w.replicas, vcpus: w.vcpus, mem_mib: w.replica_mem_mib(), constraints, image: w.image, image_mib: 0 }
            })
            .collect()
    }
}

/// Heap bytes a string's buffer takes, allocator rounding and bookkeeping included (an
/// estimate that `tests/heap.rs` checks is never below what the allocator was asked for).
fn string_heap(s: &str) -> u64 {
    if s.is_empty() {
        0
    } else {
        (s.len() as u64).div_ceil(16) * 16 + 16
    }
}

fn vec_heap<T>(v: &[T]) -> u64 {
    if v.is_empty() {
        0
    } else {
        core::mem::size_of_val(v) as u64 + 16
    }
}

impl WorkloadSpec {
    /// Heap bytes this spec's strings and lists take (not the struct itself).
    pub fn heap_bytes(&self) -> u64 {
        string_heap(&self.name)
            + vec_heap(&self.env)
            + self.env.iter().map(|(k, v)| string_heap(k) + string_heap(v)).sum::<u64>()
            + vec_heap(&self.args)
            + self.args.iter().map(|a| string_heap(a)).sum::<u64>()
            + vec_heap(&self.constraints)
            + self
                .constraints
                .iter()
                .map(|c| match c {
                    Constraint::LabelEquals { key, value } | Constraint::LabelNotEquals { key, value } => string_heap(key) + string_heap(value),
                    Constraint::OnNodes(k) => vec_heap(k),
                    Constraint::NotOnNode(_) => 0,
                })
                .sum::<u64>()
    }
}

/// One B-tree entry of `K` and `V`: the pair, times 2 for the nodes' slack (a node is at least
/// half full), plus the node headers' share.
fn entry_heap<K, V>() -> u64 {
    2 * (core::mem::size_of::<K>() + core::mem::size_of::<V>()) as u64 + 16
}

impl Command {
    /// Heap bytes this command takes as a log entry of [`crate::replica::Storage`] (the
    /// commands map's entry and the command's own strings): what the replica's
    /// `max_log_bytes` counts.
    pub fn heap_bytes(&self) -> u64 {
        let inner = match self {
            Command::PutWorkload(s) => s.heap_bytes(),
            Command::RemoveWorkload(n) | Command::Assign { workload: n, .. } | Command::Unassign { workload: n, .. } | Command::Released { workload: n, .. } => string_heap(n),
            Command::SetLabels { changes, .. } => vec_heap(changes) + changes.iter().map(|(k, v)| string_heap(k) + v.as_deref().map_or(0, string_heap)).sum::<u64>(),
            _ => 0,
        };
        entry_heap::<(u64, u64), Command>() + inner
    }
}

impl DesiredState {
    /// Heap bytes the state takes (estimate, as [`Command::heap_bytes`]): what a write's
    /// room is checked against besides the log (crate::orch).
    pub fn heap_bytes(&self) -> u64 {
        let workloads: u64 = self.workloads.iter().map(|(k, w)| entry_heap::<String, WorkloadSpec>() + string_heap(k) + w.heap_bytes()).sum();
        let assigned: u64 = self.assignments.keys().map(|(w, _)| entry_heap::<(String, u32), NodeKey>() + string_heap(w)).sum();
        let released: u64 = self.releases.keys().map(|(w, _)| entry_heap::<(String, u32), Release>() + string_heap(w)).sum();
        let keys = (self.nodes.len() + self.drained.len()) as u64 * entry_heap::<NodeKey, ()>() + self.operators.len() as u64 * entry_heap::<NodeKey, Role>();
        let labels: u64 = self
            .labels
            .values()
            .map(|m| entry_heap::<NodeKey, BTreeMap<String, Option<String>>>() + m.iter().map(|(k, v)| entry_heap::<String, Option<String>>() + string_heap(k) + v.as_deref().map_or(0, string_heap)).sum::<u64>())
            .sum();
        workloads + assigned + released + keys + labels
    }

    /// How many admitted, undrained nodes satisfy every constraint of `spec`, given each
    /// node's labels (a node not in `labels` has none). Fewer than `spec.replicas`: the
    /// scheduler cannot place it whole, whatever the room (the listing says "unplaceable").
    pub fn eligible_nodes(&self, spec: &WorkloadSpec, labels: &BTreeMap<NodeKey, BTreeMap<String, String>>) -> u32 {
        self.nodes
            .iter()
            .filter(|k| !self.drained.contains(k))
            .filter(|k| {
                let node = NodeCapacity { key: **k, free_vcpus: 0, free_mem_mib: 0, labels: labels.get(k).cloned().unwrap_or_default(), images: Vec::new(), image_mib: Vec::new(), store_free_mib: crate::placement::STORE_UNKNOWN };
                spec.constraints.iter().all(|c| c.allows(&node))
            })
            .count() as u32
    }
}

fn labels_valid(changes: &[(String, Option<String>)]) -> bool {
    !changes.is_empty()
        && changes.len() <= LABEL_CHANGES_MAX
        && changes.iter().all(|(k, v)| label_key_ok(k) && v.as_deref().is_none_or(label_value_ok))
        && changes.iter().enumerate().all(|(i, (k, _))| changes[..i].iter().all(|(o, _)| o != k))
}

fn validate(spec: &WorkloadSpec, l: &Limits) -> Result<(), Refused> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= l.name_len
        && spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let sizes_ok = spec.replicas >= 1 && spec.replicas <= l.replicas && spec.vcpus >= 1 && spec.mem_mib >= 1;
    let health_cmd = spec.health.as_ref().map_or(&[][..], |h| &h.cmd[..]);
    let health_ok = spec.health.as_ref().is_none_or(HealthCheck::in_bounds);
    let strings_ok = spec.env.len() + spec.args.len() + health_cmd.len() <= l.env_and_args
        && spec.env.iter().all(|(k, v)| !k.is_empty() && k.len() + v.len() <= l.string_len)
        && spec.args.iter().chain(health_cmd).all(|a| a.len() <= l.string_len)
        && health_ok;
    if name_ok && sizes_ok && strings_ok {
        Ok(())
    } else {
        Err(Refused::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    pub(crate) fn spec(name: &str) -> WorkloadSpec {
        WorkloadSpec {
            health: None,
            name: name.to_string(),
            image: [7; 32],
            replicas: 1,
            vcpus: 1,
            mem_mib: 64,
            env: vec![("K".to_string(), "V".to_string())],
            args: vec![],
            restart: RestartPolicy::No,
            constraints: vec![],
        }
    }

    #[test]
    fn apply_validates_and_bounds() {
        let l = Limits { workloads: 2, ..Limits::default() };
        let mut s = DesiredState::default();
        assert_eq!(s.apply(&Command::PutWorkload(spec("a")), &l), Ok(()));
        assert_eq!(s.apply(&Command::PutWorkload(spec("b")), &l), Ok(()));
        assert_eq!(s.apply(&Command::PutWorkload(spec("c")), &l), Err(Refused::TooMany));
        // Replacing an existing one is not growth.
        assert_eq!(s.apply(&Command::PutWorkload(WorkloadSpec { replicas: 3, ..spec("a") }), &l), Ok(()));
        assert_eq!(s.apply(&Command::PutWorkload(WorkloadSpec { replicas: 0, ..spec("d") }), &l), Err(Refused::Invalid));
        assert_eq!(s.apply(&Command::PutWorkload(spec("../x")), &l), Err(Refused::Invalid));
        // a health check out of the workload service's bounds is refused, one in them taken
        let check = HealthCheck { cmd: vec!["true".to_string()], interval_secs: 2, timeout_secs: 2, retries: 3, start_period_secs: 0 };
        let bad: [fn(&mut HealthCheck); 6] = [|h| h.cmd.clear(), |h| h.cmd[0].clear(), |h| h.interval_secs = 0, |h| h.timeout_secs = 3, |h| h.retries = 101, |h| h.start_period_secs = 3601];
        for f in bad {
            let mut h = check.clone();
            f(&mut h);
            assert_eq!(s.apply(&Command::PutWorkload(WorkloadSpec { health: Some(h.clone()), ..spec("h") }), &l), Err(Refused::Invalid), "{h:?}");
        }
        assert_eq!(s.apply(&Command::PutWorkload(WorkloadSpec { health: Some(check), replicas: 3, ..spec("a") }), &l), Ok(()));
        assert_eq!(s.apply(&Command::RemoveWorkload("zz".to_string()), &l), Err(Refused::NoSuchWorkload));
        assert_eq!(s.workloads["a"].replicas, 3);
        assert_eq!(s.applied, 14, "every command counts, refused or not");
        let k = NodeKey([1; 32]);
        assert_eq!(s.apply(&Command::AdmitNode(k), &l), Ok(()));
        assert_eq!(s.apply(&Command::SetOperator { key: k, role: Some(Role::Admin) }, &l), Err(Refused::KeyInUse));
        assert_eq!(s.apply(&Command::Drain(k), &l), Ok(()));
        assert!(s.demands().iter().all(|d| d.constraints.contains(&Constraint::NotOnNode(k))));
    }

    /// `RemoveNode` keeps a majority of the voters (every node ever admitted) admitted: in a
    /// three-node cluster one removal is taken, a second refused (the two removed would still
    /// be voters, unreachable over the fabric: no quorum again), and so is the last node.
    #[test]
    fn remove_node_keeps_a_majority_of_the_voters() {
        let l = Limits::default();
        let mut s = DesiredState::default();
        let keys = [NodeKey([1; 32]), NodeKey([2; 32]), NodeKey([3; 32])];
        for k in &keys {
            s.apply(&Command::AdmitNode(*k), &l).unwrap();
        }
        assert_eq!(s.apply(&Command::RemoveNode(keys[0]), &l), Ok(()));
        assert_eq!(s.apply(&Command::RemoveNode(keys[0]), &l), Err(Refused::NoSuchNode));
        assert_eq!(s.apply(&Command::RemoveNode(keys[1]), &l), Err(Refused::WouldLoseQuorum));
        assert!(s.nodes.contains(&keys[1]) && s.nodes.contains(&keys[2]));
        // A fourth node admitted: four voters, three admitted; one more removal leaves two of
        // four, not a majority.
        s.apply(&Command::AdmitNode(NodeKey([4; 32])), &l).unwrap();
        assert_eq!(s.apply(&Command::RemoveNode(keys[1]), &l), Err(Refused::WouldLoseQuorum));
        // A one-node cluster cannot remove its only node.
        let mut one = DesiredState::default();
        one.apply(&Command::AdmitNode(keys[0]), &l).unwrap();
        assert_eq!(one.apply(&Command::RemoveNode(keys[0]), &l), Err(Refused::WouldLoseQuorum));
    }

    /// With the Raft configuration at the removal's index ([`Voters`]), the guard counts the
    /// voters that remain: five voters, two removed (the first one's voter not yet taken out,
    /// then taken out), a third removal is refused while the two removed still count as voters
    /// and taken once they are out (two of three); from two voters none can go. During a joint
    /// change both halves keep a majority; an id no member has counts as lost.
    #[test]
    fn remove_node_keeps_a_majority_of_the_current_voters() {
        let l = Limits::default();
        let k: Vec<NodeKey> = (1..=5u8).map(|i| NodeKey([i; 32])).collect();
        let mut s = DesiredState::default();
        for key in &k {
            s.apply(&Command::AdmitNode(*key), &l).unwrap();
        }
        let v = |old: &[usize], new: &[usize]| Voters { old: old.iter().map(|i| Some(k[*i])).collect(), new: new.iter().map(|i| Some(k[*i])).collect() };
        let all = v(&[0, 1, 2, 3, 4], &[]);
        assert_eq!(s.apply_at(&Command::RemoveNode(k[0]), &l, Some(&all)), Ok(()));
        // k0's voter still in: 3 of 5 admitted after this one.
        assert_eq!(s.apply_at(&Command::RemoveNode(k[1]), &l, Some(&all)), Ok(()));
        assert_eq!(s.apply_at(&Command::RemoveNode(k[2]), &l, Some(&all)), Err(Refused::WouldLoseQuorum));
        // A joint change taking k0 out: the old half is still 5 voters.
        assert_eq!(s.apply_at(&Command::RemoveNode(k[2]), &l, Some(&v(&[0, 1, 2, 3, 4], &[1, 2, 3, 4]))), Err(Refused::WouldLoseQuorum));
        let three = v(&[2, 3, 4], &[]);
        assert_eq!(s.apply_at(&Command::RemoveNode(k[2]), &l, Some(&three)), Ok(()));
        assert_eq!(s.apply_at(&Command::RemoveNode(k[3]), &l, Some(&v(&[3, 4], &[]))), Err(Refused::WouldLoseQuorum));
        assert_eq!(s.apply_at(&Command::RemoveNode(k[3]), &l, Some(&three)), Err(Refused::WouldLoseQuorum));
        assert_eq!(s.nodes.len(), 2);
        // An unknown voter id counts as lost: {k3, k4, ?}: removing k3 leaves 1 of 3.
        let unknown = Voters { old: vec![Some(k[3]), Some(k[4]), None], new: vec![] };
        assert_eq!(s.apply_at(&Command::RemoveNode(k[3]), &l, Some(&unknown)), Err(Refused::WouldLoseQuorum));
        // Without a configuration, every key ever admitted counts (5 here).
        let mut t = s.clone();
        t.apply(&Command::AdmitNode(k[0]), &l).unwrap();
        assert_eq!(t.apply(&Command::RemoveNode(k[3]), &l), Err(Refused::WouldLoseQuorum));
    }

    /// `SetLabels`: only for an admitted node, refused whole when a key or value is malformed,
    /// a key is given twice, there are no or too many changes, or the node would keep more
    /// than `NODE_LABELS_MAX`; the effective labels are the file's with the changes over them;
    /// removing the node forgets them.
    #[test]
    fn set_labels_validates_bounds_and_overlays_the_file() {
        let l = Limits::default();
        let mut s = DesiredState::default();
        let (k, other) = (NodeKey([1; 32]), NodeKey([2; 32]));
        let set = |key: &str, v: Option<&str>| Command::SetLabels { node: k, changes: vec![(key.to_string(), v.map(|v| v.to_string()))] };
        assert_eq!(s.apply(&set("zone", Some("b")), &l), Err(Refused::NoSuchNode));
        s.apply(&Command::AdmitNode(k), &l).unwrap();
        for bad in [set("", Some("x")), set("Zone", Some("x")), set("zone", Some("a b")), set(&"k".repeat(64), Some("x")), set("zone", Some(&"v".repeat(64))), Command::SetLabels { node: k, changes: vec![] }] {
            assert_eq!(s.apply(&bad, &l), Err(Refused::Invalid), "{bad:?}");
        }
        let twice = Command::SetLabels { node: k, changes: vec![("a".into(), Some("1".into())), ("a".into(), None)] };
        assert_eq!(s.apply(&twice, &l), Err(Refused::Invalid));
        let many = Command::SetLabels { node: k, changes: (0..=LABEL_CHANGES_MAX).map(|i| (alloc::format!("k{i}"), Some("v".into()))).collect() };
        assert_eq!(s.apply(&many, &l), Err(Refused::Invalid));
        assert!(s.labels.is_empty(), "nothing kept of a refused change");
        assert_eq!(s.apply(&set("zone", Some("b")), &l), Ok(()));
        assert_eq!(s.apply(&set("disk", None), &l), Ok(()));
        assert_eq!(s.apply(&set("empty", Some("")), &l), Ok(()));
        let file: Labels = [(k, [("zone".to_string(), "a".to_string()), ("disk".to_string(), "ssd".to_string())].into()), (other, [("zone".to_string(), "c".to_string())].into())].into();
        let e = s.effective_labels(&file);
        assert_eq!(e[&k], [("zone".to_string(), "b".to_string()), ("empty".to_string(), String::new())].into());
        assert_eq!(e[&other], file[&other]);
        assert!(s.within(&l));
        // At most NODE_LABELS_MAX entries per node, over several commands.
        for j in 0..3 {
            let c = Command::SetLabels { node: k, changes: (0..LABEL_CHANGES_MAX).map(|i| (alloc::format!("x{j}-{i}"), Some("v".into()))).collect() };
            let r = s.apply(&c, &l);
            assert_eq!(r.is_ok(), 3 + (j + 1) * LABEL_CHANGES_MAX <= NODE_LABELS_MAX, "{j}: {r:?}");
        }
        assert!(s.labels[&k].len() <= NODE_LABELS_MAX);
        assert!(s.heap_bytes() > 0);
        // Two more nodes, so removing one keeps a majority of the voters admitted.
        for n in [3u8, 4] {
            s.apply(&Command::AdmitNode(NodeKey([n; 32])), &l).unwrap();
        }
        s.apply(&Command::RemoveNode(k), &l).unwrap();
        assert!(s.labels.is_empty());
    }
}
