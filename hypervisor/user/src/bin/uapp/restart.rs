//! uapp's roles for `netd` restarts under socket clients (`net_netd_socket_restart`; the
//! kernel probe is `kernel/src/tcpprobe.rs`, `net.sockrestart`/`net.restartpeer`).
//!
//! - [`client`] (node1, its own task /128): a TCP listener (port 8), a bound UDP socket
//!   (port 9) and a connection to node2's echo server; echoes data through the connection
//!   from buffers that do not start on a page; tells the probe it is mid-transfer (answers
//!   its call), goes on transferring while the probe kills `netd`, and checks that every
//!   operation on its old sockets answers `Restarted` (none hangs, none succeeds); then opens
//!   the listener and the UDP socket again and serves node2's peer through them.
//! - [`peer`] (node2): until it gets an echo, connects to the client's port 8 and sends a UDP
//!   datagram to its port 9 (from the node's /128), once a second.

use catenary_netsock::*;
use catenary_user::netsock_client::{SockError, SockResult, Sockets};
use catenary_user::*;
use core::net::Ipv6Addr;

extern crate alloc;

const NETD: Sockets = Sockets { slot: 1 };
/// Two regions of two pages each: data sent, data received; one page for UDP.
const BUFS: u64 = 0x5200_0000;
/// Where in its region the data starts: 11 bytes before the page boundary (sent), 7 bytes
/// in (received), so no buffer starts on a page and the sent one spans two.
const TX_OFF: u64 = 0x1000 - 11;
const RX_OFF: u64 = 7;
const UDP_OFF: u64 = 0x333;
const CHUNK: usize = 3000;
const LISTEN_PORT: u16 = 8;
const UDP_PORT: u16 = 9;
const SEC: u64 = 1_000_000_000;

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 11) as u8 ^ 0x5a
}

fn read(m: &Mem, off: u64, n: usize) -> alloc::vec::Vec<u8> {
    let mut v = alloc::vec![0u8; n];
    m.read(off, &mut v);
    v
}

/// The regions: sent, received, UDP (and a heap).
struct Bufs {
    tx: Pages,
    rx: Pages,
    udp: Pages,
}

fn map_bufs() -> Option<Bufs> {
    if !dma::init_mapped(32) {
        return None;
    }
    Some(Bufs { tx: Pages::map(BUFS, 2).ok()?, rx: Pages::map(BUFS + 0x4000, 2).ok()?, udp: Pages::map(BUFS + 0x8000, 1).ok()? })
}

/// Wait until `h` is connected (writable) or failed.
fn established(b: &Bufs, h: Handle, within_ns: u64) -> SockResult<()> {
    let t0 = now_ns();
    while now_ns() - t0 < within_ns {
        let r = NETD.poll(1000)?;
        if r.hangup & Ready::bit(h) != 0 {
            return NETD.recv_at(h, &b.rx, RX_OFF, 16).map(|_| ());
        }
        if r.writable & Ready::bit(h) != 0 {
            return Ok(());
        }
    }
    Err(SockError::Net(NetError::TimedOut))
}

/// One echo round trip of `CHUNK` bytes (offset `at` of the pattern) on `h`: the bytes sent
/// and whether what came back is what went.
fn round_trip(b: &Bufs, h: Handle, at: u64, within_ns: u64) -> SockResult<bool> {
    let data: alloc::vec::Vec<u8> = (0..CHUNK as u64).map(|i| pattern(at + i)).collect();
    b.tx.write(TX_OFF, &data);
    let mut sent = 0;
    let mut back = alloc::vec::Vec::new();
    let t0 = now_ns();
    while back.len() < CHUNK {
        if now_ns() - t0 > within_ns {
            return Err(SockError::Net(NetError::TimedOut));
        }
        if sent < CHUNK {
            match NETD.send_at(h, &b.tx, TX_OFF + sent as u64, (CHUNK - sent) as u64) {
                Ok(n) => sent += n,
                Err(SockError::Net(NetError::WouldBlock)) => {}
                Err(e) => return Err(e),
            }
        }
        match NETD.recv_at(h, &b.rx, RX_OFF, CHUNK as u64) {
            Ok(0) => return Err(SockError::Net(NetError::NotConnected)),
            Ok(n) => back.extend(read(&b.rx, RX_OFF, n)),
            Err(SockError::Net(NetError::WouldBlock)) => {
                NETD.poll(20)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(back == data)
}

/// ROLE_RESTART_CLIENT: node2's echo server at `peer`:`port`. Exit code bits: 1 set up and
/// unaligned echoes right, 2 the connection's next operation after the kill was `Restarted`,
/// 4 the listener, the UDP socket and `POLL` all `Restarted` too, 8 listener and UDP socket
/// open again, 16 a new connection accepted and echoed, 32 a UDP datagram echoed, 64 the
/// unaligned-buffer refusals.
pub fn client(peer: Ipv6Addr, port: u16) -> u64 {
    let Some(b) = map_bufs() else { return 0 };
    let mut code = 0u64;
    let Ok((l, la, lp)) = NETD.tcp_listener(Local::Own, LISTEN_PORT, 2) else { return code };
    let Ok((u, _, up)) = NETD.udp_bound(Local::Own, UDP_PORT) else { return code };
    logf!("restart client: listening on [{}]:{} (handle {:#x}), UDP port {} (handle {:#x}); epoch {}", la, lp, l, up, u, epoch_of(l));
    // the connection (node2's echo server may not be up yet: retry)
    let t0 = now_ns();
    let c = loop {
        let r = NETD.socket(Kind::Tcp).and_then(|h| {
            NETD.bind(h, Local::Own, 0)?;
            NETD.connect(h, peer, port)?;
            match established(&b, h, 20 * SEC) {
                Ok(()) => Ok(h),
                Err(e) => {
                    let _ = NETD.close(h);
                    Err(e)
                }
            }
        });
        match r {
            Ok(h) => break h,
            Err(e) if now_ns() - t0 > 150 * SEC => {
                logf!("restart client: no connection to [{}]:{}: {:?}", peer, port, e);
                return code;
            }
            Err(_) => sleep_ns(SEC / 2),
        }
    };
    // unaligned buffers: several round trips, data compared
    let mut good = 0;
    let mut at = 0u64;
    for _ in 0..4 {
        if round_trip(&b, c, at, 30 * SEC) == Ok(true) {
            good += 1;
        }
        at += CHUNK as u64;
    }
    logf!("restart client: unaligned buffers: {}/4 round trips of {} bytes sent from {:#x} and received at {:#x} came back equal", good, CHUNK, b.tx.addr() + TX_OFF, b.rx.addr() + RX_OFF);
    if good == 4 {
        code |= 1;
    }
    // misuse of buffers: errors, never a fault
    let past = NETD.send_at(c, &b.udp, 0x1000 - 5, 100); // runs past its region
    let wrap = NETD.recv_at(c, &b.rx, u64::MAX - 10, 100);
    let off = NETD.raw(OP_SEND, [c, OFFSET_MAX + 1, 0, 0]);
    logf!("restart client: a buffer running past its memory -> {:?}, one wrapping the address space -> {:?}, an offset over {} -> {:?}", past, wrap, OFFSET_MAX, off);
    if past == Err(SockError::Net(NetError::BadBuffer)) && wrap == Err(SockError::Net(NetError::BadBuffer)) && off == Err(SockError::Net(NetError::BadRequest)) {
        code |= 64;
    }
    // mid-transfer: a chunk in flight, answer the probe's call (it kills netd now) and go
    // on until an error
    b.tx.write(TX_OFF, &(0..CHUNK as u64).map(|i| pattern(at + i)).collect::<alloc::vec::Vec<u8>>());
    let _ = NETD.send_at(c, &b.tx, TX_OFF, CHUNK as u64);
    let Ok(m) = recv(0, 0) else { return code };
    let _ = reply(m.reply, 0, [at, 0, 0, 0]);
    logf!("restart client: told the probe: mid-transfer ({} bytes echoed)", at);
    let t1 = now_ns();
    let err = loop {
        match round_trip(&b, c, at, 90 * SEC) {
            Ok(_) => at += CHUNK as u64,
            Err(e) => break e,
        }
        if now_ns() - t1 > 120 * SEC {
            break SockError::Net(NetError::WouldBlock); // no error for 2 minutes: wrong
        }
    };
    logf!("restart client: the connection's next operation after the kill: Err({:?}) after {} ms ({} bytes echoed in all)", err, (now_ns() - t1) / 1_000_000, at);
    if err == SockError::Net(NetError::Restarted) {
        code |= 2;
    }
    // every old socket says so, at once
    let again = NETD.send_at(c, &b.tx, TX_OFF, 10);
    let acc = NETD.accept(l);
    let ur = NETD.recv_at(u, &b.udp, UDP_OFF, 100);
    let t2 = now_ns();
    let pl = NETD.poll(30_000);
    let poll_ms = (now_ns() - t2) / 1_000_000;
    logf!("restart client: after the kill: send on the connection -> {:?}, accept on the listener -> {:?}, UDP receive -> {:?}, poll(30 s) -> {:?} in {} ms",
        again, acc, ur, pl, poll_ms);
    let r = SockError::Net(NetError::Restarted);
    if again == Err(r) && acc.err() == Some(r) && ur == Err(r) && pl.err() == Some(r) {
        code |= 4;
    }
    let _ = NETD.close(c); // Restarted too: nothing to free
    // open them again
    let t3 = now_ns();
    let (l2, u2) = loop {
        match (NETD.tcp_listener(Local::Own, LISTEN_PORT, 2), NETD.udp_bound(Local::Own, UDP_PORT)) {
            (Ok(a), Ok(b)) => break (a, b),
            (a, b) if now_ns() - t3 > 30 * SEC => {
                logf!("restart client: cannot open the listener and the UDP socket again: {:?} {:?}", a.err(), b.err());
                return code;
            }
            _ => sleep_ns(SEC / 4),
        }
    };
    logf!("restart client: reopened: listening on [{}]:{} (handle {:#x}), UDP port {} (handle {:#x}); epoch {} (was {})",
        l2.1, l2.2, l2.0, u2.2, u2.0, epoch_of(l2.0), epoch_of(l));
    code |= 8;
    // serve the peer: one connection echoed, one datagram echoed
    let t4 = now_ns();
    let (mut tcp_done, mut udp_done) = (false, false);
    let mut conn: Option<(Handle, Ipv6Addr)> = None;
    while !(tcp_done && udp_done) && now_ns() - t4 < 200 * SEC {
        let _ = NETD.poll(500);
        if conn.is_none() {
            if let Ok((h, a, p)) = NETD.accept(l2.0) {
                logf!("restart client: accepted a connection from [{}]:{} on the new listener", a, p);
                conn = Some((h, a));
            }
        }
        if let Some((h, a)) = conn {
            match NETD.recv_at(h, &b.rx, RX_OFF, 512) {
                Ok(n) if n > 0 => {
                    let data = read(&b.rx, RX_OFF, n);
                    b.tx.write(TX_OFF, &data);
                    if NETD.send_at(h, &b.tx, TX_OFF, n as u64) == Ok(n) {
                        logf!("restart client: echoed {} bytes to [{}] through the new listener's connection", n, a);
                        tcp_done = true;
                    }
                }
                Err(SockError::Net(NetError::WouldBlock)) => {}
                _ => {
                    let _ = NETD.close(h);
                    conn = None;
                }
            }
        }
        if !udp_done {
            if let Ok(n) = NETD.recv_at(u2.0, &b.udp, UDP_OFF, 1024) {
                let raw = read(&b.udp, UDP_OFF, DGRAM_HEADER);
                let from = DgramHeader::decode(&raw).ok().map(|h| h.0.addr);
                if NETD.send_at(u2.0, &b.udp, UDP_OFF, n as u64).is_ok() {
                    logf!("restart client: echoed a UDP datagram ({} bytes) from {:?} on the new socket", n - DGRAM_HEADER, from);
                    udp_done = true;
                }
            }
        }
    }
    if tcp_done {
        code |= 16;
    }
    if udp_done {
        code |= 32;
    }
    // let the last segments go before exiting
    sleep_ns(2 * SEC);
    code
}

/// ROLE_RESTART_PEER: the client's /128 `peer`: TCP port 8 and UDP port 9, from the node's
/// /128, until each has echoed once. Exit code bits: 1 TCP echoed, 2 UDP echoed.
pub fn peer(peer: Ipv6Addr) -> u64 {
    let Some(b) = map_bufs() else { return 0 };
    let (mut tcp_ok, mut udp_ok) = (false, false);
    let (mut tries, mut utries) = (0u32, 0u32);
    let Ok((u, _, _)) = NETD.udp_bound(Local::Node, 0) else { return 0 };
    let t0 = now_ns();
    while !(tcp_ok && udp_ok) && now_ns() - t0 < 400 * SEC {
        if !tcp_ok {
            tries += 1;
            let msg = b"hello through the new listener";
            let r = NETD.socket(Kind::Tcp).and_then(|h| {
                let r = (|| {
                    NETD.bind(h, Local::Node, 0)?;
                    NETD.connect(h, peer, LISTEN_PORT)?;
                    established(&b, h, 10 * SEC)?;
                    b.tx.write(0, msg);
                    NETD.send(h, &b.tx, msg.len() as u64)?;
                    let t = now_ns();
                    let mut back = alloc::vec::Vec::new();
                    while back.len() < msg.len() && now_ns() - t < 5 * SEC {
                        match NETD.recv(h, &b.rx, 64) {
                            Ok(0) => break,
                            Ok(n) => back.extend(read(&b.rx, 0, n)),
                            Err(SockError::Net(NetError::WouldBlock)) => {
                                let _ = NETD.poll(100);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(back == msg)
                })();
                let _ = NETD.close(h);
                r
            });
            if r == Ok(true) {
                tcp_ok = true;
                logf!("restart peer: TCP echo from [{}]:{} after {} attempts", peer, LISTEN_PORT, tries);
            }
        }
        if !udp_ok {
            utries += 1;
            let msg = b"udp hello";
            b.udp.write(0, &DgramHeader { addr: peer, port: UDP_PORT }.encode());
            b.udp.write(DGRAM_HEADER as u64, msg);
            let _ = NETD.send(u, &b.udp, (DGRAM_HEADER + msg.len()) as u64);
            let t = now_ns();
            while now_ns() - t < SEC {
                match NETD.recv(u, &b.udp, 256) {
                    Ok(n) if n >= DGRAM_HEADER && read(&b.udp, DGRAM_HEADER as u64, n - DGRAM_HEADER) == msg => {
                        udp_ok = true;
                        logf!("restart peer: UDP echo from [{}]:{} after {} attempts", peer, UDP_PORT, utries);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = NETD.poll(100);
                    }
                }
            }
        }
        if !(tcp_ok && udp_ok) {
            sleep_ns(SEC);
        }
    }
    tcp_ok as u64 | (udp_ok as u64) << 1
}
