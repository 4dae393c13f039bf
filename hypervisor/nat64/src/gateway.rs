//! The gateway: the translator between the fabric (IPv6 packets to and from `64:ff9b::/96`)
//! and the uplink (Ethernet frames). The ring-3 service `natd` moves packets and frames; the
//! decisions are here, host-tested. Configured by the node's command line words `nat64.*`.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::{IpNumber, Ipv4Header, Ipv6Header, UdpHeader};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::dns64::{Client, Dns64, Out, DNS64_ADDR};
use crate::dns64_tcp::DnsTcp;
use crate::translate::{concat, udp_parts, v4_header, v6_header};
use crate::uplink::{parse_addr, parse_cidr, Input, Uplink, UplinkConfig};
use crate::toobig::{df_and_id, frag_needed, fragment, packet_too_big, RateLimit};
use crate::{embed, is_global_v4, Config, Nat64};

/// The largest IPv6 packet the gateway hands to the fabric (the fabric's MTU): a larger
/// translation is fragmented or answered with fragmentation-needed ([`crate::toobig`]).
pub const FABRIC_MTU: usize = 1404;
/// The uplink's MTU without `nat64.mtu=` (Ethernet).
pub const DEFAULT_UPLINK_MTU: usize = 1500;
/// `nat64.mtu=` bounds: at least 1260 so that packet-too-big says at least 1280 (RFC 8200 §5);
/// at most what the uplink's frames carry.
pub const UPLINK_MTU_RANGE: core::ops::RangeInclusive<usize> = 1260..=1500;

/// Parsed `nat64.*` words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `nat64.uplink=a.b.c.d/len`: the uplink's address (also the pool address).
    pub addr: [u8; 4],
    pub prefix_len: u8,
    /// `nat64.router=a.b.c.d`: the IPv4 default router, on the uplink's subnet.
    pub router: [u8; 4],
    /// `nat64.udp_timeout=`, `nat64.tcp_timeout=` (established), `nat64.tcp_transitory_timeout=`,
    /// `nat64.icmp_timeout=` (seconds; RFC 6146's defaults without them).
    pub udp_timeout: Duration,
    pub tcp_established_timeout: Duration,
    pub tcp_transitory_timeout: Duration,
    pub icmp_timeout: Duration,
    /// `nat64.max_sessions=N` (bindings the same; [`DEFAULT_SESSIONS`] without it).
    pub max_sessions: usize,
    /// `nat64.dns=a.b.c.d`: the upstream IPv4 resolver DNS64 asks (none: no DNS64).
    pub dns: Option<[u8; 4]>,
    /// `nat64.mtu=N`: the uplink's IPv4 MTU ([`DEFAULT_UPLINK_MTU`] without it).
    pub mtu: usize,
}

/// Sessions at most, whatever the command line says (memory of the service's quota).
pub const MAX_SESSIONS: usize = 16_384;
/// Sessions (and bindings) without `nat64.max_sessions`: what `natd`'s heap holds with room.
pub const DEFAULT_SESSIONS: usize = 4096;

impl GatewayConfig {
    /// From the node's command line (only the `nat64.` words are read).
    pub fn parse(cmdline: &str) -> Result<GatewayConfig, String> {
        let d = Config::new([0; 4]);
        let mut c = GatewayConfig {
            addr: [0; 4], prefix_len: 0, router: [0; 4], udp_timeout: d.udp_timeout, tcp_established_timeout: d.tcp_established_timeout,
            tcp_transitory_timeout: d.tcp_transitory_timeout, icmp_timeout: d.icmp_timeout, max_sessions: DEFAULT_SESSIONS,
            dns: None, mtu: DEFAULT_UPLINK_MTU,
        };
        let mut have = (false, false);
        for w in cmdline.split_whitespace() {
            let Some(w) = w.strip_prefix("nat64.") else { continue };
            let (k, v) = w.split_once('=').ok_or_else(|| alloc::format!("nat64.{w}: expected KEY=VALUE"))?;
            let secs = |v: &str| v.parse::<u64>().ok().filter(|s| (1..=86_400).contains(s)).map(Duration::from_secs).ok_or_else(|| alloc::format!("nat64.{k}={v}: seconds 1..=86400"));
            match k {
                "uplink" => {
                    let (a, l) = parse_cidr(v).ok_or_else(|| alloc::format!("nat64.uplink={v}: expected a.b.c.d/len"))?;
                    (c.addr, c.prefix_len) = (a, l);
                    have.0 = true;
                }
                "router" => {
                    c.router = parse_addr(v).ok_or_else(|| alloc::format!("nat64.router={v}: expected a.b.c.d"))?;
                    have.1 = true;
                }
                "dns" => c.dns = Some(parse_addr(v).filter(|a| is_global_v4(*a)).ok_or_else(|| alloc::format!("nat64.dns={v}: expected a global a.b.c.d"))?),
                "mtu" => c.mtu = v.parse().ok().filter(|n| UPLINK_MTU_RANGE.contains(n)).ok_or_else(|| alloc::format!("nat64.mtu={v}: 1260..=1500"))?,
                "udp_timeout" => c.udp_timeout = secs(v)?,
                "tcp_timeout" => c.tcp_established_timeout = secs(v)?,
                "tcp_transitory_timeout" => c.tcp_transitory_timeout = secs(v)?,
                "icmp_timeout" => c.icmp_timeout = secs(v)?,
                "max_sessions" => {
                    c.max_sessions = v.parse().ok().filter(|n| (1..=MAX_SESSIONS).contains(n)).ok_or_else(|| alloc::format!("nat64.max_sessions={v}: 1..={MAX_SESSIONS}"))?
                }
                _ => return Err(alloc::format!("nat64.{k}: unknown setting")),
            }
        }
        if !have.0 || !have.1 {
            return Err("needs nat64.uplink=a.b.c.d/len and nat64.router=a.b.c.d".into());
        }
        if !is_global_v4(c.addr) {
            return Err("the uplink address must be global unicast IPv4 (RFC 6052 §3.1)".into());
        }
        Ok(c)
    }

    pub fn nat_config(&self) -> Config {
        let mut n = Config::new(self.addr);
        n.udp_timeout = self.udp_timeout;
        n.tcp_established_timeout = self.tcp_established_timeout;
        n.tcp_transitory_timeout = self.tcp_transitory_timeout;
        n.icmp_timeout = self.icmp_timeout;
        n.max_sessions = self.max_sessions;
        n.max_bindings = self.max_sessions;
        n
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Inbound translations over the fabric MTU with DF set: dropped (answered with
    /// fragmentation-needed unless rate-limited).
    pub too_big: u64,
    /// Inbound translations over the fabric MTU without DF: sent as IPv6 fragments.
    pub fragmented: u64,
    /// Outbound translations over the uplink MTU: dropped (answered with packet-too-big
    /// unless rate-limited).
    pub out_too_big: u64,
    /// ICMP errors the gateway sent, and the ones the rate limit held back.
    pub icmp_sent: u64,
    pub icmp_limited: u64,
}

pub struct Gateway {
    pub nat: Nat64,
    pub uplink: Uplink,
    pub stats: GatewayStats,
    /// DNS64 and its upstream resolver (`nat64.dns`).
    pub dns: Option<(Dns64, [u8; 4])>,
    /// DNS64 over TCP (with `dns`).
    pub dns_tcp: Option<DnsTcp>,
    pool: [u8; 4],
    mtu: usize,
    icmp_limit: RateLimit,
}

impl Gateway {
    /// None: the router is not on the uplink's subnet.
    /// `seed`: 256 bits of entropy (DNS64's upstream ids and ports, its TCP's sequence numbers).
    pub fn new(cfg: &GatewayConfig, mac: [u8; 6], seed: [u8; 32]) -> Option<Gateway> {
        let uplink = Uplink::new(UplinkConfig { mac, addr: cfg.addr, prefix_len: cfg.prefix_len, gateway: cfg.router })?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut dns_seed = [0u8; 32];
        rng.fill_bytes(&mut dns_seed);
        let dns = cfg.dns.map(|u| (Dns64::new(dns_seed), u));
        let dns_tcp = cfg.dns.map(|_| DnsTcp::new(Duration::ZERO, rng.next_u64()));
        Some(Gateway {
            nat: Nat64::new(cfg.nat_config()), uplink, stats: GatewayStats::default(), dns, dns_tcp, pool: cfg.addr, mtu: cfg.mtu,
            icmp_limit: RateLimit::default(),
        })
    }

    /// An IPv6 packet from the fabric, to the prefix: translated and queued on the uplink
    /// (frames in [`Uplink::take_frame`]), or for DNS64 at `64:ff9b::35` (UDP or TCP port 53);
    /// the packets for the fabric it causes at once are returned (DNS64's own answers, TCP,
    /// packet too big).
    pub fn from_fabric(&mut self, now: Duration, packet: &[u8]) -> Vec<Vec<u8>> {
        if packet.get(24..40) == Some(&DNS64_ADDR[..]) {
            return self.dns_question(now, packet);
        }
        let Ok(v4) = self.nat.outbound(now, packet) else { return Vec::new() };
        if v4.len() <= self.mtu {
            self.uplink.send(now, v4);
            return Vec::new();
        }
        // too big for the uplink: we never fragment (DF is always set), the sender learns the MTU
        self.stats.out_too_big += 1;
        if !self.may_send_icmp(now) {
            return Vec::new();
        }
        packet_too_big(embed(&self.nat.config().prefix, self.pool), packet, self.mtu as u32 + 20).into_iter().collect()
    }

    fn may_send_icmp(&mut self, now: Duration) -> bool {
        let ok = self.icmp_limit.allow(now);
        if ok {
            self.stats.icmp_sent += 1;
        } else {
            self.stats.icmp_limited += 1;
        }
        ok
    }

    /// A packet to DNS64: a UDP question (checksum verified), or TCP for its listener.
    fn dns_question(&mut self, now: Duration, packet: &[u8]) -> Vec<Vec<u8>> {
        let Some((dns, _)) = self.dns.as_mut() else { return Vec::new() };
        let Ok((ip6, rest)) = Ipv6Header::from_slice(packet) else { return Vec::new() };
        let Some(payload) = rest.get(..usize::from(ip6.payload_length)) else { return Vec::new() };
        match ip6.next_header {
            IpNumber::TCP => {
                if let Some(t) = self.dns_tcp.as_mut() {
                    t.input(packet);
                }
                self.dns_tcp_run(now)
            }
            IpNumber::UDP => {
                let Ok((udp, data)) = udp_parts(payload) else { return Vec::new() };
                if udp.destination_port != 53 || udp.calc_checksum_ipv6(&ip6, data).ok() != Some(udp.checksum) {
                    return Vec::new();
                }
                let out = dns.from_client(now, Client::Udp(ip6.source, udp.source_port), data, &mut self.nat);
                self.dns_out(now, out)
            }
            _ => Vec::new(),
        }
    }

    /// Carry out what DNS64 said: a question upstream, or an answer for a guest.
    fn dns_out(&mut self, now: Duration, out: Out) -> Vec<Vec<u8>> {
        match out {
            Out::Upstream { port, msg } => {
                if let (Some((_, upstream)), pool) = (self.dns.as_ref(), self.pool) {
                    if let Some(p) = udp4(pool, port, *upstream, 53, &msg) {
                        self.uplink.send(now, p);
                    }
                }
                Vec::new()
            }
            Out::Client(Client::Udp(addr, port), m) => udp6(DNS64_ADDR, 53, addr, port, &m).into_iter().collect(),
            Out::Client(Client::Tcp(conn), m) => {
                if let Some(t) = self.dns_tcp.as_mut() {
                    t.answer(conn, &m);
                }
                self.dns_tcp_run(now)
            }
            Out::None => Vec::new(),
        }
    }

    /// Run DNS64's TCP: questions read from connections go to DNS64, answers back; the
    /// packets for the fabric.
    fn dns_tcp_run(&mut self, now: Duration) -> Vec<Vec<u8>> {
        let (Some(tcp), Some((dns, upstream))) = (self.dns_tcp.as_mut(), self.dns.as_mut()) else { return Vec::new() };
        for _ in 0..4 {
            let polled = tcp.poll(now);
            for c in polled.closed {
                dns.forget(Client::Tcp(c), &mut self.nat);
            }
            if polled.messages.is_empty() {
                break;
            }
            for (c, m) in polled.messages {
                match dns.from_client(now, Client::Tcp(c), &m, &mut self.nat) {
                    Out::Upstream { port, msg } => {
                        if let Some(p) = udp4(self.pool, port, *upstream, 53, &msg) {
                            self.uplink.send(now, p);
                        }
                    }
                    Out::Client(_, a) => tcp.answer(c, &a),
                    Out::None => tcp.unanswered(c),
                }
            }
        }
        tcp.take_packets()
    }

    /// An answer from the upstream resolver to a port DNS64 asked from: the packets for the
    /// guest (or the next question upstream). None: not DNS64's.
    fn dns_answer(&mut self, now: Duration, p: &[u8]) -> Option<Vec<Vec<u8>>> {
        let (dns, upstream) = self.dns.as_mut()?;
        let (ip4, rest) = Ipv4Header::from_slice(p).ok()?;
        if ip4.protocol != IpNumber::UDP || ip4.source != *upstream || ip4.destination != self.pool || ip4.is_fragmenting_payload() {
            return None;
        }
        let payload = rest.get(..usize::from(ip4.total_len).checked_sub(ip4.header_len())?)?;
        let (udp, data) = udp_parts(payload).ok()?;
        if udp.source_port != 53 || !dns.waiting_on(udp.destination_port) {
            return None;
        }
        if udp.checksum != 0 && udp.calc_checksum_ipv4(&ip4, data).ok() != Some(udp.checksum) {
            return Some(Vec::new());
        }
        let out = dns.from_upstream(now, udp.destination_port, data, &mut self.nat);
        Some(self.dns_out(now, out))
    }

    /// A frame from the uplink: the IPv6 packets for the fabric (one, or its fragments), if it
    /// translates (or is a DNS64 answer).
    pub fn from_uplink(&mut self, now: Duration, frame: &[u8]) -> Vec<Vec<u8>> {
        let Input::Ipv4(p) = self.uplink.input(now, frame) else { return Vec::new() };
        if let Some(answer) = self.dns_answer(now, &p) {
            return answer;
        }
        let Ok(v6) = self.nat.inbound(now, &p) else { return Vec::new() };
        if v6.len() <= FABRIC_MTU {
            return alloc::vec![v6];
        }
        let Some((df, id)) = df_and_id(&p) else { return Vec::new() };
        if !df {
            self.stats.fragmented += 1;
            return fragment(&v6, FABRIC_MTU, u32::from(id)).unwrap_or_default();
        }
        self.stats.too_big += 1;
        if self.may_send_icmp(now) {
            if let Some(icmp) = frag_needed(self.pool, &p, (FABRIC_MTU - 20) as u16) {
                self.uplink.send(now, icmp);
            }
        }
        Vec::new()
    }

    /// Timeouts: sessions (RFC 6146), the ARP cache, DNS64's questions and TCP (whose
    /// retransmissions and closes are returned, for the fabric). Every second or so.
    pub fn tick(&mut self, now: Duration) -> Vec<Vec<u8>> {
        self.nat.expire(now);
        self.uplink.tick(now);
        if let Some((d, _)) = self.dns.as_mut() {
            d.expire(now, &mut self.nat);
        }
        self.dns_tcp_run(now)
    }
}

/// An IPv4/UDP packet (checksum computed).
fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, data: &[u8]) -> Option<Vec<u8>> {
    let ip = v4_header(src, dst, 64, IpNumber::UDP, 0, 8 + data.len()).ok()?;
    let udp = UdpHeader::with_ipv4_checksum(sport, dport, &ip, data).ok()?;
    Some(concat(&[&ip.to_bytes(), &udp.to_bytes(), data]))
}

/// An IPv6/UDP packet (checksum computed).
fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, data: &[u8]) -> Option<Vec<u8>> {
    let ip = v6_header(src, dst, 64, IpNumber::UDP, 0, 8 + data.len()).ok()?;
    let udp = UdpHeader::with_ipv6_checksum(sport, dport, &ip, data).ok()?;
    Some(concat(&[&ip.to_bytes(), &udp.to_bytes(), data]))
}
