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

/// Labels per `node` line.
pub const MAX_LABELS: usize = 16;

/// `KEY=VALUE`: a key of 1-63 of `a-z 0-9 . _ - /`, a value of 0-63 of `A-Z a-z 0-9 . _ -`.
pub fn parse_label(t: &str) -> Option<(&str, &str)> {
    let (k, v) = t.split_once('=')?;
    let key_ok = !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
    let value_ok = v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (key_ok && value_ok).then_some((k, v))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub public_key: [u8; 32],
    pub underlay: Ipv6Addr,
    pub port: u16,
}

/// An operator: a workstation that is a fabric peer of every node (`operator NAME KEY ROLE`).
/// It has no fixed underlay endpoint: a node learns it from the operator's authenticated
/// handshake (WireGuard roaming). The role is the operator API's (`catenary_api::auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub public_key: [u8; 32],
    pub role: String,
}

/// A node's key and its labels (`zone=a` → `("zone", "a")`).
pub type NodeLabels = ([u8; 32], Vec<(String, String)>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub members: Vec<Member>,
    pub operators: Vec<Operator>,
}

/// Most nodes a cluster file may list, and the longest node name: a cluster file comes from a
/// boot module, and nothing in it may make the node allocate without bound.
pub const MAX_MEMBERS: usize = 1024;
pub const MAX_OPERATORS: usize = 256;
pub const MAX_NAME: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum ClusterError {
    BadMagic,
    TooManyMembers,
    /// 1-based line number and what is wrong with it.
    Line(usize, &'static str),
}

impl core::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClusterError::BadMagic => write!(f, "first line is not \"{MAGIC}\""),
            ClusterError::TooManyMembers => write!(f, "more than {MAX_MEMBERS} nodes"),
            ClusterError::Line(n, why) => write!(f, "line {n}: {why}"),
        }
    }
}

/// Why a public key cannot be a fabric peer: all zero, or any other low-order point (its
/// x25519 shared secret with every key is all zero). Checked with a throwaway secret.
fn weak_key(key: &[u8; 32]) -> bool {
    netfabric::noise::static_static(&netfabric::Identity::from_secret_bytes([0x42; 32]), key).is_err()
}

pub fn hex_decode32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
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
        let mut operators: Vec<Operator> = Vec::new();
        for (n, l) in lines {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let w: Vec<&str> = l.split_whitespace().collect();
            let line = |why| ClusterError::Line(n + 1, why);
            if w[0] == "operator" {
                if w.len() != 4 {
                    return Err(line("expected: operator NAME KEY admin|viewer"));
                }
                if w[1].is_empty() || w[1].len() > MAX_NAME || !w[1].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                    return Err(line("bad name (1-32 of A-Z a-z 0-9 - _)"));
                }
                let public_key = hex_decode32(w[2]).ok_or(line("bad public key (64 hex digits)"))?;
                if weak_key(&public_key) {
                    return Err(line("public key is a low-order point"));
                }
                if w[3] != "admin" && w[3] != "viewer" {
                    return Err(line("role is not admin or viewer"));
                }
                if operators.iter().any(|o| o.public_key == public_key || o.name == w[1]) {
                    return Err(line("duplicate operator name or key"));
                }
                if operators.len() >= MAX_OPERATORS {
                    return Err(line("more than 256 operators"));
                }
                operators.push(Operator { name: w[1].to_string(), public_key, role: w[3].to_string() });
                continue;
            }
            if w.len() < 5 || w[0] != "node" {
                return Err(line("expected: node NAME KEY ADDR PORT [LABEL=VALUE]..."));
            }
            if w.len() - 5 > MAX_LABELS {
                return Err(line("more than 16 labels"));
            }
            for (i, t) in w[5..].iter().enumerate() {
                let (k, _) = parse_label(t).ok_or(line("bad label (KEY=VALUE: 1-63 of a-z 0-9 . _ - /, then 0-63 of A-Z a-z 0-9 . _ -)"))?;
                if w[5..5 + i].iter().any(|o| o.split_once('=').is_some_and(|(ok, _)| ok == k)) {
                    return Err(line("a label given twice"));
                }
            }
            let name = w[1];
            if name.len() > MAX_NAME || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(line("bad name (1-32 of A-Z a-z 0-9 - _)"));
            }
            let public_key = hex_decode32(w[2]).ok_or(line("bad public key (64 hex digits)"))?;
            if weak_key(&public_key) {
                return Err(line("public key is a low-order point"));
            }
            let underlay: Ipv6Addr = w[3].parse().map_err(|_| line("bad IPv6 address"))?;
            if underlay.is_unspecified() || underlay.is_multicast() || underlay.is_loopback() {
                return Err(line("underlay address is unspecified, loopback or multicast"));
            }
            let port: u16 = w[4].parse().map_err(|_| line("bad port (1-65535)"))?;
            if port == 0 {
                return Err(line("port 0"));
            }
            if members.len() >= MAX_MEMBERS {
                return Err(ClusterError::TooManyMembers);
            }
            let prefix = netfabric::identity::Prefix64::from_public_key(&public_key);
            for m in &members {
                let m: &Member = m;
                if m.name == name {
                    return Err(line("duplicate node name"));
                }
                if m.public_key == public_key {
                    return Err(line("duplicate public key"));
                }
                if m.underlay == underlay && m.port == port {
                    return Err(line("duplicate underlay address and port"));
                }
                if netfabric::identity::Prefix64::from_public_key(&m.public_key) == prefix {
                    return Err(line("fabric /64 collides with another node's"));
                }
            }
            members.push(Member { name: name.to_string(), public_key, underlay, port });
        }
        // a key is a node or an operator, never both; their /64s must not collide either
        for o in &operators {
            let prefix = netfabric::identity::Prefix64::from_public_key(&o.public_key);
            if members.iter().any(|m| m.public_key == o.public_key || netfabric::identity::Prefix64::from_public_key(&m.public_key) == prefix) {
                let n = text.lines().position(|l| l.split_whitespace().nth(1) == Some(o.name.as_str()) && l.trim_start().starts_with("operator")).map_or(0, |p| p + 1);
                return Err(ClusterError::Line(n, "operator key (or its /64) is a node's"));
            }
        }
        Ok(Cluster { members, operators })
    }

    /// The labels of each `node` line of `text` (`node NAME KEY ADDR PORT zone=a disk=ssd`),
    /// by node key: what the orchestration's placement constraints match
    /// (docs/orchestration.md). Lines the parser refuses are left out (call `parse` first).
    pub fn labels(text: &str) -> Vec<NodeLabels> {
        text.lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() < 5 || w[0] != "node" || w.len() - 5 > MAX_LABELS {
                    return None;
                }
                let key = hex_decode32(w[2])?;
                let labels: Option<Vec<(String, String)>> = w[5..].iter().map(|t| parse_label(t).map(|(k, v)| (k.to_string(), v.to_string()))).collect();
                Some((key, labels?))
            })
            .collect()
    }

    pub fn render(&self) -> String {
        let mut s = String::from(MAGIC);
        s.push_str("\n# name public-key underlay-ipv6 port\n");
        for m in &self.members {
            s.push_str(&format!("node {} {} {} {}\n", m.name, hex_encode(&m.public_key), m.underlay, m.port));
        }
        for o in &self.operators {
            s.push_str(&format!("operator {} {} {}\n", o.name, hex_encode(&o.public_key), o.role));
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
