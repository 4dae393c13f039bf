//! Requests that concern another node's workloads or images (`catenary_api::cluster`), forwarded over the fabric to that node's
//! `apid` (TCP to its /128, port 8080), for the operator who asked.
//!
//! The other node knows this node by the /128 the connection comes from (a node's key, which
//! is never an operator) and takes `Catenary-On-Behalf-Of: <operator key>` from a node only:
//! the request is then authorized as that operator's. A forwarded request is never forwarded
//! again. Each forward is bounded: a read's nodes asked together (a mutation's one at a time),
//! at most `ASKS_MAX` exchanges in flight across every parked request, [`FORWARD_MS`] for each
//! (its connect, request and answer), an answer of at most [`ANSWER_MAX`] bytes; a node that
//! does not answer in time is skipped. `apid` never waits for it: the operator's connection is
//! parked in the [`Forwarder`] and the loop moves the exchanges as `netd` reports their sockets
//! ready.

use crate::outbound::{Outbound, Step};
use alloc::string::String;
use alloc::vec::Vec;
use catenary_api::auth::hex;
pub use catenary_api::cluster::Reach;
use catenary_api::cluster::{Forwards, Gather};
use catenary_api::http::{Request, Response, ON_BEHALF_OF};
use catenary_netsock::Ready;
use catenary_user::netsock_client::Sockets;
use catenary_user::Pages;
use core::net::Ipv6Addr;

/// A forward's whole time: connect, request, answer.
pub const FORWARD_MS: u64 = 10_000;
/// The same for a node without a session now: an idle session lapses after 3 minutes (the
/// connection makes a new one, a handshake of milliseconds), but a node that is down would hold
/// every request up for this long.
pub const IDLE_FORWARD_MS: u64 = 4_000;
/// The largest answer taken from another node (a log read is at most 8 KiB of data).
pub const ANSWER_MAX: usize = 320 * 1024;

/// The request's bytes for node `to`, on behalf of `operator`.
pub fn request_bytes(req: &Request, to: Ipv6Addr, operator: &[u8; 32]) -> Vec<u8> {
    let q = if req.query.is_empty() { String::new() } else { alloc::format!("?{}", req.query) };
    let mut head = alloc::format!(
        "{} {}{q} HTTP/1.1\r\nHost: [{to}]:{}\r\nConnection: close\r\nContent-Length: {}\r\n{ON_BEHALF_OF}: {}\r\n",
        req.method.as_str(),
        req.path,
        catenary_api::PORT,
        req.body.len(),
        hex(operator)
    );
    if let Some(d) = &req.chunk_digest {
        head.push_str(&alloc::format!("Chunk-Digest: {d}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    out
}

/// A node-to-node GET of `path` on node `to`, as this node (no operator named).
pub fn get_bytes(path: &str, to: Ipv6Addr) -> Vec<u8> {
    alloc::format!("GET {path} HTTP/1.1\r\nHost: [{to}]:{}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", catenary_api::PORT).into_bytes()
}

/// Another node: name, /128, and how it can be reached.
pub type Other = (String, Ipv6Addr, Reach);

/// A parked connection, the other nodes and the operator it asks for.
type ParkedMeta = (u64, Vec<Other>, [u8; 32]);

/// The operators' requests parked waiting for other nodes' answers and their asks in flight:
/// `catenary_api::cluster::Forwards` (sans I/O, host-tested) decides which node to ask when
/// and shares the sockets; this owns the [`Outbound`] exchanges. A read asks every node it
/// needs at once (as sockets allow), so it costs the slowest answer or one timeout.
pub struct Forwarder {
    f: Forwards<u64>,
    /// Per parked connection: the other nodes, in `Gather`'s order, and the operator it asks
    /// for.
    meta: Vec<ParkedMeta>,
    /// (connection, node, its exchange)
    asks: Vec<(u64, usize, Outbound)>,
    /// Answers ready and not yet handed out.
    ready: Vec<(u64, Vec<u8>)>,
}

impl Forwarder {
    pub fn new(parked_max: usize, asks_max: usize) -> Forwarder {
        Forwarder { f: Forwards::new(parked_max, asks_max), meta: Vec::new(), asks: Vec::new(), ready: Vec::new() }
    }

    /// Whether another request may be parked.
    pub fn has_room(&self) -> bool {
        self.f.has_room()
    }

    /// The earliest deadline of an ask in flight; 0 (now) while an answer waits in `ready`
    /// (one completed inside `park` or `gone`), so the loop's poll does not sleep on it.
    pub fn deadline_ms(&self) -> Option<u64> {
        if !self.ready.is_empty() {
            return Some(0);
        }
        self.asks.iter().map(|a| a.2.deadline_ms()).min()
    }

    /// Park connection `conn`'s request (`resp`: this node's own answer, made for
    /// `operator`) and send its asks; `Some(answer)` when it needs none (or none could be
    /// sent), `None` while parked. The caller checked [`has_room`](Forwarder::has_room), or that
    /// none of `others` is asked for `req` ([`Reach::asked_for`]: it completes here).
    #[allow(clippy::too_many_arguments)] // one request's whole context, handed over once
    pub fn park(&mut self, s: &Sockets, conn: u64, req: Request, resp: Response, own: Option<String>, others: Vec<Other>, operator: [u8; 32], now_ms: u64) -> Option<Vec<u8>> {
        let names = others.iter().map(|o| o.0.clone()).collect();
        let mut g = Gather::new(req, resp, own, names);
        // a dead node's answer is missing from the start, a left one holds nothing (but for
        // the node listing and its own leave): neither is asked
        g.leave_out(&others.iter().map(|o| o.2).collect::<Vec<_>>());
        if let Some(r) = g.done() {
            return Some(r.to_bytes());
        }
        if let Err(g) = self.f.park(conn, g) {
            // not reached (has_room was checked): answer with this node's word alone
            return g.done().map(|r| r.to_bytes()).or_else(|| Some(catenary_api::ApiError::new(503, "busy", "the node is waiting for other nodes' answers to its most requests at once; try again").to_response().to_bytes()));
        }
        self.meta.push((conn, others, operator));
        self.pump(s, now_ms);
        let j = self.ready.iter().position(|r| r.0 == conn)?;
        Some(self.ready.remove(j).1)
    }

    /// What `ready` allows of every ask; the answers that are complete, by connection.
    pub fn step(&mut self, s: &Sockets, io: &Pages, ready: &Ready, now_ms: u64, busy: &mut bool) -> Vec<(u64, Vec<u8>)> {
        let mut j = 0;
        while j < self.asks.len() {
            let (conn, i, o) = &mut self.asks[j];
            let answer = match o.step(s, io, ready, now_ms) {
                Step::Pending => {
                    j += 1;
                    continue;
                }
                Step::Done(status, body) => Some((status, body)),
                Step::Failed => None,
            };
            *busy = true;
            let (conn, i) = (*conn, *i);
            self.asks.swap_remove(j);
            self.f.answer(conn, i, answer);
        }
        self.pump(s, now_ms);
        core::mem::take(&mut self.ready)
    }

    /// Connection `conn` is gone (the operator hung up, or its life ran out): its place and
    /// its asks' sockets are freed now, and the sockets go to the other parked requests.
    pub fn gone(&mut self, s: &Sockets, conn: u64, now_ms: u64) {
        let left = self.f.gone(conn);
        self.close_asks(s, conn, &left);
        self.meta.retain(|m| m.0 != conn);
        self.ready.retain(|r| r.0 != conn);
        self.pump(s, now_ms);
    }

    fn close_asks(&mut self, s: &Sockets, conn: u64, nodes: &[usize]) {
        self.asks.retain_mut(|(c, i, o)| {
            let keep = !(*c == conn && nodes.contains(i));
            if !keep {
                o.close(s);
            }
            keep
        });
    }

    /// Answers that are complete go to `ready` (their leftover asks closed); free sockets
    /// get asks. A node no exchange can be started for (no socket, connect refused) is a
    /// node without an answer.
    fn pump(&mut self, s: &Sockets, now_ms: u64) {
        loop {
            for (conn, r, left) in self.f.finished() {
                self.close_asks(s, conn, &left);
                self.meta.retain(|m| m.0 != conn);
                self.ready.push((conn, r.to_bytes()));
            }
            let asks = self.f.to_ask();
            if asks.is_empty() {
                return;
            }
            for (conn, i) in asks {
                let started = match (self.meta.iter().find(|m| m.0 == conn), self.f.request(conn)) {
                    (Some((_, others, operator)), Some(req)) => match others.get(i) {
                        Some(&(_, addr, Reach::Session)) => Outbound::start(s, addr, request_bytes(req, addr, operator), now_ms, FORWARD_MS, ANSWER_MAX).ok(),
                        // a left node (asked for the node listing only) may be switched off
                        Some(&(_, addr, Reach::Idle | Reach::Left)) => Outbound::start(s, addr, request_bytes(req, addr, operator), now_ms, IDLE_FORWARD_MS, ANSWER_MAX).ok(),
                        Some((_, _, Reach::Dead)) => None, // (answered at park)
                        None => None,
                    },
                    _ => None,
                };
                match started {
                    Some(o) => self.asks.push((conn, i, o)),
                    None => self.f.answer(conn, i, None),
                }
            }
        }
    }
}
