#![no_main]
//! Both backends' exit decoders over arbitrary raw exit fields: never panic, always a valid Exit.
use catenary_vmm::cpu::Exit;
use catenary_vmm::svm_exit::decode_svm_exit;
use catenary_vmm::vmx_exit::{decode_vmx_exit, VmxExitInfo};
use libfuzzer_sys::fuzz_target;

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = *d.get(i * 8 + k).unwrap_or(&0);
    }
    u64::from_le_bytes(b)
}

fn check(e: Exit) {
    if let Exit::Io { size, .. } = e {
        assert!(matches!(size, 1 | 2 | 4));
    }
}

fuzz_target!(|data: &[u8]| {
    check(decode_svm_exit(u64_at(data, 0), u64_at(data, 1), u64_at(data, 2)));
    let info = VmxExitInfo {
        reason: u64_at(data, 3) as u32,
        qualification: u64_at(data, 4),
        intr_info: u64_at(data, 5) as u32,
        intr_error: (u64_at(data, 5) >> 32) as u32,
        gpa: u64_at(data, 6),
    };
    check(decode_vmx_exit(&info));
});
