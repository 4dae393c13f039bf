//! workd: the workload service (docs/workloads.md). Owns the node's microVMs through its one
//! authority, the VM-control capability (`SYS_VM`, slot 1), and serves the workload protocol
//! (`catenary_workload::proto`) on its endpoint (slot 0) to any task that holds a capability to
//! it. Every decision is `catenary_workload::service::Service`'s (host-tested); this is the loop
//! around it: requests from clients (through the memory grant the kernel mapped for the call),
//! the kernel's VM events (a notification, then `OP_EVENTS`), and the service's timers.
//!
//! A restarted `workd` first adopts the microVMs its dead predecessor left running (`OP_LIVE`:
//! each with the tag `Service` gave it, `service::AdoptTag`). Image pushes (`ImageBegin`,
//! `ImageChunk`, `ImageCommit`) go to the kernel's store: a chunk's bytes are hashed here,
//! straight from the client's grant, and copied by the kernel from the grant into the store's
//! frames.
//!
//! The cluster lease (`catenary_workload::proto`, "The cluster lease"): the cluster's
//! replicas (`cl-…`) run only until the deadline `orchd` last set, taken only from the caller
//! whose kernel-set badge is orchd's (`catenary_manifest::is_from`); the loop wakes at that
//! deadline and the service stops them there, whatever `orchd` does (dead, restarting, hung).
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use catenary_user::*;
use catenary_workload::admission::Admission;
use catenary_workload::logring::DEFAULT_CAPACITY;
use catenary_workload::proto::{decode_request, encode_response, Transport, LABEL_REQUEST, REQUEST_MAX, TRANSPORT_OK};
use catenary_workload::service::{Client, LeaseEnd, LeaseNotice, Service, Vmm};
use catenary_workload::store::ImageIndex;
use catenary_workload::proto::CHUNK_OFFSET;
use catenary_workload::store::ImageInfo;
use catenary_workload::vmctl::{
    self, CreateVm, Event, ImageBegin, LiveVm, NodeInfo, StoreInfo, VmEvent, VmHandle, OP_CREATE, OP_EVENTS, OP_IMAGES, OP_IMAGE_ABORT, OP_IMAGE_BEGIN, OP_IMAGE_COMMIT,
    OP_IMAGE_READ, OP_IMAGE_REMOVE, OP_IMAGE_WRITE, OP_INFO, OP_KILL, OP_DEADLINE, OP_LIVE, OP_NET, OP_SIGNAL, OP_STOP, OP_STORE, OP_TAG, OP_TOUCHED, RECORD_MAX,
};
use catenary_workload::{Digest, Error, Request, Target};

const OWN: u64 = 0;
const VMCTL: u64 = 1;
/// 3 MiB of heap (quota 1024 pages): 32 logs of 64 KiB, the 64 KiB event buffer, requests.
const HEAP_PAGES: u64 = 768;
/// While uploads are in progress, how often the loop runs (each `SYS_VM` expires idle ones).
const UPLOAD_POLL_MS: u64 = 5_000;
/// A request served more slowly than this is logged (rate-limited).
const SLOW_MS: u64 = 300;
/// The longest the loop waits for a request.
const WAKE_MS: u64 = 1_000;
/// The heartbeat's period (`SYS_ALIVE`). Most requests take milliseconds (a microVM is
/// created and loaded by its own task), but an image's commit hashes the whole image inside
/// workd's system call (hundreds of MiB: seconds on a slow host), and that time counts.
const HEARTBEAT_MS: u64 = 60_000;

entry!(run);

/// The kernel, as the service sees it.
struct Kernel {
    buf: Vec<u8>,
    /// The current request's grant: where an `ImageChunk`'s bytes are.
    grant: Option<Grant>,
}

fn store_error(e: u64) -> Error {
    match e {
        vmctl::ERR_IMAGE_INVALID => Error::ImageInvalid,
        vmctl::ERR_IN_USE => Error::ImageInUse,
        vmctl::ERR_QUOTA | vmctl::ERR_TOO_MANY_UPLOADS => Error::StoreFull,
        vmctl::ERR_NO_UPLOAD => Error::NoSuchUpload,
        _ => Error::NoSuchImage,
    }
}

impl Vmm for Kernel {
    fn create(&mut self, req: &CreateVm) -> Option<VmHandle> {
        let mut rec = vmctl::encode(req)?;
        match vm(VMCTL, OP_CREATE, &mut rec, 0) {
            Ok(h) => Some(h),
            Err(e) => {
                logf!("workd: the kernel refused microVM {} (error {})", req.name, e);
                None
            }
        }
    }
    fn kill(&mut self, h: VmHandle) {
        let _ = vm_value(VMCTL, OP_KILL, 0, h);
    }
    fn stop(&mut self, h: VmHandle, grace_ms: u64) -> bool {
        vm_value(VMCTL, OP_STOP, grace_ms, h).is_ok()
    }
    fn signal(&mut self, h: VmHandle, signal: u8) -> bool {
        vm_value(VMCTL, OP_SIGNAL, signal as u64, h).is_ok()
    }
    fn touched(&mut self, h: VmHandle) -> Option<u64> {
        vm_value(VMCTL, OP_TOUCHED, 0, h).ok()
    }
    fn node_address(&mut self) -> Option<core::net::Ipv6Addr> {
        let mut a = [0u8; 16];
        (vm(VMCTL, OP_NET, &mut a, 0).ok()? == 16).then(|| core::net::Ipv6Addr::from(a))
    }
    fn deadline(&mut self, h: VmHandle, until_ns: u64) {
        if let Err(e) = vm_value(VMCTL, OP_DEADLINE, until_ns, h) {
            logf!("workd: the kernel refused microVM {}'s power-off deadline (error {})", h, e);
        }
    }
    fn tag(&mut self, h: VmHandle, tag: &[u8]) {
        let mut t = tag.to_vec();
        let _ = vm(VMCTL, OP_TAG, &mut t, h);
    }
    fn image_begin(&mut self, image: Digest, manifest: &[u8]) -> Result<(u32, u64), Error> {
        let (c, r) = catenary_workload::store::stream_sizes(manifest).map_err(|_| Error::ImageInvalid)?;
        let mut rec = vmctl::encode(&ImageBegin { image, manifest: manifest.to_vec() }).ok_or(Error::ImageInvalid)?;
        let id = vm(VMCTL, OP_IMAGE_BEGIN, &mut rec, 0).map_err(store_error)?;
        Ok((id as u32, if id == 0 { 0 } else { c + r }))
    }
    fn image_write(&mut self, upload: u32, offset: u64, len: u32, digest: Digest) -> Result<(), Error> {
        let g = self.grant.as_ref().ok_or(Error::Malformed)?;
        if (CHUNK_OFFSET as u64).saturating_add(len as u64) > g.len() {
            return Err(Error::Malformed);
        }
        let src = CHUNK_OFFSET as u64;
        // the digest, read from the grant in pieces (no megabyte copy in this heap)
        let mut h = catenary_workload::Hasher::new();
        let mut done = 0u64;
        while done < len as u64 {
            let n = (len as u64 - done).min(self.buf.len() as u64) as usize;
            g.read(src + done, &mut self.buf[..n]);
            h.update(&self.buf[..n]);
            done += n as u64;
        }
        if h.finish() != digest {
            return Err(Error::ChunkDigest);
        }
        let arg = vmctl::write_arg(upload, offset).ok_or(Error::NoSuchUpload)?;
        // the kernel copies the chunk from the grant into the store's frames
        g.vm(VMCTL, OP_IMAGE_WRITE, src, len as u64, arg).map(|_| ()).map_err(store_error)
    }
    fn image_commit(&mut self, upload: u32) -> Result<ImageInfo, Error> {
        let n = vm(VMCTL, OP_IMAGE_COMMIT, &mut self.buf, upload as u64).map_err(store_error)? as usize;
        self.buf.get(..n).and_then(vmctl::decode).ok_or(Error::ImageInvalid)
    }
    fn image_abort(&mut self, upload: u32) -> Result<(), Error> {
        vm_value(VMCTL, OP_IMAGE_ABORT, 0, upload as u64).map(|_| ()).map_err(store_error)
    }
    fn image_remove(&mut self, image: Digest) -> Result<(), Error> {
        let mut d = image.0;
        vm(VMCTL, OP_IMAGE_REMOVE, &mut d, 0).map(|_| ()).map_err(store_error)
    }
    fn image_read(&mut self, image: Digest, manifest: bool, offset: u64, len: u32) -> Result<u32, Error> {
        let g = self.grant.as_ref().ok_or(Error::Malformed)?;
        let len = (len as u64).max(32);
        if !g.writable() || (CHUNK_OFFSET as u64).saturating_add(len) > g.len() {
            return Err(Error::Malformed);
        }
        // the kernel reads the image's digest there, then copies the bytes over it
        g.write(CHUNK_OFFSET as u64, &image.0);
        let arg = if manifest { vmctl::READ_MANIFEST } else { offset };
        g.vm(VMCTL, OP_IMAGE_READ, CHUNK_OFFSET as u64, len, arg).map(|n| n as u32).map_err(|_| Error::NoSuchImage)
    }
    fn store(&mut self) -> Option<StoreInfo> {
        self.read(OP_STORE)
    }
    fn info(&mut self) -> Option<NodeInfo> {
        self.read(OP_INFO)
    }
}

impl Kernel {
    /// A record the kernel writes into our buffer.
    fn read<T: serde::de::DeserializeOwned>(&mut self, op: u64) -> Option<T> {
        let n = vm(VMCTL, op, &mut self.buf, 0).ok()? as usize;
        vmctl::decode(self.buf.get(..n)?)
    }
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

fn run(_arg: u64) -> u64 {
    if !dma::init_mapped(HEAP_PAGES) {
        log("workd: no memory for its heap");
        return 1;
    }
    let mut k = Kernel { buf: vec![0u8; RECORD_MAX], grant: None };
    let Some(info) = k.read::<NodeInfo>(OP_INFO) else {
        log("workd: the kernel refused OP_INFO: no VM-control capability?");
        return 2;
    };
    let mut index = ImageIndex::new();
    for i in k.read::<Vec<catenary_workload::store::ImageInfo>>(OP_IMAGES).unwrap_or_default() {
        logf!("workd: image {} in the store (rootfs {} bytes)", i.digest, i.rootfs_size);
        let _ = index.insert(i);
    }
    // the VMs a dead predecessor left running: their memory counts as the node's again
    let live: Vec<LiveVm> = k.read(OP_LIVE).unwrap_or_default();
    let held: u64 = live.iter().map(|v| v.touched_bytes).sum();
    let admission = Admission::new(info.free_bytes + held);
    logf!("workd: serving the workload protocol; {} images, {} MiB free on the node, {} MiB for workloads, {} CPUs",
        index.list().len(), info.free_bytes >> 20, admission.capacity_mib(), info.cpus);
    let first_image = index.list().first().map(|i| i.digest);
    let mut svc = Service::new(index, admission, info.max_vcpus, DEFAULT_CAPACITY);
    if !live.is_empty() {
        let n = live.len();
        let adopted = svc.adopt(live, now_ms(), &mut k);
        logf!("workd: adopted {} of the {} microVMs a previous workd left running", adopted, n);
    } else if let (Some(a), Some(image)) = (&info.autostart, first_image) {
        autostart(&mut svc, &mut k, a, image);
    }
    // No lease is known yet: adopted cluster replicas stop now, not at the first request.
    let mut next: Option<u64> = svc.tick(now_ms(), &mut k);
    lease_log(&mut svc);
    let mut slow_said = 0u64;
    loop {
        // Idle, the loop still goes round every WAKE_MS, so that it can beat.
        let _ = alive(HEARTBEAT_MS);
        let timeout = match next {
            Some(at) => at.saturating_sub(now_ms()).clamp(1, WAKE_MS) * 1_000_000,
            None => WAKE_MS * 1_000_000,
        };
        let mut what = None;
        let mut served = 0;
        if let Ok(m) = recv(OWN, timeout) {
            if m.reply != 0 {
                let t0 = now_ms();
                let mut kind = "malformed";
                serve(&mut svc, &mut k, &m, &mut kind);
                what = Some(kind);
                served = now_ms() - t0;
            }
        }
        let t1 = now_ms();
        drain_events(&mut svc, &mut k);
        next = svc.tick(now_ms(), &mut k);
        lease_log(&mut svc);
        // A request or event batch this slow holds up every caller (orchd's loop among them,
        // docs/orchestration.md "Leader stability"): say which, at most once per 10 s.
        let t2 = now_ms();
        if (served > SLOW_MS || t2 - t1 > SLOW_MS) && t2.saturating_sub(slow_said) >= 10_000 {
            logf!("workd: slow turn: request {} {} ms, events and timers {} ms", what.unwrap_or("none"), served, t2 - t1);
            slow_said = t2;
        }
        // uploads in progress: wake now and then, so the kernel drops abandoned ones
        if k.store().is_some_and(|s| s.uploads > 0) {
            let at = now_ms() + UPLOAD_POLL_MS;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
}

/// What the cluster lease made the service do (each once).
fn lease_log(svc: &mut Service) {
    for n in svc.take_lease_notices() {
        match n {
            LeaseNotice::Held { ms_left } => logf!("workd: cluster lease held ({} ms left): cluster replicas may run", ms_left),
            LeaseNotice::Stopping { why, names } => {
                let why = match why {
                    LeaseEnd::RanOut => "cluster lease ran out",
                    LeaseEnd::Withdrawn => "orchd holds no cluster lease",
                    LeaseEnd::NeverSet => "no cluster lease since workd started",
                };
                logf!("workd: {}: stopping {} cluster replicas ({:.200})", why, names.len(), names.join(" "));
            }
            LeaseNotice::Destroyed(name) => logf!("workd: destroyed {:.64} (a cluster replica without a lease)", name),
        }
    }
}

/// The workload the node's command line names (`workload.demo=NAME`): created and started
/// through the same requests a client makes.
fn autostart(svc: &mut Service, k: &mut Kernel, a: &vmctl::AutoStart, image: catenary_workload::Digest) {
    let spec = catenary_workload::WorkloadSpec {
        name: a.name.clone(), image, vcpus: 1, memory_mib: a.memory_mib, env: Vec::new(), args: None, restart: catenary_workload::RestartPolicy::No,
        net: a.net,
        health: a.health.clone(),
    };
    let r = svc.handle(Request::Create(spec), now_ms(), k).and_then(|_| svc.handle(Request::Start(Target::Name(a.name.clone())), now_ms(), k));
    match r {
        Ok(_) => logf!("workd: workload {:.64} from image {}: created and started, as the node's command line asks", a.name, image.short()),
        Err(e) => logf!("workd: the command line's workload {:.64}: refused: {:?} ({})", a.name, e, e.message()),
    }
}

fn drain_events(svc: &mut Service, k: &mut Kernel) {
    while let Some(evs) = k.read::<Vec<VmEvent>>(OP_EVENTS) {
        if evs.is_empty() {
            break;
        }
        for e in evs {
            let (vm, ended, healthy) = (e.vm, matches!(e.event, Event::Ended { .. }), matches!(e.event, Event::Healthy));
            let id = svc_id_of(svc, vm);
            svc.on_event(e, now_ms(), k);
            if let (true, Some(id)) = (healthy, id) {
                let mut c = Kernel { buf: Vec::new(), grant: None };
                if let Ok(catenary_workload::Reply::Status(st)) = svc.handle(Request::Status(Target::Id(id)), now_ms(), &mut c) {
                    logf!("workd: {} health: {} ({} ms into attempt {})", st.name, st.health.name(), st.uptime_ms, st.attempts);
                }
            }
            if let (true, Some(id)) = (ended, id) {
                let mut c = Kernel { buf: Vec::new(), grant: None };
                if let Ok(catenary_workload::Reply::Status(st)) = svc.handle(Request::Status(Target::Id(id)), now_ms(), &mut c) {
                    logf!("workd: {} ended: {}; now {} (restarts {}, attempts {}, {} KiB touched)", st.name,
                        st.exit.map(|e| alloc::format!("{e}")).unwrap_or_default(), st.state.name(), st.restarts, st.attempts, st.memory_touched >> 10);
                }
            }
        }
    }
}

/// The workload whose current microVM is `vm` (for the log line at its end).
fn svc_id_of(svc: &Service, vm: VmHandle) -> Option<u32> {
    svc.workload_of(vm)
}

/// Serve one request; `kind` is set to what it asked (the slow-turn log).
fn serve(svc: &mut Service, k: &mut Kernel, m: &Msg, kind: &mut &'static str) {
    let answer = |label: u64, w: [u64; 4]| {
        let _ = reply(m.reply, label, w);
    };
    if m.label != LABEL_REQUEST {
        return answer(Transport::UnknownLabel as u64, [0; 4]);
    }
    // the grant the kernel mapped for this call, never the words
    let Some(mut g) = grant_of(m.reply).filter(|g| g.writable()) else { return answer(Transport::NoBuffer as u64, [0; 4]) };
    let glen = g.len();
    let n = m.words[0];
    if n == 0 || n > glen || n > REQUEST_MAX as u64 {
        return answer(Transport::BadLength as u64, [0; 4]);
    }
    let mut req = vec![0u8; n as usize];
    g.read(0, &mut req);
    let resp = match decode_request(&req) {
        Ok(r) => {
            let what = describe(&r);
            *kind = request_kind(&r);
            k.grant = Some(g);
            // the kernel sets the badge from the sender's capability: orchd's cannot be claimed
            let client = if catenary_manifest::is_from(catenary_manifest::SERVICES, "orchd", m.badge) { Client::Orchestrator } else { Client::Other };
            let resp = svc.handle_from(client, r, now_ms(), k);
            if resp == Err(Error::NotOrchestrator) {
                logf!("workd: a cluster lease from client {:#x}, not orchd: refused", m.badge);
            }
            g = match k.grant.take() {
                Some(g) => g,
                None => return answer(Transport::NoBuffer as u64, [0; 4]),
            };
            if let Some(w) = what {
                match &resp {
                    Ok(_) => logf!("workd: {}: ok", w),
                    Err(e) => logf!("workd: {}: refused: {:?} ({})", w, e, e.message()),
                }
            }
            resp
        }
        Err(e) => {
            logf!("workd: a malformed request of {} bytes from client {:#x}: refused", n, m.badge);
            Err(e)
        }
    };
    let Some(out) = encode_response(&resp) else { return answer(Transport::BufferTooSmall as u64, [0; 4]) };
    if out.len() as u64 > glen {
        return answer(Transport::BufferTooSmall as u64, [0, out.len() as u64, 0, 0]);
    }
    g.write(0, &out);
    answer(TRANSPORT_OK, [out.len() as u64, 0, 0, 0]);
}

fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Create(_) => "Create",
        Request::Start(_) => "Start",
        Request::Stop { .. } => "Stop",
        Request::Destroy(_) => "Destroy",
        Request::List => "List",
        Request::Images => "Images",
        Request::Node => "Node",
        Request::ImageChunk { .. } => "ImageChunk",
        Request::ImageRead { .. } => "ImageRead",
        Request::ImageCommit { .. } => "ImageCommit",
        Request::Logs { .. } => "Logs",
        Request::Status(_) => "Status",
        Request::Spec(_) => "Spec",
        Request::ClusterLease { .. } => "ClusterLease",
        _ => "other",
    }
}

/// The log line of a request that changes something.
fn describe(r: &Request) -> Option<alloc::string::String> {
    let t = |t: &Target| match t {
        Target::Id(i) => alloc::format!("#{i}"),
        Target::Name(n) => alloc::format!("{:.64}", n),
    };
    Some(match r {
        Request::Create(s) => alloc::format!("create {:.64} ({} MiB, {} vCPU, restart {:?}, network {})", s.name, s.memory_mib, s.vcpus, s.restart, if s.net { "on" } else { "none" }),
        Request::Start(x) => alloc::format!("start {}", t(x)),
        Request::Stop { target, .. } => alloc::format!("stop {}", t(target)),
        Request::Destroy(x) => alloc::format!("destroy {}", t(x)),
        Request::Signal { target, signal } => alloc::format!("signal {} to {}", signal, t(target)),
        Request::ImageBegin { image, .. } => alloc::format!("push image {}", image.short()),
        Request::ImageCommit { upload } => alloc::format!("commit upload {upload}"),
        Request::ImageAbort { upload } => alloc::format!("abort upload {upload}"),
        Request::RemoveImage(d) => alloc::format!("remove image {}", d.short()),
        _ => return None,
    })
}
