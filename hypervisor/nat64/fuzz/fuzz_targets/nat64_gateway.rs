//! Frames from the uplink and packets from the fabric through the whole gateway
//! (`catenary_nat64::fuzzing::gateway`): ARP, translation, DNS64, fragmentation and the ICMP
//! errors for packets too big; nothing may panic, outgrow its bound or exceed an MTU.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| catenary_nat64::fuzzing::gateway(data));
