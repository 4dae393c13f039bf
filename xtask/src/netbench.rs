//! `cargo xtask bench net`: two QEMU nodes, round trips and UDP throughput over the fabric and
//! over the plain link, with node1's per-stage breakdown.

use crate::benchtable::{ratio, Goal};
use crate::cluster::{start, NodeSpec};
use std::time::Duration;

/// `cargo xtask bench net`: round-trip latency and UDP throughput between two nodes over the
/// fabric and over the plain link, measured by node1.
pub fn bench(args: &[String]) -> Result<(), String> {
    // `net.bench`: a probe, only in the probes kernel
    let kernel = crate::build::build_kernel_probes()?;
    // `net.*` words go to both nodes' command lines (e.g. `net.driver=kernel`)
    let extra: Vec<&str> = args.iter().map(|s| s.as_str()).filter(|s| s.starts_with("net.")).collect();
    let mut a = NodeSpec::new(1);
    a.cmdline = format!("net.bench=node2 {}", extra.join(" "));
    let mut b = NodeSpec::new(2);
    b.cmdline = extra.join(" ");
    println!("bench net: node1 -> node2, two QEMU TCG q35 nodes (-smp 1) on a vde switch, virtio-net; measured in node1 with the TSC");
    let mut r = start(&kernel, &[a, b], "net-bench", &[])?;
    let ok = r.wait(Duration::from_secs(600), false, |l| l[0].iter().any(|x| x.contains("bench net: done") || x.contains("KERNEL PANIC")));
    let log = r.save_logs("net-bench");
    let mut fig = std::collections::HashMap::new();
    let mut stages = StageTable::default();
    for l in r.lines[0].iter().filter(|l| l.contains("bench net:")) {
        let text = l.split("bench net: ").nth(1).unwrap_or(l);
        if stages.take(text) {
            continue;
        }
        println!("  {text}");
        // `fabric rtt median 812 us (…)`, `plain throughput 61.0 Mbit/s (…)`
        let mut w = text.split_whitespace();
        if let (Some(path), Some(kind), Some(a), Some(b)) = (w.next(), w.next(), w.next(), w.next()) {
            let v = if kind == "rtt" { b.parse::<f64>().ok() } else { a.parse::<f64>().ok() };
            if let (true, Some(v)) = (kind == "rtt" || kind == "throughput", v) {
                fig.insert(format!("{path} {kind}"), v);
            }
        }
    }
    if !ok {
        println!("  (did not finish; log {})", log.display());
    }
    stages.print();
    match (fig.get("fabric rtt"), fig.get("plain rtt"), fig.get("fabric throughput"), fig.get("plain throughput")) {
        (Some(fr), Some(pr), Some(ft), Some(pt)) => {
            ratio("fabric round trip, two nodes (median, 56 B)", "us", *fr, "unencrypted", *pr, Goal::AtMost(1.3));
            ratio("fabric throughput, two nodes (1200 B UDP)", "Mbit/s", *ft, "unencrypted", *pt, Goal::AtLeast(0.8));
            Ok(())
        }
        _ => Err(format!("no fabric/plain figures (log {})", log.display())),
    }
}

/// node1's per-stage breakdown (`bench net: stage PHASE NAME US us/UNIT COUNT` lines from
/// `netd`): microseconds per echo or datagram, a column per phase.
#[derive(Default)]
struct StageTable {
    phases: Vec<String>,
    rows: Vec<(String, Cells)>,
}

/// A stage's row: per phase, (us, times) per echo or datagram, if node1 reported it.
type Cells = Vec<Option<(f64, f64)>>;

impl StageTable {
    fn take(&mut self, text: &str) -> bool {
        let w: Vec<&str> = text.split_whitespace().collect();
        let ["stage", phase, name, us, _, count] = w[..] else { return false };
        let (Ok(us), Ok(count)) = (us.parse::<f64>(), count.parse::<f64>()) else { return false };
        let col = match self.phases.iter().position(|p| p == phase) {
            Some(i) => i,
            None => {
                self.phases.push(phase.to_string());
                self.phases.len() - 1
            }
        };
        let row = match self.rows.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.rows.push((name.to_string(), Vec::new()));
                self.rows.len() - 1
            }
        };
        let cells = &mut self.rows[row].1;
        if cells.len() <= col {
            cells.resize(col + 1, None);
        }
        cells[col] = Some((us, count));
        true
    }

    fn print(&self) {
        if self.rows.is_empty() {
            return;
        }
        println!("  per-stage breakdown in node1 (TSC): us per echo (rtt) or per 1200-byte datagram (tput), x = times per echo/datagram");
        print!("  {:<28}", "stage");
        for p in &self.phases {
            print!(" {:>18}", p);
        }
        println!();
        for (name, cells) in &self.rows {
            print!("  {name:<28}");
            for i in 0..self.phases.len() {
                match cells.get(i).copied().flatten() {
                    Some((_, n)) if name == "nicd.loops" => print!(" {:>18}", format!("{n:.2}x")),
                    Some((us, n)) => print!(" {:>18}", format!("{us:.1} ({n:.2}x)")),
                    None => print!(" {:>18}", "-"),
                }
            }
            println!();
        }
    }
}
