//! The gateway: the translator between the fabric (IPv6 packets to and from `64:ff9b::/96`)
//! and the uplink (Ethernet frames). The ring-3 service `natd` moves packets and frames; the
//! decisions are here, host-tested. Configured by the node's command line words `nat64.*`.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::{IpNumber, Ipv4Header, Ipv6Header, UdpHeader};

use crate::dns64::{Dns64, Out, DNS64_ADDR};
use crate::translate::{concat, udp_parts, v4_header, v6_header};
use crate::uplink::{parse_addr, parse_cidr, Input, Uplink, UplinkConfig};
use crate::toobig::{df_and_id, frag_needed, fragment, packet_too_big, RateLimit};
use crate::{embed, is_global_v4, Config, Nat64};

/// The gateway's own UDP port for its questions to the upstream resolver: below the pool's
/// ports (1024..), so no translated flow can hold it.
pub const DNS_PORT: u16 = 1000;

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
    pool: [u8; 4],
    mtu: usize,
    icmp_limit: RateLimit,
}

impl Gateway {
    /// None: the router is not on the uplink's subnet.
    /// `seed`: entropy for the DNS64 transaction ids.
    pub fn new(cfg: &GatewayConfig, mac: [u8; 6], seed: u16) -> Option<Gateway> {
        let uplink = Uplink::new(UplinkConfig { mac, addr: cfg.addr, prefix_len: cfg.prefix_len, gateway: cfg.router })?;
        let dns = cfg.dns.map(|u| (Dns64::new(seed), u));
        Some(Gateway { nat: Nat64::new(cfg.nat_config()), uplink, stats: GatewayStats::default(), dns, pool: cfg.addr, mtu: cfg.mtu, icmp_limit: RateLimit::default() })
    }

    /// An IPv6 packet from the fabric, to the prefix: translated and queued on the uplink
    /// (frames in [`Uplink::take_frame`]), or a question for DNS64 at `64:ff9b::35` (asked
    /// upstream, or answered at once: the answer for the fabric is returned); dropped (counted)
    /// otherwise.
    pub fn from_fabric(&mut self, now: Duration, packet: &[u8]) -> Option<Vec<u8>> {
        if packet.get(24..40) == Some(&DNS64_ADDR[..]) {
            return self.dns_question(now, packet);
        }
        let v4 = self.nat.outbound(now, packet).ok()?;
        if v4.len() <= self.mtu {
            self.uplink.send(now, v4);
            return None;
        }
        // too big for the uplink: we never fragment (DF is always set), the sender learns the MTU
        self.stats.out_too_big += 1;
        if !self.may_send_icmp(now) {
            return None;
        }
        packet_too_big(embed(&self.nat.config().prefix, self.pool), packet, self.mtu as u32 + 20)
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

    /// A question to DNS64 (UDP port 53, checksum verified).
    fn dns_question(&mut self, now: Duration, packet: &[u8]) -> Option<Vec<u8>> {
        let pool = self.pool;
        let (dns, upstream) = self.dns.as_mut()?;
        let (ip6, rest) = Ipv6Header::from_slice(packet).ok()?;
        let payload = rest.get(..usize::from(ip6.payload_length))?;
        if ip6.next_header != IpNumber::UDP {
            return None;
        }
        let (udp, data) = udp_parts(payload).ok()?;
        if udp.destination_port != 53 || udp.calc_checksum_ipv6(&ip6, data).ok() != Some(udp.checksum) {
            return None;
        }
        match dns.from_client(now, ip6.source, udp.source_port, data) {
            Out::Upstream(m) => {
                let upstream = *upstream;
                if let Some(p) = udp4(pool, DNS_PORT, upstream, 53, &m) {
                    self.uplink.send(now, p);
                }
                None
            }
            Out::Client(addr, port, m) => udp6(DNS64_ADDR, 53, addr, port, &m),
            Out::None => None,
        }
    }

    /// An answer from the upstream resolver to [`DNS_PORT`]: the reply for the guest (or the
    /// next question upstream).
    fn dns_answer(&mut self, now: Duration, p: &[u8]) -> Option<Option<Vec<u8>>> {
        let pool = self.pool;
        let (dns, upstream) = self.dns.as_mut()?;
        let (ip4, rest) = Ipv4Header::from_slice(p).ok()?;
        if ip4.protocol != IpNumber::UDP || ip4.source != *upstream || ip4.destination != pool || ip4.is_fragmenting_payload() {
            return None;
        }
        let payload = rest.get(..usize::from(ip4.total_len).checked_sub(ip4.header_len())?)?;
        let (udp, data) = udp_parts(payload).ok()?;
        if udp.source_port != 53 || udp.destination_port != DNS_PORT {
            return None;
        }
        if udp.checksum != 0 && udp.calc_checksum_ipv4(&ip4, data).ok() != Some(udp.checksum) {
            return Some(None);
        }
        let upstream = *upstream;
        Some(match dns.from_upstream(now, data) {
            Out::Client(addr, port, m) => udp6(DNS64_ADDR, 53, addr, port, &m),
            Out::Upstream(m) => {
                if let Some(q) = udp4(pool, DNS_PORT, upstream, 53, &m) {
                    self.uplink.send(now, q);
                }
                None
            }
            Out::None => None,
        })
    }

    /// A frame from the uplink: the IPv6 packets for the fabric (one, or its fragments), if it
    /// translates (or is a DNS64 answer).
    pub fn from_uplink(&mut self, now: Duration, frame: &[u8]) -> Vec<Vec<u8>> {
        let Input::Ipv4(p) = self.uplink.input(now, frame) else { return Vec::new() };
        if let Some(answer) = self.dns_answer(now, &p) {
            return answer.into_iter().collect();
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

    /// Timeouts: sessions (RFC 6146) and the ARP cache. Every second or so.
    pub fn tick(&mut self, now: Duration) {
        self.nat.expire(now);
        self.uplink.tick(now);
        if let Some((d, _)) = self.dns.as_mut() {
            d.expire(now);
        }
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
