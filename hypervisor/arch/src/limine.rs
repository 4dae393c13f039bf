//! Limine boot protocol glue: the request statics the bootloader fills in, and their conversion
//! into the plain `LimineView` that `catenary-bootinfo` turns into `BootInfo` (that conversion is
//! unit-tested on the host with synthetic responses; no Limine binary is reachable here).

use alloc::string::String;
use alloc::vec::Vec;
use catenary_bootinfo::{BootError, BootInfo, LimineModule, LimineView};
use limine::memory_map::EntryType;
use limine::request::{
    BootloaderInfoRequest, ExecutableAddressRequest, ExecutableCmdlineRequest, HhdmRequest, MemoryMapRequest,
    ModuleRequest, MpRequest, RequestsEndMarker, RequestsStartMarker, RsdpRequest,
};
use core::sync::atomic::{AtomicBool, Ordering};
use limine::BaseRevision;

#[used]
#[link_section = ".limine_requests"]
static BASE_REVISION: BaseRevision = BaseRevision::new();
#[used]
#[link_section = ".limine_requests"]
static MEMMAP: MemoryMapRequest = MemoryMapRequest::new();
#[used]
#[link_section = ".limine_requests"]
static HHDM: HhdmRequest = HhdmRequest::new();
#[used]
#[link_section = ".limine_requests"]
static RSDP: RsdpRequest = RsdpRequest::new();
#[used]
#[link_section = ".limine_requests"]
static MODULES: ModuleRequest = ModuleRequest::new();
#[used]
#[link_section = ".limine_requests"]
static CMDLINE: ExecutableCmdlineRequest = ExecutableCmdlineRequest::new();
#[used]
#[link_section = ".limine_requests"]
static KADDR: ExecutableAddressRequest = ExecutableAddressRequest::new();
#[used]
#[link_section = ".limine_requests"]
static LOADER: BootloaderInfoRequest = BootloaderInfoRequest::new();
#[used]
#[link_section = ".limine_requests"]
static MP: MpRequest = MpRequest::new();
#[used]
#[link_section = ".limine_requests_start"]
static START: RequestsStartMarker = RequestsStartMarker::new();
#[used]
#[link_section = ".limine_requests_end"]
static END: RequestsEndMarker = RequestsEndMarker::new();

fn type_number(t: EntryType) -> u64 {
    match t {
        EntryType::USABLE => 0,
        EntryType::RESERVED => 1,
        EntryType::ACPI_RECLAIMABLE => 2,
        EntryType::ACPI_NVS => 3,
        EntryType::BAD_MEMORY => 4,
        EntryType::BOOTLOADER_RECLAIMABLE => 5,
        EntryType::EXECUTABLE_AND_MODULES => 6,
        EntryType::FRAMEBUFFER => 7,
        _ => 1,
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Read the Limine responses (we run on Limine's page tables with its HHDM) into `BootInfo`.
pub fn handoff() -> Result<(BootInfo, u64), BootError> {
    let hhdm = HHDM.get_response().map(|h| h.offset());
    if let Some(off) = hhdm {
        crate::memory::set_early_phys_view(off);
    }
    let view = LimineView {
        base_revision_supported: BASE_REVISION.is_supported(),
        memmap: MEMMAP
            .get_response()
            .map(|m| m.entries().iter().map(|e| (e.base, e.length, type_number(e.entry_type))).collect())
            .unwrap_or_default(),
        hhdm_offset: hhdm,
        rsdp: RSDP.get_response().map(|r| r.address() as u64),
        modules: MODULES
            .get_response()
            .map(|m| {
                m.modules()
                    .iter()
                    .map(|f| -> LimineModule {
                        (f.addr() as u64, f.size(), cstr(f.path().to_bytes()), cstr(f.string().to_bytes()))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        cmdline: CMDLINE.get_response().map(|c| cstr(c.cmdline().to_bytes())),
        kernel_phys_base: KADDR.get_response().map(|k| k.physical_base()),
        kernel_virt_base: KADDR.get_response().map(|k| k.virtual_base()),
        bootloader_name: LOADER.get_response().map(|l| String::from(l.name())),
        bootloader_version: LOADER.get_response().map(|l| String::from(l.version())),
        framebuffer: None,
        mp_cpus: MP.get_response().map(|r| r.cpus().iter().map(|c| (c.id, c.lapic_id)).collect()).unwrap_or_default(),
        bsp_lapic_id: MP.get_response().map(|r| r.bsp_lapic_id()),
    };
    BOOTED_BY_LIMINE.store(true, Ordering::Release);
    let kphys = view.kernel_phys_base.unwrap_or(crate::paging::KERNEL_PHYS_DEFAULT);
    Ok((BootInfo::from_limine(&view)?, kphys))
}

static BOOTED_BY_LIMINE: AtomicBool = AtomicBool::new(false);

/// Whether this node was booted through the Limine protocol (APs are then started through
/// Limine's MP response instead of INIT-SIPI-SIPI).
pub fn booted_by_limine() -> bool {
    BOOTED_BY_LIMINE.load(Ordering::Acquire)
}

/// What `arch_limine_ap_entry` (asm/boot.s) needs, reached through the MP response's `extra`.
#[repr(C)]
struct LimineApBoot {
    kernel_cr3: u64,
    stack_top: u64,
    index: u64,
}

extern "C" {
    fn arch_limine_ap_entry(cpu: &limine::mp::Cpu) -> !;
}

/// Start the AP with local APIC id `lapic_id` as CPU `index` through Limine's MP response:
/// Limine has parked it; writing `goto_address` sends it to `arch_limine_ap_entry`, which moves
/// to our stack and page tables and joins the common AP path (`smp::arch_ap_main`).
pub(crate) fn start_ap(index: usize, lapic_id: u32, stack: crate::paging::StaticStack) -> Result<(), &'static str> {
    let resp = MP.get_response().ok_or("no Limine MP response")?;
    let cpu = resp.cpus().iter().find(|c| c.lapic_id == lapic_id).ok_or("APIC id not in the MP response")?;
    let boot = alloc::boxed::Box::leak(alloc::boxed::Box::new(LimineApBoot {
        kernel_cr3: crate::paging::kernel_pml4(),
        stack_top: stack.top(),
        index: index as u64,
    }));
    cpu.extra.store(boot as *const LimineApBoot as u64, Ordering::SeqCst);
    cpu.goto_address.write(arch_limine_ap_entry);
    Ok(())
}
