//! virtio-mmio transport and devices (console, block, net).
pub mod blk;
pub mod console;
pub mod mmio;
pub mod net;
pub mod queue;
