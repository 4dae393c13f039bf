//! `cluster_workload_update` (issue 13; docs/orchestration.md "A workload's spec changes"):
//! three QEMU nodes (the test image in every store); `web` runs with 2 replicas and the args
//! `hello v1`. The operator runs it again under the same name with `hello v2` (what
//! `catenary run` of an existing name does: the desired spec is replaced). Each node that runs
//! a replica must replace it (its `orchd` logs `replacing cl-web-R … (args)`), once, and the
//! new instance must log `hello from v2`; replica 1's turn comes at least a roll step
//! (`catenary_workload::replace::ROLL_STEP_MS`, less a second for the two nodes' views of the
//! commit) after replica 0's, so the two are not stopped together; afterwards both run again on
//! two nodes. The replacement times, and the fewest `web` replicas seen running while it
//! rolled, are printed (figures, not checks).

use crate::orchtest::{lists, runners};
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const WEB: [&str; 2] = ["cl-web-0", "cl-web-1"];

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    crate::threenode::three_nodes(t, kernel, "cluster_workload_update", "cluster-workload-update", &Setup::PLAIN, |ThreeNodes { c, r, a, nodes, img, .. }| {
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
        c.check("`catenary run --replicas 2 --name web IMAGE hello v1` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
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
        let mark: Vec<usize> = r.lines.iter().map(|l| l.len()).collect();
        let t0 = Instant::now();
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "2", "--name", "web", "--mem", "64", "--restart", "always", img, "hello", "v2"]);
        c.check("the same `run` with `hello v2` is committed (the spec replaced)", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        // when each replica's replacement was first seen (host clock), and the fewest running
        let replacing = |l: &[Vec<String>], rep: usize| -> Vec<String> {
            l[hosts[rep]][mark[hosts[rep]]..].iter().filter(|x| x.contains(&format!("orchd: replacing {} ", WEB[rep]))).cloned().collect()
        };
        let mut seen: BTreeMap<usize, f64> = BTreeMap::new();
        let mut fewest = 2usize;
        let done = |l: &[Vec<String>]| (0..2).all(|k| greeted(l, hosts[k], WEB[k], "v2", mark[hosts[k]]) && running_on(l, WEB[k]) == [hosts[k]]);
        let ok = r.wait(Duration::from_secs(300), false, |l| {
            for k in 0..2 {
                if !replacing(l, k).is_empty() {
                    seen.entry(k).or_insert(t0.elapsed().as_secs_f64());
                }
            }
            fewest = fewest.min(WEB.iter().filter(|n| !running_on(l, n).is_empty()).count());
            done(l)
        });
        for (k, s) in &seen {
            println!("  {} on {}: replacement begun {s:.1} s after the update was committed", WEB[*k], nodes[hosts[*k]].name);
        }
        println!("  update -> both replicas greet v2: {:.1} s; fewest web replicas running meanwhile (sampled): {fewest}", t0.elapsed().as_secs_f64());
        for k in 0..2 {
            let lines = replacing(&r.lines, k);
            let one = lines.len() == 1 && lines[0].contains("its spec changed (args)");
            c.check(&format!("{} on {} is replaced once, for its args", WEB[k], nodes[hosts[k]].name), one, &format!("{lines:?}"));
            // the new instance's greeting comes after the replacement began
            let at = r.lines[hosts[k]].iter().position(|x| x.contains(&format!("orchd: replacing {} ", WEB[k])));
            let v2 = at.is_some_and(|p| greeted(&r.lines, hosts[k], WEB[k], "v2", p));
            c.check(&format!("{} logs `hello from v2` after it was replaced", WEB[k]), v2, "");
        }
        let step = catenary_workload::replace::ROLL_STEP_MS as f64 / 1000.0;
        let apart = match (seen.get(&0), seen.get(&1)) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        c.check(&format!("replica 1 is replaced at least {:.0} s after replica 0 (a roll step less 1 s)", step - 1.0), apart >= step - 1.0, &format!("{apart:.1} s apart"));
        c.check("afterwards both replicas run again, on the same two nodes", ok && done(&r.lines), &format!("{:?}", lists(&r.lines, &from, &dead)));
        Ok(())
    })
}
