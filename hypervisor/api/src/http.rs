//! HTTP/1.1 on the server side: a bounded, incremental request reader over `httparse`, and the
//! response writer.
//!
//! One request per connection (every response says `Connection: close`): the API's requests are
//! small and a log follower polls, so keep-alive would only add state a client could hold.
//!
//! Bounds (every one a [`Limits`] field): header lines, header bytes, body bytes. The body's
//! length comes from `Content-Length` only: `Transfer-Encoding` (chunked or any other) is
//! refused with 411, so the reader always knows how much it will hold before it holds it. A
//! client that has not sent a whole request by its deadline (given as an argument: the reader
//! has no clock) gets 408.

use crate::error::ApiError;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Header lines a request may have.
    pub max_headers: usize,
    /// Bytes of the request line and headers.
    pub max_head: usize,
    /// Bytes of body (`Content-Length`).
    pub max_body: usize,
    /// Milliseconds a client has, from its connection, to send the whole request.
    pub timeout_ms: u64,
}

/// Largest body: an image chunk ([`crate::upload::CHUNK_SIZE`]) and then some.
pub const MAX_BODY: usize = crate::upload::CHUNK_SIZE + 4096;

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_headers: 32, max_head: 8 * 1024, max_body: MAX_BODY, timeout_ms: 10_000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
    /// Whether the method only reads (what a viewer may do).
    pub fn reads_only(self) -> bool {
        self == Method::Get
    }
}

/// The header a node's API service sets on a request it forwards to another node's.
pub const ON_BEHALF_OF: &str = "Catenary-On-Behalf-Of";

/// A complete request. Only the headers the API uses are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path without the query (`/v1/workloads/web`).
    pub path: String,
    /// The query without `?` (empty when none).
    pub query: String,
    /// `Chunk-Digest` (an image chunk's `sha256:…`).
    pub chunk_digest: Option<String>,
    /// `Catenary-On-Behalf-Of` (64 hex): the operator a node forwards this request for. Only
    /// a caller that is a node of the cluster may say so (`apid` checks; docs/api.md).
    pub on_behalf_of: Option<String>,
    pub body: Vec<u8>,
}

/// Reads one request from the bytes a connection delivers, in as many pieces as they come.
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    deadline_ms: u64,
    buf: Vec<u8>,
    /// Once the head is parsed: the request without its body, and where the body starts.
    head: Option<(Request, usize, usize)>,
    done: bool,
}

impl RequestReader {
    /// A reader for a connection accepted at `now_ms`.
    pub fn new(limits: Limits, now_ms: u64) -> RequestReader {
        RequestReader { limits, deadline_ms: now_ms.saturating_add(limits.timeout_ms), buf: Vec::new(), head: None, done: false }
    }

    /// When the client's time is up.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// 408 when `now_ms` is past the deadline and the request is not complete.
    pub fn check_deadline(&self, now_ms: u64) -> Result<(), ApiError> {
        if !self.done && now_ms > self.deadline_ms {
            return Err(ApiError::new(408, "timeout", "the request was not complete in time"));
        }
        Ok(())
    }

    /// Take `data`; the request once it is complete. An error is final: answer it and close.
    /// Bytes after the request's body are ignored (one request per connection).
    pub fn feed(&mut self, data: &[u8], now_ms: u64) -> Result<Option<Request>, ApiError> {
        if self.done {
            return Ok(None);
        }
        self.check_deadline(now_ms)?;
        // never hold more than the largest request (and one byte to tell it is too large)
        let cap = self.limits.max_head + self.limits.max_body + 1;
        let take = data.len().min(cap.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(&data[..take]);
        if self.head.is_none() {
            match self.parse_head()? {
                Some(h) => self.head = Some(h),
                None if self.buf.len() > self.limits.max_head => {
                    return Err(ApiError::new(431, "headers_too_large", "request line and headers exceed the limit"))
                }
                None => return Ok(None),
            }
        }
        let Some((req, start, len)) = &self.head else { return Ok(None) };
        if self.buf.len() < start + len {
            return Ok(None);
        }
        let mut req = req.clone();
        req.body = self.buf[*start..start + len].to_vec();
        self.done = true;
        self.buf = Vec::new();
        Ok(Some(req))
    }

    /// The head, once `buf` holds all of it: the request, body start and body length.
    fn parse_head(&self) -> Result<Option<(Request, usize, usize)>, ApiError> {
        let mut headers = alloc::vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut r = httparse::Request::new(&mut headers);
        let n = match r.parse(&self.buf) {
            Ok(httparse::Status::Partial) => return Ok(None),
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ApiError::new(431, "too_many_headers", "more header lines than the limit"))
            }
            Err(e) => return Err(ApiError::new(400, "bad_request", &alloc::format!("not an HTTP/1.1 request: {e}"))),
        };
        if n > self.limits.max_head {
            return Err(ApiError::new(431, "headers_too_large", "request line and headers exceed the limit"));
        }
        if r.version != Some(1) {
            return Err(ApiError::new(505, "http_version", "only HTTP/1.1 is served"));
        }
        let m = r.method.unwrap_or("");
        let method = Method::parse(m).ok_or_else(|| ApiError::new(405, "method_not_allowed", "methods: GET, POST, PUT, DELETE"))?;
        let target = r.path.unwrap_or("");
        if !target.starts_with('/') {
            return Err(ApiError::new(400, "bad_request", "the request target must be a path"));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut length: Option<usize> = None;
        let mut chunk_digest = None;
        let mut on_behalf_of = None;
        for h in r.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(ApiError::new(411, "length_required", "Transfer-Encoding is refused: send the body with Content-Length"));
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = core::str::from_utf8(h.value).ok().filter(|v| !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()));
                let v: usize = v.and_then(|v| v.parse().ok()).ok_or_else(|| ApiError::new(400, "bad_request", "Content-Length is not a number"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(ApiError::new(400, "bad_request", "two different Content-Length headers"));
                }
                length = Some(v);
            }
            if h.name.eq_ignore_ascii_case("chunk-digest") {
                let v = core::str::from_utf8(h.value).map_err(|_| ApiError::new(400, "bad_request", "Chunk-Digest is not text"))?;
                chunk_digest = Some(v.to_string());
            }
            if h.name.eq_ignore_ascii_case(ON_BEHALF_OF) {
                let v = core::str::from_utf8(h.value).map_err(|_| ApiError::new(400, "bad_request", "Catenary-On-Behalf-Of is not text"))?;
                on_behalf_of = Some(v.to_string());
            }
        }
        let len = length.unwrap_or(0);
        if len > self.limits.max_body {
            return Err(ApiError::new(413, "body_too_large", &alloc::format!("the body may be at most {} bytes", self.limits.max_body)));
        }
        let req = Request { method, path: path.to_string(), query: query.to_string(), chunk_digest, on_behalf_of, body: Vec::new() };
        Ok(Some((req, n, len)))
    }
}

/// A response: status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response { status, body, content_type: "application/json" }
    }

    /// Raw bytes (an image's bytes served to another node).
    pub fn bytes(body: Vec<u8>) -> Response {
        Response { status: 200, body, content_type: "application/octet-stream" }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = alloc::format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "",
    }
}
