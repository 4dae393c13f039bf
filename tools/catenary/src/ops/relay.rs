//! `catenary cluster relay --switch SOCK [--dir D] [--node NAME]`: the workstation's way onto
//! a local cluster's `vde_switch` (`cargo xtask run --nodes N`, `nix run .#qemu-cluster`),
//! which a host process cannot reach with plain UDP, and which needs no root.
//!
//! `vde_plug SOCK` carries Ethernet frames over its stdin/stdout (each after a 2-byte
//! big-endian length); a smoltcp Ethernet interface on it, with a link-local address from a
//! random locally administered MAC, has one UDP socket that forwards datagrams to and from a
//! localhost UDP port. The relay only moves opaque fabric datagrams between that port and the
//! node's underlay address and port (from the cluster file): the handshake, encryption and TCP
//! are the CLI's embedded fabric's. It reads only their WireGuard session indices, to send each
//! of the node's datagrams to the local CLI whose session it belongs to (`relay_route.rs`). The operator config's fabric endpoint is set to
//! `NODEKEY@[::1]:PORT` (what `catenary init --set-fabric` sets), so `catenary nodes` with that
//! config goes through the relay. It runs until SIGINT or SIGTERM, or until `vde_plug` ends.

use super::config;
use super::relay_route::{Routes, MAX_ROUTES};
use catenary_net::cluster::{hex_encode, link_local_from_mac, Cluster, Member};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::udp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The relay's UDP port on its link-local address (its own address: any port would do).
const RELAY_PORT: u16 = 51900;
/// Frames queued from the switch before the relay takes them; more are dropped (a switch
/// floods every frame: a busy one must not grow the queue).
const FRAME_QUEUE: usize = 512;
/// Largest frame kept (an Ethernet frame at MTU 1500 with a VLAN tag is 1518).
const MAX_FRAME: usize = 2048;
/// Datagrams buffered in the smoltcp socket each way.
const UDP_SLOTS: usize = 256;
/// The largest cluster file read (200 nodes' lines are ~30 KiB).
const MAX_CLUSTER_FILE: u64 = 1 << 20;

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

/// The relay: localhost UDP <-> `[node underlay]:port` on the switch `switch`, from the
/// link-local address of `mac` (one MAC per relay on a switch). Returns its localhost address
/// and the `vde_plug` child (the caller kills it, and sets `stop` to end the relay's thread).
pub fn start(switch: &Path, node: (Ipv6Addr, u16), mac: [u8; 6], stop: Arc<AtomicBool>) -> Result<(SocketAddr, Child), String> {
    let mut child = Command::new("vde_plug").arg(switch).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| format!("vde_plug: {e}"))?;
    let mut out = child.stdout.take().ok_or("vde_plug: no stdout")?;
    let tx = child.stdin.take().ok_or("vde_plug: no stdin")?;
    let (ftx, frx) = sync_channel(FRAME_QUEUE);
    std::thread::spawn(move || {
        let mut len = [0u8; 2];
        let mut f = vec![0u8; u16::MAX as usize];
        while out.read_exact(&mut len).is_ok() {
            let n = u16::from_be_bytes(len) as usize;
            if out.read_exact(&mut f[..n]).is_err() {
                break;
            }
            if n <= MAX_FRAME {
                match ftx.try_send(f[..n].to_vec()) {
                    Ok(()) | Err(std::sync::mpsc::TrySendError::Full(_)) => {}
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
                }
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
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; UDP_SLOTS], vec![0u8; UDP_SLOTS * 1600]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; UDP_SLOTS], vec![0u8; UDP_SLOTS * 1600]),
        );
        let _ = s.bind(RELAY_PORT);
        let h = sockets.add(s);
        let dst = IpEndpoint::new(IpAddress::Ipv6(node.0), node.1);
        let node_addr = SocketAddr::from((node.0, node.1));
        // several CLIs (each its own port) may share the relay: the node's answers go to the
        // one whose session index they name, and a CLI whose session the node replaced is told
        // (relay_route.rs)
        let mut routes = Routes::new(MAX_ROUTES);
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            let mut busy = false;
            while let Ok((n, from)) = host.recv_from(&mut buf) {
                routes.from_client(&buf[..n], from, Instant::now());
                let _ = sockets.get_mut::<udp::Socket>(h).send_slice(&buf[..n], dst);
                busy = true;
            }
            iface.poll(now(), &mut dev, &mut sockets);
            let s = sockets.get_mut::<udp::Socket>(h);
            while let Ok((n, meta)) = s.recv_slice(&mut buf) {
                let src = match meta.endpoint.addr {
                    IpAddress::Ipv6(a) => SocketAddr::from((a, meta.endpoint.port)),
                };
                match routes.from_switch(src, node_addr, &buf[..n], Instant::now()) {
                    Ok(r) => {
                        for c in std::iter::once(r.to).chain(r.also) {
                            let _ = host.send_to(&buf[..n], c);
                        }
                    }
                    Err(why) => {
                        // the 1st, 2nd, 4th, 8th… drop: seen, without a line per datagram
                        let d = routes.dropped();
                        if d.total().is_power_of_two() {
                            eprintln!(
                                "catenary: relay: dropped a datagram from the switch ({why:?}); {} so far: {} for no local session, {} initiations, {} malformed, {} not from the node",
                                d.total(),
                                d.unknown_index,
                                d.initiation,
                                d.malformed,
                                d.not_from_node
                            );
                        }
                    }
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

/// The node a relay reaches: `name` in the cluster file's text, or its first node.
pub fn target(cluster_text: &str, name: Option<&str>) -> Result<Member, String> {
    let c = Cluster::parse(cluster_text).map_err(|e| format!("the cluster file does not parse: {e}"))?;
    match name {
        None => c.members.into_iter().next().ok_or_else(|| "the cluster file lists no node".to_string()),
        Some(n) => {
            let names: Vec<String> = c.members.iter().map(|m| m.name.clone()).collect();
            c.members.into_iter().find(|m| m.name == n).ok_or_else(|| format!("no node {n:?} in the cluster file (it has {})", names.join(", ")))
        }
    }
}

/// The cluster file `dir/cluster.txt`, read with a bound.
pub fn read_cluster(dir: &Path) -> Result<String, String> {
    let p = dir.join("cluster.txt");
    let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e} (`catenary cluster new` makes it)", p.display()))?;
    let mut text = String::new();
    f.take(MAX_CLUSTER_FILE + 1).read_to_string(&mut text).map_err(|e| format!("{}: {e}", p.display()))?;
    if text.len() as u64 > MAX_CLUSTER_FILE {
        return Err(format!("{}: larger than {MAX_CLUSTER_FILE} bytes", p.display()));
    }
    Ok(text)
}

/// The operator config the relay writes its endpoint into: `$CATENARY_CONFIG_DIR` when set
/// (`env`), else `dir/operator` (what `catenary cluster new` made).
pub fn operator_dir(dir: &Path, env: Option<PathBuf>) -> PathBuf {
    env.filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| dir.join("operator"))
}

/// The config's fabric endpoint for the relay at `addr`: `NODEKEY@ADDR` (a public key).
pub fn fabric_spec(node: &Member, addr: SocketAddr) -> String {
    format!("{}@{addr}", hex_encode(&node.public_key))
}

/// A random locally administered unicast MAC, so that relays on one switch do not collide
/// with each other or with the nodes' `52:54:00:ca:…`.
pub fn random_mac() -> Result<[u8; 6], String> {
    let mut m = [0u8; 6];
    getrandom::fill(&mut m).map_err(|e| format!("the OS entropy source failed: {e}"))?;
    m[0] = (m[0] & 0xfc) | 0x02;
    Ok(m)
}

/// `catenary cluster relay`: start the relay for `node` of the cluster in `dir`, write its
/// endpoint into the operator config `op_dir`, print one line, and run until SIGINT/SIGTERM
/// (then kill `vde_plug`) or until `vde_plug` ends (an error: the switch went away).
pub fn run(switch: &Path, dir: &Path, node: Option<&str>, op_dir: &Path) -> Result<(), String> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let member = target(&read_cluster(dir)?, node)?;
    // the operator config must be there before anything starts
    config::load(op_dir)?;
    if !switch.exists() {
        return Err(format!("{}: no such switch (the cluster's vde_switch socket)", switch.display()));
    }
    // SIGINT/SIGTERM are read from a signalfd (no handler, no unsafe): blocked in this thread
    // before the relay's threads start, which inherit the mask. vde_plug does not (Command
    // resets a child's signal mask), so a terminal's Ctrl-C reaches it too; it is also killed
    // here, and sees its stdin close if this process is killed outright.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().map_err(|e| format!("blocking SIGINT/SIGTERM: {e}"))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| format!("signalfd: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mac = random_mac()?;
    let (addr, mut child) = start(switch, (member.underlay, member.port), mac, stop.clone())?;
    let spec = fabric_spec(&member, addr);
    let end = |child: &mut Child| {
        stop.store(true, Ordering::SeqCst);
        let _ = child.kill();
        let _ = child.wait();
    };
    if let Err(e) = config::set(op_dir, None, Some(&spec)) {
        end(&mut child);
        return Err(e);
    }
    println!(
        "catenary: relaying {addr} to {} at [{}]:{} on switch {} (from {}); fabric endpoint {spec} written to {}; Ctrl-C stops it",
        member.name,
        member.underlay,
        member.port,
        switch.display(),
        link_local_from_mac(mac),
        op_dir.join(config::CONFIG_FILE).display()
    );
    let _ = std::io::stdout().flush();
    loop {
        match sfd.read_signal() {
            Ok(Some(_)) => {
                end(&mut child);
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                end(&mut child);
                return Err(format!("signalfd: {e}"));
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            stop.store(true, Ordering::SeqCst);
            // a Ctrl-C that ended vde_plug between the read above and here is a stop, not an error
            if let Ok(Some(_)) = sfd.read_signal() {
                return Ok(());
            }
            return Err(format!("vde_plug ended ({st}): is the switch {} still up?", switch.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "catenary-cluster v1\n\
        node node1 0101010101010101010101010101010101010101010101010101010101010101 fe80::5054:ff:feca:1 51820\n\
        node node2 0202020202020202020202020202020202020202020202020202020202020202 fe80::5054:ff:feca:2 51821\n";

    #[test]
    fn the_target_is_the_named_node_or_the_first() {
        let m = target(FILE, None).unwrap();
        assert_eq!((m.name.as_str(), m.port), ("node1", 51820));
        let m = target(FILE, Some("node2")).unwrap();
        assert_eq!((m.name.as_str(), m.underlay, m.port, m.public_key), ("node2", "fe80::5054:ff:feca:2".parse().unwrap(), 51821, [2; 32]));
        let e = target(FILE, Some("node3")).unwrap_err();
        assert!(e.contains("node1, node2"), "{e}");
        assert!(target("catenary-cluster v1\n", None).is_err());
        assert!(target("not a cluster file\n", None).is_err());
    }

    #[test]
    fn the_spec_is_what_init_set_fabric_takes() {
        let m = target(FILE, Some("node2")).unwrap();
        let spec = fabric_spec(&m, "[::1]:40000".parse().unwrap());
        assert_eq!(spec, format!("{}@[::1]:40000", "02".repeat(32)));
        let f = super::super::transport::FabricNode::parse(&spec).unwrap();
        assert_eq!(f.public_key, [2; 32]);
        assert_eq!(f.endpoint, "[::1]:40000".parse().unwrap());
    }

    #[test]
    fn the_config_dir_is_the_env_one_else_dir_operator() {
        let d = Path::new("/x/cluster");
        assert_eq!(operator_dir(d, None), Path::new("/x/cluster/operator"));
        assert_eq!(operator_dir(d, Some(PathBuf::new())), Path::new("/x/cluster/operator"));
        assert_eq!(operator_dir(d, Some("/y".into())), Path::new("/y"));
    }

    #[test]
    fn macs_are_local_unicast_and_differ() {
        let a = random_mac().unwrap();
        let b = random_mac().unwrap();
        assert_eq!(a[0] & 0x03, 0x02);
        assert_ne!(a, b);
    }

    #[test]
    fn run_refuses_before_starting_anything() {
        let d = tempfile::tempdir().unwrap();
        // no cluster file
        let e = run(Path::new("/nonexistent-switch"), d.path(), None, &d.path().join("operator")).unwrap_err();
        assert!(e.contains("cluster.txt"), "{e}");
        // a cluster file, but no operator config
        std::fs::write(d.path().join("cluster.txt"), FILE).unwrap();
        let e = run(Path::new("/nonexistent-switch"), d.path(), None, &d.path().join("operator")).unwrap_err();
        assert!(e.contains("config.json"), "{e}");
        // a config, an unknown node
        config::init(&d.path().join("operator"), None, false).unwrap();
        let e = run(Path::new("/nonexistent-switch"), d.path(), Some("node9"), &d.path().join("operator")).unwrap_err();
        assert!(e.contains("no node \"node9\""), "{e}");
        // no switch: refused, and the config is left as it was
        let e = run(Path::new("/nonexistent-switch"), d.path(), None, &d.path().join("operator")).unwrap_err();
        assert!(e.contains("no such switch"), "{e}");
        assert_eq!(config::load(&d.path().join("operator")).unwrap().fabric, None);
        // an oversized cluster file is refused
        std::fs::write(d.path().join("cluster.txt"), vec![b'#'; MAX_CLUSTER_FILE as usize + 10]).unwrap();
        assert!(read_cluster(d.path()).unwrap_err().contains("larger than"));
    }
}
