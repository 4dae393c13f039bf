//! netd's side of the microVM links: the node is each microVM's router
//! (`catenary_net::vmlink::VmPort`), frames come and go through a ring per link in netd's own
//! memory, lent to the kernel (`catenary_ipc::vm_ring`; the vCPU task is the other side).
//!
//! Bounds: at most [`MAX_LINKS`] rings (`vm_ring::PAGES` pages each, mapped once and reused
//! for the next link); a ring holds 64 frames each way and a full one drops the frame. The
//! kernel's indices are read through `vm_ring::pending`/`room`, so a wrong value neither
//! panics nor loops.

use alloc::vec::Vec;
use catenary_ipc::netd::*;
use catenary_ipc::vm_ring as vr;
use catenary_net::vmlink::{FromVm, VmPort};
use catenary_net::Node;
use catenary_user::*;
use core::net::Ipv6Addr;

/// Links (and rings) at most: the kernel's bound too.
pub const MAX_LINKS: usize = 8;
/// Where the rings are mapped in netd's address space (one per 1 MiB).
const RING_VA: u64 = 0x13_0000_0000;
const RING_STRIDE: u64 = 0x10_0000;
/// The MAC the node answers the microVMs' neighbour solicitations with.
const PORT_MAC: [u8; 6] = [0x02, 0xca, 0x7e, 0x00, 0x00, 0x01];

struct Link {
    id: u64,
    port: VmPort,
    allow_ipc: bool,
    /// Index of its ring (`RING_VA + ring * RING_STRIDE`).
    ring: usize,
}

pub struct VmLinks {
    links: Vec<Link>,
    /// The rings mapped so far (kept and reused) / in use.
    rings: [Option<Pages>; MAX_LINKS],
    used: [bool; MAX_LINKS],
    bad_indices: u64,
    blocked_logged: u32,
    too_big_logged: bool,
}

fn ring_va(i: usize) -> u64 {
    RING_VA + i as u64 * RING_STRIDE
}

impl VmLinks {
    pub fn new() -> VmLinks {
        VmLinks { links: Vec::new(), rings: [const { None }; MAX_LINKS], used: [false; MAX_LINKS], bad_indices: 0, blocked_logged: 0, too_big_logged: false }
    }

    /// Take the kernel's link events (attach, detach), lend rings, route the VMs' frames and
    /// hand packets for their /128s to them. Returns whether anything happened.
    pub fn pump(&mut self, node: &mut Node, now: u64) -> bool {
        let mut active = self.events(node, now);
        let (blocked, too_big) = (node.counters.vm_ipc_blocked, node.counters.vm_too_big);
        for i in 0..self.links.len() {
            let Some(ring) = self.rings[self.links[i].ring].as_ref() else { continue };
            let mut kick = false;
            while let Some(f) = recv(ring, &mut self.bad_indices) {
                active = true;
                let l = &mut self.links[i];
                match l.port.from_vm(&f) {
                    FromVm::Route(p) => {
                        node.route_from_vm(p, now, l.allow_ipc);
                    }
                    FromVm::Reply(r) => kick |= send(ring, &r),
                    FromVm::Drop => {}
                }
            }
            if kick {
                let _ = crate::net(OP_VM_KICK, &mut [], self.links[i].id);
            }
        }
        if node.counters.vm_ipc_blocked > blocked && self.blocked_logged < 8 {
            self.blocked_logged += 1;
            logf!("net: vm: dropped fabric IPC from a microVM that may not use it (blocked: {})", node.counters.vm_ipc_blocked);
        }
        if !self.too_big_logged && node.counters.vm_too_big > too_big {
            self.too_big_logged = true;
            logf!("net: vm: packet larger than the fabric MTU {}: answered with ICMPv6 Packet Too Big", catenary_net::FABRIC_MTU);
        }
        let mut kicks: [bool; MAX_LINKS] = [false; MAX_LINKS];
        while let Some(p) = node.take_vm_packet() {
            active = true;
            let Some((_, dst, _)) = netfabric::device::inner_header(&p) else { continue };
            let Some(i) = self.links.iter().position(|l| l.port.vm_addr == dst) else { continue };
            if let (Some(f), Some(ring)) = (self.links[i].port.to_vm(&p), self.rings[self.links[i].ring].as_ref()) {
                kicks[i] |= send(ring, &f);
            }
        }
        for (i, k) in kicks.iter().enumerate() {
            if *k {
                let _ = crate::net(OP_VM_KICK, &mut [], self.links[i].id);
            }
        }
        active
    }

    fn events(&mut self, node: &mut Node, now: u64) -> bool {
        let mut any = false;
        for _ in 0..2 * MAX_LINKS {
            let mut rec = [0u8; RECORD];
            let kind = match crate::net(OP_VM_NEXT, &mut rec, 0) {
                Ok(k) if k != 0 => k,
                _ => break,
            };
            any = true;
            let id = get_u64(&rec, 8);
            let addr = Ipv6Addr::from(get_addr(&rec, 16));
            if kind == VM_ATTACH {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&get_u64(&rec, 32).to_le_bytes()[..6]);
                self.attach(node, id, addr, mac, get_u64(&rec, 40) & VM_ALLOW_IPC != 0);
            } else if kind == VM_DETACH {
                self.detach(node, id, now, get_u64(&rec, 48));
            }
        }
        any
    }

    fn attach(&mut self, node: &mut Node, id: u64, addr: Ipv6Addr, mac: [u8; 6], allow_ipc: bool) {
        let Some(ring) = (0..MAX_LINKS).find(|i| !self.used[*i]) else {
            logf!("net: vm: no ring left for {}/128 ({} links): not routed", addr, MAX_LINKS);
            return;
        };
        if self.rings[ring].is_none() {
            // fresh zeroed pages of netd's memory quota
            match Pages::map(ring_va(ring), vr::PAGES) {
                Ok(p) => self.rings[ring] = Some(p),
                Err(_) => {
                    logf!("net: vm: no memory for the frame ring of {}/128: not routed", addr);
                    return;
                }
            }
        }
        let Some(pages) = self.rings[ring].as_ref() else { return };
        for off in [vr::RX_HEAD, vr::RX_TAIL, vr::TX_HEAD, vr::TX_TAIL] {
            pages.write_u64(off, 0);
        }
        if let Err(e) = net_vm_ring(crate::ROUTER, pages, id) {
            logf!("net: vm: the kernel refused the frame ring for {}/128 (error {})", addr, e);
            return;
        }
        self.used[ring] = true;
        node.add_vm_route(addr);
        self.links.push(Link { id, port: VmPort::new(addr, mac, PORT_MAC), allow_ipc, ring });
        logf!("net: vm: routing {}/128 to a microVM (MAC {:02x?}), frame ring of {} slots lent to the kernel", addr, mac, vr::SLOTS);
    }

    /// The VM ended: route the frames it sent last, then let the kernel forget the link.
    fn detach(&mut self, node: &mut Node, id: u64, now: u64, kernel_dropped: u64) {
        let Some(i) = self.links.iter().position(|l| l.id == id) else {
            let _ = crate::net(OP_VM_DONE, &mut [], id);
            return;
        };
        let Some(ring) = self.rings[self.links[i].ring].as_ref() else { return };
        let mut last = 0;
        while let Some(f) = recv(ring, &mut self.bad_indices) {
            last += 1;
            if let FromVm::Route(p) = self.links[i].port.from_vm(&f) {
                node.route_from_vm(p, now, self.links[i].allow_ipc);
            }
        }
        let for_it = vr::pending(ring.read_u64(vr::TX_HEAD), ring.read_u64(vr::TX_TAIL)).unwrap_or(0);
        let l = self.links.remove(i);
        node.remove_vm_route(&l.port.vm_addr);
        self.used[l.ring] = false;
        let _ = crate::net(OP_VM_DONE, &mut [], id);
        logf!("net: vm: {}/128 detached (its microVM ended): {} frames it sent last routed, {} for it dropped", l.port.vm_addr, last, for_it);
        if kernel_dropped > 0 {
            logf!("net: vm: {}/128: {} frames from it dropped by the kernel (no ring yet, or a full one)", l.port.vm_addr, kernel_dropped);
        }
    }
}

/// The next frame the VM sent, if any (the slot is consumed either way).
fn recv(ring: &Mem, bad_indices: &mut u64) -> Option<Vec<u8>> {
    let (head, tail) = (ring.read_u64(vr::RX_HEAD), ring.read_u64(vr::RX_TAIL));
    match vr::pending(head, tail) {
        Ok(0) => return None,
        Ok(_) => {}
        Err(e) => {
            *bad_indices += 1;
            if *bad_indices == 1 {
                logf!("net: vm: frame ring indices out of range (head {}, tail {}): frames ignored", e.head, e.tail);
            }
            return None;
        }
    }
    let f = vr::frame_len(ring.read_u64(vr::len_offset(vr::RX_LEN, tail))).map(|len| {
        let mut v = alloc::vec![0u8; len];
        ring.read(vr::slot_offset(vr::RX_SLOTS, tail), &mut v);
        v
    });
    ring.write_u64(vr::RX_TAIL, tail.wrapping_add(1));
    Some(f.unwrap_or_default())
}

/// Put a frame for the VM into its ring; false (dropped) when the ring is full.
fn send(ring: &Mem, f: &[u8]) -> bool {
    let (head, tail) = (ring.read_u64(vr::TX_HEAD), ring.read_u64(vr::TX_TAIL));
    if f.len() as u64 > vr::SLOT_LEN || !vr::room(head, tail).is_ok_and(|n| n > 0) {
        return false;
    }
    ring.write(vr::slot_offset(vr::TX_SLOTS, head), f);
    ring.write_u64(vr::len_offset(vr::TX_LEN, head), f.len() as u64);
    ring.write_u64(vr::TX_HEAD, head.wrapping_add(1));
    true
}
