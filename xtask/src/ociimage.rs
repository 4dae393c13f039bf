//! OCI images built offline for the image tests, `bench workload` and `run --image`: `umoci`
//! (rootless) makes an OCI layout from local files (the host's static busybox), `catenary image
//! pack` turns it into a Catenary image (docs/images.md), and the packed image rides in a guest
//! bundle beside the guest kernel and initramfs for a node started with `vm.image=1`.

use crate::tools::{out_dir, root, which};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A static busybox (Debian's busybox-static): the only program the test images hold.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why an image cannot be built on this machine (a test skips with it), or `None`.
pub fn missing_tools() -> Option<&'static str> {
    if which("umoci").is_none() {
        return Some("umoci not installed (Debian package umoci; ci/install-deps.sh installs it)");
    }
    if !Path::new(BUSYBOX).exists() {
        return Some("/bin/busybox missing (Debian package busybox-static)");
    }
    None
}

/// Run `args` in `dir`; an error carries the program's stderr.
pub fn run(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).current_dir(dir).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// An empty OCI layout `dir/L` with one image tagged `tag`, unpacked (rootless) in `dir/B`;
/// returns the root filesystem to fill (`dir/B/rootfs`). `dir` is emptied first.
pub fn new_image(dir: &Path, tag: &str) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    run(dir, &["umoci", "init", "--layout", "L"])?;
    run(dir, &["umoci", "new", "--image", &format!("L:{tag}")])?;
    unpack(dir, tag)
}

/// Unpack the image `tag` afresh in `dir/B` (what the next `repack` diffs against).
pub fn unpack(dir: &Path, tag: &str) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(dir.join("B"));
    run(dir, &["umoci", "unpack", "--rootless", "--image", &format!("L:{tag}"), "B"])?;
    Ok(dir.join("B/rootfs"))
}

/// Commit the changes made in `dir/B/rootfs` as a new layer of `tag` (umoci writes a `.wh.NAME`
/// whiteout for each path removed since the unpack).
pub fn repack(dir: &Path, tag: &str) -> Result<(), String> {
    run(dir, &["umoci", "repack", "--image", &format!("L:{tag}"), "B"])
}

/// `/bin/busybox` and `/bin/sh -> busybox` in `rootfs`.
pub fn add_busybox(rootfs: &Path) -> Result<(), String> {
    std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).map_err(|e| e.to_string())
}

/// `umoci config` on `tag` with `args` (`--config.entrypoint X`, …).
pub fn config(dir: &Path, tag: &str, args: &[&str]) -> Result<(), String> {
    let image = format!("L:{tag}");
    let mut all = vec!["umoci", "config", "--image", image.as_str()];
    all.extend_from_slice(args);
    run(dir, &all)
}

/// `catenary image pack dir/L --ref tag -o out` (the workspace's tool); returns the image digest.
pub fn pack(dir: &Path, tag: &str, out: &Path) -> Result<String, String> {
    let _ = std::fs::remove_dir_all(out);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(root())
        .args(["run", "--quiet", "-p", "catenary", "--", "image", "pack"])
        .arg(dir.join("L"))
        .args(["--ref", tag, "-o"])
        .arg(out)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("catenary image pack: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The guest bundle boot module (`build/guest`'s vmlinux, bzImage, initramfs.cpio.gz) plus the
/// packed image in `image` (`image/rootfs.squashfs`, `image/config.json`, and `image/image.json`,
/// by which the node's image store verifies it), written to `bundle`: what a node started with
/// `vm.image=1` runs, and the image the workload service finds in its store.
pub fn bundle_with_image(image: &Path, bundle: &Path) -> Result<(), String> {
    let g = out_dir().join("guest");
    let mut files = Vec::new();
    for (name, path) in [
        ("vmlinux", g.join("vmlinux")),
        ("bzImage", g.join("bzImage")),
        ("initramfs.cpio.gz", g.join("initramfs.cpio.gz")),
        ("image/rootfs.squashfs", image.join("rootfs.squashfs")),
        ("image/config.json", image.join("config.json")),
        ("image/image.json", image.join("image.json")),
    ] {
        files.push((name.to_string(), std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?));
    }
    std::fs::write(bundle, crate::build::cpio_newc(&files)).map_err(|e| format!("{}: {e}", bundle.display()))
}
