//! MicroVM links: a microVM's /128 and the frames between its vCPU task and the ring-3 `netd`.
//!
//! Each link has a frame ring (`catenary_ipc::vm_ring`: 64 slots of 2 KiB each way) in pages
//! of `netd`'s own memory, which `netd` lends the kernel (`SYS_NET` `OP_VM_RING`). The vCPU
//! task writes the frames the guest sent into it and wakes `netd` (the notification on its
//! endpoint), and takes the frames `netd` wrote for the guest after `netd` said so
//! (`OP_VM_KICK`: an atomic flag, so the vCPU loop needs no lock to find nothing). The kernel
//! touches the ring only under the kernel lock while the pages are still `netd`'s
//! (`task::with_owned_frames`): a dead `netd`'s ring is simply not used, and the next one
//! lends a new ring. Nothing here grows with what a guest sends: a full ring drops the frame
//! (counted), the link table holds at most [`MAX_VM_LINKS`] fixed-size entries.
//!
//! `netd` learns about links with `OP_VM_NEXT` (attach; every live link again after it
//! restarted; detach when the VM ended), routes the detached link's last frames, then
//! `OP_VM_DONE` makes the kernel forget it and unbind its /128 (never handed out again).

use super::*;
use catenary_ipc::vm_ring as vr;
use catenary_sched::TaskId;
use core::net::Ipv6Addr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// MicroVM links at most (each ring is `vm_ring::PAGES` pages of `netd`'s memory quota).
pub(super) const MAX_VM_LINKS: usize = 8;

/// The ring `netd` lent for a link: its task and the ring's frames.
#[derive(Clone, Copy)]
pub(super) struct Ring {
    task: TaskId,
    frames: [u64; vr::PAGES as usize],
}

impl Ring {
    /// Physical address of byte `off` of the ring (slots never cross a page).
    fn at(&self, off: u64) -> u64 {
        self.frames[(off / 4096) as usize] + off % 4096
    }
}

/// One microVM's link.
pub(super) struct VmLink {
    id: u64,
    addr: Ipv6Addr,
    mac: [u8; 6],
    /// The node lets this VM use fabric IPC (UDP 51900); off unless asked (`vm.ipc=1`).
    allow_ipc: bool,
    ring: Option<Ring>,
    /// The `netd` task that was told about the link (a restarted one is told again).
    told: Option<TaskId>,
    /// The VM ended; `detach_told`: `netd` was told so.
    ended: bool,
    detach_told: bool,
    /// `netd` wrote frames for the VM (`OP_VM_KICK`) that the vCPU task has not looked at.
    kicked: bool,
    /// Frames from the VM dropped: no ring lent yet, or the ring was full.
    dropped: u64,
}

static VM_LINKS: Mutex<alloc::vec::Vec<VmLink>> = Mutex::new(alloc::vec::Vec::new());
/// Links with `kicked` set (lets the vCPU loops skip the lock).
static VM_RX_PENDING: AtomicUsize = AtomicUsize::new(0);
static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

fn with_links<R>(f: impl FnOnce(&mut alloc::vec::Vec<VmLink>) -> R) -> R {
    catenary_arch::cpu::without_interrupts(|| f(&mut VM_LINKS.lock()))
}

/// Give a microVM with MAC `mac` a /128 of the node's /64 (netfabric's allocator, kind
/// microVM) and a link to `netd`, which routes that /128 to it. `allow_ipc`: the guest may
/// send fabric IPC frames (to this node's or other nodes' endpoints); without it they are
/// dropped and counted. Waits up to `wait_ns` for the ring-3 `netd` to come up; None if it
/// does not, with the in-kernel `netd` (which has no microVM links) or when
/// [`MAX_VM_LINKS`] links exist.
pub fn attach_vm(mac: [u8; 6], wait_ns: u64, allow_ipc: bool) -> Option<Ipv6Addr> {
    let t0 = time::now_ns();
    loop {
        if KERNEL_NETD.load(Ordering::Relaxed) {
            warn!(target: "net", "vm: microVM links need the ring-3 netd (this node runs net.netd=kernel)");
            return None;
        }
        if let Some(a) = with_router(|r| r.allocate_vm()) {
            let a = a?;
            let ok = with_links(|l| {
                if l.len() >= MAX_VM_LINKS || l.try_reserve(1).is_err() {
                    return false;
                }
                let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
                l.push(VmLink { id, addr: a, mac, allow_ipc, ring: None, told: None, ended: false, detach_told: false, kicked: false, dropped: 0 });
                true
            });
            if !ok {
                warn!(target: "net", "vm: {} microVM links exist already: no network device", MAX_VM_LINKS);
                with_router(|r| r.unbind(&a));
                return None;
            }
            crate::task::wake_netd();
            return Some(a);
        }
        if time::now_ns() - t0 > wait_ns {
            return None;
        }
        crate::task::sleep_ns(10_000_000);
    }
}

/// The node's fabric /128, once networking is up (`SYS_VM` `OP_NET`).
pub fn node_fabric_address() -> Option<Ipv6Addr> {
    with_router(|r| r.node_address())
}

/// A workload microVM's link: link slot `slot` of the workload service
/// (`catenary_workload::net`: the slot names its MAC and its /128 of the node's /64, so a
/// restarted workload keeps its address). Waits up to `wait_ns` for the ring-3 `netd`, for the
/// slot's /128 to be free (the same workload's previous run's link goes once `netd` routed its
/// last frames) and for room among the [`MAX_VM_LINKS`] links; the reason when it cannot.
pub fn attach_workload(slot: u8, wait_ns: u64) -> Result<Ipv6Addr, &'static str> {
    let t0 = time::now_ns();
    let mac = catenary_workload::net::mac(slot);
    loop {
        if KERNEL_NETD.load(Ordering::Relaxed) {
            return Err("microVM links need the ring-3 netd (this node runs net.netd=kernel)");
        }
        let why = match with_router(|r| {
            let a = catenary_workload::net::address(r.node_address(), slot);
            (a, r.claim_vm(a))
        }) {
            None => "the node's network is not up",
            Some((_, false)) => "its /128 is still in use (the last run's link)",
            Some((a, true)) => {
                let ok = with_links(|l| {
                    if l.len() >= MAX_VM_LINKS || l.try_reserve(1).is_err() {
                        return false;
                    }
                    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
                    l.push(VmLink { id, addr: a, mac, allow_ipc: false, ring: None, told: None, ended: false, detach_told: false, kicked: false, dropped: 0 });
                    true
                });
                if ok {
                    crate::task::wake_netd();
                    return Ok(a);
                }
                with_router(|r| r.unbind(&a));
                "every microVM link of the node is taken"
            }
        };
        if time::now_ns() - t0 > wait_ns {
            return Err(why);
        }
        crate::task::sleep_ns(10_000_000);
    }
}

/// The microVM is gone. `netd` still routes the frames it sent last (a final ACK, the last
/// datagram before it powered off) that wait in the ring, then says `OP_VM_DONE`; frames for
/// it are dropped. A link no `netd` was told about goes at once.
pub fn detach_vm(addr: Ipv6Addr) {
    let gone = with_links(|l| {
        let i = l.iter().position(|v| v.addr == addr)?;
        l[i].ended = true;
        if l[i].kicked {
            l[i].kicked = false;
            VM_RX_PENDING.fetch_sub(1, Ordering::Relaxed);
        }
        if l[i].told.is_none() {
            l.remove(i);
            return Some(addr);
        }
        None
    });
    if let Some(a) = gone {
        with_router(|r| r.unbind(&a));
        info!(target: "net", "vm: {}/128 detached (its microVM ended) before netd routed it", a);
    }
    crate::task::wake_netd();
}

fn ring_of(addr: Ipv6Addr) -> Option<Ring> {
    with_links(|l| l.iter().find(|v| v.addr == addr && !v.ended).and_then(|v| v.ring))
}

fn count_dropped(addr: Ipv6Addr, n: u64) {
    if n > 0 {
        with_links(|l| l.iter_mut().filter(|v| v.addr == addr).for_each(|v| v.dropped += n));
    }
}

/// (vCPU task) Hand the frames the guest sent to `netd`: into the link's ring while it has
/// room (the rest is dropped and counted, as a full NIC queue would), then wake `netd`.
pub fn vm_send(addr: Ipv6Addr, frames: alloc::vec::Vec<alloc::vec::Vec<u8>>) {
    if frames.is_empty() {
        return;
    }
    let total = frames.len() as u64;
    let written = match ring_of(addr) {
        Some(r) => crate::task::with_owned_frames(r.task, &r.frames, || {
            let (head, tail) = (memory::phys_read_u64(r.at(vr::RX_HEAD)), memory::phys_read_u64(r.at(vr::RX_TAIL)));
            let Ok(room) = vr::room(head, tail) else { return 0 };
            let mut n = 0;
            for f in frames.iter().filter(|f| f.len() as u64 <= vr::SLOT_LEN).take(room as usize) {
                let c = head.wrapping_add(n);
                // the ring's frames are netd's (checked above, under the lock): user frames
                let ok = memory::user_write(r.at(vr::slot_offset(vr::RX_SLOTS, c)), f)
                    && memory::user_write_u64(r.at(vr::len_offset(vr::RX_LEN, c)), f.len() as u64);
                if !ok {
                    break;
                }
                n += 1;
            }
            let _ = memory::user_write_u64(r.at(vr::RX_HEAD), head.wrapping_add(n));
            n
        })
        .unwrap_or(0),
        None => 0,
    };
    count_dropped(addr, total - written);
    if written > 0 {
        crate::task::wake_netd();
    }
}

/// (vCPU task) The frames `netd` wrote for the guest (at most a ring's worth).
pub fn vm_take(addr: Ipv6Addr) -> alloc::vec::Vec<alloc::vec::Vec<u8>> {
    let mut out = alloc::vec::Vec::new();
    if VM_RX_PENDING.load(Ordering::Relaxed) == 0 {
        return out;
    }
    let ring = with_links(|l| {
        let v = l.iter_mut().find(|v| v.addr == addr && v.kicked)?;
        v.kicked = false;
        VM_RX_PENDING.fetch_sub(1, Ordering::Relaxed);
        v.ring
    });
    let Some(r) = ring else { return out };
    crate::task::with_owned_frames(r.task, &r.frames, || {
        let (head, tail) = (memory::phys_read_u64(r.at(vr::TX_HEAD)), memory::phys_read_u64(r.at(vr::TX_TAIL)));
        let Ok(n) = vr::pending(head, tail) else { return };
        if out.try_reserve_exact(n as usize).is_err() {
            return;
        }
        for i in 0..n {
            let c = tail.wrapping_add(i);
            let Some(len) = vr::frame_len(memory::phys_read_u64(r.at(vr::len_offset(vr::TX_LEN, c)))) else { continue };
            let mut f = alloc::vec::Vec::new();
            if f.try_reserve_exact(len).is_err() {
                break;
            }
            f.resize(len, 0);
            if memory::phys_read(r.at(vr::slot_offset(vr::TX_SLOTS, c)), &mut f) {
                out.push(f);
            }
        }
        // every slot up to head is consumed, a bad length's too (no stall)
        let _ = memory::user_write_u64(r.at(vr::TX_TAIL), head);
    });
    out
}

/// (`SYS_NET` `OP_VM_NEXT`, for the ring-3 `netd` task `me`) The next link event, written
/// into `rec` (layout in `catenary_ipc::netd`); 0 if none. Links of VMs that ended before
/// this `netd` was told about them go without one (their ring died with the last `netd`).
pub(crate) fn vm_next(me: TaskId, rec: &mut [u8]) -> u64 {
    use catenary_ipc::netd::*;
    let mut gone = alloc::vec::Vec::new();
    let kind = with_links(|l| {
        let mut i = 0;
        while i < l.len() {
            let v = &l[i];
            if v.ended && v.told != Some(me) {
                gone.push(v.addr);
                l.remove(i);
                continue;
            }
            i += 1;
        }
        let v = l.iter_mut().find(|v| v.told != Some(me) || (v.ended && !v.detach_told))?;
        let kind = if v.told != Some(me) {
            v.told = Some(me);
            v.ring = None; // the last netd's, if any
            VM_ATTACH
        } else {
            v.detach_told = true;
            VM_DETACH
        };
        put_u64(rec, 0, kind);
        put_u64(rec, 8, v.id);
        put_addr(rec, 16, &v.addr.octets());
        let mut mac = [0u8; 8];
        mac[..6].copy_from_slice(&v.mac);
        put_u64(rec, 32, u64::from_le_bytes(mac));
        put_u64(rec, 40, if v.allow_ipc { VM_ALLOW_IPC } else { 0 });
        put_u64(rec, 48, v.dropped);
        Some(kind)
    });
    for a in gone {
        with_router(|r| r.unbind(&a));
    }
    kind.unwrap_or(0)
}

/// (`OP_VM_RING`) `netd` task `me` lends `frames` (its own, checked by the caller) as link
/// `id`'s ring. False if the link is not one it was told about.
pub(crate) fn vm_ring_lent(me: TaskId, id: u64, frames: &[u64]) -> bool {
    let Ok(frames) = <[u64; vr::PAGES as usize]>::try_from(frames) else { return false };
    with_links(|l| match l.iter_mut().find(|v| v.id == id && v.told == Some(me) && !v.ended) {
        Some(v) => {
            v.ring = Some(Ring { task: me, frames });
            true
        }
        None => false,
    })
}

/// (`OP_VM_KICK`) Frames for link `id`'s VM wait in its ring.
pub(crate) fn vm_kick(me: TaskId, id: u64) -> bool {
    with_links(|l| match l.iter_mut().find(|v| v.id == id && v.told == Some(me)) {
        Some(v) => {
            if !v.kicked && !v.ended {
                v.kicked = true;
                VM_RX_PENDING.fetch_add(1, Ordering::Relaxed);
            }
            true
        }
        None => false,
    })
}

/// (`OP_VM_DONE`) `netd` routed the last frames of ended link `id`: forget it and stop
/// routing its /128 (never handed out again).
pub(crate) fn vm_done(me: TaskId, id: u64) -> bool {
    let a = with_links(|l| {
        let i = l.iter().position(|v| v.id == id && v.told == Some(me) && v.ended)?;
        Some(l.remove(i).addr)
    });
    match a {
        Some(a) => {
            with_router(|r| r.unbind(&a));
            true
        }
        None => false,
    }
}
