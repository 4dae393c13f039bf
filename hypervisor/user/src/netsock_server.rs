//! `netd`'s side of the IPC socket protocol (`catenary-netsock`): UDP and TCP sockets for
//! ring-3 clients on the node's fabric /128 or on the caller's own task /128.
//!
//! - **Who calls.** The client is the calling task as the kernel names it (`OP_CALLER` on
//!   the call's reply token: its task id and the /128 bound to it), never a word of the
//!   request: handles are per task, and `Local::Own` is the caller's /128 or nothing.
//! - **Checks first.** Each request is decoded and checked against the socket table (bounds,
//!   states, ports) before it touches the stack; data comes and goes through the call's
//!   memory grant, whose address and length are the kernel's (`grant_of`), never the words
//!   the client sent.
//! - **Bounded.** Sockets per client and in all (the table), stack TCP sockets in all
//!   ([`TCP_STACK_MAX`]: connections, listeners' backlogs, closed connections still sending),
//!   each with fixed buffers; `SEND` takes what fits (backpressure), one `POLL` waits per
//!   client.
//! - **Dead clients.** Every [`SWEEP_NS`] the server asks the kernel which of its clients
//!   are alive (`OP_ALIVE`) and closes the sockets of the dead as `CLOSE` would.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use catenary_ipc::netd::{OP_ALIVE, OP_CALLER};
use catenary_net::sockets::{UdpError, UdpSocket};
use catenary_net::tcp::{Phase, TcpEnd, TcpSocket, TcpWatch};
use catenary_net::Node;
use catenary_netsock::table::{Addrs, SocketTable, State};
use catenary_netsock::*;
use core::net::Ipv6Addr;

/// How often the clients' liveness is checked.
pub const SWEEP_NS: u64 = 500_000_000;
/// How long a closed TCP connection may take to send what was buffered and its FIN.
const LINGER_NS: u64 = 10_000_000_000;
const MS: u64 = 1_000_000;

enum Backing {
    /// Opened at bind/connect.
    None,
    Udp(UdpSocket),
    Tcp(TcpSocket),
    /// The stack sockets listening for this listener (at most its backlog); the ones a
    /// connection reached wait there for `ACCEPT`.
    Listener { addr: Ipv6Addr, port: u16, backlog: usize, socks: Vec<TcpSocket> },
}

struct Entry {
    backing: Backing,
    /// The task /128 this entry registered with the node (packets for it reach the stack).
    task_addr: Option<Ipv6Addr>,
    /// TCP: when a connect that is not established yet times out (0: not connecting).
    deadline: u64,
    /// TCP: the connection was established once (a later close without FIN is a reset).
    established: bool,
    /// TCP: how it failed, once seen.
    failed: Option<NetError>,
    /// TCP: its endpoints while connected (an RST or a timeout, told apart at the end).
    watch: TcpWatch,
}

impl Entry {
    fn new(backing: Backing) -> Entry {
        Entry { backing, task_addr: None, deadline: 0, established: false, failed: None, watch: TcpWatch::default() }
    }
}

pub struct SocketServer {
    router: u64,
    /// This `netd`'s epoch (its start number): in every handle it gives.
    epoch: u64,
    table: SocketTable,
    stack: BTreeMap<(u64, Handle), Entry>,
    /// Closed TCP connections still sending their last data: (socket, give up at, task /128,
    /// the client that had it).
    closing: Vec<(TcpSocket, u64, Option<Ipv6Addr>, u64)>,
    /// Stack TCP sockets that exist (≤ `TCP_STACK_MAX`).
    tcp_used: usize,
    /// `POLL`s waiting: client -> (reply token, deadline).
    waits: BTreeMap<u64, (u64, u64)>,
    next_sweep: u64,
    pub served: u64,
    pub refused: u64,
    /// Sockets closed because their client died.
    pub reaped: u64,
}

fn udp_err(e: UdpError) -> NetError {
    match e {
        UdpError::WouldBlock => NetError::WouldBlock,
        UdpError::TooLarge => NetError::TooLarge,
        UdpError::BadPort => NetError::AddrInUse,
    }
}

impl SocketServer {
    /// `router`: the capability slot with the ROUTER right (for `OP_CALLER`, `OP_ALIVE`).
    /// `epoch`: this incarnation's (1 or more), in every handle it gives.
    pub fn new(router: u64, epoch: u64) -> SocketServer {
        SocketServer {
            router, epoch: epoch.clamp(1, (1 << 48) - 1), table: SocketTable::new(), stack: BTreeMap::new(), closing: Vec::new(), tcp_used: 0, waits: BTreeMap::new(),
            next_sweep: 0, served: 0, refused: 0, reaped: 0,
        }
    }

    /// The calling task of call `token` and the /128 the kernel bound to it.
    fn caller(&self, token: u64) -> Option<(u64, Option<Ipv6Addr>)> {
        let mut a = [0u8; 16];
        let r = crate::net(self.router, OP_CALLER, &mut a, token).ok()?;
        let own = Ipv6Addr::from(a);
        Some((r, (!own.is_unspecified()).then_some(own)))
    }

    fn alive(&self, task: u64) -> bool {
        crate::net(self.router, OP_ALIVE, &mut [], task) != Ok(0)
    }

    /// Serve request (`label`, `words`), call `token`: the reply goes now, or (a `POLL` that
    /// waits) from [`SocketServer::poll`].
    pub fn serve(&mut self, node: &mut Node, token: u64, label: u64, words: [u64; 4]) {
        let Some((client, own)) = self.caller(token) else {
            let _ = crate::reply(token, NetError::BadRequest.code(), [0; 4]);
            return;
        };
        let r = self.serve_inner(node, client, own, token, label, words);
        let r = match r {
            Some(r) => r,
            None => return, // a POLL that waits
        };
        if r.is_ok() {
            self.served += 1
        } else {
            self.refused += 1;
            if self.refused <= 12 && r != Err(NetError::WouldBlock) {
                crate::logf!("net: socket request {:#x} from task {} refused: {:?}", label, client, r);
            }
        }
        let (l, w) = encode_reply(r);
        let _ = crate::reply(token, l, w);
    }

    fn tcp_budget(&self, client: u64) -> Result<(), NetError> {
        if self.tcp_used < TCP_STACK_MAX && self.client_tcp(client) < TCP_STACK_PER_CLIENT { Ok(()) } else { Err(NetError::TooManySockets) }
    }

    /// Stack TCP sockets `client` keeps (connections, listeners' backlogs, closing ones).
    fn client_tcp(&self, client: u64) -> usize {
        let held: usize = self.stack.range((client, 0)..=(client, Handle::MAX)).map(|(_, e)| match &e.backing {
            Backing::Tcp(_) => 1,
            Backing::Listener { socks, .. } => socks.len(),
            _ => 0,
        }).sum();
        held + self.closing.iter().filter(|c| c.3 == client).count()
    }

    fn register(&mut self, node: &mut Node, e: &mut Entry, addr: Ipv6Addr) {
        if addr != node.fabric_addr && e.task_addr.is_none() {
            node.add_socket_addr(addr);
            e.task_addr = Some(addr);
        }
    }

    fn serve_inner(&mut self, node: &mut Node, client: u64, own: Option<Ipv6Addr>, token: u64, label: u64, words: [u64; 4]) -> Option<Result<[u64; 4], NetError>> {
        let now = crate::now_ns();
        let addrs = Addrs { node: node.fabric_addr, own };
        // a handle of an earlier netd is `Restarted`; the table knows slots
        let req = match Request::decode(label, words).and_then(|r| r.for_epoch(self.epoch)) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        Some(match req {
            Request::Socket { kind } => self.table.socket(client, kind).map(|h| {
                self.stack.insert((client, h), Entry::new(Backing::None));
                [make_handle(self.epoch, h), 0, 0, 0]
            }),
            Request::Bind { h, local, port } => self.bind(node, client, h, local, port, addrs),
            Request::Connect { h, addr, port } => self.connect(node, client, h, addr, port, addrs, now),
            Request::Listen { h, backlog } => self.listen(node, client, h, backlog),
            Request::Accept { h } => self.accept(node, client, h),
            Request::Send { h, off, .. } => self.send(node, client, h, token, off as u64, words[3], now),
            Request::Recv { h, off, .. } => self.recv(node, client, h, token, off as u64, words[3], now),
            Request::Close { h } => self.table.close(client, h).map(|_| {
                self.drop_entry(node, client, h, now);
                [0; 4]
            }),
            Request::Shutdown { h } => match self.stack.get(&(client, h)).map(|e| &e.backing) {
                Some(Backing::Tcp(s)) => {
                    node.tcp_close(*s);
                    Ok([0; 4])
                }
                Some(_) => Err(NetError::BadState),
                None => Err(NetError::BadHandle),
            },
            Request::Poll { wait_ms, .. } => {
                let r = self.ready(node, client, now);
                if r.any() || wait_ms == 0 {
                    Ok(r.words())
                } else {
                    if let Some((old, _)) = self.waits.insert(client, (token, now.saturating_add(wait_ms * MS))) {
                        let _ = crate::reply(old, OK, [0; 4]); // cannot happen: one call at a time per task
                    }
                    return None;
                }
            }
        })
    }

    fn bind(&mut self, node: &mut Node, client: u64, h: Handle, local: Local, port: u16, addrs: Addrs) -> Result<[u64; 4], NetError> {
        let kind = self.table.get(client, h)?.kind;
        let (addr, p) = self.table.bind(client, h, local, port, addrs)?;
        if kind == Kind::Udp {
            match node.udp_open(addr, p, UDP_QUEUE, UDP_PAYLOAD_MAX) {
                Ok(s) => {
                    let mut e = Entry::new(Backing::Udp(s));
                    self.register(node, &mut e, addr);
                    self.stack.insert((client, h), e);
                }
                Err(e) => {
                    self.table.close(client, h)?;
                    self.stack.remove(&(client, h));
                    return Err(udp_err(e));
                }
            }
        }
        Ok(bind_reply(addr, p))
    }

    #[allow(clippy::too_many_arguments)]
    fn connect(&mut self, node: &mut Node, client: u64, h: Handle, peer: Ipv6Addr, port: u16, addrs: Addrs, now: u64) -> Result<[u64; 4], NetError> {
        let s = *self.table.get(client, h)?;
        let fresh = s.local.is_none();
        match s.kind {
            Kind::Udp => {
                let (addr, p) = self.table.connect(client, h, peer, port, addrs)?;
                if fresh {
                    match node.udp_open(addr, p, UDP_QUEUE, UDP_PAYLOAD_MAX) {
                        Ok(u) => {
                            self.stack.insert((client, h), Entry::new(Backing::Udp(u)));
                        }
                        Err(e) => {
                            self.table.close(client, h)?;
                            self.stack.remove(&(client, h));
                            return Err(udp_err(e));
                        }
                    }
                }
                Ok([0; 4])
            }
            Kind::Tcp => {
                if s.state != State::Open && s.state != State::Bound {
                    return Err(NetError::BadState);
                }
                self.tcp_budget(client)?;
                if peer_ok(&peer) && !node.routable(&peer) {
                    return Err(NetError::Unreachable);
                }
                let (addr, p) = self.table.connect(client, h, peer, port, addrs)?;
                match node.tcp_connect(addr, p, peer, port, TCP_BUFFER) {
                    Ok(t) => {
                        self.tcp_used += 1;
                        let mut e = Entry::new(Backing::Tcp(t));
                        e.deadline = now + CONNECT_TIMEOUT_MS * MS;
                        self.register(node, &mut e, addr);
                        self.stack.insert((client, h), e);
                        Ok([0; 4])
                    }
                    Err(_) => {
                        self.table.close(client, h)?;
                        self.stack.remove(&(client, h));
                        Err(NetError::BadAddress)
                    }
                }
            }
        }
    }

    fn listen(&mut self, node: &mut Node, client: u64, h: Handle, backlog: u8) -> Result<[u64; 4], NetError> {
        self.table.listen(client, h, backlog)?;
        let (addr, port) = self.table.get(client, h)?.local.ok_or(NetError::BadState)?;
        let mut socks = Vec::new();
        let room = TCP_STACK_PER_CLIENT.saturating_sub(self.client_tcp(client));
        while socks.len() < (backlog as usize).min(room) && self.tcp_used < TCP_STACK_MAX {
            match node.tcp_listen(addr, port, TCP_BUFFER) {
                Ok(s) => {
                    socks.push(s);
                    self.tcp_used += 1;
                }
                Err(_) => break,
            }
        }
        if socks.is_empty() {
            self.table.set_state(client, h, State::Bound)?;
            return Err(NetError::TooManySockets);
        }
        let mut e = Entry::new(Backing::Listener { addr, port, backlog: backlog as usize, socks });
        self.register(node, &mut e, addr);
        self.stack.insert((client, h), e);
        Ok([0; 4])
    }

    fn accept(&mut self, node: &mut Node, client: u64, h: Handle) -> Result<[u64; 4], NetError> {
        let Some(Entry { backing: Backing::Listener { addr, socks, .. }, .. }) = self.stack.get(&(client, h)) else {
            self.table.get(client, h)?;
            return Err(NetError::BadState);
        };
        let addr = *addr;
        let Some(i) = socks.iter().position(|s| matches!(node.tcp_phase(*s), Phase::Open | Phase::PeerClosed)) else {
            return Err(NetError::WouldBlock);
        };
        let s = socks[i];
        let peer = node.tcp_peer(s).ok_or(NetError::WouldBlock)?;
        let n = self.table.accepted(client, h, peer)?;
        if let Some(Entry { backing: Backing::Listener { socks, .. }, .. }) = self.stack.get_mut(&(client, h)) {
            socks.remove(i);
        }
        let mut e = Entry::new(Backing::Tcp(s));
        e.established = true;
        self.register(node, &mut e, addr);
        self.stack.insert((client, n), e);
        self.rearm(node, client, h);
        Ok(accept_reply(make_handle(self.epoch, n), peer.0, peer.1))
    }

    /// Top a listener up to its backlog (as the budget allows) and drop the stack sockets
    /// whose connection failed before it was accepted.
    fn rearm(&mut self, node: &mut Node, client: u64, h: Handle) {
        let mine = self.client_tcp(client);
        let Some(Entry { backing: Backing::Listener { addr, port, backlog, socks }, .. }) = self.stack.get_mut(&(client, h)) else { return };
        let before = socks.len();
        socks.retain(|s| {
            let dead = node.tcp_phase(*s) == Phase::Closed;
            if dead {
                node.tcp_remove(*s);
            }
            !dead
        });
        self.tcp_used -= before - socks.len();
        let mut mine = mine - (before - socks.len());
        while socks.len() < *backlog && self.tcp_used < TCP_STACK_MAX && mine < TCP_STACK_PER_CLIENT {
            match node.tcp_listen(*addr, *port, TCP_BUFFER) {
                Ok(s) => {
                    socks.push(s);
                    self.tcp_used += 1;
                    mine += 1;
                }
                Err(_) => break,
            }
        }
    }

    /// Bring a TCP entry's state up to date with its stack socket; the error a call on it
    /// gets now, if any.
    fn sync_tcp(&mut self, node: &mut Node, client: u64, h: Handle, now: u64) -> Result<(TcpSocket, Phase), NetError> {
        let e = self.stack.get_mut(&(client, h)).ok_or(NetError::BadHandle)?;
        let Backing::Tcp(s) = e.backing else { return Err(NetError::BadState) };
        if let Some(f) = e.failed {
            return Err(f);
        }
        let (phase, end) = node.tcp_watch(s, &mut e.watch);
        let state = match phase {
            Phase::Connecting if now >= e.deadline => {
                node.tcp_abort(s);
                e.failed = Some(NetError::TimedOut);
                State::Closed
            }
            Phase::Connecting | Phase::Listening => State::Connecting,
            Phase::Open | Phase::PeerClosed | Phase::Closing => {
                e.established = true;
                State::Connected
            }
            Phase::Closed => {
                if node.tcp_readable(s).is_err() {
                    // no FIN came: the peer reset it, or the SYN got a reset, or no answer
                    // established: an RST from the peer, or no answer for 10 s
                    e.failed = Some(if e.established {
                        if end == Some(TcpEnd::Reset) { NetError::Reset } else { NetError::TimedOut }
                    } else if now >= e.deadline {
                        NetError::TimedOut
                    } else {
                        NetError::Refused
                    });
                }
                State::Closed
            }
        };
        let failed = e.failed;
        let _ = self.table.set_state(client, h, state);
        match failed {
            Some(f) => Err(f),
            None => Ok((s, phase)),
        }
    }

    fn udp_of(&self, client: u64, h: Handle) -> Result<UdpSocket, NetError> {
        match self.stack.get(&(client, h)).map(|e| &e.backing) {
            Some(Backing::Udp(s)) => Ok(*s),
            Some(_) => Err(NetError::BadState),
            None => Err(NetError::BadHandle),
        }
    }

    /// The data of call `token`: the kernel's grant, cut to the length the kernel passed on
    /// (word 3), and where in it the data starts (`off`) and how long it is.
    fn data_of(token: u64, off: u64, claimed: u64) -> Result<(crate::Grant, u64, usize), NetError> {
        let g = crate::grant_of(token).ok_or(NetError::BadBuffer)?;
        let end = g.len().min(claimed).min(GRANT_MAX);
        if end <= off {
            return Err(NetError::BadBuffer);
        }
        Ok((g, off, (end - off) as usize))
    }

    #[allow(clippy::too_many_arguments)]
    fn send(&mut self, node: &mut Node, client: u64, h: Handle, token: u64, off: u64, claimed: u64, now: u64) -> Result<[u64; 4], NetError> {
        let kind = self.table.get(client, h)?.kind;
        let (g, off, len) = Self::data_of(token, off, claimed)?;
        if kind == Kind::Udp {
            if len < DGRAM_HEADER {
                return Err(NetError::BadBuffer);
            }
            let mut buf = alloc::vec![0u8; len.min(DGRAM_HEADER + UDP_PAYLOAD_MAX + 1)];
            g.read(off, &mut buf);
            let (hdr, payload) = DgramHeader::decode(&buf)?;
            let to = (!hdr.addr.is_unspecified()).then_some((hdr.addr, hdr.port));
            let (dst, port) = self.table.check_send(client, h, to)?.ok_or(NetError::BadState)?;
            let s = self.udp_of(client, h)?;
            node.udp_send(s, dst, port, payload).map_err(udp_err)?;
            return Ok([payload.len() as u64, 0, 0, 0]);
        }
        if matches!(self.table.get(client, h)?.state, State::Open | State::Bound | State::Listening(_)) {
            return Err(NetError::NotConnected);
        }
        let (s, phase) = self.sync_tcp(node, client, h, now)?;
        match phase {
            Phase::Connecting => return Err(NetError::WouldBlock),
            Phase::Open | Phase::PeerClosed => {}
            _ => return Err(NetError::NotConnected), // shut down (our FIN went)
        }
        let n = len.min(node.tcp_room(s));
        if n == 0 {
            return Err(NetError::WouldBlock);
        }
        let mut buf = alloc::vec![0u8; n];
        g.read(off, &mut buf);
        let taken = node.tcp_send(s, &buf).map_err(|_| NetError::NotConnected)?;
        if taken == 0 {
            return Err(NetError::WouldBlock);
        }
        Ok([taken as u64, 0, 0, 0])
    }

    #[allow(clippy::too_many_arguments)]
    fn recv(&mut self, node: &mut Node, client: u64, h: Handle, token: u64, off: u64, claimed: u64, now: u64) -> Result<[u64; 4], NetError> {
        let kind = self.table.get(client, h)?.kind;
        let (g, off, len) = Self::data_of(token, off, claimed)?;
        if !g.writable() {
            return Err(NetError::BadBuffer);
        }
        if kind == Kind::Udp {
            self.table.check_recv(client, h)?;
            if len < DGRAM_HEADER {
                return Err(NetError::BadBuffer);
            }
            let s = self.udp_of(client, h)?;
            let mut buf = alloc::vec![0u8; UDP_PAYLOAD_MAX];
            let (n, from, port) = node.udp_recv(s, &mut buf).ok_or(NetError::WouldBlock)?;
            let n = n.min(len - DGRAM_HEADER); // the rest of a datagram the buffer cannot hold is dropped
            g.write(off, &DgramHeader { addr: from, port }.encode());
            g.write(off + DGRAM_HEADER as u64, &buf[..n]);
            return Ok([(DGRAM_HEADER + n) as u64, 0, 0, 0]);
        }
        self.table.check_recv(client, h).or_else(|e| if e == NetError::WouldBlock { Ok(()) } else { Err(e) })?;
        // data a reset connection had received is not handed out: its end is unknown
        let (s, phase) = self.sync_tcp(node, client, h, now)?;
        if phase == Phase::Connecting {
            return Err(NetError::WouldBlock);
        }
        let (avail, fin) = node.tcp_readable(s).map_err(|_| NetError::NotConnected)?;
        if avail == 0 {
            return if fin { Ok([0; 4]) } else { Err(NetError::WouldBlock) };
        }
        let mut buf = alloc::vec![0u8; avail.min(len).min(TCP_BUFFER)];
        let n = node.tcp_recv(s, &mut buf).map_err(|_| NetError::NotConnected)?;
        g.write(off, &buf[..n]);
        Ok([n as u64, 0, 0, 0])
    }

    /// The stack side of a closed handle: UDP dropped; TCP closed gracefully (kept until its
    /// FIN is through, bounded by `LINGER_NS`); a listener's unaccepted connections reset.
    fn drop_entry(&mut self, node: &mut Node, client: u64, h: Handle, now: u64) {
        let Some(e) = self.stack.remove(&(client, h)) else { return };
        let mut linger = None;
        match e.backing {
            Backing::None => {}
            Backing::Udp(s) => node.udp_close(s),
            Backing::Tcp(s) => {
                if node.tcp_phase(s) == Phase::Closed {
                    node.tcp_remove(s);
                    self.tcp_used -= 1;
                } else {
                    node.tcp_close(s);
                    linger = Some(s);
                }
            }
            Backing::Listener { socks, .. } => {
                for s in socks {
                    node.tcp_remove(s);
                    self.tcp_used -= 1;
                }
            }
        }
        // a client over its share (it closes faster than its connections finish) loses the
        // linger: reset, dropped at the next pass
        let over = linger.is_some() && self.client_tcp(client) >= TCP_STACK_PER_CLIENT;
        if let (true, Some(s)) = (over, linger) {
            node.tcp_abort(s);
        }
        match (linger, e.task_addr) {
            (Some(s), a) => self.closing.push((s, if over { now } else { now + LINGER_NS }, a, client)),
            (None, Some(a)) => node.remove_socket_addr(&a),
            (None, None) => {}
        }
    }

    /// Which of `client`'s sockets are ready.
    fn ready(&mut self, node: &mut Node, client: u64, now: u64) -> Ready {
        let mut r = Ready::default();
        for h in self.table.handles(client) {
            let bit = Ready::bit(h);
            match self.stack.get(&(client, h)).map(|e| &e.backing) {
                Some(Backing::Udp(s)) => {
                    let (rd, wr) = node.udp_ready(*s);
                    if rd {
                        r.readable |= bit;
                    }
                    if wr {
                        r.writable |= bit;
                    }
                    continue;
                }
                Some(Backing::Listener { socks, .. }) => {
                    if socks.iter().any(|s| matches!(node.tcp_phase(*s), Phase::Open | Phase::PeerClosed)) {
                        r.acceptable |= bit;
                    }
                    continue;
                }
                Some(Backing::Tcp(_)) => {}
                Some(Backing::None) | None => continue,
            }
            match self.sync_tcp(node, client, h, now) {
                Err(_) => {
                    r.readable |= bit;
                    r.writable |= bit;
                    r.hangup |= bit;
                }
                Ok((s, phase)) => {
                    if phase == Phase::Connecting {
                        continue;
                    }
                    match node.tcp_readable(s) {
                        Ok((n, fin)) => {
                            if n > 0 || fin {
                                r.readable |= bit;
                            }
                            if fin {
                                r.hangup |= bit;
                            }
                        }
                        Err(_) => r.hangup |= bit,
                    }
                    if matches!(phase, Phase::Open | Phase::PeerClosed) && node.tcp_room(s) > 0 {
                        r.writable |= bit;
                    }
                    if phase == Phase::PeerClosed {
                        r.hangup |= bit;
                    }
                }
            }
        }
        r
    }

    /// Run once per `netd` pass: answer `POLL`s whose sockets became ready (or whose wait is
    /// over), re-arm listeners, let closed connections go, close the sockets of dead clients.
    pub fn poll(&mut self, node: &mut Node, now: u64) {
        let waiting: Vec<u64> = self.waits.keys().copied().collect();
        for c in waiting {
            let r = self.ready(node, c, now);
            let due = self.waits.get(&c).is_some_and(|(_, d)| now >= *d);
            if r.any() || due {
                if let Some((token, _)) = self.waits.remove(&c) {
                    let _ = crate::reply(token, OK, r.words());
                    self.served += 1;
                }
            }
        }
        let listeners: Vec<(u64, Handle)> = self.stack.iter().filter(|(_, e)| matches!(e.backing, Backing::Listener { .. })).map(|(k, _)| *k).collect();
        for (c, h) in listeners {
            self.rearm(node, c, h);
        }
        let mut i = 0;
        while i < self.closing.len() {
            let (s, until, a, _) = self.closing[i];
            if node.tcp_phase(s) == Phase::Closed || now >= until {
                node.tcp_remove(s);
                self.tcp_used -= 1;
                if let Some(a) = a {
                    node.remove_socket_addr(&a);
                }
                self.closing.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_NS;
            let mut clients = self.table.client_ids();
            clients.extend(self.waits.keys().copied());
            clients.sort_unstable();
            clients.dedup();
            for c in clients {
                if self.alive(c) {
                    continue;
                }
                self.waits.remove(&c);
                let handles = self.table.handles(c);
                self.table.forget_client(c);
                for h in &handles {
                    self.drop_entry(node, c, *h, now);
                }
                self.reaped += handles.len() as u64;
                crate::logf!("net: sockets: client task {} died: closed its {} socket(s) ({} open in all, {} stack TCP sockets)", c, handles.len(), self.table.len(), self.tcp_used);
            }
        }
    }
}
