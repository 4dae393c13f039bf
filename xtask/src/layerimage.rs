//! `vm_linux_image_layers`: a three-layer busybox OCI image built offline, packed with
//! `catenary image pack` and run under catenary-init (`vm.image=1`); the workload lists /data and
//! the node's log must show exactly the tree the layers make, nothing more, nothing less.
//!
//! - layer 1 (`umoci repack`): busybox, /data with `keep.txt`, `gone.txt`, `target.txt` and its
//!   hard link `hard.txt`, the symlink `link -> target.txt`, and `dir/` holding `old1` and
//!   `sub/old2`;
//! - layer 2 (`umoci repack`): `gone.txt` removed (umoci writes the whiteout `.wh.gone.txt`),
//!   `layer2.txt` and `dir/from-layer2` added;
//! - layer 3 (a tar made here, added with `umoci raw add-layer`: umoci itself writes one
//!   `.wh.NAME` per removed child, never an opaque marker): `dir/` replaced by an opaque
//!   directory (`dir/.wh..wh..opq`) owned 1000:1001 holding `new`, its hard link `newlink`,
//!   `up -> ../keep.txt` and a new `sub/fresh.txt` (the lower `sub/old2` must not show through).
//!
//! Each hard-link pair must be one inode with link count 2 in the guest (`stat`), not a copy.

use crate::ociimage as oci;
use crate::qemu::run_captured;
use crate::test::Tally;
use crate::tools::out_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const NAME: &str = "vm_linux_image_layers";

/// The workload: one `tree` line per path under /data (sorted; type, mode, owner, size and
/// content, or the symlink's target and what reading through it gives), the count of `.wh.*` names anywhere on the root
/// filesystem, and the inodes of both hard-link pairs.
const SCRIPT: &str = r#"cd /data
for p in $(find . | sort); do
  m=$(stat -c '%A %u:%g' "$p")
  if [ -L "$p" ]; then echo "tree $p $m -> $(readlink "$p") = $(cat "$p" 2>&1)"
  elif [ -d "$p" ]; then echo "tree $p $m"
  else echo "tree $p $m $(stat -c %s "$p") $(cat "$p")"; fi
done
echo "whiteouts $(find / -xdev -name '.wh.*' | wc -l)"
echo "hardlinks $(stat -c '%i/%h' target.txt hard.txt dir/new dir/newlink | tr '\n' ' ')"
echo tree-end"#;

/// Every line the workload prints for /data, in `find | sort` order: the final tree.
const WANT_TREE: &[&str] = &[
    "tree . drwxr-xr-x 0:0",
    "tree ./dir drwxr-x--- 1000:1001",
    "tree ./dir/new -rw-r----- 1000:1001 13 new-in-layer3",
    "tree ./dir/newlink -rw-r----- 1000:1001 13 new-in-layer3",
    "tree ./dir/sub drwxr-xr-x 1000:1001",
    "tree ./dir/sub/fresh.txt -rw-r--r-- 1000:1001 6 fresh3",
    "tree ./dir/up lrwxrwxrwx 1000:1001 -> ../keep.txt = keep-layer1",
    "tree ./hard.txt -rw-r--r-- 0:0 13 target-layer1",
    "tree ./keep.txt -rw-r--r-- 0:0 11 keep-layer1",
    "tree ./layer2.txt -rw-r--r-- 0:0 7 layer-2",
    "tree ./link lrwxrwxrwx 0:0 -> target.txt = target-layer1",
    "tree ./target.txt -rw-r--r-- 0:0 13 target-layer1",
];

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn chmod(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The three layers (see the module comment), packed into `dir/out`.
fn build_image(dir: &Path) -> Result<(), String> {
    let tag = "layers";
    // Layer 1.
    let r = oci::new_image(dir, tag)?;
    oci::add_busybox(&r)?;
    let d = r.join("data");
    write(&d.join("keep.txt"), "keep-layer1", 0o644)?;
    write(&d.join("gone.txt"), "gone-layer1", 0o644)?;
    write(&d.join("target.txt"), "target-layer1", 0o644)?;
    std::fs::hard_link(d.join("target.txt"), d.join("hard.txt")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("target.txt", d.join("link")).map_err(|e| e.to_string())?;
    write(&d.join("dir/old1"), "old1-layer1", 0o644)?;
    write(&d.join("dir/sub/old2"), "old2-layer1", 0o644)?;
    for p in [d.clone(), d.join("dir"), d.join("dir/sub")] {
        chmod(&p, 0o755)?;
    }
    oci::repack(dir, tag)?;
    // Layer 2: umoci diffs the unpacked tree against the image.
    let r = oci::unpack(dir, tag)?;
    let d = r.join("data");
    std::fs::remove_file(d.join("gone.txt")).map_err(|e| e.to_string())?;
    write(&d.join("layer2.txt"), "layer-2", 0o644)?;
    write(&d.join("dir/from-layer2"), "from-layer2", 0o644)?;
    oci::repack(dir, tag)?;
    // Layer 3: the opaque directory, as a tar of our own.
    let stage = dir.join("layer3");
    let _ = std::fs::remove_dir_all(&stage);
    let sd = stage.join("data/dir");
    write(&sd.join(".wh..wh..opq"), "", 0o644)?;
    write(&sd.join("new"), "new-in-layer3", 0o640)?;
    std::fs::hard_link(sd.join("new"), sd.join("newlink")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink("../keep.txt", sd.join("up")).map_err(|e| e.to_string())?;
    write(&sd.join("sub/fresh.txt"), "fresh3", 0o644)?;
    chmod(&sd.join("sub"), 0o755)?;
    chmod(&sd, 0o750)?;
    let tar = dir.join("layer3.tar");
    oci::run(
        &stage,
        &["tar", "--sort=name", "--owner=app:1000", "--group=app:1001", "--numeric-owner", "--mtime=@0", "--format=pax", "-cf", tar.to_str().unwrap(), "data/dir"],
    )?;
    oci::run(dir, &["umoci", "raw", "add-layer", "--image", &format!("L:{tag}"), tar.to_str().unwrap()])?;
    oci::config(dir, tag, &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", SCRIPT])?;
    oci::pack(dir, tag, &dir.join("out")).map(|_| ())
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    if let Some(why) = oci::missing_tools() {
        t.skip(NAME, why);
        return Ok(());
    }
    let dir = out_dir().join("image-layers-test");
    if let Err(e) = build_image(&dir) {
        t.record(NAME, false, &format!("(building the image: {e})"));
        return Ok(());
    }
    let bundle = dir.join("bundle.cpio");
    oci::bundle_with_image(&dir.join("out"), &bundle)?;
    let b = crate::vmbench::node_with_guest(kernel, &bundle, "vm.image=1");
    let want = ["[vm:demo stdout] tree-end", "microVM demo: workload exit code 0", "microVM demo ended: power off"];
    let fail = ["KERNEL PANIC", "- stopping this CPU", "microVM demo failed", "catenary-init: error", "microVM demo ended: reboot", "microVM demo ended: triple"];
    let o = run_captured(b.command(false)?, &want, &fail, Duration::from_secs(300), false)?;
    let log = out_dir().join(format!("{NAME}.log"));
    let _ = std::fs::write(&log, o.lines.join("\n"));
    let out: Vec<&str> = o.lines.iter().filter_map(|l| l.strip_prefix("[vm:demo stdout] ")).collect();
    let tree: Vec<&str> = out.iter().copied().filter(|l| l.starts_with("tree ") && *l != "tree-end").collect();
    let extra: Vec<&str> = tree.iter().copied().filter(|l| !WANT_TREE.contains(l)).collect();
    let missing: Vec<&str> = WANT_TREE.iter().copied().filter(|l| !tree.contains(l)).collect();
    let whiteouts = out.iter().find_map(|l| l.strip_prefix("whiteouts ")).unwrap_or("?");
    let hardlinks = out.iter().find_map(|l| l.strip_prefix("hardlinks ")).unwrap_or("?").trim().to_string();
    let in_order = tree == WANT_TREE;
    // Each pair is one inode with two links (pack keeps hard links: docs/images.md).
    println!("    hard links target.txt hard.txt dir/new dir/newlink, inode/nlink in the guest: {hardlinks}");
    let links_ok = hard_pairs_ok(&hardlinks);
    let ok = o.matched && o.failed_on.is_none() && extra.is_empty() && missing.is_empty() && in_order && whiteouts == "0" && links_ok;
    t.record(
        NAME,
        ok,
        &format!(
            "({} tree lines, extra {extra:?}, missing {missing:?}{}, {whiteouts} .wh.* names on the root; hard links inode/nlink {hardlinks} (want two pairs, each one inode with 2 links){}; serial log {})",
            tree.len(),
            if in_order || !extra.is_empty() || !missing.is_empty() { "" } else { ", out of order" },
            o.failed_on.as_deref().map(|l| format!(", stopped at `{l}`")).unwrap_or_default(),
            log.display()
        ),
    );
    Ok(())
}

/// `I1/2 I1/2 I2/2 I2/2`: the two pairs, each one inode with link count 2, the pairs distinct.
fn hard_pairs_ok(line: &str) -> bool {
    let v: Vec<&str> = line.split_whitespace().collect();
    v.len() == 4 && v[0] == v[1] && v[2] == v[3] && v[0] != v[2] && v.iter().all(|s| s.ends_with("/2"))
}
