//! The node's image store index: Catenary images (docs/images.md) by digest, each verified
//! when it arrives. The image digest is the sha256 of `image.json`'s bytes; `image.json`
//! names the root filesystem and the run configuration by sha256 and size, so checking
//! `image.json`'s digest and then each file's verifies the whole image (what `catenary image
//! verify` does). `image.json` may also list the sha256 of every 256 KiB chunk of the stream
//! `config.json ‖ rootfs.squashfs` (`chunks`, written by `catenary image pack`): a node
//! fetching the image from another then refuses a wrong chunk when it arrives, not after the
//! whole root filesystem ([`manifest_chunks`]); [`verify`] checks the list against the bytes
//! too, so a stored image's list is true. The bytes themselves stay where they arrived (the kernel keeps them and backs
//! every microVM of the image with the same frames); the index says what is there.

use crate::{Digest, Hasher};
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
/// Bytes per chunk of the stream `config.json ‖ rootfs.squashfs` (the last one shorter): what a
/// push sends at a time, what a fetch asks a holder for, and what `image.json`'s `chunks` lists.
pub const STREAM_CHUNK: usize = 256 * 1024;
/// Hex digits per chunk in `chunks.sha256`.
const CHUNK_HEX: usize = 64;

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
    /// A chunk of the stream does not have the digest `image.json`'s `chunks` lists.
    ChunkDigest,
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
            StoreError::ChunkDigest => "a chunk of the image does not have the digest image.json lists",
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
    /// Optional (images packed before it existed have none).
    #[serde(default)]
    chunks: Option<ChunkList>,
}

/// `image.json`'s `chunks`: `size` is [`STREAM_CHUNK`], `sha256` the 64 lowercase hex digits of
/// each chunk's sha256, one after another, exactly one per chunk of the stream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChunkList {
    size: u64,
    sha256: String,
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

/// Parse and check `image_json`: the version, the media types, the two files' digests, the run
/// configuration's bound, and, when it lists chunks, that the list has one well-formed digest
/// per [`STREAM_CHUNK`] bytes of the stream. Returns it with the root filesystem's and the run
/// configuration's digests.
fn parse_manifest(image_json: &[u8]) -> Result<(Manifest, Digest, Digest), StoreError> {
    if image_json.len() > MANIFEST_MAX {
        return Err(StoreError::BadManifest);
    }
    let m: Manifest = serde_json::from_slice(image_json).map_err(|_| StoreError::BadManifest)?;
    if m.schema_version != 1 || m.media_type != IMAGE_MEDIA_TYPE || m.rootfs.media_type != ROOTFS_MEDIA_TYPE || m.config.media_type != CONFIG_MEDIA_TYPE || m.config.size > CONFIG_MAX as u64 {
        return Err(StoreError::BadManifest);
    }
    if let Some(c) = &m.chunks {
        let total = m.config.size.checked_add(m.rootfs.size).ok_or(StoreError::BadManifest)?;
        let n = total.div_ceil(STREAM_CHUNK as u64);
        let hex_ok = c.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if c.size != STREAM_CHUNK as u64 || c.sha256.len() as u64 != n.saturating_mul(CHUNK_HEX as u64) || !hex_ok {
            return Err(StoreError::BadManifest);
        }
    }
    let rootfs = Digest::parse(&m.rootfs.digest).ok_or(StoreError::BadManifest)?;
    let config = Digest::parse(&m.config.digest).ok_or(StoreError::BadManifest)?;
    Ok((m, rootfs, config))
}

/// What a push of the image sends after `image.json`: the sizes of `config.json` and
/// `rootfs.squashfs`, read from the manifest (checked again, with the digests, by [`verify`]).
/// The stream is `config.json ‖ rootfs.squashfs`.
pub fn stream_sizes(image_json: &[u8]) -> Result<(u64, u64), StoreError> {
    let (m, _, _) = parse_manifest(image_json)?;
    Ok((m.config.size, m.rootfs.size))
}

/// What `image_json` names (the image's digest is its sha256): the digests and sizes of the
/// run configuration and root filesystem, checked as [`verify`] checks them, without the bytes
/// (a node that fetches an image checks each part as its bytes arrive).
pub fn manifest_info(image_json: &[u8]) -> Result<ImageInfo, StoreError> {
    let (m, rootfs, config) = parse_manifest(image_json)?;
    Ok(ImageInfo { digest: Digest::of(image_json), rootfs, rootfs_size: m.rootfs.size, config, config_size: m.config.size })
}

/// The sha256 of each [`STREAM_CHUNK`] of the stream, as `image_json` lists them (`None`: it
/// lists none, an image packed before the list existed). 32 bytes per 256 KiB of image.
pub fn manifest_chunks(image_json: &[u8]) -> Result<Option<Vec<Digest>>, StoreError> {
    let Some(c) = parse_manifest(image_json)?.0.chunks else { return Ok(None) };
    let mut out = Vec::new();
    out.try_reserve_exact(c.sha256.len() / CHUNK_HEX).map_err(|_| StoreError::BadManifest)?;
    for hex in c.sha256.as_bytes().chunks(CHUNK_HEX) {
        out.push(Digest::from_hex(hex).ok_or(StoreError::BadManifest)?);
    }
    Ok(Some(out))
}

/// The `chunks` value `image.json` gets for this stream (`catenary image pack` writes the same).
pub fn chunk_list_json(config: &[u8], rootfs: &[u8]) -> String {
    let mut hex = String::new();
    for_each_chunk(config, rootfs, |d| {
        for b in d.0 {
            let _ = core::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
        }
    });
    alloc::format!("{{\"size\":{STREAM_CHUNK},\"sha256\":\"{hex}\"}}")
}

/// The digest of each [`STREAM_CHUNK`] of `config ‖ rootfs`, in order.
fn for_each_chunk(config: &[u8], rootfs: &[u8], mut f: impl FnMut(Digest)) {
    let (cl, total) = (config.len(), config.len() + rootfs.len());
    let mut off = 0;
    while off < total {
        let end = (off + STREAM_CHUNK).min(total);
        let mut h = Hasher::new();
        // the chunk's part in config.json, then its part in rootfs.squashfs
        h.update(&config[off.min(cl)..end.min(cl)]);
        h.update(&rootfs[off.saturating_sub(cl)..end.saturating_sub(cl)]);
        f(h.finish());
        off = end;
    }
}

/// An `image.json` for these bytes, as `catenary image pack` writes it (tests build images
/// with it), with the chunk list.
pub fn manifest_for(rootfs: &[u8], config: &[u8]) -> Vec<u8> {
    let mut m = manifest_without_chunks(rootfs, config);
    m.pop();
    m.extend_from_slice(b",\"chunks\":");
    m.extend_from_slice(chunk_list_json(config, rootfs).as_bytes());
    m.push(b'}');
    m
}

/// An `image.json` for these bytes as packed before the chunk list existed (still accepted).
pub fn manifest_without_chunks(rootfs: &[u8], config: &[u8]) -> Vec<u8> {
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
    let (m, rd, cd) = parse_manifest(image_json)?;
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
    // the list must be true, or every node fetching the image would refuse good bytes
    if m.chunks.is_some() {
        let listed = manifest_chunks(image_json)?.unwrap_or_default();
        let mut i = 0;
        let mut ok = true;
        for_each_chunk(config, rootfs, |d| {
            ok &= listed.get(i) == Some(&d);
            i += 1;
        });
        if !ok || i != listed.len() {
            return Err(StoreError::ChunkDigest);
        }
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

    /// A stream of three chunks whose second one straddles nothing and whose first holds all of
    /// config.json and the start of the root filesystem.
    fn three_chunk_image() -> (Vec<u8>, Vec<u8>) {
        let config = b"{\"version\":1,\"cmd\":[]}".to_vec();
        let rootfs: Vec<u8> = (0..2 * STREAM_CHUNK + 1000).map(|i| (i * 7 + i / 4096) as u8).collect();
        (rootfs, config)
    }

    #[test]
    fn the_chunk_list_names_each_256_kib_of_the_stream() {
        let (r, c) = three_chunk_image();
        let m = manifest_for(&r, &c);
        assert!(verify(&m, &r, &c, Some(Digest::of(&m))).is_ok());
        // the list, against the stream cut independently
        let stream = [c.as_slice(), r.as_slice()].concat();
        let want: Vec<Digest> = stream.chunks(STREAM_CHUNK).map(Digest::of).collect();
        assert_eq!(want.len(), 3);
        assert_eq!(manifest_chunks(&m), Ok(Some(want)));
        // an image packed before the list: accepted, lists nothing
        let old = manifest_without_chunks(&r, &c);
        assert!(verify(&old, &r, &c, None).is_ok());
        assert_eq!(manifest_chunks(&old), Ok(None));
        // an empty stream has an empty list
        let empty = manifest_for(b"", b"");
        assert_eq!(manifest_chunks(&empty), Ok(Some(Vec::new())));
    }

    #[test]
    fn a_false_or_malformed_chunk_list_is_refused() {
        let (r, c) = three_chunk_image();
        let m = String::from_utf8(manifest_for(&r, &c)).unwrap();
        let at = m.find("\"sha256\":\"").unwrap() + 10;
        // one digit of the second chunk's digest changed: well formed, but false
        let mut wrong = m.clone().into_bytes();
        wrong[at + 64 + 5] = if wrong[at + 64 + 5] == b'0' { b'1' } else { b'0' };
        assert!(manifest_chunks(&wrong).unwrap().is_some());
        assert_eq!(verify(&wrong, &r, &c, None), Err(StoreError::ChunkDigest));
        // malformed lists are refused before any byte is read
        let put = |c: &str| [&m[..at], c, &m[at + 1..]].concat();
        let short = [&m[..at], &m[at + 64..]].concat();
        let upper = put("A");
        let size = m.replace("\"size\":262144", "\"size\":131072");
        let extra = m.replace("{\"size\":262144,", "{\"size\":262144,\"x\":1,");
        let not_hex = put("g");
        for bad in [short, upper, size, extra, not_hex] {
            assert_eq!(manifest_chunks(bad.as_bytes()), Err(StoreError::BadManifest), "{}", &bad[..80]);
            assert_eq!(stream_sizes(bad.as_bytes()), Err(StoreError::BadManifest));
            assert_eq!(manifest_info(bad.as_bytes()), Err(StoreError::BadManifest));
            assert_eq!(verify(bad.as_bytes(), &r, &c, None), Err(StoreError::BadManifest));
        }
    }

    #[test]
    fn hostile_manifests_never_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..2000 {
            let data: Vec<u8> = (0..n % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            crate::fuzzing::manifest(&data);
        }
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
