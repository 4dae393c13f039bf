//! `cargo xtask fuzz`: every cargo-fuzz target of the repository, found by looking for fuzz
//! crates (`*/fuzz/Cargo.toml` with `[package.metadata] cargo-fuzz = true`), so a new target or
//! a new fuzz crate is picked up without touching this file.
//!
//! - `cargo xtask fuzz --smoke`: each target for a short fixed time with a fixed seed (CI runs
//!   this as part of `cargo xtask test`; all targets together stay under 3 minutes of fuzzing).
//! - `cargo xtask fuzz [--seconds N] [TARGET…]`: the longer runs whose figures go in the docs.
//!
//! Only stable Rust is installed: `RUSTC_BOOTSTRAP=1` lets cargo-fuzz pass its sanitizer flags.
//! All fuzz crates share one target directory (`target/fuzz`), so their common dependencies
//! build once.

use crate::test::Tally;
use crate::tools::root;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Seconds each target runs in a smoke run.
pub const SMOKE_SECONDS: u64 = 6;

/// One fuzz target: its crate directory (the `fuzz/` folder) and its name.
#[derive(Clone, Debug)]
pub struct Target {
    pub dir: PathBuf,
    pub name: String,
}

impl Target {
    /// `netfabric/fuzz::handshake_initiation`
    pub fn label(&self) -> String {
        let rel = self.dir.strip_prefix(root()).unwrap_or(&self.dir);
        format!("{}::{}", rel.display(), self.name)
    }
}

/// Every fuzz crate below the repository root (not inside `target/` or hidden folders).
pub fn fuzz_crates() -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 4 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name == "target" || name == "build" {
                continue;
            }
            if name == "fuzz" {
                let manifest = p.join("Cargo.toml");
                if std::fs::read_to_string(&manifest).map(|m| m.contains("cargo-fuzz = true")).unwrap_or(false) {
                    out.push(p.clone());
                    continue;
                }
            }
            walk(&p, depth + 1, out);
        }
    }
    let mut v = Vec::new();
    walk(&root(), 0, &mut v);
    v
}

/// The `[[bin]]` names of a fuzz crate's manifest (what `cargo fuzz list` prints), read
/// directly so that listing needs no build.
pub fn targets_of(dir: &Path) -> Vec<Target> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
            continue;
        }
        if in_bin {
            if let Some(v) = l.strip_prefix("name").map(str::trim).and_then(|r| r.strip_prefix('=')) {
                out.push(Target { dir: dir.to_path_buf(), name: v.trim().trim_matches('"').to_string() });
                in_bin = false;
            }
        }
    }
    out
}

pub fn all_targets() -> Vec<Target> {
    fuzz_crates().iter().flat_map(|d| targets_of(d)).collect()
}

fn cargo_fuzz(dir: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root().join("target").join("fuzz"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .arg("fuzz");
    c
}

/// Whether the `cargo fuzz` subcommand is installed.
pub fn have_cargo_fuzz() -> bool {
    crate::tools::which("cargo-fuzz").is_some()
        || std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|h| h.join("bin/cargo-fuzz").is_file())
            .unwrap_or(false)
}

/// Build, then run each target for `secs` seconds. Each target is one test in `t`; a target
/// that crashes, leaks or times out fails, and its reproducer stays in `<crate>/artifacts/`.
pub fn run_targets(t: &mut Tally, targets: &[Target], secs: u64, prefix: &str) {
    if !have_cargo_fuzz() {
        for tg in targets {
            t.skip(&format!("{prefix}{}", tg.label()), "cargo-fuzz not installed: cargo install cargo-fuzz --locked");
        }
        return;
    }
    let log_dir = crate::tools::out_dir().join("fuzz");
    let _ = std::fs::create_dir_all(&log_dir);
    let mut crates: Vec<PathBuf> = targets.iter().map(|t| t.dir.clone()).collect();
    crates.dedup();
    for dir in &crates {
        let start = Instant::now();
        let out = cargo_fuzz(dir).args(["build", "-O", "-a"]).output();
        let ok = matches!(&out, Ok(o) if o.status.success());
        println!("    built {} in {:.0}s", dir.strip_prefix(root()).unwrap_or(dir).display(), start.elapsed().as_secs_f64());
        if !ok {
            let text = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_else(|e| e.to_string());
            let log = log_dir.join("build.log");
            let _ = std::fs::write(&log, &text);
            for tg in targets.iter().filter(|t| &t.dir == dir) {
                t.record(&format!("{prefix}{}", tg.label()), false, &format!("(fuzz build failed; log {})", log.display()));
            }
        }
    }
    // Two targets at a time: each libFuzzer run is one process on one core, and the machines
    // this runs on have two (the run is timed by the wall clock, so each still gets its
    // `secs` of a core). Results are recorded in the targets' order.
    for pair in targets.chunks(FUZZ_AT_ONCE) {
        let outs: Vec<(bool, String, f64)> = std::thread::scope(|s| {
            let runs: Vec<_> = pair.iter().map(|tg| s.spawn(|| run_one(tg, secs))).collect();
            runs.into_iter().map(|h| h.join().unwrap_or_else(|_| (false, "the fuzz run's thread panicked".into(), 0.0))).collect()
        });
        for (tg, (ok, text, took)) in pair.iter().zip(outs) {
            let name = format!("{prefix}{}", tg.label());
            let log = log_dir.join(format!("{}.log", tg.label().replace(['/', ':'], "_")));
            let _ = std::fs::write(&log, &text);
            println!("    {} {took:.0}s: {}", tg.label(), last_stats(&text));
            t.record(&name, ok, &format!("(crashed or failed: log {}, reproducer in {}/artifacts/{})", log.display(), tg.dir.display(), tg.name));
        }
    }
}

/// How many fuzz targets run at once.
const FUZZ_AT_ONCE: usize = 2;

/// One target for `secs` with a fixed seed: whether it ended cleanly, its output, its seconds.
fn run_one(tg: &Target, secs: u64) -> (bool, String, f64) {
    // A fixed seed keeps smoke runs repeatable; an empty corpus dir in target/ keeps the
    // checked-in tree clean (libFuzzer writes new inputs into the first corpus dir).
    let corpus = root().join("target").join("fuzz-corpus").join(tg.label().replace(['/', ':'], "_"));
    let _ = std::fs::create_dir_all(&corpus);
    let mut c = cargo_fuzz(&tg.dir);
    c.args(["run", "-O", "-a", &tg.name])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg("-seed=1")
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=10");
    let start = Instant::now();
    let (ok, text) = match c.output() {
        Ok(o) => (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))),
        Err(e) => (false, e.to_string()),
    };
    (ok, text, start.elapsed().as_secs_f64())
}

/// libFuzzer's last status line (`#123456 DONE cov: … ft: … corp: … exec/s: …`), for the log.
fn last_stats(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| l.starts_with('#') && (l.contains("DONE") || l.contains("pulse") || l.contains("NEW") || l.contains("REDUCE")))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .or_else(|| text.lines().rev().find(|l| l.contains("Done ") && l.contains("runs")).map(str::to_string))
        .unwrap_or_else(|| "no libFuzzer status line".into())
}

/// `cargo xtask fuzz [--smoke] [--seconds N] [--list] [TARGET…]`
pub fn cmd_fuzz(args: &[String]) -> Result<(), String> {
    let mut secs = 60;
    let mut names = Vec::new();
    let mut list = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => secs = SMOKE_SECONDS,
            "--seconds" => secs = it.next().and_then(|s| s.parse().ok()).ok_or("--seconds takes a number")?,
            "--list" => list = true,
            other => names.push(other.to_string()),
        }
    }
    let mut targets = all_targets();
    if list {
        for t in &targets {
            println!("{}", t.label());
        }
        return Ok(());
    }
    if !names.is_empty() {
        targets.retain(|t| names.iter().any(|n| t.label().contains(n.as_str())));
        if targets.is_empty() {
            return Err(format!("no fuzz target matches {names:?} (see `cargo xtask fuzz --list`)"));
        }
    }
    println!("== fuzz: {} targets, {secs}s each", targets.len());
    let mut t = Tally::default();
    run_targets(&mut t, &targets, secs, "fuzz::");
    println!("{}", t.summary());
    if t.failed > 0 {
        Err(format!("{} fuzz target(s) failed", t.failed))
    } else if t.skipped > 0 {
        Err("cargo-fuzz is not installed".into())
    } else {
        Ok(())
    }
}
