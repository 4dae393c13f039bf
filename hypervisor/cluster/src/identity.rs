//! A node's identity in the membership protocol.
//!
//! The fabric public key names the node (it is what admission checks and what the fabric
//! authenticates every datagram with); the fabric address is where datagrams go; the generation
//! grows each time the node rejoins after the cluster declared it down (SWIM cannot revive a
//! dead identity, so a rejoin is a new identity with the same key).
use core::fmt;

/// A node's WireGuard-compatible fabric public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey(pub [u8; 32]);

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys only; the first bytes are enough to tell nodes apart in a trace.
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One incarnation-line of a node: key, fabric IPv6 address, generation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId {
    pub key: NodeKey,
    pub addr: [u8; 16],
    pub generation: u32,
}

impl NodeId {
    pub const ENCODED_LEN: usize = 32 + 16 + 4;

    pub fn new(key: NodeKey, addr: [u8; 16], generation: u32) -> Self {
        NodeId {
            key,
            addr,
            generation,
        }
    }
}

impl foca::Identity for NodeId {
    /// Two identities with the same key are the same node; foca keeps only the winner.
    type Addr = NodeKey;

    fn renew(&self) -> Option<Self> {
        // Saturating: a node that rejoined 4 billion times stays at the top and cannot rejoin
        // again (foca then reports it idle), which is the honest outcome.
        let generation = self.generation.checked_add(1)?;
        Some(NodeId {
            generation,
            ..*self
        })
    }

    fn addr(&self) -> NodeKey {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}
