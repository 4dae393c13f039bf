//! `net_nat64` (docs/nat64.md): the cluster reaches the IPv4 world through its NAT64 gateway.
//! node1 is the gateway (`net.nat64gw=node1`, an IPv4 uplink: a second virtio-net device on
//! the switch and `nat64.uplink`/`nat64.router`); node2 runs a Linux microVM. A network
//! namespace made by the test plays the IPv4 internet on the switch through a tap: the router
//! 198.51.100.1 and an IPv4-only host 203.0.113.80 (IPv6 off in the namespace) serving a
//! 3 MiB file over HTTP and a UDP echo. The microVM on node2 — a different node than the
//! gateway — pings `64:ff9b::cb00:7150`, fetches the file by it (SHA-256 compared with the
//! host's) and gets its UDP datagram answered; then the gateway's state table drains after
//! the short timeouts the test configures. Needs root, /dev/net/tun, ip, vde_plug2tap and
//! python3 (the servers); namespace and tap are made under `/tmp/catenary-netns.lock`.

use crate::cluster::{b64, start, NodeSpec, NsGuard, GUEST_NET_SETUP, NODE_STOPPED};
use crate::test::Tally;
use crate::tools::out_dir;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TESTS: [&str; 5] = [
    "net_nat64_http_from_other_node",
    "net_nat64_udp_exchange",
    "net_nat64_ping",
    "net_nat64_state_table_drains",
    "net_nat64_gateway_only_where_configured",
];
/// The IPv4 host and what it looks like inside (RFC 6052: 64:ff9b::203.0.113.80).
const SERVER: &str = "203.0.113.80";
const SERVER6: &str = "64:ff9b::cb00:7150";
const ROUTER: &str = "198.51.100.1";
const BLOB_BYTES: usize = 3 * 1024 * 1024 + 12_345;
/// The gateway's settings: its uplink and short timeouts, so the table drains within the test.
const GATEWAY: &str = "net.nat64gw=node1 nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.udp_timeout=10 \
    nat64.icmp_timeout=10 nat64.tcp_transitory_timeout=10 nat64.tcp_timeout=60";

/// The namespace's servers, killed at the end.
struct Servers(Vec<Child>);
impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sh(args: &[&str]) -> Result<String, String> {
    crate::cluster::sh(args)
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    if !out_dir().join("guest").join("vmlinux").exists() {
        for n in TESTS {
            t.record(n, false, "(no guest image in build/guest: cargo xtask guest)");
        }
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    let tools = ["ip", "vde_plug2tap", "python3"].iter().all(|b| crate::tools::which(b).is_some());
    if !root || !tools || !Path::new("/dev/net/tun").exists() {
        for n in TESTS {
            t.skip(n, "needs root, /dev/net/tun, ip, vde_plug2tap and python3");
        }
        return Ok(());
    }
    // the file the IPv4 host serves: random bytes, and their SHA-256
    let dir = out_dir().join("net-nat64");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    let mut blob = vec![0u8; BLOB_BYTES];
    let mut x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    std::fs::write(www.join("blob"), &blob).map_err(|e| e.to_string())?;
    let sha: String = Sha256::digest(&blob).iter().map(|b| format!("{b:02x}")).collect();

    let mut a = NodeSpec::new(1);
    a.cmdline = GATEWAY.into();
    a.uplink = Some([0x52, 0x54, 0x00, 0xca, 0x64, 0x01]);
    let mut b = NodeSpec::new(2);
    let cmd = format!(
        "{GUEST_NET_SETUP} T={SERVER6}; \
         for i in $(seq 40); do ping -6 -c 1 -W 2 $T >/dev/null 2>&1 && break; sleep 1; done; \
         ping -6 -c 3 -W 3 $T | sed 's/^/nat64-ping /'; \
         wget -q -O - http://[$T]/blob | sha256sum | sed 's/^/nat64-http-sha /'; \
         echo nat64-udp-ask | nc -u -w 3 $T 7 | sed 's/^/nat64-udp-got /'; \
         echo vm-nat64-done"
    );
    b.cmdline = format!("net.nat64gw=node1 vm=demo vm.boot=pvh vm.mem=128 vm.net=1 vm.cmd={}", b64(cmd.as_bytes()));
    b.guest = true;

    // namespaces and taps: one test at a time on this machine
    let lock = std::fs::File::create("/tmp/catenary-netns.lock").map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| format!("flock /tmp/catenary-netns.lock: {e}"))?;
    let mut r = start(kernel, &[a, b], "net-nat64", &[])?;
    let id = std::process::id() % 10000;
    let ns = format!("catn64{id}");
    let tap = format!("catn64t{id}");
    let mut g = NsGuard { ns: ns.clone(), plug: None };
    let mut servers = Servers(Vec::new());
    let setup = (|| -> Result<(), String> {
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        sh(&["ip", "link", "set", &tap, "netns", &ns])?;
        let x = |args: &[&str]| -> Result<String, String> {
            let mut v = vec!["ip", "netns", "exec", ns.as_str()];
            v.extend_from_slice(args);
            sh(&v)
        };
        // the IPv4 internet: no IPv6 at all in here
        x(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])?;
        x(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])?;
        g.plug = Some(
            Command::new("ip").args(["netns", "exec", &ns, "vde_plug2tap", "-s"]).arg(r.switch_sock()).arg(&tap)
                .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?,
        );
        x(&["ip", "link", "set", "lo", "up"])?;
        x(&["ip", "link", "set", &tap, "up"])?;
        x(&["ip", "addr", "add", &format!("{ROUTER}/24"), "dev", &tap])?;
        x(&["ip", "addr", "add", &format!("{SERVER}/32"), "dev", "lo"])?;
        let www = www.display().to_string();
        servers.0.push(
            Command::new("ip").args(["netns", "exec", &ns, "python3", "-m", "http.server", "80", "--bind", SERVER, "--directory", &www])
                .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?,
        );
        let echo = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{SERVER}',7))\n\
             while True:\n d,a=s.recvfrom(2048)\n s.sendto(b'nat64-udp-reply '+d,a)\n"
        );
        servers.0.push(
            Command::new("ip").args(["netns", "exec", &ns, "python3", "-c", &echo])
                .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?,
        );
        Ok(())
    })();
    let panicked = |l: &[Vec<String>]| l.iter().flatten().any(|x| x.contains("KERNEL PANIC") || x.starts_with(NODE_STOPPED));
    let done = setup.is_ok()
        && r.wait(Duration::from_secs(420), false, |l| {
            l[1].iter().any(|x| x.contains("vm-nat64-done") || x.contains("microVM demo failed")) || panicked(l)
        });
    // then the gateway's table drains (RFC 6146 timeouts, 10 s here; TCP after its FINs)
    let drain_line = |l: &[String]| l.iter().rev().find(|x| x.contains("natd: sessions ")).cloned();
    let drained = done
        && r.wait(Duration::from_secs(90), false, |l| drain_line(&l[0]).is_some_and(|x| x.contains("natd: sessions 0, bindings 0")) || panicked(l));
    if !done {
        r.dump_cpus();
    }
    let log = r.save_logs("net-nat64");
    drop(servers);
    drop(g);
    drop(lock);
    let lines1 = &r.lines[0];
    let lines2 = &r.lines[1];
    for l in lines2.iter().filter(|l| l.contains("nat64-")).chain(lines1.iter().filter(|l| l.contains("natd: ") || l.contains("nat64:"))) {
        println!("  {l}");
    }
    let panic = panicked(&r.lines);
    let exits = r.exits();
    let got_sha = lines2.iter().find_map(|l| l.split("nat64-http-sha ").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_string()));
    let http = got_sha.as_deref() == Some(sha.as_str());
    let udp = lines2.iter().any(|l| l.contains("nat64-udp-got nat64-udp-reply nat64-udp-ask"));
    let pings = lines2.iter().filter(|l| l.contains("nat64-ping") && l.contains("bytes from") && l.contains(SERVER6)).count();
    let peak = lines1.iter().filter_map(|l| l.split("natd: sessions ").nth(1).and_then(|s| s.split(',').next()).and_then(|n| n.trim().parse::<u64>().ok())).max();
    let last = drain_line(lines1);
    let gateway = r.has(0, "service natd started") && r.has(0, "natd: NAT64 gateway up: uplink 198.51.100.2/24")
        && r.has(0, "this node is the cluster's NAT64 gateway");
    let elsewhere = !r.has(1, "service natd started") && r.has(1, "64:ff9b::/96 is routed over the fabric to the gateway node1");
    drop(r);
    let ctx = format!("namespace {:?}; log {}", setup.as_ref().err(), log.display());
    let ok = setup.is_ok() && done && !panic && exits.is_empty();
    t.record(TESTS[0], ok && http, &format!("(SHA-256 in the guest {got_sha:?}, on the host {sha}, {BLOB_BYTES} bytes; {ctx})"));
    t.record(TESTS[1], ok && udp, &format!("(UDP answer through the gateway {udp}; {ctx})"));
    t.record(TESTS[2], ok && pings >= 3, &format!("({pings}/3 echo replies from {SERVER6}; {ctx})"));
    t.record(TESTS[3], ok && drained && peak.is_some_and(|p| p >= 1),
        &format!("(most sessions logged {peak:?}, last table line {last:?}; {ctx})"));
    t.record(TESTS[4], ok && gateway && elsewhere, &format!("(natd on node1 with its uplink {gateway}, not on node2 which routes to node1 {elsewhere}; {ctx})"));
    Ok(())
}
