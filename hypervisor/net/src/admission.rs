//! Admission on the fabric (docs/boot.md, "Joining"): peers the cluster admitted at run time
//! (`catenary node add KEY`, committed in the replicated desired state; `orchd` hands each
//! admitted key to `netd`), the seeds' table of *pending* nodes ([`crate::hello`]), and the
//! hellos an unadmitted node sends its seeds.
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{Ipv6Addr, SocketAddr};

use log::{info, warn};
use netfabric::{Instant as FInstant, PeerConfig};

use crate::hello;
use crate::{Node, Peer};

/// How often an unadmitted node says hello to its seeds.
pub const HELLO_PERIOD_NS: u64 = 2_000_000_000;
/// Keys admitted at run time a node keeps as peers (the desired state admits at most 1024
/// nodes; a node's fabric holds fewer).
pub const EXTRA_MAX: usize = 256;

/// What the admission part of a node holds.
#[derive(Debug, Default)]
pub struct Admission {
    pub pending: hello::Pending,
    /// Keys admitted at run time, in the order `orchd` handed them over.
    pub extra: Vec<[u8; 32]>,
    /// Keys the cluster removed (`RemoveNode` committed; `orchd` handed them over): no peer,
    /// their hellos refused, listed in the admission table so that `memberd` revokes them too.
    /// At most [`EXTRA_MAX`] (the oldest forgotten first).
    pub removed: Vec<[u8; 32]>,
    /// This node is in no cluster file: say hello to the seeds (CPUs, memory MiB).
    pub hello: Option<(u16, u32)>,
    /// The cluster file's nodes other than this one (key, underlay endpoint): the seeds.
    pub seeds: Vec<([u8; 32], core::net::SocketAddrV6)>,
    next_hello_ns: u64,
    pub hellos_sent: u64,
    logged_refusals: u64,
}

pub fn short(key: &[u8; 32]) -> String {
    format!("node-{}", &crate::cluster::hex_encode(key)[..8])
}

impl Node {
    /// Whether `key` is this node's or already a fabric peer.
    fn is_peer(&self, key: &[u8; 32]) -> bool {
        *key == self.fabric.identity().public_key() || self.peers.iter().any(|p| p.public_key == *key)
    }

    /// Let `key` in: a fabric peer from now on (no fixed endpoint: its handshake gives one; a
    /// pending node's hello source is used until then). `Ok(false)`: it already was.
    pub fn admit_peer(&mut self, key: [u8; 32], now_ns: u64) -> Result<bool, String> {
        if self.is_peer(&key) {
            return Ok(false);
        }
        if self.admission.extra.len() >= EXTRA_MAX {
            return Err(String::from("too many admitted peers"));
        }
        let mut cfg = PeerConfig::new(key).with_persistent_keepalive(core::time::Duration::from_secs(25));
        let from = self.admission.pending.get(&key).map(|e| e.from);
        if let Some(f) = from {
            cfg = cfg.with_endpoint(SocketAddr::V6(f));
        }
        let id = self.fabric.add_peer(cfg).map_err(|e| format!("{e}"))?;
        let pfx = netfabric::identity::Prefix64::from_public_key(&key);
        let name = short(&key);
        info!(target: "net", "admission: {} ({}) admitted by the cluster: a fabric peer now{}", name, crate::cluster::hex_encode(&key),
            if from.is_some() { " (it was pending here)" } else { "" });
        self.peers.push(Peer { name, id, public_key: key, fabric_addr: pfx.node_address(), underlay: from.map_or(Ipv6Addr::UNSPECIFIED, |f| *f.ip()), established: false, operator: false });
        self.admission.pending.remove(&key);
        self.admission.removed.retain(|k| *k != key);
        self.admission.extra.push(key);
        if from.is_some() {
            let out = self.fabric.send_to(id, &[], FInstant::from_nanos(now_ns));
            self.fabric_output(out);
        }
        Ok(true)
    }

    /// Take `key` out (the cluster committed its removal): its fabric peer (a cluster file's
    /// node or one admitted at run time) and all its session state go, so its packets are
    /// refused as from an unknown peer; its hellos are refused from now on; the admission table
    /// lists it as removed. `Ok(false)`: it was no peer (still recorded as removed). This
    /// node's own key and operators' keys are refused.
    pub fn remove_peer(&mut self, key: [u8; 32]) -> Result<bool, String> {
        if key == self.fabric.identity().public_key() {
            return Err(String::from("this node's own key"));
        }
        if self.peers.iter().any(|p| p.public_key == key && p.operator) {
            return Err(String::from("an operator's key"));
        }
        let was = match self.peers.iter().position(|p| p.public_key == key) {
            Some(i) => {
                let p = self.peers.remove(i);
                self.fabric.remove_peer(p.id);
                true
            }
            None => false,
        };
        self.admission.extra.retain(|k| *k != key);
        self.admission.pending.remove(&key);
        if !self.admission.removed.contains(&key) {
            if self.admission.removed.len() >= EXTRA_MAX {
                self.admission.removed.remove(0);
            }
            self.admission.removed.push(key);
        }
        info!(target: "net", "admission: {} ({}) removed by the cluster: {}", short(&key), crate::cluster::hex_encode(&key),
            if was { "no longer a fabric peer" } else { "it was no peer here" });
        Ok(was)
    }

    /// Say hello to the seeds while this node has no session (it is in no cluster file).
    pub fn enable_hello(&mut self, cpus: u16, mem_mib: u32) {
        self.admission.hello = Some((cpus, mem_mib));
    }

    /// A datagram on the fabric port that is a hello (not a WireGuard message).
    pub(crate) fn on_hello(&mut self, data: &[u8], src: SocketAddr, now_ns: u64) {
        let SocketAddr::V6(from) = src else { return };
        // A removed key is not offered again as pending (an admin may `node add` it again).
        let mut known: Vec<[u8; 32]> = self.peers.iter().map(|p| p.public_key).collect();
        known.extend_from_slice(&self.admission.removed);
        let me = self.fabric.identity().clone();
        let before = self.admission.pending.get(&hello::parse(data).map(|f| f.key).unwrap_or([0; 32])).is_some();
        match self.admission.pending.offer(&me, data, from, now_ns, |k| known.contains(k)) {
            Ok(f) if !before => info!(target: "net", "admission: pending node {} key {} ({} CPUs, {} MiB, MAC {:02x?}) from [{}]:{}: no session until admitted",
                short(&f.key), crate::cluster::hex_encode(&f.key), f.cpus, f.mem_mib, f.mac, from.ip(), from.port()),
            Ok(_) => {}
            Err(e) => {
                self.admission.logged_refusals += 1;
                if self.admission.logged_refusals.is_power_of_two() {
                    warn!(target: "net", "admission: hello refused ({:?}); {} refused so far", e, self.admission.pending.refused);
                }
            }
        }
    }

    /// The hello timer (an unadmitted node): every [`HELLO_PERIOD_NS`] to every seed, and a
    /// handshake attempt with each (refused until the cluster admits this key).
    pub(crate) fn hello_tick(&mut self, now_ns: u64) {
        let Some((cpus, mem)) = self.admission.hello else { return };
        if now_ns < self.admission.next_hello_ns || self.peers.iter().any(|p| p.established && !p.operator) {
            return;
        }
        self.admission.next_hello_ns = now_ns + HELLO_PERIOD_NS;
        let me = self.fabric.identity().clone();
        let seeds = self.admission.seeds.clone();
        for (key, ep) in seeds {
            if let Some(h) = hello::encode(&me, &key, cpus, mem, self.mac, now_ns) {
                if self.underlay_tx.send(&mut self.eth_sockets, *ep.ip(), ep.port(), &h) {
                    self.admission.hellos_sent += 1;
                }
            }
            if let Some(id) = self.peers.iter().find(|p| p.public_key == key).map(|p| p.id) {
                let out = self.fabric.send_to(id, &[], FInstant::from_nanos(now_ns));
                self.fabric_output(out);
            }
        }
    }
}

/// What a row of the admission table is: its first byte on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// A peer admitted at run time.
    Admitted,
    /// A node that said hello and waits for an admin (`catenary node add`).
    Pending,
    /// Removed by the cluster (never established).
    Removed,
}

impl RowKind {
    pub fn wire(self) -> u8 {
        match self {
            RowKind::Admitted => 0,
            RowKind::Pending => 1,
            RowKind::Removed => 2,
        }
    }
    pub fn from_wire(b: u8) -> Option<RowKind> {
        match b {
            0 => Some(RowKind::Admitted),
            1 => Some(RowKind::Pending),
            2 => Some(RowKind::Removed),
            _ => None,
        }
    }
}

/// One row of `netd`'s admission table (`LABEL_ADMISSION`): a peer admitted at run time, a
/// pending node, or a removed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub kind: RowKind,
    /// Admitted: a session is up. Pending: never.
    pub established: bool,
    pub key: [u8; 32],
    pub cpus: u16,
    pub mem_mib: u32,
    pub mac: [u8; 6],
    /// Where its hello came from (pending), else unspecified.
    pub underlay: Ipv6Addr,
    /// Since its first hello (pending), in ms.
    pub age_ms: u64,
}

impl Row {
    /// A row of only a kind and a key: no session, no hello facts (an admitted or a removed key).
    pub fn bare(kind: RowKind, key: [u8; 32]) -> Row {
        Row { kind, established: false, key, cpus: 0, mem_mib: 0, mac: [0; 6], underlay: Ipv6Addr::UNSPECIFIED, age_ms: 0 }
    }
}

const TABLE_MAGIC: [u8; 4] = *b"ADM1";
pub const TABLE_HEADER: usize = 8;
pub const TABLE_ROW: usize = 72;
pub const TABLE_ROWS_MAX: usize = 2 * EXTRA_MAX + hello::CAP;

pub fn table_len(rows: usize) -> usize {
    TABLE_HEADER + rows * TABLE_ROW
}

pub fn encode_table(rows: &[Row]) -> Vec<u8> {
    let rows = &rows[..rows.len().min(TABLE_ROWS_MAX)];
    let mut b = Vec::with_capacity(table_len(rows.len()));
    b.extend_from_slice(&TABLE_MAGIC);
    b.extend_from_slice(&(rows.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    for r in rows {
        b.push(r.kind.wire());
        b.push(r.established as u8);
        b.extend_from_slice(&r.cpus.to_le_bytes());
        b.extend_from_slice(&r.mem_mib.to_le_bytes());
        b.extend_from_slice(&r.mac);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&r.key);
        b.extend_from_slice(&r.underlay.octets());
        b.extend_from_slice(&r.age_ms.to_le_bytes());
    }
    b
}

/// A byte string that is not an admission table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTable;

/// The table as its reader gets it: any malformed byte string is an error, never a panic.
pub fn decode_table(b: &[u8]) -> Result<Vec<Row>, BadTable> {
    if b.len() < TABLE_HEADER || b[..4] != TABLE_MAGIC || b[6..8] != [0, 0] {
        return Err(BadTable);
    }
    let n = u16::from_le_bytes([b[4], b[5]]) as usize;
    if n > TABLE_ROWS_MAX || b.len() != table_len(n) {
        return Err(BadTable);
    }
    let mut rows = Vec::with_capacity(n);
    for c in b[TABLE_HEADER..].chunks_exact(TABLE_ROW) {
        let Some(kind) = RowKind::from_wire(c[0]) else { return Err(BadTable) };
        if c[1] > 1 || c[14..16] != [0, 0] || (kind == RowKind::Removed && c[1] == 1) {
            return Err(BadTable);
        }
        let arr = |r: core::ops::Range<usize>| -> Vec<u8> { c[r].to_vec() };
        let mut key = [0u8; 32];
        key.copy_from_slice(&arr(16..48));
        let mut ul = [0u8; 16];
        ul.copy_from_slice(&arr(48..64));
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&c[8..14]);
        rows.push(Row {
            kind,
            established: c[1] == 1,
            cpus: u16::from_le_bytes([c[2], c[3]]),
            mem_mib: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            mac,
            key,
            underlay: Ipv6Addr::from(ul),
            age_ms: u64::from_le_bytes(c[64..72].try_into().map_err(|_| BadTable)?),
        });
    }
    Ok(rows)
}

impl Node {
    /// The admission table: admitted-at-run-time peers, then pending nodes.
    pub fn admission_rows(&self, now_ns: u64) -> Vec<Row> {
        let mut v: Vec<Row> = self
            .admission
            .extra
            .iter()
            .map(|k| Row { established: self.peers.iter().any(|p| p.public_key == *k && p.established), ..Row::bare(RowKind::Admitted, *k) })
            .collect();
        v.extend(self.admission.pending.entries().iter().filter(|e| now_ns.saturating_sub(e.last_ns) <= hello::TTL_NS).map(|e| Row {
            kind: RowKind::Pending,
            established: false,
            key: e.facts.key,
            cpus: e.facts.cpus,
            mem_mib: e.facts.mem_mib,
            mac: e.facts.mac,
            underlay: *e.from.ip(),
            age_ms: now_ns.saturating_sub(e.first_ns) / 1_000_000,
        }));
        v.extend(self.admission.removed.iter().map(|k| Row::bare(RowKind::Removed, *k)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_round_trips_and_refuses_malformed_bytes() {
        let rows = alloc::vec![
            Row { established: true, ..Row::bare(RowKind::Admitted, [1; 32]) },
            Row::bare(RowKind::Removed, [3; 32]),
            Row { kind: RowKind::Pending, established: false, key: [2; 32], cpus: 4, mem_mib: 4096, mac: [0x52, 0x54, 0, 0xca, 0, 3], underlay: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 3), age_ms: 1234 },
        ];
        let b = encode_table(&rows);
        // The kind byte on the wire (apid and memberd read it): 0 admitted, 2 removed, 1 pending.
        assert_eq!([b[TABLE_HEADER], b[TABLE_HEADER + TABLE_ROW], b[TABLE_HEADER + 2 * TABLE_ROW]], [0, 2, 1]);
        assert_eq!(decode_table(&b), Ok(rows));
        for n in 0..b.len() {
            assert!(decode_table(&b[..n]).is_err());
        }
        let mut bad = b.clone();
        bad[TABLE_HEADER] = 3;
        assert!(decode_table(&bad).is_err());
        // removed and established at once
        let mut bad = b.clone();
        bad[TABLE_HEADER + TABLE_ROW + 1] = 1;
        assert!(decode_table(&bad).is_err());
        let mut x = 7u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut c = b.clone();
            let at = x as usize % c.len();
            c[at] ^= (x >> 20) as u8;
            let _ = decode_table(&c);
        }
    }
}
