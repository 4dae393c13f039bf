//! Soundness of the arch crate's safe API (issue 10 item 1): what safe kernel code could do
//! with a wrong argument before, and is refused or harmless now. Each test misuses the API
//! the way a buggy caller would and checks that no frame is freed twice, freed while still
//! mapped or lent, read outside task memory, or that boot-time state is not set twice.

use alloc::format;
use alloc::string::String;
use catenary_arch::memory::{self, FreshFrame};
use catenary_arch::uspace::{self, AddressSpace, UserRange};
use catenary_arch::{cpu, paging, smp};

use crate::init::Node;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

const VA: u64 = 0x40_0000;

/// A user frame given up twice: the second `free_user_frame` is refused; given up while still
/// mapped it stays allocated (and task memory) until the last mapping goes; the frame count
/// ends where it started.
pub fn sound_user_frame_freed_once(_: &Node) -> Result<(), String> {
    let before = crate::ktest::free_frames_settled();
    let mut space = AddressSpace::new().map_err(|e| format!("space: {e:?}"))?;
    let f = space.map_fresh_frame(VA, FreshFrame::alloc().map_err(|e| format!("{e:?}"))?, true, false).map_err(|e| format!("map: {e:?}"))?;
    check(memory::free_user_frame(f).is_ok(), || "the owner's free was refused".into())?;
    check(memory::is_allocated(f), || format!("frame {f:#x} freed while still mapped at {VA:#x}"))?;
    check(memory::user_write(f, b"still task memory"), || "a mapped user frame stopped being task memory".into())?;
    check(memory::free_user_frame(f).is_err(), || format!("frame {f:#x} given up twice: second free accepted"))?;
    space.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
    check(!memory::is_allocated(f), || format!("frame {f:#x} not freed when its last mapping went"))?;
    check(memory::free_user_frame(f).is_err(), || "free after the frame went back accepted".into())?;
    // and the other order: unmapped first, then given up (the kernel's SYS_UNMAP)
    let g = space.map_fresh_frame(VA, FreshFrame::alloc().map_err(|e| format!("{e:?}"))?, true, false).map_err(|e| format!("map: {e:?}"))?;
    space.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
    check(memory::is_allocated(g), || "an owned frame was freed by unmapping it".into())?;
    check(memory::free_user_frame(g).is_ok() && !memory::is_allocated(g), || "unmapped frame not freed by its owner".into())?;
    space.destroy();
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames not back", before as i64 - after as i64))
}

/// A loan outlives its lender's copy: the lender unmaps and frees its page while the loan is
/// mapped in a borrower: the frame stays allocated until the loan is dropped *and* the
/// borrower's mapping is gone (it was freed under the borrower before: the kernel alone kept
/// this from happening).
pub fn sound_lent_frames_outlive_owner(_: &Node) -> Result<(), String> {
    let before = crate::ktest::free_frames_settled();
    let mut a = AddressSpace::new().map_err(|e| format!("space: {e:?}"))?;
    let mut b = AddressSpace::new().map_err(|e| format!("space: {e:?}"))?;
    let f = a.map_fresh_frame(VA, FreshFrame::alloc().map_err(|e| format!("{e:?}"))?, true, false).map_err(|e| format!("map: {e:?}"))?;
    let lent = a.lend(UserRange::pages(VA, 1).map_err(|e| format!("{e:?}"))?, true).map_err(|e| format!("lend: {e:?}"))?;
    // the lender gives its page up while the loan exists
    a.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
    memory::free_user_frame(f).map_err(|e| format!("free: {e:?}"))?;
    check(memory::is_allocated(f), || "a lent frame was freed by its lender".into())?;
    b.map_lent(0x6000_0000_0000, &lent).map_err(|e| format!("map_lent: {e:?}"))?;
    drop(lent);
    check(memory::is_allocated(f), || "a frame mapped in the borrower was freed when the loan dropped".into())?;
    check(b.translate(0x6000_0000_0000).map(|t| t.0) == Some(f), || "borrower does not map the lent frame".into())?;
    b.destroy();
    check(!memory::is_allocated(f), || "frame not freed after the borrower's space went".into())?;
    a.destroy();
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames not back", before as i64 - after as i64))
}

/// Destroying the address space this CPU has loaded: the CPU is switched to the kernel's
/// tables first (it kept walking the freed tables before), and every frame comes back.
pub fn sound_destroy_loaded_space(_: &Node) -> Result<(), String> {
    let before = crate::ktest::free_frames_settled();
    let mut space = AddressSpace::new().map_err(|e| format!("space: {e:?}"))?;
    for i in 0..3 {
        let fr = FreshFrame::alloc().map_err(|e| format!("{e:?}"))?;
        let p = space.map_fresh_frame(VA + i * 0x20_0000, fr, true, false).map_err(|e| format!("map: {e:?}"))?;
        memory::free_user_frame(p).map_err(|e| format!("free: {e:?}"))?; // the space alone keeps it
    }
    let pml4 = space.pml4();
    let (loaded, after_destroy) = cpu::without_interrupts(|| {
        uspace::switch_cr3(Some(&space));
        let loaded = uspace::current_cr3();
        space.destroy();
        (loaded, uspace::current_cr3())
    });
    check(loaded == pml4, || format!("space not loaded: CR3 {loaded:#x}, space {pml4:#x}"))?;
    check(after_destroy == paging::kernel_pml4(), || format!("CR3 {after_destroy:#x} after destroying the loaded space"))?;
    check(uspace::spaces_pending() == 0, || "a space loaded nowhere else was kept".into())?;
    let after = crate::ktest::free_frames_settled();
    check(after == before, || format!("{} frames not back (tables or mapped frames)", before as i64 - after as i64))
}

/// `phys_read`/`phys_read_u64` read task memory only: the kernel's own page tables, a heap
/// object and a free frame are refused (zeros), a user frame is read.
pub fn sound_phys_read_user_only(_: &Node) -> Result<(), String> {
    let mut b = [0xaau8; 16];
    check(!memory::phys_read(paging::kernel_pml4(), &mut b) && b == [0; 16], || "the kernel PML4 was read as driver memory".into())?;
    let heap = alloc::boxed::Box::new(0x1234_5678_9abc_def0u64);
    let hp = paging::translate(&*heap as *const u64 as u64).ok_or("heap not mapped")?.0;
    check(memory::phys_read_u64(hp) == 0, || "a heap object was read as driver memory".into())?;
    let mut space = AddressSpace::new().map_err(|e| format!("space: {e:?}"))?;
    let f = space.map_fresh_frame(VA, FreshFrame::alloc().map_err(|e| format!("{e:?}"))?, true, false).map_err(|e| format!("map: {e:?}"))?;
    check(memory::user_write_u64(f + 8, 0x5eed) && memory::phys_read_u64(f + 8) == 0x5eed, || "a user frame could not be read".into())?;
    space.unmap(VA).map_err(|e| format!("unmap: {e:?}"))?;
    memory::free_user_frame(f).map_err(|e| format!("free: {e:?}"))?;
    check(memory::phys_read_u64(f + 8) == 0, || "a freed frame was read".into())?;
    space.destroy();
    Ok(())
}

/// Boot-time setters run once: a second frame allocator is refused, the RAM ranges cannot be
/// replaced (ring 3 could then map RAM as a device), a CPU index that is online (or the boot
/// CPU's) cannot be started again (two CPUs would share per-CPU state), and the kernel page
/// tables cannot be rebuilt (address spaces share the first ones' kernel half).
pub fn sound_boot_state_set_once(node: &Node) -> Result<(), String> {
    let fake = catenary_mm::FrameAllocator::new(&[(0x10_0000, 0x10_0000)], &[]).map_err(|e| format!("{e:?}"))?;
    check(!memory::install(fake), || "a second frame allocator was installed".into())?;
    let ram = paging::translate(&node.cpus as *const usize as u64).ok_or("kernel data not mapped")?.0;
    memory::set_ram_ranges(&[]);
    check(memory::is_ram(ram), || "RAM ranges replaced: kernel memory no longer counts as RAM".into())?;
    check(smp::start_ap(0, 0).is_err(), || "the boot CPU's index was started as an AP".into())?;
    if smp::online_cpus() > 1 {
        let id = smp::apic_id_of(1).ok_or("CPU 1 online without an APIC id")?;
        // refused up front (before it sent INIT to the running CPU), not "did not come up"
        let r = smp::start_ap(1, id);
        check(r == Err(smp::START_REFUSED), || format!("an online CPU index was started again: {r:?}"))?;
    }
    check(smp::start_ap(smp::MAX_CPUS, 0).is_err(), || "a CPU index out of range was accepted".into())?;
    let spec = paging::KernelSpaceSpec { phys_ranges: &[(0, 1 << 30)], kernel_phys: 0x20_0000, sections: paging::kernel_sections(), guard_pages: &[], global_pages: true };
    check(paging::build_and_activate(&spec) == Err(paging::PagingError::AlreadyMapped), || "kernel page tables built a second time".into())
}

/// Device mappings refuse RAM: `paging::map_mmio` of a kernel frame or a wrapping range, the
/// IOAPIC accessors pointed at RAM or at a second "IOAPIC", and an ACPI RSDP in kernel memory
/// (for the platform summary or the power button's tables) are refused (each mapped the address uncached and wrote or read through it before).
pub fn sound_device_mappings_refuse_ram(node: &Node) -> Result<(), String> {
    let ram = paging::translate(&node.cpus as *const usize as u64).ok_or("kernel data not mapped")?.0;
    check(paging::map_mmio(ram, 8).is_err(), || format!("kernel RAM {ram:#x} mapped as MMIO"))?;
    check(paging::map_mmio(u64::MAX - 0x10, 0x100).is_err(), || "a wrapping MMIO range was mapped".into())?;
    check(catenary_arch::apic::ioapic_read(ram & !0xfff, 1).is_err(), || "the IOAPIC accessor read kernel RAM".into())?;
    if let Some(io) = crate::task::ioapic_phys() {
        check(catenary_arch::apic::ioapic_read(io, 1).is_ok(), || "the real IOAPIC refused".into())?;
        check(catenary_arch::apic::ioapic_mask(io + 0x1000, 23).is_err(), || "a second IOAPIC address accepted after the first".into())?;
    }
    check(matches!(catenary_arch::acpi::parse(ram), Err(catenary_arch::acpi::AcpiProblem::NotFirmware)), || "ACPI parsed from the kernel image".into())?;
    let heap = alloc::boxed::Box::new([0u8; 64]);
    let hp = paging::translate(heap.as_ptr() as u64).ok_or("heap not mapped")?.0;
    check(paging::map_mmio(hp, 64).is_err(), || "a heap object mapped as MMIO".into())?;
    check(matches!(catenary_arch::acpi::parse(hp), Err(catenary_arch::acpi::AcpiProblem::NotFirmware)), || "ACPI parsed from the heap".into())?;
    // the power button's tables (FADT, DSDT) are read the same way
    check(matches!(catenary_arch::power::init(ram), Err(catenary_arch::power::PowerProblem::NotFirmware)), || "power tables read from the kernel image".into())?;
    check(matches!(catenary_arch::power::init(hp), Err(catenary_arch::power::PowerProblem::NotFirmware)), || "power tables read from the heap".into())
}
