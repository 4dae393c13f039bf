//! The route table: every path and method the API serves, with the schemas of its request and
//! answer. docs/api/openapi.json describes exactly these (the test
//! `openapi_matches_the_implementation` compares them both ways).

use crate::error::ApiError;
use crate::http::Method;
use alloc::string::String;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    ListNodes,
    AddNode,
    ListImages,
    InspectImage,
    RemoveImage,
    CreateUpload,
    GetUpload,
    PutChunk,
    CommitUpload,
    AbortUpload,
    ListWorkloads,
    RunWorkload,
    InspectWorkload,
    StartWorkload,
    StopWorkload,
    RemoveWorkload,
    WorkloadLogs,
    Events,
    RunClusterWorkload,
    RemoveClusterWorkload,
    ListClusterWorkloads,
    InspectClusterWorkload,
    DrainNode,
    UndrainNode,
    LeaveNode,
    LabelNode,
    RemoveNode,
}

/// What a request body is: nothing, a JSON schema, or raw bytes (an image chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Json(&'static str),
    /// JSON, and an empty body means every field's default.
    OptionalJson(&'static str),
    Bytes,
}

#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: Method,
    /// With `{param}` segments.
    pub path: &'static str,
    pub op: Op,
    /// The OpenAPI operationId.
    pub operation_id: &'static str,
    /// Query parameters it takes.
    pub query: &'static [&'static str],
    pub body: Body,
    /// The success status and its schema.
    pub status: u16,
    pub response: &'static str,
}

#[allow(clippy::too_many_arguments)] // one table row per call, read as a row
const fn r(method: Method, path: &'static str, op: Op, operation_id: &'static str, query: &'static [&'static str], body: Body, status: u16, response: &'static str) -> Route {
    Route { method, path, op, operation_id, query, body, status, response }
}

use Body::{Bytes, Json, OptionalJson};
use Method::{Delete, Get, Post, Put};

pub const ROUTES: &[Route] = &[
    r(Get, "/v1/nodes", Op::ListNodes, "listNodes", &[], Body::None, 200, "NodeList"),
    r(Post, "/v1/nodes", Op::AddNode, "addNode", &[], Json("NodeAdd"), 200, "NodeAdd"),
    r(Delete, "/v1/nodes/{node}", Op::RemoveNode, "removeNode", &[], Body::None, 200, "NodeAdd"),
    r(Get, "/v1/images", Op::ListImages, "listImages", &[], Body::None, 200, "ImageList"),
    r(Get, "/v1/images/{digest}", Op::InspectImage, "inspectImage", &[], Body::None, 200, "Image"),
    r(Delete, "/v1/images/{digest}", Op::RemoveImage, "removeImage", &[], Body::None, 200, "Image"),
    r(Post, "/v1/images/uploads", Op::CreateUpload, "createUpload", &[], Json("UploadCreate"), 201, "Upload"),
    r(Get, "/v1/images/uploads/{upload}", Op::GetUpload, "getUpload", &[], Body::None, 200, "Upload"),
    r(Put, "/v1/images/uploads/{upload}/chunks/{chunk}", Op::PutChunk, "putChunk", &[], Bytes, 200, "Upload"),
    r(Post, "/v1/images/uploads/{upload}/commit", Op::CommitUpload, "commitUpload", &[], Body::None, 201, "Image"),
    r(Delete, "/v1/images/uploads/{upload}", Op::AbortUpload, "abortUpload", &[], Body::None, 200, "Upload"),
    r(Get, "/v1/workloads", Op::ListWorkloads, "listWorkloads", &[], Body::None, 200, "WorkloadList"),
    r(Post, "/v1/workloads", Op::RunWorkload, "runWorkload", &[], Json("RunRequest"), 201, "Workload"),
    r(Get, "/v1/workloads/{workload}", Op::InspectWorkload, "inspectWorkload", &[], Body::None, 200, "Workload"),
    r(Post, "/v1/workloads/{workload}/start", Op::StartWorkload, "startWorkload", &[], Body::None, 200, "Workload"),
    r(Post, "/v1/workloads/{workload}/stop", Op::StopWorkload, "stopWorkload", &[], OptionalJson("StopRequest"), 200, "Workload"),
    r(Delete, "/v1/workloads/{workload}", Op::RemoveWorkload, "removeWorkload", &[], Body::None, 200, "Removed"),
    r(Get, "/v1/workloads/{workload}/logs", Op::WorkloadLogs, "workloadLogs", &["cursor", "max"], Body::None, 200, "Logs"),
    r(Get, "/v1/events", Op::Events, "listEvents", &["since"], Body::None, 200, "EventList"),
    r(Post, "/v1/cluster/workloads", Op::RunClusterWorkload, "runClusterWorkload", &[], Json("RunRequest"), 201, "ClusterWorkload"),
    r(Get, "/v1/cluster/workloads", Op::ListClusterWorkloads, "listClusterWorkloads", &[], Body::None, 200, "ClusterWorkloadList"),
    r(Get, "/v1/cluster/workloads/{workload}", Op::InspectClusterWorkload, "inspectClusterWorkload", &[], Body::None, 200, "ClusterWorkloadStatus"),
    r(Delete, "/v1/cluster/workloads/{workload}", Op::RemoveClusterWorkload, "removeClusterWorkload", &[], Body::None, 200, "ClusterWorkload"),
    r(Post, "/v1/cluster/nodes/{node}/drain", Op::DrainNode, "drainNode", &[], Body::None, 200, "ClusterNode"),
    r(Post, "/v1/cluster/nodes/{node}/undrain", Op::UndrainNode, "undrainNode", &[], Body::None, 200, "ClusterNode"),
    r(Post, "/v1/cluster/nodes/{node}/leave", Op::LeaveNode, "leaveNode", &[], Body::None, 200, "ClusterNode"),
    r(Post, "/v1/cluster/nodes/{node}/labels", Op::LabelNode, "labelNode", &[], Json("NodeLabels"), 200, "NodeLabels"),
];

/// The values of a route's `{param}` segments, in order.
pub type Params = Vec<(&'static str, String)>;

fn matches(template: &'static str, path: &str) -> Option<Params> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut params = Params::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) => {
                if let Some(name) = ts.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                    if ps.is_empty() {
                        return None;
                    }
                    params.push((name, String::from(ps)));
                } else if ts != ps {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// The route for `method` and `path`: 404 when no route has the path, 405 when one has it but
/// not with this method. Literal segments win over `{param}` ones (`/v1/images/uploads` is not
/// an image digest).
pub fn route(method: Method, path: &str) -> Result<(&'static Route, Params), ApiError> {
    let literal = |r: &Route| r.path.matches('{').count();
    let mut found: Option<(&'static Route, Params)> = None;
    let mut path_known = false;
    for r in ROUTES {
        if let Some(params) = matches(r.path, path) {
            if r.method != method {
                path_known = true;
                continue;
            }
            if found.as_ref().is_none_or(|(f, _)| literal(r) < literal(f)) {
                found = Some((r, params));
            }
        }
    }
    match found {
        Some(f) => Ok(f),
        None if path_known => Err(ApiError::new(405, "method_not_allowed", "this path does not take this method")),
        None => Err(ApiError::new(404, "no_such_path", "no such path (the API is under /v1)")),
    }
}

/// `key=value&…` with only `allowed` keys, each at most once, values unsigned integers.
pub fn query_numbers(query: &str, allowed: &[&'static str]) -> Result<Vec<(&'static str, u64)>, ApiError> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let Some(key) = allowed.iter().find(|a| **a == k) else {
            return Err(ApiError::bad_request(&alloc::format!("unknown query parameter {:?}", k.get(..32).unwrap_or(k))));
        };
        if out.iter().any(|(o, _)| o == key) {
            return Err(ApiError::bad_request(&alloc::format!("query parameter {key} given twice")));
        }
        let n = (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse::<u64>().ok()).flatten();
        let n = n.ok_or_else(|| ApiError::bad_request(&alloc::format!("query parameter {key}: not an unsigned integer")))?;
        out.push((key, n));
    }
    Ok(out)
}
