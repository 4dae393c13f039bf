//! The reader: every field checked against its bound and against the bytes left before
//! anything is allocated; what raftbare assumes of a message checked too.

use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;

use raftbare::{ClusterConfig, LogEntries, LogEntry, LogIndex, LogPosition, Message, MessageHeader, MessageSeqNo, NodeId, Term};

use crate::desired::{Command, HealthCheck, RestartPolicy, Role, WorkloadSpec, LABEL_CHANGES_MAX};
use crate::identity::NodeKey;
use crate::placement::Constraint;
use crate::replica::Envelope;

use super::*;

pub(crate) struct R<'a> {
    pub(crate) b: &'a [u8],
}

impl<'a> R<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    /// A list's length as one byte (the datagram messages' lists), refused over `max`
    /// ([`R::count`] is the two-byte form, with a bound by what is left).
    pub(crate) fn count8(&mut self, max: usize) -> Result<usize, WireError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(WireError::OutOfRange);
        }
        Ok(n)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::OutOfRange),
        }
    }
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// A term, index, sequence number or id.
    pub(crate) fn num(&mut self) -> Result<u64, WireError> {
        let v = self.u64()?;
        if v >= NUMBER_MAX {
            return Err(WireError::OutOfRange);
        }
        Ok(v)
    }
    /// A count of items of at least `item` bytes each: bounded by `max` and by what is left.
    pub(crate) fn count(&mut self, max: usize, item: usize) -> Result<usize, WireError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(WireError::OutOfRange);
        }
        if n.saturating_mul(item) > self.b.len() {
            return Err(WireError::Truncated);
        }
        Ok(n)
    }
    pub(crate) fn str(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        if n > STRING_MAX {
            return Err(WireError::OutOfRange);
        }
        let b = self.take(n)?;
        core::str::from_utf8(b).map(String::from).map_err(|_| WireError::NotUtf8)
    }
    pub(crate) fn array8(&mut self) -> Result<[u8; 8], WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(a)
    }
    pub(crate) fn key(&mut self) -> Result<NodeKey, WireError> {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.take(32)?);
        Ok(NodeKey(k))
    }
    pub(crate) fn pos(&mut self) -> Result<LogPosition, WireError> {
        let term = Term::new(self.num()?);
        let index = LogIndex::new(self.num()?);
        Ok(LogPosition { term, index })
    }
    pub(super) fn header(&mut self) -> Result<MessageHeader, WireError> {
        Ok(MessageHeader { from: NodeId::new(self.num()?), term: Term::new(self.num()?), seqno: MessageSeqNo::new(self.num()?) })
    }
    pub(crate) fn ids(&mut self) -> Result<BTreeSet<NodeId>, WireError> {
        let n = self.count(CONFIG_NODES_MAX, 8)?;
        let mut s = BTreeSet::new();
        for _ in 0..n {
            let id = NodeId::new(self.num()?);
            // Strictly increasing: one encoding per set.
            if s.last().is_some_and(|l| *l >= id) {
                return Err(WireError::OutOfRange);
            }
            s.insert(id);
        }
        Ok(s)
    }
    pub(super) fn command(&mut self) -> Result<Command, WireError> {
        Ok(match self.u8()? {
            1 => Command::PutWorkload(self.spec()?),
            2 => Command::RemoveWorkload(self.str()?),
            3 => Command::AdmitNode(self.key()?),
            4 => Command::RemoveNode(self.key()?),
            5 => Command::Drain(self.key()?),
            6 => Command::Undrain(self.key()?),
            7 => {
                let key = self.key()?;
                let role = match self.u8()? {
                    0 => None,
                    1 => Some(Role::Admin),
                    2 => Some(Role::Viewer),
                    t => return Err(WireError::BadTag(t)),
                };
                Command::SetOperator { key, role }
            }
            8 => Command::Assign { workload: self.str()?, replica: self.u32()?, node: self.key()? },
            9 => Command::Unassign { workload: self.str()?, replica: self.u32()? },
            10 => Command::Released { workload: self.str()?, replica: self.u32()? },
            11 => {
                let node = self.key()?;
                let n = self.count8(LABEL_CHANGES_MAX)?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.str()?;
                    let v = if self.flag()? { Some(self.str()?) } else { None };
                    changes.push((k, v));
                }
                Command::SetLabels { node, changes }
            }
            t => return Err(WireError::BadTag(t)),
        })
    }
    pub(crate) fn spec(&mut self) -> Result<WorkloadSpec, WireError> {
        let name = self.str()?;
        let mut image = [0u8; 32];
        image.copy_from_slice(self.take(32)?);
        let (replicas, vcpus, mem_mib) = (self.u32()?, self.u32()?, self.u64()?);
        let n = self.count(LIST_MAX, 4)?;
        let mut env = Vec::new();
        for _ in 0..n {
            env.push((self.str()?, self.str()?));
        }
        let n = self.count(LIST_MAX - env.len(), 2)?;
        let mut args = Vec::new();
        for _ in 0..n {
            args.push(self.str()?);
        }
        let restart = match self.u8()? {
            0 => RestartPolicy::No,
            1 => RestartPolicy::OnFailure { max_restarts: self.u32()? },
            2 => RestartPolicy::Always,
            t => return Err(WireError::BadTag(t)),
        };
        let n = self.count(LIST_MAX, 1)?;
        let mut constraints = Vec::new();
        for _ in 0..n {
            constraints.push(match self.u8()? {
                1 => Constraint::LabelEquals { key: self.str()?, value: self.str()? },
                2 => {
                    let k = self.count(LIST_MAX, 32)?;
                    let mut keys = Vec::new();
                    for _ in 0..k {
                        keys.push(self.key()?);
                    }
                    Constraint::OnNodes(keys)
                }
                3 => Constraint::NotOnNode(self.key()?),
                4 => Constraint::LabelNotEquals { key: self.str()?, value: self.str()? },
                t => return Err(WireError::BadTag(t)),
            });
        }
        let health = match self.u8()? {
            0 => None,
            1 => {
                let n = self.count(LIST_MAX, 2)?;
                let mut cmd = Vec::new();
                for _ in 0..n {
                    cmd.push(self.str()?);
                }
                let (interval_secs, timeout_secs, retries, start_period_secs) = (self.u32()?, self.u32()?, self.u32()?, self.u32()?);
                Some(HealthCheck { cmd, interval_secs, timeout_secs, retries, start_period_secs })
            }
            t => return Err(WireError::BadTag(t)),
        };
        Ok(WorkloadSpec { name, image, replicas, vcpus, mem_mib, env, args, restart, constraints, health })
    }
    pub(super) fn envelope(&mut self) -> Result<Envelope, WireError> {
        let from = self.num()?;
        let to = self.num()?;
        let grant = self.flag()?;
        let applied = self.num()?;
        let tag = self.u8()?;
        let pre_vote = matches!(tag, 5 | 6);
        let message = match tag {
            1 | 5 => Message::RequestVoteCall { header: self.header()?, last_position: self.pos()? },
            2 | 6 => Message::RequestVoteReply { header: self.header()?, vote_granted: self.flag()? },
            3 => {
                let header = self.header()?;
                let commit_index = LogIndex::new(self.num()?);
                let prev = self.pos()?;
                let n = self.count(ENTRIES_MAX, 1)?;
                if prev.term > header.term || prev.index.get() + n as u64 >= NUMBER_MAX {
                    return Err(WireError::BadEntries);
                }
                let mut entries = LogEntries::new(prev);
                let mut term = prev.term;
                for _ in 0..n {
                    entries.push(match self.u8()? {
                        0 => LogEntry::Command,
                        1 => {
                            let t = Term::new(self.num()?);
                            if t < term || t > header.term {
                                return Err(WireError::BadEntries);
                            }
                            term = t;
                            LogEntry::Term(t)
                        }
                        2 => LogEntry::ClusterConfig(ClusterConfig { voters: self.ids()?, new_voters: self.ids()?, non_voters: self.ids()? }),
                        t => return Err(WireError::BadTag(t)),
                    });
                }
                Message::AppendEntriesCall { header, commit_index, entries }
            }
            4 => Message::AppendEntriesReply { header: self.header()?, last_position: self.pos()? },
            t => return Err(WireError::BadTag(t)),
        };
        if message.from().get() != from || (grant && !matches!(message, Message::AppendEntriesCall { .. })) {
            return Err(WireError::Inconsistent);
        }
        let n = self.count(ENTRIES_MAX, 17)?;
        let mut commands = Vec::new();
        for _ in 0..n {
            commands.push((self.pos()?, self.command()?));
        }
        // The commands are exactly those of the Command entries carried, in order.
        let wanted: Vec<LogPosition> = match &message {
            Message::AppendEntriesCall { entries, .. } => {
                entries.iter_with_positions().filter(|(_, e)| matches!(e, LogEntry::Command)).map(|(p, _)| p).collect()
            }
            _ => Vec::new(),
        };
        if wanted.len() != commands.len() || wanted.iter().zip(&commands).any(|(w, (p, _))| w != p) {
            return Err(WireError::CommandMismatch);
        }
        Ok(Envelope { from, to, message, commands, grant, applied, snapshot: None, pre_vote })
    }
}
