//! UDP sockets on the node's fabric /128 or a task /128 of its /64 for `netd`'s clients (the IPC socket protocol,
//! `catenary-netsock`): smoltcp sockets on the fabric interface, so their datagrams travel
//! encrypted to the peer whose /64 holds the destination, like the node's own traffic.

use super::*;

/// A client's UDP socket (an index into the fabric interface's socket set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocket(SocketHandle);

/// Why a datagram did not go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpError {
    /// The socket's transmit queue is full: retry.
    WouldBlock,
    /// Larger than the socket's buffer or the fabric MTU allows.
    TooLarge,
    /// Port 0, or the port is taken.
    BadPort,
}

impl Node {
    /// Open a UDP socket on `addr` (the node's fabric /128, or a task /128 of its /64 given
    /// to [`Node::add_socket_addr`]) and `port`, with `packets` datagrams of up to `max_len`
    /// bytes queued per direction.
    pub fn udp_open(&mut self, addr: Ipv6Addr, port: u16, packets: usize, max_len: usize) -> Result<UdpSocket, UdpError> {
        let mut s = udp_socket(packets, packets * max_len);
        let ep = smoltcp::wire::IpListenEndpoint { addr: Some(IpAddress::Ipv6(addr)), port };
        s.bind(ep).map_err(|_| UdpError::BadPort)?;
        Ok(UdpSocket(self.tun_sockets.add(s)))
    }

    /// Queue `data` for `dst`:`port` (sent at the next [`Node::poll`]).
    pub fn udp_send(&mut self, s: UdpSocket, dst: Ipv6Addr, port: u16, data: &[u8]) -> Result<(), UdpError> {
        let sock = self.tun_sockets.get_mut::<udp::Socket>(s.0);
        if data.len() > sock.payload_send_capacity() {
            return Err(UdpError::TooLarge);
        }
        match sock.send_slice(data, IpEndpoint { addr: IpAddress::Ipv6(dst), port }) {
            Ok(()) => Ok(()),
            Err(udp::SendError::BufferFull) => Err(UdpError::WouldBlock),
            Err(udp::SendError::Unaddressable) => Err(UdpError::BadPort),
        }
    }

    /// The next datagram for `s`: its length (truncated to `buf`), source and source port.
    pub fn udp_recv(&mut self, s: UdpSocket, buf: &mut [u8]) -> Option<(usize, Ipv6Addr, u16)> {
        let sock = self.tun_sockets.get_mut::<udp::Socket>(s.0);
        let (data, meta) = sock.recv().ok()?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        match meta.endpoint.addr {
            IpAddress::Ipv6(a) => Some((n, a, meta.endpoint.port)),
        }
    }

    /// Whether a datagram waits for `s`, and whether its transmit queue has room.
    pub fn udp_ready(&mut self, s: UdpSocket) -> (bool, bool) {
        let sock = self.tun_sockets.get_mut::<udp::Socket>(s.0);
        (sock.can_recv(), sock.can_send())
    }

    /// Whether `addr` lies in this node's /64 or a peer's (a TCP connect anywhere else could
    /// only time out).
    pub fn routable(&self, addr: &Ipv6Addr) -> bool {
        let p = netfabric::identity::Prefix64::of(addr);
        p == netfabric::identity::Prefix64::of(&self.fabric_addr) || self.peers.iter().any(|x| netfabric::identity::Prefix64::of(&x.fabric_addr) == p)
    }

    /// Close `s` (its queued datagrams are dropped).
    pub fn udp_close(&mut self, s: UdpSocket) {
        self.tun_sockets.remove(s.0);
    }
}
