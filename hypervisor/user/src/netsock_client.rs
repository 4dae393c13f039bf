//! The client side of the IPC socket protocol (`catenary-netsock`): one call per request to
//! `netd`'s endpoint (capability `slot`, which needs SEND and GRANT). Data buffers are the
//! caller's own pages, lent for the call (`call_grant`): `buf` is a region the task mapped
//! (`Pages`). Every function returns at once; [`Sockets::poll`] waits for a socket
//! to be ready.

use catenary_netsock::*;
use core::net::Ipv6Addr;

/// Why a request failed: `netd`'s answer, or the call itself (an IPC error code: `netd` is
/// gone or restarting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockError {
    Net(NetError),
    Ipc(u64),
    /// A reply label that is no known error.
    Unknown(u64),
}

impl SockError {
    pub fn is(&self, e: NetError) -> bool {
        *self == SockError::Net(e)
    }
}

pub type SockResult<T> = Result<T, SockError>;

/// `netd`'s endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Sockets {
    pub slot: u64,
}

fn answer(m: Result<crate::Msg, u64>) -> SockResult<[u64; 4]> {
    let m = m.map_err(SockError::Ipc)?;
    decode_reply(m.label, m.words).map_err(|e| e.map(SockError::Net).unwrap_or(SockError::Unknown(m.label)))
}

impl Sockets {
    pub fn request(&self, r: Request) -> SockResult<[u64; 4]> {
        let (label, w) = r.encode();
        answer(crate::call(self.slot, label, w))
    }
    /// A raw request (tests: words a well-behaved client would not send).
    pub fn raw(&self, label: u64, w: [u64; 4]) -> SockResult<[u64; 4]> {
        answer(crate::call(self.slot, label, w))
    }
    pub fn socket(&self, kind: Kind) -> SockResult<Handle> {
        self.request(Request::Socket { kind }).map(|w| w[0])
    }
    /// Bind to the node's /128 or this task's own; port 0 picks one. Returns the /128 and port.
    pub fn bind(&self, h: Handle, local: Local, port: u16) -> SockResult<(Ipv6Addr, u16)> {
        self.request(Request::Bind { h, local, port }).map(|w| (addr_of(w[1], w[2]), w[0] as u16))
    }
    pub fn connect(&self, h: Handle, addr: Ipv6Addr, port: u16) -> SockResult<()> {
        self.request(Request::Connect { h, addr, port }).map(|_| ())
    }
    pub fn listen(&self, h: Handle, backlog: u8) -> SockResult<()> {
        self.request(Request::Listen { h, backlog }).map(|_| ())
    }
    /// A connection waiting on listener `h`: its new handle and the peer.
    pub fn accept(&self, h: Handle) -> SockResult<(Handle, Ipv6Addr, u16)> {
        self.request(Request::Accept { h }).map(|w| (w[0], addr_of(w[1], w[2]), w[3] as u16))
    }
    /// Send the first `len` bytes of `buf` (TCP: as many as fit; returns how many).
    pub fn send(&self, h: Handle, buf: &crate::Mem, len: u64) -> SockResult<usize> {
        answer(crate::call_grant(self.slot, OP_SEND, h, 0, buf, len, false)).map(|w| w[0] as usize)
    }
    /// Receive into the first `len` bytes of `buf`; returns the bytes written (TCP: 0 = the
    /// peer closed).
    pub fn recv(&self, h: Handle, buf: &crate::Mem, len: u64) -> SockResult<usize> {
        answer(crate::call_grant(self.slot, OP_RECV, h, 0, buf, len, true)).map(|w| w[0] as usize)
    }
    pub fn close(&self, h: Handle) -> SockResult<()> {
        self.request(Request::Close { h }).map(|_| ())
    }
    pub fn shutdown(&self, h: Handle) -> SockResult<()> {
        self.request(Request::Shutdown { h }).map(|_| ())
    }
    /// Which sockets are ready, waiting up to `wait_ms` for one to be.
    pub fn poll(&self, wait_ms: u64) -> SockResult<Ready> {
        self.request(Request::Poll { wait_ms }).map(Ready::from_words)
    }
}
