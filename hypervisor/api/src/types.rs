//! The JSON the API speaks: request bodies (unknown fields refused) and answers (every field
//! always present, `null` when empty). Each type is a schema of docs/api/openapi.json under the
//! same name; the test `openapi_matches_the_implementation` holds the two together.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use catenary_workload::logring::{LogChunk, Stream};
use catenary_workload::status::{Status, Summary};
use catenary_workload::store::ImageInfo;
use catenary_workload::{ExitStatus, RestartPolicy};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// What a request saw of a node: [`Node::state`] on the wire (docs/api.md "STATE").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// The node asked, or one that answered this request's gather, and not `dead` in the
    /// membership.
    Up,
    /// Did not answer in time, or the membership declared it dead.
    Unreachable,
    /// A hello, not admitted.
    Pending,
    /// The cluster removed it.
    Removed,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Unreachable => "unreachable",
            NodeState::Pending => "pending",
            NodeState::Removed => "removed",
        }
    }

    /// Whether `state` (a [`Node::state`]) is this one.
    pub fn is(self, state: &str) -> bool {
        state == self.name()
    }
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Its fabric public key (64 hex).
    pub public_key: String,
    /// Its fabric /128.
    pub address: String,
    /// What this request saw (docs/api.md "STATE"): `up` (the node asked, or one that
    /// answered this request's gather, and not `dead` in the membership), `unreachable` (did
    /// not answer in time, or the membership declared it dead), `pending` (a hello, not
    /// admitted), `removed` (the cluster removed it): a [`NodeState`]'s name.
    pub state: String,
    /// Resources, when known (this node's own; `null` for a peer not asked).
    pub cpus: Option<u32>,
    pub memory_total_mib: Option<u64>,
    pub memory_free_mib: Option<u64>,
    /// Guest memory (plus overhead) committed to its workloads.
    pub memory_committed_mib: Option<u64>,
    pub workloads: Option<u32>,
    /// Its image store: room for one more image (MiB: the quota's rest, at most the node's
    /// free memory; 0 with a full index) and the images its index holds (boot images too). What the cluster's scheduler
    /// is told: a replica goes to a node without its image only if the image fits there.
    #[serde(default)]
    pub store_free_mib: Option<u64>,
    #[serde(default)]
    pub images: Option<u32>,
    /// Its membership state as this node's membership service (`memberd`) holds it: `alive`,
    /// `suspect`, `dead`, `left`; `null` when the service did not answer or does not know it.
    #[serde(default)]
    pub membership: Option<String>,
    /// `generation << 16 | SWIM incarnation` (grows on every refuted suspicion and rejoin).
    #[serde(default)]
    pub incarnation: Option<u64>,
    /// A pending node's NIC MAC, as its hello said (`null` otherwise).
    #[serde(default)]
    pub mac: Option<String>,
    /// Its labels as placement constraints see them: the cluster file's `node` line with the
    /// committed `catenary node label` changes over it (`null`: the orchestration service did
    /// not answer, or a pending node).
    #[serde(default)]
    pub labels: Option<alloc::collections::BTreeMap<String, String>>,
}

/// `POST /v1/cluster/nodes/{node}/labels` (admin): labels to set and to remove on a node,
/// committed to the desired state; the answer is what was committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLabels {
    #[serde(default)]
    pub set: alloc::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /v1/nodes` (admin): admit a node's fabric key into membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAdd {
    /// The node's fabric public key (64 hex).
    pub public_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub digest: String,
    pub rootfs: String,
    pub rootfs_size: u64,
    pub config: String,
    pub config_size: u64,
    /// The node whose store holds it, in an answer gathered or forwarded from the cluster's
    /// nodes (`null`: the node that answered; a removal from several nodes names them all,
    /// joined by `,`).
    #[serde(default)]
    pub node: Option<String>,
}

impl From<&ImageInfo> for Image {
    fn from(i: &ImageInfo) -> Image {
        Image { digest: i.digest.to_string(), rootfs: i.rootfs.to_string(), rootfs_size: i.rootfs_size, config: i.config.to_string(), config_size: i.config_size, node: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// Start pushing an image: its digest and its `image.json`, byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadCreate {
    pub image: String,
    pub manifest: String,
}

/// An image push in progress (or an image already there: `present`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Its id in `/v1/images/uploads/{id}` (0 when the image is `present`).
    pub id: u32,
    pub image: String,
    /// Bytes of the stream: config.json then rootfs.squashfs.
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u32,
    /// Chunks not received yet (what a resumed push sends).
    pub missing: Vec<u32>,
    /// The node already has the image: nothing to send.
    pub present: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Unique on the node; made from the image when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// `sha256:…` of an image in the node's store.
    pub image: String,
    #[serde(default)]
    pub cpus: Option<u8>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Replaces the image's cmd.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `no` (default), `always`, `on-failure` or `on-failure:N`.
    #[serde(default)]
    pub restart: Option<String>,
    /// A network device with its own /128 (default true; false: `--net none`).
    #[serde(default)]
    pub net: Option<bool>,
    /// `POST /v1/cluster/workloads` only: on how many nodes it runs (1..=64, default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// `POST /v1/cluster/workloads` only: placement constraints on the nodes' labels,
    /// `KEY=VALUE` or `KEY!=VALUE` (at most 16).
    #[serde(default)]
    pub constraints: Option<Vec<String>>,
    /// A command the guest runs to tell whether the workload is healthy (none: not checked).
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

/// A workload's health check (docs/workloads.md "Health check"): `cmd` runs inside the
/// microVM as the workload's user, in its environment, every `interval_secs` (default 10);
/// exit 0 within `timeout_secs` (default 5, at most the interval) passes. The first pass makes
/// the workload `healthy`; `retries` (default 3) failures in a row, not counting those in the
/// first `start_period_secs` (default 0), kill it (`how` = `unhealthy`), and its restart policy
/// applies. Answers give every field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub interval_secs: Option<u32>,
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period_secs: Option<u32>,
}

pub const HEALTH_INTERVAL_DEFAULT_SECS: u32 = 10;
pub const HEALTH_TIMEOUT_DEFAULT_SECS: u32 = 5;
pub const HEALTH_RETRIES_DEFAULT: u32 = 3;

impl HealthCheck {
    /// With the defaults filled in (the workload service checks the bounds).
    pub fn to_spec(&self) -> catenary_workload::spec::HealthCheck {
        let interval_secs = self.interval_secs.unwrap_or(HEALTH_INTERVAL_DEFAULT_SECS);
        catenary_workload::spec::HealthCheck {
            cmd: self.cmd.clone(),
            interval_secs,
            timeout_secs: self.timeout_secs.unwrap_or(HEALTH_TIMEOUT_DEFAULT_SECS.min(interval_secs)),
            retries: self.retries.unwrap_or(HEALTH_RETRIES_DEFAULT),
            start_period_secs: self.start_period_secs.unwrap_or(0),
        }
    }

    /// Every field, as answers give it.
    pub fn from_spec(h: &catenary_workload::spec::HealthCheck) -> HealthCheck {
        HealthCheck { cmd: h.cmd.clone(), interval_secs: Some(h.interval_secs), timeout_secs: Some(h.timeout_secs), retries: Some(h.retries), start_period_secs: Some(h.start_period_secs) }
    }
}

/// `POST /v1/cluster/nodes/{node}/drain`: the node (name) the cluster's scheduler takes
/// every replica off (committed to the desired state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub name: String,
    pub drained: bool,
}

/// A workload of the cluster's replicated desired state (docs/orchestration.md): what
/// `POST /v1/cluster/workloads` committed, or what `DELETE` removed (replicas 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterWorkload {
    pub name: String,
    pub replicas: u32,
    /// What a put did to the committed desired state, as the cluster's log applied it (the
    /// same on every node, whatever this node's state held when the put came in): `created`,
    /// `updated` (see `changed`; a change of what the replicas run replaces the running ones
    /// one at a time, docs/orchestration.md "A workload's spec changes") or `unchanged`.
    /// `null` on a removal, or when the node's `orchd` cannot say (it predates the answer, or
    /// the put is no longer among the 256 latest it kept).
    #[serde(default)]
    pub change: Option<String>,
    /// The fields an update changed (`image`, `replicas`, `cpus`, `memory_mib`, `env`, `args`,
    /// `restart`, `constraints`, `health`).
    #[serde(default)]
    pub changed: Vec<String>,
}

/// `GET /v1/cluster/workloads`: the committed desired state (docs/orchestration.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterWorkloadList {
    pub workloads: Vec<ClusterWorkloadStatus>,
    /// Workloads in the desired state (more than listed when the list was cut).
    pub total: u32,
}

/// A cluster workload: its spec, where each replica is assigned and whether it runs there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterWorkloadStatus {
    pub name: String,
    pub image: String,
    pub replicas: u32,
    pub cpus: u32,
    pub memory_mib: u64,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub args: Vec<String>,
    pub restart: String,
    /// `KEY=VALUE` / `KEY!=VALUE` on the nodes' labels.
    pub constraints: Vec<String>,
    /// Its replicas' health check (`null`: none).
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Replicas whose node reports them `running`.
    pub running: u32,
    /// Nodes (admitted, not drained) whose labels meet every constraint.
    pub eligible_nodes: u32,
    /// False when fewer nodes meet the constraints than there are replicas: accepted, but
    /// nothing of it is placed until the nodes' labels change.
    pub placeable: bool,
    pub assignments: Vec<ReplicaStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub replica: u32,
    /// The node it is assigned to (`null`: not placed).
    pub node: Option<String>,
    /// Its state in that node's workload service; `fetching-image` while the node's store lacks
    /// its image and the node copies it (not counted in `running`); `null`: not there yet, or
    /// the node did not answer.
    pub state: Option<String>,
    /// It runs a spec other than the desired one (the workload was updated): it is replaced on
    /// its turn (one at a time, as the others run healthily), or kept where the new spec does
    /// not fit (docs/orchestration.md "A workload's
    /// spec changes"). False when not known.
    #[serde(default)]
    pub outdated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[serde(default)]
    pub grace_ms: Option<u32>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// `code`, `signal`, `oom_killed`, `init_failed`, `crashed`, `powered_off`, `create_failed`,
    /// `thrash_killed`, `unhealthy`.
    pub how: String,
    /// The exit code or signal number, when there is one.
    pub status: Option<i32>,
    pub text: String,
}

impl From<ExitStatus> for Exit {
    fn from(e: ExitStatus) -> Exit {
        let (how, status) = match e {
            ExitStatus::Code(c) => ("code", Some(c)),
            ExitStatus::Signal(s) => ("signal", Some(s)),
            ExitStatus::InitFailed(s) => ("init_failed", Some(s)),
            ExitStatus::OomKilled(s) => ("oom_killed", Some(s)),
            ExitStatus::Crashed => ("crashed", None),
            ExitStatus::PoweredOff => ("powered_off", None),
            ExitStatus::CreateFailed => ("create_failed", None),
            ExitStatus::ThrashKilled(s) => ("thrash_killed", Some(s)),
            ExitStatus::Unhealthy(s) => ("unhealthy", Some(s)),
        };
        Exit { how: how.to_string(), status, text: e.to_string() }
    }
}

pub fn restart_text(r: RestartPolicy) -> String {
    match r {
        RestartPolicy::No => "no".to_string(),
        RestartPolicy::Always => "always".to_string(),
        RestartPolicy::OnFailure { limit } => alloc::format!("on-failure:{limit}"),
    }
}

/// `no`, `always`, `on-failure` (limit 5) or `on-failure:N`.
pub fn parse_restart(s: &str) -> Option<RestartPolicy> {
    match s {
        "no" => Some(RestartPolicy::No),
        "always" => Some(RestartPolicy::Always),
        "on-failure" => Some(RestartPolicy::OnFailure { limit: 5 }),
        _ => {
            let n = s.strip_prefix("on-failure:")?;
            (!n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit())).then(|| RestartPolicy::OnFailure { limit: n.parse().unwrap_or(0) })
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub id: u32,
    pub name: String,
    pub state: String,
    pub exit: Option<Exit>,
    pub restarts: u32,
    pub memory_mib: u32,
    /// Its /128 (created with network, once the node's network is up).
    pub address: Option<String>,
    /// The node that runs it, in a list gathered from the cluster's nodes (`null`: the node
    /// that answered).
    #[serde(default)]
    pub node: Option<String>,
    /// `unchecked` (no health check), `starting` (its check has not passed in this run) or
    /// `healthy`. (`unchecked` when a node from before health checks answered a gathered list.)
    #[serde(default = "unchecked")]
    pub health: String,
}

fn unchecked() -> String {
    catenary_workload::status::Health::Unchecked.name().to_string()
}

impl From<&Summary> for WorkloadSummary {
    fn from(s: &Summary) -> WorkloadSummary {
        WorkloadSummary {
            id: s.id, name: s.name.clone(), state: s.state.name().to_string(), exit: s.exit.map(Exit::from), restarts: s.restarts, memory_mib: s.memory_mib,
            address: s.address.map(|a| a.to_string()),
            node: None,
            health: s.health.name().to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadList {
    pub workloads: Vec<WorkloadSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub id: u32,
    pub name: String,
    pub image: String,
    pub state: String,
    pub exit: Option<Exit>,
    pub restarts: u32,
    pub attempts: u32,
    pub restart: String,
    pub uptime_ms: u64,
    pub memory_touched: u64,
    pub memory_mib: u32,
    pub cpus: u8,
    pub restart_in_ms: Option<u64>,
    pub log_start: u64,
    pub log_end: u64,
    /// Its /128 (created with network, once the node's network is up).
    pub address: Option<String>,
    /// The node that runs it when another node answered (forwarded; `null`: the node asked).
    #[serde(default)]
    pub node: Option<String>,
    /// As in [`WorkloadSummary::health`].
    #[serde(default = "unchecked")]
    pub health: String,
    /// Its health check (`null`: none).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

impl From<&Status> for Workload {
    fn from(s: &Status) -> Workload {
        Workload {
            id: s.id,
            name: s.name.clone(),
            image: s.image.to_string(),
            state: s.state.name().to_string(),
            exit: s.exit.map(Exit::from),
            restarts: s.restarts,
            attempts: s.attempts,
            restart: restart_text(s.restart),
            uptime_ms: s.uptime_ms,
            memory_touched: s.memory_touched,
            memory_mib: s.memory_mib,
            cpus: s.vcpus,
            restart_in_ms: s.restart_in_ms,
            log_start: s.log_start,
            log_end: s.log_end,
            address: s.address.map(|a| a.to_string()),
            node: None,
            health: s.health.name().to_string(),
            health_check: s.health_check.as_ref().map(HealthCheck::from_spec),
        }
    }
}

/// What `DELETE /v1/workloads/{workload}` removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub id: u32,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub offset: u64,
    /// `stdout`, `stderr`, `init`, `node`.
    pub stream: String,
    /// The bytes as text (invalid UTF-8 replaced).
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    pub records: Vec<LogRecord>,
    /// The cursor for the next read (follow by passing it back as `cursor`).
    pub next: u64,
    /// Bytes dropped by the node's ring before this reader got them.
    pub lost: u64,
    pub end: u64,
}

pub fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::Init => "init",
        Stream::Node => "node",
    }
}

impl From<&LogChunk> for Logs {
    fn from(c: &LogChunk) -> Logs {
        let records = c
            .records
            .iter()
            .map(|r| LogRecord { offset: r.offset, stream: stream_name(r.stream).to_string(), data: String::from_utf8_lossy(&r.data).into_owned() })
            .collect();
        Logs { records, next: c.next, lost: c.lost, end: c.end }
    }
}

/// A change the API service saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing; `GET /v1/events?since=SEQ` returns the events after SEQ.
    pub seq: u64,
    /// Milliseconds since the API service started.
    pub time_ms: u64,
    /// `created`, `state`, `removed`.
    pub kind: String,
    pub workload: u32,
    pub name: String,
    pub state: String,
    pub exit: Option<Exit>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<Event>,
    /// Pass back as `since`.
    pub next: u64,
    /// Events dropped from the service's ring before this reader got them.
    pub lost: u64,
}

/// One value of every schema, every optional field filled, by schema name (for the OpenAPI
/// check: its keys must be the document's properties).
pub fn schema_samples() -> Vec<(&'static str, serde_json::Value)> {
    let exit = Exit { how: "code".into(), status: Some(0), text: "exit code 0".into() };
    let d = "sha256:1111111111111111111111111111111111111111111111111111111111111111".to_string();
    let node = Node {
        name: "node1".into(),
        public_key: "00".repeat(32),
        address: "fd00::1".into(),
        state: NodeState::Up.name().into(),
        cpus: Some(1),
        memory_total_mib: Some(256),
        memory_free_mib: Some(100),
        memory_committed_mib: Some(68),
        workloads: Some(1),
        store_free_mib: Some(60),
        images: Some(1),
        membership: Some("alive".into()),
        incarnation: Some(1 << 16),
        mac: None,
        labels: Some([("zone".to_string(), "a".to_string())].into()),
    };
    let image = Image { digest: d.clone(), rootfs: d.clone(), rootfs_size: 1, config: d.clone(), config_size: 1, node: Some("node2".into()) };
    let summary = WorkloadSummary { id: 1, name: "web".into(), state: "running".into(), exit: Some(exit.clone()), restarts: 0, memory_mib: 64, address: Some("fd00::100:0:1:1".into()), node: Some("node1".into()), health: "healthy".into() };
    let check = HealthCheck { cmd: vec!["true".into()], interval_secs: Some(10), timeout_secs: Some(5), retries: Some(3), start_period_secs: Some(0) };
    let workload = Workload {
        id: 1,
        name: "web".into(),
        image: d.clone(),
        state: "running".into(),
        exit: Some(exit.clone()),
        restarts: 0,
        attempts: 1,
        restart: "no".into(),
        uptime_ms: 1,
        memory_touched: 1,
        memory_mib: 64,
        cpus: 1,
        restart_in_ms: Some(1),
        log_start: 0,
        log_end: 1,
        address: Some("fd00::100:0:1:1".into()),
        node: Some("node2".into()),
        health: "starting".into(),
        health_check: Some(check.clone()),
    };
    let cluster_status = ClusterWorkloadStatus {
        name: "web".into(),
        image: "sha256:00".into(),
        replicas: 1,
        cpus: 1,
        memory_mib: 64,
        env: vec!["A=1".into()],
        args: vec!["x".into()],
        restart: "no".into(),
        constraints: vec!["zone=a".into()],
        health: Some(check.clone()),
        running: 1,
        eligible_nodes: 2,
        placeable: true,
        assignments: vec![ReplicaStatus { replica: 0, node: Some("node1".into()), state: Some("running".into()), outdated: false }],
    };
    let record = LogRecord { offset: 0, stream: "stdout".into(), data: "hi\n".into() };
    let event = Event { seq: 1, time_ms: 1, kind: "created".into(), workload: 1, name: "web".into(), state: "created".into(), exit: Some(exit.clone()) };
    let v = |x: serde_json::Result<serde_json::Value>| x.unwrap_or(serde_json::Value::Null);
    vec![
        ("Error", v(serde_json::to_value(ErrorBody { error: ErrorDetail { code: "c".into(), message: "m".into() } }))),
        ("ErrorDetail", v(serde_json::to_value(ErrorDetail { code: "c".into(), message: "m".into() }))),
        ("Node", v(serde_json::to_value(&node))),
        ("NodeList", v(serde_json::to_value(NodeList { nodes: vec![node] }))),
        ("NodeAdd", v(serde_json::to_value(NodeAdd { public_key: "00".repeat(32) }))),
        ("NodeLabels", v(serde_json::to_value(NodeLabels { set: [("zone".to_string(), "a".to_string())].into(), remove: vec!["disk".into()] }))),
        ("Image", v(serde_json::to_value(&image))),
        ("ImageList", v(serde_json::to_value(ImageList { images: vec![image] }))),
        ("UploadCreate", v(serde_json::to_value(UploadCreate { image: d.clone(), manifest: "{}".into() }))),
        ("Upload", v(serde_json::to_value(Upload { id: 1, image: d.clone(), size: 1, chunk_size: 1, chunks: 1, missing: vec![0], present: false }))),
        (
            "RunRequest",
            v(serde_json::to_value(RunRequest {
                name: Some("web".into()),
                image: d,
                cpus: Some(1),
                memory_mib: Some(64),
                env: vec!["A=1".into()],
                args: Some(vec!["x".into()]),
                restart: Some("no".into()),
                net: Some(true),
                replicas: Some(2),
                constraints: Some(vec!["zone=a".into()]),
                health: Some(check.clone()),
            })),
        ),
        ("HealthCheck", v(serde_json::to_value(&check))),
        ("ClusterWorkloadList", v(serde_json::to_value(ClusterWorkloadList { workloads: vec![cluster_status.clone()], total: 1 }))),
        ("ClusterWorkloadStatus", v(serde_json::to_value(&cluster_status))),
        ("ReplicaStatus", v(serde_json::to_value(&cluster_status.assignments[0]))),
        ("ClusterWorkload", v(serde_json::to_value(ClusterWorkload { name: "web".into(), replicas: 2, change: Some("updated".into()), changed: vec!["args".into()] }))),
        ("ClusterNode", v(serde_json::to_value(ClusterNode { name: "node2".into(), drained: true }))),
        ("StopRequest", v(serde_json::to_value(StopRequest { grace_ms: Some(1) }))),
        ("Exit", v(serde_json::to_value(&exit))),
        ("WorkloadSummary", v(serde_json::to_value(&summary))),
        ("WorkloadList", v(serde_json::to_value(WorkloadList { workloads: vec![summary] }))),
        ("Workload", v(serde_json::to_value(&workload))),
        ("Removed", v(serde_json::to_value(Removed { id: 1, name: "web".into() }))),
        ("LogRecord", v(serde_json::to_value(&record))),
        ("Logs", v(serde_json::to_value(Logs { records: vec![record], next: 3, lost: 0, end: 3 }))),
        ("Event", v(serde_json::to_value(&event))),
        ("EventList", v(serde_json::to_value(EventList { events: vec![event], next: 1, lost: 0 }))),
    ]
}
