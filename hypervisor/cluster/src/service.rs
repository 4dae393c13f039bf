//! The membership service's IPC protocol (`memberd`, docs/orchestration.md): what `apid` asks
//! it. Plain data, host-tested; the service and its clients only move these bytes.
//!
//! | label | words in | grant | reply label, words |
//! |---|---|---|---|
//! | [`LABEL_MEMBERS`] | — | writable, ≥ [`table_len`]`(rows)` | [`OK`], [bytes, rows, 0, 0] / [`ERR_SMALL`] [bytes needed] / [`ERR_NO_GRANT`] |
//! | [`LABEL_LEAVE`] | — | — | [`OK`] (the leave notices are queued; the table then shows this node `left`) |
//!
//! The table: an 8-byte header (`MAGIC`, row count as u16 LE, 2 zero bytes) then one
//! [`ROW`]-byte row per member: key (32), fabric /128 (16), incarnation (u64 LE), generation
//! (u32 LE), state (u8: 0 alive, 1 suspect, 2 dead, 3 left), flags (bit 0: this node), 2 zero.

use alloc::vec::Vec;

use crate::desired::DesiredState;
use crate::identity::{NodeId, NodeKey};
use crate::membership::MemberState;

pub const LABEL_MEMBERS: u64 = 0x4d42_0001;
// 0x4d42_0002 was `LABEL_ADMIT` (any caller admitted any key): retired, answered
// `ERR_UNKNOWN`. Admission comes only from the committed desired state (`orchd` → `netd`).
/// Leave the cluster gracefully (`Membership::leave`; `catenary node leave`): the others show
/// this node `left`. No words; answered `OK` once the leave notices are queued.
pub const LABEL_LEAVE: u64 = 0x4d42_0003;
pub const OK: u64 = 0;
pub const ERR_NO_GRANT: u64 = 1;
pub const ERR_SMALL: u64 = 2;
pub const ERR_KEY: u64 = 3;
/// `memberd` is not up yet (no cluster file, no socket).
pub const ERR_NOT_READY: u64 = 4;
/// A label this protocol does not know.
pub const ERR_UNKNOWN: u64 = 5;

const MAGIC: [u8; 4] = *b"MBT1";
pub const HEADER: usize = 8;
pub const ROW: usize = 64;
/// Rows a table may hold (the cluster file's bound on nodes).
pub const ROWS_MAX: usize = 1024;

/// One member as the service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: NodeId,
    pub state: MemberState,
    pub incarnation: u64,
    /// This row is the answering node itself.
    pub own: bool,
}

pub fn table_len(rows: usize) -> usize {
    HEADER + rows * ROW
}

/// Each key's state by its newest row (generation, then incarnation): a node that restarted
/// and rejoined has its old dead row and a new live one, and is alive; a key with no row is
/// not in the map (unknown). `apid` asks no `dead` node when it gathers, and a `left` one only
/// for the node listing (`catenary_api::cluster::Reach`).
pub fn newest_states(rows: &[Row]) -> alloc::collections::BTreeMap<NodeKey, MemberState> {
    let mut newest: alloc::collections::BTreeMap<NodeKey, &Row> = alloc::collections::BTreeMap::new();
    for r in rows {
        let e = newest.entry(r.id.key).or_insert(r);
        if (r.id.generation, r.incarnation) > (e.id.generation, e.incarnation) {
            *e = r;
        }
    }
    newest.into_iter().map(|(k, r)| (k, r.state)).collect()
}

pub fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
}

pub fn encode(rows: &[Row]) -> Vec<u8> {
    let rows = &rows[..rows.len().min(ROWS_MAX)];
    let mut b = Vec::with_capacity(table_len(rows.len()));
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&(rows.len() as u16).to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    for r in rows {
        b.extend_from_slice(&r.id.key.0);
        b.extend_from_slice(&r.id.addr);
        b.extend_from_slice(&r.incarnation.to_le_bytes());
        b.extend_from_slice(&r.id.generation.to_le_bytes());
        b.push(match r.state {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        });
        b.push(r.own as u8);
        b.extend_from_slice(&[0, 0]);
    }
    b
}

/// The rows of a table, or `None` for anything malformed (wrong magic, length, state, flags,
/// non-zero padding): the bytes come from another task.
pub fn decode(b: &[u8]) -> Option<Vec<Row>> {
    if b.len() < HEADER || b[..4] != MAGIC || b[6..8] != [0, 0] {
        return None;
    }
    let n = u16::from_le_bytes([b[4], b[5]]) as usize;
    if n > ROWS_MAX || b.len() != table_len(n) {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for r in b[HEADER..].chunks_exact(ROW) {
        let mut key = [0u8; 32];
        key.copy_from_slice(&r[..32]);
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&r[32..48]);
        let incarnation = u64::from_le_bytes(r[48..56].try_into().ok()?);
        let generation = u32::from_le_bytes(r[56..60].try_into().ok()?);
        let state = match r[60] {
            0 => MemberState::Alive,
            1 => MemberState::Suspect,
            2 => MemberState::Dead,
            3 => MemberState::Left,
            _ => return None,
        };
        if r[61] > 1 || r[62..64] != [0, 0] {
            return None;
        }
        out.push(Row { id: NodeId::new(NodeKey(key), addr, generation), state, incarnation, own: r[61] == 1 });
    }
    Some(out)
}

/// A key as four little-endian words (`netd`'s `LABEL_SELF`, `LABEL_ADMIT_PEER`), and back.
pub fn key_words(k: &[u8; 32]) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (i, c) in k.chunks_exact(8).enumerate() {
        w[i] = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    w
}

pub fn words_key(w: [u64; 4]) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, x) in w.iter().enumerate() {
        k[i * 8..i * 8 + 8].copy_from_slice(&x.to_le_bytes());
    }
    k
}

/// A change to this node's fabric peers that `orchd` hands its `netd` (`LABEL_ADMIT_PEER`,
/// `LABEL_REMOVE_PEER`; docs/orchestration.md, "Removal"), from its own committed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    Admit([u8; 32]),
    Remove([u8; 32]),
}

/// What this node's `orchd` has handed its `netd` of the committed admissions and removals.
/// `netd` keeps them only in memory: a restarted `netd` starts from the cluster file again (a
/// removed file member is a peer again), so when `orchd` sees `netd` restart (its socket
/// handles answer `Restarted`) it forgets what it handed ([`FabricHand::netd_restarted`]) and
/// hands it all again.
#[derive(Clone, Debug, Default)]
pub struct FabricHand {
    /// Keys admitted at run time (or a file member admitted again) that `netd` took as peers.
    handed: Vec<[u8; 32]>,
    /// Keys the committed state removed that `netd` dropped.
    removed: Vec<[u8; 32]>,
    /// Cluster-file members whose standing in `netd` this `orchd` does not know: `netd` keeps
    /// the removals a predecessor `orchd` handed it, so after an `orchd` restart a file member
    /// that was removed and admitted again meanwhile would stay dropped. Each is handed as an
    /// admission once a state is known (`netd` takes an admission of a peer it has as a
    /// no-op), unless that state removed it; the state comes from a leader or a pull from the
    /// members `netd` lets through.
    unsure: Vec<[u8; 32]>,
}

impl FabricHand {
    /// What `netd` has not been given yet, removals first, at most `max` of each: every key
    /// ever admitted (`node_order`) that is no longer (`RemoveNode`), and every admitted key
    /// the cluster file (`file`) does not list or that was removed and admitted again. Never
    /// this node's own key.
    pub fn todo(&self, st: &DesiredState, file: &[NodeKey], own: [u8; 32], max: usize) -> Vec<PeerChange> {
        let removals = st.node_order.iter().filter(|k| !st.nodes.contains(k) && k.0 != own && !self.removed.contains(&k.0)).take(max).map(|k| PeerChange::Remove(k.0));
        let admissions = st
            .nodes
            .iter()
            .filter(|k| (!file.contains(k) || self.removed.contains(&k.0)) && k.0 != own && !self.handed.contains(&k.0))
            .take(max)
            .map(|k| PeerChange::Admit(k.0));
        removals.chain(admissions).collect()
    }

    /// The hand of an `orchd` that starts beside a `netd` of unknown history: every file member
    /// but this node is unsure until handed once.
    pub fn at_orchd_start(file: &[NodeKey], own: [u8; 32]) -> Self {
        FabricHand { unsure: file.iter().map(|k| k.0).filter(|k| *k != own).collect(), ..Self::default() }
    }

    /// The admissions of the file members still unsure, at most `max`: none while no state is
    /// known, then those the state does not remove. Not before: a member the cluster removed
    /// (a stolen or retired key) that a predecessor `orchd` had dropped would be let back in
    /// and could answer this node's catch-up pull with a state of its own making. A member
    /// restarted without storage learns the state by pulling from the file members `netd`
    /// still lets through (`replica::Catchup`), then re-admits the rest.
    pub fn unsure_todo(&self, st: Option<&DesiredState>, max: usize) -> Vec<PeerChange> {
        let Some(st) = st else { return Vec::new() };
        let removed = |k: &[u8; 32]| st.node_order.iter().any(|n| n.0 == *k) && !st.nodes.iter().any(|n| n.0 == *k);
        self.unsure.iter().filter(|k| !removed(k) && !self.handed.contains(k)).take(max).map(|k| PeerChange::Admit(*k)).collect()
    }

    /// `netd` took the change (or refused it for good: it is not asked again).
    pub fn done(&mut self, c: PeerChange) {
        match c {
            PeerChange::Admit(k) | PeerChange::Remove(k) => self.unsure.retain(|u| *u != k),
        }
        match c {
            PeerChange::Admit(k) => {
                self.removed.retain(|r| *r != k);
                if !self.handed.contains(&k) {
                    self.handed.push(k);
                }
            }
            PeerChange::Remove(k) => {
                self.handed.retain(|h| *h != k);
                if !self.removed.contains(&k) {
                    self.removed.push(k);
                }
            }
        }
    }

    /// `netd` restarted from its boot configuration: everything is handed again.
    pub fn netd_restarted(&mut self) {
        self.handed.clear();
        self.removed.clear();
        // a new netd has every file member as a peer again
        self.unsure.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 2026-12-04: netd keeps the removals a predecessor orchd handed it, so a new orchd
    /// hands every file member (but itself) as an admission once it knows a state, and skips
    /// one that state removed (that one is handed as a removal instead); before a state,
    /// nothing (a removed member let back in could answer the pull).
    #[test]
    fn a_restarted_orchd_hands_the_file_members_again_once() {
        use alloc::vec;
        let k = |i: u8| NodeKey([i; 32]);
        let file = [k(1), k(2), k(3), k(4)];
        let mut hand = FabricHand::at_orchd_start(&file, [1; 32]);
        // before a state is known nothing is handed (4 may be a removed member: review of
        // 2026-12-04, it could answer this node's pull)
        assert!(hand.unsure_todo(None, 8).is_empty(), "no re-admission before a state");
        // the state arrives: 4 is removed (and 3 was removed and admitted again)
        let st = DesiredState { node_order: file.to_vec(), nodes: [k(1), k(2), k(3)].into_iter().collect(), ..DesiredState::default() };
        assert_eq!(hand.unsure_todo(Some(&st), 1).len(), 1, "bounded per turn");
        assert_eq!(hand.unsure_todo(Some(&st), 8), vec![PeerChange::Admit([2; 32]), PeerChange::Admit([3; 32])]);
        hand.done(PeerChange::Admit([2; 32]));
        assert_eq!(hand.unsure_todo(Some(&st), 8), vec![PeerChange::Admit([3; 32])]);
        assert_eq!(hand.todo(&st, &file, [1; 32], 8), vec![PeerChange::Remove([4; 32])]);
        hand.done(PeerChange::Admit([3; 32]));
        hand.done(PeerChange::Remove([4; 32]));
        assert!(hand.unsure_todo(Some(&st), 8).is_empty());
        assert!(hand.todo(&st, &file, [1; 32], 8).is_empty());
        // a restarted netd has every file member as a peer: nothing unsure any more
        let mut hand = FabricHand::at_orchd_start(&file, [1; 32]);
        hand.netd_restarted();
        assert!(hand.unsure_todo(None, 8).is_empty());
    }

    fn row(i: u8, state: MemberState) -> Row {
        Row { id: NodeId::new(NodeKey([i; 32]), [i; 16], 1_700_000_000 + i as u32), state, incarnation: (i as u64) << 16 | 3, own: i == 0 }
    }

    #[test]
    fn table_round_trip_and_hostile_bytes() {
        let rows: Vec<Row> = [MemberState::Alive, MemberState::Suspect, MemberState::Dead, MemberState::Left].iter().enumerate().map(|(i, s)| row(i as u8, *s)).collect();
        let b = encode(&rows);
        assert_eq!(b.len(), table_len(4));
        assert_eq!(decode(&b).unwrap(), rows);
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::new());
        // every truncation and extension is refused, never a panic
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_none());
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        // a bad state, bad flags, padding, magic, count
        for (at, v) in [(HEADER + 60, 4u8), (HEADER + 61, 2), (HEADER + 62, 1), (0, b'X'), (4, 5), (6, 1)] {
            let mut x = b.clone();
            x[at] = v;
            assert!(decode(&x).is_none(), "byte {at} = {v}");
        }
        // bit flips anywhere: no panic
        for i in 0..b.len() * 8 {
            let mut x = b.clone();
            x[i / 8] ^= 1 << (i % 8);
            let _ = decode(&x);
        }
    }

    /// A key's state is its newest row's: a rejoined node's old dead row does not count.
    #[test]
    fn newest_states_go_by_each_keys_newest_row() {
        use alloc::vec;
        let at = |i: u8, generation: u32, incarnation: u64, state: MemberState| Row { id: NodeId::new(NodeKey([i; 32]), [i; 16], generation), state, incarnation, own: false };
        let rows = vec![
            at(1, 5, 3, MemberState::Dead),    // killed, then rejoined as generation 6:
            at(1, 6, 0, MemberState::Alive),   // alive
            at(2, 5, 9, MemberState::Dead),    // dead, no newer row
            at(3, 5, 1, MemberState::Suspect), // only suspect
            at(4, 7, 2, MemberState::Alive),   // a newer incarnation of the same generation says
            at(4, 7, 4, MemberState::Dead),    // dead
            at(5, 5, 0, MemberState::Left),    // left
            at(6, 4, 8, MemberState::Left),    // left, then back as a newer generation:
            at(6, 5, 0, MemberState::Alive),   // alive
        ];
        let want: alloc::collections::BTreeMap<NodeKey, MemberState> = [
            (1, MemberState::Alive),
            (2, MemberState::Dead),
            (3, MemberState::Suspect),
            (4, MemberState::Dead),
            (5, MemberState::Left),
            (6, MemberState::Alive),
        ]
        .into_iter()
        .map(|(i, s)| (NodeKey([i; 32]), s))
        .collect();
        assert_eq!(newest_states(&rows), want);
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(newest_states(&reversed), want, "order of the rows");
        assert!(newest_states(&[]).is_empty());
    }

    #[test]
    fn key_words_round_trip() {
        let k: [u8; 32] = core::array::from_fn(|i| i as u8 * 7 + 1);
        assert_eq!(words_key(key_words(&k)), k);
    }
}
