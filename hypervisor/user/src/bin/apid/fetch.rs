//! Images follow their replicas (docs/orchestration.md): `orchd` says which image the replicas
//! the cluster assigned this node wait for (`LABEL_WANTED`), and this node fetches it from the
//! other nodes' `apid` over the fabric (`catenary_api::peer` routes, as this node's own key),
//! checking every byte against the image's digests (`catenary_api::fetch`) before its store
//! keeps it. One fetch at a time; one request of it per turn of the service's loop (a chunk is
//! 256 KiB), so operators' requests are still served meanwhile; an image whose fetch failed is
//! asked for again only after [`RETRY_MS`].

use crate::forward;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use catenary_api::fetch::{Event, Fetch};
use catenary_api::Backend;
use catenary_cluster::orch::{IPC_OK, LABEL_WANTED};
use catenary_user::netsock_client::Sockets;
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
    pub fn active(&self) -> bool {
        self.cur.is_some()
    }

    /// Unless a fetch is under way: ask `orchd` which image is wanted, and start fetching it
    /// from `others()` (the other nodes: name, /128, session up), those with a session first.
    pub fn ask(&mut self, orchd: u64, now: u64, others: impl FnOnce() -> Vec<(String, Ipv6Addr, bool)>) {
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
        let holders: Vec<(String, Ipv6Addr)> = others().into_iter().map(|(n, a, _)| (n, a)).collect();
        let names: Vec<&str> = holders.iter().map(|h| h.0.as_str()).collect();
        logf!("apid: fetching image {} for this node's cluster replicas; asking {}", Digest(d), names.join(", "));
        self.cur = Some(Running { fetch: Fetch::new(Digest(d), (0..holders.len()).collect()), holders, started_ms: now });
    }

    /// One request of the fetch under way, if any.
    pub fn step(&mut self, s: &Sockets, io: &Pages, node: &mut dyn Backend) {
        let Some(r) = &mut self.cur else { return };
        let holders = &r.holders;
        let mut get = |h: usize, path: &str| {
            let (_, addr) = holders.get(h)?;
            forward::exchange(s, io, *addr, &forward::get_bytes(path, *addr), forward::FORWARD_MS)
        };
        let ev = r.fetch.step(node, &mut get);
        let name = |h: usize| r.holders.get(h).map_or("?", |x| x.0.as_str());
        let image = r.fetch.image;
        match &ev {
            Event::Started { holder, size, chunks } => logf!("apid: {} has image {}: {} bytes in {} chunks", name(*holder), image, size, chunks),
            Event::Chunk { holder, n, chunks } => {
                if (n + 1) % 8 == 0 {
                    logf!("apid: image {}: {} of {} chunks from {}", image.short(), n + 1, chunks, name(*holder));
                }
            }
            Event::Retry { holder, n } => logf!("apid: {} did not answer for chunk {} of image {} in time: asking again", name(*holder), n, image.short()),
            Event::NotHeld { holder } => logf!("apid: {} did not give image {} (not in its store, or no answer): asking the next node", name(*holder), image.short()),
            Event::Refused { holder, why } => logf!("apid: {} served wrong bytes for image {} ({}): refused; asking the next node", name(*holder), image, why),
            Event::Done { from: None, .. } => logf!("apid: image {} is already in this node's store", image),
            Event::Done { from: Some(h), info } => {
                let ms = now_ms().saturating_sub(r.started_ms).max(1);
                let bytes = info.config_size + info.rootfs_size;
                logf!("apid: image {} fetched from {} and verified: {} bytes in {} ms ({} KiB/s); in this node's store", image, name(*h), bytes, ms, bytes * 1000 / 1024 / ms);
            }
            Event::Failed { why } => logf!("apid: fetching image {} failed: {}; trying again in {} s", image, why, RETRY_MS / 1000),
        }
        if r.fetch.finished() {
            if matches!(ev, Event::Failed { .. }) {
                self.retry.insert(image.0, now_ms() + RETRY_MS);
            }
            self.cur = None;
        }
    }
}
