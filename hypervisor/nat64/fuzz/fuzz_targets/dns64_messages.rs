//! DNS messages from guests and from the upstream resolver through DNS64
//! (`catenary_nat64::fuzzing::dns64`): no input may panic or grow the state past its bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| catenary_nat64::fuzzing::dns64(data));
