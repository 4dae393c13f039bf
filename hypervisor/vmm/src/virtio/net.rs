//! virtio-net (device id 1): one queue pair, queue 0 = receiveq (host → guest), queue 1 =
//! transmitq (guest → host). Features: VERSION_1 and MAC only (no offloads, no mergeable
//! buffers, no control queue), so every buffer starts with the 12-byte `virtio_net_hdr_v1`
//! and carries exactly one Ethernet frame.
//!
//! The host side is two bounded frame queues: [`VirtioNet::take_tx_frames`] hands out what the
//! guest sent, [`VirtioNet::push_rx_frame`] queues frames for the guest (delivered when the
//! transport processes the receive queue). Guest buffers are hostile: a transmit chain that is
//! shorter than header + Ethernet header or longer than [`MAX_FRAME`] is dropped and counted,
//! a receive chain too small for the frame drops the frame; nothing panics. Every frame
//! buffer is allocated fallibly: a failed allocation for a guest frame ends the VM
//! ([`QueueError::OutOfMemory`]), one for a frame from the node drops that frame.

use super::queue::{Queue, QueueError};
use crate::fallible::reserve;
use crate::mem::GuestMemory;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Size of `virtio_net_hdr_v1` (VERSION_1 always uses the 12-byte header).
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame accepted either way (1500-byte MTU + 14-byte header + VLAN tag).
pub const MAX_FRAME: usize = 1518;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Frames queued in either direction before new ones are dropped.
pub const QUEUE_FRAMES: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct NetCounters {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// Transmit chains that were malformed (too short, too long, unreadable).
    pub tx_bad: u64,
    /// Transmitted frames dropped because the host queue was full.
    pub tx_overflow: u64,
    /// Frames for the guest dropped: host queue full, frame invalid or guest buffer too small.
    pub rx_dropped: u64,
}

#[derive(Debug, Clone)]
pub struct VirtioNet {
    pub mac: [u8; 6],
    tx: VecDeque<Vec<u8>>,
    rx: VecDeque<Vec<u8>>,
    pub counters: NetCounters,
}

impl VirtioNet {
    pub fn new(mac: [u8; 6]) -> Self {
        VirtioNet { mac, tx: VecDeque::new(), rx: VecDeque::new(), counters: NetCounters::default() }
    }

    pub fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    /// Config space: mac[6], status u16 (no STATUS feature: ignored by the driver).
    pub fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6] = 1; // VIRTIO_NET_S_LINK_UP
        c
    }

    /// Frames the guest transmitted since the last call (Ethernet frames, header stripped).
    pub fn take_tx_frames(&mut self) -> Vec<Vec<u8>> {
        // Moved out, not copied: no allocation.
        Vec::from(core::mem::take(&mut self.tx))
    }

    /// Queue an Ethernet frame for the guest. Returns false (and counts) if it was dropped.
    pub fn push_rx_frame(&mut self, frame: &[u8]) -> bool {
        if frame.len() < MIN_FRAME || frame.len() > MAX_FRAME || self.rx.len() >= QUEUE_FRAMES {
            self.counters.rx_dropped += 1;
            return false;
        }
        let mut v = Vec::new();
        if reserve(|| v.try_reserve_exact(frame.len())).is_err() || reserve(|| self.rx.try_reserve(1)).is_err() {
            self.counters.rx_dropped += 1;
            return false;
        }
        v.extend_from_slice(frame);
        self.rx.push_back(v);
        true
    }

    pub fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    /// Process the transmit queue. Returns whether any chain was completed.
    pub fn process_tx(&mut self, q: &mut Queue, mem: &mut dyn GuestMemory) -> Result<bool, QueueError> {
        let mut any = false;
        while let Some(c) = q.pop(mem)? {
            let total = c.readable_len();
            let ok_len = total >= (NET_HDR_LEN + MIN_FRAME) as u64 && total <= (NET_HDR_LEN + MAX_FRAME) as u64;
            if ok_len && self.tx.len() >= QUEUE_FRAMES {
                self.counters.tx_overflow += 1;
            } else if ok_len {
                let mut buf = Vec::new();
                reserve(|| buf.try_reserve_exact(total as usize - NET_HDR_LEN)).map_err(|_| QueueError::OutOfMemory)?;
                reserve(|| self.tx.try_reserve(1)).map_err(|_| QueueError::OutOfMemory)?;
                buf.resize(total as usize - NET_HDR_LEN, 0);
                match c.read_at(mem, NET_HDR_LEN as u64, &mut buf) {
                    Ok(n) if n == buf.len() => {
                        self.tx.push_back(buf);
                        self.counters.tx_frames += 1;
                    }
                    _ => self.counters.tx_bad += 1,
                }
            } else {
                self.counters.tx_bad += 1;
            }
            q.add_used(mem, c.head, 0)?;
            any = true;
        }
        Ok(any)
    }

    /// Deliver pending frames into the guest's receive buffers. Returns whether any chain was
    /// completed.
    pub fn process_rx(&mut self, q: &mut Queue, mem: &mut dyn GuestMemory) -> Result<bool, QueueError> {
        let mut any = false;
        while !self.rx.is_empty() {
            let Some(c) = q.pop(mem)? else { break };
            let Some(frame) = self.rx.pop_front() else { break };
            let need = (NET_HDR_LEN + frame.len()) as u64;
            let mut used = 0u32;
            if c.writable_len() >= need {
                let mut b = [0u8; NET_HDR_LEN + MAX_FRAME];
                let buf = &mut b[..NET_HDR_LEN + frame.len()];
                // virtio_net_hdr_v1: flags 0, gso NONE, ..., num_buffers = 1.
                buf[10] = 1;
                buf[NET_HDR_LEN..].copy_from_slice(&frame);
                match c.write_at(mem, 0, buf) {
                    Ok(n) if n == buf.len() => {
                        used = n as u32;
                        self.counters.rx_frames += 1;
                    }
                    _ => self.counters.rx_dropped += 1,
                }
            } else {
                self.counters.rx_dropped += 1;
            }
            q.add_used(mem, c.head, used)?;
            any = true;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::tests::Driver;
    use super::*;
    use crate::mem::VecMemory;
    use alloc::vec;

    fn frame(n: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; n];
        f[12] = 0x86;
        f[13] = 0xdd;
        f
    }

    #[test]
    fn tx_strips_header_and_validates() {
        let mut m = VecMemory::new(0x40000);
        let mut d = Driver::new(0x1000, 8);
        let mut q = d.queue();
        let mut n = VirtioNet::new([2, 0, 0, 0, 0, 1]);
        let f = frame(60, 0xaa);
        m.as_mut_slice()[0x8000..0x800c].fill(0);
        m.as_mut_slice()[0x800c..0x800c + 60].copy_from_slice(&f);
        // header and frame in one buffer
        d.add(&mut m, &[(0x8000, 72, false)]);
        // header and frame split over two buffers
        d.add(&mut m, &[(0x8000, 12, false), (0x800c, 60, false)]);
        // too short (header only)
        d.add(&mut m, &[(0x8000, 12, false)]);
        // too long
        d.add(&mut m, &[(0x8000, 12 + MAX_FRAME as u32 + 1, false)]);
        // unreadable (outside guest memory)
        d.add(&mut m, &[(0x3f000, 0x2000, false)]);
        assert_eq!(n.process_tx(&mut q, &mut m), Ok(true));
        let out = n.take_tx_frames();
        assert_eq!(out, vec![f.clone(), f]);
        assert_eq!(n.counters.tx_bad, 3);
        assert_eq!(d.used_idx(&m), 5);
        assert!(n.take_tx_frames().is_empty());
    }

    #[test]
    fn allocation_failure_is_an_error_not_a_panic() {
        let mut m = VecMemory::new(0x40000);
        let mut d = Driver::new(0x1000, 8);
        let mut q = d.queue();
        let mut n = VirtioNet::new([2, 0, 0, 0, 0, 1]);
        m.as_mut_slice()[0x800c..0x800c + 60].copy_from_slice(&frame(60, 1));
        d.add(&mut m, &[(0x8000, 72, false)]);
        crate::fallible::fail_allocations(true);
        let r = n.process_tx(&mut q, &mut m);
        // A frame from the node that cannot be stored is dropped and counted.
        assert!(!n.push_rx_frame(&frame(60, 2)));
        crate::fallible::fail_allocations(false);
        assert_eq!(r, Err(QueueError::OutOfMemory));
        assert_eq!(n.counters.rx_dropped, 1);
        // Allocation works again: the same frame goes through.
        let mut q = d.queue();
        assert_eq!(n.process_tx(&mut q, &mut m), Ok(true));
        assert_eq!(n.take_tx_frames().len(), 1);
    }

    #[test]
    fn rx_delivers_with_header_and_drops_when_small() {
        let mut m = VecMemory::new(0x40000);
        let mut d = Driver::new(0x1000, 8);
        let mut q = d.queue();
        let mut n = VirtioNet::new([2, 0, 0, 0, 0, 1]);
        // nothing pending: buffers stay posted
        d.add(&mut m, &[(0x8000, 1600, true)]);
        assert_eq!(n.process_rx(&mut q, &mut m), Ok(false));
        let f = frame(100, 0x55);
        assert!(n.push_rx_frame(&f));
        assert_eq!(n.process_rx(&mut q, &mut m), Ok(true));
        assert_eq!(d.used_elem(&m, 0), (0, 112));
        assert_eq!(m.as_slice()[0x8000 + 10], 1);
        assert_eq!(&m.as_slice()[0x800c..0x800c + 100], &f[..]);
        // a buffer too small for the frame: dropped, chain returned with length 0
        d.add(&mut m, &[(0x9000, 50, true)]);
        assert!(n.push_rx_frame(&f));
        assert_eq!(n.process_rx(&mut q, &mut m), Ok(true));
        assert_eq!(d.used_elem(&m, 1).1, 0);
        assert_eq!(n.counters.rx_dropped, 1);
        // invalid frames refused at the host side
        assert!(!n.push_rx_frame(&[0u8; 5]));
        assert!(!n.push_rx_frame(&vec![0u8; MAX_FRAME + 1]));
        // bounded host queue
        for _ in 0..QUEUE_FRAMES {
            assert!(n.push_rx_frame(&f));
        }
        assert!(!n.push_rx_frame(&f));
        assert_eq!(n.rx_pending(), QUEUE_FRAMES);
    }
}
