//! The in-kernel `netd` task (`net.netd=kernel`): brings the stack up on the NIC, runs it, and
//! routes fabric IPC (the kernel's remote sends and calls out, frames from other nodes in).

use super::*;

pub(super) struct State {
    pub(super) nic: Nic,
    pub(super) node: Node,
    /// The command line's probes (`probes.rs`): only in the probes kernel.
    #[cfg(feature = "probes")]
    pub(super) probe: ProbeArgs,
    /// The capability slot of the endpoint the NIC's interrupt notifies (None: polling).
    pub(super) irq: Option<usize>,
    /// Fabric IPC events logged so far (the first few of each kind are).
    pub(super) ipc_logged: [u32; 4],
    /// Fabric IPC's retransmissions, duplicate suppression and send streams.
    pub(super) rpc: Rpc,
}

/// The in-kernel `netd`'s probes as the command line arms them (probes kernel only).
#[cfg(feature = "probes")]
pub(super) struct ProbeArgs {
    pub(super) ping: Option<String>,
    pub(super) bench: Option<String>,
    pub(super) wait_s: u64,
    pub(super) ipccall: Option<String>,
    /// `net.nicd_restart=NAME` (test): fabric traffic to NAME until `nicd` has died and been
    /// restarted (with `nicd.crash_after=N`), then the session and a remote call again.
    pub(super) restart_probe: Option<String>,
    /// `net.rpcsvc=1`, `net.rpctest=NAME[,GHOST]`, `net.ipcbench=NAME` (see `rpcprobe`).
    pub(super) rpcsvc: bool,
    /// `net.panicsvc=1` (see `netdprobe`).
    pub(super) panicsvc: bool,
    pub(super) rpctest: Option<String>,
    /// `net.rpcquota=fill|other:NAME` (see `rpcprobe::rpcquota`).
    pub(super) rpcquota: Option<String>,
    pub(super) ipcbench: Option<String>,
}

#[cfg(feature = "probes")]
impl ProbeArgs {
    fn parse(cmdline: &str) -> ProbeArgs {
        ProbeArgs {
            ping: crate::cmdline::get(cmdline, "net.ping").map(String::from),
            bench: crate::cmdline::get(cmdline, "net.bench").map(String::from),
            wait_s: crate::cmdline::get(cmdline, "net.wait").and_then(|w| w.parse().ok()).unwrap_or(60),
            ipccall: crate::cmdline::get(cmdline, "net.ipccall").map(String::from),
            restart_probe: crate::cmdline::get(cmdline, "net.nicd_restart").map(String::from),
            rpcsvc: crate::cmdline::get(cmdline, "net.rpcsvc").is_some(),
            panicsvc: crate::cmdline::get(cmdline, "net.panicsvc").is_some(),
            rpctest: crate::cmdline::get(cmdline, "net.rpctest").map(String::from),
            rpcquota: crate::cmdline::get(cmdline, "net.rpcquota").map(String::from),
            ipcbench: crate::cmdline::get(cmdline, "net.ipcbench").map(String::from),
        }
    }
}

pub(super) struct Boot {
    pub(super) cmdline: String,
    pub(super) modules: alloc::vec::Vec<Module>,
}

pub(super) static BOOT: Mutex<Option<Boot>> = Mutex::new(None);

pub(super) fn bring_up(cmdline: &str, modules: &[Module]) -> Option<alloc::boxed::Box<State>> {
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
    #[cfg(feature = "probes")]
    let test_loss = test_loss(cmdline, u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]));
    let mut node = Node::new(&mut nic, NodeConfig { identity, cluster, unix_time_at_origin: unix_at_origin, rng_seed }, now);
    #[cfg(feature = "probes")]
    if let Some((pct, seed)) = test_loss {
        node.set_test_loss(pct, seed);
    }
    // as the ring-3 netd does: the fabric's cipher code by measurement unless net.cipher= names it
    let force = crate::cmdline::get(cmdline, "net.cipher").and_then(|v| {
        let r = Node::parse_cipher_word(v);
        if r.is_none() {
            log::warn!(target: "net", "net.cipher={:?} refused (vector or portable): measuring instead", v);
        }
        r
    });
    if node.choose_cipher(catenary_arch::cpu::rdtsc, force).is_err() {
        panic!("knetd: no ChaCha20-Poly1305 code gives RFC 8439's known answer on this CPU");
    }
    let rpc = Rpc::new(node.fabric_addr, incarnation);
    node.connect_all(now);
    let st = State {
        nic,
        node,
        #[cfg(feature = "probes")]
        probe: ProbeArgs::parse(cmdline),
        irq: None,
        ipc_logged: [0; 4],
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

/// Make `netd` the node's IPC router: the routing table, the kernel's hand-off of remote
/// sends and calls (notifications on the endpoint `netd` waits on) and the `echo` service's
/// task /128.
pub(super) fn router_up(st: &mut State) {
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
    }
    #[cfg(feature = "probes")]
    if st.probe.rpcsvc {
        // binds the next task /128 (prefix:200::2)
        crate::task::spawn_kernel("rpcsvc", Priority::NORMAL, Affinity::ANY, crate::rpcprobe::rpcsvc, 0);
    }
    #[cfg(feature = "probes")]
    if st.probe.panicsvc {
        // binds the next task /128 (prefix:200::2)
        crate::task::spawn_kernel("panicsvc", Priority::NORMAL, Affinity::ANY, crate::netdprobe::panicsvc, 0);
    }
}

/// Move fabric IPC: the kernel's remote sends and calls out, answers to calls from other
/// nodes out, inbound frames decoded and delivered, retransmissions (`catenary_net::rpc`).
/// Returns whether anything happened.
pub(super) fn ipc_pump(st: &mut State) -> bool {
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
pub(super) fn deliver(d: Delivery, logged: &mut u32) -> Outcome {
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

/// Poll until `done` returns true or `timeout_ns` passes.
pub(super) fn pump(st: &mut State, timeout_ns: u64, mut done: impl FnMut(&mut Node) -> bool) -> bool {
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

/// How long `netd` waits for an interrupt before running the stack's timers anyway.
pub(super) const IDLE_WAKE_NS: u64 = 10_000_000;

pub(super) fn netd(_: u64) {
    let Some(b) = BOOT.lock().take() else { return };
    let Some(mut st) = bring_up(&b.cmdline, &b.modules) else { return };
    drop(b);
    #[cfg(feature = "probes")]
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
        if active {
            last_active = now;
        }
        #[cfg(feature = "probes")]
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
