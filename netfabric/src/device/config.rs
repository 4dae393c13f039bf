//! How a peer is added ([`PeerConfig`]) and why it may be refused ([`AddPeerError`]).
use super::*;

/// How to add a peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// Optional pre-shared key (zero = none, as in WireGuard).
    pub preshared_key: [u8; 32],
    /// Where to send; learned from authenticated packets if absent (roaming).
    pub endpoint: Option<SocketAddr>,
    /// Extra prefixes the peer owns besides its derived /64.
    pub allowed_prefixes: Vec<IpPrefix>,
    /// Whether the peer owns its derived /64 (default true).
    pub owns_derived_prefix: bool,
    /// Send a keepalive whenever nothing was sent for this long.
    pub persistent_keepalive: Option<Duration>,
}

impl PeerConfig {
    /// A peer with its derived /64 and nothing else.
    pub fn new(public_key: [u8; 32]) -> Self {
        PeerConfig {
            public_key,
            preshared_key: [0; 32],
            endpoint: None,
            allowed_prefixes: Vec::new(),
            owns_derived_prefix: true,
            persistent_keepalive: None,
        }
    }
    /// Set the endpoint.
    pub fn with_endpoint(mut self, ep: SocketAddr) -> Self {
        self.endpoint = Some(ep);
        self
    }
    /// Add an allowed prefix.
    pub fn with_prefix(mut self, p: IpPrefix) -> Self {
        self.allowed_prefixes.push(p);
        self
    }
    /// Set the pre-shared key.
    pub fn with_psk(mut self, psk: [u8; 32]) -> Self {
        self.preshared_key = psk;
        self
    }
    /// Set persistent keepalive.
    pub fn with_persistent_keepalive(mut self, d: Duration) -> Self {
        self.persistent_keepalive = Some(d);
        self
    }
}

/// Why [`Device::add_peer`] refused a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddPeerError {
    /// The key is a low-order point (e.g. all zero): the shared secret with it is all zero.
    LowOrderKey,
    /// A peer with this key is already configured.
    Duplicate,
    /// The key is our own.
    OwnKey,
    /// The key's derived /64 equals ours or another peer's.
    PrefixCollision,
}

impl core::fmt::Display for AddPeerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            AddPeerError::LowOrderKey => "low-order public key",
            AddPeerError::Duplicate => "duplicate peer",
            AddPeerError::OwnKey => "the peer key is our own",
            AddPeerError::PrefixCollision => "derived /64 collides with ours or another peer's",
        })
    }
}
