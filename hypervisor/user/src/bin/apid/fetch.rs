//! Images follow their replicas (docs/orchestration.md): `orchd` says which image the replicas
//! the cluster assigned this node wait for (`LABEL_WANTED`), and this node fetches it from the
//! other nodes' `apid` over the fabric (`catenary_api::peer` routes, as this node's own key),
//! checking every byte against the image's digests (`catenary_api::fetch`) before its store
//! keeps it. One fetch at a time, one request of it at a time (a chunk is 256 KiB), as an
//! [`Outbound`] exchange the service's loop moves when `netd` reports its socket ready: the loop
//! never waits for the holder, so operators' requests (and the holder's own requests to this
//! node) are served meanwhile; an image whose fetch failed is asked for again only after
//! [`RETRY_MS`].

use crate::forward;
use crate::outbound::{Outbound, Step};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_api::fetch::{Event, Fetch};
use catenary_api::Backend;
use catenary_cluster::orch::{IPC_OK, LABEL_WANTED};
use catenary_netsock::Ready;
use catenary_user::netsock_client::Sockets;
use core::task::Poll;
use catenary_user::{call_timeout, logf, now_ns, Pages};
use catenary_workload::Digest;
use core::net::Ipv6Addr;

/// After a failed fetch, the same image is not fetched again for this long.
pub const RETRY_MS: u64 = 5_000;

struct Running {
    fetch: Fetch,
    /// The nodes asked, in order (name, /128).
    holders: Vec<(String, Ipv6Addr)>,
    started_ms: u64,
    /// The request under way: holder, path, its exchange.
    asking: Option<(usize, String, Outbound)>,
}

#[derive(Default)]
pub struct Fetcher {
    cur: Option<Running>,
    retry: BTreeMap<[u8; 32], u64>,
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

impl Fetcher {
    /// Unless a fetch is under way: ask `orchd` which image is wanted, and start fetching it
    /// from `others()` (the other nodes, those with a session first; a dead one is skipped, a
    /// left one asked last).
    pub fn ask(&mut self, orchd: u64, now: u64, others: impl FnOnce() -> Vec<forward::Other>) {
        if self.cur.is_some() {
            return;
        }
        self.retry.retain(|_, t| *t > now);
        let Ok(m) = call_timeout(orchd, LABEL_WANTED, [0; 4], 500) else { return };
        if m.label != IPC_OK {
            return;
        }
        let mut d = [0u8; 32];
        for (i, w) in m.words.iter().enumerate() {
            d[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        if self.retry.contains_key(&d) {
            return;
        }
        // a node the membership declared dead is not asked for chunks; one that left is
        // asked last (it may be switching off, but it may be the only holder: a drain before
        // a power-off copies its images from it)
        let mut holders: Vec<forward::Other> = others().into_iter().filter(|o| o.2 != forward::Reach::Dead).collect();
        holders.sort_by_key(|o| o.2 == forward::Reach::Left);
        let holders: Vec<(String, Ipv6Addr)> = holders.into_iter().map(|(n, a, _)| (n, a)).collect();
        let names: Vec<&str> = holders.iter().map(|h| h.0.as_str()).collect();
        logf!("apid: fetching image {} for this node's cluster replicas; asking {}", Digest(d), names.join(", "));
        self.cur = Some(Running { fetch: Fetch::new(Digest(d), (0..holders.len()).collect()), holders, started_ms: now, asking: None });
    }

    /// The deadline of the request under way, if any.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.cur.as_ref().and_then(|r| r.asking.as_ref()).map(|a| a.2.deadline_ms())
    }

    /// What `ready` allows of the fetch under way: its exchange moved; once an answer is in,
    /// the fetch's steps until the next request is under way (bounded). True: it did something.
    pub fn step(&mut self, s: &Sockets, io: &Pages, ready: &Ready, node: &mut dyn Backend) -> bool {
        let mut busy = false;
        // an answer handled, then the next request started: two steps; a few more for
        // events that need no answer (a holder without a session: no socket)
        for _ in 0..4 {
            match self.step1(s, io, ready, node) {
                Some(true) => busy = true,
                Some(false) | None => break,
            }
        }
        busy
    }

    /// One step of the fetch. `None`: no fetch; `Some(false)`: waiting for an answer.
    fn step1(&mut self, s: &Sockets, io: &Pages, ready: &Ready, node: &mut dyn Backend) -> Option<bool> {
        let r = self.cur.as_mut()?;
        let holders = &r.holders;
        let asking = &mut r.asking;
        let now = now_ms();
        // the same (holder, path) until its answer is in (catenary_api::fetch)
        let mut get = |h: usize, path: &str| -> Poll<Option<(u16, Vec<u8>)>> {
            let Some((_, addr)) = holders.get(h) else { return Poll::Ready(None) };
            if let Some((ah, ap, o)) = asking.as_mut() {
                if *ah == h && ap == path {
                    let answer = match o.step(s, io, ready, now) {
                        Step::Pending => return Poll::Pending,
                        Step::Done(status, body) => Some((status, body)),
                        Step::Failed => None,
                    };
                    *asking = None;
                    return Poll::Ready(answer);
                }
                o.close(s);
            }
            match Outbound::start(s, *addr, forward::get_bytes(path, *addr), now, forward::FORWARD_MS, forward::ANSWER_MAX) {
                Ok(o) => {
                    *asking = Some((h, path.into(), o));
                    Poll::Pending
                }
                Err(_) => Poll::Ready(None),
            }
        };
        let ev = r.fetch.step(node, &mut get);
        if matches!(ev, Event::Waiting { .. }) {
            // started or still under way: the next turn, when its socket is ready
            return Some(false);
        }
        let name = |h: usize| r.holders.get(h).map_or("?", |x| x.0.as_str());
        let image = r.fetch.image;
        match &ev {
            Event::Waiting { .. } => {}
            Event::Started { holder, size, chunks } => logf!("apid: {} has image {}: {} bytes in {} chunks", name(*holder), image, size, chunks),
            Event::Chunk { holder, n, chunks } => {
                if (n + 1) % 8 == 0 {
                    logf!("apid: image {}: {} of {} chunks from {}", image.short(), n + 1, chunks, name(*holder));
                }
            }
            Event::Retry { holder, n } => logf!("apid: {} did not answer for chunk {} of image {} in time: asking again", name(*holder), n, image.short()),
            Event::NotHeld { holder } => logf!("apid: {} did not give image {} (not in its store, or no answer): asking the next node{}", name(*holder), image.short(), if r.fetch.taking_over() { " from that chunk" } else { "" }),
            Event::Refused { holder, why } => logf!("apid: {} served wrong bytes for image {} ({}): refused; asking the next node{}", name(*holder), image, why, if r.fetch.taking_over() { " from that chunk" } else { "" }),
            Event::Done { from: None, .. } => logf!("apid: image {} is already in this node's store", image),
            Event::Done { from: Some(h), info } => {
                let ms = now_ms().saturating_sub(r.started_ms).max(1);
                let bytes = info.config_size + info.rootfs_size;
                let via = if r.fetch.handovers == 0 { String::new() } else { alloc::format!(" (taken over {} time(s) at the chunk where the holder before failed)", r.fetch.handovers) };
                logf!("apid: image {} fetched from {}{} and verified: {} bytes in {} ms ({} KiB/s); in this node's store", image, name(*h), via, bytes, ms, bytes * 1000 / 1024 / ms);
            }
            Event::Failed { why } => logf!("apid: fetching image {} failed: {}; trying again in {} s", image, why, RETRY_MS / 1000),
        }
        if r.fetch.finished() {
            if matches!(ev, Event::Failed { .. }) {
                self.retry.insert(image.0, now_ms() + RETRY_MS);
            }
            if let Some((_, _, o)) = &mut r.asking {
                o.close(s);
            }
            self.cur = None;
        }
        Some(true)
    }
}
