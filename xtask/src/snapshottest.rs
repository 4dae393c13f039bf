//! `cluster_snapshot_catchup` (issue 13, docs/orchestration.md "Snapshots over the fabric"):
//! three QEMU nodes; a follower is killed while the operator commits more writes than
//! `orchd`'s compaction interval (256 entries) and its margin (32), so the leader's log no longer reaches back to
//! what the follower had. The follower restarts without storage (a new Raft member with an
//! empty log) and must catch up through the leader's snapshot, sent in chunks over the fabric:
//! its console says it received and installed one holding every workload, the leader's says
//! the follower acknowledged it whole, and no snapshot was refused.
//!
//! The writes are workloads no node can take (`--constraint gpu=yes`): each is one log entry,
//! and nothing starts, so the run stays light on TCG nodes.

use crate::test::Tally;
use catenary_cluster::orch::{NODE_SNAPSHOT_EVERY, NODE_SNAPSHOT_MARGIN};
use crate::threenode::{Setup, ThreeNodes};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// More than the entries after which `orchd` first compacts: `NODE_SNAPSHOT_EVERY` (256)
/// and the margin kept behind the snapshot, `NODE_SNAPSHOT_MARGIN` (32).
const WRITES: usize = 330;
/// Writes below which the leader may not have compacted (the cluster's own entries, the
/// admissions, come on top).
const WRITES_MIN: usize = (NODE_SNAPSHOT_EVERY + NODE_SNAPSHOT_MARGIN) as usize;
/// CLI processes writing at once (the first run used 6: apid refused a quarter of the
/// connections), each write tried up to 5 times.
const WRITERS: usize = 2;

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    crate::threenode::three_nodes(t, kernel, "cluster_snapshot_catchup", "cluster-snapshot-catchup", &Setup::PLAIN, |ThreeNodes { c, r, a, nodes, img, .. }| {
        let leads = |l: &[String]| l.iter().rev().find(|x| x.contains("orchd: leader is") || x.contains("orchd: no leader known")).is_some_and(|x| x.contains("(this node)"));
        let leader = (0..3).find(|i| leads(&r.lines[*i])).ok_or("no node says it leads")?;
        let victim = (leader + 1) % 3;
        r.kill(victim);
        println!("  killed {} (the leader is {})", nodes[victim].name, nodes[leader].name);
        let done = AtomicUsize::new(0);
        let failed = std::sync::Mutex::new(Vec::new());
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (a, done, failed, node) = (&a, &done, &failed, &nodes[leader]);
                s.spawn(move || {
                    for i in (w..WRITES).step_by(WRITERS) {
                        let wname = format!("pad{i}");
                        let mut last = String::new();
                        for _ in 0..5 {
                            let (st, out, err) = a.cli(node, &["run", "--replicas", "1", "--constraint", "gpu=yes", "--name", &wname, "--mem", "64", img, "hello"]);
                            if st == 0 && out.contains("(cluster)") {
                                done.fetch_add(1, Ordering::Relaxed);
                                last.clear();
                                break;
                            }
                            last = format!("{wname}: exit {st}: {} {}", out.trim(), err.trim());
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        if !last.is_empty() {
                            failed.lock().unwrap().push(last);
                        }
                    }
                });
            }
        });
        let done = done.into_inner();
        let failed = failed.into_inner().unwrap();
        c.check(&format!("{WRITES} writes committed while {} is down", nodes[victim].name), done == WRITES, &format!("{done} in {:.0} s; {:?}", t0.elapsed().as_secs_f64(), failed.first()));
        if done < WRITES_MIN {
            // Fewer entries than the compaction interval: the check below would test nothing.
            return Err(format!("only {done} writes: the leader's log may not be compacted"));
        }
        // restart it without storage: a new member with an empty log, behind the snapshot
        let at = r.restart(victim)?;
        let mark: Vec<usize> = r.lines.iter().map(|x| x.len()).collect();
        let restarted = Instant::now();
        let got = r.wait(Duration::from_secs(400), false, |l| l[victim][at..].iter().any(|x| x.contains("orchd: snapshot received in chunks; installed here: 1")));
        let line = r.lines[victim][at..].iter().find(|x| x.contains("orchd: snapshot received in chunks")).cloned().unwrap_or_default();
        c.check("the restarted node received the leader's snapshot in chunks over the fabric and installed it", got, &format!("after {:.0} s: {line}", restarted.elapsed().as_secs_f64()));
        // "… (latest at log index N, W workloads in it)": the snapshot itself, taken by the
        // leader at a compaction point (every 256 applied entries, taken 32 entries later), so
        // it holds the writes up to that point; the rest reach the node as log entries after it.
        let index: u64 = line.split("latest at log index ").nth(1).and_then(|x| x.split(',').next()).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
        let held: usize = line.rsplit(", ").next().and_then(|x| x.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        c.check("the installed snapshot is a compacted log's (index >= 256) and holds workloads", index >= NODE_SNAPSHOT_EVERY && held > 0 && held <= WRITES, &line);
        // Then the entries after the snapshot: the node's state must come to all of them.
        let all = format!("orchd: {WRITES} workloads in the desired state");
        let caught = r.wait(Duration::from_secs(120), false, |l| l[victim][at..].iter().any(|x| x.contains(&all)));
        let last = r.lines[victim][at..].iter().rev().find(|x| x.contains("workloads in the desired state")).cloned().unwrap_or_default();
        c.check(&format!("after the snapshot, the restarted node's state holds all {WRITES} workloads"), caught, &last);
        let acked = r.wait(Duration::from_secs(60), false, |l| (0..3).any(|i| i != victim && l[i][mark[i]..].iter().any(|x| x.contains("orchd: a follower holds this node's snapshot whole"))));
        c.check("the leader saw the follower hold the snapshot whole (its final acknowledgement, or its log matching past it)", acked, "");
        let refused = r.lines.iter().flatten().any(|x| x.contains("orchd: a snapshot received was refused"));
        c.check("no snapshot was refused", !refused, "");
        Ok(())
    })
}
