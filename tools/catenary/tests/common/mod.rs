//! Synthetic OCI images for the pack tests: layer tars built entry by entry (hostile names
//! written straight into the header, which `tar::Builder` would refuse), an OCI layout or a
//! legacy `docker save` tarball around them, and a reader for the produced squashfs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub enum Ent {
    Dir(&'static str, u32, u32, u32),
    File(&'static str, &'static [u8], u32, u32, u32),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str),
    Fifo(&'static str, u32),
    /// A regular file of `len` zero bytes.
    Zeros(&'static str, u64),
    /// Any name bytes, any type, no content: for hostile headers.
    Raw(Vec<u8>, tar::EntryType, &'static str),
}

fn header(name: &[u8], et: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().unwrap();
        assert!(name.len() <= g.name.len(), "test names fit the header");
        g.name[..name.len()].copy_from_slice(name);
    }
    h.set_entry_type(et);
    h.set_mode(mode);
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

fn link(h: &mut tar::Header, target: &str) {
    let g = h.as_gnu_mut().unwrap();
    g.linkname[..target.len()].copy_from_slice(target.as_bytes());
}

pub fn tar(ents: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in ents {
        match e {
            Ent::Dir(p, m, u, g) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Directory, *m, *u, *g, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Ent::File(p, data, m, u, g) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Regular, *m, *u, *g, data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            Ent::Zeros(p, len) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Regular, 0o644, 0, 0, *len);
                h.set_cksum();
                b.append(&h, std::io::repeat(0).take(*len)).unwrap();
            }
            Ent::Symlink(p, t) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Symlink, 0o777, 0, 0, 0);
                link(&mut h, t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Ent::Hardlink(p, t) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Link, 0o755, 0, 0, 0);
                link(&mut h, t);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Ent::Char(p) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Char, 0o666, 0, 0, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Ent::Fifo(p, m) => {
                let mut h = header(p.as_bytes(), tar::EntryType::Fifo, *m, 0, 0, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            Ent::Raw(name, et, target) => {
                let mut h = header(name, *et, 0o644, 0, 0, 0);
                if !target.is_empty() {
                    link(&mut h, target);
                }
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// An image config with the given uncompressed layers' diff_ids.
pub fn config(layers: &[Vec<u8>], arch: &str) -> Value {
    json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hello"],
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            "StopSignal": "SIGINT"
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha(l)).collect::<Vec<_>>()},
        "history": []
    })
}

pub struct Layout {
    pub dir: PathBuf,
    pub layer_digests: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
}

pub fn write_blob(dir: &Path, data: &[u8]) -> String {
    let d = sha(data);
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    d
}

/// An OCI layout at `dir` with gzip-compressed `layers` (uncompressed tars), tagged `latest`.
pub fn oci_layout(dir: &Path, layers: &[Vec<u8>], config: &Value) -> Layout {
    oci_layout_with(dir, layers, config, "application/vnd.oci.image.layer.v1.tar+gzip")
}

pub fn oci_layout_with(dir: &Path, layers: &[Vec<u8>], config: &Value, layer_type: &str) -> Layout {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    for l in layers {
        let z = if layer_type.ends_with("gzip") { gzip(l) } else { l.clone() };
        let d = write_blob(dir, &z);
        descs.push(json!({"mediaType": layer_type, "digest": d, "size": z.len()}));
        layer_digests.push(d);
    }
    let cbytes = serde_json::to_vec(config).unwrap();
    let config_digest = write_blob(dir, &cbytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": cbytes.len()},
        "layers": descs
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = write_blob(dir, &mbytes);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": mbytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout { dir: dir.to_path_buf(), layer_digests, manifest_digest, config_digest }
}

/// A legacy `docker save` tarball (manifest.json, <hex>.json, <id>/layer.tar).
pub fn docker_save(path: &Path, layers: &[Vec<u8>], config: &Value) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let cbytes = serde_json::to_vec(config).unwrap();
    let cname = format!("{}.json", &sha(&cbytes)[7..]);
    add(&cname, &cbytes);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("{:064x}/layer.tar", i + 1);
        add(&n, l);
        names.push(n);
    }
    let m = json!([{"Config": cname, "RepoTags": ["test/img:v1"], "Layers": names}]);
    add("manifest.json", &serde_json::to_vec(&m).unwrap());
    b.into_inner().unwrap().flush().unwrap();
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Fifo,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

/// Every node of a squashfs image by path ("/" for the root), read with backhand's reader.
pub fn read_squashfs(path: &Path) -> BTreeMap<String, Entry> {
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let fs = backhand::FilesystemReader::from_reader(f).unwrap();
    let mut out = BTreeMap::new();
    for n in fs.files() {
        let kind = match &n.inner {
            backhand::InnerNode::Dir(_) => Kind::Dir,
            backhand::InnerNode::File(f) => {
                let mut v = Vec::new();
                fs.file(f).reader().read_to_end(&mut v).unwrap();
                Kind::File(v)
            }
            backhand::InnerNode::Symlink(s) => Kind::Symlink(s.link.to_string_lossy().into_owned()),
            backhand::InnerNode::NamedPipe => Kind::Fifo,
            _ => Kind::Other,
        };
        let h = &n.header;
        out.insert(n.fullpath.to_string_lossy().into_owned(), Entry { kind, mode: h.permissions, uid: h.uid, gid: h.gid, mtime: h.mtime });
    }
    out
}

/// Names in `dir` (to check that a failed pack left nothing behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}
