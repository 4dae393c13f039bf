//! cpio newc image store.

use catenary_bootinfo::{CpioError, ImageStore};

fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
    let namesize = name.len() + 1;
    let hdr = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        1,
        mode,
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        namesize,
        0
    );
    assert_eq!(hdr.len(), 110);
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (n, m, d) in files {
        entry(&mut v, n, *m, d);
    }
    entry(&mut v, "TRAILER!!!", 0, b"");
    v
}

fn sample() -> Vec<u8> {
    archive(&[
        (".", 0o040755, b""),
        ("guest", 0o040755, b""),
        ("guest/vmlinux", 0o100644, b"\x7fELF kernel bytes"),
        ("./guest/initramfs.cpio", 0o100644, b"abc"),
        ("empty", 0o100644, b""),
        ("link", 0o120777, b"guest/vmlinux"),
    ])
}

#[test]
fn parses_and_looks_up() {
    let bytes = sample();
    let store = ImageStore::parse(&bytes).unwrap();
    assert_eq!(store.len(), 4);
    assert!(!store.is_empty());
    assert_eq!(
        store.get("guest/vmlinux"),
        Some(&b"\x7fELF kernel bytes"[..])
    );
    assert_eq!(store.get("/guest/initramfs.cpio"), Some(&b"abc"[..]));
    assert_eq!(store.get("./guest/initramfs.cpio"), Some(&b"abc"[..]));
    assert_eq!(store.get("empty"), Some(&b""[..]));
    assert_eq!(store.get("link"), Some(&b"guest/vmlinux"[..]));
    assert_eq!(store.get("guest"), None, "directories are not stored");
    assert_eq!(store.get("missing"), None);
    let names: Vec<&str> = store.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["guest/vmlinux", "guest/initramfs.cpio", "empty", "link"]
    );
}

#[test]
fn empty_archive_and_trailing_garbage() {
    let mut bytes = archive(&[]);
    assert!(ImageStore::parse(&bytes).unwrap().is_empty());
    bytes.extend_from_slice(&[0xff; 100]); // padding after the trailer is ignored
    assert!(ImageStore::parse(&bytes).unwrap().is_empty());
}

#[test]
fn crc_variant_accepted() {
    let mut bytes = archive(&[("a", 0o100644, b"x")]);
    bytes[5] = b'2';
    assert_eq!(ImageStore::parse(&bytes).unwrap().get("a"), Some(&b"x"[..]));
}

#[test]
fn errors() {
    let good = sample();
    assert_eq!(
        ImageStore::parse(b"").unwrap_err(),
        CpioError::Truncated { offset: 0 }
    );
    let mut b = good.clone();
    b[0] = b'1';
    assert_eq!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::BadMagic { offset: 0 }
    );
    let mut b = good.clone();
    b[6 + 6 * 8] = b'g'; // filesize field of the first entry
    assert_eq!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::BadHeader { offset: 0 }
    );
    // Missing trailer: truncated at the end.
    let mut b = Vec::new();
    entry(&mut b, "a", 0o100644, b"xyz");
    assert!(matches!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::Truncated { .. }
    ));
    // Cut inside data / name / header.
    for cut in [3, 50, 111, 113, good.len() - 1] {
        assert!(ImageStore::parse(&good[..cut]).is_err(), "{cut}");
    }
    // Huge filesize.
    let mut b = archive(&[("a", 0o100644, b"x")]);
    b[6 + 6 * 8..6 + 7 * 8].copy_from_slice(b"ffffffff");
    assert!(matches!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::Truncated { .. }
    ));
    // Name without NUL, zero namesize, non-UTF-8 name.
    let mut b = archive(&[("ab", 0o100644, b"x")]);
    b[110 + 2] = b'c';
    assert_eq!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::BadName { offset: 0 }
    );
    let mut b = archive(&[("ab", 0o100644, b"x")]);
    b[6 + 11 * 8..6 + 12 * 8].copy_from_slice(b"00000000");
    assert_eq!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::BadName { offset: 0 }
    );
    let b = archive(&[("\u{e9}", 0o100644, b"x")]);
    let mut b2 = b.clone();
    b2[110] = 0xff;
    assert_eq!(
        ImageStore::parse(&b2).unwrap_err(),
        CpioError::BadName { offset: 0 }
    );
    // Duplicate names (after normalisation).
    let b = archive(&[("a", 0o100644, b"x"), ("./a", 0o100644, b"y")]);
    assert!(matches!(
        ImageStore::parse(&b).unwrap_err(),
        CpioError::DuplicateName { .. }
    ));
}

#[test]
fn corruption_never_panics() {
    let good = sample();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..5000 {
        let mut b = good.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = if x & 1 == 0 {
                (x >> 40) as u8
            } else {
                b"0123456789abcdef"[(x >> 40) as usize % 16]
            };
        }
        let cut = (x >> 20) as usize % (b.len() + 1);
        let _ = ImageStore::parse(&b);
        let _ = ImageStore::parse(&b[..cut]);
    }
}
