//! The fuzz entry point (target `requests` in `hypervisor/netsock/fuzz`, and the host test
//! `fuzzing_inputs_never_panic`): arbitrary bytes read as a sequence of requests from a few
//! clients, decoded and applied to a [`SocketTable`] the way `netd` applies them, with the
//! table's bounds checked after every step.

use crate::table::{Addrs, SocketTable, State};
use crate::{slot_of, DgramHeader, Request, CLIENTS_MAX, SOCKETS_MAX, SOCKETS_PER_CLIENT};
use core::net::Ipv6Addr;

fn word(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = d.len().min(8);
    b[..n].copy_from_slice(&d[..n]);
    u64::from_le_bytes(b)
}

/// Run one input. Panics only if a bound is broken (that is the finding).
pub fn run(data: &[u8]) {
    let mut t = SocketTable::new();
    let addrs = [
        Addrs { node: "fd00::1".parse().unwrap(), own: None },
        Addrs { node: "fd00::1".parse().unwrap(), own: Some("fd00::200:0:0:1".parse::<Ipv6Addr>().unwrap()) },
    ];
    // steps of 42 bytes: client (1), label selector (1), 4 words (32), buffer seed (8)
    for step in data.chunks(42) {
        if step.len() < 2 {
            break;
        }
        let client = (step[0] % 40) as u64; // more clients than the bound
        let label = crate::OP_BASE + (step[1] % 12) as u64;
        let w = [word(&step[2..]), word(step.get(10..).unwrap_or(&[])), word(step.get(18..).unwrap_or(&[])), word(step.get(26..).unwrap_or(&[]))];
        // small values are the interesting ones: fold most words into a small range
        let w = w.map(|x| if x & 0x8000_0000_0000_0000 != 0 { x } else { x % 70_000 });
        let a = addrs[(client % 2) as usize];
        let _ = DgramHeader::decode(step.get(2..).unwrap_or(&[]));
        let req = Request::decode(label, w);
        // what netd checks first: the handle's epoch (netd 1 here); the table sees the slot
        if let Ok(r) = req {
            if let Ok(r2) = r.for_epoch(1) {
                assert_eq!(r2.handle().map(|h| h <= SOCKETS_PER_CLIENT as u64), r.handle().map(|_| true));
            }
        }
        match req {
            Ok(Request::Socket { kind }) => {
                let _ = t.socket(client, kind);
            }
            Ok(Request::Bind { h, local, port }) => {
                let _ = t.bind(client, slot_of(h), local, port, a);
            }
            Ok(Request::Connect { h, addr, port }) => {
                let _ = t.connect(client, slot_of(h), addr, port, a);
            }
            Ok(Request::Listen { h, backlog }) => {
                let _ = t.listen(client, slot_of(h), backlog);
            }
            Ok(Request::Accept { h }) => {
                let _ = t.accepted(client, slot_of(h), ("fd01::1".parse().unwrap(), 4000));
            }
            Ok(Request::Send { h, .. }) => {
                let _ = t.check_send(client, slot_of(h), None);
            }
            Ok(Request::Recv { h, .. }) => {
                let _ = t.check_recv(client, slot_of(h));
            }
            Ok(Request::Close { h }) => {
                let _ = t.close(client, slot_of(h));
            }
            Ok(Request::Shutdown { h }) => {
                // what netd does when the stack reports a state change
                let st = [State::Connected, State::Closed][(w[1] & 1) as usize];
                if t.get(client, slot_of(h)).is_ok_and(|s| s.kind == crate::Kind::Tcp && !matches!(s.state, State::Listening(_))) {
                    let _ = t.set_state(client, slot_of(h), st);
                }
            }
            Ok(Request::Poll { .. }) => {
                for h in t.handles(client) {
                    assert!(t.get(client, slot_of(h)).is_ok());
                }
            }
            Err(_) => {}
        }
        if step[1] == 0xff {
            t.forget_client(client);
        }
        assert!(t.clients() <= CLIENTS_MAX);
        assert!(t.len() <= SOCKETS_MAX);
        assert!(t.handles(client).len() <= SOCKETS_PER_CLIENT);
        assert!(t.client_ids().len() == t.clients());
    }
}
