//! The command line's network probes, run by the ring-3 `netd` itself on its first start
//! (they drive its smoltcp stack; the fabric IPC probes are kernel tasks that only need
//! `netd`'s routing, `kernel/src/netdprobe.rs`):
//!
//! - `net.ping=NAME`: once the session with NAME is up, 5 echoes to its fabric address, 3 to
//!   its link-local address, then 9 fabric echoes each after 300 ms of idle; the NIC's
//!   interrupt count;
//! - `net.bench=NAME`: round-trip latency (10 rounds of 20 echoes) and UDP throughput (2 rounds of
//!   3500 × 1200 bytes) over the fabric and the plain link, alternating (the order flips each
//!   round) so both see the same host load; bytes counted by the peer's responder; a
//!   per-stage breakdown (TSC) of each;
//! - `net.wait=SECS`: how long they wait for the session (default 60).
//!
//! Only in the probes kernel's netd (the feature `probes`).

use super::*;
use catenary_net::{Path, PingReport};

/// The pause before each echo of the idle-latency probe (longer than the polling fallback's
/// 200 ms busy window, so the peer is idle every time).
const IDLE_PAUSE_NS: u64 = 300_000_000;
/// Bytes per throughput run: 3500 datagrams of 1200 bytes.
const STREAM_BYTES: u64 = 3500 * 1200;
/// Rounds of echoes per path (and echoes per round), and rounds of throughput runs.
const RTT_ROUNDS: usize = 10;
const RTT_PER_ROUND: u32 = 20;
const TPUT_ROUNDS: usize = 2;


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
    let wait_s = cmdline_arg(cmdline, "net.wait").and_then(|w| w.parse().ok()).unwrap_or(60);
    if let Some(peer) = cmdline_arg(cmdline, "net.ping") {
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
    if let Some(peer) = cmdline_arg(cmdline, "net.bench") {
        if let Some(p) = wait_session(st, peer, wait_s) {
            // warm up both paths (neighbour cache, session)
            let _ = ping(st, Path::Underlay, p.underlay, 3, 56);
            let _ = ping(st, Path::Fabric, p.fabric_addr, 3, 56);
            // Fabric and plain alternate in rounds (the order flips each round), so that both
            // see the same load on the host: no absolute time is stable under TCG on a shared
            // machine, the ratio is what counts.
            let paths = [(Path::Fabric, p.fabric_addr), (Path::Underlay, p.underlay)];
            let mut rtts: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
            let mut sent = [0u32; 2];
            let mut rtt_d = [Delta::default(), Delta::default()];
            for round in 0..RTT_ROUNDS {
                for k in 0..2 {
                    let i = (k + round) % 2;
                    let before = Snapshot::take(st);
                    if let Some(r) = ping(st, paths[i].0, paths[i].1, RTT_PER_ROUND, 56) {
                        sent[i] += r.sent;
                        rtts[i].extend_from_slice(&r.rtts_ns);
                    }
                    rtt_d[i].add(&Snapshot::take(st), &before);
                }
            }
            let mut tput_d = [Delta::default(), Delta::default()];
            let mut moved = [(0u64, 0u64); 2];
            for round in 0..TPUT_ROUNDS {
                for k in 0..2 {
                    let i = (k + round) % 2;
                    let before = Snapshot::take(st);
                    if let Some((bytes, ns)) = stream(st, paths[i].0, paths[i].1, STREAM_BYTES) {
                        moved[i].0 += bytes;
                        moved[i].1 += ns;
                    }
                    tput_d[i].add(&Snapshot::take(st), &before);
                }
            }
            let mut rtt = [0u64; 2];
            let mut tput = [0f64; 2];
            for i in 0..2 {
                let name = if i == 0 { "fabric" } else { "plain" };
                if !rtts[i].is_empty() {
                    rtts[i].sort_unstable();
                    rtt[i] = rtts[i][rtts[i].len() / 2];
                    logf!("net: bench net: {} rtt median {} us ({}/{} replies, 56-byte echo, {} rounds alternating)", name, rtt[i] / 1000, rtts[i].len(), sent[i], RTT_ROUNDS);
                    rtt_d[i].report(name, "rtt", rtts[i].len() as u64, "echo");
                }
                let (bytes, ns) = moved[i];
                if ns > 0 {
                    tput[i] = bytes as f64 * 8.0 / (ns as f64 / 1e9) / 1e6;
                    logf!("net: bench net: {} throughput {:.1} Mbit/s ({} of {} bytes delivered in {} ms, 1200-byte UDP, {} rounds alternating)",
                        name, tput[i], bytes, STREAM_BYTES * TPUT_ROUNDS as u64, ns / 1_000_000, TPUT_ROUNDS);
                    tput_d[i].report(name, "tput", STREAM_BYTES * TPUT_ROUNDS as u64 / 1200, "datagram");
                }
            }
            if rtt[1] > 0 && tput[1] > 0.0 {
                logf!("net: bench net: fabric/plain latency ratio {:.2}, throughput ratio {:.2}", rtt[0] as f64 / rtt[1] as f64, tput[0] / tput[1]);
            }
        }
        logf!("net: bench net: done");
    }
}

/// Every counter of the packet path at one moment (node1's side: this `netd`, its `nicd`).
struct Snapshot {
    tsc: u64,
    ns: u64,
    stages: catenary_net::stages::StageCounts,
    nic: [u64; nicstat::COUNT],
    pass: [u64; passstat::COUNT],
    /// `nicd`'s counters from the ring's header page (its word: figures only).
    nicd: [u64; ring::stat::COUNT as usize],
    /// `net.nic=reference`: the wakeups happen inside the underlay stack's transmit.
    wake_each: bool,
}

impl Snapshot {
    fn take(st: &State) -> Snapshot {
        let mut nicd = [0u64; ring::stat::COUNT as usize];
        if let Some(r) = st.nic.ring.as_ref() {
            for (i, v) in nicd.iter_mut().enumerate() {
                *v = r.read_u64(ring::STATS + 8 * i as u64);
            }
        }
        Snapshot { tsc: rdtsc(), ns: now_ns(), stages: st.node.stage_counts(), nic: st.nic.stats, pass: st.pass, nicd, wake_each: st.nic.wake_each }
    }
}

/// The counters' growth over some intervals (summed), in the same shape.
#[derive(Default)]
struct Delta {
    tsc: u64,
    ns: u64,
    stages: catenary_net::stages::StageCounts,
    nic: [u64; nicstat::COUNT],
    pass: [u64; passstat::COUNT],
    nicd: [u64; ring::stat::COUNT as usize],
    wake_each: bool,
}

fn add_diff<const N: usize>(acc: &mut [u64; N], after: &[u64; N], before: &[u64; N]) {
    for i in 0..N {
        acc[i] = acc[i].wrapping_add(after[i].wrapping_sub(before[i]));
    }
}

impl Delta {
    fn add(&mut self, after: &Snapshot, before: &Snapshot) {
        self.tsc = self.tsc.wrapping_add(after.tsc.wrapping_sub(before.tsc));
        self.ns += after.ns.saturating_sub(before.ns);
        let d = after.stages.since(&before.stages);
        for i in 0..catenary_net::stages::STAGES {
            self.stages.cycles[i] = self.stages.cycles[i].wrapping_add(d.cycles[i]);
            self.stages.calls[i] = self.stages.calls[i].wrapping_add(d.calls[i]);
        }
        add_diff(&mut self.nic, &after.nic, &before.nic);
        add_diff(&mut self.pass, &after.pass, &before.pass);
        add_diff(&mut self.nicd, &after.nicd, &before.nicd);
        self.wake_each = after.wake_each;
    }

    /// Log the breakdown: per stage, microseconds per `unit` (echo or datagram) and how often
    /// it ran per unit. Cycles become time with the TSC rate measured over the intervals.
    fn report(&self, path: &str, kind: &str, units: u64, unit: &str) {
        use catenary_net::stages::Stage;
        let (cycles, ns) = (self.tsc, self.ns);
        if cycles == 0 || ns == 0 || units == 0 {
            return;
        }
        let us = |c: u64| c as f64 * ns as f64 / cycles as f64 / 1000.0 / units as f64;
        let per = |n: u64| n as f64 / units as f64;
        let d = &self.stages;
        let nic = |i: usize| self.nic[i];
        let pass = |i: usize| self.pass[i];
        let nicd = |i: u64| self.nicd[i as usize];
        let line = |name: &str, c: u64, n: u64| {
            logf!("net: bench net: stage {}-{} {} {:.1} us/{} {:.2}", path, kind, name, us(c), unit, per(n));
        };
        use ring::stat::*;
        line("nicd.rx(device->ring)", nicd(RX_CYCLES), nicd(RX_FRAMES));
        line("nicd.rx-wake(send)", nicd(RX_WAKE_CYCLES), nicd(RX_WAKES));
        line("ring.rx-wait(nicd->netd)", nic(nicstat::RX_WAIT_CYCLES), nic(nicstat::RX_FRAMES));
        line("netd.rx-copy(ring->stack)", nic(nicstat::RX_CYCLES), nic(nicstat::RX_FRAMES));
        let u = d.cycles[Stage::Underlay as usize];
        // the underlay stack calls the ring's receive and transmit (and, one wakeup per
        // frame, the wakeups): those are their own rows
        let inner = nic(nicstat::RX_CYCLES) + nic(nicstat::TX_CYCLES) + if self.wake_each { nic(nicstat::TX_WAKE_CYCLES) } else { 0 };
        line("netd.underlay-stack", u.saturating_sub(inner), d.calls[Stage::Underlay as usize]);
        for s in [Stage::Decrypt, Stage::FabricOut, Stage::Fabric, Stage::Encrypt, Stage::Apps] {
            let name = alloc::format!("netd.{}", s.name());
            line(&name, d.cycles[s as usize], d.calls[s as usize]);
        }
        line("netd.tx-copy(stack->ring)", nic(nicstat::TX_CYCLES), nic(nicstat::TX_FRAMES));
        line("netd.tx-wake(send+nicd)", nic(nicstat::TX_WAKE_CYCLES), nic(nicstat::TX_WAKES));
        line("ring.tx-wait(netd->nicd)", nicd(TX_WAIT_CYCLES), nicd(TX_STAMPED));
        line("nicd.tx(ring->device)", nicd(TX_CYCLES), nicd(TX_FRAMES));
        line("nicd.tx-device-send", nicd(TX_DEVICE_CYCLES), nicd(TX_FRAMES));
        line("netd.ipc-pump", pass(passstat::IPC_CYCLES), pass(passstat::PASSES));
        line("netd.vm+sockets+nat64", pass(passstat::OTHER_CYCLES), pass(passstat::PASSES));
        line("netd.yield(busy)", pass(passstat::YIELD_CYCLES), pass(passstat::YIELDS));
        line("netd.wait(idle)", pass(passstat::WAIT_CYCLES), pass(passstat::WAITS));
        line("nicd.loops", 0, nicd(LOOPS));
        line("wall", cycles, units);
    }
}
