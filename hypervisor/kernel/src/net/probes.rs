//! The in-kernel stack's test probes (`net.ping`, `net.bench`, `net.ipccall`, `net.nicd_restart`,
//! `net.rpctest`, `net.rpcquota`, `net.ipcbench`).

use super::*;
use catenary_net::Path;

/// The target of the `net.ipccall` probe: the peer's echo /128 and an unbound /128.
pub(super) static IPC_PROBE: Mutex<Option<(String, core::net::Ipv6Addr, core::net::Ipv6Addr, core::net::Ipv6Addr)>> = Mutex::new(None);

/// `net.ipccall=NAME`: a kernel task calls NAME's `echo` by its fabric address with the
/// ordinary `call` syscall (only the capability's address differs from a local call), then
/// sends to an unbound /128 of NAME's /64.
pub(super) fn ipc_client(wait: u64) {
    use catenary_ipc::{Address, Capability, Message, Rights};
    let Some((peer, echo, unbound, peer_node)) = catenary_arch::cpu::without_interrupts(|| IPC_PROBE.lock().take()) else { return };
    let cap = |a: core::net::Ipv6Addr| Capability { target: Address { node: a.octets(), endpoint: 0 }, rights: Rights::SEND, badge: 0 };
    if wait != 0 && !crate::netdprobe::wait_router() {
        return info!(target: "net", "ipc probe done");
    }
    // a bound task: its calls go out from its own /128, which the callee is told
    let (_, own) = crate::task::create_endpoint_for_current(1);
    match bind_endpoint(own) {
        Ok(a) => info!(target: "net", "ipc: ipcclient's endpoint {} has fabric address {}", own, a),
        Err(e) => warn!(target: "net", "ipc: ipcclient cannot bind its endpoint: {:?}", e),
    }
    let slot = crate::task::give_current(cap(echo));
    if wait != 0 {
        // (ring-3 netd) until the peer's echo answers: the session is up
        let t0 = time::now_ns();
        while crate::task::call_timeout(slot, Message::new(7, [0; 4]), 2000).is_err() {
            if time::now_ns() - t0 > 120_000_000_000 {
                warn!(target: "net", "ipc: no answer from {} echo at {} in 120 s", peer, echo);
                break;
            }
            crate::task::sleep_ns(200_000_000);
        }
    }
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

pub(super) fn ping(st: &mut State, path: Path, dst: core::net::Ipv6Addr, count: u32, len: usize) -> Option<catenary_net::PingReport> {
    ping_every(st, path, dst, count, len, 0)
}

/// `count` echoes, the next one `interval_ns` after the previous reply (or timeout).
pub(super) fn ping_every(st: &mut State, path: Path, dst: core::net::Ipv6Addr, count: u32, len: usize, interval_ns: u64) -> Option<catenary_net::PingReport> {
    st.node.start_ping(path, dst, count, len, interval_ns, time::now_ns());
    let mut rep = None;
    pump(st, 10_000_000_000 + count as u64 * (1_100_000_000 + interval_ns), |n| {
        rep = n.take_ping();
        rep.is_some()
    });
    rep
}

pub(super) fn stream(st: &mut State, path: Path, dst: core::net::Ipv6Addr, total: u64) -> Option<(u64, u64)> {
    st.node.start_stream(path, dst, total, 1200, time::now_ns());
    let mut r = None;
    pump(st, 120_000_000_000, |n| {
        r = n.take_stream();
        r.is_some()
    });
    r
}

pub(super) fn wait_session(st: &mut State, peer: &str) -> Option<catenary_net::Peer> {
    let Some(p) = st.node.peer_by_name(peer).cloned() else {
        warn!(target: "net", "{} is not a peer in the cluster file", peer);
        return None;
    };
    // The peer whose key sorts lower initiates at boot (`connect_all`); initiate ourselves only
    // if no session came up by itself within 3 s, so that handshakes do not cross.
    if !pump(st, 3_000_000_000, |n| n.peer_by_name(peer).is_some_and(|p| p.established)) {
        st.node.connect(peer, time::now_ns());
    }
    let ok = pump(st, st.probe.wait_s * 1_000_000_000, |n| n.peer_by_name(peer).is_some_and(|p| p.established));
    if !ok {
        warn!(target: "net", "fabric: no session with {} after {} s", peer, st.probe.wait_s);
        return None;
    }
    Some(p)
}

/// The pause before each echo of the idle-latency probe.
pub(super) const IDLE_PAUSE_NS: u64 = 300_000_000;

/// Bytes per throughput run: 3500 datagrams of 1200 bytes.
pub(super) const STREAM_BYTES: u64 = 3500 * 1200;

/// Start the `ipcclient` task: remote calls to `peer`'s echo service (see [`ipc_client`]).
pub(super) fn start_ipc_probe(peer: &str, p: &catenary_net::Peer) {
    start_ipc_client(peer, p.fabric_addr, false);
}

/// Start the `ipcclient` task for `peer` (node /128 `node`); `wait`: it first calls the
/// peer's echo until it answers (the ring-3 `netd` runs the session; this task cannot see it).
pub(crate) fn start_ipc_client(peer: &str, node: core::net::Ipv6Addr, wait: bool) {
    use netfabric::identity::{AddressKind, Prefix64};
    let pfx = Prefix64::of(&node);
    // the peer's netd binds its echo service first: task index 1
    let (Some(echo), Some(unbound)) = (pfx.workload_address(AddressKind::Task, 1), pfx.workload_address(AddressKind::Task, 0x99)) else { return };
    catenary_arch::cpu::without_interrupts(|| *IPC_PROBE.lock() = Some((String::from(peer), echo, unbound, node)));
    crate::task::spawn_kernel("ipcclient", Priority::NORMAL, Affinity::ANY, ipc_client, wait as u64);
}

/// `net.nicd_restart=NAME`: fabric echoes to NAME, one after the other, until `nicd` died in
/// the middle of them and the supervisor restarted it; then the session, echoes and remote
/// calls must work again.
pub(super) fn restart_probe(st: &mut State, peer: &str) {
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

pub(super) fn probes(st: &mut State) {
    if let Some(peer) = st.probe.ipccall.take() {
        if let Some(p) = wait_session(st, &peer) {
            start_ipc_probe(&peer, &p);
        } else {
            info!(target: "net", "ipc probe done");
        }
    }
    if let Some(peer) = st.probe.restart_probe.take() {
        restart_probe(st, &peer);
    }
    if let Some(arg) = st.probe.rpctest.take() {
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
    if let Some(arg) = st.probe.rpcquota.take() {
        let (mode, peer) = arg.split_once(':').unwrap_or(("fill", arg.as_str()));
        let svc = wait_session(st, peer).and_then(|p| netfabric::identity::Prefix64::of(&p.fabric_addr).workload_address(netfabric::identity::AddressKind::Task, 2));
        match svc {
            Some(svc) => crate::rpcprobe::rpcquota_start(peer, svc, mode == "fill"),
            None => info!(target: "net", "rpcquota done"),
        }
    }
    if let Some(peer) = st.probe.ipcbench.take() {
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
    if let Some(peer) = st.probe.ping.take() {
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
    if let Some(peer) = st.probe.bench.take() {
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
