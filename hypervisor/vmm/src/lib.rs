#![no_std]
#![forbid(unsafe_code)]
//! catenary-vmm: device model (filled in by the VMM work).
