#![no_std]
#![forbid(unsafe_code)]
//! netfabric: placeholder crate root, replaced by the netfabric work.
