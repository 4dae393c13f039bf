//! virtio-console (device id 3), single port, no multiport: queue 0 = receiveq (host → guest),
//! queue 1 = transmitq (guest → host console sink).

use super::queue::{Queue, QueueError};
use crate::mem::GuestMemory;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

/// Per-chain cap on bytes taken from one transmit buffer (the rest is dropped and counted).
const MAX_TX_CHAIN: u64 = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct VirtioConsole {
    pub input: VecDeque<u8>,
    pub output: Vec<u8>,
    pub dropped_tx: u64,
}

impl VirtioConsole {
    pub fn new() -> Self {
        Self::default()
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
            if self.input.len() < 64 * 1024 {
                self.input.push_back(b);
            }
        }
    }

    pub fn process_tx(&mut self, q: &mut Queue, mem: &mut dyn GuestMemory) -> Result<bool, QueueError> {
        let mut any = false;
        while let Some(c) = q.pop(mem)? {
            let total = c.readable_len();
            let take = core::cmp::min(total, MAX_TX_CHAIN);
            self.dropped_tx += total - take;
            let mut buf = vec![0u8; take as usize];
            let n = c.read_at(mem, 0, &mut buf).unwrap_or(0);
            if self.output.len() < 1 << 20 {
                self.output.extend_from_slice(&buf[..n]);
            } else {
                self.dropped_tx += n as u64;
            }
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
            let data: Vec<u8> = self.input.iter().take(cap).copied().collect();
            let n = c.write_at(mem, 0, &data).unwrap_or(0);
            self.input.drain(..n);
            q.add_used(mem, c.head, n as u32)?;
            any = true;
        }
        Ok(any)
    }
}
