//! The writer: the layout's fields in order, little-endian, each count cut to its bound.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use raftbare::{LogEntry, LogPosition, Message, MessageHeader, NodeId};

use crate::desired::{Command, RestartPolicy, Role, WorkloadSpec, LABEL_CHANGES_MAX};
use crate::placement::Constraint;
use crate::replica::Envelope;

use super::*;

pub(crate) struct W(pub(crate) Vec<u8>);

impl W {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Lengths past the bound are cut: the decoder would refuse them anyway, and a
    /// proposal is checked with [`command_fits`] first.
    pub(crate) fn str(&mut self, s: &str) {
        let b = &s.as_bytes()[..floor_char(s, STRING_MAX)];
        self.u16(b.len() as u16);
        self.bytes(b);
    }
    pub(crate) fn pos(&mut self, p: LogPosition) {
        self.u64(p.term.get());
        self.u64(p.index.get());
    }
    pub(super) fn header(&mut self, h: &MessageHeader) {
        self.u64(h.from.get());
        self.u64(h.term.get());
        self.u64(h.seqno.get());
    }
    pub(crate) fn ids(&mut self, s: &BTreeSet<NodeId>) {
        self.u16(s.len().min(CONFIG_NODES_MAX) as u16);
        for n in s.iter().take(CONFIG_NODES_MAX) {
            self.u64(n.get());
        }
    }
    pub(super) fn command(&mut self, c: &Command) {
        match c {
            Command::PutWorkload(s) => {
                self.u8(1);
                self.spec(s);
            }
            Command::RemoveWorkload(n) => {
                self.u8(2);
                self.str(n);
            }
            Command::AdmitNode(k) => {
                self.u8(3);
                self.bytes(&k.0);
            }
            Command::RemoveNode(k) => {
                self.u8(4);
                self.bytes(&k.0);
            }
            Command::Drain(k) => {
                self.u8(5);
                self.bytes(&k.0);
            }
            Command::Undrain(k) => {
                self.u8(6);
                self.bytes(&k.0);
            }
            Command::SetOperator { key, role } => {
                self.u8(7);
                self.bytes(&key.0);
                self.u8(match role {
                    None => 0,
                    Some(Role::Admin) => 1,
                    Some(Role::Viewer) => 2,
                });
            }
            Command::Assign { workload, replica, node } => {
                self.u8(8);
                self.str(workload);
                self.u32(*replica);
                self.bytes(&node.0);
            }
            Command::Unassign { workload, replica } => {
                self.u8(9);
                self.str(workload);
                self.u32(*replica);
            }
            Command::Released { workload, replica } => {
                self.u8(10);
                self.str(workload);
                self.u32(*replica);
            }
            Command::SetLabels { node, changes } => {
                self.u8(11);
                self.bytes(&node.0);
                let n = changes.len().min(LABEL_CHANGES_MAX);
                self.u8(n as u8);
                for (k, v) in &changes[..n] {
                    self.str(k);
                    match v {
                        Some(v) => {
                            self.u8(1);
                            self.str(v);
                        }
                        None => self.u8(0),
                    }
                }
            }
        }
    }
    pub(crate) fn spec(&mut self, s: &WorkloadSpec) {
        self.str(&s.name);
        self.bytes(&s.image);
        self.u32(s.replicas);
        self.u32(s.vcpus);
        self.u64(s.mem_mib);
        let env = s.env.len().min(LIST_MAX);
        self.u16(env as u16);
        for (k, v) in &s.env[..env] {
            self.str(k);
            self.str(v);
        }
        let args = s.args.len().min(LIST_MAX);
        self.u16(args as u16);
        for a in &s.args[..args] {
            self.str(a);
        }
        match s.restart {
            RestartPolicy::No => self.u8(0),
            RestartPolicy::OnFailure { max_restarts } => {
                self.u8(1);
                self.u32(max_restarts);
            }
            RestartPolicy::Always => self.u8(2),
        }
        let cs = s.constraints.len().min(LIST_MAX);
        self.u16(cs as u16);
        for c in &s.constraints[..cs] {
            match c {
                Constraint::LabelEquals { key, value } => {
                    self.u8(1);
                    self.str(key);
                    self.str(value);
                }
                Constraint::OnNodes(keys) => {
                    self.u8(2);
                    let n = keys.len().min(LIST_MAX);
                    self.u16(n as u16);
                    for k in &keys[..n] {
                        self.bytes(&k.0);
                    }
                }
                Constraint::NotOnNode(k) => {
                    self.u8(3);
                    self.bytes(&k.0);
                }
                Constraint::LabelNotEquals { key, value } => {
                    self.u8(4);
                    self.str(key);
                    self.str(value);
                }
            }
        }
        // the health check: 0 none, 1 then its command and four numbers
        match &s.health {
            None => self.u8(0),
            Some(h) => {
                self.u8(1);
                let n = h.cmd.len().min(LIST_MAX);
                self.u16(n as u16);
                for a in &h.cmd[..n] {
                    self.str(a);
                }
                for v in [h.interval_secs, h.timeout_secs, h.retries, h.start_period_secs] {
                    self.u32(v);
                }
            }
        }
    }
    pub(super) fn envelope(&mut self, e: &Envelope) {
        self.u64(e.from);
        self.u64(e.to);
        self.u8(e.grant as u8);
        self.u64(e.applied);
        match &e.message {
            // a pre-vote is the same message under its own tag (5, 6)
            Message::RequestVoteCall { header, last_position } => {
                self.u8(if e.pre_vote { 5 } else { 1 });
                self.header(header);
                self.pos(*last_position);
            }
            Message::RequestVoteReply { header, vote_granted } => {
                self.u8(if e.pre_vote { 6 } else { 2 });
                self.header(header);
                self.u8(*vote_granted as u8);
            }
            Message::AppendEntriesCall { header, commit_index, entries } => {
                self.u8(3);
                self.header(header);
                self.u64(commit_index.get());
                self.pos(entries.prev_position());
                self.u16(entries.len().min(ENTRIES_MAX) as u16);
                for entry in entries.iter().take(ENTRIES_MAX) {
                    match entry {
                        LogEntry::Command => self.u8(0),
                        LogEntry::Term(t) => {
                            self.u8(1);
                            self.u64(t.get());
                        }
                        LogEntry::ClusterConfig(c) => {
                            self.u8(2);
                            self.ids(&c.voters);
                            self.ids(&c.new_voters);
                            self.ids(&c.non_voters);
                        }
                    }
                }
            }
            Message::AppendEntriesReply { header, last_position } => {
                self.u8(4);
                self.header(header);
                self.pos(*last_position);
            }
        }
        self.u16(e.commands.len().min(ENTRIES_MAX) as u16);
        for (p, c) in e.commands.iter().take(ENTRIES_MAX) {
            self.pos(*p);
            self.command(c);
        }
    }
}

fn floor_char(s: &str, max: usize) -> usize {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}
