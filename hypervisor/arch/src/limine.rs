//! Limine boot protocol glue: the request statics the bootloader fills in, and their conversion
//! into the plain `LimineView` that `catenary-bootinfo` turns into `BootInfo` (that conversion is
//! unit-tested on the host with synthetic responses; no Limine binary is reachable here).

use alloc::string::String;
use alloc::vec::Vec;
use catenary_bootinfo::{BootError, BootInfo, LimineModule, LimineView};
use limine::memory_map::EntryType;
use limine::request::{
    BootloaderInfoRequest, ExecutableAddressRequest, ExecutableCmdlineRequest, HhdmRequest, MemoryMapRequest,
    ModuleRequest, RequestsEndMarker, RequestsStartMarker, RsdpRequest,
};
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
        crate::paging::set_early_phys_view(off);
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
    };
    let kphys = view.kernel_phys_base.unwrap_or(crate::boot::KERNEL_PHYS_DEFAULT);
    Ok((BootInfo::from_limine(&view)?, kphys))
}
