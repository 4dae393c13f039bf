//! The fabric in user space: one netfabric session (docs/netfabric.md) over a UDP socket,
//! carrying IPv6 packets into a smoltcp TCP/IP stack (the version the node's netd runs). The CLI
//! opens TCP connections to a node's fabric /128 through it without root, a TUN device or kernel
//! WireGuard; the host tests run the node's side of the same pieces as an in-process peer.
//!
//! [`Link`] is role-neutral: the operator adds the node as a peer with its endpoint (and so
//! initiates); a responder adds the operator without one and learns it from the handshake.
//! netfabric does handshake retransmission (every `REKEY_TIMEOUT`), rekeying and keepalives
//! from `tick`; [`Link::pump`] calls it at its deadlines. The secret key stays inside the
//! `netfabric::Identity`; nothing here prints it.

use netfabric::{Device, Event, Identity, PeerConfig, PeerId};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant as StdInstant, SystemTime, UNIX_EPOCH};

/// The largest inner IPv6 packet: the node's fabric MTU (`catenary_net::FABRIC_MTU`), so both
/// ends agree on TCP's segment size.
pub const MTU: usize = catenary_net::FABRIC_MTU;
/// Largest UDP datagram read (a fabric packet plus its overhead, with room).
const DATAGRAM_MAX: usize = 2048;

/// The IP side of the stack: packets in from the fabric, packets out to it.
#[derive(Default)]
struct Tun {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}
struct TunRx(Vec<u8>);
struct TunTx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for TunRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for TunTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl phy::Device for Tun {
    type RxToken<'a> = TunRx;
    type TxToken<'a> = TunTx<'a>;
    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(TunRx, TunTx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((TunRx(p), TunTx(&mut self.tx)))
    }
    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<TunTx<'_>> {
        Some(TunTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

/// One fabric session's endpoint in this process: the UDP socket, the netfabric device with one
/// peer, and the TCP/IP stack on our fabric /128.
pub struct Link {
    sock: UdpSocket,
    dev: Device,
    peer: PeerId,
    iface: Interface,
    tun: Tun,
    sockets: SocketSet<'static>,
    origin: StdInstant,
    /// Completed handshakes (either role).
    pub handshakes: u64,
    /// Handshakes netfabric gave up on (`REKEY_ATTEMPT_TIME`).
    pub gave_up: u64,
    next_port: u16,
}

impl Link {
    /// `identity` is ours; `peer` the other end (with an endpoint if we initiate); `bind` the
    /// local UDP address; the stack answers on our identity's fabric /128.
    pub fn new(identity: Identity, peer: PeerConfig, bind: SocketAddr) -> Result<Link, String> {
        let sock = UdpSocket::bind(bind).map_err(|e| format!("UDP socket on {bind}: {e}"))?;
        let addr = identity.node_address();
        let mut dev = Device::new(identity, Box::new(rand_core::OsRng));
        // TAI64N needs real time: a node refuses an initiation not newer than the last one.
        dev.set_unix_time_at_origin(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let peer = dev.add_peer(peer).map_err(|e| format!("the node's key cannot be a fabric peer: {e}"))?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| format!("the OS entropy source failed: {e}"))?;
        let mut tun = Tun::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = u64::from_le_bytes(seed);
        let origin = StdInstant::now();
        let mut iface = Interface::new(cfg, &mut tun, smoltcp::time::Instant::from_micros(0));
        // All of fd00::/8 is "on link": netfabric's routing table decides which peer gets a
        // packet (one, here), as on the node.
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(addr), 8));
        });
        let next_port = 49152 + (u16::from_le_bytes([seed[0], seed[1]]) % 16000);
        Ok(Link { sock, dev, peer, iface, tun, sockets: SocketSet::new(vec![]), origin, handshakes: 0, gave_up: 0, next_port })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, String> {
        self.sock.local_addr().map_err(|e| e.to_string())
    }

    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
    fn fab_now(&self) -> netfabric::Instant {
        netfabric::Instant::from_nanos(self.elapsed().as_nanos() as u64)
    }
    fn stack_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.elapsed().as_micros() as i64)
    }

    /// Whether the session with the peer has usable keys.
    pub fn has_session(&self) -> bool {
        self.dev.has_session(self.peer, self.fab_now())
    }

    /// Start a handshake with the peer unless a session is up (a keepalive through the
    /// device: netfabric queues it behind the handshake and retransmits the initiation).
    pub fn start_session(&mut self) {
        if !self.has_session() && self.dev.staged_len(self.peer) == 0 {
            let out = self.dev.send_to(self.peer, &[], self.fab_now());
            self.emit(out);
        }
    }

    /// Drop counters of the device (for a test's look at what happened).
    pub fn counters(&self) -> netfabric::Counters {
        *self.dev.counters()
    }

    fn emit(&mut self, out: netfabric::Output) {
        for t in out.transmits {
            // a full socket buffer loses the datagram: TCP and the handshake timers resend
            let _ = self.sock.send_to(&t.data, t.dst);
        }
        for p in out.packets {
            if p.peer == self.peer && self.tun.rx.len() < 1024 {
                self.tun.rx.push_back(p.packet);
            }
        }
        for e in out.events {
            match e {
                Event::HandshakeCompleted { .. } => self.handshakes += 1,
                Event::HandshakeGaveUp(_) => self.gave_up += 1,
                _ => {}
            }
        }
    }

    /// One round: wait up to `max_wait` for a datagram (less when a timer is due), decrypt it
    /// into the stack, run netfabric's timers, let the stack work, encrypt what it sends.
    pub fn pump(&mut self, max_wait: Duration) {
        let now = self.stack_now();
        let mut wait = max_wait;
        if let Some(d) = self.iface.poll_delay(now, &self.sockets) {
            wait = wait.min(Duration::from_micros(d.total_micros()));
        }
        if let Some(dl) = self.dev.next_deadline() {
            wait = wait.min(dl.saturating_since(self.fab_now()));
        }
        let mut buf = [0u8; DATAGRAM_MAX];
        if self.sock.set_read_timeout(Some(wait.max(Duration::from_millis(1)))).is_ok() {
            if let Ok((n, src)) = self.sock.recv_from(&mut buf) {
                let out = self.dev.handle_incoming(&buf[..n], src, self.fab_now());
                self.emit(out);
            }
        }
        if self.dev.next_deadline().is_some_and(|d| d <= self.fab_now()) {
            let out = self.dev.tick(self.fab_now());
            self.emit(out);
        }
        let now = self.stack_now();
        self.iface.poll(now, &mut self.tun, &mut self.sockets);
        while let Some(p) = self.tun.tx.pop_front() {
            // no route (not the peer's /64) or not a packet: nothing to send it through
            if let Ok(out) = self.dev.send(&p, self.fab_now()) {
                self.emit(out);
            }
        }
    }

    /// A TCP socket with buffers of `rx`/`tx` bytes.
    pub fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0u8; rx]), tcp::SocketBuffer::new(vec![0u8; tx]))
    }

    pub fn add(&mut self, s: tcp::Socket<'static>) -> SocketHandle {
        self.sockets.add(s)
    }
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
    pub fn remove(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
    }
    pub fn handles(&self) -> Vec<SocketHandle> {
        self.sockets.iter().map(|(h, _)| h).collect()
    }

    /// A TCP connection from our /128 to `dst` (its SYN goes out on the next pump).
    pub fn connect(&mut self, dst: Ipv6Addr, port: u16) -> Result<SocketHandle, String> {
        let mut s = Link::tcp_socket(256 * 1024, 64 * 1024);
        let local = self.next_port;
        self.next_port = if self.next_port >= 65000 { 49152 } else { self.next_port + 1 };
        s.connect(self.iface.context(), (IpAddress::Ipv6(dst), port), local).map_err(|e| format!("TCP connect: {e}"))?;
        Ok(self.sockets.add(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    /// Two links on localhost: the initiator's TCP connection reaches the responder's listener
    /// and bytes flow both ways after one handshake.
    #[test]
    fn two_links_carry_a_tcp_connection() {
        let a = Identity::from_secret_bytes([1; 32]);
        let b = Identity::from_secret_bytes([2; 32]);
        let (apub, baddr) = (a.public_key(), b.node_address());
        let lo = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0));
        let mut rb = Link::new(b.clone_identity(), PeerConfig::new(apub), lo).unwrap();
        let mut ra = Link::new(a, PeerConfig::new(rb.dev.identity().public_key()).with_endpoint(rb.local_addr().unwrap()), lo).unwrap();
        let mut l = Link::tcp_socket(4096, 4096);
        l.listen(8080).unwrap();
        let lh = rb.add(l);
        let ch = ra.connect(baddr, 8080).unwrap();
        let start = StdInstant::now();
        let mut got = Vec::new();
        while got != b"hello" && start.elapsed() < Duration::from_secs(20) {
            ra.pump(Duration::from_millis(2));
            rb.pump(Duration::from_millis(2));
            if ra.tcp(ch).can_send() && got.is_empty() {
                let _ = ra.tcp(ch).send_slice(b"hello");
            }
            let s = rb.tcp(lh);
            let mut buf = [0u8; 16];
            if let Ok(n) = s.recv_slice(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, b"hello");
        assert!(ra.handshakes >= 1 && rb.handshakes >= 1);
    }

    trait CloneId {
        fn clone_identity(&self) -> Identity;
    }
    impl CloneId for Identity {
        fn clone_identity(&self) -> Identity {
            Identity::from_secret_bytes(self.secret_bytes())
        }
    }
}
