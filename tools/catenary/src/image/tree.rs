//! The merged root filesystem, built in memory: nothing from a layer is ever extracted onto the
//! host filesystem, so no entry can escape the output by construction. File contents live in the
//! spool (see `spool.rs`); a node holds only metadata and a reference into it.
//!
//! Each layer is first read into its own tree (with its whiteouts and opaque markers), then merged
//! onto the tree of the layers below (`merge`). That keeps the OCI rule that a whiteout hides
//! only what lower layers hold, never an entry of its own layer, whatever the order in the tar.

use std::collections::{BTreeMap, BTreeSet};

/// Permission bits (including setuid/setgid/sticky), owner and modification time of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

impl Meta {
    /// A directory that a layer needs but does not list (as containerd creates it).
    pub const IMPLICIT_DIR: Meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0 };
}

/// Where a regular file's bytes are in the spool. Hard links share one `Data` (and one `ino`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub meta: Meta,
    /// The layer listed this directory itself (else it was created for a child's sake, and must
    /// not change the metadata of, or replace, what lower layers have at that path).
    pub explicit: bool,
    /// `.wh..wh..opq`: hide everything lower layers have in this directory.
    pub opaque: bool,
    /// `.wh.NAME`: hide NAME of lower layers.
    pub whiteouts: BTreeSet<Vec<u8>>,
    pub children: BTreeMap<Vec<u8>, Node>,
}

impl Dir {
    pub fn new(meta: Meta, explicit: bool) -> Dir {
        Dir { meta, explicit, opaque: false, whiteouts: BTreeSet::new(), children: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(Dir),
    /// `ino`: which tar entry made the file (unique over all layers); hard links to it carry
    /// the same, and paths sharing one in the final tree are written as one inode.
    File { meta: Meta, data: Data, ino: u64 },
    Symlink { meta: Meta, target: Vec<u8> },
    Fifo { meta: Meta },
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Dir(_) => "directory",
            Node::File { .. } => "regular file",
            Node::Symlink { .. } => "symlink",
            Node::Fifo { .. } => "fifo",
        }
    }
}

/// Why a merge failed: the path (components joined by `/`) and the reason.
#[derive(Debug)]
pub struct MergeError {
    pub path: String,
    pub why: String,
}

/// Apply `upper` (one layer's tree) onto `lower` (the layers below, already merged).
pub fn merge(lower: &mut Dir, upper: Dir) -> Result<(), MergeError> {
    merge_at(lower, upper, &mut Vec::new())
}

fn merge_at(lower: &mut Dir, upper: Dir, path: &mut Vec<Vec<u8>>) -> Result<(), MergeError> {
    if upper.opaque {
        lower.children.clear();
    }
    for w in &upper.whiteouts {
        lower.children.remove(w);
    }
    if upper.explicit {
        lower.meta = upper.meta;
    }
    for (name, child) in upper.children {
        path.push(name.clone());
        match (lower.children.get_mut(&name), child) {
            (Some(Node::Dir(l)), Node::Dir(u)) => merge_at(l, u, path)?,
            (Some(other), Node::Dir(u)) if !u.explicit => {
                // The layer has entries below NAME but never said what NAME is, and below it is
                // a symlink or a file: writing through it is how a layer escapes its root.
                return Err(MergeError {
                    path: join(path),
                    why: format!("entries under a {} of a lower layer (not a directory)", other.kind()),
                });
            }
            (_, Node::Dir(u)) => {
                lower.children.insert(name, Node::Dir(strip(u)));
            }
            (_, other) => {
                lower.children.insert(name, other);
            }
        }
        path.pop();
    }
    Ok(())
}

/// A layer directory placed where no lower directory is: its whiteouts refer to nothing.
fn strip(mut d: Dir) -> Dir {
    d.opaque = false;
    d.whiteouts.clear();
    d.explicit = true;
    for c in d.children.values_mut() {
        if let Node::Dir(sub) = c {
            *sub = strip(std::mem::replace(sub, Dir::new(Meta::IMPLICIT_DIR, true)));
        }
    }
    d
}

pub fn join(path: &[Vec<u8>]) -> String {
    let v: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    v.join("/")
}

/// Find the node at `path` without following any symlink (a symlink as a parent is an error).
pub fn lookup<'a>(root: &'a Dir, path: &[Vec<u8>]) -> Option<&'a Node> {
    let (last, parents) = path.split_last()?;
    let mut d = root;
    for c in parents {
        match d.children.get(c)? {
            Node::Dir(sub) => d = sub,
            _ => return None,
        }
    }
    d.children.get(last)
}

/// Number of nodes in the tree (the root not counted).
pub fn count(d: &Dir) -> usize {
    d.children.values().map(|c| 1 + if let Node::Dir(s) = c { count(s) } else { 0 }).sum()
}
