//! Reading an input image: an OCI image layout directory, or a `docker save` tarball (the legacy
//! `manifest.json` form, or the OCI layout that Docker 25+ also puts in it). Every blob is read
//! through a `Tap` that hashes and counts it, and checked against its digest and size before the
//! result is used; JSON documents are read with a size bound.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::{io_err, PackError, Result};
use super::layer::Limits;

/// Hash and byte count of what went through a `TapReader`.
#[derive(Default)]
pub struct Tap {
    pub hasher: Sha256,
    pub count: u64,
}

impl Tap {
    pub fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }
}

pub struct TapReader<R> {
    pub inner: R,
    pub tap: Rc<RefCell<Tap>>,
}

impl<R: Read> TapReader<R> {
    pub fn new(inner: R) -> (TapReader<R>, Rc<RefCell<Tap>>) {
        let tap = Rc::new(RefCell::new(Tap::default()));
        (TapReader { inner, tap: tap.clone() }, tap)
    }
}

impl<R: Read> Read for TapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut t = self.tap.borrow_mut();
        t.hasher.update(&buf[..n]);
        t.count += n as u64;
        Ok(n)
    }
}

/// `sha256:<64 lowercase hex>` → the hex part; anything else is refused.
pub fn check_digest(d: &str) -> Result<&str> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(h),
        _ => Err(PackError::BadDigest(d.to_string())),
    }
}

/// Where the input's files are: a directory, or regular members of a tarball.
pub enum Store {
    Dir(PathBuf),
    Tar { path: PathBuf, members: HashMap<String, (u64, u64)> },
}

impl Store {
    pub fn open(input: &Path, limits: &Limits) -> Result<Store> {
        let md = std::fs::metadata(input).map_err(io_err(input))?;
        if md.is_dir() {
            return Ok(Store::Dir(input.to_path_buf()));
        }
        // Index the tarball's regular members (offset, size); nothing is extracted.
        let f = File::open(input).map_err(io_err(input))?;
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut members = HashMap::new();
        let bad = |e: io::Error| PackError::Malformed { what: format!("tarball {}", input.display()), why: e.to_string() };
        let mut long_name: Option<Vec<u8>> = None;
        for e in ar.entries().map_err(bad)?.raw(true) {
            let mut e = e.map_err(bad)?;
            if members.len() as u64 > limits.max_entries {
                return Err(PackError::Limit(format!("more than {} members in {}", limits.max_entries, input.display())));
            }
            let et = e.header().entry_type();
            if et.is_gnu_longname() {
                let size = e.header().size().map_err(bad)?;
                if size > limits.max_path_len as u64 {
                    return Err(PackError::Limit(format!("a {size}-byte long name in {}", input.display())));
                }
                let mut v = Vec::new();
                e.read_to_end(&mut v).map_err(bad)?;
                while v.last() == Some(&0) {
                    v.pop();
                }
                long_name = Some(v);
                continue;
            }
            let name = long_name.take().unwrap_or_else(|| e.header().path_bytes().into_owned());
            if et.is_file() {
                let name = String::from_utf8_lossy(&name);
                let name = name.trim_start_matches("./").to_string();
                members.insert(name, (e.raw_file_position(), e.header().size().map_err(bad)?));
            }
        }
        Ok(Store::Tar { path: input.to_path_buf(), members })
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Dir(p) | Store::Tar { path: p, .. } => p.display().to_string(),
        }
    }

    /// A file of the input by its path inside it, and its size; `None` when absent.
    pub fn get(&self, name: &str) -> Result<Option<(Box<dyn Read>, u64)>> {
        match self {
            Store::Dir(root) => {
                // A docker manifest.json names its files itself: stay inside the input directory.
                if name.starts_with('/') || name.split('/').any(|c| c == "..") {
                    return Err(PackError::Malformed { what: "image".into(), why: format!("file name {name:?} outside the input") });
                }
                let p = root.join(name);
                match File::open(&p) {
                    Ok(f) => {
                        let md = f.metadata().map_err(io_err(&p))?;
                        if !md.is_file() {
                            return Ok(None);
                        }
                        Ok(Some((Box::new(BufReader::with_capacity(1 << 20, f)), md.len())))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(p)(e)),
                }
            }
            Store::Tar { path, members } => {
                let Some(&(off, len)) = members.get(name) else { return Ok(None) };
                let mut f = File::open(path).map_err(io_err(path))?;
                f.seek(SeekFrom::Start(off)).map_err(io_err(path))?;
                Ok(Some((Box::new(BufReader::with_capacity(1 << 20, f).take(len)), len)))
            }
        }
    }

    fn read_small(&self, name: &str, limits: &Limits) -> Result<Option<Vec<u8>>> {
        let Some((r, len)) = self.get(name)? else { return Ok(None) };
        if len > limits.max_meta_bytes {
            return Err(PackError::Limit(format!("{name} is {len} bytes (limit {})", limits.max_meta_bytes)));
        }
        let mut v = Vec::with_capacity(len as usize);
        r.take(limits.max_meta_bytes).read_to_end(&mut v).map_err(io_err(name))?;
        Ok(Some(v))
    }

    /// A small blob (index, manifest, config), checked against its descriptor.
    pub fn blob_json(&self, digest: &str, size: Option<u64>, limits: &Limits) -> Result<Vec<u8>> {
        let hex = check_digest(digest)?;
        let v = self.read_small(&format!("blobs/sha256/{hex}"), limits)?.ok_or_else(|| PackError::MissingBlob(digest.to_string()))?;
        verify(digest, digest, size, &v)?;
        Ok(v)
    }
}

fn verify(what: &str, digest: &str, size: Option<u64>, bytes: &[u8]) -> Result<()> {
    let actual = format!("sha256:{:x}", Sha256::digest(bytes));
    if actual != digest {
        return Err(PackError::DigestMismatch { what: what.to_string(), expected: digest.to_string(), actual });
    }
    if let Some(s) = size {
        if s != bytes.len() as u64 {
            return Err(PackError::SizeMismatch { digest: digest.to_string(), expected: s, actual: bytes.len() as u64 });
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Docker's legacy layers carry no media type: look at the first bytes.
    Sniff,
}

/// One layer to apply: where its bytes are and what they must hash to.
#[derive(Debug, Clone)]
pub struct LayerSource {
    pub name: String,
    /// Digest (and size) of the stored bytes, when the input names one.
    pub blob: Option<(String, Option<u64>)>,
    pub compression: Compression,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

/// The image chosen from the input, with its config already verified.
pub struct Plan {
    pub manifest_digest: Option<String>,
    pub config_digest: String,
    pub config: ImageConfiguration,
    pub layers: Vec<LayerSource>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

pub fn plan(store: &Store, reference: Option<&str>, limits: &Limits) -> Result<Plan> {
    if let Some(index) = store.read_small("index.json", limits)? {
        return plan_oci(store, &index, reference, limits);
    }
    if let Some(m) = store.read_small("manifest.json", limits)? {
        return plan_docker(store, &m, reference, limits);
    }
    Err(PackError::UnknownInput(PathBuf::from(store.describe())))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| PackError::Malformed { what: what.to_string(), why: e.to_string() })
}

const INDEX_TYPES: &[&str] = &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: &[&str] = &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
const CONFIG_TYPES: &[&str] = &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

fn layer_compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        _ => return None,
    })
}

fn names(d: &Descriptor) -> Vec<String> {
    let a = d.annotations().as_ref();
    [REF_NAME, CONTAINERD_NAME].iter().filter_map(|k| a.and_then(|a| a.get(*k)).cloned()).collect()
}

fn plan_oci(store: &Store, index: &[u8], reference: Option<&str>, limits: &Limits) -> Result<Plan> {
    let index: ImageIndex = parse("index.json", index)?;
    let mut cands: Vec<Descriptor> = index.manifests().clone();
    if let Some(r) = reference {
        cands.retain(|d| names(d).iter().any(|n| n == r));
        if cands.is_empty() {
            let all: Vec<String> = index.manifests().iter().flat_map(names).collect();
            return Err(PackError::NoSuchImage(format!("no manifest tagged {r:?} in index.json (tags: {})", all.join(", "))));
        }
    }
    let desc = match cands.len() {
        0 => return Err(PackError::NoSuchImage("index.json lists no manifest".into())),
        1 => cands.remove(0),
        n => {
            let all: Vec<String> = cands.iter().flat_map(names).collect();
            return Err(PackError::Ambiguous(format!("index.json lists {n} manifests; choose one with --ref (tags: {})", all.join(", "))));
        }
    };
    let mut desc = desc;
    // A multi-platform index: take its linux/amd64 manifest.
    if INDEX_TYPES.contains(&desc.media_type().to_string().as_str()) {
        let sub: ImageIndex = parse("image index", &store.blob_json(desc.digest().as_ref(), Some(desc.size()), limits)?)?;
        let pick = sub.manifests().iter().find(|m| {
            m.platform().as_ref().is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
        });
        desc = match pick {
            Some(d) => d.clone(),
            None => {
                let plats: Vec<String> = sub
                    .manifests()
                    .iter()
                    .filter_map(|m| m.platform().as_ref().map(|p| format!("{}/{}", p.os(), p.architecture())))
                    .collect();
                return Err(PackError::WrongPlatform { os: "(index)".into(), arch: plats.join(", ") });
            }
        };
    }
    let mt = desc.media_type().to_string();
    if !MANIFEST_TYPES.contains(&mt.as_str()) {
        return Err(PackError::UnsupportedMediaType { what: format!("manifest {}", desc.digest()), media_type: mt });
    }
    let manifest_digest = desc.digest().to_string();
    let manifest: ImageManifest = parse("image manifest", &store.blob_json(&manifest_digest, Some(desc.size()), limits)?)?;
    let cd = manifest.config();
    let cmt = cd.media_type().to_string();
    if !CONFIG_TYPES.contains(&cmt.as_str()) {
        return Err(PackError::UnsupportedMediaType { what: format!("config {}", cd.digest()), media_type: cmt });
    }
    let config_digest = cd.digest().to_string();
    let config = parse_config(&store.blob_json(&config_digest, Some(cd.size()), limits)?)?;
    let diff_ids = config.rootfs().diff_ids();
    if manifest.layers().len() != diff_ids.len() {
        return Err(PackError::Malformed {
            what: "image".into(),
            why: format!("manifest lists {} layers, config {} diff_ids", manifest.layers().len(), diff_ids.len()),
        });
    }
    if manifest.layers().len() > limits.max_layers {
        return Err(PackError::Limit(format!("{} layers (limit {})", manifest.layers().len(), limits.max_layers)));
    }
    let mut layers = Vec::new();
    for (i, (l, diff)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let lmt = l.media_type().to_string();
        let compression =
            layer_compression(&lmt).ok_or_else(|| PackError::UnsupportedMediaType { what: format!("layer {i} ({})", l.digest()), media_type: lmt })?;
        let digest = l.digest().to_string();
        check_digest(&digest)?;
        check_digest(diff)?;
        layers.push(LayerSource { name: format!("blobs/sha256/{}", &digest[7..]), blob: Some((digest, Some(l.size()))), compression, diff_id: diff.clone() });
    }
    Ok(Plan { manifest_digest: Some(manifest_digest), config_digest, config, layers })
}

/// Parse the image config and insist on linux/amd64.
fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration> {
    let config: ImageConfiguration = parse("image config", bytes)?;
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != "linux" || arch != "amd64" {
        return Err(PackError::WrongPlatform { os, arch });
    }
    Ok(config)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The digest a docker-save member's name carries (`<hex>.json`, `blobs/sha256/<hex>`).
fn digest_in_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?.trim_end_matches(".json");
    let d = format!("sha256:{base}");
    if check_digest(&d).is_ok() {
        Some(d)
    } else {
        None
    }
}

fn plan_docker(store: &Store, manifest: &[u8], reference: Option<&str>, limits: &Limits) -> Result<Plan> {
    let mut ms: Vec<DockerManifest> = parse("manifest.json", manifest)?;
    let tags = |m: &DockerManifest| m.repo_tags.clone().unwrap_or_default();
    if let Some(r) = reference {
        ms.retain(|m| tags(m).iter().any(|t| t == r || t.rsplit_once(':').is_some_and(|(_, tag)| tag == r)));
    }
    let m = match ms.len() {
        1 => ms.remove(0),
        0 => return Err(PackError::NoSuchImage(format!("no image tagged {:?} in manifest.json", reference.unwrap_or("")))),
        n => {
            let all: Vec<String> = ms.iter().flat_map(tags).collect();
            return Err(PackError::Ambiguous(format!("manifest.json lists {n} images; choose one with --ref (tags: {})", all.join(", "))));
        }
    };
    let config_digest = digest_in_name(&m.config).ok_or_else(|| PackError::Malformed {
        what: "manifest.json".into(),
        why: format!("config {} is not named by its sha256 digest, so it cannot be verified", m.config),
    })?;
    let bytes = store.read_small(&m.config, limits)?.ok_or_else(|| PackError::MissingBlob(m.config.clone()))?;
    verify(&m.config, &config_digest, None, &bytes)?;
    let config = parse_config(&bytes)?;
    let diff_ids = config.rootfs().diff_ids();
    if m.layers.len() != diff_ids.len() {
        return Err(PackError::Malformed {
            what: "image".into(),
            why: format!("manifest.json lists {} layers, config {} diff_ids", m.layers.len(), diff_ids.len()),
        });
    }
    if m.layers.len() > limits.max_layers {
        return Err(PackError::Limit(format!("{} layers (limit {})", m.layers.len(), limits.max_layers)));
    }
    let mut layers = Vec::new();
    for (name, diff) in m.layers.iter().zip(diff_ids) {
        check_digest(diff)?;
        let blob = if name.starts_with("blobs/") { digest_in_name(name).map(|d| (d, None)) } else { None };
        layers.push(LayerSource { name: name.clone(), blob, compression: Compression::Sniff, diff_id: diff.clone() });
    }
    Ok(Plan { manifest_digest: None, config_digest, config, layers })
}
