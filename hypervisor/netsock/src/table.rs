//! The socket table `netd` keeps: which client (badge) has which sockets, in which state, on
//! which local /128 and port. It decides every request's legality before `netd` touches its
//! IP stack, and bounds what a client can hold (sockets per client, clients, backlog, ports).
//! Pure bookkeeping: `netd` maps each entry to a smoltcp socket.

use crate::{peer_ok, Handle, Kind, Local, NetError, BACKLOG_MAX, CLIENTS_MAX, EPHEMERAL, RESERVED_PORTS, SOCKETS_MAX, SOCKETS_PER_CLIENT};
use alloc::collections::{BTreeMap, BTreeSet};
use core::net::Ipv6Addr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Created, no local address yet.
    Open,
    /// Bound to a local /128 and port (UDP: ready to send and receive).
    Bound,
    /// TCP: accepting connections (backlog).
    Listening(u8),
    /// TCP: connect requested, not established yet; UDP: a default peer.
    Connecting,
    /// TCP: established (also an accepted connection).
    Connected,
    /// TCP: the peer closed or reset; only `RECV` of what is left and `CLOSE`.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub kind: Kind,
    pub state: State,
    pub local: Option<(Ipv6Addr, u16)>,
    pub peer: Option<(Ipv6Addr, u16)>,
    /// `netd`'s own index for the stack socket behind it.
    pub stack: Option<usize>,
}

/// The client's addresses as `netd` knows them: the node's /128, and the task /128 bound to
/// the client's endpoint (if any).
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub node: Ipv6Addr,
    pub own: Option<Ipv6Addr>,
}

#[derive(Default)]
pub struct SocketTable {
    clients: BTreeMap<u64, [Option<Socket>; SOCKETS_PER_CLIENT]>,
    ports: BTreeSet<(Ipv6Addr, u8, u16)>,
    next_ephemeral: u16,
}

fn kind_key(k: Kind) -> u8 {
    k as u8
}

impl SocketTable {
    pub fn new() -> SocketTable {
        SocketTable { clients: BTreeMap::new(), ports: BTreeSet::new(), next_ephemeral: *EPHEMERAL.start() }
    }

    /// Sockets open in all.
    pub fn len(&self) -> usize {
        self.clients.values().map(|c| c.iter().flatten().count()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Clients with at least one socket.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    pub fn get(&self, client: u64, h: Handle) -> Result<&Socket, NetError> {
        let i = (h as usize).checked_sub(1).ok_or(NetError::BadHandle)?;
        self.clients.get(&client).and_then(|c| c.get(i)).and_then(|s| s.as_ref()).ok_or(NetError::BadHandle)
    }

    pub fn get_mut(&mut self, client: u64, h: Handle) -> Result<&mut Socket, NetError> {
        let i = (h as usize).checked_sub(1).ok_or(NetError::BadHandle)?;
        self.clients.get_mut(&client).and_then(|c| c.get_mut(i)).and_then(|s| s.as_mut()).ok_or(NetError::BadHandle)
    }

    /// The clients that hold sockets.
    pub fn client_ids(&self) -> alloc::vec::Vec<u64> {
        self.clients.keys().copied().collect()
    }

    /// The handles `client` has open.
    pub fn handles(&self, client: u64) -> alloc::vec::Vec<Handle> {
        self.clients.get(&client).map(|c| c.iter().enumerate().filter(|(_, s)| s.is_some()).map(|(i, _)| i as Handle + 1).collect()).unwrap_or_default()
    }

    /// `netd` saw the stack socket change state (TCP: connected, closed by the peer).
    pub fn set_state(&mut self, client: u64, h: Handle, state: State) -> Result<(), NetError> {
        self.get_mut(client, h)?.state = state;
        Ok(())
    }

    /// A new socket (state `Open`).
    pub fn socket(&mut self, client: u64, kind: Kind) -> Result<Handle, NetError> {
        if !self.clients.contains_key(&client) && self.clients.len() >= CLIENTS_MAX {
            return Err(NetError::TooManySockets);
        }
        if self.len() >= SOCKETS_MAX {
            return Err(NetError::TooManySockets);
        }
        let c = self.clients.entry(client).or_insert([None; SOCKETS_PER_CLIENT]);
        let i = c.iter().position(|s| s.is_none()).ok_or(NetError::TooManySockets)?;
        c[i] = Some(Socket { kind, state: State::Open, local: None, peer: None, stack: None });
        Ok(i as Handle + 1)
    }

    fn take_port(&mut self, addr: Ipv6Addr, kind: Kind, port: u16) -> Result<u16, NetError> {
        let k = kind_key(kind);
        if port != 0 {
            if RESERVED_PORTS.contains(&port) {
                return Err(NetError::BadPort);
            }
            if !self.ports.insert((addr, k, port)) {
                return Err(NetError::AddrInUse);
            }
            return Ok(port);
        }
        // bounded search: at most the whole ephemeral range once
        let span = (*EPHEMERAL.end() - *EPHEMERAL.start()) as u32 + 1;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p >= *EPHEMERAL.end() { *EPHEMERAL.start() } else { p + 1 };
            if !RESERVED_PORTS.contains(&p) && self.ports.insert((addr, k, p)) {
                return Ok(p);
            }
        }
        Err(NetError::NoPorts)
    }

    /// Bind to the node's or the client's own /128; port 0 picks an ephemeral one.
    pub fn bind(&mut self, client: u64, h: Handle, local: Local, port: u16, addrs: Addrs) -> Result<(Ipv6Addr, u16), NetError> {
        let s = *self.get(client, h)?;
        if s.state != State::Open {
            return Err(NetError::BadState);
        }
        let addr = match local {
            Local::Node => addrs.node,
            Local::Own => addrs.own.ok_or(NetError::BadAddress)?,
        };
        let p = self.take_port(addr, s.kind, port)?;
        let s = self.get_mut(client, h)?;
        s.local = Some((addr, p));
        s.state = State::Bound;
        Ok((addr, p))
    }

    /// Connect (TCP) or set the default peer (UDP). An unbound socket is bound to the node's
    /// /128 and an ephemeral port first.
    pub fn connect(&mut self, client: u64, h: Handle, peer: Ipv6Addr, port: u16, addrs: Addrs) -> Result<(Ipv6Addr, u16), NetError> {
        let s = *self.get(client, h)?;
        if !peer_ok(&peer) {
            return Err(NetError::BadAddress);
        }
        if port == 0 {
            return Err(NetError::BadPort);
        }
        match (s.kind, s.state) {
            (_, State::Open) => {
                self.bind(client, h, Local::Node, 0, addrs)?;
            }
            (_, State::Bound) => {}
            (Kind::Udp, State::Connecting) => {}
            _ => return Err(NetError::BadState),
        }
        let s = self.get_mut(client, h)?;
        s.peer = Some((peer, port));
        s.state = State::Connecting;
        Ok(s.local.unwrap_or((addrs.node, 0)))
    }

    pub fn listen(&mut self, client: u64, h: Handle, backlog: u8) -> Result<(), NetError> {
        let s = self.get_mut(client, h)?;
        if s.kind != Kind::Tcp || s.state != State::Bound {
            return Err(NetError::BadState);
        }
        if backlog == 0 || backlog as u64 > BACKLOG_MAX {
            return Err(NetError::BadRequest);
        }
        s.state = State::Listening(backlog);
        Ok(())
    }

    /// A connection on listener `h` was accepted by the stack: a new socket for it (the
    /// listener's local address is shared, not taken again).
    pub fn accepted(&mut self, client: u64, h: Handle, peer: (Ipv6Addr, u16)) -> Result<Handle, NetError> {
        let l = *self.get(client, h)?;
        if !matches!(l.state, State::Listening(_)) {
            return Err(NetError::BadState);
        }
        let n = self.socket(client, Kind::Tcp)?;
        let s = self.get_mut(client, n)?;
        *s = Socket { kind: Kind::Tcp, state: State::Connected, local: None, peer: Some(peer), stack: None };
        Ok(n)
    }

    /// May `h` send now? Returns the destination for a UDP datagram (`to`: the header's
    /// peer, or None for the connected one).
    pub fn check_send(&self, client: u64, h: Handle, to: Option<(Ipv6Addr, u16)>) -> Result<Option<(Ipv6Addr, u16)>, NetError> {
        let s = self.get(client, h)?;
        match s.kind {
            Kind::Udp => {
                if !matches!(s.state, State::Bound | State::Connecting) {
                    return Err(NetError::BadState);
                }
                let dst = match to {
                    Some(d) => d,
                    None => s.peer.ok_or(NetError::NotConnected)?,
                };
                if !peer_ok(&dst.0) {
                    return Err(NetError::BadAddress);
                }
                if dst.1 == 0 {
                    return Err(NetError::BadPort);
                }
                Ok(Some(dst))
            }
            Kind::Tcp => match s.state {
                State::Connected => Ok(None),
                State::Connecting => Err(NetError::WouldBlock),
                State::Closed => Err(NetError::Reset),
                _ => Err(NetError::NotConnected),
            },
        }
    }

    pub fn check_recv(&self, client: u64, h: Handle) -> Result<(), NetError> {
        let s = self.get(client, h)?;
        match (s.kind, s.state) {
            (Kind::Udp, State::Bound | State::Connecting) => Ok(()),
            (Kind::Tcp, State::Connected | State::Closed) => Ok(()),
            (Kind::Tcp, State::Connecting) => Err(NetError::WouldBlock),
            _ => Err(NetError::BadState),
        }
    }

    /// Close `h`: its port is free again (a listener's accepted connections stay). Returns
    /// the socket as it was (for `netd` to drop the stack socket).
    pub fn close(&mut self, client: u64, h: Handle) -> Result<Socket, NetError> {
        let s = *self.get(client, h)?;
        if let Some((a, p)) = s.local {
            self.ports.remove(&(a, kind_key(s.kind), p));
        }
        let c = self.clients.get_mut(&client).ok_or(NetError::BadHandle)?;
        c[h as usize - 1] = None;
        if c.iter().all(|s| s.is_none()) {
            self.clients.remove(&client);
        }
        Ok(s)
    }

    /// Everything a client held (it died, or its badge is no longer served).
    pub fn forget_client(&mut self, client: u64) -> alloc::vec::Vec<Socket> {
        let mut out = alloc::vec::Vec::new();
        for h in 1..=SOCKETS_PER_CLIENT as Handle {
            if let Ok(s) = self.close(client, h) {
                out.push(s);
            }
        }
        out
    }
}
