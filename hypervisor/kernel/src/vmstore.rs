//! The node's image store (kernel side): Catenary images, each verified on arrival
//! (`catenary_workload::store::verify`: sha256 of `image.json`, then the root filesystem's and
//! run configuration's digests and sizes). Images arrive two ways:
//!
//! - as boot modules (the guest bundle's `image/`): the bytes stay in the module's frames,
//!   which the kernel never frees or writes;
//! - pushed at run time by the workload service (`SYS_VM` `OP_IMAGE_*`, docs/images.md
//!   "Pushing an image"): an upload reserves store frames for the stream `config.json ‖
//!   rootfs.squashfs` from the store's quota, takes writes at any offset, and is verified as a
//!   whole on commit (a mismatch frees everything). The frames are a [`KernelRun`] the store
//!   owns; an upload untouched for the idle time is dropped.
//!
//! Every microVM of an image gets a read-only virtio-blk disk over the image's bytes
//! (`VirtioBlk::shared`, an `Arc` of them), so N microVMs of one image hold one copy.
//! Removing an image is refused while any VM (or a VM being created) holds it; otherwise its
//! frames go back to the allocator at once. Also keeps the guest kernel and initramfs the
//! workloads boot.

use alloc::sync::Arc;
use alloc::vec::Vec;
use catenary_arch::memory::KernelRun;
use catenary_vmm::virtio::blk::SharedBytes;
use catenary_workload::store::{stream_sizes, verify, ImageIndex, ImageInfo, MANIFEST_MAX};
use catenary_workload::vmctl::{AutoStart, ImageBegin, StoreInfo, IMAGE_MAX, UPLOADS_MAX, UPLOAD_IDLE_MS};
use catenary_workload::Digest;
use log::{info, warn};

/// An image's bytes: a boot module's, or store frames.
pub enum ImageBytes {
    Boot { rootfs: &'static [u8], config: &'static [u8] },
    Pushed { run: KernelRun, config_len: usize, rootfs_len: usize },
}

impl ImageBytes {
    pub fn rootfs(&self) -> &[u8] {
        match self {
            ImageBytes::Boot { rootfs, .. } => rootfs,
            ImageBytes::Pushed { run, config_len, rootfs_len } => run.bytes().get(*config_len..config_len + rootfs_len).unwrap_or(&[]),
        }
    }
    pub fn config(&self) -> &[u8] {
        match self {
            ImageBytes::Boot { config, .. } => config,
            ImageBytes::Pushed { run, config_len, .. } => run.bytes().get(..*config_len).unwrap_or(&[]),
        }
    }
    fn pages(&self) -> u64 {
        match self {
            ImageBytes::Boot { .. } => 0,
            ImageBytes::Pushed { run, .. } => run.pages(),
        }
    }
}

/// The root filesystem of an image, as a VM's shared disk (holds the image alive).
struct Rootfs(Arc<ImageBytes>);

impl AsRef<[u8]> for Rootfs {
    fn as_ref(&self) -> &[u8] {
        self.0.rootfs()
    }
}

/// A VM's disk over the image's root filesystem (one more holder of its bytes).
pub fn disk(b: &Arc<ImageBytes>) -> SharedBytes {
    SharedBytes(Arc::new(Rootfs(b.clone())))
}

pub struct StoredImage {
    pub info: ImageInfo,
    pub bytes: Arc<ImageBytes>,
    /// Its `image.json` (another node that fetches the image begins its upload with it).
    pub manifest: Vec<u8>,
}

/// What a workload's microVM boots: the guest kernel (PVH vmlinux or bzImage) and initramfs.
#[derive(Clone, Copy)]
pub struct GuestKernel {
    pub vmlinux: Option<&'static [u8]>,
    pub bzimage: Option<&'static [u8]>,
    pub initramfs: &'static [u8],
}

struct Upload {
    id: u32,
    owner: u64,
    image: Digest,
    manifest: Vec<u8>,
    config_len: usize,
    rootfs_len: usize,
    pages: u64,
    /// None while a write or the commit works on it outside the lock.
    run: Option<KernelRun>,
    touched_ns: u64,
}

struct Store {
    images: Vec<StoredImage>,
    index: ImageIndex,
    guest: Option<GuestKernel>,
    autostart: Option<AutoStart>,
    uploads: Vec<Upload>,
    next_upload: u32,
    quota_pages: u64,
    /// Frames of pushed images and uploads (reserved before they are allocated).
    used_pages: u64,
    idle_ns: u64,
}

static STORE: spin::Mutex<Option<Store>> = spin::Mutex::new(None);

fn locked<R>(f: impl FnOnce(&mut Option<Store>) -> R) -> R {
    catenary_arch::cpu::without_interrupts(|| f(&mut STORE.lock()))
}

fn with_store<R>(f: impl FnOnce(&mut Store) -> Result<R, StoreErr>) -> Result<R, StoreErr> {
    locked(|s| f(s.as_mut().ok_or(StoreErr::NoUpload)?))
}

/// Why a store operation was refused (`SYS_VM` maps each to its error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErr {
    Invalid,
    InUse,
    Quota,
    TooManyUploads,
    NoUpload,
    NoSuchImage,
    NoMemory,
    /// Another operation works on this upload right now.
    Busy,
}

/// Take in the images among the boot modules (once, at boot; hashing happens here, outside
/// every lock), and the workload the command line asks the workload service to start
/// (`workload.demo=NAME`, `workload.mem=MiB`, default 256; `workload.health=…`: its health
/// check, [`AutoStart::health_from`]). The store's quota for pushed
/// images: `store.quota_mib=` or a quarter of the free memory now.
pub fn init(modules: &[catenary_bootinfo::Module], cmdline: &str) {
    let autostart = crate::cmdline::get(cmdline, "workload.demo").map(|n| AutoStart {
        name: alloc::string::String::from(n),
        memory_mib: crate::cmdline::get(cmdline, "workload.mem").and_then(|m| m.parse().ok()).unwrap_or(256),
        net: crate::cmdline::get(cmdline, "workload.net") == Some("1"),
        health: AutoStart::health_from(crate::cmdline::get(cmdline, "workload.health"), crate::cmdline::get(cmdline, "workload.health_interval"), crate::cmdline::get(cmdline, "workload.health_retries")),
    });
    let free = catenary_arch::memory::stats().free;
    let quota_pages = crate::cmdline::get(cmdline, "store.quota_mib").and_then(|m| m.parse::<u64>().ok()).map(|m| m << 8).unwrap_or(free / 4).min(free);
    let idle_ns = crate::cmdline::get(cmdline, "store.upload_idle_s").and_then(|m| m.parse::<u64>().ok()).map(|s| s * 1_000_000_000).unwrap_or(UPLOAD_IDLE_MS * 1_000_000);
    let mut st = Store {
        images: Vec::new(), index: ImageIndex::new(), guest: None, autostart, uploads: Vec::new(), next_upload: 0, quota_pages, used_pages: 0, idle_ns,
    };
    if let Some(b) = crate::vm::find_bundle(modules) {
        st.guest = Some(GuestKernel { vmlinux: b.vmlinux, bzimage: b.bzimage, initramfs: b.initramfs });
        match (b.image_manifest, b.image_rootfs, b.image_config) {
            (Some(m), Some(r), Some(c)) => {
                let t0 = catenary_arch::time::now_ns();
                match verify(m, r, c, None) {
                    Ok(info) => match st.index.insert(info) {
                        Ok(()) => {
                            info!(target: "store", "image {} verified on arrival ({} us): rootfs {} bytes ({}), config {} bytes; in the store",
                                info.digest, (catenary_arch::time::now_ns() - t0) / 1000, r.len(), info.rootfs.short(), c.len());
                            st.images.push(StoredImage { info, bytes: Arc::new(ImageBytes::Boot { rootfs: r, config: c }), manifest: m.to_vec() });
                        }
                        Err(e) => warn!(target: "store", "image {}: {}", info.digest, e.message()),
                    },
                    Err(e) => warn!(target: "store", "image {} refused: {}", Digest::of(m), e.message()),
                }
            }
            (None, Some(_), Some(_)) => warn!(target: "store", "the guest bundle's image has no image/image.json: it cannot be verified and is not in the store"),
            _ => {}
        }
    }
    info!(target: "store", "quota for pushed images: {} MiB", quota_pages >> 8);
    locked(|s| *s = Some(st));
}

/// The images in the store.
pub fn list() -> Vec<ImageInfo> {
    locked(|s| s.as_ref().map(|s| s.index.list().to_vec()).unwrap_or_default())
}

/// An image's bytes (held alive by the caller while it keeps the `Arc`).
pub fn get(d: &Digest) -> Option<Arc<ImageBytes>> {
    locked(|s| s.as_ref()?.images.iter().find(|i| i.info.digest == *d).map(|i| i.bytes.clone()))
}

/// An image's `image.json` and its bytes (for `OP_IMAGE_READ`: another node fetches it).
pub fn get_with_manifest(d: &Digest) -> Option<(Vec<u8>, Arc<ImageBytes>)> {
    locked(|s| s.as_ref()?.images.iter().find(|i| i.info.digest == *d).map(|i| (i.manifest.clone(), i.bytes.clone())))
}

/// The workload the command line asks the workload service to start at boot.
pub fn autostart() -> Option<AutoStart> {
    locked(|s| s.as_ref()?.autostart.clone())
}

pub fn guest_kernel() -> Option<GuestKernel> {
    locked(|s| s.as_ref()?.guest)
}

pub fn info() -> StoreInfo {
    let free_pages = catenary_arch::memory::stats().free;
    locked(|s| match s.as_ref() {
        Some(s) => StoreInfo {
            quota_pages: s.quota_pages,
            used_pages: s.used_pages,
            uploads: s.uploads.len() as u32,
            images: s.images.len() as u32,
            free_pages,
            uploading: s.uploads.iter().map(|u| (u.image, u.pages)).collect(),
        },
        None => StoreInfo { quota_pages: 0, used_pages: 0, uploads: 0, images: 0, free_pages, uploading: Vec::new() },
    })
}

/// Drop uploads idle longer than the store's idle time (their frames go back). Called on every
/// `SYS_VM` of the workload service and by its timer.
pub fn expire(now_ns: u64) {
    let dropped: Vec<Upload> = locked(|s| {
        let Some(s) = s.as_mut() else { return Vec::new() };
        let idle = s.idle_ns;
        let (old, keep): (Vec<Upload>, Vec<Upload>) = core::mem::take(&mut s.uploads).into_iter().partition(|u| u.run.is_some() && now_ns.saturating_sub(u.touched_ns) > idle);
        s.uploads = keep;
        s.used_pages -= old.iter().map(|u| u.pages).sum::<u64>();
        old
    });
    for u in dropped {
        info!(target: "store", "upload {} of image {} abandoned (idle longer than {} s): its {} pages freed", u.id, u.image.short(), locked(|s| s.as_ref().map_or(0, |s| s.idle_ns)) / 1_000_000_000, u.pages);
    }
}

/// Start pushing image `b.image` for `owner`: `Ok(0)` when the store has it, else the upload
/// (the one in progress for the image, if any) and the stream's size.
pub fn begin(owner: u64, b: ImageBegin, now_ns: u64) -> Result<(u32, u64), StoreErr> {
    if b.manifest.len() > MANIFEST_MAX || Digest::of(&b.manifest) != b.image {
        return Err(StoreErr::Invalid);
    }
    let (config_len, rootfs_len) = stream_sizes(&b.manifest).map_err(|_| StoreErr::Invalid)?;
    let size = config_len.checked_add(rootfs_len).filter(|s| *s <= IMAGE_MAX && *s > 0).ok_or(StoreErr::Invalid)?;
    let pages = size.div_ceil(4096);
    let manifest = b.manifest;
    let id = with_store(|s| {
        if s.index.get(&b.image).is_some() {
            return Ok(0);
        }
        if let Some(u) = s.uploads.iter_mut().find(|u| u.image == b.image && u.owner == owner) {
            u.touched_ns = now_ns;
            return Ok(u.id);
        }
        if s.uploads.len() >= UPLOADS_MAX {
            return Err(StoreErr::TooManyUploads);
        }
        if s.used_pages + pages > s.quota_pages {
            return Err(StoreErr::Quota);
        }
        let id = next_free_id(s.next_upload, |id| s.uploads.iter().any(|u| u.id == id));
        s.next_upload = id;
        s.used_pages += pages;
        // In the list (without frames: busy) from here on, so no other begin can take its id.
        s.uploads.push(Upload { id, owner, image: b.image, manifest, config_len: config_len as usize, rootfs_len: rootfs_len as usize, pages, run: None, touched_ns: now_ns });
        Ok(id | NEW)
    })?;
    if id == 0 {
        return Ok((0, 0));
    }
    if id & NEW == 0 {
        return Ok((id, size)); // resumed
    }
    let id = id & !NEW;
    // allocated and zeroed outside the lock; the pages were reserved above
    let run = KernelRun::alloc(pages);
    let ok = run.is_ok();
    locked(|s| {
        let Some(s) = s.as_mut() else { return };
        let Some(i) = s.uploads.iter().position(|u| u.id == id) else { return };
        match run {
            Ok(r) => s.uploads[i].run = Some(r),
            Err(_) => {
                s.uploads.swap_remove(i);
                s.used_pages -= pages;
            }
        }
    });
    if !ok {
        return Err(StoreErr::NoMemory);
    }
    info!(target: "store", "upload {id} of image {}: {size} bytes in {pages} store pages", b.image.short());
    Ok((id, size))
}

/// Marks a new upload's id inside [`begin`] (ids are 16 bits: [`catenary_workload::vmctl::write_arg`]).
const NEW: u32 = 1 << 31;

/// The id after `last` in 1..=0xffff (wrapping) that `live` does not hold. At most
/// [`UPLOADS_MAX`] ids are live, so one of the next `UPLOADS_MAX + 1` is free.
fn next_free_id(last: u32, live: impl Fn(u32) -> bool) -> u32 {
    let mut id = last;
    for _ in 0..=UPLOADS_MAX {
        id = if id >= 0xffff { 1 } else { id + 1 };
        if !live(id) {
            break;
        }
    }
    id
}

/// Tests: the id the next new upload starts searching after.
#[cfg(feature = "ktest")]
pub fn set_last_upload_id(last: u32) {
    locked(|s| s.as_mut().map(|s| s.next_upload = last));
}

/// Take upload `id`'s frames out for work outside the lock (checked: `owner`'s, `len` bytes at
/// `offset` inside its stream).
fn take_run(owner: u64, id: u32, offset: u64, len: u64) -> Result<(KernelRun, usize), StoreErr> {
    with_store(|s| {
        let u = s.uploads.iter_mut().find(|u| u.id == id && u.owner == owner).ok_or(StoreErr::NoUpload)?;
        let size = (u.config_len + u.rootfs_len) as u64;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(StoreErr::NoUpload);
        }
        Ok((u.run.take().ok_or(StoreErr::Busy)?, size as usize))
    })
}

fn put_run(id: u32, run: KernelRun, now_ns: u64) {
    let orphan = locked(|s| {
        match s.as_mut().and_then(|s| s.uploads.iter_mut().find(|u| u.id == id)) {
            Some(u) => {
                u.run = Some(run);
                u.touched_ns = now_ns;
                None
            }
            None => Some(run),
        }
    });
    drop(orphan); // cannot happen (only the owner removes uploads, and it is here); freed if it did
}

/// Write `len` bytes at `offset` of upload `id`: `copy` fills the slice (from the caller's
/// memory) outside the store's lock.
pub fn write(owner: u64, id: u32, offset: u64, len: u64, now_ns: u64, copy: impl FnOnce(&mut [u8]) -> bool) -> Result<(), StoreErr> {
    let (mut run, _) = take_run(owner, id, offset, len)?;
    let ok = copy(&mut run.bytes_mut()[offset as usize..(offset + len) as usize]);
    put_run(id, run, now_ns);
    if ok { Ok(()) } else { Err(StoreErr::NoUpload) }
}

/// Verify upload `id` as a whole and put it in the store, or refuse it and free its frames.
pub fn commit(owner: u64, id: u32, now_ns: u64) -> Result<ImageInfo, StoreErr> {
    let (run, _) = take_run(owner, id, 0, 0)?;
    let (manifest, image, cl, rl) = locked(|s| {
        let u = s.as_ref().and_then(|s| s.uploads.iter().find(|u| u.id == id)).map(|u| (u.manifest.clone(), u.image, u.config_len, u.rootfs_len));
        u.unwrap_or((Vec::new(), Digest([0; 32]), 0, 0))
    });
    let t0 = catenary_arch::time::now_ns();
    let r = verify(&manifest, &run.bytes()[cl..cl + rl], &run.bytes()[..cl], Some(image));
    let us = (catenary_arch::time::now_ns() - t0) / 1000;
    let upload = locked(|s| {
        let s = s.as_mut()?;
        let i = s.uploads.iter().position(|u| u.id == id)?;
        Some(s.uploads.swap_remove(i))
    });
    let Some(upload) = upload else { return Err(StoreErr::NoUpload) };
    let info = match r {
        Ok(info) => info,
        Err(e) => {
            locked(|s| s.as_mut().map(|s| s.used_pages -= upload.pages));
            warn!(target: "store", "upload {id}: image {} refused on commit ({us} us): {}; its {} pages freed", image.short(), e.message(), upload.pages);
            drop(run);
            return Err(StoreErr::Invalid);
        }
    };
    let _ = now_ns;
    let bytes = Arc::new(ImageBytes::Pushed { run, config_len: cl, rootfs_len: rl });
    let pages = upload.pages;
    let refused = locked(|s| {
        let s = s.as_mut()?;
        if s.index.insert(info).is_err() {
            s.used_pages -= pages;
            return Some(bytes);
        }
        s.images.push(StoredImage { info, bytes, manifest: upload.manifest });
        None
    });
    if refused.is_some() {
        return Err(StoreErr::Quota);
    }
    info!(target: "store", "image {} pushed and verified ({us} us): rootfs {rl} bytes, config {cl} bytes; in the store ({pages} pages)", info.digest);
    Ok(info)
}

pub fn abort(owner: u64, id: u32) -> Result<(), StoreErr> {
    let u = with_store(|s| {
        let i = s.uploads.iter().position(|u| u.id == id && u.owner == owner).ok_or(StoreErr::NoUpload)?;
        if s.uploads[i].run.is_none() {
            return Err(StoreErr::Busy);
        }
        let u = s.uploads.swap_remove(i);
        s.used_pages -= u.pages;
        Ok(u)
    })?;
    info!(target: "store", "upload {id} of image {} aborted: its {} pages freed", u.image.short(), u.pages);
    Ok(())
}

/// Take image `d` out of the store, unless a VM holds it; its frames are freed here.
pub fn remove(d: &Digest) -> Result<(), StoreErr> {
    let img = with_store(|s| {
        let i = s.images.iter().position(|i| i.info.digest == *d).ok_or(StoreErr::NoSuchImage)?;
        if Arc::strong_count(&s.images[i].bytes) > 1 {
            return Err(StoreErr::InUse);
        }
        let img = s.images.swap_remove(i);
        s.index.remove(d);
        s.used_pages -= img.bytes.pages();
        Ok(img)
    })?;
    info!(target: "store", "image {} removed: {} pages freed", d.short(), img.bytes.pages());
    drop(img);
    Ok(())
}
