//! Clusters of Catenary nodes in QEMU on one `vde_switch` (Debian `vde2`, no root): starting,
//! watching, killing and restarting them (`Running`), `cargo xtask run --nodes N`, and the
//! registry of the cluster test groups (`tests`; the `net_*` ones are in `nettests.rs`, `bench
//! net` in `netbench.rs`, the Linux namespaces on the switch in `netns.rs`).
//!
//! Every node gets a fresh x25519 key (generated here; netfabric derives the public key and
//! the /64), a MAC `52:54:00:ca:00:K`, hence the link-local underlay address
//! `fe80::5054:ff:feca:K`, and one cpio boot module holding the cluster file (`cluster.txt`)
//! and its own secret key (`node.key`; never on the command line, which the kernel logs).
//! The wall clock and the probes to run are on its kernel command line; the QEMU command
//! lines xtask prints are redacted (`*.key=`) all the same.

use crate::qemu::Boot;
use crate::test::Tally;
use crate::tools::{out_dir, require};
use catenary_net::cluster::{hex_encode, link_local_from_mac, Cluster, Member, FABRIC_PORT};
use netfabric::Identity;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

pub struct NodeSpec {
    pub name: String,
    pub identity: Identity,
    pub mac: [u8; 6],
    /// Whether the node appears in the cluster file the others get.
    pub listed: bool,
    /// Extra kernel command line words.
    pub cmdline: String,
    /// Capture this node's traffic to a pcap file.
    pub pcap: Option<PathBuf>,
    /// Boot with the guest image (vmlinux, initramfs) next to the cluster file in one cpio
    /// module (PVH passes a single module), so the node can run its demo microVM.
    pub guest: bool,
    /// Pause and resume the machine through a QEMU monitor every this many ms (0: never;
    /// `CATENARY_KICK_MS` sets it for every node): each time every vCPU thread leaves QEMU's
    /// execution loop at an arbitrary point, which is what QEMU's I/O thread does now and then.
    pub kick_ms: u64,
    /// More entries for the boot module of a `guest` node (a packed image for `vm.image=1`).
    pub files: Vec<(String, Vec<u8>)>,
    /// A second virtio-net device with this MAC on the same switch: a NAT64 gateway's IPv4
    /// uplink (docs/nat64.md).
    pub uplink: Option<[u8; 6]>,
    /// `KEY=VALUE` labels on its `node` line (placement constraints, docs/orchestration.md).
    pub labels: Vec<String>,
}

impl NodeSpec {
    pub fn new(k: usize) -> NodeSpec {
        NodeSpec {
            name: format!("node{k}"),
            identity: Identity::generate(&mut rand_core::OsRng),
            mac: [0x52, 0x54, 0x00, 0xca, 0x00, k as u8],
            listed: true,
            cmdline: String::new(),
            pcap: None,
            guest: false,
            kick_ms: std::env::var("CATENARY_KICK_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0),
            files: Vec::new(),
            uplink: None,
            labels: Vec::new(),
        }
    }
    pub fn member(&self) -> Member {
        Member { name: self.name.clone(), public_key: self.identity.public_key(), underlay: link_local_from_mac(self.mac), port: FABRIC_PORT }
    }
}

/// The cluster file with each node's labels after its `node` line's port.
fn labelled(text: String, nodes: &[NodeSpec]) -> String {
    text.lines()
        .map(|l| {
            let labels = nodes.iter().find(|n| !n.labels.is_empty() && l.starts_with(&format!("node {} ", n.name))).map(|n| n.labels.join(" "));
            match labels {
                Some(x) => format!("{l} {x}\n"),
                None => format!("{l}\n"),
            }
        })
        .collect()
}

/// The switch: `vde_switch` in the foreground, kept alive by holding its stdin open.
struct Switch {
    child: Child,
    sock: PathBuf,
}

impl Switch {
    fn start(dir: &Path) -> Result<Switch, String> {
        let bin = require("vde_switch", "vde2")?;
        let sock = dir.join("switch");
        let _ = std::fs::remove_dir_all(&sock);
        let child = Command::new(bin)
            .arg("-s")
            .arg(&sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("vde_switch: {e}"))?;
        for _ in 0..50 {
            if sock.join("ctl").exists() {
                return Ok(Switch { child, sock });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("vde_switch did not create its socket".into())
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.sock);
    }
}

/// A running cluster: the switch, the QEMU nodes and their console lines.
pub struct Running {
    pub names: Vec<String>,
    pub lines: Vec<Vec<String>>,
    /// Each node's QEMU command line as xtask prints it (redacted).
    pub shown: Vec<String>,
    children: Vec<Child>,
    /// Which nodes' QEMU has exited (noted once in that node's lines).
    exited: Vec<bool>,
    /// Which nodes xtask killed on purpose ([`Running::kill`]): not reported as stopped.
    killed: Vec<bool>,
    /// How each node was started ([`Running::restart`] starts it again the same way).
    boots: Vec<crate::qemu::Boot>,
    rx: mpsc::Receiver<(usize, String)>,
    /// Kept for the reader threads of restarted nodes; `wait` ends when every node exited.
    tx: mpsc::Sender<(usize, String)>,
    pub dir: PathBuf,
    switch: Switch,
}

/// The line xtask adds to a node's console lines when its QEMU exits while the test still
/// runs (a node must never stop on its own: a host triple fault under `-no-reboot` ends QEMU
/// without a word on the serial console).
pub const NODE_STOPPED: &str = "[xtask] node stopped";
/// The line [`Running::kill`] adds.
pub const NODE_KILLED: &str = "[xtask] node killed";
/// The line [`Running::restart`] adds.
pub const NODE_RESTARTED: &str = "[xtask] node restarted";

impl Running {
    pub fn switch_sock(&self) -> &Path {
        &self.switch.sock
    }

    /// Collect console lines until `done` holds, every node exited, or the deadline.
    pub fn wait(&mut self, deadline: Duration, echo: bool, mut done: impl FnMut(&[Vec<String>]) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if done(&self.lines) {
                return true;
            }
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((i, l)) => {
                    if echo {
                        println!("[{}] {}", self.names[i], l);
                        let _ = std::io::stdout().flush();
                    }
                    self.lines[i].push(l);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // nothing came for a while and every QEMU is gone: nothing more will
                    self.note_exits();
                    if self.exited.iter().all(|e| *e) {
                        return done(&self.lines);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.note_exits();
                    return done(&self.lines);
                }
            }
            self.note_exits();
        }
    }

    /// Note every node that stopped in its lines: its QEMU exited (with its status), or QEMU
    /// logged a triple fault (`-d cpu_reset`; with `CATENARY_RESET_LOG=1` the machine then
    /// resets, and the log holds every CPU's state at that moment).
    fn note_exits(&mut self) {
        for i in 0..self.children.len() {
            if self.exited[i] || self.killed[i] {
                continue;
            }
            let status = self.children[i].try_wait().ok().flatten();
            let qlog = self.dir.join(format!("{}-qemu.log", self.names[i]));
            let text = std::fs::read_to_string(&qlog).unwrap_or_default();
            let triple = text.contains("Triple fault");
            if status.is_none() && !triple {
                continue;
            }
            self.exited[i] = true;
            let what = match status {
                Some(s) => format!("QEMU ended ({s})"),
                None => "QEMU still runs".into(),
            };
            let why = if triple { "QEMU logged a host triple fault" } else { "no triple fault in QEMU's log" };
            self.lines[i].push(format!("{NODE_STOPPED}: {what}; {why}; QEMU's log {}", qlog.display()));
        }
    }

    /// Kill node `i`'s QEMU (SIGKILL: the node gets no chance to say goodbye), as a power
    /// failure would. Noted in its lines as `[xtask] node killed`; not reported by [`Running::exits`].
    pub fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
        self.exited[i] = true;
        self.killed[i] = true;
        self.lines[i].push(NODE_KILLED.into());
    }

    /// Pause node `i`'s QEMU (SIGSTOP): the machine stops at once and answers nothing, without
    /// a reset or an ICMP error to anyone, as a hung machine would. [`Running::kill`] ends it.
    pub fn pause(&mut self, i: usize) {
        let _ = Command::new("kill").args(["-STOP", &self.children[i].id().to_string()]).status();
        self.lines[i].push("[xtask] node paused (SIGSTOP)".into());
    }

    /// Press node `i`'s power button (QEMU monitor `system_powerdown`: an ACPI power-button
    /// event). A node that then switches itself off is noted as stopped, with QEMU's status.
    pub fn power_button(&mut self, i: usize) -> String {
        let sock = self.dir.join(format!("{}.mon", self.names[i]));
        self.lines[i].push("[xtask] power button pressed (QEMU system_powerdown)".into());
        monitor_until_done(&sock, "system_powerdown")
    }

    /// Whether node `i`'s QEMU has ended (killed by xtask, or exited by itself).
    pub fn stopped(&self, i: usize) -> bool {
        self.exited[i]
    }

    /// Start node `i` again with the same key, cluster file and QEMU arguments (a fresh wall
    /// clock on its command line). Its new console lines are appended to `lines[i]` after
    /// `[xtask] node restarted`; returns the index of that line.
    pub fn restart(&mut self, i: usize) -> Result<usize, String> {
        if !self.exited[i] {
            self.kill(i);
        }
        let _ = std::fs::remove_file(self.dir.join(format!("{}.mon", self.names[i])));
        let _ = std::fs::remove_file(self.dir.join(format!("{}-qemu.log", self.names[i])));
        let (child, _) = spawn_node(&self.boots[i], i, &self.tx)?;
        self.children[i] = child;
        self.exited[i] = false;
        self.killed[i] = false;
        self.lines[i].push(NODE_RESTARTED.into());
        Ok(self.lines[i].len() - 1)
    }

    /// Start one more QEMU machine on the switch (`b` must attach to [`Running::switch_sock`]
    /// itself: e.g. a node booted over PXE). Its lines are `lines[returned index]`.
    pub fn add_node(&mut self, name: &str, b: crate::qemu::Boot) -> Result<usize, String> {
        let i = self.children.len();
        let (child, show) = spawn_node(&b, i, &self.tx)?;
        self.names.push(name.to_string());
        self.lines.push(Vec::new());
        self.shown.push(show);
        self.children.push(child);
        self.exited.push(false);
        self.killed.push(false);
        self.boots.push(b);
        Ok(i)
    }

    /// Every live node's CPU registers (QEMU monitor `info registers -a`) into
    /// `<dir>/<node>-cpus.log`, noted in its lines: what a silent node was doing.
    pub fn dump_cpus(&mut self) {
        for i in 0..self.children.len() {
            let sock = self.dir.join(format!("{}.mon", self.names[i]));
            let out = self.dir.join(format!("{}-cpus.log", self.names[i]));
            let text = monitor(&sock, &["info registers -a", "info status"]);
            let _ = std::fs::write(&out, &text);
            let rips: Vec<String> = text.lines().filter_map(|l| l.strip_prefix("RIP=")).map(|l| l.split_whitespace().next().unwrap_or("").to_string()).collect();
            self.lines[i].push(format!("[xtask] CPU state (QEMU monitor): RIPs {rips:?}; {}", out.display()));
        }
    }

    /// The nodes whose QEMU exited while the test ran (with what xtask noted).
    pub fn exits(&self) -> Vec<String> {
        self.lines.iter().flatten().filter(|l| l.starts_with(NODE_STOPPED)).cloned().collect()
    }

    pub fn has(&self, node: usize, pat: &str) -> bool {
        self.lines[node].iter().any(|l| l.contains(pat))
    }

    pub fn save_logs(&self, tag: &str) -> PathBuf {
        let mut s = String::new();
        let mut bad = Vec::new();
        for (i, ls) in self.lines.iter().enumerate() {
            for l in ls {
                s.push_str(&format!("[{}] {}\n", self.names[i], l));
                if UNEXPECTED.iter().any(|k| l.contains(k)) {
                    bad.push(format!("{}: {}", self.names[i], l.trim()));
                }
            }
        }
        let p = out_dir().join(format!("{tag}.log"));
        let _ = std::fs::write(&p, s);
        if let Ok(mut saved) = SAVED.lock() {
            saved.push((p.clone(), bad));
        }
        p
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The node-clock seconds of a serial line (`[   27.426087] …`), if it has them.
pub(crate) fn node_secs(l: &str) -> Option<f64> {
    l.trim_start().strip_prefix('[')?.split(']').next()?.trim().parse().ok()
}

/// Lines no cluster test expects unless it provokes them: a kernel panic, and the kernel
/// killing a ring-3 service as hung (its heartbeat or the spin watchdog). A service killed so
/// is restarted, so a test's own checks can pass over one. (Not `user panic`, which the
/// three-node check also counts: `net_netd_ring3` panics `netd` on purpose.)
const UNEXPECTED: &[&str] = &["KERNEL PANIC", "HEARTBEAT: ring-3 task", "WATCHDOG: ring-3 task"];

/// The groups that provoke a hung-service kill on purpose (and check it themselves).
const PROVOKE_HANGS: &[&str] = &["net_nicd_hung", "net_supd_hung"];

/// Each log [`Running::save_logs`] wrote, with its [`UNEXPECTED`] lines: the group loop in
/// [`tests`] records one result per `net_*` group from them.
static SAVED: std::sync::Mutex<Vec<(PathBuf, Vec<String>)>> = std::sync::Mutex::new(Vec::new());

/// One result for a `net_*` group's serial logs: no kernel panic and no service killed as hung
/// on any node (the three-node `cluster_*` groups check this in their own checks). Nothing
/// when the group saved no log (it did not boot a cluster).
fn record_unexpected(t: &mut Tally, group: &str) {
    let saved = SAVED.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
    if !group.starts_with("net_") || PROVOKE_HANGS.contains(&group) || saved.is_empty() {
        return;
    }
    let bad: Vec<&String> = saved.iter().flat_map(|(_, b)| b).collect();
    let logs: Vec<String> = saved.iter().map(|(p, _)| p.display().to_string()).collect();
    t.record(&format!("{group}_no_panic_or_hung_service"), bad.is_empty(),
        &format!("({} such lines, first {:?}; logs {})", bad.len(), bad.first(), logs.join(", ")));
}

/// The kernel's heartbeat kill of ring-3 task `service` in one node's serial lines, after the
/// line `hang` (the task's own "hanging now" line): the kill's line, whether a register dump
/// follows it, the milliseconds from the hang to the kill on the node's clock (the kill's
/// time is that of the first timed line at or after it: the dump's lines carry none), and
/// the milliseconds from the task's last beat to the kill by the node's timer ticks (from the
/// kill line). The heartbeat counts ticks: a host that does not run the QEMU for a while
/// loses ticks, so the kill can come long after the period by the clock, never before it.
pub(crate) struct HeartbeatKill {
    pub at: Option<usize>,
    pub dump: bool,
    pub ms: Option<f64>,
    pub timer_ms: Option<f64>,
}

impl HeartbeatKill {
    /// The kill came after the period and soon after it. By the clock, from the hang: no
    /// sooner than the period less one look (the last beat came at most one turn before the
    /// hang). By the timer, from the last beat: after the period (a task is doomed at the
    /// first look that finds less than one look's time left: the 51st look after a beat, for
    /// 5 s, so 5,010–5,100 ms when every look counts; one look early would give
    /// 4,910–5,000), and within `slack_ms` after it. The timer's figure is not inflated by
    /// ticks a stalled QEMU lost, as the clock's is; it still counts time the task was ready
    /// and not run (a host that stalls only the hung task's vCPU thread) and a late kill tick.
    pub fn on_time(&self, period_ms: u32, slack_ms: u32) -> bool {
        let p = f64::from(period_ms);
        self.ms.is_some_and(|m| m >= p - 100.0) && self.timer_ms.is_some_and(|m| m > p && m <= p + f64::from(slack_ms))
    }

    /// The two figures, for a test's message and timings line.
    pub fn figures(&self) -> String {
        let f = |m: Option<f64>| m.map(|m| format!("{m} ms")).unwrap_or("never".into());
        format!("hang -> kill {} by the node's clock, last beat -> kill {} by its timer", f(self.ms), f(self.timer_ms))
    }
}

pub(crate) fn heartbeat_kill(lines: &[String], hang: Option<usize>, service: &str, period_ms: u32) -> HeartbeatKill {
    let what = format!("\"{service}\" missed its heartbeat (period {period_ms} ms; last beat ");
    let from = hang.unwrap_or(0);
    let at = lines[from..].iter().position(|l| l.contains("HEARTBEAT: ring-3 task") && l.contains(&what)).map(|p| from + p);
    let dump = at.is_some_and(|p| lines[p..].iter().take(8).any(|x| x.trim_start().starts_with("RIP ")));
    let hang_at = hang.and_then(|p| node_secs(&lines[p]));
    let kill_at = at.and_then(|p| lines[p..].iter().find_map(|x| node_secs(x)));
    let ms = hang_at.zip(kill_at).map(|(a, b)| ((b - a) * 1000.0).round());
    let timer_ms = at.and_then(|p| lines[p].split_once(&what)?.1.split(" ms ago by the timer").next()?.parse().ok());
    HeartbeatKill { at, dump, ms, timer_ms }
}

/// Write the cluster files and start the switch and one QEMU per node.
/// Listed nodes share one cluster file; an unlisted node gets a file listing every node
/// plus itself (it knows the others; they do not know it).
/// `externals` are members that are not QEMU nodes (a Linux WireGuard peer).
pub fn start(kernel: &Path, nodes: &[NodeSpec], tag: &str, externals: &[Member]) -> Result<Running, String> {
    start_with(kernel, nodes, tag, externals, &[])
}

/// [`start`], with `operator` lines (workstations, docs/api.md) in the cluster file.
pub fn start_with(kernel: &Path, nodes: &[NodeSpec], tag: &str, externals: &[Member], operators: &[catenary_net::cluster::Operator]) -> Result<Running, String> {
    let dir = out_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let switch = Switch::start(&dir)?;
    let mut listed = Cluster { members: nodes.iter().filter(|n| n.listed).map(NodeSpec::member).collect(), operators: operators.to_vec() };
    listed.members.extend(externals.iter().cloned());
    let shared = dir.join("cluster.txt");
    std::fs::write(&shared, labelled(listed.render(), nodes)).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    let mut children = Vec::new();
    let mut shown = Vec::new();
    let mut boots = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let cluster_file = if n.listed {
            shared.clone()
        } else {
            let mut c = listed.clone();
            c.members.push(n.member());
            let p = dir.join(format!("cluster-{}.txt", n.name));
            std::fs::write(&p, c.render()).map_err(|e| e.to_string())?;
            p
        };
        let mut b = Boot::pvh("q35", kernel.to_path_buf());
        b.smp = 1;
        b.mem = "256M".into();
        // `net.time=0` is replaced by the wall clock when QEMU starts (`spawn_node`)
        b.cmdline = format!("{}net.time=0 {}", if n.guest { "" } else { "vm=none " }, n.cmdline);
        crate::orchkilltest::check_probe_words(kernel, &b.cmdline)?;
        // one cpio module (PVH passes one): the cluster file, this node's key, and the guest
        // image for a node that runs the demo microVM
        let mut files = Vec::new();
        if n.guest {
            let gdir = out_dir().join("guest");
            for name in ["vmlinux", "initramfs.cpio.gz"] {
                files.push((name.to_string(), std::fs::read(gdir.join(name)).map_err(|e| format!("guest {name}: {e}"))?));
            }
            b.mem = "1G".into();
            b.smp = 2;
            files.extend(n.files.iter().cloned());
        }
        files.push(("cluster.txt".to_string(), std::fs::read(&cluster_file).map_err(|e| e.to_string())?));
        files.push((catenary_net::nodekey::NODE_KEY_FILE.to_string(), (hex_encode(&n.identity.secret_bytes()) + "\n").into_bytes()));
        let bundle = dir.join(format!("bundle-{}.cpio", n.name));
        write_private(&bundle, &crate::build::cpio_newc(&files))?;
        b.initrd = Some(bundle);
        let mac = n.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        b.extra.extend([
            "-netdev".into(),
            format!("vde,id=n0,sock={}", switch.sock.display()),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}"),
        ]);
        if let Some(u) = n.uplink {
            let umac = u.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            b.extra.extend(["-netdev".into(), format!("vde,id=n1,sock={}", switch.sock.display()), "-device".into(), format!("virtio-net-pci,netdev=n1,mac={umac}")]);
        }
        // QEMU's own log of CPU resets: at a host triple fault it holds every CPU's state
        // (the node itself can print nothing then).
        let qlog = dir.join(format!("{}-qemu.log", n.name));
        let _ = std::fs::remove_file(&qlog);
        // (`CATENARY_QEMU_LOG=cpu_reset,int` logs more, e.g. every event QEMU delivers.)
        let what = std::env::var("CATENARY_QEMU_LOG").unwrap_or_else(|_| "cpu_reset".into());
        b.extra.extend(["-d".into(), what, "-D".into(), qlog.display().to_string()]);
        // a monitor on a socket: a test whose node went silent reads its CPUs (`dump_cpus`)
        let mon = dir.join(format!("{}.mon", n.name));
        let _ = std::fs::remove_file(&mon);
        b.extra.extend(["-chardev".into(), format!("socket,id=mon,path={},server=on,wait=off", mon.display())]);
        b.extra.extend(["-mon".into(), "chardev=mon,mode=readline".into()]);
        let kick_ms = n.kick_ms;
        if kick_ms > 0 {
            let sock = dir.join(format!("{}.kick", n.name));
            let _ = std::fs::remove_file(&sock);
            b.extra.extend(["-chardev".into(), format!("socket,id=kick,path={},server=on,wait=off", sock.display())]);
            b.extra.extend(["-mon".into(), "chardev=kick,mode=readline".into()]);
            std::thread::spawn(move || kicker(&sock, kick_ms));
        }
        if std::env::var("CATENARY_RESET_LOG").is_ok_and(|v| v == "1") {
            // let a triple fault reset the machine (after -no-reboot): QEMU then logs the CPUs
            b.extra.extend(["-action".into(), "reboot=reset".into()]);
        }
        if let Some(p) = &n.pcap {
            let _ = std::fs::remove_file(p);
            b.extra.extend(["-object".into(), format!("filter-dump,id=f0,netdev=n0,file={}", p.display())]);
        }
        let (child, show) = spawn_node(&b, i, &tx)?;
        shown.push(show);
        boots.push(b);
        children.push(child);
    }
    Ok(Running { names: nodes.iter().map(|n| n.name.clone()).collect(), lines: vec![Vec::new(); nodes.len()], shown, exited: vec![false; nodes.len()], killed: vec![false; nodes.len()], boots, children, rx, tx, dir, switch })
}

/// Start one node's QEMU (its `net.time=0` set to now) with threads that send its console
/// and stderr lines as `(i, line)`. Returns the child and its redacted command line.
fn spawn_node(b: &crate::qemu::Boot, i: usize, tx: &mpsc::Sender<(usize, String)>) -> Result<(Child, String), String> {
    let mut b = b.clone();
    b.cmdline = b.cmdline.replace("net.time=0", &format!("net.time={}", unix_now()));
    let mut c = b.command(false)?;
    let show = crate::qemu::shown_command(&c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut child = c.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (t1, t2) = (tx.clone(), tx.clone());
    std::thread::spawn(move || {
        for l in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            if t1.send((i, String::from_utf8_lossy(&l).trim_end_matches('\r').to_string())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = t2.send((i, format!("[qemu stderr] {l}")));
        }
    });
    Ok((child, show))
}

/// Run HMP commands on the monitor at `sock`; what it printed.
fn monitor(sock: &Path, cmds: &[&str]) -> String {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let Ok(mut m) = UnixStream::connect(sock) else { return format!("(no monitor at {})", sock.display()) };
    let _ = m.set_read_timeout(Some(Duration::from_millis(1500)));
    let mut out = Vec::new();
    let mut b = [0u8; 65536];
    for c in cmds {
        if m.write_all(format!("{c}\n").as_bytes()).is_err() {
            break;
        }
        while let Ok(n) = m.read(&mut b) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[..n]);
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

/// Run one HMP command and return as soon as the monitor prompts again (the command is done),
/// so a caller timing what follows does not wait out [`monitor`]'s read timeout.
fn monitor_until_done(sock: &Path, cmd: &str) -> String {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let Ok(mut m) = UnixStream::connect(sock) else { return format!("(no monitor at {})", sock.display()) };
    let _ = m.set_read_timeout(Some(Duration::from_millis(1500)));
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    let prompts = |o: &[u8]| String::from_utf8_lossy(o).matches("(qemu)").count();
    // the banner's prompt, then the command, then the prompt after it
    while prompts(&out) < 1 {
        match m.read(&mut b) {
            Ok(n) if n > 0 => out.extend_from_slice(&b[..n]),
            _ => break,
        }
    }
    if m.write_all(format!("{cmd}\n").as_bytes()).is_ok() {
        while prompts(&out) < 2 {
            match m.read(&mut b) {
                Ok(n) if n > 0 => out.extend_from_slice(&b[..n]),
                _ => break,
            }
        }
    }
    String::from_utf8_lossy(&out).replace('\r', "")
}

/// Send `stop` and `cont` to a QEMU monitor every `ms` until QEMU goes away.
fn kicker(sock: &Path, ms: u64) {
    use std::os::unix::net::UnixStream;
    let mut m = None;
    for _ in 0..100 {
        if let Ok(s) = UnixStream::connect(sock) {
            m = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(mut m) = m else { return };
    let mut r = m.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while matches!(std::io::Read::read(&mut r, &mut b), Ok(n) if n > 0) {}
    });
    loop {
        std::thread::sleep(Duration::from_millis(ms));
        if m.write_all(b"stop\ncont\n").is_err() {
            return;
        }
    }
}

/// Write a file only its owner can read (it holds a private key).
pub(crate) fn write_private(p: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    f.write_all(data).map_err(|e| format!("{}: {e}", p.display()))
}

/// The ways a private key could be spelled in a log: hex and base64 (WireGuard's), of the
/// whole key and of its halves (a line break or a truncation could split it).
pub fn key_spellings(secret: &[u8; 32]) -> Vec<String> {
    let mut v = vec![hex_encode(secret), hex_encode(secret).to_uppercase(), b64(secret)];
    v.push(hex_encode(&secret[..16]));
    v.push(hex_encode(&secret[16..]));
    v.push(b64(&secret[..15]));
    v.push(b64(&secret[15..30]));
    v
}

/// Base64 (standard alphabet, padded): how WireGuard tools spell keys.
pub(crate) fn b64(d: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in d.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Which node's key (by name) shows up in the serial logs or the printed QEMU command lines.
pub(crate) fn leaked_keys(r: &Running, nodes: &[(String, [u8; 32])]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, k) in nodes {
        for s in key_spellings(k) {
            let s = s.trim_end_matches('=');
            if r.lines.iter().flatten().chain(r.shown.iter()).any(|l| l.contains(s)) {
                out.push(format!("{name}: {s}"));
            }
        }
    }
    out
}

/// `cargo xtask run --nodes N`: every console with a `[nodeK]` prefix until Ctrl-C.
pub fn run_nodes(n: usize, cmdline: &str, guest: bool, probes: bool) -> Result<(), String> {
    if n == 0 || n > 200 {
        return Err("--nodes must be 1..200".into());
    }
    let kernel = if probes { crate::build::build_kernel_probes()? } else { crate::build::build_kernel(false)? };
    // keys, cluster file and operator config from `catenary cluster new`, as an operator
    // makes a cluster (docs/api.md, "A local cluster")
    let (mut nodes, ops) = crate::operator::new_cluster(n)?;
    // with the guest bundle the nodes run workloads (`catenary run`); `--no-guest`: they answer
    // the API but cannot run anything
    let guest = guest && out_dir().join("guest").join("vmlinux").exists();
    for s in &mut nodes {
        // the bundle is for workloads, not the kernel's own demo VM (unless `-- vm=…` asks)
        let demo = cmdline.split_whitespace().any(|w| w.starts_with("vm="));
        s.cmdline = if guest && !demo { format!("vm=none {cmdline}") } else { cmdline.to_string() };
        s.guest = guest;
    }
    for s in &nodes {
        eprintln!("xtask: {} key {} fabric {} underlay {}", s.name, hex_encode(&s.identity.public_key()), s.identity.node_address(), link_local_from_mac(s.mac));
    }
    let mut r = start_with(&kernel, &nodes, "cluster", &[], &ops)?;
    for (n, c) in r.names.iter().zip(&r.shown) {
        eprintln!("xtask: {n}: {c}");
    }
    eprintln!("xtask: {n} node(s) on vde switch {}; cluster file {}; stop with Ctrl-C",
        r.switch_sock().display(), r.dir.join("cluster.txt").display());
    eprintln!("xtask: a node's power button (it leaves the cluster, drains and switches off): cargo xtask power NODE");
    let _ws = match crate::operator::workstation(r.switch_sock(), &nodes) {
        Ok(w) => {
            if w.is_some() {
                eprintln!("xtask: the workstation's fabric is up (tap {}, wireguard-go {})", crate::operator::TAP, crate::operator::WG);
            }
            w
        }
        Err(e) => {
            eprintln!("xtask: the workstation's fabric could not be set up: {e}");
            None
        }
    };
    let _relay = match crate::operator::cli_relay(r.switch_sock(), &nodes[0]) {
        Ok(rl) => Some(rl),
        Err(e) => {
            eprintln!("xtask: no fabric endpoint for the CLI (needs vde_plug): {e}");
            None
        }
    };
    if !guest {
        eprintln!("xtask: the nodes have no guest bundle (`cargo xtask guest`; or --no-guest): they cannot run workloads");
    }
    eprintln!("xtask: operator config {} (admin key, node1 through the CLI's own fabric session); in a second terminal:", crate::operator::dir().display());
    eprintln!("xtask:   export CATENARY_CONFIG_DIR={}; cargo run -q -p catenary -- nodes", crate::operator::dir().display());
    r.wait(Duration::from_secs(u64::MAX / 4), true, |_| false);
    Ok(())
}

/// Whether `--only` selects any cluster test group (`net_` selects all of them).
pub fn any_selected() -> bool {
    ["net_boot", "net_fabric_echo", "net_outsider", "net_remote_ipc", "net_nicd_restart", "net_nicd_hung", "net_supd_hung", "net_netd_ring3", "net_netd_sockets", "net_netd_tcp", "net_netd_socket_restart", "net_lossy_ipc", "net_rpc_quota", "net_microvm_reaches", "net_microvm_bulk_tcp", "net_microvm_kicked", "net_linux_namespace", "net_wireguard_go", "net_workload_server", "net_operator_wireguard_go", "net_cli_embedded_fabric", "net_operator_api", "net_cli_push", "net_guest_cannot_act_as_node", "net_nat64", "cluster_kill_rejoin", "node_kernel_without_probes", "node_kernel_without_test_programs", "cluster_orchd_killed", "cluster_workd_killed", "cluster_memberd_hung", "cluster_membership", "cluster_pxe_join", "cluster_image_copy", "cluster_drain", "cluster_workload_update", "cluster_graceful_leave", "cluster_snapshot_catchup", "cluster_node_remove"].iter().any(|g| crate::test::selected(g))
}

/// The cluster test groups whose nodes' command lines arm a test probe (only in the probes
/// kernel): `net.ping`/`net.wait`, `net.ipccall`, `net.nicd_restart`, `netd.test_panic` with
/// `net.netdtest`/`net.panicsvc`, `net.udptest`/`net.udpecho`, `net.tcptest`/`net.tcpecho`,
/// `net.sockrestart`/`net.restartpeer`, `net.rpctest`/`net.rpcsvc`/`net.test-loss`,
/// `net.rpcquota`, `workload.client` (the wkctl scenarios).
pub const ARMS_PROBES: &[&str] = &[
    "net_fabric_echo", "net_outsider", "net_remote_ipc", "net_nicd_restart", "net_nicd_hung", "net_supd_hung", "net_netd_ring3", "net_netd_sockets", "net_netd_tcp",
    "net_netd_socket_restart", "net_lossy_ipc", "net_rpc_quota", "net_workload_server", "net_cli_embedded_fabric", "net_nat64",
];

/// The networking tests (named `net_*`).
pub fn tests(t: &mut Tally) -> Result<(), String> {
    println!("== cluster networking tests (QEMU nodes on a vde switch)");
    let kernel = crate::build::build_kernel(false)?;
    // The image checks need neither QEMU nor the switch: the node kernel's bytes against the
    // probes kernel's.
    type Check = (&'static str, fn(&mut Tally, &Path) -> Result<(), String>);
    let checks: &[Check] = &[
        ("node_kernel_without_probes", crate::orchkilltest::test_probes_absent),
        ("node_kernel_without_test_programs", crate::orchkilltest::test_programs_absent),
    ];
    for &(name, f) in checks {
        if crate::test::selected(name) {
            f(t, &kernel)?;
        }
    }
    if crate::tools::which("vde_switch").is_none() {
        t.record("net_cluster", false, "(vde_switch not installed: apt-get install vde2)");
        return Ok(());
    }
    // each group is one cluster boot; `--only net_remote_ipc` (etc.) picks groups
    type Group = (&'static str, fn(&mut Tally, &Path) -> Result<(), String>);
    let groups: &[Group] = &[
        ("net_boot", crate::netboot::tests),
        ("net_fabric_echo", crate::nettests::test_fabric_echo),
        ("net_outsider", crate::nettests::test_outsider),
        ("net_remote_ipc", crate::nettests::test_remote_ipc),
        ("net_nicd_restart", crate::nettests::test_nicd_restart),
        ("net_nicd_hung", crate::nettests::test_nicd_hung),
        ("net_supd_hung", crate::nettests::test_supd_hung),
        ("net_netd_ring3", crate::nettests::test_netd_ring3),
        ("net_netd_sockets", crate::nettests::test_netd_sockets),
        ("net_netd_tcp", crate::nettests::test_netd_tcp),
        ("net_netd_socket_restart", crate::sockrestart::test),
        ("net_lossy_ipc", crate::nettests::test_lossy_ipc),
        ("net_rpc_quota", crate::nettests::test_rpc_quota),
        ("net_microvm_reaches", crate::nettests::test_microvm_net),
        ("net_microvm_bulk_tcp", |t, k| crate::nettests::test_microvm_bulk_tcp(t, k, 0)),
        ("net_microvm_kicked", |t, k| crate::nettests::test_microvm_bulk_tcp(t, k, crate::nettests::KICK_MS)),
        ("net_linux_namespace", crate::nettests::test_linux_ping),
        ("net_wireguard_go", crate::nettests::test_wireguard_go),
        ("net_workload_server", crate::workloadnet::test),
        ("net_operator_wireguard_go", crate::apitest::test_operator_wireguard_go),
        ("net_cli_embedded_fabric", crate::fabriccli::test),
        ("net_operator_api", crate::apitest::test_operator_api),
        ("net_cli_push", crate::pushtest::test),
        ("net_guest_cannot_act_as_node", crate::hostiletest::test),
        ("net_nat64", crate::nat64test::test),
        ("cluster_kill_rejoin", crate::orchtest::test),
        ("cluster_orchd_killed", crate::orchkilltest::test),
        ("cluster_memberd_hung", crate::hungtest::test),
        ("cluster_workd_killed", crate::orchkilltest::test_workd),
        ("cluster_membership", crate::membertest::test),
        ("cluster_graceful_leave", crate::leavetest::test),
        ("cluster_node_remove", crate::removetest::test),
        ("cluster_pxe_join", crate::admissiontest::test),
        ("cluster_image_copy", crate::imagecopytest::test_image_copy),
        ("cluster_drain", crate::imagecopytest::test_drain),
        ("cluster_workload_update", crate::updatetest::test),
        ("cluster_snapshot_catchup", crate::snapshottest::test),
    ];
    // The groups that arm a command-line probe boot the probes kernel (built once, when one
    // of them runs; `build::build_kernel_probes`): the node kernel has none
    // (`node_kernel_without_probes`). The others boot the node kernel as shipped. (The
    // orchd/workd kill tests build it themselves, with their own check of the options.)
    let mut probes: Option<std::path::PathBuf> = None;
    for &(name, f) in groups {
        if crate::test::selected(name) {
            if let Ok(mut saved) = SAVED.lock() {
                saved.clear();
            }
            let ran = if ARMS_PROBES.contains(&name) {
                if probes.is_none() {
                    probes = Some(crate::build::build_kernel_probes()?);
                }
                f(t, probes.as_deref().unwrap_or(&kernel))
            } else {
                f(t, &kernel)
            };
            // (also for a group that gave up: what it saved is checked)
            record_unexpected(t, name);
            ran?;
        }
    }
    Ok(())
}

/// `cargo xtask power NODE`: press the ACPI power button of a node of `cargo xtask run
/// --nodes N` (QEMU `system_powerdown` on its monitor socket, `build/cluster/NODE.mon`).
pub fn cmd_power(rest: &[String]) -> Result<(), String> {
    let [node] = rest else { return Err("usage: cargo xtask power NODE   (a node of `cargo xtask run --nodes N`, e.g. node2)".into()) };
    let sock = out_dir().join("cluster").join(format!("{node}.mon"));
    if !sock.exists() {
        return Err(format!("no monitor socket {} (is `cargo xtask run --nodes N` running, with a node called {node}?)", sock.display()));
    }
    let out = monitor_until_done(&sock, "system_powerdown");
    if out.starts_with("(no monitor") {
        return Err(format!("{}: {out}", sock.display()));
    }
    println!("{node}: power button pressed; its console shows the leave, the drain and `power: powering off (ACPI S5)`");
    Ok(())
}
