//! One node-to-node HTTP exchange (a forwarded request, a chunk of an image fetch), sans I/O:
//! `apid` owns the socket and moves bytes when `netd` says it can; this keeps what is still to
//! send, what came back (at most `max` bytes), the deadline, and says when the answer is whole.
//! An answer is whole as soon as its head and `Content-Length` bytes of body are in (the peer's
//! FIN is not waited for); a peer that closes before that, sends what is not HTTP, sends more
//! than `max` or runs out the deadline gets no answer (`Failed`), never a partial one.

use crate::client::parse_response;
use alloc::vec::Vec;

/// Where an exchange is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not done: more to send or to receive.
    Pending,
    /// The answer: status and body.
    Done(u16, Vec<u8>),
    /// No answer: closed early, too large, not HTTP, or past the deadline.
    Failed(&'static str),
}

pub struct Exchange {
    out: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    max: usize,
    deadline_ms: u64,
}

impl Exchange {
    /// Send `request`; the whole exchange within `budget_ms` of `now_ms`; at most `max` bytes back.
    pub fn new(request: Vec<u8>, now_ms: u64, budget_ms: u64, max: usize) -> Exchange {
        Exchange { out: request, sent: 0, got: Vec::new(), max, deadline_ms: now_ms.saturating_add(budget_ms) }
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// The request's bytes not sent yet.
    pub fn unsent(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// `n` more bytes of the request were taken.
    pub fn sent(&mut self, n: usize) {
        self.sent = self.sent.saturating_add(n).min(self.out.len());
    }

    /// Bytes of the answer came.
    pub fn received(&mut self, bytes: &[u8]) -> Outcome {
        if self.got.len() + bytes.len() > self.max {
            return Outcome::Failed("the answer is too large");
        }
        self.got.extend_from_slice(bytes);
        match parse_response(&self.got) {
            Ok(Some((status, body))) => Outcome::Done(status, body),
            Ok(None) => Outcome::Pending,
            Err(_) => Outcome::Failed("the answer is not HTTP"),
        }
    }

    /// The peer closed its side: the answer must be whole by now.
    pub fn closed(&mut self) -> Outcome {
        match parse_response(&self.got) {
            Ok(Some((status, body))) => Outcome::Done(status, body),
            _ => Outcome::Failed("the peer closed before its answer was whole"),
        }
    }

    /// Past the deadline at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms > self.deadline_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

    #[test]
    fn an_answer_is_whole_once_its_body_is_in_however_it_is_cut() {
        for cut in 1..ANSWER.len() {
            let mut x = Exchange::new(b"GET / HTTP/1.1\r\n\r\n".to_vec(), 0, 100, 1024);
            assert_eq!(x.received(&ANSWER[..cut]), Outcome::Pending, "cut at {cut}");
            assert_eq!(x.received(&ANSWER[cut..]), Outcome::Done(200, b"hello".to_vec()));
        }
        // closed right after the whole answer: the same answer
        let mut x = Exchange::new(Vec::new(), 0, 100, 1024);
        assert_eq!(x.received(ANSWER), Outcome::Done(200, b"hello".to_vec()));
        assert_eq!(x.closed(), Outcome::Done(200, b"hello".to_vec()));
    }

    #[test]
    fn short_large_garbled_or_late_answers_are_no_answer() {
        let mut x = Exchange::new(Vec::new(), 0, 100, 1024);
        assert_eq!(x.received(&ANSWER[..ANSWER.len() - 1]), Outcome::Pending);
        assert!(matches!(x.closed(), Outcome::Failed(_)), "closed one byte short");
        let mut x = Exchange::new(Vec::new(), 0, 100, ANSWER.len() - 1);
        assert!(matches!(x.received(ANSWER), Outcome::Failed("the answer is too large")));
        let mut x = Exchange::new(Vec::new(), 0, 100, 1024);
        assert!(matches!(x.received(b"SSH-2.0-x\r\n\r\n"), Outcome::Failed("the answer is not HTTP")));
        let x = Exchange::new(Vec::new(), 1000, 100, 1024);
        assert!(!x.expired(1100) && x.expired(1101));
    }

    #[test]
    fn the_request_is_sent_in_whatever_pieces_are_taken() {
        let mut x = Exchange::new(b"abcdef".to_vec(), 0, 100, 1024);
        x.sent(2);
        assert_eq!(x.unsent(), b"cdef");
        x.sent(0);
        x.sent(100);
        assert_eq!(x.unsent(), b"");
    }
}
