//! Operator access (issue 12, docs/api.md): a workstation made with the `catenary` CLI reaches a
//! node's fabric /128 with stock WireGuard tools.
//!
//! `catenary init` makes the operator key (its printed line goes into the cluster file as an
//! `operator` line: no endpoint), `catenary wg-config` writes the WireGuard config, and
//! `wireguard-go` + `wg setconf` in a network namespace on the switch bring it up with a random
//! listen port; `ping -6` to the node's fabric address must be answered (the node learns the
//! operator's endpoint from its authenticated handshake) and the node must log the session
//! with `operator:NAME`.

use crate::cluster::NodeSpec;
use crate::netns::{sh, wireguard_go_namespace, NsGuard};
use crate::preflight::{ready, Needs};
use crate::test::Tally;
use catenary_net::cluster::{Cluster, Operator};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

pub fn test_operator_wireguard_go(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "net_operator_wireguard_go_reaches_fabric_address";
    if !ready(t, &[name], &Needs { root: true, tools: &["ip", "ping", "vde_plug2tap", "wireguard-go", "wg"], ..Needs::default() }) {
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

/// A workstation in its own network namespace on the switch: a `catenary init` key (its
/// config directory), a `wireguard-go` interface configured by `catenary wg-config` with the
/// nodes as peers, routes to their /64s.
pub(crate) struct Workstation {
    cfg: std::path::PathBuf,
    ns: String,
    wg: Option<Child>,
    _g: NsGuard,
}

impl Drop for Workstation {
    fn drop(&mut self) {
        if let Some(c) = &mut self.wg {
            let _ = c.kill();
            let _ = c.wait();
        }
        // the operator's private key stays in no file of the run
        let _ = std::fs::remove_file(self.cfg.join("operator.key"));
    }
}

/// The `catenary` binary (built once by the test).
fn cli() -> std::path::PathBuf {
    crate::tools::root().join("target/debug/catenary")
}

/// `catenary init --name NAME` in `cfg`: the operator's public key.
pub(crate) fn init_key(cfg: &Path, name: &str) -> Result<[u8; 32], String> {
    let _ = std::fs::remove_dir_all(cfg);
    let o = Command::new(cli()).args(["init", "--name", name]).env("CATENARY_CONFIG_DIR", cfg).output().map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    line.split_whitespace().nth(2).and_then(catenary_net::cluster::hex_decode32).ok_or(format!("catenary init printed {line:?}"))
}

impl Workstation {
    pub(crate) fn up(switch: &Path, dir: &Path, name: &str, cfg: &Path, idx: u8, cluster_txt: &Path, nodes: &[&NodeSpec]) -> Result<Workstation, String> {
        let id = std::process::id() % 1000;
        let (ns, tap, wgif) = (format!("catapi{id}{idx}"), format!("catat{id}{idx}"), format!("catw{id}{idx}"));
        let mut g = NsGuard { ns: ns.clone(), plug: None };
        let conf = dir.join(format!("wg-{name}.conf"));
        let o = Command::new(cli()).args(["wg-config", "--cluster", cluster_txt.to_str().unwrap(), "--iface", &tap, "-o", conf.to_str().unwrap()])
            .env("CATENARY_CONFIG_DIR", cfg).output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("catenary wg-config: {}", String::from_utf8_lossy(&o.stderr).trim()));
        }
        let text = std::fs::read_to_string(&conf).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&conf);
        let address = text.lines().find_map(|l| l.strip_prefix("Address = ")).ok_or("no Address in the wg-config output")?.to_string();
        let stripped = dir.join(format!("wg-{name}.setconf"));
        std::fs::write(&stripped, text.lines().filter(|l| !l.starts_with("Address")).collect::<Vec<_>>().join("\n") + "\n").map_err(|e| e.to_string())?;
        sh(&["chmod", "600", stripped.to_str().unwrap()])?;
        let mut ws = Workstation { cfg: cfg.to_path_buf(), ns: ns.clone(), wg: None, _g: NsGuard { ns: String::new(), plug: None } };
        let r = (|| {
            ws.wg = Some(wireguard_go_namespace(switch, &ns, &tap, &wgif, [0x52, 0x54, 0x00, 0xca, 0x01, idx], &mut g)?);
            sh(&["ip", "netns", "exec", &ns, "wg", "setconf", &wgif, stripped.to_str().unwrap()])?;
            sh(&["ip", "netns", "exec", &ns, "ip", "-6", "addr", "add", &address, "dev", &wgif])?;
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &wgif, "up"])?;
            for n in nodes {
                sh(&["ip", "netns", "exec", &ns, "ip", "-6", "route", "add", &format!("{}/64", n.identity.prefix().network()), "dev", &wgif])?;
            }
            Ok::<(), String>(())
        })();
        let _ = std::fs::remove_file(&stripped);
        ws._g = g;
        r.map(|_| ws)
    }

    /// `catenary --api [node]:8080 ARGS` in the namespace: (exit status, stdout, stderr).
    pub(crate) fn cli(&self, node: &NodeSpec, args: &[&str]) -> (i32, String, String) {
        let api = format!("[{}]:{}", node.identity.node_address(), catenary_api::PORT);
        let o = Command::new("ip").args(["netns", "exec", &self.ns]).arg(cli()).args(["--api", &api]).args(args).env("CATENARY_CONFIG_DIR", &self.cfg).output();
        match o {
            Ok(o) => (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => (-1, String::new(), e.to_string()),
        }
    }

    /// A `GET path` from the namespace by a client that shuts down its sending side right after
    /// the request (`shutdown(SHUT_WR)`, a FIN) and then reads until the node closes: (exit
    /// status, everything read: status line, headers, body). python3's sockets, as curl has no
    /// way to half-close.
    pub(crate) fn half_closed_get(&self, node: &NodeSpec, path: &str) -> (i32, String) {
        const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(("GET %s HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n" % sys.argv[3]).encode())
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
sys.stdout.buffer.write(got)
"#;
        let addr = node.identity.node_address().to_string();
        let port = catenary_api::PORT.to_string();
        let o = Command::new("ip").args(["netns", "exec", &self.ns, "python3", "-c", CLIENT, &addr, &port, path]).output();
        match o {
            Ok(o) => (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
            Err(e) => (-1, e.to_string()),
        }
    }

    /// The reset path of a parked request, in the background: the script starts, says it is
    /// ready, and waits for [`ParkedScript::go`] (the caller first makes another node hang, so
    /// the requests below are made while the membership still has it alive). Then two
    /// clients ask `node` for `GET path` (a read it gathers from the other nodes: each is
    /// parked while its ask to the hung node waits, 4 s at least, `IDLE_FORWARD_MS`), a third
    /// asks 2 s later and must be refused `503 busy` (the node parks at most two: so the two
    /// were parked), the two reset their connections (`SO_LINGER` 0: an RST), and a fourth
    /// asks 0.5 s later (again on a 503 until 1 s after the reset: the RST's way through a
    /// loaded node). [`ParkedScript::result`] is the third's status (`503busy` when its body
    /// says `busy`), the fourth's, and when the fourth that counted was asked, seconds after
    /// the two: as `"503busy 200 2.6"`. A 200 asked before 3.5 s came while the two could not
    /// have ended by themselves: their places were freed by the reset.
    pub(crate) fn parked_then_reset(&self, node: &NodeSpec, path: &str) -> Result<ParkedScript, String> {
        const CLIENT: &str = r#"
import socket, struct, sys, time
addr, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def ask():
    s = socket.create_connection((addr, port), timeout=60)
    s.sendall(("GET %s HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n" % path).encode())
    return s
def status(s):
    got = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    parts = got.split(b" ", 2)
    code = parts[1].decode() if got.startswith(b"HTTP/") and len(parts) > 1 else "-"
    return code + ("busy" if code == "503" and b"busy" in got else "")
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
parked = [ask(), ask()]
time.sleep(2)
third = status(ask())
for s in parked:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
reset = time.monotonic()
time.sleep(0.5)
while True:
    t = time.monotonic()
    fourth = status(ask())
    if not fourth.startswith("503") or time.monotonic() - reset > 1.0:
        break
    time.sleep(0.2)
print(third, fourth, "%.1f" % (t - t0))
"#;
        use std::io::BufRead;
        let addr = node.identity.node_address().to_string();
        let port = catenary_api::PORT.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3", "-c", CLIENT, &addr, &port, path])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut out = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 || line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the script did not start: {line:?}"));
        }
        Ok(ParkedScript { child, out })
    }

    /// `curl` in the namespace: (exit status, HTTP status and body).
    pub(crate) fn curl(&self, node: &NodeSpec, path: &str) -> (i32, String) {
        let url = format!("http://[{}]:{}{path}", node.identity.node_address(), catenary_api::PORT);
        let o = Command::new("ip").args(["netns", "exec", &self.ns, "curl", "-s", "-g", "--max-time", "15", "-w", "\n%{http_code}", &url]).output();
        match o {
            Ok(o) => (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned()),
            Err(e) => (-1, e.to_string()),
        }
    }
}

/// A check of the API test: its line and whether it held.
pub struct Checks(pub Vec<(String, bool)>);

impl Checks {
    pub fn check(&mut self, what: &str, ok: bool, detail: &str) {
        // one line each: the first line of the detail, at most 160 characters
        let d: String = detail.trim().lines().next().unwrap_or("").chars().take(160).collect();
        println!("  {} {what}: {d}", if ok { "ok  " } else { "FAIL" });
        self.0.push((what.into(), ok));
    }
    pub fn all(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|c| c.1)
    }
    /// The failed checks' names, for the `test NAME ... FAILED` line: CI shows only the tail of
    /// the output, and a FAIL line printed minutes earlier may not be in it.
    pub fn failed(&self) -> String {
        let bad: Vec<&str> = self.0.iter().filter(|c| !c.1).map(|c| c.0.as_str()).collect();
        if bad.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", bad.join(" | "))
        }
    }
}

pub fn json(s: &str) -> Option<serde_json::Value> {
    serde_json::from_str(s.trim()).ok()
}

/// `net_operator_api_cli` (issue 12 items 1, 2, 5-7; docs/api.md): two nodes each running
/// `apid`; workstations in namespaces reach them through `wireguard-go` with their own keys.
/// The admin's CLI lists nodes, runs the store's image on node2, follows its log through node1
/// (forwarded), sees it in `ps` of either node (gathered from both), inspects and stops it
/// through node1, removes it through node2; a viewer's `run` is refused (exit
/// 4, 403) while its `ps` works; a key the cluster file does not list gets no answer at all
/// (CLI exit 3, curl times out); `curl` gets JSON; every `--json` output parses.
pub fn test_operator_api(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "net_operator_api_cli";
    let needs = Needs { root: true, tools: &["ip", "curl", "vde_plug2tap", "wireguard-go", "wg"], images: true, guest: true, cli: true };
    if !ready(t, &[name], &needs) {
        return Ok(());
    }
    let tag = "net-operator-api";
    let dir = crate::tools::out_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // the workload test's busybox image (`hello NAME` greets and sleeps), packed
    let img_dir = crate::tools::out_dir().join("operator-api-image");
    crate::workloadtest::build(&img_dir)?;
    let image = img_dir.join("out");
    let (admin_cfg, viewer_cfg, stranger_cfg) = (dir.join("admin"), dir.join("viewer"), dir.join("stranger"));
    let admin = init_key(&admin_cfg, "alice")?;
    let viewer = init_key(&viewer_cfg, "ci")?;
    init_key(&stranger_cfg, "mallory")?;
    let ops = [
        Operator { name: "alice".into(), public_key: admin, role: "admin".into() },
        Operator { name: "ci".into(), public_key: viewer, role: "viewer".into() },
    ];
    let mut nodes = vec![NodeSpec::new(1), NodeSpec::new(2)];
    for (i, n) in nodes.iter_mut().enumerate() {
        n.guest = true;
        n.cmdline = "vm=none".into();
        // the image only in node2's store: node1 finds it there (list, inspect, run, remove)
        for f in ["rootfs.squashfs", "config.json", "image.json"].into_iter().filter(|_| i == 1) {
            n.files.push((format!("image/{f}"), std::fs::read(image.join(f)).map_err(|e| format!("{f}: {e}"))?));
        }
    }
    let mut r = crate::cluster::start_with(kernel, &nodes, tag, &[], &ops)?;
    let serving = "apid: serving the operator API";
    let up = r.wait(Duration::from_secs(400), false, |l| l.iter().all(|n| n.iter().any(|x| x.contains(serving))));
    let cluster_txt = dir.join("cluster-workstation.txt");
    std::fs::write(&cluster_txt, Cluster { members: nodes.iter().map(NodeSpec::member).collect(), operators: vec![] }.render()).map_err(|e| e.to_string())?;
    let mut c = Checks(Vec::new());
    c.check("both nodes' apid listen on their fabric /128, port 8080", up, &format!("`{serving}` on each node"));
    let res = (|| -> Result<(), String> {
        if !up {
            return Err("apid is not serving".into());
        }
        let refs: Vec<&NodeSpec> = nodes.iter().collect();
        let a = Workstation::up(r.switch_sock(), &dir, "alice", &admin_cfg, 1, &cluster_txt, &refs)?;
        let v = Workstation::up(r.switch_sock(), &dir, "ci", &viewer_cfg, 2, &cluster_txt, &refs)?;
        let s = Workstation::up(r.switch_sock(), &dir, "mallory", &stranger_cfg, 3, &cluster_txt, &refs)?;
        let (n1, n2) = (&nodes[0], &nodes[1]);
        // nodes: both listed, node1 up (it answers), JSON parses
        let (st, out, err) = a.cli(n1, &["--json", "nodes"]);
        let nl = json(&out);
        let names: Vec<String> = nl.as_ref().and_then(|j| j["nodes"].as_array().cloned()).unwrap_or_default().iter().map(|n| format!("{}:{}", n["name"].as_str().unwrap_or("?"), n["state"].as_str().unwrap_or("?"))).collect();
        c.check("admin `catenary --json nodes` via node1 lists both nodes", st == 0 && names.len() == 2 && names.contains(&"node1:up".to_string()), &format!("exit {st}: {names:?} {err}"));
        // each node's CPUs and memory (node2's gathered from node2)
        let figures = |nl: &Option<serde_json::Value>, node: &str| -> Option<(u64, u64, u64, u64)> {
            let n = nl.as_ref()?["nodes"].as_array()?.iter().find(|n| n["name"] == node)?.clone();
            Some((n["cpus"].as_u64()?, n["memory_total_mib"].as_u64()?, n["memory_free_mib"].as_u64()?, n["memory_committed_mib"].as_u64()?))
        };
        let idle = figures(&nl, "node2");
        c.check(
            "`nodes --json` via node1: both nodes' CPUs, memory total/free/committed (node2's from node2)",
            figures(&nl, "node1").is_some_and(|f| f.0 >= 1 && f.1 > 0 && f.2 > 0 && f.2 <= f.1) && idle.is_some_and(|f| f.0 >= 1 && f.1 > 0 && f.2 > 0 && f.3 == 0),
            &format!("node1 {:?} node2 {idle:?}", figures(&nl, "node1")),
        );
        let (st, out, _) = a.cli(n1, &["nodes"]);
        c.check("admin `catenary nodes` prints a table", st == 0 && out.contains("node1") && out.contains("node2"), &out.replace('\n', " | "));
        // the image in node1's store; push of an image the node has is instant
        let (st, out, err) = a.cli(n1, &["--json", "image", "ls"]);
        let digest = std::fs::read_to_string(image.join("image.json")).ok().map(|m| format!("sha256:{}", catenary_api::auth::hex(&sha256(m.as_bytes())))).unwrap_or_default();
        let listed: Vec<(String, String)> = json(&out).and_then(|j| j["images"].as_array().cloned()).unwrap_or_default().iter().map(|i| (i["digest"].as_str().unwrap_or("?").to_string(), i["node"].as_str().unwrap_or("?").to_string())).collect();
        c.check("`image ls --json` via node1 lists node2's image with `node: node2`", st == 0 && listed == [(digest.clone(), "node2".to_string())], &format!("exit {st}: {listed:?} {err}"));
        let (st, out) = a.curl(n1, &format!("/v1/images/{digest}"));
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", ""));
        c.check("curl GET /v1/images/{digest} via node1 finds it on node2", st == 0 && code == "200" && json(body).is_some_and(|j| j["digest"] == digest.as_str() && j["node"] == "node2"), &format!("HTTP {code}: {}", body.trim()));
        let (st, out, err) = a.cli(n2, &["image", "push", image.to_str().unwrap()]);
        c.check("`image push` of an image the node has is answered at once", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // run through node1 from the packed directory (its digest): only node2 has the
        // image, so the workload is placed there; everything else goes through node1 too,
        // which forwards what concerns node2's workload
        let (st, out, err) = a.cli(n1, &["--json", "run", "--name", "greeter", "--mem", "64", image.to_str().unwrap(), "hello", "apitest"]);
        let w = json(&out);
        c.check("admin `run --json` via node1 of node2's image: created and started on node2", st == 0 && w.as_ref().is_some_and(|w| w["name"] == "greeter" && w["node"] == "node2"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let api = format!("[{}]:{}", n1.identity.node_address(), catenary_api::PORT);
        let mut follow = Command::new("ip").args(["netns", "exec", &a.ns]).arg(cli()).args(["--api", &api, "logs", "-f", "greeter"])
            .env("CATENARY_CONFIG_DIR", &a.cfg).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().map_err(|e| e.to_string())?;
        let out_pipe = follow.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out_pipe).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let t0 = std::time::Instant::now();
        let mut greeted = false;
        while !greeted && t0.elapsed() < Duration::from_secs(300) {
            if let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
                greeted |= l.contains("hello from apitest");
            }
            r.wait(Duration::from_millis(10), false, |_| false);
        }
        c.check("`logs -f greeter` through node1 shows node2's workload's output as it comes", greeted, &format!("after {:.0} s", t0.elapsed().as_secs_f64()));
        // node2's figures follow its workload: 64 MiB (+ overhead) committed, memory taken
        let (st, out, _) = a.cli(n1, &["--json", "nodes"]);
        let busy = figures(&json(&out), "node2");
        c.check(
            "`nodes --json` via node1 while greeter runs: node2's committed memory ≥ 64 MiB more, its free memory less",
            st == 0 && matches!((idle, busy), (Some(i), Some(b)) if b.3 >= i.3 + 64 && b.2 < i.2),
            &format!("node2 idle {idle:?}, running {busy:?} (cpus, total, free, committed MiB)"),
        );
        let (st, out, err) = a.cli(n1, &["image", "rm", &digest]);
        c.check("`image rm` via node1 while greeter uses it: exit 1, node2's refusal (in use)", st == 1 && err.contains("node2") && err.contains("image_in_use"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // ps on either node: the list gathered from both, each entry with its node
        for (via, n) in [("node1", n1), ("node2", n2)] {
            let (st, out, _) = a.cli(n, &["--json", "ps"]);
            let l = json(&out).and_then(|j| j["workloads"].as_array().cloned()).unwrap_or_default();
            let seen = l.iter().any(|w| w["name"] == "greeter" && w["state"] == "running" && w["node"] == "node2");
            c.check(&format!("`ps --json` via {via} shows greeter running on node2"), st == 0 && seen && l.len() == 1, &format!("exit {st}: {}", out.replace('\n', " ")));
        }
        let (st, out, _) = a.cli(n1, &["ps"]);
        c.check("`ps` table via node1 shows greeter", st == 0 && out.contains("greeter"), &out.replace('\n', " | "));
        let (st, out, _) = a.cli(n1, &["--json", "inspect", "greeter"]);
        c.check("`inspect --json greeter` via node1 (forwarded to node2)", st == 0 && json(&out).is_some_and(|j| j["name"] == "greeter" && j["state"] == "running"), &format!("exit {st}"));
        // the viewer reads but may not run
        let (st, out, err) = v.cli(n1, &["run", "--name", "nope", image.to_str().unwrap()]);
        c.check("viewer `run` is refused: exit 4, permission denied (403)", st == 4 && err.contains("permission denied"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // membership (memberd through apid): both alive with an incarnation; `node add` is admin only
        let (st, out, _) = a.cli(n1, &["--json", "nodes"]);
        let members: Vec<String> = json(&out).and_then(|j| j["nodes"].as_array().cloned()).unwrap_or_default().iter().map(|n| format!("{}:{}:{}", n["name"].as_str().unwrap_or("?"), n["membership"].as_str().unwrap_or("?"), n["incarnation"].as_u64().unwrap_or(0))).collect();
        c.check("`nodes --json` shows both nodes alive with an incarnation (memberd)", st == 0 && members.len() == 2 && members.iter().all(|m| m.contains(":alive:") && !m.ends_with(":0")), &format!("exit {st}: {members:?}"));
        let newkey = catenary_net::cluster::hex_encode(&netfabric::Identity::generate(&mut rand_core::OsRng).public_key());
        let (st, out, err) = v.cli(n1, &["node", "add", &newkey]);
        c.check("viewer `node add` is refused: exit 4 (403)", st == 4 && err.contains("permission denied"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let (st, out, err) = a.cli(n1, &["node", "add", &newkey]);
        c.check("admin `node add KEY` admits it (memberd)", st == 0 && out.trim() == newkey, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let (st, out, _) = v.cli(n1, &["--json", "ps"]);
        let nope = out.contains("\"nope\"");
        c.check("viewer `ps --json` works; nothing was created by the refused run", st == 0 && json(&out).is_some() && !nope, &format!("exit {st}"));
        // a key the cluster file does not list: no session, no answer at all
        let (st, out, err) = s.cli(n1, &["nodes"]);
        c.check("unknown key: the CLI gets no answer (exit 3, unreachable)", st == 3 && out.is_empty(), &format!("exit {st}: {}", err.trim()));
        let (st, out) = s.curl(n1, "/v1/nodes");
        c.check("unknown key: curl gets no HTTP answer", st != 0 && !out.contains('{'), &format!("curl exit {st}, output {:?}", out.trim()));
        // curl through the admin's interface
        let (st, out) = a.curl(n1, "/v1/workloads");
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", ""));
        c.check("curl GET /v1/workloads gets 200 and JSON", st == 0 && code == "200" && json(body).is_some_and(|j| j["workloads"].is_array()), &format!("curl exit {st}, HTTP {code}"));
        let (st, out) = v.curl(n1, "/v1/nope");
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", ""));
        c.check("curl of an unknown path gets 404 and a JSON error", st == 0 && code == "404" && json(body).is_some_and(|j| j["error"]["code"].is_string()), &format!("HTTP {code}: {}", body.trim()));
        // stop through node1 (forwarded): logs -f ends by itself once the workload has
        // ended; then rm through node2 (its own)
        let (st, out, err) = a.cli(n1, &["stop", "--grace-ms", "2000", "greeter"]);
        c.check("admin `stop greeter` via node1 (forwarded to node2)", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let t0 = std::time::Instant::now();
        let mut ended = None;
        while ended.is_none() && t0.elapsed() < Duration::from_secs(180) {
            ended = follow.try_wait().ok().flatten();
            r.wait(Duration::from_millis(500), false, |_| false);
        }
        if ended.is_none() {
            let _ = follow.kill();
        }
        let _ = follow.wait();
        let mut follow_err = String::new();
        if let Some(mut e) = follow.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut follow_err);
        }
        c.check("`logs -f` returns once the workload has ended", ended.is_some_and(|s| s.success()), &format!("{ended:?} after {:.0} s; its stderr: {:?}", t0.elapsed().as_secs_f64(), follow_err.trim()));
        let (st, out, _) = a.cli(n1, &["--json", "inspect", "greeter"]);
        let exit = json(&out).map(|j| j["exit"].to_string()).unwrap_or_default();
        c.check("`inspect --json`: exited by signal 15 (the image's StopSignal)", st == 0 && out.contains("\"exited\"") && exit.contains("15"), &format!("exit {st}: exit {exit}"));
        let (st, out, err) = a.cli(n2, &["rm", "greeter"]);
        c.check("admin `rm greeter` via node2", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let (st, out, _) = a.cli(n1, &["--json", "ps"]);
        let gone = json(&out).and_then(|j| j["workloads"].as_array().map(|l| l.is_empty())).unwrap_or(false);
        c.check("`ps --json` via node1 after rm: no workloads on either node", st == 0 && gone, out.trim());
        let (st, out, err) = a.cli(n1, &["image", "rm", &digest]);
        c.check("`image rm` via node1 removes it from node2's store", st == 0 && out.contains("removed from node2"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let (st, out, _) = a.cli(n1, &["--json", "image", "ls"]);
        let none = json(&out).and_then(|j| j["images"].as_array().map(|l| l.is_empty())).unwrap_or(false);
        c.check("`image ls --json` via node1 after rm: no image on either node", st == 0 && none, out.trim());
        let (st, out, _) = a.cli(n2, &["--json", "events"]);
        let kinds: Vec<String> = out.lines().filter_map(json).map(|e| e["kind"].as_str().unwrap_or("?").to_string()).collect();
        c.check("`events --json` (one JSON object a line) saw created and removed", st == 0 && kinds.contains(&"created".into()) && kinds.contains(&"removed".into()), &format!("{kinds:?}"));
        drop((a, v, s));
        Ok(())
    })();
    r.wait(Duration::from_millis(500), false, |_| false);
    let log = r.save_logs(tag);
    drop(r);
    if let Err(e) = &res {
        c.check("the test ran to its end", false, e);
    }
    t.record(name, c.all(), &format!("({} checks; log {}{})", c.0.len(), log.display(), c.failed()));
    Ok(())
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// [`Workstation::parked_then_reset`]'s script, started and waiting for [`ParkedScript::go`].
pub(crate) struct ParkedScript {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl ParkedScript {
    /// Let it make its requests.
    pub(crate) fn go(&mut self) {
        use std::io::Write;
        if let Some(i) = self.child.stdin.as_mut() {
            let _ = i.write_all(b"go\n");
            let _ = i.flush();
        }
    }

    /// What it printed (its last line), or why it failed. Its sockets time out after 60 s.
    pub(crate) fn result(mut self) -> String {
        use std::io::Read;
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let mut err = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        match self.child.wait() {
            Ok(st) if st.success() => rest.trim().to_string(),
            Ok(st) => format!("exit {:?}: {}", st.code(), err.trim()),
            Err(e) => e.to_string(),
        }
    }
}
