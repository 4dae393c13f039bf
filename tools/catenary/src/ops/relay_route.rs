//! Which local client a datagram from the node goes to, for `catenary cluster relay`
//! (`relay.rs`). Sans-I/O: the relay hands it each datagram and acts on the answer.
//!
//! Several CLIs may share one relay (`catenary ps` in one terminal while `catenary run` waits in
//! another), each its own fabric peer with its own UDP port. WireGuard messages name the session
//! they belong to by index (netfabric's `messages`): an initiation (type 1) or a response
//! (type 2) from a client carries the index it chose as `sender`, and everything the node sends
//! for that session — a response (2), a cookie reply (3), transport data (4) — carries it as
//! `receiver`. So the relay learns `sender index -> client address` from its clients and routes
//! the node's datagrams by `receiver`. A datagram from the node that names no known index, that
//! does not parse as a WireGuard message, or that is an initiation (it names no receiver) is
//! dropped and counted: sending it to some client would hand one CLI another's session.
//! So is anything on the switch's relay port whose source is not the node's underlay address
//! and port ([`Routes::from_switch`]): stray traffic from other hosts or guests on the switch
//! never reaches a CLI. A source filter, not authentication: a host on the switch can forge
//! the node's address; WireGuard (the CLI's session) is what refuses forged datagrams.
//!
//! The table is bounded ([`MAX_ROUTES`]): a new index past the bound evicts the one least
//! recently used (learned, or routed to), so a long-running relay over many short CLIs, or a
//! local process sending initiations in a loop, cannot grow it.
//!
//! CLIs with the same operator key are one peer to the node, which sends only in its newest
//! session with that key: after `catenary ps` makes a session, the node answers `catenary run`'s
//! traffic in `ps`'s session too. Over plain UDP the node sends transport data to whoever sent
//! last, so `run` gets packets with an index it does not know and makes a new handshake
//! (`fabric_call::replaced`). Routing by index alone would hide those packets from it; so the
//! client that sent the latest transport data, when nothing has come back to it for
//! [`TAKEOVER_AFTER`], also gets a copy of the node's transport data for another session (at most
//! one per [`TAKEOVER_AFTER`]; one such client at a time, as the node has one endpoint per peer).
//! A client that is answered (another operator key, another live session) never gets one.

use netfabric::messages::{self, Message, TRANSPORT_MIN_LEN};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Session indices remembered. A CLI uses one per handshake (a new one every 2 minutes while
/// it runs, and on each retry), so 1024 covers many concurrent CLIs; an index evicted while its
/// session is still in use is only missed until the CLI's next handshake.
pub const MAX_ROUTES: usize = 1024;

/// How long the latest client to send transport data goes without anything back before it is
/// told (by a copy) that the node now sends in another session; also the least time between
/// two copies to it. Longer than a round trip through the switch, shorter than the CLI's 1.5 s
/// before it retries a request in a new session.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(1);

/// Where a datagram from the node goes: its session's owner, and possibly a copy to a client
/// that waits for an answer the node now sends in that other session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub to: SocketAddr,
    pub also: Option<SocketAddr>,
}

/// The client that sent the latest transport data (not a keepalive, which expects no answer).
#[derive(Clone, Copy, Debug)]
struct Waiting {
    addr: SocketAddr,
    /// Since when it waits for something back; `None` once the node sent it anything.
    since: Option<Instant>,
    /// The last copy it was sent.
    told: Option<Instant>,
}

/// Why a datagram from the node went to no client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrouted {
    /// It names a session index that no local client has (or that was evicted).
    UnknownIndex(u32),
    /// A handshake initiation from the node: it names no receiver, so no client can be told
    /// apart (the CLI makes a new handshake itself when it needs one).
    Initiation,
    /// Not a WireGuard message: empty, short, the wrong length, an unknown type, or reserved
    /// bytes not zero.
    Malformed,
    /// Sent to the relay's switch port from another address or port than the node's.
    NotFromNode,
}

/// Datagrams from the node dropped so far, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub unknown_index: u64,
    pub initiation: u64,
    pub malformed: u64,
    pub not_from_node: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.unknown_index + self.initiation + self.malformed + self.not_from_node
    }
}

/// The session indices of the relay's local clients.
#[derive(Debug)]
pub struct Routes {
    cap: usize,
    /// index -> (client, when last used)
    clients: HashMap<u32, (SocketAddr, u64)>,
    /// when last used -> index, oldest first (the eviction order)
    by_use: BTreeMap<u64, u32>,
    clock: u64,
    dropped: Dropped,
    waiting: Option<Waiting>,
}

impl Routes {
    /// A table of at most `cap` indices (at least 1).
    pub fn new(cap: usize) -> Self {
        Routes { cap: cap.max(1), clients: HashMap::new(), by_use: BTreeMap::new(), clock: 0, dropped: Dropped::default(), waiting: None }
    }

    /// A datagram `d` from the local client `from` at `now`, which the relay forwards to the
    /// node whatever it is (the node judges it): an initiation or response makes `from` the
    /// owner of its sender index; transport data makes it the client that waits for an answer.
    pub fn from_client(&mut self, d: &[u8], from: SocketAddr, now: Instant) {
        let sender = match messages::parse(d) {
            Ok(Message::Initiation(m)) => m.sender,
            Ok(Message::Response(m)) => m.sender,
            Ok(Message::Transport(_)) if d.len() > TRANSPORT_MIN_LEN => {
                match &mut self.waiting {
                    Some(w) if w.addr == from => {
                        w.since.get_or_insert(now);
                    }
                    _ => self.waiting = Some(Waiting { addr: from, since: Some(now), told: None }),
                }
                return;
            }
            _ => return,
        };
        if let Some((_, used)) = self.clients.remove(&sender) {
            self.by_use.remove(&used);
        }
        while self.clients.len() >= self.cap {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.clients.remove(&oldest);
        }
        let now = self.tick();
        self.clients.insert(sender, (from, now));
        self.by_use.insert(now, sender);
    }

    /// Where a datagram `d` that reached the relay's switch port from `src` goes, when the
    /// relay serves the node at `node`: nowhere (counted) unless it comes from the node's
    /// address and port, else as [`Routes::to_client`].
    pub fn from_switch(&mut self, src: SocketAddr, node: SocketAddr, d: &[u8], now: Instant) -> Result<Route, Unrouted> {
        if src != node {
            self.dropped.not_from_node += 1;
            return Err(Unrouted::NotFromNode);
        }
        self.to_client(d, now)
    }

    /// Where a datagram `d` from the node at `now` goes, or why it goes nowhere (counted).
    /// Handshake answers go to their handshake's client only (as the node sends them to the
    /// initiation's source); transport data may also be copied to a waiting client.
    pub fn to_client(&mut self, d: &[u8], now: Instant) -> Result<Route, Unrouted> {
        let r = match messages::parse(d) {
            Ok(Message::Response(m)) => self.owner(m.receiver).map(|to| self.answered(to)),
            Ok(Message::CookieReply(m)) => self.owner(m.receiver).map(|to| self.answered(to)),
            Ok(Message::Transport(m)) => self.owner(m.receiver).map(|to| Route { to, also: self.taken_over(to, now) }),
            Ok(Message::Initiation(_)) => Err(Unrouted::Initiation),
            Err(_) => Err(Unrouted::Malformed),
        };
        match r {
            Err(Unrouted::UnknownIndex(_)) => self.dropped.unknown_index += 1,
            Err(Unrouted::Initiation) => self.dropped.initiation += 1,
            Err(Unrouted::Malformed) => self.dropped.malformed += 1,
            Err(Unrouted::NotFromNode) => self.dropped.not_from_node += 1,
            Ok(_) => {}
        }
        r
    }

    /// The owner of `index`, which is now the most recently used.
    fn owner(&mut self, index: u32) -> Result<SocketAddr, Unrouted> {
        let now = self.tick();
        let (addr, used) = self.clients.get_mut(&index).ok_or(Unrouted::UnknownIndex(index))?;
        let old = std::mem::replace(used, now);
        let addr = *addr;
        self.by_use.remove(&old);
        self.by_use.insert(now, index);
        Ok(addr)
    }

    /// A handshake answer for `to`: if it is the waiting client, its wait starts again.
    fn answered(&mut self, to: SocketAddr) -> Route {
        if let Some(w) = self.waiting.as_mut().filter(|w| w.addr == to) {
            w.since = None;
        }
        Route { to, also: None }
    }

    /// Transport data for `owner`'s session: the waiting client, if it is another one that has
    /// had nothing back for [`TAKEOVER_AFTER`] and was not told within that time.
    fn taken_over(&mut self, owner: SocketAddr, now: Instant) -> Option<SocketAddr> {
        let w = self.waiting.as_mut()?;
        if w.addr == owner {
            w.since = None;
            return None;
        }
        let long = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) >= TAKEOVER_AFTER);
        if !long(w.since) || (w.told.is_some() && !long(w.told)) {
            return None;
        }
        w.told = Some(now);
        Some(w.addr)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Indices remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Datagrams from the node dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netfabric::messages::{CookieReply, Initiation, Response, Transport, TRANSPORT_MIN_LEN};

    fn init(sender: u32) -> Vec<u8> {
        Initiation { sender, ephemeral: [1; 32], encrypted_static: [2; 48], encrypted_timestamp: [3; 28], mac1: [4; 16], mac2: [0; 16] }.encode().to_vec()
    }
    fn resp(sender: u32, receiver: u32) -> Vec<u8> {
        Response { sender, receiver, ephemeral: [5; 32], encrypted_nothing: [6; 16], mac1: [7; 16], mac2: [0; 16] }.encode().to_vec()
    }
    fn cookie(receiver: u32) -> Vec<u8> {
        CookieReply { receiver, nonce: [8; 24], encrypted_cookie: [9; 32] }.encode().to_vec()
    }
    fn data(receiver: u32, counter: u64, len: usize) -> Vec<u8> {
        let mut d = Transport::header(receiver, counter).to_vec();
        d.resize(len, 0xab);
        d
    }
    /// One instant for the tests in which no time passes.
    fn t0() -> Instant {
        static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T.get_or_init(Instant::now)
    }
    fn to(r: &mut Routes, d: &[u8]) -> Result<SocketAddr, Unrouted> {
        r.to_client(d, t0()).map(|x| x.to)
    }
    fn from(r: &mut Routes, d: &[u8], a: SocketAddr) {
        r.from_client(d, a, t0())
    }
    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port))
    }

    /// What went wrong before: two CLIs' handshakes and data interleaved, and each of the node's
    /// datagrams went to whichever client sent last.
    #[test]
    fn two_clients_interleaved_each_get_their_own_answers() {
        let (a, b) = (addr(40001), addr(40002));
        let mut r = Routes::new(MAX_ROUTES);
        // a and b start handshakes; b's is the last datagram the relay saw
        from(&mut r, &init(0x1111_0001), a);
        from(&mut r, &init(0x2222_0002), b);
        // the node answers a first: a's response must not go to b, the last sender
        assert_eq!(to(&mut r, &resp(0x9000_0001, 0x1111_0001)), Ok(a));
        assert_eq!(to(&mut r, &resp(0x9000_0002, 0x2222_0002)), Ok(b));
        // a cookie reply under load names the initiation it answers
        assert_eq!(to(&mut r, &cookie(0x1111_0001)), Ok(a));
        // data both ways, interleaved; clients' transport carries the node's index (not learned)
        from(&mut r, &data(0x9000_0002, 0, TRANSPORT_MIN_LEN + 40), b);
        from(&mut r, &data(0x9000_0001, 0, TRANSPORT_MIN_LEN + 40), a);
        for i in 0..10 {
            assert_eq!(to(&mut r, &data(0x2222_0002, i, TRANSPORT_MIN_LEN + 100)), Ok(b), "b's data {i}");
            assert_eq!(to(&mut r, &data(0x1111_0001, i, TRANSPORT_MIN_LEN)), Ok(a), "a's keepalive {i}");
        }
        // a handshake the node starts is answered by the client's response: its sender index
        // is that client's from then on
        from(&mut r, &resp(0x1111_0003, 0x9000_0003), a);
        from(&mut r, &init(0x2222_0004), b);
        assert_eq!(to(&mut r, &data(0x1111_0003, 0, TRANSPORT_MIN_LEN)), Ok(a));
        assert_eq!(to(&mut r, &data(0x2222_0004, 0, TRANSPORT_MIN_LEN)), Ok(b));
        // the earlier sessions still route (in-flight data under the previous keys)
        assert_eq!(to(&mut r, &data(0x1111_0001, 11, TRANSPORT_MIN_LEN)), Ok(a));
        assert_eq!(r.dropped(), Dropped::default());
        assert_eq!(r.len(), 4);
    }

    /// `catenary run` (a) and then `catenary ps` (b) with the same operator key: the node makes
    /// b's session its one session for the key and answers a's traffic in it too. a, waiting,
    /// gets a copy after TAKEOVER_AFTER (its netfabric drops it as an unknown index and makes
    /// a new handshake, as over plain UDP); b keeps getting everything of its own session.
    #[test]
    fn a_client_whose_session_the_node_replaced_is_told_after_a_second() {
        let (a, b) = (addr(40001), addr(40002));
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let payload = TRANSPORT_MIN_LEN + 60;
        let mut r = Routes::new(MAX_ROUTES);
        r.from_client(&init(1), a, at(0));
        assert_eq!(r.to_client(&resp(91, 1), at(1)), Ok(Route { to: a, also: None }));
        r.from_client(&data(91, 0, payload), a, at(2));
        assert_eq!(r.to_client(&data(1, 0, payload), at(3)), Ok(Route { to: a, also: None }));
        // b's handshake: the node sends in b's session from now on
        r.from_client(&init(2), b, at(100));
        assert_eq!(r.to_client(&resp(92, 2), at(101)), Ok(Route { to: b, also: None }));
        r.from_client(&data(92, 0, payload), b, at(150));
        // a asks; the answer comes in b's session
        r.from_client(&data(91, 1, payload), a, at(200));
        assert_eq!(r.to_client(&data(2, 0, payload), at(300)), Ok(Route { to: b, also: None }));
        assert_eq!(r.to_client(&data(2, 1, payload), at(1250)), Ok(Route { to: b, also: Some(a) }));
        // one copy a second at most
        assert_eq!(r.to_client(&data(2, 2, payload), at(1500)), Ok(Route { to: b, also: None }));
        assert_eq!(r.to_client(&data(2, 3, payload), at(2300)), Ok(Route { to: b, also: Some(a) }));
        // a's new handshake: its wait starts again with it
        r.from_client(&init(3), a, at(2500));
        assert_eq!(r.to_client(&resp(93, 3), at(2501)), Ok(Route { to: a, also: None }));
        assert_eq!(r.to_client(&data(2, 4, payload), at(3400)), Ok(Route { to: b, also: None }));
        r.from_client(&data(93, 0, payload), a, at(3500));
        assert_eq!(r.to_client(&data(3, 0, payload), at(3510)), Ok(Route { to: a, also: None }));
        // now b is the one replaced, and told once it has waited
        r.from_client(&data(92, 1, payload), b, at(3600));
        assert_eq!(r.to_client(&data(3, 1, payload), at(4000)), Ok(Route { to: a, also: None }));
        assert_eq!(r.to_client(&data(3, 2, payload), at(4700)), Ok(Route { to: a, also: Some(b) }));
        // handshake answers are never copied
        r.from_client(&init(4), addr(40003), at(4750));
        assert_eq!(r.to_client(&resp(94, 4), at(6000)), Ok(Route { to: addr(40003), also: None }));
    }

    /// Two CLIs with different operator keys (two live sessions at the node) that are both
    /// answered, or a client that only sent keepalives (they expect no answer): no copies.
    #[test]
    fn an_answered_client_is_never_told() {
        let (a, b) = (addr(40001), addr(40002));
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let payload = TRANSPORT_MIN_LEN + 60;
        let mut r = Routes::new(MAX_ROUTES);
        r.from_client(&init(1), a, at(0));
        r.from_client(&init(2), b, at(0));
        assert_eq!(r.to_client(&resp(91, 1), at(1)).map(|x| x.also), Ok(None));
        assert_eq!(r.to_client(&resp(92, 2), at(1)).map(|x| x.also), Ok(None));
        for i in 0..20u64 {
            let ms = 10 + i * 300;
            r.from_client(&data(91, i, payload), a, at(ms));
            assert_eq!(r.to_client(&data(2, i, payload), at(ms + 20)), Ok(Route { to: b, also: None }), "step {i}");
            assert_eq!(r.to_client(&data(1, i, payload), at(ms + 40)), Ok(Route { to: a, also: None }), "step {i}");
            r.from_client(&data(92, i, payload), b, at(ms + 150));
            assert_eq!(r.to_client(&data(1, i + 100, payload), at(ms + 170)), Ok(Route { to: a, also: None }), "step {i}");
            assert_eq!(r.to_client(&data(2, i + 100, payload), at(ms + 190)), Ok(Route { to: b, also: None }), "step {i}");
        }
        // a's keepalives, and nothing back for a long while
        for i in 0..5u64 {
            r.from_client(&data(91, 50 + i, TRANSPORT_MIN_LEN), a, at(7000 + i * 1000));
        }
        assert_eq!(r.to_client(&data(2, 500, payload), at(20_000)), Ok(Route { to: b, also: None }));
    }

    #[test]
    fn an_unknown_index_or_a_node_initiation_is_dropped_and_counted() {
        let a = addr(40001);
        let mut r = Routes::new(MAX_ROUTES);
        // nothing learned yet: even with a single client known later, no guess is made
        assert_eq!(to(&mut r, &data(7, 0, TRANSPORT_MIN_LEN)), Err(Unrouted::UnknownIndex(7)));
        from(&mut r, &init(1), a);
        assert_eq!(to(&mut r, &data(2, 0, TRANSPORT_MIN_LEN)), Err(Unrouted::UnknownIndex(2)));
        assert_eq!(to(&mut r, &resp(9, 3)), Err(Unrouted::UnknownIndex(3)));
        assert_eq!(to(&mut r, &cookie(4)), Err(Unrouted::UnknownIndex(4)));
        // an initiation names its sender, never a receiver: the node's own one goes nowhere
        assert_eq!(to(&mut r, &init(1)), Err(Unrouted::Initiation));
        // the node's index in a client's transport data is not the client's own
        from(&mut r, &data(5, 0, TRANSPORT_MIN_LEN), a);
        assert_eq!(to(&mut r, &data(5, 0, TRANSPORT_MIN_LEN)), Err(Unrouted::UnknownIndex(5)));
        assert_eq!(r.dropped(), Dropped { unknown_index: 5, initiation: 1, malformed: 0, not_from_node: 0 });
        assert_eq!(to(&mut r, &data(1, 0, TRANSPORT_MIN_LEN)), Ok(a));
    }

    /// Anyone on the switch can send to the relay's port: only datagrams from the node's
    /// underlay address and port (link-local, as the cluster file lists it) reach a client,
    /// even one that names a live session.
    #[test]
    fn only_the_node_reaches_a_client_through_the_switch() {
        let a = addr(40001);
        let node: SocketAddr = "[fe80::5054:ff:fe00:101]:51820".parse().unwrap();
        let mut r = Routes::new(MAX_ROUTES);
        from(&mut r, &init(1), a);
        // another node or guest on the link, the node's address from another port, a routable address
        for src in ["[fe80::5054:ff:fe00:102]:51820", "[fe80::5054:ff:fe00:101]:51821", "[fd00::1:1]:51820"] {
            let src: SocketAddr = src.parse().unwrap();
            assert_eq!(r.from_switch(src, node, &data(1, 0, TRANSPORT_MIN_LEN), t0()), Err(Unrouted::NotFromNode), "{src}");
            assert_eq!(r.from_switch(src, node, &resp(9, 1), t0()), Err(Unrouted::NotFromNode), "{src}");
        }
        assert_eq!(r.dropped(), Dropped { not_from_node: 6, ..Dropped::default() });
        assert_eq!(r.from_switch(node, node, &data(1, 0, TRANSPORT_MIN_LEN), t0()), Ok(Route { to: a, also: None }));
        assert_eq!(r.dropped().total(), 6);
    }

    #[test]
    fn short_and_garbage_datagrams_are_dropped_without_panic() {
        let a = addr(40001);
        let mut r = Routes::new(8);
        from(&mut r, &init(1), a);
        let mut bad: Vec<Vec<u8>> = vec![vec![], vec![4], vec![4, 0, 0], vec![4, 0, 0, 0, 1, 0, 0]];
        // the right index, but cut short, too long, an unknown type, reserved bytes set
        let mut d = data(1, 0, TRANSPORT_MIN_LEN);
        bad.push(d[..TRANSPORT_MIN_LEN - 1].to_vec());
        d[1] = 1;
        bad.push(d);
        let mut d = resp(9, 1);
        bad.push(d[..d.len() - 1].to_vec());
        d.push(0);
        bad.push(d);
        bad.push(cookie(1)[..8].to_vec());
        let mut d = data(1, 0, TRANSPORT_MIN_LEN);
        for ty in [0u8, 5, 0xff] {
            d[0] = ty;
            bad.push(d.clone());
        }
        let n = bad.len() as u64;
        for d in &bad {
            assert_eq!(to(&mut r, d), Err(Unrouted::Malformed), "{d:?}");
            // learned from nothing either
            from(&mut r, d, addr(1));
        }
        // random bytes: no panic, never routed (a random index matching 1 is 1 in 2^32 per try)
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000usize {
            let d: Vec<u8> = (0..i % 200)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(to(&mut r, &d).is_err());
            from(&mut r, &d, addr(2));
        }
        assert_eq!(r.dropped().malformed, n + 20_000);
        assert_eq!((r.len(), to(&mut r, &data(1, 1, TRANSPORT_MIN_LEN))), (1, Ok(a)));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_used() {
        let mut r = Routes::new(4);
        for i in 0..4 {
            from(&mut r, &init(i), addr(40000 + i as u16));
        }
        // index 0 is used again (routed to), so 1 is now the oldest
        assert_eq!(to(&mut r, &data(0, 0, TRANSPORT_MIN_LEN)), Ok(addr(40000)));
        from(&mut r, &init(4), addr(40004));
        assert_eq!(r.len(), 4);
        assert_eq!(to(&mut r, &data(1, 0, TRANSPORT_MIN_LEN)), Err(Unrouted::UnknownIndex(1)));
        for i in [0, 2, 3, 4] {
            assert_eq!(to(&mut r, &data(i, 0, TRANSPORT_MIN_LEN)), Ok(addr(40000 + i as u16)), "index {i}");
        }
        // a flood of initiations keeps the bound; the newest indices stay
        for i in 100..100 + 10 * MAX_ROUTES as u32 {
            from(&mut r, &init(i), addr(50000));
        }
        assert_eq!(r.len(), 4);
        let last = 100 + 10 * MAX_ROUTES as u32 - 1;
        assert_eq!(to(&mut r, &data(last, 0, TRANSPORT_MIN_LEN)), Ok(addr(50000)));
        assert_eq!(to(&mut r, &data(4, 0, TRANSPORT_MIN_LEN)), Err(Unrouted::UnknownIndex(4)));
        // an index learned again moves to its new owner without a second entry
        from(&mut r, &init(last), addr(50001));
        assert_eq!((r.len(), to(&mut r, &data(last, 1, TRANSPORT_MIN_LEN))), (4, Ok(addr(50001))));
        let mut big = Routes::new(MAX_ROUTES);
        for i in 0..2 * MAX_ROUTES as u32 {
            from(&mut big, &init(i), addr(40000));
        }
        assert_eq!(big.len(), MAX_ROUTES);
        assert_eq!(to(&mut big, &data(MAX_ROUTES as u32 - 1, 0, TRANSPORT_MIN_LEN)), Err(Unrouted::UnknownIndex(MAX_ROUTES as u32 - 1)));
        assert_eq!(to(&mut big, &data(MAX_ROUTES as u32, 0, TRANSPORT_MIN_LEN)), Ok(addr(40000)));
    }
}
