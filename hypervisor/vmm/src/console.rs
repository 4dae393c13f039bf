//! A microVM's console output path, bounded end to end (docs/vmm.md, "Console").
//!
//! - [`ConsoleRing`]: the per-VM byte ring (default [`RING_BYTES`] = 64 KiB, allocated once,
//!   fallibly) fed by the 16550 UART and the virtio-console. When it is full the **oldest**
//!   bytes are overwritten and counted in [`ConsoleRing::dropped`]: the newest output (a
//!   guest's last words before it dies) is the most useful, and a flood cannot push it out.
//! - [`TokenBucket`]: the per-VM rate limit on how fast the node drains the ring to its serial
//!   console (default [`RATE_BYTES_PER_S`] with a [`BURST_BYTES`] burst). A guest writing
//!   faster than that fills its ring and loses its own oldest bytes; nothing else waits.
//! - [`LineSplitter`]: cuts the drained bytes into output lines of at most [`MAX_OUT_LINE`]
//!   bytes (CR and NUL removed), so the node prints a guest's output in short bounded pieces.
//! - [`ConsoleCapture`]: a bounded copy of the printed lines (the first [`CAPTURE_HEAD`] and
//!   the last [`CAPTURE_TAIL`] bytes) for run reports and tests.
//!
//! Everything here is allocation-free after construction.

use alloc::collections::{TryReserveError, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes of guest console output buffered per VM.
pub const RING_BYTES: usize = 64 * 1024;
/// Sustained bytes per second a VM may print on the node's console: below what a 115200-baud
/// serial line carries (~11.5 KB/s), so one VM cannot saturate a real node console.
pub const RATE_BYTES_PER_S: u64 = 8 * 1024;
/// Bytes a VM may print at once (a Linux boot log fits).
pub const BURST_BYTES: u64 = 64 * 1024;
/// Longest piece of guest output printed as one node console line.
pub const MAX_OUT_LINE: usize = 160;
/// Bytes of printed lines kept from the start / the end of a run for its report.
pub const CAPTURE_HEAD: usize = 8 * 1024;
pub const CAPTURE_TAIL: usize = 8 * 1024;

/// Bounded byte ring; overwrites its oldest bytes when full.
#[derive(Debug, Clone)]
pub struct ConsoleRing {
    buf: Vec<u8>,
    /// Index of the oldest byte.
    head: usize,
    len: usize,
    /// Bytes the guest wrote (accepted or not).
    pub written: u64,
    /// Bytes lost in the ring: overwritten before they were drained (or cut from an
    /// oversized transmit buffer). Not counting [`ConsoleRing::keep_newest`].
    pub dropped: u64,
}

impl ConsoleRing {
    /// A ring of `cap` bytes (at least 1), allocated fallibly.
    pub fn try_new(cap: usize) -> Result<Self, TryReserveError> {
        let cap = cap.max(1);
        let mut buf = Vec::new();
        buf.try_reserve_exact(cap)?;
        buf.resize(cap, 0);
        Ok(ConsoleRing { buf, head: 0, len: 0, written: 0, dropped: 0 })
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `bytes`, overwriting the oldest ones when full.
    pub fn push(&mut self, bytes: &[u8]) {
        let cap = self.buf.len();
        self.written += bytes.len() as u64;
        // Only the last `cap` bytes of a huge write can survive.
        let skip = bytes.len().saturating_sub(cap);
        self.dropped += skip as u64;
        for &b in &bytes[skip..] {
            let tail = (self.head + self.len) % cap;
            self.buf[tail] = b;
            if self.len == cap {
                self.head = (self.head + 1) % cap;
                self.dropped += 1;
            } else {
                self.len += 1;
            }
        }
    }

    pub fn push_byte(&mut self, b: u8) {
        self.push(&[b]);
    }

    /// Move up to `out.len()` of the oldest bytes into `out`.
    pub fn pop(&mut self, out: &mut [u8]) -> usize {
        let cap = self.buf.len();
        let n = out.len().min(self.len);
        for o in out.iter_mut().take(n) {
            *o = self.buf[self.head];
            self.head = (self.head + 1) % cap;
        }
        self.len -= n;
        n
    }

    /// Discard all but the newest `keep` bytes; returns how many were discarded.
    pub fn keep_newest(&mut self, keep: usize) -> u64 {
        let d = self.len.saturating_sub(keep);
        self.head = (self.head + d) % self.buf.len();
        self.len -= d;
        d as u64
    }
}

/// Token bucket in bytes: `rate` tokens per second, at most `burst` stored; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last_ns: u64,
    /// Nanoseconds of refill not yet turned into a whole token.
    frac_ns: u64,
}

impl TokenBucket {
    pub fn new(rate_per_s: u64, burst: u64, now_ns: u64) -> Self {
        TokenBucket { rate: rate_per_s, burst, tokens: burst, last_ns: now_ns, frac_ns: 0 }
    }

    fn refill(&mut self, now_ns: u64) {
        let dt = now_ns.saturating_sub(self.last_ns).saturating_add(self.frac_ns);
        self.last_ns = self.last_ns.max(now_ns);
        if self.rate == 0 {
            self.frac_ns = 0;
            return;
        }
        // Whole tokens earned in dt; the remainder carries over (no drift at small dt).
        let add = (dt as u128 * self.rate as u128 / 1_000_000_000) as u64;
        let used_ns = (add as u128 * 1_000_000_000 / self.rate as u128) as u64;
        self.frac_ns = if self.tokens.saturating_add(add) >= self.burst { 0 } else { dt - used_ns };
        self.tokens = self.tokens.saturating_add(add).min(self.burst);
    }

    /// Take up to `want` tokens at `now_ns`; returns how many were granted.
    pub fn take(&mut self, now_ns: u64, want: u64) -> u64 {
        self.refill(now_ns);
        let n = want.min(self.tokens);
        self.tokens -= n;
        n
    }

    pub fn available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        self.tokens
    }
}

/// Cuts a byte stream into lines of at most [`MAX_OUT_LINE`] bytes.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    cur: [u8; MAX_OUT_LINE],
    len: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter { cur: [0; MAX_OUT_LINE], len: 0 }
    }
}

impl LineSplitter {
    /// Feed bytes; `emit` gets every completed line (without its newline).
    pub fn feed(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            match b {
                b'\n' => {
                    emit(&self.cur[..self.len]);
                    self.len = 0;
                }
                b'\r' | 0 => {}
                _ => {
                    self.cur[self.len] = b;
                    self.len += 1;
                    if self.len == MAX_OUT_LINE {
                        emit(&self.cur[..self.len]);
                        self.len = 0;
                    }
                }
            }
        }
    }

    /// Emit the unterminated rest, if any.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.len > 0 {
            emit(&self.cur[..self.len]);
            self.len = 0;
        }
    }
}

/// The first [`CAPTURE_HEAD`] and last [`CAPTURE_TAIL`] bytes of printed lines.
#[derive(Debug, Clone)]
pub struct ConsoleCapture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Lines that are in neither part.
    pub skipped_lines: u64,
}

impl ConsoleCapture {
    pub fn try_new() -> Result<Self, TryReserveError> {
        let mut head = Vec::new();
        head.try_reserve_exact(CAPTURE_HEAD)?;
        let mut tail = VecDeque::new();
        tail.try_reserve_exact(CAPTURE_TAIL)?;
        Ok(ConsoleCapture { head, tail, skipped_lines: 0 })
    }

    pub fn line(&mut self, line: &[u8]) {
        let line = &line[..line.len().min(CAPTURE_TAIL - 1)];
        if self.tail.is_empty() && self.head.len() + line.len() < CAPTURE_HEAD {
            self.head.extend_from_slice(line);
            self.head.push(b'\n');
            return;
        }
        // Make room in the tail by dropping its oldest whole lines.
        while self.tail.len() + line.len() + 1 > CAPTURE_TAIL {
            while let Some(b) = self.tail.pop_front() {
                if b == b'\n' {
                    break;
                }
            }
            self.skipped_lines += 1;
        }
        self.tail.extend(line.iter().copied());
        self.tail.push_back(b'\n');
    }

    /// The captured lines, head then tail.
    pub fn lines(&self) -> Vec<String> {
        let split = |bytes: &[u8], out: &mut Vec<String>| {
            // Every stored line ends with '\n'.
            for l in bytes.split(|&c| c == b'\n') {
                out.push(String::from_utf8_lossy(l).into_owned());
            }
            out.pop();
        };
        let mut out = Vec::new();
        split(&self.head, &mut out);
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        split(&tail, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_newest_and_counts() {
        let mut r = ConsoleRing::try_new(8).unwrap();
        r.push(b"abcde");
        let mut o = [0u8; 3];
        assert_eq!(r.pop(&mut o), 3);
        assert_eq!(&o, b"abc");
        r.push(b"fghijkl"); // 2 + 7 = 9 > 8: 'd' overwritten
        assert_eq!(r.len(), 8);
        assert_eq!(r.dropped, 1);
        let mut o = [0u8; 16];
        assert_eq!(r.pop(&mut o), 8);
        assert_eq!(&o[..8], b"efghijkl");
        assert!(r.is_empty());
        // A write larger than the ring keeps only its last bytes.
        r.push(&[b'x'; 100]);
        r.push(b"END");
        assert_eq!(r.len(), 8);
        assert_eq!(r.dropped, 1 + 92 + 3);
        assert_eq!(r.written, 5 + 7 + 100 + 3);
        assert_eq!(r.pop(&mut o), 8);
        assert_eq!(&o[..8], b"xxxxxEND");
        // keep_newest
        r.push(b"12345678");
        assert_eq!(r.keep_newest(3), 5);
        assert_eq!(r.pop(&mut o), 3);
        assert_eq!(&o[..3], b"678");
    }

    #[test]
    fn ring_never_grows_under_flood() {
        let mut r = ConsoleRing::try_new(RING_BYTES).unwrap();
        let chunk = [b'y'; 4096];
        for _ in 0..1000 {
            r.push(&chunk);
        }
        assert_eq!(r.capacity(), RING_BYTES);
        assert_eq!(r.len(), RING_BYTES);
        assert_eq!(r.dropped, 1000 * 4096 - RING_BYTES as u64);
    }

    #[test]
    fn bucket_rate_and_burst() {
        let s = 1_000_000_000u64;
        let mut b = TokenBucket::new(1000, 4000, 0);
        assert_eq!(b.take(0, 10_000), 4000); // burst
        assert_eq!(b.take(0, 1), 0);
        assert_eq!(b.take(s / 2, 10_000), 500); // half a second: 500 tokens
        // Many tiny steps add up exactly (fractions carried).
        let mut got = 0;
        for i in 1..=1000u64 {
            got += b.take(s / 2 + i * 1_000_000 / 3, 10_000);
        }
        assert_eq!(got, 333);
        // Refill caps at the burst.
        assert_eq!(b.take(100 * s, u64::MAX), 4000);
        // Time going backwards never adds tokens.
        assert_eq!(b.take(s, 10), 0);
        // Over 10 s of constant demand, at most burst + 10 s * rate are granted.
        let mut b = TokenBucket::new(RATE_BYTES_PER_S, BURST_BYTES, 0);
        let mut total = 0;
        for ms in 0..=10_000u64 {
            total += b.take(ms * 1_000_000, u64::MAX);
        }
        assert_eq!(total, BURST_BYTES + 10 * RATE_BYTES_PER_S);
    }

    #[test]
    fn splitter_bounds_lines() {
        let mut s = LineSplitter::default();
        let mut out: Vec<Vec<u8>> = Vec::new();
        s.feed(b"Linux version 6.1\r\nrea", |l| out.push(l.to_vec()));
        s.feed(b"dy\n", |l| out.push(l.to_vec()));
        s.feed(&[b'z'; MAX_OUT_LINE * 2 + 5], |l| out.push(l.to_vec()));
        s.flush(|l| out.push(l.to_vec()));
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], b"Linux version 6.1");
        assert_eq!(out[1], b"ready");
        assert_eq!(out[2].len(), MAX_OUT_LINE);
        assert_eq!(out[4], b"zzzzz");
    }

    #[test]
    fn capture_head_and_tail() {
        let mut c = ConsoleCapture::try_new().unwrap();
        c.line(b"starting scenario");
        for i in 0..10_000 {
            c.line(alloc::format!("line {i}").as_bytes());
        }
        c.line(b"done");
        let l = c.lines();
        assert_eq!(l[0], "starting scenario");
        assert_eq!(l.last().unwrap(), "done");
        let bytes: usize = l.iter().map(|s| s.len() + 1).sum();
        assert!(bytes <= CAPTURE_HEAD + CAPTURE_TAIL, "{bytes}");
        assert!(c.skipped_lines > 0);
        assert!(l.contains(&String::from("line 9999")));
    }
}
