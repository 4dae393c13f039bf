//! A workload's log: a ring bounded in bytes, followable by cursor.
//!
//! Every byte the workload logged has an offset (0 for its first byte, counted since the
//! workload was created, across restarts). The ring keeps the newest bytes: appending beyond
//! its capacity drops whole records from the front. A reader keeps a cursor (the offset it
//! wants next); [`LogRing::read`] returns the records from there and the next cursor, and when
//! the cursor points at bytes already dropped it learns how many it lost and reads on from the
//! oldest byte kept.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Which output a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The guest init's own messages (why it could not run the entrypoint).
    Init,
    /// The service's own notes in the workload's log (started, exited, restarting).
    Node,
}

/// Bytes each record costs beyond its data (so that many tiny records are bounded too).
pub const RECORD_OVERHEAD: usize = 16;
/// Default ring size per workload.
pub const DEFAULT_CAPACITY: usize = 64 * 1024;

/// One record: bytes from one stream, starting at log offset `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub offset: u64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// The answer to a read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub records: Vec<Record>,
    /// The cursor for the next read (after the last byte returned).
    pub next: u64,
    /// Bytes between the reader's cursor and the oldest byte kept, which the ring dropped
    /// before the reader got them.
    pub lost: u64,
    /// Offset one past the newest byte logged so far.
    pub end: u64,
}

#[derive(Clone, Debug)]
pub struct LogRing {
    records: VecDeque<Record>,
    capacity: usize,
    used: usize,
    /// Offset of the oldest byte kept; offset after the newest.
    start: u64,
    end: u64,
}

impl LogRing {
    /// A ring holding at most `capacity` bytes (data plus [`RECORD_OVERHEAD`] per record).
    pub fn new(capacity: usize) -> LogRing {
        LogRing { records: VecDeque::new(), capacity: capacity.max(RECORD_OVERHEAD + 1), used: 0, start: 0, end: 0 }
    }

    pub fn start(&self) -> u64 {
        self.start
    }
    pub fn end(&self) -> u64 {
        self.end
    }
    /// Bytes the ring holds now (data and per-record overhead): at most its capacity.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Append `data` from `stream`. A record larger than the ring keeps only its newest bytes.
    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let room = self.capacity - RECORD_OVERHEAD;
        let (skip, keep) = if data.len() > room { (data.len() - room, &data[data.len() - room..]) } else { (0, data) };
        self.end += skip as u64;
        let cost = keep.len() + RECORD_OVERHEAD;
        while self.used + cost > self.capacity {
            let Some(r) = self.records.pop_front() else { break };
            self.used -= r.data.len() + RECORD_OVERHEAD;
        }
        let offset = self.end;
        self.end += keep.len() as u64;
        self.used += cost;
        self.records.push_back(Record { offset, stream, data: keep.to_vec() });
        self.start = self.records.front().map(|r| r.offset).unwrap_or(self.end);
    }

    /// Records from `cursor` on, at most `max` data bytes (a record is cut to fit; at least one
    /// byte is returned when there is any and `max` > 0).
    pub fn read(&self, cursor: u64, max: usize) -> LogChunk {
        let (mut at, lost) = if cursor < self.start { (self.start, self.start - cursor) } else { (cursor.min(self.end), 0) };
        let mut out = LogChunk { records: Vec::new(), next: at, lost, end: self.end };
        let mut left = max;
        // records are in offset order: find the first one that ends after `at`
        let first = self.records.partition_point(|r| r.offset + r.data.len() as u64 <= at);
        for r in self.records.range(first..) {
            if left == 0 {
                break;
            }
            let from = (at - r.offset) as usize;
            let n = (r.data.len() - from).min(left);
            out.records.push(Record { offset: at, stream: r.stream, data: r.data[from..from + n].to_vec() });
            at += n as u64;
            left -= n;
        }
        out.next = at;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &LogChunk) -> Vec<u8> {
        c.records.iter().flat_map(|r| r.data.iter().copied()).collect()
    }

    #[test]
    fn follow_by_cursor() {
        let mut l = LogRing::new(1024);
        l.push(Stream::Stdout, b"hello\n");
        l.push(Stream::Stderr, b"oops\n");
        let c = l.read(0, 1000);
        assert_eq!(text(&c), b"hello\noops\n");
        assert_eq!((c.next, c.lost, c.end), (11, 0, 11));
        assert_eq!(c.records[1], Record { offset: 6, stream: Stream::Stderr, data: b"oops\n".to_vec() });
        // nothing new: same cursor back
        let c2 = l.read(c.next, 1000);
        assert!(c2.records.is_empty());
        assert_eq!(c2.next, 11);
        l.push(Stream::Stdout, b"more\n");
        assert_eq!(text(&l.read(c.next, 1000)), b"more\n");
        // a small max cuts inside a record, and the next read goes on from there
        let a = l.read(2, 5);
        assert_eq!(text(&a), b"llo\no");
        let b = l.read(a.next, 100);
        assert_eq!(text(&b), b"ops\nmore\n");
        // a cursor beyond the end is the end
        assert_eq!(l.read(1 << 40, 10).next, 16);
        assert!(l.read(0, 0).records.is_empty());
    }

    #[test]
    fn a_reader_that_falls_behind_learns_what_it_lost() {
        let mut l = LogRing::new(100);
        for i in 0..20u8 {
            l.push(Stream::Stdout, &[b'a' + i; 10]);
            assert!(l.used() <= 100);
        }
        // 26 bytes per record: 3 fit
        assert_eq!(l.end(), 200);
        assert_eq!(l.start(), 170);
        let c = l.read(0, 1000);
        assert_eq!(c.lost, 170);
        assert_eq!(c.records[0].offset, 170);
        assert_eq!(text(&c).len(), 30);
        assert_eq!(c.next, 200);
        let c = l.read(175, 1000);
        assert_eq!(c.lost, 0);
        assert_eq!(text(&c).len(), 25);
    }

    #[test]
    fn a_record_larger_than_the_ring_keeps_its_tail() {
        let mut l = LogRing::new(64);
        let big: Vec<u8> = (0..200u8).collect();
        l.push(Stream::Stdout, &big);
        assert_eq!(l.end(), 200);
        assert!(l.used() <= 64);
        let c = l.read(0, 1000);
        assert_eq!(c.lost, 200 - 48);
        assert_eq!(text(&c), &big[152..]);
        // tiny rings and empty pushes
        let mut t = LogRing::new(0);
        t.push(Stream::Node, b"");
        t.push(Stream::Node, b"xyz");
        assert_eq!(text(&t.read(0, 10)), b"z");
    }
}
