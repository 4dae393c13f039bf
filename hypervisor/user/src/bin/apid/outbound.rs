//! A node-to-node exchange that never blocks `apid`'s loop: a TCP socket to another node's
//! `apid` and its `catenary_api::exchange::Exchange` (what is left to send, the answer so far,
//! the deadline). `netd`'s `CONNECT` returns at once; [`Outbound::step`] moves bytes only when
//! the loop's `POLL` reported the socket ready (writable while there is request left to send,
//! readable or hung up for the answer), each call `netd` answers at once, and closes the
//! socket when the exchange is over (answer, failure or deadline).

use catenary_api::exchange::{Exchange, Outcome};
use catenary_netsock::{Handle, Kind, NetError, Ready};
use catenary_user::netsock_client::Sockets;
use catenary_user::Pages;
use core::net::Ipv6Addr;
use alloc::vec::Vec;

/// Receives per step: a 256 KiB chunk comes through a socket buffer of `TCP_BUFFER` bytes, so
/// several turns' worth; bounded so that one exchange does not hold the loop.
const RECVS_PER_STEP: usize = 8;

pub struct Outbound {
    h: Handle,
    x: Exchange,
    /// Closed: the step that ended it closed the socket.
    over: bool,
}

pub enum Step {
    Pending,
    Done(u16, Vec<u8>),
    /// No answer (the reason is the exchange's: closed early, too large, late, failed).
    Failed,
}

impl Outbound {
    /// Connect to `[to]:8080` and send `bytes` as the socket takes them; `Err` when `netd`
    /// gives no socket (the client's sockets are all in use) or refuses the connect.
    pub fn start(s: &Sockets, to: Ipv6Addr, bytes: Vec<u8>, now_ms: u64, budget_ms: u64, max: usize) -> Result<Outbound, &'static str> {
        let h = s.socket(Kind::Tcp).map_err(|_| "no socket free")?;
        if s.connect(h, to, catenary_api::PORT).is_err() {
            let _ = s.close(h);
            return Err("the connect was refused");
        }
        Ok(Outbound { h, x: Exchange::new(bytes, now_ms, budget_ms, max), over: false })
    }

    pub fn deadline_ms(&self) -> u64 {
        self.x.deadline_ms()
    }

    /// What `ready` allows: one send, receives until `netd` has nothing more (bounded).
    pub fn step(&mut self, s: &Sockets, io: &Pages, ready: &Ready, now_ms: u64) -> Step {
        if self.over {
            return Step::Failed;
        }
        let r = self.turn(s, io, ready, now_ms);
        if !matches!(r, Step::Pending) {
            self.close(s);
        }
        r
    }

    fn turn(&mut self, s: &Sockets, io: &Pages, ready: &Ready, now_ms: u64) -> Step {
        if self.x.expired(now_ms) {
            return Step::Failed;
        }
        let bit = Ready::bit(self.h);
        let would_block = |e: &catenary_user::netsock_client::SockError| e.is(NetError::WouldBlock);
        if !self.x.unsent().is_empty() && (ready.writable | ready.hangup) & bit != 0 {
            let n = self.x.unsent().len().min(io.len() as usize);
            io.write(0, &self.x.unsent()[..n]);
            match s.send(self.h, io, n as u64) {
                Ok(k) => self.x.sent(k.min(n)),
                Err(e) if would_block(&e) => {}
                // refused, reset, timed out (a failed connect shows here too)
                Err(_) => return Step::Failed,
            }
        }
        if (ready.readable | ready.hangup) & bit == 0 {
            return Step::Pending;
        }
        let mut buf = alloc::vec![0u8; io.len() as usize];
        for _ in 0..RECVS_PER_STEP {
            let out = match s.recv(self.h, io, io.len()) {
                Ok(0) => self.x.closed(),
                Ok(n) => {
                    let n = n.min(buf.len());
                    io.read(0, &mut buf[..n]);
                    self.x.received(&buf[..n])
                }
                Err(e) if would_block(&e) => return Step::Pending,
                Err(_) => return Step::Failed,
            };
            match out {
                Outcome::Pending => {}
                Outcome::Done(status, body) => return Step::Done(status, body),
                Outcome::Failed(_) => return Step::Failed,
            }
        }
        Step::Pending
    }

    /// Give it up (its connection is gone, or its answer is no longer wanted).
    pub fn close(&mut self, s: &Sockets) {
        if !self.over {
            self.over = true;
            let _ = s.close(self.h);
        }
    }
}
