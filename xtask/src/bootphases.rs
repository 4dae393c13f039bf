//! `cargo xtask bench vm`'s boot-phase breakdown (issue 14 item 2): where the Catenary boot
//! spends its time against the direct QEMU reference, phase by phase, with the exits of each
//! phase by group. Figures only: nothing here decides pass or fail.
//!
//! One clock per side, started where the bench's ready time starts (Catenary: microVM
//! creation; direct: QEMU's start). The phases are bounded by guest kernel log lines both
//! sides print ([`PHASES`]), placed on that clock by their printk time plus an offset: the
//! arrival time of a line printed live (`Freeing unused kernel`, after hvc0 is up; the earlier
//! lines arrive together when hvc0 replays the log backlog) minus its printk time. The guest's
//! printk clock runs on the TSC on both sides, at the host's rate. `catenary-init: ready` is
//! its arrival time. Catenary's node logs its side (`vm.timeline=1`: `vm timeline:` lines,
//! `hypervisor/kernel/src/vm/run.rs`), `run-direct.sh` the reference's (`RUN_DIRECT_TIMES`).

/// The phase boundaries: (label, a substring of the guest kernel's log line), in boot order.
pub const PHASES: [(&str, &str); 8] = [
    ("kernel start (printk 0)", "Linux version"),
    ("memory map, page tables", "Zone ranges:"),
    ("early setup, percpu, mm", "Dentry cache hash table"),
    ("mm, RCU, IRQ, clocksource", "x86/fpu: Enabled xstate"),
    ("alternatives, SMP, devtmpfs", "NET: Registered PF_NETLINK"),
    ("initcalls, initramfs unpack, drivers", "printk: console [hvc0] enabled"),
    ("late initcalls, free initmem", "Freeing unused kernel"),
    ("to /init", "Run /init"),
];
/// The line whose arrival time anchors the printk clock (printed live on both sides).
const ANCHOR: &str = "Freeing unused kernel";
const READY: &str = "catenary-init: ready";

/// `(printk µs, the text after the stamp)` of a guest kernel log line `… [    1.234567] text`.
pub fn printk_stamp(line: &str) -> Option<(u64, &str)> {
    for (i, _) in line.match_indices('[') {
        let rest = &line[i + 1..];
        let Some(end) = rest.find(']') else { continue };
        let stamp = rest[..end].trim();
        let Some((s, us)) = stamp.split_once('.') else { continue };
        if us.len() != 6 || s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || !us.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let t = s.parse::<u64>().ok()?.checked_mul(1_000_000)?.checked_add(us.parse::<u64>().ok()?)?;
        return Some((t, rest[end + 1..].trim_start()));
    }
    None
}

/// Exits by group per time bucket: (bucket length in µs, group names, (bucket, counts)).
pub type Buckets = (u64, Vec<String>, Vec<(u64, Vec<u64>)>);

/// One side's boot, on its own clock (µs since its start).
#[derive(Debug, Default, Clone)]
pub struct Side {
    /// printk time of each [`PHASES`] line.
    pub printk: Vec<Option<u64>>,
    /// printk time and arrival of the anchor line.
    pub anchor: Option<(u64, u64)>,
    pub ready: Option<u64>,
    /// Catenary: the first guest entry (node time since creation).
    pub entry: Option<u64>,
    /// Catenary: exits by group per bucket (`bucket_us`, group names, (bucket, counts)).
    pub buckets: Option<Buckets>,
}

impl Side {
    fn from_printk<'a>(lines: impl Iterator<Item = &'a str>) -> Side {
        let mut s = Side { printk: vec![None; PHASES.len()], ..Side::default() };
        for l in lines {
            if let Some((t, text)) = printk_stamp(l) {
                for (i, (_, pat)) in PHASES.iter().enumerate() {
                    if s.printk[i].is_none() && text.contains(pat) {
                        s.printk[i] = Some(t);
                    }
                }
            }
        }
        s
    }

    /// Catenary's side from the node's serial log (`[vm:demo] …` guest lines, `vm timeline:`).
    pub fn catenary(log: &[String]) -> Side {
        let mut s = Side::from_printk(log.iter().filter_map(|l| l.split_once("[vm:demo] ").map(|x| x.1)));
        let mut groups = Vec::new();
        let mut bucket_us = 0;
        let mut rows = Vec::new();
        for l in log {
            let Some(t) = l.split_once("vm timeline: ").map(|x| x.1) else { continue };
            let num_after = |key: &str| t.split(key).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse::<u64>().ok());
            if let Some(r) = t.strip_prefix("bucket_us ") {
                bucket_us = r.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                groups = r.split(" groups ").nth(1).unwrap_or("").split(',').map(String::from).collect();
            } else if let Some(r) = t.strip_prefix("bucket ") {
                let v: Vec<u64> = r.split_whitespace().filter_map(|n| n.parse().ok()).collect();
                if let Some((b, counts)) = v.split_first() {
                    rows.push((*b, counts.to_vec()));
                }
            } else if let Some(r) = t.strip_prefix("mark \"") {
                let (pat, rest) = r.split_once('"').unwrap_or(("", ""));
                let at = num_after(" at ");
                let line = rest.split_once(" us: ").map(|x| x.1).unwrap_or("");
                if pat == READY {
                    s.ready = at;
                } else if pat.starts_with(ANCHOR) {
                    s.anchor = at.zip(printk_stamp(line).map(|x| x.0)).map(|(a, p)| (p, a));
                }
            } else if t.contains("first entry at ") {
                s.entry = num_after("first entry at ");
            }
        }
        if bucket_us > 0 {
            s.buckets = Some((bucket_us, groups, rows));
        }
        s
    }

    /// The reference's side from `run-direct.sh`'s `RUN_DIRECT_TIMES` file (`<µs> <line>`).
    pub fn direct(times: &str) -> Side {
        let lines: Vec<(u64, &str)> = times.lines().filter_map(|l| l.split_once(' ').and_then(|(t, r)| Some((t.parse().ok()?, r)))).collect();
        let mut s = Side::from_printk(lines.iter().map(|x| x.1));
        s.anchor = lines.iter().find(|(_, l)| l.contains(ANCHOR)).and_then(|(t, l)| printk_stamp(l).map(|(p, _)| (p, *t)));
        s.ready = lines.iter().find(|(_, l)| l.contains(READY)).map(|x| x.0);
        s
    }

    /// The phase boundaries on this side's clock (µs): its start, each [`PHASES`] line, ready.
    pub fn boundaries(&self) -> Option<Vec<u64>> {
        let (p, a) = self.anchor?;
        let mut b = vec![0];
        for t in &self.printk {
            b.push((a + (*t)?).checked_sub(p)?);
        }
        b.push(self.ready?);
        Some(b)
    }

    /// Exits per group in `[from, to)` µs (buckets counted by their midpoint).
    fn exits_in(&self, from: u64, to: u64) -> Option<Vec<(String, u64)>> {
        let (w, groups, rows) = self.buckets.as_ref()?;
        let mut sum = vec![0u64; groups.len()];
        for (b, counts) in rows {
            let mid = b * w + w / 2;
            if mid >= from && mid < to {
                for (s, c) in sum.iter_mut().zip(counts) {
                    *s += c;
                }
            }
        }
        Some(groups.iter().cloned().zip(sum).collect())
    }
}

/// The phase durations (µs), start to ready, or None.
pub fn durations(s: &Side) -> Option<Vec<u64>> {
    let b = s.boundaries()?;
    b.windows(2).map(|w| w[1].checked_sub(w[0])).collect()
}

/// Per-phase medians over several runs of both sides (runs without a breakdown left out).
pub fn median_table(cats: &[Side], directs: &[Side]) -> Vec<String> {
    let med = |sides: &[Side]| -> Option<Vec<f64>> {
        let d: Vec<Vec<u64>> = sides.iter().filter_map(durations).collect();
        let n = d.first()?.len();
        Some((0..n).map(|i| crate::bench::median(d.iter().map(|v| v[i] as f64 / 1000.0).collect())).collect())
    };
    let (Some(c), Some(d)) = (med(cats), med(directs)) else { return vec!["(no per-phase medians: no run had a complete breakdown)".into()] };
    let n = cats.iter().filter(|s| durations(s).is_some()).count();
    let m = directs.iter().filter(|s| durations(s).is_some()).count();
    let mut out = vec![format!("per-phase medians ({n} Catenary runs, {m} direct runs): Catenary ms / direct ms / diff")];
    for (i, name) in phase_names().iter().enumerate() {
        out.push(format!("{name:<42} {:>9.1} {:>9.1} {:>+8.1}", c[i], d[i], c[i] - d[i]));
    }
    out
}

fn phase_names() -> Vec<String> {
    std::iter::once(format!("start -> {} (offset)", PHASES[0].0)).chain(PHASES.iter().skip(1).map(|(l, p)| format!("{l} -> `{p}`"))).chain(std::iter::once(format!("-> `{READY}`"))).collect()
}

/// The breakdown as printed lines: one row per phase (Catenary ms, direct ms, difference,
/// Catenary's exits in the phase and its largest groups), then the total.
pub fn table(cat: &Side, direct: &Side) -> Vec<String> {
    let (Some(bc), Some(bd)) = (cat.boundaries(), direct.boundaries()) else {
        return vec![format!("(no breakdown: a phase line, the anchor or ready is missing; Catenary {:?}, direct {:?})", cat.boundaries(), direct.boundaries())];
    };
    let mut out = vec![format!("{:<42} {:>9} {:>9} {:>8} {:>7}  {}", "phase (ends at the line named)", "Catenary", "direct", "diff", "exits", "Catenary's exits in the phase, largest groups")];
    let names = phase_names();
    let ms = |us: i64| us as f64 / 1000.0;
    for (i, name) in names.iter().enumerate() {
        let (c, d) = (bc[i + 1] as i64 - bc[i] as i64, bd[i + 1] as i64 - bd[i] as i64);
        let (n, top) = match cat.exits_in(bc[i], bc[i + 1]) {
            Some(mut g) => {
                let n: u64 = g.iter().map(|x| x.1).sum();
                g.sort_by_key(|x| core::cmp::Reverse(x.1));
                (n.to_string(), g.iter().filter(|x| x.1 > 0).take(4).map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
            }
            None => ("-".into(), String::new()),
        };
        out.push(format!("{name:<42} {:>9.1} {:>9.1} {:>+8.1} {n:>7}  {top}", ms(c), ms(d), ms(c - d)));
    }
    let (tc, td) = (*bc.last().unwrap_or(&0) as i64, *bd.last().unwrap_or(&0) as i64);
    let total_exits = cat.exits_in(0, u64::MAX).map(|g| g.iter().map(|x| x.1).sum::<u64>().to_string()).unwrap_or_default();
    out.push(format!("{:<42} {:>9.1} {:>9.1} {:>+8.1} {total_exits:>7}", "all (start -> ready)", ms(tc), ms(td), ms(tc - td)));
    if let Some(e) = cat.entry {
        out.push(format!("(Catenary's start -> first guest instruction: {:.1} ms of the first row: RAM, image load, vCPU)", ms(e as i64)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printk_stamps_parse_and_phases_add_up() {
        assert_eq!(printk_stamp("[vm:demo] [    1.234567] Run /init as init process"), Some((1_234_567, "Run /init as init process")));
        assert_eq!(printk_stamp("[vm:demo] no stamp [x] [1.2]"), None);
        let mut cat_log: Vec<String> = PHASES.iter().enumerate().map(|(i, (_, p))| format!("[vm:demo] [    {i}.000000] {p} ...")).collect();
        cat_log.push("INFO vmm: vm timeline: demo: guest RAM 1 us, image load 2 us, vCPU 3 us, first entry at 40000 us".into());
        cat_log.push(format!("INFO vmm: vm timeline: mark \"{ANCHOR}\" at 6100000 us: [    6.000000] {ANCHOR} image"));
        cat_log.push(format!("INFO vmm: vm timeline: mark \"{READY}\" at 8000000 us: {READY}"));
        cat_log.push("INFO vmm: vm timeline: bucket_us 10000 groups cpuid k,mmio".into());
        cat_log.push("INFO vmm: vm timeline: bucket 3 5 1".into());
        cat_log.push("INFO vmm: vm timeline: bucket 700 0 9".into());
        let c = Side::catenary(&cat_log);
        assert_eq!(c.boundaries(), Some(vec![0, 100_000, 1_100_000, 2_100_000, 3_100_000, 4_100_000, 5_100_000, 6_100_000, 7_100_000, 8_000_000]));
        let direct: String = PHASES.iter().enumerate().map(|(i, (_, p))| format!("{} [    {i}.000000] {p}\n", 50_000 + i as u64 * 1_000_000)).collect::<String>() + "7500000 catenary-init: ready\n";
        let d = Side::direct(&direct);
        assert_eq!(d.boundaries().unwrap()[1], 50_000);
        let t = table(&c, &d);
        assert_eq!(t.len(), 1 + PHASES.len() + 1 + 1 + 1);
        assert!(t[1].contains("cpuid k 5"), "{}", t[1]);
        assert!(t[8].contains(" 9  mmio 9"), "{}", t[8]);
        assert!(t[10].contains("all (start -> ready)") && t[10].contains("8000.0") && t[10].contains("7500.0") && t[10].contains(" 15"), "{}", t[10]);
        let m = median_table(&[c.clone(), c.clone(), Side::default()], std::slice::from_ref(&d));
        assert!(m[0].contains("2 Catenary runs, 1 direct runs"), "{}", m[0]);
        assert!(m[1].contains("100.0") && m[1].contains("50.0") && m[1].contains("+50.0"), "{}", m[1]);
    }
}
