//! `net_netd_socket_restart`: what socket clients see when `netd` restarts (docs/networking.md
//! §3c, "Restarts"). node1 (`net.sockrestart=node2`): a ring-3 client with a TCP listener
//! (port 8), a bound UDP socket (port 9) and a connection to node2's echo server, echoing
//! through buffers that do not start on a page; the kernel probe kills node1's `netd` in the
//! middle of the transfer. node2 (`net.tcpecho=7 net.restartpeer=node1`): the echo server,
//! and a peer that connects to the client's port 8 and sends to its port 9 until each echoes.

use crate::cluster::{start, NodeSpec};
use crate::test::Tally;
use std::path::Path;
use std::time::Duration;

pub fn test(t: &mut Tally, kernel: &Path) -> Result<(), String> {
    let mut a = NodeSpec::new(1);
    a.cmdline = "net.sockrestart=node2".into();
    let mut b = NodeSpec::new(2);
    b.cmdline = "net.tcpecho=7 net.restartpeer=node1".into();
    let mut r = start(kernel, &[a, b], "net-netd-socket-restart", &[])?;
    let panicked = |l: &[Vec<String>]| l.iter().flatten().any(|x| x.contains("KERNEL PANIC"));
    let ok = r.wait(Duration::from_secs(600), false, |l| {
        (l[0].iter().any(|x| x.contains("net: sockrestart probe done")) && l[1].iter().any(|x| x.contains("sockrestart peer: ended"))) || panicked(l)
    });
    let log = r.save_logs("net-netd-socket-restart");
    let panic = panicked(&r.lines);
    let find = |n: usize, k: &str| r.lines[n].iter().find(|l| l.contains(k)).cloned().unwrap_or_default();
    let pos = |n: usize, k: &str| r.lines[n].iter().position(|l| l.contains(k));
    let client_line = find(0, "sockrestart probe: client (ring-3 task");
    let client_addr = client_line.split("its task /128 Some(").nth(1).and_then(|x| x.split(')').next()).unwrap_or("?").to_string();
    // item: buffers at any alignment
    let unaligned = r.has(0, "restart client: unaligned buffers: 4/4 round trips of 3000 bytes");
    let misuse = find(0, "restart client: a buffer running past its memory");
    let misuse_ok = misuse.contains("-> Err(Net(BadBuffer)), one wrapping the address space -> Err(Net(BadBuffer))") && misuse.contains("-> Err(Net(BadRequest))");
    // the kill, in the middle of the transfer, and the restart count
    let mid = pos(0, "restart client: told the probe: mid-transfer");
    let killed = pos(0, "sockrestart probe: killed netd (task");
    let in_order = matches!((mid, killed), (Some(m), Some(k)) if m < k);
    let restarted = r.has(0, "(restarts: 1)") && r.lines[0].iter().any(|l| l.contains("supd: netd (task") && l.contains("died: exception 0xff"))
        && r.has(0, "this netd is start 2: its socket handles carry epoch 2");
    // every old socket: Restarted, at once
    let conn = find(0, "restart client: the connection's next operation after the kill");
    let conn_ok = conn.contains("Err(Net(Restarted))");
    let after = find(0, "restart client: after the kill: send on the connection");
    let after_ok = after.matches("Err(Net(Restarted))").count() == 4;
    let poll_ms: Option<u64> = after.split(" in ").last().and_then(|x| x.split(" ms").next()).and_then(|x| x.trim().parse().ok());
    // the peer of the lost connection saw it end
    let peer_lost = r.lines[1].iter().any(|l| l.contains("tcp echo: connection from [") && l.contains(&format!("[{client_addr}]:")) && l.contains("failed:"));
    // reopened, and a new connection and a datagram from node2 served through them
    let reopened = find(0, "restart client: reopened:");
    let reopened_ok = reopened.contains("epoch 2 (was 1)");
    let accepted = r.has(0, "restart client: accepted a connection from [") && r.has(0, "through the new listener's connection");
    let udp = r.has(0, "restart client: echoed a UDP datagram");
    let peer_ok = find(1, "sockrestart peer: ended").contains("Some(3)");
    let code = find(0, "sockrestart probe: the client ended");
    for l in [&client_line, &find(0, "restart client: unaligned"), &misuse, &find(0, "sockrestart probe: killed"), &find(0, "sockrestart probe: netd restarted"), &conn, &after, &reopened,
        &find(0, "restart client: accepted"), &find(0, "restart client: echoed a UDP"), &find(1, "restart peer: TCP echo"), &find(1, "restart peer: UDP echo"), &code] {
        println!("  {}", l.split("] ").last().unwrap_or(l).trim());
    }
    drop(r);
    let base = ok && !panic;
    t.record("net_netd_socket_restart_errors", base && in_order && restarted && conn_ok && after_ok && poll_ms.is_some_and(|ms| ms < 10_000),
        &format!("(killed mid-transfer {in_order}, restarted as start 2 (restarts: 1) {restarted}, the connection's next op Restarted {conn_ok}, send/accept/UDP recv/poll Restarted {after_ok} (poll answered in {poll_ms:?} ms); log {})", log.display()));
    t.record("net_netd_socket_restart_reopen", base && reopened_ok && accepted && udp && peer_ok && peer_lost,
        &format!("(listener and UDP socket opened again with epoch 2 {reopened_ok}, node2's new connection accepted and echoed {accepted}, its datagram echoed {udp}, node2's peer saw both {peer_ok}, node2's echo server saw the old connection fail {peer_lost}; log {})", log.display()));
    t.record("net_netd_socket_restart_unaligned_buffers", base && unaligned && misuse_ok,
        &format!("(4/4 echoes from a buffer 11 bytes before a page end into one 7 bytes into a page {unaligned}, a buffer past its region and a wrapping one BadBuffer, an offset over 65535 BadRequest {misuse_ok}; log {})", log.display()));
    Ok(())
}
