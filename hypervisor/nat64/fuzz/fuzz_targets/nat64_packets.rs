//! Packets both ways through one NAT64 (`catenary_nat64::fuzzing::run`): no input may panic or
//! grow the tables past their bounds.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| catenary_nat64::fuzzing::run(data));
