//! `cluster_image_copy` (issue 13 item 3, docs/orchestration.md "Images follow their
//! replicas"): three QEMU nodes with empty image stores; an operator pushes an image to node1
//! only and runs it as a cluster workload with 3 replicas. The scheduler spreads them over the
//! three nodes; node2 and node3 must fetch the image from node1 over the fabric (their `apid`
//! asks node1's, verifying every chunk and the whole image) before their replica starts. Every
//! replica must run and log its greeting, `image ls --json` must show the image on all three
//! nodes with one digest, and the copies' time and throughput (from each fetching node's log)
//! are printed. An operator's own key gets 403 from the node-to-node routes.

use crate::apitest::Workstation;
use crate::orchtest::{lists, runners};
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::time::{Duration, Instant};

/// A value after `key` in a log line, up to the next space.
fn after<'a>(l: &'a str, key: &str) -> Option<&'a str> {
    l.split(key).nth(1)?.split_whitespace().next()
}

pub fn test_image_copy(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    // no image in any store: node1 gets it pushed, the others fetch it
    let setup = Setup { image_in_stores: false, tools: &["curl"], ..Setup::PLAIN };
    crate::threenode::three_nodes(t, kernel, "cluster_image_copy", "cluster-image-copy", &setup, |ThreeNodes { c, r, a, nodes, image, img }| {
        let digest = format!("sha256:{}", hex(&sha256(&std::fs::read(image.join("image.json")).map_err(|e| e.to_string())?)));
        let (st, out, err) = a.cli(&nodes[0], &["image", "push", img]);
        c.check("`catenary image push` to node1 only", st == 0 && out.trim() == digest, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let holders = |a: &Workstation| -> Vec<String> {
            let (_, out, _) = a.cli(&nodes[0], &["--json", "image", "ls"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            let mut n: Vec<String> = v["images"].as_array().into_iter().flatten().filter(|i| i["digest"] == digest.as_str()).map(|i| i["node"].as_str().unwrap_or("?").to_string()).collect();
            n.sort();
            n
        };
        let before = holders(a);
        c.check("before the run only node1's store has it (`image ls --json` through node1)", before == ["node1"], &format!("{before:?}"));
        // the node-to-node routes answer nodes only: an admin operator is refused
        let (_, body) = a.curl(&nodes[0], &format!("/v1/peer/images/{digest}/manifest"));
        c.check("an operator's key gets 403 from the node-to-node image route", body.trim_end().ends_with("403"), body.trim());
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        let t0 = Instant::now();
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "3", "--name", "copy", "--mem", "64", "--restart", "always", img, "hello", "copy"]);
        c.check("`catenary run --replicas 3 --name copy IMAGE` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let from = vec![0usize; 3];
        let dead = vec![false; 3];
        let want = ["cl-copy-0", "cl-copy-1", "cl-copy-2"];
        let all_running = |l: &[Vec<String>]| {
            let ls = lists(l, &from, &dead);
            let run = runners(&ls);
            want.iter().all(|n| run.get(*n).is_some_and(|v| v.len() == 1 && ls[v[0]][*n] == "running")) && (0..3).all(|i| ls[i].len() == 1)
        };
        let ok = r.wait(Duration::from_secs(600), false, all_running);
        let ls = lists(&r.lines, &from, &dead);
        let ran = t0.elapsed();
        c.check("every replica runs, one on each of the three nodes", ok, &format!("after {:.0} s: {:?}", ran.as_secs_f64(), runners(&ls)));
        println!("  run -> three replicas running: {:.1} s", ran.as_secs_f64());
        // the two nodes without the image fetched it from node1 and logged the copy
        for i in 1..3 {
            let line = r.lines[i][mark[i]..].iter().find(|x| x.contains("apid: image") && x.contains("fetched from"));
            let figs = line.and_then(|l| Some((after(l, "verified: ")?.parse::<u64>().ok()?, after(l, "bytes in ")?.parse::<u64>().ok()?)));
            let waited = r.lines[i][mark[i]..].iter().any(|x| x.contains("waits for image") && x.contains(&digest));
            c.check(&format!("{} fetched the image from node1 and verified it before its replica started", nodes[i].name), line.is_some_and(|l| l.contains("from node1")) && waited, line.map_or("no `fetched from` line", |l| l.as_str()));
            if let Some((b, ms)) = figs {
                println!("  {}: copy of {b} bytes in {ms} ms = {:.0} KiB/s", nodes[i].name, b as f64 / 1024.0 / (ms.max(1) as f64 / 1000.0));
            }
            let started = r.lines[i][mark[i]..].iter().find(|x| x.contains("orchd: image") && x.contains("in the store after"));
            if let Some(l) = started {
                println!("  {}: {}", nodes[i].name, l.split("orchd: ").nth(1).unwrap_or(l));
            }
        }
        c.check("node1 (which had it) fetched nothing", !r.lines[0][mark[0]..].iter().any(|x| x.contains("apid: fetching image")), "");
        // each replica's log, read through its own node's API
        for (i, n) in nodes.iter().enumerate() {
            let Some(rep) = ls[i].keys().next().cloned() else { continue };
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut got = String::new();
            while Instant::now() < deadline {
                let (_, out, err) = a.cli(n, &["logs", &rep]);
                got = format!("{}{}", out, err);
                if got.contains("hello from copy") {
                    break;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            c.check(&format!("{rep} on {} logged its greeting", n.name), got.contains("hello from copy"), got.lines().next().unwrap_or(""));
        }
        let after_run = holders(a);
        c.check("`image ls --json` shows the image, one digest, on all three nodes", after_run == ["node1", "node2", "node3"], &format!("{after_run:?}"));
        Ok(())
    })
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `cluster_drain`: three nodes (the image in every store), `web` with 2 replicas; the operator
/// drains a node that runs one (`catenary node drain NODE`): its replica stops there and runs on
/// the third node, nothing runs on the drained one, and a 3-replica workload put meanwhile is
/// not placed (it needs all three nodes, and is placed whole or not at all). `catenary node
/// undrain NODE` makes the node eligible again: the 3-replica workload then runs on all three.
pub fn test_drain(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    crate::threenode::three_nodes(t, kernel, "cluster_drain", "cluster-drain", &Setup::PLAIN, |ThreeNodes { c, r, a, nodes, img, .. }| {
        let from = vec![0usize; 3];
        let dead = vec![false; 3];
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", img, "hello", "web"]);
        c.check("`catenary run --replicas 2 --name web` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let web = ["cl-web-0", "cl-web-1"];
        let web_on = |l: &[Vec<String>]| -> Vec<usize> {
            let ls = lists(l, &from, &dead);
            let run = runners(&ls);
            let mut v: Vec<usize> = web.iter().filter_map(|n| run.get(*n).filter(|v| v.len() == 1 && ls[v[0]][*n] == "running").map(|v| v[0])).collect();
            v.sort();
            v.dedup();
            v
        };
        let ok = r.wait(Duration::from_secs(600), false, |l| web_on(l).len() == 2);
        let before = web_on(&r.lines);
        c.check("web's two replicas run on two nodes", ok, &format!("{before:?}"));
        if !ok {
            return Err("not placed".into());
        }
        // drain a node that runs one (not the API's node1 when another will do)
        let x = *before.iter().find(|i| **i != 0).unwrap_or(&before[0]);
        let other = (0..3).find(|i| !before.contains(i)).unwrap_or(0);
        let via = &nodes[(x + 1) % 3];
        let t0 = Instant::now();
        let (st, out, err) = a.cli(via, &["node", "drain", &nodes[x].name]);
        c.check(&format!("`catenary node drain {}` is committed", nodes[x].name), st == 0 && out.contains("drained"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let moved = r.wait(Duration::from_secs(300), false, |l| {
            let ls = lists(l, &from, &dead);
            web_on(l).len() == 2 && !web_on(l).contains(&x) && ls[x].is_empty()
        });
        let after = web_on(&r.lines);
        println!("  drain -> web on the others, nothing on {}: {:.1} s", nodes[x].name, t0.elapsed().as_secs_f64());
        c.check(&format!("web runs on the two other nodes ({} and {}), nothing on {}", nodes[(x + 1) % 3].name, nodes[(x + 2) % 3].name, nodes[x].name), moved && after.contains(&other), &format!("{after:?}; {:?}", lists(&r.lines, &from, &dead)[x]));
        // a workload that needs every node is not placed while one is drained
        let (st, out, err) = a.cli(via, &["run", "--replicas", "3", "--name", "all", "--mem", "64", "--restart", "always", img, "hello", "all"]);
        c.check("`catenary run --replicas 3 --name all` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let all_on = |l: &[Vec<String>]| -> Vec<usize> {
            let ls = lists(l, &from, &dead);
            (0..3).filter(|i| ls[*i].keys().any(|k| k.starts_with("cl-all-")) ).collect()
        };
        r.wait(Duration::from_secs(20), false, |_| false);
        c.check("while drained, `all` (3 replicas, 2 eligible nodes) is not placed at all", all_on(&r.lines).is_empty(), &format!("{:?}", all_on(&r.lines)));
        let t1 = Instant::now();
        let (st, out, err) = a.cli(via, &["node", "undrain", &nodes[x].name]);
        c.check(&format!("`catenary node undrain {}` is committed", nodes[x].name), st == 0 && out.contains("undrained"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let ok = r.wait(Duration::from_secs(300), false, |l| {
            let ls = lists(l, &from, &dead);
            (0..3).all(|i| ls[i].iter().any(|(k, s)| k.starts_with("cl-all-") && s == "running"))
        });
        println!("  undrain -> `all` running on the three nodes: {:.1} s", t1.elapsed().as_secs_f64());
        c.check(&format!("after the undrain `all` runs on all three nodes, {} included", nodes[x].name), ok, &format!("{:?}", lists(&r.lines, &from, &dead)));
        c.check("web still runs twice, on two nodes", web_on(&r.lines).len() == 2, &format!("{:?}", web_on(&r.lines)));
        Ok(())
    })
}
