//! The reliability layer over a seeded simulated link that loses, duplicates, delays and
//! reorders frames (deterministic: every run of a seed is the same), between two real
//! [`IpcRouter`]s (every frame is encoded to an IPv6 packet and decoded again).

use super::*;
use crate::ipcroute::IpcRouter;
use alloc::collections::BTreeSet;
use alloc::vec;
use netfabric::Identity;

/// xorshift64*: the link's and the server's dice.
struct Dice(u64);
impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `pct`/100.
    fn pct(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

#[derive(Clone, Copy)]
struct LinkCfg {
    loss: u64,
    dup: u64,
    /// Extra delay drawn from 0..jitter ms (frames overtake each other).
    jitter_ms: u64,
}

struct Side {
    router: IpcRouter,
    rpc: Rpc,
}

const MS: u64 = 1_000_000;

struct Sim {
    a: Side,
    b: Side,
    /// (arrival time, to b?, packet)
    wire: Vec<(u64, bool, Vec<u8>)>,
    dice: Dice,
    cfg: LinkCfg,
    now: u64,
    /// Server: how often each call (by its words[0]) ran, the sends in arrival order, and
    /// the calls running with the time they answer.
    execs: BTreeMap<u64, u32>,
    sends_seen: Vec<u64>,
    running: Vec<(u64, Ticket, Body)>,
    busy_pct: u64,
    /// Client: calls waiting (id -> words[0]), and completed calls.
    waiting: BTreeMap<u64, u64>,
    done: BTreeMap<u64, Result<Body, u64>>,
    a_addr: Ipv6Addr,
    b_addr: Ipv6Addr,
}

fn addr(seed: u8) -> Ipv6Addr {
    Identity::from_secret_bytes([seed; 32]).node_address()
}

impl Sim {
    fn new(seed: u64, cfg: LinkCfg) -> Sim {
        let (na, nb) = (addr(1), addr(2));
        let ra = IpcRouter::new(na);
        let mut rb = IpcRouter::new(nb);
        let b_addr = rb.bind(5).unwrap();
        Sim {
            a: Side { router: ra, rpc: Rpc::new(na, 0xaaaa ^ seed) },
            b: Side { router: rb, rpc: Rpc::new(nb, 0xbbbb ^ seed) },
            wire: Vec::new(),
            dice: Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            cfg,
            now: 0,
            execs: BTreeMap::new(),
            sends_seen: Vec::new(),
            running: Vec::new(),
            busy_pct: 0,
            waiting: BTreeMap::new(),
            done: BTreeMap::new(),
            a_addr: na,
            b_addr,
        }
    }

    fn transmit(&mut self, to_b: bool, f: Frame) {
        let p = f.packet().expect("encodes");
        if self.dice.pct(self.cfg.loss) {
            return;
        }
        let copies = if self.dice.pct(self.cfg.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let d = 1 + self.dice.next() % (self.cfg.jitter_ms + 1);
            self.wire.push((self.now + d * MS, to_b, p.clone()));
        }
    }

    fn call(&mut self, id: u64, arg: u64) {
        let body = Body { label: 1, words: [arg, 0, 0, 0] };
        let f = self.a.rpc.start_call(self.now, self.a_addr, self.b_addr, 0, id, body).expect("room");
        self.waiting.insert(id, arg);
        self.transmit(true, f);
    }

    fn send(&mut self, arg: u64) {
        let body = Body { label: 2, words: [arg, 0, 0, 0] };
        if let Ok(Some(f)) = self.a.rpc.send(self.now, self.a_addr, self.b_addr, 0, body) {
            self.transmit(true, f);
        }
    }

    /// One millisecond: frames that arrive, server answers that are due, retransmissions.
    fn step(&mut self) {
        self.now += MS;
        let now = self.now;
        let (arrived, rest): (Vec<_>, Vec<_>) = core::mem::take(&mut self.wire).into_iter().partition(|(t, _, _)| *t <= now);
        self.wire = rest;
        for (_, to_b, p) in arrived {
            if to_b {
                let Ok(f) = self.b.router.decode(&p) else { panic!("b refused a frame") };
                let (execs, sends, running, dice, busy) = (&mut self.execs, &mut self.sends_seen, &mut self.running, &mut self.dice, self.busy_pct);
                let (out, c) = self.b.rpc.inbound(now, f, &mut |d| {
                    if dice.pct(busy) {
                        return Outcome::Busy;
                    }
                    match d {
                        Delivery::Call { ticket, endpoint, body } => {
                            assert_eq!(endpoint, 5);
                            *execs.entry(body.words[0]).or_insert(0) += 1;
                            // the callee takes 0..150 ms: retransmissions find it running
                            let at = now + (dice.next() % 150) * MS;
                            running.push((at, ticket, Body { label: 10, words: [body.words[0] * 3, 0, 0, 0] }));
                        }
                        Delivery::Send { body, .. } => sends.push(body.words[0]),
                    }
                    Outcome::Delivered
                });
                assert!(c.is_none());
                for f in out {
                    self.transmit(false, f);
                }
            } else {
                let Ok(f) = self.a.router.decode(&p) else { panic!("a refused a frame") };
                let (out, c) = self.a.rpc.inbound(now, f, &mut |_| panic!("nothing is delivered at a"));
                for f in out {
                    self.transmit(true, f);
                }
                if let Some(c) = c {
                    // the kernel completes a call once: later copies find no waiter
                    if self.waiting.remove(&c.call_id).is_some() {
                        assert_eq!(c.from, self.b_addr);
                        self.done.insert(c.call_id, c.result);
                    }
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = core::mem::take(&mut self.running).into_iter().partition(|(t, _, _)| *t <= now);
        self.running = later;
        for (_, t, body) in due {
            let f = self.b.rpc.answer(now, t, Ok(body));
            self.transmit(false, f);
        }
        let waiting = &self.waiting;
        for f in self.a.rpc.poll(now, |id| waiting.contains_key(&id)) {
            self.transmit(true, f);
        }
        for f in self.b.rpc.poll(now, |_| true) {
            self.transmit(false, f);
        }
    }

    fn run_until_quiet(&mut self, max_ms: u64) {
        for _ in 0..max_ms {
            self.step();
            if self.waiting.is_empty() && self.running.is_empty() && self.wire.is_empty() && self.a.rpc.streams.values().all(|s| s.inflight.is_empty() && s.backlog.is_empty()) {
                return;
            }
        }
    }
}

/// Calls and sends interleaved, over a link that loses, duplicates and reorders: every call
/// is answered with its own result and ran exactly once; every send arrives once, in order.
fn lossy_run(seed: u64, cfg: LinkCfg, busy_pct: u64) -> Sim {
    lossy_run_with(seed, cfg, busy_pct, true)
}

/// `strict`: nothing may be given up. Otherwise (heavy loss) a call or stream may run out of
/// retransmissions: the call then gets no answer (its caller's timeout), the lost sends are
/// counted, and what does arrive is still in order and never twice.
fn lossy_run_with(seed: u64, cfg: LinkCfg, busy_pct: u64, strict: bool) -> Sim {
    let mut s = Sim::new(seed, cfg);
    s.busy_pct = busy_pct;
    let (calls, sends) = (40u64, 120u64);
    let (mut c, mut n) = (0, 0);
    while c < calls || n < sends {
        // a burst of work every few ms
        for _ in 0..(s.dice.next() % 4) {
            // the caller keeps fewer calls in flight than the callee's quota per source
            if s.dice.pct(35) && c < calls && s.waiting.len() < CALLS_PER_SOURCE as usize / 2 {
                c += 1;
                s.call(c, 1000 + c);
            } else if n < sends && s.a.rpc.send_room(s.a_addr, s.b_addr) {
                n += 1;
                s.send(n);
            }
        }
        for _ in 0..(s.dice.next() % 5) {
            s.step();
        }
    }
    s.run_until_quiet(60_000);
    if !strict {
        // the kernel's timeout ends calls whose retransmissions ran out
        for _ in 0..(RETRY_SPAN_NS / MS) {
            s.step();
        }
        let given_up = s.a.rpc.counters.calls_given_up as usize;
        assert_eq!(s.waiting.len(), given_up, "seed {seed}");
        s.waiting.clear();
    }
    assert!(s.waiting.is_empty(), "seed {seed}: calls unanswered {:?} (given up {})", s.waiting, s.a.rpc.counters.calls_given_up);
    for id in 1..=calls {
        let ran = s.execs.get(&(1000 + id)).copied().unwrap_or(0);
        assert!(ran <= 1, "seed {seed}: call {id} ran {ran} times");
        match s.done.get(&id) {
            Some(r) => {
                assert_eq!(r, &Ok(Body { label: 10, words: [(1000 + id) * 3, 0, 0, 0] }), "seed {seed}: call {id}");
                assert_eq!(ran, 1, "seed {seed}: call {id} answered but ran {ran} times");
            }
            None => assert!(!strict, "seed {seed}: call {id} got no answer"),
        }
    }
    if strict {
        assert_eq!(s.sends_seen, (1..=sends).collect::<Vec<_>>(), "seed {seed}: sends out of order, lost or doubled");
        assert_eq!(s.a.rpc.counters.sends_lost, 0);
    } else {
        assert!(s.sends_seen.windows(2).all(|w| w[0] < w[1]), "seed {seed}: sends out of order or doubled: {:?}", s.sends_seen);
        assert!(s.sends_seen.len() as u64 + s.a.rpc.counters.sends_lost >= sends, "seed {seed}: a send vanished uncounted");
    }
    s
}

#[test]
fn calls_and_sends_survive_loss_duplication_and_reordering() {
    let cfg = LinkCfg { loss: 20, dup: 10, jitter_ms: 40 };
    let (mut retx, mut running, mut replayed, mut held, mut dups) = (0, 0, 0, 0, 0);
    for seed in 1..=60 {
        let s = lossy_run(seed, cfg, 0);
        retx += s.a.rpc.counters.retransmits;
        running += s.b.rpc.counters.dup_running;
        replayed += s.b.rpc.counters.dup_replayed;
        held += s.b.rpc.counters.held_sends;
        dups += s.b.rpc.counters.dup_sends;
    }
    // the link really did all of it: retransmissions that found the call running, answers
    // replayed from the cache, sends held for a gap, duplicates dropped
    assert!(retx > 100 && running > 10 && replayed > 10 && held > 50 && dups > 50, "{retx} {running} {replayed} {held} {dups}");
}

#[test]
fn heavy_loss_and_a_busy_receiver() {
    // 40% loss each way and an endpoint that is full a quarter of the time: retransmissions
    // may run out; what is delivered is still at most once and in order
    let cfg = LinkCfg { loss: 40, dup: 20, jitter_ms: 120 };
    let mut busy = 0;
    for seed in 100..=130 {
        busy += lossy_run_with(seed, cfg, 25, false).b.rpc.counters.busy;
    }
    assert!(busy > 50);
}

#[test]
fn a_clean_link_needs_no_retransmission() {
    let s = lossy_run(7, LinkCfg { loss: 0, dup: 0, jitter_ms: 0 }, 0);
    // a callee that takes up to 150 ms does see a retransmission or two
    assert_eq!(s.b.rpc.counters.dup_replayed, 0);
    assert_eq!(s.b.rpc.counters.held_sends, 0);
}

#[test]
fn an_unreachable_callee_exhausts_the_retries_within_the_span() {
    let mut s = Sim::new(3, LinkCfg { loss: 100, dup: 0, jitter_ms: 0 });
    s.call(1, 1);
    let start = s.now;
    let mut sent = 0;
    let mut last = 0;
    for _ in 0..(RETRY_SPAN_NS / MS + 5000) {
        s.step();
        if s.a.rpc.counters.retransmits > sent {
            sent = s.a.rpc.counters.retransmits;
            last = s.now - start;
        }
    }
    assert_eq!(sent, MAX_RETRIES as u64);
    assert!(last < RETRY_SPAN_NS);
    assert_eq!(s.a.rpc.counters.calls_given_up, 1);
    assert_eq!(s.a.rpc.calls_pending(), 0);
    // a call the kernel stopped waiting for is not retransmitted
    s.call(2, 2);
    s.waiting.clear();
    for _ in 0..1000 {
        s.step();
    }
    assert_eq!(s.a.rpc.counters.retransmits, sent);
}

fn b_rpc() -> (Rpc, Ipv6Addr, Ipv6Addr) {
    let (a, b) = (addr(1), addr(2));
    let mut rb = IpcRouter::new(b);
    (Rpc::new(b, 9), a, rb.bind(5).unwrap())
}

fn call(src: Ipv6Addr, dst: Ipv6Addr, inc: u64, call_id: u64, watermark: u64) -> Frame {
    Frame::Call { src, dst, endpoint: 5, inc, call_id, watermark, body: Body { label: 1, words: [call_id, 0, 0, 0] } }
}

#[test]
fn at_most_once_with_watermark_and_cache_bounds() {
    let (mut r, a, t) = (b_rpc().0, b_rpc().1, b_rpc().2);
    let tickets = core::cell::RefCell::new(Vec::new());
    let mut del = |d: Delivery| {
        if let Delivery::Call { ticket, .. } = d {
            tickets.borrow_mut().push(ticket);
        }
        Outcome::Delivered
    };
    assert_eq!(r.inbound(0, call(a, t, 1, 1, 1), &mut del).0, vec![]);
    assert_eq!(r.inbound(1, call(a, t, 1, 1, 1), &mut del).0, vec![]); // running: ignored
    assert_eq!(tickets.borrow().len(), 1);
    let t0 = tickets.borrow()[0];
    let reply = r.answer(2, t0, Ok(Body { label: 9, ..Default::default() }));
    // a retransmission gets the same answer again, without running
    assert_eq!(r.inbound(3, call(a, t, 1, 1, 1), &mut del).0, vec![reply]);
    assert_eq!(tickets.borrow().len(), 1);
    // the caller's watermark passes call 1: its answer is dropped, and a late copy of it is
    // not run again (nor answered)
    assert_eq!(r.inbound(4, call(a, t, 1, 2, 2), &mut del).0, vec![]);
    assert_eq!(r.inbound(5, call(a, t, 1, 1, 1), &mut del).0, vec![]);
    assert_eq!(tickets.borrow().len(), 2);
    assert_eq!(r.counters.stale_calls, 1);
    // another incarnation of the same caller is another caller
    assert_eq!(r.inbound(6, call(a, t, 2, 1, 1), &mut del).0, vec![]);
    assert_eq!(tickets.borrow().len(), 3);
    // running calls per source are bounded (the peer's /64: its other /128s share it)
    let a2 = Prefix64::of(&a).workload_address(netfabric::identity::AddressKind::Task, 3).unwrap();
    assert_eq!(r.calls_in_flight(&a2), 2);
    for id in 3..=CALLS_PER_SOURCE as u64 {
        assert_eq!(r.inbound(7, call(a2, t, 1, id, 2), &mut del).0, vec![]);
    }
    assert_eq!(r.calls_in_flight(&a), CALLS_PER_SOURCE);
    let refused = r.inbound(8, call(a, t, 1, 100, 2), &mut del).0;
    assert!(matches!(refused[..], [Frame::Error { call_id: 100, code, .. }] if code == IpcError::QueueFull.code()));
    // an answer gives the slot back
    let t1 = tickets.borrow()[1];
    r.answer(9, t1, Ok(Body::default()));
    assert_eq!(r.calls_in_flight(&a), CALLS_PER_SOURCE - 1);
    assert_eq!(r.inbound(10, call(a, t, 1, 100, 2), &mut del).0, vec![]);
}

#[test]
fn a_hostile_caller_cannot_grow_the_cache_or_force_a_rerun() {
    let (mut r, a, t) = b_rpc();
    let mut runs: BTreeSet<(u64, u64)> = BTreeSet::new();
    // a caller that never raises its watermark and answers come at once: the cache fills to
    // its bound, then new calls are refused rather than evicting answers still asked for
    let mut refused = 0;
    for id in 1..=200u64 {
        let mut tk = None;
        let out = r.inbound(id, call(a, t, 1, id, 0), &mut |d| {
            if let Delivery::Call { ticket, .. } = d {
                tk = Some(ticket);
            }
            Outcome::Delivered
        });
        if let Some(tk) = tk {
            assert!(runs.insert((1, id)));
            r.answer(id, tk, Ok(Body::default()));
        } else {
            assert!(matches!(out.0[..], [Frame::Error { .. }]));
            refused += 1;
        }
    }
    assert_eq!(runs.len(), DONE_PER_SOURCE + CALLS_PER_SOURCE as usize);
    assert_eq!(refused, 200 - runs.len());
    // every cached call replayed: none runs again
    for id in 1..=runs.len() as u64 {
        let out = r.inbound(300, call(a, t, 1, id, 0), &mut |_| panic!("ran twice"));
        assert!(matches!(out.0[..], [Frame::Reply { .. }]));
    }
    // after the cache lifetime the answers go, and new calls are taken again
    let _ = r.poll(300 + DONE_TTL_NS, |_| true);
    let mut ran = false;
    r.inbound(301 + DONE_TTL_NS, call(a, t, 1, 500, 0), &mut |_| {
        ran = true;
        Outcome::Delivered
    });
    assert!(ran);
    // incarnations per source are bounded: a fifth evicts the oldest idle one
    for inc in 2..=10u64 {
        let mut tk = None;
        r.inbound(400 + DONE_TTL_NS + inc, call(a, t, inc, 1, 0), &mut |d| {
            if let Delivery::Call { ticket, .. } = d {
                tk = Some(ticket);
            }
            Outcome::Delivered
        });
        r.answer(401 + DONE_TTL_NS + inc, tk.unwrap(), Ok(Body::default()));
    }
    assert!(r.callers.len() <= INCARNATIONS_PER_SOURCE);
}

#[test]
fn streams_are_bounded_per_source_and_stale_streams_ignored() {
    let (mut r, a, t) = b_rpc();
    let pfx = Prefix64::of(&a);
    let send = |src, inc, stream, seq| Frame::Send { src, dst: t, endpoint: 5, inc, stream, seq, body: Body { label: 0, words: [seq, 0, 0, 0] } };
    let mut got = Vec::new();
    // many source /128s of one peer: at most IN_STREAMS_PER_SOURCE streams kept
    for i in 1..=100u64 {
        let src = pfx.workload_address(netfabric::identity::AddressKind::Task, i).unwrap();
        r.inbound(i, send(src, 1, 1, 2), &mut |_| Outcome::Delivered); // held: waits for 1
    }
    assert_eq!(r.in_streams.len(), IN_STREAMS_PER_SOURCE);
    // a stream delivers in order; a far-ahead send (beyond the window) is not held
    let ack = r.inbound(200, send(a, 1, 1, 1 + SEND_WINDOW), &mut |_| panic!()).0;
    assert_eq!(ack, vec![Frame::Ack { src: t, dst: a, inc: 1, stream: 1, seq: 0 }]);
    for seq in [3, 2, 2, 1, 3] {
        r.inbound(201, send(a, 1, 1, seq), &mut |d| {
            got.push(d);
            Outcome::Delivered
        });
    }
    let seqs: Vec<u64> = got.iter().map(|d| if let Delivery::Send { body, .. } = d { body.words[0] } else { 0 }).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    // a new stream (higher number) restarts at 1; a frame of the old one is ignored
    got.clear();
    let ack = r.inbound(202, send(a, 1, 2, 1), &mut |d| {
        got.push(d);
        Outcome::Delivered
    });
    assert_eq!(ack.0, vec![Frame::Ack { src: t, dst: a, inc: 1, stream: 2, seq: 1 }]);
    assert_eq!(r.inbound(203, send(a, 1, 1, 4), &mut |_| panic!()).0, vec![]);
    assert_eq!(got.len(), 1);
    // idle streams are forgotten
    let _ = r.poll(300 + IN_STREAM_IDLE_NS, |_| true);
    assert!(r.in_streams.is_empty());
}

#[test]
fn sender_window_backlog_and_forged_acks() {
    let (a, b) = (addr(1), addr(2));
    let mut r = Rpc::new(a, 5);
    let mut first = 0;
    let mut total = 0;
    for i in 0..(SEND_WINDOW as usize + SEND_BACKLOG + 3) {
        match r.send(0, a, b, 1, Body { label: i as u64, words: [0; 4] }) {
            Ok(Some(_)) => first += 1,
            Ok(None) => total += 1,
            Err(SendDropped) => {}
        }
    }
    assert_eq!((first, total), (SEND_WINDOW, SEND_BACKLOG));
    assert_eq!(r.counters.sends_lost, 3);
    // acks for another incarnation, another stream, or beyond what was sent: ignored
    for (inc, stream, seq) in [(6, 1, 5), (5, 2, 5), (5, 1, 1000)] {
        assert!(r.inbound(1, Frame::Ack { src: b, dst: a, inc, stream, seq }, &mut |_| panic!()).0.is_empty());
    }
    // a real ack moves the window: the backlog follows
    let more = r.inbound(1, Frame::Ack { src: b, dst: a, inc: 5, stream: 1, seq: 10 }, &mut |_| panic!()).0;
    assert_eq!(more.len(), 10);
    assert!(matches!(more[0], Frame::Send { seq, .. } if seq == SEND_WINDOW + 1));
    // a forged reply from another /128 completes nothing here and does not stop the
    // retransmissions
    r.start_call(0, a, b, 1, 77, Body::default()).unwrap();
    let other = addr(3);
    let (_, c) = r.inbound(2, Frame::Reply { src: other, dst: a, inc: 5, call_id: 77, body: Body::default() }, &mut |_| panic!());
    assert_eq!(c.map(|c| c.from), Some(other)); // the kernel checks the /128 and ignores it
    assert_eq!(r.calls_pending(), 1);
    let (_, c) = r.inbound(2, Frame::Reply { src: b, dst: a, inc: 4, call_id: 77, body: Body::default() }, &mut |_| panic!());
    assert!(c.is_none()); // another incarnation's answer
    let (_, c) = r.inbound(3, Frame::Reply { src: b, dst: a, inc: 5, call_id: 77, body: Body::default() }, &mut |_| panic!());
    assert!(c.is_some());
    assert_eq!(r.calls_pending(), 0);
}

/// The kernel's default timeout of a remote call (`REMOTE_CALL_TIMEOUT_NS` in the kernel,
/// which asserts that the retransmissions end within it).
const KERNEL_CALL_TIMEOUT_NS: u64 = 20_000_000_000;
const _: () = assert!(RETRY_SPAN_NS + 1_000_000_000 <= KERNEL_CALL_TIMEOUT_NS);

#[test]
fn calls_get_through_the_qemu_tests_loss_within_the_kernel_timeout() {
    // `net.test-loss=20` on both nodes drops a frame on its way out and on its way in: 36%
    // per direction. 4,000 calls one after another, as `rpctest` makes them (concurrent calls
    // behind one slow call fill the callee's answer cache until its watermark moves: refused
    // with `QueueFull`, by design), each given up by its caller after the kernel's timeout:
    // every one must be answered with its own result. (With the old backoff, 13 tries capped
    // at 2 s, some ran out of tries: see the note in `RTO_MAX_NS`.)
    let mut s = Sim::new(11, LinkCfg { loss: 36, dup: 0, jitter_ms: 20 });
    let total = 4000u64;
    let (mut timed_out, mut slowest) = (0u64, 0u64);
    for id in 1..=total {
        let t0 = s.now;
        s.call(id, id);
        while s.waiting.contains_key(&id) {
            if s.now - t0 >= KERNEL_CALL_TIMEOUT_NS {
                s.waiting.remove(&id);
                timed_out += 1;
                break;
            }
            // nothing on the wire or at the callee: only a retransmission can happen, on a
            // 100 ms grid; step 10 ms at a time (a retransmission up to 9 ms late)
            if s.wire.is_empty() && s.running.is_empty() {
                s.now += 9 * MS;
            }
            s.step();
        }
        if s.done.contains_key(&id) {
            slowest = slowest.max(s.now - t0);
        }
    }
    let answered = s.done.iter().filter(|(id, r)| **r == Ok(Body { label: 10, words: [**id * 3, 0, 0, 0] })).count() as u64;
    assert_eq!((s.b.rpc.counters.over_quota, s.b.rpc.counters.busy), (0, 0));
    assert!(s.a.rpc.counters.retransmits > total, "the link did lose frames: {}", s.a.rpc.counters.retransmits);
    assert_eq!((answered, timed_out, s.a.rpc.counters.calls_given_up), (total, 0, 0), "slowest answer {} ms", slowest / MS);
}
