//! Image push: an image in chunks, resumable, verified per chunk and as a whole.
//!
//! A Catenary image is `image.json` (its sha256 is the image digest), `config.json` and
//! `rootfs.squashfs` (named by sha256 and size in `image.json`). A push:
//!
//! 1. `POST /v1/images/uploads` `{image, manifest}`: the node checks the manifest's sha256
//!    against `image` at once and learns the sizes from it. The answer is the upload (id, chunk
//!    size, the chunks it still lacks), the one already in progress for that image (resume), or
//!    `present` when the node has the image (nothing to send).
//! 2. `PUT /v1/images/uploads/{id}/chunks/{n}` with `Chunk-Digest: sha256:…` for each chunk of
//!    the stream `config.json ‖ rootfs.squashfs` ([`CHUNK_SIZE`] bytes, the last one shorter).
//!    A chunk whose bytes do not have that digest is refused (422) and not kept: the client
//!    sends it again.
//! 3. `POST /v1/images/uploads/{id}/commit`: the whole image is verified as on any arrival
//!    (`catenary_workload::store::verify`, with the digest it was announced by) and handed to
//!    the node's store.
//!
//! Bounds: an image at most [`UploadLimits::image_max`] bytes, at most
//! [`UploadLimits::uploads_max`] uploads at once; a session idle for
//! [`UploadLimits::idle_ms`] is dropped. The memory of a session is reserved fallibly when it
//! is created (507 when the service's heap cannot hold it).

use crate::error::ApiError;
use crate::types::{Upload, UploadCreate};
use alloc::string::ToString;
use alloc::vec::Vec;
use catenary_workload::store::{self, ImageInfo, MANIFEST_MAX};
use catenary_workload::Digest;
use serde::Deserialize;

/// Bytes per chunk (the last one of an image is shorter).
pub const CHUNK_SIZE: usize = 256 * 1024;

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

/// A pushed image, verified: what the node's store takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedImage {
    pub info: ImageInfo,
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub rootfs: Vec<u8>,
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
    id: u32,
    image: Digest,
    manifest: Vec<u8>,
    config_size: u64,
    data: Vec<u8>,
    have: Vec<bool>,
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
            size: self.data.len() as u64,
            chunk_size: CHUNK_SIZE as u32,
            chunks: self.chunks(),
            missing: (0..self.chunks()).filter(|i| !self.have[*i as usize]).collect(),
            present: false,
        }
    }
}

/// The pushes in progress.
#[derive(Debug, Default)]
pub struct Uploads {
    limits: UploadLimits,
    sessions: Vec<Session>,
    next_id: u32,
}

fn not_found() -> ApiError {
    ApiError::new(404, "no_such_upload", "no upload with this id (finished, aborted or expired)")
}

impl Uploads {
    pub fn new(limits: UploadLimits) -> Uploads {
        Uploads { limits, sessions: Vec::new(), next_id: 0 }
    }

    /// Uploads in progress, and the bytes they hold.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.sessions.iter().map(|s| s.data.capacity()).sum()
    }

    /// Start (or resume) pushing an image the node does not have.
    pub fn create(&mut self, req: &UploadCreate, now_ms: u64) -> Result<Upload, ApiError> {
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
        let mut data = Vec::new();
        data.try_reserve_exact(size as usize).map_err(|_| ApiError::new(507, "no_memory", "the API service cannot hold the image now"))?;
        data.resize(size as usize, 0);
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let chunks = size.div_ceil(CHUNK_SIZE as u64) as usize;
        let s = Session { id: self.next_id, image, manifest: manifest.to_vec(), config_size: sizes.config.size, data, have: alloc::vec![false; chunks], touched_ms: now_ms };
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

    /// Chunk `index` with the digest the client computed; kept only when the bytes have it.
    pub fn put_chunk(&mut self, id: u32, index: u32, digest: Option<&str>, body: &[u8], now_ms: u64) -> Result<Upload, ApiError> {
        self.expire(now_ms);
        let s = self.find(id)?;
        let Some(have) = s.have.get(index as usize).copied() else {
            return Err(ApiError::bad_request(&alloc::format!("chunk {index}: the upload has {} chunks", s.chunks())));
        };
        let want = digest.ok_or_else(|| ApiError::bad_request("Chunk-Digest: missing (sha256:<hex> of the chunk)"))?;
        let want = Digest::parse(want).ok_or_else(|| ApiError::bad_request("Chunk-Digest: not a sha256:<64 lowercase hex> digest"))?;
        let start = index as usize * CHUNK_SIZE;
        let len = CHUNK_SIZE.min(s.data.len() - start);
        if body.len() != len {
            return Err(ApiError::bad_request(&alloc::format!("chunk {index}: {} bytes, expected {len}", body.len())));
        }
        if Digest::of(body) != want {
            return Err(ApiError::new(422, "chunk_digest_mismatch", &alloc::format!("chunk {index}: the bytes do not have the Chunk-Digest; send it again")));
        }
        if !have {
            s.data[start..start + len].copy_from_slice(body);
            s.have[index as usize] = true;
        }
        s.touched_ms = now_ms;
        Ok(s.view())
    }

    /// Verify the whole image and take it out of the uploads. A push that fails verification
    /// is dropped (its chunks each had their digest, so its source is not the image it named).
    pub fn commit(&mut self, id: u32, now_ms: u64) -> Result<PushedImage, ApiError> {
        self.expire(now_ms);
        let s = self.find(id)?;
        let missing = s.have.iter().filter(|h| !**h).count();
        if missing > 0 {
            return Err(ApiError::new(409, "upload_incomplete", &alloc::format!("{missing} chunks are missing")));
        }
        let pos = self.sessions.iter().position(|s| s.id == id).ok_or_else(not_found)?;
        let s = self.sessions.swap_remove(pos);
        let mut config = s.data;
        let rootfs = config.split_off(s.config_size as usize);
        let info = store::verify(&s.manifest, &rootfs, &config, Some(s.image))?;
        Ok(PushedImage { info, manifest: s.manifest, config, rootfs })
    }

    pub fn abort(&mut self, id: u32) -> Result<(), ApiError> {
        let pos = self.sessions.iter().position(|s| s.id == id).ok_or_else(not_found)?;
        self.sessions.swap_remove(pos);
        Ok(())
    }

    /// Drop sessions idle longer than the limit.
    pub fn expire(&mut self, now_ms: u64) {
        let idle = self.limits.idle_ms;
        self.sessions.retain(|s| now_ms.saturating_sub(s.touched_ms) <= idle);
    }
}
