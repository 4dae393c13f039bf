//! `syscall_fuzz`: one boot of the test kernel that runs only the in-kernel `syscall_fuzz`
//! test (the ring-3 fuzzer `sysfuzz` against the node for a fixed time), then checks the
//! serial log: the test passed, no VIOLATION line, the node did not stop, and the free-frame
//! count after the last fuzzer exited equals the count before the first started.
//!
//! Options of `cargo xtask test`: `--sysfuzz-seconds N` (default 60), `--sysfuzz-seed HEX`
//! (default: chosen here from the clock and printed, so a failure can be replayed),
//! `--sysfuzz-classes HEX` (extra operation classes, see docs/microkernel.md).

use crate::qemu::{run_captured, Boot};
use crate::test::Tally;
use crate::tools::out_dir;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_SECONDS: u64 = 60;

pub fn opt(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
    }
    None
}

/// The number after `key` in `line` (e.g. `free frames before: 1234`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let secs: u64 = match opt("--sysfuzz-seconds") {
        Some(s) => s.parse().map_err(|_| format!("--sysfuzz-seconds {s}: not a number"))?,
        None => DEFAULT_SECONDS,
    };
    let seed = match opt("--sysfuzz-seed") {
        Some(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| format!("--sysfuzz-seed {s}: not hex"))?,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1),
    };
    let mut cmdline = format!("ktest.only=syscall_fuzz sysfuzz.seconds={secs} sysfuzz.seed={seed:x}");
    if let Some(c) = opt("--sysfuzz-classes") {
        cmdline.push_str(&format!(" sysfuzz.classes={}", c.trim_start_matches("0x")));
    }
    println!("== syscall fuzzer: {secs} s, seed {seed:x} (replay: cargo xtask test --only syscall_fuzz --sysfuzz-seed {seed:x})");
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.smp = 2;
    b.mem = "256M".into();
    b.cmdline = cmdline;
    // Boot (~10 s under TCG) + the fuzzing time + the last run's grace and teardown.
    let limit = Duration::from_secs(secs + 120);
    let o = run_captured(b.command(false)?, &[" passed, "], &["KERNEL PANIC", "- stopping this CPU"], limit, false)?;
    let log = out_dir().join("syscall_fuzz.log");
    let _ = std::fs::write(&log, o.lines.join("\n"));
    for l in o.lines.iter().filter(|l| l.contains("sysfuzz: summary") || l.contains("sysfuzz: master seed") || l.contains("free frames") || l.contains("sysfuzz: NMIs")) {
        println!("  {}", l.trim());
    }
    let mut why = Vec::new();
    if let Some(l) = &o.failed_on {
        why.push(format!("node stopped: `{l}`"));
    }
    if !o.lines.iter().any(|l| l.starts_with("ktest syscall_fuzz ... ok")) {
        why.push(o.lines.iter().find(|l| l.starts_with("ktest syscall_fuzz")).cloned().unwrap_or_else(|| "no ktest result".into()));
    }
    // A ring-3 task must not be able to start a line of the node's log (SYS_LOG with "\n").
    let forged = o.lines.iter().filter(|l| l.trim_start_matches(|c: char| c.is_control() || c == '[' || c.is_ascii_digit() || c == ';').starts_with("ktest sysfuzz_forged_line")).count();
    if forged > 0 {
        why.push(format!("{forged} log lines forged by the fuzzer"));
    }
    let violations = o.lines.iter().filter(|l| l.contains("VIOLATION")).count();
    if violations > 0 {
        why.push(format!("{violations} VIOLATION lines"));
    }
    let before = o.lines.iter().find_map(|l| number_after(l, "sysfuzz: free frames before:"));
    let after = o.lines.iter().find_map(|l| number_after(l, "sysfuzz: free frames after:"));
    match (before, after) {
        (Some(b), Some(a)) if a == b => {}
        (b, a) => why.push(format!("free frames before {b:?}, after {a:?}")),
    }
    let runs = o.lines.iter().find_map(|l| number_after(l, "sysfuzz: summary:")).unwrap_or(0);
    if runs == 0 {
        why.push("no fuzzer run completed".into());
    }
    let ok = why.is_empty();
    t.record("syscall_fuzz", ok, &format!("({}; seed {seed:x}; serial log {})", why.join("; "), log.display()));
    Ok(())
}
