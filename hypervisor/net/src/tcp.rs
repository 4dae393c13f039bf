//! TCP sockets for `netd`'s clients (the IPC socket protocol, `catenary-netsock`): smoltcp
//! TCP sockets on the fabric interface, bound to the node's /128 or to a task /128 of its /64
//! (see [`Node::add_socket_addr`]), so their segments travel encrypted to the peer whose /64
//! holds the destination. Each socket's buffers are fixed at open: the window smoltcp
//! advertises is what is free in the receive buffer, so a reader that does not read stops
//! the sender (flow control), and a full send buffer refuses more data (backpressure).

use super::*;
use smoltcp::socket::tcp;

/// A client's TCP socket (an index into the fabric interface's socket set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpSocket(SocketHandle);

/// Why a TCP operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpError {
    /// Port 0, an unspecified address, or the socket is not in a state for it.
    Invalid,
    /// Not (or no longer) connected.
    NotConnected,
}

/// Where a connection is, as the socket protocol reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a SYN.
    Listening,
    /// SYN sent or received, not established yet.
    Connecting,
    /// Established (both directions open).
    Open,
    /// The peer sent its FIN: what is buffered can still be read, we may still send.
    PeerClosed,
    /// We closed (FIN sent), the peer has not finished.
    Closing,
    /// Nothing left: closed normally, reset by the peer or timed out.
    Closed,
}

/// How long an unanswered connection lasts (SYN or data not acknowledged).
const TIMEOUT_MS: u64 = 10_000;
/// How often an idle connection probes its peer (four chances per timeout).
const KEEP_ALIVE_MS: u64 = TIMEOUT_MS / 4;

/// A connection's endpoints: (local /128, local port, peer /128, peer port).
pub type TcpTuple = (Ipv6Addr, u16, Ipv6Addr, u16);

/// RSTs remembered (the latest; each is looked for only until its connection is classified).
pub const RSTS_KEPT: usize = 64;

/// How an established connection that closed without the peer's FIN ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEnd {
    /// An RST from the peer arrived.
    Reset,
    /// Nothing came back for the timeout (the peer's node is gone, or it stopped acknowledging).
    TimedOut,
}

/// What the owner of a connection remembers between looks at it ([`Node::tcp_watch`]): its
/// endpoints and when it was last seen connected. smoltcp forgets the endpoints when the
/// connection ends and closes the same way on an RST and on a timeout, so the node keeps the
/// RSTs that reached the fabric interface and this says whose they were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpWatch {
    seen: Option<(TcpTuple, u64)>,
}

fn tcp_socket(buffer: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0u8; buffer]), tcp::SocketBuffer::new(vec![0u8; buffer]));
    s.set_timeout(Some(smoltcp::time::Duration::from_millis(TIMEOUT_MS)));
    // smoltcp's timeout also runs on an idle connection (from the last segment received):
    // keep-alives make a live peer answer well within it, so only a peer that is gone (or
    // stopped answering) times out
    s.set_keep_alive(Some(smoltcp::time::Duration::from_millis(KEEP_ALIVE_MS)));
    s
}

impl Node {
    fn tcp(&mut self, s: TcpSocket) -> &mut tcp::Socket<'static> {
        self.tun_sockets.get_mut::<tcp::Socket>(s.0)
    }

    /// A socket listening on `addr`:`port` (one connection: a listener with a backlog of N
    /// keeps N of these).
    pub fn tcp_listen(&mut self, addr: Ipv6Addr, port: u16, buffer: usize) -> Result<TcpSocket, TcpError> {
        let mut s = tcp_socket(buffer);
        s.listen(smoltcp::wire::IpListenEndpoint { addr: Some(IpAddress::Ipv6(addr)), port }).map_err(|_| TcpError::Invalid)?;
        Ok(TcpSocket(self.tun_sockets.add(s)))
    }

    /// Connect from `local`:`port` to `peer`:`peer_port` (the SYN goes at the next poll).
    pub fn tcp_connect(&mut self, local: Ipv6Addr, port: u16, peer: Ipv6Addr, peer_port: u16, buffer: usize) -> Result<TcpSocket, TcpError> {
        let mut s = tcp_socket(buffer);
        let remote = IpEndpoint { addr: IpAddress::Ipv6(peer), port: peer_port };
        let local = smoltcp::wire::IpListenEndpoint { addr: Some(IpAddress::Ipv6(local)), port };
        s.connect(self.tun.context(), remote, local).map_err(|_| TcpError::Invalid)?;
        Ok(TcpSocket(self.tun_sockets.add(s)))
    }

    pub fn tcp_phase(&mut self, s: TcpSocket) -> Phase {
        use tcp::State::*;
        match self.tcp(s).state() {
            Listen => Phase::Listening,
            SynSent | SynReceived => Phase::Connecting,
            Established => Phase::Open,
            CloseWait => Phase::PeerClosed,
            FinWait1 | FinWait2 | Closing | LastAck => Phase::Closing,
            TimeWait | Closed => Phase::Closed,
        }
    }

    /// The peer of a connection (None before one).
    pub fn tcp_peer(&mut self, s: TcpSocket) -> Option<(Ipv6Addr, u16)> {
        self.tcp(s).remote_endpoint().map(|e| match e.addr {
            IpAddress::Ipv6(a) => (a, e.port),
        })
    }

    /// Bytes waiting to be read, and whether the peer has finished sending (its FIN came and
    /// everything before it was read: a read returns 0). `Err`: nothing can be read (not
    /// connected yet, or closed without a FIN: reset or timed out).
    pub fn tcp_readable(&mut self, s: TcpSocket) -> Result<(usize, bool), TcpError> {
        let t = self.tcp(s);
        let n = t.recv_queue();
        match t.peek(0) {
            Ok(_) => Ok((n, false)),
            Err(tcp::RecvError::Finished) => Ok((0, true)),
            Err(tcp::RecvError::InvalidState) => Err(TcpError::NotConnected),
        }
    }

    /// Room in the send buffer (0 when sending is not possible).
    pub fn tcp_room(&mut self, s: TcpSocket) -> usize {
        let t = self.tcp(s);
        if t.may_send() { t.send_capacity() - t.send_queue() } else { 0 }
    }

    /// Queue as much of `data` as fits; returns the bytes taken (0: the buffer is full).
    pub fn tcp_send(&mut self, s: TcpSocket, data: &[u8]) -> Result<usize, TcpError> {
        let t = self.tcp(s);
        if !t.may_send() {
            return Err(TcpError::NotConnected);
        }
        t.send_slice(data).map_err(|_| TcpError::NotConnected)
    }

    /// Take up to `buf.len()` received bytes (0: nothing now, or the peer finished: see
    /// [`Node::tcp_readable`]).
    pub fn tcp_recv(&mut self, s: TcpSocket, buf: &mut [u8]) -> Result<usize, TcpError> {
        match self.tcp(s).recv_slice(buf) {
            Ok(n) => Ok(n),
            Err(tcp::RecvError::Finished) => Ok(0),
            Err(tcp::RecvError::InvalidState) => Err(TcpError::NotConnected),
        }
    }

    /// Send a FIN after what is buffered (receiving goes on until the peer's FIN).
    pub fn tcp_close(&mut self, s: TcpSocket) {
        self.tcp(s).close();
    }

    /// Reset the connection (an RST at the next poll).
    pub fn tcp_abort(&mut self, s: TcpSocket) {
        self.tcp(s).abort();
    }

    /// Drop the socket (whatever state it is in; nothing more is sent for it).
    pub fn tcp_remove(&mut self, s: TcpSocket) {
        self.tun_sockets.remove(s.0);
    }

    /// Look at connection `s` (its phase, as [`Node::tcp_phase`]): while it is connected,
    /// remember its endpoints in `w`; once it has ended without the peer's FIN, how: an RST
    /// for its endpoints that arrived since it was last seen connected is [`TcpEnd::Reset`],
    /// anything else (smoltcp's timeout: no answer within 10 s) [`TcpEnd::TimedOut`]. `None`
    /// while it lives, after a FIN, and for a connection never seen connected.
    pub fn tcp_watch(&mut self, s: TcpSocket, w: &mut TcpWatch) -> (Phase, Option<TcpEnd>) {
        let phase = self.tcp_phase(s);
        let t = self.tcp(s);
        if matches!(phase, Phase::Open | Phase::PeerClosed | Phase::Closing) {
            if let (Some(r), Some(l)) = (t.remote_endpoint(), t.local_endpoint()) {
                let (IpAddress::Ipv6(la), IpAddress::Ipv6(ra)) = (l.addr, r.addr);
                w.seen = Some(((la, l.port, ra, r.port), self.poll_ns));
            }
            return (phase, None);
        }
        if phase != Phase::Closed || self.tcp_readable(s).is_ok() {
            return (phase, None);
        }
        let Some((tuple, since)) = w.seen else { return (phase, None) };
        let reset = self.tcp_rsts.iter().any(|(t, at)| *t == tuple && *at >= since);
        (phase, Some(if reset { TcpEnd::Reset } else { TcpEnd::TimedOut }))
    }

    /// Remember an RST in packet `p` (IPv6 + TCP, no extension headers: what smoltcp peers
    /// send) on its way into the fabric interface.
    pub(crate) fn note_rst(&mut self, p: &[u8]) {
        if p.len() < 40 + 20 || p[0] >> 4 != 6 || p[6] != 6 || p[40 + 13] & 0x04 == 0 {
            return;
        }
        let addr = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[o..o + 16]);
            Ipv6Addr::from(a)
        };
        let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
        // ours is the destination
        let tuple = (addr(24), port(42), addr(8), port(40));
        if self.tcp_rsts.len() == RSTS_KEPT {
            self.tcp_rsts.pop_front();
        }
        self.tcp_rsts.push_back((tuple, self.poll_ns));
    }

    /// Packets to `addr` (a task /128 of this node's /64 with a client socket on it) reach
    /// the fabric interface, like those to the node's /128. Counted: one call per socket.
    pub fn add_socket_addr(&mut self, addr: Ipv6Addr) {
        *self.socket_addrs.entry(addr).or_insert(0) += 1;
    }

    /// Undo one [`Node::add_socket_addr`].
    pub fn remove_socket_addr(&mut self, addr: &Ipv6Addr) {
        if let Some(n) = self.socket_addrs.get_mut(addr) {
            *n -= 1;
            if *n == 0 {
                self.socket_addrs.remove(addr);
            }
        }
    }

    /// Whether the fabric interface takes packets for `dst`: the node's /128 or a task /128
    /// with a client socket on it.
    pub(crate) fn is_local_socket_addr(&self, dst: &Ipv6Addr) -> bool {
        *dst == self.fabric_addr || self.socket_addrs.contains_key(dst)
    }
}
