//! Memory syscalls (map, unmap, map_mmio, dma_alloc) and frame ownership checks for memory
//! shared with ring-3 drivers.

use super::*;

/// Whether the live task `id` owns the `pages` frames from `phys` (its DMA memory, say), so
/// that the kernel may use them as memory shared with it (they stay allocated while it lives).
pub fn owns_frames(id: TaskId, phys: u64, pages: u64) -> bool {
    with(|k| match k.sched.task(id) {
        Some(t) => (0..pages).all(|i| phys.checked_add(i * 4096).is_some_and(|p| t.context.frames.contains(&p))),
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

const fn bad() -> u64 {
    ERR_BAD_ARG.wrapping_neg()
}
const fn no_memory() -> u64 {
    ERR_NO_MEMORY.wrapping_neg()
}

/// Reserve `pages` of the caller's memory quota (plus the page tables a range of that many
/// pages can need); returns what was taken, or None when the quota is short.
fn take_quota(k: &mut Kernel, me: TaskId, pages: u64) -> Option<u64> {
    let t = k.sched.task_mut(me)?;
    let want = pages + TABLES_PER_CALL;
    if t.context.mem_left < want {
        return None;
    }
    t.context.mem_left -= want;
    Some(want)
}

/// Give back the part of a reservation a call did not use: `taken` minus the `pages` mapped
/// and the page tables the space grew by since `tables_before`.
fn settle_quota(k: &mut Kernel, me: TaskId, taken: u64, pages: u64, tables_before: u64) {
    if let Some(t) = k.sched.task_mut(me) {
        let tables = t.context.space.as_ref().map_or(0, |s| s.table_frames()).saturating_sub(tables_before);
        t.context.mem_left += taken.saturating_sub(pages + tables);
    }
}

/// `SYS_MAP`: `pages` fresh zeroed pages at `virt` (below the grant window), charged to the
/// memory quota. The frames are allocated and zeroed before the kernel lock is taken, so the
/// lock is held only for the page-table updates.
pub(super) fn sys_map(f: &mut TrapFrame) {
    let (virt, pages) = (f.rdi, f.rsi);
    f.rax = match UserRange::pages(virt, pages) {
        Ok(r) if r.within(0, GRANT_WINDOW) && pages <= MAP_MAX_PAGES => map_anon(r),
        _ => bad(),
    }
}

fn map_anon(r: UserRange) -> u64 {
    let pages = r.page_count();
    let Some((me, taken, tables_before)) = with(|k| {
        let me = k.sched.current(smp::cpu_index())?;
        let tables = k.sched.task(me)?.context.space.as_ref()?.table_frames();
        Some((me, take_quota(k, me, pages)?, tables))
    }) else {
        return no_memory();
    };
    let mut fresh = Vec::new();
    let enough = fresh.try_reserve_exact(pages as usize).is_ok()
        && (0..pages).all(|_| memory::FreshFrame::alloc().map(|fr| fresh.push(fr)).is_ok());
    with(|k| {
        let mut mapped = 0;
        let mut rc = if enough { 0 } else { no_memory() };
        if let Some(t) = k.sched.task_mut(me) {
            if let (true, Some(space)) = (enough, t.context.space.as_mut()) {
                for (v, fr) in r.page_starts().zip(fresh.drain(..)) {
                    match space.map_fresh_frame(v, fr, true, false) {
                        Ok(phys) => {
                            t.context.frames.insert(phys);
                            mapped += 1;
                        }
                        Err(_) => {
                            rc = bad(); // already mapped: the pages before stay mapped (and charged)
                            break;
                        }
                    }
                }
            }
        }
        settle_quota(k, me, taken, mapped, tables_before);
        rc
    })
    // frames not mapped drop here, outside the lock, and go back to the allocator
}

/// `SYS_MAP_MMIO`: map [phys, phys+len) at `virt`, uncached, if it lies inside one of the
/// task's MMIO grants (and is not RAM: `map_device` checks).
pub(super) fn map_mmio(k: &mut Kernel, me: TaskId, virt: u64, phys: u64, len: u64) -> u64 {
    let Ok(r) = UserRange::pages(virt, len.div_ceil(4096)) else { return bad() };
    let Some(pend) = phys.checked_add(r.len()) else { return bad() };
    let tables_before = k.sched.task(me).and_then(|t| t.context.space.as_ref()).map_or(0, |s| s.table_frames());
    let Some(taken) = take_quota(k, me, 0) else { return no_memory() };
    let t = k.sched.task_mut(me).unwrap();
    let granted = t.context.mmio.iter().any(|&(b, l)| phys >= b && b.checked_add(l).is_some_and(|e| pend <= e));
    let rc = match t.context.space.as_mut() {
        Some(space) if granted && r.within(0, GRANT_WINDOW) => match space.map_device(r, phys, true) {
            Ok(()) => 0,
            Err(_) => bad(),
        },
        _ => bad(),
    };
    settle_quota(k, me, taken, 0, tables_before);
    rc
}

/// `SYS_DMA_ALLOC`: `pages` physically contiguous zeroed frames (within the DMA quota and the
/// memory quota) mapped at `virt`; returns their physical address for the device. Allocated
/// and zeroed outside the kernel lock, like `SYS_MAP`.
pub(super) fn sys_dma_alloc(f: &mut TrapFrame) {
    let (virt, pages) = (f.rdi, f.rsi);
    let r = match UserRange::pages(virt, pages) {
        Ok(r) if r.within(0, GRANT_WINDOW) => r,
        _ => return f.rax = bad(),
    };
    let Some((me, taken, tables_before)) = with(|k| {
        let me = k.sched.current(smp::cpu_index())?;
        let t = k.sched.task_mut(me)?;
        let tables = t.context.space.as_ref()?.table_frames();
        if pages > t.context.dma_left {
            return None;
        }
        let taken = take_quota(k, me, pages)?;
        k.sched.task_mut(me)?.context.dma_left -= pages;
        Some((me, taken, tables))
    }) else {
        return f.rax = bad();
    };
    let run = memory::FreshRun::alloc(pages);
    f.rax = with(|k| {
        let mut mapped = 0;
        let rc = match (run, k.sched.task_mut(me)) {
            (Ok(run), Some(t)) => match t.context.space.as_mut().map(|s| s.map_dma(r, run)) {
                Some(Ok(phys)) => {
                    t.context.frames.extend((0..pages).map(|i| phys + i * 4096));
                    mapped = pages;
                    phys
                }
                _ => bad(),
            },
            (Err(_), _) => no_memory(),
            (Ok(_), None) => bad(),
        };
        if mapped == 0 {
            if let Some(t) = k.sched.task_mut(me) {
                t.context.dma_left += pages;
            }
        }
        settle_quota(k, me, taken, mapped, tables_before);
        rc
    })
}

/// `SYS_UNMAP`: unmap `pages` of the caller's own pages (its RAM or its device mappings; not
/// grants, which the kernel ends) from `virt`; its RAM frames go back to the allocator and
/// to its quota. Stops at the first page that is not the caller's.
pub(super) fn unmap_anon(k: &mut Kernel, me: TaskId, virt: u64, pages: u64) -> u64 {
    let Ok(r) = UserRange::pages(virt, pages) else { return bad() };
    let t = k.sched.task_mut(me).unwrap();
    let Some(space) = t.context.space.as_mut() else { return bad() };
    for v in r.page_starts() {
        match space.page(v) {
            Some(p) if p.kind != PageKind::Grant => {}
            _ => return bad(),
        }
        let Ok(p) = space.unmap(v) else { return bad() };
        if p.kind == PageKind::Ram && t.context.frames.remove(&p.phys) {
            let _ = memory::free_user_frame(p.phys);
            t.context.mem_left += 1;
        }
    }
    0
}
