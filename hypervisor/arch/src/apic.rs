//! Local APIC (x2APIC via MSRs when available, xAPIC via MMIO otherwise), its periodic timer,
//! and the legacy 8259 PIC (remapped and masked: all interrupts go through the APICs).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::instructions::port::Port;

pub const TIMER_VECTOR: u8 = 0x30;
pub use crate::trap::SPURIOUS_VECTOR;
pub const ERROR_VECTOR: u8 = 0xfe;
/// Inter-processor "reschedule" interrupt.
pub const RESCHED_VECTOR: u8 = 0x40;

const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
static BUS_HZ: AtomicU64 = AtomicU64::new(0);
static TICK_HOOK: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

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

fn on_timer(f: &mut crate::trap::TrapFrame) {
    // `ticks()` is the boot CPU's count, so it keeps meaning "timer periods" on any CPU count.
    if crate::percpu::cpu_index() == 0 {
        TICKS.fetch_add(1, Ordering::Relaxed);
    }
    let h = TICK_HOOK.load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: only `set_tick_hook` stores into TICK_HOOK, always a valid handler fn.
        let h: crate::trap::IrqHandler = unsafe { core::mem::transmute(h) };
        h(f);
    }
}

/// Called on every CPU's timer interrupt (the scheduler's preemption point).
pub fn set_tick_hook(f: crate::trap::IrqHandler) {
    TICK_HOOK.store(f as usize, Ordering::Release);
}

fn write_icr(dest: u32, low: u32) {
    // Interrupts off: in xAPIC mode an IPI is two register writes, and a task preempted between
    // them could resume on another CPU and send with that CPU's stale destination (vCPU tasks
    // send kicks with interrupts on).
    crate::cpu::without_interrupts(|| write_icr_now(dest, low))
}

fn write_icr_now(dest: u32, low: u32) {
    if X2APIC.load(Ordering::Relaxed) {
        // SAFETY: x2APIC ICR (MSR 0x830): one 64-bit write sends the IPI.
        unsafe { crate::cpu::wrmsr(0x830, ((dest as u64) << 32) | low as u64) }
    } else {
        write(REG_ICR_HIGH, dest << 24);
        write(REG_ICR_LOW, low);
        while read(REG_ICR_LOW) & (1 << 12) != 0 {
            core::hint::spin_loop();
        }
    }
}

/// INIT IPI (assert, level) to `apic_id`. Not exported: INIT resets a running CPU wherever it
/// is (holding a lock, half-way through a write); only AP start-up sends it.
pub(crate) fn send_init(apic_id: u32) {
    write_icr(apic_id, 0x0000_4500);
}

/// Startup IPI: the AP starts in real mode at `page << 12` (AP start-up only).
pub(crate) fn send_sipi(apic_id: u32, page: u8) {
    write_icr(apic_id, 0x0000_4600 | page as u32);
}

/// Fixed-delivery IPI with `vector` to `apic_id`; false (nothing sent) for a vector below 32:
/// delivered as an interrupt, an exception vector with an error code (8, 10–14, 17, 21, 29,
/// 30) would make the entry stub take a word of the interrupted frame for the error code.
pub fn send_ipi(apic_id: u32, vector: u8) -> bool {
    if vector < 32 {
        return false;
    }
    write_icr(apic_id, 0x0000_4000 | vector as u32);
    true
}

/// Send an NMI to `apic_id` (delivery mode NMI; tests of the NMI path).
pub fn send_nmi(apic_id: u32) {
    write_icr(apic_id, 0x0000_4400);
}

/// The APIC mode every CPU uses: 0 not chosen yet, 1 xAPIC, 2 x2APIC (the first `init`'s).
static MODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Enable this CPU's local APIC. Returns (apic id, x2apic?). The mode is chosen by the first
/// call (x2APIC only where CPUID has it) and kept for every CPU: register accesses go through
/// one global mode, and switching it under a running CPU would send them to an unmapped xAPIC
/// window.
pub fn init(x2apic: bool) -> Result<(u32, bool), crate::paging::PagingError> {
    let want = if x2apic && crate::cpu::cpuid(1, 0).2 & (1 << 21) != 0 { 2 } else { 1 };
    let x2apic = match MODE.compare_exchange(0, want, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => want == 2,
        Err(m) => m == 2,
    };
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
    BUS_HZ.store(bus_hz, Ordering::Relaxed);
    let count = (bus_hz / hz as u64).max(1) as u32;
    write(REG_LVT_TIMER, (1 << 17) | TIMER_VECTOR as u32); // periodic
    write(REG_TIMER_INIT, count);
    TIMER_HZ.store(hz as u64, Ordering::Relaxed);
    bus_hz * 16
}

/// Start this (secondary) CPU's LAPIC timer with the boot CPU's calibration.
pub fn start_timer_secondary() {
    let hz = TIMER_HZ.load(Ordering::Relaxed).max(1);
    let count = (BUS_HZ.load(Ordering::Relaxed) / hz).max(1) as u32;
    write(REG_TIMER_DIV, 0b0011);
    write(REG_LVT_TIMER, (1 << 17) | TIMER_VECTOR as u32);
    write(REG_TIMER_INIT, count);
}

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

pub fn timer_hz() -> u64 {
    TIMER_HZ.load(Ordering::Relaxed)
}

static IOAPIC_VIRT: AtomicU64 = AtomicU64::new(0);
static IOAPIC_PHYS: AtomicU64 = AtomicU64::new(0);
static IOAPIC_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// The (first) IOAPIC's registers, mapped uncached on first use. The address must not be RAM
/// (`paging::map_mmio` refuses it: the register writes below would land in it) and, once
/// mapped, every later call must name the same IOAPIC (`NotDevice` otherwise).
fn ioapic_virt(ioapic_phys: u64) -> Result<u64, crate::paging::PagingError> {
    crate::cpu::without_interrupts(|| {
        let _g = IOAPIC_LOCK.lock();
        if IOAPIC_VIRT.load(Ordering::Acquire) == 0 {
            let v = crate::paging::map_mmio(ioapic_phys, 0x20)?;
            IOAPIC_PHYS.store(ioapic_phys, Ordering::Release);
            IOAPIC_VIRT.store(v, Ordering::Release);
        }
        if IOAPIC_PHYS.load(Ordering::Acquire) != ioapic_phys {
            return Err(crate::paging::PagingError::NotDevice);
        }
        Ok(IOAPIC_VIRT.load(Ordering::Acquire))
    })
}

/// Read IOAPIC register `reg` (1 = version) through IOREGSEL/IOWIN.
pub fn ioapic_read(ioapic_phys: u64, reg: u32) -> Result<u32, crate::paging::PagingError> {
    let base = ioapic_virt(ioapic_phys)?;
    Ok(crate::cpu::without_interrupts(|| {
        // SAFETY: IOREGSEL (base) and IOWIN (base + 0x10) of the IOAPIC mapped uncached above.
        unsafe {
            core::ptr::write_volatile(base as *mut u32, reg);
            core::ptr::read_volatile((base + 0x10) as *const u32)
        }
    }))
}

/// Write redirection entry `pin` (high dword first, so the entry is complete when the low
/// dword unmasks it).
fn ioapic_write_entry(ioapic_phys: u64, pin: u8, low: u32, high: u32) -> Result<(), crate::paging::PagingError> {
    let base = ioapic_virt(ioapic_phys)?;
    let reg = 0x10 + 2 * pin as u32;
    let w = |r: u32, v: u32| {
        // SAFETY: IOREGSEL (base) and IOWIN (base + 0x10) of the IOAPIC mapped uncached above.
        unsafe {
            core::ptr::write_volatile(base as *mut u32, r);
            core::ptr::write_volatile((base + 0x10) as *mut u32, v);
        }
    };
    crate::cpu::without_interrupts(|| {
        w(reg + 1, high);
        w(reg, low);
    });
    Ok(())
}

/// Route IOAPIC input `pin` to the CPU with `dest_apic` as an NMI (delivery mode 100b),
/// edge-triggered, active high, unmasked: tests of the NMI path while a guest runs.
pub fn ioapic_route_nmi(ioapic_phys: u64, pin: u8, dest_apic: u32) -> Result<(), crate::paging::PagingError> {
    ioapic_write_entry(ioapic_phys, pin, 4 << 8, dest_apic << 24)
}

/// Mask IOAPIC input `pin` (its redirection entry's bit 16).
pub fn ioapic_mask(ioapic_phys: u64, pin: u8) -> Result<(), crate::paging::PagingError> {
    ioapic_write_entry(ioapic_phys, pin, 1 << 16, 0)
}

/// Route IOAPIC input `pin` (of the IOAPIC at physical `ioapic_phys`) to `vector` on the CPU
/// with `dest_apic`, edge-triggered, active high, unmasked.
/// A vector below 32 is refused (`BadVector`, see [`send_ipi`]).
pub fn ioapic_route(ioapic_phys: u64, pin: u8, vector: u8, dest_apic: u32) -> Result<(), crate::paging::PagingError> {
    if vector < 32 {
        return Err(crate::paging::PagingError::BadVector);
    }
    let base = ioapic_virt(ioapic_phys)?;
    let reg = 0x10 + 2 * pin as u32;
    let w = |r: u32, v: u32| {
        // SAFETY: IOREGSEL (base) and IOWIN (base + 0x10) of the IOAPIC mapped uncached above.
        unsafe {
            core::ptr::write_volatile(base as *mut u32, r);
            core::ptr::write_volatile((base + 0x10) as *mut u32, v);
        }
    };
    crate::cpu::without_interrupts(|| {
        w(reg + 1, dest_apic << 24);
        w(reg, vector as u32);
    });
    Ok(())
}
