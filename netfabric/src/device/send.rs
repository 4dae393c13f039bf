//! Sending: cryptokey routing of an IP packet to its peer, encryption, staging while a
//! handshake is in progress, and starting one.
use super::*;

impl Device {
    /// Tunnel an IP packet: pick the peer by destination (cryptokey routing), encrypt and
    /// emit it, or queue it and start a handshake if there is no usable session.
    pub fn send(&mut self, packet: &[u8], now: Instant) -> Result<Output, SendError> {
        let mut out = Output::default();
        if packet.len() > MAX_PACKET {
            return Err(SendError::TooLarge);
        }
        if is_ipv4(packet) {
            self.counters.send_ipv4 += 1;
            return Err(SendError::Ipv4);
        }
        let (_, dst, _) = inner_header(packet).ok_or(SendError::InvalidPacket)?;
        let Some(pid) = self.routes.lookup(&dst) else {
            self.counters.send_no_route += 1;
            return Err(SendError::NoRoute);
        };
        self.send_to_peer(pid, packet, now, &mut out);
        Ok(out)
    }

    /// Tunnel an IP packet to a given peer (no routing lookup and no IPv4 check: for keepalives,
    /// handshakes and tests that play a hostile peer; the node routes through [`Device::send`]).
    pub fn send_to(&mut self, peer: PeerId, packet: &[u8], now: Instant) -> Output {
        let mut out = Output::default();
        self.send_to_peer(peer, packet, now, &mut out);
        out
    }

    pub(super) fn send_to_peer(&mut self, pid: PeerId, packet: &[u8], now: Instant, out: &mut Output) {
        let Some(p) = self.peers.get_mut(&pid) else { return };
        let usable = p.current.as_ref().is_some_and(|k| k.usable_for_send(now));
        if usable && p.endpoint.is_some() {
            self.encrypt_and_send(pid, packet, now, out);
            // Rekey rules for the initiator of the session.
            let Some(p) = self.peers.get(&pid) else { return };
            if let Some(k) = &p.current {
                if k.initiator
                    && (now.saturating_since(k.created) >= REKEY_AFTER_TIME
                        || k.send_counter >= REKEY_AFTER_MESSAGES)
                {
                    self.initiate(pid, now, false, out);
                }
            }
        } else {
            if p.staged.len() >= MAX_STAGED_PACKETS {
                p.staged.pop_front();
                self.drop_pkt(out, Some(pid), DropReason::QueueOverflow);
            }
            if let Some(p) = self.peers.get_mut(&pid) {
                p.staged.push_back(packet.to_vec());
            }
            self.initiate(pid, now, false, out);
        }
    }

    /// Encrypt with the current keypair and emit. `payload` empty = keepalive.
    pub(super) fn encrypt_and_send(&mut self, pid: PeerId, payload: &[u8], now: Instant, out: &mut Output) -> bool {
        let Some(p) = self.peers.get_mut(&pid) else { return false };
        let Some(dst) = p.endpoint else {
            out.events.push(Event::NoEndpoint(pid));
            return false;
        };
        let Some(k) = p.current.as_mut() else { return false };
        if !k.usable_for_send(now) {
            return false;
        }
        let counter = k.send_counter;
        k.send_counter += 1;
        let padded = payload.len().div_ceil(16) * 16;
        let mut buf = vec![0u8; TRANSPORT_HEADER_LEN + padded + 16];
        buf[..TRANSPORT_HEADER_LEN].copy_from_slice(&Transport::header(k.remote_index, counter));
        let body_end = TRANSPORT_HEADER_LEN + padded;
        buf[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + payload.len()].copy_from_slice(payload);
        let tag = k.send.seal_in_place(counter, &mut buf[TRANSPORT_HEADER_LEN..body_end]);
        buf[body_end..].copy_from_slice(&tag);
        let n = buf.len() as u64;
        p.last_sent = Some(now);
        p.keepalive_at = None;
        p.counters.tx_bytes += n;
        self.counters.tx_bytes += n;
        if payload.is_empty() {
            self.counters.tx_keepalives += 1;
        } else {
            p.counters.tx_packets += 1;
            self.counters.tx_data_packets += 1;
            if p.new_handshake_at.is_none() {
                p.new_handshake_at = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
            }
        }
        out.transmits.push(Transmit { peer: Some(pid), dst, data: buf });
        true
    }

    pub(super) fn send_keepalive(&mut self, pid: PeerId, now: Instant, out: &mut Output) {
        if self.encrypt_and_send(pid, &[], now, out) {
            out.events.push(Event::KeepaliveSent(pid));
        }
    }

    pub(super) fn flush_staged(&mut self, pid: PeerId, now: Instant, out: &mut Output) -> usize {
        let staged = match self.peers.get_mut(&pid) {
            Some(p) => core::mem::take(&mut p.staged),
            None => return 0,
        };
        let n = staged.len();
        for pkt in staged {
            self.encrypt_and_send(pid, &pkt, now, out);
        }
        n
    }

    /// Start (or, with `retry`, repeat) a handshake with the peer.
    pub(super) fn initiate(&mut self, pid: PeerId, now: Instant, retry: bool, out: &mut Output) {
        let Some(p) = self.peers.get_mut(&pid) else { return };
        if !retry {
            if p.pending.is_some() {
                return; // already in progress; the retransmit timer drives it
            }
            if p.last_initiation_sent.is_some_and(|t| now.saturating_since(t) < REKEY_TIMEOUT) {
                return;
            }
            if p.attempt_started.is_none() {
                p.attempt_started = Some(now);
            }
        }
        let Some(dst) = p.endpoint else {
            // Keep the attempt alive so a learned endpoint or a timer can complete it.
            p.retransmit_at = Some(now + REKEY_TIMEOUT);
            if p.attempt_started.is_none() {
                p.attempt_started = Some(now);
            }
            out.events.push(Event::NoEndpoint(pid));
            return;
        };
        let (public, ss, mac1_key, cookie) =
            (p.public, p.static_static, p.mac1_key, p.valid_cookie(now));
        if let Some(old) = p.pending.take() {
            self.indices.remove(&old.state.sender);
        }
        let eph = self.random32();
        let index = self.new_index(pid);
        let ts = Tai64n::from_unix(self.unix_at_origin + Duration::from_nanos(now.as_nanos()));
        let (state, msg) = match noise::create_initiation(&self.identity, &public, &ss, eph, index, ts) {
            Ok(x) => x,
            Err(_) => {
                self.indices.remove(&index);
                return;
            }
        };
        let mut bytes = msg.encode();
        let m1 = cookie::add_macs(&mut bytes, INITIATION_MAC1_OFFSET, &mac1_key, cookie.as_ref());
        let jitter = self.rng.next_u64() % (REKEY_TIMEOUT_JITTER_MS + 1);
        let Some(p) = self.peers.get_mut(&pid) else { return };
        p.pending = Some(Pending { state });
        p.last_mac1 = Some(m1);
        p.last_initiation_sent = Some(now);
        p.last_sent = Some(now);
        p.keepalive_at = None;
        p.retransmit_at = Some(now + REKEY_TIMEOUT + Duration::from_millis(jitter));
        self.counters.initiations_sent += 1;
        out.transmits.push(Transmit { peer: Some(pid), dst, data: bytes.to_vec() });
        out.events.push(Event::HandshakeInitiated(pid));
    }
}
