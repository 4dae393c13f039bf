//! `cluster_memberd_hung` (docs/microkernel.md "Hung tasks: the spin watchdog"): a ring-3
//! service hung in a loop on one node of three. node2 boots the probes kernel with
//! `memberd.test_hang=1`: its first `memberd` (only the first: a restart gets no such
//! argument) hangs in a loop without system calls once both other members have been alive
//! for 5 s. Checked on node2: the kernel's watchdog kills it (`!!! WATCHDOG: … "memberd" ran
//! 10000 ms …`, a register dump), `supd` reports it hung and starts it again, and the new
//! `memberd` joins as a newer generation; the two others show node2's new generation alive;
//! and a `catenary --json nodes` asked of node2 right after the hang began is answered
//! (`apid` asks `memberd` for its table with a call that has no timeout: before the watchdog
//! the call, and node2's whole API, waited for ever) after the kill, not before. Only the
//! first memberd hangs (one `memberd.test_hang` banner on node2) and exactly one `WATCHDOG`
//! line is allowed on node2 (`threenode`'s `hang_expected`). Timings printed: the hang to the
//! kill (node clock), the hang seen to the new generation alive on the others and to the
//! CLI's answer (host).
//!
//! Then the heartbeat (docs/microkernel.md "Hung tasks that still make system calls"): the
//! second `memberd` (the kernel gives the second start argument 2) hangs in a loop that
//! sleeps, which the spin watchdog leaves alone; see [`heartbeat`].

use crate::cluster::node_secs;
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::time::{Duration, Instant};

/// The generation in node `name`'s own `memberd: membership on … as NAME generation G` line.
fn own_generation(l: &str, name: &str) -> Option<u64> {
    let rest = l.split_once(&format!(" as {name} generation "))?.1;
    rest.split_whitespace().next()?.parse().ok()
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    const V: usize = 1; // node2
    let setup = Setup { node_cmdline: Some((V, "memberd.test_hang=1")), hang_expected: Some((V, "memberd")), ..Setup::PLAIN };
    let kernel = &crate::orchkilltest::probes_kernel_for(t, "cluster_memberd_hung", kernel, &["memberd.test_hang"])?;
    crate::threenode::three_nodes(t, kernel, "cluster_memberd_hung", "cluster-memberd-hung", &setup, |ThreeNodes { c, r, a, nodes, .. }| {
        let name = nodes[V].name.clone();
        let hang_line = "memberd: TEST ONLY: hanging now";
        let hung = r.wait(Duration::from_secs(400), false, |l| l[V].iter().any(|x| x.contains(hang_line)));
        c.check(&format!("{name}'s first memberd hangs once the cluster is up (the probe)"), hung, "");
        if !hung {
            return Err("memberd never hung".into());
        }
        let first_gen = r.lines[V].iter().find_map(|l| own_generation(l, &name));
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        // node2's API while its memberd hangs: a listing that needs memberd's table
        let asked = Instant::now();
        let mut killed = false;
        let mut killed_seen: Option<Instant> = None;
        let mut new_gen: Option<u64> = None;
        let mut seen_alive: Vec<Option<Instant>> = vec![None; 3];
        let (st, out, err, took) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let t0 = Instant::now();
                // (the node's clock may run slow against the host's on a loaded machine: more
                // than the CLI's default 15 s)
                let (st, out, err) = a.cli(&nodes[V], &["--timeout", "90", "--json", "nodes"]);
                (st, out, err, t0.elapsed())
            });
            let deadline = Instant::now() + Duration::from_secs(240);
            while Instant::now() < deadline && !(killed && new_gen.is_some() && (0..3).all(|i| i == V || seen_alive[i].is_some())) {
                r.wait(Duration::from_millis(100), false, |_| false);
                let after = &r.lines[V][mark[V]..];
                if !killed {
                    killed = after.iter().any(|x| x.contains("WATCHDOG: ring-3 task") && x.contains("\"memberd\" ran"));
                    if killed {
                        killed_seen = Some(Instant::now());
                    }
                }
                new_gen = after.iter().find_map(|l| own_generation(l, &name)).filter(|g| Some(*g) > first_gen);
                if let Some(g) = new_gen {
                    let alive = format!("memberd: member {name} alive");
                    let gen = format!("(generation {g})");
                    for i in (0..3).filter(|i| *i != V) {
                        if seen_alive[i].is_none() && r.lines[i][mark[i]..].iter().any(|x| x.contains(&alive) && x.contains(&gen)) {
                            seen_alive[i] = Some(Instant::now());
                        }
                    }
                }
            }
            h.join().unwrap_or((-1, String::new(), "the CLI thread panicked".into(), Duration::ZERO))
        });
        let after = &r.lines[V][mark[V]..];
        let hang_at = r.lines[V].iter().find(|x| x.contains(hang_line)).and_then(|x| node_secs(x));
        let kill_at = after.iter().position(|x| x.contains("WATCHDOG: ring-3 task")).and_then(|p| after[p..].iter().find_map(|x| node_secs(x)));
        let ms = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| format!("{} ms", ((b - a) * 1000.0).round())).unwrap_or("never".into());
        let host = |t: Option<Instant>| t.map(|t| format!("{:.1} s", t.saturating_duration_since(asked).as_secs_f64())).unwrap_or("never".into());
        println!(
            "  timings: {name}'s hang -> the watchdog's kill {} (node clock, the next line after the dump); the hang -> new generation {:?} alive on {} {} and {} {} (host); `catenary nodes` through {name} answered after {:.1} s",
            ms(hang_at, kill_at),
            new_gen,
            nodes[0].name,
            host(seen_alive[0]),
            nodes[2].name,
            host(seen_alive[2]),
            took.as_secs_f64()
        );
        let dump = after.iter().position(|x| x.contains("WATCHDOG: ring-3 task") && x.contains("\"memberd\" ran")).is_some_and(|p| after[p..].iter().take(8).any(|x| x.trim_start().starts_with("RIP ")));
        c.check(&format!("{name}'s kernel killed the hung memberd (WATCHDOG line and its register dump)"), killed && dump, "");
        c.check(
            &format!("{name}'s supd reported it hung and restarted it"),
            after.iter().any(|x| x.contains("supd: memberd (task") && x.contains("died: hung") && x.contains("restart 1 in")) && after.iter().any(|x| x.contains("supd: memberd running as task") && x.contains("(restarts: 1)")),
            &after.iter().filter(|x| x.contains("supd:")).cloned().collect::<Vec<_>>().join(" | "),
        );
        c.check(&format!("{name}'s new memberd joined as a newer generation"), new_gen.is_some(), &format!("first {first_gen:?}, then {new_gen:?}"));
        c.check(&format!("both others show {name}'s new generation alive"), (0..3).all(|i| i == V || seen_alive[i].is_some()), &format!("{seen_alive:?}"));
        // the answer once memberd was killed (its table empty, or the new one's)
        let listed = crate::apitest::json(&out).and_then(|v| v["nodes"].as_array().map(|l| l.len())).unwrap_or(0);
        c.check(&format!("`catenary --json nodes` through {name}, asked while its memberd hung, is answered (three nodes listed)"), st == 0 && listed == 3, &format!("exit {st} after {:.1} s: {} {}", took.as_secs_f64(), out.chars().take(200).collect::<String>(), err.trim()));
        // the answer was held until the kill (apid blocked in its call to memberd), not
        // given before it: after the WATCHDOG line was seen, less the loop's 100 ms poll
        let answered = asked + took;
        c.check(
            &format!("{name}'s API answered only once the hung memberd was killed"),
            killed_seen.is_some_and(|k| answered + Duration::from_millis(200) >= k),
            &format!("answered {:.1} s after the hang was seen, the kill seen at {}", took.as_secs_f64(), host(killed_seen)),
        );
        // after: node1's listing shows node2 alive again
        let (st, out, _) = a.cli(&nodes[0], &["--json", "nodes"]);
        let row = crate::apitest::json(&out).and_then(|v| v["nodes"].as_array().and_then(|l| l.iter().find(|n| n["name"] == name.as_str()).map(|n| format!("{} {}", n["state"].as_str().unwrap_or("?"), n["membership"].as_str().unwrap_or("?")))));
        c.check(&format!("`catenary nodes` through {} shows {name} `up alive`", nodes[0].name), st == 0 && row.as_deref() == Some("up alive"), &format!("{row:?}"));
        heartbeat(c, r, &nodes[0].name, &nodes[2].name, &name, new_gen)
    })
}

/// The second `memberd` (restart 1) hangs in a loop that sleeps: system calls, so the spin
/// watchdog leaves it alone, but no heartbeat. Checked: node2's kernel kills it for the missed
/// heartbeat (`!!! HEARTBEAT: … "memberd" missed its heartbeat (period 3000 ms; last beat 3100 ms ago by the timer)`, a register
/// dump), `supd` reports it hung and starts it again (restart 2), the third `memberd` is a
/// newer generation alive on both others, and it was not armed (two probe banners in all).
fn heartbeat(c: &mut crate::apitest::Checks, r: &mut crate::cluster::Running, other0: &str, other2: &str, name: &str, second_gen: Option<u64>) -> Result<(), String> {
    const V: usize = 1;
    // from the second memberd's start (it may have hung while the first part's checks ran)
    let restarted = r.lines[V].iter().position(|x| x.contains("supd: memberd running as task") && x.contains("(restarts: 1)"));
    let mark = restarted.unwrap_or(r.lines[V].len());
    let hang_line = "memberd: TEST ONLY: hanging now (a loop that sleeps)";
    let hung = r.wait(Duration::from_secs(240), false, |l| l[V][mark..].iter().any(|x| x.contains(hang_line)));
    c.check(&format!("{name}'s second memberd hangs in a loop that sleeps (the probe)"), hung, "");
    if !hung {
        return Err("the second memberd never hung".into());
    }
    let seen = Instant::now();
    let alive_on = |r: &crate::cluster::Running, i: usize, g: u64| {
        let (alive, gen) = (format!("memberd: member {name} alive"), format!("(generation {g})"));
        r.lines[i].iter().any(|x| x.contains(&alive) && x.contains(&gen))
    };
    let third_gen = |r: &crate::cluster::Running| r.lines[V][mark..].iter().filter_map(|l| own_generation(l, name)).find(|g| Some(*g) > second_gen);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut back: Option<Instant> = None;
    while Instant::now() < deadline {
        r.wait(Duration::from_millis(100), false, |_| false);
        if let Some(g) = third_gen(r) {
            if alive_on(r, 0, g) && alive_on(r, 2, g) {
                back = Some(Instant::now());
                break;
            }
        }
    }
    let after = &r.lines[V][mark..];
    let hang = after.iter().position(|x| x.contains(hang_line));
    let hb = crate::cluster::heartbeat_kill(after, hang, "memberd", 3_000);
    let crate::cluster::HeartbeatKill { at: kill, dump, .. } = hb;
    println!(
        "  timings: {name}'s sleeping hang: {} (the clock's figure from the next line after the dump; period 3000 ms, looked at every 100 ms); this part's start -> third generation alive on {other0} and {other2} {} (host)",
        hb.figures(),
        back.map(|b| format!("{:.1} s", (b - seen).as_secs_f64())).unwrap_or("never".into())
    );
    c.check(&format!("{name}'s kernel killed the sleeping memberd for its missed heartbeat (HEARTBEAT line and its register dump)"), kill.is_some() && dump, "");
    // not before the period ran out (its last beat came at most one 50 ms turn before the hang)
    c.check(&format!("{name}'s heartbeat kill came after the period and within 2 s of it by the timer"), hb.on_time(3_000, 2_000), &hb.figures());
    c.check(
        &format!("{name}'s supd reported it hung (missed heartbeat) and restarted it"),
        after.iter().any(|x| x.contains("supd: memberd (task") && x.contains("died: hung (missed its heartbeat") && x.contains("restart 2 in")) && after.iter().any(|x| x.contains("supd: memberd running as task") && x.contains("(restarts: 2)")),
        &after.iter().filter(|x| x.contains("supd:")).cloned().collect::<Vec<_>>().join(" | "),
    );
    c.check(&format!("{name}'s third memberd joined as a newer generation, alive on both others"), back.is_some(), &format!("second {second_gen:?}, third {:?}", third_gen(r)));
    let banners = r.lines[V].iter().filter(|x| x.contains("TEST ONLY: memberd.test_hang=1")).count();
    c.check(&format!("only {name}'s first two memberds were armed (two probe banners; the third was not)"), banners == 2, &format!("{banners} banners"));
    Ok(())
}
