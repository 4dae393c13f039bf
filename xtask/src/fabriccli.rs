//! The `catenary` CLI's embedded fabric against a real node (issue 12 item 5, docs/api.md
//! "Reaching a node"): the CLI, run as an unprivileged user in the host's own network namespace,
//! makes its own netfabric session with a QEMU node and reaches a TCP service on the node's
//! fabric /64 through it. No tap, no namespace, no WireGuard.
//!
//! The node sits on a `vde_switch`, which a host process cannot reach with plain UDP. The
//! test's stand-in for the workstation's network card is a relay that needs no root either:
//! `vde_plug` on the switch (Ethernet frames over its stdin/stdout, each after a 2-byte
//! big-endian length) under a smoltcp Ethernet interface with a link-local address, whose UDP
//! socket forwards datagrams to and from a localhost UDP port the CLI sends to. The relay only
//! moves opaque fabric datagrams: the handshake, encryption and TCP are the CLI's.
//!
//! Two things answer: the ring-3 TCP echo server (`net.tcpecho=8080`,
//! hypervisor/user/src/bin/uapp/tcp.rs) on the node's task /128, to which the CLI's hidden
//! `fabric-probe` sends 64 KiB and expects them back; and, when the tree has the API service
//! (`apid`, hypervisor/user/src/bin/apid.rs), `catenary nodes` against the node's own /128 port
//! 8080 (the default endpoint for a fabric node).

use crate::cluster::NodeSpec;
use crate::test::Tally;
use catenary_net::cluster::{link_local_from_mac, Operator};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::udp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RELAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xca, 0x00, 0xfc];
const RELAY_PORT: u16 = 51900;

/// Frames from the switch in, frames to it out (through `vde_plug`'s pipes).
struct Plug {
    rx: Receiver<Vec<u8>>,
    tx: ChildStdin,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut ChildStdin);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len + 2];
        let r = f(&mut b[2..]);
        b[..2].copy_from_slice(&(len as u16).to_be_bytes());
        let _ = self.0.write_all(&b);
        r
    }
}
impl phy::Device for Plug {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _t: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.try_recv().ok()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _t: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The relay: localhost UDP <-> `[node underlay]:port` on the switch, from the link-local
/// address of `mac`. Returns its localhost address and the `vde_plug` child (killed by the caller).
pub fn relay(switch: &Path, node: (Ipv6Addr, u16), mac: [u8; 6], stop: Arc<AtomicBool>) -> Result<(SocketAddr, Child), String> {
    let mut child = Command::new("vde_plug").arg(switch).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| format!("vde_plug: {e}"))?;
    let mut out = child.stdout.take().ok_or("vde_plug: no stdout")?;
    let tx = child.stdin.take().ok_or("vde_plug: no stdin")?;
    let (ftx, frx) = channel();
    std::thread::spawn(move || {
        let mut len = [0u8; 2];
        while out.read_exact(&mut len).is_ok() {
            let mut f = vec![0u8; u16::from_be_bytes(len) as usize];
            if out.read_exact(&mut f).is_err() || ftx.send(f).is_err() {
                break;
            }
        }
    });
    let host = UdpSocket::bind("[::1]:0").map_err(|e| e.to_string())?;
    let host_addr = host.local_addr().map_err(|e| e.to_string())?;
    host.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let mut dev = Plug { rx: frx, tx };
        let origin = Instant::now();
        let now = || smoltcp::time::Instant::from_micros(origin.elapsed().as_micros() as i64);
        let mut iface = Interface::new(Config::new(HardwareAddress::Ethernet(EthernetAddress(mac))), &mut dev, now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(link_local_from_mac(mac)), 64));
        });
        let mut sockets = SocketSet::new(vec![]);
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0u8; 256 * 1600]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0u8; 256 * 1600]),
        );
        let _ = s.bind(RELAY_PORT);
        let h = sockets.add(s);
        let dst = IpEndpoint::new(IpAddress::Ipv6(node.0), node.1);
        let mut client: Option<SocketAddr> = None;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            let mut busy = false;
            while let Ok((n, from)) = host.recv_from(&mut buf) {
                client = Some(from);
                let _ = sockets.get_mut::<udp::Socket>(h).send_slice(&buf[..n], dst);
                busy = true;
            }
            iface.poll(now(), &mut dev, &mut sockets);
            let s = sockets.get_mut::<udp::Socket>(h);
            while let Ok((n, _)) = s.recv_slice(&mut buf) {
                if let Some(c) = client {
                    let _ = host.send_to(&buf[..n], c);
                }
                busy = true;
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    Ok((host_addr, child))
}

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
    let member = node.member();
    let node_key = node.identity.public_key();
    let op = Operator { name: "cli".into(), public_key: key, role: "admin".into() };
    let mut r = crate::cluster::start_with(kernel, &[node], tag, &[], &[op])?;
    let apid = crate::tools::root().join("hypervisor/user/src/bin/apid.rs").exists();
    let serving = "apid: serving the operator API";
    let up = r.wait(Duration::from_secs(120), false, |l| l[0].iter().any(|x| x.contains("tcp echo: listening on its own /128")) && (!apid || l[0].iter().any(|x| x.contains(serving))));
    let echo = r.lines[0].iter().find(|l| l.contains("tcp echo: listening on its own /128")).and_then(|l| l.split("listening on its own /128 [").nth(1)?.split(']').next().map(String::from));
    let stop = Arc::new(AtomicBool::new(false));
    // the probe's outcome, and `catenary nodes`'s when apid is in the tree
    let res = (|| -> Result<(String, Option<Result<String, String>>), String> {
        let echo = echo.ok_or("the node's TCP echo server did not start")?;
        let (relay_addr, child) = relay(r.switch_sock(), (member.underlay, member.port), RELAY_MAC, stop.clone())?;
        let _child = KillOnDrop(child);
        let spec = format!("{}@{relay_addr}", node_key.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let o = catenary(&["init", "--set-fabric", &spec])?;
        if !o.status.success() {
            return Err(format!("init --set-fabric: {}", String::from_utf8_lossy(&o.stderr)));
        }
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
        Ok((out, Some(Ok(format!("`catenary nodes` answered by apid in {} ms: {}", took.as_millis(), table.lines().nth(1).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" "))))))
    })();
    stop.store(true, Ordering::SeqCst);
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

    pub fn output(&self, args: &[&str]) -> Result<std::process::Output, String> {
        self.command(args).output().map_err(|e| e.to_string())
    }
}

pub struct KillOnDrop(pub Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
