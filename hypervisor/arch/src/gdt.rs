//! Per-CPU GDT and TSS. Every IDT gate uses an IST stack (the precompiled `core` uses the
//! red zone, so an interrupt must never push onto the interrupted stack):
//! IST1 exceptions, IST2 device interrupts, IST3 double fault, IST4 NMI, IST5 machine check.
//! Each IST stack has an unmapped guard page below it (see `paging::guard_pages`).

use alloc::boxed::Box;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const IST_EXCEPTION: u16 = 1;
pub const IST_IRQ: u16 = 2;
pub const IST_DOUBLE_FAULT: u16 = 3;
pub const IST_NMI: u16 = 4;
pub const IST_MACHINE_CHECK: u16 = 5;

pub const IST_STACK_SIZE: usize = 32 * 1024;

/// A stack with its guard page directly below it.
#[repr(C, align(4096))]
pub struct GuardedStack {
    pub guard: [u8; 4096],
    pub stack: [u8; IST_STACK_SIZE],
}

/// The boot CPU's IST stacks live in .bss so traps work before the frame allocator exists.
static mut BSP_IST: [GuardedStack; 5] = [const { GuardedStack { guard: [0; 4096], stack: [0; IST_STACK_SIZE] } }; 5];

pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
    /// Address of this CPU's `TssWithIo` (the I/O bitmap is switched per task).
    pub tss_io: u64,
}

/// A TSS followed by a full I/O permission bitmap (8192 bytes + the terminating 0xff). All
/// ports start denied; `uspace::set_io_bitmap` loads a driver task's grants on context switch.
#[repr(C)]
pub struct TssWithIo {
    pub tss: TaskStateSegment,
    pub iomap: [u8; 8193],
}

pub struct CpuTables {
    pub gdt: GlobalDescriptorTable<8>,
    pub tss: TssWithIo,
}

/// Guard pages of the boot CPU's IST stacks (left unmapped by the kernel page tables).
pub fn bsp_guard_pages() -> [u64; 5] {
    let base = core::ptr::addr_of!(BSP_IST) as u64;
    let sz = core::mem::size_of::<GuardedStack>() as u64;
    [base, base + sz, base + 2 * sz, base + 3 * sz, base + 4 * sz]
}

/// Load a GDT and TSS for the boot CPU and reload the segment registers. Once: a second call
/// panics (it would hand the boot CPU's exception stacks to a second TSS).
pub fn init_bsp() -> &'static Selectors {
    static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    assert!(!DONE.swap(true, core::sync::atomic::Ordering::SeqCst), "gdt::init_bsp called twice");
    // SAFETY: only addresses are computed (no reference to the stacks is made): `base.add(i)`
    // for i < 5 stays inside the five-element BSP_IST array, and one past the end of element i
    // is at most one past the array.
    let tops: [u64; 5] = unsafe {
        let base = core::ptr::addr_of_mut!(BSP_IST) as *mut GuardedStack;
        core::array::from_fn(|i| (base.add(i) as u64) + core::mem::size_of::<GuardedStack>() as u64)
    };
    init_cpu(tops)
}

/// Build and load this CPU's GDT/TSS with the given IST stack tops (IST1..IST5). Not
/// exported: the tops are raw addresses the CPU will push exception frames to.
///
/// ```compile_fail
/// #![forbid(unsafe_code)]
/// let _ = catenary_arch::gdt::init_cpu([0x1000; 5]);
/// ```
pub(crate) fn init_cpu(ist_tops: [u64; 5]) -> &'static Selectors {
    let mut tss = TaskStateSegment::new();
    for (i, top) in ist_tops.iter().enumerate() {
        tss.interrupt_stack_table[i] = VirtAddr::new(*top);
    }
    tss.iomap_base = core::mem::size_of::<TaskStateSegment>() as u16;
    let tables: &'static mut CpuTables =
        Box::leak(Box::new(CpuTables { gdt: GlobalDescriptorTable::empty(), tss: TssWithIo { tss, iomap: [0xff; 8193] } }));
    // SAFETY: `tables` is leaked, so the TSS and its I/O bitmap outlive the GDT that points to it.
    let (tss_ref, iomap_ref): (&'static TaskStateSegment, &'static [u8]) =
        unsafe { (&*(core::ptr::addr_of!(tables.tss.tss)), &*(core::ptr::addr_of!(tables.tss.iomap))) };
    let tss_io = core::ptr::addr_of!(tables.tss) as u64;
    let kernel_code = tables.gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = tables.gdt.append(Descriptor::kernel_data_segment());
    let user_data = tables.gdt.append(Descriptor::user_data_segment());
    let user_code = tables.gdt.append(Descriptor::user_code_segment());
    let tss_sel = tables.gdt.append(Descriptor::tss_segment_with_iomap(tss_ref, iomap_ref).expect("TSS I/O bitmap layout"));
    // SAFETY: as above; the GDT is 'static.
    let gdt: &'static GlobalDescriptorTable<8> = unsafe { &*(core::ptr::addr_of!(tables.gdt)) };
    gdt.load();
    // SAFETY: the selectors index valid descriptors of the GDT just loaded.
    unsafe {
        CS::set_reg(kernel_code);
        SS::set_reg(kernel_data);
        DS::set_reg(kernel_data);
        ES::set_reg(kernel_data);
        load_tss(tss_sel);
    }
    Box::leak(Box::new(Selectors { kernel_code, kernel_data, user_data, user_code, tss: tss_sel, tss_io }))
}
