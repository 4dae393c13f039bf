//! Errors of `catenary image pack`. Every hostile or broken input ends in one of these, with the
//! blob or layer path that caused it, never in a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("input {0}: neither an OCI image layout (index.json) nor a docker-save tarball (manifest.json)")]
    UnknownInput(PathBuf),
    #[error("missing blob {0} (referenced by the image but not present in the input)")]
    MissingBlob(String),
    #[error("digest mismatch for {what}: expected {expected}, content hashes to {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("size mismatch for blob {digest}: descriptor says {expected} bytes, blob has {actual}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    #[error("unsupported digest {0} (only sha256:<64 hex> is accepted)")]
    BadDigest(String),
    #[error("unsupported media type {media_type} for {what}")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("image platform is {os}/{arch}; Catenary runs only linux/amd64 images")]
    WrongPlatform { os: String, arch: String },
    #[error("no image matches: {0}")]
    NoSuchImage(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("malformed {what}: {why}")]
    Malformed { what: String, why: String },
    #[error("layer {layer}: entry {path:?}: {why}")]
    BadEntry { layer: usize, path: String, why: String },
    #[error("limit exceeded: {0}")]
    Limit(String),
    #[error("output {0} already exists (use --force to replace it)")]
    OutputExists(PathBuf),
    #[error("writing the root filesystem image: {0}")]
    Squashfs(String),
}

pub type Result<T> = std::result::Result<T, PackError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PackError {
    let path = path.into();
    move |source| PackError::Io { path, source }
}
