//! memberd: the node's membership service (docs/orchestration.md, issue 13). Runs
//! `catenary_cluster::Membership` (SWIM over foca, key admission, graceful leave) unchanged
//! over the fabric: one UDP port ([`PORT`]) on the node's fabric /128 through `netd`'s sockets
//! (`catenary_user::netsock_client`), timers from the kernel clock.
//!
//! Granted (manifest entry `memberd`): its endpoint (slot 0: the member-table query and
//! admission, `catenary_cluster::service`, from `apid`), a send capability with GRANT to
//! `netd` (slot 1), memory for its heap.
//!
//! - **Who is talking.** The fabric delivers a datagram only when its source lies in the /64
//!   of the key whose session carried it, and `netd` has sessions only with the cluster file's
//!   keys, whose /64s the file's parser keeps distinct. So the source /128 names exactly one
//!   key of the file: that is the fabric-authenticated sender key given to `handle_datagram`
//!   (the same rule `apid` uses for its callers). A datagram is taken only from a member's
//!   own node /128 (its microVMs share its /64 and must not speak for it): one from another
//!   address of its /64 is refused (`memberd: refused N datagram(s) from … in NAME's /64 but
//!   not its node address`, logged at the 1st, 2nd, 4th, … so a guest cannot flood the
//!   console); one from no member's /64, or from this node's own, is dropped (likewise logged).
//!   Test: `net_guest_cannot_act_as_node` (xtask/src/hostiletest.rs).
//! - **Admitted keys and seeds**: the cluster file's nodes (`netd`'s `LABEL_CLUSTER`), and
//!   every second the keys the replicated desired state admitted at run time (`netd`'s
//!   admission table, `LABEL_ADMISSION`, filled by `orchd` from its committed state). A node
//!   in no cluster file (netbooted) admits itself and the file's nodes, which are its seeds.
//!   There is no other way in: the old `LABEL_ADMIT` (any caller, any key) is gone, and
//!   `netd` takes `LABEL_ADMIT_PEER` only from `orchd`'s badge, so the table holds only keys
//!   this node's committed Raft state admitted.
//! - **Graceful leave**: `LABEL_LEAVE` (from `apid`, `catenary node leave`) runs
//!   `Membership::leave`: the leave notice goes to every active member at once, which show
//!   this node `left`; from then on memberd sends nothing (a restart joins as a new
//!   generation).
//! - **Generation**: the wall clock in seconds when memberd starts (it waits one second
//!   first, so two starts never share one), so a node that restarted, or whose memberd did,
//!   comes back as a newer identity than any the cluster remembers.
//! - **RNG seed**: 64 bits from the node's entropy (`netd`'s `LABEL_SEED`).
//! - `netd` restarts: its sockets are gone; memberd exits and the supervisor starts it again
//!   (a new generation: the others see the old one dead and the new one alive).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use catenary_cluster::service::{self as svc, Row};
use catenary_cluster::{MemberState, Membership, MembershipConfig, NodeId, NodeKey};
use catenary_ipc::netd::{CLUSTER_NOT_READY, CLUSTER_NO_GRANT, LABEL_ADMISSION, LABEL_CLUSTER, LABEL_SEED, LABEL_SELF};
use catenary_net::admission::RowKind;
use catenary_netsock::{DgramHeader, Handle, Local, DGRAM_HEADER};
use catenary_user::netsock_client::Sockets;
use catenary_user::*;
use core::net::Ipv6Addr;
use core::time::Duration;
use netfabric::identity::Prefix64;

const NETD: u64 = 1;
/// The membership port on every node's fabric /128 (memberlist's).
pub const PORT: u16 = 7946;
/// 1 MiB of heap: foca's member table (bounded by the admitted keys), the datagrams.
const HEAP_PAGES: u64 = 256;
const CLUSTER_MAX: usize = 64 * 1024;
const CLUSTER_VA: u64 = 0x2000_0000;
const IO_VA: u64 = 0x2010_0000;
/// The longest a query waits for the socket loop (its poll wait).
const POLL_MS: u64 = 50;
/// The heartbeat's period (`SYS_ALIVE`): 60 times the longest turn of the main loop.
const HEARTBEAT_MS: u64 = 3_000;

entry!(run);

fn read_cluster(buf: &Pages) -> Option<String> {
    let m = call_grant(NETD, LABEL_CLUSTER, 0, 0, buf, CLUSTER_MAX as u64, true).ok()?;
    if m.label != 0 {
        return None;
    }
    let mut b = alloc::vec![0u8; (m.words[0] as usize).min(CLUSTER_MAX)];
    buf.read(0, &mut b);
    String::from_utf8(b).ok()
}

fn now() -> Duration {
    Duration::from_nanos(now_ns())
}

struct Service {
    m: Membership,
    /// The file's nodes: (the /64 their fabric addresses lie in, key).
    members: Vec<(u64, [u8; 32])>,
    me: NodeId,
    dropped_unknown: u64,
    /// Datagrams from another member's /64 that are not from its node /128.
    refused_not_node: u64,
    refused: u64,
    /// The file's nodes' names (for the log).
    names: Vec<([u8; 32], String)>,
    /// The last state logged per member (key, generation, state).
    logged: Vec<([u8; 32], u32, MemberState)>,
}

fn run(arg: u64) -> u64 {
    // `memberd.test_hang=1` (the probes kernel only; without the feature `probes` it means
    // nothing): hang as `cluster_memberd_hung` needs, the first start without system calls
    // (arg 1), the second in a loop that sleeps (arg 2)
    let test_hang = cfg!(feature = "probes") && arg & 3 != 0;
    let hang_sleeping = arg & 2 != 0;
    if !dma::init_mapped(HEAP_PAGES) {
        log("memberd: no heap");
        return 99;
    }
    let (Ok(cbuf), Ok(io)) = (Pages::map(CLUSTER_VA, (CLUSTER_MAX as u64).div_ceil(4096)), Pages::map(IO_VA, 1)) else {
        log("memberd: no memory for its buffers");
        return 98;
    };
    // Wait for netd with a call that lends nothing (a node without a network never runs it).
    loop {
        match call(NETD, LABEL_CLUSTER, [0; 4]) {
            Ok(m) if m.label == CLUSTER_NO_GRANT => break,
            _ => sleep_ns(1_000_000_000),
        }
    }
    let text = loop {
        if let Some(t) = read_cluster(&cbuf) {
            break t;
        }
        sleep_ns(1_000_000_000);
    };
    let cluster = match catenary_net::Cluster::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            logf!("memberd: the cluster file is refused ({}): no membership", e);
            loop {
                sleep_ns(u64::MAX / 2);
            }
        }
    };
    // a fresh generation: wait out the second an earlier start may have used
    let _ = seed_and_clock();
    sleep_ns(1_000_000_000);
    let (seed, unix) = seed_and_clock();
    let s = Sockets { slot: NETD };
    let (h, addr) = match s.udp_bound(Local::Node, PORT) {
        Ok((h, a, _)) => (h, a),
        Err(e) => {
            logf!("memberd: cannot bind UDP port {} on the node's /128: {:?}", PORT, e);
            return 2;
        }
    };
    let prefix_of = |k: &[u8; 32]| u64::from_be_bytes(Prefix64::from_public_key(k).0);
    let my_prefix = u64::from_be_bytes(addr.octets()[..8].try_into().unwrap_or([0; 8]));
    let (own_key, own_name) = match cluster.members.iter().find(|m| prefix_of(&m.public_key) == my_prefix) {
        Some(o) => (o.public_key, o.name.clone()),
        None => {
            // In no cluster file (a netbooted node): a member once the cluster admits its key;
            // until then the others' admission refuses everything it says.
            let k = own_key();
            logf!("memberd: this node ({}) is in no cluster file: announcing to the {} listed nodes until the cluster admits it", addr, cluster.members.len());
            (k, catenary_net::admission::short(&k))
        }
    };
    let node_id = |k: &[u8; 32], generation: u32| NodeId::new(NodeKey(*k), Prefix64::from_public_key(k).node_address().octets(), generation);
    let me = node_id(&own_key, unix as u32);
    let seeds: Vec<NodeId> = cluster.members.iter().filter(|m| m.public_key != own_key).map(|m| node_id(&m.public_key, 0)).collect();
    let mut admitted: Vec<NodeKey> = cluster.members.iter().map(|m| NodeKey(m.public_key)).collect();
    if !admitted.contains(&NodeKey(own_key)) {
        admitted.push(NodeKey(own_key));
    }
    let m = Membership::new(me, MembershipConfig::default(), seed, admitted, seeds.clone());
    logf!("memberd: membership on [{}]:{} as {} generation {} ({} admitted keys, {} seeds)", addr, PORT, own_name, me.generation, cluster.members.len(), seeds.len());
    let members = cluster.members.iter().map(|m| (prefix_of(&m.public_key), m.public_key)).collect();
    let names: Vec<([u8; 32], String)> = cluster.members.iter().map(|m| (m.public_key, m.name.clone())).collect();
    let mut sv = Service { m, members, me, dropped_unknown: 0, refused_not_node: 0, refused: 0, names, logged: Vec::new() };
    let mut next_admission = 0u64;
    if test_hang {
        let how = if hang_sleeping { "that sleeps (system calls, no heartbeat)" } else { "without system calls" };
        logf!("memberd: TEST ONLY: memberd.test_hang=1: this memberd hangs in a loop {} once every other member has been alive for 5 s", how);
    }
    let mut all_alive_since: Option<u64> = None;
    loop {
        // The main loop goes round every POLL_MS at most (a poll wait, waits for netd's
        // replies excused): a memberd that stops going round is hung, and is restarted. (The
        // watchdog's probe, arg 1, stands for a service without a heartbeat: it does not beat,
        // or the heartbeat would kill its spin before the watchdog could.)
        if !test_hang || hang_sleeping {
            let _ = alive(HEARTBEAT_MS);
        }
        if test_hang {
            let others = sv.names.iter().filter(|n| n.0 != own_key).count();
            let alive = sv.rows().iter().filter(|r| !r.own && r.state == MemberState::Alive).count();
            all_alive_since = if alive >= others { all_alive_since.or(Some(now_ns())) } else { None };
            if all_alive_since.is_some_and(|t| now_ns() - t > 5_000_000_000) {
                if hang_sleeping {
                    logf!("memberd: TEST ONLY: hanging now (a loop that sleeps)");
                    loop {
                        sleep_ns(10_000_000);
                    }
                }
                logf!("memberd: TEST ONLY: hanging now (a loop without system calls)");
                #[allow(clippy::empty_loop)]
                loop {
                    core::hint::spin_loop();
                }
            }
        }
        if now_ns() >= next_admission {
            next_admission = now_ns() + 1_000_000_000;
            sv.admit_from_netd(&cbuf);
        }
        let t = now();
        if sv.m.next_deadline().is_some_and(|d| d <= t) {
            sv.m.tick(t);
        }
        if let Err(e) = sv.flush(&s, h, &io) {
            logf!("memberd: netd's socket failed ({:?}): starting again", e);
            return 3;
        }
        sv.log_changes();
        let wait = sv.m.next_deadline().map_or(POLL_MS, |d| (d.saturating_sub(now()).as_millis() as u64).clamp(1, POLL_MS));
        match s.poll(wait) {
            Ok(r) if r.readable & catenary_netsock::Ready::bit(h) != 0 => {
                if let Err(e) = sv.receive(&s, h, &io) {
                    logf!("memberd: netd's socket failed ({:?}): starting again", e);
                    return 3;
                }
            }
            Ok(_) => {}
            Err(e) => {
                logf!("memberd: netd's poll failed ({:?}): starting again", e);
                return 3;
            }
        }
        // queries from apid: served between socket rounds (no wait here)
        while let Ok(q) = recv(0, 1) {
            sv.serve(q);
        }
    }
}

/// `netd`'s `LABEL_SEED`: (seed, unix seconds), waiting until it answers.
fn seed_and_clock() -> (u64, u64) {
    loop {
        match call(NETD, LABEL_SEED, [0; 4]) {
            Ok(m) if m.label == 0 => return (m.words[0], m.words[1]),
            Ok(m) if m.label == CLUSTER_NOT_READY => {}
            _ => {}
        }
        sleep_ns(500_000_000);
    }
}

/// This node's fabric public key (`netd`'s `LABEL_SELF`).
fn own_key() -> [u8; 32] {
    loop {
        if let Ok(m) = call(NETD, LABEL_SELF, [0; 4]) {
            if m.label == 0 {
                return svc::words_key(m.words);
            }
        }
        sleep_ns(500_000_000);
    }
}

impl Service {
    /// Admit the keys the replicated desired state admitted (`orchd` handed them to `netd`,
    /// whose admission table lists them): the same on every node, from its own committed state.
    fn admit_from_netd(&mut self, buf: &Pages) {
        let Ok(m) = call_grant(NETD, LABEL_ADMISSION, 0, 0, buf, CLUSTER_MAX as u64, true) else { return };
        if m.label != 0 || m.words[0] as usize > CLUSTER_MAX {
            return;
        }
        let mut b = alloc::vec![0u8; m.words[0] as usize];
        buf.read(0, &mut b);
        let Ok(rows) = catenary_net::admission::decode_table(&b) else { return };
        // Removed by the committed state (`catenary node remove`): revoked (out of the table,
        // its datagrams refused), and its /64 no longer names a member.
        for r in rows.iter().filter(|r| r.kind == RowKind::Removed && r.key != self.me.key.0) {
            if !self.m.is_admitted(&NodeKey(r.key)) && !self.members.iter().any(|(_, k)| *k == r.key) {
                continue;
            }
            self.m.revoke(now(), NodeKey(r.key));
            self.members.retain(|(_, k)| *k != r.key);
            let name = self.names.iter().find(|n| n.0 == r.key).map_or_else(|| catenary_net::admission::short(&r.key), |n| n.1.clone());
            logf!("memberd: removed {} ({}): the replicated desired state removed it", name, catenary_net::cluster::hex_encode(&r.key));
        }
        for r in rows.iter().filter(|r| r.kind == RowKind::Admitted) {
            if self.m.is_admitted(&NodeKey(r.key)) && self.members.iter().any(|(_, k)| *k == r.key) {
                continue;
            }
            self.m.admit(NodeKey(r.key));
            let p = u64::from_be_bytes(Prefix64::from_public_key(&r.key).0);
            if !self.members.iter().any(|(_, k)| *k == r.key) {
                self.members.push((p, r.key));
            }
            if !self.names.iter().any(|n| n.0 == r.key) {
                self.names.push((r.key, catenary_net::admission::short(&r.key)));
            }
            logf!("memberd: admitted {} ({}): the replicated desired state admits it", catenary_net::admission::short(&r.key), catenary_net::cluster::hex_encode(&r.key));
        }
    }

    /// Send what the protocol wants sent (a datagram `netd` cannot take now is lost, as UDP).
    fn flush(&mut self, s: &Sockets, h: Handle, io: &Pages) -> Result<(), catenary_user::netsock_client::SockError> {
        for d in self.m.take_outgoing() {
            if d.data.len() > catenary_netsock::UDP_PAYLOAD_MAX {
                continue;
            }
            io.write(0, &DgramHeader { addr: Ipv6Addr::from(d.to.addr), port: PORT }.encode());
            io.write(DGRAM_HEADER as u64, &d.data);
            match s.send(h, io, (DGRAM_HEADER + d.data.len()) as u64) {
                Ok(_) => {}
                Err(e) if e.is(catenary_netsock::NetError::Restarted) => return Err(e),
                Err(_) => {} // would block, unreachable: a lost datagram, which SWIM tolerates
            }
        }
        let _ = self.m.take_events();
        Ok(())
    }

    fn receive(&mut self, s: &Sockets, h: Handle, io: &Pages) -> Result<(), catenary_user::netsock_client::SockError> {
        let mut buf = alloc::vec![0u8; DGRAM_HEADER + catenary_netsock::UDP_PAYLOAD_MAX];
        for _ in 0..catenary_netsock::UDP_QUEUE {
            let n = match s.recv(h, io, buf.len() as u64) {
                Ok(n) => n.min(buf.len()),
                Err(e) if e.is(catenary_netsock::NetError::WouldBlock) => break,
                Err(e) => return Err(e),
            };
            io.read(0, &mut buf[..n]);
            let Ok((hdr, payload)) = DgramHeader::decode(&buf[..n]) else { continue };
            let p = u64::from_be_bytes(hdr.addr.octets()[..8].try_into().unwrap_or([0; 8]));
            // the fabric-authenticated sender: the one member whose /64 holds the source
            let owner = self.members.iter().find(|(mp, _)| *mp == p).map(|(_, k)| *k);
            // ... and only from that member's own /128: its microVMs share its /64 and must
            // not speak for it
            let at_node = owner.is_some_and(|k| Prefix64::from_public_key(&k).node_address().octets() == hdr.addr.octets());
            match owner {
                Some(k) if at_node && k != self.me.key.0 && hdr.port == PORT => {
                    if self.m.handle_datagram(now(), NodeKey(k), payload).is_err() {
                        self.refused += 1;
                    }
                }
                Some(k) if !at_node && k != self.me.key.0 => {
                    // a microVM or task of another node (its datagrams reach us through the
                    // fabric with a source in that node's /64); logged at 1, 2, 4, 8, … so a
                    // guest cannot flood the console
                    self.refused_not_node += 1;
                    if self.refused_not_node.is_power_of_two() {
                        let name = self.names.iter().find(|n| n.0 == k).map_or("?", |n| n.1.as_str());
                        logf!("memberd: refused {} datagram(s) from [{}]:{}, in {}'s /64 but not its node address (a microVM or task does not speak for its node)", self.refused_not_node, hdr.addr, hdr.port, name);
                    }
                }
                _ => {
                    self.dropped_unknown += 1;
                    if self.dropped_unknown.is_power_of_two() {
                        logf!("memberd: dropped {} datagram(s) from no other member's node address and port (last from [{}]:{})", self.dropped_unknown, hdr.addr, hdr.port);
                    }
                }
            }
        }
        self.flush(s, h, io)
    }

    /// The member table, this node first.
    fn rows(&self) -> Vec<Row> {
        let own = if self.m.has_left() { MemberState::Left } else { MemberState::Alive };
        let mut v = alloc::vec![Row { id: self.m.identity(), state: own, incarnation: catenary_cluster::membership::combined_incarnation(self.m.identity().generation, 0), own: true }];
        v.extend(self.m.members().into_iter().map(|m| Row { id: m.id, state: m.state, incarnation: m.incarnation, own: false }));
        v
    }

    fn serve(&mut self, q: Msg) {
        if q.reply == 0 {
            return;
        }
        let (label, words) = match q.label {
            svc::LABEL_MEMBERS => {
                let b = svc::encode(&self.rows());
                match grant_of(q.reply) {
                    Some(g) if g.writable() && g.len() as usize >= b.len() => {
                        g.write(0, &b);
                        (svc::OK, [b.len() as u64, (b.len() - svc::HEADER) as u64 / svc::ROW as u64, 0, 0])
                    }
                    Some(_) => (svc::ERR_SMALL, [b.len() as u64, 0, 0, 0]),
                    None => (svc::ERR_NO_GRANT, [0; 4]),
                }
            }
            svc::LABEL_LEAVE => {
                if !self.m.has_left() {
                    self.m.leave(now());
                    logf!("memberd: leaving the cluster (graceful leave) at {} ms", now_ns() / 1_000_000);
                }
                (svc::OK, [0; 4])
            }
            _ => (svc::ERR_UNKNOWN, [0; 4]),
        };
        let _ = reply(q.reply, label, words);
    }

    /// One log line per member change (what the cluster tests read).
    fn log_changes(&mut self) {
        for v in self.m.members() {
            let key = v.id.key.0;
            let cur = (key, v.id.generation, v.state);
            match self.logged.iter_mut().find(|l| l.0 == key) {
                Some(l) if *l == cur => continue,
                Some(l) => *l = cur,
                None => self.logged.push(cur),
            }
            let name = self.names.iter().find(|n| n.0 == key).map_or("?", |n| n.1.as_str());
            logf!("memberd: member {} {} incarnation {} (generation {}) at {} ms", name, svc::state_name(v.state), v.incarnation, v.id.generation, now_ns() / 1_000_000);
        }
    }
}
