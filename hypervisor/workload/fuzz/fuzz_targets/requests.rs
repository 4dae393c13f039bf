//! Requests to `workd` as hostile bytes (`catenary_workload::fuzzing::run`): decoded, checked
//! and applied to a service state machine with the kernel's side simulated; no input may panic
//! or break a bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| catenary_workload::fuzzing::run(data));
