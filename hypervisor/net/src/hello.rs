//! Joining without secrets on the wire (docs/boot.md, "Joining"): a node whose key the
//! cluster has not admitted says hello to its seeds, and the seeds keep it as *pending* until
//! an admin admits the key (`catenary node add KEY`).
//!
//! A hello is one UDP datagram on the fabric port, outside any session (the sender has none
//! yet). It carries only public facts: the sender's public key and its hardware (CPUs, memory,
//! NIC MAC). It is authenticated to the one seed it is sent to by a MAC keyed with the static
//! x25519 shared secret `DH(sender, seed)`: only the holder of the sender's private key (or the
//! seed itself) can make it, so nobody can put a key they do not hold into the pending table.
//! The seed pays one DH per hello it checks; that work and the table are bounded
//! ([`Pending`]). Each hello carries the sender's timestamp (ns since its boot, rising); a seed
//! takes a hello for a pending key only if its timestamp is newer than the entry's, so a replay
//! (from anywhere) neither moves the entry's source endpoint nor keeps the entry alive.
//!
//! Layout (80 bytes): magic `CTHL`, version 2, 3 zero bytes, public key (32), CPUs (u16 LE),
//! memory MiB (u32 LE), MAC (6), 4 zero bytes, timestamp (u64 LE), then
//! `MAC(DH(sender, seed), "catenary hello v2" ‖ seed public key ‖ bytes 0..64)` (16). The
//! first byte is never a WireGuard message type (1–4), so the two never mix on one port.
use alloc::vec::Vec;
use netfabric::identity::Identity;

pub const MAGIC: [u8; 4] = *b"CTHL";
pub const VERSION: u8 = 2;
pub const LEN: usize = 80;
const BODY: usize = 64;
const LABEL: &[u8] = b"catenary hello v2";

/// What a pending node says about itself (all public).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub key: [u8; 32],
    pub cpus: u16,
    pub mem_mib: u32,
    pub mac: [u8; 6],
    /// The sender's timestamp (ns since its boot): a newer hello replaces an older one.
    pub stamp: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    Length,
    Magic,
    Version,
    Reserved,
    /// A low-order key, or our own.
    Key,
    /// The MAC does not check out against the claimed key.
    Mac,
}

pub fn is_hello(data: &[u8]) -> bool {
    data.len() >= 4 && data[..4] == MAGIC
}

/// The hello `me` sends to the seed whose public key is `seed` (`None`: a low-order seed key).
pub fn encode(me: &Identity, seed: &[u8; 32], cpus: u16, mem_mib: u32, mac: [u8; 6], stamp: u64) -> Option<[u8; LEN]> {
    let ss = netfabric::noise::static_static(me, seed).ok()?;
    let mut b = [0u8; LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = VERSION;
    b[8..40].copy_from_slice(&me.public_key());
    b[40..42].copy_from_slice(&cpus.to_le_bytes());
    b[42..46].copy_from_slice(&mem_mib.to_le_bytes());
    b[46..52].copy_from_slice(&mac);
    b[56..64].copy_from_slice(&stamp.to_le_bytes());
    let t = netfabric::crypto::mac(&ss, &[LABEL, seed, &b[..BODY]]);
    b[BODY..].copy_from_slice(&t);
    Some(b)
}

/// The layout alone (no DH): what [`verify`] checks before it spends one.
pub fn parse(data: &[u8]) -> Result<Facts, HelloError> {
    if data.len() != LEN {
        return Err(HelloError::Length);
    }
    if data[..4] != MAGIC {
        return Err(HelloError::Magic);
    }
    if data[4] != VERSION {
        return Err(HelloError::Version);
    }
    if data[5..8] != [0; 3] || data[52..56] != [0; 4] {
        return Err(HelloError::Reserved);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&data[8..40]);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&data[46..52]);
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&data[56..64]);
    Ok(Facts {
        key,
        cpus: u16::from_le_bytes([data[40], data[41]]),
        mem_mib: u32::from_le_bytes([data[42], data[43], data[44], data[45]]),
        mac,
        stamp: u64::from_le_bytes(stamp),
    })
}

/// A hello addressed to `me`, checked (one DH).
pub fn verify(me: &Identity, data: &[u8]) -> Result<Facts, HelloError> {
    let f = parse(data)?;
    if f.key == me.public_key() {
        return Err(HelloError::Key);
    }
    let ss = netfabric::noise::static_static(me, &f.key).map_err(|_| HelloError::Key)?;
    let want = netfabric::crypto::mac(&ss, &[LABEL, &me.public_key(), &data[..BODY]]);
    // Not secret-dependent timing in a way that matters: the tag is public once sent; still,
    // compare without an early exit.
    if want.iter().zip(&data[BODY..]).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0 {
        return Err(HelloError::Mac);
    }
    Ok(f)
}

/// One pending node as a seed holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub facts: Facts,
    /// Where its hello came from (underlay address and port): its fabric endpoint once admitted.
    pub from: core::net::SocketAddrV6,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Why a hello was not taken (counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Bad(HelloError),
    /// Over the rate of hellos checked (before the DH): this source's, or the global one.
    RateLimited,
    /// Not newer than the hello the entry holds (a replay, or a sender that rebooted: its
    /// hellos are taken again once the old entry expires).
    Stale,
    /// The table is full of live entries: a new key waits (a known key is refreshed).
    Full,
    /// The key is already a peer (admitted, or in the cluster file).
    Known,
}

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    refill_ns: u64,
}

impl Bucket {
    fn full(burst: u64, now_ns: u64) -> Bucket {
        Bucket { tokens: burst, refill_ns: now_ns }
    }

    fn take(&mut self, rate: u64, burst: u64, now_ns: u64) -> bool {
        let per = 1_000_000_000 / rate.clamp(1, 1_000_000_000);
        self.refill_ns = self.refill_ns.min(now_ns);
        let add = (now_ns - self.refill_ns) / per;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(burst);
            self.refill_ns = if self.tokens == burst { now_ns } else { self.refill_ns + add * per };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Per-source buckets: at most this many sources (underlay /64s) are tracked ...
pub const SOURCES: usize = 64;
/// ... each allowed this many hellos per second (a burst of as many): a genuine sender needs
/// one per 2 s, so a flood from one source takes at most this share of the global rate.
pub const SOURCE_RATE: u64 = 2;

/// The seed's bounded table of pending nodes. At most `cap` entries; an entry not heard
/// from for `ttl_ns` goes; at most `rate` hellos per second are checked (a token bucket of
/// `rate` with a burst of `rate`), and at most [`SOURCE_RATE`] per source /64 (the
/// [`SOURCES`] most recent sources are tracked; a new one evicts the least recently seen),
/// before any DH, so a flood costs at most `rate` DHs/s and one source cannot spend the
/// global budget alone. A hello not newer than its entry's is refused before the buckets.
/// When full of live entries a new key is refused rather than evicting one: an attacker with
/// many keys cannot push a real pending node out by rotating keys, only keep new ones out
/// while it keeps sending valid hellos from keys it holds (each costing it a DH and a packet).
#[derive(Debug)]
pub struct Pending {
    entries: Vec<Entry>,
    cap: usize,
    ttl_ns: u64,
    rate: u64,
    global: Bucket,
    /// (source /64, last seen, bucket)
    sources: Vec<([u16; 4], u64, Bucket)>,
    pub taken: u64,
    pub refused: u64,
}

pub const CAP: usize = 32;
pub const TTL_NS: u64 = 60_000_000_000;
pub const RATE: u64 = 20;

impl Default for Pending {
    fn default() -> Self {
        Pending::new(CAP, TTL_NS, RATE)
    }
}

impl Pending {
    pub fn new(cap: usize, ttl_ns: u64, rate: u64) -> Pending {
        Pending { entries: Vec::new(), cap, ttl_ns, rate, global: Bucket::full(rate, 0), sources: Vec::new(), taken: 0, refused: 0 }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<&Entry> {
        self.entries.iter().find(|e| e.facts.key == *key)
    }

    pub fn remove(&mut self, key: &[u8; 32]) {
        self.entries.retain(|e| e.facts.key != *key);
    }

    pub fn expire(&mut self, now_ns: u64) {
        let ttl = self.ttl_ns;
        self.entries.retain(|e| now_ns.saturating_sub(e.last_ns) <= ttl);
    }

    /// A hello from `from` at `now_ns`; `known(key)`: the key is already a peer.
    pub fn offer(&mut self, me: &Identity, data: &[u8], from: core::net::SocketAddrV6, now_ns: u64, known: impl Fn(&[u8; 32]) -> bool) -> Result<Facts, Refusal> {
        let r = self.offer_inner(me, data, from, now_ns, known);
        match r {
            Ok(_) => self.taken += 1,
            Err(_) => self.refused += 1,
        }
        r
    }

    fn offer_inner(&mut self, me: &Identity, data: &[u8], from: core::net::SocketAddrV6, now_ns: u64, known: impl Fn(&[u8; 32]) -> bool) -> Result<Facts, Refusal> {
        let f = parse(data).map_err(Refusal::Bad)?;
        if known(&f.key) {
            return Err(Refusal::Known);
        }
        self.expire(now_ns);
        match self.get(&f.key) {
            None if self.entries.len() >= self.cap => return Err(Refusal::Full),
            Some(e) if f.stamp <= e.facts.stamp => return Err(Refusal::Stale),
            _ => {}
        }
        // The source's bucket first, so a flooding source does not spend the global tokens.
        let seg = from.ip().segments();
        let src = [seg[0], seg[1], seg[2], seg[3]];
        let i = match self.sources.iter().position(|s| s.0 == src) {
            Some(i) => i,
            None if self.sources.len() < SOURCES => {
                self.sources.push((src, now_ns, Bucket::full(SOURCE_RATE, now_ns)));
                self.sources.len() - 1
            }
            None => {
                let i = self.sources.iter().enumerate().min_by_key(|(_, s)| s.1).map_or(0, |(i, _)| i);
                self.sources[i] = (src, now_ns, Bucket::full(SOURCE_RATE, now_ns));
                i
            }
        };
        self.sources[i].1 = now_ns;
        if !self.sources[i].2.take(SOURCE_RATE, SOURCE_RATE, now_ns) || !self.global.take(self.rate, self.rate, now_ns) {
            return Err(Refusal::RateLimited);
        }
        let f = verify(me, data).map_err(Refusal::Bad)?;
        match self.entries.iter_mut().find(|e| e.facts.key == f.key) {
            Some(e) => {
                // Newer than the entry's (checked above, before the DH).
                e.facts = f;
                e.from = from;
                e.last_ns = now_ns;
            }
            None => self.entries.push(Entry { facts: f, from, first_ns: now_ns, last_ns: now_ns }),
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv6Addr, SocketAddrV6};

    fn id(b: u8) -> Identity {
        Identity::from_secret_bytes([b; 32])
    }
    fn src() -> SocketAddrV6 {
        src_n(0)
    }
    /// A source in its own /64 per `n`.
    fn src_n(n: u16) -> SocketAddrV6 {
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, n, 0, 0, 0, 7), 51820, 0, 0)
    }

    #[test]
    fn a_hello_checks_out_only_at_its_seed_and_only_unchanged() {
        let (node, seed, other) = (id(1), id(2), id(3));
        let h = encode(&node, &seed.public_key(), 4, 2048, [0x52, 0x54, 0, 0xca, 0, 9], 77).unwrap();
        let f = verify(&seed, &h).unwrap();
        assert_eq!(f, Facts { key: node.public_key(), cpus: 4, mem_mib: 2048, mac: [0x52, 0x54, 0, 0xca, 0, 9], stamp: 77 });
        // another seed: the MAC was made for the first
        assert_eq!(verify(&other, &h), Err(HelloError::Mac));
        // any changed byte is refused; every truncation too
        for i in 0..LEN {
            let mut b = h;
            b[i] ^= 0x40;
            assert!(verify(&seed, &b).is_err(), "byte {i}");
        }
        for n in 0..LEN {
            assert!(verify(&seed, &h[..n]).is_err());
        }
        // a key claimed by someone who does not hold it: the MAC cannot be made
        let mut forged = h;
        forged[8..40].copy_from_slice(&other.public_key());
        assert_eq!(verify(&seed, &forged), Err(HelloError::Mac));
        // our own key, and a low-order key
        let mine = encode(&seed, &node.public_key(), 1, 1, [0; 6], 1).unwrap();
        let mut own = mine;
        own[8..40].copy_from_slice(&node.public_key());
        assert_eq!(verify(&node, &own), Err(HelloError::Key));
        let mut zero = h;
        zero[8..40].copy_from_slice(&[0; 32]);
        assert_eq!(verify(&seed, &zero), Err(HelloError::Key));
    }

    #[test]
    fn the_pending_table_is_bounded_rate_limited_and_expires() {
        let seed = id(200);
        let mut p = Pending::new(3, 10_000_000_000, 5);
        let mut stamp = 0;
        let mut hello = |b: u8| {
            stamp += 1;
            encode(&id(b), &seed.public_key(), 2, 512, [0, 1, 2, 3, 4, b], stamp).unwrap()
        };
        let mut t = 1_000_000_000u64;
        for b in 1..=3 {
            assert!(p.offer(&seed, &hello(b), src_n(b.into()), t, |_| false).is_ok());
        }
        // full: a fourth key waits; a known one is refreshed
        assert_eq!(p.offer(&seed, &hello(4), src_n(4), t, |_| false), Err(Refusal::Full));
        assert!(p.offer(&seed, &hello(1), src_n(5), t, |_| false).is_ok());
        // a key that is a peer already is not pending
        assert_eq!(p.offer(&seed, &hello(2), src_n(6), t, |k| *k == id(2).public_key()), Err(Refusal::Known));
        // the global bucket (5, and 4 were spent) runs dry within the same instant
        let mut limited = 0;
        for n in 0..20 {
            if p.offer(&seed, &hello(1), src_n(10 + n), t, |_| false) == Err(Refusal::RateLimited) {
                limited += 1;
            }
        }
        assert!(limited >= 19, "{limited}");
        // a second later there are tokens again
        t += 1_000_000_000;
        assert!(p.offer(&seed, &hello(1), src_n(1), t, |_| false).is_ok());
        // entries not heard from for the TTL go; then a new key fits
        t += 11_000_000_000;
        assert!(p.offer(&seed, &hello(4), src_n(4), t, |_| false).is_ok());
        assert_eq!(p.entries().len(), 1);
        p.remove(&id(4).public_key());
        assert!(p.entries().is_empty());
    }

    #[test]
    fn hostile_bytes_never_panic_and_never_enter_the_table() {
        let seed = id(9);
        let mut p = Pending::default();
        let mut x = 0x1234_5678_9abc_def0u64;
        let good = encode(&id(5), &seed.public_key(), 1, 1, [0; 6], 1).unwrap();
        for i in 0..5000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = good.to_vec();
            b.truncate((x % (LEN as u64 + 8)) as usize);
            if b.len() >= 4 {
                let at = (x >> 8) as usize % b.len();
                b[at] ^= (x >> 16) as u8 | 1;
            }
            let _ = p.offer(&seed, &b, src(), i * 100_000_000, |_| false);
        }
        assert!(p.entries().iter().all(|e| e.facts.key == id(5).public_key()));
    }

    #[test]
    fn a_junk_flood_from_one_source_does_not_starve_a_genuine_hello() {
        let seed = id(200);
        let mut p = Pending::default();
        let good = encode(&id(1), &seed.public_key(), 2, 512, [0; 6], 1).unwrap();
        let mut junk = good;
        junk[BODY] ^= 1; // fails the MAC, but only after the buckets
        let mut t = 5_000_000_000u64;
        for _ in 0..10 {
            // 40 junk hellos per second from one attacker, the last burst just before the
            // genuine hello at the same instant
            t += 1_000_000_000;
            for _ in 0..40 {
                let _ = p.offer(&seed, &junk, src_n(66), t, |_| false);
            }
        }
        assert!(p.offer(&seed, &good, src_n(1), t, |_| false).is_ok());
        assert_eq!(p.get(&id(1).public_key()).map(|e| e.from), Some(src_n(1)));
        // many sources together are still held to the global rate (a key not pending yet)
        let mut junk = encode(&id(2), &seed.public_key(), 2, 512, [0; 6], 1).unwrap();
        junk[BODY] ^= 1;
        let mut taken = 0;
        for n in 100..200 {
            if p.offer(&seed, &junk, src_n(n), t, |_| false) != Err(Refusal::RateLimited) {
                taken += 1;
            }
        }
        assert!(taken <= RATE as usize, "{taken}");
        assert!(p.sources.len() <= SOURCES);
    }

    #[test]
    fn a_replayed_hello_does_not_move_the_endpoint_a_newer_one_does() {
        let seed = id(200);
        let mut p = Pending::default();
        let first = encode(&id(1), &seed.public_key(), 2, 512, [0; 6], 10).unwrap();
        let t = 5_000_000_000u64;
        assert!(p.offer(&seed, &first, src_n(1), t, |_| false).is_ok());
        // the attacker replays it from its own address, later
        assert_eq!(p.offer(&seed, &first, src_n(9), t + 3_000_000_000, |_| false), Err(Refusal::Stale));
        let e = *p.get(&id(1).public_key()).unwrap();
        assert_eq!((e.from, e.last_ns), (src_n(1), t), "a replay neither moves nor refreshes the entry");
        // the node's next hello (a newer stamp) from a new address does move it
        let next = encode(&id(1), &seed.public_key(), 2, 512, [0; 6], 11).unwrap();
        assert!(p.offer(&seed, &next, src_n(2), t + 4_000_000_000, |_| false).is_ok());
        assert_eq!(p.get(&id(1).public_key()).unwrap().from, src_n(2));
        assert_eq!(p.offer(&seed, &first, src_n(9), t + 5_000_000_000, |_| false), Err(Refusal::Stale));
        assert_eq!(p.get(&id(1).public_key()).unwrap().from, src_n(2));
    }
}
