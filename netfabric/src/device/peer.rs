//! A peer's session state: its keypairs (current, previous, next), the handshake in progress,
//! its timers' marks and its staged packets.
use super::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Slot {
    Current,
    Previous,
    Next,
}

pub(super) struct Keypair {
    pub(super) send: TransportCipher,
    pub(super) recv: TransportCipher,
    pub(super) send_counter: u64,
    pub(super) replay: ReplayWindow,
    pub(super) local_index: u32,
    pub(super) remote_index: u32,
    pub(super) created: Instant,
    pub(super) initiator: bool,
}

impl Keypair {
    pub(super) fn usable_for_send(&self, now: Instant) -> bool {
        now.saturating_since(self.created) < REJECT_AFTER_TIME
            && self.send_counter < REJECT_AFTER_MESSAGES
    }
}

pub(super) struct Pending {
    pub(super) state: InitiatorState,
}

pub(super) struct Peer {
    pub(super) public: [u8; 32],
    pub(super) psk: [u8; 32],
    pub(super) static_static: [u8; 32],
    pub(super) mac1_key: [u8; 32],
    pub(super) cookie_key: [u8; 32],
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) persistent_keepalive: Option<Duration>,
    pub(super) pending: Option<Pending>,
    pub(super) current: Option<Keypair>,
    pub(super) previous: Option<Keypair>,
    pub(super) next: Option<Keypair>,
    pub(super) latest_timestamp: Tai64n,
    pub(super) last_initiation_consumed: Option<Instant>,
    pub(super) cookie: Option<([u8; 16], Instant)>,
    pub(super) last_mac1: Option<[u8; 16]>,
    pub(super) attempt_started: Option<Instant>,
    pub(super) retransmit_at: Option<Instant>,
    pub(super) last_initiation_sent: Option<Instant>,
    pub(super) keepalive_at: Option<Instant>,
    pub(super) new_handshake_at: Option<Instant>,
    pub(super) last_sent: Option<Instant>,
    pub(super) last_received: Option<Instant>,
    pub(super) last_handshake: Option<Instant>,
    pub(super) staged: VecDeque<Vec<u8>>,
    pub(super) counters: PeerCounters,
}

impl Peer {
    pub(super) fn keypair(&mut self, slot: Slot) -> Option<&mut Keypair> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Next => self.next.as_mut(),
        }
    }
    pub(super) fn slot_of(&self, index: u32) -> Option<Slot> {
        if self.current.as_ref().is_some_and(|k| k.local_index == index) {
            Some(Slot::Current)
        } else if self.previous.as_ref().is_some_and(|k| k.local_index == index) {
            Some(Slot::Previous)
        } else if self.next.as_ref().is_some_and(|k| k.local_index == index) {
            Some(Slot::Next)
        } else {
            None
        }
    }
    pub(super) fn valid_cookie(&self, now: Instant) -> Option<[u8; 16]> {
        match self.cookie {
            Some((c, t)) if now.saturating_since(t) < COOKIE_REFRESH_TIME => Some(c),
            _ => None,
        }
    }
}
