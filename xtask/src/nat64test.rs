//! `net_nat64` (docs/nat64.md): the cluster reaches the IPv4 world through its NAT64 gateway.
//! node1 is the gateway (`net.nat64gw=node1`, an IPv4 uplink: a second virtio-net device on
//! the switch and `nat64.uplink`/`nat64.router`); node2 runs a Linux microVM. A network
//! namespace made by the test plays the IPv4 internet on the switch through a tap: the router
//! 198.51.100.1, an IPv4-only host 203.0.113.80 (IPv6 off in the namespace) serving a 3 MiB
//! file over HTTP, and a DNS server 203.0.113.53 with an A record for `ipv4only.example`. The
//! microVM on node2 — a different node than the gateway — pings `64:ff9b::cb00:7150`, fetches
//! the file by it (SHA-256 compared with the host's), asks the IPv4 DNS server through the
//! translator (a UDP exchange), asks DNS64 at `64:ff9b::35` for the name's AAAA, and fetches
//! the file by name with `nameserver 64:ff9b::35` in its `/etc/resolv.conf`; then the
//! gateway's state table drains after the short timeouts the test configures. Needs root, /dev/net/tun, ip, vde_plug2tap and
//! python3 (the servers); namespace and tap are made under `/tmp/catenary-netns.lock`.

use crate::cluster::{b64, start, NodeSpec, NODE_STOPPED};
use crate::netns::NsGuard;
use crate::nettests::GUEST_NET_SETUP;
use crate::test::Tally;
use crate::tools::out_dir;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TESTS: [&str; 8] = [
    "net_nat64_http_from_other_node",
    "net_nat64_udp_exchange",
    "net_nat64_ping",
    "net_nat64_state_table_drains",
    "net_nat64_gateway_only_where_configured",
    "net_nat64_dns64_synthesizes_aaaa",
    "net_nat64_http_by_name",
    "net_nat64_workload_resolv_conf",
];
/// The workload `workd` runs on node2 (`workload.client=9`): its entrypoint prints the
/// `/etc/resolv.conf` catenary-init wrote from node.json, resolves the name with busybox
/// `nslookup` and no server named (busybox's own resolver, which reads `/etc/resolv.conf`),
/// fetches the file from the address it got with an HTTP/1.0 request through busybox `nc`
/// (the headers read off line by line, the body hashed), and prints the SHA-256. Not `wget`:
/// in a bare busybox image static glibc's NSS lookups (`getaddrinfo`, and `getservbyname`
/// for the scheme's port even with an address) crash without the NSS libraries.
const FETCH_TAG: &str = "fetch";
const FETCH_SCRIPT: &str = "echo \"catenary-test resolv: $(busybox tr '\\n' '|' < /etc/resolv.conf)\"; cr=$(printf '\\r'); \
i=0; s=none; a=; while [ $i -lt 40 ]; do n=$(busybox nslookup -type=AAAA ipv4only.example 2>&1); \
a=$(echo \"$n\" | busybox awk '/^Address: /{print $2}' | busybox tail -n 1); \
if [ -n \"$a\" ]; then s=$( (printf 'GET /blob HTTP/1.0\\r\\n\\r\\n'; busybox sleep 30) | busybox timeout 60 busybox nc $a 80 | \
{ while IFS= read -r l; do [ \"$l\" = \"$cr\" ] && break; done; busybox cat; } | busybox sha256sum); \
case $s in e3b0c44298fc1c149afbf4c8996fb924*) ;; *) break;; esac; fi; i=$((i+1)); busybox sleep 2; done; \
echo \"catenary-test server: $(echo \"$n\" | busybox grep -m 1 Server: | busybox tr -s ' \\t' ' ')\"; \
echo \"catenary-test address: $a\"; echo \"catenary-test sha: $s\"";

/// The busybox image `workd` runs (built offline with umoci, packed with `catenary image pack`).
fn fetch_image(dir: &Path) -> Result<(), String> {
    use crate::ociimage as oci;
    let rootfs = oci::new_image(dir, FETCH_TAG)?;
    oci::add_busybox(&rootfs)?;
    oci::repack(dir, FETCH_TAG)?;
    oci::config(dir, FETCH_TAG, &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", FETCH_SCRIPT])?;
    oci::pack(dir, FETCH_TAG, &dir.join("out")).map(|_| ())
}
/// The IPv4 host and what it looks like inside (RFC 6052: 64:ff9b::203.0.113.80).
const SERVER: &str = "203.0.113.80";
pub(crate) const SERVER6: &str = "64:ff9b::cb00:7150";
/// The IPv4 internet's DNS server (an A record for [`NAME`] only), and inside.
const DNS: &str = "203.0.113.53";
const DNS6: &str = "64:ff9b::cb00:7135";
/// A name with only an A record (203.0.113.80).
const NAME: &str = "ipv4only.example";
const ROUTER: &str = "198.51.100.1";
const BLOB_BYTES: usize = 3 * 1024 * 1024 + 12_345;
/// The gateway's settings: its uplink and short timeouts, so the table drains within the test.
pub(crate) const GATEWAY: &str = "net.nat64gw=node1 nat64.uplink=198.51.100.2/24 nat64.router=198.51.100.1 nat64.udp_timeout=10 \
    nat64.icmp_timeout=10 nat64.tcp_transitory_timeout=10 nat64.tcp_timeout=60 nat64.dns=203.0.113.53";

/// The namespace's DNS server (python3, a few lines: the test's IPv4 internet, not Catenary
/// code): `ipv4only.example` has an A record 203.0.113.80 and no AAAA; other names NXDOMAIN.
const DNS_SERVER: &str = r#"import socket,struct
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
s.bind(('203.0.113.53',53))
while True:
 d,a=s.recvfrom(512)
 try:
  i=12;l=[]
  while d[i]:
   l.append(d[i+1:i+1+d[i]].decode().lower());i+=1+d[i]
  qt=struct.unpack('!H',d[i+1:i+3])[0];q=d[12:i+5];h=d[:2]
  if '.'.join(l)!='ipv4only.example':r=h+struct.pack('!HHHHH',0x8183,1,0,0,0)+q
  elif qt==1:r=h+struct.pack('!HHHHH',0x8180,1,1,0,0)+q+struct.pack('!HHHIH',0xc00c,1,1,60,4)+socket.inet_aton('203.0.113.80')
  else:r=h+struct.pack('!HHHHH',0x8180,1,0,0,0)+q
  s.sendto(r,a)
 except Exception:pass
"#;

/// The namespace's servers, killed at the end.
pub(crate) struct Servers(pub(crate) Vec<Child>);
impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sh(args: &[&str]) -> Result<String, String> {
    crate::netns::sh(args)
}

/// The IPv4 internet in namespace `g.ns` on the switch: the router on a tap, the HTTP host
/// serving `www` and the DNS server on its loopback, IPv6 off. Under the netns lock.
pub(crate) fn internet(switch: &Path, www: &Path, g: &mut NsGuard, servers: &mut Servers) -> Result<(), String> {
    let ns = g.ns.clone();
    let tap = format!("{ns}t");
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
        Command::new("ip").args(["netns", "exec", &ns, "vde_plug2tap", "-s"]).arg(switch).arg(&tap)
            .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?,
    );
    x(&["ip", "link", "set", "lo", "up"])?;
    x(&["ip", "link", "set", &tap, "up"])?;
    x(&["ip", "addr", "add", &format!("{ROUTER}/24"), "dev", &tap])?;
    x(&["ip", "addr", "add", &format!("{SERVER}/32"), "dev", "lo"])?;
    x(&["ip", "addr", "add", &format!("{DNS}/32"), "dev", "lo"])?;
    let www = www.display().to_string();
    servers.0.push(
        Command::new("ip").args(["netns", "exec", &ns, "python3", "-m", "http.server", "80", "--bind", SERVER, "--directory", &www])
            .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?,
    );
    servers.0.push(
        Command::new("ip").args(["netns", "exec", &ns, "python3", "-c", DNS_SERVER])
            .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?,
    );
    Ok(())
}

/// A file of `n` pseudo-random bytes (seeded by the clock) and its SHA-256 (hex).
pub(crate) fn blob(n: usize) -> (Vec<u8>, String) {
    let mut blob = vec![0u8; n];
    let mut x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    let sha = Sha256::digest(&blob).iter().map(|b| format!("{b:02x}")).collect();
    (blob, sha)
}

const TOOLS: [&str; 3] = ["ip", "vde_plug2tap", "python3"];

/// For `bench nat64` (the test uses `preflight::ready`).
pub(crate) fn root_and_tools() -> bool {
    crate::preflight::is_root() && TOOLS.iter().all(|b| crate::tools::which(b).is_some()) && Path::new("/dev/net/tun").exists()
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    if !crate::preflight::ready(t, &TESTS, &crate::preflight::Needs { root: true, tools: &TOOLS, guest: true, ..Default::default() }) {
        return Ok(());
    }
    if let Some(why) = crate::ociimage::missing_tools() {
        for n in TESTS {
            t.skip(n, why);
        }
        return Ok(());
    }
    // the file the IPv4 host serves: random bytes, and their SHA-256
    let dir = out_dir().join("net-nat64");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    let (data, sha) = blob(BLOB_BYTES);
    std::fs::write(www.join("blob"), &data).map_err(|e| e.to_string())?;
    let img = dir.join("fetch-image");
    fetch_image(&img)?;

    let mut a = NodeSpec::new(1);
    a.cmdline = GATEWAY.into();
    a.uplink = Some([0x52, 0x54, 0x00, 0xca, 0x64, 0x01]);
    let mut b = NodeSpec::new(2);
    let cmd = format!(
        "{GUEST_NET_SETUP} T={SERVER6}; \
         for i in $(seq 40); do ping -6 -c 1 -W 2 $T >/dev/null 2>&1 && break; sleep 1; done; \
         ping -6 -c 3 -W 3 $T | sed 's/^/nat64-ping /'; \
         wget -q -O - http://[$T]/blob | sha256sum | sed 's/^/nat64-http-sha /'; \
         nslookup -type=A {NAME} {DNS6} 2>&1 | sed 's/^/nat64-udp /'; \
         nslookup -type=AAAA {NAME} 64:ff9b::35 2>&1 | sed 's/^/nat64-dns64 /'; \
         echo nameserver 64:ff9b::35 > /etc/resolv.conf; \
         wget -q -O - http://{NAME}/blob | sha256sum | sed 's/^/nat64-name-sha /'; \
         echo vm-nat64-done"
    );
    // and a workload through workd (wkctl scenario 9) from the image in node2's store
    b.cmdline = format!("net.nat64gw=node1 workload.client=9 vm=demo vm.boot=pvh vm.mem=128 vm.net=1 vm.cmd={}", b64(cmd.as_bytes()));
    b.guest = true;
    for (name, file) in [("image/rootfs.squashfs", "rootfs.squashfs"), ("image/config.json", "config.json"), ("image/image.json", "image.json")] {
        let p = img.join("out").join(file);
        b.files.push((name.to_string(), std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?));
    }

    // namespaces and taps: one test at a time on this machine
    let lock = std::fs::File::create("/tmp/catenary-netns.lock").map_err(|e| e.to_string())?;
    lock.lock().map_err(|e| format!("flock /tmp/catenary-netns.lock: {e}"))?;
    let mut r = start(kernel, &[a, b], "net-nat64", &[])?;
    let mut g = NsGuard { ns: format!("catn64{}", std::process::id() % 10000), plug: None };
    let mut servers = Servers(Vec::new());
    let setup = internet(r.switch_sock(), &www, &mut g, &mut servers);
    let panicked = |l: &[Vec<String>]| l.iter().flatten().any(|x| x.contains("KERNEL PANIC") || x.starts_with(NODE_STOPPED));
    let done = setup.is_ok()
        && r.wait(Duration::from_secs(420), false, |l| {
            let demo = l[1].iter().any(|x| x.contains("vm-nat64-done") || x.contains("microVM demo failed"));
            let workload = l[1].iter().any(|x| x.contains("workload.client: wkctl scenario 9 ended"));
            (demo && workload) || panicked(l)
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
    for l in lines2.iter().filter(|l| l.contains("nat64-") || l.contains("[vm:fetch") || l.contains("wkctl")).chain(lines1.iter().filter(|l| l.contains("natd: ") || l.contains("nat64:"))) {
        println!("  {l}");
    }
    let panic = panicked(&r.lines);
    let exits = r.exits();
    let got_sha = lines2.iter().find_map(|l| l.split("nat64-http-sha ").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_string()));
    let http = got_sha.as_deref() == Some(sha.as_str());
    // a DNS exchange with the IPv4 server through the translator (UDP both ways)
    let udp = lines2.iter().any(|l| l.contains("nat64-udp Address") && l.contains(SERVER));
    // DNS64 at 64:ff9b::35: the AAAA synthesized from the A record
    let dns64 = lines2.iter().any(|l| l.contains("nat64-dns64 Address") && l.contains(SERVER6));
    // by name through the guest's own resolver (glibc in busybox) and /etc/resolv.conf
    let got_name_sha = lines2.iter().find_map(|l| l.split("nat64-name-sha ").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_string()));
    let by_name = got_name_sha.as_deref() == Some(sha.as_str());
    let pings = lines2.iter().filter(|l| l.contains("nat64-ping") && l.contains("bytes from") && l.contains(SERVER6)).count();
    let peak = lines1.iter().filter_map(|l| l.split("natd: sessions ").nth(1).and_then(|s| s.split(',').next()).and_then(|n| n.trim().parse::<u64>().ok())).max();
    let last = drain_line(lines1);
    let gateway = r.has(0, "service natd started") && r.has(0, "natd: NAT64 gateway up: uplink 198.51.100.2/24")
        && r.has(0, "this node is the cluster's NAT64 gateway");
    // the workload: resolv.conf from node.json (catenary-init), the file by name over NAT64
    let wl_resolv = lines2.iter().any(|l| l.contains("[vm:fetch stdout] catenary-test resolv: ") && l.contains("nameserver 64:ff9b::35|"));
    let wl_sha = lines2.iter().find_map(|l| l.split("[vm:fetch stdout] catenary-test sha: ").nth(1).map(|s| s.split_whitespace().next().unwrap_or("").to_string()));
    let wl_exit = r.has(1, "wkctl: RESULT fetch ok");
    // resolved through resolv.conf's server: DNS64's synthesized address
    let wl_dns = r.has(1, "[vm:fetch stdout] catenary-test server: Server: 64:ff9b::35")
        && r.has(1, &format!("[vm:fetch stdout] catenary-test address: {SERVER6}"));
    let wl_not_demo = r.has(1, "workd: create fetch") && r.has(1, "workload microVM fetch: virtio-net MAC");
    let elsewhere = !r.has(1, "service natd started") && r.has(1, "64:ff9b::/96 is routed over the fabric to the gateway node1");
    drop(r);
    let ctx = format!("namespace {:?}; log {}", setup.as_ref().err(), log.display());
    let ok = setup.is_ok() && done && !panic && exits.is_empty();
    t.record(TESTS[0], ok && http, &format!("(SHA-256 in the guest {got_sha:?}, on the host {sha}, {BLOB_BYTES} bytes; {ctx})"));
    t.record(TESTS[1], ok && udp, &format!("(nslookup -type=A {NAME} at {DNS6}, the IPv4 server, answered {SERVER} through the translator: {udp}; {ctx})"));
    t.record(TESTS[2], ok && pings >= 3, &format!("({pings}/3 echo replies from {SERVER6}; {ctx})"));
    t.record(TESTS[3], ok && drained && peak.is_some_and(|p| p >= 1),
        &format!("(most sessions logged {peak:?}, last table line {last:?}; {ctx})"));
    t.record(TESTS[5], ok && dns64, &format!("(nslookup -type=AAAA {NAME} at 64:ff9b::35 answered {SERVER6}: {dns64}; {ctx})"));
    t.record(TESTS[6], ok && by_name, &format!("(wget http://{NAME}/blob with nameserver 64:ff9b::35 in /etc/resolv.conf: SHA-256 {got_name_sha:?}, on the host {sha}; {ctx})"));
    t.record(TESTS[7], ok && wl_resolv && wl_dns && wl_sha.as_deref() == Some(sha.as_str()) && wl_exit && wl_not_demo,
        &format!("(workd's workload on node2: resolv.conf with 64:ff9b::35 {wl_resolv}, resolved there to {SERVER6} {wl_dns}, SHA-256 {wl_sha:?} vs {sha}, exit 0 {wl_exit}, created by workd with network {wl_not_demo}; {ctx})"));
    t.record(TESTS[4], ok && gateway && elsewhere, &format!("(natd on node1 with its uplink {gateway}, not on node2 which routes to node1 {elsewhere}; {ctx})"));
    Ok(())
}
