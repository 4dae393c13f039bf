//! Memory syscalls (map, unmap, map_mmio, dma_alloc) and frame ownership checks for memory
//! shared with ring-3 drivers.

use super::*;

/// Whether the live task `id` owns the `pages` frames from `phys` (its DMA memory, say), so
/// that the kernel may use them as memory shared with it (they stay allocated while it lives).
pub fn owns_frames(id: TaskId, phys: u64, pages: u64) -> bool {
    with(|k| match k.sched.task(id) {
        Some(t) => (0..pages).all(|i| t.context.frames.contains(&(phys + i * 4096))),
        None => false,
    })
}

/// Run `f` under the kernel lock if the live task `id` owns every frame in `frames`: memory
/// shared with a ring-3 driver is used only while it is the driver's (it could exit or unmap
/// it, which frees the frames, but not while the lock is held).
pub fn with_owned_frames<R>(id: TaskId, frames: &[u64], f: impl FnOnce() -> R) -> Option<R> {
    with(|k| {
        let t = k.sched.task(id)?;
        if k.exit_codes.contains_key(&id) || !frames.iter().all(|p| t.context.frames.contains(p)) {
            return None;
        }
        Some(f())
    })
}

pub(super) fn map_anon(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    if virt % 4096 != 0 || pages > 1024 || virt.saturating_add(pages * 4096) > GRANT_WINDOW {
        return ERR_BAD_ARG.wrapping_neg();
    }
    for i in 0..pages {
        let Ok(fr) = memory::alloc_frame() else { return ERR_BAD_ARG.wrapping_neg() };
        memory::zero_frame(fr);
        if space.map(virt + i * 4096, fr, true, false).is_err() {
            let _ = memory::free_frame(fr);
            return ERR_BAD_ARG.wrapping_neg();
        }
        t.context.frames.push(fr);
    }
    0
}

/// Map [phys, phys+len) at `virt`, uncached, if it lies inside one of the task's MMIO grants.
pub(super) fn map_mmio(k: &mut Kernel, me: TaskId, virt: u64, phys: u64, len: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    let pages = len.div_ceil(4096);
    let granted = t.context.mmio.iter().any(|&(b, l)| phys >= b && phys.saturating_add(pages * 4096) <= b + l);
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    if !granted || pages == 0 || virt % 4096 != 0 || phys % 4096 != 0 || virt.saturating_add(pages * 4096) > GRANT_WINDOW {
        return ERR_BAD_ARG.wrapping_neg();
    }
    for i in 0..pages {
        if space.map_mmio(virt + i * 4096, phys + i * 4096, true).is_err() {
            return ERR_BAD_ARG.wrapping_neg();
        }
    }
    0
}

/// Allocate `pages` physically contiguous zeroed frames (within the DMA quota), map them at
/// `virt` and return their physical address for the device.
pub(super) fn dma_alloc(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    if pages == 0 || pages > t.context.dma_left || virt % 4096 != 0 || virt.saturating_add(pages * 4096) > GRANT_WINDOW {
        return ERR_BAD_ARG.wrapping_neg();
    }
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    let Ok(phys) = memory::alloc_contiguous(pages, 1) else { return ERR_BAD_ARG.wrapping_neg() };
    for i in 0..pages {
        memory::zero_frame(phys + i * 4096);
        if space.map(virt + i * 4096, phys + i * 4096, true, false).is_err() {
            for j in 0..i {
                let _ = space.unmap(virt + j * 4096);
            }
            let _ = memory::free_contiguous(phys, pages);
            return ERR_BAD_ARG.wrapping_neg();
        }
    }
    t.context.frames.extend((0..pages).map(|i| phys + i * 4096));
    t.context.dma_left -= pages;
    phys
}

pub(super) fn unmap_anon(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let t = k.sched.task_mut(me).unwrap();
    let Some(space) = t.context.space.as_mut() else { return ERR_BAD_ARG.wrapping_neg() };
    for i in 0..pages {
        match space.unmap(virt + i * 4096) {
            Ok(fr) => {
                if let Some(pos) = t.context.frames.iter().position(|x| *x == fr) {
                    t.context.frames.swap_remove(pos);
                    let _ = memory::free_frame(fr);
                }
            }
            Err(_) => return ERR_BAD_ARG.wrapping_neg(),
        }
    }
    0
}
