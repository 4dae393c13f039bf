//! The scaffold the three-node QEMU cluster tests share (`cluster_kill_rejoin`, `cluster_orchd_killed`,
//! `cluster_graceful_leave`, `cluster_node_remove`, `cluster_snapshot_catchup`,
//! `cluster_image_copy`, `cluster_drain`; `bench cluster`'s QEMU rows use its parts): the
//! prerequisites (skipped or failed in [`crate::preflight`]), three nodes with the guest bundle
//! (and the test image in every store unless asked otherwise) and an admin operator `alice`;
//! the wait for a formed cluster; the admin's workstation (the CLI runner); and at the end the
//! saved logs, "the run went to its end" and "no panic and no hung service on any node".

use crate::apitest::{init_key, Checks, Workstation};
use crate::cluster::{NodeSpec, Running};
use crate::preflight::{ready, Needs};
use crate::test::Tally;
use catenary_net::cluster::{Cluster, Operator};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Programs every three-node run needs (the switch's tap, the workstation's WireGuard).
const TOOLS: [&str; 4] = ["ip", "vde_plug2tap", "wireguard-go", "wg"];

/// How the three nodes differ between tests.
pub(crate) struct Setup {
    /// The test image in every node's store (else every store starts empty).
    pub image_in_stores: bool,
    /// Labels per node (node1 first).
    pub labels: [&'static [&'static str]; 3],
    /// Programs the test needs beyond [`TOOLS`].
    pub tools: &'static [&'static str],
    /// More kernel command line words for every node (after `vm=none`).
    pub cmdline: &'static str,
    /// More words for one node only (index, words).
    pub node_cmdline: Option<(usize, &'static str)>,
    /// A service the kernel is expected to kill as hung on one node (index, service): its
    /// first `WATCHDOG:` line there and its first `HEARTBEAT:` line do not fail "no panic and
    /// no hung service" (a second of either does).
    pub hang_expected: Option<(usize, &'static str)>,
}

impl Setup {
    pub const PLAIN: Setup = Setup { image_in_stores: true, labels: [&[], &[], &[]], tools: &[], cmdline: "", node_cmdline: None, hang_expected: None };
}

/// What a test's body gets: its checks, the running nodes (their console lines in `r.lines`,
/// `r.kill`, `r.restart`, `r.wait`), the admin's workstation (`a.cli(&nodes[i], args)`), the
/// nodes and the test image (its directory and as a CLI argument).
pub(crate) struct ThreeNodes<'a> {
    pub c: &'a mut Checks,
    pub r: &'a mut Running,
    pub a: &'a Workstation,
    pub nodes: &'a [NodeSpec],
    pub image: &'a Path,
    pub img: &'a str,
}

/// Runs the test `name`: prerequisites, boot, the formed cluster, the workstation, then `body`;
/// records the result (a body that returned early, `Err`, fails the test) with the logs saved
/// under `tag`.
pub(crate) fn three_nodes(t: &mut Tally, kernel: &Path, name: &str, tag: &str, setup: &Setup, body: impl FnOnce(ThreeNodes<'_>) -> Result<(), String>) -> Result<(), String> {
    let tools: Vec<&str> = TOOLS.iter().chain(setup.tools).copied().collect();
    // (The guest bundle and the CLI: `boot` checks them, and a failure there fails the test.)
    if !ready(t, &[name], &Needs { root: true, tools: &tools, images: true, ..Needs::default() }) {
        return Ok(());
    }
    let (mut r, nodes, admin_cfg, image) = match boot(kernel, tag, setup) {
        Ok(b) => b,
        Err(e) => {
            t.record(name, false, &format!("({e})"));
            return Ok(());
        }
    };
    let mut c = Checks(Vec::new());
    let res = (|| -> Result<(), String> {
        let ok = formed(&mut r);
        c.check("three nodes: orchd elected a leader over the fabric and admitted the three members", ok, "`apid: serving` and `orchd: leader is` on every node");
        if !ok {
            return Err("no cluster".into());
        }
        let a = workstation(&r, &nodes, &admin_cfg)?;
        let img = image.to_str().ok_or("the image path is not UTF-8")?;
        body(ThreeNodes { c: &mut c, r: &mut r, a: &a, nodes: &nodes, image: &image, img })
    })();
    let log = r.save_logs(tag);
    if let Err(e) = &res {
        println!("  ({e}; log {})", log.display());
    }
    // a run that stopped early (no workstation, no cluster) never passes
    c.check("the run went to its end", res.is_ok(), res.as_ref().err().map(String::as_str).unwrap_or(""));
    // a service the kernel's watchdog killed was hung: as much a failure as a panic
    // (one expected line is allowed: its first match; a second one fails)
    let first = |kind: &str, what: &str| {
        setup.hang_expected.and_then(|(j, svc)| r.lines.get(j).and_then(|ls| ls.iter().position(|l| l.contains(kind) && l.contains(&format!("\"{svc}\" {what}"))).map(|p| (j, p))))
    };
    let expected = [first("WATCHDOG:", "ran"), first("HEARTBEAT:", "missed")];
    let panics: Vec<&String> = r
        .lines
        .iter()
        .enumerate()
        .flat_map(|(i, ls)| {
            ls.iter()
                .enumerate()
                .filter(move |(p, l)| l.contains("user panic") || l.contains("KERNEL PANIC") || ((l.contains("WATCHDOG:") || l.contains("HEARTBEAT:")) && !expected.contains(&Some((i, *p)))))
                .map(|(_, l)| l)
        })
        .collect();
    c.check("no panic and no hung service on any node", panics.is_empty(), &panics.iter().take(3).map(|l| l.as_str()).collect::<Vec<_>>().join(" | "));
    drop(r);
    t.record(name, c.all(), &format!("(log {}{})", log.display(), c.failed()));
    Ok(())
}

/// Why a three-node run cannot happen here, if it cannot (`bench cluster`: a Tally test uses
/// [`three_nodes`], which skips through [`crate::preflight`]).
pub(crate) fn missing() -> Option<String> {
    let root = crate::preflight::is_root();
    let tools = TOOLS.iter().all(|b| crate::tools::which(b).is_some());
    if !root || !tools || !Path::new("/dev/net/tun").exists() {
        return Some(format!("needs root, /dev/net/tun, {}", TOOLS.join(", ")));
    }
    crate::ociimage::missing_tools().map(String::from)
}

/// Three nodes as `setup` says, an admin operator `alice` (config in `DIR/admin`): the running
/// cluster, the nodes, the admin config and the packed test image.
pub(crate) fn boot(kernel: &Path, tag: &str, setup: &Setup) -> Result<(Running, Vec<NodeSpec>, PathBuf, PathBuf), String> {
    crate::preflight::built(&Needs { guest: true, cli: true, ..Needs::default() })?;
    let AdminSetup { image, admin_cfg, ops, .. } = admin_setup(tag)?;
    let mut nodes = vec![NodeSpec::new(1), NodeSpec::new(2), NodeSpec::new(3)];
    for (i, (n, labels)) in nodes.iter_mut().zip(setup.labels).enumerate() {
        n.guest = true;
        let own = setup.node_cmdline.filter(|(j, _)| *j == i).map_or("", |(_, w)| w);
        n.cmdline = format!("vm=none {} {own}", setup.cmdline).trim().to_string();
        n.labels = labels.iter().map(|l| l.to_string()).collect();
        if setup.image_in_stores {
            for f in ["rootfs.squashfs", "config.json", "image.json"] {
                n.files.push((format!("image/{f}"), std::fs::read(image.join(f)).map_err(|e| format!("{f}: {e}"))?));
            }
        }
    }
    let r = crate::cluster::start_with(kernel, &nodes, tag, &[], &ops)?;
    Ok((r, nodes, admin_cfg, image))
}

/// What a cluster test with an operator starts from: its run directory (build/TAG), the packed
/// test image (the workload test's busybox image), and the admin operator `alice`, whose CLI
/// config is `DIR/admin`.
pub(crate) struct AdminSetup {
    pub dir: PathBuf,
    pub image: PathBuf,
    pub admin_cfg: PathBuf,
    /// The cluster file's operators: alice, admin.
    pub ops: [Operator; 1],
}

pub(crate) fn admin_setup(tag: &str) -> Result<AdminSetup, String> {
    let dir = crate::tools::out_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let img_dir = crate::tools::out_dir().join("operator-api-image");
    crate::workloadtest::build(&img_dir)?;
    let image = img_dir.join("out");
    let admin_cfg = dir.join("admin");
    let admin = init_key(&admin_cfg, "alice")?;
    let ops = [Operator { name: "alice".into(), public_key: admin, role: "admin".into() }];
    Ok(AdminSetup { dir, image, admin_cfg, ops })
}

/// Wait until all three serve the API, know a leader and admitted the three members.
pub(crate) fn formed(r: &mut Running) -> bool {
    r.wait(Duration::from_secs(600), false, |l| {
        l.iter().all(|n| n.iter().any(|x| x.contains("apid: serving")) && n.iter().any(|x| x.contains("orchd: leader is")))
            && l.iter().any(|n| n.iter().any(|x| x.contains("orchd: 3 nodes admitted")))
    })
}

/// The admin's workstation (a WireGuard namespace on the switch) for the three nodes.
pub(crate) fn workstation(r: &Running, nodes: &[NodeSpec], admin_cfg: &Path) -> Result<Workstation, String> {
    let dir = admin_cfg.parent().ok_or("no run dir")?;
    let cluster_txt = dir.join("cluster-workstation.txt");
    std::fs::write(&cluster_txt, Cluster { members: nodes.iter().map(NodeSpec::member).collect(), operators: vec![] }.render()).map_err(|e| e.to_string())?;
    let refs: Vec<&NodeSpec> = nodes.iter().collect();
    Workstation::up(r.switch_sock(), dir, "alice", admin_cfg, 1, &cluster_txt, &refs)
}
