//! Who may do what: operators by fabric key, with a role.
//!
//! The caller of a request is the public key of the fabric peer whose session carried it: the
//! API service learns it from the fabric (no passwords, no tokens on the wire). The cluster file
//! (`catenary-cluster v1`, docs/networking.md §3) lists operators next to the nodes:
//!
//! ```text
//! operator alice 3f1c…(64 hex) admin
//! operator ci    9a0b…(64 hex) viewer
//! ```
//!
//! `admin` may do everything; `viewer` may only read (GET). A node's own key is never an
//! operator (a file that names one as both is refused), and any other key gets 403.

use crate::error::ApiError;
use crate::http::Method;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// First line of the cluster file.
pub const MAGIC: &str = "catenary-cluster v1";
/// Operators a cluster file may list.
pub const OPERATORS_MAX: usize = 256;
pub const NAME_MAX: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// May read and mutate.
    Admin,
    /// May only read.
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub key: [u8; 32],
    pub role: Role,
}

/// The operators of a cluster, and its nodes' keys (which are not operators).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operators {
    pub operators: Vec<Operator>,
    pub node_keys: Vec<[u8; 32]>,
}

/// A line of the cluster file that is wrong: its number (1-based) and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub why: &'static str,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// 64 hex digits (either case) as 32 bytes.
pub fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hex(b: &[u8]) -> String {
    use core::fmt::Write;
    let mut s = String::with_capacity(2 * b.len());
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

impl Operators {
    /// The `operator` lines of a cluster file, and the keys of its `node` lines (the node
    /// lines themselves are the network's to check: `catenary_net::cluster`).
    pub fn parse(text: &str) -> Result<Operators, ConfigError> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l.trim()) != Some(MAGIC) {
            return Err(ConfigError { line: 1, why: "first line is not \"catenary-cluster v1\"" });
        }
        let mut ops = Operators::default();
        for (n, l) in lines {
            let err = |why| ConfigError { line: n + 1, why };
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.first() {
                Some(&"node") => {
                    let key = w.get(2).and_then(|k| hex32(k)).ok_or(err("node line without a 64-hex key"))?;
                    ops.node_keys.push(key);
                }
                Some(&"operator") => {
                    if w.len() != 4 {
                        return Err(err("expected: operator NAME KEY admin|viewer"));
                    }
                    let name = w[1];
                    if name.is_empty() || name.len() > NAME_MAX || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return Err(err("bad operator name (1-32 of A-Z a-z 0-9 - _)"));
                    }
                    let key = hex32(w[2]).ok_or(err("bad public key (64 hex digits)"))?;
                    if key == [0; 32] {
                        return Err(err("public key is all zero"));
                    }
                    let role = Role::parse(w[3]).ok_or(err("role is not admin or viewer"))?;
                    if ops.operators.iter().any(|o| o.key == key) {
                        return Err(err("duplicate operator key"));
                    }
                    if ops.operators.iter().any(|o| o.name == name) {
                        return Err(err("duplicate operator name"));
                    }
                    if ops.operators.len() >= OPERATORS_MAX {
                        return Err(err("more than 256 operators"));
                    }
                    ops.operators.push(Operator { name: name.to_string(), key, role });
                }
                _ => {}
            }
        }
        if let Some(o) = ops.operators.iter().find(|o| ops.node_keys.contains(&o.key)) {
            let line = text.lines().position(|l| l.split_whitespace().nth(1) == Some(o.name.as_str()) && l.trim_start().starts_with("operator")).map_or(0, |p| p + 1);
            return Err(ConfigError { line, why: "a node's key cannot be an operator's" });
        }
        Ok(ops)
    }

    /// The key a TCP peer connected from `source` (as `netd` reports it) speaks for: an
    /// operator whose fabric /64 holds it, or a node at exactly its own `::1`. The fabric
    /// accepts a packet only when its inner source lies in the /64 of the key whose session
    /// carried it (cryptokey routing, docs/netfabric.md §3), so the source address names the
    /// caller's key: this is how the API service learns it from the fabric session. A node's
    /// /64 also holds its microVMs and tasks, which are not the node: only the node's own
    /// address (interface id 1) is the node; anything else in its /64 is no caller at all.
    /// `prefix_of` derives a key's /64 (`netfabric::identity::Prefix64`, the first 8 bytes).
    pub fn caller_of(&self, source: &[u8; 16], prefix_of: impl Fn(&[u8; 32]) -> [u8; 8]) -> Option<[u8; 32]> {
        const NODE_IID: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];
        if let Some(o) = self.operators.iter().find(|o| prefix_of(&o.key) == source[..8]) {
            return Some(o.key);
        }
        let at_node_address = source[8..] == NODE_IID;
        self.node_keys.iter().find(|k| at_node_address && prefix_of(k) == source[..8]).copied()
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Operator> {
        self.operators.iter().find(|o| &o.key == key)
    }

    /// May the fabric peer `caller` use `method`? Its operator entry, or 403 saying why not.
    pub fn authorize(&self, caller: &[u8; 32], method: Method) -> Result<&Operator, ApiError> {
        if self.node_keys.contains(caller) {
            return Err(ApiError::new(403, "forbidden", "the caller is a node of the cluster, not an operator"));
        }
        let Some(op) = self.by_key(caller) else {
            return Err(ApiError::new(403, "forbidden", "the caller's key is not an operator of this cluster"));
        };
        if op.role == Role::Viewer && !method.reads_only() {
            return Err(ApiError::new(403, "forbidden", "the operator's role is viewer: it may only read"));
        }
        Ok(op)
    }
}
