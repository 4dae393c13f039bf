//! Forged membership datagrams for the hostile-guest test (xtask/src/hostiletest.rs): what
//! node1's memberd would send node2 when it leaves the cluster gracefully, made here with the
//! real protocol code (`catenary_cluster::Membership`, the codec of
//! hypervisor/cluster/src/codec.rs) for the identities the nodes logged. A guest on node1 sends
//! them to node2's memberd from its own /128 (in node1's /64): node2 must refuse them.

use catenary_cluster::{MemberState, Membership, MembershipConfig, NodeId, NodeKey};

/// A node's membership identity: its key, its fabric /128 (interface id 1), the generation its
/// memberd logged (`memberd: membership on … generation G`).
pub fn identity(key: [u8; 32], generation: u32) -> NodeId {
    let addr = netfabric::identity::Prefix64::from_public_key(&key).node_address().octets();
    NodeId::new(NodeKey(key), addr, generation)
}

/// The datagrams `from` sends `to` as it leaves (a leave notice and its own `down` gossip),
/// each as it would go on the wire (UDP payload). Checked before they are returned: delivered
/// to a fresh membership of `to` that knows `from` alive, as coming from `from`'s key, they
/// make `from` `left` there (so a node that accepts them shows the forgery).
pub fn leave(from: NodeId, to: NodeId) -> Result<Vec<Vec<u8>>, String> {
    let keys = [from.key, to.key];
    let seed = |id: NodeId| NodeId { generation: 0, ..id };
    let cfg = MembershipConfig::default;
    let mut a = Membership::new(from, cfg(), 1, keys, vec![seed(to)]);
    let mut b = Membership::new(to, cfg(), 2, keys, vec![seed(from)]);
    // b announces itself to a; a answers; a now counts b as a member it must tell
    let t = std::time::Duration::ZERO;
    b.tick(t);
    for d in b.take_outgoing() {
        a.handle_datagram(t, to.key, &d.data).map_err(|e| format!("forge: node1 refused node2's announce: {e}"))?;
    }
    for d in a.take_outgoing() {
        b.handle_datagram(t, from.key, &d.data).map_err(|e| format!("forge: node2 refused node1's answer: {e}"))?;
    }
    if b.member(&from.key).map(|m| m.state) != Some(MemberState::Alive) {
        return Err("forge: the in-process node2 never saw node1 alive".into());
    }
    a.leave(t);
    let out: Vec<Vec<u8>> = a.take_outgoing().into_iter().filter(|d| d.to == to).map(|d| d.data).collect();
    if out.is_empty() {
        return Err("forge: leaving produced no datagram for node2".into());
    }
    // the check: from node1's own /128 they would work
    for d in &out {
        b.handle_datagram(t, from.key, d).map_err(|e| format!("forge: the in-process node2 refused a forged datagram: {e}"))?;
    }
    match b.member(&from.key).map(|m| m.state) {
        Some(MemberState::Left) => Ok(out),
        s => Err(format!("forge: the forged datagrams left node1 {s:?} on the in-process node2, not left")),
    }
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leave_is_forged_for_the_logged_identities_and_only_for_them() {
        let k = |i: u8| netfabric::Identity::from_secret_bytes([i; 32]).public_key();
        let (n1, n2) = (identity(k(1), 1_796_000_000), identity(k(2), 1_796_000_007));
        let d = leave(n1, n2).unwrap();
        assert!(d.iter().all(|d| !d.is_empty() && d.len() <= 512), "{:?}", d.iter().map(Vec::len).collect::<Vec<_>>());
        // addressed to exactly node2's generation: a node2 that restarted (a new generation)
        // takes no payload from them
        let mut other = Membership::new(identity(k(2), 1_796_000_008), MembershipConfig::default(), 3, [n1.key, n2.key], vec![]);
        for x in &d {
            let _ = other.handle_datagram(std::time::Duration::ZERO, n1.key, x);
        }
        assert_ne!(other.member(&n1.key).map(|m| m.state), Some(MemberState::Left));
    }
}
