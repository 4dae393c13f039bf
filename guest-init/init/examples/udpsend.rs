//! `udpsend ADDR PORT SRCPORT HEX…`: each HEX argument sent as one UDP datagram from
//! `[::]:SRCPORT` to `[ADDR]:PORT`. A tool for the hostile-guest test (xtask/src/hostiletest.rs):
//! the test image's only other program is Debian's static busybox, whose `nc` has no `-u`.
//! Built static like catenary-init (`xtask::build::build_guest_example`).
use std::net::{Ipv6Addr, UdpSocket};
use std::process::exit;

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let parsed = (|| Some((a.get(1)?.parse::<Ipv6Addr>().ok()?, a.get(2)?.parse::<u16>().ok()?, a.get(3)?.parse::<u16>().ok()?)))();
    let Some((addr, port, src)) = parsed else {
        eprintln!("usage: udpsend ADDR PORT SRCPORT HEX...");
        exit(2);
    };
    let sock = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, src)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udpsend: bind [::]:{src}: {e}");
            exit(1);
        }
    };
    for h in &a[4..] {
        let Some(d) = hex(h) else {
            eprintln!("udpsend: not hex: {h}");
            exit(2);
        };
        match sock.send_to(&d, (addr, port)) {
            Ok(n) => println!("udpsend: {n} bytes to [{addr}]:{port} from port {src}"),
            Err(e) => println!("udpsend: to [{addr}]:{port}: {e}"),
        }
    }
}
