//! virtio-blk (device id 2) over an in-memory disk: the VM's own bytes, or bytes shared
//! read-only by many VMs (a workload image's root filesystem: every microVM of the image reads
//! the same frames).
//!
//! Requests: IN (read), OUT (write), FLUSH, GET_ID; everything else answers UNSUPP. Data length
//! must be a multiple of 512 and the whole transfer must lie inside the disk (checked
//! arithmetic); violations answer IOERR. Features: FLUSH, RO when the disk is read-only.

use super::queue::{Chain, Queue, QueueError};
use crate::mem::GuestMemory;
use alloc::sync::Arc;
use alloc::vec::Vec;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const SECTOR: u64 = 512;
/// Largest single transfer served (bounds host work per request).
const MAX_XFER: u64 = 4 << 20;

/// Bytes several VMs read (an image store entry): they stay alive while any disk holds them.
#[derive(Clone)]
pub struct SharedBytes(pub Arc<dyn AsRef<[u8]> + Send + Sync>);

impl SharedBytes {
    pub fn bytes(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl core::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.bytes().len())
    }
}

/// The bytes behind a disk.
#[derive(Debug, Clone)]
pub enum Disk {
    Owned(Vec<u8>),
    /// Read-only, shared with other VMs (never written): the first `len` bytes.
    Shared(SharedBytes, usize),
}

impl Disk {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Disk::Owned(v) => v,
            Disk::Shared(s, n) => s.bytes().get(..*n).unwrap_or(&[]),
        }
    }
    fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Disk::Owned(v) => Some(v),
            Disk::Shared(..) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VirtioBlk {
    pub disk: Disk,
    pub read_only: bool,
    pub id: [u8; 20],
    pub reads: u64,
    pub writes: u64,
}

impl VirtioBlk {
    /// `disk` is truncated to a whole number of sectors.
    pub fn new(mut disk: Vec<u8>, read_only: bool, id: &str) -> Self {
        let n = disk.len() - disk.len() % SECTOR as usize;
        disk.truncate(n);
        let mut idb = [0u8; 20];
        for (d, s) in idb.iter_mut().zip(id.bytes()) {
            *d = s;
        }
        VirtioBlk { disk: Disk::Owned(disk), read_only, id: idb, reads: 0, writes: 0 }
    }

    /// A read-only disk over `bytes` (whole sectors: a partial last sector is not visible),
    /// shared with whoever else reads them.
    pub fn shared(bytes: SharedBytes, id: &str) -> Self {
        let len = bytes.bytes().len();
        let n = len - len % SECTOR as usize;
        let mut b = Self::new(Vec::new(), true, id);
        b.disk = Disk::Shared(bytes, n);
        b
    }

    pub fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.disk.bytes().len() as u64 / SECTOR
    }

    pub fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        c[20..24].copy_from_slice(&512u32.to_le_bytes());
        c
    }

    fn serve(&mut self, mem: &mut dyn GuestMemory, c: &Chain) -> (u8, u32) {
        let mut hdr = [0u8; 16];
        match c.read_at(mem, 0, &mut hdr) {
            Ok(16) => {}
            _ => return (VIRTIO_BLK_S_IOERR, 0),
        }
        let typ = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
        let wlen = c.writable_len();
        if wlen == 0 {
            return (VIRTIO_BLK_S_IOERR, 0); // nowhere to put the status
        }
        let data_w = wlen - 1;
        let range = |len: u64, disk: u64| -> Option<core::ops::Range<usize>> {
            if !len.is_multiple_of(SECTOR) || len > MAX_XFER {
                return None;
            }
            let start = sector.checked_mul(SECTOR)?;
            let end = start.checked_add(len)?;
            if end > disk {
                return None;
            }
            Some(start as usize..end as usize)
        };
        match typ {
            VIRTIO_BLK_T_IN => {
                let Some(r) = range(data_w, self.disk.bytes().len() as u64) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                self.reads += 1;
                match c.write_at(mem, 0, &self.disk.bytes()[r]) {
                    Ok(n) => (VIRTIO_BLK_S_OK, n as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let len = c.readable_len().saturating_sub(16);
                let Some(r) = range(len, self.disk.bytes().len() as u64) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                // Straight from guest memory into the disk: no host buffer the size of the
                // guest's request. A chain that is unreadable part-way leaves the sectors
                // partly written and answers IOERR, as a real disk may.
                let Some(dst) = self.disk.bytes_mut().and_then(|d| d.get_mut(r)) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                let want = dst.len();
                match c.read_at(mem, 16, dst) {
                    Ok(n) if n == want => {
                        self.writes += 1;
                        (VIRTIO_BLK_S_OK, 0)
                    }
                    _ => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => (VIRTIO_BLK_S_OK, 0),
            VIRTIO_BLK_T_GET_ID => {
                let n = core::cmp::min(data_w, 20) as usize;
                match c.write_at(mem, 0, &self.id[..n]) {
                    Ok(w) => (VIRTIO_BLK_S_OK, w as u32),
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Process the request queue. Returns whether any chain was completed.
    pub fn process(&mut self, q: &mut Queue, mem: &mut dyn GuestMemory) -> Result<bool, QueueError> {
        let mut any = false;
        while let Some(c) = q.pop(mem)? {
            let (status, written) = self.serve(mem, &c);
            let wlen = c.writable_len();
            // Status is the last writable byte.
            let mut used = written;
            if wlen > 0 && c.write_at(mem, wlen - 1, &[status]).is_ok() {
                used = used.saturating_add(1);
            }
            q.add_used(mem, c.head, used)?;
            any = true;
        }
        Ok(any)
    }
}
