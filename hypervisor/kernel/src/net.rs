//! Node networking: the virtio-net driver, the IPv6 stack and the fabric, run by one kernel
//! task (`netd`).
//!
//! The NIC driver runs in ring 3 (`nicd`, hypervisor/user/src/bin/nicd.rs), granted the
//! device's virtio structures, DMA memory and the receive interrupt; frames pass through a ring
//! in its DMA memory ([`UserNic`]). `net.driver=kernel` keeps the in-kernel driver
//! (`arch::virtio::VirtioNet`). With that driver the receive queue interrupts through MSI-X
//! ([`NIC_VECTOR`](crate::task::NIC_VECTOR)), delivered as an IPC notification to an endpoint
//! `netd` waits on (the ring-3 drivers' mechanism): `netd` polls the stack until a pass finds
//! no work, then waits for the interrupt or 10 ms (the stack's timers), whichever comes first.
//! Without MSI-X (or with `net.irq=off`) it falls back to polling: busy while traffic flowed in
//! the last 200 ms, otherwise one scheduler tick (10 ms) of sleep. See docs/networking.md.
//!
//! Kernel command line:
//! - `net=off` — do not start networking;
//! - `net.driver=kernel` — drive the NIC in the kernel instead of the ring-3 `nicd`;
//! - `net.irq=off` — with `net.driver=kernel`: poll the NIC instead of taking its interrupts;
//! - `net.key=HEX` — the node's x25519 secret key (64 hex digits), if no boot module carries it
//!   (`node.key` in a cpio module, which is how xtask passes it: the command line is logged,
//!   redacted); random if neither;
//! - `net.time=SECS` — Unix time now, for handshake timestamps when the CMOS RTC cannot be read;
//! - `net.insecure-entropy` — create keys even without RDSEED/RDRAND (timing jitter only: the
//!   keys may be guessable; logged loudly). Without it such a node keeps networking off;
//! - `net.ping=NAME` — once the fabric session with peer NAME is up, ping its fabric address
//!   (5 echoes) and its link-local address (3 echoes) and print the results;
//! - `net.bench=NAME` — latency and throughput to NAME over the fabric and the plain link;
//! - `net.wait=SECS` — how long the probes wait for the session (default 60);
//! - `net.ipccall=NAME` — once the session with NAME is up, a kernel task calls NAME's `echo`
//!   service by its fabric address (3 calls, same `call` syscall as a local call) and sends
//!   one message to an unbound /128 of NAME's /64.
//! - `net.rpcsvc=1`, `net.rpctest=NAME[,GHOST]`, `net.rpcquota=fill|other:NAME`,
//!   `net.ipcbench=NAME` — reliable fabric IPC
//!   probes and the remote call benchmark (see `rpcprobe.rs`);
//! - `net.test-loss=PCT` — TESTS ONLY: drop PCT% (1..=90) of fabric IPC datagrams in each
//!   direction (logged loudly; anything else is refused).
//!
//! Fabric IPC: `netd` is the node's IPC router. It keeps the table /128 → local endpoint
//! ([`bind_address`], netfabric's allocator gives task /128s of the node's /64; the `echo`
//! service gets the first one), delivers decrypted IPC frames (IPv6/UDP port 51900) for the
//! node's /128s as IPC messages, and carries sends and calls whose address names another node
//! (queued for it by the kernel, `task::take_remote`) in fabric frames. See
//! docs/networking.md.
//!
//! The cluster file (see `catenary_net::cluster`) is the boot module that starts with
//! `catenary-cluster v1`, or the entry `cluster.txt` of a cpio boot module (the guest bundle,
//! where only one module can be passed).
//!
//! MicroVMs: `attach_vm` gives a microVM a /128 of the node's /64 (netfabric's allocator, kind
//! microVM) and a link to `netd` (two bounded frame queues under a lock; the vCPU task moves
//! frames between them and its virtio-net device and wakes `netd`). `netd` is the VM's router:
//! `catenary_net::vmlink::VmPort` answers the guest's neighbour solicitations and checks that
//! what it sends comes from its /128 (other sources are counted and dropped); the node routes
//! the packets to its own stack, another microVM or over the fabric, and packets for the
//! /128 back to the VM.

use alloc::string::String;
use catenary_arch::virtio::{NicError, VirtioNet};
use catenary_arch::{entropy, memory, time};
use catenary_bootinfo::Module;
use catenary_net::ipcroute::{Body, Frame, IpcRouter, RouteError};
use catenary_net::rpc::{Delivery, Outcome, Rpc};
use catenary_net::{Cluster, Link, Node, NodeConfig, Path};
use catenary_sched::{Affinity, Priority};
use log::{info, warn};
use netfabric::Identity;
use spin::Mutex;

/// The NIC as the stack sees it: the in-kernel driver, or the ring-3 driver `nicd` behind
/// the shared frame ring.
enum Nic {
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

/// The frame ring shared with `nicd` (one definition for both sides).
use catenary_ipc::nic_ring as ring;

/// The kernel's side of the ring-3 driver: the ring (physical, in `nicd`'s DMA memory, used
/// only while `nicd` owns it) and a send capability to wake `nicd` for transmits.
struct UserNic {
    task: catenary_sched::TaskId,
    ring: u64,
    mac: [u8; 6],
    wake_slot: usize,
    /// Times the ring's indices were out of range.
    bad_indices: u64,
    /// Where the device's structures are (sent to each incarnation of `nicd`).
    cfg: [catenary_ipc::Message; 2],
    /// The slot of `netd`'s endpoint `nicd` reports to.
    report_slot: usize,
    /// `nicd` died and its restart has not been attached yet (logged once).
    gone: bool,
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

struct State {
    nic: Nic,
    node: Node,
    ping: Option<String>,
    bench: Option<String>,
    wait_s: u64,
    /// The capability slot of the endpoint the NIC's interrupt notifies (None: polling).
    irq: Option<usize>,
    ipccall: Option<String>,
    /// `net.nicd_restart=NAME` (test): fabric traffic to NAME until `nicd` has died and been
    /// restarted (with `nicd.crash_after=N`), then the session and a remote call again.
    restart_probe: Option<String>,
    /// `net.rpcsvc=1`, `net.rpctest=NAME[,GHOST]`, `net.ipcbench=NAME` (see `rpcprobe`).
    rpcsvc: bool,
    /// `net.panicsvc=1` (see `netdprobe`).
    panicsvc: bool,
    rpctest: Option<String>,
    /// `net.rpcquota=fill|other:NAME` (see `rpcprobe::rpcquota`).
    rpcquota: Option<String>,
    ipcbench: Option<String>,
    /// Fabric IPC events logged so far (the first few of each kind are).
    ipc_logged: [u32; 4],
    /// The microVM /128s the node routes.
    vm_routes: alloc::vec::Vec<core::net::Ipv6Addr>,
    /// Fabric IPC's retransmissions, duplicate suppression and send streams.
    rpc: Rpc,
}

/// The node's fabric IPC routing table (set up by `netd`).
static ROUTER: Mutex<Option<IpcRouter>> = Mutex::new(None);

fn with_router<R>(f: impl FnOnce(&mut IpcRouter) -> R) -> Option<R> {
    catenary_arch::cpu::without_interrupts(|| ROUTER.lock().as_mut().map(f))
}

/// (The `SYS_BIND_ADDRESS` syscall, after its capability check) Give local endpoint `ep` a
/// task /128 of the node's /64: fabric IPC frames to that address are delivered to it. None
/// before networking is up. Called with the kernel lock held (lock order: kernel, router).
pub(crate) fn router_bind(ep: catenary_ipc::EndpointId) -> Option<core::net::Ipv6Addr> {
    with_router(|r| r.bind(ep)).flatten()
}

/// Bind local endpoint `ep` to a fabric /128 through the checked syscall path: the calling
/// kernel task is handed a capability with the bind right for it (as the kernel would grant
/// one to a ring-3 service) and makes the same `bind_address` syscall.
fn bind_endpoint(ep: catenary_ipc::EndpointId) -> Result<core::net::Ipv6Addr, catenary_ipc::IpcError> {
    use catenary_ipc::{Address, Capability, Rights};
    let slot = crate::task::give_current(Capability { target: Address::local(ep), rights: Rights::BIND, badge: 0 });
    crate::task::bind_address(slot).map(core::net::Ipv6Addr::from)
}


// ------------------------------------------------------------------ microVM links

/// Frames queued per direction per microVM link, at most.
const VM_LINK_FRAMES: usize = 256;
/// The MAC the node answers the microVMs' neighbour solicitations with.
const VM_PORT_MAC: [u8; 6] = [0x02, 0xca, 0x7e, 0x00, 0x00, 0x01];

/// One microVM's virtual link between its vCPU task and `netd`: frames the guest sent (for
/// `netd` to route) and frames for the guest (for the vCPU task to inject).
struct VmLink {
    port: catenary_net::vmlink::VmPort,
    /// The node lets this VM use fabric IPC (UDP 51900); off unless asked (`vm.ipc=1`).
    allow_ipc: bool,
    routed: bool,
    from_vm: alloc::collections::VecDeque<alloc::vec::Vec<u8>>,
    to_vm: alloc::collections::VecDeque<alloc::vec::Vec<u8>>,
    dropped: u64,
    /// The VM has ended: `netd` routes what it sent last (this many frames), then removes
    /// the link.
    detached: Option<usize>,
}

static VM_LINKS: Mutex<alloc::vec::Vec<VmLink>> = Mutex::new(alloc::vec::Vec::new());
/// Frames waiting in some link's `to_vm` (lets the vCPU loops skip the lock).
static VM_RX_PENDING: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

fn with_links<R>(f: impl FnOnce(&mut alloc::vec::Vec<VmLink>) -> R) -> R {
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

fn push_to_vm(v: &mut VmLink, f: alloc::vec::Vec<u8>) {
    if v.to_vm.len() < VM_LINK_FRAMES && v.to_vm.try_reserve(1).is_ok() {
        v.to_vm.push_back(f);
        VM_RX_PENDING.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    } else {
        v.dropped += 1;
    }
}

/// (`netd`) Route the microVMs' frames and deliver packets for their /128s. Returns whether
/// anything happened.
fn vm_pump(st: &mut State) -> bool {
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

fn hex32(s: &str) -> Option<[u8; 32]> {
    catenary_net::cluster::hex_decode32(s)
}

/// The node's secret key from the `node.key` entry of a cpio boot module (never logged).
fn node_key(modules: &[Module]) -> Option<[u8; 32]> {
    for m in modules {
        let Some(data) = memory::boot_module(m) else { continue };
        let Some(f) = catenary_bootinfo::ImageStore::parse(data).ok().and_then(|s| s.get(catenary_net::nodekey::NODE_KEY_FILE)) else { continue };
        match catenary_net::nodekey::parse_node_key(f) {
            Ok(k) => return Some(k),
            Err(e) => warn!(target: "net", "{}: {:?}: ignored", catenary_net::nodekey::NODE_KEY_FILE, e),
        }
    }
    None
}

struct Boot {
    cmdline: String,
    modules: alloc::vec::Vec<Module>,
}

static BOOT: Mutex<Option<Boot>> = Mutex::new(None);

/// Start `netd`, which probes the NIC and brings the stack up (on its own stack, so boot goes
/// on meanwhile). Nothing happens without a virtio-net device or with `net=off`.
pub fn start(cmdline: &str, modules: &[Module]) {
    use crate::task::supervisor;
    if crate::cmdline::get(cmdline, "net") == Some("off") {
        supervisor::enable("netd", false);
        supervisor::enable("nicd", false);
        return;
    }
    if crate::cmdline::get(cmdline, "net.netd") == Some("user") {
        if crate::cmdline::get(cmdline, "net.driver") == Some("kernel") {
            warn!(target: "net", "net.netd=user needs the ring-3 driver nicd: net.driver=kernel ignored");
        }
        return start_user(cmdline, modules);
    }
    // the in-kernel stack adopts the netd service's endpoint; the ring-3 program never runs
    supervisor::enable("netd", false);
    *BOOT.lock() = Some(Boot { cmdline: String::from(cmdline), modules: modules.to_vec() });
    crate::task::spawn_kernel("netd", Priority::DRIVER, Affinity::ANY, netd, 0);
}

// ------------------------------------------------------------------ netd in ring 3

/// What the ring-3 `netd` gets at `SYS_NET(OP_BOOT)`: the command line, the boot modules
/// (node key, cluster file) and the virtio-net structures (found and MSI-X programmed here:
/// configuration space stays the kernel's).
struct UserBoot {
    cmdline: String,
    modules: alloc::vec::Vec<Module>,
    cfg: [u64; 7],
    msix: bool,
}

static USER_BOOT: Mutex<Option<UserBoot>> = Mutex::new(None);

/// `net.netd=user`: the network stack runs in ring 3 as the manifest's `netd` service,
/// started (and restarted) by the supervisor. The kernel finds the NIC, programs its MSI-X
/// entry, and lets the supervisor start `nicd` and `netd`.
fn start_user(cmdline: &str, modules: &[Module]) {
    use crate::task::{self, supervisor};
    let Some((df, info)) = catenary_arch::virtio::find_net() else {
        info!(target: "net", "no virtio-net device: networking off");
        supervisor::enable("netd", false);
        supervisor::enable("nicd", false);
        return;
    };
    let msix = match catenary_arch::smp::apic_id_of(0).ok_or("no BSP APIC id").and_then(|bsp| catenary_arch::virtio::msix_program(df, task::NIC_VECTOR, bsp)) {
        Ok(n) => {
            info!(target: "net", "virtio-net: MSI-X entry 0 of {} -> vector {:#x} (nicd's receive interrupt)", n, task::NIC_VECTOR);
            true
        }
        Err(e) => {
            warn!(target: "net", "virtio-net: no interrupts ({}): nicd polls", e);
            false
        }
    };
    let cfg = [info.common.0, info.notify.0, info.isr.0, info.device.0, info.notify_multiplier as u64, info.device.1, info.notify.1];
    catenary_arch::cpu::without_interrupts(|| {
        *USER_BOOT.lock() = Some(UserBoot { cmdline: String::from(cmdline), modules: modules.to_vec(), cfg, msix });
    });
    info!(target: "net", "virtio-net at PCI {:02x}:{:02x}.{}: the network stack runs in ring 3 (net.netd=user): the supervisor starts netd and nicd with their manifest grants",
        df.bus, df.device, df.function);
    crate::rpcprobe::USER_NETD.store(true, core::sync::atomic::Ordering::Relaxed);
    supervisor::enable("nicd", true);
    supervisor::enable("netd", true);
    crate::netdprobe::start(cmdline, modules);
}

/// The cluster file among the boot modules (raw text), if any.
fn cluster_text(modules: &[Module]) -> Option<&'static [u8]> {
    for m in modules {
        let Some(mut data) = memory::boot_module(m) else { continue };
        if !Cluster::is_cluster_file(data) {
            if let Some(c) = catenary_bootinfo::ImageStore::parse(data).ok().and_then(|s| s.get("cluster.txt")) {
                data = c;
            }
        }
        if Cluster::is_cluster_file(data) {
            return Some(data);
        }
    }
    None
}

/// The cluster as the kernel reads it (the probes find their peers in it).
pub(crate) fn cluster(modules: &[Module]) -> Option<Cluster> {
    core::str::from_utf8(cluster_text(modules)?).ok().and_then(|t| Cluster::parse(t).ok())
}

/// (`SYS_NET` `OP_BOOT`) The ring-3 netd's boot data (layout `catenary_ipc::netd::BOOT_*`):
/// fresh seeds from the hardware for each incarnation. None without `net.netd=user`, or
/// when the node may not create keys (no hardware entropy).
pub(crate) fn user_boot_data() -> Option<alloc::vec::Vec<u8>> {
    use catenary_ipc::netd::*;
    let (cmdline, modules, cfg, msix) = catenary_arch::cpu::without_interrupts(|| {
        USER_BOOT.lock().as_ref().map(|b| (b.cmdline.clone(), b.modules.clone(), b.cfg, b.msix))
    })?;
    let seeds = seeds(&cmdline)?;
    let key = node_key(&modules).or_else(|| crate::cmdline::get(&cmdline, "net.key").and_then(hex32));
    let cluster = cluster_text(&modules).unwrap_or(&[]);
    if BOOT_HEADER + cmdline.len() + cluster.len() > BOOT_MAX {
        warn!(target: "net", "netd boot data over {} bytes (cluster file too long)", BOOT_MAX);
        return None;
    }
    let mut b = alloc::vec![0u8; BOOT_HEADER];
    put_u64(&mut b, 0, 1);
    put_u64(&mut b, 8, if key.is_some() { BOOT_KEY } else { 0 } | if msix { BOOT_MSIX } else { 0 });
    put_u64(&mut b, 16, wall_clock_at_boot(&cmdline, time::now_ns()));
    for (i, w) in cfg.iter().enumerate() {
        put_u64(&mut b, 24 + 8 * i, *w);
    }
    put_u64(&mut b, 80, cmdline.len() as u64);
    put_u64(&mut b, 88, cluster.len() as u64);
    b[96..128].copy_from_slice(&key.unwrap_or([0; 32]));
    b[128..160].copy_from_slice(&seeds.identity);
    b[160..192].copy_from_slice(&seeds.fabric);
    b.extend_from_slice(cmdline.as_bytes());
    b.extend_from_slice(cluster);
    Some(b)
}

/// (`SYS_NET` `OP_UP`) The ring-3 netd is up with fabric /128 `node`: the kernel's routing
/// table (kept across its restarts) is made the first time, with `echo` bound first. False
/// if a table for another /128 exists (a netd with another key).
pub(crate) fn user_router_up(node: core::net::Ipv6Addr) -> bool {
    let fresh = catenary_arch::cpu::without_interrupts(|| {
        let mut r = ROUTER.lock();
        match r.as_ref() {
            Some(t) => Err(t.node_address() == node),
            None => {
                *r = Some(IpcRouter::new(node));
                Ok(())
            }
        }
    });
    match fresh {
        Err(same) => same,
        Ok(()) => {
            let echo = crate::task::echo_endpoint();
            match with_router(|r| r.bind(echo)).flatten() {
                Some(a) => info!(target: "net", "ipc: routing fabric IPC (UDP {}) for {}/64 through the ring-3 netd; endpoint {} (echo) has fabric address {}",
                    netfabric::ipc::FABRIC_IPC_PORT, netfabric::identity::Prefix64::of(&node).network(), echo, a),
                None => info!(target: "net", "ipc: routing fabric IPC for {}/64 through the ring-3 netd (no echo service to bind)",
                    netfabric::identity::Prefix64::of(&node).network()),
            }
            true
        }
    }
}

/// The endpoint bound to fabric /128 `a` (the kernel's table).
pub(crate) fn router_lookup(a: &core::net::Ipv6Addr) -> Option<u64> {
    with_router(|r| r.lookup(a)).flatten()
}

fn bring_up(cmdline: &str, modules: &[Module]) -> Option<alloc::boxed::Box<State>> {
    let seeds = seeds(cmdline)?;
    let user_driver = crate::cmdline::get(cmdline, "net.driver") != Some("kernel") && !crate::task::NICD_ELF.is_empty();
    let (nic, user_irq) = if user_driver {
        match start_nicd() {
            Ok(Some((n, slot))) => (n, Some(slot)),
            Ok(None) => {
                info!(target: "net", "no virtio-net device: networking off");
                return None;
            }
            Err(e) => {
                warn!(target: "net", "nicd: {}", e);
                return None;
            }
        }
    } else {
        // the manifest's nicd must not start: this kernel drives the device itself
        crate::task::supervisor::enable("nicd", false);
        let nic = match VirtioNet::probe() {
            Ok(n) => n,
            Err(NicError::NotFound) => {
                info!(target: "net", "no virtio-net device: networking off");
                return None;
            }
            Err(e) => {
                warn!(target: "net", "virtio-net: {:?}", e);
                return None;
            }
        };
        info!(target: "net", "virtio-net at PCI {:02x}:{:02x}.{}, MAC {:02x?}, link {} (driver in the kernel)",
            nic.df.bus, nic.df.device, nic.df.function, nic.mac(), if nic.link_up() { "up" } else { "down" });
        (Nic::Kernel(nic), None)
    };
    let identity = match (node_key(modules), crate::cmdline::get(cmdline, "net.key").and_then(hex32)) {
        (Some(k), _) => {
            info!(target: "net", "identity: the node key from the boot module ({})", catenary_net::nodekey::NODE_KEY_FILE);
            Identity::from_secret_bytes(k)
        }
        (None, Some(k)) => {
            warn!(target: "net", "identity: net.key on the command line (redacted in the log); pass the key in a {} boot module instead",
                catenary_net::nodekey::NODE_KEY_FILE);
            Identity::from_secret_bytes(k)
        }
        (None, None) => {
            warn!(target: "net", "no node key: using a random identity");
            Identity::from_secret_bytes(seeds.identity)
        }
    };
    let mut cluster = Cluster::default();
    for m in modules {
        let Some(mut data) = memory::boot_module(m) else { continue };
        // On PVH there is one module: the cluster file may ride in the guest bundle's cpio.
        if !Cluster::is_cluster_file(data) {
            if let Some(c) = catenary_bootinfo::ImageStore::parse(data).ok().and_then(|s| s.get("cluster.txt")) {
                data = c;
            }
        }
        if Cluster::is_cluster_file(data) {
            match core::str::from_utf8(data).map_err(|_| String::from("not UTF-8")).and_then(|t| Cluster::parse(t).map_err(|e| alloc::format!("{e}"))) {
                Ok(c) => cluster = c,
                Err(e) => warn!(target: "net", "cluster file rejected ({}): no peers", e),
            }
        }
    }
    let now = time::now_ns();
    let unix_at_origin = wall_clock_at_boot(cmdline, now);
    let rng_seed = seeds.fabric;
    let mut nic = nic;
    // this run's incarnation (peers tell our calls from an earlier boot's): a hash of the
    // fabric seed, which itself never leaves the node
    let h = netfabric::crypto::hash(&[b"catenary fabric ipc incarnation", &rng_seed]);
    let incarnation = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let test_loss = test_loss(cmdline, u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]));
    let mut node = Node::new(&mut nic, NodeConfig { identity, cluster, unix_time_at_origin: unix_at_origin, rng_seed }, now);
    if let Some((pct, seed)) = test_loss {
        node.set_test_loss(pct, seed);
    }
    let rpc = Rpc::new(node.fabric_addr, incarnation);
    node.connect_all(now);
    let st = State {
        nic,
        node,
        ping: crate::cmdline::get(cmdline, "net.ping").map(String::from),
        bench: crate::cmdline::get(cmdline, "net.bench").map(String::from),
        wait_s: crate::cmdline::get(cmdline, "net.wait").and_then(|w| w.parse().ok()).unwrap_or(60),
        irq: None,
        ipccall: crate::cmdline::get(cmdline, "net.ipccall").map(String::from),
        restart_probe: crate::cmdline::get(cmdline, "net.nicd_restart").map(String::from),
        rpcsvc: crate::cmdline::get(cmdline, "net.rpcsvc").is_some(),
        panicsvc: crate::cmdline::get(cmdline, "net.panicsvc").is_some(),
        rpctest: crate::cmdline::get(cmdline, "net.rpctest").map(String::from),
        rpcquota: crate::cmdline::get(cmdline, "net.rpcquota").map(String::from),
        ipcbench: crate::cmdline::get(cmdline, "net.ipcbench").map(String::from),
        ipc_logged: [0; 4],
        vm_routes: alloc::vec::Vec::new(),
        rpc,
    };
    let mut st = alloc::boxed::Box::new(st);
    if user_irq.is_some() {
        st.irq = user_irq;
    } else if crate::cmdline::get(cmdline, "net.irq") == Some("off") {
        info!(target: "net", "virtio-net: net.irq=off: polling");
    } else {
        st.irq = enable_irq(&mut st);
    }
    router_up(&mut st);
    Some(st)
}

/// `net.test-loss=PCT` (1..=90): TESTS ONLY — drop PCT% of the fabric IPC datagrams this
/// node sends and receives, to show that remote calls and sends survive loss. Logged loudly;
/// anything else than a number in range is refused (no loss).
fn test_loss(cmdline: &str, seed: u64) -> Option<(u64, u64)> {
    let v = crate::cmdline::get(cmdline, "net.test-loss")?;
    match v.parse::<u64>() {
        Ok(pct) if (1..=90).contains(&pct) => {
            warn!(target: "net", "TEST ONLY: net.test-loss={}: dropping {}% of fabric IPC datagrams in each direction", pct, pct);
            Some((pct, seed))
        }
        _ => {
            warn!(target: "net", "net.test-loss={:?} refused (a test-only switch: 1..=90 percent)", v);
            None
        }
    }
}

/// Unix seconds at boot per the CMOS RTC, read by [`record_rtc`] before `rtcd` owns the RTC.
static BOOT_RTC: Mutex<Option<u64>> = Mutex::new(None);

/// Read the CMOS RTC once, early in boot (before `rtcd` starts): the fabric's handshake
/// timestamps come from it, so a rebooted node can reconnect at once.
pub fn record_rtc() {
    let Some(c) = catenary_arch::rtc::read() else {
        warn!(target: "net", "CMOS RTC: no stable reading");
        return;
    };
    let raw = catenary_net::walltime::Cmos {
        seconds: c.seconds, minutes: c.minutes, hours: c.hours, day: c.day, month: c.month, year: c.year, century: c.century, status_b: c.status_b,
    };
    match raw.unix_seconds() {
        Ok(t) => {
            let at_boot = catenary_net::walltime::unix_at_origin(t, time::now_ns());
            info!(target: "net", "wall clock: CMOS RTC reads Unix time {} (boot at {})", t, at_boot);
            *BOOT_RTC.lock() = Some(at_boot);
        }
        Err(e) => warn!(target: "net", "CMOS RTC unusable ({:?}): {:02x?}", e, raw),
    }
}

/// Unix seconds at boot (the fabric clock's origin): the RTC's, else `net.time=SECS` (given at
/// `now` ns of uptime), else the epoch (a rebooted node then waits for its old timestamps).
fn wall_clock_at_boot(cmdline: &str, now: u64) -> u64 {
    if let Some(t) = *BOOT_RTC.lock() {
        return t;
    }
    match crate::cmdline::get(cmdline, "net.time").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) => catenary_net::walltime::unix_at_origin(t, now),
        None => {
            warn!(target: "net", "no RTC and no net.time: handshake timestamps start at the epoch");
            0
        }
    }
}

/// The node's seeds from RDSEED/RDRAND and TSC jitter (`catenary_net::entropy`); `None`
/// (networking off) on a node without a hardware entropy source unless `net.insecure-entropy`.
fn seeds(cmdline: &str) -> Option<catenary_net::entropy::Seeds> {
    use catenary_net::entropy::{self as ent, HwSource, Verdict};
    let sample = entropy::sample();
    let source = match sample.source {
        entropy::Source::Rdseed => HwSource::Rdseed,
        entropy::Source::Rdrand => HwSource::Rdrand,
        entropy::Source::None => HwSource::None,
    };
    match ent::check(source, &sample.hw, crate::cmdline::get(cmdline, ent::INSECURE_FLAG).is_some()) {
        Ok(Verdict::Hardware(s)) => info!(target: "net", "entropy: {:?} and TSC jitter", s),
        Ok(Verdict::Insecure) => {
            for _ in 0..3 {
                warn!(target: "net", "{}", ent::INSECURE_WARNING);
            }
        }
        Err(e) => {
            log::error!(target: "net", "{}: networking off", e);
            return None;
        }
    }
    Some(ent::derive(&ent::material(&sample.hw, &sample.jitter)))
}

/// Make `netd` the node's IPC router: the routing table, the kernel's hand-off of remote
/// sends and calls (notifications on the endpoint `netd` waits on) and the `echo` service's
/// task /128.
fn router_up(st: &mut State) {
    let node = st.node.fabric_addr;
    catenary_arch::cpu::without_interrupts(|| *ROUTER.lock() = Some(IpcRouter::new(node)));
    let wake = match st.irq.and_then(crate::task::endpoint_of_slot) {
        Some(ep) => ep,
        // polling: an endpoint only for the kernel's notifications (netd polls it anyway)
        None => crate::task::create_endpoint_for_current(1).1,
    };
    crate::task::router_up(node.octets(), wake);
    let echo = crate::task::echo_endpoint();
    match bind_endpoint(echo) {
        Ok(a) => info!(target: "net", "ipc: routing fabric IPC (UDP {}) for {}/64; endpoint {} (echo) has fabric address {}",
            netfabric::ipc::FABRIC_IPC_PORT, netfabric::identity::Prefix64::of(&node).network(), echo, a),
        Err(_) => info!(target: "net", "ipc: routing fabric IPC (UDP {}) for {}/64 (no echo service to bind)",
            netfabric::ipc::FABRIC_IPC_PORT, netfabric::identity::Prefix64::of(&node).network()),
    }    if st.rpcsvc {
        // binds the next task /128 (prefix:200::2)
        crate::task::spawn_kernel("rpcsvc", Priority::NORMAL, Affinity::ANY, crate::rpcprobe::rpcsvc, 0);
    }
    if st.panicsvc {
        // binds the next task /128 (prefix:200::2)
        crate::task::spawn_kernel("panicsvc", Priority::NORMAL, Affinity::ANY, crate::netdprobe::panicsvc, 0);
    }
}

/// Move fabric IPC: the kernel's remote sends and calls out, answers to calls from other
/// nodes out, inbound frames decoded and delivered, retransmissions (`catenary_net::rpc`).
/// Returns whether anything happened.
fn ipc_pump(st: &mut State) -> bool {
    use catenary_ipc::IpcError;
    use core::net::Ipv6Addr;
    let now = time::now_ns();
    crate::task::reap_remote_calls();
    let (outs, replies) = crate::task::take_remote();
    let mut active = !outs.is_empty() || !replies.is_empty();
    let mut tx: alloc::vec::Vec<Frame> = alloc::vec::Vec::new();
    for o in outs {
        let dst = Ipv6Addr::from(o.dst);
        let Some(src) = with_router(|r| r.source_for(o.src.map(Ipv6Addr::from))) else { break };
        let body = Body { label: o.msg.label, words: o.msg.words };
        let sent = if o.token != 0 {
            match st.rpc.start_call(now, src, dst, o.endpoint, o.token, body) {
                Some(f) => f.packet().is_some_and(|p| st.node.send_ipc(&p, now)),
                None => false,
            }
        } else {
            match st.rpc.send(now, src, dst, o.endpoint, body) {
                Ok(Some(f)) => f.packet().is_some_and(|p| st.node.send_ipc(&p, now)),
                Ok(None) => true, // waits for the stream's window
                Err(_) => {
                    warn!(target: "net", "ipc: send to {} dropped: its stream's backlog is full (lost sends: {})", dst, st.rpc.counters.sends_lost);
                    continue;
                }
            }
        };
        if st.ipc_logged[0] < 8 {
            st.ipc_logged[0] += 1;
            info!(target: "net", "ipc: {} to {} endpoint {} {}", if o.token != 0 { "call" } else { "send" }, dst, o.endpoint,
                if sent { "forwarded over the fabric" } else { "unreachable (no peer routes it)" });
        }
        if !sent && o.token != 0 {
            st.rpc.cancel_call(o.token);
            crate::task::complete_remote_call(o.token, o.dst, Err(IpcError::Unreachable));
        }
    }
    for r in replies {
        let answer = match r.result {
            Ok(m) => Ok(Body { label: m.label, words: m.words }),
            Err(e) => Err(e.code()),
        };
        tx.push(st.rpc.answer(now, r.to, answer));
    }
    let over_quota = st.rpc.counters.over_quota;
    while let Some(p) = st.node.take_ipc() {
        active = true;
        let Some(d) = with_router(|r| (r.decode(&p), r.counters)) else { break };
        match d {
            (Ok(f), _) => {
                let logged = &mut st.ipc_logged[1];
                let (out, done) = st.rpc.inbound(now, f, &mut |d| deliver(d, logged));
                tx.extend(out);
                if let Some(c) = done {
                    let result = c.result.map(|b| catenary_ipc::Message::new(b.label, b.words))
                        .map_err(|code| IpcError::from_code(code).unwrap_or(IpcError::Unreachable));
                    crate::task::complete_remote_call(c.call_id, c.from.octets(), result);
                }
            }
            (Err(e), c) => {
                if let RouteError::Unbound(a) = e {
                    if st.ipc_logged[2] < 8 {
                        st.ipc_logged[2] += 1;
                        info!(target: "net", "ipc: dropped a frame to unbound {} (dropped to unbound /128s: {})", a, c.dropped_unbound);
                    }
                } else if st.ipc_logged[3] < 8 {
                    st.ipc_logged[3] += 1;
                    info!(target: "net", "ipc: refused a frame: {:?} (refused: {})", e, c.dropped_malformed);
                }
                // a well-formed call that cannot be delivered is answered with an error
                if let Some(f) = IpcRouter::refusal(&p, IpcError::NoEndpoint.code()) {
                    tx.push(f);
                }
            }
        }
    }
    if st.rpc.counters.over_quota > over_quota && st.ipc_logged[3] < 8 {
        st.ipc_logged[3] += 1;
        info!(target: "net", "ipc: refused calls over the quota of {} in flight per source (over quota: {})",
            catenary_net::ipcroute::CALLS_PER_SOURCE, st.rpc.counters.over_quota);
    }
    tx.extend(st.rpc.poll(now, crate::task::remote_call_waiting));
    active |= !tx.is_empty();
    for f in tx {
        if let Some(p) = f.packet() {
            st.node.send_ipc(&p, now);
        }
    }
    active
}

/// Hand a call or send from another node to its local endpoint (`catenary_net::rpc` decided
/// it is due: not a duplicate, in stream order).
fn deliver(d: Delivery, logged: &mut u32) -> Outcome {
    use catenary_ipc::{IpcError, Message};
    let (from, to, endpoint, body, call) = match d {
        Delivery::Call { ticket, endpoint, body } => (ticket.from, ticket.to, endpoint, body, Some(ticket)),
        Delivery::Send { from, to, endpoint, body } => (from, to, endpoint, body, None),
    };
    let r = crate::task::deliver_remote(endpoint, Message::new(body.label, body.words), call, from.octets());
    if *logged < 8 {
        *logged += 1;
        info!(target: "net", "ipc: {} from {} to {} -> endpoint {}: {}", if call.is_some() { "call" } else { "send" },
            from, to, endpoint, match r { Ok(()) => "delivered", Err(_) => "refused" });
    }
    match r {
        Ok(()) => Outcome::Delivered,
        // the endpoint's queue (or the kernel's table of calls from other nodes) is full:
        // the sender's retransmission tries again
        Err(IpcError::QueueFull) => Outcome::Busy,
        Err(e) => {
            if e == IpcError::DeadPeer {
                with_router(|rt| rt.unbind(&to));
            }
            Outcome::Failed(e.code())
        }
    }
}

/// The target of the `net.ipccall` probe: the peer's echo /128 and an unbound /128.
static IPC_PROBE: Mutex<Option<(String, core::net::Ipv6Addr, core::net::Ipv6Addr, core::net::Ipv6Addr)>> = Mutex::new(None);

/// `net.ipccall=NAME`: a kernel task calls NAME's `echo` by its fabric address with the
/// ordinary `call` syscall (only the capability's address differs from a local call), then
/// sends to an unbound /128 of NAME's /64.
fn ipc_client(_: u64) {
    use catenary_ipc::{Address, Capability, Message, Rights};
    let Some((peer, echo, unbound, peer_node)) = catenary_arch::cpu::without_interrupts(|| IPC_PROBE.lock().take()) else { return };
    let cap = |a: core::net::Ipv6Addr| Capability { target: Address { node: a.octets(), endpoint: 0 }, rights: Rights::SEND, badge: 0 };
    // a bound task: its calls go out from its own /128, which the callee is told
    let (_, own) = crate::task::create_endpoint_for_current(1);
    match bind_endpoint(own) {
        Ok(a) => info!(target: "net", "ipc: ipcclient's endpoint {} has fabric address {}", own, a),
        Err(e) => warn!(target: "net", "ipc: ipcclient cannot bind its endpoint: {:?}", e),
    }
    let slot = crate::task::give_current(cap(echo));
    let mut ok = 0;
    for i in 1..=3u64 {
        let t0 = time::now_ns();
        match crate::task::call(slot, Message::new(7, [i, i * 2, i * 3, 0xfab])) {
            Ok(r) => {
                let good = r.label == 8 && r.words == [i + 1, i * 2 + 1, i * 3 + 1, 0xfac];
                if good {
                    ok += 1;
                }
                info!(target: "net", "ipc: remote call {} to {} echo at {}: reply label {} words {:?} in {} us{}",
                    i, peer, echo, r.label, r.words, (time::now_ns() - t0) / 1000, if good { "" } else { " (WRONG)" });
            }
            Err(e) => warn!(target: "net", "ipc: remote call {} to {} echo at {}: {:?}", i, peer, echo, e),
        }
    }
    info!(target: "net", "ipc: remote calls to {} echo: {}/3 replies", peer, ok);
    let s2 = crate::task::give_current(Capability { target: Address { node: unbound.octets(), endpoint: 1 }, rights: Rights::SEND, badge: 0 });
    let r = crate::task::send(s2, Message::new(9, [0; 4]));
    info!(target: "net", "ipc: send to unbound {} of {}: {:?}", unbound, peer, r);
    let t0 = time::now_ns();
    let r = crate::task::call(s2, Message::new(9, [0; 4]));
    info!(target: "net", "ipc: call to unbound {} of {}: {:?} in {} us", unbound, peer, r.map(|m| m.label), (time::now_ns() - t0) / 1000);
    // the wire never names an endpoint by number: echo's endpoint at the peer's node /128
    // (same boot order, so the same number there) is refused like an unbound /128
    let ep = crate::task::echo_endpoint();
    let s3 = crate::task::give_current(Capability { target: Address { node: peer_node.octets(), endpoint: ep }, rights: Rights::SEND, badge: 0 });
    let r = crate::task::call(s3, Message::new(9, [0; 4]));
    info!(target: "net", "ipc: call to endpoint {} by number at {}'s node address {}: {:?}", ep, peer, peer_node, r.map(|m| m.label));
    info!(target: "net", "ipc probe done");
}

/// Bring up the ring-3 driver `nicd` for the first virtio-net function. `nicd` is a service of
/// the manifest (hypervisor/manifest), started and restarted by the supervisor with its grants
/// (the device's virtio structures, DMA pages, the receive interrupt, a send capability to
/// `netd`'s endpoint); `netd` programs MSI-X entry 0 -> `NIC_VECTOR` on the BSP, provides the
/// endpoint `nicd` reports to (which lets the supervisor's request to start it go ahead), tells
/// it where the structures are and waits for its frame ring. Returns the NIC and the slot of
/// `netd`'s endpoint. Ok(None): no device.
fn start_nicd() -> Result<Option<(Nic, usize)>, &'static str> {
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
fn attach_nicd(u: &mut UserNic, old: Option<catenary_sched::TaskId>) -> Result<(bool, bool), &'static str> {
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
fn nic_watch(st: &mut State) {
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
fn enable_irq(st: &mut State) -> Option<usize> {
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

/// Poll until `done` returns true or `timeout_ns` passes.
fn pump(st: &mut State, timeout_ns: u64, mut done: impl FnMut(&mut Node) -> bool) -> bool {
    let end = time::now_ns() + timeout_ns;
    loop {
        nic_watch(st);
        st.node.poll(&mut st.nic, time::now_ns());
        if ipc_pump(st) {
            st.node.poll(&mut st.nic, time::now_ns());
        }
        if done(&mut st.node) {
            return true;
        }
        if time::now_ns() > end {
            return false;
        }
        crate::task::yield_now();
    }
}

fn ping(st: &mut State, path: Path, dst: core::net::Ipv6Addr, count: u32, len: usize) -> Option<catenary_net::PingReport> {
    ping_every(st, path, dst, count, len, 0)
}

/// `count` echoes, the next one `interval_ns` after the previous reply (or timeout).
fn ping_every(st: &mut State, path: Path, dst: core::net::Ipv6Addr, count: u32, len: usize, interval_ns: u64) -> Option<catenary_net::PingReport> {
    st.node.start_ping(path, dst, count, len, interval_ns, time::now_ns());
    let mut rep = None;
    pump(st, 10_000_000_000 + count as u64 * (1_100_000_000 + interval_ns), |n| {
        rep = n.take_ping();
        rep.is_some()
    });
    rep
}

fn stream(st: &mut State, path: Path, dst: core::net::Ipv6Addr, total: u64) -> Option<(u64, u64)> {
    st.node.start_stream(path, dst, total, 1200, time::now_ns());
    let mut r = None;
    pump(st, 120_000_000_000, |n| {
        r = n.take_stream();
        r.is_some()
    });
    r
}

fn wait_session(st: &mut State, peer: &str) -> Option<catenary_net::Peer> {
    let Some(p) = st.node.peer_by_name(peer).cloned() else {
        warn!(target: "net", "{} is not a peer in the cluster file", peer);
        return None;
    };
    // The peer whose key sorts lower initiates at boot (`connect_all`); initiate ourselves only
    // if no session came up by itself within 3 s, so that handshakes do not cross.
    if !pump(st, 3_000_000_000, |n| n.peer_by_name(peer).is_some_and(|p| p.established)) {
        st.node.connect(peer, time::now_ns());
    }
    let ok = pump(st, st.wait_s * 1_000_000_000, |n| n.peer_by_name(peer).is_some_and(|p| p.established));
    if !ok {
        warn!(target: "net", "fabric: no session with {} after {} s", peer, st.wait_s);
        return None;
    }
    Some(p)
}

/// The pause before each echo of the idle-latency probe.
const IDLE_PAUSE_NS: u64 = 300_000_000;

/// How long `netd` waits for an interrupt before running the stack's timers anyway.
const IDLE_WAKE_NS: u64 = 10_000_000;

/// Bytes per throughput run: 3500 datagrams of 1200 bytes.
const STREAM_BYTES: u64 = 3500 * 1200;

/// Start the `ipcclient` task: remote calls to `peer`'s echo service (see [`ipc_client`]).
fn start_ipc_probe(peer: &str, p: &catenary_net::Peer) {
    use netfabric::identity::{AddressKind, Prefix64};
    let pfx = Prefix64::of(&p.fabric_addr);
    // the peer's netd binds its echo service first: task index 1
    let (Some(echo), Some(unbound)) = (pfx.workload_address(AddressKind::Task, 1), pfx.workload_address(AddressKind::Task, 0x99)) else { return };
    catenary_arch::cpu::without_interrupts(|| *IPC_PROBE.lock() = Some((String::from(peer), echo, unbound, p.fabric_addr)));
    crate::task::spawn_kernel("ipcclient", Priority::NORMAL, Affinity::ANY, ipc_client, 0);
}

/// `net.nicd_restart=NAME`: fabric echoes to NAME, one after the other, until `nicd` died in
/// the middle of them and the supervisor restarted it; then the session, echoes and remote
/// calls must work again.
fn restart_probe(st: &mut State, peer: &str) {
    use crate::task::supervisor;
    let Some(p) = wait_session(st, peer) else { return };
    let before = supervisor::service_restarts("nicd");
    let t0 = time::now_ns();
    let (mut sent, mut answered) = (0, 0);
    loop {
        let attached = matches!(&st.nic, Nic::User(u) if supervisor::service_task("nicd") == Some(u.task));
        if supervisor::service_restarts("nicd") > before && attached {
            break;
        }
        if time::now_ns() - t0 > 120_000_000_000 {
            warn!(target: "net", "restart probe: nicd was not restarted within 120 s");
            return;
        }
        if let Some(r) = ping(st, Path::Fabric, p.fabric_addr, 1, 100) {
            sent += r.sent;
            answered += r.received;
        }
    }
    info!(target: "net", "restart probe: nicd restarted during fabric traffic to {} (restarts: {}; {} of {} echoes answered meanwhile; frames freed while a dead driver's device could master the bus: {})",
        peer, supervisor::service_restarts("nicd"), answered, sent, supervisor::dma_freed_while_mastering());
    let Some(p) = wait_session(st, peer) else { return };
    if let Some(r) = ping(st, Path::Fabric, p.fabric_addr, 5, 100) {
        info!(target: "net", "fabric ping after nicd restart {} {}: {}/{} replies, median rtt {} us", peer, p.fabric_addr, r.received, r.sent, r.median_ns() / 1000);
    }
    start_ipc_probe(peer, &p);
}

fn probes(st: &mut State) {
    if let Some(peer) = st.ipccall.take() {
        if let Some(p) = wait_session(st, &peer) {
            start_ipc_probe(&peer, &p);
        } else {
            info!(target: "net", "ipc probe done");
        }
    }
    if let Some(peer) = st.restart_probe.take() {
        restart_probe(st, &peer);
    }
    if let Some(arg) = st.rpctest.take() {
        let mut it = arg.split(',');
        let peer = String::from(it.next().unwrap_or(""));
        let ghost = it.next().and_then(|g| {
            let p = st.node.peer_by_name(g)?;
            Some((String::from(g), netfabric::identity::Prefix64::of(&p.fabric_addr).workload_address(netfabric::identity::AddressKind::Task, 1)?))
        });
        if let Some(p) = wait_session(st, &peer) {
            let pfx = netfabric::identity::Prefix64::of(&p.fabric_addr);
            if let Some(svc) = pfx.workload_address(netfabric::identity::AddressKind::Task, 2) {
                catenary_arch::cpu::without_interrupts(|| *crate::rpcprobe::TEST.lock() = Some((peer.clone(), svc, ghost)));
                crate::task::spawn_kernel("rpctest", Priority::NORMAL, Affinity::ANY, crate::rpcprobe::rpctest, 0);
            }
        } else {
            info!(target: "net", "rpctest done");
        }
    }
    if let Some(arg) = st.rpcquota.take() {
        let (mode, peer) = arg.split_once(':').unwrap_or(("fill", arg.as_str()));
        let svc = wait_session(st, peer).and_then(|p| netfabric::identity::Prefix64::of(&p.fabric_addr).workload_address(netfabric::identity::AddressKind::Task, 2));
        match svc {
            Some(svc) => crate::rpcprobe::rpcquota_start(peer, svc, mode == "fill"),
            None => info!(target: "net", "rpcquota done"),
        }
    }
    if let Some(peer) = st.ipcbench.take() {
        if let Some(p) = wait_session(st, &peer) {
            let echo = netfabric::identity::Prefix64::of(&p.fabric_addr).workload_address(netfabric::identity::AddressKind::Task, 1);
            if let Some(echo) = echo {
                catenary_arch::cpu::without_interrupts(|| *crate::rpcprobe::BENCH.lock() = Some((peer.clone(), echo)));
                crate::task::spawn_kernel("ipcbench", Priority::NORMAL, Affinity::ANY, crate::rpcprobe::ipcbench, 0);
            }
        } else {
            info!(target: "net", "bench ipc: remote done");
        }
    }
    if let Some(peer) = st.ping.take() {
        if let Some(p) = wait_session(st, &peer) {
            if let Some(r) = ping(st, Path::Fabric, p.fabric_addr, 5, 100) {
                info!(target: "net", "fabric ping {} {}: {}/{} replies, median rtt {} us", peer, p.fabric_addr, r.received, r.sent, r.median_ns() / 1000);
            }
            if let Some(r) = ping(st, Path::Underlay, p.underlay, 3, 100) {
                info!(target: "net", "underlay ping {} {}: {}/{} replies, median rtt {} us", peer, p.underlay, r.received, r.sent, r.median_ns() / 1000);
            }
            // Echoes that each find the peer idle (its netd waiting, not polling: the polling
            // fallback busy-polls for 200 ms after traffic, so the pause is longer than that).
            if let Some(r) = ping_every(st, Path::Fabric, p.fabric_addr, 9, 100, IDLE_PAUSE_NS) {
                info!(target: "net", "fabric idle ping {} {}: {}/{} replies, median rtt {} us ({} ms idle before each echo)",
                    peer, p.fabric_addr, r.received, r.sent, r.median_ns() / 1000, IDLE_PAUSE_NS / 1_000_000);
            }
            info!(target: "net", "virtio-net interrupts taken: {} ({})", crate::task::irq_count(crate::task::NIC_VECTOR),
                if st.irq.is_some() { "MSI-X" } else { "polling" });
        }
        info!(target: "net", "ping done");
    }
    if let Some(peer) = st.bench.take() {
        if let Some(p) = wait_session(st, &peer) {
            // warm up both paths (neighbour cache, session)
            let _ = ping(st, Path::Underlay, p.underlay, 3, 56);
            let _ = ping(st, Path::Fabric, p.fabric_addr, 3, 56);
            let mut rtt = [0u64; 2];
            let mut tput = [0f64; 2];
            for (i, (path, dst)) in [(Path::Fabric, p.fabric_addr), (Path::Underlay, p.underlay)].into_iter().enumerate() {
                let name = if i == 0 { "fabric" } else { "plain" };
                if let Some(r) = ping(st, path, dst, 200, 56) {
                    rtt[i] = r.median_ns();
                    info!(target: "net", "bench net: {} rtt median {} us ({}/{} replies, 56-byte echo)", name, r.median_ns() / 1000, r.received, r.sent);
                }
                if let Some((bytes, ns)) = stream(st, path, dst, STREAM_BYTES) {
                    tput[i] = bytes as f64 * 8.0 / (ns as f64 / 1e9) / 1e6;
                    info!(target: "net", "bench net: {} throughput {:.1} Mbit/s ({} of {} bytes delivered in {} ms, 1200-byte UDP)",
                        name, tput[i], bytes, STREAM_BYTES, ns / 1_000_000);
                }
            }
            if rtt[1] > 0 && tput[0] > 0.0 {
                info!(target: "net", "bench net: fabric/plain latency ratio {:.2}, throughput ratio {:.2}",
                    rtt[0] as f64 / rtt[1] as f64, tput[0] / tput[1]);
            }
        }
        info!(target: "net", "bench net: done");
    }
}

fn netd(_: u64) {
    let Some(b) = BOOT.lock().take() else { return };
    let Some(mut st) = bring_up(&b.cmdline, &b.modules) else { return };
    drop(b);
    probes(&mut st);
    let mut last_active = time::now_ns();
    let mut last_report = 0;
    let mut irqs_seen = false;
    loop {
        nic_watch(&mut st);
        let now = time::now_ns();
        let mut active = st.node.poll(&mut st.nic, now);
        if ipc_pump(&mut st) {
            active = true;
            st.node.poll(&mut st.nic, time::now_ns());
        }
        if vm_pump(&mut st) {
            active = true;
            st.node.poll(&mut st.nic, time::now_ns());
            vm_pump(&mut st);
        }
        if active {
            last_active = now;
        }
        if crate::rpcprobe::REPORT.swap(false, core::sync::atomic::Ordering::Relaxed) {
            info!(target: "net", "ipc: reliability counters {:?}, datagrams dropped by net.test-loss {}", st.rpc.counters, st.node.counters.test_dropped);
        }
        if now - last_report > 30_000_000_000 {
            last_report = now;
            let c = st.node.fabric().counters();
            log::debug!(target: "net", "fabric counters: in {} out {} dropped {}", st.node.counters.fabric_in, st.node.counters.fabric_out, c.total_dropped());
        }
        if let Some(slot) = st.irq {
            // Interrupt-driven: poll again while there is work; otherwise wait for the receive
            // interrupt (a notification that came during the poll is pending: no lost wakeup).
            if active {
                crate::task::yield_now();
            } else if let Ok(m) = crate::task::recv(slot, IDLE_WAKE_NS) {
                if !irqs_seen {
                    irqs_seen = true;
                    if m.label == ring::LABEL_RX {
                        info!(target: "net", "virtio-net: frames from nicd woke netd");
                    } else {
                        info!(target: "net", "virtio-net: receive interrupt woke netd");
                    }
                }
            }
        } else if now - last_active < 200_000_000 {
            crate::task::yield_now();
        } else {
            crate::task::sleep_ns(1_000_000);
        }
    }
}
