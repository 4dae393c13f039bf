//! Legacy PC devices on the port I/O bus, and the APICs (MMIO / MSR).
pub mod ioapic;
pub mod lapic;
pub mod misc;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;
