//! Split virtqueue (virtio 1.x §2.7) processing over untrusted guest memory.
//!
//! Every value read from the rings is validated: the avail index may run at most `size`
//! entries ahead, heads and `next` links must be < size, a chain may hold at most `size`
//! descriptors (which also catches loops), indirect tables must be a whole number of
//! descriptors, at most [`MAX_INDIRECT`] long, not nested, and every buffer's `addr + len` must
//! not overflow. A violation is a [`QueueError`]; the transport then marks the device
//! DEVICE_NEEDS_RESET and stops touching the queue.

use crate::mem::{GuestMemory, GuestMemoryExt, MemError};
use alloc::vec::Vec;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
pub const MAX_INDIRECT: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    NotReady,
    /// avail.idx moved more than queue size past the last seen index.
    AvailIndexJump { avail: u16, last: u16 },
    BadHead(u16),
    BadNext(u16),
    ChainTooLong,
    BadIndirect,
    AddressOverflow,
    /// A device-readable descriptor after a device-writable one.
    ReadAfterWrite,
    Memory(MemError),
    /// A host allocation failed while processing the queue (ends the VM).
    OutOfMemory,
}

impl From<MemError> for QueueError {
    fn from(e: MemError) -> Self {
        QueueError::Memory(e)
    }
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A popped descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
}

impl Chain {
    pub fn readable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| !d.write)
    }
    pub fn writable(&self) -> impl Iterator<Item = &Desc> {
        self.descs.iter().filter(|d| d.write)
    }
    pub fn readable_len(&self) -> u64 {
        self.readable().map(|d| d.len as u64).sum()
    }
    pub fn writable_len(&self) -> u64 {
        self.writable().map(|d| d.len as u64).sum()
    }

    /// Copy up to `buf.len()` bytes from the readable buffers starting at byte `offset`.
    pub fn read_at(&self, mem: &dyn GuestMemory, mut offset: u64, buf: &mut [u8]) -> Result<usize, MemError> {
        let mut done = 0usize;
        for d in self.readable() {
            if done == buf.len() {
                break;
            }
            let len = d.len as u64;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = core::cmp::min(len - offset, (buf.len() - done) as u64) as usize;
            mem.read(d.addr + offset, &mut buf[done..done + n])?;
            done += n;
            offset = 0;
        }
        Ok(done)
    }

    /// Copy `buf` into the writable buffers starting at byte `offset`; returns bytes written.
    pub fn write_at(&self, mem: &mut dyn GuestMemory, mut offset: u64, buf: &[u8]) -> Result<usize, MemError> {
        let mut done = 0usize;
        for d in self.writable() {
            if done == buf.len() {
                break;
            }
            let len = d.len as u64;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = core::cmp::min(len - offset, (buf.len() - done) as u64) as usize;
            mem.write(d.addr + offset, &buf[done..done + n])?;
            done += n;
            offset = 0;
        }
        Ok(done)
    }
}

/// Driver-configured state of one split virtqueue.
#[derive(Debug, Clone, Default)]
pub struct Queue {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub last_avail: u16,
    pub used_idx: u16,
    /// VIRTIO_F_INDIRECT_DESC negotiated.
    pub indirect: bool,
}

impl Queue {
    pub fn new(max_size: u16) -> Self {
        Queue { max_size, size: max_size, ..Default::default() }
    }

    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Configuration is acceptable (checked when the driver sets QueueReady).
    pub fn valid_config(&self) -> bool {
        self.size != 0
            && self.size <= self.max_size
            && self.size.is_power_of_two()
            && self.desc.is_multiple_of(16)
            && self.avail.is_multiple_of(2)
            && self.used.is_multiple_of(4)
    }

    fn read_desc(mem: &dyn GuestMemory, table: u64, i: u16) -> Result<(u64, u32, u16, u16), QueueError> {
        let at = table.checked_add(i as u64 * 16).ok_or(QueueError::AddressOverflow)?;
        let b: [u8; 16] = mem.read_array(at)?;
        let addr = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let flags = u16::from_le_bytes([b[12], b[13]]);
        let next = u16::from_le_bytes([b[14], b[15]]);
        Ok((addr, len, flags, next))
    }

    fn push_desc(descs: &mut Vec<Desc>, addr: u64, len: u32, write: bool) -> Result<(), QueueError> {
        addr.checked_add(len as u64).ok_or(QueueError::AddressOverflow)?;
        // Read-after-write is refused, so "any earlier buffer is writable" == "the last one is".
        if !write && descs.last().is_some_and(|d| d.write) {
            return Err(QueueError::ReadAfterWrite);
        }
        // The chain length is bounded (queue size, indirect table size) but the memory is
        // still the guest's doing: failing to get it ends the VM, not the node.
        crate::fallible::reserve(|| descs.try_reserve(1)).map_err(|_| QueueError::OutOfMemory)?;
        descs.push(Desc { addr, len, write });
        Ok(())
    }

    /// Pop the next available chain, if any.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let size = self.size;
        let avail_idx = mem.read_u16(self.avail.checked_add(2).ok_or(QueueError::AddressOverflow)?)?;
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > size {
            return Err(QueueError::AvailIndexJump { avail: avail_idx, last: self.last_avail });
        }
        let slot = (self.last_avail % size) as u64;
        let head = mem.read_u16(self.avail.checked_add(4 + slot * 2).ok_or(QueueError::AddressOverflow)?)?;
        if head >= size {
            return Err(QueueError::BadHead(head));
        }
        let mut descs = Vec::new();
        let mut idx = head;
        let mut count = 0u32;
        loop {
            count += 1;
            if count > size as u32 {
                return Err(QueueError::ChainTooLong);
            }
            let (addr, len, flags, next) = Self::read_desc(mem, self.desc, idx)?;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect || flags & VIRTQ_DESC_F_NEXT != 0 || len % 16 != 0 || len == 0 {
                    return Err(QueueError::BadIndirect);
                }
                let n = len / 16;
                if n > MAX_INDIRECT {
                    return Err(QueueError::BadIndirect);
                }
                addr.checked_add(len as u64).ok_or(QueueError::AddressOverflow)?;
                let mut j: u16 = 0;
                let mut icount = 0u32;
                loop {
                    icount += 1;
                    if icount > n {
                        return Err(QueueError::ChainTooLong);
                    }
                    let (a, l, f, nx) = Self::read_desc(mem, addr, j)?;
                    if f & VIRTQ_DESC_F_INDIRECT != 0 {
                        return Err(QueueError::BadIndirect);
                    }
                    Self::push_desc(&mut descs, a, l, f & VIRTQ_DESC_F_WRITE != 0)?;
                    if f & VIRTQ_DESC_F_NEXT == 0 {
                        break;
                    }
                    if nx as u32 >= n {
                        return Err(QueueError::BadNext(nx));
                    }
                    j = nx;
                }
                break;
            }
            Self::push_desc(&mut descs, addr, len, flags & VIRTQ_DESC_F_WRITE != 0)?;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            if next >= size {
                return Err(QueueError::BadNext(next));
            }
            idx = next;
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(Chain { head, descs }))
    }

    /// Return a chain to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &mut dyn GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        if !self.ready || self.size == 0 {
            return Err(QueueError::NotReady);
        }
        let slot = (self.used_idx % self.size) as u64;
        let at = self.used.checked_add(4 + slot * 8).ok_or(QueueError::AddressOverflow)?;
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&(head as u32).to_le_bytes());
        e[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(at, &e)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        mem.write_u16(self.used.checked_add(2).ok_or(QueueError::AddressOverflow)?, self.used_idx)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mem::VecMemory;

    /// Test helper: a driver-side view of a split queue in VecMemory.
    pub struct Driver {
        pub desc: u64,
        pub avail: u64,
        pub used: u64,
        pub size: u16,
        pub next_free: u16,
        pub avail_idx: u16,
    }

    impl Driver {
        pub fn new(base: u64, size: u16) -> Self {
            let desc = base;
            let avail = base + 16 * size as u64;
            let used = (avail + 6 + 2 * size as u64 + 3) & !3;
            Driver { desc, avail, used, size, next_free: 0, avail_idx: 0 }
        }
        pub fn queue(&self) -> Queue {
            Queue { max_size: self.size, size: self.size, ready: true, desc: self.desc, avail: self.avail, used: self.used, ..Default::default() }
        }
        /// Add a chain of (addr, len, write) buffers; returns the head.
        pub fn add(&mut self, m: &mut VecMemory, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_free;
            for (i, &(a, l, w)) in bufs.iter().enumerate() {
                let idx = self.next_free;
                let last = i + 1 == bufs.len();
                let mut flags = if w { VIRTQ_DESC_F_WRITE } else { 0 };
                if !last {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                let d = self.desc + idx as u64 * 16;
                m.write_u64(d, a).unwrap();
                m.write_u32(d + 8, l).unwrap();
                m.write_u16(d + 12, flags).unwrap();
                m.write_u16(d + 14, (idx + 1) % self.size).unwrap();
                self.next_free = (self.next_free + 1) % self.size;
            }
            m.write_u16(self.avail + 4 + (self.avail_idx % self.size) as u64 * 2, head).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            m.write_u16(self.avail + 2, self.avail_idx).unwrap();
            head
        }
        pub fn used_idx(&self, m: &VecMemory) -> u16 {
            m.read_u16(self.used + 2).unwrap()
        }
        pub fn used_elem(&self, m: &VecMemory, i: u16) -> (u32, u32) {
            let at = self.used + 4 + (i % self.size) as u64 * 8;
            (m.read_u32(at).unwrap(), m.read_u32(at + 4).unwrap())
        }
    }

    #[test]
    fn pop_and_used() {
        let mut m = VecMemory::new(0x10000);
        let mut d = Driver::new(0x1000, 8);
        let mut q = d.queue();
        assert!(q.valid_config());
        assert_eq!(q.pop(&m).unwrap(), None);
        let h = d.add(&mut m, &[(0x4000, 16, false), (0x5000, 512, true)]);
        let c = q.pop(&m).unwrap().unwrap();
        assert_eq!(c.head, h);
        assert_eq!(c.readable_len(), 16);
        assert_eq!(c.writable_len(), 512);
        q.add_used(&mut m, c.head, 512).unwrap();
        assert_eq!(d.used_idx(&m), 1);
        assert_eq!(d.used_elem(&m, 0), (h as u32, 512));
    }

    #[test]
    fn hostile_rings() {
        let mut m = VecMemory::new(0x10000);
        let mut d = Driver::new(0x1000, 4);
        let mut q = d.queue();
        // loop: desc 0 -> 1 -> 0
        d.add(&mut m, &[(0x4000, 1, false), (0x4000, 1, false)]);
        m.write_u16(d.desc + 16 + 12, VIRTQ_DESC_F_NEXT).unwrap();
        m.write_u16(d.desc + 16 + 14, 0).unwrap();
        assert_eq!(q.pop(&m), Err(QueueError::ChainTooLong));
        // bad head
        let mut q = d.queue();
        m.write_u16(d.avail + 4, 9).unwrap();
        assert_eq!(q.pop(&m), Err(QueueError::BadHead(9)));
        // avail idx jump
        let mut q = d.queue();
        m.write_u16(d.avail + 2, 100).unwrap();
        assert!(matches!(q.pop(&m), Err(QueueError::AvailIndexJump { .. })));
        // address overflow
        let mut d = Driver::new(0x1000, 4);
        let mut q = d.queue();
        d.add(&mut m, &[(u64::MAX - 2, 16, false)]);
        assert_eq!(q.pop(&m), Err(QueueError::AddressOverflow));
        // indirect without negotiation
        let mut d = Driver::new(0x1000, 4);
        let mut q = d.queue();
        d.add(&mut m, &[(0x6000, 32, false)]);
        m.write_u16(d.desc + 12, VIRTQ_DESC_F_INDIRECT).unwrap();
        assert_eq!(q.pop(&m), Err(QueueError::BadIndirect));
        // indirect negotiated: table with 2 descriptors
        let mut q = d.queue();
        q.indirect = true;
        m.write_u64(0x6000, 0x7000).unwrap();
        m.write_u32(0x6008, 8).unwrap();
        m.write_u16(0x600c, VIRTQ_DESC_F_NEXT).unwrap();
        m.write_u16(0x600e, 1).unwrap();
        m.write_u64(0x6010, 0x8000).unwrap();
        m.write_u32(0x6018, 4).unwrap();
        m.write_u16(0x601c, VIRTQ_DESC_F_WRITE).unwrap();
        let c = q.pop(&m).unwrap().unwrap();
        assert_eq!(c.descs.len(), 2);
        // rings outside RAM
        let mut q = Queue { max_size: 4, size: 4, ready: true, desc: 0, avail: 0xffff_fff0, used: 0, ..Default::default() };
        assert!(matches!(q.pop(&m), Err(QueueError::Memory(_))));
    }
}
