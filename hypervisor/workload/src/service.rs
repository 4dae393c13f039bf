//! The workload service's state machine: every request, kernel event and timer of `workd`
//! goes through [`Service`], which is deterministic (the clock is an argument) and reaches the
//! kernel only through the [`Vmm`] trait — so the whole service is tested on the host with a
//! simulated kernel, and `workd` is the loop around it.

use crate::admission::Admission;
use crate::logring::{LogRing, Stream};
use crate::proto::{is_cluster_replica, Error, NodeResources, Reply, Request, Target, GRACE_DEFAULT_MS, GRACE_MAX_MS, LEASE_MAX_MS, LOG_READ_MAX, SIGNAL_MAX, WORKLOADS_MAX};
use crate::restart::{Decision, Restarts};
use crate::spec::{WorkloadSpec, ENV_ATTEMPT, ENV_WORKLOAD};
use crate::status::{ExitStatus, Health, State, Status, Summary, WorkloadId};
use crate::proto::CHUNK_MAX;
use crate::store::{ImageIndex, ImageInfo, MANIFEST_MAX};
use crate::vmctl::{self, CreateVm, Event, StoreInfo, VmEvent, VmHandle};
use crate::Digest;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// After SIGKILL, how long the kernel lets the init report before it powers the VM off
/// (`catenary_vmm::stop::KILL_GRACE_NS`).
pub const KILL_GRACE_MS: u64 = 5_000;
/// If a stopped VM has not ended this long after the kernel should have powered it off,
/// `workd` powers it off itself.
pub const BACKSTOP_MS: u64 = 5_000;
/// Lease notices kept for the loop's log between two [`Service::take_lease_notices`].
pub const NOTICES_MAX: usize = 2 * WORKLOADS_MAX + 2;

/// Who sent a request: `workd` tells by the call's kernel-set badge (`proto`, "Who may ask
/// what"). Only [`Client::Orchestrator`] may set the cluster lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// The node's `orchd`.
    Orchestrator,
    Other,
}

/// Why the cluster's replicas were stopped ([`LeaseNotice::Stopping`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The deadline `orchd` set passed without renewal.
    RanOut,
    /// `orchd` said it holds no lease (a deadline of 0 or already past).
    Withdrawn,
    /// No lease since this service started (a restarted `workd` adopted them).
    NeverSet,
}

/// What the cluster lease made the service do, for the loop's log (each said once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseNotice {
    /// The lease holds again (or for the first time): `ms_left` until its deadline.
    Held { ms_left: u64 },
    /// The lease does not hold: these cluster replicas were running and are being stopped.
    Stopping { why: LeaseEnd, names: Vec<String> },
    /// A cluster replica that ended without a lease was destroyed (its memory is free).
    Destroyed(String),
}

/// The cluster lease ([`Request::ClusterLease`]): cluster replicas run only while `now_ms <
/// until_ms`.
#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    /// 0: none.
    until_ms: u64,
    /// `orchd` set it at least once since this service started.
    set: bool,
    /// The last deadline `orchd` set was already past when it came.
    withdrawn: bool,
    /// Whether it held at the last check (a change is a notice).
    held: bool,
}

/// What the service needs from the kernel (`SYS_VM` in `workd`; a simulation in tests).
pub trait Vmm {
    fn create(&mut self, req: &CreateVm) -> Option<VmHandle>;
    /// Power it off now; its `Ended` event follows.
    fn kill(&mut self, vm: VmHandle);
    /// Stop it: the image's StopSignal through its init, SIGKILL after `grace_ms`, power-off
    /// [`KILL_GRACE_MS`] later (the kernel applies the sequence); false if the kernel cannot.
    fn stop(&mut self, vm: VmHandle, grace_ms: u64) -> bool;
    /// Ask its init to deliver `signal` (1..=64) to the workload; false if it cannot.
    fn signal(&mut self, vm: VmHandle, signal: u8) -> bool;
    /// Guest RAM it touched so far.
    fn touched(&mut self, vm: VmHandle) -> Option<u64>;
    /// The node's fabric /128 (its /64 holds the workloads' addresses); None while the node's
    /// network is not up.
    fn node_address(&mut self) -> Option<core::net::Ipv6Addr>;
    /// Keep `tag` with the VM (what a restarted service adopts it by).
    fn tag(&mut self, _vm: VmHandle, _tag: &[u8]) {}
    /// Replace the VM's power-off deadline in the kernel (`OP_DEADLINE`; ns, 0 = none): the
    /// kernel powers it off once its clock passes it, even if this service is dead or hung.
    fn deadline(&mut self, vm: VmHandle, until_ns: u64);
    /// Start (or resume) pushing an image: `(0, 0)` when the store has it, else the upload and
    /// its stream's size.
    fn image_begin(&mut self, _image: Digest, _manifest: &[u8]) -> Result<(u32, u64), Error> {
        Err(Error::Unsupported)
    }
    /// The current request's chunk (`len` bytes for `offset`, which must have `digest`).
    fn image_write(&mut self, _upload: u32, _offset: u64, _len: u32, _digest: Digest) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
    fn image_commit(&mut self, _upload: u32) -> Result<ImageInfo, Error> {
        Err(Error::Unsupported)
    }
    fn image_abort(&mut self, _upload: u32) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
    fn image_remove(&mut self, _image: Digest) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
    /// Copy a stored image's `image.json` (`manifest`) or up to `len` bytes of its stream from
    /// `offset` to where the current request's chunk goes; the count copied.
    fn image_read(&mut self, _image: Digest, _manifest: bool, _offset: u64, _len: u32) -> Result<u32, Error> {
        Err(Error::Unsupported)
    }
    fn store(&mut self) -> Option<StoreInfo> {
        None
    }
    /// The kernel's view of the node (`OP_INFO`): CPUs online, memory total and free.
    fn info(&mut self) -> Option<crate::vmctl::NodeInfo> {
        None
    }
}

/// What the kernel keeps with each VM for the service (`OP_TAG`): enough to rebuild the
/// workload when a restarted `workd` adopts the VM (`OP_LIVE`, [`Service::adopt`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptTag {
    pub id: WorkloadId,
    pub spec: WorkloadSpec,
    pub restarts: u32,
    pub streak: u32,
    pub attempts: u32,
    /// Its network link slot (its /128 and MAC).
    pub net: Option<u8>,
}

/// Where a stop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopStage {
    /// The kernel runs the stop sequence: power it off ourselves at the deadline (backstop).
    Asked,
    /// Powered off: waiting for the `Ended` event.
    PoweredOff,
}

struct Workload {
    id: WorkloadId,
    spec: WorkloadSpec,
    /// `spec.digest()`, once (the list carries it on every call).
    spec_digest: crate::Digest,
    state: State,
    vm: Option<VmHandle>,
    exit: Option<ExitStatus>,
    /// The init's EXIT report for the current run (arrives before `Ended`).
    reported: Option<vmctl::Exit>,
    restarts: Restarts,
    attempts: u32,
    started_ms: u64,
    ended_ms: u64,
    restart_at: Option<u64>,
    stop: Option<(StopStage, u64)>,
    stopped: bool,
    touched: u64,
    log: LogRing,
    /// Its network link slot (`crate::net`): kept across restarts, freed by destroy.
    net: Option<u8>,
    /// The guest init reported that the health check passed in the current run.
    healthy: bool,
}

impl Workload {
    fn health(&self) -> Health {
        match (&self.spec.health, self.healthy && self.state == State::Running) {
            (None, _) => Health::Unchecked,
            (Some(_), false) => Health::Starting,
            (Some(_), true) => Health::Healthy,
        }
    }
}

pub struct Service {
    workloads: Vec<Workload>,
    next_id: WorkloadId,
    pub images: ImageIndex,
    pub admission: Admission,
    max_vcpus: u8,
    log_capacity: usize,
    /// The node's fabric /128, once the kernel knew it.
    node: Option<core::net::Ipv6Addr>,
    lease: Lease,
    notices: Vec<LeaseNotice>,
}

impl Service {
    pub fn new(images: ImageIndex, admission: Admission, max_vcpus: u8, log_capacity: usize) -> Service {
        Service { workloads: Vec::new(), next_id: 1, images, admission, max_vcpus, log_capacity, node: None, lease: Lease::default(), notices: Vec::new() }
    }

    /// Whether the cluster lease holds at `now_ms` (docs: `proto`, "The cluster lease").
    pub fn lease_holds(&self, now_ms: u64) -> bool {
        now_ms < self.lease.until_ms
    }

    /// The power-off deadline the kernel keeps with a cluster replica's microVM: the lease's
    /// end in ns (`until_ms` is rounded down, so never later than `orchd`'s deadline); with no
    /// lease 1 ms after boot, already past (0 would mean "none" to the kernel).
    pub fn kernel_deadline_ns(&self) -> u64 {
        self.lease.until_ms.max(1).saturating_mul(1_000_000)
    }

    /// What the cluster lease made the service do since the last call (the loop logs it).
    pub fn take_lease_notices(&mut self) -> Vec<LeaseNotice> {
        core::mem::take(&mut self.notices)
    }

    fn notice(&mut self, n: LeaseNotice) {
        if self.notices.len() < NOTICES_MAX {
            self.notices.push(n);
        }
    }

    /// Enforce the cluster lease at `now_ms`: while it does not hold, every cluster replica
    /// that runs (or is being stopped through its guest) is powered off at once (a stop with grace 0 goes through the guest's init
    /// and took some 370 ms on a TCG node: past the lease; power-off does not wait for the
    /// guest), one waiting to restart does not, and every one that no longer runs is
    /// destroyed. Node-level workloads are not touched.
    fn enforce_lease(&mut self, now_ms: u64, vmm: &mut dyn Vmm) {
        let holds = self.lease_holds(now_ms);
        if holds != self.lease.held {
            self.lease.held = holds;
            if holds {
                self.notice(LeaseNotice::Held { ms_left: self.lease.until_ms - now_ms });
            }
        }
        if holds {
            return;
        }
        let mut names = Vec::new();
        for i in 0..self.workloads.len() {
            let w = &self.workloads[i];
            // A replica already stopping through its guest (`Asked`: orchd's own stop, or one
            // asked before orchd died) is powered off too: a guest that ignores the stop would
            // otherwise run up to `KILL_GRACE_MS` past the deadline.
            let asked = w.state == State::Stopping && w.vm.is_some() && matches!(w.stop, Some((StopStage::Asked, _)));
            if is_cluster_replica(&w.spec.name) && (matches!(w.state, State::Starting | State::Running) || asked) {
                names.push(w.spec.name.clone());
                let w = &mut self.workloads[i];
                match w.vm {
                    Some(vm) => {
                        w.stopped = true;
                        w.state = State::Stopping;
                        vmm.kill(vm);
                        note(w, "the cluster lease ran out: powered off\n");
                        w.stop = Some((StopStage::PoweredOff, u64::MAX));
                    }
                    None => self.stop(i, 0, now_ms, vmm),
                }
            }
        }
        if !names.is_empty() {
            let why = if !self.lease.set { LeaseEnd::NeverSet } else if self.lease.withdrawn { LeaseEnd::Withdrawn } else { LeaseEnd::RanOut };
            self.notice(LeaseNotice::Stopping { why, names });
        }
        let mut i = 0;
        while i < self.workloads.len() {
            let w = &self.workloads[i];
            if is_cluster_replica(&w.spec.name) && w.vm.is_none() && w.state != State::Stopping {
                let w = self.workloads.remove(i);
                self.admission.release(w.spec.memory_mib);
                self.notice(LeaseNotice::Destroyed(w.spec.name));
            } else {
                i += 1;
            }
        }
    }

    /// Stop workload `i` (`Request::Stop`).
    fn stop(&mut self, i: usize, grace: u64, now_ms: u64, vmm: &mut dyn Vmm) {
        let w = &mut self.workloads[i];
        // (only a run this stop ends or keeps from restarting is `stopped`: orchd starts a
        // stopped cluster replica again, and one that ended by itself is its policy's)
        match (w.state, w.vm) {
            (State::Starting | State::Running, Some(vm)) => {
                w.stopped = true;
                w.state = State::Stopping;
                if vmm.stop(vm, grace) {
                    note(w, &format!("stopping: the image's StopSignal, SIGKILL after {grace} ms, power-off {KILL_GRACE_MS} ms later\n"));
                    w.stop = Some((StopStage::Asked, now_ms.saturating_add(grace + KILL_GRACE_MS + BACKSTOP_MS)));
                } else {
                    vmm.kill(vm);
                    note(w, "stopping: no stop signal on this node: powered off\n");
                    w.stop = Some((StopStage::PoweredOff, u64::MAX));
                }
            }
            (State::Starting, None) => {
                // a restart waiting for its delay: it does not happen
                w.stopped = true;
                w.restart_at = None;
                w.state = State::Exited;
                note(w, "stopped while waiting to restart\n");
            }
            _ => {} // nothing runs: stopping is done
        }
    }

    fn find(&self, t: &Target) -> Result<usize, Error> {
        self.workloads
            .iter()
            .position(|w| match t {
                Target::Id(i) => w.id == *i,
                Target::Name(n) => w.spec.name == *n,
            })
            .ok_or(Error::NoSuchWorkload)
    }

    /// The lowest network link slot no workload holds.
    fn free_slot(&self) -> Option<u8> {
        (1..=crate::net::LINKS_MAX).find(|s| !self.workloads.iter().any(|w| w.net == Some(*s)))
    }

    /// The /128 of link slot `slot` (None while the node's network is not up).
    fn address(&mut self, slot: Option<u8>, vmm: &mut dyn Vmm) -> Option<core::net::Ipv6Addr> {
        let slot = slot?;
        if self.node.is_none() {
            self.node = vmm.node_address();
        }
        Some(crate::net::address(self.node?, slot))
    }

    /// The workload's name and state (the loop's log lines).
    pub fn describe(&self, id: WorkloadId) -> Option<(&str, State)> {
        self.workloads.iter().find(|w| w.id == id).map(|w| (w.spec.name.as_str(), w.state))
    }

    /// Serve one request at `now_ms` from a client that is not `orchd`.
    pub fn handle(&mut self, req: Request, now_ms: u64, vmm: &mut dyn Vmm) -> Result<Reply, Error> {
        self.handle_from(Client::Other, req, now_ms, vmm)
    }

    /// Serve one request at `now_ms` from `client`.
    pub fn handle_from(&mut self, client: Client, req: Request, now_ms: u64, vmm: &mut dyn Vmm) -> Result<Reply, Error> {
        match req {
            Request::ClusterLease { until_ns } => {
                if client != Client::Orchestrator {
                    return Err(Error::NotOrchestrator);
                }
                // ms rounded down: while now_ms < until_ms, the clock is before until_ns
                let until_ms = (until_ns / 1_000_000).min(now_ms.saturating_add(LEASE_MAX_MS));
                let changed = until_ms != self.lease.until_ms;
                self.lease = Lease { until_ms, set: true, withdrawn: until_ms <= now_ms, held: self.lease.held };
                if changed {
                    // the kernel's fence moves with the lease: one OP_DEADLINE per cluster
                    // replica's microVM (at most WORKLOADS_MAX per renewal)
                    let d = self.kernel_deadline_ns();
                    for vm in self.workloads.iter().filter(|w| is_cluster_replica(&w.spec.name)).filter_map(|w| w.vm) {
                        vmm.deadline(vm, d);
                    }
                }
                Ok(Reply::Done)
            }
            Request::Create(spec) => {
                spec.check()?;
                if is_cluster_replica(&spec.name) && !self.lease_holds(now_ms) {
                    return Err(Error::NoLease);
                }
                if spec.vcpus > self.max_vcpus {
                    return Err(Error::Unsupported);
                }
                if self.images.get(&spec.image).is_none() {
                    return Err(Error::NoSuchImage);
                }
                if self.workloads.iter().any(|w| w.spec.name == spec.name) {
                    return Err(Error::NameInUse);
                }
                if self.workloads.len() >= WORKLOADS_MAX {
                    return Err(Error::TooManyWorkloads);
                }
                let net = match spec.net {
                    true => Some(self.free_slot().ok_or(Error::NoNetworkLink)?),
                    false => None,
                };
                // last: a refusal above commits nothing, and this either commits or refuses
                self.admission.admit(spec.memory_mib)?;
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1).max(1);
                let mut log = LogRing::new(self.log_capacity);
                log.push(Stream::Node, format!("created: image {}, {} MiB, {} vCPU\n", spec.image.short(), spec.memory_mib, spec.vcpus).as_bytes());
                self.workloads.push(Workload { healthy: false,
                    id, spec_digest: spec.digest(), spec, state: State::Created, vm: None, exit: None, reported: None, restarts: Restarts::default(), attempts: 0,
                    started_ms: 0, ended_ms: 0, restart_at: None, stop: None, stopped: false, touched: 0, log, net,
                });
                Ok(Reply::Created(id))
            }
            Request::Start(t) => {
                let i = self.find(&t)?;
                if is_cluster_replica(&self.workloads[i].spec.name) && !self.lease_holds(now_ms) {
                    return Err(Error::NoLease);
                }
                let w = &mut self.workloads[i];
                if !matches!(w.state, State::Created | State::Exited | State::Failed) {
                    return Err(Error::BadState(w.state));
                }
                w.restarts = Restarts::default();
                w.stopped = false;
                let d = if is_cluster_replica(&w.spec.name) { self.kernel_deadline_ns() } else { 0 };
                let w = &mut self.workloads[i];
                launch(w, now_ms, d, vmm);
                Ok(Reply::Done)
            }
            Request::Stop { target, grace_ms } => {
                let i = self.find(&target)?;
                let grace = grace_ms.unwrap_or(GRACE_DEFAULT_MS).min(GRACE_MAX_MS) as u64;
                self.stop(i, grace, now_ms, vmm);
                Ok(Reply::Done)
            }
            Request::Destroy(t) => {
                let i = self.find(&t)?;
                let w = &self.workloads[i];
                if w.vm.is_some() || w.state == State::Stopping {
                    return Err(Error::BadState(w.state));
                }
                let w = self.workloads.remove(i);
                self.admission.release(w.spec.memory_mib);
                Ok(Reply::Done)
            }
            Request::List => {
                if self.node.is_none() && self.workloads.iter().any(|w| w.net.is_some()) {
                    self.node = vmm.node_address();
                }
                let node = self.node;
                let list = self.workloads.iter().map(|w| Summary {
                    id: w.id, name: w.spec.name.clone(), state: w.state, exit: w.exit, restarts: w.restarts.total, memory_mib: w.spec.memory_mib,
                    address: node.zip(w.net).map(|(n, s)| crate::net::address(n, s)),
                    spec: w.spec_digest,
                    stopped: w.stopped,
                    health: w.health(),
                });
                Ok(Reply::List(list.collect()))
            }
            Request::Status(t) => {
                let i = self.find(&t)?;
                let address = self.address(self.workloads[i].net, vmm);
                let w = &mut self.workloads[i];
                if let Some(vm) = w.vm {
                    if let Some(b) = vmm.touched(vm) {
                        w.touched = b;
                    }
                }
                Ok(Reply::Status(status(w, now_ms, address)))
            }
            Request::Spec(t) => {
                // env can hold what only the cluster's state should (orchd compares it)
                if client != Client::Orchestrator {
                    return Err(Error::NotOrchestrator);
                }
                let i = self.find(&t)?;
                Ok(Reply::Spec(self.workloads[i].spec.clone()))
            }
            Request::Logs { target, cursor, max } => {
                let i = self.find(&target)?;
                Ok(Reply::Logs(self.workloads[i].log.read(cursor, max.min(LOG_READ_MAX) as usize)))
            }
            Request::Images => Ok(Reply::Images(self.images.list().to_vec())),
            Request::Signal { target, signal } => {
                if !(1..=SIGNAL_MAX).contains(&signal) {
                    return Err(Error::BadSignal);
                }
                let i = self.find(&target)?;
                let w = &mut self.workloads[i];
                let Some(vm) = w.vm else { return Err(Error::BadState(w.state)) };
                if !vmm.signal(vm, signal) {
                    return Err(Error::Unsupported);
                }
                note(w, &format!("signal {signal} sent\n"));
                Ok(Reply::Done)
            }
            Request::ImageBegin { image, manifest } => {
                if self.images.get(&image).is_some() {
                    return Ok(Reply::Upload { upload: 0, size: 0, present: true });
                }
                if manifest.len() > MANIFEST_MAX || Digest::of(&manifest) != image {
                    return Err(Error::ImageInvalid);
                }
                let (upload, size) = vmm.image_begin(image, &manifest)?;
                Ok(Reply::Upload { upload, size, present: upload == 0 })
            }
            Request::ImageChunk { upload, offset, len, digest } => {
                if len == 0 || len as usize > CHUNK_MAX {
                    return Err(Error::NoSuchUpload);
                }
                vmm.image_write(upload, offset, len, digest)?;
                Ok(Reply::Done)
            }
            Request::ImageCommit { upload } => {
                let info = vmm.image_commit(upload)?;
                // the kernel's store and this index hold the same bound
                let _ = self.images.insert(info);
                Ok(Reply::Image(info))
            }
            Request::ImageAbort { upload } => vmm.image_abort(upload).map(|()| Reply::Done),
            Request::RemoveImage(d) => {
                if self.images.get(&d).is_none() {
                    return Err(Error::NoSuchImage);
                }
                if self.workloads.iter().any(|w| w.spec.image == d) {
                    return Err(Error::ImageInUse);
                }
                vmm.image_remove(d)?;
                self.images.remove(&d);
                Ok(Reply::Done)
            }
            Request::ImageRead { image, manifest, offset, len } => {
                if self.images.get(&image).is_none() {
                    return Err(Error::NoSuchImage);
                }
                if len as usize > CHUNK_MAX || (manifest && (len as usize) < MANIFEST_MAX) {
                    return Err(Error::Malformed);
                }
                let n = vmm.image_read(image, manifest, offset, len)?;
                Ok(Reply::Read { len: n.min(len) })
            }
            Request::Store => vmm.store().map(Reply::Store).ok_or(Error::Unsupported),
            Request::Node => vmm
                .info()
                .map(|i| {
                    Reply::Node(NodeResources {
                        cpus: i.cpus,
                        memory_total_mib: i.total_bytes >> 20,
                        memory_free_mib: i.free_bytes >> 20,
                        memory_committed_mib: self.admission.committed_mib(),
                        memory_capacity_mib: self.admission.capacity_mib(),
                    })
                })
                .ok_or(Error::Unsupported),
        }
    }

    /// A kernel event. Events for a VM the service does not know (any more) are ignored.
    pub fn on_event(&mut self, ev: VmEvent, now_ms: u64, vmm: &mut dyn Vmm) {
        let Some(w) = self.workloads.iter_mut().find(|w| w.vm == Some(ev.vm)) else { return };
        match ev.event {
            Event::Log { stream, mut line } => {
                line.push(b'\n');
                w.log.push(stream, &line);
            }
            Event::Lost { bytes } => note(w, &format!("{bytes} log bytes lost on the node (the workload logged faster than the service read)\n")),
            Event::Ready => {
                if w.state == State::Starting {
                    w.state = State::Running;
                }
            }
            Event::Healthy => w.healthy = true,
            Event::Exit(e) => w.reported = Some(e),
            Event::Ended { how, touched_bytes, wall_ms: _ } => {
                w.vm = None;
                w.healthy = false;
                w.touched = touched_bytes;
                w.ended_ms = now_ms;
                w.stop = None;
                let exit = match (w.reported.take(), how) {
                    (Some(vmctl::Exit::Code(c)), _) => ExitStatus::Code(c),
                    (Some(vmctl::Exit::Signal(s)), _) => ExitStatus::Signal(s),
                    (Some(vmctl::Exit::InitFailed(s)), _) => ExitStatus::InitFailed(s),
                    (Some(vmctl::Exit::OomKilled(s)), _) => ExitStatus::OomKilled(s),
                    (Some(vmctl::Exit::ThrashKilled(s)), _) => ExitStatus::ThrashKilled(s),
                    (Some(vmctl::Exit::Unhealthy(s)), _) => ExitStatus::Unhealthy(s),
                    (None, vmctl::Ended::Killed) => ExitStatus::PoweredOff,
                    (None, vmctl::Ended::CreateFailed) => ExitStatus::CreateFailed,
                    (None, _) => ExitStatus::Crashed,
                };
                w.exit = Some(exit);
                w.state = if w.stopped || matches!(exit, ExitStatus::Code(_) | ExitStatus::Signal(_) | ExitStatus::OomKilled(_) | ExitStatus::ThrashKilled(_) | ExitStatus::Unhealthy(_)) { State::Exited } else { State::Failed };
                let ran = now_ms.saturating_sub(w.started_ms);
                match w.restarts.decide(w.spec.restart, exit, w.stopped, ran, now_ms) {
                    Decision::Stay => note(w, &format!("ended: {exit} after {ran} ms\n")),
                    Decision::Restart { at_ms, n } => {
                        note(w, &format!("ended: {exit} after {ran} ms; restart {} in {} ms\n", w.restarts.total, at_ms - now_ms));
                        let _ = n;
                        w.restart_at = Some(at_ms);
                        w.state = State::Starting;
                    }
                }
                let _ = vmm;
            }
        }
    }

    /// Timers: the cluster lease (first: a replica is never restarted past it), restarts that
    /// are due, stops whose grace ran out. Returns the next deadline.
    pub fn tick(&mut self, now_ms: u64, vmm: &mut dyn Vmm) -> Option<u64> {
        self.enforce_lease(now_ms, vmm);
        // while cluster replicas are here, wake at the lease's deadline
        let mut next: Option<u64> = (self.lease_holds(now_ms) && self.workloads.iter().any(|w| is_cluster_replica(&w.spec.name))).then_some(self.lease.until_ms);
        let lease_ns = self.kernel_deadline_ns();
        for w in &mut self.workloads {
            if let Some(at) = w.restart_at {
                if at <= now_ms {
                    w.restart_at = None;
                    let d = if is_cluster_replica(&w.spec.name) { lease_ns } else { 0 };
                    launch(w, now_ms, d, vmm);
                } else {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            if let (Some((stage, at)), Some(vm)) = (w.stop, w.vm) {
                if at <= now_ms && stage == StopStage::Asked {
                    vmm.kill(vm);
                    note(w, "not ended after the stop sequence: powered off by workd\n");
                    w.stop = Some((StopStage::PoweredOff, u64::MAX));
                }
                if let Some((_, at)) = w.stop {
                    if at != u64::MAX {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
            }
        }
        next
    }

    /// Adopt the VMs a dead incarnation of the service left running (`OP_LIVE`): each becomes
    /// its workload again (id, spec, restart counts from its tag; state from whether its init
    /// reported READY), admitted again. A VM without a valid tag, or whose id or name is
    /// taken, is powered off. Returns how many were adopted.
    pub fn adopt(&mut self, vms: Vec<vmctl::LiveVm>, now_ms: u64, vmm: &mut dyn Vmm) -> usize {
        let mut n = 0;
        for v in vms {
            let tag = vmctl::decode::<AdoptTag>(&v.tag).filter(|t| t.spec.check().is_ok());
            let Some(t) = tag else {
                vmm.kill(v.vm);
                continue;
            };
            if self.workloads.iter().any(|w| w.id == t.id || w.spec.name == t.spec.name || (t.net.is_some() && w.net == t.net)) || self.workloads.len() >= WORKLOADS_MAX || self.admission.admit(t.spec.memory_mib).is_err() {
                vmm.kill(v.vm);
                continue;
            }
            let mut log = LogRing::new(self.log_capacity);
            log.push(Stream::Node, format!("adopted by a restarted workd (microVM {}, running for {} ms)\n", v.vm, v.age_ms).as_bytes());
            self.next_id = self.next_id.max(t.id.wrapping_add(1)).max(1);
            self.workloads.push(Workload {
                id: t.id, spec_digest: t.spec.digest(), spec: t.spec, state: if v.ready { State::Running } else { State::Starting }, vm: Some(v.vm), exit: None, reported: None,
                restarts: Restarts { total: t.restarts, streak: t.streak }, attempts: t.attempts, started_ms: now_ms.saturating_sub(v.age_ms), ended_ms: 0,
                restart_at: None, stop: None, stopped: false, touched: v.touched_bytes, log, net: t.net, healthy: v.healthy,
            });
            n += 1;
        }
        n
    }

    /// The workload whose current microVM is `vm`.
    pub fn workload_of(&self, vm: VmHandle) -> Option<WorkloadId> {
        self.workloads.iter().find(|w| w.vm == Some(vm)).map(|w| w.id)
    }

    /// Network link slots held (workloads created with network, not destroyed).
    pub fn net_links(&self) -> usize {
        self.workloads.iter().filter(|w| w.net.is_some()).count()
    }

    /// Workloads that have a microVM now.
    pub fn vms(&self) -> usize {
        self.workloads.iter().filter(|w| w.vm.is_some()).count()
    }
    pub fn len(&self) -> usize {
        self.workloads.len()
    }
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
    }
}

fn note(w: &mut Workload, s: &str) {
    w.log.push(Stream::Node, s.as_bytes());
}

fn status(w: &Workload, now_ms: u64, address: Option<core::net::Ipv6Addr>) -> Status {
    let uptime = if w.attempts == 0 { 0 } else if w.vm.is_some() { now_ms.saturating_sub(w.started_ms) } else { w.ended_ms.saturating_sub(w.started_ms) };
    Status {
        id: w.id,
        name: w.spec.name.clone(),
        image: w.spec.image,
        state: w.state,
        exit: w.exit,
        restarts: w.restarts.total,
        attempts: w.attempts,
        restart: w.spec.restart,
        uptime_ms: uptime,
        memory_touched: w.touched,
        memory_mib: w.spec.memory_mib,
        vcpus: w.spec.vcpus,
        restart_in_ms: w.restart_at.map(|a| a.saturating_sub(now_ms)),
        log_end: w.log.end(),
        log_start: w.log.start(),
        address,
        health: w.health(),
        health_check: w.spec.health.clone(),
    }
}

/// Create the next run's microVM (the attempt number and the workload's name in its env), with
/// the kernel's power-off deadline `deadline_ns` (0: none; a cluster replica's is its lease).
fn launch(w: &mut Workload, now_ms: u64, deadline_ns: u64, vmm: &mut dyn Vmm) {
    w.attempts = w.attempts.saturating_add(1);
    w.reported = None;
    w.healthy = false;
    w.stop = None;
    w.started_ms = now_ms;
    w.exit = None;
    let mut env = w.spec.env.clone();
    env.push(format!("{ENV_ATTEMPT}={}", w.attempts));
    env.push(format!("{ENV_WORKLOAD}={}", w.spec.name));
    let req = CreateVm { image: w.spec.image, name: String::from(w.spec.name.as_str()), vcpus: w.spec.vcpus, memory_mib: w.spec.memory_mib, args: w.spec.args.clone(), env, net: w.net, deadline_ns, health: w.spec.health.clone() };
    match vmm.create(&req) {
        Some(vm) => {
            w.vm = Some(vm);
            w.state = State::Starting;
            let tag = AdoptTag { id: w.id, spec: w.spec.clone(), restarts: w.restarts.total, streak: w.restarts.streak, attempts: w.attempts, net: w.net };
            if let Some(t) = vmctl::encode(&tag).filter(|t| t.len() <= vmctl::TAG_MAX) {
                vmm.tag(vm, &t);
            }
            note(w, &format!("starting: attempt {}\n", w.attempts));
        }
        None => {
            w.vm = None;
            w.ended_ms = now_ms;
            w.state = State::Failed;
            w.exit = Some(ExitStatus::CreateFailed);
            note(w, "the kernel refused to create its microVM\n");
            if let Decision::Restart { at_ms, .. } = w.restarts.decide(w.spec.restart, ExitStatus::CreateFailed, false, 0, now_ms) {
                w.restart_at = Some(at_ms);
                w.state = State::Starting;
            }
        }
    }
}
