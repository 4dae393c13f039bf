//! The node's image store index: Catenary images (docs/images.md) by digest, each verified
//! when it arrives. The image digest is the sha256 of `image.json`'s bytes; `image.json`
//! names the root filesystem and the run configuration by sha256 and size, so checking
//! `image.json`'s digest and then each file's verifies the whole image (what `catenary image
//! verify` does). The bytes themselves stay where they arrived (the kernel keeps them and backs
//! every microVM of the image with the same frames); the index says what is there.

use crate::Digest;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub const IMAGE_MEDIA_TYPE: &str = "application/vnd.catenary.image.v1+json";
pub const ROOTFS_MEDIA_TYPE: &str = "application/vnd.catenary.rootfs.squashfs";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.catenary.runconfig.v1+json";
/// Images the index holds at most.
pub const IMAGES_MAX: usize = 32;
/// Largest `image.json` and `config.json` accepted.
pub const MANIFEST_MAX: usize = 64 * 1024;
pub const CONFIG_MAX: usize = 1024 * 1024;

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreError {
    /// `image.json` is not the manifest format (or too large).
    BadManifest,
    /// `image.json`'s sha256 is not the digest the image was named by.
    ManifestDigest,
    RootfsDigest,
    RootfsSize,
    ConfigDigest,
    ConfigSize,
    /// The index holds [`IMAGES_MAX`] images.
    Full,
}

impl StoreError {
    pub fn message(self) -> &'static str {
        match self {
            StoreError::BadManifest => "image.json is not a Catenary image manifest (version 1)",
            StoreError::ManifestDigest => "image.json does not have the digest the image is named by",
            StoreError::RootfsDigest => "rootfs.squashfs does not have the digest image.json names",
            StoreError::RootfsSize => "rootfs.squashfs does not have the size image.json names",
            StoreError::ConfigDigest => "config.json does not have the digest image.json names",
            StoreError::ConfigSize => "config.json does not have the size image.json names",
            StoreError::Full => "the image store is full",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Manifest {
    schema_version: u32,
    media_type: String,
    rootfs: BlobRef,
    config: BlobRef,
    #[allow(dead_code)]
    source: SourceRef,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BlobRef {
    media_type: String,
    digest: String,
    size: u64,
    #[allow(dead_code)]
    file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceRef {
    #[allow(dead_code)]
    manifest: Option<String>,
    #[allow(dead_code)]
    config: String,
}

/// A verified image, as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub digest: Digest,
    pub rootfs: Digest,
    pub rootfs_size: u64,
    pub config: Digest,
    pub config_size: u64,
}

/// What a push of the image sends after `image.json`: the sizes of `config.json` and
/// `rootfs.squashfs`, read from the manifest (checked again, with the digests, by [`verify`]).
/// The stream is `config.json ‖ rootfs.squashfs`.
pub fn stream_sizes(image_json: &[u8]) -> Result<(u64, u64), StoreError> {
    if image_json.len() > MANIFEST_MAX {
        return Err(StoreError::BadManifest);
    }
    let m: Manifest = serde_json::from_slice(image_json).map_err(|_| StoreError::BadManifest)?;
    if m.schema_version != 1 || m.config.size > CONFIG_MAX as u64 {
        return Err(StoreError::BadManifest);
    }
    Ok((m.config.size, m.rootfs.size))
}

/// What `image_json` names (the image's digest is its sha256): the digests and sizes of the
/// run configuration and root filesystem, checked as [`verify`] checks them, without the bytes
/// (a node that fetches an image checks each part as its bytes arrive).
pub fn manifest_info(image_json: &[u8]) -> Result<ImageInfo, StoreError> {
    if image_json.len() > MANIFEST_MAX {
        return Err(StoreError::BadManifest);
    }
    let m: Manifest = serde_json::from_slice(image_json).map_err(|_| StoreError::BadManifest)?;
    if m.schema_version != 1 || m.media_type != IMAGE_MEDIA_TYPE || m.rootfs.media_type != ROOTFS_MEDIA_TYPE || m.config.media_type != CONFIG_MEDIA_TYPE || m.config.size > CONFIG_MAX as u64 {
        return Err(StoreError::BadManifest);
    }
    let rootfs = Digest::parse(&m.rootfs.digest).ok_or(StoreError::BadManifest)?;
    let config = Digest::parse(&m.config.digest).ok_or(StoreError::BadManifest)?;
    Ok(ImageInfo { digest: Digest::of(image_json), rootfs, rootfs_size: m.rootfs.size, config, config_size: m.config.size })
}

/// An `image.json` for these bytes, as `catenary image pack` writes it (tests build images
/// with it).
pub fn manifest_for(rootfs: &[u8], config: &[u8]) -> Vec<u8> {
    alloc::format!(
        "{{\"schemaVersion\":1,\"mediaType\":\"{IMAGE_MEDIA_TYPE}\",\"rootfs\":{{\"mediaType\":\"{ROOTFS_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":{},\"file\":\"rootfs.squashfs\"}},\"config\":{{\"mediaType\":\"{CONFIG_MEDIA_TYPE}\",\"digest\":\"{}\",\"size\":{},\"file\":\"config.json\"}},\"source\":{{\"manifest\":null,\"config\":\"sha256:00\"}}}}",
        Digest::of(rootfs), rootfs.len(), Digest::of(config), config.len()
    )
    .into_bytes()
}

/// Verify an arriving image: `image_json`'s digest (and `expect`, when the image was named by
/// one), then the root filesystem's and run configuration's digests and sizes.
pub fn verify(image_json: &[u8], rootfs: &[u8], config: &[u8], expect: Option<Digest>) -> Result<ImageInfo, StoreError> {
    if image_json.len() > MANIFEST_MAX || config.len() > CONFIG_MAX {
        return Err(StoreError::BadManifest);
    }
    let digest = Digest::of(image_json);
    if expect.is_some_and(|e| e != digest) {
        return Err(StoreError::ManifestDigest);
    }
    let m: Manifest = serde_json::from_slice(image_json).map_err(|_| StoreError::BadManifest)?;
    if m.schema_version != 1 || m.media_type != IMAGE_MEDIA_TYPE || m.rootfs.media_type != ROOTFS_MEDIA_TYPE || m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(StoreError::BadManifest);
    }
    let rd = Digest::parse(&m.rootfs.digest).ok_or(StoreError::BadManifest)?;
    let cd = Digest::parse(&m.config.digest).ok_or(StoreError::BadManifest)?;
    if m.rootfs.size != rootfs.len() as u64 {
        return Err(StoreError::RootfsSize);
    }
    if m.config.size != config.len() as u64 {
        return Err(StoreError::ConfigSize);
    }
    if Digest::of(config) != cd {
        return Err(StoreError::ConfigDigest);
    }
    if Digest::of(rootfs) != rd {
        return Err(StoreError::RootfsDigest);
    }
    Ok(ImageInfo { digest, rootfs: rd, rootfs_size: m.rootfs.size, config: cd, config_size: m.config.size })
}

/// The index: verified images by digest, at most [`IMAGES_MAX`].
#[derive(Clone, Debug, Default)]
pub struct ImageIndex {
    images: Vec<ImageInfo>,
}

impl ImageIndex {
    pub fn new() -> ImageIndex {
        ImageIndex::default()
    }
    /// Add a verified image (adding one that is there already is a no-op).
    pub fn insert(&mut self, info: ImageInfo) -> Result<(), StoreError> {
        if self.get(&info.digest).is_some() {
            return Ok(());
        }
        if self.images.len() >= IMAGES_MAX {
            return Err(StoreError::Full);
        }
        self.images.push(info);
        Ok(())
    }
    /// Take an image out (false: it was not there).
    pub fn remove(&mut self, d: &Digest) -> bool {
        let n = self.images.len();
        self.images.retain(|i| i.digest != *d);
        self.images.len() != n
    }
    pub fn get(&self, d: &Digest) -> Option<&ImageInfo> {
        self.images.iter().find(|i| i.digest == *d)
    }
    pub fn list(&self) -> &[ImageInfo] {
        &self.images
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub use super::manifest_for;

    #[test]
    fn verified_on_arrival() {
        let (r, c) = (b"squashfs bytes".as_slice(), b"{\"version\":1}".as_slice());
        let m = manifest_for(r, c);
        let info = verify(&m, r, c, Some(Digest::of(&m))).unwrap();
        assert_eq!(info.digest, Digest::of(&m));
        assert_eq!((info.rootfs_size, info.config_size), (14, 13));
        assert_eq!(verify(&m, r, c, None), Ok(info));
        assert_eq!(stream_sizes(&m), Ok((13, 14)));
        assert_eq!(manifest_info(&m), Ok(info));
        assert_eq!(manifest_info(b"{}"), Err(StoreError::BadManifest));
        assert_eq!(stream_sizes(b"{}"), Err(StoreError::BadManifest));
        // every mismatch is refused, naming what is wrong
        assert_eq!(verify(&m, r, c, Some(Digest::of(b"other"))), Err(StoreError::ManifestDigest));
        assert_eq!(verify(&m, b"squashfs bytez", c, None), Err(StoreError::RootfsDigest));
        assert_eq!(verify(&m, b"squashfs", c, None), Err(StoreError::RootfsSize));
        assert_eq!(verify(&m, r, b"{\"version\":2}", None), Err(StoreError::ConfigDigest));
        assert_eq!(verify(&m, r, b"{}", None), Err(StoreError::ConfigSize));
        let mut bad = m.clone();
        bad.truncate(bad.len() - 1);
        assert_eq!(verify(&bad, r, c, None), Err(StoreError::BadManifest));
        let other_type = String::from_utf8(m.clone()).unwrap().replace("image.v1", "image.v2");
        assert_eq!(verify(other_type.as_bytes(), r, c, None), Err(StoreError::BadManifest));
        let extra = String::from_utf8(m.clone()).unwrap().replacen("{", "{\"x\":1,", 1);
        assert_eq!(verify(extra.as_bytes(), r, c, None), Err(StoreError::BadManifest));
        assert_eq!(verify(&[0xff; 10], r, c, None), Err(StoreError::BadManifest));
    }

    #[test]
    fn index_is_bounded_and_deduplicated() {
        let mut ix = ImageIndex::new();
        for i in 0..IMAGES_MAX as u8 {
            let d = Digest([i; 32]);
            ix.insert(ImageInfo { digest: d, rootfs: d, rootfs_size: 1, config: d, config_size: 1 }).unwrap();
            ix.insert(ImageInfo { digest: d, rootfs: d, rootfs_size: 1, config: d, config_size: 1 }).unwrap();
        }
        assert_eq!(ix.list().len(), IMAGES_MAX);
        let d = Digest([0xee; 32]);
        assert_eq!(ix.insert(ImageInfo { digest: d, rootfs: d, rootfs_size: 1, config: d, config_size: 1 }), Err(StoreError::Full));
        assert!(ix.get(&Digest([3; 32])).is_some());
        assert!(ix.get(&d).is_none());
        assert!(ix.remove(&Digest([3; 32])) && !ix.remove(&Digest([3; 32])));
        assert!(ix.get(&Digest([3; 32])).is_none());
        ix.insert(ImageInfo { digest: d, rootfs: d, rootfs_size: 1, config: d, config_size: 1 }).unwrap();
    }
}
