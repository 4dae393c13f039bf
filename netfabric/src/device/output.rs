//! What the [`Device`](super::Device) hands back: datagrams to send, packets received, events
//! (drops and their reasons), and why a send was refused.
use super::*;

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer it is for, if known.
    pub peer: Option<PeerId>,
    /// UDP destination.
    pub dst: SocketAddr,
    /// UDP payload.
    pub data: Vec<u8>,
}

/// A decrypted, source-validated inner IP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The peer it came from.
    pub peer: PeerId,
    /// The IP packet (padding removed).
    pub packet: Vec<u8>,
}

/// Why a packet was dropped. Every drop is counted in [`Counters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed WireGuard message (truncated, bad length, unknown type, reserved bits).
    Malformed,
    /// Handshake message whose mac1 is not for us (also: peers that don't know our key).
    InvalidMac1,
    /// Under load and mac2 missing or wrong: answered with a cookie reply instead.
    UnderLoad,
    /// Under load, valid mac2, but the source exceeded its handshake rate ([`crate::ratelimit`]).
    RateLimited,
    /// Initiation from a static key that is not an allowed peer.
    UnknownPeer,
    /// Handshake message that failed to decrypt/authenticate.
    HandshakeFailed,
    /// Initiation whose timestamp is not newer than the last one (replayed initiation).
    InitiationReplay,
    /// Initiations from one peer arriving faster than allowed.
    InitiationFlood,
    /// Receiver index matches no session or handshake.
    UnknownIndex,
    /// Transport counter already seen.
    Replay,
    /// Transport counter older than the replay window.
    TooOld,
    /// Transport data failed authentication (forged or wrongly keyed).
    Decrypt,
    /// Keypair expired (`REJECT_AFTER_TIME` / `REJECT_AFTER_MESSAGES`).
    KeyExpired,
    /// Inner packet source not owned by the peer it came from.
    SourceNotAllowed,
    /// Inner packet is not a valid IPv6 packet.
    BadInnerPacket,
    /// Inner packet is IPv4: the fabric is IPv6-only inside, so it is never routed.
    InnerIpv4,
    /// Cookie reply that does not decrypt or answers nothing we sent.
    InvalidCookie,
    /// Queued packet dropped (queue full or handshake gave up).
    QueueOverflow,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// We sent a handshake initiation.
    HandshakeInitiated(PeerId),
    /// A session is established (as initiator on response, as responder on confirmation).
    HandshakeCompleted {
        /// The peer.
        peer: PeerId,
        /// Whether we initiated.
        initiator: bool,
    },
    /// We answered an initiation.
    HandshakeResponded(PeerId),
    /// Handshake attempts stopped after `REKEY_ATTEMPT_TIME`; queued packets dropped.
    HandshakeGaveUp(PeerId),
    /// A keypair reached `REJECT_AFTER_TIME` and was erased.
    KeysExpired(PeerId),
    /// All session state of the peer was erased (3 × `REJECT_AFTER_TIME` without handshake).
    SessionZeroed(PeerId),
    /// We sent a keepalive.
    KeepaliveSent(PeerId),
    /// We answered a handshake with a cookie reply (under load).
    CookieReplySent,
    /// We received and stored a cookie from the peer.
    CookieReceived(PeerId),
    /// Something must be sent to the peer but its endpoint is unknown.
    NoEndpoint(PeerId),
    /// A packet was dropped.
    Dropped {
        /// The peer, when known.
        peer: Option<PeerId>,
        /// Why.
        reason: DropReason,
    },
}

/// What an entry point produced.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Datagrams to send.
    pub transmits: Vec<Transmit>,
    /// Decrypted packets for the local stack.
    pub packets: Vec<Received>,
    /// Events.
    pub events: Vec<Event>,
}

impl Output {
    /// Append another output.
    pub fn extend(&mut self, other: Output) {
        self.transmits.extend(other.transmits);
        self.packets.extend(other.packets);
        self.events.extend(other.events);
    }
    /// True if nothing is to be sent, delivered or reported.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.packets.is_empty() && self.events.is_empty()
    }
}

/// Why [`Device::send`] refused a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Not an IPv6 packet.
    InvalidPacket,
    /// An IPv4 packet: the fabric carries only IPv6 (counted in `send_ipv4`).
    Ipv4,
    /// Larger than [`MAX_PACKET`].
    TooLarge,
    /// No peer owns the destination.
    NoRoute,
}
