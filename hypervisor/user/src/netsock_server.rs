//! `netd`'s side of the IPC socket protocol (`catenary-netsock`): UDP sockets on the node's
//! fabric /128 for ring-3 clients. Each request is decoded and checked against the socket
//! table (bounds, states, ports) before it touches the stack; data comes and goes through the
//! call's memory grant, whose address and length are the kernel's (`grant_of`), never the
//! words the client sent. TCP sockets and sockets on a client's own task /128 are not served
//! yet (`BadRequest`, `BadAddress`).

use alloc::collections::BTreeMap;
use catenary_net::sockets::{UdpError, UdpSocket};
use catenary_net::Node;
use catenary_netsock::table::{Addrs, SocketTable};
use catenary_netsock::*;

#[derive(Default)]
pub struct SocketServer {
    table: SocketTable,
    stack: BTreeMap<(u64, Handle), UdpSocket>,
    pub served: u64,
    pub refused: u64,
}

fn udp_err(e: UdpError) -> NetError {
    match e {
        UdpError::WouldBlock => NetError::WouldBlock,
        UdpError::TooLarge => NetError::TooLarge,
        UdpError::BadPort => NetError::AddrInUse,
    }
}

impl SocketServer {
    pub fn new() -> SocketServer {
        SocketServer { table: SocketTable::new(), ..Default::default() }
    }

    fn open_stack(&mut self, node: &mut Node, client: u64, h: Handle, port: u16) -> Result<(), NetError> {
        match node.udp_open(port, UDP_QUEUE, UDP_PAYLOAD_MAX) {
            Ok(s) => {
                self.stack.insert((client, h), s);
                Ok(())
            }
            Err(e) => {
                let _ = self.table.close(client, h);
                Err(udp_err(e))
            }
        }
    }

    /// Serve request (`label`, `words`) from `client` (the badge), call `token`.
    pub fn serve(&mut self, node: &mut Node, client: u64, token: u64, label: u64, words: [u64; 4]) -> (u64, [u64; 4]) {
        let r = self.serve_inner(node, client, token, label, words);
        if r.is_ok() {
            self.served += 1
        } else {
            self.refused += 1;
            if self.refused <= 8 && r != Err(NetError::WouldBlock) {
                crate::logf!("net: socket request {:#x} from client {:#x} refused: {:?}", label, client, r);
            }
        }
        encode_reply(r)
    }

    fn serve_inner(&mut self, node: &mut Node, client: u64, token: u64, label: u64, words: [u64; 4]) -> Result<[u64; 4], NetError> {
        let addrs = Addrs { node: node.fabric_addr, own: None };
        match Request::decode(label, words)? {
            Request::Socket { kind: Kind::Udp } => Ok([self.table.socket(client, Kind::Udp)?, 0, 0, 0]),
            Request::Socket { kind: Kind::Tcp } => Err(NetError::BadRequest),
            Request::Bind { h, local, port } => {
                let (_, p) = self.table.bind(client, h, local, port, addrs)?;
                self.open_stack(node, client, h, p)?;
                Ok([p as u64, 0, 0, 0])
            }
            Request::Connect { h, addr, port } => {
                let fresh = self.table.get(client, h)?.local.is_none();
                let (_, p) = self.table.connect(client, h, addr, port, addrs)?;
                if fresh {
                    self.open_stack(node, client, h, p)?;
                }
                Ok([0; 4])
            }
            Request::Listen { h, .. } | Request::Accept { h } => {
                self.table.get(client, h)?;
                Err(NetError::BadState) // UDP sockets only
            }
            Request::Send { h, .. } => {
                let (addr, _, len) = crate::grant_of(token).ok_or(NetError::BadBuffer)?;
                let len = len.min(words[3]).min(GRANT_MAX) as usize;
                if len < DGRAM_HEADER {
                    return Err(NetError::BadBuffer);
                }
                let mut buf = alloc::vec![0u8; len.min(DGRAM_HEADER + UDP_PAYLOAD_MAX + 1)];
                crate::copy_from(addr, &mut buf);
                let (hdr, payload) = DgramHeader::decode(&buf)?;
                let to = (!hdr.addr.is_unspecified()).then_some((hdr.addr, hdr.port));
                let (dst, port) = self.table.check_send(client, h, to)?.ok_or(NetError::BadState)?;
                let s = *self.stack.get(&(client, h)).ok_or(NetError::BadState)?;
                node.udp_send(s, dst, port, payload).map_err(udp_err)?;
                Ok([payload.len() as u64, 0, 0, 0])
            }
            Request::Recv { h, .. } => {
                self.table.check_recv(client, h)?;
                let (addr, writable, len) = crate::grant_of(token).ok_or(NetError::BadBuffer)?;
                let len = len.min(words[3]).min(GRANT_MAX) as usize;
                if !writable || len < DGRAM_HEADER {
                    return Err(NetError::BadBuffer);
                }
                let s = *self.stack.get(&(client, h)).ok_or(NetError::BadState)?;
                let mut buf = alloc::vec![0u8; UDP_PAYLOAD_MAX];
                let (n, from, port) = node.udp_recv(s, &mut buf).ok_or(NetError::WouldBlock)?;
                let n = n.min(len - DGRAM_HEADER); // the rest of a datagram the buffer cannot hold is dropped
                crate::copy_to(addr, &DgramHeader { addr: from, port }.encode());
                crate::copy_to(addr + DGRAM_HEADER as u64, &buf[..n]);
                Ok([(DGRAM_HEADER + n) as u64, 0, 0, 0])
            }
            Request::Close { h } => {
                self.table.close(client, h)?;
                if let Some(s) = self.stack.remove(&(client, h)) {
                    node.udp_close(s);
                }
                Ok([0; 4])
            }
        }
    }
}
