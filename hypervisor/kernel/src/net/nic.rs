//! The NIC as the in-kernel stack sees it: the in-kernel driver (`net.driver=kernel`), or the
//! ring-3 driver `nicd` behind the shared frame ring (attached, watched and re-attached here).

use super::*;

/// The NIC as the stack sees it: the in-kernel driver, or the ring-3 driver `nicd` behind
/// the shared frame ring.
#[allow(clippy::large_enum_variant)] // one per node: boxing the ring state would buy nothing
pub(super) enum Nic {
    Kernel(alloc::boxed::Box<VirtioNet>),
    User(UserNic),
}

impl Link for Nic {
    fn mac(&self) -> [u8; 6] {
        match self {
            Nic::Kernel(n) => n.mac(),
            Nic::User(u) => u.mac,
        }
    }
    fn recv(&mut self) -> Option<alloc::vec::Vec<u8>> {
        match self {
            Nic::Kernel(n) => n.receive(|f| f.to_vec()),
            Nic::User(u) => u.recv(),
        }
    }
    fn can_send(&self) -> bool {
        match self {
            Nic::Kernel(_) => true,
            Nic::User(u) => u.can_send(),
        }
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        match self {
            Nic::Kernel(n) => {
                n.transmit(len, |b| f(b));
            }
            Nic::User(u) => u.send(len, f),
        }
    }
}

/// The kernel's side of the ring-3 driver: the ring (physical, in `nicd`'s DMA memory, used
/// only while `nicd` owns it) and a send capability to wake `nicd` for transmits.
pub(super) struct UserNic {
    pub(super) task: catenary_sched::TaskId,
    pub(super) ring: u64,
    pub(super) mac: [u8; 6],
    pub(super) wake_slot: usize,
    /// Times the ring's indices were out of range.
    pub(super) bad_indices: u64,
    /// Where the device's structures are (sent to each incarnation of `nicd`).
    pub(super) cfg: [catenary_ipc::Message; 2],
    /// The slot of `netd`'s endpoint `nicd` reports to.
    pub(super) report_slot: usize,
    /// `nicd` died and its restart has not been attached yet (logged once).
    pub(super) gone: bool,
}

impl UserNic {
    fn slot_frame(&self, off: u64) -> u64 {
        (self.ring + off) & !0xfff
    }
    /// `nicd` wrote indices that do not describe the ring: stop using it (counted, logged
    /// once) rather than trust them — netd neither panics nor loops over phantom frames.
    fn bad_ring(&mut self, e: ring::BadIndices) {
        self.bad_indices += 1;
        if self.bad_indices == 1 {
            warn!(target: "net", "nicd: frame ring indices out of range (head {}, tail {}): frames ignored", e.head, e.tail);
        }
    }
    fn recv(&mut self) -> Option<alloc::vec::Vec<u8>> {
        use ring::*;
        let r = self.ring;
        let hdr = self.slot_frame(0);
        // which slot: read the indices first (header page only)
        let (head, tail) = crate::task::with_owned_frames(self.task, &[hdr], || {
            (memory::phys_read_u64(r + RX_HEAD), memory::phys_read_u64(r + RX_TAIL))
        })?;
        let n = match pending(head, tail) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) => {
                self.bad_ring(e);
                return None;
            }
        };
        let s = slot(tail);
        let off = RX_SLOTS + s * SLOT_LEN;
        let v = crate::task::with_owned_frames(self.task, &[hdr, self.slot_frame(off)], || {
            let len = frame_len(memory::phys_read_u64(r + RX_LEN + s * 8));
            memory::user_write_u64(r + RX_TAIL, tail.wrapping_add(1)).then_some(())?;
            let mut v = alloc::vec![0u8; len?];
            memory::phys_read(r + off, &mut v);
            Some(v)
        })
        .flatten();
        if n >= SLOTS {
            // the ring was full: nicd left frames in the device queue and waits for room
            let _ = crate::task::send(self.wake_slot, catenary_ipc::Message::new(LABEL_TX, [0; 4]));
        }
        v
    }
    fn can_send(&self) -> bool {
        use ring::*;
        let r = self.ring;
        crate::task::with_owned_frames(self.task, &[self.slot_frame(0)], || {
            room(memory::phys_read_u64(r + TX_HEAD), memory::phys_read_u64(r + TX_TAIL)).is_ok_and(|n| n > 0)
        })
        .unwrap_or(false)
    }
    fn send(&mut self, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        use ring::*;
        if len as u64 > SLOT_LEN || !self.can_send() {
            return; // dropped, as a full NIC queue would
        }
        let mut frame = alloc::vec![0u8; len];
        f(&mut frame);
        let r = self.ring;
        let hdr = self.slot_frame(0);
        let Some(head) = crate::task::with_owned_frames(self.task, &[hdr], || memory::phys_read_u64(r + TX_HEAD)) else { return };
        let s = slot(head);
        let off = TX_SLOTS + s * SLOT_LEN;
        let _ = crate::task::with_owned_frames(self.task, &[hdr, self.slot_frame(off)], || {
            // user frames only (the arch checks); whose they are, with_owned_frames checked
            let _ = memory::user_write(r + off, &frame)
                && memory::user_write_u64(r + TX_LEN + s * 8, len as u64)
                && memory::user_write_u64(r + TX_HEAD, head.wrapping_add(1));
        });
        // a full endpoint means nicd has wakeups pending already
        let _ = crate::task::send(self.wake_slot, catenary_ipc::Message::new(LABEL_TX, [0; 4]));
    }
}

/// Bring up the ring-3 driver `nicd` for the first virtio-net function. `nicd` is a service of
/// the manifest (hypervisor/manifest), started and restarted by the supervisor with its grants
/// (the device's virtio structures, DMA pages, the receive interrupt, a send capability to
/// `netd`'s endpoint); `netd` programs MSI-X entry 0 -> `NIC_VECTOR` on the BSP, provides the
/// endpoint `nicd` reports to (which lets the supervisor's request to start it go ahead), tells
/// it where the structures are and waits for its frame ring. Returns the NIC and the slot of
/// `netd`'s endpoint. Ok(None): no device.
pub(super) fn start_nicd() -> Result<Option<(Nic, usize)>, &'static str> {
    use crate::task::{self, supervisor};
    use catenary_ipc::Message;
    let Some((df, info)) = catenary_arch::virtio::find_net() else {
        supervisor::enable("nicd", false);
        return Ok(None);
    };
    let msix = match catenary_arch::smp::apic_id_of(0).ok_or("no BSP APIC id").and_then(|bsp| {
        catenary_arch::virtio::msix_program(df, task::NIC_VECTOR, bsp).map(|n| (n, bsp))
    }) {
        Ok(x) => Some(x),
        Err(e) => {
            warn!(target: "net", "virtio-net: no interrupts ({}): nicd polls", e);
            None
        }
    };
    let dep = supervisor::service_endpoint("nicd").ok_or("no nicd in the service manifest")?;
    // nicd reports to the netd service's endpoint: this kernel task receives on it
    let (kslot, _) = supervisor::adopt_service_endpoint("netd").ok_or("no netd endpoint in the service manifest")?;
    let dslot = task::give_current(task::send_cap(dep, 0));
    let cfg = [
        Message::new(ring::LABEL_CONFIG, [info.common.0, info.notify.0, info.isr.0, info.device.0]),
        Message::new(ring::LABEL_CONFIG2, [info.notify_multiplier as u64, info.device.1, info.notify.1, 0]),
    ];
    supervisor::enable("nicd", true);
    let mut u = UserNic { task: 0, ring: 0, mac: [0; 6], wake_slot: dslot, bad_indices: 0, cfg, report_slot: kslot, gone: false };
    let (msix_used, link) = attach_nicd(&mut u, None)?;
    info!(target: "net", "virtio-net at PCI {:02x}:{:02x}.{}, MAC {:02x?}, link {} (driver in ring 3: task {} nicd, started by the supervisor)",
        df.bus, df.device, df.function, u.mac, if link { "up" } else { "down" }, u.task);
    info!(target: "net", "nicd granted MMIO (the device's virtio structures, per its manifest entry), {} DMA pages, frame ring at {:#x} ({} pages)",
        catenary_manifest::SERVICES.iter().find(|s| s.name == "nicd").map(|s| s.dma_pages).unwrap_or(0), u.ring, ring::RING_PAGES);
    match msix {
        Some((n, bsp)) if msix_used => info!(target: "net",
            "virtio-net: MSI-X on ({} entries): receive queue -> vector {:#x} on APIC {}, notifies endpoint {} (nicd, ring 3)", n, task::NIC_VECTOR, bsp, dep),
        _ => warn!(target: "net", "virtio-net: no MSI-X vector for the receive queue: nicd polls every 10 ms"),
    }
    Ok(Some((Nic::User(u), kslot)))
}

/// Attach `u` to the running incarnation of `nicd` (other than `old`): wait for the
/// supervisor to have started it, send it the device's configuration, wait for its frame ring
/// and check the ring is its own DMA memory. Returns whether it uses MSI-X and the link state.
pub(super) fn attach_nicd(u: &mut UserNic, old: Option<catenary_sched::TaskId>) -> Result<(bool, bool), &'static str> {
    use crate::task::{self, supervisor};
    let end = time::now_ns() + 10_000_000_000;
    let tid = loop {
        match supervisor::service_task("nicd") {
            Some(t) if Some(t) != old => break t,
            _ if time::now_ns() > end => return Err("the supervisor did not start nicd in 10 s"),
            _ => task::sleep_ns(1_000_000),
        }
    };
    // what the dead driver sent and nobody received (its queue may be full: the new one's
    // report must fit)
    while task::recv(u.report_slot, 1).is_ok() {}
    for m in u.cfg {
        task::send(u.wake_slot, m).map_err(|_| "cannot reach nicd")?;
    }
    let up = loop {
        let left = end.saturating_sub(time::now_ns()).max(1);
        let m = task::recv(u.report_slot, left).map_err(|_| "nicd did not come up in 10 s")?;
        if m.label == ring::LABEL_UP || m.label == ring::LABEL_FAIL {
            break m; // (frames or wakeups from before are skipped)
        }
    };
    if up.label == ring::LABEL_FAIL {
        warn!(target: "net", "nicd failed at step {}", up.words[0]);
        return Err("nicd failed");
    }
    let ring_phys = up.words[0];
    if ring_phys % 4096 != 0 || !task::owns_frames(tid, ring_phys, ring::RING_PAGES) {
        return Err("nicd's frame ring is not its own DMA memory");
    }
    u.mac.copy_from_slice(&up.words[1].to_le_bytes()[..6]);
    u.task = tid;
    u.ring = ring_phys;
    u.bad_indices = 0;
    u.gone = false;
    Ok((up.words[3] != 0, up.words[2] != 0))
}

/// If `nicd` died: note it, and once the supervisor has restarted it, attach the new one (the
/// stack, its sessions and its sockets stay in `netd`; frames in flight were lost).
pub(super) fn nic_watch(st: &mut State) {
    let Nic::User(u) = &mut st.nic else { return };
    let now_task = crate::task::supervisor::service_task("nicd");
    if now_task == Some(u.task) {
        return;
    }
    if !u.gone {
        u.gone = true;
        warn!(target: "net", "virtio-net: nicd (task {}) is gone: no frames until the supervisor restarts it", u.task);
    }
    if now_task.is_none() {
        return;
    }
    let old = u.task;
    match attach_nicd(u, Some(old)) {
        Ok(_) => info!(target: "net", "virtio-net: nicd restarted as task {} (restarts: {}), frame ring at {:#x}: netd attached again",
            u.task, crate::task::supervisor::service_restarts("nicd"), u.ring),
        Err(e) => warn!(target: "net", "virtio-net: attaching the restarted nicd: {}", e),
    }
}

/// Route the NIC's receive interrupt (MSI-X) to the BSP as an IPC notification of an endpoint
/// owned by `netd`. Returns the endpoint's capability slot, or None (polling) without MSI-X.
pub(super) fn enable_irq(st: &mut State) -> Option<usize> {
    let Some(bsp) = catenary_arch::smp::apic_id_of(0) else {
        warn!(target: "net", "virtio-net: no BSP APIC id: polling");
        return None;
    };
    let (slot, ep) = crate::task::create_endpoint_for_current(1);
    crate::task::bind_irq_notification(crate::task::NIC_VECTOR, ep, 1);
    let Nic::Kernel(n) = &mut st.nic else { return None };
    match n.enable_msix(crate::task::NIC_VECTOR, bsp) {
        Ok(n) => {
            info!(target: "net", "virtio-net: MSI-X on ({} entries): receive queue -> vector {:#x} on APIC {}, notifies endpoint {}",
                n, crate::task::NIC_VECTOR, bsp, ep);
            Some(slot)
        }
        Err(e) => {
            warn!(target: "net", "virtio-net: no interrupts ({}): polling", e);
            None
        }
    }
}
