//! The `virtio_drivers` HAL (DMA from the frame allocator, MMIO windows, address translation)
//! and a safe handle on a virtio-net PCI device.
//!
//! DMA memory: `dma_alloc` takes physically contiguous frames from the frame allocator and
//! hands out their direct-map address; the device sees the physical address (no IOMMU).
//! `share` translates a driver buffer (heap memory: the boot arena in the kernel image or
//! frames added to the heap, both physically contiguous per allocation) through the page
//! tables; no bounce buffer is needed.

use core::ptr::NonNull;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// The kernel's virtio HAL.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned frames mapped by the
// direct map; `mmio_phys_to_virt` maps the BAR range into a fresh uncached window that nothing
// else uses; `share` returns the physical address of memory that stays mapped and allocated for
// the duration of the device access (the caller's contract).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let p = crate::memory::alloc_contiguous(pages as u64, 1).expect("virtio DMA: out of frames");
        for i in 0..pages as u64 {
            // SAFETY: frames just allocated for this call: nothing else refers to them.
            unsafe { crate::memory::zero_frame(p + i * PAGE_SIZE as u64) };
        }
        let v = crate::paging::p2v(p) as *mut u8;
        (p, NonNull::new(v).expect("direct map address is never null"))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: forwarded from the `Hal::dma_dealloc` contract: the driver allocated this run
        // with `dma_alloc` and the device no longer uses it.
        match unsafe { crate::memory::free_contiguous(paddr, pages as u64) } {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let v = crate::paging::map_mmio(paddr, size as u64).expect("virtio: cannot map BAR");
        NonNull::new(v as *mut u8).expect("MMIO window address is never null")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        let v = buffer.as_ptr() as *mut u8 as u64;
        let len = buffer.len() as u64;
        let (p, _, _) = crate::paging::translate(v).expect("virtio: shared buffer not mapped");
        if len > 1 {
            let (pe, _, _) = crate::paging::translate(v + len - 1).expect("virtio: shared buffer not mapped");
            assert_eq!(pe, p + len - 1, "virtio: shared buffer not physically contiguous");
        }
        p
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

/// `VIRTIO_MSI_NO_VECTOR`: no interrupt for this queue / for configuration changes.
const NO_VECTOR: u16 = 0xffff;

/// The address a memory BAR decodes (read from config space; no sizing writes).
fn bar_address(df: DeviceFunction, bar: u8) -> Option<u64> {
    if bar > 5 {
        return None;
    }
    let cam = crate::pci::PortCam::new();
    let lo = cam.read_word(df, 0x10 + 4 * bar);
    if lo & 1 != 0 {
        return None; // I/O BAR
    }
    let mut a = (lo & !0xf) as u64;
    if (lo >> 1) & 3 == 2 && bar < 5 {
        a |= (cam.read_word(df, 0x14 + 4 * bar) as u64) << 32;
    }
    Some(a)
}

/// Program MSI-X table entry 0 of `df` (address `0xfee00000 | dest_apic << 12`, data
/// `vector`: fixed, edge), mask the other entries, enable MSI-X and clear the function mask.
/// Which device events use entry 0 is the driver's business (virtio: `queue_msix_vector`).
/// Returns the table size.
pub fn msix_program(df: DeviceFunction, vector: u8, dest_apic: u32) -> Result<u16, &'static str> {
    if dest_apic > 0xff {
        return Err("destination APIC id above 255 (needs interrupt remapping)");
    }
    if vector < 32 {
        return Err("vector below 32 (an exception vector, see apic::send_ipi)");
    }
    let cam = crate::pci::PortCam::new();
    let root = crate::pci::root();
    let cap = root.capabilities(df).find(|c| c.id == 0x11).map(|c| c.offset).ok_or("no MSI-X capability")?;
    let ctrl = (cam.read_word(df, cap) >> 16) as u16;
    let entries = (ctrl & 0x7ff) + 1;
    let table = cam.read_word(df, cap + 4);
    let tbase = bar_address(df, (table & 7) as u8).ok_or("MSI-X table BAR not a memory BAR")? + (table & !7) as u64;
    let tv = crate::paging::map_mmio(tbase, entries as u64 * 16).map_err(|_| "cannot map the MSI-X table")?;
    // Function-masked while the table is written, then enabled and unmasked.
    let mut cam_w = crate::pci::PortCam::new();
    let low16 = cam.read_word(df, cap) & 0xffff;
    cam_w.write_word(df, cap, low16 | ((ctrl as u32 | 0x4000) << 16));
    // SAFETY: `tv` maps the device's MSI-X table (`entries` × 16 bytes, uncached), a fresh
    // window used only here; the offsets are those of a PCI MSI-X table entry (address low,
    // address high, data, vector control).
    unsafe {
        let t = tv as *mut u32;
        for i in 0..entries as usize {
            t.add(i * 4 + 3).write_volatile(1); // masked
        }
        t.add(0).write_volatile(0xfee0_0000 | dest_apic << 12);
        t.add(1).write_volatile(0);
        t.add(2).write_volatile(vector as u32);
        t.add(3).write_volatile(0); // entry 0 unmasked
    }
    cam_w.write_word(df, cap, low16 | (((ctrl & !0x4000) | 0x8000) as u32) << 16);
    Ok(entries)
}

/// Where a modern virtio PCI function's structures are (physical address, length), from its
/// vendor capabilities: what a ring-3 driver is granted and maps, instead of config space.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciInfo {
    pub common: (u64, u64),
    pub notify: (u64, u64),
    pub notify_multiplier: u32,
    pub isr: (u64, u64),
    pub device: (u64, u64),
}

impl VirtioPciInfo {
    pub fn read(df: DeviceFunction) -> Result<VirtioPciInfo, &'static str> {
        let cam = crate::pci::PortCam::new();
        let root = crate::pci::root();
        let mut info = VirtioPciInfo::default();
        for c in root.capabilities(df).filter(|c| c.id == 0x09) {
            // virtio_pci_cap: cfg_type at +3, bar at +4, offset at +8, length at +12
            let ty = (cam.read_word(df, c.offset) >> 24) as u8;
            let bar = cam.read_word(df, c.offset + 4) as u8;
            let off = cam.read_word(df, c.offset + 8) as u64;
            let len = cam.read_word(df, c.offset + 12) as u64;
            let Some(base) = bar_address(df, bar) else { continue };
            let r = (base + off, len);
            match ty {
                1 if info.common.0 == 0 => info.common = r,
                2 if info.notify.0 == 0 => {
                    info.notify = r;
                    info.notify_multiplier = cam.read_word(df, c.offset + 16);
                }
                3 if info.isr.0 == 0 => info.isr = r,
                4 if info.device.0 == 0 => info.device = r,
                _ => {}
            }
        }
        if info.common.0 == 0 || info.notify.0 == 0 || info.isr.0 == 0 || info.device.0 == 0 {
            return Err("missing virtio PCI capability");
        }
        Ok(info)
    }
}

/// Find the first virtio-net function, turn on memory space and bus mastering, and return
/// where its structures are (for a ring-3 driver). The device is not reset or touched.
pub fn find_net() -> Option<(DeviceFunction, VirtioPciInfo)> {
    find_net_at(0)
}

/// Whether there is an `index`-th virtio-net function (0: the first), without touching it.
pub fn has_net_at(index: usize) -> bool {
    crate::pci::scan().into_iter().filter(|f| virtio_drivers::transport::pci::virtio_device_type(&f.info) == Some(DeviceType::Network)).nth(index).is_some()
}

/// [`find_net`] for the `index`-th virtio-net function in scan order (1: a NAT64 gateway's
/// uplink, after the fabric's NIC).
pub fn find_net_at(index: usize) -> Option<(DeviceFunction, VirtioPciInfo)> {
    let mut root = crate::pci::root();
    let f = crate::pci::scan().into_iter().filter(|f| virtio_drivers::transport::pci::virtio_device_type(&f.info) == Some(DeviceType::Network)).nth(index)?;
    let (_, cmd) = root.get_status_command(f.df);
    use virtio_drivers::transport::pci::bus::Command;
    root.set_command(f.df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
    VirtioPciInfo::read(f.df).ok().map(|i| (f.df, i))
}

/// PCI command register bit 2: the function may master the bus (DMA, MSI-X writes).
const CMD_BUS_MASTER: u32 = 1 << 2;
/// `device_status` in the virtio common configuration structure.
const COMMON_DEVICE_STATUS: u64 = 0x14;
/// The kernel's window on the common configuration structure last reset (physical, virtual):
/// mapped once, reused by every later reset of the same device.
static COMMON_WINDOW: spin::Mutex<Option<(u64, u64)>> = spin::Mutex::new(None);

/// What [`quiesce`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quiesced {
    /// The command register reads back with bus mastering off.
    pub bus_master_off: bool,
    /// `device_status` reads back 0 after the reset.
    pub reset: bool,
}

/// Stop a virtio PCI function whose (ring-3) driver died, before the driver's DMA memory goes
/// back to the frame allocator: bus mastering off first (the device can no longer read or
/// write memory, MSI-X messages included), then a device reset (`device_status` = 0 in the
/// common configuration, found through the function's own virtio capabilities), so that turning bus mastering on again for the
/// next driver cannot resume the old queues, which point into the freed memory.
pub fn quiesce(df: DeviceFunction) -> Quiesced {
    let mut cam = crate::pci::PortCam::new();
    let cmd = cam.read_word(df, 0x04) & 0xffff; // the upper half is the status register (RW1C)
    cam.write_word(df, 0x04, cmd & !CMD_BUS_MASTER);
    let bus_master_off = !bus_master_on(df);
    let common_phys = VirtioPciInfo::read(df).ok().map(|i| i.common.0);
    let window = common_phys.and_then(|common_phys| {
        let mut w = COMMON_WINDOW.lock();
        match *w {
            Some((p, v)) if p == common_phys => Some(v),
            _ => match crate::paging::map_mmio(common_phys, COMMON_DEVICE_STATUS + 1) {
                Ok(v) => {
                    *w = Some((common_phys, v));
                    Some(v)
                }
                Err(_) => None,
            },
        }
    });
    let reset = window.is_some_and(|v| {
        let status = (v + COMMON_DEVICE_STATUS) as *mut u8;
        // SAFETY: `v` is an uncached kernel window on the device's common configuration
        // structure (at least `COMMON_DEVICE_STATUS + 1` bytes, mapped by `map_mmio` for this
        // physical address and used only here); offset 0x14 is the one-byte `device_status`.
        unsafe {
            status.write_volatile(0);
            // the device may finish the reset later: read until it reads 0 (bounded)
            (0..10_000).any(|_| status.read_volatile() == 0)
        }
    });
    Quiesced { bus_master_off, reset }
}

/// Whether function `df` may master the bus now.
pub fn bus_master_on(df: DeviceFunction) -> bool {
    crate::pci::PortCam::new().read_word(df, 0x04) & CMD_BUS_MASTER != 0
}

/// Queue depth of each virtqueue.
pub const NET_QUEUE: usize = 32;
/// Receive buffer length (MTU 1500 + Ethernet header + virtio-net header, rounded).
pub const NET_BUF: usize = 2048;

/// A virtio-net PCI device, initialised, with its receive queue filled.
pub struct VirtioNet {
    dev: VirtIONet<KernelHal, PciTransport, NET_QUEUE>,
    pub df: DeviceFunction,
    link_up: bool,
    /// The MSI-X table entry count once [`VirtioNet::enable_msix`] succeeded.
    pub msix: Option<u16>,
    pub rx_frames: u64,
    pub tx_frames: u64,
}

#[derive(Debug)]
pub enum NicError {
    NotFound,
    Transport(virtio_drivers::transport::pci::VirtioPciError),
    Init(virtio_drivers::Error),
}

impl VirtioNet {
    /// Find the first virtio-net function on the PCI bus and bring it up.
    pub fn probe() -> Result<alloc::boxed::Box<VirtioNet>, NicError> {
        let mut root = crate::pci::root();
        for f in crate::pci::scan() {
            if virtio_drivers::transport::pci::virtio_device_type(&f.info) != Some(DeviceType::Network) {
                continue;
            }
            // Bus master + memory space on (firmware assigned the BARs).
            let (_, cmd) = root.get_status_command(f.df);
            use virtio_drivers::transport::pci::bus::Command;
            root.set_command(f.df, cmd | Command::MEMORY_SPACE | Command::BUS_MASTER);
            let transport = PciTransport::new::<KernelHal, _>(&mut root, f.df).map_err(NicError::Transport)?;
            // virtio-net config: mac[6], status u16 (bit 0 = link up when VIRTIO_NET_F_STATUS).
            let status: u16 = transport.read_config_space(6).unwrap_or(1);
            let dev = VirtIONet::new(transport, NET_BUF).map_err(NicError::Init)?;
            return Ok(alloc::boxed::Box::new(VirtioNet { dev, df: f.df, link_up: status & 1 != 0, msix: None, rx_frames: 0, tx_frames: 0 }));
        }
        Err(NicError::NotFound)
    }

    /// Deliver the receive queue's interrupts as MSI-X message 0: `vector` on the local APIC
    /// `dest_apic` (physical destination, fixed delivery, edge). The transmit queue and
    /// configuration changes get no vector (`VIRTIO_MSI_NO_VECTOR`): transmit completions are
    /// reclaimed on the next send. `virtio-drivers` 0.13 does not program MSI-X, so this walks
    /// the capability list itself: the MSI-X capability (table in a BAR) and the virtio common
    /// configuration (`config_msix_vector`, `queue_select`, `queue_msix_vector`).
    pub fn enable_msix(&mut self, vector: u8, dest_apic: u32) -> Result<u16, &'static str> {
        let info = VirtioPciInfo::read(self.df)?;
        let entries = msix_program(self.df, vector, dest_apic)?;
        let cv = crate::paging::map_mmio(info.common.0, 0x38).map_err(|_| "cannot map the virtio common configuration")?;
        // SAFETY: `cv` maps the virtio common configuration structure (0x38 bytes, uncached),
        // a fresh window used only here; offsets of virtio 1.x `virtio_pci_common_cfg`.
        unsafe {
            let c = cv as *mut u8;
            let w16 = |off: usize, v: u16| (c.add(off) as *mut u16).write_volatile(v);
            let r16 = |off: usize| (c.add(off) as *mut u16).read_volatile();
            w16(0x10, NO_VECTOR); // config_msix_vector
            for (queue, v) in [(0u16, 0u16), (1, NO_VECTOR)] {
                w16(0x16, queue); // queue_select: 0 = receiveq1, 1 = transmitq1
                w16(0x1a, v); // queue_msix_vector
                if r16(0x1a) != v {
                    return Err("the device refused the queue's MSI-X vector");
                }
            }
        }
        self.msix = Some(entries);
        Ok(entries)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    /// Link state read from the device configuration at probe time.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Pass the next received frame (Ethernet, without the virtio header) to `f` and recycle
    /// its buffer. Returns `None` when nothing is pending.
    pub fn receive<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if !self.dev.can_recv() {
            return None;
        }
        let buf = self.dev.receive().ok()?;
        let r = f(buf.packet());
        let _ = self.dev.recycle_rx_buffer(buf);
        self.rx_frames += 1;
        Some(r)
    }

    /// Build a frame of `len` bytes in a transmit buffer with `f` and queue it. Completed
    /// transmissions are reclaimed by the driver on the next send.
    pub fn transmit<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.dev.can_send() {
            return None;
        }
        let mut tx = self.dev.new_tx_buffer(len);
        let r = f(tx.packet_mut());
        self.dev.send(tx).ok()?;
        self.tx_frames += 1;
        Some(r)
    }
}
