//! Two in-process peers: handshake, data both ways, rekey, loss/reordering, and every
//! rejection path (replayed, forged, truncated, beyond-window, wrongly keyed, unknown peer,
//! spoofed inner source), cookies under load, retransmission and timers.

use core::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use netfabric::device::timers::*;
use netfabric::ipv6::build_icmpv6_echo;
use netfabric::messages;
use netfabric::{AddPeerError, Device, DropReason, Event, Identity, Instant, IpPrefix, Output, PeerConfig, PeerId};
use rand_core::OsRng;

struct Node {
    id: Identity,
    dev: Device,
    addr: SocketAddr,
    peer: PeerId,
}

fn pair() -> (Node, Node) {
    let ia = Identity::generate(&mut OsRng);
    let ib = Identity::generate(&mut OsRng);
    let aa: SocketAddr = "[fd00:aa::1]:51820".parse().unwrap();
    let ba: SocketAddr = "[fd00:bb::1]:51820".parse().unwrap();
    let mut da = Device::new(ia.clone(), Box::new(OsRng));
    let mut db = Device::new(ib.clone(), Box::new(OsRng));
    da.set_unix_time_at_origin(Duration::from_secs(1_700_000_000));
    db.set_unix_time_at_origin(Duration::from_secs(1_700_000_000));
    let pb = da.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    let pa = db.add_peer(PeerConfig::new(ia.public_key()).with_endpoint(aa)).unwrap();
    (Node { id: ia, dev: da, addr: aa, peer: pb }, Node { id: ib, dev: db, addr: ba, peer: pa })
}

fn ping(from: &Node, to: &Node, seq: u16) -> Vec<u8> {
    build_icmpv6_echo(from.id.node_address(), to.id.node_address(), true, 7, seq, &[seq as u8; 100])
}

/// Deliver all transmits of `out` to `to`, repeatedly until quiet; returns packets received by
/// each side: (received by `to`, received back by `from`).
fn exchange(from: &mut Node, to: &mut Node, out: Output, now: Instant) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut at_to = Vec::new();
    let mut at_from = Vec::new();
    let mut pending = vec![(true, out)];
    let mut rounds = 0;
    while let Some((towards_to, o)) = pending.pop() {
        rounds += 1;
        assert!(rounds < 100, "ping-pong loop");
        for t in o.transmits {
            if towards_to {
                let r = to.dev.handle_incoming(&t.data, from.addr, now);
                at_to.extend(r.packets.iter().map(|p| p.packet.clone()));
                pending.push((false, r));
            } else {
                let r = from.dev.handle_incoming(&t.data, to.addr, now);
                at_from.extend(r.packets.iter().map(|p| p.packet.clone()));
                pending.push((true, r));
            }
        }
    }
    (at_to, at_from)
}

fn established() -> (Node, Node, Instant) {
    let (mut a, mut b) = pair();
    let now = Instant::from_secs(1);
    let p = ping(&a, &b, 1);
    let out = a.dev.send(&p, now).unwrap();
    assert!(matches!(out.events[0], Event::HandshakeInitiated(_)));
    let (got, _) = exchange(&mut a, &mut b, out, now);
    assert_eq!(got, vec![p]);
    assert!(a.dev.has_session(a.peer, now));
    assert!(b.dev.has_session(b.peer, now));
    (a, b, now)
}

#[test]
fn handshake_and_data_both_ways() {
    let (mut a, mut b, now) = established();
    for i in 0..20u16 {
        let p = ping(&a, &b, i);
        let o = a.dev.send(&p, now).unwrap();
        assert_eq!(o.transmits.len(), 1);
        let (got, _) = exchange(&mut a, &mut b, o, now);
        assert_eq!(got, vec![p]);
        let q = ping(&b, &a, i);
        let o = b.dev.send(&q, now).unwrap();
        let (got, _) = exchange(&mut b, &mut a, o, now);
        assert_eq!(got, vec![q]);
    }
    assert_eq!(a.dev.counters().total_dropped(), 0);
    assert_eq!(b.dev.counters().total_dropped(), 0);
    assert_eq!(a.dev.counters().handshakes_completed, 1);
    assert_eq!(b.dev.counters().handshakes_completed, 1);
    assert_eq!(b.dev.counters().rx_data_packets, 21);
}

/// Devices on either ChaCha20-Poly1305 code (crypto::CipherImpl), in all four pairings: the
/// codes are wire-identical, so sessions work across them and forgeries fail on each.
#[test]
fn every_pair_of_cipher_impls_interoperates() {
    use netfabric::crypto::CipherImpl::{Portable, Vector};
    for (ia, ib) in [(Vector, Vector), (Vector, Portable), (Portable, Vector), (Portable, Portable)] {
        let (mut a, mut b) = pair();
        a.dev.set_cipher_impl(ia);
        b.dev.set_cipher_impl(ib);
        let now = Instant::from_secs(1);
        let p = ping(&a, &b, 1);
        let out = a.dev.send(&p, now).unwrap();
        assert_eq!(exchange(&mut a, &mut b, out, now).0, vec![p]);
        assert_eq!((a.dev.session_cipher_impl(a.peer), b.dev.session_cipher_impl(b.peer)), (Some(ia), Some(ib)));
        for i in 0..8u16 {
            // sizes from one partial block to several 64-byte ChaCha blocks
            let p = build_icmpv6_echo(a.id.node_address(), b.id.node_address(), true, 7, i, &vec![i as u8; 1 + 150 * i as usize]);
            let o = a.dev.send(&p, now).unwrap();
            assert_eq!(exchange(&mut a, &mut b, o, now).0, vec![p], "{ia:?} -> {ib:?}");
            let q = ping(&b, &a, i);
            let o = b.dev.send(&q, now).unwrap();
            assert_eq!(exchange(&mut b, &mut a, o, now).0, vec![q], "{ib:?} -> {ia:?}");
        }
        let o = a.dev.send(&ping(&a, &b, 99), now).unwrap();
        let mut f = o.transmits[0].data.clone();
        f[20] ^= 1;
        assert_eq!(dropped(&b.dev.handle_incoming(&f, a.addr, now)), vec![DropReason::Decrypt], "{ia:?} -> {ib:?}");
        assert_eq!(a.dev.counters().total_dropped(), 0);
        assert_eq!(b.dev.counters().total_dropped(), 1);
    }
}

#[test]
fn rekey_after_time_and_reject_after_time() {
    let (mut a, mut b, t0) = established();
    // Just before REKEY_AFTER_TIME: no new handshake.
    let t = t0 + REKEY_AFTER_TIME - Duration::from_secs(1);
    let o = a.dev.send(&ping(&a, &b, 1), t).unwrap();
    assert!(!o.events.iter().any(|e| matches!(e, Event::HandshakeInitiated(_))));
    exchange(&mut a, &mut b, o, t);
    // After it: the initiator's send triggers a rekey; data keeps flowing.
    let t = t0 + REKEY_AFTER_TIME + Duration::from_secs(1);
    let p = ping(&a, &b, 2);
    let o = a.dev.send(&p, t).unwrap();
    assert!(o.events.iter().any(|e| matches!(e, Event::HandshakeInitiated(_))));
    let (got, _) = exchange(&mut a, &mut b, o, t);
    assert_eq!(got[0], p);
    assert_eq!(a.dev.counters().handshakes_completed, 2);
    assert_eq!(b.dev.counters().handshakes_completed, 2, "responder confirmed the new keypair");
    // Both directions work on the new keys, well past the first keypair's REJECT_AFTER_TIME.
    let t = t0 + REJECT_AFTER_TIME + Duration::from_secs(5);
    let o = b.dev.send(&ping(&b, &a, 3), t).unwrap();
    let (got, _) = exchange(&mut b, &mut a, o, t);
    assert_eq!(got.len(), 1);
    let tick = a.dev.tick(t);
    assert!(tick.events.iter().all(|e| !matches!(e, Event::HandshakeGaveUp(_))));
    // Idle past REJECT_AFTER_TIME of the new keys: they expire.
    let t2 = t + REJECT_AFTER_TIME;
    let o = a.dev.tick(t2);
    assert!(o.events.iter().any(|e| matches!(e, Event::KeysExpired(_))), "{:?}", o.events);
    assert!(!a.dev.has_session(a.peer, t2));
    // And after 3 × REJECT_AFTER_TIME everything is zeroed.
    let o = a.dev.tick(t + REJECT_AFTER_TIME * 3);
    assert!(o.events.iter().any(|e| matches!(e, Event::SessionZeroed(_))));
}

#[test]
fn initiator_rekeys_on_receive_near_reject_time() {
    let (mut a, mut b, t0) = established();
    let t = t0 + REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT + Duration::from_secs(1);
    let o = b.dev.send(&ping(&b, &a, 1), t).unwrap();
    assert!(!o.events.iter().any(|e| matches!(e, Event::HandshakeInitiated(_))), "responder never rekeys on time");
    let t_ = o.transmits[0].data.clone();
    let r = a.dev.handle_incoming(&t_, b.addr, t);
    assert_eq!(r.packets.len(), 1);
    assert!(r.events.iter().any(|e| matches!(e, Event::HandshakeInitiated(_))));
}

#[test]
fn survives_loss_and_reordering_within_window() {
    let (mut a, mut b, now) = established();
    let mut datagrams = Vec::new();
    let mut sent = Vec::new();
    for i in 0..500u16 {
        let p = ping(&a, &b, i);
        let o = a.dev.send(&p, now).unwrap();
        datagrams.push(o.transmits[0].data.clone());
        sent.push(p);
    }
    // Lose every 7th, deliver the rest in a scrambled order (reverse blocks of 50, odd first).
    let mut order: Vec<usize> = (0..500).filter(|i| i % 7 != 3).collect();
    order.reverse();
    order.sort_by_key(|i| (i / 50 % 2 == 0, std::cmp::Reverse(*i)));
    let mut got = Vec::new();
    for &i in &order {
        let r = b.dev.handle_incoming(&datagrams[i], a.addr, now);
        assert_eq!(r.packets.len(), 1, "packet {i} rejected: {:?}", r.events);
        got.push(r.packets[0].packet.clone());
    }
    assert_eq!(got.len(), order.len());
    for &i in &order {
        assert!(got.contains(&sent[i]));
    }
    assert_eq!(b.dev.counters().total_dropped(), 0);
}

fn dropped(o: &Output) -> Vec<DropReason> {
    o.events
        .iter()
        .filter_map(|e| match e {
            Event::Dropped { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn replayed_forged_truncated_and_old_packets_are_rejected_and_counted() {
    let (mut a, mut b, now) = established();
    let o = a.dev.send(&ping(&a, &b, 1), now).unwrap();
    let d = o.transmits[0].data.clone();
    assert_eq!(b.dev.handle_incoming(&d, a.addr, now).packets.len(), 1);
    // Replayed.
    let r = b.dev.handle_incoming(&d, a.addr, now);
    assert!(r.packets.is_empty() && r.transmits.is_empty());
    assert_eq!(dropped(&r), vec![DropReason::Replay]);
    assert_eq!(b.dev.counters().dropped_replay, 1);
    // Forged: one flipped bit anywhere in the ciphertext or tag.
    let o = a.dev.send(&ping(&a, &b, 2), now).unwrap();
    let mut f = o.transmits[0].data.clone();
    let last = f.len() - 1;
    f[last] ^= 1;
    let r = b.dev.handle_incoming(&f, a.addr, now);
    assert_eq!(dropped(&r), vec![DropReason::Decrypt]);
    let mut f2 = o.transmits[0].data.clone();
    f2[20] ^= 0x80;
    assert_eq!(dropped(&b.dev.handle_incoming(&f2, a.addr, now)), vec![DropReason::Decrypt]);
    // A forged packet did not burn the counter: the genuine one still arrives.
    assert_eq!(b.dev.handle_incoming(&o.transmits[0].data, a.addr, now).packets.len(), 1);
    // Forged counter (header is not encrypted but is authenticated through the nonce).
    let o = a.dev.send(&ping(&a, &b, 3), now).unwrap();
    let mut f3 = o.transmits[0].data.clone();
    f3[8] ^= 0x40;
    assert_eq!(dropped(&b.dev.handle_incoming(&f3, a.addr, now)), vec![DropReason::Decrypt]);
    assert_eq!(b.dev.counters().dropped_decrypt, 3);
    // Truncated: every prefix of a transport message and of handshake messages.
    let d = o.transmits[0].data.clone();
    for n in 0..messages::TRANSPORT_MIN_LEN {
        let r = b.dev.handle_incoming(&d[..n], a.addr, now);
        assert!(r.transmits.is_empty() && r.packets.is_empty());
        assert_eq!(dropped(&r), vec![DropReason::Malformed], "len {n}");
    }
    for n in messages::TRANSPORT_MIN_LEN..d.len() {
        let r = b.dev.handle_incoming(&d[..n], a.addr, now);
        assert!(r.packets.is_empty());
    }
    assert!(b.dev.counters().dropped_malformed >= messages::TRANSPORT_MIN_LEN as u64);
    // Beyond the window: 9000 packets, deliver the newest, then the oldest.
    let mut ds = Vec::new();
    for i in 0..9000u16 {
        ds.push(a.dev.send(&ping(&a, &b, i), now).unwrap().transmits.remove(0).data);
    }
    assert_eq!(b.dev.handle_incoming(&ds[8999], a.addr, now).packets.len(), 1);
    assert_eq!(dropped(&b.dev.handle_incoming(&ds[0], a.addr, now)), vec![DropReason::TooOld]);
    assert_eq!(b.dev.handle_incoming(&ds[8999 - 8000], a.addr, now).packets.len(), 1, "within window");
    assert_eq!(b.dev.counters().dropped_too_old, 1);
}

#[test]
fn wrongly_keyed_packets_are_rejected() {
    let (mut a, mut b, now) = established();
    // Transport encrypted under another session's key but sent with B's receiver index:
    // build a second, independent A'–B' session and graft its ciphertext onto a valid header.
    let (mut a2, b2, now2) = established();
    let genuine = a.dev.send(&ping(&a, &b, 1), now).unwrap().transmits.remove(0).data;
    let mut other = a2.dev.send(&ping(&a2, &b2, 1), now2).unwrap().transmits.remove(0).data;
    other[..8].copy_from_slice(&genuine[..8]);
    let r = b.dev.handle_incoming(&other, a.addr, now);
    assert_eq!(dropped(&r), vec![DropReason::Decrypt]);
    // An unknown receiver index.
    let r = b.dev.handle_incoming(&a2.dev.send(&ping(&a2, &b2, 2), now2).unwrap().transmits[0].data, a.addr, now);
    assert_eq!(dropped(&r), vec![DropReason::UnknownIndex]);
    // An initiation made for a different responder key: mac1 fails, no answer at all.
    let stranger = Identity::generate(&mut OsRng);
    let mut c = Device::new(a.id.clone(), Box::new(OsRng));
    let pc = c.add_peer(PeerConfig::new(stranger.public_key()).with_endpoint(b.addr)).unwrap();
    let o = c.send_to(pc, &ping(&a, &b, 1), now);
    let r = b.dev.handle_incoming(&o.transmits[0].data, a.addr, now);
    assert!(r.transmits.is_empty());
    assert_eq!(dropped(&r), vec![DropReason::InvalidMac1]);
    // A handshake response with a wrong ephemeral: HandshakeFailed.
    let _ = &mut a;
}

#[test]
fn unknown_peer_gets_no_response() {
    let (_a, mut b, now) = established();
    // C knows B's public key (so mac1 is valid) but is not in B's allowlist.
    let ic = Identity::generate(&mut OsRng);
    let mut c = Device::new(ic.clone(), Box::new(OsRng));
    let pb = c.add_peer(PeerConfig::new(b.id.public_key()).with_endpoint(b.addr)).unwrap();
    let o = c.send_to(pb, &build_icmpv6_echo(ic.node_address(), b.id.node_address(), true, 1, 1, b"x"), now);
    let r = b.dev.handle_incoming(&o.transmits[0].data, "[fd00:cc::1]:1".parse().unwrap(), now);
    assert!(r.transmits.is_empty() && r.packets.is_empty());
    assert_eq!(dropped(&r), vec![DropReason::UnknownPeer]);
    assert_eq!(b.dev.counters().dropped_unknown_peer, 1);
    // Random garbage of every message size gets no response either.
    for len in [1usize, 32, 64, 92, 148, 200] {
        let mut g = vec![0x55u8; len];
        g[0] = (len % 4 + 1) as u8;
        let r = b.dev.handle_incoming(&g, "[fd00:cc::1]:1".parse().unwrap(), now);
        assert!(r.transmits.is_empty(), "len {len}");
    }
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    let (mut a, mut b, now) = established();
    // B sends a packet whose inner source is not in B's prefix (cryptokey routing on A).
    let spoof = build_icmpv6_echo("fd99::1".parse().unwrap(), a.id.node_address(), true, 1, 1, b"x");
    let o = b.dev.send_to(b.peer, &spoof, now);
    let r = a.dev.handle_incoming(&o.transmits[0].data, b.addr, now);
    assert!(r.packets.is_empty());
    assert_eq!(dropped(&r), vec![DropReason::SourceNotAllowed]);
    assert_eq!(a.dev.counters().dropped_source_not_allowed, 1);
    // A workload address inside B's prefix is fine.
    let vm = b.id.prefix().workload_address(netfabric::AddressKind::MicroVm, 3).unwrap();
    let ok = build_icmpv6_echo(vm, a.id.node_address(), true, 1, 1, b"x");
    let o = b.dev.send_to(b.peer, &ok, now);
    assert_eq!(a.dev.handle_incoming(&o.transmits[0].data, b.addr, now).packets.len(), 1);
    // Outgoing routing: no peer owns the destination.
    let nowhere = build_icmpv6_echo(a.id.node_address(), "fd77::1".parse().unwrap(), true, 1, 1, b"x");
    assert_eq!(a.dev.send(&nowhere, now).unwrap_err(), netfabric::SendError::NoRoute);
    assert_eq!(a.dev.counters().send_no_route, 1);
}

#[test]
fn configured_prefixes_and_longest_match_pick_the_peer() {
    let (mut a, b) = pair();
    let ic = Identity::generate(&mut OsRng);
    let wide: Ipv6Addr = "fd50::".parse().unwrap();
    a.dev.add_peer(PeerConfig::new(ic.public_key()).with_prefix(IpPrefix::v6(wide, 16))).unwrap();
    assert_eq!(a.dev.add_peer(PeerConfig::new(b.id.public_key())), Err(AddPeerError::Duplicate));
    // Give B a narrower prefix inside C's.
    let mut cfg = PeerConfig::new(b.id.public_key());
    cfg.allowed_prefixes.push(IpPrefix::v6("fd50:1::".parse().unwrap(), 32));
    a.dev.remove_peer(a.peer);
    let pb = a.dev.add_peer(cfg.with_endpoint(b.addr)).unwrap();
    let pc = a.dev.peer_by_key(&ic.public_key()).unwrap();
    let r = a.dev.routes();
    assert_eq!(r.lookup(&"fd50:1::9".parse().unwrap()), Some(pb));
    assert_eq!(r.lookup(&"fd50:2::9".parse().unwrap()), Some(pc));
    assert_eq!(r.lookup(&b.id.node_address()), Some(pb));
    assert_eq!(r.lookup(&ic.node_address()), Some(pc));
}

#[test]
fn cookie_reply_under_load_then_handshake_with_mac2() {
    let (mut a, mut b) = pair();
    b.dev.set_under_load(true);
    let t = Instant::from_secs(10);
    let p = ping(&a, &b, 1);
    let o = a.dev.send(&p, t).unwrap();
    let r = b.dev.handle_incoming(&o.transmits[0].data, a.addr, t);
    assert_eq!(r.transmits.len(), 1);
    assert_eq!(r.transmits[0].data[0], messages::TYPE_COOKIE_REPLY);
    assert_eq!(r.transmits[0].data.len(), messages::COOKIE_REPLY_LEN);
    assert_eq!(b.dev.counters().cookie_replies_sent, 1);
    assert_eq!(b.dev.counters().responses_sent, 0);
    let r2 = a.dev.handle_incoming(&r.transmits[0].data, b.addr, t);
    assert!(r2.events.contains(&Event::CookieReceived(a.peer)));
    assert!(r2.transmits.is_empty(), "no immediate retransmission");
    // The retransmission timer fires; the new initiation carries mac2 and is accepted.
    let t2 = t + REKEY_TIMEOUT + Duration::from_millis(400);
    let o = a.dev.tick(t2);
    assert_eq!(o.transmits.len(), 1);
    let (got, _) = exchange(&mut a, &mut b, o, t2);
    assert_eq!(got, vec![p]);
    assert_eq!(b.dev.counters().responses_sent, 1);
    // The cookie is bound to the source address: from elsewhere mac2 is wrong again.
    let (mut a3, _b3) = pair();
    let mut a3b = Device::new(a.id.clone(), Box::new(OsRng));
    let _ = &mut a3;
    let pb = a3b.add_peer(PeerConfig::new(b.id.public_key()).with_endpoint(b.addr)).unwrap();
    let o = a3b.send_to(pb, &ping(&a, &b, 9), t2);
    let r = b.dev.handle_incoming(&o.transmits[0].data, "[fd00:dd::1]:4".parse().unwrap(), t2);
    assert_eq!(dropped(&r), vec![DropReason::UnderLoad]);
    assert_eq!(r.transmits[0].data[0], messages::TYPE_COOKIE_REPLY);
}

#[test]
fn automatic_load_detection_sends_cookies() {
    let (a, mut b) = pair();
    b.dev.set_load_threshold(5);
    let t = Instant::from_secs(3);
    let mut cookies = 0;
    for i in 0..20u64 {
        let mut c = Device::new(a.id.clone(), Box::new(OsRng));
        c.set_unix_time_at_origin(Duration::from_secs(1_700_000_000 + i));
        let pb = c.add_peer(PeerConfig::new(b.id.public_key()).with_endpoint(b.addr)).unwrap();
        let o = c.send_to(pb, &ping(&a, &b, 1), t);
        let r = b.dev.handle_incoming(&o.transmits[0].data, a.addr, t);
        if r.transmits.first().is_some_and(|x| x.data[0] == messages::TYPE_COOKIE_REPLY) {
            cookies += 1;
        }
    }
    assert!(cookies >= 10, "cookies {cookies}");
}

#[test]
fn replayed_initiation_is_rejected() {
    let (mut a, mut b) = pair();
    let t = Instant::from_secs(5);
    let o = a.dev.send(&ping(&a, &b, 1), t).unwrap();
    let init = o.transmits[0].data.clone();
    assert_eq!(b.dev.handle_incoming(&init, a.addr, t).transmits.len(), 1);
    let r = b.dev.handle_incoming(&init, a.addr, t + Duration::from_secs(1));
    assert!(r.transmits.is_empty());
    assert_eq!(dropped(&r), vec![DropReason::InitiationReplay]);
    let _ = &mut a;
}

#[test]
fn retransmits_then_gives_up() {
    let (mut a, b) = pair();
    let t0 = Instant::from_secs(1);
    let o = a.dev.send(&ping(&a, &b, 1), t0).unwrap();
    assert_eq!(o.transmits.len(), 1);
    assert_eq!(a.dev.staged_len(a.peer), 1);
    let mut inits = 1;
    let mut gave_up = false;
    let mut t = t0;
    while t < t0 + Duration::from_secs(100) {
        t = t + Duration::from_millis(250);
        let o = a.dev.tick(t);
        inits += o.transmits.iter().filter(|x| x.data[0] == messages::TYPE_INITIATION).count();
        if o.events.contains(&Event::HandshakeGaveUp(a.peer)) {
            gave_up = true;
            assert!(t.saturating_since(t0) >= REKEY_ATTEMPT_TIME);
            break;
        }
    }
    assert!(gave_up);
    assert!((15..=19).contains(&inits), "initiations sent: {inits}");
    assert_eq!(a.dev.staged_len(a.peer), 0);
}

#[test]
fn keepalive_after_receiving_data() {
    let (mut a, mut b, now) = established();
    let o = a.dev.send(&ping(&a, &b, 1), now).unwrap();
    exchange(&mut a, &mut b, o, now);
    assert!(b.dev.tick(now + Duration::from_secs(9)).transmits.is_empty());
    let o = b.dev.tick(now + KEEPALIVE_TIMEOUT + Duration::from_millis(1));
    assert_eq!(o.transmits.len(), 1);
    assert_eq!(o.transmits[0].data.len(), messages::TRANSPORT_MIN_LEN);
    assert!(o.events.contains(&Event::KeepaliveSent(b.peer)));
    let r = a.dev.handle_incoming(&o.transmits[0].data, b.addr, now + KEEPALIVE_TIMEOUT);
    assert!(r.packets.is_empty());
    assert_eq!(a.dev.counters().rx_keepalives, 1);
    // Data sent and nothing heard for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT: new handshake.
    let t = now + Duration::from_secs(30);
    let _lost = a.dev.send(&ping(&a, &b, 2), t).unwrap();
    let o = a.dev.tick(t + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + Duration::from_millis(1));
    assert!(o.events.contains(&Event::HandshakeInitiated(a.peer)));
}

#[test]
fn persistent_keepalive() {
    let ia = Identity::generate(&mut OsRng);
    let ib = Identity::generate(&mut OsRng);
    let mut a = Device::new(ia, Box::new(OsRng));
    let p = a.add_peer(
        PeerConfig::new(ib.public_key())
            .with_endpoint("[fd00::9]:1".parse().unwrap())
            .with_persistent_keepalive(Duration::from_secs(25)),
    ).unwrap();
    // No session yet: the persistent keepalive starts a handshake.
    let o = a.tick(Instant::from_secs(1));
    assert!(o.events.contains(&Event::HandshakeInitiated(p)));
}

#[test]
fn routing_roams_to_the_latest_authenticated_endpoint() {
    let (mut a, mut b, now) = established();
    let o = a.dev.send(&ping(&a, &b, 1), now).unwrap();
    let new_addr: SocketAddr = "[fd00:aa::77]:999".parse().unwrap();
    b.dev.handle_incoming(&o.transmits[0].data, new_addr, now);
    assert_eq!(b.dev.endpoint(b.peer), Some(new_addr));
    // Unauthenticated packets do not move it.
    let mut f = a.dev.send(&ping(&a, &b, 2), now).unwrap().transmits.remove(0).data;
    f[30] ^= 1;
    b.dev.handle_incoming(&f, "[fd00:ee::1]:1".parse().unwrap(), now);
    assert_eq!(b.dev.endpoint(b.peer), Some(new_addr));
}

fn hex32(s: &str) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, o) in b.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    b
}

/// Low-order points (their x25519 shared secret with any key is all zero), our own key and a
/// known key are errors; the device is unchanged and still works.
#[test]
fn add_peer_refuses_low_order_own_and_duplicate_keys() {
    let (mut a, b) = pair();
    let low_order = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    for k in low_order {
        assert_eq!(a.dev.add_peer(PeerConfig::new(hex32(k))), Err(AddPeerError::LowOrderKey), "{k}");
    }
    assert_eq!(a.dev.add_peer(PeerConfig::new(a.id.public_key())), Err(AddPeerError::OwnKey));
    assert_eq!(a.dev.add_peer(PeerConfig::new(b.id.public_key())), Err(AddPeerError::Duplicate));
    assert_eq!(a.dev.peer_by_key(&[0; 32]), None);
    assert_eq!(a.dev.routes().lookup(&b.id.node_address()), Some(a.peer));
    let c = Identity::generate(&mut OsRng);
    assert!(a.dev.add_peer(PeerConfig::new(c.public_key())).is_ok());
}

/// The fabric is IPv6-only inside: an inner IPv4 packet from a peer is dropped and counted
/// (never delivered, whatever its addresses), and one handed to `send` locally is refused.
#[test]
fn inner_ipv4_is_dropped_and_counted() {
    let (mut a, mut b, now) = established();
    // 20-byte IPv4 header (10.0.0.2 -> 10.0.0.1, UDP) and 8 bytes of payload.
    let mut v4 = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
    v4.extend_from_slice(&[0u8; 8]);
    let o = b.dev.send_to(b.peer, &v4, now);
    let r = a.dev.handle_incoming(&o.transmits[0].data, b.addr, now);
    assert!(r.packets.is_empty());
    assert_eq!(dropped(&r), vec![DropReason::InnerIpv4]);
    assert_eq!(a.dev.counters().dropped_inner_ipv4, 1);
    assert_eq!(a.dev.peer_counters(a.peer).unwrap().dropped, 1);
    // The local side: refused before any routing, counted.
    assert_eq!(a.dev.send(&v4, now).unwrap_err(), netfabric::SendError::Ipv4);
    assert_eq!(a.dev.counters().send_ipv4, 1);
    assert_eq!(a.dev.counters().send_no_route, 0);
    // IPv6 still flows on the same session.
    let ok = build_icmpv6_echo(b.id.node_address(), a.id.node_address(), true, 1, 1, b"x");
    let o = b.dev.send_to(b.peer, &ok, now);
    assert_eq!(a.dev.handle_incoming(&o.transmits[0].data, b.addr, now).packets.len(), 1);
}
