//! The orchestration wire format: Raft [`Envelope`]s and the few requests the ring-3
//! orchestration service (`orchd`) sends besides them, one UDP datagram each.
//!
//! A fixed little-endian layout written here (no serde): raftbare's types carry no serde
//! derives, and a hand layout lets every count be checked against a bound *and* against the
//! bytes left before anything is allocated, so decoding hostile bytes never allocates more than
//! the input's size and never panics. Decoding also checks what raftbare itself assumes of a
//! message (term entries that never go back, indexes far from overflow, commands that match the
//! `Command` entries carried, the envelope's sender is the message's): the Raft core trusts its
//! peers (it is not Byzantine-tolerant), and only admitted cluster members' datagrams reach it,
//! but a malformed datagram must still be an error, not a crash.
//!
//! A snapshot is larger than a datagram: it travels in chunks (kinds 8 and 9; kind 11 for a
//! member's answer to a catch-up pull, kind 10), whose layout
//! and transfer protocol are in [`crate::snapshot`].
//!
//! An AppendEntries that would not fit a datagram is cut to a prefix of its entries that does
//! ([`encode_within`]); Raft is indifferent to how many entries a call carries. A single
//! command that cannot fit alone is refused before it is proposed ([`command_fits`]).
use alloc::collections::BTreeSet;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use raftbare::{ClusterConfig, LogEntries, LogEntry, LogIndex, LogPosition, Message, MessageHeader, MessageSeqNo, NodeId, Term};

use crate::desired::{Command, RestartPolicy, Role, WorkloadSpec, LABEL_CHANGES_MAX};
use crate::identity::NodeKey;
use crate::placement::{Constraint, IMAGES_MAX};
use crate::replica::{Envelope, Verdict};
use crate::snapshot::{SnapAck, SnapChunk};

/// The UDP port `orchd` uses on every node's fabric /128.
pub const PORT: u16 = 7300;
/// The first byte of every datagram, then the kind.
pub const MAGIC: u8 = 0xCA;
/// The largest datagram `orchd` sends: netd's `UDP_PAYLOAD_MAX` (the fabric MTU less IPv6 and
/// UDP headers).
pub const DATAGRAM_MAX: usize = 1356;
/// Decoding refuses anything longer (a datagram is at most [`DATAGRAM_MAX`]; the bound here is
/// the codec's own, for other carriers).
pub const WIRE_MAX: usize = 64 * 1024;
/// Entries per AppendEntries (the replica sends at most 64).
pub const ENTRIES_MAX: usize = 256;
/// Nodes per set of a cluster configuration.
pub const CONFIG_NODES_MAX: usize = 64;
/// Terms, indexes, sequence numbers and ids stay below this, so `+ 1` never overflows.
pub const NUMBER_MAX: u64 = 1 << 62;
/// String fields (names, env, args, labels).
pub const STRING_MAX: usize = 4096;
/// env + args entries, constraints, keys in one constraint.
pub const LIST_MAX: usize = 256;

const KIND_RAFT: u8 = 1;
const KIND_PROPOSE: u8 = 2;
const KIND_PROPOSED: u8 = 3;
const KIND_JOIN: u8 = 4;
const KIND_CAPACITY: u8 = 5;
const KIND_WHO_AM_I: u8 = 6;
const KIND_MEMBERS: u8 = 7;
const KIND_SNAP_CHUNK: u8 = 8;
const KIND_SNAP_ACK: u8 = 9;
const KIND_PULL: u8 = 10;
const KIND_VOUCH: u8 = 12;
const KIND_VOUCHED: u8 = 13;
const KIND_STORE: u8 = 14;
/// Whether a datagram is a catch-up pull (kind 10) or a vouch request (kind 12), without
/// decoding it: either is taken by any generation of the member it names
/// (crate::replica::Catchup).
pub fn is_pull(b: &[u8]) -> bool {
    b.len() > 1 && b[0] == MAGIC && (b[1] == KIND_PULL || b[1] == KIND_VOUCH)
}
/// A chunk of a pulled answer ([`crate::snapshot::SnapHead::pulled`]): kind 8's layout.
const KIND_PULLED_CHUNK: u8 = 11;
/// Keys in one [`Wire::Members`] (40 × 32 bytes fit a datagram).
pub const EXTRA_MAX: usize = 40;

/// One datagram between `orchd`s.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // decoded, handled and dropped one at a time
pub enum Wire {
    Raft(Envelope),
    /// A node that is not the leader forwards a write (the API's) to the leader.
    Propose { request: u64, command: Command },
    /// The leader's answer: the command is in its log at `index` (0: refused, not the leader
    /// or the log is full; the asker retries elsewhere).
    Proposed { request: u64, term: u64, index: u64 },
    /// A node that restarted without its storage asks to be a voter again under `id` (its old
    /// id is replaced: docs/orchestration.md, diskless nodes).
    Join { id: u64 },
    /// What the sender can give cluster workloads (its workload service's accounting), sent
    /// every second so the leader's scheduler knows every node's room, and the images its
    /// store holds (at most [`IMAGES_MAX`] digests), so that it prefers holders.
    Capacity { vcpus: u32, mem_mib: u64, images: Vec<[u8; 32]> },
    /// The sender's image store: the room left for one more image (MiB) and each image's size
    /// (MiB; at most [`IMAGES_MAX`]), so that the scheduler places a replica only where its
    /// image fits. A message of its own, not fields of `Capacity`: a node of an older version
    /// drops this kind (an unknown tag) and still reads every capacity, and a node that never
    /// sends it is a node whose room is unknown (never refused for it).
    Store { free_mib: u64, images: Vec<([u8; 32], u32)> },
    /// A node that is not in the cluster file asks a listed member which member it is (it was
    /// admitted at run time: its index comes from the committed admission order).
    WhoAmI,
    /// The answer: the members admitted at run time, in order (they follow the file's).
    Members { extra: Vec<NodeKey> },
    /// One chunk of the leader's snapshot for a follower behind its log (the layout and the
    /// transfer: [`crate::snapshot`]).
    SnapChunk(SnapChunk),
    /// The follower's acknowledgement of a chunk (how much it holds without a gap).
    SnapAck(SnapAck),
    /// A node that has heard no leader for a while asks member `to` for its committed state
    /// (it has applied `applied` entries of the log): the catch-up pull
    /// ([`crate::replica::Catchup`]). A member further ahead answers with its state as a
    /// snapshot, in chunks marked pulled.
    Pull { from: u64, to: u64, applied: u64 },
    /// A node that pulled a state asks member `to` whether its committed state at `position`
    /// has `digest` (SHA-256 of the snapshot's encoding): crate::replica's `vouch` module.
    Vouch { from: u64, to: u64, position: LogPosition, digest: [u8; 32] },
    /// The answer, echoing the question, and the index the member applied.
    Vouched { from: u64, to: u64, position: LogPosition, digest: [u8; 32], verdict: Verdict, applied: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    TooLong,
    Truncated,
    Trailing,
    BadMagic,
    BadTag(u8),
    /// A number past [`NUMBER_MAX`], a count past its bound, a flag that is not 0/1.
    OutOfRange,
    NotUtf8,
    /// The envelope's sender is not the message's, or a grant on a message that is not an
    /// AppendEntries call.
    Inconsistent,
    /// A term entry older than the one before it, or newer than the message's term.
    BadEntries,
    /// The commands do not match the `Command` entries carried.
    CommandMismatch,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// ---------------------------------------------------------------- encoding

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
    fn header(&mut self, h: &MessageHeader) {
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
    fn command(&mut self, c: &Command) {
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
    }
    fn envelope(&mut self, e: &Envelope) {
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

/// The datagram's bytes.
pub fn encode(w: &Wire) -> Vec<u8> {
    let mut o = W(Vec::new());
    o.u8(MAGIC);
    match w {
        Wire::Raft(e) => {
            o.u8(KIND_RAFT);
            o.envelope(e);
        }
        Wire::Propose { request, command } => {
            o.u8(KIND_PROPOSE);
            o.u64(*request);
            o.command(command);
        }
        Wire::Proposed { request, term, index } => {
            o.u8(KIND_PROPOSED);
            o.u64(*request);
            o.u64(*term);
            o.u64(*index);
        }
        Wire::Join { id } => {
            o.u8(KIND_JOIN);
            o.u64(*id);
        }
        Wire::Capacity { vcpus, mem_mib, images } => {
            o.u8(KIND_CAPACITY);
            o.u32(*vcpus);
            o.u64(*mem_mib);
            let images = &images[..images.len().min(IMAGES_MAX)];
            o.u8(images.len() as u8);
            for d in images {
                o.bytes(d);
            }
        }
        Wire::Store { free_mib, images } => {
            o.u8(KIND_STORE);
            o.u64(*free_mib);
            let images = &images[..images.len().min(IMAGES_MAX)];
            o.u8(images.len() as u8);
            for (d, mib) in images {
                o.bytes(d);
                o.u32(*mib);
            }
        }
        Wire::WhoAmI => o.u8(KIND_WHO_AM_I),
        Wire::Members { extra } => {
            o.u8(KIND_MEMBERS);
            let extra = &extra[..extra.len().min(EXTRA_MAX)];
            o.u8(extra.len() as u8);
            for k in extra {
                o.0.extend_from_slice(&k.0);
            }
        }
        Wire::SnapChunk(c) => {
            o.u8(if c.head.pulled { KIND_PULLED_CHUNK } else { KIND_SNAP_CHUNK });
            o.snap_chunk(c);
        }
        Wire::SnapAck(a) => {
            o.u8(KIND_SNAP_ACK);
            o.snap_ack(a);
        }
        Wire::Pull { from, to, applied } => {
            o.u8(KIND_PULL);
            o.u64(*from);
            o.u64(*to);
            o.u64(*applied);
        }
        Wire::Vouch { from, to, position, digest } => {
            o.u8(KIND_VOUCH);
            o.u64(*from);
            o.u64(*to);
            o.pos(*position);
            o.bytes(digest);
        }
        Wire::Vouched { from, to, position, digest, verdict, applied } => {
            o.u8(KIND_VOUCHED);
            o.u64(*from);
            o.u64(*to);
            o.pos(*position);
            o.bytes(digest);
            o.u8(match verdict {
                Verdict::Same => 0,
                Verdict::Differs => 1,
                Verdict::Behind => 2,
                Verdict::Stale => 3,
            });
            o.u64(*applied);
        }
    }
    o.0
}

/// An envelope's bytes in at most `max` bytes: an AppendEntries call that is too long keeps
/// the longest prefix of its entries (and their commands) that fits. `None`: even with no
/// entries it does not fit (cannot happen for `max` ≥ [`DATAGRAM_MAX`] unless a config entry
/// lists more nodes than a datagram holds).
pub fn encode_within(env: &Envelope, max: usize) -> Option<Vec<u8>> {
    let b = encode(&Wire::Raft(env.clone()));
    if b.len() <= max {
        return Some(b);
    }
    let Message::AppendEntriesCall { header, commit_index, entries } = &env.message else { return None };
    // Binary search for the longest prefix that fits (sizes grow with the prefix).
    let (mut lo, mut hi) = (0usize, entries.len());
    let mut best = None;
    while lo <= hi {
        let mid = (lo + hi) / 2;
        let mut e = entries.clone();
        e.truncate(mid);
        let last = e.last_position().index;
        let cut = Envelope {
            message: Message::AppendEntriesCall { header: *header, commit_index: *commit_index, entries: e },
            commands: env.commands.iter().filter(|(p, _)| p.index <= last).cloned().collect(),
            ..env.clone()
        };
        let b = encode(&Wire::Raft(cut));
        if b.len() <= max {
            best = Some(b);
            lo = mid + 1;
        } else if mid == 0 {
            break;
        } else {
            hi = mid - 1;
        }
    }
    best
}

/// Whether `cmd` can travel: an AppendEntries carrying only it, or a forwarded proposal of
/// it, fits a datagram. Checked before proposing, so no entry can stall replication.
pub fn command_fits(cmd: &Command) -> bool {
    let mut w = W(Vec::new());
    w.command(cmd);
    // The AppendEntries around one command entry: magic, kind, from, to, grant, applied, tag, header,
    // commit, prev position, count, entry tag, command count, position.
    const AROUND: usize = 2 + 8 + 8 + 1 + 8 + 1 + 24 + 8 + 16 + 2 + 1 + 2 + 16;
    // And the command's own strings must not have been cut.
    w.0.len() + AROUND <= DATAGRAM_MAX && strings_within(cmd)
}

fn strings_within(cmd: &Command) -> bool {
    let ok = |s: &String| s.len() <= STRING_MAX;
    match cmd {
        Command::PutWorkload(s) => {
            ok(&s.name)
                && s.env.len() <= LIST_MAX
                && s.args.len() <= LIST_MAX
                && s.constraints.len() <= LIST_MAX
                && s.env.iter().all(|(k, v)| ok(k) && ok(v))
                && s.args.iter().all(ok)
                && s.constraints.iter().all(|c| match c {
                    Constraint::LabelEquals { key, value } | Constraint::LabelNotEquals { key, value } => ok(key) && ok(value),
                    Constraint::OnNodes(k) => k.len() <= LIST_MAX,
                    Constraint::NotOnNode(_) => true,
                })
        }
        Command::RemoveWorkload(n) | Command::Assign { workload: n, .. } | Command::Unassign { workload: n, .. } | Command::Released { workload: n, .. } => ok(n),
        Command::SetLabels { changes, .. } => changes.len() <= LABEL_CHANGES_MAX && changes.iter().all(|(k, v)| ok(k) && v.as_ref().is_none_or(ok)),
        _ => true,
    }
}

// ---------------------------------------------------------------- decoding

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
    fn header(&mut self) -> Result<MessageHeader, WireError> {
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
    fn command(&mut self) -> Result<Command, WireError> {
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
        Ok(WorkloadSpec { name, image, replicas, vcpus, mem_mib, env, args, restart, constraints })
    }
    fn envelope(&mut self) -> Result<Envelope, WireError> {
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

/// A datagram's message. Never panics; allocates at most a small multiple of `bytes.len()`.
pub fn decode(bytes: &[u8]) -> Result<Wire, WireError> {
    if bytes.len() > WIRE_MAX {
        return Err(WireError::TooLong);
    }
    let mut r = R { b: bytes };
    if r.u8()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let w = match r.u8()? {
        KIND_RAFT => Wire::Raft(r.envelope()?),
        KIND_PROPOSE => Wire::Propose { request: r.u64()?, command: r.command()? },
        KIND_PROPOSED => Wire::Proposed { request: r.u64()?, term: r.num()?, index: r.num()? },
        KIND_JOIN => Wire::Join { id: r.num()? },
        KIND_CAPACITY => {
            let (vcpus, mem_mib) = (r.u32()?, r.u64()?);
            let n = r.count8(IMAGES_MAX)?;
            let mut images = Vec::with_capacity(n);
            for _ in 0..n {
                images.push(r.key()?.0);
            }
            Wire::Capacity { vcpus, mem_mib, images }
        }
        KIND_STORE => {
            let free_mib = r.u64()?;
            let n = r.count8(IMAGES_MAX)?;
            let mut images = Vec::with_capacity(n);
            for _ in 0..n {
                images.push((r.key()?.0, r.u32()?));
            }
            Wire::Store { free_mib, images }
        }
        KIND_WHO_AM_I => Wire::WhoAmI,
        KIND_MEMBERS => {
            let n = r.count8(EXTRA_MAX)?;
            let mut extra = Vec::with_capacity(n);
            for _ in 0..n {
                extra.push(r.key()?);
            }
            Wire::Members { extra }
        }
        KIND_SNAP_CHUNK => Wire::SnapChunk(r.snap_chunk()?),
        KIND_SNAP_ACK => Wire::SnapAck(r.snap_ack()?),
        KIND_PULLED_CHUNK => {
            let mut c = r.snap_chunk()?;
            c.head.pulled = true;
            Wire::SnapChunk(c)
        }
        KIND_PULL => Wire::Pull { from: r.num()?, to: r.num()?, applied: r.num()? },
        KIND_VOUCH => Wire::Vouch { from: r.num()?, to: r.num()?, position: r.pos()?, digest: r.key()?.0 },
        KIND_VOUCHED => {
            let (from, to, position, digest) = (r.num()?, r.num()?, r.pos()?, r.key()?.0);
            let verdict = match r.u8()? {
                0 => Verdict::Same,
                1 => Verdict::Differs,
                2 => Verdict::Behind,
                3 => Verdict::Stale,
                _ => return Err(WireError::OutOfRange),
            };
            Wire::Vouched { from, to, position, digest, verdict, applied: r.num()? }
        }
        t => return Err(WireError::BadTag(t)),
    };
    if !r.b.is_empty() {
        return Err(WireError::Trailing);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Command, RestartPolicy, WorkloadSpec};
    use alloc::string::ToString;
    use alloc::vec;

    fn spec(name: &str) -> WorkloadSpec {
        WorkloadSpec {
            name: name.to_string(),
            image: [9; 32],
            replicas: 2,
            vcpus: 1,
            mem_mib: 128,
            env: vec![("PORT".to_string(), "80".to_string()), ("ü".to_string(), "ß".to_string())],
            args: vec!["--serve".to_string()],
            restart: RestartPolicy::OnFailure { max_restarts: 3 },
            constraints: vec![
                Constraint::LabelEquals { key: "zone".to_string(), value: "a".to_string() },
                Constraint::OnNodes(vec![NodeKey([1; 32]), NodeKey([2; 32])]),
                Constraint::NotOnNode(NodeKey([3; 32])),
                Constraint::LabelNotEquals { key: "disk".to_string(), value: "hdd".to_string() },
            ],
        }
    }

    fn every_command() -> Vec<Command> {
        let k = NodeKey([5; 32]);
        vec![
            Command::PutWorkload(spec("web")),
            Command::RemoveWorkload("web".to_string()),
            Command::AdmitNode(k),
            Command::RemoveNode(k),
            Command::Drain(k),
            Command::Undrain(k),
            Command::SetOperator { key: k, role: Some(Role::Viewer) },
            Command::SetOperator { key: k, role: None },
            Command::Assign { workload: "web".to_string(), replica: 1, node: k },
            Command::Unassign { workload: "web".to_string(), replica: 1 },
            Command::Released { workload: "web".to_string(), replica: 1 },
            Command::SetLabels { node: k, changes: vec![("zone".to_string(), Some("b".to_string())), ("disk".to_string(), None), ("empty".to_string(), Some(String::new()))] },
        ]
    }

    fn pos(t: u64, i: u64) -> LogPosition {
        LogPosition { term: Term::new(t), index: LogIndex::new(i) }
    }

    fn append(n_commands: usize) -> Envelope {
        let mut entries = LogEntries::new(pos(1, 4));
        entries.push(LogEntry::Term(Term::new(2)));
        let mut config = ClusterConfig::new();
        config.voters.extend([NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
        config.new_voters.extend([NodeId::new(1), NodeId::new(2), NodeId::new(65539)]);
        entries.push(LogEntry::ClusterConfig(config));
        let mut commands = Vec::new();
        let all = every_command();
        for i in 0..n_commands {
            entries.push(LogEntry::Command);
            commands.push((pos(2, 7 + i as u64), all[i % all.len()].clone()));
        }
        let header = MessageHeader { from: NodeId::new(2), term: Term::new(2), seqno: MessageSeqNo::new(77) };
        Envelope { from: 2, to: 3, message: Message::AppendEntriesCall { header, commit_index: LogIndex::new(5), entries }, commands, grant: true, applied: 3, snapshot: None, pre_vote: false }
    }

    #[test]
    fn every_message_and_command_round_trips() {
        let h = MessageHeader { from: NodeId::new(1), term: Term::new(9), seqno: MessageSeqNo::new(3) };
        let mut wires = vec![
            Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteCall { header: h, last_position: pos(8, 40) }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false }),
            Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: h, vote_granted: true }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false }),
            Wire::Raft(Envelope { from: 1, to: 2, message: Message::AppendEntriesReply { header: h, last_position: pos(9, 41) }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false }),
            Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteCall { header: h, last_position: pos(8, 40) }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: true }),
            Wire::Raft(Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: h, vote_granted: false }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: true }),
            Wire::Raft(append(10)),
            Wire::Proposed { request: u64::MAX, term: 4, index: 99 },
            Wire::Join { id: 1 << 16 | 2 },
            Wire::Capacity { vcpus: 4, mem_mib: 1 << 40, images: vec![] },
            Wire::Capacity { vcpus: 4, mem_mib: 1 << 40, images: (0..IMAGES_MAX as u8).map(|i| [i; 32]).collect() },
            Wire::Store { free_mib: 0, images: vec![] },
            Wire::Store { free_mib: u64::MAX, images: vec![([3; 32], 7), ([4; 32], u32::MAX)] },
            Wire::Store { free_mib: 12, images: (0..IMAGES_MAX as u8).map(|i| ([i; 32], i as u32)).collect() },
            Wire::WhoAmI,
            Wire::Members { extra: vec![] },
            Wire::Pull { from: 1 << 16 | 2, to: 3, applied: 41 },
            Wire::Vouch { from: 1 << 16 | 2, to: 3, position: pos(7, 300), digest: [0xab; 32] },
            Wire::Vouched { from: 3, to: 1 << 16 | 2, position: pos(7, 300), digest: [0xab; 32], verdict: Verdict::Same, applied: 299 },
            Wire::Vouched { from: 3, to: 2, position: pos(7, 300), digest: [1; 32], verdict: Verdict::Differs, applied: 300 },
            Wire::Vouched { from: 3, to: 2, position: pos(7, 300), digest: [1; 32], verdict: Verdict::Behind, applied: 3 },
            Wire::Vouched { from: 3, to: 2, position: pos(7, 300), digest: [1; 32], verdict: Verdict::Stale, applied: 1 << 40 },
            Wire::Members { extra: (0..EXTRA_MAX as u8).map(|i| NodeKey([i; 32])).collect() },
        ];
        assert!(encode(&wires[wires.len() - 1]).len() <= DATAGRAM_MAX);
        let full_capacity = wires.iter().find(|w| matches!(w, Wire::Capacity { images, .. } if images.len() == IMAGES_MAX)).unwrap();
        assert!(encode(full_capacity).len() <= DATAGRAM_MAX);
        let mut too_many_images = encode(full_capacity);
        too_many_images[14] = IMAGES_MAX as u8 + 1;
        too_many_images.extend([7u8; 32]);
        assert_eq!(decode(&too_many_images), Err(WireError::OutOfRange));
        let full_store = wires.iter().find(|w| matches!(w, Wire::Store { images, .. } if images.len() == IMAGES_MAX)).unwrap();
        assert!(encode(full_store).len() <= DATAGRAM_MAX);
        let mut too_many_sizes = encode(full_store);
        too_many_sizes[10] = IMAGES_MAX as u8 + 1;
        too_many_sizes.extend([7u8; 36]);
        assert_eq!(decode(&too_many_sizes), Err(WireError::OutOfRange));
        let mut too_many = encode(&Wire::Members { extra: vec![] });
        too_many[2] = EXTRA_MAX as u8 + 1;
        too_many.extend(core::iter::repeat_n(1u8, 32 * (EXTRA_MAX + 1)));
        assert_eq!(decode(&too_many), Err(WireError::OutOfRange));
        for c in every_command() {
            wires.push(Wire::Propose { request: 7, command: c });
        }
        for w in wires {
            let b = encode(&w);
            assert_eq!(decode(&b), Ok(w.clone()), "{w:?}");
            // Every truncation is an error, and so is a trailing byte.
            for n in 0..b.len() {
                assert!(decode(&b[..n]).is_err(), "{w:?} cut at {n}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(WireError::Trailing));
        }
    }

    #[test]
    fn inconsistent_envelopes_are_refused() {
        // Sender not the message's sender.
        let mut e = append(2);
        e.from = 3;
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::Inconsistent));
        // A grant on a reply.
        let h = MessageHeader { from: NodeId::new(1), term: Term::new(9), seqno: MessageSeqNo::new(3) };
        let e = Envelope { from: 1, to: 2, message: Message::AppendEntriesReply { header: h, last_position: pos(9, 41) }, commands: vec![], grant: true, applied: 12, snapshot: None, pre_vote: false };
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::Inconsistent));
        // A command missing, or at the wrong position.
        let mut e = append(3);
        e.commands.pop();
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::CommandMismatch));
        let mut e = append(3);
        e.commands[1].0 = pos(2, 100);
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::CommandMismatch));
        // Commands on a vote.
        let e = Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: h, vote_granted: true }, commands: vec![(pos(1, 1), Command::RemoveWorkload("x".to_string()))], grant: false, applied: 0, snapshot: None, pre_vote: false };
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::CommandMismatch));
        // A term entry newer than the message's term, or going back.
        let mut entries = LogEntries::new(pos(3, 4));
        entries.push(LogEntry::Term(Term::new(2)));
        let hh = MessageHeader { from: NodeId::new(2), term: Term::new(5), seqno: MessageSeqNo::new(1) };
        let e = Envelope { from: 2, to: 1, message: Message::AppendEntriesCall { header: hh, commit_index: LogIndex::new(0), entries }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false };
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::BadEntries));
        let mut entries = LogEntries::new(pos(3, 4));
        entries.push(LogEntry::Term(Term::new(6)));
        let e = Envelope { from: 2, to: 1, message: Message::AppendEntriesCall { header: hh, commit_index: LogIndex::new(0), entries }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false };
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::BadEntries));
        // Numbers near overflow.
        let big = MessageHeader { from: NodeId::new(1), term: Term::new(NUMBER_MAX), seqno: MessageSeqNo::new(3) };
        let e = Envelope { from: 1, to: 2, message: Message::RequestVoteReply { header: big, vote_granted: false }, commands: vec![], grant: false, applied: 0, snapshot: None, pre_vote: false };
        assert_eq!(decode(&encode(&Wire::Raft(e))), Err(WireError::OutOfRange));
    }

    #[test]
    fn long_appends_are_cut_to_a_prefix_that_fits_a_datagram() {
        let e = append(60);
        assert!(encode(&Wire::Raft(e.clone())).len() > DATAGRAM_MAX);
        let b = encode_within(&e, DATAGRAM_MAX).expect("a prefix fits");
        assert!(b.len() <= DATAGRAM_MAX);
        let Ok(Wire::Raft(cut)) = decode(&b) else { panic!("decodes") };
        let (Message::AppendEntriesCall { entries: full, .. }, Message::AppendEntriesCall { entries: part, .. }) = (&e.message, &cut.message) else { panic!() };
        assert!(part.len() >= 3 && part.len() < full.len(), "{} of {}", part.len(), full.len());
        assert_eq!(part.prev_position(), full.prev_position());
        assert_eq!(cut.commands[..], e.commands[..cut.commands.len()]);
        // One more entry would not have fitted.
        let mut more = full.clone();
        more.truncate(part.len() + 1);
        let last = more.last_position().index;
        let bigger = Envelope {
            message: Message::AppendEntriesCall { header: MessageHeader { from: NodeId::new(2), term: Term::new(2), seqno: MessageSeqNo::new(77) }, commit_index: LogIndex::new(5), entries: more },
            commands: e.commands.iter().filter(|(p, _)| p.index <= last).cloned().collect(),
            ..e.clone()
        };
        assert!(encode(&Wire::Raft(bigger)).len() > DATAGRAM_MAX);
    }

    #[test]
    fn oversized_commands_are_refused_before_proposing() {
        let mut s = spec("big");
        assert!(command_fits(&Command::PutWorkload(s.clone())));
        s.args = vec!["x".repeat(1400)];
        assert!(!command_fits(&Command::PutWorkload(s.clone())));
        s.args = vec!["y".repeat(STRING_MAX + 1)];
        assert!(!command_fits(&Command::PutWorkload(s)));
    }

    /// Three replicas that talk only through the codec elect a leader and commit; every
    /// envelope decodes to itself.
    #[test]
    fn replicas_commit_over_the_codec() {
        use crate::replica::{Replica, ReplicaConfig};
        use core::time::Duration;
        let ids = [0u64, 1, 2];
        let mut rs: Vec<Replica> = ids
            .iter()
            .map(|&i| if i == 0 { Replica::bootstrap(i, &ids, ReplicaConfig::default(), 3, Duration::ZERO) } else { Replica::join(i, ReplicaConfig::default(), 3, Duration::ZERO) })
            .collect();
        let mut seen = 0;
        let mut proposed = false;
        for ms in 0..5_000u64 {
            let now = Duration::from_millis(ms);
            for r in rs.iter_mut() {
                r.tick(now);
            }
            let mut out = Vec::new();
            for r in rs.iter_mut() {
                out.extend(r.take_outgoing());
            }
            for e in out {
                let b = encode_within(&e, DATAGRAM_MAX).expect("fits");
                let Ok(Wire::Raft(d)) = decode(&b) else { panic!("decodes") };
                assert_eq!(d, e);
                seen += 1;
                rs[d.to as usize].handle(now, d);
            }
            if !proposed {
                if let Some(l) = rs.iter_mut().find(|r| r.is_leader()) {
                    for c in every_command() {
                        l.propose(now, c).unwrap();
                    }
                    proposed = true;
                }
            }
        }
        assert!(proposed && seen > 100, "{seen} envelopes");
        for r in &rs {
            assert_eq!(r.applied().len(), every_command().len());
            assert_eq!(r.state(), rs[0].state());
        }
    }

    /// Random, bit-flipped and truncated datagrams: an error or a message, never a panic; a
    /// decoded message encodes back to the same bytes.
    #[test]
    fn hostile_datagrams_never_panic() {
        let mut seed = 0x5eed_u64;
        let mut rnd = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let base: Vec<Vec<u8>> = vec![encode(&Wire::Raft(append(8))), encode(&Wire::Propose { request: 1, command: Command::PutWorkload(spec("w")) })];
        let mut ok = 0;
        for i in 0..40_000 {
            let mut b = base[i % base.len()].clone();
            match rnd() % 4 {
                0 => {
                    for _ in 0..1 + rnd() % 4 {
                        let at = (rnd() as usize) % b.len();
                        b[at] ^= 1 << (rnd() % 8);
                    }
                }
                1 => b.truncate((rnd() as usize) % b.len()),
                2 => {
                    let at = (rnd() as usize) % b.len();
                    b[at] = rnd() as u8;
                    let next = (at + 1).min(b.len() - 1);
                    b[next] = 0xff;
                }
                _ => {
                    b = (0..rnd() % 200).map(|_| rnd() as u8).collect();
                    if b.len() > 2 && rnd() % 2 == 0 {
                        b[0] = MAGIC;
                        b[1] = 1 + (rnd() % 4) as u8;
                    }
                }
            }
            if let Ok(w) = decode(&b) {
                assert_eq!(encode(&w), b, "re-encoding differs");
                ok += 1;
            }
        }
        assert!(ok > 0, "some mutations still decode");
    }
}
