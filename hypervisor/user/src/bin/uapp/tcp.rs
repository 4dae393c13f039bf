//! uapp's TCP roles over the IPC socket protocol (through `netd`'s endpoint in slot 1; the
//! kernel probes in `kernel/src/netdprobe.rs` start them, `net_netd_tcp` in xtask checks
//! their logs).
//!
//! - [`server`]: an echo server on this task's own /128 (several connections at once, each
//!   answered with what it sent, with bounded buffers: it reads a connection only when it has
//!   sent back what it read before, so a fast sender is held back by TCP's flow control).
//! - [`client`]: against that server: concurrent connections, 1 MiB checksummed, a refused
//!   connect, hostile TCP requests.
//! - [`dier`]: connects, sends, and exits without closing: its `netd` closes its sockets.

use catenary_netsock::*;
use catenary_user::netsock_client::{SockError, SockResult, Sockets};
use catenary_user::*;
use core::net::Ipv6Addr;

const NETD: Sockets = Sockets { slot: 1 };
/// Per-connection buffers (page-aligned, lent to `netd` for each call).
const BUFS: u64 = 0x5100_0000;
const BUF_LEN: u64 = 8192;
fn buf_va(i: u64) -> u64 {
    BUFS + i * 0x4000
}

fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}
const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

/// The byte at offset `i` of the large transfer.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 13) as u8 ^ (i as u8)
}

/// The buffers, and a heap (uapp's other roles need none).
fn map_bufs(n: u64) -> Option<alloc::vec::Vec<Pages>> {
    if !dma::init_mapped(HEAP_PAGES) {
        return None;
    }
    (0..n).map(|i| Pages::map(buf_va(i), 2).ok()).collect()
}
const HEAP_PAGES: u64 = 64;

fn read(m: &Mem, off: u64, n: usize) -> alloc::vec::Vec<u8> {
    let mut v = alloc::vec![0u8; n];
    m.read(off, &mut v);
    v
}

extern crate alloc;

/// A connection of the echo server: what it read and has not sent back yet.
struct Conn {
    h: Handle,
    peer: (Ipv6Addr, u16),
    pending: usize,
    sent_back: usize,
    total: usize,
    first: [u8; 24],
    first_len: usize,
    eof: bool,
}

/// ROLE_TCP_SERVER: echo on this task's own /128, port `port`.
pub fn server(port: u16) -> u64 {
    let Some(bufs) = map_bufs(9) else { return 1 };
    let Ok(l) = NETD.socket(Kind::Tcp) else { return 2 };
    let (addr, p) = match NETD.bind(l, Local::Own, port) {
        Ok(x) => x,
        Err(e) => {
            logf!("tcp echo: cannot bind its own /128: {:?}", e);
            return 3;
        }
    };
    if NETD.listen(l, BACKLOG_MAX as u8).is_err() {
        return 4;
    }
    logf!("tcp echo: listening on its own /128 [{}]:{} (backlog {})", addr, p, BACKLOG_MAX);
    let mut conns: alloc::vec::Vec<Conn> = alloc::vec::Vec::new();
    let mut served = 0u64;
    loop {
        let Ok(r) = NETD.poll(2000) else {
            sleep_ns(100_000_000);
            continue;
        };
        if r.acceptable & Ready::bit(l) != 0 {
            while let Ok((h, a, pp)) = NETD.accept(l) {
                served += 1;
                if served <= 12 {
                    logf!("tcp echo: connection {} from [{}]:{} (handle {}, {} open)", served, a, pp, h, conns.len() + 1);
                }
                conns.push(Conn { h, peer: (a, pp), pending: 0, sent_back: 0, total: 0, first: [0; 24], first_len: 0, eof: false });
            }
        }
        let mut i = 0;
        while i < conns.len() {
            let c = &mut conns[i];
            let b = &bufs[slot_of(c.h) as usize];
            let mut done = false;
            // send back what was read; read more only when all of it went (bounded buffer)
            if c.pending > c.sent_back {
                // grants are whole pages: what is left goes to the front of the buffer
                match NETD.send(c.h, b, (c.pending - c.sent_back) as u64) {
                    Ok(n) => {
                        c.sent_back += n;
                        if c.sent_back < c.pending {
                            b.write(0, &read(b, n as u64, c.pending - c.sent_back));
                            c.pending -= c.sent_back;
                            c.sent_back = 0;
                        }
                    }
                    Err(SockError::Net(NetError::WouldBlock)) => {}
                    Err(e) => {
                        logf!("tcp echo: connection from [{}]:{}: send failed: {:?}", c.peer.0, c.peer.1, e);
                        done = true;
                    }
                }
            }
            if !done && c.pending == c.sent_back && !c.eof {
                c.pending = 0;
                c.sent_back = 0;
                match NETD.recv(c.h, b, BUF_LEN) {
                    Ok(0) => c.eof = true,
                    Ok(n) => {
                        if c.first_len == 0 {
                            c.first_len = n.min(24);
                            b.read(0, &mut c.first[..c.first_len]);
                        }
                        c.pending = n;
                        c.total += n;
                    }
                    Err(SockError::Net(NetError::WouldBlock)) => {}
                    Err(e) => {
                        logf!("tcp echo: connection from [{}]:{}: receive failed: {:?} after {} bytes", c.peer.0, c.peer.1, e, c.total);
                        done = true;
                    }
                }
            }
            if c.eof && c.pending == c.sent_back {
                let first = core::str::from_utf8(&c.first[..c.first_len]).unwrap_or("?");
                logf!("tcp echo: connection from [{}]:{} ended by the peer (FIN) after {} bytes (first: \"{}\")", c.peer.0, c.peer.1, c.total, first);
                done = true;
            }
            if done {
                let _ = NETD.close(c.h);
                conns.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// Connect, waiting until established (retrying a refusal while the server starts).
fn connect(local: Local, peer: Ipv6Addr, port: u16, within_ns: u64, scratch: &Mem) -> SockResult<Handle> {
    let t0 = now_ns();
    loop {
        let h = NETD.socket(Kind::Tcp)?;
        NETD.bind(h, local, 0)?;
        NETD.connect(h, peer, port)?;
        let r = established(h, scratch);
        match r {
            Ok(()) => return Ok(h),
            Err(e) => {
                let _ = NETD.close(h);
                if now_ns() - t0 > within_ns || !(e.is(NetError::Refused) || e.is(NetError::TimedOut)) {
                    return Err(e);
                }
                sleep_ns(500_000_000);
            }
        }
    }
}

/// Wait until `h` is connected (writable) or failed (the error).
fn established(h: Handle, scratch: &Mem) -> SockResult<()> {
    loop {
        let r = NETD.poll(1000)?;
        if r.hangup & Ready::bit(h) != 0 {
            // the error is what RECV answers now (a server that answers nothing first: no
            // data is lost here)
            return NETD.recv(h, scratch, 16).map(|_| ());
        }
        if r.writable & Ready::bit(h) != 0 {
            return Ok(());
        }
    }
}

/// Send all of `data` (from `at`) and read the echo back on `h`, concurrently.
fn echo_all(h: Handle, total: usize, fill: &dyn Fn(u64, usize) -> alloc::vec::Vec<u8>, at: &Mem, into: &Mem) -> SockResult<(usize, u64, u64)> {
    let (mut sent, mut got) = (0usize, 0usize);
    let (mut hs, mut hr) = (FNV0, FNV0);
    let mut staged = 0usize; // bytes at `at` from offset `sent`
    let mut shut = false;
    while got < total {
        if sent < total {
            if staged == 0 {
                let v = fill(sent as u64, (total - sent).min(BUF_LEN as usize));
                at.write(0, &v);
                staged = v.len();
            }
            match NETD.send(h, at, staged as u64) {
                Ok(n) => {
                    hs = fnv(hs, &read(at, 0, n));
                    sent += n;
                    if n < staged {
                        // keep the rest: move it to the front
                        let rest = read(at, n as u64, staged - n);
                        at.write(0, &rest);
                    }
                    staged -= n;
                }
                Err(SockError::Net(NetError::WouldBlock)) => {}
                Err(e) => return Err(e),
            }
        } else if !shut {
            NETD.shutdown(h)?;
            shut = true;
        }
        match NETD.recv(h, into, BUF_LEN) {
            Ok(0) => break,
            Ok(n) => {
                hr = fnv(hr, &read(into, 0, n));
                got += n;
            }
            Err(SockError::Net(NetError::WouldBlock)) => {
                let _ = NETD.poll(50);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((got, hs, hr))
}

/// ROLE_TCP_CLIENT: against the echo server at `peer`:`port`. Exit code: one bit per check
/// passed (bit 0 concurrent, 1 large transfer, 2 refused, 3 hostile requests).
pub fn client(peer: Ipv6Addr, port: u16) -> u64 {
    let Some(bufs) = map_bufs(9) else { return 0 };
    let mut ok = 0u64;
    // 1. several connections at once, from this task's own /128
    let mut hs = alloc::vec::Vec::new();
    for i in 0..3 {
        match connect(Local::Own, peer, port, 120_000_000_000, &bufs[0]) {
            Ok(h) => hs.push(h),
            Err(e) => {
                logf!("tcp client: connection {} to [{}]:{} failed: {:?}", i + 1, peer, port, e);
                return ok;
            }
        }
    }
    logf!("tcp client: {} connections open at once to [{}]:{}", hs.len(), peer, port);
    let mut answered = 0;
    for (i, h) in hs.iter().enumerate() {
        let mut text = Line::new();
        let _ = core::fmt::Write::write_fmt(&mut text, format_args!("catenary request {} on handle {}", i + 1, h));
        bufs[slot_of(*h) as usize].write(0, text.as_str().as_bytes());
        if NETD.send(*h, &bufs[slot_of(*h) as usize], text.as_str().len() as u64) != Ok(text.as_str().len()) {
            logf!("tcp client: request {} not taken", i + 1);
        }
    }
    // answers read in reverse order: each connection is independent
    for (i, h) in hs.iter().enumerate().rev() {
        let mut text = Line::new();
        let _ = core::fmt::Write::write_fmt(&mut text, format_args!("catenary request {} on handle {}", i + 1, h));
        let want = text.as_str().as_bytes();
        let mut got = alloc::vec::Vec::new();
        let t0 = now_ns();
        while got.len() < want.len() && now_ns() - t0 < 20_000_000_000 {
            match NETD.recv(*h, &bufs[7], BUF_LEN) {
                Ok(0) => break,
                Ok(n) => got.extend(read(&bufs[7], 0, n)),
                Err(SockError::Net(NetError::WouldBlock)) => {
                    let _ = NETD.poll(100);
                }
                Err(_) => break,
            }
        }
        if got == want {
            answered += 1;
        }
    }
    for h in &hs {
        let _ = NETD.close(*h);
    }
    logf!("tcp client: {}/3 concurrent connections answered", answered);
    if answered == 3 {
        ok |= 1;
    }
    // 2. 1 MiB through one connection, checksummed both ways
    const TOTAL: usize = 1 << 20;
    match connect(Local::Own, peer, port, 30_000_000_000, &bufs[0]) {
        Ok(h) => {
            let t0 = now_ns();
            let fill = |off: u64, n: usize| (0..n as u64).map(|i| pattern(off + i)).collect::<alloc::vec::Vec<u8>>();
            let r = echo_all(h, TOTAL, &fill, &bufs[5], &bufs[6]);
            let ms = (now_ns() - t0) / 1_000_000;
            let want = (0..TOTAL as u64).fold(FNV0, |h, i| fnv(h, &[pattern(i)]));
            match r {
                Ok((got, hs, hr)) => {
                    let good = got == TOTAL && hs == want && hr == want;
                    logf!("tcp client: {} of {} bytes echoed in {} ms ({} KiB/s), checksum {} (sent {:#x}, received {:#x})",
                        got, TOTAL, ms, (got as u64 * 1000 / ms.max(1)) / 1024, if good { "ok" } else { "WRONG" }, hs, hr);
                    if good {
                        ok |= 2;
                    }
                }
                Err(e) => logf!("tcp client: large transfer failed after {} ms: {:?}", ms, e),
            }
            let _ = NETD.close(h);
        }
        Err(e) => logf!("tcp client: large transfer: no connection: {:?}", e),
    }
    // 3. a port nothing listens on: refused
    let r = NETD.socket(Kind::Tcp).and_then(|h| {
        NETD.connect(h, peer, 9)?;
        let r = established(h, &bufs[0]);
        let _ = NETD.close(h);
        r
    });
    logf!("tcp client: connect to [{}]:9 (nothing listens) -> {:?}", peer, r);
    if r == Err(SockError::Net(NetError::Refused)) {
        ok |= 4;
    }
    // 4. hostile TCP requests: each gets its error, netd answers the next
    let mut refused = 0;
    let mut check = |what: &str, r: SockResult<[u64; 4]>, want: NetError| {
        if r == Err(SockError::Net(want)) {
            refused += 1;
        }
        logf!("tcp client: {} -> {:?} (want {:?})", what, r.map(|w| w[0]), want);
    };
    let t = NETD.socket(Kind::Tcp).unwrap_or(0);
    let u = NETD.socket(Kind::Udp).unwrap_or(0);
    check("send on a TCP socket never connected", NETD.send(t, &bufs[0], 10).map(|n| [n as u64, 0, 0, 0]), NetError::NotConnected);
    check("receive on a TCP socket never connected", NETD.recv(t, &bufs[0], 10).map(|n| [n as u64, 0, 0, 0]), NetError::BadState);
    check("accept on a socket that does not listen", NETD.raw(OP_ACCEPT, [t, 0, 0, 0]), NetError::BadState);
    check("listen with a backlog of 5", NETD.raw(OP_LISTEN, [t, 5, 0, 0]), NetError::BadRequest);
    check("listen before bind", NETD.raw(OP_LISTEN, [t, 1, 0, 0]), NetError::BadState);
    check("listen on UDP", NETD.bind(u, Local::Node, 0).map(|_| [0; 4]).and_then(|_| NETD.raw(OP_LISTEN, [u, 1, 0, 0])), NetError::BadState);
    check("shutdown of UDP", NETD.raw(OP_SHUTDOWN, [u, 0, 0, 0]), NetError::BadState);
    check("connect to a /128 outside the cluster", NETD.raw(OP_CONNECT, [t, 0xfd99_0000_0000_0000, 1, 80]), NetError::Unreachable);
    check("connect to a multicast /128", NETD.raw(OP_CONNECT, [t, 0xff02_0000_0000_0000, 1, 80]), NetError::BadAddress);
    check("poll waiting longer than allowed", NETD.raw(OP_POLL, [POLL_WAIT_MAX_MS + 1, 0, 0, 0]), NetError::BadRequest);
    check("connect twice", NETD.raw(OP_CONNECT, [t, peer_hi(peer), peer_lo(peer), port as u64]).and_then(|_| NETD.raw(OP_CONNECT, [t, peer_hi(peer), peer_lo(peer), port as u64])), NetError::BadState);
    let _ = NETD.close(t);
    let _ = NETD.close(u);
    logf!("tcp client: {}/11 hostile TCP requests refused as expected", refused);
    if refused == 11 {
        ok |= 8;
    }
    ok
}

fn peer_hi(a: Ipv6Addr) -> u64 {
    (u128::from_be_bytes(a.octets()) >> 64) as u64
}
fn peer_lo(a: Ipv6Addr) -> u64 {
    u128::from_be_bytes(a.octets()) as u64
}

/// ROLE_TCP_DIER: a task without a /128 of its own (its `Own` bind is refused: it cannot
/// borrow another task's), connects from the node's /128, sends, and exits with the
/// connection open: its `netd` must close it (the server sees the FIN).
pub fn dier(peer: Ipv6Addr, port: u16) -> u64 {
    let Some(bufs) = map_bufs(1) else { return 0 };
    let mut code = 0;
    match NETD.socket(Kind::Tcp).and_then(|h| NETD.bind(h, Local::Own, 0)) {
        Err(SockError::Net(NetError::BadAddress)) => code |= 1,
        r => logf!("tcp dier: bind to Own without a /128 of its own -> {:?}", r),
    }
    let h = match connect(Local::Node, peer, port, 60_000_000_000, &bufs[0]) {
        Ok(h) => h,
        Err(e) => {
            logf!("tcp dier: no connection: {:?}", e);
            return code;
        }
    };
    let msg = b"catenary dier";
    bufs[0].write(0, msg);
    if NETD.send(h, &bufs[0], msg.len() as u64) == Ok(msg.len()) {
        code |= 2;
    }
    // a listener too, so that the server side has more than one socket to close
    if let Ok(l) = NETD.socket(Kind::Tcp) {
        let _ = NETD.bind(l, Local::Node, 0).and_then(|_| NETD.listen(l, 2));
    }
    sleep_ns(300_000_000);
    logf!("tcp dier: connected to [{}]:{}, sent {} bytes; exiting without closing its sockets", peer, port, msg.len());
    code
}
