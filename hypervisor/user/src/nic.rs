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

pub const SLOTS: u64 = 16;
pub const SLOT_LEN: u64 = 2048;
pub const RING_PAGES: u64 = 1 + 2 * SLOTS * SLOT_LEN / 4096;
pub const RX_HEAD: u64 = 0x00;
pub const RX_TAIL: u64 = 0x08;
pub const TX_HEAD: u64 = 0x10;
pub const TX_TAIL: u64 = 0x18;
pub const RX_LEN: u64 = 0x100;
pub const TX_LEN: u64 = 0x200;
pub const RX_SLOTS: u64 = 0x1000;
pub const TX_SLOTS: u64 = 0x1000 + SLOTS * SLOT_LEN;

/// kernel → driver: [common, notify, isr, device] physical addresses.
pub const LABEL_CONFIG: u64 = 1;
/// kernel → driver: [notify multiplier, device config length, notify length, 0].
pub const LABEL_CONFIG2: u64 = 2;
/// kernel → driver: frames wait in the transmit ring, or the receive ring was full and has
/// room again.
pub const LABEL_TX: u64 = 3;
/// driver → kernel: [ring physical address, MAC (6 bytes, little-endian), link up, MSI-X ok].
pub const LABEL_UP: u64 = 0x10;
/// driver → kernel: frames wait in the receive ring.
pub const LABEL_RX: u64 = 0x11;
/// driver → kernel: initialisation failed ([step]).
pub const LABEL_FAIL: u64 = 0x12;
