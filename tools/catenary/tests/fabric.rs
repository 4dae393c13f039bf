//! The `catenary` binary over its embedded fabric (netfabric + smoltcp over a UDP socket, no
//! root, no WireGuard interface) against an in-process node: a netfabric responder with the node's
//! key that knows the operator only as a key (no endpoint, as a node treats an `operator` line),
//! smoltcp on the node's /128 listening on port 8080, and the real `catenary_api::Api` over the
//! real workload service state machine (kernel simulated). The caller is found as a node finds it:
//! the key whose fabric /64 holds the connection's source address. A relay in front of the node
//! can drop a fraction of the datagrams both ways.

use catenary::ops::fabric::Link;
use catenary_api::auth::{Operator, Operators, Role};
use catenary_api::fuzzing::SimNode;
use catenary_api::http::{Limits, RequestReader};
use catenary_api::upload::UploadLimits;
use catenary_api::Api;
use netfabric::{Identity, PeerConfig};
use smoltcp::socket::tcp::State;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Node {
    /// Where the CLI sends its datagrams (the node, or the lossy relay in front of it).
    udp: SocketAddr,
    public_key: [u8; 32],
    sim: Arc<Mutex<SimNode>>,
    requests: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The node's log ring per workload, and the lines the tests log (about 230 KB with the
/// ring's record overhead: all of them stay).
const LOG_RING: usize = 256 * 1024;
const LINES: usize = 3000;

struct Conn {
    /// Made when the connection is established (its deadline counts from then).
    reader: Option<RequestReader>,
    out: Option<Vec<u8>>,
    sent: usize,
}

/// The node's side: its fabric link and the API on its /128. `operator` is the only operator
/// key it accepts (role admin); `loss` the fraction of datagrams the relay drops each way.
fn node(operator: [u8; 32], loss: f64) -> Node {
    let id = Identity::from_secret_bytes([0x42; 32]);
    let public_key = id.public_key();
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut link = Link::new(id, PeerConfig::new(operator), lo).unwrap();
    let node_udp = link.local_addr().unwrap();
    let ops = Operators { operators: vec![Operator { name: "alice".into(), key: operator, role: Role::Admin }], node_keys: vec![public_key] };
    let mut api = Api::new(ops.clone(), UploadLimits { image_max: 64 << 20, uploads_max: 2, idle_ms: 60_000 });
    let mut sn = SimNode::new(1024);
    // logs large enough for many answers (the simulated service keeps 4 KiB per workload)
    sn.service = catenary_workload::service::Service::new(catenary_workload::store::ImageIndex::new(), catenary_workload::admission::Admission::new(1024 << 20), 1, LOG_RING);
    let sim = Arc::new(Mutex::new(sn));
    let (requests, handshakes, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (s2, r2, h2, st2) = (sim.clone(), requests.clone(), handshakes.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut conns: HashMap<smoltcp::iface::SocketHandle, Conn> = HashMap::new();
        let start = Instant::now();
        while !st2.load(Ordering::SeqCst) {
            // one socket listens; it becomes the connection when a SYN arrives. The next listener
            // waits until that connection is past its handshake: smoltcp hands a duplicate SYN
            // to whichever matching socket comes first, and a second listener taking it would
            // reset the connection (the CLI opens one connection at a time)
            if !link.handles().into_iter().any(|h| matches!(link.tcp(h).state(), State::Listen | State::SynReceived)) {
                let mut s = Link::tcp_socket(256 * 1024, 256 * 1024);
                s.listen(catenary_api::PORT).unwrap();
                let h = link.add(s);
                conns.insert(h, Conn { reader: None, out: None, sent: 0 });
            }
            link.pump(Duration::from_millis(5));
            h2.store(link.handshakes, Ordering::SeqCst);
            let now_ms = start.elapsed().as_millis() as u64;
            let mut gone = Vec::new();
            for (&h, c) in conns.iter_mut() {
                let s = link.tcp(h);
                match s.state() {
                    State::Listen | State::SynReceived => continue,
                    State::Closed | State::TimeWait => {
                        gone.push(h);
                        continue;
                    }
                    _ => {}
                }
                let reader = c.reader.get_or_insert_with(|| RequestReader::new(Limits::default(), now_ms));
                let mut buf = [0u8; 16 * 1024];
                while c.out.is_none() && s.can_recv() {
                    let Ok(n) = s.recv_slice(&mut buf) else { break };
                    if n == 0 {
                        break;
                    }
                    let resp = match reader.feed(&buf[..n], now_ms) {
                        Ok(None) => continue,
                        Err(e) => e.to_response(),
                        Ok(Some(req)) => {
                            // the caller is the key whose /64 holds the source (cryptokey routing
                            // made sure the packet came through that key's session)
                            let src = match s.remote_endpoint().map(|e| e.addr) {
                                Some(smoltcp::wire::IpAddress::Ipv6(a)) => a.octets(),
                                _ => [0; 16],
                            };
                            let caller = ops.caller_of(&src, |k| netfabric::Prefix64::from_public_key(k).0).unwrap_or([0x57; 32]);
                            r2.fetch_add(1, Ordering::SeqCst);
                            api.handle(&caller, &req, &mut *s2.lock().unwrap(), now_ms)
                        }
                    };
                    c.out = Some(resp.to_bytes());
                }
                if let Some(out) = &c.out {
                    while c.sent < out.len() && s.can_send() {
                        match s.send_slice(&out[c.sent..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => c.sent += n,
                        }
                    }
                    if c.sent == out.len() {
                        s.close();
                    }
                }
            }
            for h in gone {
                conns.remove(&h);
                link.remove(h);
            }
        }
    });
    let udp = if loss > 0.0 { relay(node_udp, loss, stop.clone()) } else { node_udp };
    Node { udp, public_key, sim, requests, handshakes, stop }
}

/// A UDP relay in front of the node that drops `loss` of the datagrams each way (a fixed
/// pseudo-random sequence), and always the very first one (the first handshake initiation:
/// only netfabric's retransmission gets the first command through); the latest sender that is
/// not the node is the client.
fn relay(node: SocketAddr, loss: f64, stop: Arc<AtomicBool>) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    std::thread::spawn(move || {
        let mut client: Option<SocketAddr> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = [0u8; 4096];
        let mut first = true;
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
            if std::mem::take(&mut first) {
                continue;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (x % 10_000) as f64 / 10_000.0 < loss {
                continue;
            }
            let to = if from == node {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                node
            };
            let _ = s.send_to(&buf[..n], to);
        }
    });
    addr
}

/// `catenary init` in `cfg` (its printed operator line names the key) and the node set as the
/// config's fabric node; returns the operator's public key.
fn operator_init(cfg: &Path) -> [u8; 32] {
    let o = Command::new(env!("CARGO_BIN_EXE_catenary")).args(["init", "--name", "alice"]).env("CATENARY_CONFIG_DIR", cfg).output().unwrap();
    let line = stdout(&o);
    catenary_api::auth::hex32(line.split_whitespace().nth(2).unwrap()).unwrap()
}

fn set_fabric(cfg: &Path, n: &Node) {
    let spec = format!("{}@{}", catenary_api::auth::hex(&n.public_key), n.udp);
    let o = Command::new(env!("CARGO_BIN_EXE_catenary")).args(["init", "--set-fabric", &spec]).env("CATENARY_CONFIG_DIR", cfg).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn catenary(cfg: &Path, args: &[&str]) -> Output {
    // no --api: the API endpoint is the fabric node's /128, port 8080
    Command::new(env!("CARGO_BIN_EXE_catenary")).args(args).env("CATENARY_CONFIG_DIR", cfg).env_remove("CATENARY_API").output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A packed image directory (3 chunks of stream), as in tests/operator.rs.
fn image_dir(dir: &Path) -> String {
    let rootfs: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    let config = br#"{"version":1}"#.to_vec();
    let hex = |b: &[u8]| catenary_workload::Digest::of(b).to_string();
    let manifest = format!(
        r#"{{"schemaVersion":1,"mediaType":"application/vnd.catenary.image.v1+json","rootfs":{{"mediaType":"application/vnd.catenary.rootfs.squashfs","digest":"{}","size":{},"file":"rootfs.squashfs"}},"config":{{"mediaType":"application/vnd.catenary.runconfig.v1+json","digest":"{}","size":{},"file":"config.json"}},"source":{{"manifest":null,"config":"sha256:00"}}}}"#,
        hex(&rootfs),
        rootfs.len(),
        hex(&config),
        config.len()
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("rootfs.squashfs"), &rootfs).unwrap();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    std::fs::write(dir.join("image.json"), &manifest).unwrap();
    hex(manifest.as_bytes())
}

/// Every line the workload logged, in order, intact (the service's own lines aside).
fn check_logs(logs: &str) {
    let got: Vec<&str> = logs.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(got.len(), LINES, "log lines");
    for (i, l) in got.iter().enumerate() {
        assert_eq!(*l, format!("line {i:05} {}", "x".repeat(48)));
    }
}

/// Log `lines` numbered lines from the newest workload, then end it.
fn log_and_end(sim: &Mutex<SimNode>, lines: usize) {
    use catenary_workload::vmctl::{Ended, Event, Exit, VmEvent};
    let mut g = sim.lock().unwrap();
    let sim = &mut *g;
    let vm = sim.kernel.next;
    let mut evs = vec![Event::Ready];
    for i in 0..lines {
        evs.push(Event::Log { stream: catenary_workload::logring::Stream::Stdout, line: format!("line {i:05} {}", "x".repeat(48)).into_bytes() });
    }
    evs.push(Event::Exit(Exit::Code(0)));
    for ev in evs {
        sim.service.on_event(VmEvent { vm, event: ev }, 0, &mut sim.kernel);
    }
    sim.kernel.alive.retain(|v| *v != vm);
    sim.service.on_event(VmEvent { vm, event: Event::Ended { how: Ended::PowerOff, touched_bytes: 0, wall_ms: 3 } }, 0, &mut sim.kernel);
}

/// Push (600 KB up), run, ps, a ~180 KB log read back (`logs`, many answers of 8 KiB of records each),
/// nodes: every command through the CLI's own fabric session.
fn push_run_ps_logs(cfg: &Path, n: &Node, img: &Path) {
    let digest = image_dir(img);
    let img_s = img.to_str().unwrap();
    assert_eq!(stdout(&catenary(cfg, &["image", "push", img_s])).trim(), digest);
    assert_eq!(stdout(&catenary(cfg, &["run", "--name", "web", img_s])).trim(), "1 web");
    let ps: serde_json::Value = serde_json::from_str(&stdout(&catenary(cfg, &["ps", "--json"]))).unwrap();
    assert_eq!(ps["workloads"][0]["name"], "web");
    log_and_end(&n.sim, LINES);
    let logs = stdout(&catenary(cfg, &["logs", "-f", "web"]));
    check_logs(&logs);
    let nodes = stdout(&catenary(cfg, &["nodes"]));
    assert!(nodes.lines().nth(1).is_some_and(|l| l.starts_with("node1")), "{nodes}");
}

#[test]
fn the_cli_reaches_the_api_through_its_own_fabric_session() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    let op = operator_init(&cfg);
    let n = node(op, 0.0);
    set_fabric(&cfg, &n);
    push_run_ps_logs(&cfg, &n, &t.path().join("img"));
    // every command made its own session (a new process each time) and the node answered
    assert!(n.requests.load(Ordering::SeqCst) >= 8);
    assert!(n.handshakes.load(Ordering::SeqCst) >= 5);
    // --transport host ignores the fabric node: the host's stack cannot reach the /128
    let o = catenary(&cfg, &["--transport", "host", "--timeout", "2", "ps"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_key_the_node_does_not_know_gets_no_answer_and_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    operator_init(&cfg);
    // the node accepts another operator's key, not this one
    let n = node(Identity::from_secret_bytes([0x77; 32]).public_key(), 0.0);
    set_fabric(&cfg, &n);
    // run with a watchdog: a hang fails the test instead of stalling it
    let mut child = Command::new(env!("CARGO_BIN_EXE_catenary"))
        .args(["--timeout", "3", "ps"])
        .env("CATENARY_CONFIG_DIR", &cfg)
        .env_remove("CATENARY_API")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("catenary still waiting after 30 s with a 3 s timeout: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("node unreachable") && err.contains("fabric handshake"), "{err}");
    assert_eq!(n.requests.load(Ordering::SeqCst), 0);
    assert_eq!(n.handshakes.load(Ordering::SeqCst), 0);
    // the secret is in no message
    let secret = std::fs::read_to_string(cfg.join("operator.key")).unwrap();
    assert!(!err.contains(secret.trim()));
}

#[test]
fn five_percent_datagram_loss_each_way_still_completes() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    let op = operator_init(&cfg);
    let n = node(op, 0.05);
    set_fabric(&cfg, &n);
    let start = Instant::now();
    let o = catenary(&cfg, &["--timeout", "60", "nodes"]);
    eprintln!("nodes: {:?}", start.elapsed());
    assert!(stdout(&o).contains("node1"));
    // the push, the run and the 180 KB log through a lossy path: TCP resends, netfabric
    // retransmits lost handshake initiations
    let digest = image_dir(&t.path().join("img"));
    let o = catenary(&cfg, &["--timeout", "60", "image", "push", t.path().join("img").to_str().unwrap()]);
    eprintln!("push: {:?}", start.elapsed());
    assert_eq!(stdout(&o).trim(), digest);
    assert_eq!(stdout(&catenary(&cfg, &["--timeout", "60", "run", "--name", "web", &digest])).trim(), "1 web");
    log_and_end(&n.sim, LINES);
    check_logs(&stdout(&catenary(&cfg, &["--timeout", "60", "logs", "web"])));
    eprintln!("logs: {:?}", start.elapsed());
}

/// `logs -f` in one process while other processes with the same config (the same operator key)
/// run commands: each makes its own session, and the node (as any WireGuard peer) answers only
/// in the newest one. The follower notices (packets with an index it does not know), lets the
/// other command finish, takes the session back with a new handshake, and follows to the end.
#[test]
fn a_second_process_with_the_same_key_does_not_break_a_follower() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    let op = operator_init(&cfg);
    let n = node(op, 0.0);
    set_fabric(&cfg, &n);
    let img = t.path().join("img");
    image_dir(&img);
    stdout(&catenary(&cfg, &["image", "push", img.to_str().unwrap()]));
    stdout(&catenary(&cfg, &["run", "--name", "web", img.to_str().unwrap()]));
    let mut follower = Command::new(env!("CARGO_BIN_EXE_catenary"))
        .args(["--timeout", "60", "logs", "-f", "web"])
        .env("CATENARY_CONFIG_DIR", &cfg)
        .env_remove("CATENARY_API")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = n.handshakes.load(Ordering::SeqCst);
    for _ in 0..2 {
        let ps: serde_json::Value = serde_json::from_str(&stdout(&catenary(&cfg, &["--json", "ps"]))).unwrap();
        assert_eq!(ps["workloads"][0]["name"], "web");
        std::thread::sleep(Duration::from_millis(700));
    }
    log_and_end(&n.sim, 10);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = follower.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = follower.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let o = follower.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(status.is_some_and(|s| s.success()), "the follower did not end well within 30 s: {status:?} {err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("line ")).count(), 10, "{out}");
    // the two `ps` and the follower's taking the session back: new handshakes
    assert!(n.handshakes.load(Ordering::SeqCst) >= before + 3, "{} handshakes", n.handshakes.load(Ordering::SeqCst) - before);
}
