//! `cluster_workload_update` (issue 13; docs/orchestration.md "A workload's spec changes"):
//! three QEMU nodes (the test image in every store); `web` runs with 2 replicas and the args
//! `hello v1`. The operator runs it again under the same name with `hello v2` (what
//! `catenary run` of an existing name does: the desired spec is replaced). Each node that runs
//! a replica must replace it (its `orchd` logs `replacing cl-web-R … (args)`), once, and the
//! new instance must log `hello from v2`; replica 0 is replaced at once (both ran `v1` for
//! `HEALTHY_MS` first: a replica goes only while the others are healthy), and replica 1 only
//! once replica 0's new instance has run for `HEALTHY_MS` (10 s; host clock from replica 0's
//! `started` line), so the two are never down together; afterwards both run again on two
//! nodes. Then `web` gets another image (and `hello v3`), pushed to the third node only: each
//! host must fetch it while its old replica runs on, and replace the replica (`(image, args)`)
//! only once the image is in its store (replica 1 again only after replica 0 ran it healthily);
//! both then greet `v3`. Then a spec whose program fails (`args: broken`, exit 3, restarted
//! for ever): replica 0 takes it and keeps failing, replica 1 keeps `v3` and runs (the roll
//! holds); `hello v4` then replaces both, replica 0 first. Then `--mem 4096`, more than a node
//! has: each host keeps its old instance running (and says so); then `--mem 64` again, the
//! spec the replicas run: nothing is replaced. Then, with a node-level filler on each host,
//! `--mem 400`, more than the hosts have but not the third node: the leader moves one replica
//! to the third node and the other keeps its old instance. The replacement times, and the
//! fewest `web` replicas seen running while it rolled, are printed.

use crate::cluster::node_secs;
use crate::orchtest::{lists, runners};
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::time::{Duration, Instant};

const WEB: [&str; 2] = ["cl-web-0", "cl-web-1"];

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    crate::threenode::three_nodes(t, kernel, "cluster_workload_update", "cluster-workload-update", &Setup::PLAIN, |ThreeNodes { c, r, a, nodes, img, image }| {
        let from = vec![0usize; 3];
        let dead = vec![false; 3];
        // the nodes whose workd lists replica `n` running
        let running_on = |l: &[Vec<String>], n: &str| -> Vec<usize> {
            let ls = lists(l, &from, &dead);
            runners(&ls).get(n).map_or(Vec::new(), |v| v.iter().copied().filter(|i| ls[*i][n] == "running").collect())
        };
        let greeted = |l: &[Vec<String>], i: usize, n: &str, who: &str, since: usize| {
            l[i][since.min(l[i].len())..].iter().any(|x| x.contains(&format!("[vm:{n} stdout] hello from {who}")))
        };
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", img, "hello", "v1"]);
        c.check("`catenary run --replicas 2 --name web IMAGE hello v1` is committed, and says it created web", st == 0 && out.contains("(cluster): created"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let placed = |l: &[Vec<String>]| -> Option<[usize; 2]> {
            let on: Vec<Vec<usize>> = WEB.iter().map(|n| running_on(l, n)).collect();
            match (on[0].as_slice(), on[1].as_slice()) {
                ([x], [y]) if x != y && greeted(l, *x, WEB[0], "v1", 0) && greeted(l, *y, WEB[1], "v1", 0) => Some([*x, *y]),
                _ => None,
            }
        };
        let ok = r.wait(Duration::from_secs(600), false, |l| placed(l).is_some());
        let Some(hosts) = placed(&r.lines) else {
            c.check("web's two replicas run on two nodes and greet `v1`", false, &format!("{:?}", lists(&r.lines, &from, &dead)));
            return Err("not placed".into());
        };
        c.check("web's two replicas run on two nodes and greet `v1`", ok, &format!("{hosts:?}"));
        let healthy_s = catenary_workload::restart::HEALTHY_MS as f64 / 1000.0;
        // both healthy (a replica is taken down only while the others are), and reported
        let settle = |r: &mut crate::cluster::Running| r.wait(Duration::from_millis(catenary_workload::restart::HEALTHY_MS + 2_000), false, |_| false);
        settle(r);
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let t0 = Instant::now();
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", img, "hello", "v2"]);
        c.check("the same `run` with `hello v2` is committed (the spec replaced), and says what changed", st == 0 && out.contains("(cluster): updated (args); replicas on the old spec are replaced one at a time (catenary ps marks them outdated)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // when each replica's replacement was first seen (host clock), and the fewest running
        let replacing = |l: &[Vec<String>], rep: usize, mark: &[usize]| -> Vec<String> {
            l[hosts[rep]][mark[hosts[rep]]..].iter().filter(|x| x.contains(&format!("orchd: replacing {} ", WEB[rep]))).cloned().collect()
        };
        // what `catenary ps` shows meanwhile: replica 1 still `outdated` (it waits for replica 0)
        let outdated_of = |a: &crate::apitest::Workstation| -> Option<Vec<bool>> {
            let (st, out, _) = a.cli(&nodes[0], &["--json", "ps"]);
            let j: serde_json::Value = serde_json::from_str(&out).ok().filter(|_| st == 0)?;
            let w = j["cluster"]["workloads"].as_array()?.iter().find(|w| w["name"] == "web")?.clone();
            w["assignments"].as_array().map(|v| v.iter().map(|a| a["outdated"] == true).collect())
        };
        // (asked until replica 1 shows it, for at most 5 s: its node may apply the commit a
        // moment after the node that answers)
        let asked = Instant::now();
        let mut during = outdated_of(a);
        while during.as_ref().is_none_or(|v| v.get(1) != Some(&true)) && asked.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(500));
            during = outdated_of(a);
        }
        // The roll as the host sees it: per replica, when its replacement began and when its
        // new instance was started (host clock from the commit).
        let roll = |r: &mut crate::cluster::Running, mark: &[usize], who: &str, limit: u64| -> (bool, [Option<f64>; 2], [Option<f64>; 2], usize) {
            let t = Instant::now();
            let (mut begun, mut started, mut fewest) = ([None; 2], [None; 2], 2usize);
            let done = |l: &[Vec<String>]| (0..2).all(|k| greeted(l, hosts[k], WEB[k], who, mark[hosts[k]]) && running_on(l, WEB[k]) == [hosts[k]]);
            let ok = r.wait(Duration::from_secs(limit), false, |l| {
                for k in 0..2 {
                    let ls = &l[hosts[k]][mark[hosts[k]]..];
                    if begun[k].is_none() && ls.iter().any(|x| x.contains(&format!("orchd: replacing {} ", WEB[k]))) {
                        begun[k] = Some(t.elapsed().as_secs_f64());
                    }
                    if started[k].is_none() && ls.iter().any(|x| x.contains(&format!("orchd: started {} ", WEB[k]))) {
                        started[k] = Some(t.elapsed().as_secs_f64());
                    }
                }
                fewest = fewest.min(WEB.iter().filter(|n| !running_on(l, n).is_empty()).count());
                done(l)
            });
            (ok, begun, started, fewest)
        };
        // Replica 1 is replaced only once replica 0's new instance has run for HEALTHY_MS (its
        // node reports it healthy each second), and then without a long wait.
        let gated = |begun: &[Option<f64>; 2], started: &[Option<f64>; 2]| -> Option<f64> { Some(begun[1]? - started[0]?) };
        let gate_ok = |gap: Option<f64>| gap.is_some_and(|g| g >= healthy_s - 0.5 && g < healthy_s + 10.0);
        let (ok, begun, started, fewest) = roll(r, &mark, "v2", 300);
        println!("  args update: replacement begun {begun:?} s, new instance started {started:?} s after the commit (replica 0, 1); both greet v2 after {:.1} s; fewest web replicas running meanwhile (sampled): {fewest}", t0.elapsed().as_secs_f64());
        for k in 0..2 {
            let lines = replacing(&r.lines, k, &mark);
            let one = lines.len() == 1 && lines[0].contains("its spec changed (args)");
            c.check(&format!("{} on {} is replaced once, for its args", WEB[k], nodes[hosts[k]].name), one, &format!("{lines:?}"));
            // the new instance's greeting comes after the replacement began
            let at = r.lines[hosts[k]].iter().position(|x| x.contains(&format!("orchd: replacing {} ", WEB[k])));
            let v2 = at.is_some_and(|p| greeted(&r.lines, hosts[k], WEB[k], "v2", p));
            c.check(&format!("{} logs `hello from v2` after it was replaced", WEB[k]), v2, "");
        }
        // replica 0 at once on its node's clock (from the line that saw it outdated)
        let at = |i: usize, mark: &[usize], pat: &str| r.lines[i][mark[i]..].iter().find(|x| x.contains(pat)).and_then(|x| node_secs(x));
        let first = at(hosts[0], &mark, "orchd: replacing cl-web-0 ").zip(at(hosts[0], &mark, "orchd: cl-web-0 runs an outdated spec")).map(|(x, y)| x - y);
        let waits = r.lines[hosts[1]][mark[hosts[1]]..].iter().any(|x| x.contains("orchd: cl-web-1 (web replica 1) runs on until replica 0 runs the new spec healthily (10 s running)"));
        c.check("replica 0 is replaced at once (< 2 s after its node saw the change), replica 1's node says it waits for replica 0", first.is_some_and(|f| f < 2.0) && waits, &format!("replica 0 after {first:?} s, waits line {waits}"));
        let gap = gated(&begun, &started);
        println!("  replica 1 replaced {gap:?} s after replica 0's new instance was started (healthy after {healthy_s:.0} s)");
        c.check(&format!("replica 1 is replaced only once replica 0's new instance has run {healthy_s:.0} s (and within 10 s more), never both down"), gate_ok(gap) && fewest >= 1, &format!("{gap:?} s, fewest running {fewest}"));
        c.check("afterwards both replicas run again, on the same two nodes", ok, &format!("{:?}", lists(&r.lines, &from, &dead)));
        let after = outdated_of(a);
        c.check("`catenary ps --json` shows replica 1 `outdated` during the roll, and neither after it", during.as_ref().is_some_and(|v| v.get(1) == Some(&true)) && after == Some(vec![false, false]),
            &format!("during {during:?}, after {after:?}"));
        if !ok {
            return Err("the args update did not end".into());
        }
        // Another image, pushed to the node that runs no replica: each host fetches it while its
        // old replica runs on, and replaces the replica only once the image is in its store.
        let image_b = crate::imagecopytest::variant(image)?;
        let digest_b = format!("sha256:{}", crate::imagecopytest::hex(&crate::imagecopytest::sha256(&std::fs::read(image_b.join("image.json")).map_err(|e| e.to_string())?)));
        let third = (0..3).find(|i| !hosts.contains(i)).unwrap_or(0);
        let (st, out, err) = a.cli(&nodes[third], &["image", "push", image_b.to_str().ok_or("path")?]);
        c.check(&format!("a second image pushed to {} only (it runs no replica)", nodes[third].name), st == 0 && out.trim() == digest_b, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        settle(r);
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let t1 = Instant::now();
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", image_b.to_str().unwrap_or(""), "hello", "v3"]);
        c.check("`run` of web with that image and `hello v3` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let (ok, begun, started, fewest) = roll(r, &mark, "v3", 600);
        println!("  image update -> both replicas greet v3: {:.1} s (replacement begun {begun:?} s, started {started:?} s; fewest running {fewest})", t1.elapsed().as_secs_f64());
        let gap = gated(&begun, &started);
        c.check(&format!("replica 1 takes the new image only once replica 0's new instance has run {healthy_s:.0} s"), gate_ok(gap) && fewest >= 1, &format!("{gap:?} s, fewest running {fewest}"));
        for k in 0..2 {
            let i = hosts[k];
            let ls = &r.lines[i][mark[i]..];
            let pos = |pat: &str| ls.iter().position(|x| x.contains(pat));
            let waits = pos(&format!("orchd: {} (web replica {k}) runs on while image {digest_b} is fetched", WEB[k]));
            let here = pos("orchd: image ").filter(|p| ls[*p].contains("in the store after"));
            let replacing = pos(&format!("orchd: replacing {} ", WEB[k]));
            // the old replica still ran when the fetch began: its node's latest list then
            let ran = waits.is_some_and(|p| {
                let upto: Vec<Vec<String>> = (0..3).map(|j| if j == i { r.lines[i][..mark[i] + p].to_vec() } else { Vec::new() }).collect();
                running_on(&upto, WEB[k]) == [i]
            });
            let order = matches!((waits, here, replacing), (Some(w), Some(h), Some(x)) if w < h && h < x) && ls[replacing.unwrap_or(0)].contains("its spec changed (image, args)");
            if let (Some(h), Some(x)) = (here, replacing) {
                println!("  {}: {}; {}", nodes[i].name, ls[h].split("orchd: ").nth(1).unwrap_or(""), ls[x].split("orchd: ").nth(1).unwrap_or(""));
            }
            c.check(&format!("{} on {} ran on while its node fetched the image, and was replaced (image, args) only once it was in the store", WEB[k], nodes[i].name), ran && order,
                &format!("waits {waits:?} (running then: {ran}), in the store {here:?}, replacing {replacing:?}"));
            // replica 0 at once once the image is here (node clock)
            if k == 0 {
                let turn = here.zip(replacing).and_then(|(h, x)| Some(node_secs(&ls[x])? - node_secs(&ls[h])?));
                c.check("replica 0 is replaced at once (< 2 s) once the image is in its node's store", turn.is_some_and(|w| w < 2.0), &format!("{turn:?} s"));
            }
        }
        c.check("both replicas greet `v3` and run on the same two nodes", ok, &format!("{:?}", lists(&r.lines, &from, &dead)));
        if !ok {
            return Err("the image update did not end".into());
        }
        // A spec whose program fails at once (exit 3; restarted for ever, with backoff):
        // replica 0 takes it and keeps failing; replica 1 must keep `v3` and run, shown
        // outdated. Then a good spec again replaces both, replica 0 first.
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let b = image_b.to_str().unwrap_or("");
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", b, "broken"]);
        c.check("`run` of web with args that make its program fail (`broken`) is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let failed_twice = |l: &[Vec<String>]| l[hosts[0]][mark[hosts[0]]..].iter().filter(|x| x.contains("[vm:cl-web-0 stdout] args: broken")).count() >= 2;
        let tb = Instant::now();
        let failing = r.wait(Duration::from_secs(120), false, failed_twice);
        // past what a healthy run would take, and a report more
        r.wait(Duration::from_secs(catenary_workload::restart::HEALTHY_MS / 1000 + 10), false, |_| false);
        let runs = r.lines[hosts[0]][mark[hosts[0]]..].iter().filter(|x| x.contains("[vm:cl-web-0 stdout] args: broken")).count();
        let held = r.lines[hosts[1]][mark[hosts[1]]..].iter().any(|x| x.contains("orchd: cl-web-1 (web replica 1) runs on until replica 0 runs the new spec healthily (10 s running)"));
        let kept = replacing(&r.lines, 1, &mark).is_empty() && running_on(&r.lines, WEB[1]) == [hosts[1]];
        let ps = outdated_of(a);
        let (_, table, _) = a.cli(&nodes[0], &["ps"]);
        let row = table.lines().find(|l| l.starts_with("web ")).unwrap_or("").to_string();
        println!("  broken update: replica 0 ran `broken` {runs} times in {:.1} s; `catenary ps`: {row}", tb.elapsed().as_secs_f64());
        c.check("replica 0 takes the failing spec and keeps failing; replica 1 says it waits for replica 0, is not replaced, runs `v3` and is shown outdated", failing && held && kept && ps.as_ref().is_some_and(|v| v.get(1) == Some(&true)),
            &format!("failing {failing} ({runs} runs), waits line {held}, replica 1 untouched and running {kept}, ps {ps:?}"));
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let t4 = Instant::now();
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", b, "hello", "v4"]);
        c.check("`run` of web with `hello v4` (a good spec again) is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let (ok, begun, started, fewest) = roll(r, &mark, "v4", 300);
        println!("  fixed update -> both replicas greet v4: {:.1} s (replacement begun {begun:?} s, started {started:?} s)", t4.elapsed().as_secs_f64());
        let gap = gated(&begun, &started);
        c.check("the good spec replaces the failing replica 0, then replica 1 once replica 0 ran it healthily; both greet `v4`", ok && gate_ok(gap) && fewest >= 1, &format!("{gap:?} s, fewest running {fewest}, {:?}", lists(&r.lines, &from, &dead)));
        if !ok {
            return Err("the fixed update did not end".into());
        }
        // More memory than a node has: each host keeps the old instance running (replacing it
        // would leave the replica down: its create would be refused). Then the spec it runs
        // again: nothing is replaced.
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "4096", "--restart", "always", b, "hello", "v4"]);
        c.check("`run` of web with `--mem 4096` (more than a node has) is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let kept = |l: &[Vec<String>]| (0..2).all(|k| l[hosts[k]][mark[hosts[k]]..].iter().any(|x| x.contains(&format!("orchd: {} keeps its old spec: the new one needs 4100 MiB", WEB[k]))));
        let said = r.wait(Duration::from_secs(120), false, kept);
        r.wait(Duration::from_secs(15), false, |_| false);
        let touched = |l: &[Vec<String>], from: &[usize]| -> Vec<String> {
            (0..2).flat_map(|k| l[hosts[k]][from[hosts[k]]..].iter().filter(|x| x.contains(&format!("orchd: replacing {} ", WEB[k])) || x.contains(&format!("orchd: destroyed {} ", WEB[k]))).cloned().collect::<Vec<_>>()).collect()
        };
        let still = (0..2).all(|k| running_on(&r.lines, WEB[k]) == [hosts[k]]);
        let kept_ps = outdated_of(a);
        let (_, table, _) = a.cli(&nodes[0], &["ps"]);
        let row = table.lines().find(|l| l.starts_with("web ")).unwrap_or("").to_string();
        println!("  `catenary ps` while web keeps its old spec: {row}");
        c.check("each host logs that its replica keeps its old spec (4100 MiB needed), and 15 s later neither was stopped and both run, shown `outdated` by `catenary ps`", said && touched(&r.lines, &mark).is_empty() && still && kept_ps == Some(vec![true, true]) && row.matches(":running,outdated").count() == 2,
            &format!("said {said}, {:?}, {:?}, ps {kept_ps:?}", touched(&r.lines, &mark), lists(&r.lines, &from, &dead)));
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", b, "hello", "v4"]);
        c.check("`run` of web back at `--mem 64` (the spec its replicas run) is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        r.wait(Duration::from_secs(15), false, |_| false);
        let still = (0..2).all(|k| running_on(&r.lines, WEB[k]) == [hosts[k]]);
        c.check("then nothing is replaced (the replicas run the desired spec) and both run", touched(&r.lines, &mark).is_empty() && still, &format!("{:?}", touched(&r.lines, &mark)));
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", b, "hello", "v4"]);
        c.check("the same `run` once more says nothing changed", st == 0 && out.contains("(cluster): unchanged"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // A spec grown past its hosts' room but not past the third node's: each host reports
        // less capacity than the desired spec needs, and the leader moves one replica to the
        // third node (docs/orchestration.md "A replica that no longer fits its node moves");
        // the other, with no node left that has room (one replica per node), keeps its old
        // instance. The room: a node-level filler on each host leaves 300 MiB with the old
        // instance's back, less than the 404 MiB the grown spec needs.
        let room = |l: &[Vec<String>], h: usize| -> Option<u64> {
            l[h].iter().find_map(|x| x.split("the new one needs 4100 MiB, ").nth(1)?.split(" MiB free here").next()?.trim().parse().ok())
        };
        let m = (0..2).filter_map(|k| room(&r.lines, hosts[k])).min().unwrap_or(0);
        let filler = m.saturating_sub(304);
        let mut fillers_ok = m >= 500;
        for (k, h) in hosts.iter().enumerate() {
            let (st, out, err) = a.cli(&nodes[*h], &["run", "--name", &format!("filler{k}"), "--mem", &filler.to_string(), "--restart", "always", img, "hello", "filler"]);
            fillers_ok &= st == 0;
            if st != 0 {
                println!("  filler{k} on node{}: exit {st}: {} {}", h + 1, out.trim(), err.trim());
            }
        }
        c.check("a node-level filler on each host leaves it 300 MiB for `web` with its instance's back", fillers_ok, &format!("room with the old instance's back {m} MiB, filler {filler} MiB"));
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let t5 = Instant::now();
        let (st, out, err) = a.cli(&nodes[third], &["run", "--replicas", "2", "--name", "web", "--mem", "400", "--restart", "always", b, "hello", "v4"]);
        c.check("`run` of web with `--mem 400` (more than either host has, less than the third node) is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let moved_to_third = |l: &[Vec<String>]| (0..2).find(|k| running_on(l, WEB[*k]) == [third]);
        let moved = r.wait(Duration::from_secs(180), false, |l| moved_to_third(l).is_some());
        let took = t5.elapsed().as_secs_f64();
        let k = moved_to_third(&r.lines).unwrap_or(0);
        let other = 1 - k;
        r.wait(Duration::from_secs(15), false, |_| false);
        let stayed = running_on(&r.lines, WEB[other]) == [hosts[other]] && running_on(&r.lines, WEB[k]) == [third];
        let other_kept = r.lines[hosts[other]][mark[hosts[other]]..].iter().any(|x| x.contains(&format!("orchd: {} keeps its old spec: the new one needs 404 MiB", WEB[other])));
        let other_touched: Vec<String> = r.lines[hosts[other]][mark[hosts[other]]..].iter().filter(|x| x.contains(&format!("orchd: replacing {} ", WEB[other])) || x.contains(&format!("orchd: destroyed {} ", WEB[other]))).cloned().collect();
        println!("  grown past the hosts' room: {} running on node{} {took:.1} s after the run", WEB[k], third + 1);
        c.check("the leader moves one replica to the third node, where it runs the grown spec; the other keeps its old instance on its host (no node left with room), untouched 15 s later",
            moved && stayed && other_kept && other_touched.is_empty(),
            &format!("moved {moved} ({took:.1} s), stayed {stayed}, other kept {other_kept}, touched {other_touched:?}, {:?}", lists(&r.lines, &from, &dead)));
        Ok(())
    })
}
