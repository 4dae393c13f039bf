//! SMP: AP bring-up with INIT-SIPI-SIPI through a 16-bit trampoline copied to physical 0x8000
//! (`asm/smp.s`), each CPU's per-CPU block (`percpu`), and which CPUs are online.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

const TRAMPOLINE_PHYS: u64 = 0x8000;

pub use crate::percpu::{cpu_index, PerCpu, MAX_CPUS};

static ONLINE: AtomicUsize = AtomicUsize::new(0);
static AP_ALIVE: AtomicU64 = AtomicU64::new(u64::MAX);
static AP_HOOK: AtomicUsize = AtomicUsize::new(0);
static CPU_APIC: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Set up this CPU's per-CPU block (GS base), its syscall stack and the syscall MSRs, as CPU
/// `index`. Refused (`Busy`) for an index out of range or already taken: two CPUs sharing an
/// index would share per-CPU state (the TLB-flush records that decide when freed memory may
/// be reused, the loaded-address-space records, VMX/SVM per-CPU areas).
pub fn init_this_cpu(index: usize, apic_id: u32, sel: &crate::gdt::Selectors) -> Result<(), crate::paging::PagingError> {
    if !claim_index(index) {
        return Err(crate::paging::PagingError::AlreadyMapped);
    }
    let top = crate::paging::alloc_stack(8)?.top();
    CPU_APIC[index].store(apic_id, Ordering::Release);
    crate::uspace::init_syscall_msrs(sel);
    crate::percpu::install(Box::leak(Box::new(PerCpu::new(index, apic_id, top, sel.tss_io))));
    ONLINE.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

/// CPU indices handed out (`start_ap` on the boot CPU, `init_this_cpu` on each CPU).
static CLAIMED: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);

fn claim(set: &AtomicU64, index: usize) -> bool {
    index < MAX_CPUS && set.fetch_or(1 << index, Ordering::SeqCst) & (1 << index) == 0
}
fn claim_index(index: usize) -> bool {
    claim(&CLAIMED, index)
}

pub fn online_cpus() -> usize {
    ONLINE.load(Ordering::Acquire)
}

pub fn apic_id_of(cpu: usize) -> Option<u32> {
    CPU_APIC.get(cpu).map(|a| a.load(Ordering::Acquire)).filter(|a| *a != u32::MAX)
}

/// What an AP runs once it is up (the kernel's per-CPU scheduler entry). Never returns.
pub fn set_ap_entry(f: fn(usize) -> !) {
    AP_HOOK.store(f as usize, Ordering::Release);
}

extern "C" {
    static arch_ap_tramp_start: u8;
    static arch_ap_tramp_end: u8;
    static arch_ap_tramp_data: u8;
    static arch_ap_entry64: u8;
    static boot_pml4: u8;
}

/// Why `start_ap` refused an index without trying.
pub const START_REFUSED: &str = "CPU index out of range, the boot CPU's, or started already";

/// Start the AP with `apic_id` as CPU `index`; waits until it reports in (or ~1 s). Each
/// index is started once (index 0 is the boot CPU's): a second start is refused.
pub fn start_ap(index: usize, apic_id: u32) -> Result<(), &'static str> {
    if index == 0 || !claim(&STARTED, index) {
        return Err(START_REFUSED);
    }
    #[cfg(feature = "kernel")]
    if crate::limine::booted_by_limine() {
        let stack = crate::paging::alloc_stack(16).map_err(|_| "no memory for the AP stack")?;
        AP_ALIVE.store(u64::MAX, Ordering::SeqCst);
        crate::limine::start_ap(index, apic_id, stack)?;
        return wait_alive(index, 1_400_000_000);
    }
    let start = core::ptr::addr_of!(arch_ap_tramp_start) as u64;
    let end = core::ptr::addr_of!(arch_ap_tramp_end) as u64;
    let data_off = core::ptr::addr_of!(arch_ap_tramp_data) as u64 - start;
    let boot_cr3 = crate::paging::translate(core::ptr::addr_of!(boot_pml4) as u64).ok_or("boot page tables unmapped")?.0;
    let kcr3 = crate::paging::kernel_pml4();
    if boot_cr3 >= 1 << 32 {
        return Err("boot page tables above 4 GiB");
    }
    let stack_top = crate::paging::alloc_stack(16).map_err(|_| "no memory for the AP stack")?.top();
    let dst = crate::paging::p2v(TRAMPOLINE_PHYS);
    // SAFETY: physical 0x8000 lies in the first MiB, which the frame allocator never hands out;
    // the direct map covers it. The blob is position-dependent code assembled for 0x8000.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, dst as *mut u8, (end - start) as usize);
        let d = (dst + data_off) as *mut u64;
        d.write_volatile(boot_cr3);
        d.add(1).write_volatile(core::ptr::addr_of!(arch_ap_entry64) as u64);
        d.add(2).write_volatile(kcr3);
        d.add(3).write_volatile(stack_top);
        d.add(4).write_volatile(index as u64);
    }
    AP_ALIVE.store(u64::MAX, Ordering::SeqCst);
    crate::apic::send_init(apic_id);
    crate::time::spin_ns(10_000_000);
    for _ in 0..2 {
        crate::apic::send_sipi(apic_id, (TRAMPOLINE_PHYS >> 12) as u8);
        let t0 = crate::time::now_ns();
        while crate::time::now_ns() - t0 < 200_000_000 {
            if AP_ALIVE.load(Ordering::SeqCst) == index as u64 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
    }
    // Give slow emulators a little longer before declaring the CPU dead.
    let t0 = crate::time::now_ns();
    while crate::time::now_ns() - t0 < 1_000_000_000 {
        if AP_ALIVE.load(Ordering::SeqCst) == index as u64 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("AP did not come up")
}

#[cfg_attr(not(feature = "kernel"), allow(dead_code))] // (used by the kernel build only)
fn wait_alive(index: usize, ns: u64) -> Result<(), &'static str> {
    let t0 = crate::time::now_ns();
    while crate::time::now_ns() - t0 < ns {
        if AP_ALIVE.load(Ordering::SeqCst) == index as u64 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("AP did not come up")
}

static AP_X2APIC: AtomicBool = AtomicBool::new(false);
pub fn set_x2apic(on: bool) {
    AP_X2APIC.store(on, Ordering::Release);
}

/// Rust entry of an AP, on its own stack and the kernel page tables.
#[cfg(feature = "kernel")]
#[no_mangle]
extern "C" fn arch_ap_main(index: u64) -> ! {
    let index = index as usize;
    // Same CPU state as the boot CPU: global pages, SSE, write protect.
    crate::cpu::cr4_set((1 << 7) | (1 << 9) | (1 << 10));
    let mut ist = [0u64; 5];
    for top in ist.iter_mut() {
        match crate::paging::alloc_stack((crate::gdt::IST_STACK_SIZE / 4096) as u64) {
            Ok(s) => *top = s.top(),
            // (an IST entry of 0 would run the next exception on whatever is at address 0)
            Err(_) => {
                crate::println!("cpu {}: no memory for exception stacks", index);
                crate::cpu::halt_forever();
            }
        }
    }
    let sel = crate::gdt::init_cpu(ist);
    crate::trap::load();
    crate::uspace::enable_protections();
    let (apic_id, _) = crate::apic::init(AP_X2APIC.load(Ordering::Acquire)).unwrap_or((0, false));
    if init_this_cpu(index, apic_id, sel).is_err() {
        crate::println!("cpu {}: no memory for per-CPU data", index);
        crate::cpu::halt_forever();
    }
    crate::apic::start_timer_secondary();
    AP_ALIVE.store(index as u64, Ordering::SeqCst);
    let h = AP_HOOK.load(Ordering::Acquire);
    if h == 0 {
        loop {
            crate::cpu::wait_for_interrupt();
        }
    }
    // SAFETY: only `set_ap_entry` stores into AP_HOOK, always a valid fn(usize) -> !.
    let f: fn(usize) -> ! = unsafe { core::mem::transmute(h) };
    f(index)
}
