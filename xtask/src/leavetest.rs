//! `cluster_graceful_leave` (issue 13 item 1, docs/orchestration.md "Graceful leave on
//! nodes"): three QEMU nodes run `web` (2 replicas) and `db` (1); the operator asks node1
//! `catenary node leave NODE` for another node that runs a replica. node1 forwards the request
//! to that node, whose `memberd` announces the leave and whose drain is then committed. The
//! two others must show it `left` (never suspect or dead) within about a second, its
//! replicas must start on them, and it must not be declared dead later.
//!
//! First, a client that half-closes after its request (python3's `shutdown(SHUT_WR)`) asks
//! node1 for the workload listing, which node1 gathers from the other nodes: the answer must
//! still come (a parked request is dropped only when its client resets, not on its FIN).
//!
//! Then the ACPI power button (QEMU `system_powerdown`) of a survivor that runs a replica:
//! its kernel sees the press, its `apid` leaves and commits its drain (the other survivor
//! shows it `left` within 3 s of the press: `apid` asks for the button once a second), waits until no replica runs there, and the node
//! switches itself off (ACPI S5: QEMU ends with status 0) before the kernel's 60 s fallback;
//! neither node is later shown suspect or dead. The survivor's `catenary ps` then asks neither
//! node that left (it answers without waiting out an ask's timeout), and its `catenary nodes`
//! asks both: the one still running is `up`, the switched-off one `unreachable`, both `left`.
//!
//! Timings are host wall-clock: from the leaving node's own `memberd: leaving` console line
//! (the protocol's part) and from the start of the CLI command (what an operator waits,
//! fabric round trips and the forward included) to each survivor's `member NODE left` line;
//! and from the CLI's start to every lost replica `running` on a survivor.

use crate::cluster::node_secs;
use crate::orchtest::{lists, placed, runners};
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::time::{Duration, Instant};

/// The bound on "seen as left at once": a second of protocol time, with room for TCG nodes
/// on a shared 2-core machine (measured figures are printed).
const LEFT_WITHIN: Duration = Duration::from_secs(2);
/// After a power-button press: `apid` asks the kernel for the button on its one-second tick,
/// so one second more than [`LEFT_WITHIN`].
const PRESS_LEFT_WITHIN: Duration = Duration::from_secs(3);

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    crate::threenode::three_nodes(t, kernel, "cluster_graceful_leave", "cluster-graceful-leave", &Setup { tools: &["python3"], ..Setup::PLAIN }, |ThreeNodes { c, r, a, nodes, img, .. }| {
        let from = vec![0usize; 3];
        let none = vec![false; 3];
        for (w, n) in [("web", "2"), ("db", "1")] {
            let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", n, "--name", w, "--mem", "64", "--restart", "always", img, "hello", w]);
            c.check(&format!("`catenary run --replicas {n} --name {w}` is committed"), st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        }
        let ok = r.wait(Duration::from_secs(600), false, |l| placed(&lists(l, &from, &none)));
        c.check("every replica runs once", ok, &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        if !ok {
            return Err("not placed".into());
        }
        // A client that half-closes after its request (FIN, then reads): node1 parks the
        // listing until the other nodes answer, and must still send the gathered answer.
        let (st, got) = a.half_closed_get(&nodes[0], "/v1/workloads");
        let body = got.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let elsewhere: Vec<String> = crate::apitest::json(body)
            .and_then(|v| v["workloads"].as_array().map(|l| l.iter().filter_map(|w| w["node"].as_str().map(String::from)).collect::<Vec<_>>()))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n != nodes[0].name)
            .collect();
        c.check(
            "a client that half-closes after `GET /v1/workloads` gets node1's gathered answer (other nodes' replicas in it)",
            st == 0 && got.starts_with("HTTP/1.1 200") && !elsewhere.is_empty(),
            &format!("exit {st}, other nodes named: {elsewhere:?}; read: {:?}", got.chars().take(300).collect::<String>()),
        );
        // the leaving node: not node1 (the one asked, so the request is forwarded), one that
        // runs a replica (web's two are on two nodes, so node2 or node3 runs one)
        let l = lists(&r.lines, &from, &none);
        let victim = (1..3).find(|i| !l[*i].is_empty()).ok_or("node2 and node3 run nothing")?;
        let vname = nodes[victim].name.clone();
        let lost: Vec<String> = l[victim].keys().cloned().collect();
        let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        let left_line = format!("memberd: member {vname} left");
        println!("  {vname} leaves (it runs {lost:?}); asked of node1");
        let asked = Instant::now();
        let mut leaving: Option<Instant> = None;
        let mut seen: Vec<Option<Instant>> = vec![None; 3];
        let mut moved: Option<Duration> = None;
        let mut twice = Vec::new();
        let cli = std::thread::scope(|s| {
            let h = s.spawn(|| a.cli(&nodes[0], &["node", "leave", &vname]));
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline && moved.is_none() {
                r.wait(Duration::from_millis(50), false, |_| false);
                if leaving.is_none() && r.lines[victim][mark[victim]..].iter().any(|x| x.contains("memberd: leaving the cluster")) {
                    leaving = Some(Instant::now());
                }
                for &i in &survivors {
                    if seen[i].is_none() && r.lines[i][mark[i]..].iter().any(|x| x.contains(&left_line)) {
                        seen[i] = Some(Instant::now());
                    }
                }
                let l = lists(&r.lines, &from, &none);
                for (n, v) in runners(&l) {
                    if v.len() > 1 {
                        twice.push(format!("{n} on {v:?}"));
                    }
                }
                if placed(&l) && l[victim].is_empty() {
                    moved = Some(asked.elapsed());
                }
            }
            h.join().unwrap_or((-1, String::new(), "the CLI thread panicked".into()))
        });
        let (st, out, err) = cli;
        c.check(&format!("`catenary node leave {vname}` through node1 (forwarded to {vname})"), st == 0 && out.contains("left the cluster"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        c.check(&format!("{vname}'s memberd announced its leave"), leaving.is_some(), "");
        let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        let fmt = |d: Option<Duration>| d.map(|d| format!("{} ms", d.as_millis())).unwrap_or("never".into());
        let protocol: Vec<Option<Duration>> = survivors.iter().map(|&i| ms(leaving, seen[i])).collect();
        let operator: Vec<Option<Duration>> = survivors.iter().map(|&i| ms(Some(asked), seen[i])).collect();
        println!(
            "  timings: {vname}'s leave line -> shown left on {} {} and {} {}; CLI start -> left {} and {}; CLI start -> every lost replica running on a survivor {}",
            nodes[survivors[0]].name, fmt(protocol[0]), nodes[survivors[1]].name, fmt(protocol[1]), fmt(operator[0]), fmt(operator[1]), fmt(moved)
        );
        c.check(
            &format!("both others show {vname} `left` within {} s of its leave", LEFT_WITHIN.as_secs()),
            protocol.iter().all(|d| d.is_some_and(|d| d <= LEFT_WITHIN)),
            &format!("{} and {}", fmt(protocol[0]), fmt(protocol[1])),
        );
        c.check(&format!("{vname}'s replicas run on the others, every replica once"), moved.is_some(), &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        c.check("no replica ran on two nodes", twice.is_empty(), &format!("{twice:?}"));
        // The power button (ACPI, QEMU `system_powerdown`) on a survivor that runs a replica:
        // it leaves, drains, waits for its replicas to stop, and switches itself off.
        let l = lists(&r.lines, &from, &none);
        let p = survivors.iter().copied().find(|i| !l[*i].is_empty()).ok_or("no survivor runs a replica")?;
        let other = survivors.iter().copied().find(|i| *i != p).ok_or("one survivor")?;
        let pname = nodes[p].name.clone();
        let p_left = format!("memberd: member {pname} left");
        let mark2: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        println!("  the power button of {pname} (it runs {:?})", l[p].keys().collect::<Vec<_>>());
        let pressed = Instant::now();
        r.power_button(p);
        let (mut press_seen, mut p_seen, mut off) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && off.is_none() {
            r.wait(Duration::from_millis(50), false, |_| false);
            if press_seen.is_none() && r.lines[p][mark2[p]..].iter().any(|x| x.contains("power: power button pressed")) {
                press_seen = Some(Instant::now());
            }
            if p_seen.is_none() && r.lines[other][mark2[other]..].iter().any(|x| x.contains(&p_left)) {
                p_seen = Some(Instant::now());
            }
            if r.stopped(p) {
                off = Some(Instant::now());
            }
        }
        let after = &r.lines[p][mark2[p]..];
        // the node's own steps, on its clock (the console's `[ seconds ]` stamps)
        let stamp = |pat: &str| after.iter().find(|x| x.contains(pat)).and_then(|x| node_secs(x));
        let since_press = |t: Option<f64>| match (stamp("power: power button pressed"), t) {
            (Some(a), Some(b)) => format!("{} ms", ((b - a) * 1000.0).round()),
            _ => "never".into(),
        };
        let step = |pat: &str| since_press(stamp(pat));
        let last = |pat: &str| since_press(after.iter().rev().find(|x| x.contains(pat)).and_then(|x| node_secs(x)));
        println!(
            "  timings (host): press -> {pname}'s kernel saw it {}; {pname}'s press line -> shown left on {} {}; press -> its QEMU ended {}",
            fmt(ms(Some(pressed), press_seen)), nodes[other].name, fmt(ms(press_seen, p_seen)), fmt(ms(Some(pressed), off))
        );
        println!(
            "  timings ({pname}'s clock, from the press): leave announced {}; drain committed {}; last replica destroyed {}; switched off {}",
            step("memberd: leaving the cluster"), step("its drain is committed"), last("orchd: destroyed"), step("powering off (ACPI S5)")
        );
        c.check(&format!("{pname}'s kernel saw the power button"), press_seen.is_some(), "");
        c.check(&format!("{pname}'s apid left the cluster and committed its drain"), after.iter().any(|x| x.contains("apid: power button:") && x.contains("left; its drain is committed")), "");
        c.check(&format!("{} shows {pname} `left` within {} s of the press", nodes[other].name, PRESS_LEFT_WITHIN.as_secs()), ms(press_seen, p_seen).is_some_and(|d| d <= PRESS_LEFT_WITHIN), &fmt(ms(press_seen, p_seen)));
        c.check(
            &format!("{pname} switched itself off (ACPI S5) once no replica ran there, before the kernel's 60 s"),
            after.iter().any(|x| x.contains("apid: power button: no cluster replica runs here any more"))
                && after.iter().any(|x| x.contains("powering off (ACPI S5): apid finished the orderly shutdown"))
                && after.iter().any(|x| x.starts_with(crate::cluster::NODE_STOPPED) && x.contains("QEMU ended (exit status: 0)")),
            &after.iter().filter(|x| x.contains("power") || x.starts_with("[xtask]")).cloned().collect::<Vec<_>>().join(" | "),
        );
        let l = lists(&r.lines, &from, &none);
        let twice: Vec<String> = runners(&l).into_iter().filter(|(_, v)| v.len() > 1).map(|(n, v)| format!("{n} on {v:?}")).collect();
        c.check("no replica ran on two nodes", twice.is_empty(), &format!("{twice:?}"));
        // a while later: both still left, never suspect or dead (one of them is switched off)
        r.wait(Duration::from_secs(20), false, |_| false);
        let bad: Vec<String> = survivors
            .iter()
            .flat_map(|&i| r.lines[i][mark[i]..].iter().filter(|x| x.contains(&format!("memberd: member {vname} ")) && !x.contains(&left_line)).map(move |x| format!("{}: {x}", i + 1)))
            .chain(r.lines[other][mark2[other]..].iter().filter(|x| x.contains(&format!("memberd: member {pname} ")) && !x.contains(&p_left)).map(|x| format!("{}: {x}", other + 1)))
            .collect();
        c.check(&format!("{vname} and the switched-off {pname} are never shown suspect, dead or alive again after their leaves (20 s more)"), bad.is_empty(), &format!("{bad:?}"));
        // Both others left, one switched off: the survivor's `ps` asks neither (a node that
        // left is out of the cluster), so it does not wait out an ask's timeout (4 s at the
        // least, twice: `ps` makes two gathers); its node listing asks both, and says which
        // answered.
        let here: Vec<String> = lists(&r.lines, &from, &none)[other].keys().cloned().collect();
        let t = Instant::now();
        let (st, out, _) = a.cli(&nodes[other], &["ps"]);
        let took = t.elapsed();
        println!("  `catenary ps` through {} with {vname} left and {pname} left and switched off: {:.1} s", nodes[other].name, took.as_secs_f64());
        c.check(
            &format!("`catenary ps` through {} lists its replicas {here:?} without asking the nodes that left (answered in under 4 s, the shortest ask timeout)", nodes[other].name),
            st == 0 && !here.is_empty() && here.iter().all(|n| out.contains(n.as_str())) && took < Duration::from_secs(4),
            &format!("exit {st} after {:.1} s: {}", took.as_secs_f64(), out.lines().filter(|l| l.contains("cl-")).collect::<Vec<_>>().join(" | ")),
        );
        let (st, out, _) = a.cli(&nodes[other], &["--json", "nodes"]);
        let row = |name: &str| {
            crate::apitest::json(&out)
                .and_then(|v| v["nodes"].as_array().and_then(|l| l.iter().find(|n| n["name"] == name).map(|n| format!("{} {}", n["state"].as_str().unwrap_or("?"), n["membership"].as_str().unwrap_or("?")))))
                .unwrap_or_default()
        };
        let (v_row, p_row) = (row(&vname), row(&pname));
        c.check(
            &format!("`catenary nodes` through {} asks the nodes that left: {vname} (still running) `up left`, the switched-off {pname} `unreachable left`", nodes[other].name),
            st == 0 && v_row == "up left" && p_row == "unreachable left",
            &format!("exit {st}: {vname}: {v_row:?}, {pname}: {p_row:?}"),
        );
        Ok(())
    })
}
