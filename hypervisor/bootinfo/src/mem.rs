//! Access to physical memory: the [`PhysRead`] trait and a `Vec`-backed implementation.

use crate::{add, BootError, MAX_STRING_LEN};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Reads bytes of physical memory. The kernel implements it over its identity/direct map (with
/// whatever bounds it knows); tests use [`MemImage`].
///
/// Implementations must either fill all of `buf` from `[paddr, paddr + buf.len())` or return an
/// error (typically [`BootError::Unreadable`]); they must not panic on any address.
pub trait PhysRead {
    /// Copies `buf.len()` bytes starting at physical address `paddr` into `buf`.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError>;
}

impl<T: PhysRead + ?Sized> PhysRead for &T {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        (**self).read(paddr, buf)
    }
}

/// A window of "physical memory" backed by a `Vec<u8>`, starting at physical address `base`.
/// Reads outside the window fail with [`BootError::Unreadable`]. Used by host tests and by
/// anyone who has copied boot data into a buffer.
#[derive(Debug, Clone, Default)]
pub struct MemImage {
    /// Physical address of `bytes[0]`.
    pub base: u64,
    /// The contents.
    pub bytes: Vec<u8>,
}

impl MemImage {
    /// A zero-filled window of `size` bytes at `base`.
    pub fn new(base: u64, size: usize) -> MemImage {
        MemImage {
            base,
            bytes: vec![0; size],
        }
    }

    /// Copies `data` to physical address `paddr`, growing the window if needed.
    ///
    /// # Panics
    /// If `paddr` is below `base` (test helper; boot parsing never calls it).
    pub fn write(&mut self, paddr: u64, data: &[u8]) {
        let off = usize::try_from(paddr - self.base).expect("offset fits usize");
        if self.bytes.len() < off + data.len() {
            self.bytes.resize(off + data.len(), 0);
        }
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }

    /// Writes a little-endian `u32` at `paddr` (test helper).
    pub fn write_u32(&mut self, paddr: u64, v: u32) {
        self.write(paddr, &v.to_le_bytes());
    }

    /// Writes a little-endian `u64` at `paddr` (test helper).
    pub fn write_u64(&mut self, paddr: u64, v: u64) {
        self.write(paddr, &v.to_le_bytes());
    }
}

impl PhysRead for MemImage {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        let err = BootError::Unreadable {
            paddr,
            len: buf.len() as u64,
        };
        let off = paddr.checked_sub(self.base).ok_or(err.clone())?;
        let off = usize::try_from(off).map_err(|_| err.clone())?;
        let end = off.checked_add(buf.len()).ok_or(err.clone())?;
        let src = self.bytes.get(off..end).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

pub(crate) fn read_u32(mem: &impl PhysRead, paddr: u64) -> Result<u32, BootError> {
    let mut b = [0u8; 4];
    mem.read(paddr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads `len` bytes at `paddr` into a new buffer, refusing lengths above `max`.
pub(crate) fn read_vec(
    mem: &impl PhysRead,
    paddr: u64,
    len: u64,
    max: u64,
) -> Result<Vec<u8>, BootError> {
    if len > max {
        return Err(BootError::TooMany {
            what: "bytes",
            count: len,
        });
    }
    add(paddr, len)?;
    let mut v = vec![0u8; len as usize];
    mem.read(paddr, &mut v)?;
    Ok(v)
}

/// Reads a NUL-terminated string at `paddr` (at most [`MAX_STRING_LEN`] bytes before the NUL),
/// converting invalid UTF-8 lossily. Reads in small chunks, falling back to single bytes near
/// the end of readable memory.
pub(crate) fn read_cstr(mem: &impl PhysRead, paddr: u64) -> Result<String, BootError> {
    const CHUNK: usize = 64;
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = [0u8; CHUNK];
    while out.len() <= MAX_STRING_LEN {
        let at = add(paddr, out.len() as u64)?;
        let n = if mem.read(at, &mut chunk).is_ok() {
            CHUNK
        } else {
            // Near the end of readable memory: read the single byte (error if unreadable).
            mem.read(at, &mut chunk[..1])?;
            1
        };
        if let Some(nul) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            if out.len() > MAX_STRING_LEN {
                break;
            }
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Err(BootError::StringTooLong { paddr })
}

/// Decodes bytes up to the first NUL (or the end) as a lossy UTF-8 string.
pub(crate) fn bytes_to_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Little-endian `u32` at `off` in `b` (caller has bounds-checked).
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Little-endian `u64` at `off` in `b` (caller has bounds-checked).
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
