//! virtio-console (device id 3), single port, no multiport: queue 0 = receiveq (host → guest),
//! queue 1 = transmitq (guest → host console sink).

use super::queue::{Queue, QueueError};
use crate::console::ConsoleRing;
use crate::mem::GuestMemory;
use alloc::collections::VecDeque;

/// Per-chain cap on bytes taken from one transmit buffer (the rest is dropped and counted):
/// Linux's hvc driver writes at most a page at a time.
pub const MAX_TX_CHAIN: u64 = 4096;
/// QueueNumMax of a console's queues (the VM's `queue_size` if smaller). Linux's
/// virtio_console fills the receive queue to the brim when it probes the port, one page and
/// one notify (`add_inbuf`'s `virtqueue_kick`) per entry: 256 entries were 256 MMIO exits
/// and 1 MiB of guest RAM per console before `catenary-init: ready` (docs/vmm.md "Where the
/// boot's time goes"). 32 posted pages (128 KiB) still hold twice [`MAX_INPUT`]; the
/// transmit side has one hvc chain in flight at a time.
pub const QUEUE_SIZE: u16 = 32;
/// Host input bytes queued for the guest.
pub const MAX_INPUT: usize = 64 * 1024;
/// Node → init frames queued on the workload channel (a few STOP/SIGNAL requests: the node
/// coalesces them, so a guest that never reads cannot make this grow).
pub const MAX_CHANNEL_INPUT: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct VirtioConsole {
    /// This console is the workload channel (docs/guest-init.md): its output goes to the VM's
    /// channel ring, not to the console, and host console input never reaches it.
    pub channel: bool,
    pub input: VecDeque<u8>,
    /// Bytes of transmit chains beyond [`MAX_TX_CHAIN`] (also counted in the ring's drops).
    pub dropped_tx: u64,
}

impl VirtioConsole {
    pub fn new() -> Self {
        Self::default()
    }

    /// The workload channel's console.
    pub fn new_channel() -> Self {
        VirtioConsole { channel: true, ..Self::default() }
    }

    pub fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..2].copy_from_slice(&80u16.to_le_bytes());
        c[2..4].copy_from_slice(&25u16.to_le_bytes());
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        c
    }

    pub fn push_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.input.len() < MAX_INPUT {
                self.input.push_back(b);
            }
        }
    }

    /// Queue one whole node → init frame (docs/guest-init.md) on the channel's receive side; `false`
    /// (nothing queued) when this is not the channel or the frame does not fit in
    /// [`MAX_CHANNEL_INPUT`]: a frame is never cut.
    pub fn push_frame(&mut self, frame: &[u8]) -> bool {
        if !self.channel || self.input.len() + frame.len() > MAX_CHANNEL_INPUT {
            return false;
        }
        self.input.extend(frame);
        true
    }

    /// Copy every transmit chain into `out` (through a stack buffer: no allocation).
    pub fn process_tx(&mut self, q: &mut Queue, mem: &mut dyn GuestMemory, out: &mut ConsoleRing) -> Result<bool, QueueError> {
        let mut any = false;
        let mut buf = [0u8; 512];
        while let Some(c) = q.pop(mem)? {
            let mut budget = MAX_TX_CHAIN;
            'descs: for d in c.readable() {
                let mut off = 0u64;
                while off < d.len as u64 {
                    if budget == 0 {
                        break 'descs;
                    }
                    let n = (d.len as u64 - off).min(buf.len() as u64).min(budget) as usize;
                    // An unreadable buffer ends this chain's output (the chain is still used).
                    let Some(at) = d.addr.checked_add(off) else { break 'descs };
                    if mem.read(at, &mut buf[..n]).is_err() {
                        break 'descs;
                    }
                    out.push(&buf[..n]);
                    off += n as u64;
                    budget -= n as u64;
                }
            }
            let excess = c.readable_len().saturating_sub(MAX_TX_CHAIN);
            self.dropped_tx += excess;
            out.written += excess;
            out.dropped += excess;
            q.add_used(mem, c.head, 0)?;
            any = true;
        }
        Ok(any)
    }

    pub fn process_rx(&mut self, q: &mut Queue, mem: &mut dyn GuestMemory) -> Result<bool, QueueError> {
        let mut any = false;
        while !self.input.is_empty() {
            let Some(c) = q.pop(mem)? else { break };
            let cap = core::cmp::min(c.writable_len(), self.input.len() as u64) as usize;
            let n = c.write_at(mem, 0, &self.input.make_contiguous()[..cap]).unwrap_or(0);
            self.input.drain(..n);
            q.add_used(mem, c.head, n as u32)?;
            any = true;
        }
        Ok(any)
    }
}
