//! The power button's orderly shutdown (docs/orchestration.md, "The power button").
//!
//! The kernel's power task latches an ACPI power-button press (`catenary_ipc::power`); `apid`
//! asks for it on every tick. On a press this node does what `catenary node leave` does
//! (`memberd` announces the leave, so the others show it `left` at once, and the drain of
//! this node is committed, so its replicas start elsewhere), waits until `workd` runs none of
//! the cluster's replicas (they stop as `orchd` applies the drain) for two ticks in a row, at
//! most [`STOP_WAIT_MS`], then asks the kernel to switch the machine off. A node in no cluster
//! (no key of the file or of a run-time admission at its /128) switches off at once; one whose
//! `apid` is still waiting for `netd` is switched off by the kernel's bound. The kernel switches off by itself `SHUTDOWN_GRACE_MS` after the press whatever
//! happens here, so a hung step cannot keep the node up.

use crate::{Node, POWER};
use catenary_api::cluster_state::REPLICA_PREFIX;
use catenary_api::Backend;
use catenary_ipc::power;
use catenary_user::*;
use catenary_workload::proto as wk;
use catenary_workload::status::State;

/// How long the replicas may take to stop after the drain (the workload's stop grace
/// included), well inside the kernel's own 60 s.
const STOP_WAIT_MS: u64 = 30_000;

#[derive(Default)]
pub struct Shutdown {
    /// The press was seen and the leave asked for, at this time (ms).
    since: Option<u64>,
    /// The kernel was asked to switch off (and this machine could not: nothing more to do).
    off_asked: bool,
    /// Ticks in a row on which no cluster replica ran here.
    quiet: u32,
}

/// Whether the power button was pressed (false when the kernel's power endpoint does not
/// answer).
pub fn pressed() -> bool {
    matches!(call_timeout(POWER, power::LABEL_BUTTON, [0; 4], 500), Ok(m) if m.label == 0 && m.words[0] == 1)
}

/// Switch the machine off (returns only if it cannot: logged).
pub fn power_off(why: &str) {
    logf!("apid: power button: {why}: switching the node off");
    match call_timeout(POWER, power::LABEL_POWER_OFF, [0; 4], 2000) {
        Ok(m) if m.label == power::ERR_NO_SOFT_OFF => logf!("apid: the machine cannot switch itself off (no ACPI soft-off): it stays up, out of the cluster"),
        r => logf!("apid: the kernel did not switch the node off ({:?})", r.map(|m| m.label)),
    }
}

/// The cluster replicas `workd` still runs (or is starting or stopping).
fn replicas_up(node: &mut Node) -> Option<usize> {
    match node.workd(wk::Request::List) {
        Ok(wk::Reply::List(l)) => Some(
            l.iter().filter(|w| w.name.starts_with(REPLICA_PREFIX) && matches!(w.state, State::Created | State::Starting | State::Running | State::Stopping)).count(),
        ),
        _ => None,
    }
}

impl Shutdown {
    fn off(&mut self, why: &str) {
        self.off_asked = true;
        power_off(why);
    }

    /// Before this node knows its cluster (no `netd` yet, no cluster file): a press switches
    /// off at once, there is nothing to leave.
    pub fn before_cluster(&mut self) {
        if !self.off_asked && pressed() {
            self.off("the node is in no cluster yet");
        }
    }

    /// One tick: notice a press, leave, wait for the replicas, switch off.
    pub fn tick(&mut self, node: &mut Node, now: u64) {
        if self.off_asked {
            return;
        }
        let Some(since) = self.since else {
            if !pressed() {
                return;
            }
            self.since = Some(now);
            // a member of the cluster file, or a node admitted at run time (`node-XXXXXXXX`)
            let Some(key) = node.own_key() else {
                return self.off("this node is in no cluster");
            };
            let me = node.me;
            let name = node.members.iter().find(|(_, a)| Some(*a) == me).map(|(n, _)| n.clone()).unwrap_or_else(|| catenary_net::admission::short(&key));
            logf!("apid: power button: {name} leaves the cluster and drains before switching off");
            match node.leave_here(key, &name) {
                Ok(_) => logf!("apid: power button: {name} left; its drain is committed"),
                Err(e) => logf!("apid: power button: the leave failed ({} {}): switching off once the replicas here stop", e.code, e.status),
            }
            return;
        };
        let up = replicas_up(node);
        self.quiet = if up == Some(0) { self.quiet + 1 } else { 0 };
        match up {
            // one tick more than needed: the leader learns that this node applied the drain
            // (its Raft replies carry the applied index), so it places the replicas again at
            // once rather than after their lease
            Some(0) if self.quiet >= 2 => self.off(&alloc::format!("no cluster replica runs here any more ({} ms after the press)", now.saturating_sub(since))),
            Some(0) => {}
            n if now.saturating_sub(since) > STOP_WAIT_MS => {
                self.off(&alloc::format!("{} cluster replicas still run {} s after the press", n.map(|n| alloc::format!("{n}")).unwrap_or("(workd did not answer)".into()), STOP_WAIT_MS / 1000))
            }
            _ => {}
        }
    }
}
