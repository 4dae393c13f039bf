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

use catenary_user::dma::{self, UserHal};
use catenary_user::nic::*;
use catenary_user::virtio_pci::{UserPciTransport, NO_VECTOR};
use catenary_user::*;
use alloc::rc::Rc;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::DeviceType;

const HEAP_PAGES: u64 = 96;
const QUEUE: usize = 32;
const BUF: usize = 2048;
const KERNEL: u64 = 1;

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

/// `arg`: 0, or (test only, `nicd.crash_after=N` on the kernel command line, first start
/// only) crash with a page fault after receiving N frames.
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
    let Ok(mut net) = VirtIONet::<UserHal, UserPciTransport, QUEUE>::new(mk(), BUF) else { return fail(5) };
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
    loop {
        // receive: device -> ring
        let mut got = false;
        while net.can_recv() {
            let (head, tail) = (ring.read_u64(RX_HEAD), ring.read_u64(RX_TAIL));
            if head - tail >= SLOTS {
                break; // the stack is behind: leave frames in the device queue (netd wakes us)
            }
            let Ok(buf) = net.receive() else { break };
            let p = buf.packet();
            if p.len() as u64 <= SLOT_LEN {
                let s = head % SLOTS;
                ring.write(RX_SLOTS + s * SLOT_LEN, p);
                ring.write_u64(RX_LEN + s * 8, p.len() as u64);
                ring.write_u64(RX_HEAD, head + 1);
                got = true;
            } else {
                dropped += 1;
            }
            let _ = net.recycle_rx_buffer(buf);
            received += 1;
            if arg != 0 && received == arg {
                logf!("nicd: crashing on purpose after {} frames (test)", received);
                let _ = hostile::read_u64(CRASH_ADDRESS);
            }
        }
        if got {
            let _ = send(KERNEL, LABEL_RX, [dropped, 0, 0, 0]);
        }
        // transmit: ring -> device
        let (mut tail, head) = (ring.read_u64(TX_TAIL), ring.read_u64(TX_HEAD));
        while tail != head {
            let s = tail % SLOTS;
            let len = ring.read_u64(TX_LEN + s * 8).min(SLOT_LEN) as usize;
            let mut tx = net.new_tx_buffer(len);
            ring.read(TX_SLOTS + s * SLOT_LEN, tx.packet_mut());
            let _ = net.send(tx);
            tail += 1;
            ring.write_u64(TX_TAIL, tail);
        }
        // wait for the receive interrupt or a transmit wakeup (without MSI-X: poll every 10 ms)
        if let Ok(m) = recv(0, if msix { 0 } else { 10_000_000 }) {
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
