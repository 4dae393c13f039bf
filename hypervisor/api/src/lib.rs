//! The operator API (issue 12; docs/api.md): a versioned HTTP/1.1 + JSON API (`/v1/…`) that
//! a ring-3 service on every node serves on the node's fabric /128, and the `catenary` CLI
//! speaks. Everything here is deterministic and host-tested; the service adds only sockets,
//! IPC and a clock.
//!
//! - [`http`]: the bounded, incremental request reader (`httparse`; header count and bytes,
//!   body by `Content-Length` only, a deadline for slow clients) and the response writer;
//! - [`auth`]: operators by fabric key with a role (`admin` / `viewer`) from the cluster file;
//! - [`routes`]: the route table (the OpenAPI document docs/api/openapi.json says the same);
//! - [`router`]: requests onto the workload service's protocol (`catenary_workload::proto`);
//! - [`types`]: the JSON wire types (the OpenAPI schemas);
//! - [`upload`]: image push in chunks, resumable, verified per chunk and as a whole;
//! - [`events`]: workload events from the changes the service sees;
//! - [`cluster`]: what the other nodes add to an answer (lists gathered, requests forwarded);
//! - [`peer`], [`fetch`]: node-to-node image reads, and a node fetching an image the cluster
//!   needs there from the nodes that hold it;
//! - [`client`]: the same requests from the client's side, and a bounded answer reader.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod auth;
pub mod client;
pub mod cluster;
pub mod cluster_state;
pub mod error;
pub mod events;
pub mod exchange;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod fetch;
pub mod http;
pub mod peer;
pub mod router;
pub mod routes;
pub mod types;
pub mod upload;

pub use error::ApiError;

/// The TCP port the API service listens on, on the node's fabric /128.
pub const PORT: u16 = 8080;
pub use router::{Api, Backend, ClusterWrite};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod cluster_state_tests;
#[cfg(test)]
mod fetch_tests;
