//! A node fetching an image from the nodes that hold it (docs/orchestration.md "Images follow
//! their replicas"), sans I/O: the caller (`apid`) gives a `get` that sends one node-to-node
//! request (`crate::peer`) to a holder and says whether its answer is in (`Poll::Ready`) or
//! still on its way (`Poll::Pending`: `apid` never waits for another node, its loop serves
//! other connections meanwhile), and the node's workload service as a [`Backend`]; each
//! [`Fetch::step`] asks for one request's answer and says what happened. Until an answer is
//! in, every step asks `get` for the same (holder, path) again and changes nothing
//! ([`Event::Waiting`]).
//!
//! The image is named by its digest, so nothing a holder says is believed:
//!
//! - its `image.json` must have the image's digest (sha256) and be a manifest; the sizes and
//!   the digests of `config.json` and `rootfs.squashfs` come from it;
//! - chunks are asked in order, and each must have exactly the length the sizes give; when
//!   `image.json` lists its pieces' digests (every image `catenary image pack` makes: 256 KiB
//!   pieces, or larger past 32 MiB, `store::piece_size`), each piece is checked as its last
//!   chunk arrives, so a wrong byte is refused within a piece. Each chunk's sha256 goes with it
//!   into the store (`ImageChunk`, which `workd` checks again on the bytes it copies), and its
//!   bytes go into running digests of the two files: `config.json` is checked as soon as its
//!   last byte came, `rootfs.squashfs` after the last chunk (for an image without the list, a
//!   wrong byte of the root filesystem shows only there);
//! - the store verifies the whole image again on commit (`ImageCommit`).
//!
//! A holder that fails any check is **refused**; one that does not have the image or does not
//! answer is skipped. When `image.json` lists the pieces, every piece already in the upload
//! was checked against the list, so the next holder **takes over at the start of the piece**
//! where the last one failed (a holder that dies half-way through a large image costs at most
//! a piece). Without the list the bytes so far are unproven: the upload is aborted (its store
//! frames freed) and the next holder is asked from the start. When no holder is left the fetch
//! has failed (the caller tries again later). Bounded: one upload at a time per fetch, the store's own bounds on its size
//! (`ImageBegin`: the kernel's quota and image limit), a chunk at most [`CHUNK_SIZE`].

use crate::peer::{chunk_path, manifest_path};
use crate::router::Backend;
use crate::upload::CHUNK_SIZE;
use alloc::vec::Vec;
use core::task::Poll;
use catenary_workload::proto::{self as wk, Reply};
use catenary_workload::store::{manifest_info, manifest_pieces, ImageInfo, Pieces};
use catenary_workload::{Digest, Hasher};

/// One node-to-node request: (holder, path) → `Ready(Some((status, body)))`, `Ready(None)` (no
/// answer in time), or `Pending` (asked, no answer yet: the same request is asked for again).
pub type Get<'a> = dyn FnMut(usize, &str) -> Poll<Option<(u16, Vec<u8>)>> + 'a;

/// What one step did (the caller logs it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The answer `holder` owes is not in yet: nothing changed.
    Waiting { holder: usize },
    /// `holder` has the image: `size` bytes in `chunks` chunks to fetch.
    Started { holder: usize, size: u64, chunks: u32 },
    /// Chunk `n` (0-based) of `chunks` from `holder` is in the store's upload.
    Chunk { holder: usize, n: u32, chunks: u32 },
    /// `holder` did not answer the request for chunk `n` in time: it is asked again.
    Retry { holder: usize, n: u32 },
    /// `holder` does not have the image, or did not answer: the next one is asked.
    NotHeld { holder: usize },
    /// `holder` served bytes that are not the image's: refused, the next one is asked.
    Refused { holder: usize, why: &'static str },
    /// The image is in the store (`from`: the holder it came from; `None`: it was there).
    Done { from: Option<usize>, info: ImageInfo },
    /// No holder left, or the store refused (no room): nothing is kept.
    Failed { why: &'static str },
}

struct Current {
    holder: usize,
    info: ImageInfo,
    upload: u32,
    size: u64,
    next: u32,
    chunks: u32,
    config: Hasher,
    rootfs: Hasher,
    config_checked: bool,
    /// Requests of the current chunk that got no answer.
    misses: u32,
    /// The pieces' digests, when `image.json` lists them.
    pieces: Option<Pieces>,
    /// The running digest of the piece under way.
    piece: Hasher,
    /// Where the piece under way began: what a takeover goes back to.
    mark: Mark,
}

/// The fetch at the start of a piece: every byte before it checked against the list.
#[derive(Clone, Default)]
struct Mark {
    next: u32,
    config: Hasher,
    rootfs: Hasher,
    config_checked: bool,
}

/// A chunk whose request got no answer is asked again this many times from the same holder
/// (a loaded node or fabric), before the next holder is asked from the start.
pub const CHUNK_TRIES: u32 = 3;

pub struct Fetch {
    pub image: Digest,
    holders: Vec<usize>,
    tried: usize,
    cur: Option<Current>,
    finished: bool,
    /// Holders refused for wrong bytes.
    pub refused: Vec<usize>,
    /// Image bytes received (refused ones included).
    pub received: u64,
    /// Times a holder took over an upload at the chunk where the last one failed.
    pub handovers: u32,
}

impl Fetch {
    /// Fetch `image`, asking `holders` (the caller's node indexes) in this order.
    pub fn new(image: Digest, holders: Vec<usize>) -> Fetch {
        Fetch { image, holders, tried: 0, cur: None, finished: false, refused: Vec::new(), received: 0, handovers: 0 }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// An upload is under way: after a `Refused` or `NotHeld`, the next holder continues it at
    /// the piece where that one failed (the manifest lists the pieces).
    pub fn taking_over(&self) -> bool {
        self.cur.is_some()
    }

    /// One request to a holder (or none, when the fetch is over), and what came of it.
    pub fn step(&mut self, backend: &mut dyn Backend, get: &mut Get) -> Event {
        if self.finished {
            return Event::Failed { why: "the fetch is over" };
        }
        let ev = match self.cur.is_some() {
            false => self.begin(backend, get),
            true => self.chunk(backend, get),
        };
        if matches!(ev, Event::Done { .. } | Event::Failed { .. }) {
            self.finished = true;
        }
        ev
    }

    fn begin(&mut self, backend: &mut dyn Backend, get: &mut Get) -> Event {
        let Some(&holder) = self.holders.get(self.tried) else { return Event::Failed { why: "no node gave the image" } };
        let Poll::Ready(answer) = get(holder, &manifest_path(&self.image)) else { return Event::Waiting { holder } };
        self.tried += 1;
        let Some((200, manifest)) = answer else { return Event::NotHeld { holder } };
        if Digest::of(&manifest) != self.image {
            return self.refuse(holder, backend, "its image.json does not have the image's digest");
        }
        let (Ok(info), Ok(pieces)) = (manifest_info(&manifest), manifest_pieces(&manifest)) else {
            return self.refuse(holder, backend, "its image.json is not an image manifest");
        };
        let size = info.config_size.saturating_add(info.rootfs_size);
        match backend.workd(wk::Request::ImageBegin { image: self.image, manifest }) {
            Ok(Reply::Upload { present: true, .. }) => Event::Done { from: None, info },
            Ok(Reply::Upload { upload, size: s, .. }) if s == size => {
                let chunks = size.div_ceil(CHUNK_SIZE as u64) as u32;
                self.cur = Some(Current { holder, info, upload, size, next: 0, chunks, config: Hasher::new(), rootfs: Hasher::new(), config_checked: false, misses: 0, pieces, piece: Hasher::new(), mark: Mark::default() });
                Event::Started { holder, size, chunks }
            }
            Err(wk::Error::StoreFull) => Event::Failed { why: "the node's image store has no room for it" },
            _ => Event::Failed { why: "the node's store refused to begin the upload" },
        }
    }

    fn chunk(&mut self, backend: &mut dyn Backend, get: &mut Get) -> Event {
        let Some(c) = self.cur.as_mut() else { return Event::Failed { why: "no upload" } };
        let holder = c.holder;
        if c.next < c.chunks {
            let n = c.next;
            let off = u64::from(n) * CHUNK_SIZE as u64;
            let len = (c.size - off).min(CHUNK_SIZE as u64) as usize;
            let Poll::Ready(answer) = get(holder, &chunk_path(&self.image, n)) else { return Event::Waiting { holder } };
            let bytes = match answer {
                Some((200, b)) => b,
                // no answer in time: the same chunk again, a few times
                None if c.misses + 1 < CHUNK_TRIES => {
                    c.misses += 1;
                    return Event::Retry { holder, n };
                }
                // gone in the middle: the next holder (at this chunk, or from the start)
                _ => return self.hand_over(holder, backend, None),
            };
            c.misses = 0;
            self.received += bytes.len() as u64;
            if bytes.len() != len {
                return self.hand_over(holder, backend, Some("a chunk of the wrong length"));
            }
            let digest = Digest::of(&bytes);
            c.piece.update(&bytes);
            // the running digests of the two files the stream holds
            let cl = c.info.config_size;
            let split = cl.saturating_sub(off).min(len as u64) as usize;
            c.config.update(&bytes[..split]);
            c.rootfs.update(&bytes[split..]);
            if !c.config_checked && off + len as u64 >= cl {
                c.config_checked = true;
                if core::mem::take(&mut c.config).finish() != c.info.config {
                    return self.hand_over(holder, backend, Some("config.json's bytes do not have the digest image.json names"));
                }
            }
            let req = wk::Request::ImageChunk { upload: c.upload, offset: off, len: len as u32, digest };
            match backend.workd_chunk(req, &bytes) {
                Ok(Reply::Done) => {}
                Err(wk::Error::NoSuchUpload) => return Event::Failed { why: "the store dropped the upload" },
                _ => {
                    self.abort(backend);
                    return Event::Failed { why: "the node's store refused a chunk" };
                }
            }
            c.next += 1;
            // the piece this chunk ends: checked against the list, or back to its start
            if let Some(p) = &c.pieces {
                let end = off + len as u64;
                if end.is_multiple_of(p.size) || end == c.size {
                    let listed = p.digests.get((off / p.size) as usize).copied();
                    if listed != Some(core::mem::take(&mut c.piece).finish()) {
                        return self.hand_over(holder, backend, Some("a piece does not have the digest image.json lists"));
                    }
                    c.mark = Mark { next: c.next, config: c.config.clone(), rootfs: c.rootfs.clone(), config_checked: c.config_checked };
                }
            }
            if c.next < c.chunks {
                return Event::Chunk { holder, n, chunks: c.chunks };
            }
        }
        // every chunk is in: the root filesystem's digest, then the store's own verification
        let c = self.cur.as_mut().expect("checked above");
        if !c.config_checked || core::mem::take(&mut c.rootfs).finish() != c.info.rootfs {
            return self.refuse(holder, backend, "rootfs.squashfs's bytes do not have the digest image.json names");
        }
        let upload = c.upload;
        match backend.workd(wk::Request::ImageCommit { upload }) {
            Ok(Reply::Image(info)) if info.digest == self.image => {
                self.cur = None;
                Event::Done { from: Some(holder), info }
            }
            Err(wk::Error::ImageInvalid) => {
                // the store freed it already
                self.cur = None;
                self.refused.push(holder);
                Event::Refused { holder, why: "the store refused the whole image" }
            }
            _ => {
                self.abort(backend);
                Event::Failed { why: "the node's store did not commit the image" }
            }
        }
    }

    fn abort(&mut self, backend: &mut dyn Backend) {
        if let Some(c) = self.cur.take() {
            let _ = backend.workd(wk::Request::ImageAbort { upload: c.upload });
        }
    }

    /// `holder` failed in the middle of the transfer: `why` it was refused, or `None` when it
    /// did not give the chunk. With a piece list the next holder continues the same upload at
    /// the start of the piece under way (every piece before it was checked against the list;
    /// its chunks are written again); without one, or when no holder is left, the upload is
    /// aborted and the next step starts over.
    fn hand_over(&mut self, holder: usize, backend: &mut dyn Backend, why: Option<&'static str>) -> Event {
        let next = self.holders.get(self.tried).copied();
        match (self.cur.as_mut(), next) {
            (Some(c), Some(h)) if c.pieces.is_some() => {
                self.tried += 1;
                c.holder = h;
                c.misses = 0;
                let m = c.mark.clone();
                (c.next, c.config, c.rootfs, c.config_checked, c.piece) = (m.next, m.config, m.rootfs, m.config_checked, Hasher::new());
                self.handovers += 1;
                match why {
                    Some(why) => {
                        self.refused.push(holder);
                        Event::Refused { holder, why }
                    }
                    None => Event::NotHeld { holder },
                }
            }
            _ => match why {
                Some(why) => self.refuse(holder, backend, why),
                None => {
                    self.abort(backend);
                    Event::NotHeld { holder }
                }
            },
        }
    }

    fn refuse(&mut self, holder: usize, backend: &mut dyn Backend, why: &'static str) -> Event {
        self.abort(backend);
        self.refused.push(holder);
        Event::Refused { holder, why }
    }
}
