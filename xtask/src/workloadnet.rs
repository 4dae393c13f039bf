//! `net_workload_server_stop` (issue 11): a long-running server in a Catenary image, run as a
//! workload by node1's workload service (`workd`) with network, reached over IPv6 from another
//! node through the fabric, then stopped through `workd`'s `Stop` request.
//!
//! The image (busybox, built offline with umoci, packed with `catenary image pack`, in node1's
//! image store) prints its /etc/hosts, /etc/hostname, /etc/resolv.conf, eth0's address and
//! default route as catenary-init set them up, traps SIGTERM (prints a line, exits 0) and runs
//! busybox `httpd` in the foreground on port 8080. node1 boots with `workload.client=5`: the
//! ring-3 client `wkctl` (send + grant to `workd`, nothing else) creates and starts the workload
//! `web` with network — `workd` gives it link slot 1, the kernel its virtio-net device, the
//! slot's /128 of node1's /64 and a link to `netd` — and logs the /128 `workd`'s status
//! reports. A microVM on node2 asks for `/index.html` on that /128, port 8080 (busybox `nc`)
//! through node2, the fabric and node1 (`httpd -vv` logs each request on stderr with the
//! client's address: node2's microVM /128). Once the client has the page it asks for
//! `/done.html`; when that request is in the workload's log, `wkctl` sends `Stop` (grace 20 s):
//! the kernel's stop path sends a STOP frame on the workload channel, catenary-init sends the
//! image's StopSignal (SIGTERM) to the workload's process group, httpd dies, the shell's trap
//! prints its line and exits 0, and `workd`'s status says `exited`, exit code 0, with the same
//! /128. Destroyed, the /128 goes to the next workload created with network (`web2`).

use crate::cluster::{b64, start, NodeSpec, NODE_STOPPED};
use crate::nettests::GUEST_NET_SETUP;
use crate::ociimage as oci;
use crate::test::Tally;
use crate::tools::out_dir;
use std::path::Path;
use std::time::Duration;

const NAME: &str = "net_workload_server_stop";
const TAG: &str = "web";
const PORT: u16 = 8080;
const PAGE: &str = "hello-from-the-web-workload";

/// The entrypoint: report the network setup, trap TERM, serve in the foreground (so the
/// shell's trap runs only once httpd has ended: the stop must reach httpd too).
const SCRIPT: &str = "echo \"catenary-test hosts: $(busybox tr '\\t\\n' ' |' < /etc/hosts)\"; \
echo \"catenary-test hostname=$(busybox cat /etc/hostname) resolv=$(busybox head -n 1 /etc/resolv.conf)\"; \
echo \"catenary-test addr: $(busybox ip -6 -o addr show dev eth0 scope global)\"; \
echo \"catenary-test route: $(busybox ip -6 route show default)\"; \
trap 'echo catenary-test got SIGTERM, exiting 0; exit 0' TERM; \
busybox httpd -f -vv -p [::]:8080 -h /www; echo catenary-test httpd returned $?";

fn build_image(dir: &Path) -> Result<(), String> {
    let rootfs = oci::new_image(dir, TAG)?;
    oci::add_busybox(&rootfs)?;
    std::fs::create_dir_all(rootfs.join("www")).map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("www/index.html"), format!("{PAGE}\n")).map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("www/done.html"), "done\n").map_err(|e| e.to_string())?;
    oci::repack(dir, TAG)?;
    let port = format!("{PORT}/tcp");
    oci::config(dir, TAG, &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", SCRIPT, "--config.exposedports", &port, "--config.stopsignal", "SIGTERM"])?;
    oci::pack(dir, TAG, &dir.join("out")).map(|_| ())
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    if !crate::preflight::ready(t, &[NAME], &crate::preflight::Needs { images: true, guest: true, ..Default::default() }) {
        return Ok(());
    }
    let dir = out_dir().join("workload-server-image");
    if let Err(e) = build_image(&dir) {
        t.record(NAME, false, &format!("(building the image: {e})"));
        return Ok(());
    }
    let mut a = NodeSpec::new(1);
    let mut b = NodeSpec::new(2);
    // the workload's /128: link slot 1 of node1's /64 (microVM index 2^16 + slot,
    // catenary_workload::net); the client's: the first microVM /128 of node2's (the kernel's
    // allocator for `vm.net=1`)
    let vm_addr = |n: &NodeSpec, index: u64| netfabric::identity::Prefix64::from_public_key(&n.identity.public_key()).workload_address(netfabric::identity::AddressKind::MicroVm, index).unwrap();
    let (server, client) = (vm_addr(&a, 0x1_0000 + 1), vm_addr(&b, 1));
    for (name, file) in [("image/rootfs.squashfs", "rootfs.squashfs"), ("image/config.json", "config.json"), ("image/image.json", "image.json")] {
        let p = dir.join("out").join(file);
        a.files.push((name.to_string(), std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?));
    }
    // no demo VM of the kernel's own: the only microVM is the workload workd creates
    a.cmdline = "vm=none workload.client=5".into();
    a.guest = true;
    // `get PATH`: an HTTP/1.0 request with busybox nc (bounded by `timeout`: nc waits for more
    // input while its stdin is open).
    let fetch = format!(
        "{GUEST_NET_SETUP}get() {{ (printf 'GET %s HTTP/1.0\\r\\n\\r\\n' $1; sleep 3) | timeout 20 nc {server} {PORT} 2>/dev/null; }}; i=0; while [ $i -lt 60 ]; do \
           get /index.html > /tmp/page; if grep -q {PAGE} /tmp/page; \
           then echo client-got $(head -n 1 /tmp/page | tr -d '\\r') $(tail -n 1 /tmp/page); get /done.html > /dev/null; break; fi; \
           i=$((i+1)); sleep 2; done; echo client-done"
    );
    b.cmdline = format!("vm=client vm.boot=pvh vm.mem=128 vm.net=1 vm.cmd={}", b64(fetch.as_bytes()));
    b.guest = true;
    let mut r = start(kernel, &[a, b], "net-workload-server", &[])?;
    let ok = r.wait(Duration::from_secs(900), false, |l| {
        let scenario_done = l[0].iter().any(|x| x.contains("workload.client: wkctl scenario 5 ended"));
        let client_done = l[1].iter().any(|x| x.contains("client-done") || x.contains("microVM client ended"));
        (scenario_done && client_done) || l.iter().flatten().any(|x| x.contains("KERNEL PANIC") || x.starts_with(NODE_STOPPED))
    });
    if !ok {
        r.dump_cpus();
    }
    let log = r.save_logs("net-workload-server");
    let has = |node: usize, pat: &str| r.lines[node].iter().any(|l| l.contains(pat));
    let line = |node: usize, a: &str, b: &str| r.lines[node].iter().any(|l| l.contains(a) && l.contains(b));
    for l in r.lines[0].iter().filter(|l| l.contains("[vm:web") || l.contains("microVM web") || l.contains("wkctl") || l.contains("workd: ")) {
        println!("  node1: {l}");
    }
    for l in r.lines[1].iter().filter(|l| l.contains("client-")) {
        println!("  node2: {l}");
    }
    // catenary-init's network setup, as the workload sees it
    let checks = [
        ("workd created web with network", has(0, "workd: create web (64 MiB, 1 vCPU, restart No, network on): ok")),
        ("the kernel gave it link slot 1's /128", line(0, "workload microVM web: virtio-net MAC", &format!("address {server}/128 (link slot 1"))),
        ("workd's status names the /128", has(0, &format!("wkctl: web address {server}"))),
        ("catenary-init ready", has(0, "[vm:web] catenary-init: ready")),
        ("/etc/hosts has the VM's /128 as `web`", line(0, "[vm:web stdout] catenary-test hosts: ", &format!("{server} web|"))),
        ("/etc/hostname and /etc/resolv.conf", has(0, "[vm:web stdout] catenary-test hostname=web resolv=# catenary-init: the node gave no name servers")),
        ("eth0 has the /128", line(0, "[vm:web stdout] catenary-test addr: ", &format!("inet6 {server}/128 scope global"))),
        ("default route on eth0", line(0, "[vm:web stdout] catenary-test route: ", "default dev eth0")),
        // the server saw node2's microVM, through the fabric
        ("request from node2's microVM answered", line(0, &format!("[vm:web stderr] [{client}]:"), ": response:200")),
        ("node2's microVM got the page", line(1, "[vm:client] client-got HTTP/1.1 200 OK", PAGE)),
        // the stop: workd's Stop request, then VmControl and the channel, and its outcome
        ("workd got the Stop request", has(0, "workd: stop web: ok")),
        ("the node requested the stop", has(0, "microVM web: stop requested (grace 20000 ms)") && has(0, "microVM web: the image's StopSignal sent to its init")),
        ("the init sent SIGTERM to the group", has(0, "[vm:web] catenary-init: the node asked for a stop: SIGTERM to the workload's process group")),
        ("the trap ran", has(0, "[vm:web stdout] catenary-test got SIGTERM, exiting 0")),
        ("exit code 0 reported", has(0, "microVM web: workload exit code 0")),
        ("the VM powered itself off", has(0, "microVM web ended: power off")),
        ("no SIGKILL, no forced power-off", !has(0, "microVM web: still running after its grace period") && !has(0, "microVM web: powered off by the node")),
        ("workd: exited, exit code 0, the same /128", has(0, "wkctl: RESULT web_stop ok")),
        ("destroy freed the /128 for the next workload", has(0, "wkctl: RESULT web_address_reused ok")),
        ("every wkctl check passed", has(0, "workload.client: wkctl scenario 5 ended: 0 checks failed")),
        ("no workload line on the console", !has(0, "[vm:web] catenary-test")),
    ];
    let panic = r.lines.iter().flatten().any(|l| l.contains("KERNEL PANIC"));
    let exits = r.exits();
    drop(r);
    let failed: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(what, _)| *what).collect();
    t.record(NAME, ok && failed.is_empty() && !panic && exits.is_empty(),
        &format!("(server {server}, client {client}; failed checks {failed:?}, nodes that stopped {exits:?}; log {})", log.display()));
    Ok(())
}
