//! Writes to the cluster's replicated desired state, through the node's orchestration service
//! (`orchd`, IPC protocol in `catenary_cluster::orch`): the write goes in a granted buffer,
//! `orchd` answers at once with a ticket (it proposes on the leader or forwards there), and the
//! ticket is asked about until the write is committed, failed, or [`WRITE_MS`] passed.

use catenary_api::{ApiError, ClusterWrite};
use catenary_cluster::desired::{Command, RestartPolicy as R, WorkloadSpec};
use catenary_cluster::orch::{IPC_OK, IPC_PENDING, IPC_REFUSED, LABEL_TICKET, LABEL_WRITE};
use catenary_cluster::raft_codec::{encode, Wire};
use catenary_user::{call_grant, call_timeout, now_ns, sleep_ns, Pages};
use catenary_workload::RestartPolicy;

/// A write's whole time (orchd gives up on a forwarded write after 5 s).
pub const WRITE_MS: u64 = 8_000;

fn command(w: ClusterWrite, node: Option<[u8; 32]>) -> Command {
    match w {
        ClusterWrite::Put { spec, replicas } => Command::PutWorkload(WorkloadSpec {
            name: spec.name,
            image: spec.image.0,
            replicas,
            vcpus: spec.vcpus as u32,
            mem_mib: spec.memory_mib as u64,
            // `NAME=value` entries (checked by the spec)
            env: spec.env.iter().map(|e| e.split_once('=').map(|(k, v)| (k.into(), v.into())).unwrap_or_else(|| (e.clone(), alloc::string::String::new()))).collect(),
            args: spec.args.unwrap_or_default(),
            restart: match spec.restart {
                RestartPolicy::No => R::No,
                RestartPolicy::OnFailure { limit } => R::OnFailure { max_restarts: limit },
                RestartPolicy::Always => R::Always,
            },
            constraints: alloc::vec::Vec::new(),
        }),
        ClusterWrite::Remove(name) => Command::RemoveWorkload(name),
        // the caller resolved the node's key (a name no member has is refused before)
        ClusterWrite::Drain(_) => Command::Drain(catenary_cluster::NodeKey(node.unwrap_or([0; 32]))),
    }
}

/// `node`: the key of the node a `Drain` names.
pub fn write(buf: &Pages, orchd: u64, w: ClusterWrite, node: Option<[u8; 32]>) -> Result<(), ApiError> {
    let unavailable = || ApiError::new(503, "cluster_unavailable", "the cluster has no leader now (or it did not commit in time); try again");
    let bytes = encode(&Wire::Propose { request: 0, command: command(w, node) });
    if bytes.len() as u64 > buf.len() {
        return Err(ApiError::bad_request("the workload is too large for the cluster's log"));
    }
    buf.write(0, &bytes);
    let ticket = match call_grant(orchd, LABEL_WRITE, bytes.len() as u64, 0, buf, bytes.len() as u64, false) {
        Ok(m) if m.label == IPC_OK => m.words[0],
        Ok(m) if m.label == IPC_REFUSED => return Err(ApiError::bad_request("refused by the cluster: too large for one datagram, or not a write an operator makes")),
        _ => return Err(unavailable()),
    };
    let end = now_ns() / 1_000_000 + WRITE_MS;
    while now_ns() / 1_000_000 < end {
        match call_timeout(orchd, LABEL_TICKET, [ticket, 0, 0, 0], 1000) {
            Ok(m) if m.label == IPC_OK => return Ok(()),
            Ok(m) if m.label == IPC_PENDING => sleep_ns(50_000_000),
            _ => return Err(unavailable()),
        }
    }
    Err(unavailable())
}
