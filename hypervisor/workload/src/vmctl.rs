//! The kernel's VM-control interface: what the workload service (and only it: the capability
//! carries the `VMCTL` right, which the manifest grants to one service) asks of the kernel, and
//! the events the kernel sends back. The kernel keeps only mechanism: create a microVM from a
//! verified image in its store, power it off, ask its init for a signal, and report what the
//! guest did. Restarts, admission, logs and names live in the service.
//!
//! `SYS_VM(slot, op, buf, len, arg)` (syscall 21); `slot` holds the caller's capability with
//! the VMCTL right on its own endpoint; `buf`/`len` name the caller's memory (checked page by
//! page like every syscall argument). Records are postcard, at most [`RECORD_MAX`] bytes.
//!
//! | op | in | out (rax) |
//! |---|---|---|
//! | [`OP_INFO`] | — | [`NodeInfo`] in buf; bytes written |
//! | [`OP_IMAGES`] | — | `Vec<ImageInfo>` in buf; bytes written |
//! | [`OP_CREATE`] | [`CreateVm`] in buf | the VM's handle (≥ 1) |
//! | [`OP_KILL`] | arg = handle | 0: it is being powered off |
//! | [`OP_SIGNAL`] | arg = handle, len = signal (1..=64) | 0, or `ERR_UNSUPPORTED` (no init to deliver it) |
//! | [`OP_STOP`] | arg = handle, len = grace period in ms | 0: the kernel sends the image's StopSignal, SIGKILL after the grace period, and powers the VM off 5 s later |
//! | [`OP_EVENTS`] | — | `Vec<VmEvent>` in buf (as many as fit); bytes written, 0 = none |
//! | [`OP_TOUCHED`] | arg = handle | guest RAM bytes the VM has touched |
//! | [`OP_IMAGE_BEGIN`] | [`ImageBegin`] in buf | 0: the store has the image; else the upload's id (the one in progress for that image, to resume) |
//! | [`OP_IMAGE_WRITE`] | buf/len = bytes, arg = [`write_arg`]`(upload, offset)` | 0: copied into the upload's store frames |
//! | [`OP_IMAGE_COMMIT`] | arg = upload | 0: verified and in the store; `ERR_IMAGE_INVALID`: refused, its frames freed |
//! | [`OP_IMAGE_ABORT`] | arg = upload | 0: its frames freed |
//! | [`OP_IMAGE_REMOVE`] | buf = the 32 digest bytes | 0: out of the store, frames freed when no VM holds them; `ERR_IN_USE` |
//! | [`OP_STORE`] | — | [`StoreInfo`] in buf; bytes written |
//! | [`OP_TAG`] | arg = handle, buf = at most [`TAG_MAX`] bytes | 0: the kernel keeps them with the VM |
//! | [`OP_IMAGE_READ`] | buf/len = where the bytes go, holding the image's 32 digest bytes at its start; arg = offset in the stream `config.json ‖ rootfs.squashfs`, or [`READ_MANIFEST`] for `image.json` | bytes written (at most `len`, at most [`WRITE_MAX`]; 0 past the end) |
//! | [`OP_LIVE`] | — | `Vec<LiveVm>` in buf: the owner's VMs that run (a restarted service adopts them); bytes written |
//! | [`OP_DEADLINE`] | arg = handle, len = a deadline on the kernel's monotonic clock in ns (0 = none) | 0: the kernel powers the VM off once its clock passes it, whether or not the owner still runs |
//!
//! Events wait in one bounded queue per owner; when it goes from empty to non-empty the kernel
//! notifies the owner's endpoint ([`EVENT_BIT`]). Log lines beyond [`QUEUE_LOG_BYTES`] are
//! dropped and counted ([`Event::Lost`]); READY, HEALTHY, EXIT and ENDED are never dropped (at
//! most [`VMS_MAX`] microVMs each send at most four: the kernel passes on one HEALTHY per VM).

use crate::logring::Stream;
use crate::Digest;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub const OP_INFO: u64 = 1;
pub const OP_IMAGES: u64 = 2;
pub const OP_CREATE: u64 = 3;
pub const OP_KILL: u64 = 4;
pub const OP_SIGNAL: u64 = 5;
pub const OP_EVENTS: u64 = 6;
pub const OP_TOUCHED: u64 = 7;
pub const OP_STOP: u64 = 8;
/// The node's fabric /128 (16 bytes into the buffer), once its network is up; an error before.
pub const OP_NET: u64 = 9;
pub const OP_IMAGE_BEGIN: u64 = 10;
pub const OP_IMAGE_WRITE: u64 = 11;
pub const OP_IMAGE_COMMIT: u64 = 12;
pub const OP_IMAGE_ABORT: u64 = 13;
pub const OP_IMAGE_REMOVE: u64 = 14;
pub const OP_STORE: u64 = 15;
pub const OP_TAG: u64 = 16;
pub const OP_LIVE: u64 = 17;
/// Read a stored image's bytes (another node fetches the image through the API service).
pub const OP_IMAGE_READ: u64 = 18;
/// The VM's power-off deadline (`CreateVm::deadline_ns`, replaced): the kernel's fence for
/// the cluster lease, kept when the owner dies or hangs (docs/workloads.md, "The cluster lease").
pub const OP_DEADLINE: u64 = 19;
/// [`OP_IMAGE_READ`]'s arg for the image's `image.json` instead of its stream.
pub const READ_MANIFEST: u64 = u64::MAX;

/// The kernel cannot do this for that VM (a signal to a VM without catenary-init).
pub const ERR_UNSUPPORTED: u64 = 102;
/// The pushed bytes are not the image they were announced as (or the manifest is not one).
pub const ERR_IMAGE_INVALID: u64 = 103;
/// A VM (or one being created) uses the image.
pub const ERR_IN_USE: u64 = 104;
/// The store's quota (pages) cannot hold the image.
pub const ERR_QUOTA: u64 = 105;
/// [`UPLOADS_MAX`] uploads are in progress.
pub const ERR_TOO_MANY_UPLOADS: u64 = 106;
/// No such upload (finished, aborted, expired) or the write lies outside it.
pub const ERR_NO_UPLOAD: u64 = 107;

/// Uploads in progress at once (each holds its store frames from begin to commit).
pub const UPLOADS_MAX: usize = 4;
/// Largest write into an upload.
pub const WRITE_MAX: usize = 1 << 20;
/// Largest image stream (config.json + rootfs.squashfs) a push may announce.
pub const IMAGE_MAX: u64 = 256 << 20;
/// An upload untouched this long is dropped and its frames freed (the kernel's default;
/// `store.upload_idle_s=` on the node's command line).
pub const UPLOAD_IDLE_MS: u64 = 600_000;
/// Bytes the kernel keeps with a VM for its owner ([`OP_TAG`]).
pub const TAG_MAX: usize = 8 * 1024;

/// `OP_IMAGE_WRITE`'s arg: the upload's id (16 bits) and the byte offset in its stream.
pub fn write_arg(upload: u32, offset: u64) -> Option<u64> {
    (upload <= 0xffff && offset < 1 << 48).then_some(offset << 16 | upload as u64)
}

/// `OP_IMAGE_BEGIN`: push image `image` whose `image.json` is `manifest`; the stream that
/// follows is `config.json ‖ rootfs.squashfs` (the sizes `manifest` names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBegin {
    pub image: Digest,
    pub manifest: Vec<u8>,
}

/// `OP_STORE`: the image store's use of memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// Frames the store may hold (images pushed at run time and uploads in progress).
    pub quota_pages: u64,
    pub used_pages: u64,
    pub uploads: u32,
    pub images: u32,
    /// The node's free frames now.
    pub free_pages: u64,
    /// The images being uploaded now and the frames reserved for each (counted in
    /// `used_pages` from their `OP_IMAGE_BEGIN`), at most [`UPLOADS_MAX`].
    pub uploading: Vec<(Digest, u64)>,
}

impl StoreInfo {
    /// Room for one more image, MiB: what the quota leaves (the node's free memory at most),
    /// none once the workload service's index holds `indexed` ≥ [`crate::store::IMAGES_MAX`]
    /// images (boot images included). What a node reports to the cluster's scheduler (a
    /// replica goes only where its image fits) and shows in `catenary nodes`.
    pub fn room_mib(&self, indexed: usize) -> u64 {
        if indexed >= crate::store::IMAGES_MAX {
            return 0;
        }
        self.quota_pages.saturating_sub(self.used_pages).min(self.free_pages).saturating_mul(4096) >> 20
    }

    /// The uploads under way that a node reports to the cluster's scheduler beside its store's
    /// images (`held`, the workload service's index; an upload of an image already held is
    /// left out), with the room each takes, MiB: the frames reserved and room for
    /// `image.json`, rounded up (what [`crate::store::ImageInfo::store_mib`] gives the finished
    /// image, or up to 1 MiB more). That room is already reserved, so missing from
    /// [`Self::room_mib`]; reported with it, the scheduler does not count the copy against it
    /// a second time (docs/orchestration.md, "A replica goes where its image fits").
    pub fn uploads_mib(&self, held: &[crate::store::ImageInfo]) -> Vec<(Digest, u32)> {
        self.uploading
            .iter()
            .filter(|(d, _)| !held.iter().any(|h| h.digest == *d))
            .map(|(d, pages)| {
                let bytes = pages.saturating_mul(4096).saturating_add(crate::store::MANIFEST_MAX as u64);
                (*d, u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX))
            })
            .collect()
    }
}

/// `OP_LIVE`: one running VM of the caller's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveVm {
    pub vm: VmHandle,
    /// What the owner gave `OP_TAG`.
    pub tag: Vec<u8>,
    /// Its init reported READY.
    pub ready: bool,
    /// Its init reported HEALTHY (the workload's health check passed).
    pub healthy: bool,
    pub age_ms: u64,
    pub touched_bytes: u64,
}

/// Largest record either way.
pub const RECORD_MAX: usize = 64 * 1024;
/// MicroVMs one owner may have at once.
pub const VMS_MAX: usize = 32;
/// Log bytes the event queue holds before it drops lines.
pub const QUEUE_LOG_BYTES: usize = 256 * 1024;
/// The notification bit the kernel sets on the owner's endpoint when events wait.
pub const EVENT_BIT: u64 = 1 << 8;

pub type VmHandle = u64;

/// `OP_INFO`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub cpus: u32,
    /// vCPUs a microVM may have.
    pub max_vcpus: u8,
    pub images: u32,
    pub vms: u32,
    /// A workload the node's command line asks the service to create and start at boot from
    /// the first image in the store (`workload.demo=NAME workload.mem=MiB`; `cargo xtask run
    /// --image DIR`).
    pub autostart: Option<AutoStart>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoStart {
    pub name: String,
    pub memory_mib: u32,
    /// `workload.net=1`: with network (off by default: `cargo xtask run` nodes have no fabric).
    pub net: bool,
    /// `workload.health=ARG,ARG,… workload.health_interval=S workload.health_retries=N`: a
    /// health check (argv comma-separated; the command line has no quoting), timeout
    /// min(5 s, interval), no start period.
    pub health: Option<crate::spec::HealthCheck>,
}

impl AutoStart {
    /// The health check of `workload.health=`, `workload.health_interval=` (default 10) and
    /// `workload.health_retries=` (default 3) as the command line gives them.
    pub fn health_from(argv: Option<&str>, interval: Option<&str>, retries: Option<&str>) -> Option<crate::spec::HealthCheck> {
        let cmd: Vec<String> = argv?.split(',').map(String::from).collect();
        let interval_secs = interval.and_then(|s| s.parse().ok()).unwrap_or(10);
        Some(crate::spec::HealthCheck { cmd, interval_secs, timeout_secs: interval_secs.min(5), retries: retries.and_then(|s| s.parse().ok()).unwrap_or(3), start_period_secs: 0 })
    }
}

/// `OP_CREATE`: a microVM running image `image` under catenary-init.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVm {
    pub image: Digest,
    /// Its name in the node's log and its hostname (a workload name).
    pub name: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub args: Option<Vec<String>>,
    pub env: Vec<String>,
    /// Its network link slot ([`crate::net`]): a virtio-net device with the slot's MAC and /128,
    /// linked to `netd`. The kernel refuses the VM (it ends `CreateFailed`) rather than run it
    /// without the network it asked for.
    pub net: Option<u8>,
    /// Power it off once the kernel's monotonic clock passes this (ns; 0 = never), as
    /// [`OP_DEADLINE`] sets it later: set at creation, so no instant runs without it.
    pub deadline_ns: u64,
    /// The health check the guest init runs (`node.json`'s `health`).
    pub health: Option<crate::spec::HealthCheck>,
}

/// How a microVM ended, as the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// The guest powered off (catenary-init does after reporting).
    PowerOff,
    /// Reset, triple fault, a device-model error: the guest did not end on its own terms.
    Crashed,
    /// `OP_KILL`.
    Killed,
    /// A host allocation it needed failed.
    OutOfMemory,
    /// It could not be created (guest RAM, loading the kernel).
    CreateFailed,
}

/// What the guest init reported as the workload's end (the channel's EXIT frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    InitFailed(i32),
    /// Killed by this signal while the guest kernel's OOM killer killed in the VM.
    OomKilled(i32),
    /// Killed by the guest init with this signal because the VM thrashed.
    ThrashKilled(i32),
    /// Killed by the guest init with this signal because its health check failed `retries`
    /// times in a row.
    Unhealthy(i32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// One log line (at most 160 bytes, without its newline).
    Log { stream: Stream, line: Vec<u8> },
    /// Log bytes the queue dropped for this VM since its last delivered line.
    Lost { bytes: u64 },
    /// catenary-init is about to run the entrypoint.
    Ready,
    /// The workload's health check passed (once per run).
    Healthy,
    Exit(Exit),
    /// The microVM is gone (its last event).
    Ended { how: Ended, touched_bytes: u64, wall_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEvent {
    pub vm: VmHandle,
    pub event: Event,
}

/// Decode a record (hostile bytes: errors, never panics; trailing bytes are an error).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    if bytes.len() > RECORD_MAX {
        return None;
    }
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Some(v),
        _ => None,
    }
}

/// Encode a record (None if it would exceed [`RECORD_MAX`]).
pub fn encode<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    postcard::to_allocvec(v).ok().filter(|b| b.len() <= RECORD_MAX)
}

/// Events that fit in `max` bytes, as one record; how many were taken.
pub fn encode_events(events: &[VmEvent], max: usize) -> (Vec<u8>, usize) {
    let mut n = events.len();
    loop {
        if let Ok(b) = postcard::to_allocvec(&events[..n]) {
            if b.len() <= max.min(RECORD_MAX) || n == 0 {
                return if b.len() <= max { (b, n) } else { (Vec::new(), 0) };
            }
        }
        if n == 0 {
            return (Vec::new(), 0);
        }
        n = n * 3 / 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn records_round_trip_and_refuse_junk() {
        let c = CreateVm { health: None, image: Digest([7; 32]), name: "w1".into(), vcpus: 1, memory_mib: 64, args: Some(vec!["a".into()]), env: vec!["X=1".into()], net: Some(3), deadline_ns: 5 };
        let b = encode(&c).unwrap();
        assert_eq!(decode::<CreateVm>(&b), Some(c));
        let mut t = b.clone();
        t.push(0);
        assert_eq!(decode::<CreateVm>(&t), None, "trailing bytes");
        assert_eq!(decode::<CreateVm>(&b[..b.len() - 1]), None);
        assert_eq!(decode::<CreateVm>(&[0xff; 40]), None);
        let evs: Vec<VmEvent> = (0..100).map(|i| VmEvent { vm: i, event: Event::Log { stream: Stream::Stdout, line: vec![b'x'; 100] } }).collect();
        let (b, n) = encode_events(&evs, 4096);
        assert!(b.len() <= 4096 && n > 10 && n < 100);
        assert_eq!(decode::<Vec<VmEvent>>(&b).unwrap().len(), n);
        assert_eq!(encode_events(&evs, 3).1, 0);
        assert_eq!(encode_events(&[], 100).1, 0);
    }

    #[test]
    fn the_command_lines_health_check() {
        assert_eq!(AutoStart::health_from(None, Some("2"), None), None);
        let h = AutoStart::health_from(Some("/bin/busybox,test,-f,/tmp/up"), Some("2"), Some("2")).unwrap();
        assert_eq!((h.cmd.len(), h.cmd[1].as_str(), h.interval_secs, h.timeout_secs, h.retries, h.start_period_secs), (4, "test", 2, 2, 2, 0));
        let h = AutoStart::health_from(Some("true"), None, Some("x")).unwrap();
        assert_eq!((h.interval_secs, h.timeout_secs, h.retries), (10, 5, 3));
    }

    #[test]
    fn write_arg_packs_upload_and_offset() {
        assert_eq!(write_arg(3, 0x1000), Some(0x1000 << 16 | 3));
        assert_eq!(write_arg(0x1_0000, 0), None);
        assert_eq!(write_arg(1, 1 << 48), None);
    }
}
