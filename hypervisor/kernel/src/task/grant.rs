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
        if rec.sender != dead {
            continue; // the receiver died: its address space goes, the sender keeps its pages
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
