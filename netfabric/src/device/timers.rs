//! WireGuard's protocol timer and counter constants, and the timer-driven work of the
//! [`Device`](super::Device): [`tick`](super::Device::tick) and
//! [`next_deadline`](super::Device::next_deadline).

use core::time::Duration;

/// Initiator rekeys after this many messages sent under one keypair.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted under a keypair past this counter.
pub const REJECT_AFTER_MESSAGES: u64 = crate::replay::REJECT_AFTER_MESSAGES;
/// Initiator rekeys when its keypair is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Keypairs are unusable after this age.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Handshake attempts stop after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Handshake retransmission interval (plus up to `REKEY_TIMEOUT_JITTER`).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum random jitter added to each retransmission.
pub const REKEY_TIMEOUT_JITTER_MS: u64 = 333;
/// Passive keepalive delay.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Minimum interval between two initiations consumed from one peer (flood protection).
pub const INITIATION_MIN_INTERVAL: Duration = Duration::from_millis(20);

use super::*;

impl Device {
    /// Run timers: retransmissions, keepalives, rekeys, expiry.
    pub fn tick(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for pid in ids {
            self.tick_peer(pid, now, &mut out);
        }
        out
    }

    pub(super) fn tick_peer(&mut self, pid: PeerId, now: Instant, out: &mut Output) {
        let Some(p) = self.peers.get_mut(&pid) else { return };
        // Erase everything long after the last handshake.
        if p.last_handshake.is_some_and(|t| now.saturating_since(t) >= REJECT_AFTER_TIME * 3) {
            let olds = [p.current.take(), p.previous.take(), p.next.take()];
            let pend = p.pending.take();
            p.last_handshake = None;
            p.attempt_started = None;
            p.retransmit_at = None;
            p.keepalive_at = None;
            p.new_handshake_at = None;
            for k in olds {
                self.release_keypair(k);
            }
            if let Some(pd) = pend {
                self.indices.remove(&pd.state.sender);
            }
            out.events.push(Event::SessionZeroed(pid));
            return;
        }
        let Some(p) = self.peers.get_mut(&pid) else { return };
        // Expire keypairs.
        let mut expired = Vec::new();
        for slot in [Slot::Current, Slot::Previous, Slot::Next] {
            let old = p.keypair(slot).is_some_and(|k| now.saturating_since(k.created) >= REJECT_AFTER_TIME);
            if old {
                let k = match slot {
                    Slot::Current => p.current.take(),
                    Slot::Previous => p.previous.take(),
                    Slot::Next => p.next.take(),
                };
                expired.push(k);
            }
        }
        let any_expired = !expired.is_empty();
        for k in expired {
            self.release_keypair(k);
        }
        if any_expired {
            out.events.push(Event::KeysExpired(pid));
        }
        let Some(p) = self.peers.get_mut(&pid) else { return };
        // Handshake retransmission / give up.
        if p.retransmit_at.is_some_and(|t| now >= t) {
            let gave_up = p.attempt_started.is_some_and(|t| now.saturating_since(t) >= REKEY_ATTEMPT_TIME);
            if gave_up {
                let pend = p.pending.take();
                let dropped = p.staged.len();
                p.staged.clear();
                p.attempt_started = None;
                p.retransmit_at = None;
                if let Some(pd) = pend {
                    self.indices.remove(&pd.state.sender);
                }
                for _ in 0..dropped {
                    self.counters.count_drop(DropReason::QueueOverflow);
                }
                out.events.push(Event::HandshakeGaveUp(pid));
            } else {
                self.initiate(pid, now, true, out);
            }
        }
        let Some(p) = self.peers.get_mut(&pid) else { return };
        // Passive keepalive.
        if p.keepalive_at.is_some_and(|t| now >= t) {
            p.keepalive_at = None;
            self.send_keepalive(pid, now, out);
        }
        let Some(p) = self.peers.get_mut(&pid) else { return };
        // Data sent, nothing heard back: new handshake.
        if p.new_handshake_at.is_some_and(|t| now >= t) {
            p.new_handshake_at = None;
            self.initiate(pid, now, false, out);
        }
        let Some(p) = self.peers.get_mut(&pid) else { return };
        // Persistent keepalive.
        if let Some(iv) = p.persistent_keepalive {
            if p.last_sent.is_none_or(|t| now.saturating_since(t) >= iv) {
                let has = p.current.as_ref().is_some_and(|k| k.usable_for_send(now));
                if has {
                    self.send_keepalive(pid, now, out);
                } else {
                    self.initiate(pid, now, false, out);
                }
            }
        }
    }

    /// The earliest instant at which [`Device::tick`] has work to do, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        for p in self.peers.values() {
            consider(p.retransmit_at);
            consider(p.keepalive_at);
            consider(p.new_handshake_at);
            for k in [&p.current, &p.previous, &p.next].into_iter().flatten() {
                consider(Some(k.created + REJECT_AFTER_TIME));
            }
            if let (Some(iv), Some(t)) = (p.persistent_keepalive, p.last_sent) {
                consider(Some(t + iv));
            }
        }
        best
    }
}
