//! Workload events, as the API service sees them: it compares each list of workloads it gets
//! from the workload service (after every request, and on its periodic tick) with the last one,
//! and records what appeared, changed state or went away. A ring of [`EVENTS_MAX`] events with
//! increasing sequence numbers; a reader asks for the events after the last it saw and learns
//! how many it lost.

use crate::types::{Event, EventList, Exit};
use alloc::collections::VecDeque;
use alloc::string::ToString;
use alloc::vec::Vec;
use catenary_workload::status::Summary;

pub const EVENTS_MAX: usize = 256;
/// Events one read returns at most.
pub const READ_MAX: usize = 64;

/// What an event says happened: `Event.kind` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A workload appeared.
    Created,
    /// Its state, restart count or exit changed.
    State,
    /// It went away.
    Removed,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::State => "state",
            EventKind::Removed => "removed",
        }
    }
}

#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<Event>,
    /// Sequence number of the newest event (0: none yet).
    seq: u64,
    last: Vec<Summary>,
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog::default()
    }

    fn push(&mut self, kind: EventKind, s: &Summary, now_ms: u64) {
        self.seq += 1;
        if self.events.len() == EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            seq: self.seq,
            time_ms: now_ms,
            kind: kind.name().to_string(),
            workload: s.id,
            name: s.name.clone(),
            state: s.state.name().to_string(),
            exit: s.exit.map(Exit::from),
        });
    }

    /// Take the service's current list.
    pub fn observe(&mut self, now: &[Summary], now_ms: u64) {
        let last = core::mem::take(&mut self.last);
        for s in now {
            match last.iter().find(|l| l.id == s.id) {
                None => self.push(EventKind::Created, s, now_ms),
                Some(l) if l.state != s.state || l.restarts != s.restarts || l.exit != s.exit => self.push(EventKind::State, s, now_ms),
                Some(_) => {}
            }
        }
        for l in last.iter().filter(|l| !now.iter().any(|s| s.id == l.id)) {
            self.push(EventKind::Removed, l, now_ms);
        }
        self.last = now.to_vec();
    }

    /// The events after `since`.
    pub fn read(&self, since: u64) -> EventList {
        let oldest = self.events.front().map_or(self.seq + 1, |e| e.seq);
        let lost = oldest.saturating_sub(since.saturating_add(1)).min(self.seq);
        let events: Vec<Event> = self.events.iter().filter(|e| e.seq > since).take(READ_MAX).cloned().collect();
        let next = events.last().map_or(since.max(oldest.saturating_sub(1)).min(self.seq), |e| e.seq);
        EventList { events, next, lost }
    }
}
