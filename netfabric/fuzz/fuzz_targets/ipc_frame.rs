#![no_main]
//! FabricFrame decoder: errors, never panics; what decodes re-encodes identically.
use libfuzzer_sys::fuzz_target;
use netfabric::FabricFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = FabricFrame::decode(data) {
        assert_eq!(f.encode().unwrap(), data);
    }
});
