//! PVH `hvm_start_info` parsing against synthetic memory.

use catenary_bootinfo::{
    BootError, BootInfo, BootProtocol, MemImage, MemoryKind, MemoryRegion, PVH_MAGIC,
};

const SI: u64 = 0x1000;
const MEMMAP: u64 = 0x2000;
const MODLIST: u64 = 0x3000;
const CMDLINE: u64 = 0x4000;
const MODCMD: u64 = 0x5000;

struct Pvh {
    version: u32,
    cmdline: Option<&'static [u8]>,
    rsdp: u64,
    modules: Vec<(u64, u64, &'static str)>,
    memmap: Vec<(u64, u64, u32)>,
}

impl Default for Pvh {
    fn default() -> Self {
        Pvh {
            version: 1,
            cmdline: Some(b"console=ttyS0 loglevel=debug\0"),
            rsdp: 0xf5a40,
            modules: vec![
                (0x20_0000, 0x1_2345, "bundle.cpio"),
                (0x30_0000, 0x1000, ""),
            ],
            memmap: vec![
                (0, 0x9fc00, 1),
                (0x9fc00, 0x400, 2),
                (0xf0000, 0x10000, 2),
                (0x10_0000, 0x7ff0_0000, 1),
                (0x7ff0_0000, 0x10_0000, 3),
                (0xfeff_c000, 0x4000, 2),
            ],
        }
    }
}

impl Pvh {
    fn build(&self) -> MemImage {
        let mut m = MemImage::new(SI, 0x8000);
        m.write_u32(SI, PVH_MAGIC);
        m.write_u32(SI + 4, self.version);
        m.write_u32(SI + 12, self.modules.len() as u32);
        m.write_u64(SI + 16, if self.modules.is_empty() { 0 } else { MODLIST });
        m.write_u64(SI + 24, if self.cmdline.is_some() { CMDLINE } else { 0 });
        m.write_u64(SI + 32, self.rsdp);
        m.write_u64(SI + 40, MEMMAP);
        m.write_u32(SI + 48, self.memmap.len() as u32);
        for (i, &(a, s, t)) in self.memmap.iter().enumerate() {
            let e = MEMMAP + 24 * i as u64;
            m.write_u64(e, a);
            m.write_u64(e + 8, s);
            m.write_u32(e + 16, t);
        }
        for (i, &(a, s, name)) in self.modules.iter().enumerate() {
            let e = MODLIST + 32 * i as u64;
            m.write_u64(e, a);
            m.write_u64(e + 8, s);
            if !name.is_empty() {
                let c = MODCMD + 0x100 * i as u64;
                m.write(c, name.as_bytes());
                m.write(c + name.len() as u64, &[0]);
                m.write_u64(e + 16, c);
            }
        }
        if let Some(c) = self.cmdline {
            m.write(CMDLINE, c);
        }
        m
    }
}

fn kind_at(info: &BootInfo, addr: u64) -> Option<MemoryKind> {
    info.memory_map
        .iter()
        .find(|r| r.start <= addr && addr < r.end())
        .map(|r| r.kind)
}

#[test]
fn parses_qemu_like_start_info() {
    let info = BootInfo::from_pvh(SI, &Pvh::default().build()).unwrap();
    assert_eq!(info.protocol, BootProtocol::Pvh);
    assert_eq!(info.cmdline, "console=ttyS0 loglevel=debug");
    assert_eq!(info.rsdp, Some(0xf5a40));
    assert_eq!(info.modules.len(), 2);
    assert_eq!(info.modules[0].start, 0x20_0000);
    assert_eq!(info.modules[0].len, 0x1_2345);
    assert_eq!(info.modules[0].name, "bundle.cpio");
    assert_eq!(info.modules[1].name, "");
    // Modules carved out of usable memory, boot structures reclaimable.
    assert_eq!(
        kind_at(&info, 0x20_0000),
        Some(MemoryKind::KernelAndModules)
    );
    assert_eq!(
        kind_at(&info, 0x21_2344),
        Some(MemoryKind::KernelAndModules)
    );
    assert_eq!(kind_at(&info, 0x21_3000), Some(MemoryKind::Usable));
    assert_eq!(kind_at(&info, SI), Some(MemoryKind::BootloaderReclaimable));
    assert_eq!(
        kind_at(&info, MEMMAP),
        Some(MemoryKind::BootloaderReclaimable)
    );
    assert_eq!(
        kind_at(&info, MODLIST),
        Some(MemoryKind::BootloaderReclaimable)
    );
    assert_eq!(
        kind_at(&info, 0x7ff0_0000),
        Some(MemoryKind::AcpiReclaimable)
    );
    // Normalised: sorted, disjoint.
    for w in info.memory_map.windows(2) {
        assert!(w[0].end() <= w[1].start);
    }
    // Usable frames are page aligned and exclude the module ranges.
    for (s, l) in info.usable_frames() {
        assert_eq!(s % 4096, 0);
        assert_eq!(l % 4096, 0);
        assert!(s + l <= 0x20_0000 || s >= 0x21_3000);
    }
    let usable: u64 = info.usable_frames().map(|(_, l)| l).sum();
    assert_eq!(usable, info.total_usable());
    // 0..0x9f000 minus 3 boot-structure pages, plus 0x100000..0x7ff00000 minus 0x14000 of modules.
    assert_eq!(
        info.total_usable(),
        (0x9f000 - 0x3000) + (0x7fe0_0000 - 0x13000 - 0x1000)
    );
}

#[test]
fn no_cmdline_no_modules_no_rsdp() {
    let p = Pvh {
        cmdline: None,
        rsdp: 0,
        modules: vec![],
        ..Pvh::default()
    };
    let info = BootInfo::from_pvh(SI, &p.build()).unwrap();
    assert_eq!(info.cmdline, "");
    assert_eq!(info.rsdp, None);
    assert!(info.modules.is_empty());
}

#[test]
fn invalid_utf8_cmdline_is_lossy() {
    let p = Pvh {
        cmdline: Some(b"a\xffb\0"),
        ..Pvh::default()
    };
    let info = BootInfo::from_pvh(SI, &p.build()).unwrap();
    assert_eq!(info.cmdline, "a\u{fffd}b");
}

#[test]
fn bad_magic() {
    let mut m = Pvh::default().build();
    m.write_u32(SI, 0x1234_5678);
    assert_eq!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::BadMagic { found: 0x1234_5678 })
    );
}

#[test]
fn unaligned_and_unreadable() {
    let m = Pvh::default().build();
    assert_eq!(
        BootInfo::from_pvh(SI + 4, &m),
        Err(BootError::Unaligned { paddr: SI + 4 })
    );
    assert!(matches!(
        BootInfo::from_pvh(0x100_0000, &m),
        Err(BootError::Unreadable { .. })
    ));
    assert!(matches!(
        BootInfo::from_pvh(u64::MAX - 7, &m),
        Err(BootError::Unreadable { .. })
    ));
}

#[test]
fn truncated_structures() {
    let full = Pvh::default().build();
    // Header cut off after the magic and version.
    let mut m = full.clone();
    m.bytes.truncate(16);
    assert!(matches!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::Unreadable { .. })
    ));
    // Memory map claims more entries than exist in readable memory.
    let mut m = full.clone();
    m.write_u32(SI + 48, 1000);
    m.bytes.truncate((MEMMAP - SI + 24 * 10) as usize);
    assert!(matches!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::Unreadable { .. })
    ));
    // Command line without a NUL running into the end of memory.
    let mut m = full;
    let end = m.base + m.bytes.len() as u64;
    m.write_u64(SI + 24, end - 3);
    m.write(end - 3, b"abc");
    assert!(matches!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::Unreadable { .. })
    ));
}

#[test]
fn overlong_cmdline() {
    let mut m = Pvh::default().build();
    m.write(CMDLINE, &vec![b'x'; 5000]);
    m.write(CMDLINE + 5000, &[0]);
    assert_eq!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::StringTooLong { paddr: CMDLINE })
    );
    // Exactly the maximum is fine.
    let mut m = Pvh::default().build();
    m.write(CMDLINE, &vec![b'y'; 4096]);
    m.write(CMDLINE + 4096, &[0]);
    assert_eq!(BootInfo::from_pvh(SI, &m).unwrap().cmdline.len(), 4096);
}

#[test]
fn huge_counts_rejected() {
    let mut m = Pvh::default().build();
    m.write_u32(SI + 48, u32::MAX);
    assert!(matches!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::TooMany { .. })
    ));
    let mut m = Pvh::default().build();
    m.write_u32(SI + 12, 100_000);
    assert!(matches!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::TooMany { .. })
    ));
}

#[test]
fn missing_memory_map() {
    let p = Pvh {
        version: 0,
        ..Pvh::default()
    };
    assert_eq!(
        BootInfo::from_pvh(SI, &p.build()),
        Err(BootError::NoMemoryMap)
    );
    let p = Pvh {
        memmap: vec![],
        ..Pvh::default()
    };
    assert_eq!(
        BootInfo::from_pvh(SI, &p.build()),
        Err(BootError::NoMemoryMap)
    );
}

#[test]
fn overflowing_entries_rejected() {
    let p = Pvh {
        memmap: vec![(u64::MAX - 10, 100, 1)],
        ..Pvh::default()
    };
    assert_eq!(
        BootInfo::from_pvh(SI, &p.build()),
        Err(BootError::AddressOverflow)
    );
    let p = Pvh {
        modules: vec![(u64::MAX, 2, "x")],
        ..Pvh::default()
    };
    assert_eq!(
        BootInfo::from_pvh(SI, &p.build()),
        Err(BootError::AddressOverflow)
    );
    let mut m = Pvh::default().build();
    m.write_u64(SI + 16, 0);
    assert!(matches!(
        BootInfo::from_pvh(SI, &m),
        Err(BootError::Malformed(_))
    ));
}

#[test]
fn overlapping_firmware_regions_resolved() {
    let p = Pvh {
        modules: vec![],
        memmap: vec![
            (0x10_0000, 0x100_0000, 1),
            (0x80_0000, 0x1000, 2),
            (0x7f_f000, 0x3000, 4),
            (0x10_0000, 0x1000, 1),
        ],
        ..Pvh::default()
    };
    let info = BootInfo::from_pvh(SI, &p.build()).unwrap();
    assert_eq!(
        info.memory_map,
        vec![
            // Boot structures lie outside usable memory here, so nothing is carved for them.
            MemoryRegion {
                start: 0x10_0000,
                len: 0x6f_f000,
                kind: MemoryKind::Usable
            },
            MemoryRegion {
                start: 0x7f_f000,
                len: 0x1000,
                kind: MemoryKind::AcpiNvs
            },
            // Reserved has higher precedence than ACPI NVS.
            MemoryRegion {
                start: 0x80_0000,
                len: 0x1000,
                kind: MemoryKind::Reserved
            },
            MemoryRegion {
                start: 0x80_1000,
                len: 0x1000,
                kind: MemoryKind::AcpiNvs
            },
            MemoryRegion {
                start: 0x80_2000,
                len: 0x8f_e000,
                kind: MemoryKind::Usable
            },
        ]
    );
}
