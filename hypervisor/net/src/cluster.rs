//! The cluster file: which nodes exist, their public keys and underlay endpoints.
//!
//! ```text
//! catenary-cluster v1
//! # name  public key (64 hex)  underlay IPv6 (link-local)  UDP port
//! node node1 9f3c…  fe80::5054:ff:fe00:1 51820
//! ```
//!
//! A node finds itself by its own public key; every other line is a peer. A key that is not
//! in the file gets no session (netfabric drops its handshakes as an unknown peer).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv6Addr;

pub const MAGIC: &str = "catenary-cluster v1";
/// Default underlay UDP port for fabric sessions (WireGuard's).
pub const FABRIC_PORT: u16 = 51820;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub public_key: [u8; 32],
    pub underlay: Ipv6Addr,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub members: Vec<Member>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClusterError {
    BadMagic,
    Line(usize, &'static str),
}

pub fn hex_decode32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The link-local address made from a MAC by modified EUI-64 (RFC 4291 appendix A).
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 0x02, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

impl Cluster {
    /// Whether `data` looks like a cluster file (to pick it among boot modules).
    pub fn is_cluster_file(data: &[u8]) -> bool {
        data.starts_with(MAGIC.as_bytes())
    }

    pub fn parse(text: &str) -> Result<Cluster, ClusterError> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l.trim() == MAGIC => {}
            _ => return Err(ClusterError::BadMagic),
        }
        let mut members = Vec::new();
        for (n, l) in lines {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() != 5 || w[0] != "node" {
                return Err(ClusterError::Line(n + 1, "expected: node NAME KEY ADDR PORT"));
            }
            let public_key = hex_decode32(w[2]).ok_or(ClusterError::Line(n + 1, "bad public key"))?;
            let underlay: Ipv6Addr = w[3].parse().map_err(|_| ClusterError::Line(n + 1, "bad IPv6 address"))?;
            let port: u16 = w[4].parse().map_err(|_| ClusterError::Line(n + 1, "bad port"))?;
            if members.iter().any(|m: &Member| m.public_key == public_key || m.name == w[1]) {
                return Err(ClusterError::Line(n + 1, "duplicate node"));
            }
            members.push(Member { name: w[1].to_string(), public_key, underlay, port });
        }
        Ok(Cluster { members })
    }

    pub fn render(&self) -> String {
        let mut s = String::from(MAGIC);
        s.push_str("\n# name public-key underlay-ipv6 port\n");
        for m in &self.members {
            s.push_str(&format!("node {} {} {} {}\n", m.name, hex_encode(&m.public_key), m.underlay, m.port));
        }
        s
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Member> {
        self.members.iter().find(|m| &m.public_key == key)
    }

    pub fn by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}
