//! The node's image store index: Catenary images (docs/images.md) by digest, each verified
//! when it arrives. The image digest is the sha256 of `image.json`'s bytes; `image.json`
//! names the root filesystem and the run configuration by sha256 and size, so checking
//! `image.json`'s digest and then each file's verifies the whole image (what `catenary image
//! verify` does). `image.json` may also list the sha256 of each piece of the stream
//! `config.json ‖ rootfs.squashfs` (`pieces`, written by `catenary image pack`; a piece is 256
//! KiB, or a power-of-two multiple of it so that at most [`PIECES_MAX`] are listed): a node
//! fetching the image from another then refuses a wrong piece when it arrives, not after the
//! whole root filesystem ([`manifest_pieces`]); [`verify`] checks the list against the bytes
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
/// push sends at a time and what a fetch asks a holder for.
pub const STREAM_CHUNK: usize = 256 * 1024;
/// Most pieces `image.json` lists: 8 KiB of hex, so a manifest with its list stays well inside
/// the smallest message it travels in (`proto::REQUEST_MAX`, 16 KiB: `ImageBegin` to `workd`).
pub const PIECES_MAX: u64 = 128;
/// Hex digits per piece in `pieces.sha256`.
const PIECE_HEX: usize = 64;

/// The piece size of a stream of `total` bytes: the smallest [`STREAM_CHUNK`] × 2^k that cuts
/// it into at most [`PIECES_MAX`] pieces (256 KiB up to 32 MiB of stream, 2 MiB at 256 MiB).
/// The only size a list may have, so one stream has one list.
pub fn piece_size(total: u64) -> u64 {
    let mut size = STREAM_CHUNK as u64;
    while total.div_ceil(size) > PIECES_MAX {
        size *= 2;
    }
    size
}

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
    /// A piece of the stream does not have the digest `image.json`'s `pieces` lists.
    PieceDigest,
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
            StoreError::PieceDigest => "a piece of the image does not have the digest image.json lists",
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
    pieces: Option<PieceList>,
}

/// `image.json`'s `pieces`: `size` is [`piece_size`] of the stream, `sha256` the 64 lowercase
/// hex digits of each piece's sha256, one after another, exactly one per piece.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PieceList {
    size: u64,
    sha256: String,
}

/// What `image.json` lists: the piece size and each piece's digest, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pieces {
    pub size: u64,
    pub digests: Vec<Digest>,
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

impl ImageInfo {
    /// The room it takes in a store, MiB: its two files and its `image.json` (at most
    /// [`MANIFEST_MAX`]), rounded up (the store's pages round up too).
    pub fn store_mib(&self) -> u32 {
        let bytes = self.config_size.saturating_add(self.rootfs_size).saturating_add(MANIFEST_MAX as u64);
        u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX)
    }
}

/// Parse and check `image_json`: the version, the media types, the two files' digests, the run
/// configuration's bound, and, when it lists pieces, that the list has the stream's
/// [`piece_size`] and one well-formed digest per piece. Returns it with the root filesystem's and the run
/// configuration's digests.
fn parse_manifest(image_json: &[u8]) -> Result<(Manifest, Digest, Digest), StoreError> {
    if image_json.len() > MANIFEST_MAX {
        return Err(StoreError::BadManifest);
    }
    let m: Manifest = serde_json::from_slice(image_json).map_err(|_| StoreError::BadManifest)?;
    if m.schema_version != 1 || m.media_type != IMAGE_MEDIA_TYPE || m.rootfs.media_type != ROOTFS_MEDIA_TYPE || m.config.media_type != CONFIG_MEDIA_TYPE || m.config.size > CONFIG_MAX as u64 {
        return Err(StoreError::BadManifest);
    }
    if let Some(c) = &m.pieces {
        let total = m.config.size.checked_add(m.rootfs.size).ok_or(StoreError::BadManifest)?;
        let size = piece_size(total);
        let n = total.div_ceil(size);
        let hex_ok = c.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if c.size != size || c.sha256.len() as u64 != n * PIECE_HEX as u64 || !hex_ok {
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

/// The pieces `image_json` lists (`None`: it lists none, an image packed before the list
/// existed). At most [`PIECES_MAX`] digests.
pub fn manifest_pieces(image_json: &[u8]) -> Result<Option<Pieces>, StoreError> {
    let Some(c) = parse_manifest(image_json)?.0.pieces else { return Ok(None) };
    let mut digests = Vec::new();
    digests.try_reserve_exact(c.sha256.len() / PIECE_HEX).map_err(|_| StoreError::BadManifest)?;
    for hex in c.sha256.as_bytes().chunks(PIECE_HEX) {
        digests.push(Digest::from_hex(hex).ok_or(StoreError::BadManifest)?);
    }
    Ok(Some(Pieces { size: c.size, digests }))
}

/// The `pieces` value `image.json` gets for this stream (`catenary image pack` writes the same).
pub fn piece_list_json(config: &[u8], rootfs: &[u8]) -> String {
    let size = piece_size((config.len() + rootfs.len()) as u64);
    let mut hex = String::new();
    for_each_piece(config, rootfs, size as usize, |c, r| {
        let mut h = Hasher::new();
        h.update(c);
        h.update(r);
        for b in h.finish().0 {
            let _ = core::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
        }
    });
    alloc::format!("{{\"size\":{size},\"sha256\":\"{hex}\"}}")
}

/// Each `size`-byte piece of `config ‖ rootfs` in order, as its part in config.json and its
/// part in rootfs.squashfs.
fn for_each_piece(config: &[u8], rootfs: &[u8], size: usize, mut f: impl FnMut(&[u8], &[u8])) {
    let (cl, total) = (config.len(), config.len() + rootfs.len());
    let mut off = 0;
    while off < total {
        let end = off.saturating_add(size).min(total);
        f(&config[off.min(cl)..end.min(cl)], &rootfs[off.saturating_sub(cl)..end.saturating_sub(cl)]);
        off = end;
    }
}

/// An `image.json` for these bytes, as `catenary image pack` writes it (tests build images
/// with it), with the piece list.
pub fn manifest_for(rootfs: &[u8], config: &[u8]) -> Vec<u8> {
    let mut m = manifest_without_pieces(rootfs, config);
    m.pop();
    m.extend_from_slice(b",\"pieces\":");
    m.extend_from_slice(piece_list_json(config, rootfs).as_bytes());
    m.push(b'}');
    m
}

/// An `image.json` for these bytes as packed before the piece list existed (still accepted).
pub fn manifest_without_pieces(rootfs: &[u8], config: &[u8]) -> Vec<u8> {
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
    // One pass: each piece hashed on its own (when listed) and into the two files' digests.
    // The list must be true, or every node fetching the image would refuse good bytes.
    let listed = manifest_pieces(image_json)?;
    let size = listed.as_ref().map_or(STREAM_CHUNK as u64, |l| l.size) as usize;
    let (mut ch, mut rh, mut i, mut pieces_ok) = (Hasher::new(), Hasher::new(), 0, true);
    for_each_piece(config, rootfs, size, |c, r| {
        ch.update(c);
        rh.update(r);
        if let Some(l) = &listed {
            let mut h = Hasher::new();
            h.update(c);
            h.update(r);
            pieces_ok &= l.digests.get(i) == Some(&h.finish());
        }
        i += 1;
    });
    if ch.finish() != cd {
        return Err(StoreError::ConfigDigest);
    }
    if rh.finish() != rd {
        return Err(StoreError::RootfsDigest);
    }
    if listed.is_some_and(|l| !pieces_ok || l.digests.len() != i) {
        return Err(StoreError::PieceDigest);
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

    /// A stream of three 256 KiB pieces, the first holding all of config.json and the start of
    /// the root filesystem, the last shorter.
    fn three_piece_image() -> (Vec<u8>, Vec<u8>) {
        let config = b"{\"version\":1,\"cmd\":[]}".to_vec();
        let rootfs: Vec<u8> = (0..2 * STREAM_CHUNK + 1000).map(|i| (i * 7 + i / 4096) as u8).collect();
        (rootfs, config)
    }

    /// The stream cut independently: `size`-byte slices of config ‖ rootfs, hashed.
    fn cut(r: &[u8], c: &[u8], size: usize) -> Vec<Digest> {
        [c, r].concat().chunks(size).map(Digest::of).collect()
    }

    #[test]
    fn the_piece_list_names_each_piece_of_the_stream() {
        let (r, c) = three_piece_image();
        let m = manifest_for(&r, &c);
        assert!(verify(&m, &r, &c, Some(Digest::of(&m))).is_ok());
        let want = cut(&r, &c, STREAM_CHUNK);
        assert_eq!(want.len(), 3);
        assert_eq!(manifest_pieces(&m), Ok(Some(Pieces { size: STREAM_CHUNK as u64, digests: want })));
        // an image packed before the list: accepted, lists nothing
        let old = manifest_without_pieces(&r, &c);
        assert!(verify(&old, &r, &c, None).is_ok());
        assert_eq!(manifest_pieces(&old), Ok(None));
        // an empty stream has an empty list
        assert_eq!(manifest_pieces(&manifest_for(b"", b"")).map(|p| p.map(|p| p.digests.len())), Ok(Some(0)));
    }

    /// Past 128 pieces of 256 KiB the pieces double, so the list (and image.json) stays
    /// bounded: a 40 MiB root filesystem is 81 pieces of 512 KiB with its config.json, and a
    /// manifest of a 256 MiB stream fits a 16 KiB request.
    #[test]
    fn the_piece_size_doubles_past_128_pieces() {
        let k = STREAM_CHUNK as u64;
        assert_eq!([piece_size(0), piece_size(128 * k), piece_size(128 * k + 1), piece_size(256 << 20), piece_size(u64::MAX / 2)][..4], [k, k, 2 * k, 8 * k]);
        let c = b"{\"version\":1}".to_vec();
        let r: Vec<u8> = (0..40usize << 20).map(|i| (i ^ i >> 9) as u8).collect();
        let m = manifest_for(&r, &c);
        let listed = manifest_pieces(&m).unwrap().unwrap();
        assert_eq!((listed.size, listed.digests.clone()), (2 * k, cut(&r, &c, 2 * STREAM_CHUNK)));
        assert_eq!(listed.digests.len(), 81, "40 MiB and the config.json");
        assert!(verify(&m, &r, &c, None).is_ok());
        // the largest image the store takes: image.json well inside workd's 16 KiB requests
        let big = String::from_utf8(manifest_without_pieces(b"", b"")).unwrap().replace("\"size\":0,\"file\":\"rootfs", "\"size\":268435456,\"file\":\"rootfs");
        let with = [&big[..big.len() - 1], ",\"pieces\":{\"size\":2097152,\"sha256\":\"", &"ab".repeat(32 * 128), "\"}}"].concat();
        assert_eq!(manifest_pieces(with.as_bytes()).map(|p| p.map(|p| p.digests.len())), Ok(Some(128)));
        assert!(with.len() < 9 * 1024, "{}", with.len());
        // a list at a smaller piece size than the stream's is not a manifest
        let small = with.replace("\"size\":2097152", "\"size\":1048576");
        assert_eq!(manifest_pieces(small.as_bytes()), Err(StoreError::BadManifest));
    }

    #[test]
    fn a_false_or_malformed_piece_list_is_refused() {
        let (r, c) = three_piece_image();
        let m = String::from_utf8(manifest_for(&r, &c)).unwrap();
        let at = m.find("\"sha256\":\"").unwrap() + 10;
        // one digit of the second piece's digest changed: well formed, but false
        let mut wrong = m.clone().into_bytes();
        wrong[at + 64 + 5] = if wrong[at + 64 + 5] == b'0' { b'1' } else { b'0' };
        assert!(manifest_pieces(&wrong).unwrap().is_some());
        assert_eq!(verify(&wrong, &r, &c, None), Err(StoreError::PieceDigest));
        // malformed lists are refused before any byte is read
        let put = |c: &str| [&m[..at], c, &m[at + 1..]].concat();
        let short = [&m[..at], &m[at + 64..]].concat();
        let upper = put("A");
        let size = m.replace("\"size\":262144", "\"size\":524288");
        let extra = m.replace("{\"size\":262144,", "{\"size\":262144,\"x\":1,");
        let not_hex = put("g");
        for bad in [short, upper, size, extra, not_hex] {
            assert_eq!(manifest_pieces(bad.as_bytes()), Err(StoreError::BadManifest), "{}", &bad[..80]);
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
