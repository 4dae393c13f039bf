//! API errors: an HTTP status and a JSON body that says what is wrong
//! (`{"error": {"code": "no_such_workload", "message": "…"}}`).

use crate::http::Response;
use crate::types::{ErrorBody, ErrorDetail};
use alloc::string::{String, ToString};
use catenary_workload::proto::Error as WkError;
use catenary_workload::store::StoreError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// A stable machine-readable word (`snake_case`).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: &str) -> ApiError {
        ApiError { status, code, message: message.to_string() }
    }

    pub fn bad_request(message: &str) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    pub fn to_response(&self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message.clone() } };
        Response::json(self.status, serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// The workload service's refusals as HTTP.
impl From<WkError> for ApiError {
    fn from(e: WkError) -> ApiError {
        let (status, code) = match e {
            WkError::Malformed => (400, "malformed"),
            WkError::BadSpec(_) => (400, "bad_spec"),
            WkError::BadSignal => (400, "bad_signal"),
            WkError::NoSuchWorkload => (404, "no_such_workload"),
            WkError::NameInUse => (409, "name_in_use"),
            WkError::NoSuchImage => (404, "no_such_image"),
            WkError::NoMemory { .. } => (507, "no_capacity"),
            WkError::TooManyWorkloads => (507, "too_many_workloads"),
            WkError::BadState(_) => (409, "bad_state"),
            WkError::Unsupported => (422, "unsupported"),
            WkError::VmRefused => (503, "vm_refused"),
            WkError::NoNetworkLink => (507, "no_network_link"),
            WkError::ImageInUse => (409, "image_in_use"),
            WkError::ImageInvalid => (422, "image_invalid"),
            WkError::ChunkDigest => (422, "chunk_digest_mismatch"),
            WkError::NoSuchUpload => (404, "no_such_upload"),
            WkError::StoreFull => (507, "store_full"),
            // apid never sends the lease, nor a cluster replica's name (400 before workd)
            WkError::NotOrchestrator => (403, "forbidden"),
            WkError::NoLease => (409, "no_cluster_lease"),
        };
        let message = match e {
            WkError::NoMemory { need_mib, free_mib } => alloc::format!("{}: needs {need_mib} MiB, {free_mib} MiB free", e.message()),
            WkError::BadState(s) => alloc::format!("{}: it is {}", e.message(), s.name()),
            _ => e.message().to_string(),
        };
        ApiError { status, code, message }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Full => ApiError::new(507, "store_full", e.message()),
            _ => ApiError::new(422, "image_invalid", e.message()),
        }
    }
}
