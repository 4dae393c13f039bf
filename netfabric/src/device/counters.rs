//! Device-wide and per-peer counters.
use super::*;

/// Device-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Counters {
    pub rx_datagrams: u64,
    pub rx_data_packets: u64,
    pub rx_keepalives: u64,
    pub rx_bytes: u64,
    pub tx_data_packets: u64,
    pub tx_keepalives: u64,
    pub tx_bytes: u64,
    pub initiations_sent: u64,
    pub initiations_received: u64,
    pub responses_sent: u64,
    pub responses_received: u64,
    pub cookie_replies_sent: u64,
    pub cookie_replies_received: u64,
    pub handshakes_completed: u64,
    /// Handshake messages that reached the Diffie-Hellman computations (the work the rate
    /// limit bounds).
    pub handshakes_processed: u64,
    pub send_no_route: u64,
    /// IPv4 packets handed to [`Device::send`]: refused, never routed.
    pub send_ipv4: u64,
    pub dropped_malformed: u64,
    pub dropped_invalid_mac1: u64,
    pub dropped_under_load: u64,
    pub dropped_rate_limited: u64,
    pub dropped_unknown_peer: u64,
    pub dropped_handshake_failed: u64,
    pub dropped_initiation_replay: u64,
    pub dropped_initiation_flood: u64,
    pub dropped_unknown_index: u64,
    pub dropped_replay: u64,
    pub dropped_too_old: u64,
    pub dropped_decrypt: u64,
    pub dropped_key_expired: u64,
    pub dropped_source_not_allowed: u64,
    pub dropped_bad_inner_packet: u64,
    pub dropped_inner_ipv4: u64,
    pub dropped_invalid_cookie: u64,
    pub dropped_queue_overflow: u64,
}

impl Counters {
    pub(super) fn count_drop(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Malformed => &mut self.dropped_malformed,
            DropReason::InvalidMac1 => &mut self.dropped_invalid_mac1,
            DropReason::UnderLoad => &mut self.dropped_under_load,
            DropReason::RateLimited => &mut self.dropped_rate_limited,
            DropReason::UnknownPeer => &mut self.dropped_unknown_peer,
            DropReason::HandshakeFailed => &mut self.dropped_handshake_failed,
            DropReason::InitiationReplay => &mut self.dropped_initiation_replay,
            DropReason::InitiationFlood => &mut self.dropped_initiation_flood,
            DropReason::UnknownIndex => &mut self.dropped_unknown_index,
            DropReason::Replay => &mut self.dropped_replay,
            DropReason::TooOld => &mut self.dropped_too_old,
            DropReason::Decrypt => &mut self.dropped_decrypt,
            DropReason::KeyExpired => &mut self.dropped_key_expired,
            DropReason::SourceNotAllowed => &mut self.dropped_source_not_allowed,
            DropReason::BadInnerPacket => &mut self.dropped_bad_inner_packet,
            DropReason::InnerIpv4 => &mut self.dropped_inner_ipv4,
            DropReason::InvalidCookie => &mut self.dropped_invalid_cookie,
            DropReason::QueueOverflow => &mut self.dropped_queue_overflow,
        };
        *c += 1;
    }
    /// Sum of all drop counters.
    pub fn total_dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_invalid_mac1
            + self.dropped_under_load
            + self.dropped_rate_limited
            + self.dropped_unknown_peer
            + self.dropped_handshake_failed
            + self.dropped_initiation_replay
            + self.dropped_initiation_flood
            + self.dropped_unknown_index
            + self.dropped_replay
            + self.dropped_too_old
            + self.dropped_decrypt
            + self.dropped_key_expired
            + self.dropped_source_not_allowed
            + self.dropped_bad_inner_packet
            + self.dropped_inner_ipv4
            + self.dropped_invalid_cookie
            + self.dropped_queue_overflow
    }
}

/// Per-peer counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct PeerCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub handshakes: u64,
    pub dropped: u64,
}
