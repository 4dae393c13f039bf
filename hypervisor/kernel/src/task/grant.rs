//! Memory grants travelling with calls (see the `task` module docs).

use super::*;

pub(super) const GRANT_SLOTS: u64 = 64;

/// A grant travelling with call `token`.
pub(super) struct GrantRec {
    pub(super) sender: TaskId,
    /// The receiver and where the pages are mapped in it, once delivered.
    pub(super) mapped: Option<(TaskId, u64)>,
    /// The sender's frames, checked against its page tables when it made the call.
    pub(super) lent: catenary_arch::user_mem::Lent,
    /// A standing share (`SYS_SHARE`), not a call's grant: it lasts until either side dies.
    pub(super) standing: bool,
}

/// Standing shares one task may have made, at most.
const SHARES_PER_LENDER: usize = 4;

/// Keys of standing shares in `Kernel::grants` (call tokens never reach this range).
static NEXT_SHARE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

/// `SYS_SHARE(slot, base, len)`: lend [base, base+len) of `me`'s own RAM, writable, to the
/// owner of the endpoint of capability `slot` (which must carry the `SHARE` right) until
/// either of them dies. Returns where the pages are mapped in the receiver; sharing the
/// same pages with the same receiver again returns the same mapping.
pub(super) fn sys_share(k: &mut Kernel, me: TaskId, slot: usize, base: u64, len: u64) -> Result<u64, u64> {
    let cap = k.sched.task(me).ok_or(err(IpcError::NoCapability))?.context.caps.check(slot, Rights::SEND.union(Rights::SHARE)).map_err(err)?;
    let cap = localize(k, cap).map_err(|_| err(IpcError::Unreachable))?;
    let receiver = k.ipc.endpoint(cap.target.endpoint).ok_or(err(IpcError::NoEndpoint))?.owner;
    // a live task with an address space other than the lender (not a held endpoint, not a
    // kernel task)
    if receiver == me || k.sched.task(receiver).and_then(|t| t.context.space.as_ref()).is_none() {
        return Err(err(IpcError::DeadPeer));
    }
    let lent = grant_frames(k, me, base, len, true).ok_or(ERR_BAD_ARG.wrapping_neg())?;
    if let Some(v) = k.grants.values().find(|g| g.standing && g.sender == me && g.mapped.map(|(r, _)| r) == Some(receiver) && g.lent.frames() == lent.frames()).and_then(|g| g.mapped) {
        return Ok(v.1);
    }
    if k.grants.values().filter(|g| g.standing && g.sender == me).count() >= SHARES_PER_LENDER {
        return Err(err(IpcError::TableFull));
    }
    let used: Vec<u64> = k.grants.values().filter_map(|g| g.mapped.filter(|(r, _)| *r == receiver).map(|(_, v)| v)).collect();
    let virt = (0..GRANT_SLOTS).map(|i| GRANT_WINDOW + i * GRANT_MAX_PAGES * 4096).find(|v| !used.contains(v)).ok_or(err(IpcError::TableFull))?;
    let space = k.sched.task_mut(receiver).and_then(|t| t.context.space.as_mut()).ok_or(err(IpcError::DeadPeer))?;
    space.map_lent(virt, &lent).map_err(|_| ERR_BAD_ARG.wrapping_neg())?;
    let key = NEXT_SHARE.fetch_sub(1, core::sync::atomic::Ordering::Relaxed);
    k.grants.insert(key, GrantRec { sender: me, mapped: Some((receiver, virt)), lent, standing: true });
    Ok(virt)
}

/// The frames behind [base, base+len) of `me`, if every page is `me`'s own RAM (not MMIO,
/// not itself a grant) and writable when `writable`.
pub(super) fn grant_frames(k: &Kernel, me: TaskId, base: u64, len: u64, writable: bool) -> Option<catenary_arch::user_mem::Lent> {
    let space = k.sched.task(me)?.context.space.as_ref()?;
    let r = UserRange::pages(base, len.div_ceil(4096)).ok()?;
    if r.page_count() > GRANT_MAX_PAGES {
        return None;
    }
    space.lend(r, writable).ok()
}

/// A message reaches `receiver`: map the grant travelling with it (if any) into its grant
/// window and tell it where (words 2, 3 = address | writable, length; address 0 = not mapped).
pub(super) fn deliver_grant(k: &mut Kernel, receiver: TaskId, m: &mut Message) {
    if m.grant.is_none() {
        return;
    }
    // Not mapped (no slot, no memory): no descriptor, and no grant flag (`put_msg`).
    m.words[2] = 0;
    m.words[3] = 0;
    let len = m.grant.map(|g| g.len).unwrap_or(0);
    let Some(rec) = k.grants.get(&m.reply) else { return };
    let used: Vec<u64> = k.grants.values().filter_map(|g| g.mapped.filter(|(r, _)| *r == receiver).map(|(_, v)| v)).collect();
    let Some(virt) = (0..GRANT_SLOTS).map(|i| GRANT_WINDOW + i * GRANT_MAX_PAGES * 4096).find(|v| !used.contains(v)) else { return };
    let writable = rec.lent.writable();
    let Some(t) = k.sched.task_mut(receiver) else { return };
    let Some(space) = t.context.space.as_mut() else { return };
    if space.map_lent(virt, &k.grants[&m.reply].lent).is_err() {
        return;
    }
    k.grants.get_mut(&m.reply).unwrap().mapped = Some((receiver, virt));
    m.words[2] = virt | writable as u64;
    m.words[3] = len;
}

pub(super) fn unmap_grant(k: &mut Kernel, rec: &GrantRec) {
    if let Some((r, virt)) = rec.mapped {
        if let Some(space) = k.sched.task_mut(r).and_then(|t| t.context.space.as_mut()) {
            for i in 0..rec.lent.pages() {
                let _ = space.unmap(virt + i * 4096);
            }
        }
    }
}

/// The receiver answers call `token` (running on this CPU, so the local TLB flush of the
/// unmap is enough): the grant ends.
pub(super) fn revoke_on_reply(k: &mut Kernel, me: TaskId, token: u64) {
    if k.grants.get(&token).is_some_and(|g| g.mapped.map(|(r, _)| r) == Some(me)) {
        let rec = k.grants.remove(&token).unwrap();
        unmap_grant(k, &rec);
    }
}

/// Task `dead` is going away: end its grants on both sides.
pub(super) fn grants_on_death(k: &mut Kernel, dead: TaskId) {
    let tokens: Vec<u64> = k.grants.iter().filter(|(_, g)| g.sender == dead || g.mapped.map(|(r, _)| r) == Some(dead)).map(|(t, _)| *t).collect();
    for tok in tokens {
        let rec = k.grants.remove(&tok).unwrap();
        if rec.sender != dead || rec.mapped.map(|(r, _)| r) == Some(dead) {
            continue; // the receiver died: its address space goes, the sender keeps its pages
        }
        if rec.standing {
            // The receiver may be using the shared pages right now (another CPU, or
            // preempted in the middle of a copy): they stay mapped there and become its own
            // (freed when it exits); the record keeps their window slot taken until then.
            if let Some((r, _)) = rec.mapped {
                if let Some(t) = k.sched.task_mut(dead) {
                    for f in rec.lent.frames() {
                        t.context.frames.remove(f);
                    }
                }
                if let Some(t) = k.sched.task_mut(r) {
                    t.context.frames.extend(rec.lent.frames().iter().copied());
                }
                k.grants.insert(tok, GrantRec { sender: r, ..rec });
            }
            continue;
        }
        unmap_grant(k, &rec);
        // The receiver may run on another CPU with the pages still in its TLB: they become
        // its own (freed when it exits) instead of returning to the allocator now.
        if let Some((r, _)) = rec.mapped {
            if let Some(t) = k.sched.task_mut(dead) {
                for f in rec.lent.frames() {
                    t.context.frames.remove(f);
                }
            }
            if let Some(t) = k.sched.task_mut(r) {
                t.context.frames.extend(rec.lent.frames().iter().copied());
            }
        }
    }
}

/// Number of grants in flight (tests).
pub fn grants_outstanding() -> usize {
    with(|k| k.grants.len())
}
