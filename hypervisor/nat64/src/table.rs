//! The NAT64 state (RFC 6146 §3.1–3.5): bindings (BIB entries) and sessions, bounded, with
//! the RFC's timeouts.
//!
//! - **Mapping: endpoint-independent** (RFC 6146 REQ 1, RFC 4787): one IPv6 transport address
//!   (address, port or ICMP identifier) gets one IPv4 port on the pool address for every
//!   destination, so a peer-to-peer application sees a stable address.
//! - **Filtering: address- and port-dependent**: an IPv4 packet is let in only on a session an
//!   IPv6 host opened to that IPv4 address and port (RFC 6146 allows this; it is the strict
//!   choice for a gateway whose inside is microVMs).
//! - **Bounds and policy when full**: at most `max_sessions` sessions and `max_bindings`
//!   bindings; a new session that does not fit is refused (`Drop::TableFull`) and nothing
//!   existing is evicted, so established flows never break because of new ones.
//! - **Timeouts**: UDP 5 min (RFC 6146 §4: at least 2 min), TCP established 2 h 4 min, TCP
//!   transitory 4 min, ICMP query 60 s; a binding lives while it has a session.
use alloc::collections::BTreeMap;
use core::time::Duration;

use crate::{Config, Drop};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo (the identifier plays the port).
    Icmp,
}

/// One IPv6 transport address and the IPv4 port it is mapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    pub proto: Proto,
    pub v6: [u8; 16],
    pub v6_port: u16,
    pub v4_port: u16,
}

/// The TCP states RFC 6146 §3.5.2 keeps, collapsed to what decides the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// A SYN went one way only.
    Opening { v6_syn: bool, v4_syn: bool },
    Established,
    /// FIN seen (one way or both) or RST: the transitory timeout applies.
    Closing,
}

#[derive(Clone, Copy, Debug)]
pub struct Session {
    pub expires: Duration,
    pub tcp: Option<TcpState>,
}

/// Session key: (proto, IPv4 port of the binding, remote IPv4 address, remote port).
type SessionKey = (Proto, u16, [u8; 4], u16);

#[derive(Default)]
pub struct Table {
    by_v6: BTreeMap<(Proto, [u8; 16], u16), u16>,
    by_v4: BTreeMap<(Proto, u16), Binding>,
    sessions: BTreeMap<SessionKey, Session>,
    /// Sessions per binding (a binding goes when its last session does).
    refs: BTreeMap<(Proto, u16), u32>,
    next_port: u16,
    /// UDP ports the gateway itself uses (DNS64's upstream questions): never handed out.
    reserved: alloc::collections::BTreeSet<u16>,
}

/// The far (IPv4) end of a packet and its protocol: what a session is about.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub proto: Proto,
    pub remote: [u8; 4],
    /// The remote port (0 for ICMP echo).
    pub remote_port: u16,
    /// TCP segments only.
    pub tcp: Option<TcpFlags>,
}

/// TCP flags of a segment, as far as the state machine cares.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

impl Table {
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn bindings(&self) -> usize {
        self.by_v4.len()
    }

    pub fn binding_for_v4(&self, proto: Proto, v4_port: u16) -> Option<Binding> {
        self.by_v4.get(&(proto, v4_port)).copied()
    }

    pub fn binding_for_v6(&self, proto: Proto, v6: [u8; 16], v6_port: u16) -> Option<Binding> {
        self.by_v6.get(&(proto, v6, v6_port)).and_then(|p| self.by_v4.get(&(proto, *p))).copied()
    }

    pub fn has_session(&self, proto: Proto, v4_port: u16, remote: [u8; 4], remote_port: u16) -> bool {
        self.sessions.contains_key(&(proto, v4_port, remote, remote_port))
    }

    /// An outbound packet from `v6`:`v6_port` to `remote`:`remote_port`: find or make the
    /// binding and the session, refresh the session's timer. Returns the binding.
    pub fn outbound(&mut self, cfg: &Config, now: Duration, flow: Flow, v6: [u8; 16], v6_port: u16) -> Result<Binding, Drop> {
        let Flow { proto, remote, remote_port, tcp } = flow;
        let v4_port = match self.by_v6.get(&(proto, v6, v6_port)) {
            Some(p) => *p,
            None => {
                // RFC 6146 §3.5.2.2: only a SYN may create TCP state from the inside.
                if tcp.is_some_and(|f| !f.syn) {
                    return Err(Drop::NoBinding);
                }
                if self.by_v4.len() >= cfg.max_bindings || self.sessions.len() >= cfg.max_sessions {
                    return Err(Drop::TableFull);
                }
                let port = self.free_port(cfg, proto).ok_or(Drop::TableFull)?;
                self.by_v6.insert((proto, v6, v6_port), port);
                self.by_v4.insert((proto, port), Binding { proto, v6, v6_port, v4_port: port });
                port
            }
        };
        let key = (proto, v4_port, remote, remote_port);
        if !self.sessions.contains_key(&key) {
            if tcp.is_some_and(|f| !f.syn) {
                return Err(Drop::NoBinding);
            }
            if self.sessions.len() >= cfg.max_sessions {
                self.release_if_unused(proto, v4_port);
                return Err(Drop::TableFull);
            }
            let tcp_state = tcp.map(|_| TcpState::Opening { v6_syn: false, v4_syn: false });
            self.sessions.insert(key, Session { expires: now, tcp: tcp_state });
            *self.refs.entry((proto, v4_port)).or_default() += 1;
        }
        let s = self.sessions.get_mut(&key).expect("inserted above");
        if let (Some(state), Some(f)) = (s.tcp.as_mut(), tcp) {
            *state = step_tcp(*state, f, true);
        }
        s.expires = now + timeout(cfg, proto, s.tcp);
        Ok(self.by_v4[&(proto, v4_port)])
    }

    /// An inbound packet from `remote`:`remote_port` to pool:`v4_port`: only on an existing
    /// session (address- and port-dependent filtering). Refreshes the session.
    pub fn inbound(&mut self, cfg: &Config, now: Duration, flow: Flow, v4_port: u16) -> Result<Binding, Drop> {
        let Flow { proto, remote, remote_port, tcp } = flow;
        let b = *self.by_v4.get(&(proto, v4_port)).ok_or(Drop::NoBinding)?;
        let s = self.sessions.get_mut(&(proto, v4_port, remote, remote_port)).ok_or(Drop::Filtered)?;
        if let (Some(state), Some(f)) = (s.tcp.as_mut(), tcp) {
            *state = step_tcp(*state, f, false);
        }
        s.expires = now + timeout(cfg, proto, s.tcp);
        Ok(b)
    }

    /// Hold a UDP port of the pool for the gateway's own use; false if a flow or the gateway
    /// holds it already.
    pub fn reserve_udp(&mut self, port: u16) -> bool {
        !self.by_v4.contains_key(&(Proto::Udp, port)) && self.reserved.insert(port)
    }

    pub fn release_udp(&mut self, port: u16) {
        self.reserved.remove(&port);
    }

    pub fn reserved_udp(&self) -> usize {
        self.reserved.len()
    }

    /// Drop what timed out; returns how many sessions went.
    pub fn expire(&mut self, now: Duration) -> usize {
        let dead: alloc::vec::Vec<SessionKey> = self.sessions.iter().filter(|(_, s)| s.expires <= now).map(|(k, _)| *k).collect();
        for k in &dead {
            self.sessions.remove(k);
            let r = self.refs.entry((k.0, k.1)).or_default();
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.refs.remove(&(k.0, k.1));
                self.release_if_unused(k.0, k.1);
            }
        }
        dead.len()
    }

    fn release_if_unused(&mut self, proto: Proto, v4_port: u16) {
        if self.refs.get(&(proto, v4_port)).copied().unwrap_or(0) == 0 {
            if let Some(b) = self.by_v4.remove(&(proto, v4_port)) {
                self.by_v6.remove(&(proto, b.v6, b.v6_port));
            }
        }
    }

    /// The next free port of the pool's range, round robin (a freed port is reused last).
    fn free_port(&mut self, cfg: &Config, proto: Proto) -> Option<u16> {
        let (lo, hi) = cfg.ports;
        if lo > hi {
            return None;
        }
        let span = u32::from(hi - lo) + 1;
        for i in 0..span {
            let p = lo + ((u32::from(self.next_port) + i) % span) as u16;
            if !self.by_v4.contains_key(&(proto, p)) && (proto != Proto::Udp || !self.reserved.contains(&p)) {
                self.next_port = (((u32::from(p - lo)) + 1) % span) as u16;
                return Some(p);
            }
        }
        None
    }
}

fn step_tcp(state: TcpState, f: TcpFlags, from_v6: bool) -> TcpState {
    if f.rst || f.fin {
        return TcpState::Closing;
    }
    match state {
        TcpState::Opening { mut v6_syn, mut v4_syn } => {
            if f.syn {
                if from_v6 {
                    v6_syn = true;
                } else {
                    v4_syn = true;
                }
            }
            if v6_syn && v4_syn {
                TcpState::Established
            } else {
                TcpState::Opening { v6_syn, v4_syn }
            }
        }
        other => other,
    }
}

fn timeout(cfg: &Config, proto: Proto, tcp: Option<TcpState>) -> Duration {
    match (proto, tcp) {
        (Proto::Udp, _) => cfg.udp_timeout,
        (Proto::Icmp, _) => cfg.icmp_timeout,
        (Proto::Tcp, Some(TcpState::Established)) => cfg.tcp_established_timeout,
        (Proto::Tcp, _) => cfg.tcp_transitory_timeout,
    }
}
