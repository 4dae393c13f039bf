//! Admission control: a workload is admitted only if its memory fits in what the node has
//! left for workloads; the memory stays committed to it until it is destroyed, so a workload
//! that was admitted can always be (re)started.
//!
//! Guest RAM is populated on first touch, so the node's free memory at any moment says little
//! about what its microVMs will take: admission counts what each one *may* take (its guest
//! memory plus [`VM_OVERHEAD_MIB`] for the node's side of it) against a capacity fixed when the
//! service starts (the node's free memory then, less [`NODE_RESERVE_MIB`]).

use crate::Error;

/// Host memory per microVM beyond its guest RAM, rounded up: vCPU structures and nested page
/// tables, the device model, console and channel rings, the initrd copy while it loads.
pub const VM_OVERHEAD_MIB: u64 = 4;
/// Memory the node keeps for itself (heap growth, tasks, network buffers).
pub const NODE_RESERVE_MIB: u64 = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    capacity_mib: u64,
    committed_mib: u64,
}

impl Admission {
    /// Capacity for workloads out of `free_bytes` of free node memory.
    pub fn new(free_bytes: u64) -> Admission {
        Admission { capacity_mib: (free_bytes >> 20).saturating_sub(NODE_RESERVE_MIB), committed_mib: 0 }
    }
    /// What a workload with `memory_mib` of guest memory commits.
    pub fn need_mib(memory_mib: u32) -> u64 {
        memory_mib as u64 + VM_OVERHEAD_MIB
    }
    pub fn free_mib(&self) -> u64 {
        self.capacity_mib.saturating_sub(self.committed_mib)
    }
    pub fn capacity_mib(&self) -> u64 {
        self.capacity_mib
    }
    pub fn committed_mib(&self) -> u64 {
        self.committed_mib
    }
    /// Commit memory for a workload, or refuse with what it needs and what is free.
    pub fn admit(&mut self, memory_mib: u32) -> Result<(), Error> {
        let need = Self::need_mib(memory_mib);
        if need > self.free_mib() {
            return Err(Error::NoMemory { need_mib: need, free_mib: self.free_mib() });
        }
        self.committed_mib += need;
        Ok(())
    }
    /// A destroyed workload's memory goes back.
    pub fn release(&mut self, memory_mib: u32) {
        self.committed_mib = self.committed_mib.saturating_sub(Self::need_mib(memory_mib));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_or_refused_with_figures() {
        let mut a = Admission::new(1024 << 20);
        assert_eq!(a.capacity_mib(), 960);
        for _ in 0..14 {
            a.admit(64).unwrap();
        }
        assert_eq!(a.free_mib(), 960 - 14 * 68);
        assert_eq!(a.admit(64), Err(Error::NoMemory { need_mib: 68, free_mib: 8 }));
        assert_eq!(a.free_mib(), 8, "a refusal commits nothing");
        a.release(64);
        a.admit(64).unwrap();
        assert_eq!(Admission::new(10 << 20).admit(32), Err(Error::NoMemory { need_mib: 36, free_mib: 0 }));
        let mut z = Admission::new(0);
        z.release(100);
        assert_eq!(z.free_mib(), 0);
    }
}
