//! nicd: the virtio-net driver in ring 3. Granted only the device's virtio structures (MMIO,
//! uncached), DMA memory (its heap, the virtqueues and the ring it shares with the kernel) and
//! the receive interrupt (MSI-X, programmed by the kernel, delivered as an IPC notification to
//! its endpoint). The device runs on `virtio-drivers`' `VirtIONet` over [`UserPciTransport`]
//! and the grant-syscall HAL. Frames go to and come from the kernel's stack (`netd`) through
//! the shared ring of `catenary_user::nic`.
//!
//! Started by the supervisor with the grants of its manifest entry (hypervisor/manifest).
//! Capability slots: 0 = its own endpoint (config, transmit wakeups, interrupts; the same
//! endpoint across restarts), 1 = send to `netd`'s endpoint (with the right to lend it the
//! frame ring: `SYS_SHARE`).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use catenary_user::dma;
use catenary_user::virtio_net::AsyncNet;
use catenary_user::nic::*;
use catenary_ipc::supervisor::NICD_TEST_HANG;
use catenary_user::virtio_pci::{UserPciTransport, NO_VECTOR};
use catenary_user::*;
use alloc::rc::Rc;
use core::sync::atomic::{fence, Ordering};
use virtio_drivers::transport::DeviceType;

const HEAP_PAGES: u64 = 96;
const QUEUE: usize = 32;
const BUF: usize = 2048;
const KERNEL: u64 = 1;
/// How long a transmit waits for room in the device's queue before it leaves frames in the ring.
const FULL_WAIT_NS: u64 = 20_000_000;
/// The heartbeat's period: a pass takes at most `RX_PER_PASS` frames in and a full transmit
/// ring out (16 slots × `FULL_WAIT_NS`, 320 ms, when the device is slow to take them), and
/// the driver wakes at least every `IDLE_WAKE_NS` when nothing happens.
const HEARTBEAT_MS: u64 = 5_000;
/// The longest sleep between passes with MSI-X (without it the driver polls every 10 ms):
/// a wakeup this often lets an idle driver keep its heartbeat.
const IDLE_WAKE_NS: u64 = 1_000_000_000;
/// The most frames one pass takes from the device: under a flood that `netd` keeps up with
/// (it drains the ring on another CPU) the receive side would otherwise never end a pass,
/// starving transmit and the heartbeat. More waiting: the next pass starts at once.
const RX_PER_PASS: usize = QUEUE;

entry!(run);

fn fail(step: u64) -> u64 {
    let _ = send(KERNEL, LABEL_FAIL, [step, 0, 0, 0]);
    step
}

/// Where the test crash (`arg` = N) reads: unmapped, so the task dies of a page fault there.
const CRASH_ADDRESS: u64 = 0xdead_0000;

/// Wait for a message with `label`, skipping others: a restarted nicd finds on its endpoint
/// (the same across restarts) what was sent to the one before it (wakeups, interrupts).
/// Without it for a second, say hello to netd again (a ring-3 netd configures a new nicd
/// when it hears of it; the hello may not have fit its endpoint's queue).
fn recv_label(label: u64) -> Option<Msg> {
    loop {
        match recv(0, 1_000_000_000) {
            Ok(m) if m.label == label => return Some(m),
            Ok(_) => {}
            Err(5) => {
                let _ = send(KERNEL, LABEL_HELLO, [0; 4]); // timeout
            }
            Err(_) => return None,
        }
    }
}

/// Lend the frame ring to netd for as long as both live (a ring-3 netd maps it; the
/// in-kernel one reads it through the direct map and cannot take it) and report it up.
fn report_up(ring: &DmaRegion, up: [u64; 4]) {
    if let Ok(r) = share(KERNEL, ring) {
        let _ = send(KERNEL, LABEL_SHARED, [r, ring.phys(), 0, 0]);
    }
    let _ = send(KERNEL, LABEL_UP, up);
}

/// `arg`: 0, or (test only, first start only) N: crash with a page fault after receiving N
/// frames (`nicd.crash_after=N` on the kernel command line); N | `NICD_TEST_HANG`: hang in a
/// loop that sleeps there instead (`nicd.hang_after=N`), for the heartbeat to catch.
fn run(arg: u64) -> u64 {
    if !dma::init(HEAP_PAGES) {
        return fail(1);
    }
    let _ = send(KERNEL, LABEL_HELLO, [0; 4]);
    let Some(c1) = recv_label(LABEL_CONFIG) else { return fail(2) };
    let Some(c2) = recv_label(LABEL_CONFIG2) else { return fail(3) };
    let map = |phys: u64, len: u64| dma::mmio(phys, len.max(1)).map(Rc::new);
    let (Some(common), Some(notify), Some(isr), Some(device)) =
        (map(c1.words[0], 0x38), map(c1.words[1], c2.words[2]), map(c1.words[2], 1), map(c1.words[3], c2.words[1]))
    else {
        return fail(4);
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
    // virtio-net config: mac[6], status u16 (bit 0 = link up when VIRTIO_NET_F_STATUS).
    let status: u16 = virtio_drivers::transport::Transport::read_config_space(&mk(), 6).unwrap_or(1);
    let Some(mut net) = AsyncNet::<UserPciTransport, QUEUE>::new(mk(), BUF, QUEUE, QUEUE) else { return fail(5) };
    // (test and bench reference, `net.nic=reference`: wait for the device after each frame)
    let wait_each = c2.words[3] & CONFIG2_WAIT_EACH != 0;
    // After the reset in `new`: receive queue -> MSI-X entry 0 (the kernel programmed it to
    // the NIC vector), transmit queue and configuration changes -> none.
    let mut regs = mk();
    regs.set_config_vector(NO_VECTOR);
    let msix = regs.set_queue_vector(0, 0) == 0 && regs.set_queue_vector(1, NO_VECTOR) == NO_VECTOR;
    let Some(ring) = dma::alloc(RING_PAGES) else { return fail(6) };
    let mac = net.mac_address();
    let mut m = [0u8; 8];
    m[..6].copy_from_slice(&mac);
    let up = [ring.phys(), u64::from_le_bytes(m), (status & 1) as u64, msix as u64];
    report_up(&ring, up);
    let mut dropped = 0u64;
    let mut irq_seen = false;
    let mut received = 0u64;
    let mut stats = Stats::default();
    loop {
        // one beat per pass: the pass either goes round or the kernel restarts the driver
        let _ = alive(HEARTBEAT_MS);
        stats.add(stat::LOOPS, 1);
        // receive: device -> ring (the stack's tail is checked: a bad one stops the receive
        // side until it is sane again, frames stay in the device queue)
        let mut got = false;
        let mut taken = 0;
        while taken < RX_PER_PASS && net.can_recv() {
            taken += 1;
            let t = rdtsc();
            let head = ring.read_u64(RX_HEAD);
            if !room(head, ring.read_u64(RX_TAIL)).is_ok_and(|n| n > 0) {
                break; // the stack is behind: leave frames in the device queue (netd wakes us)
            }
            let Some(fit) = net.receive(|p| {
                if p.len() as u64 > SLOT_LEN {
                    return false;
                }
                let s = slot(head);
                ring.write(RX_SLOTS + s * SLOT_LEN, p);
                ring.write_u64(RX_LEN + s * 8, p.len() as u64);
                ring.write_u64(RX_STAMP + s * 8, rdtsc());
                ring.write_u64(RX_HEAD, head.wrapping_add(1));
                true
            }) else {
                break;
            };
            if fit {
                got = true;
            } else {
                dropped += 1;
            }
            stats.add(stat::RX_FRAMES, 1);
            stats.add(stat::RX_CYCLES, rdtsc() - t);
            received += 1;
            if cfg!(feature = "probes") && arg != 0 && received == arg & !NICD_TEST_HANG {
                if arg & NICD_TEST_HANG != 0 {
                    logf!("nicd: TEST ONLY: hanging on purpose after {} frames in a loop that sleeps", received);
                    loop {
                        sleep_ns(10_000_000);
                    }
                }
                logf!("nicd: crashing on purpose after {} frames (test)", received);
                let _ = hostile::read_u64(CRASH_ADDRESS);
            }
        }
        if got {
            let t = rdtsc();
            let _ = send(KERNEL, LABEL_RX, [dropped, 0, 0, 0]);
            stats.add(stat::RX_WAKES, 1);
            stats.add(stat::RX_WAKE_CYCLES, rdtsc() - t);
        }
        // transmit: ring -> device (the producer's head is checked: a bad one sends nothing)
        // The device's transmit queue full (QEMU takes its frames in bursts): wait for it
        // to take a burst, at most FULL_WAIT_NS, then leave the rest in the ring and look
        // again at the next tick (transmit completions raise no interrupt).
        let mut backlog = false;
        let mut tail = ring.read_u64(TX_TAIL);
        let n = pending(ring.read_u64(TX_HEAD), tail).unwrap_or(0);
        for _ in 0..n {
            let t = rdtsc();
            let s = slot(tail);
            let stamp = ring.read_u64(TX_STAMP + s * 8);
            let len = ring.read_u64(TX_LEN + s * 8).min(SLOT_LEN) as usize;
            // the frame goes from the ring straight into the device's buffer
            let d = rdtsc();
            if !net.can_send() {
                let end = now_ns() + FULL_WAIT_NS;
                while !net.can_send() && now_ns() < end {
                    core::hint::spin_loop();
                }
            }
            if !net.transmit(len, |b| ring.read(TX_SLOTS + s * SLOT_LEN, b)) {
                backlog = true;
                break;
            }
            if wait_each {
                while !net.idle_tx() {
                    core::hint::spin_loop();
                }
            }
            let e = rdtsc();
            if stamp != 0 && stamp < t {
                stats.add(stat::TX_STAMPED, 1);
                stats.add(stat::TX_WAIT_CYCLES, t - stamp);
            }
            tail = tail.wrapping_add(1);
            ring.write_u64(TX_TAIL, tail);
            stats.add(stat::TX_FRAMES, 1);
            stats.add(stat::TX_CYCLES, e - t);
            stats.add(stat::TX_DEVICE_CYCLES, e - d);
        }
        stats.publish(&ring);
        if taken == RX_PER_PASS {
            continue; // the receive side stopped at its limit, not on an empty queue
        }
        // Sleep only with the transmit ring empty: say so first, then look again, so a
        // producer that published meanwhile either sees the flag (and wakes us) or is seen.
        if !backlog {
            ring.write_u64(TX_WAITING, 1);
            fence(Ordering::SeqCst);
            if pending(ring.read_u64(TX_HEAD), ring.read_u64(TX_TAIL)).is_ok_and(|n| n > 0) {
                ring.write_u64(TX_WAITING, 0);
                continue;
            }
        }
        // wait for the receive interrupt or a transmit wakeup (without MSI-X: poll every 10 ms)
        let m = recv(0, if backlog || !msix { 10_000_000 } else { IDLE_WAKE_NS });
        ring.write_u64(TX_WAITING, 0);
        if let Ok(m) = m {
            if m.label == LABEL_NOTIFY && !irq_seen {
                irq_seen = true;
                log("nicd: receive interrupt (MSI-X) woke the driver");
            }
            if m.label == LABEL_CONFIG {
                // a restarted netd: lend it the ring and report again (the device runs on)
                report_up(&ring, up);
            }
        }
    }
}

/// The driver's counters, published in the ring's header page for the bench's breakdown
/// (`nic_ring::stat`): a few plain writes per pass, read by no one unless a bench asks.
#[derive(Default)]
struct Stats([u64; stat::COUNT as usize]);

impl Stats {
    fn add(&mut self, i: u64, v: u64) {
        self.0[i as usize] = self.0[i as usize].wrapping_add(v);
    }
    fn publish(&self, ring: &DmaRegion) {
        for (i, v) in self.0.iter().enumerate() {
            ring.write_u64(STATS + 8 * i as u64, *v);
        }
    }
}
