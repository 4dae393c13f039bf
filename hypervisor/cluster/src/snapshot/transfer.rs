//! The chunked transfer of a snapshot (Raft §7 InstallSnapshot over datagrams): the chunks
//! and acknowledgements, their wire form (`raft_codec` kinds 8 and 9), the leader's
//! [`SnapshotSender`] and the follower's [`SnapshotReceiver`] (the module docs, [`super`]).
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use raftbare::{LogEntries, LogIndex, LogPosition, Message, MessageHeader, MessageSeqNo, NodeId, Term};
use sha2::{Digest, Sha256};

use super::{decode_snapshot, encode_snapshot, SNAPSHOT_MAX};
use crate::desired::Limits;
use crate::raft_codec::{encode, encode_within, Wire, WireError, DATAGRAM_MAX, NUMBER_MAX, R, W};
use crate::replica::{Envelope, Replica, ReplicaId};

/// Data bytes per chunk: with its 109 bytes of header a chunk is 1,309 bytes, within a
/// datagram ([`DATAGRAM_MAX`], 1,356).
pub const CHUNK_LEN: usize = 1200;
/// Chunks in flight beyond the acknowledged offset, per transfer.
pub const WINDOW: usize = 16;
/// Transfers a leader tracks at once (one per lagging peer; a configuration holds at most 64).
const TRANSFERS_MAX: usize = 64;

/// What every chunk of one transfer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapHead {
    pub from: ReplicaId,
    pub to: ReplicaId,
    /// The leader's number for this transfer (a new one each time it starts sending a
    /// snapshot to a peer from scratch): late duplicates of a finished transfer are told apart
    /// from a new transfer of the same snapshot.
    pub transfer: u64,
    /// The leader's term, commit index and applied count (for the AppendEntries call that
    /// follows the snapshot, see [`Envelope::snapshot`]).
    pub term: u64,
    pub commit_index: u64,
    pub applied: u64,
    /// The last log position the snapshot includes.
    pub last: LogPosition,
    /// The whole snapshot's length and SHA-256.
    pub total: u32,
    pub digest: [u8; 32],
    /// A member's answer to a lagging node's catch-up pull (`raft_codec` kind 11, not 8): the
    /// sender's committed state, not a leader's; `term` and `commit_index` are the sender's and
    /// say nothing to the receiver's Raft core ([`crate::replica::Replica::install_pulled`]).
    pub pulled: bool,
}

/// One chunk of a snapshot (`raft_codec` kind 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapChunk {
    pub head: SnapHead,
    pub offset: u32,
    /// The last chunk (`offset + data.len() == total`).
    pub done: bool,
    pub data: Vec<u8>,
}

/// The follower's answer to a chunk (`raft_codec` kind 9): it holds the first `next` bytes
/// without a gap (`next` = the snapshot's length: assembled and installed, or had it already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapAck {
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub transfer: u64,
    pub term: u64,
    pub last: LogPosition,
    pub digest: [u8; 32],
    pub next: u32,
}

// ---------------------------------------------------------------- chunks and acks on the wire

impl W {
    pub(crate) fn snap_chunk(&mut self, c: &SnapChunk) {
        let h = &c.head;
        for v in [h.from, h.to, h.transfer, h.term, h.commit_index, h.applied] {
            self.u64(v);
        }
        self.pos(h.last);
        self.u32(h.total);
        self.bytes(&h.digest);
        self.u32(c.offset);
        self.u8(c.done as u8);
        let n = c.data.len().min(CHUNK_LEN);
        self.u16(n as u16);
        self.bytes(&c.data[..n]);
    }
    pub(crate) fn snap_ack(&mut self, a: &SnapAck) {
        for v in [a.from, a.to, a.transfer, a.term] {
            self.u64(v);
        }
        self.pos(a.last);
        self.bytes(&a.digest);
        self.u32(a.next);
    }
}

impl R<'_> {
    fn digest(&mut self) -> Result<[u8; 32], WireError> {
        let mut d = [0u8; 32];
        d.copy_from_slice(self.take(32)?);
        Ok(d)
    }
    /// A chunk: every field in range, and offset, length and done flag consistent with the
    /// announced total (so the assembler never has to check them again).
    pub(crate) fn snap_chunk(&mut self) -> Result<SnapChunk, WireError> {
        let (from, to, transfer, term, commit_index, applied) = (self.num()?, self.num()?, self.num()?, self.num()?, self.num()?, self.num()?);
        let last = self.pos()?;
        let total = self.u32()?;
        let digest = self.digest()?;
        let offset = self.u32()?;
        let done = self.flag()?;
        let n = self.u16()? as usize;
        let data = self.take(n)?.to_vec();
        let (t, o) = (total as usize, offset as usize);
        if t == 0 || t > SNAPSHOT_MAX || o % CHUNK_LEN != 0 || o >= t || n != CHUNK_LEN.min(t - o) || done != (o + n == t) {
            return Err(WireError::OutOfRange);
        }
        // A leader's snapshot is of a committed position of its term or an older one.
        if last.term.get() > term || last.index.get() > commit_index {
            return Err(WireError::Inconsistent);
        }
        Ok(SnapChunk { head: SnapHead { from, to, transfer, term, commit_index, applied, last, total, digest, pulled: false }, offset, done, data })
    }
    pub(crate) fn snap_ack(&mut self) -> Result<SnapAck, WireError> {
        let (from, to, transfer, term) = (self.num()?, self.num()?, self.num()?, self.num()?);
        let last = self.pos()?;
        let digest = self.digest()?;
        let next = self.u32()?;
        if next as usize > SNAPSHOT_MAX {
            return Err(WireError::OutOfRange);
        }
        Ok(SnapAck { from, to, transfer, term, last, digest, next })
    }
}

// ---------------------------------------------------------------- the leader's side

struct Cached {
    position: LogPosition,
    bytes: Vec<u8>,
    digest: [u8; 32],
    /// A pulled answer of this snapshot last moved on (sent or acknowledged) then: while that
    /// is within [`PULL_PIN`], later pulled answers send this snapshot, not a newer one, so a
    /// transfer completes while the answerer keeps applying entries.
    pulled_at: Option<Duration>,
}

/// How long a pulled answer's snapshot stays pinned without a window sent or an
/// acknowledgement (the asker re-asks every election timeout, at most 1 s, while it assembles).
pub const PULL_PIN: Duration = Duration::from_secs(3);

struct Transfer {
    head: SnapHead,
    /// Bytes the follower acknowledged holding without a gap, and bytes sent so far.
    acked: u32,
    sent: u32,
    /// What the latest acknowledgement to arrive said: the next re-send starts there, even
    /// below `acked` (a follower that restarted lost what it held).
    last_ack: Option<u32>,
}

/// The leader's side of snapshot transfers: turns a replica's outgoing envelopes into
/// datagrams (a snapshot into a window of chunks), and moves each transfer on as the
/// follower acknowledges.
#[derive(Default)]
pub struct SnapshotSender {
    cache: Option<Cached>,
    transfers: BTreeMap<ReplicaId, Transfer>,
    next_transfer: u64,
    /// Snapshots not sent because their bytes passed [`SNAPSHOT_MAX`].
    pub too_large: u64,
    pub chunks_sent: u64,
    /// Transfers finished: the follower acknowledged the snapshot whole, or a reply to the
    /// leader's AppendEntries showed its log matching past it ([`SnapshotSender::on_matched`]).
    pub completed: u64,
    /// Of [`SnapshotSender::completed`], those finished by the follower's log: its final
    /// acknowledgement was lost (it sends that once) or it caught up another way.
    pub completed_by_log: u64,
}

impl SnapshotSender {
    /// The datagrams for one of the replica's envelopes: a Raft message (an AppendEntries cut
    /// to fit, [`encode_within`]), or, for one that carries a snapshot, the next window of its
    /// chunks (from the acknowledged offset: this is also the retransmission).
    pub fn datagrams(&mut self, env: Envelope) -> Vec<Vec<u8>> {
        self.datagrams_as(env, None)
    }

    /// [`SnapshotSender::datagrams`] for the answer to a catch-up pull
    /// ([`crate::replica::Catchup::Answer`]) at `now`: the same transfer, its chunks marked
    /// pulled. While a pulled answer is pinned ([`PULL_PIN`]) its snapshot is sent instead of
    /// the envelope's newer one (nothing, if the asker has it already): a re-ask resumes where
    /// the asker's acknowledgement says, of the same bytes, whatever was committed meanwhile.
    pub fn pulled_datagrams(&mut self, env: Envelope, asker_has: u64, now: Duration) -> Vec<Vec<u8>> {
        self.datagrams_as(env, Some((asker_has, now)))
    }

    fn datagrams_as(&mut self, env: Envelope, pulled_for: Option<(u64, Duration)>) -> Vec<Vec<u8>> {
        let pulled = pulled_for.is_some();
        let Some(snap) = &env.snapshot else { return encode_within(&env, DATAGRAM_MAX).into_iter().collect() };
        let Message::AppendEntriesCall { header, commit_index, .. } = &env.message else { return Vec::new() };
        let pinned = pulled_for.and_then(|(has, now)| self.cache.as_ref().filter(|c| c.pulled_at.is_some_and(|t| now.saturating_sub(t) < PULL_PIN)).map(|c| (c.position, has)));
        // (Not collapsed into a guard: a pinned older snapshot the asker lacks must not fall
        // through to the next arm, which would replace it.)
        #[allow(clippy::collapsible_match)]
        match pinned {
            // A pulled answer is being sent from an older snapshot: this one gets it too, or
            // nothing if it has it (replacing it would restart the transfer in progress).
            Some((pos, has)) if pos != snap.position => {
                if pos.index.get() <= has {
                    return Vec::new();
                }
            }
            // (A leader's snapshot replaces a pinned one: its followers come first.)
            _ if self.cache.as_ref().is_none_or(|c| c.position != snap.position) => {
                let bytes = encode_snapshot(snap);
                if bytes.len() > SNAPSHOT_MAX {
                    self.too_large += 1;
                    self.cache = None;
                    return Vec::new();
                }
                let digest = Sha256::digest(&bytes).into();
                self.cache = Some(Cached { position: snap.position, bytes, digest, pulled_at: None });
            }
            _ => {}
        }
        let Some(c) = self.cache.as_mut() else { return Vec::new() };
        if let Some((_, now)) = pulled_for {
            c.pulled_at = Some(now);
        }
        let mut head = SnapHead {
            from: env.from,
            to: env.to,
            transfer: 0,
            // (A pulled answer's term says nothing to the asker; a member that installed a
            // pulled state can hold a position of a term newer than its own: the codec wants
            // the head's term at least the position's.)
            term: if pulled { header.term.get().max(c.position.term.get()) } else { header.term.get() },
            commit_index: commit_index.get().max(c.position.index.get()),
            applied: env.applied,
            last: c.position,
            total: c.bytes.len() as u32,
            digest: c.digest,
            pulled,
        };
        match self.transfers.get_mut(&env.to) {
            Some(t) if t.head.from == head.from && (pulled || t.head.term == head.term) && t.head.last == head.last && t.head.digest == head.digest && t.head.pulled == pulled => {
                // The re-send: from where the follower last said it is (found by the
                // simulator, seed 1207: a follower that restarted mid-transfer acknowledged 0
                // for ever while the leader resumed past what it had lost). A pulled one keeps
                // its head whole (the answerer's term may have moved; the asker's assembler
                // tells transfers apart by it).
                head.transfer = t.head.transfer;
                if pulled {
                    head = t.head;
                }
                t.head = head;
                if let Some(n) = t.last_ack.take() {
                    t.acked = n;
                }
                t.sent = t.acked;
            }
            _ => {
                if self.transfers.len() >= TRANSFERS_MAX && !self.transfers.contains_key(&env.to) {
                    self.transfers.pop_first();
                }
                self.next_transfer = (self.next_transfer + 1) % NUMBER_MAX;
                head.transfer = self.next_transfer;
                self.transfers.insert(env.to, Transfer { head, acked: 0, sent: 0, last_ack: None });
            }
        }
        self.window(env.to)
    }

    /// A follower's acknowledgement: the next chunks of its transfer, if any.
    pub fn on_ack(&mut self, ack: &SnapAck) -> Vec<Vec<u8>> {
        self.on_ack_if(ack, true, Duration::ZERO)
    }

    /// [`SnapshotSender::on_ack`] at `now`, moving a leader's transfer on only while `leader`
    /// (a pulled answer's, always; its snapshot stays pinned, [`PULL_PIN`]).
    pub fn on_ack_if(&mut self, ack: &SnapAck, leader: bool, now: Duration) -> Vec<Vec<u8>> {
        let Some(t) = self.transfers.get_mut(&ack.from) else { return Vec::new() };
        let h = t.head;
        if h.to != ack.from || h.from != ack.to || h.transfer != ack.transfer || h.term != ack.term || h.last != ack.last || h.digest != ack.digest {
            return Vec::new();
        }
        // (A final acknowledgement ends the transfer even after this node stopped leading: it
        // is sent once, and nothing else would end it then.)
        if !h.pulled && !leader && ack.next < h.total {
            return Vec::new();
        }
        if h.pulled {
            if let Some(c) = self.cache.as_mut().filter(|c| c.position == h.last) {
                c.pulled_at = Some(now);
            }
        }
        if ack.next >= h.total {
            self.finish(ack.from);
            return Vec::new();
        }
        // Only chunk boundaries the leader sent can be acknowledged.
        if !(ack.next as usize).is_multiple_of(CHUNK_LEN) || ack.next > t.sent {
            return Vec::new();
        }
        t.last_ack = Some(ack.next);
        // An older (reordered) or lower ack moves nothing now; the next re-send starts at the latest.
        if ack.next <= t.acked {
            return Vec::new();
        }
        t.acked = ack.next;
        self.window(ack.from)
    }

    /// A leader's view of `peer` after its AppendEntries reply: its log matches the leader's
    /// up to `matched` (the reply's last position is in the leader's log). A leader transfer
    /// of a snapshot at or below that is over. Without this a lost final acknowledgement
    /// (sent once; a follower whose log caught up gets no more chunks to acknowledge) left
    /// the transfer in the table and uncounted. True if it finished one.
    pub fn on_matched(&mut self, peer: ReplicaId, matched: u64) -> bool {
        let Some(t) = self.transfers.get(&peer) else { return false };
        if t.head.pulled || t.head.last.index.get() > matched {
            return false;
        }
        self.finish(peer);
        self.completed_by_log += 1;
        true
    }

    /// [`Self::on_matched`] for a Raft message that arrived for `replica`, taken before the
    /// replica handles it ([`Replica::follower_matched`] wants the reply not yet handled). Every
    /// place that hands a leader its Raft messages calls this. True if it finished a transfer.
    pub fn on_reply(&mut self, replica: &Replica, env: &Envelope) -> bool {
        match replica.follower_matched(env) {
            Some(matched) => self.on_matched(env.from, matched),
            None => false,
        }
    }

    fn finish(&mut self, peer: ReplicaId) {
        let Some(t) = self.transfers.remove(&peer) else { return };
        let h = t.head;
        self.completed += 1;
        // No other pulled answer of it in progress: the next answer may be newer.
        if h.pulled && !self.transfers.values().any(|t| t.head.pulled && t.head.last == h.last) {
            if let Some(c) = self.cache.as_mut() {
                c.pulled_at = None;
            }
        }
    }

    /// The followers a leader transfer is in progress to (not pulled answers).
    pub fn leader_transfers(&self) -> impl Iterator<Item = (ReplicaId, LogPosition)> + '_ {
        self.transfers.iter().filter(|(_, t)| !t.head.pulled).map(|(p, t)| (*p, t.head.last))
    }

    /// Transfers in progress.
    pub fn in_progress(&self) -> usize {
        self.transfers.len()
    }

    fn window(&mut self, peer: ReplicaId) -> Vec<Vec<u8>> {
        let (Some(c), Some(t)) = (&self.cache, self.transfers.get_mut(&peer)) else { return Vec::new() };
        if c.position != t.head.last {
            // A newer snapshot replaced this one; the replica sends that one next time.
            self.transfers.remove(&peer);
            return Vec::new();
        }
        let total = c.bytes.len();
        let end = (t.acked as usize + WINDOW * CHUNK_LEN).min(total);
        let mut out = Vec::new();
        while (t.sent as usize) < end {
            let off = t.sent as usize;
            let len = CHUNK_LEN.min(total - off);
            let chunk = SnapChunk { head: t.head, offset: off as u32, done: off + len == total, data: c.bytes[off..off + len].to_vec() };
            out.push(encode(&Wire::SnapChunk(chunk)));
            t.sent += len as u32;
        }
        self.chunks_sent += out.len() as u64;
        out
    }
}

// ---------------------------------------------------------------- the follower's side

struct Assembly {
    head: SnapHead,
    buf: Vec<u8>,
    have: Vec<bool>,
    /// Chunks held without a gap from the start.
    next_chunk: usize,
}

/// Identifies one transfer: the same leader (or pulled answerer), term, snapshot and bytes.
fn same(a: &SnapHead, b: &SnapHead) -> bool {
    a.from == b.from && a.to == b.to && a.transfer == b.transfer && a.term == b.term && a.last == b.last && a.total == b.total && a.digest == b.digest && a.pulled == b.pulled
}

/// The follower's side: assembles one snapshot at a time (memory: at most [`SNAPSHOT_MAX`]
/// bytes and one flag per chunk), then checks and decodes it.
#[derive(Default)]
pub struct SnapshotReceiver {
    asm: Option<Assembly>,
    /// The last transfer assembled (its late duplicates are acknowledged whole, not assembled
    /// again).
    done: Option<SnapHead>,
    /// Snapshots assembled whose digest or contents were refused.
    pub refused: u64,
    /// Snapshots assembled, checked and handed to the replica.
    pub assembled: u64,
}

impl SnapshotReceiver {
    /// A chunk addressed to this replica, whose current term is `term`. Returns the
    /// acknowledgement to send (none for an ignored chunk) and, once the snapshot is whole and
    /// checked, the envelope to hand to [`crate::replica::Replica::handle`] (the snapshot with
    /// the leader's empty AppendEntries call right after it).
    pub fn on_chunk(&mut self, c: SnapChunk, term: u64, limits: &Limits) -> (Option<SnapAck>, Option<Envelope>) {
        let h = c.head;
        // Stale: a leader of an older term. (A pulled answer's term is its sender's, not a
        // leader's: only its position counts.)
        if !h.pulled && h.term < term {
            return (None, None);
        }
        let ack = |next: u32| Some(SnapAck { from: h.to, to: h.from, transfer: h.transfer, term: h.term, last: h.last, digest: h.digest, next });
        if self.done.as_ref().is_some_and(|d| same(d, &h)) {
            return (ack(h.total), None);
        }
        // A late chunk of a snapshot older than the one assembled last: not assembled again.
        // (A pulled one: not at or below the last one from a leader or from the same member,
        // but another member's may be older: an assembled pulled state is not installed until
        // other members vouch for it, crate::replica's `vouch`, so one forged far ahead must
        // not hold back the real one. A leader's is compared with the last leader's only, so
        // that a pulled install never holds a leader's transfer back.)
        if self.done.as_ref().is_some_and(|d| {
            if h.pulled {
                (!d.pulled || d.from == h.from || (d.last == h.last && d.digest == h.digest)) && h.last.index <= d.last.index
            } else {
                !d.pulled && (h.term < d.term || (h.term == d.term && h.last.index < d.last.index))
            }
        }) {
            return (None, None);
        }
        let fresh = match &self.asm {
            Some(a) if same(&a.head, &h) => false,
            // A leader's replaces a pulled assembly (which may have lost its sender); a pulled
            // one replaces any assembly only with a later snapshot (a leader's assembly may be
            // stale: its leader cut off mid-transfer).
            Some(a) if !h.pulled && a.head.pulled => true,
            // (an older pulled answer from another member replaces a pulled assembly: see above)
            Some(a) if h.pulled && h.last.index <= a.last_index() && (!a.head.pulled || a.head.from == h.from || (a.head.last == h.last && a.head.digest == h.digest)) => return (None, None),
            Some(_) if h.pulled => true,
            // Only a newer term, or a later snapshot of the same term, replaces an assembly.
            Some(a) if h.term < a.head.term || (h.term == a.head.term && h.last.index <= a.last_index()) => return (None, None),
            _ => true,
        };
        if fresh {
            // The codec bounds total by SNAPSHOT_MAX (checked again: the buffer is that big).
            let total = (h.total as usize).min(SNAPSHOT_MAX);
            self.asm = Some(Assembly { head: h, buf: vec![0; total], have: vec![false; total.div_ceil(CHUNK_LEN)], next_chunk: 0 });
        }
        let Some(a) = self.asm.as_mut() else { return (None, None) };
        let (off, i) = (c.offset as usize, c.offset as usize / CHUNK_LEN);
        // The codec checked offset and length against the total; checked again, cheaply.
        if i >= a.have.len() || off + c.data.len() > a.buf.len() {
            return (None, None);
        }
        if !a.have[i] {
            a.buf[off..off + c.data.len()].copy_from_slice(&c.data);
            a.have[i] = true;
        }
        // A later chunk of the same transfer may carry a newer commit index.
        a.head.commit_index = a.head.commit_index.max(h.commit_index);
        a.head.applied = a.head.applied.max(h.applied);
        while a.next_chunk < a.have.len() && a.have[a.next_chunk] {
            a.next_chunk += 1;
        }
        if a.next_chunk < a.have.len() {
            return (ack((a.next_chunk * CHUNK_LEN) as u32), None);
        }
        // Whole: check, decode, and only then hand it over.
        let Some(a) = self.asm.take() else { return (None, None) };
        let digest: [u8; 32] = Sha256::digest(&a.buf).into();
        let snap = match decode_snapshot(&a.buf, limits) {
            Ok(s) if digest == a.head.digest && s.position == a.head.last => s,
            _ => {
                self.refused += 1;
                return (None, None);
            }
        };
        self.done = Some(a.head);
        self.assembled += 1;
        let hd = a.head;
        let message = Message::AppendEntriesCall {
            header: MessageHeader { from: NodeId::new(hd.from), term: Term::new(hd.term), seqno: MessageSeqNo::new(0) },
            commit_index: LogIndex::new(hd.commit_index),
            entries: LogEntries::new(hd.last),
        };
        let env = Envelope { from: hd.from, to: hd.to, message, commands: Vec::new(), grant: false, applied: hd.applied, snapshot: Some(snap), pre_vote: false };
        (ack(hd.total), Some(env))
    }

    /// The replica dropped or refused the last pulled state assembled (it was not installed:
    /// not vouched for, crate::replica's `vouch`) if that is past `applied`, what it applied:
    /// forget it, so the same state can be assembled again when a member sends it again.
    pub fn forget_pulled_above(&mut self, applied: u64) {
        if self.done.as_ref().is_some_and(|d| d.pulled && d.last.index.get() > applied) {
            self.done = None;
        }
    }

    /// Bytes held by the assembly in progress (its buffer), for the bound tests.
    pub fn buffered(&self) -> usize {
        self.asm.as_ref().map_or(0, |a| a.buf.len())
    }
}

impl Assembly {
    fn last_index(&self) -> LogIndex {
        self.head.last.index
    }
}

const _: () = assert!(NUMBER_MAX > SNAPSHOT_MAX as u64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_codec::decode;
    use crate::replica::Snapshot;
    use crate::snapshot::fixtures::{rnd, snap};


    fn env_with(s: Snapshot, to: ReplicaId) -> Envelope {
        let message = Message::AppendEntriesCall {
            header: MessageHeader { from: NodeId::new(1), term: Term::new(4), seqno: MessageSeqNo::new(0) },
            commit_index: LogIndex::new(s.position.index.get() + 2),
            entries: LogEntries::new(s.position),
        };
        Envelope { from: 1, to, message, commands: Vec::new(), grant: false, applied: s.state.applied, snapshot: Some(s), pre_vote: false }
    }

    fn chunks(out: &[Vec<u8>]) -> Vec<SnapChunk> {
        out.iter()
            .map(|b| match decode(b) {
                Ok(Wire::SnapChunk(c)) => c,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn chunks_fit_a_datagram_round_trip_and_inconsistent_ones_are_refused() {
        let mut tx = SnapshotSender::default();
        let out = tx.datagrams(env_with(snap(200, 0), 2));
        assert_eq!(out.len(), WINDOW);
        assert!(out.iter().all(|b| b.len() <= DATAGRAM_MAX), "{}", out[0].len());
        let c = chunks(&out);
        assert_eq!(encode(&Wire::SnapChunk(c[0].clone())), out[0]);
        for n in 0..out[0].len() {
            assert!(decode(&out[0][..n]).is_err());
        }
        let bad = |f: &dyn Fn(&mut SnapChunk)| {
            let mut x = c[1].clone();
            f(&mut x);
            decode(&encode(&Wire::SnapChunk(x)))
        };
        assert!(bad(&|_| {}).is_ok());
        assert_eq!(bad(&|x| x.offset += 1), Err(WireError::OutOfRange));
        assert_eq!(bad(&|x| x.done = true), Err(WireError::OutOfRange));
        assert_eq!(bad(&|x| x.data.pop().map_or((), drop)), Err(WireError::OutOfRange));
        assert_eq!(bad(&|x| x.head.total = SNAPSHOT_MAX as u32 + 1), Err(WireError::OutOfRange));
        assert_eq!(bad(&|x| x.head.total = 0), Err(WireError::OutOfRange));
        assert_eq!(bad(&|x| x.offset = x.head.total.next_multiple_of(CHUNK_LEN as u32)), Err(WireError::OutOfRange));
        assert_eq!(bad(&|x| x.head.last.term = Term::new(5)), Err(WireError::Inconsistent));
        // A pulled answer's chunks: their own kind, the same layout.
        let pulled = tx.pulled_datagrams(env_with(snap(200, 1), 3), 0, Duration::ZERO);
        let p = chunks(&pulled);
        assert!(p.iter().all(|c| c.head.pulled) && pulled[0][1] == 11 && out[0][1] == 8);
        assert_eq!(decode(&encode(&Wire::SnapChunk(p[0].clone()))), Ok(Wire::SnapChunk(p[0].clone())));
        let ack = SnapAck { from: 2, to: 1, transfer: 9, term: 4, last: c[0].head.last, digest: [7; 32], next: 2400 };
        assert_eq!(decode(&encode(&Wire::SnapAck(ack))), Ok(Wire::SnapAck(ack)));
        assert_eq!(decode(&encode(&Wire::SnapAck(SnapAck { next: SNAPSHOT_MAX as u32 + 1, ..ack }))), Err(WireError::OutOfRange));
    }

    /// A snapshot of many chunks crosses a network that drops a fifth, duplicates and
    /// reorders, with the replica's periodic re-send as the only timer: the follower ends with
    /// exactly the leader's snapshot, resumed rather than restarted, in bounded memory.
    #[test]
    fn a_snapshot_crosses_in_chunks_with_drops_duplicates_and_reorders() {
        let l = Limits::default();
        for seed in 0..20u64 {
            let mut seed_state = seed;
            let s = snap(300, 0);
            let total = encode_snapshot(&s).len();
            let n_chunks = total.div_ceil(CHUNK_LEN);
            assert!(n_chunks > 3 * WINDOW, "{n_chunks} chunks");
            let (mut tx, mut rx) = (SnapshotSender::default(), SnapshotReceiver::default());
            let mut got = None;
            let mut to_rx: Vec<Vec<u8>> = Vec::new();
            let mut to_tx: Vec<Vec<u8>> = Vec::new();
            let mut resends = 0;
            for _round in 0..10_000 {
                if to_rx.is_empty() && to_tx.is_empty() {
                    if got.is_some() {
                        break;
                    }
                    // The replica's re-send (its retransmission timer).
                    resends += 1;
                    to_rx.extend(tx.datagrams(env_with(s.clone(), 2)));
                }
                // Deliver one datagram picked at random (reorders), maybe dropped or doubled.
                let toward_rx = !to_rx.is_empty() && (to_tx.is_empty() || rnd(&mut seed_state).is_multiple_of(2));
                let q = if toward_rx { &mut to_rx } else { &mut to_tx };
                let i = (rnd(&mut seed_state) as usize) % q.len();
                let b = if rnd(&mut seed_state).is_multiple_of(10) { q[i].clone() } else { q.swap_remove(i) };
                if rnd(&mut seed_state).is_multiple_of(5) {
                    continue;
                }
                match decode(&b) {
                    Ok(Wire::SnapChunk(c)) => {
                        let (ack, env) = rx.on_chunk(c, 3, &l);
                        assert!(rx.buffered() <= SNAPSHOT_MAX);
                        if let Some(e) = env {
                            assert!(got.is_none(), "seed {seed}: handed over twice");
                            got = Some(e);
                        }
                        to_tx.extend(ack.map(|a| encode(&Wire::SnapAck(a))));
                    }
                    Ok(Wire::SnapAck(a)) => to_rx.extend(tx.on_ack(&a)),
                    other => panic!("{other:?}"),
                }
            }
            let e = got.unwrap_or_else(|| panic!("seed {seed}: not assembled after {resends} re-sends"));
            assert_eq!(e.snapshot.as_ref(), Some(&s), "seed {seed}");
            assert_eq!(e.message.from().get(), 1);
            // Resumed, not restarted: far fewer chunks than a full send per re-send.
            assert!(tx.chunks_sent < (resends as u64 + 2) * n_chunks as u64 / 2 + 4 * WINDOW as u64, "seed {seed}: {} chunks for {n_chunks} over {resends} re-sends", tx.chunks_sent);
            assert_eq!((rx.refused, rx.assembled, rx.buffered()), (0, 1, 0));
        }
    }

    /// Feed a whole byte string as one transfer's chunks, `digest` as announced.
    fn feed(rx: &mut SnapshotReceiver, bytes: &[u8], digest: [u8; 32], last: LogPosition, l: &Limits) -> Option<Envelope> {
        let head = SnapHead { from: 1, to: 2, transfer: 1, term: 4, commit_index: last.index.get(), applied: 0, last, total: bytes.len() as u32, digest, pulled: false };
        let mut out = None;
        for (i, d) in bytes.chunks(CHUNK_LEN).enumerate() {
            let off = i * CHUNK_LEN;
            let c = SnapChunk { head, offset: off as u32, done: off + d.len() == bytes.len(), data: d.to_vec() };
            let c = match decode(&encode(&Wire::SnapChunk(c))) {
                Ok(Wire::SnapChunk(c)) => c,
                other => panic!("{other:?}"),
            };
            out = rx.on_chunk(c, 4, l).1.or(out);
        }
        out
    }

    #[test]
    fn corrupted_truncated_and_oversized_snapshots_are_refused() {
        let l = Limits::default();
        let s = snap(40, 0);
        let good = encode_snapshot(&s);
        let digest: [u8; 32] = Sha256::digest(&good).into();
        // Sanity: the good one goes through.
        assert!(feed(&mut SnapshotReceiver::default(), &good, digest, s.position, &l).is_some());
        // A flipped byte under the good digest.
        let mut rx = SnapshotReceiver::default();
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0x10;
        assert!(feed(&mut rx, &bad, digest, s.position, &l).is_none());
        assert_eq!(rx.refused, 1);
        // Truncated: a prefix announced as the whole, with its own digest (decode refuses).
        let cut = &good[..good.len() - 7];
        let mut rx = SnapshotReceiver::default();
        assert!(feed(&mut rx, cut, Sha256::digest(cut).into(), s.position, &l).is_none());
        assert_eq!(rx.refused, 1);
        // Bytes that decode but name another position than the header's.
        let mut rx = SnapshotReceiver::default();
        let other = LogPosition { term: Term::new(3), index: LogIndex::new(7) };
        assert!(feed(&mut rx, &good, digest, other, &l).is_none());
        assert_eq!(rx.refused, 1);
        // A state past the follower's limits.
        let mut rx = SnapshotReceiver::default();
        assert!(feed(&mut rx, &good, digest, s.position, &Limits { workloads: 10, ..l }).is_none());
        assert_eq!(rx.refused, 1);
        // Oversized: the leader does not send it, and a chunk announcing it does not decode.
        let mut tx = SnapshotSender::default();
        let huge = snap(400, 3000);
        assert!(encode_snapshot(&huge).len() > SNAPSHOT_MAX);
        assert!(tx.datagrams(env_with(huge, 2)).is_empty());
        assert_eq!((tx.too_large, tx.in_progress()), (1, 0));
    }

    #[test]
    fn stale_older_and_duplicate_chunks_are_ignored_and_newer_ones_replace() {
        let l = Limits::default();
        let s = snap(40, 0);
        let bytes = encode_snapshot(&s);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let chunk = |term: u64, index: u64, i: usize| {
            let last = LogPosition { term: Term::new(3), index: LogIndex::new(index) };
            let total = bytes.len();
            let off = i * CHUNK_LEN;
            let d = &bytes[off..(off + CHUNK_LEN).min(total)];
            SnapChunk { head: SnapHead { from: 1, to: 2, transfer: 1, term, commit_index: index, applied: 0, last, total: total as u32, digest, pulled: false }, offset: off as u32, done: off + d.len() == total, data: d.to_vec() }
        };
        let p = s.position.index.get();
        let mut rx = SnapshotReceiver::default();
        // A chunk of a term older than the follower's own: no answer, nothing kept.
        assert_eq!(rx.on_chunk(chunk(4, p, 0), 5, &l), (None, None));
        assert_eq!(rx.buffered(), 0);
        // Chunk 1 before chunk 0 (out of order): kept, the ack still says 0.
        assert_eq!(rx.on_chunk(chunk(4, p, 1), 4, &l).0.map(|a| a.next), Some(0));
        assert_eq!(rx.on_chunk(chunk(4, p, 1), 4, &l).0.map(|a| a.next), Some(0));
        assert_eq!(rx.on_chunk(chunk(4, p, 0), 4, &l).0.map(|a| a.next), Some(2 * CHUNK_LEN as u32));
        // An older term, or an earlier snapshot of the same term: ignored, the assembly stays.
        assert_eq!(rx.on_chunk(chunk(3, p, 2), 3, &l), (None, None));
        assert_eq!(rx.on_chunk(chunk(4, p - 1, 2), 4, &l), (None, None));
        assert_eq!(rx.on_chunk(chunk(4, p, 2), 4, &l).0.map(|a| a.next), Some(3 * CHUNK_LEN as u32));
        // A newer term replaces it: back to zero.
        assert_eq!(rx.on_chunk(chunk(6, p, 1), 4, &l).0.map(|a| a.next), Some(0));
        let n = bytes.len().div_ceil(CHUNK_LEN);
        let mut handed = 0;
        for i in 0..n {
            handed += rx.on_chunk(chunk(6, p, i), 4, &l).1.is_some() as u32;
        }
        assert_eq!((handed, rx.assembled, rx.buffered()), (1, 1, 0));
        // Late duplicates of the finished transfer: acknowledged whole, not assembled again.
        let (ack, env) = rx.on_chunk(chunk(6, p, 0), 4, &l);
        assert_eq!((ack.map(|a| a.next), env.is_none()), (Some(bytes.len() as u32), true));
        assert_eq!(rx.buffered(), 0);
        // A late chunk of an earlier snapshot (or term) than the one finished: ignored.
        assert_eq!(rx.on_chunk(chunk(6, p - 1, 0), 4, &l), (None, None));
        assert_eq!(rx.on_chunk(chunk(5, p + 1, 0), 4, &l), (None, None));
        assert_eq!(rx.buffered(), 0);
    }

    /// A member's pulled answer (the catch-up pull) and a leader's snapshot share the one
    /// assembly: a pulled chunk ignores the receiver's term (it is the answering member's); a
    /// second member's answer at the same position does not restart the first; a leader's chunk
    /// replaces a pulled assembly whatever their terms and positions (the answering member may
    /// be gone); a pulled chunk replaces a leader's assembly only with a later position; once a
    /// pulled answer was assembled, pulled ones at or below it are not assembled again (from the
    /// same member, or the same snapshot from another), a leader's still are, and so is another
    /// member's older one (an assembled pulled state waits for vouchers and may be a forgery,
    /// crate::replica's `vouch`), which also replaces another member's pulled assembly.
    #[test]
    fn pulled_answers_and_leader_snapshots_share_the_assembly_by_position() {
        let l = Limits::default();
        let s = snap(40, 0);
        let bytes = encode_snapshot(&s);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let chunk = |term: u64, index: u64, i: usize, pulled: bool, from: u64| {
            let last = LogPosition { term: Term::new(3), index: LogIndex::new(index) };
            let total = bytes.len();
            let off = i * CHUNK_LEN;
            let d = &bytes[off..(off + CHUNK_LEN).min(total)];
            SnapChunk { head: SnapHead { from, to: 2, transfer: 1, term, commit_index: index, applied: 0, last, total: total as u32, digest, pulled }, offset: off as u32, done: off + d.len() == total, data: d.to_vec() }
        };
        let p = s.position.index.get();
        let n = bytes.len().div_ceil(CHUNK_LEN);
        assert!(n >= 3);
        let next = |r: (Option<SnapAck>, Option<Envelope>)| r.0.map(|a| a.next);
        let mut rx = SnapshotReceiver::default();
        // Pulled, of a term below the receiver's: taken.
        assert_eq!(next(rx.on_chunk(chunk(4, p, 0, true, 7), 9, &l)), Some(CHUNK_LEN as u32));
        // Another member's answer at the same position: ignored.
        assert_eq!(rx.on_chunk(chunk(4, p, 1, true, 8), 9, &l), (None, None));
        // A leader's chunk, same term, earlier position: replaces the pulled assembly.
        assert_eq!(next(rx.on_chunk(chunk(4, p - 1, 0, false, 1), 4, &l)), Some(CHUNK_LEN as u32));
        // Pulled at or below it: ignored; past it: replaces it, and completes.
        assert_eq!(rx.on_chunk(chunk(4, p - 1, 1, true, 7), 4, &l), (None, None));
        assert_eq!(next(rx.on_chunk(chunk(4, p, 1, true, 7), 4, &l)), Some(0));
        let mut got = None;
        for i in 0..n {
            got = rx.on_chunk(chunk(4, p, i, true, 7), 4, &l).1.or(got);
        }
        assert_eq!(got.and_then(|e| e.snapshot), Some(s.clone()));
        // Installed: a pulled one at that position is not assembled again, a leader's is.
        assert_eq!(rx.on_chunk(chunk(5, p, 0, true, 8), 4, &l), (None, None));
        assert_eq!(rx.on_chunk(chunk(5, p - 1, 0, true, 7), 4, &l), (None, None));
        assert_eq!(next(rx.on_chunk(chunk(5, p, 0, false, 1), 4, &l)), Some(CHUNK_LEN as u32));
        // Another member's older pulled answer is assembled after the pulled one assembled, and
        // replaces another member's pulled assembly; the same member's older one does not.
        let mut rx = SnapshotReceiver::default();
        for i in 0..n {
            rx.on_chunk(chunk(4, p, i, true, 7), 4, &l);
        }
        assert_eq!(next(rx.on_chunk(chunk(4, p - 1, 0, true, 8), 4, &l)), Some(CHUNK_LEN as u32));
        assert_eq!(next(rx.on_chunk(chunk(4, p - 2, 0, true, 9), 4, &l)), Some(CHUNK_LEN as u32));
        assert_eq!(rx.on_chunk(chunk(4, p - 3, 0, true, 9), 4, &l), (None, None));
    }

    fn deliver_all(tx: &mut SnapshotSender, rx: &mut SnapshotReceiver, mut to_rx: Vec<Vec<u8>>, l: &Limits) -> Option<Envelope> {
        let mut got = None;
        while let Some(b) = to_rx.pop() {
            let Ok(Wire::SnapChunk(c)) = decode(&b) else { panic!("a chunk") };
            let (ack, env) = rx.on_chunk(c, 3, l);
            got = got.or(env);
            if let Some(a) = ack {
                to_rx.extend(tx.on_ack(&a));
            }
        }
        got
    }

    /// The follower's final acknowledgement is lost (it sends it once, and a follower whose log
    /// caught up gets no more chunks): the leader's AppendEntries reply showing its log matching
    /// at or past the snapshot ends the transfer, counted once. A match below it, or a pulled
    /// answer's transfer, does not (CI run of 4a018a6: `cluster_snapshot_catchup`).
    #[test]
    fn a_lost_final_acknowledgement_is_made_good_by_the_followers_log() {
        let l = Limits::default();
        let s = snap(60, 0);
        let at = s.position.index.get();
        let mut tx = SnapshotSender::default();
        let mut rx = SnapshotReceiver::default();
        let total = encode_snapshot(&s).len() as u32;
        let mut to_rx = tx.datagrams(env_with(s.clone(), 2));
        let mut got = None;
        while let Some(b) = to_rx.pop() {
            let Ok(Wire::SnapChunk(c)) = decode(&b) else { panic!("a chunk") };
            let (ack, env) = rx.on_chunk(c, 3, &l);
            got = got.or(env);
            match ack {
                // The one that says "whole" is dropped.
                Some(a) if a.next >= total => {}
                Some(a) => to_rx.extend(tx.on_ack(&a)),
                None => {}
            }
        }
        assert_eq!(got.and_then(|e| e.snapshot), Some(s.clone()));
        assert_eq!((tx.in_progress(), tx.completed), (1, 0), "without the final ack the transfer is open");
        assert_eq!(tx.leader_transfers().collect::<Vec<_>>(), vec![(2, s.position)]);
        // Another peer, or a match below the snapshot: nothing.
        assert!(!tx.on_matched(3, at + 10));
        assert!(!tx.on_matched(2, at - 1));
        assert_eq!((tx.in_progress(), tx.completed), (1, 0));
        // At it: over, once.
        assert!(tx.on_matched(2, at));
        assert!(!tx.on_matched(2, at + 5));
        assert_eq!((tx.in_progress(), tx.completed, tx.completed_by_log), (0, 1, 1));
        // A final acknowledgement that arrives after the leader stepped down still ends the
        // transfer (nothing else would); an earlier one moves nothing then.
        let mut tx = SnapshotSender::default();
        let mut rx = SnapshotReceiver::default();
        let mut to_rx = tx.datagrams(env_with(s.clone(), 2));
        let mut last = None;
        while let Some(b) = to_rx.pop() {
            let Ok(Wire::SnapChunk(c)) = decode(&b) else { panic!("a chunk") };
            match rx.on_chunk(c, 3, &l).0 {
                Some(a) if a.next >= total => last = Some(a),
                Some(a) => {
                    assert!(tx.on_ack_if(&a, false, Duration::ZERO).is_empty(), "a deposed leader sends no more chunks");
                    to_rx.extend(tx.on_ack(&a));
                }
                None => {}
            }
        }
        assert_eq!((tx.in_progress(), tx.completed), (1, 0));
        assert!(tx.on_ack_if(&last.expect("a final acknowledgement"), false, Duration::ZERO).is_empty());
        assert_eq!((tx.in_progress(), tx.completed, tx.completed_by_log), (0, 1, 0));
        // A pulled answer's transfer is not a leader's: a log match says nothing of it.
        let mut tx = SnapshotSender::default();
        assert!(!tx.pulled_datagrams(env_with(s.clone(), 2), 0, Duration::ZERO).is_empty());
        assert!(!tx.on_matched(2, at + 10));
        assert_eq!((tx.in_progress(), tx.completed, tx.leader_transfers().count()), (1, 0, 0));
    }

    /// Seed 1207 of the simulator, as a unit: the follower restarted mid-transfer (its
    /// assembly gone) while the leader's transfer had moved past the first chunks; the
    /// follower acknowledges 0, and the next re-send starts there again.
    #[test]
    fn a_follower_that_lost_its_assembly_gets_the_snapshot_from_the_start() {
        let l = Limits::default();
        let s = snap(60, 0);
        let mut tx = SnapshotSender::default();
        let mut rx = SnapshotReceiver::default();
        let mut window = tx.datagrams(env_with(s.clone(), 2));
        // The first three chunks arrive and are acknowledged.
        let first: Vec<Vec<u8>> = window.drain(..3).collect();
        for b in first {
            let Ok(Wire::SnapChunk(c)) = decode(&b) else { panic!() };
            let (ack, _) = rx.on_chunk(c, 3, &l);
            window.extend(tx.on_ack(&ack.unwrap()));
        }
        // The follower restarts: what it held is gone; the rest of the window reaches the new one.
        let mut rx = SnapshotReceiver::default();
        let mut got = deliver_all(&mut tx, &mut rx, window, &l);
        for _ in 0..3 {
            if got.is_some() {
                break;
            }
            let again = tx.datagrams(env_with(s.clone(), 2));
            got = deliver_all(&mut tx, &mut rx, again, &l);
        }
        assert_eq!(got.and_then(|e| e.snapshot), Some(s));
    }

    /// A new transfer of a snapshot the follower finished before (the replica did not take it,
    /// or needs it again) is assembled and handed over again; a late chunk of the finished
    /// transfer is only acknowledged.
    #[test]
    fn a_new_transfer_of_the_same_snapshot_is_handed_over_again() {
        let l = Limits::default();
        let s = snap(20, 0);
        let mut tx = SnapshotSender::default();
        let mut rx = SnapshotReceiver::default();
        let first = tx.datagrams(env_with(s.clone(), 2));
        let late = first[0].clone();
        assert!(deliver_all(&mut tx, &mut rx, first, &l).is_some());
        assert_eq!(tx.in_progress(), 0, "acknowledged whole");
        let Ok(Wire::SnapChunk(c)) = decode(&late) else { panic!() };
        let (ack, env) = rx.on_chunk(c, 3, &l);
        assert!(env.is_none() && ack.is_some_and(|a| a.next == a.next.max(1) && tx.on_ack(&a).is_empty()));
        let second = tx.datagrams(env_with(s.clone(), 2));
        assert_eq!(deliver_all(&mut tx, &mut rx, second, &l).and_then(|e| e.snapshot), Some(s));
        assert_eq!(rx.assembled, 2);
    }

    /// Hostile chunk datagrams: no panic, and the assembler's memory stays bounded.
    #[test]
    fn hostile_chunks_never_panic_and_memory_stays_bounded() {
        let l = Limits::default();
        let mut seed = 0x51a9_u64;
        let mut tx = SnapshotSender::default();
        let base = tx.datagrams(env_with(snap(30, 0), 2));
        let mut rx = SnapshotReceiver::default();
        let mut ok = 0;
        for i in 0..20_000 {
            let mut b = base[i % base.len()].clone();
            for _ in 0..1 + rnd(&mut seed) % 3 {
                let at = (rnd(&mut seed) as usize) % b.len();
                b[at] ^= 1 << (rnd(&mut seed) % 8);
            }
            if rnd(&mut seed).is_multiple_of(4) {
                b.truncate((rnd(&mut seed) as usize) % b.len());
            }
            if let Ok(Wire::SnapChunk(c)) = decode(&b) {
                ok += 1;
                let _ = rx.on_chunk(c, 0, &l);
                assert!(rx.buffered() <= SNAPSHOT_MAX);
            }
        }
        assert!(ok > 100, "{ok} decoded");
    }
}
