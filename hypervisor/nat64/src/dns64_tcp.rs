//! DNS64 over TCP (RFC 7766): guests connect to `[64:ff9b::35]:53`, messages are framed with a
//! two-byte length (RFC 1035 §4.2.2). The TCP is smoltcp's (IPv6 only, the features the node's
//! stack already has, so nothing new is unified into it) on an interface of its own whose
//! packets the gateway carries to and from the fabric.
//!
//! Bounds: [`MAX_CONNS`] connections at once (more are not accepted: their SYNs are refused by
//! smoltcp with RST once every socket is busy), at most [`MAX_PER_SOURCE`] of them from one
//! guest address (its further SYNs are answered with RST here, so one guest cannot hold every
//! slot), a message at most [`crate::dns64::EDNS_SIZE`]
//! bytes (a longer length prefix closes the connection), [`MAX_INFLIGHT`] questions open per
//! connection (more are dropped), and a connection idle for [`IDLE_TIMEOUT`] is closed (RFC
//! 7766 §6.2.3; a slow sender cannot hold a slot).
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv6Address, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use crate::dns64::{DNS64_ADDR, EDNS_SIZE};

/// Connections at once.
pub const MAX_CONNS: usize = 8;
/// Connections at once from one source address.
pub const MAX_PER_SOURCE: usize = 2;
/// Questions open per connection.
pub const MAX_INFLIGHT: usize = 4;
/// A connection without a complete message for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets from the fabric waiting for the interface, at most.
const QUEUE: usize = 64;
/// The packets it sends fit the fabric.
const MTU: usize = crate::gateway::FABRIC_MTU;

#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl phy::Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _t: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _t: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

struct Slot {
    handle: SocketHandle,
    /// The connection on it (None: listening).
    conn: Option<u32>,
    /// Bytes of the message being read (length prefix included).
    buf: Vec<u8>,
    last: Duration,
    inflight: usize,
}

/// What a poll found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Complete messages: (connection, DNS message).
    pub messages: Vec<(u32, Vec<u8>)>,
    /// Connections that ended (their open questions can be forgotten).
    pub closed: Vec<u32>,
}

pub struct DnsTcp {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Queues,
    slots: Vec<Slot>,
    next_conn: u32,
}

fn at(now: Duration) -> Instant {
    Instant::from_micros(now.as_micros() as i64)
}

fn listener() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 4096]), tcp::SocketBuffer::new(vec![0; 8192]));
    s.set_timeout(Some(smoltcp::time::Duration::from_secs(IDLE_TIMEOUT.as_secs())));
    let _ = s.listen(53);
    s
}

impl DnsTcp {
    pub fn new(now: Duration, seed: u64) -> DnsTcp {
        let mut dev = Queues::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut dev, at(now));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(Ipv6Address::from(DNS64_ADDR)), 128));
        });
        // every guest is reached through the fabric: the via address is not used on an IP medium
        let _ = iface.routes_mut().add_default_ipv6_route(Ipv6Address::from(DNS64_ADDR));
        let mut sockets = SocketSet::new(Vec::new());
        let slots = (0..MAX_CONNS).map(|_| Slot { handle: sockets.add(listener()), conn: None, buf: Vec::new(), last: now, inflight: 0 }).collect();
        DnsTcp { iface, sockets, dev, slots, next_conn: 1 }
    }

    /// An IPv6 packet from the fabric to `[64:ff9b::35]` with TCP in it. A new connection's SYN
    /// from an address that already has [`MAX_PER_SOURCE`] (open, or SYNs waiting) is reset.
    pub fn input(&mut self, packet: &[u8]) {
        if let Some((src, sport)) = syn_of(packet) {
            // connections of this source: the slots' and the SYNs still queued (a retransmitted
            // SYN of one of them is not a new connection)
            let mut ports: Vec<u16> = Vec::new();
            for slot in self.slots.iter().filter(|s| s.conn.is_some()) {
                if let Some(e) = self.sockets.get::<tcp::Socket>(slot.handle).remote_endpoint() {
                    if e.addr == IpAddress::Ipv6(src) && !ports.contains(&e.port) {
                        ports.push(e.port);
                    }
                }
            }
            for (a, p) in self.dev.rx.iter().filter_map(|q| syn_of(q)) {
                if a == src && !ports.contains(&p) {
                    ports.push(p);
                }
            }
            if !ports.contains(&sport) && ports.len() >= MAX_PER_SOURCE {
                if let Some(rst) = reset_for(packet) {
                    if self.dev.tx.len() < QUEUE {
                        self.dev.tx.push_back(rst);
                    }
                }
                return;
            }
        }
        if self.dev.rx.len() < QUEUE {
            self.dev.rx.push_back(packet.to_vec());
        }
    }

    /// Run TCP: read complete messages, close idle and finished connections.
    pub fn poll(&mut self, now: Duration) -> Polled {
        let mut out = Polled::default();
        // the first poll also sends the RST of a connection aborted last time: only then is its
        // socket listening again
        let _ = self.iface.poll(at(now), &mut self.dev, &mut self.sockets);
        for slot in &mut self.slots {
            let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            if let Some(conn) = slot.conn.filter(|_| !s.is_active()) {
                out.closed.push(conn);
                slot.conn = None;
                slot.buf.clear();
                slot.inflight = 0;
                *s = listener();
            }
            if slot.conn.is_none() && s.is_active() {
                slot.conn = Some(self.next_conn);
                self.next_conn = self.next_conn.wrapping_add(1).max(1);
                slot.last = now;
                slot.buf.clear();
                slot.inflight = 0;
            }
            let Some(conn) = slot.conn else { continue };
            while s.can_recv() {
                // read the length prefix, then exactly the message it announces
                let want = if slot.buf.len() < 2 { 2 } else { 2 + usize::from(u16::from_be_bytes([slot.buf[0], slot.buf[1]])) };
                let mut chunk = vec![0u8; want - slot.buf.len()];
                let Ok(n) = s.recv_slice(&mut chunk) else { break };
                if n == 0 {
                    break;
                }
                slot.buf.extend_from_slice(&chunk[..n]);
                if slot.buf.len() == 2 && usize::from(u16::from_be_bytes([slot.buf[0], slot.buf[1]])) > usize::from(EDNS_SIZE) {
                    s.abort();
                    break;
                }
                if slot.buf.len() >= 2 && slot.buf.len() == 2 + usize::from(u16::from_be_bytes([slot.buf[0], slot.buf[1]])) {
                    slot.last = now;
                    if slot.inflight < MAX_INFLIGHT {
                        slot.inflight += 1;
                        out.messages.push((conn, slot.buf[2..].to_vec()));
                    }
                    slot.buf.clear();
                }
            }
            if now.saturating_sub(slot.last) >= IDLE_TIMEOUT && s.is_open() {
                s.abort();
            } else if s.state() == tcp::State::CloseWait && slot.inflight == 0 {
                // the client is done and has every answer
                s.close();
            }
        }
        let _ = self.iface.poll(at(now), &mut self.dev, &mut self.sockets);
        out
    }

    /// The answer to one of a connection's questions (dropped if it closed or its send
    /// buffer is full: the client asks again).
    pub fn answer(&mut self, conn: u32, msg: &[u8]) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.conn == Some(conn)) else { return };
        slot.inflight = slot.inflight.saturating_sub(1);
        let Ok(len) = u16::try_from(msg.len()) else { return };
        let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
        if s.can_send() && s.send_capacity() - s.send_queue() >= 2 + msg.len() {
            let _ = s.send_slice(&len.to_be_bytes());
            let _ = s.send_slice(msg);
        }
    }

    /// A question of the connection got no answer (dropped, or refused).
    pub fn unanswered(&mut self, conn: u32) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.conn == Some(conn)) {
            slot.inflight = slot.inflight.saturating_sub(1);
        }
    }

    /// Packets for the fabric.
    pub fn take_packets(&mut self) -> Vec<Vec<u8>> {
        self.dev.tx.drain(..).collect()
    }

    pub fn connections(&self) -> usize {
        self.slots.iter().filter(|s| s.conn.is_some()).count()
    }
}

/// The source (address, port) of a packet that opens a TCP connection (SYN without ACK).
fn syn_of(packet: &[u8]) -> Option<(Ipv6Address, u16)> {
    let ip = Ipv6Packet::new_checked(packet).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    (tcp.syn() && !tcp.ack()).then(|| (ip.src_addr(), tcp.src_port()))
}

/// The RST that refuses the SYN in `packet` (RFC 9293 §3.10.7.1: SEQ 0, ACK = SYN's SEQ + 1).
fn reset_for(packet: &[u8]) -> Option<Vec<u8>> {
    let ip = Ipv6Packet::new_checked(packet).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let rst = TcpRepr {
        src_port: tcp.dst_port(),
        dst_port: tcp.src_port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(tcp.seq_number() + 1),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let ip6 = Ipv6Repr { src_addr: ip.dst_addr(), dst_addr: ip.src_addr(), next_header: IpProtocol::Tcp, payload_len: rst.buffer_len(), hop_limit: 64 };
    let mut out = vec![0u8; ip6.buffer_len() + rst.buffer_len()];
    let mut p = Ipv6Packet::new_unchecked(&mut out[..]);
    ip6.emit(&mut p);
    let checksum = smoltcp::phy::ChecksumCapabilities::default();
    rst.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &IpAddress::Ipv6(ip6.src_addr), &IpAddress::Ipv6(ip6.dst_addr), &checksum);
    Some(out)
}
