#![no_main]
use libfuzzer_sys::fuzz_target;

// The workload channel (docs/guest-init.md) as the node decodes it: hostile guest bytes.
fuzz_target!(|data: &[u8]| {
    catenary_vmm::fuzzing::workload_channel(data);
});
