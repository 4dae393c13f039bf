#![no_main]
//! What a pending node (anyone on the underlay) sends a seed: hellos (`catenary_net::hello`)
//! into a small pending table, checked against a real identity; and the admission table as a
//! reader decodes it. Errors, never panics; the table never exceeds its bound, and only keys
//! whose hello checked out are in it.
use catenary_net::{admission, hello};
use core::net::{Ipv6Addr, SocketAddrV6};
use libfuzzer_sys::fuzz_target;
use netfabric::Identity;

fuzz_target!(|data: &[u8]| {
    let seed = Identity::from_secret_bytes([7; 32]);
    let mut p = hello::Pending::new(4, 5_000_000_000, 1000);
    for (i, chunk) in data.chunks(hello::LEN).enumerate() {
        // a few sources (/64s), so the per-source rate limit does not refuse nearly everything
        let from = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, (i % 4) as u16, 0, 0, 0, 1), 51820, 0, 0);
        let _ = p.offer(&seed, chunk, from, i as u64 * 300_000_000, |_| false);
        assert!(p.entries().len() <= 4);
    }
    for e in p.entries() {
        assert!(hello::parse(&[0u8; 0]).is_err() && e.facts.key != seed.public_key());
    }
    let _ = admission::decode_table(data);
});
