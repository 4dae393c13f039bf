//! The `catenary` binary's operator commands against the API served over real TCP on
//! localhost by the same `catenary_api::Api` a node runs, over the real workload service state
//! machine (with the kernel simulated). The fabric is not here: the server gives every
//! connection the caller key the test chooses (on a node, the fabric session's peer key).

use catenary_api::fuzzing::{self, SimNode, ADMIN, VIEWER};
use catenary_api::http::{Limits, RequestReader};
use catenary_api::Api;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

struct Node {
    api: Mutex<(Api, SimNode)>,
    caller: Mutex<[u8; 32]>,
    /// Chunk PUTs answered, and the one (1-based) whose connection is dropped unanswered.
    puts: AtomicUsize,
    drop_put: AtomicUsize,
    /// Whether the cluster's listing answers 503 `cluster_unavailable` (as `apid` does while
    /// `orchd` joins).
    cluster_down: AtomicBool,
}

fn serve() -> (String, Arc<Node>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let node = Arc::new(Node { api: Mutex::new((fuzzing::api_with(64 << 20), SimNode::new(1024))), caller: Mutex::new(ADMIN), puts: 0.into(), drop_put: 0.into(), cluster_down: false.into() });
    let n = node.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut reader = RequestReader::new(Limits::default(), 0);
            let mut buf = [0u8; 64 * 1024];
            let req = loop {
                let k = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(k) => k,
                };
                match reader.feed(&buf[..k], 0) {
                    Ok(None) => {}
                    Ok(Some(r)) => break Some(Ok(r)),
                    Err(e) => break Some(Err(e)),
                }
            };
            let resp = match req {
                None => continue,
                Some(Err(e)) => e.to_response(),
                Some(Ok(r)) => {
                    if r.path.contains("/chunks/") {
                        let k = n.puts.fetch_add(1, Ordering::SeqCst) + 1;
                        if k == n.drop_put.load(Ordering::SeqCst) {
                            continue; // the connection breaks mid-push
                        }
                    }
                    if r.path.starts_with("/v1/cluster/workloads") && n.cluster_down.load(Ordering::SeqCst) {
                        let _ = s.write_all(&catenary_api::ApiError::new(503, "cluster_unavailable", "orchd is joining\u{1b}[2J").to_response().to_bytes());
                        continue;
                    }
                    let caller = *n.caller.lock().unwrap();
                    let mut g = n.api.lock().unwrap();
                    let (api, sim) = &mut *g;
                    api.handle(&caller, &r, sim, 0)
                }
            };
            let _ = s.write_all(&resp.to_bytes());
        }
    });
    (addr, node)
}

fn catenary(api: &str, cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_catenary")).arg("--api").arg(api).args(args).env("CATENARY_CONFIG_DIR", cfg).output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A packed image directory as `catenary image pack` writes it (3 chunks of stream).
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

#[test]
fn init_makes_a_private_key_and_never_prints_it() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    let o = Command::new(env!("CARGO_BIN_EXE_catenary")).args(["init", "--name", "alice"]).env("CATENARY_CONFIG_DIR", &cfg).output().unwrap();
    let out = stdout(&o);
    let key = std::fs::read_to_string(cfg.join("operator.key")).unwrap();
    let secret = key.trim();
    assert_eq!(secret.len(), 64);
    let all = format!("{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(!all.contains(secret), "the private key was printed");
    for f in ["operator.key", "config.json"] {
        assert_eq!(std::fs::metadata(cfg.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    // the printed line is the cluster file's operator line for the key's public half
    let public = netfabric::Identity::from_secret_bytes(catenary_api::auth::hex32(secret).unwrap()).public_key();
    assert_eq!(out.trim(), format!("operator alice {} admin", catenary_api::auth::hex(&public)));
    catenary_api::auth::Operators::parse(&format!("catenary-cluster v1\n{out}")).unwrap();
    // a second init does not replace the key
    let again = Command::new(env!("CARGO_BIN_EXE_catenary")).arg("init").env("CATENARY_CONFIG_DIR", &cfg).output().unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(cfg.join("operator.key")).unwrap(), key);
    // two inits make two different keys
    let other = t.path().join("other");
    let o2 = Command::new(env!("CARGO_BIN_EXE_catenary")).arg("init").env("CATENARY_CONFIG_DIR", &other).output().unwrap();
    assert_ne!(stdout(&o2).split_whitespace().nth(2), out.split_whitespace().nth(2));
}

#[test]
fn push_resume_run_ps_logs_stop_rm_through_the_cli() {
    let (api, node) = serve();
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    let img = t.path().join("img");
    let digest = image_dir(&img);
    let img_s = img.to_str().unwrap();

    // the push breaks at the second chunk: non-zero exit, "unreachable"
    node.drop_put.store(2, Ordering::SeqCst);
    let o = catenary(&api, &cfg, &["image", "push", img_s]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unreachable"));
    assert_eq!(node.puts.load(Ordering::SeqCst), 2);
    // pushed again: only the chunks the node lacks are sent (3 chunks, 1 already there)
    let o = catenary(&api, &cfg, &["image", "push", img_s]);
    assert_eq!(stdout(&o).trim(), digest);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming: 1 of 3"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(node.puts.load(Ordering::SeqCst), 4);
    // and once more: the node has it, nothing is sent
    let o = catenary(&api, &cfg, &["image", "push", img_s]);
    assert_eq!(stdout(&o).trim(), digest);
    assert_eq!(node.puts.load(Ordering::SeqCst), 4);
    let ls: serde_json::Value = serde_json::from_str(&stdout(&catenary(&api, &cfg, &["image", "ls", "--json"]))).unwrap();
    assert!(ls["images"].as_array().unwrap().iter().any(|i| i["digest"] == digest.as_str()));

    // run it by directory, with a name, env and args
    let o = catenary(&api, &cfg, &["run", "--name", "web", "--mem", "64", "--env", "GREETING=hi", img_s, "echo", "-n", "x"]);
    assert_eq!(stdout(&o).trim(), "1 web");
    {
        let g = node.api.lock().unwrap();
        let c = g.1.kernel.created.last().unwrap();
        assert_eq!(c.net, Some(1), "a workload has network unless asked otherwise");
        assert_eq!(c.args.as_deref(), Some(&["echo".to_string(), "-n".into(), "x".into()][..]));
        assert!(c.env.contains(&"GREETING=hi".to_string()));
        assert_eq!(c.memory_mib, 64);
    }
    let ps: serde_json::Value = serde_json::from_str(&stdout(&catenary(&api, &cfg, &["ps", "--json"]))).unwrap();
    assert_eq!(ps["workloads"][0]["name"], "web");
    let table = stdout(&catenary(&api, &cfg, &["ps"]));
    assert!(table.lines().nth(1).unwrap().contains("web"), "{table}");
    // the workload logs, then ends; logs -f prints it all and returns once it has ended
    {
        let mut g = node.api.lock().unwrap();
        let sim = &mut g.1;
        let vm = sim.kernel.next;
        use catenary_workload::vmctl::{Ended, Event, Exit, VmEvent};
        for ev in [Event::Ready, Event::Log { stream: catenary_workload::logring::Stream::Stdout, line: b"hello from web".to_vec() }, Event::Exit(Exit::Code(0))] {
            sim.service.on_event(VmEvent { vm, event: ev }, 0, &mut sim.kernel);
        }
        sim.kernel.alive.retain(|v| *v != vm);
        sim.service.on_event(VmEvent { vm, event: Event::Ended { how: Ended::PowerOff, touched_bytes: 0, wall_ms: 3 } }, 0, &mut sim.kernel);
    }
    let logs = stdout(&catenary(&api, &cfg, &["logs", "-f", "web"]));
    assert!(logs.contains("hello from web"), "{logs}");
    let inspect: serde_json::Value = serde_json::from_str(&stdout(&catenary(&api, &cfg, &["inspect", "1"]))).unwrap();
    assert_eq!((inspect["state"].as_str(), inspect["exit"]["status"].as_i64()), (Some("exited"), Some(0)));
    assert!(stdout(&catenary(&api, &cfg, &["stop", "web"])).contains("exited"));
    assert_eq!(stdout(&catenary(&api, &cfg, &["rm", "web"])).trim(), "1 web");
    let ev = stdout(&catenary(&api, &cfg, &["events", "--json"]));
    let kinds: Vec<String> = ev.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds.first().map(String::as_str), Some("created"));
    assert_eq!(kinds.last().map(String::as_str), Some("removed"));
    let nodes: serde_json::Value = serde_json::from_str(&stdout(&catenary(&api, &cfg, &["nodes", "--json"]))).unwrap();
    assert_eq!(nodes["nodes"][0]["state"], "up");
    // with the node's network up: a workload's /128 in run, ps and inspect; none with --net none
    let node_addr = std::net::Ipv6Addr::new(0xfd00, 0xa, 0xb, 0xc, 0, 0, 0, 1);
    node.api.lock().unwrap().1.kernel.node = Some(node_addr);
    let want = catenary_workload::net::address(node_addr, 1).to_string();
    assert_eq!(stdout(&catenary(&api, &cfg, &["run", "--name", "net1", &digest])).trim(), format!("2 net1 {want}"));
    assert_eq!(stdout(&catenary(&api, &cfg, &["run", "--name", "quiet", "--net", "none", &digest])).trim(), "3 quiet");
    assert_eq!(node.api.lock().unwrap().1.kernel.created.last().unwrap().net, None);
    let table = stdout(&catenary(&api, &cfg, &["ps"]));
    assert!(table.lines().any(|l| l.contains("net1") && l.contains(&want)) && table.lines().any(|l| l.contains("quiet") && l.contains(" - ")), "{table}");
    let inspect: serde_json::Value = serde_json::from_str(&stdout(&catenary(&api, &cfg, &["inspect", "net1"]))).unwrap();
    assert_eq!(inspect["address"], want.as_str());

    // a health check: `/bin/sh -c CMD` with the settings given; ps shows its health
    let o = catenary(&api, &cfg, &["run", "--name", "checked", "--health-cmd", "wget -q -O- http://[::1]:8080/", "--health-interval", "4", "--health-retries", "5", &digest]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let h = node.api.lock().unwrap().1.kernel.created.last().unwrap().health.clone().unwrap();
    assert_eq!((h.cmd.join(" "), h.interval_secs, h.timeout_secs, h.retries, h.start_period_secs), ("/bin/sh -c wget -q -O- http://[::1]:8080/".to_string(), 4, 4, 5, 0));
    let row = |table: &str, name: &str| table.lines().find(|l| l.contains(name)).map(|l| l.split_whitespace().collect::<Vec<_>>()[..4].join(" ")).unwrap_or_default();
    let table = stdout(&catenary(&api, &cfg, &["ps"]));
    assert!(table.lines().next().unwrap().contains("STATE     HEALTH"), "{table}");
    assert_eq!(row(&table, "checked"), "4 checked starting starting", "{table}");
    assert_eq!(row(&table, "quiet"), "3 quiet starting -", "{table}");
    assert!(!catenary(&api, &cfg, &["run", "--health-interval", "4", &digest]).status.success(), "settings without --health-cmd are refused");

    // clear errors and exit statuses: unknown image, no capacity, permission denied
    let o = catenary(&api, &cfg, &["run", &format!("sha256:{}", "2".repeat(64))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no image with this digest"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = catenary(&api, &cfg, &["run", "--mem", "16000", &digest]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not enough free memory"), "{}", String::from_utf8_lossy(&o.stderr));
    *node.caller.lock().unwrap() = VIEWER;
    let o = catenary(&api, &cfg, &["run", &digest]);
    assert_eq!(o.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(catenary(&api, &cfg, &["ps"]).status.success(), "a viewer reads");
}

#[test]
fn wg_config_makes_the_workstation_a_fabric_peer_with_the_operator_key() {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    let init = Command::new(env!("CARGO_BIN_EXE_catenary")).arg("init").env("CATENARY_CONFIG_DIR", &cfg).output().unwrap();
    stdout(&init);
    let secret = catenary_api::auth::hex32(std::fs::read_to_string(cfg.join("operator.key")).unwrap().trim()).unwrap();
    let op = netfabric::Identity::from_secret_bytes(secret);
    let (n1, n2) = (netfabric::Identity::from_secret_bytes([1; 32]), netfabric::Identity::from_secret_bytes([2; 32]));
    let cluster = t.path().join("cluster.txt");
    let hex = |i: &netfabric::Identity| catenary_api::auth::hex(&i.public_key());
    std::fs::write(&cluster, format!("catenary-cluster v1\nnode node1 {} fe80::5054:ff:fe00:1 51820\nnode node2 {} 2001:db8::2 51821\noperator me {} admin\n", hex(&n1), hex(&n2), hex(&op))).unwrap();
    let out = t.path().join("wg.conf");
    let wg = |iface: Option<&str>, cluster: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_catenary"));
        c.args(["wg-config", "--cluster"]).arg(cluster).arg("-o").arg(&out).env("CATENARY_CONFIG_DIR", &cfg);
        if let Some(i) = iface {
            c.args(["--iface", i]);
        }
        c.output().unwrap()
    };
    let o = wg(Some("tap0"), &cluster);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!printed.contains(&b64(&secret)) && !printed.contains(&catenary_api::auth::hex(&secret)), "the private key was printed");
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains(&format!("PrivateKey = {}\n", b64(&secret))), "{text}");
    assert!(text.contains(&format!("Address = {}/64\n", op.node_address())), "{text}");
    for (id, ep) in [(&n1, "[fe80::5054:ff:fe00:1%tap0]:51820"), (&n2, "[2001:db8::2]:51821")] {
        let peer = format!("PublicKey = {}\nAllowedIPs = {}/64\nEndpoint = {ep}\n", b64(&id.public_key()), id.prefix().network());
        assert!(text.contains(&peer), "{peer} not in {text}");
    }
    // the stock tool agrees that this private key is the operator's public key
    if let Ok(mut child) = Command::new("wg").arg("pubkey").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn() {
        child.stdin.take().unwrap().write_all(format!("{}\n", b64(&secret)).as_bytes()).unwrap();
        let pubkey = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&pubkey.stdout).trim(), b64(&op.public_key()));
    } else {
        eprintln!("wg not installed: the `wg pubkey` cross-check did not run");
    }
    // a link-local endpoint needs the interface; a bad cluster file says which line
    let o = wg(None, &cluster);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--iface"));
    std::fs::write(&cluster, "catenary-cluster v1\nnode node1 12 fe80::1 51820\n").unwrap();
    let o = wg(Some("tap0"), &cluster);
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 2"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn ps_shows_the_nodes_table_when_the_cluster_listing_fails() {
    let (api, node) = serve();
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("cfg");
    // no orchestration service (503 no_cluster): no note, cluster null
    let o = catenary(&api, &cfg, &["ps", "--json"]);
    let ps: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((ps["cluster"].is_null(), ps["cluster_error"].is_null()), (true, true));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    // the listing fails otherwise: the table, one line on stderr (no escape in it), exit 0
    node.cluster_down.store(true, Ordering::SeqCst);
    let o = catenary(&api, &cfg, &["ps"]);
    let table = stdout(&o);
    assert!(table.starts_with("  ID NAME"), "{table}");
    assert!(!table.contains("CLUSTER WORKLOAD"), "{table}");
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cluster_unavailable") || err.contains("orchd is joining"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    let o = catenary(&api, &cfg, &["ps", "--json"]);
    let ps: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(ps["cluster"].is_null() && ps["workloads"].is_array(), "{ps}");
    assert!(ps["cluster_error"].as_str().is_some_and(|e| e.contains("orchd is joining")), "{ps}");
}
