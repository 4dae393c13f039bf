//! Intel VT-x backend (VMX + EPT). Being written; until then VMX hosts report it unsupported.

use crate::virt::{GuestRam, Vcpu, VirtError};
use alloc::boxed::Box;

pub fn create(_ram: &GuestRam, _vm_id: u32) -> Result<Box<dyn Vcpu>, VirtError> {
    Err(VirtError::Unsupported("VMX backend not built yet"))
}
