//! `cluster_node_remove` (issue 13, docs/orchestration.md "Removal" and "Labels at run time"):
//! three QEMU nodes. First the labels: `catenary node label node3 tier=gold` shows in `catenary
//! --json nodes`, a `--constraint tier=gold` workload runs on node3 only, and after relabelling
//! (node3 `tier-`, node2 `tier=gold`) it runs on node2 only. Then the removal: `web` ×2 and `db`
//! ×1 run; the operator asks node1 `catenary node remove NODE` for another node that runs a
//! replica. Every other node must act on the committed removal from its own state: its `orchd`
//! hands the key to `netd` (which drops the fabric peer) and its `memberd` revokes it; the
//! replicas run on the two others, never on two survivors at once; the removed node, cut off,
//! stops the replicas it ran; `nodes` shows it `removed`; for
//! 20 s more no survivor shows it alive again (it keeps running and announcing itself); both
//! survivors' `orchd` log the Raft voters as the two of them (the leader took the removed
//! node's voter out), and removing one of them (1 of 2 voters left) is refused. Last, the
//! removed node (still running, cut off) is admitted again with `catenary node add KEY`: the
//! survivors' `orchd` hand it back to `netd` as a peer and `memberd` shows it alive, the leader adds its voter back
//! (all three voters on both survivors), `nodes` shows it up, and a `replicas = 3` workload
//! runs one replica on each node.

use crate::orchtest::{lists, placed, runners};
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    crate::threenode::three_nodes(t, kernel, "cluster_node_remove", "cluster-node-remove", &Setup::PLAIN, |ThreeNodes { c, r, a, nodes, img, .. }| {
        let from = vec![0usize; 3];
        let none = vec![false; 3];

        // Labels at run time.
        let (st, out, err) = a.cli(&nodes[0], &["node", "label", "node3", "tier=gold"]);
        c.check("`catenary node label node3 tier=gold` through node1 is committed", st == 0 && out.contains("node3 labelled: tier=gold"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let labels_of = |n: &str| {
            let (_, out, _) = a.cli(&nodes[1], &["--json", "nodes"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
            v["nodes"].as_array().and_then(|a| a.iter().find(|x| x["name"] == n)).map(|x| x["labels"].clone()).unwrap_or(serde_json::Value::Null)
        };
        // node2 answers from its own committed state: it has the label once the leader's next
        // append reached it (a heartbeat is 100 ms; a lost datagram waits for the next), which
        // can be after node1 acknowledged the commit. So ask again for up to 30 s.
        // (`r.wait` between the asks keeps reading the nodes' serial output.)
        let until = |r: &mut crate::cluster::Running, f: &dyn Fn() -> bool| {
            let end = Instant::now() + Duration::from_secs(30);
            while !f() && Instant::now() < end {
                r.wait(Duration::from_millis(500), false, |_| false);
            }
        };
        until(r, &|| labels_of("node3")["tier"] == "gold");
        let l3 = labels_of("node3");
        c.check("`catenary --json nodes` via node2 shows node3's label tier=gold", l3["tier"] == "gold", &format!("{l3}"));
        let (st, out, err) = a.cli(&nodes[0], &["run", "--constraint", "tier=gold", "--name", "gold", "--mem", "64", "--restart", "always", img, "hello", "gold"]);
        c.check("`catenary run --constraint tier=gold --name gold` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let only = |l: &[Vec<String>], i: usize| runners(&lists(l, &from, &none)).get("cl-gold-0").is_some_and(|v| v == &[i]) && lists(l, &from, &none)[i].get("cl-gold-0").is_some_and(|s| s == "running");
        let on3 = r.wait(Duration::from_secs(300), false, |l| only(l, 2));
        c.check("gold runs on node3 only", on3, &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        let (st1, _, e1) = a.cli(&nodes[0], &["node", "label", "node3", "tier-"]);
        let (st2, _, e2) = a.cli(&nodes[0], &["node", "label", "node2", "tier=gold"]);
        c.check("relabel: node3 tier- and node2 tier=gold committed", st1 == 0 && st2 == 0, &format!("{} {}", e1.trim(), e2.trim()));
        let mut twice = Vec::new();
        let on2 = r.wait(Duration::from_secs(300), false, |l| {
            if let Some(v) = runners(&lists(l, &from, &none)).get("cl-gold-0").filter(|v| v.len() > 1) {
                twice.push(format!("{v:?}"));
            }
            only(l, 1)
        });
        c.check("after the relabel gold moved to node2 (never on two nodes)", on2 && twice.is_empty(), &format!("{:?} {twice:?}", runners(&lists(&r.lines, &from, &none))));
        until(r, &|| labels_of("node2")["tier"] == "gold" && labels_of("node3").get("tier").is_none());
        let (l2, l3) = (labels_of("node2"), labels_of("node3"));
        c.check("`nodes` shows node2 tier=gold and node3 without tier", l2["tier"] == "gold" && l3.is_object() && l3.get("tier").is_none(), &format!("{l2} {l3}"));
        let (st, _, err) = a.cli(&nodes[0], &["rm", "gold"]);
        c.check("`catenary rm gold`", st == 0, err.trim());

        // Removal.
        for (w, n) in [("web", "2"), ("db", "1")] {
            let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", n, "--name", w, "--mem", "64", "--restart", "always", img, "hello", w]);
            c.check(&format!("`catenary run --replicas {n} --name {w}` is committed"), st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        }
        let ok = r.wait(Duration::from_secs(600), false, |l| placed(&lists(l, &from, &none)));
        c.check("every replica runs once", ok, &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        if !ok {
            return Err("not placed".into());
        }
        let l = lists(&r.lines, &from, &none);
        let victim = (1..3).find(|i| !l[*i].is_empty()).ok_or("node2 and node3 run nothing")?;
        let vname = nodes[victim].name.clone();
        let lost: Vec<String> = l[victim].keys().cloned().collect();
        let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        println!("  {vname} is removed (it runs {lost:?}); asked of node1");
        let asked = Instant::now();
        let (st, out, err) = a.cli(&nodes[0], &["node", "remove", &vname]);
        c.check(&format!("`catenary node remove {vname}` through node1 is committed"), st == 0 && out.contains("removed"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let mut twice = Vec::new();
        let mut acted: Vec<Option<Duration>> = vec![None; 3];
        let mut moved = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline && (moved.is_none() || survivors.iter().any(|i| acted[*i].is_none())) {
            r.wait(Duration::from_millis(100), false, |_| false);
            for &i in &survivors {
                let s = &r.lines[i][mark[i]..];
                let fabric = s.iter().any(|x| x.contains("is removed in the desired state: the fabric dropped it")) && s.iter().any(|x| x.contains("removed by the cluster: no longer a fabric peer"));
                if acted[i].is_none() && fabric && s.iter().any(|x| x.contains(&format!("memberd: removed {vname}"))) {
                    acted[i] = Some(asked.elapsed());
                }
            }
            let l = lists(&r.lines, &from, &none);
            for (n, v) in runners(&l) {
                if v.len() > 1 && !v.contains(&victim) {
                    twice.push(format!("{n} on {v:?}"));
                }
            }
            let l2: Vec<_> = l.iter().enumerate().map(|(i, m)| if i == victim { Default::default() } else { m.clone() }).collect();
            if moved.is_none() && placed(&l2) {
                moved = Some(asked.elapsed());
            }
        }
        let fmt = |d: Option<Duration>| d.map(|d| format!("{} ms", d.as_millis())).unwrap_or("never".into());
        println!("  timings from the CLI's start: {} acted (orchd, netd, memberd) {}, {} {}; every replica running on the two others {}", nodes[survivors[0]].name, fmt(acted[survivors[0]]), nodes[survivors[1]].name, fmt(acted[survivors[1]]), fmt(moved));
        for &i in &survivors {
            c.check(&format!("{}: orchd handed the removal to netd, netd dropped the peer, memberd revoked {vname}", nodes[i].name), acted[i].is_some(), "");
        }
        c.check(&format!("{vname}'s replicas run on the two others, every replica once"), moved.is_some(), &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        c.check("no replica ran on two of the survivors", twice.is_empty(), &format!("{twice:?}"));
        // The removed node is cut off from the leader: it stops what it ran (its own workd
        // list, as its orchd logs it; it ran `lost`), once its lease lapses (or, had the
        // leader's unassignment reached it before the cut, as unassigned: said which).
        let stopped = r.wait(Duration::from_secs(120), false, |l| lists(l, &from, &none)[victim].is_empty());
        let why = if r.lines[victim][mark[victim]..].iter().any(|x| x.contains("orchd: lease ran out: cluster replicas stop here")) {
            "its lease ran out"
        } else if r.lines[victim][mark[victim]..].iter().any(|x| x.contains("orchd: stopping cl-") && x.contains("(not assigned here")) {
            "unassigned before the cut"
        } else {
            "neither logged"
        };
        c.check(&format!("{vname}, cut off, stopped the replicas it ran"), stopped && why != "neither logged", &format!("{:?} ({why}), checked {:.1} s after the CLI started", lists(&r.lines, &from, &none)[victim], asked.elapsed().as_secs_f64()));
        let (_, out, _) = a.cli(&nodes[0], &["--json", "nodes"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        let row = v["nodes"].as_array().and_then(|a| a.iter().find(|x| x["name"] == vname.as_str())).cloned().unwrap_or(serde_json::Value::Null);
        c.check(&format!("`catenary --json nodes` via node1 shows {vname} removed"), row["state"] == "removed", &format!("{row}"));
        r.wait(Duration::from_secs(20), false, |_| false);
        let back: Vec<String> = survivors
            .iter()
            .flat_map(|&i| r.lines[i][mark[i]..].iter().filter(|x| x.contains(&format!("memberd: member {vname} alive")) || x.contains(&format!("memberd: admitted {vname}"))).map(move |x| format!("{}: {x}", i + 1)))
            .collect();
        c.check(&format!("no survivor shows {vname} alive or admitted again (20 s more)"), back.is_empty(), &format!("{back:?}"));
        // The leader took the removed node's Raft voter out (a joint change): each survivor's
        // last configuration line names the two survivors only, with no change in progress.
        let want = format!("orchd: raft voters: {} {}", nodes[survivors[0]].name, nodes[survivors[1]].name);
        let last: Vec<String> = survivors.iter().map(|&i| r.lines[i].iter().rev().find(|x| x.contains("orchd: raft voters: ")).cloned().unwrap_or_default()).collect();
        c.check(&format!("both survivors' raft voters are the two of them ({vname}'s voter taken out)"), last.iter().all(|x| x.trim_end().ends_with(&want)), &format!("{last:?}"));
        // Two voters left: removing either would leave 1 of 2, refused (the quorum guard).
        let other = nodes[survivors[1]].name.clone();
        let (st, out, err) = a.cli(&nodes[0], &["node", "remove", &other]);
        let (_, nj, _) = a.cli(&nodes[0], &["--json", "nodes"]);
        let v: serde_json::Value = serde_json::from_str(&nj).unwrap_or(serde_json::Value::Null);
        let row = v["nodes"].as_array().and_then(|a| a.iter().find(|x| x["name"] == other.as_str())).cloned().unwrap_or(serde_json::Value::Null);
        c.check(&format!("`catenary node remove {other}` (1 of 2 voters left) is refused and {other} stays"), st != 0 && row["state"] != "removed" && !row.is_null(), &format!("exit {st}: {} {} / {row}", out.trim(), err.trim()));

        // Admitted again: the node kept running, cut off, and still believes it is a voter.
        // `catenary node add KEY` lets it back: the survivors' fabric and membership take it
        // from their own committed state, the leader adds its voter back (its pre-votes, once
        // carried, count as its `Join`), and it runs replicas again.
        let key_hex: String = nodes[victim].identity.public_key().iter().map(|b| format!("{b:02x}")).collect();
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        let added = Instant::now();
        let (st, out, err) = a.cli(&nodes[0], &["node", "add", &key_hex]);
        c.check(&format!("`catenary node add KEY` of {vname} through node1 is committed"), st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let alive = format!("memberd: member {vname} alive");
        let three = format!("orchd: raft voters: {} {} {}", nodes[0].name, nodes[1].name, nodes[2].name);
        let mut back: Vec<Option<Duration>> = vec![None; 3];
        let mut voters: Option<Duration> = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline && (voters.is_none() || survivors.iter().any(|i| back[*i].is_none())) {
            r.wait(Duration::from_millis(100), false, |_| false);
            for &i in &survivors {
                let s = &r.lines[i][mark[i]..];
                if back[i].is_none() && s.iter().any(|x| x.contains(&key_hex) && x.contains("is admitted in the desired state: the fabric takes it as a peer")) && s.iter().any(|x| x.contains(&alive)) {
                    back[i] = Some(added.elapsed());
                }
            }
            if voters.is_none() && survivors.iter().all(|&i| r.lines[i][mark[i]..].iter().rev().find(|x| x.contains("orchd: raft voters: ")).is_some_and(|x| x.trim_end().ends_with(&three))) {
                voters = Some(added.elapsed());
            }
        }
        println!("  timings from the CLI's start: {} took {vname} back (orchd to netd, memberd alive) {}, {} {}; both survivors' raft voters the three {}", nodes[survivors[0]].name, fmt(back[survivors[0]]), nodes[survivors[1]].name, fmt(back[survivors[1]]), fmt(voters));
        for &i in &survivors {
            c.check(&format!("{}: orchd handed {vname} back to netd as a peer and memberd shows it alive", nodes[i].name), back[i].is_some(), "");
        }
        c.check(&format!("both survivors' raft voters are the three again ({vname}'s voter added back)"), voters.is_some(), &format!("{:?}", survivors.iter().map(|&i| r.lines[i][mark[i]..].iter().rev().find(|x| x.contains("orchd: raft voters: ")).cloned().unwrap_or_default()).collect::<Vec<_>>()));
        let (_, out, _) = a.cli(&nodes[0], &["--json", "nodes"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        let row = v["nodes"].as_array().and_then(|a| a.iter().find(|x| x["name"] == vname.as_str())).cloned().unwrap_or(serde_json::Value::Null);
        c.check(&format!("`catenary --json nodes` via node1 shows {vname} up and alive again"), row["state"] == "up" && row["membership"] == "alive", &format!("{row}"));
        // It takes work again: three replicas, one on each node.
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "3", "--name", "all", "--mem", "64", "--restart", "always", img, "hello", "all"]);
        c.check("`catenary run --replicas 3 --name all` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // each replica on one node, running there, and the three on three nodes
        let spread = |l: &[Vec<String>]| {
            let lists = lists(l, &from, &none);
            let run = runners(&lists);
            let mut on: Vec<usize> = Vec::new();
            for k in 0..3 {
                let name = format!("cl-all-{k}");
                match run.get(&name).map(|v| v.as_slice()) {
                    Some(&[n]) if lists[n].get(&name).is_some_and(|s| s == "running") => on.push(n),
                    _ => return false,
                }
            }
            on.sort();
            on == [0, 1, 2]
        };
        let all = r.wait(Duration::from_secs(300), false, spread);
        c.check(&format!("all's three replicas run one on each node, {vname} included"), all, &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        Ok(())
    })
}
