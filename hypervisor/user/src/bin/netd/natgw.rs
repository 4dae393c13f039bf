//! `netd`'s side of the NAT64 gateway (docs/nat64.md; protocol `catenary_ipc::natgw`): on the
//! node named by `net.nat64gw=NAME`, packets to `64:ff9b::/96` wait in the node's bounded
//! queue for `natd`, which takes them and hands back its answers in one exchange call through
//! its grant. Only `natd` is served (the badge of the manifest's `natd` capability to our
//! endpoint). No IPv4 here: `natd` translates.

use alloc::vec::Vec;
use catenary_ipc::natgw::*;
use catenary_net::nat64route::Nat64Role;
use catenary_net::Node;
use catenary_user::*;

pub struct NatGw {
    /// The badge `natd`'s calls carry (its manifest index + 1); 0: no `natd` in the manifest.
    badge: u64,
    /// An exchange held until a packet arrives: (reply token, deadline).
    held: Option<(u64, u64)>,
    /// Records from `natd` that did not parse, packets it sent that were refused.
    pub bad_records: u64,
    pub refused: u64,
    logged: bool,
    /// The command line's `nat64.` words (natd's settings), space-separated.
    settings: alloc::string::String,
}

impl NatGw {
    /// Name the gateway from the command line (`net.nat64gw=NAME`), once per `netd` run.
    pub fn new(node: &mut Node, cmdline: &str) -> NatGw {
        let badge = catenary_manifest::index_of(catenary_manifest::SERVICES, "natd").map_or(0, |i| i as u64 + 1);
        if let Some(name) = crate::cmdline_arg(cmdline, "net.nat64gw") {
            match node.set_nat64_gateway(name) {
                Ok(Nat64Role::Gateway) => logf!("net: nat64: this node is the cluster's NAT64 gateway: 64:ff9b::/96 goes to natd"),
                Ok(_) => logf!("net: nat64: 64:ff9b::/96 is routed over the fabric to the gateway {}", name),
                Err(e) => logf!("net: nat64: net.nat64gw={}: {:?}: the prefix has no route", name, e),
            }
        }
        let settings = cmdline.split_whitespace().filter(|w| w.starts_with("nat64.")).collect::<Vec<&str>>().join(" ");
        NatGw { badge, held: None, bad_records: 0, refused: 0, logged: false, settings }
    }

    pub fn is_request(label: u64) -> bool {
        label == LABEL_OPEN || label == LABEL_XFER
    }

    /// A call from `natd`.
    pub fn serve(&mut self, node: &mut Node, m: &Msg) {
        if m.reply == 0 {
            return;
        }
        if self.badge == 0 || m.badge != self.badge {
            let _ = reply(m.reply, ERR_NOT_NATD, [0; 4]);
            return;
        }
        if node.nat64_role() != Nat64Role::Gateway {
            let _ = reply(m.reply, ERR_NOT_GATEWAY, [0; 4]);
            return;
        }
        let Some(g) = grant_of(m.reply).filter(|g| g.writable() && (BUF_MIN..=BUF_MAX).contains(&(g.len() as usize))) else {
            let _ = reply(m.reply, ERR_BAD_GRANT, [0; 4]);
            return;
        };
        if m.label == LABEL_OPEN {
            let n = self.settings.len().min(g.len() as usize);
            g.write(0, &self.settings.as_bytes()[..n]);
            if !self.logged {
                self.logged = true;
                logf!("net: nat64: natd opened the gateway (its settings: {:.120})", self.settings);
            }
            let _ = reply(m.reply, 0, [n as u64, 0, 0, 0]);
            return;
        }
        // an exchange: route what natd sends, then answer with what waits for it
        let out_len = m.words[0] as usize;
        if out_len > g.len() as usize {
            let _ = reply(m.reply, ERR_BAD_RECORDS, [0; 4]);
            return;
        }
        let now = now_ns();
        if out_len > 0 {
            let mut buf = alloc::vec![0u8; out_len];
            g.read(0, &mut buf);
            for r in records(&buf) {
                match r {
                    Ok(p) => {
                        if !node.from_nat64(p.to_vec(), now) {
                            self.refused += 1;
                        }
                    }
                    Err(()) => self.bad_records += 1,
                }
            }
        }
        // the previous held exchange (a restarted natd's predecessor): answered empty
        if let Some((t, _)) = self.held.take() {
            let _ = reply(t, 0, [0, 0, self.refused, node.nat64_counters.queue_full]);
        }
        let wait = m.words[1].min(WAIT_MAX_MS);
        if out_len == 0 && wait > 0 && node.nat64_pending() == 0 {
            self.held = Some((m.reply, now + wait * 1_000_000));
            return;
        }
        self.answer(node, m.reply);
    }

    /// Answer the held exchange when a packet is waiting or its wait is over.
    pub fn poll(&mut self, node: &mut Node) {
        if let Some((t, deadline)) = self.held {
            if node.nat64_pending() > 0 || now_ns() >= deadline {
                self.held = None;
                self.answer(node, t);
            }
        }
    }

    fn answer(&mut self, node: &mut Node, token: u64) {
        let Some(g) = grant_of(token) else {
            let _ = reply(token, ERR_BAD_GRANT, [0; 4]);
            return;
        };
        let cap = (g.len() as usize).min(BUF_MAX);
        let mut buf = alloc::vec![0u8; cap];
        let (mut off, mut n) = (0usize, 0u64);
        while let Some(p) = node.take_nat64() {
            match put_record(&mut buf, off, &p) {
                Some(next) => {
                    off = next;
                    n += 1;
                }
                None if p.len() > PACKET_MAX => {} // cannot be a record: dropped
                None => {
                    node.requeue_nat64(p); // the grant is full: next time
                    break;
                }
            }
        }
        g.write(0, &buf[..off]);
        let _ = reply(token, 0, [off as u64, n, self.refused, node.nat64_counters.queue_full]);
    }
}
