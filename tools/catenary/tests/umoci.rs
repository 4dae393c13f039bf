//! A real image, built offline with Debian's `umoci` from `busybox-static` (two layers: the
//! second deletes a file and replaces a directory, so umoci writes real whiteouts), packed, and
//! read back with squashfs-tools' `unsquashfs` as well as backhand's reader. The same image
//! exported by `skopeo` as a `docker save` tarball packs to the same root filesystem.
//! A missing tool makes the test print `SKIP:` and return (counted as skipped by xtask).

mod common;

use std::path::Path;
use std::process::Command;

use catenary::image::{self, runconfig::RunConfig, PackOptions};
use common::*;

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const BUSYBOX: &str = "/bin/busybox";

#[test]
fn umoci_busybox_image() {
    for (tool, pkg) in [("umoci", "umoci"), ("unsquashfs", "squashfs-tools")] {
        if !have(tool) {
            println!("SKIP: umoci_busybox_image: {tool} not installed (Debian package {pkg}; ci/install-deps.sh installs it)");
            return;
        }
    }
    if !Path::new(BUSYBOX).exists() {
        println!("SKIP: umoci_busybox_image: {BUSYBOX} missing (Debian package busybox-static)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    run(d, &["umoci", "init", "--layout", "L"]);
    run(d, &["umoci", "new", "--image", "L:bb"]);
    // Layer 1: busybox, a symlink, a hard link, a file and a directory to delete later.
    run(d, &["umoci", "unpack", "--rootless", "--image", "L:bb", "B"]);
    let root = d.join("B/rootfs");
    for p in ["bin", "etc", "old", "home/app"] {
        std::fs::create_dir_all(root.join(p)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::hard_link(root.join("bin/busybox"), root.join("bin/ls")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/gone"), "x").unwrap();
    std::fs::write(root.join("old/a"), "a").unwrap();
    run(d, &["umoci", "repack", "--image", "L:bb", "B"]);
    std::fs::remove_dir_all(d.join("B")).unwrap();
    // Layer 2: delete etc/gone, replace old/ by a new directory with other contents.
    run(d, &["umoci", "unpack", "--rootless", "--image", "L:bb", "B"]);
    std::fs::remove_file(root.join("etc/gone")).unwrap();
    std::fs::remove_dir_all(root.join("old")).unwrap();
    std::fs::create_dir(root.join("old")).unwrap();
    std::fs::write(root.join("old/b"), "b").unwrap();
    run(d, &["umoci", "repack", "--image", "L:bb", "B"]);
    run(
        d,
        &[
            "umoci", "config", "--image", "L:bb", "--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.cmd",
            "echo hi; exit 3", "--config.env", "GREETING=hello", "--config.workingdir", "/home/app", "--config.user", "1000:1000",
            "--config.exposedports", "8080/tcp", "--config.stopsignal", "SIGTERM",
        ],
    );

    let opts = PackOptions { reference: Some("bb".into()), ..Default::default() };
    let r = image::pack(&d.join("L"), &d.join("out"), &opts).unwrap();
    let rc = RunConfig::parse(&std::fs::read(d.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(rc.args(), ["/bin/sh", "-c", "echo hi; exit 3"]);
    assert!(rc.env.iter().any(|e| e == "GREETING=hello"), "{:?}", rc.env);
    assert_eq!((rc.working_dir.as_str(), rc.user.as_str()), ("/home/app", "1000:1000"));
    assert_eq!(rc.exposed_ports, ["8080/tcp"]);

    // squashfs-tools reads the image and sees the final tree.
    let out = Command::new("unsquashfs").arg("-lln").arg(d.join("out/rootfs.squashfs")).output().unwrap();
    assert!(out.status.success(), "unsquashfs: {}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut paths: Vec<String> = Vec::new();
    for line in listing.lines().filter(|l| l.contains("squashfs-root")) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let path = cols[5].trim_start_matches("squashfs-root").to_string();
        match path.as_str() {
            "/bin/busybox" | "/bin/ls" => {
                assert!(cols[0] == "-rwxr-xr-x" && cols[1] == "0/0", "{line}");
                assert_eq!(cols[2].parse::<u64>().unwrap(), std::fs::metadata(BUSYBOX).unwrap().len());
            }
            "/bin/sh" => assert!(cols[0].starts_with('l') && line.ends_with("-> busybox"), "{line}"),
            _ => {}
        }
        paths.push(if path.is_empty() { "/".into() } else { path });
    }
    assert_eq!(paths, ["/", "/bin", "/bin/busybox", "/bin/ls", "/bin/sh", "/etc", "/etc/passwd", "/home", "/home/app", "/old", "/old/b"]);
    let fs = read_squashfs(&d.join("out/rootfs.squashfs"));
    assert_eq!(fs["/bin/ls"].kind, Kind::File(std::fs::read(BUSYBOX).unwrap()));
    // The hard link's bytes are stored once, and nothing trails the filesystem.
    let size = std::fs::metadata(d.join("out/rootfs.squashfs")).unwrap().len();
    assert!(size < std::fs::metadata(BUSYBOX).unwrap().len(), "squashfs of {size} bytes: busybox stored twice?");
    let sb = Command::new("unsquashfs").arg("-s").arg(d.join("out/rootfs.squashfs")).output().unwrap();
    let used: u64 = String::from_utf8_lossy(&sb.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem size ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .expect("unsquashfs -s prints the filesystem size");
    assert!(size >= used && size - used < 4096, "image of {size} bytes for a {used}-byte filesystem");
    // The hard link is one inode with two names: unsquashfs makes the extracted names one inode
    // only when the image has one (a copy would give two inodes, each with one link).
    let x = d.join("x");
    let o = Command::new("unsquashfs").arg("-d").arg(&x).arg(d.join("out/rootfs.squashfs")).output().unwrap();
    assert!(o.status.success(), "unsquashfs -d: {}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(x.join("bin/busybox")).unwrap(), std::fs::metadata(x.join("bin/ls")).unwrap());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "bin/busybox and its hard link bin/ls");
    assert_eq!(std::fs::metadata(x.join("etc/passwd")).unwrap().nlink(), 1);

    // skopeo's docker-archive export of the same image: a docker-save tarball, same tree.
    if !have("skopeo") {
        println!("SKIP: umoci_busybox_image (docker-archive part): skopeo not installed (Debian package skopeo)");
        return;
    }
    let tarball = d.join("bb.tar");
    run(d, &["skopeo", "--insecure-policy", "copy", "oci:L:bb", &format!("docker-archive:{}:bb:latest", tarball.display())]);
    let r2 = image::pack(&tarball, &d.join("out2"), &PackOptions::default()).unwrap();
    assert_eq!(r2.manifest.rootfs.digest, r.manifest.rootfs.digest, "same layers, same filesystem bytes");
    assert_eq!(std::fs::read(d.join("out2/config.json")).unwrap(), std::fs::read(d.join("out/config.json")).unwrap());
}
