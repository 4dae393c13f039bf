//! Host tools: find them, or say which Debian package provides them.

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn out_dir() -> PathBuf {
    let d = root().join("build");
    let _ = std::fs::create_dir_all(&d);
    d
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(cmd)).find(|p| p.is_file())
}

/// A required host tool, or an error naming the Debian package to install.
pub fn require(cmd: &str, package: &str) -> Result<PathBuf, String> {
    which(cmd).ok_or_else(|| format!("`{cmd}` not found: install it with `apt-get install {package}`"))
}

pub fn require_file(path: &str, package: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(path);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("`{path}` not found: install it with `apt-get install {package}`"))
    }
}

pub fn run(cmd: &mut std::process::Command) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed with {st}", cmd.get_program()))
    }
}
