//! `cargo xtask sim`: the cluster core's deterministic simulator over many seeds
//! (docs/orchestration.md). Runs the `catenary-cluster` examples in release mode: membership
//! chaos (`chaos`), then the replicated desired state's (`raft_chaos`).
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
    // Membership chaos, then the desired state's (Raft, scheduler, leases), on the same seeds.
    let runs: Vec<(&str, Vec<String>)> = if detection {
        vec![("detection", vec![seeds.to_string()])]
    } else {
        vec![("chaos", vec![seeds.to_string(), first.to_string()]), ("raft_chaos", vec![seeds.to_string(), first.to_string()])]
    };
    for (example, extra) in runs {
        let status = Command::new(env!("CARGO"))
            .args(["run", "--release", "--quiet", "-p", "catenary-cluster", "--features", "sim", "--example", example, "--"])
            .args(&extra)
            .status()
            .map_err(|e| format!("cargo: {e}"))?;
        if !status.success() {
            return Err(format!("sim {example} failed ({status})"));
        }
    }
    Ok(())
}
