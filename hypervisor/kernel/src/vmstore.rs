//! The node's image store (kernel side): Catenary images that arrived as boot modules, each
//! verified on arrival (`catenary_workload::store::verify`: sha256 of `image.json`, then the root
//! filesystem's and run configuration's digests and sizes). The bytes stay in the boot module's
//! frames, which the kernel never frees or writes: every microVM of an image gets a read-only
//! virtio-blk disk over those same frames (`VirtioBlk::shared`), so N microVMs of one image
//! hold one copy of it. Also keeps the guest kernel and initramfs the workloads boot.
//!
//! Today images arrive only in the guest bundle module (`image/image.json`,
//! `image/rootfs.squashfs`, `image/config.json`, what `catenary image pack` writes); the
//! workload service lists and uses them through `SYS_VM` (docs/workloads.md).

use alloc::vec::Vec;
use catenary_workload::store::{verify, ImageIndex, ImageInfo};
use catenary_workload::vmctl::AutoStart;
use catenary_workload::Digest;
use log::{info, warn};

pub struct StoredImage {
    pub info: ImageInfo,
    pub rootfs: &'static [u8],
    pub config: &'static [u8],
}

/// What a workload's microVM boots: the guest kernel (PVH vmlinux or bzImage) and initramfs.
#[derive(Clone, Copy)]
pub struct GuestKernel {
    pub vmlinux: Option<&'static [u8]>,
    pub bzimage: Option<&'static [u8]>,
    pub initramfs: &'static [u8],
}

struct Store {
    images: Vec<StoredImage>,
    index: ImageIndex,
    guest: Option<GuestKernel>,
    autostart: Option<AutoStart>,
}

static STORE: spin::Mutex<Option<Store>> = spin::Mutex::new(None);

fn locked<R>(f: impl FnOnce(&mut Option<Store>) -> R) -> R {
    catenary_arch::cpu::without_interrupts(|| f(&mut STORE.lock()))
}

/// Take in the images among the boot modules (once, at boot; hashing happens here, outside
/// every lock), and the workload the command line asks the workload service to start
/// (`workload.demo=NAME`, `workload.mem=MiB`, default 256).
pub fn init(modules: &[catenary_bootinfo::Module], cmdline: &str) {
    let autostart = crate::cmdline::get(cmdline, "workload.demo").map(|n| AutoStart {
        name: alloc::string::String::from(n),
        memory_mib: crate::cmdline::get(cmdline, "workload.mem").and_then(|m| m.parse().ok()).unwrap_or(256),
        net: crate::cmdline::get(cmdline, "workload.net") == Some("1"),
    });
    let mut st = Store { images: Vec::new(), index: ImageIndex::new(), guest: None, autostart };
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
                            st.images.push(StoredImage { info, rootfs: r, config: c });
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
    locked(|s| *s = Some(st));
}

/// The images in the store.
pub fn list() -> Vec<ImageInfo> {
    locked(|s| s.as_ref().map(|s| s.index.list().to_vec()).unwrap_or_default())
}

/// An image's bytes (root filesystem, run configuration).
pub fn get(d: &Digest) -> Option<(&'static [u8], &'static [u8])> {
    locked(|s| s.as_ref()?.images.iter().find(|i| i.info.digest == *d).map(|i| (i.rootfs, i.config)))
}

/// The workload the command line asks the workload service to start at boot.
pub fn autostart() -> Option<AutoStart> {
    locked(|s| s.as_ref()?.autostart.clone())
}

pub fn guest_kernel() -> Option<GuestKernel> {
    locked(|s| s.as_ref()?.guest)
}
