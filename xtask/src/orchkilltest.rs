//! `cluster_orchd_killed` (docs/orchestration.md, "workd enforces the lease"): `orchd` dies
//! alone on the node that runs a singleton, its node up. Three QEMU nodes, each armed with the
//! kernel's test hook `orchd.kill_test=HOLD_MS` (`hypervisor/kernel/src/orchprobe.rs`); an
//! operator runs `db` (1 replica); once it runs on node V, the test creates the node-level
//! workload `killorchd` through V's API, whose microVM's creation makes V's kernel kill V's
//! `orchd` and hold its restart for HOLD_MS (longer than the 2 s lease, so that a new `orchd`
//! cannot be what stops the replica). Checked:
//!
//! - V's workd stops `cl-db-0` by itself (`workd: cluster lease ran out: stopping 1 cluster
//!   replicas`) while `orchd` is still dead, within the lease of the kill (node clock: the
//!   kill line to the workd line, and to the microVM's end), and the node-level `killorchd`
//!   keeps running;
//! - after the restart `db` runs again, on V or elsewhere, and at no moment on two nodes (V
//!   counts as running it from the kill until its microVM's end is logged; the others by
//!   their `orchd: workd runs [...]` lists, host order of the console lines).

use crate::cluster::node_secs;
use crate::orchtest::{lists, runners};
use crate::test::Tally;
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long V's `orchd` stays dead: past the lease (2 s) with room for a slow TCG node.
const HOLD_MS: u64 = 8_000;
const LEASE_MS: u64 = 2_000;
/// Scheduling slack on a loaded TCG node (workd wakes at the deadline, then logs).
const SLACK_MS: u64 = 500;

/// Every command-line test probe, by the option's name as the probes kernel holds it (the
/// kernel's own and those of the ring-3 programs it embeds: `netd`, `nicd`, `memberd`, `supd`). The node kernel must
/// hold none of them; the probes kernel all of them (so that a renamed option cannot make
/// the check pass vacuously). Options whose name is too common a word to look for in a
/// binary (`bench=ipc|exit|vmmem`, `crash=`) are found by a string only their code holds.
pub const PROBE_OPTIONS: &[&str] = &[
    // orchprobe.rs
    "orchd.kill_test", "workd.kill_test",
    // netdprobe.rs, rpcprobe.rs (ring-3 netd) and the in-kernel netd's net/probes.rs
    "net.ipccall", "net.rpcsvc", "net.panicsvc", "net.rpctest", "net.rpcquota", "net.nicd_restart",
    "net.udpecho", "net.udptest", "net.netdtest", "net.ipcbench",
    // tcpprobe.rs
    "net.tcpecho", "net.tcptest", "net.sockrestart", "net.restartpeer",
    // the netds' own probes (user/src/bin/netd/probes.rs, kernel net/probes.rs)
    "net.ping", "net.bench", "net.wait",
    // fault injection (kernel net/boot.rs and the ring-3 netd; task/supervisor.rs; nicd)
    "net.test-loss", "netd.test_panic", "nicd.crash_after", "nicd.hang_after",
    // the watchdog's and heartbeat's tests (task/supervisor.rs, memberd, supd; nicd's above)
    "memberd.test_hang", "supd.test_hang",
    // wkclient.rs: the wkctl scenarios
    "workload.client",
    // init.rs `crash=` (its warning) and the boot-time benchmarks `bench=` (their log lines)
    "crashing on purpose (crash=", "bench ipc: ", "bench exit: ", "bench vmmem: ",
];

/// The words of `cmdline` that arm a probe ([`PROBE_OPTIONS`]' `key=` options, `crash=…` and
/// `bench=ipc|exit|vmmem`): on the node kernel they are unknown words, ignored, so a test or
/// `cargo xtask run` that passes one must boot the probes kernel (checked where QEMU starts).
pub fn probe_words(cmdline: &str) -> Vec<&str> {
    cmdline
        .split_whitespace()
        .filter(|w| {
            let (key, value) = w.split_once('=').unwrap_or((w, ""));
            PROBE_OPTIONS.contains(&key) || key == "crash" || (key == "bench" && ["ipc", "exit", "vmmem"].contains(&value))
        })
        .collect()
}

/// Refuse to boot `kernel` with `cmdline` if a probe word would be ignored by it.
pub fn check_probe_words(kernel: &Path, cmdline: &str) -> Result<(), String> {
    let words = probe_words(cmdline);
    let is_probes = kernel.file_name().is_some_and(|n| n == crate::build::PROBES_KERNEL_NAME);
    if words.is_empty() || is_probes {
        return Ok(());
    }
    Err(format!("{words:?} arm test probes, which only the probes kernel has (build::build_kernel_probes; `cargo xtask run --probes`), not {}", kernel.display()))
}

/// The probes are in the kernel built with them only (`build::build_kernel_probes`): the node
/// kernel `cargo xtask run` and the ISO ship (`kernel`, `build_kernel(false)`) must not even
/// hold the options' names (review finding (e)). Checks `opts`; returns the probes kernel.
fn probes_kernel_checked(t: &mut Tally, name: &str, kernel: &Path, opts: &[&str]) -> Result<std::path::PathBuf, String> {
    let labelled: Vec<(String, &str)> = opts.iter().map(|opt| (opt.trim().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>().trim_matches('_').to_string(), *opt)).collect();
    let (probes, _) = only_in_the_probes_kernel(t, name, kernel, &labelled)?;
    Ok(probes)
}

/// For each (label, marker): the marker's bytes are absent from the node kernel `kernel` and
/// present in the probes kernel (built here), recorded as `{name}::{label}_not_in_the_node_kernel`.
/// Returns the probes kernel's path and the node kernel's bytes.
fn only_in_the_probes_kernel<L: AsRef<str>>(t: &mut Tally, name: &str, kernel: &Path, markers: &[(L, &str)]) -> Result<(std::path::PathBuf, Result<Vec<u8>, String>), String> {
    let probes = crate::build::build_kernel_probes()?;
    let (node_bytes, probes_bytes) = (std::fs::read(kernel).map_err(|e| e.to_string()), std::fs::read(&probes).map_err(|e| e.to_string()));
    for (label, marker) in markers {
        let (node, with) = (holds(&node_bytes, marker), holds(&probes_bytes, marker));
        let what = if label.as_ref() == *marker { format!("{marker:?}") } else { format!("{} ({marker:?})", label.as_ref()) };
        t.record(&format!("{name}::{}_not_in_the_node_kernel", label.as_ref()), matches!((&node, &with), (Ok(false), Ok(true))),
            &format!("{what} in {}: {node:?}; in {}: {with:?}", kernel.display(), probes.display()));
    }
    Ok((probes, node_bytes))
}

/// Whether a kernel image's bytes (or the error reading them) hold `what`.
fn holds(bytes: &Result<Vec<u8>, String>, what: &str) -> Result<bool, String> {
    bytes.as_ref().map(|b| b.windows(what.len()).any(|w| w == what.as_bytes())).map_err(|e| e.clone())
}

/// The probes kernel for test `name`, checked to hold the options `opts` the node kernel
/// does not.
pub fn probes_kernel_for(t: &mut Tally, name: &str, kernel: &Path, opts: &[&str]) -> Result<std::path::PathBuf, String> {
    probes_kernel_checked(t, name, kernel, opts)
}

/// The kill tests: their own two options checked, then they boot the probes kernel.
fn probes_kernel(t: &mut Tally, name: &str, kernel: &Path) -> Result<std::path::PathBuf, String> {
    probes_kernel_checked(t, name, kernel, &["orchd.kill_test", "workd.kill_test"])
}

/// `node_kernel_without_probes`: every option of [`PROBE_OPTIONS`] is absent from the node
/// kernel and present in the probes kernel (no QEMU). Broken once (7be617b): with
/// `build_kernel(false)` building the kernel and its ring-3 programs with the feature
/// `probes`, 0 passed, 27 failed (each option `Ok(true)` in both kernels).
pub fn test_probes_absent(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    probes_kernel_checked(t, "node_kernel_without_probes", kernel, PROBE_OPTIONS).map(|_| ())
}

/// A string only each test program's code holds (`catenary_manifest::TEST_PROGRAMS`: the kernel's
/// build script embeds them in the ktest and probes kernels only), and one of `echod`, the
/// echo service the node kernel keeps.
pub const TEST_PROGRAM_STRINGS: &[(&str, &str)] = &[
    ("uapp", "hostile requests refused as expected"),
    ("sysfuzz", "sysfuzz: VIOLATION "),
    ("wkctl", "wkctl: RESULT "),
];

/// `node_kernel_without_test_programs`: none of the test programs is in the node kernel, all
/// are in the probes kernel, and the node kernel has the echo service's program (no QEMU).
pub fn test_programs_absent(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "node_kernel_without_test_programs";
    let programs: Vec<&str> = TEST_PROGRAM_STRINGS.iter().map(|(p, _)| *p).collect();
    t.record(&format!("{name}::the_list_is_the_manifests"), programs == catenary_manifest::TEST_PROGRAMS,
        &format!("checked {programs:?}, catenary_manifest::TEST_PROGRAMS is {:?}", catenary_manifest::TEST_PROGRAMS));
    let (_, node_bytes) = only_in_the_probes_kernel(t, name, kernel, TEST_PROGRAM_STRINGS)?;
    let echod = holds(&node_bytes, "echo: ");
    t.record(&format!("{name}::echod_in_the_node_kernel"), matches!(echod, Ok(true)), &format!("\"echo: \" in {}: {echod:?}", kernel.display()));
    Ok(())
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    const CMDLINE: &str = "orchd.kill_test=8000";
    debug_assert!(CMDLINE.ends_with(&HOLD_MS.to_string()));
    let setup = Setup { cmdline: CMDLINE, ..Setup::PLAIN };
    let kernel = &probes_kernel(t, "cluster_orchd_killed", kernel)?;
    crate::threenode::three_nodes(t, kernel, "cluster_orchd_killed", "cluster-orchd-killed", &setup, |ThreeNodes { c, r, a, nodes, img, .. }| {
        let mut from = vec![0usize; 3];
        let none = vec![false; 3];
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "1", "--name", "db", "--mem", "64", "--restart", "always", img, "hello", "db"]);
        c.check("`catenary run --replicas 1 --name db` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let once = |l: &[Vec<String>], from: &[usize]| {
            let ls = lists(l, from, &none);
            runners(&ls).get("cl-db-0").filter(|v| v.len() == 1).filter(|v| ls[v[0]]["cl-db-0"] == "running").map(|v| v[0])
        };
        let ok = r.wait(Duration::from_secs(600), false, |l| once(l, &from).is_some());
        let Some(v) = once(&r.lines, &from) else {
            c.check("db's replica runs on exactly one node", ok, &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
            return Err("db not placed".into());
        };
        c.check("db's replica runs on exactly one node", true, &nodes[v].name);
        // a little while under the lease, then orchd dies alone on V
        r.wait(Duration::from_secs(5), false, |_| false);
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        let (st, out, err) = a.cli(&nodes[v], &["run", "--name", "killorchd", "--mem", "64", img, "hello", "killorchd"]);
        c.check(&format!("the node-level workload killorchd is created on {}", nodes[v].name), st == 0, &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let line = |l: &[Vec<String>], p: &str| l[v][mark[v]..].iter().find(|x| x.contains(p)).cloned();
        let killed = r.wait(Duration::from_secs(120), false, |l| line(l, "orchd kill test: killed orchd").is_some());
        c.check(&format!("{}'s kernel killed its orchd (restart held {HOLD_MS} ms)", nodes[v].name), killed, &line(&r.lines, "orchd kill test").unwrap_or_default());
        if !killed {
            return Err("orchd not killed".into());
        }
        // From the kill: V runs db until its microVM's end is logged; nobody else may before.
        let mut twice = Vec::new();
        let mut v_runs = true;
        let mut elsewhere_at: Option<Instant> = None;
        let t_kill = Instant::now();
        let deadline = t_kill + Duration::from_secs(400);
        let ended = |l: &[Vec<String>]| line(l, "orchd kill test: microVM cl-db-0 ended");
        let restarted = |l: &[Vec<String>]| line(l, "orchd kill test: orchd restarted as task");
        let mut back: Option<usize> = None;
        while Instant::now() < deadline {
            r.wait(Duration::from_millis(200), false, |_| false);
            if v_runs && ended(&r.lines).is_some() {
                v_runs = false;
            }
            if restarted(&r.lines).is_some() && from[v] < mark[v] {
                // V's new orchd: its lists count from its restart on
                from[v] = r.lines[v].len();
            }
            let ls = lists(&r.lines, &from, &none);
            let mut on: Vec<usize> = runners(&ls).get("cl-db-0").cloned().unwrap_or_default();
            if from[v] < mark[v] {
                // V's orchd is dead: its last list is stale; workd's own lines say
                on.retain(|n| *n != v);
                if v_runs {
                    on.push(v);
                }
            }
            on.sort();
            on.dedup();
            if on.len() > 1 {
                twice.push(format!("{on:?} at +{:.1} s", t_kill.elapsed().as_secs_f64()));
            }
            if elsewhere_at.is_none() && on.iter().any(|n| *n != v) {
                elsewhere_at = Some(Instant::now());
            }
            if back.is_none() && restarted(&r.lines).is_some() && from[v] >= mark[v] {
                if let Some(n) = once(&r.lines, &from) {
                    back = Some(n);
                    break;
                }
            }
        }
        // the stop, by workd, while orchd was dead, within the lease
        let kill_line = line(&r.lines, "orchd kill test: killed orchd").unwrap_or_default();
        let stop_line = line(&r.lines, "workd: cluster lease ran out: stopping 1 cluster replicas (cl-db-0)");
        let end_line = ended(&r.lines);
        let release_line = line(&r.lines, "orchd kill test: orchd may be restarted now");
        let pos = |l: &Option<String>| l.as_ref().and_then(|x| r.lines[v].iter().rposition(|y| y == x));
        let secs = |l: &Option<String>| l.as_deref().and_then(node_secs);
        let to_stop = secs(&stop_line).zip(node_secs(&kill_line)).map(|(s, k)| ((s - k) * 1000.0) as i64);
        let to_end: Option<u64> = end_line.as_deref().and_then(|l| l.split(" ended ").nth(1)?.split(' ').next()?.parse().ok());
        println!("  measured on {} (node clock): kill -> `workd: cluster lease ran out` {} ms; kill -> cl-db-0's microVM ended {} ms (the lease is {LEASE_MS} ms)",
            nodes[v].name, to_stop.map_or("-".into(), |x| x.to_string()), to_end.map_or("-".into(), |x| x.to_string()));
        c.check("workd stopped cl-db-0 itself (`cluster lease ran out`), not a new orchd", stop_line.is_some(), stop_line.as_deref().unwrap_or("no such line"));
        c.check("while orchd was still dead (before its restart was released)", pos(&stop_line).zip(pos(&release_line)).is_some_and(|(s, rel)| s < rel), "");
        c.check(&format!("within the lease of the kill (<= {LEASE_MS} + {SLACK_MS} ms scheduling slack)"), to_stop.is_some_and(|x| (0..=(LEASE_MS + SLACK_MS) as i64).contains(&x)), &format!("{to_stop:?} ms"));
        c.check("its microVM ended (powered off by workd)", to_end.is_some(), end_line.as_deref().unwrap_or(""));
        let destroyed = r.lines[v][mark[v]..].iter().any(|x| x.contains("workd: destroyed cl-db-0 (a cluster replica without a lease)"));
        c.check("and workd destroyed it", destroyed, "");
        let node_level_ok = !r.lines[v][mark[v]..].iter().any(|x| x.contains("workd: killorchd ended"));
        let (st, out, _) = a.cli(&nodes[v], &["--json", "ps"]);
        let j: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        let kill_wl = j["workloads"].as_array().and_then(|l| l.iter().find(|w| w["name"] == "killorchd").cloned()).unwrap_or_default();
        c.check("the node-level workload killorchd was not touched (still running)", node_level_ok && st == 0 && kill_wl["state"] == "running", &format!("exit {st}: {kill_wl}"));
        c.check(&format!("{}'s orchd was restarted after the hold", nodes[v].name), restarted(&r.lines).is_some(), restarted(&r.lines).as_deref().unwrap_or(""));
        c.check("db runs again after the restart", back.is_some(), &format!("on {:?}; moved elsewhere while V's orchd was dead: {}", back.map(|n| &nodes[n].name), elsewhere_at.is_some()));
        // a while of quiet: still once
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(30) {
            r.wait(Duration::from_millis(200), false, |_| false);
            let ls = lists(&r.lines, &from, &none);
            if let Some(on) = runners(&ls).get("cl-db-0").filter(|on| on.len() > 1) {
                twice.push(format!("{on:?} in the quiet"));
            }
        }
        c.check("db never ran on two nodes (from the kill, through the restart, 30 s after)", twice.is_empty(), &format!("{twice:?}"));
        c.check("and runs once at the end", once(&r.lines, &from).is_some(), &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
        Ok(())
    })
}

/// `cluster_workd_killed` (docs/workloads.md, "The cluster lease"): `workd` itself dies on the
/// node that runs the singleton, its restart held 8 s (`workd.kill_test`): nothing in ring 3
/// stops the replica now (orchd cannot reach workd), so the kernel's power-off deadline
/// (`OP_DEADLINE`, the lease deadline workd last gave the VM) must: its microVM ends within
/// the lease of the kill, with the kernel's `power-off deadline passed` line, while workd is
/// still dead; the node-level `killworkd` keeps running; afterwards db runs again, once.
pub fn test_workd(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    const CMDLINE: &str = "workd.kill_test=8000";
    let setup = Setup { cmdline: CMDLINE, ..Setup::PLAIN };
    let kernel = &probes_kernel(t, "cluster_workd_killed", kernel)?;
    crate::threenode::three_nodes(t, kernel, "cluster_workd_killed", "cluster-workd-killed", &setup, |ThreeNodes { c, r, a, nodes, img, .. }| {
        let from = vec![0usize; 3];
        let none = vec![false; 3];
        let (st, out, err) = a.cli(&nodes[0], &["run", "--replicas", "1", "--name", "db", "--mem", "64", "--restart", "always", img, "hello", "db"]);
        c.check("`catenary run --replicas 1 --name db` is committed", st == 0 && out.contains("(cluster)"), &format!("exit {st}: {} {}", out.trim(), err.trim()));
        let once = |l: &[Vec<String>], from: &[usize]| {
            let ls = lists(l, from, &none);
            runners(&ls).get("cl-db-0").filter(|v| v.len() == 1).filter(|v| ls[v[0]]["cl-db-0"] == "running").map(|v| v[0])
        };
        let ok = r.wait(Duration::from_secs(600), false, |l| once(l, &from).is_some());
        let Some(v) = once(&r.lines, &from) else {
            c.check("db's replica runs on exactly one node", ok, &format!("{:?}", runners(&lists(&r.lines, &from, &none))));
            return Err("db not placed".into());
        };
        c.check("db's replica runs on exactly one node", true, &nodes[v].name);
        r.wait(Duration::from_secs(5), false, |_| false);
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        let (st, out, err) = a.cli(&nodes[v], &["run", "--name", "killworkd", "--mem", "64", img, "hello", "killworkd"]);
        // (workd may die before it answers: the call's result does not matter)
        let line = |l: &[Vec<String>], p: &str| l[v][mark[v]..].iter().find(|x| x.contains(p)).cloned();
        let killed = r.wait(Duration::from_secs(120), false, |l| line(l, "workd kill test: killed workd").is_some());
        c.check(&format!("{}'s kernel killed its workd (restart held {HOLD_MS} ms)", nodes[v].name), killed, &format!("{} (run: exit {st}: {} {})", line(&r.lines, "workd kill test").unwrap_or_default(), out.trim(), err.trim()));
        if !killed {
            return Err("workd not killed".into());
        }
        let ended = |l: &[Vec<String>]| line(l, "workd kill test: microVM cl-db-0 ended");
        let restarted = |l: &[Vec<String>]| line(l, "workd kill test: workd restarted as task");
        r.wait(Duration::from_secs(60), false, |l| ended(l).is_some());
        let kill_line = line(&r.lines, "workd kill test: killed workd").unwrap_or_default();
        let fence_line = line(&r.lines, "microVM cl-db-0: its power-off deadline passed");
        let end_line = ended(&r.lines);
        let release_line = line(&r.lines, "workd kill test: workd may be restarted now");
        let pos = |l: &Option<String>| l.as_ref().and_then(|x| r.lines[v].iter().rposition(|y| y == x));
        let to_fence = fence_line.as_deref().and_then(node_secs).zip(node_secs(&kill_line)).map(|(s, k)| ((s - k) * 1000.0) as i64);
        let to_end: Option<u64> = end_line.as_deref().and_then(|l| l.split(" ended ").nth(1)?.split(' ').next()?.parse().ok());
        println!("  measured on {} (node clock): kill -> the kernel's `power-off deadline passed` {} ms; kill -> cl-db-0's microVM ended {} ms (the lease is {LEASE_MS} ms)",
            nodes[v].name, to_fence.map_or("-".into(), |x| x.to_string()), to_end.map_or("-".into(), |x| x.to_string()));
        c.check("the kernel powered cl-db-0 off at its deadline (`power-off deadline passed`)", fence_line.is_some(), fence_line.as_deref().unwrap_or("no such line"));
        c.check("while workd was still dead (before its restart was released)", pos(&fence_line).zip(pos(&release_line)).is_some_and(|(s, rel)| s < rel) || (fence_line.is_some() && release_line.is_none()), "");
        c.check(&format!("its microVM ended within the lease of the kill (<= {LEASE_MS} + {SLACK_MS} ms)"), to_end.is_some_and(|x| x <= LEASE_MS + SLACK_MS), end_line.as_deref().unwrap_or("no end line"));
        let restart = r.wait(Duration::from_secs(60), false, |l| restarted(l).is_some());
        c.check(&format!("{}'s workd was restarted after the hold", nodes[v].name), restart, restarted(&r.lines).as_deref().unwrap_or(""));
        // the node-level workload killworkd outlived workd (adopted: not a cluster replica)
        let adopted = r.wait(Duration::from_secs(60), false, |l| l[v][mark[v]..].iter().any(|x| x.contains("workd: adopted")));
        c.check("the restarted workd adopted the node-level killworkd", adopted, "");
        // db runs again (orchd gives the new workd its lease), and never on two nodes
        let mut from2 = from.clone();
        from2[v] = r.lines[v].len();
        let back = r.wait(Duration::from_secs(300), false, |l| once(l, &from2).is_some());
        c.check("db runs again after the restart", back, &format!("{:?}", runners(&lists(&r.lines, &from2, &none))));
        let mut twice = Vec::new();
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(20) {
            r.wait(Duration::from_millis(200), false, |_| false);
            if let Some(on) = runners(&lists(&r.lines, &from2, &none)).get("cl-db-0").filter(|on| on.len() > 1) {
                twice.push(format!("{on:?}"));
            }
        }
        c.check("db never ran on two nodes after the restart (20 s)", twice.is_empty(), &format!("{twice:?}"));
        Ok(())
    })
}

#[cfg(test)]
mod probe_word_tests {
    use super::*;

    #[test]
    fn probe_words_are_found_and_settings_are_not() {
        let line = "vm=none net.time=0 net.cipher=vector net.ping=node2 bench=net bench=ipc crash=ud net.netd=kernel workload.client=1 orchd.kill_test=8000";
        assert_eq!(probe_words(line), ["net.ping=node2", "bench=ipc", "crash=ud", "workload.client=1", "orchd.kill_test=8000"]);
        let node = Path::new("/x/build/catenary.elf");
        let probes = Path::new("/x/build").join(crate::build::PROBES_KERNEL_NAME);
        assert!(check_probe_words(node, "vm=none net.cipher=vector").is_ok());
        assert!(check_probe_words(node, line).unwrap_err().contains("net.ping=node2"));
        assert!(check_probe_words(&probes, line).is_ok());
    }
}
