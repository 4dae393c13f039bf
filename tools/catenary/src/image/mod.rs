//! `catenary image pack`: an OCI image (layout directory or `docker save` tarball) → a Catenary
//! image directory: `rootfs.squashfs`, `config.json` (the run configuration) and `image.json`
//! (the manifest naming both by digest). The image's digest is the sha256 of `image.json`'s
//! bytes. Format: docs/images.md.

pub mod error;
pub mod layer;
pub mod runconfig;
pub mod source;
pub mod spool;
pub mod squashfs;
pub mod tree;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::{PackError, Result};
pub use layer::Limits;
use source::{Compression, LayerSource, Store, TapReader};
use tree::{Dir, Meta};

pub const IMAGE_MEDIA_TYPE: &str = "application/vnd.catenary.image.v1+json";
pub const IMAGE_FILE: &str = "image.json";
pub const CONFIG_FILE: &str = "config.json";
pub const ROOTFS_FILE: &str = "rootfs.squashfs";

/// `image.json`: what the image digest covers. Serialised compactly in field order (the
/// canonical form; see docs/images.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageManifest {
    pub schema_version: u32,
    pub media_type: String,
    pub rootfs: BlobRef,
    pub config: BlobRef,
    /// Digests of the OCI manifest (absent for a legacy `docker save`) and OCI config packed.
    pub source: SourceRef,
    /// The sha256 of each piece of `config.json ‖ rootfs.squashfs`: a node fetching the image
    /// refuses a wrong piece as it arrives. Images packed before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<PieceList>,
}

/// `image.json`'s `pieces` (docs/images.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceList {
    /// Bytes per piece: `catenary_workload::store::piece_size` of the stream (256 KiB up to
    /// 32 MiB of stream, doubled until at most 128 pieces).
    pub size: u64,
    /// Each piece's sha256 as 64 lowercase hex digits, one after another.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceRef {
    pub manifest: Option<String>,
    pub config: String,
}

#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Tag to pick from the input (`org.opencontainers.image.ref.name`, `io.containerd.image.name`
    /// or a docker RepoTag); `None`: the input must hold exactly one image.
    pub reference: Option<String>,
    pub limits: Limits,
    /// Replace an existing output directory.
    pub force: bool,
    /// Show progress bars (the CLI sets this when stderr is a terminal).
    pub progress: bool,
}

#[derive(Debug)]
pub struct PackReport {
    /// `sha256:<hex>` of `image.json`.
    pub digest: String,
    pub manifest: ImageManifest,
    /// Entries skipped (device nodes, unknown tar types) and similar notes.
    pub warnings: Vec<String>,
    /// Nodes in the final tree (the root not counted).
    pub nodes: usize,
}

/// Pack `input` into the Catenary image directory `out`. On any error nothing is left at `out`
/// (the work happens in a temporary directory beside it, renamed into place at the end).
pub fn pack(input: &Path, out: &Path, opts: &PackOptions) -> Result<PackReport> {
    if out.exists() && !opts.force {
        return Err(PackError::OutputExists(out.to_path_buf()));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new().prefix(".catenary-pack-").tempdir_in(&parent).map_err(error::io_err(&parent))?;
    let work = staging.path().join("out");
    std::fs::create_dir(&work).map_err(error::io_err(&work))?;

    let store = Store::open(input, &opts.limits)?;
    let plan = source::plan(&store, opts.reference.as_deref(), &opts.limits)?;

    let mut spool = spool::Spool::create(&staging.path().join("spool"))?;
    // The StopSignal is checked here, not first in the guest: a name the init cannot deliver
    // would only show when the workload is stopped.
    let run = runconfig::RunConfig::from_oci(&plan.config);
    if catenary_guest_proto::signal::parse(&run.stop_signal).is_none() {
        return Err(PackError::Malformed {
            what: "image config".into(),
            why: format!("StopSignal {:?} names no signal (a number 1-64, a name like SIGTERM, SIGRTMIN+N or SIGRTMAX-N)", run.stop_signal),
        });
    }
    let mut root = Dir::new(Meta::IMPLICIT_DIR, true);
    let mut budget = layer::Budget::default();
    let mut warnings = Vec::new();
    for (i, l) in plan.layers.iter().enumerate() {
        let upper = apply_layer(&store, i, l, &root, &mut spool, opts, &mut budget, &mut warnings)?;
        tree::merge(&mut root, upper).map_err(|e| PackError::BadEntry { layer: i, path: e.path, why: e.why })?;
    }
    let nodes = tree::count(&root);
    let spool = spool.finish()?;

    let rootfs_path = work.join(ROOTFS_FILE);
    squashfs::write(&root, spool, &rootfs_path)?;
    let (rootfs_digest, rootfs_size) = hash_file(&rootfs_path)?;

    let run_bytes = run.canonical();
    write_file(&work.join(CONFIG_FILE), &run_bytes)?;

    let manifest = ImageManifest {
        schema_version: 1,
        media_type: IMAGE_MEDIA_TYPE.into(),
        rootfs: BlobRef { media_type: squashfs::MEDIA_TYPE.into(), digest: rootfs_digest, size: rootfs_size, file: ROOTFS_FILE.into() },
        config: BlobRef {
            media_type: runconfig::MEDIA_TYPE.into(),
            digest: format!("sha256:{:x}", Sha256::digest(&run_bytes)),
            size: run_bytes.len() as u64,
            file: CONFIG_FILE.into(),
        },
        source: SourceRef { manifest: plan.manifest_digest.clone(), config: plan.config_digest.clone() },
        pieces: Some(piece_list(&run_bytes, &rootfs_path, rootfs_size)?),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("plain structs serialise");
    write_file(&work.join(IMAGE_FILE), &manifest_bytes)?;
    let digest = format!("sha256:{:x}", Sha256::digest(&manifest_bytes));
    sync_dir(&work);

    // Into place: the old output (with --force) moves aside first and is removed after.
    if out.exists() {
        let old = staging.path().join("old");
        std::fs::rename(out, &old).map_err(error::io_err(out))?;
    }
    std::fs::rename(&work, out).map_err(error::io_err(out))?;
    sync_dir(&parent);
    drop(staging);
    Ok(PackReport { digest, manifest, warnings, nodes })
}

/// Read, decompress, verify and parse one layer into its own tree.
#[allow(clippy::too_many_arguments)]
fn apply_layer(
    store: &Store,
    index: usize,
    l: &LayerSource,
    lower: &Dir,
    spool: &mut spool::Spool,
    opts: &PackOptions,
    budget: &mut layer::Budget,
    warnings: &mut Vec<String>,
) -> Result<Dir> {
    let missing = || PackError::MissingBlob(l.blob.as_ref().map(|b| b.0.clone()).unwrap_or_else(|| l.name.clone()));
    let (raw, len) = store.get(&l.name)?.ok_or_else(missing)?;
    if let Some((d, Some(size))) = &l.blob {
        if *size != len {
            return Err(PackError::SizeMismatch { digest: d.clone(), expected: *size, actual: len });
        }
    }
    let bar = progress_bar(opts.progress, len, &format!("layer {index}"));
    let (raw, raw_tap) = TapReader::new(bar.wrap_read(raw));
    let mut raw = BufReader::with_capacity(1 << 16, raw);
    let compression = match l.compression {
        Compression::Sniff => {
            let head = raw.fill_buf().map_err(error::io_err(&l.name))?;
            if head.starts_with(&[0x1f, 0x8b]) {
                Compression::Gzip
            } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Compression::Zstd
            } else {
                Compression::None
            }
        }
        c => c,
    };
    let decoded: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw).map_err(error::io_err(&l.name))?),
        _ => Box::new(raw),
    };
    let (mut tar_stream, diff_tap) = TapReader::new(decoded);
    let mut ctx = layer::LayerCtx { index, lower, spool, limits: &opts.limits, budget, warnings };
    let upper = layer::read_layer(&mut ctx, &mut tar_stream);
    // A broken blob shows first as a broken tar or gzip stream: report the digest mismatch then,
    // which is the cause, when the bytes that were read already do not hash right.
    let drained = upper.as_ref().ok().map(|_| drain(&mut tar_stream, opts.limits.max_meta_bytes));
    bar.finish_and_clear();
    if let Some((d, _)) = &l.blob {
        if upper.is_err() || matches!(drained, Some(Err(_))) {
            // Read the rest of the stored blob to name the real cause.
            if let Some((rest, _)) = store.get(&l.name)? {
                let (mut r, t) = TapReader::new(rest);
                if io::copy(&mut r, &mut io::sink()).is_ok() && t.borrow().digest() != *d {
                    return Err(PackError::DigestMismatch { what: format!("layer {index}"), expected: d.clone(), actual: t.borrow().digest() });
                }
            }
        }
    }
    let upper = upper?;
    drained.expect("set when upper is Ok").map_err(|e| PackError::Malformed { what: format!("layer {index} ({})", l.name), why: e.to_string() })?;
    drop(tar_stream);
    if let Some((d, _)) = &l.blob {
        let actual = raw_tap.borrow().digest();
        if actual != *d {
            return Err(PackError::DigestMismatch { what: format!("layer {index}"), expected: d.clone(), actual });
        }
    }
    let actual = diff_tap.borrow().digest();
    if actual != l.diff_id {
        return Err(PackError::DigestMismatch { what: format!("layer {index} uncompressed (diff_id)"), expected: l.diff_id.clone(), actual });
    }
    Ok(upper)
}

/// Read what follows the tar's end (padding) so the hashes cover the whole stream; bounded.
fn drain(r: &mut dyn Read, limit: u64) -> io::Result<()> {
    let n = io::copy(&mut r.take(limit + 1), &mut io::sink())?;
    if n > limit {
        return Err(io::Error::other(format!("more than {limit} bytes after the end of the tar archive")));
    }
    Ok(())
}

fn progress_bar(enabled: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// The piece list of the stream `config ‖ the file at rootfs` (`rootfs_size` bytes), read a
/// piece at a time.
fn piece_list(config: &[u8], rootfs: &Path, rootfs_size: u64) -> Result<PieceList> {
    use std::fmt::Write as _;
    let size = catenary_workload::store::piece_size(config.len() as u64 + rootfs_size);
    let f = std::fs::File::open(rootfs).map_err(error::io_err(rootfs))?;
    let mut stream = io::Cursor::new(config).chain(BufReader::with_capacity(1 << 20, f));
    let (mut sha256, mut piece) = (String::new(), Vec::new());
    loop {
        piece.clear();
        (&mut stream).take(size).read_to_end(&mut piece).map_err(error::io_err(rootfs))?;
        if piece.is_empty() {
            break;
        }
        let _ = write!(sha256, "{:x}", Sha256::digest(&piece));
    }
    Ok(PieceList { size, sha256 })
}

fn hash_file(p: &Path) -> Result<(String, u64)> {
    let f = std::fs::File::open(p).map_err(error::io_err(p))?;
    let (mut r, tap) = TapReader::new(BufReader::with_capacity(1 << 20, f));
    io::copy(&mut r, &mut io::sink()).map_err(error::io_err(p))?;
    let t = tap.borrow();
    Ok((t.digest(), t.count))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::options().write(true).create_new(true).open(p).map_err(error::io_err(p))?;
    f.write_all(bytes).map_err(error::io_err(p))?;
    f.sync_all().map_err(error::io_err(p))
}

fn sync_dir(p: &Path) {
    if let Ok(d) = std::fs::File::open(p) {
        let _ = d.sync_all();
    }
}

/// Verify a Catenary image directory: `image.json` hashes to `digest` (when given) and the files
/// it names hash to their digests. Returns the digest and the manifest. (The node's image store does the same on
/// arrival.)
pub fn verify(dir: &Path, digest: Option<&str>) -> Result<(String, ImageManifest)> {
    let p = dir.join(IMAGE_FILE);
    let bytes = std::fs::read(&p).map_err(error::io_err(&p))?;
    let actual = format!("sha256:{:x}", Sha256::digest(&bytes));
    if let Some(d) = digest {
        if d != actual {
            return Err(PackError::DigestMismatch { what: p.display().to_string(), expected: d.into(), actual });
        }
    }
    let m: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| PackError::Malformed { what: IMAGE_FILE.into(), why: e.to_string() })?;
    for b in [&m.rootfs, &m.config] {
        if b.file.contains('/') {
            return Err(PackError::Malformed { what: IMAGE_FILE.into(), why: format!("file name {:?}", b.file) });
        }
        let (d, size) = hash_file(&dir.join(&b.file))?;
        if d != b.digest || size != b.size {
            return Err(PackError::DigestMismatch { what: b.file.clone(), expected: b.digest.clone(), actual: d });
        }
    }
    if let Some(listed) = &m.pieces {
        let p = dir.join(&m.config.file);
        let config = std::fs::read(&p).map_err(error::io_err(&p))?;
        let actual = piece_list(&config, &dir.join(&m.rootfs.file), m.rootfs.size)?;
        if actual.size != listed.size {
            return Err(PackError::Malformed { what: IMAGE_FILE.into(), why: format!("pieces of {} bytes listed; a stream of this size is cut into pieces of {}", listed.size, actual.size) });
        }
        if actual.sha256 != listed.sha256 {
            // name the first piece that differs (a list of the wrong length: the first missing or extra one)
            let nth = |l: &PieceList, i: usize| l.sha256.get(i * 64..).map(|h| &h[..h.len().min(64)]).filter(|h| !h.is_empty()).map_or_else(|| "(none)".to_string(), |h| format!("sha256:{h}"));
            let n = listed.sha256.len().max(actual.sha256.len()).div_ceil(64);
            let i = (0..n).find(|&i| nth(listed, i) != nth(&actual, i)).unwrap_or(0);
            return Err(PackError::DigestMismatch { what: format!("piece {i} of the stream (as {IMAGE_FILE} lists it)"), expected: nth(listed, i), actual: nth(&actual, i) });
        }
    }
    Ok((actual, m))
}
