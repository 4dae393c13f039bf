#![no_main]
//! IPv6/UDP, ICMPv6 echo and frame-in-UDP parsers, and the inner-header parser.
use libfuzzer_sys::fuzz_target;
use netfabric::ipv6;

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = ipv6::parse_udp(data) {
        let rebuilt = ipv6::build_udp(u.src, u.dst, u.sport, u.dport, u.payload).unwrap();
        assert!(ipv6::parse_udp(&rebuilt).is_ok());
    }
    let _ = ipv6::packet_to_frame(data);
    let _ = ipv6::parse_icmpv6_echo(data);
    let _ = netfabric::device::inner_header(data);
});
