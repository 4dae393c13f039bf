//! A node fetching an image from holders whose every answer is hostile bytes
//! (`catenary_api::fuzzing::fetch`): no panic, only the true image ever reaches the store, no
//! upload is left behind.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    catenary_api::fuzzing::fetch(data);
});
