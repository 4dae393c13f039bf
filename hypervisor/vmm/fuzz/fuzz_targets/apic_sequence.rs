#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    catenary_vmm::fuzzing::apic_sequence(data);
});
