//! apid: the operator API service (docs/api.md). Serves `catenary_api::Api` — HTTP/1.1 + JSON,
//! `/v1/…` — on the node's fabric /128, TCP port 8080, through `netd`'s sockets
//! (`catenary_user::netsock_client`, docs/networking.md §3c); every request becomes calls of
//! the workload protocol to `workd` (`catenary_workload::proto`, through a granted buffer).
//!
//! Granted (manifest entry `apid`): its endpoint (slot 0, unused today), send capabilities
//! with GRANT to `workd` (slot 1), `netd` (slot 2), `orchd` (slot 3) and `memberd` (slot 4:
//! the member table, admissions), a send capability to the kernel's power endpoint (slot 5:
//! the power button's orderly shutdown, `shutdown.rs`), and a memory quota for its heap.
//!
//! - **Who calls.** The cluster file (`netd`'s `LABEL_CLUSTER`) lists the operators with their
//!   roles and the nodes. The fabric delivers a packet only when its source lies in the /64 of
//!   the key whose session carried it, so a connection's peer /128 names the caller's key
//!   (`Operators::caller_of`); a connection from no known key is closed without an answer.
//! - **Bounded.** At most [`CONNS_MAX`] connections at once (a connection beyond them gets 503
//!   and is closed); each has its `RequestReader` (head, body and the 10 s deadline of
//!   `catenary_api::http::Limits`) and at most [`CONN_LIFE_MS`] in all, answer included.
//! - **Never waits for another node.** A request forwarded to other nodes (`forward.rs`) and
//!   an image fetch (`fetch.rs`) are exchanges (`outbound.rs`) the loop moves when `netd`
//!   reports their sockets ready: a connection whose request is forwarded waits, parked, for
//!   the other nodes' answers while every other connection, the fetch and the ticks are served.
//!   At most [`FORWARDS_MAX`] connections are parked at once (one more gets 503 `busy`), with
//!   at most [`ASKS_MAX`] asks in flight; a read asks the other nodes together. A parked
//!   connection whose operator hangs up (FIN or reset) is freed at once, with its asks.
//! - `Api::tick` runs every second (events, idle uploads), and so does the power button's
//!   check (`shutdown.rs`: leave, drain, switch off).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

#[path = "apid/cluster.rs"]
mod cluster;
#[path = "apid/fetch.rs"]
mod fetch;
#[path = "apid/forward.rs"]
mod forward;
#[path = "apid/outbound.rs"]
mod outbound;
#[path = "apid/shutdown.rs"]
mod shutdown;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_api::auth::{hex, hex32, Operators};
use catenary_api::http::{Limits, RequestReader};
use catenary_api::types::{Node as ApiNode, NodeState};
use catenary_api::upload::UploadLimits;
use catenary_api::{Api, ApiError, Backend};
use catenary_ipc::netd::{CLUSTER_NOT_READY, CLUSTER_NO_GRANT, CLUSTER_TOO_SMALL, LABEL_CLUSTER};
use catenary_netsock::{Handle, Kind, Local, NetError, Ready, BACKLOG_MAX, GRANT_MAX};
use catenary_user::netsock_client::Sockets;
use catenary_user::*;
use catenary_workload::proto::{self as wk, decode_response, encode_request, BUFFER_MIN, CHUNK_OFFSET, LABEL_REQUEST, TRANSPORT_OK};
use core::net::Ipv6Addr;
use netfabric::identity::Prefix64;

const WORKD: u64 = 1;
const NETD: u64 = 2;
/// The orchestration service: cluster writes (`POST /v1/cluster/workloads`).
const ORCHD: u64 = 3;
/// The membership service: the member table, admissions.
const MEMBERD: u64 = 4;
/// The kernel's power endpoint: the power button and soft-off (`shutdown.rs`).
const POWER: u64 = 5;
/// 8 MiB of heap (quota 2560 pages): connections' requests and answers, pushes, events.
const HEAP_PAGES: u64 = 2048;
/// The heartbeat's period (`SYS_ALIVE`): a turn waits at most 1 s in its poll; a cluster
/// write's wait inside the turn (up to `cluster::WRITE_MS` each) beats as it goes.
const HEARTBEAT_MS: u64 = 30_000;
/// Connections served at once (parked ones included).
const CONNS_MAX: usize = 4;
/// Connections whose request waits for other nodes' answers at once: two operators' polls
/// (`ps`, `logs -f`) go on together; a third gets 503 `busy` (before this node acts on it)
/// rather than waiting behind them.
const FORWARDS_MAX: usize = 2;
/// Asks (exchanges with other nodes) in flight across the parked requests: `netd` gives a
/// client `SOCKETS_PER_CLIENT` (12) sockets: one is the listener, one the image fetch's
/// exchange, [`CONNS_MAX`] the connections', the rest (6) these. A read through this node asks
/// every other node at once while it has sockets (`catenary_api::cluster::Forwards` shares
/// them between the parked requests).
const ASKS_MAX: usize = catenary_netsock::SOCKETS_PER_CLIENT - 2 - CONNS_MAX;
const _: () = assert!(ASKS_MAX >= FORWARDS_MAX);
/// A connection's whole life (request and answer): a client that does not read its answer
/// loses the connection.
const CONN_LIFE_MS: u64 = 30_000;
/// The cluster file's largest size (`netd`'s boot data is at most 64 KiB).
const CLUSTER_MAX: usize = 64 * 1024;
/// Bytes moved per socket call.
const IO: usize = 16 * 1024;

entry!(run);

/// Where the buffers lent to `workd` and `netd` live (their own pages, not the heap).
const WK_VA: u64 = 0x2000_0000;
const IO_VA: u64 = 0x2010_0000;
const CLUSTER_VA: u64 = 0x2020_0000;
const MEMBERS_VA: u64 = 0x2040_0000;
/// The buffer lent to `workd`: a request, and an image chunk at `CHUNK_OFFSET`.
const WK_BYTES: usize = CHUNK_OFFSET + catenary_api::upload::CHUNK_SIZE;

/// The node, as the API sees it: `workd` over IPC, the cluster as `netd` knows it.
struct Node {
    wk: Pages,
    cluster: Pages,
    /// Where `memberd` writes its member table.
    table: Pages,
    /// `workd` did not answer one of this request's calls (the answer becomes 503).
    workd_down: bool,
    /// The node's /128 (where the listener is bound).
    me: Option<Ipv6Addr>,
    /// The cluster's nodes (name, /128), in the file's order.
    members: Vec<(String, Ipv6Addr)>,
    /// The nodes the cluster admitted at run time (`catenary node add`), from `netd`'s
    /// admission table on each tick: name (`node-XXXXXXXX`), key, /128, whether a fabric
    /// session with it is up. Gathers and forwards reach them as they reach the file's.
    runtime: Vec<(String, [u8; 32], Ipv6Addr, bool)>,
}

/// The cluster file and which of its nodes are up (`LABEL_CLUSTER`).
fn cluster_file(buf: &Pages) -> Result<(String, u64), String> {
    let m = call_grant(NETD, LABEL_CLUSTER, 0, 0, buf, CLUSTER_MAX as u64, true).map_err(|e| alloc::format!("netd: IPC error {e}"))?;
    match m.label {
        0 => {
            let mut b = alloc::vec![0u8; (m.words[0] as usize).min(CLUSTER_MAX)];
            buf.read(0, &mut b);
            let text = String::from_utf8(b).map_err(|_| String::from("the cluster file is not UTF-8"))?;
            Ok((text, m.words[1]))
        }
        CLUSTER_NOT_READY => Err(String::from("netd is not up yet")),
        CLUSTER_TOO_SMALL => Err(alloc::format!("the cluster file has {} bytes, more than {CLUSTER_MAX}", m.words[0])),
        l => Err(alloc::format!("netd refused the cluster request ({l})")),
    }
}

impl Node {
    /// [`Node::runtime`] from `netd`'s admission table: the admitted keys the file does not
    /// list (neither pending nor removed).
    fn refresh_runtime(&mut self) {
        let file: Vec<Ipv6Addr> = self.members.iter().map(|m| m.1).collect();
        self.runtime = admission_nodes(&self.cluster, &[])
            .into_iter()
            .filter(|n| NodeState::Up.is(&n.state) || NodeState::Unreachable.is(&n.state))
            .filter_map(|n| {
                let key = catenary_api::auth::hex32(&n.public_key)?;
                let addr = Prefix64::from_public_key(&key).node_address();
                (!file.contains(&addr)).then(|| (n.name, key, addr, NodeState::Up.is(&n.state)))
            })
            .collect();
    }

    /// One workload-protocol call: the request at the buffer's start, `chunk` (an image
    /// chunk's bytes, or nothing) at `CHUNK_OFFSET`, the grant covering both.
    fn call_workd(&mut self, req: &wk::Request, chunk: &[u8]) -> wk::Response {
        let Some(b) = encode_request(req) else { return Err(wk::Error::Malformed) };
        if b.len() > CHUNK_OFFSET || chunk.len() > WK_BYTES - CHUNK_OFFSET {
            return Err(wk::Error::Malformed);
        }
        self.wk.write(0, &b);
        let mut len = BUFFER_MIN;
        if !chunk.is_empty() {
            self.wk.write(CHUNK_OFFSET as u64, chunk);
            len = CHUNK_OFFSET + chunk.len();
        }
        match call_grant(WORKD, LABEL_REQUEST, b.len() as u64, 0, &self.wk, len as u64, true) {
            Ok(m) if m.label == TRANSPORT_OK => {
                let mut back = alloc::vec![0u8; (m.words[0] as usize).min(BUFFER_MIN)];
                self.wk.read(0, &mut back);
                decode_response(&back).unwrap_or_else(|| {
                    self.workd_down = true;
                    Err(wk::Error::Malformed)
                })
            }
            _ => {
                self.workd_down = true;
                Err(wk::Error::Malformed)
            }
        }
    }

    /// A node's key from its name or 64-hex key: a cluster file's member, or a key the
    /// cluster admitted at run time (netd's admission table; named `node-XXXXXXXX`).
    fn node_key(&self, n: &str) -> Option<[u8; 32]> {
        let members = cluster_file(&self.cluster).ok().and_then(|(t, _)| catenary_net::Cluster::parse(&t).ok()).map(|c| c.members).unwrap_or_default();
        if let Some(m) = members.iter().find(|m| m.name == n || hex(&m.public_key) == n) {
            return Some(m.public_key);
        }
        if let Some(k) = self.own_runtime_key().filter(|k| catenary_net::admission::short(k) == n || hex(k) == n) {
            return Some(k);
        }
        admission_nodes(&self.cluster, &[]).iter().filter(|r| !NodeState::Pending.is(&r.state)).find(|r| r.name == n || r.public_key == n).and_then(|r| catenary_api::auth::hex32(&r.public_key))
    }

    /// This node's key: the cluster file's member at this node's /128, or a node admitted at
    /// run time ([`Node::own_runtime_key`]).
    fn own_key(&self) -> Option<[u8; 32]> {
        let me = self.me?;
        let members = cluster_file(&self.cluster).ok().and_then(|(t, _)| catenary_net::Cluster::parse(&t).ok()).map(|c| c.members).unwrap_or_default();
        if let Some(m) = members.iter().find(|m| Prefix64::from_public_key(&m.public_key).node_address() == me) {
            return Some(m.public_key);
        }
        self.own_runtime_key()
    }

    /// This node's key when it is no member of the cluster file (admitted at run time):
    /// `memberd`'s own row, if its /128 is this node's. (`netd`'s admission table lists the
    /// run-time keys of the *other* nodes: a node is not its own fabric peer.)
    fn own_runtime_key(&self) -> Option<[u8; 32]> {
        self.own_runtime_key_in(&member_table(&self.table))
    }

    /// [`Node::own_runtime_key`] from a member table already read.
    fn own_runtime_key_in(&self, table: &[catenary_cluster::service::Row]) -> Option<[u8; 32]> {
        let me = self.me?;
        let k = table.iter().find(|r| r.own).map(|r| r.id.key.0)?;
        (Prefix64::from_public_key(&k).node_address() == me && !self.members.iter().any(|m| m.1 == me)).then_some(k)
    }

    /// This node (`key`, shown as `name`) leaves: `memberd` announces the leave first (the
    /// others show it `left` at once), then its drain is committed (its replicas stop as it
    /// applies the `Unassign` and start elsewhere).
    fn leave_here(&mut self, key: [u8; 32], name: &str) -> Result<(), ApiError> {
        use catenary_cluster::service as svc;
        match call_timeout(MEMBERD, svc::LABEL_LEAVE, [0; 4], 2000) {
            Ok(r) if r.label == svc::OK => {}
            _ => return Err(ApiError::new(503, "memberd_unavailable", "the node's membership service did not leave")),
        }
        cluster::write(&self.wk, ORCHD, catenary_api::ClusterWrite::Drain(name.into()), Some(key)).map(|_| ())
    }

    /// Every admitted node's labels as placement sees them (`orchd`'s `LABEL_LABELS`); empty
    /// when `orchd` has no state yet.
    fn labels(&self) -> BTreeMap<[u8; 32], BTreeMap<String, String>> {
        use catenary_cluster::orch::{IPC_OK, LABEL_LABELS};
        let len = (catenary_cluster::listing::PAGE_MAX as u64).min(self.wk.len());
        match call_grant(ORCHD, LABEL_LABELS, 0, 0, &self.wk, len, true) {
            Ok(m) if m.label == IPC_OK && m.words[0] <= len => {
                let mut b = alloc::vec![0u8; m.words[0] as usize];
                self.wk.read(0, &mut b);
                catenary_cluster::listing::decode_labels(&b).map(|t| t.into_iter().map(|(k, l)| (k.0, l)).collect()).unwrap_or_default()
            }
            _ => BTreeMap::new(),
        }
    }
}

impl Backend for Node {
    fn workd(&mut self, req: wk::Request) -> wk::Response {
        self.call_workd(&req, &[])
    }

    fn nodes(&mut self) -> Vec<ApiNode> {
        let Ok((text, up)) = cluster_file(&self.cluster) else { return Vec::new() };
        let Ok(c) = catenary_net::Cluster::parse(&text) else { return Vec::new() };
        // this node: its workloads, and its CPUs and memory as the kernel and workd report them
        let count = match self.workd(wk::Request::List) {
            Ok(wk::Reply::List(l)) => Some(l.len() as u32),
            _ => None,
        };
        let res = match self.workd(wk::Request::Node) {
            Ok(wk::Reply::Node(r)) => Some(r),
            _ => None,
        };
        // its store: the room the scheduler is told of, and the images its index holds
        let store = match (self.workd(wk::Request::Store), self.workd(wk::Request::Images)) {
            (Ok(wk::Reply::Store(s)), Ok(wk::Reply::Images(l))) => Some((s, l.len())),
            _ => None,
        };
        let me = self.me;
        let table = member_table(&self.table);
        // a key's newest generation (a killed node that rejoined has its old, dead row too)
        let member = |k: &[u8; 32]| table.iter().filter(|r| r.id.key.0 == *k).max_by_key(|r| (r.id.generation, r.incarnation));
        let labels = self.labels();
        let admission = admission_nodes(&self.cluster, &table);
        // this node, admitted at run time: netd's table lists the others only, so its row is
        // made here, with its own figures as a file member's
        let own_rt = self.own_runtime_key_in(&table).filter(|k| !admission.iter().any(|n| n.public_key == hex(k)));
        let own_row = own_rt.map(|k| ApiNode {
            name: catenary_net::admission::short(&k),
            public_key: hex(&k),
            address: alloc::format!("{}", Prefix64::from_public_key(&k).node_address()),
            state: NodeState::Up.name().into(),
            cpus: res.map(|r| r.cpus),
            memory_total_mib: res.map(|r| r.memory_total_mib),
            memory_free_mib: res.map(|r| r.memory_free_mib),
            memory_committed_mib: res.map(|r| r.memory_committed_mib),
            workloads: count,
            store_free_mib: store.as_ref().map(|(s, n)| s.room_mib(*n)),
            images: store.as_ref().map(|(_, n)| *n as u32),
            membership: member(&k).map(|t| catenary_cluster::service::state_name(t.state).into()),
            incarnation: member(&k).map(|t| t.incarnation),
            mac: None,
            labels: labels.get(&k).cloned(),
        });
        // a file node the cluster removed (`catenary node remove`) is shown once, as removed
        let removed = |k: &[u8; 32]| admission.iter().any(|n| NodeState::Removed.is(&n.state) && n.public_key == hex(k));
        c.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let addr = Prefix64::from_public_key(&m.public_key).node_address();
                let this = Some(addr) == me;
                // `up` for another node until its gather says otherwise (cluster::elsewhere):
                // a session is established and the membership has not declared it dead
                let state = if removed(&m.public_key) {
                    NodeState::Removed
                } else if this || (i < 64 && up & (1 << i) != 0) {
                    NodeState::Up
                } else {
                    NodeState::Unreachable
                };
                let mut row = ApiNode {
                    name: m.name.clone(),
                    public_key: hex(&m.public_key),
                    address: alloc::format!("{addr}"),
                    state: state.name().into(),
                    cpus: res.filter(|_| this).map(|r| r.cpus),
                    memory_total_mib: res.filter(|_| this).map(|r| r.memory_total_mib),
                    memory_free_mib: res.filter(|_| this).map(|r| r.memory_free_mib),
                    memory_committed_mib: res.filter(|_| this).map(|r| r.memory_committed_mib),
                    workloads: count.filter(|_| this),
                    store_free_mib: store.as_ref().filter(|_| this).map(|(s, n)| s.room_mib(*n)),
                    images: store.as_ref().filter(|_| this).map(|(_, n)| *n as u32),
                    membership: member(&m.public_key).map(|r| catenary_cluster::service::state_name(r.state).into()),
                    incarnation: member(&m.public_key).map(|r| r.incarnation),
                    mac: None,
                    labels: labels.get(&m.public_key).cloned(),
                };
                if !this {
                    catenary_api::cluster::not_up_when_dead(&mut row);
                }
                row
            })
            .chain(admission.iter().filter(|n| !c.members.iter().any(|m| hex(&m.public_key) == n.public_key)).cloned().map(|mut n| {
                n.labels = catenary_api::auth::hex32(&n.public_key).and_then(|k| labels.get(&k).cloned());
                catenary_api::cluster::not_up_when_dead(&mut n);
                n
            }))
            .chain(own_row)
            .collect()
    }

    fn workd_chunk(&mut self, req: wk::Request, bytes: &[u8]) -> wk::Response {
        self.call_workd(&req, bytes)
    }

    /// An `ImageRead`: the whole buffer lent (workd writes the bytes at `CHUNK_OFFSET`).
    fn workd_read(&mut self, req: wk::Request) -> Result<Vec<u8>, wk::Error> {
        let b = encode_request(&req).ok_or(wk::Error::Malformed)?;
        if b.len() > CHUNK_OFFSET {
            return Err(wk::Error::Malformed);
        }
        self.wk.write(0, &b);
        let m = call_grant(WORKD, LABEL_REQUEST, b.len() as u64, 0, &self.wk, WK_BYTES as u64, true).map_err(|_| wk::Error::Malformed)?;
        if m.label != TRANSPORT_OK {
            return Err(wk::Error::Malformed);
        }
        let mut back = alloc::vec![0u8; (m.words[0] as usize).min(BUFFER_MIN)];
        self.wk.read(0, &mut back);
        match decode_response(&back).ok_or(wk::Error::Malformed)?? {
            wk::Reply::Read { len } if (len as usize) <= WK_BYTES - CHUNK_OFFSET => {
                let mut out = alloc::vec![0u8; len as usize];
                self.wk.read(CHUNK_OFFSET as u64, &mut out);
                Ok(out)
            }
            _ => Err(wk::Error::Malformed),
        }
    }

    fn cluster(&mut self, w: catenary_api::ClusterWrite) -> Result<Option<catenary_cluster::put_change::PutChange>, ApiError> {
        let node = match &w {
            // any node, by name or key: the cluster file's, or one admitted at run time
            // (node-XXXXXXXX, as `catenary nodes` and `catenary ps` name it)
            catenary_api::ClusterWrite::Drain(n)
            | catenary_api::ClusterWrite::Undrain(n)
            | catenary_api::ClusterWrite::Label { node: n, .. }
            | catenary_api::ClusterWrite::RemoveNode(n) => match self.node_key(n) {
                Some(k) => Some(k),
                None => return Err(ApiError::new(404, "no_such_node", "no node of the cluster file, nor one admitted at run time, has that name or key")),
            },
            _ => None,
        };
        cluster::write(&self.wk, ORCHD, w, node)
    }

    fn cluster_workloads(&mut self) -> Result<(Vec<catenary_api::types::ClusterWorkloadStatus>, u32), ApiError> {
        let (entries, total) = cluster::list(&self.wk, ORCHD)?;
        let members = cluster_file(&self.cluster).ok().and_then(|(t, _)| catenary_net::Cluster::parse(&t).ok()).map(|c| c.members).unwrap_or_default();
        let me = self.me;
        let own = members.iter().find(|m| Some(Prefix64::from_public_key(&m.public_key).node_address()) == me).map(|m| m.public_key).or_else(|| self.own_runtime_key());
        // a node admitted at run time by the name `catenary nodes` gives it
        let name_of = |k: &[u8; 32]| members.iter().find(|m| m.public_key == *k).map(|m| m.name.clone()).unwrap_or_else(|| catenary_net::admission::short(k));
        // the state of the replicas assigned here: this node's workload list
        let local = match self.workd(wk::Request::List) {
            Ok(wk::Reply::List(l)) => l,
            _ => Vec::new(),
        };
        // a replica assigned here, not created yet, whose image the store lacks: fetching-image
        let images: Vec<catenary_workload::Digest> = match self.workd(wk::Request::Images) {
            Ok(wk::Reply::Images(l)) => l.iter().map(|i| i.digest).collect(),
            _ => Vec::new(),
        };
        Ok((catenary_api::cluster_state::statuses(entries, &name_of, own, &local, &images), total))
    }
    /// This node leaves: `memberd` announces the leave first (the others show it `left` at
    /// once), then the drain of this node is committed (its replicas stop as it applies the
    /// Unassign and start elsewhere). Another member's name: `Ok(false)`, forwarded there.
    fn leave(&mut self, node: &str) -> Result<bool, ApiError> {
        // a member of the file, or a node admitted at run time (node-XXXXXXXX), as drain takes it
        let Some(key) = self.node_key(node) else {
            return Err(ApiError::new(404, "no_such_node", "no node of the cluster file, nor one admitted at run time, has that name"));
        };
        if Some(Prefix64::from_public_key(&key).node_address()) != self.me {
            return Ok(false);
        }
        self.leave_here(key, node)?;
        Ok(true)
    }

    fn admit_node(&mut self, key: [u8; 32]) -> Result<(), ApiError> {
        // Committed in the replicated desired state; every node's fabric and membership
        // admit it from there (orchd hands it to netd; memberd reads netd's table).
        cluster::propose(&self.wk, ORCHD, catenary_cluster::desired::Command::AdmitNode(catenary_cluster::NodeKey(key))).map(|_| ())
    }
}

/// The nodes admitted at run time (after the file's) and the pending ones, from `netd`'s
/// admission table; membership from `memberd`'s table.
fn admission_nodes(buf: &Pages, table: &[catenary_cluster::service::Row]) -> Vec<ApiNode> {
    use catenary_ipc::netd::LABEL_ADMISSION;
    use catenary_net::admission::RowKind;
    let Ok(m) = call_grant(NETD, LABEL_ADMISSION, 0, 0, buf, CLUSTER_MAX as u64, true) else { return Vec::new() };
    if m.label != 0 || m.words[0] as usize > CLUSTER_MAX {
        return Vec::new();
    }
    let mut b = alloc::vec![0u8; m.words[0] as usize];
    buf.read(0, &mut b);
    let rows = catenary_net::admission::decode_table(&b).unwrap_or_default();
    rows.iter()
        .map(|r| {
            let member = table.iter().filter(|t| t.id.key.0 == r.key).max_by_key(|t| (t.id.generation, t.incarnation));
            let m = r.mac;
            let pending = r.kind == RowKind::Pending;
            ApiNode {
                name: catenary_net::admission::short(&r.key),
                public_key: hex(&r.key),
                address: alloc::format!("{}", Prefix64::from_public_key(&r.key).node_address()),
                state: match r.kind {
                    RowKind::Removed => NodeState::Removed,
                    RowKind::Pending => NodeState::Pending,
                    RowKind::Admitted if r.established => NodeState::Up,
                    RowKind::Admitted => NodeState::Unreachable,
                }
                .name()
                .into(),
                cpus: pending.then_some(r.cpus as u32),
                memory_total_mib: pending.then_some(r.mem_mib as u64),
                memory_free_mib: None,
                memory_committed_mib: None,
                workloads: None,
                store_free_mib: None,
                images: None,
                membership: member.map(|t| catenary_cluster::service::state_name(t.state).into()),
                incarnation: member.map(|t| t.incarnation),
                mac: pending.then(|| alloc::format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])),
                labels: None,
            }
        })
        .collect()
}

/// `memberd`'s member table (empty when it answers out of protocol).
fn member_table(buf: &Pages) -> Vec<catenary_cluster::service::Row> {
    use catenary_cluster::service as svc;
    let Ok(m) = call_grant(MEMBERD, svc::LABEL_MEMBERS, 0, 0, buf, buf.len(), true) else { return Vec::new() };
    if m.label != svc::OK || m.words[0] > buf.len() {
        return Vec::new();
    }
    let mut b = alloc::vec![0u8; m.words[0] as usize];
    buf.read(0, &mut b);
    svc::decode(&b).unwrap_or_default()
}

struct Conn {
    h: Handle,
    caller: [u8; 32],
    /// The peer is a node's own /128 (not merely an address in its /64, which its microVMs
    /// share): only then may it forward a request on an operator's behalf.
    from_node: bool,
    reader: RequestReader,
    /// The answer once there is one, and how much of it `netd` took.
    out: Option<Vec<u8>>,
    /// This connection's number (its parked request's key in the `Forwarder`).
    id: u64,
    /// Parked: the request waits for other nodes' answers (`out` comes when they are in).
    parked: bool,
    sent: usize,
    born_ms: u64,
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

fn run(_arg: u64) -> u64 {
    if !dma::init_mapped(HEAP_PAGES) {
        log("apid: no heap");
        return 99;
    }
    let pages = |n: usize| (n as u64).div_ceil(4096);
    let (Ok(wk), Ok(io), Ok(cluster), Ok(table)) = (Pages::map(WK_VA, pages(WK_BYTES)), Pages::map(IO_VA, pages(IO)), Pages::map(CLUSTER_VA, pages(CLUSTER_MAX)), Pages::map(MEMBERS_VA, pages(catenary_cluster::service::table_len(catenary_cluster::service::ROWS_MAX)))) else {
        log("apid: no memory for its buffers");
        return 98;
    };
    let mut node = Node { wk, cluster, table, workd_down: false, me: None, members: Vec::new(), runtime: Vec::new() };
    // the cluster file: who may call (netd answers once the network is up)
    // Wait for netd with a call that lends nothing (a node without a network never runs
    // netd: apid then waits here for ever, holding no grant), then ask for the file through a
    // grant. One call at a time: nothing piles up in netd's queue.
    let mut power = shutdown::Shutdown::default();
    loop {
        match call(NETD, LABEL_CLUSTER, [0; 4]) {
            Ok(m) if m.label == CLUSTER_NO_GRANT => break,
            _ => {
                power.before_cluster();
                sleep_ns(1_000_000_000)
            }
        }
    }
    let mut asked = false;
    let operators = loop {
        match cluster_file(&node.cluster) {
            Ok((text, _)) => match Operators::parse(&text) {
                Ok(o) if catenary_net::Cluster::parse(&text).is_ok() => {
                    if let Ok(c) = catenary_net::Cluster::parse(&text) {
                        node.members = c.members.iter().map(|m| (m.name.clone(), Prefix64::from_public_key(&m.public_key).node_address())).collect();
                    }
                    break o;
                }
                Ok(o) => break o,
                Err(e) => {
                    logf!("apid: the cluster file's operators are refused ({}): no operator may call", e);
                    break Operators::default();
                }
            },
            Err(e) => {
                if !asked {
                    logf!("apid: no cluster file yet ({}); asking again every second", e);
                    asked = true;
                }
                power.before_cluster();
                sleep_ns(1_000_000_000);
            }
        }
    };
    let s = Sockets { slot: NETD };
    let listener = match s.socket(Kind::Tcp).and_then(|h| s.bind(h, Local::Node, catenary_api::PORT).map(|a| (h, a))).and_then(|(h, a)| s.listen(h, BACKLOG_MAX as u8).map(|_| (h, a))) {
        Ok((h, (addr, port))) => {
            node.me = Some(addr);
            logf!("apid: serving the operator API on [{}]:{} ({} operators, {} nodes)", addr, port, operators.operators.len(), operators.node_keys.len());
            h
        }
        Err(e) => {
            logf!("apid: cannot listen on the node's /128 port {}: {:?}", catenary_api::PORT, e);
            return 2;
        }
    };
    // the file's node keys; those admitted at run time are added on each tick
    let file_node_keys = operators.node_keys.clone();
    let mut api = Api::new(operators, UploadLimits::default());
    let mut conns: Vec<Conn> = Vec::new();
    // connections closed for being of no known key (the log shows the 1st, 2nd, 4th, …)
    let mut strangers = 0u64;
    let mut next_tick = now_ms();
    let mut fetcher = fetch::Fetcher::default();
    let mut forwarder = forward::Forwarder::new(FORWARDS_MAX, ASKS_MAX);
    let mut next_id = 0u64;
    loop {
        // A turn waits at most 1 s in its poll (a call to netd: excused).
        let _ = alive(HEARTBEAT_MS);
        let now = now_ms();
        if now >= next_tick {
            // a node admitted at run time is a node to this API as the file's are: it may
            // forward an operator's request here, and gathers ask it
            node.refresh_runtime();
            api.operators.node_keys = file_node_keys.iter().copied().chain(node.runtime.iter().map(|r| r.1)).collect();
            api.tick(&mut node, now);
            power.tick(&mut node, now);
            next_tick = now + 1000;
            fetcher.ask(ORCHD, now, || other_nodes(&mut node));
        }
        // the loop waits in POLL until a socket is ready (an exchange's included), the next
        // tick, or the earliest exchange's deadline
        let deadline = forwarder.deadline_ms().into_iter().chain(fetcher.deadline_ms()).min().unwrap_or(u64::MAX);
        let wait = next_tick.min(deadline).saturating_sub(now).clamp(1, 1000);
        let ready = match s.poll(wait) {
            Ok(r) => r,
            Err(e) => {
                // netd restarted: its sockets are gone; so is this service's state of them
                logf!("apid: netd's poll failed ({:?}): starting again", e);
                return 3;
            }
        };
        // the image fetch: what its exchange's socket allows, the next request once it is in
        let mut busy = fetcher.step(&s, &io, &ready, &mut node);
        if ready.acceptable & Ready::bit(listener) != 0 {
            busy = true;
            accept(&s, listener, &api.operators, &mut conns, &io, &mut strangers, &mut next_id);
        }
        // the parked requests: the other nodes' answers, as their sockets allow
        for (id, answer) in forwarder.step(&s, &io, &ready, now_ms(), &mut busy) {
            if let Some(c) = conns.iter_mut().find(|c| c.id == id) {
                c.parked = false;
                c.out = Some(answer);
            }
        }
        let mut i = 0;
        while i < conns.len() {
            let c = &mut conns[i];
            let bit = Ready::bit(c.h);
            let now = now_ms();
            let done = if now > c.born_ms + CONN_LIFE_MS {
                true
            } else if c.parked {
                // a reset or failed connection: nobody waits for the answer; its place and
                // sockets go now, not when the other nodes have answered. A FIN alone is a
                // client that half-closed after its request and still reads the answer.
                ready.hangup & bit != 0 && peer_gone(&s, c.h, &io)
            } else if c.out.is_none() {
                if ready.readable & bit != 0 || ready.hangup & bit != 0 {
                    busy = true;
                    read(&s, c, &mut api, &mut node, &io, &mut forwarder)
                } else if let Err(e) = c.reader.check_deadline(now) {
                    c.out = Some(e.to_response().to_bytes());
                    false
                } else {
                    false
                }
            } else {
                false
            };
            let done = done || (c.out.is_some() && (ready.writable & bit != 0 || ready.hangup & bit != 0) && {
                busy = true;
                write(&s, c, &io)
            });
            if done {
                if c.parked {
                    busy = true;
                    forwarder.gone(&s, c.id, now);
                }
                let _ = s.close(c.h);
                conns.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if !busy {
            // POLL reports a connection that waits for its request as writable: nothing to do
            sleep_ns(5_000_000);
        }
    }
}

/// Take the waiting connections: known callers get a reader, a connection from no known key
/// is closed unanswered, and one beyond [`CONNS_MAX`] gets 503.
fn accept(s: &Sockets, listener: Handle, ops: &Operators, conns: &mut Vec<Conn>, io: &Pages, strangers: &mut u64, next_id: &mut u64) {
    while let Ok((h, peer, _port)) = s.accept(listener) {
        let prefix_of = |k: &[u8; 32]| Prefix64::from_public_key(k).0;
        let Some(caller) = ops.caller_of(&peer.octets(), prefix_of) else {
            // logged at 1, 2, 4, 8, …: a guest that connects in a loop cannot flood the console
            *strangers += 1;
            if strangers.is_power_of_two() {
                logf!("apid: a connection from {}, of no key in the cluster file: closed ({} such so far)", peer, strangers);
            }
            let _ = s.close(h);
            continue;
        };
        if conns.len() >= CONNS_MAX {
            let b = ApiError::new(503, "busy", "the node serves its most connections at once; try again").to_response().to_bytes();
            let n = b.len().min(IO);
            io.write(0, &b[..n]);
            let _ = s.send(h, io, n as u64);
            let _ = s.close(h);
            continue;
        }
        // caller_of names a node only at its own ::1, never a microVM or task of its /64
        let from_node = ops.node_keys.contains(&caller);
        let now = now_ms();
        *next_id += 1;
        conns.push(Conn { h, caller, from_node, reader: RequestReader::new(Limits::default(), now), out: None, id: *next_id, parked: false, sent: 0, born_ms: now });
    }
}

/// Read what came; once the request is whole (or refused), the answer, or the exchanges that
/// ask the other nodes for theirs (parked in `forwarder`). True: close it now.
fn read(s: &Sockets, c: &mut Conn, api: &mut Api, node: &mut Node, io: &Pages, forwarder: &mut forward::Forwarder) -> bool {
    let mut data = alloc::vec![0u8; IO];
    for _ in 0..32 {
        let n = match s.recv(c.h, io, IO as u64) {
            // nothing more yet (a request larger than what has arrived: an image chunk)
            Err(e) if e.is(NetError::WouldBlock) => return false,
            Ok(0) | Err(_) => return true, // the peer closed or reset before its request was whole
            Ok(n) => n.min(IO),
        };
        io.read(0, &mut data[..n]);
        let now = now_ms();
        match c.reader.feed(&data[..n], now) {
            Ok(None) => continue,
            Ok(Some(req)) => {
                // a node may forward an operator's request (forward.rs); nobody else may say
                // whom a request is for
                let from_node = c.from_node;
                let caller = match (&req.on_behalf_of, from_node) {
                    (Some(k), true) => match hex32(k) {
                        Some(k) => k,
                        None => {
                            c.out = Some(ApiError::bad_request("Catenary-On-Behalf-Of: not a 64-hex key").to_response().to_bytes());
                            return false;
                        }
                    },
                    _ => c.caller,
                };
                // a forwarded request is never forwarded again (from_node)
                let forwards = !from_node && api.operators.by_key(&caller).is_some() && catenary_api::cluster::concerns_others(&req);
                // the other nodes as the membership sees them: a request none of them is
                // asked for (every other node dead or left) needs no room to park
                let others = if forwards { other_nodes(node) } else { Vec::new() };
                if forwards && !forwarder.has_room() && others.iter().any(|o| o.2.asked_for(&req)) {
                    // refused before this node acts on it: a retry does not do it twice
                    c.out = Some(ApiError::new(503, "busy", "the node is waiting for other nodes' answers to its most requests at once; try again").to_response().to_bytes());
                    return false;
                }
                node.workd_down = false;
                let mut resp = api.handle(&caller, &req, node, now);
                if node.workd_down {
                    resp = ApiError::new(503, "workd_unavailable", "the node's workload service did not answer").to_response();
                }
                if forwards {
                    let own = node.members.iter().find(|m| Some(m.1) == node.me).map(|m| m.0.clone());
                    match forwarder.park(s, c.id, req, resp, own, others, caller, now) {
                        Some(answer) => c.out = Some(answer),
                        None => c.parked = true,
                    }
                    return false;
                }
                c.out = Some(resp.to_bytes());
                return false;
            }
            Err(e) => {
                c.out = Some(e.to_response().to_bytes());
                return false;
            }
        }
    }
    false
}

/// Whether the peer of a parked connection that `POLL` reported as hung up is gone. `RECV`
/// tells the two hangups apart: 0 bytes is the peer's FIN (a client that shut down its
/// sending side after the request, as `nc -N` or `shutdown(SHUT_WR)` clients do, and waits
/// for the answer); an error is a reset or a failed connection. Bytes after the request are
/// dropped (one request per connection).
fn peer_gone(s: &Sockets, h: Handle, io: &Pages) -> bool {
    match s.recv(h, io, IO as u64) {
        Ok(_) => false,
        Err(e) => !e.is(NetError::WouldBlock),
    }
}

/// The other nodes (name, /128, how they can be reached: [`forward::Reach`]), those with a
/// session first. One without a session is asked too (an idle session lapses), with less
/// time; one the membership declared dead (its key's newest generation) is not asked, and
/// one that left only for the node listing.
fn other_nodes(node: &mut Node) -> Vec<forward::Other> {
    use catenary_cluster::membership::MemberState;
    use forward::Reach;
    let up = cluster_file(&node.cluster).map(|(_, up)| up).unwrap_or(0);
    let states: Vec<(Ipv6Addr, MemberState)> = catenary_cluster::service::newest_states(&member_table(&node.table)).into_iter().map(|(k, s)| (Prefix64::from_public_key(&k.0).node_address(), s)).collect();
    let reach = |addr: Ipv6Addr, session: bool| match states.iter().find(|s| s.0 == addr).map(|s| s.1) {
        Some(MemberState::Dead) => Reach::Dead,
        Some(MemberState::Left) => Reach::Left,
        _ if session => Reach::Session,
        _ => Reach::Idle,
    };
    let mut v: Vec<forward::Other> = node.members.iter().enumerate().filter(|(_, m)| Some(m.1) != node.me).map(|(i, m)| (m.0.clone(), m.1, reach(m.1, i < 64 && up & (1 << i) != 0))).collect();
    // then the nodes admitted at run time (as of the last tick)
    v.extend(node.runtime.iter().filter(|r| Some(r.2) != node.me).map(|r| (r.0.clone(), r.2, reach(r.2, r.3))));
    v.sort_by_key(|o| o.2 != Reach::Session);
    v
}

/// Send what `netd` takes of the answer. True: all of it is sent (close: `netd` lingers to
/// deliver it and the FIN), or the connection failed.
fn write(s: &Sockets, c: &mut Conn, io: &Pages) -> bool {
    let Some(out) = &c.out else { return false };
    while c.sent < out.len() {
        let n = (out.len() - c.sent).min(IO).min(GRANT_MAX as usize);
        io.write(0, &out[c.sent..c.sent + n]);
        match s.send(c.h, io, n as u64) {
            Ok(0) => return false,
            Ok(k) => c.sent += k.min(n),
            Err(e) if e.is(NetError::WouldBlock) => return false, // the socket's buffer is full
            Err(_) => return true,
        }
    }
    true
}
