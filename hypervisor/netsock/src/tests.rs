use super::table::*;
use super::*;

fn node() -> Ipv6Addr {
    "fd00:1:2:3::1".parse().unwrap()
}
fn own() -> Ipv6Addr {
    "fd00:1:2:3:200::1".parse().unwrap()
}
fn peer() -> Ipv6Addr {
    "fd00:9:9:9::1".parse().unwrap()
}
fn addrs() -> Addrs {
    Addrs { node: node(), own: Some(own()) }
}

#[test]
fn every_request_round_trips() {
    let g = Grant { addr: 0x6000_0000_0000, len: 100, writable: false };
    let gw = Grant { writable: true, ..g };
    let reqs = [
        Request::Socket { kind: Kind::Udp },
        Request::Socket { kind: Kind::Tcp },
        Request::Bind { h: 1, local: Local::Node, port: 0 },
        Request::Bind { h: 8, local: Local::Own, port: 7000 },
        Request::Connect { h: 2, addr: peer(), port: 80 },
        Request::Listen { h: 3, backlog: 4 },
        Request::Accept { h: 3 },
        Request::Send { h: 1, off: 0, grant: g },
        Request::Recv { h: 1, off: 0, grant: gw },
        Request::Send { h: make_handle(7, 2), off: 99, grant: g },
        Request::Recv { h: make_handle(1, 8), off: 4095, grant: Grant { len: 4096 + 10, ..gw } },
        Request::Close { h: 5 },
        Request::Shutdown { h: 4 },
        Request::Poll { wait_ms: 0, epoch: 0 },
        Request::Poll { wait_ms: POLL_WAIT_MAX_MS, epoch: 3 },
    ];
    for r in reqs {
        let (l, w) = r.encode();
        assert_eq!(Request::decode(l, w), Ok(r), "{r:?}");
    }
}

#[test]
fn hostile_requests_get_errors() {
    use NetError::*;
    let cases: &[(u64, [u64; 4], NetError)] = &[
        (0, [0; 4], UnknownOp),
        (catenary_notify(), [0; 4], UnknownOp),
        (OP_BASE, [0; 4], UnknownOp),
        (OP_BASE + 11, [0; 4], UnknownOp),
        (OP_SHUTDOWN, [0, 0, 0, 0], BadHandle),
        (OP_SHUTDOWN, [1, 0, 1, 0], BadRequest),
        (OP_POLL, [POLL_WAIT_MAX_MS + 1, 0, 0, 0], BadRequest),
        (OP_POLL, [u64::MAX, 0, 0, 0], BadRequest),
        (OP_POLL, [0, 0, 1, 0], BadRequest),
        (OP_POLL, [0, 0, 0, 1], BadRequest),
        (OP_BASE + 0xffff, [0; 4], UnknownOp),
        (OP_SOCKET, [0, 0, 0, 0], BadRequest),
        (OP_SOCKET, [3, 0, 0, 0], BadRequest),
        (OP_SOCKET, [1, 1, 0, 0], BadRequest),
        (OP_BIND, [0, 0, 0, 0], BadHandle),
        (OP_BIND, [crate::SOCKETS_PER_CLIENT as u64 + 1, 0, 0, 0], BadHandle),
        (OP_BIND, [u64::MAX, 0, 0, 0], BadHandle),
        (OP_BIND, [1, 2, 0, 0], BadRequest),
        (OP_BIND, [1, 0, 65536, 0], BadPort),
        (OP_BIND, [1, 0, 1, 1], BadRequest),
        (OP_CONNECT, [1, 0, 0, 1 << 16], BadPort),
        (OP_LISTEN, [1, 0, 0, 0], BadRequest),
        (OP_LISTEN, [1, 5, 0, 0], BadRequest),
        (OP_ACCEPT, [1, 1, 0, 0], BadRequest),
        (OP_CLOSE, [0, 0, 0, 0], BadHandle),
        (OP_SEND, [1, 0, 0, 10], BadBuffer),
        (OP_SEND, [1, 0, 0x6000_0000_0000, 0], BadBuffer),
        (OP_SEND, [1, OFFSET_MAX + 1, 0x6000_0000_0000, 5000], BadRequest),
        (OP_SEND, [1, u64::MAX, 0x6000_0000_0000, 10], BadRequest),
        (OP_SEND, [1, 10, 0x6000_0000_0000, 10], BadBuffer), // the offset leaves no data
        (OP_RECV, [1, 4000, 0x6000_0000_0001, 100], BadBuffer),
        (OP_SEND, [make_handle(5, crate::SOCKETS_PER_CLIENT as u64 + 1), 0, 0x6000_0000_0000, 10], BadHandle),
        (OP_CLOSE, [make_handle(5, 0), 0, 0, 0], BadHandle),
        (OP_SEND, [1, 0, 0x6000_0000_0000, GRANT_MAX + 1], TooLarge),
        (OP_RECV, [1, 0, 0x6000_0000_0000, 10], BadBuffer), // not writable
    ];
    for (l, w, e) in cases {
        assert_eq!(Request::decode(*l, *w), Err(*e), "label {l:#x} words {w:?}");
    }
}

#[test]
fn handles_of_another_netd_are_restarted() {
    use NetError::*;
    let (l, w) = Request::Close { h: make_handle(2, 3) }.encode();
    let r = Request::decode(l, w).unwrap();
    assert_eq!(r.for_epoch(2), Ok(Request::Close { h: 3 }));
    assert_eq!(r.for_epoch(3), Err(Restarted));
    assert_eq!(r.for_epoch(1), Err(Restarted));
    // a handle no netd gave (epoch 0) is unknown, not stale
    assert_eq!(Request::Close { h: 3 }.for_epoch(2), Err(BadHandle));
    let g = Grant { addr: 0x6000_0000_0000, len: 10, writable: true };
    for r in [
        Request::Bind { h: make_handle(1, 1), local: Local::Node, port: 0 },
        Request::Connect { h: make_handle(1, 1), addr: peer(), port: 1 },
        Request::Listen { h: make_handle(1, 1), backlog: 1 },
        Request::Accept { h: make_handle(1, 1) },
        Request::Send { h: make_handle(1, 1), off: 0, grant: g },
        Request::Recv { h: make_handle(1, 1), off: 0, grant: g },
        Request::Shutdown { h: make_handle(1, 1) },
    ] {
        assert_eq!(r.for_epoch(2), Err(Restarted), "{r:?}");
        assert_eq!(r.for_epoch(1).map(|r| r.handle()), Ok(Some(1)), "{r:?}");
    }
    // a POLL from a client holding another netd's handles is answered at once
    assert_eq!(Request::Poll { wait_ms: 1000, epoch: 1 }.for_epoch(2), Err(Restarted));
    assert!(Request::Poll { wait_ms: 1000, epoch: 0 }.for_epoch(2).is_ok());
    assert!(Request::Poll { wait_ms: 1000, epoch: 2 }.for_epoch(2).is_ok());
    assert!(Request::Socket { kind: Kind::Tcp }.for_epoch(9).is_ok());
    // POLL's bits are per slot, whatever the epoch
    assert_eq!(Ready::bit(make_handle(77, 3)), Ready::bit(3));
    assert_eq!((slot_of(make_handle(u32::MAX as u64, 8)), epoch_of(make_handle(u32::MAX as u64, 8))), (8, u32::MAX as u64));
}

fn catenary_notify() -> u64 {
    u64::MAX // what an IPC notification looks like to netd: not a request
}

#[test]
fn random_words_never_panic_and_decode_is_exact() {
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..200_000 {
        let l = OP_BASE + next() % 12;
        let w = [next() % 12, next() % 4, next() % 70000, next() % 70000];
        if let Ok(r) = Request::decode(l, w) {
            // a request that decodes encodes back to the same message (no field ignored),
            // except SEND's grant word (bit 0 is the kernel's writable flag)
            let (l2, w2) = r.encode();
            assert_eq!(l2, l);
            if l != OP_SEND && l != OP_RECV {
                assert_eq!(w2, w);
            }
        }
    }
}

#[test]
fn replies_round_trip() {
    assert_eq!(decode_reply(OK, [1, 2, 3, 4]), Ok([1, 2, 3, 4]));
    for e in NetError::ALL {
        let (l, w) = encode_reply(Err(e));
        assert_eq!(decode_reply(l, w), Err(Some(e)));
    }
    assert_eq!(decode_reply(999, [0; 4]), Err(None));
    let w = accept_reply(3, peer(), 443);
    assert_eq!((w[0], addr_of(w[1], w[2]), w[3]), (3, peer(), 443));
    let w = bind_reply(own(), 8080);
    assert_eq!((w[0], addr_of(w[1], w[2]), w[3]), (8080, own(), 0));
    let r = Ready { readable: Ready::bit(1), writable: Ready::bit(8), acceptable: Ready::bit(2), hangup: Ready::bit(3) };
    assert_eq!(Ready::from_words(r.words()), r);
    assert!(r.any() && !Ready::default().any());
    assert_eq!(Ready::bit(64), 0); // no handle that large: no bit, no overflow
    assert_eq!(NetError::from_code(NetError::TimedOut.code()), Some(NetError::TimedOut));
}

#[test]
fn datagram_header() {
    let h = DgramHeader { addr: peer(), port: 5353 };
    let mut buf = h.encode().to_vec();
    buf.extend_from_slice(b"hello");
    assert_eq!(DgramHeader::decode(&buf), Ok((h, &b"hello"[..])));
    assert_eq!(DgramHeader::decode(&buf[..23]), Err(NetError::BadBuffer));
    let mut bad = buf.clone();
    bad[20] = 1;
    assert_eq!(DgramHeader::decode(&bad), Err(NetError::BadRequest));
    let mut big = h.encode().to_vec();
    big.resize(DGRAM_HEADER + UDP_PAYLOAD_MAX + 1, 0);
    assert_eq!(DgramHeader::decode(&big), Err(NetError::TooLarge));
    big.pop();
    assert!(DgramHeader::decode(&big).is_ok());
}

#[test]
fn sockets_per_client_and_clients_are_bounded() {
    let mut t = SocketTable::new();
    for i in 0..SOCKETS_PER_CLIENT {
        assert_eq!(t.socket(7, Kind::Udp), Ok(i as u64 + 1));
    }
    assert_eq!(t.socket(7, Kind::Udp), Err(NetError::TooManySockets));
    // another client is not affected
    assert_eq!(t.socket(8, Kind::Tcp), Ok(1));
    for c in 9..(9 + CLIENTS_MAX as u64 - 2) {
        assert!(t.socket(c, Kind::Udp).is_ok());
    }
    assert_eq!(t.clients(), CLIENTS_MAX);
    assert_eq!(t.socket(1000, Kind::Udp), Err(NetError::TooManySockets));
    // a closed socket's slot comes back; a client that closes everything leaves the table
    t.close(7, 3).unwrap();
    assert_eq!(t.socket(7, Kind::Udp), Ok(3));
    t.forget_client(8);
    assert_eq!(t.socket(1000, Kind::Udp), Ok(1));
}

#[test]
fn handles_are_per_client() {
    let mut t = SocketTable::new();
    let h = t.socket(1, Kind::Udp).unwrap();
    assert_eq!(t.bind(2, h, Local::Node, 0, addrs()), Err(NetError::BadHandle));
    assert_eq!(t.close(2, h).err(), Some(NetError::BadHandle));
    assert!(t.get(1, h).is_ok());
    assert_eq!(t.get(1, 0).err(), Some(NetError::BadHandle));
    assert_eq!(t.get(1, u64::MAX).err(), Some(NetError::BadHandle));
}

#[test]
fn ports_are_exclusive_per_address_and_kind() {
    let mut t = SocketTable::new();
    let a = t.socket(1, Kind::Udp).unwrap();
    let b = t.socket(2, Kind::Udp).unwrap();
    let c = t.socket(2, Kind::Tcp).unwrap();
    let d = t.socket(3, Kind::Udp).unwrap();
    assert_eq!(t.bind(1, a, Local::Node, 7000, addrs()), Ok((node(), 7000)));
    assert_eq!(t.bind(2, b, Local::Node, 7000, addrs()), Err(NetError::AddrInUse));
    assert_eq!(t.bind(2, c, Local::Node, 7000, addrs()), Ok((node(), 7000)));
    assert_eq!(t.bind(2, b, Local::Own, 7000, addrs()), Ok((own(), 7000)));
    // no task /128: Own is refused
    assert_eq!(t.bind(3, d, Local::Own, 7001, Addrs { node: node(), own: None }), Err(NetError::BadAddress));
    assert_eq!(t.bind(3, d, Local::Node, 51900, addrs()), Err(NetError::BadPort));
    assert_eq!(t.bind(3, d, Local::Node, 51820, addrs()), Err(NetError::BadPort));
    assert_eq!(t.bind(3, d, Local::Node, 5001, addrs()), Err(NetError::BadPort));
    assert_eq!(t.bind(1, a, Local::Node, 7002, addrs()), Err(NetError::BadState));
    t.close(1, a).unwrap();
    assert_eq!(t.bind(3, d, Local::Node, 7000, addrs()), Ok((node(), 7000)));
}

#[test]
fn ephemeral_ports_are_distinct_and_bounded_by_the_client_limits() {
    let mut t = SocketTable::new();
    let span = (*EPHEMERAL.end() - *EPHEMERAL.start()) as usize + 1;
    let mut got = alloc::collections::BTreeSet::new();
    let mut client = 0;
    'outer: loop {
        for _ in 0..SOCKETS_PER_CLIENT {
            let h = match t.socket(client, Kind::Udp) {
                Ok(h) => h,
                Err(_) => break 'outer, // the client bound stops us first
            };
            let (_, p) = t.bind(client, h, Local::Node, 0, addrs()).unwrap();
            assert!(EPHEMERAL.contains(&p) && got.insert(p));
        }
        client += 1;
    }
    assert!(got.len() <= span);
    assert_eq!(got.len(), SOCKETS_MAX.min(CLIENTS_MAX * SOCKETS_PER_CLIENT));
}

#[test]
fn sockets_in_all_are_bounded() {
    let mut t = SocketTable::new();
    let mut n = 0;
    for c in 0..CLIENTS_MAX as u64 {
        while t.socket(c, Kind::Tcp).is_ok() {
            n += 1;
        }
    }
    assert_eq!(n, SOCKETS_MAX);
    assert_eq!(t.len(), SOCKETS_MAX);
    // a connection a listener accepted counts too
    let l = t.handles(0)[0];
    t.bind(0, l, Local::Node, 80, addrs()).unwrap();
    t.listen(0, l, 1).unwrap();
    t.close(1, 1).unwrap();
    t.close(0, 2).unwrap();
    assert!(t.accepted(0, l, (peer(), 1)).is_ok());
    assert_eq!(t.accepted(0, l, (peer(), 2)), Err(NetError::TooManySockets));
    // a client that dies gives everything back
    let before = t.len();
    let gone = t.forget_client(3);
    assert_eq!(gone.len(), SOCKETS_PER_CLIENT);
    assert_eq!(t.len(), before - SOCKETS_PER_CLIENT);
    assert!(t.handles(3).is_empty() && !t.client_ids().contains(&3));
}

#[test]
fn tcp_state_machine() {
    let mut t = SocketTable::new();
    let l = t.socket(1, Kind::Tcp).unwrap();
    assert_eq!(t.listen(1, l, 2), Err(NetError::BadState)); // not bound
    t.bind(1, l, Local::Own, 8080, addrs()).unwrap();
    assert_eq!(t.accepted(1, l, (peer(), 5000)), Err(NetError::BadState)); // not listening
    t.listen(1, l, 2).unwrap();
    assert_eq!(t.check_send(1, l, None), Err(NetError::NotConnected));
    let n = t.accepted(1, l, (peer(), 5000)).unwrap();
    assert_eq!(t.check_send(1, n, None), Ok(None));
    assert_eq!(t.connect(1, n, peer(), 1, addrs()), Err(NetError::BadState));
    let c = t.socket(1, Kind::Tcp).unwrap();
    assert_eq!(t.connect(1, c, "ff02::1".parse().unwrap(), 80, addrs()), Err(NetError::BadAddress));
    assert_eq!(t.connect(1, c, Ipv6Addr::UNSPECIFIED, 80, addrs()), Err(NetError::BadAddress));
    assert_eq!(t.connect(1, c, peer(), 0, addrs()), Err(NetError::BadPort));
    let (a, p) = t.connect(1, c, peer(), 80, addrs()).unwrap();
    assert_eq!(a, node());
    assert!(EPHEMERAL.contains(&p));
    assert_eq!(t.check_send(1, c, None), Err(NetError::WouldBlock));
    assert_eq!(t.check_recv(1, c), Err(NetError::WouldBlock));
    assert_eq!(t.connect(1, c, peer(), 80, addrs()), Err(NetError::BadState));
    t.get_mut(1, c).unwrap().state = State::Closed;
    assert_eq!(t.check_send(1, c, None), Err(NetError::Reset));
    assert_eq!(t.check_recv(1, c), Ok(()));
    assert_eq!(t.listen(1, c, 1), Err(NetError::BadState));
}

#[test]
fn udp_send_needs_a_destination() {
    let mut t = SocketTable::new();
    let u = t.socket(1, Kind::Udp).unwrap();
    assert_eq!(t.check_send(1, u, Some((peer(), 53))), Err(NetError::BadState)); // unbound
    t.bind(1, u, Local::Node, 0, addrs()).unwrap();
    assert_eq!(t.check_send(1, u, None), Err(NetError::NotConnected));
    assert_eq!(t.check_send(1, u, Some((peer(), 53))), Ok(Some((peer(), 53))));
    assert_eq!(t.check_send(1, u, Some((Ipv6Addr::LOCALHOST, 53))), Err(NetError::BadAddress));
    assert_eq!(t.check_send(1, u, Some((peer(), 0))), Err(NetError::BadPort));
    t.connect(1, u, peer(), 53, addrs()).unwrap();
    assert_eq!(t.check_send(1, u, None), Ok(Some((peer(), 53))));
    assert_eq!(t.listen(1, u, 1), Err(NetError::BadState));
}

#[test]
fn fuzzing_inputs_never_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..300 {
        let data: alloc::vec::Vec<u8> = (0..(n * 7) % 2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        crate::fuzzing::run(&data);
    }
}
