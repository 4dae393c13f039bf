//! Cluster orchestration core (issue 13; docs/orchestration.md).
//!
//! Plain safe Rust with no clock and no I/O: every entry point takes the current time as an
//! argument and returns the datagrams to send, so the ring-3 membership service can run it over
//! the fabric and the host-side simulator ([`sim`], feature `sim`) can run many nodes in one
//! process from one seed.
//!
//! - [`identity`]: a node's identity (fabric public key, fabric address, generation);
//! - [`codec`]: the membership wire format, which refuses any identity whose key is not admitted;
//! - [`membership`]: SWIM probing, suspicion, incarnations and piggybacked gossip (the `foca`
//!   crate), key admission, graceful leave, the member table `catenary nodes` shows;
//! - [`placement`]: the deterministic scheduler function;
//! - [`desired`]: the desired state (workloads, admitted keys, drains, assignments), a
//!   deterministic state machine;
//! - [`put_change`]: what a committed put did to its workload (the API's `change`);
//! - [`replica`]: Raft (the vendored `raftbare` core) replicating it, with leases;
//! - [`raft_codec`]: the orchestration datagrams (Raft envelopes, forwarded writes, joins);
//! - [`snapshot`]: a snapshot's bytes and its chunked transfer (InstallSnapshot over datagrams);
//! - [`orch`]: one node's orchestration (diskless join, the leader's scheduler, what to run),
//!   what the ring-3 service `orchd` runs.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(any(test, feature = "sim"))]
pub mod chaos;
pub mod codec;
pub mod desired;
pub mod identity;
pub mod listing;
pub mod membership;
pub mod orch;
pub mod placement;
pub mod put_change;
pub mod raft_codec;
#[cfg(any(test, feature = "sim"))]
pub mod raft_sim;
#[cfg(test)]
mod raft_tests;
pub mod reconcile;
pub mod replica;
pub mod service;
pub mod snapshot;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod sim_tests;

pub use identity::{NodeId, NodeKey};
pub use membership::{Datagram, MemberState, MemberView, Membership, MembershipConfig};
