//! Limine response conversion with synthetic responses.

use catenary_bootinfo::{BootCpu, BootError, BootInfo, BootProtocol, Framebuffer, LimineView, MemoryKind, MAX_CPUS};

const HHDM: u64 = 0xffff_8000_0000_0000;

fn view() -> LimineView {
    LimineView {
        base_revision_supported: true,
        memmap: vec![
            (0, 0x9f000, 0),
            (0x9f000, 0x1000, 1),
            (0x10_0000, 0x100_0000, 0),
            (0x110_0000, 0x20_0000, 6), // executable and modules
            (0x130_0000, 0x10_0000, 5), // bootloader reclaimable
            (0x140_0000, 0x7ec0_0000, 0),
            (0x7fe0_0000, 0x2_0000, 2),
            (0x7fe2_0000, 0x1_0000, 3),
            (0x8000_0000, 0x30_0000, 7),
            (0x9000_0000, 0x1000, 4),
            (0xa000_0000, 0x1000, 8), // mapped reserved (newer revisions) -> reserved
        ],
        hhdm_offset: Some(HHDM),
        rsdp: Some(0x7fe1_4000),
        modules: vec![
            (
                HHDM + 0x118_0000,
                0x5_0000,
                "/boot/bundle.cpio".into(),
                "bundle".into(),
            ),
            (
                HHDM + 0x11e_0000,
                0x1000,
                "/boot/extra".into(),
                String::new(),
            ),
        ],
        cmdline: Some("console=ttyS0".into()),
        kernel_phys_base: Some(0x110_0000),
        kernel_virt_base: Some(0xffff_ffff_8000_0000),
        bootloader_name: Some("Limine".into()),
        bootloader_version: Some("9.3.0".into()),
        framebuffer: Some(Framebuffer {
            addr: HHDM + 0x8000_0000,
            width: 800,
            height: 600,
            pitch: 3200,
            bpp: 32,
        }),
        mp_cpus: vec![(0, 0), (1, 2), (2, 4), (3, 6)],
        bsp_lapic_id: Some(0),
    }
}

fn kind_at(info: &BootInfo, addr: u64) -> Option<MemoryKind> {
    info.memory_map
        .iter()
        .find(|r| r.start <= addr && addr < r.end())
        .map(|r| r.kind)
}

#[test]
fn converts_responses() {
    let info = BootInfo::from_limine(&view()).unwrap();
    assert_eq!(info.protocol, BootProtocol::Limine);
    assert_eq!(info.cmdline, "console=ttyS0");
    assert_eq!(info.bootloader.as_deref(), Some("Limine 9.3.0"));
    assert_eq!(info.rsdp, Some(0x7fe1_4000));
    assert_eq!(info.modules[0].start, 0x118_0000);
    assert_eq!(info.modules[0].len, 0x5_0000);
    assert_eq!(info.modules[0].name, "bundle");
    assert_eq!(info.modules[1].name, "/boot/extra");
    assert_eq!(info.framebuffer.unwrap().addr, 0x8000_0000);
    let expect = [
        (0, MemoryKind::Usable),
        (0x9f000, MemoryKind::Reserved),
        (0x110_0000, MemoryKind::KernelAndModules),
        (0x130_0000, MemoryKind::BootloaderReclaimable),
        (0x7fe0_0000, MemoryKind::AcpiReclaimable),
        (0x7fe2_0000, MemoryKind::AcpiNvs),
        (0x8000_0000, MemoryKind::Framebuffer),
        (0x9000_0000, MemoryKind::BadMemory),
        (0xa000_0000, MemoryKind::Reserved),
    ];
    for (a, k) in expect {
        assert_eq!(kind_at(&info, a), Some(k), "{a:#x}");
    }
    // The last usable entry overlaps the ACPI entries (0x30000 bytes): ACPI wins.
    assert_eq!(
        info.total_usable(),
        0x9f000 + 0x100_0000 + 0x7ec0_0000 - 0x3_0000
    );
}

#[test]
fn rsdp_virtual_in_old_revisions_is_converted() {
    let v = LimineView {
        rsdp: Some(HHDM + 0xf_5a40),
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v).unwrap().rsdp, Some(0xf_5a40));
    let v = LimineView {
        rsdp: Some(0),
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v).unwrap().rsdp, None);
    let v = LimineView {
        rsdp: None,
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v).unwrap().rsdp, None);
    // Without an HHDM a (physical) RSDP passes through.
    let v = LimineView {
        hhdm_offset: None,
        modules: vec![],
        framebuffer: None,
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v).unwrap().rsdp, Some(0x7fe1_4000));
}

#[test]
fn minimal_view() {
    let v = LimineView {
        base_revision_supported: true,
        memmap: vec![(0x10_0000, 0x10_0000, 0)],
        ..Default::default()
    };
    let info = BootInfo::from_limine(&v).unwrap();
    assert_eq!(info.cmdline, "");
    assert_eq!(info.bootloader, None);
    assert_eq!(
        info.usable_frames().collect::<Vec<_>>(),
        vec![(0x10_0000, 0x10_0000)]
    );
}

#[test]
fn errors() {
    let v = LimineView {
        base_revision_supported: false,
        ..view()
    };
    assert_eq!(
        BootInfo::from_limine(&v),
        Err(BootError::UnsupportedRevision)
    );
    let v = LimineView {
        memmap: vec![],
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v), Err(BootError::NoMemoryMap));
    let v = LimineView {
        memmap: vec![(0, 0x1000, 0); 5000],
        ..view()
    };
    assert!(matches!(
        BootInfo::from_limine(&v),
        Err(BootError::TooMany { .. })
    ));
    let v = LimineView {
        memmap: vec![(u64::MAX, 2, 0)],
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v), Err(BootError::AddressOverflow));
    let v = LimineView {
        modules: vec![(0x1000, 0x1000, String::new(), String::new())],
        ..view()
    };
    assert!(matches!(
        BootInfo::from_limine(&v),
        Err(BootError::Malformed(_))
    ));
    let v = LimineView {
        modules: vec![(u64::MAX, 0x1000, String::new(), String::new())],
        hhdm_offset: Some(0),
        ..view()
    };
    assert_eq!(BootInfo::from_limine(&v), Err(BootError::AddressOverflow));
    let v = LimineView {
        hhdm_offset: None,
        ..view()
    };
    assert!(matches!(
        BootInfo::from_limine(&v),
        Err(BootError::Malformed(_))
    ));
    let many = (0..300)
        .map(|i| (HHDM + i * 0x1000, 0x1000, String::new(), String::new()))
        .collect();
    let v = LimineView {
        modules: many,
        ..view()
    };
    assert!(matches!(
        BootInfo::from_limine(&v),
        Err(BootError::TooMany { .. })
    ));
}

#[test]
fn kernel_range_reservation_and_idempotent_normalize() {
    let mut info = BootInfo::from_limine(&view()).unwrap();
    let before = info.clone();
    info.normalize();
    assert_eq!(info, before);
    // A kernel range straddling usable and already-reserved memory: only usable parts change.
    info.reserve(0x0f_f000, 0x3000, MemoryKind::KernelAndModules);
    assert_eq!(kind_at(&info, 0x0f_f000), None); // hole stays a hole
    assert_eq!(
        kind_at(&info, 0x10_0000),
        Some(MemoryKind::KernelAndModules)
    );
    assert_eq!(
        kind_at(&info, 0x10_1000),
        Some(MemoryKind::KernelAndModules)
    );
    assert_eq!(kind_at(&info, 0x10_2000), Some(MemoryKind::Usable));
    assert_eq!(info.total_usable(), before.total_usable() - 0x2000);
    // Unaligned usable edges are trimmed to whole pages.
    let v = LimineView {
        base_revision_supported: true,
        memmap: vec![(0x1234, 0x3000, 0)],
        ..Default::default()
    };
    let info = BootInfo::from_limine(&v).unwrap();
    assert_eq!(
        info.usable_frames().collect::<Vec<_>>(),
        vec![(0x2000, 0x2000)]
    );
    let v = LimineView {
        base_revision_supported: true,
        memmap: vec![(0x1001, 0x1000, 0)],
        ..Default::default()
    };
    assert_eq!(BootInfo::from_limine(&v).unwrap().total_usable(), 0);
}

#[test]
fn mp_response_becomes_the_cpu_list() {
    let info = BootInfo::from_limine(&view()).unwrap();
    assert_eq!(
        info.cpus,
        vec![
            BootCpu { processor_id: 0, lapic_id: 0, is_bsp: true },
            BootCpu { processor_id: 1, lapic_id: 2, is_bsp: false },
            BootCpu { processor_id: 2, lapic_id: 4, is_bsp: false },
            BootCpu { processor_id: 3, lapic_id: 6, is_bsp: false },
        ]
    );
    // The BSP need not be the first entry.
    let v = LimineView { mp_cpus: vec![(5, 9), (1, 3)], bsp_lapic_id: Some(3), ..view() };
    let info = BootInfo::from_limine(&v).unwrap();
    assert!(info.cpus[1].is_bsp && !info.cpus[0].is_bsp);
    // No MP response: no boot-loader CPU list (the kernel uses the MADT).
    let v = LimineView { mp_cpus: vec![], bsp_lapic_id: None, ..view() };
    assert!(BootInfo::from_limine(&v).unwrap().cpus.is_empty());
}

#[test]
fn hostile_mp_responses_are_errors() {
    let v = LimineView { bsp_lapic_id: None, ..view() };
    assert!(matches!(BootInfo::from_limine(&v), Err(BootError::Malformed(_))));
    let v = LimineView { bsp_lapic_id: Some(77), ..view() };
    assert!(matches!(BootInfo::from_limine(&v), Err(BootError::Malformed(_))));
    let v = LimineView { mp_cpus: vec![(0, 0), (1, 0)], bsp_lapic_id: Some(0), ..view() };
    assert!(matches!(BootInfo::from_limine(&v), Err(BootError::Malformed(_))));
    let v = LimineView { mp_cpus: (0..MAX_CPUS as u32 + 1).map(|i| (i, i)).collect(), bsp_lapic_id: Some(0), ..view() };
    assert!(matches!(BootInfo::from_limine(&v), Err(BootError::TooMany { .. })));
}
