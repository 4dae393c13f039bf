//! Answers rationed per member: at most one per window to each member, for requests (pulls,
//! vouches) that cost this node a snapshot or a replay. Keyed by member (the id's low 16
//! bits), not by id, so that a request sent in another generation's name buys no extra answer.
//! At most `kept` members are remembered; a new one pushes out the one answered longest ago.

use alloc::collections::BTreeMap;
use core::time::Duration;

use super::{member_of, ReplicaId};

/// When each member (its index in the cluster file) was last answered.
#[derive(Debug)]
pub(super) struct PerMember {
    last: BTreeMap<usize, Duration>,
    kept: usize,
}

impl PerMember {
    pub(super) fn new(kept: usize) -> Self {
        PerMember { last: BTreeMap::new(), kept }
    }

    /// True, and `now` recorded, if `from`'s member has had no answer in the last `window`.
    pub(super) fn allow(&mut self, now: Duration, from: ReplicaId, window: Duration) -> bool {
        let member = member_of(from);
        if self.last.get(&member).is_some_and(|t| now.saturating_sub(*t) < window) {
            return false;
        }
        if self.last.len() >= self.kept && !self.last.contains_key(&member) {
            let oldest = self.last.iter().min_by_key(|(_, t)| **t).map(|(m, _)| *m);
            if let Some(m) = oldest {
                self.last.remove(&m);
            }
        }
        self.last.insert(member, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_answer_per_member_per_window_whatever_the_generation() {
        let mut p = PerMember::new(4);
        assert!(p.allow(100 * MS, 0x0001_0002, 50 * MS));
        // The same member in another generation's name, inside the window.
        assert!(!p.allow(120 * MS, 0x0002_0002, 50 * MS));
        // Another member is not held back.
        assert!(p.allow(120 * MS, 3, 50 * MS));
        // After the window, the member is answered again.
        assert!(p.allow(150 * MS, 2, 50 * MS));
    }

    #[test]
    fn the_longest_answered_member_makes_room() {
        let mut p = PerMember::new(2);
        assert!(p.allow(10 * MS, 1, 100 * MS));
        assert!(p.allow(20 * MS, 2, 100 * MS));
        // A third member pushes out member 1 (answered longest ago), not member 2.
        assert!(p.allow(30 * MS, 3, 100 * MS));
        assert_eq!(p.last.len(), 2);
        assert!(!p.allow(40 * MS, 2, 100 * MS));
        assert!(p.allow(40 * MS, 1, 100 * MS));
    }
}
