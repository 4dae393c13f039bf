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
use virtio_drivers::transport::pci::bus::DeviceFunction;
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
            crate::memory::zero_frame(p + i * PAGE_SIZE as u64);
        }
        let v = crate::paging::p2v(p) as *mut u8;
        (p, NonNull::new(v).expect("direct map address is never null"))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        match crate::memory::free_contiguous(paddr, pages as u64) {
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

/// Queue depth of each virtqueue.
pub const NET_QUEUE: usize = 32;
/// Receive buffer length (MTU 1500 + Ethernet header + virtio-net header, rounded).
pub const NET_BUF: usize = 2048;

/// A virtio-net PCI device, initialised, with its receive queue filled.
pub struct VirtioNet {
    dev: VirtIONet<KernelHal, PciTransport, NET_QUEUE>,
    pub df: DeviceFunction,
    link_up: bool,
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
            return Ok(alloc::boxed::Box::new(VirtioNet { dev, df: f.df, link_up: status & 1 != 0, rx_frames: 0, tx_frames: 0 }));
        }
        Err(NicError::NotFound)
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
