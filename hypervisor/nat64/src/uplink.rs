//! The gateway's IPv4 side on Ethernet: its address on the uplink, ARP (RFC 826) for the
//! IPv4 router and on-link hosts, and Ethernet framing. Pure state on the caller's clock, as
//! the translator is: frames in, frames out.
//!
//! ARP is written here (28 fixed bytes for Ethernet/IPv4): etherparse 0.16 has no ARP, and
//! smoltcp's would need its `proto-ipv4` feature, which Cargo would unify into the node's own
//! smoltcp and put IPv4 into `netd` (docs/nat64.md). Everything is bounded: [`ARP_ENTRIES`]
//! cache entries (oldest replaced), [`PENDING_MAX`] packets waiting for a resolution (the
//! rest dropped and counted), one request a second per address. The cache learns only from
//! replies to our requests and from requests for our own address (RFC 826's merge rule, less
//! gratuitous updates), so a stranger on the link cannot fill it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::{EtherType, Ethernet2Header};

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];
/// ARP cache entries at most.
pub const ARP_ENTRIES: usize = 16;
/// How long a learned address is trusted.
pub const ARP_TTL: Duration = Duration::from_secs(60);
/// Packets waiting for an address to resolve, at most (all destinations together).
pub const PENDING_MAX: usize = 32;
/// A packet waits this long for its resolution, then it is dropped.
const PENDING_TTL: Duration = Duration::from_secs(3);
/// One ARP request per address this often at most.
const REQUEST_EVERY: Duration = Duration::from_secs(1);

/// The uplink's configuration (from the node's command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkConfig {
    pub mac: [u8; 6],
    pub addr: [u8; 4],
    pub prefix_len: u8,
    pub gateway: [u8; 4],
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkStats {
    pub arp_requests_sent: u64,
    pub arp_replies_sent: u64,
    pub arp_learned: u64,
    pub frames_ignored: u64,
    pub pending_dropped: u64,
    pub ipv4_in: u64,
    pub ipv4_out: u64,
}

/// What an incoming frame was.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// An IPv4 packet for us (the Ethernet header removed): for the translator.
    Ipv4(Vec<u8>),
    /// Handled here (ARP) or not ours: nothing for the translator.
    None,
}

struct Entry {
    ip: [u8; 4],
    mac: [u8; 6],
    at: Duration,
}

pub struct Uplink {
    cfg: UplinkConfig,
    cache: Vec<Entry>,
    /// (next hop, packet, queued at)
    pending: VecDeque<([u8; 4], Vec<u8>, Duration)>,
    /// (address, last request)
    asked: Vec<([u8; 4], Duration)>,
    /// Frames to transmit.
    out: VecDeque<Vec<u8>>,
    stats: UplinkStats,
}

/// Parse `a.b.c.d/len` (len 1..=32) and `a.b.c.d`.
pub fn parse_cidr(s: &str) -> Option<([u8; 4], u8)> {
    let (a, l) = s.split_once('/')?;
    let l: u8 = l.parse().ok()?;
    if !(1..=32).contains(&l) {
        return None;
    }
    Some((parse_addr(a)?, l))
}

pub fn parse_addr(s: &str) -> Option<[u8; 4]> {
    let mut a = [0u8; 4];
    let mut it = s.split('.');
    for b in a.iter_mut() {
        let p = it.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    it.next().is_none().then_some(a)
}

impl Uplink {
    /// None when the gateway is not on the uplink's subnet, or an address is not a host.
    pub fn new(cfg: UplinkConfig) -> Option<Uplink> {
        let u = Uplink { cfg, cache: Vec::new(), pending: VecDeque::new(), asked: Vec::new(), out: VecDeque::new(), stats: UplinkStats::default() };
        (u.on_link(cfg.gateway) && cfg.gateway != cfg.addr && cfg.prefix_len < 32).then_some(u)
    }

    pub fn config(&self) -> &UplinkConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &UplinkStats {
        &self.stats
    }

    /// Learned addresses.
    pub fn arp_entries(&self) -> usize {
        self.cache.len()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.cfg.prefix_len.clamp(1, 32)))
    }

    fn on_link(&self, a: [u8; 4]) -> bool {
        u32::from_be_bytes(a) & self.mask() == u32::from_be_bytes(self.cfg.addr) & self.mask()
    }

    /// The next frame to transmit.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// A frame from the uplink NIC.
    pub fn input(&mut self, now: Duration, frame: &[u8]) -> Input {
        let Ok((eth, payload)) = Ethernet2Header::from_slice(frame) else {
            self.stats.frames_ignored += 1;
            return Input::None;
        };
        if eth.destination != self.cfg.mac && eth.destination != BROADCAST {
            self.stats.frames_ignored += 1;
            return Input::None;
        }
        match eth.ether_type.0 {
            ETHERTYPE_ARP => {
                self.arp(now, payload);
                Input::None
            }
            ETHERTYPE_IPV4 if eth.destination == self.cfg.mac => {
                self.stats.ipv4_in += 1;
                Input::Ipv4(payload.to_vec())
            }
            _ => {
                self.stats.frames_ignored += 1;
                Input::None
            }
        }
    }

    /// Send an IPv4 packet (from the translator): to its destination if on the link, else to
    /// the router; framed now if the next hop's MAC is known, else after ARP resolves it.
    pub fn send(&mut self, now: Duration, packet: Vec<u8>) {
        let Some(dst) = packet.get(16..20).map(|d| [d[0], d[1], d[2], d[3]]) else { return };
        let hop = if self.on_link(dst) { dst } else { self.cfg.gateway };
        if let Some(mac) = self.lookup(now, hop) {
            self.stats.ipv4_out += 1;
            self.frame(mac, ETHERTYPE_IPV4, &packet);
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.stats.pending_dropped += 1;
            return;
        }
        self.pending.push_back((hop, packet, now));
        self.request(now, hop);
    }

    /// Expire the cache and packets that waited too long; ask again for addresses still
    /// awaited. Call it every second or so.
    pub fn tick(&mut self, now: Duration) {
        self.cache.retain(|e| now.saturating_sub(e.at) < ARP_TTL);
        let before = self.pending.len();
        self.pending.retain(|(_, _, at)| now.saturating_sub(*at) < PENDING_TTL);
        self.stats.pending_dropped += (before - self.pending.len()) as u64;
        let waiting: Vec<[u8; 4]> = self.pending.iter().map(|(h, _, _)| *h).collect();
        for h in waiting {
            self.request(now, h);
        }
    }

    fn lookup(&self, now: Duration, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.cache.iter().find(|e| e.ip == ip && now.saturating_sub(e.at) < ARP_TTL).map(|e| e.mac)
    }

    fn frame(&mut self, dst: [u8; 6], ether_type: u16, payload: &[u8]) {
        let eth = Ethernet2Header { source: self.cfg.mac, destination: dst, ether_type: EtherType(ether_type) };
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&eth.to_bytes());
        f.extend_from_slice(payload);
        self.out.push_back(f);
    }

    fn request(&mut self, now: Duration, ip: [u8; 4]) {
        if let Some(a) = self.asked.iter_mut().find(|a| a.0 == ip) {
            if now.saturating_sub(a.1) < REQUEST_EVERY {
                return;
            }
            a.1 = now;
        } else {
            if self.asked.len() >= PENDING_MAX {
                self.asked.remove(0);
            }
            self.asked.push((ip, now));
        }
        self.stats.arp_requests_sent += 1;
        let p = arp_packet(1, self.cfg.mac, self.cfg.addr, [0; 6], ip);
        self.frame(BROADCAST, ETHERTYPE_ARP, &p);
    }

    fn learn(&mut self, now: Duration, ip: [u8; 4], mac: [u8; 6]) {
        if mac == BROADCAST || mac[0] & 1 != 0 || mac == [0; 6] {
            return;
        }
        if let Some(e) = self.cache.iter_mut().find(|e| e.ip == ip) {
            e.mac = mac;
            e.at = now;
        } else {
            if self.cache.len() >= ARP_ENTRIES {
                // the oldest goes
                if let Some(i) = self.cache.iter().enumerate().min_by_key(|(_, e)| e.at).map(|(i, _)| i) {
                    self.cache.swap_remove(i);
                }
            }
            self.cache.push(Entry { ip, mac, at: now });
        }
        self.stats.arp_learned += 1;
        self.asked.retain(|a| a.0 != ip);
        // release what waited for it, in order
        let mut rest = VecDeque::new();
        while let Some((hop, p, at)) = self.pending.pop_front() {
            if hop == ip {
                self.stats.ipv4_out += 1;
                self.frame(mac, ETHERTYPE_IPV4, &p);
            } else {
                rest.push_back((hop, p, at));
            }
        }
        self.pending = rest;
    }

    fn arp(&mut self, now: Duration, p: &[u8]) {
        // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4
        if p.len() < 28 || p[0..6] != [0, 1, 8, 0, 6, 4] {
            self.stats.frames_ignored += 1;
            return;
        }
        let op = u16::from_be_bytes([p[6], p[7]]);
        let sha: [u8; 6] = p[8..14].try_into().expect("6 bytes");
        let spa: [u8; 4] = p[14..18].try_into().expect("4 bytes");
        let tpa: [u8; 4] = p[24..28].try_into().expect("4 bytes");
        match op {
            1 if tpa == self.cfg.addr && spa != self.cfg.addr && self.on_link(spa) => {
                self.learn(now, spa, sha);
                self.stats.arp_replies_sent += 1;
                let r = arp_packet(2, self.cfg.mac, self.cfg.addr, sha, spa);
                self.frame(sha, ETHERTYPE_ARP, &r);
            }
            2 if tpa == self.cfg.addr && self.asked.iter().any(|a| a.0 == spa) => self.learn(now, spa, sha),
            _ => self.stats.frames_ignored += 1,
        }
    }
}

/// An Ethernet/IPv4 ARP packet (RFC 826): `op` 1 request, 2 reply.
pub fn arp_packet(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&sha);
    p[14..18].copy_from_slice(&spa);
    p[18..24].copy_from_slice(&tha);
    p[24..28].copy_from_slice(&tpa);
    p
}
