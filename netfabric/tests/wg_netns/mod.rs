//! A throwaway wireguard-go peer in its own network namespace, for tests that run as root.
//! (The same setup as `interop_wireguard_go.rs`, packaged for the known-answer recorder.)
//!
//! ```text
//!  root ns  veth <a>  fdc7:<id>::1/64  <==>  ns <ns>: veth <b> fdc7:<id>::2/64,
//!                                            wireguard-go iface <wg>, listen 51820
//! ```
#![allow(dead_code)]

use std::net::Ipv6Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn which(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").ok().is_some_and(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0")) == Some(true)
    })
}

pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            s.push(if i <= c.len() { T[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    s
}

/// The namespace, veth pair and wireguard-go process; all removed on drop (also on panic).
pub struct WgPeer {
    pub ns: String,
    pub wgif: String,
    veth: String,
    child: Option<Child>,
    files: Vec<std::path::PathBuf>,
    /// Our side of the veth.
    pub local: Ipv6Addr,
    /// wireguard-go's underlay address (it listens on port 51820).
    pub remote: Ipv6Addr,
}

impl Drop for WgPeer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).stderr(Stdio::null()).status();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Why this machine cannot run a wireguard-go peer, if it cannot.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("not running as root (needs network namespaces)".into());
    }
    for b in ["wireguard-go", "wg", "ip"] {
        if !which(b) {
            return Some(format!("`{b}` not found (Debian packages: wireguard-go wireguard-tools iproute2)"));
        }
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        return Some(format!("/dev/net/tun cannot be opened: {e}"));
    }
    None
}

impl WgPeer {
    /// Create the topology and start wireguard-go (not yet configured).
    pub fn start(tag: &str) -> Result<WgPeer, String> {
        let id = std::process::id() % 0x10000;
        let ns = format!("{tag}{id:04x}");
        let mut p = WgPeer {
            ns: ns.clone(),
            wgif: format!("{tag}w{id:04x}"),
            veth: format!("{tag}{id:04x}a"),
            child: None,
            files: Vec::new(),
            local: format!("fdc8:{id:x}::1").parse().unwrap(),
            remote: format!("fdc8:{id:x}::2").parse().unwrap(),
        };
        let veth_b = format!("{tag}{id:04x}b");
        drop(Command::new("ip").args(["netns", "del", &ns]).stderr(Stdio::null()).status());
        run(&["ip", "netns", "add", &ns])?;
        run(&["ip", "link", "add", &p.veth, "type", "veth", "peer", "name", &veth_b])?;
        run(&["ip", "link", "set", &veth_b, "netns", &ns])?;
        run(&["ip", "-6", "addr", "add", &format!("{}/64", p.local), "dev", &p.veth, "nodad"])?;
        run(&["ip", "link", "set", &p.veth, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &ns, "-6", "addr", "add", &format!("{}/64", p.remote), "dev", &veth_b, "nodad"])?;
        run(&["ip", "-n", &ns, "link", "set", &veth_b, "up"])?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "wireguard-go", "-f", &p.wgif])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn wireguard-go: {e}"))?;
        p.child = Some(child);
        let t0 = Instant::now();
        while run(&["ip", "-n", &ns, "link", "show", &p.wgif]).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("wireguard-go did not create {}", p.wgif));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    /// Write a secret to a file `wg` reads (never onto a command line).
    pub fn secret_file(&mut self, name: &str, secret: &[u8; 32]) -> String {
        let f = std::env::temp_dir().join(format!("{}-{name}", self.ns));
        std::fs::write(&f, b64(secret) + "\n").unwrap();
        self.files.push(f.clone());
        f.to_str().unwrap().to_string()
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["ip", "netns", "exec", &self.ns];
        v.extend_from_slice(args);
        run(&v)
    }
}
