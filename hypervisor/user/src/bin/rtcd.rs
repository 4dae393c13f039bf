//! rtcd: the CMOS real-time clock driver, in ring 3, granted only ports 0x70/0x71 and IRQ 8
//! (delivered as an IPC notification). Serves `GET_TIME` (label 1) and `GET_TICKS` (label 2).
//! Capability slot 0: its own endpoint (receive).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use catenary_ipc::IpcError;
use catenary_user::*;

/// The heartbeat's period: a turn's longest wait is the RTC's update flag (under 2 ms).
const HEARTBEAT_MS: u64 = 5_000;
/// The longest wait for a message: without its interrupt the driver still beats this often.
const IDLE_WAKE_NS: u64 = 1_000_000_000;

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg | 0x80); // keep NMI disabled
    inb(0x71)
}
fn cmos_write(reg: u8, v: u8) {
    outb(0x70, reg | 0x80);
    outb(0x71, v);
}
fn bin(v: u8, bcd: bool) -> u64 {
    if bcd { ((v >> 4) * 10 + (v & 0xf)) as u64 } else { v as u64 }
}

entry!(run);

fn run(_arg: u64) -> u64 {
    // Periodic interrupt at 64 Hz (rate 10), then acknowledge anything pending (register C).
    let a = cmos(0x0a);
    cmos_write(0x0a, (a & 0xf0) | 10);
    let b = cmos(0x0b);
    cmos_write(0x0b, b | 0x40);
    let _ = cmos(0x0c);
    let bcd = cmos(0x0b) & 0x04 == 0;
    logf!("rtcd: ring-3 RTC driver started (ports 0x70-0x71, IRQ 8, {} mode)", if bcd { "BCD" } else { "binary" });
    let mut ticks = 0u64;
    let _ = alive(HEARTBEAT_MS);
    loop {
        let m = match recv(0, IDLE_WAKE_NS) {
            Ok(m) => m,
            Err(e) if e == IpcError::Timeout.code() => {
                let _ = alive(HEARTBEAT_MS);
                continue;
            }
            // no beat: a receive that keeps failing is a loop that no longer goes round
            Err(_) => continue,
        };
        if m.label == LABEL_NOTIFY {
            let _ = cmos(0x0c); // acknowledge: the RTC raises IRQ 8 again only after this
            ticks += 1;
            let _ = alive(HEARTBEAT_MS);
            continue;
        }
        let _ = alive(HEARTBEAT_MS);
        let r = match m.label {
            1 => {
                while cmos(0x0a) & 0x80 != 0 {} // update in progress
                let (s, mi, h) = (bin(cmos(0), bcd), bin(cmos(2), bcd), bin(cmos(4) & 0x7f, bcd));
                let (d, mo, y) = (bin(cmos(7), bcd), bin(cmos(8), bcd), bin(cmos(9), bcd));
                [h * 3600 + mi * 60 + s, d, mo, 2000 + y]
            }
            2 => [ticks, 0, 0, 0],
            _ => [u64::MAX; 4],
        };
        if m.reply != 0 {
            let _ = reply(m.reply, m.label, r);
        }
    }
}
