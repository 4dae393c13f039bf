//! Operator API requests as hostile bytes (`catenary_api::fuzzing::run`): read by the bounded
//! HTTP reader in the pieces a connection delivers, or well-formed on the route table with
//! fuzzed fields, from admins, viewers, nodes and strangers, routed onto the real workload
//! service state machine; every answer must be JSON and every bound must hold.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| catenary_api::fuzzing::run(data));
