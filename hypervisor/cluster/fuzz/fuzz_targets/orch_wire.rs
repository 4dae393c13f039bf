//! `orchd` datagrams as hostile bytes (`catenary_cluster::raft_codec::decode`): an error or a
//! message, never a panic; a decoded message encodes back to the same bytes (one encoding per
//! message), and a decoded Raft envelope, vouch request or vouch answer is handed to a replica, which must
//! not panic either.
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
        let mut r = Replica::bootstrap(1, &[1, 2, 3], ReplicaConfig::default(), 1, Duration::ZERO);
        match w {
            Wire::Raft(mut e) => {
                e.to = 1;
                r.handle(Duration::from_millis(1), e);
            }
            // a vouch request (replayed against this replica's log) and an answer to one
            Wire::Vouch { from, position, digest, .. } => r.handle_vouch(Duration::from_millis(1), from, position, digest),
            Wire::Vouched { from, position, digest, verdict, applied, .. } => r.handle_vouched(Duration::from_millis(1), from, position, digest, verdict, applied),
            _ => {}
        }
    }
});
