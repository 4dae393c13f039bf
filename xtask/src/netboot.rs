//! Single-node boots that check how the node sets up its fabric keys and clock:
//! * `net_no_hw_entropy_refuses_keys` — a CPU without RDSEED/RDRAND: the node refuses to
//!   create keys (networking off), does not panic;
//! * `net_insecure_entropy_warns` — the same CPU with `net.insecure-entropy` and no
//!   `node.key`: the loud warning, and still no identity (a generated key needs hardware
//!   entropy);
//! * `net_wall_clock_from_rtc` — the node reads the CMOS RTC at boot (not `net.time`, which
//!   is not passed here) and its time is the host's (QEMU's RTC follows the host clock);
//! * `net_bad_cluster_file_rejected` — a cluster file that lists the node itself with port 0
//!   (before the parser checked ports, binding port 0 panicked the kernel): a clear, line-
//!   numbered error, no panic, the node runs on without peers;
//! * `net_rebooted_node_reconnects_at_once` — two nodes linked by a QEMU `dgram` netdev (UDP
//!   on 127.0.0.1, stateless, so a node can be restarted). A boots alone and retransmits its
//!   initiation for 30 s before B comes up and accepts one; then A restarts with the same key
//!   and must have its session back within 15 s of booting again: its initiations carry
//!   RTC-based timestamps later than the one B accepted. (Counted from the epoch they would be
//!   older — 30 s into the first life — and B would drop them as replays.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use catenary_net::cluster::{hex_encode, link_local_from_mac, Cluster, Member, FABRIC_PORT};
use netfabric::Identity;

use crate::qemu::{run_captured, Boot};
use crate::test::Tally;

fn boot(kernel: &Path, cpu: Option<&str>, cmdline: &str, expect: &[&str]) -> Result<crate::qemu::Outcome, String> {
    boot_with(kernel, cpu, cmdline, None, expect)
}

fn boot_with(kernel: &Path, cpu: Option<&str>, cmdline: &str, initrd: Option<&Path>, expect: &[&str]) -> Result<crate::qemu::Outcome, String> {
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.initrd = initrd.map(Path::to_path_buf);
    b.smp = 1;
    b.mem = "256M".into();
    b.cmdline = format!("vm=none {cmdline}");
    if let Some(c) = cpu {
        // A later -cpu replaces the default one.
        b.extra.extend(["-cpu".into(), c.into()]);
    }
    b.extra.extend(["-netdev".into(), "user,id=n0".into(), "-device".into(), "virtio-net-pci,netdev=n0".into()]);
    run_captured(b.command(false)?, expect, &["KERNEL PANIC"], Duration::from_secs(60), false)
}

pub fn tests(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    println!("== node keys and clock (single-node boots)");
    let no_hw = "max,-rdrand,-rdseed";
    let o = boot(kernel, Some(no_hw), "", &["refusing to create keys"])?;
    let keys = o.lines.iter().any(|l| l.contains("fabric address"));
    t.record("net_no_hw_entropy_refuses_keys", o.matched && o.failed_on.is_none() && !keys,
        &format!("(matched {}, keys created {keys}, failed on {:?})", o.matched, o.failed_on));

    // With no node.key the node must make its identity, and that needs hardware entropy even
    // with net.insecure-entropy (docs/boot.md, "Joining"): the warning, then the refusal.
    let o = boot(kernel, Some(no_hw), "net.insecure-entropy", &["*** INSECURE: no hardware entropy", "cannot make its identity"])?;
    let keys = o.lines.iter().any(|l| l.contains("fabric address"));
    t.record("net_insecure_entropy_warns", o.matched && o.failed_on.is_none() && !keys,
        &format!("(matched {}, keys created {keys}, failed on {:?})", o.matched, o.failed_on));

    let o = boot(kernel, None, "", &["wall clock: CMOS RTC reads Unix time "])?;
    let host = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let rtc = o.lines.iter().find_map(|l| {
        let s = l.split("wall clock: CMOS RTC reads Unix time ").nth(1)?;
        s.split_whitespace().next()?.parse::<u64>().ok()
    });
    // Generous: the boot itself takes seconds under TCG on a busy machine.
    let close = rtc.is_some_and(|r| r.abs_diff(host) < 300);
    t.record("net_wall_clock_from_rtc", o.matched && close, &format!("(RTC {rtc:?}, host {host})"));
    bad_cluster_test(t, kernel)?;
    reboot_test(t, kernel)
}

fn bad_cluster_test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let id = Identity::generate(&mut rand_core::OsRng);
    let other = Identity::generate(&mut rand_core::OsRng);
    // Line 3 is this node with port 0.
    let text = format!(
        "catenary-cluster v1\n# name public-key underlay-ipv6 port\nnode me {} fe80::5054:ff:fe12:3456 0\nnode other {} fe80::2 51820\n",
        hex_encode(&id.public_key()),
        hex_encode(&other.public_key())
    );
    let file = crate::tools::out_dir().join("net-bad-cluster.txt");
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let cmdline = format!("net.key={}", hex_encode(&id.secret_bytes()));
    let o = boot_with(kernel, None, &cmdline, Some(&file), &["cluster file rejected (line 3: port 0): no peers", "fabric address"])?;
    t.record("net_bad_cluster_file_rejected", o.matched && o.failed_on.is_none(), &format!("(matched {}, failed on {:?})", o.matched, o.failed_on));
    Ok(())
}

/// One QEMU node whose console lines go to `tx` tagged with `tag`; killed on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_node(kernel: &Path, cluster: &Path, id: &Identity, mac: [u8; 6], ports: (u16, u16), tag: usize, tx: &mpsc::Sender<(usize, String)>) -> Result<Node, String> {
    let mut b = Boot::pvh("q35", kernel.to_path_buf());
    b.smp = 1;
    b.mem = "256M".into();
    // No net.time: the wall clock must come from the RTC.
    b.cmdline = format!("vm=none net.key={}", hex_encode(&id.secret_bytes()));
    b.initrd = Some(cluster.to_path_buf());
    let mac = mac.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
    b.extra.extend([
        "-netdev".into(),
        format!("dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}", ports.0, ports.1),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac}"),
    ]);
    let mut c = b.command(false)?;
    c.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
    let mut child = c.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            if tx.send((tag, String::from_utf8_lossy(&l).trim_end_matches('\r').to_string())).is_err() {
                break;
            }
        }
    });
    Ok(Node(child))
}

/// Wait until node `tag` prints a line containing `pat`; collects every line into `log`.
fn wait_for(rx: &mpsc::Receiver<(usize, String)>, log: &mut Vec<String>, tag: usize, pat: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((n, l)) => {
                let hit = n == tag && l.contains(pat);
                log.push(format!("[{}] {l}", ["A", "B", "A2"][n]));
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

fn reboot_test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let name = "net_rebooted_node_reconnects_at_once";
    // A initiates at boot (nodes initiate to keys that sort after their own).
    let (a, b) = loop {
        let (x, y) = (Identity::generate(&mut rand_core::OsRng), Identity::generate(&mut rand_core::OsRng));
        if x.public_key() < y.public_key() {
            break (x, y);
        }
    };
    let (mac_a, mac_b) = ([0x52, 0x54, 0x00, 0xcb, 0x00, 1], [0x52, 0x54, 0x00, 0xcb, 0x00, 2]);
    let member = |n: &str, id: &Identity, mac| Member { name: n.into(), public_key: id.public_key(), underlay: link_local_from_mac(mac), port: FABRIC_PORT };
    let cluster = Cluster { members: vec![member("node1", &a, mac_a), member("node2", &b, mac_b)], operators: vec![] };
    let file = crate::tools::out_dir().join("net-reboot-cluster.txt");
    std::fs::write(&file, cluster.render()).map_err(|e| e.to_string())?;
    let base = 20_000 + (std::process::id() % 20_000) as u16;
    let (pa, pb) = ((base, base + 1), (base + 1, base));
    let (tx, rx) = mpsc::channel();
    let mut log = Vec::new();
    let established = "fabric: session with";
    // A boots alone and retransmits its initiation every 5 s; B comes up 30 s later and
    // accepts one carrying a timestamp 30 s into A's first life.
    let na = spawn_node(kernel, &file, &a, mac_a, pa, 0, &tx)?;
    let up = wait_for(&rx, &mut log, 0, "wall clock: CMOS RTC", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(30));
    let _nb = spawn_node(kernel, &file, &b, mac_b, pb, 1, &tx)?;
    let first = up && wait_for(&rx, &mut log, 0, established, Duration::from_secs(60));
    // A goes away and boots again: its initiations within 15 s of booting must be accepted.
    // Timestamps counted from the epoch (no wall clock) would be older than the one B saw
    // 30 s into A's first life, and B would drop them all as replays.
    drop(na);
    let _na2 = spawn_node(kernel, &file, &a, mac_a, pa, 2, &tx)?;
    let booted = wait_for(&rx, &mut log, 2, "wall clock: CMOS RTC", Duration::from_secs(60));
    let again = booted && wait_for(&rx, &mut log, 2, established, Duration::from_secs(15));
    let path = crate::tools::out_dir().join("net-reboot.log");
    let _ = std::fs::write(&path, log.join("\n"));
    t.record(name, first && again, &format!("(first session {first}, A booted again {booted}, session again within 15 s {again}; log {})", path.display()));
    Ok(())
}
