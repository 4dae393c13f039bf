//! `cargo xtask sim`: the cluster core's deterministic simulator over many seeds
//! (docs/orchestration.md). Runs the `catenary-cluster` examples in release mode.
use std::process::Command;

pub fn cmd_sim(args: &[String]) -> Result<(), String> {
    let mut seeds = 1000u64;
    let mut first = 0u64;
    let mut detection = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => seeds = it.next().and_then(|s| s.parse().ok()).ok_or("--seeds takes a number")?,
            "--first" => first = it.next().and_then(|s| s.parse().ok()).ok_or("--first takes a number")?,
            "--detection" => detection = true,
            other => return Err(format!("sim: unknown option `{other}`")),
        }
    }
    let (example, extra): (&str, Vec<String>) = if detection {
        ("detection", vec![seeds.to_string()])
    } else {
        ("chaos", vec![seeds.to_string(), first.to_string()])
    };
    let status = Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "-p", "catenary-cluster", "--features", "sim", "--example", example, "--"])
        .args(&extra)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("sim {example} failed ({status})"))
    }
}
