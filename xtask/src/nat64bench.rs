//! `cargo xtask bench nat64`: what the NAT64 gateway costs, against the same transfer over
//! plain IPv6 inside the cluster, in the same run. node1 is the gateway (as in `net_nat64`)
//! and runs a microVM serving a file of the same size with busybox httpd on its /128; the
//! microVM on node2 fetches both — from node1's microVM (plain IPv6 over the fabric) and from
//! the IPv4 host through the gateway (`64:ff9b::cb00:7150`) — alternately, 3 times each, and
//! pings both (20 echoes each). The paths share node2, the fabric and node1; the NAT64 one
//! adds `natd` (translation, the exchange with `netd`, the uplink) and the namespace's tap.
//! Figures: throughput from the guest's `/proc/uptime` (10 ms resolution) around each
//! `wget`, round trips from busybox ping's average.

use crate::cluster::{b64, start, NodeSpec};
use crate::netns::NsGuard;
use crate::nettests::GUEST_NET_SETUP;
use crate::nat64test::{blob, internet, root_and_tools, Servers, GATEWAY, SERVER6};
use crate::tools::out_dir;
use std::time::Duration;

const BYTES: usize = 3 * 1024 * 1024;
const ROUNDS: usize = 3;

pub fn bench(_args: &[String]) -> Result<(), String> {
    if !root_and_tools() {
        return Err("needs root, /dev/net/tun, ip, vde_plug2tap and python3".into());
    }
    if !out_dir().join("guest").join("vmlinux").exists() {
        return Err("no guest image in build/guest: cargo xtask guest".into());
    }
    let kernel = crate::build::build_kernel(false)?;
    let www = out_dir().join("net-nat64-bench").join("www");
    std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    std::fs::write(www.join("blob"), blob(BYTES).0).map_err(|e| e.to_string())?;
    let mut a = NodeSpec::new(1);
    let plain = netfabric::identity::Prefix64::from_public_key(&a.identity.public_key())
        .workload_address(netfabric::identity::AddressKind::MicroVm, 1)
        .ok_or("no microVM address")?;
    // node1's microVM: the same number of random bytes over plain IPv6
    let server = format!(
        "{GUEST_NET_SETUP} mkdir -p /tmp/www; dd if=/dev/urandom of=/tmp/www/blob bs=1024 count={} 2>/dev/null; \
         httpd -p 80 -h /tmp/www; echo bench-httpd-up; sleep 900",
        BYTES / 1024
    );
    a.cmdline = format!("{GATEWAY} vm=demo vm.boot=pvh vm.mem=128 vm.net=1 vm.cmd={}", b64(server.as_bytes()));
    a.uplink = Some([0x52, 0x54, 0x00, 0xca, 0x64, 0x01]);
    a.guest = true;
    let mut b = NodeSpec::new(2);
    // short: the guest's kernel command line (which carries it) holds 2048 bytes at most
    let cmd = format!(
        "{GUEST_NET_SETUP} P={plain}; T={SERVER6}; \
         f(){{ S=$(cut -d' ' -f1 /proc/uptime); N=$(wget -q -O - http://[$2]/blob | wc -c); E=$(cut -d' ' -f1 /proc/uptime); echo bench-$1-http $N $S $E; }}; \
         for i in $(seq 60); do ping -6 -c 1 -W 2 $T >/dev/null 2>&1 && wget -q -O /dev/null http://[$P]/blob && break; sleep 2; done; \
         ping -6 -c 20 -i 0.2 $P | tail -1 | sed 's/^/bench-plain-ping /'; ping -6 -c 20 -i 0.2 $T | tail -1 | sed 's/^/bench-nat64-ping /'; \
         for r in $(seq {ROUNDS}); do f plain $P; f nat64 $T; done; echo bench-nat64-done"
    );
    assert!(b64(cmd.as_bytes()).len() < 1800, "the guest command is too long for its kernel command line");
    b.cmdline = format!("net.nat64gw=node1 vm=demo vm.boot=pvh vm.mem=128 vm.net=1 vm.cmd={}", b64(cmd.as_bytes()));
    b.guest = true;
    println!("bench nat64: a microVM on node2 fetches {BYTES} bytes over HTTP and pings, from node1's microVM (plain IPv6 over the fabric) and from an IPv4 host through node1's NAT64 gateway, alternately; two QEMU TCG nodes (-smp 2) on a vde switch");
    let lock = std::fs::File::create("/tmp/catenary-netns.lock").map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| format!("flock /tmp/catenary-netns.lock: {e}"))?;
    let mut r = start(&kernel, &[a, b], "net-nat64-bench", &[])?;
    let mut g = NsGuard { ns: format!("catb64{}", std::process::id() % 10000), plug: None };
    let mut servers = Servers(Vec::new());
    internet(r.switch_sock(), &www, &mut g, &mut servers)?;
    let ok = r.wait(Duration::from_secs(900), false, |l| l[1].iter().any(|x| x.contains("bench-nat64-done")) || l.iter().flatten().any(|x| x.contains("KERNEL PANIC")));
    let log = r.save_logs("net-nat64-bench");
    drop(servers);
    drop(g);
    drop(lock);
    let lines = r.lines[1].clone();
    drop(r);
    if !ok {
        return Err(format!("did not finish (log {})", log.display()));
    }
    for l in lines.iter().filter(|l| l.contains("bench-")) {
        println!("  {}", l.split("[vm:demo] ").nth(1).unwrap_or(l));
    }
    // `bench-TAG-http N start end` -> Mbit/s
    let rates = |tag: &str| -> Vec<f64> {
        lines.iter().filter_map(|l| {
            let w: Vec<&str> = l.split(&format!("bench-{tag}-http ")).nth(1)?.split_whitespace().collect();
            let (n, s, e) = (w.first()?.parse::<f64>().ok()?, w.get(1)?.parse::<f64>().ok()?, w.get(2)?.parse::<f64>().ok()?);
            (n as usize == BYTES && e > s).then(|| n * 8.0 / (e - s) / 1e6)
        }).collect()
    };
    // `round-trip min/avg/max = a/b/c ms` -> b
    let avg = |tag: &str| -> Option<f64> {
        lines.iter().find(|l| l.contains(&format!("bench-{tag}-ping")) && l.contains("min/avg/max"))?.split('=').nth(1)?.split('/').nth(1)?.trim().parse().ok()
    };
    let (p, n) = (rates("plain"), rates("nat64"));
    println!("  throughput (Mbit/s): plain {p:.2?}, nat64 {n:.2?}; ping avg (ms): plain {:?}, nat64 {:?}", avg("plain"), avg("nat64"));
    use crate::benchtable::{ratio, value, Goal};
    if p.len() < ROUNDS || n.len() < ROUNDS {
        return Err(format!("incomplete transfers (plain {}, nat64 {} of {ROUNDS}; log {})", p.len(), n.len(), log.display()));
    }
    let (pm, nm) = (crate::bench::median(p), crate::bench::median(n));
    ratio("NAT64 HTTP throughput, microVM on another node (3 MiB, median of 3)", "Mbit/s", nm, "plain IPv6 in the cluster", pm, Goal::None);
    if let (Some(pa), Some(na)) = (avg("plain"), avg("nat64")) {
        ratio("NAT64 round trip, microVM on another node (ping avg of 20)", "ms", na, "plain IPv6 in the cluster", pa, Goal::None);
        value("NAT64 added latency per round trip", "ms", na - pa, Goal::None);
    }
    Ok(())
}
