//! catenary-bootinfo: one [`BootInfo`] for every way Catenary is booted.
//!
//! The kernel can be entered through three boot protocols:
//!
//! * **PVH** (QEMU `-kernel`, Xen): [`BootInfo::from_pvh`] parses the `hvm_start_info` structure
//!   whose physical address arrives in `%ebx`.
//! * **Multiboot2** (GRUB): [`BootInfo::from_multiboot2`] parses the Multiboot2 information
//!   structure (MBI) whose physical address arrives in `%ebx`.
//! * **Limine**: the kernel glue copies the `limine` crate's responses into a plain
//!   [`LimineView`] and calls [`BootInfo::from_limine`].
//!
//! All three produce the same [`BootInfo`]: a normalised physical memory map (sorted, merged, no
//! overlaps, module ranges marked [`MemoryKind::KernelAndModules`]), the kernel command line, the
//! boot modules, the ACPI RSDP address, the framebuffer and the boot loader's name.
//!
//! Boot data is never trusted: every read goes through [`PhysRead`], which may fail, all counts and
//! string lengths are bounded, address arithmetic is overflow-checked, and malformed data produces a
//! [`BootError`] instead of a panic. The crate has no `unsafe`; the kernel supplies a `PhysRead`
//! implementation over its physical-memory window (identity map at boot, direct map later).
//!
//! [`ImageStore`] parses the cpio "newc" bundle module in which guest kernels and initramfs images
//! travel.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod cpio;
mod limine;
mod mem;
mod multiboot2;
mod normalize;
mod pvh;
mod redact;
mod s5;

pub use cpio::{CpioError, ImageStore};
pub use limine::{LimineModule, LimineView, MAX_CPUS};
pub use mem::{MemImage, PhysRead};
pub use multiboot2::MULTIBOOT2_BOOTLOADER_MAGIC;
pub use pvh::PVH_MAGIC;
pub use redact::{is_secret_key, redact_secrets, REDACTED};
pub use s5::s5_sleep_types;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Size of a page / frame in bytes, used to page-align usable memory.
pub const PAGE_SIZE: u64 = 4096;
/// Longest command line / string read from boot data (bytes, without the NUL).
pub const MAX_STRING_LEN: usize = 4096;
/// Largest number of memory map entries accepted from any protocol.
pub const MAX_MEMMAP_ENTRIES: usize = 4096;
/// Largest number of boot modules accepted from any protocol.
pub const MAX_MODULES: usize = 256;
/// Largest Multiboot2 information structure accepted (bytes).
pub const MAX_MBI_SIZE: u32 = 1 << 20;

/// The protocol the kernel was booted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen/QEMU PVH entry (`hvm_start_info`).
    Pvh,
    /// Multiboot2 (GRUB).
    Multiboot2,
    /// Limine boot protocol.
    Limine,
}

/// What a physical memory range is used for.
///
/// The order of the variants is not meaningful; overlap resolution uses
/// [`MemoryKind::precedence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryKind {
    /// Free RAM the kernel may allocate.
    Usable,
    /// Reserved by firmware or hardware (includes PVH "disabled"/"pmem" and unknown types).
    Reserved,
    /// ACPI tables; reusable once the tables have been parsed.
    AcpiReclaimable,
    /// ACPI non-volatile storage; must be preserved.
    AcpiNvs,
    /// Defective RAM.
    BadMemory,
    /// Boot loader data (boot info structures, Limine responses); reusable once the boot
    /// information has been copied out.
    BootloaderReclaimable,
    /// The kernel image and the boot modules.
    KernelAndModules,
    /// Linear framebuffer memory.
    Framebuffer,
}

impl MemoryKind {
    /// Precedence when ranges of different kinds overlap: the higher value wins. `Usable` is
    /// the lowest, so any non-usable kind wins over usable memory.
    pub fn precedence(self) -> u8 {
        match self {
            MemoryKind::Usable => 0,
            MemoryKind::BootloaderReclaimable => 1,
            MemoryKind::AcpiReclaimable => 2,
            MemoryKind::Framebuffer => 3,
            MemoryKind::KernelAndModules => 4,
            MemoryKind::AcpiNvs => 5,
            MemoryKind::Reserved => 6,
            MemoryKind::BadMemory => 7,
        }
    }

    /// All kinds, in precedence order (lowest first).
    pub const ALL: [MemoryKind; 8] = [
        MemoryKind::Usable,
        MemoryKind::BootloaderReclaimable,
        MemoryKind::AcpiReclaimable,
        MemoryKind::Framebuffer,
        MemoryKind::KernelAndModules,
        MemoryKind::AcpiNvs,
        MemoryKind::Reserved,
        MemoryKind::BadMemory,
    ];
}

/// A physical memory range `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First byte (physical address).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// Exclusive end address, saturating at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// A boot module (a file the boot loader loaded next to the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Physical address of the first byte.
    pub start: u64,
    /// Size in bytes.
    pub len: u64,
    /// The module's command line (PVH, Multiboot2) or, under Limine, its command line if
    /// non-empty and otherwise its path.
    pub name: String,
}

/// A linear framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framebuffer {
    /// Physical address.
    pub addr: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per scan line.
    pub pitch: u32,
    /// Bits per pixel.
    pub bpp: u8,
}

/// Everything the kernel learns from its boot loader, independent of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The protocol used.
    pub protocol: BootProtocol,
    /// Physical memory map. After [`BootInfo::normalize`] (which every constructor calls):
    /// sorted by start, no overlaps, no zero-length entries, adjacent same-kind entries merged.
    pub memory_map: Vec<MemoryRegion>,
    /// Kernel command line (empty if none).
    pub cmdline: String,
    /// Boot modules, in boot-loader order.
    pub modules: Vec<Module>,
    /// Physical address of the ACPI RSDP, if the boot loader reported one. Under Multiboot2 this
    /// is the address of the RSDP *copy* inside the MBI (tag 15 preferred over tag 14); the MBI
    /// is marked `BootloaderReclaimable` so the copy stays intact until the kernel reclaims it.
    pub rsdp: Option<u64>,
    /// Linear framebuffer, if any.
    pub framebuffer: Option<Framebuffer>,
    /// Boot loader name (and version, if reported).
    pub bootloader: Option<String>,
    /// CPUs the boot loader already knows and can start (Limine's MP response); empty on PVH
    /// and Multiboot2, where the kernel finds CPUs in the ACPI MADT and starts them itself.
    pub cpus: Vec<BootCpu>,
}

/// A CPU reported by the boot loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCpu {
    /// ACPI processor UID.
    pub processor_id: u32,
    /// Local APIC id.
    pub lapic_id: u32,
    /// The CPU the kernel is running on.
    pub is_bsp: bool,
}

/// Why boot information could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootError {
    /// The physical range `[paddr, paddr + len)` could not be read.
    Unreadable {
        /// Start of the failed read.
        paddr: u64,
        /// Its length.
        len: u64,
    },
    /// The structure's magic number is wrong.
    BadMagic {
        /// The value found.
        found: u64,
    },
    /// A structure address is not aligned as the protocol requires.
    Unaligned {
        /// The address.
        paddr: u64,
    },
    /// An address computation (base + offset, base + length) overflowed.
    AddressOverflow,
    /// A count is larger than this crate accepts.
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The count found.
        count: u64,
    },
    /// A string has no NUL terminator within [`MAX_STRING_LEN`] bytes.
    StringTooLong {
        /// Where the string starts.
        paddr: u64,
    },
    /// The protocol provides no memory map (or an empty one).
    NoMemoryMap,
    /// The structure is internally inconsistent.
    Malformed(&'static str),
    /// The boot loader does not support the requested Limine base revision.
    UnsupportedRevision,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Unreadable { paddr, len } => {
                write!(f, "cannot read {len:#x} bytes at physical {paddr:#x}")
            }
            BootError::BadMagic { found } => write!(f, "bad magic {found:#x}"),
            BootError::Unaligned { paddr } => write!(f, "misaligned structure at {paddr:#x}"),
            BootError::AddressOverflow => f.write_str("address arithmetic overflow"),
            BootError::TooMany { what, count } => write!(f, "too many {what}: {count}"),
            BootError::StringTooLong { paddr } => {
                write!(f, "unterminated or over-long string at {paddr:#x}")
            }
            BootError::NoMemoryMap => f.write_str("boot loader provided no memory map"),
            BootError::Malformed(why) => write!(f, "malformed boot information: {why}"),
            BootError::UnsupportedRevision => f.write_str("Limine base revision not supported"),
        }
    }
}

impl BootInfo {
    /// An empty `BootInfo` for `protocol` (no memory, no modules); useful for tests and as a
    /// starting point for custom glue.
    pub fn empty(protocol: BootProtocol) -> BootInfo {
        BootInfo {
            protocol,
            memory_map: Vec::new(),
            cmdline: String::new(),
            modules: Vec::new(),
            rsdp: None,
            framebuffer: None,
            bootloader: None,
            cpus: Vec::new(),
        }
    }

    /// Page-aligned usable memory as `(start, len)` pairs: each usable region's start is rounded
    /// up and its end rounded down to [`PAGE_SIZE`]; regions left empty are skipped.
    ///
    /// Call on a normalised map (every constructor normalises) so the ranges are disjoint.
    pub fn usable_frames(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.memory_map
            .iter()
            .filter(|r| r.kind == MemoryKind::Usable)
            .filter_map(|r| {
                let start = align_up(r.start, PAGE_SIZE)?;
                let end = align_down(r.end(), PAGE_SIZE);
                (end > start).then(|| (start, end - start))
            })
    }

    /// Total bytes of page-aligned usable memory (the sum of [`BootInfo::usable_frames`]).
    pub fn total_usable(&self) -> u64 {
        self.usable_frames().map(|(_, len)| len).sum()
    }

    /// Marks the parts of `[start, start + len)` that are currently `Usable` as `kind`, leaving
    /// other kinds untouched, and re-normalises the map. Used for the kernel image
    /// (`KernelAndModules`), boot structures, and anything the kernel must not hand out.
    /// A range running past the end of the address space is clamped to `u64::MAX`.
    pub fn reserve(&mut self, start: u64, len: u64, kind: MemoryKind) {
        normalize::reserve(&mut self.memory_map, start, len, kind);
    }

    /// Normalises the memory map: drops empty regions, resolves overlaps (the kind with the
    /// higher [`MemoryKind::precedence`] wins, so non-usable kinds always win over usable),
    /// sorts by address, merges adjacent regions of the same kind, and marks every boot
    /// module's range as [`MemoryKind::KernelAndModules`] (carved out of usable memory only).
    /// Idempotent.
    pub fn normalize(&mut self) {
        normalize::normalize(&mut self.memory_map);
        for i in 0..self.modules.len() {
            let (s, l) = (self.modules[i].start, self.modules[i].len);
            normalize::reserve(&mut self.memory_map, s, l, MemoryKind::KernelAndModules);
        }
    }
}

/// `value` rounded up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// `value` rounded down to a multiple of `align` (a power of two).
pub(crate) fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// `base + off`, or [`BootError::AddressOverflow`].
pub(crate) fn add(base: u64, off: u64) -> Result<u64, BootError> {
    base.checked_add(off).ok_or(BootError::AddressOverflow)
}
