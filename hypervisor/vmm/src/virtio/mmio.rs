//! virtio-mmio transport, version 2 ("modern", virtio 1.x §4.2.2).

use super::blk::VirtioBlk;
use super::console::VirtioConsole;
use super::net::VirtioNet;
use super::queue::{Queue, QueueError};
use crate::console::ConsoleRing;
use crate::mem::GuestMemory;
use alloc::vec::Vec;

pub const MAGIC: u32 = 0x7472_6976; // "virt"
pub const VENDOR_ID: u32 = 0x4354_4e43; // "CNTC"
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x200;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub const INT_USED: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The device behind a transport.
#[derive(Debug, Clone)]
pub enum Device {
    Console(VirtioConsole),
    Blk(VirtioBlk),
    Net(VirtioNet),
}

impl Device {
    pub fn id(&self) -> u32 {
        match self {
            Device::Console(_) => 3,
            Device::Blk(_) => 2,
            Device::Net(_) => 1,
        }
    }
    fn features(&self) -> u64 {
        let dev = match self {
            Device::Console(_) => 0,
            Device::Blk(b) => b.features(),
            Device::Net(n) => n.features(),
        };
        dev | VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC
    }
    fn num_queues(&self) -> usize {
        match self {
            Device::Console(_) => 2,
            Device::Blk(_) => 1,
            Device::Net(_) => 2,
        }
    }
    fn config_byte(&self, off: u64) -> u8 {
        let b = match self {
            Device::Console(c) => c.config().get(off as usize).copied(),
            Device::Blk(b) => b.config().get(off as usize).copied(),
            Device::Net(n) => n.config().get(off as usize).copied(),
        };
        b.unwrap_or(0)
    }
}

/// A virtio-mmio device window.
#[derive(Debug, Clone)]
pub struct VirtioMmio {
    pub base: u64,
    pub irq: u8,
    pub dev: Device,
    pub queues: Vec<Queue>,
    status: u32,
    dev_features_sel: u32,
    drv_features_sel: u32,
    drv_features: u64,
    queue_sel: u32,
    pub interrupt_status: u32,
    config_generation: u32,
    /// The last queue error (device is in NEEDS_RESET until the driver resets it).
    pub error: Option<QueueError>,
    pub notifies: u64,
    /// The driver notified the console transmit queue; [`VirtioMmio::process_console_tx`]
    /// moves its buffers into the VM's console ring.
    console_tx_pending: bool,
    /// A host allocation for this device failed: the VM must end ([`VmError::OutOfMemory`]).
    ///
    /// [`VmError::OutOfMemory`]: crate::cpu::VmError::OutOfMemory
    pub out_of_memory: bool,
}

impl VirtioMmio {
    pub fn new(base: u64, irq: u8, dev: Device, queue_size: u16) -> Self {
        let n = dev.num_queues();
        VirtioMmio {
            base,
            irq,
            dev,
            queues: (0..n).map(|_| Queue::new(queue_size)).collect(),
            status: 0,
            dev_features_sel: 0,
            drv_features_sel: 0,
            drv_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            error: None,
            notifies: 0,
            console_tx_pending: false,
            out_of_memory: false,
        }
    }

    pub fn contains(&self, gpa: u64) -> bool {
        gpa >= self.base && gpa - self.base < MMIO_WINDOW
    }

    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.dev_features_sel = 0;
        self.drv_features_sel = 0;
        self.drv_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.error = None;
        self.console_tx_pending = false;
    }

    fn sel_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// MMIO read of `size` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= 0x100 {
            let mut v = 0u64;
            for i in 0..size.min(8) as u64 {
                let Some(o) = (offset - 0x100).checked_add(i) else { break };
                v |= (self.dev.config_byte(o) as u64) << (8 * i);
            }
            return v;
        }
        if size != 4 {
            return 0;
        }
        let q = self.queues.get(self.queue_sel as usize);
        let v: u32 = match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.dev.id(),
            0x00c => VENDOR_ID,
            0x010 => match self.dev_features_sel {
                0 => self.dev.features() as u32,
                1 => (self.dev.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => q.map(|q| q.max_size as u32).unwrap_or(0),
            0x038 => q.map(|q| q.size as u32).unwrap_or(0),
            0x044 => q.map(|q| q.ready as u32).unwrap_or(0),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x080 => q.map(|q| q.desc as u32).unwrap_or(0),
            0x084 => q.map(|q| (q.desc >> 32) as u32).unwrap_or(0),
            0x090 => q.map(|q| q.avail as u32).unwrap_or(0),
            0x094 => q.map(|q| (q.avail >> 32) as u32).unwrap_or(0),
            0x0a0 => q.map(|q| q.used as u32).unwrap_or(0),
            0x0a4 => q.map(|q| (q.used >> 32) as u32).unwrap_or(0),
            0x0fc => self.config_generation,
            _ => 0,
        };
        v as u64
    }

    /// MMIO write. Queue processing happens on QueueNotify (and for console RX, on
    /// [`VirtioMmio::kick_rx`]).
    pub fn write(&mut self, offset: u64, size: u8, val: u64, mem: &mut dyn GuestMemory) {
        if offset >= 0x100 {
            // Config space of console/blk is read-only for us.
            return;
        }
        if size != 4 {
            return;
        }
        let v = val as u32;
        let set_lo = |x: u64, v: u32| (x & !0xffff_ffff) | v as u64;
        let set_hi = |x: u64, v: u32| (x & 0xffff_ffff) | ((v as u64) << 32);
        let configurable = |q: &Queue| !q.ready;
        match offset {
            0x014 => self.dev_features_sel = v,
            0x020 => match self.drv_features_sel {
                0 => self.drv_features = set_lo(self.drv_features, v),
                1 => self.drv_features = set_hi(self.drv_features, v),
                _ => {}
            },
            0x024 => self.drv_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let Some(q) = self.sel_queue().filter(|q| configurable(q)) {
                    q.size = v.min(u16::MAX as u32) as u16;
                }
            }
            0x044 => {
                let indirect = self.drv_features & VIRTIO_F_INDIRECT_DESC != 0;
                if let Some(q) = self.sel_queue() {
                    if v == 1 {
                        if q.valid_config() {
                            q.indirect = indirect;
                            q.ready = true;
                        }
                    } else {
                        q.ready = false;
                    }
                }
            }
            0x050 => {
                self.notifies += 1;
                self.notify(v as usize, mem);
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => {
                if v == 0 {
                    self.reset();
                } else {
                    let mut v = v & 0xff;
                    if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
                        let offered = self.dev.features();
                        let ok = self.drv_features & !offered == 0 && self.drv_features & VIRTIO_F_VERSION_1 != 0;
                        if !ok {
                            v &= !STATUS_FEATURES_OK;
                        }
                    }
                    self.status = v | (self.status & STATUS_NEEDS_RESET);
                }
            }
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if let Some(q) = self.sel_queue().filter(|q| configurable(q)) {
                    match offset {
                        0x080 => q.desc = set_lo(q.desc, v),
                        0x084 => q.desc = set_hi(q.desc, v),
                        0x090 => q.avail = set_lo(q.avail, v),
                        0x094 => q.avail = set_hi(q.avail, v),
                        0x0a0 => q.used = set_lo(q.used, v),
                        _ => q.used = set_hi(q.used, v),
                    }
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, e: QueueError) {
        if e == QueueError::OutOfMemory {
            self.out_of_memory = true;
        }
        self.error = Some(e);
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt_status |= INT_CONFIG;
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn usable(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    fn notify(&mut self, qi: usize, mem: &mut dyn GuestMemory) {
        if !self.usable() {
            return;
        }
        let Some(q) = self.queues.get_mut(qi) else { return };
        if !q.ready {
            return;
        }
        let r = match (&mut self.dev, qi) {
            (Device::Blk(b), 0) => b.process(q, mem),
            (Device::Console(_), 1) => {
                self.console_tx_pending = true;
                Ok(false)
            }
            (Device::Console(c), 0) => c.process_rx(q, mem),
            (Device::Net(n), 1) => n.process_tx(q, mem),
            (Device::Net(n), 0) => n.process_rx(q, mem),
            _ => Ok(false),
        };
        match r {
            Ok(true) => self.interrupt_status |= INT_USED,
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }

    /// Deliver pending host input on the receive queue (console input, network frames).
    pub fn kick_rx(&mut self, mem: &mut dyn GuestMemory) {
        if matches!(self.dev, Device::Console(_) | Device::Net(_))
            && self.queues.first().map(|q| q.ready) == Some(true) {
                self.notify(0, mem);
            }
    }

    /// Move what the guest queued on the console transmit queue into `out` (the VM's ring).
    pub fn process_console_tx(&mut self, mem: &mut dyn GuestMemory, out: &mut ConsoleRing) {
        if !core::mem::take(&mut self.console_tx_pending) || !self.usable() {
            return;
        }
        let (Device::Console(c), Some(q)) = (&mut self.dev, self.queues.get_mut(1)) else { return };
        if !q.ready {
            return;
        }
        match c.process_tx(q, mem, out) {
            // The console's transmit chains are used here, inside the exit of the vCPU that
            // notified, and Linux's hvc writer polls for them with interrupts off: it needs no
            // interrupt. One would be harmful with several vCPUs: taken on another vCPU while
            // the console port is still being registered (`init_port_console` runs before the
            // port joins the device's list), Linux's `out_intr` finds no port and drains the
            // used ring itself (`flush_bufs`), and the writer spins for ever on the entry it
            // stole (docs/vmm.md "Multi-vCPU microVMs"). The workload channel's writer may sleep
            // until its interrupt: it keeps it.
            Ok(true) if c.channel => self.interrupt_status |= INT_USED,
            Ok(_) => {}
            Err(e) => self.fail(e),
        }
    }

    /// Ethernet frames the guest transmitted (net); empty for other devices.
    pub fn take_tx_frames(&mut self) -> Vec<Vec<u8>> {
        match &mut self.dev {
            Device::Net(n) => n.take_tx_frames(),
            _ => Vec::new(),
        }
    }

    /// Queue a frame for the guest (net) and deliver what fits into posted receive buffers.
    /// Returns false if the frame was dropped (or this is not a net device).
    pub fn push_rx_frame(&mut self, frame: &[u8], mem: &mut dyn GuestMemory) -> bool {
        let ok = match &mut self.dev {
            Device::Net(n) => n.push_rx_frame(frame),
            _ => false,
        };
        if ok {
            self.kick_rx(mem);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::blk::*;
    use super::super::queue::tests::Driver;
    use super::*;
    use crate::mem::{GuestMemoryExt, VecMemory};

    fn setup(dev: Device, m: &mut VecMemory, d: &[Driver]) -> VirtioMmio {
        let mut t = VirtioMmio::new(0xd000_0000, 5, dev, 16);
        assert_eq!(t.read(0, 4), MAGIC as u64);
        assert_eq!(t.read(4, 4), 2);
        t.write(0x70, 4, 1, m);
        t.write(0x70, 4, 3, m);
        t.write(0x14, 4, 1, m);
        assert_eq!(t.read(0x10, 4) & 1, 1); // VERSION_1
        t.write(0x24, 4, 1, m);
        t.write(0x20, 4, 1, m);
        t.write(0x24, 4, 0, m);
        t.write(0x20, 4, 0, m);
        t.write(0x70, 4, 0xb, m);
        assert_eq!(t.read(0x70, 4) & 8, 8);
        for (i, dq) in d.iter().enumerate() {
            t.write(0x30, 4, i as u64, m);
            assert_eq!(t.read(0x34, 4), 16);
            t.write(0x38, 4, dq.size as u64, m);
            t.write(0x80, 4, dq.desc, m);
            t.write(0x84, 4, 0, m);
            t.write(0x90, 4, dq.avail, m);
            t.write(0xa0, 4, dq.used, m);
            t.write(0x44, 4, 1, m);
            assert_eq!(t.read(0x44, 4), 1);
        }
        t.write(0x70, 4, 0xf, m);
        t
    }

    #[test]
    fn blk_shared_disks_read_the_same_bytes_and_refuse_writes() {
        // one copy of the image's bytes behind two devices (two microVMs of one image)
        let mut img = alloc::vec![0u8; 4 * 512 + 100];
        img[512..1024].fill(0xcd);
        let img = crate::virtio::blk::SharedBytes(alloc::sync::Arc::new(img));
        for _vm in 0..2 {
            let mut m = VecMemory::new(0x40000);
            let mut d = Driver::new(0x1000, 8);
            let mut t = setup(Device::Blk(VirtioBlk::shared(img.clone(), "catenary0")), &mut m, &[Driver::new(0x1000, 8)]);
            assert_eq!(t.read(0x100, 4), 4, "whole sectors only");
            m.write_u32(0x8000, VIRTIO_BLK_T_IN).unwrap();
            m.write_u64(0x8008, 1).unwrap();
            d.add(&mut m, &[(0x8000, 16, false), (0x9000, 512, true), (0x9200, 1, true)]);
            t.write(0x50, 4, 0, &mut m);
            assert_eq!(m.read_u8(0x9200).unwrap(), VIRTIO_BLK_S_OK);
            assert!(m.as_slice()[0x9000..0x9200].iter().all(|&b| b == 0xcd));
            m.as_mut_slice()[0xa000..0xa200].fill(0x5a);
            m.write_u32(0x8100, VIRTIO_BLK_T_OUT).unwrap();
            m.write_u64(0x8108, 1).unwrap();
            d.add(&mut m, &[(0x8100, 16, false), (0xa000, 512, false), (0x9300, 1, true)]);
            t.write(0x50, 4, 0, &mut m);
            assert_eq!(m.read_u8(0x9300).unwrap(), VIRTIO_BLK_S_IOERR);
            if let Device::Blk(b) = &t.dev {
                assert!(core::ptr::eq(b.disk.bytes().as_ptr(), img.bytes().as_ptr()), "the same bytes, not a copy");
                assert_eq!(b.features() & VIRTIO_BLK_F_RO, VIRTIO_BLK_F_RO);
            }
        }
        assert!(img.bytes()[512..1024].iter().all(|&b| b == 0xcd));
    }

    #[test]
    fn blk_round_trip() {
        let mut m = VecMemory::new(0x40000);
        let mut disk = alloc::vec![0u8; 8 * 512];
        disk[512..1024].fill(0xab);
        let mut d = Driver::new(0x1000, 8);
        let mut t = setup(Device::Blk(VirtioBlk::new(disk, false, "catenary-disk0")), &mut m, &[Driver::new(0x1000, 8)]);
        assert_eq!(t.read(0x100, 4), 8); // capacity low
        assert_eq!(t.read(0x104, 4), 0);
        // read sector 1
        m.write_u32(0x8000, VIRTIO_BLK_T_IN).unwrap();
        m.write_u64(0x8008, 1).unwrap();
        m.write_u8(0x9200, 0xff).unwrap();
        d.add(&mut m, &[(0x8000, 16, false), (0x9000, 512, true), (0x9200, 1, true)]);
        t.write(0x50, 4, 0, &mut m);
        assert_eq!(t.read(0x60, 4), 1);
        assert!(t.irq_level());
        t.write(0x64, 4, 1, &mut m);
        assert!(!t.irq_level());
        assert_eq!(d.used_idx(&m), 1);
        assert_eq!(d.used_elem(&m, 0), (0, 513));
        assert_eq!(m.read_u8(0x9200).unwrap(), VIRTIO_BLK_S_OK);
        assert!(m.as_slice()[0x9000..0x9200].iter().all(|&b| b == 0xab));
        // write sector 7 with 0x5a
        m.as_mut_slice()[0xa000..0xa200].fill(0x5a);
        m.write_u32(0x8100, VIRTIO_BLK_T_OUT).unwrap();
        m.write_u64(0x8108, 7).unwrap();
        d.add(&mut m, &[(0x8100, 16, false), (0xa000, 512, false), (0x9300, 1, true)]);
        t.write(0x50, 4, 0, &mut m);
        assert_eq!(m.read_u8(0x9300).unwrap(), VIRTIO_BLK_S_OK);
        if let Device::Blk(b) = &t.dev {
            assert!(b.disk.bytes()[7 * 512..].iter().all(|&x| x == 0x5a));
        }
        // out of bounds: sector 8
        m.write_u64(0x8108, 8).unwrap();
        d.add(&mut m, &[(0x8100, 16, false), (0xa000, 512, false), (0x9300, 1, true)]);
        t.write(0x50, 4, 0, &mut m);
        assert_eq!(m.read_u8(0x9300).unwrap(), VIRTIO_BLK_S_IOERR);
        // huge sector: overflow
        m.write_u64(0x8108, u64::MAX).unwrap();
        d.add(&mut m, &[(0x8100, 16, false), (0xa000, 512, false), (0x9300, 1, true)]);
        t.write(0x50, 4, 0, &mut m);
        assert_eq!(m.read_u8(0x9300).unwrap(), VIRTIO_BLK_S_IOERR);
        // GET_ID and FLUSH, unknown type
        m.write_u32(0x8200, VIRTIO_BLK_T_GET_ID).unwrap();
        d.add(&mut m, &[(0x8200, 16, false), (0xb000, 20, true), (0x9400, 1, true)]);
        m.write_u32(0x8300, VIRTIO_BLK_T_FLUSH).unwrap();
        d.add(&mut m, &[(0x8300, 16, false), (0x9500, 1, true)]);
        m.write_u32(0x8400, 99).unwrap();
        d.add(&mut m, &[(0x8400, 16, false), (0x9600, 1, true)]);
        t.write(0x50, 4, 0, &mut m);
        assert_eq!(&m.as_slice()[0xb000..0xb00e], b"catenary-disk0");
        assert_eq!(m.read_u8(0x9400).unwrap(), 0);
        assert_eq!(m.read_u8(0x9500).unwrap(), 0);
        assert_eq!(m.read_u8(0x9600).unwrap(), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(d.used_idx(&m), 7);
        // hostile: descriptor loop -> NEEDS_RESET, config interrupt; reset recovers
        m.write_u16(d.avail + 2, d.avail_idx.wrapping_add(200)).unwrap();
        t.write(0x50, 4, 0, &mut m);
        assert_ne!(t.read(0x70, 4) as u32 & STATUS_NEEDS_RESET, 0);
        assert_ne!(t.read(0x60, 4) as u32 & INT_CONFIG, 0);
        t.write(0x70, 4, 0, &mut m);
        assert_eq!(t.read(0x70, 4), 0);
    }

    #[test]
    fn net_tx_rx() {
        use super::super::net::{VirtioNet, VIRTIO_NET_F_MAC};
        let mut m = VecMemory::new(0x40000);
        let mut rx = Driver::new(0x1000, 8);
        let mut tx = Driver::new(0x2000, 8);
        let mut t = setup(Device::Net(VirtioNet::new([2, 1, 2, 3, 4, 5])), &mut m, &[Driver::new(0x1000, 8), Driver::new(0x2000, 8)]);
        assert_eq!(t.read(8, 4), 1);
        t.write(0x14, 4, 0, &mut m);
        assert_ne!(t.read(0x10, 4) & VIRTIO_NET_F_MAC, 0);
        assert_eq!(t.read(0x100, 4), 0x0302_0102);
        assert_eq!(t.read(0x104, 2), 0x0504);
        let mut f = alloc::vec![0x11u8; 74];
        f[12] = 0x86;
        f[13] = 0xdd;
        m.write(0x8000, &[0u8; 12]).unwrap();
        m.write(0x800c, &f).unwrap();
        tx.add(&mut m, &[(0x8000, 86, false)]);
        t.write(0x50, 4, 1, &mut m);
        assert!(t.irq_level());
        assert_eq!(t.take_tx_frames(), alloc::vec![f.clone()]);
        t.write(0x64, 4, 1, &mut m);
        rx.add(&mut m, &[(0x9000, 1526, true)]);
        t.write(0x50, 4, 0, &mut m);
        assert!(!t.irq_level());
        assert!(t.push_rx_frame(&f, &mut m));
        assert!(t.irq_level());
        assert_eq!(rx.used_elem(&m, 0), (0, 86));
        assert_eq!(&m.as_slice()[0x900c..0x900c + 74], &f[..]);
    }

    #[test]
    fn channel_tx_interrupts() {
        let mut m = VecMemory::new(0x40000);
        let mut tx = Driver::new(0x2000, 8);
        let mut t = setup(Device::Console(VirtioConsole::new_channel()), &mut m, &[Driver::new(0x1000, 8), Driver::new(0x2000, 8)]);
        m.write(0x8000, b"frame").unwrap();
        tx.add(&mut m, &[(0x8000, 5, false)]);
        t.write(0x50, 4, 1, &mut m);
        let mut ring = ConsoleRing::try_new(64).unwrap();
        t.process_console_tx(&mut m, &mut ring);
        assert_eq!(tx.used_elem(&m, 0), (0, 0));
        assert!(t.irq_level());
    }

    #[test]
    fn console_tx_rx() {
        let mut m = VecMemory::new(0x40000);
        let mut rx = Driver::new(0x1000, 8);
        let mut tx = Driver::new(0x2000, 8);
        let mut t = setup(Device::Console(VirtioConsole::new()), &mut m, &[Driver::new(0x1000, 8), Driver::new(0x2000, 8)]);
        m.write(0x8000, b"hello\n").unwrap();
        tx.add(&mut m, &[(0x8000, 6, false)]);
        t.write(0x50, 4, 1, &mut m);
        let mut ring = ConsoleRing::try_new(64).unwrap();
        t.process_console_tx(&mut m, &mut ring);
        let mut o = [0u8; 64];
        assert_eq!(ring.pop(&mut o), 6);
        assert_eq!(&o[..6], b"hello\n");
        // Used at once, without an interrupt (another vCPU taking it races Linux's hvc writer).
        assert_eq!(tx.used_elem(&m, 0), (0, 0));
        assert!(!t.irq_level());
        // A chain longer than MAX_TX_CHAIN: only its first MAX_TX_CHAIN bytes are taken.
        use super::super::console::MAX_TX_CHAIN;
        tx.add(&mut m, &[(0x10000, MAX_TX_CHAIN as u32 + 100, false)]);
        t.write(0x50, 4, 1, &mut m);
        let mut ring = ConsoleRing::try_new(64 * 1024).unwrap();
        t.process_console_tx(&mut m, &mut ring);
        assert_eq!(ring.len() as u64, MAX_TX_CHAIN);
        assert_eq!(ring.dropped, 100);
        // Nothing pending: nothing happens.
        t.process_console_tx(&mut m, &mut ring);
        assert_eq!(ring.len() as u64, MAX_TX_CHAIN);
        rx.add(&mut m, &[(0x9000, 4, true)]);
        t.write(0x50, 4, 0, &mut m);
        if let Device::Console(c) = &mut t.dev {
            c.push_input(b"abcdef");
        }
        t.kick_rx(&mut m);
        assert_eq!(&m.as_slice()[0x9000..0x9004], b"abcd");
        assert_eq!(rx.used_elem(&m, 0), (0, 4));
        // feature negotiation failure: no VERSION_1
        let mut t2 = VirtioMmio::new(0, 5, Device::Console(VirtioConsole::new()), 16);
        t2.write(0x70, 4, 3, &mut m);
        t2.write(0x70, 4, 0xb, &mut m);
        assert_eq!(t2.read(0x70, 4) & 8, 0);
        // bad queue config refused
        t2.write(0x38, 4, 3, &mut m);
        t2.write(0x44, 4, 1, &mut m);
        assert_eq!(t2.read(0x44, 4), 0);
    }
}
