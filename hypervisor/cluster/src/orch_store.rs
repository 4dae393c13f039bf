//! A node's image store as the scheduler sees it: what this node reports of its own
//! ([`StoreReport::new`], sent by [`StoreSender`]) and what the leader keeps of each member's
//! reports ([`StoreReport::on_capacity`], [`StoreReport::on_store`]).
//!
//! Two messages carry it: [`Wire::Capacity`] lists the images a node holds (every capacity
//! period), [`Wire::Store`] the room left in its store and the images' sizes, uploads under
//! way included (when it changed, and every few periods). An upload travels only in
//! `Wire::Store`, beside the room it is reserved from, so that whichever of the two reports the
//! leader last got, a copy under way takes its room once.

use alloc::vec::Vec;

use crate::placement::{IMAGES_MAX, STORE_UNKNOWN};
use crate::raft_codec::Wire;

/// A node's image store as it reports it: the images it holds ([`Wire::Capacity`]), and the
/// room left and the images' sizes ([`Wire::Store`]; unknown until one arrives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StoreReport {
    pub(super) images: Vec<[u8; 32]>,
    pub(super) sizes: Vec<([u8; 32], u32)>,
    pub(super) free_mib: u64,
}

impl Default for StoreReport {
    fn default() -> Self {
        StoreReport { images: Vec::new(), sizes: Vec::new(), free_mib: STORE_UNKNOWN }
    }
}

impl StoreReport {
    /// This node's report: the images it holds and the uploads under way (digest and size or
    /// reserved room, MiB), and the room left (which no longer includes the uploads). At most
    /// [`IMAGES_MAX`] held images are kept (the smallest digests); the uploads not also held
    /// go in `sizes` only, and only while it has room for them beside the held ones, so an
    /// upload never pushes a held image out (one left out is counted against the room by the
    /// scheduler: cautious).
    pub(super) fn new(mut held: Vec<([u8; 32], u32)>, mut uploading: Vec<([u8; 32], u32)>, free_mib: u64) -> Self {
        held.sort();
        held.dedup_by_key(|i| i.0);
        held.truncate(IMAGES_MAX);
        uploading.sort();
        uploading.dedup_by_key(|i| i.0);
        let images: Vec<[u8; 32]> = held.iter().map(|i| i.0).collect();
        let mut sizes = held;
        for u in uploading.into_iter().filter(|u| !images.contains(&u.0)) {
            if sizes.len() >= IMAGES_MAX {
                break;
            }
            sizes.push(u);
        }
        StoreReport { images, sizes, free_mib }
    }

    /// A member's [`Wire::Capacity`]: the images it holds now.
    pub(super) fn on_capacity(&mut self, images: Vec<[u8; 32]>) {
        self.images = images;
    }

    /// A member's [`Wire::Store`]: its room and the sizes of its images and uploads.
    pub(super) fn on_store(&mut self, free_mib: u64, sizes: Vec<([u8; 32], u32)>) {
        self.free_mib = free_mib;
        self.sizes = sizes;
    }

    /// The images the scheduler counts as this store's: those the capacity report lists, and
    /// those only the store report lists (uploads under way, whose room that same report's
    /// `free_mib` already excludes; or, while a capacity report that dropped an image is newer
    /// than the last store report, that image). An upload travels only with the room it is
    /// reserved from, so a lost store report never makes it held against a room that still
    /// counts it: its copy is then counted against that room, once.
    pub(super) fn placement_images(&self) -> Vec<[u8; 32]> {
        let mut v = self.images.clone();
        for (d, _) in &self.sizes {
            if !v.contains(d) {
                v.push(*d);
            }
        }
        v
    }

    /// The size of each of `images`, in order, when the report has them all (else none).
    pub(super) fn image_mib(&self, images: &[[u8; 32]]) -> Vec<u32> {
        images.iter().map(|d| self.sizes.iter().find(|s| s.0 == *d).map(|s| s.1)).collect::<Option<Vec<u32>>>().unwrap_or_default()
    }
}

/// A node sends its [`Wire::Store`] when it changed, and at least every this many capacity
/// periods (so that a new leader, or a member that restarted, learns it).
pub(super) const STORE_RESEND_PERIODS: u32 = 5;

/// When this node's [`Wire::Store`] is due: the report last sent, and capacity periods since.
#[derive(Default, Debug)]
pub(super) struct StoreSender {
    sent: Option<StoreReport>,
    periods: u32,
}

impl StoreSender {
    /// Called once per capacity period: the [`Wire::Store`] to send with this period's
    /// capacity, if `own` changed since the last one sent or it is time to repeat it.
    pub(super) fn due(&mut self, own: &StoreReport) -> Option<Wire> {
        self.periods += 1;
        if self.sent.as_ref() == Some(own) && self.periods < STORE_RESEND_PERIODS {
            return None;
        }
        self.sent = Some(own.clone());
        self.periods = 0;
        Some(Wire::Store { free_mib: own.free_mib, images: own.sizes.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// The store report is sent at once, again only when it changes or every
    /// [`STORE_RESEND_PERIODS`] capacity periods, and carries the uploads with the room.
    #[test]
    fn the_store_report_is_sent_when_it_changes_and_every_few_periods() {
        let mut tx = StoreSender::default();
        let own = StoreReport::new(vec![([1; 32], 10)], vec![([2; 32], 600)], 100);
        assert_eq!(tx.due(&own), Some(Wire::Store { free_mib: 100, images: vec![([1; 32], 10), ([2; 32], 600)] }));
        for period in 1..STORE_RESEND_PERIODS {
            assert_eq!(tx.due(&own), None, "resent unchanged after {period} periods");
        }
        assert!(tx.due(&own).is_some(), "not repeated after {STORE_RESEND_PERIODS} periods");
        assert_eq!(tx.due(&own), None);
        let done = StoreReport::new(vec![([1; 32], 10), ([2; 32], 580)], Vec::new(), 120);
        assert_eq!(tx.due(&done), Some(Wire::Store { free_mib: 120, images: vec![([1; 32], 10), ([2; 32], 580)] }), "a change waited");
    }

    /// A member's reports as the leader keeps them: the capacity report's images replace the
    /// held list, the store report the room and sizes, each leaving the other's part alone.
    #[test]
    fn a_members_two_reports_each_replace_their_own_part() {
        let mut st = StoreReport::default();
        assert_eq!(st.free_mib, STORE_UNKNOWN);
        st.on_store(300, vec![([1; 32], 10), ([2; 32], 600)]);
        st.on_capacity(vec![[1; 32]]);
        assert_eq!(st.placement_images(), vec![[1; 32], [2; 32]]);
        assert_eq!(st.image_mib(&[[2; 32], [1; 32]]), vec![600, 10]);
        assert_eq!(st.image_mib(&[[3; 32]]), Vec::<u32>::new(), "a size made up");
        st.on_capacity(vec![[1; 32], [2; 32]]);
        assert_eq!(st.free_mib, 300);
        assert_eq!(st.placement_images(), vec![[1; 32], [2; 32]]);
        // a later store report replaces the sizes whole and leaves the held images alone
        st.on_store(250, vec![([1; 32], 10)]);
        assert_eq!(st.images, vec![[1; 32], [2; 32]]);
        assert_eq!(st.free_mib, 250);
        assert_eq!(st.image_mib(&[[2; 32]]), Vec::<u32>::new(), "a size kept from the older report");
    }
}
