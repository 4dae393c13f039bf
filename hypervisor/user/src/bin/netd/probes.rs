//! The command line's network probes, run by the ring-3 `netd` itself on its first start
//! (they drive its smoltcp stack; the fabric IPC probes are kernel tasks that only need
//! `netd`'s routing, `kernel/src/netdprobe.rs`):
//!
//! - `net.ping=NAME`: once the session with NAME is up, 5 echoes to its fabric address, 3 to
//!   its link-local address, then 9 fabric echoes each after 300 ms of idle; the NIC's
//!   interrupt count;
//! - `net.bench=NAME`: round-trip latency (200 echoes) and UDP throughput (3500 × 1200 bytes,
//!   counted by the peer's responder) over the fabric and over the plain link;
//! - `net.wait=SECS`: how long they wait for the session (default 60).

use super::*;
use catenary_net::{Path, PingReport};

/// The pause before each echo of the idle-latency probe (longer than the polling fallback's
/// 200 ms busy window, so the peer is idle every time).
const IDLE_PAUSE_NS: u64 = 300_000_000;
/// Bytes per throughput run: 3500 datagrams of 1200 bytes.
const STREAM_BYTES: u64 = 3500 * 1200;

/// The value of `key=` on the command line.
pub fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Run netd's passes until `done` or `timeout_ns`.
fn pump(st: &mut State, timeout_ns: u64, mut done: impl FnMut(&mut Node) -> bool) -> bool {
    let end = now_ns() + timeout_ns;
    loop {
        step(st);
        if done(&mut st.node) {
            return true;
        }
        if now_ns() > end {
            return false;
        }
    }
}

fn ping_every(st: &mut State, path: Path, dst: Ipv6Addr, count: u32, len: usize, interval_ns: u64) -> Option<PingReport> {
    st.node.start_ping(path, dst, count, len, interval_ns, now_ns());
    let mut rep = None;
    pump(st, 10_000_000_000 + count as u64 * (1_100_000_000 + interval_ns), |n| {
        rep = n.take_ping();
        rep.is_some()
    });
    rep
}

fn ping(st: &mut State, path: Path, dst: Ipv6Addr, count: u32, len: usize) -> Option<PingReport> {
    ping_every(st, path, dst, count, len, 0)
}

fn stream(st: &mut State, path: Path, dst: Ipv6Addr, total: u64) -> Option<(u64, u64)> {
    st.node.start_stream(path, dst, total, 1200, now_ns());
    let mut r = None;
    pump(st, 120_000_000_000, |n| {
        r = n.take_stream();
        r.is_some()
    });
    r
}

fn wait_session(st: &mut State, peer: &str, wait_s: u64) -> Option<catenary_net::Peer> {
    let Some(p) = st.node.peer_by_name(peer).cloned() else {
        logf!("net: {} is not a peer in the cluster file", peer);
        return None;
    };
    // the peer whose key sorts lower initiates at boot; initiate only if no session came up
    // by itself within 3 s, so that handshakes do not cross
    if !pump(st, 3_000_000_000, |n| n.peer_by_name(peer).is_some_and(|p| p.established)) {
        st.node.connect(peer, now_ns());
    }
    if !pump(st, wait_s * 1_000_000_000, |n| n.peer_by_name(peer).is_some_and(|p| p.established)) {
        logf!("net: fabric: no session with {} after {} s", peer, wait_s);
        return None;
    }
    Some(p)
}

pub fn run(st: &mut State, cmdline: &str) {
    let wait_s = arg(cmdline, "net.wait").and_then(|w| w.parse().ok()).unwrap_or(60);
    if let Some(peer) = arg(cmdline, "net.ping") {
        if let Some(p) = wait_session(st, peer, wait_s) {
            if let Some(r) = ping(st, Path::Fabric, p.fabric_addr, 5, 100) {
                logf!("net: fabric ping {} {}: {}/{} replies, median rtt {} us", peer, p.fabric_addr, r.received, r.sent, r.median_ns() / 1000);
            }
            if let Some(r) = ping(st, Path::Underlay, p.underlay, 3, 100) {
                logf!("net: underlay ping {} {}: {}/{} replies, median rtt {} us", peer, p.underlay, r.received, r.sent, r.median_ns() / 1000);
            }
            if let Some(r) = ping_every(st, Path::Fabric, p.fabric_addr, 9, 100, IDLE_PAUSE_NS) {
                logf!("net: fabric idle ping {} {}: {}/{} replies, median rtt {} us ({} ms idle before each echo)",
                    peer, p.fabric_addr, r.received, r.sent, r.median_ns() / 1000, IDLE_PAUSE_NS / 1_000_000);
            }
            logf!("net: virtio-net interrupts taken: {} ({})", net(OP_NIC_IRQS, &mut [], 0).unwrap_or(0), if st.msix { "MSI-X" } else { "polling" });
        }
        logf!("net: ping done");
    }
    if let Some(peer) = arg(cmdline, "net.bench") {
        if let Some(p) = wait_session(st, peer, wait_s) {
            // warm up both paths (neighbour cache, session)
            let _ = ping(st, Path::Underlay, p.underlay, 3, 56);
            let _ = ping(st, Path::Fabric, p.fabric_addr, 3, 56);
            let mut rtt = [0u64; 2];
            let mut tput = [0f64; 2];
            for (i, (path, dst)) in [(Path::Fabric, p.fabric_addr), (Path::Underlay, p.underlay)].into_iter().enumerate() {
                let name = if i == 0 { "fabric" } else { "plain" };
                if let Some(r) = ping(st, path, dst, 200, 56) {
                    rtt[i] = r.median_ns();
                    logf!("net: bench net: {} rtt median {} us ({}/{} replies, 56-byte echo)", name, r.median_ns() / 1000, r.received, r.sent);
                }
                if let Some((bytes, ns)) = stream(st, path, dst, STREAM_BYTES) {
                    tput[i] = bytes as f64 * 8.0 / (ns as f64 / 1e9) / 1e6;
                    logf!("net: bench net: {} throughput {:.1} Mbit/s ({} of {} bytes delivered in {} ms, 1200-byte UDP)",
                        name, tput[i], bytes, STREAM_BYTES, ns / 1_000_000);
                }
            }
            if rtt[1] > 0 && tput[0] > 0.0 {
                logf!("net: bench net: fabric/plain latency ratio {:.2}, throughput ratio {:.2}", rtt[0] as f64 / rtt[1] as f64, tput[0] / tput[1]);
            }
        }
        logf!("net: bench net: done");
    }
}
