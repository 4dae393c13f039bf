#![no_main]
//! The node's whole receive path (`Node::poll`): hostile Ethernet frames (NDP, RAs,
//! fragments, fabric datagrams, mutated handshakes) and hostile packets decrypted from a real
//! session, against a node with a session, a microVM route and an IPC router.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    catenary_net::fuzzing::run(data);
});
