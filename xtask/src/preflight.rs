//! What a QEMU test needs before it boots anything, checked in one place: root and
//! `/dev/net/tun` (network namespaces, taps), programs on the PATH, the image tools (umoci, a
//! static busybox), the guest bundle, the `catenary` CLI binary. A test that cannot run here
//! is SKIPPED with what it needs; one whose prerequisite failed to build FAILS.

use crate::test::Tally;
use std::path::Path;
use std::process::Command;

#[derive(Default)]
pub struct Needs<'a> {
    /// Root and `/dev/net/tun`.
    pub root: bool,
    /// Programs on the PATH.
    pub tools: &'a [&'a str],
    /// umoci and /bin/busybox, to build test images (`ociimage::missing_tools`).
    pub images: bool,
    /// build/guest/vmlinux (`cargo xtask guest`, which `cargo xtask test` runs first).
    pub guest: bool,
    /// `cargo build -p catenary` (the operator CLI the test runs).
    pub cli: bool,
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Whether the tests `names` can run. If not, each is skipped (a missing privilege or tool)
/// or failed (the guest bundle or the CLI did not build), and the answer is false.
pub fn ready(t: &mut Tally, names: &[&str], n: &Needs) -> bool {
    let tools_ok = n.tools.iter().all(|b| crate::tools::which(b).is_some());
    let root_ok = !n.root || (is_root() && Path::new("/dev/net/tun").exists());
    if !tools_ok || !root_ok {
        let mut what: Vec<&str> = if n.root { vec!["root", "/dev/net/tun"] } else { vec![] };
        what.extend(n.tools);
        names.iter().for_each(|name| t.skip(name, &format!("needs {}", what.join(", "))));
        return false;
    }
    if let Some(why) = n.images.then(crate::ociimage::missing_tools).flatten() {
        names.iter().for_each(|name| t.skip(name, why));
        return false;
    }
    if let Err(e) = built(n) {
        names.iter().for_each(|name| t.record(name, false, &format!("({e})")));
        return false;
    }
    true
}

/// The prerequisites that are built, not installed: the guest bundle (`n.guest`) and the
/// `catenary` CLI (`n.cli`, built now). `Err` says which one is missing (a failure, not a skip).
pub fn built(n: &Needs) -> Result<(), String> {
    if n.guest && !crate::tools::out_dir().join("guest/vmlinux").exists() {
        return Err("no guest bundle in build/guest: `cargo xtask guest` failed?".into());
    }
    if n.cli {
        let st = Command::new("cargo").args(["build", "--quiet", "-p", "catenary"]).status();
        if !st.is_ok_and(|s| s.success()) {
            return Err("cargo build -p catenary failed".into());
        }
    }
    Ok(())
}
