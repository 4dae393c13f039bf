//! The protocol between the ring-3 NIC driver (`nicd`) and the kernel's network stack
//! (`netd`). Kept in step with `hypervisor/kernel/src/net.rs` by hand (the kernel does not
//! link this crate).
//!
//! Frames travel through a shared ring in the driver's DMA memory ([`RING_PAGES`] pages,
//! physically contiguous; the kernel checks the driver owns them and reads/writes them
//! through its direct map). Header page: `rx_head` (0x00, driver), `rx_tail` (0x08, kernel),
//! `tx_head` (0x10, kernel), `tx_tail` (0x18, driver), receive lengths at 0x100 + 8·slot,
//! transmit lengths at 0x200 + 8·slot. Then [`SLOTS`] receive slots and [`SLOTS`] transmit
//! slots of [`SLOT_LEN`] bytes. Heads and tails count frames; slot = count % SLOTS. IPC
//! messages only wake the other side (coalescible), the ring is the truth.

// The layout and labels: one definition shared with the kernel (netd).
pub use catenary_ipc::nic_ring::*;
