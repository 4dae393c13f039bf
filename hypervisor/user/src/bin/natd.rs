//! natd: the NAT64 gateway service (docs/nat64.md), on a node given an IPv4 uplink. It drives
//! the uplink's virtio-net device itself (granted only that device's virtio structures and
//! DMA memory, polled: no interrupt) and runs `catenary_nat64::gateway::Gateway` — the
//! stateful translator (RFC 6146/7915), ARP and Ethernet — between it and the fabric:
//! IPv6 packets to `64:ff9b::/96` come from `netd` and answers go back to it in one exchange
//! call (`catenary_ipc::natgw`) through a buffer it lends (GRANT). All IPv4 in Catenary is in
//! this program and the `catenary-nat64` crate.
//!
//! Capability slots: 0 = its own endpoint (the kernel's two messages saying where the
//! device's structures are), 1 = send to `netd`'s endpoint (GRANT).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::rc::Rc;
use alloc::vec::Vec;
use catenary_ipc::natgw::*;
use catenary_ipc::nic_ring::{LABEL_CONFIG, LABEL_CONFIG2};
use catenary_nat64::gateway::{Gateway, GatewayConfig};
use catenary_user::dma::{self, UserHal};
use catenary_user::virtio_pci::{UserPciTransport, NO_VECTOR};
use catenary_user::*;
use core::time::Duration;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::DeviceType;

const NETD: u64 = 1;
/// Heap (DMA memory: `virtio-drivers` shares heap buffers with the device): the state
/// table, the ARP cache and queues.
const HEAP_PAGES: u64 = 384;
/// The exchange buffer lent to `netd` (64 KiB: about 44 full-size packets each way).
const XFER_PAGES: u64 = 16;
const QUEUE: usize = 32;
const BUF: usize = 2048;
/// How long `netd` may hold an exchange when nothing moves: the uplink is polled at least
/// this often while idle.
const IDLE_WAIT_MS: u64 = 5;
/// Expire sessions and the ARP cache this often.
const TICK_NS: u64 = 500_000_000;
/// The heartbeat's period (`SYS_ALIVE`).
const HEARTBEAT_MS: u64 = 5_000;

entry!(run);

fn ip(a: [u8; 4]) -> alloc::string::String {
    alloc::format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// Wait for a message with `label` on our endpoint, skipping others.
fn recv_label(label: u64) -> Option<Msg> {
    for _ in 0..30 {
        match recv(0, 1_000_000_000) {
            Ok(m) if m.label == label => return Some(m),
            _ => {}
        }
    }
    None
}

/// The `nat64.*` settings from `netd` (it holds the node's command line).
fn settings(xfer: &DmaRegion) -> Result<alloc::string::String, u64> {
    let mut said = false;
    loop {
        match call_grant(NETD, LABEL_OPEN, 0, 0, xfer, XFER_PAGES * 4096, true) {
            Ok(m) if m.label == 0 => {
                let n = (m.words[0] as usize).min((XFER_PAGES * 4096) as usize);
                let mut b = alloc::vec![0u8; n];
                xfer.read(0, &mut b);
                return Ok(alloc::string::String::from_utf8_lossy(&b).into_owned());
            }
            Ok(m) if m.label == ERR_NOT_READY => sleep_ns(200_000_000),
            Ok(m) => {
                if !said {
                    said = true;
                    logf!("natd: netd refuses the gateway (error {}: 2 = this node is not the net.nat64gw named on the command line): waiting", m.label);
                }
                sleep_ns(5_000_000_000);
                if m.label == ERR_NOT_NATD || m.label == ERR_BAD_GRANT {
                    return Err(m.label);
                }
            }
            Err(_) => sleep_ns(200_000_000), // netd not running (restart): again
        }
    }
}

fn run(_arg: u64) -> u64 {
    if !dma::init(HEAP_PAGES) {
        log("natd: no heap (DMA quota)");
        return 1;
    }
    let Some(xfer) = dma::alloc(XFER_PAGES) else {
        log("natd: no exchange buffer (DMA quota)");
        return 2;
    };
    let text = match settings(&xfer) {
        Ok(t) => t,
        Err(e) => return 10 + e,
    };
    let cfg = match GatewayConfig::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            logf!("natd: bad NAT64 settings ({:.150}): not started", e);
            sleep_ns(60_000_000_000); // the supervisor restarts it; no tight loop
            return 3;
        }
    };
    let (Some(c1), Some(c2)) = (recv_label(LABEL_CONFIG), recv_label(LABEL_CONFIG2)) else {
        log("natd: the kernel did not say where the uplink device is");
        return 4;
    };
    let map = |phys: u64, len: u64| dma::mmio(phys, len.max(1)).map(Rc::new);
    let (Some(common), Some(notify), Some(isr), Some(device)) =
        (map(c1.words[0], 0x38), map(c1.words[1], c2.words[2]), map(c1.words[2], 1), map(c1.words[3], c2.words[1]))
    else {
        log("natd: cannot map the uplink's virtio structures");
        return 5;
    };
    let mk = || UserPciTransport {
        device_type: DeviceType::Network,
        common: common.clone(),
        notify: notify.clone(),
        notify_multiplier: c2.words[0] as u32,
        isr: isr.clone(),
        device: device.clone(),
        device_len: c2.words[1] as usize,
    };
    let Ok(mut net) = VirtIONet::<UserHal, UserPciTransport, QUEUE>::new(mk(), BUF) else {
        log("natd: the uplink's virtio-net device did not initialise");
        return 6;
    };
    // no interrupts: the loop polls the device
    let mut regs = mk();
    regs.set_config_vector(NO_VECTOR);
    regs.set_queue_vector(0, NO_VECTOR);
    regs.set_queue_vector(1, NO_VECTOR);
    let mac = net.mac_address();
    // 256 bits from the node's entropy (netd's LABEL_SEED, fresh output of a key drawn from
    // hardware entropy at boot): DNS64's upstream ids and ports, its TCP's sequence numbers
    let Some(seed) = entropy() else {
        log("natd: netd gave no entropy (LABEL_SEED): not started");
        return 8;
    };
    let Some(mut gw) = Gateway::new(&cfg, mac, seed) else {
        logf!("natd: the router {} is not on the uplink's subnet {}/{}", ip(cfg.router), ip(cfg.addr), cfg.prefix_len);
        return 7;
    };
    logf!("natd: NAT64 gateway up: uplink {}/{} (MAC {:02x?}) via router {}, 64:ff9b::/96 translated to {}; at most {} sessions; timeouts udp {} s, tcp {} s, tcp transitory {} s, icmp {} s",
        ip(cfg.addr), cfg.prefix_len, mac, ip(cfg.router), ip(cfg.addr), cfg.max_sessions, cfg.udp_timeout.as_secs(),
        cfg.tcp_established_timeout.as_secs(), cfg.tcp_transitory_timeout.as_secs(), cfg.icmp_timeout.as_secs());
    if let Some(d) = cfg.dns {
        logf!("natd: DNS64 at 64:ff9b::35 (UDP and TCP 53, EDNS 1232), asking the resolver {} (RFC 6147: AAAA synthesized in 64:ff9b::/96)", ip(d));
    }
    let mut dns_logged = 0u64;
    let cap = (XFER_PAGES * 4096) as usize;
    let mut out = alloc::vec![0u8; cap];
    let mut inb = alloc::vec![0u8; cap];
    let mut next_tick = now_ns() + TICK_NS;
    let mut last = (usize::MAX, usize::MAX);
    let mut errors = 0u64;
    // answers the gateway made itself (DNS64), for the next exchange
    let mut replies: Vec<Vec<u8>> = Vec::new();
    loop {
        // A turn waits in netd's exchange (a call: excused) or not at all.
        let _ = alive(HEARTBEAT_MS);
        let now = Duration::from_nanos(now_ns());
        // uplink -> fabric: frames from the device, translated, into the exchange buffer
        let mut off = 0usize;
        for r in replies.drain(..) {
            if let Some(next) = put_record(&mut out, off, &r) {
                off = next;
            }
        }
        while net.can_recv() && off + 2 * (2 + PACKET_MAX) <= cap {
            let Ok(buf) = net.receive() else { break };
            for v6 in gw.from_uplink(now, buf.packet()) {
                if let Some(next) = put_record(&mut out, off, &v6) {
                    off = next;
                }
            }
            let _ = net.recycle_rx_buffer(buf);
        }
        transmit(&mut net, &mut gw);
        // the exchange: our answers to netd, packets for the prefix back
        let wait = if off == 0 && replies.is_empty() && !net.can_recv() { IDLE_WAIT_MS } else { 0 };
        xfer.write(0, &out[..off]);
        match call_grant(NETD, LABEL_XFER, off as u64, wait, &xfer, cap as u64, true) {
            Ok(m) if m.label == 0 => {
                let n = (m.words[0] as usize).min(cap);
                xfer.read(0, &mut inb[..n]);
                let now = Duration::from_nanos(now_ns());
                for p in records(&inb[..n]).flatten() {
                    for r in gw.from_fabric(now, p) {
                        if replies.len() < 64 {
                            replies.push(r);
                        }
                    }
                }
                transmit(&mut net, &mut gw);
            }
            Ok(m) => {
                errors += 1;
                if errors == 1 {
                    logf!("natd: netd refused an exchange (error {})", m.label);
                }
                sleep_ns(100_000_000);
            }
            Err(_) => sleep_ns(100_000_000), // netd restarting: its next incarnation answers
        }
        if now_ns() >= next_tick {
            next_tick = now_ns() + TICK_NS;
            for r in gw.tick(Duration::from_nanos(now_ns())) {
                if replies.len() < 64 {
                    replies.push(r);
                }
            }
            if let Some((d, _)) = gw.dns.as_ref() {
                let s = d.stats();
                if s.queries != dns_logged {
                    dns_logged = s.queries;
                    logf!("natd: dns64: queries {}, synthesized {}, passed {}, empty A {}, malformed {}, unmatched {}, timed out {}, truncated {}; tcp connections {}",
                        s.queries, s.synthesized, s.passed, s.empty_a, s.malformed, s.unmatched, s.timed_out, s.truncated, gw.dns_tcp.as_ref().map_or(0, |t| t.connections()));
                }
            }
            let cur = (gw.nat.sessions(), gw.nat.bindings());
            if cur != last {
                last = cur;
                let s = gw.nat.stats();
                let dropped: Vec<(catenary_nat64::Drop, u64)> = s.dropped.iter().map(|(d, n)| (*d, *n)).collect();
                logf!("natd: sessions {}, bindings {}; translated out {}, in {}; expired {}; dropped {:?}; too big in {} (fragmented {}), out {}; icmp sent {}, rate-limited {}; arp {:?}",
                    cur.0, cur.1, s.out_translated, s.in_translated, s.expired, dropped, gw.stats.too_big, gw.stats.fragmented, gw.stats.out_too_big, gw.stats.icmp_sent, gw.stats.icmp_limited, (gw.uplink.stats().arp_requests_sent, gw.uplink.stats().arp_replies_sent, gw.uplink.arp_entries()));
            }
        }
    }
}

/// 32 bytes of entropy: four of netd's LABEL_SEED answers (each 64 fresh bits).
fn entropy() -> Option<[u8; 32]> {
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        let mut got = None;
        for _ in 0..50 {
            match call(NETD, catenary_ipc::netd::LABEL_SEED, [0; 4]) {
                Ok(m) if m.label == 0 => {
                    got = Some(m.words[0]);
                    break;
                }
                _ => sleep_ns(100_000_000),
            }
        }
        chunk.copy_from_slice(&got?.to_le_bytes());
    }
    Some(seed)
}

/// Frames the gateway queued (translated packets, ARP) to the device.
fn transmit(net: &mut VirtIONet<UserHal, UserPciTransport, QUEUE>, gw: &mut Gateway) {
    while let Some(f) = gw.uplink.take_frame() {
        let mut tx = net.new_tx_buffer(f.len());
        tx.packet_mut().copy_from_slice(&f);
        let _ = net.send(tx);
    }
}
