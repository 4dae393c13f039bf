//! The workload service's IPC protocol: what any task (and, through it, the operator API) says
//! to `workd`.
//!
//! # Transport
//!
//! A request is a `call_grant` to `workd`'s endpoint with label [`LABEL_REQUEST`], word 0 = the
//! request's length, and a **writable** grant of the client's buffer, which holds the request
//! (postcard-encoded [`Request`]) at its start. `workd` reads the request from the grant the
//! kernel really mapped (never from addresses in the words), writes the answer (postcard
//! [`Response`] = `Result<Reply, Error>`) to the start of the same buffer, and replies with label
//! [`TRANSPORT_OK`] and word 0 = the answer's length. A buffer of [`BUFFER_MIN`] bytes holds any
//! request and any answer. When there is no answer to write, the reply's label says why
//! ([`Transport`]).
//!
//! # Bounds
//!
//! Requests at most [`REQUEST_MAX`] bytes; answers at most [`REPLY_MAX`]; specs as
//! [`crate::spec`] says; [`WORKLOADS_MAX`] workloads per node; a log read returns at most
//! [`LOG_READ_MAX`] bytes. A request that is not a valid encoding (bad length prefix, bad UTF-8,
//! unknown variant, trailing bytes) answers [`Error::Malformed`]; nothing a client sends makes
//! `workd` panic (decoded with [`decode_request`], host-tested and fuzzed).
//!
//! # Who may ask what
//!
//! Every client with a capability to `workd`'s endpoint may send any request but one:
//! [`Request::ClusterLease`] is taken only from the node's orchestration service `orchd`.
//! `workd` tells it by the call's badge, which the kernel sets from the sender's capability
//! (`catenary_manifest::is_from(SERVICES, "orchd", badge)`: orchd's manifest index + 1; a
//! remote caller carries `REMOTE_BADGE`), so no other task can claim it; anyone else gets
//! [`Error::NotOrchestrator`] and the lease is unchanged.
//!
//! # The cluster lease
//!
//! The cluster's replicas run here as workloads named [`CLUSTER_PREFIX`]`NAME-R`
//! (docs/orchestration.md). `workd` runs them only while the lease `orchd` last set holds:
//! a deadline on the kernel's monotonic clock, which `orchd` and `workd` share (a deadline,
//! not a duration, so that the call's own delay cannot push it later than `orchd`'s lease).
//! Once it passes without renewal `workd` powers every cluster replica off and destroys
//! it once its microVM ended (as `orchd`, more gently, does when its lease runs out); a `Create` or `Start`
//! of a cluster replica without the lease is refused ([`Error::NoLease`]). Node-level
//! workloads are not touched. A restarted `workd` knows no lease: the cluster replicas it
//! adopts are stopped at once, and `orchd` starts them again under its lease.

use crate::logring::LogChunk;
use crate::spec::{SpecError, WorkloadSpec};
use crate::status::{State, Status, Summary, WorkloadId};
use crate::store::ImageInfo;
use crate::vmctl::StoreInfo;
use crate::Digest;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// The request label ("WK" in the high half).
pub const LABEL_REQUEST: u64 = 0x574b_0001;
/// Reply label: the answer is in the buffer, word 0 = its length.
pub const TRANSPORT_OK: u64 = 0;

pub const REQUEST_MAX: usize = 16 * 1024;
pub const REPLY_MAX: usize = 16 * 1024;
/// A client buffer this large holds any request and any answer.
pub const BUFFER_MIN: usize = 16 * 1024;
/// Workloads one node's service holds (created and not destroyed).
pub const WORKLOADS_MAX: usize = 32;
/// Bytes one `Logs` request returns at most.
pub const LOG_READ_MAX: u32 = 8 * 1024;
/// Longest grace period a stop may ask for, and the default.
pub const GRACE_MAX_MS: u32 = 300_000;
pub const GRACE_DEFAULT_MS: u32 = 10_000;
/// Highest signal number a `Signal` request may name.
pub const SIGNAL_MAX: u8 = 64;
/// The workd name prefix of the cluster's replicas (`orchd` runs replica R of cluster workload
/// NAME as `cl-NAME-R`; node-level workloads may not use it).
pub const CLUSTER_PREFIX: &str = "cl-";
/// The furthest past now a [`Request::ClusterLease`] deadline is kept (a later one is cut to
/// this; the cluster's lease is 2 s).
pub const LEASE_MAX_MS: u64 = 10_000;

/// Whether workload `name` is one of the cluster's replicas.
pub fn is_cluster_replica(name: &str) -> bool {
    name.starts_with(CLUSTER_PREFIX)
}

/// Why no answer was written (the reply's label when it is not [`TRANSPORT_OK`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Transport {
    /// The call brought no grant, or a read-only one.
    NoBuffer = 1,
    /// Word 0 is 0, larger than the grant, or larger than [`REQUEST_MAX`].
    BadLength = 2,
    /// The answer does not fit in the grant; word 1 = the bytes it needs.
    BufferTooSmall = 3,
    /// A label that is not [`LABEL_REQUEST`].
    UnknownLabel = 4,
}

impl Transport {
    pub fn from_label(l: u64) -> Option<Transport> {
        Some(match l {
            1 => Transport::NoBuffer,
            2 => Transport::BadLength,
            3 => Transport::BufferTooSmall,
            4 => Transport::UnknownLabel,
            _ => return None,
        })
    }
}

/// Which workload a request names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Id(WorkloadId),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Admit and name a workload (state `created`); nothing runs yet.
    Create(WorkloadSpec),
    /// Run it (from `created`, `exited` or `failed`); resets its restart count.
    Start(Target),
    /// Stop it: the image's StopSignal, SIGKILL when `grace_ms` (default
    /// [`GRACE_DEFAULT_MS`], at most [`GRACE_MAX_MS`]) has passed, then power-off 5 s later. A
    /// stopped workload is not restarted by its policy.
    Stop { target: Target, grace_ms: Option<u32> },
    /// Forget a workload that is not running; its memory goes back to the node.
    Destroy(Target),
    List,
    Status(Target),
    /// Log bytes from `cursor` (0: the oldest kept), at most `max` (capped at
    /// [`LOG_READ_MAX`]). Follow by passing the answer's `next` back.
    Logs { target: Target, cursor: u64, max: u32 },
    /// The node's image store.
    Images,
    /// Deliver `signal` (1..=64) to a running workload's processes (through its init).
    Signal { target: Target, signal: u8 },
    /// Push an image into the node's store: `manifest` is its `image.json` (whose sha256 is
    /// `image`). Answers [`Reply::Upload`]: `present` (nothing to send) or the upload to send
    /// the stream `config.json ‖ rootfs.squashfs` to — the one already in progress for that
    /// image, if any (resume: send what is missing again; sending a range twice is harmless).
    ImageBegin { image: Digest, manifest: Vec<u8> },
    /// `len` bytes of an upload's stream at `offset`, in the request's grant at
    /// [`CHUNK_OFFSET`] (the grant must reach that far); kept only when their sha256 is
    /// `digest`. Any order, any ranges, at most [`CHUNK_MAX`] bytes.
    ImageChunk { upload: u32, offset: u64, len: u32, digest: Digest },
    /// Verify the whole image against its digest and put it in the store ([`Reply::Image`]);
    /// a mismatch refuses it ([`Error::ImageInvalid`]) and frees the upload.
    ImageCommit { upload: u32 },
    ImageAbort { upload: u32 },
    /// Take an image out of the store; refused while a workload (of any state) names it.
    RemoveImage(Digest),
    /// Read a stored image for another node that fetches it: its `image.json` (`manifest`), or
    /// at most `len` ([`CHUNK_MAX`]) bytes of its stream `config.json ‖ rootfs.squashfs` from
    /// `offset`. The bytes go to the request's grant at [`CHUNK_OFFSET`] (which must reach
    /// `CHUNK_OFFSET + len`); the answer is [`Reply::Read`] with their count.
    ImageRead { image: Digest, manifest: bool, offset: u64, len: u32 },
    /// The store's use of memory.
    Store,
    /// The node's resources: CPUs online, memory total and free now (the kernel's figures),
    /// and what admission has committed to workloads out of its capacity ([`Reply::Node`]).
    Node,
    /// (`orchd` only; see "The cluster lease" above.) The cluster's replicas may run here
    /// until `until_ns` on the kernel's monotonic clock (`now_ns`): the instant `orchd`'s own
    /// lease runs out. 0, or any instant already past: no lease (they stop now). Replaces the
    /// deadline set before, earlier or later; at most [`LEASE_MAX_MS`] from now is kept.
    /// Answers [`Reply::Done`]; [`Error::NotOrchestrator`] from any other client.
    ClusterLease { until_ns: u64 },
    /// (`orchd` only: [`Error::NotOrchestrator`] from any other client.) The spec a workload
    /// was created with ([`Reply::Spec`]; env and args included): what `orchd` compares with
    /// the cluster's desired spec to replace an outdated replica.
    Spec(Target),
}

/// [`Request::Node`]'s answer, in MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub cpus: u32,
    pub memory_total_mib: u64,
    /// Free frames now (guest RAM is taken as guests touch it).
    pub memory_free_mib: u64,
    /// Guest memory plus overhead of the workloads admitted (created and not destroyed).
    pub memory_committed_mib: u64,
    /// What admission may commit in all (the free memory when the service started, less the
    /// node's reserve).
    pub memory_capacity_mib: u64,
}

/// Where an [`Request::ImageChunk`]'s bytes start in the grant.
pub const CHUNK_OFFSET: usize = REQUEST_MAX;
/// Largest chunk.
pub const CHUNK_MAX: usize = crate::vmctl::WRITE_MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Created(WorkloadId),
    Done,
    List(Vec<Summary>),
    Status(Status),
    Logs(LogChunk),
    Images(Vec<ImageInfo>),
    /// [`Request::ImageBegin`]: the image is in the store (`present`, upload 0), or the upload
    /// to send its `size` stream bytes to.
    Upload { upload: u32, size: u64, present: bool },
    Image(ImageInfo),
    Store(StoreInfo),
    Node(NodeResources),
    /// [`Request::ImageRead`]: this many bytes are in the grant at [`CHUNK_OFFSET`].
    Read { len: u32 },
    Spec(WorkloadSpec),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error {
    /// Not a valid request encoding.
    Malformed,
    BadSpec(SpecError),
    NoSuchWorkload,
    NameInUse,
    /// No image with that digest in the node's store.
    NoSuchImage,
    /// It does not fit: the memory it needs (guest memory plus the node's overhead) and what is
    /// free for workloads, in MiB. Nothing was created.
    NoMemory { need_mib: u64, free_mib: u64 },
    TooManyWorkloads,
    /// Not possible in this state (start while running, destroy while running…).
    BadState(State),
    /// Valid, but this node cannot do it (e.g. more than one vCPU per microVM).
    Unsupported,
    /// The kernel refused to create the microVM.
    VmRefused,
    /// A signal number outside 1..=64.
    BadSignal,
    /// Every network link of the node is taken ([`crate::net::LINKS_MAX`] workloads with
    /// network exist): destroy one, or create this one without network. Nothing was created.
    NoNetworkLink,
    /// A workload uses the image.
    ImageInUse,
    /// The pushed bytes are not the image (digest, sizes or manifest): refused, upload freed.
    ImageInvalid,
    /// A chunk whose bytes do not have its digest: not kept, send it again.
    ChunkDigest,
    /// No such upload (committed, aborted or expired), or a chunk outside it.
    NoSuchUpload,
    /// The store's quota cannot hold the image, or too many uploads are in progress.
    StoreFull,
    /// [`Request::ClusterLease`] from a client that is not the node's `orchd`.
    NotOrchestrator,
    /// A cluster replica ([`CLUSTER_PREFIX`]) is created or started only while the cluster
    /// lease holds.
    NoLease,
}

impl Error {
    pub fn message(&self) -> &'static str {
        match self {
            Error::Malformed => "malformed request",
            Error::BadSpec(e) => e.message(),
            Error::NoSuchWorkload => "no such workload",
            Error::NameInUse => "a workload with this name exists",
            Error::NoSuchImage => "no image with this digest in the node's store",
            Error::NoMemory { .. } => "not enough free memory on the node for this workload",
            Error::TooManyWorkloads => "the node holds the most workloads it may",
            Error::BadState(_) => "not possible in the workload's state",
            Error::Unsupported => "not supported on this node",
            Error::VmRefused => "the kernel refused to create the microVM",
            Error::BadSignal => "a signal number outside 1-64",
            Error::NoNetworkLink => "all 8 network links of the node are taken: destroy a workload with network, or create this one without (net none)",
            Error::ImageInUse => "a workload uses this image",
            Error::ImageInvalid => "the pushed bytes are not the image they were announced as: refused",
            Error::ChunkDigest => "the chunk's bytes do not have its digest: send it again",
            Error::NoSuchUpload => "no such upload (committed, aborted or expired), or a chunk outside it",
            Error::StoreFull => "the image store has no room (quota, or too many uploads at once)",
            Error::NotOrchestrator => "only the node's orchestration service (orchd) may set the cluster lease",
            Error::NoLease => "a cluster replica (cl-…) runs only while the cluster lease holds, and it does not",
        }
    }
}

pub type Response = Result<Reply, Error>;

/// Decode a request (hostile bytes: never panics; trailing bytes are malformed).
pub fn decode_request(bytes: &[u8]) -> Result<Request, Error> {
    if bytes.is_empty() || bytes.len() > REQUEST_MAX {
        return Err(Error::Malformed);
    }
    match postcard::take_from_bytes::<Request>(bytes) {
        Ok((r, [])) => Ok(r),
        _ => Err(Error::Malformed),
    }
}

pub fn encode_request(r: &Request) -> Option<Vec<u8>> {
    postcard::to_allocvec(r).ok().filter(|b| b.len() <= REQUEST_MAX)
}

pub fn encode_response(r: &Response) -> Option<Vec<u8>> {
    postcard::to_allocvec(r).ok().filter(|b| b.len() <= REPLY_MAX)
}

/// Decode an answer (the client's side; `workd` is trusted less than nothing by a parser).
pub fn decode_response(bytes: &[u8]) -> Option<Response> {
    if bytes.len() > REPLY_MAX {
        return None;
    }
    match postcard::take_from_bytes::<Response>(bytes) {
        Ok((r, [])) => Some(r),
        _ => None,
    }
}
