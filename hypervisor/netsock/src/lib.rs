//! The socket protocol between ring-3 services and `netd`: UDP and TCP sockets on the node's
//! fabric /128 (`prefix::1`) or on the client's own task /128 (the one `bind_address` gave its
//! endpoint), spoken over ordinary IPC calls to `netd`'s endpoint.
//!
//! # Messages
//!
//! A request is a `call` whose label is one of the `OP_*` constants and whose four words are
//! the arguments below. Data travels in a memory grant (`call_grant`): the kernel maps the
//! client's buffer into `netd` for the duration of the call and tells it where in words 2
//! and 3 (address | writable, length), so `SEND` and `RECV` carry their handle and the data's
//! offset in the grant in words 0 and 1 only. The reply's label is [`OK`] (0) or a [`NetError`] code; its words are
//! the results.
//!
//! | op | words in | grant | words out |
//! |---|---|---|---|
//! | `OP_SOCKET` | kind (1 UDP, 2 TCP) | — | handle |
//! | `OP_BIND` | handle, local ([`Local::Node`] 0 / [`Local::Own`] 1), port (0: any) | — | port, /128 high, low |
//! | `OP_CONNECT` | handle, /128 high, /128 low, port | — | — |
//! | `OP_LISTEN` | handle, backlog (1..=[`BACKLOG_MAX`]) | — | — |
//! | `OP_ACCEPT` | handle | — | new handle, peer /128 high, low, peer port |
//! | `OP_SEND` | handle, offset of the data in the grant | read-only | bytes taken |
//! | `OP_RECV` | handle, offset of the data in the grant | writable | bytes written (TCP: 0 = the peer closed) |
//! | `OP_CLOSE` | handle | — | — |
//! | `OP_SHUTDOWN` | handle (TCP) | — | — |
//! | `OP_POLL` | wait (ms, ≤ [`POLL_WAIT_MAX_MS`]), epoch of the client's handles (0: any) | — | [`Ready`] masks: readable, writable, acceptable, hangup |
//!
//! `Local::Own` is the task /128 the kernel has bound to the *caller* (the kernel tells `netd`
//! who made the call): a client cannot name another task's /128. A TCP `CONNECT` returns at
//! once; the connection is usable when `POLL` reports the handle writable, and fails with
//! [`NetError::Refused`] (the peer reset the SYN) or [`NetError::TimedOut`]. `SEND` takes
//! what fits in the socket's buffer (backpressure: the bytes taken may be fewer than the
//! grant, and none is [`NetError::WouldBlock`]). `CLOSE` of a TCP socket sends what is still
//! buffered, then a FIN (`netd` keeps the stack socket until it is done, bounded); the
//! sockets of a client task that dies are closed the same way.
//!
//! A UDP buffer (both directions) starts with a [`DgramHeader`] ([`DGRAM_HEADER`] bytes: the
//! peer's /128 and port; on `SEND` an all-zero /128 means the connected peer), followed by the
//! payload. A TCP buffer is just bytes. `SEND` and `RECV` never block: when nothing can be
//! taken or given now they answer [`NetError::WouldBlock`] and the client retries (it waits on
//! its own endpoint or sleeps meanwhile).
//!
//! # Bounds
//!
//! Every resource a client can make `netd` hold is bounded: [`SOCKETS_PER_CLIENT`] sockets,
//! [`CLIENTS_MAX`] clients, [`BACKLOG_MAX`] pending connections per listener,
//! [`UDP_PAYLOAD_MAX`] bytes per datagram, [`UDP_QUEUE`] datagrams and [`TCP_BUFFER`] bytes
//! per direction per socket, [`GRANT_MAX`] bytes per grant. A request that breaks a rule gets
//! an error; nothing a client sends makes `netd` panic (the codec and the socket table are
//! total functions, host-tested and fuzzed).
//!
//! # Restarts
//!
//! `netd`'s sockets live in its memory: when it dies they are gone. Each incarnation serves
//! with its own epoch (its start number, from the supervisor) and every handle it gives
//! carries that epoch ([`make_handle`]), so a request naming a handle of an earlier `netd` is
//! answered [`NetError::Restarted`] — never served on whatever socket the new `netd` gave the
//! same slot. Its endpoint outlives it (supervisor), so a call made while it is down waits for
//! the next incarnation; a call in flight when it died (a `POLL` waiting, a `RECV`) fails with
//! the kernel's `DeadPeer`, which the client reports as [`NetError::Restarted`] too; a `POLL`
//! carries the epoch of the client's handles so that it is not left waiting on sockets the
//! new `netd` never had. The client opens its listeners and UDP sockets again; established
//! connections are lost (the peer's next segment is answered with an RST, or it times out).
//!
//! # Buffers
//!
//! A grant starts where the client's region (its mapped pages) does. A buffer at any offset in
//! a region is lent with the region's memory before it: `SEND`/`RECV` word 1 is where in the
//! grant the data starts (0..=[`OFFSET_MAX`]) and the grant's length is that offset plus the
//! data's length (at most [`GRANT_MAX`] in all).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod table;

use core::net::Ipv6Addr;

/// Request labels ("NS" in the high half, so they cannot be mistaken for the driver's or the
/// kernel's messages on `netd`'s endpoint).
pub const OP_BASE: u64 = 0x4e53_0000;
pub const OP_SOCKET: u64 = OP_BASE + 1;
pub const OP_BIND: u64 = OP_BASE + 2;
pub const OP_CONNECT: u64 = OP_BASE + 3;
pub const OP_LISTEN: u64 = OP_BASE + 4;
pub const OP_ACCEPT: u64 = OP_BASE + 5;
pub const OP_SEND: u64 = OP_BASE + 6;
pub const OP_RECV: u64 = OP_BASE + 7;
pub const OP_CLOSE: u64 = OP_BASE + 8;
pub const OP_SHUTDOWN: u64 = OP_BASE + 9;
pub const OP_POLL: u64 = OP_BASE + 10;

/// Whether `label` is a socket request (an `OP_*`, known or not).
pub const fn is_request(label: u64) -> bool {
    label & !0xffff == OP_BASE
}

/// The reply label of a request that succeeded.
pub const OK: u64 = 0;

/// Sockets one client may have open.
pub const SOCKETS_PER_CLIENT: usize = 12;
/// Sockets open in all (every client together).
pub const SOCKETS_MAX: usize = 64;
/// Stack TCP sockets in all: connections, the listening sockets behind each listener's
/// backlog, and closed connections still sending their last data (`netd`'s memory: each has
/// [`TCP_BUFFER`] bytes per direction).
pub const TCP_STACK_MAX: usize = 96;
/// Stack TCP sockets one client's handles may keep (its connections, its listeners' backlogs
/// and its closed connections still sending), so that one client cannot take them all.
pub const TCP_STACK_PER_CLIENT: usize = 24;
/// Longest `POLL` wait (ms).
pub const POLL_WAIT_MAX_MS: u64 = 60_000;
/// How long a TCP connect may take before it fails with [`NetError::TimedOut`] (ms).
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Clients (distinct badges) `netd` keeps sockets for.
pub const CLIENTS_MAX: usize = 32;
/// Connections a TCP listener holds before `ACCEPT` takes them.
pub const BACKLOG_MAX: u64 = 4;
/// Largest UDP payload: the fabric MTU (1404) less the IPv6 and UDP headers.
pub const UDP_PAYLOAD_MAX: usize = 1404 - 40 - 8;
/// Datagrams queued per UDP socket and direction.
pub const UDP_QUEUE: usize = 8;
/// Bytes buffered per TCP socket and direction.
pub const TCP_BUFFER: usize = 8192;
/// Largest grant a `SEND`/`RECV` may carry.
pub const GRANT_MAX: u64 = 64 * 1024;
/// The UDP buffer header.
pub const DGRAM_HEADER: usize = 24;
/// Ports handed out for port 0.
pub const EPHEMERAL: core::ops::RangeInclusive<u16> = 49152..=65535;
/// Ports no client may bind: the fabric's IPC port, its underlay port, and the node's own
/// UDP responder on the fabric /128 (`cargo xtask bench net`).
pub const RESERVED_PORTS: &[u16] = &[5001, 51820, 51900];

/// Why a request failed (the reply's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum NetError {
    /// An argument out of range (kind, flags, backlog, a non-zero reserved word).
    BadRequest = 1,
    /// A label in the protocol's range that names no operation.
    UnknownOp = 2,
    /// No such socket for this client.
    BadHandle = 3,
    /// The client has [`SOCKETS_PER_CLIENT`] sockets open (or `netd` has [`CLIENTS_MAX`] clients).
    TooManySockets = 4,
    /// Not possible in the socket's state (bind twice, listen on UDP, send before connect…).
    BadState = 5,
    AddrInUse = 6,
    /// A /128 the socket cannot use: `Own` without a bound task /128, a peer that is unspecified,
    /// multicast or loopback.
    BadAddress = 7,
    /// Port 0 where one is needed, or a reserved port.
    BadPort = 8,
    /// Nothing to take or no room now: retry.
    WouldBlock = 9,
    /// More than a datagram, a grant or a buffer may hold.
    TooLarge = 10,
    /// The grant is smaller than the header, or missing, or not writable for `RECV`.
    BadBuffer = 11,
    /// A TCP socket that is not (or no longer) connected.
    NotConnected = 12,
    /// An RST from the peer ended an established connection.
    Reset = 13,
    /// No route to the peer's /64 (not a cluster member).
    Unreachable = 14,
    /// No ephemeral port left.
    NoPorts = 15,
    /// The peer answered a TCP connect with a reset (nothing listens on that port).
    Refused = 16,
    /// A TCP connect got no answer within [`CONNECT_TIMEOUT_MS`], or an established peer
    /// stopped acknowledging for [`CONNECT_TIMEOUT_MS`] (no RST came).
    TimedOut = 17,
    /// The handle is from an earlier `netd` (its epoch is not this one's): `netd` restarted
    /// and every socket it had is gone. Also what a call in flight when `netd` died reports
    /// on the client side (the kernel's `DeadPeer`), and a `POLL` whose epoch is stale.
    Restarted = 18,
}

impl NetError {
    pub const ALL: [NetError; 18] = [
        NetError::BadRequest, NetError::UnknownOp, NetError::BadHandle, NetError::TooManySockets, NetError::BadState,
        NetError::AddrInUse, NetError::BadAddress, NetError::BadPort, NetError::WouldBlock, NetError::TooLarge,
        NetError::BadBuffer, NetError::NotConnected, NetError::Reset, NetError::Unreachable, NetError::NoPorts,
        NetError::Refused, NetError::TimedOut, NetError::Restarted,
    ];
    pub const fn code(self) -> u64 {
        self as u64
    }
    pub fn from_code(c: u64) -> Option<NetError> {
        NetError::ALL.iter().copied().find(|e| e.code() == c)
    }
}

/// Socket kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp = 1,
    Tcp = 2,
}

/// Which of its /128s a socket binds: the node's `prefix::1`, or the task /128 of the
/// client's own endpoint (it must have bound one with `bind_address`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Local {
    Node = 0,
    Own = 1,
}

/// A socket handle: the epoch of the `netd` that gave it (its start number, bits 16..64) and
/// the socket's slot (1..=[`SOCKETS_PER_CLIENT`], per client; bits 0..16). A handle whose
/// epoch is not the serving `netd`'s is answered [`NetError::Restarted`] (epoch 0: a handle
/// no `netd` gave, [`NetError::BadHandle`]).
pub type Handle = u64;

/// The slot of handle `h` (1..=[`SOCKETS_PER_CLIENT`] for a valid one): its bit in [`Ready`].
pub const fn slot_of(h: Handle) -> u64 {
    h & 0xffff
}

/// The epoch of the `netd` that gave handle `h`.
pub const fn epoch_of(h: Handle) -> u64 {
    h >> 16
}

/// The handle of `slot` given by the `netd` of `epoch` (< 2^48).
pub const fn make_handle(epoch: u64, slot: u64) -> Handle {
    epoch << 16 | (slot & 0xffff)
}

/// Largest offset of the data in the grant (`SEND`/`RECV` word 1).
pub const OFFSET_MAX: u64 = GRANT_MAX - 1;

/// A grant as the kernel presents it to `netd` (words 2 and 3 of the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub addr: u64,
    pub len: u64,
    pub writable: bool,
}

impl Grant {
    /// Words 2 and 3 as `netd` receives them: address 0 = nothing mapped.
    pub fn from_words(w2: u64, w3: u64) -> Option<Grant> {
        let addr = w2 & !1;
        (addr != 0 && w3 != 0).then_some(Grant { addr, len: w3, writable: w2 & 1 != 0 })
    }
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Socket { kind: Kind },
    Bind { h: Handle, local: Local, port: u16 },
    Connect { h: Handle, addr: Ipv6Addr, port: u16 },
    Listen { h: Handle, backlog: u8 },
    Accept { h: Handle },
    /// The data is `grant.len - off` bytes at `off` in the grant (a buffer that does not
    /// start where its region does is lent with the region's memory before it, `off` bytes).
    Send { h: Handle, off: u16, grant: Grant },
    Recv { h: Handle, off: u16, grant: Grant },
    Close { h: Handle },
    /// TCP: no more data from us (a FIN after what is buffered); receiving goes on.
    Shutdown { h: Handle },
    /// Which of the client's sockets are ready, waiting up to `wait_ms` for one to be.
    /// `epoch`: the epoch of the client's handles (0: any), so that a client whose `netd`
    /// restarted is told [`NetError::Restarted`] at once instead of waiting on nothing.
    Poll { wait_ms: u64, epoch: u64 },
}

fn addr_words(a: Ipv6Addr) -> (u64, u64) {
    let v = u128::from_be_bytes(a.octets());
    ((v >> 64) as u64, v as u64)
}

/// A /128 from two words (high, low).
pub fn addr_of(hi: u64, lo: u64) -> Ipv6Addr {
    Ipv6Addr::from((hi as u128) << 64 | lo as u128)
}

fn port(w: u64) -> Result<u16, NetError> {
    u16::try_from(w).map_err(|_| NetError::BadPort)
}

fn handle(w: u64) -> Result<Handle, NetError> {
    let s = slot_of(w);
    if s == 0 || s > SOCKETS_PER_CLIENT as u64 { Err(NetError::BadHandle) } else { Ok(w) }
}

impl Request {
    /// Decode a request from the message `netd` received: its label and words (words 2 and 3
    /// as the kernel rewrote them for a grant). Every word that is not an argument must be 0.
    pub fn decode(label: u64, w: [u64; 4]) -> Result<Request, NetError> {
        if !is_request(label) {
            return Err(NetError::UnknownOp);
        }
        let zero = |ws: &[u64]| if ws.iter().all(|x| *x == 0) { Ok(()) } else { Err(NetError::BadRequest) };
        Ok(match label {
            OP_SOCKET => {
                zero(&w[1..])?;
                let kind = match w[0] {
                    1 => Kind::Udp,
                    2 => Kind::Tcp,
                    _ => return Err(NetError::BadRequest),
                };
                Request::Socket { kind }
            }
            OP_BIND => {
                zero(&w[3..])?;
                let local = match w[1] {
                    0 => Local::Node,
                    1 => Local::Own,
                    _ => return Err(NetError::BadRequest),
                };
                Request::Bind { h: handle(w[0])?, local, port: port(w[2])? }
            }
            OP_CONNECT => Request::Connect { h: handle(w[0])?, addr: addr_of(w[1], w[2]), port: port(w[3])? },
            OP_LISTEN => {
                zero(&w[2..])?;
                if w[1] == 0 || w[1] > BACKLOG_MAX {
                    return Err(NetError::BadRequest);
                }
                Request::Listen { h: handle(w[0])?, backlog: w[1] as u8 }
            }
            OP_ACCEPT | OP_CLOSE | OP_SHUTDOWN => {
                zero(&w[1..])?;
                let h = handle(w[0])?;
                match label {
                    OP_ACCEPT => Request::Accept { h },
                    OP_CLOSE => Request::Close { h },
                    _ => Request::Shutdown { h },
                }
            }
            OP_POLL => {
                zero(&w[2..])?;
                if w[0] > POLL_WAIT_MAX_MS {
                    return Err(NetError::BadRequest);
                }
                Request::Poll { wait_ms: w[0], epoch: w[1] }
            }
            OP_SEND | OP_RECV => {
                if w[1] > OFFSET_MAX {
                    return Err(NetError::BadRequest);
                }
                let off = w[1] as u16;
                let h = handle(w[0])?;
                let grant = Grant::from_words(w[2], w[3]).ok_or(NetError::BadBuffer)?;
                if grant.len > GRANT_MAX {
                    return Err(NetError::TooLarge);
                }
                if grant.len <= off as u64 {
                    return Err(NetError::BadBuffer);
                }
                if label == OP_RECV {
                    if !grant.writable {
                        return Err(NetError::BadBuffer);
                    }
                    Request::Recv { h, off, grant }
                } else {
                    Request::Send { h, off, grant }
                }
            }
            _ => return Err(NetError::UnknownOp),
        })
    }

    /// The label and words a client calls with. For `SEND`/`RECV` words 2 and 3 are the
    /// client's buffer (address | writable, length), as `call_grant` takes them.
    pub fn encode(&self) -> (u64, [u64; 4]) {
        match *self {
            Request::Socket { kind } => (OP_SOCKET, [kind as u64, 0, 0, 0]),
            Request::Bind { h, local, port } => (OP_BIND, [h, local as u64, port as u64, 0]),
            Request::Connect { h, addr, port } => {
                let (hi, lo) = addr_words(addr);
                (OP_CONNECT, [h, hi, lo, port as u64])
            }
            Request::Listen { h, backlog } => (OP_LISTEN, [h, backlog as u64, 0, 0]),
            Request::Accept { h } => (OP_ACCEPT, [h, 0, 0, 0]),
            Request::Send { h, off, grant } => (OP_SEND, [h, off as u64, grant.addr | grant.writable as u64, grant.len]),
            Request::Recv { h, off, grant } => (OP_RECV, [h, off as u64, grant.addr | 1, grant.len]),
            Request::Close { h } => (OP_CLOSE, [h, 0, 0, 0]),
            Request::Shutdown { h } => (OP_SHUTDOWN, [h, 0, 0, 0]),
            Request::Poll { wait_ms, epoch } => (OP_POLL, [wait_ms, epoch, 0, 0]),
        }
    }

    /// The socket handle the request names, if any.
    pub fn handle(&self) -> Option<Handle> {
        match *self {
            Request::Socket { .. } | Request::Poll { .. } => None,
            Request::Bind { h, .. } | Request::Connect { h, .. } | Request::Listen { h, .. } | Request::Accept { h }
            | Request::Send { h, .. } | Request::Recv { h, .. } | Request::Close { h } | Request::Shutdown { h } => Some(h),
        }
    }

    /// The request as served by the `netd` of `epoch`: its handle checked against that epoch
    /// ([`NetError::Restarted`] for another `netd`'s, [`NetError::BadHandle`] for epoch 0) and
    /// reduced to its slot, which is what the socket table knows; a `POLL` from a client
    /// whose handles are another `netd`'s is [`NetError::Restarted`].
    pub fn for_epoch(mut self, epoch: u64) -> Result<Request, NetError> {
        let check = |h: Handle| match epoch_of(h) {
            0 => Err(NetError::BadHandle),
            e if e != epoch => Err(NetError::Restarted),
            _ => Ok(slot_of(h)),
        };
        match &mut self {
            Request::Socket { .. } => {}
            Request::Poll { epoch: e, .. } => {
                if *e != 0 && *e != epoch {
                    return Err(NetError::Restarted);
                }
            }
            Request::Bind { h, .. } | Request::Connect { h, .. } | Request::Listen { h, .. } | Request::Accept { h }
            | Request::Send { h, .. } | Request::Recv { h, .. } | Request::Close { h } | Request::Shutdown { h } => *h = check(*h)?,
        }
        Ok(self)
    }
}

/// A reply: `Ok(words)` or the error (label = its code).
pub fn encode_reply(r: Result<[u64; 4], NetError>) -> (u64, [u64; 4]) {
    match r {
        Ok(w) => (OK, w),
        Err(e) => (e.code(), [0; 4]),
    }
}

/// Decode a reply (client side). An unknown non-zero label is reported as `Err(None)`.
pub fn decode_reply(label: u64, w: [u64; 4]) -> Result<[u64; 4], Option<NetError>> {
    if label == OK { Ok(w) } else { Err(NetError::from_code(label)) }
}

/// `BIND`'s answer: the port and the /128 the socket is bound to.
pub fn bind_reply(addr: Ipv6Addr, port: u16) -> [u64; 4] {
    let (hi, lo) = addr_words(addr);
    [port as u64, hi, lo, 0]
}

/// `POLL`'s answer: one bit per handle (bit `h`) in each word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// `RECV` would not block: data, a datagram, the peer's FIN (0 bytes) or an error.
    pub readable: u64,
    /// `SEND` would not block: room, or an error to report.
    pub writable: u64,
    /// A listener with a connection `ACCEPT` can take.
    pub acceptable: u64,
    /// Failed (refused, reset, timed out) or closed by the peer.
    pub hangup: u64,
}

impl Ready {
    pub fn words(&self) -> [u64; 4] {
        [self.readable, self.writable, self.acceptable, self.hangup]
    }
    pub fn from_words(w: [u64; 4]) -> Ready {
        Ready { readable: w[0], writable: w[1], acceptable: w[2], hangup: w[3] }
    }
    pub fn any(&self) -> bool {
        self.readable | self.writable | self.acceptable | self.hangup != 0
    }
    /// The bit of handle `h` (its slot).
    pub fn bit(h: Handle) -> u64 {
        1u64.checked_shl(slot_of(h) as u32).unwrap_or(0)
    }
}

/// `ACCEPT`'s answer: the new handle and the peer.
pub fn accept_reply(h: Handle, peer: Ipv6Addr, port: u16) -> [u64; 4] {
    let (hi, lo) = addr_words(peer);
    [h, hi, lo, port as u64]
}

/// The header in front of a UDP datagram in a `SEND`/`RECV` buffer: the peer's /128 (16
/// bytes), its port (big-endian), 6 reserved bytes that must be 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DgramHeader {
    pub addr: Ipv6Addr,
    pub port: u16,
}

impl DgramHeader {
    pub fn encode(&self) -> [u8; DGRAM_HEADER] {
        let mut b = [0u8; DGRAM_HEADER];
        b[..16].copy_from_slice(&self.addr.octets());
        b[16..18].copy_from_slice(&self.port.to_be_bytes());
        b
    }
    /// The header at the start of `buf` and the payload after it.
    pub fn decode(buf: &[u8]) -> Result<(DgramHeader, &[u8]), NetError> {
        if buf.len() < DGRAM_HEADER {
            return Err(NetError::BadBuffer);
        }
        if buf[18..DGRAM_HEADER].iter().any(|b| *b != 0) {
            return Err(NetError::BadRequest);
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&buf[..16]);
        let payload = &buf[DGRAM_HEADER..];
        if payload.len() > UDP_PAYLOAD_MAX {
            return Err(NetError::TooLarge);
        }
        Ok((DgramHeader { addr: Ipv6Addr::from(a), port: u16::from_be_bytes([buf[16], buf[17]]) }, payload))
    }
}

/// Whether `a` can be a peer: not unspecified, loopback or multicast.
pub fn peer_ok(a: &Ipv6Addr) -> bool {
    !a.is_unspecified() && !a.is_loopback() && !a.is_multicast()
}

#[cfg(test)]
mod tests;
