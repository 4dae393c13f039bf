//! `cargo xtask run --nodes N` makes the cluster ready for an operator (issue 12 item 6,
//! issue 13 item 5, docs/api.md "A local cluster"): `catenary cluster new` makes the node
//! keys, the cluster file and the operator config in `build/cluster` (the operator's key an
//! `admin` line of the file, its API endpoint node1's fabric /128), and xtask adds the CLI's
//! way in, which needs no root: a relay from a localhost UDP port onto the cluster's switch
//! (`catenary::ops::relay`, the library function of `catenary cluster relay`) as the config's fabric endpoint (`catenary init --set-fabric
//! NODE1KEY@[::1]:PORT`), so that in a second terminal
//! `CATENARY_CONFIG_DIR=build/cluster/operator catenary nodes` answers through the CLI's
//! embedded fabric.
//!
//! The stock tools' way in uses a second admin key (`build/cluster/operator/wg`: one key per
//! fabric endpoint, or the node's session would flip between the two): `catenary wg-config`
//! writes `wg0.conf`; as root, xtask also brings it up in the host's namespace (tap `catop0`
//! on the switch through `vde_plug2tap`, `wireguard-go catwg0`, `wg setconf`, the operator
//! address and a route per node /64) for `curl`. Without root it prints the commands.

use crate::cluster::NodeSpec;
use crate::netns::sh;
use catenary_net::cluster::{Cluster, Operator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TAP: &str = "catop0";
pub const WG: &str = "catwg0";

pub fn dir() -> PathBuf {
    crate::tools::out_dir().join("cluster").join("operator")
}

fn catenary(args: &[&str], cfg: &Path) -> Result<String, String> {
    let o = Command::new("cargo").args(["run", "--quiet", "-p", "catenary", "--"]).args(args).env("CATENARY_CONFIG_DIR", cfg).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("catenary {}: {}", args.first().unwrap_or(&""), String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A new cluster made the one way an operator makes one: `catenary cluster new --nodes N
/// --dir build/cluster --force` writes the node keys (`nodeK.key`, 0600), the cluster file and
/// the operator config (`build/cluster/operator`, admin, API at node1's fabric /128). xtask
/// reads the keys back from those files (never from a command line or a log) into the nodes'
/// specs, and adds one more admin key for the stock tools (`operator/wg`: one key per fabric
/// endpoint, or the node's session would flip between the two). Returns the nodes and the
/// cluster file's operators.
pub fn new_cluster(n: usize) -> Result<(Vec<NodeSpec>, Vec<Operator>), String> {
    let cdir = dir().parent().expect("build/cluster").to_path_buf();
    std::fs::create_dir_all(&cdir).map_err(|e| e.to_string())?;
    catenary(&["cluster", "new", "--nodes", &n.to_string(), "--dir", cdir.to_str().ok_or("build dir is not UTF-8")?, "--force"], &dir())?;
    let text = std::fs::read_to_string(cdir.join("cluster.txt")).map_err(|e| format!("cluster.txt: {e}"))?;
    let file = Cluster::parse(&text).map_err(|e| format!("catenary cluster new wrote a cluster file that does not parse: {e}"))?;
    let mut nodes = Vec::new();
    for k in 1..=n {
        let p = cdir.join(format!("node{k}.key"));
        let raw = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let secret = catenary_net::nodekey::parse_node_key(&raw).map_err(|e| format!("{}: {e:?}", p.display()))?;
        let mut spec = NodeSpec::new(k);
        spec.identity = netfabric::Identity::from_secret_bytes(secret);
        // the cluster file is the truth: the node must be the one it names, at the address it names
        if file.members.get(k - 1) != Some(&spec.member()) {
            return Err(format!("node{k}: the cluster file does not list it as xtask boots it"));
        }
        nodes.push(spec);
    }
    let mut ops = file.operators;
    let line = catenary(&["init", "--name", "workstation-wg", "--force"], &dir().join("wg"))?;
    let key = line.split_whitespace().nth(2).and_then(catenary_net::cluster::hex_decode32).ok_or(format!("catenary init printed {line:?}"))?;
    ops.push(Operator { name: "workstation-wg".into(), public_key: key, role: "admin".into() });
    Ok((nodes, ops))
}

/// The CLI's fabric endpoint: the relay to node1's underlay address on the switch, written
/// into the operator config (`init --set-fabric`). Ends with xtask.
pub struct CliRelay {
    stop: Arc<AtomicBool>,
    child: Child,
}

impl Drop for CliRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cli_relay(switch: &Path, node1: &NodeSpec) -> Result<CliRelay, String> {
    let m = node1.member();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, child) = catenary::ops::relay::start(switch, (m.underlay, m.port), [0x52, 0x54, 0x00, 0xca, 0x00, 0xe1], stop.clone())?;
    let r = CliRelay { stop, child };
    let spec = format!("{}@{addr}", catenary_net::cluster::hex_encode(&node1.identity.public_key()));
    catenary(&["init", "--set-fabric", &spec], &dir())?;
    Ok(r)
}

/// What keeps the workstation's fabric up (ended with xtask).
pub struct Workstation {
    children: Vec<Child>,
}

impl Drop for Workstation {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["link", "del", TAP]).output();
    }
}

/// `wg0.conf` for the nodes, and (as root, with the tools) the interface up in this namespace.
pub fn workstation(switch: &Path, nodes: &[NodeSpec]) -> Result<Option<Workstation>, String> {
    let cfg = dir();
    let cluster = cfg.join("cluster.txt");
    std::fs::write(&cluster, Cluster { members: nodes.iter().map(NodeSpec::member).collect(), operators: vec![] }.render()).map_err(|e| e.to_string())?;
    let conf = cfg.join("wg0.conf");
    catenary(&["wg-config", "--cluster", cluster.to_str().unwrap(), "--iface", TAP, "-o", conf.to_str().unwrap()], &cfg.join("wg"))?;
    let root = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    let tools = ["ip", "vde_plug2tap", "wireguard-go", "wg"].iter().all(|b| crate::tools::which(b).is_some());
    let routes: Vec<String> = nodes.iter().map(|n| format!("{}/64", n.identity.prefix().network())).collect();
    if !root || !tools {
        eprintln!("xtask: the operator's WireGuard config is {} (needs root, vde_plug2tap, wireguard-go, wg to bring up):", conf.display());
        eprintln!("xtask:   sudo ip tuntap add dev {TAP} mode tap && sudo ip link set {TAP} up && sudo vde_plug2tap -s {} {TAP} &", switch.display());
        eprintln!("xtask:   sudo wg-quick up {}   # or wireguard-go {WG} + wg setconf + ip addr", conf.display());
        for r in &routes {
            eprintln!("xtask:   sudo ip -6 route add {r} dev {WG}");
        }
        return Ok(None);
    }
    let text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
    let address = text.lines().find_map(|l| l.strip_prefix("Address = ")).ok_or("no Address in the wg-config output")?.to_string();
    let stripped = cfg.join("wg0.setconf");
    crate::cluster::write_private(&stripped, (text.lines().filter(|l| !l.starts_with("Address")).collect::<Vec<_>>().join("\n") + "\n").as_bytes())?;
    let _ = Command::new("ip").args(["link", "del", TAP]).output();
    let _ = Command::new("ip").args(["link", "del", WG]).output();
    let mut w = Workstation { children: Vec::new() };
    sh(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])?;
    sh(&["ip", "link", "set", TAP, "address", "52:54:00:ca:02:01"])?;
    w.children.push(Command::new("vde_plug2tap").arg("-s").arg(switch).arg(TAP).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?);
    sh(&["ip", "link", "set", TAP, "up"])?;
    w.children.push(Command::new("wireguard-go").args(["-f", WG]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?);
    let t0 = Instant::now();
    while sh(&["ip", "link", "show", WG]).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("wireguard-go did not create its interface".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = sh(&["wg", "setconf", WG, stripped.to_str().unwrap()]);
    let _ = std::fs::remove_file(&stripped);
    r?;
    sh(&["ip", "-6", "addr", "add", &address, "dev", WG])?;
    sh(&["ip", "link", "set", WG, "up"])?;
    for r in &routes {
        sh(&["ip", "-6", "route", "add", r, "dev", WG])?;
    }
    Ok(Some(w))
}
