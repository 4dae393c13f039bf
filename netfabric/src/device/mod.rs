//! The [`Device`]: our side of the fabric, and the per-peer session state machine.
//!
//! ## Peer state machine
//!
//! ```text
//!            send() / timer            response consumed
//!   Idle ───────────────────▶ InitiationSent ──────────────────▶ Established (current keypair)
//!    ▲   retransmit every REKEY_TIMEOUT+jitter │ give up after REKEY_ATTEMPT_TIME (queue dropped)
//!    └─────────────────────────────────────────┘
//!   Initiation consumed (we are responder): new keypair goes to `next`; it becomes `current`
//!   (old current → `previous`) when the first transport packet under it arrives.
//! ```
//!
//! Timers (WireGuard's values, see [`timers`]): rekey after `REKEY_AFTER_TIME` (120 s) or
//! `REKEY_AFTER_MESSAGES` sent by the initiator of the session, and by the initiator on receive
//! after `REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT` (165 s); keys unusable after
//! `REJECT_AFTER_TIME` (180 s) or `REJECT_AFTER_MESSAGES`; everything erased after 3 ×
//! `REJECT_AFTER_TIME` without a new handshake; a keepalive `KEEPALIVE_TIMEOUT` (10 s) after
//! receiving data if nothing was sent; a new handshake if data was sent and nothing received
//! for `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT`; optional persistent keepalive.
//!
//! All methods take the current [`Instant`]; call [`Device::tick`] regularly (every 100–250 ms
//! is plenty; [`Device::next_deadline`] says when it is next needed).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::net::{Ipv6Addr, SocketAddr};
use core::time::Duration;
use rand_core::CryptoRngCore;

use crate::cookie::{self, COOKIE_REFRESH_TIME};
use crate::crypto::{CipherImpl, TransportCipher};
use crate::identity::{Identity, Prefix64};
use crate::messages::{
    self, CookieReply, Initiation, Message, Response, Transport, INITIATION_MAC1_OFFSET,
    RESPONSE_MAC1_OFFSET, TRANSPORT_HEADER_LEN,
};
use crate::noise::{self, InitiatorState, NoiseError};
use crate::ratelimit::RateLimiter;
use crate::replay::{ReplayError, ReplayWindow, REJECT_AFTER_MESSAGES};
use crate::routing::{IpPrefix, RoutingTable};
use crate::tai64n::Tai64n;
use crate::time::Instant;

mod config;
mod counters;
mod output;
mod peer;
mod receive;
mod send;
pub mod timers;

pub use config::{AddPeerError, PeerConfig};
pub use counters::{Counters, PeerCounters};
pub use output::{DropReason, Event, Output, Received, SendError, Transmit};
use peer::{Keypair, Peer, Pending, Slot};
use timers::*;

/// Packets queued per peer while a handshake is in progress.
pub const MAX_STAGED_PACKETS: usize = 128;
/// Largest inner packet accepted by [`Device::send`].
pub const MAX_PACKET: usize = 65535;

/// Identifies a peer of a [`Device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

/// Our side of the fabric. See the [module docs](self).
pub struct Device {
    identity: Identity,
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    /// Boxed: a `Peer` holds its keypairs and replay windows inline (kilobytes), and B-tree
    /// nodes of inline peers are built on the stack, which overflows small kernel stacks.
    peers: BTreeMap<PeerId, Box<Peer>>,
    by_key: BTreeMap<[u8; 32], PeerId>,
    indices: BTreeMap<u32, PeerId>,
    routes: RoutingTable,
    rng: Box<dyn CryptoRngCore + Send>,
    next_peer_id: u32,
    cookie_secret: [u8; 32],
    cookie_secret_born: Option<Instant>,
    forced_load: bool,
    load_threshold: u32,
    load_window_start: Instant,
    load_count: u32,
    under_load_until: Option<Instant>,
    ratelimiter: RateLimiter,
    unix_at_origin: Duration,
    counters: Counters,
    /// The ChaCha20-Poly1305 code of keypairs made from now on.
    cipher_impl: CipherImpl,
}

impl Device {
    /// A device with our identity and the caller's RNG (used for ephemeral keys, indices,
    /// cookie secrets, nonces and jitter).
    pub fn new(identity: Identity, rng: Box<dyn CryptoRngCore + Send>) -> Self {
        let public = identity.public_key();
        Device {
            mac1_key: cookie::mac1_key(&public),
            cookie_key: cookie::cookie_key(&public),
            identity,
            peers: BTreeMap::new(),
            by_key: BTreeMap::new(),
            indices: BTreeMap::new(),
            routes: RoutingTable::new(),
            rng,
            next_peer_id: 0,
            cookie_secret: [0; 32],
            cookie_secret_born: None,
            forced_load: false,
            load_threshold: 256,
            load_window_start: Instant::ZERO,
            load_count: 0,
            under_load_until: None,
            ratelimiter: RateLimiter::default(),
            unix_at_origin: Duration::ZERO,
            counters: Counters::default(),
            cipher_impl: CipherImpl::default(),
        }
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// Device counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Counters of one peer.
    pub fn peer_counters(&self, peer: PeerId) -> Option<PeerCounters> {
        self.peers.get(&peer).map(|p| p.counters)
    }
    /// The cryptokey routing table.
    pub fn routes(&self) -> &RoutingTable {
        &self.routes
    }
    /// Wall-clock time (since the UNIX epoch) at `Instant::ZERO`; used for TAI64N timestamps.
    pub fn set_unix_time_at_origin(&mut self, t: Duration) {
        self.unix_at_origin = t;
    }
    /// Which ChaCha20-Poly1305 code seals and opens transport data of keypairs made from now
    /// on (existing keypairs keep theirs; both codes are wire-identical). Pick it with
    /// `crypto::measure_cipher_impls`.
    pub fn set_cipher_impl(&mut self, imp: CipherImpl) {
        self.cipher_impl = imp;
    }
    /// The code new keypairs get.
    pub fn cipher_impl(&self) -> CipherImpl {
        self.cipher_impl
    }
    /// Force (or stop forcing) the under-load state that makes handshakes require mac2.
    pub fn set_under_load(&mut self, on: bool) {
        self.forced_load = on;
    }
    /// Handshake messages per second above which the device considers itself under load.
    pub fn set_load_threshold(&mut self, per_second: u32) {
        self.load_threshold = per_second;
    }

    /// Track at most `n` handshake sources in the per-source rate limit (default
    /// [`crate::ratelimit::MAX_SOURCES`]); resets the limiter.
    pub fn set_rate_limit_sources(&mut self, n: usize) {
        self.ratelimiter = RateLimiter::with_capacity(n);
    }

    /// Add a peer; its prefixes enter the routing table (moving them from other peers).
    ///
    /// Refused (nothing changes): a low-order public key (the x25519 shared secret with it is
    /// all zero, so every session key would be predictable), a key already configured, our own
    /// key, and a key whose derived /64 equals ours or another peer's (the two would fight over
    /// the prefix in the routing table).
    pub fn add_peer(&mut self, cfg: PeerConfig) -> Result<PeerId, AddPeerError> {
        if cfg.public_key == self.identity.public_key() {
            return Err(AddPeerError::OwnKey);
        }
        let Ok(ss) = noise::static_static(&self.identity, &cfg.public_key) else {
            return Err(AddPeerError::LowOrderKey);
        };
        self.check_new_peer(&cfg.public_key, &ss, Prefix64::from_public_key(&cfg.public_key))?;
        let id = PeerId(self.next_peer_id);
        self.next_peer_id = self.next_peer_id.wrapping_add(1);
        if cfg.owns_derived_prefix {
            let p = Prefix64::from_public_key(&cfg.public_key);
            self.routes.insert(IpPrefix::v6(p.network(), 64), id);
        }
        for p in &cfg.allowed_prefixes {
            self.routes.insert(*p, id);
        }
        self.peers.insert(
            id,
            Box::new(Peer {
                public: cfg.public_key,
                psk: cfg.preshared_key,
                static_static: ss,
                mac1_key: cookie::mac1_key(&cfg.public_key),
                cookie_key: cookie::cookie_key(&cfg.public_key),
                endpoint: cfg.endpoint,
                persistent_keepalive: cfg.persistent_keepalive,
                pending: None,
                current: None,
                previous: None,
                next: None,
                latest_timestamp: Tai64n::default(),
                last_initiation_consumed: None,
                cookie: None,
                last_mac1: None,
                attempt_started: None,
                retransmit_at: None,
                last_initiation_sent: None,
                keepalive_at: None,
                new_handshake_at: None,
                last_sent: None,
                last_received: None,
                last_handshake: None,
                staged: VecDeque::new(),
                counters: PeerCounters::default(),
            }),
        );
        self.by_key.insert(cfg.public_key, id);
        Ok(id)
    }

    /// The duplicate and prefix checks of [`Device::add_peer`]. A key is a duplicate when its
    /// bytes are known or when it names the same point as a known key (x25519 ignores the top
    /// bit, so two encodings share one shared secret).
    fn check_new_peer(&self, key: &[u8; 32], ss: &[u8; 32], derived: Prefix64) -> Result<(), AddPeerError> {
        if self.by_key.contains_key(key) || self.peers.values().any(|p| crate::crypto::ct_eq(&p.static_static, ss)) {
            return Err(AddPeerError::Duplicate);
        }
        if derived == self.identity.prefix() || self.peers.values().any(|p| Prefix64::from_public_key(&p.public) == derived) {
            return Err(AddPeerError::PrefixCollision);
        }
        Ok(())
    }

    /// Give an existing peer one more prefix (as a WireGuard allowed-ip: packets to it go to
    /// the peer, and the peer's packets from it are accepted). False: no such peer.
    pub fn add_prefix(&mut self, id: PeerId, p: IpPrefix) -> bool {
        if !self.peers.contains_key(&id) {
            return false;
        }
        self.routes.insert(p, id);
        true
    }

    /// Remove a peer, its prefixes and all its session state.
    pub fn remove_peer(&mut self, id: PeerId) -> bool {
        match self.peers.remove(&id) {
            Some(p) => {
                self.by_key.remove(&p.public);
                self.indices.retain(|_, v| *v != id);
                self.routes.remove_peer(id);
                true
            }
            None => false,
        }
    }

    /// The peer with this public key.
    pub fn peer_by_key(&self, public: &[u8; 32]) -> Option<PeerId> {
        self.by_key.get(public).copied()
    }
    /// Set a peer's endpoint.
    pub fn set_endpoint(&mut self, id: PeerId, ep: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.endpoint = Some(ep);
        }
    }
    /// A peer's endpoint.
    pub fn endpoint(&self, id: PeerId) -> Option<SocketAddr> {
        self.peers.get(&id).and_then(|p| p.endpoint)
    }
    /// Does the peer have a usable current keypair?
    pub fn has_session(&self, id: PeerId, now: Instant) -> bool {
        self.peers
            .get(&id)
            .and_then(|p| p.current.as_ref())
            .is_some_and(|k| k.usable_for_send(now))
    }
    /// The ChaCha20-Poly1305 code of the peer's current keypair (`None` without one).
    pub fn session_cipher_impl(&self, id: PeerId) -> Option<CipherImpl> {
        self.peers.get(&id).and_then(|p| p.current.as_ref()).map(|k| k.send.implementation())
    }
    /// When the peer's last handshake completed.
    pub fn last_handshake(&self, id: PeerId) -> Option<Instant> {
        self.peers.get(&id).and_then(|p| p.last_handshake)
    }
    /// Number of packets queued for the peer awaiting a session.
    pub fn staged_len(&self, id: PeerId) -> usize {
        self.peers.get(&id).map_or(0, |p| p.staged.len())
    }

    fn drop_pkt(&mut self, out: &mut Output, peer: Option<PeerId>, reason: DropReason) {
        self.counters.count_drop(reason);
        if let Some(p) = peer.and_then(|id| self.peers.get_mut(&id)) {
            p.counters.dropped += 1;
        }
        out.events.push(Event::Dropped { peer, reason });
    }

    fn new_index(&mut self, peer: PeerId) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if let alloc::collections::btree_map::Entry::Vacant(e) = self.indices.entry(i) {
                e.insert(peer);
                return i;
            }
        }
    }

    fn random32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.rng.fill_bytes(&mut b);
        b
    }

    fn release_keypair(&mut self, kp: Option<Keypair>) {
        if let Some(k) = kp {
            self.indices.remove(&k.local_index);
        }
    }
}

/// Does `p` claim to be IPv4 (version nibble 4)? Such packets are dropped, never routed.
pub fn is_ipv4(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b >> 4 == 4)
}

/// Source, destination and total length of an IPv6 packet; `None` if malformed or not IPv6.
pub fn inner_header(p: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr, usize)> {
    if p.first()? >> 4 != 6 {
        return None;
    }
    let hdr = p.get(..40)?;
    let plen = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&hdr[8..24]);
    d.copy_from_slice(&hdr[24..40]);
    Some((Ipv6Addr::from(s), Ipv6Addr::from(d), 40 + plen))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Zero;
    impl rand_core::RngCore for Zero {
        fn next_u32(&mut self) -> u32 { 7 }
        fn next_u64(&mut self) -> u64 { 7 }
        fn fill_bytes(&mut self, d: &mut [u8]) { d.fill(7) }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> { d.fill(7); Ok(()) }
    }
    impl rand_core::CryptoRng for Zero {}

    /// Two real keys with colliding 56-bit prefixes take ~2^28 key generations to find, so the
    /// collision check is exercised directly with another peer's prefix.
    #[test]
    fn prefix_collision_is_refused() {
        let me = Identity::from_secret_bytes([1; 32]);
        let mut d = Device::new(me.clone(), Box::new(Zero));
        let a = Identity::from_secret_bytes([2; 32]).public_key();
        let b = Identity::from_secret_bytes([3; 32]).public_key();
        d.add_peer(PeerConfig::new(a)).unwrap();
        let ss_b = noise::static_static(&me, &b).unwrap();
        assert_eq!(d.check_new_peer(&b, &ss_b, Prefix64::from_public_key(&b)), Ok(()));
        assert_eq!(d.check_new_peer(&b, &ss_b, Prefix64::from_public_key(&a)), Err(AddPeerError::PrefixCollision));
        assert_eq!(d.check_new_peer(&b, &ss_b, me.prefix()), Err(AddPeerError::PrefixCollision));
    }

    /// The same point in its other encoding (bit 255 set) is the same peer.
    #[test]
    fn alias_encoding_is_a_duplicate() {
        let me = Identity::from_secret_bytes([1; 32]);
        let mut d = Device::new(me, Box::new(Zero));
        let a = Identity::from_secret_bytes([2; 32]).public_key();
        d.add_peer(PeerConfig::new(a)).unwrap();
        let mut alias = a;
        alias[31] ^= 0x80;
        assert_eq!(d.add_peer(PeerConfig::new(alias)), Err(AddPeerError::Duplicate));
    }
}

