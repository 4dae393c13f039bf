//! Operator access (issue 12, docs/api.md): a workstation made with the `catenary` CLI reaches a
//! node's fabric /128 with stock WireGuard tools.
//!
//! `catenary init` makes the operator key (its printed line goes into the cluster file as an
//! `operator` line: no endpoint), `catenary wg-config` writes the WireGuard config, and
//! `wireguard-go` + `wg setconf` in a network namespace on the switch bring it up with a random
//! listen port; `ping -6` to the node's fabric address must be answered (the node learns the
//! operator's endpoint from its authenticated handshake) and the node must log the session
//! with `operator:NAME`.

use crate::cluster::{sh, wireguard_go_namespace, NodeSpec, NsGuard};
use crate::test::Tally;
use catenary_net::cluster::{Cluster, Operator};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

pub fn test_operator_wireguard_go(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "net_operator_wireguard_go_reaches_fabric_address";
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    let tools = ["ip", "vde_plug2tap", "ping", "wireguard-go", "wg"].iter().all(|b| crate::tools::which(b).is_some());
    if !root || !tools || !Path::new("/dev/net/tun").exists() {
        t.skip(name, "needs root, /dev/net/tun, ip, ping, vde_plug2tap, wireguard-go, wg");
        return Ok(());
    }
    let node = NodeSpec::new(1);
    // the workstation's view of the cluster: this node with its endpoint
    let node_member = node.member();
    let node_addr = node.identity.node_address();
    let node_prefix = format!("{}/64", node.identity.prefix().network());
    let tag = "net-operator-wg";
    let dir = crate::tools::out_dir().join(tag);
    let cfg = dir.join("operator");
    let _ = std::fs::remove_dir_all(&cfg);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let catenary = |args: &[&str]| -> Result<String, String> {
        let o = Command::new("cargo").args(["run", "--quiet", "-p", "catenary", "--"]).args(args).env("CATENARY_CONFIG_DIR", &cfg).output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("catenary {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    // the operator line `catenary init` prints goes into the cluster file
    let line = catenary(&["init", "--name", "linux"])?;
    let w: Vec<&str> = line.split_whitespace().collect();
    let key = w.get(2).and_then(|k| catenary_net::cluster::hex_decode32(k)).ok_or(format!("catenary init printed {line:?}"))?;
    let op = Operator { name: "linux".into(), public_key: key, role: "admin".into() };
    let mut r = crate::cluster::start_with(kernel, &[node], tag, &[], &[op])?;
    let up = r.wait(Duration::from_secs(60), false, |l| l[0].iter().any(|x| x.contains("fabric address")));
    let id = std::process::id() % 10000;
    let (ns, tap, wgif) = (format!("catop{id}"), format!("catot{id}"), format!("catop{id}"));
    let tap_mac = [0x52u8, 0x54, 0x00, 0xca, 0x00, 0xfd];
    let cluster_txt = dir.join("cluster-workstation.txt");
    std::fs::write(&cluster_txt, Cluster { members: vec![node_member], operators: vec![] }.render()).map_err(|e| e.to_string())?;
    let conf = dir.join("wg-operator.conf");
    let mut g = NsGuard { ns: ns.clone(), plug: None };
    let mut wg: Option<Child> = None;
    let res = (|| -> Result<String, String> {
        catenary(&["wg-config", "--cluster", cluster_txt.to_str().unwrap(), "--iface", &tap, "-o", conf.to_str().unwrap()])?;
        // `wg setconf` takes the file without wg-quick's Address line (what `wg-quick strip` does)
        let text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        let address = text.lines().find_map(|l| l.strip_prefix("Address = ")).ok_or("no Address in the wg-config output")?.to_string();
        let stripped = dir.join("wg-operator.setconf");
        std::fs::write(&stripped, text.lines().filter(|l| !l.starts_with("Address")).collect::<Vec<_>>().join("\n") + "\n").map_err(|e| e.to_string())?;
        sh(&["chmod", "600", stripped.to_str().unwrap()])?;
        wg = Some(wireguard_go_namespace(r.switch_sock(), &ns, &tap, &wgif, tap_mac, &mut g)?);
        sh(&["ip", "netns", "exec", &ns, "wg", "setconf", &wgif, stripped.to_str().unwrap()])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "-6", "addr", "add", &address, "dev", &wgif])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &wgif, "up"])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "-6", "route", "add", &node_prefix, "dev", &wgif])?;
        let o = Command::new("ip").args(["netns", "exec", &ns, "ping", "-6", "-c", "5", "-W", "5", &node_addr.to_string()]).output().map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    })();
    r.wait(Duration::from_millis(500), false, |_| false);
    let session = r.has(0, "session with operator:linux established");
    let log = r.save_logs(tag);
    if let Some(mut c) = wg {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(g);
    drop(r);
    // the operator's private key stays in no file of the run
    for f in [conf, dir.join("wg-operator.setconf"), cfg.join("operator.key")] {
        let _ = std::fs::remove_file(f);
    }
    match res {
        Ok(out) => {
            let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or("").to_string();
            println!("  operator via wireguard-go: {line}; node logged the session: {session}");
            let received: u32 = line.split(", ").find_map(|p| p.strip_suffix(" received")).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
            t.record(name, up && session && received >= 3, &format!("({line}; log {})", log.display()));
        }
        Err(e) => t.record(name, false, &format!("({e}; log {})", log.display())),
    }
    Ok(())
}
