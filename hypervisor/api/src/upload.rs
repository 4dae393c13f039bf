//! Image push: an image in chunks, resumable, verified per chunk and as a whole, straight into
//! the node's store.
//!
//! A Catenary image is `image.json` (its sha256 is the image digest), `config.json` and
//! `rootfs.squashfs` (named by sha256 and size in `image.json`). A push:
//!
//! 1. `POST /v1/images/uploads` `{image, manifest}`: the node checks the manifest's sha256
//!    against `image` at once and learns the sizes from it, then asks the workload service to
//!    begin the upload (`proto::Request::ImageBegin`: the kernel reserves the store's frames).
//!    The answer is the upload (id = the store's upload id, chunk size, the chunks it still
//!    lacks), the one already in progress for that image (resume), or `present` when the node
//!    has the image (nothing to send).
//! 2. `PUT /v1/images/uploads/{id}/chunks/{n}` with `Chunk-Digest: sha256:…` for each chunk of
//!    the stream `config.json ‖ rootfs.squashfs` ([`CHUNK_SIZE`] bytes, the last one shorter).
//!    A chunk whose bytes do not have that digest is refused (422) and not kept: the client
//!    sends it again. When `image.json` lists its pieces' digests and a piece is a chunk (a
//!    stream up to 32 MiB), a chunk that is not the listed one is refused too (422
//!    `chunk_not_in_image`: the source is not the image). One that has it goes to the store (`ImageChunk`, the bytes through the
//!    backend's [`crate::Backend::workd_chunk`]); the API keeps only which chunks arrived.
//! 3. `POST /v1/images/uploads/{id}/commit`: the store verifies the whole image as on any
//!    arrival (`ImageCommit`: `catenary_workload::store::verify` with the digest it was
//!    announced by) and keeps it, or refuses it (422) and frees it.
//!
//! Bounds: an image at most [`UploadLimits::image_max`] bytes, at most
//! [`UploadLimits::uploads_max`] uploads at once; a session idle for
//! [`UploadLimits::idle_ms`] is dropped here (the store drops its own after its idle time).
//! No image bytes are held by the API service.

use crate::error::ApiError;
use crate::router::Backend;
use crate::types::{Upload, UploadCreate};
use alloc::string::ToString;
use alloc::vec::Vec;
use catenary_workload::proto::{self as wk, Reply};
use catenary_workload::store::{manifest_pieces, ImageInfo, MANIFEST_MAX};
use catenary_workload::Digest;
use serde::Deserialize;

/// Bytes per chunk (the last one of an image is shorter); at most `proto::CHUNK_MAX`.
pub const CHUNK_SIZE: usize = catenary_workload::store::STREAM_CHUNK;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest stream (config.json + rootfs.squashfs) a push may announce.
    pub image_max: u64,
    pub uploads_max: usize,
    pub idle_ms: u64,
}

impl Default for UploadLimits {
    fn default() -> UploadLimits {
        UploadLimits { image_max: 64 << 20, uploads_max: 2, idle_ms: 600_000 }
    }
}

#[derive(Deserialize)]
struct Sizes {
    rootfs: Sized,
    config: Sized,
}

#[derive(Deserialize)]
struct Sized {
    size: u64,
}

#[derive(Debug)]
struct Session {
    /// The store's upload id.
    id: u32,
    image: Digest,
    size: u64,
    have: Vec<bool>,
    /// Each chunk's digest, when `image.json` lists its pieces and they are chunks (streams up
    /// to 32 MiB): a chunk that is not the image's is refused when it arrives, not at the
    /// commit. (Larger pieces span chunks a push may send in any order: the commit checks.)
    listed: Option<Vec<Digest>>,
    touched_ms: u64,
}

impl Session {
    fn chunks(&self) -> u32 {
        self.have.len() as u32
    }
    fn view(&self) -> Upload {
        Upload {
            id: self.id,
            image: self.image.to_string(),
            size: self.size,
            chunk_size: CHUNK_SIZE as u32,
            chunks: self.chunks(),
            missing: (0..self.chunks()).filter(|i| !self.have[*i as usize]).collect(),
            present: false,
        }
    }
}

/// The pushes in progress (what arrived; the bytes are in the node's store).
#[derive(Debug, Default)]
pub struct Uploads {
    limits: UploadLimits,
    sessions: Vec<Session>,
}

fn not_found() -> ApiError {
    ApiError::new(404, "no_such_upload", "no upload with this id (finished, aborted or expired)")
}

fn out_of_protocol() -> ApiError {
    ApiError::new(500, "internal", "the workload service answered out of protocol")
}

impl Uploads {
    pub fn new(limits: UploadLimits) -> Uploads {
        Uploads { limits, sessions: Vec::new() }
    }

    /// Uploads in progress, and the bytes their bookkeeping holds.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.sessions.iter().map(|s| s.have.capacity() + s.listed.as_ref().map_or(0, |l| l.capacity() * 32)).sum()
    }

    /// Start (or resume) pushing an image the node does not have.
    pub fn create(&mut self, req: &UploadCreate, backend: &mut dyn Backend, now_ms: u64) -> Result<Upload, ApiError> {
        self.expire(now_ms);
        let image = Digest::parse(&req.image).ok_or_else(|| ApiError::bad_request("image: not a sha256:<64 lowercase hex> digest"))?;
        let manifest = req.manifest.as_bytes();
        if manifest.len() > MANIFEST_MAX {
            return Err(ApiError::new(422, "image_invalid", "manifest: larger than 64 KiB"));
        }
        if Digest::of(manifest) != image {
            return Err(ApiError::new(422, "image_invalid", "manifest: its sha256 is not the image digest"));
        }
        if let Some(s) = self.sessions.iter_mut().find(|s| s.image == image) {
            s.touched_ms = now_ms;
            return Ok(s.view());
        }
        let sizes: Sizes = serde_json::from_slice(manifest).map_err(|_| ApiError::new(422, "image_invalid", "manifest: not a Catenary image manifest"))?;
        let size = sizes.rootfs.size.checked_add(sizes.config.size).filter(|s| *s <= self.limits.image_max);
        let Some(size) = size else {
            return Err(ApiError::new(413, "image_too_large", &alloc::format!("the image may be at most {} bytes", self.limits.image_max)));
        };
        if self.sessions.len() >= self.limits.uploads_max {
            return Err(ApiError::new(507, "too_many_uploads", "the node takes no more uploads at once; finish or abort one"));
        }
        let pieces = manifest_pieces(manifest).map_err(|_| ApiError::new(422, "image_invalid", "manifest: not a Catenary image manifest"))?;
        let listed = pieces.filter(|p| p.size == CHUNK_SIZE as u64).map(|p| p.digests);
        let (id, store_size) = match backend.workd(wk::Request::ImageBegin { image, manifest: manifest.to_vec() })? {
            Reply::Upload { present: true, .. } => return Ok(Upload { id: 0, image: req.image.clone(), size: 0, chunk_size: 0, chunks: 0, missing: Vec::new(), present: true }),
            Reply::Upload { upload, size, .. } => (upload, size),
            _ => return Err(out_of_protocol()),
        };
        if store_size != size || self.sessions.iter().any(|s| s.id == id) {
            return Err(out_of_protocol());
        }
        let chunks = size.div_ceil(CHUNK_SIZE as u64) as usize;
        let mut have = Vec::new();
        have.try_reserve_exact(chunks).map_err(|_| ApiError::new(507, "no_memory", "the API service cannot track the upload now"))?;
        have.resize(chunks, false);
        let s = Session { id, image, size, have, listed, touched_ms: now_ms };
        let view = s.view();
        self.sessions.push(s);
        Ok(view)
    }

    fn find(&mut self, id: u32) -> Result<&mut Session, ApiError> {
        self.sessions.iter_mut().find(|s| s.id == id).ok_or_else(not_found)
    }

    pub fn get(&mut self, id: u32, now_ms: u64) -> Result<Upload, ApiError> {
        self.expire(now_ms);
        Ok(self.find(id)?.view())
    }

    /// Chunk `index` with the digest the client computed; sent to the store only when the
    /// bytes have it.
    pub fn put_chunk(&mut self, id: u32, index: u32, digest: Option<&str>, body: &[u8], backend: &mut dyn Backend, now_ms: u64) -> Result<Upload, ApiError> {
        self.expire(now_ms);
        let s = self.find(id)?;
        let Some(have) = s.have.get(index as usize).copied() else {
            return Err(ApiError::bad_request(&alloc::format!("chunk {index}: the upload has {} chunks", s.chunks())));
        };
        let want = digest.ok_or_else(|| ApiError::bad_request("Chunk-Digest: missing (sha256:<hex> of the chunk)"))?;
        let want = Digest::parse(want).ok_or_else(|| ApiError::bad_request("Chunk-Digest: not a sha256:<64 lowercase hex> digest"))?;
        let start = index as u64 * CHUNK_SIZE as u64;
        let len = (CHUNK_SIZE as u64).min(s.size - start) as usize;
        if body.len() != len {
            return Err(ApiError::bad_request(&alloc::format!("chunk {index}: {} bytes, expected {len}", body.len())));
        }
        if Digest::of(body) != want {
            return Err(ApiError::new(422, "chunk_digest_mismatch", &alloc::format!("chunk {index}: the bytes do not have the Chunk-Digest; send it again")));
        }
        // whole and as sent, but not the image's (the source is not the image it named)
        if s.listed.as_ref().is_some_and(|l| l.get(index as usize) != Some(&want)) {
            return Err(ApiError::new(422, "chunk_not_in_image", &alloc::format!("chunk {index}: not the chunk image.json lists; the source is not this image")));
        }
        if !have {
            let r = backend.workd_chunk(wk::Request::ImageChunk { upload: id, offset: start, len: len as u32, digest: want }, body);
            let s = self.find(id)?;
            match r {
                Ok(Reply::Done) => s.have[index as usize] = true,
                Ok(_) => return Err(out_of_protocol()),
                Err(wk::Error::NoSuchUpload) => {
                    // the store dropped it (idle, or the node restarted): so does the API
                    self.sessions.retain(|s| s.id != id);
                    return Err(not_found());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let s = self.find(id)?;
        s.touched_ms = now_ms;
        Ok(s.view())
    }

    /// Ask the store to verify the whole image and keep it; the upload ends either way. A push
    /// that fails verification is dropped (its chunks each had their digest, so its source is
    /// not the image it named).
    pub fn commit(&mut self, id: u32, backend: &mut dyn Backend, now_ms: u64) -> Result<ImageInfo, ApiError> {
        self.expire(now_ms);
        let s = self.find(id)?;
        let missing = s.have.iter().filter(|h| !**h).count();
        if missing > 0 {
            return Err(ApiError::new(409, "upload_incomplete", &alloc::format!("{missing} chunks are missing")));
        }
        self.sessions.retain(|s| s.id != id);
        match backend.workd(wk::Request::ImageCommit { upload: id })? {
            Reply::Image(info) => Ok(info),
            _ => Err(out_of_protocol()),
        }
    }

    pub fn abort(&mut self, id: u32, backend: &mut dyn Backend) -> Result<(), ApiError> {
        let pos = self.sessions.iter().position(|s| s.id == id).ok_or_else(not_found)?;
        self.sessions.swap_remove(pos);
        match backend.workd(wk::Request::ImageAbort { upload: id }) {
            Ok(_) | Err(wk::Error::NoSuchUpload) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drop sessions idle longer than the limit (the store frees their frames after its own
    /// idle time).
    pub fn expire(&mut self, now_ms: u64) {
        let idle = self.limits.idle_ms;
        self.sessions.retain(|s| now_ms.saturating_sub(s.touched_ms) <= idle);
    }
}
