//! virtio-mmio transport and devices (console, block).
pub mod blk;
pub mod console;
pub mod mmio;
pub mod queue;
