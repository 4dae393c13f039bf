//! The workload service's interface and logic (issue 11, item 3; docs/workloads.md).
//!
//! `workd`, a ring-3 service the supervisor starts, owns the microVMs of its node. Everything
//! it decides is here, deterministic and tested on the host:
//!
//! - [`spec`]: what a client asks to run ([`WorkloadSpec`]: image digest, name, vCPUs, memory,
//!   env and argument overrides, [`RestartPolicy`]) and its checks;
//! - [`status`]: the states (created, starting, running, stopping, exited, failed), how a run
//!   ended ([`ExitStatus`]) and the status record;
//! - [`restart`]: the restart policy's decisions with exponential backoff (clock as argument);
//! - [`logring`]: the per-workload log, bounded in bytes, followable by cursor (a reader that
//!   falls behind learns how many bytes it lost);
//! - [`admission`]: memory admission (a request that does not fit is refused, nothing is
//!   half-created);
//! - [`store`]: the node's image store index, content-addressed, sha256-verified on arrival;
//! - [`proto`]: the request/reply protocol other tasks (and the operator API) speak to `workd`
//!   over IPC (postcard, bounded);
//! - [`vmctl`]: the kernel's VM-control records (`SYS_VM`, gated by the VMCTL capability);
//! - [`node`]: the `node.json` the guest init reads;
//! - [`net`]: each networked workload's link slot, /128 and MAC;
//! - [`service`]: the state machine `workd` runs around all of the above;
//! - [`replace`]: what `orchd` does with a cluster replica whose desired spec changed;
//! - [`replicas`]: what `orchd` makes `workd` do for the cluster's replicas, turn by turn.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod admission;
mod digest;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod logring;
pub mod net;
pub mod node;
pub mod proto;
pub mod replace;
pub mod replicas;
pub mod restart;
pub mod service;
pub mod spec;
pub mod status;
pub mod store;
pub mod vmctl;

pub use digest::{Digest, Hasher};
pub use proto::{Error, Reply, Request, Response, Target};
pub use spec::{RestartPolicy, WorkloadSpec};
pub use status::{ExitStatus, State, Status, WorkloadId};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod lease_tests;
