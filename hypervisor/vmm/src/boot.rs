//! Guest boot loaders: PVH (ELF vmlinux with a Xen PVH note) and the Linux 64-bit boot
//! protocol (bzImage). Both parse untrusted images with checked arithmetic and return
//! [`BootError`] on anything malformed.
//!
//! Guest-physical layout (see [`layout`]):
//! ```text
//! 0x0000_0500  boot GDT (null, null, code 0x10, data 0x18, tss 0x20)
//! 0x0000_6000  hvm_start_info (PVH) / 0x6100 module list / 0x6200 memory map
//! 0x0000_7000  boot_params "zero page" (bzImage)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000-0xefff PDs: identity map of 0-4 GiB, 2 MiB pages
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00 - 0x0010_0000  reserved in the E820 map (EBDA/VGA/BIOS hole, still backed)
//! 0x0010_0000  kernel (bzImage protected-mode part, or ELF PT_LOAD segments at p_paddr)
//! top of RAM   initrd (page aligned, below 4 GiB / initrd_addr_max)
//! 0xd000_0000  virtio-mmio windows (0x200 bytes each, 0x1000 apart) — RAM must end below
//! ```

use crate::cpu::*;
use crate::mem::{GuestMemory, GuestMemoryExt, MemError};
use alloc::vec::Vec;

/// The Linux command line every Catenary microVM starts from, before the node's own words
/// (`catenary.*`, `rdinit=`) and [`crate::MicroVm::kernel_cmdline_extras`]. `cargo xtask bench`
/// boots its direct-QEMU references with the same words. The console is the first virtio
/// console (`hvc0`): the boot log then costs one exit per 16-byte hvc chunk instead of two
/// UART exits per byte (docs/vmm.md "Where exits go"). `io_delay=none`: Linux's `outb_p`
/// (the PIT's reprogramming on every tickless timer tick, the 8259's setup) otherwise writes
/// port 0x80 after each access to give ISA hardware time, one more exit each; no device model
/// here needs that time.
pub const LINUX_CMDLINE: &str = "console=hvc0 panic=-1 reboot=k tsc=reliable io_delay=none";

/// The same with the console on the 16550 (`vm.console=ttyS0`): for a guest that attacks its
/// own virtio devices (a reset virtio console goes silent) or a kernel that dies before its
/// virtio console is probed (the UART shows the log up to that point).
pub const LINUX_CMDLINE_SERIAL: &str = "console=ttyS0 panic=-1 reboot=k tsc=reliable io_delay=none";

pub mod layout {
    pub const GDT: u64 = 0x500;
    pub const START_INFO: u64 = 0x6000;
    pub const MODLIST: u64 = 0x6100;
    pub const MEMMAP: u64 = 0x6200;
    pub const ZERO_PAGE: u64 = 0x7000;
    pub const PML4: u64 = 0x9000;
    pub const PDPT: u64 = 0xa000;
    pub const PD: u64 = 0xb000;
    /// Initial stack pointer handed to both entry paths (neither protocol requires one, but a
    /// valid RSP makes an early push harmless): 0x8000-0x8fff is free.
    pub const BOOT_STACK_TOP: u64 = 0x8ff0;
    pub const CMDLINE: u64 = 0x2_0000;
    pub const CMDLINE_MAX: u64 = 0x1_0000;
    pub const EBDA_START: u64 = 0x9_fc00;
    pub const HIGH_MEM: u64 = 0x10_0000;
    pub const KERNEL_LOAD: u64 = 0x10_0000;
    pub const MMIO_BASE: u64 = 0xd000_0000;
    pub const MMIO_STRIDE: u64 = 0x1000;
    /// Largest supported RAM size (RAM is one block below the MMIO hole).
    pub const MAX_RAM: u64 = MMIO_BASE;
    pub const CODE_SEL: u16 = 0x10;
    pub const DATA_SEL: u16 = 0x18;
    pub const TSS_SEL: u16 = 0x20;
}

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub typ: u32,
}

/// The guest's memory map for `ram_size` bytes of RAM at GPA 0.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let mut v = Vec::new();
    v.push(E820Entry { addr: 0, size: layout::EBDA_START, typ: E820_RAM });
    v.push(E820Entry { addr: layout::EBDA_START, size: layout::HIGH_MEM - layout::EBDA_START, typ: E820_RESERVED });
    if ram_size > layout::HIGH_MEM {
        v.push(E820Entry { addr: layout::HIGH_MEM, size: ram_size - layout::HIGH_MEM, typ: E820_RAM });
    }
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootError {
    /// RAM smaller than 2 MiB or larger than [`layout::MAX_RAM`].
    BadRamSize,
    NotElf,
    NotElf64X86,
    BadProgramHeaders,
    /// A segment does not fit in RAM / overlaps boot structures / exceeds the file.
    SegmentOutOfRange,
    /// No XEN_ELFNOTE_PHYS32_ENTRY note.
    NoPvhNote,
    NotBzImage,
    /// Boot protocol older than 2.12 or no XLF_KERNEL_64.
    UnsupportedProtocol { version: u16 },
    KernelTooBig,
    CmdlineTooLong,
    InitrdTooBig,
    Memory(MemError),
}

impl From<MemError> for BootError {
    fn from(e: MemError) -> Self {
        BootError::Memory(e)
    }
}

/// Result of loading a guest: the initial vCPU state (all registers, segments, descriptor
/// tables) plus where things went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSetup {
    pub cpu: VcpuState,
    pub entry: u64,
    pub kernel_start: u64,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
    pub cmdline_addr: u64,
    pub e820: Vec<E820Entry>,
}

fn rd16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o.checked_add(2)?)?.try_into().ok()?))
}
fn rd32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?))
}
fn rd64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

fn check_ram(ram_size: u64) -> Result<(), BootError> {
    if !(0x20_0000..=layout::MAX_RAM).contains(&ram_size) {
        return Err(BootError::BadRamSize);
    }
    Ok(())
}

fn write_gdt(mem: &mut dyn GuestMemory, long: bool) -> Result<DescTable, BootError> {
    let code = Segment::flat(layout::CODE_SEL, 0xb, !long, long);
    let data = Segment::flat(layout::DATA_SEL, 0x3, true, false);
    let gdt = [0u64, 0, code.gdt_descriptor(), data.gdt_descriptor(), tss().gdt_descriptor(), 0];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(layout::GDT + i as u64 * 8, *d)?;
    }
    Ok(DescTable { base: layout::GDT, limit: (gdt.len() * 8 - 1) as u16 })
}

fn tss() -> Segment {
    // Busy 32/64-bit TSS (type 11), present, system segment.
    Segment { selector: layout::TSS_SEL, base: 0, limit: 0x67, attr: 0xb | Segment::ATTR_P }
}

fn write_cmdline(mem: &mut dyn GuestMemory, cmdline: &[u8], max: u64) -> Result<u64, BootError> {
    let len = cmdline.len() as u64;
    if len >= max.min(layout::CMDLINE_MAX) || cmdline.contains(&0) {
        return Err(BootError::CmdlineTooLong);
    }
    mem.write(layout::CMDLINE, cmdline)?;
    mem.write_u8(layout::CMDLINE + len, 0)?;
    Ok(layout::CMDLINE)
}

/// An initrd as the guest sees it, contiguous in guest memory: `head` (e.g. the node's one
/// copy of the initramfs, shared by every microVM), then, when `tail` is not empty, zero
/// padding to a 4-byte boundary and `tail` (a second cpio archive: Linux unpacks concatenated
/// archives, each starting 4-byte aligned). The loader writes both pieces straight into guest
/// RAM, so no joined copy is made on the node's heap (docs/images.md "beyond guest RAM").
#[derive(Debug, Clone, Copy)]
pub struct Initrd<'a> {
    pub head: &'a [u8],
    pub tail: &'a [u8],
}

impl<'a> Initrd<'a> {
    /// One piece.
    pub fn whole(bytes: &'a [u8]) -> Self {
        Initrd { head: bytes, tail: &[] }
    }

    /// Where `tail` starts, from the initrd's start.
    pub fn tail_offset(&self) -> u64 {
        let h = self.head.len() as u64;
        if self.tail.is_empty() { h } else { h.next_multiple_of(4) }
    }

    /// The initrd's size in guest memory.
    pub fn len(&self) -> u64 {
        self.tail_offset() + self.tail.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Place the initrd page-aligned as high as possible below `limit`, above `floor`.
fn place_initrd(mem: &mut dyn GuestMemory, initrd: Initrd, floor: u64, limit: u64) -> Result<(u64, u64), BootError> {
    let size = initrd.len();
    let start = limit.checked_sub(size).ok_or(BootError::InitrdTooBig)? & !0xfff;
    if start < floor {
        return Err(BootError::InitrdTooBig);
    }
    mem.write(start, initrd.head)?;
    let head_end = start + initrd.head.len() as u64;
    let tail_at = start + initrd.tail_offset();
    mem.fill(head_end, tail_at - head_end, 0)?;
    mem.write(tail_at, initrd.tail)?;
    Ok((start, size))
}

fn flat_segments(cpu: &mut VcpuState, long: bool) {
    cpu.cs = Segment::flat(layout::CODE_SEL, 0xb, !long, long);
    let data = Segment::flat(layout::DATA_SEL, 0x3, true, false);
    cpu.ds = data;
    cpu.es = data;
    cpu.fs = data;
    cpu.gs = data;
    cpu.ss = data;
    cpu.tr = tss();
    cpu.ldtr = Segment::default();
    cpu.idtr = DescTable { base: 0, limit: 0 };
    cpu.rflags = RFLAGS_FIXED;
    cpu.cpl = 0;
    cpu.rsp = layout::BOOT_STACK_TOP;
}

pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// Find the PVH entry in the ELF's PT_NOTE segments.
fn pvh_entry(elf: &[u8], phoff: usize, phnum: usize) -> Result<u64, BootError> {
    for i in 0..phnum {
        let ph = phoff.checked_add(i * 56).ok_or(BootError::BadProgramHeaders)?;
        if rd32(elf, ph) != Some(4) {
            continue;
        }
        let off = rd64(elf, ph + 8).ok_or(BootError::BadProgramHeaders)?;
        let filesz = rd64(elf, ph + 32).ok_or(BootError::BadProgramHeaders)?;
        let end = off.checked_add(filesz).ok_or(BootError::BadProgramHeaders)?;
        if end > elf.len() as u64 {
            return Err(BootError::BadProgramHeaders);
        }
        let notes = &elf[off as usize..end as usize];
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz = rd32(notes, p).unwrap_or(0) as usize;
            let descsz = rd32(notes, p + 4).unwrap_or(0) as usize;
            let typ = rd32(notes, p + 8).unwrap_or(0);
            let name_off = p + 12;
            let Some(desc_off) = namesz.checked_add(3).map(|n| name_off + (n & !3)) else { break };
            let Some(next) = descsz.checked_add(3).and_then(|d| desc_off.checked_add(d & !3)) else { break };
            if next > notes.len() || desc_off.checked_add(descsz).is_none_or(|e| e > notes.len()) {
                break;
            }
            let name = &notes[name_off..name_off + namesz];
            if typ == XEN_ELFNOTE_PHYS32_ENTRY && (name == b"Xen\0" || name == b"Xen") {
                let entry = match descsz {
                    4 => rd32(notes, desc_off).map(|v| v as u64),
                    8 => rd64(notes, desc_off),
                    _ => None,
                };
                return match entry {
                    Some(e) if e < 0x1_0000_0000 => Ok(e),
                    _ => Err(BootError::NoPvhNote),
                };
            }
            p = next;
        }
    }
    Err(BootError::NoPvhNote)
}

/// Load an ELF64 vmlinux with a PVH note and build `hvm_start_info` (version 1) with the
/// command line, the initrd as module 0 and the E820 map. Returns the PVH entry state:
/// 32-bit protected mode, paging off, flat CS/DS, EBX = start_info.
pub fn load_pvh(
    mem: &mut dyn GuestMemory,
    elf: &[u8],
    initrd: Option<Initrd>,
    cmdline: &[u8],
    ram_size: u64,
) -> Result<BootSetup, BootError> {
    check_ram(ram_size)?;
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err(BootError::NotElf);
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) || rd16(elf, 18) != Some(62) {
        return Err(BootError::NotElf64X86);
    }
    let phoff = rd64(elf, 32).ok_or(BootError::BadProgramHeaders)?;
    let phentsize = rd16(elf, 54).ok_or(BootError::BadProgramHeaders)?;
    let phnum = rd16(elf, 56).ok_or(BootError::BadProgramHeaders)? as usize;
    if phentsize != 56 || phnum == 0 || phnum > 128 {
        return Err(BootError::BadProgramHeaders);
    }
    let ph_end = phoff.checked_add(56 * phnum as u64).ok_or(BootError::BadProgramHeaders)?;
    if ph_end > elf.len() as u64 {
        return Err(BootError::BadProgramHeaders);
    }
    let phoff = phoff as usize;
    let entry = pvh_entry(elf, phoff, phnum)?;
    // Reserve room at the top for the initrd.
    let initrd_len = initrd.map(|i| i.len()).unwrap_or(0);
    let mut kstart = u64::MAX;
    let mut kend = 0u64;
    for i in 0..phnum {
        let ph = phoff + i * 56;
        if rd32(elf, ph) != Some(1) {
            continue;
        }
        let bad = BootError::SegmentOutOfRange;
        let off = rd64(elf, ph + 8).ok_or(bad.clone())?;
        let paddr = rd64(elf, ph + 24).ok_or(bad.clone())?;
        let filesz = rd64(elf, ph + 32).ok_or(bad.clone())?;
        let memsz = rd64(elf, ph + 40).ok_or(bad.clone())?;
        let fend = off.checked_add(filesz).ok_or(bad.clone())?;
        let mend = paddr.checked_add(memsz).ok_or(bad.clone())?;
        if filesz > memsz || fend > elf.len() as u64 || paddr < layout::HIGH_MEM || mend > ram_size {
            return Err(bad);
        }
        mem.write(paddr, &elf[off as usize..fend as usize])?;
        mem.fill(paddr + filesz, memsz - filesz, 0)?;
        kstart = kstart.min(paddr);
        kend = kend.max(mend);
    }
    if kend == 0 {
        return Err(BootError::SegmentOutOfRange);
    }
    if entry < kstart || entry >= kend {
        return Err(BootError::SegmentOutOfRange);
    }
    if kend.checked_add(initrd_len).is_none_or(|e| e > ram_size) {
        return Err(BootError::KernelTooBig);
    }
    let gdtr = write_gdt(mem, false)?;
    let cmd = write_cmdline(mem, cmdline, layout::CMDLINE_MAX)?;
    let initrd_pl = match initrd {
        Some(i) => Some(place_initrd(mem, i, kend, ram_size)?),
        None => None,
    };
    let e820 = e820_map(ram_size);
    // hvm_start_info
    let si = layout::START_INFO;
    mem.fill(si, 0x300, 0)?;
    mem.write_u32(si, HVM_START_MAGIC)?;
    mem.write_u32(si + 4, 1)?;
    mem.write_u32(si + 8, 0)?;
    mem.write_u32(si + 12, initrd_pl.is_some() as u32)?;
    mem.write_u64(si + 16, if initrd_pl.is_some() { layout::MODLIST } else { 0 })?;
    mem.write_u64(si + 24, cmd)?;
    mem.write_u64(si + 32, 0)?; // rsdp: none
    mem.write_u64(si + 40, layout::MEMMAP)?;
    mem.write_u32(si + 48, e820.len() as u32)?;
    if let Some((a, s)) = initrd_pl {
        mem.write_u64(layout::MODLIST, a)?;
        mem.write_u64(layout::MODLIST + 8, s)?;
    }
    for (i, e) in e820.iter().enumerate() {
        let at = layout::MEMMAP + i as u64 * 24;
        mem.write_u64(at, e.addr)?;
        mem.write_u64(at + 8, e.size)?;
        mem.write_u32(at + 16, e.typ)?;
        mem.write_u32(at + 20, 0)?;
    }
    let mut cpu = VcpuState::new();
    flat_segments(&mut cpu, false);
    cpu.gdtr = gdtr;
    cpu.cr0 = CR0_PE | CR0_ET;
    cpu.cr4 = 0;
    cpu.efer = 0;
    cpu.rip = entry;
    cpu.rbx = si;
    Ok(BootSetup { cpu, entry, kernel_start: kstart, kernel_end: kend, initrd: initrd_pl, cmdline_addr: cmd, e820 })
}

// Setup header offsets (in the file and in boot_params).
const HDR_SETUP_SECTS: usize = 0x1f1;
const HDR_BOOT_FLAG: usize = 0x1fe;
const HDR_JUMP: usize = 0x200;
const HDR_MAGIC: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const HDR_TYPE_OF_LOADER: usize = 0x210;
const HDR_LOADFLAGS: usize = 0x211;
const HDR_RAMDISK_IMAGE: usize = 0x218;
const HDR_RAMDISK_SIZE: usize = 0x21c;
const HDR_HEAP_END: usize = 0x224;
const HDR_CMD_LINE_PTR: usize = 0x228;
const HDR_INITRD_ADDR_MAX: usize = 0x22c;
const HDR_KERNEL_ALIGNMENT: usize = 0x230;
const HDR_RELOCATABLE: usize = 0x234;
const HDR_XLOADFLAGS: usize = 0x236;
const HDR_CMDLINE_SIZE: usize = 0x238;
const HDR_PREF_ADDRESS: usize = 0x258;
const HDR_INIT_SIZE: usize = 0x260;
const BP_VID_MODE: usize = 0x1fa;
const BP_E820_ENTRIES: usize = 0x1e8;
const BP_E820_TABLE: usize = 0x2d0;
pub const XLF_KERNEL_64: u16 = 1;

/// Load a bzImage with the Linux 64-bit boot protocol (>= 2.12, XLF_KERNEL_64). Builds the
/// boot_params zero page (E820, command line, initrd), an identity map of 0–4 GiB with 2 MiB
/// pages and a boot GDT; returns the 64-bit entry state (RIP = load + 0x200, RSI = boot_params).
pub fn load_bzimage(
    mem: &mut dyn GuestMemory,
    image: &[u8],
    initrd: Option<Initrd>,
    cmdline: &[u8],
    ram_size: u64,
) -> Result<BootSetup, BootError> {
    check_ram(ram_size)?;
    if rd16(image, HDR_BOOT_FLAG) != Some(0xaa55) || rd32(image, HDR_MAGIC) != Some(0x5372_6448) {
        return Err(BootError::NotBzImage);
    }
    let version = rd16(image, HDR_VERSION).ok_or(BootError::NotBzImage)?;
    let xlf = rd16(image, HDR_XLOADFLAGS).unwrap_or(0);
    if version < 0x020c || xlf & XLF_KERNEL_64 == 0 {
        return Err(BootError::UnsupportedProtocol { version });
    }
    let loadflags = image.get(HDR_LOADFLAGS).copied().unwrap_or(0);
    if loadflags & 1 == 0 {
        return Err(BootError::UnsupportedProtocol { version });
    }
    let mut setup_sects = image.get(HDR_SETUP_SECTS).copied().unwrap_or(0) as usize;
    if setup_sects == 0 {
        setup_sects = 4;
    }
    let setup_size = (setup_sects + 1) * 512;
    let kernel = image.get(setup_size..).ok_or(BootError::NotBzImage)?;
    if kernel.is_empty() {
        return Err(BootError::NotBzImage);
    }
    let init_size = rd32(image, HDR_INIT_SIZE).unwrap_or(0) as u64;
    let kspan = init_size.max(kernel.len() as u64);
    let relocatable = image.get(HDR_RELOCATABLE).copied().unwrap_or(0) != 0;
    let pref = rd64(image, HDR_PREF_ADDRESS).unwrap_or(0);
    let align = rd32(image, HDR_KERNEL_ALIGNMENT).unwrap_or(0) as u64;
    let initrd_len = initrd.map(|i| i.len()).unwrap_or(0);
    let fits = |at: u64| at.checked_add(kspan).and_then(|e| e.checked_add(initrd_len)).is_some_and(|e| e <= ram_size);
    let load = if relocatable
        && pref >= layout::HIGH_MEM
        && (align == 0 || (align.is_power_of_two() && pref.is_multiple_of(align)))
        && fits(pref)
    {
        pref
    } else {
        layout::KERNEL_LOAD
    };
    if !fits(load) {
        return Err(BootError::KernelTooBig);
    }
    mem.write(load, kernel)?;
    let kend = load + kspan;

    // Zero page: copy the setup header as the protocol says (0x1f1 .. 0x202 + byte at 0x201).
    let zp = layout::ZERO_PAGE;
    mem.fill(zp, 0x1000, 0)?;
    let hdr_end = (0x202 + image.get(0x201).copied().unwrap_or(0) as usize).min(0x1000).min(image.len());
    if let Some(hdr) = image.get(HDR_SETUP_SECTS..hdr_end) {
        mem.write(zp + HDR_SETUP_SECTS as u64, hdr)?;
    }
    let cmdline_size = if version >= 0x0206 { rd32(image, HDR_CMDLINE_SIZE).unwrap_or(255) as u64 + 1 } else { 256 };
    let cmd = write_cmdline(mem, cmdline, cmdline_size)?;
    let initrd_max = rd32(image, HDR_INITRD_ADDR_MAX).unwrap_or(0x37ff_ffff) as u64 + 1;
    // A relocatable kernel loaded low still decompresses to [pref_address, +init_size): keep
    // the initrd clear of that range too.
    let floor = if relocatable && pref >= layout::HIGH_MEM && pref < ram_size {
        kend.max(pref.saturating_add(kspan))
    } else {
        kend
    };
    let initrd_pl = match initrd {
        Some(i) => Some(place_initrd(mem, i, floor, ram_size.min(initrd_max))?),
        None => None,
    };
    mem.write_u16(zp + BP_VID_MODE as u64, 0xffff)?;
    mem.write_u8(zp + HDR_TYPE_OF_LOADER as u64, 0xff)?;
    mem.write_u8(zp + HDR_LOADFLAGS as u64, loadflags | 0x80)?; // CAN_USE_HEAP
    mem.write_u16(zp + HDR_HEAP_END as u64, 0xfe00)?;
    mem.write_u32(zp + HDR_CMD_LINE_PTR as u64, cmd as u32)?;
    if let Some((a, s)) = initrd_pl {
        mem.write_u32(zp + HDR_RAMDISK_IMAGE as u64, a as u32)?;
        mem.write_u32(zp + HDR_RAMDISK_SIZE as u64, s as u32)?;
    }
    let _ = HDR_JUMP;
    let e820 = e820_map(ram_size);
    mem.write_u8(zp + BP_E820_ENTRIES as u64, e820.len() as u8)?;
    for (i, e) in e820.iter().enumerate() {
        let at = zp + BP_E820_TABLE as u64 + i as u64 * 20;
        mem.write_u64(at, e.addr)?;
        mem.write_u64(at + 8, e.size)?;
        mem.write_u32(at + 16, e.typ)?;
    }
    // Identity page tables for 0-4 GiB.
    mem.fill(layout::PML4, 0x6000, 0)?;
    mem.write_u64(layout::PML4, layout::PDPT | 3)?;
    for i in 0..4u64 {
        mem.write_u64(layout::PDPT + i * 8, (layout::PD + i * 0x1000) | 3)?;
        for j in 0..512u64 {
            let addr = (i << 30) | (j << 21);
            mem.write_u64(layout::PD + i * 0x1000 + j * 8, addr | 0x83)?;
        }
    }
    let gdtr = write_gdt(mem, true)?;
    let mut cpu = VcpuState::new();
    flat_segments(&mut cpu, true);
    cpu.gdtr = gdtr;
    cpu.cr0 = CR0_PE | CR0_PG | CR0_ET;
    cpu.cr3 = layout::PML4;
    cpu.cr4 = CR4_PAE;
    cpu.efer = EFER_LME | EFER_LMA;
    cpu.rip = load + 0x200;
    cpu.rsi = zp;
    Ok(BootSetup { cpu, entry: load + 0x200, kernel_start: load, kernel_end: kend, initrd: initrd_pl, cmdline_addr: cmd, e820 })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mem::VecMemory;
    use crate::paging::{translate, Access};
    use alloc::vec;

    pub use crate::fuzzing::{synthetic_bzimage, synthetic_pvh_elf};

    #[test]
    fn pvh() {
        let mut m = VecMemory::new(64 << 20);
        let elf = synthetic_pvh_elf(0x100010, &[0x90; 64]);
        let initrd = vec![0x5au8; 10000];
        let b = load_pvh(&mut m, &elf, Some(Initrd::whole(&initrd)), b"console=ttyS0", 64 << 20).unwrap();
        assert_eq!(b.cpu.rip, 0x100010);
        assert_eq!(b.cpu.rbx, layout::START_INFO);
        assert_eq!(b.cpu.mode(), CpuMode::Protected32);
        assert!(!b.cpu.paging());
        assert_eq!(m.read_u32(0x6000).unwrap(), HVM_START_MAGIC);
        assert_eq!(m.read_u32(0x6004).unwrap(), 1);
        assert_eq!(m.read_u32(0x600c).unwrap(), 1);
        let cmd = m.read_u64(0x6018).unwrap();
        assert_eq!(&m.as_slice()[cmd as usize..cmd as usize + 14], b"console=ttyS0\0");
        let (ia, is) = b.initrd.unwrap();
        assert_eq!(m.read_u64(0x6100).unwrap(), ia);
        assert_eq!(m.read_u64(0x6108).unwrap(), is);
        assert_eq!(ia % 4096, 0);
        assert!(ia + is <= 64 << 20);
        assert_eq!(m.read_u32(0x6030).unwrap(), 3);
        assert_eq!(m.read_u64(0x6200 + 48 + 8).unwrap(), (64 << 20) - 0x100000);
        assert_eq!(&m.as_slice()[0x100000..0x100040], &[0x90; 64]);
        // the GDT descriptor matches the CS given to the backend
        assert_eq!(m.read_u64(0x500 + 0x10).unwrap(), 0x00cf_9b00_0000_ffff);
        assert_eq!(m.read_u64(0x500 + 0x18).unwrap(), 0x00cf_9300_0000_ffff);
    }

    /// The shared initramfs and the per-VM config cpio, written as two pieces, are in guest
    /// memory byte for byte the joined initrd (`workload_initrd`): the tail 4-byte aligned, the
    /// padding zeroed over whatever the RAM held, and the tail counted against the RAM.
    #[test]
    fn initrd_pieces_land_as_one_archive() {
        let base = [0x1fu8, 0x8b, 8, 0, 0, 0, 0]; // 7 bytes: the tail starts at 8
        let tail = crate::workload::workload_initrd_tail(b"{\"x\":1}", b"{\"version\":1}").unwrap();
        let joined = crate::workload::workload_initrd(&base, b"{\"x\":1}", b"{\"version\":1}").unwrap();
        let rd = Initrd { head: &base, tail: &tail };
        assert_eq!(rd.len(), joined.len() as u64);
        let elf = synthetic_pvh_elf(0x100010, &[0x90; 64]);
        let img = synthetic_bzimage(0x020f, 3, 4096);
        for pvh in [true, false] {
            let mut m = VecMemory::new(64 << 20);
            m.fill(0, 64 << 20, 0xee).unwrap();
            let b = if pvh { load_pvh(&mut m, &elf, Some(rd), b"", 64 << 20) } else { load_bzimage(&mut m, &img, Some(rd), b"", 64 << 20) };
            let (ia, is) = b.unwrap().initrd.unwrap();
            assert_eq!(is, joined.len() as u64);
            assert_eq!(&m.as_slice()[ia as usize..(ia + is) as usize], &joined[..]);
        }
        // the tail is bounded with the rest: a head that fits alone, plus a tail that does not
        let mut m = VecMemory::new(8 << 20);
        let head = vec![0u8; (7 << 20) - 0x2000];
        load_pvh(&mut m, &elf, Some(Initrd::whole(&head)), b"", 8 << 20).unwrap();
        let over = vec![0u8; 0x2000];
        assert!(load_pvh(&mut m, &elf, Some(Initrd { head: &head, tail: &over }), b"", 8 << 20).is_err());
    }

    #[test]
    fn pvh_rejects() {
        let mut m = VecMemory::new(8 << 20);
        let elf = synthetic_pvh_elf(0x100010, &[0x90; 64]);
        assert_eq!(load_pvh(&mut m, &elf[..10], None, b"", 8 << 20), Err(BootError::NotElf64X86));
        let mut bad = elf.clone();
        bad[0x100 + 8] = 17; // note type
        assert_eq!(load_pvh(&mut m, &bad, None, b"", 8 << 20), Err(BootError::NoPvhNote));
        let mut bad = elf.clone();
        bad[64 + 24 + 3] = 0x7f; // paddr huge
        assert_eq!(load_pvh(&mut m, &bad, None, b"", 8 << 20), Err(BootError::SegmentOutOfRange));
        let big = vec![0u8; 16 << 20];
        assert!(load_pvh(&mut m, &elf, Some(Initrd::whole(&big)), b"", 8 << 20).is_err());
        assert_eq!(load_pvh(&mut m, &elf, None, b"", 1 << 20), Err(BootError::BadRamSize));
    }

    #[test]
    fn bzimage() {
        let mut m = VecMemory::new(64 << 20);
        let img = synthetic_bzimage(0x020f, 3, 4096);
        let initrd = vec![1u8; 5000];
        let b = load_bzimage(&mut m, &img, Some(Initrd::whole(&initrd)), b"console=ttyS0 root=/dev/vda", 64 << 20).unwrap();
        // relocatable, pref_address 16 MiB fits
        assert_eq!(b.kernel_start, 0x100_0000);
        assert_eq!(b.cpu.rip, 0x100_0200);
        assert_eq!(b.cpu.rsi, layout::ZERO_PAGE);
        assert_eq!(b.cpu.mode(), CpuMode::Long64);
        assert_eq!(m.as_slice()[0x100_0000 + 5], 5);
        let zp = layout::ZERO_PAGE;
        assert_eq!(m.read_u8(zp + 0x210).unwrap(), 0xff);
        assert_eq!(m.read_u32(zp + 0x202).unwrap(), 0x5372_6448);
        assert_eq!(m.read_u32(zp + 0x228).unwrap(), layout::CMDLINE as u32);
        let (ia, is) = b.initrd.unwrap();
        assert_eq!(m.read_u32(zp + 0x218).unwrap() as u64, ia);
        assert_eq!(m.read_u32(zp + 0x21c).unwrap() as u64, is);
        assert!(ia >= b.kernel_end);
        assert_eq!(m.read_u8(zp + 0x1e8).unwrap(), 3);
        assert_eq!(m.read_u32(zp + 0x2d0 + 2 * 20 + 16).unwrap(), E820_RAM);
        // page tables identity-map 0..4 GiB
        for la in [0u64, 0x100_0200, 0x3fff_ffff, 0xd000_0000, 0xffff_f000] {
            assert_eq!(translate(&b.cpu, &m, la, Access::default()).unwrap(), la);
        }
        // GDT code descriptor is 64-bit
        assert_eq!(m.read_u64(0x510).unwrap(), 0x00af_9b00_0000_ffff);
        // too old / not 64-bit
        let old = synthetic_bzimage(0x020a, 3, 4096);
        assert!(matches!(load_bzimage(&mut m, &old, None, b"", 64 << 20), Err(BootError::UnsupportedProtocol { .. })));
        let no64 = synthetic_bzimage(0x020f, 0, 4096);
        assert!(matches!(load_bzimage(&mut m, &no64, None, b"", 64 << 20), Err(BootError::UnsupportedProtocol { .. })));
        // command line longer than cmdline_size
        let long = vec![b'a'; 4000];
        assert_eq!(load_bzimage(&mut m, &img, None, &long, 64 << 20), Err(BootError::CmdlineTooLong));
        // small RAM: pref_address does not fit -> 1 MiB
        let mut m = VecMemory::new(8 << 20);
        let b = load_bzimage(&mut m, &img, None, b"", 8 << 20).unwrap();
        assert_eq!(b.kernel_start, 0x10_0000);
        assert_eq!(b.cpu.rsp, layout::BOOT_STACK_TOP);
        // loaded low, the initrd must still stay above pref_address + init_size (where the
        // kernel decompresses itself): with 20 MiB there is no room left for it
        let mut m = VecMemory::new(32 << 20);
        assert_eq!(load_bzimage(&mut m, &img, Some(Initrd::whole(&[1u8; 4096])), b"", 20 << 20), Err(BootError::InitrdTooBig));
        let b = load_bzimage(&mut m, &img, Some(Initrd::whole(&[1u8; 4096])), b"", 21 << 20).unwrap();
        assert!(b.initrd.unwrap().0 >= 0x100_0000 + 0x40_0000);
    }
}
