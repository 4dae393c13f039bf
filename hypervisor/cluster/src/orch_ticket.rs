//! The API's writes this node submitted, and what became of each ([`Orch::ticket`]): a
//! ticket per write, held until its outcome is asked for once, or dropped when nobody asks
//! ([`TICKET_KEPT_FOR`]). A write proposed here has its log position at once; a forwarded one
//! gets it from the leader's [`Wire::Proposed`], taken only from the member it was forwarded
//! to.
//!
//! [`Orch::ticket`]: super::Orch::ticket
//! [`Wire::Proposed`]: crate::raft_codec::Wire::Proposed

use alloc::collections::BTreeMap;
use core::time::Duration;

use raftbare::{CommitStatus, LogIndex, LogPosition, Term};

use crate::replica::Replica;

/// How many writes may wait for their outcome on one node.
pub const TICKETS_MAX: usize = 64;

/// A ticket nobody asked about for this many submit timeouts is dropped (its caller gave
/// up or died), so abandoned tickets do not hold [`TICKETS_MAX`] for good.
pub const TICKET_KEPT_FOR: u32 = 2;

/// A forwarded write the leader refused for room: [`crate::raft_codec::Wire::Proposed`] with
/// index 0 and this in `term` (0: not the leader, or its log refused it).
pub(super) const PROPOSED_FULL: u64 = 1;

/// A write's outcome as this node knows it ([`super::Orch::ticket`]). Only `Committed`,
/// `Failed` and `Full` are definite; a caller told `Unconfirmed` must look before it retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketStatus {
    Pending,
    /// Applied; for a put, what it did (`None`: not a put, or no longer among the replica's
    /// latest puts).
    Committed(Option<crate::put_change::PutChange>),
    /// Definitely not applied: the state machine refused it when it committed, another
    /// leader's entry took its place in the log, or the leader it was forwarded to did not
    /// take it.
    Failed,
    /// No such ticket (never issued, already answered, or abandoned: [`TICKET_KEPT_FOR`]).
    Unknown,
    /// The leader refused it: no room ([`super::OrchConfig::write_budget`]).
    Full,
    /// No outcome this node can vouch for, and none will come: not confirmed within
    /// [`super::OrchConfig::submit_timeout`] (a leader cut off from the majority keeps the
    /// entry and may commit it once the cut heals), or its entry was compacted into a snapshot
    /// this node installed before it applied the entry itself (committed or not, refused or
    /// not, the snapshot does not say).
    Unconfirmed,
}

pub(super) struct Ticket {
    pub(super) at: Option<LogPosition>,
    sent: Duration,
    /// The member it was forwarded to (`None`: proposed here): the only one whose
    /// `Proposed` answers it.
    to: Option<usize>,
    /// The leader it was forwarded to did not take it (`Proposed` with index 0).
    failed: bool,
    full: bool,
}

pub(super) struct Tickets {
    map: BTreeMap<u64, Ticket>,
    next: u64,
}

impl Tickets {
    /// Numbers start at a point drawn from `seed`, so that a restarted `orchd` does not issue
    /// the numbers its previous run had in flight: a late `Proposed` for one of those must
    /// not answer a new write.
    pub(super) fn new(seed: u64) -> Tickets {
        Tickets { map: BTreeMap::new(), next: 1 + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16) }
    }

    #[cfg(test)]
    pub(super) fn get(&self, t: u64) -> Option<&Ticket> {
        self.map.get(&t)
    }

    /// Drop the tickets nobody asked about in `keep`.
    pub(super) fn expire(&mut self, now: Duration, keep: Duration) {
        self.map.retain(|_, t| now.saturating_sub(t.sent) <= keep);
    }

    pub(super) fn full(&self) -> bool {
        self.map.len() >= TICKETS_MAX
    }

    /// A new ticket: proposed here at `at`, or forwarded to member `to`.
    pub(super) fn issue(&mut self, now: Duration, at: Option<LogPosition>, to: Option<usize>) -> u64 {
        let t = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.map.insert(t, Ticket { at, sent: now, to, failed: false, full: false });
        t
    }

    /// The leader `from` answered forwarded write `request`: proposed at (`term`, `index`), or
    /// not taken (`index` 0; `term` [`PROPOSED_FULL`]: for room). An answer from any other
    /// member, or a second answer, is dropped.
    pub(super) fn on_proposed(&mut self, from: usize, request: u64, term: u64, index: u64) {
        let Some(t) = self.map.get_mut(&request) else { return };
        if t.to != Some(from) || t.at.is_some() || t.failed {
            return;
        }
        if index == 0 {
            t.failed = true;
            t.full = term == PROPOSED_FULL;
        } else {
            t.at = Some(LogPosition { term: Term::new(term), index: LogIndex::new(index) });
        }
    }

    /// Ticket `t`'s outcome on replica `r` at `now`; an answer other than `Pending` is given
    /// once, and the ticket is gone then.
    pub(super) fn status(&mut self, r: &Replica, now: Duration, timeout: Duration, t: u64) -> TicketStatus {
        let Some(tk) = self.map.get(&t) else { return TicketStatus::Unknown };
        let status = match (tk.failed, tk.at) {
            (true, _) if tk.full => TicketStatus::Full,
            (true, _) => TicketStatus::Failed,
            (false, None) => TicketStatus::Pending,
            (false, Some(p)) => outcome(r, p),
        };
        let status = match status {
            // No answer in time is not "not applied" (apid must not say 409).
            TicketStatus::Pending if now.saturating_sub(tk.sent) > timeout => TicketStatus::Unconfirmed,
            s => s,
        };
        if status != TicketStatus::Pending {
            self.map.remove(&t);
        }
        status
    }
}

/// What replica `r` knows of the entry proposed (or reported proposed) at `p`.
pub(super) fn outcome(r: &Replica, p: LogPosition) -> TicketStatus {
    let refusals = r.refusals();
    // The refusals kept are the latest: one older than all of them, once they are full,
    // may have been forgotten.
    let refusals_cover = refusals.len() < crate::replica::APPLIED_KEPT || refusals.first().is_some_and(|(q, _)| q.index < p.index);
    match r.commit_status(p) {
        // Committed but refused by the state machine (e.g. `WouldLoseQuorum`): the
        // write did not happen, and the operator must hear so (apid: 409).
        CommitStatus::Committed if refusals.iter().any(|(q, _)| *q == p) => TicketStatus::Failed,
        CommitStatus::Committed if p.index.get() <= r.applied_index() => match r.applied().contains(&p) && refusals_cover {
            true => TicketStatus::Committed(r.put_change(p)),
            // applied by a snapshot this node installed, or since forgotten: whether the
            // state refused it is not known here
            false => TicketStatus::Unconfirmed,
        },
        CommitStatus::Rejected => TicketStatus::Failed,
        // compacted before this node saw its outcome (raftbare: "unknown whether the
        // entry was ever committed or rejected")
        CommitStatus::Unknown => TicketStatus::Unconfirmed,
        _ => TicketStatus::Pending,
    }
}
