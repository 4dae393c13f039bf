//! Writes to the cluster's replicated desired state, through the node's orchestration service
//! (`orchd`, IPC protocol in `catenary_cluster::orch`): the write goes in a granted buffer,
//! `orchd` answers at once with a ticket (it proposes on the leader or forwards there), and the
//! ticket is asked about until the write is committed, failed, or [`WRITE_MS`] passed.

use catenary_api::{ApiError, ClusterWrite};
use catenary_cluster::orch::{IPC_FAILED, IPC_FULL, IPC_OK, IPC_PENDING, IPC_REFUSED, LABEL_LIST, LABEL_TICKET, LABEL_WRITE};
use catenary_cluster::put_change::PutChange;
use catenary_cluster::raft_codec::{encode, Wire};
use catenary_user::{alive, call_grant, call_timeout, now_ns, sleep_ns, Pages};

/// A write's whole time (orchd answers a write with no outcome after 5 s as unconfirmed).
pub const WRITE_MS: u64 = 8_000;

/// `node`: the key of the node a `Drain` names.
/// For a put, what it did as the log applied it (`None`: orchd did not say).
pub fn write(buf: &Pages, orchd: u64, w: ClusterWrite, node: Option<[u8; 32]>) -> Result<Option<PutChange>, ApiError> {
    propose(buf, orchd, catenary_api::cluster_state::command(w, node))
}

/// Commit one command through `orchd`, waiting for it.
pub fn propose(buf: &Pages, orchd: u64, c: catenary_cluster::desired::Command) -> Result<Option<PutChange>, ApiError> {
    let unavailable = || ApiError::new(503, "cluster_unavailable", "the cluster has no leader now, or orchd did not take the write: try again");
    // Once a leader holds the write, no answer in time does not mean "not applied": a leader
    // cut off from the majority may commit it after it is elected again (Raft keeps its log).
    let unconfirmed = || ApiError::new(503, "cluster_unavailable", "the write was proposed but its commit was not confirmed in time: it may still take effect (check `catenary ps` / `catenary nodes` before retrying)");
    let bytes = encode(&Wire::Propose { request: 0, command: c });
    if bytes.len() as u64 > buf.len() {
        return Err(ApiError::bad_request("the workload is too large for the cluster's log"));
    }
    buf.write(0, &bytes);
    let full = || ApiError::new(503, "desired_state_full", "the cluster's desired state has no room for this write (it is bounded by the nodes' memory; remove workloads to make room; docs/orchestration.md, Bounds)");
    let ticket = match call_grant(orchd, LABEL_WRITE, bytes.len() as u64, 0, buf, bytes.len() as u64, false) {
        Ok(m) if m.label == IPC_OK => m.words[0],
        Ok(m) if m.label == IPC_FULL => return Err(full()),
        Ok(m) if m.label == IPC_REFUSED => return Err(ApiError::bad_request("refused by the cluster: too large for one datagram, or not a write an operator makes")),
        _ => return Err(unavailable()),
    };
    let end = now_ns() / 1_000_000 + WRITE_MS;
    while now_ns() / 1_000_000 < end {
        // the wait goes on (bounded by WRITE_MS): not a hang of apid's loop
        let _ = alive(crate::HEARTBEAT_MS);
        match call_timeout(orchd, LABEL_TICKET, [ticket, 0, 0, 0], 1000) {
            Ok(m) if m.label == IPC_OK => return Ok(PutChange::from_words([m.words[0], m.words[1]])),
            Ok(m) if m.label == IPC_PENDING => sleep_ns(50_000_000),
            Ok(m) if m.label == IPC_FULL => return Err(full()),
            // Not applied: committed and refused by the state machine (the same on every
            // node), overwritten by a new leader before it committed, or not taken by the
            // leader it was forwarded to.
            Ok(m) if m.label == IPC_FAILED => return Err(ApiError::new(409, "write_not_applied", "the cluster did not apply this write: its state refused it (for `node remove`: it would leave fewer admitted nodes than a majority of the Raft voters, so the cluster could lose quorum for good; docs/orchestration.md) or a leader change dropped it (check, then retry)")),
            // IPC_UNCONFIRMED (no outcome in time), an unknown label or a failed call: the
            // write may or may not have happened.
            _ => return Err(unconfirmed()),
        }
    }
    Err(unconfirmed())
}

/// Workloads listed at most (an answer of about 1 KiB of JSON each, within apid's heap).
pub const LIST_MAX: usize = 1024;

/// The committed desired state, page by page from `orchd` (`LABEL_LIST`, a
/// `catenary_cluster::listing` page in the granted buffer), at most [`LIST_MAX`] workloads;
/// and how many the state holds.
pub fn list(buf: &Pages, orchd: u64) -> Result<(alloc::vec::Vec<catenary_cluster::listing::Listed>, u32), ApiError> {
    use catenary_cluster::listing::{decode_page, PAGE_MAX};
    let unavailable = || ApiError::new(503, "cluster_unavailable", "the orchestration service has no desired state yet (it is joining the cluster); try again");
    let len = (PAGE_MAX as u64).min(buf.len());
    let mut out = alloc::vec::Vec::new();
    let mut start = 0u64;
    let mut total: u32;
    loop {
        let m = call_grant(orchd, LABEL_LIST, start, 0, buf, len, true).map_err(|_| unavailable())?;
        if m.label != IPC_OK || m.words[0] > len {
            return Err(unavailable());
        }
        let mut b = alloc::vec![0u8; m.words[0] as usize];
        buf.read(0, &mut b);
        let page = decode_page(&b).map_err(|_| ApiError::new(500, "internal", "the orchestration service answered out of protocol"))?;
        total = page.total;
        out.extend(page.entries);
        // no progress, the end, or enough
        if u64::from(page.next) <= start || page.next >= page.total || out.len() >= LIST_MAX {
            break;
        }
        start = u64::from(page.next);
    }
    out.truncate(LIST_MAX);
    Ok((out, total))
}
