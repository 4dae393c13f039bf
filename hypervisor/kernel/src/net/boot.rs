//! What the stack needs at boot: the node key, the cluster file, entropy seeds, the wall clock.

use super::*;

pub(super) fn hex32(s: &str) -> Option<[u8; 32]> {
    catenary_net::cluster::hex_decode32(s)
}

/// The node's secret key from the `node.key` entry of a cpio boot module (never logged).
pub(super) fn node_key(modules: &[Module]) -> Option<[u8; 32]> {
    for m in modules {
        let Some(data) = memory::boot_module(m) else { continue };
        let Some(f) = catenary_bootinfo::ImageStore::parse(data).ok().and_then(|s| s.get(catenary_net::nodekey::NODE_KEY_FILE)) else { continue };
        match catenary_net::nodekey::parse_node_key(f) {
            Ok(k) => return Some(k),
            Err(e) => warn!(target: "net", "{}: {:?}: ignored", catenary_net::nodekey::NODE_KEY_FILE, e),
        }
    }
    None
}

/// The cluster file among the boot modules (raw text), if any.
pub(super) fn cluster_text(modules: &[Module]) -> Option<&'static [u8]> {
    for m in modules {
        let Some(mut data) = memory::boot_module(m) else { continue };
        if !Cluster::is_cluster_file(data) {
            if let Some(c) = catenary_bootinfo::ImageStore::parse(data).ok().and_then(|s| s.get("cluster.txt")) {
                data = c;
            }
        }
        if Cluster::is_cluster_file(data) {
            return Some(data);
        }
    }
    None
}

/// The cluster as the kernel reads it (the probes find their peers in it).
pub(crate) fn cluster(modules: &[Module]) -> Option<Cluster> {
    core::str::from_utf8(cluster_text(modules)?).ok().and_then(|t| Cluster::parse(t).ok())
}

/// `net.test-loss=PCT` (1..=90): TESTS ONLY — drop PCT% of the fabric IPC datagrams this
/// node sends and receives, to show that remote calls and sends survive loss. Logged loudly;
/// anything else than a number in range is refused (no loss). Probes kernel only.
#[cfg(feature = "probes")]
pub(super) fn test_loss(cmdline: &str, seed: u64) -> Option<(u64, u64)> {
    let v = crate::cmdline::get(cmdline, "net.test-loss")?;
    match v.parse::<u64>() {
        Ok(pct) if (1..=90).contains(&pct) => {
            warn!(target: "net", "TEST ONLY: net.test-loss={}: dropping {}% of fabric IPC datagrams in each direction", pct, pct);
            Some((pct, seed))
        }
        _ => {
            warn!(target: "net", "net.test-loss={:?} refused (a test-only switch: 1..=90 percent)", v);
            None
        }
    }
}

/// Unix seconds at boot per the CMOS RTC, read by [`record_rtc`] before `rtcd` owns the RTC.
pub(super) static BOOT_RTC: Mutex<Option<u64>> = Mutex::new(None);

/// Read the CMOS RTC once, early in boot (before `rtcd` starts): the fabric's handshake
/// timestamps come from it, so a rebooted node can reconnect at once.
pub fn record_rtc() {
    let Some(c) = catenary_arch::rtc::read() else {
        warn!(target: "net", "CMOS RTC: no stable reading");
        return;
    };
    let raw = catenary_net::walltime::Cmos {
        seconds: c.seconds, minutes: c.minutes, hours: c.hours, day: c.day, month: c.month, year: c.year, century: c.century, status_b: c.status_b,
    };
    match raw.unix_seconds() {
        Ok(t) => {
            let at_boot = catenary_net::walltime::unix_at_origin(t, time::now_ns());
            info!(target: "net", "wall clock: CMOS RTC reads Unix time {} (boot at {})", t, at_boot);
            *BOOT_RTC.lock() = Some(at_boot);
        }
        Err(e) => warn!(target: "net", "CMOS RTC unusable ({:?}): {:02x?}", e, raw),
    }
}

/// Unix seconds at boot (the fabric clock's origin): the RTC's, else `net.time=SECS` (given at
/// `now` ns of uptime), else the epoch (a rebooted node then waits for its old timestamps).
pub(super) fn wall_clock_at_boot(cmdline: &str, now: u64) -> u64 {
    if let Some(t) = *BOOT_RTC.lock() {
        return t;
    }
    match crate::cmdline::get(cmdline, "net.time").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) => catenary_net::walltime::unix_at_origin(t, now),
        None => {
            warn!(target: "net", "no RTC and no net.time: handshake timestamps start at the epoch");
            0
        }
    }
}

/// The node's seeds from RDSEED/RDRAND and TSC jitter (`catenary_net::entropy`); `None`
/// (networking off) on a node without a hardware entropy source unless `net.insecure-entropy`.
pub(super) fn seeds(cmdline: &str) -> Option<catenary_net::entropy::Seeds> {
    use catenary_net::entropy::{self as ent, HwSource, Verdict};
    let sample = entropy::sample();
    let source = match sample.source {
        entropy::Source::Rdseed => HwSource::Rdseed,
        entropy::Source::Rdrand => HwSource::Rdrand,
        entropy::Source::None => HwSource::None,
    };
    match ent::check(source, &sample.hw, crate::cmdline::get(cmdline, ent::INSECURE_FLAG).is_some()) {
        Ok(Verdict::Hardware(s)) => info!(target: "net", "entropy: {:?} and TSC jitter", s),
        Ok(Verdict::Insecure) => {
            for _ in 0..3 {
                warn!(target: "net", "{}", ent::INSECURE_WARNING);
            }
        }
        Err(e) => {
            log::error!(target: "net", "{}: networking off", e);
            return None;
        }
    }
    Some(ent::derive(&ent::material(&sample.hw, &sample.jitter)))
}
