//! Socket requests from several clients, decoded and applied to netd's socket table
//! (`catenary_netsock::fuzzing::run`): no input may panic or break a bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| catenary_netsock::fuzzing::run(data));
