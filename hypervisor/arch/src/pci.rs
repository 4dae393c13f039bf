//! PCI configuration space through the legacy I/O ports (0xcf8 address, 0xcfc data), as a
//! `virtio_drivers` [`ConfigurationAccess`], plus a bus-0..255 scan.
//!
//! Legacy port access works on every QEMU PC machine (pc, q35); ECAM (ACPI MCFG) would only be
//! needed for extended (PCIe) config space, which no driver here uses. On `-M microvm` there is
//! no PCI host: every read returns all-ones and the scan finds nothing.

use alloc::vec::Vec;
use spin::Mutex;
pub use virtio_drivers::transport::pci::bus::DeviceFunction;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunctionInfo, HeaderType, PciRoot};
use x86_64::instructions::port::Port;

/// The 0xcf8/0xcfc pair is one shared resource: an address write and the data access that
/// follows must not interleave with another CPU's.
static CF8_LOCK: Mutex<()> = Mutex::new(());

/// Legacy port-I/O configuration mechanism #1. Only this crate makes one: a configuration
/// write can move a device's BAR over RAM or let it master the bus, so which registers are
/// written is decided here (virtio set-up, MSI-X, quiescing), not by safe callers:
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// let _ = catenary_arch::pci::PortCam;
/// ```
#[derive(Debug)]
pub struct PortCam(());

impl PortCam {
    pub(crate) fn new() -> PortCam {
        PortCam(())
    }
}

fn address(df: DeviceFunction, reg: u8) -> u32 {
    0x8000_0000 | (df.bus as u32) << 16 | (df.device as u32 & 0x1f) << 11 | (df.function as u32 & 7) << 8 | (reg as u32 & 0xfc)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, reg: u8) -> u32 {
        crate::cpu::without_interrupts(|| {
            let _g = CF8_LOCK.lock();
            let mut a: Port<u32> = Port::new(0xcf8);
            let mut d: Port<u32> = Port::new(0xcfc);
            // SAFETY: 0xcf8/0xcfc are the PCI configuration mechanism #1 ports; the lock keeps
            // the address/data pair atomic. Reading config space has no side effects.
            unsafe {
                a.write(address(df, reg));
                d.read()
            }
        })
    }

    fn write_word(&mut self, df: DeviceFunction, reg: u8, data: u32) {
        crate::cpu::without_interrupts(|| {
            let _g = CF8_LOCK.lock();
            let mut a: Port<u32> = Port::new(0xcf8);
            let mut d: Port<u32> = Port::new(0xcfc);
            // SAFETY: as above; a `PortCam` exists only inside this crate, whose callers write
            // only the command register, BARs and capabilities of devices the kernel drives.
            unsafe {
                a.write(address(df, reg));
                d.write(data);
            }
        })
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam(())
    }
}

/// One function found by [`scan`].
#[derive(Clone, Debug)]
pub struct PciFunction {
    pub df: DeviceFunction,
    pub info: DeviceFunctionInfo,
}

/// The PCI root through legacy ports (not exported: it writes configuration space).
pub(crate) fn root() -> PciRoot<PortCam> {
    PciRoot::new(PortCam(()))
}

/// Every function on every bus reachable from bus 0 through PCI-PCI bridges.
pub fn scan() -> Vec<PciFunction> {
    let root = root();
    let mut out = Vec::new();
    let mut buses = alloc::vec![0u8];
    let mut seen = [false; 256];
    while let Some(bus) = buses.pop() {
        if seen[bus as usize] {
            continue;
        }
        seen[bus as usize] = true;
        for (df, info) in root.enumerate_bus(bus) {
            if info.header_type == HeaderType::PciPciBridge {
                let r = PortCam(()).read_word(df, 0x18);
                let secondary = (r >> 8) as u8;
                if secondary != 0 {
                    buses.push(secondary);
                }
            }
            out.push(PciFunction { df, info });
        }
    }
    out
}
