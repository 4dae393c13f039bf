//! The client side (the `catenary` CLI): requests built from the same routes and types the
//! service uses, and a bounded reader of the service's answers.

use crate::http::Method;
use crate::types::{ErrorBody, RunRequest, StopRequest, UploadCreate};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::de::DeserializeOwned;

/// Largest answer head and body a client takes (the service's answers are far smaller).
pub const RESPONSE_HEAD_MAX: usize = 8 * 1024;
pub const RESPONSE_BODY_MAX: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    pub chunk_digest: Option<String>,
}

fn req(method: Method, path: String) -> ClientRequest {
    ClientRequest { method, path, body: Vec::new(), chunk_digest: None }
}

fn with_json<T: serde::Serialize>(mut r: ClientRequest, v: &T) -> ClientRequest {
    r.body = serde_json::to_vec(v).unwrap_or_default();
    r
}

pub fn list_nodes() -> ClientRequest {
    req(Method::Get, "/v1/nodes".into())
}
pub fn add_node(public_key: &str) -> ClientRequest {
    with_json(req(Method::Post, "/v1/nodes".into()), &crate::types::NodeAdd { public_key: public_key.into() })
}
/// `node label NODE k=v k-`: committed; constraints see the node's new labels.
pub fn label_node(node: &str, labels: &crate::types::NodeLabels) -> ClientRequest {
    with_json(req(Method::Post, alloc::format!("/v1/cluster/nodes/{node}/labels")), labels)
}
/// `node remove NODE`: the node's key is no longer admitted.
pub fn remove_node(node: &str) -> ClientRequest {
    req(Method::Delete, alloc::format!("/v1/nodes/{node}"))
}
pub fn list_images() -> ClientRequest {
    req(Method::Get, "/v1/images".into())
}
pub fn inspect_image(digest: &str) -> ClientRequest {
    req(Method::Get, alloc::format!("/v1/images/{digest}"))
}
pub fn remove_image(digest: &str) -> ClientRequest {
    req(Method::Delete, alloc::format!("/v1/images/{digest}"))
}
pub fn create_upload(c: &UploadCreate) -> ClientRequest {
    with_json(req(Method::Post, "/v1/images/uploads".into()), c)
}
pub fn get_upload(id: u32) -> ClientRequest {
    req(Method::Get, alloc::format!("/v1/images/uploads/{id}"))
}
/// One chunk, with the digest of its bytes.
pub fn put_chunk(id: u32, index: u32, bytes: &[u8]) -> ClientRequest {
    let mut r = req(Method::Put, alloc::format!("/v1/images/uploads/{id}/chunks/{index}"));
    r.chunk_digest = Some(catenary_workload::Digest::of(bytes).to_string());
    r.body = bytes.to_vec();
    r
}
pub fn abort_upload(id: u32) -> ClientRequest {
    req(Method::Delete, alloc::format!("/v1/images/uploads/{id}"))
}
pub fn commit_upload(id: u32) -> ClientRequest {
    req(Method::Post, alloc::format!("/v1/images/uploads/{id}/commit"))
}
pub fn list_workloads() -> ClientRequest {
    req(Method::Get, "/v1/workloads".into())
}
pub fn run(r: &RunRequest) -> ClientRequest {
    with_json(req(Method::Post, "/v1/workloads".into()), r)
}
/// A workload for the cluster's desired state (`replicas` nodes run it).
pub fn run_cluster(r: &RunRequest) -> ClientRequest {
    with_json(req(Method::Post, "/v1/cluster/workloads".into()), r)
}
/// The cluster's desired state, each replica's node and state.
pub fn list_cluster() -> ClientRequest {
    req(Method::Get, "/v1/cluster/workloads".into())
}
pub fn inspect_cluster(workload: &str) -> ClientRequest {
    req(Method::Get, alloc::format!("/v1/cluster/workloads/{workload}"))
}
pub fn remove_cluster(workload: &str) -> ClientRequest {
    req(Method::Delete, alloc::format!("/v1/cluster/workloads/{workload}"))
}
/// `node drain NODE`: the cluster's scheduler moves every replica off it.
pub fn drain_node(node: &str) -> ClientRequest {
    req(Method::Post, alloc::format!("/v1/cluster/nodes/{node}/drain"))
}
pub fn undrain_node(node: &str) -> ClientRequest {
    req(Method::Post, alloc::format!("/v1/cluster/nodes/{node}/undrain"))
}
/// `node leave NODE`: the node leaves the cluster gracefully (seen as `left`) and is drained.
pub fn leave_node(node: &str) -> ClientRequest {
    req(Method::Post, alloc::format!("/v1/cluster/nodes/{node}/leave"))
}
pub fn inspect(workload: &str) -> ClientRequest {
    req(Method::Get, alloc::format!("/v1/workloads/{workload}"))
}
pub fn start(workload: &str) -> ClientRequest {
    req(Method::Post, alloc::format!("/v1/workloads/{workload}/start"))
}
pub fn stop(workload: &str, grace_ms: Option<u32>) -> ClientRequest {
    with_json(req(Method::Post, alloc::format!("/v1/workloads/{workload}/stop")), &StopRequest { grace_ms })
}
pub fn remove(workload: &str) -> ClientRequest {
    req(Method::Delete, alloc::format!("/v1/workloads/{workload}"))
}
pub fn logs(workload: &str, cursor: u64) -> ClientRequest {
    req(Method::Get, alloc::format!("/v1/workloads/{workload}/logs?cursor={cursor}"))
}
pub fn events(since: u64) -> ClientRequest {
    req(Method::Get, alloc::format!("/v1/events?since={since}"))
}

impl ClientRequest {
    /// The bytes on the wire (`host` for the Host header, e.g. `[fd12::1]:8080`).
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut head = alloc::format!("{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", self.method.as_str(), self.path, self.body.len());
        if !self.body.is_empty() && self.chunk_digest.is_none() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(d) = &self.chunk_digest {
            head.push_str("Content-Type: application/octet-stream\r\n");
            head.push_str(&alloc::format!("Chunk-Digest: {d}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Why an answer could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// Not an HTTP/1.1 answer, or beyond the bounds.
    BadResponse(&'static str),
    /// The service answered with an error (status, code, message).
    Api { status: u16, code: String, message: String },
}

impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClientError::BadResponse(why) => write!(f, "bad answer from the node: {why}"),
            ClientError::Api { status, code, message } => write!(f, "{message} ({status} {code})"),
        }
    }
}

/// The status and body of a complete answer in `bytes`; None while incomplete.
pub fn parse_response(bytes: &[u8]) -> Result<Option<(u16, Vec<u8>)>, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() > RESPONSE_HEAD_MAX => return Err(ClientError::BadResponse("head too large")),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ClientError::BadResponse("not HTTP/1.1")),
    };
    let status = r.code.unwrap_or(0);
    let len = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| core::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .ok_or(ClientError::BadResponse("no Content-Length"))?;
    if len > RESPONSE_BODY_MAX {
        return Err(ClientError::BadResponse("body too large"));
    }
    if bytes.len() < n + len {
        return Ok(None);
    }
    Ok(Some((status, bytes[n..n + len].to_vec())))
}

/// The answer as `T` when it is a success, the service's error otherwise.
pub fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => ClientError::Api { status, code: e.error.code, message: e.error.message },
            Err(_) => ClientError::Api { status, code: "unknown".to_string(), message: "the node's error answer is not JSON".to_string() },
        });
    }
    serde_json::from_slice(body).map_err(|_| ClientError::BadResponse("the body is not the expected JSON"))
}
