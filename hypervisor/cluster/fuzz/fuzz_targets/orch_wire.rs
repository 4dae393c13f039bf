//! `orchd` datagrams as hostile bytes (`catenary_cluster::raft_codec::decode`): an error or a
//! message, never a panic; a decoded message encodes back to the same bytes (one encoding per
//! message), and a decoded Raft envelope is handed to a replica, which must not panic either.
#![no_main]
use catenary_cluster::raft_codec::{decode, encode, Wire};
use catenary_cluster::replica::{Replica, ReplicaConfig};
use core::time::Duration;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The same bytes as a listing page (`orchd` → `apid`): an error or a page, never a panic.
    if let Ok(p) = catenary_cluster::listing::decode_page(data) {
        assert!(p.entries.iter().all(|e| e.replicas.len() as u32 == e.spec.replicas) && p.next <= p.total);
    }
    if let Ok(w) = decode(data) {
        assert_eq!(encode(&w), data);
        if let Wire::Raft(mut e) = w {
            let mut r = Replica::bootstrap(1, &[1, 2, 3], ReplicaConfig::default(), 1, Duration::ZERO);
            e.to = 1;
            r.handle(Duration::from_millis(1), e);
        }
    }
});
