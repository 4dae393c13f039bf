//! Where a microVM's exits go (issue 14 item 2): the exit counts by reason, with port I/O split
//! by the device model that owns the port, as `(row, count)` rows that sum to the total. The
//! node logs them at the end of a VM (`exit profile:` lines) and `cargo xtask bench vm` turns
//! them into bench table rows.

use crate::devices::misc::{ResetPorts, I8042};
use crate::devices::pic::DualPic;
use crate::devices::pit::Pit;
use crate::devices::rtc::Rtc;
use crate::devices::uart::COM1_BASE;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The device (or port range) a port belongs to, as named in the profile.
pub fn port_owner(port: u16) -> &'static str {
    match port {
        p if (COM1_BASE..COM1_BASE + 8).contains(&p) => "uart 0x3f8",
        p if DualPic::handles(p) => "pic 0x20/0xa0",
        p if Pit::handles(p) => "pit 0x40",
        p if Rtc::handles(p) => "rtc 0x70",
        p if I8042::handles(p) => "i8042 0x60",
        p if ResetPorts::handles(p) => "reset 0x92/0xcf9",
        0x80 | 0xed => "post 0x80",
        0xcf8..=0xcff => "pci config 0xcf8 (none)",
        _ => "other ports (no device)",
    }
}

/// The profile rows: `io: <device>` for port I/O (ports the VMM did not track individually,
/// past its cap, land in `io: untracked ports`), then every other reason with a non-zero
/// count, largest first. The counts sum to the sum of `by_reason`.
pub fn profile(by_reason: &[(&'static str, u64)], io_by_port: &[(u16, u64)]) -> Vec<(String, u64)> {
    let mut io: Vec<(String, u64)> = Vec::new();
    let mut tracked = 0u64;
    for &(port, n) in io_by_port {
        tracked += n;
        let owner = port_owner(port);
        match io.iter_mut().find(|(k, _)| k.strip_prefix("io: ") == Some(owner)) {
            Some((_, c)) => *c += n,
            None => io.push((format!("io: {owner}"), n)),
        }
    }
    let io_total = by_reason.iter().filter(|(r, _)| *r == "io").map(|(_, n)| n).sum::<u64>();
    if io_total > tracked {
        io.push(("io: untracked ports".into(), io_total - tracked));
    }
    let mut rows: Vec<(String, u64)> = io;
    rows.extend(by_reason.iter().filter(|(r, n)| *r != "io" && *n > 0).map(|(r, n)| (String::from(*r), *n)));
    rows.sort_by_key(|r| core::cmp::Reverse(r.1));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_the_total_and_split_io_by_device() {
        let by_reason = [("io", 110), ("cpuid", 7), ("mmio", 5), ("hlt", 0)];
        let ports = [(0x3f8, 60), (0x3fd, 30), (0x21, 4), (0x1234, 1)];
        let rows = profile(&by_reason, &ports);
        assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 122);
        let get = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| r.1);
        assert_eq!(get("io: uart 0x3f8"), Some(90));
        assert_eq!(get("io: pic 0x20/0xa0"), Some(4));
        assert_eq!(get("io: other ports (no device)"), Some(1));
        assert_eq!(get("io: untracked ports"), Some(15));
        assert_eq!(get("cpuid"), Some(7));
        assert_eq!(get("hlt"), None);
        assert_eq!(rows[0].0, "io: uart 0x3f8");
    }
}
