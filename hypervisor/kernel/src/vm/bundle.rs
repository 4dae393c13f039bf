//! The guest image bundle boot module.

/// The guest image bundle (a cpio boot module holding vmlinux, bzImage, initramfs.cpio.gz).
pub struct GuestBundle {
    pub vmlinux: Option<&'static [u8]>,
    pub bzimage: Option<&'static [u8]>,
    pub initramfs: &'static [u8],
    /// A Catenary image's root filesystem and run config (docs/images.md), when the bundle
    /// carries one (`vm.image=1`).
    pub image_rootfs: Option<&'static [u8]>,
    pub image_config: Option<&'static [u8]>,
    /// Its `image.json` (the image store verifies the image by it).
    pub image_manifest: Option<&'static [u8]>,
}

pub fn find_bundle(modules: &[catenary_bootinfo::Module]) -> Option<GuestBundle> {
    for m in modules {
        let Some(data) = catenary_arch::memory::boot_module(m) else { continue };
        if let Ok(store) = catenary_bootinfo::ImageStore::parse(data) {
            if let Some(initramfs) = store.get("initramfs.cpio.gz") {
                return Some(GuestBundle {
                    vmlinux: store.get("vmlinux"),
                    bzimage: store.get("bzImage"),
                    initramfs,
                    image_rootfs: store.get("image/rootfs.squashfs"),
                    image_config: store.get("image/config.json"),
                    image_manifest: store.get("image/image.json"),
                });
            }
        }
    }
    None
}
