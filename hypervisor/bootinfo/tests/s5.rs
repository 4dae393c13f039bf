//! `s5_sleep_types`: the `\_S5_` package of a DSDT, as firmware encodes it.
use catenary_bootinfo::s5_sleep_types;

/// `Name (_S5, Package (4) { a, b, 0, 0 })` with the given element encodings.
fn decl(prefix: &[u8], elems: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = elems.iter().flat_map(|e| e.iter().copied()).collect();
    let mut v = vec![0x10, 0x20, 0x5c, 0x00]; // unrelated AML before it
    v.extend_from_slice(prefix);
    v.extend_from_slice(b"_S5_");
    v.push(0x12);
    v.push((body.len() + 2) as u8); // one-byte PkgLength: itself, the count, the elements
    v.push(elems.len() as u8);
    v.extend(body);
    v.extend_from_slice(&[0x14, 0x08]); // a method after it
    v
}

#[test]
fn qemu_and_common_firmware_encodings() {
    // QEMU's q35/pc DSDT: Zero, Zero, Zero, Zero
    assert_eq!(s5_sleep_types(&decl(&[0x08], &[&[0], &[0], &[0], &[0]])), Some((0, 0)));
    // BytePrefix constants (many real boards: SLP_TYP 7 or 5), with the root prefix
    assert_eq!(s5_sleep_types(&decl(&[0x08, b'\\'], &[&[0x0a, 7], &[0x0a, 5], &[0], &[0]])), Some((7, 5)));
    // One, a WordPrefix, a DWordPrefix
    assert_eq!(s5_sleep_types(&decl(&[0x08], &[&[0x01], &[0x0b, 0x06, 0x00]])), Some((1, 6)));
    assert_eq!(s5_sleep_types(&decl(&[0x08], &[&[0x0c, 0x05, 0, 0, 0], &[0]])), Some((5, 0)));
    // a sleep type is three bits: a wider value is not understood (not truncated to 5)
    assert_eq!(s5_sleep_types(&decl(&[0x08], &[&[0x0c, 0x0d, 0, 0, 0], &[0]])), None);
    assert_eq!(s5_sleep_types(&decl(&[0x08], &[&[0x00], &[0xff]])), None, "Ones");
    // a two-byte PkgLength (lead byte 0x4N)
    let mut v = decl(&[0x08], &[&[0x0a, 2], &[0x0a, 3]]);
    let at = v.windows(4).position(|w| w == b"_S5_").unwrap() + 5;
    v[at] = 0x40 | (v[at] & 0x0f);
    v.insert(at + 1, 0x00);
    assert_eq!(s5_sleep_types(&v), Some((2, 3)));
}

#[test]
fn a_reference_or_a_method_is_not_a_declaration() {
    // `_S5_` mentioned without NameOp (e.g. inside a method's body) is skipped; the real
    // declaration after it is found
    let mut v = vec![0x70, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x0a, 0x06];
    v.extend(decl(&[0x08], &[&[0x0a, 4], &[0]]));
    assert_eq!(s5_sleep_types(&v), Some((4, 0)));
    // a method-computed \_S5 (MethodOp 0x14 before the name): not understood
    assert_eq!(s5_sleep_types(&[0x14, 0x08, b'_', b'S', b'5', b'_', 0x00, 0xa4, 0x00]), None);
    // a package of something that is not an integer constant (a name string)
    assert_eq!(s5_sleep_types(&decl(&[0x08], &[&b"ABCD"[..]])), None);
    assert_eq!(s5_sleep_types(b"no sleep states here"), None);
}

#[test]
fn every_truncation_and_byte_flip_is_answered_without_a_panic() {
    let v = decl(&[0x08, b'\\'], &[&[0x0e, 1, 0, 0, 0, 0, 0, 0, 0], &[0x0a, 7]]);
    assert_eq!(s5_sleep_types(&v), Some((1, 7)));
    for n in 0..v.len() {
        let _ = s5_sleep_types(&v[..n]);
        for bit in 0..8 {
            let mut w = v.clone();
            w[n] ^= 1 << bit;
            let _ = s5_sleep_types(&w);
        }
    }
    // the declaration cut inside its package: no answer rather than a wrong one
    let cut = v.windows(4).position(|w| w == b"_S5_").unwrap() + 8;
    assert_eq!(s5_sleep_types(&v[..cut]), None);
}
