//! A virtio 1.x PCI ("modern") transport for ring-3 drivers: the same registers as
//! `virtio_drivers`' `PciTransport`, but found from the addresses the kernel passes (the
//! kernel owns PCI configuration space; the driver is granted only the device's structures:
//! common configuration, notification area, ISR and device configuration).

use crate::Mmio;
use alloc::rc::Rc;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// `VIRTIO_MSI_NO_VECTOR`.
pub const NO_VECTOR: u16 = 0xffff;

// virtio_pci_common_cfg offsets
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// The mapped structures (shared: the driver makes more than one transport over them).
/// Every access is bounds-checked against its window: an offset the device reports that lies
/// outside (a notification offset, say) panics the driver, never reaches other memory.
pub struct UserPciTransport {
    pub device_type: DeviceType,
    pub common: Rc<Mmio>,
    pub notify: Rc<Mmio>,
    pub notify_multiplier: u32,
    pub isr: Rc<Mmio>,
    pub device: Rc<Mmio>,
    pub device_len: usize,
}

impl UserPciTransport {
    fn select(&mut self, q: u16) {
        self.common.write_u16(QUEUE_SELECT, q);
    }
    fn write64(&mut self, off: u64, v: u64) {
        self.common.write_u32(off, v as u32);
        self.common.write_u32(off + 4, (v >> 32) as u32);
    }
    /// Route configuration changes to MSI-X entry `v` (or none). Returns what the device took.
    pub fn set_config_vector(&mut self, v: u16) -> u16 {
        self.common.write_u16(CONFIG_MSIX_VECTOR, v);
        self.common.read_u16(CONFIG_MSIX_VECTOR)
    }
    /// Route queue `q`'s interrupts to MSI-X entry `v` (or none). Returns what the device took
    /// (`NO_VECTOR` if it refused).
    pub fn set_queue_vector(&mut self, q: u16, v: u16) -> u16 {
        self.select(q);
        self.common.write_u16(QUEUE_MSIX_VECTOR, v);
        self.common.read_u16(QUEUE_MSIX_VECTOR)
    }
}

impl Transport for UserPciTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }
    fn read_device_features(&mut self) -> u64 {
        self.common.write_u32(DEVICE_FEATURE_SELECT, 0);
        let lo = self.common.read_u32(DEVICE_FEATURE) as u64;
        self.common.write_u32(DEVICE_FEATURE_SELECT, 1);
        let hi = self.common.read_u32(DEVICE_FEATURE) as u64;
        hi << 32 | lo
    }
    fn write_driver_features(&mut self, f: u64) {
        self.common.write_u32(DRIVER_FEATURE_SELECT, 0);
        self.common.write_u32(DRIVER_FEATURE, f as u32);
        self.common.write_u32(DRIVER_FEATURE_SELECT, 1);
        self.common.write_u32(DRIVER_FEATURE, (f >> 32) as u32);
    }
    fn max_queue_size(&mut self, q: u16) -> u32 {
        self.select(q);
        self.common.read_u16(QUEUE_SIZE) as u32
    }
    fn notify(&mut self, q: u16) {
        self.select(q);
        let off = self.common.read_u16(QUEUE_NOTIFY_OFF) as u64;
        self.notify.write_u16(off * self.notify_multiplier as u64, q);
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.common.read_u8(DEVICE_STATUS) as u32)
    }
    fn set_status(&mut self, s: DeviceStatus) {
        self.common.write_u8(DEVICE_STATUS, s.bits() as u8);
    }
    fn set_guest_page_size(&mut self, _: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(&mut self, q: u16, size: u32, desc: PhysAddr, driver: PhysAddr, device: PhysAddr) {
        self.select(q);
        self.common.write_u16(QUEUE_SIZE, size as u16);
        self.write64(QUEUE_DESC, desc);
        self.write64(QUEUE_DRIVER, driver);
        self.write64(QUEUE_DEVICE, device);
        self.common.write_u16(QUEUE_ENABLE, 1);
    }
    fn queue_unset(&mut self, _q: u16) {
        // A queue cannot be disabled one by one in virtio 1.x; a device reset does it.
    }
    fn queue_used(&mut self, q: u16) -> bool {
        self.select(q);
        self.common.read_u16(QUEUE_ENABLE) == 1
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::from_bits_retain(self.isr.read_u8(0) as u32)
    }
    fn read_config_generation(&self) -> u32 {
        self.common.read_u8(CONFIG_GENERATION) as u32
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let n = core::mem::size_of::<T>();
        if offset + n > self.device_len {
            return Err(Error::ConfigSpaceTooSmall);
        }
        let mut buf = [0u8; 64];
        if n > buf.len() {
            return Err(Error::ConfigSpaceTooSmall);
        }
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self.device.try_read_u8((offset + i) as u64).ok_or(Error::ConfigSpaceTooSmall)?;
        }
        T::read_from_bytes(&buf[..n]).map_err(|_| Error::ConfigSpaceTooSmall)
    }
    fn write_config_space<T: IntoBytes + Immutable>(&mut self, offset: usize, value: T) -> Result<(), Error> {
        let bytes = value.as_bytes();
        if offset + bytes.len() > self.device_len {
            return Err(Error::ConfigSpaceTooSmall);
        }
        if offset + bytes.len() > self.device.len() as usize {
            return Err(Error::ConfigSpaceTooSmall);
        }
        for (i, b) in bytes.iter().enumerate() {
            self.device.write_u8((offset + i) as u64, *b);
        }
        Ok(())
    }
}
