//! TAI64N timestamps (12 bytes), as carried in WireGuard handshake initiations.
//!
//! Layout: big-endian `u64` seconds label (`2^62 + 10 + unix_seconds`) followed by a
//! big-endian `u32` of nanoseconds. Like other WireGuard implementations we round the
//! nanoseconds down to a multiple of 2^24 ns (~16.8 ms) so the timestamp does not leak a
//! precise clock reading; this also caps the initiation rate a replay check accepts.

use core::time::Duration;

/// Length of an encoded timestamp.
pub const LEN: usize = 12;
const BASE: u64 = (1u64 << 62) + 10;
const WHITENER_MASK: u32 = 0x00ff_ffff;

/// An encoded TAI64N timestamp. Byte-wise comparison of two encodings orders them in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Tai64n(pub [u8; LEN]);

impl Tai64n {
    /// Encode a wall-clock time given as a duration since the UNIX epoch.
    pub fn from_unix(since_epoch: Duration) -> Self {
        let secs = BASE.saturating_add(since_epoch.as_secs());
        let nanos = since_epoch.subsec_nanos() & !WHITENER_MASK;
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(&secs.to_be_bytes());
        b[8..].copy_from_slice(&nanos.to_be_bytes());
        Tai64n(b)
    }
    /// True if `self` is strictly later than `other`.
    pub fn is_after(&self, other: &Tai64n) -> bool {
        self.0 > other.0
    }
}
