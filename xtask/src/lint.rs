//! `cargo xtask lint`: clippy with every warning an error, over everything this repository
//! builds: the host workspace (all targets; the vendored `raftbare` aside), and with the flags
//! of their real builds the node kernel (its node, `ktest`, `probes` and `ktest,probes`
//! builds) and the ring-3 programs (with and without `probes`). Not part of `cargo xtask test`
//! (it would add minutes to CI); docs/testing.md, "Lint".

use crate::build::{user_rustflags, KERNEL_RUSTFLAGS};
use crate::tools::{root, run};
use std::process::Command;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root()).env_remove("RUSTFLAGS");
    c
}

pub fn cmd_lint(rest: &[String]) -> Result<(), String> {
    if !rest.is_empty() {
        return Err(format!("lint takes no arguments (got {rest:?})"));
    }
    let deny = ["--", "-D", "warnings"];
    println!("lint: host workspace");
    run(cargo().args(["clippy", "--release", "--workspace", "--exclude", "catenary-kernel", "--exclude", "raftbare", "--all-targets"]).args(deny))?;
    let target_dir = root().join("target").join("clippy");
    for probes in [false, true] {
        let what = if probes { "ring-3 programs (probes)" } else { "ring-3 programs" };
        println!("lint: {what}");
        let mut c = cargo();
        c.args(["clippy", "--release", "--manifest-path", "hypervisor/user/Cargo.toml", "--target", "x86_64-unknown-linux-gnu"])
            .arg("--target-dir")
            .arg(target_dir.join("user"))
            .env("CARGO_ENCODED_RUSTFLAGS", user_rustflags().join("\x1f"));
        if probes {
            c.args(["--features", "probes"]);
        }
        run(c.args(deny))?;
    }
    // The kernel embeds the ring-3 programs' binaries: build them as the kernel build does.
    let user = crate::build::build_user(true)?;
    for features in ["", "ktest", "probes", "ktest,probes"] {
        println!("lint: node kernel{}", if features.is_empty() { String::new() } else { format!(" ({features})") });
        let mut c = cargo();
        c.args(["clippy", "--release", "-p", "catenary-kernel", "--bin", "catenary", "--target", "x86_64-unknown-linux-gnu"])
            .arg("--target-dir")
            .arg(target_dir.join("kernel"))
            .env("CARGO_ENCODED_RUSTFLAGS", KERNEL_RUSTFLAGS.join("\x1f"))
            .env("CATENARY_USER_DIR", &user);
        if !features.is_empty() {
            c.args(["--features", features]);
        }
        run(c.args(deny))?;
    }
    println!("lint: clippy clean (host workspace, ring-3 programs, node kernel in 4 builds)");
    Ok(())
}
