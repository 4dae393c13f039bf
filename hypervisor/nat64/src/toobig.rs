//! Packets that do not fit the next hop (RFC 7915 §4, §5; RFC 6146 §3.4 leaves it to 7915):
//!
//! - **IPv4 → IPv6, DF set**, translated packet over the fabric MTU: dropped and answered with
//!   an ICMPv4 destination unreachable / fragmentation needed (type 3 code 4) whose next-hop
//!   MTU is the fabric MTU less 20 (the IPv6 header is 20 bytes longer), from the pool address
//!   to the IPv4 sender, quoting the IPv4 packet (RFC 792, cut to 576 bytes, RFC 1812).
//! - **IPv4 → IPv6, DF clear**: the translated packet is fragmented with an IPv6 Fragment
//!   header, each fragment within the fabric MTU (RFC 7915 §4 "lowest-ipv6-mtu", set to the
//!   fabric's), identification = the IPv4 one in its low 16 bits (§4.1).
//! - **IPv6 → IPv4**, translated packet over the uplink MTU: dropped and answered with ICMPv6
//!   packet too big, MTU = uplink MTU + 20 (at least 1280), to the IPv6 sender, from the pool
//!   address in the prefix (the fabric only carries `natd`'s packets from the prefix),
//!   quoting the packet within the IPv6 minimum MTU (RFC 4443 §3.2).
//!
//! Generated ICMP is rate-limited ([`RateLimit`], RFC 4443 §2.4 (f), RFC 1812 §4.3.2.8):
//! a token bucket for both directions together. ICMP errors are never answered with ICMP
//! errors (the translator cuts ICMPv6 errors to 1280 bytes anyway).
use alloc::vec::Vec;
use core::time::Duration;

use etherparse::icmpv4::DestUnreachableHeader;
use etherparse::{Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, Ipv6Header};

use crate::translate::{concat, v4_header, v6_header};

/// ICMP errors the gateway makes itself, at most this many at once…
pub const ICMP_BURST: u32 = 10;
/// …and this many a second after that.
pub const ICMP_PER_SECOND: u32 = 10;

/// A token bucket: [`ICMP_BURST`] tokens, refilled at [`ICMP_PER_SECOND`].
#[derive(Clone, Debug)]
pub struct RateLimit {
    tokens: u32,
    last: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { tokens: ICMP_BURST, last: Duration::ZERO }
    }
}

impl RateLimit {
    /// True when one more ICMP error may go now.
    pub fn allow(&mut self, now: Duration) -> bool {
        let step = Duration::from_secs(1) / ICMP_PER_SECOND;
        while now >= self.last + step && self.tokens < ICMP_BURST {
            self.tokens += 1;
            self.last += step;
        }
        if self.tokens == ICMP_BURST {
            self.last = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Is this an ICMP error (no error is sent about one)? `proto` and the first byte after the
/// IP header.
fn is_icmp_error(proto: IpNumber, first: Option<u8>) -> bool {
    match (proto, first) {
        (IpNumber::ICMP, Some(t)) => !matches!(t, 0 | 8 | 13 | 14),
        (IpNumber::IPV6_ICMP, Some(t)) => t < 128,
        _ => false,
    }
}

/// The ICMPv4 fragmentation-needed answer to `packet` (an IPv4 packet to `pool`), or None for
/// packets that get no error (ICMP errors, not from a unicast sender, unparsable).
pub fn frag_needed(pool: [u8; 4], packet: &[u8], next_hop_mtu: u16) -> Option<Vec<u8>> {
    let (ip4, rest) = Ipv4Header::from_slice(packet).ok()?;
    if is_icmp_error(ip4.protocol, rest.first().copied()) || !crate::is_global_v4(ip4.source) {
        return None;
    }
    let quote = &packet[..packet.len().min(576 - 20 - 8)];
    let icmp = Icmpv4Header::with_checksum(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu }), quote);
    let ip = v4_header(pool, ip4.source, 64, IpNumber::ICMP, 0, 8 + quote.len()).ok()?;
    Some(concat(&[&ip.to_bytes(), &icmp.to_bytes(), quote]))
}

/// The ICMPv6 packet-too-big answer to `packet` (an IPv6 packet from inside), from `src`.
pub fn packet_too_big(src: [u8; 16], packet: &[u8], mtu: u32) -> Option<Vec<u8>> {
    let (ip6, rest) = Ipv6Header::from_slice(packet).ok()?;
    if is_icmp_error(ip6.next_header, rest.first().copied()) {
        return None;
    }
    let quote = &packet[..packet.len().min(1280 - 40 - 8)];
    let icmp = Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu: mtu.max(1280) }, src, ip6.source, quote).ok()?;
    let ip = v6_header(src, ip6.source, 64, IpNumber::IPV6_ICMP, 0, 8 + quote.len()).ok()?;
    Some(concat(&[&ip.to_bytes(), &icmp.to_bytes(), quote]))
}

/// An IPv6 packet (no extension headers, as the translator writes them) cut into fragments of
/// at most `mtu` bytes, each with a Fragment header (RFC 8200 §4.5) carrying `id`.
pub fn fragment(packet: &[u8], mtu: usize, id: u32) -> Option<Vec<Vec<u8>>> {
    let (ip6, rest) = Ipv6Header::from_slice(packet).ok()?;
    let payload = rest.get(..usize::from(ip6.payload_length))?;
    // fragment data: a multiple of 8 bytes, after the 40-byte header and the 8-byte Fragment header
    let chunk = (mtu.checked_sub(48)? / 8) * 8;
    if chunk == 0 {
        return None;
    }
    let mut out = Vec::new();
    for (i, part) in payload.chunks(chunk).enumerate() {
        let offset = i * chunk;
        let more = offset + part.len() < payload.len();
        let h = v6_header(ip6.source, ip6.destination, ip6.hop_limit, IpNumber::IPV6_FRAGMENTATION_HEADER, ip6.traffic_class, 8 + part.len()).ok()?;
        let off_field = u16::try_from(offset).ok()? | u16::from(more); // offset in 8-byte units << 3, M in bit 0
        let mut frag = [0u8; 8];
        frag[0] = ip6.next_header.0;
        frag[2..4].copy_from_slice(&off_field.to_be_bytes());
        frag[4..8].copy_from_slice(&id.to_be_bytes());
        out.push(concat(&[&h.to_bytes(), &frag, part]));
    }
    Some(out)
}

/// The IPv4 packet's DF flag and identification (None: not IPv4).
pub fn df_and_id(packet: &[u8]) -> Option<(bool, u16)> {
    let (ip4, _) = Ipv4Header::from_slice(packet).ok()?;
    Some((ip4.dont_fragment, ip4.identification))
}
