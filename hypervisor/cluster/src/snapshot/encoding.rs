//! A snapshot's bytes: the deterministic encoding and the validating decode (the layout is in
//! the module docs, [`super`]).
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use raftbare::{ClusterConfig, LogPosition};

use super::SNAPSHOT_MAX;
use crate::desired::{DesiredState, Limits, Release, Role, NODE_LABELS_MAX};
use crate::raft_codec::{WireError, R, W};
use crate::replica::Snapshot;

const VERSION: u8 = 1;

/// The snapshot's bytes (deterministic).
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    encode_parts(s.position, &s.config, &s.state)
}

/// [`encode_snapshot`] of the snapshot these parts make, without one.
fn encode_parts(position: LogPosition, config: &ClusterConfig, state: &DesiredState) -> Vec<u8> {
    let mut w = W(Vec::new());
    w.u8(VERSION);
    w.pos(position);
    w.ids(&config.voters);
    w.ids(&config.new_voters);
    w.ids(&config.non_voters);
    // Every field, by name: a new one must be added here (and to the decoder).
    let DesiredState { workloads, nodes, node_order, drained, operators, assignments, releases, labels, applied } = state;
    w.u64(*applied);
    w.u32(workloads.len() as u32);
    for spec in workloads.values() {
        w.spec(spec);
    }
    for keys in [&nodes.iter().collect::<Vec<_>>(), &node_order.iter().collect(), &drained.iter().collect()] {
        w.u32(keys.len() as u32);
        for k in keys {
            w.bytes(&k.0);
        }
    }
    w.u32(operators.len() as u32);
    for (k, role) in operators {
        w.bytes(&k.0);
        w.u8(match role {
            Role::Admin => 1,
            Role::Viewer => 2,
        });
    }
    w.u32(assignments.len() as u32);
    for ((name, replica), node) in assignments {
        w.str(name);
        w.u32(*replica);
        w.bytes(&node.0);
    }
    w.u32(releases.len() as u32);
    for ((name, replica), r) in releases {
        w.str(name);
        w.u32(*replica);
        w.bytes(&r.host.0);
        w.u64(r.at);
    }
    w.u32(labels.len() as u32);
    for (node, changes) in labels {
        w.bytes(&node.0);
        w.u16(changes.len() as u16);
        for (k, v) in changes {
            w.str(k);
            match v {
                None => w.u8(0),
                Some(v) => {
                    w.u8(1);
                    w.str(v);
                }
            }
        }
    }
    w.0
}

/// A u32 count of items of at least `item` bytes: bounded by `max` and by the bytes left.
fn count32(r: &mut R<'_>, max: usize, item: usize) -> Result<usize, WireError> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(WireError::OutOfRange);
    }
    if n.saturating_mul(item) > r.b.len() {
        return Err(WireError::Truncated);
    }
    Ok(n)
}

/// The SHA-256 of [`encode_snapshot`]: what a member vouches for when a node checks a state it
/// pulled (crate::replica::Catchup::Vouch). Equal for equal snapshots on every node, since the
/// encoding is deterministic.
pub fn snapshot_digest(s: &Snapshot) -> [u8; 32] {
    digest_parts(s.position, &s.config, &s.state)
}

/// [`snapshot_digest`] of the snapshot these parts make, without one (no copy of the state).
pub fn digest_parts(position: LogPosition, config: &ClusterConfig, state: &DesiredState) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(encode_parts(position, config, state)).into()
}

/// A snapshot from its bytes, refused unless canonical and within `limits`. Never panics;
/// allocates at most a small multiple of `bytes.len()`.
pub fn decode_snapshot(bytes: &[u8], limits: &Limits) -> Result<Snapshot, WireError> {
    if bytes.len() > SNAPSHOT_MAX {
        return Err(WireError::TooLong);
    }
    let mut r = R { b: bytes };
    if r.u8()? != VERSION {
        return Err(WireError::BadTag(bytes[0]));
    }
    let position = r.pos()?;
    let config = ClusterConfig { voters: r.ids()?, new_voters: r.ids()?, non_voters: r.ids()? };
    let mut st = DesiredState { applied: r.num()?, ..DesiredState::default() };
    // A spec is at least 2 + 32 + 16 + 2 + 2 + 1 + 2 bytes.
    for _ in 0..count32(&mut r, limits.workloads, 57)? {
        let spec = r.spec()?;
        if st.workloads.last_key_value().is_some_and(|(k, _)| *k >= spec.name) {
            return Err(WireError::OutOfRange);
        }
        st.workloads.insert(spec.name.clone(), spec);
    }
    for _ in 0..count32(&mut r, limits.nodes, 32)? {
        let k = r.key()?;
        if st.nodes.last().is_some_and(|l| *l >= k) {
            return Err(WireError::OutOfRange);
        }
        st.nodes.insert(k);
    }
    let mut seen = BTreeSet::new();
    for _ in 0..count32(&mut r, limits.nodes, 32)? {
        let k = r.key()?;
        if !seen.insert(k) {
            return Err(WireError::OutOfRange);
        }
        st.node_order.push(k);
    }
    for _ in 0..count32(&mut r, limits.nodes, 32)? {
        let k = r.key()?;
        if st.drained.last().is_some_and(|l| *l >= k) {
            return Err(WireError::OutOfRange);
        }
        st.drained.insert(k);
    }
    for _ in 0..count32(&mut r, limits.operators, 33)? {
        let k = r.key()?;
        let role = match r.u8()? {
            1 => Role::Admin,
            2 => Role::Viewer,
            t => return Err(WireError::BadTag(t)),
        };
        if st.operators.last_key_value().is_some_and(|(l, _)| *l >= k) {
            return Err(WireError::OutOfRange);
        }
        st.operators.insert(k, role);
    }
    let replicas = limits.workloads.saturating_mul(limits.replicas as usize);
    for _ in 0..count32(&mut r, replicas, 38)? {
        let key = (r.str()?, r.u32()?);
        let node = r.key()?;
        if st.assignments.last_key_value().is_some_and(|(l, _)| *l >= key) {
            return Err(WireError::OutOfRange);
        }
        st.assignments.insert(key, node);
    }
    for _ in 0..count32(&mut r, replicas.saturating_mul(2), 46)? {
        let key = (r.str()?, r.u32()?);
        let host = r.key()?;
        let at = r.u64()?;
        if st.releases.last_key_value().is_some_and(|(l, _)| *l >= key) {
            return Err(WireError::OutOfRange);
        }
        st.releases.insert(key, Release { host, at });
    }
    for _ in 0..count32(&mut r, limits.nodes, 34)? {
        let node = r.key()?;
        if st.labels.last_key_value().is_some_and(|(l, _)| *l >= node) {
            return Err(WireError::OutOfRange);
        }
        let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
        for _ in 0..r.count(NODE_LABELS_MAX, 3)? {
            let k = r.str()?;
            let v = match r.u8()? {
                0 => None,
                1 => Some(r.str()?),
                t => return Err(WireError::BadTag(t)),
            };
            if changes.last_key_value().is_some_and(|(l, _)| *l >= k) {
                return Err(WireError::OutOfRange);
            }
            changes.insert(k, v);
        }
        st.labels.insert(node, changes);
    }
    if !r.b.is_empty() {
        return Err(WireError::Trailing);
    }
    // The position a snapshot was taken at was committed, and the state is the limits'.
    if position.term.get() == 0 && position.index.get() != 0 || !st.within(limits) {
        return Err(WireError::OutOfRange);
    }
    Ok(Snapshot { position, config, state: st })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::fixtures::snap;
    use raftbare::LogPosition;

    #[test]
    fn snapshot_bytes_round_trip_canonically_and_every_cut_is_refused() {
        let l = Limits::default();
        for s in [snap(0, 0), snap(5, 10), Snapshot { position: LogPosition::ZERO, config: ClusterConfig::new(), state: DesiredState::default() }] {
            let b = encode_snapshot(&s);
            assert_eq!(decode_snapshot(&b, &l).as_ref(), Ok(&s));
            assert_eq!(encode_snapshot(&s), b, "deterministic");
            for n in 0..b.len() {
                assert!(decode_snapshot(&b[..n], &l).is_err(), "cut at {n}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(decode_snapshot(&longer, &l), Err(WireError::Trailing));
        }
    }

    #[test]
    fn snapshot_decode_refuses_disorder_repeats_and_states_past_the_limits() {
        let l = Limits::default();
        let s = snap(3, 0);
        let b = encode_snapshot(&s);
        // The nodes set is the first place key [1;32] then [2;32] appear: swapped, out of order.
        let at = |b: &[u8], k: u8| b.windows(32).position(|w| w == [k; 32]).unwrap();
        let (a1, a2) = (at(&b, 1), at(&b, 2));
        assert_eq!(a2, a1 + 32);
        let mut swapped = b.clone();
        swapped[a1..a1 + 32].fill(2);
        swapped[a2..a2 + 32].fill(1);
        assert_eq!(decode_snapshot(&swapped, &l), Err(WireError::OutOfRange));
        // A key twice in the admission order.
        let order = a2 + 32 + 32 + 4; // after nodes [1,2,3]: node_order's count, then its keys
        let mut twice = b.clone();
        let first: [u8; 32] = twice[order..order + 32].try_into().unwrap();
        twice[order + 32..order + 64].copy_from_slice(&first);
        assert_eq!(decode_snapshot(&twice, &l), Err(WireError::OutOfRange));
        // Past the receiver's limits.
        assert_eq!(decode_snapshot(&b, &Limits { workloads: 2, ..l }), Err(WireError::OutOfRange));
        assert_eq!(decode_snapshot(&b, &Limits { nodes: 2, ..l }), Err(WireError::OutOfRange));
        // A huge count with few bytes behind it: refused before allocating.
        let mut huge = encode_snapshot(&Snapshot { position: LogPosition::ZERO, config: ClusterConfig::new(), state: DesiredState::default() });
        let workloads = 1 + 16 + 3 * 2 + 8;
        huge[workloads..workloads + 4].copy_from_slice(&9_999u32.to_le_bytes());
        assert_eq!(decode_snapshot(&huge, &l), Err(WireError::Truncated));
    }

    /// The encoding is smaller than the heap the state takes, so a state within the write
    /// budget always has a snapshot within SNAPSHOT_MAX.
    #[test]
    fn the_encoding_is_smaller_than_the_state_heap() {
        for (n, pad) in [(0, 0), (1, 0), (100, 0), (2000, 0), (50, 3000)] {
            let s = snap(n, pad);
            let (enc, heap) = (encode_snapshot(&s).len() as u64, s.state.heap_bytes());
            assert!(enc <= heap.max(200), "{n} workloads: {enc} bytes encoded, {heap} heap");
        }
        assert!(crate::orch::NODE_WRITE_BUDGET <= SNAPSHOT_MAX as u64);
    }
}
