//! The client side of the IPC socket protocol (`catenary-netsock`): one call per request to
//! `netd`'s endpoint (capability `slot`, which needs SEND and GRANT). Data buffers are the
//! caller's own memory, lent for the call (`call_grant`): a region the task mapped (`Pages`)
//! and any range inside it ([`Sockets::send_at`], [`Sockets::recv_at`]: the region's memory
//! up to the end of the data is lent, word 1 says where the data starts). A range that is not
//! inside the region (past its end, wrapping) is [`NetError::BadBuffer`], never a fault.
//! Every function returns at once; [`Sockets::poll`] waits for a socket to be ready.
//!
//! **`netd` restarts.** Every operation on a handle of a `netd` that has since died answers
//! [`NetError::Restarted`]: the new `netd` sees the handle's epoch, and a call in flight at
//! the death (the kernel's `DeadPeer`) is reported the same way. A `poll` carries the epoch
//! of the latest handle this task got, so a task blocked in `poll` is not left waiting on
//! sockets that no longer exist. Nothing is re-created behind the caller's back: it knows
//! which of its sockets mattered, so it opens its listeners and UDP sockets again
//! ([`Sockets::tcp_listener`], [`Sockets::udp_bound`]); connections are lost.

use catenary_netsock::*;
use core::net::Ipv6Addr;
use core::sync::atomic::{AtomicU64, Ordering};

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

/// The epoch of the latest handle this task was given (0: none yet); `POLL` carries it.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The kernel's `DeadPeer`: `netd` died while it held the call.
const IPC_DEAD_PEER: u64 = 4;
/// The kernel's refusal of a grant (memory the task does not own, or not writable).
const IPC_BAD_ARG: u64 = 100;

fn answer(m: Result<crate::Msg, u64>) -> SockResult<[u64; 4]> {
    let m = m.map_err(|e| if e == IPC_DEAD_PEER { SockError::Net(NetError::Restarted) } else { SockError::Ipc(e) })?;
    decode_reply(m.label, m.words).map_err(|e| e.map(SockError::Net).unwrap_or(SockError::Unknown(m.label)))
}

fn got(h: Handle) -> Handle {
    EPOCH.store(epoch_of(h), Ordering::Relaxed);
    h
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
        self.request(Request::Socket { kind }).map(|w| got(w[0]))
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
        self.request(Request::Accept { h }).map(|w| (got(w[0]), addr_of(w[1], w[2]), w[3] as u16))
    }
    /// The call for `len` bytes at `off` in `buf`: `buf`'s memory up to their end is lent,
    /// the offset goes in word 1.
    fn data(&self, op: u64, h: Handle, buf: &crate::Mem, off: u64, len: u64, writable: bool) -> SockResult<[u64; 4]> {
        let Some(total) = off.checked_add(len).filter(|t| len > 0 && off <= OFFSET_MAX && *t <= buf.len()) else {
            return Err(SockError::Net(NetError::BadBuffer));
        };
        answer(crate::call_grant(self.slot, op, h, off, buf, total, writable)).map_err(|e| match e {
            SockError::Ipc(IPC_BAD_ARG) => SockError::Net(NetError::BadBuffer),
            e => e,
        })
    }
    /// Send the first `len` bytes of `buf` (TCP: as many as fit; returns how many).
    pub fn send(&self, h: Handle, buf: &crate::Mem, len: u64) -> SockResult<usize> {
        self.send_at(h, buf, 0, len)
    }
    /// Send `len` bytes at `off` in `buf`.
    pub fn send_at(&self, h: Handle, buf: &crate::Mem, off: u64, len: u64) -> SockResult<usize> {
        self.data(OP_SEND, h, buf, off, len, false).map(|w| w[0] as usize)
    }
    /// Receive into the first `len` bytes of `buf`; returns the bytes written (TCP: 0 = the
    /// peer closed).
    pub fn recv(&self, h: Handle, buf: &crate::Mem, len: u64) -> SockResult<usize> {
        self.recv_at(h, buf, 0, len)
    }
    /// Receive into `len` bytes at `off` in `buf`.
    pub fn recv_at(&self, h: Handle, buf: &crate::Mem, off: u64, len: u64) -> SockResult<usize> {
        self.data(OP_RECV, h, buf, off, len, true).map(|w| w[0] as usize)
    }
    pub fn close(&self, h: Handle) -> SockResult<()> {
        self.request(Request::Close { h }).map(|_| ())
    }
    pub fn shutdown(&self, h: Handle) -> SockResult<()> {
        self.request(Request::Shutdown { h }).map(|_| ())
    }
    /// Which sockets are ready, waiting up to `wait_ms` for one to be. `Restarted` when the
    /// handles this task holds are an earlier `netd`'s.
    pub fn poll(&self, wait_ms: u64) -> SockResult<Ready> {
        self.request(Request::Poll { wait_ms, epoch: EPOCH.load(Ordering::Relaxed) }).map(Ready::from_words)
    }
    /// A TCP listener on `local`:`port` (socket, bind, listen: what a server does again after
    /// `Restarted`). Returns the handle and the /128 and port it listens on.
    pub fn tcp_listener(&self, local: Local, port: u16, backlog: u8) -> SockResult<(Handle, Ipv6Addr, u16)> {
        let h = self.socket(Kind::Tcp)?;
        let r = self.bind(h, local, port).and_then(|(a, p)| self.listen(h, backlog).map(|_| (h, a, p)));
        if r.is_err() {
            let _ = self.close(h);
        }
        r
    }
    /// A UDP socket bound to `local`:`port`.
    pub fn udp_bound(&self, local: Local, port: u16) -> SockResult<(Handle, Ipv6Addr, u16)> {
        let h = self.socket(Kind::Udp)?;
        let r = self.bind(h, local, port).map(|(a, p)| (h, a, p));
        if r.is_err() {
            let _ = self.close(h);
        }
        r
    }
}
