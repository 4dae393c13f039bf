//! `net_cli_push_*` (issue 12 items 4, 5 and 7; docs/api.md "Image push"): the `catenary` CLI,
//! unprivileged and through its own embedded fabric session (xtask/src/fabriccli.rs: the
//! vde relay, `Cli`), pushes an image the nodes do not have into a two-node cluster and
//! operates it.
//!
//! - `net_cli_push_run`: push to node1 (every chunk sent, the node's commit answers the image's
//!   digest), `run` the `tick` workload, `logs -f` shows ticks printed after it started, `ps`
//!   through node1 and through node2 (its own session with node2) shows it running, `inspect`
//!   through node2, `stop`, `logs -f` ends, `rm`, `image rm`; every `--json` output parses.
//! - `net_cli_push_resume`: a push to node2 is interrupted for real — the CLI holds after 3
//!   chunks (`CATENARY_PUSH_HOLD_AFTER`) and is killed with SIGKILL — then pushed again: the
//!   node's upload answers 3 chunks present, the CLI sends only the others (counted in
//!   bytes), one of them corrupted on its first send (`CATENARY_PUSH_CORRUPT_CHUNK`) is
//!   refused by the node and sent again, the commit answers the right digest, the image is
//!   listed, and a third push finds it present.

use crate::apitest::{json, sha256, Checks};
use crate::cluster::NodeSpec;
use crate::fabriccli::{Cli, KillOnDrop};
use catenary::ops::relay::start as relay;
use crate::ociimage as oci;
use crate::preflight::{ready, Needs};
use crate::test::Tally;
use catenary_net::cluster::Operator;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TESTS: [&str; 2] = ["net_cli_push_run", "net_cli_push_resume"];

/// The API's chunk size (`catenary_api::upload`, docs/api.md).
const CHUNK: u64 = 256 * 1024;
/// Chunks sent before the interruption.
const HOLD: u64 = 3;

/// The workload test's busybox image (its `tick` prints `tick N` every second) plus 1 MiB of
/// incompressible bytes, so that the push takes several chunks; packed into `dir/out`.
fn build_image(dir: &Path) -> Result<std::path::PathBuf, String> {
    let rootfs = oci::new_image(dir, "push")?;
    oci::add_busybox(&rootfs)?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(rootfs.join("noise"), noise).map_err(|e| e.to_string())?;
    oci::repack(dir, "push")?;
    oci::config(dir, "push", &["--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c", "--config.entrypoint", crate::workloadtest::SCRIPT, "--config.entrypoint", "entry", "--config.cmd", "tick"])?;
    let out = dir.join("out");
    oci::pack(dir, "push", &out)?;
    Ok(out)
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    if !ready(t, &TESTS, &Needs { tools: &["vde_plug"], images: true, guest: true, ..Needs::default() }) {
        return Ok(());
    }
    let tag = "net-cli-push";
    let dir = crate::tools::out_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let image = build_image(&dir.join("image"))?;
    let manifest = std::fs::read(image.join("image.json")).map_err(|e| e.to_string())?;
    let digest = format!("sha256:{}", catenary_api::auth::hex(&sha256(&manifest)));
    let size = ["config.json", "rootfs.squashfs"].iter().map(|f| std::fs::metadata(image.join(f)).map(|m| m.len()).unwrap_or(0)).sum::<u64>();
    let chunks = size.div_ceil(CHUNK);
    println!("  image {digest}: {size} bytes in {chunks} chunks of {CHUNK}");
    let cli = Cli::prepare(&dir.join("operator"))?;
    let o = cli.output(&["init", "--name", "pusher"])?;
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    let key = line.split_whitespace().nth(2).and_then(catenary_net::cluster::hex_decode32).ok_or(format!("catenary init printed {line:?}"))?;
    let op = Operator { name: "pusher".into(), public_key: key, role: "admin".into() };
    let mut nodes = vec![NodeSpec::new(1), NodeSpec::new(2)];
    for n in &mut nodes {
        n.guest = true;
        n.cmdline = "vm=none".into();
    }
    let mut r = crate::cluster::start_with(kernel, &nodes, tag, &[], &[op])?;
    let serving = "apid: serving the operator API";
    let up = r.wait(Duration::from_secs(400), false, |l| l.iter().all(|n| n.iter().any(|x| x.contains(serving))));
    let stop = Arc::new(AtomicBool::new(false));
    let (mut run_c, mut resume_c) = (Checks(Vec::new()), Checks(Vec::new()));
    let res = (|| -> Result<(), String> {
        if !up {
            return Err("apid is not serving on both nodes".into());
        }
        // one relay (and one fabric session) per node
        let mut relays = Vec::new();
        let mut specs = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let m = n.member();
            let (addr, child) = relay(r.switch_sock(), (m.underlay, m.port), [0x52, 0x54, 0x00, 0xca, 0x00, 0xf0 + i as u8], stop.clone())?;
            relays.push(KillOnDrop(child));
            specs.push(format!("{}@{addr}", hex(&n.identity.public_key())));
        }
        // node1 is the config's fabric node (its /128 the default API); node2 is named per command
        let o = cli.output(&["init", "--set-fabric", &specs[0]])?;
        if !o.status.success() {
            return Err(format!("init --set-fabric: {}", String::from_utf8_lossy(&o.stderr)));
        }
        let api2 = format!("[{}]:{}", nodes[1].identity.node_address(), catenary_api::PORT);
        let via = |node: usize, args: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = vec!["--timeout".into(), "60".into()];
            if node == 2 {
                a.extend(["--fabric-node".into(), specs[1].clone(), "--api".into(), api2.clone()]);
            }
            a.extend(args.iter().map(|s| s.to_string()));
            a
        };
        let call = |node: usize, args: &[&str], env: &[(&str, String)]| -> (i32, String, String) {
            let a = via(node, args);
            let mut c = cli.command(&a.iter().map(String::as_str).collect::<Vec<_>>());
            for (k, v) in env {
                c.env(k, v);
            }
            match c.output() {
                Ok(o) => (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => (-1, String::new(), e.to_string()),
            }
        };
        let listed = |node: usize| -> Option<bool> {
            let (st, out, _) = call(node, &["--json", "image", "ls"], &[]);
            let l = json(&out)?["images"].as_array()?.clone();
            (st == 0).then(|| l.iter().any(|i| i["digest"] == digest.as_str()))
        };
        let img = image.to_str().unwrap();
        let c = &mut run_c;

        // --- net_cli_push_run ---
        c.check("node1's `image ls --json` does not list the new image", listed(1) == Some(false), &digest);
        let t0 = Instant::now();
        let (st, out, err) = call(1, &["image", "push", img], &[]);
        let took = t0.elapsed();
        c.check(
            "`image push` to node1 sends every chunk and prints the digest the node's commit answered",
            st == 0 && out.trim() == digest && err.contains(&format!("pushed: {chunks} of {chunks} chunks sent ({size} bytes), 0 were already")),
            &format!("exit {st} in {:.1} s ({:.0} KiB/s): {} {}", took.as_secs_f64(), size as f64 / 1024.0 / took.as_secs_f64(), out.trim(), err.trim().replace('\n', " | ")),
        );
        c.check("node1's `image ls --json` lists the pushed image", listed(1) == Some(true), &digest);
        let (st, out, err) = call(1, &["--json", "run", "--name", "ticker", "--mem", "64", &digest, "tick"], &[]);
        let w = json(&out);
        c.check("`run --json` of the pushed image on node1", st == 0 && w.as_ref().is_some_and(|w| w["name"] == "ticker"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // the ticks logged before `logs -f` starts (wait for the first)
        let tick_of = |l: &str| l.trim().strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok());
        let t0 = Instant::now();
        let mut before = 0;
        while before == 0 && t0.elapsed() < Duration::from_secs(300) {
            r.wait(Duration::from_secs(1), false, |_| false);
            let (_, out, _) = call(1, &["logs", "ticker"], &[]);
            before = out.lines().filter_map(tick_of).max().unwrap_or(0);
        }
        c.check("`logs ticker` shows its first ticks", before > 0, &format!("last tick {before} after {:.0} s", t0.elapsed().as_secs_f64()));
        let a = via(1, &["logs", "-f", "ticker"]);
        let mut follow = KillOnDrop(cli.command(&a.iter().map(String::as_str).collect::<Vec<_>>()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| e.to_string())?);
        let pipe = follow.0.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        // ticks printed after `logs -f` started: at least 3 beyond the last one seen before it,
        // and every tick from 1 on, in order
        let mut ticks = Vec::new();
        let t0 = Instant::now();
        while ticks.last().is_none_or(|&l| l < before + 3) && t0.elapsed() < Duration::from_secs(120) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                ticks.extend(tick_of(&l));
            }
            r.wait(Duration::from_millis(10), false, |_| false);
        }
        let in_order = ticks.iter().enumerate().all(|(i, &n)| n == i as u64 + 1);
        c.check(
            "`logs -f ticker` shows the ticks printed after it started, all in order",
            ticks.last().is_some_and(|&l| l >= before + 3) && in_order,
            &format!("last tick before: {before}; followed up to {:?} in {:.0} s; 1.. in order: {in_order}", ticks.last(), t0.elapsed().as_secs_f64()),
        );
        for node in [1, 2] {
            let (st, out, _) = call(node, &["--json", "ps"], &[]);
            let l = json(&out).and_then(|j| j["workloads"].as_array().cloned()).unwrap_or_default();
            let seen = l.iter().any(|w| w["name"] == "ticker" && w["state"] == "running");
            c.check(&format!("`ps --json` through node{node} shows ticker running"), st == 0 && seen, &format!("exit {st}: {}", out.split_whitespace().collect::<String>()));
        }
        let (st, out, _) = call(2, &["ps"], &[]);
        c.check("`ps` table through node2 shows ticker", st == 0 && out.contains("ticker") && out.contains("running"), &out.replace('\n', " | "));
        let (st, out, _) = call(2, &["--json", "inspect", "ticker"], &[]);
        c.check("`inspect --json ticker` through node2", st == 0 && json(&out).is_some_and(|j| j["name"] == "ticker" && j["state"] == "running"), &format!("exit {st}"));
        let (st, out, err) = call(1, &["stop", "--grace-ms", "2000", "ticker"], &[]);
        c.check("`stop ticker`", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let t0 = Instant::now();
        let mut ended = None;
        while ended.is_none() && t0.elapsed() < Duration::from_secs(120) {
            ended = follow.0.try_wait().ok().flatten();
            r.wait(Duration::from_millis(300), false, |_| false);
        }
        c.check("`logs -f` returns once ticker has ended", ended.is_some_and(|s| s.success()), &format!("{ended:?} after {:.0} s", t0.elapsed().as_secs_f64()));
        drop(follow);
        let (st, out, _) = call(1, &["--json", "inspect", "ticker"], &[]);
        c.check("`inspect --json`: ticker exited", st == 0 && json(&out).is_some_and(|j| j["state"] == "exited"), &format!("exit {st}: {}", out.split_whitespace().collect::<String>()));
        let (st, out, err) = call(1, &["rm", "ticker"], &[]);
        c.check("`rm ticker`", st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        for node in [1, 2] {
            let (st, out, _) = call(node, &["--json", "ps"], &[]);
            let gone = json(&out).and_then(|j| j["workloads"].as_array().map(|l| !l.iter().any(|w| w["name"] == "ticker"))).unwrap_or(false);
            c.check(&format!("`ps --json` through node{node} after rm: ticker gone"), st == 0 && gone, out.split_whitespace().collect::<String>().as_str());
        }
        let (st, out, err) = call(1, &["image", "rm", &digest], &[]);
        c.check("`image rm` on node1, then not listed", st == 0 && listed(1) == Some(false), &format!("exit {st}: {} {}", out.trim(), err.trim()));

        // --- net_cli_push_resume (node2) ---
        let c = &mut resume_c;
        c.check("node2's `image ls --json` does not list the image", listed(2) == Some(false), &digest);
        let a = via(2, &["image", "push", img]);
        let mut first = KillOnDrop(cli.command(&a.iter().map(String::as_str).collect::<Vec<_>>()).env("CATENARY_PUSH_HOLD_AFTER", HOLD.to_string()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?);
        let pipe = first.0.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let t0 = Instant::now();
        let mut held = false;
        while !held && t0.elapsed() < Duration::from_secs(300) && first.0.try_wait().ok().flatten().is_none() {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                held |= l.contains(&format!("holding after {HOLD} chunks"));
            }
            r.wait(Duration::from_millis(10), false, |_| false);
        }
        let _ = first.0.kill(); // SIGKILL: no goodbye to the node
        let status = first.0.wait().ok();
        c.check(&format!("the first push is killed (SIGKILL) after sending {HOLD} of {chunks} chunks"), held, &format!("{status:?} after {:.0} s", t0.elapsed().as_secs_f64()));
        // chunk HOLD + 1 is corrupted on its first send
        let bad = HOLD + 1;
        let (st, out, err) = call(2, &["image", "push", img], &[("CATENARY_PUSH_CORRUPT_CHUNK", bad.to_string())]);
        let err1 = err.trim().replace('\n', " | ");
        c.check(&format!("the node's upload has the first {HOLD} chunks: the push resumes"), err.contains(&format!("resuming: {HOLD} of {chunks} chunks already on the node")), &err1);
        c.check(&format!("chunk {bad}, corrupted on the wire, is refused by the node and sent again"), err.contains(&format!("chunk {bad} refused by the node (chunk_digest_mismatch): sending it again")), &err1);
        let bad_len = CHUNK.min(size - bad * CHUNK);
        let want = size - HOLD * CHUNK + bad_len;
        c.check(
            &format!("only the missing chunks are sent ({} of {chunks}, {want} bytes with the resent one)", chunks - HOLD),
            err.contains(&format!("pushed: {} of {chunks} chunks sent ({want} bytes), {HOLD} were already on the node", chunks - HOLD)),
            &err1,
        );
        c.check("the resumed push commits: the node answers the image's digest", st == 0 && out.trim() == digest, &format!("exit {st}: {}", out.trim()));
        c.check("node2's `image ls --json` lists it", listed(2) == Some(true), &digest);
        let (st, out, err) = call(2, &["image", "push", img], &[]);
        c.check("a third push finds it present and sends nothing", st == 0 && out.trim() == digest && err.contains("already has"), err.trim());
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    r.wait(Duration::from_millis(500), false, |_| false);
    let log = r.save_logs(tag);
    drop(r);
    let _ = std::fs::remove_file(dir.join("operator").join("operator.key"));
    if let Err(e) = &res {
        let c = if resume_c.0.is_empty() { &mut run_c } else { &mut resume_c };
        c.check("the test ran to its end", false, e);
    }
    t.record("net_cli_push_run", up && run_c.all(), &format!("({} checks; log {}{})", run_c.0.len(), log.display(), run_c.failed()));
    t.record("net_cli_push_resume", up && resume_c.all(), &format!("({} checks; log {}{})", resume_c.0.len(), log.display(), resume_c.failed()));
    Ok(())
}
