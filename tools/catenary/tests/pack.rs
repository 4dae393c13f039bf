//! `catenary image pack` on synthetic images: layer semantics (whiteouts, opaque directories,
//! symlinks, hard links, devices, ownership), the run config, determinism, both input forms, and
//! every hostile input refused with nothing left behind.

mod common;

use std::path::Path;

use catenary::image::{self, runconfig::RunConfig, Limits, PackError, PackOptions};
use common::*;
use tar::EntryType;

fn pack(input: &Path, out: &Path) -> Result<image::PackReport, PackError> {
    image::pack(input, out, &PackOptions::default())
}

fn base_layer() -> Vec<u8> {
    tar(&[
        Ent::Dir("etc/", 0o755, 0, 0),
        Ent::File("etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n", 0o644, 0, 0),
        Ent::File("etc/gone", b"deleted by the upper layer", 0o644, 0, 0),
        Ent::File("etc/empty", b"", 0o400, 0, 0),
        Ent::File("etc/été name", b"non-ASCII name", 0o644, 0, 0),
        Ent::Dir("data/", 0o750, 1000, 1000),
        Ent::File("data/old1", b"old", 0o600, 1000, 1000),
        Ent::Dir("data/sub/", 0o755, 0, 0),
        Ent::File("data/sub/old2", b"old2", 0o644, 0, 0),
        Ent::Dir("olddir/", 0o755, 0, 0),
        Ent::File("olddir/x", b"x", 0o644, 0, 0),
        Ent::Dir("bin/", 0o755, 0, 0),
        Ent::File("bin/busybox", b"\x7fELF pretend busybox", 0o755, 0, 0),
    ])
}

fn upper_layer() -> Vec<u8> {
    tar(&[
        Ent::Raw(b"etc/.wh.gone".to_vec(), EntryType::Regular, ""),
        // An entry of this layer before its directory's opaque marker: it must survive.
        Ent::File("data/new", b"new", 0o640, 1000, 1000),
        Ent::Raw(b"data/.wh..wh..opq".to_vec(), EntryType::Regular, ""),
        Ent::Raw(b".wh.olddir".to_vec(), EntryType::Regular, ""),
        Ent::Symlink("bin/sh", "busybox"),
        Ent::Hardlink("bin/ln", "bin/busybox"),
        Ent::File("usr/local/bin/suid", b"#!/bin/sh\n", 0o4750, 0, 1000),
        Ent::Fifo("run/fifo", 0o600),
        Ent::Char("dev/null"),
        Ent::Dir("home/app/", 0o700, 1000, 1000),
        Ent::Symlink("home/app/abs", "/etc/passwd"),
    ])
}

/// The guest sees exactly the final tree of a two-layer image (issue 11 item 5, at the
/// filesystem-image level).
#[test]
fn multi_layer_tree_is_exact() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer(), upper_layer()];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    let r = pack(&t.path().join("in"), &t.path().join("out")).unwrap();
    let fs = read_squashfs(&t.path().join("out/rootfs.squashfs"));
    let paths: Vec<&str> = fs.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/", "/bin", "/bin/busybox", "/bin/ln", "/bin/sh", "/data", "/data/new", "/dev", "/etc", "/etc/empty", "/etc/passwd", "/etc/\u{e9}t\u{e9} name", "/home", "/home/app",
            "/home/app/abs", "/run", "/run/fifo", "/usr", "/usr/local", "/usr/local/bin", "/usr/local/bin/suid"
        ]
    );
    let e = |p: &str| fs[p].clone();
    assert_eq!(e("/bin/sh").kind, Kind::Symlink("busybox".into()));
    assert_eq!(e("/home/app/abs").kind, Kind::Symlink("/etc/passwd".into()));
    assert_eq!(e("/bin/ln").kind, e("/bin/busybox").kind, "hard link has the target's bytes");
    assert_eq!((e("/bin/ln").mode, e("/bin/ln").uid), (0o755, 0));
    assert_eq!(e("/data/new").kind, Kind::File(b"new".to_vec()));
    // The opaque directory keeps its own (lower) metadata.
    assert_eq!((e("/data").mode, e("/data").uid, e("/data").gid), (0o750, 1000, 1000));
    assert_eq!((e("/data/new").mode, e("/data/new").uid, e("/data/new").gid), (0o640, 1000, 1000));
    assert_eq!((e("/usr/local/bin/suid").mode, e("/usr/local/bin/suid").gid), (0o4750, 1000));
    assert_eq!((e("/home/app").mode, e("/home/app").uid), (0o700, 1000));
    assert_eq!(e("/run/fifo").kind, Kind::Fifo);
    assert_eq!((e("/etc/empty").kind, e("/etc/empty").mode), (Kind::File(vec![]), 0o400));
    assert_eq!(e("/etc/passwd").mtime, 1_700_000_000);
    // Directories a layer needs but does not list: 0755 root.
    assert_eq!((e("/usr").mode, e("/usr").uid, e("/usr").mtime), (0o755, 0, 0));
    assert!(r.warnings.iter().any(|w| w.contains("device node dev/null")), "{:?}", r.warnings);
    assert_eq!(r.nodes, fs.len() - 1);
}

/// A whiteout hides only lower layers; a later layer can bring the name back; a directory can
/// replace a file and a file a directory.
#[test]
fn whiteouts_across_three_layers() {
    let t = tempfile::tempdir().unwrap();
    let l0 = tar(&[Ent::File("a", b"a0", 0o644, 0, 0), Ent::File("b", b"b0", 0o644, 0, 0), Ent::File("f", b"file", 0o644, 0, 0), Ent::Dir("d/", 0o755, 0, 0), Ent::File("d/x", b"x", 0o644, 0, 0)]);
    // Same layer: a whiteout and a re-creation of the name; the re-creation stays.
    let l1 = tar(&[
        Ent::File("a", b"a1", 0o644, 0, 0),
        Ent::Raw(b".wh.a".to_vec(), EntryType::Regular, ""),
        Ent::File("b", b"b1", 0o644, 0, 0),
        Ent::Raw(b".wh.b".to_vec(), EntryType::Regular, ""),
        Ent::Dir("f/", 0o711, 0, 0),
        Ent::File("d", b"now a file", 0o644, 0, 0),
    ]);
    let l2 = tar(&[Ent::Raw(b".wh.a".to_vec(), EntryType::Regular, ""), Ent::File("f/inside", b"i", 0o644, 0, 0)]);
    let layers = [l0, l1, l2];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    pack(&t.path().join("in"), &t.path().join("out")).unwrap();
    let fs = read_squashfs(&t.path().join("out/rootfs.squashfs"));
    assert_eq!(fs.keys().cloned().collect::<Vec<_>>(), ["/", "/b", "/d", "/f", "/f/inside"]);
    assert_eq!(fs["/b"].kind, Kind::File(b"b1".to_vec()), "a whiteout never hides its own layer's entry");
    assert_eq!(fs["/d"].kind, Kind::File(b"now a file".to_vec()));
    assert_eq!((fs["/f"].kind.clone(), fs["/f"].mode), (Kind::Dir, 0o711));
}

#[test]
fn run_config_and_digest() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let l = oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    let r = pack(&t.path().join("in"), &t.path().join("out")).unwrap();
    let out = t.path().join("out");
    assert_eq!(listing(&out), ["config.json", "image.json", "rootfs.squashfs"]);
    let rc = RunConfig::parse(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(rc.args(), ["/bin/sh", "-c", "echo hello"]);
    assert_eq!(rc.env, ["PATH=/usr/bin:/bin", "GREETING=hi"]);
    assert_eq!((rc.working_dir.as_str(), rc.user.as_str(), rc.stop_signal.as_str()), ("/srv", "1000:1000", "SIGINT"));
    assert_eq!(rc.exposed_ports, ["53/udp", "8080/tcp"]);
    let manifest = std::fs::read(out.join("image.json")).unwrap();
    assert_eq!(r.digest, sha(&manifest), "the image digest is the sha256 of image.json");
    assert_eq!(r.manifest.source.manifest.as_deref(), Some(l.manifest_digest.as_str()));
    assert_eq!(r.manifest.rootfs.digest, sha(&std::fs::read(out.join("rootfs.squashfs")).unwrap()));
    assert_eq!(image::verify(&out, Some(&r.digest)).unwrap().0, r.digest);
    // A changed rootfs no longer verifies.
    let mut fsbytes = std::fs::read(out.join("rootfs.squashfs")).unwrap();
    let n = fsbytes.len();
    fsbytes[n / 2] ^= 1;
    std::fs::write(out.join("rootfs.squashfs"), fsbytes).unwrap();
    assert!(matches!(image::verify(&out, Some(&r.digest)), Err(PackError::DigestMismatch { .. })));
}

/// `image.json` lists the sha256 of every piece of `config.json ‖ rootfs.squashfs` (256 KiB
/// here), the same list the node's store computes and checks; `image verify` refuses a list
/// that is not the files', naming the first piece that differs.
#[test]
fn the_piece_list_is_the_streams_and_verified() {
    let t = tempfile::tempdir().unwrap();
    // incompressible bytes, so the root filesystem spans several pieces
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..700_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let layers = [tar(&[Ent::Dir("data/", 0o755, 0, 0), Ent::File("data/noise", Box::leak(noise.into_boxed_slice()), 0o644, 0, 0)])];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    let r = pack(&t.path().join("in"), &t.path().join("out")).unwrap();
    let out = t.path().join("out");
    let (manifest, config, rootfs) = (std::fs::read(out.join("image.json")).unwrap(), std::fs::read(out.join("config.json")).unwrap(), std::fs::read(out.join("rootfs.squashfs")).unwrap());
    let stream = [config.as_slice(), rootfs.as_slice()].concat();
    let size = catenary_workload::store::STREAM_CHUNK;
    let want: Vec<catenary_workload::Digest> = stream.chunks(size).map(catenary_workload::Digest::of).collect();
    assert!(want.len() >= 3, "{} pieces", want.len());
    // what the node reads from it, and what its store checks on arrival
    assert_eq!(catenary_workload::store::manifest_pieces(&manifest), Ok(Some(catenary_workload::store::Pieces { size: size as u64, digests: want })));
    assert!(catenary_workload::store::verify(&manifest, &rootfs, &config, Some(catenary_workload::Digest::of(&manifest))).is_ok());
    let listed = r.manifest.pieces.clone().unwrap();
    assert_eq!(format!("{{\"size\":{},\"sha256\":\"{}\"}}", listed.size, listed.sha256), catenary_workload::store::piece_list_json(&config, &rootfs));
    assert_eq!(image::verify(&out, Some(&r.digest)).unwrap().0, r.digest);
    let text = String::from_utf8(manifest).unwrap();
    let at = text.find("\"sha256\":\"").unwrap() + 10;
    let expect_named = |edited: String, named: &str| {
        std::fs::write(out.join("image.json"), edited).unwrap();
        match image::verify(&out, None) {
            Err(PackError::DigestMismatch { what, .. }) => assert!(what.starts_with(named), "{what}"),
            other => panic!("{other:?}"),
        }
    };
    // one digit of piece 1's digest: piece 1 named
    let digit = if &text[at + 67..at + 68] == "0" { "1" } else { "0" };
    expect_named([&text[..at + 67], digit, &text[at + 68..]].concat(), "piece 1 of the stream");
    // two digits too many at the end: the piece past the last named
    let end = text.rfind("\"}").unwrap();
    expect_named([&text[..end], "ab", &text[end..]].concat(), &format!("piece {} of the stream", listed.sha256.len() / 64));
}

/// A real-time StopSignal (systemd images use SIGRTMIN+3) is kept; a name that is no signal is
/// refused with nothing written.
#[test]
fn stop_signals() {
    for (given, number) in [("SIGRTMIN+3", 37), ("RTMAX", 64), ("SIGUSR1", 10), ("9", 9)] {
        let t = tempfile::tempdir().unwrap();
        let layers = [base_layer()];
        let mut c = config(&layers, "amd64");
        c["config"]["StopSignal"] = given.into();
        oci_layout(&t.path().join("in"), &layers, &c);
        pack(&t.path().join("in"), &t.path().join("out")).unwrap();
        let rc = RunConfig::parse(&std::fs::read(t.path().join("out/config.json")).unwrap()).unwrap();
        assert_eq!(rc.stop_signal, given);
        assert_eq!(catenary_guest_proto::signal::parse(&rc.stop_signal), Some(number), "{given}");
    }
    for bad in ["SIGFOO", "SIGRTMIN+31", "65", "0"] {
        let t = tempfile::tempdir().unwrap();
        let layers = [base_layer()];
        let mut c = config(&layers, "amd64");
        c["config"]["StopSignal"] = bad.into();
        oci_layout(&t.path().join("in"), &layers, &c);
        let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
        assert!(e.to_string().contains("StopSignal"), "{bad}: {e}");
        assert!(!t.path().join("out").exists(), "{bad}: output written");
    }
}

#[test]
fn same_input_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer(), upper_layer()];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    let a = pack(&t.path().join("in"), &t.path().join("a")).unwrap();
    let b = pack(&t.path().join("in"), &t.path().join("b")).unwrap();
    assert_eq!(a.digest, b.digest);
    for f in ["rootfs.squashfs", "config.json", "image.json"] {
        assert_eq!(std::fs::read(t.path().join("a").join(f)).unwrap(), std::fs::read(t.path().join("b").join(f)).unwrap(), "{f}");
    }
    // The same layers as a docker-save tarball (uncompressed) give the same filesystem bytes.
    docker_save(&t.path().join("img.tar"), &layers, &config(&layers, "amd64"));
    let c = pack(&t.path().join("img.tar"), &t.path().join("c")).unwrap();
    assert_eq!(c.manifest.rootfs.digest, a.manifest.rootfs.digest);
    assert_eq!(c.manifest.source.manifest, None);
}

#[test]
fn docker_save_tarball() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer(), upper_layer()];
    docker_save(&t.path().join("img.tar"), &layers, &config(&layers, "amd64"));
    let opts = PackOptions { reference: Some("test/img:v1".into()), ..Default::default() };
    image::pack(&t.path().join("img.tar"), &t.path().join("out"), &opts).unwrap();
    let fs = read_squashfs(&t.path().join("out/rootfs.squashfs"));
    assert!(fs.contains_key("/data/new") && !fs.contains_key("/etc/gone"));
    let opts = PackOptions { reference: Some("nope".into()), ..Default::default() };
    assert!(matches!(image::pack(&t.path().join("img.tar"), &t.path().join("o2"), &opts), Err(PackError::NoSuchImage(_))));
}

#[test]
fn output_exists_needs_force() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    std::fs::create_dir(t.path().join("out")).unwrap();
    std::fs::write(t.path().join("out/stale"), b"x").unwrap();
    assert!(matches!(pack(&t.path().join("in"), &t.path().join("out")), Err(PackError::OutputExists(_))));
    let opts = PackOptions { force: true, ..Default::default() };
    image::pack(&t.path().join("in"), &t.path().join("out"), &opts).unwrap();
    assert_eq!(listing(&t.path().join("out")), ["config.json", "image.json", "rootfs.squashfs"]);
    assert_eq!(listing(t.path()), ["in", "out"]);
}

// ---- hostile inputs: each fails with its own error, and nothing is left beside the input ----

/// Pack `layers` (with `limits`) and return the error; check that the work directory holds only
/// the input afterwards, so nothing was written at the output or outside it.
fn refuse(layers: &[Vec<u8>], limits: Limits) -> PackError {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("w");
    std::fs::create_dir(&work).unwrap();
    oci_layout(&t.path().join("in"), layers, &config(layers, "amd64"));
    let opts = PackOptions { limits, ..Default::default() };
    let e = image::pack(&t.path().join("in"), &work.join("out"), &opts).expect_err("must be refused");
    assert_eq!(listing(&work), Vec::<String>::new(), "nothing left after {e}");
    assert_eq!(listing(t.path()), ["in", "w"], "nothing written outside after {e}");
    e
}

fn bad_entry(e: PackError, needle: &str) {
    match &e {
        PackError::BadEntry { why, .. } if why.contains(needle) => {}
        _ => panic!("expected a bad entry ({needle}), got: {e}"),
    }
}

#[test]
fn hostile_dotdot() {
    let l = tar(&[Ent::Raw(b"../escape".to_vec(), EntryType::Regular, "")]);
    bad_entry(refuse(&[l], Limits::default()), "'..'");
    let l = tar(&[Ent::Dir("a/", 0o755, 0, 0), Ent::Raw(b"a/../../escape".to_vec(), EntryType::Regular, "")]);
    bad_entry(refuse(&[l], Limits::default()), "'..'");
}

#[test]
fn hostile_absolute_path() {
    let l = tar(&[Ent::Raw(b"/etc/escape".to_vec(), EntryType::Regular, "")]);
    bad_entry(refuse(&[l], Limits::default()), "absolute path");
}

#[test]
fn hostile_symlinked_parent_same_layer() {
    let l = tar(&[Ent::Symlink("evil", "/"), Ent::Raw(b"evil/etc/x".to_vec(), EntryType::Regular, "")]);
    bad_entry(refuse(&[l], Limits::default()), "under a symlink");
}

#[test]
fn hostile_symlinked_parent_lower_layer() {
    let l0 = tar(&[Ent::Symlink("evil", "../../..")]);
    let l1 = tar(&[Ent::Raw(b"evil/x".to_vec(), EntryType::Regular, "")]);
    bad_entry(refuse(&[l0, l1], Limits::default()), "under a symlink");
}

#[test]
fn hostile_hardlink_outside() {
    let l = tar(&[Ent::Raw(b"pw".to_vec(), EntryType::Link, "../../etc/shadow")]);
    bad_entry(refuse(&[l], Limits::default()), "'..'");
    let l = tar(&[Ent::Raw(b"pw".to_vec(), EntryType::Link, "/etc/shadow")]);
    bad_entry(refuse(&[l], Limits::default()), "absolute");
    let l = tar(&[Ent::Symlink("s", "/etc"), Ent::Raw(b"pw".to_vec(), EntryType::Link, "s/shadow")]);
    bad_entry(refuse(&[l], Limits::default()), "missing file");
}

#[test]
fn hostile_tar_bomb_entries() {
    let many: Vec<Ent> = (0..200).map(|_| Ent::Dir("d/", 0o755, 0, 0)).collect();
    let e = refuse(&[tar(&many)], Limits { max_entries: 100, ..Limits::default() });
    assert!(matches!(&e, PackError::Limit(m) if m.contains("tar entries")), "{e}");
}

#[test]
fn hostile_tar_bomb_size() {
    // 64 MiB of zeros: a tiny gzip blob, refused at the 16 MiB content cap.
    let l = tar(&[Ent::Zeros("big", 64 << 20)]);
    let e = refuse(&[l], Limits { max_total_bytes: 16 << 20, ..Limits::default() });
    assert!(matches!(&e, PackError::Limit(m) if m.contains("bytes of file content")), "{e}");
    // Many small files that add up.
    let l = tar(&[Ent::Zeros("a", 10 << 20), Ent::Zeros("b", 10 << 20)]);
    let e = refuse(&[l], Limits { max_total_bytes: 16 << 20, ..Limits::default() });
    assert!(matches!(&e, PackError::Limit(_)), "{e}");
}

#[test]
fn hostile_long_paths() {
    let deep = "d/".repeat(300);
    let l = tar(&[Ent::Raw(deep.into_bytes()[..99].to_vec(), EntryType::Directory, "")]);
    bad_entry(refuse(&[l], Limits { max_depth: 10, ..Limits::default() }), "directory levels");
    let l = tar(&[Ent::Raw(vec![b'a'; 90], EntryType::Regular, "")]);
    bad_entry(refuse(&[l], Limits { max_path_len: 64, ..Limits::default() }), "path of 90 bytes");
    // A GNU long-name record larger than the metadata bound is refused before it is read.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("f").unwrap();
    h.set_size(1);
    h.set_cksum();
    b.append_data(&mut h, "x".repeat(70_000), &b"1"[..]).unwrap();
    let l = b.into_inner().unwrap();
    let e = refuse(&[l], Limits { max_meta_bytes: 65_536, ..Limits::default() });
    assert!(matches!(&e, PackError::Limit(m) if m.contains("extension record")), "{e}");
}

#[test]
fn corrupted_blob() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let l = oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    let p = t.path().join("in/blobs/sha256").join(&l.layer_digests[0][7..]);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n / 2] ^= 0x55;
    std::fs::write(&p, b).unwrap();
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::DigestMismatch { what, .. } if what == "layer 0"), "{e}");
    assert_eq!(listing(t.path()), ["in"]);
}

#[test]
fn corrupted_uncompressed_blob() {
    // An uncompressed layer whose file bytes changed: the tar still parses; the digest catches it.
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let l = oci_layout_with(&t.path().join("in"), &layers, &config(&layers, "amd64"), "application/vnd.oci.image.layer.v1.tar");
    let p = t.path().join("in/blobs/sha256").join(&l.layer_digests[0][7..]);
    let b = std::fs::read(&p).unwrap();
    let i = b.windows(7).position(|w| w == b"deleted").unwrap();
    let mut b2 = b.clone();
    b2[i] = b'O';
    std::fs::write(&p, b2).unwrap();
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::DigestMismatch { what, .. } if what == "layer 0"), "{e}");
}

#[test]
fn wrong_digest_in_manifest() {
    // The config names a blob whose bytes hash to something else (a blob swapped under its name).
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let l = oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    std::fs::write(t.path().join("in/blobs/sha256").join(&l.config_digest[7..]), b"{}").unwrap();
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::DigestMismatch { .. }), "{e}");
    // A diff_id that does not match the layer's uncompressed bytes.
    let t = tempfile::tempdir().unwrap();
    let mut c = config(&layers, "amd64");
    c["rootfs"]["diff_ids"][0] = serde_json::json!(sha(b"other"));
    oci_layout(&t.path().join("in"), &layers, &c);
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::DigestMismatch { what, .. } if what.contains("diff_id")), "{e}");
}

#[test]
fn missing_blob() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let l = oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    std::fs::remove_file(t.path().join("in/blobs/sha256").join(&l.layer_digests[0][7..])).unwrap();
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::MissingBlob(d) if *d == l.layer_digests[0]), "{e}");
    assert_eq!(listing(t.path()), ["in"]);
}

#[test]
fn unsupported_media_type() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    oci_layout_with(&t.path().join("in"), &layers, &config(&layers, "amd64"), "application/vnd.example.layer.v1.tar+lzma");
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::UnsupportedMediaType { media_type, .. } if media_type.contains("lzma")), "{e}");
}

#[test]
fn non_amd64_image() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "arm64"));
    let e = pack(&t.path().join("in"), &t.path().join("out")).unwrap_err();
    assert!(matches!(&e, PackError::WrongPlatform { arch, .. } if arch == "arm64"), "{e}");
    assert!(e.to_string().contains("linux/amd64"));
}

#[test]
fn cli_pack_prints_digest() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    oci_layout(&t.path().join("in"), &layers, &config(&layers, "amd64"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_catenary"))
        .args(["image", "pack"])
        .arg(t.path().join("in"))
        .arg("-o")
        .arg(t.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let digest = String::from_utf8(out.stdout).unwrap();
    assert_eq!(digest.trim(), sha(&std::fs::read(t.path().join("out/image.json")).unwrap()));
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_catenary")).args(["image", "verify"]).arg(t.path().join("out")).output().unwrap();
    assert_eq!(String::from_utf8(v.stdout).unwrap(), digest);
    // An error is one clear line and a failure status.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_catenary"))
        .args(["image", "pack"])
        .arg(t.path().join("nothing"))
        .arg("-o")
        .arg(t.path().join("o2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("catenary image pack: "));
}

#[test]
fn zstd_and_plain_layers() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let c = config(&layers, "amd64");
    let gz = oci_layout(&t.path().join("gz"), &layers, &c);
    let a = pack(&gz.dir, &t.path().join("a")).unwrap();
    // The same layer stored zstd-compressed.
    let z = t.path().join("zs");
    let l = oci_layout_with(&z, &layers, &c, "application/vnd.oci.image.layer.v1.tar");
    let zbytes = zstd::encode_all(&layers[0][..], 3).unwrap();
    let zd = write_blob(&z, &zbytes);
    let mpath = z.join("blobs/sha256").join(&l.manifest_digest[7..]);
    let m = String::from_utf8(std::fs::read(&mpath).unwrap()).unwrap();
    let m = m
        .replace(&l.layer_digests[0], &zd)
        .replace("layer.v1.tar\"", "layer.v1.tar+zstd\"")
        .replace(&format!("\"size\":{}}}]", layers[0].len()), &format!("\"size\":{}}}]", zbytes.len()));
    let md = write_blob(&z, m.as_bytes());
    let idx = std::fs::read_to_string(z.join("index.json")).unwrap();
    let idx = idx.replace(&l.manifest_digest, &md).replace(&format!("\"size\":{}", std::fs::metadata(&mpath).unwrap().len()), &format!("\"size\":{}", m.len()));
    std::fs::write(z.join("index.json"), idx).unwrap();
    let b = pack(&z, &t.path().join("b")).unwrap();
    assert_eq!(a.manifest.rootfs.digest, b.manifest.rootfs.digest);
    // An OCI layout inside a tarball (what Docker 25+ `docker save` writes).
    let mut tb = tar::Builder::new(std::fs::File::create(t.path().join("oci.tar")).unwrap());
    tb.append_dir_all(".", &gz.dir).unwrap();
    tb.finish().unwrap();
    drop(tb);
    let c2 = pack(&t.path().join("oci.tar"), &t.path().join("c")).unwrap();
    assert_eq!(c2.digest, a.digest, "same image, same digest");
}

#[test]
fn hostile_docker_manifest_paths() {
    // An extracted docker-save directory whose manifest.json names a (valid) config outside it.
    let t = tempfile::tempdir().unwrap();
    let c = serde_json::to_vec(&config(&[], "amd64")).unwrap();
    let name = format!("{}.json", &sha(&c)[7..]);
    std::fs::create_dir(t.path().join("outside")).unwrap();
    std::fs::write(t.path().join("outside").join(&name), &c).unwrap();
    let d = t.path().join("in");
    std::fs::create_dir(&d).unwrap();
    for cfg in [format!("../outside/{name}"), t.path().join("outside").join(&name).display().to_string()] {
        let m = serde_json::json!([{"Config": cfg, "RepoTags": null, "Layers": []}]);
        std::fs::write(d.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = pack(&d, &t.path().join("out")).unwrap_err();
        assert!(matches!(&e, PackError::Malformed { why, .. } if why.contains("outside the input")), "{e}");
    }
}

#[test]
fn multi_platform_index_picks_amd64() {
    let t = tempfile::tempdir().unwrap();
    let layers = [base_layer()];
    let dir = t.path().join("in");
    let l = oci_layout(&dir, &layers, &config(&layers, "amd64"));
    let msize = std::fs::metadata(dir.join("blobs/sha256").join(&l.manifest_digest[7..])).unwrap().len();
    let arm = l.layer_digests[0].clone(); // any blob: the arm64 entry must never be read
    let nested = |with_amd64: bool| {
        let mut ms = vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": 1,
            "platform": {"architecture": "arm64", "os": "linux"}
        })];
        if with_amd64 {
            ms.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": l.manifest_digest, "size": msize,
                "platform": {"architecture": "amd64", "os": "linux"}
            }));
        }
        let idx = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": ms})).unwrap();
        let d = write_blob(&dir, &idx);
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    };
    nested(true);
    let r = pack(&dir, &t.path().join("a")).unwrap();
    assert_eq!(r.manifest.source.manifest.as_deref(), Some(l.manifest_digest.as_str()));
    nested(false);
    let e = pack(&dir, &t.path().join("b")).unwrap_err();
    assert!(matches!(&e, PackError::WrongPlatform { arch, .. } if arch.contains("linux/arm64")), "{e}");
}
