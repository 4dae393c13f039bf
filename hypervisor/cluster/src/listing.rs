//! The committed desired state as `orchd` lists it to `apid` (`GET /v1/cluster/workloads`):
//! each workload's spec, the node each replica is assigned to, and how many nodes satisfy its
//! constraints. Paged over IPC ([`crate::orch::LABEL_LIST`]): `apid` asks from workload
//! `start` (in name order); `orchd` writes as many whole entries as fit its grant.
//!
//! Layout (little-endian, the spec as `raft_codec` writes it): magic `0xCB`, total u32, next
//! u32 (the start of the following page; `total` when this is the last), count u16, then per
//! entry: spec, eligible u32, replica count u16 (= the spec's replicas), per replica 0 or 1 +
//! the node's 32-byte key. Decoding is as strict as `raft_codec` (every count bounded and
//! checked against the bytes left, no trailing bytes): a confused or restarted `orchd` is not
//! trusted blindly.
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::desired::{DesiredState, WorkloadSpec};
use crate::identity::NodeKey;
use crate::raft_codec::{WireError, R, W};

pub const MAGIC: u8 = 0xCB;
/// A page is at most this long (what `apid` grants; an entry is at most a datagram's worth,
/// `raft_codec::command_fits`, so a page always holds at least one).
pub const PAGE_MAX: usize = 64 * 1024;
/// Replicas per workload (the state's `Limits::replicas`).
pub const REPLICAS_MAX: usize = 64;

/// One workload of the committed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub spec: WorkloadSpec,
    /// Replica `i`'s node, if assigned.
    pub replicas: Vec<Option<NodeKey>>,
    /// Admitted, undrained nodes whose labels satisfy every constraint
    /// ([`DesiredState::eligible_nodes`]); fewer than the replicas: unplaceable as it stands.
    pub eligible: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub total: u32,
    pub next: u32,
    pub entries: Vec<Listed>,
}

fn listed(state: &DesiredState, spec: &WorkloadSpec, labels: &BTreeMap<NodeKey, BTreeMap<String, String>>) -> Listed {
    let replicas = (0..spec.replicas.min(REPLICAS_MAX as u32)).map(|r| state.assignments.get(&(spec.name.clone(), r)).copied()).collect();
    Listed { spec: spec.clone(), replicas, eligible: state.eligible_nodes(spec, labels) }
}

fn entry(w: &mut W, l: &Listed) {
    w.spec(&l.spec);
    w.u32(l.eligible);
    w.u16(l.replicas.len().min(REPLICAS_MAX) as u16);
    for r in l.replicas.iter().take(REPLICAS_MAX) {
        match r {
            None => w.u8(0),
            Some(k) => {
                w.u8(1);
                w.bytes(&k.0);
            }
        }
    }
}

/// The page of `state`'s workloads from the `start`-th (name order), at most `max` bytes
/// (at least one entry when any is left and `max` ≥ [`PAGE_MAX`]).
pub fn encode_page(state: &DesiredState, labels: &BTreeMap<NodeKey, BTreeMap<String, String>>, start: usize, max: usize) -> Vec<u8> {
    let total = state.workloads.len();
    let mut body = W(Vec::new());
    let mut count = 0u16;
    let mut next = total;
    for (i, spec) in state.workloads.values().enumerate().skip(start) {
        let mut one = W(Vec::new());
        entry(&mut one, &listed(state, spec, labels));
        if 11 + body.0.len() + one.0.len() > max || count == u16::MAX {
            next = i;
            break;
        }
        body.0.extend_from_slice(&one.0);
        count += 1;
    }
    let mut w = W(Vec::with_capacity(11 + body.0.len()));
    w.u8(MAGIC);
    w.u32(total as u32);
    w.u32(next.max(start.min(total)) as u32);
    w.u16(count);
    w.bytes(&body.0);
    w.0
}

/// A page `orchd` wrote. Never panics; allocates at most a small multiple of `bytes.len()`.
pub fn decode_page(bytes: &[u8]) -> Result<Page, WireError> {
    if bytes.len() > PAGE_MAX {
        return Err(WireError::TooLong);
    }
    let mut r = R { b: bytes };
    if r.u8()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let (total, next) = (r.u32()?, r.u32()?);
    if next > total {
        return Err(WireError::OutOfRange);
    }
    // An entry is at least a spec's fixed part (name length, image, sizes, counts).
    let n = r.count(usize::from(u16::MAX), 60)?;
    let mut entries = Vec::new();
    for _ in 0..n {
        let spec = r.spec()?;
        let eligible = r.u32()?;
        let k = r.count(REPLICAS_MAX, 1)?;
        if k as u32 != spec.replicas {
            return Err(WireError::Inconsistent);
        }
        let mut replicas = Vec::with_capacity(k);
        for _ in 0..k {
            replicas.push(if r.flag()? { Some(r.key()?) } else { None });
        }
        entries.push(Listed { spec, replicas, eligible });
    }
    if !r.b.is_empty() {
        return Err(WireError::Trailing);
    }
    Ok(Page { total, next, entries })
}

/// The first byte of a labels table ([`crate::orch::LABEL_LABELS`]).
pub const LABELS_MAGIC: u8 = 0xCC;
/// Nodes in one labels table (the state's `Limits::nodes`).
pub const LABEL_NODES_MAX: usize = 1024;
/// Labels per node in a table (cluster file's 16 with the committed changes' 32 over them).
pub const NODE_LABELS_SHOWN_MAX: usize = 48;

/// Every admitted node's effective labels, as many nodes as fit in `max` bytes (in key order).
/// Layout: magic `0xCC`, count u16, per node: key, label count u8, per label key and value
/// as `raft_codec` writes strings.
pub fn encode_labels(state: &DesiredState, labels: &BTreeMap<NodeKey, BTreeMap<String, String>>, max: usize) -> Vec<u8> {
    let mut body = W(Vec::new());
    let mut count = 0u16;
    for k in state.nodes.iter().take(LABEL_NODES_MAX) {
        let mut one = W(Vec::new());
        one.bytes(&k.0);
        let l: Vec<(&String, &String)> = labels.get(k).map(|l| l.iter().take(NODE_LABELS_SHOWN_MAX).collect()).unwrap_or_default();
        one.u8(l.len() as u8);
        for (k, v) in l {
            one.str(k);
            one.str(v);
        }
        if 3 + body.0.len() + one.0.len() > max {
            break;
        }
        body.0.extend_from_slice(&one.0);
        count += 1;
    }
    let mut w = W(Vec::with_capacity(3 + body.0.len()));
    w.u8(LABELS_MAGIC);
    w.u16(count);
    w.bytes(&body.0);
    w.0
}

/// A labels table `orchd` wrote. Never panics; strict as [`decode_page`].
pub fn decode_labels(bytes: &[u8]) -> Result<BTreeMap<NodeKey, BTreeMap<String, String>>, WireError> {
    if bytes.len() > PAGE_MAX {
        return Err(WireError::TooLong);
    }
    let mut r = R { b: bytes };
    if r.u8()? != LABELS_MAGIC {
        return Err(WireError::BadMagic);
    }
    let n = r.count(LABEL_NODES_MAX, 33)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let k = r.key()?;
        let m = r.u8()? as usize;
        if m > NODE_LABELS_SHOWN_MAX {
            return Err(WireError::OutOfRange);
        }
        let mut l = BTreeMap::new();
        for _ in 0..m {
            let key = r.str()?;
            l.insert(key, r.str()?);
        }
        if out.insert(k, l).is_some() {
            return Err(WireError::Inconsistent);
        }
    }
    if !r.b.is_empty() {
        return Err(WireError::Trailing);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Command, Limits, RestartPolicy};
    use crate::placement::Constraint;
    use alloc::string::ToString;
    use alloc::vec;

    fn spec(name: &str, replicas: u32, constraints: Vec<Constraint>) -> WorkloadSpec {
        WorkloadSpec {
            health: None,
            name: name.to_string(),
            image: [9; 32],
            replicas,
            vcpus: 1,
            mem_mib: 64,
            env: vec![("A".to_string(), "1".to_string())],
            args: vec!["-v".to_string()],
            restart: RestartPolicy::OnFailure { max_restarts: 3 },
            constraints,
        }
    }

    fn state() -> (DesiredState, BTreeMap<NodeKey, BTreeMap<String, String>>) {
        let l = Limits::default();
        let mut s = DesiredState::default();
        let (a, b, c) = (NodeKey([1; 32]), NodeKey([2; 32]), NodeKey([3; 32]));
        for k in [a, b, c] {
            s.apply(&Command::AdmitNode(k), &l).unwrap();
        }
        let zone = |z: &str| ("zone".to_string(), z.to_string());
        let labels: BTreeMap<NodeKey, BTreeMap<String, String>> = [(a, [zone("a")].into()), (b, [zone("b")].into())].into();
        s.apply(&Command::PutWorkload(spec("web", 2, vec![])), &l).unwrap();
        s.apply(&Command::PutWorkload(spec("db", 1, vec![Constraint::LabelEquals { key: "zone".into(), value: "a".into() }])), &l).unwrap();
        s.apply(&Command::PutWorkload(spec("gpu", 1, vec![Constraint::LabelEquals { key: "gpu".into(), value: "yes".into() }])), &l).unwrap();
        s.apply(&Command::PutWorkload(spec("notb", 2, vec![Constraint::LabelNotEquals { key: "zone".into(), value: "b".into() }])), &l).unwrap();
        s.apply(&Command::Assign { workload: "web".into(), replica: 1, node: c }, &l).unwrap();
        s.apply(&Command::Assign { workload: "db".into(), replica: 0, node: a }, &l).unwrap();
        (s, labels)
    }

    #[test]
    fn pages_round_trip_with_assignments_and_eligibility() {
        let (s, labels) = state();
        let p = decode_page(&encode_page(&s, &labels, 0, PAGE_MAX)).unwrap();
        assert_eq!((p.total, p.next, p.entries.len()), (4, 4, 4));
        let by = |n: &str| p.entries.iter().find(|e| e.spec.name == n).unwrap().clone();
        assert_eq!(by("web").replicas, vec![None, Some(NodeKey([3; 32]))]);
        assert_eq!((by("web").eligible, by("db").eligible, by("gpu").eligible, by("notb").eligible), (3, 1, 0, 2));
        assert_eq!(by("db").spec, s.workloads["db"]);
        // A drained node is not eligible.
        let mut d = s.clone();
        d.apply(&Command::Drain(NodeKey([1; 32])), &Limits::default()).unwrap();
        let p = decode_page(&encode_page(&d, &labels, 0, PAGE_MAX)).unwrap();
        assert_eq!(p.entries.iter().find(|e| e.spec.name == "db").unwrap().eligible, 0);
        // Small pages: every entry once, in order, whatever the page size.
        let mut names = Vec::new();
        let mut start = 0;
        while start < 4 {
            let p = decode_page(&encode_page(&s, &labels, start, 300)).unwrap();
            assert!(p.next as usize > start, "no progress at {start}");
            names.extend(p.entries.into_iter().map(|e| e.spec.name));
            start = p.next as usize;
        }
        assert_eq!(names, vec!["db", "gpu", "notb", "web"]);
    }

    #[test]
    fn labels_tables_round_trip_and_refuse_malformed_bytes() {
        let (s, labels) = state();
        let b = encode_labels(&s, &labels, PAGE_MAX);
        let d = decode_labels(&b).unwrap();
        // Every admitted node, the unlabelled one with none.
        assert_eq!(d.len(), 3);
        assert_eq!(d[&NodeKey([1; 32])], labels[&NodeKey([1; 32])]);
        assert!(d[&NodeKey([3; 32])].is_empty());
        for n in 0..b.len() {
            assert!(decode_labels(&b[..n]).is_err(), "truncated at {n}");
        }
        // A small grant: whole nodes only, still decodable.
        let part = decode_labels(&encode_labels(&s, &labels, 3 + 33 + 12)).unwrap();
        assert_eq!(part.len(), 1);
        let mut x = 0x1234_5678u64;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut c = b.clone();
            let at = (x as usize) % c.len();
            c[at] ^= (x >> 24) as u8 | 1;
            let _ = decode_labels(&c);
        }
    }

    #[test]
    fn hostile_pages_are_errors_without_panic() {
        let (s, labels) = state();
        let good = encode_page(&s, &labels, 0, PAGE_MAX);
        for n in 0..good.len() {
            assert!(decode_page(&good[..n]).is_err(), "truncated at {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode_page(&long), Err(WireError::Trailing));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = good.clone();
            for _ in 0..1 + i % 4 {
                let at = (x as usize) % b.len();
                b[at] ^= (x >> 32) as u8 | 1;
            }
            b.truncate(b.len() - (x >> 40) as usize % 3);
            if let Ok(p) = decode_page(&b) {
                assert!(p.entries.iter().all(|e| e.replicas.len() as u32 == e.spec.replicas));
            }
        }
    }
}
