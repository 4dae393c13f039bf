//! Legacy PC devices on the port I/O bus.
pub mod misc;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;
