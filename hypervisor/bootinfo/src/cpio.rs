//! The boot-module image store: a read-only view of a cpio "newc" archive.
//!
//! Guest kernels, initramfs images and other guest artefacts travel to Catenary as one boot
//! module in the cpio newc format (what `cpio -o -H newc` and the Linux initramfs use):
//!
//! * each entry: a 110-byte ASCII header — magic `070701` (or `070702`, whose checksum is
//!   ignored) and 13 eight-digit hex fields `ino mode uid gid nlink mtime filesize devmajor
//!   devminor rdevmajor rdevminor namesize check` — then `namesize` bytes of name including its
//!   NUL, padded so header + name end on a 4-byte boundary, then `filesize` bytes of data padded
//!   to 4 bytes;
//! * the archive ends with an entry named `TRAILER!!!`; anything after it is ignored.
//!
//! Directory entries are skipped; every other entry (regular files, symlinks whose data is the
//! target) is stored. Leading `./` and `/` are stripped from names. Duplicate names, non-UTF-8
//! names, bad hex, truncation and a missing trailer are errors. Nothing is copied: the store
//! borrows the archive bytes.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
/// Largest number of entries accepted in one archive.
pub const MAX_ENTRIES: usize = 65536;

/// Why an archive was rejected. `offset` is the byte offset of the offending entry's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioError {
    /// The header magic is not `070701`/`070702`.
    BadMagic {
        /// Offset of the entry.
        offset: usize,
    },
    /// A header field is not 8 hex digits.
    BadHeader {
        /// Offset of the entry.
        offset: usize,
    },
    /// The archive ends inside an entry or before the trailer.
    Truncated {
        /// Offset of the entry.
        offset: usize,
    },
    /// A name is empty, lacks its NUL, or is not UTF-8.
    BadName {
        /// Offset of the entry.
        offset: usize,
    },
    /// Two entries have the same (normalised) name.
    DuplicateName {
        /// Offset of the second entry.
        offset: usize,
    },
    /// More than `MAX_ENTRIES` (65536) entries.
    TooManyEntries,
}

impl fmt::Display for CpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpioError::BadMagic { offset } => write!(f, "cpio: bad magic at {offset:#x}"),
            CpioError::BadHeader { offset } => write!(f, "cpio: bad header at {offset:#x}"),
            CpioError::Truncated { offset } => write!(f, "cpio: truncated at {offset:#x}"),
            CpioError::BadName { offset } => write!(f, "cpio: bad name at {offset:#x}"),
            CpioError::DuplicateName { offset } => {
                write!(f, "cpio: duplicate name at {offset:#x}")
            }
            CpioError::TooManyEntries => write!(f, "cpio: more than {MAX_ENTRIES} entries"),
        }
    }
}

/// A parsed cpio newc archive: name → bytes, borrowed from the archive.
#[derive(Debug, Clone, Default)]
pub struct ImageStore<'a> {
    entries: Vec<(&'a str, &'a [u8])>,
    index: BTreeMap<&'a str, usize>,
}

fn hex_field(h: &[u8], index: usize, offset: usize) -> Result<usize, CpioError> {
    let start = 6 + index * 8;
    let digits = &h[start..start + 8];
    let mut v: u32 = 0;
    for &d in digits {
        let x = (d as char)
            .to_digit(16)
            .ok_or(CpioError::BadHeader { offset })?;
        v = (v << 4) | x;
    }
    Ok(v as usize)
}

fn pad4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

fn normalise_name(name: &str) -> &str {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            return n;
        }
    }
}

impl<'a> ImageStore<'a> {
    /// Parses a cpio newc archive. Never panics; malformed input gives a [`CpioError`].
    pub fn parse(bytes: &'a [u8]) -> Result<ImageStore<'a>, CpioError> {
        let mut entries: Vec<(&'a str, &'a [u8])> = Vec::new();
        let mut index: BTreeMap<&'a str, usize> = BTreeMap::new();
        let mut off = 0usize;
        loop {
            let offset = off;
            let trunc = CpioError::Truncated { offset };
            let end = off.checked_add(HEADER_LEN).ok_or(trunc.clone())?;
            let h = bytes.get(off..end).ok_or(trunc.clone())?;
            if &h[..6] != b"070701" && &h[..6] != b"070702" {
                return Err(CpioError::BadMagic { offset });
            }
            let mode = hex_field(h, 1, offset)? as u32;
            let filesize = hex_field(h, 6, offset)?;
            let namesize = hex_field(h, 11, offset)?;
            if namesize == 0 {
                return Err(CpioError::BadName { offset });
            }
            let name_end = end.checked_add(namesize).ok_or(trunc.clone())?;
            let raw_name = bytes.get(end..name_end).ok_or(trunc.clone())?;
            let (&nul, name) = raw_name.split_last().ok_or(CpioError::BadName { offset })?;
            if nul != 0 || name.contains(&0) {
                return Err(CpioError::BadName { offset });
            }
            let name = core::str::from_utf8(name).map_err(|_| CpioError::BadName { offset })?;
            let data_start = pad4(name_end).ok_or(trunc.clone())?;
            let data_end = data_start.checked_add(filesize).ok_or(trunc.clone())?;
            let data = bytes.get(data_start..data_end).ok_or(trunc.clone())?;
            if name == TRAILER {
                return Ok(ImageStore { entries, index });
            }
            let name = normalise_name(name);
            if mode & S_IFMT != S_IFDIR && !name.is_empty() && name != "." {
                if entries.len() >= MAX_ENTRIES {
                    return Err(CpioError::TooManyEntries);
                }
                if index.insert(name, entries.len()).is_some() {
                    return Err(CpioError::DuplicateName { offset });
                }
                entries.push((name, data));
            }
            // The next header starts at the padded end of the data; a missing trailer shows up
            // as truncation on the next iteration.
            off = pad4(data_end).ok_or(trunc)?;
        }
    }

    /// The data of the entry `name` (leading `./` or `/` ignored), if present.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let name = normalise_name(name);
        self.index.get(name).map(|&i| self.entries[i].1)
    }

    /// All entries as `(name, data)`, in archive order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.entries.iter().copied()
    }

    /// Number of stored entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
