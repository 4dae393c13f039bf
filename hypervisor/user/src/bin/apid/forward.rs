//! Requests that concern another node's workloads or images (`catenary_api::cluster`), forwarded over the fabric to that node's
//! `apid` (TCP to its /128, port 8080), for the operator who asked.
//!
//! The other node knows this node by the /128 the connection comes from (a node's key, which
//! is never an operator) and takes `Catenary-On-Behalf-Of: <operator key>` from a node only:
//! the request is then authorized as that operator's. A forwarded request is never forwarded
//! again. Each forward is bounded: one connection at a time, [`FORWARD_MS`] in all, an answer
//! of at most [`ANSWER_MAX`] bytes; a node that does not answer in time is skipped.

use alloc::string::String;
use alloc::vec::Vec;
use catenary_api::auth::hex;
use catenary_api::client::parse_response;
use catenary_api::http::{Request, ON_BEHALF_OF};
use catenary_netsock::{Kind, NetError};
use catenary_user::netsock_client::Sockets;
use catenary_user::{now_ns, sleep_ns, Pages};
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

/// Send `bytes` to `[to]:8080` and read the answer until the peer closes: (status, body), or
/// `None` (no connection, too slow, too large, not HTTP). `io`: pages lent for each call.
pub fn exchange(s: &Sockets, io: &Pages, to: Ipv6Addr, bytes: &[u8], budget_ms: u64) -> Option<(u16, Vec<u8>)> {
    let h = s.socket(Kind::Tcp).ok()?;
    let r = (|| {
        s.connect(h, to, catenary_api::PORT).ok()?;
        let end = now_ns() / 1_000_000 + budget_ms;
        let (mut sent, mut got) = (0, Vec::new());
        let pending = |e: NetError| e == NetError::WouldBlock;
        loop {
            if now_ns() / 1_000_000 > end {
                return None;
            }
            let mut moved = false;
            if sent < bytes.len() {
                let n = (bytes.len() - sent).min(io.len() as usize);
                io.write(0, &bytes[sent..sent + n]);
                match s.send(h, io, n as u64) {
                    Ok(k) => {
                        sent += k.min(n);
                        moved = true;
                    }
                    Err(catenary_user::netsock_client::SockError::Net(e)) if pending(e) => {}
                    Err(_) => return None,
                }
            }
            match s.recv(h, io, io.len()) {
                Ok(0) => return parse_response(&got).ok().flatten(),
                Ok(n) => {
                    let at = got.len();
                    got.resize(at + n.min(io.len() as usize), 0);
                    io.read(0, &mut got[at..]);
                    if got.len() > ANSWER_MAX {
                        return None;
                    }
                    moved = true;
                }
                Err(catenary_user::netsock_client::SockError::Net(e)) if pending(e) => {}
                Err(_) => return None,
            }
            if !moved {
                sleep_ns(2_000_000);
            }
        }
    })();
    let _ = s.close(h);
    r
}
