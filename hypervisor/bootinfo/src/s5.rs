//! The `\_S5_` object of a DSDT: the `SLP_TYPa`/`SLP_TYPb` values that put the machine in
//! soft-off (ACPI 6.5 §7.4.2, "\_Sx (System States)"), found without an AML interpreter.
//!
//! Firmware declares it as `Name (_S5, Package () { a, b, ... })`: in AML, `NameOp` (0x08),
//! an optional root prefix `\`, the name `_S5_`, `PackageOp` (0x12), a `PkgLength`, the
//! element count, then the elements as integer constants. That is what QEMU, SeaBIOS/OVMF
//! and most server firmware emit; a `\_S5` computed by a method is not understood (`None`),
//! and the node then stays up rather than guess a sleep type. The bytes are firmware's, so
//! every read is bounds-checked: a short or strange table gives `None`, never a panic.

/// `(SLP_TYPa, SLP_TYPb)` of `\_S5`, each 0..=7, from the AML body of a DSDT (or SSDT);
/// `None` when it is absent, not a plain package of integers, or holds a value above 7.
pub fn s5_sleep_types(aml: &[u8]) -> Option<(u8, u8)> {
    let mut from = 0;
    while let Some(at) = find(aml, b"_S5_", from) {
        from = at + 1;
        let named = match at.checked_sub(1).map(|j| aml[j]) {
            Some(0x08) => true,
            Some(b'\\') => at >= 2 && aml[at - 2] == 0x08,
            _ => false,
        };
        if !named {
            continue; // a reference to `_S5_`, not its declaration
        }
        if let Some(t) = package_types(aml, at + 4) {
            return Some(t);
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// The first two integer elements of the package starting at `p` (at its `PackageOp`).
fn package_types(aml: &[u8], mut p: usize) -> Option<(u8, u8)> {
    if *aml.get(p)? != 0x12 {
        return None;
    }
    p += 1;
    let lead = *aml.get(p)?;
    // PkgLength: bits 7-6 of the lead byte count the bytes that follow it (0..=3)
    p = p.checked_add(1 + (lead >> 6) as usize)?;
    let count = *aml.get(p)?;
    p += 1;
    if count < 1 {
        return None;
    }
    let (a, p) = integer(aml, p)?;
    // a one-element package (some firmware) gives SLP_TYPb = SLP_TYPa's register only
    let b = if count >= 2 { integer(aml, p)?.0 } else { 0 };
    // a sleep type is three bits: anything wider is not understood, not truncated
    (a <= 7 && b <= 7).then_some((a as u8, b as u8))
}

/// One AML integer constant at `p`: its value and the offset after it.
fn integer(aml: &[u8], p: usize) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let b = aml.get(p + 1..p + 1 + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64))
    };
    match *aml.get(p)? {
        0x00 => Some((0, p + 1)),               // ZeroOp
        0x01 => Some((1, p + 1)),               // OneOp
        0xff => Some((u64::MAX, p + 1)),        // OnesOp
        0x0a => Some((le(1)?, p + 2)),          // BytePrefix
        0x0b => Some((le(2)?, p + 3)),          // WordPrefix
        0x0c => Some((le(4)?, p + 5)),          // DWordPrefix
        0x0e => Some((le(8)?, p + 9)),          // QWordPrefix
        _ => None,
    }
}
