//! The merged tree → a squashfs image (backhand's writer). Ownership and modes come from the
//! tree, not from a host filesystem, so no root is needed; nodes are pushed in sorted order and
//! the superblock time is 0, so the same tree gives the same bytes.
//!
//! Hard links: paths of the final tree that share a file (`ino`, the tar entry the file came
//! from) are one squashfs inode with a link count, through `push_hard_link`, which backhand
//! lacks: the workspace uses backhand 0.25.5 with that addition (third_party/README.md). The
//! first of the paths in sorted order holds the data; the others link to it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

use super::error::{io_err, PackError, Result};
use super::spool::Slice;
use super::tree::{Dir, Meta, Node};

pub const MEDIA_TYPE: &str = "application/vnd.catenary.rootfs.squashfs";

/// Write `root` to `out`. File bytes are read from `spool`.
pub fn write(root: &Dir, spool: Arc<File>, out: &Path) -> Result<u64> {
    let sq = |e: backhand::BackhandError| PackError::Squashfs(e.to_string());
    let mut fs = FilesystemWriter::default();
    fs.set_time(0);
    // zlib: the guest kernel has SQUASHFS_ZLIB (and XZ, ZSTD); backhand's gzip is pure Rust.
    fs.set_compressor(FilesystemCompressor::new(Compressor::Gzip, None).map_err(sq)?);
    fs.set_root_mode(root.meta.mode);
    fs.set_root_uid(root.meta.uid);
    fs.set_root_gid(root.meta.gid);
    let mut links = HashMap::new();
    count_links(root, &mut links);
    let mut first = HashMap::new();
    push_dir(&mut fs, root, &mut PathBuf::from("/"), &spool, &links, &mut first)?;
    let f = File::options().write(true).create_new(true).open(out).map_err(io_err(out))?;
    let mut w = std::io::BufWriter::new(f);
    let (_, len) = fs.write(&mut w).map_err(sq)?;
    let f = w.into_inner().map_err(|e| io_err(out)(e.into_error()))?;
    // The writer seeks back over data blocks it finds duplicated (hard links, equal files), which
    // leaves stale bytes past the image's end: cut them off.
    f.set_len(len).map_err(io_err(out))?;
    f.sync_all().map_err(io_err(out))?;
    Ok(len)
}

fn header(m: &Meta) -> NodeHeader {
    NodeHeader::new(m.mode, m.uid, m.gid, m.mtime)
}

/// How many paths of the tree each file (`ino`) has.
fn count_links(d: &Dir, n: &mut HashMap<u64, u32>) {
    for node in d.children.values() {
        match node {
            Node::Dir(sub) => count_links(sub, n),
            Node::File { ino, .. } => *n.entry(*ino).or_insert(0) += 1,
            _ => {}
        }
    }
}

/// `links`: paths per file; `first`: the path that holds each hard-linked file's data.
fn push_dir(
    fs: &mut FilesystemWriter<'_, '_, '_>,
    d: &Dir,
    path: &mut PathBuf,
    spool: &Arc<File>,
    links: &HashMap<u64, u32>,
    first: &mut HashMap<u64, PathBuf>,
) -> Result<()> {
    for (name, node) in &d.children {
        path.push(OsStr::from_bytes(name));
        let err = |e: backhand::BackhandError| PackError::Squashfs(format!("{}: {e}", path.display()));
        match node {
            Node::Dir(sub) => {
                fs.push_dir(&*path, header(&sub.meta)).map_err(err)?;
                push_dir(fs, sub, path, spool, links, first)?;
            }
            Node::File { meta, data, ino } => match first.get(ino) {
                Some(target) => fs.push_hard_link(target, &*path).map_err(err)?,
                None => {
                    fs.push_file(Slice::new(spool.clone(), *data), &*path, header(meta)).map_err(err)?;
                    if links.get(ino).is_some_and(|&n| n > 1) {
                        first.insert(*ino, path.clone());
                    }
                }
            },
            Node::Symlink { meta, target } => fs.push_symlink(OsStr::from_bytes(target), &*path, header(meta)).map_err(err)?,
            Node::Fifo { meta } => fs.push_fifo(&*path, header(meta)).map_err(err)?,
        }
        path.pop();
    }
    Ok(())
}
