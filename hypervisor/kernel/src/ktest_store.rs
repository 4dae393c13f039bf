//! In-kernel tests of the image store's uploads (`vmstore`): upload ids stay unique among
//! the live uploads across the 16-bit wrap, every begin reserves (and every abort frees)
//! exactly its own pages, and `info` lists the uploads under way with their pages.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_workload::vmctl::ImageBegin;
use catenary_workload::Digest;

use crate::init::Node;
use crate::vmstore::{self, StoreErr};

/// Not a task id: the store checks only that the owner matches.
const OWNER: u64 = 0x5707_e7e5;

/// A manifest of `config ‖ rootfs` = 4096 bytes (one store page); `n` makes the image differ.
fn begin_req(n: u8) -> ImageBegin {
    let hex = |b: u8| format!("{:02x}", b).repeat(32);
    let m = format!(
        concat!(
            r#"{{"schemaVersion":1,"mediaType":"application/vnd.catenary.image.v1+json","#,
            r#""rootfs":{{"mediaType":"application/vnd.catenary.rootfs.squashfs","digest":"sha256:{}","size":3996,"file":"rootfs.squashfs"}},"#,
            r#""config":{{"mediaType":"application/vnd.catenary.runconfig.v1+json","digest":"sha256:{}","size":100,"file":"config.json"}},"#,
            r#""source":{{"manifest":null,"config":"sha256:{}"}}}}"#
        ),
        hex(n),
        hex(0xc0),
        hex(0xc1)
    );
    let manifest: Vec<u8> = m.into_bytes();
    ImageBegin { image: Digest::of(&manifest), manifest }
}

fn begin(n: u8) -> Result<u32, String> {
    match vmstore::begin(OWNER, begin_req(n), catenary_arch::time::now_ns()) {
        Ok((id, 4096)) if id != 0 => Ok(id),
        r => Err(format!("begin of image {n}: {r:?}")),
    }
}

fn abort(id: u32) -> Result<(), String> {
    vmstore::abort(OWNER, id).map_err(|e: StoreErr| format!("abort of upload {id}: {e:?}"))
}

pub fn store_upload_ids_unique(_: &Node) -> Result<(), String> {
    let base = vmstore::info();
    let r = check(base.used_pages);
    // leave the store as it was, whatever failed
    for n in 0..8 {
        if let Ok((id, _)) = vmstore::begin(OWNER, begin_req(n), catenary_arch::time::now_ns()) {
            let _ = vmstore::abort(OWNER, id);
        }
    }
    let end = vmstore::info();
    r?;
    if end.used_pages != base.used_pages || end.uploads != base.uploads {
        return Err(format!("the store holds {} pages in {} uploads after the test (before: {} in {})", end.used_pages, end.uploads, base.used_pages, base.uploads));
    }
    Ok(())
}

fn check(base_pages: u64) -> Result<(), String> {
    let pages = |want: u64, when: &str| {
        let got = vmstore::info().used_pages - base_pages;
        if got == want { Ok(()) } else { Err(format!("{when}: the uploads hold {got} pages, expected {want}")) }
    };
    // A takes the last id before the wrap and stays live.
    vmstore::set_last_upload_id(0xfffe);
    let a = begin(0)?;
    if a != 0xffff {
        return Err(format!("first upload after 0xfffe got id {a:#x}"));
    }
    // Every later upload gets its own id (the old counter stuck at 0xffff: B was "resumed" as A).
    let mut seen = Vec::new();
    for n in 1..5u8 {
        let b = begin(n)?;
        if b == a || seen.contains(&b) {
            return Err(format!("upload of image {n} got id {b:#x}, already taken (A {a:#x}, earlier {seen:x?})"));
        }
        pages(2, "A and one more upload")?;
        abort(b)?;
        pages(1, "A alone after an abort")?;
        seen.push(b);
    }
    // The counter reaching a live id skips it.
    vmstore::set_last_upload_id(a - 1);
    let c = begin(5)?;
    if c == a {
        return Err(format!("a new upload got the live id {a:#x}"));
    }
    // A resumed push of A's image still finds A.
    let again = begin(0)?;
    if again != a {
        return Err(format!("A's image begun again got {again:#x}, not A's {a:#x}"));
    }
    pages(2, "A and C")?;
    // The store reports both uploads with their pages (a node lists them as its store's to
    // the cluster's scheduler, whose room no longer holds them), and neither once aborted.
    let (ia, ic) = (begin_req(0).image, begin_req(5).image);
    let listed = |d: Digest| vmstore::info().uploading.iter().find(|u| u.0 == d).map(|u| u.1);
    if (listed(ia), listed(ic)) != (Some(1), Some(1)) {
        return Err(format!("uploads under way reported as {:?}, expected A and C with 1 page each", vmstore::info().uploading));
    }
    abort(c)?;
    abort(a)?;
    pages(0, "after aborting both")?;
    if listed(ia).is_some() || listed(ic).is_some() {
        return Err(format!("aborted uploads still reported: {:?}", vmstore::info().uploading));
    }
    log::info!(target: "ktest", "upload ids: A {a:#x}, then {seen:x?}, then {c:#x} (live A skipped)");
    Ok(())
}
