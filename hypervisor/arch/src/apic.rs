//! Local APIC (x2APIC via MSRs when available, xAPIC via MMIO otherwise), its periodic timer,
//! and the legacy 8259 PIC (remapped and masked: all interrupts go through the APICs).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::instructions::port::Port;

pub const TIMER_VECTOR: u8 = 0x30;
pub const SPURIOUS_VECTOR: u8 = 0xff;
pub const ERROR_VECTOR: u8 = 0xfe;

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: u32 = 0x20;
const REG_TPR: u32 = 0x80;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_LVT_LINT1: u32 = 0x360;
const REG_LVT_ERROR: u32 = 0x370;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CUR: u32 = 0x390;
const REG_TIMER_DIV: u32 = 0x3e0;

static X2APIC: AtomicBool = AtomicBool::new(false);
static XAPIC_VIRT: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);

fn read(reg: u32) -> u32 {
    if X2APIC.load(Ordering::Relaxed) {
        crate::cpu::rdmsr(0x800 + (reg >> 4)) as u32
    } else {
        // SAFETY: XAPIC_VIRT maps the LAPIC page uncached (set in `init`).
        unsafe { core::ptr::read_volatile((XAPIC_VIRT.load(Ordering::Relaxed) + reg as u64) as *const u32) }
    }
}

fn write(reg: u32, v: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: x2APIC register MSRs; values are valid LAPIC settings.
        unsafe { crate::cpu::wrmsr(0x800 + (reg >> 4), v as u64) }
    } else {
        // SAFETY: XAPIC_VIRT maps the LAPIC page uncached (set in `init`).
        unsafe { core::ptr::write_volatile((XAPIC_VIRT.load(Ordering::Relaxed) + reg as u64) as *mut u32, v) }
    }
}

/// Remap the 8259 pair to vectors 0x20..0x2f (away from exceptions) and mask every line.
pub fn disable_pic() {
    // SAFETY: standard 8259 initialisation sequence on ports 0x20/0x21/0xa0/0xa1.
    unsafe {
        let mut c1 = Port::<u8>::new(0x20);
        let mut d1 = Port::<u8>::new(0x21);
        let mut c2 = Port::<u8>::new(0xa0);
        let mut d2 = Port::<u8>::new(0xa1);
        c1.write(0x11);
        c2.write(0x11);
        d1.write(0x20);
        d2.write(0x28);
        d1.write(4);
        d2.write(2);
        d1.write(1);
        d2.write(1);
        d1.write(0xff);
        d2.write(0xff);
    }
}

fn eoi() {
    write(REG_EOI, 0);
}

fn on_timer(_f: &mut crate::trap::TrapFrame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// Enable this CPU's local APIC. Returns (apic id, x2apic?).
pub fn init(x2apic: bool) -> Result<(u32, bool), crate::paging::PagingError> {
    let base = crate::cpu::rdmsr(IA32_APIC_BASE);
    if x2apic {
        // SAFETY: EN | EXTD switches the LAPIC to x2APIC mode (CPUID says it is supported).
        unsafe { crate::cpu::wrmsr(IA32_APIC_BASE, base | (1 << 11) | (1 << 10)) };
        X2APIC.store(true, Ordering::Relaxed);
    } else {
        if XAPIC_VIRT.load(Ordering::Relaxed) == 0 {
            let v = crate::paging::map_mmio(base & 0xf_ffff_f000, 4096)?;
            XAPIC_VIRT.store(v, Ordering::Relaxed);
        }
        // SAFETY: EN keeps the LAPIC enabled in xAPIC mode.
        unsafe { crate::cpu::wrmsr(IA32_APIC_BASE, base | (1 << 11)) };
    }
    crate::trap::set_eoi_hook(eoi);
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, 1 << 16); // masked: legacy PIC is off
    write(REG_LVT_LINT1, 4 << 8); // NMI
    write(REG_LVT_ERROR, ERROR_VECTOR as u32);
    write(REG_SVR, 0x100 | SPURIOUS_VECTOR as u32);
    let id = if x2apic { read(REG_ID) } else { read(REG_ID) >> 24 };
    Ok((id, x2apic))
}

/// Calibrate the LAPIC timer against the TSC and start it periodically at `hz`.
/// Returns the LAPIC timer's input frequency.
pub fn start_timer(hz: u32) -> u64 {
    crate::trap::register_irq(TIMER_VECTOR, on_timer);
    write(REG_TIMER_DIV, 0b0011); // divide by 16
    write(REG_LVT_TIMER, 1 << 16); // masked one-shot
    write(REG_TIMER_INIT, u32::MAX);
    crate::time::spin_ns(10_000_000);
    let elapsed = u32::MAX - read(REG_TIMER_CUR);
    write(REG_TIMER_INIT, 0);
    let bus_hz = elapsed as u64 * 100; // ticks per second at divide-by-16
    let count = (bus_hz / hz as u64).max(1) as u32;
    write(REG_LVT_TIMER, (1 << 17) | TIMER_VECTOR as u32); // periodic
    write(REG_TIMER_INIT, count);
    TIMER_HZ.store(hz as u64, Ordering::Relaxed);
    bus_hz * 16
}

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

pub fn timer_hz() -> u64 {
    TIMER_HZ.load(Ordering::Relaxed)
}
