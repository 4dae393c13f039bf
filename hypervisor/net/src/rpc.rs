//! Reliable fabric IPC: what makes a remote `call` survive loss, reordering and duplication
//! on the fabric, and keeps the `send`s between two /128s in order. Pure state machines
//! driven by the caller's clock (host-tested with a seeded lossy, reordering, duplicating
//! link in `rpc/tests.rs`); the frames are [`crate::ipcroute::Frame`]s.
//!
//! * **Calls (caller side).** Each call has an id (the kernel's call token, unique within one
//!   incarnation) and is retransmitted until its answer comes: after [`RTO_INITIAL_NS`], then
//!   doubling up to [`RTO_MAX_NS`], at most [`MAX_RETRIES`] times (all within
//!   [`RETRY_SPAN_NS`] of the first transmission). After that the caller just waits for a late
//!   answer until its own timeout (the kernel's deadline). Every call frame carries a
//!   *watermark*: the lowest id among this node's calls to that /64 that may still be
//!   retransmitted; ids below it are finished as far as the caller is concerned.
//! * **Calls (callee side): at-most-once.** Per caller (source key = peer /64 or local microVM
//!   /128, plus its incarnation) the callee remembers each call it took: *running* (delivered
//!   to the endpoint, not answered yet) or *done* (its answer). A retransmitted request whose
//!   call is running is ignored; one whose call is done gets the cached answer again; neither
//!   is delivered twice. Done entries go when the caller's watermark passes them or after
//!   [`DONE_TTL_NS`] (longer than any caller retransmits), and a request below the watermark
//!   is dropped. The cache is bounded ([`DONE_PER_SOURCE`] answers per caller,
//!   [`INCARNATIONS_PER_SOURCE`] incarnations per source, [`CALLERS_MAX`] in all): when it is
//!   full of entries that may still be asked for, a new call is refused (`QueueFull`) rather
//!   than risk a second execution. Running calls per source are bounded by
//!   [`CALLS_PER_SOURCE`] (refused with `QueueFull`).
//! * **Sends.** The sends from one /128 to one /128 form a stream (incarnation, stream number)
//!   with sequence numbers from 1. At most [`SEND_WINDOW`] are unacknowledged; more wait in a
//!   backlog of [`SEND_BACKLOG`] (then the send is dropped and counted). The receiver delivers
//!   in order, holds early ones (within the window) until the gap fills, drops duplicates and
//!   answers every send frame with a cumulative ack. The oldest unacked send is retransmitted
//!   (with the others in flight) on the same backoff as calls; after [`MAX_RETRIES`] the stream
//!   is abandoned (its unacked sends counted lost; the next send starts a new stream, which
//!   the receiver recognises by its higher number). A receiver whose endpoint queue is full
//!   leaves the send unacked, so the sender's retransmission delivers it later.
//!   Receiver streams are bounded ([`IN_STREAMS_PER_SOURCE`] per source, [`IN_STREAMS_MAX`]
//!   in all; the least recently used goes) and forgotten after [`IN_STREAM_IDLE_NS`]; senders
//!   forget idle streams sooner ([`OUT_STREAM_IDLE_NS`]), so a live stream is never one the
//!   receiver forgot unless a source overflows its own bound.

#[cfg(test)]
mod tests;

use crate::ipcroute::{source_key, Body, Frame, CALLS_PER_SOURCE};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use catenary_ipc::IpcError;
use core::net::Ipv6Addr;
use netfabric::identity::Prefix64;

/// First retransmission timeout.
pub const RTO_INITIAL_NS: u64 = 100_000_000;
/// The timeout doubles up to this. Kept short so that a call has many tries within its
/// caller's timeout: at 36% loss each way (the QEMU test's loss on both nodes) a round trip
/// gets through 41% of the time, and 21 tries leave a call unanswered about once in 60,000
/// by that arithmetic (none of 4,000 calls one after another in the host simulation); with a
/// cap of 2 s, 13 tries: once in 1,000 (7 of the 4,000 simulated; one QEMU run lost a call so).
pub const RTO_MAX_NS: u64 = 1_000_000_000;
/// Retransmissions of one call, or of a stream's oldest unacked send, at most.
pub const MAX_RETRIES: u32 = 20;
/// The longest time from a call's first transmission to its last retransmission.
pub const RETRY_SPAN_NS: u64 = retry_span();
/// A callee keeps a call's answer this long (unless the caller's watermark passes it first):
/// more than [`RETRY_SPAN_NS`] plus any delay of the fabric.
pub const DONE_TTL_NS: u64 = 30_000_000_000;
/// Cached answers per caller (source and incarnation).
pub const DONE_PER_SOURCE: usize = 64;
/// Incarnations remembered per source (a peer that restarts gets a new one).
pub const INCARNATIONS_PER_SOURCE: usize = 4;
/// Callers (source, incarnation) remembered in all.
pub const CALLERS_MAX: usize = 256;
/// Unacknowledged sends per stream.
pub const SEND_WINDOW: u64 = 32;
/// Sends waiting for the window per stream.
pub const SEND_BACKLOG: usize = 64;
/// Outgoing streams (sender /128, receiver /128) at most.
pub const OUT_STREAMS: usize = 256;
/// Our calls awaiting an answer, at most (the kernel bounds them too).
pub const OUT_CALLS: usize = 1024;
/// A sender forgets a stream idle (everything acked) this long.
pub const OUT_STREAM_IDLE_NS: u64 = 60_000_000_000;
/// Receiver streams per source.
pub const IN_STREAMS_PER_SOURCE: usize = 16;
/// Receiver streams in all.
pub const IN_STREAMS_MAX: usize = 1024;
/// A receiver forgets a stream idle this long (longer than [`OUT_STREAM_IDLE_NS`]).
pub const IN_STREAM_IDLE_NS: u64 = 120_000_000_000;
/// How often idle state is swept.
const SWEEP_NS: u64 = 1_000_000_000;

const fn retry_span() -> u64 {
    let (mut rto, mut sum, mut i) = (RTO_INITIAL_NS, 0, 0);
    while i < MAX_RETRIES {
        sum += rto;
        rto = if rto * 2 > RTO_MAX_NS { RTO_MAX_NS } else { rto * 2 };
        i += 1;
    }
    sum + rto
}
const _: () = assert!(RETRY_SPAN_NS + 10_000_000_000 <= DONE_TTL_NS && OUT_STREAM_IDLE_NS < IN_STREAM_IDLE_NS);

/// Where the answer to a call from another node goes: to the caller `from` (its /128 and
/// incarnation), from `to` (the /128 the call was addressed to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub from: Ipv6Addr,
    pub to: Ipv6Addr,
    pub inc: u64,
    pub call_id: u64,
}

/// A message for a local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A call, to be answered with [`Rpc::answer`] and `ticket`.
    Call { ticket: Ticket, endpoint: u64, body: Body },
    /// A send (in stream order).
    Send { from: Ipv6Addr, to: Ipv6Addr, endpoint: u64, body: Body },
}

/// What became of a [`Delivery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Queued for the endpoint (a call now runs there).
    Delivered,
    /// The endpoint's queue is full: not delivered, try again on a retransmission.
    Busy,
    /// Not delivered, never will be (IPC error code: the endpoint is gone…).
    Failed(u64),
}

/// A send was dropped: no room for its stream or in its backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendDropped;

/// Our call `call_id` was answered by `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub call_id: u64,
    pub from: Ipv6Addr,
    /// The reply, or the IPC error code.
    pub result: Result<Body, u64>,
}

/// Counters the node prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RpcCounters {
    pub calls_out: u64,
    pub sends_out: u64,
    /// Frames sent again (calls and sends).
    pub retransmits: u64,
    /// Calls whose retransmissions ran out (the caller waits for its own timeout).
    pub calls_given_up: u64,
    /// Sends dropped: backlog full, or their stream abandoned.
    pub sends_lost: u64,
    /// Retransmitted calls ignored because the call is running here.
    pub dup_running: u64,
    /// Retransmitted calls answered from the cache.
    pub dup_replayed: u64,
    /// Calls below their caller's watermark (already finished), dropped.
    pub stale_calls: u64,
    /// Calls refused: quota or answer cache full.
    pub over_quota: u64,
    /// Duplicate sends (already delivered or already held), dropped.
    pub dup_sends: u64,
    /// Sends that arrived early and were held for the gap.
    pub held_sends: u64,
    /// Deliveries refused by a full endpoint queue (retried on retransmission).
    pub busy: u64,
    /// Answers or acks for another incarnation or stream, ignored.
    pub stale_answers: u64,
}

struct OutCall {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    endpoint: u64,
    body: Body,
    tries: u32,
    rto: u64,
    next_at: u64,
}

struct OutSend {
    seq: u64,
    endpoint: u64,
    body: Body,
}

struct OutStream {
    stream: u64,
    /// The sequence number the next send gets.
    next_seq: u64,
    inflight: VecDeque<OutSend>,
    backlog: VecDeque<(u64, Body)>,
    tries: u32,
    rto: u64,
    next_at: u64,
    last_active: u64,
}

#[derive(Clone, Copy)]
enum Entry {
    Running,
    Done { answer: Result<Body, u64>, at: u64, from: Ipv6Addr, to: Ipv6Addr },
}

#[derive(Default)]
struct Caller {
    watermark: u64,
    entries: BTreeMap<u64, Entry>,
    last_seen: u64,
}

impl Caller {
    fn running(&self) -> usize {
        self.entries.values().filter(|e| matches!(e, Entry::Running)).count()
    }
    /// Forget answers the caller can no longer ask for.
    fn prune(&mut self, now: u64) {
        let wm = self.watermark;
        self.entries.retain(|id, e| match e {
            Entry::Running => true,
            Entry::Done { at, .. } => *id >= wm && now.saturating_sub(*at) < DONE_TTL_NS,
        });
    }
}

struct InStream {
    inc: u64,
    stream: u64,
    /// The next sequence number to deliver.
    expected: u64,
    held: BTreeMap<u64, (u64, Body)>,
    last_seen: u64,
}

/// One node's reliable IPC state.
pub struct Rpc {
    prefix: Prefix64,
    inc: u64,
    calls: BTreeMap<u64, OutCall>,
    streams: BTreeMap<(Ipv6Addr, Ipv6Addr), OutStream>,
    next_stream: u64,
    /// Calls from others: (source key, incarnation) -> their calls.
    callers: BTreeMap<(Ipv6Addr, u64), Caller>,
    /// Running calls per source key (the [`CALLS_PER_SOURCE`] quota).
    running: BTreeMap<Ipv6Addr, u32>,
    /// Streams to us: (sender /128, our /128) -> delivery state.
    in_streams: BTreeMap<(Ipv6Addr, Ipv6Addr), InStream>,
    last_sweep: u64,
    pub counters: RpcCounters,
}

fn answer_frame(src: Ipv6Addr, dst: Ipv6Addr, inc: u64, call_id: u64, answer: Result<Body, u64>) -> Frame {
    match answer {
        Ok(body) => Frame::Reply { src, dst, inc, call_id, body },
        Err(code) => Frame::Error { src, dst, inc, call_id, code },
    }
}

impl Rpc {
    /// The state of the node whose /128 is `node`; `incarnation` (never 0; random, from the
    /// node's entropy) tells this run of the router from earlier ones.
    pub fn new(node: Ipv6Addr, incarnation: u64) -> Rpc {
        Rpc {
            prefix: Prefix64::of(&node),
            inc: incarnation.max(1),
            calls: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_stream: 0,
            callers: BTreeMap::new(),
            running: BTreeMap::new(),
            in_streams: BTreeMap::new(),
            last_sweep: 0,
            counters: RpcCounters::default(),
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.inc
    }

    /// Our calls that may still be retransmitted.
    pub fn calls_pending(&self) -> usize {
        self.calls.len()
    }

    /// Calls from `from`'s source running here.
    pub fn calls_in_flight(&self, from: &Ipv6Addr) -> u32 {
        self.running.get(&source_key(&self.prefix, from)).copied().unwrap_or(0)
    }

    fn watermark(&self, dst: &Ipv6Addr) -> u64 {
        let p = Prefix64::of(dst);
        self.calls.iter().filter(|(_, c)| Prefix64::of(&c.dst) == p).map(|(id, _)| *id).next().unwrap_or(0)
    }

    fn call_frame(&self, id: u64, c: &OutCall) -> Frame {
        Frame::Call { src: c.src, dst: c.dst, endpoint: c.endpoint, inc: self.inc, call_id: id, watermark: self.watermark(&c.dst), body: c.body }
    }

    /// Start call `call_id` (ids grow: the kernel's call tokens) from `src` to `endpoint` at
    /// `dst`; returns its first frame. None: too many calls pending (`QueueFull`) or a
    /// repeated id.
    pub fn start_call(&mut self, now: u64, src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, call_id: u64, body: Body) -> Option<Frame> {
        if self.calls.len() >= OUT_CALLS || call_id == 0 || self.calls.contains_key(&call_id) {
            return None;
        }
        let c = OutCall { src, dst, endpoint, body, tries: 0, rto: RTO_INITIAL_NS, next_at: now.saturating_add(RTO_INITIAL_NS) };
        self.calls.insert(call_id, c);
        self.counters.calls_out += 1;
        self.calls.get(&call_id).map(|c| self.call_frame(call_id, c))
    }

    /// Stop retransmitting call `call_id` (it failed or its caller gave up).
    pub fn cancel_call(&mut self, call_id: u64) {
        self.calls.remove(&call_id);
    }

    /// Whether a send from `src` to `dst` would be taken now (its stream's window and
    /// backlog have room).
    pub fn send_room(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        match self.streams.get(&(src, dst)) {
            Some(s) => s.backlog.len() < SEND_BACKLOG,
            None => self.streams.len() < OUT_STREAMS || self.streams.values().any(|s| s.inflight.is_empty() && s.backlog.is_empty()),
        }
    }

    /// Queue a send from `src` to `endpoint` at `dst`; returns the frame to transmit now
    /// (None: it waits for the window). Err: dropped (too many streams, backlog full;
    /// counted in `sends_lost`).
    pub fn send(&mut self, now: u64, src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, body: Body) -> Result<Option<Frame>, SendDropped> {
        let key = (src, dst);
        if !self.streams.contains_key(&key) {
            if self.streams.len() >= OUT_STREAMS {
                // make room: the least recently used stream with nothing in flight
                let idle = self.streams.iter().filter(|(_, s)| s.inflight.is_empty() && s.backlog.is_empty()).min_by_key(|(_, s)| s.last_active).map(|(k, _)| *k);
                match idle {
                    Some(k) => {
                        self.streams.remove(&k);
                    }
                    None => {
                        self.counters.sends_lost += 1;
                        return Err(SendDropped);
                    }
                }
            }
            self.next_stream += 1;
            let s = OutStream { stream: self.next_stream, next_seq: 1, inflight: VecDeque::new(), backlog: VecDeque::new(), tries: 0, rto: RTO_INITIAL_NS, next_at: 0, last_active: now };
            self.streams.insert(key, s);
        }
        let inc = self.inc;
        let Some(s) = self.streams.get_mut(&key) else { return Err(SendDropped) };
        s.last_active = now;
        if (s.inflight.len() as u64) < SEND_WINDOW && s.backlog.is_empty() {
            if s.inflight.is_empty() {
                s.tries = 0;
                s.rto = RTO_INITIAL_NS;
                s.next_at = now.saturating_add(RTO_INITIAL_NS);
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.inflight.push_back(OutSend { seq, endpoint, body });
            self.counters.sends_out += 1;
            return Ok(Some(Frame::Send { src, dst, endpoint, inc, stream: s.stream, seq, body }));
        }
        if s.backlog.len() < SEND_BACKLOG {
            s.backlog.push_back((endpoint, body));
            self.counters.sends_out += 1;
            return Ok(None);
        }
        self.counters.sends_lost += 1;
        Err(SendDropped)
    }

    /// Retransmissions that are due, and housekeeping. `waiting(id)`: whether the kernel
    /// still waits for call `id` (a call whose caller timed out is not retransmitted).
    pub fn poll(&mut self, now: u64, waiting: impl Fn(u64) -> bool) -> Vec<Frame> {
        let mut out = Vec::new();
        let due: Vec<u64> = self.calls.iter().filter(|(_, c)| c.next_at <= now).map(|(id, _)| *id).collect();
        let mut resend = Vec::new();
        for id in due {
            let Some(c) = self.calls.get_mut(&id) else { continue };
            if !waiting(id) {
                self.calls.remove(&id);
            } else if c.tries >= MAX_RETRIES {
                self.calls.remove(&id);
                self.counters.calls_given_up += 1;
            } else {
                c.tries += 1;
                c.rto = (c.rto * 2).min(RTO_MAX_NS);
                c.next_at = now.saturating_add(c.rto);
                resend.push(id);
            }
        }
        // frames after the removals, so that their watermarks are current
        for id in resend {
            if let Some(c) = self.calls.get(&id) {
                out.push(self.call_frame(id, c));
                self.counters.retransmits += 1;
            }
        }
        let inc = self.inc;
        let mut abandoned = Vec::new();
        for (&(src, dst), s) in self.streams.iter_mut() {
            if s.inflight.is_empty() || s.next_at > now {
                continue;
            }
            if s.tries >= MAX_RETRIES {
                abandoned.push((src, dst));
                continue;
            }
            s.tries += 1;
            s.rto = (s.rto * 2).min(RTO_MAX_NS);
            s.next_at = now.saturating_add(s.rto);
            for m in &s.inflight {
                out.push(Frame::Send { src, dst, endpoint: m.endpoint, inc, stream: s.stream, seq: m.seq, body: m.body });
                self.counters.retransmits += 1;
            }
        }
        for k in abandoned {
            if let Some(s) = self.streams.remove(&k) {
                self.counters.sends_lost += (s.inflight.len() + s.backlog.len()) as u64;
            }
        }
        if now.saturating_sub(self.last_sweep) >= SWEEP_NS {
            self.last_sweep = now;
            self.sweep(now);
        }
        out
    }

    fn sweep(&mut self, now: u64) {
        self.streams.retain(|_, s| !(s.inflight.is_empty() && s.backlog.is_empty() && now.saturating_sub(s.last_active) >= OUT_STREAM_IDLE_NS));
        self.in_streams.retain(|_, s| now.saturating_sub(s.last_seen) < IN_STREAM_IDLE_NS);
        for c in self.callers.values_mut() {
            c.prune(now);
        }
        self.callers.retain(|_, c| !c.entries.is_empty() || now.saturating_sub(c.last_seen) < DONE_TTL_NS);
    }

    /// The local callee answered `t` (or failed, with an IPC error code): the frame to send,
    /// remembered for retransmitted requests.
    pub fn answer(&mut self, now: u64, t: Ticket, answer: Result<Body, u64>) -> Frame {
        let key = source_key(&self.prefix, &t.from);
        if let Some(c) = self.callers.get_mut(&(key, t.inc)) {
            if let Some(e) = c.entries.get_mut(&t.call_id) {
                if matches!(e, Entry::Running) {
                    *e = Entry::Done { answer, at: now, from: t.to, to: t.from };
                    if let Some(n) = self.running.get_mut(&key) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.running.remove(&key);
                        }
                    }
                }
            }
        }
        answer_frame(t.to, t.from, t.inc, t.call_id, answer)
    }

    /// Take a decoded inbound frame: deliver what is due (through `deliver`, in order) and
    /// return the frames to send back, and the completion of one of our calls.
    pub fn inbound(&mut self, now: u64, f: Frame, deliver: &mut dyn FnMut(Delivery) -> Outcome) -> (Vec<Frame>, Option<Completion>) {
        match f {
            Frame::Call { src, dst, endpoint, inc, call_id, watermark, body } => {
                let t = Ticket { from: src, to: dst, inc, call_id };
                (self.inbound_call(now, t, watermark, endpoint, body, deliver).into_iter().collect(), None)
            }
            Frame::Send { src, dst, endpoint, inc, stream, seq, body } => (self.inbound_send(now, src, dst, endpoint, inc, stream, seq, body, deliver).into_iter().collect(), None),
            Frame::Reply { src, inc, call_id, body, .. } => (Vec::new(), self.completion(inc, call_id, src, Ok(body))),
            Frame::Error { src, inc, call_id, code, .. } => (Vec::new(), self.completion(inc, call_id, src, Err(code))),
            Frame::Ack { src, dst, inc, stream, seq } => (self.inbound_ack(now, src, dst, inc, stream, seq), None),
        }
    }

    fn completion(&mut self, inc: u64, call_id: u64, from: Ipv6Addr, result: Result<Body, u64>) -> Option<Completion> {
        if inc != self.inc {
            self.counters.stale_answers += 1;
            return None;
        }
        // a forged answer (wrong /128) is ignored by the kernel, and must not stop the
        // retransmissions either
        if self.calls.get(&call_id).is_some_and(|c| c.dst == from) {
            self.calls.remove(&call_id);
        }
        Some(Completion { call_id, from, result })
    }

    /// Find or make room for caller (`key`, `inc`); false: no room (refuse the call).
    fn caller_slot(&mut self, key: Ipv6Addr, inc: u64) -> bool {
        if self.callers.contains_key(&(key, inc)) {
            return true;
        }
        let of_key = self.callers.range((key, 0)..=(key, u64::MAX)).count();
        let full = of_key >= INCARNATIONS_PER_SOURCE || self.callers.len() >= CALLERS_MAX;
        if full {
            // forget the least recently seen caller (of this source if it is the one over its
            // bound) with nothing running here
            let victim = self
                .callers
                .iter()
                .filter(|((k, _), c)| (of_key < INCARNATIONS_PER_SOURCE || *k == key) && c.running() == 0)
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(k, _)| *k);
            match victim {
                Some(v) => {
                    self.callers.remove(&v);
                }
                None => return false,
            }
        }
        self.callers.insert((key, inc), Caller::default());
        true
    }

    fn inbound_call(&mut self, now: u64, t: Ticket, watermark: u64, endpoint: u64, body: Body, deliver: &mut dyn FnMut(Delivery) -> Outcome) -> Option<Frame> {
        let key = source_key(&self.prefix, &t.from);
        let refuse = |r: &mut Rpc| {
            r.counters.over_quota += 1;
            Some(answer_frame(t.to, t.from, t.inc, t.call_id, Err(IpcError::QueueFull.code())))
        };
        if !self.caller_slot(key, t.inc) {
            return refuse(self);
        }
        let running = self.running.get(&key).copied().unwrap_or(0);
        let c = self.callers.get_mut(&(key, t.inc))?;
        c.last_seen = now;
        c.watermark = c.watermark.max(watermark);
        c.prune(now);
        if t.call_id < c.watermark {
            self.counters.stale_calls += 1;
            return None;
        }
        match c.entries.get(&t.call_id) {
            Some(Entry::Running) => {
                self.counters.dup_running += 1;
                return None;
            }
            Some(Entry::Done { answer, from, to, .. }) => {
                self.counters.dup_replayed += 1;
                return Some(answer_frame(*from, *to, t.inc, t.call_id, *answer));
            }
            None => {}
        }
        if running >= CALLS_PER_SOURCE || c.entries.len() >= DONE_PER_SOURCE + CALLS_PER_SOURCE as usize {
            return refuse(self);
        }
        match deliver(Delivery::Call { ticket: t, endpoint, body }) {
            Outcome::Delivered => {
                c.entries.insert(t.call_id, Entry::Running);
                *self.running.entry(key).or_insert(0) += 1;
                None
            }
            Outcome::Busy => {
                // not delivered: the caller's retransmission tries again
                self.counters.busy += 1;
                None
            }
            Outcome::Failed(code) => {
                c.entries.insert(t.call_id, Entry::Done { answer: Err(code), at: now, from: t.to, to: t.from });
                Some(answer_frame(t.to, t.from, t.inc, t.call_id, Err(code)))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn inbound_send(&mut self, now: u64, src: Ipv6Addr, dst: Ipv6Addr, endpoint: u64, inc: u64, stream: u64, seq: u64, body: Body, deliver: &mut dyn FnMut(Delivery) -> Outcome) -> Option<Frame> {
        let k = (src, dst);
        let fresh = InStream { inc, stream, expected: 1, held: BTreeMap::new(), last_seen: now };
        match self.in_streams.get_mut(&k) {
            Some(s) if s.inc == inc && stream < s.stream => {
                self.counters.stale_answers += 1; // a frame of an abandoned stream
                return None;
            }
            Some(s) if s.inc != inc || stream > s.stream => *s = fresh,
            Some(_) => {}
            None => {
                self.make_stream_room(src);
                self.in_streams.insert(k, fresh);
            }
        }
        let s = self.in_streams.get_mut(&k)?;
        s.last_seen = now;
        if seq < s.expected || s.held.contains_key(&seq) {
            self.counters.dup_sends += 1;
        } else if seq - s.expected < SEND_WINDOW {
            if seq > s.expected {
                self.counters.held_sends += 1;
            }
            s.held.insert(seq, (endpoint, body));
        }
        while let Some(&(endpoint, body)) = s.held.get(&s.expected) {
            match deliver(Delivery::Send { from: src, to: dst, endpoint, body }) {
                Outcome::Delivered | Outcome::Failed(_) => {
                    s.held.remove(&s.expected);
                    s.expected += 1;
                }
                Outcome::Busy => {
                    self.counters.busy += 1;
                    break;
                }
            }
        }
        Some(Frame::Ack { src: dst, dst: src, inc, stream, seq: s.expected - 1 })
    }

    /// Room for one more receiver stream from `src`: drop the least recently used one of its
    /// source when it has its share, or of all when the table is full.
    fn make_stream_room(&mut self, src: Ipv6Addr) {
        let key = source_key(&self.prefix, &src);
        let prefix = self.prefix;
        let of_key = self.in_streams.keys().filter(|(s, _)| source_key(&prefix, s) == key).count();
        let victim = if of_key >= IN_STREAMS_PER_SOURCE {
            self.in_streams.iter().filter(|((s, _), _)| source_key(&prefix, s) == key).min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
        } else if self.in_streams.len() >= IN_STREAMS_MAX {
            self.in_streams.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
        } else {
            None
        };
        if let Some(v) = victim {
            self.in_streams.remove(&v);
        }
    }

    fn inbound_ack(&mut self, now: u64, src: Ipv6Addr, dst: Ipv6Addr, inc: u64, stream: u64, seq: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        let Some(s) = self.streams.get_mut(&(dst, src)) else { return out };
        if inc != self.inc || stream != s.stream || seq >= s.next_seq {
            self.counters.stale_answers += 1;
            return out;
        }
        let before = s.inflight.len();
        while s.inflight.front().is_some_and(|m| m.seq <= seq) {
            s.inflight.pop_front();
        }
        if s.inflight.len() == before {
            return out;
        }
        s.tries = 0;
        s.rto = RTO_INITIAL_NS;
        s.next_at = now.saturating_add(RTO_INITIAL_NS);
        s.last_active = now;
        while (s.inflight.len() as u64) < SEND_WINDOW {
            let Some((endpoint, body)) = s.backlog.pop_front() else { break };
            let seq = s.next_seq;
            s.next_seq += 1;
            s.inflight.push_back(OutSend { seq, endpoint, body });
            out.push(Frame::Send { src: dst, dst: src, endpoint, inc, stream, seq, body });
        }
        out
    }
}
