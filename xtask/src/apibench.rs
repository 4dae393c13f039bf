//! `cargo xtask bench api` (issue 12 item 8, docs/api.md "Benchmarks"): the operator API as
//! the CLI sees it. One QEMU node (TCG, `apid` on its /128 port 8080, the ring-3 TCP echo
//! server on its task /128 port 8080: `net.tcpecho=8080`); the CLI (`catenary bench-api`, the
//! debug build `cargo build -p catenary` makes) on the host through its embedded fabric and
//! the unprivileged relay onto the node's switch (`catenary::ops::relay`, what `catenary cluster relay` runs), one session for everything:
//!
//! - latency of 200 `GET /v1/workloads` (each its own TCP connection through the session):
//!   median and p99;
//! - an image push of [`PUSH_MIB`] MiB (synthetic image: the store verifies digests and
//!   sizes, it never mounts it) vs the same session's raw throughput: [`ECHO_MIB`] MiB sent to
//!   the node's TCP echo server and received back (rate = bytes / time for the round trip of
//!   the stream; both directions run at once).
//!
//! Figures only; nothing is asserted.

use crate::cluster::NodeSpec;
use catenary_net::cluster::Operator;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const PUSH_MIB: usize = 4;
pub const ECHO_MIB: usize = 1;
const GETS: usize = 200;

/// A packed image directory of `bytes` of rootfs (as `catenary image pack` lays it out).
fn synthetic_image(dir: &Path, bytes: usize) -> Result<(), String> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let rootfs: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let config = br#"{"version":1}"#.to_vec();
    let hex = |b: &[u8]| {
        use sha2::Digest;
        format!("sha256:{}", catenary_api::auth::hex(sha2::Sha256::digest(b).as_slice()))
    };
    let manifest = format!(
        r#"{{"schemaVersion":1,"mediaType":"application/vnd.catenary.image.v1+json","rootfs":{{"mediaType":"application/vnd.catenary.rootfs.squashfs","digest":"{}","size":{},"file":"rootfs.squashfs"}},"config":{{"mediaType":"application/vnd.catenary.runconfig.v1+json","digest":"{}","size":{},"file":"config.json"}},"source":{{"manifest":null,"config":"sha256:00"}}}}"#,
        hex(&rootfs),
        rootfs.len(),
        hex(&config),
        config.len()
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (f, b) in [("rootfs.squashfs", &rootfs), ("config.json", &config), ("image.json", &manifest.into_bytes())] {
        std::fs::write(dir.join(f), b).map_err(|e| format!("{f}: {e}"))?;
    }
    Ok(())
}

fn num(text: &str, key: &str) -> Option<f64> {
    text.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
}

pub fn bench_api() -> Result<(), String> {
    if crate::tools::which("vde_plug").is_none() || crate::tools::which("vde_switch").is_none() {
        println!("bench api: skipped (vde_switch and vde_plug not installed: apt-get install vde2)");
        return Ok(());
    }
    // `net.tcpecho`: a probe, only in the probes kernel
    let kernel = crate::build::build_kernel_probes()?;
    let st = Command::new("cargo").args(["build", "--quiet", "-p", "catenary"]).status().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("cargo build -p catenary failed".into());
    }
    let bin = crate::tools::root().join("target/debug/catenary");
    let tag = "bench-api";
    let dir = crate::tools::out_dir().join(tag);
    let cfg = dir.join("operator");
    let _ = std::fs::remove_dir_all(&cfg);
    let image = dir.join("image");
    synthetic_image(&image, PUSH_MIB << 20)?;
    let cli = |args: &[&str]| Command::new(&bin).args(args).env("CATENARY_CONFIG_DIR", &cfg).env_remove("CATENARY_API").output().map_err(|e| e.to_string());
    let o = cli(&["init", "--name", "bench"])?;
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    let key = line.split_whitespace().nth(2).and_then(catenary_net::cluster::hex_decode32).ok_or(format!("catenary init printed {line:?}"))?;
    let mut node = NodeSpec::new(1);
    node.cmdline = "net.tcpecho=8080".into();
    let member = node.member();
    let node_key = node.identity.public_key();
    let op = Operator { name: "bench".into(), public_key: key, role: "admin".into() };
    println!("bench api: the CLI (debug build) through its embedded fabric session to one QEMU TCG node (2 CPUs): {GETS} x GET /v1/workloads; image push of {PUSH_MIB} MiB vs a TCP echo of {ECHO_MIB} MiB in the same session");
    let mut r = crate::cluster::start_with(&kernel, &[node], tag, &[], &[op])?;
    let echo_line = "tcp echo: listening on its own /128";
    let up = r.wait(Duration::from_secs(180), false, |l| l[0].iter().any(|x| x.contains(echo_line)) && l[0].iter().any(|x| x.contains("apid: serving the operator API")));
    let echo = r.lines[0].iter().find(|l| l.contains(echo_line)).and_then(|l| l.split("listening on its own /128 [").nth(1)?.split(']').next().map(String::from));
    let stop = Arc::new(AtomicBool::new(false));
    let res = (|| -> Result<String, String> {
        let echo = echo.filter(|_| up).ok_or("the node's apid or TCP echo server did not start")?;
        let (relay_addr, mut child) = catenary::ops::relay::start(r.switch_sock(), (member.underlay, member.port), [0x52, 0x54, 0x00, 0xca, 0x00, 0xe0], stop.clone())?;
        let out = (|| {
            let spec = format!("{}@{relay_addr}", catenary_net::cluster::hex_encode(&node_key));
            let o = cli(&["init", "--set-fabric", &spec])?;
            if !o.status.success() {
                return Err(format!("init --set-fabric: {}", String::from_utf8_lossy(&o.stderr)));
            }
            let o = cli(&[
                "--timeout",
                "120",
                "bench-api",
                "--gets",
                &GETS.to_string(),
                "--push",
                image.to_str().unwrap_or_default(),
                "--echo",
                &format!("[{echo}]:8080"),
                "--echo-bytes",
                &(ECHO_MIB << 20).to_string(),
            ])?;
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            if !o.status.success() {
                return Err(format!("catenary bench-api: {}{}", text, String::from_utf8_lossy(&o.stderr).trim()));
            }
            Ok(text)
        })();
        let _ = child.kill();
        let _ = child.wait();
        out
    })();
    stop.store(true, Ordering::SeqCst);
    let log = r.save_logs(tag);
    drop(r);
    let text = res.map_err(|e| format!("{e} (log {})", log.display()))?;
    for l in text.lines().filter(|l| l.starts_with("bench-api:")) {
        println!("  {}", l.trim_start_matches("bench-api: "));
    }
    let (med, p99) = (num(&text, "median "), num(&text, "p99 "));
    let push = text.lines().find(|l| l.contains("bench-api: push")).and_then(|l| num(l, "ms: "));
    let raw = text.lines().find(|l| l.contains("bench-api: echo")).and_then(|l| num(l, "ms: "));
    match (med, p99, push, raw) {
        (Some(m), Some(p), Some(push), Some(raw)) => {
            use crate::benchtable::{ratio, value, Goal};
            value("API GET /v1/workloads, CLI -> node through the embedded fabric (median of 200)", "ms", m, Goal::None);
            value("API GET /v1/workloads, CLI -> node through the embedded fabric (p99 of 200)", "ms", p, Goal::None);
            ratio(&format!("image push through the fabric ({PUSH_MIB} MiB, 256 KiB chunks)"), "MB/s", push, &format!("TCP echo, same session, {ECHO_MIB} MiB"), raw, Goal::None);
            Ok(())
        }
        _ => Err(format!("no figures in the CLI's output: {text}")),
    }
}
