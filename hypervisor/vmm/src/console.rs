//! Line-buffered console sink shared by the UART and virtio-console.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Longest line kept before it is flushed as is.
pub const MAX_LINE: usize = 1024;
/// Completed lines buffered before the oldest are dropped.
pub const MAX_LINES: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct ConsoleSink {
    cur: Vec<u8>,
    lines: VecDeque<String>,
    pub dropped_lines: u64,
    pub bytes: u64,
}

impl ConsoleSink {
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.bytes += 1;
            match b {
                b'\n' => self.flush(),
                b'\r' | 0 => {}
                _ => {
                    self.cur.push(b);
                    if self.cur.len() >= MAX_LINE {
                        self.flush();
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        let line = String::from_utf8_lossy(&self.cur).into_owned();
        self.cur.clear();
        if self.lines.len() >= MAX_LINES {
            self.lines.pop_front();
            self.dropped_lines += 1;
        }
        self.lines.push_back(line);
    }

    /// Take completed lines.
    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.drain(..).collect()
    }

    /// Take completed lines plus the unterminated tail (at VM end).
    pub fn take_all(&mut self) -> Vec<String> {
        if !self.cur.is_empty() {
            self.flush();
        }
        self.take_lines()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn lines() {
        let mut s = ConsoleSink::default();
        s.push(b"Linux version 6.1\r\nrea");
        assert_eq!(s.take_lines(), ["Linux version 6.1"]);
        s.push(b"dy\n\xff\n");
        assert_eq!(s.take_lines(), ["ready", "\u{fffd}"]);
        s.push(&[b'x'; MAX_LINE + 1]);
        assert_eq!(s.take_lines().len(), 1);
        assert_eq!(s.take_all(), ["x"]);
    }
}
