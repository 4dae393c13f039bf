//! Guest-physical memory access.
//!
//! The kernel implements [`GuestMemory`] over the host frames that back the guest's RAM; tests use
//! [`VecMemory`]. Every access is bounds-checked by the implementation: an access that touches any
//! byte outside guest RAM fails with [`MemError`] and has no effect.

use alloc::vec;
use alloc::vec::Vec;

/// A guest-physical access that could not be performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// Some byte of `[gpa, gpa+len)` is not guest RAM (or the range overflows).
    OutOfRange { gpa: u64, len: u64 },
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MemError::OutOfRange { gpa, len } => {
                write!(f, "guest-physical range {gpa:#x}+{len:#x} is not RAM")
            }
        }
    }
}

/// Guest-physical memory as seen by the device model.
pub trait GuestMemory {
    /// Read `buf.len()` bytes at guest-physical `gpa`. All-or-nothing.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Write `buf` at guest-physical `gpa`. All-or-nothing.
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError>;
}

/// Little-endian helpers over any [`GuestMemory`] (also usable on `dyn GuestMemory`).
pub trait GuestMemoryExt: GuestMemory {
    fn read_u8(&self, gpa: u64) -> Result<u8, MemError> {
        let mut b = [0u8; 1];
        self.read(gpa, &mut b)?;
        Ok(b[0])
    }
    fn read_u16(&self, gpa: u64) -> Result<u16, MemError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn write_u8(&mut self, gpa: u64, v: u8) -> Result<(), MemError> {
        self.write(gpa, &[v])
    }
    fn write_u16(&mut self, gpa: u64, v: u16) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    fn write_u32(&mut self, gpa: u64, v: u32) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    fn write_u64(&mut self, gpa: u64, v: u64) -> Result<(), MemError> {
        self.write(gpa, &v.to_le_bytes())
    }
    /// Read a fixed-size array ("object") at `gpa`.
    fn read_array<const N: usize>(&self, gpa: u64) -> Result<[u8; N], MemError> {
        let mut b = [0u8; N];
        self.read(gpa, &mut b)?;
        Ok(b)
    }
    /// Fill `len` bytes at `gpa` with `byte`.
    fn fill(&mut self, gpa: u64, len: u64, byte: u8) -> Result<(), MemError> {
        let chunk = [byte; 256];
        let mut done = 0u64;
        // Validate the whole range first so the fill is all-or-nothing for in-RAM checks.
        gpa.checked_add(len).ok_or(MemError::OutOfRange { gpa, len })?;
        while done < len {
            let n = core::cmp::min(256, len - done) as usize;
            self.write(gpa + done, &chunk[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

impl<T: GuestMemory + ?Sized> GuestMemoryExt for T {}

/// `Vec<u8>`-backed guest RAM starting at guest-physical 0 (for tests and fuzzing).
#[derive(Clone)]
pub struct VecMemory {
    bytes: Vec<u8>,
}

impl VecMemory {
    /// `size` bytes of zeroed RAM at GPA 0.
    pub fn new(size: usize) -> Self {
        VecMemory { bytes: vec![0; size] }
    }
    /// RAM initialised from `bytes` (at GPA 0).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        VecMemory { bytes }
    }
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
    fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, MemError> {
        let err = MemError::OutOfRange { gpa, len: len as u64 };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() {
            return Err(err);
        }
        Ok(start..end)
    }
}

impl GuestMemory for VecMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let r = self.range(gpa, buf.len())?;
        self.bytes[r].copy_from_slice(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bounds() {
        let mut m = VecMemory::new(16);
        assert!(m.write_u64(8, 0x1122334455667788).is_ok());
        assert_eq!(m.read_u32(8).unwrap(), 0x55667788);
        assert!(m.read_u64(9).is_err());
        assert!(m.read_u8(u64::MAX).is_err());
        assert!(m.write(u64::MAX - 1, &[0; 4]).is_err());
        assert!(m.fill(0, 17, 0).is_err());
        assert!(m.fill(0, 16, 0xaa).is_ok());
        assert_eq!(m.read_u8(15).unwrap(), 0xaa);
    }
}
