//! MicroVM links: a microVM's /128 and the frames between its vCPU task and `netd`.

use super::*;

/// Frames queued per direction per microVM link, at most.
pub(super) const VM_LINK_FRAMES: usize = 256;

/// The MAC the node answers the microVMs' neighbour solicitations with.
pub(super) const VM_PORT_MAC: [u8; 6] = [0x02, 0xca, 0x7e, 0x00, 0x00, 0x01];

/// One microVM's virtual link between its vCPU task and `netd`: frames the guest sent (for
/// `netd` to route) and frames for the guest (for the vCPU task to inject).
pub(super) struct VmLink {
    pub(super) port: catenary_net::vmlink::VmPort,
    /// The node lets this VM use fabric IPC (UDP 51900); off unless asked (`vm.ipc=1`).
    pub(super) allow_ipc: bool,
    pub(super) routed: bool,
    pub(super) from_vm: alloc::collections::VecDeque<alloc::vec::Vec<u8>>,
    pub(super) to_vm: alloc::collections::VecDeque<alloc::vec::Vec<u8>>,
    pub(super) dropped: u64,
    /// The VM has ended: `netd` routes what it sent last (this many frames), then removes
    /// the link.
    pub(super) detached: Option<usize>,
}

pub(super) static VM_LINKS: Mutex<alloc::vec::Vec<VmLink>> = Mutex::new(alloc::vec::Vec::new());

/// Frames waiting in some link's `to_vm` (lets the vCPU loops skip the lock).
pub(super) static VM_RX_PENDING: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

pub(super) fn with_links<R>(f: impl FnOnce(&mut alloc::vec::Vec<VmLink>) -> R) -> R {
    catenary_arch::cpu::without_interrupts(|| f(&mut VM_LINKS.lock()))
}

/// Give a microVM with MAC `mac` a /128 of the node's /64 (netfabric's allocator, kind
/// microVM) and a link to `netd`, which routes that /128 to it. `allow_ipc`: the guest may
/// send fabric IPC frames (to this node's or other nodes' endpoints); without it they are
/// dropped and counted. Waits up to `wait_ns` for networking to come up; None if it does not.
pub fn attach_vm(mac: [u8; 6], wait_ns: u64, allow_ipc: bool) -> Option<core::net::Ipv6Addr> {
    let t0 = time::now_ns();
    loop {
        if let Some(a) = with_router(|r| r.allocate_vm()) {
            let a = a?;
            with_links(|l| {
                l.push(VmLink {
                    port: catenary_net::vmlink::VmPort::new(a, mac, VM_PORT_MAC),
                    allow_ipc,
                    routed: false,
                    from_vm: Default::default(),
                    to_vm: Default::default(),
                    dropped: 0,
                    detached: None,
                })
            });
            crate::task::wake_netd();
            return Some(a);
        }
        if time::now_ns() - t0 > wait_ns {
            return None;
        }
        crate::task::sleep_ns(10_000_000);
    }
}

/// The microVM is gone: stop routing its /128. The frames it sent last (a final ACK, the
/// last datagram before it powered off) still go out: `netd` routes what is left of them
/// before it removes the link. Frames still queued *for* it are dropped: nobody can take
/// them any more.
pub fn detach_vm(addr: core::net::Ipv6Addr) {
    with_links(|l| {
        for v in l.iter_mut().filter(|v| v.port.vm_addr == addr) {
            VM_RX_PENDING.fetch_sub(v.to_vm.len(), core::sync::atomic::Ordering::Relaxed);
            v.dropped += v.to_vm.len() as u64;
            v.to_vm.clear();
            v.detached = Some(v.from_vm.len());
        }
    });
    crate::task::wake_netd();
}

/// (vCPU task) Hand the frames the guest sent to `netd`.
pub fn vm_send(addr: core::net::Ipv6Addr, frames: alloc::vec::Vec<alloc::vec::Vec<u8>>) {
    if frames.is_empty() {
        return;
    }
    with_links(|l| {
        if let Some(v) = l.iter_mut().find(|v| v.port.vm_addr == addr) {
            for f in frames {
                // Bounded, and a failed allocation drops the frame (counted), never the node.
                if v.from_vm.len() < VM_LINK_FRAMES && v.from_vm.try_reserve(1).is_ok() {
                    v.from_vm.push_back(f);
                } else {
                    v.dropped += 1;
                }
            }
        }
    });
    crate::task::wake_netd();
}

/// (vCPU task) The frames waiting for the guest.
pub fn vm_take(addr: core::net::Ipv6Addr) -> alloc::vec::Vec<alloc::vec::Vec<u8>> {
    if VM_RX_PENDING.load(core::sync::atomic::Ordering::Relaxed) == 0 {
        return alloc::vec::Vec::new();
    }
    with_links(|l| match l.iter_mut().find(|v| v.port.vm_addr == addr) {
        Some(v) => {
            VM_RX_PENDING.fetch_sub(v.to_vm.len(), core::sync::atomic::Ordering::Relaxed);
            // Moved out, not copied: no allocation on the vCPU task's path.
            alloc::vec::Vec::from(core::mem::take(&mut v.to_vm))
        }
        None => alloc::vec::Vec::new(),
    })
}

pub(super) fn push_to_vm(v: &mut VmLink, f: alloc::vec::Vec<u8>) {
    if v.to_vm.len() < VM_LINK_FRAMES && v.to_vm.try_reserve(1).is_ok() {
        v.to_vm.push_back(f);
        VM_RX_PENDING.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    } else {
        v.dropped += 1;
    }
}

/// (`netd`) Route the microVMs' frames and deliver packets for their /128s. Returns whether
/// anything happened.
pub(super) fn vm_pump(st: &mut State) -> bool {
    use catenary_net::vmlink::FromVm;
    let mut out = alloc::vec::Vec::new();
    let mut active = false;
    let mut detached = alloc::vec::Vec::new();
    with_links(|l| {
        for v in l.iter_mut() {
            if !v.routed && v.detached.is_none() {
                v.routed = true;
                st.node.add_vm_route(v.port.vm_addr);
                info!(target: "net", "vm: routing {}/128 to a microVM (MAC {:02x?})", v.port.vm_addr, v.port.vm_mac);
            }
            while let Some(f) = v.from_vm.pop_front() {
                active = true;
                match v.port.from_vm(&f) {
                    FromVm::Route(p) => out.push((p, v.allow_ipc)),
                    FromVm::Reply(r) if v.detached.is_none() => push_to_vm(v, r),
                    FromVm::Reply(_) | FromVm::Drop => {}
                }
            }
            if let Some(last) = v.detached {
                detached.push((v.port.vm_addr, last, v.dropped));
            }
        }
        // the last frames of ended VMs are in `out`: their links can go
        l.retain(|v| v.detached.is_none());
    });
    for (a, last, dropped) in detached {
        // the /128 is never handed out again
        with_router(|r| r.unbind(&a));
        info!(target: "net", "vm: {}/128 detached (its microVM ended): {} frames it sent last handled after it ended; {} frames for it dropped", a, last, dropped);
    }
    // routes of detached VMs
    let gone: alloc::vec::Vec<core::net::Ipv6Addr> = st.vm_routes.iter().copied()
        .filter(|a| with_links(|l| !l.iter().any(|v| v.port.vm_addr == *a))).collect();
    for a in gone {
        st.node.remove_vm_route(&a);
        st.vm_routes.retain(|x| *x != a);
    }
    with_links(|l| {
        for v in l.iter() {
            if !st.vm_routes.contains(&v.port.vm_addr) {
                st.vm_routes.push(v.port.vm_addr);
            }
        }
    });
    let now = time::now_ns();
    let (blocked, too_big) = (st.node.counters.vm_ipc_blocked, st.node.counters.vm_too_big);
    for (p, allow_ipc) in out {
        st.node.route_from_vm(p, now, allow_ipc);
    }
    if st.node.counters.vm_ipc_blocked > blocked && st.ipc_logged[2] < 8 {
        st.ipc_logged[2] += 1;
        info!(target: "net", "vm: dropped fabric IPC from a microVM that may not use it (blocked: {})", st.node.counters.vm_ipc_blocked);
    }
    if too_big == 0 && st.node.counters.vm_too_big > 0 {
        info!(target: "net", "vm: packet larger than the fabric MTU {}: answered with ICMPv6 Packet Too Big", catenary_net::FABRIC_MTU);
    }
    while let Some(p) = st.node.take_vm_packet() {
        active = true;
        let Some((_, core::net::IpAddr::V6(dst), _)) = netfabric::device::inner_header(&p) else { continue };
        with_links(|l| {
            if let Some(v) = l.iter_mut().find(|v| v.port.vm_addr == dst) {
                if let Some(f) = v.port.to_vm(&p) {
                    push_to_vm(v, f);
                }
            }
        });
    }
    active
}
