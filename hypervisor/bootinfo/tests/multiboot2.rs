//! Multiboot2 MBI parsing against synthetic memory.

use catenary_bootinfo::{BootError, BootInfo, BootProtocol, Framebuffer, MemImage, MemoryKind};

const MBI: u64 = 0x10_0000;

/// Builds an MBI from (type, payload) tags; appends the end tag unless `end` is false.
fn mbi(tags: &[(u32, Vec<u8>)], end: bool) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    for (ty, body) in tags {
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
    }
    if end {
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&8u32.to_le_bytes());
    }
    let total = v.len() as u32;
    v[0..4].copy_from_slice(&total.to_le_bytes());
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn module(start: u32, end: u32, name: &str) -> Vec<u8> {
    let mut v = start.to_le_bytes().to_vec();
    v.extend_from_slice(&end.to_le_bytes());
    v.extend_from_slice(&cstr(name));
    v
}

fn mmap(entry_size: u32, entries: &[(u64, u64, u32)]) -> Vec<u8> {
    let mut v = entry_size.to_le_bytes().to_vec();
    v.extend_from_slice(&0u32.to_le_bytes());
    for &(b, l, t) in entries {
        let mut e = b.to_le_bytes().to_vec();
        e.extend_from_slice(&l.to_le_bytes());
        e.extend_from_slice(&t.to_le_bytes());
        e.resize(entry_size as usize, 0);
        v.extend_from_slice(&e);
    }
    v
}

fn framebuffer(ty: u8) -> Vec<u8> {
    let mut v = 0xfd00_0000u64.to_le_bytes().to_vec();
    v.extend_from_slice(&4096u32.to_le_bytes()); // pitch
    v.extend_from_slice(&1024u32.to_le_bytes()); // width
    v.extend_from_slice(&768u32.to_le_bytes()); // height
    v.push(32); // bpp
    v.push(ty);
    v.extend_from_slice(&[0, 0]);
    v
}

fn rsdp(sig_rev: u8) -> Vec<u8> {
    let mut v = b"RSD PTR ".to_vec();
    v.resize(20, sig_rev);
    v
}

fn std_map() -> Vec<u8> {
    mmap(
        24,
        &[
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (0x10_0000, 0x3ff0_0000, 1),
            (0x3ff0_0000, 0x10_0000, 4),
            (0x4000_0000, 0x1000, 5),
        ],
    )
}

fn standard() -> Vec<u8> {
    mbi(
        &[
            (1, cstr("console=ttyS0 quiet")),
            (2, cstr("GRUB 2.06")),
            (3, module(0x20_0000, 0x20_1234, "bundle")),
            (3, module(0x30_0000, 0x30_0000, "")),
            (6, std_map()),
            (8, framebuffer(1)),
            (14, rsdp(0)),
            (15, {
                let mut r = rsdp(2);
                r.resize(36, 0);
                r
            }),
            (21, vec![1, 2, 3, 4]), // unknown tag: skipped
        ],
        true,
    )
}

fn mem(bytes: &[u8]) -> MemImage {
    let mut m = MemImage::new(MBI, 0);
    m.write(MBI, bytes);
    m
}

fn kind_at(info: &BootInfo, addr: u64) -> Option<MemoryKind> {
    info.memory_map
        .iter()
        .find(|r| r.start <= addr && addr < r.end())
        .map(|r| r.kind)
}

#[test]
fn parses_grub_like_mbi() {
    let bytes = standard();
    let info = BootInfo::from_multiboot2(MBI, &mem(&bytes)).unwrap();
    assert_eq!(info.protocol, BootProtocol::Multiboot2);
    assert_eq!(info.cmdline, "console=ttyS0 quiet");
    assert_eq!(info.bootloader.as_deref(), Some("GRUB 2.06"));
    assert_eq!(info.modules.len(), 2);
    assert_eq!(
        (info.modules[0].start, info.modules[0].len),
        (0x20_0000, 0x1234)
    );
    assert_eq!(info.modules[0].name, "bundle");
    assert_eq!(info.modules[1].len, 0);
    assert_eq!(
        info.framebuffer,
        Some(Framebuffer {
            addr: 0xfd00_0000,
            width: 1024,
            height: 768,
            pitch: 4096,
            bpp: 32
        })
    );
    // The RSDP is the copy inside the MBI, new (tag 15) preferred; check it points at "RSD PTR ".
    let r = info.rsdp.unwrap();
    let off = (r - MBI) as usize;
    assert_eq!(&bytes[off..off + 8], b"RSD PTR ");
    assert_eq!(bytes[off + 15], 2);
    assert_eq!(kind_at(&info, MBI), Some(MemoryKind::BootloaderReclaimable));
    assert_eq!(kind_at(&info, r), Some(MemoryKind::BootloaderReclaimable));
    assert_eq!(
        kind_at(&info, 0x20_0000),
        Some(MemoryKind::KernelAndModules)
    );
    assert_eq!(kind_at(&info, 0x3ff0_0000), Some(MemoryKind::AcpiNvs));
    assert_eq!(kind_at(&info, 0x4000_0000), Some(MemoryKind::BadMemory));
    assert_eq!(kind_at(&info, 0x9fc00), Some(MemoryKind::Reserved));
    for w in info.memory_map.windows(2) {
        assert!(w[0].end() <= w[1].start);
        assert!(
            !(w[0].end() == w[1].start && w[0].kind == w[1].kind),
            "unmerged neighbours"
        );
    }
}

#[test]
fn old_rsdp_only_and_text_mode_framebuffer() {
    let bytes = mbi(&[(6, std_map()), (14, rsdp(0)), (8, framebuffer(2))], true);
    let info = BootInfo::from_multiboot2(MBI, &mem(&bytes)).unwrap();
    let off = (info.rsdp.unwrap() - MBI) as usize;
    assert_eq!(&bytes[off..off + 8], b"RSD PTR ");
    assert_eq!(info.framebuffer, None);
    assert_eq!(info.cmdline, "");
    assert_eq!(info.bootloader, None);
}

#[test]
fn larger_entry_size_is_honoured() {
    let bytes = mbi(
        &[(
            6,
            mmap(32, &[(0x10_0000, 0x10_0000, 1), (0x20_0000, 0x1000, 3)]),
        )],
        true,
    );
    let info = BootInfo::from_multiboot2(MBI, &mem(&bytes)).unwrap();
    assert_eq!(kind_at(&info, 0x20_0000), Some(MemoryKind::AcpiReclaimable));
    // MBI itself is at 0x100000, inside usable memory: reserved.
    assert_eq!(kind_at(&info, MBI), Some(MemoryKind::BootloaderReclaimable));
}

#[test]
fn errors() {
    let good = standard();
    // Unaligned address.
    assert_eq!(
        BootInfo::from_multiboot2(MBI + 4, &mem(&good)),
        Err(BootError::Unaligned { paddr: MBI + 4 })
    );
    // Unreadable / truncated MBI.
    let mut short = good.clone();
    short.truncate(good.len() - 16);
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&short)),
        Err(BootError::Unreadable { .. })
    ));
    // Absurd total_size.
    let mut huge = good.clone();
    huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&huge)),
        Err(BootError::TooMany { .. })
    ));
    // Tiny total_size.
    let mut tiny = good.clone();
    tiny[0..4].copy_from_slice(&8u32.to_le_bytes());
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&tiny)),
        Err(BootError::Malformed(_))
    ));
    // No end tag.
    let noend = mbi(&[(6, std_map())], false);
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&noend)),
        Err(BootError::Malformed(_))
    ));
    // No memory map.
    let nomap = mbi(&[(1, cstr("x"))], true);
    assert_eq!(
        BootInfo::from_multiboot2(MBI, &mem(&nomap)),
        Err(BootError::NoMemoryMap)
    );
    // Tag size below 8, and a tag running past total_size.
    let mut bad = good.clone();
    bad[12..16].copy_from_slice(&4u32.to_le_bytes());
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&bad)),
        Err(BootError::Malformed(_))
    ));
    let mut bad = good.clone();
    bad[12..16].copy_from_slice(&0x10_0000u32.to_le_bytes());
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&bad)),
        Err(BootError::Malformed(_))
    ));
    // Bad entry sizes.
    for es in [0u32, 16, 20, 25] {
        let mut body = std_map();
        body[0..4].copy_from_slice(&es.to_le_bytes());
        let b = mbi(&[(6, body)], true);
        assert!(
            matches!(
                BootInfo::from_multiboot2(MBI, &mem(&b)),
                Err(BootError::Malformed(_))
            ),
            "{es}"
        );
    }
    // Module end before start; short module / framebuffer / RSDP tags.
    for tag in [
        (3, module(0x2000, 0x1000, "x")),
        (3, vec![0; 4]),
        (8, vec![0; 10]),
        (14, vec![0; 8]),
    ] {
        let b = mbi(&[tag, (6, std_map())], true);
        assert!(matches!(
            BootInfo::from_multiboot2(MBI, &mem(&b)),
            Err(BootError::Malformed(_))
        ));
    }
    // Overflowing memory map entry.
    let b = mbi(&[(6, mmap(24, &[(u64::MAX - 1, 0x10, 1)]))], true);
    assert_eq!(
        BootInfo::from_multiboot2(MBI, &mem(&b)),
        Err(BootError::AddressOverflow)
    );
    // Empty memory map.
    let b = mbi(&[(6, mmap(24, &[]))], true);
    assert_eq!(
        BootInfo::from_multiboot2(MBI, &mem(&b)),
        Err(BootError::NoMemoryMap)
    );
    // Too many modules.
    let mut tags: Vec<(u32, Vec<u8>)> = (0..300).map(|_| (3, module(0x1000, 0x2000, ""))).collect();
    tags.push((6, std_map()));
    let b = mbi(&tags, true);
    assert!(matches!(
        BootInfo::from_multiboot2(MBI, &mem(&b)),
        Err(BootError::TooMany { .. })
    ));
}

#[test]
fn garbage_never_panics() {
    // Deterministic pseudo-random corruption of a valid MBI.
    let good = standard();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        let _ = BootInfo::from_multiboot2(MBI, &mem(&b));
    }
}
