//! `net_guest_cannot_act_as_node` (issue 12 item 2, issue 13 item 1; docs/api.md, docs/orchestration.md):
//! a microVM shares its node's fabric /64, so the fabric alone would let a guest pass for its
//! node. `apid` takes a node only at its own /128 (`Operators::caller_of`: interface id 1) and
//! `memberd` takes a node's datagrams only from that /128. Here a real Linux guest tries both.
//!
//! Two nodes (the guest bundle; the attack image only in node1's store). An admin operator (the
//! CLI through its embedded fabric, xtask/src/fabriccli.rs) runs the image on node1 as the
//! workload `hostile` (network on: a /128 of node1's /64). Its busybox script
//! - connects over TCP to node1's and node2's /128 port 8080 and sends `POST /v1/workloads`
//!   (a valid run of the same image as `forged`) with `Catenary-On-Behalf-Of: <the admin's key>`
//!   — what a node sends when it forwards an operator's request — and a plain `GET /v1/nodes`,
//!   printing how many bytes came back (`nc … | wc -c`);
//! - sends node2's memberd (port 7946, from port 7946) the datagrams node1's memberd would send
//!   as it leaves the cluster, made on the host with the real protocol code for the generations
//!   the nodes logged (xtask/src/forge.rs; `udpsend`, a static example of guest-init/init, since
//!   busybox `nc` has no `-u`).
//!
//! It must hold that the guest got 0 bytes from each apid, each apid logged closing a
//! connection of no known key from the guest's /128, `ps --json` shows no `forged` workload on
//! either node (only `hostile`), node2's memberd logged refusing datagrams from the guest's
//! /128 as not node1's node address, and node2 still has node1 `alive` with the same
//! incarnation (no other state logged for node1 since the attack).

use crate::apitest::{json, sha256, Checks};
use crate::cluster::NodeSpec;
use crate::fabriccli::{Cli, KillOnDrop};
use catenary::ops::relay::start as relay;
use crate::ociimage as oci;
use crate::preflight::{ready, Needs};
use crate::test::Tally;
use catenary_net::cluster::Operator;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAME: &str = "net_guest_cannot_act_as_node";
const TAG: &str = "hostile";
/// memberd's port (hypervisor/user/src/bin/memberd.rs).
const MEMBER_PORT: u16 = 7946;

/// `sh -c SCRIPT hostile NODE1 NODE2 ADMINKEY DIGEST HEX…`.
const SCRIPT: &str = r#"n1=$1; n2=$2; key=$3; img=$4; shift 4
body="{\"name\":\"forged\",\"image\":\"$img\",\"memory_mib\":64}"
post() { printf 'POST /v1/workloads HTTP/1.1\r\nHost: node\r\nCatenary-On-Behalf-Of: %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "$key" "${#body}" "$body"; sleep 5; }
get() { printf 'GET /v1/nodes HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n'; sleep 5; }
for a in $n1 $n2; do
  echo "hostile: POST as the admin to [$a]:8080: $(post | timeout 20 nc $a 8080 | wc -c) bytes back"
  echo "hostile: GET /v1/nodes from [$a]:8080: $(get | timeout 20 nc $a 8080 | wc -c) bytes back"
done
/bin/udpsend $n2 7946 7946 "$@"
echo "hostile: sent $# forged membership datagrams to [$n2]:7946"
echo "hostile: done"
exec sleep 600"#;

fn build_image(dir: &Path) -> Result<std::path::PathBuf, String> {
    let udpsend = crate::build::build_guest_example("udpsend")?;
    let rootfs = oci::new_image(dir, TAG)?;
    oci::add_busybox(&rootfs)?;
    std::fs::copy(&udpsend, rootfs.join("bin/udpsend")).map_err(|e| format!("{}: {e}", udpsend.display()))?;
    oci::repack(dir, TAG)?;
    oci::config(dir, TAG, &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", SCRIPT, "--config.entrypoint", TAG])?;
    let out = dir.join("out");
    oci::pack(dir, TAG, &out)?;
    Ok(out)
}

/// The generation node `name`'s memberd logged (`memberd: membership on … as NAME generation G`).
fn generation(lines: &[String], name: &str) -> Option<u32> {
    let pat = format!(" as {name} generation ");
    lines.iter().filter(|l| l.contains("memberd: membership on")).find_map(|l| l[l.find(&pat)? + pat.len()..].split_whitespace().next()?.parse().ok())
}

/// `name`'s (membership, incarnation) in a `nodes --json` answer.
fn membership(out: &str, name: &str) -> Option<(String, u64)> {
    let j = json(out)?;
    let n = j["nodes"].as_array()?.iter().find(|n| n["name"] == name)?.clone();
    Some((n["membership"].as_str()?.to_string(), n["incarnation"].as_u64()?))
}

/// The number in `hostile: WHAT: N bytes back`.
fn bytes_back(lines: &str, what: &str) -> Option<u64> {
    let l = lines.lines().find(|l| l.contains(what))?;
    l[l.find(what)? + what.len()..].split_whitespace().next()?.parse().ok()
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    // the CLI is built by `Cli::prepare`
    if !ready(t, &[NAME], &Needs { tools: &["vde_plug"], images: true, guest: true, ..Needs::default() }) {
        return Ok(());
    }
    let tag = "net-guest-as-node";
    let dir = crate::tools::out_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = build_image(&dir.join("image"))?;
    let manifest = std::fs::read(image.join("image.json")).map_err(|e| e.to_string())?;
    let digest = format!("sha256:{}", catenary_api::auth::hex(&sha256(&manifest)));
    let cli = Cli::prepare(&dir.join("operator"))?;
    let o = cli.output(&["init", "--name", "alice"])?;
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    let key = line.split_whitespace().nth(2).and_then(catenary_net::cluster::hex_decode32).ok_or(format!("catenary init printed {line:?}"))?;
    let admin_hex = catenary_net::cluster::hex_encode(&key);
    let op = Operator { name: "alice".into(), public_key: key, role: "admin".into() };
    let mut nodes = vec![NodeSpec::new(1), NodeSpec::new(2)];
    for n in &mut nodes {
        n.guest = true;
        n.cmdline = "vm=none".into();
    }
    // the image only in node1's store: the run lands there, and so would the forged one
    for f in ["rootfs.squashfs", "config.json", "image.json"] {
        nodes[0].files.push((format!("image/{f}"), std::fs::read(image.join(f)).map_err(|e| format!("{f}: {e}"))?));
    }
    let (a1, a2) = (nodes[0].identity.node_address(), nodes[1].identity.node_address());
    let mut r = crate::cluster::start_with(kernel, &nodes, tag, &[], &[op])?;
    let serving = "apid: serving the operator API";
    let alive = |l: &[Vec<String>], i: usize, other: &str| l[i].iter().any(|x| x.contains(&format!("memberd: member {other} alive")));
    let up = r.wait(Duration::from_secs(400), false, |l| {
        l.iter().all(|n| n.iter().any(|x| x.contains(serving))) && alive(l, 0, "node2") && alive(l, 1, "node1")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut c = Checks(Vec::new());
    c.check("both nodes serve the API and see each other alive", up, &format!("`{serving}`, `memberd: member NODE alive`"));
    let res = (|| -> Result<(), String> {
        if !up {
            return Err("the cluster did not come up".into());
        }
        let gens = (generation(&r.lines[0], "node1"), generation(&r.lines[1], "node2"));
        let (Some(g1), Some(g2)) = gens else { return Err(format!("no memberd generation logged: {gens:?}")) };
        let forged = crate::forge::leave(crate::forge::identity(nodes[0].identity.public_key(), g1), crate::forge::identity(nodes[1].identity.public_key(), g2))?;
        // a precondition (forging errors above), not a check: the leave's effect is checked below
        println!("  forged: node1's leave (generation {g1}) for node2 (generation {g2}): {} datagrams of {:?} bytes", forged.len(), forged.iter().map(Vec::len).collect::<Vec<_>>());
        // one relay (and fabric session) per node; node1 is the config's fabric node
        let mut relays = Vec::new();
        let mut specs = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let m = n.member();
            let (addr, child) = relay(r.switch_sock(), (m.underlay, m.port), [0x52, 0x54, 0x00, 0xca, 0x00, 0xf0 + i as u8], stop.clone())?;
            relays.push(KillOnDrop(child));
            specs.push(format!("{}@{addr}", catenary_net::cluster::hex_encode(&n.identity.public_key())));
        }
        let o = cli.output(&["init", "--set-fabric", &specs[0]])?;
        if !o.status.success() {
            return Err(format!("init --set-fabric: {}", String::from_utf8_lossy(&o.stderr)));
        }
        let api2 = format!("[{a2}]:{}", catenary_api::PORT);
        let call = |node: usize, args: &[&str]| -> (i32, String, String) {
            let mut a: Vec<&str> = vec!["--timeout", "60"];
            if node == 2 {
                a.extend(["--fabric-node", &specs[1], "--api", &api2]);
            }
            a.extend(args);
            match cli.output(&a) {
                Ok(o) => (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => (-1, String::new(), e),
            }
        };
        let (st, out, err) = call(2, &["--json", "nodes"]);
        let before = membership(&out, "node1");
        c.check("node2's `nodes --json` before: node1 alive", st == 0 && before.as_ref().is_some_and(|m| m.0 == "alive"), &format!("exit {st}: {before:?} {}", err.trim()));
        let mark = r.lines[1].len();
        let (s1, s2) = (a1.to_string(), a2.to_string());
        let hexes: Vec<String> = forged.iter().map(|d| crate::forge::hex(d)).collect();
        let mut args: Vec<&str> = vec!["--json", "run", "--name", TAG, "--mem", "64", &digest, &s1, &s2, &admin_hex, &digest];
        args.extend(hexes.iter().map(String::as_str));
        let (st, out, err) = call(1, &args);
        let w = json(&out);
        let guest = w.as_ref().and_then(|w| w["address"].as_str().map(str::to_string)).unwrap_or_default();
        let in_node1 = guest.parse::<std::net::Ipv6Addr>().is_ok_and(|g| g.octets()[..8] == a1.octets()[..8] && g != a1);
        c.check("admin `run --json` of the attack image: on node1, with a /128 of node1's /64", st == 0 && w.as_ref().is_some_and(|w| w["node"] == "node1" || w["node"].is_null()) && in_node1, &format!("exit {st}: {} {}", out.split_whitespace().collect::<String>(), err.trim()));
        // the guest's report, through the API
        let t0 = Instant::now();
        let mut logs = String::new();
        while !logs.contains("hostile: done") && t0.elapsed() < Duration::from_secs(400) {
            r.wait(Duration::from_secs(3), false, |_| false);
            logs = call(1, &["logs", TAG]).1;
        }
        for l in logs.lines().filter(|l| l.contains("hostile:") || l.contains("udpsend")) {
            println!("  guest: {l}");
        }
        c.check("the guest ran its attack to its end", logs.contains("hostile: done"), &format!("after {:.0} s", t0.elapsed().as_secs_f64()));
        for (n, a) in [("node1", a1), ("node2", a2)] {
            let post = bytes_back(&logs, &format!("POST as the admin to [{a}]:8080:"));
            let get = bytes_back(&logs, &format!("GET /v1/nodes from [{a}]:8080:"));
            c.check(&format!("the guest got 0 bytes from {n}'s apid for its POST as the admin and its GET"), post == Some(0) && get == Some(0), &format!("POST {post:?}, GET {get:?}"));
        }
        let sent = logs.lines().filter(|l| l.contains(&format!("bytes to [{a2}]:{MEMBER_PORT} from port {MEMBER_PORT}"))).count();
        c.check("the guest sent every forged datagram to node2's memberd", sent == forged.len(), &format!("{sent} of {}", forged.len()));
        // let node2 act on them (the protocol's periods are 0.2-1.5 s)
        r.wait(Duration::from_secs(10), false, |_| false);
        for (i, n) in ["node1", "node2"].iter().enumerate() {
            let closed = format!("apid: a connection from {guest}, of no key in the cluster file: closed");
            c.check(&format!("{n}'s apid closed the guest's connections as of no known key"), !guest.is_empty() && r.lines[i].iter().filter(|l| l.contains(&closed)).count() >= 2, &closed);
        }
        let (st, out, _) = call(1, &["--json", "ps"]);
        let names: Vec<String> = json(&out).and_then(|j| j["workloads"].as_array().cloned()).unwrap_or_default().iter().map(|w| format!("{}@{}", w["name"].as_str().unwrap_or("?"), w["node"].as_str().unwrap_or("?"))).collect();
        c.check("`ps --json` (both nodes): no `forged` workload, only the guest itself", st == 0 && names == ["hostile@node1"], &format!("exit {st}: {names:?}"));
        let refused = format!("from [{guest}]:{MEMBER_PORT}, in node1's /64 but not its node address");
        c.check("node2's memberd logged refusing the guest's datagrams", r.lines[1][mark..].iter().any(|l| l.contains("memberd: refused") && l.contains(&refused)), &refused);
        let changed: Vec<&String> = r.lines[1][mark..].iter().filter(|l| l.contains("memberd: member node1 ")).collect();
        let (st, out, err) = call(2, &["--json", "nodes"]);
        let after = membership(&out, "node1");
        c.check(
            "node2 still has node1 alive, same incarnation, no other state logged since the attack",
            st == 0 && after.is_some() && after == before && changed.is_empty(),
            &format!("exit {st}: before {before:?}, after {after:?}; node2 logged {changed:?} {}", err.trim()),
        );
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    r.wait(Duration::from_millis(500), false, |_| false);
    let log = r.save_logs(tag);
    let panic = r.lines.iter().flatten().any(|l| l.contains("KERNEL PANIC"));
    let exits = r.exits();
    drop(r);
    let _ = std::fs::remove_file(dir.join("operator").join("operator.key"));
    if let Err(e) = &res {
        c.check("the test ran to its end", false, e);
    }
    c.check("no node panicked or stopped", !panic && exits.is_empty(), &format!("{exits:?}"));
    t.record(NAME, c.all(), &format!("({} checks; log {}{})", c.0.len(), log.display(), c.failed()));
    Ok(())
}
