//! Linux network namespaces on a cluster's switch (a tap through `vde_plug2tap`), with a
//! `wireguard-go` interface for the tests that put a Linux peer or an operator's workstation on
//! the fabric; and the shell helper they use.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

pub(crate) struct NsGuard {
    pub(crate) ns: String,
    pub(crate) plug: Option<Child>,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(p) = &mut self.plug {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A network namespace `ns` on the switch (tap `tap` with MAC `tap_mac` through `vde_plug2tap`,
/// link-local address ready) running `wireguard-go` with interface `wgif`, not yet configured.
/// `g` owns the namespace and the plug; the returned child is `wireguard-go`.
pub(crate) fn wireguard_go_namespace(switch: &Path, ns: &str, tap: &str, wgif: &str, tap_mac: [u8; 6], g: &mut NsGuard) -> Result<Child, String> {
    sh(&["ip", "netns", "add", ns])?;
    sh(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"])?;
    let mac = tap_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    sh(&["ip", "link", "set", tap, "address", &mac])?;
    sh(&["ip", "link", "set", tap, "netns", ns])?;
    let plug = Command::new("ip")
        .args(["netns", "exec", ns, "vde_plug2tap", "-s"])
        .arg(switch)
        .arg(tap)
        .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
        .spawn().map_err(|e| e.to_string())?;
    g.plug = Some(plug);
    sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
    sh(&["ip", "netns", "exec", ns, "ip", "link", "set", tap, "up"])?;
    for _ in 0..40 {
        let a = sh(&["ip", "netns", "exec", ns, "ip", "-6", "addr", "show", "dev", tap])?;
        if a.contains("fe80") && !a.contains("tentative") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", "-f", wgif])
        .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
        .spawn().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    while sh(&["ip", "netns", "exec", ns, "ip", "link", "show", wgif]).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("wireguard-go did not create its interface".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child)
}
