//! Requests that concern another node's workloads or images (`catenary_api::cluster`), forwarded over the fabric to that node's
//! `apid` (TCP to its /128, port 8080), for the operator who asked.
//!
//! The other node knows this node by the /128 the connection comes from (a node's key, which
//! is never an operator) and takes `Catenary-On-Behalf-Of: <operator key>` from a node only:
//! the request is then authorized as that operator's. A forwarded request is never forwarded
//! again. Each forward is bounded: one other node asked at a time, [`FORWARD_MS`] for each (its
//! connect, request and answer), an answer of at most [`ANSWER_MAX`] bytes; a node that does
//! not answer in time is skipped. `apid` never waits for it: the operator's connection is parked
//! with its [`Forward`] and the loop moves the exchange as `netd` reports its socket ready.

use crate::outbound::{Outbound, Step};
use alloc::string::String;
use alloc::vec::Vec;
use catenary_api::auth::hex;
use catenary_api::cluster::Gather;
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

/// An operator's request that waits for the other nodes' answers (its connection is parked):
/// `catenary_api::cluster::Gather` says which node to ask next, one [`Outbound`] exchange at a
/// time asks it; the loop steps it as the exchange's socket is ready.
pub struct Forward {
    gather: Gather,
    /// The other nodes (name, /128, session up), in `Gather`'s order.
    others: Vec<(String, Ipv6Addr, bool)>,
    operator: [u8; 32],
    /// The node being asked (its index) and the exchange.
    asking: Option<(usize, Outbound)>,
}

impl Forward {
    /// `resp`: this node's own answer to `req`, made for `operator`.
    pub fn new(req: Request, resp: Response, own: Option<String>, others: Vec<(String, Ipv6Addr, bool)>, operator: [u8; 32]) -> Forward {
        let names = others.iter().map(|o| o.0.clone()).collect();
        Forward { gather: Gather::new(req, resp, own, names), others, operator, asking: None }
    }

    /// The exchange's deadline, if one is under way.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.asking.as_ref().map(|a| a.1.deadline_ms())
    }

    /// Start the next node's exchange, or the answer (bytes to send) once none is needed. A
    /// node no exchange can be started for (no socket) is a node without an answer.
    pub fn advance(&mut self, s: &Sockets, now_ms: u64) -> Option<Vec<u8>> {
        loop {
            let i = match self.gather.next() {
                Ok(r) => return Some(r.to_bytes()),
                Err(i) => i,
            };
            let Some(&(_, addr, up)) = self.others.get(i) else {
                self.gather.answer(i, None);
                continue;
            };
            let bytes = request_bytes(self.gather.request(), addr, &self.operator);
            match Outbound::start(s, addr, bytes, now_ms, if up { FORWARD_MS } else { IDLE_FORWARD_MS }, ANSWER_MAX) {
                Ok(o) => {
                    self.asking = Some((i, o));
                    return None;
                }
                Err(_) => self.gather.answer(i, None),
            }
        }
    }

    /// What `ready` allows of the exchange under way; the answer once the last is in.
    /// `busy`: set when it did something.
    pub fn step(&mut self, s: &Sockets, io: &Pages, ready: &Ready, now_ms: u64, busy: &mut bool) -> Option<Vec<u8>> {
        let Some((i, o)) = &mut self.asking else { return self.advance(s, now_ms) };
        let i = *i;
        let answer = match o.step(s, io, ready, now_ms) {
            Step::Pending => return None,
            Step::Done(status, body) => Some((status, body)),
            Step::Failed => None,
        };
        *busy = true;
        self.asking = None;
        self.gather.answer(i, answer);
        self.advance(s, now_ms)
    }

    /// Give up the exchange under way (the operator's connection is gone).
    pub fn close(&mut self, s: &Sockets) {
        if let Some((_, o)) = &mut self.asking {
            o.close(s);
        }
        self.asking = None;
    }
}
