//! Node-to-node routes: what another node of the cluster asks this one when it fetches an image
//! the committed state needs there (`crate::fetch`; docs/orchestration.md "Images follow their
//! replicas"). Not part of the operator API (no OpenAPI entry): only a node's own key may call
//! them, and a node is a caller only at its own ::1 (`Operators::caller_of`), so neither an
//! operator (of any role), nor a request forwarded on an operator's behalf, nor a microVM or
//! task of a node's /64 reaches them.
//!
//! - `GET /v1/peer/images/{digest}/manifest`: the image's `image.json` (its sha256 is the digest);
//! - `GET /v1/peer/images/{digest}/chunks/{n}`: bytes `n·CHUNK_SIZE ..` of the stream
//!   `config.json ‖ rootfs.squashfs`, [`CHUNK_SIZE`] of them (the last chunk shorter): the same
//!   chunks as a push (`crate::upload`).
//!
//! 404 `no_such_image` when this node's store has no such image, so the fetcher asks the next.

use crate::error::ApiError;
use crate::http::{Method, Request, Response};
use crate::router::Backend;
use crate::upload::CHUNK_SIZE;
use alloc::vec::Vec;
use catenary_workload::proto::{self as wk, Reply};
use catenary_workload::store::MANIFEST_MAX;
use catenary_workload::Digest;

/// The routes' common prefix.
pub const PREFIX: &str = "/v1/peer/";

/// The path of an image's manifest, and of one of its chunks, on another node.
pub fn manifest_path(image: &Digest) -> alloc::string::String {
    alloc::format!("{PREFIX}images/{image}/manifest")
}
pub fn chunk_path(image: &Digest, n: u32) -> alloc::string::String {
    alloc::format!("{PREFIX}images/{image}/chunks/{n}")
}

/// Whether `req` is for these routes (they are answered by [`serve`], never forwarded).
pub fn is_peer(req: &Request) -> bool {
    req.path.starts_with(PREFIX)
}

/// Answer a node-to-node request. `node_caller`: the caller is one of the cluster's nodes
/// speaking for itself (not on an operator's behalf).
pub fn serve(req: &Request, node_caller: bool, backend: &mut dyn Backend) -> Response {
    if !node_caller {
        return ApiError::new(403, "forbidden", "node-to-node routes answer only the cluster's nodes").to_response();
    }
    if req.method != Method::Get {
        return ApiError::new(405, "method_not_allowed", "node-to-node routes are GET only").to_response();
    }
    if !req.body.is_empty() || !req.query.is_empty() {
        return ApiError::bad_request("node-to-node routes take no body and no query").to_response();
    }
    route(req, backend).unwrap_or_else(|e| e.to_response())
}

fn route(req: &Request, backend: &mut dyn Backend) -> Result<Response, ApiError> {
    let rest = &req.path[PREFIX.len()..];
    let parts: Vec<&str> = rest.split('/').collect();
    let (image, read) = match parts.as_slice() {
        ["images", d, "manifest"] => (parse(d)?, None),
        ["images", d, "chunks", n] => {
            let n = (!n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse::<u32>().ok()).flatten();
            (parse(d)?, Some(n.ok_or_else(|| ApiError::bad_request("chunk: not a number"))?))
        }
        _ => return Err(ApiError::new(404, "not_found", "no such node-to-node route")),
    };
    let Some(n) = read else {
        let bytes = backend.workd_read(wk::Request::ImageRead { image, manifest: true, offset: 0, len: MANIFEST_MAX as u32 })?;
        return Ok(Response::bytes(bytes));
    };
    let info = match backend.workd(wk::Request::Images)? {
        Reply::Images(l) => l.into_iter().find(|i| i.digest == image).ok_or_else(|| ApiError::from(wk::Error::NoSuchImage))?,
        _ => return Err(ApiError::new(500, "internal", "the workload service answered out of protocol")),
    };
    let size = info.config_size.saturating_add(info.rootfs_size);
    let offset = u64::from(n) * CHUNK_SIZE as u64;
    if offset >= size {
        return Err(ApiError::bad_request("chunk: past the image's end"));
    }
    let len = (size - offset).min(CHUNK_SIZE as u64) as u32;
    let bytes = backend.workd_read(wk::Request::ImageRead { image, manifest: false, offset, len })?;
    if bytes.len() != len as usize {
        return Err(ApiError::new(500, "internal", "the store gave fewer bytes than the image holds"));
    }
    Ok(Response::bytes(bytes))
}

fn parse(d: &str) -> Result<Digest, ApiError> {
    Digest::parse(d).ok_or_else(|| ApiError::bad_request("digest: not sha256:<64 lowercase hex>"))
}
