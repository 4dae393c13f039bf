//! The `catenary` CLI's embedded fabric against a real node (issue 12 item 5, docs/api.md
//! "Reaching a node"): the CLI, run as an unprivileged user in the host's own network namespace,
//! makes its own netfabric session with a QEMU node and reaches a TCP service on the node's
//! fabric /64 through it. No tap, no namespace, no WireGuard.
//!
//! The node sits on a `vde_switch`, which a host process cannot reach with plain UDP. The
//! workstation's way onto it is `catenary cluster relay` (tools/catenary/src/ops/relay.rs),
//! run here as its own process as an operator runs it: `vde_plug` on the switch under a
//! smoltcp Ethernet interface with a link-local address, forwarding datagrams between a
//! localhost UDP port and the node's underlay address, written into the operator config as
//! the fabric endpoint. The relay only moves opaque fabric datagrams: the handshake,
//! encryption and TCP are the CLI's. SIGTERM must end it cleanly.
//!
//! Two things answer: the ring-3 TCP echo server (`net.tcpecho=8080`,
//! hypervisor/user/src/bin/uapp/tcp.rs) on the node's task /128, to which the CLI's hidden
//! `fabric-probe` sends 64 KiB and expects them back; and, when the tree has the API service
//! (`apid`, hypervisor/user/src/bin/apid.rs), `catenary nodes` against the node's own /128 port
//! 8080 (the default endpoint for a fabric node).

use crate::cluster::NodeSpec;
use crate::test::Tally;
use catenary_net::cluster::Operator;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "net_cli_embedded_fabric_reaches_node";
    if !crate::preflight::ready(t, &[name], &crate::preflight::Needs { tools: &["vde_plug"], ..Default::default() }) {
        return Ok(());
    }
    let tag = "net-cli-fabric";
    let dir = crate::tools::out_dir().join(tag);
    let cfg = dir.join("operator");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cli = Cli::prepare(&cfg)?;
    let unpriv = cli.unpriv;
    let catenary = |args: &[&str]| cli.output(args);
    let o = catenary(&["init", "--name", "cli"])?;
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    let key = line.split_whitespace().nth(2).and_then(catenary_net::cluster::hex_decode32).ok_or(format!("catenary init printed {line:?}: {}", String::from_utf8_lossy(&o.stderr)))?;
    let mut node = NodeSpec::new(1);
    node.cmdline = "net.tcpecho=8080".into();
    let node_key = node.identity.public_key();
    let op = Operator { name: "cli".into(), public_key: key, role: "admin".into() };
    let mut r = crate::cluster::start_with(kernel, &[node], tag, &[], &[op])?;
    let apid = crate::tools::root().join("hypervisor/user/src/bin/apid.rs").exists();
    let serving = "apid: serving the operator API";
    let up = r.wait(Duration::from_secs(120), false, |l| l[0].iter().any(|x| x.contains("tcp echo: listening on its own /128")) && (!apid || l[0].iter().any(|x| x.contains(serving))));
    let echo = r.lines[0].iter().find(|l| l.contains("tcp echo: listening on its own /128")).and_then(|l| l.split("listening on its own /128 [").nth(1)?.split(']').next().map(String::from));
    // the probe's outcome, and `catenary nodes`'s when apid is in the tree
    let res = (|| -> Result<(String, Option<Result<String, String>>), String> {
        let echo = echo.ok_or("the node's TCP echo server did not start")?;
        // the relay as an operator runs it: `catenary cluster relay`, a process of its own, which
        // writes its endpoint into the config. As the runner: the switch (root's) admits no other
        // uid; the config it writes keeps its owner.
        let mut relay = KillOnDrop(
            cli.command_as_runner(&["cluster", "relay", "--switch", r.switch_sock().to_str().ok_or("switch path")?, "--dir", r.dir.to_str().ok_or("dir")?])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("catenary cluster relay: {e}"))?,
        );
        let line = first_line(&mut relay.0, Duration::from_secs(10))?;
        let spec = format!("{}@", node_key.iter().map(|b| format!("{b:02x}")).collect::<String>());
        if !line.contains(&spec) || !line.contains(&cfg.join("config.json").display().to_string()) {
            return Err(format!("catenary cluster relay printed {line:?}"));
        }
        let written = std::fs::read_to_string(cfg.join("config.json")).map_err(|e| e.to_string())?;
        if !written.contains(&spec) {
            return Err(format!("catenary cluster relay did not write the fabric endpoint: {written}"));
        }
        println!("  {}", line.trim());
        let start = Instant::now();
        let o = catenary(&["--api", &format!("[{echo}]:8080"), "--timeout", "60", "fabric-probe", "--bytes", "65536"])?;
        let took = start.elapsed();
        let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)).trim().to_string();
        if !o.status.success() {
            return Err(format!("fabric-probe failed after {took:?}: {out}"));
        }
        if !apid {
            return Ok((out, None));
        }
        let start = Instant::now();
        let o = catenary(&["--timeout", "60", "nodes"])?;
        let took = start.elapsed();
        let table = String::from_utf8_lossy(&o.stdout).to_string();
        if !o.status.success() || !table.lines().nth(1).is_some_and(|l| l.starts_with("node1")) {
            return Ok((out, Some(Err(format!("catenary nodes after {took:?}: {table}{}", String::from_utf8_lossy(&o.stderr).trim())))));
        }
        let nodes = format!("`catenary nodes` answered by apid in {} ms through `catenary cluster relay`: {}", took.as_millis(), table.lines().nth(1).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" "));
        // SIGTERM ends the relay (and its vde_plug) cleanly
        let _ = Command::new("kill").arg(relay.0.id().to_string()).status();
        let t0 = Instant::now();
        let ended = loop {
            match relay.0.try_wait() {
                Ok(Some(st)) => break Some(st),
                _ if t0.elapsed() > Duration::from_secs(5) => break None,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if !ended.is_some_and(|s| s.success()) {
            return Ok((out, Some(Err(format!("catenary cluster relay did not end cleanly on SIGTERM: {ended:?}")))));
        }
        Ok((out, Some(Ok(nodes))))
    })();
    r.wait(Duration::from_millis(500), false, |_| false);
    let session = r.has(0, "session with operator:cli established");
    let log = r.save_logs(tag);
    drop(r);
    let _ = std::fs::remove_file(cfg.join("operator.key"));
    let who = if unpriv { "65534" } else { "of the runner" };
    match res {
        Ok((out, nodes)) => {
            println!("  {out} (CLI as uid {who}; node logged the session: {session})");
            t.record(name, up && session && out.contains("65536 bytes echoed"), &format!("(log {})", log.display()));
            match nodes {
                None => println!("  apid is not in this tree: `catenary nodes` not run"),
                Some(Ok(n)) => {
                    println!("  {n}");
                    t.record("net_cli_embedded_fabric_nodes_from_apid", true, &format!("(log {})", log.display()));
                }
                Some(Err(e)) => t.record("net_cli_embedded_fabric_nodes_from_apid", false, &format!("({e}; log {})", log.display())),
            }
        }
        Err(e) => {
            t.record(name, false, &format!("({e}; log {})", log.display()));
            if apid {
                t.record("net_cli_embedded_fabric_nodes_from_apid", false, "(not run: the probe failed)");
            }
        }
    }
    Ok(())
}

/// The `catenary` binary run directly (not through cargo), as uid 65534 through `setpriv` when
/// the runner is root (it needs no privilege), with its own config directory.
pub struct Cli {
    bin: std::path::PathBuf,
    pub cfg: std::path::PathBuf,
    pub unpriv: bool,
}

impl Cli {
    /// Build the binary; an empty config directory `cfg` (owned by uid 65534 when unprivileged).
    pub fn prepare(cfg: &Path) -> Result<Cli, String> {
        let st = Command::new("cargo").args(["build", "--quiet", "-p", "catenary"]).status().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("cargo build -p catenary failed".into());
        }
        let _ = std::fs::remove_dir_all(cfg);
        let unpriv = crate::preflight::is_root() && crate::tools::which("setpriv").is_some();
        if unpriv {
            std::fs::create_dir_all(cfg).map_err(|e| e.to_string())?;
            Command::new("chown").args(["65534:65534"]).arg(cfg).status().map_err(|e| e.to_string())?;
        }
        Ok(Cli { bin: crate::tools::root().join("target/debug/catenary"), cfg: cfg.to_path_buf(), unpriv })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = if self.unpriv {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        c.args(args).env("CATENARY_CONFIG_DIR", &self.cfg).env_remove("CATENARY_API");
        c
    }

    /// The binary as the runner itself (same config directory).
    pub fn command_as_runner(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).env("CATENARY_CONFIG_DIR", &self.cfg).env_remove("CATENARY_API");
        c
    }

    pub fn output(&self, args: &[&str]) -> Result<std::process::Output, String> {
        self.command(args).output().map_err(|e| e.to_string())
    }
}

/// The first line `child` prints on stdout, within `limit` (its stderr when it ends first).
fn first_line(child: &mut Child, limit: Duration) -> Result<String, String> {
    use std::io::BufRead;
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(out);
        let mut l = String::new();
        let _ = r.read_line(&mut l);
        let _ = tx.send(l);
        // keep reading so the child never blocks on a full pipe
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    match rx.recv_timeout(limit) {
        Ok(l) if !l.is_empty() => Ok(l),
        _ => {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            Err(format!("catenary cluster relay printed nothing in {limit:?}: {}", err.trim()))
        }
    }
}

pub struct KillOnDrop(pub Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
