//! Per-source rate limit of handshake work under load.
//!
//! Under load a handshake message must carry a valid mac2, which proves the sender receives
//! packets at its source address (it got a cookie there). That alone does not bound the
//! Diffie-Hellman work one such source can cause, so — as WireGuard does — each source IP gets
//! a token bucket: [`PACKETS_PER_SECOND`] handshake messages a second with a burst of
//! [`BURST`]. Sources are keyed by IP address (not port: one host, one bucket).
//!
//! The table is bounded ([`MAX_SOURCES`]); an entry idle for [`ENTRY_LIFETIME`] is removed.
//! When the table is full of live sources, every source not in it shares one overflow bucket
//! of the same rate. Evicting an entry instead would hand a fresh, full bucket to an attacker
//! that rotates addresses; refusing outright would lock every new peer out while the attack
//! lasts. So the DH rate stays below `(MAX_SOURCES + 1) × PACKETS_PER_SECOND`, sources in the
//! table keep their buckets, and a new peer still gets a (contested) chance.
//!
//! Written here (not a crate) because it is a few lines over the caller's [`Instant`] and
//! must stay `no_std`, allocation-bounded and sans-I/O.

use alloc::collections::BTreeMap;
use core::net::IpAddr;
use core::time::Duration;

use crate::time::Instant;

/// Sustained handshake messages per second and source.
pub const PACKETS_PER_SECOND: u64 = 20;
/// Burst of handshake messages a new or idle source may send at once.
pub const BURST: u64 = 5;
/// An entry idle this long is removed.
pub const ENTRY_LIFETIME: Duration = Duration::from_secs(1);
/// Most sources tracked at once.
pub const MAX_SOURCES: usize = 4096;

const COST_NS: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
const MAX_TOKENS_NS: u64 = COST_NS * BURST;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens_ns: u64,
    last: Instant,
}

/// The token buckets of all recently seen sources.
#[derive(Debug)]
pub struct RateLimiter {
    table: BTreeMap<IpAddr, Bucket>,
    capacity: usize,
    last_gc: Instant,
    overflow: Bucket,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::with_capacity(MAX_SOURCES)
    }
}

impl RateLimiter {
    /// A limiter tracking at most `capacity` sources.
    pub fn with_capacity(capacity: usize) -> Self {
        let overflow = Bucket { tokens_ns: MAX_TOKENS_NS, last: Instant::ZERO };
        RateLimiter { table: BTreeMap::new(), capacity, last_gc: Instant::ZERO, overflow }
    }

    /// Number of sources tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True if no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn gc(&mut self, now: Instant) {
        // A full scan at most once per lifetime, or per eighth of it while the table is full.
        let since = now.saturating_since(self.last_gc);
        let full = self.table.len() >= self.capacity;
        if since < ENTRY_LIFETIME && !(full && since >= ENTRY_LIFETIME / 8) {
            return;
        }
        self.last_gc = now;
        self.table.retain(|_, b| now.saturating_since(b.last) < ENTRY_LIFETIME);
    }

    /// May a handshake message from `src` be processed now? Takes one token if so.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        self.gc(now);
        if let Some(b) = self.table.get_mut(&src) {
            return b.take(now);
        }
        if self.table.len() >= self.capacity {
            return self.overflow.take(now);
        }
        self.table.insert(src, Bucket { tokens_ns: MAX_TOKENS_NS - COST_NS, last: now });
        true
    }
}

impl Bucket {
    /// Refill for the time since the last call, then take one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let earned = u64::try_from(now.saturating_since(self.last).as_nanos()).unwrap_or(u64::MAX);
        self.tokens_ns = self.tokens_ns.saturating_add(earned).min(MAX_TOKENS_NS);
        self.last = now;
        if self.tokens_ns >= COST_NS {
            self.tokens_ns -= COST_NS;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V6(core::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16))
    }

    #[test]
    fn burst_then_sustained_rate() {
        let mut r = RateLimiter::default();
        let t0 = Instant::from_secs(10);
        let burst = (0..100).filter(|_| r.allow(ip(1), t0)).count();
        assert_eq!(burst as u64, BURST);
        // One message per 1 ms for 2 s: 20/s sustained.
        let ok = (1..=2000).filter(|ms| r.allow(ip(1), t0 + Duration::from_millis(*ms))).count();
        assert_eq!(ok as u64, 2 * PACKETS_PER_SECOND);
        // Another source is unaffected.
        assert!(r.allow(ip(2), t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn table_is_bounded_and_entries_expire() {
        let mut r = RateLimiter::with_capacity(8);
        let t0 = Instant::from_secs(10);
        for i in 0..8 {
            assert!(r.allow(ip(i), t0));
        }
        // Sources beyond the table share one overflow bucket: a burst in all, not per source.
        let shared = (100..200).filter(|i| r.allow(ip(*i), t0)).count();
        assert_eq!(shared as u64, BURST);
        assert!(r.allow(ip(3), t0), "known sources keep their bucket");
        assert_eq!(r.len(), 8);
        let later = t0 + ENTRY_LIFETIME + Duration::from_millis(1);
        assert!(r.allow(ip(100), later), "idle entries were collected");
        assert_eq!(r.len(), 1);
    }
}
