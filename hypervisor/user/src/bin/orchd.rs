//! orchd: the orchestration service (docs/orchestration.md, "On nodes"). Runs this node's
//! [`catenary_cluster::orch::Orch`] — its Raft replica of the desired state, the leader's
//! scheduler, the diskless rejoin — over the fabric, and makes the local workload service
//! (`workd`) run exactly the replicas the committed state assigns this node while its lease
//! holds.
//!
//! Granted (manifest entry `orchd`): send capabilities with GRANT to `workd` (slot 1) and
//! `netd` (slot 2), and a memory quota for its heap and buffers.
//!
//! - **Fabric.** One UDP socket on the node's /128, port [`PORT`], through `netd`'s sockets.
//!   A datagram is taken only from a cluster member's node /128 (the fabric delivers a packet
//!   only when its source lies in the /64 of the key whose session carried it, and the exact
//!   /128 leaves out the workloads of that node): the member's index is what `Orch` is told.
//! - **Clock**: the kernel's monotonic clock (`now_ns`); leases assume clocks that run at
//!   about the same rate, not synchronized ones.
//! - **workd.** Cluster replicas are workd workloads named `cl-NAME-REPLICA`; every
//!   [`CONVERGE_MS`] the service lists them, creates and starts what is assigned and missing,
//!   stops and destroys what is not assigned (or everything once the lease ran out). Every
//!   [`CAPACITY_MS`] it asks workd (`Request::Node`) for its CPUs and admission's memory.
//! - **The lease, at workd.** Whenever this node's lease deadline changes (at most every
//!   [`LEASE_TELL_MS`] for a renewal, at once when it starts or ends, and on the first turn)
//!   the service tells workd (`Request::ClusterLease`): the instant on the kernel's monotonic
//!   clock its own lease runs out, 0 without one. workd stops the cluster replicas there
//!   itself, so a dead, restarting or hung `orchd` cannot leave them running past its lease.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_cluster::desired::Command;
use catenary_cluster::orch::{Orch, OrchConfig, SubmitError, TicketStatus, IPC_FAILED, IPC_FULL, IPC_OK, IPC_PENDING, IPC_REFUSED, IPC_UNAVAILABLE, IPC_UNCONFIRMED, IPC_UNKNOWN, LABEL_LABELS, LABEL_LIST, LABEL_TICKET, LABEL_WANTED, LABEL_WRITE};
use catenary_cluster::raft_codec::{decode, replica_tag, HealthyReplica, Wire};
use catenary_cluster::service::{FabricHand, PeerChange};
use catenary_cluster::NodeKey;
use catenary_ipc::netd::{CLUSTER_NOT_READY, CLUSTER_NO_GRANT, LABEL_ADMIT_PEER, LABEL_CLUSTER, LABEL_SELF};
use catenary_netsock::{DgramHeader, Local, Ready, DGRAM_HEADER, UDP_PAYLOAD_MAX};
use catenary_user::netsock_client::Sockets;
use catenary_user::*;
use catenary_workload::proto::{self as wk, decode_response, encode_request, Target, BUFFER_MIN, LABEL_REQUEST, TRANSPORT_OK};
use catenary_workload::replicas::{self, Replicas, Wanted};
use catenary_workload::spec::WorkloadSpec;
use catenary_workload::Digest;
use core::cell::Cell;
use core::net::Ipv6Addr;
use core::time::Duration;
use netfabric::identity::Prefix64;

const WORKD: u64 = 1;
const NETD: u64 = 2;
/// 4 MiB of heap: the replica's log and state, datagrams, workd answers.
const HEAP_PAGES: u64 = 1024;
/// The orchestration datagrams' port on every node's fabric /128.
pub const PORT: u16 = catenary_cluster::raft_codec::PORT;
const CLUSTER_MAX: usize = 64 * 1024;
const CONVERGE_MS: u64 = 250;
/// How soon workd is asked again while it stops a replica unassigned here.
const STOPPING_MS: u64 = 50;
const CAPACITY_MS: u64 = 1000;
/// The heartbeat's period (`SYS_ALIVE`): far over the longest turn `Watch` has logged.
const HEARTBEAT_MS: u64 = 10_000;
/// A renewed lease deadline is told to workd at most this often (the lease is 2 s).
const LEASE_TELL_MS: u64 = 100;
/// vCPUs of cluster replicas placed per CPU of the node.
const VCPUS_PER_CPU: u32 = 8;
/// At most one `N workloads in the desired state` line per this many ms.
const WORKLOADS_LOG_MS: u64 = 5_000;
/// The prefix of the workd names of cluster replicas.
const PREFIX: &str = catenary_workload::proto::CLUSTER_PREFIX;

const WK_VA: u64 = 0x2000_0000;
const IO_VA: u64 = 0x2010_0000;
const CLUSTER_VA: u64 = 0x2020_0000;
const IO: usize = DGRAM_HEADER + UDP_PAYLOAD_MAX;

entry!(run);

fn now() -> Duration {
    Duration::from_nanos(now_ns())
}

struct Workd {
    buf: Pages,
    /// The slowest request of the loop's current turn and how long it took (ms), for the
    /// stall log ([`Watch`]).
    slowest: Cell<(&'static str, u64)>,
}

impl Workd {
    fn call(&self, req: &wk::Request) -> Option<wk::Response> {
        let t0 = now_ns();
        let r = self.call_inner(req);
        let ms = (now_ns() - t0) / 1_000_000;
        if ms >= self.slowest.get().1 {
            self.slowest.set((request_name(req), ms));
        }
        r
    }

    fn call_inner(&self, req: &wk::Request) -> Option<wk::Response> {
        let b = encode_request(req)?;
        if b.len() > BUFFER_MIN {
            return None;
        }
        self.buf.write(0, &b);
        match call_grant(WORKD, LABEL_REQUEST, b.len() as u64, 0, &self.buf, BUFFER_MIN as u64, true) {
            Ok(m) if m.label == TRANSPORT_OK => {
                let mut back = alloc::vec![0u8; (m.words[0] as usize).min(BUFFER_MIN)];
                self.buf.read(0, &mut back);
                decode_response(&back)
            }
            _ => None,
        }
    }
}

fn request_name(r: &wk::Request) -> &'static str {
    match r {
        wk::Request::Create(_) => "Create",
        wk::Request::Start(_) => "Start",
        wk::Request::Stop { .. } => "Stop",
        wk::Request::Destroy(_) => "Destroy",
        wk::Request::List => "List",
        wk::Request::Images => "Images",
        wk::Request::Node => "Node",
        wk::Request::ClusterLease { .. } => "ClusterLease",
        wk::Request::Spec(_) => "Spec",
        _ => "other",
    }
}

/// A loop turn longer than this is logged (rate-limited): Raft's heartbeat is 100 ms and the
/// shortest election timeout 500 ms, so a turn this long already delays heartbeats and votes.
const SLOW_TURN_MS: u64 = 300;
/// At most one slow-turn line per this many ms; the stats line every this many ms.
const SLOW_LOG_MS: u64 = 10_000;
const STATS_MS: u64 = 60_000;

/// Where the loop's turns spend their time (docs/orchestration.md, "Leader stability"): each
/// turn is split into named parts; a turn over [`SLOW_TURN_MS`] is logged with its slowest
/// part and the slowest workd request in it, and every [`STATS_MS`] a summary line.
struct Watch {
    turn: u64,
    mark: u64,
    parts: Vec<(&'static str, u64)>,
    last_line: u64,
    /// Slow turns not logged since the last line, and the longest of them.
    quiet: (u64, u64),
    stats_at: u64,
    /// This period: turns, slow turns, the longest and its slowest part.
    turns: u64,
    slow: u64,
    longest: (u64, &'static str),
    longest_ever: u64,
}

impl Watch {
    fn new() -> Watch {
        let t = now_ns();
        Watch { turn: t, mark: t, parts: Vec::new(), last_line: 0, quiet: (0, 0), stats_at: t / 1_000_000 + STATS_MS, turns: 0, slow: 0, longest: (0, ""), longest_ever: 0 }
    }

    /// The part of the turn since the last mark was `name`.
    fn part(&mut self, name: &'static str) {
        let t = now_ns();
        self.parts.push((name, (t - self.mark) / 1_000_000));
        self.mark = t;
    }

    /// The turn ended: log it if it was slow, and the stats when due.
    fn end_turn(&mut self, workd: &Workd) {
        let t = now_ns();
        let ms = (t - self.turn) / 1_000_000;
        let now_ms = t / 1_000_000;
        let (call, call_ms) = workd.slowest.replace(("", 0));
        let worst = self.parts.iter().max_by_key(|p| p.1).copied().unwrap_or(("", 0));
        self.turns += 1;
        if ms > self.longest.0 {
            self.longest = (ms, worst.0);
        }
        self.longest_ever = self.longest_ever.max(ms);
        if ms > SLOW_TURN_MS {
            self.slow += 1;
            if now_ms.saturating_sub(self.last_line) >= SLOW_LOG_MS {
                let parts: Vec<String> = self.parts.iter().filter(|p| p.1 > 0).map(|p| format!("{} {}", p.0, p.1)).collect();
                let more = if self.quiet.0 > 0 { format!("; {} more over {} ms since the last line, longest {} ms", self.quiet.0, SLOW_TURN_MS, self.quiet.1) } else { String::new() };
                logf!("orchd: slow turn: {} ms ({} ms; slowest workd request {} {} ms){}", ms, parts.join(" ms, "), if call.is_empty() { "none" } else { call }, call_ms, more);
                self.last_line = now_ms;
                self.quiet = (0, 0);
            } else {
                self.quiet = (self.quiet.0 + 1, self.quiet.1.max(ms));
            }
        }
        if now_ms >= self.stats_at {
            logf!("orchd: turns in the last {} s: {}, longest {} ms ({}), {} over {} ms; longest since start {} ms", STATS_MS / 1000, self.turns, self.longest.0, self.longest.1, self.slow, SLOW_TURN_MS, self.longest_ever);
            self.stats_at = now_ms + STATS_MS;
            (self.turns, self.slow, self.longest) = (0, 0, (0, ""));
        }
        self.parts.clear();
        self.turn = t;
        self.mark = t;
    }
}

type Labels = BTreeMap<NodeKey, BTreeMap<String, String>>;

/// The cluster file's members (name, key, node /128) and their labels (`node` lines'
/// `KEY=VALUE` words, for placement constraints), once netd has it.
fn members(buf: &Pages) -> (Vec<(String, [u8; 32], Ipv6Addr)>, Labels) {
    loop {
        match call(NETD, LABEL_CLUSTER, [0; 4]) {
            Ok(m) if m.label == CLUSTER_NO_GRANT => break,
            _ => sleep_ns(1_000_000_000),
        }
    }
    let mut said = false;
    loop {
        match call_grant(NETD, LABEL_CLUSTER, 0, 0, buf, CLUSTER_MAX as u64, true) {
            Ok(m) if m.label == 0 => {
                let mut b = alloc::vec![0u8; (m.words[0] as usize).min(CLUSTER_MAX)];
                buf.read(0, &mut b);
                let parsed = core::str::from_utf8(&b).ok().and_then(|t| catenary_net::Cluster::parse(t).ok());
                match parsed {
                    Some(c) => {
                        let text = core::str::from_utf8(&b).unwrap_or("");
                        let labels: Labels = catenary_net::Cluster::labels(text).into_iter().map(|(k, l)| (NodeKey(k), l.into_iter().collect())).collect();
                        return (c.members.iter().map(|m| (m.name.clone(), m.public_key, Prefix64::from_public_key(&m.public_key).node_address())).collect(), labels);
                    }
                    None => {
                        log("orchd: the cluster file does not parse: no orchestration");
                        return (Vec::new(), Labels::new());
                    }
                }
            }
            Ok(m) if m.label == CLUSTER_NOT_READY => {}
            _ => {
                if !said {
                    log("orchd: no cluster file yet; asking again every second");
                    said = true;
                }
            }
        }
        sleep_ns(1_000_000_000);
    }
}

fn run(_arg: u64) -> u64 {
    if !dma::init_mapped(HEAP_PAGES) {
        log("orchd: no heap");
        return 99;
    }
    let pages = |n: usize| (n as u64).div_ceil(4096);
    let (Ok(wbuf), Ok(io), Ok(cbuf)) = (Pages::map(WK_VA, pages(BUFFER_MIN)), Pages::map(IO_VA, pages(IO)), Pages::map(CLUSTER_VA, pages(CLUSTER_MAX))) else {
        log("orchd: no memory for its buffers");
        return 98;
    };
    let workd = Workd { buf: wbuf, slowest: Cell::new(("", 0)) };
    let (members, labels) = members(&cbuf);
    if members.is_empty() || members.len() > catenary_cluster::orch::MEMBERS_MAX {
        logf!("orchd: {} cluster members: nothing to orchestrate", members.len());
        idle();
    }
    let s = Sockets { slot: NETD };
    // Before the bind: nothing can have arrived on the socket earlier (`empty_at` below).
    let bound_at = now();
    let (sock, me_addr) = match s.udp_bound(Local::Node, PORT) {
        Ok((h, a, _)) => (h, a),
        Err(e) => {
            logf!("orchd: cannot bind UDP port {} on the node's /128: {:?}", PORT, e);
            return 2;
        }
    };
    let own = own_key();
    // Replicas stop asynchronously (workd stops the microVM): the applied count this node
    // reports stays below an `Unassign` of a replica here until workd lists it stopped
    // (docs/orchestration.md, "Releases").
    let mut cfg = OrchConfig::default();
    cfg.replica.local_host = Some(NodeKey(own));
    let keys: Vec<NodeKey> = members.iter().map(|m| NodeKey(m.1)).collect();
    let file_len = members.len();
    let mut members = members;
    let mut by_addr: BTreeMap<Ipv6Addr, usize> = members.iter().enumerate().map(|(i, m)| (m.2, i)).collect();
    let mut orch = match members.iter().position(|m| m.2 == me_addr) {
        Some(me) => {
            let seed = rdtsc() ^ (me as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            logf!("orchd: member {} of {} ({}), UDP [{}]:{}; listening for a cluster", me, members.len(), members[me].0, me_addr, PORT);
            Orch::new(me, keys, cfg, seed, now())
        }
        None => {
            // A node in no cluster file (netbooted, its key made at boot): it takes part once
            // an admin admitted its key (`catenary node add`), under the index a member tells it.
            logf!("orchd: this node ([{}]) is in no cluster file: waiting to be admitted (asking the {} listed members every second)", me_addr, members.len());
            Orch::new_unlisted(keys, NodeKey(own), cfg, rdtsc(), now())
        }
    };
    for (k, l) in &labels {
        if !l.is_empty() {
            let name = members.iter().find(|m| m.1 == k.0).map(|m| m.0.as_str()).unwrap_or("?");
            let text: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
            logf!("orchd: {} has labels {}", name, text.join(" "));
        }
    }
    orch.set_labels(labels);
    // the digest workd reports a replica's spec by (a move for room waits on it)
    orch.set_replica_digest(|s, r| catenary_api::cluster_state::replica_spec(s, r).map(|x| x.digest().0));
    let mut placed = orch.member_index();
    // The committed admissions and removals netd took (`catenary node add`/`remove`).
    // netd may still drop file members a predecessor orchd removed: each is handed once
    let mut hand = FabricHand::at_orchd_start(&orch.members()[..file_len.min(orch.members().len())], own);
    let mut sock = sock;

    let mut next_converge = 0u64;
    let mut next_capacity = 0u64;
    let mut shown = Shown::default();
    // unknown: the first turn tells workd (a lease a dead predecessor set is ended at once)
    let mut told = Told { until_ns: u64::MAX, at_ms: 0, refused: false };
    let mut data = alloc::vec![0u8; IO];
    let mut watch = Watch::new();
    // When the socket was last found empty: every datagram received later arrived after it
    // (at first the bind: nothing arrived before it).
    let mut empty_at = bound_at;
    loop {
        // A turn waits at most 50 ms in its poll (waits for replies are excused): an orchd
        // whose loop stopped going round is hung, and is restarted.
        let _ = alive(HEARTBEAT_MS);
        watch.end_turn(&workd);
        let t = now();
        orch.tick(t);
        if orch.members().len() != members.len() {
            // Members admitted at run time, numbered alike on every node (the committed order).
            for k in &orch.members()[members.len()..] {
                members.push((catenary_net::admission::short(&k.0), k.0, Prefix64::from_public_key(&k.0).node_address()));
            }
            by_addr = members.iter().enumerate().map(|(i, m)| (m.2, i)).collect();
        }
        if orch.member_index() != placed {
            placed = orch.member_index();
            if let Some(i) = placed {
                logf!("orchd: admitted by the cluster: member {} of {}; listening for the leader", i, members.len());
            }
        }
        hand_peers(&orch, file_len, own, &mut hand);
        send_all(&s, sock, &io, &members, &mut orch);
        watch.part("tick and send");
        let ms = now_ns() / 1_000_000;
        if ms >= next_capacity {
            next_capacity = ms + CAPACITY_MS;
            // Admission's room, plus what the cluster's replicas assigned here hold in workd as
            // they were created (the scheduler subtracts their desired specs: a spec grown past
            // this node's room shows as the node over its capacity, and the replica is moved
            // where there is room; an assigned replica not created yet holds nothing, so its
            // room is not counted twice). The room first, then the list: only this service
            // creates or destroys an assigned replica, never between the two calls. Assigned by
            // the committed state, lease or not (a replica workd still holds in a lease gap is
            // held); no report before this node has a state. vCPUs are time-shared, not
            // reserved: at most VCPUS_PER_CPU per CPU are placed.
            if let (Some(mine), Some(Ok(wk::Reply::Node(n)))) = (orch.assigned_in_state(), workd.call(&wk::Request::Node)) {
                if let Some(Ok(wk::Reply::List(list))) = workd.call(&wk::Request::List) {
                    let assigned: BTreeSet<String> = mine.iter().filter_map(|(s, r)| catenary_api::cluster_state::replica_spec(s, *r)).map(|x| x.name).collect();
                    let own = replicas::held_mib(&list, &assigned);
                    let free = n.memory_capacity_mib.saturating_sub(n.memory_committed_mib);
                    orch.set_capacity(n.cpus.saturating_mul(VCPUS_PER_CPU), free + own);
                }
            }
            // The store's images (and their sizes) and its room go with the capacity: the
            // scheduler prefers holders and places a replica only where its image fits.
            // The store before the index: an upload that completes between the two is then
            // listed (uploading, then indexed), never missed.
            let store = match workd.call(&wk::Request::Store) {
                Some(Ok(wk::Reply::Store(st))) => Some(st),
                _ => None,
            };
            if let Some(Ok(wk::Reply::Images(l))) = workd.call(&wk::Request::Images) {
                let held = l.iter().map(|i| (i.digest.0, i.store_mib())).collect();
                match store {
                    // uploads under way go with the room they are already reserved from
                    Some(st) => orch.set_store(held, st.uploads_mib(&l).into_iter().map(|(d, mib)| (d.0, mib)).collect(), st.room_mib(l.len())),
                    None => orch.set_images(held, catenary_cluster::placement::STORE_UNKNOWN),
                }
            }
            watch.part("capacity");
        }
        tell_lease(&workd, &orch, t, ms, &mut told);
        if ms >= next_converge {
            next_converge = ms + CONVERGE_MS;
            let converged = converge(&workd, &orch, t, &mut shown);
            if converged.is_none() {
                // workd did not answer: nothing here is known healthy (reported at once)
                orch.set_healthy(now(), Vec::new());
            }
            if let Some(active) = converged {
                orch.set_local_runs(active);
                // what the other nodes' rolling updates wait for (sent with the capacity; not
                // renewed while workd does not answer, so it goes stale)
                let healthy = shown.replicas.healthy().iter().map(|(n, d)| HealthyReplica { tag: replica_tag(n), spec: d.0 }).collect();
                orch.set_healthy(now(), healthy);
            }
            // A replica unassigned here that workd still runs holds back the applied count
            // this node reports: look again soon, so that the move is not delayed for long.
            let held = orch.replica().map_or(0, |r| r.state().applied.saturating_sub(r.reported_applied()));
            if held > 0 {
                next_converge = ms + STOPPING_MS;
            }
            if (held > 0) != shown.held {
                shown.held = held > 0;
                match orch.replica() {
                    Some(r) if held > 0 => logf!("orchd: reporting {} commands applied, not {}: a replica unassigned here is not stopped yet", r.reported_applied(), r.state().applied),
                    _ => log("orchd: every replica unassigned here is stopped: reporting the state's applied count"),
                }
            }
            watch.part("converge");
        }
        shown.report(&orch, t, &members);
        for c in orch.take_scheduled() {
            let name = |k: &NodeKey| members.iter().find(|m| m.1 == k.0).map(|m| m.0.as_str()).unwrap_or("?");
            match c {
                Command::Assign { workload, replica, node } => logf!("orchd: scheduler: assign {}/{} to {}", workload, replica, name(&node)),
                Command::Unassign { workload, replica } => logf!("orchd: scheduler: unassign {}/{}", workload, replica),
                Command::Released { workload, replica } => logf!("orchd: scheduler: {}/{} released", workload, replica),
                other => logf!("orchd: scheduler: {:?}", other),
            }
        }
        // Writes from apid: taken between polls (at most one poll's wait late).
        while let Ok(m) = recv(0, 1) {
            if m.reply != 0 {
                serve(&mut orch, &m, shown.replicas.wanted_image());
            }
        }
        watch.part("log and ipc");
        let wait = (orch.next_deadline().saturating_sub(now()).as_millis() as u64).clamp(1, 50);
        let before_poll = now();
        let ready = match s.poll(wait) {
            Ok(r) => r,
            Err(e) if e.is(catenary_netsock::NetError::Restarted) => {
                // netd restarted from its boot configuration: it forgot the committed
                // removals (a removed file member is its peer again) and admissions. Bind
                // again and hand them all at once, before anything else (the Raft state here
                // is intact: this service goes on).
                match s.udp_bound(Local::Node, PORT) {
                    Ok((h, a, _)) if a == me_addr => sock = h,
                    other => {
                        logf!("orchd: netd restarted and the UDP port cannot be bound again ({:?}): starting again", other.map(|x| x.1));
                        return 3;
                    }
                }
                hand.netd_restarted();
                let n = orch.state().map_or(0, |st| hand.todo(st, &orch.members()[..file_len.min(orch.members().len())], own, usize::MAX).len());
                logf!("orchd: netd restarted: UDP port {} bound again; handing it {} admissions and removals of the committed state again", PORT, n);
                hand_peers(&orch, file_len, own, &mut hand);
                continue;
            }
            Err(e) => {
                logf!("orchd: netd's poll failed ({:?}): starting again", e);
                return 3;
            }
        };
        watch.part("poll");
        if ready.readable & Ready::bit(sock) == 0 {
            // the socket was empty when the poll looked, after `before_poll`
            empty_at = before_poll;
        } else {
            for _ in 0..32 {
                let looked = now();
                let n = match s.recv(sock, &io, IO as u64) {
                    Ok(n) => n.min(IO),
                    Err(e) => {
                        if e.is(catenary_netsock::NetError::WouldBlock) {
                            empty_at = looked;
                        }
                        break;
                    }
                };
                io.read(0, &mut data[..n]);
                let Ok((h, payload)) = DgramHeader::decode(&data[..n]) else { continue };
                // Only a member's node /128 speaks for that member. A datagram here arrived
                // after the socket was last found empty: a lease grant counts from then, not
                // from now (it may have waited behind a slow turn; review finding (d)).
                if let Some(&from) = by_addr.get(&h.addr) {
                    orch.handle_received(now(), empty_at, from, payload);
                }
            }
            send_all(&s, sock, &io, &members, &mut orch);
            watch.part("receive");
        }
    }
}

/// This node's fabric public key (`netd`'s `LABEL_SELF`), waiting until it answers.
fn own_key() -> [u8; 32] {
    loop {
        if let Ok(m) = call(NETD, LABEL_SELF, [0; 4]) {
            if m.label == 0 {
                return catenary_cluster::service::words_key(m.words);
            }
        }
        sleep_ns(500_000_000);
    }
}

/// Give `netd` what it lacks of the committed admissions and removals ([`FabricHand`]): every
/// node does this from its own committed state. A removed key is dropped from the fabric
/// (`netd` removes the peer, `memberd` then revokes it); a key admitted at run time, or a file
/// member removed and admitted again, is taken as a peer. Removals first.
fn hand_peers(orch: &Orch, file_len: usize, own: [u8; 32], hand: &mut FabricHand) {
    let file = &orch.members()[..file_len.min(orch.members().len())];
    let mut changes = hand.unsure_todo(orch.state(), 8);
    if let Some(st) = orch.state() {
        changes.extend(hand.todo(st, file, own, 8));
    }
    for c in changes {
        let (label, k) = match c {
            PeerChange::Admit(k) => (LABEL_ADMIT_PEER, k),
            PeerChange::Remove(k) => (catenary_ipc::netd::LABEL_REMOVE_PEER, k),
        };
        match call_timeout(NETD, label, catenary_cluster::service::key_words(&k), 1000) {
            Ok(m) if m.label == 0 || m.label == catenary_ipc::netd::ADMIT_REFUSED => {
                let refused = if m.label == 0 { "" } else { " (netd refused: see its log)" };
                match c {
                    PeerChange::Admit(_) => logf!("orchd: {} ({}) is admitted in the desired state: the fabric takes it as a peer{}", catenary_net::admission::short(&k), catenary_net::cluster::hex_encode(&k), refused),
                    PeerChange::Remove(_) => logf!("orchd: {} ({}) is removed in the desired state: the fabric dropped it{}", catenary_net::admission::short(&k), catenary_net::cluster::hex_encode(&k), refused),
                }
                hand.done(c);
            }
            _ => return, // asked again next round
        }
    }
}

/// No orchestration on this node: answer every write "unavailable", for ever.
fn idle() -> ! {
    loop {
        if let Ok(m) = recv(0, 0) {
            if m.reply != 0 {
                let _ = reply(m.reply, IPC_UNAVAILABLE, [0; 4]);
            }
        }
    }
}

/// One IPC request (module comment of `catenary_cluster::orch`: `LABEL_WRITE`, `LABEL_TICKET`,
/// `LABEL_WANTED`). `wanted`: the image the longest-waiting replica here needs.
fn serve(orch: &mut Orch, m: &Msg, wanted: Option<Digest>) {
    let answer = |label: u64, w0: u64| {
        let _ = reply(m.reply, label, [w0, 0, 0, 0]);
    };
    match m.label {
        LABEL_WRITE => {
            let Some(g) = grant_of(m.reply) else { return answer(IPC_REFUSED, 0) };
            let n = m.words[0];
            if n == 0 || n > g.len() || n > catenary_cluster::raft_codec::DATAGRAM_MAX as u64 {
                return answer(IPC_REFUSED, 0);
            }
            let mut b = alloc::vec![0u8; n as usize];
            g.read(0, &mut b);
            let Ok(Wire::Propose { command, .. }) = decode(&b) else { return answer(IPC_REFUSED, 0) };
            match orch.submit(now(), command) {
                Ok(t) => answer(IPC_OK, t),
                Err(SubmitError::Refused) => answer(IPC_REFUSED, 0),
                Err(SubmitError::Unavailable) => answer(IPC_UNAVAILABLE, 0),
                Err(SubmitError::Full) => answer(IPC_FULL, 0),
            }
        }
        LABEL_WANTED => match wanted {
            // the image the longest-waiting replica needs
            Some(d) => {
                let w = |i: usize| u64::from_le_bytes(d.0[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                let _ = reply(m.reply, IPC_OK, [w(0), w(1), w(2), w(3)]);
            }
            None => answer(IPC_UNKNOWN, 0),
        },
        LABEL_TICKET => match orch.ticket(now(), m.words[0]) {
            // for a put, what it did as the log applied it (0: not known)
            TicketStatus::Committed(change) => {
                let [kind, fields] = change.map(|c| c.to_words()).unwrap_or([0, 0]);
                let _ = reply(m.reply, IPC_OK, [kind, fields, 0, 0]);
            }
            TicketStatus::Pending => answer(IPC_PENDING, 0),
            TicketStatus::Failed => answer(IPC_FAILED, 0),
            TicketStatus::Unknown => answer(IPC_UNKNOWN, 0),
            TicketStatus::Full => answer(IPC_FULL, 0),
            TicketStatus::Unconfirmed => answer(IPC_UNCONFIRMED, 0),
        },
        LABEL_LIST => {
            // A page of the committed state from workload words[0], into the caller's grant.
            let Some(g) = grant_of(m.reply).filter(|g| g.writable()) else { return answer(IPC_REFUSED, 0) };
            let max = (g.len() as usize).min(catenary_cluster::listing::PAGE_MAX);
            let start = usize::try_from(m.words[0]).unwrap_or(usize::MAX);
            match orch.list_page(start, max) {
                Some(page) if page.len() <= max => {
                    g.write(0, &page);
                    answer(IPC_OK, page.len() as u64)
                }
                Some(_) => answer(IPC_REFUSED, 0),
                None => answer(IPC_UNAVAILABLE, 0),
            }
        }
        LABEL_LABELS => {
            // Every admitted node's labels (cluster file and `node label`), into the caller's grant.
            let Some(g) = grant_of(m.reply).filter(|g| g.writable()) else { return answer(IPC_REFUSED, 0) };
            match orch.labels_table((g.len() as usize).min(catenary_cluster::listing::PAGE_MAX)) {
                Some(t) if t.len() as u64 <= g.len() => {
                    g.write(0, &t);
                    answer(IPC_OK, t.len() as u64)
                }
                Some(_) => answer(IPC_REFUSED, 0),
                None => answer(IPC_UNAVAILABLE, 0),
            }
        }
        _ => answer(IPC_REFUSED, 0),
    }
}

fn send_all(s: &Sockets, sock: u64, io: &Pages, members: &[(String, [u8; 32], Ipv6Addr)], orch: &mut Orch) {
    for (to, bytes) in orch.take_outgoing() {
        let Some(m) = members.get(to) else { continue };
        if bytes.len() > UDP_PAYLOAD_MAX {
            continue;
        }
        io.write(0, &DgramHeader { addr: m.2, port: PORT }.encode());
        io.write(DGRAM_HEADER as u64, &bytes);
        // A full queue or a peer without a session drops it: Raft retries.
        let _ = s.send(sock, io, (DGRAM_HEADER + bytes.len()) as u64);
    }
}

/// What workd was last told of the lease: the deadline (ns, 0: none; `u64::MAX`: nothing
/// told yet) and when (ms).
struct Told {
    until_ns: u64,
    at_ms: u64,
    /// workd refused it (logged once).
    refused: bool,
}

/// Tell workd this node's lease deadline when it changed ([`LEASE_TELL_MS`] for a renewal).
/// It is `Orch::lease_deadline`, never later than this node's lease: workd stops the
/// cluster's replicas there even if this service dies right after.
fn tell_lease(workd: &Workd, orch: &Orch, t: Duration, ms: u64, told: &mut Told) {
    let until_ns = orch.lease_deadline(t).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1));
    if until_ns == told.until_ns || (until_ns != 0 && told.until_ns != 0 && told.until_ns != u64::MAX && ms < told.at_ms + LEASE_TELL_MS) {
        return;
    }
    match workd.call(&wk::Request::ClusterLease { until_ns }) {
        Some(Ok(_)) => {
            if until_ns == 0 || told.until_ns == 0 || told.until_ns == u64::MAX {
                logf!("orchd: told workd: {}", if until_ns == 0 { String::from("no lease") } else { format!("lease until {} ms", until_ns / 1_000_000) });
            }
            *told = Told { until_ns, at_ms: ms, refused: false };
        }
        Some(Err(e)) if !told.refused => {
            logf!("orchd: workd refused the lease: {:?} ({})", e, e.message());
            told.refused = true;
        }
        _ => {} // told again next turn
    }
}

/// Make workd run exactly the assigned replicas (all of them only while the lease holds).
/// Returns the cluster replicas workd's list showed active (running or stopping; None without
/// a list), seen with the state `orch` has now: it starts none its state does not assign here.
fn converge(workd: &Workd, orch: &Orch, t: Duration, shown: &mut Shown) -> Option<BTreeSet<(String, u32)>> {
    let Some(Ok(wk::Reply::List(list))) = workd.call(&wk::Request::List) else { return None };
    let active: BTreeSet<(String, u32)> = list
        .iter()
        .filter(|w| w.state.active())
        .filter_map(|w| w.name.strip_prefix(PREFIX)?.rsplit_once('-').and_then(|(n, r)| Some((String::from(n), r.parse().ok()?))))
        .collect();
    // What workd runs of the cluster's replicas, as its list says (the QEMU test reads this).
    let running: Vec<String> = list.iter().filter(|w| w.name.starts_with(PREFIX) && w.state.active()).map(|w| format!("{}:{}", w.name, w.state.name())).collect();
    if running != shown.running {
        logf!("orchd: workd runs [{}]", running.join(" "));
        shown.running = running;
    }
    let mut want: BTreeMap<String, Wanted> = BTreeMap::new();
    for (spec, r) in orch.assigned_now(t) {
        match catenary_api::cluster_state::replica_spec(&spec, r) {
            Some(local) => {
                want.insert(local.name.clone(), Wanted { spec: local, workload: spec.name, replica: r });
            }
            None => logf!("orchd: {} replica {}: not a name workd takes; not run", spec.name, r),
        }
    }
    // A replica runs only once its image is in the store: until then it waits, and apid
    // fetches the image from a node that has it (LABEL_WANTED).
    let images: Option<Vec<Digest>> = match workd.call(&wk::Request::Images) {
        Some(Ok(wk::Reply::Images(l))) => Some(l.iter().map(|i| i.digest).collect()),
        _ => None,
    };
    let now_ms = now_ns() / 1_000_000;
    // An outdated replica is taken down only as the other replicas' nodes report them
    // healthy (catenary_workload::replace, "Health-gated, one down at a time").
    shown.replicas.turn(&list, &want, images.as_deref(), orch.lease_holds(t), now_ms, &mut Reports(orch, t), &mut WorkdPort(workd), &mut |l| log(&l));
    Some(active)
}

/// [`catenary_workload::replicas::Peers`] over the nodes' `Wire::Healthy` reports.
struct Reports<'a>(&'a Orch, Duration);

impl replicas::Peers for Reports<'_> {
    fn replicas(&mut self, workload: &str) -> u32 {
        self.0.state().and_then(|s| s.workloads.get(workload)).map_or(0, |s| s.replicas)
    }
    fn placed(&mut self, workload: &str, j: u32) -> bool {
        self.0.state().is_some_and(|s| s.assignments.contains_key(&(String::from(workload), j)))
    }
    fn healthy(&mut self, workload: &str, j: u32, new: bool) -> bool {
        let Some(spec) = self.0.state().and_then(|s| s.workloads.get(workload)).and_then(|s| catenary_api::cluster_state::replica_spec(s, j)) else { return false };
        self.0.replica_healthy(workload, j, replica_tag(&spec.name), new.then(|| spec.digest().0).as_ref(), self.1)
    }
}

/// [`catenary_workload::replicas::Workd`] over the IPC client.
struct WorkdPort<'a>(&'a Workd);

impl replicas::Workd for WorkdPort<'_> {
    fn spec(&mut self, id: catenary_workload::WorkloadId) -> Option<WorkloadSpec> {
        match self.0.call(&wk::Request::Spec(Target::Id(id))) {
            Some(Ok(wk::Reply::Spec(s))) => Some(s),
            _ => None,
        }
    }
    fn free_mib(&mut self) -> Option<u64> {
        match self.0.call(&wk::Request::Node) {
            Some(Ok(wk::Reply::Node(n))) => Some(n.memory_capacity_mib.saturating_sub(n.memory_committed_mib)),
            _ => None,
        }
    }
    fn stop(&mut self, id: catenary_workload::WorkloadId, grace_ms: Option<u32>) -> Option<bool> {
        self.0.call(&wk::Request::Stop { target: Target::Id(id), grace_ms }).map(|r| r.is_ok())
    }
    fn destroy(&mut self, id: catenary_workload::WorkloadId) -> Option<bool> {
        self.0.call(&wk::Request::Destroy(Target::Id(id))).map(|r| r.is_ok())
    }
    fn start(&mut self, id: catenary_workload::WorkloadId) -> Option<bool> {
        self.0.call(&wk::Request::Start(Target::Id(id))).map(|r| r.is_ok())
    }
    fn create_and_start(&mut self, spec: &WorkloadSpec) -> Result<Option<bool>, String> {
        match self.0.call(&wk::Request::Create(spec.clone())) {
            Some(Ok(wk::Reply::Created(id))) => Ok(self.start(id)),
            other => Err(format!("{:?}", other)),
        }
    }
}

/// What was last logged, so that only changes are.
#[derive(Default)]
struct Shown {
    leader: Option<usize>,
    id: Option<(u64, bool)>,
    lease: bool,
    assigned: usize,
    misaddressed: u64,
    undecodable: u64,
    nodes: usize,
    joins: u64,
    /// The voter members of this node's configuration last logged, and whether it was joint.
    voters: (Vec<usize>, bool),
    /// Snapshots over the fabric: assembled and refused here, transfers completed from here.
    snapshots: (u64, u64, u64),
    /// Members' committed states pulled and installed here (no leader heard for a while).
    pulls: u64,
    /// Pulled states not installed: contradicted by a member, not vouched for in time.
    pulls_dropped: (u64, u64),
    /// The workload count last logged, and when (ms).
    workloads: (usize, u64),
    running: Vec<String>,
    /// What workd was made to do for the cluster's replicas, kept between turns (waiting
    /// for images, stopped here, their specs).
    replicas: Replicas,
    /// The applied count reported is held back (a replica unassigned here still runs).
    held: bool,
}

impl Shown {
    fn report(&mut self, orch: &Orch, t: Duration, members: &[(String, [u8; 32], Ipv6Addr)]) {
        let name = |i: usize| members.get(i).map(|m| m.0.as_str()).unwrap_or("?");
        if orch.id() != self.id {
            self.id = orch.id();
            if let Some((id, joined)) = self.id {
                logf!("orchd: raft id {:#x} (generation {}){}", id, id >> 16, if joined { "" } else { ": asking the leader to replace the old id" });
            }
        }
        if orch.leader() != self.leader {
            self.leader = orch.leader();
            let term = orch.replica().map_or(0, |r| r.term());
            match self.leader {
                Some(l) => logf!("orchd: leader is {}{} (term {})", name(l), if l == orch.me() { " (this node)" } else { "" }, term),
                None => logf!("orchd: no leader known (term {})", term),
            }
        }
        let lease = orch.lease_holds(t);
        if lease != self.lease {
            self.lease = lease;
            log(if lease { "orchd: lease held" } else { "orchd: lease ran out: cluster replicas stop here" });
        }
        let n = orch.assigned_now(t).len();
        if n != self.assigned {
            self.assigned = n;
            let st = orch.state();
            logf!("orchd: {} replicas assigned here; {} workloads, {} assignments in the cluster", n, st.map_or(0, |s| s.workloads.len()), st.map_or(0, |s| s.assignments.len()));
        }
        // The desired state's size, at most one line per WORKLOADS_LOG_MS (a burst of writes
        // is one line; the last count is logged once the period has passed).
        let workloads = orch.state().map_or(0, |s| s.workloads.len());
        let ms = t.as_millis() as u64;
        if workloads != self.workloads.0 && ms.saturating_sub(self.workloads.1) >= WORKLOADS_LOG_MS {
            self.workloads = (workloads, ms);
            logf!("orchd: {} workloads in the desired state", workloads);
        }
        let nodes = orch.state().map_or(0, |s| s.nodes.len());
        if nodes != self.nodes {
            self.nodes = nodes;
            logf!("orchd: {} nodes admitted in the desired state", nodes);
        }
        let c = orch.counters;
        if c.joins_proposed != self.joins {
            self.joins = c.joins_proposed;
            log("orchd: a restarted member asked to rejoin: proposed replacing its old raft id");
        }
        // The Raft configuration as this node's log has it (a removed member's voter leaving,
        // a restarted or re-admitted one joining).
        if let Some(r) = orch.replica() {
            let mut v: Vec<usize> = r.voters().into_iter().map(catenary_cluster::orch::member_of).collect();
            v.sort_unstable();
            v.dedup();
            let cur = (v, r.config_changing());
            if cur != self.voters && !cur.0.is_empty() {
                let names: Vec<&str> = cur.0.iter().map(|m| name(*m)).collect();
                logf!("orchd: raft voters: {}{}", names.join(" "), if cur.1 { " (joint change in progress)" } else { "" });
                self.voters = cur;
            }
        }
        let snaps = (orch.snap_in.assembled, orch.snap_in.refused, orch.snap_out.completed);
        if snaps != self.snapshots {
            if snaps.0 != self.snapshots.0 {
                // Installed by the replica only if it is ahead of what this node committed.
                let r = orch.replica();
                let snap = r.and_then(|r| r.storage().snapshot.as_ref());
                let (at, held) = snap.map_or((0, 0), |s| (s.position.index.get(), s.state.workloads.len()));
                logf!("orchd: snapshot received in chunks; installed here: {} (latest at log index {}, {} workloads in it)", r.map_or(0, |r| r.snapshots_installed()), at, held);
            }
            if snaps.1 != self.snapshots.1 {
                logf!("orchd: a snapshot received was refused ({} so far)", snaps.1);
            }
            if snaps.2 != self.snapshots.2 {
                logf!("orchd: a follower holds this node's snapshot whole ({} so far, {} of them known by its log)", snaps.2, orch.snap_out.completed_by_log);
            }
            self.snapshots = snaps;
        }
        if c.pulls_installed != self.pulls {
            self.pulls = c.pulls_installed;
            let at = orch.replica().map_or(0, |r| r.commit_index());
            logf!("orchd: no leader heard: pulled a member's committed state up to log index {} ({} so far)", at, self.pulls);
        }
        let dropped = orch.replica().map_or((0, 0), |r| (r.pulls_contradicted, r.pulls_expired));
        if dropped != self.pulls_dropped {
            self.pulls_dropped = dropped;
            logf!("orchd: a pulled state was not installed: {} contradicted by a member, {} not vouched for in time", dropped.0, dropped.1);
        }
        if c.misaddressed != self.misaddressed || c.undecodable != self.undecodable {
            self.misaddressed = c.misaddressed;
            self.undecodable = c.undecodable;
            logf!("orchd: datagrams refused: {} undecodable, {} misaddressed", c.undecodable, c.misaddressed);
        }
    }
}
