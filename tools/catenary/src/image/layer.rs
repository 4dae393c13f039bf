//! One layer's tar stream → that layer's tree (`tree::Dir`), with OCI whiteout markers recorded
//! rather than applied, file bytes appended to the spool, and every hostile shape refused:
//! `..` and absolute paths, entries below a symlink or a file, hard links to nothing, names and
//! paths past the limits, and more entries or bytes than the budget allows.
//!
//! The tar is read in the `tar` crate's raw mode so that GNU long names and PAX records are read
//! here with a size bound (the crate would read a long-name record of any size into memory).

use std::io::Read;

use tar::{EntryType, PaxExtensions};

use super::error::{PackError, Result};
use super::spool::Spool;
use super::tree::{self, Dir, Meta, Node};

/// Bounds on what one image may make the packer do. A tar bomb hits one of these and fails with
/// `PackError::Limit`, before the disk or memory fills.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Tar entries over all layers.
    pub max_entries: u64,
    /// Bytes of regular-file content over all layers.
    pub max_total_bytes: u64,
    /// Bytes of one path (or link target) in a layer.
    pub max_path_len: usize,
    /// Directory depth of one path.
    pub max_depth: usize,
    /// Layers in one image.
    pub max_layers: usize,
    /// Bytes of a JSON document (index, manifest, config) or of a PAX / long-name record.
    pub max_meta_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 1_000_000,
            max_total_bytes: 8 << 30,
            max_path_len: 4096,
            max_depth: 256,
            max_layers: 128,
            max_meta_bytes: 4 << 20,
        }
    }
}

/// What all layers so far have used of the limits.
#[derive(Debug, Default)]
pub struct Budget {
    pub entries: u64,
    pub bytes: u64,
}

/// Longest file name Linux accepts (NAME_MAX; squashfs stores up to 256).
const MAX_NAME: usize = 255;
const OPAQUE: &[u8] = b".wh..wh..opq";
const WH: &[u8] = b".wh.";

pub struct LayerCtx<'a> {
    pub index: usize,
    pub lower: &'a Dir,
    pub spool: &'a mut Spool,
    pub limits: &'a Limits,
    pub budget: &'a mut Budget,
    pub warnings: &'a mut Vec<String>,
}

/// Read one uncompressed layer tar into its own tree.
pub fn read_layer(ctx: &mut LayerCtx<'_>, stream: &mut dyn Read) -> Result<Dir> {
    let mut upper = Dir::new(Meta::IMPLICIT_DIR, false);
    let mut archive = tar::Archive::new(stream);
    let entries = archive.entries().map_err(|e| malformed(ctx.index, e))?.raw(true);
    // GNU long name, GNU long link and PAX records for the next member.
    let (mut long_name, mut long_link, mut pax) = (None::<Vec<u8>>, None::<Vec<u8>>, None::<Vec<u8>>);
    for entry in entries {
        let mut entry = entry.map_err(|e| malformed(ctx.index, e))?;
        ctx.budget.entries += 1;
        if ctx.budget.entries > ctx.limits.max_entries {
            return Err(PackError::Limit(format!("more than {} tar entries (layer {})", ctx.limits.max_entries, ctx.index)));
        }
        let et = entry.header().entry_type();
        let size = entry.header().size().map_err(|e| malformed(ctx.index, e))?;
        // Extension records describe the next member: read them with a bound.
        if et.is_gnu_longname() || et.is_gnu_longlink() || et.is_pax_local_extensions() {
            if size > ctx.limits.max_meta_bytes {
                return Err(PackError::Limit(format!("layer {}: a {size}-byte tar extension record", ctx.index)));
            }
            let mut v = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut v).map_err(|e| malformed(ctx.index, e))?;
            let slot = if et.is_gnu_longname() {
                &mut long_name
            } else if et.is_gnu_longlink() {
                &mut long_link
            } else {
                &mut pax
            };
            if slot.replace(v).is_some() {
                return Err(malformed(ctx.index, "two extension records of one kind for one member"));
            }
            continue;
        }
        if et.is_pax_global_extensions() {
            continue;
        }
        let (ln, ll, px) = (long_name.take(), long_link.take(), pax.take());
        let pax_get = |key: &str| -> Option<Vec<u8>> {
            let px = px.as_ref()?;
            PaxExtensions::new(px).filter_map(|e| e.ok()).find(|e| e.key_bytes() == key.as_bytes()).map(|e| e.value_bytes().to_vec())
        };
        let raw_path = match (ln, pax_get("path")) {
            (Some(n), _) => trim_nul(n),
            (None, Some(p)) => p,
            (None, None) => entry.header().path_bytes().into_owned(),
        };
        let raw_link = match (ll, pax_get("linkpath")) {
            (Some(n), _) => Some(trim_nul(n)),
            (None, Some(p)) => Some(p),
            (None, None) => entry.header().link_name_bytes().map(|c| c.into_owned()),
        };
        if let Some(s) = pax_get("size") {
            if std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u64>().ok()) != Some(size) {
                return Err(bad(ctx.index, &raw_path, "PAX size record differs from the header size (files over 8 GiB are not supported)"));
            }
        }
        let path = split_path(&raw_path, ctx.limits).map_err(|why| bad(ctx.index, &raw_path, &why))?;
        let h = entry.header();
        let meta = Meta {
            mode: (h.mode().map_err(|e| bad(ctx.index, &raw_path, &e.to_string()))? & 0o7777) as u16,
            uid: u32::try_from(h.uid().map_err(|e| bad(ctx.index, &raw_path, &e.to_string()))?).map_err(|_| bad(ctx.index, &raw_path, "uid over 32 bits"))?,
            gid: u32::try_from(h.gid().map_err(|e| bad(ctx.index, &raw_path, &e.to_string()))?).map_err(|_| bad(ctx.index, &raw_path, "gid over 32 bits"))?,
            mtime: h.mtime().map_err(|e| bad(ctx.index, &raw_path, &e.to_string()))?.min(u32::MAX as u64) as u32,
        };
        let Some((name, parents)) = path.split_last() else {
            // "./" or "/": the root directory itself.
            if et == EntryType::Directory {
                upper.meta = meta;
                upper.explicit = true;
                continue;
            }
            return Err(bad(ctx.index, &raw_path, "a non-directory entry for the root"));
        };
        // Check the parents (and create missing ones) before reading any data.
        parent_dir(&mut upper, parents).map_err(|why| bad(ctx.index, &raw_path, &why))?;

        if let Some(target) = name.strip_prefix(WH) {
            let parent = parent_dir(&mut upper, parents).map_err(|why| bad(ctx.index, &raw_path, &why))?;
            if name == OPAQUE {
                parent.opaque = true;
            } else if target.starts_with(WH) {
                ctx.warnings.push(format!("layer {}: ignored aufs metadata entry {}", ctx.index, lossy(&raw_path)));
            } else if target.is_empty() || target == b"." || target == b".." {
                return Err(bad(ctx.index, &raw_path, "whiteout of no name"));
            } else {
                parent.whiteouts.insert(target.to_vec());
            }
            continue;
        }

        let node = match et {
            EntryType::Regular | EntryType::Continuous => {
                if ctx.budget.bytes.saturating_add(size) > ctx.limits.max_total_bytes {
                    return Err(PackError::Limit(format!(
                        "more than {} bytes of file content (layer {}, at {})",
                        ctx.limits.max_total_bytes,
                        ctx.index,
                        lossy(&raw_path)
                    )));
                }
                ctx.budget.bytes += size;
                let data = ctx.spool.append(&mut entry, size).map_err(|e| bad(ctx.index, &raw_path, &e.to_string()))?;
                Node::File { meta, data, ino: ctx.budget.entries }
            }
            EntryType::Directory => Node::Dir(Dir::new(meta, true)),
            EntryType::Symlink => {
                let target = raw_link.ok_or_else(|| bad(ctx.index, &raw_path, "symlink without a target"))?;
                if target.is_empty() || target.len() > ctx.limits.max_path_len || target.contains(&0) {
                    return Err(bad(ctx.index, &raw_path, "symlink target empty, too long or with a NUL byte"));
                }
                // Stored verbatim: it is resolved only inside the guest, against the guest's root.
                Node::Symlink { meta, target }
            }
            EntryType::Link => {
                let raw_target = raw_link.ok_or_else(|| bad(ctx.index, &raw_path, "hard link without a target"))?;
                let target = split_path(&raw_target, ctx.limits).map_err(|why| bad(ctx.index, &raw_path, &format!("hard link target: {why}")))?;
                // The target is an earlier member of this layer or a file of a lower one.
                let found = tree::lookup(&upper, &target).or_else(|| tree::lookup(ctx.lower, &target));
                match found {
                    Some(Node::File { meta, data, ino }) => Node::File { meta: *meta, data: *data, ino: *ino },
                    Some(other) => {
                        return Err(bad(ctx.index, &raw_path, &format!("hard link to a {} ({})", other.kind(), lossy(&raw_target))));
                    }
                    None => return Err(bad(ctx.index, &raw_path, &format!("hard link to a missing file ({})", lossy(&raw_target)))),
                }
            }
            EntryType::Fifo => Node::Fifo { meta },
            EntryType::Char | EntryType::Block => {
                ctx.warnings.push(format!("layer {}: skipped device node {} (a guest gets devices from devtmpfs)", ctx.index, lossy(&raw_path)));
                continue;
            }
            EntryType::GNUSparse => return Err(bad(ctx.index, &raw_path, "GNU sparse files are not supported")),
            other => {
                ctx.warnings.push(format!("layer {}: skipped tar entry {} of type {:?}", ctx.index, lossy(&raw_path), other));
                continue;
            }
        };
        let parent = parent_dir(&mut upper, parents).map_err(|why| bad(ctx.index, &raw_path, &why))?;
        match (parent.children.get_mut(name), node) {
            // A directory listed again (or after its children) keeps its children.
            (Some(Node::Dir(d)), Node::Dir(new)) => {
                d.meta = new.meta;
                d.explicit = true;
            }
            (_, node) => {
                parent.children.insert(name.clone(), node);
            }
        }
    }
    Ok(upper)
}

/// Split a layer path into components: "." and empty ones dropped, `..` and absolute paths
/// refused (a layer names paths relative to the image root, and nothing else).
pub fn split_path(raw: &[u8], limits: &Limits) -> std::result::Result<Vec<Vec<u8>>, String> {
    if raw.len() > limits.max_path_len {
        return Err(format!("path of {} bytes (limit {})", raw.len(), limits.max_path_len));
    }
    if raw.contains(&0) {
        return Err("NUL byte in path".into());
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute path (layer paths are relative to the image root)".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("'..' component (path traversal)".into()),
            c if c.len() > MAX_NAME => return Err(format!("a name of {} bytes (limit {MAX_NAME})", c.len())),
            c => out.push(c.to_vec()),
        }
    }
    if out.len() > limits.max_depth {
        return Err(format!("{} directory levels (limit {})", out.len(), limits.max_depth));
    }
    Ok(out)
}

/// The directory that holds an entry, creating missing parents as implicit directories. A parent
/// that this layer made a symlink or a file is an error (containerd would write through it).
fn parent_dir<'d>(upper: &'d mut Dir, parents: &[Vec<u8>]) -> std::result::Result<&'d mut Dir, String> {
    let mut d = upper;
    for (i, c) in parents.iter().enumerate() {
        let child = d.children.entry(c.clone()).or_insert_with(|| Node::Dir(Dir::new(Meta::IMPLICIT_DIR, false)));
        d = match child {
            Node::Dir(sub) => sub,
            other => return Err(format!("entry under a {} ({}) of the same layer", other.kind(), tree::join(&parents[..=i]))),
        };
    }
    Ok(d)
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bad(layer: usize, path: &[u8], why: &str) -> PackError {
    PackError::BadEntry { layer, path: lossy(path), why: why.to_string() }
}

fn malformed(layer: usize, e: impl std::fmt::Display) -> PackError {
    PackError::Malformed { what: format!("layer {layer} tar stream"), why: e.to_string() }
}
