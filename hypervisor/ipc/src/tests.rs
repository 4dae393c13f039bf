use alloc::vec;
use alloc::vec::Vec;
use super::*;

fn cap(ep: EndpointId, rights: Rights, badge: u64) -> Capability {
    Capability { target: Address::local(ep), rights, badge }
}

#[test]
fn fifo_order_and_badge() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 8);
    let c = cap(ep, Rights::SEND, 42);
    for i in 0..8 {
        assert_eq!(s.send(&c, Message::new(i, [i, 0, 0, 0])), Ok(Delivery::Queued));
    }
    for i in 0..8 {
        let m = s.recv(1, ep).unwrap().unwrap();
        assert_eq!((m.label, m.words[0], m.badge), (i, i, 42));
    }
    assert_eq!(s.recv(1, ep), Ok(None));
}

#[test]
fn full_queue_is_an_error_and_nothing_is_lost() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 4);
    let c = cap(ep, Rights::SEND, 0);
    for i in 0..4 {
        s.send(&c, Message::new(i, [0; 4])).unwrap();
    }
    assert_eq!(s.send(&c, Message::new(99, [0; 4])), Err(IpcError::QueueFull));
    assert_eq!(s.endpoint(ep).unwrap().queued(), 4);
    assert_eq!(s.recv(1, ep).unwrap().unwrap().label, 0);
    assert_eq!(s.send(&c, Message::new(4, [0; 4])), Ok(Delivery::Queued));
    let labels: Vec<u64> = (0..4).map(|_| s.recv(1, ep).unwrap().unwrap().label).collect();
    assert_eq!(labels, [1, 2, 3, 4]);
}

#[test]
fn waiting_receiver_gets_direct_delivery_in_order() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 2);
    assert_eq!(s.recv(7, ep), Ok(None));
    assert_eq!(s.recv(8, ep), Ok(None));
    assert_eq!(s.recv(7, ep), Ok(None)); // registering twice is harmless
    let c = cap(ep, Rights::SEND, 5);
    match s.send(&c, Message::new(1, [0; 4])).unwrap() {
        Delivery::Direct { receiver, msg } => assert_eq!((receiver, msg.label, msg.badge), (7, 1, 5)),
        d => panic!("{d:?}"),
    }
    match s.send(&c, Message::new(2, [0; 4])).unwrap() {
        Delivery::Direct { receiver, .. } => assert_eq!(receiver, 8),
        d => panic!("{d:?}"),
    }
    assert_eq!(s.send(&c, Message::new(3, [0; 4])), Ok(Delivery::Queued));
}

#[test]
fn cancel_wait_after_timeout() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 2);
    assert_eq!(s.recv(7, ep), Ok(None));
    s.cancel_wait(7, ep);
    assert_eq!(s.send(&cap(ep, Rights::SEND, 0), Message::default()), Ok(Delivery::Queued));
}

#[test]
fn rights_are_enforced() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 2);
    assert_eq!(s.send(&cap(ep, Rights::RECV, 0), Message::default()), Err(IpcError::NoRight));
    let m = Message { grant: Some(Grant { base: 0x1000, len: 4096, writable: false }), ..Message::default() };
    assert_eq!(s.send(&cap(ep, Rights::SEND, 0), m), Err(IpcError::NoRight));
    assert_eq!(s.send(&cap(ep, Rights::SEND.union(Rights::GRANT), 0), m), Ok(Delivery::Queued));
    assert_eq!(s.recv(1, ep).unwrap().unwrap().grant, m.grant);
}

#[test]
fn cap_table_slots_rights_and_derive() {
    let mut t = CapTable::new(3);
    assert_eq!(t.get(0), Err(IpcError::NoCapability));
    let a = t.insert(cap(1, Rights::ALL, 1)).unwrap();
    let b = t.insert(cap(2, Rights::SEND, 2)).unwrap();
    assert_eq!((a, b), (0, 1));
    assert_eq!(t.check(1, Rights::RECV), Err(IpcError::NoRight));
    assert_eq!(t.check(1, Rights::SEND).unwrap().badge, 2);
    let d = t.derive(1, Rights::ALL, 9).unwrap();
    assert_eq!(d.rights, Rights::SEND, "derive never adds rights");
    assert!(t.has_room());
    t.insert(d).unwrap();
    assert!(!t.has_room());
    assert_eq!(t.insert(d), Err(IpcError::TableFull));
    t.remove(0).unwrap();
    assert!(t.has_room(), "a freed slot is room");
    assert_eq!(t.remove(0), Err(IpcError::NoCapability));
    assert_eq!(t.insert(d).unwrap(), 0, "freed slot reused");
    assert_eq!(t.len(), 3);
    assert_eq!(t.check(77, Rights::SEND), Err(IpcError::NoCapability));
}

#[test]
fn call_reply_matching() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(10, 4);
    let (tok, d) = s.call(20, &cap(ep, Rights::SEND, 3), Message::new(5, [1, 2, 3, 4])).unwrap();
    assert_eq!(d, Delivery::Queued);
    let m = s.recv(10, ep).unwrap().unwrap();
    assert_eq!((m.reply, m.badge), (tok, 3));
    // Only the callee may answer, and only once.
    assert_eq!(s.reply(11, tok, Message::default()), Err(IpcError::BadReply));
    let (caller, r) = s.reply(10, tok, Message::new(6, [9, 0, 0, 0])).unwrap();
    assert_eq!((caller, r.label, r.reply), (20, 6, 0));
    assert_eq!(s.reply(10, tok, Message::default()), Err(IpcError::BadReply));
    assert_eq!(s.outstanding_calls(), 0);
}

#[test]
fn call_to_full_queue_registers_nothing() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(10, 1);
    let c = cap(ep, Rights::SEND, 0);
    s.send(&c, Message::default()).unwrap();
    assert_eq!(s.call(20, &c, Message::default()), Err(IpcError::QueueFull));
    assert_eq!(s.outstanding_calls(), 0);
}

#[test]
fn dead_server_fails_callers_and_closes_endpoint() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(10, 4);
    let other = s.create_endpoint(30, 4);
    let c = cap(ep, Rights::SEND, 0);
    let (tok, _) = s.call(20, &c, Message::default()).unwrap();
    s.send(&c, Message::default()).unwrap();
    assert_eq!(s.recv(31, other), Ok(None));
    let r = s.task_died(10);
    assert_eq!(r.closed_endpoints, vec![ep]);
    assert_eq!(r.dropped_messages, 2);
    assert_eq!(r.wake_with_error, vec![(20, IpcError::DeadPeer)]);
    assert_eq!(s.send(&c, Message::default()), Err(IpcError::DeadPeer));
    assert_eq!(s.reply(10, tok, Message::default()), Err(IpcError::BadReply));
    assert!(s.endpoint(other).is_some());
}

#[test]
fn dead_caller_is_forgotten_and_receivers_on_closed_endpoint_wake() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(10, 4);
    let (tok, _) = s.call(20, &cap(ep, Rights::SEND, 0), Message::default()).unwrap();
    let r = s.task_died(20);
    assert!(r.wake_with_error.is_empty());
    assert_eq!(s.reply(10, tok, Message::default()), Err(IpcError::BadReply));
    // A second task receiving on an endpoint whose owner dies is woken with DeadPeer.
    let ep2 = s.create_endpoint(40, 4);
    assert_eq!(s.recv(41, ep2), Ok(None));
    let r = s.task_died(40);
    assert_eq!(r.wake_with_error, vec![(41, IpcError::DeadPeer)]);
    assert_eq!(s.recv(41, ep2), Err(IpcError::DeadPeer));
}

#[test]
fn notifications_coalesce_and_are_never_lost() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 1);
    s.send(&cap(ep, Rights::SEND, 0), Message::new(7, [0; 4])).unwrap(); // queue now full
    for bit in 0..100 {
        assert_eq!(s.notify(ep, 1 << (bit % 3)), Ok(None));
    }
    let m = s.recv(1, ep).unwrap().unwrap();
    assert_eq!((m.label, m.words[0]), (LABEL_NOTIFY, 0b111));
    assert_eq!(s.recv(1, ep).unwrap().unwrap().label, 7);
    assert_eq!(s.recv(1, ep), Ok(None));
    let (who, m) = s.notify(ep, 2).unwrap().unwrap();
    assert_eq!((who, m.words[0]), (1, 2));
}

#[test]
fn remote_addresses_are_unreachable_for_now() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 1);
    let mut a = Address::local(ep);
    a.node[15] = 1;
    let c = Capability { target: a, rights: Rights::SEND, badge: 0 };
    assert_eq!(s.send(&c, Message::default()), Err(IpcError::Unreachable));
    assert_eq!(s.send(&cap(999, Rights::SEND, 0), Message::default()), Err(IpcError::NoEndpoint));
}

#[test]
fn remote_calls_are_answered_by_the_router_only() {
    let mut s = IpcSpace::new();
    let tok = s.call_remote(5);
    assert_eq!(s.reply(6, tok, Message::default()), Err(IpcError::BadReply));
    let (who, m) = s.reply(REMOTE, tok, Message::new(3, [0; 4])).unwrap();
    assert_eq!((who, m.label), (5, 3));
    assert_eq!(s.reply(REMOTE, tok, Message::default()), Err(IpcError::BadReply));
    let tok = s.call_remote(5);
    assert_eq!(s.end_call(6, tok), Err(IpcError::BadReply));
    assert_eq!(s.end_call(REMOTE, tok), Ok(5));
    assert_eq!(s.outstanding_calls(), 0);
    // a call made on behalf of another node: the callee's death leaves nobody to wake
    let ep = s.create_endpoint(7, 2);
    let (tok, _) = s.call(REMOTE, &cap(ep, Rights::SEND, 0), Message::default()).unwrap();
    assert_eq!(s.reply(7, tok, Message::default()).map(|(c, _)| c), Ok(REMOTE));
}

#[test]
fn error_codes_roundtrip() {
    for c in 1..=9 {
        assert_eq!(IpcError::from_code(c).unwrap().code(), c);
    }
    assert_eq!(IpcError::from_code(0), None);
}

#[test]
fn randomized_queue_model() {
    // Compare against a simple model: bounded FIFO, errors exactly when full.
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 5);
    let c = cap(ep, Rights::SEND, 0);
    let mut model: alloc::collections::VecDeque<u64> = Default::default();
    let mut x: u64 = 0x1234_5678;
    for i in 0..10_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if !x.is_multiple_of(3) {
            let r = s.send(&c, Message::new(i, [0; 4]));
            if model.len() < 5 {
                assert_eq!(r, Ok(Delivery::Queued));
                model.push_back(i);
            } else {
                assert_eq!(r, Err(IpcError::QueueFull));
            }
        } else {
            let got = s.try_recv(ep).unwrap().map(|m| m.label);
            assert_eq!(got, model.pop_front());
        }
    }
}

#[test]
fn nic_ring_indices_from_a_hostile_driver_are_refused() {
    use crate::nic_ring::*;
    // normal use, including counters that wrap around u64
    assert_eq!(pending(5, 5), Ok(0));
    assert_eq!(pending(21, 5), Ok(SLOTS));
    assert_eq!(room(21, 5), Ok(0));
    assert_eq!(room(5, 5), Ok(SLOTS));
    assert_eq!(pending(2, u64::MAX - 1), Ok(4));
    assert_eq!(slot(u64::MAX), u64::MAX % SLOTS);
    // a tail ahead of the head, a head far ahead: refused, never an overflow or a huge count
    for (h, t) in [(0, 1), (5, 6), (22, 5), (u64::MAX, 0), (0, u64::MAX - SLOTS), (1 << 63, 0), (0, 1 << 63)] {
        assert!(pending(h, t).is_err(), "{h} {t}");
        assert!(room(h, t).is_err(), "{h} {t}");
    }
    // every pair near the edges: the answer is within the ring or an error
    let edge = [0, 1, SLOTS - 1, SLOTS, SLOTS + 1, u64::MAX / 2, u64::MAX - SLOTS, u64::MAX - 1, u64::MAX];
    for &h in &edge {
        for &t in &edge {
            match pending(h, t) {
                Ok(n) => assert!(n <= SLOTS && h == t.wrapping_add(n)),
                Err(e) => assert_eq!((e.head, e.tail), (h, t)),
            }
        }
    }
    assert_eq!(frame_len(SLOT_LEN), Some(SLOT_LEN as usize));
    assert_eq!(frame_len(SLOT_LEN + 1), None);
    assert_eq!(frame_len(u64::MAX), None);
}

/// The areas of `nic_ring`'s header page (index words, length words, stamps, the waiting
/// flag, the driver's counters) are disjoint and inside the page.
#[test]
fn nic_ring_header_areas_do_not_overlap() {
    use crate::nic_ring::*;
    let mut areas = [
        (RX_HEAD, 8),
        (RX_TAIL, 8),
        (TX_HEAD, 8),
        (TX_TAIL, 8),
        (RX_LEN, SLOTS * 8),
        (TX_LEN, SLOTS * 8),
        (TX_STAMP, SLOTS * 8),
        (RX_STAMP, SLOTS * 8),
        (TX_WAITING, 8),
        (STATS, stat::COUNT * 8),
    ];
    areas.sort();
    for w in areas.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{:#x}+{:#x} overlaps {:#x}", w[0].0, w[0].1, w[1].0);
    }
    let last = areas[areas.len() - 1];
    assert!(last.0 + last.1 <= 4096 && RX_SLOTS >= 4096);
}

#[test]
fn vm_ring_layout_and_hostile_indices() {
    use crate::vm_ring::*;
    // the length words fit the header page, the slot areas the pages, no slot crosses a page
    const _: () = assert!(RX_LEN >= TX_TAIL + 8 && RX_LEN + SLOTS * 8 <= TX_LEN && TX_LEN + SLOTS * 8 <= 4096);
    assert_eq!(TX_SLOTS + SLOTS * SLOT_LEN, PAGES * 4096);
    assert_eq!(4096 % SLOT_LEN, 0);
    for c in [0, 1, SLOTS - 1, SLOTS, u64::MAX] {
        for base in [RX_SLOTS, TX_SLOTS] {
            let o = slot_offset(base, c);
            assert_eq!(o / 4096, (o + SLOT_LEN - 1) / 4096, "slot {c} crosses a page");
            assert!(o + SLOT_LEN <= PAGES * 4096);
        }
        assert!(len_offset(RX_LEN, c) + 8 <= TX_LEN && len_offset(TX_LEN, c) + 8 <= 4096);
    }
    assert_eq!(pending(SLOTS, 0), Ok(SLOTS));
    assert_eq!(room(SLOTS, 0), Ok(0));
    assert_eq!(pending(1, u64::MAX), Ok(2));
    for (h, t) in [(0, 1), (SLOTS + 1, 0), (u64::MAX, 0), (1 << 63, 0)] {
        assert!(pending(h, t).is_err() && room(h, t).is_err(), "{h} {t}");
    }
    assert_eq!(frame_len(SLOT_LEN + 1), None);
}

#[test]
fn bind_right_is_not_part_of_all() {
    assert!(!Rights::ALL.contains(Rights::BIND));
    let mut t = CapTable::new(4);
    let s = t.insert(cap(3, Rights::ALL, 0)).unwrap();
    // deriving can never add the bind right
    assert!(!t.derive(s, Rights(0xff), 0).unwrap().rights.contains(Rights::BIND));
    let b = t.insert(cap(3, Rights::BIND, 0)).unwrap();
    assert!(t.check(b, Rights::BIND).is_ok());
    assert_eq!(t.check(s, Rights::BIND), Err(IpcError::NoRight));
}

#[test]
fn held_endpoint_survives_its_owner_and_is_adopted() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(10, 4);
    let c = cap(ep, Rights::SEND, 7);
    // a call reaches the service, which dies before replying: the caller gets DeadPeer
    let (t1, _) = s.call(20, &c, Message::new(1, [0; 4])).unwrap();
    assert!(s.hold_endpoint(ep));
    let r = s.task_died(10);
    assert!(r.closed_endpoints.is_empty());
    assert!(r.wake_with_error.contains(&(20, IpcError::DeadPeer)));
    assert!(!s.call_pending(t1));
    // while held: sends queue, calls wait
    assert_eq!(s.send(&c, Message::new(2, [0; 4])), Ok(Delivery::Queued));
    let (t2, _) = s.call(21, &c, Message::new(3, [0; 4])).unwrap();
    assert_eq!(s.reply(10, t2, Message::new(0, [0; 4])), Err(IpcError::BadReply));
    // the restarted service adopts it, receives what queued and owes the call
    assert!(s.adopt_endpoint(ep, 11));
    assert!(!s.adopt_endpoint(ep, 12), "only a held endpoint can be adopted");
    let m1 = s.recv(11, ep).unwrap().unwrap();
    assert_eq!(m1.label, 1, "the dead owner's unreceived call stays queued; its token is gone");
    assert_eq!(s.reply(11, m1.reply, Message::new(0, [0; 4])), Err(IpcError::BadReply));
    assert_eq!(s.recv(11, ep).unwrap().unwrap().label, 2);
    let m3 = s.recv(11, ep).unwrap().unwrap();
    assert_eq!(s.reply(11, m3.reply, Message::new(9, [0; 4])).map(|(c, m)| (c, m.label)), Ok((21, 9)));
    // an endpoint that is not held closes with its owner as before
    let r = s.task_died(11);
    assert_eq!(r.closed_endpoints, vec![ep]);
}

#[test]
fn caller_of_names_the_caller_only_to_the_callee() {
    let mut s = IpcSpace::new();
    let ep = s.create_endpoint(1, 4);
    let (token, _) = s.call(9, &cap(ep, Rights::SEND, 0x77), Message::new(1, [0; 4])).unwrap();
    // the badge is the capability's; the caller is the task the kernel registered
    assert_eq!(s.caller_of(1, token), Some(9));
    assert_eq!(s.caller_of(2, token), None); // not owed by task 2
    assert_eq!(s.caller_of(1, token + 1), None);
    s.reply(1, token, Message::new(0, [0; 4])).unwrap();
    assert_eq!(s.caller_of(1, token), None); // answered: gone
}
