//! The wall clock from the CMOS RTC: decoding, and why it matters: a rebooted node's first
//! initiation carries a timestamp later than any before the reboot, so its peer accepts it
//! at once.
use std::time::Duration;

use catenary_net::walltime::{unix_at_origin, Cmos, RtcError};
use netfabric::{Device, DropReason, Event, Identity, Instant, PeerConfig};
use rand_core::OsRng;

/// 2026-12-02 07:15:42 UTC.
const T: u64 = 1_796_195_742;

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn cmos(h: u8, status_b: u8, binary: bool) -> Cmos {
    let f = |v: u8| if binary { v } else { bcd(v) };
    Cmos { seconds: f(42), minutes: f(15), hours: h, day: f(2), month: f(12), year: f(26), century: f(20), status_b }
}

#[test]
fn decodes_bcd_binary_and_12_hour_clocks() {
    assert_eq!(cmos(bcd(7), 0x02, false).unix_seconds(), Ok(T), "BCD, 24 h (QEMU's default)");
    assert_eq!(cmos(7, 0x06, true).unix_seconds(), Ok(T), "binary, 24 h");
    assert_eq!(cmos(bcd(7), 0x00, false).unix_seconds(), Ok(T), "BCD, 12 h, 7 AM");
    assert_eq!(cmos(0x80 | bcd(7), 0x00, false).unix_seconds(), Ok(T + 12 * 3600), "7 PM");
    assert_eq!(cmos(bcd(12), 0x00, false).unix_seconds(), Ok(T - 7 * 3600), "12 AM is midnight");
    // Century register garbage: the 21st century is assumed.
    let mut c = cmos(bcd(7), 0x02, false);
    c.century = 0xff;
    assert_eq!(c.unix_seconds(), Ok(T));
    // Leap day exists in 2028, not in 2027.
    let leap = Cmos { seconds: 0, minutes: 0, hours: 0, day: 0x29, month: 0x02, year: 0x28, century: 0x20, status_b: 0x02 };
    assert!(leap.unix_seconds().is_ok());
    assert_eq!(Cmos { year: 0x27, ..leap }.unix_seconds(), Err(RtcError::OutOfRange));
}

#[test]
fn nonsense_registers_are_errors() {
    let good = cmos(bcd(7), 0x02, false);
    assert_eq!(Cmos { seconds: 0x60, ..good }.unix_seconds(), Err(RtcError::OutOfRange));
    assert_eq!(Cmos { seconds: 0x3a, ..good }.unix_seconds(), Err(RtcError::BadBcd));
    assert_eq!(Cmos { month: 0x13, ..good }.unix_seconds(), Err(RtcError::OutOfRange));
    assert_eq!(Cmos { day: 0x00, ..good }.unix_seconds(), Err(RtcError::OutOfRange));
    assert_eq!(Cmos { hours: 0x24, ..good }.unix_seconds(), Err(RtcError::OutOfRange));
    assert_eq!(Cmos { year: 0x19, ..good }.unix_seconds(), Err(RtcError::Unset));
    // No CMOS at all: every port reads 0xff.
    let ff = Cmos { seconds: 0xff, minutes: 0xff, hours: 0xff, day: 0xff, month: 0xff, year: 0xff, century: 0xff, status_b: 0xff };
    assert!(ff.unix_seconds().is_err());
    for b in 0..=255u8 {
        let _ = Cmos { seconds: b, hours: b, status_b: b, ..good }.unix_seconds();
    }
}

/// Node A talks to B, reboots 30 s later and initiates again at once.
fn reboot_and_reconnect(a_clock_after_reboot: impl Fn(u64) -> u64) -> Vec<Event> {
    let (ia, ib) = (Identity::generate(&mut OsRng), Identity::generate(&mut OsRng));
    let (aa, ba) = ("[fd00::a]:1".parse().unwrap(), "[fd00::b]:1".parse().unwrap());
    let mut b = Device::new(ib.clone(), Box::new(OsRng));
    b.set_unix_time_at_origin(Duration::from_secs(T - 1000));
    b.add_peer(PeerConfig::new(ia.public_key()).with_endpoint(aa)).unwrap();
    // First life of A: booted at T, initiates 100 s after boot (B's clock: its uptime 1100 s).
    let mut a = Device::new(ia.clone(), Box::new(OsRng));
    a.set_unix_time_at_origin(Duration::from_secs(unix_at_origin(T + 2, 2_000_000_000)));
    let pb = a.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    let init = a.send_to(pb, &[], Instant::from_secs(100)).transmits.remove(0).data;
    let r = b.handle_incoming(&init, aa, Instant::from_secs(1100));
    assert_eq!(r.transmits.len(), 1, "first life's handshake answered");
    // A reboots at T + 130 and reads its clock 2 s into its new life.
    let mut a = Device::new(ia, Box::new(OsRng));
    a.set_unix_time_at_origin(Duration::from_secs(a_clock_after_reboot(T + 132)));
    let pb = a.add_peer(PeerConfig::new(ib.public_key()).with_endpoint(ba)).unwrap();
    let init = a.send_to(pb, &[], Instant::from_secs(3)).transmits.remove(0).data;
    b.handle_incoming(&init, aa, Instant::from_secs(1133)).events
}

#[test]
fn rebooted_node_with_rtc_time_reconnects_at_once() {
    let ev = reboot_and_reconnect(|unix_now| unix_at_origin(unix_now, 2_000_000_000));
    assert!(ev.iter().any(|e| matches!(e, Event::HandshakeResponded(_))), "{ev:?}");
}

/// What happened before: without a wall clock the timestamps restart at the epoch and the
/// peer refuses the rebooted node as a replay.
#[test]
fn without_a_wall_clock_the_rebooted_node_is_refused() {
    let ev = reboot_and_reconnect(|_| 0);
    assert!(ev.iter().any(|e| matches!(e, Event::Dropped { reason: DropReason::InitiationReplay, .. })), "{ev:?}");
}
