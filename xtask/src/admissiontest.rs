//! `cluster_pxe_join` (issue 15 item 2, issue 13 item 3; docs/boot.md "Joining"): two QEMU
//! nodes boot normally (keys in their boot module); a third boots over PXE from a netboot
//! directory that holds only public facts (the kernel, the guest bundle with the workload
//! image, the cluster file: seed endpoints and admitted keys; no key). It makes its key at
//! boot, says hello to the seeds, and must be *pending* (`catenary nodes`), with no fabric
//! session, until the admin runs `catenary node add KEY`; then it must be alive in both
//! nodes' membership and receive a replica of `catenary run --replicas 3`. `catenary ps` then
//! names that replica's node `node-XXXXXXXX` (its name in `catenary nodes`) and shows it
//! running, `catenary nodes` has the node's own figures (node1 gathers from it as from the
//! file's nodes), `catenary node drain node-XXXXXXXX` stops it there, `catenary node leave
//! node-XXXXXXXX` through node1 is forwarded to it and it leaves, and its power button
//! (QEMU `system_powerdown`) makes it leave under its own key and switch itself off.
//!
//! PXE and the cluster's switch together: the PXE node has two NICs, an e1000 on QEMU's
//! user network (its iPXE ROM fetches GRUB, GRUB the kernel and modules over TFTP; Catenary
//! has no e1000 driver and ignores it) and a virtio-net on the vde switch (no option ROM),
//! which is the node's fabric NIC.

use crate::apitest::{Checks, Workstation};
use crate::cluster::NodeSpec;
use crate::test::Tally;
use crate::threenode::{admin_setup, AdminSetup};
use catenary_net::cluster::{hex_decode32, Cluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GENERATED: &str = "net: identity: generated at boot from hardware entropy (no node.key); public key ";
const HARDWARE: &str = "net: hardware: 2 CPUs, ";

/// Every 64-hex word in `text` whose x25519 public key is one of `public`: a private key.
fn secrets_of(text: &str, public: &[[u8; 32]]) -> Vec<String> {
    let mut found = Vec::new();
    for w in text.split(|c: char| !c.is_ascii_hexdigit()) {
        if w.len() != 64 {
            continue;
        }
        if let Some(b) = hex_decode32(w) {
            if public.contains(&netfabric::Identity::from_secret_bytes(b).public_key()) {
                found.push(w[..8].to_string() + "…");
            }
        }
    }
    found
}

fn dir_text(d: &Path) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                s.push_str(&dir_text(&p));
            } else if let Ok(b) = std::fs::read(&p) {
                s.push_str(&String::from_utf8_lossy(&b));
                s.push('\n');
            }
        }
    }
    s
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "cluster_pxe_join";
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    let tools = ["ip", "vde_plug2tap", "wireguard-go", "wg", "grub-mknetdir"].iter().all(|b| crate::tools::which(b).is_some());
    let rom = PathBuf::from("/usr/lib/ipxe/qemu/efi-e1000.rom");
    if !root || !tools || !Path::new("/dev/net/tun").exists() || !rom.exists() {
        t.skip(name, "needs root, /dev/net/tun, ip, vde_plug2tap, wireguard-go, wg, grub-mknetdir, ipxe-qemu");
        return Ok(());
    }
    if let Some(why) = crate::ociimage::missing_tools() {
        t.skip(name, why);
        return Ok(());
    }
    let gdir = crate::tools::out_dir().join("guest");
    if !gdir.join("vmlinux").exists() {
        t.record(name, false, "(no guest bundle in build/guest: `cargo xtask guest` failed?)");
        return Ok(());
    }
    let st = Command::new("cargo").args(["build", "--quiet", "-p", "catenary"]).status().map_err(|e| e.to_string())?;
    if !st.success() {
        t.record(name, false, "(cargo build -p catenary failed)");
        return Ok(());
    }
    let tag = "cluster-pxe-join";
    let AdminSetup { dir, image, admin_cfg, ops } = admin_setup(tag)?;
    let mut image_files = Vec::new();
    for f in ["rootfs.squashfs", "config.json", "image.json"] {
        image_files.push((format!("image/{f}"), std::fs::read(image.join(f)).map_err(|e| format!("{f}: {e}"))?));
    }
    let mut nodes = vec![NodeSpec::new(1), NodeSpec::new(2)];
    for n in &mut nodes {
        n.guest = true;
        n.cmdline = "vm=none".into();
        n.files = image_files.clone();
    }
    let mut r = crate::cluster::start_with(kernel, &nodes, tag, &[], &ops)?;
    // The netboot directory: public facts only (the same cluster file the nodes have).
    let cluster = Cluster { members: nodes.iter().map(NodeSpec::member).collect(), operators: ops.to_vec() };
    let mut files = Vec::new();
    for f in ["vmlinux", "initramfs.cpio.gz"] {
        files.push((f.to_string(), std::fs::read(gdir.join(f)).map_err(|e| format!("guest {f}: {e}"))?));
    }
    files.extend(image_files.iter().cloned());
    files.push(("cluster.txt".into(), cluster.render().into_bytes()));
    let bundle = dir.join("netboot-bundle.cpio");
    std::fs::write(&bundle, crate::build::cpio_newc(&files)).map_err(|e| e.to_string())?;
    let netdir = dir.join("netboot");
    crate::pxe::build_netdir(&netdir, kernel, &[(bundle, "guest-bundle".into())], "vm=none")?;
    let mut c = Checks(Vec::new());
    let mut secret_words = Vec::new();
    let res = (|| -> Result<(), String> {
        let formed = r.wait(Duration::from_secs(600), false, |l| {
            l.iter().all(|n| n.iter().any(|x| x.contains("apid: serving")) && n.iter().any(|x| x.contains("orchd: leader is")))
                && l.iter().any(|n| n.iter().any(|x| x.contains("orchd: 2 nodes admitted")))
        });
        c.check("two nodes: a leader, both admitted", formed, "");
        if !formed {
            return Err("no cluster".into());
        }
        let cluster_txt = dir.join("cluster-workstation.txt");
        std::fs::write(&cluster_txt, Cluster { members: nodes.iter().map(NodeSpec::member).collect(), operators: vec![] }.render()).map_err(|e| e.to_string())?;
        let refs: Vec<&NodeSpec> = nodes.iter().collect();
        let a = Workstation::up(r.switch_sock(), &dir, "alice", &admin_cfg, 1, &cluster_txt, &refs)?;
        // The third node: PXE on an e1000 (QEMU's DHCP/TFTP), the fabric on a virtio-net.
        let mut b = crate::qemu::Boot { kernel: None, ..crate::qemu::Boot::pvh("q35", PathBuf::new()) };
        b.smp = 2;
        b.mem = "1G".into();
        b.extra = vec![
            "-netdev".into(),
            format!("user,id=pxe,tftp={},bootfile={}", netdir.display(), crate::pxe::BIOS_BOOTFILE),
            "-device".into(),
            format!("e1000,netdev=pxe,romfile={}", rom.display()),
            "-netdev".into(),
            format!("vde,id=n0,sock={}", r.switch_sock().display()),
            "-device".into(),
            "virtio-net-pci,netdev=n0,mac=52:54:00:ca:00:03,romfile=".into(),
            "-boot".into(),
            "n".into(),
            // a monitor, for its power button (QEMU `system_powerdown`)
            "-chardev".into(),
            format!("socket,id=mon,path={},server=on,wait=off", r.dir.join("pxe3.mon").display()),
            "-mon".into(),
            "chardev=mon,mode=readline".into(),
        ];
        let started = Instant::now();
        let p = r.add_node("pxe3", b)?;
        // the key line and, just after it, the hardware line (wait for both: the second may
        // arrive a moment later)
        let got_key = r.wait(Duration::from_secs(600), false, |l| {
            l[p].iter().any(|x| x.contains(GENERATED)) && l[p].iter().any(|x| x.contains(HARDWARE) && x.contains("NIC MAC 52:54:00:ca:00:03"))
        });
        let key_hex = r.lines[p].iter().find_map(|x| x.split(GENERATED).nth(1)).map(|s| s.trim().to_string()).unwrap_or_default();
        let booted = started.elapsed();
        c.check("the PXE node made its key at boot and logged its public key and hardware", got_key && key_hex.len() == 64 && r.lines[p].iter().any(|x| x.contains(HARDWARE) && x.contains("NIC MAC 52:54:00:ca:00:03")),
            &format!("{key_hex} after {:.0} s", booted.as_secs_f64()));
        let Some(key) = hex_decode32(&key_hex) else { return Err("no key".into()) };
        let pend = r.wait(Duration::from_secs(180), false, |l| (0..2).all(|i| l[i].iter().any(|x| x.contains("admission: pending node") && x.contains(&key_hex))));
        let pending_at = started.elapsed();
        c.check("both seeds hold it pending (its hello checked out)", pend, &format!("after {:.0} s", pending_at.as_secs_f64()));
        let (st, out, err) = a.cli(&nodes[0], &["nodes"]);
        let row = out.lines().any(|l| l.contains("pending") && l.contains(&key_hex[..8]));
        c.check("`catenary nodes` shows it pending with its key", st == 0 && row && out.contains(&key_hex), &format!("exit {st}: {}", err.trim()));
        let (st, out, _) = a.cli(&nodes[0], &["--json", "nodes"]);
        let compact: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        c.check("`GET /v1/nodes`: state pending, 2 CPUs, its memory and MAC", st == 0 && compact.contains("\"state\":\"pending\"") && compact.contains("52:54:00:ca:00:03") && compact.contains("\"cpus\":2,"), "");
        // Refused any session: a while longer, nothing established, its initiations dropped.
        r.wait(Duration::from_secs(15), false, |_| false);
        let session = r.has(p, "fabric: session with");
        let refused = (0..2).all(|i| r.has(i, "dropped a packet from an unknown sender: UnknownPeer"));
        c.check("no fabric session before admission (both seeds dropped its handshakes)", !session && refused, &format!("session {session}, refused {refused}"));
        c.check("it is in no member table before admission", !(0..2).any(|i| r.has(i, &format!("memberd: member node-{}", &key_hex[..8]))), "");
        let (st, out, err) = a.cli(&nodes[1], &["node", "add", &key_hex]);
        let added = Instant::now();
        c.check("`catenary node add KEY` (admin, through node2) is committed", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let alive = format!("memberd: member node-{} alive", &key_hex[..8]);
        let joined = r.wait(Duration::from_secs(300), false, |l| (0..2).all(|i| l[i].iter().any(|x| x.contains(&alive))) && l[p].iter().any(|x| x.contains("fabric: session with")));
        let join_time = added.elapsed();
        c.check("it joins: a fabric session, alive in both nodes' membership", joined, &format!("{:.1} s after node add", join_time.as_secs_f64()));
        let both = (0..2).all(|i| r.has(i, "is admitted in the desired state: the fabric takes it as a peer"));
        c.check("both nodes' fabric admitted it from their own committed state", both, "");
        let member = r.wait(Duration::from_secs(120), false, |l| l[p].iter().any(|x| x.contains("orchd: admitted by the cluster: member 2")) && l[p].iter().any(|x| x.contains("orchd: raft id")));
        c.check("its orchd learnt its member index and joined Raft", member, "");
        let (st, out, err) = a.cli(&nodes[0], &["nodes"]);
        c.check("`catenary nodes` shows it up and alive", st == 0 && out.lines().any(|l| l.contains(&key_hex[..8]) && l.contains("alive")), &format!("exit {st}: {}", err.trim()));
        let img = image.to_str().unwrap();
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "3", "--name", "web", "--mem", "64", "--restart", "always", img, "hello", "web"]);
        c.check("`catenary run --replicas 3 --name web` is committed", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let run_at = Instant::now();
        let runs = r.wait(Duration::from_secs(400), false, |l| l[p].iter().any(|x| x.contains("orchd: workd runs [") && x.contains("cl-web-") && x.contains(":running")));
        c.check("a replica runs on the PXE-booted node", runs, &format!("{:.1} s after the run", run_at.elapsed().as_secs_f64()));
        // The node admitted at run time by the name `catenary nodes` gives it: in the listing,
        // and to drain it.
        let short = format!("node-{}", &key_hex[..8]);
        let (st, out, err) = a.cli(&nodes[0], &["ps"]);
        c.check(&format!("`catenary ps` names the replica's node {short}, as `catenary nodes` does"), st == 0 && out.contains(&format!("{short}:")), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // node1's gathers ask it as they ask the file's nodes: its replica's state and its own
        // figures come from it
        c.check(&format!("`catenary ps` through node1 shows the replica on {short} running (gathered from it)"), out.contains(&format!("{short}:running")), &out.lines().filter(|l| l.contains("web")).collect::<Vec<_>>().join(" | "));
        let (st, out, err) = a.cli(&nodes[0], &["--json", "nodes"]);
        let row = crate::apitest::json(&out).and_then(|v| v["nodes"].as_array().and_then(|l| l.iter().find(|n| n["name"] == short.as_str()).cloned()));
        c.check(
            &format!("`catenary --json nodes` through node1 has {short}'s own figures (CPUs, free memory, store)"),
            st == 0 && row.as_ref().is_some_and(|r| r["cpus"].as_u64() == Some(2) && r["memory_free_mib"].as_u64().is_some() && r["store_free_mib"].as_u64().is_some() && r["state"] == "up"),
            &format!("exit {st}: {row:?} {}", err.trim()),
        );
        let mark = r.lines[p].len();
        let (st, out, err) = a.cli(&nodes[0], &["node", "drain", &short]);
        c.check(&format!("`catenary node drain {short}` (a node admitted at run time) is committed"), st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let drained = r.wait(Duration::from_secs(120), false, |l| l[p][mark..].iter().any(|x| x.contains("orchd: workd runs [") && !x.contains("cl-web-")));
        c.check("its replica stops there (drained)", drained, "");
        // and it leaves when asked through node1 (the request is forwarded to it by name)
        let (st, out, err) = a.cli(&nodes[0], &["node", "leave", &short]);
        c.check(&format!("`catenary node leave {short}` through node1 reaches it and it leaves"), st == 0 && out.contains("left the cluster") && r.wait(Duration::from_secs(30), false, |l| l[p].iter().any(|x| x.contains("memberd: leaving the cluster"))), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // Its power button: it finds its own key (memberd's own row), leaves and switches off.
        let mark = r.lines[p].len();
        r.power_button(p);
        let off = r.wait(Duration::from_secs(90), false, |l| l[p][mark..].iter().any(|x| x.starts_with(crate::cluster::NODE_STOPPED)));
        let after = &r.lines[p][mark..];
        c.check(
            &format!("its power button: {short} knows its own key, leaves and switches itself off (ACPI S5, QEMU status 0)"),
            off && after.iter().any(|x| x.contains(&format!("apid: power button: {short} leaves the cluster")))
                && after.iter().any(|x| x.starts_with(crate::cluster::NODE_STOPPED) && x.contains("QEMU ended (exit status: 0)")),
            &after.iter().filter(|x| x.contains("power") || x.starts_with("[xtask]")).cloned().collect::<Vec<_>>().join(" | "),
        );
        println!("  timings: PXE start -> key made {:.1} s; -> pending on both seeds {:.1} s; node add -> alive on both {:.1} s; run -> replica running on it {:.1} s",
            booted.as_secs_f64(), pending_at.as_secs_f64(), join_time.as_secs_f64(), run_at.elapsed().as_secs_f64());
        secret_words = vec![key];
        Ok(())
    })();
    let log = r.save_logs(tag);
    // No private key in the netboot directory or in any serial log.
    let mut public: Vec<[u8; 32]> = nodes.iter().map(|n| n.identity.public_key()).collect();
    public.extend(secret_words);
    let mut leaks = secrets_of(&dir_text(&netdir), &public);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    leaks.extend(secrets_of(&logs, &public));
    let keyfiles = Command::new("find").arg(&netdir).args(["-name", "*.key"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    c.check("no private key in the netboot directory or the serial logs", leaks.is_empty() && keyfiles.is_empty(), &format!("{leaks:?} {keyfiles}"));
    if let Err(e) = &res {
        println!("  ({e}; log {})", log.display());
    }
    let bad: Vec<&str> = c.0.iter().filter(|x| !x.1).map(|x| x.0.as_str()).collect();
    t.record(name, res.is_ok() && bad.is_empty(), &format!("({} checks; failed: {bad:?}; log {})", c.0.len(), log.display()));
    Ok(())
}
