//! The sliding replay window for transport counters.
//!
//! A bitmap of 8192 bits kept as a ring of 128 `u64` words (the layout RFC 6479 describes and
//! WireGuard uses): counters up to `WINDOW_SIZE` (8128) below the greatest accepted counter are
//! tracked exactly; anything older is rejected. Checking is split from committing so a packet
//! is only marked as seen after it has been authenticated.

/// Counters at or above this are never accepted (WireGuard's `REJECT_AFTER_MESSAGES`).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
const WORDS: usize = 128;
const BITS: u64 = 64;
/// How far below the greatest seen counter a packet may still arrive.
pub const WINDOW_SIZE: u64 = (WORDS as u64 - 1) * BITS;

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Already received.
    Duplicate,
    /// Older than the window.
    TooOld,
    /// At or beyond `REJECT_AFTER_MESSAGES`.
    Exhausted,
}

/// The replay window of one receiving key.
#[derive(Clone)]
pub struct ReplayWindow {
    /// One more than the greatest counter accepted so far (0: none yet).
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub const fn new() -> Self {
        ReplayWindow { next: 0, bits: [0; WORDS] }
    }

    /// The greatest counter accepted so far, if any.
    pub fn greatest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    fn slot(counter: u64) -> (usize, u64) {
        let word = ((counter / BITS) % WORDS as u64) as usize;
        (word, 1u64 << (counter % BITS))
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(ReplayError::Exhausted);
        }
        if counter >= self.next {
            return Ok(());
        }
        if self.next - counter > WINDOW_SIZE {
            return Err(ReplayError::TooOld);
        }
        let (w, m) = Self::slot(counter);
        match self.bits.get(w) {
            Some(bits) if bits & m == 0 => Ok(()),
            _ => Err(ReplayError::Duplicate),
        }
    }

    /// Accept `counter` (after authentication). Re-checks, so it is safe on its own.
    pub fn update(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if counter >= self.next {
            // Clear the words between the old top and the new one.
            let old_top_word = if self.next == 0 { None } else { Some((self.next - 1) / BITS) };
            let new_top_word = counter / BITS;
            match old_top_word {
                None => self.bits = [0; WORDS],
                Some(old) => {
                    let diff = new_top_word - old;
                    if diff >= WORDS as u64 {
                        self.bits = [0; WORDS];
                    } else {
                        for i in 1..=diff {
                            let idx = ((old + i) % WORDS as u64) as usize;
                            if let Some(b) = self.bits.get_mut(idx) {
                                *b = 0;
                            }
                        }
                    }
                }
            }
            self.next = counter + 1;
        }
        let (w, m) = Self::slot(counter);
        if let Some(b) = self.bits.get_mut(w) {
            *b |= m;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000u64 {
            assert!(w.update(c).is_ok());
            assert_eq!(w.update(c), Err(ReplayError::Duplicate));
        }
    }

    #[test]
    fn reordering_within_window() {
        let mut w = ReplayWindow::new();
        w.update(10_000).unwrap();
        assert!(w.update(10_000 - WINDOW_SIZE + 1).is_ok());
        assert_eq!(w.check(10_000 - WINDOW_SIZE), Err(ReplayError::TooOld));
        assert!(w.update(9_999).is_ok());
        assert_eq!(w.update(9_999), Err(ReplayError::Duplicate));
        assert!(w.update(20_000).is_ok());
        assert!(w.update(19_000).is_ok());
        assert_eq!(w.check(0), Err(ReplayError::TooOld));
        assert_eq!(w.check(REJECT_AFTER_MESSAGES), Err(ReplayError::Exhausted));
    }

    #[test]
    fn ring_words_are_cleared_when_advancing() {
        let mut w = ReplayWindow::new();
        for c in 0..64 {
            w.update(c).unwrap();
        }
        w.update(64 * 127 + 10).unwrap();
        assert_eq!(w.check(60), Err(ReplayError::Duplicate));
        w.update(64 * 128 + 5).unwrap();
        // Ring word 0 now holds counters 8192..8255: must be clear, not the old bits.
        assert!(w.check(64 * 128 + 3).is_ok());
        assert_eq!(w.check(63), Err(ReplayError::TooOld));
        w.update(5 + 64 * 128 * 3).unwrap();
        assert!(w.check(5 + 64 * 128 * 3 - 100).is_ok());
    }
}
