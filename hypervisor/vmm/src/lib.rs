#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cpu;
pub mod devices;
pub mod insn;
pub mod mem;
pub mod paging;
pub mod cpuid;
pub mod msr;
pub mod virtio;
pub mod boot;
pub mod console;
pub mod vm;
