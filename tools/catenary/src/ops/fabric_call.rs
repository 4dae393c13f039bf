//! One HTTP request over the embedded fabric ([`super::fabric::Link`]): a TCP connection from
//! the operator's /128 to the node's API, the request out, the answer read until it is complete
//! (`catenary_api::client::parse_response` bounds it). Each failure says which step did not
//! happen: the fabric handshake, the TCP connection, or the answer.

use super::fabric::Link;
use super::transport::CallError;
use catenary_api::client;
use smoltcp::socket::tcp::State;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// Send `bytes` to `[dst]:port` and read the answer. `timeout` bounds the wait for the session
/// and the connection, and any stretch without progress after that; `what` names the node in
/// errors.
pub fn request(link: &mut Link, dst: Ipv6Addr, port: u16, bytes: &[u8], timeout: Duration, what: &str) -> Result<(u16, Vec<u8>), CallError> {
    exchange_until(link, dst, port, bytes, timeout, what, &|buf| client::parse_response(buf).map_err(CallError::Api))
}

/// What has arrived so far: the answer once it is complete.
type Complete<'a> = &'a dyn Fn(&[u8]) -> Result<Option<(u16, Vec<u8>)>, CallError>;

/// Send `bytes` and read until `complete` says the answer is there (an HTTP answer for
/// [`request`], the bytes echoed back for `catenary fabric-probe`).
pub fn exchange_until(link: &mut Link, dst: Ipv6Addr, port: u16, bytes: &[u8], timeout: Duration, what: &str, complete: Complete) -> Result<(u16, Vec<u8>), CallError> {
    // the session first (netfabric starts the handshake and retransmits the initiation), so the
    // SYN is not held back behind it and resent as duplicates
    let deadline = Instant::now() + timeout;
    link.start_session();
    while !link.has_session() {
        if Instant::now() >= deadline {
            return Err(CallError::Unreachable(format!("{what}: no answer to the fabric handshake within {:.0} s (is the endpoint right, and is this operator key an `operator` line in the node's cluster file?)", timeout.as_secs_f32())));
        }
        link.pump(Duration::from_millis(50));
    }
    let h = link.connect(dst, port).map_err(CallError::Unreachable)?;
    let replaced_at = link.counters().dropped_unknown_index;
    let r = exchange(link, h, bytes, timeout, what, complete, replaced_at);
    // done or given up: reset the connection (the server closes after its answer anyway) and
    // let the stack send that before the socket is dropped
    link.tcp(h).abort();
    link.pump(Duration::ZERO);
    link.remove(h);
    r
}

/// The error of a request whose session another process took over (see [`replaced`]).
pub const REPLACED: &str = "the node now answers another session of this operator key";

/// Whether `e` says the session was taken over: the node made a new session with this
/// operator key (another `catenary` process with the same config, e.g. `stop` while this one
/// follows a log) and sends in it; this session's packets come back with an index it does not
/// know. A new handshake takes the session back.
pub fn replaced(e: &CallError) -> bool {
    matches!(e, CallError::Unreachable(m) if m.contains(REPLACED))
}

fn exchange(link: &mut Link, h: smoltcp::iface::SocketHandle, bytes: &[u8], timeout: Duration, what: &str, complete: Complete, replaced_at: u64) -> Result<(u16, Vec<u8>), CallError> {
    let mut deadline = Instant::now() + timeout;
    let (mut sent, mut established) = (0usize, false);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() >= deadline {
            let secs = timeout.as_secs_f32();
            return Err(CallError::Unreachable(if !established {
                format!("{what}: the fabric session is up but the API port did not accept a TCP connection within {secs:.0} s")
            } else {
                format!("{what}: the answer stalled for {secs:.0} s ({} bytes received)", buf.len())
            }));
        }
        link.pump(Duration::from_millis(50));
        if link.counters().dropped_unknown_index > replaced_at {
            return Err(CallError::Unreachable(format!("{what}: {REPLACED} (another catenary process?)")));
        }
        let s = link.tcp(h);
        match s.state() {
            State::SynSent | State::SynReceived => {}
            State::Closed if !established => {
                return Err(CallError::Unreachable(format!("{what}: the connection was refused (no API service listening)")));
            }
            _ => {
                if !established {
                    established = true;
                    deadline = Instant::now() + timeout;
                }
            }
        }
        while sent < bytes.len() && s.can_send() {
            match s.send_slice(&bytes[sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sent += n;
                    deadline = Instant::now() + timeout;
                }
            }
        }
        let mut got = false;
        while s.can_recv() {
            match s.recv_slice(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    got = true;
                }
            }
        }
        if got {
            deadline = Instant::now() + timeout;
            if let Some(r) = complete(&buf)? {
                return Ok(r);
            }
        }
        if established && !s.may_recv() && !s.can_recv() {
            return Err(CallError::Unreachable(format!("{what}: the connection closed before the answer was complete ({} bytes received, TCP {})", buf.len(), s.state())));
        }
    }
}
