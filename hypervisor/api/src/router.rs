//! The API's logic: a request from an authorized caller becomes calls of the workload
//! service's protocol (`catenary_workload::proto`), image-push steps, or reads of the event
//! log; the answers become JSON.
//!
//! The node side is behind [`Backend`] (in `apid`: `workd` over IPC, the kernel's store; in the
//! host tests: the real workload service state machine over a simulated kernel).

use crate::auth::Operators;
use crate::error::ApiError;
use crate::events::EventLog;
use crate::http::{Method, Request as HttpRequest, Response};
use crate::routes::{self, Body, Op, Params, Route};
use crate::types::*;
use crate::upload::{UploadLimits, Uploads};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use catenary_workload::proto::{self as wk, Reply, Target, LOG_READ_MAX};
use catenary_workload::spec::{valid_name, WorkloadSpec};
use catenary_workload::status::WorkloadId;
use catenary_workload::store::ImageInfo;
use catenary_workload::{Digest, RestartPolicy};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Defaults of `run` when the request does not say.
pub const DEFAULT_CPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 128;

/// What the API needs from its node.
pub trait Backend {
    /// One request to the workload service.
    fn workd(&mut self, req: wk::Request) -> wk::Response;
    /// The cluster's nodes as this node knows them.
    fn nodes(&mut self) -> Vec<Node>;
    /// Admit a node's fabric key into membership (`POST /v1/nodes`, admin only).
    fn admit_node(&mut self, key: [u8; 32]) -> Result<(), ApiError>;
    /// A `proto::Request::ImageChunk` with its bytes: `apid` writes the request at the start of
    /// its granted buffer and `bytes` at `proto::CHUNK_OFFSET` (the grant must reach that far).
    fn workd_chunk(&mut self, req: wk::Request, bytes: &[u8]) -> wk::Response;
    /// A `proto::Request::ImageRead`: the bytes the workload service put at
    /// `proto::CHUNK_OFFSET` of the granted buffer (`Reply::Read`'s count of them).
    fn workd_read(&mut self, _req: wk::Request) -> Result<Vec<u8>, wk::Error> {
        Err(wk::Error::Unsupported)
    }
    /// A write to the cluster's replicated desired state (in `apid`: the orchestration service
    /// `orchd`, which answers once the write is committed). A node without one refuses. For a
    /// put, what it did as the log applied it (`None`: not known, or not a put).
    fn cluster(&mut self, _w: ClusterWrite) -> Result<Option<catenary_cluster::put_change::PutChange>, ApiError> {
        Err(ApiError::new(503, "no_cluster", "this node has no orchestration service"))
    }
    /// The committed desired state, each replica's state filled in where this node runs it
    /// ([`crate::cluster_state::statuses`]), and how many workloads the state holds.
    fn cluster_workloads(&mut self) -> Result<(Vec<ClusterWorkloadStatus>, u32), ApiError> {
        Err(ApiError::new(503, "no_cluster", "this node has no orchestration service"))
    }
    /// `POST /v1/cluster/nodes/{node}/leave`: when `node` (a name in the cluster file) is this
    /// node, it leaves gracefully (its membership service announces the leave, then the
    /// cluster drains it) and the answer is `Ok(true)`; `Ok(false)` when `node` is another
    /// member (the request goes to that node, `cluster::elsewhere`).
    fn leave(&mut self, _node: &str) -> Result<bool, ApiError> {
        Err(ApiError::new(503, "no_cluster", "this node has no membership service"))
    }
}

/// A write to the cluster's desired state (docs/orchestration.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterWrite {
    /// Create or replace a workload that runs on `replicas` nodes whose labels meet
    /// `constraints`.
    Put { spec: WorkloadSpec, replicas: u32, constraints: Vec<catenary_cluster::placement::Constraint> },
    Remove(String),
    /// Take every replica off a node (its name in the cluster file, or its 64-hex key).
    Drain(String),
    /// Let the scheduler place replicas on a drained node again.
    Undrain(String),
    /// Set (`Some`) or remove (`None`) labels of a node (name or key); checked by the router
    /// (keys and values as `catenary_cluster::desired::label_key_ok`, at most
    /// `LABEL_CHANGES_MAX`, each key once).
    Label { node: String, changes: Vec<(String, Option<String>)> },
    /// Take a node (name or 64-hex key) out of the cluster: its key is no longer admitted.
    RemoveNode(String),
}

/// The longest name of a cluster workload: its replicas run as `cl-NAME-R` on the nodes.
pub const CLUSTER_NAME_MAX: usize = catenary_workload::spec::NAME_MAX - 6;

/// The API service's state: who may call, pushes in progress, events seen.
#[derive(Debug)]
pub struct Api {
    pub operators: Operators,
    pub uploads: Uploads,
    pub events: EventLog,
    runs: u32,
}

fn json<T: Serialize>(status: u16, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => Response::json(status, b),
        Err(_) => ApiError::new(500, "internal", "the answer could not be encoded").to_response(),
    }
}

fn out_of_protocol() -> ApiError {
    ApiError::new(500, "internal", "the workload service answered out of protocol")
}

fn body<T: DeserializeOwned + Default>(req: &HttpRequest, kind: Body) -> Result<T, ApiError> {
    if req.body.is_empty() && matches!(kind, Body::OptionalJson(_)) {
        return Ok(T::default());
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(&alloc::format!("body: {e}")))
}

fn body_required<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(&alloc::format!("body: {e}")))
}

fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v.as_str())
}

/// `{workload}`: an id (digits) or a name.
fn target(p: &Params) -> Result<Target, ApiError> {
    let w = param(p, "workload");
    // all digits is an id (a name of only digits cannot be named by it: use the id)
    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
        return (w.len() <= 10).then(|| w.parse::<WorkloadId>().ok()).flatten().map(Target::Id).ok_or_else(|| ApiError::bad_request("workload: id out of range"));
    }
    if valid_name(w) {
        return Ok(Target::Name(w.to_string()));
    }
    Err(ApiError::bad_request("workload: an id or a name of 1-63 of [a-z0-9-]"))
}

fn digest(p: &Params) -> Result<Digest, ApiError> {
    Digest::parse(param(p, "digest")).ok_or_else(|| ApiError::bad_request("digest: not sha256:<64 lowercase hex>"))
}

fn number(p: &Params, name: &str) -> Result<u32, ApiError> {
    let v = param(p, name);
    (!v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| ApiError::bad_request(&alloc::format!("{name}: not a number")))
}

impl Api {
    pub fn new(operators: Operators, upload_limits: UploadLimits) -> Api {
        Api { operators, uploads: Uploads::new(upload_limits), events: EventLog::new(), runs: 0 }
    }

    /// Answer one request from the fabric peer `caller` (its public key).
    pub fn handle(&mut self, caller: &[u8; 32], req: &HttpRequest, backend: &mut dyn Backend, now_ms: u64) -> Response {
        if crate::peer::is_peer(req) {
            return crate::peer::serve(req, self.operators.node_keys.contains(caller), backend);
        }
        if let Err(e) = self.operators.authorize(caller, req.method) {
            return e.to_response();
        }
        // a change is seen before and after every mutation, so none hides behind another
        if req.method != Method::Get {
            self.observe(backend, now_ms);
        }
        let resp = match routes::route(req.method, &req.path) {
            Ok((route, params)) => self.serve(route, &params, req, backend, now_ms).unwrap_or_else(|e| e.to_response()),
            Err(e) => e.to_response(),
        };
        if req.method != Method::Get {
            self.observe(backend, now_ms);
        }
        resp
    }

    /// Periodic work: note workload changes, drop idle uploads.
    pub fn tick(&mut self, backend: &mut dyn Backend, now_ms: u64) {
        self.observe(backend, now_ms);
        self.uploads.expire(now_ms);
    }

    fn observe(&mut self, backend: &mut dyn Backend, now_ms: u64) {
        if let Ok(Reply::List(l)) = backend.workd(wk::Request::List) {
            self.events.observe(&l, now_ms);
        }
    }

    fn images(backend: &mut dyn Backend) -> Result<Vec<ImageInfo>, ApiError> {
        match backend.workd(wk::Request::Images)? {
            Reply::Images(i) => Ok(i),
            _ => Err(out_of_protocol()),
        }
    }

    fn status(backend: &mut dyn Backend, t: Target) -> Result<Workload, ApiError> {
        match backend.workd(wk::Request::Status(t))? {
            Reply::Status(s) => Ok(Workload::from(&s)),
            _ => Err(out_of_protocol()),
        }
    }

    fn done(backend: &mut dyn Backend, req: wk::Request) -> Result<(), ApiError> {
        match backend.workd(req)? {
            Reply::Done => Ok(()),
            _ => Err(out_of_protocol()),
        }
    }

    fn serve(&mut self, route: &Route, p: &Params, req: &HttpRequest, backend: &mut dyn Backend, now_ms: u64) -> Result<Response, ApiError> {
        let q = routes::query_numbers(&req.query, route.query)?;
        let qv = |k: &str| q.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        if route.body == Body::None && !req.body.is_empty() {
            return Err(ApiError::bad_request("this request takes no body"));
        }
        let ok = |v: &dyn erased::Ser| v.respond(route.status);
        Ok(match route.op {
            Op::ListNodes => ok(&NodeList { nodes: backend.nodes() }),
            Op::AddNode => {
                let a: crate::types::NodeAdd = body_required(req)?;
                let key = crate::auth::hex32(&a.public_key).ok_or_else(|| ApiError::new(422, "bad_key", "public_key: not 64 hex digits"))?;
                if key == [0; 32] {
                    return Err(ApiError::new(422, "bad_key", "public_key: the all-zero key"));
                }
                backend.admit_node(key)?;
                ok(&a)
            }
            Op::ListImages => ok(&ImageList { images: Self::images(backend)?.iter().map(Image::from).collect() }),
            Op::InspectImage => {
                let d = digest(p)?;
                let i = Self::images(backend)?.into_iter().find(|i| i.digest == d).ok_or_else(|| ApiError::from(wk::Error::NoSuchImage))?;
                ok(&Image::from(&i))
            }
            Op::RemoveImage => {
                let d = digest(p)?;
                let i = Self::images(backend)?.into_iter().find(|i| i.digest == d).ok_or_else(|| ApiError::from(wk::Error::NoSuchImage))?;
                match backend.workd(wk::Request::RemoveImage(d))? {
                    Reply::Done => ok(&Image::from(&i)),
                    _ => return Err(out_of_protocol()),
                }
            }
            Op::CreateUpload => {
                let c: UploadCreate = body_required(req)?;
                let d = Digest::parse(&c.image).ok_or_else(|| ApiError::bad_request("image: not a sha256:<64 lowercase hex> digest"))?;
                if Self::images(backend)?.iter().any(|i| i.digest == d) {
                    let present = Upload { id: 0, image: c.image, size: 0, chunk_size: 0, chunks: 0, missing: Vec::new(), present: true };
                    return Ok(json(200, &present));
                }
                let u = self.uploads.create(&c, backend, now_ms)?;
                if u.present {
                    return Ok(json(200, &u));
                }
                ok(&u)
            }
            Op::GetUpload => ok(&self.uploads.get(number(p, "upload")?, now_ms)?),
            Op::PutChunk => ok(&self.uploads.put_chunk(number(p, "upload")?, number(p, "chunk")?, req.chunk_digest.as_deref(), &req.body, backend, now_ms)?),
            Op::CommitUpload => {
                let info = self.uploads.commit(number(p, "upload")?, backend, now_ms)?;
                ok(&Image::from(&info))
            }
            Op::AbortUpload => {
                let id = number(p, "upload")?;
                let u = self.uploads.get(id, now_ms)?;
                self.uploads.abort(id, backend)?;
                ok(&u)
            }
            Op::ListWorkloads => match backend.workd(wk::Request::List)? {
                Reply::List(l) => {
                    self.events.observe(&l, now_ms);
                    ok(&WorkloadList { workloads: l.iter().map(WorkloadSummary::from).collect() })
                }
                _ => return Err(out_of_protocol()),
            },
            Op::RunWorkload => ok(&self.run(body_required(req)?, backend)?),
            Op::InspectWorkload => ok(&Self::status(backend, target(p)?)?),
            Op::StartWorkload => {
                let t = target(p)?;
                Self::done(backend, wk::Request::Start(t.clone()))?;
                ok(&Self::status(backend, t)?)
            }
            Op::StopWorkload => {
                let t = target(p)?;
                let s: StopRequest = body(req, route.body)?;
                if s.grace_ms.is_some_and(|g| g > wk::GRACE_MAX_MS) {
                    return Err(ApiError::bad_request("grace_ms: at most 300000"));
                }
                Self::done(backend, wk::Request::Stop { target: t.clone(), grace_ms: s.grace_ms })?;
                ok(&Self::status(backend, t)?)
            }
            Op::RemoveWorkload => {
                let t = target(p)?;
                let w = Self::status(backend, t)?;
                Self::done(backend, wk::Request::Destroy(Target::Id(w.id)))?;
                ok(&Removed { id: w.id, name: w.name })
            }
            Op::WorkloadLogs => {
                let max = qv("max").unwrap_or(LOG_READ_MAX as u64).min(LOG_READ_MAX as u64) as u32;
                match backend.workd(wk::Request::Logs { target: target(p)?, cursor: qv("cursor").unwrap_or(0), max })? {
                    Reply::Logs(c) => ok(&Logs::from(&c)),
                    _ => return Err(out_of_protocol()),
                }
            }
            Op::RunClusterWorkload => ok(&self.run_cluster(body_required(req)?, backend)?),
            Op::ListClusterWorkloads => {
                let (workloads, total) = backend.cluster_workloads()?;
                ok(&ClusterWorkloadList { workloads, total })
            }
            Op::InspectClusterWorkload => {
                let name = param(p, "workload");
                let (workloads, _) = backend.cluster_workloads()?;
                let w = workloads.into_iter().find(|w| w.name == name).ok_or_else(|| ApiError::new(404, "no_such_workload", "no cluster workload has that name"))?;
                ok(&w)
            }
            Op::RemoveClusterWorkload => {
                let name = p.iter().find(|(k, _)| *k == "workload").map(|(_, v)| v.clone()).unwrap_or_default();
                if !valid_name(&name) || name.len() > CLUSTER_NAME_MAX {
                    return Err(ApiError::bad_request("workload: a cluster workload's name"));
                }
                backend.cluster(ClusterWrite::Remove(name.clone()))?;
                ok(&ClusterWorkload { name, replicas: 0, change: None, changed: Vec::new() })
            }
            Op::DrainNode | Op::UndrainNode => {
                let node = p.iter().find(|(k, _)| *k == "node").map(|(_, v)| v.clone()).unwrap_or_default();
                if node.is_empty() || node.len() > 64 {
                    return Err(ApiError::bad_request("node: a node's name or key"));
                }
                let drain = route.op == Op::DrainNode;
                backend.cluster(if drain { ClusterWrite::Drain(node.clone()) } else { ClusterWrite::Undrain(node.clone()) })?;
                ok(&ClusterNode { name: node, drained: drain })
            }
            Op::LabelNode => {
                let node = param(p, "node").to_string();
                if node.is_empty() || node.len() > 64 {
                    return Err(ApiError::bad_request("node: a node's name or key"));
                }
                let l: NodeLabels = body_required(req)?;
                use catenary_cluster::desired::{label_key_ok, label_value_ok, LABEL_CHANGES_MAX};
                let changes: Vec<(String, Option<String>)> = l.set.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).chain(l.remove.iter().map(|k| (k.clone(), None))).collect();
                if changes.is_empty() || changes.len() > LABEL_CHANGES_MAX {
                    return Err(ApiError::new(422, "bad_labels", "labels: 1 to 16 changes (set and remove together)"));
                }
                if let Some((k, v)) = changes.iter().find(|(k, v)| !label_key_ok(k) || !v.as_deref().is_none_or(label_value_ok)) {
                    let shown = |s: &str| s.get(..80).unwrap_or(s).to_string();
                    return Err(ApiError::new(422, "bad_labels", &alloc::format!("labels: {:?}={:?}: key 1-63 of a-z 0-9 . _ - /, value 0-63 of A-Z a-z 0-9 . _ -", shown(k), v.as_deref().map(shown))));
                }
                if l.remove.iter().enumerate().any(|(i, k)| l.set.contains_key(k) || l.remove[..i].contains(k)) {
                    return Err(ApiError::new(422, "bad_labels", "labels: a key both set and removed, or removed twice"));
                }
                backend.cluster(ClusterWrite::Label { node, changes })?;
                ok(&l)
            }
            Op::RemoveNode => {
                let node = param(p, "node").to_string();
                if node.is_empty() || node.len() > 64 {
                    return Err(ApiError::bad_request("node: a node's name or key"));
                }
                backend.cluster(ClusterWrite::RemoveNode(node.clone()))?;
                ok(&NodeAdd { public_key: node })
            }
            Op::LeaveNode => {
                let node = p.iter().find(|(k, _)| *k == "node").map(|(_, v)| v.clone()).unwrap_or_default();
                if node.is_empty() || node.len() > 64 {
                    return Err(ApiError::bad_request("node: a node's name"));
                }
                if !backend.leave(&node)? {
                    return Err(ApiError::new(404, crate::cluster::NOT_THIS_NODE, "that node is another member: ask it"));
                }
                ok(&ClusterNode { name: node, drained: true })
            }
            Op::Events => {
                self.observe(backend, now_ms);
                ok(&self.events.read(qv("since").unwrap_or(0)))
            }
        })
    }

    /// Create, then start; a workload that cannot start is removed again (nothing half-made).
    fn run(&mut self, r: RunRequest, backend: &mut dyn Backend) -> Result<Workload, ApiError> {
        let image = Digest::parse(&r.image).ok_or_else(|| ApiError::bad_request("image: not a sha256:<64 lowercase hex> digest"))?;
        if r.name.as_deref().is_some_and(|n| n.starts_with(crate::cluster_state::REPLICA_PREFIX)) {
            return Err(ApiError::bad_request("name: names starting with cl- are the cluster's replicas (cl-NAME-R); choose another name, or run it on the cluster with --replicas"));
        }
        if r.replicas.is_some() || r.constraints.is_some() {
            return Err(ApiError::bad_request("replicas, constraints: only for a cluster workload (POST /v1/cluster/workloads)"));
        }
        let restart = match r.restart.as_deref() {
            None => RestartPolicy::No,
            Some(s) => types_restart(s)?,
        };
        self.runs = self.runs.wrapping_add(1);
        let name = r.name.unwrap_or_else(|| alloc::format!("w{}-{}", self.runs, image.short()));
        let spec = WorkloadSpec {
            name,
            image,
            vcpus: r.cpus.unwrap_or(DEFAULT_CPUS),
            memory_mib: r.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            env: r.env,
            args: r.args,
            restart,
            net: r.net.unwrap_or(true),
            health: r.health.as_ref().map(HealthCheck::to_spec),
        };
        spec.check()?;
        let id = match backend.workd(wk::Request::Create(spec))? {
            Reply::Created(id) => id,
            _ => return Err(out_of_protocol()),
        };
        if let Err(e) = Self::done(backend, wk::Request::Start(Target::Id(id))) {
            let _ = backend.workd(wk::Request::Destroy(Target::Id(id)));
            return Err(e);
        }
        Self::status(backend, Target::Id(id))
    }
}

impl Api {
    /// A workload for the cluster: checked like `run`, then committed to the desired state.
    fn run_cluster(&mut self, r: RunRequest, backend: &mut dyn Backend) -> Result<ClusterWorkload, ApiError> {
        let image = Digest::parse(&r.image).ok_or_else(|| ApiError::bad_request("image: not a sha256:<64 lowercase hex> digest"))?;
        let restart = match r.restart.as_deref() {
            None => RestartPolicy::No,
            Some(s) => types_restart(s)?,
        };
        let name = r.name.ok_or_else(|| ApiError::bad_request("name: required for a cluster workload"))?;
        // The desired state has no such field: every replica gets its device and /128. Refused
        // rather than dropped, so `--net none` never silently runs with a network.
        if r.net == Some(false) {
            return Err(ApiError::bad_request("net: a cluster workload's replicas always have a network device and their own /128 (net: false is for a workload on one node)"));
        }
        if name.len() > CLUSTER_NAME_MAX {
            return Err(ApiError::bad_request("name: at most 57 characters for a cluster workload"));
        }
        let replicas = r.replicas.unwrap_or(1);
        if !(1..=64).contains(&replicas) {
            return Err(ApiError::bad_request("replicas: 1..=64"));
        }
        let texts = r.constraints.unwrap_or_default();
        if texts.len() > crate::cluster_state::CONSTRAINTS_MAX {
            return Err(ApiError::bad_request("constraints: at most 16"));
        }
        let constraints = texts.iter().map(|c| crate::cluster_state::parse_constraint(c)).collect::<Result<Vec<_>, _>>()?;
        let spec = WorkloadSpec {
            name: name.clone(),
            image,
            vcpus: r.cpus.unwrap_or(DEFAULT_CPUS),
            memory_mib: r.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
            env: r.env,
            args: r.args,
            restart,
            net: r.net.unwrap_or(true),
            health: r.health.as_ref().map(HealthCheck::to_spec),
        };
        spec.check()?;
        // what the put did, as the cluster's log applied it (orchd's word; none from an orchd
        // that does not say)
        let applied = backend.cluster(ClusterWrite::Put { spec, replicas, constraints })?;
        let (change, changed) = match applied {
            Some(c) => {
                let (c, f) = crate::cluster_state::change_text(c);
                (Some(String::from(c)), f)
            }
            None => (None, Vec::new()),
        };
        Ok(ClusterWorkload { name, replicas, change, changed })
    }
}

fn types_restart(s: &str) -> Result<RestartPolicy, ApiError> {
    crate::types::parse_restart(s).ok_or_else(|| ApiError::bad_request("restart: no, always, on-failure or on-failure:N"))
}

/// Serialize any answer type through one `&dyn` (keeps the match above short).
mod erased {
    use super::*;
    pub trait Ser {
        fn respond(&self, status: u16) -> Response;
    }
    impl<T: Serialize> Ser for T {
        fn respond(&self, status: u16) -> Response {
            json(status, self)
        }
    }
}

/// A caller key as text, for a service's log line (a public key: not a secret).
pub fn caller_text(k: &[u8; 32]) -> String {
    crate::auth::hex(&k[..8])
}
