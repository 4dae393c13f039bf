//! Receiving: load detection and cookies, mac checks, and the handshake and transport
//! messages that arrive.
use super::*;

impl Device {
    pub(super) fn under_load(&mut self, now: Instant) -> bool {
        if now.saturating_since(self.load_window_start) >= Duration::from_secs(1) {
            self.load_window_start = now;
            self.load_count = 0;
        }
        self.load_count = self.load_count.saturating_add(1);
        if self.load_count > self.load_threshold {
            self.under_load_until = Some(now + Duration::from_secs(1));
        }
        self.forced_load || self.under_load_until.is_some_and(|t| now < t)
    }

    pub(super) fn current_cookie_secret(&mut self, now: Instant) -> [u8; 32] {
        let stale = self
            .cookie_secret_born
            .is_none_or(|t| now.saturating_since(t) >= COOKIE_REFRESH_TIME);
        if stale {
            self.cookie_secret = self.random32();
            self.cookie_secret_born = Some(now);
        }
        self.cookie_secret
    }

    /// Check mac1 and, under load, mac2 of a handshake message. `false` = handled (dropped or
    /// answered with a cookie reply).
    pub(super) fn check_macs(&mut self, data: &[u8], mac1_off: usize, sender: u32, src: SocketAddr, now: Instant, out: &mut Output) -> bool {
        if !cookie::check_mac1(data, mac1_off, &self.mac1_key) {
            self.drop_pkt(out, None, DropReason::InvalidMac1);
            return false;
        }
        if !self.under_load(now) {
            return true;
        }
        let secret = self.current_cookie_secret(now);
        let c = cookie::make_cookie(&secret, &src);
        if cookie::check_mac2(data, mac1_off, &c) {
            // The source is proven; now bound the DH work it may cause.
            if self.ratelimiter.allow(src.ip(), now) {
                return true;
            }
            self.drop_pkt(out, None, DropReason::RateLimited);
            return false;
        }
        let mut mac1 = [0u8; 16];
        if let Some(m) = data.get(mac1_off..mac1_off + 16) {
            mac1.copy_from_slice(m);
        }
        let mut nonce = [0u8; 24];
        self.rng.fill_bytes(&mut nonce);
        let reply = cookie::create_reply(&self.cookie_key, &secret, &src, sender, &mac1, nonce);
        out.transmits.push(Transmit { peer: None, dst: src, data: reply.encode().to_vec() });
        self.counters.cookie_replies_sent += 1;
        out.events.push(Event::CookieReplySent);
        self.drop_pkt(out, None, DropReason::UnderLoad);
        false
    }

    /// Process one UDP datagram received from `src`.
    pub fn handle_incoming(&mut self, data: &[u8], src: SocketAddr, now: Instant) -> Output {
        let mut out = Output::default();
        self.counters.rx_datagrams += 1;
        match messages::parse(data) {
            Err(_) => self.drop_pkt(&mut out, None, DropReason::Malformed),
            Ok(Message::Initiation(m)) => self.on_initiation(data, &m, src, now, &mut out),
            Ok(Message::Response(m)) => self.on_response(data, &m, src, now, &mut out),
            Ok(Message::CookieReply(m)) => self.on_cookie_reply(&m, now, &mut out),
            Ok(Message::Transport(m)) => self.on_transport(&m, src, now, &mut out),
        }
        out
    }

    pub(super) fn on_initiation(&mut self, data: &[u8], m: &Initiation, src: SocketAddr, now: Instant, out: &mut Output) {
        self.counters.initiations_received += 1;
        if !self.check_macs(data, INITIATION_MAC1_OFFSET, m.sender, src, now, out) {
            return;
        }
        self.counters.handshakes_processed += 1;
        let by_key = &self.by_key;
        let peers = &self.peers;
        let mut found = None;
        let res = noise::consume_initiation(&self.identity, m, |k| {
            let id = by_key.get(k)?;
            found = Some(*id);
            peers.get(id).map(|p| p.static_static)
        });
        let consumed = match res {
            Ok(c) => c,
            Err(NoiseError::UnknownPeer) => return self.drop_pkt(out, None, DropReason::UnknownPeer),
            Err(_) => return self.drop_pkt(out, found, DropReason::HandshakeFailed),
        };
        let Some(pid) = found else { return };
        let Some(p) = self.peers.get_mut(&pid) else { return };
        if !consumed.timestamp.is_after(&p.latest_timestamp) {
            return self.drop_pkt(out, Some(pid), DropReason::InitiationReplay);
        }
        if p.last_initiation_consumed.is_some_and(|t| now.saturating_since(t) < INITIATION_MIN_INTERVAL) {
            return self.drop_pkt(out, Some(pid), DropReason::InitiationFlood);
        }
        let psk = p.psk;
        let eph = self.random32();
        let index = self.new_index(pid);
        let (resp, keys) = match noise::create_response(&consumed, &psk, eph, index) {
            Ok(x) => x,
            Err(_) => {
                self.indices.remove(&index);
                return self.drop_pkt(out, Some(pid), DropReason::HandshakeFailed);
            }
        };
        let Some(p) = self.peers.get_mut(&pid) else { return };
        p.latest_timestamp = consumed.timestamp;
        p.last_initiation_consumed = Some(now);
        p.endpoint = Some(src);
        p.last_received = Some(now);
        let kp = Keypair {
            send: TransportCipher::with_impl(&keys.send, self.cipher_impl),
            recv: TransportCipher::with_impl(&keys.recv, self.cipher_impl),
            send_counter: 0,
            replay: ReplayWindow::new(),
            local_index: index,
            remote_index: consumed.peer_index,
            created: now,
            initiator: false,
        };
        let old_next = p.next.replace(kp);
        let mut bytes = resp.encode();
        let cookie = p.valid_cookie(now);
        let m1 = cookie::add_macs(&mut bytes, RESPONSE_MAC1_OFFSET, &p.mac1_key, cookie.as_ref());
        p.last_mac1 = Some(m1);
        p.last_sent = Some(now);
        p.counters.handshakes += 1;
        self.release_keypair(old_next);
        self.counters.responses_sent += 1;
        out.transmits.push(Transmit { peer: Some(pid), dst: src, data: bytes.to_vec() });
        out.events.push(Event::HandshakeResponded(pid));
    }

    pub(super) fn on_response(&mut self, data: &[u8], m: &Response, src: SocketAddr, now: Instant, out: &mut Output) {
        self.counters.responses_received += 1;
        if !self.check_macs(data, RESPONSE_MAC1_OFFSET, m.sender, src, now, out) {
            return;
        }
        let Some(&pid) = self.indices.get(&m.receiver) else {
            return self.drop_pkt(out, None, DropReason::UnknownIndex);
        };
        let Some(p) = self.peers.get_mut(&pid) else { return };
        let keys = match &p.pending {
            Some(pend) if pend.state.sender == m.receiver => {
                self.counters.handshakes_processed += 1;
                match noise::consume_response(&pend.state, &self.identity, &p.psk, m) {
                    Ok(k) => k,
                    Err(_) => return self.drop_pkt(out, Some(pid), DropReason::HandshakeFailed),
                }
            }
            _ => return self.drop_pkt(out, Some(pid), DropReason::UnknownIndex),
        };
        p.pending = None;
        let kp = Keypair {
            send: TransportCipher::with_impl(&keys.send, self.cipher_impl),
            recv: TransportCipher::with_impl(&keys.recv, self.cipher_impl),
            send_counter: 0,
            replay: ReplayWindow::new(),
            local_index: m.receiver,
            remote_index: m.sender,
            created: now,
            initiator: true,
        };
        // As WireGuard does: a pending responder keypair (`next`, from a handshake the peer
        // initiated while ours crossed it) is demoted to `previous`, not erased, because the
        // peer may already send on it; the old current is then dropped. Erasing it left both
        // sides of crossed handshakes sending on keypairs the other had discarded.
        let (old_prev, old_other) = match p.next.take() {
            Some(n) => (p.previous.replace(n), p.current.replace(kp)),
            None => {
                let cur = p.current.replace(kp);
                (core::mem::replace(&mut p.previous, cur), None)
            }
        };
        p.endpoint = Some(src);
        p.attempt_started = None;
        p.retransmit_at = None;
        p.new_handshake_at = None;
        p.last_received = Some(now);
        p.last_handshake = Some(now);
        p.counters.handshakes += 1;
        self.release_keypair(old_prev);
        self.release_keypair(old_other);
        self.counters.handshakes_completed += 1;
        out.events.push(Event::HandshakeCompleted { peer: pid, initiator: true });
        // Confirm the session to the responder: queued data, or a keepalive.
        if self.flush_staged(pid, now, out) == 0 {
            self.send_keepalive(pid, now, out);
        }
    }

    pub(super) fn on_cookie_reply(&mut self, m: &CookieReply, now: Instant, out: &mut Output) {
        self.counters.cookie_replies_received += 1;
        let Some(&pid) = self.indices.get(&m.receiver) else {
            return self.drop_pkt(out, None, DropReason::UnknownIndex);
        };
        let Some(p) = self.peers.get_mut(&pid) else { return };
        let Some(last) = p.last_mac1 else {
            return self.drop_pkt(out, Some(pid), DropReason::InvalidCookie);
        };
        match cookie::open_reply(&p.cookie_key, &last, m) {
            Some(c) => {
                p.cookie = Some((c, now));
                out.events.push(Event::CookieReceived(pid));
            }
            None => self.drop_pkt(out, Some(pid), DropReason::InvalidCookie),
        }
    }

    pub(super) fn on_transport(&mut self, m: &Transport<'_>, src: SocketAddr, now: Instant, out: &mut Output) {
        let Some(&pid) = self.indices.get(&m.receiver) else {
            return self.drop_pkt(out, None, DropReason::UnknownIndex);
        };
        let Some(p) = self.peers.get_mut(&pid) else { return };
        let Some(slot) = p.slot_of(m.receiver) else {
            return self.drop_pkt(out, Some(pid), DropReason::UnknownIndex);
        };
        let Some(k) = p.keypair(slot) else { return };
        if now.saturating_since(k.created) >= REJECT_AFTER_TIME {
            return self.drop_pkt(out, Some(pid), DropReason::KeyExpired);
        }
        match k.replay.check(m.counter) {
            Ok(()) => {}
            Err(ReplayError::Duplicate) => return self.drop_pkt(out, Some(pid), DropReason::Replay),
            Err(ReplayError::TooOld) => return self.drop_pkt(out, Some(pid), DropReason::TooOld),
            Err(ReplayError::Exhausted) => return self.drop_pkt(out, Some(pid), DropReason::KeyExpired),
        }
        let Some(split) = m.ciphertext.len().checked_sub(16) else {
            return self.drop_pkt(out, Some(pid), DropReason::Malformed);
        };
        let (ct, tag) = m.ciphertext.split_at(split);
        let mut tagb = [0u8; 16];
        tagb.copy_from_slice(tag);
        let mut plain = ct.to_vec();
        if !k.recv.open_in_place(m.counter, &mut plain, &tagb) {
            return self.drop_pkt(out, Some(pid), DropReason::Decrypt);
        }
        let _ = k.replay.update(m.counter);
        let initiator = k.initiator;
        let created = k.created;
        // Authenticated: roam, reset timers.
        p.endpoint = Some(src);
        p.last_received = Some(now);
        p.new_handshake_at = None;
        let n = (m.ciphertext.len() + TRANSPORT_HEADER_LEN) as u64;
        p.counters.rx_bytes += n;
        self.counters.rx_bytes += n;
        if slot == Slot::Next {
            // The initiator confirmed the session: rotate keypairs.
            let old_prev = p.previous.take();
            p.previous = p.current.take();
            p.current = p.next.take();
            p.last_handshake = Some(now);
            p.attempt_started = None;
            p.retransmit_at = None;
            let old_pending = p.pending.take();
            self.release_keypair(old_prev);
            if let Some(op) = old_pending {
                self.indices.remove(&op.state.sender);
            }
            self.counters.handshakes_completed += 1;
            out.events.push(Event::HandshakeCompleted { peer: pid, initiator: false });
            self.flush_staged(pid, now, out);
        }
        // Initiator refreshes its session before the responder's keys would reject it.
        if initiator
            && now.saturating_since(created) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        {
            self.initiate(pid, now, false, out);
        }
        if plain.is_empty() {
            self.counters.rx_keepalives += 1;
            return;
        }
        if is_ipv4(&plain) {
            return self.drop_pkt(out, Some(pid), DropReason::InnerIpv4);
        }
        let Some((isrc, _, total)) = inner_header(&plain) else {
            return self.drop_pkt(out, Some(pid), DropReason::BadInnerPacket);
        };
        if total > plain.len() {
            return self.drop_pkt(out, Some(pid), DropReason::BadInnerPacket);
        }
        plain.truncate(total);
        if self.routes.lookup(&isrc) != Some(pid) {
            return self.drop_pkt(out, Some(pid), DropReason::SourceNotAllowed);
        }
        if let Some(p) = self.peers.get_mut(&pid) {
            p.counters.rx_packets += 1;
            if p.keepalive_at.is_none() {
                p.keepalive_at = Some(now + KEEPALIVE_TIMEOUT);
            }
        }
        self.counters.rx_data_packets += 1;
        out.packets.push(Received { peer: pid, packet: plain });
    }
}
