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

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use raftbare::{LogPosition, Message};

use crate::desired::{Command, LABEL_CHANGES_MAX};
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
const KIND_HEALTHY: u8 = 15;
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
/// Replicas in one [`Wire::Healthy`]: a node runs at most 32 workloads (`workd`'s
/// `WORKLOADS_MAX`), so one datagram holds them all.
pub const HEALTHY_MAX: usize = 32;

/// One healthy replica in a [`Wire::Healthy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthyReplica {
    /// [`replica_tag`] of its `workd` name.
    pub tag: [u8; 8],
    /// The digest of the `workd` spec it was created from.
    pub spec: [u8; 32],
}

/// Which replica a [`HealthyReplica`] is: the first 8 bytes of the SHA-256 of its `workd`
/// name (`cl-NAME-R`), so that 32 fit in one datagram with their specs.
pub fn replica_tag(name: &str) -> [u8; 8] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut t = [0u8; 8];
    t.copy_from_slice(&d[..8]);
    t
}

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
    /// The cluster replicas that have run on the sender for at least
    /// `catenary_workload::restart::HEALTHY_MS` (10 s) without a restart: each as
    /// [`replica_tag`] of its `workd` name (`cl-NAME-R`: which replica) and the digest of the
    /// `workd` spec it was created from (which spec), at most [`HEALTHY_MAX`]; sent with the
    /// capacity. A node takes a replica down for an update only when the others' nodes report
    /// them healthy (docs/orchestration.md, "A workload's spec changes"). Soft state, never
    /// replicated.
    Healthy { replicas: Vec<HealthyReplica> },
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

mod reader;
mod writer;
pub(crate) use reader::R;
pub(crate) use writer::W;

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
        Wire::Healthy { replicas } => {
            o.u8(KIND_HEALTHY);
            let replicas = &replicas[..replicas.len().min(HEALTHY_MAX)];
            o.u8(replicas.len() as u8);
            for h in replicas {
                o.bytes(&h.tag);
                o.bytes(&h.spec);
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
                && s.health.as_ref().is_none_or(|h| h.cmd.len() <= LIST_MAX && h.cmd.iter().all(ok))
        }
        Command::RemoveWorkload(n) | Command::Assign { workload: n, .. } | Command::Unassign { workload: n, .. } | Command::Released { workload: n, .. } => ok(n),
        Command::SetLabels { changes, .. } => changes.len() <= LABEL_CHANGES_MAX && changes.iter().all(|(k, v)| ok(k) && v.as_ref().is_none_or(ok)),
        _ => true,
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
        KIND_HEALTHY => {
            let n = r.count8(HEALTHY_MAX)?;
            let mut replicas = Vec::with_capacity(n);
            for _ in 0..n {
                let tag = r.array8()?;
                replicas.push(HealthyReplica { tag, spec: r.key()?.0 });
            }
            Wire::Healthy { replicas }
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
mod tests;
